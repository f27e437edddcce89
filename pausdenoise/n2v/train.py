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
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from pausdenoise.n2v.blindspot import (
    BlindSpotNet,
    all_pixel_offset,
    distillation_loss,
    distillation_validation_loss,
)
from pausdenoise.n2v.checkpoint import save_checkpoint
from pausdenoise.n2v.config import DEFAULT_NOISE_SCALE as DEFAULT_NOISE_SCALE
from pausdenoise.n2v.config import PlateauSchedule as PlateauSchedule
from pausdenoise.n2v.config import TrainConfig
from pausdenoise.n2v.config import UNetSettings as UNetSettings
from pausdenoise.n2v.masking import (
    apply_blind_spot,
    blind_spot_loss,
    n2v_loss,
    poisson_weight,
)
from pausdenoise.n2v.patches import (
    Frame,
    PatchSampler,
    Region,
    ValidationSet,
    as_frames,
    full_regions,
    make_validation_set,
    split_regions,
)
from pausdenoise.n2v.precision import training_precision
from pausdenoise.n2v.sure import sure_loss, sure_validation_loss
from pausdenoise.n2v.unet import UNet
from pausdenoise.progress import is_terminal


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
    stopped_on_budget: bool = False
    teacher_epochs: int = 0
    teacher_val_loss: float = math.inf
    output_offset: float = 0.0
    total_seconds: float = 0.0
    device: str = "cpu"
    world_size: int = 1
    precision: str = "fp32"

    @property
    def epochs_run(self) -> int:
        """Number of epochs trained."""
        return len(self.train_loss)

    def summary(self) -> dict[str, Any]:
        """Return a JSON-friendly summary (stored in checkpoints).

        Returns
        -------
        dict
            The fields, plus ``epochs_run`` and ``mean_patches_per_second``; infinite or
            NaN losses become None.
        """
        d = asdict(self)
        d["epochs_run"] = self.epochs_run
        d["mean_patches_per_second"] = (
            float(np.mean(self.patches_per_second)) if self.patches_per_second else 0.0
        )
        for key in ("best_val_loss", "initial_val_loss", "teacher_val_loss"):
            if not math.isfinite(d[key]):
                d[key] = None
        return d


