"""The point-spread function of one frame: from its header, or measured on its own stars.

The PSF is described as a circular Moffat profile,
``I(r) ∝ (1 + (r/α)²)^(−β)`` with ``FWHM = 2α·sqrt(2^(1/β) − 1)``. All sizes are in pixels
of the frame; pixel centres are at integer 0-based coordinates. The measured FWHM is that of
the Moffat *before* pixelisation (each model pixel is integrated over its area when fitting),
so it is the value to give GalSim's ``Moffat(fwhm=...)`` before drawing with the pixel.

:func:`measure_psf` finds bright, unsaturated, isolated point-like sources in the frame,
fits each with a Moffat plus a constant sky by least squares on a small stamp, and keeps
the most compact population of fitted sizes (the stellar locus), so that galaxies do not
inflate the answer. When β is not given, the brightest locus stars are refitted together
with one common β (inverse-variance weighted), which pins β far better than single-star
fits. :func:`frame_psf` prefers the header (``psf_fwhm_px``, else ``seeing``) and measures
only when neither is there.

The answer is the circular FWHM of each star (about the geometric mean of the axes of an
elongated PSF), median over the stars; the PSF is taken to be constant over the frame.

An elongated PSF (tracking, focus, optics) is described by an elliptical Moffat of the same
FWHM (the geometric mean of its axes) and β, whose radius is
``ρ² = ((1 − e1)·dx² − 2·e2·dx·dy + (1 + e1)·dy²) / √(1 − e1² − e2²)``
(:func:`elliptical_radius2`): its second moments have the ellipticity
``(e1, e2) = ((Qxx − Qyy), 2·Qxy) / (Qxx + Qyy)``, x along columns, y along rows.
:func:`psf_ellipticity` measures it on the same isolated stars as :func:`measure_psf`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from pausdenoise.errors import PsfError
from pausdenoise.stats import mad_sigma

__all__ = ["PsfEstimate", "PsfShape", "elliptical_moffat_stamp", "elliptical_radius2",
           "frame_psf", "measure_psf", "moffat_fwhm_to_alpha", "moffat_stamp",
           "psf_ellipticity", "stored_ellipticity"]

DETECT_SNR = 15.0
"""Minimum peak signal-to-noise (peak above sky / sky σ) of a candidate star."""

NEIGHBOUR_SNR = 5.0
"""Peak S/N of another source that makes a candidate not isolated."""

MIN_FWHM_PX = 1.0
"""Fits narrower than this (px) are cosmic rays or hot pixels, not stars."""

STAMP_FWHM = 3.0
"""Half-size of the fitting stamp in units of the rough FWHM (clipped to 5-20 px)."""

JOINT_STARS = 20
"""Most stars (the brightest of the stellar locus) fitted together for a common β."""

TAYLOR_MIN_FWHM = 4.0
"""FWHM (px) from which one second-order Taylor term per pixel integrates the Moffat to
better than 0.15 % of its peak; narrower profiles are split into 3×3 sub-pixels first."""


@dataclass(frozen=True)
class PsfEstimate:
    """The PSF of one frame as a circular Moffat profile.

    Attributes
    ----------
    fwhm_px : float
        Moffat FWHM in pixels (before pixelisation).
    beta : float
        Moffat β (the given default when not fitted).
    n_stars : int
        Number of stars the measurement used; 0 when taken from the header.
    source : str
        ``"header"`` or ``"measured"``.
    shape : PsfShape or None
        Its ellipticity, measured on the same candidate stars (:func:`measure_psf` with
        ``ellipticity=True``, where at least 5 allow it); None otherwise.
    """

    fwhm_px: float
    beta: float
    n_stars: int
    source: str
    shape: PsfShape | None = None


def moffat_fwhm_to_alpha(fwhm: float | np.ndarray, beta: float | np.ndarray) -> np.ndarray:
    """Moffat core radius α from the FWHM and β.

    Parameters
    ----------
    fwhm : float or ndarray
        FWHM in any length unit (pixels here).
    beta : float or ndarray
        Moffat β (> 1).

    Returns
    -------
    ndarray
        α in the unit of ``fwhm``.
    """
    return np.asarray(fwhm) / (2.0 * np.sqrt(2.0 ** (1.0 / np.asarray(beta)) - 1.0))


def _positive(value: object) -> float | None:
    """Read a header value as a finite positive float.

    Parameters
    ----------
    value : object
        Any header value.

    Returns
    -------
    float or None
        The value, or None when it is missing, not a number, not finite or not > 0.
    """
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def frame_psf(
    attrs: Mapping,
    image: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    pixel_scale: float,
    beta: float = 3.0,
) -> PsfEstimate:
    """Return the PSF of a frame: from its header attributes, else measured on its pixels.

    Parameters
    ----------
    attrs : Mapping
        The frame's attributes. ``psf_fwhm_px`` (FWHM in pixels, with ``psf_beta`` when
        stored, e.g. measured at ingest) is used first, then ``seeing`` (FWHM in arcsec,
        divided by ``pixel_scale``); ``saturate`` (ADU) is
        passed to :func:`measure_psf` when measuring.
    image : ndarray, optional
        The frame's pixels (ADU), needed only when the header has no PSF size.
    mask : ndarray of int, optional
        The frame's mask (non-zero = bad pixel; see :mod:`pausdenoise.maskbits`).
    pixel_scale : float
        Pixel scale in arcsec per pixel.
    beta : float
        Moffat β reported with a header FWHM when no ``psf_beta`` is stored.

    Returns
    -------
    PsfEstimate
        ``source="header"`` with ``n_stars=0``, or the measurement's estimate.

    Raises
    ------
    PsfError
        The header has no PSF size and no image is given, or no usable star is found.
    """
    fwhm = _positive(attrs.get("psf_fwhm_px"))
    if fwhm is None:
        seeing = _positive(attrs.get("seeing"))
        if seeing is not None:
            if not pixel_scale > 0:
                raise PsfError(f"pixel_scale must be > 0 arcsec/px, got {pixel_scale!r}")
            fwhm = seeing / float(pixel_scale)
    if fwhm is not None:
        stored_beta = _positive(attrs.get("psf_beta"))
        return PsfEstimate(fwhm_px=fwhm, beta=float(stored_beta or beta), n_stars=0,
                           source="header")
    if image is None:
        raise PsfError("no psf_fwhm_px or seeing in the frame's attributes and no image given")
    return measure_psf(image, mask, saturate=_positive(attrs.get("saturate")))


def _background(image: np.ndarray, bad: np.ndarray, box: int = 64) -> tuple[np.ndarray, float]:
    """Estimate a smooth sky map (clipped block medians, interpolated) and the sky noise.

    Parameters
    ----------
    image : ndarray
        The frame in ADU.
    bad : ndarray of bool
        Pixels to ignore.
    box : int
        Block size in pixels.

    Returns
    -------
    sky : ndarray
        Sky map in ADU, the shape of ``image``.
    sigma : float
        Sky noise σ in ADU (MAD of the sky-subtracted good pixels).

    Raises
    ------
    PsfError
        No good pixel, or zero noise.
    """
    ny, nx = image.shape
    by, bx = max(1, ny // box), max(1, nx // box)
    work = np.where(bad, np.nan, image)
    med = np.full((by, bx), np.nan)
    ys = np.linspace(0, ny, by + 1).astype(int)
    xs = np.linspace(0, nx, bx + 1).astype(int)
    for j in range(by):
        for i in range(bx):
            block = work[ys[j] : ys[j + 1], xs[i] : xs[i + 1]]
            if np.isfinite(block).any():
                # median after a 3σ clip: sources barely move it
                v = block[np.isfinite(block)]
                m, s = np.median(v), mad_sigma(v)
                v = v[np.abs(v - m) < 3 * s] if s > 0 else v
                med[j, i] = np.median(v) if v.size else m
    if not np.isfinite(med).any():
        raise PsfError("no good pixel in the frame")
    med = np.where(np.isfinite(med), med, np.nanmedian(med))
    sky = ndimage.zoom(med, (ny / by, nx / bx), order=1, mode="nearest", grid_mode=True)
    sky = sky[:ny, :nx]
    resid = (image - sky)[~bad]
    sigma = float(mad_sigma(resid))
    if not sigma > 0:
        raise PsfError("the sky noise of the frame is zero (constant image?)")
    return sky, sigma


def _peaks(resid: np.ndarray, bad: np.ndarray, sigma: float, snr: float) -> np.ndarray:
    """Find local maxima of the lightly smoothed residual with peak S/N ≥ ``snr``.

    Parameters
    ----------
    resid : ndarray
        Sky-subtracted frame, ADU.
    bad : ndarray of bool
        Pixels to ignore.
    sigma : float
        Sky noise σ per pixel, ADU.
    snr : float
        Threshold on the (smoothed and raw) peak S/N.

    Returns
    -------
    ndarray of int, shape (n, 2)
        0-based (y, x) of the peaks, brightest raw peak first.
    """
    smooth = ndimage.gaussian_filter(np.where(bad, 0.0, resid), 1.0)
    # smoothing by a σ=1 px Gaussian lowers white noise by 2√π ≈ 3.5
    smooth_sigma = sigma / (2.0 * math.sqrt(math.pi))
    is_max = smooth == ndimage.maximum_filter(smooth, size=5, mode="constant", cval=-np.inf)
    ok = is_max & (smooth > snr * smooth_sigma) & (resid > snr * sigma / 2) & ~bad
    yx = np.argwhere(ok)
    return yx[np.argsort(-resid[ok])]


def _half_max_fwhm(resid: np.ndarray, y: int, x: int, h: int = 6) -> float:
    """Estimate a rough FWHM from the area above half the peak in a (2h+1)² box.

    Parameters
    ----------
    resid : ndarray
        Sky-subtracted frame, ADU.
    y, x : int
        0-based position of the peak.
    h : int
        Half-size of the box, px.

    Returns
    -------
    float
        FWHM in px of a disc with the same area.
    """
    box = resid[max(0, y - h) : y + h + 1, max(0, x - h) : x + h + 1]
    area = int(np.count_nonzero(box >= 0.5 * resid[y, x]))
    return 2.0 * math.sqrt(area / math.pi)


def _isolated(yx: np.ndarray, others: np.ndarray, radius: float) -> np.ndarray:
    """Tell which peaks have no other peak within ``radius``.

    Parameters
    ----------
    yx : ndarray of int, shape (n, 2)
        The peaks to test (each is also in ``others``).
    others : ndarray of int, shape (m, 2)
        All significant peaks.
    radius : float
        Isolation radius, px.

    Returns
    -------
    ndarray of bool
        True where only the peak itself lies within ``radius``.
    """
    if len(others) < 2:
        return np.ones(len(yx), bool)
    from scipy.spatial import cKDTree  # local: only needed here

    tree = cKDTree(others)
    counts = np.array([len(tree.query_ball_point(p, radius)) for p in yx])
    return counts <= 1


def _candidates(
    image: np.ndarray, bad: np.ndarray, saturated: np.ndarray, max_fit: int
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Select bright, isolated candidate stars with clean stamps.

    Parameters
    ----------
    image : ndarray
        The frame in ADU (bad pixels zeroed).
    bad : ndarray of bool
        Masked or non-finite pixels.
    saturated : ndarray of bool
        Pixels at or above the saturation level.
    max_fit : int
        Most candidates returned (brightest first).

    Returns
    -------
    yx : ndarray of int, shape (n, 2)
        0-based (y, x) of the candidates' peaks.
    resid : ndarray
        Sky-subtracted frame, ADU.
    h : int
        Stamp half-size, px.
    guess : float
        Rough FWHM, px.

    Raises
    ------
    PsfError
        No candidate passes the cuts.
    """
    sky, sigma = _background(image, bad)
    resid = image - sky
    faint = _peaks(resid, bad, sigma, NEIGHBOUR_SNR)
    bright = faint[resid[faint[:, 0], faint[:, 1]] > DETECT_SNR * sigma] if len(faint) else faint
    if len(bright) == 0:
        raise PsfError(f"no source with peak S/N > {DETECT_SNR:g} in the frame")
    guess = float(np.median([_half_max_fwhm(resid, y, x) for y, x in bright[:50]]))
    guess = max(guess, 1.5)
    h = int(np.clip(round(STAMP_FWHM * guess), 5, 20))
    ny, nx = image.shape
    inside = (bright[:, 0] >= h) & (bright[:, 0] < ny - h) & (bright[:, 1] >= h)
    inside &= bright[:, 1] < nx - h
    bright = bright[inside]
    bright = bright[_isolated(bright, faint, max(3.0 * guess, h + 2.0))]
    unusable = bad | saturated
    near_bad = ndimage.maximum_filter(unusable.astype(np.uint8), size=2 * h + 1) > 0
    bright = bright[~near_bad[bright[:, 0], bright[:, 1]]]
    if len(bright) == 0:
        raise PsfError(
            "no isolated, unsaturated source clear of masked pixels "
            f"(stamp half-size {h} px, FWHM guess {guess:.1f} px)"
        )
    return bright[:max_fit], resid, h, guess


