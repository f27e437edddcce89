"""The simulated sky: galaxies and stars with positions, shapes and narrow-band SEDs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pausdenoise.paus_layout import band_wavelength_nm
from pausdenoise.simulate.config import SimulationConfig
from pausdenoise.simulate.geometry import focal_plane_extent, focal_plane_wcs

#: Effective wavelength of the i band that defines ``I_auto``, nm.
I_BAND_NM = 775.0
#: Smallest and largest galaxy half-light radius drawn, arcsec.
HLR_LIMITS_ARCSEC = (0.05, 5.0)
#: Largest |e| = (a - b)/(a + b) drawn (axis ratio ≥ 0.18).
MAX_ELLIPTICITY = 0.7


def mag_to_ujy(mag: np.ndarray | float) -> np.ndarray:
    """Convert AB magnitudes to flux densities (``m = 23.9 - 2.5 log10 f``).

    Parameters
    ----------
    mag : array_like or float
        AB magnitudes.

    Returns
    -------
    ndarray
        Flux densities in µJy.
    """
    return 10.0 ** ((23.9 - np.asarray(mag, dtype=float)) / 2.5)


def ujy_to_mag(flux: np.ndarray | float) -> np.ndarray:
    """Convert flux densities to AB magnitudes.

    Parameters
    ----------
    flux : array_like or float
        Flux densities in µJy.

    Returns
    -------
    ndarray
        AB magnitudes; NaN for flux ≤ 0.
    """
    f = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, 23.9 - 2.5 * np.log10(f), np.nan)


def draw_magnitudes(
    rng: np.random.Generator, n: int, mag_range: tuple[float, float], slope: float
) -> np.ndarray:
    """Draw ``n`` magnitudes from dN/dm ∝ 10^(slope·m) on ``mag_range`` (inverse CDF).

    Parameters
    ----------
    rng : numpy.random.Generator
        The generator (one uniform draw per magnitude).
    n : int
        Number of magnitudes.
    mag_range : (float, float)
        Bright and faint limits, AB mag.
    slope : float
        Logarithmic slope of the counts (per mag).

    Returns
    -------
    ndarray
        ``n`` AB magnitudes.
    """
    lo, hi = mag_range
    u = rng.uniform(0.0, 1.0, n)
    if abs(slope) < 1e-12 or hi == lo:
        return lo + u * (hi - lo)
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + u * (b - a)) / slope


def draw_shapes(rng: np.random.Generator, n: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw intrinsic shapes: axis ratio q = b/a and major-axis angle in the pixel frame.

    The angle (degrees, in [-90, 90)) is measured from the +x (column) axis towards the
    +y (row) axis, i.e. counter-clockwise when the array is shown with origin lower.

    Parameters
    ----------
    rng : numpy.random.Generator
        The generator.
    n : int
        Number of shapes.
    sigma : float
        Dispersion of each ellipticity component (capped at ``MAX_ELLIPTICITY`` in total).

    Returns
    -------
    q : ndarray
        Axis ratios b/a, in (0, 1].
    theta : ndarray
        Major-axis angles in degrees.
    """
    e1, e2 = sigma * rng.standard_normal(n), sigma * rng.standard_normal(n)
    e = np.minimum(np.hypot(e1, e2), MAX_ELLIPTICITY)
    q = (1.0 - e) / (1.0 + e)
    theta = np.degrees(0.5 * np.arctan2(e2, e1))
    return q, theta


def draw_galaxy_sizes(
    rng: np.random.Generator, mag: np.ndarray, config: SimulationConfig
) -> np.ndarray:
    """Draw half-light radii: log-normal around a median that shrinks with magnitude.

    Parameters
    ----------
    rng : numpy.random.Generator
        The generator.
    mag : ndarray
        The galaxies' AB magnitudes.
    config : SimulationConfig
        Median size at mag 20 (arcsec), its slope (dex/mag) and scatter (dex).

    Returns
    -------
    ndarray
        Half-light radii in arcsec, clipped to ``HLR_LIMITS_ARCSEC``.
    """
    log_hlr = (
        np.log10(config.hlr_at_mag20)
        + config.hlr_mag_slope * (mag - 20.0)
        + config.hlr_scatter_dex * rng.standard_normal(mag.size)
    )
    return np.clip(10.0**log_hlr, *HLR_LIMITS_ARCSEC)


def sed_shape(
    wavelength_nm: float | np.ndarray,
    slope: np.ndarray,
    break_nm: np.ndarray,
    break_factor: np.ndarray,
) -> np.ndarray:
    """Smooth SED shape f_ν(λ) (arbitrary normalisation).

    A power law ``(λ / I_BAND_NM)^slope`` times a smooth step that lowers the flux blueward
    of ``break_nm`` by ``break_factor`` (a 4000 Å-like break; factor 1 = no break).

    Parameters
    ----------
    wavelength_nm : float or ndarray
        Wavelength in nm.
    slope : ndarray
        Power-law slopes.
    break_nm : ndarray
        Break wavelengths in nm.
    break_factor : ndarray
        Flux factor blueward of the break.

    Returns
    -------
    ndarray
        f_ν, arbitrary normalisation.
    """
    lam = np.asarray(wavelength_nm, dtype=float)
    step = break_factor + (1.0 - break_factor) / (1.0 + np.exp(-(lam - break_nm) / 10.0))
    return (lam / I_BAND_NM) ** slope * step


