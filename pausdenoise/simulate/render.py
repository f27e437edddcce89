"""Render one (exposure, CCD) frame: noiseless truth, noise, detector defects, tables.

``galsim`` is imported inside functions only, so that this module (and the package) can be
imported on machines without GalSim.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from astropy.io import fits
from photutils.aperture import EllipticalAperture
from scipy.spatial import cKDTree

from pausdenoise.maskbits import MaskBit
from pausdenoise.paus_layout import CATALOGUE_COLUMNS, PROFILE_COLUMNS
from pausdenoise.simulate.config import SimulationConfig
from pausdenoise.simulate.geometry import frame_header, frame_wcs
from pausdenoise.simulate.sources import ujy_to_mag

#: Columns of the per-frame truth table (``truth/fluxes.parquet``), in order.
TRUTH_COLUMNS: tuple[str, ...] = (
    "ref_id",
    "expnum",
    "ccd",
    "band",
    "flux_true_adu",  # total source flux in this exposure, ADU
    "flux_true_cal",  # = flux_true_adu × zp_true, µJy
    "flux_true_aper_adu",  # the source's own noiseless flux inside its catalogue aperture, ADU
    "zp_true",  # exact zero-point of the exposure, µJy/ADU
    "mag_true",  # AB magnitude in the band
    "I_auto",
    "is_star",
    "x_true",  # 0-based pixel column of the source centre
    "y_true",  # 0-based pixel row
    "hlr_arcsec",  # intrinsic half-light radius (0 for stars), arcsec
    "neighbour_ratio",  # brightest other source within isolation_radius_px / own flux (band)
    "isolated",  # neighbour_ratio <= isolation_flux_frac
)

# Random streams of the survey (SeedSequence entropy is [seed, stream, ...]).
STREAM_SOURCES, STREAM_EXPOSURES, STREAM_CCD_DEFECTS, STREAM_FRAME_NOISE = 0, 1, 2, 3


def stream_rng(config: SimulationConfig, stream: int, *keys: int) -> np.random.Generator:
    """Return the independent generator of one random stream (order-independent determinism).

    Parameters
    ----------
    config : SimulationConfig
        Its ``seed``.
    stream : int
        The stream (``STREAM_SOURCES``, ``STREAM_EXPOSURES``, ...).
    *keys : int
        Further keys (e.g. exposure number and CCD).

    Returns
    -------
    numpy.random.Generator
        Seeded with ``SeedSequence([seed, stream, *keys])``.
    """
    return np.random.default_rng(np.random.SeedSequence([config.seed, stream, *keys]))


@dataclass(frozen=True)
class Frame:
    """One rendered (exposure, CCD) frame.

    Attributes
    ----------
    image
        float32 (ny, nx), ADU, sky not subtracted, with noise, cosmic rays, saturation and
        bad columns.
    mask
        uint8 (ny, nx), bits of :class:`pausdenoise.maskbits.MaskBit`, 0 = good.
    truth
        float32 (ny, nx), ADU: the expectation of the image (sky + sources), no noise, no
        cosmic rays, no saturation, no bad columns.
    header
        FITS header of the image (PAUS keys and the TAN WCS).
    catalogue
        Reference-catalogue rows of this frame (:data:`CATALOGUE_COLUMNS` then
        :data:`PROFILE_COLUMNS`).
    fluxes
        Truth rows of this frame (:data:`TRUTH_COLUMNS`), same order as ``catalogue``.
    """

    image: np.ndarray
    mask: np.ndarray
    truth: np.ndarray
    header: fits.Header
    catalogue: pd.DataFrame
    fluxes: pd.DataFrame


def aperture_axes(hlr: np.ndarray, q: np.ndarray, fwhm: float, factor: float) -> tuple:
    """Return the catalogue aperture semi-axes.

    The intrinsic half-light ellipse (hlr/√q, hlr·√q) is broadened in quadrature by the PSF
    half-light radius (≈ FWHM/2) and scaled by ``factor``; a point source gets
    ``factor × FWHM/2`` on both axes.

    Parameters
    ----------
    hlr : ndarray
        Intrinsic half-light radii in arcsec (0 for stars).
    q : ndarray
        Axis ratios b/a, in (0, 1].
    fwhm : float
        PSF FWHM in arcsec.
    factor : float
        Scale of the aperture in half-light radii.

    Returns
    -------
    a, b : ndarray
        Semi-major and semi-minor axes in arcsec, a ≥ b.
    """
    sq = np.sqrt(q)
    half = fwhm / 2.0
    a = factor * np.hypot(hlr / sq, half)
    b = factor * np.hypot(hlr * sq, half)
    return a, b


def paus_theta_deg(theta_pix_deg: np.ndarray) -> np.ndarray:
    """Convert a major-axis angle in the pixel frame to PAUS ``aperture_theta``.

    PAUS stores the opposite sign of photutils' angle: photutils theta [rad] =
    −aperture_theta·π/180.

    Parameters
    ----------
    theta_pix_deg : ndarray
        Angle in degrees, counter-clockwise from +x towards +y (photutils' sense).

    Returns
    -------
    ndarray
        ``aperture_theta`` in degrees, in (−90, 90].
    """
    t = -np.asarray(theta_pix_deg, dtype=float)
    return 90.0 - np.mod(90.0 - t, 180.0)


def stamp_radius_px(
    hlr: np.ndarray, q: np.ndarray, fwhm: float, config: SimulationConfig
) -> np.ndarray:
    """Return the half-size of postage stamps that hold all of each source's (truncated) light.

    Parameters
    ----------
    hlr : ndarray
        Half-light radii in arcsec.
    q : ndarray
        Axis ratios b/a.
    fwhm : float
        PSF FWHM in arcsec.
    config : SimulationConfig
        Truncation radii and pixel scale (arcsec/px).

    Returns
    -------
    ndarray of int
        Half-sizes in px.
    """
    return stamp_half_size_px(
        hlr,
        q,
        fwhm,
        psf_trunc_fwhm=config.psf_trunc_fwhm,
        profile_trunc_hlr=config.profile_trunc_hlr,
        pixel_scale=config.pixel_scale,
    )


def stamp_half_size_px(
    hlr: np.ndarray,
    q: np.ndarray,
    fwhm: float,
    *,
    psf_trunc_fwhm: float,
    profile_trunc_hlr: float,
    pixel_scale: float,
) -> np.ndarray:
    """Return the half-size of stamps holding all the light of truncated, PSF-convolved sources.

    Parameters
    ----------
    hlr : ndarray
        Intrinsic half-light radii in arcsec (0 for point sources).
    q : ndarray
        Axis ratios b/a.
    fwhm : float
        PSF FWHM in arcsec.
    psf_trunc_fwhm : float
        PSF truncation radius in units of its FWHM.
    profile_trunc_hlr : float
        Galaxy truncation radius in half-light radii.
    pixel_scale : float
        Arcsec per pixel.

    Returns
    -------
    ndarray of int
        Half-sizes in px (PSF radius + galaxy major-axis radius, rounded up, + 2).
    """
    psf_r = psf_trunc_fwhm * fwhm
    gal_r = profile_trunc_hlr * np.asarray(hlr) / np.sqrt(np.asarray(q))
    return np.ceil((psf_r + gal_r) / pixel_scale).astype(int) + 2


def galsim_psf(fwhm: float, config: SimulationConfig) -> Any:
    """Build the Moffat PSF (β = ``moffat_beta``), truncated (finite support).

    Parameters
    ----------
    fwhm : float
        FWHM in arcsec.
    config : SimulationConfig
        ``moffat_beta`` and ``psf_trunc_fwhm`` (truncation radius in FWHM).

    Returns
    -------
    galsim.Moffat
        The PSF, unit flux.
    """
    return moffat_psf(fwhm, config.moffat_beta, config.psf_trunc_fwhm)


def moffat_psf(fwhm: float, beta: float, trunc_fwhm: float) -> Any:
    """Build a Moffat PSF of unit flux truncated at ``trunc_fwhm`` × FWHM (finite support).

    Parameters
    ----------
    fwhm : float
        FWHM in arcsec.
    beta : float
        Moffat β (dimensionless).
    trunc_fwhm : float
        Truncation radius in units of the FWHM.

    Returns
    -------
    galsim.Moffat
        The PSF, unit flux.
    """
    import galsim  # optional: galsim is needed only to render

    return galsim.Moffat(beta=beta, fwhm=fwhm, trunc=trunc_fwhm * fwhm)


def galsim_source(row: Any, psf: Any, flux_e: float, config: SimulationConfig) -> Any:
    """GalSim profile (PSF-convolved, flux ``flux_e`` electrons) of one catalogue source.

    Galaxies are a de Vaucouleurs bulge (Sérsic n=4) plus an exponential disk (n=1) with the
    same half-light radius and shape, truncated at ``profile_trunc_hlr`` half-light radii;
    the shape's major axis is at ``theta_pix_deg`` in the pixel frame (GalSim's ``beta``,
    which is counter-clockwise from +x towards +y on the image array).

    Parameters
    ----------
    row : namedtuple or pandas.Series
        One row of :func:`~pausdenoise.simulate.sources.make_source_catalogue`.
    psf : galsim.GSObject
        The exposure's PSF (:func:`galsim_psf`).
    flux_e : float
        Total flux in e⁻.
    config : SimulationConfig
        The simulation configuration.

    Returns
    -------
    galsim.GSObject
        The PSF-convolved profile.
    """
    return source_profile(
        psf,
        flux_e,
        is_star=row.is_star,
        hlr=row.hlr_arcsec,
        q=row.q,
        theta_pix_deg=row.theta_pix_deg,
        bulge_frac=row.bulge_frac,
        trunc_hlr=config.profile_trunc_hlr,
    )


def source_profile(
    psf: Any,
    flux: float,
    *,
    is_star: bool,
    hlr: float,
    q: float,
    theta_pix_deg: float,
    bulge_frac: float,
    trunc_hlr: float,
) -> Any:
    """Build the PSF-convolved GalSim profile of one star or bulge + disk galaxy.

    The galaxy model of :func:`galsim_source`: a de Vaucouleurs bulge (Sérsic n=4, flux
    fraction ``bulge_frac``) plus an exponential disk (n=1), both of half-light radius
    ``hlr``, truncated at ``trunc_hlr`` half-light radii, sheared to axis ratio ``q`` with
    the major axis at ``theta_pix_deg``; a star is the PSF itself.

    Parameters
    ----------
    psf : galsim.GSObject
        The PSF (e.g. :func:`moffat_psf`).
    flux : float
        Total flux, in the unit the image is drawn in (e⁻ or ADU).
    is_star : bool
        Point source (the other shape parameters are ignored).
    hlr : float
        Intrinsic half-light radius, arcsec.
    q : float
        Axis ratio b/a, in (0, 1].
    theta_pix_deg : float
        Major-axis angle, degrees counter-clockwise from +x towards +y (GalSim's ``beta``).
    bulge_frac : float
        Bulge flux fraction, in [0, 1].
    trunc_hlr : float
        Truncation radius in half-light radii.

    Returns
    -------
    galsim.GSObject
        The PSF-convolved profile of total flux ``flux``.
    """
    import galsim  # optional: galsim is needed only to render

    if is_star:
        # a Transformation keeps the PSF object (and its cached, costly maxk) shared
        return galsim.Transformation(psf, flux_ratio=flux / psf.flux)
    trunc = trunc_hlr * hlr
    parts = []
    if bulge_frac > 0:
        parts.append(galsim.Sersic(4, half_light_radius=hlr, trunc=trunc, flux=bulge_frac))
    if bulge_frac < 1:
        parts.append(galsim.Sersic(1, half_light_radius=hlr, trunc=trunc, flux=1.0 - bulge_frac))
    gal = galsim.Add(parts) if len(parts) > 1 else parts[0]
    gal = gal.shear(q=q, beta=theta_pix_deg * galsim.degrees)
    return galsim.Convolve(gal, psf, real_space=False).withFlux(flux)


def draw_stamp(obj: Any, x: float, y: float, radius: int, scale: float) -> Any:
    """Draw ``obj`` centred at 0-based pixel (x, y) on a square GalSim stamp (1-based bounds).

    Drawn by FFT, including the pixel response; GalSim's bounds are 1-based, so 0-based
    pixel (x, y) is GalSim position (x + 1, y + 1).

    Parameters
    ----------
    obj : galsim.GSObject
        The profile (its flux in the image's unit).
    x, y : float
        Centre, 0-based pixel column and row of the frame.
    radius : int
        Half-size of the stamp in px (the stamp is 2·radius + 1 pixels square, centred on
        the pixel nearest to (x, y)).
    scale : float
        Pixel scale, arcsec per pixel.

    Returns
    -------
    galsim.ImageD
        The stamp.
    """
    import galsim  # optional: galsim is needed only to render

    ic, jc = round(x) + 1, round(y) + 1
    bounds = galsim.BoundsI(ic - radius, ic + radius, jc - radius, jc + radius)
    stamp = galsim.ImageD(bounds, scale=scale)
    obj.drawImage(image=stamp, center=galsim.PositionD(x + 1.0, y + 1.0), method="fft")
    return stamp


def aperture_sum(stamp: Any, x: float, y: float, a_px: float, b_px: float, theta: float) -> float:
    """Sum a stamp in an exact elliptical aperture; ``theta`` is the photutils angle [rad].

    Parameters
    ----------
    stamp : galsim.Image
        A stamp from :func:`draw_stamp` (1-based GalSim bounds).
    x, y : float
        Aperture centre, 0-based pixel column and row of the frame.
    a_px, b_px : float
        Semi-axes in px.
    theta : float
        photutils angle in radians (= −aperture_theta·π/180).

    Returns
    -------
    float
        The sum, in the stamp's units.
    """
    pos = (x + 1.0 - stamp.bounds.xmin, y + 1.0 - stamp.bounds.ymin)
    ap = EllipticalAperture(pos, a_px, b_px, theta=theta)
    return float(ap.do_photometry(stamp.array)[0][0])


def render_sources(
    sources: pd.DataFrame,
    x: np.ndarray,
    y: np.ndarray,
    flux_e: np.ndarray,
    exposure: pd.Series,
    config: SimulationConfig,
    apertures: pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the noiseless source image of one CCD and the sources' own aperture fluxes.

    Every source whose stamp overlaps the CCD is drawn, so the image holds all the light
    that falls on it.

    Parameters
    ----------
    sources : pandas.DataFrame
        The source catalogue.
    x, y : ndarray
        Source centres in the CCD's 0-based pixel frame, aligned with ``sources``.
    flux_e : ndarray
        Total fluxes in e⁻, aligned with ``sources``.
    exposure : pandas.Series
        One row of the exposure plan (``seeing_fwhm`` in arcsec).
    config : SimulationConfig
        The simulation configuration.
    apertures : pandas.DataFrame
        Index = row positions in ``sources``; columns ``a_px``, ``b_px`` (px),
        ``theta_rad`` (photutils convention): the sources whose own light inside their
        catalogue aperture is measured (neighbours excluded).

    Returns
    -------
    image : ndarray of float64, shape (ny, nx)
        The noiseless source light in e⁻.
    aperture_sums : ndarray
        Each source's own aperture flux in e⁻, aligned with ``apertures``.
    """
    import galsim  # optional: galsim is needed only to render

    ny, nx = config.ccd_shape
    fwhm = float(exposure["seeing_fwhm"])
    full = galsim.ImageD(nx, ny, scale=config.pixel_scale)
    psf = galsim_psf(fwhm, config)
    radius = stamp_radius_px(sources["hlr_arcsec"], sources["q"], fwhm, config)
    aper_sum = np.zeros(len(apertures))
    aper_pos = {int(k): i for i, k in enumerate(apertures.index)}
    drawn = np.flatnonzero(
        (x > -radius - 1) & (x < nx + radius) & (y > -radius - 1) & (y < ny + radius)
    )
    for i in drawn:
        row = sources.iloc[i]
        with warnings.catch_warnings():
            # Truncated profiles have hard edges; GalSim suggests real-space convolution,
            # which measured ~10x slower per frame here; FFT fluxes agree to < 1e-5.
            warnings.filterwarnings("ignore", message=".*hard edges.*")
            obj = galsim_source(row, psf, float(flux_e[i]), config)
            stamp = draw_stamp(obj, float(x[i]), float(y[i]), int(radius[i]), config.pixel_scale)
        overlap = stamp.bounds & full.bounds
        if overlap.isDefined():
            full[overlap] += stamp[overlap]
        k = aper_pos.get(int(i))
        if k is not None:
            ap = apertures.iloc[k]
            aper_sum[k] = aperture_sum(
                stamp, float(x[i]), float(y[i]), ap["a_px"], ap["b_px"], ap["theta_rad"]
            )
    return full.array.copy(), aper_sum


def bad_columns(config: SimulationConfig, ccd: int) -> list[tuple[int, int, int, bool]]:
    """Return the defective columns of a CCD (fixed across exposures).

    Parameters
    ----------
    config : SimulationConfig
        ``n_bad_columns``, ``ccd_shape`` and the seed (the CCD-defect stream).
    ccd : int
        CCD number, 1-based.

    Returns
    -------
    list of (column, first_row, last_row_exclusive, hot)
        0-based column index and row range; ``hot`` columns read the saturation level,
        dead ones read 0 ADU.
    """
    ny, nx = config.ccd_shape
    rng = stream_rng(config, STREAM_CCD_DEFECTS, ccd)
    n = min(config.n_bad_columns, nx)
    cols = np.sort(rng.choice(nx, size=n, replace=False))
    out = []
    for c in cols:
        start = 0 if rng.uniform() < 0.5 else int(rng.integers(0, ny // 2))
        out.append((int(c), start, ny, bool(rng.uniform() < 0.5)))
    return out


def add_cosmic_rays(
    electrons: np.ndarray, mask: np.ndarray, rng: np.random.Generator, config: SimulationConfig
) -> None:
    """Add cosmic-ray tracks (1–12 px straight segments) in place and mask them COSMIC_RAY.

    Parameters
    ----------
    electrons : ndarray of float64, shape (ny, nx)
        The image in e⁻ (modified).
    mask : ndarray of uint8, shape (ny, nx)
        Its mask (modified).
    rng : numpy.random.Generator
        The frame's noise stream.
    config : SimulationConfig
        Mean number of tracks per frame and their e⁻ range per pixel.
    """
    ny, nx = electrons.shape
    lo, hi = config.cosmic_ray_e_range
    for _ in range(int(rng.poisson(config.n_cosmic_rays))):
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        length, angle = rng.uniform(0.0, 12.0), rng.uniform(0.0, np.pi)
        t = np.linspace(0.0, length, max(2, int(4 * length) + 1))
        ix = np.clip(np.floor(x0 + t * np.cos(angle)).astype(int), 0, nx - 1)
        iy = np.clip(np.floor(y0 + t * np.sin(angle)).astype(int), 0, ny - 1)
        pix = np.unique(iy * nx + ix)
        py, px = np.divmod(pix, nx)
        electrons[py, px] += rng.uniform(lo, hi, pix.size)
        mask[py, px] |= np.uint8(MaskBit.COSMIC_RAY)


def observe(
    truth_e: np.ndarray, config: SimulationConfig, ccd: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Turn the expected electrons into a reduced image [ADU, float32] and its mask [uint8].

    Poisson noise on sky + sources, Gaussian read noise, cosmic rays, saturation at the
    full well (SATURATED), then the CCD's bad columns (BAD_COLUMN).

    Parameters
    ----------
    truth_e : ndarray, shape (ny, nx)
        Expected e⁻ per pixel (sky + sources).
    config : SimulationConfig
        Read noise (e⁻), gain (e⁻/ADU), full well (e⁻), defects.
    ccd : int
        CCD number, 1-based (its bad columns).
    rng : numpy.random.Generator
        The frame's noise stream.

    Returns
    -------
    image : ndarray of float32
        The image in ADU.
    mask : ndarray of uint8
        Bits of :class:`~pausdenoise.maskbits.MaskBit`, 0 = good.
    """
    mask = np.zeros(truth_e.shape, dtype=np.uint8)
    electrons = rng.poisson(np.maximum(truth_e, 0.0)).astype(np.float64)
    electrons += config.read_noise * rng.standard_normal(truth_e.shape)
    add_cosmic_rays(electrons, mask, rng, config)
    saturated = electrons >= config.full_well
    electrons[saturated] = config.full_well
    mask[saturated] |= np.uint8(MaskBit.SATURATED)
    image = electrons / config.gain
    for col, start, stop, hot in bad_columns(config, ccd):
        image[start:stop, col] = config.full_well / config.gain if hot else 0.0
        mask[start:stop, col] |= np.uint8(MaskBit.BAD_COLUMN)
    return image.astype(np.float32), mask


def neighbour_flux_ratio(
    x: np.ndarray, y: np.ndarray, flux: np.ndarray, targets: np.ndarray, radius: float
) -> np.ndarray:
    """Return the flux ratio of each target's brightest neighbour to the target.

    Parameters
    ----------
    x, y : ndarray
        Pixel positions of all sources (0-based px).
    flux : ndarray
        Their fluxes (any one unit).
    targets : ndarray of int
        Sorted indices of the targets into them.
    radius : float
        Neighbourhood radius in px.

    Returns
    -------
    ndarray
        Flux of the brightest other source within ``radius`` over the target's own (0 when
        there is none, inf for a target of zero flux), aligned with ``targets``.
    """
    out = np.zeros(targets.size)
    if targets.size == 0:
        return out
    xt, yt = x[targets], y[targets]
    box = (x > xt.min() - radius) & (x < xt.max() + radius)
    box &= (y > yt.min() - radius) & (y < yt.max() + radius)
    near = np.flatnonzero(box)
    xn, yn, fn = x[near], y[near], flux[near]
    tree = cKDTree(np.column_stack([xn, yn]))
    for k, i in enumerate(np.searchsorted(near, targets)):
        others = [j for j in tree.query_ball_point([xn[i], yn[i]], radius) if j != i]
        if others:
            out[k] = fn[others].max() / fn[i] if fn[i] > 0 else np.inf
    return out


def render_frame(
    sources: pd.DataFrame, exposure: pd.Series, ccd: int, config: SimulationConfig
) -> Frame:
    """Simulate one CCD of one exposure.

    Parameters
    ----------
    sources
        Output of :func:`make_source_catalogue` (needs ``flux_<band>`` for this band).
    exposure
        One row of :func:`exposure_plan`.
    ccd
        CCD number, 1-based.
    config
        The simulation configuration.

    Returns
    -------
    Frame
        Image, mask, truth, header and the catalogue / truth rows of the sources whose
        centre lies on the CCD (pixel centres at integer 0-based coordinates, the CCD spans
        −0.5 … n − 0.5). The noise depends only on (seed, expnum, ccd).
    """
    ny, nx = config.ccd_shape
    band, fwhm, zp_true = (
        str(exposure["band"]),
        float(exposure["seeing_fwhm"]),
        float(exposure["zp_true"]),
    )
    wcs = frame_wcs(config, exposure, ccd)
    header = frame_header(config, exposure, ccd, wcs)
    x, y = wcs.wcs_world2pix(sources["ra"].to_numpy(), sources["dec"].to_numpy(), 0)
    flux_cal = sources[f"flux_{band}"].to_numpy()
    flux_adu = flux_cal / zp_true
    on = np.flatnonzero((x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5))
    apertures = _frame_apertures(sources, on, fwhm, config)
    src_e, aper_e = render_sources(
        sources, x, y, flux_adu * config.gain, exposure, config, apertures
    )
    truth_e = src_e + float(exposure["sky_e"])
    image, mask = observe(
        truth_e, config, ccd, stream_rng(config, STREAM_FRAME_NOISE, int(exposure["expnum"]), ccd)
    )
    sel = sources.iloc[on]
    n = on.size
    ratio = neighbour_flux_ratio(x, y, flux_cal, on, config.isolation_radius_px)
    common = {
        "ref_id": sel["ref_id"].to_numpy(np.int64),
        "expnum": np.full(n, int(exposure["expnum"]), dtype=np.int64),
        "ccd": np.full(n, ccd, dtype=np.int64),
        "band": np.full(n, band, dtype=object),
    }
    catalogue = _catalogue_rows(common, sel, x[on], y[on], apertures)
    fluxes = pd.DataFrame(
        {
            **common,
            "flux_true_adu": flux_adu[on],
            "flux_true_cal": flux_adu[on] * zp_true,
            "flux_true_aper_adu": aper_e / config.gain,
            "zp_true": np.full(n, zp_true),
            "mag_true": ujy_to_mag(flux_cal[on]),
            "I_auto": sel["I_auto"].to_numpy(),
            "is_star": sel["is_star"].to_numpy(bool),
            "x_true": x[on],
            "y_true": y[on],
            "hlr_arcsec": sel["hlr_arcsec"].to_numpy(),
            "neighbour_ratio": ratio,
            "isolated": ratio <= config.isolation_flux_frac,
        }
    )[list(TRUTH_COLUMNS)]
    truth = (truth_e / config.gain).astype(np.float32)
    return Frame(image, mask, truth, header, catalogue, fluxes)


def _catalogue_rows(
    common: dict[str, np.ndarray],
    sel: pd.DataFrame,
    x: np.ndarray,
    y: np.ndarray,
    apertures: pd.DataFrame,
) -> pd.DataFrame:
    """Build the reference-catalogue rows of the sources on the CCD.

    Returns
    -------
    pandas.DataFrame
        One row per source, :data:`CATALOGUE_COLUMNS` then :data:`PROFILE_COLUMNS` (the
        true intrinsic shapes, as a space-based reference catalogue gives them); aperture
        axes in arcsec, angle in degrees (PAUS convention).
    """
    return pd.DataFrame(
        {
            **common,
            "ra": sel["ra"].to_numpy(),
            "dec": sel["dec"].to_numpy(),
            "I_auto": sel["I_auto"].to_numpy(),
            "aperture_x": x,
            "aperture_y": y,
            "aperture_a": apertures["a_arcsec"].to_numpy(),
            "aperture_b": apertures["b_arcsec"].to_numpy(),
            "aperture_theta": apertures["theta_deg"].to_numpy(),
            "profile_hlr": sel["hlr_arcsec"].to_numpy(dtype=float),
            "profile_q": sel["q"].to_numpy(dtype=float),
            "profile_bulge_frac": sel["bulge_frac"].to_numpy(dtype=float),
        }
    )[[*CATALOGUE_COLUMNS, *PROFILE_COLUMNS]]


def _frame_apertures(
    sources: pd.DataFrame, on: np.ndarray, fwhm: float, config: SimulationConfig
) -> pd.DataFrame:
    """Catalogue apertures of the sources ``on`` the CCD (index = their rows in ``sources``).

    Columns: the PAUS catalogue's ``a_arcsec``, ``b_arcsec``, ``theta_deg`` and the same
    ellipse for photutils, ``a_px``, ``b_px``, ``theta_rad``.

    Returns
    -------
    pandas.DataFrame
        The apertures.
    """
    a, b = aperture_axes(
        sources["hlr_arcsec"].to_numpy()[on],
        sources["q"].to_numpy()[on],
        fwhm,
        config.aperture_factor,
    )
    theta = paus_theta_deg(sources["theta_pix_deg"].to_numpy()[on])
    return pd.DataFrame(
        {
            "a_px": a / config.pixel_scale,
            "b_px": b / config.pixel_scale,
            "theta_rad": -np.radians(theta),
            "a_arcsec": a,
            "b_arcsec": b,
            "theta_deg": theta,
        },
        index=on,
    )
