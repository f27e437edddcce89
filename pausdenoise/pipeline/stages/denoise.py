"""Denoise stage: denoise every frame of the store with the trained network.

Each frame is denoised chunk by chunk with ``map_overlap`` (seam-free) and written into the
store's ``denoised`` array; chunks already written with the same model and settings are
skipped unless ``force``. Frames without normalisation statistics are skipped and listed.
With ``denoise.restore_catalogue`` the run's catalogue sources get back, inside their
apertures, what the network smoothed away (:mod:`pausdenoise.denoise.restore`); the frame's
catalogue rows enter the chunks' key, so a changed catalogue recomputes the frame.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import store as st
from pausdenoise.denoise.model import as_model_ref
from pausdenoise.denoise.restore import geometry_from_catalogue, valid_geometry
from pausdenoise.denoise.writer import denoise_to_store
from pausdenoise.errors import StageError
from pausdenoise.pipeline.context import Context, compute_with_progress, frame_stats_table
from pausdenoise.pipeline.stages.photometry import read_frame_catalogue


def catalogue_apertures(ctx: Context, frames: list[str], rows: pd.DataFrame | None = None,
                        ) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """Each frame's catalogue apertures for ``denoise.restore_catalogue`` (else nothing).

    Parameters
    ----------
    ctx : Context
        The stage context (the run's catalogue, ``photometry.pixel_scale`` and units).
    frames : list of str
        Frame ids.
    rows : pandas.DataFrame, optional
        Per-frame catalogue rows already read (the injection stage: the run's catalogue
        and its galaxies); by default the run's catalogue is read.

    Returns
    -------
    apertures : dict of str to pandas.DataFrame
        Frame id → valid :data:`pausdenoise.denoise.restore.GEOMETRY_COLUMNS` (px,
        radians); empty when restoration is off.
    left_out : dict of str to int
        Frame id → catalogue rows not restored because their aperture is unusable
        (non-finite centre, axis or angle, or an axis ≤ 0); only frames with such rows.

    Raises
    ------
    StageError
        When restoration is on and the run has no catalogue.
    """
    if not ctx.cfg.denoise.restore_catalogue:
        return {}, {}
    if not ctx.catalogue_path.exists():
        raise StageError(f"denoise.restore_catalogue needs the run's catalogue, and "
                         f"{ctx.catalogue_path} does not exist (set input.catalogue or "
                         "turn restore_catalogue off)")
    if rows is None:
        rows, _, _ = read_frame_catalogue(ctx)
    pcfg = ctx.cfg.photometry
    scale = 1.0 / pcfg.pixel_scale if pcfg.aperture_units == "arcsec" else 1.0
    by_frame = {(int(e), int(c)): g for (e, c), g in rows.groupby(["expnum", "ccd"], sort=False)}
    empty = rows.iloc[:0]
    apertures, left_out = {}, {}
    for f in frames:
        geometry = geometry_from_catalogue(by_frame.get(st.parse_frame_id(f), empty),
                                           axis_scale=scale)
        apertures[f] = valid_geometry(geometry)
        if len(apertures[f]) < len(geometry):
            left_out[f] = len(geometry) - len(apertures[f])
    return apertures, left_out


def run(ctx: Context) -> dict[str, Any]:
    """Denoise the store's frames with the checkpoint ``ctx.checkpoint``.

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        The stage summary: frames, chunks written, megapixels and Mpix/s, the catalogue
        apertures restored (0 when ``restore_catalogue`` is off) and the frames whose
        unusable catalogue rows were not (``[frame, rows]``), skipped frames (``partial``
        when some were skipped).

    Raises
    ------
    StageError
        When there is no checkpoint, or ``restore_catalogue`` is on without a catalogue.
    """
    if not Path(ctx.checkpoint).exists():
        raise StageError(f"denoise: no checkpoint at {ctx.checkpoint}; run the train stage")
    ref = as_model_ref(ctx.checkpoint)
    stats, skipped = frame_stats_table(ctx.store, st.list_frames(ctx.store))
    frames = list(stats)
    apertures, left_out = catalogue_apertures(ctx, frames)
    tasks = [denoise_to_store(ctx.store, f, ref, ctx.cfg.denoise, stats=stats[f],
                              force=ctx.force, apertures=apertures.get(f)) for f in frames]
    t0 = time.perf_counter()
    written = compute_with_progress(tasks, ctx.client, "denoise")
    secs = time.perf_counter() - t0
    mpix = sum(int(np.prod(st.open_frame(ctx.store, f, "image").shape)) for f in frames) / 1e6
    restored = sum(len(g) for g in apertures.values())
    return {
        "note": f"{len(frames)} frames, {int(sum(written))} chunks written, "
                f"{mpix / max(secs, 1e-9):.2f} Mpix/s"
                + (f", {restored} catalogue apertures restored" if apertures else "")
                + (f", {sum(left_out.values())} catalogue row(s) on {len(left_out)} frame(s) "
                   "not restored (unusable aperture: non-finite or axis <= 0; listed with "
                   "their rows in catalogue_issues.csv)" if left_out else "")
                + (f", {len(skipped)} frame(s) skipped" if skipped else ""),
        "frames": len(frames),
        "chunks_written": int(sum(written)),
        "mpix": mpix,
        "mpix_per_s": mpix / max(secs, 1e-9),
        "apertures_restored": restored,
        "apertures_not_restored": [[f, n] for f, n in left_out.items()],
        "skipped": [[f, r] for f, r in skipped.items()],
        "partial": bool(skipped),
    }
