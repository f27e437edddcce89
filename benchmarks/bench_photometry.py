"""Throughput of forced photometry on a PAUCam-sized CCD image (4096 × 2048 float32).

Prints sources/s for
  * pausdenoise ``measure_frame`` (full recipe: exact elliptical aperture sums with masks,
    30–45 px annulus, 3σ/2-iteration clipping, errors, calibration), in one process and on
    a dask ``LocalCluster`` of 1 and 2 single-threaded worker processes (one frame per task);
  * its two halves alone (``aperture_sums``, ``annulus_stats``);
  * the per-source photutils loop of the PAUS analyses (EllipticalAperture +
    aperture_photometry + ApertureStats on a CircularAnnulus with SigmaClip), on a subset;
  * SEP's ``sum_ellipse`` (exact overlap, aperture sums only, no annulus statistics).

Usage::

    python benchmarks/bench_photometry.py [--sources 5000] [--loop-sources 200]
                                          [--workers 1,2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import pandas as pd

NY, NX = 4096, 2048
PIXEL_SCALE = 0.265
GAIN = 0.65


def make_frame(n_sources: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Flat sky + Gaussian noise, 1 % masked pixels and two bad columns, PAUS-like
    elliptical apertures (a = 0.6–1.6 arcsec) at random positions with a bright core."""
    rng = np.random.default_rng(seed)
    image = rng.normal(1000.0, 30.0, (NY, NX)).astype(np.float32)
    mask = np.zeros((NY, NX), np.uint8)
    mask[rng.random((NY, NX)) < 0.01] = 2
    mask[:, [311, 1500]] = 1
    x = rng.uniform(0, NX - 1, n_sources)
    y = rng.uniform(0, NY - 1, n_sources)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    image[iy, ix] += rng.uniform(100, 5000, n_sources).astype(np.float32)
    a = rng.uniform(0.6, 1.6, n_sources)
    cat = pd.DataFrame(
        {
            "ref_id": np.arange(n_sources, dtype=np.int64),
            "expnum": 1,
            "ccd": 1,
            "band": "NB455",
            "I_auto": rng.uniform(17, 23, n_sources),
            "aperture_x": x,
            "aperture_y": y,
            "aperture_a": a,
            "aperture_b": a * rng.uniform(0.5, 1.0, n_sources),
            "aperture_theta": rng.uniform(-90, 90, n_sources),
        }
    )
    return image, mask, cat


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def photutils_loop(image: np.ndarray, mask: np.ndarray, cat: pd.DataFrame) -> None:
    from astropy.stats import SigmaClip
    from photutils.aperture import (
        ApertureStats,
        CircularAnnulus,
        EllipticalAperture,
        aperture_photometry,
    )

    mbool = mask != 0
    clip = SigmaClip(sigma=3.0, maxiters=2)
    for r in cat.itertuples():
        pos = (r.aperture_x, r.aperture_y)
        ap = EllipticalAperture(
            pos,
            r.aperture_a / PIXEL_SCALE,
            r.aperture_b / PIXEL_SCALE,
            theta=-np.deg2rad(r.aperture_theta),
        )
        s = aperture_photometry(image, ap, mask=mbool)["aperture_sum"][0]
        area = ApertureStats(image, ap, mask=mbool).sum_aper_area.value
        st = ApertureStats(image, CircularAnnulus(pos, 30.0, 45.0), mask=mbool, sigma_clip=clip)
        _ = s - area * st.mean


def _worker_make(n: int, seed: int):
    return make_frame(n, seed)


def _worker_measure(frame, cfg):
    from pausdenoise.photometry import measure_frame

    image, mask, cat = frame
    t0 = time.perf_counter()
    measure_frame(image, mask, cat, cfg, gain=GAIN)
    return time.perf_counter() - t0


