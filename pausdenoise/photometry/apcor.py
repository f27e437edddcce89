"""Aperture corrections: the share of a source's light that its aperture catches.

A fixed catalogue aperture catches a share of a source's light that depends on the seeing of
the exposure: in good seeing more of a compact galaxy falls inside, in bad seeing less. Fluxes
of the same source from two exposures then differ by more than their errors, and the
difference grows with S/N (it is a fraction of the flux). PAUS corrects its forced aperture
fluxes with the morphology of each galaxy convolved with each exposure's PSF; this module
computes that correction.

For each row, the **aperture fraction** is::

    T = Σᵢ wᵢ pᵢ

over the pixels ``i`` of the aperture's bounding box, with ``wᵢ`` the aperture's overlap
with the pixel (the weights of :func:`pausdenoise.photometry.apertures.aperture_sums`: exact,
or N×N sub-pixel sampling) and ``pᵢ`` the unit-total-flux profile of the source: its
intrinsic shape (the catalogue's ``profile_*`` columns, or the shape derived from its aperture;
:func:`pausdenoise.photometry.profile.intrinsic_shapes`) convolved with the frame's Moffat PSF
and the pixel box (:func:`pausdenoise.photometry.profile.profile_components`). ``T`` is the
expected ``flux / total flux`` of the aperture sum on a perfect sky, so ``flux / T`` estimates
the total flux on every exposure alike. The geometry alone decides ``T``: masked pixels, the
image's edge and the pixel values play no part (those rows carry their own flags).

The aperture also catches part of its **neighbours' light**: each catalogue source ``j`` puts
``F_j T_ij`` into aperture ``i``, with ``T_ij = Σ wᵢ p_j`` over aperture ``i``'s pixels and
``F_j`` its profile-weighted total flux (the joint fit of overlapping sources,
:mod:`pausdenoise.photometry.profile`). :func:`neighbour_light` sums it over the sources
whose profile stamps reach the aperture, with the error ``sqrt(Σ (T_ij σ_j)²)``; a source
without a finite profile flux adds nothing. ``(flux − neighbours) / T`` then estimates the
source's own total flux whatever the seeing and the crowding.

Conventions are those of the aperture sums: 0-based pixel positions (pixel centres at
integers), lengths in pixels, ``theta`` the photutils angle in radians counter-clockwise
from +x.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from pausdenoise.photometry.apertures import _overlap_weights, ellipse_extents
from pausdenoise.photometry.calibration import with_zero_point_error, without_zero_point_error
from pausdenoise.photometry.config import PhotometryConfig
from pausdenoise.photometry.profile import (
    _BLOCK_ELEMENTS,
    _compact,
    _evaluate,
    profile_components,
)

__all__ = ["MAX_BOX_PX", "aperture_corrected", "aperture_fractions", "neighbour_light"]

#: Rows whose aperture's bounding box is wider than this (px) get NaN: no sensible catalogue
#: aperture is, and the per-row profile evaluation grows with the box's area.
MAX_BOX_PX = 2048


def _boxes(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray,
           theta: np.ndarray) -> tuple[np.ndarray, ...]:
    """Half-extents and pixel boxes of the apertures (not cut to any image).

    Returns
    -------
    tuple of ndarray
        ``hx, hy`` (px), ``ix0, ix1, iy0, iy1`` (int64, 0-based ``[min, max)``), as the
        aperture sums choose them, and ``usable``: the rows the aperture sums measure
        (:func:`pausdenoise.photometry.apertures.ellipse_extents`) whose box is at most
        :data:`MAX_BOX_PX` wide; the boxes of the other rows are meaningless.
    """
    hx, hy, usable = ellipse_extents(x, y, a, b, theta)
    with np.errstate(invalid="ignore", over="ignore"):
        usable &= 2 * np.maximum(hx, hy) <= MAX_BOX_PX
        lo_x, hi_x = np.nan_to_num(x - hx + 0.5), np.nan_to_num(x + hx + 0.5)
        lo_y, hi_y = np.nan_to_num(y - hy + 0.5), np.nan_to_num(y + hy + 0.5)
    return (hx, hy, np.floor(lo_x).astype(np.int64), np.floor(hi_x).astype(np.int64) + 1,
            np.floor(lo_y).astype(np.int64), np.floor(hi_y).astype(np.int64) + 1, usable)


def aperture_fractions(
    geometry: tuple[np.ndarray, ...],
    shapes: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    fwhm_px: float,
    beta: float,
    config: PhotometryConfig,
    components: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Compute the share of each source's total flux that falls in its aperture.

    Parameters
    ----------
    geometry : tuple of ndarray, each shape (n,)
        ``(x, y, a, b, theta)``: aperture centres (0-based pixels), semi-axes (px) and
        photutils angle (radians, counter-clockwise from +x).
    shapes : tuple of ndarray, each shape (n,)
        Intrinsic ``(hlr_px, q, bulge_frac)``: circularised half-light radius (px), axis
        ratio and bulge fraction (:func:`pausdenoise.photometry.profile.intrinsic_shapes`);
        the profile's major axis lies along the aperture's ``theta``.
    fwhm_px : float
        FWHM of the frame's Moffat PSF (px, before pixelisation).
    beta : float
        The Moffat β.
    config : PhotometryConfig
        ``subpixels`` (the aperture weights), ``profile_trunc_hlr``, ``psf_trunc_fwhm``.
    components : tuple of ndarray, optional
        The rows' profiles ``(coef, amp)`` as
        :func:`pausdenoise.photometry.profile.profile_components` made them from these
        shapes, PSF and angles (the profile-weighted flux's, reused); computed here when
        not given.

    Returns
    -------
    ndarray of float64, shape (n,)
        ``T`` in (0, 1]: the aperture's share of the source's total flux. NaN where the
        geometry or the shape is not finite (or the axis ratio not in (0, 1]), an axis lies
        outside the aperture sums' range,
        or the bounding box is wider than :data:`MAX_BOX_PX`.
    """
    x, y, a, b, theta = (np.asarray(v, dtype=np.float64) for v in geometry)
    hlr, q, frac = (np.asarray(v, dtype=np.float64) for v in shapes)
    n = len(x)
    out = np.full(n, np.nan)
    _, _, bx0, bx1, by0, by1, usable = _boxes(x, y, a, b, theta)
    with np.errstate(invalid="ignore"):
        ok = (usable & np.isfinite(hlr) & (hlr >= 0) & np.isfinite(q) & (q > 0) & (q <= 1)
              & np.isfinite(frac))
    idx = np.flatnonzero(ok)
    if not len(idx) or not (np.isfinite(fwhm_px) and fwhm_px > 0):
        return out
    if components is None:
        coef, amp = profile_components(hlr[idx], q[idx], theta[idx],
                                       np.clip(frac[idx], 0.0, 1.0), float(fwhm_px),
                                       float(beta), config)
    else:
        coef, amp = components[0][idx], components[1][idx]
    use_exact, nsub = (1, 1) if config.subpixels == 0 else (0, int(config.subpixels))
    xi, yi = x[idx], y[idx]
    ix0, ix1, iy0, iy1 = bx0[idx], bx1[idx], by0[idx], by1[idx]
    # sources with boxes of one shape are evaluated together (profile._evaluate); the
    # overlap weights come one source at a time from photutils' routine
    shape_key = (iy1 - iy0) * (MAX_BOX_PX + 2) + (ix1 - ix0)
    for key in np.unique(shape_key):
        sel = np.flatnonzero(shape_key == key)
        ny, nx = int(iy1[sel[0]] - iy0[sel[0]]), int(ix1[sel[0]] - ix0[sel[0]])
        dx = (ix0[sel, None] + np.arange(nx)) - xi[sel, None]
        dy = (iy0[sel, None] + np.arange(ny)) - yi[sel, None]
        p = _evaluate(_compact(coef[sel], amp[sel]),
                      np.repeat(dx[:, None, :], ny, axis=1).reshape(len(sel), -1),
                      np.repeat(dy[:, :, None], nx, axis=2).reshape(len(sel), -1))
        for k, j in enumerate(sel.tolist()):
            i = int(idx[j])
            w = _overlap_weights((int(ix0[j]), int(ix1[j]), int(iy0[j]), int(iy1[j])),
                                 float(x[i]), float(y[i]), float(a[i]), float(b[i]),
                                 float(theta[i]), use_exact, nsub)
            out[i] = float(np.dot(w.ravel(), p[k]))
    return out


