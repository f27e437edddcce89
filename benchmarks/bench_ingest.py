"""Throughput of the ingest stage: PAUS-layout FITS (image + mask) → Zarr store.

Writes ``--ccds`` synthetic PAUCam frames (float32 image with sky, noise and stars, uint8
mask with two bad columns, every required PAUS header keyword) into a temporary folder,
then for each worker count runs :func:`pausdenoise.ingest.ingest` (``force=True``, so every
frame is read, hashed, converted, compressed and written) on a ``distributed.LocalCluster``
of single-threaded worker processes. The rate is the size of the input FITS files
(image + mask) divided by the wall time of ``ingest``. Afterwards the frames are read back
from the store in this one process (synchronous scheduler, best of 2) to give the
read/decompression rate of one core, and the stored/raw size of image + mask (the
compression ratio).

Usage::

    python benchmarks/bench_ingest.py --quick            # 2 CCDs of 4096x2048, 1 and 2 workers
    python benchmarks/bench_ingest.py --ccds 18 --workers 1 2 4 8

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


def write_fits(root: Path, n_ccds: int, ny: int, nx: int, expnum: int = 1) -> int:
    """PAUS-layout FITS files of ``n_ccds`` CCDs; returns their total size in bytes."""
    import numpy as np
    from astropy.io import fits

    from pausdenoise.paus_layout import image_path, mask_path

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    total = 0
    for ccd in range(1, n_ccds + 1):
        img = (300.0 + 15.0 * rng.standard_normal((ny, nx))).astype(np.float32)
        ys, xs = rng.integers(0, ny, 500), rng.integers(0, nx, 500)
        img[ys, xs] += rng.uniform(50, 5000, 500).astype(np.float32)
        mask = np.zeros((ny, nx), np.uint8)
        mask[:, [nx // 7, nx // 2]] = 1
        h = fits.Header()
        h.update({"EXPNUM": expnum, "CCD": ccd, "FILTER": "NB455", "EXPTIME": 70.0,
                  "GAIN": 0.65, "RDNOISE": 5.0, "ZP": 1.0, "ZPERR": 0.01, "SATURATE": 60000.0})
        ip, mp = image_path(root, expnum, ccd), mask_path(root, expnum, ccd)
        fits.PrimaryHDU(img, header=h).writeto(ip, overwrite=True)
        mh = fits.Header()
        mh.update({"EXPNUM": expnum, "CCD": ccd})
        fits.PrimaryHDU(mask, header=mh).writeto(mp, overwrite=True)
        total += ip.stat().st_size + mp.stat().st_size
    return total


def run(n_ccds: int = 2, ny: int = 4096, nx: int = 2048, workers: tuple[int, ...] = (1, 2),
        chunk: int = 1024, tmpdir: Path | None = None, verbose: bool = True) -> list[dict]:
    """Time ingest for each worker count. Returns one dict per run with ``workers``,
    ``ccds``, ``mb`` (input FITS, 1e6 bytes), ``seconds``, ``mb_per_s``, ``store_mb``."""
    import distributed

    from pausdenoise import store
    from pausdenoise.ingest import IngestConfig, ingest

    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_", dir=tmpdir))
    rows = []
    try:
        fits_dir = tmp / "fits"
        t0 = time.perf_counter()
        nbytes = write_fits(fits_dir, n_ccds, ny, nx)
        if verbose:
            print(f"# {n_ccds} CCD(s) of {ny}x{nx}: {nbytes / 1e6:.0f} MB of FITS written in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        cfg = IngestConfig(chunks=(chunk, chunk), force=True, progress=False)
        for w in workers:
            path = tmp / f"store_{w}.zarr"
            with (
                distributed.LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                         dashboard_address=None, memory_limit=0) as cluster,
                distributed.Client(cluster) as client,
            ):
                t = time.perf_counter()
                rep = ingest(fits_dir, path, cfg, client=client)
                secs = time.perf_counter() - t
            if rep.failed or rep.fatal or len(rep.ingested) != n_ccds:
                raise RuntimeError(f"ingest benchmark failed: {rep.summary()}")
            store_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            frames = store.list_frames(path)
            stored = sum(
                p.stat().st_size for f in frames for a in ("image", "mask")
                for p in (path / store.FRAMES_GROUP / f / a).rglob("*") if p.is_file()
            )
            read_s = float("inf")
            for _ in range(2):  # read back in this process: decompression rate of one core
                t = time.perf_counter()  # (best of 2: the first pays imports and cold cache)
                for f in frames:
                    store.open_frame(path, f, "image").compute(scheduler="sync")
                    store.open_frame(path, f, "mask").compute(scheduler="sync")
                read_s = min(read_s, time.perf_counter() - t)
            rows.append({"workers": w, "ccds": n_ccds, "mb": nbytes / 1e6, "seconds": secs,
                         "mb_per_s": nbytes / 1e6 / secs, "store_mb": store_bytes / 1e6,
                         "frames": len(frames), "compression_ratio": stored / nbytes,
                         "read_mb_per_s": stored / 1e6 / read_s,
                         "read_raw_mb_per_s": nbytes / 1e6 / read_s})
            if verbose:
                r = rows[-1]
                print(f"ingest {w} worker(s): {r['mb']:.0f} MB in {secs:.1f} s = "
                      f"{r['mb_per_s']:.1f} MB/s (store {r['store_mb']:.0f} MB, "
                      f"image+mask stored/raw "
                      f"{r['compression_ratio']:.2f}); read back in 1 process: "
                      f"{r['read_mb_per_s']:.0f} MB/s stored = {r['read_raw_mb_per_s']:.0f} "
                      f"MB/s raw", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 CCDs, 1 and 2 workers")
    p.add_argument("--ccds", type=int, default=4)
    p.add_argument("--ny", type=int, default=4096)
    p.add_argument("--nx", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    a = p.parse_args(argv)
    if a.quick:
        a.ccds, a.workers = 2, [1, 2]
    run(a.ccds, a.ny, a.nx, tuple(a.workers), a.chunk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
