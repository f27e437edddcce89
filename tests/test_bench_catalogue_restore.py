"""``benchmarks/bench_catalogue_restore.py``: the restoration scored against a known truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SKY, NOISE, SCALE = 100.0, 10.0, 0.265


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_catalogue_restore

    return bench_catalogue_restore


def test_scores_raw_denoised_and_restored_against_the_truth(bench) -> None:
    """Faint point sources (I 22.5, aperture S/N ~3) and bright ones (I 18.5) on a noisy
    sky, 'denoised' by a σ = 4 px smoothing: the denoised faint fluxes are far too low, the
    restored ones within a few per cent, the sky gain of the smoothing kept away from them."""
    rng = np.random.default_rng(2)
    n, step, psf = 10, 32, 1.5
    shape = (n * step, n * step)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    cx, cy = np.meshgrid(np.arange(n) * step + 16.2, np.arange(n) * step + 15.7)
    bright = (np.arange(n * n) % 5) == 0
    flux = np.where(bright, 4000.0, 130.0)
    truth = np.full(shape, SKY)
    for x0, y0, f in zip(cx.ravel(), cy.ravel(), flux, strict=True):
        truth += f / (2 * np.pi * psf**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2)
                                                   / (2 * psf**2))
    raw = (truth + rng.normal(0, NOISE, shape)).astype(np.float32)
    den = ndimage.gaussian_filter(raw.astype(np.float64), 4.0).astype(np.float32)
    rows = pd.DataFrame({"aperture_x": cx.ravel(), "aperture_y": cy.ravel(),
                         "aperture_a": 4.0 * SCALE, "aperture_b": 3.2 * SCALE,
                         "aperture_theta": 20.0, "I_auto": np.where(bright, 18.5, 22.5)})
    good = np.ones(shape, bool)
    pixels, fluxes = bench.score_frame(raw, den, truth, good, rows, SCALE, [0.0, 1.0], 2.0)
    assert set(pixels["estimate"]) == {"raw", "denoised", "restored σ=0", "restored σ=1"}
    table = bench.summarise(pixels, fluxes).set_index("estimate")
    assert table.loc["raw", "sky_gain"] == 1.0 and table.loc["raw", "source_gain"] == 1.0
    assert table.loc["denoised", "sky_gain"] > 4  # the bright sources smoothed into the sky
    assert table.loc["denoised", "bias[22-23]"] < -0.5
    # σ = 0: the raw pixels inside the apertures, so the raw image's fluxes and source RMS
    for col in ("bias[18-19]", "bias[22-23]"):
        assert table.loc["restored σ=0", col] == pytest.approx(table.loc["raw", col], abs=0.01)
    assert table.loc["restored σ=0", "source_gain"] == pytest.approx(1.0, abs=0.02)
    for name in ("restored σ=0", "restored σ=1"):
        assert abs(table.loc[name, "bias[22-23]"]) < 0.15
        assert table.loc[name, "lo[22-23]"] <= table.loc[name, "bias[22-23]"] \
            <= table.loc[name, "hi[22-23]"]
        assert table.loc[name, "sky_gain"] > 2
    assert math.isnan(table.loc["raw", "bias[17-18]"])  # an empty bin
    text = bench.markdown({"run": table.reset_index()}, ("22-23",))
    assert "| run | restored σ=1 | ÷" in text


def test_median_interval_covers_the_median(bench) -> None:
    v = np.random.default_rng(0).normal(size=401)
    med, lo, hi = bench.median_interval(v)
    assert lo < med < hi and med == pytest.approx(np.median(v))
    assert hi - lo < 0.35
    assert all(math.isnan(x) for x in bench.median_interval(np.array([np.nan])))
