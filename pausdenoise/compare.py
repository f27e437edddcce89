"""Cross-exposure comparison of forced photometry: calibration, pairs, Δf, σ68, error model.

The test of a flux and its error used by the PAUS analyses: the same source (``ref_id``)
in the same band measured in two *different* exposures has, after zero-point calibration,
the same expected flux, so

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from pausdenoise.photometry.calibration import calibrate_flux, without_zero_point_error
from pausdenoise.stats import bin_index, sigma68, sigma68_stderr

__all__ = [
    "COMPARE_MODEL",
    "DEFAULT_BINS",
    "HASH_COLUMN",
    "PAIR_KEY",
    "ErrorModel",
    "bottom_k_pairs",
    "calibrate",
    "canonical_pairs",
    "concat_pairs",
    "cross_validate_error_model",
    "delta_f",
    "df_arrays",
    "exposure_folds",
    "fit_error_model",
    "flux_ratio",
    "make_pairs",
    "pair_deltas",
    "pair_hash",
    "pairs_per_bin",
    "repeatability_floor",
    "sigma68",
    "sigma68_stderr",
    "split_exposures",
    "summarise",
    "truth_comparison",
    "validate_error_model",
    "widen",
    "zero_point_errors",
]

#: The version of what the compare stage computes from the same photometry and settings
#: (part of its fingerprint, so a rerun after it changes computes the comparison again):
#: "zp-errors-replaced" = the relative zero-points' errors replace the header zero-points'
#: in the flux errors, the aperture corrections carry the zero-point's error for the
#: corrected flux, and the truth comparison judges the photometry with the exact
#: zero-points; "repeatability-floor" = each band's raw repeatability floor is measured;
#: "zero-point-check" = calibrated header zero-points are judged by the shared sources.
COMPARE_MODEL = "zp-errors-replaced;repeatability-floor;zero-point-check"

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

    Parameters
    ----------
    table : pandas.DataFrame
        Long photometry table with ``flux``, ``flux_err`` (ADU) and, unless ``exposures`` is
        given, ``zp``, ``zp_err`` (calibrated units per ADU).
    exposures : pandas.DataFrame, optional
        Zero-points per ``expnum`` (and ``ccd`` when it has that column) replacing the
        table's.

    Returns
    -------
    pandas.DataFrame
        A copy of ``table`` with ``flux_cal`` and ``flux_cal_err`` (calibrated units).
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
    """Put the kinds side by side: one row per (ref_id, expnum, ccd, band).

    The result has ``I_auto`` (AB magnitude) and, per kind present, calibrated ``f_<k>`` and
    ``e_<k>`` (k = ``raw`` or ``den``). With ``exclude_flags`` a measurement is kept only when
    its ``flags == 0`` in every kind (an inner join after dropping flagged rows), so both kinds
    are compared on the same set. Works on pandas and dask DataFrames.

    Parameters
    ----------
    table : pandas.DataFrame or dask.dataframe.DataFrame
        The long photometry table (with ``kind``, ``flags``, ``flux_cal``, ``flux_cal_err``).
    exclude_flags : bool, optional
        Drop flagged measurements first. Default True.
    kinds : sequence of str, optional
        The kinds to put side by side (``"raw"``, ``"denoised"``). Defaults to the kinds
        present (pandas) or both (dask, where looking would mean computing: pass
        ``kinds=["raw"]`` for a raw-only dask table).

    Returns
    -------
    pandas.DataFrame or dask.dataframe.DataFrame
        The wide table, of the same library as ``table``.

    Raises
    ------
    ValueError
        If ``kinds`` is empty (the table has no ``raw`` or ``denoised`` rows).
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
    """Pair the measurements of the same ``ref_id`` and ``band`` in two different exposures.

    Each unordered pair appears once (``expnum_1 < expnum_2``): for ``n`` exposures of a
    source there are n(n−1)/2 pairs. Works on dask DataFrames (a distributed self-join on
    (ref_id, band)).

    Parameters
    ----------
    table : pandas.DataFrame or dask.dataframe.DataFrame
        The long photometry table (with ``kind``) or an already wide one (from :func:`widen`).
    exclude_flags : bool, optional
        Passed to :func:`widen` for a long table. Default True.
    kinds : sequence of str, optional
        Passed to :func:`widen` for a long table.

    Returns
    -------
    pandas.DataFrame or dask.dataframe.DataFrame
        ``ref_id``, ``band``, ``I_auto`` and, for sides 1 and 2, ``expnum``, ``ccd`` and the
        ``f_*``/``e_*`` columns with suffixes ``_1``/``_2`` (a pandas result has a fresh
        index).
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
    """Compute Δf = (f₁ − f₂) / sqrt(σ₁² + σ₂²) of calibrated fluxes.

    Parameters
    ----------
    pairs : pandas.DataFrame
        A pair table from :func:`make_pairs`.
    kind : str, optional
        The fluxes: ``"raw"`` or ``"denoised"`` (or a column suffix, ``"den"``). Default raw.
    errors : str, optional
        The errors, same spelling as ``kind``; default the same kind as the fluxes.
    scale : float or ndarray, optional
        Multiplies both errors (an error model: σ = s·σ_errors), one per pair or one for all.

    Returns
    -------
    ndarray of float
        Δf per pair (dimensionless; inf/NaN where the errors are 0 or missing).
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


def _has_den(pairs: pd.DataFrame) -> bool:
    return "f_den_1" in pairs.columns or "d_den" in pairs.columns


def _d_raw(pairs: pd.DataFrame) -> np.ndarray:
    """Return Δf of raw fluxes with raw errors (the ``d_raw`` column of a compact table).

    Returns
    -------
    ndarray of float
        One value per pair.
    """
    if "d_raw" in pairs.columns:
        return pairs["d_raw"].to_numpy(float)
    return delta_f(pairs, "raw")


def _d_den(pairs: pd.DataFrame) -> np.ndarray:
    """Return Δf of denoised fluxes with raw errors (the ``d_den`` column of a compact table).

    An error model σ_den = s·σ_raw with the same s on both sides of a pair (same source,
    same band, so same I_auto and band factor) turns it into Δf_model = d_den / s.

    Returns
    -------
    ndarray of float
        One value per pair.
    """
    if "d_den" in pairs.columns:
        return pairs["d_den"].to_numpy(float)
    return delta_f(pairs, "denoised", errors="raw")


