"""Report stage: figures and the self-contained HTML report of a run directory.

Reads what the other stages wrote (``run.json``, ``model/history.csv``, ``evaluate/``,
``compare/``, ``ingest/noise_model.csv``, ``inject/`` when source injection ran, and the
cGAN's outputs when ``gan.enabled``) and writes ``<run>/report/index.html`` (figures
embedded), every figure as a PNG under ``report/figures/`` and the tables as CSV/JSON under
``report/tables/``. Sections whose inputs are missing (a stage not run) are left out, not
faked. The figures themselves are drawn by :mod:`pausdenoise.report`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise.denoise.config import DenoiseConfig
from pausdenoise.inject.metrics import TABLE_FILES
from pausdenoise.pipeline.context import Context
from pausdenoise.pipeline.stages import gan
from pausdenoise.report import figures as rf
from pausdenoise.report.depth import depth_section
from pausdenoise.report.html import ReportSection, ReportWriter, render_html
from pausdenoise.report.injection import injection_section
from pausdenoise.report.versions import software_versions

__all__ = ["SIGMA68_COLUMNS", "build_report", "noise_summary", "restoration_note", "run"]

#: legend label → column of ``sigma68_by_bin.csv`` in the σ68 figure
SIGMA68_COLUMNS = {
    "raw fluxes, raw errors": "sigma68_raw",
    "denoised fluxes, raw errors": "sigma68_den_rawerr",
    "denoised fluxes, calibrated errors, fitted": "sigma68_den_model",
}

_Figures = list[tuple[str, bytes]]
_Tables = list[tuple[str, pd.DataFrame]]


def restoration_note(config: DenoiseConfig) -> str:
    """Say, when it was on, what the catalogue restoration did to the denoised images.

    Parameters
    ----------
    config : DenoiseConfig
        The run's denoise settings.

    Returns
    -------
    str
        One sentence (HTML), or ``""`` when ``restore_catalogue`` is off.
    """
    if not config.restore_catalogue:
        return ""
    return (" The denoised images were restored inside the catalogue apertures "
            "(<code>denoise.restore_catalogue</code>: apertures grown by "
            f"{config.restore_grow:g} px, low pass σ = {config.restore_sigma:g} px): there "
            "they carry the raw image's local flux and most of its noise, so denoised "
            "aperture fluxes keep the raw expectation and their raw errors are nearly right, "
            "and sky pixels near sources keep part of the raw noise.")


def _bins_only(t: pd.DataFrame) -> pd.DataFrame:
    return t[t["bin"] != "all"] if "bin" in t else t


def _images_section(ev_dir: Path, w: ReportWriter) -> ReportSection | None:
    """Stamps, a line profile and residual maps of held-out frames (truth only).

    Returns
    -------
    ReportSection or None
        None without ``evaluate/stamps.npz``.
    """
    if not (ev_dir / "stamps.npz").exists():
        return None
    z = np.load(ev_dir / "stamps.npz")
    stamps = [
        {"raw": z["raw"][i], "denoised": z["denoised"][i], "truth": z["truth"][i],
         "label": str(z["label"][i])}
        for i in range(len(z["raw"]))
    ]
    figs = [("Galaxy stamps from held-out exposures: raw, denoised, noiseless truth "
             "(asinh stretch, shared per row).", w.figure("stamps", rf.fig_stamps(stamps)))]
    s = stamps[len(stamps) // 2]
    row = s["raw"].shape[0] // 2
    figs.append(("Line profile through the centre of a galaxy (raw, denoised, truth).",
                 w.figure("profile", rf.fig_profile(s["raw"], s["denoised"], s["truth"],
                                                    row, s["label"].split("\n")[0]))))
    if (ev_dir / "residuals.npz").exists():
        r = np.load(ev_dir / "residuals.npz")
        figs.append(("Residual maps against the noiseless truth (central cutout of a "
                     "held-out frame); structure in the denoised map is signal the network "
                     "removed or invented.",
                     w.figure("residuals", rf.fig_residuals(
                         r["raw"], r["denoised"], float(r["sigma"]), str(r["frame"])))))
    return ReportSection("Images: raw vs denoised", figures=figs)


def _evaluation_section(ev_dir: Path, w: ReportWriter, note: str = "") -> ReportSection | None:
    """Pixel metrics, skipped frames and detection completeness.

    Returns
    -------
    ReportSection or None
        None when the evaluate stage wrote none of them.
    """
    tables: _Tables = []
    if (ev_dir / "pixel_summary.csv").exists():
        pix = pd.read_csv(ev_dir / "pixel_summary.csv")
        caption = ("Pixel metrics against the noiseless truth (held-out exposures; RMS in ADU, "
                   "MSE in ADU², PSNR in dB)")
        if "reference" in pix and (pix["reference"] != "truth").any():
            caption += ("; rows with reference = independent-exposure have no truth: MSE to "
                        "the truth estimated as MSE to independent exposures of the band minus "
                        "their noise variance from exposure differences (mse_se: its standard "
                        "error; source-pixel values are biased by PSF differences between "
                        "exposures and by resampling, see the README)")
        tables.append((caption, w.table("pixel_summary", pix)))
    if (ev_dir / "skipped.csv").exists():
        skipped = pd.read_csv(ev_dir / "skipped.csv")
        if len(skipped):
            tables.append(("Frames not evaluated, and why", w.table("evaluate_skipped", skipped)))
    figs: _Figures = []
    if (ev_dir / "completeness.csv").exists():
        comp = w.table("completeness", pd.read_csv(ev_dir / "completeness.csv"))
        figs.append(("Detection completeness at one fixed threshold (3σ of the smoothed raw "
                     "noise) vs true magnitude.",
                     w.figure("completeness", rf.fig_completeness(
                         {k: g for k, g in comp.groupby("kind")}))))
        det = json.loads((ev_dir / "detection_summary.json").read_text())
        tables.append(("Completeness limits and purity", w.table("detection_summary", pd.DataFrame(
            [{"kind": k, **v} for k, v in det.items()]))))
    if not (tables or figs):
        return None
    return ReportSection("Evaluation against the truth (or independent exposures)",
                         text=note.strip(), figures=figs, tables=tables)


def _sigma68_figures(cmp_dir: Path, w: ReportWriter, figs: _Figures, tables: _Tables) -> None:
    """σ68 and flux-bias figures, with the σ68 and truth tables."""
    t = w.table("sigma68_by_bin", pd.read_csv(cmp_dir / "sigma68_by_bin.csv"))
    tplot, cols68 = _bins_only(t), dict(SIGMA68_COLUMNS)
    if (cmp_dir / "error_model_validation.csv").exists():
        # the calibrated errors as judged on exposures the model was not fitted on
        cv = pd.read_csv(cmp_dir / "error_model_validation.csv")[["bin", "sigma68_den_model"]]
        tplot = tplot.merge(cv.rename(columns={"sigma68_den_model": "sigma68_den_model_cv"}),
                            on="bin", how="left")
        cols68["denoised fluxes, calibrated errors, cross-validated"] = "sigma68_den_model_cv"
    figs.append(("σ68 of df per I_auto bin; the band marks 1.00 ± 0.05. The calibrated "
                 "errors are shown as fitted (on all pairs) and cross-validated (each pair "
                 "judged by a model fitted without its exposures).",
                 w.figure("sigma68", rf.fig_sigma68(tplot, cols68))))
    tb = _bins_only(t).assign(ratio_minus_1=lambda d: d["median_ratio_den_raw"] - 1.0)
    cols = {"median denoised/raw − 1": "ratio_minus_1"}
    ylabel = "flux bias"
    if (cmp_dir / "truth_comparison.csv").exists():
        tc = w.table("truth_comparison", pd.read_csv(cmp_dir / "truth_comparison.csv"))
        for kind, g in _bins_only(tc).groupby("kind"):
            tb = tb.merge(g[["bin", "bias_median"]].rename(
                columns={"bias_median": f"bias_{kind}"}), on="bin", how="left")
            cols[f"median (f − f_true)/f_true, {kind}"] = f"bias_{kind}"
        tables.append(("Flux accuracy against the truth", tc))
    figs.append(("Flux bias per I_auto bin.",
                 w.figure("flux_bias", rf.fig_flux_bias(tb, cols, ylabel))))
    tables.insert(0, ("σ68 of df and flux ratio per I_auto bin", t))


def _apcor_text(cmp_dir: Path) -> str:
    """Say that the compared fluxes are aperture-corrected, when they are.

    Returns
    -------
    str
        A sentence with the bands and the median aperture share; '' otherwise.
    """
    path = cmp_dir / "summary.json"
    ac = json.loads(path.read_text()).get("aperture_correction") if path.exists() else None
    if not ac:
        return ""
    return (f" Fluxes of {', '.join(ac['bands'])} are aperture-corrected: the light the "
            "neighbours put into each aperture (from their profile fluxes) is taken out and the "
            "rest divided by the share of the source's catalogue profile, convolved with its "
            f"exposure's PSF, that its aperture catches (median {ac['median']:.2f}), so they "
            "are the sources' own total fluxes and neither the seeing of an exposure nor the "
            "crowding enters df; the truth comparison is against the true total flux.")


def _floor_text(cmp_dir: Path) -> str:
    """Say how large a repeatability floor the raw errors leave out, when one was measured.

    Returns
    -------
    str
        A sentence with the median floor over the bands; '' otherwise.
    """
    path = cmp_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    fl = summary.get("repeatability_floor")
    if not fl:
        return ""
    spread = (f" ({100 * fl['min']:.2f}–{100 * fl['max']:.2f} % over {fl['bands']} bands)"
              if fl["bands"] > 1 else "")
    return (f" The brightest pairs repeat to within their raw errors plus a floor of "
            f"{100 * fl['median']:.2f} % of the flux{spread}, which the raw errors do not "
            f"hold (repeatability floor table{_uncorrected(summary)}).")


def _uncorrected(summary: dict[str, Any]) -> str:
    """Say that the fluxes keep the seeing's aperture losses, when nothing corrected them.

    Returns
    -------
    str
        A clause for a parenthesis ('' when the aperture corrections were on).
    """
    if summary.get("aperture_correction"):
        return ""
    return ("; the aperture fluxes are not corrected for the seeing "
            "(compare.aperture_correction), so its aperture losses are in it")


def _zero_point_check_text(cmp_dir: Path) -> str:
    """Say how far the header zero-points are off against the sources the exposures share.

    Returns
    -------
    str
        A sentence with their scatter and pulls; '' without the check.
    """
    path = cmp_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    zc = summary.get("zero_point_check")
    if not zc:
        return ""
    pulls = ""
    if np.isfinite(zc.get("pulls", np.nan)):
        pulls = (f", {zc['pulls']:.2f} times their stated errors (median "
                 f"{100 * zc['stated']:.2f} %) and the scales' own" if zc["stated"] > 0 else
                 f", {zc['pulls']:.2f} times the scales' own errors (the headers give no "
                 "zero-point error)")
    return (f" Against the sources their exposures share, the header zero-points of "
            f"{zc['frames']} frames scatter by {100 * zc['scatter']:.2f} % (σ68){pulls} "
            f"(zero_point_check table{_uncorrected(summary)}).")


def _zero_point_text(cmp_dir: Path) -> str:
    """Say how far the header zero-points are off against the simulation's exact ones.

    Returns
    -------
    str
        A sentence with the frames' zero-point scatter and pulls; '' without them.
    """
    path = cmp_dir / "summary.json"
    s = json.loads(path.read_text()) if path.exists() else {}
    if not np.isfinite(s.get("truth_zp_pulls", np.nan)):
        return ""
    return (f" The header zero-points of the {s['truth_zp_frames']} frames are off by "
            f"{100 * s['truth_zp_scatter']:.1f} % (σ68), {s['truth_zp_pulls']:.2f} times "
            "their stated errors; the bright bins' pulls against the truth include this, "
            "and pull_sigma68_exact_zp shows the photometry with the exact zero-points.")


#: The compare stage's tables the photometry section shows, in order: file stem, caption.
_COMPARE_TABLES = (
    ("error_model_validation",
     "Calibrated denoised errors, cross-validated over exposures (folds stratified by band; "
     "pass: |σ68 − 1| ≤ tolerance with enough pairs)"),
    ("repeatability_floor",
     "Repeatability floor of the raw fluxes per band: the relative error ε that, added as "
     "ε·f to every raw error, brings σ68 of df to 1 over the band's pairs of S/N ≥ snr_min "
     "(0: the raw errors hold there; lo/hi: 68 % interval over resampled sources)"),
    ("zero_point_check",
     "The header zero-points against the sources the exposures share: each frame's flux "
     "scale relative to its band's other frames (1 for right zero-points), fitted as the "
     "relative zero-points are but not applied; pull = ln scale over the stated and the "
     "fitted errors"),
    ("relative_zp",
     "Relative zero-points of uncalibrated exposures, fitted from the sources they share: "
     "every flux and error of a frame was divided by its scale before pairing (NaN: the "
     "frame had too few sources and was left out)"),
    ("error_model", "Error model σ_den = s(I_auto)·g(band)·σ_raw: s per I_auto bin"),
    ("error_model_bands", "Error model: g per band"),
)


def _photometry_section(cmp_dir: Path, w: ReportWriter, note: str = "") -> ReportSection | None:
    """Δf histograms, σ68 and flux bias per bin, and the error model tables.

    Returns
    -------
    ReportSection or None
        None when the compare stage wrote none of them.
    """
    figs: _Figures = []
    tables: _Tables = []
    if (cmp_dir / "df_values.npz").exists():
        z = np.load(cmp_dir / "df_values.npz")
        labels = {"raw": "raw fluxes, raw errors",
                  "denoised_rawerr": "denoised fluxes, raw errors",
                  "denoised_model": "denoised fluxes, calibrated errors"}
        figs.append(("df = (f1 − f2)/√(σ1² + σ2²) for every pair of exposures of a source "
                     "in a band, with N(0, 1).",
                     w.figure("df_histograms", rf.fig_df_histograms(
                         {labels[k]: z[k] for k in labels if k in z}))))
    if (cmp_dir / "sigma68_by_bin.csv").exists():
        _sigma68_figures(cmp_dir, w, figs, tables)
    for name, caption in _COMPARE_TABLES:
        if (cmp_dir / f"{name}.csv").exists():
            tables.append((caption, w.table(name, pd.read_csv(cmp_dir / f"{name}.csv"))))
    if not (figs or tables):
        return None
    return ReportSection(
        "Photometry: the same galaxies in different exposures",
        text="Forced elliptical-aperture photometry on raw and denoised images; pairs "
             "of exposures of the same source and band give df, whose σ68 should be 1 "
             "when the errors are right." + _apcor_text(cmp_dir)
             + _floor_text(cmp_dir) + _zero_point_check_text(cmp_dir)
             + _zero_point_text(cmp_dir) + note,
        figures=figs, tables=tables)


def _depth_section(ev_dir: Path, w: ReportWriter) -> ReportSection | None:
    """Show detection depth at equal purity per image kind.

    Returns
    -------
    ReportSection or None
        None without ``evaluate/depth.csv``.
    """
    if not (ev_dir / "depth.csv").exists():
        return None
    names = {"depth": "depth.csv", "sweep": "depth_sweep.csv",
             "curves": "depth_completeness.csv", "gains": "depth_gain.csv"}
    return depth_section({k: pd.read_csv(ev_dir / n) for k, n in names.items()
                          if (ev_dir / n).exists()}, w)


def _injection_section(inj_dir: Path, w: ReportWriter) -> ReportSection | None:
    """Flux bias, scatter, transfer and colour bias of the injected sources.

    Returns
    -------
    ReportSection or None
        None without ``inject/bias_by_bin.csv`` (the inject stage not run).
    """
    if not (inj_dir / "bias_by_bin.csv").exists():
        return None
    tables = {"bias": pd.read_csv(inj_dir / "bias_by_bin.csv")}
    for key, stem in TABLE_FILES.items():
        if key != "bias" and (inj_dir / f"{stem}.csv").exists():
            tables[key] = pd.read_csv(inj_dir / f"{stem}.csv")
    return injection_section(tables, w)


def noise_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Condense the per-frame noise table (``ingest/noise_model.csv``) to one row per band.

    Parameters
    ----------
    table : DataFrame
        :func:`pausdenoise.ingest.noise.noise_table` (gains in e⁻/ADU, read noise in e⁻,
        lag-1 correlations dimensionless).

    Returns
    -------
    DataFrame
        ``band``, ``frames``, frames per gain source (``header``, ``exposures``, ``fitted``,
        ``sky``, ``none``), the medians of the gain in force, of the frame's own fitted gain and of
        the gain fitted across the CCD's exposures over the header's (where both exist; NaN
        in tables written before the fit across exposures existed), of the fitted read
        noise and of the correlations along x and y, the largest |correlation|, and the
        frames whose correlation in force is the high-frequency measurement
        (``corr_high_frequency``: the tiles saw sources; 0 in older tables).
    """
    rows = []
    for band, g in table.groupby("band", sort=True):
        src = g["gain_source"].fillna("none")
        ratio = (g["gain_fitted"] / g["gain_header"]).replace([np.inf, -np.inf], np.nan)
        across = g["gain_exposures"] if "gain_exposures" in g else pd.Series(np.nan, g.index)
        ratio_across = (across / g["gain_header"]).replace([np.inf, -np.inf], np.nan)
        corr = g[["noise_corr_x", "noise_corr_y"]].abs().to_numpy(dtype=float)
        rows.append({
            "band": band, "frames": len(g),
            **{f"gain_{k}": int((src == k).sum())
               for k in ("header", "exposures", "fitted", "sky", "none")},
            "gain_median": float(g["gain"].median()),
            "fitted_over_header": float(ratio.median()),
            "exposures_over_header": float(ratio_across.median()),
            "read_noise_fitted_e": float(g["read_noise_fitted_e"].median()),
            "corr_x_median": float(g["noise_corr_x"].median()),
            "corr_y_median": float(g["noise_corr_y"].median()),
            "corr_abs_max": float(np.nanmax(corr)) if np.isfinite(corr).any() else np.nan,
            "corr_high_frequency": int((g.get("noise_corr_method", pd.Series(dtype=str))
                                        == "high-frequency").sum()),
        })
    return pd.DataFrame(rows)


