"""Per-magnitude science tables of injected sources: flux bias, pulls, scatter, colours.

Galaxies of known flux injected into the frames are measured like any catalogue source; the
photometry of each estimator is compared with the injection truth, per band and per I_auto
bin. The estimators (:data:`ESTIMATORS`):

- ``raw_aperture``: the aperture flux on the raw frame (the PAUS recipe), against the
  source's own noiseless light inside its aperture (``flux_true_aper_adu``); error
  ``flux_err``;
- ``denoised_aperture``: the same aperture on the denoised frame, error ``flux_err`` of the
  denoised row;
- ``denoised_aperture_corrected``: the denoised aperture flux (and its error) divided by the
  transfer function T of its (band, I_auto bin), T = median(F̂_den / F_true_aper) measured
  from the injections themselves. A T measured on the same rows it corrects would make the
  corrected median bias zero by construction, so T is *cross-fitted*: rows of even
  ``ref_id`` are corrected with the T of the odd half and vice versa
  (:func:`cross_fitted_transfer`). The correction is still in-sample in the sense that both
  halves come from the same injection run: its bias measures how well a T learnt from
  injections carries to sources like them, not to a different survey;
- ``raw_profile``: the profile-weighted forced flux on the raw frame (``flux_prof``, a TOTAL
  flux), against ``flux_true_adu``; error ``flux_prof_err``.

All fluxes are ADU in the frame of the row (the truth is in the same frame's ADU, so no
zero-point enters). Flagged rows (``flags != 0``; ``flags_prof != 0`` for the profile
estimator) are counted in ``n_flagged`` and left out of every statistic; there is no other
cut.

With the photometry of the frames *before* injection at the same apertures (``null``), a
second table gives each estimator's **response**: (F̂ − F̂_null − F)/F, the measured flux
minus what the same estimator measures at the same place without the galaxy. The sky and
confusion noise of that place, identical in both, cancel; what is left is the estimator's
response to the galaxy's light and its own Poisson noise. It tests scale errors (a biased
profile, aperture or denoiser) to a small fraction of a per cent with a few thousand
galaxies where the flux bias itself, on a noisy or crowded field, is known only to tens of
per cent; it says nothing about the errors or about offsets of the background estimate.

Confidence intervals are 95 % percentile bootstraps that resample injected sources
(``ref_id``) with replacement, so the frames of one source move together; the bootstrap is
vectorised (per-replicate source counts as weights of one sorted array).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise.stats import P16, P84, bin_index, sigma68, sigma68_stderr

__all__ = [
    "DEFAULT_MAG_BINS",
    "ESTIMATORS",
    "MIN_TRANSFER_ROWS",
    "TABLE_FILES",
    "TOTAL_FLUX_ESTIMATORS",
    "UNDEFINED_MAG",
    "bin_labels",
    "cross_fitted_transfer",
    "injection_tables",
    "summary_lines",
]

#: The flux estimators compared with the injection truth, in table order.
ESTIMATORS = ("raw_aperture", "denoised_aperture", "denoised_aperture_corrected", "raw_profile")

#: Estimators of the TOTAL flux (compared with ``flux_true_adu``; they get a Cramér–Rao ratio).
TOTAL_FLUX_ESTIMATORS = ("raw_profile",)

#: Default I_auto bin edges, AB magnitudes: 1-mag bins 17–18, …, 23–24.
DEFAULT_MAG_BINS = (17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0)

#: Stand-in magnitude offset (mag) of a source whose mean flux ratio in a band is ≤ 0: it is
#: fainter than any magnitude, so colour medians rank it last instead of leaving it out.
UNDEFINED_MAG = 100.0

#: The tables of :func:`injection_tables` → the stem of their CSV file in ``<run>/inject``.
TABLE_FILES = {"bias": "bias_by_bin", "transfer": "transfer", "colour": "colour_bias",
               "response": "response"}

#: Fewest training rows of a (band, bin) cell for its own transfer value; fewer: the bin's
#: value over all bands is used.
MIN_TRANSFER_ROWS = 5

_KEYS = ["ref_id", "expnum", "ccd"]
_TRUTH_COLUMNS = ("band", "I_auto", "flux_true_adu", "flux_true_aper_adu", "flux_cr_var_adu2")
_RAW = {"flux": "f_raw", "flux_err": "e_raw", "flags": "fl_raw",
        "flux_prof": "f_prof", "flux_prof_err": "e_prof", "flags_prof": "fl_prof"}
_DEN = {"flux": "f_den", "flux_err": "e_den", "flags": "fl_den"}
#: the photometry before injection: kind → its columns in the joined table (suffix 0)
_NULL = {"raw": {k: f"{v}0" for k, v in _RAW.items()},
         "denoised": {k: f"{v}0" for k, v in _DEN.items()}}
#: estimator → (flux, error, flags, presence, truth) columns of the joined table
_SPEC = {
    "raw_aperture": ("f_raw", "e_raw", "fl_raw", "has_raw", "flux_true_aper_adu"),
    "denoised_aperture": ("f_den", "e_den", "fl_den", "has_den", "flux_true_aper_adu"),
    "denoised_aperture_corrected": ("f_den", "e_den", "fl_den", "has_den",
                                    "flux_true_aper_adu"),
    "raw_profile": ("f_prof", "e_prof", "fl_prof", "has_prof", "flux_true_adu"),
}
#: response estimators → (flux, flags, null flux, null error, null flags, truth) columns
_RESPONSE = {est: (f, fl, f"{f}0", f"{e}0", f"{fl}0", t)
             for est, (f, e, fl, _, t) in _SPEC.items() if est != "denoised_aperture_corrected"}
_CHUNK = 4_000_000  # bootstrap replicates × rows handled at once (memory bound)


def bin_labels(bins: Sequence[float]) -> list[str]:
    """Return the labels ``"17-18"`` … of consecutive bin edges.

    Parameters
    ----------
    bins : sequence of float
        Bin edges, AB magnitudes, increasing.

    Returns
    -------
    list of str
        One label per bin, ``f"{lo:g}-{hi:g}"``.
    """
    return [f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(bins)]


# ----------------------------------------------------------------------------- the join


def _kind_part(phot: pd.DataFrame, kind: str, cols: Mapping[str, str]) -> pd.DataFrame:
    """Rows of one kind, renamed to the joined table's columns, one per (ref_id, expnum, ccd).

    Returns
    -------
    pandas.DataFrame
        The keys, the renamed columns present and ``has_<kind>`` (True).

    Raises
    ------
    ValueError
        If a (ref_id, expnum, ccd) appears twice for the kind.
    """
    part = phot[phot["kind"] == kind] if "kind" in phot else phot.iloc[:0]
    have = {c: new for c, new in cols.items() if c in part.columns}
    part = part[[*_KEYS, *have]].rename(columns=have)
    if part.duplicated(_KEYS).any():
        raise ValueError(f"photometry has repeated (ref_id, expnum, ccd) rows of kind {kind!r}")
    return part.assign(**{f"has_{kind}": True})


def _joined(phot: pd.DataFrame, truth: pd.DataFrame,
            null: pd.DataFrame | None = None) -> pd.DataFrame:
    """Join the raw and denoised photometry onto the truth rows (one row per source and frame).

    Returns
    -------
    pandas.DataFrame
        The truth's columns plus ``f_/e_/fl_`` of ``raw``, ``den`` and ``prof`` and the
        presence columns ``has_raw``, ``has_den``, ``has_prof``; with ``null`` (the
        photometry before injection) also ``f_raw0, fl_raw0, f_prof0, fl_prof0, f_den0,
        fl_den0`` (NaN where it has no row).

    Raises
    ------
    KeyError
        If ``truth`` lacks a column.
    """
    for c in (*_KEYS, *_TRUTH_COLUMNS):
        if c not in truth.columns:
            raise KeyError(f"truth table is missing column {c!r}")
    w = truth[[*_KEYS, *_TRUTH_COLUMNS]].copy()
    for c in _KEYS:
        w[c] = w[c].astype("int64")
    for kind, cols in (("raw", _RAW), ("denoised", _DEN)):
        part = _kind_part(phot, kind, cols)
        part[_KEYS] = part[_KEYS].astype("int64")
        w = w.merge(part, on=_KEYS, how="left")
    for col in (*_RAW.values(), *_DEN.values()):
        if col not in w:
            w[col] = np.nan
    w["has_raw"] = w["has_raw"].eq(True).to_numpy(bool)
    w["has_den"] = w["has_denoised"].eq(True).to_numpy(bool)
    w["has_prof"] = w["has_raw"] & ("flux_prof" in phot.columns)
    w["band"] = w["band"].astype(str)
    w = w.drop(columns=["has_denoised"])
    if null is not None:
        for kind, cols in _NULL.items():
            part = _kind_part(null, kind, cols).drop(columns=f"has_{kind}")
            part[_KEYS] = part[_KEYS].astype("int64")
            w = w.merge(part, on=_KEYS, how="left")
        for col in (c for cols in _NULL.values() for c in cols.values()):
            if col not in w:
                w[col] = np.nan
    return w.reset_index(drop=True)


# ----------------------------------------------------------------------------- bootstrap


def _first_crossings(cw: np.ndarray, base: np.ndarray,
                     t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first column where ``base + cw`` reaches ``t`` and where it exceeds it.

    One search in the rows laid end to end, each shifted above the previous one.

    Returns
    -------
    tuple of ndarray
        The two column indices per row; ``cw.shape[1]`` means none.
    """
    m, w = cw.shape
    c = np.asarray(cw, dtype=float)
    c += base[:, None]
    shift = np.arange(m, dtype=float) * (max(float(c[:, -1].max()), float(t.max())) + 2.0)
    c += shift[:, None]
    flat = c.ravel()
    first = np.arange(m) * w
    lo = np.searchsorted(flat, t + shift, side="left") - first
    hi = np.searchsorted(flat, t + shift, side="right") - first
    return lo, hi


