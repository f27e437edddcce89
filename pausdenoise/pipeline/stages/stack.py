"""Stage ``stack``: co-adds, stacks of the other exposures, leave-one-out pairs.

Runs after ``denoise`` and only when ``gan.enabled`` (off in the demo). Each stack is one
task on the pipeline's Dask cluster (or dask's local scheduler without one) that reads its
frames from the store one at a time (:class:`_LazyFrames` hands
:func:`~pausdenoise.stack.stack_frames` one frame per iteration, so a mean stack holds one
frame plus the sums: out of core) and writes its own arrays into the store.

What it writes
--------------
- the **deep stack of each band and CCD** on the grid and zero-point of its reference frame
  (``gan.stack.reference``-th exposure, by exposure number) into the store::

      stacks/<band>_<ccd:02d>/   group, attrs: band, ccd, reference_frame, frames, zp_ref,
                                 wcs (FITS header text of the reference WCS), stack_config,
                                 sigma_single, sigma_stack, summary, stack_key, complete
        stack         float32   sky-subtracted weighted mean, ADU at zp_ref (0: no data)
        stack_weight  float32   Σ weights (the stack's inverse variance, 1/ADU²; 0: no data)

  Why in the store and not as FITS/npz in the run directory: stacks are images of the same
  size and kind as frames, read lazily by later stages (``open`` with dask) and by users
  with the same tools; they live beside ``frames/`` in their own group, so
  :func:`pausdenoise.store.list_frames` / ``exposure_table`` never mistake them for frames,
  and they use the store's codecs and chunks (the reference image's).
- for every **held-out** frame ``h`` (:func:`pausdenoise.pipeline.context.split_holdout`),
  the stack of *all other* exposures of its band and CCD on ``h``'s own grid and zero-point:
  ``frames/<h>/stack_others`` and ``stack_others_weight`` (same chunks as ``image``). These
  are the references the cGAN is scored against; ``h`` itself is never in them.
  Deep stacks and stacks of the others carry ``complete`` and ``stack_key`` attributes; a
  rerun skips those whose key (configuration, members, zero-points, members' ingest
  attributes) still matches.
- ``<run>/gan/pairs.npz``: the cGAN training pairs (one task per source exposure), cut by
  :func:`pausdenoise.gan.pairs.make_pairs` from the **training** exposures only, each
  target being the stack of the *other training* exposures (never the input exposure, and
  never a held-out one: held-out frames stay unseen by training). Read back with
  :func:`load_pairs`.
- ``<run>/gan/stack_summary.csv``: per band/CCD, the sky noise of a single exposure and of
  the stack, their ratio and the √N expectation.
- ``<run>/gan/registration.csv`` (only for frames without a WCS): per frame, its band, CCD,
  ``reference_frame``, ``dx_px``, ``dy_px`` (position in the frame minus position in the
  reference frame, px, 0-based), ``significance``, ``overlap`` and ``error``.

Frames without a WCS
--------------------
When no frame of a band/CCD has a WCS (small-telescope exposures of one field), each frame
is registered to the group's reference frame by FFT cross-correlation
(:func:`pausdenoise.register.measure_offset`) and the measured offset replaces the WCS
(:func:`pausdenoise.register.shift_wcs`): a whole-pixel offset is applied by re-indexing, a
sub-pixel remainder by bilinear interpolation (``resampling="shift"``; flux-conserving, it
smooths the noise as for dithered frames with a WCS). The deep stack's ``wcs`` attribute is
then None and ``registration_offsets_px`` holds the offsets; the summary counts the
``registered_frames``. A group mixing frames with and without a WCS, or a frame that cannot
be registered (no significant correlation peak, too small an overlap), stops the stage with
a :class:`~pausdenoise.errors.StageError` naming the frames (reasons in
``registration.csv``). Frames with a WCS are stacked through it exactly as before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from dask import delayed

from pausdenoise import register as rg
from pausdenoise import store as st
from pausdenoise.digest import json_digest
from pausdenoise.errors import RegistrationError, StageError
from pausdenoise.gan.pairs import CutoutPairs, make_pairs
from pausdenoise.gan.scoring import robust_sigma
from pausdenoise.n2v.normalise import FrameStats
from pausdenoise.pipeline.context import Context, compute_with_progress, split_holdout
from pausdenoise.pipeline.references import registration_pixels
from pausdenoise.stack import stack_frames

__all__ = [
    "OTHERS_ARRAY",
    "OTHERS_WEIGHT_ARRAY",
    "STACKS_GROUP",
    "gan_dir",
    "load_pairs",
    "run",
    "run_stack",
    "stack_id",
]

STACKS_GROUP = "stacks"
"""Store group holding one sub-group of co-adds per band and CCD."""
OTHERS_ARRAY = "stack_others"
"""Frame array: the stack of the other exposures on a held-out frame's grid (ADU)."""
OTHERS_WEIGHT_ARRAY = "stack_others_weight"
"""Frame array: the weight of :data:`OTHERS_ARRAY` (1/ADU²; 0: no data)."""


