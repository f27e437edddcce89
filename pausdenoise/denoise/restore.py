"""Catalogue sources given back the flux the network smoothed away (``denoise.restore_catalogue``).

A denoiser cannot tell a galaxy whose single-exposure S/N is ~2 from the sky, so it smooths
it as sky and its light spreads past the galaxy's aperture (``benchmarks/bench_faint_spill.py``
predicts how much from the sky gain alone). A survey that measures forced photometry knows
where its sources are before it denoises. With ``denoise.restore_catalogue`` the denoise
stage gives the catalogue's sources back, inside their apertures only, the low-pass part of
what the network removed::

    restored = denoised + W ⊙ G_σ ⊛ (raw − denoised)

``G_σ`` is a normalised Gaussian of σ = ``restore_sigma`` px (edges reflected at the frame's
edge); ``W`` is the union of the frame's catalogue apertures, each grown by
``restore_grow`` px on both axes, softened by a Gaussian of σ = :data:`FEATHER_PX` and clipped
to [0, 1] (pixel centres inside an ellipse count; ellipses are drawn also beyond the frame,
so ``W`` does not depend on the chunking). Outside ``W`` the denoised image is unchanged;
inside, its fine structure is the network's and its local flux the raw image's, so aperture
fluxes keep the raw image's expectation (up to the light ``G_σ`` carries past the aperture)
and its noise. Masked and non-finite pixels give nothing back and receive nothing.

The restoration runs inside the network's own ``map_overlap`` block (the denoise writer
passes the apertures to the tiling): the block's halo is the network's plus
:func:`restore_halo` rounded up to ``2**depth`` (:func:`restore_overlap`), so each chunk is
denoised and restored from its own overlapped read of the raw frame and waits for no
neighbouring chunk's network output; the result equals the whole-frame computation whatever
the chunks (the network's part to float rounding, as the seam-free tiling promises).
Conventions: pixel positions 0-based (centre of pixel ``[0, 0]`` at ``(0, 0)``), lengths
in px, ``theta`` the photutils angle (radians, counter-clockwise from +x).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from pausdenoise.denoise.config import DenoiseConfig
from pausdenoise.digest import json_digest
from pausdenoise.evaluate import aperture_pixel_mask

__all__ = ["FEATHER_PX", "GEOMETRY_COLUMNS", "aperture_weight", "block_overlap",
           "geometry_from_catalogue",
           "restore_block", "restore_digest", "restore_halo", "restore_overlap",
           "valid_geometry", "weight_map"]

FEATHER_PX = 1.0
"""σ (px) of the Gaussian that softens the edge of the restoration mask ``W``."""
GEOMETRY_COLUMNS = ("x", "y", "a", "b", "theta")
"""Aperture geometry columns: centre (0-based px), semi-axes (px), photutils angle (rad)."""
_TRUNCATE = 4.0


def _radius(sigma: float) -> int:
    """Reach of ``scipy.ndimage.gaussian_filter`` at :data:`_TRUNCATE` σ.

    Returns
    -------
    int
        px.
    """
    return int(_TRUNCATE * float(sigma) + 0.5)


def restore_halo(sigma: float) -> int:
    """Halo (px) that makes the block-wise restoration equal the whole-frame one.

    Parameters
    ----------
    sigma : float
        ``restore_sigma``, px.

    Returns
    -------
    int
        The low pass's reach plus one pixel.
    """
    return _radius(sigma) + 1


def block_overlap(halo: int, config: DenoiseConfig, multiple: int) -> int:
    """Halo (px) of the denoise stage's blocks for these settings.

    Parameters
    ----------
    halo : int
        The network's halo, px.
    config : DenoiseConfig
        ``restore_catalogue`` and ``restore_sigma``.
    multiple : int
        ``2**depth`` of the network.

    Returns
    -------
    int
        :func:`restore_overlap` when ``restore_catalogue`` is on, else ``halo``.
    """
    if config.restore_catalogue:
        return restore_overlap(halo, config.restore_sigma, multiple)
    return int(halo)


def restore_overlap(halo: int, sigma: float, multiple: int) -> int:
    """Halo (px) of a block that is denoised and restored in one pass.

    Parameters
    ----------
    halo : int
        The network's halo, px (a multiple of ``multiple``).
    sigma : float
        ``restore_sigma``, px.
    multiple : int
        ``2**depth`` of the network: block origins stay on its pooling grid.

    Returns
    -------
    int
        ``halo`` plus :func:`restore_halo` rounded up to a multiple of ``multiple``: every
        pixel the low pass of a kept pixel reads is at least ``halo`` px inside the block,
        where the network's output is exact.
    """
    extra = restore_halo(sigma)
    return int(halo) + -(-extra // int(multiple)) * int(multiple)


def valid_geometry(geometry: pd.DataFrame) -> pd.DataFrame:
    """Keep the rows with finite centres and angles and positive, finite semi-axes.

    Parameters
    ----------
    geometry : pandas.DataFrame
        :data:`GEOMETRY_COLUMNS`.

    Returns
    -------
    pandas.DataFrame
        The usable rows, :data:`GEOMETRY_COLUMNS` only, float64, index reset.
    """
    g = geometry.loc[:, list(GEOMETRY_COLUMNS)].astype(np.float64)
    ok = np.isfinite(g.to_numpy()).all(axis=1) & (g["a"] > 0).to_numpy() \
        & (g["b"] > 0).to_numpy()
    return g.loc[ok].reset_index(drop=True)


def aperture_weight(region: tuple[int, int, int, int], geometry: pd.DataFrame,
                    grow: float) -> np.ndarray:
    """Draw the soft aperture mask ``W`` over a rectangle of the frame.

    Parameters
    ----------
    region : (y0, y1, x0, x1)
        Rows ``y0:y1`` and columns ``x0:x1`` of the frame (0-based, end exclusive).
    geometry : pandas.DataFrame
        Valid apertures (:func:`valid_geometry`), frame coordinates.
    grow : float
        Added to both semi-axes, px.

    Returns
    -------
    ndarray of float32, shape (y1 - y0, x1 - x0)
        ``W`` in [0, 1]; the same values whatever rectangle it is computed over.
    """
    y0, y1, x0, x1 = region
    pad = _radius(FEATHER_PX)
    shape = (y1 - y0 + 2 * pad, x1 - x0 + 2 * pad)
    a, b = geometry["a"].to_numpy() + grow, geometry["b"].to_numpy() + grow
    x, y = geometry["x"].to_numpy(), geometry["y"].to_numpy()
    reach = np.maximum(a, b) + 1.0
    near = ((x + reach >= x0 - pad) & (x - reach < x1 + pad)
            & (y + reach >= y0 - pad) & (y - reach < y1 + pad))
    hard = aperture_pixel_mask(shape, x[near] - (x0 - pad), y[near] - (y0 - pad), a[near],
                               b[near], geometry["theta"].to_numpy()[near])
    soft = ndimage.gaussian_filter(hard.astype(np.float64), FEATHER_PX, mode="constant",
                                   truncate=_TRUNCATE)
    return np.clip(soft[pad:pad + y1 - y0, pad:pad + x1 - x0], 0.0, 1.0).astype(np.float32)


def restore_block(denoised: np.ndarray, image: np.ndarray, mask: np.ndarray | None,
                  weight: np.ndarray, sigma: float) -> np.ndarray:
    """Add back, with weight ``W``, the low-pass part of what the network removed.

    Parameters
    ----------
    denoised, image : ndarray (ny, nx)
        The network's output and the raw frame, ADU.
    mask : ndarray (ny, nx) or None
        Mask bits (0 = good); masked pixels give and receive nothing.
    weight : ndarray (ny, nx)
        ``W`` (:func:`aperture_weight`).
    sigma : float
        σ of the low pass, px; 0 restores the raw image's pixels where ``W`` = 1.

    Returns
    -------
    ndarray of float32 (ny, nx)
        ``denoised + W · G_σ ⊛ (image − denoised)``, edges reflected; ``denoised`` where a
        pixel is masked or non-finite.
    """
    den = np.asarray(denoised, dtype=np.float64)
    img = np.asarray(image, dtype=np.float64)
    ok = np.isfinite(img) & np.isfinite(den)
    if mask is not None:
        ok &= np.asarray(mask) == 0
    removed = np.where(ok, img - np.where(ok, den, 0.0), 0.0)
    if sigma > 0:
        removed = ndimage.gaussian_filter(removed, sigma, mode="reflect", truncate=_TRUNCATE)
    out = den + np.where(ok, weight * removed, 0.0)
    return out.astype(np.float32)


def _weight_chunk(geometry: pd.DataFrame, grow: float,
                  block_info: dict[Any, Any] | None = None) -> np.ndarray:
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    return aperture_weight((y0, y1, x0, x1), geometry, grow)


def weight_map(image: Any, geometry: pd.DataFrame, grow: float) -> Any:
    """Build (do not run) the restoration mask ``W`` of a frame, chunk by chunk.

    Parameters
    ----------
    image : dask.array.Array (ny, nx)
        The frame (only its chunks are used).
    geometry : pandas.DataFrame
        The frame's catalogue apertures (:data:`GEOMETRY_COLUMNS`); invalid rows are left
        out (:func:`valid_geometry`).
    grow : float
        ``restore_grow``, px.

    Returns
    -------
    dask.array.Array
        float32 in [0, 1], the image's chunks; no task depends on the pixels.
    """
    import dask  # dask off the light import path
    import dask.array as da  # dask off the light import path

    shared = dask.delayed(valid_geometry(geometry), pure=True)  # one key, not one per chunk
    return da.map_blocks(_weight_chunk, shared, float(grow), chunks=image.chunks,
                         dtype=np.float32, meta=np.empty((0, 0), np.float32))


def restore_digest(geometry: pd.DataFrame, sigma: float, grow: float) -> str:
    """Hash of what the restoration of a frame depends on besides the pixels.

    Parameters
    ----------
    geometry : pandas.DataFrame
        The frame's apertures (:data:`GEOMETRY_COLUMNS`).
    sigma, grow : float
        ``restore_sigma`` and ``restore_grow``, px.

    Returns
    -------
    str
        24 hex characters.
    """
    g = valid_geometry(geometry)
    rows = np.round(g.to_numpy(), 6).tolist() if len(g) else []
    return json_digest({"sigma": round(float(sigma), 9), "grow": round(float(grow), 9),
                        "feather": FEATHER_PX, "pass": "with-network",
                        "apertures": sorted(rows)}, 24)


def geometry_from_catalogue(rows: pd.DataFrame, *, axis_scale: float = 1.0,
                            frame: tuple[int, int] | None = None) -> pd.DataFrame:
    """Aperture geometry from per-frame catalogue rows.

    Parameters
    ----------
    rows : pandas.DataFrame
        ``expnum``, ``ccd`` (with ``frame``), ``aperture_x``, ``aperture_y`` (0-based px),
        ``aperture_a``, ``aperture_b`` (in the catalogue's units), ``aperture_theta``
        (degrees, PAUS sign: the photutils angle is its negative).
    axis_scale : float, optional
        px per catalogue axis unit (``1 / photometry.pixel_scale`` for arcsec axes).
    frame : (int, int), optional
        ``(expnum, ccd)``: keep only that frame's rows.

    Returns
    -------
    pandas.DataFrame
        :data:`GEOMETRY_COLUMNS`.
    """
    if frame is not None:
        rows = rows[(rows["expnum"] == frame[0]) & (rows["ccd"] == frame[1])]
    return pd.DataFrame({
        "x": rows["aperture_x"].to_numpy(dtype=np.float64),
        "y": rows["aperture_y"].to_numpy(dtype=np.float64),
        "a": rows["aperture_a"].to_numpy(dtype=np.float64) * axis_scale,
        "b": rows["aperture_b"].to_numpy(dtype=np.float64) * axis_scale,
        "theta": -np.deg2rad(rows["aperture_theta"].to_numpy(dtype=np.float64)),
    })