# ---------------------------------------------------------------------------- helpers


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """Pick the torch device for a ``device`` setting.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` takes CUDA when available, else the CPU.
    local_rank : int, optional
        CUDA device index of this process (its local rank under torchrun). Default 0.

    Returns
    -------
    torch.device
        ``cuda:<local_rank>`` or ``cpu``.

    Raises
    ------
    RuntimeError
        If ``"cuda"`` is asked for and no CUDA device is available.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _augment(x: torch.Tensor, bad: torch.Tensor, rng: np.random.Generator):
    """Apply one of the 8 square symmetries (same one to the whole batch).

    Returns
    -------
    tuple of Tensor
        The rotated/flipped batch and bad-pixel mask.
    """
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    if k:
        x, bad = torch.rot90(x, k, dims=(2, 3)), torch.rot90(bad, k, dims=(2, 3))
    if flip:
        x, bad = torch.flip(x, dims=(3,)), torch.flip(bad, dims=(3,))
    return x, bad


def _ddp_env() -> tuple[int, int, int]:
    """Read torchrun's environment.

    Returns
    -------
    tuple of int
        (world size, rank, local rank); (1, 0, 0) outside torchrun.
    """
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
    on_epoch_end: Callable[[UNet, TrainHistory], None] | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[UNet, TrainHistory]:
    """Train a Noise2Void U-Net on patches of ``frames``.

    The steps: join the process group under ``torchrun`` (:func:`_init_process_group`),
    build samplers, validation set, model and optimiser (:func:`_setup`), run the epochs
    (:func:`_run_epochs`: training steps, validation, schedule, checkpoints, early
    stopping), then keep the chosen weights and refit the output offset
    (:func:`_finish`).

    Parameters
    ----------
    frames : sequence of Frame or (image, mask, FrameStats[, name])
        Training frames; image (ADU) and mask are lazily sliceable (Zarr, Dask, NumPy).
    config : TrainConfig, optional
        Defaults to ``TrainConfig()``.
    progress : bool
        Print a line per epoch with the losses and, when stderr is a terminal, a tqdm bar
        per epoch with the running loss (rank 0 only).
    val_frames : sequence, optional
        Held-out frames for validation; by default the bottom ``validation_fraction`` of the
        rows of every training frame is held out instead.
    checkpoint_path : path-like, optional
        Where rank 0 writes the best checkpoint (after each improving epoch and at the end).
    provenance : dict, optional
        Extra provenance stored in the checkpoint (store path, bands, ...).
    on_epoch_end : callable, optional
        Called on rank 0 after each epoch's validation as ``on_epoch_end(model, history)``
        (the model in train mode, before the offset refit): to snapshot weights during a
        run, e.g. at fixed training times (``history.total_seconds`` is up to date). With
        ``method: blindspot`` it is called in the distillation epochs only (before them
        the U-Net is untrained), so snapshots at several budgets need one run per budget.
    initial_state : mapping of str to Tensor, optional
        Weights to start from instead of a random initialisation (fine-tuning a network
        trained before, e.g. on simulated frames): a state dict of a U-Net of the
        configured architecture (``config.unet``), loaded strictly.

    Returns
    -------
    model : UNet
        The weights of the best validation epoch (or the last, ``keep="last"``), in eval
        mode, on the training device.
    history : TrainHistory
        Per-epoch losses (normalised units), learning rates, timings and the outcome.

    Raises
    ------
    RuntimeError
        If ``device="cuda"`` is asked for and no CUDA device is available.
    """
    cfg = config or TrainConfig()
    frames = as_frames(frames)
    world, rank, local_rank, distributed, created_group = _init_process_group(cfg)
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
        run = _setup(frames, cfg, device, rank, world, distributed, show, val_frames,
                     initial_state)
        checkpoints = (
            _Checkpoints(Path(checkpoint_path), frames, provenance, t_start)
            if checkpoint_path is not None and rank == 0
            else None
        )
        batches = _Batches(run.sampler, cfg.batch_size, device.type == "cuda", executor,
                           with_noise=cfg.method == "sure" and cfg.noise_per_frame)
        history = TrainHistory(device=str(device), world_size=world,
                               precision=run.precision)
        history.initial_val_loss = _validation_loss(run)
        batches.start()
        if run.teacher is not None:
            best_state = _run_blindspot(run, batches, history, checkpoints, on_epoch_end, t_start)
        else:
            deadline = None if cfg.max_minutes is None else t_start + 60.0 * cfg.max_minutes
            run.start_phase(None if deadline is None else deadline - time.perf_counter(),
                            cfg.epochs * cfg.steps_per_epoch)
            best_state = _run_epochs(
                run, batches, history, checkpoints, on_epoch_end, t_start, cfg.epochs, deadline
            )
        _finish(run, history, best_state, checkpoints, t_start)
        return run.model, history
    finally:
        if executor:
            executor.shutdown(wait=True, cancel_futures=True)
        if device.type == "cpu" and cfg.num_threads:
            torch.set_num_threads(old_threads)
        if created_group:
            dist.destroy_process_group()


def _init_process_group(cfg: TrainConfig) -> tuple[int, int, int, bool, bool]:
    """Join (or create) the process group under torchrun.

    Returns
    -------
    tuple
        (world size, rank, local rank, distributed, whether the group was created here).
    """
    world, rank, local_rank = _ddp_env()
    distributed = world > 1
    created_group = False
    if distributed:
        if not dist.is_initialized():
            backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
            created_group = True
        world, rank = dist.get_world_size(), dist.get_rank()
    return world, rank, local_rank, distributed, created_group


@dataclass
class _Run:
    """What the training steps work with, built once by :func:`_setup`."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    distributed: bool
    show: bool
    sampler: PatchSampler
    val_set: ValidationSet
    val_source: list[Frame]
    val_regions: list[Region] | None
    aug_rng: np.random.Generator
    mask_gen: torch.Generator
    model: UNet
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype
    precision: str
    teacher: BlindSpotNet | None = None
    teacher_net: torch.nn.Module | None = None
    phase: str = "n2v"
    global_step: int = 0
    averaged: AveragedModel | None = None
    horizon: _Horizon | None = None

    def tracked(self) -> torch.nn.Module:
        """Return the network that is validated, kept and saved now.

        Returns
        -------
        torch.nn.Module
            The teacher in the ``teacher`` phase; otherwise the U-Net, or its weight
            average (``weight_average``).
        """
        if self.phase == "teacher":
            return self.teacher
        return self.model if self.averaged is None else self.averaged.module

    def start_phase(self, seconds: float | None, steps: int) -> None:
        """Start the learning-rate horizon (and, for the U-Net, the weight average) of a phase.

        Parameters
        ----------
        seconds : float or None
            Wall-clock length of the phase (s), when budgeted.
        steps : int
            Its length in optimiser steps (used when ``seconds`` is None).
        """
        self.horizon = _Horizon(time.perf_counter(), seconds, self.global_step, steps)
        decay = self.cfg.weight_average
        if decay is not None and self.phase != "teacher":
            self.averaged = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
            )


