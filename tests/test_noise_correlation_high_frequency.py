"""The lag-1 noise correlation from the highest spatial frequencies (crowded fields)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from noise_frames import crowded_scene_e
from scipy import ndimage

from pausdenoise.errors import NoiseModelError
from pausdenoise.ingest.noise import choose_noise_correlation
from pausdenoise.noise_model import (
    measure_noise_correlation,
    measure_noise_correlation_high_frequency,
)

SMOOTH = np.array([0.25, 0.5, 0.25])
"""Linear interpolation halfway: lag-1 correlation Σkᵢkᵢ₊₁/Σkᵢ² = 2/3 along its axis."""


def _crowded(sigma: float, along_x: bool, seed: int = 5, n: int = 384) -> np.ndarray:
    """A crowded Gaussian-star field (~14 PSF areas per star, σ ``sigma`` px) over a
    400 e⁻ sky, with Poisson-like white noise, smoothed by :data:`SMOOTH` along x if asked."""
    scene = crowded_scene_e(n, seed=0, n_stars=int(4000 * (n / 256) ** 2), sigma=sigma)
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.0, scene.shape) * np.sqrt(scene + 436.0)
    if along_x:
        noise = ndimage.convolve1d(noise, SMOOTH, axis=1) / np.sqrt((SMOOTH ** 2).sum())
    return scene + 400.0 + noise


@pytest.mark.parametrize("sigma", [1.2, 1.6, 2.1])
def test_crowded_white_noise_measures_zero_where_the_tiles_see_the_stars(sigma):
    """Unresolved stars (FWHM 2.8-4.9 px) are correlated over the PSF: the tiles measure
    0.1-0.35; above 0.45 cycles/px the stars leave no power and the noise is white."""
    img = _crowded(sigma, along_x=False)
    tiles = measure_noise_correlation(img)
    high = measure_noise_correlation_high_frequency(img)
    assert min(tiles["rho_x"], tiles["rho_y"]) > 0.1
    assert abs(high["rho_x"]) < 0.03 and abs(high["rho_y"]) < 0.03
    assert 0 < high["rho_err"] < 0.02 and high["n_tiles"] == 11 * 11
    rho_x, rho_y, method = choose_noise_correlation(tiles, high)
    assert method == "high-frequency" and (rho_x, rho_y) == (high["rho_x"], high["rho_y"])


def test_crowded_correlated_noise_is_recovered_along_its_axis():
    """Noise smoothed along x under the same stars: 2/3 along x within 0.03, and the y axis
    (where the tiles still see the stars) comes out near 0."""
    high = measure_noise_correlation_high_frequency(_crowded(1.6, along_x=True))
    assert high["rho_x"] == pytest.approx(2 / 3, abs=0.03)
    assert abs(high["rho_y"]) < 3 * high["rho_err"] + 0.05


@pytest.mark.parametrize("axes", [(), (1,), (0, 1)])
def test_noise_alone_keeps_the_tiles_measurement(axes):
    """Without sources both measure the same on every smoothed axis: 2/3 (separable
    smoothing, as interpolation does), and white noise 0 on both; the tiles' (more precise)
    is kept. Smoothed along x only, the kernel nulls the noise at Nyquist along x and the
    high-frequency y axis is loose (its error says so, and the tiles are kept)."""
    rng = np.random.default_rng(1)
    img = rng.normal(0.0, 10.0, (256, 256))
    for axis in axes:
        img = ndimage.convolve1d(img, SMOOTH, axis=axis)
    tiles = measure_noise_correlation(img + 500.0)
    high = measure_noise_correlation_high_frequency(img + 500.0)
    for key, axis in (("rho_x", 1), ("rho_y", 0)):
        truth = 2 / 3 if axis in axes else 0.0
        assert tiles[key] == pytest.approx(truth, abs=0.03)
        if axis in axes or not axes:
            assert high[key] == pytest.approx(truth, abs=0.03)
    if axes == (1,):
        assert high["rho_err"] > 0.03
    assert choose_noise_correlation(tiles, high)[2] == "tiles"


def test_masked_tiles_are_left_out_and_too_few_refused():
    img = _crowded(1.6, along_x=False)
    mask = np.zeros(img.shape, np.uint8)
    mask[:, 100] = 1
    img[:, 100] = 60_000.0  # a bad column: the two columns of tiles over it are skipped
    high = measure_noise_correlation_high_frequency(img, mask)
    assert high["n_tiles"] == 9 * 11
    assert abs(high["rho_x"]) < 0.03 and abs(high["rho_y"]) < 0.03
    with pytest.raises(NoiseModelError, match="clean 64×64 px tiles"):
        measure_noise_correlation_high_frequency(img[:128, :128])
    with pytest.raises(NoiseModelError, match="k_min"):
        measure_noise_correlation_high_frequency(img, k_min=0.5)


def test_strips_of_a_large_frame_agree_with_the_whole():
    img = _crowded(1.6, along_x=False, n=768)
    whole = measure_noise_correlation_high_frequency(img)
    strips = measure_noise_correlation_high_frequency(img, max_pixels=2 * 256 * 768)
    assert whole["n_tiles"] == 23 * 23 and strips["n_tiles"] == 2 * 7 * 23  # two strips
    for key in ("rho_x", "rho_y"):
        assert strips[key] == pytest.approx(whole[key], abs=4 * strips["rho_err"])


def test_choice_between_the_two_measurements():
    tiles = {"rho_x": 0.45, "rho_y": 0.40, "rho_err": 0.01}
    high = {"rho_x": 0.05, "rho_y": 0.01, "rho_err": 0.01}
    assert choose_noise_correlation(tiles, high) == (0.05, 0.01, "high-frequency")
    # within 0.05 + 0.2 |ρ_hf| (a model difference, not sources): the tiles are kept
    close = {"rho_x": 0.38, "rho_y": 0.36, "rho_err": 0.005}
    assert choose_noise_correlation(tiles, close)[2] == "tiles"
    # an imprecise high-frequency value does not overrule the tiles
    loose = {"rho_x": 0.05, "rho_y": 0.01, "rho_err": 0.2}
    assert choose_noise_correlation(tiles, loose)[2] == "tiles"
    # lower tiles than high frequencies: sources only ever raise the tiles' value
    assert choose_noise_correlation(high, tiles)[2] == "tiles"
    assert choose_noise_correlation(None, high) == (0.05, 0.01, "high-frequency")
    assert choose_noise_correlation(tiles, None) == (0.45, 0.40, "tiles")
    rho_x, rho_y, method = choose_noise_correlation(None, None)
    assert math.isnan(rho_x) and math.isnan(rho_y) and method == "none"


def test_real_saao_frames_measure_little_correlation(real_data_dir):
    """The 24 SAAO bulge exposures (PSF FWHM 4.5-5.2 px): the tiles measure 0.25-0.65
    (the unresolved stars); above 0.45 cycles/px the median over the frames is below 0.07
    along x and 0.04 along y, and every frame takes the high-frequency value."""
    from astropy.io import fits  # test-local: reading the real frames

    folder = real_data_dir / "saao-kb13475"
    paths = sorted(folder.glob("AKB13475I*.fits"))
    if len(paths) < 24:
        pytest.skip(f"{folder}: the 24 SAAO frames are not present")
    chosen = []
    for path in paths:
        with fits.open(path) as hdul:
            img = hdul[0].data.astype(np.float64)
        mask = ndimage.binary_dilation(img > 60_000.0, iterations=6).astype(np.uint8)
        tiles = measure_noise_correlation(img, mask)
        high = measure_noise_correlation_high_frequency(img, mask)
        assert tiles["rho_x"] > 0.2 and tiles["rho_y"] > 0.2
        chosen.append(choose_noise_correlation(tiles, high))
    assert all(method == "high-frequency" for *_, method in chosen)
    assert np.median([c[0] for c in chosen]) < 0.07
    assert np.median([c[1] for c in chosen]) < 0.04
