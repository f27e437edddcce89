"""Injection settings and the injected population: defaults, reproducibility, band fluxes."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pausdenoise.inject.config import InjectConfig
from pausdenoise.inject.population import (
    INJECT_REF_ID0,
    POPULATION_COLUMNS,
    band_flux_ujy,
    draw_injections,
)
from pausdenoise.photometry.config import PhotometryConfig
from pausdenoise.simulate.config import SimulationConfig
from pausdenoise.simulate.sources import band_fluxes, mag_to_ujy


def test_defaults_come_from_the_simulation_and_photometry():
    cfg, sim = InjectConfig(), SimulationConfig()
    assert cfg.enabled is False
    assert cfg.aperture_factor == sim.aperture_factor
    assert cfg.profile_trunc_hlr == sim.profile_trunc_hlr
    assert cfg.psf_trunc_fwhm == sim.psf_trunc_fwhm
    assert cfg.hlr_at_mag20 == sim.hlr_at_mag20
    assert cfg.ellipticity_sigma == sim.ellipticity_sigma
    assert cfg.min_separation_px == PhotometryConfig().annulus_r_in
    assert cfg.edge_px == PhotometryConfig().annulus_r_out
    assert cfg.mag_range == (17.0, 24.0) and cfg.mag_slope == 0.0 and cfg.star_fraction == 0.0
    for name, field in InjectConfig.model_fields.items():
        assert field.description, name


def test_config_refuses_unknown_fields_and_bad_ranges():
    with pytest.raises(ValidationError):
        InjectConfig(per_frme=3)
    with pytest.raises(ValidationError):
        InjectConfig(mag_range=(24.0, 17.0))


def test_fingerprint_follows_what_is_injected():
    base = InjectConfig()
    assert base.fingerprint() == InjectConfig().fingerprint()
    assert base.fingerprint() == InjectConfig(enabled=True).fingerprint()
    assert base.fingerprint() != InjectConfig(seed=1).fingerprint()
    assert base.fingerprint() != InjectConfig(zp_ab=25.0).fingerprint()


def test_same_seed_same_population():
    cfg = InjectConfig(star_fraction=0.3)
    a = draw_injections(cfg, np.random.default_rng(5), 50)
    b = draw_injections(cfg, np.random.default_rng(5), 50)
    c = draw_injections(cfg, np.random.default_rng(6), 50)
    assert a.equals(b)
    assert not a["I_auto"].equals(c["I_auto"])
    assert tuple(a.columns) == POPULATION_COLUMNS
    assert a["ref_id"].tolist() == list(range(INJECT_REF_ID0, INJECT_REF_ID0 + 50))
    assert a["ref_id"].dtype == np.int64 and a["is_star"].dtype == bool


def test_population_is_uniform_in_magnitude_with_the_simulation_shapes():
    cfg = InjectConfig(mag_range=(17.0, 24.0), star_fraction=0.2)
    pop = draw_injections(cfg, np.random.default_rng(0), 7000, first_ref_id=INJECT_REF_ID0 + 7)
    assert pop["ref_id"].iloc[0] == INJECT_REF_ID0 + 7
    counts = np.histogram(pop["I_auto"], bins=np.arange(17, 25))[0]
    # each 1-mag bin holds 1/7 of the sources (Poisson 3 sigma ~ 90)
    assert np.all(np.abs(counts - 1000) < 120), counts
    stars, gals = pop[pop["is_star"]], pop[~pop["is_star"]]
    assert abs(len(stars) / len(pop) - 0.2) < 0.02
    assert (stars["profile_hlr"] == 0).all() and (stars["profile_q"] == 1).all()
    assert (gals["profile_hlr"] > 0).all()
    assert gals["profile_q"].between(0.17, 1.0).all()
    assert gals["profile_bulge_frac"].between(0.0, 0.9).all()
    # median size at I ~ 20 follows the simulation's hlr_at_mag20
    near20 = gals[(gals["I_auto"] - 20.0).abs() < 0.5]
    assert np.median(near20["profile_hlr"]) == pytest.approx(cfg.hlr_at_mag20, rel=0.1)


def test_counts_slope_makes_faint_sources_more_numerous():
    pop = draw_injections(InjectConfig(mag_slope=0.3), np.random.default_rng(1), 4000)
    bright = (pop["I_auto"] < 18).sum()
    faint = (pop["I_auto"] > 23).sum()
    # dN/dm ∝ 10^(0.3 m): the faintest bin holds ~10^(0.3*6) = 63 times the brightest
    assert faint > 20 * bright


def test_band_flux_paus_band_follows_the_sed_and_other_bands_the_i_flux():
    pop = draw_injections(InjectConfig(), np.random.default_rng(2), 20)
    np.testing.assert_allclose(band_flux_ujy(pop, "NB615"), band_fluxes(pop, "NB615"))
    np.testing.assert_allclose(band_flux_ujy(pop, "I"), mag_to_ujy(pop["I_auto"].to_numpy()))
    assert not np.allclose(band_flux_ujy(pop, "NB455"), band_flux_ujy(pop, "I"))


def test_empty_population_and_negative_n():
    empty = draw_injections(InjectConfig(), np.random.default_rng(0), 0)
    assert len(empty) == 0 and tuple(empty.columns) == POPULATION_COLUMNS
    with pytest.raises(ValueError, match="n must be"):
        draw_injections(InjectConfig(), np.random.default_rng(0), -1)
