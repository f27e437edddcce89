"""The detection engine and depth at equal purity on synthetic frames with known sources."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pausdenoise import detection as dt

FWHM = 3.5  # px
SIGMA_PSF = FWHM / 2.3548
NOISE = 10.0  # ADU per pixel
SKY = 100.0  # ADU


def _frame(xy: np.ndarray, flux: np.ndarray, shape=(192, 192), seed=1) -> np.ndarray:
    """Gaussian-PSF sources (total flux in ADU) on a flat sky with white noise."""
    yy, xx = np.indices(shape, dtype=float)
    img = np.full(shape, SKY)
    for (x, y), f in zip(xy, flux, strict=True):
        img += f / (2 * np.pi * SIGMA_PSF**2) * np.exp(
            -((xx - x) ** 2 + (yy - y) ** 2) / (2 * SIGMA_PSF**2))
    return img + np.random.default_rng(seed).normal(0.0, NOISE, shape)


def _truth(xy: np.ndarray, flux: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"x_true": xy[:, 0], "y_true": xy[:, 1], "flux_order": flux})


def _grid(n: int, step: float, off: float) -> np.ndarray:
    g = off + step * np.arange(n)
    return np.array([(x + 0.3, y - 0.2) for y in g for x in g])


def _flux_limit(nu: float) -> float:
    """Flux (ADU) whose PSF-smoothed peak is ``nu`` × the smoothed white-noise σ."""
    return nu * 2.0 * np.sqrt(np.pi) * SIGMA_PSF * NOISE


def test_bright_isolated_sources_are_complete_even_across_a_bad_column():
    xy = _grid(6, 30.0, 20.0)  # 36 isolated sources
    flux = np.full(len(xy), _flux_limit(5.0) * 10 ** (0.4 * 3))  # 3 mag above 5σ
    img = _frame(xy, flux)
    mask = np.zeros(img.shape, np.uint8)
    mask[:, round(xy[1, 0])] = 1  # a bad column through the centre of 6 sources
    prep = dt.prepare_image(img, mask, FWHM, dt.DetectionSettings())
    assert prep.rms == pytest.approx(NOISE / (2 * np.sqrt(np.pi) * SIGMA_PSF), rel=0.08)
    sw = dt.sweep_image(img, mask, FWHM, _truth(xy, flux), [5.0], dt.DetectionSettings())
    assert sw.found[:, 0].mean() >= 0.99
    assert sw.counts["n_detections"].iloc[0] == len(xy)  # no split source, no noise peak
    det = dt.detect(prep, 5.0, dt.DetectionSettings())
    near = np.hypot(det.table["x"].to_numpy()[:, None] - xy[:, 0],
                    det.table["y"].to_numpy()[:, None] - xy[:, 1]).min(axis=0)
    assert near.max() < 0.5  # centroids of the masked sources stay on them (px)


def test_matched_filter_finds_what_unsmoothed_thresholding_misses():
    """``smooth_fwhm_factor`` 0 thresholds the raw pixels: its noise is the pixel noise, and
    sources at 8σ of the matched filter (peak pixel ~3σ) are found by the PSF-matched
    detector and mostly missed without it, at the same threshold in each image's own σ."""
    xy = _grid(6, 30.0, 20.0)
    flux = np.full(len(xy), _flux_limit(8.0))
    img = _frame(xy, flux, seed=4)
    raw = dt.DetectionSettings(smooth_fwhm_factor=0.0)
    prep = dt.prepare_image(img, None, FWHM, raw)
    assert prep.rms == pytest.approx(NOISE, rel=0.05) and prep.fwhm_px == FWHM
    truth = _truth(xy, flux)
    matched = dt.sweep_image(img, None, FWHM, truth, [5.0], dt.DetectionSettings())
    plain = dt.sweep_image(img, None, FWHM, truth, [5.0], raw)
    assert matched.found[:, 0].mean() >= 0.95
    assert plain.found[:, 0].mean() <= 0.3


def test_deblending_separates_a_close_pair():
    xy = np.array([[60.0, 60.0], [60.0 + 2.6 * FWHM, 61.0]])
    flux = np.array([3.0, 1.0]) * _flux_limit(5.0) * 30
    img = _frame(xy, flux, shape=(120, 120))
    truth = _truth(xy, flux)
    on = dt.sweep_image(img, None, FWHM, truth, [5.0], dt.DetectionSettings())
    off = dt.sweep_image(img, None, FWHM, truth, [5.0], dt.DetectionSettings(deblend=False))
    assert on.counts["n_detections"].iloc[0] == 2 and on.found[:, 0].all()
    # merged: one segment, claimed by the brighter source only
    assert off.counts["n_detections"].iloc[0] == 1
    assert off.found[:, 0].tolist() == [True, False]


