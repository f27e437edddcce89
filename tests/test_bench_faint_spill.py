"""``benchmarks/bench_faint_spill.py``: the light a sky-like smoothing carries out of an aperture.

Checked against the real thing: white noise through a Gaussian smoother for the sky gain, and
photutils elliptical apertures on rendered, smoothed sources for the spill.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from photutils.aperture import EllipticalAperture
from scipy import ndimage

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def spill(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_faint_spill

    return bench_faint_spill


@pytest.mark.parametrize("gain", [3.0, 8.0, 15.4])
def test_the_smoother_width_gives_the_sky_gain_on_white_noise(spill, gain: float) -> None:
    noise = np.random.default_rng(1).standard_normal((1024, 1024))
    sigma = float(spill.smoothing_sigma_for_sky_gain(gain))
    smoothed = ndimage.gaussian_filter(noise, sigma, mode="wrap", truncate=6.0)
    assert noise.std() / smoothed.std() == pytest.approx(gain, rel=0.03)


def test_enclosed_fraction_matches_a_circle_and_a_rendered_ellipse(spill) -> None:
    sigma, r = np.array([1.0, 2.5]), np.array([3.0, 3.0])
    assert spill.gaussian_fraction_in_ellipse(sigma, r, r) == pytest.approx(
        1 - np.exp(-(r**2) / (2 * sigma**2)), rel=1e-9)
    y, x = np.mgrid[-30:30:0.05, -30:30:0.05]  # a fine grid: the ellipse 5 × 2, tilted
    g = np.exp(-(x**2 + y**2) / (2 * 2.0**2))
    c, s = math.cos(0.6), math.sin(0.6)
    u, v = c * x + s * y, -s * x + c * y
    inside = (u / 5.0) ** 2 + (v / 2.0) ** 2 <= 1.0
    assert float(spill.gaussian_fraction_in_ellipse(2.0, 5.0, 2.0)) == pytest.approx(
        g[inside].sum() / g.sum(), abs=2e-3)


@pytest.mark.parametrize(("gain", "hlr_sigma"), [(5.0, 0.0), (15.4, 0.0), (9.0, 1.2)])
def test_spill_matches_photutils_on_a_smoothed_source(spill, gain: float,
                                                      hlr_sigma: float) -> None:
    fwhm, a, b, theta = 3.5, 4.0, 3.1, 0.4  # the demo's faint-end aperture and seeing
    size, c = 129, 64.0
    yy, xx = np.mgrid[:size, :size]
    s_in = math.hypot(fwhm / spill.FWHM_PER_SIGMA, hlr_sigma)
    src = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * s_in**2))
    smoothed = ndimage.gaussian_filter(src, float(spill.smoothing_sigma_for_sky_gain(gain)),
                                       mode="constant", truncate=8.0)
    ap = EllipticalAperture((c, c), a, b, theta=theta)  # photutils: 0-based pixel centres
    measured = ap.do_photometry(smoothed)[0][0] / ap.do_photometry(src)[0][0] - 1
    predicted = spill.spill_bias(np.array([a]), np.array([b]), np.array([fwhm]),
                                 np.array([hlr_sigma]), gain)[0]
    assert predicted == pytest.approx(measured, abs=0.02)
    assert predicted < 0
    assert spill.spill_bias(np.array([a]), np.array([b]), np.array([fwhm]),
                            np.array([0.0]), 1.0)[0] == pytest.approx(0.0, abs=0.01)


def _fake_run(root: Path, name: str, gain: float, bias: float) -> Path:
    """A run directory with the files the benchmark reads (as ``pausdenoise run`` writes
    them), two bins of sources: bright (S/N 50) and faint (S/N 2)."""
    run = root / name
    raw = run / "photometry" / "band=NB615" / "kind=raw"
    raw.mkdir(parents=True)
    n = 40
    mag = np.r_[np.full(n, 18.5), np.full(n, 22.5)]
    pd.DataFrame({"ref_id": np.arange(2 * n), "expnum": 1000, "I_auto": mag,
                  "a": np.r_[np.full(n, 7.0), np.full(n, 4.0)], "b": np.r_[np.full(n, 4.0),
                                                                           np.full(n, 3.0)],
                  "psf_fwhm_px": 3.5, "flux": np.r_[np.full(n, 500.0), np.full(n, 20.0)],
                  "flux_err": 10.0, "flags": np.r_[np.zeros(2 * n - 1, int), 1]}
                 ).to_parquet(raw / "00001000_01.parquet")
    (run / "survey").mkdir()
    pd.DataFrame({"ref_id": np.arange(2 * n), "profile_hlr": 0.0}).to_parquet(
        run / "survey" / "catalogue.parquet")
    cfg = {"simulate": {"pixel_scale": 0.265},
           "train": {"method": "n2n", "max_minutes": 1.67, "seed": 1,
                     "unet": {"kernel_size": 9, "residual": False, "posterior": "none"}}}
    (run / "run.json").write_text(json.dumps({"config": cfg}))
    (run / "evaluate").mkdir()
    (run / "evaluate" / "summary.json").write_text(json.dumps({"rms_reduction_sky": gain}))
    (run / "compare").mkdir()
    pd.DataFrame({"kind": ["raw", "denoised", "denoised", "denoised"],
                  "bin": ["22-23", "all", "18-19", "22-23"],
                  "bias_median": [0.0, -0.2, -0.01, bias]}).to_csv(
        run / "compare" / "truth_comparison.csv", index=False)
    return run


def test_tables_from_run_directories(spill, tmp_path: Path, capsys) -> None:
    weak = _fake_run(tmp_path, "weak", 4.0, -0.1)
    strong = _fake_run(tmp_path, "strong", 20.0, -0.7)
    sources = spill.read_sources(weak)
    assert len(sources) == 79  # the flagged row is left out
    table = spill.spill_table(sources, {"weak": 4.0, "strong": 20.0}).set_index("bin")
    assert table.loc["18-19", "n"] == 40 and table.loc["22-23", "n"] == 39
    assert table.loc["22-23", "snr_median"] == pytest.approx(2.0)
    assert table.loc["22-23", "undetectable"] == 1.0 and table.loc["18-19", "undetectable"] == 0
    assert table.loc["17-18", "n"] == 0 and math.isnan(table.loc["17-18", "snr_median"])
    assert table.loc["22-23", "spill[strong]"] < table.loc["22-23", "spill[weak]"] < 0
    assert spill.describe(weak) == "n2n, kernel 9, 100 s, seed 1"
    assert spill.main([str(strong), str(weak), "--faint", "22-23",
                       "--label", "strong=the strong one"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| n2n") or ln.startswith("| the")]
    assert rows[0].startswith("| n2n, kernel 9") and "÷4.0" in rows[0] and "-10 %" in rows[0]
    assert rows[1].startswith("| the strong one | ÷20.0") and "-70 %" in rows[1]
    assert "| 22-23 | 39 | 2.0 | 100 % | 4.0 × 3.0 |" in out
    with pytest.raises(FileNotFoundError, match="no raw photometry"):
        spill.read_sources(tmp_path)
