"""Catalogue sources given back their smoothed flux (:mod:`pausdenoise.denoise.restore`).

The restoration is checked for what it promises: aperture fluxes of faint sources that a
smoother took keep the raw image's expectation (measured with the photometry's own aperture
sums over many noise realisations), nothing changes outside the apertures, masked pixels
neither give nor take, chunked equals whole-frame (with the restoration in the network's own
block), and the store's key follows the catalogue.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from denoise_cases import make_image, random_unet
from scipy import ndimage

from pausdenoise.denoise import denoise_frame, denoise_to_store, tiling
from pausdenoise.denoise.config import DenoiseConfig
from pausdenoise.denoise.model import ModelRef
from pausdenoise.denoise.restore import (
    aperture_weight,
    geometry_from_catalogue,
    restore_block,
    restore_digest,
    restore_halo,
    restore_overlap,
    valid_geometry,
)
from pausdenoise.denoise.writer import denoise_key
from pausdenoise.n2v.normalise import FrameStats, frame_statistics
from pausdenoise.photometry.apertures import aperture_sums

SKY, NOISE = 100.0, 10.0  # ADU


def _geometry(x, y, a, b, theta=0.0) -> pd.DataFrame:
    n = len(np.atleast_1d(x))
    return pd.DataFrame({k: np.broadcast_to(np.asarray(v, float), n).copy() for k, v in
                         dict(x=x, y=y, a=a, b=b, theta=theta).items()})


def test_weight_is_one_inside_zero_far_away_and_independent_of_the_rectangle() -> None:
    geo = _geometry([20.0, 70.0, 99.5], [30.0, 10.0, 60.0], [4.0, 6.0, 3.0], [3.0, 2.0, 3.0],
                    [0.0, 0.8, 0.0])
    whole = aperture_weight((0, 64, 0, 100), geo, 2.0)
    assert whole.shape == (64, 100) and whole.dtype == np.float32
    assert whole[30, 20] == pytest.approx(1.0, abs=1e-6) and whole[60, 99] > 0.9
    assert whole[50, 50] == 0.0 and 0.0 <= whole.min() and whole.max() <= 1.0
    assert whole[30, 20 + 4 + 2 + 5] == 0.0  # past the grown axis and the feather (4 σ)
    pieces = np.block([[aperture_weight((y0, y0 + 32, x0, x0 + 50), geo, 2.0)
                        for x0 in (0, 50)] for y0 in (0, 32)])
    np.testing.assert_array_equal(pieces, whole)  # an aperture beyond the edge counts too
    assert aperture_weight((0, 64, 0, 100), geo.iloc[:0], 2.0).max() == 0.0


def test_restore_block_gives_back_the_raw_pixels_only_inside() -> None:
    rng = np.random.default_rng(3)
    raw = rng.normal(SKY, NOISE, (40, 50)).astype(np.float32)
    den = np.full(raw.shape, SKY, np.float32)
    weight = np.zeros(raw.shape, np.float32)
    weight[10:20, 10:30] = 1.0
    mask = np.zeros(raw.shape, np.uint8)
    mask[12, 12] = 4
    den[15, 15] = np.nan  # masked_output 'nan' writes NaN at bad pixels: kept
    out = restore_block(den, raw, mask, weight, 0.0)
    inside = weight == 1
    inside[12, 12] = inside[15, 15] = False
    np.testing.assert_allclose(out[inside], raw[inside], rtol=1e-6)
    np.testing.assert_array_equal(out[weight == 0], den[weight == 0])
    assert out[12, 12] == SKY and np.isnan(out[15, 15])
    smooth = restore_block(den, raw, None, weight, 1.5)  # a low pass: less noise than raw
    assert np.nanstd(smooth[inside] - SKY) < 0.35 * NOISE


def test_faint_sources_smoothed_as_sky_get_their_aperture_flux_back() -> None:
    """144 faint point sources (single-exposure S/N ≈ 3 in their aperture) on a noisy sky;
    the 'denoiser' smooths everything as sky would be (Gaussian σ = 4 px, sky RMS ÷ ~14):
    it takes most of their aperture flux. Restored, the median flux is the truth's within
    the light the 1 px low pass carries past the aperture, and the sky far from them is the
    denoised sky."""
    rng = np.random.default_rng(11)
    n, step, psf, flux = 12, 32, 1.5, 130.0
    shape = (n * step, n * step)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    cx, cy = np.meshgrid(np.arange(n) * step + 16.3, np.arange(n) * step + 15.8)
    truth = np.full(shape, SKY)
    for x0, y0 in zip(cx.ravel(), cy.ravel(), strict=True):
        truth += flux / (2 * np.pi * psf**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2)
                                                      / (2 * psf**2))
    raw = (truth + rng.normal(0, NOISE, shape)).astype(np.float32)
    den = ndimage.gaussian_filter(raw.astype(np.float64), 4.0, mode="reflect").astype(
        np.float32)
    geo = _geometry(cx.ravel(), cy.ravel(), 4.0, 3.2, 0.3)
    weight = aperture_weight((0, shape[0], 0, shape[1]), geo, 2.0)
    restored = restore_block(den, raw, None, weight, 1.0)

    def fluxes(img):
        return aperture_sums(img.astype(np.float64) - SKY, geo["x"].to_numpy(),
                             geo["y"].to_numpy(), geo["a"].to_numpy(), geo["b"].to_numpy(),
                             geo["theta"].to_numpy())["aper_sum"]

    true = fluxes(truth)
    bias = {k: float(np.median(fluxes(v) / true - 1))
            for k, v in {"raw": raw, "denoised": den, "restored": restored}.items()}
    assert np.median(true / (NOISE * np.sqrt(np.pi * 4.0 * 3.2))) < 4  # faint
    assert bias["denoised"] < -0.5
    assert abs(bias["raw"]) < 0.05 and -0.12 < bias["restored"] < 0.03
    far = weight == 0
    np.testing.assert_array_equal(restored[far], den[far])
    sky = (truth - SKY < 0.01) & far
    assert np.std(restored[sky] - truth[sky]) < 0.15 * NOISE


def _one_pass_case():
    """A frame, its mask, statistics, a tiny network and apertures across chunk borders."""
    img = make_image(192, 192, seed=8, n_stars=12)
    mask = np.zeros(img.shape, np.uint8)
    mask[40:44, 60:70] = 1
    stats = frame_statistics(img, mask)
    geo = _geometry([5.0, 63.5, 95.5, 191.5, -3.0, 120.0, 10.0],
                    [3.0, 47.5, 96.0, 64.0, 40.0, 140.0, np.nan],
                    [4.0, 6.0, 5.0, 3.0, 5.0, 4.0, 2.0], [3.0, 2.0, 5.0, 3.0, 5.0, 3.0, 2.0],
                    [0.3, 1.0, 0, 0, 0, 2.0, 0])
    return img, mask, stats, random_unet(2, 3, False, 11), geo


@pytest.mark.parametrize("chunks", [(48, 64), (96, 96), (64, 192)])
def test_one_pass_restoration_equals_the_whole_frame(chunks) -> None:
    img, mask, stats, model, geo = _one_pass_case()
    cfg = DenoiseConfig(restore_catalogue=True, restore_sigma=1.5, restore_grow=2.0)
    whole = denoise_frame(da.from_array(img, chunks=img.shape),
                          da.from_array(mask, chunks=img.shape), stats, model).compute()
    expected = restore_block(whole, img, mask, aperture_weight((0, 192, 0, 192),
                                                               valid_geometry(geo), 2.0), 1.5)
    lazy = [da.from_array(a, chunks=chunks) for a in (img, mask)]
    halo = model.halo()
    got = tiling._map_denoise(lazy[0], lazy[1], stats, ModelRef.from_model(model), cfg, halo,
                              geo).compute(scheduler="sync")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * stats.sigma)
    assert not np.allclose(got, whole, rtol=0, atol=1e-3 * stats.sigma)  # it did restore
    assert restore_halo(1.5) == 7 and restore_overlap(halo, 1.5, 4) == halo + 8


def _box_denoiser(image, mask=None, *, ref, stats, halo, config):
    """A stand-in network whose output depends on inputs exactly ``halo`` px away: the
    widest dependence the halo rule allows (a trained U-Net's falls off well inside it)."""
    return ndimage.uniform_filter(image.astype(np.float64), 2 * halo + 1,
                                  mode="constant").astype(np.float32)


@pytest.mark.parametrize("widen", [True, False])
def test_one_pass_restoration_reads_only_exact_network_output(monkeypatch, widen) -> None:
    img, mask, stats, model, geo = _one_pass_case()
    ref, halo = ModelRef.from_model(model), model.halo()
    cfg = DenoiseConfig(restore_catalogue=True, restore_sigma=1.5, restore_grow=2.0)
    monkeypatch.setattr(tiling, "_denoise_block", _box_denoiser)
    if not widen:  # the restoration given only the network's halo
        monkeypatch.setattr(tiling, "restore_overlap", lambda halo, sigma, multiple: halo)
    whole = tiling._map_denoise(da.from_array(img, chunks=img.shape),
                                da.from_array(mask, chunks=img.shape), stats, ref, cfg,
                                halo, geo).compute(scheduler="sync")
    lazy = [da.from_array(a, chunks=(96, 96)) for a in (img, mask)]
    got = tiling._map_denoise(lazy[0], lazy[1], stats, ref, cfg, halo,
                              geo).compute(scheduler="sync")
    diff = np.abs(got - whole) / stats.sigma
    if widen:
        assert diff.max() < 1e-5
    else:  # the aperture across the chunk corner at (96, 96) reads inexact halo pixels
        assert diff.max() > 0.1 and diff[:80, :80].max() < 1e-5


def test_geometry_from_catalogue_rows() -> None:
    rows = pd.DataFrame({"expnum": [1, 1, 2], "ccd": [3, 4, 3],
                         "aperture_x": [10.0, 11.0, 12.0], "aperture_y": [5.0, 6.0, 7.0],
                         "aperture_a": [1.06, 2.0, 3.0], "aperture_b": [0.53, 1.0, 1.0],
                         "aperture_theta": [30.0, 0.0, 0.0]})
    geo = geometry_from_catalogue(rows, axis_scale=1 / 0.265, frame=(1, 3))
    assert len(geo) == 1
    assert geo.loc[0, "a"] == pytest.approx(4.0) and geo.loc[0, "b"] == pytest.approx(2.0)
    assert geo.loc[0, "theta"] == pytest.approx(-np.pi / 6)  # PAUS sign → photutils
    assert len(geometry_from_catalogue(rows)) == 3
    bad = _geometry([1.0, 2.0, 3.0], [1.0, np.inf, 3.0], [2.0, 2.0, 0.0], 1.0)
    assert len(valid_geometry(bad)) == 1


# --------------------------------------------------------------------------- in the store


@pytest.fixture
def one_frame(tmp_path):
    from pausdenoise import store

    path = tmp_path / "survey.zarr"
    store.init_store(path)
    img = make_image(192, 192, seed=31)
    mask = np.zeros(img.shape, np.uint8)
    mask[100:104, 30:34] = 1
    frame = store.frame_id(1000, 1)
    store.write_frame(path, frame, {"image": img, "mask": mask}, {"band": "NB455"},
                      chunks=(96, 96))
    return path, frame


def test_store_writes_the_restored_frame_and_follows_the_catalogue(one_frame) -> None:
    from pausdenoise import store

    path, frame = one_frame
    model = random_unet(2, 3, False, 13)
    cfg = DenoiseConfig(restore_catalogue=True, restore_sigma=1.0, restore_grow=2.0)
    geo = _geometry([50.0, 95.0, 150.0], [60.0, 96.0, 20.0], [5.0, 4.0, 3.0],
                    [3.0, 4.0, 2.0], [0.2, 0.0, 1.0])
    with pytest.raises(ValueError, match="restore_catalogue needs"):
        denoise_to_store(path, frame, model, cfg)
    assert denoise_to_store(path, frame, model, cfg, apertures=geo).compute() == 4
    img = store.open_frame(path, frame, "image")
    mask = store.open_frame(path, frame, "mask")
    arr = store.open_store(path)[f"frames/{frame}/denoised"]
    stats = FrameStats(arr.attrs["sky"], arr.attrs["sigma"])
    plain = denoise_frame(img, mask, stats, model).compute()
    expected = restore_block(plain, img.compute(), mask.compute(),
                             aperture_weight((0, 192, 0, 192), geo, 2.0), 1.0)
    got = store.open_frame(path, frame, "denoised").compute()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert not np.array_equal(got, plain) and arr.attrs["restore_catalogue"] is True
    # same catalogue: nothing to do; another catalogue or setting: the frame is recomputed
    assert denoise_to_store(path, frame, model, cfg, apertures=geo).compute() == 0
    assert denoise_to_store(path, frame, model, cfg, apertures=geo.iloc[:2]).compute() == 4
    wider = cfg.model_copy(update={"restore_grow": 3.0})
    assert denoise_to_store(path, frame, model, wider, apertures=geo.iloc[:2]).compute() == 4
    off = DenoiseConfig()
    assert dask.compute(denoise_to_store(path, frame, model, off))[0] == 4
    np.testing.assert_array_equal(store.open_frame(path, frame, "denoised").compute(), plain)
    # off: the key is the one earlier runs stored (no restore entry)
    from pausdenoise.denoise.model import as_model_ref
    from pausdenoise.denoise.tiling import resolve_halo

    ref = as_model_ref(model)
    halo = resolve_halo(ref, off)
    stored = store.open_store(path)[f"frames/{frame}/denoised"].attrs
    assert stored["denoise_key"] == denoise_key(ref, stats, halo, off)
    assert stored["restore_catalogue"] is False
    assert denoise_key(ref, stats, halo, cfg, restore_digest(geo, 1.0, 2.0)) != \
        denoise_key(ref, stats, halo, cfg, restore_digest(geo.iloc[:2], 1.0, 2.0))


def test_demo_fast_is_the_demo_with_a_quarter_of_the_training_and_the_restoration() -> None:
    """``configs/demo-fast.yaml`` differs from the demo only where RESULTS.md says it does."""
    from pathlib import Path

    from pausdenoise.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    demo = load_config(root / "demo.yaml").model_dump()
    fast = load_config(root / "demo-fast.yaml").model_dump()
    changed = {(section, key) for section in demo if isinstance(demo[section], dict)
               for key in demo[section] if demo[section][key] != fast[section][key]}
    assert changed == {("train", "unet"), ("train", "masked_fraction"),
                       ("train", "replacement"), ("train", "epochs"),
                       ("denoise", "restore_catalogue"), ("report", "title"),
                       ("compare", "aperture_correction")}
    assert fast["train"]["epochs"] * 4 == demo["train"]["epochs"]
    assert {k for k in demo["train"]["unet"] if demo["train"]["unet"][k]
            != fast["train"]["unet"][k]} == {"n2v2"}
    assert fast["denoise"]["restore_catalogue"] and not demo["denoise"]["restore_catalogue"]
    # the pinned figures are those of the aperture fluxes as measured
    assert (fast["compare"]["aperture_correction"], demo["compare"]["aperture_correction"]) \
        == ("off", "auto")
