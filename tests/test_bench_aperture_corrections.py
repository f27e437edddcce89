"""``benchmarks/bench_aperture_corrections.py``: the analyses of a run directory, checked on
tables whose answers are known: exact shares give T / T_true = 1, a 1 % scatter between
exposures on top of 0.5 % errors shows as √(1² + 0.5²) % with pulls ≈ 2.2, a frame's flux
scale taken out by the relative zero-points does not count, and zero-points 3 % off show in
the bright pulls with the header zero-points only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pausdenoise.photometry.calibration import calibrate_flux

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_aperture_corrections

    return bench_aperture_corrections


def _stars(n_src=300, n_exp=20, floor=0.01, err=0.005, seed=0, scales=None):
    rng = np.random.default_rng(seed)
    true = 10 ** rng.uniform(4, 5, n_src)
    rows = []
    for e in range(n_exp):
        s = 1.0 if scales is None else scales[e]
        f = true * s * np.exp(rng.normal(0, floor, n_src)) * (1 + rng.normal(0, err, n_src))
        rows.append(pd.DataFrame({
            "ref_id": np.arange(n_src), "expnum": e, "ccd": 1, "band": "I", "flags": 0,
            "flux_cal": f, "flux_cal_err": err * f, "area": rng.uniform(100, 2000, n_src),
            "psf_fwhm_px": 3.0 + 0.05 * e}))
    return pd.concat(rows, ignore_index=True)


def test_bright_scatter_against_the_errors(bench):
    summary, rows = bench.bright_stars(_stars(), None, snr_min=80, min_exposures=10)
    assert summary["sources"] == 300 and summary["measurements"] == 6000
    assert summary["scatter"] == pytest.approx(np.hypot(0.01, 0.005), rel=0.05)
    assert summary["error"] == pytest.approx(0.005, rel=1e-6)
    pulls = [float(r.split("|")[-2]) for r in rows if r.startswith("| S/N quarter")]
    assert len(pulls) == 4 and all(1.9 < p < 2.6 for p in pulls)
    assert sum(r.startswith("| aperture area") for r in rows) == 3
    # errors that are right: pulls of 1
    summary, rows = bench.bright_stars(_stars(floor=0.0), None)
    assert summary["scatter"] == pytest.approx(0.005, rel=0.06)
    # sources too faint, or on too few exposures: nothing
    assert bench.bright_stars(_stars(n_exp=5), None) == ({}, [])


def test_the_relative_scales_take_the_exposures_flux_scales_out(bench):
    s = np.linspace(0.5, 1.5, 20)
    table = _stars(floor=0.0, scales=s)
    scales = pd.DataFrame({"band": "I", "expnum": np.arange(20), "ccd": 1, "scale": s,
                           "scale_err": 0.0})
    summary, _ = bench.bright_stars(table, scales)
    assert summary["scatter"] == pytest.approx(0.005, rel=0.06)


def _sim(n_src=2000, zp_off=0.03, seed=1):
    rng = np.random.default_rng(seed)
    mags = rng.uniform(17, 23, n_src)
    ftrue = 10 ** (-0.4 * (mags - 23.9))  # µJy, total
    share = rng.uniform(0.5, 0.8, n_src)
    rows, truth = [], []
    for e in range(12):
        zp_true = 0.006
        zp = zp_true * (1 + zp_off * rng.standard_normal())
        adu_true = ftrue * share / zp_true
        sig = np.sqrt(adu_true / 0.65 + 400.0)
        f_cal, e_cal = calibrate_flux(adu_true + rng.normal(0, sig), sig, zp, 0.01 * zp)
        rows.append(pd.DataFrame({
            "ref_id": np.arange(n_src), "expnum": e, "ccd": 1, "band": "NB455",
            "I_auto": mags, "flags": 0, "flags_prof": 0, "flux_cal": f_cal,
            "flux_cal_err": e_cal, "zp": zp, "zp_err": 0.01 * zp, "aper_frac": share,
            "aper_neighbours": 0.0, "aper_neighbours_err": 0.0}))
        truth.append(pd.DataFrame({
            "ref_id": np.arange(n_src), "expnum": e, "ccd": 1, "band": "NB455",
            "flux_true_cal": ftrue, "flux_true_adu": ftrue / zp_true,
            "flux_true_aper_adu": adu_true, "zp_true": zp_true}))
    return pd.concat(rows, ignore_index=True), pd.concat(truth, ignore_index=True)


def test_shares_and_zero_points_against_the_truth(bench):
    raw, truth = _sim()
    share = bench.share_against_truth(raw, truth)
    assert share["n"] == len(raw) and share["p1"] == pytest.approx(1.0)
    assert share["p99"] == pytest.approx(1.0) and share["true_rms_bright"] == pytest.approx(0)
    table, bands = bench.corrected_rows(raw)
    assert bands == ["NB455"]
    np.testing.assert_allclose(np.median(table["flux_cal"] / raw["flux_cal"]),
                               1 / np.median(raw["aper_frac"]), rtol=0.05)
    tc = bench.truth_pulls(raw, truth).set_index("bin")
    assert tc.loc["17-18", "pull_sigma68"] > 1.5  # 3 % off, saying 1 %
    for b in ("17-18", "18-19", "22-23"):
        assert tc.loc[b, "pull_sigma68_exact_zp"] == pytest.approx(1.0, abs=0.08)
    # shapes guessed from the apertures: left as measured, compared in the aperture
    from pausdenoise.photometry.config import ProfFlag

    guessed = raw.assign(flags_prof=int(ProfFlag.APPROX_PROFILE))
    assert bench.corrected_rows(guessed)[1] == []
    tc = bench.truth_pulls(guessed, truth).set_index("bin")
    # (against the total flux the aperture would be 20-50 % low; the zero-points move ±3 %)
    assert abs(tc.loc["all", "bias_median"]) < 0.05
