"""Model references, the per-process model cache, devices and torch threads.

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
(in :func:`pausdenoise.denoise.tiling.predict_block`) so concurrent dask threads cannot
oversubscribe GPU memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import dask
import safetensors.torch
import torch
from distributed import get_worker

from pausdenoise.denoise.config import DenoiseConfig
from pausdenoise.n2v.checkpoint import checkpoint_fingerprint, load_model
from pausdenoise.n2v.unet import OptimisedUNet, UNet, UNetConfig, optimise_for_inference

__all__ = [
    "ModelRef",
    "as_model_ref",
    "clear_model_cache",
    "cpu_optimise_default",
    "default_torch_threads",
    "get_model",
    "model_cache_info",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model refs


def _weights_to_bytes(model: UNet) -> bytes:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return safetensors.torch.save(state)


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
        """Compare fingerprints only.

        Parameters
        ----------
        other : object
            Any object; only a :class:`ModelRef` can be equal.

        Returns
        -------
        bool
            Whether ``other`` is a ref with the same fingerprint.
        """
        return isinstance(other, ModelRef) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        """Hash the fingerprint only.

        Returns
        -------
        int
            ``hash(self.fingerprint)``.
        """
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
        """Build a ref carrying the weights of an in-memory model (tests, notebooks).

        Parameters
        ----------
        model : UNet
            The network; its state dict is serialised as safetensors bytes.

        Returns
        -------
        ModelRef
            Fingerprint ``"mem-"`` + 20 hex characters of the SHA-256 of the config and
            the weights.
        """
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
        """Build a ref to a checkpoint file (loaded once here for its config, once per worker).

        Parameters
        ----------
        path : str or os.PathLike
            Checkpoint file; stored resolved to an absolute path, so it must be on a
            filesystem the workers share.

        Returns
        -------
        ModelRef
            Fingerprint of the checkpoint file, no weights.
        """
        path = str(Path(path).resolve())
        model, _meta = load_model(path, device="cpu")
        return cls(
            fingerprint=checkpoint_fingerprint(path),
            unet_config=model.config.to_dict(),
            halo=model.halo(),
            path=path,
        )

    def load(self, device: str = "cpu") -> UNet:
        """Build the eval-mode model on ``device`` (uncached; use :func:`get_model`).

        Parameters
        ----------
        device : str, optional
            Torch device string. Default ``"cpu"``.

        Returns
        -------
        UNet
            The eval-mode network on ``device``.

        Raises
        ------
        RuntimeError
            If the checkpoint file changed since the ref was built (other fingerprint).
        ValueError
            If the ref has neither weights nor a checkpoint path.
        """
        if self.weights is not None:
            model = UNet(UNetConfig(**self.unet_config))
            model.load_state_dict(safetensors.torch.load(self.weights))
        elif self.path is not None:
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
    """Accept a :class:`UNet`, a :class:`ModelRef` or a checkpoint path.

    Parameters
    ----------
    model : UNet, ModelRef, str or os.PathLike
        The network, a ref (returned as is) or a checkpoint file.

    Returns
    -------
    ModelRef
        The ref (:meth:`ModelRef.from_model` or :meth:`ModelRef.from_checkpoint`).

    Raises
    ------
    TypeError
        For any other type.
    """
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


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but this worker sees no CUDA device")
    return torch.device(device)


def cpu_optimise_default() -> bool:
    """Tell whether CPU inference uses the optimised network.

    ``PAUSDENOISE_CPU_OPTIMISE`` ≠ ``0``: on by default (same results within float32
    round-off, ≈ 1.8× faster); setting the variable to ``0`` (or ``false``, ``no``,
    ``off``) in a worker's environment runs the plain eager network there.

    Returns
    -------
    bool
        ``True`` unless the variable switches the optimisation off.
    """
    return os.environ.get("PAUSDENOISE_CPU_OPTIMISE", "1").strip().lower() not in (
        "0", "false", "no", "off")


def get_model(ref: ModelRef, device: str | torch.device = "cpu", *,
              optimise: bool | None = None) -> UNet | OptimisedUNet:
    """Return the eval-mode model of ``ref`` on ``device``, loaded at most once per process.

    Thread-safe: concurrent callers wait on one lock while the first one loads, so the
    weights are read and moved to the device once. Up to 4 models are kept (LRU).

    Parameters
    ----------
    ref : ModelRef
        The model.
    device : str or torch.device, optional
        Where the model runs. Default ``"cpu"``.
    optimise : bool or None, optional
        On CPU, return the optimised inference copy
        (:func:`~pausdenoise.n2v.unet.optimise_for_inference`, built once per process and
        cached like the model). ``None``: :func:`cpu_optimise_default`. Ignored on CUDA
        (always the eager network).

    Returns
    -------
    UNet or OptimisedUNet
        The cached network (the same object on every call with the same arguments).
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
    """Report the state of this process's model cache.

    Returns
    -------
    dict
        ``{"loads": n, "hits": n, "size": n}``: models loaded and cache hits since the
        last :func:`clear_model_cache`, models held now.
    """
    with _CACHE_LOCK:
        return {**_CACHE_STATS, "size": len(_MODEL_CACHE)}


# --------------------------------------------------------------------------- threads


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_torch_threads() -> int:
    """Choose torch intra-op threads for this process so that dask × torch threads ≈ cores.

    - ``OMP_NUM_THREADS`` when set: a deliberate choice already made for this process
      (:func:`pausdenoise.cluster.set_torch_threads` exports it in workers, distributed's
      nanny exports 1 by default, the test suite sets 1); it is kept.
    - in a ``distributed`` worker otherwise: cores // the worker's threads;
    - under the threaded scheduler: cores // ``num_workers`` (dask's pool has one thread
      per core by default, giving 1).

    Returns
    -------
    int
        Number of threads, ≥ 1.
    """
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = _available_cores()
    try:
        worker = get_worker()
    except ValueError:
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
