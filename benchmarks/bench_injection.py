"""Flux bias of each estimator against injected truth, per I_auto bin: simulation or real frames.

Runs the pipeline's own inject stage (GalSim galaxies of known flux added to copies of the
frames, denoised with the run's network, measured by forced photometry) on a run directory
and prints its tables as a RESULTS.md section: per estimator (raw aperture, denoised
aperture, denoised aperture divided by its cross-fitted transfer function, profile-weighted
total flux) and I bin, the median (F̂ − F)/F with its 95 % bootstrap interval (sources
resampled), σ68 of the pulls (F̂ − F)/σ̂, the relative scatter σ68((F̂ − F)/F), and for the
profile estimator the ratio of its scatter to the Cramér–Rao bound; then the colour bias.

Two ways to get a run directory:

- ``--config`` + ``--out``: run the stages named in ``--stages`` first (e.g. a larger
  simulated survey whose frames give many thousands of injections, or real frames);
- ``--out`` alone: a finished run with the inject stage done (``make demo`` is one).

``--seeds 0,1,2`` (with ``--config``) runs the inject stage once per ``inject.seed`` (new
positions, shapes and noise each time, on the same frames) and pools the realisations into
one table (written to ``<out>/inject-pooled``): a crowded real field holds few galaxies per
frame, and a per-bin pull σ68 known to ± 0.03 needs ~700 galaxies per bin. Each realisation
is kept (``<out>/inject-realisations``), so that adding seeds later injects only the new
ones.

Usage::

    python benchmarks/bench_injection.py --out demo-output                    # the demo's
    python benchmarks/bench_injection.py --config configs/saao.yaml --out bench-output/saao \\
        --stages ingest,train,denoise,inject --append                         # real frames
    python benchmarks/bench_injection.py --config configs/saao.yaml --out bench-output/saao \\
        --stages inject --seeds 0,1,2,3,4,5                                   # pooled
    python benchmarks/bench_injection.py --config configs/demo.yaml --out bench-output/big \\
        --set simulate.ccd_shape=[2048,2048] --set simulate.exposures_per_band=4 \\
        --set input.checkpoint=demo-output/model/n2v.safetensors --set inject.per_frame=600 \\
        --stages simulate,ingest,denoise,photometry,inject --append
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import pandas as pd

try:  # run from a checkout without installing the package
    import pausdenoise  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pausdenoise.cli import main as cli_main
from pausdenoise.inject.metrics import TABLE_FILES

#: ``ref_id`` offset between pooled realisations (each holds far fewer injections).
REALISATION_ID_STEP = 10_000_000_000
#: Where each realisation's injected rows are kept, under the run directory.
REALISATIONS = "inject-realisations"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--config", type=Path, default=None,
                   help="configuration to run first (omit to read a finished run)")
    p.add_argument("--stages", default="inject", help="stages to run with --config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="configuration overrides passed to the run")
    p.add_argument("--seeds", default=None,
                   help="comma-separated inject.seed values: one realisation each, pooled")
    p.add_argument("--title", default=None, help="what the section is about")
    p.add_argument("--append", action="store_true", help="append the section to RESULTS.md")
    p.add_argument("--json", type=Path, default=None, help="also write the tables as JSON")
    return p.parse_args(argv)


def run_pipeline(args: argparse.Namespace, extra: tuple[str, ...] = ()) -> float:
    """Run the configured stages (``extra``: more KEY=VALUE overrides); return the wall time
    in s."""
    cmd = ["run", "--config", str(args.config), "--out", str(args.out),
           "--stages", args.stages, "--set", "inject.enabled=true"]
    for kv in [*args.set, *extra]:
        cmd += ["--set", kv]
    t0 = time.perf_counter()
    rc = cli_main(cmd)
    if rc not in (0, 3):
        raise SystemExit(f"pausdenoise run failed with exit code {rc}")
    return time.perf_counter() - t0


def _pct(v: float, decimals: int = 1) -> str:
    return "—" if pd.isna(v) else f"{100 * v:+.{decimals}f}"


def _num(v: float, fmt: str = ".2f") -> str:
    return "—" if pd.isna(v) else format(v, fmt)


def bias_lines(bias: pd.DataFrame) -> list[str]:
    """The bias table (all bands together; bins without injections left out) as markdown
    lines."""
    rows = bias[(bias["band"] == "all") & (bias["n"] + bias["n_flagged"] > 0)]
    scale = "scale_bias" in rows.columns
    lines = ["| estimator | I_auto | n (flagged) | median bias % [95 % CI] | pull σ68 [95 % CI] "
             "| σ68(ΔF/F) | σ / Cramér–Rao |" + (" flux-scale bias % [95 % CI] |" if scale else ""),
             "|---|---|---:|---|---|---:|---:|" + ("---|" if scale else "")]
    for r in rows.itertuples():
        ci = f"[{_pct(r.ci_lo)}, {_pct(r.ci_hi)}]"
        pull_ci = f"[{_num(r.pull_ci_lo)}, {_num(r.pull_ci_hi)}]"
        line = (f"| {r.estimator} | {r.bin} | {r.n} ({r.n_flagged}) | "
                f"{_pct(r.median_rel_bias)} {ci} | {_num(r.pull_sigma68)} {pull_ci} | "
                f"{_num(r.rel_scatter, '.3f')} | {_num(r.cr_ratio)} |")
        if scale:
            line += (f" {_pct(r.scale_bias)} [{_pct(r.scale_ci_lo)}, "
                     f"{_pct(r.scale_ci_hi)}] |")
        lines.append(line)
    return lines


def colour_lines(colour: pd.DataFrame) -> list[str]:
    """The colour-bias table as markdown lines."""
    rows = colour[colour["n"] > 0]
    if rows.empty:
        return ["(no colour: one band only)"]
    scale = "scale_colour_bias" in rows.columns
    lines = [f"colour {rows['colour'].iloc[0]}, {rows['method'].iloc[0]}"
             + (" and the colour of the bands' flux scales" if scale else "") + ":", "",
             "| estimator | I_auto | n | colour bias [mag] [95 % CI] |"
             + (" flux-scale colour bias [mag] [95 % CI] |" if scale else ""),
             "|---|---|---:|---|" + ("---|" if scale else "")]
    for r in rows.itertuples():
        line = (f"| {r.estimator} | {r.bin} | {r.n} | {r.median_colour_bias:+.3f} "
                f"[{r.ci_lo:+.3f}, {r.ci_hi:+.3f}] |")
        if scale:
            line += (f" {_num(r.scale_colour_bias, '+.3f')} [{_num(r.scale_ci_lo, '+.3f')}, "
                     f"{_num(r.scale_ci_hi, '+.3f')}] |")
        lines.append(line)
    return lines


def response_lines(response: pd.DataFrame) -> list[str]:
    """The response table (all bands together) as markdown lines."""
    rows = response[(response["band"] == "all") & (response["n"] > 0)]
    lines = ["| estimator | I_auto | n (flagged) | median response bias % [95 % CI] "
             "| σ68 | F̂_null/σ̂ median, mean |", "|---|---|---:|---|---:|---|"]
    for r in rows.itertuples():
        lines.append(f"| {r.estimator} | {r.bin} | {r.n} ({r.n_flagged}) | "
                     f"{_pct(r.median_response_bias, 2)} [{_pct(r.ci_lo, 2)}, "
                     f"{_pct(r.ci_hi, 2)}] | "
                     f"{_num(r.rel_scatter, '.3f')} | "
                     f"{_num(getattr(r, 'null_pull_median', None), '+.3f')}, "
                     f"{_num(getattr(r, 'null_pull_mean', None), '+.3f')} |")
    return lines


def _inject_fingerprint(args: argparse.Namespace, seed: int) -> str:
    """The inject stage's fingerprint for one realisation (what ``run.json`` records)."""
    from pausdenoise.config import load_config
    from pausdenoise.pipeline.runner import stage_fingerprints

    cfg = load_config(args.config, overrides=["inject.enabled=true", *args.set,
                                              f"inject.seed={seed}"])
    return stage_fingerprints(cfg, ["inject"])["inject"]


