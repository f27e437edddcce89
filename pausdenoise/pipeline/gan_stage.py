"""Stack and cGAN stage runners: co-adds, leave-one-out pairs, pix2pix, and its scores.

Both stages run after ``denoise`` and only when ``gan.enabled`` (off in the demo). Each stack
is one task on the pipeline's Dask cluster (or dask's local scheduler without one) that
reads its frames from the store one at a time (:class:`_LazyFrames` hands
:func:`~pausdenoise.stack.stack_frames` one frame per iteration, so a mean stack holds one
frame plus the sums: out of core) and writes its own arrays into the store.

``run_stack`` (stage ``stack``) writes
--------------------------------------
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
- for every **held-out** frame ``h`` (:func:`pausdenoise.pipeline.core.split_holdout`),
  the stack of *all other* exposures of its band and CCD on ``h``'s own grid and zero-point:
  ``frames/<h>/stack_others`` and ``stack_others_weight`` (same chunks as ``image``). These
  are the references the cGAN is scored against; ``h`` itself is never in them.
  Deep stacks and stacks of the others carry ``complete`` and ``stack_key`` attributes; a
  rerun skips those whose key (configuration, members, zero-points, members' ingest
  attributes) still matches.
- ``<run>/gan/pairs.npz``: the cGAN training pairs (one task per source exposure), cut by
  :func:`pausdenoise.gan.pairs.make_pairs` from the **training** exposures only, each
  target being the stack of the *other training* exposures (never the input exposure, and
  never a held-out one: held-out frames stay unseen by training).
- ``<run>/gan/stack_summary.csv``: per band/CCD, the sky noise of a single exposure and of
  the stack, their ratio and the √N expectation.

``run_gan`` (stage ``gan``) writes
-----------------------------------
- ``<run>/model/gan.safetensors`` (generator + metadata: training fingerprint, history) —
  reused when its fingerprint matches; ``<run>/gan/history.csv``;
- ``frames/<h>/gan`` for held-out frames (the generated stack-like image in the frame's ADU,
  sky level added back; same chunks as ``image``; ``gan_apply`` with ``map_overlap``);
- ``<run>/gan/metrics.csv``: the published study's metrics, pooled over held-out frames, for
  the raw single epoch, the N2V-denoised frame and the cGAN output (and, where it makes sense,
  the stack of the other exposures itself), each against the stack of the other exposures
  and against the noiseless truth, with the published numbers side by side;
  ``metrics_per_frame.csv``, ``completeness.csv``, ``photometry_bias.csv``;
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pausdenoise.pipeline.core import Context

STACKS_GROUP = "stacks"
"""Store group holding one sub-group of co-adds per band and CCD."""
GAN_ARRAY = "gan"
OTHERS_ARRAY = "stack_others"
OTHERS_WEIGHT_ARRAY = "stack_others_weight"
CHECKPOINT_NAME = "gan.safetensors"
KINDS = ("raw", "denoised", "gan", "stack_others")
"""Image kinds scored: single exposure, N2V output, cGAN output, stack of the others."""


def stack_id(band: str, ccd: int) -> str:
    """Name of the stack group of a band and CCD, e.g. ``"NB455_01"``."""
    return f"{band}_{int(ccd):02d}"


def gan_dir(ctx: Context) -> Path:
    """``<run>/gan``: the stage's tables and arrays."""
    return ctx.paths.out / "gan"


def gan_checkpoint(ctx: Context) -> Path:
    return ctx.paths.model_dir / CHECKPOINT_NAME


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _LazyFrames(Sequence):
    """A sequence of frame arrays read from the store only when indexed (out of core).

    Missing arrays (e.g. no ``ivar``) read as None; the whole sequence is None-valued then.
    """

    def __init__(self, store: Any, frames: Sequence[str], name: str) -> None:
        from pausdenoise import store as st

        self.store, self.frames, self.name = store, list(frames), name
        self.present = [name in st.frame_arrays(store, f) for f in self.frames]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k):  # type: ignore[override]
        from pausdenoise import store as st

        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not self.present[k]:
            return None
        return np.asarray(st.open_frame(self.store, self.frames[k], self.name))

    @property
    def any(self) -> bool:
        return any(self.present)


def _groups(exposures: pd.DataFrame) -> dict[tuple[str, int], list[str]]:
    """Frames of each (band, ccd), sorted by exposure number."""
    out = {}
    for (band, ccd), g in exposures.groupby(["band", "ccd"], sort=True):
        out[(str(band), int(ccd))] = g.sort_values("expnum")["frame"].tolist()
    return out


def _zps(exposures: pd.DataFrame, frames: Sequence[str]) -> list[float] | None:
    zp = exposures.set_index("frame").loc[list(frames), "zp"].to_numpy(float)
    return [float(z) for z in zp] if np.all(np.isfinite(zp) & (zp > 0)) else None


def _stack_inputs(store, frames: Sequence[str]):
    from pausdenoise import store as st

    images = _LazyFrames(store, frames, "image")
    masks = _LazyFrames(store, frames, "mask")
    ivars = _LazyFrames(store, frames, "ivar")
    wcs = [st.frame_wcs(store, f) for f in frames]
    return images, (masks if masks.any else None), (ivars if ivars.any else None), wcs


def _robust_sigma(values: np.ndarray, valid: np.ndarray) -> float:
    from pausdenoise.n2v.normalise import frame_statistics

    return float(frame_statistics(values, (~valid).astype(np.uint8)).sigma)


