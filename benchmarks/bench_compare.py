"""Throughput of the compare stage: exposure pairs per second.

Builds a synthetic long photometry table (``--sources`` sources × ``--exposures`` exposures
of one band, kinds raw and denoised, 2 % flagged) and times what the compare stage does with
it: :func:`pausdenoise.compare.widen`, :func:`~pausdenoise.compare.make_pairs` (every
unordered pair of exposures of a source, n(n−1)/2 per source), and
:func:`~pausdenoise.compare.summarise` (σ68 of Δf per I_auto bin).

* in-process pandas (what ``pausdenoise compare`` runs today), best of ``--repeat``;
* the pair join on dask DataFrames (``make_pairs`` accepts them) on a ``LocalCluster`` of
  1 and 2 single-threaded workers, ``--partitions`` partitions, counting the pairs.

Usage::

    python benchmarks/bench_compare.py --quick
    python benchmarks/bench_compare.py --sources 200000 --exposures 6 --workers 1 2 4

:func:`run` is the importable entry point (``benchmarks/run_all.py`` uses it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:  # run from a checkout without installing the package
    import pausdenoise  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_table(n_sources: int, n_exposures: int, seed: int = 0):
    """Long photometry table with the columns the compare stage reads."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_sources * n_exposures
    ref = np.repeat(np.arange(n_sources, dtype=np.int64), n_exposures)
    exp = np.tile(np.arange(1, n_exposures + 1, dtype=np.int64), n_sources)
    mag = np.repeat(rng.uniform(17, 23, n_sources), n_exposures)
    f_true = 10 ** (-0.4 * (mag - 23.9))
    err = 0.05 * f_true + 0.5
    parts = []
    for kind, scale in (("raw", 1.0), ("denoised", 0.6)):
        parts.append(pd.DataFrame({
            "ref_id": ref, "expnum": exp, "ccd": 1, "band": "NB455", "kind": kind,
            "flags": (rng.random(n) < 0.02).astype(np.int64), "I_auto": mag,
            "flux_cal": f_true + scale * err * rng.standard_normal(n), "flux_cal_err": err,
        }))
    return pd.concat(parts, ignore_index=True)


def _pandas_once(table):
    from pausdenoise import compare as cmp

    wide = cmp.widen(table)
    pairs = cmp.make_pairs(wide)
    cmp.summarise(pairs, cmp.DEFAULT_BINS, measurements=wide)
    return len(pairs)


def run(n_sources: int = 50_000, n_exposures: int = 4, workers: tuple[int, ...] = (1, 2),
        partitions: int = 8, repeat: int = 3, verbose: bool = True) -> list[dict]:
    """Rows: ``mode`` ("pandas" or "dask"), ``workers``, ``pairs``, ``seconds``,
    ``pairs_per_s``."""
    import logging
    import warnings

    import dask.dataframe as dd
    import distributed

    from pausdenoise import compare as cmp

    table = make_table(n_sources, n_exposures)
    rows = []
    best, n_pairs = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n_pairs = _pandas_once(table)
        best = min(best, time.perf_counter() - t0)
    rows.append({"mode": "pandas (widen+pairs+summarise)", "workers": 1, "pairs": n_pairs,
                 "seconds": best, "pairs_per_s": n_pairs / best})
    if verbose:
        print(f"compare pandas in-process: {n_pairs} pairs from {len(table)} rows in "
              f"{best:.2f} s = {n_pairs / best:,.0f} pairs/s", flush=True)
    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    for w in workers:
        with (
            warnings.catch_warnings(),
            distributed.LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                     dashboard_address=None, memory_limit=0) as cluster,
            distributed.Client(cluster),
        ):
            warnings.filterwarnings("ignore", message="Sending large graph")
            ddf = dd.from_pandas(table, npartitions=partitions).persist()
            ddf = ddf.repartition(npartitions=partitions)
            best_d, n_d = float("inf"), 0
            for _ in range(repeat):
                t0 = time.perf_counter()
                n_d = int(cmp.make_pairs(ddf, kinds=["raw", "denoised"]).shape[0].compute())
                best_d = min(best_d, time.perf_counter() - t0)
        rows.append({"mode": "dask (widen+pairs join)", "workers": w, "pairs": n_d,
                     "seconds": best_d, "pairs_per_s": n_d / best_d})
        if verbose:
            print(f"compare dask {w} worker(s): {n_d} pairs in {best_d:.2f} s = "
                  f"{n_d / best_d:,.0f} pairs/s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="50k sources x 4 exposures")
    p.add_argument("--sources", type=int, default=100_000)
    p.add_argument("--exposures", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    if a.quick:
        a.sources, a.exposures = 50_000, 4
    run(a.sources, a.exposures, tuple(a.workers), a.partitions, a.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
