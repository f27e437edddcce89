"""Photometry stage: forced aperture photometry on raw and denoised images.

Reads the reference catalogue (problem rows are flagged and listed in
``<run>/catalogue_issues.csv``, not dropped) and writes Parquet partitions under
``<run>/photometry/``. A partition is skipped (unless ``force``) when it was written with the
same settings from the same inputs: the frame's ingested content, its denoised image's key
and its catalogue rows (:func:`pausdenoise.photometry.driver.plan_partitions`). Frames
without a complete denoised image are left out of the denoised photometry and listed;
partition files that no current partition owns are deleted.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from pausdenoise import store as st
from pausdenoise.errors import StageError
from pausdenoise.photometry.catalogue import read_catalogue, validate_catalogue
from pausdenoise.photometry.driver import (
    Partition,
    partition_tasks,
    plan_partitions,
    remove_stale_partitions,
)
from pausdenoise.pipeline.context import Context, compute_with_progress


def _plan(ctx: Context, catalogue: pd.DataFrame) -> tuple[list[Partition], list[str]]:
    """List the partitions of every image kind.

    Returns
    -------
    tuple of (list of Partition, list of str)
        The partitions, and the frames without a complete denoised image.
    """
    frames = st.list_frames(ctx.store)
    plans: list[Partition] = []
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
        plans += plan_partitions(ctx.store, ctx.paths.photometry, kind_frames, catalogue,
                                 cfg_kind)
    return plans, missing


def run(ctx: Context) -> dict[str, Any]:
    """Measure every catalogue source on every frame, for each configured image kind.

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        The stage summary: partitions written and stale ones removed, catalogue issues,
        frames without a denoised image (``partial`` when there are some) and sources
        measured per second.

    Raises
    ------
    StageError
        When the reference catalogue does not exist.
    """
    cat_path = ctx.catalogue_path
    if not cat_path.exists():
        raise StageError(f"photometry: reference catalogue {cat_path} not found")
    catalogue = read_catalogue(cat_path)
    check = validate_catalogue(catalogue)
    if not check.ok:
        check.issues.to_csv(ctx.paths.catalogue_issues, index=False)
        print(f"photometry: {len(check.issues)} catalogue row problem(s), flagged; see "
              f"{ctx.paths.catalogue_issues}")
    plans, missing = _plan(ctx, catalogue)
    removed = remove_stale_partitions(ctx.paths.photometry, plans)
    tasks = partition_tasks(ctx.store, plans, ctx.cfg.photometry, overwrite=ctx.force)
    t0 = time.perf_counter()
    written = compute_with_progress(tasks, ctx.client, "photometry")
    secs = time.perf_counter() - t0
    n_rows = len(catalogue) * len(ctx.cfg.photometry.kinds)
    return {
        "note": f"{len(written)} partitions written, {len(check.issues)} catalogue issues"
                + (f", {len(missing)} frame(s) without denoised image" if missing else "")
                + (f", {len(removed)} stale partition(s) removed" if removed else ""),
        "partitions_written": len(written),
        "partitions_removed": len(removed),
        "frames_without_denoised": missing,
        "partial": bool(missing),
        "catalogue_issues": len(check.issues),
        "sources_per_s": n_rows / max(secs, 1e-9) if written else None,
    }
