"""Peak memory and time of the compare stage as the survey grows: per band vs all at once.

Writes a synthetic photometry output (``--bands`` narrow bands × ``--sources`` sources ×
``--exposures`` exposures per band, kinds raw and denoised, the full
:data:`pausdenoise.photometry.OUTPUT_COLUMNS`, Parquet partitioned by band and kind as
``pausdenoise photometry`` writes it) and runs, each in a fresh subprocess so that its peak
resident memory (``ru_maxrss``) is its own:

* ``stage`` -- :func:`pausdenoise.pipeline.stages.compare.run`, the pipeline's
  compare stage (per band: read, pair, reduce to the compact Δf table; error model,
  cross-validation, σ68 tables), in-process (no cluster, so the driver does all the work
  and its peak is the whole stage's);
* ``all-at-once`` -- what the stage did before it went per band: read the whole photometry
  table, :func:`~pausdenoise.compare.widen`, :func:`~pausdenoise.compare.make_pairs`
  over all bands, fit and cross-validate the error model on the full pair table.

Usage::

    python benchmarks/bench_compare_scale.py                      # 2, 8 bands
    python benchmarks/bench_compare_scale.py --bands 2 8 16 --sources 40000 --append
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # run from a checkout without installing the package
    import pausdenoise  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_photometry(root: Path, n_bands: int, n_sources: int, n_exp: int, seed: int = 0) -> int:
    """A synthetic photometry output under ``root/photometry``; returns the pair count."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pausdenoise.photometry import OUTPUT_COLUMNS

    rng = np.random.default_rng(seed)
    mag = rng.uniform(17, 24, n_sources)
    f_true = 10 ** (-0.4 * (mag - 23.9))
    for ib in range(n_bands):
        band = f"NB{455 + 10 * ib}"
        k_band = 0.8 + 0.4 * ib / max(n_bands - 1, 1)
        for ie in range(n_exp):
            expnum = 1000 + ib * n_exp + ie
            err = np.sqrt(0.01 * f_true + 0.5**2)
            f_raw = f_true + err * rng.standard_normal(n_sources)
            f_den = f_true + k_band * 0.5 * err * rng.standard_normal(n_sources)
            for kind, f in (("raw", f_raw), ("denoised", f_den)):
                d = {c: np.zeros(n_sources, dtype=t if t != "object" else "float64")
                     for c, t in OUTPUT_COLUMNS.items() if c not in ("band", "kind")}
                d.update(ref_id=np.arange(n_sources, dtype=np.int64),
                         expnum=np.full(n_sources, expnum, np.int64),
                         ccd=np.ones(n_sources, np.int64), I_auto=mag, flux=f, flux_err=err,
                         zp=np.ones(n_sources), flux_cal=f, flux_cal_err=err,
                         flags=(rng.random(n_sources) < 0.02).astype(np.int32))
                out = root / "photometry" / f"band={band}" / f"kind={kind}"
                out.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.Table.from_pandas(pd.DataFrame(d), preserve_index=False),
                               out / f"{expnum}.parquet")
    return n_bands * n_sources * n_exp * (n_exp - 1) // 2


def _child(mode: str, root: str) -> dict:
    """Run one mode in this (fresh) process and report its time and peak RSS."""
    import numpy as np

    from pausdenoise.config import PipelineConfig
    from pausdenoise.runstate import RunPaths

    t0 = time.perf_counter()
    if mode == "stage":
        from pausdenoise.pipeline.context import Context
        from pausdenoise.pipeline.stages.compare import run as run_compare

        cfg = PipelineConfig.model_validate({"compare": {"min_validate_pairs": 400}})
        summary = run_compare(Context(cfg=cfg, paths=RunPaths(Path(root)), client=None,
                                      record=None))
        sigma = summary.get("validation_sigma68_all")
        n_pairs = summary["pairs"]
    else:
        from pausdenoise import compare as cmp
        from pausdenoise.photometry import read_photometry

        table = read_photometry(Path(root) / "photometry")
        wide = cmp.widen(table)
        pairs = cmp.make_pairs(wide)
        eb = wide[["expnum", "band"]].drop_duplicates("expnum")
        model = cmp.fit_error_model(pairs, eb["expnum"])
        val, _ = cmp.cross_validate_error_model(pairs, eb)
        cmp.summarise(pairs, model=model, measurements=wide)
        sigma = float(val.loc[val["bin"] == "all", "sigma68_den_model"].iloc[0])
        n_pairs = len(pairs)
    dt = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"mode": mode, "seconds": dt, "peak_mb": peak_mb, "pairs": int(n_pairs),
            "sigma68_cv": float(np.float64(sigma))}


def run(bands: list[int], n_sources: int, n_exp: int) -> list[dict]:
    """Both modes for each band count; a list of result rows."""
    rows = []
    for nb in bands:
        with tempfile.TemporaryDirectory(prefix="bench_compare_scale_") as tmp:
            n = write_photometry(Path(tmp), nb, n_sources, n_exp)
            for mode in ("stage", "all-at-once"):
                out = subprocess.run([sys.executable, __file__, "--child", mode, tmp],
                                     check=True, capture_output=True, text=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update(bands=nb, sources=n_sources, exposures=n_exp, expected_pairs=n)
                rows.append(row)
                print(f"{nb:3d} bands  {mode:12s} {row['pairs']:>10,d} pairs  "
                      f"{row['seconds']:7.1f} s  peak {row['peak_mb']:7.0f} MB  "
                      f"σ68(cv) {row['sigma68_cv']:.3f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bands", type=int, nargs="+", default=[2, 8])
    p.add_argument("--sources", type=int, default=40_000)
    p.add_argument("--exposures", type=int, default=5)
    p.add_argument("--append", action="store_true", help="append a section to RESULTS.md")
    p.add_argument("--child", nargs=2, metavar=("MODE", "ROOT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    load = os.getloadavg()[0]
    rows = run(args.bands, args.sources, args.exposures)
    if args.append:
        cmd = "python benchmarks/bench_compare_scale.py " + " ".join(
            ["--bands", *map(str, args.bands), "--sources", str(args.sources),
             "--exposures", str(args.exposures), "--append"])
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        lines = [f"\n## Compare stage: per band vs all at once ({stamp})\n",
                 f"Machine: {platform.node()}, {os.cpu_count()} CPUs, no GPU; load {load:.2f} "
                 f"before. Command: `{cmd}`. Synthetic photometry ({args.sources:,d} sources × "
                 f"{args.exposures} exposures per band, raw + denoised, 2 % flagged), Parquet "
                 "partitioned like the photometry stage's; each mode in its own process "
                 "(peak = ru_maxrss), no cluster.\n",
                 "| bands | pairs | mode | time [s] | peak RSS [MB] | σ68 cross-validated |",
                 "|---:|---:|---|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['bands']} | {r['pairs']:,d} | {r['mode']} | {r['seconds']:.1f} "
                         f"| {r['peak_mb']:.0f} | {r['sigma68_cv']:.3f} |")
        with open(Path(__file__).with_name("RESULTS.md"), "a") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
