"""Cross-exposure comparison of forced photometry: calibration, pairs, Δf, σ68, error model.

The test of a flux and its error used by the PAUS analyses (``/work/shared/DOMAIN.md``): the
same source (``ref_id``) in the same band measured in two *different* exposures has, after
zero-point calibration, the same expected flux, so

    Δf = (f₁ − f₂) / sqrt(σ₁² + σ₂²)

is ~N(0, 1) when the errors are right. Its robust width is σ68 = (p84 − p16)/2. Raw fluxes
with raw errors should give σ68 ≈ 1; denoised fluxes with the raw errors give σ68 < 1
(≈ 0.5–0.7 in earlier PAUS work): the raw errors overstate the denoised uncertainty.

Tables
------
``table`` (long): the photometry output (``pausdenoise.photometry.OUTPUT_COLUMNS``), one
row per (ref_id, expnum, ccd, kind). :func:`widen` puts the two kinds side by side (calibrated
flux ``f_raw``/``f_den`` and error ``e_raw``/``e_den``) and :func:`make_pairs` joins a wide
table with itself on (ref_id, band), keeping ``expnum_1 < expnum_2``: every unordered pair of
different exposures exactly once. Both accept pandas or dask DataFrames (the join is then
distributed). The summary functions return small pandas tables; :func:`df_arrays` returns
the Δf values per kind for the report's histograms.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise.photometry import calibrate_flux

__all__ = [
    "DEFAULT_BINS",
    "ErrorModel",
    "calibrate",
    "delta_f",
    "df_arrays",
    "fit_error_model",
    "flux_ratio",
    "make_pairs",
    "sigma68",
    "sigma68_stderr",
    "split_exposures",
    "summarise",
    "truth_comparison",
    "validate_error_model",
    "widen",
]

#: Default I_auto bin edges: 1-mag bins 17–18, …, 22–23.
DEFAULT_BINS: np.ndarray = np.arange(17.0, 24.0, 1.0)

_KIND_SUFFIX = {"raw": "raw", "denoised": "den"}


def _is_dask(df: Any) -> bool:
    return hasattr(df, "dask") and hasattr(df, "compute")


def _compute(obj: Any) -> Any:
    return obj.compute() if _is_dask(obj) else obj


# --------------------------------------------------------------------------------------
# Calibration and the wide table
# --------------------------------------------------------------------------------------


def calibrate(table: pd.DataFrame, exposures: pd.DataFrame | None = None) -> pd.DataFrame:
    """Recompute ``flux_cal``/``flux_cal_err`` from ``flux``, ``flux_err``, ``zp``, ``zp_err``.

    ``f_cal = f·ZP``, ``σ_cal = sqrt(σ²σZP² + σ²ZP² + f²σZP²)``. When ``exposures`` (columns
    ``expnum``, optionally ``ccd``, and ``zp``, ``zp_err``) is given, its zero-points replace
    the table's (e.g. after a re-calibration of the exposures).
    """
    out = table.copy()
    if exposures is not None:
        keys = ["expnum", "ccd"] if "ccd" in exposures.columns else ["expnum"]
        zp = exposures[[*keys, "zp", "zp_err"]]
        out = out.drop(columns=["zp", "zp_err"], errors="ignore").merge(zp, on=keys, how="left")
    f, s = calibrate_flux(out["flux"], out["flux_err"], out["zp"], out["zp_err"])
    out["flux_cal"] = f
    out["flux_cal_err"] = s
    return out


def widen(table: Any, *, exclude_flags: bool = True, kinds: Sequence[str] | None = None) -> Any:
    """One row per (ref_id, expnum, ccd, band) with ``I_auto`` and, per kind present,
    calibrated ``f_<k>`` and ``e_<k>`` (k = ``raw`` or ``den``).

    With ``exclude_flags`` a measurement is kept only when its ``flags == 0`` in every kind
    (an inner join after dropping flagged rows), so both kinds are compared on the same set.
    ``kinds`` defaults to the kinds present (pandas) or both (dask, where looking would
    mean computing: pass ``kinds=["raw"]`` for a raw-only dask table).
    Works on pandas and dask DataFrames.
    """
    keys = ["ref_id", "expnum", "ccd", "band"]
    if exclude_flags:
        table = table[table["flags"] == 0]
    if kinds is None:
        kinds = (
            ["raw", "denoised"]
            if _is_dask(table)
            else [k for k in ("raw", "denoised") if (table["kind"] == k).any()]
        )
    wide = None
    for kind in kinds:
        suf = _KIND_SUFFIX[kind]
        part = table[table["kind"] == kind][[*keys, "I_auto", "flux_cal", "flux_cal_err"]]
        part = part.rename(columns={"flux_cal": f"f_{suf}", "flux_cal_err": f"e_{suf}"})
        if wide is None:
            wide = part
        else:
            wide = wide.merge(part.drop(columns=["I_auto"]), on=keys, how="inner")
    if wide is None:
        raise ValueError("table has no 'raw' or 'denoised' rows")
    return wide


def make_pairs(
    table: Any, *, exclude_flags: bool = True, kinds: Sequence[str] | None = None
) -> Any:
    """All pairs of measurements of the same ``ref_id`` and ``band`` in two different
    exposures, each unordered pair once (``expnum_1 < expnum_2``).

    ``table`` is the long photometry table (with ``kind``) or an already wide one (from
    :func:`widen`). The result has ``ref_id``, ``band``, ``I_auto`` and, for sides 1 and 2,
    ``expnum``, ``ccd`` and the ``f_*``/``e_*`` columns with suffixes ``_1``/``_2``. For
    ``n`` exposures of a source there are n(n−1)/2 pairs. Works on dask DataFrames (a
    distributed self-join on (ref_id, band)).
    """
    if "kind" in table.columns:
        wide = widen(table, exclude_flags=exclude_flags, kinds=kinds)
    else:
        wide = table
    left = wide
    right = wide.drop(columns=["I_auto"])
    pairs = left.merge(right, on=["ref_id", "band"], suffixes=("_1", "_2"), how="inner")
    pairs = pairs[pairs["expnum_1"] < pairs["expnum_2"]]
    return pairs if _is_dask(pairs) else pairs.reset_index(drop=True)


def delta_f(
    pairs: pd.DataFrame,
    kind: str = "raw",
    errors: str | None = None,
    scale: np.ndarray | float | None = None,
) -> np.ndarray:
    """Δf = (f₁ − f₂) / sqrt(σ₁² + σ₂²) of calibrated fluxes.

    ``kind`` chooses the fluxes (``raw``/``denoised``), ``errors`` the errors (default: the
    same kind). ``scale`` multiplies both errors (an error model: σ = s·σ_errors).
    """
    fk = _KIND_SUFFIX.get(kind, kind)
    ek = _KIND_SUFFIX.get(errors, errors) if errors is not None else fk
    f1, f2 = pairs[f"f_{fk}_1"].to_numpy(float), pairs[f"f_{fk}_2"].to_numpy(float)
    e1, e2 = pairs[f"e_{ek}_1"].to_numpy(float), pairs[f"e_{ek}_2"].to_numpy(float)
    den = np.sqrt(e1 * e1 + e2 * e2)
    if scale is not None:
        den = den * np.asarray(scale, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (f1 - f2) / den


def sigma68(values: Iterable[float] | np.ndarray) -> float:
    """(p84 − p16)/2 of the finite values (NaN when there are none); 1 for N(0, 1)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    p16, p84 = np.percentile(v, [15.865525393145708, 84.13447460685429])
    return float(0.5 * (p84 - p16))


