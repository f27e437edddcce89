"""The pipeline: wires the stages, decides every path, makes the Dask client.

``run(cfg, out)`` executes the stages of :data:`pausdenoise.config.STAGES` in order inside
one run directory (layout: :class:`pausdenoise.runstate.RunPaths`). Before any work it
checks the output location (writable, free space) and takes the run lock. Each stage:

- is skipped when ``run.json`` records it done with the same configuration fingerprint
  (the fingerprint chains the upstream stages', so a change upstream reruns what follows);
- otherwise runs, and is itself resumable inside: ingest skips complete frames, training
  reuses a checkpoint of the same fingerprint, denoising skips chunks already written,
  photometry skips complete partitions.

A stage that fails raises :class:`StageError` naming it; everything completed before stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise.config import STAGES, PipelineConfig
from pausdenoise.errors import StageError
from pausdenoise.runstate import RunPaths, RunRecord, preflight, run_lock, write_json_atomic


@dataclass
class RunResult:
    """What a run did, stage by stage."""

    out: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        """True when some stage finished but skipped inputs (listed in its summary)."""
        return any(s.get("partial") for s in self.stages.values())

    def summary_text(self) -> str:
        lines = [f"run directory: {self.out}"]
        for name, st in self.stages.items():
            secs = st.get("seconds")
            t = f"{secs:7.1f} s" if secs is not None else "        "
            lines.append(f"  {name:<11} {st.get('status', '?'):<10} {t}  {st.get('note', '')}")
        report = self.out / "report" / "index.html"
        if report.exists():
            lines.append(f"report: {report}")
        if self.partial:
            lines.append("partial success: some inputs were skipped (see run.json)")
        return "\n".join(lines)


@dataclass
class Context:
    """What a stage function gets: the config, the paths, the client, the record."""

    cfg: PipelineConfig
    paths: RunPaths
    client: Any
    record: RunRecord
    force: bool = False

    @property
    def store(self) -> Path:
        if self.cfg.input.source == "store":
            return Path(self.cfg.input.store_path)
        return self.paths.store

    @property
    def catalogue_path(self) -> Path:
        from pausdenoise.paus_layout import CATALOGUE_NAME

        return self.cfg.input.catalogue or (self.paths.survey / CATALOGUE_NAME)

    @property
    def checkpoint(self) -> Path:
        return self.cfg.input.checkpoint or self.paths.checkpoint

    @property
    def truth_fluxes(self) -> Path | None:
        from pausdenoise.paus_layout import TRUE_FLUXES_NAME, TRUTH_DIR

        p = self.paths.survey / TRUTH_DIR / TRUE_FLUXES_NAME
        return p if p.exists() else None


# --------------------------------------------------------------------------- helpers


def with_ingest_source(
    cfg: PipelineConfig, fits: Path | None, layout: str | None
) -> PipelineConfig:
    """The config with ``input`` pointed at existing FITS (``pausdenoise ingest --fits``)."""
    if fits is None and layout is None:
        return cfg
    data = cfg.model_dump()
    if fits is not None:
        data["input"]["source"] = "fits"
        data["input"]["fits_path"] = fits
    if layout is not None:
        data["ingest"]["layout"] = layout
    return PipelineConfig.model_validate(data)


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_fingerprints(cfg: PipelineConfig) -> dict[str, str]:
    """Fingerprint of each stage: its own config section chained with its inputs' (and the
    package version, so an upgrade redoes the stages)."""
    from pausdenoise import __version__

    d = cfg.model_dump(mode="json")
    fp: dict[str, str] = {}
    fp["simulate"] = _digest(["simulate", d["simulate"], d["input"]["source"], __version__])
    fp["ingest"] = _digest(["ingest", d["ingest"], d["input"], fp["simulate"]])
    fp["train"] = _digest(
        ["train", d["train"], d["holdout_exposures_per_band"], d["input"]["checkpoint"],
         fp["ingest"]]
    )
    fp["denoise"] = _digest(["denoise", d["denoise"], fp["train"]])
    g = d["gan"]
    fp["stack"] = _digest(
        ["stack", g["stack"], g["cutout_size"], g["cutout_stride"], g["max_pairs_per_frame"],
         d["holdout_exposures_per_band"], fp["ingest"]]
    )
    fp["gan"] = _digest(
        ["gan", g["train"], g["apply"], g["scatter_pixels"], d["evaluate"], d["photometry"],
         d["compare"]["bins"], d["input"]["catalogue"], fp["stack"], fp["denoise"]]
    )
    fp["photometry"] = _digest(["photometry", d["photometry"], fp["denoise"]])
    fp["compare"] = _digest(["compare", d["compare"], fp["photometry"]])
    fp["evaluate"] = _digest(["evaluate", d["evaluate"], fp["photometry"]])
    fp["report"] = _digest(["report", d["report"], fp["compare"], fp["evaluate"]]
                           + ([fp["gan"]] if cfg.gan.enabled else []))
    return fp


def resolve_stages(cfg: PipelineConfig, stages: Sequence[str] | None) -> list[str]:
    """The stages to run, in pipeline order; unknown names are a usage error."""
    from pausdenoise.config import ConfigError

    if stages is None:
        chosen = list(STAGES)
        if cfg.input.source != "simulate":
            chosen.remove("simulate")
        if cfg.input.source == "store":
            chosen.remove("ingest")
        if cfg.input.checkpoint is not None:
            chosen.remove("train")
        if not cfg.gan.enabled:
            chosen.remove("stack")
            chosen.remove("gan")
        return chosen
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    return [s for s in STAGES if s in stages]


def estimate_bytes(cfg: PipelineConfig) -> int:
    """Rough disk need of a run (bytes): simulated FITS + store (image, mask, denoised)."""
    if cfg.input.source != "simulate":
        return 64 * 2**20
    s = cfg.simulate
    frames = len(s.bands) * s.exposures_per_band * s.n_ccds
    px = frames * s.ccd_shape[0] * s.ccd_shape[1]
    # FITS image + mask + truth (9 B/px) and store image + mask + denoised (~9 B/px, before
    # compression), plus slack.
    return int(px * 18 * 1.2) + 64 * 2**20


def frame_stats_table(store: Path, frames: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Per-frame normalisation statistics (the one function training and denoising share).

    Returns ``(stats, skipped)``: frames whose statistics cannot be computed (e.g. a CCD with
    every pixel masked) are left out of ``stats`` and listed in ``skipped`` with the reason.
    """
    from pausdenoise import store as st
    from pausdenoise.denoise import frame_stats_from_dask

    out, skipped = {}, {}
    for f in frames:
        img = st.open_frame(store, f, "image")
        msk = st.open_frame(store, f, "mask") if "mask" in st.frame_arrays(store, f) else None
        try:
            out[f] = frame_stats_from_dask(img, msk)
        except ValueError as exc:
            skipped[f] = str(exc)
            print(f"frame {f} of {store}: skipped ({exc})")
    return out, skipped


