"""The source-injection report section: figures, tables and its place in the report stage."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from pausdenoise.config import PipelineConfig
from pausdenoise.inject.metrics import ESTIMATORS, injection_tables
from pausdenoise.pipeline.context import Context
from pausdenoise.pipeline.stages.report import build_report
from pausdenoise.report.html import ReportWriter, render_html
from pausdenoise.report.injection import (
    fig_colour_bias,
    fig_injection_bias,
    fig_injection_scatter,
    fig_transfer,
    injection_section,
)
from pausdenoise.runstate import RunPaths, RunRecord

BANDS = ("NB455", "NB845", "NB615")


def _tables() -> dict[str, pd.DataFrame]:
    """Tables of 150 sources × 3 bands × 2 exposures; denoised flux 5 % low, 0.05 mag
    colour offset in the raw NB455 aperture flux."""
    rng = np.random.default_rng(4)
    src = pd.DataFrame({"ref_id": 1_000_000_000 + np.arange(150),
                        "I_auto": rng.uniform(17.0, 23.0, 150)})
    frames = pd.DataFrame([{"band": b, "expnum": 10 * j + e, "ccd": 3}
                           for j, b in enumerate(BANDS) for e in range(2)])
    t = src.merge(frames, how="cross")
    t["flux_true_adu"] = 300.0 * 10 ** (-0.4 * (t["I_auto"] - 23.0))
    t["flux_true_aper_adu"] = 0.85 * t["flux_true_adu"]
    t["flux_cr_var_adu2"] = 25.0**2
    n, fa = len(t), t["flux_true_aper_adu"].to_numpy()
    base = t[["ref_id", "expnum", "ccd", "band", "I_auto"]]
    off = np.where(t["band"] == "NB455", 10 ** (-0.4 * 0.05), 1.0)
    raw = base.assign(kind="raw", flux=off * fa + rng.normal(0, 30, n), flux_err=30.0, flags=0,
                      flux_prof=t["flux_true_adu"] + rng.normal(0, 25, n), flux_prof_err=25.0,
                      flags_prof=0)
    den = base.assign(kind="denoised", flux=0.95 * fa + rng.normal(0, 15, n), flux_err=30.0,
                      flags=0)
    null = pd.concat([raw.assign(flux=rng.normal(0, 30, n), flux_prof=rng.normal(0, 25, n)),
                      den.assign(flux=rng.normal(0, 15, n))], ignore_index=True)
    return injection_tables(pd.concat([raw, den], ignore_index=True), t, n_boot=100,
                            colour_bands=("NB455", "NB845"), null=null)


@pytest.fixture(scope="module")
def tables():
    return _tables()


def test_figures_show_every_estimator_and_band(tables):
    fig = fig_injection_bias(tables["bias"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["all", *sorted(BANDS)]
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert len(labels) == len(ESTIMATORS)
    sc = fig_injection_scatter(tables["bias"])
    assert "Cramér–Rao bound (total flux)" in sc.axes[0].get_legend_handles_labels()[1]
    # in a band without a raw offset, the corrected denoised aperture points sit at half the
    # raw aperture scatter / 0.95
    sc = fig_injection_scatter(tables["bias"], band="NB845")
    lines = {ln.get_label(): ln.get_ydata() for ln in sc.axes[0].get_lines()}
    ratio = (np.asarray(lines["denoised, aperture / T (cross-fitted)"])
             / np.asarray(lines["raw, aperture"]))
    assert np.allclose(ratio, 0.5 / 0.95, atol=0.12)
    col = fig_colour_bias(tables["colour"])
    assert [ax.get_title() for ax in col.axes] == ["median Δ(NB455-NB845) [mmag]",
                                                   "flux-scale Δ(NB455-NB845) [mmag]"]
    old_table = tables["colour"].drop(columns=["scale_colour_bias", "scale_ci_lo",
                                               "scale_ci_hi"])
    assert len(fig_colour_bias(old_table).axes) == 1  # tables written before the column
    assert len(fig_transfer(tables["transfer"]).axes) == 1


def test_section_writes_figures_and_tables(tables, tmp_path):
    w = ReportWriter(tmp_path / "report", dpi=50)
    sec = injection_section(tables, w)
    assert len(sec.figures) == 4 and len(sec.tables) == 4
    # the response table: the denoised flux's 5 % shrinkage, the raw estimators' none
    resp = sec.tables[3][1].set_index(["estimator", "bin"])["median_response_bias"]
    assert np.allclose(resp["denoised_aperture"].dropna(), -0.05, atol=0.01)
    assert (resp["raw_profile"].dropna().abs() < 0.01).all()
    for name in ("injection_bias", "injection_scatter", "injection_transfer",
                 "injection_colour"):
        png = (tmp_path / "report" / "figures" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    saved = pd.read_csv(tmp_path / "report" / "tables" / "injection_bias.csv")
    assert len(saved) == len(ESTIMATORS) * (len(BANDS) + 1) * 7
    shown = sec.tables[0][1]
    assert (shown["estimator"].unique() == np.array(ESTIMATORS)).all() and len(shown) == 28
    page = render_html("t", [sec])
    assert "Source injection" in page and "denoised_aperture: worst |median bias|" in page
    # the 5 % shrinkage of the denoised fluxes is in the summary
    den = tables["transfer"].query("band == 'all' and n > 0")["transfer"]
    assert np.allclose(den, 0.95, atol=0.02)
    # one band (the SAAO frames): no colour measured, so no colour figure and no warning
    one_band = {**tables, "colour": tables["colour"].assign(n=0)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sec = injection_section(one_band, ReportWriter(tmp_path / "one", dpi=50))
    assert len(sec.figures) == 3
    assert not (tmp_path / "one" / "figures" / "injection_colour.png").exists()


def _context(out) -> Context:
    cfg = PipelineConfig()
    paths = RunPaths(out)
    out.mkdir(parents=True, exist_ok=True)
    return Context(cfg, paths, None, RunRecord(paths))


def test_report_stage_adds_the_section_only_when_injection_ran(tables, tmp_path):
    ctx = _context(tmp_path / "run")
    page = build_report(ctx).read_text()
    assert "Source injection" not in page
    inj = tmp_path / "run" / "inject"
    inj.mkdir()
    tables["bias"].to_csv(inj / "bias_by_bin.csv", index=False)
    tables["transfer"].to_csv(inj / "transfer.csv", index=False)
    tables["colour"].to_csv(inj / "colour_bias.csv", index=False)
    page = build_report(ctx).read_text()
    assert "Source injection: flux bias against the truth" in page
    assert "Response to the injected light" not in page
    tables["response"].to_csv(inj / "response.csv", index=False)
    page = build_report(ctx).read_text()
    assert "Response to the injected light" in page
    (inj / "response.csv").unlink()
    assert (tmp_path / "run" / "report" / "figures" / "injection_colour.png").exists()
    # the bias table alone is enough
    (inj / "transfer.csv").unlink()
    (inj / "colour_bias.csv").unlink()
    page = build_report(ctx).read_text()
    assert "Source injection" in page
    assert not (tmp_path / "run" / "report" / "figures" / "injection_colour.png").exists()


def test_report_has_the_noise_model_per_band_when_ingest_wrote_it(tmp_path):
    """``ingest/noise_model.csv`` → a "Noise model per frame" section with one row per band
    (gain sources counted, medians) and the frames without a gain named."""
    from pausdenoise.pipeline.stages.report import noise_summary

    ctx = _context(tmp_path / "run")
    assert "Noise model per frame" not in build_report(ctx).read_text()
    table = pd.DataFrame({
        "frame": ["00000001_01", "00000002_01", "00000003_01"], "band": ["I", "I", "V"],
        "gain": [1.9, 2.1, np.nan], "gain_source": ["header", "fitted", "none"],
        "gain_fitted": [2.0, 2.1, np.nan], "gain_fitted_err": [0.04, 0.05, np.nan],
        "read_noise_fitted_e": [6.0, 7.0, np.nan], "gain_header": [1.9, np.nan, np.nan],
        "rdnoise": [6.5, 7.0, np.nan], "rdnoise_header": [6.5, np.nan, np.nan],
        "noise_corr_x": [0.01, 0.03, np.nan], "noise_corr_y": [-0.02, 0.12, np.nan]})
    (tmp_path / "run" / "ingest").mkdir(parents=True)
    table.to_csv(tmp_path / "run" / "ingest" / "noise_model.csv", index=False)
    page = build_report(ctx).read_text()
    assert "Noise model per frame" in page and "00000003_01" in page
    s = noise_summary(table).set_index("band")
    assert s.loc["I", "frames"] == 2 and s.loc["I", "gain_header"] == 1
    assert s.loc["I", "gain_fitted"] == 1 and s.loc["V", "gain_none"] == 1
    assert s.loc["I", "gain_median"] == pytest.approx(2.0)
    assert s.loc["I", "fitted_over_header"] == pytest.approx(2.0 / 1.9)
    assert s.loc["I", "corr_abs_max"] == pytest.approx(0.12)
    assert np.isnan(s.loc["V", "corr_abs_max"])
    assert np.isnan(s.loc["I", "exposures_over_header"])  # a table from before that fit
    # with the fit across exposures: its frames counted, its ratio to the header, its table
    table["gain_exposures"] = [1.8, 1.8, np.nan]
    table.loc[1, "gain_source"] = "exposures"
    table.to_csv(tmp_path / "run" / "ingest" / "noise_model.csv", index=False)
    pd.DataFrame({"ccd": [1], "n_exposures": [2], "gain": [1.8], "error": [""]}).to_csv(
        tmp_path / "run" / "ingest" / "noise_model_exposures.csv", index=False)
    s = noise_summary(table).set_index("band")
    assert s.loc["I", "gain_exposures"] == 1 and s.loc["I", "gain_fitted"] == 0
    assert s.loc["I", "exposures_over_header"] == pytest.approx(1.8 / 1.9)
    assert "Fitted across each CCD" in build_report(ctx).read_text()


def test_report_says_when_the_denoised_images_were_restored(tmp_path):
    """With ``denoise.restore_catalogue`` the evaluation and photometry sections say what it
    did to the denoised images (the figures would otherwise read as the network's alone)."""
    from pausdenoise.pipeline.stages.report import restoration_note

    ev = tmp_path / "run" / "evaluate"
    ev.mkdir(parents=True)
    pd.DataFrame({"reference": ["truth"], "kind": ["denoised"], "pixel_class": ["sky"],
                  "rms": [1.2]}).to_csv(ev / "pixel_summary.csv", index=False)
    ctx = _context(tmp_path / "run")
    assert "restored inside the catalogue apertures" not in build_report(ctx).read_text()
    on = ctx.cfg.model_copy(update={"denoise": ctx.cfg.denoise.model_copy(
        update={"restore_catalogue": True, "restore_grow": 3.0})})
    page = build_report(Context(on, ctx.paths, None, ctx.record)).read_text()
    assert "restored inside the catalogue apertures" in page and "grown by 3 px" in page
    assert restoration_note(ctx.cfg.denoise) == ""


def test_report_states_the_repeatability_floor_when_one_was_measured(tmp_path):
    """The photometry section says how large a floor the raw errors leave out (median and
    range over the bands) and shows the per-band table; without one it says nothing."""
    import json

    cmp_dir = tmp_path / "run" / "compare"
    cmp_dir.mkdir(parents=True)
    pd.DataFrame({"band": ["NB455", "NB615"], "n_pairs": [300, 0], "snr_min": 50.0,
                  "floor": [0.0086, np.nan]}).to_csv(cmp_dir / "repeatability_floor.csv",
                                                     index=False)
    (cmp_dir / "summary.json").write_text(json.dumps({}))
    ctx = _context(tmp_path / "run")
    page = build_report(ctx).read_text()
    assert "Repeatability floor of the raw fluxes per band" in page
    assert "plus a floor of" not in page
    (cmp_dir / "summary.json").write_text(json.dumps({"repeatability_floor": {
        "bands": 2, "median": 0.0086, "min": 0.004, "max": 0.013, "pairs": 300}}))
    page = build_report(ctx).read_text()
    assert "plus a floor of 0.86 % of the flux (0.40–1.30 % over 2 bands)" in page
    assert "the aperture fluxes are not corrected for the seeing" in page
    (cmp_dir / "summary.json").write_text(json.dumps({"repeatability_floor": {
        "bands": 1, "median": 0.0086, "min": 0.0086, "max": 0.0086, "pairs": 300},
        "aperture_correction": {"bands": ["NB455"], "median": 0.6}}))
    page = build_report(ctx).read_text()
    assert "plus a floor of 0.86 % of the flux, which" in page
    assert "not corrected for the seeing" not in page


def test_report_states_the_zero_point_check(tmp_path):
    """The header zero-points against the shared sources: against their stated errors, or,
    where the headers give none, against the scales' own."""
    import json

    cmp_dir = tmp_path / "run" / "compare"
    cmp_dir.mkdir(parents=True)
    pd.DataFrame({"band": "NB455", "expnum": range(8), "ccd": 1, "scale": 1.0,
                  "zp_rel_err": 0.01, "pull": 0.0}).to_csv(cmp_dir / "zero_point_check.csv",
                                                             index=False)
    check = {"bands": ["NB455"], "frames": 8, "scatter": 0.0126, "stated": 0.01,
             "pulls": 1.15}
    (cmp_dir / "summary.json").write_text(json.dumps({
        "zero_point_check": check, "aperture_correction": {"bands": ["NB455"], "median": 0.6}}))
    ctx = _context(tmp_path / "run")
    page = build_report(ctx).read_text()
    assert ("the header zero-points of 8 frames scatter by 1.26 % (σ68), 1.15 times their "
            "stated errors (median 1.00 %) and the scales' own (zero_point_check table)") in page
    (cmp_dir / "summary.json").write_text(json.dumps({
        "zero_point_check": {**check, "stated": 0.0}}))
    page = build_report(ctx).read_text()
    assert "1.15 times the scales' own errors (the headers give no zero-point error)" in page
    assert "not corrected for the seeing" in page
