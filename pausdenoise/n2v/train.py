"""Noise2Void training: config, the training loop, optional DistributedDataParallel.

:func:`train_n2v` trains a :class:`~pausdenoise.n2v.unet.UNet` on randomly sampled patches of
the given frames (read out-of-core by :class:`~pausdenoise.n2v.patches.PatchSampler`); the
blind-spot masking (:mod:`pausdenoise.n2v.masking`) runs on the device inside each step.
Validation uses a fixed set of held-out patches with a fixed blind-spot mask
(:func:`~pausdenoise.n2v.patches.make_validation_set`), so epoch losses are comparable; the
learning rate is reduced on a validation plateau, training stops early when the validation
loss has not improved for ``early_stopping_patience`` epochs, and the weights of the best
validation epoch are returned (and checkpointed, when a path is given).

Distributed training: when launched under ``torchrun`` (environment ``WORLD_SIZE > 1``) the
process group is initialised (NCCL on CUDA, gloo on CPU), the model is wrapped in
``DistributedDataParallel``, each rank samples patches and masks with its own seed (``seed``
and rank), every rank evaluates the same validation set (so the learning-rate schedule and
early stopping agree without communication), and only rank 0 shows progress and writes
checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pausdenoise.n2v.masking import (
    DEFAULT_MASKED_FRACTION,
    DEFAULT_RADIUS,
    apply_blind_spot,
    blind_spot_loss,
    poisson_weight,
)
from pausdenoise.n2v.patches import (
    PatchSampler,
    as_frames,
    full_regions,
    make_validation_set,
    split_regions,
)
from pausdenoise.n2v.unet import UNet, UNetConfig

DEFAULT_NOISE_SCALE = 15.0
"""gain·σ_sky (e⁻) assumed when neither the config nor the frames give it (PAUCam-like sky)."""


class UNetSettings(BaseModel):
    """Network architecture (see :class:`pausdenoise.n2v.unet.UNetConfig`)."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(2, ge=1, le=5, description="Down-sampling steps (2: N2V's 2-D default).")
    base_channels: int = Field(32, ge=1, description="Channels at the top level (N2V: 32).")
    n2v2: bool = Field(False, description="N2V2 variant: max-blur-pool, no top skip, median.")
    batch_norm: bool = Field(True, description="Batch normalisation after each convolution.")
    posterior: Literal["none", "gaussian"] = Field(
        "none",
        description="'gaussian': predict a Gaussian prior (mean, variance) per pixel, train on "
        "its likelihood and combine it with the observed pixel at inference (Laine et al. "
        "2019); noise model from train.poisson_scale. 'none': plain N2V.",
    )

    def to_unet_config(self, noise_scale: float | None = None) -> UNetConfig:
        """The architecture; ``noise_scale`` (gain·σ_sky, e⁻) is the posterior's noise model."""
        return UNetConfig(
            depth=self.depth,
            base_channels=self.base_channels,
            n2v2=self.n2v2,
            batch_norm=self.batch_norm,
            posterior=self.posterior,
            noise_scale=DEFAULT_NOISE_SCALE if noise_scale is None else noise_scale,
        )


class PlateauSchedule(BaseModel):
    """``ReduceLROnPlateau`` on the validation loss."""

    model_config = ConfigDict(extra="forbid")

    factor: float = Field(0.5, gt=0.0, lt=1.0, description="Multiply the LR by this on a plateau.")
    patience: int = Field(5, ge=0, description="Epochs without improvement before reducing.")
    min_lr: float = Field(1e-6, ge=0.0, description="Lower bound of the learning rate.")


class TrainConfig(BaseModel):
    """Configuration of N2V training (validated before anything runs).

    Defaults follow the N2V papers for 2-D images where they exist (U-Net depth 2 with 32
    channels, 64×64 patches, Adam at 4e-4, LR halved on a plateau); the masked fraction is
    justified in :mod:`pausdenoise.n2v.masking`.
    """

    model_config = ConfigDict(extra="forbid")

    unet: UNetSettings = Field(default_factory=UNetSettings, description="Architecture.")
    patch_size: int = Field(64, ge=8, description="Training patch side (px), multiple of 2**depth.")
    batch_size: int = Field(64, ge=1, description="Patches per step (per rank under DDP).")
    masked_fraction: float = Field(
        DEFAULT_MASKED_FRACTION, gt=0.0, le=0.25, description="Fraction of blind-spot targets."
    )
    neighbourhood_radius: int = Field(
        DEFAULT_RADIUS, ge=1, description="Half-width of the replacement neighbourhood (px)."
    )
    replacement: Literal["auto", "uniform", "median"] = Field(
        "auto", description="'uniform' (N2V), 'median' (N2V2); 'auto' follows unet.n2v2."
    )
    max_bad_fraction: float = Field(
        0.25, ge=0.0, le=1.0, description="Skip patches with more bad pixels than this."
    )
    sky_keep: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Keep a patch without source flux with this probability (1: uniform); "
        "over-samples source contexts without biasing the conditional mean "
        "(see PatchSampler).",
    )
    source_threshold: float = Field(
        10.0, gt=0.0, description="Source-patch test: max of the 3×3 box mean above this (σ)."
    )
    loss_weighting: Literal["none", "poisson"] = Field(
        "none",
        description="'poisson': χ² weight 1/(1 + max(ŷ,0)/poisson_scale) from the detached "
        "prediction (context-only, so the minimiser stays the conditional mean).",
    )
    poisson_scale: float | None = Field(
        None,
        gt=0.0,
        description="gain·σ_sky (sky noise in electrons = electrons per normalised unit): the "
        "noise model of loss_weighting 'poisson' and of unet.posterior 'gaussian'. None: the "
        "pipeline takes the median over the training frames of gain × robust σ (ADU); "
        f"{DEFAULT_NOISE_SCALE:g} when the gains are unknown.",
    )
    nll_beta: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="β of the β-NLL for unet.posterior 'gaussian' (0: plain Gaussian NLL; "
        "1: the mean gets the MSE gradient of plain N2V).",
    )
    grad_clip: float | None = Field(
        None, gt=0.0, description="Clip the gradient norm to this (None: no clipping)."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up (steps).")
    steps_per_epoch: int = Field(100, ge=1, description="Optimiser steps per epoch.")
    epochs: int = Field(50, ge=1, description="Maximum number of epochs.")
    learning_rate: float = Field(4e-4, gt=0.0, description="Adam learning rate (N2V: 4e-4).")
    lr_schedule: PlateauSchedule = Field(
        default_factory=PlateauSchedule, description="ReduceLROnPlateau on the validation loss."
    )
    early_stopping_patience: int | None = Field(
        15, ge=1, description="Stop after this many epochs without validation improvement."
    )
    keep: Literal["best", "last"] = Field(
        "best",
        description="Weights returned and saved: of the best validation epoch, or of the last "
        "epoch (the N2V validation loss is dominated by noise; it can miss source fidelity).",
    )
    validation_patches: int = Field(256, ge=1, description="Size of the fixed validation set.")
    calibrate_offset: bool = Field(
        True,
        description="After training, refit the one output offset (maximum likelihood on "
        "blind-spot targets of validation_patches held-out patches sampled uniformly, as the "
        "survey is) and fold it into the head's bias.",
    )
    validation_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="Bottom fraction of each frame's rows held out."
    )
    augment: bool = Field(True, description="Random rotations/flips (8 symmetries) per batch.")
    block_size: int | None = Field(
        None, ge=8, description="Read-window side (px); None: chunk shape or 4×patch."
    )
    patches_per_block: int | None = Field(
        None, ge=1, description="Patch draws per read window; None: automatic."
    )
    seed: int = Field(0, ge=0, description="Seed of initialisation, sampling, masking.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto': CUDA if present.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision on CUDA (ignored on CPU)."
    )
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads while training (None: leave as is)."
    )
    prefetch: bool = Field(True, description="Read the next batch in a background thread.")

    @model_validator(mode="after")
    def _check_sizes(self) -> TrainConfig:
        m = 2**self.unet.depth
        if self.patch_size % m:
            raise ValueError(
                f"patch_size {self.patch_size} must be a multiple of 2**depth = {m} "
                f"(unet.depth = {self.unet.depth})"
            )
        if self.patch_size <= 2 * self.neighbourhood_radius:
            raise ValueError(
                f"patch_size {self.patch_size} must exceed twice the neighbourhood radius "
                f"({self.neighbourhood_radius})"
            )
        return self

    @property
    def noise_scale(self) -> float:
        """``poisson_scale``, or :data:`DEFAULT_NOISE_SCALE` when it is not set."""
        return DEFAULT_NOISE_SCALE if self.poisson_scale is None else self.poisson_scale

    @property
    def strategy(self) -> Literal["uniform", "median"]:
        """The replacement strategy actually used."""
        if self.replacement == "auto":
            return "median" if self.unet.n2v2 else "uniform"
        return self.replacement


