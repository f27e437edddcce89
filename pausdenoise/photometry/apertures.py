"""Elliptical aperture sums: step 2 (**Source**) of the forced-photometry recipe.

The sum over an elliptical aperture (a circle when ``a == b``) of the pixel values times
their overlap fraction with the ellipse (exact overlap, or N×N sub-pixel sampling as
SExtractor does), masked pixels excluded. ``area`` is the sum of the overlap fractions of
the *unmasked* in-image pixels, so that ``flux = aper_sum - area * bkg`` subtracts sky only
where sky was summed.

The aperture weights come from the low-level routines photutils itself uses
(``photutils.geometry.elliptical_overlap_grid`` / ``circular_overlap_grid``), evaluated on a
small cutout per source instead of one photutils aperture object per source.

Conventions: positions are 0-based pixel coordinates (pixel centres at integers), all
lengths in pixels, and ``theta`` the photutils angle in radians counter-clockwise from +x
(``theta = -aperture_theta * pi / 180`` for the PAUS catalogue angle in degrees).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from photutils.geometry import circular_overlap_grid, elliptical_overlap_grid

from pausdenoise.maskbits import MaskBit
from pausdenoise.photometry.config import PhotFlag, PhotometryConfig

__all__ = ["MAX_AXIS_PX", "MIN_AXIS_PX", "aperture_sums", "ellipse_extents"]

#: Aperture axes (pixels) outside [MIN_AXIS_PX, MAX_AXIS_PX] are flagged BAD_INPUT and not
#: measured: the overlap routines divide by zero below ~1e-300 px and overflow above
#: ~1e150 px, and neither end means anything on a CCD.
MIN_AXIS_PX = 1e-6
MAX_AXIS_PX = 1e7


def _aperture_geometry(apertures: pd.DataFrame, config: PhotometryConfig) -> tuple[np.ndarray, ...]:
    """Convert catalogue aperture columns to pixel geometry.

    Returns
    -------
    tuple of ndarray
        ``(x, y, a, b, theta)``: centre in 0-based pixels, semi-axes in pixels, photutils
        theta in radians (``-aperture_theta * pi / 180``).
    """
    x = apertures["aperture_x"].to_numpy(dtype=np.float64)
    y = apertures["aperture_y"].to_numpy(dtype=np.float64)
    a = apertures["aperture_a"].to_numpy(dtype=np.float64)
    b = apertures["aperture_b"].to_numpy(dtype=np.float64)
    if config.aperture_units == "arcsec":
        a = a / config.pixel_scale
        b = b / config.pixel_scale
    theta = -apertures["aperture_theta"].to_numpy(dtype=np.float64) * (np.pi / 180.0)
    return x, y, a, b, theta


def _bad_pixels(
    values: np.ndarray,
    mask_values: np.ndarray | None,
    bad_bits: int,
    sat_level: float | None,
    mask_saturated: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classify a block of pixels as masked, non-finite or saturated.

    Returns
    -------
    tuple of ndarray of bool
        ``(masked, nonfinite, saturated)``; ``masked`` includes the saturated pixels when
        ``mask_saturated``.
    """
    nonfinite = ~np.isfinite(values)
    if mask_values is None:
        masked = np.zeros(values.shape, dtype=bool)
        sat = np.zeros(values.shape, dtype=bool)
    else:
        dt = mask_values.dtype
        bits = np.asarray(bad_bits & int(np.iinfo(dt).max), dtype=dt)
        masked = (mask_values & bits) != 0
        sat = (mask_values & np.asarray(int(MaskBit.SATURATED), dtype=dt)) != 0
    if sat_level is not None:
        with np.errstate(invalid="ignore"):
            sat = sat | (values >= sat_level)
    if mask_saturated:
        masked = masked | sat
    return masked, nonfinite, sat