@dataclass
class _Horizon:
    """Where a training phase started and how long it lasts (for ``lr_decay: cosine``)."""

    t0: float
    seconds: float | None
    step0: int
    steps: int

    def progress(self, step: int) -> float:
        """Return the fraction of the phase done (by wall time when budgeted).

        Parameters
        ----------
        step : int
            The global optimiser step about to be taken.

        Returns
        -------
        float
            In [0, 1].
        """
        if self.seconds:
            return min(1.0, (time.perf_counter() - self.t0) / self.seconds)
        return min(1.0, (step - self.step0) / max(self.steps, 1))


def _setup(
    frames: list[Frame],
    cfg: TrainConfig,
    device: torch.device,
    rank: int,
    world: int,
    distributed: bool,
    show: bool,
    val_frames: Sequence[Any] | None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> _Run:
    """Build samplers, validation set, random generators, model and optimiser, in this order.

    The order fixes the random draws: the patch sampler, the validation set, the
    augmentation and masking generators are seeded from ``cfg.seed`` and the rank; the
    initial weights from ``cfg.seed`` alone (the same on every rank).

    Returns
    -------
    _Run
        Everything the epochs work with.
    """
    # ---- data
    p = cfg.patch_size
    _check_targets(cfg, frames, val_frames)
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
    # same on every rank and every epoch; on the contexts the training emphasises
    val_set = _validation_set(cfg, val_source, val_regions, device, 104729, cfg.sky_keep)
    aug_rng = np.random.default_rng([cfg.seed, rank, 2])
    mask_gen = torch.Generator(device=device)
    mask_gen.manual_seed(int(np.random.SeedSequence([cfg.seed, rank, 3]).generate_state(1)[0]))
    precision = training_precision(cfg, device)  # CUDA: bf16 or fp16; CPU: bf16 or fp32
    model, net, opt, sched = _make_model(cfg, device, distributed, precision, initial_state)
    teacher, teacher_net = None, None
    if cfg.method == "blindspot":
        teacher, teacher_net, opt, sched = _make_teacher(cfg, device, distributed)
    use_amp = precision != "fp32"
    return _Run(
        cfg=cfg,
        device=device,
        rank=rank,
        world=world,
        distributed=distributed,
        show=show,
        sampler=sampler,
        val_set=val_set,
        val_source=val_source,
        val_regions=val_regions,
        aug_rng=aug_rng,
        mask_gen=mask_gen,
        model=model,
        net=net,
        opt=opt,
        sched=sched,
        scaler=torch.amp.GradScaler("cuda", enabled=precision == "fp16"),
        use_amp=use_amp,
        amp_dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
        precision=precision,
        teacher=teacher,
        teacher_net=teacher_net,
        phase="teacher" if teacher is not None else (
            cfg.method if cfg.method in ("sure", "n2n") else "n2v"),
    )


def _check_targets(cfg: TrainConfig, frames: list[Frame], val_frames: Sequence[Any] | None
                   ) -> None:
    """Refuse Noise2Noise targets without ``method: n2n``, and ``n2n`` without them.

    Raises
    ------
    ValueError
        Naming the method and what the frames lack or carry.
    """
    for kind, group in (("training", frames), ("validation", val_frames)):
        if group is None:
            continue
        has = [f.target is not None for f in as_frames(group)]
        if cfg.method == "n2n" and not all(has):
            raise ValueError(f"method 'n2n' needs a Noise2Noise target for every {kind} "
                             "frame (Frame.target)")
        if cfg.method != "n2n" and any(has):
            raise ValueError(f"{kind} frames carry Noise2Noise targets but method is "
                             f"{cfg.method!r} (targets are trained with method 'n2n')")


def _validation_set(
    cfg: TrainConfig,
    frames: list[Frame],
    regions: list[Region] | None,
    device: torch.device | str,
    seed_offset: int,
    sky_keep: float,
) -> ValidationSet:
    """Return fixed masked held-out patches (seed ``cfg.seed + seed_offset``) on ``device``.

    Returns
    -------
    ValidationSet
        Masked like the training batches (replacement, struct axes).
    """
    return make_validation_set(
        frames,
        cfg.validation_patches,
        cfg.patch_size,
        regions=regions,
        seed=cfg.seed + seed_offset,
        masked_fraction=cfg.masked_fraction,
        radius=cfg.neighbourhood_radius,
        strategy=cfg.strategy,
        max_bad_fraction=cfg.max_bad_fraction,
        sky_keep=sky_keep,
        source_threshold=cfg.source_threshold,
        struct_axes=cfg.struct_axes,
        struct_half_width=cfg.struct_half_width,
    ).to(device)


def _make_model(
    cfg: TrainConfig, device: torch.device, distributed: bool, precision: str = "fp32",
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[UNet, torch.nn.Module, torch.optim.Optimizer, Any]:
    """Build the U-Net (same initial weights on every rank), its DDP wrapper, Adam, schedule.

    The weights are drawn from ``cfg.seed``, or copied from ``initial_state`` (strictly:
    a state dict of another architecture is refused by name). On the CPU in bf16 the
    network is laid out channels-last, where oneDNN's bfloat16 convolutions are fastest.

    Returns
    -------
    tuple
        (model, the module to train: the model or its DDP wrapper, Adam optimiser,
        ``ReduceLROnPlateau`` schedule).
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(cfg.seed)
        model = UNet(cfg.unet.to_unet_config(cfg.noise_scale, cfg.sky_noise_variance))
    if initial_state is not None:
        model.load_state_dict(initial_state, strict=True)
    model = model.to(device)
    if device.type == "cpu" and precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    net = _wrap(model, device, distributed)
    opt, sched = _optimiser(cfg, net)
    return model, net, opt, sched


def _make_teacher(
    cfg: TrainConfig, device: torch.device, distributed: bool
) -> tuple[BlindSpotNet, torch.nn.Module, torch.optim.Optimizer, Any]:
    """Build the blind-spot teacher of ``method: blindspot``, its Adam and schedule.

    The teacher has the student's depth, posterior and noise model (a plain head: it
    predicts the estimate, whatever residual or kernel head the student has),
    ``blindspot.base_channels`` (default the student's) and
    :attr:`TrainConfig.blind_radius`; its initial weights come from ``cfg.seed`` + 1 (the
    student's from ``cfg.seed``, as for ``method: n2v``).

    Returns
    -------
    tuple
        (teacher, the module to train: the teacher or its DDP wrapper, Adam optimiser,
        ``ReduceLROnPlateau`` schedule).
    """
    # the teacher is blind to the pixel, so it cannot add it (residual) or average it
    # (kernels): it predicts the estimate itself, which any student head can be fitted to
    unet_cfg = replace(cfg.unet.to_unet_config(cfg.noise_scale, cfg.sky_noise_variance),
                       residual=False, kernel_size=0)
    if cfg.blindspot.base_channels is not None:
        unet_cfg = replace(unet_cfg, base_channels=cfg.blindspot.base_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        teacher = BlindSpotNet(unet_cfg, blind_radius=cfg.blind_radius).to(device)
    teacher_net = _wrap(teacher, device, distributed)
    opt, sched = _optimiser(cfg, teacher_net)
    return teacher, teacher_net, opt, sched


def _wrap(module: torch.nn.Module, device: torch.device, distributed: bool) -> torch.nn.Module:
    """Wrap ``module`` in DistributedDataParallel under ``torchrun``.

    Returns
    -------
    torch.nn.Module
        The wrapper, or ``module`` itself when not distributed.
    """
    if not distributed:
        return module
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None
    )


def _optimiser(cfg: TrainConfig, net: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """Return Adam over ``net``'s parameters at ``learning_rate`` and its plateau schedule.

    Returns
    -------
    tuple
        (optimiser, ``ReduceLROnPlateau`` schedule).
    """
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        mode="min",
        factor=cfg.lr_schedule.factor,
        patience=cfg.lr_schedule.patience,
        min_lr=cfg.lr_schedule.min_lr,
    )
    return opt, sched


class _Batches:
    """Training batches from the sampler; with an executor, the next one is read ahead.

    With ``with_noise`` each batch carries its patches' frame noise models
    (:meth:`~pausdenoise.n2v.patches.PatchSampler.noise_of`; None when no frame has one).
    """

    def __init__(
        self,
        sampler: PatchSampler,
        batch_size: int,
        pin: bool,
        executor: ThreadPoolExecutor | None,
        with_noise: bool = False,
    ) -> None:
        self._sampler = sampler
        self._batch_size = batch_size
        self._pin = pin
        self._executor = executor
        self._with_noise = with_noise
        self._pending: Future | None = None

    def _fetch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # one batch, pinned on CUDA
        noise = None
        if self._with_noise:
            x, b, src = self._sampler.sample(self._batch_size, return_sources=True)
            noise = self._sampler.noise_of(src)
        else:
            x, b = self._sampler.sample(self._batch_size)
        if self._pin:
            x, b = x.pin_memory(), b.pin_memory()
        return x, b, noise

    def start(self) -> None:
        """Submit the first read (prefetch only)."""
        if self._executor:
            self._pending = self._executor.submit(self._fetch)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return the next batch and start reading the one after.

        Returns
        -------
        tuple
            Normalised patches and their bad-pixel masks, ``(batch, 1, p, p)``, and the
            patches' noise models ``(batch, 2)`` or None.
        """
        if self._executor:
            batch = self._pending.result()
            self._pending = self._executor.submit(self._fetch)
            return batch
        return self._fetch()


@dataclass
class _Checkpoints:
    """Where and with which provenance rank 0 writes checkpoints."""

    path: Path
    frames: list[Frame]
    provenance: dict[str, Any] | None
    t_start: float

    def write(self, model: UNet, cfg: TrainConfig, history: TrainHistory) -> None:
        """Stamp the elapsed time into ``history`` and save the current weights."""
        history.total_seconds = time.perf_counter() - self.t_start
        _save(self.path, model, cfg, self.frames, history, self.provenance)


def _run_epochs(
    run: _Run,
    batches: _Batches,
    history: TrainHistory,
    checkpoints: _Checkpoints | None,
    on_epoch_end: Callable[[UNet, TrainHistory], None] | None,
    t_start: float,
    epochs: int,
    deadline: float | None,
) -> dict[str, torch.Tensor] | None:
    """Train ``run.tracked()`` epoch by epoch until ``epochs``, early stopping or ``deadline``.

    Returns
    -------
    dict or None
        A copy of the best validation epoch's state dict (None if no epoch improved).
    """
    cfg = run.cfg
    best_state: dict[str, torch.Tensor] | None = None
    since_best = 0
    first = history.epochs_run
    for epoch in range(first, first + epochs):
        t0 = time.perf_counter()
        loss_sum, steps = _train_epoch(run, batches, epoch, deadline)
        improved = _end_epoch(run, history, loss_sum, steps, t0)
        history.total_seconds = time.perf_counter() - t_start
        if improved:
            history.best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in run.tracked().state_dict().items()}
            since_best = 0
        else:
            since_best += 1
        if run.show:
            tqdm.write(
                f"epoch {epoch + 1}: train {history.train_loss[-1]:.4f}  "
                f"val {history.val_loss[-1]:.4f}"
                f"{' *' if improved else ''}  lr {history.learning_rate[-1]:.2e}  "
                f"{history.patches_per_second[-1]:.0f} patches/s"
            )
        if (improved or cfg.keep == "last") and checkpoints is not None and run.phase != "teacher":
            checkpoints.write(run.tracked(), cfg, history)
        if on_epoch_end is not None and run.rank == 0 and run.phase != "teacher":
            on_epoch_end(run.tracked(), history)
        if deadline is not None and _past(deadline, run):
            history.stopped_on_budget = True
            break
        if cfg.early_stopping_patience is not None and since_best >= cfg.early_stopping_patience:
            history.stopped_early = True
            break
    return best_state


def _run_blindspot(
    run: _Run,
    batches: _Batches,
    history: TrainHistory,
    checkpoints: _Checkpoints | None,
    on_epoch_end: Callable[[UNet, TrainHistory], None] | None,
    t_start: float,
) -> dict[str, torch.Tensor] | None:
    """Train the blind-spot teacher, then distil it into the U-Net (``method: blindspot``).

    The first ``1 − distill_fraction`` of the epochs (of ``max_minutes`` when set) train the
    teacher on all its pixels, with its own schedule and early stopping; its best weights
    (``keep``) are frozen. The rest train the student alone against the frozen teacher's
    output on the same unmasked batches, with a fresh Adam and schedule; validation is then
    the distillation loss on the validation patches. Checkpoints and ``on_epoch_end`` see
    the student epochs only. (Training both at once was measured: the student lags a
    teacher that changes fast and ends far from it.)

    Returns
    -------
    dict or None
        The best student epoch's state dict (None if no epoch improved).
    """
    cfg = run.cfg
    f = cfg.blindspot.distill_fraction
    n_teacher = min(max(1, round(cfg.epochs * (1.0 - f))), max(cfg.epochs - 1, 1))
    budget = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    run.start_phase(None if budget is None else (1.0 - f) * budget - _since(t_start),
                    n_teacher * cfg.steps_per_epoch)
    best = _run_epochs(run, batches, history, None, None, t_start, n_teacher,
                       None if budget is None else t_start + (1.0 - f) * budget)
    if best is not None and cfg.keep == "best":
        run.teacher.load_state_dict(best)
    run.teacher.eval().requires_grad_(False)
    history.teacher_epochs = history.epochs_run
    history.teacher_val_loss = history.best_val_loss
    history.best_val_loss = math.inf
    history.stopped_early = False
    run.phase = "student"
    run.opt, run.sched = _optimiser(cfg, run.net)
    n_student = max(cfg.epochs - history.epochs_run, 1)
    run.start_phase(None if budget is None else budget - _since(t_start),
                    n_student * cfg.steps_per_epoch)
    return _run_epochs(run, batches, history, checkpoints, on_epoch_end, t_start,
                       n_student, None if budget is None else t_start + budget)


def _since(t: float) -> float:
    """Return the seconds elapsed since ``t``.

    Returns
    -------
    float
        Seconds (``time.perf_counter`` clock).
    """
    return time.perf_counter() - t


def _past(deadline: float, run: _Run) -> bool:
    """Tell whether the time budget is spent (rank 0's clock decides, so all ranks agree).

    Returns
    -------
    bool
        True past ``deadline`` (``time.perf_counter`` seconds).
    """
    flag = torch.tensor([float(time.perf_counter() > deadline)], device=run.device)
    if run.distributed:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def _train_epoch(
    run: _Run, batches: _Batches, epoch: int, deadline: float | None = None
) -> tuple[torch.Tensor, int]:
    """Take ``steps_per_epoch`` optimiser steps (fewer when the time budget runs out).

    Returns
    -------
    loss_sum : Tensor
        The summed training loss of the epoch (a scalar, on the device).
    steps : int
        The steps taken.
    """
    cfg = run.cfg
    run.net.train()
    loss_sum = torch.zeros((), device=run.device)
    bar = tqdm(
        range(cfg.steps_per_epoch),
        desc=f"N2V epoch {epoch + 1}/{cfg.epochs}",
        disable=not (run.show and is_terminal(sys.stderr)),
        leave=False,
        unit="step",
    )
    steps = 0
    for step in bar:
        x, bad, noise = batches.next()
        loss_sum += _train_step(run, x, bad, noise)
        steps += 1
        if run.show and (step % 10 == 9 or step == cfg.steps_per_epoch - 1):
            bar.set_postfix(loss=f"{float(loss_sum) / (step + 1):.4f}")
        if deadline is not None and step % 5 == 4 and _past(deadline, run):
            break
    bar.close()
    return loss_sum, steps


def _train_step(run: _Run, x: torch.Tensor, bad: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """Mask a batch and take one optimiser step (with warm-up and clipping).

    ``noise``: the patches' frame noise models (``method: sure``), or None.

    Returns
    -------
    Tensor
        The batch's loss, detached (a scalar, on the device).
    """
    cfg, device = run.cfg, run.device
    x = x.to(device, non_blocking=True)
    bad = bad.to(device, non_blocking=True)
    if cfg.augment:
        x, bad = _augment(x, bad, run.aug_rng)
    if run.phase == "teacher":
        loss = _teacher_step_loss(run, x, bad)
    elif run.phase == "student":
        loss = _student_step_loss(run, x)
    elif run.phase == "sure":
        loss = _sure_step_loss(run, x, bad, noise)
    elif run.phase == "n2n":
        loss = _n2n_step_loss(run, x, bad)
    else:
        loss = _masked_step_loss(run, x, bad)
    _set_learning_rate(run)
    run.global_step += 1
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.grad_clip is not None:
        run.scaler.unscale_(run.opt)
        params = [p for group in run.opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    run.scaler.step(run.opt)
    run.scaler.update()
    if run.averaged is not None and run.phase != "teacher":
        run.averaged.update_parameters(run.model)
    return loss.detach()


def _set_learning_rate(run: _Run) -> None:
    """Apply the linear warm-up and, with ``lr_decay: cosine``, the cosine decay.

    With the plateau schedule only the warm-up is set here (the schedule acts after it).
    Under DDP rank 0's progress is broadcast, so all ranks step with the same rate.
    """
    cfg = run.cfg
    warm = cfg.warmup_steps and run.global_step <= cfg.warmup_steps
    if cfg.lr_decay != "cosine" and not warm:
        return
    factor = min(1.0, (run.global_step + 1) / cfg.warmup_steps) if warm else 1.0
    lr = cfg.learning_rate
    if cfg.lr_decay == "cosine" and run.horizon is not None:
        done = torch.tensor([run.horizon.progress(run.global_step)], device=run.device)
        if run.distributed:
            dist.broadcast(done, src=0)
        lo = min(cfg.lr_schedule.min_lr, lr)
        lr = lo + 0.5 * (lr - lo) * (1.0 + math.cos(math.pi * float(done.item())))
    for group in run.opt.param_groups:
        group["lr"] = lr * factor


def _masked_step_loss(run: _Run, x: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """Return the masked blind-spot loss of ``method: n2v`` for one (augmented) batch.

    Returns
    -------
    Tensor
        Scalar loss (:func:`~pausdenoise.n2v.masking.blind_spot_loss` at the targets).
    """
    cfg, device = run.cfg, run.device
    masked, targets = apply_blind_spot(
        x,
        bad,
        masked_fraction=cfg.masked_fraction,
        radius=cfg.neighbourhood_radius,
        strategy=cfg.strategy,
        generator=run.mask_gen,
        struct_axes=cfg.struct_axes,
        struct_half_width=cfg.struct_half_width,
    )
    with torch.autocast(device_type=device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        pred = run.net(masked)
    return blind_spot_loss(run.model, pred, x, targets, _loss_weight(cfg, pred), cfg.nll_beta)


def _loss_weight(cfg: TrainConfig, out: torch.Tensor) -> torch.Tensor | None:
    """Return the per-pixel loss weight ``train.loss_weighting`` asks for (None: unweighted).

    Returns
    -------
    Tensor or None
        :func:`~pausdenoise.n2v.masking.poisson_weight` of the detached output for
        ``'poisson'``; None for ``'none'``.
    """
    return poisson_weight(out, cfg.noise_scale) if cfg.loss_weighting == "poisson" else None


def _teacher_step_loss(run: _Run, x: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """Return the teacher's blind-spot loss over every good pixel of one batch.

    Returns
    -------
    Tensor
        Scalar loss (MSE, or the Gaussian NLL for a posterior head).
    """
    cfg, device = run.cfg, run.device
    with torch.autocast(device_type=device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        out = run.teacher_net(x)
    return blind_spot_loss(run.teacher, out, x, ~bad.to(torch.bool), _loss_weight(cfg, out),
                           cfg.nll_beta)


def _sure_step_loss(run: _Run, x: torch.Tensor, bad: torch.Tensor,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """Return the SURE loss of ``method: sure`` over every good pixel of one batch.

    Each patch's noise model is its frame's (``noise``, rows ``[sky_variance,
    noise_scale]``) where known, the network's elsewhere.

    Returns
    -------
    Tensor
        Scalar loss (:func:`~pausdenoise.n2v.sure.sure_loss`).
    """
    device = run.device
    with torch.autocast(device_type=device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        return sure_loss(run.net, run.model, x, ~bad.to(torch.bool), generator=run.mask_gen,
                         noise=None if noise is None else noise.to(device))


def _n2n_step_loss(run: _Run, x: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """Return the Noise2Noise loss of ``method: n2n`` for one (augmented) batch.

    ``x`` holds the image (channel 0) and its target (channel 1, NaN where there is none):
    the mean squared difference between the network's output on the image and the target
    over the good pixels with a target; with ``loss_weighting: poisson`` each squared error
    is weighted by :func:`~pausdenoise.n2v.masking.poisson_weight` of the detached output
    (a function of the input only, so the minimiser stays the conditional mean of the target).

    Returns
    -------
    Tensor
        Scalar float32 loss.
    """
    image, target = x[:, :1], x[:, 1:]
    has_target = torch.isfinite(target) & ~bad.to(torch.bool)
    with torch.autocast(device_type=run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        out = run.net(image)
    return n2v_loss(out, torch.nan_to_num(target, nan=0.0), has_target,
                    _loss_weight(run.cfg, out))


def _student_step_loss(run: _Run, x: torch.Tensor) -> torch.Tensor:
    """Return the student's distillation loss against the frozen teacher on one batch.

    Returns
    -------
    Tensor
        Scalar loss (:func:`~pausdenoise.n2v.blindspot.distillation_loss`).
    """
    device = run.device
    with torch.autocast(device_type=device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        with torch.no_grad():
            target = run.teacher(x)
        out = run.net(x)
    return distillation_loss(run.model, out, target)


def _end_epoch(
    run: _Run, history: TrainHistory, loss_sum: torch.Tensor, steps: int, t0: float
) -> bool:
    """Validate, step the schedule and record the epoch in ``history``.

    Returns
    -------
    bool
        Whether the validation loss improved on the best so far.
    """
    cfg = run.cfg
    steps = max(steps, 1)
    train_loss = float(loss_sum) / steps  # waits for the device
    train_seconds = time.perf_counter() - t0
    if run.distributed:
        _sync_across_ranks(run.model, loss_sum, run.world)
        train_loss = float(loss_sum) / steps
    val_loss = _validation_loss(run)
    if cfg.lr_decay == "plateau":
        run.sched.step(val_loss)
    history.train_loss.append(train_loss)
    history.val_loss.append(val_loss)
    history.learning_rate.append(float(run.opt.param_groups[0]["lr"]))
    history.epoch_seconds.append(time.perf_counter() - t0)
    history.patches_per_second.append(
        steps * cfg.batch_size * run.world / max(train_seconds, 1e-9)
    )
    improved = val_loss < history.best_val_loss
    if improved:
        history.best_val_loss = val_loss
    return improved


def _validation_loss(run: _Run) -> float:
    """Return the validation loss that drives the schedule, early stopping and ``keep``.

    ``method: n2v``: the network's blind-spot loss on the fixed masked validation set.
    ``method: blindspot``, teacher phase: the teacher's loss on the same target pixels of
    the *unmasked* patches (it cannot see them), so both methods are judged on the same
    pixels; student phase: the distillation loss on the unmasked validation patches.
    ``method: sure``: the SURE of the network's estimate on the unmasked validation patches
    (a fixed probe). ``method: n2n``: the squared error against the targets of the
    unmasked validation patches.

    Returns
    -------
    float
        The loss (normalised units).
    """
    batch = max(run.cfg.batch_size, 1)
    vs = run.val_set
    if run.phase in ("n2v", "n2n"):
        return vs.loss(run.tracked(), batch_size=batch)
    if run.phase == "sure":
        return sure_validation_loss(run.tracked(), vs.originals, batch,
                                    noise=vs.noise if run.cfg.noise_per_frame else None)
    if run.phase == "teacher":
        return ValidationSet(vs.originals, vs.originals, vs.targets).loss(run.teacher, batch)
    return distillation_validation_loss(run.tracked(), run.teacher, vs.originals, batch)


def _finish(
    run: _Run,
    history: TrainHistory,
    best_state: dict[str, torch.Tensor] | None,
    checkpoints: _Checkpoints | None,
    t_start: float,
) -> None:
    """Keep the chosen weights, refit the output offset, write the final checkpoint.

    A network trained channels-last (bf16 on the CPU) is handed back in the standard
    layout, so that it computes exactly what its checkpoint, once loaded, computes.
    """
    cfg, model = run.cfg, run.model
    model.to(memory_format=torch.contiguous_format)
    if best_state is not None and cfg.keep == "best":
        model.load_state_dict(best_state)
    elif run.averaged is not None:
        model.load_state_dict(run.averaged.module.state_dict())
    model.eval()
    if cfg.calibrate_offset:
        history.output_offset = calibrate_offset(
            model, cfg, run.val_source, run.val_regions, run.device
        )
    history.total_seconds = time.perf_counter() - t_start
    if checkpoints is not None:
        _save(checkpoints.path, model, cfg, checkpoints.frames, history, checkpoints.provenance)
    if run.distributed:
        dist.barrier()


def calibrate_offset(
    model: UNet,
    cfg: TrainConfig,
    frames: Sequence[Any],
    regions: list[Region] | None = None,
    device: torch.device | str | None = None,
) -> float:
    """Refit the network's output offset on uniformly sampled held-out patches (in place).

    Training over-samples patches with sources (``sky_keep``) and stops after a finite
    budget; both can leave one global offset of the (prior-)mean output — measured up to
    ~0.1 σ on the sky of held-out CCDs with the Gaussian posterior. One global parameter is
    refitted by maximum likelihood on blind-spot targets sampled the way the survey is
    (``sky_keep = 1``; :meth:`~pausdenoise.n2v.patches.ValidationSet.output_offset`) and
    added to the bias of the head's mean channels.

    Parameters
    ----------
    model : UNet
        The trained network, modified in place.
    cfg : TrainConfig
        Its training configuration (patch size, masking, seed).
    frames : sequence
        Frames to sample held-out patches from (as for :func:`train_n2v`).
    regions : list of Region, optional
        Where in ``frames`` to sample (default: everywhere).
    device : torch.device or str, optional
        Where the model is (default: where its weights are).

    Returns
    -------
    float
        The offset added, in normalised units (σ of the frame).
    """
    device = device if device is not None else next(model.parameters()).device
    cal = _validation_set(cfg, as_frames(frames), regions, device, 7919, 1.0)
    if cfg.method in ("blindspot", "sure", "n2n"):  # no blind spot: all pixels of the input
        # (for n2n the input, not the target: a reference's background error stays out)
        images = cal.inputs if cfg.method == "n2n" else cal.originals
        delta = all_pixel_offset(model, images, batch_size=max(cfg.batch_size, 1))
    else:
        delta = cal.output_offset(model, batch_size=max(cfg.batch_size, 1))
    with torch.no_grad():
        model.head.bias[: model.config.out_channels] += delta
    return delta


def _save(path, model, cfg: TrainConfig, frames, history: TrainHistory, provenance) -> None:
    prov = {
        "frames": _frame_names(frames),
        "epochs": history.epochs_run,
        "seed": cfg.seed,
        "train_config": cfg.model_dump(mode="json"),
    }
    prov.update(provenance or {})
    save_checkpoint(Path(path), model, provenance=prov, history=history)
