"""A frame's noise model and noise correlation, measured at ingest from its own pixels.

:func:`noise_attrs` fits the CCD noise model (:func:`pausdenoise.noise_model.fit_noise_model`:
gain and read noise from the variance of many small tiles against their signal) and measures
the lag-1 noise correlation along x and y in small tiles
(:func:`pausdenoise.noise_model.measure_noise_correlation`) and at the highest spatial
frequencies (:func:`pausdenoise.noise_model.measure_noise_correlation_high_frequency`, in
force where the tiles see sources: :func:`choose_noise_correlation`), then decides which gain
and read noise the frame carries (``ingest.noise_model``):

- ``"auto"``: the header's (or ``ingest.defaults``') value when there is one, else the fitted
  one;
- ``"fitted"``: the fitted one; the header's when the fit fails;
- ``"header"``: the header's only (the fit is still recorded).

After every frame is in, :func:`exposure_noise_models` fits one noise model per CCD to the
sky levels and sky variances of its exposures
(:func:`pausdenoise.noise_model.fit_gain_across_exposures`: a photon-transfer curve from the
exposures' different skies, which holds on crowded fields where a frame's own slope does
not), and :func:`exposure_gain_updates` puts it in force wherever a fitted gain would be
(``"auto"`` without a header gain, ``"fitted"``), with ``gain_source`` ``"exposures"``.
Where there is no such fit and the frame's own fit is below what its sky's variance allows
(a crowded field: :func:`gain_below_sky_bound`), the gain that reproduces the sky's variance
is in force instead (``gain_source`` ``"sky"``, :func:`sky_gains`).

Stored attributes (exposure-table columns): ``gain`` [e⁻/ADU] and ``rdnoise`` [e⁻] (the
values in force), ``gain_source`` (``"header"``, ``"exposures"``, ``"fitted"``, ``"sky"`` or
``"none"``), ``gain_header`` / ``rdnoise_header`` (the header's values, None when absent),
``gain_fitted``, ``gain_fitted_err`` [e⁻/ADU], ``read_noise_fitted_e`` [e⁻] (the frame's own
fit), ``sky_fitted_adu`` [ADU] and ``sky_var_fitted_adu2``, ``sky_var_fitted_err`` [ADU²]
(the sky level and the noise variance of the sky tiles), ``sky_hf_adu`` [ADU] and
``sky_var_hf_adu2``, ``sky_var_hf_err`` [ADU²] (the same from the highest spatial
frequencies), ``gain_sky_min`` and ``gain_sky`` [e⁻/ADU] (:func:`sky_gains`: the least gain
the sky's variance allows, since ``var ≥ S/gain``, and the gain it gives with the header's
read noise), ``gain_exposures``,
``gain_exposures_err`` [e⁻/ADU], ``read_noise_exposures_e`` [e⁻] (the fit across the CCD's
exposures, NaN when there is none),
``noise_corr_x`` / ``noise_corr_y`` (lag-1 correlation of the sky noise along x, i.e.
between neighbouring columns, and along y, between neighbouring rows: the one in force),
``noise_corr_method`` (``"tiles"`` or ``"high-frequency"``, see
:func:`choose_noise_correlation`), ``noise_corr_tiles_x/_y`` and ``noise_corr_hf_x/_y``
(the two measurements) and, when a
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
from pausdenoise.noise_model import (
    fit_gain_across_exposures,
    fit_noise_model,
    gain_from_sky,
    measure_noise_correlation,
    measure_noise_correlation_high_frequency,
)

__all__ = ["CORRELATION_MAX_PIXELS", "EXPOSURE_COLUMNS", "NOISE_COLUMNS",
           "NOISE_MEASUREMENT_VERSION", "choose_noise_correlation", "correlation_moved",
           "exposure_gain_updates", "exposure_noise_models", "gain_below_sky_bound",
           "noise_attrs", "noise_correlation_attrs", "sky_gains"]

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
    "noise_corr_method",
    "noise_corr_tiles_x",
    "noise_corr_tiles_y",
    "noise_corr_hf_x",
    "noise_corr_hf_y",
    "sky_fitted_adu",
    "sky_var_fitted_adu2",
    "sky_hf_adu",
    "sky_var_hf_adu2",
    "gain_sky_min",
    "gain_sky",
    "gain_exposures",
    "gain_exposures_err",
    "read_noise_exposures_e",
)
"""Exposure-table columns of the per-frame noise table (after ``frame``)."""

EXPOSURE_COLUMNS: tuple[str, ...] = (
    "ccd", "gain_header", "n_exposures", "sky_min_adu", "sky_max_adu", "gain", "gain_err",
    "read_noise_e", "read_noise_e_err", "gain_fitted_median", "max_deviation", "error",
)
"""Columns of :func:`exposure_noise_models`' table, one row per CCD (and header gain)."""