def ellipse_extents(
    x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Measure each ellipse's bounding box and say which rows can be measured at all.

    Parameters
    ----------
    x, y : ndarray of float
        Centres, 0-based px.
    a, b : ndarray of float
        Semi-axes, px.
    theta : ndarray of float
        photutils angle, radians.

    Returns
    -------
    tuple of ndarray
        ``(hx, hy, usable)``: half widths of the bounding box (px) and the rows with a
        finite position, axes and angle and axes within [``MIN_AXIS_PX``, ``MAX_AXIS_PX``].
    """
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    with np.errstate(invalid="ignore", over="ignore"):  # huge axes: not usable
        hx = np.sqrt((a * cos_t) ** 2 + (b * sin_t) ** 2)
        hy = np.sqrt((a * sin_t) ** 2 + (b * cos_t) ** 2)
        usable = (
            np.isfinite(x)
            & np.isfinite(y)
            & np.isfinite(a)
            & np.isfinite(b)
            & np.isfinite(theta)
            & (a >= MIN_AXIS_PX)
            & (b >= MIN_AXIS_PX)
            & (a <= MAX_AXIS_PX)
            & (b <= MAX_AXIS_PX)
        )
    return hx, hy, usable


def _half_extents(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    theta: np.ndarray,
    nx: int,
    ny: int,
    flags: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Measure each ellipse's bounding box and find the rows that can be measured.

    Sets BAD_INPUT in ``flags`` on unusable rows and OFF_IMAGE on usable rows centred off
    the image.

    Returns
    -------
    tuple of ndarray
        ``(hx, hy, good_in)``: half widths of the bounding box in pixels, and the usable
        rows.
    """
    hx, hy, good_in = ellipse_extents(x, y, a, b, theta)
    with np.errstate(invalid="ignore"):
        off = (x < -0.5) | (x > nx - 0.5) | (y < -0.5) | (y > ny - 0.5)
    flags[~good_in] |= PhotFlag.BAD_INPUT
    flags[good_in & off] |= PhotFlag.OFF_IMAGE
    return hx, hy, good_in


def _pixel_box(
    x0: float, y0: float, hx: float, hy: float, nx: int, ny: int
) -> tuple[int, int, int, int, int]:
    """Cut an aperture's pixel box (half widths ``hx``, ``hy``) to the image.

    Returns
    -------
    tuple of int
        ``(ixmin, ixmax, iymin, iymax, flags)``: 0-based pixel ranges ``[min, max)`` and
        PhotFlag bits, TRUNCATED when the box crosses the image edge, OFF_IMAGE as well
        when nothing of it is left.
    """
    ixmin = math.floor(x0 - hx + 0.5)
    ixmax = math.floor(x0 + hx + 0.5) + 1
    iymin = math.floor(y0 - hy + 0.5)
    iymax = math.floor(y0 + hy + 0.5) + 1
    bits = 0
    if ixmin < 0 or iymin < 0 or ixmax > nx or iymax > ny:
        bits |= int(PhotFlag.TRUNCATED)
        ixmin, iymin = max(ixmin, 0), max(iymin, 0)
        ixmax, iymax = min(ixmax, nx), min(iymax, ny)
        if ixmax <= ixmin or iymax <= iymin:
            bits |= int(PhotFlag.OFF_IMAGE)
    return ixmin, ixmax, iymin, iymax, bits


def _overlap_weights(
    box: tuple[int, int, int, int],
    x0: float,
    y0: float,
    a: float,
    b: float,
    theta: float,
    use_exact: int,
    nsub: int,
) -> np.ndarray:
    """Compute the overlap of each pixel of ``box`` with the ellipse (circle when a == b).

    Returns
    -------
    ndarray of float64, shape (iymax - iymin, ixmax - ixmin)
        Overlap fractions in [0, 1].
    """
    ixmin, ixmax, iymin, iymax = box
    gx, gy = ixmax - ixmin, iymax - iymin
    xe0, xe1 = ixmin - 0.5 - x0, ixmax - 0.5 - x0
    ye0, ye1 = iymin - 0.5 - y0, iymax - 0.5 - y0
    if a == b:
        return circular_overlap_grid(xe0, xe1, ye0, ye1, gx, gy, a, use_exact, nsub)
    return elliptical_overlap_grid(xe0, xe1, ye0, ye1, gx, gy, a, b, theta, use_exact, nsub)


def _weighted_sum(
    cut: np.ndarray,
    mcut: np.ndarray | None,
    w: np.ndarray,
    bad_mask_bits: int,
    saturate_level: float | None,
    mask_saturated: bool,
) -> tuple[float, float, float, int]:
    """Sum one cutout with overlap weights ``w``, leaving out bad pixels.

    Returns
    -------
    tuple
        ``(aper_sum, area, area_masked, flags)``: ADU, px, px and PhotFlag bits.
    """
    tot = float(np.sum(w * cut))
    # fast path (most sources): nothing masked, nothing non-finite, nothing saturated
    # anywhere in the cutout; otherwise look at the pixels inside the aperture
    if (
        math.isfinite(tot)
        and (mcut is None or not mcut.any())
        and (saturate_level is None or float(cut.max()) < saturate_level)
    ):
        return tot, float(np.sum(w)), 0.0, 0
    masked, nonfinite, sat = _bad_pixels(cut, mcut, bad_mask_bits, saturate_level, mask_saturated)
    bits = 0
    inside = w > 0
    bad = masked | nonfinite
    if np.any(bad & inside):
        bits |= int(PhotFlag.MASKED)
        if np.any(nonfinite & inside & ~masked):
            bits |= int(PhotFlag.NONFINITE_PIXEL)
    # bad pixels outside the aperture (weight 0) must not turn the sum into NaN either
    wg = np.where(bad, 0.0, w)
    total = float(np.sum(wg * np.where(bad, 0.0, cut)))
    if np.any(sat & inside):
        bits |= int(PhotFlag.SATURATED)
    area = float(np.sum(wg))
    return total, area, float(np.sum(w)) - area, bits


def _ivar_sum(
    cut: np.ndarray,
    mcut: np.ndarray | None,
    icut: np.ndarray,
    w: np.ndarray,
    bad_mask_bits: int,
    saturate_level: float | None,
    mask_saturated: bool,
) -> float:
    """Sum ``overlap² / ivar`` over one cutout's pixels that enter the aperture sum.

    Pixels left out of the sum by :func:`_weighted_sum` (masked, non-finite, saturated
    with ``mask_saturated``) and pixels with ``ivar <= 0`` or a non-finite ivar add nothing.

    Returns
    -------
    float
        The variance of the aperture sum from the per-pixel variances, ADU².
    """
    masked, nonfinite, _ = _bad_pixels(cut, mcut, bad_mask_bits, saturate_level, mask_saturated)
    with np.errstate(invalid="ignore"):
        good = ~(masked | nonfinite) & (icut > 0) & (w > 0)
    if not good.any():
        return 0.0
    wg = w[good]
    return float(np.sum(wg * wg / icut[good].astype(np.float64)))


def aperture_sums(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    theta: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    subpixels: int = 0,
    bad_mask_bits: int = 0xFFFF,
    saturate_level: float | None = None,
    mask_saturated: bool = False,
    ivar: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Sum the pixels in elliptical apertures at 0-based pixel positions.

    A source with ``a == b`` uses the circular overlap routine. Masked pixels
    (``mask & bad_mask_bits``) and non-finite pixels are excluded.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Pixel values in ADU (float32 or float64).
    x, y : ndarray of float, shape (n,)
        Aperture centres: column and row, 0-based pixels (pixel centres at integers).
    a, b : ndarray of float, shape (n,)
        Semi-major and semi-minor axes in pixels (not arcsec).
    theta : ndarray of float, shape (n,)
        photutils angle of the major axis: radians, counter-clockwise from +x.
    mask : ndarray of unsigned int, shape (ny, nx), optional
        ``MaskBit`` bits per pixel (0 = good); None when there is no mask.
    subpixels : int, optional
        ``0`` (default) is the exact overlap; ``N`` samples each pixel on an N×N grid of
        sub-pixel centres (photutils 'subpixel', SExtractor's scheme for N=5).
    bad_mask_bits : int, optional
        A pixel is masked when ``mask & bad_mask_bits != 0``. Default: any bit.
    saturate_level : float, optional
        Pixels at or above this level (ADU), or with the SATURATED mask bit, set SATURATED.
    mask_saturated : bool, optional
        Also exclude saturated pixels like masked ones. Default False.
    ivar : ndarray of float, shape (ny, nx), optional
        Inverse variance per pixel, 1/ADU² (0 = no data). When given, the output also has
        ``var_ivar``; the other outputs do not depend on it.

    Returns
    -------
    dict of str to ndarray, each shape (n,)
        ``aper_sum`` (ADU), ``area`` (unmasked overlap, px), ``area_masked`` (px) and
        ``flags`` (int32 PhotFlag bits OFF_IMAGE, TRUNCATED, MASKED, SATURATED,
        NONFINITE_PIXEL, BAD_INPUT). BAD_INPUT: a non-finite position, axis or angle, or an
        axis outside [``MIN_AXIS_PX``, ``MAX_AXIS_PX``]; such rows (and rows entirely off
        the image) have NaN sums. With ``ivar``: ``var_ivar`` (ADU²), Σ overlap² / ivar over
        the pixels that enter ``aper_sum`` and have ivar > 0 (pixels with ivar <= 0 add
        nothing, like masked ones), NaN where ``aper_sum`` is NaN.
    """
    image = np.asarray(image)
    ny, nx = image.shape
    n = len(x)
    out_sum = np.full(n, np.nan)
    out_area = np.full(n, np.nan)
    out_amask = np.full(n, np.nan)
    flags = np.zeros(n, dtype=np.int32)
    out_var = None if ivar is None else np.full(n, np.nan)
    ivar = None if ivar is None else np.asarray(ivar)
    use_exact = 1 if subpixels == 0 else 0
    nsub = max(int(subpixels), 1)
    hx, hy, good_in = _half_extents(x, y, a, b, theta, nx, ny, flags)

    for i in np.flatnonzero(good_in):
        x0, y0 = float(x[i]), float(y[i])
        ixmin, ixmax, iymin, iymax, bits = _pixel_box(x0, y0, hx[i], hy[i], nx, ny)
        flags[i] |= bits
        if bits & PhotFlag.OFF_IMAGE:
            continue
        w = _overlap_weights(
            (ixmin, ixmax, iymin, iymax),
            x0,
            y0,
            float(a[i]),
            float(b[i]),
            float(theta[i]),
            use_exact,
            nsub,
        )
        cut = image[iymin:iymax, ixmin:ixmax]
        mcut = None if mask is None else mask[iymin:iymax, ixmin:ixmax]
        out_sum[i], out_area[i], out_amask[i], bits = _weighted_sum(
            cut, mcut, w, bad_mask_bits, saturate_level, mask_saturated
        )
        flags[i] |= bits
        if out_var is not None:
            icut = ivar[iymin:iymax, ixmin:ixmax]
            out_var[i] = _ivar_sum(cut, mcut, icut, w, bad_mask_bits, saturate_level,
                                   mask_saturated)
    out = {"aper_sum": out_sum, "area": out_area, "area_masked": out_amask, "flags": flags}
    if out_var is not None:
        out["var_ivar"] = out_var
    return out
