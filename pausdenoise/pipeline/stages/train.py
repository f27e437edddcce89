"""Train stage: train the Noise2Void network on the store's training exposures.

The last ``holdout_exposures_per_band`` exposures of each band are held out
(:func:`pausdenoise.pipeline.context.split_holdout`); frames whose normalisation statistics
cannot be computed are skipped and listed.

The noise measured at ingest (:mod:`pausdenoise.ingest.noise`) sets the training settings
left unset in the configuration: ``train.poisson_scale`` from the frames' gains (header or
fitted, see :func:`noise_scale_from_frames`), ``train.sky_variance`` from their gains and
read noise (:func:`sky_variance_from_frames`) and ``train.noise_correlation`` (the median
over the training frames of ``noise_corr_x``/``noise_corr_y``), which decides the structN2V
axes and the blind-spot radius of the ``auto`` settings. With ``train.method: sure`` and
``train.noise_per_frame: true`` each frame with a gain also keeps its own noise model
(:func:`frame_noise_models`), which SURE uses for that frame's patches: on a crowded
field the normalised noise differs from frame to frame, and the configured (or median)
model is then only that of the frames without a gain.

With ``train.method: n2n`` each training frame gets its Noise2Noise target first, the mean
of its other training exposures matched to it (:mod:`pausdenoise.pipeline.n2n_targets`,
stored as the frame's ``n2n_target`` array); frames without one are skipped and listed,
except those that ``train.n2n_max_seeing_ratio`` leaves without a reference: they are
listed as ``excluded`` and do not make the run partial.

With ``train.n2n_targets: star-field`` the training frames are star fields simulated to
match each training exposure instead, their truth as the target
(:mod:`pausdenoise.pipeline.star_field_targets`); exposures that cannot be copied (no PSF,
no gain) are skipped and listed, and the simulation's settings and per-exposure PSFs enter
the provenance.

With ``train.init_checkpoint`` the network starts from that checkpoint's weights
(:func:`check_init_checkpoint` refuses, before any work, a file that is not a checkpoint or
holds another architecture) and its path and digest enter the provenance.

Writes ``<run>/model/n2v.safetensors`` (through a partial file renamed at the end) and
``<run>/model/history.csv``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import reference_match as rm
from pausdenoise import store as st
from pausdenoise.digest import file_sha256
from pausdenoise.errors import CatalogueError, CheckpointError, ConfigError, StageError
from pausdenoise.ingest.noise import gain_below_sky_bound
from pausdenoise.n2v.checkpoint import load_checkpoint, read_metadata
from pausdenoise.n2v.patches import Frame, FrameNoise
from pausdenoise.n2v.train import train_n2v
from pausdenoise.n2v.unet import UNetConfig
from pausdenoise.pipeline.context import Context, frame_stats_table, split_holdout
from pausdenoise.pipeline.n2n_targets import attach_targets
from pausdenoise.pipeline.star_field_targets import star_field_frames

__all__ = ["check_init_checkpoint", "frame_noise_models", "noise_correlation_from_frames",
           "noise_scale_from_frames", "run", "sky_variance_from_frames"]

#: The network settings that fix its weights' names and shapes (the noise model does not).
ARCHITECTURE = ("depth", "base_channels", "n2v2", "batch_norm", "in_channels", "out_channels",
                "posterior", "residual", "kernel_size")


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


def frame_noise_models(exposures: pd.DataFrame, stats: dict[str, Any]) -> dict[str, FrameNoise]:
    """Return each frame's noise model in its normalised units, where its gain is known.

    ``sky_variance = (sky / gain + (read noise / gain)²) / σ²`` (sky the frame's clipped
    median in ADU, gain in e⁻/ADU, read noise in e⁻, 0 when unknown, σ its robust spread
    in ADU) and ``noise_scale = gain · σ`` (e⁻ per normalised unit).

    Parameters
    ----------
    exposures : DataFrame
        The store's exposure table (``frame``, ``gain`` and, where known, ``rdnoise``).
    stats : dict of str to FrameStats
        Frame → normalisation statistics (``sky`` and ``sigma`` in ADU).

    Returns
    -------
    dict of str to FrameNoise
        The frames with a finite positive gain.
    """
    rows = exposures.set_index("frame")
    out = {}
    for f, s in stats.items():
        gain, rn_adu = rm.frame_noise(rows.loc[f]) if f in rows.index else (None, 0.0)
        if gain is not None:
            out[f] = FrameNoise((max(s.sky, 0.0) / gain + rn_adu**2) / s.sigma**2,
                                gain * s.sigma)
    return out


def sky_variance_from_frames(exposures: pd.DataFrame, stats: dict[str, Any]) -> float | None:
    """Return the median over frames of the sky + read-noise variance over σ².

    The noise model's variance of a sky pixel, ``sky / gain + (read noise / gain)²`` (ADU²,
    sky the frame's clipped median in ADU, gain in e⁻/ADU, read noise in e⁻, 0 when
    unknown), in units of the normalisation's robust spread σ² (ADU²): 1 where the sky is
    noise, a fraction of it on a crowded field whose σ includes unresolved stars.

    Parameters
    ----------
    exposures : DataFrame
        The store's exposure table (``frame``, ``gain`` and, where known, ``rdnoise``).
    stats : dict of str to FrameStats
        Frame → normalisation statistics (``sky`` and ``sigma`` in ADU).

    Returns
    -------
    float or None
        The median, or ``None`` when no frame has a finite positive gain.
    """
    values = [m.sky_variance for m in frame_noise_models(exposures, stats).values()]
    return float(np.median(values)) if values else None


def _gain_source(exposures: pd.DataFrame, frames: list[str]) -> str:
    """Name where the training frames' gains come from.

    Returns
    -------
    str
        The distinct ``gain_source`` values of ``frames`` with a gain, joined by ``+``
        (``"header"``, ``"fitted"``, ``"fitted+header"``), ``"header"`` for a store
        written before the column existed, ``"none"`` when no frame has a gain.
    """
    rows = exposures[exposures["frame"].isin(frames)]
    if "gain" not in rows:
        return "none"
    rows = rows[pd.to_numeric(rows["gain"], errors="coerce") > 0]
    if rows.empty:
        return "none"
    if "gain_source" not in rows:
        return "header"
    return "+".join(sorted({str(v) if isinstance(v, str) else "header"
                            for v in rows["gain_source"]}))


def noise_correlation_from_frames(
    exposures: pd.DataFrame, frames: list[str]
) -> tuple[float, float] | None:
    """Return the median over ``frames`` of the lag-1 noise correlation along x and y.

    Parameters
    ----------
    exposures : DataFrame
        The store's exposure table (``noise_corr_x``, ``noise_corr_y`` measured at ingest,
        dimensionless; NaN where not measured).
    frames : list of str
        The frames to use (the training frames).

    Returns
    -------
    (float, float) or None
        ``(ρ_x, ρ_y)``, each the median of the frames where it was measured; None when
        the store has no measurement for these frames (an axis without one counts 0).
    """
    if not {"noise_corr_x", "noise_corr_y"} <= set(exposures.columns):
        return None
    rows = exposures[exposures["frame"].isin(frames)]
    medians = []
    for col in ("noise_corr_x", "noise_corr_y"):
        v = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        medians.append(float(np.median(v)) if v.size else float("nan"))
    if not any(np.isfinite(medians)):
        return None
    return (float(np.nan_to_num(medians[0])), float(np.nan_to_num(medians[1])))


def _noise_settings(
    train_cfg: Any, exposures: pd.DataFrame, stats: dict[str, Any], frames: list[str]
) -> tuple[Any, dict[str, Any]]:
    """Fill ``poisson_scale``, ``sky_variance``, ``noise_correlation`` from the store if unset.

    Returns
    -------
    train_cfg : TrainConfig
        With the measured values.
    noise : dict
        What was used: ``noise_scale_electrons`` and ``noise_scale_source`` (``config``,
        ``<gain sources> gains`` or ``default``), ``sky_variance`` (normalised units²) and
        its source, ``noise_correlation`` [ρ_x, ρ_y] and its
        source, ``struct_axes`` and ``blind_radius`` [px], and
        ``noise_correlation_warning`` when a measured correlation sets structN2V masks on
        frames that look crowded.
    """
    update: dict[str, Any] = {}
    scale_source, corr_source, sky_source = "config", "config", "config"
    if train_cfg.sky_variance is None:
        sky_var = sky_variance_from_frames(exposures, stats)
        sky_source = "default"
        if sky_var is not None:
            update["sky_variance"] = sky_var
            sky_source = f"{_gain_source(exposures, frames)} gains"
    if train_cfg.poisson_scale is None:
        scale = noise_scale_from_frames(exposures, stats)
        scale_source = "default"
        if scale is not None:
            update["poisson_scale"] = scale
            scale_source = f"{_gain_source(exposures, frames)} gains"
    if train_cfg.noise_correlation is None:
        corr = noise_correlation_from_frames(exposures, frames)
        corr_source = "not measured"
        if corr is not None:
            update["noise_correlation"] = corr
            corr_source = "measured at ingest (median over the training frames)"
    train_cfg = train_cfg.model_copy(update=update) if update else train_cfg
    corr = train_cfg.noise_correlation
    warning = ""
    if "noise_correlation" in update and train_cfg.struct_axes and _crowded(exposures, frames):
        how = ("even above 0.45 cycles/px, where it is an upper bound on crowded fields"
               if _mostly_high_frequency(exposures, frames) else "in small tiles")
        warning = (f"the lag-1 correlation measured at ingest ({corr[0]:.2f}, {corr[1]:.2f}; "
                   f"{how}) masks the neighbours along {train_cfg.struct_axes}, but most "
                   "training frames look crowded (their own gain fits lie below their sky's "
                   "bound or far from the fit across exposures): the correlation may be the "
                   "unresolved sources', not the noise's; set train.noise_correlation "
                   "([0, 0] for unresampled CCD readouts)")
    return train_cfg, {
        "noise_scale_electrons": train_cfg.noise_scale,
        "noise_scale_source": scale_source,
        "sky_variance": train_cfg.sky_noise_variance,
        "sky_variance_source": sky_source,
        "noise_correlation": None if corr is None else [round(float(c), 4) for c in corr],
        "noise_correlation_source": corr_source,
        "struct_axes": train_cfg.struct_axes,
        "blind_radius": train_cfg.blind_radius,
        **({"noise_correlation_warning": warning} if warning else {}),
    }


def _mostly_high_frequency(exposures: pd.DataFrame, frames: list[str]) -> bool:
    """Tell whether most of ``frames`` carry the high-frequency noise correlation.

    Returns
    -------
    bool
        False for stores written before ``noise_corr_method`` existed.
    """
    if "noise_corr_method" not in exposures:
        return False
    methods = exposures.loc[exposures["frame"].isin(frames), "noise_corr_method"]
    return bool((methods == "high-frequency").sum() > len(methods) / 2)


def _crowded(exposures: pd.DataFrame, frames: list[str]) -> bool:
    """Tell whether most of ``frames`` look crowded by their noise-model fits.

    A frame looks crowded when its own fitted gain lies below the bound its sky's variance
    sets (:func:`pausdenoise.ingest.noise.gain_below_sky_bound`) or below 0.8 × the gain
    fitted across its CCD's exposures: unresolved sources add variance that grows with
    the signal, and correlation over the PSF.

    Returns
    -------
    bool
        False when the store has no such fits.
    """
    rows = exposures[exposures["frame"].isin(frames)].to_dict("records")
    if not rows:
        return False
    own = pd.to_numeric(pd.Series([r.get("gain_fitted") for r in rows]), errors="coerce")
    across = pd.to_numeric(pd.Series([r.get("gain_exposures") for r in rows]),
                           errors="coerce")
    below = np.array([gain_below_sky_bound(r) for r in rows]) | (own < 0.8 * across).to_numpy()
    return bool(below.sum() > len(rows) / 2)


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


def check_init_checkpoint(train_cfg: Any) -> dict[str, Any]:
    """Check that ``train.init_checkpoint`` holds a network of ``train.unet``'s architecture.

    Reads the checkpoint's metadata only (not its tensors).

    Parameters
    ----------
    train_cfg : TrainConfig
        The training settings (``init_checkpoint`` set).

    Returns
    -------
    dict
        The checkpoint's metadata (:func:`~pausdenoise.n2v.checkpoint.read_metadata`).

    Raises
    ------
    ConfigError
        Naming the file: missing, not a checkpoint, or a network whose architecture
        (:data:`ARCHITECTURE`) differs from ``train.unet``'s, with each difference.
    """
    path = Path(train_cfg.init_checkpoint)
    if not path.is_file():
        raise ConfigError(f"train.init_checkpoint {path} not found (no such file)")
    try:
        meta = read_metadata(path)
        have = UNetConfig(**meta["unet_config"])
    except (CheckpointError, TypeError, ValueError) as exc:
        raise ConfigError(f"train.init_checkpoint {path}: {exc}") from None
    want = train_cfg.unet.to_unet_config()
    diff = [f"{k} {getattr(have, k)!r} there, {getattr(want, k)!r} in train.unet"
            for k in ARCHITECTURE if getattr(have, k) != getattr(want, k)]
    if diff:
        raise ConfigError(f"train.init_checkpoint {path}: another network than train.unet's "
                          f"({'; '.join(diff)})")
    return meta


def _initial_state(train_cfg: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Load the weights of ``train.init_checkpoint`` (checked) and say where they came from.

    Returns
    -------
    state : dict or None
        The state dict, or None without ``init_checkpoint``.
    provenance : dict
        ``init_checkpoint`` (path) and ``init_checkpoint_sha256``, or empty.

    Raises
    ------
    StageError
        When the file cannot be used (:func:`check_init_checkpoint`, or corrupt tensors).
    """
    if train_cfg.init_checkpoint is None:
        return None, {}
    try:
        check_init_checkpoint(train_cfg)
        state, _ = load_checkpoint(train_cfg.init_checkpoint)
    except (ConfigError, CheckpointError) as exc:
        raise StageError(f"train: {exc}") from None
    path = str(Path(train_cfg.init_checkpoint).resolve())
    return state, {"init_checkpoint": path,
                   "init_checkpoint_sha256": file_sha256(train_cfg.init_checkpoint)}