def dask_rate(n_workers: int, n_sources: int, repeat: int) -> tuple[float, float, float]:
    """Sources/s with ``n_workers`` single-threaded worker processes, one frame per worker
    per round (frames made on the workers beforehand, so no image is shipped). Returns
    (sources/s, best wall seconds, the slowest task's own compute seconds in that round)."""
    from distributed import Client, LocalCluster, wait

    from pausdenoise.photometry import PhotometryConfig

    cfg = PhotometryConfig(pixel_scale=PIXEL_SCALE)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            memory_limit="3GiB",
        ) as cluster,
        Client(cluster) as client,
    ):
        workers = list(client.scheduler_info()["workers"])
        frames = [
            client.submit(_worker_make, n_sources, 10 + i, workers=[w], pure=False)
            for i, w in enumerate(workers)
        ]
        wait(frames)
        best, best_task = np.inf, np.nan
        for _ in range(repeat):
            t0 = time.perf_counter()
            futs = [
                client.submit(_worker_measure, f, cfg, workers=[w], pure=False)
                for f, w in zip(frames, workers, strict=True)
            ]
            task_times = client.gather(futs)
            wall = time.perf_counter() - t0
            if wall < best:
                best, best_task = wall, max(task_times)
    n = n_sources * n_workers
    return n / best, best, best_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sources", type=int, default=5000)
    p.add_argument("--loop-sources", type=int, default=200)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    from pausdenoise.photometry import (
        PhotometryConfig,
        annulus_stats,
        aperture_sums,
        measure_frame,
    )

    n = args.sources
    image, mask, cat = make_frame(n)
    cfg = PhotometryConfig(pixel_scale=PIXEL_SCALE)
    x, y = cat.aperture_x.to_numpy(), cat.aperture_y.to_numpy()
    a = cat.aperture_a.to_numpy() / PIXEL_SCALE
    b = cat.aperture_b.to_numpy() / PIXEL_SCALE
    th = -np.deg2rad(cat.aperture_theta.to_numpy())

    rows = []

    def add(name: str, nsrc: int, seconds: float, note: str = "") -> None:
        rows.append((name, nsrc, seconds, nsrc / seconds, note))

    t = best_time(lambda: measure_frame(image, mask, cat, cfg, gain=GAIN), args.repeat)
    add("measure_frame (full recipe), in-process", n, t, "1 core")
    t = best_time(lambda: aperture_sums(image, x, y, a, b, th, mask=mask), args.repeat)
    add("  aperture_sums only (exact, masks)", n, t)
    t = best_time(lambda: annulus_stats(image, x, y, r_in=30.0, r_out=45.0, mask=mask), args.repeat)
    add("  annulus_stats only (30-45 px, clip)", n, t)

    sub = cat.iloc[: args.loop_sources]
    t = best_time(lambda: photutils_loop(image, mask, sub), 1)
    add("photutils per-source loop (PAUS style)", len(sub), t, "aperture+annulus")

    try:
        import sep

        data = np.ascontiguousarray(image)
        mbool = mask != 0
        t = best_time(
            lambda: sep.sum_ellipse(data, x, y, a, b, th, r=1.0, mask=mbool, subpix=0),
            args.repeat,
        )
        add("SEP sum_ellipse (sums only, exact)", n, t, "no annulus stats")
        # SEP rescales sums of partly masked apertures by area/(area - masked area), so the
        # agreement check is done without a mask
        s_sep, _, _ = sep.sum_ellipse(data, x, y, a, b, th, r=1.0, subpix=0)
        ours = aperture_sums(image, x, y, a, b, th)["aper_sum"]
        agree = np.nanmax(np.abs(s_sep - ours) / np.abs(ours))
    except ImportError:
        agree = None

    for w in [int(v) for v in args.workers.split(",") if v]:
        rate, t, t_task = dask_rate(w, n, args.repeat)
        add(
            f"measure_frame on dask LocalCluster, {w} worker(s)",
            n * w,
            t,
            f"{w} proc x 1 thr; slowest task computed {t_task:.2f} s",
        )

    loop_rate = next(r[3] for r in rows if r[0].startswith("photutils"))
    print(f"# forced photometry benchmark: {NY}x{NX} float32 image, {n} sources")
    print(
        f"# {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs; best of {args.repeat}"
    )
    print(f"# load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    print(f"{'method':50s} {'sources':>8s} {'seconds':>9s} {'src/s':>10s} {'vs loop':>8s}  note")
    for name, nsrc, sec, rate, note in rows:
        print(f"{name:50s} {nsrc:8d} {sec:9.3f} {rate:10.0f} {rate / loop_rate:7.0f}x  {note}")
    if agree is not None:
        print(f"# SEP vs aperture_sums, max relative difference of the sums: {agree:.1e}")


if __name__ == "__main__":
    main()
