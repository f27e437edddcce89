"""Forced photometry of one (exposure, CCD) image: arrays in, table out.

Combines the annulus background (:mod:`pausdenoise.photometry.annulus`) and the aperture
sums (:mod:`pausdenoise.photometry.apertures`) into fluxes, errors and calibrated fluxes:

3. **Error** (all in ADU; ``gain`` in e⁻/ADU)::

       flux_err² = max(flux, 0) / gain            # source Poisson term (ADU²)
                 + area * bkg_std²                 # sky noise in the aperture
                 + area² * bkg_std² / bkg_n        # error of the background estimate

   With ``background="median"`` the last term is multiplied by π/2 (the variance of a
   median of ``n`` Gaussian values is π/2 · σ²/n). With ``config.errors="ivar"`` and an
   ``ivar`` plane (1/ADU²), the sky-noise term ``area * bkg_std²`` becomes
   ``Σ overlap² / ivar`` over the aperture's unmasked pixels with ivar > 0: the per-pixel
   variance of the pipeline that made the frame. That ivar is taken as sky + read noise
   only (DECam Community Pipeline ``oow`` maps do not include the sources' shot noise:
   legacypipe adds it itself when it wants it), so the source Poisson term is kept; the
   background-estimate term is the annulus one in both cases.
4. **Calibration** (ZP multiplicative, ``pausdenoise.paus_layout``)::

       flux_cal = flux * zp
       flux_cal_err = sqrt(flux_err² zp_err² + flux_err² zp² + flux² zp_err²)

The clipped annulus *mean* (default) or *median* is the sky subtracted:
``flux = aper_sum - area * bkg``.

5. **Profile-weighted total flux** (``flux_prof``, when a PSF is given and
   ``config.profile``): optimal extraction with the catalogue shape convolved with the PSF,
   the same sky ``bkg``/``bkg_std``/``bkg_n``, neighbours fitted jointly
   (:mod:`pausdenoise.photometry.profile`); its own ``flags_prof`` bits
   (:class:`~pausdenoise.photometry.config.ProfFlag`). Steps 1–4 do not depend on it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pausdenoise.photometry.annulus import annulus_fraction_on_image, annulus_stats, sky_estimate
from pausdenoise.photometry.apcor import aperture_fractions, neighbour_light
from pausdenoise.photometry.apertures import _aperture_geometry, aperture_sums
from pausdenoise.photometry.calibration import calibrate_flux
from pausdenoise.photometry.catalogue import REQUIRED_COLUMNS, _require_columns
from pausdenoise.photometry.config import PhotFlag, PhotometryConfig, ProfFlag
from pausdenoise.photometry.empty import (
    EmptyApertureNoise,
    EmptyField,
    empty_aperture_noise,
    empty_field,
    nan_at,
    profile_sky_variance,
    sky_variance,
)
from pausdenoise.photometry.neighbours import neighbour_mask
from pausdenoise.photometry.profile import intrinsic_shapes, profile_fluxes, usable_pixels

if TYPE_CHECKING:  # typing only: the PSF module is not needed to import this one
    from pausdenoise.psf import PsfEstimate

__all__ = ["OUTPUT_COLUMNS", "measure_frame"]

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
    # profile-weighted forced photometry (pausdenoise.photometry.profile)
    "flux_prof": "float64",  # total flux, ADU
    "flux_prof_err": "float64",  # ADU
    "flux_prof_cal": "float64",  # flux_prof * zp
    "flux_prof_cal_err": "float64",
    "flags_prof": "int32",  # ProfFlag bits
    "psf_fwhm_px": "float64",  # FWHM of the Moffat PSF used, pixels
    # share of the profile's total flux in the aperture (pausdenoise.photometry.apcor)
    "aper_frac": "float64",
    "aper_neighbours": "float64",  # the other sources' light in the aperture, ADU
    "aper_neighbours_err": "float64",  # its error, ADU
}


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in OUTPUT_COLUMNS.items()})


#: Warning text when ``errors="ivar"`` is asked for and a frame has no ivar plane.
_NO_IVAR_WARNING = (
    "photometry.errors='ivar' but a frame has no ivar plane (no weight map ingested): its "
    "flux_err uses the annulus scatter ('annulus') instead"
)


def _checked_ivar(ivar: np.ndarray | None, shape: tuple[int, ...],
                  config: PhotometryConfig) -> np.ndarray | None:
    """Return the ivar plane to use for the errors, or None (``errors="annulus"``).

    Warns (:data:`_NO_IVAR_WARNING`, once per process and call site as Python's default
    warning filter does) when ``config.errors == "ivar"`` and ``ivar`` is None.

    Returns
    -------
    ndarray or None

    Raises
    ------
    ValueError
        When the ivar's shape differs from the image's.
    """
    if config.errors != "ivar":
        return None
    if ivar is None:
        warnings.warn(_NO_IVAR_WARNING, UserWarning, stacklevel=3)
        return None
    ivar = np.asarray(ivar)
    if ivar.shape != shape:
        raise ValueError(f"ivar shape {ivar.shape} != image shape {shape}")
    return ivar


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
    ap: dict[str, np.ndarray], st: dict[str, np.ndarray], config: PhotometryConfig, gain: float,
    empty: EmptyApertureNoise | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subtract the sky and propagate the errors (step 3 of the recipe).

    The sky-noise term is ``ap["var_ivar"]`` when present (``errors="ivar"``), else
    ``area * bkg_std²``; with ``empty`` (``errors="empty"``) it is the empty-aperture σ(A)²,
    which already holds the background estimate's noise.

    Returns
    -------
    tuple of ndarray
        ``(bkg, flux, flux_err)`` in ADU (``bkg`` per pixel); ``flux_err`` is NaN where
        the annulus had no usable pixel.
    """
    bkg, var_bkg_est = sky_estimate(st, config.background)
    area = ap["area"]
    flux = ap["aper_sum"] - area * bkg
    with np.errstate(invalid="ignore"):
        if empty is not None:
            var = np.maximum(flux, 0.0) / gain + sky_variance(empty, area)
        else:
            var_sky = ap["var_ivar"] if "var_ivar" in ap else area * st["bkg_std"] ** 2
            var = np.maximum(flux, 0.0) / gain + var_sky + area**2 * var_bkg_est
    var = np.where(st["bkg_n"] > 0, var, np.nan)
    return bkg, flux, np.sqrt(var)