def pair_deltas(pairs: pd.DataFrame) -> pd.DataFrame:
    """Reduce a pair table to its compact form (~30 bytes a pair instead of ~150).

    The compact table holds everything the σ68 statistics and the error model need; every
    function of this module that takes pairs also takes it.

    Parameters
    ----------
    pairs : pandas.DataFrame or dask.dataframe.DataFrame
        A pair table from :func:`make_pairs` (computed first when it is a dask one).

    Returns
    -------
    pandas.DataFrame
        Columns ``ref_id``, ``band`` (categorical), ``I_auto`` (float32, AB mag),
        ``expnum_1``, ``expnum_2`` (int32, int64 when an exposure number needs it), ``d_raw``
        (Δf of raw fluxes, raw errors) and, when denoised fluxes exist, ``d_den`` (Δf of
        denoised fluxes, raw errors), both float32.
    """
    pairs = _compute(pairs)
    exp_max = max(int(pairs["expnum_1"].max()), int(pairs["expnum_2"].max())) if len(pairs) else 0
    exp_dtype = np.int32 if exp_max <= np.iinfo(np.int32).max else np.int64
    out = pd.DataFrame(
        {
            "ref_id": pairs["ref_id"].to_numpy(np.int64),
            "band": pd.Categorical(pairs["band"].astype(str)),
            "I_auto": pairs["I_auto"].to_numpy(np.float32),
            "expnum_1": pairs["expnum_1"].to_numpy(exp_dtype),
            "expnum_2": pairs["expnum_2"].to_numpy(exp_dtype),
            "d_raw": _d_raw(pairs).astype(np.float32),
        }
    )
    if _has_den(pairs):
        out["d_den"] = _d_den(pairs).astype(np.float32)
    return out


def _floor_sigma68(delta: np.ndarray, var: np.ndarray, flux2: np.ndarray,
                   floor: float) -> float:
    """σ68 of Δf with a relative error floor added to both measurements' errors.

    Returns
    -------
    float
        σ68 of ``delta / sqrt(var + floor² · flux2)``.
    """
    return sigma68(delta / np.sqrt(var + floor * floor * flux2))


def _solve_floor(delta: np.ndarray, var: np.ndarray, flux2: np.ndarray) -> float:
    """Find the relative floor that brings σ68 of Δf to 1 (0 when it is ≤ 1 already).

    Returns
    -------
    float
        The floor, a fraction of the flux (bisection to 1e-5; at most 1).
    """
    if _floor_sigma68(delta, var, flux2, 0.0) <= 1.0:
        return 0.0
    lo, hi = 0.0, 1.0
    if _floor_sigma68(delta, var, flux2, hi) > 1.0:
        return hi
    while hi - lo > 1e-5:
        mid = 0.5 * (lo + hi)
        if _floor_sigma68(delta, var, flux2, mid) > 1.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def repeatability_floor(pairs: pd.DataFrame, *, snr_min: float = 50.0, bootstrap: int = 30,
                        seed: int = 0, max_pairs: int = 50_000) -> dict[str, float]:
    """Measure the raw fluxes' repeatability floor from exposure pairs.

    The brightest pairs show what the raw errors leave out: a relative error ε common to
    every measurement (flat field, PSF and aperture systematics, zero-points further off
    than they say) that adds ``ε·f`` in quadrature to each error. ε is the least value with
    σ68 of ``(f₁ − f₂) / sqrt(σ₁² + σ₂² + ε²(f₁² + f₂²))`` = 1 over the pairs whose S/N of
    the sum, ``(f₁ + f₂)/sqrt(σ₁² + σ₂²)``, is at least ``snr_min`` (where a floor of a
    few per cent is comparable to the errors; 0 when their σ68 is at most 1: the errors
    hold there); its 68 % interval comes from resampling the sources (not the pairs, which
    share them).

    Parameters
    ----------
    pairs : pandas.DataFrame
        A pair table from :func:`make_pairs` with raw fluxes and errors (``f_raw_1``,
        ``f_raw_2``, ``e_raw_1``, ``e_raw_2``; calibrated units) and ``ref_id``.
    snr_min : float, optional
        The least S/N of a pair's sum used. Default 50 (each measurement's error ≲ 3 %).
    bootstrap : int, optional
        Resamples of the sources for the interval (0: none). Default 30.
    seed : int, optional
        Seed of the resampling and of the subsample. Default 0.
    max_pairs : int, optional
        At most this many of those pairs are used (a uniform subsample). Default 50,000.

    Returns
    -------
    dict
        ``n_pairs`` (used), ``snr_min`` (the least pair S/N asked for), ``floor`` (ε, a fraction
        of the flux), ``floor_lo`` and ``floor_hi`` (16th and 84th percentiles over the
        resamples; NaN without them), ``sigma68_before`` and ``sigma68_after`` (σ68 of those
        pairs' Δf with the raw errors, and with the floor added); ``n_pairs`` 0 and NaN
        elsewhere when fewer than 20 pairs are that bright or there are no raw fluxes.
    """
    empty = {"n_pairs": 0, "snr_min": float(snr_min), "floor": np.nan, "floor_lo": np.nan,
             "floor_hi": np.nan, "sigma68_before": np.nan, "sigma68_after": np.nan}
    if "f_raw_1" not in pairs.columns:  # no raw measurement to judge
        return empty
    f1, f2 = pairs["f_raw_1"].to_numpy(float), pairs["f_raw_2"].to_numpy(float)
    var = pairs["e_raw_1"].to_numpy(float) ** 2 + pairs["e_raw_2"].to_numpy(float) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = (f1 + f2) / np.sqrt(var)
    use = np.flatnonzero(np.isfinite(snr) & (var > 0) & (snr >= snr_min))
    if use.size < 20:
        return empty
    rng = np.random.default_rng(seed)
    if use.size > max_pairs:
        use = np.sort(rng.choice(use, max_pairs, replace=False))
    delta, var, flux2 = f1[use] - f2[use], var[use], f1[use] ** 2 + f2[use] ** 2
    floor = _solve_floor(delta, var, flux2)
    lo = hi = np.nan
    if bootstrap > 0:
        codes, _ = pd.factorize(pairs["ref_id"].to_numpy()[use])
        members = pd.Series(np.arange(use.size)).groupby(codes).indices
        groups = [members[k] for k in range(len(members))]
        draws = []
        for _ in range(bootstrap):
            pick = np.concatenate([groups[k] for k in rng.integers(0, len(groups),
                                                                   len(groups))])
            draws.append(_solve_floor(delta[pick], var[pick], flux2[pick]))
        lo, hi = (float(v) for v in np.percentile(draws, [16, 84]))
    return {"n_pairs": int(use.size), "snr_min": float(snr_min), "floor": float(floor),
            "floor_lo": lo, "floor_hi": hi,
            "sigma68_before": _floor_sigma68(delta, var, flux2, 0.0),
            "sigma68_after": _floor_sigma68(delta, var, flux2, floor)}