def stack_id(band: str, ccd: int) -> str:
    """Return the name of the stack group of a band and CCD, e.g. ``"NB455_01"``.

    Parameters
    ----------
    band : str
        Band name.
    ccd : int
        CCD number.

    Returns
    -------
    str
        ``"<band>_<ccd:02d>"``.
    """
    return f"{band}_{int(ccd):02d}"


def gan_dir(ctx: Context) -> Path:
    """Return ``<run>/gan``, the directory of the stack and gan stages' tables and arrays.

    Parameters
    ----------
    ctx : Context
        The pipeline context.

    Returns
    -------
    Path
        The directory (not created here).
    """
    return ctx.paths.out / "gan"


class _LazyFrames(Sequence):
    """A sequence of frame arrays read from the store only when indexed (out of core).

    Missing arrays (e.g. no ``ivar``) read as None; the whole sequence is None-valued then.
    """

    def __init__(self, store: Any, frames: Sequence[str], name: str) -> None:
        self.store, self.frames, self.name = store, list(frames), name
        self.present = [name in st.frame_arrays(store, f) for f in self.frames]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not self.present[k]:
            return None
        return np.asarray(st.open_frame(self.store, self.frames[k], self.name))

    @property
    def any(self) -> bool:
        return any(self.present)


def _groups(exposures: pd.DataFrame) -> dict[tuple[str, int], list[str]]:
    """Group the frames by (band, ccd).

    Returns
    -------
    dict
        (band, ccd) → frame names sorted by exposure number.
    """
    out = {}
    for (band, ccd), g in exposures.groupby(["band", "ccd"], sort=True):
        out[(str(band), int(ccd))] = g.sort_values("expnum")["frame"].tolist()
    return out


def _zps(exposures: pd.DataFrame, frames: Sequence[str]) -> list[float] | None:
    zp = exposures.set_index("frame").loc[list(frames), "zp"].to_numpy(float)
    return [float(z) for z in zp] if np.all(np.isfinite(zp) & (zp > 0)) else None


Offsets = list[tuple[float, float]]
"""Per frame ``(dx, dy)`` px from a band/CCD's reference frame (frames without a WCS)."""


def _stack_inputs(store, frames: Sequence[str], offsets: Offsets | None = None):
    """Open a group's frames lazily, with their WCSs or the registered shift-only WCSs.

    Returns
    -------
    tuple
        ``(images, masks or None, ivars or None, wcs list)``.
    """
    images = _LazyFrames(store, frames, "image")
    masks = _LazyFrames(store, frames, "mask")
    ivars = _LazyFrames(store, frames, "ivar")
    if offsets is None:
        wcs = [st.frame_wcs(store, f) for f in frames]
    else:
        wcs = [rg.shift_wcs(dx, dy) for dx, dy in offsets]
    return images, (masks if masks.any else None), (ivars if ivars.any else None), wcs


