"""Peak resident memory per worker while denoising 1, 4, 16 … full-size CCDs (out-of-core).

Builds one temporary store of ``max(--ccds)`` synthetic 4096 × 2048 frames (chunks
``--chunk``²), saves a randomly initialised U-Net checkpoint (workers load it from the path,
as in production), starts one ``distributed.LocalCluster`` of ``--workers`` single-threaded
worker processes, loads the model in each, and then for each count N in ``--ccds`` denoises
the first N frames (``force=True``: every chunk recomputed and written). While each run goes
a thread samples the RSS of every worker process with psutil (every ``--interval`` s);
independently each worker's kernel high-water mark (``VmHWM``, reset before each run) is
read at the end. If the pipeline is out-of-core the peak per worker stays flat as N grows:
a worker holds a few chunks + halos + the network's activations, never a frame.

On a CPU-only machine use a tiny network (the default: depth 2, 4 channels) so that 16 CCDs
fit in minutes; the activations of the production network (32 channels) add about
8 × 4 B × 32 × (chunk + 2·halo)² per block being computed (see ``pausdenoise.plan``).

Usage::

    python benchmarks/bench_memory.py --quick                 # 1 and 4 CCDs, 2 workers
    python benchmarks/bench_memory.py --ccds 1 4 16 --workers 2

:func:`run` is the importable entry point.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
try:  # run from a checkout without installing the package
    import pausdenoise  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(_HERE.parent))

import bench_denoise as bd  # noqa: E402  (its store maker and worker helpers)


class _Sampler(threading.Thread):
    """Polls the RSS of the given pids; ``peaks`` maps pid → max RSS seen (bytes)."""

    def __init__(self, pids: list[int], interval: float):
        super().__init__(daemon=True)
        import psutil

        self.procs = {p: psutil.Process(p) for p in pids}
        self.peaks = dict.fromkeys(pids, 0)
        self.interval = interval
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid, proc in self.procs.items():
                try:
                    self.peaks[pid] = max(self.peaks[pid], proc.memory_info().rss)
                except Exception:
                    pass
            self.stop.wait(self.interval)


def run(ccd_counts: tuple[int, ...] = (1, 4), n_workers: int = 2, depth: int = 2,
        channels: int = 4, chunk: int = 1024, ny: int = 4096, nx: int = 2048,
        interval: float = 0.2, tmpdir: Path | None = None, verbose: bool = True) -> list[dict]:
    """One dict per CCD count: ``ccds``, ``mpix``, ``seconds``, ``mpix_per_s``,
    ``peak_rss_mb_max`` / ``peak_rss_mb_mean`` (psutil samples, over workers),
    ``vmhwm_mb_max`` (kernel high-water mark), ``baseline_mb`` (worker RSS before the run)."""
    import dask
    import distributed
    import numpy as np
    import torch

    from pausdenoise import denoise as dn
    from pausdenoise import store
    from pausdenoise.n2v.checkpoint import save_checkpoint
    from pausdenoise.n2v.normalise import frame_statistics
    from pausdenoise.n2v.unet import UNet, UNetConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_", dir=tmpdir))
    rows = []
    try:
        path = tmp / "survey.zarr"
        t0 = time.perf_counter()
        frames = bd.make_store(path, max(ccd_counts), ny, nx, chunk)
        stats = {f: frame_statistics(store.open_frame(path, f, "image").compute())
                 for f in frames}
        if verbose:
            print(f"# store: {len(frames)} frame(s) of {ny}x{nx}, chunks {chunk}^2, written "
                  f"in {time.perf_counter() - t0:.0f} s", flush=True)
        torch.manual_seed(0)
        model = UNet(UNetConfig(depth=depth, base_channels=channels)).eval()
        ckpt = tmp / "model.safetensors"
        save_checkpoint(ckpt, model)
        ref = dn.ModelRef.from_checkpoint(ckpt)
        cfg = dn.DenoiseConfig(device="cpu", torch_threads=1)
        with (
            distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                     processes=True, dashboard_address=None,
                                     memory_limit=0) as cluster,
            distributed.Client(cluster) as client,
        ):
            client.run(bd._warm, ref, cfg)
            pids = list(client.run(lambda: __import__("os").getpid()).values())
            for n in ccd_counts:
                import psutil

                base = max(psutil.Process(p).memory_info().rss for p in pids) / 2**20
                client.run(bd._reset_peak)
                sampler = _Sampler(pids, interval)
                sampler.start()
                graphs = [bd.denoise_to_store_force(dn, path, f, ref, cfg, stats[f])
                          for f in frames[:n]]
                t = time.perf_counter()
                dask.compute(*graphs)
                secs = time.perf_counter() - t
                sampler.stop.set()
                sampler.join()
                hwm = client.run(bd._peak_rss_mb)
                peaks = [v / 2**20 for v in sampler.peaks.values()]
                mpix = n * ny * nx / 1e6
                rows.append({"ccds": n, "mpix": mpix, "seconds": secs, "mpix_per_s": mpix / secs,
                             "workers": n_workers, "depth": depth, "channels": channels,
                             "chunk": chunk, "baseline_mb": base,
                             "peak_rss_mb_max": max(peaks),
                             "peak_rss_mb_mean": float(np.mean(peaks)),
                             "vmhwm_mb_max": max(hwm.values())})
                if verbose:
                    r = rows[-1]
                    print(f"memory {n:>3} CCD(s) {mpix:6.1f} Mpix, {n_workers} workers: "
                          f"{secs:6.1f} s ({r['mpix_per_s']:.2f} Mpix/s), worker RSS before "
                          f"{base:.0f} MB, peak (psutil) max {r['peak_rss_mb_max']:.0f} / mean "
                          f"{r['peak_rss_mb_mean']:.0f} MB, VmHWM max {r['vmhwm_mb_max']:.0f} MB",
                          flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 and 4 CCDs")
    p.add_argument("--ccds", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--ny", type=int, default=4096)
    p.add_argument("--nx", type=int, default=2048)
    a = p.parse_args(argv)
    if a.quick:
        a.ccds = [1, 4]
    run(tuple(a.ccds), a.workers, a.depth, a.channels, a.chunk, a.ny, a.nx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
