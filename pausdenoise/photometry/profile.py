"""Profile-weighted forced photometry (optimal extraction; Horne 1986, Naylor 1998).

For a source with unit-total-flux profile ``p`` (pixels ``i``), sky ``b`` and per-pixel
variance ``V``, the total flux and its error are (ADU)::

    F̂  = Σ wᵢ (yᵢ − b) / Σ wᵢ pᵢ,          wᵢ = pᵢ / V
    σ̂² = Σ wᵢ² (V + F̂⁺ pᵢ / gain) / (Σ wᵢ pᵢ)²  +  (Σ wᵢ / Σ wᵢ pᵢ)² σ_b²

``b`` is the annulus sky of the aperture recipe (``bkg``), ``V = bkg_std²`` and
``σ_b² = bkg_std² / bkg_n`` (× π/2 for the median): the same background terms as the
aperture error. The source's own Poisson term enters the error only, not the weights, so
the estimator is linear in the pixels and unbiased when ``p`` is right.

**Profile.** ``p`` never depends on the measured pixels: it is the catalogue's intrinsic
shape (``profile_hlr`` arcsec, ``profile_q``, ``profile_bulge_frac``; major axis at the
row's photutils ``theta``), a de Vaucouleurs bulge + exponential disk truncated at
``profile_trunc_hlr`` hlr, convolved with the frame's Moffat PSF (``fwhm_px``, ``beta``,
truncated at ``psf_trunc_fwhm``) and the pixel box. Each is a mixture of Gaussians
(:mod:`pausdenoise.photometry.mog`), so the convolution adds covariances:
``C = s_k² hlr² R diag(1/q, q) Rᵀ + (σ_m² FWHM² + 1/12) I`` (px²; the box of one pixel has
variance 1/12 per axis). ``p`` is evaluated at pixel centres (0-based, integers) on a square
stamp of half-size ``ceil(profile_stamp_fwhm·FWHM + profile_stamp_hlr·hlr_major)`` px and
normalised to unit *total* flux analytically, so ``F̂`` estimates the total flux even when
part of the profile lies off the stamp, off the image or on masked pixels. Rows without
profile columns get an exponential disk derived from the aperture (``ProfFlag.APPROX_PROFILE``).

**Excluded pixels.** Masked (``mask & bad_mask_bits``), non-finite, saturated (at/above the
saturation level) and off-image pixels are simply left out of every sum. A row with less than
``profile_min_weight`` of its stamp's ``Σ p²`` left is flagged ``LOW_WEIGHT``.

**Neighbours.** Sources whose stamps overlap form connected groups; the fluxes of a group
are solved jointly by linear least squares on the union of their stamps, ``G F = r`` with
``G_ii = Σ pᵢ²``, ``G_ij = Σ pᵢpⱼ`` over their common usable pixels and
``r_i = Σ pᵢ (y − bᵢ)`` (each column of the design matrix is a member's profile on its own
stamp). Errors: ``σ̂ᵢ² = (G⁻¹)_ii (Vᵢ + Pᵢ) + ((G⁻¹ s)_i)² σ_b,i²`` with ``s_j = Σ pⱼ`` and
``Pᵢ = Σ_j F̂ⱼ⁺ Σ pᵢ²pⱼ / (gain Σ pᵢ²)`` (the Poisson variance of the source and its
neighbours seen through ``pᵢ²``). An isolated source reduces exactly to the formula above.
So a neighbour's light does not enter a source's flux, except the part of it that falls
outside the neighbour's own stamp. On a crowded field one group can hold most of the
catalogue; a group of more than ``profile_max_group`` sources is solved in spatial tiles,
each tile's system holding its sources and those within ``profile_group_margin`` median
stamp half-sizes around it, and each source keeping its own tile's solution. A source
depends on distant ones only through chains of overlapping profiles, so with the default
margin (4) the tiles give the dense solution to ~1e-4 of the errors, in memory and time
linear in the group's size instead of quadratic and cubic.

Performance: profiles are evaluated for batches of sources of equal stamp size at once
(``exp`` of a batched matrix product over components × pixels, float32); galaxy components
that the PSF blurs to nearly the same width are merged first (flux and second moments
kept). The neighbour cross terms loop over overlapping pairs, the joint solves over groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise.photometry.config import PhotometryConfig
from pausdenoise.photometry.mog import moffat_mixture, sersic_mixture

__all__ = [
    "PROFILE_COLUMNS",
    "intrinsic_shapes",
    "overlap_groups",
    "profile_components",
    "profile_fluxes",
    "stamp_radii",
]

#: Optional catalogue columns of the intrinsic profile: hlr (arcsec), axis ratio b/a and
#: bulge (Sérsic n=4) flux fraction; the rest is an exponential disk of the same shape.
PROFILE_COLUMNS = ("profile_hlr", "profile_q", "profile_bulge_frac")

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Galaxy components whose PSF-convolved variances differ by less than this factor are merged
#: (flux and second moments kept).
_MERGE_SPREAD = 0.3
#: Product components with less than this flux fraction are dropped (the rest renormalised).
_PRUNE_AMPLITUDE = 1e-5
#: Float32 elements per (sources × components × pixels) block when evaluating profiles.
_BLOCK_ELEMENTS = 1 << 22


def intrinsic_shapes(
    apertures: pd.DataFrame,
    a_px: np.ndarray,
    b_px: np.ndarray,
    fwhm_px: float,
    config: PhotometryConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the intrinsic (pre-PSF) shapes of the rows, from profile columns or apertures.

    Rows with all :data:`PROFILE_COLUMNS` finite use them (``profile_hlr`` arcsec →
    px with ``config.pixel_scale``). Other rows get an exponential disk whose half-light
    semi-axes are ``sqrt(max((a/f)² − (FWHM/2)², 0))`` (and the same with ``b``),
    ``f = config.profile_aperture_factor``: the inverse of the simulation's aperture rule.

    Parameters
    ----------
    apertures : pandas.DataFrame
        Catalogue rows.
    a_px, b_px : ndarray of float64
        Aperture semi-axes in pixels.
    fwhm_px : float
        PSF FWHM in pixels.
    config : PhotometryConfig
        ``pixel_scale``, ``profile_aperture_factor``.

    Returns
    -------
    hlr_px, q, bulge_frac : ndarray of float64
        Circularised half-light radius (px; ``sqrt(major·minor)``), axis ratio, bulge
        fraction.
    approx : ndarray of bool
        True where the shape was derived from the aperture.
    """
    n = len(apertures)
    cols = [apertures[c].to_numpy(dtype=np.float64) if c in apertures.columns
            else np.full(n, np.nan) for c in PROFILE_COLUMNS]
    hlr = cols[0] / config.pixel_scale
    q, frac = cols[1], cols[2]
    approx = ~(np.isfinite(hlr) & np.isfinite(q) & np.isfinite(frac))
    f, half = config.profile_aperture_factor, fwhm_px / 2.0
    with np.errstate(invalid="ignore"):
        major = np.sqrt(np.maximum((a_px / f) ** 2 - half**2, 0.0))
        minor = np.sqrt(np.maximum((b_px / f) ** 2 - half**2, 0.0))
        ratio = np.where(major > 0, minor / np.where(major > 0, major, 1.0), 1.0)
    hlr = np.where(approx, np.sqrt(major * minor), hlr)
    q = np.where(approx, np.clip(ratio, 1e-3, 1.0), q)
    frac = np.where(approx, 0.0, np.clip(frac, 0.0, 1.0))
    return hlr, q, frac, approx