def _moffat_pixels(p: np.ndarray, beta: float, n: int) -> np.ndarray:
    """Evaluate pixel-integrated circular Moffats plus constant skies on square stamps.

    The integral over a (sub-)pixel of side h is ``f + h²∇²f/24`` at its centre (exact
    to second order); pixels are split into 3×3 sub-pixels when the FWHM is below
    :data:`TAYLOR_MIN_FWHM`.

    Parameters
    ----------
    p : ndarray, shape (..., 5)
        Per stamp (x0, y0, flux, fwhm, sky): centre offset from the stamp's central pixel
        and FWHM in px, total flux and sky in ADU.
    beta : float
        Moffat β, common to all stamps.
    n : int
        Stamp side, px (odd).

    Returns
    -------
    ndarray, shape (..., n, n)
        Model stamps in ADU.
    """
    p = np.asarray(p, dtype=float)
    k = 1 if np.min(p[..., 3]) >= TAYLOR_MIN_FWHM else 3
    x0, y0, flux, fwhm, sky = (p[..., i, None, None, None, None] for i in range(5))
    sub = (np.arange(k) + 0.5) / k - 0.5
    grid = np.arange(n, dtype=float) - n // 2
    dx = grid[None, :, None, None] + sub[None, None, None, :] - x0
    dy = grid[:, None, None, None] + sub[None, None, :, None] - y0
    alpha2 = moffat_fwhm_to_alpha(fwhm, beta) ** 2
    u1 = 1.0 + (dx * dx + dy * dy) / alpha2
    amp = (beta - 1.0) / (math.pi * alpha2)
    # Moffat: f = amp·u1^(−β); its Laplacian is 4·amp·β/α² · u1^(−β−2) · (β(u1 − 1) − 1)
    f = u1 ** (-beta)
    lap = 4.0 * beta / alpha2 * f / (u1 * u1) * (beta * (u1 - 1.0) - 1.0)
    prof = amp * (f + lap / (24.0 * k * k))
    return flux[..., 0, 0] * prof.mean(axis=(-2, -1)) + sky[..., 0, 0]


