"""The catalogue-source mask that keeps neighbours' light out of the background annuli."""

import numpy as np

from pausdenoise.photometry.annulus import annulus_stats
from pausdenoise.photometry.neighbours import neighbour_mask


def test_ellipse_membership_and_rotation():
    m = neighbour_mask((41, 41), np.array([20.0]), np.array([20.0]), np.array([5.0]),
                       np.array([2.0]), np.array([0.0]), grow=2.0)
    assert m[20, 20 + 10] and not m[20, 20 + 11]  # along x: 2 × 5 px
    assert m[20 + 4, 20] and not m[20 + 5, 20]  # along y: 2 × 2 px
    rot = neighbour_mask((41, 41), np.array([20.0]), np.array([20.0]), np.array([5.0]),
                         np.array([2.0]), np.array([np.pi / 2]), grow=2.0)
    assert rot[20 + 10, 20] and not rot[20, 20 + 10]


def test_point_sources_get_min_radius_and_bad_rows_mask_nothing():
    m = neighbour_mask((20, 20), np.array([5.0, np.nan]), np.array([5.0, 3.0]),
                       np.array([0.1, 1.0]), np.array([0.1, 1.0]), np.array([0.0, 0.0]),
                       grow=2.0, min_radius_px=3.0)
    assert m.sum() == 29  # pixel centres within 3 px of (5, 5)


def test_masking_neighbours_removes_the_annulus_bias():
    rng = np.random.default_rng(3)
    sky, sigma = 100.0, 5.0
    image = sky + sigma * rng.standard_normal((160, 160))
    yy, xx = np.mgrid[:160, :160]
    # a bright extended neighbour whose wings fill part of the target's annulus
    nx_, ny_ = 80.0 + 36.0, 80.0
    image += 12.0 * np.exp(-((xx - nx_) ** 2 + (yy - ny_) ** 2) / (2 * 8.0**2))
    x, y = np.array([80.0]), np.array([80.0])
    plain = annulus_stats(image, x, y, r_in=30, r_out=45)
    cat = neighbour_mask(image.shape, np.array([80.0, nx_]), np.array([80.0, ny_]),
                         np.array([3.0, 8.0]), np.array([3.0, 8.0]), np.zeros(2), grow=3.0)
    masked = annulus_stats(image, x, y, r_in=30, r_out=45, mask=cat.astype(np.uint8))
    assert plain["bkg_mean"][0] - sky > 0.5  # the neighbour's wings survive the clip
    assert abs(masked["bkg_mean"][0] - sky) < 0.3


def test_measure_frame_leaves_catalogue_sources_out_of_the_annulus():
    import pandas as pd

    from pausdenoise.photometry.config import PhotometryConfig
    from pausdenoise.photometry.measure import measure_frame

    rng = np.random.default_rng(4)
    sky = 100.0
    image = sky + 5.0 * rng.standard_normal((160, 160))
    yy, xx = np.mgrid[:160, :160]
    image += 12.0 * np.exp(-((xx - 116.0) ** 2 + (yy - 80.0) ** 2) / (2 * 8.0**2))
    cat = pd.DataFrame({"ref_id": [1, 2], "aperture_x": [80.0, 116.0],
                        "aperture_y": [80.0, 80.0], "aperture_a": [3.0, 8.0],
                        "aperture_b": [3.0, 8.0], "aperture_theta": [0.0, 0.0]})
    plain = measure_frame(image, None, cat, PhotometryConfig(aperture_units="pixel",
                                                             annulus_mask_grow=0), gain=1.0)
    masked = measure_frame(image, None, cat, PhotometryConfig(aperture_units="pixel"),
                           gain=1.0)
    assert plain["bkg"].iloc[0] - sky > 0.5
    assert abs(masked["bkg"].iloc[0] - sky) < 0.3
    # the aperture sums do not change, only the sky subtracted from them
    np.testing.assert_array_equal(plain["aper_sum"], masked["aper_sum"])
