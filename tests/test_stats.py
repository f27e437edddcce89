"""Robust statistics shared by the stages (:mod:`pausdenoise.stats`)."""

from __future__ import annotations

import numpy as np
import pytest

from pausdenoise.stats import mad_sigma, pixel_noise_sigma


def test_pixel_noise_sigma_sees_the_noise_not_the_crowding():
    """White noise of σ 5 ADU on a sky with a gradient and many faint blurred stars: the
    neighbour differences give σ, the frame's robust spread several times it."""
    rng = np.random.default_rng(7)
    shape = (256, 256)
    xx = np.mgrid[: shape[0], : shape[1]][1].astype(np.float64)
    stars = np.zeros(shape)
    ys, xs = rng.integers(0, shape[0], 3000), rng.integers(0, shape[1], 3000)
    np.add.at(stars, (ys, xs), rng.uniform(50, 400, 3000))
    from scipy import ndimage

    light = ndimage.gaussian_filter(stars, 2.0) + 0.05 * xx + 300.0
    image = light + rng.normal(0, 5.0, shape)
    assert pixel_noise_sigma(image) == pytest.approx(5.0, rel=0.1)
    assert mad_sigma(image) > 1.5 * 5.0  # the crowding and the gradient are in the spread
    good = np.ones(shape, bool)
    good[:, ::2] = False  # no two good neighbours in a row: no pair
    assert np.isnan(pixel_noise_sigma(image, good))
    bad = image.copy()
    bad[10:20, 10:20] = np.nan  # NaN pixels leave their pairs out
    assert pixel_noise_sigma(bad) == pytest.approx(pixel_noise_sigma(image), rel=0.02)
