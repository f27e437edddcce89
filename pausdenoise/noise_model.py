"""A frame's CCD noise model (gain and read noise) fitted from its own pixels.

For a CCD frame in ADU with bias level ``bias`` (ADU) and signal ``S = image − bias``
(sky *not* subtracted: the sky carries Poisson noise too), the pixel variance is

    var_adu(S) = rn_adu² + S / gain,

with ``gain`` in e⁻/ADU and the read noise ``rn_adu`` in ADU (``rn_e = rn_adu · gain`` in
e⁻). :func:`fit_noise_model` measures the variance in many small tiles at different signal
levels (sky, galaxy outskirts, star wings) and fits this straight line.

Per tile (``TILE`` × ``TILE`` pixels) a quadratic surface is fitted by least squares: the
smooth signal (sky gradients, the wings of sources) is taken out and the residual variance
estimates the noise. Tiles on sharp structure (star cores, cosmic rays) are not quadratic
and have inflated residuals; the median over the tiles of one signal bin ignores them (up
to half of the tiles of a bin), and is rescaled by the median of the χ²_ν/ν distribution.

Limitations: the intercept is an extrapolation from the lowest level present (the sky), so
when the sky variance dwarfs the read noise (``S/gain ≫ rn_adu²``) the read noise is poorly
determined (its error is returned). Flat-fielding rescales pixels by a few per cent and
correlated noise (resampled frames) lowers the measured variance: on such frames the
fitted gain is an effective one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats

from pausdenoise.errors import NoiseModelError
from pausdenoise.stats import mad_sigma

__all__ = ["NoiseModel", "fit_noise_model", "measure_noise_correlation"]

TILE = 6
"""Side of the square tiles in which the local variance is measured, px."""

MIN_TILES = 12
"""Fewest tiles for a signal bin to enter the fit."""

N_LEVEL_BINS = 24
"""Number of signal bins (geometric in the signal above the lowest sky level)."""


@dataclass(frozen=True)
class NoiseModel:
    """A CCD frame's noise model, ``var_adu = read_noise_adu² + S_adu / gain``.

    Attributes
    ----------
    gain : float
        Gain, e⁻/ADU.
    read_noise_e : float
        Read noise, e⁻ (NaN when the fitted intercept is negative).
    read_noise_adu : float
        Read noise, ADU.
    n_bins : int
        Number of signal bins in the fit.
    source : str
        ``"fitted"``.
    gain_err : float
        1σ error of ``gain``, e⁻/ADU.
    read_noise_e_err : float
        1σ error of ``read_noise_e``, e⁻.
    sky_adu : float
        Median signal of the smooth tiles (the sky level above bias), ADU.
    sky_var_adu2 : float
        Noise variance measured at the sky level (tiles within 2σ of it), ADU²: the
        robust part of the fit, valid even when the gain is not constrained.
    span_adu : float
        Signal range covered by the fitted bins, ADU. When it is small compared with the
        sky (crowded or source-poor frames) the slope, hence the gain, rests on little.
    """

    gain: float
    read_noise_e: float
    read_noise_adu: float
    n_bins: int
    source: str
    gain_err: float = float("nan")
    read_noise_e_err: float = float("nan")
    sky_adu: float = float("nan")
    sky_var_adu2: float = float("nan")
    span_adu: float = float("nan")

    def variance_adu2(self, signal_adu: np.ndarray | float) -> np.ndarray:
        """Pixel variance predicted by the model.

        Parameters
        ----------
        signal_adu : ndarray or float
            Signal above bias (sky included), ADU.

        Returns
        -------
        ndarray
            Variance, ADU².
        """
        return self.read_noise_adu**2 + np.asarray(signal_adu, dtype=float) / self.gain


def _quadratic_fit(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build the least-squares quadratic-surface fit of a flattened tile.

    Parameters
    ----------
    tile : int
        Tile side, px.

    Returns
    -------
    design : ndarray, shape (tile², 6)
        Columns 1, x, y, x², xy, y² (px from the tile centre).
    pinv : ndarray, shape (6, tile²)
        Its pseudo-inverse (coefficients = pinv @ values).
    coef_var : ndarray, shape (6,)
        Variance of each coefficient for unit pixel variance, diag((XᵀX)⁻¹).
    """
    y, x = np.mgrid[0:tile, 0:tile].astype(float) - (tile - 1) / 2.0
    x, y = x.ravel(), y.ravel()
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
    return design, np.linalg.pinv(design), np.diag(np.linalg.inv(design.T @ design))


