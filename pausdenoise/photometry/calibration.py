"""Zero-point calibration of fluxes and errors, and the zero-point's part of an error.

``flux_cal = flux · ZP`` and ``flux_cal_err = sqrt(σ² σZP² + σ² ZP² + flux² σZP²)`` (ZP
multiplicative, calibrated units per ADU: µJy/ADU for PAUS). Where something replaces the
zero-point's role (relative zero-points fitted from the sources, :mod:`pausdenoise.
relative_zp`) or changes the flux after calibration (aperture corrections, :mod:`pausdenoise.
photometry.apcor`), the zero-point's error is taken out of the error and, where it still
applies, put back for the new flux.
"""

from __future__ import annotations

import numpy as np

__all__ = ["calibrate_flux", "with_zero_point_error", "without_zero_point_error"]


def calibrate_flux(
    flux: np.ndarray, flux_err: np.ndarray, zp: float | np.ndarray, zp_err: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a multiplicative zero-point: ``f·ZP`` and ``sqrt(σ²σZP² + σ²ZP² + f²σZP²)``.

    Parameters
    ----------
    flux : array_like of float
        Fluxes ``f`` in ADU.
    flux_err : array_like of float
        Their errors ``σ`` in ADU.
    zp : float or array_like of float
        Multiplicative zero-point ``ZP`` (calibrated units per ADU).
    zp_err : float or array_like of float
        Error ``σZP`` of the zero-point.

    Returns
    -------
    flux_cal : ndarray of float64
        ``f·ZP``.
    flux_cal_err : ndarray of float64
        ``sqrt(σ²σZP² + σ²ZP² + f²σZP²)``.
    """
    f, s = np.asarray(flux, dtype=float), np.asarray(flux_err, dtype=float)
    zp, zpe = np.asarray(zp, dtype=float), np.asarray(zp_err, dtype=float)
    return f * zp, np.sqrt(s * s * zpe * zpe + s * s * zp * zp + f * f * zpe * zpe)


def without_zero_point_error(
    flux_cal: np.ndarray, flux_cal_err: np.ndarray, zp: float | np.ndarray,
    zp_err: float | np.ndarray,
) -> np.ndarray:
    """Take the zero-point's error back out of a calibrated flux error.

    The inverse of :func:`calibrate_flux`'s error: with ``σ_c = σ·ZP`` (the measurement's
    own error in calibrated units) and ``r = σZP/ZP``, ``calibrate_flux`` gives
    ``flux_cal_err² = σ_c² (1 + r²) + flux_cal² r²``, so
    ``σ_c = sqrt((flux_cal_err² − flux_cal² r²) / (1 + r²))``.

    Parameters
    ----------
    flux_cal, flux_cal_err : array_like of float
        Calibrated fluxes and their errors (calibrated units, µJy for PAUS).
    zp, zp_err : float or array_like of float
        The zero-point (calibrated units per ADU) and its error; a NaN error counts as 0.

    Returns
    -------
    ndarray of float64
        ``σ_c``, the error the flux would have with an exact zero-point (never negative).
    """
    f = np.asarray(flux_cal, dtype=float)
    e = np.asarray(flux_cal_err, dtype=float)
    r = np.nan_to_num(np.asarray(zp_err, dtype=float) / np.asarray(zp, dtype=float))
    return np.sqrt(np.maximum(e * e - f * f * r * r, 0.0) / (1.0 + r * r))


def with_zero_point_error(
    flux_cal: np.ndarray, stat_err: np.ndarray, zp: float | np.ndarray,
    zp_err: float | np.ndarray,
) -> np.ndarray:
    """Add a zero-point's error to a calibrated flux error, as :func:`calibrate_flux` does.

    Parameters
    ----------
    flux_cal : array_like of float
        Calibrated fluxes (calibrated units).
    stat_err : array_like of float
        Their errors with an exact zero-point (calibrated units;
        :func:`without_zero_point_error`).
    zp, zp_err : float or array_like of float
        The zero-point (calibrated units per ADU) and its error; a NaN error counts as 0.

    Returns
    -------
    ndarray of float64
        ``sqrt(stat_err² (1 + r²) + flux_cal² r²)`` with ``r = σZP/ZP``.
    """
    f = np.asarray(flux_cal, dtype=float)
    s = np.asarray(stat_err, dtype=float)
    r = np.nan_to_num(np.asarray(zp_err, dtype=float) / np.asarray(zp, dtype=float))
    return np.sqrt(s * s * (1.0 + r * r) + f * f * r * r)
