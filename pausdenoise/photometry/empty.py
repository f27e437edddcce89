"""Empty-aperture noise: the sky term of the aperture error measured from the frame itself.

The PAUS error formula takes the sky noise of an aperture of area A as A · σ_pix², σ_pix the
clipped scatter of the annulus pixels. That is right for white noise and wrong wherever the
pixels' noise is correlated or the "sky" holds structure the annulus does not see:
unresolved faint stars in a crowded field (confusion noise), a denoised image, resampled
frames. The empirical cure of deep-field photometry (e.g. Labbé et al. 2003; Skelton et al.
2014) is to measure the scatter of the flux in *empty* apertures of the same size, placed at
random where no catalogue source is, with the same recipe (aperture sum minus area × the
sigma-clipped annulus background): that scatter contains every noise the measurement of a
faint source meets, the background estimate's included.

:func:`empty_aperture_noise` places ``config.empty_apertures`` circles for each of
``N_RADII`` radii spanning the catalogue's aperture sizes (down to half the smallest),
measures them with the same kernels and takes their σ68 (half the central 68 % interval:
the interval an error bar claims; confusion noise is skewed and heavy-tailed, where the
MAD would understate it). σ(A) between the measured areas is interpolated linearly in
log–log (made non-decreasing); beyond them it is extrapolated with the end segments'
slopes, clipped to β between ½ (white noise) and 1 (noise coherent over the aperture).
A single power law σ = c · A^β is also fitted as a summary. On a crowded field the
log–log curve bends (β ≈ 0.9 up to a few tens of px², flatter beyond), and the power law
misses the measured scatter by 10–15 % at the areas of typical apertures.
:func:`sky_variance` evaluates σ(A)² for the catalogue rows. The profile-weighted flux's
sky terms take the effective sky variance per pixel measured with profile fluxes at empty
positions (:func:`profile_sky_variance`). Pixel convention: 0-based, pixel centres at integers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from pausdenoise.photometry.annulus import annulus_stats, sky_estimate
from pausdenoise.photometry.apertures import aperture_sums
from pausdenoise.photometry.config import PhotometryConfig
from pausdenoise.photometry.neighbours import neighbour_mask
from pausdenoise.photometry.profile import _FWHM_PER_SIGMA, profile_fluxes, stamp_radii
from pausdenoise.stats import sigma68

#: Radii (px) at which empty apertures are measured: this many, geometric between half the
#: catalogue's smallest circularised aperture radius (the profile-weighted flux's effective
#: area is smaller than the aperture's) and its largest.
N_RADII = 8
#: Fewest usable empty apertures at a radius for its scatter to enter the fit.
MIN_PER_RADIUS = 20


@dataclass(frozen=True)
class EmptyApertureNoise:
    """Scatter of the flux in empty apertures against aperture area.

    Attributes
    ----------
    area : ndarray of float
        Mean unmasked area of the empty apertures at each measured radius, px².
    sigma : ndarray of float
        σ68 of their background-subtracted flux, ADU.
    n : ndarray of int
        Usable empty apertures per radius.
    coef : float
        c of the summary power law σ(A) = c · A^β, ADU px^(−2β).
    beta : float
        β of that power law (½ for white noise; larger when the noise is correlated over
        the aperture). :meth:`sigma_at` interpolates the measured points instead.
    """

    area: np.ndarray
    sigma: np.ndarray
    n: np.ndarray
    coef: float
    beta: float

    def sigma_at(self, area: np.ndarray) -> np.ndarray:
        """Return σ(A) in ADU for areas in px² (NaN where the area is not > 0).

        Linear interpolation in log–log between the measured areas (σ made non-decreasing
        with area), extrapolated beyond them with the end segments' slopes clipped to
        [½, 1].

        Parameters
        ----------
        area : ndarray of float
            Aperture areas, px².

        Returns
        -------
        ndarray of float
            The scatter, ADU.
        """
        area = np.asarray(area, dtype=float)
        order = np.argsort(self.area)
        log_a = np.log(self.area[order])
        log_s = np.log(np.maximum.accumulate(self.sigma[order]))
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.log(np.where(area > 0, area, np.nan))
            out = np.interp(x, log_a, log_s)
            if log_a.size >= 2:
                lo = np.clip((log_s[1] - log_s[0]) / (log_a[1] - log_a[0]), 0.5, 1.0)
                hi = np.clip((log_s[-1] - log_s[-2]) / (log_a[-1] - log_a[-2]), 0.5, 1.0)
                out = np.where(x < log_a[0], log_s[0] + lo * (x - log_a[0]), out)
                out = np.where(x > log_a[-1], log_s[-1] + hi * (x - log_a[-1]), out)
            return np.where(area > 0, np.exp(out), np.nan)


@dataclass(frozen=True)
class EmptyField:
    """Where a frame's empty apertures may go (computed once per frame).

    Attributes
    ----------
    blocked : ndarray of bool
        Pixels no empty aperture may use (:func:`blocked_pixels`).
    distance : ndarray of float
        Distance of each pixel to the nearest blocked one, px.
    annulus_image : ndarray of float
        The image with NaN on the blocked pixels (the empty positions' annuli skip them).
    """

    blocked: np.ndarray
    distance: np.ndarray
    annulus_image: np.ndarray


def empty_field(image: np.ndarray, mask: np.ndarray | None,
                geometry: tuple[np.ndarray, ...], config: PhotometryConfig,
                sat_level: float | None, near: np.ndarray | None = None) -> EmptyField:
    """Build the frame's :class:`EmptyField`.

    Parameters
    ----------
    image, mask, geometry, config, sat_level, near
        As for :func:`blocked_pixels`.

    Returns
    -------
    EmptyField
        Blocked pixels, distance map and the annulus image.
    """
    blocked = blocked_pixels(image, mask, geometry, config, sat_level, near)
    return EmptyField(blocked, ndimage.distance_transform_edt(~blocked),
                      nan_at(image, blocked))


def blocked_pixels(image: np.ndarray, mask: np.ndarray | None,
                   geometry: tuple[np.ndarray, ...], config: PhotometryConfig,
                   sat_level: float | None, near: np.ndarray | None = None) -> np.ndarray:
    """Return the pixels no empty aperture (nor its annulus) may use.

    Non-finite, bad and saturated pixels, and the pixels within ``config.annulus_mask_grow``
    (at least 1) aperture semi-axes, ≥ 3 px, of every catalogue source.

    Parameters
    ----------
    image : ndarray of float, shape (ny, nx)
        The frame, ADU.
    mask : ndarray of int, shape (ny, nx), or None
        Non-zero in ``config.bad_mask_bits`` marks a bad pixel.
    geometry : tuple of ndarray
        Catalogue apertures ``(x, y, a, b, theta)``: 0-based px, semi-axes px, radians.
    config : PhotometryConfig
        ``bad_mask_bits``, ``annulus_mask_grow``.
    sat_level : float or None
        Saturation level, ADU.
    near : ndarray of bool, optional
        The catalogue sources' pixels, already computed with the same grow (the annulus
        mask of the measurement); computed here when None.

    Returns
    -------
    ndarray of bool
        True where blocked.
    """
    x, y, a, b, theta = geometry
    blocked = ~np.isfinite(image)
    if mask is not None:
        blocked |= (np.asarray(mask).astype(np.int64) & int(config.bad_mask_bits)) != 0
    if sat_level is not None:
        blocked |= image >= sat_level
    if near is not None:
        blocked |= near
    elif len(x):
        blocked |= neighbour_mask(image.shape, x, y, a, b, theta,
                                  grow=max(config.annulus_mask_grow, 1.0))
    return blocked


def free_positions(field: EmptyField, radius: float, margin: float, n: int,
                   rng: np.random.Generator, spacing: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Draw up to ``n`` distinct integer centres whose circle of ``radius`` px is unblocked.

    Parameters
    ----------
    field : EmptyField
        The frame's distance map to blocked pixels.
    radius : float
        Aperture radius, px.
    margin : float
        Least distance from the frame's edges, px (the annulus' outer radius).
    n : int
        Positions wanted.
    rng : numpy.random.Generator
        Random draws.
    spacing : float, optional
        With > 0, least distance between positions, px (drawn in random order, greedily).

    Returns
    -------
    tuple of ndarray
        x and y of the centres, 0-based px.
    """
    ny, nx = field.blocked.shape
    free = field.distance > radius + 0.5
    m = int(np.ceil(margin))
    if ny <= 2 * m or nx <= 2 * m:
        return np.empty(0), np.empty(0)
    free[:m], free[ny - m:], free[:, :m], free[:, nx - m:] = False, False, False, False
    yy, xx = np.nonzero(free)
    if yy.size == 0:
        return np.empty(0), np.empty(0)
    if spacing <= 0:
        pick = rng.choice(yy.size, size=min(n, yy.size), replace=False)
        return xx[pick].astype(float), yy[pick].astype(float)
    order = rng.permutation(yy.size)[: 50 * n]
    keep: list[int] = []
    for i in order:
        if keep and np.min((xx[keep] - xx[i]) ** 2 + (yy[keep] - yy[i]) ** 2) < spacing**2:
            continue
        keep.append(int(i))
        if len(keep) == n:
            break
    return xx[keep].astype(float), yy[keep].astype(float)


