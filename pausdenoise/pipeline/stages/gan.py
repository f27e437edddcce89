"""Stage ``gan``: train (or reuse) pix2pix, apply it to held-out frames, score it.

Runs after ``stack`` (:mod:`pausdenoise.pipeline.stages.stack`) and only when
``gan.enabled`` (off in the demo). The scoring kernels are in :mod:`pausdenoise.gan.scoring`,
the report's figures in :mod:`pausdenoise.report.gan`.

What it writes
--------------
- ``<run>/model/gan.safetensors`` (generator + metadata: training fingerprint, history) —
  reused when its fingerprint matches; ``<run>/gan/history.csv``;
- ``frames/<h>/gan`` for held-out frames (the generated stack-like image in the frame's ADU,
  sky level added back; same chunks as ``image``; ``gan_apply`` with ``map_overlap``);
- ``<run>/gan/metrics.csv``: the published study's metrics, pooled over held-out frames, for
  the raw single epoch, the N2V-denoised frame and the cGAN output (and, where it makes sense,
  the stack of the other exposures itself), each against the stack of the other exposures
  and against the noiseless truth, with the published numbers side by side;
  ``metrics_per_frame.csv``, ``completeness.csv``, ``photometry_bias.csv``,
  ``detection_summary.json``;
- ``<run>/gan/scatter.npz`` (pixel values for the signal-vs-sky scatter plot),
  ``<run>/gan/detections.npz`` (true magnitudes of the detected sources per image kind),
  ``<run>/gan/stamps.npz``.

Units and what is comparable: pixel values are compared sky-subtracted, in the single
frame's ADU and zero-point (the stack is brought there by ``stack_frames``). The correlation
coefficient is scale-free and directly comparable with the published 0.777 → 0.940; the RMS
is in ADU (and in units of the frame's σ), while the published 1.24e-3 → 7.67e-4 is in the
study's own image units — **only the ratio generated/single (0.62 published) is comparable**.

Caveat: the stack of the other exposures used as a reference contains the training
exposures, whose noise the network saw in its targets; the comparison with the noiseless
truth has no such overlap and is the cleaner judge.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import evaluate as ev
from pausdenoise import store as st
from pausdenoise.denoise.tiling import frame_stats_from_dask
from pausdenoise.digest import json_digest
from pausdenoise.errors import StageError
from pausdenoise.gan import scoring
from pausdenoise.gan.apply import gan_apply
from pausdenoise.gan.checkpoint import load_generator, read_metadata, save_generator
from pausdenoise.gan.scoring import KINDS
from pausdenoise.gan.train import train_pix2pix
from pausdenoise.photometry.measure import measure_frame
from pausdenoise.pipeline.context import Context, compute_with_progress, split_holdout
from pausdenoise.pipeline.stages.photometry import read_frame_catalogue
from pausdenoise.pipeline.stages.stack import (
    OTHERS_ARRAY,
    OTHERS_WEIGHT_ARRAY,
    gan_dir,
    load_pairs,
)
from pausdenoise.report.figures import fig_completeness
from pausdenoise.report.gan import (
    fig_detection_mags,
    fig_gan_loss,
    fig_gan_stamps,
    fig_pixel_scatter,
)
from pausdenoise.report.html import ReportSection

__all__ = [
    "CHECKPOINT_NAME",
    "GAN_ARRAY",
    "KINDS",
    "gan_checkpoint",
    "report_section",
    "run",
    "run_gan",
    "score",
]

GAN_ARRAY = "gan"
"""Frame array: the generator's output on a held-out frame (ADU, sky added back)."""
CHECKPOINT_NAME = "gan.safetensors"
"""File name of the generator checkpoint in the run's model directory."""


def gan_checkpoint(ctx: Context) -> Path:
    """Return the path of the generator checkpoint, ``<run>/model/gan.safetensors``.

    Parameters
    ----------
    ctx : Context
        The pipeline context.

    Returns
    -------
    Path
        The checkpoint path (it may not exist yet).
    """
    return ctx.paths.model_dir / CHECKPOINT_NAME


# --------------------------------------------------------------------------- train and apply


