"""Robust statistics shared by every stage: σ68, MAD-based σ, and their constants.

One definition of each, so that the pipeline, the report and the benchmarks quote the same
numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["MAD_TO_SIGMA", "P16", "P84", "bin_index", "mad_sigma", "pixel_noise_sigma",
           "sigma68", "sigma68_stderr"]

MAD_TO_SIGMA = 1.482602218505602
"""Scale from the median absolute deviation to σ for a Gaussian (1/Φ⁻¹(3/4))."""

P16 = 15.865525393145708
"""The percentile one Gaussian σ below the median, Φ(−1) in per cent."""

P84 = 84.13447460685429
"""The percentile one Gaussian σ above the median, Φ(+1) in per cent."""


def sigma68(values: Iterable[float] | np.ndarray) -> float:
    """Half the central 68.27 % range of the finite values.

    Parameters
    ----------
    values : array-like of float
        Any values; non-finite ones are ignored.

    Returns
    -------
    float
        ``(p84 − p16) / 2`` with the exact Gaussian percentiles (1 for N(0, 1)); NaN when
        no value is finite.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    p16, p84 = np.percentile(v, [P16, P84])
    return float(0.5 * (p84 - p16))


def sigma68_stderr(n: int | np.ndarray) -> np.ndarray | float:
    """Approximate standard error of σ68 from ``n`` Gaussian values: ≈ 0.96/√n.

    From the asymptotic variances of the 15.9 % and 84.1 % sample quantiles,
    var(q) = p(1−p)/(n φ²), and their covariance p₁(1−p₂)/(n φ₁φ₂).

    Parameters
    ----------
    n : int or ndarray of int
        Number of values σ68 was computed from.

    Returns
    -------
    float or ndarray
        The standard error in units of σ (inf where ``n`` is 0).
    """
    p = 0.15865525393145708
    phi = np.exp(-0.5) / np.sqrt(2 * np.pi)
    var_q = p * (1 - p) / phi**2
    cov = p * p / phi**2
    c = np.sqrt((2 * var_q - 2 * cov) / 4.0)
    with np.errstate(divide="ignore"):
        return c / np.sqrt(np.asarray(n, dtype=float))


def mad_sigma(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Gaussian-equivalent σ from the median absolute deviation, ignoring NaNs.

    Parameters
    ----------
    values : ndarray
        Values in any unit (the result has the same unit).
    axis : int, optional
        Axis along which to compute; ``None`` for all values.

    Returns
    -------
    float or ndarray
        ``MAD_TO_SIGMA * median(|x − median(x)|)``.
    """
    v = np.asarray(values, dtype=float)
    med = np.nanmedian(v, axis=axis, keepdims=True)
    mad = np.nanmedian(np.abs(v - med), axis=axis)
    out = MAD_TO_SIGMA * mad
    return float(out) if np.ndim(out) == 0 else out


def pixel_noise_sigma(image: np.ndarray, good: np.ndarray | None = None) -> float:
    """Return the pixel-to-pixel noise σ: the MAD-σ of horizontal neighbour differences / √2.

    Differences of neighbours cancel what varies slowly (sky gradients, the smooth light
    of unresolved stars) and, through the median, the few pairs across a source's edge, so
    on a crowded field this is far closer to one pixel's noise than the frame's robust
    spread, though still above it where faint stars crowd every pixel. Noise correlated
    between neighbours (positively) lowers it.

    Parameters
    ----------
    image : ndarray (ny, nx)
        Pixel values, any unit (the result has the same unit), NaN where unusable.
    good : ndarray of bool (ny, nx), optional
        Usable pixels; a pair counts when both are usable and finite.

    Returns
    -------
    float
        σ, in the image's unit; NaN with no usable pair.
    """
    a = np.asarray(image, dtype=np.float64)
    ok = np.isfinite(a) if good is None else np.isfinite(a) & np.asarray(good, bool)
    d = (a[:, 1:] - a[:, :-1])[ok[:, 1:] & ok[:, :-1]]
    return float(mad_sigma(d)) / np.sqrt(2.0) if d.size else float("nan")


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Return the bin of each value for bins ``[edges[i], edges[i + 1])``.

    Parameters
    ----------
    values : ndarray
        The values (e.g. AB magnitudes).
    edges : ndarray
        Increasing bin edges.

    Returns
    -------
    ndarray of int
        The 0-based bin index of each value; −1 outside the edges or for a non-finite value.
    """
    values = np.asarray(values, dtype=float)
    idx = np.searchsorted(edges, values, side="right") - 1
    idx[(idx < 0) | (idx >= len(edges) - 1) | ~np.isfinite(values)] = -1
    return idx