# --------------------------------------------------------------------------- stack stage


def _frame_token(store, frame: str) -> str:
    """Digest of a frame's attributes (ingest's source fingerprint, ZP, WCS header, …): it
    changes when the frame is re-ingested from different data."""
    from pausdenoise import store as st

    attrs = {k: v for k, v in st.frame_attrs(store, frame).items() if k != "complete"}
    return _digest(attrs)


def _is_done(node: Any, key: str) -> bool:
    """A stack product is up to date: written completely with the same key."""
    return node.attrs.get("complete") is True and node.attrs.get("stack_key") == key


def _deep_stack_task(store: str, frames: list[str], zps: list[float] | None, reference: int,
                     scfg: Any, gid: str, key: str, attrs: dict[str, Any]) -> dict[str, Any]:
    """One task: the deep stack of one band/CCD, written into ``stacks/<gid>`` (its arrays
    already created by the stage), with its noise summary. Runs on a Dask worker; reads the
    frames from the store one at a time (a mean stack holds one frame and the sums).

    Returns the ``stack_summary.csv`` row (noise in ADU at the reference zero-point).
    """
    from pausdenoise import store as st
    from pausdenoise.stack import stack_frames

    images, masks, ivars, wcs = _stack_inputs(store, frames)
    n = len(frames)
    ref = frames[reference]
    ref_shape = tuple(st.open_frame(store, ref).shape)
    stack, weight = stack_frames(images, masks, ivars, wcs, wcs[reference].celestial,
                                 ref_shape, scfg, zps=zps)
    # Noise: robust σ of the stack where every frame contributes vs the reference frame's.
    ref_img = images[reference]
    ref_mask = masks[reference] if masks is not None else None
    ref_good = np.isfinite(ref_img) & (True if ref_mask is None else ref_mask == 0)
    sig1 = _robust_sigma(ref_img, ref_good)
    # √N generalised to unequal noise: the gain of inverse-variance weighting of aligned
    # frames, Σ_k (σ_ref/σ_k)² under the root. Sub-pixel dithers resampled bilinearly
    # lower the per-pixel noise further (correlated noise), hence measured ≥ expected.
    sig_k = np.array([_robust_sigma(im, np.isfinite(im) & (True if mk is None else mk == 0))
                      for im, mk in ((images[k], None if masks is None else masks[k])
                                     for k in range(n))])
    expected = float(np.sqrt(np.sum((sig1 / sig_k) ** 2)))
    deep = weight >= 0.9 * float(weight.max())
    sig_n = _robust_sigma(stack, deep)
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
                 key: str, meta: dict[str, Any]) -> str:
    """One task: the stack of all frames but ``frames[i]`` on that frame's grid and
    zero-point, written into ``frames/<h>/stack_others(_weight)`` (arrays already created
    by the stage). Returns the frame name."""
    from pausdenoise import store as st
    from pausdenoise.stack import stack_frames

    images, masks, ivars, wcs = _stack_inputs(store, frames)
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
                size: int, stride: int, max_pairs: int | None, seed: int):
    """One task: the leave-one-out training pairs of source ``frames[i]`` (its cutouts and
    the cutouts of the stack of the other ``frames``), returned to the stage."""
    from pausdenoise.gan.pairs import make_pairs

    images, masks, ivars, wcs = _stack_inputs(store, frames)
    return make_pairs(images, masks, ivars, wcs, zps=zps, stack_config=scfg, sources=[i],
                      size=size, stride=stride, max_pairs_per_frame=max_pairs, seed=seed)


def _run_tasks(tasks: Sequence[Any], client: Any, label: str) -> list[Any]:
    from pausdenoise.pipeline.core import _compute_with_progress

    return list(_compute_with_progress(list(tasks), client, label)) if tasks else []