def noise_scale_from_frames(exposures: pd.DataFrame, stats: dict[str, Any]) -> float | None:
    """Median over frames of gain [e⁻/ADU] × robust sky σ [ADU]: the sky noise in electrons,
    the noise model's electrons per normalised unit. ``None`` when no frame has a gain."""
    if "gain" not in exposures:
        return None
    gains = exposures.set_index("frame")["gain"]
    values = [float(gains[f]) * s.sigma for f, s in stats.items()
              if f in gains.index and np.isfinite(gains[f]) and gains[f] > 0]
    return float(np.median(values)) if values else None


def split_holdout(exposures: pd.DataFrame, per_band: int) -> tuple[list[str], list[str]]:
    """Training and held-out frames: the last ``per_band`` exposures of each band held out."""
    held: set[int] = set()
    if per_band > 0:
        for _, g in exposures.groupby("band"):
            nums = sorted(g["expnum"].unique())
            if len(nums) > per_band:
                held.update(nums[-per_band:])
    train = exposures.loc[~exposures["expnum"].isin(held), "frame"].tolist()
    hold = exposures.loc[exposures["expnum"].isin(held), "frame"].tolist()
    return train, hold


def _compute_with_progress(tasks: Sequence[Any], client: Any, label: str) -> list[Any]:
    """Compute dask objects with a progress bar (distributed or local)."""
    import dask

    if not tasks:
        return []
    if client is not None:
        from distributed import progress

        futures = client.compute(list(tasks))
        print(f"{label}: {len(tasks)} task group(s) on {client.dashboard_link or client}")
        progress(futures, notebook=False)
        print()
        return client.gather(futures)
    from dask.diagnostics import ProgressBar

    print(f"{label}:")
    with ProgressBar():
        return list(dask.compute(*tasks))


