"""Forced photometry of one (exposure, CCD) image: arrays in, table out.

Combines the annulus background (:mod:`pausdenoise.photometry.annulus`) and the aperture
sums (:mod:`pausdenoise.photometry.apertures`) into fluxes, errors and calibrated fluxes:

3. **Error** (all in ADU; ``gain`` in e⁻/ADU)::

       flux_err² = max(flux, 0) / gain            # source Poisson term (ADU²)
                 + area * bkg_std²                 # sky noise in the aperture
                 + area² * bkg_std² / bkg_n        # error of the background estimate

   With ``background="median"`` the last term is multiplied by π/2 (the variance of a
   median of ``n`` Gaussian values is π/2 · σ²/n).
4. **Calibration** (ZP multiplicative, ``pausdenoise.paus_layout``)::

       flux_cal = flux * zp
       flux_cal_err = sqrt(flux_err² zp_err² + flux_err² zp² + flux² zp_err²)

The clipped annulus *mean* (default) or *median* is the sky subtracted:
``flux = aper_sum - area * bkg``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pausdenoise.photometry.annulus import annulus_fraction_on_image, annulus_stats
from pausdenoise.photometry.apertures import _aperture_geometry, aperture_sums
from pausdenoise.photometry.catalogue import REQUIRED_COLUMNS, _require_columns
from pausdenoise.photometry.config import PhotFlag, PhotometryConfig

__all__ = ["OUTPUT_COLUMNS", "calibrate_flux", "measure_frame"]

#: Output schema: column -> dtype. One row per (ref_id, expnum, ccd, kind).
OUTPUT_COLUMNS: dict[str, str] = {
    "ref_id": "int64",
    "expnum": "int64",
    "ccd": "int64",
    "band": "object",  # str
    "kind": "object",  # "raw" | "denoised"
    "I_auto": "float64",
    "x": "float64",  # 0-based pixel column
    "y": "float64",  # 0-based pixel row
    "a": "float64",  # semi-major axis, pixels
    "b": "float64",  # semi-minor axis, pixels
    "theta": "float64",  # photutils theta, radians (= -aperture_theta*pi/180)
    "aper_sum": "float64",  # Σ overlap × pixel over unmasked pixels, ADU
    "area": "float64",  # Σ overlap over unmasked in-image pixels, px
    "area_masked": "float64",  # Σ overlap over masked / non-finite in-image pixels, px
    "bkg_mean": "float64",  # clipped annulus mean, ADU/px
    "bkg_median": "float64",  # clipped annulus median, ADU/px
    "bkg_std": "float64",  # clipped annulus std (ddof=0), ADU/px
    "bkg_n": "int64",  # clipped annulus pixel count
    "bkg": "float64",  # the statistic subtracted (mean or median)
    "flux": "float64",  # ADU
    "flux_err": "float64",  # ADU
    "flags": "int32",  # PhotFlag bits
    "zp": "float64",
    "zp_err": "float64",
    "flux_cal": "float64",  # flux * zp
    "flux_cal_err": "float64",
}


def calibrate_flux(
    flux: np.ndarray, flux_err: np.ndarray, zp: float | np.ndarray, zp_err: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a multiplicative zero-point: ``f·ZP`` and ``sqrt(σ²σZP² + σ²ZP² + f²σZP²)``.

    Parameters
    ----------
    flux : array_like of float
        Fluxes ``f`` in ADU.
    flux_err : array_like of float
        Their errors ``σ`` in ADU.
    zp : float or array_like of float
        Multiplicative zero-point ``ZP`` (calibrated units per ADU).
    zp_err : float or array_like of float
        Error ``σZP`` of the zero-point.

    Returns
    -------
    flux_cal : ndarray of float64
        ``f·ZP``.
    flux_cal_err : ndarray of float64
        ``sqrt(σ²σZP² + σ²ZP² + f²σZP²)``.
    """
    f, s = np.asarray(flux, dtype=float), np.asarray(flux_err, dtype=float)
    zp, zpe = np.asarray(zp, dtype=float), np.asarray(zp_err, dtype=float)
    return f * zp, np.sqrt(s * s * zpe * zpe + s * s * zp * zp + f * f * zpe * zpe)


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in OUTPUT_COLUMNS.items()})


