"""Photometry stage: forced aperture photometry on raw and denoised images.

Reads the reference catalogue (Parquet, CSV or a FITS table; problem rows are flagged and
listed in ``<run>/catalogue_issues.csv``, not dropped); a sky catalogue (``ra``/``dec``, no
per-frame columns) is placed on every frame through the frame's WCS
(:mod:`pausdenoise.photometry.projection`); an image catalogue (a SExtractor catalogue of
pixel positions) on its frame and from there on the other exposures
(:mod:`pausdenoise.pipeline.image_catalogue`). It writes Parquet partitions under
``<run>/photometry/``. A partition is skipped (unless ``force``) when it was written with the
same settings from the same inputs: the frame's ingested content, its gain and read noise in
force, its denoised image's key and its catalogue rows
(:func:`pausdenoise.photometry.driver.plan_partitions`). Frames
without a complete denoised image are left out of the denoised photometry and listed;
partition files that no current partition owns are deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import store as st
from pausdenoise.errors import StageError
from pausdenoise.photometry import PhotFlag
from pausdenoise.photometry.catalogue import (
    CatalogueCheck,
    is_image_catalogue,
    is_sky_catalogue,
    read_any_catalogue,
    validate_catalogue,
    validate_sky_catalogue,
    with_magnitude,
)
from pausdenoise.photometry.config import PhotometryConfig
from pausdenoise.photometry.driver import (
    Partition,
    partition_tasks,
    partition_warnings,
    plan_partitions,
    remove_stale_partitions,
)
from pausdenoise.photometry.projection import FrameWCS, footprint_note, project_catalogue
from pausdenoise.pipeline.context import Context, compute_with_progress
from pausdenoise.pipeline.image_catalogue import place_image_catalogue


def _frame_wcs(ctx: Context) -> list[FrameWCS]:
    """Collect every frame's ids, shape and WCS text from the store.

    Returns
    -------
    list of FrameWCS
        One per complete frame, in store order.

    Raises
    ------
    StageError
        When a frame has no WCS (naming it): a sky catalogue cannot be placed on it.
    """
    out = []
    for frame in st.list_frames(ctx.store):
        attrs = st.frame_attrs(ctx.store, frame)
        if not attrs.get("wcs"):
            raise StageError(
                f"photometry: frame {frame} has no WCS in the store, so the sky catalogue "
                f"{ctx.catalogue_path} (ra/dec) cannot be placed on it; give a per-frame "
                "catalogue (expnum, ccd, aperture_x, aperture_y) or ingest frames with a WCS"
            )
        shape = (int(attrs["ny"]), int(attrs["nx"])) if "ny" in attrs and "nx" in attrs \
            else tuple(st.open_store(ctx.store)[f"{st.FRAMES_GROUP}/{frame}/image"].shape)
        out.append(FrameWCS(frame, int(attrs["expnum"]), int(attrs["ccd"]), shape,
                            str(attrs["wcs"])))
    return out


def read_frame_catalogue(ctx: Context) -> tuple[pd.DataFrame, CatalogueCheck, str]:
    """Read the catalogue (Parquet, CSV or FITS table); place a sky or image catalogue.

    The evaluate stage reads the catalogue through this function too, so both stages see
    the same per-frame apertures.

    Parameters
    ----------
    ctx : Context
        The stage context (``ctx.catalogue_path``, the store's frame WCS).

    Returns
    -------
    tuple of (pandas.DataFrame, CatalogueCheck, str)
        The per-frame catalogue, the row problems of the file, and a note ('' for a
        per-frame catalogue).

    Raises
    ------
    StageError
        An image catalogue whose frame is not found (:mod:`pausdenoise.pipeline.image_catalogue`).
    """
    catalogue = with_magnitude(read_any_catalogue(ctx.catalogue_path),
                               ctx.cfg.input.catalogue_magnitude, ctx.catalogue_path)
    if is_image_catalogue(catalogue):
        pcfg = ctx.cfg.photometry
        try:
            placed = place_image_catalogue(catalogue, ctx.store, ctx.cfg.input.catalogue_frame,
                                           pcfg.pixel_scale, pcfg.aperture_units)
        except ValueError as exc:
            raise StageError(f"input.catalogue {ctx.catalogue_path}: {exc}") from exc
        return placed.rows, validate_catalogue(placed.rows), placed.note()
    if not is_sky_catalogue(catalogue):
        return catalogue, validate_catalogue(catalogue), ""
    check = validate_sky_catalogue(catalogue)
    pcfg = ctx.cfg.photometry
    scale = 1.0 / pcfg.pixel_scale if pcfg.aperture_units == "pixel" else 1.0
    frames = _frame_wcs(ctx)
    rows = project_catalogue(catalogue, frames, axis_scale=scale)
    note = f", sky catalogue: {len(catalogue)} sources placed as {len(rows)} frame rows"
    if rows.empty and len(catalogue):
        note += (f" (no source falls on a frame: {footprint_note(catalogue, frames)}; "
                 "check the catalogue's area and the frames' WCS)")
    return rows, check, note


def _masked_annuli_note(written: list[str], catalogue: pd.DataFrame,
                        config: PhotometryConfig,
                        smallest: Callable[[], tuple[int, int] | None]) -> str:
    """Say so when most raw measurements have too few background pixels, and why.

    Parameters
    ----------
    written : list of str
        The partition files written by this run (only their ``kind=raw`` ones are read).
    catalogue : pandas.DataFrame
        The per-frame catalogue rows.
    config : PhotometryConfig
        ``annulus_mask_grow`` and the annulus radii (px).
    smallest : callable
        Returns ``(ny, nx)`` of the smallest frame, px, or None (asked only when the note
        is given: it reads every frame's attributes).

    Returns
    -------
    str
        '' when at most half of the raw rows written are ``FEW_ANNULUS`` with their annulus
        on the image (not ``ANNULUS_OFF_IMAGE``); else their count and the cause: frames
        smaller than the annulus, or the neighbour masks (``photometry.annulus_mask_grow``,
        with the sources per frame).
    """
    raw = [p for p in written if "kind=raw" in Path(p).parts]
    if not raw or catalogue.empty:
        return ""
    flags = np.concatenate([pd.read_parquet(p, columns=["flags"])["flags"].to_numpy()
                            for p in raw])
    # annuli flagged as lying off the image (ANNULUS_OFF_IMAGE) have their own flag
    few = int(np.count_nonzero(((flags & int(PhotFlag.FEW_ANNULUS)) != 0)
                               & ((flags & int(PhotFlag.ANNULUS_OFF_IMAGE)) == 0)))
    if few <= flags.size / 2:
        return ""
    head = f"; {few} of {flags.size} raw measurements flagged FEW_ANNULUS: "
    shape = smallest()
    if shape is not None and min(shape) < 2 * config.annulus_r_out:
        return (head + f"frames of {shape[0]} x {shape[1]} px are smaller than the "
                f"background annulus ({config.annulus_r_in:g}–{config.annulus_r_out:g} px, "
                "photometry.annulus_r_in/annulus_r_out)")
    per_frame = len(catalogue) / max(catalogue.groupby(["expnum", "ccd"]).ngroups, 1)
    return (head + f"the neighbour masks ({config.annulus_mask_grow:g} aperture semi-axes "
            f"around each of ~{per_frame:.0f} sources per frame, "
            "photometry.annulus_mask_grow) cover the background annuli; large apertures on "
            f"a crowded field need a smaller value (e.g. {config.annulus_mask_grow / 2:g}) "
            "or a wider annulus (photometry.annulus_r_in/annulus_r_out)")


def _smallest_frame(ctx: Context) -> tuple[int, int] | None:
    """Return the shape of the store's smallest frame (by its shorter side).

    Returns
    -------
    tuple of int or None
        ``(ny, nx)`` px (:func:`pausdenoise.store.frames_by_shape`); None without frames.
    """
    shapes = st.frames_by_shape(ctx.store)
    return min(shapes, key=min) if shapes else None


def plan_all_kinds(
    store: Path, out_dir: Path, frames: list[str], catalogue: pd.DataFrame,
    config: PhotometryConfig,
) -> tuple[list[Partition], list[str]]:
    """List the partitions of every image kind in ``config.kinds``.

    Parameters
    ----------
    store : Path
        The store whose frames are measured.
    out_dir : Path
        Root of the photometry output.
    frames : list of str
        The frames to measure.
    catalogue : pandas.DataFrame
        Per-frame catalogue rows.
    config : PhotometryConfig
        Photometry settings.

    Returns
    -------
    tuple of (list of Partition, list of str)
        The partitions, and the frames without a complete denoised image.
    """
    plans: list[Partition] = []
    missing: list[str] = []
    root = st.open_store(store)
    for kind in config.kinds:
        kind_frames = frames
        if kind == "denoised":  # frames the denoiser skipped (e.g. all masked) have none
            groups = {f: root[f"{st.FRAMES_GROUP}/{f}"] for f in frames}
            kind_frames = [f for f, g in groups.items()
                           if "denoised" in g and g["denoised"].attrs.get("complete", False)]
            missing = sorted(set(frames) - set(kind_frames))
        cfg_kind = config.model_copy(update={"kinds": (kind,)})
        plans += plan_partitions(store, out_dir, kind_frames, catalogue, cfg_kind)
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
        When the reference catalogue does not exist, or it is a sky catalogue and a frame
        has no WCS.
    """
    cat_path = ctx.catalogue_path
    if not cat_path.exists():
        raise StageError(f"photometry: reference catalogue {cat_path} not found")
    catalogue, check, sky_note = read_frame_catalogue(ctx)
    if not check.ok:
        check.issues.to_csv(ctx.paths.catalogue_issues, index=False)
        print(f"photometry: {len(check.issues)} catalogue row problem(s), flagged; see "
              f"{ctx.paths.catalogue_issues}")
    plans, missing = plan_all_kinds(ctx.store, ctx.paths.photometry,
                                    st.list_frames(ctx.store), catalogue, ctx.cfg.photometry)
    removed = remove_stale_partitions(ctx.paths.photometry, plans)
    tasks = partition_tasks(ctx.store, plans, ctx.cfg.photometry, overwrite=ctx.force)
    t0 = time.perf_counter()
    written = compute_with_progress(tasks, ctx.client, "photometry")
    secs = time.perf_counter() - t0
    for line in partition_warnings(written):
        print(f"photometry: warning: {line}")
    n_rows = len(catalogue) * len(ctx.cfg.photometry.kinds)
    return {
        "note": f"{len(written)} partitions written, {len(check.issues)} catalogue issues"
                + (f", {len(missing)} frame(s) without denoised image" if missing else "")
                + (f", {len(removed)} stale partition(s) removed" if removed else "")
                + sky_note + _masked_annuli_note(written, catalogue, ctx.cfg.photometry,
                                                 lambda: _smallest_frame(ctx)),
        "partitions_written": len(written),
        "partitions_removed": len(removed),
        "frames_without_denoised": missing,
        "partial": bool(missing),
        "catalogue_issues": len(check.issues),
        "sources_per_s": n_rows / max(secs, 1e-9) if written else None,
    }
