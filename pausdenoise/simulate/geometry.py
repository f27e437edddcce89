"""Focal-plane layout, exposure plan and per-frame WCS / header of the simulation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from pausdenoise.paus_layout import band_wavelength_nm
from pausdenoise.simulate.config import SimulationConfig

#: Columns of :func:`exposure_plan` (one row per exposure).
EXPOSURE_COLUMNS: tuple[str, ...] = (
    "expnum",
    "band",
    "wavelength_nm",
    "exptime",
    "mjd_obs",
    "airmass",
    "seeing_fwhm",
    "sky_e",
    "sky_adu",
    "transparency",
    "zp_true",
    "zp",
    "zp_err",
    "dither_x",
    "dither_y",
)


def grid_shape(config: SimulationConfig) -> tuple[int, int]:
    """Return the focal-plane grid (n_rows, n_cols) holding ``config.n_ccds`` CCDs.

    The grid is chosen close to square on the sky: 18 PAUCam CCDs of (4096, 2048) give
    3 rows × 6 columns.

    Parameters
    ----------
    config : SimulationConfig
        ``n_ccds`` and ``ccd_shape`` (ny, nx) in px.

    Returns
    -------
    (int, int)
        ``(n_rows, n_cols)``.
    """
    ny, nx = config.ccd_shape
    n = config.n_ccds
    n_cols = max(1, min(n, math.ceil(math.sqrt(n * ny / nx) - 1e-9)))
    n_rows = math.ceil(n / n_cols)
    return n_rows, n_cols


def focal_plane_extent(config: SimulationConfig) -> tuple[float, float]:
    """Return the size of the CCD grid on the focal plane, gaps included.

    Parameters
    ----------
    config : SimulationConfig
        The simulation configuration.

    Returns
    -------
    (float, float)
        ``(width, height)`` in px.
    """
    ny, nx = config.ccd_shape
    n_rows, n_cols = grid_shape(config)
    g = config.ccd_gap_px
    return float(n_cols * nx + (n_cols - 1) * g), float(n_rows * ny + (n_rows - 1) * g)


def focal_plane_layout(config: SimulationConfig) -> pd.DataFrame:
    """Return the position of every CCD on the focal plane.

    Parameters
    ----------
    config : SimulationConfig
        The simulation configuration.

    Returns
    -------
    pandas.DataFrame
        One row per CCD: ``ccd`` (1-based), ``row``, ``col`` (grid cell), ``x0``, ``y0``:
        focal-plane pixel coordinates of the centre of the CCD's pixel (0, 0). The focal
        plane's origin is the optical axis (the field centre of an undithered pointing);
        focal-plane axes are parallel to the CCD pixel axes.
    """
    ny, nx = config.ccd_shape
    _, n_cols = grid_shape(config)
    width, height = focal_plane_extent(config)
    g = config.ccd_gap_px
    ccd = np.arange(1, config.n_ccds + 1)
    row, col = (ccd - 1) // n_cols, (ccd - 1) % n_cols
    x0 = col * (nx + g) - (width - 1) / 2
    y0 = row * (ny + g) - (height - 1) / 2
    return pd.DataFrame({"ccd": ccd, "row": row, "col": col, "x0": x0, "y0": y0})


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return rng.uniform(bounds[0], bounds[1], n)


def exposure_plan(config: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Draw the observing conditions of every exposure.

    Exposures are taken band after band (``exposures_per_band`` each) with consecutive
    exposure numbers from ``config.first_expnum``.

    Parameters
    ----------
    config : SimulationConfig
        The simulation configuration.
    rng : numpy.random.Generator
        The exposure stream's generator (the draws' order fixes the plan).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`EXPOSURE_COLUMNS`: ``seeing_fwhm`` [arcsec], ``sky_e`` [e⁻/px],
        ``sky_adu`` [ADU/px], ``transparency`` [fraction], ``zp_true`` [µJy/ADU, the exact
        zero-point: f_cal = f_adu × zp_true], ``zp`` [µJy/ADU, the header value, off by the
        calibration error], ``zp_err`` [µJy/ADU, = zp_err_frac × zp], ``dither_x/y`` [px,
        shift of the sky on the detector], ``mjd_obs`` [d], ``exptime`` [s].
    """
    n = config.n_exposures
    bands = np.repeat(np.asarray(config.bands, dtype=object), config.exposures_per_band)
    transparency = _uniform(rng, config.transparency_range, n)
    zp_true = config.gain / (config.electrons_per_ujy * transparency)
    zp = zp_true * (1.0 + config.zp_err_frac * rng.standard_normal(n))
    sky_e = _uniform(rng, config.sky_range_e, n)
    overhead_s = 30.0
    plan = pd.DataFrame(
        {
            "expnum": config.first_expnum + np.arange(n, dtype=np.int64),
            "band": bands.astype(str),
            "wavelength_nm": [band_wavelength_nm(b) for b in bands],
            "exptime": np.full(n, config.exptime),
            "mjd_obs": config.mjd_start + np.arange(n) * (config.exptime + overhead_s) / 86400.0,
            "airmass": _uniform(rng, config.airmass_range, n),
            "seeing_fwhm": _uniform(rng, config.seeing_fwhm_range, n),
            "sky_e": sky_e,
            "sky_adu": sky_e / config.gain,
            "transparency": transparency,
            "zp_true": zp_true,
            "zp": zp,
            "zp_err": config.zp_err_frac * zp,
            "dither_x": rng.uniform(-config.dither_px, config.dither_px, n),
            "dither_y": rng.uniform(-config.dither_px, config.dither_px, n),
        }
    )
    return plan[list(EXPOSURE_COLUMNS)]


