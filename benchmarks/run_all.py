"""Run every benchmark with small sizes, print one table, append it to RESULTS.md.

Stages measured, each with 1 and 2 workers where the stage is parallel (so the table shows
the parallel efficiency, rate(2) / (2 · rate(1))):

* ingest MB/s (``bench_ingest.run``: PAUS FITS → Zarr, distributed workers) and the
  store read-back rate of one process;
* training patches/s (``bench_train.run``: 1 and 2 torch threads, one process);
* denoise Mpix/s end to end (``bench_denoise.main``: zarr → U-Net → zarr on a LocalCluster,
  its printed table parsed) and network only (the stage's ``predict_block`` with the cached
  optimised model on one chunk + halo block in this process, 1 and 2 torch threads);
* photometry sources/s (``bench_photometry``: ``measure_frame`` in-process and
  ``dask_rate`` on 1 and 2 workers);
* compare pairs/s (``bench_compare.run``: pandas in-process, dask join on 1 and 2 workers);
* peak RSS per denoise worker for 1 and 2 full-size CCDs (``bench_memory.run``, tiny net);
* end-to-end exposures/hour for a full PAUCam exposure (18 CCDs of 4096×2048), derived
  from the measured stage rates with :func:`pausdenoise.plan.plan_run` (ingest + denoise +
  photometry + compare; training is a one-off cost and is left out).

GPU rows are measured only when CUDA is visible; otherwise they read "not measured (no GPU)".
No GPU library is imported at module level.

Usage::

    python benchmarks/run_all.py --quick                # 2-core machine, ~10 min
    python benchmarks/run_all.py                        # larger sizes
    python benchmarks/run_all.py --quick --no-append    # print only
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:  # run from a checkout without installing the package
    import pausdenoise  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(HERE.parent))

PAUS_EXPOSURE = {"ccds_per_exposure": 18, "ccd_shape": (4096, 2048)}


# ----------------------------------------------------------------------------- machine


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    try:
        import psutil

        mem_gb = psutil.virtual_memory().total / 2**30
    except ImportError:  # pragma: no cover
        mem_gb = float("nan")
    return {"nproc": cores, "cpu_model": model, "memory_gb": round(mem_gb, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _load() -> str:
    return "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


# ----------------------------------------------------------------------------- benchmarks


def bench_denoise_e2e(ny: int, nx: int, device: str = "cpu", workers=(1, 2)) -> list[dict]:
    """Run ``bench_denoise.main`` and parse its table (it has no row-returning API)."""
    import bench_denoise

    argv = ["--ccds", "1", "--ny", str(ny), "--nx", str(nx), "--threads", "1",
            "--device", device, "--workers", *[str(w) for w in workers]]
    if device == "cpu":  # one core per worker, so that 2 workers = 2 cores (efficiency)
        argv += ["--torch-threads", "1"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        bench_denoise.main(argv)
    text = buf.getvalue()
    print(text, end="")
    rows = []
    lines = text.strip().splitlines()
    start = max(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ccds"))
    for ln in lines[start + 1:]:
        f = ln.split()
        if len(f) < 12:
            continue
        rows.append({"workers": int(f[3]), "torch_threads": int(f[5]), "load_s": float(f[8]),
                     "seconds": float(f[9]), "mpix_per_s": float(f[10]),
                     "peak_rss_mb": float(f[11]), "mpix": float(f[1])})
    if not rows:
        raise RuntimeError("could not parse bench_denoise output:\n" + text)
    return rows


def bench_network_only(chunk: int = 1024, threads=(1, 2), depth: int = 2,
                       channels: int = 32, device: str = "cpu", repeat: int = 2) -> list[dict]:
    """The network alone on one (chunk + 2·halo)² block in this process, by the denoise
    stage's own per-block path: the per-process cached model (:func:`get_model`: the
    optimised TorchScript copy on CPU unless ``PAUSDENOISE_CPU_OPTIMISE=0``) and
    :func:`predict_block` with the stage's default tiling. No Zarr, no normalisation, no
    dask. Mpix/s of the chunk's core pixels (what the stage delivers per block), best of
    ``repeat``; the end-to-end rate divided by this one is the share of time in the network.
    """
    import numpy as np
    import torch

    from pausdenoise.denoise import DenoiseConfig, ModelRef, get_model, predict_block
    from pausdenoise.n2v.unet import UNet, UNetConfig

    torch.manual_seed(0)
    ref = ModelRef.from_model(UNet(UNetConfig(depth=depth, base_channels=channels)))
    model = get_model(ref, device)
    halo = ref.load("cpu").halo()
    side = chunk + 2 * halo
    x = np.random.default_rng(0).standard_normal((side, side)).astype(np.float32)
    cfg = DenoiseConfig(device=device)
    backend = getattr(model, "backend", "eager")
    old = torch.get_num_threads()
    rows = []
    try:
        for t in threads:
            torch.set_num_threads(t)
            predict_block(model, x[:256, :256], halo=halo, tile_size=cfg.tile_size,
                          batch_size=cfg.batch_size)  # warm-up (TorchScript profiling runs)
            best = float("inf")
            for _ in range(repeat):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                predict_block(model, x, halo=halo, tile_size=cfg.tile_size,
                              batch_size=cfg.batch_size)
                if device == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            rows.append({"threads": t, "seconds": best, "mpix_per_s": chunk * chunk / 1e6 / best,
                         "block": side, "halo": halo, "backend": backend})
            print(f"network only: {side}^2 block ({chunk}^2 core), {t} torch thread(s), "
                  f"{device} ({backend}): {best:.1f} s = {rows[-1]['mpix_per_s']:.3f} Mpix/s",
                  flush=True)
    finally:
        torch.set_num_threads(old)
    return rows


def bench_photometry_rates(n_sources: int, workers=(1, 2), repeat: int = 2) -> dict:
    import bench_photometry as bp

    from pausdenoise.photometry import PhotometryConfig, measure_frame

    image, mask, cat = bp.make_frame(n_sources)
    cfg = PhotometryConfig(pixel_scale=bp.PIXEL_SCALE)
    t = bp.best_time(lambda: measure_frame(image, mask, cat, cfg, gain=bp.GAIN), repeat)
    out = {"in_process": n_sources / t, "dask": {}}
    print(f"photometry in-process: {n_sources} sources in {t:.2f} s = {n_sources / t:,.0f} "
          "sources/s", flush=True)
    for w in workers:
        rate, wall, task = bp.dask_rate(w, n_sources, repeat)
        out["dask"][w] = rate
        print(f"photometry dask {w} worker(s): {rate:,.0f} sources/s (wall {wall:.2f} s, "
              f"slowest task {task:.2f} s)", flush=True)
    return out


# ----------------------------------------------------------------------------- table


def _eff(r1, r2, w2=2):
    if r1 is None or r2 is None or not r1:
        return "–"
    return f"{r2 / (w2 * r1):.2f}"


def _f(v, fmt="{:,.3g}"):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return fmt.format(v)


def derive_exposures_per_hour(rates_by_w: dict[int, dict]) -> dict[int, float | None]:
    """Exposures/hour for one full PAUCam exposure with the rates measured at each worker
    count (aggregate rates, so the plan uses one 'worker' carrying them)."""
    from pausdenoise.plan import exposures_per_hour, plan_run

    out = {}
    for w, rates in rates_by_w.items():
        rep = plan_run(1, n_workers=1, gpus=0, rates=rates,
                       stages=("ingest", "denoise", "photometry", "compare"),
                       **PAUS_EXPOSURE)
        out[w] = exposures_per_hour(rep)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a 2-core machine")
    p.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["ingest", "train", "denoise", "network", "photometry", "compare",
                            "memory"])
    args = p.parse_args(argv)
    q = args.quick
    sizes = {
        "ingest_ccds": 2 if q else 8,
        "train": dict(batch=16, epochs=2, steps=4) if q else dict(batch=64, epochs=3, steps=20),
        "denoise_shape": (2048, 2048) if q else (4096, 2048),
        "photometry_sources": 5000 if q else 20000,
        "compare_sources": 50_000 if q else 200_000,
        "memory_ccds": (1, 2) if q else (1, 4, 16),
    }
    cmd = "python " + " ".join(shlex.quote(a) for a in [
        "benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    info = machine_info()
    gpu = cuda_available()
    started = _dt.datetime.now().astimezone()
    load_start = _load()
    print(f"# run_all {started:%Y-%m-%d %H:%M %Z}: {info['nproc']} cores, {info['cpu_model']}, "
          f"load {load_start}; CUDA {'yes' if gpu else 'no'}", flush=True)
    res: dict = {"machine": info, "cuda": gpu, "sizes": sizes, "command": cmd}
    t_all = time.perf_counter()

    if "ingest" not in args.skip:
        import bench_ingest

        res["ingest"] = bench_ingest.run(sizes["ingest_ccds"], workers=(1, 2))
    if "train" not in args.skip:
        import bench_train

        res["train"] = bench_train.run(threads=(1, 2), **sizes["train"])
        if gpu:
            res["train_gpu"] = bench_train.run(threads=(1,), device="cuda", **sizes["train"])
    if "denoise" not in args.skip:
        res["denoise"] = bench_denoise_e2e(*sizes["denoise_shape"])
        if gpu:
            res["denoise_gpu"] = bench_denoise_e2e(*sizes["denoise_shape"], device="cuda",
                                                   workers=(1,))
    if "network" not in args.skip:
        res["network"] = bench_network_only()
        if gpu:
            res["network_gpu"] = bench_network_only(threads=(1,), device="cuda")
    if "photometry" not in args.skip:
        res["photometry"] = bench_photometry_rates(sizes["photometry_sources"])
    if "compare" not in args.skip:
        import bench_compare

        res["compare"] = bench_compare.run(sizes["compare_sources"], 4, (1, 2), repeat=2)
    if "memory" not in args.skip:
        import bench_memory

        res["memory"] = bench_memory.run(sizes["memory_ccds"], n_workers=2)
    load_end = _load()
    res["load_start"], res["load_end"] = load_start, load_end
    res["seconds"] = time.perf_counter() - t_all

    table, rates_by_w = build_table(res, gpu)
    res["rates_by_workers"] = rates_by_w
    header = (f"machine: {info['nproc']} cores ({info['cpu_model']}), {info['memory_gb']} GiB, "
              f"{info['platform']}, Python {info['python']}; CUDA: "
              f"{'available' if gpu else 'absent'}\n"
              f"load average (1, 5, 15 min): {load_start} at start, {load_end} at end; "
              f"all benchmarks took {res['seconds'] / 60:.1f} min\ncommand: `{cmd}`")
    print()
    print(header)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    if not args.no_append:
        section = (f"\n## run_all {started:%Y-%m-%d %H:%M %Z}{' (quick)' if q else ''}\n\n"
                   + header.replace("\n", "  \n") + "\n\n" + table + "\n\n" + details(res)
                   + "\n")
        with open(args.results, "a") as fh:
            fh.write(section)
        print(f"appended to {args.results}")
    return 0


def build_table(res: dict, gpu: bool) -> tuple[str, dict]:
    """Markdown table of the rates, and the aggregate rates per worker count for the plan."""
    rows = []
    rates = {1: {}, 2: {}}

    def add(metric, v1, v2, note, fmt="{:,.3g}"):
        eff = "–" if isinstance(v1, str) else _eff(v1, v2)
        rows.append(f"| {metric} | {_f(v1, fmt)} | {_f(v2, fmt)} | {eff} | {note} |")

    nog = "not measured (no GPU)"
    if "ingest" in res:
        by = {r["workers"]: r for r in res["ingest"]}
        r0 = res["ingest"][0]
        add("ingest MB/s (FITS image+mask in)", by.get(1, {}).get("mb_per_s"),
            by.get(2, {}).get("mb_per_s"),
            f"{r0['ccds']} CCDs 4096×2048, stored/raw {r0['compression_ratio']:.2f}")
        read = max(r["read_mb_per_s"] for r in res["ingest"])
        add("store read MB/s (stored bytes, 1 process)", read, None,
            "decompression of image+mask, sync scheduler, best read-back")
        for w in (1, 2):
            if w in by:
                rates[w]["ingest_mb_s"] = by[w]["mb_per_s"]
                rates[w]["store_read_mb_s"] = read * w
    if "train" in res:
        by = {r["threads"]: r for r in res["train"]}
        r0 = res["train"][0]
        add("training patches/s (CPU, torch threads)", by.get(1, {}).get("patches_per_s"),
            by.get(2, {}).get("patches_per_s"),
            f"depth {r0['depth']}/{r0['channels']} ch, {r0['patch']}² × {r0['batch']}, "
            f"{r0['steps']} steps, 1 process", "{:,.3g}")
    add("training patches/s (GPU)", res["train_gpu"][0]["patches_per_s"] if "train_gpu" in res
        else nog, None, "")
    if "denoise" in res:
        by = {r["workers"]: r for r in res["denoise"]}
        r0 = res["denoise"][0]
        add("denoise Mpix/s end to end (zarr→zarr)", by.get(1, {}).get("mpix_per_s"),
            by.get(2, {}).get("mpix_per_s"),
            f"1 frame {r0['mpix']:.1f} Mpix, chunks 1024², depth 2/32 ch, 1 dask + "
            f"{r0['torch_threads']} torch thread(s)/worker; "
            f"peak RSS/worker {max(r['peak_rss_mb'] for r in res['denoise']):.0f} MB")
        for w in (1, 2):
            if w in by:
                rates[w]["denoise_mpix_s"] = by[w]["mpix_per_s"]
    if "network" in res:
        by = {r["threads"]: r for r in res["network"]}
        add("denoise Mpix/s network only (torch threads)", by.get(1, {}).get("mpix_per_s"),
            by.get(2, {}).get("mpix_per_s"),
            f"stage's predict_block ({res['network'][0].get('backend', 'eager')} model) on one "
            f"{res['network'][0]['block']}² block (1024² core), in-process")
        if "denoise" in res:
            e2e = {r["workers"]: r for r in res["denoise"]}.get(1, {}).get("mpix_per_s")
            net = by.get(1, {}).get("mpix_per_s")
            if e2e and net:
                add("denoise: share of time in the network (1 worker, 1 thread)", e2e / net,
                    None, "end-to-end rate ÷ network-only rate; the rest is Zarr read/"
                    "decompress, normalisation, halo exchange, scheduling and Zarr write",
                    "{:.2f}")
    add("denoise Mpix/s (GPU, end to end)", res["denoise_gpu"][0]["mpix_per_s"]
        if "denoise_gpu" in res else nog, None, "")
    if "photometry" in res:
        ph = res["photometry"]
        add("photometry sources/s (dask workers)", ph["dask"].get(1), ph["dask"].get(2),
            f"measure_frame, {res['sizes']['photometry_sources']} sources/frame; in-process "
            f"1 core: {ph['in_process']:,.0f}/s")
        for w in (1, 2):
            if w in ph["dask"]:
                rates[w]["photometry_sources_s"] = ph["dask"][w]
    if "compare" in res:
        pd_row = next(r for r in res["compare"] if r["mode"].startswith("pandas"))
        dk = {r["workers"]: r for r in res["compare"] if r["mode"].startswith("dask")}
        add("compare pairs/s (pandas, 1 process)", pd_row["pairs_per_s"], None,
            f"{pd_row['pairs']:,} pairs; widen + make_pairs + summarise")
        add("compare pairs/s (dask join, workers)", dk.get(1, {}).get("pairs_per_s"),
            dk.get(2, {}).get("pairs_per_s"), "make_pairs on dask DataFrames, 8 partitions")
        for w in (1, 2):
            rates[w]["compare_pairs_s"] = pd_row["pairs_per_s"]  # the stage runs pandas
    if "memory" in res:
        for r in res["memory"]:
            add(f"peak RSS MB/worker, {r['ccds']} CCD(s) 4096×2048 (2 workers)",
                r["peak_rss_mb_max"], None,
                f"tiny net depth {r['depth']}/{r['channels']} ch; VmHWM {r['vmhwm_mb_max']:.0f} "
                f"MB; before {r['baseline_mb']:.0f} MB; {r['mpix_per_s']:.2f} Mpix/s",
                "{:,.0f}")
    need = {"ingest_mb_s", "denoise_mpix_s", "photometry_sources_s", "compare_pairs_s"}
    usable = {w: r for w, r in rates.items() if need <= set(r)}
    if usable:
        eph = derive_exposures_per_hour(usable)
        add("end-to-end exposures/hour (18 CCDs 4096×2048)", eph.get(1), eph.get(2),
            "derived: ingest + denoise + photometry (2000 src/CCD × raw+denoised) + compare "
            "(4 exp/source); training excluded", "{:,.2f}")
    add("end-to-end exposures/hour (GPU)", nog if not gpu else "see GPU rows", None, "")
    head = ("| metric | 1 worker | 2 workers | efficiency 2w/(2·1w) | notes |\n"
            "|---|---:|---:|---:|---|")
    return head + "\n" + "\n".join(rows), rates


def details(res: dict) -> str:
    """The raw per-run numbers, for the record."""
    keep = {k: v for k, v in res.items()
            if k in {"ingest", "train", "denoise", "network", "photometry", "compare",
                     "memory", "sizes", "rates_by_workers", "train_gpu", "denoise_gpu",
                     "network_gpu"}}
    return ("<details><summary>raw numbers (JSON)</summary>\n\n```json\n"
            + json.dumps(keep, indent=1, default=lambda o: round(o, 4)
                         if isinstance(o, float) else str(o))
            + "\n```\n</details>")


if __name__ == "__main__":
    sys.exit(main())
