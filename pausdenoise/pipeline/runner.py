"""The pipeline runner: wires the stages, decides every path, makes the Dask client.

``run(cfg, out)`` executes the stages of :data:`pausdenoise.config.STAGES` in order inside
one run directory (layout: :class:`pausdenoise.runstate.RunPaths`). Before any work it
checks the output location (writable, free space) and takes the run lock. Each stage:

- is skipped when ``run.json`` records it done with the same fingerprint
  (:func:`stage_fingerprints`: what the stage reads, chained with the upstream stages', so a
  change upstream reruns what follows);
- otherwise runs, and is itself resumable inside: ingest skips complete frames whose
  sources are unchanged, denoising skips chunks already written with the same model and
  settings, photometry skips partitions written with the same settings from the same
  inputs. ``force`` reruns the stages asked for and makes each redo all of its work.

A stage that fails raises :class:`~pausdenoise.errors.StageError` naming it; everything
completed before stays.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pausdenoise import __version__
from pausdenoise import store as st
from pausdenoise.cluster import make_client
from pausdenoise.compare import COMPARE_MODEL
from pausdenoise.config import STAGES, PipelineConfig
from pausdenoise.digest import file_sha256, json_digest
from pausdenoise.errors import ConfigError, StageError
from pausdenoise.ingest.noise import NOISE_MEASUREMENT_VERSION
from pausdenoise.ingest.plan import expand_inputs, find_images, input_files
from pausdenoise.paus_layout import CATALOGUE_NAME
from pausdenoise.photometry.catalogue import CatalogueCheck, check_catalogue_file
from pausdenoise.pipeline.context import Context, RunResult
from pausdenoise.pipeline.image_catalogue import catalogue_frame_problem
from pausdenoise.pipeline.n2n_targets import reference_settings
from pausdenoise.pipeline.stages import (
    compare,
    denoise,
    evaluate,
    gan,
    ingest,
    inject,
    photometry,
    report,
    simulate,
    stack,
    train,
)
from pausdenoise.redact import redact
from pausdenoise.report.versions import software_versions
from pausdenoise.runstate import RunPaths, RunRecord, preflight, run_lock, write_json_atomic

__all__ = [
    "STAGE_FUNCS",
    "estimate_bytes",
    "resolve_stages",
    "run",
    "stage_fingerprints",
    "store_info",
    "with_ingest_source",
]

#: stage name → its function, in pipeline order (:data:`pausdenoise.config.STAGES`)
STAGE_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "simulate": simulate.run,
    "ingest": ingest.run,
    "train": train.run,
    "denoise": denoise.run,
    "stack": stack.run,
    "gan": gan.run,
    "photometry": photometry.run,
    "inject": inject.run,
    "compare": compare.run,
    "evaluate": evaluate.run,
    "report": report.run,
}

#: the stages that use the Dask cluster (the others run without a client)
_CLUSTER_STAGES = {"ingest", "denoise", "photometry", "inject", "compare", "stack", "gan"}

#: the stages that write arrays into the frames' groups, which re-ingesting a frame drops
_FRAME_ARRAY_STAGES = ("denoise", "stack", "gan")


def with_ingest_source(
    cfg: PipelineConfig, fits: Path | None, layout: str | None
) -> PipelineConfig:
    """Return the config with ``input`` pointed at existing FITS (``pausdenoise ingest --fits``).

    Parameters
    ----------
    cfg : PipelineConfig
        The configuration.
    fits : Path or None
        Directory (PAUS layout) or glob of FITS files; ``None`` keeps ``cfg.input``.
    layout : str or None
        ``"paus"`` or ``"generic"``; ``None`` keeps ``cfg.ingest.layout``.

    Returns
    -------
    PipelineConfig
        ``cfg`` itself when both are ``None``, else a validated copy.
    """
    if fits is None and layout is None:
        return cfg
    data = cfg.model_dump()
    if fits is not None:
        data["input"]["source"] = "fits"
        data["input"]["fits_path"] = fits
    if layout is not None:
        data["ingest"]["layout"] = layout
    return PipelineConfig.model_validate(data)


def _file_token(path: Path, what: str, setting: str | None = None) -> list[str]:
    """Digest a configured input file's bytes.

    ``setting`` names the configuration key in the error (default ``input.<what>``).

    Returns
    -------
    list of str
        ``[what, sha256]``.

    Raises
    ------
    ConfigError
        When the file does not exist.
    """
    if not Path(path).is_file():
        raise ConfigError(f"{setting or 'input.' + what} {path} not found (no such file)")
    return [what, file_sha256(path)]


def _train_inputs(cfg: PipelineConfig) -> list[Any]:
    """Return what the train stage reads besides its settings and the pixels.

    Returns
    -------
    list
        The evaluate stage's reference settings (Noise2Noise on the exposures' targets),
        and the digests of ``train.init_checkpoint`` and of the star catalogue of
        ``train.n2n_targets: star-field``, where they are used.

    Raises
    ------
    ConfigError
        When one of those files does not exist.
    """
    t = cfg.train
    out: list[Any] = []
    if t.method == "n2n" and t.n2n_targets == "exposures":
        out.append(reference_settings(cfg.evaluate))
    if t.init_checkpoint is not None:
        out += _file_token(t.init_checkpoint, "init_checkpoint", "train.init_checkpoint")
    if t.n2n_targets == "star-field":
        out += _file_token(t.star_field.catalogue, "star_catalogue", "train.star_field.catalogue")
    return out


#: ingest settings that say how the store holds the pixels, not what the pixels are: a
#: change rewrites the frames (and their denoised arrays) but keeps the trained model
_STORAGE_ONLY = ("chunks", "shards", "clevel", "force", "verify_hash", "progress")


def _input_files_token(cfg: PipelineConfig) -> list[Any]:
    """Sign the files the ingest reads by path, size and mtime (nothing read).

    The images ``input.fits_path`` names, their mask, weight and truth companions and the
    zero-point table (:func:`~pausdenoise.ingest.plan.input_files`): so any of them edited
    in place makes the ingest stage run again (its per-frame resume then re-reads only the
    frames whose files changed).

    Returns
    -------
    list
        ``[]`` unless ``input.source`` is ``"fits"``; else one digest.
    """
    if cfg.input.source != "fits" or cfg.input.fits_path is None:
        return []
    items, _ = expand_inputs(cfg.input.fits_path)
    images = find_images([p for p in items if p.exists()], cfg.ingest)
    files = input_files(images, cfg.ingest)  # existing files only
    stats = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return [json_digest(stats)]


def _check_ingest_inputs(cfg: PipelineConfig) -> None:
    """Refuse, before any work, an ingest whose configured zero-point table is missing.

    Every frame would fail on it; one error names the setting instead.

    Raises
    ------
    ConfigError
        ``ingest.zp_table.path`` is set and is not a file.
    """
    table = cfg.ingest.zp_table
    if cfg.input.source == "fits" and table is not None and not Path(table.path).is_file():
        where = "" if Path(table.path).is_absolute() else f" (relative to {Path.cwd()})"
        raise ConfigError(f"ingest.zp_table.path {table.path} not found (no such file"
                          f"{where})")


def stage_fingerprints(
    cfg: PipelineConfig, stages: Sequence[str] | None = None
) -> dict[str, str]:
    """Return the fingerprint of each stage: a digest of what the stage reads.

    A stage's fingerprint digests its own config section chained with its inputs'
    fingerprints (and the package version, so an upgrade redoes the stages). Ingest reads
    ``input.source``, ``fits_path`` and ``store_path``, and the paths, sizes and mtimes of
    the FITS files (a file edited in place is ingested again), and the version of the
    per-frame noise measurements (a new one measures the stored frames again: the stage
    runs, its inner resume skips their pixels). Training chains only the
    ingest settings that change the pixels: new chunks, shards or compression rewrite the
    store and the denoised arrays, not the model; with ``train.init_checkpoint`` the bytes of
    that file enter it too, and with ``train.n2n_targets: star-field`` those of
    ``train.star_field.catalogue``. Denoise reads the trained model
    (the train fingerprint) or, with ``input.checkpoint``, that file: its bytes are
    digested. The reference catalogue enters the stages that read it (gan, photometry and
    through photometry compare, evaluate and report; denoise with
    ``denoise.restore_catalogue``, with the aperture units and pixel scale) by content: an explicit
    ``input.catalogue`` by the sha256 of its bytes, the simulated survey's by the simulate
    fingerprint; ``input.catalogue_magnitude`` enters the stages that write ``I_auto``
    (photometry, gan). The photometry settings come with their measurement models' versions
    (:meth:`~pausdenoise.photometry.config.PhotometryConfig.model_versions`), so a new
    profile fit or empty-aperture model redoes the stages that measure. Files are read
    only for the stages asked for.

    Parameters
    ----------
    cfg : PipelineConfig
        The configuration.
    stages : sequence of str, optional
        The stages whose fingerprints are wanted (with what they chain); default all.

    Returns
    -------
    dict of str to str
        Stage → 16 hex characters, for ``stages``.

    Raises
    ------
    ConfigError
        When ``input.catalogue`` or ``input.checkpoint`` names a missing file that a stage
        of ``stages`` reads.
    """
    d = cfg.model_dump(mode="json")
    i, g = d["input"], d["gan"]
    phot_models = cfg.photometry.model_versions()  # a new measurement model remeasures
    # the binning magnitude enters the stages that write I_auto (not the denoise's restoration)
    magnitude = [] if i["catalogue_magnitude"] is None else [i["catalogue_magnitude"]]
    memo: dict[str, str] = {}

    def _fp(name: str) -> str:
        if name not in memo:
            memo[name] = json_digest(parts[name]())
        return memo[name]

    parts: dict[str, Callable[[], list[Any]]] = {
        "simulate": lambda: ["simulate", d["simulate"], i["source"], __version__],
        "pixels": lambda: ["ingest", {k: v for k, v in d["ingest"].items()
                                      if k not in _STORAGE_ONLY},
                           i["source"], i["fits_path"], i["store_path"], _fp("simulate")],
        "ingest": lambda: ["storage", _fp("pixels"),
                           {k: d["ingest"][k] for k in _STORAGE_ONLY},
                           {"noise_measurement_version": NOISE_MEASUREMENT_VERSION},
                           *_input_files_token(cfg)],
        "train": lambda: ["train", d["train"], d["holdout_exposures_per_band"], _fp("pixels"),
                          *_train_inputs(cfg)],
        "model": lambda: (_file_token(cfg.input.checkpoint, "checkpoint")
                          if cfg.input.checkpoint is not None else [_fp("train")]),
        "catalogue": lambda: ((_file_token(cfg.input.catalogue, "catalogue")
                               + ([] if i["catalogue_frame"] is None
                                  else [{"catalogue_frame": i["catalogue_frame"]}]))
                              if cfg.input.catalogue is not None
                              else ["simulated catalogue", _fp("simulate")]),
        "denoise": lambda: (["denoise", d["denoise"], _fp("model"), _fp("ingest")]
                            + ([_fp("catalogue"), d["photometry"]["pixel_scale"],
                                d["photometry"]["aperture_units"]]
                               if cfg.denoise.restore_catalogue else [])),
        "stack": lambda: ["stack", g["stack"], g["cutout_size"], g["cutout_stride"],
                          g["max_pairs_per_frame"], d["holdout_exposures_per_band"],
                          _fp("ingest")],
        "gan": lambda: ["gan", g["train"], g["apply"], g["scatter_pixels"], d["evaluate"],
                        d["photometry"], phot_models, d["compare"]["bins"], _fp("catalogue"),
                        _fp("stack"), _fp("denoise"), *magnitude],
        "photometry": lambda: ["photometry", d["photometry"], phot_models, _fp("catalogue"),
                               _fp("denoise"), *magnitude],
        "inject": lambda: ["inject", d["inject"], d["photometry"], phot_models, d["denoise"],
                           _fp("catalogue"), _fp("model"), _fp("ingest")],
        "compare": lambda: (["compare", d["compare"], COMPARE_MODEL, _fp("photometry")]
                            + ([_fp("inject")] if cfg.compare.denoised_transfer == "inject"
                               else [])),
        "evaluate": lambda: (["evaluate", d["evaluate"], _fp("photometry")]
                             + ([_fp("inject")] if cfg.inject.enabled else [])
                             + ([_fp("gan")] if cfg.gan.enabled else [])),
        "report": lambda: (["report", d["report"], _fp("compare"), _fp("evaluate")]
                           + ([_fp("gan")] if cfg.gan.enabled else [])
                           + ([_fp("inject")] if cfg.inject.enabled else [])),
    }
    return {name: _fp(name) for name in (STAGES if stages is None else stages)}


#: the stages that measure the reference catalogue's sources (compare: their photometry)
_CATALOGUE_STAGES = ("photometry", "compare", "gan")


def _without_catalogue(cfg: PipelineConfig) -> bool:
    """Tell whether the run has no reference catalogue: FITS frames, no ``input.catalogue``.

    Returns
    -------
    bool
        True when no stage could measure catalogue sources (a simulated survey brings its
        own catalogue; a store's run directory may hold one).
    """
    return cfg.input.source == "fits" and cfg.input.catalogue is None


def _catalogue_readers(cfg: PipelineConfig) -> set[str]:
    """Return the stages that need the reference catalogue under ``cfg``.

    Returns
    -------
    set of str
        Photometry and gan, and denoise when it restores the catalogue's apertures.
    """
    return {"photometry", "gan"} | ({"denoise"} if cfg.denoise.restore_catalogue else set())


#: stages that read ``input.catalogue`` when one is given but need none (injections are
#: placed clear of its sources; the evaluation masks them)
_CATALOGUE_OPTIONAL = frozenset({"inject", "evaluate"})


def _check_catalogue_given(cfg: PipelineConfig, paths: RunPaths,
                           chosen: Sequence[str]) -> None:
    """Refuse, before any work, catalogue stages asked for where there is no catalogue.

    Raises
    ------
    ConfigError
        Photometry, gan or a restoring denoise asked for with frames from FITS (or a store
        whose run directory has no simulated catalogue) and no ``input.catalogue``.
    """
    asked = [s for s in chosen if s in _catalogue_readers(cfg)]
    if not asked or cfg.input.catalogue is not None or cfg.input.source == "simulate":
        return
    if cfg.input.source == "store" and (paths.survey / CATALOGUE_NAME).is_file():
        return
    raise ConfigError(
        f"{', '.join(asked)} measure the sources of a reference catalogue, and this run has "
        f"none (frames from {cfg.input.source}, no simulated survey): set input.catalogue "
        "(Parquet, CSV or FITS; pixel apertures per frame or ref_id/ra/dec), or leave "
        f"{', '.join(asked)} out of --stages (source injection needs no catalogue)")


def _check_catalogue_placeable(ctx: Context, check: CatalogueCheck | None) -> None:
    """Refuse a catalogue that cannot be placed on the store's frames, before later stages.

    A sky catalogue (RA/Dec) needs every frame's WCS; an image catalogue (pixel positions
    of one image) its frame: the store's only one, or ``input.catalogue_frame``. Checked
    once the store is there (after the ingest, or at the start when it is not run), so a
    catalogue that cannot be placed stops the run before training rather than at the
    photometry.

    Parameters
    ----------
    ctx : Context
        The run's context (its store and ``input.catalogue``).
    check : CatalogueCheck or None
        The check before any work of ``input.catalogue``, when a stage of this run
        places it; None otherwise.

    Raises
    ------
    ConfigError
        Some frame of the store has no WCS (the first few are named), or an image
        catalogue's frame is not found (several frames and no ``input.catalogue_frame``,
        or a name that matches none or several).
    """
    path = ctx.cfg.input.catalogue
    if check is None or not (check.sky or check.image) or not Path(ctx.store).exists():
        return
    frames = st.list_frames(ctx.store)
    if check.image:
        problem = catalogue_frame_problem(path, ctx.cfg.input.catalogue_frame, ctx.store)
        if problem is not None:
            raise ConfigError(problem)
        return
    blind = [f for f in frames if not st.frame_attrs(ctx.store, f).get("wcs")]
    if blind:
        raise ConfigError(
            f"input.catalogue {path} gives sky positions (ra, dec) but {len(blind)} of "
            f"{len(frames)} frames have no WCS ({', '.join(blind[:3])}"
            f"{', …' if len(blind) > 3 else ''}), so it cannot be placed on them: give a "
            "per-frame catalogue (expnum, ccd, aperture_x, aperture_y), or frames with a WCS")


def resolve_stages(cfg: PipelineConfig, stages: Sequence[str] | None) -> list[str]:
    """Return the stages to run, in pipeline order.

    Parameters
    ----------
    cfg : PipelineConfig
        The configuration (decides the default stages: no simulate without
        ``input.source = "simulate"``, no ingest from a store, no train with a given
        checkpoint, no stack/gan unless ``gan.enabled``, no inject unless
        ``inject.enabled``, no photometry/compare/gan for FITS frames without
        ``input.catalogue``).
    stages : sequence of str or None
        The stages asked for; ``None`` for all that apply.

    Returns
    -------
    list of str
        The stages, in pipeline order.

    Raises
    ------
    ConfigError
        When a stage name is unknown, or train is asked for while ``input.checkpoint`` is
        set (the trained model would not be used).
    """
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
        if not cfg.inject.enabled:
            chosen.remove("inject")
        if _without_catalogue(cfg):
            chosen = [s for s in chosen if s not in _CATALOGUE_STAGES]
        return chosen
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    if "train" in stages and cfg.input.checkpoint is not None:
        raise ConfigError(
            f"input.checkpoint is set ({cfg.input.checkpoint}), so training would be thrown "
            "away (denoise uses the given checkpoint); drop train from --stages or unset "
            "input.checkpoint"
        )
    return [s for s in STAGES if s in stages]


def estimate_bytes(cfg: PipelineConfig) -> int:
    """Return a rough disk need of a run: simulated FITS + store (image, mask, denoised).

    Parameters
    ----------
    cfg : PipelineConfig
        The configuration.

    Returns
    -------
    int
        Bytes; 64 MiB when nothing is simulated.
    """
    if cfg.input.source != "simulate":
        return 64 * 2**20
    s = cfg.simulate
    frames = len(s.bands) * s.exposures_per_band * s.n_ccds
    px = frames * s.ccd_shape[0] * s.ccd_shape[1]
    # FITS image + mask + truth (9 B/px) and store image + mask + denoised (~9 B/px, before
    # compression), plus slack.
    return int(px * 18 * 1.2) + 64 * 2**20


def store_info(cfg: PipelineConfig, out: Path) -> str:
    """Summarise a run's survey store: frames per band, shapes, arrays, completeness.

    Parameters
    ----------
    cfg : PipelineConfig
        The configuration (``input.source = "store"`` names the store).
    out : Path
        The run directory (its own store otherwise).

    Returns
    -------
    str
        The summary text, several lines.

    Raises
    ------
    StageError
        When there is no store.
    """
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


@contextlib.contextmanager
def _maybe_client(cfg: PipelineConfig, stages: Sequence[str]) -> Iterator[Any]:
    """Make a Dask client when one of ``stages`` uses the cluster.

    Yields
    ------
    distributed.Client or None
        The client, or ``None`` when no stage needs one.
    """
    if not _CLUSTER_STAGES.intersection(stages):
        yield None
        return
    with make_client(cfg.cluster) as client:
        yield client


#: what each stage reads of the others' outputs (the chains of :func:`stage_fingerprints`,
#: with inject and gan wherever they may be read)
_UPSTREAM: dict[str, tuple[str, ...]] = {
    "ingest": ("simulate",), "train": ("ingest",), "denoise": ("train", "ingest"),
    "stack": ("ingest",), "gan": ("stack", "denoise"), "photometry": ("denoise",),
    "inject": ("train", "ingest"), "compare": ("photometry", "inject"),
    "evaluate": ("denoise", "photometry", "inject", "gan"),
    "report": ("compare", "evaluate", "gan", "inject"),
}


def _dependents(name: str) -> list[str]:
    """Return the stages that read ``name``'s outputs, directly or through others.

    Returns
    -------
    list of str
        In pipeline order; for ``simulate`` only ``ingest`` (whose own rule,
        :func:`_outdate_downstream`, judges what new FITS files change), for ``ingest``
        none (that rule again).
    """
    if name == "simulate":
        return ["ingest"]
    if name == "ingest":
        return []
    found: set[str] = set()
    todo = [name]
    while todo:
        up = todo.pop()
        for stage, reads in _UPSTREAM.items():
            if up in reads and stage not in found:
                found.add(stage)
                todo.append(stage)
    return [s for s in STAGES if s in found]


def _outdate_downstream(record: RunRecord, name: str, summary: dict[str, Any]) -> None:
    """Mark the later stages that stage ``name``'s run made stale ``outdated`` in ``run.json``.

    After an ingest: their fingerprints digest configuration, not the store's pixels:
    frames ingested again with other content, or whose gain in force the fit across
    exposures changed, or whose noise correlation in force changed when measured again,
    outdate every later stage;
    frames rewritten with the same content lose the arrays the later stages wrote into them
    (:data:`_FRAME_ARRAY_STAGES`). An outdated stage runs at the next run and its inner
    resume redoes only what is missing.

    Any other stage that ran outdates the stages that read its outputs
    (:func:`_dependents`): a stage run on its own after them (an evaluate before the
    denoise, a forced retraining) leaves them stale however equal their fingerprints,
    which digest configuration. Their inner resume then redoes only what changed.
    """
    if name != "ingest":
        for stage in _dependents(name):
            if record.stage(stage).get("status") == "done":
                record.set(stage, status="outdated")
        return
    if (summary.get("frames_changed") or summary.get("gains_changed")
            or summary.get("correlations_changed")):
        later = STAGES[STAGES.index("ingest") + 1:]
    elif summary.get("frames_rewritten"):
        later = _FRAME_ARRAY_STAGES
    else:
        return
    for stage in later:
        if record.stage(stage).get("status") == "done":
            record.set(stage, status="outdated")


def _run_stage(ctx: Context, name: str, fingerprint: str, result: RunResult) -> None:
    """Run one stage (or skip it when done with the same fingerprint), recording it.

    Raises
    ------
    StageError
        When the stage fails (any other exception is wrapped in one naming the stage).
    KeyboardInterrupt
        Passed on after the stage is recorded as ``interrupted`` (completed work is kept).
    """
    record, force = ctx.record, ctx.force
    if not force and record.is_done(name, fingerprint):
        prev = record.stage(name)
        result.stages[name] = {"status": "up to date", "note": prev.get("note", ""),
                               "partial": prev.get("partial", False)}
        print(f"[{name}] up to date (same configuration); skipped")
        return
    print(f"[{name}] running")
    record.set(name, status="running", fingerprint=fingerprint, started=time.time())
    t0 = time.perf_counter()
    try:
        summary = STAGE_FUNCS[name](ctx)
    except KeyboardInterrupt:
        record.set(name, status="interrupted", seconds=time.perf_counter() - t0)
        raise
    except StageError as exc:
        record.set(name, status="failed", error=str(exc), seconds=time.perf_counter() - t0)
        raise
    except Exception as exc:
        record.set(name, status="failed", error=f"{type(exc).__name__}: {exc}",
                   seconds=time.perf_counter() - t0)
        raise StageError(f"stage '{name}' failed: {type(exc).__name__}: {exc}") from exc
    secs = time.perf_counter() - t0
    record.set(name, status="done", seconds=secs, note=summary.get("note", ""),
               partial=bool(summary.get("partial", False)), summary=summary)
    _outdate_downstream(record, name, summary)
    result.stages[name] = {"status": "done", "seconds": secs,
                           "note": summary.get("note", ""),
                           "partial": bool(summary.get("partial", False))}
    print(f"[{name}] done in {secs:.1f} s: {summary.get('note', '')}")


def run(
    cfg: PipelineConfig,
    out: Path,
    *,
    stages: Sequence[str] | None = None,
    force: bool = False,
) -> RunResult:
    """Run ``stages`` (default: all that apply) of the pipeline in run directory ``out``.

    Parameters
    ----------
    cfg : PipelineConfig
        The configuration.
    out : Path
        The run directory (created if missing).
    stages : sequence of str, optional
        The stages to run (in pipeline order whatever the order given); default all that
        apply (:func:`resolve_stages`).
    force : bool, optional
        Rerun stages recorded as done, and redo their work. Default False.

    Returns
    -------
    RunResult
        What each stage did; also written to ``run-summary.json``.

    Raises
    ------
    ConfigError
        Before any work, when a stage is unknown, train is asked for with
        ``input.checkpoint`` set, a configured input file (catalogue, checkpoint, the
        ingest's zero-point table, ``train.init_checkpoint``) is missing,
        ``train.init_checkpoint`` holds another network than ``train.unet``, or a stage
        that measures catalogue sources is asked for where there is no catalogue.
    CatalogueError
        Before any work, when photometry, gan or a restoring denoise will read
        ``input.catalogue`` and it cannot be used (unreadable, a column missing, a value of
        the wrong type).
    PreflightError, RunLockedError
        Before any work, when the directory is unusable or another run holds it.
    StageError
        When a stage fails (earlier stages' outputs are kept; a rerun resumes).
    """
    paths = RunPaths(Path(out).resolve())
    chosen = resolve_stages(cfg, stages)
    if stages is None and _without_catalogue(cfg):
        left = [s for s in _CATALOGUE_STAGES if s != "gan" or cfg.gan.enabled]
        print(f"[{', '.join(left)}] not run: frames from FITS and no input.catalogue "
              "(evaluate and inject need none)")
    fps = stage_fingerprints(cfg, chosen)
    _check_catalogue_given(cfg, paths, chosen)
    catalogue_check = None
    if cfg.input.catalogue is not None and (_catalogue_readers(cfg) | _CATALOGUE_OPTIONAL) \
            & set(chosen):
        # a bad file fails now, not after training
        catalogue_check = check_catalogue_file(cfg.input.catalogue,
                                               cfg.input.catalogue_magnitude)
        if cfg.input.catalogue_frame is not None and not catalogue_check.image:
            print(f"warning: input.catalogue_frame {cfg.input.catalogue_frame!r} is not used: "
                  f"input.catalogue {cfg.input.catalogue} gives "
                  f"{'sky' if catalogue_check.sky else 'per-frame'} positions, not the pixel "
                  "positions of one frame")
    if "ingest" in chosen:
        _check_ingest_inputs(cfg)
    if "train" in chosen and cfg.train.init_checkpoint is not None:
        train.check_init_checkpoint(cfg.train)  # a wrong network fails now, not after ingest
    preflight(paths.out, estimate_bytes(cfg))
    result = RunResult(paths.out)
    with run_lock(paths):
        record = RunRecord(paths)
        # recorded (and shown in the report) without credentials; fingerprints use cfg
        record.data["config"] = redact(cfg.model_dump(mode="json"))
        record.data["versions"] = software_versions()
        record.save()
        with _maybe_client(cfg, chosen) as client:
            ctx = Context(cfg, paths, client, record, force)
            if "ingest" not in chosen:
                _check_catalogue_placeable(ctx, catalogue_check)
            for name in chosen:
                _run_stage(ctx, name, fps[name], result)
                if name == "ingest":  # before the training, not after it
                    _check_catalogue_placeable(ctx, catalogue_check)
    write_json_atomic(paths.out / "run-summary.json", redact(result.stages))
    return result
