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

Conventions are those of the aperture sums: 0-based pixel positions (pixel centres at
integers), lengths in pixels, ``theta`` the photutils angle in radians counter-clockwise
from +x.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pausdenoise.photometry.apertures import MAX_AXIS_PX, MIN_AXIS_PX, _overlap_weights
from pausdenoise.photometry.config import PhotometryConfig
from pausdenoise.photometry.profile import _compact, _evaluate, profile_components

__all__ = ["MAX_BOX_PX", "aperture_corrected", "aperture_fractions"]

#: Rows whose aperture's bounding box is wider than this (px) get NaN: no sensible catalogue
#: aperture is, and the per-row profile evaluation grows with the box's area.
MAX_BOX_PX = 2048


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
    with np.errstate(invalid="ignore", over="ignore"):
        hx = np.sqrt((a * np.cos(theta)) ** 2 + (b * np.sin(theta)) ** 2)
        hy = np.sqrt((a * np.sin(theta)) ** 2 + (b * np.cos(theta)) ** 2)
        ok = (np.isfinite(x) & np.isfinite(y) & np.isfinite(theta)
              & (a >= MIN_AXIS_PX) & (b >= MIN_AXIS_PX) & (a <= MAX_AXIS_PX)
              & (b <= MAX_AXIS_PX) & (2 * np.maximum(hx, hy) <= MAX_BOX_PX)
              & np.isfinite(hlr) & (hlr >= 0) & np.isfinite(q) & (q > 0) & (q <= 1)
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
    ix0 = np.floor(xi - hx[idx] + 0.5).astype(np.int64)
    ix1 = np.floor(xi + hx[idx] + 0.5).astype(np.int64) + 1
    iy0 = np.floor(yi - hy[idx] + 0.5).astype(np.int64)
    iy1 = np.floor(yi + hy[idx] + 0.5).astype(np.int64) + 1
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


def aperture_corrected(table: pd.DataFrame) -> pd.DataFrame:
    """Turn aperture fluxes into total fluxes: divide them by their aperture share.

    Parameters
    ----------
    table : pandas.DataFrame
        Photometry rows with ``flux_cal``, ``flux_cal_err`` (calibrated units) and
        ``aper_frac`` (:func:`aperture_fractions`, written by the photometry).

    Returns
    -------
    pandas.DataFrame
        The rows with a finite, positive ``aper_frac``, with ``flux_cal`` and
        ``flux_cal_err`` divided by it (the error of ``aper_frac`` itself is not added: it
        follows from the catalogue shape and the PSF, both taken as exact); the other rows
        are left out.
    """
    frac = table["aper_frac"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(frac) & (frac > 0)
    out = table.loc[keep].copy()
    out["flux_cal"] = out["flux_cal"] / frac[keep]
    out["flux_cal_err"] = out["flux_cal_err"] / frac[keep]
    return out
