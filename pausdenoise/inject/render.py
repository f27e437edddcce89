"""Add GalSim sources of known flux to one frame's own pixels, with their catalogue and truth.

The injected light is drawn as the simulation draws its galaxies
(:mod:`pausdenoise.simulate.render`), convolved with the frame's Moffat PSF, given its own
Poisson noise (the frame already holds its sky and read noise) and added to a float32 copy
of the frame. ``galsim`` is imported inside the drawing functions only.

Units: positions are 0-based pixels of the frame (pixel centres at integers); fluxes in the
image and the tables are ADU (``electrons = gain × ADU``); zero-points multiplicative in
µJy/ADU (``flux_adu = flux_µJy / zp``); sizes in arcsec unless named ``_px``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pausdenoise.errors import ConfigError
from pausdenoise.inject.config import InjectConfig
from pausdenoise.inject.placement import occupancy_from_image, sky_variance
from pausdenoise.inject.population import band_flux_ujy
from pausdenoise.paus_layout import CATALOGUE_COLUMNS, PROFILE_COLUMNS
from pausdenoise.simulate.render import (
    aperture_axes,
    aperture_sum,
    draw_stamp,
    moffat_psf,
    paus_theta_deg,
    source_profile,
    stamp_half_size_px,
)
from pausdenoise.simulate.sources import mag_to_ujy, ujy_to_mag
from pausdenoise.store import frame_gain

if TYPE_CHECKING:
    from astropy.wcs import WCS

    from pausdenoise.psf import PsfEstimate

__all__ = [
    "INJECT_CATALOGUE_COLUMNS",
    "INJECT_TRUTH_COLUMNS",
    "InjectionResult",
    "draw_injection_stamps",
    "frame_zp",
    "inject_frame",
]

#: Columns of the injection catalogue: the reference-catalogue columns and the profile.
INJECT_CATALOGUE_COLUMNS: tuple[str, ...] = (*CATALOGUE_COLUMNS, *PROFILE_COLUMNS)

#: Columns of the injection truth table, in order (one row per injection and frame).
INJECT_TRUTH_COLUMNS: tuple[str, ...] = (
    "ref_id",  # int64, >= 1_000_000_000
    "expnum",  # int64
    "ccd",  # int64
    "band",  # str
    "I_auto",  # float64, AB mag
    "mag_true",  # float64, AB mag in the band
    "x_true",  # float64, 0-based pixel column
    "y_true",  # float64, 0-based pixel row
    "flux_true_adu",  # float64, total injected flux, ADU
    "flux_true_aper_adu",  # float64, own noiseless light inside its catalogue aperture, ADU
    "flux_cr_var_adu2",  # float64, Cramér–Rao variance of the total flux, ADU²
    "zp",  # float64, zero-point used, µJy/ADU
    "profile_hlr",  # float64, arcsec
    "profile_q",  # float64
    "profile_bulge_frac",  # float64
    "psf_fwhm_px",  # float64, PSF FWHM drawn, px
    "sky_var_adu2",  # float64, the frame's per-pixel sky noise variance, ADU²
)


@dataclass(frozen=True)
class InjectionResult:
    """One frame with injected sources.

    Attributes
    ----------
    image
        float32 (ny, nx), ADU: the input frame plus the injected light and its Poisson
        noise (pixels pushed over the frame's saturation level are clipped to it).
    catalogue
        :data:`INJECT_CATALOGUE_COLUMNS`, one row per injection: the aperture by the
        simulation's convention (arcsec, PAUS degrees) and the true profile.
    truth
        :data:`INJECT_TRUTH_COLUMNS`, same rows and order as ``catalogue``.
    """

    image: np.ndarray
    catalogue: pd.DataFrame
    truth: pd.DataFrame


def _frame_name(attrs: Mapping[str, Any]) -> str:
    return f"frame expnum={attrs.get('expnum')} ccd={attrs.get('ccd')}"


def frame_zp(attrs: Mapping[str, Any], config: InjectConfig) -> float:
    """Return the zero-point injections are scaled with: the frame's, else ``config.zp_ab``.

    Parameters
    ----------
    attrs : mapping
        The frame's attributes; ``zp`` in µJy/ADU (missing, NaN or <= 0: none).
    config : InjectConfig
        ``zp_ab``: AB magnitude of 1 ADU for frames without a zero-point.

    Returns
    -------
    float
        µJy per ADU.

    Raises
    ------
    ConfigError
        When the frame has no usable zero-point and ``zp_ab`` is not set (names the frame).
    """
    try:
        zp = float(attrs.get("zp", np.nan))
    except (TypeError, ValueError):
        zp = float("nan")
    if np.isfinite(zp) and zp > 0:
        return zp
    if config.zp_ab is not None:
        return float(mag_to_ujy(config.zp_ab))
    raise ConfigError(
        f"{_frame_name(attrs)} has no zero-point (zp = {attrs.get('zp')!r}): set inject.zp_ab "
        "(AB magnitude of 1 ADU) to inject into frames without one"
    )


def _frame_gain(attrs: Mapping[str, Any]) -> float:
    """Return the frame's gain in e⁻/ADU (:func:`pausdenoise.store.frame_gain`).

    Returns
    -------
    float
        The gain.

    Raises
    ------
    ConfigError
        When it is missing or not > 0 (names the frame).
    """
    try:
        return frame_gain(dict(attrs), _frame_name(attrs))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _apertures(injections: pd.DataFrame, fwhm_arcsec: float, config: InjectConfig) -> dict:
    """Catalogue apertures (arcsec, PAUS degrees) of the injections, by the simulation's rule.

    Returns
    -------
    dict of str to ndarray
        ``a``, ``b`` (arcsec), ``theta_deg`` (PAUS ``aperture_theta``).
    """
    a, b = aperture_axes(
        injections["profile_hlr"].to_numpy(dtype=float),
        injections["profile_q"].to_numpy(dtype=float),
        fwhm_arcsec,
        config.aperture_factor,
    )
    theta = paus_theta_deg(injections["theta_pix_deg"].to_numpy(dtype=float))
    return {"a": a, "b": b, "theta_deg": theta}


def draw_injection_stamps(
    injections: pd.DataFrame,
    flux_adu: np.ndarray,
    psf: PsfEstimate,
    config: InjectConfig,
    *,
    pixel_scale: float,
) -> list[Any]:
    """Draw each injection, noiseless, on its own GalSim stamp (the simulation's model).

    Parameters
    ----------
    injections : pandas.DataFrame
        ``x``, ``y`` (0-based px of the frame) and the population columns of
        :func:`~pausdenoise.inject.population.draw_injections`.
    flux_adu : ndarray
        Total fluxes, ADU, aligned with ``injections``.
    psf : PsfEstimate
        The frame's Moffat PSF (``fwhm_px`` in px, ``beta``).
    config : InjectConfig
        Truncation of the profiles and of the PSF.
    pixel_scale : float
        Arcsec per pixel of the frame.

    Returns
    -------
    list of galsim.ImageD
        One stamp per injection (1-based GalSim bounds, see
        :func:`pausdenoise.simulate.render.draw_stamp`), in ADU, holding all its light.
    """
    fwhm = float(psf.fwhm_px) * pixel_scale
    psf_obj = moffat_psf(fwhm, float(psf.beta), config.psf_trunc_fwhm)
    hlr = injections["profile_hlr"].to_numpy(dtype=float)
    q = injections["profile_q"].to_numpy(dtype=float)
    radius = stamp_half_size_px(
        hlr,
        q,
        fwhm,
        psf_trunc_fwhm=config.psf_trunc_fwhm,
        profile_trunc_hlr=config.profile_trunc_hlr,
        pixel_scale=pixel_scale,
    )
    stamps = []
    for i, row in enumerate(injections.itertuples(index=False)):
        with warnings.catch_warnings():
            # truncated profiles have hard edges; FFT drawing keeps their flux (see
            # pausdenoise.simulate.render.render_sources)
            warnings.filterwarnings("ignore", message=".*hard edges.*")
            obj = source_profile(
                psf_obj,
                float(flux_adu[i]),
                is_star=bool(row.is_star),
                hlr=float(row.profile_hlr),
                q=float(row.profile_q),
                theta_pix_deg=float(row.theta_pix_deg),
                bulge_frac=float(row.profile_bulge_frac),
                trunc_hlr=config.profile_trunc_hlr,
            )
            stamps.append(draw_stamp(obj, float(row.x), float(row.y), int(radius[i]), pixel_scale))
    return stamps


def _overlap(stamp: Any, shape: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices of the frame and of the stamp's array where they overlap (may be empty).

    Returns
    -------
    tuple
        ``(frame_slices, stamp_slices)``, each ``(rows, columns)``.
    """
    ny, nx = shape
    b = stamp.bounds
    x0, x1 = max(b.xmin - 1, 0), min(b.xmax, nx)
    y0, y1 = max(b.ymin - 1, 0), min(b.ymax, ny)
    x1, y1 = max(x1, x0), max(y1, y0)
    sx, sy = x0 - (b.xmin - 1), y0 - (b.ymin - 1)
    frame = (slice(y0, y1), slice(x0, x1))
    own = (slice(sy, sy + y1 - y0), slice(sx, sx + x1 - x0))
    return frame, own


def _cramer_rao_var(light: np.ndarray, flux: float, sky_var: float, gain: float) -> float:
    """Cramér–Rao variance (ADU²) of a total flux with known pixelised profile ``light/flux``.

    Returns
    -------
    float
        ``1 / Σ p²/V`` with ``p = light/flux`` and ``V = sky_var + flux·p/gain``.
    """
    if not (flux > 0 and np.isfinite(sky_var)) or light.size == 0:
        return float("nan")
    p = light / flux
    var = sky_var + flux * np.maximum(p, 0.0) / gain
    with np.errstate(divide="ignore"):
        return float(1.0 / np.sum(p * p / var))


def _add_light(
    out: np.ndarray,
    stamps: list[Any],
    gain: float,
    rng: np.random.Generator,
    add_noise: bool,
) -> None:
    """Add each stamp's light to ``out`` in place, Poisson-sampled in e⁻ when ``add_noise``."""
    for stamp in stamps:
        frame, own = _overlap(stamp, out.shape)
        light = stamp.array[own]
        if add_noise:
            light = rng.poisson(np.maximum(light * gain, 0.0)) / gain
        out[frame] += light.astype(np.float32)


def _clip_saturated(out: np.ndarray, original: np.ndarray, saturate: Any) -> None:
    """Clip pixels the injections pushed above the saturation level (ADU) to it, in place."""
    try:
        level = float(saturate)
    except (TypeError, ValueError):
        return
    if not np.isfinite(level):
        return
    over = (out > level) & (out != original)
    out[over] = np.maximum(original[over], level)


_NEEDED = (
    "x",
    "y",
    "ref_id",
    "I_auto",
    "is_star",
    "profile_hlr",
    "profile_q",
    "theta_pix_deg",
    "profile_bulge_frac",
)


def _truth_per_stamp(
    injections: pd.DataFrame,
    stamps: list[Any],
    flux_adu: np.ndarray,
    aper: dict[str, np.ndarray],
    shape: tuple[int, int],
    sky_var: float,
    gain: float,
    pixel_scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Each injection's own noiseless aperture flux and Cramér–Rao variance.

    Returns
    -------
    tuple of ndarray
        ``flux_true_aper_adu`` (ADU) and ``flux_cr_var_adu2`` (ADU²; on the stamp's pixels
        that lie on the frame).
    """
    n = len(stamps)
    aper_sum_adu, cr_var = np.zeros(n), np.zeros(n)
    x, y = injections["x"].to_numpy(dtype=float), injections["y"].to_numpy(dtype=float)
    for i, stamp in enumerate(stamps):
        aper_sum_adu[i] = aperture_sum(
            stamp,
            x[i],
            y[i],
            aper["a"][i] / pixel_scale,
            aper["b"][i] / pixel_scale,
            -np.radians(aper["theta_deg"][i]),
        )
        _, own = _overlap(stamp, shape)
        cr_var[i] = _cramer_rao_var(stamp.array[own], float(flux_adu[i]), sky_var, gain)
    return aper_sum_adu, cr_var


def _tables(
    injections: pd.DataFrame,
    attrs: Mapping[str, Any],
    aper: dict[str, np.ndarray],
    radec: tuple[np.ndarray, np.ndarray],
    truth_cols: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the catalogue and truth tables of one frame's injections.

    Returns
    -------
    tuple of pandas.DataFrame
        ``(catalogue, truth)`` with :data:`INJECT_CATALOGUE_COLUMNS` and
        :data:`INJECT_TRUTH_COLUMNS`.
    """
    n = len(injections)
    common = {
        "ref_id": injections["ref_id"].to_numpy(dtype=np.int64),
        "expnum": np.full(n, int(attrs.get("expnum", -1)), dtype=np.int64),
        "ccd": np.full(n, int(attrs.get("ccd", -1)), dtype=np.int64),
        "band": np.full(n, str(attrs.get("band", "")), dtype=object),
        "I_auto": injections["I_auto"].to_numpy(dtype=float),
    }
    profile = {c: injections[c].to_numpy(dtype=float) for c in PROFILE_COLUMNS}
    x, y = injections["x"].to_numpy(dtype=float), injections["y"].to_numpy(dtype=float)
    catalogue = pd.DataFrame(
        {
            **common,
            "ra": radec[0],
            "dec": radec[1],
            "aperture_x": x,
            "aperture_y": y,
            "aperture_a": aper["a"],
            "aperture_b": aper["b"],
            "aperture_theta": aper["theta_deg"],
            **profile,
        }
    )[list(INJECT_CATALOGUE_COLUMNS)]
    truth = pd.DataFrame({**common, "x_true": x, "y_true": y, **profile, **truth_cols})[
        list(INJECT_TRUTH_COLUMNS)
    ]
    return catalogue, truth


def _sky_coordinates(
    wcs: WCS | None, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec (degrees) of 0-based pixel positions through ``wcs``; NaN without one.

    Returns
    -------
    tuple of ndarray
        ``(ra, dec)`` in degrees, ra in [0, 360).
    """
    if wcs is None or x.size == 0:
        return np.full(x.size, np.nan), np.full(x.size, np.nan)
    ra, dec = wcs.all_pix2world(x, y, 0)
    return np.mod(np.asarray(ra, dtype=float), 360.0), np.asarray(dec, dtype=float)


def _checked_inputs(
    image: np.ndarray, mask: np.ndarray | None, injections: pd.DataFrame
) -> np.ndarray:
    """Check the frame and the injection table.

    Returns
    -------
    ndarray
        ``image`` as an array.

    Raises
    ------
    ValueError
        When the image is not 2-D, the mask's shape differs or a column is missing.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if mask is not None and np.shape(mask) != image.shape:
        raise ValueError(f"mask shape {np.shape(mask)} != image shape {image.shape}")
    missing = [c for c in _NEEDED if c not in injections.columns]
    if missing:
        raise ValueError(f"injections lack column(s) {missing}")
    return image


def inject_frame(
    image: np.ndarray,
    mask: np.ndarray | None,
    attrs: Mapping[str, Any],
    injections: pd.DataFrame,
    psf: PsfEstimate,
    config: InjectConfig,
    rng: np.random.Generator,
    *,
    pixel_scale: float,
    occupied: np.ndarray | None = None,
    wcs: WCS | None = None,
    add_noise: bool = True,
) -> InjectionResult:
    """Add GalSim sources of known flux to a copy of one frame; return it, catalogue and truth.

    Each source's band flux (:func:`~pausdenoise.inject.population.band_flux_ujy`, µJy) is
    turned into ADU with the frame's zero-point (:func:`frame_zp`), drawn as the simulation
    draws its sources (bulge + disk or point source, convolved with the frame's Moffat PSF,
    pixel response included), Poisson-sampled in electrons (``gain × ADU``) when
    ``add_noise`` and added to a float32 copy of ``image``; the input is never modified.
    The truth holds the total flux, the own noiseless light inside the catalogue aperture
    (the simulation's ``flux_true_aper_adu``) and the Cramér–Rao variance
    ``1 / Σ p²/V`` with the drawn profile ``p`` (unit flux, pixels on the frame) and
    ``V = sky_var + F·p/gain``; ``sky_var`` is :func:`~pausdenoise.inject.placement.sky_variance`
    of the frame's unoccupied pixels.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame in ADU, sky not subtracted (any numeric dtype).
    mask : ndarray of int, shape (ny, nx), or None
        Mask bits, 0 = good (only used to find occupied pixels when ``occupied`` is None).
    attrs : mapping
        The frame's attributes: ``gain`` (e⁻/ADU), ``zp`` (µJy/ADU; missing or NaN needs
        ``config.zp_ab``), ``band``, ``expnum``, ``ccd``, ``saturate`` (ADU, optional).
    injections : pandas.DataFrame
        ``x``, ``y`` (0-based px in this frame) and the columns of
        :func:`~pausdenoise.inject.population.draw_injections`.
    psf : PsfEstimate
        The frame's PSF: Moffat ``fwhm_px`` (px) and ``beta``.
    config : InjectConfig
        Aperture factor, truncations, ``zp_ab``, detection settings.
    rng : numpy.random.Generator
        The generator of the Poisson noise.
    pixel_scale : float
        Arcsec per pixel of the frame.
    occupied : ndarray of bool, shape (ny, nx), optional
        Occupied pixels (:func:`~pausdenoise.inject.placement.occupancy_from_image`);
        computed from ``image`` and ``mask`` with ``config``'s settings when None.
    wcs : astropy.wcs.WCS, optional
        The frame's WCS, for the catalogue's ``ra``/``dec`` (NaN without one).
    add_noise : bool, optional
        False adds the noiseless light (for tests of the flux budget).

    Returns
    -------
    InjectionResult
        The image, the catalogue and the truth table (same rows, in ``injections`` order).

    Raises
    ------
    ConfigError
        When the frame has no zero-point and ``config.zp_ab`` is None, or no valid gain
        (the message names the frame).
    ValueError
        When the image is not 2-D, the mask's shape differs or a column is missing.
    """
    image = _checked_inputs(image, mask, injections)
    gain, zp = _frame_gain(attrs), frame_zp(attrs, config)
    flux_ujy = band_flux_ujy(injections, str(attrs.get("band", "")))
    flux_adu = np.asarray(flux_ujy, dtype=float) / zp
    if occupied is None:
        occupied = occupancy_from_image(
            image,
            mask,
            nsigma=config.detect_nsigma,
            grow_px=config.detect_grow_px,
            smooth_px=config.detect_smooth_px,
        )
    sky_var = sky_variance(image, occupied)
    fwhm_px = float(psf.fwhm_px)
    aper = _apertures(injections, fwhm_px * pixel_scale, config)
    stamps = draw_injection_stamps(injections, flux_adu, psf, config, pixel_scale=pixel_scale)
    aper_adu, cr_var = _truth_per_stamp(
        injections, stamps, flux_adu, aper, image.shape, sky_var, gain, pixel_scale
    )
    out = image.astype(np.float32, copy=True)
    _add_light(out, stamps, gain, rng, add_noise)
    _clip_saturated(out, image, attrs.get("saturate"))
    n = len(injections)
    truth_cols = {
        "mag_true": ujy_to_mag(flux_ujy),
        "flux_true_adu": flux_adu,
        "flux_true_aper_adu": aper_adu,
        "flux_cr_var_adu2": cr_var,
        "zp": np.full(n, zp),
        "psf_fwhm_px": np.full(n, fwhm_px),
        "sky_var_adu2": np.full(n, sky_var),
    }
    x, y = injections["x"].to_numpy(dtype=float), injections["y"].to_numpy(dtype=float)
    catalogue, truth = _tables(injections, attrs, aper, _sky_coordinates(wcs, x, y), truth_cols)
    return InjectionResult(out, catalogue, truth)