_PREFERENCE: dict[str, tuple[str, ...]] = {
    "auto": ("header", "exposures", "fitted", "sky"),
    "fitted": ("exposures", "fitted", "sky", "header"),
    "header": ("header",),
}
"""Per ``ingest.noise_model``, where the gain in force comes from, first found first (the
read noise: the gain's source first, then the same order). A frame's own fit (``"fitted"``)
counts only when its sky's variance allows it (:func:`gain_below_sky_bound`); ``"sky"`` is
the gain that gives the sky's variance (:func:`sky_gains`). When the header gives the read
noise, the sky's gain is the gain itself on a frame whose sky is noise (not a bound), and it
also replaces an own fit poorly constrained (error above :data:`MAX_FIT_ERROR`)."""

MAX_FIT_ERROR = 0.2
"""Largest relative error of a frame's own fitted gain for it to count as constrained (above
it: a warning, and with the header's read noise the sky's gain instead)."""

MAX_DEVIATION = 0.25
"""Largest relative difference between an exposure's sky variance and the fitted line for
the fit across exposures to be used: beyond it the exposures do not share one noise model
(other cameras or gain settings under one CCD number)."""


NOISE_MEASUREMENT_VERSION = 3
"""Version of the per-frame noise measurements, stored on every frame
(``noise_measurement_version``; absent on frames stored before version 2). The ingest
measures the noise correlation again on frames of an older version (2: the high-frequency
measurement; 3: with the sky variance from the same high frequencies), and the ingest
stage's fingerprint holds it, so an existing run's ingest stage runs again once after an
upgrade."""

CORRELATION_TOLERANCE = (0.05, 0.2)
"""How far (absolute, and relative to the high-frequency value) the tiles' correlation may
exceed the high-frequency one before the tiles count as seeing sources (besides 3σ)."""


def choose_noise_correlation(tiles: dict[str, float] | None, high: dict[str, float] | None
                             ) -> tuple[float, float, str]:
    """Pick the lag-1 noise correlation in force from the two measurements.

    The tiles' measurement (:func:`pausdenoise.noise_model.measure_noise_correlation`) is
    the more precise on noise and is used unless, on either axis, it exceeds the
    high-frequency one (:func:`pausdenoise.noise_model.measure_noise_correlation_high_frequency`)
    by more than 3σ and by more than ``0.05 + 0.2 |ρ_hf|`` (:data:`CORRELATION_TOLERANCE`):
    then sources correlated over the PSF (a crowded field) dominate it and the
    high-frequency one is used. Both are unbiased on noise alone and raised by sources.

    Parameters
    ----------
    tiles, high : dict or None
        The measurements (``rho_x``, ``rho_y``, ``rho_err``); None when one failed.

    Returns
    -------
    rho_x, rho_y : float
        The correlation in force along x and y (NaN when neither was measured).
    method : str
        ``"tiles"``, ``"high-frequency"`` or ``"none"``.
    """
    if tiles is None and high is None:
        return float("nan"), float("nan"), "none"
    if tiles is None or high is None:
        rho, method = (high, "high-frequency") if tiles is None else (tiles, "tiles")
        return rho["rho_x"], rho["rho_y"], method  # type: ignore[index]
    absolute, relative = CORRELATION_TOLERANCE
    sigma = math.hypot(tiles["rho_err"], high["rho_err"])
    sources = any(tiles[k] - high[k] > max(3.0 * sigma, absolute + relative * abs(high[k]))
                  for k in ("rho_x", "rho_y"))
    rho, method = (high, "high-frequency") if sources else (tiles, "tiles")
    return rho["rho_x"], rho["rho_y"], method


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def correlation_moved(old: Any, new: Any, tolerance: float = 0.005) -> bool:
    """Tell whether a correlation changed: beyond ``tolerance``, or measured on one side only.

    Parameters
    ----------
    old, new : float or None
        The stored and the new lag-1 correlation (dimensionless); None or NaN: not measured.
    tolerance : float
        Largest difference that counts as unchanged.

    Returns
    -------
    bool
        True when exactly one of the two is a finite number, or both are and differ by more
        than ``tolerance``.
    """
    if _finite(old) and _finite(new):
        return abs(float(old) - float(new)) > tolerance
    return _finite(old) != _finite(new)


