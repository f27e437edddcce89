"""Tests of the evaluation metrics on synthetic images with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pausdenoise import evaluate as ev


def _gauss_image(shape, sources, sky=100.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, sky)
    for x, y, flux, s in sources:
        img += flux / (2 * np.pi * s**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s**2))
    return img


def test_pixel_metrics_known_rms_and_identity():
    rng = np.random.default_rng(0)
    truth = _gauss_image((128, 128), [(64, 64, 5e4, 2.0)])
    noisy = truth + rng.normal(0, 3.0, truth.shape)
    good = np.ones(truth.shape, bool)
    sky = ev.sky_pixel_mask(truth, 100.0, 3.0, good, 0.05)
    src = ev.aperture_pixel_mask(truth.shape, np.array([64.0]), np.array([64.0]),
                                 np.array([6.0]), np.array([6.0]), np.array([0.0]))
    m = ev.pixel_metrics(noisy, truth, {"sky": sky, "source": src}).set_index("pixel_class")
    assert m.loc["sky", "rms"] == pytest.approx(3.0, rel=0.03)
    rng_ = ev.robust_range(truth)
    assert m.loc["sky", "psnr_db"] == pytest.approx(20 * np.log10(rng_ / m.loc["sky", "rms"]))
    assert src.sum() == pytest.approx(np.pi * 36, rel=0.1)
    same = ev.pixel_metrics(truth, truth, {"sky": sky}).iloc[0]
    assert same["rms"] == 0 and same["ssim"] == pytest.approx(1.0)
    assert m.loc["sky", "ssim"] < 1.0


def test_aperture_mask_orientation():
    # theta = 90 deg (photutils, CCW from +x): the major axis lies along y.
    m = ev.aperture_pixel_mask((41, 41), np.array([20.0]), np.array([20.0]), np.array([10.0]),
                               np.array([3.0]), np.array([np.pi / 2]))
    assert m[20 + 9, 20] and not m[20, 20 + 9]


def test_real_data_estimator_is_unbiased():
    rng = np.random.default_rng(1)
    truth = _gauss_image((200, 200), [(100, 100, 1e5, 3.0), (50, 140, 3e4, 2.0)], sky=0.0)
    good = np.ones(truth.shape, bool)
    est_a = truth + rng.normal(0, 0.7, truth.shape)  # a denoised estimate, true MSE 0.49
    b = truth + rng.normal(0, 4.0, truth.shape)
    c = truth + rng.normal(0, 4.0, truth.shape)
    d = truth + rng.normal(0, 2.0, truth.shape)
    var_b = ev.noise_variance_from_pair(b, c, good)
    assert var_b == pytest.approx(16.0, rel=0.03)
    var_b3 = ev.noise_variance_from_triplet(b, c, d, good)
    assert var_b3 == pytest.approx(16.0, rel=0.05)
    mse = ev.mse_to_truth_via_independent(est_a, b, 16.0, good)
    assert mse == pytest.approx(0.49, abs=0.15)


def test_detection_completeness_and_purity():
    rng = np.random.default_rng(2)
    pos = [(30 + 40 * i, 30 + 40 * j) for i in range(5) for j in range(5)]
    fluxes = np.geomspace(20, 5000, len(pos))
    srcs = [(x, y, f, 1.5) for (x, y), f in zip(pos, fluxes, strict=True)]
    truth = _gauss_image((220, 220), srcs)
    img = truth + rng.normal(0, 2.0, truth.shape)
    cfg = ev.EvaluateConfig()
    thr = cfg.detection_threshold * ev.smoothed_noise_sigma(2.0, cfg.detection_fwhm)
    smooth_sky = ev.detect(img - truth + 100.0, 100.0, thr, None, cfg)
    assert len(smooth_sky) <= 3  # pure noise: (almost) no false detections at 3 sigma
    det = ev.detect(img, 100.0, thr, None, cfg)
    tcat = pd.DataFrame({"x": [p[0] for p in pos], "y": [p[1] for p in pos]})
    found, real = ev.match_detections(det, tcat, 2.0)
    # bright sources are all found, the faintest (S/N < 1) mostly not
    assert found[-10:].all()
    assert not found[:3].all()
    assert real.mean() > 0.85
    mags = -2.5 * np.log10(fluxes) + 30
    tab = ev.completeness_table(mags, found, list(np.arange(20.5, 27.6, 1.0)))
    assert set(tab.columns) == {"mag_lo", "mag_hi", "n_true", "completeness"}
    m50 = ev.completeness_limit(tab, 0.5)
    assert mags.min() < m50 < mags.max()


def test_completeness_limit_interpolates():
    tab = pd.DataFrame({"mag_lo": [20, 21, 22, 23], "mag_hi": [21, 22, 23, 24],
                        "completeness": [1.0, 1.0, 0.5, 0.0], "n_true": [10] * 4})
    assert ev.completeness_limit(tab, 0.5) == pytest.approx(22.5)
    assert ev.completeness_limit(tab, 0.75) == pytest.approx(22.0)
    assert np.isnan(ev.completeness_limit(tab.assign(completeness=0.1), 0.5))


def test_depth_kinds_include_gan_and_stack_with_the_stack_weight_as_mask(tmp_path):
    from pausdenoise import store as st
    from pausdenoise.pipeline.stages import evaluate as evs

    rng = np.random.default_rng(0)
    img = rng.normal(100.0, 5.0, (32, 32)).astype(np.float32)
    weight = np.ones((32, 32), np.float32)
    weight[:, :4] = 0.0  # no stacked exposure there
    arrays = {"image": img, "denoised": img, "gan": img + 1, "stack_others": img + 2,
              "stack_others_weight": weight, "mask": np.zeros((32, 32), np.uint8)}
    store = tmp_path / "s.zarr"
    st.write_frame(store, "00000001_01", arrays, {"expnum": 1, "ccd": 1})
    arr = {k: np.asarray(st.open_frame(store, "00000001_01", k))
           for k in ("image", "denoised", "mask")}
    images = evs._depth_images(store, "00000001_01", arr)
    assert set(images) == {"raw", "denoised", "gan", "stack"}
    assert images["gan"][0][0, 0] == pytest.approx(img[0, 0] + 1)
    assert images["stack"][1][:, :4].all() and not images["stack"][1][:, 4:].any()
    assert not images["raw"][1].any()
