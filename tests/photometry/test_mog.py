"""Tests of the mixture-of-Gaussians fits of truncated Sérsic and Moffat profiles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad

from pausdenoise.photometry.mog import (
    mixture_enclosed,
    moffat_enclosed,
    moffat_mixture,
    sersic_enclosed,
    sersic_mixture,
)


def _galsim_enclosed(obj, radii):
    """Enclosed-flux fraction of a GalSim profile by radial integration of its xValue."""
    def ring(r):
        return 2 * np.pi * r * obj.xValue(r, 0.0)

    return np.array([quad(ring, 0, r, limit=200)[0] for r in radii]) / obj.flux


@pytest.mark.parametrize("n", [1, 4])
def test_exact_sersic_curve_matches_galsim(n):
    """The 'exact' truncated Sérsic curve (hlr of the truncated profile) agrees with GalSim."""
    galsim = pytest.importorskip("galsim")
    obj = galsim.Sersic(n, half_light_radius=1.0, trunc=6.0)
    radii = np.array([0.3, 1.0, 2.0, 4.0, 5.9])
    exact = sersic_enclosed(n, 6.0)(radii)
    assert exact[1] == pytest.approx(0.5, abs=1e-9)
    assert sersic_enclosed(n, 6.0)(np.array([6.0, 9.0])) == pytest.approx([1.0, 1.0])
    np.testing.assert_allclose(exact, _galsim_enclosed(obj, radii), atol=2e-3)


def test_exact_moffat_curve_matches_galsim():
    galsim = pytest.importorskip("galsim")
    obj = galsim.Moffat(beta=3.0, fwhm=1.0, trunc=8.0)
    radii = np.array([0.25, 0.5, 1.0, 3.0, 7.9])
    np.testing.assert_allclose(moffat_enclosed(3.0, 8.0)(radii),
                               _galsim_enclosed(obj, radii), atol=1e-3)


def test_exponential_fit_within_half_percent():
    mix = sersic_mixture(1.0, 6.0)
    r = np.linspace(0.0, 9.0, 4001)
    err = np.abs(mixture_enclosed(mix, r) - sersic_enclosed(1.0, 6.0)(r))
    assert err.max() < 0.005
    assert (mix.amplitudes >= 0).all() and mix.amplitudes.sum() == pytest.approx(1.0, abs=1e-12)


def test_de_vaucouleurs_fit_within_half_percent_inside_truncation():
    """n=4: 0.5 % inside 0.8 of the truncation radius; the step at truncation costs ≤ 2 %."""
    mix = sersic_mixture(4.0, 6.0)
    r = np.linspace(0.0, 9.0, 4001)
    err = np.abs(mixture_enclosed(mix, r) - sersic_enclosed(4.0, 6.0)(r))
    assert err[r <= 4.8].max() < 0.005
    assert err.max() < 0.02
    assert mix.amplitudes.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("beta", [2.5, 3.0, 4.5])
def test_moffat_fit_within_half_percent(beta):
    mix = moffat_mixture(beta, 8.0)
    r = np.linspace(0.0, 12.0, 4001)
    err = np.abs(mixture_enclosed(mix, r) - moffat_enclosed(beta, 8.0)(r))
    assert err.max() < 0.005
    assert (mix.amplitudes >= 0).all() and mix.amplitudes.sum() == pytest.approx(1.0, abs=1e-12)


def test_fits_are_cached_by_rounded_parameters():
    assert moffat_mixture(3.0, 8.0) is moffat_mixture(3.0000001, 8.0)
    assert sersic_mixture(4, 6.0) is sersic_mixture(4.0, 6.0000002)
    # the shared Sérsic width grid lets bulge and disk be added component by component
    np.testing.assert_array_equal(sersic_mixture(1.0).sigmas, sersic_mixture(4.0).sigmas)


def test_moffat_beta_must_exceed_one():
    with pytest.raises(ValueError, match="beta"):
        moffat_mixture(1.0)
