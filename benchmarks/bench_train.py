"""Throughput of Noise2Void training: patches per second, read from the store path.

Builds a temporary survey store of synthetic frames (sky + noise + stars, chunked as in
production), then calls :func:`pausdenoise.n2v.train.train_n2v` on its zarr arrays with a
short schedule (``--epochs`` × ``--steps`` optimiser steps of ``--batch`` patches of
``--patch`` px) for each torch thread count. Reports the mean of the per-epoch
``patches_per_second`` of the epochs after the first (the first includes warm-up), which
counts the sampling from the store, the blind-spot masking, forward, backward and the
optimiser step; the validation pass is not in it.

Training is one process (one device); more CPU cores are used through torch threads, more
GPUs through DDP (``torchrun``), which this benchmark does not start.

Usage::

    python benchmarks/bench_train.py --quick          # depth 2 / 32 channels, 1 and 2 threads
    python benchmarks/bench_train.py --device cuda --batch 128
    python benchmarks/bench_train.py --quick --precision fp32 bf16 fp32 bf16  # CPU bfloat16

:func:`run` is the importable entry point (``benchmarks/run_all.py`` uses it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:  # run from a checkout without installing the package
    import pausdenoise  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(threads: tuple[int, ...] = (1, 2), depth: int = 2, channels: int = 32,
        patch: int = 64, batch: int = 16, epochs: int = 3, steps: int = 8,
        n_frames: int = 2, ny: int = 1024, nx: int = 1024, chunk: int = 512,
        device: str = "cpu", tmpdir: Path | None = None, verbose: bool = True,
        precision: str = "fp32") -> list[dict]:
    """One dict per thread count: ``threads``, ``patches_per_s``, ``seconds``, ``device``,
    ``precision`` (the trainer's autocast precision ``auto`` / ``fp32`` / ``bf16`` /
    ``fp16``: on CUDA any, on CPU bf16 only; the precision in force is recorded)."""
    import numpy as np
    import torch

    from pausdenoise import store
    from pausdenoise.n2v.normalise import frame_statistics
    from pausdenoise.n2v.patches import Frame
    from pausdenoise.n2v.train import TrainConfig, UNetSettings, train_n2v

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_", dir=tmpdir))
    rows = []
    old = torch.get_num_threads()
    try:
        path = tmp / "survey.zarr"
        store.init_store(path, overwrite=True)
        rng = np.random.default_rng(0)
        names = []
        for ccd in range(1, n_frames + 1):
            img = (300.0 + 15.0 * rng.standard_normal((ny, nx))).astype(np.float32)
            ys, xs = rng.integers(0, ny, 300), rng.integers(0, nx, 300)
            img[ys, xs] += rng.uniform(50, 5000, 300).astype(np.float32)
            f = store.frame_id(1, ccd)
            store.write_frame(path, f, {"image": img, "mask": np.zeros((ny, nx), np.uint8)},
                              {"band": "NB455"}, chunks=(chunk, chunk))
            names.append(f)
        root = store.open_store(path, "r")
        frames = []
        for f in names:
            g = root[f"{store.FRAMES_GROUP}/{f}"]
            frames.append(Frame(g["image"], g["mask"], frame_statistics(g["image"][:]), f))
        for t in threads:
            cfg = TrainConfig(
                unet=UNetSettings(depth=depth, base_channels=channels), patch_size=patch,
                batch_size=batch, epochs=epochs, steps_per_epoch=steps, device=device,
                num_threads=t, validation_patches=16, early_stopping_patience=None,
                precision=precision,
            )
            t0 = time.perf_counter()
            _, hist = train_n2v(frames, cfg, progress=False)
            secs = time.perf_counter() - t0
            pps = hist.patches_per_second[1:] or hist.patches_per_second
            rows.append({"threads": t, "patches_per_s": float(np.mean(pps)), "seconds": secs,
                         "device": str(hist.device), "depth": depth, "channels": channels,
                         "patch": patch, "batch": batch, "steps": epochs * steps,
                         "precision": hist.precision})
            if verbose:
                print(f"train {rows[-1]['precision']}, {t} torch thread(s), depth {depth}/"
                      f"{channels} ch, "
                      f"{patch}^2 x {batch}: {rows[-1]['patches_per_s']:.1f} patches/s "
                      f"({epochs}x{steps} steps in {secs:.1f} s, {hist.device})", flush=True)
    finally:
        torch.set_num_threads(old)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 and 2 threads, short schedule")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], nargs="+",
                   default=["fp32"], help="autocast precisions of the training step, run "
                   "one after the other (CPU: bf16; CUDA: bf16, fp16; auto: bf16 where native)")
    a = p.parse_args(argv)
    if a.quick:
        a.threads, a.batch, a.steps = [1, 2], 16, 8
    for precision in a.precision:
        run(tuple(a.threads), a.depth, a.channels, a.patch, a.batch, a.epochs, a.steps,
            device=a.device, precision=precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
