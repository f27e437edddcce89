"""Large overlap groups of the profile fit solved in spatial tiles (crowded fields).

A dense joint solve of m overlapping sources needs m² memory and m³ time; above
``profile_max_group`` sources a group is solved in tiles, each with the sources within
``profile_group_margin`` median stamp half-sizes around it. These tests check that the tiles
cover every source once and that the tiled fluxes and errors are the dense solution's.
"""

from __future__ import annotations

import numpy as np

from pausdenoise.photometry import PhotometryConfig
from pausdenoise.photometry.profile import _tiles, profile_fluxes, usable_pixels

FWHM_PX = 3.4
GAIN = 2.0


def _crowded(n: int, size: int, seed: int = 1):
    """A noisy sky with each source's light in its pixel (the solve is linear, so the
    comparison needs no realistic light), and the shapes of point sources and small
    galaxies."""
    rng = np.random.default_rng(seed)
    image = rng.normal(500.0, 20.0, (size, size)).astype(np.float32)
    x, y = rng.uniform(0, size - 1, n), rng.uniform(0, size - 1, n)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    image[iy, ix] += rng.uniform(200, 3000, n).astype(np.float32)
    hlr = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0.5, 3.0, n))
    shapes = (hlr, rng.uniform(0.4, 1.0, n), rng.uniform(0.0, 1.0, n))
    return image, x, y, rng.uniform(0, np.pi, n), shapes


def _fluxes(image, x, y, theta, shapes, config):
    good, sat = usable_pixels(image, None, config.bad_mask_bits, None)
    pixels = {"image": image.ravel().astype(np.float64), "good": good.ravel(),
              "sat": sat.ravel(), "shape": image.shape}
    n = len(x)
    sky = (np.full(n, 500.0), np.full(n, 400.0), np.full(n, 4.0))
    return profile_fluxes(pixels, x, y, theta, shapes, fwhm_px=FWHM_PX, beta=3.0, sky=sky,
                          gain=GAIN, config=config)


def test_a_crowded_group_solved_in_tiles_is_the_dense_solution():
    image, x, y, theta, shapes = _crowded(900, 400)
    dense = _fluxes(image, x, y, theta, shapes, PhotometryConfig(profile_max_group=10**6))
    assert dense["group_size"].max() > 600  # one group holds most of the field
    tiled = _fluxes(image, x, y, theta, shapes,
                    PhotometryConfig(profile_max_group=150))  # the default margin
    np.testing.assert_array_equal(tiled["group_size"], dense["group_size"])
    err = dense["flux_err"]
    assert np.all(np.isfinite(tiled["flux"]) == np.isfinite(dense["flux"]))
    ok = np.isfinite(dense["flux"])
    tol = 1e-3
    assert np.max(np.abs(tiled["flux"] - dense["flux"])[ok] / err[ok]) < tol
    assert np.max(np.abs(tiled["flux_err"] / err - 1.0)[ok]) < tol
    # half a stamp half-size of margin is not enough: the same check fails
    short = _fluxes(image, x, y, theta, shapes,
                    PhotometryConfig(profile_max_group=150, profile_group_margin=0.5))
    assert np.max(np.abs(short["flux"] - dense["flux"])[ok] / err[ok]) > tol


def test_the_tiles_hold_every_source_once_with_its_margin():
    rng = np.random.default_rng(4)
    x, y = rng.uniform(0, 1000, 5000), rng.uniform(0, 300, 5000)
    x[:50] = 500.0  # ties at a cut
    tiles = _tiles(x, y, 400, 20.0)
    assert len(tiles) > 10
    cores = np.concatenate([core for core, _ in tiles])
    np.testing.assert_array_equal(np.sort(cores), np.arange(len(x)))
    for core, sub in tiles:
        assert np.isin(core, sub).all()
        assert len(sub) <= 400 or len(core) <= 50
        x0, x1, y0, y1 = x[core].min(), x[core].max(), y[core].min(), y[core].max()
        near = (x >= x0 - 20) & (x <= x1 + 20) & (y >= y0 - 20) & (y <= y1 + 20)
        assert np.isin(np.flatnonzero(near), sub).all()  # the margin is around the cell