def moffat_stamp(fwhm_px: float, beta: float, size: int, x0: float = 0.0,
                 y0: float = 0.0) -> np.ndarray:
    """Return a pixel-integrated circular Moffat of unit flux on a square stamp.

    Parameters
    ----------
    fwhm_px : float
        FWHM before pixelisation, px.
    beta : float
        Moffat β.
    size : int
        Stamp side, px (odd; the central pixel is offset 0).
    x0, y0 : float
        Centre's offset from the central pixel, px.

    Returns
    -------
    ndarray (size, size)
        Fraction of the flux in each pixel (sums to < 1 by the light beyond the stamp).
    """
    return _moffat_pixels(np.array([x0, y0, 1.0, fwhm_px, 0.0]), float(beta), int(size))


def _fit_star(stamp: np.ndarray, beta: float | None, guess: float) -> np.ndarray | None:
    """Fit one stamp with a Moffat plus a constant sky by least squares.

    Parameters
    ----------
    stamp : ndarray, shape (2h+1, 2h+1)
        Sky-subtracted pixels (ADU) centred on the peak.
    beta : float or None
        Fixed β, or None to fit it.
    guess : float
        Starting FWHM, px.

    Returns
    -------
    ndarray or None
        (x0, y0, flux, fwhm, sky, β) as in :func:`_moffat_pixels`, or None when the fit
        failed or ran into a bound.
    """
    n = stamp.shape[0]
    flux0 = max(float(stamp.sum()), float(stamp.max()))
    p0 = [0.0, 0.0, flux0, guess, 0.0, 3.0 if beta is None else beta]
    lo = [-2.0, -2.0, 0.0, 0.5, -np.inf, 1.2]
    hi = [2.0, 2.0, np.inf, 2.0 * n, np.inf, 15.0]
    nfit = 6 if beta is None else 5

    def resid(q: np.ndarray) -> np.ndarray:
        b = q[5] if beta is None else beta
        return (_moffat_pixels(q[:5], b, n) - stamp).ravel()

    try:
        fit = optimize.least_squares(
            resid, p0[:nfit], bounds=(lo[:nfit], hi[:nfit]), x_scale="jac", max_nfev=200
        )
    except (ValueError, np.linalg.LinAlgError):
        return None
    p = np.append(fit.x, [] if beta is None else [beta])
    at_bound = np.isclose(p, lo, rtol=1e-3) | np.isclose(p, hi, rtol=1e-3)
    beta_at_bound = beta is None and at_bound[5]
    if not fit.success or at_bound[3] or beta_at_bound or p[3] < MIN_FWHM_PX:
        return None
    return p