def _tile_stats(
    signal: np.ndarray, bad: np.ndarray, tile: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Fit a quadratic surface in each tile: mean signal, residual variance, curvature.

    For Gaussian noise the residuals of a least-squares fit are independent of its
    coefficients, so binning and selecting tiles by their mean and curvature does not bias
    their residual variances.

    Parameters
    ----------
    signal : ndarray
        Signal above bias, ADU.
    bad : ndarray of bool
        Pixels not to use (a tile with one is dropped).
    tile : int
        Tile side, px.

    Returns
    -------
    level : ndarray
        Mean signal of each clean tile, ADU.
    var : ndarray
        Residual variance of each clean tile (sum of squares / dof), ADU².
    curvature : ndarray
        Σ c²/var(c) over the three second-order coefficients for unit pixel variance,
        ADU² (≈ var · χ²₃ when the tile has no curvature).
    dof : int
        Degrees of freedom of each tile's variance.
    """
    ny, nx = (s - s % tile for s in signal.shape)

    def blocks(a: np.ndarray) -> np.ndarray:
        a = a[:ny, :nx].reshape(ny // tile, tile, nx // tile, tile)
        return a.transpose(0, 2, 1, 3).reshape(-1, tile * tile)

    values, dirty = blocks(signal), blocks(bad).any(axis=1)
    values = values[~dirty]
    design, pinv, coef_var = _quadratic_fit(tile)
    coef = values @ pinv.T
    resid = values - coef @ design.T
    dof = tile * tile - design.shape[1]
    curvature = np.sum(coef[:, 3:] ** 2 / coef_var[3:], axis=1)
    return values.mean(axis=1), (resid * resid).sum(axis=1) / dof, curvature, dof


def _sky(level: np.ndarray, var: np.ndarray, dof: int) -> tuple[float, float]:
    """Estimate the sky level (the mode of the tile means) and the noise variance there.

    Parameters
    ----------
    level, var : ndarray
        Tile mean signals (ADU) and residual variances (ADU²), from :func:`_tile_stats`.
    dof : int
        Degrees of freedom of each tile variance.

    Returns
    -------
    sky : float
        Peak of the histogram of tile means (bins of one tile-mean σ, smoothed over
        three), refined as the median of the tiles within 2σ of it, ADU.
    sky_var : float
        Median variance of those tiles over the median of χ²_ν/ν, ADU².
    """
    sigma_mean = math.sqrt(float(np.median(var)) / (dof + 6))
    lo, hi = np.percentile(level, [0.5, 99.5])
    edges = np.arange(lo, hi + 2 * sigma_mean, max(sigma_mean, 1e-12))
    counts = np.convolve(np.histogram(level, edges)[0], np.ones(3), mode="same")
    peak = float(edges[int(np.argmax(counts))] + 0.5 * sigma_mean)
    near = np.abs(level - peak) < 2.0 * sigma_mean
    sky = float(np.median(level[near])) if near.any() else peak
    near = np.abs(level - sky) < 2.0 * sigma_mean
    var_near = var[near] if near.any() else var
    return sky, float(np.median(var_near)) / (stats.chi2.median(dof) / dof)


def _smooth_tiles(level: np.ndarray, var: np.ndarray, curvature: np.ndarray) -> np.ndarray:
    """Select the tiles whose curvature is consistent with noise.

    Parameters
    ----------
    level, var, curvature : ndarray
        From :func:`_tile_stats`.

    Returns
    -------
    ndarray of bool
        True where ``curvature`` is below the 99.9th percentile of var₀ · χ²₃, with var₀
        a first guess of the noise (the sky tiles' median variance, scaled in proportion
        to the signal above the sky, as for photon noise); it depends on the tiles' means
        and curvatures only, not on their residuals.
    """
    sky = float(np.median(level))
    near = np.abs(level - sky) < 2.0 * math.sqrt(float(np.median(var)))
    sky_var = float(np.median(var[near])) if near.any() else float(np.median(var))
    var0 = sky_var * np.maximum(level, sky) / max(sky, 1e-12)
    return curvature < stats.chi2.ppf(0.999, 3) * var0


def _binned_variance(
    level: np.ndarray, var: np.ndarray, dof: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust variance per signal bin.

    Bins are geometric in the signal above the 1st percentile of the tile levels. In each
    bin the median tile variance, divided by the median of χ²_ν/ν, estimates the noise
    variance; its error is 1.2533 · (robust σ of the tile variances) / √n.

    Parameters
    ----------
    level, var : ndarray
        Tile mean signals (ADU) and residual variances (ADU²), from :func:`_tile_stats`.
    dof : int
        Degrees of freedom of each tile variance.

    Returns
    -------
    level : ndarray
        Mean signal of each bin with at least :data:`MIN_TILES` tiles, ADU.
    var : ndarray
        Noise variance of each bin, ADU².
    err : ndarray
        1σ error of ``var``, ADU².
    """
    floor = np.percentile(level, 1.0)
    span = np.clip(level - floor, 0.0, None) + 1.0
    edges = np.geomspace(1.0, span.max() * (1 + 1e-9), N_LEVEL_BINS + 1)
    edges[0] = 0.0
    which = np.digitize(span, edges) - 1
    median_chi2 = stats.chi2.median(dof) / dof
    out = []
    for b in range(N_LEVEL_BINS):
        sel = which == b
        n = int(sel.sum())
        if n < MIN_TILES:
            continue
        v = var[sel]
        err = 1.2533 * float(mad_sigma(v)) / math.sqrt(n) / median_chi2
        out.append((float(level[sel].mean()), float(np.median(v)) / median_chi2, err))
    arr = np.array(out, dtype=float).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def _line_fit(x: np.ndarray, y: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares straight line ``y = a + b·x``.

    Parameters
    ----------
    x, y, err : ndarray
        Abscissae, ordinates and the ordinates' 1σ errors.

    Returns
    -------
    coef : ndarray
        ``(a, b)``.
    cov : ndarray, shape (2, 2)
        Their covariance, scaled by the reduced χ² when it exceeds 1.
    """
    w = 1.0 / np.maximum(err, 1e-12 * np.abs(y).max()) ** 2
    design = np.stack([np.ones_like(x), x], axis=1)
    normal = design.T @ (design * w[:, None])
    cov = np.linalg.inv(normal)
    coef = cov @ (design.T @ (w * y))
    chi2 = float(np.sum(w * (y - design @ coef) ** 2))
    dof = max(len(x) - 2, 1)
    return coef, cov * max(1.0, chi2 / dof)


def fit_noise_model(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    saturate: float | None = None,
    bias: float = 0.0,
) -> NoiseModel:
    """Fit ``var_adu = rn_adu² + (image − bias)/gain`` from one frame's own pixels.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame in ADU, sky *not* subtracted.
    mask : ndarray of int, optional
        Non-zero marks a bad pixel; tiles holding one are not used.
    saturate : float, optional
        Saturation level in ADU (raw pixel value); tiles reaching it are not used.
    bias : float
        Bias level in ADU still in ``image`` (0 for bias-subtracted frames).

    Returns
    -------
    NoiseModel
        Gain (e⁻/ADU), read noise (e⁻ and ADU) with errors, number of signal bins used.

    Raises
    ------
    NoiseModelError
        Fewer than three signal bins, or a variance that does not grow with the signal.
    """
    signal = np.asarray(image, dtype=np.float64) - float(bias)
    bad = ~np.isfinite(signal)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    if saturate is not None:
        bad |= np.asarray(image) >= float(saturate)
    level, var, curvature, dof = _tile_stats(np.where(bad, 0.0, signal), bad, TILE)
    if level.size >= 3 * MIN_TILES:
        keep = _smooth_tiles(level, var, curvature)
        level, var = level[keep], var[keep]
    if level.size < 3 * MIN_TILES:
        raise NoiseModelError(f"only {level.size} clean {TILE}×{TILE} px tiles in the frame")
    x, y, err = _binned_variance(level, var, dof)
    if x.size < 3:
        raise NoiseModelError(
            f"only {x.size} signal bins with ≥ {MIN_TILES} tiles: the frame spans too "
            "narrow a range of signal to fit variance against signal"
        )
    (a, b), cov = _line_fit(x, y, err)
    if not b > 0:
        raise NoiseModelError(f"variance does not grow with signal (slope {b:.3g} ADU)")
    gain = 1.0 / b
    gain_err = math.sqrt(cov[1, 1]) / b**2
    rn_adu = math.sqrt(a) if a > 0 else float("nan")
    # rn_e = sqrt(a)/b: propagate (a, b) with their covariance
    grad = np.array([0.5 / (math.sqrt(a) * b), -math.sqrt(a) / b**2]) if a > 0 else None
    rn_e_err = math.sqrt(float(grad @ cov @ grad)) if grad is not None else float("nan")
    sky, sky_var = _sky(level, var, dof)
    return NoiseModel(
        gain=gain,
        read_noise_e=rn_adu * gain,
        read_noise_adu=rn_adu,
        n_bins=int(x.size),
        source="fitted",
        gain_err=gain_err,
        read_noise_e_err=rn_e_err,
        sky_adu=sky,
        sky_var_adu2=sky_var,
        span_adu=float(x.max() - x.min()),
    )


def _sky_residual(image: np.ndarray, bad: np.ndarray, box: int = 64) -> np.ndarray:
    """Subtract a smooth sky (clipped block medians, bilinearly interpolated).

    Parameters
    ----------
    image : ndarray
        The frame, ADU.
    bad : ndarray of bool
        Pixels to ignore.
    box : int
        Block size, px.

    Returns
    -------
    ndarray
        ``image`` minus the sky map, ADU (NaN at ``bad`` pixels).
    """
    ny, nx = image.shape
    by, bx = max(1, ny // box), max(1, nx // box)
    work = np.where(bad, np.nan, image)
    ys = np.linspace(0, ny, by + 1).astype(int)
    xs = np.linspace(0, nx, bx + 1).astype(int)
    med = np.full((by, bx), np.nan)
    for j in range(by):
        for i in range(bx):
            v = work[ys[j] : ys[j + 1], xs[i] : xs[i + 1]]
            v = v[np.isfinite(v)]
            if v.size:
                m, sd = np.median(v), float(mad_sigma(v))
                med[j, i] = np.median(v[np.abs(v - m) < 3 * sd]) if sd > 0 else m
    med = np.where(np.isfinite(med), med, np.nanmedian(med))
    sky = ndimage.zoom(med, (ny / by, nx / bx), order=1, mode="nearest", grid_mode=True)
    return work - sky[:ny, :nx]


def measure_noise_correlation(
    image: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """Lag-1 autocorrelation of the sky noise along x and y.

    A smooth sky is subtracted; sources (pixels above 4σ in the residual smoothed by a
    σ = 1.5 px Gaussian, grown by 3 px) and masked pixels are left out. The coefficients
    are ``Σ rᵢ rᵢ₊₁ / Σ r²`` over the pairs of sky pixels one column (x) or one row (y)
    apart: 0 for white noise, ``Σ kᵢkᵢ₊₁ / Σ kᵢ²`` for white noise convolved with a kernel
    k (resampled or smoothed frames). Structure in the "sky" also correlates: in crowded
    fields, where unresolved sources fill it, the coefficients measure that light, not the
    noise.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame in ADU (sky not subtracted is fine).
    mask : ndarray of int, optional
        Non-zero marks a bad pixel (not used).

    Returns
    -------
    dict
        ``rho_x``, ``rho_y`` (dimensionless), ``n_pairs_x``, ``n_pairs_y`` and ``rho_err``
        (≈ 1/√n, the error for white noise).

    Raises
    ------
    NoiseModelError
        Fewer than 100 pairs of sky pixels.
    """
    img = np.asarray(image, dtype=np.float64)
    bad = ~np.isfinite(img)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    if int((~bad).sum()) < 100:
        raise NoiseModelError(
            f"only {int((~bad).sum())} unmasked pixels: too few pairs of sky pixels"
        )
    resid = _sky_residual(img, bad)
    filled = np.where(np.isfinite(resid), resid, 0.0)
    smooth = ndimage.gaussian_filter(filled, 1.5)
    sources = smooth > 4.0 * float(mad_sigma(smooth[~bad]))
    sources = ndimage.binary_dilation(sources, iterations=3)
    r = np.where(bad | sources, np.nan, resid)
    r = r - np.nanmean(r)
    out: dict[str, float] = {}
    for axis, name in ((1, "x"), (0, "y")):
        a, b = (r[:, :-1], r[:, 1:]) if axis == 1 else (r[:-1], r[1:])
        ok = np.isfinite(a) & np.isfinite(b)
        n = int(ok.sum())
        if n < 100:
            raise NoiseModelError(f"only {n} pairs of sky pixels along {name}")
        out[f"rho_{name}"] = float(
            np.sum(a[ok] * b[ok]) / np.sqrt(np.sum(a[ok] ** 2) * np.sum(b[ok] ** 2))
        )
        out[f"n_pairs_{name}"] = float(n)
    out["rho_err"] = 1.0 / math.sqrt(min(out["n_pairs_x"], out["n_pairs_y"]))
    return out