def _boot_counts(n_c: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``m`` cluster-bootstrap replicates: how often each of ``n_c`` clusters is drawn.

    Returns
    -------
    ndarray of float, shape (m, n_c)
        Counts; each row sums to ``n_c``.
    """
    draws = rng.integers(0, n_c, size=(m, n_c)) + (np.arange(m) * n_c)[:, None]
    return np.bincount(draws.ravel(), minlength=m * n_c).reshape(m, n_c).astype(float)


def _boot_quantiles(
    values: np.ndarray, clusters: np.ndarray, qs: Sequence[float], n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Quantiles ``qs`` (fractions) of ``values`` in ``n_boot`` cluster-bootstrap replicates.

    Each replicate draws the clusters with replacement; a row's weight is its cluster's
    count, and the weighted quantile of the once-sorted values is the midpoint of the first
    rows whose cumulative weight reaches and exceeds ``q`` × total (the plain median for
    unit weights). The cumulative weights are formed only in a window of ranks around
    ``q·n`` (±6 bootstrap σ, the weight below it from one matrix product); a chunk in
    which some replicate falls outside the window is redone over all ranks, so the result
    is exact.

    Returns
    -------
    ndarray, shape (n_boot, len(qs))
        The replicates' quantiles.
    """
    order = np.argsort(values, kind="stable")
    x = values[order]
    _, cl = np.unique(clusters[order], return_inverse=True)
    n, n_c = x.size, int(cl.max()) + 1
    size = np.bincount(cl, minlength=n_c).astype(float)
    s_eff = float((size**2).sum()) / n
    out = np.empty((n_boot, len(qs)))
    step = max(1, _CHUNK // max(n, n_c))
    for s in range(0, n_boot, step):
        m = min(step, n_boot - s)
        counts = _boot_counts(n_c, m, rng)
        t_all = counts @ size
        for j, q in enumerate(qs):
            t = q * t_all
            h = int(6.0 * np.sqrt(q * (1.0 - q) * n * s_eff)) + 16
            a0, b0 = max(0, int(q * n) - h), min(n, int(q * n) + h + 1)
            for a, b in ((a0, b0), (0, n)):
                base = counts @ np.bincount(cl[:a], minlength=n_c).astype(float)
                lo, hi = _first_crossings(np.cumsum(counts[:, cl[a:b]], axis=1), base, t)
                bad = ((base >= t) & (a > 0)) | (((lo >= b - a) | (hi >= b - a)) & (b < n))
                if not bad.any():
                    break
            lo, hi = np.minimum(lo + a, n - 1), np.minimum(hi + a, n - 1)
            out[s:s + m, j] = 0.5 * (x[lo] + x[hi])
    return out


def _median_ci(values: np.ndarray, clusters: np.ndarray, n_boot: int,
               rng: np.random.Generator) -> tuple[float, float, float]:
    """Median of the finite values and its 95 % cluster-bootstrap interval.

    Returns
    -------
    tuple of float
        ``(median, lo, hi)``; NaN when no value is finite (the interval also when
        ``n_boot`` is 0).
    """
    ok = np.isfinite(values)
    v, c = values[ok], clusters[ok]
    if v.size == 0:
        return np.nan, np.nan, np.nan
    med = float(np.median(v))
    if n_boot < 1:
        return med, np.nan, np.nan
    b = _boot_quantiles(v, c, (0.5,), n_boot, rng)[:, 0]
    lo, hi = np.percentile(b, [2.5, 97.5])
    return med, float(lo), float(hi)


def _sigma68_ci(values: np.ndarray, clusters: np.ndarray, n_boot: int,
                rng: np.random.Generator) -> tuple[float, float, float]:
    """σ68 of the finite values and its 95 % cluster-bootstrap interval.

    Returns
    -------
    tuple of float
        ``(sigma68, lo, hi)``; NaN when no value is finite (the interval also when
        ``n_boot`` is 0).
    """
    ok = np.isfinite(values)
    v, c = values[ok], clusters[ok]
    if v.size == 0 or n_boot < 1:
        return sigma68(v), np.nan, np.nan
    b = _boot_quantiles(v, c, (P16 / 100.0, P84 / 100.0), n_boot, rng)
    lo, hi = np.percentile(0.5 * (b[:, 1] - b[:, 0]), [2.5, 97.5])
    return sigma68(v), float(lo), float(hi)


# ----------------------------------------------------------------------------- transfer


def cross_fitted_transfer(
    ratio: np.ndarray, ref_id: np.ndarray, bin_index: np.ndarray, band: np.ndarray,
    *, min_rows: int = MIN_TRANSFER_ROWS,
) -> np.ndarray:
    """Return, for every row, the transfer T learnt from the *other* half of the sources.

    The halves are the parities of ``ref_id``. A row's T is the median ``ratio`` of the
    other half's rows in its (band, bin) cell when that cell has at least ``min_rows``
    finite ratios, else the other half's median over all bands in its bin.

    Parameters
    ----------
    ratio : ndarray of float
        F̂_den / F_true_aper per row (dimensionless); NaN for rows that must not train
        (flagged, missing).
    ref_id : ndarray of int
        Injected source of each row.
    bin_index : ndarray of int
        I_auto bin of each row (−1: outside the bins, gets NaN).
    band : ndarray of str
        Band of each row.
    min_rows : int, optional
        Fewest training rows of a (band, bin) cell. Default :data:`MIN_TRANSFER_ROWS`.

    Returns
    -------
    ndarray of float
        T per row (NaN where the other half has no finite ratio in the row's bin).
    """
    df = pd.DataFrame({"r": np.asarray(ratio, float), "bin": np.asarray(bin_index),
                       "band": np.asarray(band).astype(str),
                       "half": np.asarray(ref_id, dtype=np.int64) % 2})
    out = np.full(len(df), np.nan)
    ok = np.isfinite(df["r"]) & (df["bin"] >= 0)
    for half in (0, 1):
        train = df[ok & (df["half"] != half)]
        cell = train.groupby(["band", "bin"])["r"].agg(["median", "size"])
        cell = cell.loc[cell["size"] >= min_rows, "median"]
        by_bin = train.groupby("bin")["r"].median()
        rows = np.flatnonzero((df["half"] == half).to_numpy())
        tgt = df.iloc[rows]
        t_cell = cell.reindex(pd.MultiIndex.from_arrays([tgt["band"], tgt["bin"]])).to_numpy()
        t_bin = by_bin.reindex(tgt["bin"].to_numpy()).to_numpy()
        out[rows] = np.where(np.isfinite(t_cell), t_cell, t_bin)
    return out


def _den_ratio(w: pd.DataFrame) -> np.ndarray:
    """Divide the unflagged denoised aperture fluxes by their true aperture flux.

    Returns
    -------
    ndarray of float
        F̂_den / F_true_aper per joined row, NaN where there is no unflagged denoised row.
    """
    use = w["has_den"].to_numpy(bool) & (w["fl_den"].to_numpy(float) == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = w["f_den"].to_numpy(float) / w["flux_true_aper_adu"].to_numpy(float)
    return np.where(use, r, np.nan)


def _transfer_table(w: pd.DataFrame, idx: np.ndarray, bins: np.ndarray, bands: list[str],
                    n_boot: int, seed: int) -> pd.DataFrame:
    """Median F̂_den/F_true_aper per band (and "all") and I_auto bin, with CI and halves.

    Returns
    -------
    pandas.DataFrame
        ``band, bin, mag_lo, mag_hi, n, n_flagged, transfer, ci_lo, ci_hi, transfer_even,
        transfer_odd``.
    """
    r = _den_ratio(w)
    flagged = w["has_den"].to_numpy(bool) & (w["fl_den"].to_numpy(float) != 0)
    ref = w["ref_id"].to_numpy(np.int64)
    band = w["band"].to_numpy(str)
    rows, k = [], 0
    for b in [*bands, "all"]:
        in_band = np.ones(len(w), bool) if b == "all" else band == b
        for i, lab in enumerate(bin_labels(bins)):
            sel = in_band & (idx == i)
            rng = np.random.default_rng([seed, 1, k])
            k += 1
            med, lo, hi = _median_ci(r[sel], ref[sel], n_boot, rng)
            even, odd = r[sel & (ref % 2 == 0)], r[sel & (ref % 2 == 1)]
            rows.append({"band": b, "bin": lab, "mag_lo": bins[i], "mag_hi": bins[i + 1],
                         "n": int(np.isfinite(r[sel]).sum()), "n_flagged": int(flagged[sel].sum()),
                         "transfer": med, "ci_lo": lo, "ci_hi": hi,
                         "transfer_even": _nanmedian(even), "transfer_odd": _nanmedian(odd)})
    return pd.DataFrame(rows)


def _nanmedian(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else np.nan


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.mean(v)) if v.size else np.nan


# ----------------------------------------------------------------------------- bias


def _estimator_arrays(w: pd.DataFrame, est: str, t_corr: np.ndarray) -> dict[str, np.ndarray]:
    """Flux, error, truth, presence and flags of one estimator over the joined rows.

    Returns
    -------
    dict of str to ndarray
        ``f, e, ft`` (ADU), ``present``, ``flagged`` (bool), ``e_raw`` (raw aperture error,
        ADU), ``cr_sd`` (√ Cramér–Rao variance, ADU), ``ref`` (ref_id).
    """
    fcol, ecol, flcol, hascol, tcol = _SPEC[est]
    f = w[fcol].to_numpy(float)
    e = w[ecol].to_numpy(float)
    if est == "denoised_aperture_corrected":
        f, e = f / t_corr, e / t_corr
    present = w[hascol].to_numpy(bool)
    return {"f": f, "e": e, "ft": w[tcol].to_numpy(float), "present": present,
            "flagged": present & (w[flcol].to_numpy(float) != 0),
            "e_raw": w["e_raw"].to_numpy(float),
            "cr_sd": np.sqrt(w["flux_cr_var_adu2"].to_numpy(float)),
            "ref": w["ref_id"].to_numpy(np.int64)}


def _group_stats(a: Mapping[str, np.ndarray], total_flux: bool, n_boot: int,
                 rng: np.random.Generator) -> dict[str, float]:
    """Every statistic of one (estimator, band, bin) cell from its rows' arrays.

    Returns
    -------
    dict of str to float
        The bias table's statistic columns.
    """
    use = a["present"] & ~a["flagged"]
    f, e, ft, ref = a["f"][use], a["e"][use], a["ft"][use], a["ref"][use]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = f - ft
        rel = d / ft
        pull = d / e
        vs_raw = d / a["e_raw"][use]
        vs_cr = d / a["cr_sd"][use]
        cr_raw = a["cr_sd"][use] / a["e_raw"][use]
    ok = np.isfinite(rel)
    med, lo, hi = _median_ci(rel, ref, n_boot, rng)
    p68, p_lo, p_hi = _sigma68_ci(pull, ref, n_boot, rng)
    n_pull = int(np.isfinite(pull).sum())
    cr_med = _nanmedian(a["cr_sd"][use][ok])
    scale, s_lo, s_hi = _scale_bias_ci(a, n_boot, rng.spawn(1)[0])
    return {
        "n": int(ok.sum()), "n_flagged": int(a["flagged"].sum()),
        "n_nonfinite": int((~ok).sum()),
        "median_rel_bias": med, "ci_lo": lo, "ci_hi": hi,
        "pull_sigma68": p68,
        "pull_sigma68_err": float(p68 * sigma68_stderr(n_pull)) if n_pull else np.nan,
        "pull_ci_lo": p_lo, "pull_ci_hi": p_hi,
        "rel_scatter": sigma68(rel),
        "scatter_vs_raw": sigma68(vs_raw),
        "cr_vs_raw": _nanmedian(cr_raw),
        "cr_ratio": sigma68(d[ok]) / cr_med if (total_flux and cr_med > 0) else np.nan,
        "cr_pull_sigma68": sigma68(vs_cr) if total_flux else np.nan,
        "scale_bias": scale, "scale_ci_lo": s_lo, "scale_ci_hi": s_hi,
    }


def _bias_table(w: pd.DataFrame, idx: np.ndarray, bins: np.ndarray, bands: list[str],
                n_boot: int, seed: int, t_corr: np.ndarray) -> pd.DataFrame:
    """One row per estimator × band (and "all") × I_auto bin.

    Returns
    -------
    pandas.DataFrame
        ``estimator, band, bin, mag_lo, mag_hi`` and :func:`_group_stats`' columns.
    """
    band = w["band"].to_numpy(str)
    labels = bin_labels(bins)
    rows, k = [], 0
    for est in ESTIMATORS:
        arrays = _estimator_arrays(w, est, t_corr)
        for b in [*bands, "all"]:
            in_band = np.ones(len(w), bool) if b == "all" else band == b
            for i, lab in enumerate(labels):
                sel = in_band & (idx == i) & arrays["present"]
                rng = np.random.default_rng([seed, 0, k])
                k += 1
                stats = _group_stats({c: v[sel] for c, v in arrays.items()},
                                     est in TOTAL_FLUX_ESTIMATORS, n_boot, rng)
                rows.append({"estimator": est, "band": b, "bin": lab, "mag_lo": bins[i],
                             "mag_hi": bins[i + 1], **stats})
    return pd.DataFrame(rows)


def _response_table(w: pd.DataFrame, idx: np.ndarray, bins: np.ndarray, bands: list[str],
                    n_boot: int, seed: int) -> pd.DataFrame:
    """One row per response estimator × band (and "all") × I_auto bin.

    A row is used when the estimator has an unflagged, finite flux both after and before
    injection (flags of either count it in ``n_flagged``).

    Returns
    -------
    pandas.DataFrame
        ``estimator, band, bin, mag_lo, mag_hi, n, n_flagged``, ``median_response_bias`` =
        median((F̂ − F̂_null − F)/F) with bootstrap ``ci_lo, ci_hi`` (sources resampled), and
        ``rel_scatter`` = its σ68; ``null_pull_median`` and ``null_pull_mean``, the median
        and mean of F̂_null/σ̂_null: the place's own flux in units of its error (0 for an
        unbiased background on symmetric noise; confusion noise is skewed, so its median
        and mean differ).
    """
    band = w["band"].to_numpy(str)
    ref = w["ref_id"].to_numpy(np.int64)
    rows, k = [], 0
    for est, (fcol, flcol, f0col, e0col, fl0col, tcol) in _RESPONSE.items():
        present = w[fcol].notna().to_numpy() & w[f0col].notna().to_numpy()
        flagged = present & ((w[flcol].to_numpy(float) != 0) | (w[fl0col].to_numpy(float) != 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = (w[fcol].to_numpy(float) - w[f0col].to_numpy(float)
                   - w[tcol].to_numpy(float)) / w[tcol].to_numpy(float)
            z0 = w[f0col].to_numpy(float) / w[e0col].to_numpy(float)
        for b in [*bands, "all"]:
            in_band = np.ones(len(w), bool) if b == "all" else band == b
            for i, lab in enumerate(bin_labels(bins)):
                cell = in_band & (idx == i) & present
                use = cell & ~flagged
                med, lo, hi = _median_ci(rel[use], ref[use], n_boot,
                                         np.random.default_rng([seed, 3, k]))
                k += 1
                rows.append({"estimator": est, "band": b, "bin": lab, "mag_lo": bins[i],
                             "mag_hi": bins[i + 1], "n": int(np.isfinite(rel[use]).sum()),
                             "n_flagged": int(flagged[cell].sum()),
                             "median_response_bias": med, "ci_lo": lo, "ci_hi": hi,
                             "rel_scatter": sigma68(rel[use]),
                             "null_pull_median": _nanmedian(z0[use]),
                             "null_pull_mean": _nanmean(z0[use])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- colour


def _source_dmag(w: pd.DataFrame, a: Mapping[str, np.ndarray],
                 bands: Sequence[str]) -> pd.DataFrame:
    """Per source, −2.5 log10 of the inverse-variance mean of F̂/F over its frames per band.

    A mean ratio ≤ 0 has no magnitude; it is fainter than any, and stands as
    :data:`UNDEFINED_MAG` (a finite stand-in for +∞, so that medians rank it last).

    Returns
    -------
    pandas.DataFrame
        Index ``ref_id``, one column per band of ``bands`` (mag; :data:`UNDEFINED_MAG` when
        the mean ratio is ≤ 0; sources without a usable frame in every band are left out),
        and ``undefined`` (the number of bands whose mean ratio is ≤ 0).
    """
    use = a["present"] & ~a["flagged"]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = a["f"] / a["ft"]
        var = (a["e"] / a["ft"]) ** 2
    ok = use & np.isfinite(r) & np.isfinite(var) & (var > 0) & w["band"].isin(bands).to_numpy()
    d = pd.DataFrame({"ref_id": a["ref"][ok], "band": w["band"].to_numpy(str)[ok],
                      "wr": r[ok] / var[ok], "w": 1.0 / var[ok]})
    s = d.groupby(["ref_id", "band"])[["wr", "w"]].sum()
    rbar = (s["wr"] / s["w"]).unstack("band").reindex(columns=list(bands))
    rbar = rbar.dropna()
    undefined = (rbar <= 0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dmag = (-2.5 * np.log10(rbar.where(rbar > 0))).fillna(UNDEFINED_MAG)
    return dmag.assign(undefined=undefined)


def _undefined_to_inf(*values: float) -> tuple[float, ...]:
    """Map colour statistics that landed on an undefined source to ±∞.

    Returns
    -------
    tuple of float
        ``values`` with every finite ``|v| ≥ UNDEFINED_MAG / 2`` replaced by ``±inf``.
    """
    return tuple(float(np.sign(v) * np.inf) if np.isfinite(v) and abs(v) >= UNDEFINED_MAG / 2
                 else float(v) for v in values)


def _median_diff_ci(v0: np.ndarray, v1: np.ndarray, n_boot: int,
                    rng: np.random.Generator) -> tuple[float, float, float]:
    """Difference of two independent samples' medians and its 95 % bootstrap interval.

    Returns
    -------
    tuple of float
        ``(median(v0) − median(v1), lo, hi)``; NaN when a sample is empty.
    """
    v0, v1 = v0[np.isfinite(v0)], v1[np.isfinite(v1)]
    if not (v0.size and v1.size):
        return np.nan, np.nan, np.nan
    d = float(np.median(v0) - np.median(v1))
    m0 = np.median(v0[rng.integers(0, v0.size, (n_boot, v0.size))], axis=1)
    m1 = np.median(v1[rng.integers(0, v1.size, (n_boot, v1.size))], axis=1)
    lo, hi = np.percentile(m0 - m1, [2.5, 97.5])
    return d, float(lo), float(hi)


def _scale_sums(f: np.ndarray, ft: np.ndarray, v: np.ndarray, cl: np.ndarray,
                n_c: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster, the numerator Σ F̂F/V and denominator Σ F²/V of the flux scale.

    Returns
    -------
    tuple of ndarray
        ``(num, den)``, each of length ``n_c``.
    """
    return np.bincount(cl, f * ft / v, n_c), np.bincount(cl, ft * ft / v, n_c)


def _scale_ci(stat: Callable[[np.ndarray], np.ndarray], n_c: int, n_boot: int,
              rng: np.random.Generator) -> tuple[float, float, float]:
    """Evaluate a flux-scale statistic of cluster weights, with its 95 % bootstrap interval.

    ``stat(weights)`` takes a (…, n_c) array of per-cluster weights (1: every cluster
    once; bootstrap counts) and returns the statistic per row.

    Returns
    -------
    tuple of float
        ``(value, lo, hi)``; the interval NaN with ``n_boot < 1`` or no finite replicate.
    """
    value = float(stat(np.ones(n_c)))
    if n_boot < 1:
        return value, np.nan, np.nan
    reps = []
    for s in range(0, n_boot, 100):
        reps.append(stat(_boot_counts(n_c, min(100, n_boot - s), rng)))
    r = np.concatenate(reps)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return value, np.nan, np.nan
    lo, hi = np.percentile(r, [2.5, 97.5])
    return value, float(lo), float(hi)


def _scale_rows(a: Mapping[str, np.ndarray], sel: np.ndarray) -> np.ndarray:
    """Return the rows of ``sel`` usable for a flux scale (present, unflagged, finite, V > 0).

    Returns
    -------
    ndarray of bool
    """
    var = a["cr_sd"] ** 2
    with np.errstate(invalid="ignore"):
        return (sel & a["present"] & ~a["flagged"] & np.isfinite(a["f"]) & np.isfinite(a["ft"])
                & np.isfinite(var) & (var > 0))


def _scale_bias_ci(a: Mapping[str, np.ndarray], n_boot: int,
                   rng: np.random.Generator) -> tuple[float, float, float]:
    """Flux-scale bias k̂ − 1 of one cell, k̂ = Σ F̂F/V / Σ F²/V, with its 95 % interval.

    The least-squares fit of F̂ = k F over the cell's unflagged rows, weighted by the
    Cramér–Rao variance V of each row (from the truth, not from the measured pixels): the
    population's mean scale error, the minimum-variance estimate of it for a flux estimator
    linear in the pixels. Sources (``ref``) are resampled.

    Returns
    -------
    tuple of float
        ``(k̂ − 1, lo, hi)``; NaN without a usable row.
    """
    ok = _scale_rows(a, np.ones(a["f"].shape, bool))
    if not ok.any():
        return np.nan, np.nan, np.nan
    _, cl = np.unique(a["ref"][ok], return_inverse=True)
    n_c = int(cl.max()) + 1
    num, den = _scale_sums(a["f"][ok], a["ft"][ok], a["cr_sd"][ok] ** 2, cl, n_c)
    if not (den > 0).any():
        return np.nan, np.nan, np.nan
    return _scale_ci(lambda wts: (wts @ num) / (wts @ den) - 1.0, n_c, n_boot, rng)


def _scale_colour_ci(w: pd.DataFrame, a: Mapping[str, np.ndarray], sel: np.ndarray,
                     colour_bands: Sequence[str], n_boot: int,
                     rng: np.random.Generator) -> tuple[float, float, float]:
    """Colour bias from the two bands' flux scales, with its 95 % cluster-bootstrap interval.

    Per band, the flux scale k̂ = Σ F̂F/V / Σ F²/V over the unflagged rows of ``sel``
    (:func:`_scale_bias_ci`); the colour bias is −2.5 log10(k̂₀/k̂₁). This is the colour
    error a photo-z fit to fluxes sees; the median of per-source colours, dominated by the
    faintest sources' skewed magnitudes, needs several times more injections for the same
    interval. Sources (``ref_id``) are resampled, jointly in both bands.

    Returns
    -------
    tuple of float
        ``(colour bias, lo, hi)`` in mag; NaN when a band has no usable row or a scale
        is ≤ 0.
    """
    band = w["band"].to_numpy(str)
    ok = _scale_rows(a, sel)
    _, cl = np.unique(a["ref"][ok], return_inverse=True)
    n_c = int(cl.max()) + 1 if cl.size else 0
    sums = []
    for b in colour_bands[:2]:
        inb = band[ok] == b
        sums.append(_scale_sums(a["f"][ok][inb], a["ft"][ok][inb], a["cr_sd"][ok][inb] ** 2,
                                cl[inb], n_c))
    if n_c == 0 or any(not (d > 0).any() for _, d in sums):
        return np.nan, np.nan, np.nan

    def colour(weights: np.ndarray) -> np.ndarray:
        k = [(weights @ num) / (weights @ den) for num, den in sums]
        with np.errstate(divide="ignore", invalid="ignore"):
            return -2.5 * np.log10(np.where((k[0] > 0) & (k[1] > 0), k[0] / k[1], np.nan))

    return _scale_ci(colour, n_c, n_boot, rng)


def _colour_rows(w: pd.DataFrame, a: Mapping[str, np.ndarray], bins: np.ndarray,
                 idx_row: np.ndarray, colour_bands: Sequence[str], n_boot: int,
                 rng_of: Any) -> list[dict[str, Any]]:
    """One estimator's colour-bias rows: per source when sources have both bands.

    Without a source measured in both bands (injections drawn per frame), the colour bias
    is the difference of the two bands' median magnitude offsets per I bin, each band's
    from its own sources (``method = "band medians"``): the systematic colour error that
    S/N-dependent flux errors make, without the per-source scatter.

    No source is cut for a noisy flux: a band whose mean ratio is ≤ 0 counts as infinitely
    faint (:data:`UNDEFINED_MAG`), so the colour of that source is +∞ or −∞ and the median
    still ranks it; a median or interval bound that lands there is reported as ±∞. Only a
    source with a mean ratio ≤ 0 in both bands has no colour (``n_undefined``). A band
    median is then −2.5 log10 of the median ratio itself. ``idx_row`` is each joined row's
    I_auto bin (for the flux-scale colour, :func:`_scale_colour_ci`).

    Returns
    -------
    list of dict
        The rows of :func:`_colour_table` for this estimator.
    """
    b0, b1 = colour_bands
    if b0 == b1:  # one band only: no colour
        return [{"colour": f"{b0}-{b1}", "bin": lab, "mag_lo": bins[i], "mag_hi": bins[i + 1],
                 "n": 0, "n_undefined": 0, "median_colour_bias": np.nan, "ci_lo": np.nan,
                 "ci_hi": np.nan, "method": "none", "scale_colour_bias": np.nan,
                 "scale_ci_lo": np.nan, "scale_ci_hi": np.nan}
                for i, lab in enumerate(bin_labels(bins))]
    i_auto = w.groupby("ref_id")["I_auto"].first()
    src = _source_dmag(w, a, (b0, b1))
    per_source = bool(len(src))
    if per_source:
        und = src["undefined"].to_numpy() == 2  # no magnitude in either band: no colour
        dcol = np.where(und, np.nan, (src[b0] - src[b1]).to_numpy(float))
        idx = bin_index(i_auto.reindex(src.index).to_numpy(float), bins)
        ref = src.index.to_numpy(np.int64)
    else:
        one = [_source_dmag(w, a, (b,)) for b in (b0, b1)]
        idx1 = [bin_index(i_auto.reindex(o.index).to_numpy(float), bins) for o in one]
    rows = []
    for i, lab in enumerate(bin_labels(bins)):
        rng = rng_of()
        scale = _scale_colour_ci(w, a, idx_row == i, (b0, b1), n_boot, rng.spawn(1)[0])
        if per_source:
            sel = idx == i
            med, lo, hi = _median_ci(dcol[sel], ref[sel], n_boot, rng)
            n, n_und = int(np.isfinite(dcol[sel]).sum()), int(und[sel].sum())
        else:
            v = [o[b].to_numpy(float)[k == i] for o, b, k in zip(one, (b0, b1), idx1,
                                                                  strict=True)]
            med, lo, hi = _median_diff_ci(v[0], v[1], n_boot, rng)
            n = int(min(np.isfinite(v[0]).sum(), np.isfinite(v[1]).sum()))
            n_und = 0
        med, lo, hi = _undefined_to_inf(med, lo, hi)
        rows.append({"colour": f"{b0}-{b1}", "bin": lab, "mag_lo": bins[i],
                     "mag_hi": bins[i + 1], "n": n, "n_undefined": n_und,
                     "median_colour_bias": med, "ci_lo": lo, "ci_hi": hi,
                     "method": "per source" if per_source else "band medians",
                     "scale_colour_bias": scale[0], "scale_ci_lo": scale[1],
                     "scale_ci_hi": scale[2]})
    return rows


def _colour_table(w: pd.DataFrame, idx: np.ndarray, bins: np.ndarray,
                  colour_bands: Sequence[str], n_boot: int, seed: int,
                  t_corr: np.ndarray) -> pd.DataFrame:
    """Median (measured − true) colour per estimator and I_auto bin, with 95 % CI.

    Returns
    -------
    pandas.DataFrame
        ``estimator, colour, bin, mag_lo, mag_hi, n, n_undefined, median_colour_bias,
        ci_lo, ci_hi`` (mag), ``method`` ("per source", or "band medians" when no source
        is measured in both bands; ``n`` is then the smaller band's count), and
        ``scale_colour_bias, scale_ci_lo, scale_ci_hi`` (mag): the colour of the two
        bands' flux scales (:func:`_scale_colour_ci`).
    """
    rows, counter = [], iter(range(10**9))
    for est in ESTIMATORS:
        a = _estimator_arrays(w, est, t_corr)
        for r in _colour_rows(w, a, bins, idx, colour_bands, n_boot,
                              lambda: np.random.default_rng([seed, 2, next(counter)])):
            rows.append({"estimator": est, **r})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- entry


def injection_tables(
    phot: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    mag_bins: Sequence[float] = DEFAULT_MAG_BINS,
    n_boot: int = 1000,
    seed: int = 0,
    colour_bands: tuple[str, str] = ("NB455", "NB845"),
    null: pd.DataFrame | None = None,
) -> dict[str, pd.DataFrame]:
    """Measure bias, pulls, scatter, transfer and colour bias of every flux estimator.

    Parameters
    ----------
    phot : pandas.DataFrame or dask.dataframe.DataFrame
        Photometry rows (``ref_id, expnum, ccd, kind`` (``"raw"``/``"denoised"``),
        ``flux, flux_err, flags`` and, when measured, ``flux_prof, flux_prof_err,
        flags_prof``; fluxes in ADU). Rows of sources not in ``truth`` are ignored (the
        join is on ``(ref_id, expnum, ccd)``).
    truth : pandas.DataFrame
        The injection truth, one row per injected source and frame: ``ref_id, expnum, ccd,
        band, I_auto`` (AB), ``flux_true_adu``, ``flux_true_aper_adu`` (ADU),
        ``flux_cr_var_adu2`` (ADU²).
    mag_bins : sequence of float, optional
        I_auto bin edges, AB magnitudes, [lo, hi). Default 17, 18, …, 24.
    n_boot : int, optional
        Bootstrap replicates of every interval (0: no intervals). Default 1000.
    seed : int, optional
        Seed of the bootstrap (every cell draws from its own stream). Default 0.
    colour_bands : tuple of (str, str), optional
        The colour ``colour_bands[0] − colour_bands[1]``. Default NB455 − NB845.
    null : pandas.DataFrame or dask.dataframe.DataFrame, optional
        The same apertures measured on the frames before injection (columns as ``phot``).
        Given, the result also holds the ``"response"`` table.

    Returns
    -------
    dict of str to pandas.DataFrame
        ``"bias"``: per estimator × band (each band and ``"all"``) × I_auto bin: ``n``
        (unflagged rows with a finite relative error, the rows used), ``n_flagged``,
        ``n_nonfinite``, ``median_rel_bias`` = median((F̂ − F)/F) with bootstrap ``ci_lo``,
        ``ci_hi``; ``pull_sigma68`` = σ68((F̂ − F)/σ̂) with its Gaussian standard error
        ``pull_sigma68_err`` and bootstrap ``pull_ci_lo``, ``pull_ci_hi``;
        ``rel_scatter`` = σ68((F̂ − F)/F); ``scatter_vs_raw`` = σ68((F̂ − F)/σ_raw) with
        σ_raw the raw aperture ``flux_err`` of the same source and frame; ``cr_vs_raw`` =
        median(√CR/σ_raw) (the Cramér–Rao bound of the total flux in the same units);
        for total-flux estimators ``cr_ratio`` = σ68(F̂ − F)/median √CR (1: at the bound)
        and ``cr_pull_sigma68`` = σ68((F̂ − F)/√CR) (per source; NaN for the aperture
        estimators); ``scale_bias`` = k̂ − 1 with ``scale_ci_lo``, ``scale_ci_hi``, the
        flux scale k̂ = Σ F̂F/V / Σ F²/V (V the Cramér–Rao variance; :func:`_scale_bias_ci`).
        ``"transfer"``: per band (and ``"all"``) × bin, ``transfer`` =
        median F̂_den/F_true_aper with CI, and the medians of the even and odd ``ref_id``
        halves. ``"colour"``: per estimator × bin, ``median_colour_bias`` (mag) of
        (measured − true) colour per source, with CI; a source's band magnitude offset is
        −2.5 log10 of the inverse-variance mean of F̂/F over its unflagged frames, +∞ when
        that mean is ≤ 0 (the source is counted, ranked as infinitely faint in that band),
        and ``n_undefined`` counts the sources left out because their mean ratio is ≤ 0 in
        both bands; ``scale_colour_bias`` with ``scale_ci_lo, scale_ci_hi`` is
        −2.5 log10 of the ratio of the bands' flux scales Σ F̂F/V / Σ F²/V (V the
        Cramér–Rao variance), the colour error of the bin's population as a whole.
        ``"response"`` (with ``null`` only): per estimator (``raw_aperture``,
        ``denoised_aperture``, ``raw_profile``) × band × bin, the median of
        (F̂ − F̂_null − F)/F with CI (:func:`_response_table`). Empty cells have ``n = 0``
        and NaN statistics.
    """
    bins = np.asarray(mag_bins, dtype=float)
    if hasattr(phot, "compute"):  # a dask table (read_photometry): small enough to collect
        phot = phot.compute()
    if hasattr(null, "compute"):
        null = null.compute()
    w = _joined(phot, truth, null)
    idx = bin_index(w["I_auto"].to_numpy(float), bins)
    bands = sorted(w["band"].unique().tolist())
    t_corr = cross_fitted_transfer(_den_ratio(w), w["ref_id"].to_numpy(np.int64), idx,
                                   w["band"].to_numpy(str))
    out = {
        "bias": _bias_table(w, idx, bins, bands, n_boot, seed, t_corr),
        "transfer": _transfer_table(w, idx, bins, bands, n_boot, seed),
        "colour": _colour_table(w, idx, bins, tuple(colour_bands), n_boot, seed, t_corr),
    }
    if null is not None:
        out["response"] = _response_table(w, idx, bins, bands, n_boot, seed)
    return out


def _pct(v: float) -> str:
    return f"{100 * v:+.1f} %" if np.isfinite(v) else "n/a"


def summary_lines(tables: Mapping[str, pd.DataFrame], *, mag_max: float = 23.0) -> list[str]:
    """Summarise the tables in a few human lines (bins brighter than ``mag_max``).

    Parameters
    ----------
    tables : mapping of str to pandas.DataFrame
        The output of :func:`injection_tables` (or the CSV files read back).
    mag_max : float, optional
        Only bins with ``mag_hi <= mag_max`` (AB) are summarised. Default 23.

    Returns
    -------
    list of str
        Per estimator, the worst |median bias| over all bands combined with its bin and
        interval and the range of pull σ68; the transfer range; the worst colour bias (the
        median's, and the flux scales' with its interval when the table has them).
    """
    lines = []
    bias = tables["bias"]
    sel = bias[(bias["band"] == "all") & (bias["mag_hi"] <= mag_max) & (bias["n"] > 0)]
    lo_mag = bias["mag_lo"].min() if len(bias) else np.nan
    for est, g in sel.groupby("estimator", sort=False):
        g = g[np.isfinite(g["median_rel_bias"])]
        if g.empty:
            continue
        r = g.loc[g["median_rel_bias"].abs().idxmax()]
        lines.append(
            f"{est}: worst |median bias| over I {lo_mag:g}-{mag_max:g} = "
            f"{_pct(r['median_rel_bias'])} (bin {r['bin']}, 95 % CI {_pct(r['ci_lo'])} to "
            f"{_pct(r['ci_hi'])}); pull σ68 {g['pull_sigma68'].min():.2f}-"
            f"{g['pull_sigma68'].max():.2f}")
    tr = tables.get("transfer")
    if tr is not None:
        t = tr[(tr["band"] == "all") & (tr["mag_hi"] <= mag_max) & (tr["n"] > 0)]
        if len(t):
            lines.append(f"denoised/true aperture flux (transfer): {t['transfer'].min():.3f}-"
                         f"{t['transfer'].max():.3f} over I {lo_mag:g}-{mag_max:g}")
    col = tables.get("colour")
    if col is not None:
        c = col[(col["mag_hi"] <= mag_max) & np.isfinite(col["median_colour_bias"])]
        for est, g in c.groupby("estimator", sort=False):
            r = g.loc[g["median_colour_bias"].abs().idxmax()]
            line = (f"{est}: worst colour bias {r['colour']} = "
                    f"{r['median_colour_bias']:+.3f} mag (bin {r['bin']})")
            sc = g[np.isfinite(g["scale_colour_bias"])] if "scale_colour_bias" in g else g[:0]
            if len(sc):
                s = sc.loc[sc["scale_colour_bias"].abs().idxmax()]
                line += (f"; of the flux scales {s['scale_colour_bias']:+.3f} mag (bin "
                         f"{s['bin']}, 95 % CI {s['scale_ci_lo']:+.3f} to "
                         f"{s['scale_ci_hi']:+.3f})")
            lines.append(line)
    return lines