def store_info(cfg: PipelineConfig, out: Path) -> str:
    """A text summary of a run's survey store: frames per band, shapes, arrays, completeness."""
    from pausdenoise import store as st

    store_path = Path(cfg.input.store_path) if cfg.input.source == "store" else \
        RunPaths(Path(out).resolve()).store
    if not store_path.exists():
        raise StageError(f"info: no survey store at {store_path}; run the ingest stage first")
    table = st.exposure_table(store_path, complete_only=False)
    lines = [f"survey store: {store_path}", f"frames: {len(table)} "
             f"({int(table['complete'].sum()) if 'complete' in table else len(table)} complete)"]
    if table.empty:
        return "\n".join(lines)
    for band, g in table.groupby("band"):
        shapes = sorted({(int(r.ny), int(r.nx)) for r in g.itertuples()})
        lines.append(f"  {band}: {g['expnum'].nunique()} exposures, {len(g)} frames, "
                     f"shapes {shapes}, ZP {g['zp'].min():.4g}–{g['zp'].max():.4g} µJy/ADU")
    arrays: dict[str, int] = {}
    for f in table["frame"]:
        for name in st.frame_arrays(store_path, f):
            arrays[name] = arrays.get(name, 0) + 1
    lines.append("arrays: " + ", ".join(f"{k} ×{v}" for k, v in sorted(arrays.items())))
    return "\n".join(lines)


# --------------------------------------------------------------------------- stages


def stage_simulate(ctx: Context) -> dict[str, Any]:
    from pausdenoise.simulate import write_survey

    s = write_survey(ctx.cfg.simulate, ctx.paths.survey)
    return {
        "note": f"{s.n_frames} frames, {s.n_sources} sources in {s.elapsed_s:.0f} s",
        "frames": s.n_frames,
        "sources": s.n_sources,
        "catalogue_rows": s.n_catalogue_rows,
    }


def stage_ingest(ctx: Context) -> dict[str, Any]:
    from pausdenoise.ingest import ingest

    source = ctx.cfg.input.fits_path if ctx.cfg.input.source == "fits" else ctx.paths.survey
    report = ingest(source, ctx.store, ctx.cfg.ingest, client=ctx.client)
    print(report.summary())
    if report.exit_status == 1:
        raise StageError(f"ingest: nothing could be ingested from {source}\n{report.summary()}")
    return {
        "note": f"{len(report.ingested)} ingested, {len(report.skipped)} up to date, "
                f"{len(report.failed)} failed",
        "ingested": report.ingested,
        "skipped": report.skipped,
        "failed": [list(f) for f in report.failed],
        "partial": bool(report.failed),
    }


def stage_train(ctx: Context) -> dict[str, Any]:
    from pausdenoise import store as st
    from pausdenoise.n2v.patches import Frame
    from pausdenoise.n2v.train import train_n2v

    exposures = st.exposure_table(ctx.store)
    train_frames, held = split_holdout(exposures, ctx.cfg.holdout_exposures_per_band)
    if not train_frames:
        raise StageError("train: the store has no frame to train on")
    stats, skipped = frame_stats_table(ctx.store, train_frames)
    train_frames = [f for f in train_frames if f in stats]
    if not train_frames:
        raise StageError(f"train: no usable frame in {ctx.store}: {skipped}")
    root = st.open_store(ctx.store, "r")
    frames = []
    for f in train_frames:
        g = root[f"{st.FRAMES_GROUP}/{f}"]
        frames.append(Frame(g["image"], g["mask"] if "mask" in g else None, stats[f], f))
    train_cfg = ctx.cfg.train
    if train_cfg.poisson_scale is None:
        scale = noise_scale_from_frames(exposures, stats)
        if scale is not None:
            train_cfg = train_cfg.model_copy(update={"poisson_scale": scale})
    ctx.paths.model_dir.mkdir(parents=True, exist_ok=True)
    tmp = ctx.paths.checkpoint.with_name(".n2v.partial.safetensors")
    _, history = train_n2v(
        frames,
        train_cfg,
        progress=True,
        checkpoint_path=tmp,
        provenance={
            "store": str(ctx.store),
            "frames": train_frames,
            "held_out_frames": held,
            "bands": sorted(exposures["band"].unique().tolist()),
        },
    )
    tmp.replace(ctx.paths.checkpoint)
    for side in tmp.parent.glob(".n2v.partial.*"):  # companion metadata, if any
        side.replace(ctx.paths.checkpoint.with_name("n2v" + side.name[len(".n2v.partial"):]))
    hist = pd.DataFrame(
        {
            "epoch": np.arange(1, history.epochs_run + 1),
            "train_loss": history.train_loss,
            "val_loss": history.val_loss,
            "learning_rate": history.learning_rate,
            "patches_per_second": history.patches_per_second,
        }
    )
    hist.to_csv(ctx.paths.model_dir / "history.csv", index=False)
    pps = float(np.mean(history.patches_per_second)) if history.patches_per_second else 0.0
    return {
        "note": f"{history.epochs_run} epochs, best val loss {history.best_val_loss:.4f}, "
                f"output offset {history.output_offset:+.3f} σ refitted, "
                f"{pps:.0f} patches/s on {history.device}",
        "epochs": history.epochs_run,
        "best_val_loss": history.best_val_loss,
        "output_offset_sigma": history.output_offset,
        "noise_scale_electrons": train_cfg.noise_scale,
        "patches_per_second": pps,
        "train_frames": train_frames,
        "held_out_frames": held,
        "skipped": [[f, r] for f, r in skipped.items()],
        "partial": bool(skipped),
    }