def noise_correlation_attrs(image: np.ndarray, mask: np.ndarray | None
                            ) -> tuple[dict[str, Any], list[str]]:
    """Measure a frame's lag-1 noise correlation both ways and choose the one in force.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame, ADU.
    mask : ndarray of int or None
        Non-zero marks a pixel not to use.

    Returns
    -------
    attrs : dict
        ``noise_corr_tiles_x/_y``, ``noise_corr_hf_x/_y``, the sky level ``sky_hf_adu``
        [ADU] and its noise variance ``sky_var_hf_adu2``, ``sky_var_hf_err`` [ADU²] from the
        same high frequencies (NaN where not measured),
        ``noise_corr_x/_y`` and ``noise_corr_method`` (:func:`choose_noise_correlation`),
        ``noise_measurement_version`` (:data:`NOISE_MEASUREMENT_VERSION`).
    errors : list of str
        Why the correlation could not be measured at all (empty when one way worked).
    """
    nan = float("nan")
    out: dict[str, Any] = dict.fromkeys(("noise_corr_tiles_x", "noise_corr_tiles_y",
                                         "noise_corr_hf_x", "noise_corr_hf_y", "sky_hf_adu",
                                         "sky_var_hf_adu2", "sky_var_hf_err"), nan)
    errors = []
    tiles = high = None
    try:
        tiles = measure_noise_correlation(image, mask, max_pixels=CORRELATION_MAX_PIXELS)
        out.update(noise_corr_tiles_x=tiles["rho_x"], noise_corr_tiles_y=tiles["rho_y"])
    except NoiseModelError as exc:
        errors.append(f"noise correlation: {exc}")
    try:
        high = measure_noise_correlation_high_frequency(image, mask,
                                                        max_pixels=CORRELATION_MAX_PIXELS)
        out.update(noise_corr_hf_x=high["rho_x"], noise_corr_hf_y=high["rho_y"],
                   sky_hf_adu=high["sky_adu"], sky_var_hf_adu2=high["sky_var_adu2"],
                   sky_var_hf_err=high["sky_var_err_adu2"])
    except NoiseModelError as exc:
        errors.append(f"noise correlation (high frequencies): {exc}")
    rho_x, rho_y, method = choose_noise_correlation(tiles, high)
    out.update(noise_corr_x=rho_x, noise_corr_y=rho_y, noise_corr_method=method,
               noise_measurement_version=NOISE_MEASUREMENT_VERSION)
    return out, ([] if method != "none" else errors)


