"""Aperture shares (``aper_frac``) and the aperture-corrected table."""

import math

import numpy as np
import pandas as pd
import pytest

from pausdenoise.photometry.apcor import (
    MAX_BOX_PX,
    aperture_corrected,
    aperture_fractions,
    neighbour_light,
)
from pausdenoise.photometry.config import PhotometryConfig


def _moffat_enclosed(r: float, fwhm: float, beta: float) -> float:
    """Share of an untruncated Moffat's flux within radius r (px), no pixel response."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return 1.0 - (1.0 + (r / alpha) ** 2) ** (1.0 - beta)


def _points(n: int, r: float) -> tuple[np.ndarray, ...]:
    return (np.full(n, 50.3), np.full(n, 40.7), np.full(n, r), np.full(n, r), np.zeros(n))


def test_a_point_source_in_a_wide_circle_gets_the_moffat_share():
    """Far from the core the pixel response no longer matters: a circle of 4 FWHM holds
    the analytic Moffat share (to the truncation at 8 FWHM: < 0.2 %); narrower circles
    hold less, wider ones more, and a wider PSF puts less in the same circle."""
    cfg = PhotometryConfig()
    shapes = (np.zeros(1), np.ones(1), np.zeros(1))
    t = aperture_fractions(_points(1, 12.0), shapes, fwhm_px=3.0, beta=3.0, config=cfg)[0]
    assert abs(t - _moffat_enclosed(12.0, 3.0, 3.0)) < 0.002
    radii = [2.0, 4.0, 8.0, 16.0]
    ts = [aperture_fractions(_points(1, r), shapes, fwhm_px=3.0, beta=3.0, config=cfg)[0]
          for r in radii]
    assert np.all(np.diff(ts) > 0) and ts[-1] < 1.0
    wide = aperture_fractions(_points(1, 4.0), shapes, fwhm_px=5.0, beta=3.0, config=cfg)[0]
    assert wide < ts[1] - 0.1


def test_an_extended_source_loses_more_than_a_point_source():
    cfg = PhotometryConfig()
    geom = _points(2, 5.0)
    shapes = (np.array([0.0, 2.0]), np.array([1.0, 0.5]), np.array([0.0, 0.3]))
    t = aperture_fractions(geom, shapes, fwhm_px=3.0, beta=3.0, config=cfg)
    assert t[1] < t[0] - 0.1


def test_unusable_rows_get_nan_and_leave_the_others_alone():
    cfg = PhotometryConfig()
    x, y, a, b, th = _points(6, 5.0)
    x[1] = np.nan
    a[2] = 0.0
    b[3] = MAX_BOX_PX
    shapes = (np.zeros(6), np.ones(6), np.zeros(6))
    shapes[0][4] = np.nan
    shapes[1][5] = 1.5  # an axis ratio above 1 is bad input, as for the profile flux
    t = aperture_fractions((x, y, a, b, th), shapes, fwhm_px=3.0, beta=3.0, config=cfg)
    assert np.isfinite(t[0]) and np.isnan(t[1:]).all()
    ok = aperture_fractions(_points(1, 5.0), (np.zeros(1), np.ones(1), np.zeros(1)),
                            fwhm_px=3.0, beta=3.0, config=cfg)
    assert t[0] == ok[0]
    assert np.isnan(aperture_fractions(_points(1, 5.0), (np.zeros(1), np.ones(1), np.zeros(1)),
                                       fwhm_px=np.nan, beta=3.0, config=cfg)).all()


def test_subpixel_weights_give_the_same_share_to_their_accuracy():
    shapes = (np.ones(1), np.full(1, 0.6), np.zeros(1))
    geom = (np.array([20.2]), np.array([30.9]), np.array([6.0]), np.array([3.5]),
            np.array([0.7]))
    exact = aperture_fractions(geom, shapes, fwhm_px=3.0, beta=3.0, config=PhotometryConfig())
    sub = aperture_fractions(geom, shapes, fwhm_px=3.0, beta=3.0,
                             config=PhotometryConfig(subpixels=5))
    assert exact[0] != sub[0] and abs(exact[0] - sub[0]) < 0.01


def test_the_corrected_table_holds_own_total_fluxes_and_drops_rows_without_a_share():
    table = pd.DataFrame({"ref_id": [1, 2, 3, 4, 5], "flux_cal": [6.0, 5.0, 4.0, 3.0, 2.0],
                          "flux_cal_err": [0.6, 0.5, 0.4, 0.3, 0.2], "zp": 2.0,
                          "aper_frac": [0.6, np.nan, 0.0, 0.5, 0.5],
                          "aper_neighbours": [0.0, 0.0, 0.0, 0.5, np.nan],
                          "aper_neighbours_err": [0.0, 0.0, 0.0, 0.2, 0.0]})
    out = aperture_corrected(table)
    assert out["ref_id"].tolist() == [1, 4]
    # (f − N·zp) / T and sqrt(σ² + (σ_N·zp)²) / T
    np.testing.assert_allclose(out["flux_cal"], [10.0, 4.0])
    np.testing.assert_allclose(out["flux_cal_err"], [1.0, 1.0])
    assert table["flux_cal"].tolist() == [6.0, 5.0, 4.0, 3.0, 2.0]


def test_the_profile_flux_s_components_give_the_same_shares():
    from pausdenoise.photometry.profile import profile_components

    cfg = PhotometryConfig()
    rng = np.random.default_rng(3)
    n = 20
    geom = (rng.uniform(20, 80, n), rng.uniform(20, 80, n), rng.uniform(2, 8, n),
            rng.uniform(1.5, 2, n), rng.uniform(0, 3, n))
    shapes = (rng.uniform(0, 3, n), rng.uniform(0.3, 1, n), rng.uniform(0, 1, n))
    comps = profile_components(*shapes[:2], geom[4], shapes[2], 3.2, 2.5, cfg)
    own = aperture_fractions(geom, shapes, fwhm_px=3.2, beta=2.5, config=cfg)
    reused = aperture_fractions(geom, shapes, fwhm_px=3.2, beta=2.5, config=cfg,
                                components=comps)
    np.testing.assert_array_equal(own, reused)


def _offset_share(d: float, r: float, cfg: PhotometryConfig) -> float:
    """Share of a point source's light (FWHM 3 px, β 3) in a circle of radius r centred
    on pixel (30, 30), the source d px to its right."""
    from pausdenoise.photometry.apertures import _overlap_weights
    from pausdenoise.photometry.profile import _evaluate, profile_components

    coef, _ = profile_components(np.zeros(1), np.ones(1), np.zeros(1), np.zeros(1), 3.0, 3.0,
                                 cfg)
    w = _overlap_weights((20, 41, 20, 41), 30.0, 30.0, r, r, 0.0, 1, 1).ravel()
    gx = np.tile(np.arange(20, 41, dtype=float), 21)
    gy = np.repeat(np.arange(20, 41, dtype=float), 21)
    return float(_evaluate(coef, (gx - 30.0 - d)[None, :], (gy - 30.0)[None, :])[0] @ w)


def test_a_neighbour_s_light_is_its_flux_times_its_share_of_the_aperture():
    """Two point sources 4 px apart each put F_j × (their share of the other's aperture)
    into it, with error σ_j × that share; a source beyond every stamp's reach gets 0; a
    neighbour without a finite flux adds nothing."""
    from pausdenoise.photometry.profile import profile_components

    cfg = PhotometryConfig()
    x, y = np.array([30.0, 34.0, 90.0, 30.0]), np.array([30.0, 30.0, 90.0, 45.0])
    r = np.full(4, 3.0)
    zero, one = np.zeros(4), np.ones(4)
    comps = profile_components(zero, one, zero, zero, 3.0, 3.0, cfg)
    flux, err = np.array([1000.0, 500.0, 8000.0, np.nan]), np.array([10.0, 20.0, 5.0, 1.0])
    light, light_err = neighbour_light((x, y, r, r, zero), comps, flux, err,
                                       np.full(4, 12), cfg)
    off = _offset_share(4.0, 3.0, cfg)
    assert 0.0 < off < 0.2
    np.testing.assert_allclose(light[:2], [500.0 * off, 1000.0 * off], rtol=1e-6)
    np.testing.assert_allclose(light_err[:2], [20.0 * off, 10.0 * off], rtol=1e-6)
    assert light[2] == 0.0 and light_err[2] == 0.0
    assert 0.0 < light[3] < 1000.0 * off  # sources 0 and 1 reach it, 15 px away
    bad = neighbour_light((x, y, np.r_[0.0, r[1:]], r, zero), comps, flux, err,
                          np.full(4, 12), cfg)[0]
    assert np.isnan(bad[0]) and np.allclose(bad[1:], light[1:])


def _pairwise_light(geometry, comps, flux, err, radii, cfg):
    """The neighbours' light by its definition, one (aperture, source) pair at a time:
    ``T_ij = Σ wᵢ p_j`` over aperture i's box, for every j whose stamp reaches the box."""
    from pausdenoise.photometry.apcor import _boxes
    from pausdenoise.photometry.apertures import _overlap_weights
    from pausdenoise.photometry.profile import _compact, _evaluate

    x, y, a, b, theta = geometry
    hx, hy, ix0, ix1, iy0, iy1, ok = _boxes(x, y, a, b, theta)
    light, var = np.full(len(x), np.nan), np.full(len(x), np.nan)
    for i in np.flatnonzero(ok):
        light[i] = var[i] = 0.0
        box = (int(ix0[i]), int(ix1[i]), int(iy0[i]), int(iy1[i]))
        w = _overlap_weights(box, x[i], y[i], a[i], b[i], theta[i], 1, 1).ravel()
        gx = np.tile(np.arange(box[0], box[1], dtype=float), box[3] - box[2])
        gy = np.repeat(np.arange(box[2], box[3], dtype=float), box[1] - box[0])
        for j in range(len(x)):
            if (j == i or not np.isfinite(flux[j]) or abs(x[j] - x[i]) > hx[i] + radii[j] + 1
                    or abs(y[j] - y[i]) > hy[i] + radii[j] + 1):
                continue
            t = float(_evaluate(_compact(comps[0][j:j + 1], comps[1][j:j + 1]),
                                (gx - x[j])[None, :], (gy - y[j])[None, :])[0] @ w)
            light[i] += flux[j] * t
            var[i] += (err[j] * t) ** 2
    return light, np.sqrt(var)


@pytest.mark.parametrize("block", [None, 2000])
def test_the_neighbours_light_of_a_crowded_field_is_the_sum_over_its_pairs(block, monkeypatch):
    """On a crowded field of galaxies with apertures of every size (one far wider than the
    rest, so some sources reach apertures far apart, and some reach only a box's corner),
    the light and its error match the pair-by-pair definition; also when the profiles are
    evaluated in strips of a few rows."""
    from pausdenoise.photometry import apcor
    from pausdenoise.photometry.profile import profile_components

    if block is not None:
        monkeypatch.setattr(apcor, "_BLOCK_ELEMENTS", block)

    cfg = PhotometryConfig()
    rng = np.random.default_rng(7)
    n = 40
    x, y = rng.uniform(0, 120, n), rng.uniform(0, 90, n)
    a = rng.uniform(2, 12, n)
    a[0] = 70.0
    b, theta = a * rng.uniform(0.4, 1, n), rng.uniform(0, math.pi, n)
    shapes = (rng.uniform(0, 4, n), rng.uniform(0.3, 1, n), rng.uniform(0, 1, n))
    comps = profile_components(*shapes[:2], theta, shapes[2], 3.0, 3.0, cfg)
    flux, err = rng.uniform(100, 5000, n), rng.uniform(1, 50, n)
    flux[3] = np.nan
    radii = rng.integers(6, 20, n)
    got = neighbour_light((x, y, a, b, theta), comps, flux, err, radii, cfg)
    want = _pairwise_light((x, y, a, b, theta), comps, flux, err, radii, cfg)
    assert (want[0] > 0).mean() > 0.8
    np.testing.assert_allclose(got[0], want[0], rtol=1e-9)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-9)


