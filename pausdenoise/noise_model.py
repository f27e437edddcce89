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

Across exposures: :func:`fit_gain_across_exposures` fits the same straight line to the
sky level and sky variance of several exposures of one CCD (a photon-transfer curve built
from the exposures' different skies: twilight, moonlight, exposure times). Only each
frame's sky tiles enter, so it holds on crowded fields, where the tiles at higher signal
hold unresolved stars whose light adds variance that grows with the signal: there the
one-frame slope is too steep and its gain too small (a crowded bulge field: 0.19–0.59 e⁻/ADU
against a header 1.9; across its 24 exposures 1.7–1.8).

Noise correlation: :func:`measure_noise_correlation` in small detrended tiles, and
:func:`measure_noise_correlation_high_frequency` from the power spectrum above 0.45
cycles/px, where a well-sampled PSF leaves the sources no power (crowded fields, where the
tiles see the unresolved stars, correlated over the PSF); the latter also gives the noise
variance at the sky from the same frequencies, and :func:`gain_from_sky` the gain with
which the model gives a measured sky variance (a single crowded frame's gain).

Limitations: the intercept is an extrapolation from the lowest level present (the sky), so
when the sky variance dwarfs the read noise (``S/gain ≫ rn_adu²``) the read noise is poorly
determined (its error is returned). Flat-fielding rescales pixels by a few per cent and
correlated noise (resampled frames) lowers the measured variance: on such frames the
fitted gain is an effective one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from pausdenoise.errors import NoiseModelError
from pausdenoise.stats import mad_sigma

__all__ = ["NoiseModel", "fit_gain_across_exposures", "fit_noise_model", "gain_from_sky",
           "measure_noise_correlation", "measure_noise_correlation_high_frequency"]

TILE = 6
"""Side of the square tiles in which the local variance is measured, px."""

MIN_TILES = 12
"""Fewest tiles for a signal bin to enter the fit."""

N_LEVEL_BINS = 24
"""Number of signal bins (geometric in the signal above the lowest sky level)."""

MIN_EXPOSURES = 4
"""Fewest exposures for :func:`fit_gain_across_exposures`."""

MIN_SKY_RATIO = 1.5
"""Least ratio of the brightest to the faintest sky for :func:`fit_gain_across_exposures`."""


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
    sky_var_err_adu2 : float
        1σ error of ``sky_var_adu2``, ADU².
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
    sky_var_err_adu2: float = float("nan")

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


def _pixels(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Return the image as float64 and its bad pixels (not finite, or non-zero in ``mask``).

    Returns
    -------
    image : ndarray of float64
    bad : ndarray of bool
    """
    img = np.asarray(image, dtype=np.float64)
    bad = ~np.isfinite(img)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    return img, bad


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


def _sky(level: np.ndarray, var: np.ndarray, dof: int) -> tuple[float, float, float]:
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
    sky_var_err : float
        Its 1σ error, 1.2533 · (robust σ of those tiles' variances) / √n, ADU².
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
    median_chi2 = stats.chi2.median(dof) / dof
    err = 1.2533 * float(mad_sigma(var_near)) / math.sqrt(var_near.size) / median_chi2
    return sky, float(np.median(var_near)) / median_chi2, err


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
    signal, bad = _pixels(image, mask)
    signal = signal - float(bias)
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
    coef, cov = _line_fit(x, y, err)
    line = _noise_model_from_line(coef, cov, int(x.size), "fitted", float(x.max() - x.min()))
    sky, sky_var, sky_var_err = _sky(level, var, dof)
    return dataclasses.replace(line, sky_adu=sky, sky_var_adu2=sky_var,
                               sky_var_err_adu2=sky_var_err)


def _noise_model_from_line(coef: np.ndarray, cov: np.ndarray, n: int, source: str,
                           span: float) -> NoiseModel:
    """Turn a fitted line ``var = a + b·S`` and its covariance into a :class:`NoiseModel`.

    Returns
    -------
    NoiseModel
        Gain and read noise with their errors (sky fields unset).

    Raises
    ------
    NoiseModelError
        When the slope is not positive.
    """
    a, b = (float(c) for c in coef)
    if not b > 0:
        raise NoiseModelError(f"variance does not grow with signal (slope {b:.3g} ADU)")
    gain = 1.0 / b
    gain_err = math.sqrt(cov[1, 1]) / b**2
    rn_adu = math.sqrt(a) if a > 0 else float("nan")
    # rn_e = sqrt(a)/b: propagate (a, b) with their covariance
    grad = np.array([0.5 / (math.sqrt(a) * b), -math.sqrt(a) / b**2]) if a > 0 else None
    rn_e_err = math.sqrt(float(grad @ cov @ grad)) if grad is not None else float("nan")
    return NoiseModel(gain=gain, read_noise_e=rn_adu * gain, read_noise_adu=rn_adu,
                      n_bins=n, source=source, gain_err=gain_err, read_noise_e_err=rn_e_err,
                      span_adu=span)


def fit_gain_across_exposures(
    sky_adu: np.ndarray, sky_var_adu2: np.ndarray, sky_var_err_adu2: np.ndarray
) -> NoiseModel:
    """Fit ``var_adu = rn_adu² + S_adu / gain`` to the skies of several exposures of one CCD.

    Each exposure gives one point: its sky level above bias and the noise variance of its
    sky tiles (:attr:`NoiseModel.sky_adu`, :attr:`NoiseModel.sky_var_adu2` of
    :func:`fit_noise_model`). The exposures must share the CCD's gain and read noise and
    their skies must differ (different exposure times, twilight, moonlight).

    Parameters
    ----------
    sky_adu : ndarray
        Sky level of each exposure, ADU above bias.
    sky_var_adu2 : ndarray
        Noise variance at that level, ADU².
    sky_var_err_adu2 : ndarray
        Its 1σ error, ADU² (the line's errors are scaled up by the reduced χ² when the
        exposures scatter more than these errors, e.g. through flat-field differences).

    Returns
    -------
    NoiseModel
        ``source`` ``"exposures"``, ``n_bins`` the number of exposures used, ``span_adu``
        the range of their skies, ADU.

    Raises
    ------
    NoiseModelError
        Fewer than :data:`MIN_EXPOSURES` exposures with finite, positive values, skies
        spanning less than a factor :data:`MIN_SKY_RATIO`, or a slope that is not positive.
    """
    x = np.asarray(sky_adu, dtype=np.float64)
    y = np.asarray(sky_var_adu2, dtype=np.float64)
    err = np.asarray(sky_var_err_adu2, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(err) & (x > 0) & (y > 0) & (err > 0)
    x, y, err = x[ok], y[ok], err[ok]
    if x.size < MIN_EXPOSURES:
        raise NoiseModelError(f"only {x.size} exposure(s) with a measured sky variance "
                              f"(at least {MIN_EXPOSURES} needed)")
    if x.max() < MIN_SKY_RATIO * x.min():
        raise NoiseModelError(
            f"the exposures' skies span {x.min():.4g}–{x.max():.4g} ADU, less than a factor "
            f"{MIN_SKY_RATIO:g}: too narrow a range to fit variance against signal")
    coef, cov = _line_fit(x, y, err)
    return _noise_model_from_line(coef, cov, int(x.size), "exposures",
                                  float(x.max() - x.min()))


def gain_from_sky(sky_adu: float, sky_var_adu2: float, read_noise_e: float = 0.0) -> float:
    """Return the gain with which the noise model reproduces a measured sky variance.

    Solves ``var = (rn_e / gain)² + S / gain`` for the gain:
    ``gain = (S + √(S² + 4·var·rn_e²)) / (2·var)``. With the true read noise it is the gain
    (for a bias-subtracted frame); with ``read_noise_e = 0`` it is the least gain the sky's
    variance allows (the read noise then counted as photon noise): the model still gives
    the measured variance at the sky, and overestimates the photon noise of sources above
    it by at most the ratio of the true gain to this one.

    Parameters
    ----------
    sky_adu : float
        Sky level above bias, ADU.
    sky_var_adu2 : float
        Noise variance at that level, ADU².
    read_noise_e : float
        Read noise, e⁻ (0: unknown).

    Returns
    -------
    float
        Gain, e⁻/ADU; NaN when the sky or its variance is not positive and finite.
    """
    s, v, rn = float(sky_adu), float(sky_var_adu2), float(read_noise_e)
    if not (math.isfinite(s) and math.isfinite(v) and s > 0 and v > 0):
        return float("nan")
    rn = rn if math.isfinite(rn) and rn > 0 else 0.0
    return (s + math.sqrt(s * s + 4.0 * v * rn * rn)) / (2.0 * v)


CORR_TILE = 8
"""Side of the square tiles in which :func:`measure_noise_correlation` works, px."""

#: Pixel offsets ``(dy, dx)`` (one of each ± pair) whose noise correlation is solved for:
#: every offset within two pixels on each axis. Correlations beyond are taken as zero.
CORR_OFFSETS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, -2), (1, -1), (1, 0), (1, 1), (1, 2),
    (2, -2), (2, -1), (2, 0), (2, 1), (2, 2),
)

#: Fewest clean tiles for a correlation measurement.
MIN_CORR_TILES = 50


def _offset_matrix(tile: int, dy: int, dx: int) -> np.ndarray:
    """Return the symmetric 0/1 matrix of the pixel pairs ``(dy, dx)`` apart in a tile.

    Returns
    -------
    ndarray, shape (tile², tile²)
        1 at ``(i, j)`` and ``(j, i)`` for each pair of flattened pixel indices.
    """
    y, x = np.mgrid[0:tile, 0:tile]
    ok = (y + dy >= 0) & (y + dy < tile) & (x + dx >= 0) & (x + dx < tile)
    i = (y * tile + x)[ok]
    j = ((y + dy) * tile + (x + dx))[ok]
    out = np.zeros((tile * tile, tile * tile))
    out[i, j] = out[j, i] = 1.0
    return out


def _correlation_model(tile: int) -> dict[str, np.ndarray]:
    """Return the expected residual statistics of a tile after its quadratic fit.

    With ``M = I − H`` (``H`` the quadratic fit's hat matrix) and noise covariance
    ``C = σ² (I + Σₘ ρₘ Aₘ)`` (``Aₘ`` the pair matrices of :data:`CORR_OFFSETS`), the
    residuals ``r = M v`` have ``E[rᵀ Aₖ r] = σ² (tr(Aₖ M) + Σₘ ρₘ tr(Aₖ M Aₘ M))`` and
    ``E[rᵀ r] = σ² (tr M + Σₘ ρₘ tr(M Aₘ))``.

    Returns
    -------
    dict
        ``m`` (M), ``pairs`` (the Aₖ stacked), ``t0`` (tr M), ``c`` (tr(M Aₘ)), ``a0``
        (tr(Aₖ M)), ``b`` (tr(Aₖ M Aₘ M)).
    """
    design, pinv, _ = _quadratic_fit(tile)
    m = np.eye(tile * tile) - design @ pinv
    pairs = np.stack([_offset_matrix(tile, dy, dx) for dy, dx in CORR_OFFSETS])
    mam = np.einsum("ij,mjk,kl->mil", m, pairs, m)
    return {
        "m": m,
        "pairs": pairs,
        "t0": np.array(np.trace(m)),
        "c": np.einsum("ij,mji->m", m, pairs),
        "a0": np.einsum("kij,ji->k", pairs, m),
        "b": np.einsum("kij,mji->km", pairs, mam),
    }


def _tile_pair_sums(image: np.ndarray, bad: np.ndarray, model: dict[str, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Residual sums of squares and pair sums of the clean, smooth tiles of an image.

    Each :data:`CORR_TILE`² tile has its quadratic surface removed; tiles with a bad pixel,
    with curvature beyond noise (:func:`_smooth_tiles`) or with a residual variance above 3×
    what the sky's predicts for their level (star cores, cosmic rays) are left out.

    Returns
    -------
    q0 : ndarray, shape (n,)
        ``rᵀ r`` of each kept tile, ADU².
    qk : ndarray, shape (n, K)
        ``rᵀ Aₖ r`` of each kept tile for each offset of :data:`CORR_OFFSETS`, ADU².
    """
    tile = CORR_TILE
    ny, nx = (s - s % tile for s in image.shape)

    def blocks(a: np.ndarray) -> np.ndarray:
        a = a[:ny, :nx].reshape(ny // tile, tile, nx // tile, tile)
        return a.transpose(0, 2, 1, 3).reshape(-1, tile * tile)

    values = blocks(np.where(bad, 0.0, image))[~blocks(bad).any(axis=1)]
    _, pinv, coef_var = _quadratic_fit(tile)
    coef = values @ pinv.T
    r = values @ model["m"]
    q0 = np.sum(r * r, axis=1)
    var, level = q0 / (tile * tile - 6), values.mean(axis=1)
    if level.size >= MIN_CORR_TILES:
        curvature = np.sum(coef[:, 3:] ** 2 / coef_var[3:], axis=1)
        keep = _smooth_tiles(level, var, curvature)
        sky = float(np.median(level))
        sky_var = float(np.median(var[keep])) if keep.any() else float(np.median(var))
        keep &= var < 3.0 * sky_var * np.maximum(level, sky) / max(abs(sky), 1e-12)
        r, q0 = r[keep], q0[keep]
    r = r.reshape(-1, tile, tile)
    qk = np.zeros((len(q0), len(CORR_OFFSETS)))
    for k, (dy, dx) in enumerate(CORR_OFFSETS):  # rᵀ Aₖ r = 2 Σ over the pairs
        x0, x1 = max(0, -dx), tile - max(0, dx)
        qk[:, k] = 2.0 * np.sum(r[:, : tile - dy, x0:x1] * r[:, dy:, x0 + dx : x1 + dx],
                                axis=(1, 2))
    return q0, qk


def _solve_correlation(q0: np.ndarray, qk: np.ndarray, model: dict[str, np.ndarray]
                       ) -> np.ndarray:
    """Solve ``R_k (t0 + c·ρ) = a0_k + b_k·ρ`` for the correlations ``ρ``.

    Returns
    -------
    ndarray, shape (K,)
        The noise correlation at each offset of :data:`CORR_OFFSETS`.
    """
    ratio = qk.sum(axis=0) / q0.sum()
    lhs = model["b"] - ratio[:, None] * model["c"][None, :]
    return np.linalg.solve(lhs, ratio * model["t0"] - model["a0"])


STRIP = 256
"""Height of the row strips that :func:`measure_noise_correlation` samples, px."""


def _strips(ny: int, nx: int, max_pixels: int | None) -> list[slice]:
    """Row ranges to measure: the whole frame, or evenly spaced strips of ``STRIP`` rows.

    Returns
    -------
    list of slice
        One slice of rows per strip, together at most ``max_pixels`` pixels (at least one).
    """
    if max_pixels is None or ny * nx <= max_pixels or ny <= 2 * STRIP:
        return [slice(0, ny)]
    n = max(1, min(ny // STRIP, max_pixels // (STRIP * nx)))
    starts = np.linspace(0, ny - STRIP, n).astype(int)
    return [slice(int(s), int(s) + STRIP) for s in starts]


def measure_noise_correlation(
    image: np.ndarray, mask: np.ndarray | None = None, *, max_pixels: int | None = None
) -> dict[str, float]:
    """Lag-1 correlation of the noise along x and y, measured in small tiles.

    In every :data:`CORR_TILE`² tile a quadratic surface is removed by least squares: the
    sky, its gradients and the smooth light of sources (galaxy outskirts, star wings) go,
    the noise stays. Tiles with masked pixels, on sharp structure (star cores, cosmic rays)
    or with excess variance are left out (:func:`_tile_pair_sums`). The fit itself
    correlates the residuals of a tile, by an amount known exactly from its hat matrix:
    the ratios of the residuals' pair sums to their sum of squares are modelled as linear
    in the noise correlations at the offsets of :data:`CORR_OFFSETS` (every offset within
    two pixels on each axis) and solved for them (:func:`_correlation_model`). For white
    noise the result is 0; for white noise convolved with a kernel k (resampled or
    smoothed frames) it is ``Σ kᵢkᵢ₊₁ / Σ kᵢ²`` along each convolved axis, as long as k
    spans at most five pixels (correlations beyond two pixels are taken as zero).

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame in ADU (sky not subtracted is fine).
    mask : ndarray of int, optional
        Non-zero marks a bad pixel (its tile is not used).
    max_pixels : int, optional
        Measure on evenly spaced strips of :data:`STRIP` full-width rows holding at most
        this many pixels, to bound the time on large frames; None (default) = the whole
        frame. 2²¹ pixels give ~10⁶ pixel pairs.

    Returns
    -------
    dict
        ``rho_x``, ``rho_y`` (dimensionless, between neighbouring columns and rows),
        ``n_pairs_x``, ``n_pairs_y`` (neighbour pairs in the tiles used) and ``rho_err``
        (1σ error of ``rho_x``/``rho_y``, the larger, from the scatter of 16 interleaved
        groups of tiles).

    Raises
    ------
    NoiseModelError
        Fewer than :data:`MIN_CORR_TILES` clean tiles (too few pairs of sky pixels).
    """
    img, bad = _pixels(image, mask)
    model = _correlation_model(CORR_TILE)
    sums = [_tile_pair_sums(img[rows], bad[rows], model)
            for rows in _strips(*img.shape, max_pixels)]
    q0 = np.concatenate([q for q, _ in sums])
    qk = np.concatenate([q for _, q in sums])
    if q0.size < MIN_CORR_TILES:
        raise NoiseModelError(
            f"only {q0.size} clean {CORR_TILE}×{CORR_TILE} px tiles: too few pairs of sky "
            "pixels"
        )
    rho = _solve_correlation(q0, qk, model)
    ix, iy = CORR_OFFSETS.index((0, 1)), CORR_OFFSETS.index((1, 0))
    groups = np.array([_solve_correlation(q0[g::16], qk[g::16], model)[[ix, iy]]
                       for g in range(16)])
    n_pairs = float(q0.size * CORR_TILE * (CORR_TILE - 1))
    return {
        "rho_x": float(rho[ix]),
        "rho_y": float(rho[iy]),
        "n_pairs_x": n_pairs,
        "n_pairs_y": n_pairs,
        "rho_err": float(np.max(np.std(groups, axis=0, ddof=1)) / 4.0),
    }


HF_TILE = 64
"""Side of the tiles whose power spectra :func:`measure_noise_correlation_high_frequency`
averages, px (overlapping by half)."""

HF_K_MIN = 0.45
"""Lowest spatial frequency (cycles/px, radial) that the high-frequency fit uses: above it a
well-sampled PSF (FWHM ≳ 3 px) leaves little of the sources' power."""

MIN_HF_TILES = 48
"""Fewest clean tiles for a high-frequency measurement (three per interleaved group)."""


def _hf_window() -> np.ndarray:
    """Return the 2-D Hann window of the :data:`HF_TILE`² tiles.

    Returns
    -------
    ndarray, shape (HF_TILE, HF_TILE)
        The outer product of two 1-D Hann windows.
    """
    return np.outer(np.hanning(HF_TILE), np.hanning(HF_TILE))


def _hf_tiles(image: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Power spectra and levels of the clean, Hann-windowed :data:`HF_TILE`² tiles.

    Returns
    -------
    power : ndarray, shape (n, HF_TILE, HF_TILE // 2 + 1)
        ``|rfft2|²`` of each tile without a bad pixel, its mean removed, ADU² (unnormalised:
        for white noise its expectation is the variance times ``Σ w²``, with ``w`` the
        window).
    level : ndarray, shape (n,)
        Each tile's mean weighted by ``w²`` (the weights with which its pixels' variances
        enter ``power``), ADU.
    """
    t, step = HF_TILE, HF_TILE // 2
    ny, nx = image.shape
    window = _hf_window()
    tiles = [image[y:y + t, x:x + t]
             for y in range(0, ny - t + 1, step) for x in range(0, nx - t + 1, step)
             if not bad[y:y + t, x:x + t].any()]
    if not tiles:
        return np.zeros((0, t, t // 2 + 1)), np.zeros(0)
    stack = np.array(tiles)
    w2 = window * window
    level = (stack * w2).sum(axis=(1, 2)) / float(w2.sum())
    stack -= stack.mean(axis=(1, 2), keepdims=True)
    return np.abs(np.fft.rfft2(stack * window)) ** 2, level


def _hf_design(k_min: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the frequencies of the fit and ``2 cos 2πk`` along x and y there.

    Returns
    -------
    use : ndarray of bool, shape (HF_TILE, HF_TILE // 2 + 1)
        The rfft2 bins with radial frequency ≥ ``k_min`` (the four purely real ones left
        out: their power is χ²₁, not χ²₂, so their median differs).
    cos_x, cos_y : ndarray, shape (n_bins,)
        ``2 cos(2π kₓ)`` and ``2 cos(2π kᵧ)`` in those bins.
    """
    ky = np.fft.fftfreq(HF_TILE)[:, None]
    kx = np.fft.rfftfreq(HF_TILE)[None, :]
    kyy, kxx = np.broadcast_arrays(ky, kx)
    use = np.hypot(kxx, kyy) >= k_min
    real = (np.isin(np.abs(kyy), (0.0, 0.5))) & (np.isin(kxx, (0.0, 0.5)))
    use &= ~real
    return use, 2.0 * np.cos(2.0 * np.pi * kxx[use]), 2.0 * np.cos(2.0 * np.pi * kyy[use])


def _hf_solve(power: np.ndarray, use: np.ndarray, cos_x: np.ndarray, cos_y: np.ndarray
              ) -> np.ndarray:
    """Fit white noise smoothed by ``[a, 1, a]`` along x and ``[b, 1, b]`` along y.

    The model ``P(k) = σ² (1 + a·2cos 2πkₓ)² (1 + b·2cos 2πkᵧ)²`` is fitted to the median
    spectrum by least squares; it is never negative, holds where the kernels null the
    noise at Nyquist (``a = 1/2``: linear interpolation halfway), and gives the lag-1
    correlation ``2a / (1 + 2a²)`` (at most 1/√2; wider smoothing is measured approximately).

    Returns
    -------
    ndarray, shape (2,)
        The kernels' ``a`` and ``b``.
    """
    from scipy.optimize import least_squares  # why: scipy.optimize only for this fit

    p = np.median(power, axis=0)[use]
    p = p / float(np.median(p))

    def residual(q: np.ndarray) -> np.ndarray:
        return q[0] * ((1.0 + q[1] * cos_x) * (1.0 + q[2] * cos_y)) ** 2 - p

    return least_squares(residual, np.array([1.0, 0.0, 0.0]), method="lm").x[1:]


def _lag1(kernel: np.ndarray) -> np.ndarray:
    """Convert smoothing kernels ``[a, 1, a]`` into the lag-1 correlation they give.

    Returns
    -------
    ndarray
        ``2a / (1 + 2a²)`` for each ``a``.
    """
    return 2.0 * kernel / (1.0 + 2.0 * kernel * kernel)


def _hf_sky_variance(power: np.ndarray, level: np.ndarray, use: np.ndarray,
                     cos_x: np.ndarray, cos_y: np.ndarray, kernel: np.ndarray
                     ) -> tuple[float, float, float]:
    """Noise variance of the fainter half of the tiles, from their high frequencies.

    Each tile's spectrum above ``k_min``, divided by the fitted shape, gives its white
    amplitude (median over the bins / ln 2: the bins are exponentially distributed, and the
    median ignores what is left of bright sources), and times ``(1 + 2a²)(1 + 2b²)`` the
    variance of its pixels. Photon noise is white, so the sources' own photon noise is in
    it, and its level is the tile's ``w²``-weighted mean: the pair lies on the noise model's
    line ``var = rn² + S/gain`` however crowded the tile.

    Returns
    -------
    sky : float
        Median level of the fainter half of the tiles, ADU.
    var : float
        Median noise variance of those tiles, ADU².
    err : float
        Its 1σ error, 1.2533 · (robust σ of their variances) / √n, ADU².
    """
    a, b = (float(k) for k in kernel)
    w2 = float((_hf_window() ** 2).sum())
    shape = ((1.0 + a * cos_x) * (1.0 + b * cos_y)) ** 2
    white = np.median(power[:, use] / np.maximum(shape, 1e-6), axis=1) / math.log(2.0) / w2
    var = white * (1.0 + 2.0 * a * a) * (1.0 + 2.0 * b * b)
    faint = level <= np.median(level)
    v = var[faint]
    err = 1.2533 * float(mad_sigma(v)) / math.sqrt(v.size)
    return float(np.median(level[faint])), float(np.median(v)), err


def measure_noise_correlation_high_frequency(
    image: np.ndarray, mask: np.ndarray | None = None, *, max_pixels: int | None = None,
    k_min: float = HF_K_MIN,
) -> dict[str, float]:
    """Lag-1 noise correlation along x and y from the highest spatial frequencies.

    The noise's power spectrum is the Fourier transform of its autocorrelation,
    ``P(k) = σ² (1 + Σₘ 2 ρₘ cos 2π k·oₘ)``, linear in the correlations ``ρₘ`` at the
    offsets ``oₘ``. Sources put their power where the PSF's transfer function does, below
    ~1/FWHM: above ``k_min`` cycles/px a well-sampled PSF leaves almost only the noise. The
    median power spectrum of :data:`HF_TILE`² Hann-windowed tiles (tiles with a bad pixel
    left out; the median ignores the few holding a cosmic ray) is fitted there as white
    noise smoothed by a three-pixel kernel along each axis (:func:`_hf_solve`).

    This is the measurement for crowded fields, where :func:`measure_noise_correlation`
    sees the unresolved stars (correlated over the PSF) as correlated noise. What is left of
    the sources' power above ``k_min`` still raises the result, so on a crowded field it is
    an upper bound (the more so the narrower the PSF); on noise alone both measure the same
    lag-1 correlation. A correlation that is not separable in x and y, or reaches beyond
    two pixels, is measured approximately.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame in ADU (sky not subtracted is fine).
    mask : ndarray of int, optional
        Non-zero marks a bad pixel (its tiles are not used).
    max_pixels : int, optional
        Measure on evenly spaced strips of :data:`STRIP` full-width rows holding at most
        this many pixels (as :func:`measure_noise_correlation`); None = the whole frame.
    k_min : float
        Lowest radial spatial frequency used, cycles/px (Nyquist is 0.5).

    Returns
    -------
    dict
        ``rho_x``, ``rho_y`` (lag-1, between neighbouring columns and rows),
        ``rho_err`` (1σ error of either, the larger, from the scatter of 16 interleaved
        groups of tiles), ``n_tiles`` and ``k_min``; and the noise variance at the sky
        from the same spectra (:func:`_hf_sky_variance`): ``sky_adu`` (the median level of
        the fainter half of the tiles, ADU), ``sky_var_adu2`` and ``sky_var_err_adu2``
        (their median pixel variance and its 1σ error, ADU²). On a crowded field this
        variance holds little of the unresolved stars' light, unlike the small tiles'
        (:attr:`NoiseModel.sky_var_adu2`), whose quadratic leaves it in; what remains of
        the sources' power above ``k_min`` still raises it.

    Raises
    ------
    NoiseModelError
        Fewer than :data:`MIN_HF_TILES` clean tiles, or ``k_min`` outside (0, 0.5).
    """
    if not 0.0 < k_min < 0.5:
        raise NoiseModelError(f"k_min must lie in (0, 0.5) cycles/px, got {k_min!r}")
    img, bad = _pixels(image, mask)
    parts = [_hf_tiles(img[rows], bad[rows]) for rows in _strips(*img.shape, max_pixels)]
    power = np.concatenate([p for p, _ in parts])
    level = np.concatenate([lv for _, lv in parts])
    if len(power) < MIN_HF_TILES:
        raise NoiseModelError(
            f"only {len(power)} clean {HF_TILE}×{HF_TILE} px tiles (at least {MIN_HF_TILES} "
            "needed) for the high-frequency noise correlation")
    use, cos_x, cos_y = _hf_design(k_min)
    kernel = _hf_solve(power, use, cos_x, cos_y)
    rho = _lag1(kernel)
    groups = np.array([_lag1(_hf_solve(power[g::16], use, cos_x, cos_y)) for g in range(16)])
    sky, sky_var, sky_var_err = _hf_sky_variance(power, level, use, cos_x, cos_y, kernel)
    return {
        "rho_x": float(rho[0]),
        "rho_y": float(rho[1]),
        "rho_err": float(np.max(np.std(groups, axis=0, ddof=1)) / 4.0),
        "n_tiles": float(len(power)),
        "k_min": float(k_min),
        "sky_adu": sky,
        "sky_var_adu2": sky_var,
        "sky_var_err_adu2": sky_var_err,
    }