def neighbour_light(
    geometry: tuple[np.ndarray, ...],
    components: tuple[np.ndarray, np.ndarray],
    fluxes: np.ndarray,
    flux_errs: np.ndarray,
    radii: np.ndarray,
    config: PhotometryConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum the light the other catalogue sources put into each row's aperture.

    Parameters
    ----------
    geometry : tuple of ndarray, each shape (n,)
        ``(x, y, a, b, theta)`` as for :func:`aperture_fractions`.
    components : tuple of ndarray
        The rows' profiles ``(coef, amp)``
        (:func:`pausdenoise.photometry.profile.profile_components`, one row per source).
    fluxes, flux_errs : ndarray of float64, shape (n,)
        The sources' profile-weighted total fluxes and errors (ADU); a non-finite flux adds
        no light.
    radii : ndarray of int64, shape (n,)
        Half-sizes of the sources' profile stamps (px,
        :func:`pausdenoise.photometry.profile.stamp_radii`): a source reaches an aperture
        whose box its stamp overlaps.
    config : PhotometryConfig
        ``subpixels`` (the aperture weights).

    Returns
    -------
    light, light_err : ndarray of float64, shape (n,)
        ``Σ_j F_j T_ij`` and ``sqrt(Σ_j (T_ij σ_j)²)`` (ADU) over the other sources ``j``;
        NaN where the aperture is unusable (as :func:`aperture_fractions`), 0 without a
        neighbour in reach.
    """
    x, y, a, b, theta = (np.asarray(v, dtype=np.float64) for v in geometry)
    coef, amp = components
    n = len(x)
    light, err2 = np.full(n, np.nan), np.full(n, np.nan)
    with np.errstate(invalid="ignore"):
        f = np.asarray(fluxes, dtype=np.float64)
        e = np.where(np.isfinite(flux_errs), flux_errs, 0.0)
        emits = np.isfinite(f) & np.isfinite(x) & np.isfinite(y) & (f != 0)
    hx, hy, ix0, ix1, iy0, iy1, ok = _boxes(x, y, a, b, theta)
    light[ok], err2[ok] = 0.0, 0.0
    pairs = _reach_pairs((x, y, hx, hy), ok, emits, np.asarray(radii, dtype=np.float64))
    if not len(pairs):
        return light, np.sqrt(err2)
    use_exact, nsub = (1, 1) if config.subpixels == 0 else (0, int(config.subpixels))
    box = np.c_[ix0, ix1, iy0, iy1]
    weights = {i: _overlap_weights(tuple(box[i].tolist()), float(x[i]), float(y[i]),
                                   float(a[i]), float(b[i]), float(theta[i]), use_exact,
                                   nsub)
               for i in np.unique(pairs[:, 0]).tolist()}
    pairs = pairs[np.argsort(pairs[:, 1], kind="stable")]
    starts = np.flatnonzero(np.r_[True, np.diff(pairs[:, 1]) != 0])
    for group in np.split(pairs, starts[1:]):
        j, reached = int(group[0, 1]), group[:, 0]
        shares = _shares(_compact(coef[j:j + 1], amp[j:j + 1]), float(x[j]), float(y[j]),
                         box[reached], [weights[i] for i in reached.tolist()])
        light[reached] += f[j] * shares
        err2[reached] += (e[j] * shares) ** 2
    return light, np.sqrt(err2)


def _reach_pairs(centres: tuple[np.ndarray, ...], ok: np.ndarray, emits: np.ndarray,
                 radii: np.ndarray) -> np.ndarray:
    """List the (aperture, source) pairs in which the source's profile stamp reaches the box.

    Parameters
    ----------
    centres : tuple of ndarray
        ``(x, y, hx, hy)``: positions and the boxes' half-extents (px).
    ok, emits : ndarray of bool
        Rows with a usable aperture; rows whose light is counted.
    radii : ndarray of float64
        Stamp half-sizes (px).

    Returns
    -------
    ndarray of int64, shape (m, 2)
        ``(i, j)`` rows, ``i != j``: source ``j`` lies within ``hx_i + r_j + 1`` px of
        aperture ``i``'s centre along x and ``hy_i + r_j + 1`` along y.
    """
    x, y, hx, hy = centres
    src = np.flatnonzero(emits)
    aps = np.flatnonzero(ok)
    if not len(src) or not len(aps):
        return np.empty((0, 2), dtype=np.int64)
    tree = cKDTree(np.c_[x[src], y[src]])
    reach = float(radii[src].max()) + 1.0
    near = tree.query_ball_point(np.c_[x[aps], y[aps]], np.hypot(hx[aps] + reach, hy[aps] + reach))
    i = np.repeat(aps, [len(c) for c in near])
    j = src[np.fromiter((k for c in near for k in c), dtype=np.int64, count=len(i))]
    keep = ((i != j) & (np.abs(x[j] - x[i]) <= hx[i] + radii[j] + 1)
            & (np.abs(y[j] - y[i]) <= hy[i] + radii[j] + 1))
    return np.c_[i[keep], j[keep]]


def _shares(coef: np.ndarray, xj: float, yj: float, boxes: np.ndarray,
            weights: list[np.ndarray]) -> np.ndarray:
    """Compute one source's share ``T_ij = Σ wᵢ p_j`` of each aperture that it reaches.

    The profile is evaluated once on the bounding box of all the apertures' boxes when that
    region is no larger than their boxes together, else on each box (a far-flung set of
    apertures); in row strips of at most ``_BLOCK_ELEMENTS`` (components × pixels).

    Parameters
    ----------
    coef : ndarray of float32, shape (1, K, 4)
        The source's profile components (:func:`pausdenoise.photometry.profile._compact`).
    xj, yj : float
        The source's position (0-based px).
    boxes : ndarray of int64, shape (m, 4)
        The apertures' pixel boxes ``(ix0, ix1, iy0, iy1)``, ``[min, max)``.
    weights : list of ndarray
        The apertures' overlap weights on their boxes, shape ``(iy1 − iy0, ix1 − ix0)``.

    Returns
    -------
    ndarray of float64, shape (m,)
    """
    x0, x1 = int(boxes[:, 0].min()), int(boxes[:, 1].max())
    y0, y1 = int(boxes[:, 2].min()), int(boxes[:, 3].max())
    areas = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    if (x1 - x0) * (y1 - y0) > int(areas.sum()):
        return np.array([float(np.sum(w * _region(coef, xj, yj, tuple(bx.tolist()))))
                         for bx, w in zip(boxes, weights, strict=True)])
    p = _region(coef, xj, yj, (x0, x1, y0, y1))
    return np.array([float(np.sum(w * p[bx[2] - y0:bx[3] - y0, bx[0] - x0:bx[1] - x0]))
                     for bx, w in zip(boxes, weights, strict=True)])


def _region(coef: np.ndarray, xj: float, yj: float, box: tuple[int, ...]) -> np.ndarray:
    """Evaluate one source's profile on the pixels of ``box`` ``(ix0, ix1, iy0, iy1)``.

    Returns
    -------
    ndarray of float64, shape (iy1 − iy0, ix1 − ix0)
    """
    bx0, bx1, by0, by1 = box
    nx = bx1 - bx0
    out = np.empty((by1 - by0, nx))
    dx = np.arange(bx0, bx1, dtype=np.float64) - xj
    rows = max(1, _BLOCK_ELEMENTS // max(coef.shape[1] * nx, 1))
    for r0 in range(by0, by1, rows):
        r1 = min(r0 + rows, by1)
        dy = np.arange(r0, r1, dtype=np.float64) - yj
        out[r0 - by0:r1 - by0] = _evaluate(
            coef, np.tile(dx, r1 - r0)[None, :], np.repeat(dy, nx)[None, :]
        ).reshape(r1 - r0, nx)
    return out


def aperture_corrected(table: pd.DataFrame) -> pd.DataFrame:
    """Turn aperture fluxes into the sources' own total fluxes.

    ``f' = (f − N·zp) / T`` and ``σ' = sqrt(σ_c² + (σ_N·zp)²) / T``, with ``T`` the aperture
    share, ``N ± σ_N`` the neighbours' light in the aperture (ADU), ``zp`` the row's
    zero-point and ``σ_c`` the flux error without the zero-point's error
    (:func:`~pausdenoise.photometry.calibration.without_zero_point_error`); the zero-point's
    error is then added back for ``f'`` (:func:`~pausdenoise.photometry.calibration.
    with_zero_point_error`), so it stays ``f'·σZP/ZP`` as for any calibrated flux.

    Parameters
    ----------
    table : pandas.DataFrame
        Photometry rows with ``flux_cal``, ``flux_cal_err`` (calibrated units), ``zp``,
        ``aper_frac`` (:func:`aperture_fractions`), ``aper_neighbours`` and
        ``aper_neighbours_err`` (:func:`neighbour_light`), as the photometry writes them,
        and ``zp_err`` (without it the zero-point is taken as exact).

    Returns
    -------
    pandas.DataFrame
        The rows with a finite, positive ``aper_frac`` and a finite neighbours' light,
        ``flux_cal`` and ``flux_cal_err`` corrected (the error of ``T`` itself is not added:
        it follows from the catalogue shape and the PSF, both taken as exact); the other rows
        are left out.
    """
    frac = table["aper_frac"].to_numpy(dtype=np.float64)
    light = table["aper_neighbours"].to_numpy(dtype=np.float64)
    light_err = table["aper_neighbours_err"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        keep = (np.isfinite(frac) & (frac > 0) & np.isfinite(light)
                & np.isfinite(light_err))
    out = table.loc[keep].copy()
    zp = out["zp"].to_numpy(dtype=np.float64)
    zp_err = (out["zp_err"].to_numpy(dtype=np.float64) if "zp_err" in out.columns
              else np.zeros(len(out)))
    t, n, ne = frac[keep], light[keep] * zp, light_err[keep] * zp
    f = out["flux_cal"].to_numpy(dtype=np.float64)
    stat = without_zero_point_error(f, out["flux_cal_err"].to_numpy(dtype=np.float64), zp,
                                    zp_err)
    out["flux_cal"] = (f - n) / t
    out["flux_cal_err"] = with_zero_point_error(out["flux_cal"].to_numpy(dtype=np.float64),
                                                np.hypot(stat, ne) / t, zp, zp_err)
    return out
