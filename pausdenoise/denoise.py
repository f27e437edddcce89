"""Tiled Noise2Void inference of whole CCD frames with ``dask.array.map_overlap``.

How a frame is denoised
-----------------------
1. The frame is normalised with statistics of the *whole frame* (:class:`FrameStats`,
   computed once), so every tile sees the same linear transform as whole-image inference.
   Masked and non-finite pixels become 0 (the sky) before the network sees them.
2. ``image.map_overlap(..., depth=halo, boundary="none", trim=True)`` gives every chunk a halo
   of neighbouring pixels; each block runs :func:`pausdenoise.n2v.unet.predict_array` (the one
   inference primitive) and the halo is trimmed off.
3. The result is denormalised back to ADU (float32, same chunks as the input).

Why this is *exactly* whole-image inference (seam-free, not approximately)
-------------------------------------------------------------------------
- ``halo`` is derived from the model (:meth:`UNet.halo`: receptive-field radius rounded up to
  a multiple of ``2**depth``), never typed in. A pixel's output cannot depend on input farther
  than the receptive-field radius, so zero padding at an interior tile border never reaches
  a kept pixel.
- Max-pooling (and N2V2's blur-pool) make the output depend on where the ``2**depth`` grid
  starts. Every chunk origin except at the image edge is required to be a multiple of
  ``2**depth`` and so is the halo, so every tile origin lies on the whole image's pooling grid.
  :func:`check_chunks` enforces this (and halo ≤ every chunk, so a halo only ever reaches the
  adjacent chunk) *before* any graph is built, and suggests a valid chunking otherwise.
- ``boundary="none"``: tiles at the image edge get no artificial padding from dask; they
  end at the image edge exactly like the whole image does, and ``predict_array`` then pads
  them identically (zero padding of the convolutions at the top/left, reflection to a
  multiple of ``2**depth`` at the bottom/right, by the same amount because tile origins are
  multiples of ``2**depth``). Any dask boundary (``reflect``, ``nearest``, constant) would feed
  the network pixels that whole-image inference never sees, and change the edge pixels.
  The tests check equality to 1e-5 σ against whole-image inference, image edges included.

Masked and bad pixels
---------------------
Masked pixels (mask ≠ 0) and non-finite pixels enter the network as the sky (0 in normalised
units), exactly as in training, where they are never loss targets. Their values therefore
cannot leak into neighbours (no NaN spreads). The value written *at* such a pixel is chosen by
:attr:`DenoiseConfig.masked_output`: ``"network"`` (default, finite everywhere) is the network's
prediction there, an inpainting from the neighbours that was never trained against a target
and must not be used for photometry; ``"nan"`` writes NaN; ``"input"`` keeps the raw value.
The mask stays the authority: downstream stages drop masked pixels.

Model distribution (weights never travel with each task)
--------------------------------------------------------
A model is referred to by a small frozen :class:`ModelRef` (fingerprint + UNet config + halo,
plus either a checkpoint path or, for in-memory models, the safetensors bytes). The ref is put
in the graph once, as a single key named after its fingerprint, that every block task depends
on: the threaded scheduler shares it, the distributed scheduler ships it once per worker
(a data dependency), and two frames denoised with the same model share that one key. In each
process, :func:`get_model` resolves a ref into an eval-mode :class:`UNet` on the chosen device
once (a locked cache keyed by fingerprint and device). On CPU the cached network is its
optimised inference copy (:func:`pausdenoise.n2v.unet.optimise_for_inference`: channels-last,
traced and frozen with TorchScript, eager channels-last if tracing fails; equal to the eager
network within float32 round-off, ≈ 1.8× faster); ``PAUSDENOISE_CPU_OPTIMISE=0`` in a worker's
environment keeps the plain eager network. With a checkpoint-path ref the graph
holds only the path; with an in-memory ref it holds the weights once (≈ 1.9 MB for the default
depth-2 / 32-channel net), independent of the number of chunks and frames.

Threads
-------
Forward passes of an eval-mode module (eager or frozen TorchScript) under ``no_grad`` are
thread-safe; the threaded
scheduler calls blocks concurrently (tested). PyTorch's intra-op threads multiply with dask's
threads, so each process sets ``torch.set_num_threads`` once, deliberately
(:func:`default_torch_threads`). On CUDA, forwards within a process are serialised by a lock
so concurrent dask threads cannot oversubscribe GPU memory.

Resumable writing
-----------------
:func:`denoise_to_store` writes ``frames/<frame>/denoised`` with the image's chunks, one task per
chunk, and sets ``frames/<frame>/denoised_done[i, j] = 1`` only after chunk ``(i, j)`` is
written. A rerun skips chunks already done. The array's ``denoise_key`` attribute hashes
everything that changes the values (model fingerprint, frame statistics, halo, precision,
masked-pixel policy); a different key resets the flags first (then records the key), so a new
model recomputes everything. ``complete`` is set last, after every flag is 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pausdenoise.errors import ChunkingError
from pausdenoise.n2v.normalise import FrameStats, denormalise, frame_statistics, normalise
from pausdenoise.n2v.unet import (
    OptimisedUNet,
    UNet,
    UNetConfig,
    optimise_for_inference,
    predict_array,
)

__all__ = [
    "ChunkingError",
    "DenoiseConfig",
    "ModelRef",
    "as_model_ref",
    "check_chunks",
    "clear_model_cache",
    "cpu_optimise_default",
    "default_torch_threads",
    "denoise_frame",
    "denoise_key",
    "denoise_to_store",
    "frame_stats_from_dask",
    "get_model",
    "measure_precision_error",
    "model_cache_info",
    "predict_block",
    "resolve_halo",
    "suggest_chunks",
]

log = logging.getLogger(__name__)

DENOISED = "denoised"
DONE = "denoised_done"

# --------------------------------------------------------------------------- config


class DenoiseConfig(BaseModel):
    """Configuration of the denoise stage (inference only; the model comes separately).

    Attributes
    ----------
    device : {"auto", "cpu", "cuda"}
        Where each worker runs the network. ``"auto"`` is resolved *in the worker* (CUDA when
        that process sees a GPU, else CPU), so a CPU-only client can drive GPU workers.
    precision : {"float32", "bfloat16", "float16"}
        Reduced precision (``torch.autocast``). On CUDA both are used. On CPU, float32 is the
        default and ``"auto"`` on a CPU worker falls back to float32 with a warning; bfloat16
        autocast runs on CPU only when asked for explicitly with ``device="cpu",
        precision="bfloat16"`` (float16 with ``device="cpu"`` is rejected). CPU bfloat16 is
        ≈ 2.1–2.3× faster than the optimised float32 network. Its pixel error grows with
        the pixel value (8-bit mantissa): on the demo model and frames RMS 6e-3 σ, but up to
        4 σ at bright-star pixels; judged by forced aperture photometry it is small: the
        fluxes move by a median ≤ +0.013 flux errors (≤ +0.05 %) and p99 ≤ 0.05 flux
        errors from I_auto 17 down (``benchmarks/bench_precision.py``; RESULTS.md, "Reduced
        precision judged by photometry"). It stays opt-in because only float32 keeps the
        tiled = whole-image agreement at 1e-5 σ. Measure it on your own run first with
        ``bench_precision.py --run`` (or per pixel with :func:`measure_precision_error`).
    batch_size : int
        Sub-tiles per forward pass when ``tile_size`` splits a block (the GPU batch).
    tile_size : int or None
        Split each block (chunk + halo) into sub-tiles of this core size (a multiple of
        ``2**depth``) with the same halo, batched ``batch_size`` at a time. Bounds the memory
        of one forward pass (the activations of a 1024² block at 32 channels need ~1 GB).
        ``None``: one forward per block. The result does not depend on it (exact tiling).
    halo : int or None
        Override of the halo (px). Must be ≥ the model's halo and a multiple of ``2**depth``;
        ``None`` uses :meth:`UNet.halo`.
    torch_threads : int or None
        ``torch.set_num_threads`` in each worker process. ``None``: see
        :func:`default_torch_threads` (cores divided by the dask threads of the process).
    masked_output : {"network", "nan", "input"}
        Value written at masked / non-finite pixels (see the module docstring).
    prior_scale : float
        For a Gaussian-posterior network: τ multiplying the prior variance in the posterior
        mean (:meth:`pausdenoise.n2v.unet.UNet.infer`); 1 = least pixel error, larger trusts
        each pixel's own value more (less faint-flux loss, more noise). Ignored otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' resolves per worker: cuda if visible, else cpu"
    )
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="autocast dtype. On CUDA as asked. On CPU float32 unless "
        "device is 'cpu' and precision 'bfloat16' (2.1-2.3x faster here; pixels off by up to "
        "4 sigma at bright stars, aperture fluxes by <= 0.05 flux errors (p99): measure with "
        "benchmarks/bench_precision.py); float16 needs CUDA"
    )
    batch_size: int = Field(4, ge=1, description="sub-tiles per forward pass")
    tile_size: int | None = Field(
        None, ge=1, description="core size of sub-tiles inside a block; None = whole block"
    )
    halo: int | None = Field(
        None, ge=0, description="halo override (>= model halo, multiple of 2**depth)"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per worker process; None = derived"
    )
    masked_output: Literal["network", "nan", "input"] = Field(
        "network", description="value written at masked or non-finite pixels"
    )
    prior_scale: float = Field(
        1.0,
        gt=0,
        description="Gaussian-posterior networks: prior-variance factor τ (1: least pixel "
        "error; larger: less faint-flux loss, more noise left); ignored by plain N2V",
    )

    @model_validator(mode="after")
    def _check(self) -> DenoiseConfig:
        if self.device == "cpu" and self.precision == "float16":
            raise ValueError(
                "precision='float16' needs device='cuda' (or 'auto'); on CPU only bfloat16 "
                "can be asked for, explicitly (device='cpu', precision='bfloat16')"
            )
        return self




