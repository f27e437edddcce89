"""Aperture shares (``aper_frac``) and the aperture-corrected table."""

import math

import numpy as np
import pandas as pd

from pausdenoise.photometry.apcor import MAX_BOX_PX, aperture_corrected, aperture_fractions
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


def test_the_corrected_table_holds_total_fluxes_and_drops_rows_without_a_share():
    table = pd.DataFrame({"ref_id": [1, 2, 3, 4], "flux_cal": [6.0, 5.0, 4.0, 3.0],
                          "flux_cal_err": [0.6, 0.5, 0.4, 0.3],
                          "aper_frac": [0.6, np.nan, 0.0, 0.5]})
    out = aperture_corrected(table)
    assert out["ref_id"].tolist() == [1, 4]
    np.testing.assert_allclose(out["flux_cal"], [10.0, 6.0])
    np.testing.assert_allclose(out["flux_cal_err"], [1.0, 0.6])
    assert table["flux_cal"].tolist() == [6.0, 5.0, 4.0, 3.0]


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