#: The columns that identify a pair (and that :func:`pair_hash` hashes, with the seed).
PAIR_KEY: tuple[str, ...] = ("ref_id", "band", "expnum_1", "expnum_2")

#: The column :func:`bottom_k_pairs` adds: each pair's :func:`pair_hash`.
HASH_COLUMN = "pair_hash"


def pair_hash(pairs: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """Hash each pair's (ref_id, band, expnum_1, expnum_2, seed) to 64 bits.

    Parameters
    ----------
    pairs : pandas.DataFrame
        A pair table (:func:`make_pairs` or :func:`pair_deltas`) with the :data:`PAIR_KEY`
        columns.
    seed : int
        Mixed into the hash: another seed, another (independent) ordering of the pairs.

    Returns
    -------
    numpy.ndarray
        ``uint64``, one per row. It depends on the values only, not on the dtypes
        (``int32`` or ``int64`` exposure numbers, categorical or string band, whatever the
        categories), the row order, the partitioning into tables or the process, so it
        orders the pairs the same way wherever it is computed.
    """
    key = pairs[list(PAIR_KEY)].assign(_seed=seed)
    return pd.util.hash_pandas_object(key, index=False).to_numpy(np.uint64)


def concat_pairs(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate pair tables, keeping ``band`` one categorical column.

    The categories are the sorted union of the tables' categories, instead of the per-row
    strings :func:`pandas.concat` would make of categoricals with different categories.

    Parameters
    ----------
    tables : sequence of pandas.DataFrame
        Pair tables with the same columns, including ``band``.

    Returns
    -------
    pandas.DataFrame
        The rows of all tables in order (the table itself when there is only one), with a
        fresh index.
    """
    tables = list(tables)
    if len(tables) == 1:
        return tables[0]
    out = pd.concat([t.drop(columns="band") for t in tables], ignore_index=True)
    band = union_categoricals([pd.Categorical(t["band"]) for t in tables], sort_categories=True)
    out.insert(list(tables[0].columns).index("band"), "band", band)
    return out


def bottom_k_pairs(
    tables: pd.DataFrame | Sequence[pd.DataFrame], k: int, seed: int = 0
) -> pd.DataFrame:
    """Keep the (at most) ``k`` pairs with the smallest :func:`pair_hash`.

    A deterministic uniform sample without replacement of exactly ``min(len, k)`` pairs.
    Bottom-k samples merge: the bottom ``k`` of the union of tables is the bottom ``k`` of
    the union of their bottom-``k`` samples, so a band's task can send back only its ``k``
    smallest and a driver can fold the bands in as they complete, keeping at most ``k``
    between merges; the result depends neither on how the pairs were split into tables nor
    on the order of the merges (nor on the worker), only on the set of pairs and ``seed``.

    Parameters
    ----------
    tables : pandas.DataFrame or sequence of pandas.DataFrame
        Pair tables with the :data:`PAIR_KEY` columns (and the same other columns). A
        :data:`HASH_COLUMN` already there (from an earlier call, same ``seed``) is used as
        it is, else it is computed.
    k : int
        The sample size (≥ 0).
    seed : int
        The seed of :func:`pair_hash`.

    Returns
    -------
    pandas.DataFrame
        The sampled rows in input order (table after table; :func:`canonical_pairs` gives
        an order that does not depend on the input), with a :data:`HASH_COLUMN` column
        (``uint64``); ``band`` categorical over the union of the tables' bands. Equal
        hashes at the cut (practically never: 2⁶⁴ values) are broken by the pair's key,
        so the choice stays deterministic.

    Raises
    ------
    ValueError
        If ``k`` is negative.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    tables = [tables] if isinstance(tables, pd.DataFrame) else list(tables)
    tables = [t if HASH_COLUMN in t.columns else t.assign(**{HASH_COLUMN: pair_hash(t, seed)})
              for t in tables]
    hashes = [t[HASH_COLUMN].to_numpy(np.uint64) for t in tables]
    n = sum(len(h) for h in hashes)
    if n > k:
        if k == 0:
            cut = np.uint64(0)
            keep = [np.zeros(len(h), bool) for h in hashes]
        else:
            cut = np.partition(np.concatenate(hashes), k - 1)[k - 1]
            keep = [h < cut for h in hashes]
        need = k - sum(int(m.sum()) for m in keep)
        tied = [np.flatnonzero(h == cut) for h in hashes] if need > 0 else []
        if need > 0 and sum(len(t) for t in tied) > need:
            # break ties at the cut by the pair key: (band, ref_id, expnum_1, expnum_2)
            cand = pd.concat(
                [t.iloc[i][list(PAIR_KEY)].assign(band=lambda d: d["band"].astype(str),
                                                  _table=j, _row=i)
                 for j, (t, i) in enumerate(zip(tables, tied, strict=True))],
                ignore_index=True,
            ).sort_values(["band", "ref_id", "expnum_1", "expnum_2"], kind="stable")
            first = cand.iloc[:need]
            tied = [first["_row"].to_numpy()[first["_table"].to_numpy() == j]
                    for j in range(len(tables))]
        for m, i in zip(keep, tied, strict=False):
            m[i] = True
        tables = [t[m] for t, m in zip(tables, keep, strict=True)]
    return concat_pairs(tables).reset_index(drop=True)


def canonical_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Put a pair table in an order fixed by its content.

    Two tables of the same pairs, assembled in any order, come out identical.

    Parameters
    ----------
    pairs : pandas.DataFrame
        A pair table with the :data:`PAIR_KEY` columns.

    Returns
    -------
    pandas.DataFrame
        Sorted by (band, ref_id, expnum_1, expnum_2), the :data:`HASH_COLUMN` dropped,
        ``band`` categorical with the bands present (sorted), fresh index.
    """
    band = pd.Categorical(pairs["band"])
    used = sorted(str(c) for c in band.remove_unused_categories().categories)
    out = pairs.drop(columns=HASH_COLUMN, errors="ignore").assign(
        band=band.set_categories(used))
    return out.sort_values(["band", "ref_id", "expnum_1", "expnum_2"], kind="stable",
                           ignore_index=True)


def pairs_per_bin(pairs: pd.DataFrame, bins: Sequence[float]) -> np.ndarray:
    """Count the pairs per I_auto bin, binned as :func:`summarise` bins them.

    Parameters
    ----------
    pairs : pandas.DataFrame
        A pair table with ``I_auto`` (AB magnitude).
    bins : sequence of float
        Bin edges in AB magnitudes; bins are [lo, hi).

    Returns
    -------
    ndarray of int64
        ``len(bins) − 1`` counts; pairs outside the edges or with a non-finite I_auto are in
        none.
    """
    b = np.asarray(bins, dtype=float)
    idx = bin_index(pairs["I_auto"].to_numpy(float), b)
    return np.bincount(idx[idx >= 0], minlength=len(b) - 1).astype(np.int64)


def _bin_labels(bins: Sequence[float]) -> list[str]:
    def label(lo: float, hi: float) -> str:
        if np.isneginf(lo):
            return f"<{hi:g}"
        if np.isposinf(hi):
            return f">={lo:g}"
        return f"{lo:g}-{hi:g}"

    return [label(lo, hi) for lo, hi in itertools.pairwise(bins)]


def _measurements_from_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Collect the distinct measurements (ref_id, expnum, ccd) contained in a pair table.

    Returns
    -------
    pandas.DataFrame
        One row per measurement, the side suffixes removed.
    """
    cols = [c[:-2] for c in pairs.columns if c.endswith("_1")]
    sides = []
    for s in ("_1", "_2"):
        d = pairs[["ref_id", "band", "I_auto", *[c + s for c in cols]]]
        sides.append(d.rename(columns={c + s: c for c in cols}))
    m = pd.concat(sides, ignore_index=True)
    return m.drop_duplicates(subset=["ref_id", "band", "expnum", "ccd"]).reset_index(drop=True)


def flux_ratio(wide: pd.DataFrame) -> np.ndarray:
    """Compute the per-measurement denoised/raw calibrated flux ratio (bias indicator).

    Parameters
    ----------
    wide : pandas.DataFrame
        A wide table (:func:`widen`) with ``f_den`` and ``f_raw``.

    Returns
    -------
    ndarray of float
        ``f_den / f_raw`` per row (inf/NaN where ``f_raw`` is 0).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return wide["f_den"].to_numpy(float) / wide["f_raw"].to_numpy(float)


# --------------------------------------------------------------------------------------
# Error model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorModel:
    """Denoised-flux error model σ_den = s(I_auto) · g(band) · σ_raw.

    Why this model. A denoiser that averages over neighbouring pixels lowers the noise in
    an aperture by a factor that depends on how much of the source the network can tell
    from the sky, i.e. on the source's signal-to-noise ratio *in that exposure*: faint,
    sky-dominated apertures are smoothed (and shrunk) most, bright ones keep more of their
    own pixels. The raw error already knows each measurement's sky level, aperture area and
    source Poisson term, so the model multiplies it by one factor per I_auto bin, s(I),
    and one factor per narrow band, g(band): at a given I_auto the band flux, hence the
    S/N the network sees, differs from band to band (galaxy colours, filter throughput,
    sky brightness). On the demo survey the per-band factor is what makes the model
    transfer to exposures it was not fitted on (without it, held-out NB845 pairs gave
    σ68 ≈ 1.2 and NB455 ≈ 0.9). Per-measurement S/N regressors were tried
    and did worse: at S/N ~ 1–3 (I 21–23 in a narrow band) a measured S/N is mostly noise.

    Fit (:func:`fit_error_model`): on pairs whose *both* exposures are in a fit set,
    alternating s_k = σ68 of Δf in bin k and g_b = σ68 of Δf in band b (each with the
    other factor applied), which makes σ68 = 1 per bin and per band on the fit pairs;
    g is normalised to a pair-weighted geometric mean of 1, so s keeps the meaning of the
    typical denoised/raw scatter ratio. Bins with fewer than ``min_pairs`` fit pairs take
    the factor of the nearest fitted bin (the factor varies with brightness and the bright
    bins are the sparse ones: the global factor, dominated by the many faint pairs, would
    be wrong there); magnitudes outside the bins use the nearest end bin's factor, the
    global factor is used only when no bin was fitted, and a band without enough fit
    pairs (or not seen in the fit) gets g = 1. Checked on exposures not used in the fit
    by :func:`validate_error_model` and :func:`cross_validate_error_model`.

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
    band_factor: Mapping[str, float] = field(default_factory=dict)
    band_pairs: Mapping[str, int] = field(default_factory=dict)

    def filled_scale(self) -> np.ndarray:
        """Return the per-bin factors with unfitted bins given the nearest fitted bin's factor.

        Returns
        -------
        ndarray of float
            One factor per bin; all the global factor when no bin was fitted.
        """
        fitted = np.flatnonzero(np.isfinite(self.scale))
        if fitted.size == 0:
            return np.full(self.scale.shape, self.global_scale)
        nearest = fitted[np.abs(np.arange(self.scale.size)[:, None] - fitted).argmin(axis=1)]
        return self.scale[nearest]

    def scale_for(
        self, mag: np.ndarray | float, band: np.ndarray | Sequence[str] | str | None = None
    ) -> np.ndarray:
        """Return the error scale s(I_auto)·g(band) for each measurement.

        See the class docstring for how gaps are filled.

        Parameters
        ----------
        mag : float or ndarray of float
            I_auto, AB magnitudes; a non-finite one takes the global factor.
        band : str or sequence of str, optional
            The band of each measurement (or one for all); without it the band factor is 1.

        Returns
        -------
        ndarray of float
            The dimensionless factor σ_den/σ_raw, one per magnitude.
        """
        m = np.atleast_1d(np.asarray(mag, dtype=float))
        filled = self.filled_scale()
        idx = np.clip(np.searchsorted(self.bins, m, side="right") - 1, 0, filled.size - 1)
        s = filled[idx]
        s[~np.isfinite(m)] = self.global_scale
        if band is not None and self.band_factor:
            codes, names = _band_codes(band, m.shape)
            g = np.array([self.band_factor.get(str(n), 1.0) for n in names] + [1.0])
            s = s * g[codes]  # code -1 (missing band) takes the last entry, 1.0
        return s

    def scale_for_pairs(self, pairs: pd.DataFrame) -> np.ndarray:
        """Return :meth:`scale_for` of a pair table's rows (both sides share I_auto and band).

        Parameters
        ----------
        pairs : pandas.DataFrame
            A pair or wide table with ``I_auto`` and, optionally, ``band``.

        Returns
        -------
        ndarray of float
            One factor per row.
        """
        band = pairs["band"] if "band" in pairs.columns else None
        return self.scale_for(pairs["I_auto"].to_numpy(float), band)

    def apply(self, wide: pd.DataFrame) -> pd.DataFrame:
        """Add ``e_den_cal = s(I_auto)·g(band)·e_raw`` to a wide or pair table.

        Parameters
        ----------
        wide : pandas.DataFrame
            A wide or pair table; ``e_raw``, ``e_raw_1`` and ``e_raw_2`` are handled, whichever
            are present.

        Returns
        -------
        pandas.DataFrame
            A copy with ``e_den_cal`` (and/or ``e_den_cal_1``, ``e_den_cal_2``), calibrated units.
        """
        out = wide.copy()
        s = self.scale_for_pairs(out)
        for suffix in ("", "_1", "_2"):
            if f"e_raw{suffix}" in out.columns:
                out[f"e_den_cal{suffix}"] = s * out[f"e_raw{suffix}"].to_numpy(float)
        return out

    def to_frame(self) -> pd.DataFrame:
        """Tabulate the fitted factors per bin.

        Returns
        -------
        pandas.DataFrame
            ``bin``, ``mag_lo``, ``mag_hi`` (AB mag), ``n_fit_pairs`` and ``scale``.
        """
        return pd.DataFrame(
            {
                "bin": _bin_labels(self.bins),
                "mag_lo": self.bins[:-1],
                "mag_hi": self.bins[1:],
                "n_fit_pairs": self.n_pairs,
                "scale": self.scale,
            }
        )

    def to_dict(self) -> dict:
        """Describe the model in a JSON-serialisable dict (``from_dict`` reads it back).

        Returns
        -------
        dict
            The model's fields; edges ±inf and unfitted (NaN) factors are written as ``null``.
        """
        def num(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        return {
            "model": "sigma_den = s(I_auto) * g(band) * sigma_raw",
            "bins": [num(v) for v in self.bins],
            "scale": [num(v) for v in self.scale],
            "n_pairs": [int(v) for v in self.n_pairs],
            "global_scale": float(self.global_scale),
            "fit_exposures": [int(v) for v in self.fit_exposures],
            "band_factor": {str(k): float(v) for k, v in self.band_factor.items()},
            "band_pairs": {str(k): int(v) for k, v in self.band_pairs.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ErrorModel:
        """Build the model described by :meth:`to_dict`'s output.

        Parameters
        ----------
        d : mapping
            The dict :meth:`to_dict` wrote; a ``null`` first/last edge is an open end.

        Returns
        -------
        ErrorModel
            The model.
        """
        edges = [np.nan if v is None else float(v) for v in d["bins"]]
        # a null first/last edge is an open end
        if edges and np.isnan(edges[0]):
            edges[0] = -np.inf
        if edges and np.isnan(edges[-1]):
            edges[-1] = np.inf
        return cls(
            bins=np.asarray(edges, dtype=float),
            scale=np.asarray([np.nan if v is None else v for v in d["scale"]], dtype=float),
            n_pairs=np.asarray(d["n_pairs"], dtype=np.int64),
            global_scale=float(d["global_scale"]),
            fit_exposures=tuple(int(v) for v in d["fit_exposures"]),
            band_factor={str(k): float(v) for k, v in d.get("band_factor", {}).items()},
            band_pairs={str(k): int(v) for k, v in d.get("band_pairs", {}).items()},
        )

    def calibrated_errors(self, table: pd.DataFrame) -> pd.DataFrame:
        """Compute per-measurement errors for denoised fluxes from a long photometry table.

        Joins each denoised measurement with the raw one of the same (ref_id, expnum, ccd,
        band). Flagged rows are kept (their flags say why).

        Parameters
        ----------
        table : pandas.DataFrame
            Long photometry table with ``kind``, ``I_auto``, ``flux_cal``, ``flux_cal_err`` and
            ``flags``.

        Returns
        -------
        pandas.DataFrame
            Per pair of rows: the keys, ``I_auto``, ``flux_cal_raw``, ``flux_cal_err_raw``,
            ``flags_raw``, ``flux_cal_den``, ``flux_cal_err_den`` (what the photometry stage
            computed on the denoised image), ``flags_den`` and ``flux_cal_err_den_model`` =
            s(I_auto)·g(band)·``flux_cal_err_raw``, the error to use with ``flux_cal_den``.
        """
        keys = ["ref_id", "expnum", "ccd", "band"]
        cols = ["flux_cal", "flux_cal_err", "flags"]
        raw = table[table["kind"] == "raw"][[*keys, "I_auto", *cols]]
        den = table[table["kind"] == "denoised"][[*keys, *cols]]
        m = raw.merge(den, on=keys, how="inner", suffixes=("_raw", "_den"))
        m["flux_cal_err_den_model"] = (
            self.scale_for(m["I_auto"].to_numpy(float), m["band"])
            * m["flux_cal_err_raw"].to_numpy(float)
        )
        return m.reset_index(drop=True)

    def band_frame(self) -> pd.DataFrame:
        """Tabulate the fitted band factors g(band) and their fit-pair counts.

        Returns
        -------
        pandas.DataFrame
            ``band``, ``n_fit_pairs`` and ``band_factor`` (1 for a band that was not fitted).
        """
        names = sorted(set(self.band_factor) | set(self.band_pairs))
        return pd.DataFrame(
            {
                "band": names,
                "n_fit_pairs": [int(self.band_pairs.get(b, 0)) for b in names],
                "band_factor": [float(self.band_factor.get(b, 1.0)) for b in names],
            }
        )


def _band_codes(band: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """Return integer codes (−1 for missing) and names of a band column, array or scalar.

    A categorical column is used as it is (no per-row strings).

    Returns
    -------
    tuple of (ndarray of int64, list of str)
        The codes and the names they index.
    """
    if isinstance(band, str):
        return np.zeros(shape, dtype=np.int64), [band]
    if isinstance(band, pd.Series) and isinstance(band.dtype, pd.CategoricalDtype):
        return band.cat.codes.to_numpy(np.int64), [str(c) for c in band.cat.categories]
    codes, uniques = pd.factorize(pd.Series(np.asarray(band, dtype=object)).astype(str),
                                  sort=True)
    return np.asarray(codes, dtype=np.int64), [str(u) for u in uniques]


def _exposure_bands(exposure_bands: Mapping[int, str] | pd.DataFrame | None,
                    expnums: np.ndarray) -> dict[int, str]:
    if exposure_bands is None:
        return {int(e): "" for e in expnums}
    if isinstance(exposure_bands, pd.DataFrame):
        d = exposure_bands.drop_duplicates("expnum")
        return dict(zip(d["expnum"].astype(int), d["band"].astype(str), strict=True))
    return {int(k): str(v) for k, v in exposure_bands.items()}


def split_exposures(
    expnums: Iterable[int],
    fraction: float = 0.5,
    seed: int = 0,
    exposure_bands: Mapping[int, str] | pd.DataFrame | None = None,
) -> tuple[int, ...]:
    """Draw a random subset (``fraction``) of the distinct exposures, for fitting.

    With ``exposure_bands`` the split is stratified: each band's exposures are split
    separately (at least one on each side when the band has two or more), so every band is
    seen by both the fit and the validation (a plain random split of 12 exposures in 3 bands
    can leave a band out of the fit entirely).

    Parameters
    ----------
    expnums : iterable of int
        Exposure numbers (duplicates allowed).
    fraction : float, optional
        Share of the exposures to draw. Default 0.5.
    seed : int, optional
        Seed of the random generator. Default 0.
    exposure_bands : mapping of int to str or pandas.DataFrame, optional
        expnum → band, or a table with ``expnum`` and ``band``.

    Returns
    -------
    tuple of int
        The chosen exposure numbers, sorted.
    """
    e = np.unique(np.asarray(list(expnums), dtype=np.int64))
    rng = np.random.default_rng(seed)
    if exposure_bands is None:
        k = max(1, round(fraction * e.size))
        return tuple(int(v) for v in np.sort(rng.choice(e, size=k, replace=False)))
    bands = _exposure_bands(exposure_bands, e)
    chosen: list[int] = []
    for band in sorted(set(bands.get(int(v), "") for v in e)):
        members = np.array([v for v in e if bands.get(int(v), "") == band], dtype=np.int64)
        k = round(fraction * members.size)
        k = min(max(k, 1), members.size - 1) if members.size >= 2 else members.size
        chosen += [int(v) for v in rng.choice(members, size=k, replace=False)]
    return tuple(sorted(chosen))


def exposure_folds(
    exposure_bands: Mapping[int, str] | pd.DataFrame, folds: int = 2, seed: int = 0
) -> list[tuple[int, ...]]:
    """Split the exposures into ``folds`` disjoint groups, stratified by band.

    Each band's exposures are shuffled and dealt round-robin (starting at a random fold,
    so small bands do not all fill fold 0), so every fold holds a share of every band.

    Parameters
    ----------
    exposure_bands : mapping of int to str or pandas.DataFrame
        expnum → band, or a table with ``expnum`` and ``band``.
    folds : int, optional
        Number of groups (≥ 2). Default 2.
    seed : int, optional
        Seed of the random generator. Default 0.

    Returns
    -------
    list of tuple of int
        The groups, each sorted.

    Raises
    ------
    ValueError
        If ``folds`` is less than 2.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    bands = _exposure_bands(exposure_bands, np.array([], dtype=np.int64))
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in range(folds)]
    for band in sorted(set(bands.values())):
        members = np.array(sorted(e for e, b in bands.items() if b == band), dtype=np.int64)
        rng.shuffle(members)
        start = int(rng.integers(folds))
        for i, ex in enumerate(members):
            out[(start + i) % folds].append(int(ex))
    return [tuple(sorted(f)) for f in out]


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
    *,
    band_factors: bool = True,
    open_ends: bool = True,
    iterations: int = 8,
) -> ErrorModel:
    """Fit s(I_auto) (and g(band) with ``band_factors``) on pairs within the fit exposures.

    Only pairs whose two exposures are both in ``fit_exposures`` are used (see
    :class:`ErrorModel` for the model and the fit).

    Parameters
    ----------
    pairs : pandas.DataFrame or dask.dataframe.DataFrame
        Pair table (full or compact) with denoised fluxes.
    fit_exposures : iterable of int
        The exposure numbers of the fit set.
    bins : sequence of float, optional
        I_auto bin edges, AB magnitudes. Default :data:`DEFAULT_BINS`.
    min_pairs : int, optional
        Fewest pairs for a bin or a band to get a factor of its own. Default 50.
    band_factors : bool, optional
        Fit g(band) (only when at least two bands have ``min_pairs`` pairs). Default True.
    open_ends : bool, optional
        Add two bins, below the first and above the last edge (``-inf`` and ``inf``), so
        sources outside the reporting bins (e.g. I_auto > 23, often the majority of a deep
        catalogue) have a factor of their own instead of the nearest end bin's. Default True.
    iterations : int, optional
        Alternations between the s and g fits. Default 8.

    Returns
    -------
    ErrorModel
        The fitted model.

    Raises
    ------
    ValueError
        If no pair has both exposures in ``fit_exposures``, or no Δf is finite.
    """
    pairs = _compute(pairs)
    bins = np.asarray(bins, dtype=float)
    if open_ends:
        bins = np.unique(np.r_[-np.inf, bins, np.inf])
    fit_exposures = tuple(sorted(set(int(v) for v in fit_exposures)))
    fit = _pairs_in(pairs, fit_exposures, both=True)
    if len(fit) == 0:
        raise ValueError("no pair has both exposures in fit_exposures")
    d = _d_den(fit)
    ok = np.isfinite(d)
    glob = sigma68(d)
    if not np.isfinite(glob) or glob <= 0:
        raise ValueError("could not fit a global error scale (no finite Δf)")
    idx = bin_index(fit["I_auto"].to_numpy(float), bins)
    nb = len(bins) - 1
    n = np.array([int(((idx == i) & ok).sum()) for i in range(nb)], dtype=np.int64)
    if "band" in fit.columns:
        codes, uniques = _band_codes(fit["band"], (len(fit),))
    else:
        codes, uniques = np.zeros(len(fit), dtype=np.int64), np.array([""])
    names = [str(u) for u in uniques]
    counts = np.bincount(codes[ok & (codes >= 0)], minlength=len(names))
    band_n = {b: int(c) for b, c in zip(names, counts, strict=True) if c > 0}
    fitted = [j for j, b in enumerate(names) if band_n.get(b, 0) >= min_pairs]
    if not band_factors or len(fitted) < 2:
        fitted = []  # one band: its factor is not separable from s(I)
    g = np.ones(len(names))
    scale = np.full(nb, np.nan)
    for i in range(nb):
        if n[i] >= min_pairs:
            scale[i] = sigma68(d[idx == i])
    w = counts[fitted].astype(float)
    mag = fit["I_auto"].to_numpy(float)
    for _ in range(iterations if fitted else 0):
        model = ErrorModel(bins, scale, n, glob, fit_exposures)
        r = d / model.scale_for(mag) / g[codes]
        for j in fitted:
            g[j] *= sigma68(r[codes == j])
        # geometric mean of g (pair-weighted) = 1: s keeps its meaning
        g[fitted] /= float(np.exp(np.sum(w * np.log(g[fitted])) / w.sum()))
        r = d / model.scale_for(mag) / g[codes]
        for i in range(nb):
            if n[i] >= min_pairs:
                scale[i] *= sigma68(r[idx == i])
    g = {names[j]: float(g[j]) for j in fitted}
    return ErrorModel(
        bins=bins,
        scale=scale,
        n_pairs=n,
        global_scale=glob,
        fit_exposures=fit_exposures,
        band_factor={b: float(v) for b, v in g.items()},
        band_pairs=band_n,
    )


def _validation_table(
    held: pd.DataFrame,
    d_cal: np.ndarray,
    bins: np.ndarray,
    min_pairs: int,
    tolerance: float,
) -> pd.DataFrame:
    """Tabulate σ68 overall, per I_auto bin and per band of model-error Δf on held-out pairs.

    Returns
    -------
    pandas.DataFrame
        One row per group, the columns of :func:`validate_error_model`.
    """
    d_raw = _d_raw(held)
    idx = bin_index(held["I_auto"].to_numpy(float), bins)
    groups = [("all", np.nan, np.nan, np.ones(len(held), bool))]
    groups += [
        (lab, lo, hi, idx == i)
        for i, (lab, lo, hi) in enumerate(zip(_bin_labels(bins), bins[:-1], bins[1:], strict=True))
    ]
    if "band" in held.columns:
        codes, names = _band_codes(held["band"], (len(held),))
        present = set(np.unique(codes[codes >= 0]).tolist())
        groups += [(f"band {names[j]}", np.nan, np.nan, codes == j)
                   for j in sorted(present, key=lambda j: str(names[j]))]
    rows = []
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


def validate_error_model(
    pairs: pd.DataFrame,
    model: ErrorModel,
    bins: Sequence[float] | None = None,
    *,
    min_pairs: int = 400,
    tolerance: float = 0.05,
) -> pd.DataFrame:
    """Check the error model on held-out pairs (neither exposure in the fit set).

    σ68 of denoised Δf with the model's errors, overall, per bin and per band.

    Parameters
    ----------
    pairs : pandas.DataFrame or dask.dataframe.DataFrame
        Pair table (full or compact) with denoised fluxes.
    model : ErrorModel
        The model to check.
    bins : sequence of float, optional
        I_auto bin edges, AB magnitudes; default the model's finite edges.
    min_pairs : int, optional
        Fewest pairs for a row to be judged. Default 400.
    tolerance : float, optional
        Largest accepted |σ68 − 1|. Default 0.05.

    Returns
    -------
    pandas.DataFrame
        ``bin``, ``mag_lo``, ``mag_hi``, ``n_pairs``, ``sigma68_den_model``,
        ``sigma68_stderr`` (the Gaussian standard error of the estimate, ≈0.96/√n: with 400
        pairs ≈ 0.048; pairs sharing a source are not independent, so the true one is
        larger), ``sigma68_raw`` and ``passed`` = |σ68 − 1| <= tolerance for rows with at
        least ``min_pairs`` pairs (NA otherwise).
    """
    pairs = _compute(pairs)
    if bins is None:
        bins = model.bins[np.isfinite(model.bins)]
    bins = np.asarray(bins, dtype=float)
    held = _pairs_in(pairs, model.fit_exposures, both=False)
    d_cal = _d_den(held) / model.scale_for_pairs(held)
    return _validation_table(held, d_cal, bins, min_pairs, tolerance)


def cross_validate_error_model(
    pairs: pd.DataFrame,
    exposure_bands: Mapping[int, str] | pd.DataFrame,
    bins: Sequence[float] = DEFAULT_BINS,
    *,
    folds: int = 2,
    seed: int = 0,
    min_fit_pairs: int = 50,
    min_pairs: int = 400,
    tolerance: float = 0.05,
    band_factors: bool = True,
) -> tuple[pd.DataFrame, list[ErrorModel]]:
    """Cross-validate the error model over exposures, k-fold, stratified by band.

    The exposures are dealt into ``folds`` groups (:func:`exposure_folds`); for each group,
    the model is fitted on the pairs whose two exposures are both *outside* it and applied
    to the pairs whose two exposures are both *inside* it. The held-out Δf of all folds are
    pooled into one table like :func:`validate_error_model`'s (every validation pair is
    judged by a model that never saw either of its exposures); pairs straddling a fold
    boundary are used by neither side.

    Parameters
    ----------
    pairs : pandas.DataFrame or dask.dataframe.DataFrame
        Pair table (full or compact) with denoised fluxes.
    exposure_bands : mapping of int to str or pandas.DataFrame
        expnum → band, or a table with ``expnum`` and ``band``.
    bins : sequence of float, optional
        I_auto bin edges, AB magnitudes. Default :data:`DEFAULT_BINS`.
    folds : int, optional
        Number of folds. Default 2.
    seed : int, optional
        Seed of the fold assignment. Default 0.
    min_fit_pairs : int, optional
        ``min_pairs`` of each fold's :func:`fit_error_model`. Default 50.
    min_pairs : int, optional
        Fewest pairs for a validation row to be judged. Default 400.
    tolerance : float, optional
        Largest accepted |σ68 − 1|. Default 0.05.
    band_factors : bool, optional
        Fit band factors. Default True.

    Returns
    -------
    tuple of (pandas.DataFrame, list of ErrorModel)
        The pooled validation table and the per-fold models.
    """
    pairs = _compute(pairs)
    bins = np.asarray(bins, dtype=float)
    groups = exposure_folds(exposure_bands, folds, seed)
    held_parts: list[pd.DataFrame] = []
    d_parts: list[np.ndarray] = []
    models: list[ErrorModel] = []
    every = sorted({e for grp in groups for e in grp})
    for grp in groups:
        fit_set = [e for e in every if e not in set(grp)]
        model = fit_error_model(pairs, fit_set, bins, min_fit_pairs, band_factors=band_factors)
        held = _pairs_in(pairs, grp, both=True)
        models.append(model)
        held_parts.append(held)
        d_parts.append(_d_den(held) / model.scale_for_pairs(held))
    held = pd.concat(held_parts, ignore_index=True)
    table = _validation_table(held, np.concatenate(d_parts), bins, min_pairs, tolerance)
    return table, models


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------


def summarise(
    pairs: Any,
    bins: Sequence[float] = DEFAULT_BINS,
    model: ErrorModel | None = None,
    measurements: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Tabulate σ68 of Δf overall ("all") and per I_auto bin.

    Parameters
    ----------
    pairs : pandas.DataFrame or dask.dataframe.DataFrame
        Pair table (full or compact).
    bins : sequence of float, optional
        I_auto bin edges, AB magnitudes. Default :data:`DEFAULT_BINS`.
    model : ErrorModel, optional
        Adds ``sigma68_den_model`` (denoised fluxes, model errors).
    measurements : pandas.DataFrame, optional
        A wide table for the flux ratio; else the measurements in the pairs (none for a
        compact table).

    Returns
    -------
    pandas.DataFrame
        Columns ``bin``, ``mag_lo``, ``mag_hi``, ``n_pairs``, ``sigma68_raw`` (raw fluxes,
        raw errors), ``sigma68_den_rawerr`` (denoised fluxes, raw errors), ``n_meas``,
        ``median_ratio_den_raw`` (median of per-measurement denoised/raw calibrated flux over
        the distinct measurements) and, with ``model``, ``sigma68_den_model``. Denoised
        columns are NaN when the table has only raw fluxes.
    """
    pairs = _compute(pairs)
    bins = np.asarray(bins, dtype=float)
    has_den = _has_den(pairs)
    mag = pairs["I_auto"].to_numpy(float)
    idx = bin_index(mag, bins)
    d_raw = _d_raw(pairs)
    nanv = np.full(len(pairs), np.nan)
    d_den = _d_den(pairs) if has_den else nanv
    d_mod = d_den / model.scale_for_pairs(pairs) if (has_den and model is not None) else nanv
    if measurements is not None:
        meas = _compute(measurements)
    elif "f_raw_1" in pairs.columns:
        meas = _measurements_from_pairs(pairs)
    else:  # a compact pair table carries no per-measurement fluxes
        meas = pd.DataFrame({"I_auto": np.array([], dtype=float)})
    m_idx = bin_index(meas["I_auto"].to_numpy(float), bins)
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
    """Collect the Δf values for the report's histograms.

    Parameters
    ----------
    pairs : pandas.DataFrame or dask.dataframe.DataFrame
        Pair table (full or compact).
    model : ErrorModel, optional
        Adds ``denoised_model``.

    Returns
    -------
    dict of str to ndarray
        ``raw``, ``denoised_rawerr`` (when denoised fluxes exist) and, with a model,
        ``denoised_model``; finite values only.
    """
    pairs = _compute(pairs)
    out = {"raw": _d_raw(pairs)}
    if _has_den(pairs):
        out["denoised_rawerr"] = _d_den(pairs)
        if model is not None:
            out["denoised_model"] = out["denoised_rawerr"] / model.scale_for_pairs(pairs)
    return {k: v[np.isfinite(v)] for k, v in out.items()}


def truth_comparison(
    table: Any,
    truth: pd.DataFrame,
    bins: Sequence[float] = DEFAULT_BINS,
    *,
    exclude_flags: bool = True,
) -> pd.DataFrame:
    """Measure flux accuracy against the simulation's truth, per kind, overall and per I_auto bin.

    Parameters
    ----------
    table : pandas.DataFrame or dask.dataframe.DataFrame
        The long photometry table.
    truth : pandas.DataFrame
        ``ref_id``, ``expnum``, ``band``, ``flux_true_cal`` (calibrated units) and, for
        ``pull_sigma68_exact_zp``, ``zp_true`` (the exposure's exact zero-point, calibrated
        units per ADU; the table then needs ``zp`` and ``zp_err``).
    bins : sequence of float, optional
        I_auto bin edges, AB magnitudes. Default :data:`DEFAULT_BINS`.
    exclude_flags : bool, optional
        Drop flagged measurements. Default True.

    Returns
    -------
    pandas.DataFrame
        ``kind``, ``bin``, ``mag_lo``, ``mag_hi``, ``n``, ``bias_median`` =
        median((f − f_true)/f_true), ``scatter_sigma68`` = σ68((f − f_true)/f_true) and
        ``pull_sigma68`` = σ68((f − f_true)/σ) (with the measurement's own error; ≈1 when
        errors are right) and ``pull_sigma68_exact_zp``, the same with every flux
        calibrated by its exposure's exact zero-point and the header zero-point's error
        taken out of σ (:func:`~pausdenoise.photometry.calibration.
        without_zero_point_error`): the photometry judged without the calibration, whose
        errors dominate the bright sources' (NaN without ``zp_true``).

    Raises
    ------
    KeyError
        If ``truth`` lacks one of its columns.
    """
    table = _compute(table)
    bins = np.asarray(bins, dtype=float)
    for c in ("ref_id", "expnum", "band", "flux_true_cal"):
        if c not in truth.columns:
            raise KeyError(f"truth table is missing column {c!r}")
    if exclude_flags:
        table = table[table["flags"] == 0]
    exact = "zp_true" in truth.columns and {"zp", "zp_err"} <= set(table.columns)
    m = table.merge(
        truth[["ref_id", "expnum", "band", "flux_true_cal", *(["zp_true"] if exact else [])]],
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
            pull_exact = np.full(len(g), np.nan)
            if exact:
                zp, zp_true = g["zp"].to_numpy(float), g["zp_true"].to_numpy(float)
                stat = without_zero_point_error(f, e, zp, g["zp_err"].to_numpy(float))
                pull_exact = (f * zp_true / zp - ft) / (stat * zp_true / zp)
        idx = bin_index(g["I_auto"].to_numpy(float), bins)
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
                    "pull_sigma68_exact_zp": sigma68(pull_exact[sel]) if exact else np.nan,
                }
            )
    return pd.DataFrame(rows)


def zero_point_errors(table: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Judge the header zero-points against the simulation's exact ones.

    Parameters
    ----------
    table : pandas.DataFrame
        Photometry rows with ``expnum``, ``ccd``, ``zp`` and ``zp_err`` (calibrated units per
        ADU); one zero-point per frame.
    truth : pandas.DataFrame
        The simulation's truth with ``expnum``, ``ccd`` and ``zp_true``.

    Returns
    -------
    dict
        ``truth_zp_frames``, ``truth_zp_scatter`` (σ68 of zp/zp_true − 1 over the frames)
        and ``truth_zp_pulls`` (σ68 of (zp − zp_true)/zp_err over the frames with an error;
        ≈1 when the header errors are right); empty without frames to judge.
    """
    keys = ["expnum", "ccd"]
    frames = table[[*keys, "zp", "zp_err"]].drop_duplicates(keys).merge(
        truth[[*keys, "zp_true"]].drop_duplicates(keys), on=keys, how="inner")
    if frames.empty:
        return {}
    zp, zp_true = frames["zp"].to_numpy(float), frames["zp_true"].to_numpy(float)
    zp_err = frames["zp_err"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pulls = np.where(zp_err > 0, (zp - zp_true) / zp_err, np.nan)
    return {"truth_zp_frames": len(frames), "truth_zp_scatter": sigma68(zp / zp_true - 1.0),
            "truth_zp_pulls": sigma68(pulls)}