@dataclass
class TrainHistory:
    """Per-epoch record of a training run (``initial_val_loss``: before the first step)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    patches_per_second: list[float] = field(default_factory=list)
    initial_val_loss: float = math.nan
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    output_offset: float = 0.0
    total_seconds: float = 0.0
    device: str = "cpu"
    world_size: int = 1

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (stored in checkpoints)."""
        d = asdict(self)
        d["epochs_run"] = self.epochs_run
        d["mean_patches_per_second"] = (
            float(np.mean(self.patches_per_second)) if self.patches_per_second else 0.0
        )
        for key in ("best_val_loss", "initial_val_loss"):
            if not math.isfinite(d[key]):
                d[key] = None
        return d


# ---------------------------------------------------------------------------- helpers


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _augment(x: torch.Tensor, bad: torch.Tensor, rng: np.random.Generator):
    """Apply one of the 8 square symmetries (same one to the whole batch)."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    if k:
        x, bad = torch.rot90(x, k, dims=(2, 3)), torch.rot90(bad, k, dims=(2, 3))
    if flip:
        x, bad = torch.flip(x, dims=(3,)), torch.flip(bad, dims=(3,))
    return x, bad


def _ddp_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return world, rank, local


def _sync_across_ranks(model: UNet, loss_sum: torch.Tensor, world: int) -> None:
    """Average the epoch loss and the batch-norm running statistics over the ranks.

    DDP keeps parameters in step but each rank's last forward updates its own running
    statistics; averaging them makes every replica identical, so every rank computes the same
    validation loss and takes the same schedule and early-stopping decisions.
    """
    import torch.distributed as dist

    dist.all_reduce(loss_sum)
    loss_sum /= world
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf /= world


def _frame_names(frames) -> list[str]:
    return [f.name or f"#{i}" for i, f in enumerate(frames)]


# ---------------------------------------------------------------------------- training


def train_n2v(
    frames: Sequence[Any],
    config: TrainConfig | None = None,
    progress: bool = True,
    *,
    val_frames: Sequence[Any] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    provenance: dict[str, Any] | None = None,
) -> tuple[UNet, TrainHistory]:
    """Train a Noise2Void U-Net on patches of ``frames``.

    Parameters
    ----------
    frames : sequence of Frame or (image, mask, FrameStats[, name])
        Training frames; image and mask are lazily sliceable (Zarr, Dask, NumPy).
    config : TrainConfig, optional
        Defaults to ``TrainConfig()``.
    progress : bool
        Show a tqdm bar per epoch with the running loss (rank 0 only).
    val_frames : sequence, optional
        Held-out frames for validation; by default the bottom ``validation_fraction`` of the
        rows of every training frame is held out instead.
    checkpoint_path : path-like, optional
        Where rank 0 writes the best checkpoint (after each improving epoch and at the end).
    provenance : dict, optional
        Extra provenance stored in the checkpoint (store path, bands, ...).

    Returns
    -------
    model : UNet
        The weights of the best validation epoch, in eval mode, on the training device.
    history : TrainHistory
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    frames = as_frames(frames)
    world, rank, local_rank = _ddp_env()
    distributed = world > 1
    created_group = False
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
            created_group = True
        world, rank = dist.get_world_size(), dist.get_rank()
    device = resolve_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    old_threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    show = progress and rank == 0
    t_start = time.perf_counter()
    executor = ThreadPoolExecutor(max_workers=1) if cfg.prefetch else None
    try:
        # ---- data
        p = cfg.patch_size
        if val_frames is not None:
            train_regions = full_regions(frames)
            val_source, val_regions = as_frames(val_frames), None
        else:
            train_regions, val_regions = split_regions(frames, cfg.validation_fraction, p)
            val_source = frames
        sampler = PatchSampler(
            frames,
            p,
            regions=train_regions,
            max_bad_fraction=cfg.max_bad_fraction,
            block_size=cfg.block_size,
            patches_per_block=cfg.patches_per_block,
            seed=int(np.random.SeedSequence([cfg.seed, rank, 1]).generate_state(1)[0]),
            sky_keep=cfg.sky_keep,
            source_threshold=cfg.source_threshold,
        )
        val_set = make_validation_set(
            val_source,
            cfg.validation_patches,
            p,
            regions=val_regions,
            seed=cfg.seed + 104729,  # same on every rank and every epoch
            masked_fraction=cfg.masked_fraction,
            radius=cfg.neighbourhood_radius,
            strategy=cfg.strategy,
            max_bad_fraction=cfg.max_bad_fraction,
            sky_keep=cfg.sky_keep,  # validate on the contexts the training emphasises
            source_threshold=cfg.source_threshold,
        ).to(device)
        aug_rng = np.random.default_rng([cfg.seed, rank, 2])
        mask_gen = torch.Generator(device=device)
        mask_gen.manual_seed(int(np.random.SeedSequence([cfg.seed, rank, 3]).generate_state(1)[0]))

        # ---- model (same initial weights on every rank)
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
            torch.manual_seed(cfg.seed)
            model = UNet(cfg.unet.to_unet_config(cfg.noise_scale))
        model = model.to(device)
        net: torch.nn.Module = model
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode="min",
            factor=cfg.lr_schedule.factor,
            patience=cfg.lr_schedule.patience,
            min_lr=cfg.lr_schedule.min_lr,
        )
        use_amp = device.type == "cuda" and cfg.precision != "fp32"
        amp_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.precision == "fp16")
        pin = device.type == "cuda"

        def fetch():
            x, b = sampler.sample(cfg.batch_size)
            if pin:
                x, b = x.pin_memory(), b.pin_memory()
            return x, b

        global_step = 0
        history = TrainHistory(device=str(device), world_size=world)
        history.initial_val_loss = val_set.loss(model, batch_size=cfg.batch_size)
        best_state: dict[str, torch.Tensor] | None = None
        since_best = 0
        pending = executor.submit(fetch) if executor else None

        for epoch in range(cfg.epochs):
            net.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            bar = tqdm(
                range(cfg.steps_per_epoch),
                desc=f"N2V epoch {epoch + 1}/{cfg.epochs}",
                disable=not show,
                leave=False,
                unit="step",
            )
            for step in bar:
                if executor:
                    x, bad = pending.result()
                    pending = executor.submit(fetch)
                else:
                    x, bad = fetch()
                x = x.to(device, non_blocking=True)
                bad = bad.to(device, non_blocking=True)
                if cfg.augment:
                    x, bad = _augment(x, bad, aug_rng)
                masked, targets = apply_blind_spot(
                    x,
                    bad,
                    masked_fraction=cfg.masked_fraction,
                    radius=cfg.neighbourhood_radius,
                    strategy=cfg.strategy,
                    generator=mask_gen,
                )
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                    pred = net(masked)
                weight = (
                    poisson_weight(pred, cfg.noise_scale)
                    if cfg.loss_weighting == "poisson"
                    else None
                )
                loss = blind_spot_loss(model, pred, x, targets, weight, cfg.nll_beta)
                if cfg.warmup_steps and global_step <= cfg.warmup_steps:
                    for group in opt.param_groups:  # the plateau schedule acts after warm-up
                        group["lr"] = cfg.learning_rate * min(
                            1.0, (global_step + 1) / cfg.warmup_steps
                        )
                global_step += 1
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip is not None:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                loss_sum += loss.detach()
                if show and (step % 10 == 9 or step == cfg.steps_per_epoch - 1):
                    bar.set_postfix(loss=f"{float(loss_sum) / (step + 1):.4f}")
            bar.close()
            train_loss = float(loss_sum) / cfg.steps_per_epoch  # waits for the device
            train_seconds = time.perf_counter() - t0
            if distributed:
                _sync_across_ranks(model, loss_sum, world)
                train_loss = float(loss_sum) / cfg.steps_per_epoch
            val_loss = val_set.loss(model, batch_size=max(cfg.batch_size, 1))
            sched.step(val_loss)
            history.train_loss.append(train_loss)
            history.val_loss.append(val_loss)
            history.learning_rate.append(float(opt.param_groups[0]["lr"]))
            history.epoch_seconds.append(time.perf_counter() - t0)
            history.patches_per_second.append(
                cfg.steps_per_epoch * cfg.batch_size * world / max(train_seconds, 1e-9)
            )
            improved = val_loss < history.best_val_loss
            if improved:
                history.best_val_loss, history.best_epoch = val_loss, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                since_best = 0
            else:
                since_best += 1
            if show:
                tqdm.write(
                    f"epoch {epoch + 1}: train {train_loss:.4f}  val {val_loss:.4f}"
                    f"{' *' if improved else ''}  lr {history.learning_rate[-1]:.2e}  "
                    f"{history.patches_per_second[-1]:.0f} patches/s"
                )
            if (improved or cfg.keep == "last") and checkpoint_path is not None and rank == 0:
                history.total_seconds = time.perf_counter() - t_start
                _save(checkpoint_path, model, cfg, frames, history, provenance)
            if (
                cfg.early_stopping_patience is not None
                and since_best >= cfg.early_stopping_patience
            ):
                history.stopped_early = True
                break

        if best_state is not None and cfg.keep == "best":
            model.load_state_dict(best_state)
        model.eval()
        if cfg.calibrate_offset:
            history.output_offset = _calibrate_offset(model, cfg, val_source, val_regions,
                                                      device)
        history.total_seconds = time.perf_counter() - t_start
        if checkpoint_path is not None and rank == 0:
            _save(checkpoint_path, model, cfg, frames, history, provenance)
        if distributed:
            import torch.distributed as dist

            dist.barrier()
        return model, history
    finally:
        if executor:
            executor.shutdown(wait=True, cancel_futures=True)
        if device.type == "cpu" and cfg.num_threads:
            torch.set_num_threads(old_threads)
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _calibrate_offset(model: UNet, cfg: TrainConfig, frames, regions, device) -> float:
    """Refit the network's output offset on uniformly sampled held-out patches (in place).

    Training over-samples patches with sources (``sky_keep``) and stops after a finite
    budget; both can leave one global offset of the (prior-)mean output — measured up to
    ~0.1 σ on the sky of held-out CCDs with the Gaussian posterior. One global parameter is
    refitted by maximum likelihood on blind-spot targets sampled the way the survey is
    (``sky_keep = 1``; :meth:`~pausdenoise.n2v.patches.ValidationSet.output_offset`) and
    added to the bias of the head's mean channels. Returns the offset (normalised units).
    """
    cal = make_validation_set(
        frames,
        cfg.validation_patches,
        cfg.patch_size,
        regions=regions,
        seed=cfg.seed + 7919,
        masked_fraction=cfg.masked_fraction,
        radius=cfg.neighbourhood_radius,
        strategy=cfg.strategy,
        max_bad_fraction=cfg.max_bad_fraction,
        sky_keep=1.0,
        source_threshold=cfg.source_threshold,
    ).to(device)
    delta = cal.output_offset(model, batch_size=max(cfg.batch_size, 1))
    with torch.no_grad():
        model.head.bias[: model.config.out_channels] += delta
    return delta


def _save(path, model, cfg: TrainConfig, frames, history: TrainHistory, provenance) -> None:
    from pausdenoise.n2v.checkpoint import save_checkpoint

    prov = {
        "frames": _frame_names(frames),
        "epochs": history.epochs_run,
        "seed": cfg.seed,
        "train_config": cfg.model_dump(mode="json"),
    }
    prov.update(provenance or {})
    save_checkpoint(Path(path), model, provenance=prov, history=history)
