"""Zero-point calibration of fluxes and errors, and taking the zero-point's error back out."""

from __future__ import annotations

import numpy as np

from pausdenoise.photometry.calibration import (
    calibrate_flux,
    with_zero_point_error,
    without_zero_point_error,
)


def test_the_zero_point_s_error_comes_out_and_goes_back_in():
    rng = np.random.default_rng(0)
    f = rng.uniform(-50, 5000, 200)
    e = rng.uniform(1, 80, 200)
    zp = rng.uniform(0.005, 0.007, 200)
    zp_err = zp * rng.uniform(0, 0.2, 200)
    f_cal, e_cal = calibrate_flux(f, e, zp, zp_err)
    stat = without_zero_point_error(f_cal, e_cal, zp, zp_err)
    np.testing.assert_allclose(stat, e * zp, rtol=1e-9)
    np.testing.assert_allclose(with_zero_point_error(f_cal, stat, zp, zp_err), e_cal,
                               rtol=1e-12)
    # bright sources: the zero-point's term dominates, and it is all that is taken out
    assert np.all(e_cal > stat)


def test_a_missing_zero_point_error_counts_as_none_and_errors_stay_real():
    f_cal, e_cal = np.array([100.0, 100.0]), np.array([3.0, 0.5])
    np.testing.assert_allclose(without_zero_point_error(f_cal, e_cal, 1.0, np.nan), e_cal)
    np.testing.assert_allclose(with_zero_point_error(f_cal, e_cal, 1.0, np.nan), e_cal)
    # an error smaller than the zero-point's own term (rounded files): 0, not NaN
    out = without_zero_point_error(f_cal, e_cal, 1.0, 0.01)
    assert np.isfinite(out).all() and out[1] == 0.0
