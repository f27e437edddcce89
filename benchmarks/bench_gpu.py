"""Every GPU figure of the denoiser in one command, as a markdown section (and JSON).

Run on a GPU node (``make bench-gpu`` appends the section to ``benchmarks/RESULTS.md``)::

    python benchmarks/bench_gpu.py --append --json bench-output/gpu.json

It measures, with the project's own functions (nothing of the pipeline is reimplemented):

1. **Network only**: Mpix/s of core pixels on one (chunk + 2·halo)² block for a depth-2 /
   32-channel :class:`~pausdenoise.n2v.unet.UNet` (random weights, or ``--checkpoint``: a
   trained model, which the precision error depends on), through the denoise
   stage's per-block path: :func:`pausdenoise.denoise.get_model` of a
   :class:`~pausdenoise.denoise.ModelRef` and :func:`~pausdenoise.denoise.predict_block` with
   ``tile_size`` / ``batch_size`` / ``precision`` as the stage passes them, after
   ``_configure_process`` as in ``_denoise_block`` (so on CUDA float32 means float32, TF32
   off). Precisions float32, bfloat16, float16 (CPU: float32 and bfloat16) × tilings
   (``whole`` block, ``TILE/BATCH``); on CUDA also a ``tf32`` row (float32 with TF32
   convolutions allowed). Each configuration is warmed up at the same shape (CUDA context,
   cuDNN algorithm choice, TorchScript profiling runs) and timed best of ``--repeat`` with
   ``torch.cuda.synchronize()`` around each run on CUDA.
2. **Reduced precision vs float32** in units of the noise σ on a synthetic frame (the
   ``bench_denoise.make_store`` recipe: sky + Gaussian noise + bright Gaussian stars):
   :func:`pausdenoise.denoise.measure_precision_error` for all pixels, and RMS / p99 / max /
   mean separately for sky pixels (``|x| < 3σ`` in the normalised input) and source pixels
   (``x > 5σ``) from :func:`~pausdenoise.denoise.predict_block` runs of the same network
   (CPU bfloat16 on the trained demo model: 0.05–0.09 σ max on sky but 1–4 σ at bright-star
   pixels, hence the split; for what that does to fluxes run ``bench_precision.py`` on a
   finished run). A float32 rerun gives the run-to-run reproducibility (0 on CPU).
3. **End to end** (Zarr read → network → Zarr write, ``denoise_to_store`` on a dask cluster,
   every chunk recomputed) for 1 full CCD (4096×2048) and a multi-CCD exposure (``--ccds``,
   18 = one PAUCam exposure): a ``dask_cuda.LocalCUDACluster`` through
   :func:`pausdenoise.cluster.make_client` (kind ``cuda``, one worker per GPU) when dask-cuda
   imports and the device is CUDA; otherwise a ``distributed.SpecCluster`` of one nanny
   worker per GPU with ``CUDA_VISIBLE_DEVICES`` pinned per worker (a plain ``LocalCluster``
   gives every worker the same environment, so all of them would run on GPU 0), or 1 worker
   on CPU. Each precision runs an untimed pass over the first CCD first. Reports Mpix/s,
   seconds, the I/O share ``1 − (end-to-end Mpix/s per worker ÷ network-only Mpix/s at the
   same precision and tiling)`` and whether the throughput goal, ≥ 300 Mpix/s per GPU (an
   18-CCD exposure, 151 Mpix, in ~0.5 s), was reached.
4. **Training** patches/s on the device (``bench_train.run``), on CUDA for each of the
   trainer's autocast precisions (``train.precision``: fp32, bf16, fp16), on CPU fp32.

It also runs on CPU (``--device cpu --quick``, for tests); the section then says in its
title and first line that the figures are CPU figures. No GPU library is imported at module
level (dask-cuda only inside the cluster helper).

Examples
--------
::

    python benchmarks/bench_gpu.py                       # GPU node: full sizes, print only
    python benchmarks/bench_gpu.py --append              # ... and append to RESULTS.md
    python benchmarks/bench_gpu.py --device cpu --quick  # CPU figures, small sizes
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pausdenoise.denoise import ModelRef
    from pausdenoise.n2v.unet import UNet

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:  # run from a checkout without installing the package
    import pausdenoise  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(HERE.parent))

import bench_denoise as bd  # noqa: E402
from run_all import _load, machine_info  # noqa: E402

#: Throughput goal: Mpix/s per GPU, end to end (18 × 4096 × 2048 px in ~0.5 s).
GOAL_MPIX_S_PER_GPU = 300.0
#: Normalised-input cuts (σ above the sky) of the sky and source pixel sets.
SKY_CUT, SOURCE_CUT = 3.0, 5.0


# ----------------------------------------------------------------------------- arguments


def parse_tiling(text: str) -> tuple[int | None, int]:
    """``"whole"`` → ``(None, 1)`` (one forward per block); ``"512/16"`` → ``(512, 16)``
    (sub-tiles of 512 px core, 16 per forward)."""
    if text == "whole":
        return None, 1
    try:
        tile, batch = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"tiling {text!r}: expected 'whole' or TILE/BATCH, e.g. 512/16") from None
    if tile < 1 or batch < 1:
        raise argparse.ArgumentTypeError(f"tiling {text!r}: sizes must be >= 1")
    return tile, batch


def tiling_label(tile: int | None, batch: int) -> str:
    """Inverse of :func:`parse_tiling`."""
    return "whole" if tile is None else f"{tile}/{batch}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="auto: cuda when torch sees a GPU, else cpu (CPU figures)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes: 2 CCDs, 2048x2048 error frame, 2 tilings, short training")
    p.add_argument("--append", action="store_true", help="append the section to --results")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["network", "error", "e2e", "train"])
    p.add_argument("--depth", type=int, default=2, help="U-Net depth (random weights)")
    p.add_argument("--channels", type=int, default=32,
                   help="U-Net base channels (random weights)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a trained model (safetensors checkpoint) instead of random weights; "
                   "the precision error depends on the weights")
    p.add_argument("--chunk", type=int, default=1024,
                   help="store chunk = network block core (px); block = chunk + 2*halo")
    p.add_argument("--ny", type=int, default=4096, help="CCD rows (PAUCam: 4096)")
    p.add_argument("--nx", type=int, default=2048, help="CCD columns (PAUCam: 2048)")
    p.add_argument("--ccds", type=int, default=None,
                   help="CCDs of the multi-CCD exposure (default 18; 2 with --quick)")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs (= dask workers) end to end (default: all torch sees)")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="dask threads per worker to run end to end (default: 1 4 on CUDA, "
                   "1 on CPU)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch threads, in this process and per worker (default: cores, "
                   "divided by workers x threads end to end)")
    p.add_argument("--precisions", nargs="+", default=None,
                   choices=["float32", "bfloat16", "float16"],
                   help="default: all three on CUDA, float32 bfloat16 on CPU")
    p.add_argument("--no-tf32", action="store_true", help="CUDA: skip the tf32 rows")
    p.add_argument("--tilings", type=parse_tiling, nargs="+", default=None,
                   help="'whole' and/or TILE/BATCH (default: whole 512/4 512/16 256/16; "
                   "--quick: whole 256/16)")
    p.add_argument("--e2e-precisions", nargs="+", default=None,
                   choices=["float32", "bfloat16", "float16"],
                   help="end-to-end precisions (default: the swept ones on CUDA, float32 "
                   "on CPU)")
    p.add_argument("--e2e-tiling", default="best",
                   help="'best' (fastest network-only tiling of each precision), 'whole' "
                   "or TILE/BATCH")
    p.add_argument("--error-shape", type=int, nargs=2, default=None, metavar=("NY", "NX"),
                   help="frame for the precision error (default: the CCD; 2048 2048 with "
                   "--quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per configuration")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed runs, best kept (default 3; 2 with --quick)")
    p.add_argument("--e2e-repeat", type=int, default=None,
                   help="timed end-to-end runs, best kept (default --repeat; 1 with --quick)")
    p.add_argument("--train-batch", type=int, default=None, help="default 128 (quick 16)")
    p.add_argument("--train-patch", type=int, default=64)
    p.add_argument("--train-epochs", type=int, default=None, help="default 3 (quick 2)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="steps per epoch (default 20; quick 4)")
    p.add_argument("--store", type=Path, default=None,
                   help="folder for the temporary store (default: a temp dir, removed)")
    a = p.parse_args(argv)
    q = a.quick
    a.ccds = a.ccds or (2 if q else 18)
    a.repeat = a.repeat or (2 if q else 3)
    a.e2e_repeat = a.e2e_repeat or (1 if q else a.repeat)
    a.train_batch = a.train_batch or (16 if q else 128)
    a.train_epochs = a.train_epochs or (2 if q else 3)
    a.train_steps = a.train_steps or (4 if q else 20)
    a.tilings = a.tilings or [parse_tiling(t) for t in (
        ["whole", "256/16"] if q else ["whole", "512/4", "512/16", "256/16"])]
    if a.error_shape is None:
        a.error_shape = [min(2048, a.ny), min(2048, a.nx)] if q else [a.ny, a.nx]
    if a.e2e_tiling != "best":
        a.e2e_tiling = parse_tiling(a.e2e_tiling)
        if a.e2e_tiling not in a.tilings:  # the I/O share needs its network-only rate
            a.tilings.append(a.e2e_tiling)
    return a


# ----------------------------------------------------------------------------- machine


def gpu_info() -> list[dict]:
    """Name, memory (GiB), compute capability and driver of each GPU torch sees."""
    import torch

    if not torch.cuda.is_available():
        return []
    driver = _driver_version()
    out = []
    for i in range(torch.cuda.device_count()):
        prop = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": prop.name,
                    "memory_gib": round(prop.total_memory / 2**30, 1),
                    "capability": f"{prop.major}.{prop.minor}",
                    "multiprocessors": prop.multi_processor_count, "driver": driver})
    return out


def _driver_version() -> str:
    """NVIDIA driver version (pynvml, else nvidia-smi), or 'unknown'."""
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        pass
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20, check=True)
        return r.stdout.strip().splitlines()[0]
    except Exception:
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of torch (with its CUDA / cuDNN build) and of the data stack."""
    from importlib import metadata

    import torch

    out = {}
    for name in ("torch", "numpy", "dask", "distributed", "zarr", "numcodecs", "dask-cuda"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["torch_cuda"] = str(torch.version.cuda)  # None for a CPU build
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out["cudnn"] = str(cudnn)
    return out


# ----------------------------------------------------------------------------- helpers


def _sync(dev: torch.device) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def best_time(fn: Callable[[], object], dev: torch.device, warmup: int, repeat: int) -> float:
    """Best wall time (s) of ``repeat`` calls after ``warmup`` untimed ones, with the
    device synchronised before and after each timed call."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(repeat):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return best


def _stage_config(device: str, precision: str, torch_threads: int, tile: int | None = None,
                  batch: int = 4) -> Any:
    """The :class:`DenoiseConfig` the stage would run with (``tf32`` → float32)."""
    from pausdenoise.denoise import DenoiseConfig

    return DenoiseConfig(device=device, precision="float32" if precision == "tf32" else precision,
                         torch_threads=torch_threads, tile_size=tile, batch_size=batch)


# ----------------------------------------------------------------------------- 1. network


def network_only(ref: ModelRef, dev: torch.device, chunk: int, precisions: list[str],
                 tilings: list[tuple[int | None, int]], torch_threads: int, warmup: int,
                 repeat: int) -> list[dict]:
    """Network-only rate of the stage's per-block path on one (chunk + 2·halo)² block.

    Parameters
    ----------
    ref : ModelRef
        The network (resolved with :func:`get_model`, as in a worker).
    dev : torch.device
    chunk : int
        Core side (px) of the block; the block is ``chunk + 2 * halo`` px square.
    precisions : list of str
        ``float32``, ``bfloat16``, ``float16`` or ``tf32`` (float32 with TF32 allowed).
    tilings : list of (tile_size or None, batch_size)
    torch_threads : int
        Torch intra-op threads (``DenoiseConfig.torch_threads``).
    warmup, repeat : int
        Untimed runs, then timed runs (best kept) per configuration.

    Returns
    -------
    list of dict
        One per (precision, tiling): ``seconds`` (best, s), ``mpix_per_s`` (core Mpix/s),
        ``peak_gpu_gib`` (CUDA: peak allocated GiB in the timed runs, else None).
    """
    import numpy as np
    import torch

    from pausdenoise import denoise as dn

    halo = ref.halo
    side = chunk + 2 * halo
    x = np.random.default_rng(0).standard_normal((side, side)).astype(np.float32)
    rows = []
    for prec in precisions:
        for tile, batch in tilings:
            cfg = _stage_config(dev.type, prec, torch_threads, tile, batch)
            dn.model._configure_process(cfg, dev)  # as _denoise_block: threads, TF32 off (fp32)
            model = dn.get_model(ref, dev)
            eff = dn.precision._effective_precision(cfg, dev)
            with dn.tf32_mode(dev, prec == "tf32"):
                def run(model=model, cfg=cfg, eff=eff) -> np.ndarray:
                    return dn.predict_block(model, x, halo=halo, tile_size=cfg.tile_size,
                                            batch_size=cfg.batch_size, precision=eff,
                                            prior_scale=cfg.prior_scale)

                for _ in range(warmup):
                    run()
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                secs = best_time(run, dev, 0, repeat)
                peak = (torch.cuda.max_memory_allocated(dev) / 2**30
                        if dev.type == "cuda" else None)
            rows.append({"precision": prec, "tiling": tiling_label(tile, batch),
                         "tile_size": tile, "batch_size": batch, "block": side, "core": chunk,
                         "halo": halo, "seconds": secs, "mpix_per_s": chunk**2 / 1e6 / secs,
                         "peak_gpu_gib": peak, "torch_threads": torch.get_num_threads(),
                         "backend": getattr(model, "backend", "eager")})
            print(f"network {prec:>8} {rows[-1]['tiling']:>7}: {secs:.4f} s = "
                  f"{rows[-1]['mpix_per_s']:,.2f} Mpix/s", flush=True)
    return rows


# ----------------------------------------------------------------------------- 2. error


def _error_stats(d: np.ndarray) -> dict:
    import numpy as np

    a = np.abs(d)
    return {"n": int(d.size), "rms_sigma": float(np.sqrt(np.mean(d**2))),
            "p99_abs_sigma": float(np.percentile(a, 99)), "max_abs_sigma": float(a.max()),
            "mean_sigma": float(np.mean(d))}


def precision_errors(model: UNet, ref: ModelRef, dev: torch.device, image: np.ndarray,
                     precisions: list[str], torch_threads: int) -> list[dict]:
    """Error of each precision against float32, in σ, for all, sky and source pixels.

    Parameters
    ----------
    model : UNet
        The network of ``ref`` (eager), for :func:`measure_precision_error`.
    ref : ModelRef
    dev : torch.device
    image : numpy.ndarray
        Frame in ADU (no mask).
    precisions : list of str
        ``float32`` (a rerun: reproducibility), ``bfloat16``, ``float16``, ``tf32``.
    torch_threads : int

    Returns
    -------
    list of dict
        Per precision and pixel set (``all``, ``sky``: ``|x| < 3``, ``source``: ``x > 5`` in
        the normalised input ``x``, i.e. σ above the sky): ``rms_sigma``, ``p99_abs_sigma``,
        ``max_abs_sigma``, ``mean_sigma`` (σ), ``n`` (pixels), ``from`` (which function
        produced the numbers). For bfloat16/float16 the ``all`` row is
        :func:`measure_precision_error`'s own output.
    """
    import numpy as np

    from pausdenoise import denoise as dn
    from pausdenoise.n2v.normalise import frame_statistics, normalise

    stats = frame_statistics(image)
    x = normalise(image, stats, None)
    sets = {"sky": np.abs(x) < SKY_CUT, "source": x > SOURCE_CUT}
    halo = ref.halo

    def run(prec: str) -> np.ndarray:
        cfg = _stage_config(dev.type, prec, torch_threads)
        dn.model._configure_process(cfg, dev)
        with dn.tf32_mode(dev, prec == "tf32"):
            return dn.predict_block(dn.get_model(ref, dev), x, halo=halo,
                                    precision="float32" if prec == "tf32" else prec)

    reference = run("float32").astype(np.float64)
    rows = []
    for prec in precisions:
        d = run(prec).astype(np.float64) - reference
        if prec in ("bfloat16", "float16"):
            dn.model._configure_process(_stage_config(dev.type, "float32", torch_threads), dev)
            r = dn.measure_precision_error(model, image, stats, precision=prec,
                                           device=dev.type)
            rows.append({"precision": prec, "pixels": "all", "n": int(image.size),
                         **{k: r[k] for k in ("rms_sigma", "p99_abs_sigma", "max_abs_sigma",
                                              "mean_sigma")},
                         "from": "measure_precision_error"})
        else:
            rows.append({"precision": prec, "pixels": "all", **_error_stats(d.ravel()),
                         "from": "predict_block"})
        for name, sel in sets.items():
            rows.append({"precision": prec, "pixels": name, **_error_stats(d[sel]),
                         "from": "predict_block"})
        r0 = rows[-3:]
        print("error " + prec + ": " + "; ".join(
            f"{r['pixels']} rms {r['rms_sigma']:.2e} max {r['max_abs_sigma']:.2e}" for r in r0),
            flush=True)
    return rows


# ----------------------------------------------------------------------------- 3. end to end


def _workers_env_cluster(n_workers: int, threads: int, torch_threads: int,
                         gpu_ids: list[str] | None) -> Any:
    """A SpecCluster of ``n_workers`` nanny workers, worker ``i`` pinned to ``gpu_ids[i]``."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {}
    for i in range(n_workers):
        env = {"OMP_NUM_THREADS": str(torch_threads)}
        if gpu_ids is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu_ids[i]
        workers[f"w{i}"] = {"cls": Nanny, "options": {"nthreads": threads, "memory_limit": 0,
                                                      "env": env, "host": "127.0.0.1"}}
    scheduler = {"cls": Scheduler, "options": {"dashboard": False, "host": "127.0.0.1"}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40)


@contextlib.contextmanager
def bench_cluster(device: str, n_gpus: int, threads: int,
                  torch_threads: int) -> Iterator[tuple[Any, str]]:
    """Yield ``(client, description)`` of the end-to-end cluster (module docstring, 3.)."""
    from distributed import Client

    if device == "cuda":
        try:
            import dask_cuda  # noqa: F401
        except Exception as exc:  # not installed, or pynvml missing
            why = f"dask-cuda not importable: {type(exc).__name__}: {exc}"
        else:
            from pausdenoise.cluster import ClusterConfig, make_client

            cfg = ClusterConfig(kind="cuda", n_workers=n_gpus, threads_per_worker=threads,
                                torch_threads=torch_threads, dashboard_address=None)
            with make_client(cfg, quiet=True) as client:
                client.wait_for_workers(n_gpus)
                yield client, f"dask_cuda.LocalCUDACluster ({n_gpus} worker(s), 1 per GPU)"
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = ([d.strip() for d in visible.split(",") if d.strip()] if visible
               else [str(i) for i in range(n_gpus)])[:n_gpus]
        desc = (f"distributed.SpecCluster ({n_gpus} nanny worker(s), CUDA_VISIBLE_DEVICES "
                f"{','.join(ids)} one each; {why})")
    else:
        ids, desc = None, f"distributed.SpecCluster ({n_gpus} CPU nanny worker(s))"
    from pausdenoise.cluster import worker_malloc_env

    # glibc's adaptive malloc thresholds in the workers, as the pipeline's own clusters
    with (worker_malloc_env(None),
          _workers_env_cluster(n_gpus, threads, torch_threads, ids) as cluster,
          Client(cluster) as client):
        client.wait_for_workers(n_gpus)
        yield client, desc


def _gpu_peak_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def end_to_end(path: Path, frames: list[str], stats: dict, ref: ModelRef, device: str,
               n_gpus: int, threads: int, precisions: list[str],
               tiling_of: dict[str, tuple[int | None, int]], torch_threads: int,
               repeat: int, shape: tuple[int, int]) -> list[dict]:
    """End-to-end rate of ``denoise_to_store`` (every chunk recomputed) on one cluster.

    For each precision: load the model in every worker (``bench_denoise._warm``), one
    untimed pass over the first CCD, then best of ``repeat`` over the first CCD and over
    all of ``frames``. Graphs are built (store arrays created) outside the timing.

    Returns
    -------
    list of dict
        ``ccds``, ``mpix``, ``seconds`` (best, s), ``mpix_per_s``, ``mpix_per_s_per_worker``,
        ``precision``, ``tiling``, ``workers``, ``threads``, ``cluster``, ``peak_gpu_gib``
        (largest per-worker peak allocated GiB on CUDA, else None).
    """
    import dask

    from pausdenoise import denoise as dn

    rows = []
    counts = sorted({1, len(frames)})
    tt = max(1, torch_threads // threads)
    with bench_cluster(device, n_gpus, threads, tt) as (client, desc):
        for prec in precisions:
            tile, batch = tiling_of[prec]
            cfg = _stage_config(device, prec, tt, tile, batch)
            client.run(bd._warm, ref, cfg)

            def once(subset: list[str], cfg: Any = cfg) -> float:
                graphs = [bd.denoise_to_store_force(dn, path, f, ref, cfg, stats[f])
                          for f in subset]
                t0 = time.perf_counter()
                written = dask.compute(*graphs)
                secs = time.perf_counter() - t0
                assert sum(written) > 0, "no chunk was written"
                return secs

            once(frames[:1])  # warm-up pass (CUDA context, cuDNN, TorchScript profiling)
            for n in counts:
                client.run(_gpu_peak_reset)
                secs = min(once(frames[:n]) for _ in range(repeat))
                peaks = [v for v in client.run(_gpu_peak_gib).values() if v is not None]
                mpix = n * shape[0] * shape[1] / 1e6
                rows.append({"ccds": n, "mpix": mpix, "seconds": secs,
                             "mpix_per_s": mpix / secs,
                             "mpix_per_s_per_worker": mpix / secs / n_gpus,
                             "precision": prec, "tiling": tiling_label(tile, batch),
                             "workers": n_gpus, "threads": threads, "torch_threads": tt,
                             "cluster": desc, "peak_gpu_gib": max(peaks) if peaks else None})
                print(f"e2e {n} CCD(s) {prec} {rows[-1]['tiling']} {n_gpus}x{threads} thr: "
                      f"{secs:.2f} s = {rows[-1]['mpix_per_s']:,.2f} Mpix/s", flush=True)
    return rows


# ----------------------------------------------------------------------------- report


def _f(v: Any, fmt: str = "{:,.3g}") -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return fmt.format(v)


def render(res: dict) -> str:
    """The markdown section (title, machine, tables, raw JSON)."""
    cpu = res["device"] == "cpu"
    failed = res.get("failed", {})
    when = res["started"]
    title = (f"## bench_gpu {when}{' (quick)' if res['quick'] else ''}"
             f"{' — CPU figures, not GPU' if cpu else ''}")
    lines = [title, ""]
    if cpu:
        lines += ["**CPU figures: these were measured with `--device cpu` (no GPU was used); "
                  "they are not GPU figures.**", ""]
    m, v = res["machine"], res["versions"]
    gpus = res["gpus"]
    gpu_txt = ("; ".join(f"GPU {g['index']}: {g['name']}, {g['memory_gib']} GiB, compute "
                         f"capability {g['capability']}, {g['multiprocessors']} SMs"
                         for g in gpus) or "none visible to torch")
    drv = gpus[0]["driver"] if gpus else "–"
    hdr = [
        f"machine: {m['nproc']} CPU cores ({m['cpu_model']}), {m['memory_gb']} GiB, "
        f"{m['platform']}, Python {m['python']}",
        f"GPUs: {gpu_txt}; driver {drv}; torch built with CUDA {v['torch_cuda']}, "
        f"cuDNN {v['cudnn']}",
        "versions: " + ", ".join(f"{k} {v[k]}" for k in
                                 ("torch", "numpy", "dask", "distributed", "zarr",
                                  "numcodecs", "dask-cuda")),
        f"device: **{res['device']}**; model: U-Net depth {res['model']['depth']} / "
        f"{res['model']['channels']} channels, {res['model']['params_k']:.0f} k parameters "
        f"(weights: {res['model']['weights']}), halo {res['model']['halo']} px",
        f"load average (1, 5, 15 min): {res['load_start']} at start, {res['load_end']} at end; "
        f"took {res['seconds'] / 60:.1f} min",
        f"command: `{res['command']}`",
    ]
    lines += ["  \n".join(hdr), ""]
    if "network" in res:
        n0 = res["network"][0]
        lines += [f"### Network only: one {n0['block']}² block ({n0['core']}² core), "
                  f"`get_model` + `predict_block`, best of {res['sizes']['repeat']} after "
                  f"{res['sizes']['warmup']} warm-up(s), {n0['torch_threads']} torch "
                  "thread(s)", "",
                  "| precision | tiling (tile/batch) | seconds | Mpix/s (core) | "
                  "peak GPU memory GiB | model |", "|---|---|---:|---:|---:|---|"]
        for r in res["network"]:
            lines.append(f"| {r['precision']} | {r['tiling']} | {r['seconds']:.4f} | "
                         f"{r['mpix_per_s']:,.3g} | {_f(r['peak_gpu_gib'], '{:.2f}')} | "
                         f"{r['backend']} |")
        lines.append("")
    elif "network" in failed:
        lines += [f"### Network only: failed ({failed['network']})", ""]
    if "precision_error" in res:
        ny, nx = res["sizes"]["error_shape"]
        lines += [f"### Precision error vs float32, in units of the noise σ ({ny}×{nx} "
                  "synthetic frame, whole-frame `predict_block`)", "",
                  f"sky: \\|x\\| < {SKY_CUT:g} σ; source: x > {SOURCE_CUT:g} σ above the sky "
                  "(normalised input); float32 = a second float32 run (reproducibility); "
                  "tf32 = float32 with TF32 convolutions allowed (CUDA only; the stage "
                  "switches TF32 off).", "",
                  "| precision | pixels | n | RMS | p99 \\|Δ\\| | max \\|Δ\\| | mean | from |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in res["precision_error"]:
            lines.append(f"| {r['precision']} | {r['pixels']} | {r['n']:,} | "
                         f"{r['rms_sigma']:.2g} | {r['p99_abs_sigma']:.2g} | "
                         f"{r['max_abs_sigma']:.2g} | {r['mean_sigma']:.2g} | {r['from']} |")
        lines.append("")
    elif "precision_error" in failed:
        lines += [f"### Precision error: failed ({failed['precision_error']})", ""]
    if "e2e" in res:
        lines += ["### End to end: Zarr read → network → Zarr write (`denoise_to_store`, "
                  f"{res['sizes']['chunk']}² chunks, every chunk recomputed, best of "
                  f"{res['sizes']['e2e_repeat']} after one untimed pass over the first CCD)",
                  "",
                  f"cluster: {res['e2e'][0]['cluster'] if res['e2e'] else '–'}. I/O share = "
                  "1 − (Mpix/s per worker ÷ network-only Mpix/s, same precision and "
                  "tiling): the share of time outside the network (Zarr read/decompress, "
                  "normalisation, halo exchange, scheduling, Zarr write). "
                  f"Throughput goal: ≥ {GOAL_MPIX_S_PER_GPU:g} Mpix/s per GPU (an 18-CCD "
                  "PAUCam exposure, 151 Mpix, in ~0.5 s).", "",
                  "| CCDs | Mpix | precision | tiling | workers × threads | seconds | "
                  "Mpix/s | Mpix/s per worker | network-only Mpix/s | I/O share | "
                  "peak GPU GiB/worker | ≥ 300 Mpix/s per GPU |",
                  "|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in res["e2e"]:
            goal = "n/a (CPU)" if cpu else ("**yes**" if r["goal_reached"] else "no")
            lines.append(f"| {r['ccds']} | {r['mpix']:.1f} | {r['precision']} | {r['tiling']} | "
                         f"{r['workers']} × {r['threads']} | {r['seconds']:.3g} | "
                         f"{r['mpix_per_s']:,.3g} | {r['mpix_per_s_per_worker']:,.3g} | "
                         f"{_f(r['network_mpix_per_s'])} | {_f(r['io_share'], '{:.2f}')} | "
                         f"{_f(r['peak_gpu_gib'], '{:.2f}')} | {goal} |")
        lines.append("")
    elif "e2e" in failed:
        lines += [f"### End to end: failed ({failed['e2e']})", ""]
    if "train" in res:
        lines += ["### Training (`bench_train.run`: store sampling, masking, forward, backward, "
                  "Adam; mean patches/s of the epochs after the first)", "",
                  "On CUDA the trainer's autocast precisions fp32 / bf16 / fp16 "
                  "(`train.precision`; fp16 with a gradient scaler); on CPU fp32 only.", "",
                  "| precision | device | patch² × batch | steps | torch threads | patches/s | "
                  "seconds |", "|---|---|---|---:|---:|---:|---:|"]
        for r in res["train"]:
            lines.append(f"| {r.get('precision', 'fp32')} | {r['device']} | "
                         f"{r['patch']}² × {r['batch']} | "
                         f"{r['steps']} | {r['threads']} | {r['patches_per_s']:,.1f} | "
                         f"{r['seconds']:.1f} |")
        lines.append("")
    elif "train" in failed:
        lines += [f"### Training: failed ({failed['train']})", ""]
    keep = {k: v for k, v in res.items() if k not in {"machine", "versions", "gpus"}}
    lines += ["<details><summary>raw numbers (JSON)</summary>", "", "```json",
              json.dumps(keep, indent=1, default=str), "```", "</details>"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _section(res: dict, key: str, fn: Callable[[], Any]) -> None:
    """Run one measurement; on failure record the error and carry on with the others."""
    try:
        res[key] = fn()
    except Exception as exc:
        traceback.print_exc()
        res.setdefault("failed", {})[key] = f"{type(exc).__name__}: {exc}"


def _resolve(args: argparse.Namespace) -> str:
    import torch

    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: --device cuda but torch sees no CUDA device "
                         f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    return args.device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from pausdenoise import denoise as dn
    from pausdenoise import store
    from pausdenoise.n2v.normalise import frame_statistics
    from pausdenoise.n2v.unet import UNet, UNetConfig

    device = _resolve(args)
    dev = torch.device(device)
    cuda = device == "cuda"
    cores = bd._cores()
    torch_threads = args.torch_threads or cores
    precisions = args.precisions or (["float32", "bfloat16", "float16"] if cuda
                                     else ["float32", "bfloat16"])
    if not cuda and "float16" in precisions:
        print("bench_gpu: float16 needs CUDA; left out on CPU", file=sys.stderr)
        precisions = [p for p in precisions if p != "float16"]
    swept = precisions + (["tf32"] if cuda and not args.no_tf32 and "float32" in precisions
                          else [])
    e2e_precisions = args.e2e_precisions or (precisions if cuda else ["float32"])
    e2e_precisions = [p for p in e2e_precisions if cuda or p != "float16"]
    n_gpus = (args.gpus or torch.cuda.device_count()) if cuda else 1
    threads_list = args.threads or ([1, 4] if cuda else [1])

    cmd = "python " + " ".join(shlex.quote(a) for a in [
        "benchmarks/bench_gpu.py", *(argv if argv is not None else sys.argv[1:])])
    started = _dt.datetime.now().astimezone()
    res: dict[str, Any] = {
        "device": device, "quick": args.quick, "command": cmd,
        "started": f"{started:%Y-%m-%d %H:%M %Z}", "machine": machine_info(),
        "gpus": gpu_info(), "versions": versions(), "load_start": _load(),
        "sizes": {"chunk": args.chunk, "ccd": [args.ny, args.nx], "ccds": args.ccds,
                  "error_shape": list(args.error_shape), "warmup": args.warmup,
                  "repeat": args.repeat, "e2e_repeat": args.e2e_repeat, "gpus": n_gpus,
                  "threads": threads_list, "torch_threads": torch_threads},
    }
    if not cuda:
        res["note"] = "CPU figures: measured with --device cpu, no GPU used"
    print(f"# bench_gpu {res['started']}: device {device}"
          f"{' (CPU FIGURES, NOT GPU)' if not cuda else ''}, {cores} cores, "
          f"GPUs {[g['name'] for g in res['gpus']]}", flush=True)
    t_all = time.perf_counter()
    old_threads = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_", dir=args.store))
    try:
        if args.checkpoint is not None:  # workers load it from the path, as in production
            ref = dn.ModelRef.from_checkpoint(args.checkpoint)
            model = ref.load("cpu")
        else:
            torch.manual_seed(0)
            model = UNet(UNetConfig(depth=args.depth, base_channels=args.channels)).eval()
            ref = dn.ModelRef.from_model(model)
        depth, channels = model.config.depth, model.config.base_channels
        res["model"] = {"depth": depth, "channels": channels, "halo": ref.halo,
                        "params_k": sum(p.numel() for p in model.parameters()) / 1e3,
                        "weights": str(args.checkpoint) if args.checkpoint else "random"}

        path = tmp / "survey.zarr"
        frames, stats = [], {}
        if {"error", "e2e"} - set(args.skip):
            n_store = args.ccds if "e2e" not in args.skip else 1
            t0 = time.perf_counter()
            frames = bd.make_store(path, n_store, args.ny, args.nx, args.chunk)
            for f in frames:  # whole-frame statistics, once per frame (not timed)
                stats[f] = frame_statistics(store.open_frame(path, f, "image").compute())
            print(f"# store: {len(frames)} frame(s) of {args.ny}x{args.nx}, {args.chunk}^2 "
                  f"chunks, in {time.perf_counter() - t0:.1f} s", flush=True)

        with dn.tf32_mode(dev, False):
            if "network" not in args.skip:
                _section(res, "network", lambda: network_only(
                    ref, dev, args.chunk, swept, args.tilings, torch_threads, args.warmup,
                    args.repeat))
            if "error" not in args.skip:
                ey, ex = args.error_shape
                image = store.open_frame(path, frames[0], "image")[:ey, :ex].compute()
                res["sizes"]["error_shape"] = list(image.shape)
                _section(res, "precision_error", lambda: precision_errors(
                    model, ref, dev, np.asarray(image), ["float32", *[p for p in swept
                                                                       if p != "float32"]],
                    torch_threads))
        if "e2e" not in args.skip:
            net = {(r["precision"], r["tiling"]): r["mpix_per_s"] for r in res.get("network", [])}
            tiling_of = {}
            for p in e2e_precisions:
                if args.e2e_tiling == "best":
                    cand = [(rate, t) for (pp, t), rate in net.items() if pp == p]
                    best = max(cand)[1] if cand else "whole"
                    tiling_of[p] = parse_tiling(best)
                else:
                    tiling_of[p] = args.e2e_tiling

            def e2e() -> list[dict]:
                rows = []
                for threads in threads_list:
                    rows += end_to_end(path, frames, stats, ref, device, n_gpus, threads,
                                       e2e_precisions, tiling_of, torch_threads,
                                       args.e2e_repeat, (args.ny, args.nx))
                for r in rows:
                    rate = net.get((r["precision"], r["tiling"]))
                    r["network_mpix_per_s"] = rate
                    r["io_share"] = 1 - r["mpix_per_s_per_worker"] / rate if rate else None
                    r["goal_reached"] = bool(cuda and r["mpix_per_s_per_worker"]
                                             >= GOAL_MPIX_S_PER_GPU)
                return rows

            _section(res, "e2e", e2e)
        if "train" not in args.skip:
            import bench_train

            # the trainer's autocast precisions apply on CUDA only
            train_precisions = ("fp32", "bf16", "fp16") if cuda else ("fp32",)
            _section(res, "train", lambda: [row for prec in train_precisions
                                            for row in bench_train.run(
                threads=(torch_threads,), depth=depth, channels=channels,
                patch=args.train_patch, batch=args.train_batch, epochs=args.train_epochs,
                steps=args.train_steps, ny=min(1024, args.ny), nx=min(1024, args.nx),
                chunk=min(512, args.chunk), device=device, tmpdir=tmp, precision=prec)])
    finally:
        torch.set_num_threads(old_threads)
        dn.model._THREADS_SET.clear()  # this process's torch threads were restored
        shutil.rmtree(tmp, ignore_errors=True)
    res["load_end"] = _load()
    res["seconds"] = time.perf_counter() - t_all

    text = render(res)
    print()
    print(text)
    failed = list(res.get("failed", {}))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str))
    if args.append:
        if failed:
            print(f"not appended to {args.results}: {', '.join(failed)}", file=sys.stderr)
        else:
            with open(args.results, "a") as fh:
                fh.write("\n" + text + "\n")
            print(f"appended to {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
