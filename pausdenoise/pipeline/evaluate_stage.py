"""Evaluate stage runner: metrics of raw and denoised frames against the simulation's truth.

Frames are read one at a time (out of core). Evaluated frames are the exposures held out of
training (``holdout_exposures_per_band``), or every frame when none is held out. Writes into
``<run>/evaluate/``:

- ``pixel_metrics.csv``: per frame, image kind (raw | denoised) and pixel class (sky |
  source): n_pixels, rms [ADU], psnr_db, ssim;
- ``pixel_summary.csv``: the same pooled over frames, with the RMS reduction factor
  raw/denoised per class;
- ``completeness.csv``: detection completeness per true-magnitude bin for raw and denoised,
  ``detection_summary.json``: 50 %/90 % completeness magnitudes and purity;
- ``stamps.npz``: cutouts (raw, denoised, truth) of galaxies at several magnitudes for the
  report, with their labels;
- ``residuals.npz``: raw − truth and denoised − truth over a central cutout of one frame.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pausdenoise import evaluate as ev

if TYPE_CHECKING:
    from pausdenoise.pipeline.core import Context


def _frame_arrays(store, frame: str) -> dict[str, np.ndarray]:
    from pausdenoise import store as st

    names = st.frame_arrays(store, frame)
    return {n: np.asarray(st.open_frame(store, frame, n)) for n in names
            if n in ("image", "mask", "truth", "denoised")}


def _source_mask(rows: pd.DataFrame, shape, pixel_scale: float) -> np.ndarray:
    return ev.aperture_pixel_mask(
        shape,
        rows["aperture_x"].to_numpy(),
        rows["aperture_y"].to_numpy(),
        rows["aperture_a"].to_numpy() / pixel_scale,
        rows["aperture_b"].to_numpy() / pixel_scale,
        -np.deg2rad(rows["aperture_theta"].to_numpy()),  # PAUS sign convention
    )


def _pool(metrics: pd.DataFrame) -> pd.DataFrame:
    """Pool per-frame RMS over frames (pixel-weighted), PSNR/SSIM as pixel-weighted means."""
    rows = []
    for (kind, cls), g in metrics.groupby(["kind", "pixel_class"]):
        n = g["n_pixels"].to_numpy(float)
        w = n / n.sum() if n.sum() else n
        rows.append({
            "kind": kind,
            "pixel_class": cls,
            "n_pixels": int(n.sum()),
            "rms": float(np.sqrt(np.sum(w * g["rms"].to_numpy() ** 2))),
            "psnr_db": float(np.sum(w * g["psnr_db"].to_numpy())),
            "ssim": float(np.sum(w * g["ssim"].to_numpy())),
        })
    out = pd.DataFrame(rows)
    if {"raw", "denoised"} <= set(out["kind"]):
        piv = out.pivot(index="pixel_class", columns="kind", values="rms")
        out["rms_reduction"] = out["pixel_class"].map(piv["raw"] / piv["denoised"])
    return out


def run_evaluate(ctx: Context) -> dict[str, Any]:
    """Compute and write the evaluation tables; returns the stage summary."""
    from pausdenoise import store as st
    from pausdenoise.pipeline.core import split_holdout

    cfg = ctx.cfg.evaluate
    pixel_scale = ctx.cfg.photometry.pixel_scale
    exposures = st.exposure_table(ctx.store)
    _, held = split_holdout(exposures, ctx.cfg.holdout_exposures_per_band)
    frames = held or exposures["frame"].tolist()
    catalogue = pd.read_parquet(ctx.catalogue_path) if ctx.catalogue_path.exists() else None
    truth_tab = pd.read_parquet(ctx.truth_fluxes) if ctx.truth_fluxes else None
    out_dir = ctx.paths.evaluate
    out_dir.mkdir(parents=True, exist_ok=True)

    metric_rows, found = [], {"raw": [], "denoised": []}
    true_mags, purity_counts = [], {"raw": [0, 0], "denoised": [0, 0]}
    stamps: list[dict[str, Any]] = []
    evaluated = 0
    for frame in frames:
        arr = _frame_arrays(ctx.store, frame)
        if "truth" not in arr or "denoised" not in arr:
            continue
        evaluated += 1
        attrs = st.frame_attrs(ctx.store, frame)
        image, truth, den = arr["image"], arr["truth"], arr["denoised"]
        mask = arr.get("mask", np.zeros(image.shape, np.uint8))
        good = (mask == 0) & np.isfinite(image)
        sky = float(np.median(truth[good]))
        resid = (image - truth)[good]
        sigma = float(1.4826 * np.median(np.abs(resid - np.median(resid))))
        classes = {"sky": ev.sky_pixel_mask(truth, sky, sigma, good, cfg.sky_tolerance)}
        rows = None
        if catalogue is not None:
            rows = catalogue[(catalogue["expnum"] == attrs["expnum"])
                             & (catalogue["ccd"] == attrs["ccd"])]
            classes["source"] = _source_mask(rows, image.shape, pixel_scale) & good
        if evaluated == 1:  # residual maps of the first evaluated frame, central cutout
            h = min(128, image.shape[0] // 2, image.shape[1] // 2)
            cy, cx = image.shape[0] // 2, image.shape[1] // 2
            sl = (slice(cy - h, cy + h), slice(cx - h, cx + h))
            res_raw = np.where(good, image - truth, np.nan)[sl]  # masked pixels blank
            res_den = np.where(good, den - truth, np.nan)[sl]
            np.savez_compressed(out_dir / "residuals.npz", raw=res_raw, denoised=res_den,
                                sigma=sigma, frame=frame)
        for kind, est in (("raw", image), ("denoised", den)):
            m = ev.pixel_metrics(est, truth, classes, ssim_sigma=cfg.ssim_sigma)
            m.insert(0, "kind", kind)
            m.insert(0, "frame", frame)
            metric_rows.append(m)
        if truth_tab is not None:
            t = truth_tab[(truth_tab["expnum"] == attrs["expnum"])
                          & (truth_tab["ccd"] == attrs["ccd"])]
            t = t.rename(columns={"x_true": "x", "y_true": "y"})
            thr = cfg.detection_threshold * ev.smoothed_noise_sigma(sigma, cfg.detection_fwhm)
            true_mags.append(t["mag_true"].to_numpy())
            for kind, est in (("raw", image), ("denoised", den)):
                det = ev.detect(est, sky, thr, mask, cfg)
                f, real = ev.match_detections(det, t, cfg.match_radius)
                found[kind].append(f)
                purity_counts[kind][0] += int(real.sum())
                purity_counts[kind][1] += len(real)
            if len(stamps) < ctx.cfg.report.n_stamps and rows is not None:
                stamps += _pick_stamps(t, image, den, truth, ctx.cfg.report.stamp_size,
                                       ctx.cfg.report.n_stamps - len(stamps), frame)
    if not evaluated:
        return {"note": "no frame with truth and denoised arrays: nothing to evaluate"}

    metrics = pd.concat(metric_rows, ignore_index=True)
    metrics.to_csv(out_dir / "pixel_metrics.csv", index=False)
    pooled = _pool(metrics)
    pooled.to_csv(out_dir / "pixel_summary.csv", index=False)
    summary: dict[str, Any] = {"frames_evaluated": evaluated}
    for _, r in pooled[pooled["kind"] == "denoised"].iterrows():
        summary[f"rms_reduction_{r['pixel_class']}"] = float(r.get("rms_reduction", np.nan))
    if true_mags:
        mags = np.concatenate(true_mags)
        tables = []
        det_summary = {}
        for kind in ("raw", "denoised"):
            tab = ev.completeness_table(mags, np.concatenate(found[kind]), cfg.mag_bins)
            tab.insert(0, "kind", kind)
            tables.append(tab)
            real, total = purity_counts[kind]
            det_summary[kind] = {
                "m50": ev.completeness_limit(tab, 0.5),
                "m90": ev.completeness_limit(tab, 0.9),
                "purity": real / total if total else float("nan"),
                "detections": total,
            }
        pd.concat(tables, ignore_index=True).to_csv(out_dir / "completeness.csv", index=False)
        (out_dir / "detection_summary.json").write_text(json.dumps(det_summary, indent=2))
        summary["detection"] = det_summary
    if stamps:
        np.savez_compressed(
            out_dir / "stamps.npz",
            raw=np.stack([s["raw"] for s in stamps]),
            denoised=np.stack([s["denoised"] for s in stamps]),
            truth=np.stack([s["truth"] for s in stamps]),
            label=np.array([s["label"] for s in stamps]),
        )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    red = {k: v for k, v in summary.items() if k.startswith("rms_reduction")}
    note = ", ".join(f"{k.removeprefix('rms_reduction_')} RMS ÷{v:.2f}" for k, v in red.items())
    return {"note": f"{evaluated} frames; {note}", **summary}


def _pick_stamps(truth_rows: pd.DataFrame, image, den, truth, size: int, n: int,
                 frame: str) -> list[dict[str, Any]]:
    """Cutouts of isolated galaxies spread over magnitude, fully inside the frame."""
    h = size // 2
    ny, nx = image.shape
    t = truth_rows
    sel = (~t["is_star"].astype(bool)) & (t["x"] > h) & (t["x"] < nx - h - 1) \
        & (t["y"] > h) & (t["y"] < ny - h - 1)
    t = t[sel]
    if "neighbour_ratio" in t:  # prefer the least blended (few are isolated at survey density)
        clean = t[t["neighbour_ratio"].to_numpy() < 0.1]
        t = clean if len(clean) >= n else t.nsmallest(n, "neighbour_ratio")
    t = t.sort_values("mag_true")
    if t.empty:
        return []
    idx = np.unique(np.linspace(0, len(t) - 1, min(n, len(t))).round().astype(int))
    out = []
    for _, r in t.iloc[idx].iterrows():
        y0, x0 = int(np.round(r["y"])) - h, int(np.round(r["x"])) - h
        sl = (slice(y0, y0 + size), slice(x0, x0 + size))
        out.append({
            "raw": image[sl], "denoised": den[sl], "truth": truth[sl],
            "label": f"{frame} ref {int(r['ref_id'])}\n{r['band']} m={r['mag_true']:.1f}",
        })
    return out