def _train_or_reuse(ctx: Context, gan_cfg: Any) -> tuple[Any, dict[str, Any], bool]:
    pairs_path = gan_dir(ctx) / "pairs.npz"
    if not pairs_path.exists():
        raise StageError("gan: no training pairs (gan/pairs.npz); run the stack stage (it "
                         "needs at least two training exposures per band/CCD)")
    key = json_digest([gan_cfg.train.model_dump(mode="json"),
                       hashlib.sha256(pairs_path.read_bytes()).hexdigest()])
    ckpt = gan_checkpoint(ctx)
    if ckpt.exists() and not ctx.force:
        try:
            if read_metadata(ckpt).get("extra", {}).get("fingerprint") == key:
                gen, meta = load_generator(ckpt)
                return gen, meta.get("extra", {}), True
        except ValueError:
            pass
    pairs, frames = load_pairs(pairs_path)
    gen, history = train_pix2pix(pairs, gan_cfg.train)
    extra = {"fingerprint": key, "train_frames": frames, "n_pairs": len(pairs),
             "epoch": history["epoch"], "device": history["device"],
             "precision": history["precision"], "train_config": history["config"]}
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    save_generator(ckpt, gen, extra=extra)
    return gen, extra, False


def _apply_tasks(ctx: Context, gan_cfg: Any, generator: Any, frames: Sequence[str],
                 ckpt_sha: str) -> tuple[list[Any], list[str]]:
    """Prepare the lazy writes of the ``gan`` array of ``frames``, skipping up-to-date ones.

    Returns
    -------
    tasks : list
        Lazy ``store_dask`` writes.
    todo : list of (str, dict)
        Each written frame with the attributes to set once its write is done.
    """
    halo = gan_cfg.apply.halo if gan_cfg.apply.halo is not None else generator.halo()
    tasks, todo = [], []
    for f in frames:
        unit = st.write_chunks(ctx.store, f, "image")
        chunks = tuple(gan_cfg.apply.chunks or unit)
        img = st.open_frame(ctx.store, f, "image", chunks=chunks)
        has_mask = "mask" in st.frame_arrays(ctx.store, f)
        msk = st.open_frame(ctx.store, f, "mask", chunks=chunks) if has_mask else None
        stats = frame_stats_from_dask(img, msk)
        key = json_digest([ckpt_sha, stats.sky, stats.sigma, halo])
        if not ctx.force and GAN_ARRAY in st.frame_arrays(ctx.store, f):
            a = st.open_store(ctx.store)[f"{st.FRAMES_GROUP}/{f}/{GAN_ARRAY}"]
            if a.attrs.get("gan_key") == key and a.attrs.get("complete") is True:
                continue
        out = gan_apply(img, stats, generator, halo=halo, mask=msk)
        out = out.rechunk(tuple(unit[i] for i in range(2)))
        tasks.append(st.store_dask(out, ctx.store, f, GAN_ARRAY, compute=False))
        todo.append((f, {"gan_key": key, "sky": stats.sky, "sigma": stats.sigma,
                         "halo": halo, "checkpoint_sha256": ckpt_sha}))
    return tasks, todo


def _held_out_with_references(ctx: Context) -> list[str]:
    """List the held-out frames that have a stack of the other exposures.

    Returns
    -------
    list of str
        Frame names.

    Raises
    ------
    StageError
        If there is none.
    """
    exposures = st.exposure_table(ctx.store)
    _, held = split_holdout(exposures, ctx.cfg.holdout_exposures_per_band)
    held = [h for h in held if OTHERS_ARRAY in st.frame_arrays(ctx.store, h)]
    if not held:
        raise StageError("gan: no held-out frame with a stack of the other exposures; set "
                         "holdout_exposures_per_band ≥ 1 and run the stack stage")
    return held


def _gan_note(table: pd.DataFrame, reused: bool, extra: dict[str, Any], t_train: float,
              n_applied: int, t_apply: float) -> str:
    m = table
    corr = m[(m["metric"] == "pixel correlation") & (m["reference"] == "stack_others")].iloc[0]
    rms = m[(m["metric"] == "RMS ratio to raw") & (m["reference"] == "stack_others")].iloc[0]
    precision = f" in {extra['precision']}" if extra.get("precision") else ""
    return (f"{'reused' if reused else 'trained'} on {extra.get('n_pairs', '?')} pairs "
            f"({t_train:.0f} s{precision}), applied to {n_applied} held-out frames "
            f"({t_apply:.1f} s); "
            f"corr vs stack raw {corr['raw']:.3f} → gan {corr['gan']:.3f} (published 0.777 → "
            f"0.940), RMS ratio gan/raw {rms['gan']:.2f} (published 0.62)")