def test_sweep_is_monotonic_and_purity_counts_known_false_peaks():
    xy_true = _grid(4, 40.0, 30.0)  # 16 true sources
    xy_false = _grid(3, 40.0, 50.0)  # 9 bright bumps absent from the truth
    bright = _flux_limit(5.0) * 40
    img = _frame(np.vstack([xy_true, xy_false]), np.full(25, bright))
    thresholds = [3.0, 5.0, 8.0, 12.0, 20.0]
    sw = dt.sweep_image(img, None, FWHM, _truth(xy_true, np.full(16, bright)), thresholds,
                        dt.DetectionSettings())
    n = sw.counts["n_detections"].to_numpy()
    assert np.all(np.diff(n) <= 0)
    assert np.all(np.diff(sw.found.sum(axis=0)) <= 0)
    high = sw.counts.iloc[-1]
    assert high["n_detections"] == 25 and high["n_real"] == 16  # purity 16/25 exactly
    assert sw.found[:, -1].all()


def test_negated_image_estimates_false_detections_on_pure_noise():
    img = _frame(np.empty((0, 2)), np.empty(0), shape=(160, 160), seed=3)
    empty = _truth(np.empty((0, 2)), np.empty(0))
    sw = dt.sweep_image(img, None, FWHM, empty, [2.0], dt.DetectionSettings(),
                        truth_complete=False)
    row = sw.counts.iloc[0]
    assert row["n_detections"] > 20 and row["n_negative"] > 20
    assert row["n_real"] <= 0.3 * row["n_detections"]  # estimated purity near 0


def test_threshold_at_purity_and_interpolated_weights():
    thr = np.array([1.0, 2.0, 4.0, 8.0])
    purity = np.array([0.5, 0.8, 0.9, 1.0])
    t = dt.threshold_at_purity(thr, purity, 0.85)
    assert t == pytest.approx(2.0 * np.sqrt(2.0))  # halfway in log threshold
    assert dt.threshold_at_purity(thr, purity, 0.4) == 1.0
    assert np.isnan(dt.threshold_at_purity(thr, purity, 1.01))
    found = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    assert dt.detection_weights(found, thr, t).tolist() == pytest.approx([0.5, 1.0, 0.0])


def _known_curve(levels: list[float], n: int = 200) -> tuple[np.ndarray, np.ndarray, list]:
    bins = [20.0 + 0.5 * i for i in range(len(levels) + 1)]
    mags, w = [], []
    for i, c in enumerate(levels):
        mags += list(bins[i] + 0.5 * (np.arange(n) + 0.5) / n)
        k = round(c * n)
        w += [1.0] * k + [0.0] * (n - k)
    return np.array(mags), np.array(w), bins


def test_m50_m90_of_a_known_completeness_curve_with_bootstrap():
    mags, w, bins = _known_curve([1.0, 1.0, 1.0, 0.9, 0.7, 0.3, 0.1, 0.0])
    tab = dt.completeness_curve(mags, w, bins)
    assert dt.magnitude_at_completeness(tab, 0.5) == pytest.approx(22.5)
    assert dt.magnitude_at_completeness(tab, 0.9) == pytest.approx(21.75)
    reps = dt.bootstrap_limits(mags, {"a": w, "b": w}, bins, (0.5,), 100, seed=2)
    lo, hi = np.percentile(reps["a"][:, 0], [2.5, 97.5])
    assert lo < 22.5 < hi and hi - lo < 0.2
    np.testing.assert_array_equal(reps["a"], reps["b"])  # paired resampling


def test_one_small_dip_does_not_set_m90():
    mags, w, bins = _known_curve([1.0, 1.0, 1.0, 0.5, 0.2, 0.0], n=100)
    dip = (mags < 20.5) & (np.arange(len(mags)) % 100 < 95)  # keep 5 sources of bin 1
    mags, w = mags[~dip], w[~dip]
    w[:2] = 0.0  # 2 of those 5 missed: the bin reads 0.6
    tab = dt.completeness_curve(mags, w, bins)
    assert tab["completeness"].iloc[0] == pytest.approx(0.6)
    m90 = dt.magnitude_at_completeness(tab, 0.9)
    assert 21.0 < m90 < 21.75  # set by the real fall-off, not by the dip


def test_depth_analysis_compares_kinds_at_equal_purity():
    xy = _grid(5, 34.0, 25.0)
    mag = np.linspace(18.0, 23.0, len(xy))
    flux = _flux_limit(5.0) * 10 ** (-0.4 * (mag - 21.0))  # 5σ at magnitude 21
    img = _frame(xy, flux)
    truth = _truth(xy, flux)
    thr = [2.0, 3.0, 4.0, 6.0, 9.0]
    s = dt.DetectionSettings()
    raw = dt.sweep_image(img, None, FWHM, truth, thr, s)
    deep = dt.sweep_image(_frame(xy, 4 * flux, seed=6), None, FWHM, truth, thr,
                          s)  # four times the flux: 1.5 mag deeper
    res = dt.depth_analysis({"raw": [raw], "deep": [deep]}, mag, thr,
                            np.arange(17.5, 24.01, 0.5), (0.9,), 50)
    d = res.depth.set_index("kind")
    assert set(res.sweep["kind"]) == {"raw", "deep"}
    assert 20.0 < d.loc["raw", "m50"] < 22.5
    gain = res.gains.iloc[0]
    assert gain["kind"] == "deep" and gain["dm50"] > 0.7
