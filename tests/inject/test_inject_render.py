"""Injected light, noise, catalogue and truth of one frame; photometry recovers the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pausdenoise.errors import ConfigError
from pausdenoise.inject.config import InjectConfig
from pausdenoise.inject.placement import place
from pausdenoise.inject.population import draw_injections
from pausdenoise.inject.render import (
    INJECT_CATALOGUE_COLUMNS,
    INJECT_TRUTH_COLUMNS,
    frame_zp,
    inject_frame,
)
from pausdenoise.photometry.catalogue import validate_catalogue
from pausdenoise.photometry.measure import measure_frame
from pausdenoise.psf import PsfEstimate
from pausdenoise.simulate.sources import mag_to_ujy

pytest.importorskip("galsim")

SCALE = 0.265
GAIN = 2.0
PSF = PsfEstimate(fwhm_px=3.5, beta=3.0, n_stars=0, source="header")
ATTRS = {"gain": GAIN, "zp": 0.004, "band": "NB615", "expnum": 7, "ccd": 3, "saturate": 6e4}


def _frame(shape=(320, 320), sky=300.0, sigma=None, seed=0):
    """Flat sky with Gaussian noise of σ = sqrt(sky/gain) ADU (sky Poisson) by default."""
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(sky / GAIN) if sigma is None else sigma
    return (sky + sigma * rng.standard_normal(shape)).astype(np.float32)


def _injections(n=9, mag_range=(17.0, 18.0), shape=(320, 320), seed=1, **cfg):
    config = InjectConfig(mag_range=mag_range, **cfg)
    rng = np.random.default_rng(seed)
    inj = draw_injections(config, rng, n)
    x, y = place(rng, n, shape, min_separation_px=70.0, edge_px=50.0)
    assert len(x) == n
    return config, inj.assign(x=x, y=y)


def test_noiseless_light_sums_to_the_true_flux_and_input_is_untouched():
    img = _frame()
    before = img.copy()
    config, inj = _injections(star_fraction=0.3)
    res = inject_frame(
        img,
        None,
        ATTRS,
        inj,
        PSF,
        config,
        np.random.default_rng(0),
        pixel_scale=SCALE,
        add_noise=False,
    )
    np.testing.assert_array_equal(img, before)
    assert res.image.dtype == np.float32 and res.image.shape == img.shape
    added = res.image.astype(float) - img
    truth = res.truth
    expected = mag_to_ujy(truth["mag_true"].to_numpy()) / ATTRS["zp"]
    np.testing.assert_allclose(truth["flux_true_adu"], expected, rtol=1e-12)
    for row in truth.itertuples():
        x, y = round(row.x_true), round(row.y_true)
        box = added[max(y - 34, 0) : y + 35, max(x - 34, 0) : x + 35]  # stamps are 70 px apart
        assert box.sum() == pytest.approx(row.flux_true_adu, rel=0.01)
        assert 0.3 * row.flux_true_adu < row.flux_true_aper_adu < row.flux_true_adu
    assert added.sum() == pytest.approx(truth["flux_true_adu"].sum(), rel=0.002)


def test_tables_follow_the_contract():
    img = _frame()
    config, inj = _injections()
    res = inject_frame(
        img, None, ATTRS, inj, PSF, config, np.random.default_rng(0), pixel_scale=SCALE
    )
    cat, truth = res.catalogue, res.truth
    assert tuple(cat.columns) == INJECT_CATALOGUE_COLUMNS
    assert tuple(truth.columns) == INJECT_TRUTH_COLUMNS
    assert validate_catalogue(cat, img.shape).issues.empty
    assert (cat["ref_id"] == inj["ref_id"]).all() and (truth["ref_id"] == cat["ref_id"]).all()
    assert (truth["expnum"] == 7).all() and (truth["ccd"] == 3).all()
    assert (truth["band"] == "NB615").all() and (truth["zp"] == 0.004).all()
    assert (truth["psf_fwhm_px"] == 3.5).all()
    np.testing.assert_allclose(cat["profile_hlr"], inj["profile_hlr"])
    np.testing.assert_allclose(truth[["x_true", "y_true"]], inj[["x", "y"]])
    # the sky noise measured from the frame: σ² = sky/gain = 150 ADU²
    assert truth["sky_var_adu2"].iloc[0] == pytest.approx(150.0, rel=0.05)
    # apertures by the simulation's rule: 1.5 × PSF-broadened half-light axes
    half = 0.5 * 3.5 * SCALE
    a = 1.5 * np.hypot(inj["profile_hlr"] / np.sqrt(inj["profile_q"]), half)
    np.testing.assert_allclose(cat["aperture_a"], a)


def test_same_seed_same_frame():
    img = _frame()
    config, inj = _injections()
    run = [
        inject_frame(
            img, None, ATTRS, inj, PSF, config, np.random.default_rng(s), pixel_scale=SCALE
        )
        for s in (11, 11, 12)
    ]
    np.testing.assert_array_equal(run[0].image, run[1].image)
    pd.testing.assert_frame_equal(run[0].truth, run[1].truth)
    pd.testing.assert_frame_equal(run[0].catalogue, run[1].catalogue)
    assert not np.array_equal(run[0].image, run[2].image)


def test_poisson_noise_of_the_injected_light_has_variance_light_over_gain():
    zero = np.zeros((200, 200), np.float32)
    config, inj = _injections(n=1, mag_range=(16.0, 16.0), shape=zero.shape)
    attrs = {**ATTRS, "gain": 4.0, "saturate": None}
    kw = {"pixel_scale": SCALE, "occupied": np.zeros(zero.shape, bool)}
    clean = inject_frame(zero, None, attrs, inj, PSF, config, None, add_noise=False, **kw).image
    noisy = inject_frame(zero, None, attrs, inj, PSF, config, np.random.default_rng(3), **kw)
    light = clean.astype(float)
    bright = light * 4.0 > 20.0  # > 20 e-: Poisson close to Gaussian
    assert bright.sum() > 100
    chi2 = (noisy.image[bright] - light[bright]) ** 2 / (light[bright] / 4.0)
    # mean of chi2 over N pixels is 1 ± sqrt(2/N); with gain 1 instead of 4 it would be 4
    assert chi2.mean() == pytest.approx(1.0, abs=4 * np.sqrt(2 / bright.sum()))
    assert noisy.image.sum() == pytest.approx(light.sum(), rel=0.01)


@pytest.mark.parametrize("fwhm_px", [3.5, 5.0])
def test_cramer_rao_variance_of_a_faint_star_is_sky_var_times_the_psf_noise_area(fwhm_px):
    img = _frame(sky=300.0)  # sky variance 150 ADU²
    config = InjectConfig(mag_range=(24.0, 24.0), star_fraction=1.0)
    inj = draw_injections(config, np.random.default_rng(0), 1).assign(x=[100.3], y=[99.8])
    psf = PsfEstimate(fwhm_px=fwhm_px, beta=3.0, n_stars=0, source="header")
    res = inject_frame(img, None, ATTRS, inj, psf, config, None, pixel_scale=SCALE, add_noise=False)
    row = res.truth.iloc[0]
    # Moffat noise-equivalent area 1/∫p² = π α² (2β−1)/(β−1)², widened by the pixel
    # response (+1/12 px² of variance per axis on a Gaussian of the same FWHM)
    beta = 3.0
    alpha = fwhm_px / (2 * np.sqrt(2 ** (1 / beta) - 1))
    area = np.pi * alpha**2 * (2 * beta - 1) / (beta - 1) ** 2
    area *= 1 + 1 / (12 * (fwhm_px / 2.3548) ** 2)
    assert row["flux_cr_var_adu2"] == pytest.approx(row["sky_var_adu2"] * area, rel=0.02)


def test_cramer_rao_variance_of_a_bright_source_on_a_dark_sky_is_its_poisson_variance():
    img = _frame(sky=0.0, sigma=0.05)
    config, inj = _injections(n=3, mag_range=(15.0, 16.0))
    res = inject_frame(img, None, ATTRS, inj, PSF, config, None, pixel_scale=SCALE, add_noise=False)
    # V = F·p/gain: 1/Σ p²/V = F/gain (Σ p = 1)
    expected = res.truth["flux_true_adu"] / GAIN
    np.testing.assert_allclose(res.truth["flux_cr_var_adu2"], expected, rtol=0.02)


def test_aperture_photometry_recovers_the_own_aperture_flux():
    img = _frame(sky=200.0, sigma=1.0)  # nearly noiseless sky: the bias shows
    config, inj = _injections(n=9, mag_range=(17.0, 18.0))
    res = inject_frame(
        img, None, ATTRS, inj, PSF, config, np.random.default_rng(2), pixel_scale=SCALE
    )
    phot = measure_frame(res.image, None, res.catalogue, gain=GAIN, zp=ATTRS["zp"])
    assert (phot["flags"] == 0).all()
    ratio = phot["flux"].to_numpy() / res.truth["flux_true_aper_adu"].to_numpy()
    err = phot["flux_err"].to_numpy() / res.truth["flux_true_aper_adu"].to_numpy()
    assert np.all(err < 0.01)
    assert np.all(np.abs(ratio - 1.0) < 0.01), ratio
    assert np.median(ratio) == pytest.approx(1.0, abs=0.003)


def test_zero_point_from_the_frame_or_the_config_or_refused():
    assert frame_zp({"zp": 0.01}, InjectConfig(zp_ab=20.0)) == 0.01
    assert frame_zp({"zp": np.nan}, InjectConfig(zp_ab=23.9)) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match=r"expnum=5 ccd=2.*zp_ab"):
        frame_zp({"zp": float("nan"), "expnum": 5, "ccd": 2}, InjectConfig())
    img = _frame(shape=(120, 120))
    config, inj = _injections(n=1, shape=img.shape)
    with pytest.raises(ConfigError, match="expnum=7"):
        inject_frame(
            img,
            None,
            {**ATTRS, "zp": None},
            inj,
            PSF,
            config,
            np.random.default_rng(0),
            pixel_scale=SCALE,
        )


def test_injection_into_a_real_frame(real_data_dir: Path):
    from astropy.io import fits  # local: only this test reads a real FITS frame

    path = real_data_dir / "saao-kb13475" / "AKB13475I0007.fits"
    if not path.is_file():
        pytest.skip(f"{path.name} not in the real test data")
    with fits.open(path) as hdul:
        image, header = hdul[0].data, hdul[0].header
    before = image.copy()
    attrs = {"gain": header["GAIN"], "band": "I", "expnum": 7, "ccd": 1, "saturate": 65300.0}
    config = InjectConfig(zp_ab=25.0, min_separation_px=15.0, mag_range=(17.0, 19.0))
    inj = draw_injections(config, np.random.default_rng(0), 5)
    from pausdenoise.inject.placement import occupancy_from_image  # local: as the stage would

    occ = occupancy_from_image(image, smooth_px=2.0)
    x, y = place(
        np.random.default_rng(1),
        5,
        image.shape,
        occupied_mask=occ,
        min_separation_px=15.0,
        edge_px=45.0,
    )
    inj = inj.iloc[: len(x)].assign(x=x, y=y)
    psf = PsfEstimate(fwhm_px=4.8, beta=3.0, n_stars=0, source="header")
    res = inject_frame(
        image,
        None,
        attrs,
        inj,
        psf,
        config,
        np.random.default_rng(2),
        pixel_scale=0.6,
        occupied=occ,
        add_noise=False,
    )
    np.testing.assert_array_equal(image, before)
    truth = res.truth
    # band "I" is not a PAUS band: the flux is the I_auto flux through zp_ab
    np.testing.assert_allclose(truth["mag_true"], truth["I_auto"])
    np.testing.assert_allclose(truth["flux_true_adu"], 10 ** (-0.4 * (truth["I_auto"] - 25.0)))
    added = res.image.astype(float) - image.astype(float)
    assert added.sum() == pytest.approx(truth["flux_true_adu"].sum(), rel=0.01)