def run_gan(ctx: Context, gan_cfg: Any) -> dict[str, Any]:
    """Train (or reuse) pix2pix, apply it to the held-out frames and score it.

    Parameters
    ----------
    ctx : Context
        The pipeline context (store, run paths, Dask client, ``force``).
    gan_cfg : GanConfig
        The ``gan`` section of the configuration.

    Returns
    -------
    dict
        The stage summary: ``note``, ``checkpoint_reused``, ``train_seconds``,
        ``apply_seconds``, ``apply_mpix_per_s``, ``score_seconds``, ``held_out_frames``,
        plus ``frames_scored`` and ``detection`` of :func:`score`.

    Raises
    ------
    StageError
        If the stack stage left no training pairs or no held-out frame has a stack of the
        other exposures.
    """
    t0 = time.perf_counter()
    out_dir = gan_dir(ctx)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator, extra, reused = _train_or_reuse(ctx, gan_cfg)
    t_train = time.perf_counter() - t0
    if extra.get("epoch"):
        pd.DataFrame(extra["epoch"]).to_csv(out_dir / "history.csv", index=False)
    held = _held_out_with_references(ctx)
    ckpt_sha = hashlib.sha256(gan_checkpoint(ctx).read_bytes()).hexdigest()
    tasks, todo = _apply_tasks(ctx, gan_cfg, generator, held, ckpt_sha)
    t1 = time.perf_counter()
    compute_with_progress(tasks, ctx.client, "gan apply")
    t_apply = time.perf_counter() - t1
    root = st.open_store(ctx.store, "r+")
    for f, attrs in todo:
        root[f"{st.FRAMES_GROUP}/{f}/{GAN_ARRAY}"].attrs.update({**attrs, "complete": True})
    mpix = sum(int(np.prod(st.open_frame(ctx.store, f).shape)) for f, _ in todo) / 1e6
    t2 = time.perf_counter()
    summary = score(ctx, gan_cfg, held)
    t_score = time.perf_counter() - t2
    return {
        "note": _gan_note(summary["table"], reused, extra, t_train, len(todo), t_apply),
        "checkpoint_reused": reused,
        "train_seconds": t_train,
        "apply_seconds": t_apply,
        "apply_mpix_per_s": mpix / t_apply if todo and t_apply > 0 else None,
        "score_seconds": t_score,
        "held_out_frames": held,
        **{k: v for k, v in summary.items() if k != "table"},
    }


# --------------------------------------------------------------------------- scoring


def _read(store, frame: str, name: str) -> np.ndarray | None:
    if name not in st.frame_arrays(store, frame):
        return None
    return np.asarray(st.open_frame(store, frame, name), dtype=np.float64)


@dataclass
class _Frame:
    """One held-out frame's images, every kind sky-subtracted in the frame's ADU."""

    name: str
    attrs: dict[str, Any]
    mask: np.ndarray
    truth: np.ndarray | None
    weight: np.ndarray
    sky: float
    sigma: float
    images: dict[str, np.ndarray]
    good: np.ndarray


def _load_frame(store: Any, f: str) -> _Frame:
    attrs = st.frame_attrs(store, f)
    image = _read(store, f, "image")
    mask = _read(store, f, "mask")
    mask = np.zeros(image.shape, np.uint8) if mask is None else mask.astype(np.uint8)
    truth = _read(store, f, "truth")
    others = _read(store, f, OTHERS_ARRAY)
    ow = _read(store, f, OTHERS_WEIGHT_ARRAY)
    garr = st.open_store(store)[f"{st.FRAMES_GROUP}/{f}/{GAN_ARRAY}"]
    sky, sigma = float(garr.attrs["sky"]), float(garr.attrs["sigma"])
    imgs = {"raw": image - sky, "gan": _read(store, f, GAN_ARRAY) - sky,
            "stack_others": others}
    den = _read(store, f, "denoised")
    if den is not None:
        imgs["denoised"] = den - sky
    good = (mask == 0) & np.isfinite(image) & (ow > 0)
    return _Frame(f, attrs, mask, truth, ow, sky, sigma, imgs, good)


