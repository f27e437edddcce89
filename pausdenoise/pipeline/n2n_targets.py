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
sky added back, so it is normalised like the image; NaN where a reference has no valid pixel
or the frame's pixel is bad), with attributes ``n2n_key`` (a digest of the frame, its
reference pool and the reference settings) and ``n2n_references`` (the frames used). A rerun
reuses a target whose key matches and rebuilds the others, frame by frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import register as rg
from pausdenoise import store as st
from pausdenoise.digest import json_digest
from pausdenoise.errors import PsfError
from pausdenoise.n2v.patches import Frame
from pausdenoise.pipeline.context import Context
from pausdenoise.pipeline.references import (
    PIXEL_ARRAYS,
    Registry,
    frame_arrays,
    matched_references,
)
from pausdenoise.psf import frame_psf

__all__ = ["TARGET_ARRAY", "attach_targets", "reference_settings"]

#: Name of the target array in a frame's group.
TARGET_ARRAY = "n2n_target"
#: The ``evaluate`` settings that decide a frame's references and their match.
_REFERENCE_FIELDS = ("min_overlap", "max_references", "reference_kernel",
                     "reference_candidates", "resampling")


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
    return {k: d[k] for k in _REFERENCE_FIELDS}


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
    """Match the frame's references from ``pool`` and average them.

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
    target = np.mean(np.stack(refs.values), axis=0) + sky
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


def _frame_fwhm(ctx: Context, frames: list[str]) -> dict[str, float]:
    """Read each frame's PSF FWHM from its attributes (frames without one are left out).

    Returns
    -------
    dict of str to float
        Frame → FWHM, px (``psf_fwhm_px``, or ``seeing`` in arcsec over
        ``photometry.pixel_scale``).
    """
    out, scale = {}, ctx.cfg.photometry.pixel_scale
    for f in frames:
        try:
            est = frame_psf(st.frame_attrs(ctx.store, f), pixel_scale=scale)
        except PsfError:
            continue
        out[f] = float(est.fwhm_px)
    return out


def _sharp_enough(frame: str, frames: list[str], fwhm: dict[str, float],
                  ratio: float | None) -> list[str]:
    """Return the frames whose PSF is at most ``ratio`` × the frame's (the frame included).

    Returns
    -------
    list of str
        ``frames`` when ``ratio`` is None or the frame has no FWHM; otherwise the frame and
        those without a FWHM or with one ≤ ``ratio`` × the frame's.
    """
    if ratio is None or frame not in fwhm:
        return list(frames)
    limit = ratio * fwhm[frame]
    return [g for g in frames if g == frame or g not in fwhm or fwhm[g] <= limit]


def _new_target(ctx: Context, frame: Frame, exposures: pd.DataFrame, pool: list[str],
                reg: Registry, fwhm: dict[str, float], ratio: float | None
                ) -> tuple[np.ndarray, list[str]] | str:
    """Build a frame's target from ``pool``, or say why there is none.

    Returns
    -------
    tuple of (ndarray, list of str) or str
        As :func:`_build_target`.
    """
    band = exposures.set_index("frame")["band"].astype(str)
    same_band = [g for g in pool if g != frame.name and band.get(g) == band.get(frame.name)]
    if ratio is not None and not same_band:
        return (f"no other training exposure of band {band.get(frame.name)} with a PSF FWHM "
                f"≤ {ratio:g} × the frame's ({fwhm.get(frame.name, float('nan')):.2f} px)")
    return _build_target(ctx, frame.name, exposures, frame.stats.sky, pool, reg)


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
        ``n2n_targets_built``, ``n2n_targets_reused`` and ``n2n_references`` (median
        number of references per frame).
    skipped : dict of str to str
        Frames left out of training because no reference could be matched, with the reason.
    """
    names = [f.name for f in frames]
    ratio = ctx.cfg.train.n2n_max_seeing_ratio
    fwhm = _frame_fwhm(ctx, names) if ratio is not None else {}
    reg, out, skipped = Registry(), [], {}
    built, reused, counts = 0, 0, []
    for f in frames:
        pool = _sharp_enough(f.name, names, fwhm, ratio)
        key = _target_key(ctx, f.name, pool, f.stats.sky)
        arr = _stored_target(ctx, f.name, key)
        if arr is not None:
            reused += 1
        else:
            res = _new_target(ctx, f, exposures, pool, reg, fwhm, ratio)
            if isinstance(res, str):
                skipped[f.name] = f"no Noise2Noise target: {res}"
                print(f"train: {f.name}: {skipped[f.name]}")
                continue
            arr = _write_target(ctx, f.name, res[0], key, res[1])
            built += 1
        counts.append(len(arr.attrs.get("n2n_references", [])))
        out.append(Frame(f.image, f.mask, f.stats, f.name, arr))
    info = {"n2n_targets_built": built, "n2n_targets_reused": reused,
            "n2n_references": float(np.median(counts)) if counts else 0.0}
    return out, info, skipped