def _noise_section(out: Path, w: ReportWriter) -> ReportSection | None:
    """Summarise per band the noise model measured per frame at ingest.

    Returns
    -------
    ReportSection or None
        None without ``ingest/noise_model.csv``.
    """
    path = out / "ingest" / "noise_model.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path)
    if table.empty:
        return None
    unfit = table[table["gain_source"].fillna("none") == "none"]
    text = (f"Gain, read noise and the lag-1 noise correlation fitted from each frame's own "
            f"pixels at ingest ({len(table)} frames; every frame in "
            f"<code>ingest/noise_model.csv</code>), and across each CCD's exposures (sky "
            f"variance against sky level; <code>ingest/noise_model_exposures.csv</code>): on "
            f"crowded fields a frame's own fit gives too small a gain. Gain in force: from "
            f"the header where it has one (<code>ingest.noise_model: auto</code>), else the "
            f"fit across exposures, else the frame's own where its sky's variance allows it, "
            f"else the gain that gives its sky's variance (<code>sky</code>: with the "
            f"header's read noise, else a lower bound). The noise correlation is measured in "
            f"small tiles, or at the highest spatial frequencies where the tiles see sources "
            f"(crowded fields: <code>corr_high_frequency</code> frames). Noise correlated "
            f"beyond <code>train.correlation_threshold</code> widens the training blind spot.")
    if len(unfit):
        text += (f" <b>{len(unfit)} frame(s) have no gain</b> (no header value and no fit): "
                 + ", ".join(unfit["frame"].astype(str).head(20)) + ".")
    tables = [("Per band (medians)", w.table("noise_model", noise_summary(table)))]
    across = out / "ingest" / "noise_model_exposures.csv"
    if across.exists():
        fits = pd.read_csv(across)
        if not fits.empty:
            tables.append(("Fitted across each CCD's exposures (gain e⁻/ADU, read noise e⁻)",
                           w.table("noise_model_exposures", fits)))
    return ReportSection("Noise model per frame", text=text, tables=tables)


