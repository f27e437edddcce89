"""The lag-1 noise correlation measured in small tiles and at the highest spatial frequencies.

The ingest measures each frame's noise correlation twice
(:func:`pausdenoise.noise_model.measure_noise_correlation`: 8 × 8 px tiles with a quadratic
surface removed; :func:`pausdenoise.noise_model.measure_noise_correlation_high_frequency`:
the power spectrum above 0.45 cycles/px) and keeps the tiles' value unless the sources
raise it (:func:`pausdenoise.ingest.noise.choose_noise_correlation`). This benchmark shows
both, and the one in force, on

* simulated crowded fields with known noise (Gaussian stars of σ 1.2, 1.6 and 2.1 px, one
  per 16 px², white noise or noise smoothed by ``[1/4, 1/2, 1/4]`` along x, whose
  lag-1 correlation is 2/3), 512 × 512;
* the 24 real SAAO exposures of a crowded bulge field (header PSF FWHM 4.5–5.2 px), whose
  noise correlation is not known: the structN2V axes the train stage would take from the
  median of each measurement (``train.correlation_threshold`` 0.1);
* the time of each measurement on one 4096 × 2048 frame (the ingest's 2²¹-pixel strips).

Usage (project venv)::

    python benchmarks/bench_noise_correlation.py [--append]

The SAAO frames are read from ``$PAUSDENOISE_REAL_DATA/saao-kb13475`` (by default the
real-data folder the tests use; skipped when absent). ``--append`` adds a dated section to
``benchmarks/RESULTS.md``. Time: ~30 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_training_budget as tb  # the benchmarks' CPU-name helper

from pausdenoise.ingest.noise import CORRELATION_MAX_PIXELS, choose_noise_correlation
from pausdenoise.n2v.config import TrainConfig
from pausdenoise.noise_model import (
    measure_noise_correlation,
    measure_noise_correlation_high_frequency,
)

ROOT = Path(__file__).resolve().parents[1]
SMOOTH = np.array([0.25, 0.5, 0.25])


def crowded(n: int, sigma: float, smooth_x: bool, seed: int) -> np.ndarray:
    """A crowded field of Gaussian stars over a 400 e⁻ sky with noise, e⁻ (gain 1).

    Returns
    -------
    ndarray (n, n)
        Stars (Pareto fluxes from 150 e⁻, one per 16 px²) + sky + noise of variance
        signal + 36 e⁻², smoothed along x by :data:`SMOOTH` when ``smooth_x``.
    """
    rng = np.random.default_rng(seed)
    n_stars = n * n // 16
    canvas = np.zeros((n + 20, n + 20))
    x, y = rng.uniform(0, n + 20, (2, n_stars))
    np.add.at(canvas, (y.astype(int), x.astype(int)), (rng.pareto(1.0, n_stars) + 1) * 150.0)
    scene = ndimage.gaussian_filter(canvas, sigma)[10:-10, 10:-10]
    noise = rng.normal(0.0, 1.0, scene.shape) * np.sqrt(scene + 436.0)
    if smooth_x:
        noise = ndimage.convolve1d(noise, SMOOTH, axis=1) / np.sqrt((SMOOTH ** 2).sum())
    return scene + 400.0 + noise


def _measure(img: np.ndarray, mask: np.ndarray | None = None) -> dict[str, dict]:
    tiles = measure_noise_correlation(img, mask, max_pixels=CORRELATION_MAX_PIXELS)
    high = measure_noise_correlation_high_frequency(img, mask, max_pixels=CORRELATION_MAX_PIXELS)
    x, y, method = choose_noise_correlation(tiles, high)
    return {"tiles": tiles, "high": high, "chosen": {"rho_x": x, "rho_y": y, "method": method}}


def synthetic() -> list[str]:
    """Rows of the simulated table (truth beside the three values)."""
    rows = ["| stars σ (px) | noise | truth ρx / ρy | tiles | high frequencies | in force |",
            "|---:|---|---|---|---|---|"]
    for sigma in (1.2, 1.6, 2.1):
        for smooth in (False, True):
            m = _measure(crowded(512, sigma, smooth, seed=int(10 * sigma) + smooth))
            t, h, c = m["tiles"], m["high"], m["chosen"]
            truth = "0.667 / 0" if smooth else "0 / 0"
            rows.append(f"| {sigma} | {'smoothed along x' if smooth else 'white'} | {truth} | "
                        f"{t['rho_x']:.3f} / {t['rho_y']:.3f} | {h['rho_x']:.3f} / "
                        f"{h['rho_y']:.3f} ± {h['rho_err']:.3f} | {c['rho_x']:.3f} / "
                        f"{c['rho_y']:.3f} ({c['method']}) |")
    return rows


def saao_frames() -> tuple[Path, list[Path]]:
    """Find the real SAAO exposures.

    Returns
    -------
    folder : Path
        ``$PAUSDENOISE_REAL_DATA`` (by default the real-data folder the tests use).
    paths : list of Path
        Its ``saao-kb13475/AKB13475I*.fits``, sorted (empty when absent).
    """
    real = Path(os.environ.get("PAUSDENOISE_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))
    return real, sorted((real / "saao-kb13475").glob("AKB13475I*.fits"))


def saao() -> list[str]:
    """Rows of the SAAO summary (ranges and medians over the 24 frames)."""
    from astropy.io import fits  # why: only the real-frame part reads FITS

    real, paths = saao_frames()
    if not paths:
        return [f"(no SAAO frames under {real.name}/saao-kb13475: skipped)"]
    values: dict[str, list[tuple[float, float]]] = {"tiles": [], "high": [], "chosen": []}
    methods = []
    for path in paths:
        with fits.open(path) as hdul:
            img = hdul[0].data.astype(np.float64)
        mask = ndimage.binary_dilation(img > 60_000.0, iterations=6).astype(np.uint8)
        m = _measure(img, mask)
        for key in values:
            values[key].append((m[key]["rho_x"], m[key]["rho_y"]))
        methods.append(m["chosen"]["method"])
    rows = [f"{len(paths)} frames; in force: "
            + ", ".join(f"{k} {methods.count(k)}" for k in sorted(set(methods))) + "\n",
            "| measurement | ρx range | ρx median | ρy range | ρy median "
            "| struct axes (median > 0.1) |",
            "|---|---|---:|---|---:|---|"]
    names = {"tiles": "tiles (8 × 8 px)", "high": "high frequencies (≥ 0.45 cycles/px)",
             "chosen": "in force"}
    for key, label in names.items():
        v = np.array(values[key])
        med = np.median(v, axis=0)
        axes = TrainConfig(noise_correlation=(float(med[0]), float(med[1]))).struct_axes
        rows.append(f"| {label} | {v[:, 0].min():.2f} – {v[:, 0].max():.2f} | {med[0]:.3f} | "
                    f"{v[:, 1].min():.2f} – {v[:, 1].max():.2f} | {med[1]:.3f} | "
                    f"{axes or 'none'} |")
    return rows


def timing() -> str:
    """Seconds of each measurement on one 4096 × 2048 frame (best of 3)."""
    rng = np.random.default_rng(0)
    img = rng.normal(500.0, 20.0, (4096, 2048))
    out = []
    for name, fn in (("tiles", measure_noise_correlation),
                     ("high frequencies", measure_noise_correlation_high_frequency)):
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            fn(img, max_pixels=CORRELATION_MAX_PIXELS)
            best = min(best, time.perf_counter() - t0)
        out.append(f"{name} {best:.2f} s")
    return "Time on one 4096 × 2048 frame (2²¹ pixels in strips, best of 3): " + ", ".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the three parts; print (and optionally append) the tables.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    int
        Exit status.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--append", action="store_true")
    a = p.parse_args(argv)
    text = ("Simulated crowded fields, 512 × 512:\n\n" + "\n".join(synthetic())
            + "\n\nReal SAAO exposures: " + "\n".join(saao()) + "\n\n" + timing() + "\n")
    print(text)
    if a.append:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "python benchmarks/bench_noise_correlation.py " + " ".join(argv or sys.argv[1:])
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Noise correlation on crowded fields: tiles and high frequencies "
                     f"({now})\n\nmachine: {platform.machine()}, {tb._cpu_name()}\n"
                     f"command: `{cmd.strip()}`\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