def run_stack(ctx: Context, gan_cfg: Any) -> dict[str, Any]:
    """Stage ``stack``: deep stacks per band/CCD, stacks of the others for held-out frames,
    leave-one-out training pairs (see the module docstring). Returns the stage summary.

    Every stack is one Dask task (``ctx.client`` when the pipeline has one, else dask's
    local scheduler) that reads its frames lazily from the store, one at a time for a mean
    stack, and writes its own arrays (created here first, so tasks never create metadata
    concurrently). The deep stacks and the stacks of the others are flagged ``complete``
    with a ``stack_key`` (stack configuration, members, zero-points, the members' ingest
    attributes) by the task that wrote them; a rerun skips those whose key still matches
    (``ctx.force`` redoes them). The training pairs are one task per source exposure,
    gathered in a fixed order; ``pairs.npz`` records its own key and is reused likewise.
    The products equal the serial computation bit for bit (each is one deterministic
    :func:`~pausdenoise.stack.stack_frames` call on the same inputs).
    """
    from dask import delayed

    from pausdenoise import store as st
    from pausdenoise.gan.pairs import CutoutPairs
    from pausdenoise.pipeline.core import StageError, split_holdout

    t0 = time.perf_counter()
    scfg = gan_cfg.stack
    store = str(ctx.store)
    exposures = st.exposure_table(ctx.store)
    if exposures.empty:
        raise StageError("stack: the store has no frame")
    train_frames, held = split_holdout(exposures, ctx.cfg.holdout_exposures_per_band)
    out_dir = gan_dir(ctx)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = st.open_store(ctx.store, "r+")
    stacks = root.require_group(STACKS_GROUP)
    scfg_json = scfg.model_dump(mode="json")

    rows: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    tasks: list[Any] = []
    n_deep = n_others = 0
    reused = 0
    pair_specs: list[tuple[list[str], list[float] | None, int]] = []
    tokens: dict[str, str] = {}
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
            tokens[f] = _frame_token(ctx.store, f)
        ref = frames[scfg.reference]
        gid = stack_id(band, ccd)
        order.append(gid)
        key = _digest(["deep", scfg_json, frames, zps, scfg.reference,
                       [tokens[f] for f in frames]])
        g = stacks.require_group(gid)
        if not ctx.force and _is_done(g, key) and "summary" in g.attrs:
            rows[gid] = dict(g.attrs["summary"])
            reused += 1
        else:
            g.update_attributes({"complete": False})
            chunks = st.write_chunks(ctx.store, ref, "image")
            shape = tuple(st.open_frame(ctx.store, ref).shape)
            for name in ("stack", "stack_weight"):
                st.create_array(g, name, shape, np.float32, chunks=chunks)
            attrs = {"band": band, "ccd": ccd, "reference_frame": ref, "frames": frames,
                     "zp_ref": None if zps is None else zps[scfg.reference],
                     "wcs": st.frame_wcs(ctx.store, ref).celestial.to_header().tostring(),
                     "stack_config": scfg_json}
            tasks.append(delayed(_deep_stack_task, pure=False)(
                store, frames, zps, scfg.reference, scfg, gid, key, attrs,
                dask_key_name=f"stack-deep-{gid}"))
            n_deep += 1

        # Stacks of the other exposures on each held-out frame's grid (scoring references).
        for h in (f for f in frames if f in held):
            i = frames.index(h)
            key_h = _digest(["others", scfg_json, frames, zps, i, [tokens[f] for f in frames]])
            arrays = st.frame_arrays(ctx.store, h)
            if not ctx.force and all(
                    a in arrays and _is_done(root[f"{st.FRAMES_GROUP}/{h}/{a}"], key_h)
                    for a in (OTHERS_ARRAY, OTHERS_WEIGHT_ARRAY)):
                reused += 1
                continue
            for name in (OTHERS_ARRAY, OTHERS_WEIGHT_ARRAY):
                st.create_output_array(ctx.store, h, name, like="image", dtype=np.float32)
            meta = {"members": [f for f in frames if f != h], "excluded": h,
                    "stack_config": scfg_json}
            tasks.append(delayed(_others_task, pure=False)(
                store, frames, zps, i, scfg, key_h, meta, dask_key_name=f"stack-others-{h}"))
            n_others += 1

        tr = [f for f in frames if f in train_frames]
        if len(tr) >= 2:
            pair_specs.append((tr, _zps(exposures, tr), len(pair_specs)))

    if not order:
        raise StageError("stack: no band/CCD has two or more exposures to stack")

    # Leave-one-out training pairs among the training exposures only: one task per source.
    pair_frames = [f for tr, _, _ in pair_specs for f in tr]
    pairs_key = _digest(["pairs", scfg_json, gan_cfg.cutout_size, gan_cfg.cutout_stride,
                         gan_cfg.max_pairs_per_frame,
                         [[tr, z, [tokens[f] for f in tr]] for tr, z, _ in pair_specs]])
    pairs_path = out_dir / "pairs.npz"
    pairs_reused = False
    if not ctx.force and pairs_path.exists():
        try:
            with np.load(pairs_path) as z:
                pairs_reused = "key" in z and str(z["key"]) == pairs_key
        except (OSError, ValueError):
            pairs_reused = False
    pair_tasks = []
    if not pairs_reused:
        gidx = 0
        for tr, t_zps, _ in pair_specs:
            for i in range(len(tr)):
                pair_tasks.append(delayed(_pairs_task, pure=False)(
                    store, tr, t_zps, i, scfg, gan_cfg.cutout_size, gan_cfg.cutout_stride,
                    gan_cfg.max_pairs_per_frame, gidx, dask_key_name=f"stack-pairs-{tr[i]}"))
                gidx += 1

    results = _run_tasks(tasks + pair_tasks, ctx.client, "stack")
    for r in results[:len(tasks)]:
        if isinstance(r, dict):
            rows[stack_id(r["band"], r["ccd"])] = r
    summary_tab = pd.DataFrame([rows[g] for g in order])
    summary_tab.to_csv(out_dir / "stack_summary.csv", index=False)

    n_pairs = 0
    if pairs_reused:
        with np.load(pairs_path) as z:
            n_pairs = int(z["source"].shape[0])
    elif pair_tasks:
        parts = []
        gidx = 0
        for tr, _, _ in pair_specs:
            for i in range(len(tr)):
                part = results[len(tasks) + gidx]
                assert tr[i] not in [tr[k] for k in part.target_members[i]]
                part.source = np.full(len(part), gidx, dtype=np.int64)
                part.stats = {gidx: part.stats[i]}
                part.target_members = {gidx: tuple(tr[k] for k in range(len(tr)) if k != i)}
                parts.append(part)
                gidx += 1
        pairs = CutoutPairs.concatenate(parts)
        n_pairs = len(pairs)
        np.savez(
            pairs_path,
            inputs=pairs.inputs, targets=pairs.targets, valid=pairs.valid,
            source=pairs.source, origins=pairs.origins, frames=np.array(pair_frames),
            sky=np.array([pairs.stats[k].sky for k in range(len(pair_frames))]),
            sigma=np.array([pairs.stats[k].sigma for k in range(len(pair_frames))]),
            members=np.array([json.dumps(pairs.target_members[k])
                              for k in range(len(pair_frames))]),
            key=np.array(pairs_key),
        )
    else:
        pairs_path.unlink(missing_ok=True)
    ratio = float(np.median(summary_tab["noise_ratio"] / summary_tab["sqrt_n"]))
    return {
        "note": f"{len(order)} stacks ({int(summary_tab['n_frames'].sum())} frames), noise "
                f"÷{summary_tab['noise_ratio'].median():.2f} (√N·{ratio:.2f}); {len(held)} "
                f"held-out references; {n_pairs} training pairs from {len(pair_frames)} "
                f"exposures{' (reused)' if pairs_reused else ''}; {n_deep + n_others} stack "
                f"task(s), {reused} up to date, in {time.perf_counter() - t0:.0f} s",
        "stacks": len(order),
        "stack_tasks": n_deep + n_others,
        "stacks_up_to_date": reused,
        "pair_tasks": len(pair_tasks),
        "pairs_reused": pairs_reused,
        "noise_ratio_over_sqrt_n": ratio,
        "pairs": n_pairs,
        "pair_frames": pair_frames,
        "held_out_frames": held,
    }


