"""Star fields simulated to match real exposures (:mod:`pausdenoise.simulate.star_field`).

The stars land where they are placed (0-based pixel centres) with their flux, through a
round or elliptical Moffat; the faint stars follow the power law asked for; the crowding
factor gives the frame the robust σ it is fitted to; the noise is the gain's and the read
noise's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pausdenoise.simulate import star_field as sf


def test_a_star_lands_at_its_position_with_its_flux():
    img = sf.render_stars(np.array([40.3]), np.array([25.0]), np.array([1e4]), 3.8, 2.9,
                          (64, 96))
    yy, xx = np.mgrid[:64, :96]
    assert img.sum() == pytest.approx(1e4, rel=2e-3)  # light beyond the frame's edges only
    assert (img * xx).sum() / img.sum() == pytest.approx(40.3, abs=0.05)
    assert (img * yy).sum() / img.sum() == pytest.approx(25.0, abs=0.05)
    assert np.unravel_index(np.argmax(img), img.shape) == (25, 40)
    # a star outside the frame adds only its wings
    out = sf.render_stars(np.array([-10.0]), np.array([25.0]), np.array([1e4]), 3.8, 2.9,
                          (64, 96))
    assert 0 < out.sum() < 0.05e4


def test_an_elongated_psf_draws_the_library_s_elliptical_moffat():
    from pausdenoise.psf import elliptical_moffat_stamp

    img = sf.render_stars(np.array([48.0]), np.array([48.0]), np.array([1e4]), 3.8, 2.9,
                          (96, 96), e1=0.3, e2=-0.15)
    want = 1e4 * elliptical_moffat_stamp(3.8, 2.9, 0.3, -0.15, 41)
    # the renderer's star sits on a 3× finer grid: it is the stamp to a few per mille
    np.testing.assert_allclose(img[28:69, 28:69], want, atol=5e-3 * want.max())
    assert img.sum() == pytest.approx(1e4, rel=5e-3)


def test_an_offset_moves_every_star_by_exactly_that_shift():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(10, 86, 12), rng.uniform(10, 86, 12)
    flux = 10 ** rng.uniform(3, 4, 12)
    base = sf.render_stars(x, y, flux, 3.5, 2.9, (96, 96))
    # a whole pixel: the same image one column over, every star alike
    moved = sf.render_stars(x, y, flux, 3.5, 2.9, (96, 96), offset=(1.0, 0.0))
    np.testing.assert_allclose(moved[:, 1:], base[:, :-1], atol=1e-4 * base.max())  # PSF cut
    # a fraction of a pixel, not rounded to the fine grid
    one = sf.render_stars(np.array([31.9]), np.array([32.0]), np.array([1e4]), 3.5, 2.9,
                          (64, 64))
    off = sf.render_stars(np.array([31.9]), np.array([32.0]), np.array([1e4]), 3.5, 2.9,
                          (64, 64), offset=(0.3, -0.2))
    yy, xx = np.mgrid[:64, :64]
    assert (off * xx).sum() / off.sum() - (one * xx).sum() / one.sum() == pytest.approx(
        0.3, abs=0.01)
    assert (off * yy).sum() / off.sum() - (one * yy).sum() / one.sum() == pytest.approx(
        -0.2, abs=0.01)


def test_faint_stars_follow_the_power_law():
    rng = np.random.default_rng(0)
    bright = 10 ** rng.uniform(4, 5, 300)  # flat in log F above 10^4
    pop = sf.population(bright, 1e4, 10.0, 0.75)
    assert len(pop.bright) == 300
    # continuous at 10^4 with the catalogue's counts: ∫ F^-0.75 dlogF over 3 decades,
    # normalised to 300 in the decade above
    want = 300 / sf._dlogf_integral(1e4, 1e5, 0.75) * sf._dlogf_integral(10, 1e4, 0.75)
    assert pop.n_faint == pytest.approx(want)
    f = sf.faint_fluxes(pop, 200_000, rng)
    assert f.min() >= 10.0 and f.max() <= 1e4
    low, high = np.sum(f < 100), np.sum(f >= 1000)
    assert low / high == pytest.approx(10 ** (0.75 * 2), rel=0.1)
    flat = sf.population(bright, 1e4, 10.0, 0.0)
    assert flat.n_faint == pytest.approx(900, rel=0.15)  # 300 per decade, three decades


def test_the_crowding_factor_gives_the_frame_its_sigma():
    rng = np.random.default_rng(1)
    pop = sf.population(10 ** rng.uniform(4, 5, 20), 1e4, 20.0, 0.75)
    exp = sf.ExposureModel(3.8, 2.9, 1.9, 2.6, 900.0, 0.0)
    noise = float(np.sqrt(900.0 / 1.9 + 2.6 ** 2))
    exp.sigma = 2.0 * noise  # twice the noise: the unresolved stars' share
    factor, truth, stats = sf.fit_factor(pop, exp, (128, 128), rng, iterations=12)
    assert stats.sigma == pytest.approx(exp.sigma, rel=0.02)
    assert factor > 1.0 and truth.shape == (128, 128) and truth.min() >= 0


def test_the_small_scale_sigma_leaves_out_the_large_scale_light():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:256, :256]
    light = 300.0 * np.sin(xx / 80.0) * np.cos(yy / 110.0)  # scales of ~250 px and more
    image = 1000.0 + light + rng.normal(0.0, 10.0, (256, 256))
    good = np.ones(image.shape, bool)
    good[:, 100] = False  # a bad column
    image[:, 100] = 1e6
    whole = sf.small_scale_sigma(image, good, 0)
    assert whole > 50.0  # the large-scale light counts
    # the noise, and what the bilinear mesh misses of the light (~5 ADU here)
    assert sf.small_scale_sigma(image, good, 32) == pytest.approx(10.0, rel=0.2)


def test_the_variance_factor_scales_the_simulated_noise():
    exp = sf.ExposureModel(3.8, 2.9, 2.0, 3.0, 900.0, 50.0)
    base = sf.noise_variance(np.array([0.0, 100.0]), exp)
    np.testing.assert_allclose(base, [900 / 2 + 9, 1000 / 2 + 9])
    wider = sf.noise_variance(np.array([0.0, 100.0]),
                              dataclasses.replace(exp, variance_factor=1.5))
    np.testing.assert_allclose(wider, 1.5 * base)