def _own_noise(cfg: Any, frames: list[Frame], exposures: pd.DataFrame, stats: dict[str, Any]
               ) -> tuple[list[Frame], list[float] | None]:
    """Give each frame with a gain its own noise model (``method: sure``, ``noise_per_frame``).

    Returns
    -------
    frames : list of Frame
        The frames, with :attr:`~pausdenoise.n2v.patches.Frame.noise` where a gain is known.
    span : list of float or None
        The smallest and largest frame's ``sky_variance`` (normalised units²), or None
        when the frames keep the network's one noise model.
    """
    if cfg.method != "sure" or not cfg.noise_per_frame:
        return frames, None
    models = frame_noise_models(exposures, stats)
    frames = [replace(f, noise=models.get(f.name)) for f in frames]
    own = [models[f.name].sky_variance for f in frames if f.name in models]
    return frames, ([round(min(own), 4), round(max(own), 4)] if own else None)


def _star_field(ctx: Context, train_cfg: Any, frames: list[Frame]
                ) -> tuple[list[Frame], dict[str, Any], dict[str, str]]:
    """Replace the training frames by star fields simulated to match them.

    Returns
    -------
    tuple
        The simulated frames with their truth as target, the simulation's provenance and
        the exposures that could not be copied (:func:`star_field_frames`).

    Raises
    ------
    StageError
        When the star catalogue cannot be used, or no exposure could be copied.
    """
    try:
        sims, info, skipped = star_field_frames(ctx.store, frames, train_cfg.star_field,
                                                ctx.cfg.photometry.pixel_scale, train_cfg.seed)
    except CatalogueError as exc:
        raise StageError(f"train: train.star_field.catalogue: {exc}") from None
    if not sims:
        raise StageError(f"train: no training exposure of {ctx.store} could be copied into "
                         f"a star field (n2n_targets 'star-field'): {skipped}")
    print(f"train: {len(sims)} simulated star-field frames of "
          f"{len(info['star_field']['exposures'])} exposures")
    return sims, info, skipped


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
        The stage summary: epochs, best validation loss, output offset, noise scale and
        its source, the noise correlation and the structN2V axes and blind radius it gave,
        throughput, the training and held-out frames, and the skipped frames (``partial``
        when some were skipped).

    Raises
    ------
    StageError
        When the store has no usable frame to train on.
    """
    exposures = st.exposure_table(ctx.store)
    frames, train_frames, held, stats, skipped = _training_frames(ctx, exposures)
    train_cfg, noise = _noise_settings(ctx.cfg.train, exposures, stats, train_frames)
    frames, noise["sky_variance_per_frame"] = _own_noise(ctx.cfg.train, frames, exposures, stats)
    if noise.get("noise_correlation_warning"):
        print(f"train: warning: {noise['noise_correlation_warning']}")
    excluded: list[list[str]] = []
    if train_cfg.method == "n2n" and train_cfg.n2n_targets == "star-field":
        frames, targets, no_model = _star_field(ctx, train_cfg, frames)
        skipped.update(no_model)
        train_frames = [f.name for f in frames]
        noise.update(targets)
    elif train_cfg.method == "n2n":
        frames, targets, no_target = attach_targets(ctx, exposures, frames)
        skipped.update(no_target)
        excluded = targets.pop("excluded")
        if not frames:
            raise StageError(f"train: no training frame of {ctx.store} has a Noise2Noise "
                             f"target (method 'n2n'): {no_target}; excluded: {excluded}")
        train_frames = [f.name for f in frames]
        noise.update(targets)
    initial_state, initial = _initial_state(train_cfg)
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
            **noise,
            **initial,
        },
        initial_state=initial_state,
    )
    tmp.replace(ctx.paths.checkpoint)
    for side in tmp.parent.glob(".n2v.partial.*"):  # companion metadata, if any
        side.replace(ctx.paths.checkpoint.with_name("n2v" + side.name[len(".n2v.partial"):]))
    _write_history(ctx, history)
    pps = float(np.mean(history.patches_per_second)) if history.patches_per_second else 0.0
    return {
        "note": f"{history.epochs_run} epochs, best val loss {history.best_val_loss:.4f}, "
                f"output offset {history.output_offset:+.3f} σ refitted, "
                f"{pps:.0f} patches/s on {history.device} in {history.precision}",
        "epochs": history.epochs_run,
        "best_val_loss": history.best_val_loss,
        "output_offset_sigma": history.output_offset,
        **noise,
        "patches_per_second": pps,
        "train_frames": train_frames,
        "held_out_frames": held,
        "skipped": [[f, r] for f, r in skipped.items()],
        "excluded": excluded,
        "partial": bool(skipped),
        **initial,
    }