def _training_section(ctx: Context, w: ReportWriter, timings: dict[str, Any]) -> ReportSection:
    """Training loss, wall time per stage, and the stages of the run.

    Returns
    -------
    ReportSection
        Always present (the stage table at least).
    """
    figs: _Figures = []
    hist = ctx.paths.model_dir / "history.csv"
    if hist.exists():
        figs.append(("Noise2Void training: loss at the blind-spot pixels per epoch.",
                     w.figure("training_loss", rf.fig_loss(pd.read_csv(hist)))))
    if timings:
        figs.append(("Wall time per stage of this run.",
                     w.figure("timings", rf.fig_timings(timings))))
    stage_notes = pd.DataFrame(
        [{"stage": k, "status": v.get("status"), "seconds": v.get("seconds"),
          "summary": v.get("note", "")} for k, v in ctx.record.data["stages"].items()]
    )
    return ReportSection("Training and throughput", figures=figs,
                         tables=[("Stages of this run", w.table("stages", stage_notes))])


def build_report(ctx: Context) -> Path:
    """Write the report of run directory ``ctx.paths.out`` (a previous one is replaced).

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    Path
        The HTML page, ``<run>/report/index.html``.
    """
    root = ctx.paths.report
    if root.exists():
        shutil.rmtree(root)
    w = ReportWriter(root, ctx.cfg.report.dpi)
    note = restoration_note(ctx.cfg.denoise)
    sections = [_images_section(ctx.paths.evaluate, w),
                _evaluation_section(ctx.paths.evaluate, w, note),
                _depth_section(ctx.paths.evaluate, w),
                _photometry_section(ctx.paths.compare, w, note),
                _injection_section(ctx.paths.inject, w),
                _noise_section(ctx.paths.out, w)]
    if ctx.cfg.gan.enabled:
        sections.append(gan.report_section(ctx, w))
    timings = ctx.record.timings()
    sections.append(_training_section(ctx, w, timings))
    html = render_html(
        ctx.cfg.report.title,
        [s for s in sections if s is not None],
        config=ctx.record.data.get("config"),
        versions=ctx.record.data.get("versions") or software_versions(),
        timings=timings,
    )
    out = root / "index.html"
    out.write_text(html)
    return out


def run(ctx: Context) -> dict[str, Any]:
    """Write the report; the summary's note is the HTML page's path.

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        ``note`` and ``path``: the HTML page.
    """
    path = build_report(ctx)
    return {"note": str(path), "path": str(path)}