def _pixel_variance(stamps: np.ndarray, models: np.ndarray) -> np.ndarray:
    """Estimate each stamp pixel's noise variance from the fit residuals.

    The residuals of the single-star fits are regressed as ``r² = a + c·m`` on the model
    signal above sky ``m`` (sky noise plus Poisson noise of the star), so that the joint fit
    can weight the faint wings properly without knowing the gain.

    Parameters
    ----------
    stamps : ndarray, shape (s, n, n)
        Sky-subtracted stamps, ADU.
    models : ndarray, shape (s, n, n)
        Their single-star model stamps (without sky), ADU.

    Returns
    -------
    ndarray, shape (s, n, n)
        Variance per pixel, ADU².
    """
    m = np.clip(models, 0.0, None)
    r2 = (stamps - models) ** 2
    design = np.stack([np.ones(m.size), m.ravel()], axis=1)
    (a, c), *_ = np.linalg.lstsq(design, r2.ravel(), rcond=None)
    floor = float(np.median(r2[m < 0.05 * m.max()])) if (m < 0.05 * m.max()).any() else a
    return np.maximum(a, floor * 0.5) + max(float(c), 0.0) * m


def _joint_fit(stamps: np.ndarray, params: np.ndarray) -> tuple[float, np.ndarray]:
    """Refit stars together with one common Moffat β, weighting pixels by inverse variance.

    Each star keeps its own centre, flux, FWHM and sky. Single-star β estimates are noisy
    and skewed (β is poorly tied down by faint wings); a common β uses the wings of every
    star at once.

    Parameters
    ----------
    stamps : ndarray, shape (s, n, n)
        Sky-subtracted stamps, ADU.
    params : ndarray, shape (s, 6)
        Starting values from :func:`_fit_star`.

    Returns
    -------
    beta : float
        The common β.
    fwhm : ndarray, shape (s,)
        Each star's FWHM with that β, px.
    """
    s, n = stamps.shape[0], stamps.shape[1]
    first = np.stack([_moffat_pixels(p[:5], p[5], n) - p[4] for p in params])
    skies = params[:, 4, None, None]
    weight = (1.0 / np.sqrt(_pixel_variance(stamps - skies, first))).ravel()
    p0 = np.concatenate([[float(np.median(params[:, 5]))], params[:, :5].ravel()])
    lo = np.concatenate([[1.2], np.tile([-2.0, -2.0, 0.0, 0.5, -np.inf], s)])
    hi = np.concatenate([[15.0], np.tile([2.0, 2.0, np.inf, 2.0 * n, np.inf], s)])
    p0 = np.clip(p0, lo + 1e-6, hi - 1e-6)
    rows = np.repeat(np.arange(s), n * n)

    def resid(q: np.ndarray) -> np.ndarray:
        return weight * (_moffat_pixels(q[1:].reshape(s, 5), q[0], n) - stamps).ravel()

    def jac(q: np.ndarray) -> np.ndarray:
        # forward differences; the stars are independent, so one step of parameter k of
        # every star at once gives all their columns k (6 model evaluations in all)
        base, out = resid(q), np.zeros((rows.size, q.size))
        for k in range(6):
            step = np.zeros_like(q)
            cols = [0] if k == 0 else 1 + 5 * np.arange(s) + (k - 1)
            step[cols] = 1e-6 * np.maximum(np.abs(q[cols]), 1.0)
            diff = (resid(q + step) - base) / step[cols][rows if k else 0]
            out[np.arange(rows.size), 0 if k == 0 else 1 + 5 * rows + (k - 1)] = diff
        return out

    fit = optimize.least_squares(
        resid, p0, jac=jac, bounds=(lo, hi), x_scale="jac", tr_solver="exact", max_nfev=100
    )
    return float(fit.x[0]), fit.x[1:].reshape(s, 5)[:, 3]