def _measure(
    image: np.ndarray, mask: np.ndarray, saturate: float | None
) -> tuple[dict[str, Any], list[str]]:
    """Fit the noise model and measure the correlation; failures give NaN and a reason.

    Returns
    -------
    values : dict
        ``gain_fitted``, ``gain_fitted_err``, ``read_noise_fitted_e``, ``sky_fitted_adu``,
        ``sky_var_fitted_adu2``, ``sky_var_fitted_err``, ``noise_corr_x``,
        ``noise_corr_y``, ``noise_corr_tiles_x``, ``noise_corr_tiles_y``,
        ``noise_corr_hf_x``, ``noise_corr_hf_y`` (NaN where not measured) and
        ``noise_corr_method``.
    errors : list of str
        Why a measurement failed.
    """
    out: dict[str, Any] = dict.fromkeys(
        ("gain_fitted", "gain_fitted_err", "read_noise_fitted_e", "sky_fitted_adu",
         "sky_var_fitted_adu2", "sky_var_fitted_err"), float("nan"))
    errors = []
    try:
        m = fit_noise_model(image, mask, saturate=saturate)
        out.update(gain_fitted=m.gain, gain_fitted_err=m.gain_err,
                   read_noise_fitted_e=m.read_noise_e, sky_fitted_adu=m.sky_adu,
                   sky_var_fitted_adu2=m.sky_var_adu2, sky_var_fitted_err=m.sky_var_err_adu2)
    except NoiseModelError as exc:
        errors.append(f"noise model: {exc}")
    corr, corr_errors = noise_correlation_attrs(image, mask)
    out.update(corr)
    errors += corr_errors
    return out, errors


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
        fit failed (saying what is used instead), or when the fitted gain in force is
        poorly constrained (error above 20 %).
    """
    values, errors = _measure(image, mask, attrs.get("saturate"))
    header_gain, header_rn = attrs.get("gain"), attrs.get("rdnoise")
    out: dict[str, Any] = {**values, "gain_header": header_gain, "rdnoise_header": header_rn}
    out.update(_decide(out, None, noise_model))
    source, gain = out["gain_source"], out["gain"]
    if errors:
        out["noise_fit_error"] = "; ".join(errors)
    warnings = []
    needed = noise_model == "fitted" or (noise_model == "auto" and not _finite(header_gain))
    if needed and not _finite(values["gain_fitted"]):
        fallback = ("gain unknown" if gain is None else f"header gain {gain} used"
                    if source == "header" else f"gain {gain:.3g} e-/ADU from the sky's "
                    "variance used (the read noise counted as photon noise where the header "
                    "gives none)")
        warnings.append(f"{name}: noise model not fitted ({out['noise_fit_error']}); "
                        f"{fallback}")
    elif (needed and source == "fitted"
          and values["gain_fitted_err"] > MAX_FIT_ERROR * values["gain_fitted"]):
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
        read noises in e⁻, correlations dimensionless; ``gain_source`` (``"header"``,
        ``"exposures"``, ``"fitted"``, ``"sky"`` or ``"none"``) and ``noise_corr_method``
        (empty for frames stored before they existed).
    """
    import pandas as pd  # pandas kept off this module's import path (read_frame's)

    out = pd.DataFrame({"frame": exposures["frame"], "band": exposures.get("band")})
    for col in NOISE_COLUMNS:
        values = exposures[col] if col in exposures else pd.Series(np.nan, exposures.index)
        if col in ("gain_source", "noise_corr_method"):
            out[col] = values.where(values.notna(), "").astype(str)
        else:
            out[col] = pd.to_numeric(values, errors="coerce").astype("float64")
    return out.reset_index(drop=True)


def _number(v: Any) -> float:
    """Convert a stored attribute to float.

    Returns
    -------
    float
        The value, NaN when it is missing (None) or not a number.
    """
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return x if math.isfinite(x) else float("nan")


def _group_key(row: Any) -> tuple[int, float]:
    """Name the exposures that share one noise model.

    Returns
    -------
    tuple
        CCD number and header gain in e⁻/ADU (−1 when the header has none).
    """
    g = row.get("gain_header")
    return int(row["ccd"]), float(g) if _finite(g) else -1.0