def spaced_batches(x: np.ndarray, y: np.ndarray, spacing: float) -> list[np.ndarray]:
    """Split positions into batches whose members are at least ``spacing`` apart.

    Greedy, in the given order: each position joins the first batch with no member
    closer than ``spacing``, else opens a new one.

    Parameters
    ----------
    x, y : ndarray of float
        Positions, px.
    spacing : float
        Least distance between members of one batch, px.

    Returns
    -------
    list of ndarray of int
        Indices into ``x`` of each batch; every position is in exactly one.
    """
    batches: list[list[int]] = []
    for i in range(len(x)):
        for members in batches:
            m = np.asarray(members)
            if np.min((x[m] - x[i]) ** 2 + (y[m] - y[i]) ** 2) >= spacing**2:
                members.append(i)
                break
        else:
            batches.append([i])
    return [np.asarray(b, dtype=np.int64) for b in batches]


def _stamp_neighbours(x: np.ndarray, y: np.ndarray, radii: np.ndarray,
                      px: np.ndarray, py: np.ndarray, p_radii: np.ndarray) -> np.ndarray:
    """Return the catalogue rows whose profile stamps may overlap one of the positions.

    Square stamps of half-sides ``radii`` (catalogue, at ``x, y``) and ``p_radii`` (at
    ``px, py``) overlap only if the centres are closer than √2 × the sum of the half-sides.

    Returns
    -------
    ndarray of int
        Indices into the catalogue, ascending.
    """
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(radii)
    if not ok.any() or px.size == 0:
        return np.empty(0, dtype=np.int64)
    idx = np.flatnonzero(ok)
    tree = cKDTree(np.column_stack([x[idx], y[idx]]))
    reach = np.sqrt(2.0) * (p_radii + float(np.max(radii[idx])) + 1.0)
    near = set()
    for k, hits in enumerate(tree.query_ball_point(np.column_stack([px, py]), reach)):
        hits = np.asarray(hits, dtype=np.int64)
        d = np.hypot(x[idx[hits]] - px[k], y[idx[hits]] - py[k])
        near.update(idx[hits[d < np.sqrt(2.0) * (radii[idx[hits]] + p_radii[k] + 1.0)]].tolist())
    return np.array(sorted(near), dtype=np.int64)