def _stellar_locus(fwhm: np.ndarray) -> np.ndarray:
    """Boolean selection of the most compact dense clump of fitted FWHMs (the stars).

    Stars are the most compact population and their fitted sizes agree to a few per cent,
    while galaxies spread to larger sizes. Counting the fits within ±5 % (in log FWHM) of
    each fit, the locus is the smallest size whose window holds at least half as many
    fits as the richest window; its centre is the densest point within the next 5 %, and
    members are those within 3 robust σ (clipped to 3-5 %) of the members' median.

    Parameters
    ----------
    fwhm : ndarray
        Fitted FWHMs, px.

    Returns
    -------
    ndarray of bool
        True for the members of the stellar locus.
    """
    lf = np.log(fwhm)
    order = np.sort(lf)
    half = 0.05
    counts = np.searchsorted(order, order + half) - np.searchsorted(order, order - half)
    first = int(np.flatnonzero(counts >= 0.5 * counts.max())[0])
    near = np.flatnonzero((order >= order[first]) & (order <= order[first] + half))
    centre = order[near[int(np.argmax(counts[near]))]]
    sel = np.abs(lf - centre) < half
    for _ in range(3):
        med = np.median(lf[sel])
        width = float(np.clip(3.0 * float(mad_sigma(lf[sel])), 0.03, half))
        sel = np.abs(lf - med) < width
    return sel


