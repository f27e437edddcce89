"""Compare stage runner: cross-exposure Δf statistics, the denoised error model, truth.

Reads the photometry Parquet of the run and writes into ``<run>/compare/``:

- ``sigma68_by_bin.csv`` (+ ``.json``): per I_auto bin and overall, pair counts, σ68 of Δf
  for raw fluxes, denoised fluxes with raw errors and with the calibrated error model, and
  the median denoised/raw flux ratio;
- ``error_model.csv`` / ``error_model_bands.csv``: the error model σ_den = s(I_auto)·g(band)·σ_raw
  fitted on all pairs: s per bin, g per band (:class:`pausdenoise.compare.ErrorModel`);
- ``error_model_validation.csv``: σ68 with model errors on held-out pairs, by k-fold
  cross-validation over exposures stratified by band (each pair judged by a model fitted
  without either of its exposures), overall, per bin and per band, with pass/fail against
  1.00 ± tolerance for rows with enough pairs;
- ``truth_comparison.csv``: flux bias and scatter against the truth (simulation only): the
  true flux is the source's own noiseless flux inside its aperture (``flux_true_aper_adu``
  × the exact zero-point), so aperture losses do not pose as bias;
- ``df_values.npz``: the Δf values per flavour, for the report's histograms.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pausdenoise.pipeline.core import Context


def run_compare(ctx: Context) -> dict[str, Any]:
    """Compute and write the comparison tables; returns the stage summary."""
    from pausdenoise import compare as cmp
    from pausdenoise.photometry import read_photometry

    cfg = ctx.cfg.compare
    table = read_photometry(ctx.paths.photometry)
    if table.empty:
        return {"note": "no photometry to compare"}
    out = ctx.paths.compare
    out.mkdir(parents=True, exist_ok=True)
    bins = np.asarray(cfg.bins, dtype=float)
    wide = cmp.widen(table, exclude_flags=cfg.exclude_flagged)
    pairs = cmp.make_pairs(wide)
    summary: dict[str, Any] = {"pairs": len(pairs), "measurements": len(wide)}
    model = None
    if "f_den_1" in pairs.columns and len(pairs):
        exp_bands = wide[["expnum", "band"]].drop_duplicates("expnum")
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
    by_bin.to_csv(out / "sigma68_by_bin.csv", index=False)
    (out / "sigma68_by_bin.json").write_text(by_bin.to_json(orient="records", indent=2))
    np.savez_compressed(out / "df_values.npz", **cmp.df_arrays(pairs, model))
    allb = by_bin[by_bin["bin"] == "all"].iloc[0]
    for col in ("sigma68_raw", "sigma68_den_rawerr", "sigma68_den_model",
                "median_ratio_den_raw"):
        if col in allb:
            summary[col] = float(allb[col])
    if ctx.truth_fluxes is not None:
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
    note = (f"{len(pairs)} pairs; σ68 raw {summary.get('sigma68_raw', np.nan):.2f}, "
            f"denoised/raw-errors {summary.get('sigma68_den_rawerr', np.nan):.2f}, "
            f"denoised/model-errors (cross-validated) {summary.get('validation_sigma68_all', np.nan):.2f}")
    return {"note": note, **summary}
