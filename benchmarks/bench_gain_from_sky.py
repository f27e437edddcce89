"""The gain of a single crowded frame without GAIN, from its sky's noise variance.

On a crowded field a frame's own variance-against-signal fit gives far too small a gain
(unresolved stars add variance that grows with the signal), and a fit across exposures needs
at least four exposures of the CCD under different skies. A single frame still measures the
noise variance at its sky level, twice: in small tiles (:func:`pausdenoise.noise_model.
fit_noise_model`, where the unresolved stars add to it) and at the highest spatial
frequencies (:func:`pausdenoise.noise_model.measure_noise_correlation_high_frequency`, where
what is left of the stars' power adds to it). With the read noise each gives the gain
(:func:`pausdenoise.noise_model.gain_from_sky`); without it, the least gain the sky allows.
The ingest puts the combination in force where the frame's own fit lies below that bound
(:func:`pausdenoise.ingest.noise.noise_attrs`, ``gain_source`` ``"sky"``). This benchmark
shows each estimate against the truth on

* simulated crowded fields, 512 × 512 (Gaussian stars of σ 1.2, 1.6 and 2.1 px, one per
  16 px²; skies of 60–1,500 e⁻, gains 1.0–2.0 e⁻/ADU, read noise 5–10 e⁻), and a sparse field
  where the frame's own fit stays in force;
* the 24 real SAAO exposures of a crowded bulge field, one by one, with GAIN and RDNOISE
  taken out (the header's 1.9 e⁻/ADU and 5 e⁻ as the reference; the fit across the 24
  exposures gives 1.77 ± 0.06).

Usage (project venv)::

    python benchmarks/bench_gain_from_sky.py [--append]

The SAAO frames are read from ``$PAUSDENOISE_REAL_DATA/saao-kb13475`` (by default the
real-data folder the tests use; skipped when absent). ``--append`` adds a dated section to
``benchmarks/RESULTS.md``. Time: ~40 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_training_budget as tb  # the benchmarks' CPU-name helper
from bench_noise_correlation import saao_frames

from pausdenoise.ingest.noise import noise_attrs
from pausdenoise.noise_model import gain_from_sky

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # (sky e⁻, gain e⁻/ADU, read noise e⁻)
    (60.0, 1.0, 10.0), (150.0, 1.6, 8.0), (400.0, 1.6, 5.0), (1500.0, 2.0, 5.0)]


def observe(n: int, sigma: float, n_stars: int, sky_e: float, gain: float, rn_e: float,
            seed: int) -> np.ndarray:
    """A field of Gaussian stars under a sky, with Poisson and read noise, ADU.

    Returns
    -------
    ndarray (n, n)
        Stars (Pareto fluxes from 150 e⁻, σ ``sigma`` px) + sky, Poisson-sampled, plus
        Gaussian read noise, divided by the gain.
    """
    rng = np.random.default_rng(seed)
    scene = np.zeros((n + 20, n + 20))
    x, y = rng.uniform(0, n + 20, (2, n_stars))
    np.add.at(scene, (y.astype(int), x.astype(int)), (rng.pareto(1.0, n_stars) + 1) * 150.0)
    scene = ndimage.gaussian_filter(scene, sigma)[10:-10, 10:-10]
    e = rng.poisson(scene + sky_e) + rng.normal(0.0, rn_e, scene.shape)
    return e / gain


def _estimates(img: np.ndarray, rn_e: float | None, saturate: float | None) -> dict[str, Any]:
    """Each gain estimate of one frame, as the ingest measures it (no header gain).

    Returns
    -------
    dict
        ``own`` (the frame's own fit), ``tiles`` and ``hf`` (each sky variance with the read
        noise, or without it when ``rn_e`` is None), ``in_force`` and ``source`` (the
        ingest's choice with ``rdnoise`` = ``rn_e`` in the header).
    """
    attrs, _ = noise_attrs(img, np.zeros(img.shape, np.uint8),
                           {"gain": None, "rdnoise": rn_e, "saturate": saturate}, "auto",
                           "bench")
    rn = rn_e or 0.0
    return {"own": attrs["gain_fitted"],
            "tiles": gain_from_sky(attrs["sky_fitted_adu"], attrs["sky_var_fitted_adu2"], rn),
            "hf": gain_from_sky(attrs["sky_hf_adu"], attrs["sky_var_hf_adu2"], rn),
            "in_force": attrs["gain"], "source": attrs["gain_source"]}


def synthetic() -> list[str]:
    """Rows of the simulated table: each estimate over the true gain."""
    rows = ["| field | sky [e⁻] | gain | rn [e⁻] | PSF σ [px] | own fit | tiles, rn 0 | "
            "high freq., rn 0 | in force, rn 0 (source) | tiles, rn | high freq., rn | "
            "in force, rn (source) |", "|---|---:|---:|---:|---:|" + "---:|" * 7]
    for name, n_stars, sigmas in (("crowded", 16000, (1.2, 1.6, 2.1)), ("sparse", 200, (1.6,))):
        for sky, gain, rn in CASES:
            for sigma in sigmas:
                img = observe(512, sigma, n_stars, sky, gain, rn, seed=3)
                bare, known = _estimates(img, None, None), _estimates(img, rn, None)
                cells = [f"{bare['own'] / gain:.3f}", f"{bare['tiles'] / gain:.3f}",
                         f"{bare['hf'] / gain:.3f}",
                         f"{bare['in_force'] / gain:.3f} ({bare['source']})",
                         f"{known['tiles'] / gain:.3f}", f"{known['hf'] / gain:.3f}",
                         f"{known['in_force'] / gain:.3f} ({known['source']})"]
                rows.append(f"| {name} | {sky:g} | {gain:g} | {rn:g} | {sigma:g} | "
                            + " | ".join(cells) + " |")
    return rows


def saao() -> list[str]:
    """Rows of the SAAO table: each estimate over the header's gain, frame by frame."""
    from astropy.io import fits  # why: only the real-frame part reads FITS

    real, paths = saao_frames()
    if not paths:
        return [f"(no SAAO frames under {real.name}/saao-kb13475: skipped)"]
    est: dict[str, list[float]] = {}
    sources: list[str] = []
    for path in paths:
        with fits.open(path) as hdul:
            img = hdul[0].data.astype(np.float64)
            header = hdul[0].header
            gain, rn = float(header["GAIN"]), float(header["RDNOISE"])
        for label, rn_e in (("rn 0", None), ("rn 5", rn)):
            e = _estimates(img, rn_e, 65_000.0)
            for key in ("own", "tiles", "hf", "in_force"):
                est.setdefault(f"{key}, {label}", []).append(e[key] / gain)
            sources.append(e["source"])
    rows = [f"{len(paths)} frames, each alone (no fit across exposures), GAIN/RDNOISE taken "
            f"out; gain in force from: "
            + ", ".join(f"{k} {sources.count(k) // 2}" for k in sorted(set(sources)))
            + "; ratios to the header's gain\n",
            "| estimate | min | median | max |", "|---|---:|---:|---:|"]
    labels = {"own": "the frame's own fit", "tiles": "small tiles' sky variance",
              "hf": "high frequencies' sky variance", "in_force": "in force"}
    for label in ("rn 0", "rn 5"):
        for key, text in labels.items():
            if key == "own" and label != "rn 0":
                continue
            v = np.array(est[f"{key}, {label}"])
            extra = "" if key == "own" else (" (read noise 0)" if label == "rn 0"
                                              else " (RDNOISE 5 e⁻ kept)")
            rows.append(f"| {text}{extra} | {v.min():.3f} | {np.median(v):.3f} | "
                        f"{v.max():.3f} |")
    return rows


def timing() -> str:
    """Seconds of the ingest's noise measurements on one 4096 × 2048 frame (best of 3)."""
    rng = np.random.default_rng(0)
    img = rng.normal(500.0, 20.0, (4096, 2048))
    mask = np.zeros(img.shape, np.uint8)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        noise_attrs(img, mask, {"gain": None, "rdnoise": None, "saturate": None}, "auto", "t")
        best = min(best, time.perf_counter() - t0)
    return (f"Time of a frame's noise measurements at ingest (own fit, both correlations and "
            f"both sky variances) on one 4096 × 2048 frame, best of 3: {best:.2f} s")


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
    text = ("Simulated fields, 512 × 512, each estimate over the true gain (crowded: one star "
            "per 16 px²; sparse: 200 stars):\n\n" + "\n".join(synthetic())
            + "\n\nReal SAAO exposures: " + "\n".join(saao()) + "\n\n" + timing() + "\n")
    print(text)
    if a.append:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "python benchmarks/bench_gain_from_sky.py " + " ".join(argv or sys.argv[1:])
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## The gain of a single crowded frame from its sky's variance "
                     f"({now})\n\nmachine: {platform.machine()}, {tb._cpu_name()}\n"
                     f"command: `{cmd.strip()}`\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