def stamp_radii(hlr_px: np.ndarray, q: np.ndarray, fwhm_px: float,
                config: PhotometryConfig) -> np.ndarray:
    """Return the half-sizes of the profile stamps (px).

    Parameters
    ----------
    hlr_px, q : ndarray of float64
        Intrinsic half-light radius (px) and axis ratio.
    fwhm_px : float
        PSF FWHM in pixels.
    config : PhotometryConfig
        ``profile_stamp_fwhm``, ``profile_stamp_hlr``, ``profile_max_radius``.

    Returns
    -------
    ndarray of int64
        ``ceil(profile_stamp_fwhm·FWHM + profile_stamp_hlr·hlr/√q)`` clipped to
        ``[3, profile_max_radius]`` (3 for unusable shapes).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        r = config.profile_stamp_fwhm * fwhm_px + config.profile_stamp_hlr * hlr_px / np.sqrt(q)
    r = np.where(np.isfinite(r), r, 3.0)
    return np.clip(np.ceil(r), 3, config.profile_max_radius).astype(np.int64)


def _merged_products(hlr_px: np.ndarray, q: np.ndarray, frac: np.ndarray,
                     p_var: np.ndarray, p_amp: np.ndarray,
                     trunc: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build galaxy ⊗ PSF components, merging those that the convolution makes alike.

    Galaxy component ``k`` (bulge + disk on the shared Sérsic widths) convolved with PSF
    component ``m`` has major-axis variance ``s_k² hlr²/q + v_m``. For each ``m``, the
    galaxy components whose ``log(1 + s_k² hlr²/(q v_m))`` fall in the same bin of width
    ``log(1 + _MERGE_SPREAD)`` are merged into one with their summed amplitude and
    amplitude-weighted mean ``s²`` (flux and second moments kept): a wide PSF component
    blurs all galaxy components into one.

    Returns
    -------
    amp, s2, v : ndarray of float64, shape (n, M·B)
        Amplitudes, galaxy squared widths (hlr² units) and PSF variances (px²) of the
        merged components (amplitude 0 for empty bins).
    """
    disk, bulge = sersic_mixture(1.0, trunc), sersic_mixture(4.0, trunc)
    g_amp = frac[:, None] * bulge.amplitudes + (1.0 - frac[:, None]) * disk.amplitudes
    s2 = disk.sigmas**2
    ratio = 1.0 + s2[None, :, None] * (hlr_px**2 / q)[:, None, None] / p_var[None, None, :]
    bins = np.floor(np.log(ratio) / math.log(1.0 + _MERGE_SPREAD)).astype(np.int64)
    n, n_m, nb = len(hlr_px), len(p_var), int(bins.max()) + 1
    flat = ((np.arange(n)[:, None, None] * n_m + np.arange(n_m)[None, None, :]) * nb
            + bins).ravel()
    amp = g_amp[:, :, None] * p_amp[None, None, :]
    size = n * n_m * nb
    m_amp = np.bincount(flat, weights=amp.ravel(), minlength=size).reshape(n, n_m * nb)
    m_s2 = np.bincount(flat, weights=(amp * s2[None, :, None]).ravel(),
                       minlength=size).reshape(n, n_m * nb)
    v = np.broadcast_to(np.repeat(p_var, nb)[None, :], m_amp.shape)
    return m_amp, m_s2 / np.where(m_amp > 0, m_amp, 1.0), v