def _empty_seed(expnum: int | None, ccd: int | None) -> int:
    """Return the seed of a frame's empty positions (a rerun measures the same ones).

    Returns
    -------
    int
        From (expnum, ccd).
    """
    return (int(expnum or 0) * 100 + int(ccd or 0)) % (2**32)


def _empty_noise(image: np.ndarray, mask: np.ndarray | None, geometry: tuple[np.ndarray, ...],
                 config: PhotometryConfig, sat_level: float | None, expnum: int | None,
                 ccd: int | None, near: np.ndarray | None = None
                 ) -> tuple[EmptyApertureNoise | None, EmptyField | None]:
    """Fit the frame's empty-aperture noise when ``config.errors == "empty"``.

    The positions are seeded by (expnum, ccd), so a rerun measures the same apertures.
    ``near`` is the catalogue's neighbour mask of :func:`_catalogue_near` (reused when it
    was grown by ≥ 1 semi-axis, as the empty field needs).

    Returns
    -------
    tuple
        The fit (None for other error modes, or with a warning when too few apertures fit)
        and the frame's :class:`~pausdenoise.photometry.empty.EmptyField` (None unless
        ``errors="empty"``).
    """
    if config.errors != "empty":
        return None, None
    reuse = near if config.annulus_mask_grow >= 1.0 else None
    field = empty_field(image, mask, geometry, config, sat_level, near=reuse)
    noise = empty_aperture_noise(image, mask, field, geometry, config, sat_level,
                                 _empty_seed(expnum, ccd))
    if noise is None:
        warnings.warn(
            f"exposure {expnum} ccd {ccd}: too few empty apertures fit for errors='empty'; "
            "the annulus sky term is used",
            stacklevel=3,
        )
    return noise, field