def _checked_arrays(
    image: np.ndarray, mask: np.ndarray | None, gain: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check the image, mask and gain of :func:`measure_frame`.

    Returns
    -------
    tuple
        ``(image, mask)`` as arrays (a non-integer mask cast to uint16).

    Raises
    ------
    ValueError
        When the image is not 2-D, the mask's shape differs, or ``gain`` is not > 0.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} != image shape {image.shape}")
        if mask.dtype.kind not in "ui":
            mask = mask.astype(np.uint16)
    if not (gain > 0):
        raise ValueError(f"gain must be > 0 e-/ADU, got {gain}")
    return image, mask


def _flux_and_error(
    ap: dict[str, np.ndarray], st: dict[str, np.ndarray], config: PhotometryConfig, gain: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subtract the sky and propagate the errors (step 3 of the recipe).

    Returns
    -------
    tuple of ndarray
        ``(bkg, flux, flux_err)`` in ADU (``bkg`` per pixel); ``flux_err`` is NaN where
        the annulus had no usable pixel.
    """
    bkg = st["bkg_mean"] if config.background == "mean" else st["bkg_median"]
    area = ap["area"]
    flux = ap["aper_sum"] - area * bkg
    var_bkg_est = st["bkg_std"] ** 2 / np.maximum(st["bkg_n"], 1)
    if config.background == "median":
        var_bkg_est = var_bkg_est * (np.pi / 2.0)
    with np.errstate(invalid="ignore"):
        var = np.maximum(flux, 0.0) / gain + area * st["bkg_std"] ** 2 + area**2 * var_bkg_est
    var = np.where(st["bkg_n"] > 0, var, np.nan)
    return bkg, flux, np.sqrt(var)


def _run_kernels(
    image: np.ndarray,
    mask: np.ndarray | None,
    geometry: tuple[np.ndarray, ...],
    config: PhotometryConfig,
    sat_level: float | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run the aperture-sum and annulus kernels (``sat_level`` in ADU, or None).

    Returns
    -------
    tuple of dict
        The results of :func:`aperture_sums` and :func:`annulus_stats`.
    """
    x, y, a, b, theta = geometry
    mask_sat = config.saturation == "mask"

    ap = aperture_sums(
        image,
        x,
        y,
        a,
        b,
        theta,
        mask=mask,
        subpixels=config.subpixels,
        bad_mask_bits=config.bad_mask_bits,
        saturate_level=sat_level,
        mask_saturated=mask_sat,
    )
    st = annulus_stats(
        image,
        x,
        y,
        r_in=config.annulus_r_in,
        r_out=config.annulus_r_out,
        mask=mask,
        sigma=config.sigma,
        maxiters=config.maxiters,
        bad_mask_bits=config.bad_mask_bits,
        saturate_level=sat_level,
        mask_saturated=mask_sat,
        batch_size=config.batch_size,
    )
    return ap, st


def _passed_through(
    apertures: pd.DataFrame, expnum: int | None, ccd: int | None, band: str | None
) -> dict[str, np.ndarray]:
    """Take the pass-through columns from the catalogue, or the defaults where absent.

    Returns
    -------
    dict of str to ndarray
        ``expnum``, ``ccd``, ``band`` and ``I_auto``.
    """
    n = len(apertures)

    def col(name: str, default: Any, dtype: str) -> np.ndarray:
        if name in apertures.columns:
            return apertures[name].to_numpy()
        return np.full(n, default, dtype=dtype)

    return {
        "expnum": col("expnum", -1 if expnum is None else expnum, "int64"),
        "ccd": col("ccd", -1 if ccd is None else ccd, "int64"),
        "band": col("band", "" if band is None else band, "object"),
        "I_auto": col("I_auto", np.nan, "float64"),
    }


def measure_frame(
    image: np.ndarray,
    mask: np.ndarray | None,
    apertures: pd.DataFrame,
    config: PhotometryConfig | None = None,
    *,
    gain: float,
    zp: float = 1.0,
    zp_err: float = 0.0,
    saturate: float | None = None,
    kind: str = "raw",
    expnum: int | None = None,
    ccd: int | None = None,
    band: str | None = None,
) -> pd.DataFrame:
    """Measure the catalogue rows ``apertures`` on one (exposure, CCD) image.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Pixel values in ADU, sky not subtracted (raw or denoised).
    mask : ndarray of unsigned int, shape (ny, nx), or None
        0 = good, otherwise ``MaskBit`` bits; a mask of another dtype is cast to uint16.
    apertures : pandas.DataFrame
        The frame's catalogue rows (``REQUIRED_COLUMNS``: ``aperture_x/y`` 0-based pixels,
        ``aperture_a/b`` in ``config.aperture_units``, ``aperture_theta`` degrees with the
        PAUS sign); ``expnum``, ``ccd``, ``band``, ``I_auto`` passed through when present.
    config : PhotometryConfig, optional
        Settings; the defaults when None.
    gain : float
        e⁻/ADU (> 0).
    zp, zp_err : float, optional
        Multiplicative zero-point and its error (defaults 1 and 0).
    saturate : float, optional
        ADU level from the frame header (``config.saturate_level`` overrides).
    kind : str, optional
        Label of the image ("raw" or "denoised").
    expnum, ccd : int, optional
        Fill those columns when the catalogue lacks them (-1 when None).
    band : str, optional
        Fills the ``band`` column when the catalogue lacks it ("" when None).

    Returns
    -------
    pandas.DataFrame
        ``OUTPUT_COLUMNS``, one row per input row, in input order. Flux and errors are in
        ADU (``flux_cal`` in calibrated units); see :mod:`pausdenoise.photometry` for the
        formulas. Flagged rows are kept (``flags != 0``).

    Raises
    ------
    KeyError
        When a required catalogue column is missing.
    ValueError
        When the image is not 2-D, the mask's shape differs, or ``gain`` is not > 0.
    """
    config = config or PhotometryConfig()
    _require_columns(apertures, REQUIRED_COLUMNS, "apertures")
    image, mask = _checked_arrays(image, mask, gain)
    n = len(apertures)
    if n == 0:
        return _empty_table()
    sat_level = config.saturate_level if config.saturate_level is not None else saturate
    if sat_level is not None and not np.isfinite(sat_level):
        sat_level = None
    x, y, a, b, theta = _aperture_geometry(apertures, config)
    ap, st = _run_kernels(image, mask, (x, y, a, b, theta), config, sat_level)
    flags = ap["flags"].copy()
    dup = apertures.duplicated(subset=["ref_id"], keep=False).to_numpy()
    flags[dup] |= PhotFlag.BAD_INPUT
    flags[st["bkg_n"] < config.min_annulus_pixels] |= PhotFlag.FEW_ANNULUS
    frac = annulus_fraction_on_image(x, y, r_in=config.annulus_r_in,
                                     r_out=config.annulus_r_out, shape=image.shape)
    with np.errstate(invalid="ignore"):
        flags[frac < config.min_annulus_fraction] |= PhotFlag.ANNULUS_OFF_IMAGE

    bkg, flux, flux_err = _flux_and_error(ap, st, config, gain)
    flux_cal, flux_cal_err = calibrate_flux(flux, flux_err, zp, zp_err)
    flags[~(np.isfinite(flux) & np.isfinite(flux_err))] |= PhotFlag.NONFINITE_RESULT

    given = _passed_through(apertures, expnum, ccd, band)
    out = pd.DataFrame(
        {
            "ref_id": apertures["ref_id"].to_numpy(dtype=np.int64),
            "expnum": given["expnum"],
            "ccd": given["ccd"],
            "band": given["band"],
            "kind": np.full(n, kind, dtype=object),
            "I_auto": given["I_auto"],
            "x": x,
            "y": y,
            "a": a,
            "b": b,
            "theta": theta,
            "aper_sum": ap["aper_sum"],
            "area": ap["area"],
            "area_masked": ap["area_masked"],
            "bkg_mean": st["bkg_mean"],
            "bkg_median": st["bkg_median"],
            "bkg_std": st["bkg_std"],
            "bkg_n": st["bkg_n"],
            "bkg": bkg,
            "flux": flux,
            "flux_err": flux_err,
            "flags": flags,
            "zp": np.full(n, zp, dtype=float),
            "zp_err": np.full(n, zp_err, dtype=float),
            "flux_cal": flux_cal,
            "flux_cal_err": flux_cal_err,
        }
    )
    return out.astype(OUTPUT_COLUMNS)
