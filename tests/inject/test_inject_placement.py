"""Occupied pixels, sky noise and clear positions, on synthetic frames and a real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from pausdenoise.inject.placement import occupancy_from_image, place, sky_variance


def _blobs(shape, centres, rng, sky=500.0, sigma=10.0, peak=400.0, width=2.0):
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    img = sky + sigma * rng.standard_normal(shape)
    for x, y in centres:
        img += peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * width**2))
    return img.astype(np.float32)


def _min_pair_distance(x, y):
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    d[np.diag_indices_from(d)] = np.inf
    return d.min()


def test_occupancy_finds_sources_masked_pixels_and_not_noise():
    rng = np.random.default_rng(0)
    centres = [(40, 50), (150, 60), (100, 160)]
    img = _blobs((200, 200), centres, rng)
    mask = np.zeros(img.shape, np.uint8)
    mask[:, 190] = 4
    occ = occupancy_from_image(img, mask)
    for x, y in centres:
        assert occ[y - 3 : y + 4, x - 3 : x + 4].all()
    assert occ[:, 190].all()
    # far from the blobs and the masked column, pure noise stays free
    far = np.ones(img.shape, bool)
    for x, y in centres:
        far[max(y - 15, 0) : y + 16, max(x - 15, 0) : x + 16] = False
    far[:, 185:195] = False
    assert occ[far].mean() < 1e-3
    noise_only = occupancy_from_image(_blobs((200, 200), [], rng))
    assert noise_only.sum() == 0


def test_sky_variance_is_the_pixel_noise_despite_sources_and_a_gradient():
    rng = np.random.default_rng(1)
    img = _blobs((256, 256), [(60, 60), (200, 180)], rng, sigma=7.0).astype(float)
    img += np.linspace(0.0, 300.0, 256)[None, :]  # sky gradient
    occ = occupancy_from_image(img)
    assert sky_variance(img, occ) == pytest.approx(49.0, rel=0.05)


def test_place_respects_points_pixels_edges_and_each_other():
    rng = np.random.default_rng(3)
    shape = (300, 260)
    occ = np.zeros(shape, bool)
    occ[100:110, 50:70] = True
    pts = (np.array([200.0, 130.0]), np.array([60.0, 220.0]))
    sep, edge = 25.0, 30.0
    x, y = place(
        rng, 30, shape, occupied_xy=pts, occupied_mask=occ, min_separation_px=sep, edge_px=edge
    )
    assert 0 < len(x) <= 30
    assert np.all((x >= edge) & (x <= shape[1] - 1 - edge))
    assert np.all((y >= edge) & (y <= shape[0] - 1 - edge))
    d_pts = np.hypot(x[:, None] - pts[0][None, :], y[:, None] - pts[1][None, :])
    assert d_pts.min() >= sep
    oy, ox = np.nonzero(occ)
    d_pix = np.hypot(x[:, None] - ox[None, :], y[:, None] - oy[None, :])
    assert d_pix.min() >= sep
    assert _min_pair_distance(x, y) >= sep
    # same generator state, same positions
    x2, y2 = place(
        np.random.default_rng(3),
        30,
        shape,
        occupied_xy=pts,
        occupied_mask=occ,
        min_separation_px=sep,
        edge_px=edge,
    )
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_place_returns_fewer_when_the_frame_is_full():
    rng = np.random.default_rng(4)
    # 100 x 100 frame, 10 px edges, 40 px separation: at most a handful fit
    x, y = place(rng, 50, (100, 100), min_separation_px=40.0, edge_px=10.0)
    assert 1 <= len(x) < 10
    assert _min_pair_distance(x, y) >= 40.0
    full = np.ones((100, 100), bool)
    x, y = place(rng, 5, (100, 100), occupied_mask=full, min_separation_px=5.0, edge_px=0.0)
    assert len(x) == 0 and len(y) == 0
    x, y = place(rng, 5, (100, 100), min_separation_px=5.0, edge_px=60.0)
    assert len(x) == 0


def test_real_crowded_frame_has_its_sources_found_and_room_between_them(real_data_dir: Path):
    path = real_data_dir / "saao-kb13475" / "AKB13475I0007.fits"
    if not path.is_file():
        pytest.skip(f"{path.name} not in the real test data")
    image = fits.getdata(path)  # uint16 through BZERO
    assert image.dtype == np.uint16
    occ = occupancy_from_image(image, smooth_px=2.0)
    # a crowded bulge field: a sizeable part of the frame is stars, not all of it
    assert 0.05 < occ.mean() < 0.6
    # the stars' cores (brightest pixels) are all occupied
    core = image > np.percentile(image, 99.5)
    assert occ[core].all()
    sep = 15.0
    x, y = place(
        np.random.default_rng(0),
        30,
        image.shape,
        occupied_mask=occ,
        min_separation_px=sep,
        edge_px=45.0,
    )
    assert len(x) > 0
    free_dist = ndimage.distance_transform_edt(~occ)
    assert free_dist[np.round(y).astype(int), np.round(x).astype(int)].min() >= sep
    # the pixel noise of the sky: sky Poisson + read noise (GAIN 1.9, RDNOISE 5 e-), plus
    # a little from unresolved stars, not the confusion spread of the pixel values
    var = sky_variance(image, occ)
    sky = np.median(image[~occ])
    expected = sky / 1.9 + (5.0 / 1.9) ** 2
    assert expected < var < 2.0 * expected


def test_detected_sources_describe_the_occupied_groups_as_ellipses():
    from pausdenoise.inject.placement import detected_sources, occupancy_from_image

    rng = np.random.default_rng(2)
    image = 100.0 + rng.normal(0.0, 3.0, (120, 160))
    yy, xx = np.mgrid[:120, :160]
    phi = np.radians(30.0)
    u = (xx - 50.3) * np.cos(phi) + (yy - 60.7) * np.sin(phi)
    v = -(xx - 50.3) * np.sin(phi) + (yy - 60.7) * np.cos(phi)
    image += 400.0 * np.exp(-0.5 * (u**2 / 4.0**2 + v**2 / 2.0**2))
    image += 300.0 * np.exp(-0.5 * ((xx - 120.0) ** 2 + (yy - 30.0) ** 2) / 2.5**2)
    mask = np.zeros(image.shape, np.uint8)
    mask[:, 150] = 1  # a bad column is not a source
    occ = occupancy_from_image(image, mask, grow_px=0.0)
    det = detected_sources(image, occ, mask=mask).sort_values("x").reset_index(drop=True)
    assert len(det) == 2
    assert abs(det.loc[0, "x"] - 50.3) < 0.2 and abs(det.loc[0, "y"] - 60.7) < 0.2
    assert abs(det.loc[0, "theta_deg"] - 30.0) < 5.0
    assert det.loc[0, "a_px"] > 1.5 * det.loc[0, "b_px"]
    assert abs(det.loc[1, "a_px"] / det.loc[1, "b_px"] - 1.0) < 0.15