def _frame_token(store, frame: str) -> str:
    """Digest a frame's attributes (ingest's source fingerprint, ZP, WCS header, …).

    Returns
    -------
    str
        A digest that changes when the frame is re-ingested from different data.
    """
    attrs = {k: v for k, v in st.frame_attrs(store, frame).items() if k != "complete"}
    return json_digest(attrs)


def _is_done(node: Any, key: str) -> bool:
    """Tell whether a stack product is up to date.

    Returns
    -------
    bool
        True when it was written completely with the same key.
    """
    return node.attrs.get("complete") is True and node.attrs.get("stack_key") == key


# --------------------------------------------------------------------------- tasks


def _good(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return np.isfinite(image) & (True if mask is None else mask == 0)


def _deep_stack_task(store: str, frames: list[str], zps: list[float] | None, reference: int,
                     scfg: Any, gid: str, key: str, attrs: dict[str, Any],
                     offsets: Offsets | None = None) -> dict[str, Any]:
    """Stack one band/CCD into ``stacks/<gid>`` (one task), with its noise summary.

    The arrays were already created by the stage. Runs on a Dask worker; reads the frames
    from the store one at a time (a mean stack holds one frame and the sums).

    Returns
    -------
    dict
        The ``stack_summary.csv`` row (noise in ADU at the reference zero-point).
    """
    images, masks, ivars, wcs = _stack_inputs(store, frames, offsets)
    n = len(frames)
    ref = frames[reference]
    ref_shape = tuple(st.open_frame(store, ref).shape)
    stack, weight = stack_frames(images, masks, ivars, wcs, wcs[reference].celestial,
                                 ref_shape, scfg, zps=zps)
    # Noise: robust σ of the stack where every frame contributes vs the reference frame's.
    ref_img = images[reference]
    sig1 = robust_sigma(ref_img, _good(ref_img, masks[reference] if masks is not None else None))
    # √N generalised to unequal noise: the gain of inverse-variance weighting of aligned
    # frames, Σ_k (σ_ref/σ_k)² under the root. Sub-pixel dithers resampled bilinearly
    # lower the per-pixel noise further (correlated noise), hence measured ≥ expected.
    sig_k = np.array([robust_sigma(im, _good(im, mk))
                      for im, mk in ((images[k], None if masks is None else masks[k])
                                     for k in range(n))])
    expected = float(np.sqrt(np.sum((sig1 / sig_k) ** 2)))
    deep = weight >= 0.9 * float(weight.max())
    sig_n = robust_sigma(stack, deep)
    g = st.open_store(store, "r+")[f"{STACKS_GROUP}/{gid}"]
    g["stack"][...] = stack
    g["stack_weight"][...] = weight
    row = {"band": attrs["band"], "ccd": attrs["ccd"], "n_frames": n, "reference_frame": ref,
           "sigma_single_adu": sig1, "sigma_stack_adu": sig_n,
           "noise_ratio": sig1 / sig_n if sig_n > 0 else float("nan"),
           "sqrt_n": float(np.sqrt(n)), "expected_ratio_ivar": expected}
    g.update_attributes({**attrs, "sigma_single": sig1, "sigma_stack": sig_n,
                         "summary": row, "stack_key": key, "complete": True})
    return row


def _others_task(store: str, frames: list[str], zps: list[float] | None, i: int, scfg: Any,
                 key: str, meta: dict[str, Any], offsets: Offsets | None = None) -> str:
    """Stack all frames but ``frames[i]`` on that frame's grid and zero-point (one task).

    Written into ``frames/<h>/stack_others(_weight)`` (arrays already created by the stage).

    Returns
    -------
    str
        The frame name ``frames[i]``.
    """
    images, masks, ivars, wcs = _stack_inputs(store, frames, offsets)
    h = frames[i]
    others, ow = stack_frames(images, masks, ivars, wcs, wcs[i].celestial,
                              tuple(st.open_frame(store, h).shape), scfg, exclude=i, zps=zps,
                              zp_ref=None if zps is None else zps[i])
    grp = st.open_store(store, "r+")[f"{st.FRAMES_GROUP}/{h}"]
    for name, data in ((OTHERS_ARRAY, others), (OTHERS_WEIGHT_ARRAY, ow)):
        grp[name][...] = data
    for name in (OTHERS_ARRAY, OTHERS_WEIGHT_ARRAY):
        grp[name].attrs.update({**meta, "stack_key": key, "complete": True})
    return h


def _pairs_task(store: str, frames: list[str], zps: list[float] | None, i: int, scfg: Any,
                size: int, stride: int, max_pairs: int | None, seed: int,
                offsets: Offsets | None = None):
    """Cut the leave-one-out training pairs of source ``frames[i]`` (one task).

    Returns
    -------
    CutoutPairs
        Its cutouts and the cutouts of the stack of the other ``frames``.
    """
    images, masks, ivars, wcs = _stack_inputs(store, frames, offsets)
    return make_pairs(images, masks, ivars, wcs, zps=zps, stack_config=scfg, sources=[i],
                      size=size, stride=stride, max_pairs_per_frame=max_pairs, seed=seed)


# --------------------------------------------------------------------------- planning


def _write_registration(ctx: Context, plan: _StackPlan) -> None:
    """Write ``gan/registration.csv`` when frames were registered (removed otherwise)."""
    path = gan_dir(ctx) / "registration.csv"
    if not plan.registration:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(plan.registration).to_csv(path, index=False)


def _register_group(ctx: Context, plan: _StackPlan, band: str, ccd: int,
                    frames: list[str]) -> None:
    """Register a band/CCD's frames to its reference frame when none of them has a WCS.

    Offsets by cross-correlation (:func:`pausdenoise.register.measure_offset`), recorded in
    ``plan.offsets`` (px, frame minus reference) and ``plan.registration``; frames with a
    WCS are left to it.

    Raises
    ------
    StageError
        Some frames of the group have a WCS and others not, or a frame cannot be registered
        (its reason is in ``gan/registration.csv``).
    """
    has = [bool(st.frame_attrs(ctx.store, f).get("wcs")) for f in frames]
    if all(has):
        return
    if any(has):
        raise StageError(f"stack: {band} CCD {ccd}: {has.count(False)} of {len(frames)} "
                         "frames have no WCS: they cannot be aligned with the others")
    ref = frames[plan.scfg.reference]
    ref_img, ref_bad = registration_pixels(ctx.store, ref)
    sat = st.frame_attrs(ctx.store, ref).get("saturate")
    failed = []
    for f in frames:
        row = {"band": band, "ccd": ccd, "reference_frame": ref, "frame": f, "dx_px": 0.0,
               "dy_px": 0.0, "significance": np.nan, "overlap": 1.0, "error": ""}
        if f != ref:
            img, bad = registration_pixels(ctx.store, f)
            try:
                o = rg.measure_offset(ref_img, img, mask_ref=ref_bad, mask_img=bad,
                                      saturation=float(sat) if sat else None)
                row.update(dx_px=o.dx, dy_px=o.dy, significance=o.significance,
                           overlap=o.overlap)
            except RegistrationError as exc:
                row.update(dx_px=np.nan, dy_px=np.nan, overlap=np.nan, error=str(exc))
                failed.append(f"{f}: {exc}")
        plan.registration.append(row)
        plan.offsets[f] = (float(row["dx_px"]), float(row["dy_px"]))
    if failed:
        _write_registration(ctx, plan)
        raise StageError(f"stack: {band} CCD {ccd} has no WCS and frames cannot be registered "
                         f"to {ref}: " + "; ".join(failed))


@dataclass
class _StackPlan:
    """The stack tasks to run and what is already up to date, gathered group by group."""

    scfg: Any
    scfg_json: dict[str, Any]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    tasks: list[Any] = field(default_factory=list)
    n_deep: int = 0
    n_others: int = 0
    reused: int = 0
    pair_specs: list[tuple[list[str], list[float] | None, int]] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    offsets: dict[str, tuple[float, float]] = field(default_factory=dict)
    registration: list[dict[str, Any]] = field(default_factory=list)

    def offsets_of(self, frames: Sequence[str]) -> Offsets | None:
        """Return the registered offsets of ``frames``, or None when they have WCSs.

        Returns
        -------
        list of (float, float) or None
            ``(dx, dy)`` px of each frame from its band/CCD's reference frame.
        """
        if not frames or frames[0] not in self.offsets:
            return None
        return [self.offsets[f] for f in frames]


def _plan_deep(ctx: Context, plan: _StackPlan, stacks: Any, band: str, ccd: int,
               frames: list[str], zps: list[float] | None) -> None:
    """Queue the deep stack of one band/CCD unless up to date (creating its arrays)."""
    scfg = plan.scfg
    ref = frames[scfg.reference]
    gid = stack_id(band, ccd)
    plan.order.append(gid)
    offsets = plan.offsets_of(frames)
    key = json_digest(["deep", plan.scfg_json, frames, zps, scfg.reference,
                       [plan.tokens[f] for f in frames]] + ([offsets] if offsets else []))
    g = stacks.require_group(gid)
    if not ctx.force and _is_done(g, key) and "summary" in g.attrs:
        plan.rows[gid] = dict(g.attrs["summary"])
        plan.reused += 1
        return
    g.update_attributes({"complete": False})
    chunks = st.write_chunks(ctx.store, ref, "image")
    shape = tuple(st.open_frame(ctx.store, ref).shape)
    for name in ("stack", "stack_weight"):
        st.create_array(g, name, shape, np.float32, chunks=chunks)
    attrs = {"band": band, "ccd": ccd, "reference_frame": ref, "frames": frames,
             "zp_ref": None if zps is None else zps[scfg.reference],
             "wcs": None if offsets else
             st.frame_wcs(ctx.store, ref).celestial.to_header().tostring(),
             "stack_config": plan.scfg_json}
    if offsets:  # no WCS: the reference frame's pixel grid, offsets from registration
        attrs["registration_offsets_px"] = dict(zip(frames, offsets, strict=True))
    plan.tasks.append(delayed(_deep_stack_task, pure=False)(
        str(ctx.store), frames, zps, scfg.reference, scfg, gid, key, attrs, offsets,
        dask_key_name=f"stack-deep-{gid}"))
    plan.n_deep += 1


def _plan_others(ctx: Context, plan: _StackPlan, root: Any, frames: list[str],
                 zps: list[float] | None, held: Sequence[str]) -> None:
    """Queue the stacks of the other exposures on each held-out frame's grid.

    These are the scoring references; up-to-date ones are skipped, the arrays of the others
    created.
    """
    for h in (f for f in frames if f in held):
        i = frames.index(h)
        offsets = plan.offsets_of(frames)
        key_h = json_digest(["others", plan.scfg_json, frames, zps, i,
                             [plan.tokens[f] for f in frames]] + ([offsets] if offsets else []))
        arrays = st.frame_arrays(ctx.store, h)
        if not ctx.force and all(
                a in arrays and _is_done(root[f"{st.FRAMES_GROUP}/{h}/{a}"], key_h)
                for a in (OTHERS_ARRAY, OTHERS_WEIGHT_ARRAY)):
            plan.reused += 1
            continue
        for name in (OTHERS_ARRAY, OTHERS_WEIGHT_ARRAY):
            st.create_output_array(ctx.store, h, name, like="image", dtype=np.float32)
        meta = {"members": [f for f in frames if f != h], "excluded": h,
                "stack_config": plan.scfg_json}
        plan.tasks.append(delayed(_others_task, pure=False)(
            str(ctx.store), frames, zps, i, plan.scfg, key_h, meta, offsets,
            dask_key_name=f"stack-others-{h}"))
        plan.n_others += 1


def _plan_stacks(ctx: Context, scfg: Any, exposures: pd.DataFrame,
                 train_frames: Sequence[str], held: Sequence[str]) -> _StackPlan:
    """Plan every band/CCD: deep stack, stacks of the others, training-pair sources.

    Returns
    -------
    _StackPlan
        The tasks to run and what is up to date.

    Raises
    ------
    StageError
        If ``gan.stack.reference`` is too large or no band/CCD has two exposures.
    """
    root = st.open_store(ctx.store, "r+")
    stacks = root.require_group(STACKS_GROUP)
    plan = _StackPlan(scfg=scfg, scfg_json=scfg.model_dump(mode="json"))
    for (band, ccd), frames in _groups(exposures).items():
        n = len(frames)
        if n < 2:
            print(f"stack: {band} CCD {ccd} has a single exposure; no stack")
            continue
        if scfg.reference >= n:
            raise StageError(f"stack: gan.stack.reference = {scfg.reference} but {band} CCD "
                             f"{ccd} has {n} exposures")
        zps = _zps(exposures, frames)
        for f in frames:
            plan.tokens[f] = _frame_token(ctx.store, f)
        _register_group(ctx, plan, band, ccd, frames)
        _plan_deep(ctx, plan, stacks, band, ccd, frames, zps)
        _plan_others(ctx, plan, root, frames, zps, held)
        tr = [f for f in frames if f in train_frames]
        if len(tr) >= 2:
            plan.pair_specs.append((tr, _zps(exposures, tr), len(plan.pair_specs)))
    if not plan.order:
        raise StageError("stack: no band/CCD has two or more exposures to stack")
    return plan


# --------------------------------------------------------------------------- training pairs


def _pairs_key(gan_cfg: Any, plan: _StackPlan) -> str:
    specs = [[tr, z, [plan.tokens[f] for f in tr]] + ([plan.offsets_of(tr)]
                                                       if plan.offsets_of(tr) else [])
             for tr, z, _ in plan.pair_specs]
    return json_digest(["pairs", plan.scfg_json, gan_cfg.cutout_size, gan_cfg.cutout_stride,
                        gan_cfg.max_pairs_per_frame, specs])


def _pairs_up_to_date(pairs_path: Path, key: str) -> bool:
    if not pairs_path.exists():
        return False
    try:
        with np.load(pairs_path) as z:
            return "key" in z and str(z["key"]) == key
    except (OSError, ValueError):
        return False


def _pair_tasks(store: str, gan_cfg: Any, plan: _StackPlan) -> list[Any]:
    """Queue the leave-one-out training pairs among the training exposures.

    Returns
    -------
    list
        One delayed task per source exposure.
    """
    tasks = []
    gidx = 0
    for tr, t_zps, _ in plan.pair_specs:
        for i in range(len(tr)):
            tasks.append(delayed(_pairs_task, pure=False)(
                store, tr, t_zps, i, plan.scfg, gan_cfg.cutout_size, gan_cfg.cutout_stride,
                gan_cfg.max_pairs_per_frame, gidx, plan.offsets_of(tr),
                dask_key_name=f"stack-pairs-{tr[i]}"))
            gidx += 1
    return tasks


def _gather_pairs(plan: _StackPlan, results: Sequence[Any]) -> CutoutPairs:
    """Join the pair tasks' results (in task order); source index = task index.

    Returns
    -------
    CutoutPairs
        All pairs.
    """
    parts = []
    gidx = 0
    for tr, _, _ in plan.pair_specs:
        for i in range(len(tr)):
            part = results[gidx]
            assert tr[i] not in [tr[k] for k in part.target_members[i]]
            part.source = np.full(len(part), gidx, dtype=np.int64)
            part.stats = {gidx: part.stats[i]}
            part.target_members = {gidx: tuple(tr[k] for k in range(len(tr)) if k != i)}
            parts.append(part)
            gidx += 1
    return CutoutPairs.concatenate(parts)


def _save_pairs(path: Path, pairs: CutoutPairs, pair_frames: Sequence[str], key: str) -> None:
    n = len(pair_frames)
    np.savez(
        path,
        inputs=pairs.inputs, targets=pairs.targets, valid=pairs.valid,
        source=pairs.source, origins=pairs.origins, frames=np.array(pair_frames),
        sky=np.array([pairs.stats[k].sky for k in range(n)]),
        sigma=np.array([pairs.stats[k].sigma for k in range(n)]),
        members=np.array([json.dumps(pairs.target_members[k]) for k in range(n)]),
        key=np.array(key),
    )


def load_pairs(path: Path) -> tuple[CutoutPairs, list[str]]:
    """Read the training pairs written by :func:`run_stack`.

    Parameters
    ----------
    path : Path
        ``<run>/gan/pairs.npz``.

    Returns
    -------
    pairs : CutoutPairs
        Inputs and targets (normalised by each source frame's sky and σ), valid masks,
        source indices, origins (0-based pixels), target members and frame statistics.
    frames : list of str
        The frame name of each source index.
    """
    z = np.load(path)
    frames = [str(f) for f in z["frames"]]
    stats = {k: FrameStats(sky=float(z["sky"][k]), sigma=float(z["sigma"][k]))
             for k in range(len(frames))}
    members = {k: tuple(json.loads(str(z["members"][k]))) for k in range(len(frames))}
    pairs = CutoutPairs(inputs=z["inputs"], targets=z["targets"], valid=z["valid"],
                        source=z["source"], origins=z["origins"], target_members=members,
                        stats=stats)
    return pairs, frames


# --------------------------------------------------------------------------- the stage


def _write_summary(out_dir: Path, plan: _StackPlan, results: Sequence[Any]) -> pd.DataFrame:
    """Write ``stack_summary.csv``: the rows of reused stacks and of the deep-stack tasks.

    Returns
    -------
    DataFrame
        The table written.
    """
    for r in results:
        if isinstance(r, dict):
            plan.rows[stack_id(r["band"], r["ccd"])] = r
    summary_tab = pd.DataFrame([plan.rows[g] for g in plan.order])
    summary_tab.to_csv(out_dir / "stack_summary.csv", index=False)
    return summary_tab


def run_stack(ctx: Context, gan_cfg: Any) -> dict[str, Any]:
    """Make the deep stacks, the stacks of the others and the training pairs.

    Every stack is one Dask task (``ctx.client`` when the pipeline has one, else dask's
    local scheduler) that reads its frames lazily from the store, one at a time for a mean
    stack, and writes its own arrays (created here first, so tasks never create metadata
    concurrently). The deep stacks and the stacks of the others are flagged ``complete``
    with a ``stack_key`` (stack configuration, members, zero-points, the members' ingest
    attributes) by the task that wrote them; a rerun skips those whose key still matches
    (``ctx.force`` redoes them). The training pairs are one task per source exposure,
    gathered in a fixed order; ``pairs.npz`` records its own key and is reused likewise.
    The products equal the serial computation bit for bit (each is one deterministic
    :func:`~pausdenoise.stack.stack_frames` call on the same inputs). See the module
    docstring for what is written.

    Parameters
    ----------
    ctx : Context
        The pipeline context (store, run paths, Dask client, ``force``).
    gan_cfg : GanConfig
        The ``gan`` section of the configuration (``stack``, cutout size and stride,
        pairs per frame).

    Returns
    -------
    dict
        The stage summary: ``note``, ``stacks``, ``stack_tasks``, ``stacks_up_to_date``,
        ``pair_tasks``, ``pairs_reused``, ``noise_ratio_over_sqrt_n``, ``pairs``,
        ``pair_frames``, ``held_out_frames``.

    Raises
    ------
    StageError
        If the store has no frame, no band/CCD has two exposures, or
        ``gan.stack.reference`` exceeds a band/CCD's number of exposures.
    """
    t0 = time.perf_counter()
    exposures = st.exposure_table(ctx.store)
    if exposures.empty:
        raise StageError("stack: the store has no frame")
    train_frames, held = split_holdout(exposures, ctx.cfg.holdout_exposures_per_band)
    out_dir = gan_dir(ctx)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan_stacks(ctx, gan_cfg.stack, exposures, train_frames, held)

    pair_frames = [f for tr, _, _ in plan.pair_specs for f in tr]
    pairs_key = _pairs_key(gan_cfg, plan)
    pairs_path = out_dir / "pairs.npz"
    pairs_reused = not ctx.force and _pairs_up_to_date(pairs_path, pairs_key)
    pair_tasks = [] if pairs_reused else _pair_tasks(str(ctx.store), gan_cfg, plan)

    tasks = plan.tasks + pair_tasks
    results = list(compute_with_progress(tasks, ctx.client, "stack")) if tasks else []
    summary_tab = _write_summary(out_dir, plan, results[:len(plan.tasks)])
    _write_registration(ctx, plan)

    n_pairs = 0
    if pairs_reused:
        with np.load(pairs_path) as z:
            n_pairs = int(z["source"].shape[0])
    elif pair_tasks:
        pairs = _gather_pairs(plan, results[len(plan.tasks):])
        n_pairs = len(pairs)
        _save_pairs(pairs_path, pairs, pair_frames, pairs_key)
    else:
        pairs_path.unlink(missing_ok=True)
    ratio = float(np.median(summary_tab["noise_ratio"] / summary_tab["sqrt_n"]))
    registered = {}
    if plan.registration:  # frames without a WCS: offsets from cross-correlation
        reg = pd.DataFrame(plan.registration)
        registered = {"registered_frames": len(reg),
                      "max_registration_offset_px": float(
                          np.hypot(reg["dx_px"], reg["dy_px"]).max())}
    return {
        "note": f"{len(plan.order)} stacks ({int(summary_tab['n_frames'].sum())} frames), "
                f"noise ÷{summary_tab['noise_ratio'].median():.2f} (√N·{ratio:.2f}); "
                f"{len(held)} held-out references; {n_pairs} training pairs from "
                f"{len(pair_frames)} exposures{' (reused)' if pairs_reused else ''}; "
                f"{plan.n_deep + plan.n_others} stack task(s), {plan.reused} up to date, in "
                f"{time.perf_counter() - t0:.0f} s"
                + (f"; {len(plan.registration)} frames without WCS registered"
                   if plan.registration else ""),
        "stacks": len(plan.order),
        "stack_tasks": plan.n_deep + plan.n_others,
        "stacks_up_to_date": plan.reused,
        "pair_tasks": len(pair_tasks),
        "pairs_reused": pairs_reused,
        "noise_ratio_over_sqrt_n": ratio,
        "pairs": n_pairs,
        "pair_frames": pair_frames,
        "held_out_frames": held,
        **registered,
    }


def run(ctx: Context) -> dict[str, Any]:
    """Run the ``stack`` stage when ``gan.enabled`` (see :func:`run_stack`).

    Parameters
    ----------
    ctx : Context
        The pipeline context.

    Returns
    -------
    dict
        The stage summary of :func:`run_stack`, or a note that the stage is disabled.
    """
    if not ctx.cfg.gan.enabled:
        return {"note": "gan.enabled is false: nothing done"}
    return run_stack(ctx, ctx.cfg.gan)