def stage_denoise(ctx: Context) -> dict[str, Any]:
    from pausdenoise import store as st
    from pausdenoise.denoise import as_model_ref, denoise_to_store

    if not Path(ctx.checkpoint).exists():
        raise StageError(f"denoise: no checkpoint at {ctx.checkpoint}; run the train stage")
    ref = as_model_ref(ctx.checkpoint)
    stats, skipped = frame_stats_table(ctx.store, st.list_frames(ctx.store))
    frames = list(stats)
    tasks = [denoise_to_store(ctx.store, f, ref, ctx.cfg.denoise, stats=stats[f],
                              force=ctx.force) for f in frames]
    t0 = time.perf_counter()
    written = _compute_with_progress(tasks, ctx.client, "denoise")
    secs = time.perf_counter() - t0
    mpix = sum(int(np.prod(st.open_frame(ctx.store, f, "image").shape)) for f in frames) / 1e6
    return {
        "note": f"{len(frames)} frames, {int(sum(written))} chunks written, "
                f"{mpix / max(secs, 1e-9):.2f} Mpix/s"
                + (f", {len(skipped)} frame(s) skipped" if skipped else ""),
        "frames": len(frames),
        "chunks_written": int(sum(written)),
        "mpix": mpix,
        "mpix_per_s": mpix / max(secs, 1e-9),
        "skipped": [[f, r] for f, r in skipped.items()],
        "partial": bool(skipped),
    }


def stage_photometry(ctx: Context) -> dict[str, Any]:
    from pausdenoise import store as st
    from pausdenoise.photometry import read_catalogue, run_photometry, validate_catalogue

    cat_path = ctx.catalogue_path
    if not cat_path.exists():
        raise StageError(f"photometry: reference catalogue {cat_path} not found")
    catalogue = read_catalogue(cat_path)
    check = validate_catalogue(catalogue)
    if not check.ok:
        check.issues.to_csv(ctx.paths.catalogue_issues, index=False)
        print(f"photometry: {len(check.issues)} catalogue row problem(s), flagged; see "
              f"{ctx.paths.catalogue_issues}")
    frames = st.list_frames(ctx.store)
    tasks = []
    missing: list[str] = []
    root = st.open_store(ctx.store)
    for kind in ctx.cfg.photometry.kinds:
        kind_frames = frames
        if kind == "denoised":  # frames the denoiser skipped (e.g. all masked) have none
            groups = {f: root[f"{st.FRAMES_GROUP}/{f}"] for f in frames}
            kind_frames = [f for f, g in groups.items()
                           if "denoised" in g and g["denoised"].attrs.get("complete", False)]
            missing = sorted(set(frames) - set(kind_frames))
        cfg_kind = ctx.cfg.photometry.model_copy(update={"kinds": (kind,)})
        tasks += run_photometry(ctx.store, ctx.paths.photometry, kind_frames, catalogue,
                                cfg_kind, overwrite=ctx.force, compute=False)
    t0 = time.perf_counter()
    written = _compute_with_progress(tasks, ctx.client, "photometry")
    secs = time.perf_counter() - t0
    n_rows = len(catalogue) * len(ctx.cfg.photometry.kinds)
    return {
        "note": f"{len(written)} partitions written, {len(check.issues)} catalogue issues"
                + (f", {len(missing)} frame(s) without denoised image" if missing else ""),
        "partitions_written": len(written),
        "frames_without_denoised": missing,
        "partial": bool(missing),
        "catalogue_issues": len(check.issues),
        "sources_per_s": n_rows / max(secs, 1e-9) if written else None,
    }