@dataclass
class _Tally:
    """What the scoring gathers over held-out frames."""

    per_frame: list[dict[str, Any]] = field(default_factory=list)
    phot_rows: list[pd.DataFrame] = field(default_factory=list)
    found: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in KINDS})
    det_mags: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {k: [] for k in KINDS})
    purity: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in KINDS})
    true_mags: list[np.ndarray] = field(default_factory=list)
    scatter: dict[str, list[np.ndarray]] = field(default_factory=dict)
    stamps: list[dict[str, Any]] = field(default_factory=list)


def _sample_scatter(tally: _Tally, fr: _Frame, rng: np.random.Generator, n: int) -> None:
    """Pixel-value scatter (signal vs sky), in units of the frame σ."""
    idx = np.flatnonzero(fr.good.ravel())
    pick = rng.choice(idx, min(n, idx.size), replace=False)
    for kind, est in fr.images.items():
        tally.scatter.setdefault(kind, []).append(est.ravel()[pick] / fr.sigma)
    if fr.truth is not None:
        tally.scatter.setdefault("truth", []).append((fr.truth - fr.sky).ravel()[pick] / fr.sigma)


def _detect(tally: _Tally, fr: _Frame, t: pd.DataFrame, ecfg: Any) -> None:
    """Detect sources at one fixed threshold (3σ of the smoothed raw noise, all kinds)."""
    thr = ecfg.detection_threshold * ev.smoothed_noise_sigma(fr.sigma, ecfg.detection_fwhm)
    tally.true_mags.append(t["mag_true"].to_numpy())
    for kind, est in fr.images.items():
        det = ev.detect(est, 0.0, thr, scoring.kind_mask(kind, fr.mask, fr.weight), ecfg)
        fnd, real = ev.match_detections(det, t, ecfg.match_radius)
        tally.found[kind].append(fnd)
        tally.det_mags[kind].append(t["mag_true"].to_numpy()[fnd])
        tally.purity[kind][0] += int(real.sum())
        tally.purity[kind][1] += len(real)


def _forced_photometry(tally: _Tally, fr: _Frame, catalogue: pd.DataFrame, pcfg: Any) -> None:
    """Measure the catalogue sources on every kind and on the truth image (forced apertures)."""
    attrs = fr.attrs
    rows = catalogue[(catalogue["expnum"] == attrs["expnum"])
                     & (catalogue["ccd"] == attrs["ccd"])]
    kw = {"gain": st.frame_gain(attrs, fr.name), "zp": float(attrs.get("zp") or 1.0),
          "expnum": int(attrs["expnum"]), "ccd": int(attrs["ccd"]), "band": str(attrs["band"])}
    ref_phot = measure_frame(fr.truth, fr.mask, rows, pcfg, kind="truth", **kw)
    for kind, est in fr.images.items():
        ph = measure_frame(est + fr.sky, scoring.kind_mask(kind, fr.mask, fr.weight), rows,
                           pcfg, kind=kind, **kw)
        ok = (ph["flags"].to_numpy() == 0) & (ref_phot["flags"].to_numpy() == 0) \
            & (ref_phot["flux"].to_numpy() > 0)
        tally.phot_rows.append(pd.DataFrame({
            "frame": fr.name, "kind": kind, "ref_id": ph["ref_id"].to_numpy()[ok],
            "I_auto": ph["I_auto"].to_numpy()[ok],
            "flux": ph["flux"].to_numpy()[ok],
            "flux_truth": ref_phot["flux"].to_numpy()[ok],
        }))


def _score_frame(ctx: Context, tally: _Tally, f: str, rng: np.random.Generator,
                 n_scatter: int, catalogue: pd.DataFrame | None,
                 truth_tab: pd.DataFrame | None) -> None:
    fr = _load_frame(ctx.store, f)
    refs = {"stack_others": fr.images["stack_others"]}
    if fr.truth is not None:
        refs["truth"] = fr.truth - fr.sky
    tally.per_frame += scoring.pixel_metric_rows(f, fr.images, refs, fr.good, fr.sigma)
    _sample_scatter(tally, fr, rng, n_scatter)
    t = None
    if truth_tab is not None:
        t = truth_tab[(truth_tab["expnum"] == fr.attrs["expnum"])
                      & (truth_tab["ccd"] == fr.attrs["ccd"])]
        t = t.rename(columns={"x_true": "x", "y_true": "y"})
        _detect(tally, fr, t, ctx.cfg.evaluate)
    if catalogue is not None and fr.truth is not None:
        _forced_photometry(tally, fr, catalogue, ctx.cfg.photometry)
    n_stamps = ctx.cfg.report.n_stamps
    if len(tally.stamps) < n_stamps and t is not None:
        tally.stamps += scoring.cut_stamps(
            t, fr.images, None if fr.truth is None else fr.truth - fr.sky,
            ctx.cfg.report.stamp_size, n_stamps - len(tally.stamps), f)