def realisation(args: argparse.Namespace, seed: int, group: Path
                ) -> tuple[float, list[pd.DataFrame]]:
    """One injection realisation's injected rows: truth, photometry and (when measured) the
    photometry before injection.

    Each realisation is kept in ``<out>/inject-realisations/<settings>/seed-<seed>`` with
    the inject stage's fingerprint (``<settings>``: the fingerprint the same settings have
    with seed 0, so runs with other settings, e.g. another magnitude range, keep theirs
    apart; ``group`` is that folder), so that a later ``--seeds`` run with more seeds
    reuses it instead of injecting again; a saved realisation whose fingerprint differs is
    made again.

    Returns
    -------
    float
        Wall time of the run, s (0 when reused).
    list of pandas.DataFrame
        ``[truth, photometry]`` or ``[truth, photometry, photometry_null]``, ``ref_id`` as
        the run wrote it.
    """
    from pausdenoise.photometry.driver import read_photometry

    fp = _inject_fingerprint(args, seed)
    saved = group / f"seed-{seed}"
    names = ("truth", "photometry", "photometry_null")
    if (saved / "fingerprint").is_file() and (saved / "fingerprint").read_text() == fp:
        print(f"injection realisation seed {seed}: reused from {saved}", file=sys.stderr)
        return 0.0, [pd.read_parquet(saved / f"{n}.parquet") for n in names
                     if (saved / f"{n}.parquet").is_file()]
    seconds = run_pipeline(args, (f"inject.seed={seed}",))
    inj = args.out / "inject"
    truth = pd.read_parquet(inj / "truth.parquet")
    parts = [truth] + [read_photometry(inj / d) for d in names[1:] if (inj / d).is_dir()]
    parts[1:] = [p[p["ref_id"].isin(truth["ref_id"])].reset_index(drop=True)
                 for p in parts[1:]]
    for stale in ("fingerprint", *(f"{n}.parquet" for n in names)):
        (saved / stale).unlink(missing_ok=True)  # nothing of a realisation made otherwise
    saved.mkdir(parents=True, exist_ok=True)
    for name, part in zip(names, parts, strict=False):
        part.to_parquet(saved / f"{name}.parquet", index=False)
    (saved / "fingerprint").write_text(fp)  # written last: marks the realisation complete
    return seconds, parts