def exposure_noise_models(exposures: Any) -> Any:
    """Fit one noise model per CCD to the sky levels and variances of its exposures.

    Exposures are grouped by CCD number and header gain (frames without a header gain form
    one group per CCD). A group's fit is used only when every exposure's sky variance lies
    within :data:`MAX_DEVIATION` of the fitted line.

    Parameters
    ----------
    exposures : pandas.DataFrame
        The store's exposure table: ``frame``, ``ccd``, ``gain_header`` and the per-frame
        ``sky_fitted_adu`` [ADU], ``sky_var_fitted_adu2``, ``sky_var_fitted_err`` [ADU²],
        ``gain_fitted`` [e⁻/ADU] (frames stored before these existed are left out).

    Returns
    -------
    pandas.DataFrame
        :data:`EXPOSURE_COLUMNS`, one row per group: gains in e⁻/ADU, read noise in e⁻,
        skies in ADU, ``max_deviation`` (largest |sky variance / line − 1| over the group;
        a negative intercept counts as 0),
        ``error`` (why the group has no usable fit; empty when it has one).
    """
    import pandas as pd  # pandas kept off this module's import path (read_frame's)

    need = {"ccd", "sky_fitted_adu", "sky_var_fitted_adu2", "sky_var_fitted_err"}
    if exposures.empty or not need <= set(exposures.columns):
        return pd.DataFrame(columns=list(EXPOSURE_COLUMNS))
    groups: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for row in exposures.to_dict("records"):
        groups.setdefault(_group_key(row), []).append(row)
    rows = []
    for (ccd, header), members in sorted(groups.items()):
        sky, var, err, own = (np.array([_number(m.get(c)) for m in members]) for c in
                              ("sky_fitted_adu", "sky_var_fitted_adu2", "sky_var_fitted_err",
                               "gain_fitted"))
        row = dict.fromkeys(EXPOSURE_COLUMNS, float("nan"))
        row.update(ccd=ccd, gain_header=None if header < 0 else header,
                   n_exposures=int(np.isfinite(var).sum()), error="",
                   gain_fitted_median=float(np.nanmedian(own)) if np.isfinite(own).any()
                   else float("nan"))
        ok = np.isfinite(sky) & np.isfinite(var)
        if ok.any():
            row.update(sky_min_adu=float(sky[ok].min()), sky_max_adu=float(sky[ok].max()))
        try:
            m = fit_gain_across_exposures(sky, var, err)
        except NoiseModelError as exc:
            row["error"] = str(exc)
            rows.append(row)
            continue
        rn2 = m.read_noise_adu**2 if math.isfinite(m.read_noise_adu) else 0.0
        dev = np.abs(var[ok] / (rn2 + sky[ok] / m.gain) - 1.0)
        row.update(gain=m.gain, gain_err=m.gain_err, read_noise_e=m.read_noise_e,
                   read_noise_e_err=m.read_noise_e_err, max_deviation=float(dev.max()))
        if not dev.max() <= MAX_DEVIATION:
            row["error"] = (f"an exposure's sky variance lies {dev.max():.0%} off the fitted "
                            f"line (more than {MAX_DEVIATION:.0%}): the exposures do not "
                            "share one noise model")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(EXPOSURE_COLUMNS))


def sky_gains(row: Any) -> tuple[float, float]:
    """Return the gains a frame's sky variance gives (``noise_model.gain_from_sky``).

    Two measurements of the sky's noise variance are stored: in the small tiles at the sky
    level (``sky_fitted_adu``, ``sky_var_fitted_adu2``) and at the highest spatial
    frequencies (``sky_hf_adu``, ``sky_var_hf_adu2``). Sources only ever add to either (on
    a crowded field the unresolved stars to the tiles', what is left of their power above
    0.45 cycles/px to the other), so each gives a gain at most the true one: the larger is
    used when the two differ by more than 3σ, else their inverse-variance weighted mean.

    Parameters
    ----------
    row : mapping
        A frame's attributes: the four above [ADU, ADU²], their errors
        ``sky_var_fitted_err`` and ``sky_var_hf_err`` [ADU²], and ``rdnoise_header`` [e⁻].

    Returns
    -------
    gain_sky_min : float
        The least gain the sky allows (read noise 0), e⁻/ADU.
    gain_sky : float
        The gain with the header's read noise (the same without one), e⁻/ADU. NaN for
        either when neither measurement is there.
    """
    rn = _number(row.get("rdnoise_header"))
    measured = [(_number(row.get(f"sky_{m}_adu")), _number(row.get(f"sky_var_{m}_adu2")),
                 _number(row.get(f"sky_var_{m}_err"))) for m in ("fitted", "hf")]
    return tuple(_combine([(gain_from_sky(s, v, r), e / v if v > 0 else float("nan"))
                           for s, v, e in measured])
                 for r in (0.0, rn if _finite(rn) else 0.0))  # type: ignore[return-value]


