"""Simulated CCD frames of known gain and read noise, written as generic-layout FITS, for the
tests of the noise model measured at ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage

from pausdenoise.ingest import IngestConfig

SKY_E = 200.0
"""Sky level of the simulated frames, e⁻ per pixel."""

#: x-smoothing kernel of the correlated frames: lag-1 ρ_x = Σkᵢkᵢ₊₁/Σkᵢ² = 2/3
SMOOTH_X = np.array([0.25, 0.5, 0.25])


def scene_e(n: int, seed: int, n_blobs: int = 18) -> np.ndarray:
    """Noiseless n × n scene in e⁻: ``n_blobs`` extended Gaussian blobs (σ 6-18 px, peaks
    up to ~80× the sky, the smooth signal the gain is fitted on) and 12 star-like ones."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    out = np.zeros((n, n))
    for k in range(n_blobs + 12):
        x0, y0 = rng.uniform(0, n, 2)
        if k < n_blobs:
            s, peak = rng.uniform(6, 18), 10 ** rng.uniform(2.5, 4.2)
        else:
            s, peak = rng.uniform(1.2, 2.0), 10 ** rng.uniform(3.0, 4.5)
        out += peak * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
    return out


def crowded_scene_e(n: int, seed: int, n_stars: int = 4000, sigma: float = 1.6) -> np.ndarray:
    """Noiseless n × n crowded star field in e⁻: ``n_stars`` Gaussian stars (σ ``sigma`` px,
    Pareto fluxes from 150 e⁻, ~14 PSF areas per star) — the unresolved faint ones add
    variance to every tile, more where the signal is higher."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n + 20, n + 20))
    x, y = rng.uniform(0, n + 20, (2, n_stars))
    np.add.at(out, (y.astype(int), x.astype(int)), (rng.pareto(1.0, n_stars) + 1) * 150.0)
    return ndimage.gaussian_filter(out, sigma)[10:-10, 10:-10]


def observe_sky(scene: np.ndarray, sky_e: float, gain: float, rn_e: float,
                seed: int) -> np.ndarray:
    """Poisson (scene + ``sky_e``) plus Gaussian read noise, in ADU, float32."""
    rng = np.random.default_rng(seed)
    e = rng.poisson(scene + sky_e) + rng.normal(0.0, rn_e, scene.shape)
    return (e / gain).astype(np.float32)


def observe(scene: np.ndarray, gain: float, rn_e: float, seed: int,
            smooth_x: bool = False) -> np.ndarray:
    """Poisson (scene + sky) plus Gaussian read noise, in ADU (bias subtracted), float32;
    with ``smooth_x`` the noise (not the scene) is convolved with :data:`SMOOTH_X` along x."""
    rng = np.random.default_rng(seed)
    noise = rng.poisson(scene + SKY_E) - (scene + SKY_E) + rng.normal(0.0, rn_e, scene.shape)
    if smooth_x:
        noise = ndimage.convolve1d(noise, SMOOTH_X, axis=1, mode="wrap")
    return ((scene + SKY_E + noise) / gain).astype(np.float32)


def write_frame(path: Path, image: np.ndarray, expnum: int, band: str = "r",
                gain: float | None = None, rdnoise: float | None = None) -> Path:
    """Write a generic-layout frame; GAIN/RDNOISE only when given."""
    h = fits.Header()
    h["EXPNUM"], h["CCDNUM"], h["FILTER"] = expnum, 1, band
    h["EXPTIME"], h["ZP"], h["ZPERR"], h["SATURATE"] = 30.0, 1.0, 0.01, 60000.0
    if gain is not None:
        h["GAIN"] = gain
    if rdnoise is not None:
        h["RDNOISE"] = rdnoise
    fits.PrimaryHDU(image, h).writeto(path)
    return path


def generic_config(**overrides) -> IngestConfig:
    """Generic layout, small chunks, no PSF measurement (not what these tests are about)."""
    return IngestConfig(layout="generic", chunks=(64, 64), measure_psf=False, **overrides)