def _tan_wcs(config: SimulationConfig, crpix: tuple[float, float]) -> WCS:
    """Build a TAN WCS centred on the field, north up, east left, ``crpix`` 1-based (FITS).

    Returns
    -------
    astropy.wcs.WCS
        The celestial WCS.
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [config.ra_center, config.dec_center]
    w.wcs.crpix = list(crpix)
    scale_deg = config.pixel_scale / 3600.0
    w.wcs.cd = np.array([[-scale_deg, 0.0], [0.0, scale_deg]])
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


def focal_plane_wcs(config: SimulationConfig) -> WCS:
    """Return the WCS of the undithered focal plane.

    Parameters
    ----------
    config : SimulationConfig
        Field centre (degrees) and pixel scale (arcsec/px).

    Returns
    -------
    astropy.wcs.WCS
        TAN WCS whose 0-based pixel (0, 0) is the field centre.
    """
    return _tan_wcs(config, (1.0, 1.0))


def frame_wcs(config: SimulationConfig, exposure: pd.Series, ccd: int) -> WCS:
    """Return the TAN WCS of one CCD in one exposure.

    The dither is a pointing offset expressed as a shift of the reference pixel: the sky
    moves by (``dither_x``, ``dither_y``) pixels on the detector. ``CRVAL`` is the field
    centre, ``CRPIX`` the (1-based) position of the field centre in the CCD's pixel frame.

    Parameters
    ----------
    config : SimulationConfig
        The simulation configuration.
    exposure : pandas.Series
        One row of :func:`exposure_plan` (``dither_x``, ``dither_y`` in px).
    ccd : int
        CCD number, 1-based.

    Returns
    -------
    astropy.wcs.WCS
        The CCD's TAN WCS.
    """
    layout = focal_plane_layout(config).set_index("ccd")
    x0, y0 = layout.loc[ccd, "x0"], layout.loc[ccd, "y0"]
    crpix = (-x0 + exposure["dither_x"] + 1.0, -y0 + exposure["dither_y"] + 1.0)
    return _tan_wcs(config, (float(crpix[0]), float(crpix[1])))


def frame_header(config: SimulationConfig, exposure: pd.Series, ccd: int, wcs: WCS) -> fits.Header:
    """Return the FITS header of one simulated PAUS image (REQUIRED_KEYS, extras and WCS).

    Parameters
    ----------
    config : SimulationConfig
        Gain (e⁻/ADU), read noise (e⁻), full well (e⁻).
    exposure : pandas.Series
        One row of :func:`exposure_plan`.
    ccd : int
        CCD number, 1-based.
    wcs : astropy.wcs.WCS
        The CCD's WCS (:func:`frame_wcs`).

    Returns
    -------
    astropy.io.fits.Header
        The header; ZP in µJy/ADU, SATURATE and SKYLEVEL in ADU, SEEING in arcsec.
    """
    h = fits.Header()
    h["EXPNUM"] = (int(exposure["expnum"]), "exposure number")
    h["CCD"] = (int(ccd), "CCD number (1-based)")
    h["FILTER"] = (str(exposure["band"]), "PAUS narrow band")
    h["EXPTIME"] = (float(exposure["exptime"]), "[s] exposure time")
    h["GAIN"] = (float(config.gain), "[e-/ADU] gain")
    h["RDNOISE"] = (float(config.read_noise), "[e-] read noise")
    h["ZP"] = (float(exposure["zp"]), "[uJy/ADU] f_cal = f_adu * ZP")
    h["ZPERR"] = (float(exposure["zp_err"]), "[uJy/ADU] 1-sigma error of ZP")
    h["SATURATE"] = (float(config.full_well / config.gain), "[ADU] saturation level")
    h["SKYLEVEL"] = (float(exposure["sky_adu"]), "[ADU] mean sky level (true)")
    h["SEEING"] = (float(exposure["seeing_fwhm"]), "[arcsec] PSF FWHM (true)")
    h["MJD-OBS"] = (float(exposure["mjd_obs"]), "[d] start of exposure")
    h["AIRMASS"] = (float(exposure["airmass"]), "airmass")
    h["BUNIT"] = ("adu", "image unit")
    h["SIMULATE"] = (True, "pausdenoise.simulate synthetic frame")
    h.extend(wcs.to_header(relax=True), update=True)
    return h