def load_pairs(path: Path):
    """The pairs written by :func:`run_stack` as :class:`~pausdenoise.gan.pairs.CutoutPairs`
    plus the frame name of each source index."""
    from pausdenoise.gan.pairs import CutoutPairs
    from pausdenoise.n2v.normalise import FrameStats

    z = np.load(path)
    frames = [str(f) for f in z["frames"]]
    stats = {k: FrameStats(sky=float(z["sky"][k]), sigma=float(z["sigma"][k]))
             for k in range(len(frames))}
    members = {k: tuple(json.loads(str(z["members"][k]))) for k in range(len(frames))}
    pairs = CutoutPairs(inputs=z["inputs"], targets=z["targets"], valid=z["valid"],
                        source=z["source"], origins=z["origins"], target_members=members,
                        stats=stats)
    return pairs, frames


# --------------------------------------------------------------------------- gan stage


def _train_or_reuse(ctx: Context, gan_cfg: Any) -> tuple[Any, dict[str, Any], bool]:
    from pausdenoise.gan.checkpoint import load_generator, read_metadata, save_generator
    from pausdenoise.gan.train import train_pix2pix
    from pausdenoise.pipeline.core import StageError

    pairs_path = gan_dir(ctx) / "pairs.npz"
    if not pairs_path.exists():
        raise StageError("gan: no training pairs (gan/pairs.npz); run the stack stage (it "
                         "needs at least two training exposures per band/CCD)")
    key = _digest([gan_cfg.train.model_dump(mode="json"),
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
             "train_config": history["config"]}
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    save_generator(ckpt, gen, extra=extra)
    return gen, extra, False


def _apply_tasks(ctx: Context, gan_cfg: Any, generator: Any, frames: Sequence[str],
                 ckpt_sha: str) -> tuple[list[Any], list[str]]:
    """Lazy ``store_dask`` writes of the ``gan`` array of ``frames`` (skipping up-to-date)."""
    from pausdenoise import store as st
    from pausdenoise.denoise import frame_stats_from_dask
    from pausdenoise.gan.apply import gan_apply

    halo = gan_cfg.apply.halo if gan_cfg.apply.halo is not None else generator.halo()
    tasks, todo = [], []
    for f in frames:
        unit = st.write_chunks(ctx.store, f, "image")
        chunks = tuple(gan_cfg.apply.chunks or unit)
        img = st.open_frame(ctx.store, f, "image", chunks=chunks)
        has_mask = "mask" in st.frame_arrays(ctx.store, f)
        msk = st.open_frame(ctx.store, f, "mask", chunks=chunks) if has_mask else None
        stats = frame_stats_from_dask(img, msk)
        key = _digest([ckpt_sha, stats.sky, stats.sigma, halo])
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


def run_gan(ctx: Context, gan_cfg: Any) -> dict[str, Any]:
    """Stage ``gan``: train (or reuse) pix2pix, apply it to held-out frames, score it."""
    from pausdenoise import store as st
    from pausdenoise.pipeline.core import StageError, _compute_with_progress, split_holdout

    t0 = time.perf_counter()
    out_dir = gan_dir(ctx)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator, extra, reused = _train_or_reuse(ctx, gan_cfg)
    t_train = time.perf_counter() - t0
    if extra.get("epoch"):
        pd.DataFrame(extra["epoch"]).to_csv(out_dir / "history.csv", index=False)
    exposures = st.exposure_table(ctx.store)
    _, held = split_holdout(exposures, ctx.cfg.holdout_exposures_per_band)
    held = [h for h in held if OTHERS_ARRAY in st.frame_arrays(ctx.store, h)]
    if not held:
        raise StageError("gan: no held-out frame with a stack of the other exposures; set "
                         "holdout_exposures_per_band ≥ 1 and run the stack stage")
    ckpt_sha = hashlib.sha256(gan_checkpoint(ctx).read_bytes()).hexdigest()
    tasks, todo = _apply_tasks(ctx, gan_cfg, generator, held, ckpt_sha)
    t1 = time.perf_counter()
    _compute_with_progress(tasks, ctx.client, "gan apply")
    t_apply = time.perf_counter() - t1
    root = st.open_store(ctx.store, "r+")
    for f, attrs in todo:
        root[f"{st.FRAMES_GROUP}/{f}/{GAN_ARRAY}"].attrs.update({**attrs, "complete": True})
    mpix = sum(int(np.prod(st.open_frame(ctx.store, f).shape)) for f, _ in todo) / 1e6
    t2 = time.perf_counter()
    summary = score(ctx, gan_cfg, held)
    t_score = time.perf_counter() - t2
    m = summary["table"]
    corr = m[(m["metric"] == "pixel correlation") & (m["reference"] == "stack_others")].iloc[0]
    rms = m[(m["metric"] == "RMS ratio to raw") & (m["reference"] == "stack_others")].iloc[0]
    note = (f"{'reused' if reused else 'trained'} on {extra.get('n_pairs', '?')} pairs "
            f"({t_train:.0f} s), applied to {len(todo)} held-out frames ({t_apply:.1f} s); "
            f"corr vs stack raw {corr['raw']:.3f} → gan {corr['gan']:.3f} (published 0.777 → "
            f"0.940), RMS ratio gan/raw {rms['gan']:.2f} (published 0.62)")
    return {
        "note": note,
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
    from pausdenoise import store as st

    if name not in st.frame_arrays(store, frame):
        return None
    return np.asarray(st.open_frame(store, frame, name), dtype=np.float64)


def _kind_mask(kind: str, mask: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Bad pixels of an image kind: the frame's mask, or no coverage for the stack."""
    if kind == "stack_others":
        return (weight <= 0).astype(np.uint8)
    return mask


def _sigma68(x: np.ndarray) -> float:
    if len(x) < 2:
        return float("nan")
    p16, p84 = np.percentile(x, [16, 84])
    return float((p84 - p16) / 2)


def score(ctx: Context, gan_cfg: Any, held: Sequence[str]) -> dict[str, Any]:
    """Metrics of raw, N2V-denoised and cGAN images of held-out frames (module docstring)."""
    from pausdenoise import evaluate as ev
    from pausdenoise import store as st
    from pausdenoise.gan import metrics as gm
    from pausdenoise.photometry import measure_frame, read_catalogue

    ecfg = ctx.cfg.evaluate
    out_dir = gan_dir(ctx)
    catalogue = read_catalogue(ctx.catalogue_path) if ctx.catalogue_path.exists() else None
    truth_tab = pd.read_parquet(ctx.truth_fluxes) if ctx.truth_fluxes else None
    rng = np.random.default_rng(0)
    per_frame, phot_rows = [], []
    found = {k: [] for k in KINDS}
    det_mags = {k: [] for k in KINDS}
    purity = {k: [0, 0] for k in KINDS}
    true_mags = []
    scatter: dict[str, list[np.ndarray]] = {}
    stamps: list[dict[str, np.ndarray | str]] = []
    n_scatter = max(gan_cfg.scatter_pixels // max(len(held), 1), 1)
    for f in held:
        attrs = st.frame_attrs(ctx.store, f)
        image = _read(ctx.store, f, "image")
        mask = _read(ctx.store, f, "mask")
        mask = np.zeros(image.shape, np.uint8) if mask is None else mask.astype(np.uint8)
        truth = _read(ctx.store, f, "truth")
        others = _read(ctx.store, f, OTHERS_ARRAY)
        ow = _read(ctx.store, f, OTHERS_WEIGHT_ARRAY)
        garr = st.open_store(ctx.store)[f"{st.FRAMES_GROUP}/{f}/{GAN_ARRAY}"]
        sky, sigma = float(garr.attrs["sky"]), float(garr.attrs["sigma"])
        # Every kind as a sky-subtracted image in the frame's ADU and zero-point.
        imgs = {"raw": image - sky, "gan": _read(ctx.store, f, GAN_ARRAY) - sky,
                "stack_others": others}
        den = _read(ctx.store, f, "denoised")
        if den is not None:
            imgs["denoised"] = den - sky
        good = (mask == 0) & np.isfinite(image) & (ow > 0)
        refs = {"stack_others": others}
        if truth is not None:
            refs["truth"] = truth - sky
        for kind, est in imgs.items():
            for rname, ref in refs.items():
                if kind == rname:
                    continue
                ok = good & np.isfinite(est) & np.isfinite(ref)
                d = est[ok] - ref[ok]
                per_frame.append({
                    "frame": f, "kind": kind, "reference": rname, "n_pixels": int(ok.sum()),
                    "correlation": gm.pixel_correlation(est, ref, ok),
                    "rms_adu": float(np.sqrt(np.mean(d**2))),
                    "rms_sigma": float(np.sqrt(np.mean(d**2)) / sigma),
                    "mean_adu": float(np.mean(d)),
                })
        # Pixel-value scatter (signal vs sky), in units of the frame σ.
        idx = np.flatnonzero(good.ravel())
        pick = rng.choice(idx, min(n_scatter, idx.size), replace=False)
        for kind, est in imgs.items():
            scatter.setdefault(kind, []).append(est.ravel()[pick] / sigma)
        if truth is not None:
            scatter.setdefault("truth", []).append((truth - sky).ravel()[pick] / sigma)
        # Detections at one fixed threshold (3σ of the smoothed raw noise, all kinds).
        thr = ecfg.detection_threshold * ev.smoothed_noise_sigma(sigma, ecfg.detection_fwhm)
        t = None
        if truth_tab is not None:
            t = truth_tab[(truth_tab["expnum"] == attrs["expnum"])
                          & (truth_tab["ccd"] == attrs["ccd"])]
            t = t.rename(columns={"x_true": "x", "y_true": "y"})
            true_mags.append(t["mag_true"].to_numpy())
            for kind, est in imgs.items():
                det = ev.detect(est, 0.0, thr, _kind_mask(kind, mask, ow), ecfg)
                fnd, real = ev.match_detections(det, t, ecfg.match_radius)
                found[kind].append(fnd)
                det_mags[kind].append(t["mag_true"].to_numpy()[fnd])
                purity[kind][0] += int(real.sum())
                purity[kind][1] += len(real)
        # Forced aperture photometry of the catalogue sources vs the truth image.
        if catalogue is not None and truth is not None:
            rows = catalogue[(catalogue["expnum"] == attrs["expnum"])
                             & (catalogue["ccd"] == attrs["ccd"])]
            kw = {"gain": float(attrs["gain"]), "zp": float(attrs.get("zp") or 1.0),
                  "expnum": int(attrs["expnum"]), "ccd": int(attrs["ccd"]),
                  "band": str(attrs["band"])}
            ref_phot = measure_frame(truth, mask, rows, ctx.cfg.photometry, kind="truth", **kw)
            for kind, est in imgs.items():
                ph = measure_frame(est + sky, _kind_mask(kind, mask, ow), rows,
                                   ctx.cfg.photometry, kind=kind, **kw)
                ok = (ph["flags"].to_numpy() == 0) & (ref_phot["flags"].to_numpy() == 0) \
                    & (ref_phot["flux"].to_numpy() > 0)
                phot_rows.append(pd.DataFrame({
                    "frame": f, "kind": kind, "ref_id": ph["ref_id"].to_numpy()[ok],
                    "I_auto": ph["I_auto"].to_numpy()[ok],
                    "flux": ph["flux"].to_numpy()[ok],
                    "flux_truth": ref_phot["flux"].to_numpy()[ok],
                }))
        if len(stamps) < ctx.cfg.report.n_stamps and t is not None:
            stamps += _stamps(t, imgs, None if truth is None else truth - sky,
                              ctx.cfg.report.stamp_size, ctx.cfg.report.n_stamps - len(stamps), f)

    pf = pd.DataFrame(per_frame)
    pf.to_csv(out_dir / "metrics_per_frame.csv", index=False)
    table = _summary_table(pf)
    det_summary: dict[str, Any] = {}
    if true_mags:
        mags = np.concatenate(true_mags)
        comp = []
        for kind in found:
            if not found[kind]:
                continue
            tab = ev.completeness_table(mags, np.concatenate(found[kind]), ecfg.mag_bins)
            tab.insert(0, "kind", kind)
            comp.append(tab)
            real, total = purity[kind]
            det_summary[kind] = {"m50": ev.completeness_limit(tab, 0.5),
                                 "m90": ev.completeness_limit(tab, 0.9),
                                 "purity": real / total if total else float("nan"),
                                 "detections": total}
        pd.concat(comp, ignore_index=True).to_csv(out_dir / "completeness.csv", index=False)
        np.savez_compressed(out_dir / "detections.npz",
                            **{k: np.concatenate(v) for k, v in det_mags.items() if v},
                            all_true=mags)
        for metric in ("m50", "m90", "purity", "detections"):
            table.append({"metric": f"detection {metric}", "reference": "truth",
                          **{k: det_summary.get(k, {}).get(metric, np.nan) for k in KINDS},
                          "published_single": np.nan, "published_generated": np.nan})
    bias = pd.DataFrame()
    if phot_rows:
        ph = pd.concat(phot_rows, ignore_index=True)
        bias = _bias_table(ph, ctx.cfg.compare.bins)
        bias.to_csv(out_dir / "photometry_bias.csv", index=False)
        allb = bias[bias["bin"] == "all"].set_index("kind")
        for col, metric in (("median_rel_bias", "photometric bias (median (f−f_true)/f_true)"),
                            ("sigma68_rel", "photometric scatter (σ68 of (f−f_true)/f_true)")):
            table.append({"metric": metric, "reference": "truth",
                          **{k: float(allb[col].get(k, np.nan)) for k in KINDS},
                          "published_single": np.nan, "published_generated": np.nan})
    tab = pd.DataFrame(table)[["metric", "reference", *KINDS, "published_single",
                                "published_generated"]]
    tab["note"] = tab["metric"].map(_NOTES).fillna("")
    tab.to_csv(out_dir / "metrics.csv", index=False)
    np.savez_compressed(out_dir / "scatter.npz",
                        **{k: np.concatenate(v) for k, v in scatter.items()})
    if stamps:
        keys = [k for k in ("raw", "denoised", "gan", "stack_others", "truth")
                if all(k in s for s in stamps)]
        np.savez_compressed(out_dir / "stamps.npz",
                            **{k: np.stack([s[k] for s in stamps]) for k in keys},
                            label=np.array([s["label"] for s in stamps]))
    (out_dir / "detection_summary.json").write_text(json.dumps(det_summary, indent=2,
                                                               default=float))
    return {"table": tab, "frames_scored": len(held), "detection": det_summary}


_NOTES = {
    "pixel correlation": "Pearson r of pixel values; scale-free, comparable with the study",
    "RMS pixel error [ADU]": "ADU of the single frame; the published RMS is in the study's "
                             "own units: compare only ratios",
    "RMS pixel error [frame σ]": "in units of the single frame's sky noise σ",
    "RMS ratio to raw": "comparable with the study: published 7.67e-4/1.24e-3 = 0.62",
}


def _summary_table(pf: pd.DataFrame) -> list[dict[str, Any]]:
    from pausdenoise.gan import metrics as gm

    rows = []
    for ref, g in pf.groupby("reference", sort=False):
        def pooled(col: str, kind: str, g=g) -> float:
            k = g[g["kind"] == kind]
            if k.empty:
                return float("nan")
            w = k["n_pixels"].to_numpy(float)
            if col.startswith("rms"):
                return float(np.sqrt(np.sum(w * k[col].to_numpy() ** 2) / w.sum()))
            return float(np.sum(w * k[col].to_numpy()) / w.sum())

        pub = ref == "stack_others"
        corr = {k: pooled("correlation", k) for k in KINDS}
        rms = {k: pooled("rms_adu", k) for k in KINDS}
        rms_s = {k: pooled("rms_sigma", k) for k in KINDS}
        rows.append({"metric": "pixel correlation", "reference": ref, **corr,
                     "published_single": gm.PUBLISHED_CORRELATION_SINGLE if pub else np.nan,
                     "published_generated": gm.PUBLISHED_CORRELATION_GENERATED if pub
                     else np.nan})
        rows.append({"metric": "RMS pixel error [ADU]", "reference": ref, **rms,
                     "published_single": gm.PUBLISHED_RMS_SINGLE if pub else np.nan,
                     "published_generated": gm.PUBLISHED_RMS_GENERATED if pub else np.nan})
        rows.append({"metric": "RMS pixel error [frame σ]", "reference": ref, **rms_s,
                     "published_single": np.nan, "published_generated": np.nan})
        rows.append({"metric": "RMS ratio to raw", "reference": ref,
                     **{k: rms[k] / rms["raw"] for k in KINDS},
                     "published_single": 1.0 if pub else np.nan,
                     "published_generated": gm.PUBLISHED_RMS_GENERATED / gm.PUBLISHED_RMS_SINGLE
                     if pub else np.nan})
    return rows


def _bias_table(ph: pd.DataFrame, bins: Sequence[float]) -> pd.DataFrame:
    """Median relative flux bias and σ68 of the relative error per I_auto bin and kind."""
    ph = ph.assign(rel=(ph["flux"] - ph["flux_truth"]) / ph["flux_truth"])
    edges = np.asarray(bins, float)
    rows = []
    for kind, g in ph.groupby("kind", sort=False):
        sel_all = [("all", np.ones(len(g), bool))]
        idx = np.digitize(g["I_auto"].to_numpy(), edges) - 1
        sel_bins = [(f"{edges[i]:g}-{edges[i + 1]:g}", idx == i) for i in range(len(edges) - 1)]
        for name, sel in sel_all + sel_bins:
            r = g["rel"].to_numpy()[sel]
            rows.append({"kind": kind, "bin": name, "n": int(sel.sum()),
                         "median_rel_bias": float(np.median(r)) if len(r) else np.nan,
                         "sigma68_rel": _sigma68(r)})
    return pd.DataFrame(rows)


def _stamps(t: pd.DataFrame, imgs: dict[str, np.ndarray], truth: np.ndarray | None,
            size: int, n: int, frame: str) -> list[dict[str, Any]]:
    h = size // 2
    ny, nx = imgs["raw"].shape
    sel = (~t["is_star"].astype(bool)) & (t["x"] > h) & (t["x"] < nx - h - 1) \
        & (t["y"] > h) & (t["y"] < ny - h - 1)
    t = t[sel].sort_values("mag_true")
    if t.empty:
        return []
    out = []
    for _, r in t.iloc[np.unique(np.linspace(0, len(t) - 1, min(n, len(t))).round()
                                 .astype(int))].iterrows():
        y0, x0 = round(r["y"]) - h, round(r["x"]) - h
        sl = (slice(y0, y0 + size), slice(x0, x0 + size))
        s = {k: v[sl].astype(np.float32) for k, v in imgs.items()}
        if truth is not None:
            s["truth"] = truth[sl].astype(np.float32)
        s["label"] = f"{frame} ref {int(r['ref_id'])} m={r['mag_true']:.1f}"
        out.append(s)
    return out


# --------------------------------------------------------------------------- report


def fig_pixel_scatter(z: dict[str, np.ndarray]):
    """Pixel values of single, denoised and generated images against the stack of the others
    (units of the frame σ, sky-subtracted); sky pixels grey, source pixels coloured."""
    import matplotlib.pyplot as plt

    kinds = [k for k in ("raw", "denoised", "gan") if k in z]
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.3 * len(kinds), 3.4), squeeze=False)
    ref = z["stack_others"]
    signal = (z["truth"] > 1.0) if "truth" in z else (ref > 1.0)
    lim = (-5, max(float(np.percentile(ref, 99.5)), 10.0))
    for ax, k in zip(axes[0], kinds, strict=True):
        ax.scatter(ref[~signal], z[k][~signal], s=1, c="0.6", alpha=0.3, rasterized=True,
                   label="sky (truth < 1σ)")
        ax.scatter(ref[signal], z[k][signal], s=1, c="C3", alpha=0.4, rasterized=True,
                   label="signal (truth ≥ 1σ)")
        ax.plot(lim, lim, "k-", lw=0.7)
        ax.set_xscale("symlog", linthresh=3)
        ax.set_yscale("symlog", linthresh=3)
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        r = np.corrcoef(ref, z[k])[0, 1]
        ax.set_title(f"{k} (r = {r:.3f})", fontsize=9)
        ax.set_xlabel("stack of the other exposures [σ]")
    axes[0, 0].set_ylabel("pixel value [σ of the single frame]")
    axes[0, 0].legend(fontsize=7, markerscale=6, loc="upper left")
    fig.tight_layout()
    return fig


def fig_detection_mags(z: dict[str, np.ndarray], bins: Sequence[float]):
    """Histograms of the true magnitudes of the sources detected in each image kind."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    if "all_true" in z:
        ax.hist(z["all_true"], bins=bins, histtype="stepfilled", color="0.85",
                label="all true sources")
    for i, k in enumerate(KINDS):
        if k in z:
            ax.hist(z[k], bins=bins, histtype="step", lw=1.4, color=f"C{i}", label=k)
    ax.set_xlabel("true magnitude of detected sources [AB, in the band]")
    ax.set_ylabel("sources")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_gan_stamps(z: dict[str, np.ndarray]):
    """Stamps: single | N2V | cGAN | stack of the others | truth, one asinh stretch per row."""
    import matplotlib.pyplot as plt

    from pausdenoise import report as rp

    keys = [k for k in ("raw", "denoised", "gan", "stack_others", "truth") if k in z]
    n = len(z["raw"])
    fig, axes = plt.subplots(n, len(keys), figsize=(2.1 * len(keys), 2.1 * n), squeeze=False)
    for i in range(n):
        vmin, vmax = rp.asinh_limits(np.asarray(z["raw"][i]))
        norm = rp._asinh_norm(vmin, vmax)
        for j, k in enumerate(keys):
            ax = axes[i, j]
            ax.imshow(z[k][i], origin="lower", cmap="gray", norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(k, fontsize=9)
            if j == 0:
                ax.set_ylabel(str(z["label"][i]), fontsize=7)
    fig.tight_layout()
    return fig


def report_section(ctx: Context, writer: Any):
    """The report's "Stacking and the cGAN" section, or None when the stage did not run.

    ``writer`` has ``figure(name, fig) -> png`` and ``table(name, df) -> df`` (the report
    stage's writer).
    """
    from pausdenoise import report as rp

    d = gan_dir(ctx)
    if not (d / "metrics.csv").exists():
        return None
    figs, tables = [], []
    tables.append(("cGAN vs single epoch and N2V on held-out exposures, with the published "
                   "study (correlation comparable; RMS only as ratios)",
                   writer.table("gan_metrics", pd.read_csv(d / "metrics.csv"))))
    if (d / "stack_summary.csv").exists():
        tables.append(("Stacks: sky noise of one exposure and of the stack",
                       writer.table("stack_summary", pd.read_csv(d / "stack_summary.csv"))))
    if (d / "photometry_bias.csv").exists():
        tables.append(("Forced aperture photometry vs the same apertures on the truth",
                       writer.table("gan_photometry_bias",
                                    pd.read_csv(d / "photometry_bias.csv"))))
    if (d / "stamps.npz").exists():
        z = dict(np.load(d / "stamps.npz"))
        figs.append(("Held-out galaxies: single epoch, N2V, cGAN, stack of the other "
                     "exposures, truth (sky-subtracted).",
                     writer.figure("gan_stamps", fig_gan_stamps(z))))
    if (d / "scatter.npz").exists():
        figs.append(("Pixel values against the stack of the other exposures (σ units).",
                     writer.figure("gan_pixel_scatter",
                                   fig_pixel_scatter(dict(np.load(d / "scatter.npz"))))))
    if (d / "completeness.csv").exists():
        comp = writer.table("gan_completeness", pd.read_csv(d / "completeness.csv"))
        figs.append(("Completeness at one fixed threshold (3σ of the smoothed raw noise).",
                     writer.figure("gan_completeness", rp.fig_completeness(
                         {k: g for k, g in comp.groupby("kind", sort=False)}))))
    if (d / "detections.npz").exists():
        figs.append(("Magnitudes (true) of the detected sources per image kind.",
                     writer.figure("gan_detection_mags", fig_detection_mags(
                         dict(np.load(d / "detections.npz")), ctx.cfg.evaluate.mag_bins))))
    if (d / "history.csv").exists():
        h = pd.read_csv(d / "history.csv")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(h["epoch"] + 1, h["loss_l1"], marker="o", label="L1 (valid pixels)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("L1 [σ]")
        ax.legend(fontsize=8)
        fig.tight_layout()
        figs.append(("pix2pix training: mean L1 per epoch.", writer.figure("gan_loss", fig)))
    return rp.ReportSection(
        "Stacking and the cGAN (single epoch → stack)",
        text="A pix2pix cGAN trained on leave-one-out pairs (single exposure → stack of the "
             "other training exposures) applied to held-out exposures, scored like the "
             "published study against the stack of the other exposures and against the "
             "noiseless truth. The reference stack contains the training exposures; the "
             "truth comparison has no such overlap.",
        figures=figs, tables=tables)