def pooled_realisations(args: argparse.Namespace, seeds: list[int]) -> float:
    """Run (or reuse) one injection realisation per seed and pool their injected rows.

    Each realisation's ``ref_id`` is shifted by ``seed × REALISATION_ID_STEP`` so that
    sources stay distinct (bootstrap intervals resample whole sources) and a realisation
    keeps its ids whichever seeds it is pooled with. Writes ``bias_by_bin.csv``,
    ``transfer.csv``, ``colour_bias.csv``, ``response.csv`` (when every realisation has its
    photometry before injection), ``truth.parquet`` and the injected rows'
    ``photometry.parquet`` (and ``photometry_null.parquet``) to ``<out>/inject-pooled``.

    Returns
    -------
    float
        Wall time of the runs made now, s.
    """
    from pausdenoise.inject.metrics import injection_tables
    from pausdenoise.pipeline.stages.inject import _colour_bands

    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SystemExit(f"--seeds must be distinct and >= 0, got {seeds}")
    group = args.out / REALISATIONS / _inject_fingerprint(args, 0)
    seconds, phots, nulls, truths = 0.0, [], [], []
    for seed in seeds:
        took, parts = realisation(args, seed, group)  # fresh frames: shifted in place
        seconds += took
        for t in parts:
            t["ref_id"] = t["ref_id"] + seed * REALISATION_ID_STEP
        truths.append(parts[0])
        phots.append(parts[1])
        nulls += parts[2:]
    truth = pd.concat(truths, ignore_index=True)
    null = pd.concat(nulls, ignore_index=True) if len(nulls) == len(seeds) else None
    phot = pd.concat(phots, ignore_index=True)
    tables = injection_tables(phot, truth, seed=seeds[0],
                              colour_bands=_colour_bands(truth), null=null)
    pooled = args.out / "inject-pooled"
    pooled.mkdir(parents=True, exist_ok=True)
    for name, fname in TABLE_FILES.items():
        if name in tables:
            tables[name].to_csv(pooled / f"{fname}.csv", index=False)
    truth.to_parquet(pooled / "truth.parquet", index=False)
    phot.to_parquet(pooled / "photometry.parquet", index=False)
    if null is not None:
        null.to_parquet(pooled / "photometry_null.parquet", index=False)
    return seconds


def markdown(inj: Path, title: str, command: str, seconds: float | None) -> str:
    """The injection tables in ``inj`` as a RESULTS.md section."""
    bias = pd.read_csv(inj / "bias_by_bin.csv")
    colour = pd.read_csv(inj / "colour_bias.csv")
    truth = pd.read_parquet(inj / "truth.parquet")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = [
        f"## Source injection: {title} ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)", "",
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {load:.1f}  ",
        f"command: `{command}`  ",
        f"{len(truth)} injected galaxies in {truth.groupby(['expnum', 'ccd']).ngroups} "
        f"frames, bands {', '.join(sorted(truth['band'].unique()))}"
        + (f"; pipeline wall time {seconds:.0f} s" if seconds else ""), "",
    ]
    notes = ["", "Aperture estimators against the injected galaxy's own noiseless light in its "
             "catalogue aperture, the profile estimator against its total flux; flagged rows "
             "are counted, not used; intervals resample whole sources. "
             "denoised_aperture_corrected divides by the transfer function fitted on the other "
             "half of the injections (ref_id parity).", ""]
    response = []
    if (inj / "response.csv").exists():
        response = ["", "response (F̂ − F̂ before injection − F)/F, all bands:", "",
                    *response_lines(pd.read_csv(inj / "response.csv"))]
    return "\n".join(head + bias_lines(bias) + [""] + colour_lines(colour) + response + notes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/bench_injection.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    tables_dir = args.out / "inject"
    if args.seeds:
        if args.config is None:
            raise SystemExit("--seeds needs --config (each seed is a new inject run)")
        seconds = pooled_realisations(args, [int(v) for v in args.seeds.split(",")])
        tables_dir = args.out / "inject-pooled"
    else:
        seconds = run_pipeline(args) if args.config is not None else None
    title = args.title or (args.config.stem if args.config else args.out.name)
    text = markdown(tables_dir, title, command, seconds)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tables = {n: pd.read_csv(tables_dir / f"{n}.csv").to_dict(orient="records")
                  for n in TABLE_FILES.values() if (tables_dir / f"{n}.csv").exists()}
        args.json.write_text(json.dumps(tables, indent=1, default=float))
    if args.append:
        results = Path(__file__).resolve().parent / "RESULTS.md"
        with results.open("a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
