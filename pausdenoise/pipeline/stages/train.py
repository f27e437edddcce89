"""Train stage: train the Noise2Void network on the store's training exposures.

The last ``holdout_exposures_per_band`` exposures of each band are held out
(:func:`pausdenoise.pipeline.context.split_holdout`); frames whose normalisation statistics
cannot be computed are skipped and listed. Writes ``<run>/model/n2v.safetensors`` (through a
partial file renamed at the end) and ``<run>/model/history.csv``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import store as st
from pausdenoise.errors import StageError
from pausdenoise.n2v.patches import Frame
from pausdenoise.n2v.train import train_n2v
from pausdenoise.pipeline.context import Context, frame_stats_table, split_holdout

__all__ = ["noise_scale_from_frames", "run"]


def noise_scale_from_frames(exposures: pd.DataFrame, stats: dict[str, Any]) -> float | None:
    """Return the median over frames of gain [e⁻/ADU] × robust sky σ [ADU].

    That is the sky noise in electrons: the noise model's electrons per normalised unit.

    Parameters
    ----------
    exposures : DataFrame
        The store's exposure table (``frame`` and, where known, ``gain`` in e⁻/ADU).
    stats : dict of str to FrameStats
        Frame → normalisation statistics (``sigma`` in ADU).

    Returns
    -------
    float or None
        The median, or ``None`` when no frame has a finite positive gain.
    """
    if "gain" not in exposures:
        return None
    gains = exposures.set_index("frame")["gain"]
    values = [float(gains[f]) * s.sigma for f, s in stats.items()
              if f in gains.index and np.isfinite(gains[f]) and gains[f] > 0]
    return float(np.median(values)) if values else None


def _training_frames(ctx: Context, exposures: pd.DataFrame
                     ) -> tuple[list[Frame], list[str], list[str], dict[str, Any], dict[str, str]]:
    """Choose and open the training frames.

    Returns
    -------
    tuple
        The training frames (lazy arrays), their names, the held-out frames, the frames'
        statistics and the skipped frames with the reason.

    Raises
    ------
    StageError
        When no frame is left to train on.
    """
    train_frames, held = split_holdout(exposures, ctx.cfg.holdout_exposures_per_band)
    if not train_frames:
        raise StageError("train: the store has no frame to train on")
    stats, skipped = frame_stats_table(ctx.store, train_frames)
    train_frames = [f for f in train_frames if f in stats]
    if not train_frames:
        raise StageError(f"train: no usable frame in {ctx.store}: {skipped}")
    root = st.open_store(ctx.store, "r")
    frames = []
    for f in train_frames:
        g = root[f"{st.FRAMES_GROUP}/{f}"]
        frames.append(Frame(g["image"], g["mask"] if "mask" in g else None, stats[f], f))
    return frames, train_frames, held, stats, skipped


def _write_history(ctx: Context, history: Any) -> None:
    """``model/history.csv``: per epoch losses, learning rate and throughput."""
    hist = pd.DataFrame(
        {
            "epoch": np.arange(1, history.epochs_run + 1),
            "train_loss": history.train_loss,
            "val_loss": history.val_loss,
            "learning_rate": history.learning_rate,
            "patches_per_second": history.patches_per_second,
        }
    )
    hist.to_csv(ctx.paths.model_dir / "history.csv", index=False)


def run(ctx: Context) -> dict[str, Any]:
    """Train the network on the training frames and write the checkpoint and history.

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        The stage summary: epochs, best validation loss, output offset, noise scale,
        throughput, the training and held-out frames, and the skipped frames (``partial``
        when some were skipped).

    Raises
    ------
    StageError
        When the store has no usable frame to train on.
    """
    exposures = st.exposure_table(ctx.store)
    frames, train_frames, held, stats, skipped = _training_frames(ctx, exposures)
    train_cfg = ctx.cfg.train
    if train_cfg.poisson_scale is None:
        scale = noise_scale_from_frames(exposures, stats)
        if scale is not None:
            train_cfg = train_cfg.model_copy(update={"poisson_scale": scale})
    ctx.paths.model_dir.mkdir(parents=True, exist_ok=True)
    tmp = ctx.paths.checkpoint.with_name(".n2v.partial.safetensors")
    _, history = train_n2v(
        frames,
        train_cfg,
        progress=True,
        checkpoint_path=tmp,
        provenance={
            "store": str(ctx.store),
            "frames": train_frames,
            "held_out_frames": held,
            "bands": sorted(exposures["band"].unique().tolist()),
        },
    )
    tmp.replace(ctx.paths.checkpoint)
    for side in tmp.parent.glob(".n2v.partial.*"):  # companion metadata, if any
        side.replace(ctx.paths.checkpoint.with_name("n2v" + side.name[len(".n2v.partial"):]))
    _write_history(ctx, history)
    pps = float(np.mean(history.patches_per_second)) if history.patches_per_second else 0.0
    return {
        "note": f"{history.epochs_run} epochs, best val loss {history.best_val_loss:.4f}, "
                f"output offset {history.output_offset:+.3f} σ refitted, "
                f"{pps:.0f} patches/s on {history.device}",
        "epochs": history.epochs_run,
        "best_val_loss": history.best_val_loss,
        "output_offset_sigma": history.output_offset,
        "noise_scale_electrons": train_cfg.noise_scale,
        "patches_per_second": pps,
        "train_frames": train_frames,
        "held_out_frames": held,
        "skipped": [[f, r] for f, r in skipped.items()],
        "partial": bool(skipped),
    }
