"""Denoiser quality side by side: N2V variants on the same simulated survey and budget.

Runs the real pipeline (``pausdenoise run``: simulate → ingest → train → denoise →
photometry → compare → evaluate) once per variant, each from ``configs/demo.yaml`` (same
survey seed, same training budget, same held-out exposures) with that variant's
``--set`` overrides, then prints one table of the pixel targets (RMS against the
noiseless truth on sky pixels and inside source apertures, held-out exposures, whole-image
inference), next to the photometric figures a survey astronomer reads first: the median
denoised/true aperture-flux ratio per I_auto bin and σ68 of Δf.

Usage::

    python benchmarks/bench_n2v_quality.py                      # n2v and posterior
    python benchmarks/bench_n2v_quality.py --variants posterior --append
    python benchmarks/bench_n2v_quality.py --set train.epochs=24   # applies to every variant
    python benchmarks/bench_n2v_quality.py --checkpoint RUN/model/n2v.safetensors \
        --variants posterior,posterior-tau2,posterior-tau4,posterior-tau8   # no retraining

``--append`` adds a dated section to ``benchmarks/RESULTS.md``. Each variant takes about as
long as ``make demo`` (minutes on 2 CPU cores). Outputs stay in ``--out`` (one run
directory per variant); a rerun resumes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Variant name → ``--set`` overrides on top of the base config.
VARIANTS: dict[str, list[str]] = {
    "n2v": ["train.unet.posterior=none"],
    "posterior": ["train.unet.posterior=gaussian"],
    # the posterior-mean dial τ (denoise.prior_scale): inference only, so with --checkpoint
    # these reuse one trained network
    "posterior-tau2": ["train.unet.posterior=gaussian", "denoise.prior_scale=2"],
    "posterior-tau4": ["train.unet.posterior=gaussian", "denoise.prior_scale=4"],
    "posterior-tau8": ["train.unet.posterior=gaussian", "denoise.prior_scale=8"],
}

STAGES = "simulate,ingest,train,denoise,photometry,compare,evaluate"


def run_variant(name: str, config: Path, out: Path, extra: list[str],
                train: bool = True) -> float:
    """Run the pipeline for one variant (without the train stage when ``train`` is false:
    a checkpoint is given); returns its wall time (s)."""
    stages = STAGES if train else STAGES.replace("train,", "")
    cmd = [sys.executable, "-m", "pausdenoise.cli", "run", "--config", str(config),
           "--out", str(out / name), "--stages", stages]
    for kv in VARIANTS[name] + extra:
        cmd += ["--set", kv]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.perf_counter() - t0


def summarise(name: str, run_dir: Path, seconds: float) -> dict:
    """One row of the table from a finished run directory."""
    pix = pd.read_csv(run_dir / "evaluate" / "pixel_summary.csv")
    if "reference" in pix:
        pix = pix[pix["reference"] == "truth"]
    rms = {(r.kind, r.pixel_class): r.rms for r in pix.itertuples()}
    truth = pd.read_csv(run_dir / "compare" / "truth_comparison.csv")
    summary = json.loads((run_dir / "compare" / "summary.json").read_text())
    train_s = None
    record = run_dir / "run.json"
    if record.exists():
        stages = json.loads(record.read_text()).get("stages", {})
        train_s = stages.get("train", {}).get("seconds")
    row = {
        "variant": name,
        "sky raw": rms[("raw", "sky")],
        "sky den": rms[("denoised", "sky")],
        "sky ÷": rms[("raw", "sky")] / rms[("denoised", "sky")],
        "src raw": rms[("raw", "source")],
        "src den": rms[("denoised", "source")],
        "src ÷": rms[("raw", "source")] / rms[("denoised", "source")],
        "σ68 raw": summary.get("sigma68_raw"),
        "σ68 den (raw err)": summary.get("sigma68_den_rawerr"),
        "σ68 den (model, held out)": summary.get("validation_sigma68_all"),
        "train s": train_s,
        "run s": seconds,
    }
    for r in truth[truth["kind"] == "denoised"].itertuples():
        if r.bin != "all":
            row[f"flux bias {r.bin}"] = r.bias_median
    return row


def markdown_table(rows: list[dict]) -> str:
    """Metrics as rows, variants as columns (3 significant digits)."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "variant"))

    def fmt(v) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "—"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| metric | " + " | ".join(r["variant"] for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    lines += ["| " + k + " | " + " | ".join(fmt(r.get(k)) for r in rows) + " |" for k in keys]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="n2v,posterior",
                   help=f"comma-separated, from {sorted(VARIANTS)}")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    p.add_argument("--out", type=Path, default=Path("bench-n2v-quality"))
    p.add_argument("--set", dest="extra", action="append", default=[],
                   help="extra KEY=VALUE override for every variant (repeatable)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="reuse this trained network (input.checkpoint) instead of training; "
                   "only for variants that differ at inference")
    p.add_argument("--append", action="store_true", help="append the table to RESULTS.md")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    if args.checkpoint is not None:
        args.extra = [*args.extra, f"input.checkpoint={args.checkpoint.resolve()}"]
    load0 = os.getloadavg()
    rows = []
    for name in names:
        seconds = run_variant(name, args.config, args.out, args.extra,
                              train=args.checkpoint is None)
        rows.append(summarise(name, args.out / name, seconds))
    load1 = os.getloadavg()
    text = markdown_table(rows)
    print(text)
    if args.append:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        extra = " ".join(f"--set {kv}" for kv in args.extra)
        cfg = args.config
        cfg_name = cfg.relative_to(ROOT) if cfg.is_relative_to(ROOT) else cfg
        section = (
            f"\n## N2V quality side by side {stamp}\n\n"
            f"`python benchmarks/bench_n2v_quality.py --variants {','.join(names)} {extra}`"
            f" on {platform.node() or 'this machine'} ({os.cpu_count()} CPUs, no GPU), "
            f"config `{cfg_name}`"
            f", load average {load0[0]:.1f} → {load1[0]:.1f}. RMS in ADU against the "
            "noiseless truth on the held-out exposures (whole-image inference); ÷ is "
            "raw/denoised; flux bias = median(denoised/true aperture flux) − 1 per I_auto "
            "bin; σ68 of Δf over all exposure pairs.\n\n" + text + "\n"
        )
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write(section)
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