# --------------------------------------------------------------------------- model refs


def _weights_to_bytes(model: UNet) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state)


@dataclass(frozen=True, eq=False)
class ModelRef:
    """A small, picklable reference to a trained U-Net.

    Equality and hashing use the fingerprint only. Build with :meth:`from_model` (weights
    carried as safetensors bytes) or :meth:`from_checkpoint` (only the path travels; workers
    load the file, so it must be on a filesystem they share).

    Attributes
    ----------
    fingerprint : str
        Identifies the weights; recorded in the store so that another model recomputes.
    unet_config : dict
        :meth:`UNetConfig.to_dict` of the network.
    halo : int
        :meth:`UNet.halo` of the network (px).
    path : str or None
        Checkpoint file, for checkpoint refs.
    weights : bytes or None
        Safetensors bytes of the state dict, for in-memory refs.
    """

    fingerprint: str
    unet_config: dict
    halo: int
    path: str | None = None
    weights: bytes | None = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelRef) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    @property
    def size_multiple(self) -> int:
        """``2**depth`` of the network."""
        return UNetConfig(**self.unet_config).size_multiple

    @property
    def nbytes(self) -> int:
        """Bytes this ref adds to a task graph (once)."""
        return len(self.weights or b"") + len(self.path or "") + 256

    @classmethod
    def from_model(cls, model: UNet) -> ModelRef:
        """Ref carrying the weights of an in-memory model (tests, notebooks)."""
        weights = _weights_to_bytes(model)
        cfg = model.config.to_dict()
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        h.update(weights)
        return cls(
            fingerprint="mem-" + h.hexdigest()[:20],
            unet_config=cfg,
            halo=model.halo(),
            weights=weights,
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> ModelRef:
        """Ref to a checkpoint file (loaded once here for its config, once per worker)."""
        from pausdenoise.n2v.checkpoint import checkpoint_fingerprint, load_model

        path = str(Path(path).resolve())
        model, _meta = load_model(path, device="cpu")
        return cls(
            fingerprint=checkpoint_fingerprint(path),
            unet_config=model.config.to_dict(),
            halo=model.halo(),
            path=path,
        )

    def load(self, device: str = "cpu") -> UNet:
        """Build the eval-mode model on ``device`` (uncached; use :func:`get_model`)."""
        if self.weights is not None:
            from safetensors.torch import load

            model = UNet(UNetConfig(**self.unet_config))
            model.load_state_dict(load(self.weights))
        elif self.path is not None:
            from pausdenoise.n2v.checkpoint import checkpoint_fingerprint, load_model

            found = checkpoint_fingerprint(self.path)
            if found != self.fingerprint:
                raise RuntimeError(
                    f"checkpoint {self.path} changed since the graph was built "
                    f"(fingerprint {found} != {self.fingerprint})"
                )
            model, _meta = load_model(self.path, device="cpu")
        else:
            raise ValueError("ModelRef has neither weights nor a checkpoint path")
        return model.to(device).eval()


def as_model_ref(model: UNet | ModelRef | str | os.PathLike) -> ModelRef:
    """Accept a :class:`UNet`, a :class:`ModelRef` or a checkpoint path."""
    if isinstance(model, ModelRef):
        return model
    if isinstance(model, UNet):
        return ModelRef.from_model(model)
    if isinstance(model, (str, os.PathLike)):
        return ModelRef.from_checkpoint(model)
    raise TypeError(f"expected UNet, ModelRef or checkpoint path, got {type(model).__name__}")


# --------------------------------------------------------------------------- per-process cache

_CACHE_LOCK = threading.Lock()
_MODEL_CACHE: OrderedDict[tuple[str, str, bool], UNet | OptimisedUNet] = OrderedDict()
_MODEL_CACHE_SIZE = 4
_CACHE_STATS = {"loads": 0, "hits": 0}
_THREADS_LOCK = threading.Lock()
_THREADS_SET: list[tuple] = []
_GPU_LOCKS: dict[str, threading.Lock] = {}


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but this worker sees no CUDA device")
    return torch.device(device)


def cpu_optimise_default() -> bool:
    """Whether CPU inference uses the optimised network: ``PAUSDENOISE_CPU_OPTIMISE`` ≠ ``0``.

    On by default (same results within float32 round-off, ≈ 1.8× faster); setting the
    variable to ``0`` in a worker's environment runs the plain eager network there.
    """
    return os.environ.get("PAUSDENOISE_CPU_OPTIMISE", "1").strip().lower() not in (
        "0", "false", "no", "off")


def get_model(ref: ModelRef, device: str | torch.device = "cpu", *,
              optimise: bool | None = None) -> UNet | OptimisedUNet:
    """The eval-mode model of ``ref`` on ``device``, loaded at most once per process.

    Thread-safe: concurrent callers wait on one lock while the first one loads, so the
    weights are read and moved to the device once. Up to 4 models are kept (LRU).

    Parameters
    ----------
    ref : ModelRef
    device : str or torch.device
    optimise : bool or None
        On CPU, return the optimised inference copy
        (:func:`~pausdenoise.n2v.unet.optimise_for_inference`, built once per process and
        cached like the model). ``None``: :func:`cpu_optimise_default`. Ignored on CUDA
        (always the eager network).
    """
    dev = torch.device(device)
    optimise = (cpu_optimise_default() if optimise is None else optimise) and dev.type == "cpu"
    key = (ref.fingerprint, str(device), optimise)
    with _CACHE_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is not None:
            _MODEL_CACHE.move_to_end(key)
            _CACHE_STATS["hits"] += 1
            return model
        model = ref.load(str(device))
        if optimise:
            t0 = time.perf_counter()
            model = optimise_for_inference(model)
            log.debug("model %s optimised for CPU inference (%s) in %.2f s", ref.fingerprint,
                      model.backend, time.perf_counter() - t0)
        _CACHE_STATS["loads"] += 1
        _MODEL_CACHE[key] = model
        while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
            _MODEL_CACHE.popitem(last=False)
        return model


def clear_model_cache() -> None:
    """Forget the cached models of this process and reset :func:`model_cache_info`."""
    with _CACHE_LOCK:
        _MODEL_CACHE.clear()
        _CACHE_STATS.update(loads=0, hits=0)


def model_cache_info() -> dict:
    """``{"loads": n, "hits": n, "size": n}`` of this process's model cache."""
    with _CACHE_LOCK:
        return {**_CACHE_STATS, "size": len(_MODEL_CACHE)}


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_torch_threads() -> int:
    """Torch intra-op threads for this process so that dask threads × torch threads ≈ cores.

    - ``OMP_NUM_THREADS`` when set: a deliberate choice already made for this process
      (:func:`pausdenoise.cluster.set_torch_threads` exports it in workers, distributed's
      nanny exports 1 by default, the test suite sets 1); it is kept.
    - in a ``distributed`` worker otherwise: cores // the worker's threads;
    - under the threaded scheduler: cores // ``num_workers`` (dask's pool has one thread
      per core by default, giving 1).
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = _available_cores()
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None:
        return max(1, cores // max(1, worker.state.nthreads))
    n = dask.config.get("num_workers", None) or cores
    return max(1, cores // int(n))


def _configure_process(config: DenoiseConfig, device: torch.device) -> None:
    """Per-process torch settings, applied once per distinct value (cheap afterwards).

    - ``torch.set_num_threads`` (see :func:`default_torch_threads`);
    - on CUDA with ``precision="float32"``, TF32 convolutions/matmuls are switched off so
      float32 means float32 (TF32 errors are ~1e-3 relative); reduced precision is opt-in.
    """
    n = config.torch_threads or default_torch_threads()
    state = (n, device.type, config.precision)
    if _THREADS_SET and _THREADS_SET[-1] == state:
        return
    with _THREADS_LOCK:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        if device.type == "cuda" and config.precision == "float32":
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        _THREADS_SET[:] = [state]


# --------------------------------------------------------------------------- halo & chunks


def resolve_halo(ref: ModelRef | UNet, config: DenoiseConfig | None = None) -> int:
    """The halo used: the model's (:meth:`UNet.halo`) or a validated override."""
    ref = ref if isinstance(ref, ModelRef) else ModelRef.from_model(ref)
    config = config or DenoiseConfig()
    if config.halo is None:
        return ref.halo
    m = ref.size_multiple
    if config.halo < ref.halo or config.halo % m:
        raise ValueError(
            f"halo override {config.halo} must be >= the model's halo {ref.halo} "
            f"(receptive field) and a multiple of 2**depth = {m}"
        )
    return config.halo


def _axis_ok(chunks: tuple[int, ...], multiple: int, halo: int) -> bool:
    if len(chunks) == 1:
        return True
    return all(c % multiple == 0 for c in chunks[:-1]) and min(chunks) >= halo


def suggest_chunks(shape: tuple[int, ...], requested: tuple[int, ...], multiple: int,
                   halo: int) -> tuple[int, ...]:
    """A regular chunk size per axis near ``requested`` that :func:`check_chunks` accepts.

    Candidates are multiples of ``multiple`` that are ≥ ``halo`` and leave a last chunk of
    either 0 or ≥ ``halo`` pixels (or a single chunk); the closest to the request wins.
    """
    out = []
    for n, want in zip(shape, requested, strict=True):
        best = n
        lo = max(multiple, -(-halo // multiple) * multiple)
        for c in range(lo, n, multiple):
            rest = n % c
            if rest and rest < halo:
                continue
            if abs(c - want) < abs(best - want) or (abs(c - want) == abs(best - want) and c > best):
                best = c
        out.append(best)
    return tuple(out)


def check_chunks(chunks: tuple[tuple[int, ...], ...], multiple: int, halo: int) -> None:
    """Raise :class:`ChunkingError` unless tiled inference with these chunks is exact.

    Rules, per axis with more than one chunk: every chunk but the last is a multiple of
    ``multiple`` (``2**depth``, so chunk origins lie on the pooling grid) and every chunk is
    ≥ ``halo`` (so a halo reads only the adjacent chunk and dask never rechunks it).
    """
    if len(chunks) != 2:
        raise ChunkingError(f"expected a 2-D image, got {len(chunks)} dimensions")
    bad = [ax for ax, c in enumerate(chunks) if not _axis_ok(c, multiple, halo)]
    if not bad:
        return
    shape = tuple(sum(c) for c in chunks)
    requested = tuple(c[0] for c in chunks)
    sugg = suggest_chunks(shape, requested, multiple, halo)
    details = "; ".join(
        f"axis {ax}: chunks {chunks[ax][:4]}{'...' if len(chunks[ax]) > 4 else ''}"
        for ax in bad
    )
    raise ChunkingError(
        f"chunking incompatible with seam-free tiled inference ({details}): every chunk but "
        f"the last must be a multiple of 2**depth = {multiple} and every chunk >= the halo "
        f"{halo} px. Suggested chunks: {sugg} (e.g. image.rechunk({sugg}); chunks of "
        ">= 1 Mpx keep the map_overlap graph small)"
    )


# --------------------------------------------------------------------------- block inference


def _autocast(device: torch.device, precision: str):
    if precision == "float32":
        return contextlib.nullcontext()
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


#: On CPU a forward pass holds at most this many input pixels (batch × tile area): larger
#: batches only add memory traffic (the 96-channel skip concatenation of 4 × 320² tiles is
#: 157 MB); measured 4 × 320² per forward 1.34× slower than 1 × 320² (benchmarks/RESULTS.md,
#: "CPU inference"). Batching small tiles still amortises the per-call overhead.
CPU_BATCH_PIXELS = 1 << 17


def _tiles(n: int, core: int) -> list[tuple[int, int]]:
    return [(o, min(o + core, n)) for o in range(0, n, core)]


def predict_block(
    model: UNet | OptimisedUNet,
    x: np.ndarray,
    *,
    halo: int,
    tile_size: int | None = None,
    batch_size: int = 4,
    precision: str = "float32",
    prior_scale: float = 1.0,
) -> np.ndarray:
    """Network output for a normalised 2-D block, optionally in batched sub-tiles.

    With ``tile_size=None`` this is :func:`predict_array` of the block. Otherwise the block
    is cut into cores of ``tile_size`` (origins on multiples of ``tile_size`` from the block
    origin), each read with ``halo`` px around it (clipped at the block), tiles of equal
    shape batched ``batch_size`` at a time; this equals the un-split result by the same
    argument as the chunk-level tiling. Runs on the model's device; on CUDA the input goes
    through pinned memory with non-blocking copies and ``precision`` sets the autocast dtype.
    On CPU a batch is also capped at :data:`CPU_BATCH_PIXELS` input pixels (so 320² tiles
    go one per forward), the faster choice there; the result does not depend on it.
    ``model`` is a :class:`UNet` or its optimised CPU copy (:class:`OptimisedUNet`).
    """
    device = next(model.parameters()).device
    ny, nx = x.shape
    m = model.config.size_multiple
    if tile_size is None or (tile_size >= ny and tile_size >= nx):
        jobs = [((0, ny), (0, nx), (0, ny), (0, nx))]
    else:
        if tile_size % m:
            raise ValueError(f"tile_size {tile_size} must be a multiple of 2**depth = {m}")
        jobs = []
        for y0, y1 in _tiles(ny, tile_size):
            for x0, x1 in _tiles(nx, tile_size):
                jobs.append(((max(0, y0 - halo), min(ny, y1 + halo)),
                             (max(0, x0 - halo), min(nx, x1 + halo)), (y0, y1), (x0, x1)))
    groups: dict[tuple[int, int], list] = {}
    for job in jobs:
        (ry0, ry1), (rx0, rx1), _, _ = job
        groups.setdefault((ry1 - ry0, rx1 - rx0), []).append(job)
    out = np.empty((ny, nx), dtype=np.float32)
    cuda = device.type == "cuda"
    lock = _GPU_LOCKS.setdefault(str(device), threading.Lock()) if cuda else None
    for (gy, gx), group in groups.items():
        step = batch_size if cuda else max(1, min(batch_size, CPU_BATCH_PIXELS // (gy * gx)))
        for b0 in range(0, len(group), step):
            batch = group[b0:b0 + step]
            stack = np.stack([x[ry0:ry1, rx0:rx1] for (ry0, ry1), (rx0, rx1), _, _ in batch])
            xt = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
            with lock if lock is not None else contextlib.nullcontext():
                if cuda:
                    xt = xt.pin_memory().to(device, non_blocking=True)
                with torch.no_grad(), _autocast(device, precision):
                    yt = predict_array(model, xt, prior_scale=prior_scale)
                y = yt[:, 0].float().cpu().numpy()
            for k, ((ry0, _), (rx0, _), (y0, y1), (x0, x1)) in enumerate(batch):
                out[y0:y1, x0:x1] = y[k, y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]
    return out


def _effective_precision(config: DenoiseConfig, device: torch.device) -> str:
    """The autocast dtype a worker uses: reduced precision on CPU only when explicit."""
    if device.type == "cpu" and config.device == "cpu" and config.precision == "bfloat16":
        return "bfloat16"
    if config.precision != "float32" and device.type != "cuda":
        warnings.warn(
            f"precision={config.precision!r} requested but the worker runs on {device}; "
            "using float32", RuntimeWarning, stacklevel=3,
        )
        return "float32"
    return config.precision


def _denoise_block(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    ref: ModelRef,
    stats: FrameStats,
    halo: int,
    config: DenoiseConfig,
) -> np.ndarray:
    """One map_overlap task: normalise, run the network, denormalise (ADU, float32)."""
    if image.size == 0:
        return np.empty(image.shape, dtype=np.float32)
    device = _resolve_device(config.device)
    _configure_process(config, device)
    model = get_model(ref, device)
    x = normalise(image, stats, mask)
    y = predict_block(model, x, halo=halo, tile_size=config.tile_size,
                      batch_size=config.batch_size,
                      precision=_effective_precision(config, device),
                      prior_scale=config.prior_scale)
    out = denormalise(y, stats)
    if config.masked_output != "network":
        bad = ~np.isfinite(image)
        if mask is not None:
            bad |= np.asarray(mask) != 0
        if bad.any():
            out[bad] = np.nan if config.masked_output == "nan" else image[bad]
    return out


def _ref_key(ref: ModelRef):
    """The ref as one graph key shared by all tasks (and by all frames using the model)."""
    return dask.delayed(ref, traverse=False, pure=True, name=f"n2v-model-{ref.fingerprint}")


def _map_denoise(image: da.Array, mask: da.Array | None, stats: FrameStats, ref: ModelRef,
                 config: DenoiseConfig, halo: int) -> da.Array:
    """The map_overlap graph, without validation (tests use it to shrink the halo)."""
    depth = {ax: (halo if len(c) > 1 else 0) for ax, c in enumerate(image.chunks)}
    arrays = [image] if mask is None else [image, mask]
    return da.map_overlap(
        _denoise_block,
        *arrays,
        depth=depth,
        boundary="none",
        trim=True,
        align_arrays=False,
        dtype=np.float32,
        meta=np.empty((0, 0), dtype=np.float32),
        name="n2v-denoise-" + dask.base.tokenize(
            image, mask, stats, ref.fingerprint, config.model_dump_json(), halo
        ),
        ref=_ref_key(ref),
        stats=stats,
        halo=halo,
        config=config,
    )


def denoise_frame(
    image: da.Array,
    mask: da.Array | None,
    stats: FrameStats,
    model: UNet | ModelRef | str | os.PathLike,
    config: DenoiseConfig | None = None,
) -> da.Array:
    """Lazily denoise one frame; equals whole-image :func:`predict_array` inference.

    Parameters
    ----------
    image : dask.array.Array, shape (ny, nx)
        Frame in ADU. Its chunks must satisfy :func:`check_chunks` for the model.
    mask : dask.array.Array or None
        Non-zero = bad pixel (set to the sky before the network). Rechunked to ``image``'s
        chunks if they differ.
    stats : FrameStats
        Whole-frame normalisation statistics (never per chunk).
    model : UNet, ModelRef or path
        The network; a path is a checkpoint (see :class:`ModelRef`).
    config : DenoiseConfig, optional

    Returns
    -------
    dask.array.Array
        float32 ADU, same shape and chunks. At masked / non-finite pixels: see
        ``config.masked_output``.

    Raises
    ------
    ChunkingError
        Before any graph is built, if the chunks would give seams; the message suggests
        a valid chunking.
    """
    config = config or DenoiseConfig()
    ref = as_model_ref(model)
    halo = resolve_halo(ref, config)
    if image.ndim != 2:
        raise ChunkingError(f"expected a 2-D image, got shape {image.shape}")
    check_chunks(image.chunks, ref.size_multiple, halo)
    if mask is not None:
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} != image shape {image.shape}")
        if mask.chunks != image.chunks:
            mask = mask.rechunk(image.chunks)
    return _map_denoise(image, mask, stats, ref, config, halo)


# --------------------------------------------------------------------------- statistics


def frame_stats_from_dask(image: da.Array, mask: da.Array | None = None,
                          max_samples: int = 1_000_000) -> FrameStats:
    """:func:`frame_statistics` of a lazy frame from a regular-stride sample (eager).

    Reads the frame once (strided slicing still reads whole chunks) but never holds more
    than the sample in memory.
    """
    stride = max(1, math.ceil(math.sqrt(image.size / max_samples)))
    parts = [image[::stride, ::stride]]
    if mask is not None:
        parts.append(mask[::stride, ::stride])
    values = dask.compute(*parts)
    return frame_statistics(values[0], values[1] if mask is not None else None,
                            max_samples=max_samples)


# --------------------------------------------------------------------------- store writer


def denoise_key(ref: ModelRef, stats: FrameStats, halo: int, config: DenoiseConfig) -> str:
    """Hash of everything that changes the denoised values of a frame."""
    payload = {
        "model": ref.fingerprint,
        "sky": float(stats.sky),
        "sigma": float(stats.sigma),
        "halo": int(halo),
        "precision": config.precision,
        "masked_output": config.masked_output,
    }
    if config.prior_scale != 1.0:  # absent at 1: keys of earlier runs stay valid
        payload["prior_scale"] = float(config.prior_scale)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _write_block(block: np.ndarray, store_path: str, frame: str, index: tuple[int, int],
                 region: tuple[slice, slice]) -> int:
    """Write one denoised chunk, then (only then) mark it done."""
    import zarr

    arr = zarr.open_array(store_path, path=f"frames/{frame}/{DENOISED}", mode="r+")
    arr[region] = block
    done = zarr.open_array(store_path, path=f"frames/{frame}/{DONE}", mode="r+")
    done[index] = 1
    return 1


def _finish(counts: list[int], store_path: str, frame: str, key: str) -> int:
    """Set ``complete`` once every chunk flag is 1; return the number of chunks written."""
    import zarr

    arr = zarr.open_array(store_path, path=f"frames/{frame}/{DENOISED}", mode="r+")
    done = zarr.open_array(store_path, path=f"frames/{frame}/{DONE}", mode="r")
    if arr.attrs.get("denoise_key") == key and bool(np.all(done[...] == 1)):
        arr.attrs["complete"] = True
    return int(sum(counts))


def denoise_to_store(
    store_path: str | os.PathLike,
    frame: str,
    model: UNet | ModelRef | str | os.PathLike,
    config: DenoiseConfig | None = None,
    *,
    stats: FrameStats | None = None,
    use_mask: bool = True,
    force: bool = False,
):
    """Build (do not run) the resumable write of ``frames/<frame>/denoised``.

    Eager, small steps here: open the frame's ``image`` (and ``mask``), compute the frame
    statistics if not given, validate the chunks, create or reuse ``denoised``
    (:func:`pausdenoise.store.create_output_array`: float32, NaN fill, the image's chunks and
    shards; the dask chunks are the store's write unit, so each task owns whole chunks or
    shards) and ``denoised_done`` (uint8, one element per dask chunk, each element its own
    zarr chunk so concurrent flag writes never share an object), and read which
    chunks are done. A stored ``denoise_key`` different from this run's (other model,
    statistics, halo, precision or masked policy) or ``force`` resets the flags before the
    new key is recorded.

    Returns
    -------
    dask.delayed.Delayed
        Computing it writes every chunk not yet done (one task per chunk, each marking its
        flag after the write), sets ``complete=True`` on ``denoised`` at the end, and returns
        the number of chunks written. Combine several frames with ``dask.compute(*ds)``;
        frames using the same model share one model key in the graph. One writer per frame
        at a time (two concurrent runs of the same frame are not coordinated).

    Raises
    ------
    pausdenoise.store.StoreError
        If the frame is missing or its ingest is not complete.
    ChunkingError
        If the store's chunks (its write unit) do not allow seam-free tiling.
    """
    from pausdenoise import store as st

    config = config or DenoiseConfig()
    store_path = str(store_path)
    ref = as_model_ref(model)
    halo = resolve_halo(ref, config)
    if not st.is_complete(store_path, frame):
        raise st.StoreError(f"frame {frame!r} is missing or not completely ingested")
    group = st.open_store(store_path, "r+")[f"{st.FRAMES_GROUP}/{frame}"]
    image = st.open_frame(store_path, frame, "image")
    mask = st.open_frame(store_path, frame, "mask") if use_mask and "mask" in group else None
    check_chunks(image.chunks, ref.size_multiple, halo)
    if stats is None:
        stats = frame_stats_from_dask(image, mask)
    key = denoise_key(ref, stats, halo, config)
    grid = tuple(len(c) for c in image.chunks)
    unit = st.write_chunks(store_path, frame, "image")

    arr = group.get(DENOISED)
    done = group.get(DONE)
    reuse = (
        not force and arr is not None and done is not None
        and arr.shape == image.shape and tuple(arr.shards or arr.chunks) == unit
        and tuple(done.shape) == grid and arr.attrs.get("denoise_key") == key
    )
    if reuse:
        flags = np.asarray(done[...])
    else:
        # Flags first (all zero), then a fresh array (NaN: no stale values survive) and its
        # key last: an interruption anywhere leaves no flag that a later run could trust.
        group.create_array(DONE, shape=grid, chunks=(1,) * len(grid), dtype="uint8",
                           fill_value=0, overwrite=True)
        arr = st.create_output_array(store_path, frame, DENOISED, like="image",
                                     overwrite=True)
        arr.attrs.update({
            "denoise_key": key,
            "model_fingerprint": ref.fingerprint,
            "sky": float(stats.sky),
            "sigma": float(stats.sigma),
            "halo": int(halo),
            "precision": config.precision,
            "masked_output": config.masked_output,
            "complete": False,
        })
        flags = np.zeros(grid, dtype=np.uint8)

    den = _map_denoise(image, mask if mask is None or mask.chunks == image.chunks
                       else mask.rechunk(image.chunks), stats, ref, config, halo)
    blocks = den.to_delayed()
    offsets = [np.concatenate([[0], np.cumsum(c)]) for c in image.chunks]
    writes = []
    for index in np.ndindex(*grid):
        if flags[index]:
            continue
        region = tuple(slice(int(o[i]), int(o[i + 1])) for o, i in zip(offsets, index,
                                                                          strict=True))
        writes.append(dask.delayed(_write_block, pure=False)(
            blocks[index], store_path, frame, tuple(int(i) for i in index), region,
            dask_key_name=f"denoise-write-{frame}-{key}-{'-'.join(map(str, index))}",
        ))
    return dask.delayed(_finish, pure=False)(
        writes, store_path, frame, key, dask_key_name=f"denoise-finish-{frame}-{key}"
    )


# --------------------------------------------------------------------------- precision check


@contextlib.contextmanager
def tf32_mode(device: torch.device, enabled: bool):
    """On CUDA, TF32 convolutions and matmuls on (``enabled``) or off inside the block; the
    previous flags are restored. Nothing on CPU. ``tf32_mode(dev, False)`` makes float32
    mean float32 (torch allows TF32 convolutions by default)."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def measure_precision_error(
    model: UNet,
    image: np.ndarray,
    stats: FrameStats,
    mask: np.ndarray | None = None,
    *,
    precision: Literal["bfloat16", "float16"] = "bfloat16",
    device: str = "cuda",
) -> dict[str, Any]:
    """Error of reduced-precision inference against float32, in units of the noise σ.

    Runs :func:`predict_array` on the normalised ``image`` twice on ``device`` (float32 and
    autocast ``precision``; CPU autocast works for bfloat16) and compares the outputs. On
    CUDA the float32 reference is strict float32 (TF32 switched off for the call, as the
    denoise stage does for ``precision="float32"``); each precision is warmed up on a
    256² corner first, so the timings leave out one-off autotuning.
    Normalised units are units of the frame's σ, so the numbers read directly as fractions
    of the noise. On CPU both runs use the network the denoise stage runs there (the
    optimised copy unless ``PAUSDENOISE_CPU_OPTIMISE=0``; under bfloat16 autocast its eager
    channels-last form), so the timings compare the two production paths.

    Returns
    -------
    dict
        ``rms_sigma``, ``max_abs_sigma``, ``mean_sigma`` (bias), ``p99_abs_sigma``,
        ``precision``, ``device``, ``seconds_float32``, ``seconds_reduced``.
    """
    dev = _resolve_device(device)
    net = get_model(ModelRef.from_model(model), dev)
    x = normalise(image, stats, mask)
    results = {}
    timings = {}
    with tf32_mode(dev, False):
        for prec in ("float32", precision):
            predict_block(net, x[:256, :256], halo=net.halo(), precision=prec)  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            results[prec] = predict_block(net, x, halo=net.halo(), precision=prec)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            timings[prec] = time.perf_counter() - t0
    d = results[precision].astype(np.float64) - results["float32"]
    good = np.ones_like(d, dtype=bool) if mask is None else np.asarray(mask) == 0
    d = d[good & np.isfinite(d)]
    return {
        "precision": precision,
        "device": str(dev),
        "rms_sigma": float(np.sqrt(np.mean(d**2))),
        "max_abs_sigma": float(np.max(np.abs(d))),
        "mean_sigma": float(np.mean(d)),
        "p99_abs_sigma": float(np.percentile(np.abs(d), 99)),
        "seconds_float32": timings["float32"],
        "seconds_reduced": timings[precision],
    }