def empty_aperture_noise(
    image: np.ndarray,
    mask: np.ndarray | None,
    field: EmptyField,
    geometry: tuple[np.ndarray, ...],
    config: PhotometryConfig,
    sat_level: float | None = None,
    seed: int = 0,
) -> EmptyApertureNoise | None:
    """Measure the flux scatter of empty apertures and fit σ(A) (see the module docstring).

    Parameters
    ----------
    image : ndarray of float, shape (ny, nx)
        The image, ADU (raw or denoised).
    mask : ndarray of int, shape (ny, nx), or None
        Non-zero (in ``config.bad_mask_bits``) marks a bad pixel.
    field : EmptyField
        Where empty apertures may go (:func:`empty_field`: clear of bad and saturated pixels
        and of every catalogue source by ``config.annulus_mask_grow`` semi-axes, ≥ 3 px).
    geometry : tuple of ndarray
        The catalogue apertures ``(x, y, a, b, theta)``: 0-based px, semi-axes in px, θ in
        radians (their sizes set the radii).
    config : PhotometryConfig
        Annulus, clipping, background estimator and ``empty_apertures`` (per radius).
    sat_level : float, optional
        Saturation level, ADU (pixels at or above it are avoided).
    seed : int, optional
        Seed of the positions (the same frame gives the same positions).

    Returns
    -------
    EmptyApertureNoise or None
        None when fewer than two radii have ``MIN_PER_RADIUS`` usable apertures (a frame
        crowded or masked all over, or smaller than the annulus).
    """
    _, _, a, b, _ = geometry
    r_cat = np.sqrt(np.clip(a * b, 0.25, None))
    r_cat = r_cat[np.isfinite(r_cat)]
    if r_cat.size == 0:
        return None
    radii = np.geomspace(max(0.5 * r_cat.min(), 1.0), max(r_cat.max(), 1.0), N_RADII)
    radii = np.unique(np.round(radii, 2))
    if radii.size == 1:
        radii = np.array([0.7 * radii[0], radii[0], 1.4 * radii[0]])
    rng = np.random.default_rng(seed)
    areas, sigmas, counts = [], [], []
    for r in radii:
        cx, cy = free_positions(field, r, config.annulus_r_out, config.empty_apertures, rng)
        if cx.size < MIN_PER_RADIUS:
            continue
        circ = np.full(cx.size, r)
        ap = aperture_sums(image, cx, cy, circ, circ, np.zeros(cx.size), mask=mask,
                           subpixels=config.subpixels, bad_mask_bits=config.bad_mask_bits,
                           saturate_level=sat_level, mask_saturated=True)
        st = empty_sky(field, mask, cx, cy, config, sat_level)
        flux = ap["aper_sum"] - ap["area"] * st["bkg"]
        ok = np.isfinite(flux) & (st["bkg_n"] >= config.min_annulus_pixels)
        if ok.sum() < MIN_PER_RADIUS:
            continue
        f = flux[ok]
        areas.append(float(np.mean(ap["area"][ok])))
        sigmas.append(float(sigma68(f)))
        counts.append(int(ok.sum()))
    area, sigma = np.array(areas), np.array(sigmas)
    good = (area > 0) & (sigma > 0)
    if good.sum() < 2:
        return None
    slope = np.polyfit(np.log(area[good]), np.log(sigma[good]), 1)[0]
    beta = float(np.clip(slope, 0.5, 1.0))
    coef = float(np.exp(np.mean(np.log(sigma[good]) - beta * np.log(area[good]))))
    return EmptyApertureNoise(area[good], sigma[good], np.array(counts)[good], coef, beta)