def measure_psf(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    saturate: float | None = None,
    beta: float | None = None,
    max_stars: int = 100,
    ellipticity: bool = False,
) -> PsfEstimate:
    """Measure the Moffat PSF of a frame from its own stars.

    Candidates are local maxima of the sky-subtracted image with peak S/N above
    :data:`DETECT_SNR`, at least a stamp away from the edges, with no masked or saturated
    pixel in their stamp and no other source (peak S/N ≥ :data:`NEIGHBOUR_SNR`) within
    about three FWHM. Each is fitted with a pixel-integrated circular Moffat plus a
    constant sky; the stellar locus (the most compact dense clump of fitted FWHMs) is kept
    and the medians of its FWHM and β are returned.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame in ADU (sky not subtracted is fine; a smooth sky map is removed).
    mask : ndarray of int, optional
        Non-zero marks a bad pixel (any :mod:`pausdenoise.maskbits` bit); stars with one in
        their stamp are not used.
    saturate : float, optional
        Saturation level in ADU (raw pixel value); stars reaching it are not used.
    beta : float, optional
        Fixed Moffat β; fitted per star (median returned) when None.
    max_stars : int
        Most stars used (the brightest of the stellar locus); three times as many
        candidates are fitted. When β is fitted, the brightest :data:`JOINT_STARS` of them
        are refitted with a common β and give the FWHM.
    ellipticity : bool
        Also measure the PSF's ellipticity on the brightest ``max_stars`` candidates, as
        :func:`psf_ellipticity` does (without selecting the candidates a second time).

    Returns
    -------
    PsfEstimate
        ``source="measured"``; ``n_stars`` = number of stars whose FWHMs were
        averaged (median); ``shape`` with ``ellipticity`` (None when fewer than 5
        stars give a measurement).

    Raises
    ------
    PsfError
        No candidate passes the cuts or no fit converges; the message says which.
    """
    if beta is not None and not beta > 1.0:
        raise PsfError(f"Moffat beta must be > 1, got {beta!r}")
    yx, resid, h, guess = _frame_candidates(image, mask, saturate, 3 * max_stars)
    stamps, fits = [], []
    for y, x in yx:
        stamp = resid[y - h : y + h + 1, x - h : x + h + 1]
        fit = _fit_star(stamp, beta, guess)
        if fit is not None:
            stamps.append(stamp)
            fits.append(fit)
    if not fits:
        raise PsfError(f"none of {len(yx)} candidate stars gave a usable Moffat fit")
    params = np.array(fits)
    sel = np.flatnonzero(_stellar_locus(params[:, 3]))[:max_stars]
    fwhm, b = params[sel, 3], float(np.median(params[sel, 5]))
    if beta is None and sel.size >= 2:
        joint = sel[:JOINT_STARS]
        try:
            b, fwhm = _joint_fit(np.array(stamps)[joint], params[joint])
        except (ValueError, np.linalg.LinAlgError):
            pass  # keep the single-star medians
    shape = None
    if ellipticity:
        try:  # the brightest candidates, as psf_ellipticity takes them
            shape = _shape_of(yx[:max_stars], resid, h, float(np.median(fwhm)), b)
        except PsfError:
            pass  # too few stars: the round description stands alone
    return PsfEstimate(fwhm_px=float(np.median(fwhm)), beta=b, n_stars=int(fwhm.size),
                       source="measured", shape=shape)


