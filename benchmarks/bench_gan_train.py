"""Time pix2pix training steps (discriminator and generator update) per autocast precision.

The step is :func:`pausdenoise.gan.train.train_step` on random cutouts, with the networks as
:func:`pausdenoise.gan.train.train_pix2pix` builds them for each precision (bfloat16 on the
CPU: channels-last). Precisions alternate (``--precision fp32 bf16 fp32 bf16``) so that a
drift of the machine's load shows as a difference between the repeats.

Example::

    python benchmarks/bench_gan_train.py --precision fp32 bf16 fp32 bf16
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np


def time_steps(precision: str, *, depth: int, channels: int, size: int, batch: int,
               steps: int, warmup: int = 3) -> float:
    """Time pix2pix training steps in one precision.

    Parameters
    ----------
    precision : {"fp32", "bf16"}
        Autocast precision of the step.
    depth, channels : int
        Generator depth and base channels (the discriminator: 3 layers, ``channels``).
    size : int
        Cutout side, px.
    batch : int
        Cutouts per step.
    steps : int
        Timed steps (after ``warmup`` untimed ones).
    warmup : int
        Untimed steps first.

    Returns
    -------
    float
        Mean wall time per step, seconds.
    """
    import torch  # heavy: only when timing

    from pausdenoise.gan.config import DiscriminatorConfig, GanTrainConfig, GeneratorConfig
    from pausdenoise.gan.models import Discriminator, Generator
    from pausdenoise.gan.train import make_optimizers, train_step

    cfg = GanTrainConfig(generator=GeneratorConfig(depth=depth, base_channels=channels,
                                                   max_channels=8 * channels),
                         discriminator=DiscriminatorConfig(n_layers=3, base_channels=channels))
    torch.manual_seed(0)
    g, d = Generator(cfg.generator), Discriminator(cfg.discriminator)
    if precision == "bf16":
        g = g.to(memory_format=torch.channels_last)
        d = d.to(memory_format=torch.channels_last)
    opt_g, opt_d = make_optimizers(g, d, cfg)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(batch, 1, size, size)).astype(np.float32))
    y = 0.5 * x
    valid = torch.ones_like(x, dtype=torch.bool)
    for _ in range(warmup):
        train_step(g, d, opt_g, opt_d, x, y, valid, precision=precision)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(g, d, opt_g, opt_d, x, y, valid, precision=precision)
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    """Time the steps and print one line per precision run.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16", "fp32", "bf16"],
                    choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--size", type=int, default=128, help="cutout side, px")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args(argv)
    import torch  # heavy: only when timing

    from pausdenoise.n2v.precision import cpu_has_bfloat16_units

    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch "
          f"{torch.__version__}, {args.threads} thread(s), bfloat16 units: "
          f"{cpu_has_bfloat16_units()}; generator depth {args.depth} / {args.channels} ch, "
          f"{args.size}² cutouts, batch {args.batch}")
    for p in args.precision:
        s = time_steps(p, depth=args.depth, channels=args.channels, size=args.size,
                       batch=args.batch, steps=args.steps)
        print(f"{p}: {1000 * s:.1f} ms/step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