def sigma68_stderr(n: int | np.ndarray) -> np.ndarray | float:
    """Approximate standard error of σ68 from ``n`` Gaussian values: ≈ 0.96/√n.

    From the asymptotic variances of the 15.9 % and 84.1 % sample quantiles,
    var(q) = p(1−p)/(n φ²), and their covariance p₁(1−p₂)/(n φ₁φ₂).
    """
    p = 0.15865525393145708
    phi = np.exp(-0.5) / np.sqrt(2 * np.pi)
    var_q = p * (1 - p) / phi**2
    cov = p * p / phi**2
    c = np.sqrt((2 * var_q - 2 * cov) / 4.0)
    with np.errstate(divide="ignore"):
        return c / np.sqrt(np.asarray(n, dtype=float))


def _bin_labels(bins: Sequence[float]) -> list[str]:
    return [f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(bins)]


def _bin_index(mag: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Bin index of each magnitude (−1 outside the edges); bins are [lo, hi)."""
    idx = np.searchsorted(bins, mag, side="right") - 1
    idx[(idx < 0) | (idx >= len(bins) - 1) | ~np.isfinite(mag)] = -1
    return idx


def _measurements_from_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The distinct measurements (ref_id, expnum, ccd) contained in a pair table."""
    cols = [c[:-2] for c in pairs.columns if c.endswith("_1")]
    sides = []
    for s in ("_1", "_2"):
        d = pairs[["ref_id", "band", "I_auto", *[c + s for c in cols]]]
        sides.append(d.rename(columns={c + s: c for c in cols}))
    m = pd.concat(sides, ignore_index=True)
    return m.drop_duplicates(subset=["ref_id", "band", "expnum", "ccd"]).reset_index(drop=True)


def flux_ratio(wide: pd.DataFrame) -> np.ndarray:
    """Per-measurement denoised/raw calibrated flux ratio (bias indicator)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return wide["f_den"].to_numpy(float) / wide["f_raw"].to_numpy(float)


# --------------------------------------------------------------------------------------
# Error model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorModel:
    """Denoised-flux error model σ_den = s(I_auto) · σ_raw, piecewise constant in I_auto.

    Why this model. A denoiser that averages over neighbouring pixels lowers the noise in
    an aperture by a factor that depends on the aperture size and on how much structure
    (source light) the network preserves; both vary smoothly with source brightness, and
    within a 1-mag bin the apertures and sky are alike. So the raw error — which already
    knows the sky level, aperture area and source Poisson term of each measurement — times
    one factor per magnitude bin is the simplest model that can be right, with a single
    free number per bin and no assumption on how the denoiser works. The factor is fitted
    as s = σ68(Δf_den computed with raw errors) on pairs whose *both* exposures are in a fit
    set, which makes σ68 = 1 on those pairs by construction (Δf scales as 1/s); it is then
    checked on pairs whose exposures are *both* held out. Bins with fewer than
    ``min_pairs`` fit pairs take the factor of the nearest fitted bin (the factor varies
    with brightness, and the bright bins are the sparse ones: the global factor, dominated
    by the many faint pairs, would be wrong there); magnitudes outside the bins use the
    nearest end bin's factor, and the global factor is used only when no bin was fitted.

    Limits (honest): Δf compares two exposures, so it measures exposure-to-exposure
    scatter only. A flux bias common to all exposures of a source (e.g. the denoiser
    eating the faint wings) cancels in Δf and is *not* in this error; it shows in the
    denoised/raw ratio and, for simulations, in :func:`truth_comparison`.
    """

    bins: np.ndarray
    scale: np.ndarray
    n_pairs: np.ndarray
    global_scale: float
    fit_exposures: tuple[int, ...]

    def filled_scale(self) -> np.ndarray:
        """Per-bin factors with unfitted bins given the nearest fitted bin's factor."""
        fitted = np.flatnonzero(np.isfinite(self.scale))
        if fitted.size == 0:
            return np.full(self.scale.shape, self.global_scale)
        nearest = fitted[np.abs(np.arange(self.scale.size)[:, None] - fitted).argmin(axis=1)]
        return self.scale[nearest]

    def scale_for(self, mag: np.ndarray | float) -> np.ndarray:
        """Error scale s for each I_auto magnitude (see the class docstring for gaps)."""
        m = np.atleast_1d(np.asarray(mag, dtype=float))
        filled = self.filled_scale()
        idx = np.clip(np.searchsorted(self.bins, m, side="right") - 1, 0, filled.size - 1)
        s = filled[idx]
        s[~np.isfinite(m)] = self.global_scale
        return s

    def apply(self, wide: pd.DataFrame) -> pd.DataFrame:
        """Add ``e_den_cal = s(I_auto)·e_raw`` to a wide or pair table (columns with the
        ``_1``/``_2`` suffixes are handled)."""
        out = wide.copy()
        s = self.scale_for(out["I_auto"].to_numpy(float))
        for suffix in ("", "_1", "_2"):
            if f"e_raw{suffix}" in out.columns:
                out[f"e_den_cal{suffix}"] = s * out[f"e_raw{suffix}"].to_numpy(float)
        return out

    def to_frame(self) -> pd.DataFrame:
        """The fitted factors per bin."""
        return pd.DataFrame(
            {
                "bin": _bin_labels(self.bins),
                "mag_lo": self.bins[:-1],
                "mag_hi": self.bins[1:],
                "n_fit_pairs": self.n_pairs,
                "scale": self.scale,
            }
        )


def split_exposures(
    expnums: Iterable[int], fraction: float = 0.5, seed: int = 0
) -> tuple[int, ...]:
    """A random subset (``fraction``) of the distinct exposures, for fitting."""
    e = np.unique(np.asarray(list(expnums), dtype=np.int64))
    rng = np.random.default_rng(seed)
    k = max(1, round(fraction * e.size))
    return tuple(int(v) for v in np.sort(rng.choice(e, size=k, replace=False)))


def _pairs_in(pairs: pd.DataFrame, exposures: Iterable[int], both: bool) -> pd.DataFrame:
    s = np.asarray(sorted(set(int(v) for v in exposures)), dtype=np.int64)
    in1 = np.isin(pairs["expnum_1"].to_numpy(), s)
    in2 = np.isin(pairs["expnum_2"].to_numpy(), s)
    return pairs[in1 & in2] if both else pairs[~in1 & ~in2]


def fit_error_model(
    pairs: pd.DataFrame,
    fit_exposures: Iterable[int],
    bins: Sequence[float] = DEFAULT_BINS,
    min_pairs: int = 50,
) -> ErrorModel:
    """Fit s per I_auto bin on pairs whose two exposures are both in ``fit_exposures``."""
    pairs = _compute(pairs)
    bins = np.asarray(bins, dtype=float)
    fit_exposures = tuple(sorted(set(int(v) for v in fit_exposures)))
    fit = _pairs_in(pairs, fit_exposures, both=True)
    if len(fit) == 0:
        raise ValueError("no pair has both exposures in fit_exposures")
    d = delta_f(fit, "denoised", errors="raw")
    idx = _bin_index(fit["I_auto"].to_numpy(float), bins)
    nb = len(bins) - 1
    scale = np.full(nb, np.nan)
    n = np.zeros(nb, dtype=np.int64)
    for i in range(nb):
        di = d[(idx == i) & np.isfinite(d)]
        n[i] = di.size
        if di.size >= min_pairs:
            scale[i] = sigma68(di)
    glob = sigma68(d)
    if not np.isfinite(glob) or glob <= 0:
        raise ValueError("could not fit a global error scale (no finite Δf)")
    return ErrorModel(
        bins=bins, scale=scale, n_pairs=n, global_scale=glob, fit_exposures=fit_exposures
    )


def validate_error_model(
    pairs: pd.DataFrame,
    model: ErrorModel,
    bins: Sequence[float] | None = None,
    *,
    min_pairs: int = 400,
    tolerance: float = 0.05,
) -> pd.DataFrame:
    """σ68 of denoised Δf with the model's errors on held-out pairs (neither exposure in
    the fit set), overall and per bin, with ``passed = |σ68 − 1| <= tolerance`` for rows
    with at least ``min_pairs`` pairs (``passed`` is NA otherwise). ``sigma68_stderr`` is
    the Gaussian standard error of the estimate (≈0.96/√n): with 400 pairs ≈ 0.048.
    """
    pairs = _compute(pairs)
    bins = np.asarray(model.bins if bins is None else bins, dtype=float)
    held = _pairs_in(pairs, model.fit_exposures, both=False)
    s = model.scale_for(held["I_auto"].to_numpy(float))
    d_cal = delta_f(held, "denoised", errors="raw", scale=s)
    d_raw = delta_f(held, "raw")
    idx = _bin_index(held["I_auto"].to_numpy(float), bins)
    rows = []
    groups = [("all", np.nan, np.nan, np.ones(len(held), bool))]
    groups += [
        (lab, lo, hi, idx == i)
        for i, (lab, lo, hi) in enumerate(zip(_bin_labels(bins), bins[:-1], bins[1:], strict=True))
    ]
    for lab, lo, hi, sel in groups:
        dc = d_cal[sel & np.isfinite(d_cal)]
        s68 = sigma68(dc)
        npairs = int(dc.size)
        enough = npairs >= min_pairs
        rows.append(
            {
                "bin": lab,
                "mag_lo": lo,
                "mag_hi": hi,
                "n_pairs": npairs,
                "sigma68_den_model": s68,
                "sigma68_stderr": float(sigma68_stderr(npairs)) if npairs else np.nan,
                "sigma68_raw": sigma68(d_raw[sel]),
                "passed": (abs(s68 - 1.0) <= tolerance) if enough else pd.NA,
            }
        )
    out = pd.DataFrame(rows)
    out["passed"] = out["passed"].astype("boolean")
    return out


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------


def summarise(
    pairs: Any,
    bins: Sequence[float] = DEFAULT_BINS,
    model: ErrorModel | None = None,
    measurements: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """σ68 of Δf overall ("all") and per I_auto bin.

    Columns: ``bin``, ``mag_lo``, ``mag_hi``, ``n_pairs``, ``sigma68_raw`` (raw fluxes, raw
    errors), ``sigma68_den_rawerr`` (denoised fluxes, raw errors), ``sigma68_den_model``
    (denoised fluxes, model errors; only with ``model``), ``n_meas`` and
    ``median_ratio_den_raw`` (median of per-measurement denoised/raw calibrated flux over
    the distinct measurements — ``measurements`` (a wide table) when given, else those in
    the pairs). Denoised columns are NaN when the table has only raw fluxes.
    """
    pairs = _compute(pairs)
    bins = np.asarray(bins, dtype=float)
    has_den = "f_den_1" in pairs.columns
    mag = pairs["I_auto"].to_numpy(float)
    idx = _bin_index(mag, bins)
    d_raw = delta_f(pairs, "raw")
    nanv = np.full(len(pairs), np.nan)
    d_den = delta_f(pairs, "denoised", errors="raw") if has_den else nanv
    d_mod = (
        delta_f(pairs, "denoised", errors="raw", scale=model.scale_for(mag))
        if (has_den and model is not None)
        else nanv
    )
    meas = _compute(measurements) if measurements is not None else (_measurements_from_pairs(pairs))
    m_idx = _bin_index(meas["I_auto"].to_numpy(float), bins)
    ratio = flux_ratio(meas) if "f_den" in meas.columns else np.full(len(meas), np.nan)

    groups = [("all", np.nan, np.nan, np.ones(len(pairs), bool), np.ones(len(meas), bool))]
    groups += [
        (lab, lo, hi, idx == i, m_idx == i)
        for i, (lab, lo, hi) in enumerate(zip(_bin_labels(bins), bins[:-1], bins[1:], strict=True))
    ]
    rows = []
    for lab, lo, hi, sel, msel in groups:
        r = ratio[msel]
        r = r[np.isfinite(r)]
        row = {
            "bin": lab,
            "mag_lo": lo,
            "mag_hi": hi,
            "n_pairs": int(sel.sum()),
            "sigma68_raw": sigma68(d_raw[sel]),
            "sigma68_den_rawerr": sigma68(d_den[sel]),
            "n_meas": int(msel.sum()),
            "median_ratio_den_raw": float(np.median(r)) if r.size else np.nan,
        }
        if model is not None:
            row["sigma68_den_model"] = sigma68(d_mod[sel])
        rows.append(row)
    return pd.DataFrame(rows)


def df_arrays(pairs: Any, model: ErrorModel | None = None) -> dict[str, np.ndarray]:
    """Δf values for the report's histograms: ``raw``, ``denoised_rawerr`` and, with a
    model, ``denoised_model`` (finite values only)."""
    pairs = _compute(pairs)
    out = {"raw": delta_f(pairs, "raw")}
    if "f_den_1" in pairs.columns:
        out["denoised_rawerr"] = delta_f(pairs, "denoised", errors="raw")
        if model is not None:
            s = model.scale_for(pairs["I_auto"].to_numpy(float))
            out["denoised_model"] = delta_f(pairs, "denoised", errors="raw", scale=s)
    return {k: v[np.isfinite(v)] for k, v in out.items()}


def truth_comparison(
    table: Any,
    truth: pd.DataFrame,
    bins: Sequence[float] = DEFAULT_BINS,
    *,
    exclude_flags: bool = True,
) -> pd.DataFrame:
    """Flux accuracy against the simulation's truth, per kind, overall and per I_auto bin.

    ``truth`` has ``ref_id``, ``expnum``, ``band``, ``flux_true_cal`` (calibrated units).
    Columns: ``kind``, ``bin``, ``n``, ``bias_median`` = median((f − f_true)/f_true),
    ``scatter_sigma68`` = σ68((f − f_true)/f_true), ``pull_sigma68`` = σ68((f − f_true)/σ)
    (with the measurement's own error; ≈1 when errors are right).
    """
    table = _compute(table)
    bins = np.asarray(bins, dtype=float)
    for c in ("ref_id", "expnum", "band", "flux_true_cal"):
        if c not in truth.columns:
            raise KeyError(f"truth table is missing column {c!r}")
    if exclude_flags:
        table = table[table["flags"] == 0]
    m = table.merge(
        truth[["ref_id", "expnum", "band", "flux_true_cal"]],
        on=["ref_id", "expnum", "band"],
        how="inner",
    )
    rows = []
    for kind, g in m.groupby("kind", sort=True):
        f = g["flux_cal"].to_numpy(float)
        ft = g["flux_true_cal"].to_numpy(float)
        e = g["flux_cal_err"].to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (f - ft) / ft
            pull = (f - ft) / e
        idx = _bin_index(g["I_auto"].to_numpy(float), bins)
        groups = [("all", np.nan, np.nan, np.ones(len(g), bool))]
        groups += [
            (lab, lo, hi, idx == i)
            for i, (lab, lo, hi) in enumerate(
                zip(_bin_labels(bins), bins[:-1], bins[1:], strict=True)
            )
        ]
        for lab, lo, hi, sel in groups:
            r = rel[sel]
            r = r[np.isfinite(r)]
            rows.append(
                {
                    "kind": kind,
                    "bin": lab,
                    "mag_lo": lo,
                    "mag_hi": hi,
                    "n": int(sel.sum()),
                    "bias_median": float(np.median(r)) if r.size else np.nan,
                    "scatter_sigma68": sigma68(r),
                    "pull_sigma68": sigma68(pull[sel]),
                }
            )
    return pd.DataFrame(rows)
