"""End-to-end throughput of the denoise stage: zarr read → U-Net → zarr write.

Builds a temporary survey store of synthetic PAUCam-sized CCD frames (4096 × 2048 by
default), saves a randomly initialised U-Net as a checkpoint (workers load it from the
path, as in production), then for each worker count starts a ``distributed.LocalCluster``
(processes), loads the model in every worker (timed separately), and times
``dask.compute(*[denoise_to_store(...) for each frame])``. Prints one table row per run:
megapixels per second, seconds, and the peak resident memory of the workers.

Examples
--------
Quick run for a small machine (1 CCD, 1 and 2 workers, depth-2 / 32-channel net)::

    python benchmarks/bench_denoise.py --quick

A multi-CCD exposure (the 8 narrow-band CCDs) on a 16-core node::

    python benchmarks/bench_denoise.py --ccds 8 --workers 1 2 4 8 --threads 2 --chunk 1024

The catalogue restoration (``denoise.restore_catalogue``) beside the plain denoise, both in
the same run, 2,000 catalogue apertures per CCD (about the PAUS catalogue's I < 23 density
on a 4096 × 2048 CCD)::

    python benchmarks/bench_denoise.py --quick --restore 2000

GPU workers (requires a CUDA device; one worker per GPU)::

    python benchmarks/bench_denoise.py --device cuda --workers 1 --tile-size 512 \\
        --batch-size 4 --precision bfloat16

No GPU library is imported at module level; ``--device cuda`` only selects the torch device
inside the workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:  # run from a checkout without installing the package
    import pausdenoise  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1 CCD, 1 and 2 workers, 1 thread each (for a 2-core machine)")
    p.add_argument("--ccds", type=int, default=8, help="CCD frames in the exposure")
    p.add_argument("--ny", type=int, default=4096, help="frame rows (PAUCam: 4096)")
    p.add_argument("--nx", type=int, default=2048, help="frame columns (PAUCam: 2048)")
    p.add_argument("--chunk", type=int, default=1024, help="square chunk size (px)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4],
                   help="worker-process counts to run")
    p.add_argument("--threads", type=int, default=1, help="dask threads per worker")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch threads per task (default: cores // (workers x threads))")
    p.add_argument("--depth", type=int, default=2, help="U-Net depth")
    p.add_argument("--channels", type=int, default=32, help="U-Net base channels")
    p.add_argument("--n2v2", action="store_true", help="N2V2 variant")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    p.add_argument("--precision", choices=["float32", "bfloat16", "float16"],
                   default="float32")
    p.add_argument("--tile-size", type=int, default=None, help="sub-tile size inside blocks")
    p.add_argument("--batch-size", type=int, default=4, help="sub-tiles per forward")
    p.add_argument("--malloc-trim-threshold", type=int, default=None,
                   help="MALLOC_TRIM_THRESHOLD_ of the workers (bytes); default unset, as the "
                        "pipeline's clusters (distributed's own default is 65536)")
    p.add_argument("--restore", type=int, default=0, metavar="N",
                   help="also run each worker count with denoise.restore_catalogue on and N "
                        "random catalogue apertures per frame (semi-axes 2-6 px); 0: off only")
    p.add_argument("--store", type=Path, default=None,
                   help="folder for the temporary store (default: a temp dir, removed)")
    args = p.parse_args(argv)
    if args.quick:
        args.ccds, args.workers, args.threads = 1, [1, 2], 1
    return args


def make_store(path: Path, n_ccds: int, ny: int, nx: int, chunk: int) -> list[str]:
    """Synthetic frames: sky + Gaussian noise + a few hundred Gaussian stars."""
    import numpy as np

    from pausdenoise import store

    store.init_store(path, overwrite=True)
    frames = []
    rng = np.random.default_rng(0)
    for ccd in range(1, n_ccds + 1):
        img = (300.0 + 15.0 * rng.standard_normal((ny, nx))).astype(np.float32)
        for _ in range(300):
            y, x = rng.integers(8, ny - 8), rng.integers(8, nx - 8)
            yy, xx = np.mgrid[-6:7, -6:7]
            img[y - 6:y + 7, x - 6:x + 7] += rng.uniform(50, 5000) * np.exp(
                -(yy**2 + xx**2) / 5.0
            ).astype(np.float32)
        mask = np.zeros((ny, nx), np.uint8)
        frame = store.frame_id(1, ccd)
        store.write_frame(path, frame, {"image": img, "mask": mask}, {"band": "NB455"},
                          chunks=(chunk, chunk))
        frames.append(frame)
    return frames


def random_apertures(n: int, ny: int, nx: int, seed: int):
    """``n`` catalogue apertures spread over a frame (0-based px, px, radians).

    Returns
    -------
    pandas.DataFrame
        :data:`pausdenoise.denoise.restore.GEOMETRY_COLUMNS`.
    """
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    a = rng.uniform(2.0, 6.0, n)
    return pd.DataFrame({"x": rng.uniform(0, nx - 1, n), "y": rng.uniform(0, ny - 1, n),
                         "a": a, "b": a * rng.uniform(0.4, 1.0, n),
                         "theta": rng.uniform(0, np.pi, n)})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import dask
    import distributed
    import numpy as np
    import torch

    from pausdenoise import denoise as dn
    from pausdenoise import store
    from pausdenoise.cluster import worker_malloc_env
    from pausdenoise.n2v.normalise import frame_statistics
    from pausdenoise.n2v.unet import UNet, UNetConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench_denoise_", dir=args.store))
    try:
        t0 = time.perf_counter()
        frames = make_store(tmp / "survey.zarr", args.ccds, args.ny, args.nx, args.chunk)
        path = tmp / "survey.zarr"
        stats = {}
        for f in frames:  # whole-frame statistics, once per frame (not part of the timing)
            img = store.open_frame(path, f, "image").compute()
            stats[f] = frame_statistics(img)
        print(f"# store: {len(frames)} frame(s) of {args.ny}x{args.nx} in {args.chunk}^2 "
              f"chunks written in {time.perf_counter() - t0:.1f} s", flush=True)

        torch.manual_seed(0)
        model = UNet(UNetConfig(depth=args.depth, base_channels=args.channels,
                                n2v2=args.n2v2)).eval()
        try:
            from pausdenoise.n2v.checkpoint import save_checkpoint

            ckpt = tmp / "model.safetensors"
            save_checkpoint(ckpt, model)
            ref = dn.ModelRef.from_checkpoint(ckpt)
        except ImportError:
            ref = dn.ModelRef.from_model(model)
        n_params = sum(p.numel() for p in model.parameters())
        mpix = len(frames) * args.ny * args.nx / 1e6
        cores = _cores()
        print(f"# model: depth {args.depth}, {args.channels} channels, n2v2={args.n2v2}, "
              f"{n_params / 1e3:.0f} k parameters, halo {ref.halo} px; "
              f"machine: {cores} cores, torch {torch.__version__}", flush=True)

        apertures = {f: random_apertures(args.restore, args.ny, args.nx, i)
                     for i, f in enumerate(frames)}
        header = (f"{'ccds':>4} {'Mpix':>6} {'chunk':>5} {'restore':>7} {'workers':>7} "
                  f"{'thr':>3} "
                  f"{'torch':>5} {'device':>6} {'prec':>8} {'load_s':>6} {'run_s':>7} "
                  f"{'Mpix/s':>7} {'peakRSS/worker_MB':>17}")
        rows = []
        print(header, flush=True)
        runs = [(w, r) for w in args.workers
                for r in ([False, True] if args.restore > 0 else [False])]
        for n_workers, restore in runs:
            tt = args.torch_threads or max(1, cores // (n_workers * args.threads))
            cfg = dn.DenoiseConfig(device=args.device, precision=args.precision,
                                   torch_threads=tt, tile_size=args.tile_size,
                                   batch_size=args.batch_size, restore_catalogue=restore)
            with (
                worker_malloc_env(args.malloc_trim_threshold),
                distributed.LocalCluster(
                    n_workers=n_workers, threads_per_worker=args.threads, processes=True,
                    dashboard_address=":0", memory_limit=0,
                ) as cluster,
                distributed.Client(cluster) as client,
            ):
                t_load = time.perf_counter()
                client.run(_warm, ref, cfg)
                t_load = time.perf_counter() - t_load
                client.run(_reset_peak)
                graphs = [denoise_to_store_force(dn, path, f, ref, cfg, stats[f],
                                                 apertures[f] if restore else None)
                          for f in frames]
                t = time.perf_counter()
                counts = dask.compute(*graphs)
                elapsed = time.perf_counter() - t
                peaks = client.run(_peak_rss_mb)
            assert sum(counts) == sum(
                len(store.open_frame(path, f).chunks[0]) * len(store.open_frame(path, f).chunks[1])
                for f in frames
            )
            out = store.open_frame(path, frames[0], "denoised")[:64, :64].compute()
            assert np.isfinite(out).all()
            rows.append(
                f"{len(frames):>4} {mpix:>6.1f} {args.chunk:>5} "
                f"{args.restore if restore else 0:>7} {n_workers:>7} "
                f"{args.threads:>3} {tt:>5} {args.device:>6} {args.precision:>8} "
                f"{t_load:>6.1f} {elapsed:>7.1f} {mpix / elapsed:>7.3f} "
                f"{max(peaks.values()):>17.0f}"
            )
            print(rows[-1], flush=True)
        print()
        print(header)
        print("\n".join(rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def denoise_to_store_force(dn, path, frame, ref, cfg, stats, apertures=None):
    """Every chunk recomputed (a timing must not find chunks already done)."""
    return dn.denoise_to_store(path, frame, ref, cfg, stats=stats, force=True,
                               apertures=apertures)


def _warm(ref, cfg) -> None:
    """Load the model and set threads in a worker before the timed run."""
    from pausdenoise.denoise import model as dn

    device = dn._resolve_device(cfg.device)
    dn._configure_process(cfg, device)
    dn.get_model(ref, device)


def _reset_peak() -> None:
    """Start the peak-RSS window after start-up (Linux: clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # pragma: no cover - not Linux / not permitted
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    sys.exit(main())