def _combine(gains: list[tuple[float, float]]) -> float:
    """Combine gains that are each at most the truth, with their relative errors.

    Returns
    -------
    float
        The larger when two differ by more than 3σ (or an error is unknown), else their
        inverse-variance weighted mean; the one finite gain; NaN when there is none.
    """
    ok = [(g, rel * g) for g, rel in gains if _finite(g)]
    if len(ok) < 2:
        return ok[0][0] if ok else float("nan")
    (g1, e1), (g2, e2) = ok
    if not (_finite(e1) and _finite(e2) and e1 > 0 and e2 > 0) or \
            abs(g1 - g2) > 3.0 * math.hypot(e1, e2):
        return max(g1, g2)
    w1, w2 = 1.0 / e1**2, 1.0 / e2**2
    return (w1 * g1 + w2 * g2) / (w1 + w2)


def exposure_gain_updates(exposures: Any, models: Any, noise_model: str
                          ) -> dict[str, dict[str, Any]]:
    """Decide each frame's gain and read noise once the fit across exposures is known.

    The gain in force comes, in order of preference (:data:`_PREFERENCE`), from:
    ``"header"`` mode: the header; ``"auto"``: the header, else the fit across exposures,
    else the frame's own fit, else its sky's variance; ``"fitted"``: the fit across
    exposures, else the frame's own fit, else its sky's variance, else the header
    (``gain_source`` ``"none"`` and no gain when none has one). The frame's own fit counts
    only when its sky's variance allows it (:func:`gain_below_sky_bound`: with the header's
    read noise the sharper bound) and, when the header gives the read noise, when its error
    is at most :data:`MAX_FIT_ERROR`; the sky's
    gain is :func:`sky_gains`' ``gain_sky``, with the header's read noise, else a read noise
    of 0 (so that the model gives the sky's measured variance). The read noise otherwise
    comes from the gain's source when it has one, else from the first of the same order
    that has one (a header with GAIN but no RDNOISE: the fit across exposures', else the
    frame's own). The decision is made from the stored header and measured values alone,
    so it gives the same result however often it is repeated.

    Parameters
    ----------
    exposures : pandas.DataFrame
        The store's exposure table (as for :func:`exposure_noise_models`, with ``gain``,
        ``rdnoise``, ``gain_source``, ``rdnoise_header``, ``read_noise_fitted_e``,
        ``gain_fitted_err`` and the sky measurements of :func:`sky_gains`).
    models : pandas.DataFrame
        :func:`exposure_noise_models` of the same table.
    noise_model : {"auto", "header", "fitted"}
        ``ingest.noise_model``.

    Returns
    -------
    dict
        Frame → the attributes to change (``gain_exposures``, ``gain_exposures_err``,
        ``read_noise_exposures_e``, ``gain_sky_min``, ``gain_sky``, and ``gain``,
        ``rdnoise``, ``gain_source`` where they change); frames with nothing to change, or
        stored before the noise model was measured (no ``gain_source``), are absent.
    """
    usable = {_group_key(m): m for m in models.to_dict("records")
              if not m["error"] and _finite(m["gain"])}
    out: dict[str, dict[str, Any]] = {}
    for row in exposures.to_dict("records"):
        if "ccd" not in row or not isinstance(row.get("gain_source"), str):
            continue  # a frame stored before the noise model was measured: left as it is
        m = usable.get(_group_key(row))
        nan = float("nan")
        new = {"gain_exposures": m["gain"] if m else nan,
               "gain_exposures_err": m["gain_err"] if m else nan,
               "read_noise_exposures_e": m["read_noise_e"] if m else nan,
               **_decide(row, m, noise_model)}
        changed = {k: v for k, v in new.items() if not _same(row.get(k), v)}
        if changed:
            out[str(row["frame"])] = changed
    return out