def profile_components(
    hlr_px: np.ndarray, q: np.ndarray, theta: np.ndarray, frac: np.ndarray,
    fwhm_px: float, beta: float, config: PhotometryConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Build the Gaussian components (galaxy ⊗ PSF ⊗ pixel) of each source's profile.

    Parameters
    ----------
    hlr_px, q, theta, frac : ndarray of float64, shape (n,)
        Half-light radius (px), axis ratio, major-axis angle (photutils theta, radians,
        counter-clockwise from +x) and bulge fraction.
    fwhm_px, beta : float
        The Moffat PSF (FWHM in px, before pixelisation).
    config : PhotometryConfig
        ``profile_trunc_hlr``, ``psf_trunc_fwhm``.

    Returns
    -------
    coef : ndarray of float32, shape (n, K, 4)
        Per component, the coefficients of ``(dx², dx·dy, dy², 1)`` in the exponent:
        ``value = Σ_k exp(coef_k · (dx², dx dy, dy², 1))`` (the last one is log(norm)).
    amp : ndarray of float64, shape (n, K)
        Flux fractions (0 for dropped components; each row sums to 1).
    """
    psf = moffat_mixture(beta, config.psf_trunc_fwhm)
    keep = psf.amplitudes > 0
    p_var = (psf.sigmas[keep] * fwhm_px) ** 2 + 1.0 / 12.0
    amp, g_s2, v = _merged_products(hlr_px, q, frac, p_var, psf.amplitudes[keep],
                                    config.profile_trunc_hlr)
    amp = np.where(amp < _PRUNE_AMPLITUDE, 0.0, amp)
    amp = amp / amp.sum(axis=1, keepdims=True)
    c, s = np.cos(theta), np.sin(theta)
    hmaj, hmin = hlr_px**2 / q, hlr_px**2 * q
    uxx, uyy, uxy = hmaj * c * c + hmin * s * s, hmaj * s * s + hmin * c * c, (hmaj - hmin) * c * s
    cxx, cyy, cxy = g_s2 * uxx[:, None] + v, g_s2 * uyy[:, None] + v, g_s2 * uxy[:, None]
    det = cxx * cyy - cxy * cxy
    with np.errstate(divide="ignore"):  # dropped components: exp(-1e4) == 0 (no inf)
        lognorm = np.where(amp > 0, np.log(amp) - np.log(2.0 * np.pi * np.sqrt(det)), -1e4)
    coef = np.stack([-0.5 * cyy / det, cxy / det, -0.5 * cxx / det, lognorm], axis=-1)
    return coef.astype(np.float32), amp


def _compact(coef: np.ndarray, amp: np.ndarray) -> np.ndarray:
    """Keep the non-zero components of a batch, moved to the front (fewest columns).

    Returns
    -------
    ndarray of float32, shape (B, K', 4)
    """
    active = amp > 0
    order = np.argsort(~active, axis=1, kind="stable")[:, : max(int(active.sum(1).max()), 1)]
    return np.take_along_axis(coef, order[:, :, None], axis=1)


def _evaluate(coef: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Evaluate the profiles at pixel offsets: ``Σ_k exp(coef_k · (dx², dx dy, dy², 1))``.

    Parameters
    ----------
    coef : ndarray of float32, shape (B, K, 4)
    dx, dy : ndarray, shape (B, P)
        Pixel centre minus source position, px.

    Returns
    -------
    ndarray of float64, shape (B, P)
        Unit-total-flux profile values per pixel.
    """
    dx, dy = dx.astype(np.float32), dy.astype(np.float32)
    basis = np.empty((dx.shape[0], 4, dx.shape[1]), dtype=np.float32)
    np.multiply(dx, dx, out=basis[:, 0])
    np.multiply(dx, dy, out=basis[:, 1])
    np.multiply(dy, dy, out=basis[:, 2])
    basis[:, 3] = 1.0
    out = np.empty((dx.shape[0], dx.shape[1]), dtype=np.float64)
    kb = max(1, _BLOCK_ELEMENTS // max(coef.shape[1] * dx.shape[1], 1))
    for i in range(0, dx.shape[0], kb):
        e = np.matmul(coef[i:i + kb], basis[i:i + kb])
        np.exp(e, out=e)
        out[i:i + kb] = e.sum(axis=1, dtype=np.float64)
    return out


def _stamp_grid(x: np.ndarray, y: np.ndarray, r: int,
                shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Build the pixel grid of square stamps of half-size ``r`` around the nearest pixels of (x, y).

    Returns
    -------
    tuple of ndarray, each shape (B, P), P = (2r+1)²
        ``dx``, ``dy`` (pixel centre − position, px), flat image index (clipped to the
        image) and ``inside`` (bool).
    """
    off = np.arange(-r, r + 1)
    px = np.rint(x).astype(np.int64)[:, None] + off
    py = np.rint(y).astype(np.int64)[:, None] + off
    b, s = len(x), len(off)
    dx = np.broadcast_to((px - x[:, None])[:, None, :], (b, s, s)).reshape(b, -1)
    dy = np.broadcast_to((py - y[:, None])[:, :, None], (b, s, s)).reshape(b, -1)
    ins = ((px >= 0) & (px < shape[1]))[:, None, :] & ((py >= 0) & (py < shape[0]))[:, :, None]
    flat = (np.clip(py, 0, shape[0] - 1)[:, :, None] * shape[1]
            + np.clip(px, 0, shape[1] - 1)[:, None, :])
    return dx, dy, flat.reshape(b, -1), ins.reshape(b, -1)


def _stamp_sums(coef: np.ndarray, x: np.ndarray, y: np.ndarray, r: int,
                pixels: dict[str, Any], bkg: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
    """Compute the sums of one batch of equal-size stamps (isolated-source estimator).

    Returns
    -------
    sums : dict of str to ndarray, shape (B,)
        ``pp_all`` (Σp² over the stamp), ``pp`` (Σp² over usable pixels), ``py``
        (Σp(y−b)), ``p1`` (Σp), ``p3`` (Σp³), ``pp_sat`` (Σp² over saturated pixels).
    stamps : ndarray of float64, shape (B, 2r+1, 2r+1)
        ``p`` on usable pixels, 0 elsewhere (rows = image rows).
    """
    dx, dy, flat, ins = _stamp_grid(x, y, r, pixels["shape"])
    p = _evaluate(coef, dx, dy)
    good = pixels["good"][flat] & ins
    sat = pixels["sat"][flat] & ins
    pg = np.where(good, p, 0.0)
    yv = np.where(good, pixels["image"][flat], 0.0) - bkg[:, None]
    return {
        "pp_all": np.einsum("bp,bp->b", p, p),
        "pp": np.einsum("bp,bp->b", pg, pg),
        "py": np.einsum("bp,bp->b", pg, yv),
        "p1": pg.sum(axis=1),
        "p3": np.einsum("bp,bp->b", pg, pg * pg),
        "pp_sat": np.einsum("bp,bp->b", p, np.where(sat, p, 0.0)),
    }, pg.reshape(len(x), 2 * r + 1, 2 * r + 1)


def _all_stamp_sums(coef: np.ndarray, amp: np.ndarray, x: np.ndarray, y: np.ndarray,
                    radii: np.ndarray, pixels: dict[str, Any],
                    bkg: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Run :func:`_stamp_sums` over all sources, in batches of equal stamp size.

    Returns
    -------
    sums : dict of str to ndarray, shape (n,)
        As :func:`_stamp_sums`, in input order.
    stamps : list of ndarray
        Per source, its stamp of ``p`` on usable pixels (for the neighbour cross terms).
    """
    out = {k: np.zeros(len(x)) for k in ("pp_all", "pp", "py", "p1", "p3", "pp_sat")}
    stamps: list[np.ndarray] = [np.empty((0, 0))] * len(x)
    n_active = (amp > 0).sum(axis=1)
    for r in np.unique(radii):
        idx = np.flatnonzero(radii == r)
        idx = idx[np.argsort(n_active[idx], kind="stable")]  # batches of similar K
        k_active = max(int(n_active[idx].max()), 1)
        step = max(1, _BLOCK_ELEMENTS // (k_active * (2 * int(r) + 1) ** 2))
        for i in range(0, len(idx), step):
            sel = idx[i:i + step]
            sums, pg = _stamp_sums(_compact(coef[sel], amp[sel]), x[sel], y[sel], int(r),
                                   pixels, bkg[sel])
            for k, v in sums.items():
                out[k][sel] = v
            for k, j in enumerate(sel.tolist()):
                stamps[j] = pg[k]
    return out, stamps


def _overlap_pairs(x: np.ndarray, y: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """List the pairs of sources whose square stamps overlap.

    Returns
    -------
    ndarray of int64, shape (m, 2)
        Index pairs ``i < j``.
    """
    from scipy.spatial import cKDTree  # local: scipy only needed here

    if len(x) < 2:
        return np.empty((0, 2), dtype=np.int64)
    cx, cy = np.rint(x), np.rint(y)
    pairs = cKDTree(np.column_stack([cx, cy])).query_pairs(
        2.0 * float(radii.max()) + 0.5, p=np.inf, output_type="ndarray").astype(np.int64)
    i, j = pairs[:, 0], pairs[:, 1]
    lim = radii[i] + radii[j]
    keep = (np.abs(cx[i] - cx[j]) <= lim) & (np.abs(cy[i] - cy[j]) <= lim)
    return pairs[keep]


def overlap_groups(x: np.ndarray, y: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Label connected groups of sources whose square stamps overlap.

    Parameters
    ----------
    x, y : ndarray of float64
        Positions (0-based px), finite.
    radii : ndarray of int
        Stamp half-sizes (px).

    Returns
    -------
    ndarray of int64
        Group label per source (isolated sources have a group of their own).
    """
    return _labels(_overlap_pairs(x, y, radii), len(x))


def _labels(pairs: np.ndarray, n: int) -> np.ndarray:
    """Label the connected components of the overlap graph (one label per source).

    Returns
    -------
    ndarray of int64
    """
    from scipy.sparse import coo_matrix  # local: scipy only needed here
    from scipy.sparse.csgraph import connected_components  # local: as above

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def usable_pixels(image: np.ndarray, mask: np.ndarray | None, bad_mask_bits: int,
                  sat_level: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Find which pixels enter the profile sums, and which were left out as saturated.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Pixels in ADU.
    mask : ndarray of unsigned int, or None
        ``MaskBit`` bits; a pixel is masked when ``mask & bad_mask_bits != 0``.
    bad_mask_bits : int
        Bits that make a pixel unusable.
    sat_level : float or None
        Saturation level in ADU (pixels at/above it are saturated), or None.

    Returns
    -------
    good, saturated : ndarray of bool, shape (ny, nx)
        ``good``: finite, not masked, not saturated. ``saturated``: at/above ``sat_level``
        or with the ``MaskBit.SATURATED`` bit.
    """
    from pausdenoise.maskbits import MaskBit  # local: only the bit value is needed

    good = np.isfinite(image)
    sat = np.zeros(image.shape, dtype=bool)
    if sat_level is not None:
        with np.errstate(invalid="ignore"):
            sat |= image >= sat_level
    if mask is not None:
        dt = mask.dtype
        good &= (mask & np.asarray(bad_mask_bits & int(np.iinfo(dt).max), dtype=dt)) == 0
        sat |= (mask & np.asarray(int(MaskBit.SATURATED) & int(np.iinfo(dt).max), dtype=dt)) != 0
    good &= ~sat
    return good, sat


def _cross_terms(stamps: list[np.ndarray], x: np.ndarray, y: np.ndarray,
                 radii: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Sum products of two overlapping stamps over their common pixels.

    Returns
    -------
    ndarray of float64, shape (m, 3)
        Per pair ``(i, j)``: ``Σ pᵢpⱼ``, ``Σ pᵢ²pⱼ``, ``Σ pᵢpⱼ²`` (usable pixels only).
    """
    ox = (np.rint(x).astype(np.int64) - radii).tolist()
    oy = (np.rint(y).astype(np.int64) - radii).tolist()
    size = (2 * radii + 1).tolist()
    out = np.zeros((len(pairs), 3))
    for k, (i, j) in enumerate(pairs.tolist()):
        x0, x1 = max(ox[i], ox[j]), min(ox[i] + size[i], ox[j] + size[j])
        y0, y1 = max(oy[i], oy[j]), min(oy[i] + size[i], oy[j] + size[j])
        a = stamps[i][y0 - oy[i]:y1 - oy[i], x0 - ox[i]:x1 - ox[i]]
        b = stamps[j][y0 - oy[j]:y1 - oy[j], x0 - ox[j]:x1 - ox[j]]
        ab = a * b
        out[k] = ab.sum(), (ab * a).sum(), (ab * b).sum()
    return out


def _solve_group(mem: np.ndarray, pairs: np.ndarray, cross: np.ndarray,
                 sums: dict[str, np.ndarray], sky: tuple[np.ndarray, ...],
                 gain: float) -> tuple[np.ndarray, np.ndarray]:
    """Solve the fluxes of one group of overlapping sources jointly.

    ``G F = r`` with ``G_ii = Σpᵢ²``, ``G_ij = Σpᵢpⱼ`` (common usable pixels) and
    ``r_i = Σpᵢ(y − bᵢ)``. Variance: ``(G⁻¹)_ii (Vᵢ + Pᵢ) + ((G⁻¹ s)_i)² σ_b,i²`` with
    ``s_j = Σpⱼ`` and ``Pᵢ = Σ_j Fⱼ⁺ Σpᵢ²pⱼ / (gain Σpᵢ²)`` the source and neighbour
    Poisson variance seen through ``pᵢ²`` (exact for an isolated source).

    Returns
    -------
    flux, var : ndarray of float64, shape (len(mem),)
        NaN when the system is singular.
    """
    m = len(mem)
    pos = {int(v): k for k, v in enumerate(mem.tolist())}
    a = np.array([pos[int(v)] for v in pairs[:, 0]], dtype=np.int64)
    b = np.array([pos[int(v)] for v in pairs[:, 1]], dtype=np.int64)
    gram = np.diag(sums["pp"][mem])
    gram[a, b] = gram[b, a] = cross[:, 0]
    t = np.diag(sums["p3"][mem])
    t[a, b], t[b, a] = cross[:, 1], cross[:, 2]
    try:
        ginv = np.linalg.inv(gram)
    except np.linalg.LinAlgError:
        return np.full(m, np.nan), np.full(m, np.nan)
    flux = ginv @ sums["py"][mem]
    poisson = (t @ np.maximum(flux, 0.0)) / (gain * sums["pp"][mem])
    var = np.diag(ginv) * (sky[1][mem] + poisson) + (ginv @ sums["p1"][mem]) ** 2 * sky[2][mem]
    return flux, var


def _solve_groups(n: int, pairs: np.ndarray, cross: np.ndarray,
                  sums: dict[str, np.ndarray], sky: tuple[np.ndarray, ...], gain: float,
                  flux: np.ndarray, var: np.ndarray,
                  tiling: tuple[np.ndarray, np.ndarray, int, np.ndarray] | None = None) -> None:
    """Overwrite ``flux``/``var`` of the members of groups of 2+ with the joint solution.

    Sources without usable pixels (``Σp² = 0``) are left out of their group's system. With
    ``tiling`` = ``(x, y, max_group, margins)`` (positions, px; per-source margins, px), a
    group of more than ``max_group`` sources is solved in spatial tiles
    (:func:`_solve_tiled`) with the median margin of its sources.
    """
    usable = sums["pp"] > 0
    pairs_ok = usable[pairs[:, 0]] & usable[pairs[:, 1]]
    pairs, cross = pairs[pairs_ok], cross[pairs_ok]
    lab = _labels(pairs, n)
    order = np.argsort(lab, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(lab[order]) != 0])
    p_order = np.argsort(lab[pairs[:, 0]], kind="stable")
    p_lab = lab[pairs[p_order, 0]]
    for mem in np.split(order, starts[1:]):
        if len(mem) < 2:
            continue
        lo, hi = np.searchsorted(p_lab, lab[mem[0]], side="left"), np.searchsorted(
            p_lab, lab[mem[0]], side="right")
        sel = p_order[lo:hi]
        if tiling is not None and len(mem) > tiling[2]:
            _solve_tiled(mem, pairs[sel], cross[sel], (sums, sky, gain), tiling, flux, var)
        else:
            flux[mem], var[mem] = _solve_group(mem, pairs[sel], cross[sel], sums, sky, gain)


def _tiles(x: np.ndarray, y: np.ndarray, max_group: int,
           margin: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut a group's sources into cells, each with the sources within ``margin`` px of it.

    Cells are halved along their longer side at the median of their sources until a cell
    with its margin holds at most ``max_group`` sources (or its own sources are too few to
    halve further: at most ``max(max_group // 8, 1)``).

    Returns
    -------
    list of (core, sub)
        Index arrays into ``x``/``y``: each source is in exactly one ``core``; ``sub``
        holds the cell's sources and those within ``margin`` of its bounds.
    """
    out: list[tuple[np.ndarray, np.ndarray]] = []
    stack = [(np.arange(len(x)), (float(x.min()), float(x.max()), float(y.min()),
                                  float(y.max())))]
    min_core = max(max_group // 8, 1)
    while stack:
        core, (x0, x1, y0, y1) = stack.pop()
        sub = np.flatnonzero((x >= x0 - margin) & (x <= x1 + margin)
                             & (y >= y0 - margin) & (y <= y1 + margin))
        if len(sub) <= max_group or len(core) <= min_core:
            out.append((core, sub))
            continue
        along_x = x1 - x0 >= y1 - y0
        c = (x if along_x else y)[core]
        cut = float(np.median(c))
        low, high = core[c < cut], core[c >= cut]
        if not len(low) or not len(high):
            out.append((core, sub))
            continue
        if along_x:
            stack += [(low, (x0, cut, y0, y1)), (high, (cut, x1, y0, y1))]
        else:
            stack += [(low, (x0, x1, y0, cut)), (high, (x0, x1, cut, y1))]
    return out


def _solve_tiled(mem: np.ndarray, pairs: np.ndarray, cross: np.ndarray,
                 model: tuple[dict[str, np.ndarray], tuple[np.ndarray, ...], float],
                 tiling: tuple[np.ndarray, np.ndarray, int, np.ndarray],
                 flux: np.ndarray, var: np.ndarray) -> None:
    """Solve one large group in overlapping spatial tiles (:func:`_tiles`).

    Each tile's system holds the tile's sources and those within the margin around it;
    only the tile's own sources keep their solution. A source's flux depends on sources
    farther away only through chains of overlapping profiles, whose influence falls off
    quickly with distance, so a margin of a few stamp sizes gives the joint solution to a
    small fraction of the errors, at a cost linear in the group's size instead of cubic
    (and memory linear instead of quadratic).
    """
    sums, sky, gain = model
    x, y, max_group, margins = tiling
    inside = np.zeros(len(x), dtype=bool)
    for core, sub in _tiles(x[mem], y[mem], max_group, float(np.median(margins[mem]))):
        inside[mem[sub]] = True
        keep = inside[pairs[:, 0]] & inside[pairs[:, 1]]
        f, v = _solve_group(mem[sub], pairs[keep], cross[keep], sums, sky, gain)
        inside[mem[sub]] = False
        where = np.searchsorted(sub, core)
        flux[mem[core]], var[mem[core]] = f[where], v[where]


def _filled_sky(sky: tuple[np.ndarray, ...]) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Give rows without a usable annulus sky the median sky of the other rows.

    A row whose sky ``b``, variance ``V`` or background variance ``σ_b²`` is not finite
    (no usable annulus pixel) would make its residual Σp(y − b) NaN, and through the joint
    solve every flux of its overlap group with it: on a crowded frame one such group can
    hold most of the catalogue. With the frame's median values the row's light is still
    modelled for its neighbours; the row itself is flagged (``FEW_ANNULUS``).

    Returns
    -------
    tuple
        ``((b, V, σ_b²), filled)``: the completed arrays and where a value was replaced.
    """
    b, v, var_b = sky
    bad = ~(np.isfinite(b) & np.isfinite(v) & (v > 0) & np.isfinite(var_b) & (var_b >= 0))
    if not bad.any() or bad.all():
        return sky, bad
    good = ~bad
    return (np.where(bad, np.median(b[good]), b), np.where(bad, np.median(v[good]), v),
            np.where(bad, np.median(var_b[good]), var_b)), bad


def _isolated_estimate(sums: dict[str, np.ndarray], v: np.ndarray, var_b: np.ndarray,
                       gain: float) -> tuple[np.ndarray, np.ndarray]:
    """Compute the single-source flux and variance from the stamp sums (V constant).

    Returns
    -------
    flux, var : ndarray of float64
        ADU and ADU² (NaN without usable pixels).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        pp = np.where(sums["pp"] > 0, sums["pp"], np.nan)
        flux = sums["py"] / pp
        var = (v / pp + np.maximum(flux, 0.0) * sums["p3"] / (gain * pp * pp)
               + (sums["p1"] / pp) ** 2 * var_b)
    return flux, var


def profile_fluxes(
    pixels: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    theta: np.ndarray,
    shapes: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    fwhm_px: float,
    beta: float,
    sky: tuple[np.ndarray, np.ndarray, np.ndarray],
    gain: float,
    config: PhotometryConfig,
    sky_variance: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Measure the profile-weighted total fluxes of one frame (see the module docstring).

    Parameters
    ----------
    pixels : dict
        ``image`` (flat float array, ADU), ``good`` and ``sat`` (flat bool,
        :func:`usable_pixels`), ``shape`` (ny, nx).
    x, y : ndarray of float64, shape (n,)
        Positions, 0-based px.
    theta : ndarray of float64
        Major-axis angle, photutils convention (radians counter-clockwise from +x).
    shapes : tuple of ndarray
        ``(hlr_px, q, bulge_frac)`` (:func:`intrinsic_shapes`).
    fwhm_px, beta : float
        Moffat PSF FWHM (px, before pixelisation) and β.
    sky : tuple of ndarray
        ``(b, V, σ_b²)`` per source: sky (ADU/px), sky variance (ADU²/px), variance of the
        sky estimate (ADU²).
    gain : float
        e⁻/ADU.
    config : PhotometryConfig
        Profile settings.
    sky_variance : callable, optional
        ``sky_variance(area_eff)`` → the effective sky variance per pixel V_eff (ADU²) of
        each source (``photometry.errors = "empty"``, correlated and confusion noise
        included), given the profile's effective area ``(Σp)²/Σp²`` (px², usable pixels).
        It replaces V, and scales σ_b² by V_eff / V. The weights, hence the flux, do not
        depend on it.

    Returns
    -------
    dict of str to ndarray, shape (n,)
        ``flux``, ``flux_err`` (ADU), ``weight_left`` (usable Σp² / stamp Σp²),
        ``sat_frac`` (saturated Σp² / stamp Σp²), ``valid`` (usable inputs), ``group_size``,
        ``area_eff`` (the profile's effective area (Σp)²/Σp² over usable pixels, px²),
        ``sky_filled`` (the row's sky was not finite and the frame's median was used:
        :func:`_filled_sky`); and ``components``, the profiles' ``(coef, amp)``
        (:func:`profile_components`) with their stamp half-sizes (:func:`stamp_radii`), for
        the aperture corrections (:mod:`pausdenoise.photometry.apcor`) to reuse; rows
        without usable inputs hold a point source; None when no row has usable inputs.
    """
    hlr, q, frac = shapes
    n = len(x)
    valid = (np.isfinite(x) & np.isfinite(y) & np.isfinite(theta) & np.isfinite(hlr)
             & (hlr >= 0) & np.isfinite(q) & (q > 0) & (q <= 1) & np.isfinite(frac))
    hlr, q = np.where(valid, hlr, 0.0), np.where(valid, q, 1.0)
    frac, theta = np.where(valid, frac, 0.0), np.where(valid, theta, 0.0)
    xs, ys = np.where(valid, x, 0.0), np.where(valid, y, 0.0)
    if not valid.any():
        nan = np.full(n, np.nan)
        return {"flux": nan, "flux_err": nan, "weight_left": nan, "sat_frac": np.zeros(n),
                "valid": valid, "group_size": np.zeros(n, dtype=np.int64), "area_eff": nan,
                "sky_filled": np.zeros(n, dtype=bool), "components": None}
    coef, amp = profile_components(hlr, q, theta, frac, fwhm_px, beta, config)
    radii = stamp_radii(hlr, q, fwhm_px, config)
    idx = np.flatnonzero(valid)
    sky_v, filled = _filled_sky(tuple(np.asarray(v, dtype=float)[idx] for v in sky))
    sums, stamps = _all_stamp_sums(coef[idx], amp[idx], xs[idx], ys[idx], radii[idx],
                                   pixels, sky_v[0])
    if sky_variance is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            v_eff = np.asarray(sky_variance(sums["p1"] ** 2 / sums["pp"]), dtype=float)
            v_eff = np.where(np.isfinite(v_eff) & (v_eff > 0), v_eff, sky_v[1])
            ratio = np.where(sky_v[1] > 0, v_eff / sky_v[1], 1.0)
        sky_v = (sky_v[0], v_eff, sky_v[2] * ratio)
    f_v, var_v = _isolated_estimate(sums, sky_v[1], sky_v[2], gain)
    pairs = _overlap_pairs(xs[idx], ys[idx], radii[idx])
    cross = _cross_terms(stamps, xs[idx], ys[idx], radii[idx], pairs)
    _solve_groups(len(idx), pairs, cross, sums, sky_v, gain, f_v, var_v,
                  (xs[idx], ys[idx], config.profile_max_group,
                   config.profile_group_margin * radii[idx]))
    flux, var = np.full(n, np.nan), np.full(n, np.nan)
    flux[idx], var[idx] = f_v, var_v
    group_size = np.zeros(n, dtype=np.int64)
    lab = _labels(pairs, len(idx))
    group_size[idx] = np.bincount(lab)[lab]
    with np.errstate(invalid="ignore", divide="ignore"):
        weight_left = np.full(n, np.nan)
        weight_left[idx] = sums["pp"] / sums["pp_all"]
        area_eff = np.full(n, np.nan)
        area_eff[idx] = sums["p1"] ** 2 / sums["pp"]
        sat_frac = np.zeros(n)
        sat_frac[idx] = sums["pp_sat"] / sums["pp_all"]
    sky_filled = np.zeros(n, dtype=bool)
    sky_filled[idx] = filled
    return {"flux": flux, "flux_err": np.sqrt(var), "weight_left": weight_left,
            "sat_frac": sat_frac, "valid": valid, "group_size": group_size,
            "area_eff": area_eff, "sky_filled": sky_filled,
            "components": (coef, amp, radii)}