def _catalogue_near(
    shape: tuple[int, ...], geometry: tuple[np.ndarray, ...], config: PhotometryConfig
) -> np.ndarray | None:
    """Return the pixels near catalogue sources, left out of every background annulus.

    The pixels within ``config.annulus_mask_grow`` aperture semi-axes of every row of the
    frame's catalogue (:func:`~pausdenoise.photometry.neighbours.neighbour_mask`), so
    neighbours' wings do not raise the sky.

    Returns
    -------
    ndarray of bool or None
        The mask; None with ``annulus_mask_grow = 0``.
    """
    if config.annulus_mask_grow <= 0:
        return None
    x, y, a, b, theta = geometry
    return neighbour_mask(shape, x, y, a, b, theta, grow=config.annulus_mask_grow)


def _run_kernels(
    image: np.ndarray,
    mask: np.ndarray | None,
    geometry: tuple[np.ndarray, ...],
    config: PhotometryConfig,
    sat_level: float | None,
    ivar: np.ndarray | None = None,
    near: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run the aperture-sum and annulus kernels (``sat_level`` in ADU, or None).

    ``ivar`` (1/ADU²), when given, adds ``var_ivar`` to the aperture sums; the ``near``
    pixels (:func:`_catalogue_near`) are left out of the annuli.

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
        ivar=ivar,
    )
    st = annulus_stats(
        image if near is None else nan_at(image, near),
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


def _no_profile(n: int, psf: PsfEstimate | None) -> dict[str, np.ndarray]:
    """Profile columns of rows not measured with a profile (no PSF, or switched off).

    Returns
    -------
    dict of str to ndarray
        NaN fluxes, ``aper_frac`` and ``aper_neighbours(_err)``, ``flags_prof = NO_PSF``,
        ``psf_fwhm_px`` the PSF's FWHM or NaN.
    """
    nan = np.full(n, np.nan)
    fwhm = np.nan if psf is None else float(psf.fwhm_px)
    return {"flux_prof": nan, "flux_prof_err": nan, "flux_prof_cal": nan,
            "flux_prof_cal_err": nan, "flags_prof": np.full(n, int(ProfFlag.NO_PSF), np.int32),
            "psf_fwhm_px": np.full(n, fwhm), "aper_frac": nan, "aper_neighbours": nan,
            "aper_neighbours_err": nan}


def _profile_flags(res: dict[str, np.ndarray], approx: np.ndarray, x: np.ndarray,
                   y: np.ndarray, st: dict[str, np.ndarray], shape: tuple[int, ...],
                   config: PhotometryConfig) -> np.ndarray:
    """Set the ``flags_prof`` bits (:class:`ProfFlag`) from the profile results.

    Returns
    -------
    ndarray of int32
    """
    flags = np.zeros(len(x), dtype=np.int32)
    with np.errstate(invalid="ignore"):
        flags[approx] |= ProfFlag.APPROX_PROFILE
        flags[~res["valid"]] |= ProfFlag.BAD_INPUT
        low = ~(res["weight_left"] >= config.profile_min_weight) & res["valid"]
        flags[low] |= ProfFlag.LOW_WEIGHT
        flags[res["sat_frac"] > 1e-3] |= ProfFlag.SATURATED
        flags[st["bkg_n"] < config.min_annulus_pixels] |= ProfFlag.FEW_ANNULUS
        flags[res["sky_filled"]] |= ProfFlag.FEW_ANNULUS
        off = ~((x >= -0.5) & (x < shape[1] - 0.5) & (y >= -0.5) & (y < shape[0] - 0.5))
        flags[off] |= ProfFlag.OFF_IMAGE
        bad = ~(np.isfinite(res["flux"]) & np.isfinite(res["flux_err"]))
        flags[bad] |= ProfFlag.NONFINITE_RESULT
    return flags


def _profile_columns(
    image: np.ndarray, mask: np.ndarray | None, apertures: pd.DataFrame,
    geometry: tuple[np.ndarray, ...], st: dict[str, np.ndarray], bkg: np.ndarray,
    config: PhotometryConfig, *, psf: PsfEstimate | None, gain: float,
    sat_level: float | None, zp: float, zp_err: float,
    empty: EmptyField | None = None, empty_seed: int = 0,
) -> dict[str, np.ndarray]:
    """Compute the profile-weighted columns (:mod:`pausdenoise.photometry.profile`).

    The sky is the aperture recipe's: ``b = bkg``, ``V = bkg_std²`` and
    ``σ_b² = bkg_std² / bkg_n`` (× π/2 for the median); with ``empty`` (the frame's
    empty field, ``errors="empty"``) V is replaced by the frame's effective sky variance
    per pixel measured with profiles at empty positions
    (:func:`~pausdenoise.photometry.empty.profile_sky_variance`, seeded by ``empty_seed``)
    and σ_b² scaled alike; the error's sky terms change, the weights, hence the flux, do
    not. ``aper_frac`` is the aperture's share of the same profile's total flux
    (:func:`pausdenoise.photometry.apcor.aperture_fractions`), ``aper_neighbours`` ±
    ``aper_neighbours_err`` the other sources' light in it from their profile fluxes
    (:func:`pausdenoise.photometry.apcor.neighbour_light`).

    Returns
    -------
    dict of str to ndarray
        ``flux_prof``, ``flux_prof_err``, ``flux_prof_cal``, ``flux_prof_cal_err``,
        ``flags_prof``, ``psf_fwhm_px``, ``aper_frac``, ``aper_neighbours``,
        ``aper_neighbours_err``.
    """
    x, y, a, b, theta = geometry
    if psf is None or not config.profile or not (np.isfinite(psf.fwhm_px) and psf.fwhm_px > 0):
        return _no_profile(len(x), psf if config.profile else None)
    beta = float(psf.beta) if np.isfinite(psf.beta) and psf.beta > 1 else config.psf_beta
    *shapes, approx = intrinsic_shapes(apertures, a, b, float(psf.fwhm_px), config)
    good, sat = usable_pixels(image, mask, config.bad_mask_bits, sat_level)
    pixels = {"image": image.ravel(), "good": good.ravel(), "sat": sat.ravel(),
              "shape": image.shape}
    var_b = np.where(st["bkg_n"] > 0, sky_estimate(st, config.background)[1], np.nan)
    v_eff = None
    if empty is not None:
        v_eff = profile_sky_variance(empty, mask, geometry, tuple(shapes), pixels,
                                     fwhm_px=float(psf.fwhm_px), beta=beta, catalogue_bkg=bkg,
                                     config=config, sat_level=sat_level, seed=empty_seed)
        if v_eff is None:
            warnings.warn("too few empty positions for the profile errors of errors='empty': "
                          "flux_prof_err keeps the pixel-noise model", stacklevel=3)
    res = profile_fluxes(pixels, x, y, theta, tuple(shapes), fwhm_px=float(psf.fwhm_px),
                         beta=beta, sky=(bkg, st["bkg_std"] ** 2, var_b), gain=gain,
                         config=config, sky_variance=v_eff)
    cal, cal_err = calibrate_flux(res["flux"], res["flux_err"], zp, zp_err)
    light, light_err = np.full(len(x), np.nan), np.full(len(x), np.nan)
    comps = res["components"]
    if comps is not None:
        light, light_err = neighbour_light(geometry, comps[:2], res["flux"], res["flux_err"],
                                           comps[2], config)
    return {"flux_prof": res["flux"], "flux_prof_err": res["flux_err"], "flux_prof_cal": cal,
            "flux_prof_cal_err": cal_err,
            "flags_prof": _profile_flags(res, approx, x, y, st, image.shape, config),
            "psf_fwhm_px": np.full(len(x), float(psf.fwhm_px)),
            "aper_frac": aperture_fractions(geometry, tuple(shapes), fwhm_px=float(psf.fwhm_px),
                                            beta=beta, config=config,
                                            components=None if comps is None else comps[:2]),
            "aper_neighbours": light, "aper_neighbours_err": light_err}


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
    psf: PsfEstimate | None = None,
    ivar: np.ndarray | None = None,
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
    psf : pausdenoise.psf.PsfEstimate, optional
        The frame's Moffat PSF (FWHM in px, β) for the profile-weighted total flux
        ``flux_prof`` (:mod:`pausdenoise.photometry.profile`); None: the profile columns
        are NaN and ``flags_prof`` is ``NO_PSF``. The aperture columns do not depend on it.
    ivar : ndarray of float, shape (ny, nx), optional
        Inverse variance of each pixel of ``image``, 1/ADU² (0 = no data). Used only with
        ``config.errors == "ivar"``: the sky-noise term of ``flux_err`` becomes
        Σ overlap² / ivar (see :mod:`pausdenoise.photometry.measure`); None then falls back
        to the annulus scatter with a warning.

    Returns
    -------
    pandas.DataFrame
        ``OUTPUT_COLUMNS``, one row per input row, in input order. Flux and errors are in
        ADU (``flux_cal`` in calibrated units); see :mod:`pausdenoise.photometry` for the
        formulas. Flagged rows are kept (``flags != 0``; ``flags_prof != 0`` for the
        profile flux).

    Raises
    ------
    KeyError
        When a required catalogue column is missing.
    ValueError
        When the image is not 2-D, the mask's or ivar's shape differs, or ``gain`` is not
        > 0.
    """
    config = config or PhotometryConfig()
    _require_columns(apertures, REQUIRED_COLUMNS, "apertures")
    image, mask = _checked_arrays(image, mask, gain)
    ivar = _checked_ivar(ivar, image.shape, config)
    n = len(apertures)
    if n == 0:
        return _empty_table()
    sat_level = config.saturate_level if config.saturate_level is not None else saturate
    if sat_level is not None and not np.isfinite(sat_level):
        sat_level = None
    x, y, a, b, theta = _aperture_geometry(apertures, config)
    near = _catalogue_near(image.shape, (x, y, a, b, theta), config)
    ap, st = _run_kernels(image, mask, (x, y, a, b, theta), config, sat_level, ivar, near)
    flags = ap["flags"].copy()
    dup = apertures.duplicated(subset=["ref_id"], keep=False).to_numpy()
    flags[dup] |= PhotFlag.BAD_INPUT
    flags[st["bkg_n"] < config.min_annulus_pixels] |= PhotFlag.FEW_ANNULUS
    frac = annulus_fraction_on_image(x, y, r_in=config.annulus_r_in,
                                     r_out=config.annulus_r_out, shape=image.shape)
    with np.errstate(invalid="ignore"):
        flags[frac < config.min_annulus_fraction] |= PhotFlag.ANNULUS_OFF_IMAGE

    empty, field = _empty_noise(image, mask, (x, y, a, b, theta), config, sat_level, expnum, ccd,
                                near)
    bkg, flux, flux_err = _flux_and_error(ap, st, config, gain, empty)
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
            "x": x, "y": y, "a": a, "b": b, "theta": theta,
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
            **_profile_columns(image, mask, apertures, (x, y, a, b, theta), st, bkg, config,
                               psf=psf, gain=gain, sat_level=sat_level, zp=zp, zp_err=zp_err,
                               empty=field, empty_seed=_empty_seed(expnum, ccd)),
        }
    )
    return out.astype(OUTPUT_COLUMNS)