def stage_compare(ctx: Context) -> dict[str, Any]:
    from pausdenoise.pipeline.compare_stage import run_compare

    return run_compare(ctx)


def stage_evaluate(ctx: Context) -> dict[str, Any]:
    from pausdenoise.pipeline.evaluate_stage import run_evaluate

    return run_evaluate(ctx)


def stage_stack(ctx: Context) -> dict[str, Any]:
    from pausdenoise.pipeline.gan_stage import run_stack

    if not ctx.cfg.gan.enabled:
        return {"note": "gan.enabled is false: nothing done"}
    return run_stack(ctx, ctx.cfg.gan)


def stage_gan(ctx: Context) -> dict[str, Any]:
    from pausdenoise.pipeline.gan_stage import run_gan

    if not ctx.cfg.gan.enabled:
        return {"note": "gan.enabled is false: nothing done"}
    return run_gan(ctx, ctx.cfg.gan)


def stage_report(ctx: Context) -> dict[str, Any]:
    from pausdenoise.pipeline.report_stage import build_report

    path = build_report(ctx)
    return {"note": str(path), "path": str(path)}


STAGE_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "simulate": stage_simulate,
    "ingest": stage_ingest,
    "train": stage_train,
    "denoise": stage_denoise,
    "stack": stage_stack,
    "gan": stage_gan,
    "photometry": stage_photometry,
    "compare": stage_compare,
    "evaluate": stage_evaluate,
    "report": stage_report,
}

_CLUSTER_STAGES = {"ingest", "denoise", "photometry", "compare", "stack", "gan"}


@contextlib.contextmanager
def _maybe_client(cfg: PipelineConfig, stages: Sequence[str]) -> Iterator[Any]:
    if not _CLUSTER_STAGES.intersection(stages):
        yield None
        return
    from pausdenoise.cluster import make_client

    with make_client(cfg.cluster) as client:
        yield client


def run(
    cfg: PipelineConfig,
    out: Path,
    *,
    stages: Sequence[str] | None = None,
    force: bool = False,
) -> RunResult:
    """Run ``stages`` (default: all that apply) of the pipeline in run directory ``out``.

    Raises
    ------
    PreflightError, RunLockedError
        Before any work, when the directory is unusable or another run holds it.
    StageError
        When a stage fails (earlier stages' outputs are kept; a rerun resumes).
    """
    from pausdenoise.redact import redact
    from pausdenoise.report import software_versions

    paths = RunPaths(Path(out).resolve())
    chosen = resolve_stages(cfg, stages)
    preflight(paths.out, estimate_bytes(cfg))
    result = RunResult(paths.out)
    fps = stage_fingerprints(cfg)
    with run_lock(paths):
        record = RunRecord(paths)
        # recorded (and shown in the report) without credentials; fingerprints use cfg
        record.data["config"] = redact(cfg.model_dump(mode="json"))
        record.data["versions"] = software_versions()
        record.save()
        with _maybe_client(cfg, chosen) as client:
            ctx = Context(cfg, paths, client, record, force)
            for name in chosen:
                if not force and record.is_done(name, fps[name]):
                    prev = record.stage(name)
                    result.stages[name] = {"status": "up to date", "note": prev.get("note", ""),
                                           "partial": prev.get("partial", False)}
                    print(f"[{name}] up to date (same configuration); skipped")
                    continue
                print(f"[{name}] running")
                record.set(name, status="running", fingerprint=fps[name], started=time.time())
                t0 = time.perf_counter()
                try:
                    summary = STAGE_FUNCS[name](ctx)
                except StageError as exc:
                    record.set(name, status="failed", error=str(exc),
                               seconds=time.perf_counter() - t0)
                    raise
                except Exception as exc:
                    record.set(name, status="failed", error=f"{type(exc).__name__}: {exc}",
                               seconds=time.perf_counter() - t0)
                    raise StageError(f"stage '{name}' failed: {type(exc).__name__}: {exc}"
                                     ) from exc
                secs = time.perf_counter() - t0
                record.set(name, status="done", seconds=secs, note=summary.get("note", ""),
                           partial=bool(summary.get("partial", False)), summary=summary)
                result.stages[name] = {"status": "done", "seconds": secs,
                                       "note": summary.get("note", ""),
                                       "partial": bool(summary.get("partial", False))}
                print(f"[{name}] done in {secs:.1f} s: {summary.get('note', '')}")
    write_json_atomic(paths.out / "run-summary.json", redact(result.stages))
    return result
