"""Denoise stage: denoise every frame of the store with the trained network.

Each frame is denoised chunk by chunk with ``map_overlap`` (seam-free) and written into the
store's ``denoised`` array; chunks already written with the same model and settings are
skipped unless ``force``. Frames without normalisation statistics are skipped and listed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pausdenoise import store as st
from pausdenoise.denoise.model import as_model_ref
from pausdenoise.denoise.writer import denoise_to_store
from pausdenoise.errors import StageError
from pausdenoise.pipeline.context import Context, compute_with_progress, frame_stats_table


def run(ctx: Context) -> dict[str, Any]:
    """Denoise the store's frames with the checkpoint ``ctx.checkpoint``.

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        The stage summary: frames, chunks written, megapixels and Mpix/s, skipped frames
        (``partial`` when some were skipped).

    Raises
    ------
    StageError
        When there is no checkpoint.
    """
    if not Path(ctx.checkpoint).exists():
        raise StageError(f"denoise: no checkpoint at {ctx.checkpoint}; run the train stage")
    ref = as_model_ref(ctx.checkpoint)
    stats, skipped = frame_stats_table(ctx.store, st.list_frames(ctx.store))
    frames = list(stats)
    tasks = [denoise_to_store(ctx.store, f, ref, ctx.cfg.denoise, stats=stats[f],
                              force=ctx.force) for f in frames]
    t0 = time.perf_counter()
    written = compute_with_progress(tasks, ctx.client, "denoise")
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
