"""Photometry stage: forced aperture photometry on raw and denoised images.

Reads the reference catalogue (problem rows are flagged and listed in
``<run>/catalogue_issues.csv``, not dropped) and writes Parquet partitions under
``<run>/photometry/``; complete partitions are skipped unless ``force``. Frames without a
complete denoised image are left out of the denoised photometry and listed.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from pausdenoise import store as st
from pausdenoise.errors import StageError
from pausdenoise.photometry.catalogue import read_catalogue, validate_catalogue
from pausdenoise.photometry.driver import run_photometry
from pausdenoise.pipeline.context import Context, compute_with_progress


def _tasks(ctx: Context, catalogue: pd.DataFrame) -> tuple[list[Any], list[str]]:
    """Build the photometry tasks of every image kind.

    Returns
    -------
    tuple of (list, list of str)
        The tasks, and the frames without a complete denoised image.
    """
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
    return tasks, missing


def run(ctx: Context) -> dict[str, Any]:
    """Measure every catalogue source on every frame, for each configured image kind.

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        The stage summary: partitions written, catalogue issues, frames without a denoised
        image (``partial`` when there are some) and sources measured per second.

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
    tasks, missing = _tasks(ctx, catalogue)
    t0 = time.perf_counter()
    written = compute_with_progress(tasks, ctx.client, "photometry")
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