def empty_sky(field: EmptyField, mask: np.ndarray | None,
              cx: np.ndarray, cy: np.ndarray, config: PhotometryConfig,
              sat_level: float | None) -> dict[str, np.ndarray]:
    """Measure the annulus sky of empty positions as the recipe does, blocked pixels left out.

    Parameters
    ----------
    field : EmptyField
        The frame's annulus image (NaN on blocked pixels).
    mask : ndarray of int or None
        The frame's mask.
    cx, cy : ndarray of float
        Positions, 0-based px.
    config : PhotometryConfig
        Annulus radii, clipping, background estimator.
    sat_level : float or None
        Saturation level, ADU.

    Returns
    -------
    dict of str to ndarray
        :func:`~pausdenoise.photometry.annulus.annulus_stats`' columns, plus ``bkg`` (the
        recipe's estimator, ADU/px) and ``var_b`` (its variance, ADU²).
    """
    st = annulus_stats(field.annulus_image, cx, cy, r_in=config.annulus_r_in,
                       r_out=config.annulus_r_out, mask=mask, sigma=config.sigma,
                       maxiters=config.maxiters, bad_mask_bits=config.bad_mask_bits,
                       saturate_level=sat_level, mask_saturated=True,
                       batch_size=config.batch_size)
    st["bkg"], st["var_b"] = sky_estimate(st, config.background)
    return st


