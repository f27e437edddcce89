"""Cosmic-ray hits found in a single exposure by their sharp edges (Laplacian edge detection).

A cosmic ray deposits its charge in one to a few pixels, with edges sharper than the
seeing allows any source to have. Following van Dokkum (2001, PASP 113, 1420):

1. The frame is sampled up 2 × 2, convolved with the discrete Laplacian
   ``[[0, −1, 0], [−1, 4, −1], [0, −1, 0]]``, its negative values set to 0 (only the
   bright side of an edge counts) and binned back 2 × 2: ``L⁺`` [ADU]. Sampling up keeps a
   hit's negative neighbours from cancelling its positive edge.
2. ``L⁺`` in units of the noise: ``S = L⁺ / (2 N)`` with ``N = √(M₅ / g + (r / g)²)``
   [ADU], ``M₅`` the 5 × 5 px median of the frame (sky included, ≥ 0), ``g`` the gain
   [e⁻/ADU] and ``r`` the read noise [e⁻] (the 2 is the Laplacian's noise at the sampled
   up scale). Smooth structure (the sampling of extended sources) is taken out:
   ``S′ = S − M₅(S)``.
3. Candidates: ``S′ > sigma_clip`` **and** ``L⁺ / (2 F) > contrast``, where the
   fine-structure image ``F = M₃(I) − M₇(M₃(I))`` (≥ 1 % of ``N``) is large on compact
   sources (star cores) and small on sky: a star's core is sharp, but never as sharp,
   relative to its own surroundings, as a hit of the same height (a noiseless Gaussian
   star of FWHM ≥ 2.5 px has ``L⁺ / (2 F) < 1``; the simulated survey's hits > 100).
   Blended stars and stars cut by the frame's edge can fool ``F`` (the 7 × 7 median sees
   the other star), so a candidate must also be sharper than the narrowest star allowed:
   it stands above the mean of two opposite neighbours (along x or y) by more than a
   star's profile permits (:func:`neighbour_ratio`), by ``sigma_clip`` σ of the noise of
   that comparison.
4. A hit's faint ends: neighbours (3 × 3) of candidates with ``S′ > sigma_clip`` are
   added, then their neighbours with ``S′ > sigma_frac × sigma_clip``.
5. The hits found are replaced by the 5 × 5 median of the pixels around them that are not
   hits, and steps 1–4 run again (``iterations`` times at most, ending early when a pass
   finds nothing new), so that the pixels a hit hid are looked at; only around the hits
   just filled, since nothing farther away can change.

Pixels masked before (mask ≠ 0) or not finite enter the images as their 5 × 5 median
and are never reported. The filters extend the frame past its edges by mirroring it.
Pixel coordinates are 0-based ``[y, x]`` (row, column).

Only the 2-D arrays and the frame's noise model come in; :func:`detect_cosmic_rays` returns
the hit map, which ingest adds to the mask as :attr:`~pausdenoise.maskbits.MaskBit.COSMIC_RAY`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pausdenoise.ingest.config import CosmicRayConfig

__all__ = [
    "DEFAULT_STAR_FWHM_PX",
    "CosmicRayResult",
    "detect_cosmic_rays",
    "laplacian_significance",
    "narrowest_star_fwhm",
    "neighbour_ratio",
]

_LAPLACIAN = np.array([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
_SQUARE = np.ones((3, 3), dtype=bool)
#: The narrowest star [px FWHM] when neither the config nor the frame's PSF gives one.
DEFAULT_STAR_FWHM_PX = 2.0
_EDGE = "mirror"  # the filters extend the frame past its edges by mirroring it
_REACH = 12  # px: farther than this from a changed pixel, a pass's result cannot change
_MARGIN = 32  # px of context around the pixels a later pass looks at


@dataclass
class CosmicRayResult:
    """What :func:`detect_cosmic_rays` found.

    Attributes
    ----------
    hits : ndarray of bool, shape (ny, nx)
        True at pixels of a cosmic-ray hit (never at pixels masked before).
    n_pixels : int
        Number of hit pixels.
    n_hits : int
        Number of hits (8-connected groups of hit pixels).
    iterations : int
        Passes run (the last one found nothing new, unless the limit stopped it; 0 for a
        frame without a good pixel).
    """

    hits: np.ndarray
    n_pixels: int
    n_hits: int
    iterations: int


def _fill(image: np.ndarray, bad: np.ndarray, fallback: float) -> np.ndarray:
    """Replace ``bad`` pixels by the 5 × 5 median of the good ones around them.

    Returns
    -------
    ndarray of float64
        A new array; a bad pixel with no good one within 5 × 5 takes ``fallback`` (the
        frame's median, ADU).
    """
    out = image.astype(np.float64, copy=True)
    if not bad.any():
        return out
    out[bad] = np.nan
    med = _nan_median5(out)
    fill = np.where(np.isfinite(med), med, fallback)
    out[bad] = fill[bad]
    return out


def _nan_median5(values: np.ndarray) -> np.ndarray:
    """5 × 5 median ignoring NaN, evaluated only around the NaN pixels.

    Returns
    -------
    ndarray of float64
        NaN except at the NaN pixels of ``values``, which get the median of their finite
        5 × 5 neighbours (NaN when there is none).
    """
    out = np.full(values.shape, np.nan)
    padded = np.pad(values, 2, mode="edge")
    yy, xx = np.nonzero(~np.isfinite(values))
    for start in range(0, yy.size, 65536):  # bounded memory: 25 values per bad pixel
        y, x = yy[start:start + 65536], xx[start:start + 65536]
        stamps = np.stack([padded[y + dy, x + dx] for dy in range(5) for dx in range(5)])
        with np.errstate(all="ignore"):
            finite = np.isfinite(stamps).any(axis=0)
            med = np.full(y.size, np.nan)
            med[finite] = np.nanmedian(stamps[:, finite], axis=0)
        out[y, x] = med
    return out


def laplacian_significance(
    image: np.ndarray, gain: float, read_noise_e: float, median5: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute the Laplacian edge image and its significance (steps 1–2 of the method).

    Parameters
    ----------
    image : ndarray of float64, shape (ny, nx)
        The frame, ADU, sky included, finite everywhere (bad pixels already filled).
    gain : float
        e⁻ per ADU.
    read_noise_e : float
        Read noise, e⁻.
    median5 : ndarray, optional
        The image's 5 × 5 px median ``M₅``, when already at hand.

    Returns
    -------
    lplus : ndarray
        ``L⁺``, ADU.
    s_prime : ndarray
        ``S′``, σ.
    noise : ndarray
        ``N``, ADU.
    """
    ny, nx = image.shape
    up = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    lap = ndimage.convolve(up, _LAPLACIAN, mode=_EDGE)
    np.maximum(lap, 0.0, out=lap)
    lplus = lap.reshape(ny, 2, nx, 2).mean(axis=(1, 3))
    m5 = ndimage.median_filter(image, size=5, mode=_EDGE) if median5 is None else median5
    noise = np.sqrt(np.maximum(m5, 0.0) / gain + (read_noise_e / gain) ** 2)
    s = lplus / (2.0 * noise)
    s_prime = s - ndimage.median_filter(s, size=5, mode=_EDGE)
    return lplus, s_prime, noise


def neighbour_ratio(star_fwhm_px: float) -> float:
    """Return a star's side-neighbour-to-peak ratio, the bound of step 3's PSF test.

    A Gaussian star of FWHM ``star_fwhm_px`` sampled at points and centred on a pixel has
    ``k = exp(−1 / (2 σ²))`` (σ = FWHM / 2.3548) of that pixel's signal in each side
    neighbour; that pixel then stands ``(1 − k)`` of its signal above the mean of two
    opposite neighbours, the most any pixel of such a star does (off-centre peaks and the
    wings stand less; pixel integration and a Moffat's wings flatten it further).

    Parameters
    ----------
    star_fwhm_px : float
        The narrowest FWHM a star may have, px (> 0).

    Returns
    -------
    float
        ``k``, in (0, 1).
    """
    sigma = star_fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return math.exp(-0.5 / sigma**2)


def _sharper_than_psf(image: np.ndarray, median5: np.ndarray, noise: np.ndarray,
                      k: float, sigma_clip: float) -> np.ndarray:
    """Pixels that stand above their neighbours by more than any star's pixel can.

    ``E − (1 − k) (I − B) > sigma_clip · N · √1.5``, where ``E`` is the larger of the
    pixel's excesses over the mean of its two neighbours along x and along y, ``k`` is
    :func:`neighbour_ratio` and ``B`` a low local background, the least 5 × 5 median within
    9 × 9 px (a low ``B`` only makes the test stricter). A star, blended or cut by the
    frame's edge, does not pass; the pixels of a hit beside the sky do.

    Returns
    -------
    ndarray of bool
        True where a pixel is sharper than any star.
    """
    pad = np.pad(image, 1, mode="reflect")  # numpy's "reflect" is scipy's "mirror"
    excess_x = image - 0.5 * (pad[1:-1, :-2] + pad[1:-1, 2:])
    excess_y = image - 0.5 * (pad[:-2, 1:-1] + pad[2:, 1:-1])
    background = ndimage.minimum_filter(median5, size=9, mode=_EDGE)
    excess = np.maximum(excess_x, excess_y) - (1.0 - k) * (image - background)
    return excess > sigma_clip * noise * math.sqrt(1.5)


def _pass(image: np.ndarray, gain: float, read_noise_e: float, config: CosmicRayConfig,
          k: float) -> np.ndarray:
    """One detection pass (steps 1–4) on a filled image.

    Returns
    -------
    ndarray of bool
        The hit pixels this pass finds.
    """
    m5 = ndimage.median_filter(image, size=5, mode=_EDGE)
    lplus, s_prime, noise = laplacian_significance(image, gain, read_noise_e, m5)
    m3 = ndimage.median_filter(image, size=3, mode=_EDGE)
    fine = np.maximum(m3 - ndimage.median_filter(m3, size=7, mode=_EDGE), 0.01 * noise)
    hits = (s_prime > config.sigma_clip) & (lplus / (2.0 * fine) > config.contrast)
    hits &= _sharper_than_psf(image, m5, noise, k, config.sigma_clip)
    hits = ndimage.binary_dilation(hits, _SQUARE) & (s_prime > config.sigma_clip)
    low = config.sigma_frac * config.sigma_clip
    return ndimage.binary_dilation(hits, _SQUARE) & (s_prime > low)


def _pass_near(image: np.ndarray, changed: np.ndarray, gain: float, read_noise_e: float,
               config: CosmicRayConfig, k: float) -> np.ndarray:
    """Run a pass only around the ``changed`` pixels (the hits the last pass filled).

    A pixel's result depends on the image within a few pixels of it (the 7 × 7 median of
    the 3 × 3 median, the 9 × 9 least 5 × 5 median, two 3 × 3 growths: less than
    :data:`_REACH` px), so only pixels within that reach can change, and a window with
    :data:`_MARGIN` px of context around them gives them the value a pass over the whole
    frame would.

    Returns
    -------
    ndarray of bool
        The hits found within reach of ``changed``.
    """
    near = ndimage.maximum_filter(changed.astype(np.uint8), size=2 * _REACH + 1) > 0
    out = np.zeros(image.shape, dtype=bool)
    ny, nx = image.shape
    for region in ndimage.find_objects(ndimage.label(near)[0]):
        ys, xs = region
        win = (slice(max(ys.start - _MARGIN, 0), min(ys.stop + _MARGIN, ny)),
               slice(max(xs.start - _MARGIN, 0), min(xs.stop + _MARGIN, nx)))
        out[win] |= _pass(image[win], gain, read_noise_e, config, k) & near[win]
    return out


def narrowest_star_fwhm(config: CosmicRayConfig, psf_fwhm_px: float | None) -> float:
    """Return the narrowest FWHM [px] a star may have, for the PSF test of step 3.

    Parameters
    ----------
    config : CosmicRayConfig
        ``star_fwhm_px`` (used when set) and ``star_fwhm_fraction``.
    psf_fwhm_px : float or None
        The frame's measured PSF FWHM, px (ignored when not finite and positive).

    Returns
    -------
    float
        ``config.star_fwhm_px``, else ``star_fwhm_fraction × psf_fwhm_px``, else
        :data:`DEFAULT_STAR_FWHM_PX`.
    """
    if config.star_fwhm_px is not None:
        return float(config.star_fwhm_px)
    if psf_fwhm_px is not None and math.isfinite(psf_fwhm_px) and psf_fwhm_px > 0:
        return config.star_fwhm_fraction * float(psf_fwhm_px)
    return DEFAULT_STAR_FWHM_PX


def detect_cosmic_rays(
    image: np.ndarray,
    mask: np.ndarray | None,
    gain: float,
    read_noise_e: float,
    config: CosmicRayConfig | None = None,
    psf_fwhm_px: float | None = None,
) -> CosmicRayResult:
    """Find the cosmic-ray hits of one exposure (see the module docstring).

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame, ADU, bias subtracted, sky **not** subtracted (the noise model needs the
        level).
    mask : ndarray or None
        Non-zero marks a pixel masked before; such pixels are filled and never reported.
    gain : float
        e⁻ per ADU (> 0).
    read_noise_e : float
        Read noise, e⁻ (≥ 0).
    config : CosmicRayConfig, optional
        Thresholds and the number of passes; default :class:`CosmicRayConfig`.
    psf_fwhm_px : float, optional
        The frame's measured PSF FWHM, px: the narrowest star allowed is
        ``config.star_fwhm_px``, else ``config.star_fwhm_fraction`` of this, else
        :data:`DEFAULT_STAR_FWHM_PX`.

    Returns
    -------
    CosmicRayResult
        The hit map and its counts.

    Raises
    ------
    ValueError
        A gain that is not positive and finite, a negative read noise, a mask of another
        shape than the image, or an image that is not 2-D.
    """
    config = CosmicRayConfig() if config is None else config
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if not (math.isfinite(gain) and gain > 0) or not (read_noise_e >= 0):
        raise ValueError(f"gain must be positive and read noise >= 0, got {gain}, "
                         f"{read_noise_e}")
    bad = ~np.isfinite(image)
    if mask is not None:
        if np.shape(mask) != image.shape:
            raise ValueError(f"mask shape {np.shape(mask)} != image shape {image.shape}")
        bad |= np.asarray(mask) != 0
    k = neighbour_ratio(narrowest_star_fwhm(config, psf_fwhm_px))
    hits = np.zeros(image.shape, dtype=bool)
    if bad.all():  # a masked-out frame: nothing to search
        return CosmicRayResult(hits, 0, 0, 0)
    fallback = float(np.median(image[~bad]))  # for the filled pixels without good neighbours
    work = _fill(image, bad, fallback)
    new = _pass(work, gain, read_noise_e, config, k) & ~bad
    done = 1
    while new.any():
        hits |= new
        if done == config.iterations:
            break
        work = _fill(image, bad | hits, fallback)
        new = _pass_near(work, new, gain, read_noise_e, config, k) & ~bad & ~hits
        done += 1
    n_hits = int(ndimage.label(hits, structure=_SQUARE)[1])
    return CosmicRayResult(hits, int(hits.sum()), n_hits, done)
