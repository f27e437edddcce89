"""Noise2Noise targets of the training frames (``train.method: n2n``).

Each training frame's target is the mean of its matched references
(:func:`pausdenoise.pipeline.references.matched_references`): its other exposures, *from
the training frames only*, brought onto its grid, to its seeing, sub-pixel position and flux
scale, with the ``evaluate`` reference settings. What the exposures share is the frame's
truth, what they do not is noise, so a network trained to predict the target from the frame
learns to denoise without a noise model, every pixel a target. Held-out frames are never
inputs nor targets, so they can serve as the evaluation's independent references
(``evaluate.reference_pool``).

With ``train.n2n_max_seeing_ratio`` a frame's references come only from exposures whose PSF
FWHM is at most that ratio times its own: the kernel can blur a sharper reference to the
frame's seeing but cannot sharpen a blurrier one, and a blurrier target teaches the network
to blur.

The target is stored next to the frame's image as the array ``n2n_target`` (ADU, the frame's
sky added back, so it is normalised like the image; NaN where no reference has a valid pixel
or the frame's pixel is bad), with attributes ``n2n_key`` (a digest of the frame, its
reference pool and the reference settings) and ``n2n_references`` (the frames used). A rerun
reuses a target whose key matches and rebuilds the others, frame by frame.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import reference_match as rm
from pausdenoise import register as rg
from pausdenoise import store as st
from pausdenoise.digest import json_digest
from pausdenoise.n2v.patches import Frame
from pausdenoise.pipeline.context import Context
from pausdenoise.pipeline.references import (
    PIXEL_ARRAYS,
    Registry,
    frame_arrays,
    frame_fwhm,
    matched_references,
    no_broader,
)

__all__ = ["TARGET_ARRAY", "attach_targets", "reference_settings"]

#: Name of the target array in a frame's group.
TARGET_ARRAY = "n2n_target"
#: The ``evaluate`` settings that decide a frame's references and their match.
_REFERENCE_FIELDS = ("min_overlap", "max_references", "reference_kernel",
                     "reference_candidates", "resampling", "reference_model")


def reference_settings(evaluate_cfg: Any) -> dict[str, Any]:
    """Return the ``evaluate`` settings that decide the references and their match.

    Parameters
    ----------
    evaluate_cfg : EvaluateConfig
        The evaluate section of the configuration.

    Returns
    -------
    dict
        Field → value (JSON-serialisable).
    """
    d = evaluate_cfg.model_dump(mode="json")
    out = {k: d[k] for k in _REFERENCE_FIELDS}
    if out["reference_model"] == "free":  # the default: digests of earlier runs unchanged
        del out["reference_model"]
    return out


def _target_key(ctx: Context, frame: str, pool: list[str], sky: float) -> str:
    """Digest what a frame's target depends on.

    Returns
    -------
    str
        A digest of the frame, its reference pool, its sky (ADU) and the settings.
    """
    return json_digest(["n2n target", frame, sorted(pool), round(float(sky), 6),
                        reference_settings(ctx.cfg.evaluate)])


def _stored_target(ctx: Context, frame: str, key: str) -> Any:
    """Open the frame's stored target.

    Returns
    -------
    zarr.Array or None
        The target array when its key matches ``key``, else None.
    """
    if TARGET_ARRAY not in st.frame_arrays(ctx.store, frame):
        return None
    arr = st.open_store(ctx.store, "r")[f"{st.FRAMES_GROUP}/{frame}/{TARGET_ARRAY}"]
    return arr if arr.attrs.get("n2n_key") == key else None


def _build_target(ctx: Context, frame: str, exposures: pd.DataFrame, sky: float,
                  pool: list[str], reg: Registry) -> tuple[np.ndarray, list[str]] | str:
    """Match the frame's references from ``pool`` and average them where they are valid.

    Each pixel's target is the mean of the references valid there (their noise differs
    from pixel to pixel; Noise2Noise needs only its mean to be the truth), so a masked
    pixel of one reference does not cost the target the kernel's footprint around it.

    Returns
    -------
    tuple of (ndarray, list of str) or str
        The target (ADU, sky included, NaN where undefined) and its reference frames, or
        the reason there is none.
    """
    arr = frame_arrays(ctx.store, frame, PIXEL_ARRAYS)
    image = arr["image"].astype(np.float64)
    good = ~rg.bad_pixel_map(image, arr.get("mask"), arr.get("ivar"))
    refs = matched_references(ctx, frame, exposures, image, good, sky, reg, pool)
    if isinstance(refs, str):
        return refs
    target = rm.valid_mean(refs.values) + sky  # a pixel needs one valid reference, not all
    target[~good] = np.nan
    return target.astype(np.float32), refs.frames


def _write_target(ctx: Context, frame: str, target: np.ndarray, key: str,
                  references: list[str]) -> Any:
    """Write the target array and its attributes.

    Returns
    -------
    zarr.Array
        The target, opened read-only.
    """
    out = st.create_output_array(ctx.store, frame, TARGET_ARRAY, dtype="float32")
    out[...] = target
    out.attrs.update({"n2n_key": key, "n2n_references": references})
    return st.open_store(ctx.store, "r")[f"{st.FRAMES_GROUP}/{frame}/{TARGET_ARRAY}"]


def _same_band(frame: str, exposures: pd.DataFrame, frames: list[str]) -> list[str]:
    """Return the frames of ``frames`` other than ``frame`` taken in its band.

    Parameters
    ----------
    frame : str
        The frame.
    exposures : DataFrame
        The store's exposure table (``frame``, ``band``).
    frames : list of str
        Candidate frames.

    Returns
    -------
    list of str
    """
    band = exposures.set_index("frame")["band"].astype(str)
    return [g for g in frames if g != frame and band.get(g) == band.get(frame)]


def _excluded_by_setting(frame: str, exposures: pd.DataFrame, pool: list[str],
                         names: list[str], fwhm: dict[str, float],
                         ratio: float | None) -> str | None:
    """Say why the seeing filter alone leaves a frame without a reference.

    Parameters
    ----------
    frame : str
        The frame.
    exposures : DataFrame
        The store's exposure table.
    pool : list of str
        The training frames the filter keeps for it.
    names : list of str
        All training frames.
    fwhm : dict of str to float
        Frame → PSF FWHM, px.
    ratio : float or None
        ``train.n2n_max_seeing_ratio``.

    Returns
    -------
    str or None
        The reason, when the filter removed every training exposure of the frame's band
        (a frame with none to begin with is not excluded by the setting but skipped).
    """
    if ratio is None or _same_band(frame, exposures, pool):
        return None
    if not _same_band(frame, exposures, names):
        return None
    band = exposures.set_index("frame")["band"].astype(str).get(frame)
    return (f"train.n2n_max_seeing_ratio: no other training exposure of band {band} with "
            f"a PSF FWHM ≤ {ratio:g} × the frame's ({fwhm.get(frame, float('nan')):.2f} px)")


def attach_targets(ctx: Context, exposures: pd.DataFrame, frames: list[Frame]
                   ) -> tuple[list[Frame], dict[str, Any], dict[str, str]]:
    """Give every training frame its Noise2Noise target (built, or reused from the store).

    Parameters
    ----------
    ctx : Context
        The stage context (store, ``evaluate`` reference settings).
    exposures : DataFrame
        The store's exposure table.
    frames : list of Frame
        The training frames (their names are frame ids of the store).

    Returns
    -------
    frames : list of Frame
        The frames that have a target, with it (lazy store arrays).
    info : dict
        ``n2n_targets_built``, ``n2n_targets_reused``, ``n2n_targets_seconds`` (wall time
        of the builds), ``n2n_references`` (median
        number of references per frame) and ``excluded``: [frame, reason] of the frames
        that ``train.n2n_max_seeing_ratio`` leaves without a reference (left out as
        configured, not a failure).
    skipped : dict of str to str
        Frames left out of training because no reference could be matched, with the reason.
    """
    names = [f.name for f in frames]
    ratio = ctx.cfg.train.n2n_max_seeing_ratio
    fwhm = frame_fwhm(ctx, names) if ratio is not None else {}
    reg, out, skipped, excluded = Registry(stage="train"), [], {}, {}
    built, reused, counts, seconds = 0, 0, [], 0.0
    for f in frames:
        pool = no_broader(f.name, names, fwhm, ratio)
        key = _target_key(ctx, f.name, pool, f.stats.sky)
        arr = _stored_target(ctx, f.name, key)
        why_not = None if arr is not None else _excluded_by_setting(
            f.name, exposures, pool, names, fwhm, ratio)
        if why_not is not None:
            excluded[f.name] = why_not
            print(f"train: {f.name}: excluded by {why_not}")
            continue
        if arr is not None:
            reused += 1
        else:
            t0 = time.perf_counter()
            res = _build_target(ctx, f.name, exposures, f.stats.sky, pool, reg)
            seconds += time.perf_counter() - t0
            if isinstance(res, str):
                skipped[f.name] = f"no Noise2Noise target: {res}"
                print(f"train: {f.name}: {skipped[f.name]}")
                continue
            arr = _write_target(ctx, f.name, res[0], key, res[1])
            built += 1
        counts.append(len(arr.attrs.get("n2n_references", [])))
        out.append(Frame(f.image, f.mask, f.stats, f.name, arr))
    info = {"n2n_targets_built": built, "n2n_targets_reused": reused,
            "n2n_targets_seconds": seconds,
            "n2n_references": float(np.median(counts)) if counts else 0.0,
            "excluded": [[f, r] for f, r in excluded.items()]}
    return out, info, skipped
