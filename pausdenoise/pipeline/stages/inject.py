"""Inject stage: GalSim galaxies of known flux added to the raw frames, then measured.

Source injection gives the truth on any pixels, simulated or real: the same denoising and
the same forced photometry run on frames that hold extra galaxies whose fluxes are known,
and :func:`pausdenoise.inject.metrics.injection_tables` turns the measurements into bias,
pull and scatter per I-magnitude bin and band for each flux estimator.

Outputs, under ``<run>/inject/``:

- ``store.zarr``: one frame per input frame, ``image`` = raw + injected galaxies with their
  own Poisson noise (the input store's ``image`` is never modified), the input's ``mask``
  and attributes, and ``denoised`` made by the run's network with the input frame's
  normalisation;
- ``frames/<frame>.catalogue.parquet`` and ``frames/<frame>.truth.parquet`` per frame, and
  their concatenations ``catalogue.parquet`` (catalogue columns + profile columns) and
  ``truth.parquet`` (:mod:`pausdenoise.inject.render`);
- ``photometry/``: forced photometry of the injected frames (the frame's own catalogue rows
  are measured beside the injections, so that the profile fit models them as neighbours);
- ``photometry_null/``: the same rows measured on the input frames, before injection (raw,
  and denoised where the run's store has it);
- ``bias_by_bin.csv``, ``transfer.csv``, ``colour_bias.csv``, ``response.csv``: the tables
  (:data:`~pausdenoise.inject.metrics.TABLE_FILES`).

Where every frame of a CCD has a WCS, one population is placed on the sky (in the pixel frame
of the CCD's first exposure, clear of its catalogue sources and of the light detected in its
image) and drawn into every exposure and band at the same sky positions, so colours can be
measured; frames without a WCS get their own population each. A frame is injected once per
setting: a rerun skips frames whose injection key is unchanged (``force`` redoes them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dask import delayed

from pausdenoise import store as st
from pausdenoise.denoise.model import as_model_ref
from pausdenoise.denoise.writer import denoise_to_store
from pausdenoise.digest import json_digest
from pausdenoise.errors import PsfError, StageError
from pausdenoise.inject.metrics import TABLE_FILES, injection_tables
from pausdenoise.inject.placement import detected_sources, occupancy_from_image, place
from pausdenoise.inject.population import INJECT_REF_ID0, draw_injections
from pausdenoise.inject.render import inject_frame
from pausdenoise.paus_layout import band_wavelength_nm
from pausdenoise.photometry.driver import (
    partition_tasks,
    partition_warnings,
    read_photometry,
    remove_stale_partitions,
)
from pausdenoise.photometry.projection import wcs_from_text
from pausdenoise.pipeline.context import Context, compute_with_progress, frame_stats_table
from pausdenoise.pipeline.stages.denoise import catalogue_apertures
from pausdenoise.pipeline.stages.photometry import plan_all_kinds, read_frame_catalogue
from pausdenoise.psf import frame_psf

__all__ = ["run"]

#: attributes of an input frame that are not copied to its injected twin
_NOT_COPIED = ("complete", "ny", "nx")


def _read_catalogue(ctx: Context) -> pd.DataFrame:
    """Return the run's per-frame catalogue, or an empty one when the run has none.

    Returns
    -------
    pandas.DataFrame
        Per-frame catalogue rows (a sky catalogue placed through the frames' WCS).
    """
    if not ctx.catalogue_path.exists():
        return pd.DataFrame(columns=["expnum", "ccd", "aperture_x", "aperture_y"])
    rows, _, _ = read_frame_catalogue(ctx)
    return rows


def _frame_rows(catalogue: pd.DataFrame, frame: str) -> pd.DataFrame:
    """Return the catalogue rows of one frame (empty when it has none).

    Returns
    -------
    pandas.DataFrame
        The rows, fresh index.
    """
    e, c = st.parse_frame_id(frame)
    sel = (catalogue["expnum"] == e) & (catalogue["ccd"] == c)
    return catalogue.loc[sel].reset_index(drop=True)


def _read_frame(store: Path, frame: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read a frame's image, mask (or None) and attributes.

    Returns
    -------
    tuple
        ``(image, mask, attrs)``.
    """
    grp = st.open_store(store, mode="r")[st.FRAMES_GROUP][frame]
    mask = grp["mask"][...] if "mask" in grp else None
    return grp["image"][...], mask, dict(grp.attrs)


def _placements(ctx: Context, frames: list[str], catalogue: pd.DataFrame,
                rng: np.random.Generator, first_ref_id: int = INJECT_REF_ID0) -> pd.DataFrame:
    """Draw a population and place it clear of the sources of one reference frame.

    The first frame of ``frames`` is the reference: its catalogue positions and the light
    detected in its image are avoided.

    Returns
    -------
    pandas.DataFrame
        The population (:func:`~pausdenoise.inject.population.draw_injections`) with ``x``,
        ``y`` in the reference frame's 0-based pixels; fewer rows than asked when the frame
        is full.
    """
    cfg = ctx.cfg.inject
    ref = frames[0]
    image, mask, _ = _read_frame(ctx.store, ref)
    rows = _frame_rows(catalogue, ref)
    occupied = occupancy_from_image(image, mask, nsigma=cfg.detect_nsigma,
                                    grow_px=cfg.detect_grow_px, smooth_px=cfg.detect_smooth_px)
    xy = (rows["aperture_x"].to_numpy(float), rows["aperture_y"].to_numpy(float))
    x, y = place(rng, cfg.per_frame, image.shape, occupied_xy=xy, occupied_mask=occupied,
                 min_separation_px=cfg.min_separation_px, edge_px=cfg.edge_px,
                 clearance_px=cfg.clearance_px)
    pop = draw_injections(cfg, rng, len(x), first_ref_id=first_ref_id)
    pop["x"], pop["y"] = x, y
    return pop


def _on_frame(pop: pd.DataFrame, ref_wcs: Any, wcs_text: str | None,
              shape: tuple[int, int]) -> pd.DataFrame:
    """Carry a population from the reference frame's pixels to another frame's.

    Returns
    -------
    pandas.DataFrame
        The rows whose centre lands on the frame, ``x``, ``y`` in its 0-based pixels.
    """
    if ref_wcs is None or wcs_text is None:
        return pop
    ra, dec = ref_wcs.pixel_to_world_values(pop["x"].to_numpy(), pop["y"].to_numpy())
    x, y = wcs_from_text(wcs_text).world_to_pixel_values(ra, dec)
    out = pop.copy()
    out["x"], out["y"] = np.asarray(x, float), np.asarray(y, float)
    on = (out["x"] >= 0) & (out["x"] <= shape[1] - 1) & (out["y"] >= 0) & \
        (out["y"] <= shape[0] - 1)
    return out.loc[on].reset_index(drop=True)


def plan_injections(ctx: Context, catalogue: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Decide which galaxies go where: per frame, the population rows and their positions.

    Frames are grouped by CCD; with ``inject.share = "sky"`` a group whose frames all have a
    WCS shares one population (same sky positions, so one galaxy is seen in every exposure
    and band), otherwise each frame gets its own. Seeded by ``inject.seed`` and the
    CCD/exposure numbers only.

    Parameters
    ----------
    ctx : Context
        The stage context.
    catalogue : pandas.DataFrame
        The run's per-frame catalogue (may be empty).

    Returns
    -------
    dict of str to pandas.DataFrame
        Frame id → its injections (``x``, ``y`` in the frame's 0-based pixels).
    """
    frames = st.list_frames(ctx.store)
    attrs = {f: st.frame_attrs(ctx.store, f) for f in frames}
    by_ccd: dict[int, list[str]] = {}
    for f in frames:
        by_ccd.setdefault(st.parse_frame_id(f)[1], []).append(f)
    plan: dict[str, pd.DataFrame] = {}
    for ccd, group in by_ccd.items():
        if ctx.cfg.inject.share == "sky" and all(attrs[f].get("wcs") for f in group):
            rng = np.random.default_rng([ctx.cfg.inject.seed, ccd])
            pop = _placements(ctx, group, catalogue, rng)
            ref_wcs = wcs_from_text(str(attrs[group[0]]["wcs"]))
            for f in group:
                shape = (int(attrs[f]["ny"]), int(attrs[f]["nx"]))
                plan[f] = _on_frame(pop, ref_wcs, str(attrs[f]["wcs"]), shape)
            continue
        for f in group:
            e, c = st.parse_frame_id(f)
            rng = np.random.default_rng([ctx.cfg.inject.seed, c, e])
            first = INJECT_REF_ID0 + 100_000 * frames.index(f)
            plan[f] = _placements(ctx, [f], catalogue, rng, first_ref_id=first)
    return plan


def _injection_key(ctx: Context, attrs: dict, injections: pd.DataFrame) -> str:
    """Digest what an injected frame is made from.

    The input frame, its gain and read noise in force, the settings and the injections.

    Returns
    -------
    str
        16 hex characters.
    """
    return json_digest([ctx.cfg.inject.fingerprint(), attrs.get("source_fingerprint"),
                        attrs.get("gain"), attrs.get("rdnoise"),
                        ctx.cfg.photometry.pixel_scale, ctx.cfg.photometry.psf_beta,
                        pd.util.hash_pandas_object(injections, index=False).sum()])


def _tables_path(out: Path, frame: str, what: str) -> Path:
    return out / "frames" / f"{frame}.{what}.parquet"


def _inject_one(store: Path, frame: str, injections: pd.DataFrame, out: Path,
                icfg: Any, pcfg: Any, key: str) -> str | None:
    """Inject one frame and write it and its tables (the body of one Dask task).

    ``icfg`` and ``pcfg`` are the run's inject and photometry settings (plain pydantic
    objects, so the task pickles without the client or the run record).

    Returns
    -------
    str or None
        None when the frame was injected; else why it was skipped (no PSF: a frame without
        seeing in its header and without a usable star), and nothing is written for it.
    """
    image, mask, attrs = _read_frame(store, frame)
    try:
        psf = frame_psf(attrs, image, mask, pixel_scale=pcfg.pixel_scale,
                        beta=pcfg.psf_beta)
    except PsfError as exc:
        return f"no PSF to draw the galaxies with: {exc}"
    e, c = st.parse_frame_id(frame)
    rng = np.random.default_rng([icfg.seed, 7, c, e])
    wcs = wcs_from_text(str(attrs["wcs"])) if attrs.get("wcs") else None
    res = inject_frame(image, mask, attrs, injections, psf, icfg, rng,
                       pixel_scale=pcfg.pixel_scale, wcs=wcs)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    res.catalogue.to_parquet(_tables_path(out, frame, "catalogue"), index=False)
    res.truth.to_parquet(_tables_path(out, frame, "truth"), index=False)
    copied = {k: v for k, v in attrs.items() if k not in _NOT_COPIED}
    copied.update(injection_key=key, source_fingerprint=json_digest(
        [attrs.get("source_fingerprint"), key]))
    chunks = st.open_frame(store, frame, "image").chunksize
    arrays = {"image": res.image} | ({"mask": mask} if mask is not None else {})
    st.write_frame(out / "store.zarr", frame, arrays, copied, chunks=chunks)
    return None


def _is_done(out_store: Path, out: Path, frame: str, key: str) -> bool:
    """Tell whether a frame was injected with this key and its tables are on disk.

    Returns
    -------
    bool
        True when nothing needs redoing.
    """
    if not (out_store.exists() and st.is_complete(out_store, frame)):
        return False
    done = st.frame_attrs(out_store, frame).get("injection_key") == key
    return done and _tables_path(out, frame, "truth").exists()


def _inject_all(ctx: Context, plan: dict[str, pd.DataFrame],
                out_store: Path) -> tuple[list[str], dict[str, str]]:
    """Run one injection task per frame that is not already done.

    Returns
    -------
    tuple of (list of str, dict of str to str)
        The frames injected now, and the frames skipped with the reason.
    """
    todo = []
    for frame, injections in plan.items():
        key = _injection_key(ctx, st.frame_attrs(ctx.store, frame), injections)
        if ctx.force or not _is_done(out_store, ctx.paths.inject, frame, key):
            todo.append((frame, injections, key))
    if not out_store.exists():
        st.init_store(out_store)
    tasks = [delayed(_inject_one)(ctx.store, f, inj, ctx.paths.inject, ctx.cfg.inject,
                                  ctx.cfg.photometry, key) for f, inj, key in todo]
    reasons = compute_with_progress(tasks, ctx.client, "inject")
    skipped = {f: r for (f, _, _), r in zip(todo, reasons, strict=True) if r is not None}
    for f, r in skipped.items():
        print(f"inject: frame {f} of {ctx.store} skipped ({r})")
    return [f for f, _, _ in todo if f not in skipped], skipped


def _denoise(ctx: Context, out_store: Path, frames: list[str], catalogue: pd.DataFrame,
             injected: pd.DataFrame) -> int:
    """Denoise the injected frames with the run's network and each input frame's statistics.

    With ``denoise.restore_catalogue`` the injected galaxies (``injected``) are restored
    beside the frame's own catalogue sources (``catalogue``): they are forced-photometry
    sources like them.

    Returns
    -------
    int
        Chunks written (0 when everything was up to date).
    """
    ref = as_model_ref(ctx.checkpoint)
    stats, _ = frame_stats_table(ctx.store, frames)
    apertures = {}
    if ctx.cfg.denoise.restore_catalogue:
        own = injected[injected.columns.intersection(catalogue.columns)]
        apertures, _ = catalogue_apertures(ctx, frames,  # left-out rows: the denoise note
                                           pd.concat([catalogue, own], ignore_index=True))
    tasks = [denoise_to_store(out_store, f, ref, ctx.cfg.denoise, stats=stats[f],
                              force=ctx.force, apertures=apertures.get(f))
             for f in frames if f in stats]
    return int(sum(compute_with_progress(tasks, ctx.client, "inject: denoise")))


def _combined_tables(out: Path, frames: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate the per-frame catalogue and truth tables.

    Returns
    -------
    tuple of pandas.DataFrame
        ``(catalogue, truth)``.
    """
    cats = [pd.read_parquet(_tables_path(out, f, "catalogue")) for f in frames]
    truths = [pd.read_parquet(_tables_path(out, f, "truth")) for f in frames]
    return pd.concat(cats, ignore_index=True), pd.concat(truths, ignore_index=True)


def _detected_rows(ctx: Context, frame: str) -> pd.DataFrame:
    """Catalogue rows for the real sources detected on a frame that has no catalogue.

    The photometry of the injections then leaves their light out of the background annuli
    and models them as neighbours (negative ``ref_id``: not injections, not reported).

    Returns
    -------
    pandas.DataFrame
        Rows with the catalogue's pixel columns (axes in ``photometry.aperture_units``).
    """
    cfg, pcfg = ctx.cfg.inject, ctx.cfg.photometry
    image, mask, attrs = _read_frame(ctx.store, frame)
    occupied = occupancy_from_image(image, mask, nsigma=cfg.detect_nsigma,
                                    grow_px=0.0, smooth_px=cfg.detect_smooth_px)
    det = detected_sources(image, occupied, mask=mask)
    scale = pcfg.pixel_scale if pcfg.aperture_units == "arcsec" else 1.0
    e, c = st.parse_frame_id(frame)
    return pd.DataFrame({
        "ref_id": -np.arange(1, len(det) + 1, dtype=np.int64), "ra": np.nan, "dec": np.nan,
        "I_auto": np.nan, "expnum": e, "ccd": c, "band": str(attrs.get("band", "")),
        "aperture_x": det["x"].to_numpy(float), "aperture_y": det["y"].to_numpy(float),
        "aperture_a": det["a_px"].to_numpy(float) * scale,
        "aperture_b": det["b_px"].to_numpy(float) * scale,
        "aperture_theta": -det["theta_deg"].to_numpy(float),
    })


def _measure(ctx: Context, store: Path, frames: list[str], injected: pd.DataFrame,
             catalogue: pd.DataFrame, dest: str = "photometry") -> int:
    """Measure ``frames`` of ``store`` at the injections plus the frames' own catalogue sources.

    ``store`` is the injected copy (``dest`` "photometry") or the run's own store, the frames
    before injection (``dest`` "photometry_null": the same apertures without the galaxies,
    for the response table of :func:`~pausdenoise.inject.metrics.injection_tables`).

    Returns
    -------
    int
        Partitions written.
    """
    own = catalogue[catalogue.columns.intersection(injected.columns)]
    found = [_detected_rows(ctx, f) for f in frames if not len(_frame_rows(catalogue, f))]
    rows = pd.concat([injected, own, *found], ignore_index=True)
    kinds = tuple(k for k in ctx.cfg.photometry.kinds
                  if k == "raw" or Path(ctx.checkpoint).exists())
    pcfg = ctx.cfg.photometry.model_copy(update={"kinds": kinds})
    phot_dir = ctx.paths.inject / dest
    plans, _ = plan_all_kinds(store, phot_dir, frames, rows, pcfg)
    remove_stale_partitions(phot_dir, plans)
    tasks = partition_tasks(store, plans, pcfg, overwrite=ctx.force)
    written = compute_with_progress(tasks, ctx.client, f"inject: {dest}")
    for line in partition_warnings(written):
        print(f"inject: {dest}: warning: {line}")
    return len(written)


def _worst_bias(bias: pd.DataFrame, mag_max: float = 23.0) -> str:
    """Say each estimator's largest |median bias| over the I bins up to ``mag_max`` (all bands).

    Returns
    -------
    str
        ``"raw_aperture -1.2 %, ..."``; ``"n/a"`` for an estimator without data.
    """
    rows = bias[(bias["band"] == "all") & (bias["mag_hi"] <= mag_max) & (bias["n"] > 0)]
    parts = []
    for est in dict.fromkeys(bias["estimator"]):
        b = rows.loc[rows["estimator"] == est, "median_rel_bias"].dropna()
        worst = f"{100 * b.loc[b.abs().idxmax()]:+.1f} %" if len(b) else "n/a"
        parts.append(f"{est} {worst}")
    return ", ".join(parts)


def _colour_bands(truth: pd.DataFrame) -> tuple[str, str]:
    """Return the bluest and reddest band of the injections (PAUS bands by wavelength).

    Returns
    -------
    tuple of str
        ``(blue, red)``; the same band twice when there is one band.
    """
    bands = sorted(truth["band"].astype(str).unique())
    try:
        bands = sorted(bands, key=band_wavelength_nm)
    except ValueError:  # not PAUS narrow bands: alphabetical order
        pass
    return (bands[0], bands[-1]) if bands else ("", "")


def run(ctx: Context) -> dict[str, Any]:
    """Inject galaxies into every frame, denoise and measure them, and tabulate the biases.

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        The stage summary: frames and galaxies injected, partitions written, the worst bias
        of each estimator over I 17–23 (``note``).

    Raises
    ------
    StageError
        When the store has no frame to inject into, or none could be injected.
    """
    if not ctx.cfg.inject.enabled:
        return {"note": "inject.enabled is false: nothing done"}
    out = ctx.paths.inject
    out.mkdir(parents=True, exist_ok=True)
    out_store = out / "store.zarr"
    catalogue = _read_catalogue(ctx)
    t0 = time.perf_counter()
    plan = plan_injections(ctx, catalogue)
    if not plan:
        raise StageError(f"inject: the store {ctx.store} has no complete frame")
    injected_now, skipped = _inject_all(ctx, plan, out_store)
    frames = [f for f in plan if f not in skipped]
    if not frames:
        raise StageError(f"inject: no frame of {ctx.store} could be injected: "
                         + "; ".join(f"{f}: {r}" for f, r in skipped.items()))
    cat, truth = _combined_tables(out, frames)
    chunks = (_denoise(ctx, out_store, frames, catalogue, cat)
              if Path(ctx.checkpoint).exists() else 0)
    cat.to_parquet(out / "catalogue.parquet", index=False)
    truth.to_parquet(out / "truth.parquet", index=False)
    written = _measure(ctx, out_store, frames, cat, catalogue)
    written += _measure(ctx, ctx.store, frames, cat, catalogue, dest="photometry_null")
    tables = injection_tables(read_photometry(out / "photometry"), truth,
                              seed=ctx.cfg.inject.seed, colour_bands=_colour_bands(truth),
                              null=read_photometry(out / "photometry_null"))
    for name, fname in TABLE_FILES.items():
        if name in tables:
            tables[name].to_csv(out / f"{fname}.csv", index=False)
    worst = _worst_bias(tables["bias"])
    return {
        "note": f"{len(truth)} galaxies in {len(frames)} frames "
                f"({len(injected_now)} injected now, {chunks} chunks denoised, "
                f"{written} partitions"
                + (f", {len(skipped)} frame(s) skipped" if skipped else "")
                + "); worst |median bias| I 17-23: " + worst,
        "skipped": [[f, r] for f, r in skipped.items()],
        "partial": bool(skipped),
        "galaxies": len(truth),
        "frames": len(frames),
        "frames_injected": len(injected_now),
        "partitions_written": written,
        "seconds": time.perf_counter() - t0,
    }
