"""CPU inference of the N2V U-Net: forward-pass variants and tilings, side by side.

Measures, in one process and interleaved round by round (best of ``--repeat``), so that the
load of a shared machine affects every variant alike:

(a) one forward pass of ``--batch`` × 320² (a 256 px tile plus the 32 px halo) through the
    depth-2 / 32-channel network in several forms: eager NCHW under ``no_grad`` (the path
    before the optimisation) and under ``inference_mode``; channels-last eager; TorchScript
    ``trace`` + ``freeze`` in NCHW and channels-last, each also with
    ``torch.jit.optimize_for_inference``; bfloat16 autocast, NCHW and channels-last. Each
    variant's max |difference| to the eager float32 output is printed with its time;
(b) :func:`pausdenoise.denoise.predict_block` on a 2048² image with the optimised network
    (:func:`pausdenoise.n2v.unet.optimise_for_inference`, what the denoise stage runs on CPU)
    for several sub-tile sizes and batch sizes (``--no-cpu-cap`` lifts the CPU batch cap so
    the requested batch is used);
(c) with ``--checkpoint`` and ``--store``/``--frame``: :func:`pausdenoise.denoise.
    measure_precision_error` of CPU bfloat16 autocast against float32 on that frame (error
    in units of the frame's noise σ; timings of the two production paths).

Usage::

    .venv/bin/python benchmarks/bench_cpu_inference.py --threads 1 2 \\
        --checkpoint demo-output/model/n2v.safetensors \\
        --store demo-output/store.zarr --frame 00001003_01
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pausdenoise import denoise as dn  # noqa: E402
from pausdenoise.n2v.unet import UNet, UNetConfig, optimise_for_inference  # noqa: E402

CL = torch.channels_last


def forward_variants(model: UNet, example: torch.Tensor) -> dict[str, Callable]:
    """Callables ``x -> y`` for each forward form of ``model`` (built once each)."""
    def jit(net: torch.nn.Module, cl: bool, ofi: bool) -> Callable:
        ex = example.contiguous(memory_format=CL) if cl else example
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f = torch.jit.freeze(torch.jit.trace(net, ex, check_trace=False).eval())
            if ofi:
                f = torch.jit.optimize_for_inference(f)
        return (lambda x: f(x.contiguous(memory_format=CL))) if cl else f

    nchw = copy.deepcopy(model).eval()
    nhwc = copy.deepcopy(model).eval().to(memory_format=CL)

    def bf16(net: torch.nn.Module, cl: bool) -> Callable:
        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(x.contiguous(memory_format=CL) if cl else x)
        return run

    def inference_mode(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return nchw(x)

    return {
        "eager NCHW, no_grad (before)": nchw,
        "eager NCHW, inference_mode": inference_mode,
        "eager channels-last": lambda x: nhwc(x.contiguous(memory_format=CL)),
        "jit trace+freeze NCHW": jit(nchw, False, False),
        "jit trace+freeze+optimize_for_inference NCHW": jit(nchw, False, True),
        "jit trace+freeze channels-last (chosen)": jit(nhwc, True, False),
        "jit trace+freeze+optimize_for_inference channels-last": jit(nhwc, True, True),
        "bf16 autocast NCHW": bf16(nchw, False),
        "bf16 autocast channels-last (CPU bf16 path)": bf16(nhwc, True),
    }


def best_of(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Interleaved timing: each round runs every variant once; best time per variant."""
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--image", type=int, default=2048)
    p.add_argument("--tiles", default="128:1,256:1,256:4,512:1,1024:1,none:1",
                   help="tile_size:batch_size pairs for (b)")
    p.add_argument("--no-cpu-cap", action="store_true",
                   help="(b): use the requested batch even above CPU_BATCH_PIXELS")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--store", type=Path)
    p.add_argument("--frame")
    a = p.parse_args(argv)

    if a.checkpoint:
        from pausdenoise.n2v.checkpoint import load_model

        model, _ = load_model(a.checkpoint)
    else:
        torch.manual_seed(0)
        model = UNet(UNetConfig(depth=2, base_channels=32)).eval()
    print(f"# network {model.config}, load {os.getloadavg()[0]:.2f}", flush=True)
    if a.no_cpu_cap:
        dn.tiling.CPU_BATCH_PIXELS = 1 << 40
    report: dict = {"forward": {}, "tiles": {}, "load_before": os.getloadavg()[0]}
    x = torch.randn(a.batch, 1, 320, 320, generator=torch.Generator().manual_seed(1))
    img = np.random.default_rng(2).standard_normal((a.image, a.image)).astype(np.float32)
    for t in a.threads:
        torch.set_num_threads(t)
        variants = forward_variants(model, x[:1])
        with torch.no_grad():
            ref = model(x)
            diffs = {k: float((f(x).float() - ref).abs().max()) for k, f in variants.items()}
            times = best_of({k: (lambda f=f: f(x)) for k, f in variants.items()}, a.repeat)
        base = times["eager NCHW, no_grad (before)"]
        print(f"\n{a.batch}×320² forward, {t} thread(s) | ms | speed-up vs eager | max |Δ|")
        for k in variants:
            print(f"| {k} | {times[k] * 1e3:.0f} | {base / times[k]:.2f} | {diffs[k]:.1e} |")
            report["forward"][f"{t}:{k}"] = {"ms": times[k] * 1e3, "speedup": base / times[k],
                                             "max_abs_diff": diffs[k]}

        opt = optimise_for_inference(model)
        jobs = {}
        for pair in a.tiles.split(","):
            ts, bs = pair.split(":")
            tile = None if ts == "none" else int(ts)
            jobs[f"tile {ts}, batch {bs}"] = (
                lambda tile=tile, bs=int(bs), opt=opt: dn.predict_block(
                    opt, img, halo=model.halo(), tile_size=tile, batch_size=bs))
        times = best_of(jobs, max(1, a.repeat - 1))
        print(f"\npredict_block {a.image}², optimised ({opt.backend}), {t} thread(s) | s | "
              "Mpix/s")
        for k, s in times.items():
            print(f"| {k} | {s:.2f} | {img.size / s / 1e6:.3f} |")
            report["tiles"][f"{t}:{k}"] = {"s": s, "mpix_per_s": img.size / s / 1e6}

    if a.checkpoint and a.store and a.frame:
        import zarr

        from pausdenoise.n2v.normalise import frame_statistics

        g = zarr.open_group(f"{a.store}/frames/{a.frame}", mode="r")
        image = np.asarray(g["image"][:], dtype=np.float32)
        mask = np.asarray(g["mask"][:]) if "mask" in g else None
        stats = frame_statistics(image, mask)
        torch.set_num_threads(a.threads[0])
        res = min((dn.measure_precision_error(model, image, stats, mask, device="cpu")
                   for _ in range(2)), key=lambda r: r["seconds_reduced"])
        report["bf16"] = res
        print(f"\nbf16 vs float32 on {a.frame} ({a.threads[0]} thread): " + json.dumps(res))
    report["load_after"] = os.getloadavg()[0]
    print(f"\n# load {report['load_before']:.2f} before, {report['load_after']:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
