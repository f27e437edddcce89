"""Throughput of the profile-weighted forced photometry beside the aperture engine.

On a PAUCam-sized CCD image (4096 × 2048 float32, or ``--shape``: flat sky + Gaussian
noise, 1 % masked pixels, two bad columns) with a catalogue of ``--sources`` sources at
random positions (default 5000 per CCD, as ``bench_photometry.py``; a smaller ``--shape``
with as many sources is a crowded field): 20 % stars, the rest bulge + disk galaxies with
the simulation's size distribution (median hlr 0.6" at i = 20, −0.08 dex/mag, 0.15 dex
scatter; i uniform in 18–23), axis ratios 0.3–1, and PAUS apertures
``1.5 × (hlr ⊕ FWHM/2)``, times ``--aperture-scale`` (1: PAUS; larger: apertures that
reach more neighbours). Moffat PSF β = 3, FWHM 0.9" (3.4 px).

Prints sources/s on one core (one process, BLAS single-threaded) for
  * ``measure_frame`` with the aperture recipe only (``profile=False``),
  * ``measure_frame`` with both (aperture + profile columns),
  * the profile kernel alone (``usable_pixels`` + ``intrinsic_shapes`` + ``profile_fluxes``,
    with the annulus sky taken as given),
and the share of sources fitted jointly with overlapping neighbours. ``--max-group`` sets
``photometry.profile_max_group``: a very large one solves every overlap group as one dense
system, the default solves groups above it in tiles.

Usage::

    python benchmarks/bench_profile_photometry.py [--sources 5000] [--repeat 3] \
        [--aperture-scale 1] [--shape 4096 2048] [--max-group 1000]
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
FWHM_ARCSEC = 0.9


def make_frame(n_sources: int, seed: int = 0, aperture_scale: float = 1.0,
               shape: tuple[int, int] = (NY, NX)) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Noisy flat-sky frame with masks, and a catalogue with profile columns."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    image = rng.normal(1000.0, 30.0, (ny, nx)).astype(np.float32)
    mask = np.zeros((ny, nx), np.uint8)
    mask[rng.random((ny, nx)) < 0.01] = 2
    mask[:, [nx * 311 // NX, nx * 1500 // NX]] = 1
    x = rng.uniform(0, nx - 1, n_sources)
    y = rng.uniform(0, ny - 1, n_sources)
    mag = rng.uniform(18.0, 23.0, n_sources)
    star = rng.random(n_sources) < 0.2
    hlr = 0.6 * 10 ** (-0.08 * (mag - 20.0) + rng.normal(0.0, 0.15, n_sources))
    hlr = np.where(star, 0.0, hlr)
    q = np.where(star, 1.0, rng.uniform(0.3, 1.0, n_sources))
    half = FWHM_ARCSEC / 2.0
    a = aperture_scale * 1.5 * np.hypot(hlr / np.sqrt(q), half)
    b = aperture_scale * 1.5 * np.hypot(hlr * np.sqrt(q), half)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    image[iy, ix] += rng.uniform(100, 5000, n_sources).astype(np.float32)
    cat = pd.DataFrame({
        "ref_id": np.arange(n_sources, dtype=np.int64), "expnum": 1, "ccd": 1,
        "band": "NB455", "I_auto": mag, "aperture_x": x, "aperture_y": y,
        "aperture_a": a, "aperture_b": b, "aperture_theta": rng.uniform(-90, 90, n_sources),
        "profile_hlr": hlr, "profile_q": q,
        "profile_bulge_frac": np.where(star, 0.0, rng.uniform(0.0, 1.0, n_sources)),
    })
    return image, mask, cat


def best_time(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` calls, seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def profile_kernel(image, mask, cat, cfg, psf, sky):
    """The profile estimator alone, sky given (what measure_frame adds to the aperture run)."""
    from pausdenoise.photometry.apertures import _aperture_geometry
    from pausdenoise.photometry.profile import intrinsic_shapes, profile_fluxes, usable_pixels

    x, y, a, b, theta = _aperture_geometry(cat, cfg)
    *shapes, _ = intrinsic_shapes(cat, a, b, psf.fwhm_px, cfg)
    good, sat = usable_pixels(image, mask, cfg.bad_mask_bits, None)
    pixels = {"image": image.ravel(), "good": good.ravel(), "sat": sat.ravel(),
              "shape": image.shape}
    return profile_fluxes(pixels, x, y, theta, tuple(shapes), fwhm_px=psf.fwhm_px,
                          beta=psf.beta, sky=sky, gain=GAIN, config=cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sources", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--aperture-scale", type=float, default=1.0)
    p.add_argument("--max-group", type=int, default=None,
                   help="photometry.profile_max_group (default: the configured default)")
    p.add_argument("--shape", type=int, nargs=2, default=[NY, NX], metavar=("NY", "NX"),
                   help="image size in px")
    args = p.parse_args()

    from pausdenoise.photometry import PhotometryConfig, measure_frame
    from pausdenoise.psf import PsfEstimate

    n = args.sources
    image, mask, cat = make_frame(n, aperture_scale=args.aperture_scale,
                                  shape=tuple(args.shape))
    psf = PsfEstimate(fwhm_px=FWHM_ARCSEC / PIXEL_SCALE, beta=3.0, n_stars=0, source="header")
    cfg = PhotometryConfig(pixel_scale=PIXEL_SCALE)
    if args.max_group is not None:
        cfg = cfg.model_copy(update={"profile_max_group": args.max_group})
    cfg_aper = PhotometryConfig(pixel_scale=PIXEL_SCALE, profile=False)
    both = measure_frame(image, mask, cat, cfg, gain=GAIN, psf=psf)  # warms the caches
    sky = (both.bkg.to_numpy(), both.bkg_std.to_numpy() ** 2,
           both.bkg_std.to_numpy() ** 2 / both.bkg_n.to_numpy())
    rows = []
    t = best_time(lambda: measure_frame(image, mask, cat, cfg_aper, gain=GAIN), args.repeat)
    rows.append(("measure_frame, aperture recipe only", t))
    t = best_time(lambda: measure_frame(image, mask, cat, cfg, gain=GAIN, psf=psf), args.repeat)
    rows.append(("measure_frame, aperture + profile", t))
    t = best_time(lambda: profile_kernel(image, mask, cat, cfg, psf, sky), args.repeat)
    rows.append(("  profile estimator alone (sky given)", t))
    res = profile_kernel(image, mask, cat, cfg, psf, sky)

    print(f"# profile-weighted photometry benchmark: {args.shape[0]}x{args.shape[1]} float32 "
          f"image, {n} sources, PSF FWHM {psf.fwhm_px:.2f} px, "
          f"apertures x {args.aperture_scale:g}, profile_max_group {cfg.profile_max_group}")
    print(f"# {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs; one process, best of {args.repeat}")
    print(f"# load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    print(f"{'method':42s} {'sources':>8s} {'seconds':>9s} {'src/s/core':>11s}")
    for name, sec in rows:
        print(f"{name:42s} {n:8d} {sec:9.3f} {n / sec:11.0f}")
    grouped = res["group_size"] > 1
    print(f"# sources fitted jointly with neighbours: {grouped.mean():.1%} "
          f"(largest group {res['group_size'].max()}); "
          f"flagged rows (profile): {(both.flags_prof != 0).mean():.1%}")


if __name__ == "__main__":
    main()
