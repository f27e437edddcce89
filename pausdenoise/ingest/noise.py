"""A frame's noise model and noise correlation, measured at ingest from its own pixels.

:func:`noise_attrs` fits the CCD noise model (:func:`pausdenoise.noise_model.fit_noise_model`:
gain and read noise from the variance of many small tiles against their signal) and measures
the lag-1 noise correlation along x and y
(:func:`pausdenoise.noise_model.measure_noise_correlation`), then decides which gain and read
noise the frame carries (``ingest.noise_model``):

- ``"auto"``: the header's (or ``ingest.defaults``') value when there is one, else the fitted
  one;
- ``"fitted"``: the fitted one; the header's when the fit fails;
- ``"header"``: the header's only (the fit is still recorded).

Stored attributes (exposure-table columns): ``gain`` [e⁻/ADU] and ``rdnoise`` [e⁻] (the
values in force), ``gain_source`` (``"header"``, ``"fitted"`` or ``"none"``),
``gain_header`` / ``rdnoise_header`` (the header's values, None when absent),
``gain_fitted``, ``gain_fitted_err`` [e⁻/ADU], ``read_noise_fitted_e`` [e⁻],
``noise_corr_x`` / ``noise_corr_y`` (lag-1 correlation of the sky noise along x, i.e.
between neighbouring columns, and along y, between neighbouring rows) and, when a
measurement failed, ``noise_fit_error`` (why). NaN marks what could not be measured; a frame
without any gain has no ``gain`` attribute (photometry refuses it, naming the gain).

The images are assumed bias-subtracted (the store's convention); the fit uses the frame's
mask and saturation level. See ``docs/noise_model.md`` for the method and its limits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pausdenoise.errors import NoiseModelError
from pausdenoise.noise_model import fit_noise_model, measure_noise_correlation

__all__ = ["CORRELATION_MAX_PIXELS", "NOISE_COLUMNS", "noise_attrs"]

CORRELATION_MAX_PIXELS = 2**21
"""Pixels (evenly spaced full-width strips) on which the noise correlation is measured:
~10⁶ pixel pairs, a white-noise error of 0.001, in ~0.5 s for any frame size."""

NOISE_COLUMNS: tuple[str, ...] = (
    "gain",
    "gain_source",
    "gain_fitted",
    "gain_fitted_err",
    "read_noise_fitted_e",
    "gain_header",
    "rdnoise",
    "rdnoise_header",
    "noise_corr_x",
    "noise_corr_y",
)
"""Exposure-table columns of the per-frame noise table (after ``frame``)."""


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _measure(
    image: np.ndarray, mask: np.ndarray, saturate: float | None
) -> tuple[dict[str, float], list[str]]:
    """Fit the noise model and measure the correlation; failures give NaN and a reason.

    Returns
    -------
    values : dict
        ``gain_fitted``, ``gain_fitted_err``, ``read_noise_fitted_e``, ``noise_corr_x``,
        ``noise_corr_y`` (NaN where not measured).
    errors : list of str
        Why a measurement failed.
    """
    nan = float("nan")
    out = dict.fromkeys(("gain_fitted", "gain_fitted_err", "read_noise_fitted_e",
                         "noise_corr_x", "noise_corr_y"), nan)
    errors = []
    try:
        m = fit_noise_model(image, mask, saturate=saturate)
        out.update(gain_fitted=m.gain, gain_fitted_err=m.gain_err,
                   read_noise_fitted_e=m.read_noise_e)
    except NoiseModelError as exc:
        errors.append(f"noise model: {exc}")
    try:
        rho = measure_noise_correlation(image, mask, max_pixels=CORRELATION_MAX_PIXELS)
        out.update(noise_corr_x=rho["rho_x"], noise_corr_y=rho["rho_y"])
    except NoiseModelError as exc:
        errors.append(f"noise correlation: {exc}")
    return out, errors


def _choose(header: float | None, fitted: float, mode: str) -> tuple[float | None, str]:
    """Pick the header or the fitted value of one quantity.

    Returns
    -------
    value : float or None
        The value in force (None: none known).
    source : str
        ``"header"``, ``"fitted"`` or ``"none"``.
    """
    if mode == "fitted" and _finite(fitted):
        return float(fitted), "fitted"
    if _finite(header):
        return float(header), "header"  # type: ignore[arg-type]
    if mode == "auto" and _finite(fitted):
        return float(fitted), "fitted"
    return None, "none"


def noise_attrs(
    image: np.ndarray,
    mask: np.ndarray,
    attrs: dict[str, Any],
    noise_model: str,
    name: str,
) -> tuple[dict[str, Any], list[str]]:
    """Measure a frame's noise model and correlation and choose its gain and read noise.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame, ADU (bias subtracted, sky not subtracted).
    mask : ndarray of uint8
        Non-zero marks a pixel not to use.
    attrs : dict
        The frame's attributes so far: ``gain`` [e⁻/ADU] and ``rdnoise`` [e⁻] from the
        header (None when absent) and ``saturate`` [ADU].
    noise_model : {"auto", "header", "fitted"}
        See the module docstring.
    name : str
        How warnings name the frame (file and frame id).

    Returns
    -------
    attrs : dict
        The attributes to add or replace (see the module docstring); ``gain`` and
        ``rdnoise`` are None when unknown (to be dropped before storing).
    warnings : list of str
        One line when the frame needed the fit (no header gain, or ``"fitted"``) and the
        fit failed, or when the fitted gain is poorly constrained (error above 20 %).
    """
    values, errors = _measure(image, mask, attrs.get("saturate"))
    header_gain, header_rn = attrs.get("gain"), attrs.get("rdnoise")
    gain, source = _choose(header_gain, values["gain_fitted"], noise_model)
    rdnoise, _ = _choose(header_rn, values["read_noise_fitted_e"], noise_model)
    out: dict[str, Any] = {
        **values, "gain": gain, "rdnoise": rdnoise, "gain_source": source,
        "gain_header": header_gain, "rdnoise_header": header_rn,
    }
    if errors:
        out["noise_fit_error"] = "; ".join(errors)
    warnings = []
    needed = noise_model == "fitted" or (noise_model == "auto" and not _finite(header_gain))
    if needed and not _finite(values["gain_fitted"]):
        fallback = f"header gain {gain} used" if source == "header" else "gain unknown"
        warnings.append(f"{name}: noise model not fitted ({out['noise_fit_error']}); "
                        f"{fallback}")
    elif needed and values["gain_fitted_err"] > 0.2 * values["gain_fitted"]:
        warnings.append(f"{name}: fitted gain {values['gain_fitted']:.3g} ± "
                        f"{values['gain_fitted_err']:.2g} e-/ADU is poorly constrained "
                        "(the frame spans little signal above its sky)")
    return out, warnings


def noise_table(exposures: Any) -> Any:
    """Return the per-frame noise table of an exposure table.

    Parameters
    ----------
    exposures : pandas.DataFrame
        The store's exposure table (:func:`pausdenoise.store.exposure_table`); frames
        ingested before the noise model was measured lack its columns (NaN then).

    Returns
    -------
    pandas.DataFrame
        ``frame``, ``band`` and :data:`NOISE_COLUMNS`, one row per frame: gains in e⁻/ADU,
        read noises in e⁻, correlations dimensionless; ``gain_source`` ``"header"``,
        ``"fitted"`` or ``"none"`` (empty for frames stored before it existed).
    """
    import pandas as pd  # pandas kept off this module's import path (read_frame's)

    out = pd.DataFrame({"frame": exposures["frame"], "band": exposures.get("band")})
    for col in NOISE_COLUMNS:
        values = exposures[col] if col in exposures else pd.Series(np.nan, exposures.index)
        if col == "gain_source":
            out[col] = values.where(values.notna(), "").astype(str)
        else:
            out[col] = pd.to_numeric(values, errors="coerce").astype("float64")
    return out.reset_index(drop=True)