def band_fluxes(sources: pd.DataFrame, band: str) -> np.ndarray:
    """Return the true calibrated flux density of every source in a PAUS narrow band.

    Parameters
    ----------
    sources : pandas.DataFrame
        The catalogue (``I_auto`` and the SED parameters).
    band : str
        PAUS narrow band, e.g. ``"NB455"``.

    Returns
    -------
    ndarray
        Flux densities in µJy.
    """
    lam = band_wavelength_nm(band)
    args = (
        sources["sed_slope"].to_numpy(),
        sources["break_nm"].to_numpy(),
        sources["break_factor"].to_numpy(),
    )
    ratio = sed_shape(lam, *args) / sed_shape(I_BAND_NM, *args)
    return mag_to_ujy(sources["I_auto"].to_numpy()) * ratio


def _population(
    config: SimulationConfig, rng: np.random.Generator, n: int, is_star: bool
) -> pd.DataFrame:
    """Draw magnitudes, shapes and SED parameters of ``n`` galaxies or stars.

    Returns
    -------
    pandas.DataFrame
        One row per source.
    """
    if is_star:
        mag = draw_magnitudes(rng, n, config.star_mag_range, config.star_count_slope)
        return pd.DataFrame(
            {
                "I_auto": mag,
                "is_star": np.ones(n, dtype=bool),
                "hlr_arcsec": np.zeros(n),
                "bulge_frac": np.zeros(n),
                "q": np.ones(n),
                "theta_pix_deg": np.zeros(n),
                "sed_slope": np.clip(rng.normal(1.5, 1.0, n), -1.0, 4.0),
                "break_nm": np.full(n, 400.0),
                "break_factor": np.ones(n),
            }
        )
    mag = draw_magnitudes(rng, n, config.mag_range, config.count_slope)
    q, theta = draw_shapes(rng, n, config.ellipticity_sigma)
    bulge = np.where(rng.uniform(size=n) < 0.3, 0.0, 0.9 * rng.uniform(size=n) ** 2)
    has_break = rng.uniform(size=n) < 0.7
    return pd.DataFrame(
        {
            "I_auto": mag,
            "is_star": np.zeros(n, dtype=bool),
            "hlr_arcsec": draw_galaxy_sizes(rng, mag, config),
            "bulge_frac": bulge,
            "q": q,
            "theta_pix_deg": theta,
            "sed_slope": rng.normal(1.0, 0.8, n),
            "break_nm": 400.0 * (1.0 + rng.uniform(0.05, 1.2, n)),
            "break_factor": np.where(has_break, rng.uniform(0.4, 1.0, n), 1.0),
        }
    )


def source_margin_px(config: SimulationConfig) -> float:
    """Return the margin around the focal plane inside which sources are generated.

    Covers the dither and the light that a source just off a CCD throws onto it.

    Parameters
    ----------
    config : SimulationConfig
        Dither (px), PSF truncation and the worst seeing (arcsec).

    Returns
    -------
    float
        The margin in px.
    """
    psf_r = config.psf_trunc_fwhm * config.seeing_fwhm_range[1] / config.pixel_scale
    return config.dither_px + psf_r + 8.0


def make_source_catalogue(config: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Draw the simulated sky over the focal plane (plus a margin).

    Parameters
    ----------
    config : SimulationConfig
        The simulation configuration.
    rng : numpy.random.Generator
        Random generator; the catalogue depends only on it and ``config``.

    Returns
    -------
    pandas.DataFrame
        One row per source, sorted by ``ref_id`` (int64, from 1): ``ra``, ``dec`` [deg],
        ``fp_x``, ``fp_y`` [focal-plane px, see :func:`focal_plane_layout`], ``I_auto``
        [i_AB mag], ``is_star``, ``hlr_arcsec`` (galaxy half-light radius, 0 for stars;
        bulge and disk share it, so it is the exact hlr of the sum), ``bulge_frac`` (B/T),
        ``q`` (axis ratio b/a), ``theta_pix_deg`` (major axis angle from +x towards +y,
        degrees), SED parameters ``sed_slope``, ``break_nm``, ``break_factor``, and the true
        flux density ``flux_<band>`` [µJy] in each configured band.
    """
    width, height = focal_plane_extent(config)
    m = source_margin_px(config)
    half_w, half_h = width / 2 + m, height / 2 + m
    area_arcmin2 = (2 * half_w) * (2 * half_h) * (config.pixel_scale / 60.0) ** 2
    n_gal = int(rng.poisson(config.galaxy_density * area_arcmin2))
    n_star = int(rng.poisson(config.star_density * area_arcmin2))
    pops = [_population(config, rng, n_gal, False), _population(config, rng, n_star, True)]
    cat = pd.concat(pops, ignore_index=True)
    n = len(cat)
    cat.insert(0, "fp_x", rng.uniform(-half_w, half_w, n))
    cat.insert(1, "fp_y", rng.uniform(-half_h, half_h, n))
    ra, dec = focal_plane_wcs(config).wcs_pix2world(cat["fp_x"], cat["fp_y"], 0)
    cat.insert(0, "ref_id", np.arange(1, n + 1, dtype=np.int64))
    cat.insert(1, "ra", np.mod(ra, 360.0))
    cat.insert(2, "dec", dec)
    for band in config.bands:
        cat[f"flux_{band}"] = band_fluxes(cat, band)
    return cat