def _decide(row: dict[str, Any], model: dict[str, Any] | None, noise_model: str
            ) -> dict[str, Any]:
    """Choose a frame's gain and read noise (see :func:`exposure_gain_updates`).

    Parameters
    ----------
    row : dict
        The frame's attributes (header, own fit and sky measurements).
    model : dict or None
        The usable fit across its CCD's exposures (a row of :func:`exposure_noise_models`).
    noise_model : {"auto", "header", "fitted"}
        ``ingest.noise_model``.

    Returns
    -------
    dict
        ``gain_sky_min``, ``gain_sky``, ``gain`` (None when unknown), ``rdnoise`` (None
        when unknown) and ``gain_source``.
    """
    least, sky = sky_gains(row)
    rn_header = _number(row.get("rdnoise_header"))
    own, own_err = _number(row.get("gain_fitted")), _number(row.get("gain_fitted_err"))
    own_ok = not gain_below_sky_bound({**row, "gain_sky_min": least, "gain_sky": sky}) and not (
        _finite(rn_header) and _finite(sky) and not own_err <= MAX_FIT_ERROR * own)
    gains = {"header": row.get("gain_header"), "exposures": model["gain"] if model else None,
             "fitted": own if own_ok else None, "sky": sky}
    noises = {"header": row.get("rdnoise_header"),
              "exposures": model["read_noise_e"] if model else None,
              "fitted": row.get("read_noise_fitted_e")}
    order = _PREFERENCE[noise_model]
    source = next((k for k in order if _finite(_number(gains[k]))), "none")
    if source == "sky":
        noises["sky"] = rn_header if _finite(rn_header) else 0.0
    rn = next((_number(noises[k]) for k in (source, *order)
               if k in noises and _finite(_number(noises[k]))), None)
    return {"gain_sky_min": least, "gain_sky": sky,
            "gain": _number(gains[source]) if source != "none" else None,
            "rdnoise": rn, "gain_source": source}


def _same(a: Any, b: Any) -> bool:
    """Compare two attribute values.

    Returns
    -------
    bool
        True when equal, NaN and None counting as equal to each other.
    """
    missing_a = a is None or (isinstance(a, float) and math.isnan(a))
    missing_b = b is None or (isinstance(b, float) and math.isnan(b))
    if missing_a or missing_b:
        return missing_a and missing_b
    return a == b


def gain_below_sky_bound(row: Any) -> bool:
    """Tell whether a frame's own fitted gain is below what its sky's variance allows.

    For a bias-subtracted frame the sky's variance is at least its photon and read noise,
    ``var_sky ≥ (rn/gain)² + S_sky / gain``, so the gain is at least ``gain_sky_min`` (read
    noise 0) and, with the header's read noise, ``gain_sky`` (:func:`sky_gains`; the larger
    of the two is the bound). A fitted gain more than 3σ below it cannot be right: its slope
    rests on tiles whose variance grows with the signal for another reason than photon
    noise (unresolved sources of a crowded field).

    Parameters
    ----------
    row : mapping
        A frame's attributes: ``gain_fitted``, ``gain_fitted_err`` and ``gain_sky_min``
        (and ``gain_sky`` where stored) [e⁻/ADU].

    Returns
    -------
    bool
        False when the fitted gain, its error or both bounds are missing.
    """
    gain, err = _number(row.get("gain_fitted")), _number(row.get("gain_fitted_err"))
    bound = max((b for b in (_number(row.get("gain_sky_min")), _number(row.get("gain_sky")))
                 if _finite(b)), default=float("nan"))
    return bool(gain + 3.0 * max(err, 0.0) < bound)
