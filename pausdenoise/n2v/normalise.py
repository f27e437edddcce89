"""Per-frame normalisation of CCD images for the network, and its inverse.

The network sees ``(image - sky) / sigma`` where ``sky`` and ``sigma`` are robust statistics
of the *whole frame* (one exposure × CCD): a sigma-clipped median and the MAD-based standard
deviation of the good pixels. They are computed once per frame, never per tile, so tiled and
whole-image inference see identical inputs. The transform is linear on purpose: a
non-linear stretch (asinh, log) would make the network's conditional mean biased in flux
after inversion, and flux bias is what a survey astronomer measures first.

Masked or non-finite pixels are set to 0 in normalised units (the sky level) before the
network sees them; they never serve as training targets (see :mod:`pausdenoise.n2v.masking`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pausdenoise.stats import MAD_TO_SIGMA

#: Method name stored in checkpoints; bump it if the statistics below change.
NORMALISATION_METHOD = "frame-clipped-median-mad/v1"


@dataclass(frozen=True)
class FrameStats:
    """Robust statistics of one frame, in ADU.

    Attributes
    ----------
    sky : float
        Sigma-clipped median of the good pixels (ADU).
    sigma : float
        MAD-based standard deviation of the clipped good pixels (ADU); > 0.
    """

    sky: float
    sigma: float


def frame_statistics(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    max_samples: int = 1_000_000,
    clip: float = 3.0,
    iterations: int = 3,
) -> FrameStats:
    """Sigma-clipped median and MAD-σ of a frame's good pixels.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Frame in ADU.
    mask : ndarray of int, optional
        Non-zero marks a bad pixel (excluded).
    max_samples : int
        Frames larger than this are read on a regular stride (deterministic).
    clip : float
        Clipping threshold in σ.
    iterations : int
        Clipping iterations.

    Returns
    -------
    FrameStats

    Raises
    ------
    ValueError
        If no good finite pixel is left, or the robust σ is zero.
    """
    image = np.asarray(image)
    stride = max(1, int(np.ceil(np.sqrt(image.size / max_samples))))
    sub = image[::stride, ::stride].astype(np.float64, copy=False)
    good = np.isfinite(sub)
    if mask is not None:
        good &= np.asarray(mask)[::stride, ::stride] == 0
    values = sub[good]
    if values.size == 0:
        raise ValueError("frame has no good finite pixel: cannot normalise it")
    med = float(np.median(values))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - med)))
    for _ in range(iterations):
        if sigma <= 0:
            break
        kept = values[np.abs(values - med) <= clip * sigma]
        if kept.size == values.size or kept.size == 0:
            break
        values = kept
        med = float(np.median(values))
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - med)))
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"frame has zero robust scatter (sigma={sigma}); is it constant?")
    return FrameStats(sky=med, sigma=sigma)


def normalise(
    image: np.ndarray, stats: FrameStats, mask: np.ndarray | None = None
) -> np.ndarray:
    """Return ``(image - sky) / sigma`` as float32, with bad pixels set to 0 (the sky).

    Parameters
    ----------
    image : ndarray
        Pixels in ADU.
    stats : FrameStats
        The frame's sky and σ in ADU.
    mask : ndarray, optional
        Non-zero marks a bad pixel; non-finite pixels are bad too.

    Returns
    -------
    ndarray of float32
        Normalised pixels (units of σ), same shape.
    """
    out = (np.asarray(image, dtype=np.float32) - np.float32(stats.sky)) / np.float32(stats.sigma)
    bad = ~np.isfinite(out)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    if bad.any():
        out[bad] = 0.0
    return out


def denormalise(values: np.ndarray, stats: FrameStats) -> np.ndarray:
    """Invert :func:`normalise`: ``values * sigma + sky``.

    Parameters
    ----------
    values : ndarray
        Normalised pixels (units of σ).
    stats : FrameStats
        The frame's sky and σ in ADU.

    Returns
    -------
    ndarray of float32
        Pixels in ADU.
    """
    return np.asarray(values, dtype=np.float32) * np.float32(stats.sigma) + np.float32(stats.sky)
