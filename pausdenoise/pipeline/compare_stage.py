"""Compare stage runner: cross-exposure Δf statistics, the denoised error model, truth.

Reads the photometry Parquet of the run and writes into ``<run>/compare/``:

- ``sigma68_by_bin.csv`` (+ ``.json``): per I_auto bin and overall, pair counts, σ68 of Δf
  for raw fluxes, denoised fluxes with raw errors and with the calibrated error model, and
  the median denoised/raw flux ratio;
- ``error_model.csv`` / ``error_model_bands.csv``: the error model σ_den = s(I_auto)·g(band)·σ_raw
  fitted on all pairs: s per bin, g per band (:class:`pausdenoise.compare.ErrorModel`);
- ``error_model.json``: the same model, machine-readable
  (:meth:`pausdenoise.compare.ErrorModel.from_dict`), to apply to other runs;
- ``denoised_errors/band=<band>/errors.parquet``: every measurement's raw and denoised
  calibrated flux with ``flux_cal_err_den_model``, the error to use with the denoised flux
  (:meth:`pausdenoise.compare.ErrorModel.calibrated_errors`), flags kept;
- ``error_model_validation.csv``: σ68 with model errors on held-out pairs, by k-fold
  cross-validation over exposures stratified by band (each pair judged by a model fitted
  without either of its exposures), overall, per bin and per band, with pass/fail against
  1.00 ± tolerance for rows with enough pairs;
- ``truth_comparison.csv``: flux bias and scatter against the truth (simulation only): the
  true flux is the source's own noiseless flux inside its aperture (``flux_true_aper_adu``
  × the exact zero-point), so aperture losses do not pose as bias;
- ``df_values.npz``: the Δf values per flavour (at most 500,000), for the report's histograms.

Each band is read and paired by its own task (:func:`band_pair_counts`, :func:`band_deltas`),
so memory is bounded by one band's photometry, plus the compact pair table of all bands
(capped by ``compare.max_pairs`` with a deterministic uniform subsample).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pausdenoise.pipeline.core import Context


#: the photometry columns the compare stage reads (the other ~20 are never loaded)
_COLUMNS = ("ref_id", "expnum", "ccd", "I_auto", "flags", "flux_cal", "flux_cal_err")


def _band_wide(phot_dir: str, band: str, exclude_flagged: bool) -> pd.DataFrame | None:
    from pausdenoise import compare as cmp
    from pausdenoise.photometry import read_photometry

    table = read_photometry(phot_dir, bands=[band], columns=_COLUMNS)
    if table.empty:
        return None
    return cmp.widen(table, exclude_flags=exclude_flagged)


def band_pair_counts(phot_dir: str, band: str, exclude_flagged: bool,
                     bins: np.ndarray) -> tuple[int, np.ndarray]:
    """(pairs, pairs per I_auto bin) of one band, without building pairs."""
    from pausdenoise import compare as cmp

    wide = _band_wide(phot_dir, band, exclude_flagged)
    if wide is None or wide.empty:
        return 0, np.zeros(len(bins) - 1, dtype=np.int64)
    return int(cmp.pair_count(wide)), np.asarray(cmp.pair_count(wide, bins))


def band_deltas(phot_dir: str, band: str, exclude_flagged: bool, rate: float,
                seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None:
    """One band's compact pair table (subsampled at ``rate``), its compact measurements
    (I_auto and calibrated fluxes, float32) and its exposures; runs on a worker."""
    from pausdenoise import compare as cmp

    wide = _band_wide(phot_dir, band, exclude_flagged)
    if wide is None or wide.empty:
        return None
    deltas = cmp.subsample_pairs(cmp.pair_deltas(cmp.make_pairs(wide)), rate, seed)
    meas = wide[[c for c in ("I_auto", "f_raw", "f_den") if c in wide.columns]]
    return deltas, meas.astype(np.float32), wide[["expnum", "band"]].drop_duplicates("expnum")


def band_calibrated_errors(phot_dir: str, band: str, model: dict, out_dir: str) -> int:
    """Write one band's per-measurement calibrated denoised errors (atomically) to
    ``out_dir/band=<band>/errors.parquet``; returns the row count. Runs on a worker."""
    from pausdenoise import compare as cmp
    from pausdenoise.photometry import read_photometry, write_partition

    table = read_photometry(phot_dir, bands=[band], columns=_COLUMNS)
    rows = cmp.ErrorModel.from_dict(model).calibrated_errors(table)
    write_partition(rows, Path(out_dir) / f"band={band}" / "errors.parquet")
    return len(rows)


def _per_band(ctx: Context, fn: Any, bands: list[str], *args: Any) -> list[Any]:
    """``fn(photometry_dir, band, *args)`` for every band, on the cluster when there is one."""
    phot = str(ctx.paths.photometry)
    if ctx.client is None:
        return [fn(phot, b, *args) for b in bands]
    futures = [ctx.client.submit(fn, phot, b, *args, pure=False) for b in bands]
    return ctx.client.gather(futures)


def run_compare(ctx: Context) -> dict[str, Any]:
    """Compute and write the comparison tables; returns the stage summary.

    Out of core: each band is read and paired on its own (one task per band on the
    cluster); only a compact pair table (Δf values, I_auto, band, exposures: ~30 bytes a
    pair) comes back. Above ``compare.max_pairs`` pairs in all, a deterministic uniform
    subsample of that size is kept for the statistics (the pair counts stay exact).
    """
    from pausdenoise import compare as cmp
    from pausdenoise.photometry import photometry_bands, read_photometry

    cfg = ctx.cfg.compare
    bands = photometry_bands(ctx.paths.photometry)
    if not bands:
        return {"note": "no photometry to compare"}
    out = ctx.paths.compare
    out.mkdir(parents=True, exist_ok=True)
    bins = np.asarray(cfg.bins, dtype=float)
    counts = _per_band(ctx, band_pair_counts, bands, cfg.exclude_flagged, bins)
    n_total = int(sum(c[0] for c in counts))
    per_bin_total = np.sum([c[1] for c in counts], axis=0)
    rate = 1.0 if n_total <= cfg.max_pairs else cfg.max_pairs / n_total
    parts = [p for p in _per_band(ctx, band_deltas, bands, cfg.exclude_flagged, rate, cfg.seed)
             if p is not None]
    if not parts:
        return {"note": "no measurement to compare"}
    from pandas.api.types import union_categoricals

    # one categorical band column for all bands (pd.concat would make it per-row strings)
    band = union_categoricals([p[0]["band"] for p in parts], sort_categories=True)
    pairs = pd.concat([p[0].drop(columns="band") for p in parts], ignore_index=True)
    pairs.insert(1, "band", band)
    wide = pd.concat([p[1] for p in parts], ignore_index=True)
    exp_bands = pd.concat([p[2] for p in parts], ignore_index=True)
    summary: dict[str, Any] = {"pairs": n_total, "pairs_used": len(pairs),
                               "pair_sampling_rate": rate, "measurements": len(wide),
                               "bands": len(bands)}
    model = None
    if "d_den" in pairs.columns and len(pairs):
        try:
            model = cmp.fit_error_model(pairs, exp_bands["expnum"], bins,
                                        min_pairs=cfg.min_fit_pairs, band_factors=cfg.band_factors)
        except ValueError as exc:
            summary["error_model"] = f"not fitted: {exc}"
        if model is not None:
            mf = model.to_frame()
            mf["global_scale"] = model.global_scale
            mf.to_csv(out / "error_model.csv", index=False)
            model.band_frame().to_csv(out / "error_model_bands.csv", index=False)
            (out / "error_model.json").write_text(json.dumps(model.to_dict(), indent=2))
            written = _per_band(ctx, band_calibrated_errors, bands, model.to_dict(),
                                str(out / "denoised_errors"))
            summary["calibrated_error_rows"] = int(sum(written))
            summary["error_model_global_scale"] = model.global_scale
            summary["error_model_band_factor"] = dict(model.band_factor)
            try:
                val, fold_models = cmp.cross_validate_error_model(
                    pairs, exp_bands, bins, folds=cfg.folds, seed=cfg.seed,
                    min_fit_pairs=cfg.min_fit_pairs, min_pairs=cfg.min_validate_pairs,
                    tolerance=cfg.tolerance, band_factors=cfg.band_factors)
            except ValueError as exc:
                summary["error_model_validation"] = f"not validated: {exc}"
            else:
                val.to_csv(out / "error_model_validation.csv", index=False)
                summary["error_model_folds"] = [list(m.fit_exposures) for m in fold_models]
                allrow = val[val["bin"] == "all"].iloc[0]
                summary["validation_sigma68_all"] = float(allrow["sigma68_den_model"])
                summary["validation_pairs"] = int(allrow["n_pairs"])
                judged = val[val["passed"].notna()]
                summary["validation_bins_passed"] = f"{int(judged['passed'].sum())}/{len(judged)}"
    by_bin = cmp.summarise(pairs, bins, model=model, measurements=wide)
    by_bin.insert(by_bin.columns.get_loc("n_pairs") + 1, "n_pairs_total",
                  np.r_[n_total, per_bin_total].astype(np.int64))
    by_bin.to_csv(out / "sigma68_by_bin.csv", index=False)
    (out / "sigma68_by_bin.json").write_text(by_bin.to_json(orient="records", indent=2))
    # the report's histograms need no more than a few 10^5 values
    hist_pairs = cmp.subsample_pairs(pairs, min(1.0, 500_000 / max(len(pairs), 1)), cfg.seed)
    np.savez_compressed(out / "df_values.npz", **cmp.df_arrays(hist_pairs, model))
    allb = by_bin[by_bin["bin"] == "all"].iloc[0]
    for col in ("sigma68_raw", "sigma68_den_rawerr", "sigma68_den_model",
                "median_ratio_den_raw"):
        if col in allb:
            summary[col] = float(allb[col])
    if ctx.truth_fluxes is not None:
        # simulations only: the truth table is per measurement anyway
        table = read_photometry(ctx.paths.photometry)
        truth = pd.read_parquet(ctx.truth_fluxes)
        if {"flux_true_aper_adu", "zp_true"} <= set(truth.columns):
            # Apertures hold only part of a source's light: compare with the source's own
            # noiseless flux inside its catalogue aperture, calibrated with the exact ZP.
            truth = truth.assign(flux_true_cal=truth["flux_true_aper_adu"] * truth["zp_true"])
        tc = cmp.truth_comparison(table, truth, bins)
        tc.to_csv(out / "truth_comparison.csv", index=False)
        for kind, g in tc[tc["bin"] == "all"].groupby("kind"):
            summary[f"truth_bias_{kind}"] = float(g["bias_median"].iloc[0])
            summary[f"truth_scatter_{kind}"] = float(g["scatter_sigma68"].iloc[0])
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    sampled = f" ({len(pairs)} used)" if rate < 1.0 else ""
    note = (f"{n_total} pairs{sampled}; σ68 raw {summary.get('sigma68_raw', np.nan):.2f}, "
            f"denoised/raw-errors {summary.get('sigma68_den_rawerr', np.nan):.2f}, "
            f"denoised/model-errors (cross-validated) "
            f"{summary.get('validation_sigma68_all', np.nan):.2f}")
    return {"note": note, **summary}