def test_the_zero_point_s_error_follows_the_corrected_flux():
    """A 5 % zero-point error is 5 % of the corrected flux, not of the aperture flux; the
    measurement's own error is corrected as without one."""
    from pausdenoise.photometry.calibration import calibrate_flux

    f_adu, e_adu, zp, zp_err = np.array([30.0]), np.array([2.0]), 2.0, 0.1
    f_cal, e_cal = calibrate_flux(f_adu, e_adu, zp, zp_err)
    table = pd.DataFrame({"flux_cal": f_cal, "flux_cal_err": e_cal, "zp": zp,
                          "zp_err": zp_err, "aper_frac": [0.5], "aper_neighbours": [10.0],
                          "aper_neighbours_err": [1.5]})
    out = aperture_corrected(table)
    f = (30.0 - 10.0) * 2.0 / 0.5
    stat = np.hypot(2.0 * 2.0, 1.5 * 2.0) / 0.5
    np.testing.assert_allclose(out["flux_cal"], [f])
    np.testing.assert_allclose(out["flux_cal_err"],
                               [np.sqrt(stat**2 * (1 + 0.05**2) + (0.05 * f) ** 2)])
    # without zp_err the zero-point counts as exact
    exact = aperture_corrected(table.drop(columns="zp_err").assign(
        flux_cal_err=calibrate_flux(f_adu, e_adu, zp, 0.0)[1]))
    np.testing.assert_allclose(exact["flux_cal_err"], [stat])