def _write_detections(out_dir: Path, tally: _Tally, mag_bins: Sequence[float],
                      table: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``completeness.csv`` and ``detections.npz``; add the detection rows to ``table``.

    Returns
    -------
    dict
        The detection summary per kind (empty without a truth table).
    """
    if not tally.true_mags:
        return {}
    comp, det_summary = scoring.detection_summary(tally.true_mags, tally.found, tally.purity,
                                                  mag_bins)
    comp.to_csv(out_dir / "completeness.csv", index=False)
    np.savez_compressed(out_dir / "detections.npz",
                        **{k: np.concatenate(v) for k, v in tally.det_mags.items() if v},
                        all_true=np.concatenate(tally.true_mags))
    table += scoring.detection_rows(det_summary)
    return det_summary


def _write_stamps(out_dir: Path, stamps: list[dict[str, Any]]) -> None:
    if not stamps:
        return
    keys = [k for k in ("raw", "denoised", "gan", "stack_others", "truth")
            if all(k in s for s in stamps)]
    np.savez_compressed(out_dir / "stamps.npz",
                        **{k: np.stack([s[k] for s in stamps]) for k in keys},
                        label=np.array([s["label"] for s in stamps]))


def _write_scores(ctx: Context, tally: _Tally) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Write every table and array of the scoring (module docstring).

    Returns
    -------
    table : DataFrame
        The ``metrics.csv`` table.
    detection : dict
        The detection summary per kind.
    """
    out_dir = gan_dir(ctx)
    pf = pd.DataFrame(tally.per_frame)
    pf.to_csv(out_dir / "metrics_per_frame.csv", index=False)
    table = scoring.summary_table(pf)
    det_summary = _write_detections(out_dir, tally, ctx.cfg.evaluate.mag_bins, table)
    if tally.phot_rows:
        bias = scoring.bias_table(pd.concat(tally.phot_rows, ignore_index=True),
                                  ctx.cfg.compare.bins)
        bias.to_csv(out_dir / "photometry_bias.csv", index=False)
        table += scoring.bias_rows(bias)
    tab = scoring.metrics_table(table)
    tab.to_csv(out_dir / "metrics.csv", index=False)
    np.savez_compressed(out_dir / "scatter.npz",
                        **{k: np.concatenate(v) for k, v in tally.scatter.items()})
    _write_stamps(out_dir, tally.stamps)
    (out_dir / "detection_summary.json").write_text(json.dumps(det_summary, indent=2,
                                                               default=float))
    return tab, det_summary


def score(ctx: Context, gan_cfg: Any, held: Sequence[str]) -> dict[str, Any]:
    """Score raw, N2V-denoised and cGAN images of held-out frames (module docstring).

    Parameters
    ----------
    ctx : Context
        The pipeline context (store, catalogue and truth paths, configuration).
    gan_cfg : GanConfig
        The ``gan`` section of the configuration (``scatter_pixels``).
    held : sequence of str
        Held-out frames with a ``gan`` array and a stack of the other exposures.

    Returns
    -------
    dict
        ``table`` (the ``metrics.csv`` table), ``frames_scored`` and ``detection`` (per
        kind: ``m50``, ``m90`` in AB mag, ``purity``, ``detections``).
    """
    # as photometry reads it: Parquet, CSV or FITS; a sky catalogue placed through the WCS
    catalogue = read_frame_catalogue(ctx)[0] if ctx.catalogue_path.exists() else None
    truth_tab = pd.read_parquet(ctx.truth_fluxes) if ctx.truth_fluxes else None
    rng = np.random.default_rng(0)
    tally = _Tally()
    n_scatter = max(gan_cfg.scatter_pixels // max(len(held), 1), 1)
    for f in held:
        _score_frame(ctx, tally, f, rng, n_scatter, catalogue, truth_tab)
    tab, det_summary = _write_scores(ctx, tally)
    return {"table": tab, "frames_scored": len(held), "detection": det_summary}


# --------------------------------------------------------------------------- report


def _report_tables(d: Path, writer: Any) -> list[tuple[str, pd.DataFrame]]:
    tables = [("cGAN vs single epoch and N2V on held-out exposures, with the published "
               "study (correlation comparable; RMS only as ratios)",
               writer.table("gan_metrics", pd.read_csv(d / "metrics.csv")))]
    if (d / "stack_summary.csv").exists():
        tables.append(("Stacks: sky noise of one exposure and of the stack",
                       writer.table("stack_summary", pd.read_csv(d / "stack_summary.csv"))))
    if (d / "photometry_bias.csv").exists():
        tables.append(("Forced aperture photometry vs the same apertures on the truth",
                       writer.table("gan_photometry_bias",
                                    pd.read_csv(d / "photometry_bias.csv"))))
    return tables


def _report_figures(d: Path, writer: Any, mag_bins: Sequence[float]) -> list[tuple[str, Any]]:
    out = []
    if (d / "stamps.npz").exists():
        z = dict(np.load(d / "stamps.npz"))
        out.append(("Held-out galaxies: single epoch, N2V, cGAN, stack of the other "
                    "exposures, truth (sky-subtracted).",
                    writer.figure("gan_stamps", fig_gan_stamps(z))))
    if (d / "scatter.npz").exists():
        out.append(("Pixel values against the stack of the other exposures (σ units).",
                    writer.figure("gan_pixel_scatter",
                                  fig_pixel_scatter(dict(np.load(d / "scatter.npz"))))))
    if (d / "completeness.csv").exists():
        comp = writer.table("gan_completeness", pd.read_csv(d / "completeness.csv"))
        out.append(("Completeness at one fixed threshold (3σ of the smoothed raw noise).",
                    writer.figure("gan_completeness", fig_completeness(
                        {k: g for k, g in comp.groupby("kind", sort=False)}))))
    if (d / "detections.npz").exists():
        out.append(("Magnitudes (true) of the detected sources per image kind.",
                    writer.figure("gan_detection_mags", fig_detection_mags(
                        dict(np.load(d / "detections.npz")), mag_bins, KINDS))))
    if (d / "history.csv").exists():
        fig = fig_gan_loss(pd.read_csv(d / "history.csv"))
        out.append(("pix2pix training: mean L1 per epoch.", writer.figure("gan_loss", fig)))
    return out


def report_section(ctx: Context, writer: Any) -> ReportSection | None:
    """Build the report's "Stacking and the cGAN" section from the stage's outputs.

    Parameters
    ----------
    ctx : Context
        The pipeline context (run paths, ``evaluate.mag_bins``).
    writer : object
        The report stage's writer: ``figure(name, fig) -> png`` and
        ``table(name, df) -> df``.

    Returns
    -------
    ReportSection or None
        The section, or None when the stage did not run (no ``gan/metrics.csv``).
    """
    d = gan_dir(ctx)
    if not (d / "metrics.csv").exists():
        return None
    tables = _report_tables(d, writer)
    figures = _report_figures(d, writer, ctx.cfg.evaluate.mag_bins)
    return ReportSection(
        "Stacking and the cGAN (single epoch → stack)",
        text="A pix2pix cGAN trained on leave-one-out pairs (single exposure → stack of the "
             "other training exposures) applied to held-out exposures, scored like the "
             "published study against the stack of the other exposures and against the "
             "noiseless truth. The reference stack contains the training exposures; the "
             "truth comparison has no such overlap.",
        figures=figures, tables=tables)


def run(ctx: Context) -> dict[str, Any]:
    """Run the ``gan`` stage when ``gan.enabled`` (see :func:`run_gan`).

    Parameters
    ----------
    ctx : Context
        The pipeline context.

    Returns
    -------
    dict
        The stage summary of :func:`run_gan`, or a note that the stage is disabled.
    """
    if not ctx.cfg.gan.enabled:
        return {"note": "gan.enabled is false: nothing done"}
    return run_gan(ctx, ctx.cfg.gan)