def _frame_candidates(image: np.ndarray, mask: np.ndarray | None, saturate: float | None,
                      max_fit: int) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Mark a frame's bad and saturated pixels and select its candidate stars.

    Returns
    -------
    tuple
        :func:`_candidates`' (y, x) peaks, sky-subtracted frame, stamp half-size, FWHM guess.
    """
    img = np.asarray(image, dtype=np.float64)
    bad = ~np.isfinite(img)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    saturated = img >= float(saturate) if saturate is not None else np.zeros_like(bad)
    return _candidates(np.where(bad, 0.0, img), bad, saturated, max_fit)


@dataclass(frozen=True)
class PsfShape:
    """The ellipticity of a frame's PSF, measured on its stars.

    Attributes
    ----------
    e1, e2 : float
        The elliptical Moffat's ellipticity (:func:`elliptical_radius2`): the median of the
        stars' Gaussian-weighted second moments, corrected for the weight by the same
        measurement on a noiseless model of the frame's FWHM and β. x along columns, y along
        rows; ``e1 > 0``: longer along x; ``e2 > 0``: longer along x = y.
    e1_err, e2_err : float
        Standard errors of the stars' medians (1.2533 σ / √n), before the correction.
    n_stars : int
        Stars measured.
    """

    e1: float
    e2: float
    e1_err: float
    e2_err: float
    n_stars: int


def stored_ellipticity(attrs: Mapping) -> tuple[float, float] | None:
    """Return a frame's PSF ellipticity from its attributes, None where it was not measured.

    Parameters
    ----------
    attrs : mapping
        The frame's attributes (``psf_e1``, ``psf_e2`` from the ingest,
        :func:`measure_psf` with ``ellipticity=True``).

    Returns
    -------
    (float, float) or None
        ``(e1, e2)``; None when either is missing or not a finite number.
    """
    try:
        e1, e2 = float(attrs["psf_e1"]), float(attrs["psf_e2"])
    except (KeyError, TypeError, ValueError):
        return None
    return (e1, e2) if math.isfinite(e1) and math.isfinite(e2) else None


def elliptical_radius2(
    dx: np.ndarray, dy: np.ndarray, e1: float, e2: float
) -> np.ndarray:
    """Return the squared elliptical radius of offsets (dx, dy) for ellipticity (e1, e2).

    ``ρ² = ((1 − e1)·dx² − 2·e2·dx·dy + (1 + e1)·dy²) / √(1 − e1² − e2²)``: a profile
    ``f(ρ²)`` has second moments proportional to ``[[1 + e1, e2], [e2, 1 − e1]]`` and the
    same area inside each contour as the round ``f(dx² + dy²)``, so a Moffat keeps its FWHM
    as the geometric mean of its axes.

    Parameters
    ----------
    dx, dy : ndarray
        Offsets from the centre, px (x along columns, y along rows).
    e1, e2 : float
        Ellipticity, ``e1² + e2² < 1``.

    Returns
    -------
    ndarray
        ρ², px².

    Raises
    ------
    PsfError
        ``e1² + e2² ≥ 1``.
    """
    d = 1.0 - e1 * e1 - e2 * e2
    if not d > 0.0:
        raise PsfError(f"ellipticity ({e1}, {e2}) has modulus ≥ 1")
    return ((1.0 - e1) * dx * dx - 2.0 * e2 * dx * dy + (1.0 + e1) * dy * dy) / math.sqrt(d)


def elliptical_moffat_stamp(
    fwhm_px: float, beta: float, e1: float, e2: float, size: int, x0: float = 0.0,
    y0: float = 0.0, subsample: int = 5,
) -> np.ndarray:
    """Return a pixel-integrated elliptical Moffat of unit flux on a square stamp.

    Each pixel is the mean of ``subsample²`` sub-pixel samples.

    Parameters
    ----------
    fwhm_px : float
        FWHM before pixelisation (geometric mean of the axes), px.
    beta : float
        Moffat β (> 1).
    e1, e2 : float
        Ellipticity (:func:`elliptical_radius2`).
    size : int
        Stamp side, px (odd; the central pixel is offset 0).
    x0, y0 : float
        Centre's offset from the central pixel, px.
    subsample : int
        Sub-pixels per pixel along each axis.

    Returns
    -------
    ndarray (size, size)
        Fraction of the flux in each pixel.
    """
    k = int(subsample)
    fine = (np.arange(size * k) + 0.5) / k - 0.5 - size // 2
    dy, dx = fine[:, None] - y0, fine[None, :] - x0
    alpha2 = float(moffat_fwhm_to_alpha(fwhm_px, beta)) ** 2
    prof = (beta - 1.0) / (math.pi * alpha2) * (
        1.0 + elliptical_radius2(dx, dy, e1, e2) / alpha2) ** (-beta)
    return prof.reshape(size, k, size, k).mean(axis=(1, 3))


def _weighted_ellipticity(stamp: np.ndarray, sigma_w: float) -> tuple[float, float]:
    """Ellipticity of a stamp's second moments under a round Gaussian weight (σ_w px).

    The weight is recentred on the weighted centroid five times; the stamp's centre pixel
    is the first guess.

    Returns
    -------
    (float, float)
        ``(Qxx − Qyy, 2·Qxy) / (Qxx + Qyy)``; NaN when the weighted flux is not positive.
    """
    h = stamp.shape[0] // 2
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(float)
    cx = cy = 0.0
    for _ in range(5):
        w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * sigma_w**2)) * stamp
        tot = w.sum()
        if not tot > 0:
            return math.nan, math.nan
        cx, cy = float((w * xx).sum() / tot), float((w * yy).sum() / tot)
    qxx = (w * (xx - cx) ** 2).sum() / tot
    qyy = (w * (yy - cy) ** 2).sum() / tot
    qxy = (w * (xx - cx) * (yy - cy)).sum() / tot
    return float((qxx - qyy) / (qxx + qyy)), float(2.0 * qxy / (qxx + qyy))


def psf_ellipticity(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    fwhm_px: float,
    beta: float,
    saturate: float | None = None,
    max_stars: int = 100,
) -> PsfShape:
    """Measure the ellipticity of a frame's PSF on its isolated stars.

    The stars are :func:`measure_psf`'s candidates (peak S/N above :data:`DETECT_SNR`,
    no other source within about three FWHM, no masked or saturated pixel in the stamp),
    on the frame less its smooth sky. Each star's second moments are taken under a round
    Gaussian weight of σ = 1.5 FWHM / 2.355 centred on the star; the medians over the stars
    are then turned into the elliptical Moffat's ``(e1, e2)`` (the weight makes the
    measured ellipticity smaller than the profile's): three fixed-point steps that
    measure a noiseless :func:`elliptical_moffat_stamp` of the frame's FWHM and β the same
    way.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame in ADU.
    mask : ndarray of int, optional
        Non-zero marks a bad pixel.
    fwhm_px : float
        The PSF's FWHM (e.g. :func:`measure_psf`), px.
    beta : float
        Its Moffat β.
    saturate : float, optional
        Saturation level in ADU; stars reaching it are not used.
    max_stars : int
        Most stars measured (the brightest candidates).

    Returns
    -------
    PsfShape
        The ellipticity, its errors and the number of stars.

    Raises
    ------
    PsfError
        No candidate passes the cuts, or fewer than 5 stars give a measurement.
    """
    yx, resid, h, _ = _frame_candidates(image, mask, saturate, max_stars)
    return _shape_of(yx, resid, h, fwhm_px, beta)


def _shape_of(yx: np.ndarray, resid: np.ndarray, h: int, fwhm_px: float, beta: float
              ) -> PsfShape:
    """Measure the ellipticity on the stamps around ``yx`` (see :func:`psf_ellipticity`).

    Returns
    -------
    PsfShape
        The elliptical Moffat's (e1, e2), the errors of the stars' medians, their number.

    Raises
    ------
    PsfError
        Fewer than 5 stars give a measurement.
    """
    sigma_w = 1.5 * fwhm_px / 2.355
    e = np.array([_weighted_ellipticity(resid[y - h : y + h + 1, x - h : x + h + 1], sigma_w)
                  for y, x in yx])
    e = e[np.isfinite(e).all(axis=1)]
    if len(e) < 5:
        raise PsfError(f"{len(e)} isolated stars measured; the PSF's ellipticity needs 5")
    measured = np.median(e, axis=0)
    err = 1.2533 * e.std(axis=0) / math.sqrt(len(e))
    intrinsic = measured.copy()
    for _ in range(3):
        model = elliptical_moffat_stamp(fwhm_px, beta, *intrinsic, 2 * h + 1)
        intrinsic = intrinsic + measured - np.array(_weighted_ellipticity(model, sigma_w))
        modulus = math.hypot(*intrinsic)
        if modulus >= 0.95:
            intrinsic *= 0.95 / modulus
    return PsfShape(float(intrinsic[0]), float(intrinsic[1]), float(err[0]), float(err[1]),
                    len(e))