def nan_at(image: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """Return a float copy of ``image`` with NaN on ``blocked`` (left out of the annuli).

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Pixel values, ADU.
    blocked : ndarray of bool, shape (ny, nx)
        Pixels to set to NaN.

    Returns
    -------
    ndarray of float
        The copy.
    """
    out = np.array(image, dtype=np.result_type(image.dtype, np.float32), copy=True)
    out[blocked] = np.nan
    return out


def sky_variance(noise: EmptyApertureNoise, area: np.ndarray) -> np.ndarray:
    """Return the empty-aperture sky variance σ(A)² for apertures of unmasked area ``area``.

    Parameters
    ----------
    noise : EmptyApertureNoise
        The frame's fit.
    area : ndarray of float
        Unmasked aperture areas, px².

    Returns
    -------
    ndarray of float
        Variance, ADU² (it includes the background estimate's own noise).
    """
    return noise.sigma_at(area) ** 2


def profile_area_proxy(shapes: tuple[np.ndarray, ...], fwhm_px: float) -> np.ndarray:
    """Return a quick estimate of each row's profile effective area (Σp)²/Σp², px².

    The profile is taken as one Gaussian: the intrinsic shape's half-light semi-axes as
    1.1774 σ along each axis (``hlr/√q`` and ``hlr·√q``), plus the PSF's FWHM as a
    Gaussian's and the pixel box (1/12 px² per axis); a Gaussian of covariance C has
    effective area 4π √det C. Enough to order the rows by extent, not to replace the
    stamp sums of :func:`~pausdenoise.photometry.profile.profile_fluxes`.

    Parameters
    ----------
    shapes : tuple of ndarray
        ``(hlr_px, q, bulge_frac)`` (:func:`~pausdenoise.photometry.profile.intrinsic_shapes`;
        circularised half-light radius in px, axis ratio b/a).
    fwhm_px : float
        The frame's PSF FWHM, px.

    Returns
    -------
    ndarray of float
        Effective areas, px² (NaN where a shape is not finite).
    """
    hlr, q = np.asarray(shapes[0], dtype=float), np.asarray(shapes[1], dtype=float)
    s2 = (2.0 * hlr / _FWHM_PER_SIGMA) ** 2  # half-light radius = FWHM/2 for a Gaussian
    v = (fwhm_px / _FWHM_PER_SIGMA) ** 2 + 1.0 / 12.0
    with np.errstate(invalid="ignore", divide="ignore"):
        det = (s2 / q + v) * (s2 * q + v)
    return 4.0 * np.pi * np.sqrt(det)


def spanning_rows(area: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n`` catalogue rows whose profile areas span the catalogue's whole range.

    Half are drawn at random (the catalogue's own mix of sizes), half at areas spaced
    evenly in log between the smallest and the largest finite ``area`` (the row nearest to
    each, in log), so that the largest profiles of the frame, often its brightest
    galaxies and rare among the rows, are measured too instead of extrapolated to.

    Parameters
    ----------
    area : ndarray of float
        Each row's effective area (:func:`profile_area_proxy`), px².
    n : int
        Rows wanted (repeats allowed).
    rng : numpy.random.Generator
        Random draws.

    Returns
    -------
    ndarray of int
        Row indices into ``area``, shuffled.
    """
    pick = rng.integers(0, len(area), n)
    ok = np.flatnonzero(np.isfinite(area) & (area > 0))
    if ok.size < 2 or n < 2:
        return pick
    order = ok[np.argsort(area[ok])]
    la = np.log(area[order])
    grid = np.linspace(la[0], la[-1], n - n // 2)
    j = np.clip(np.searchsorted(la, grid), 1, la.size - 1)
    j -= (grid - la[j - 1]) < (la[j] - grid)  # the nearer of the two neighbours
    pick[n // 2:] = order[j]
    return rng.permutation(pick)


def profile_sky_variance(
    field: EmptyField,
    mask: np.ndarray | None,
    geometry: tuple[np.ndarray, ...],
    shapes: tuple[np.ndarray, ...],
    pixels: dict[str, Any],
    *,
    fwhm_px: float,
    beta: float,
    catalogue_bkg: np.ndarray,
    config: PhotometryConfig,
    sat_level: float | None = None,
    seed: int = 0,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """Measure the sky variance per pixel that makes the profile flux's errors right.

    ``2 × config.empty_apertures`` catalogue rows (their shapes and angles; half at random,
    half spread evenly in log profile area over the catalogue's range: :func:`spanning_rows`)
    are put at empty positions of ``field`` (:func:`empty_field`), measured with
    :func:`~pausdenoise.photometry.profile.profile_fluxes` and the recipe's annulus sky, in
    batches whose stamps do not overlap one another; each is fitted jointly with the
    catalogue sources whose stamps overlap its own, as a catalogue source is (fitted alone,
    a neighbour's wings would count as noise the real measurement deblends).
    The truth there is 0, so F̂ divided by the error formula's shape
    ``sqrt(1/Σp² + (Σp/Σp²)² σ_b²/V)`` (V = 1) has σ68² = V_eff: the frame's effective sky
    variance per pixel, ADU², which holds pixel, correlated and confusion noise at the
    scale of a profile. Like the empty-aperture σ(A) of the aperture errors it is one
    curve per frame, not scaled by each source's annulus: on a crowded field the annulus
    scatter says little about the noise at profile scales (on the SAAO frames V_eff is
    tens of times the annulus variance, growing with the profile's extent).
    V_eff depends on the profile's extent: it is measured in up to 3 equal-count bins of the
    effective area (Σp)²/Σp² and fitted as V_eff = c·A^γ, γ clipped to [0, 1] (a constant
    with one bin), held at its end values outside the measured areas. Measuring the
    largest profiles rather than extrapolating to them matters on a crowded field: there
    V_eff grows with the area, and the brightest galaxies are the largest.

    Parameters
    ----------
    field : EmptyField
        Where empty positions may go.
    mask : ndarray or None
        The frame's mask (non-zero in ``config.bad_mask_bits``: bad).
    geometry : tuple of ndarray
        Catalogue apertures ``(x, y, a, b, theta)`` (0-based px, px, radians).
    shapes : tuple of ndarray
        The rows' ``(hlr_px, q, bulge_frac)``
        (:func:`~pausdenoise.photometry.profile.intrinsic_shapes`).
    pixels : dict
        The usable-pixel arrays of :func:`~pausdenoise.photometry.profile.profile_fluxes`.
    fwhm_px, beta : float
        The frame's Moffat PSF (px).
    catalogue_bkg : ndarray of float
        The catalogue rows' annulus sky, ADU/px (their joint fit with an empty position
        needs it).
    config : PhotometryConfig
        Annulus, clipping and ``empty_apertures``.
    sat_level : float, optional
        Saturation level, ADU.
    seed : int, optional
        Seed of the positions and rows.

    Returns
    -------
    callable or None
        ``f(area_eff)`` → V_eff per source, ADU² (the ``sky_variance`` of
        ``profile_fluxes``), or None with fewer than ``2 × MIN_PER_RADIUS`` usable empty positions.
    """
    x, y, a, b, theta = geometry
    if len(x) == 0:
        return None
    rng = np.random.default_rng([seed, 1])
    r = float(np.nanmedian(np.sqrt(np.clip(a * b, 0.25, None))))
    cx, cy = free_positions(field, r, config.annulus_r_out, 2 * config.empty_apertures, rng)
    if cx.size < 2 * MIN_PER_RADIUS:
        return None
    pick = spanning_rows(profile_area_proxy(shapes, fwhm_px), cx.size, rng)
    sky = empty_sky(field, mask, cx, cy, config, sat_level)
    radii = stamp_radii(shapes[0], shapes[1], fwhm_px, config).astype(float)
    # batches whose stamps do not overlap: each position is fitted alone among the catalogue
    spacing = 2.0 * float(np.median(radii))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_b = np.where(sky["bkg_std"] > 0, sky["var_b"] / sky["bkg_std"] ** 2, np.nan)
    z, area = np.full(cx.size, np.nan), np.full(cx.size, np.nan)
    for sel in spaced_batches(cx, cy, spacing):
        nb = _stamp_neighbours(x, y, radii, cx[sel], cy[sel], radii[pick[sel]])
        rows = np.concatenate([nb, pick[sel]])
        n_nb = nb.size
        res = profile_fluxes(
            pixels, np.r_[x[nb], cx[sel]], np.r_[y[nb], cy[sel]], theta[rows],
            tuple(s[rows] for s in shapes), fwhm_px=fwhm_px, beta=beta,
            sky=(np.r_[catalogue_bkg[nb], sky["bkg"][sel]], np.ones(rows.size),
                 np.r_[np.zeros(n_nb), ratio_b[sel]]),
            gain=np.inf, config=config)
        with np.errstate(invalid="ignore", divide="ignore"):
            # V = 1 and no Poisson term: flux_err is the error formula's shape
            z[sel] = res["flux"][n_nb:] / res["flux_err"][n_nb:]
        area[sel] = res["area_eff"][n_nb:]
    ok = np.isfinite(z) & np.isfinite(area) & (area > 0) \
        & (sky["bkg_n"] >= config.min_annulus_pixels)
    if ok.sum() < 2 * MIN_PER_RADIUS:
        return None
    z, area = z[ok], area[ok]
    nbin = int(min(3, z.size // (2 * MIN_PER_RADIUS)))
    # equal-count bins by rank (quantile edges collapse when many profiles share one size)
    groups = np.array_split(np.argsort(area, kind="stable"), nbin)  # nbin ≥ 1: z.size ≥ 40
    a_bin = np.array([np.median(area[g]) for g in groups])
    v_bin = np.array([sigma68(z[g]) ** 2 for g in groups])
    if len(groups) < 2 or np.ptp(np.log(a_bin)) < 0.05:
        v0 = float(sigma68(z) ** 2)
        return lambda area_eff: np.full(np.shape(area_eff), v0)
    gamma, icpt = np.polyfit(np.log(a_bin), np.log(v_bin), 1)
    gamma = float(np.clip(gamma, 0.0, 1.0))  # white (0) to coherent over the profile (1)
    icpt = float(np.mean(np.log(v_bin) - gamma * np.log(a_bin)))
    lo, hi = float(area.min()), float(area.max())

    def sky_variance_at(area_eff: np.ndarray) -> np.ndarray:
        # the power law over the measured areas; held at its ends outside them
        la = np.log(np.clip(np.asarray(area_eff, dtype=float), lo, hi))
        return np.exp(icpt + gamma * la)

    return sky_variance_at
