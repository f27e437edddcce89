"""File names and header keywords of the PAUS reduced layout (one source of truth).

The simulation writes, and the PAUS ingest path reads, this layout::

    <root>/paucam.<EXPNUM:07d>.<CCD:02d>.img.fits    image, primary HDU, float32, ADU
    <root>/paucam.<EXPNUM:07d>.<CCD:02d>.msk.fits    mask, primary HDU, uint8, 0 = good
    <root>/catalogue.parquet                          forced-photometry reference catalogue
    <root>/truth/paucam.<EXPNUM:07d>.<CCD:02d>.true.fits   noiseless image, ADU (simulation only)
    <root>/truth/fluxes.parquet                       true fluxes (simulation only)
    <root>/truth/exposures.parquet, sources.parquet   exposure plan and source list (simulation)
    <root>/survey.json                                the simulation's configuration and seed

Images and masks may also be compressed: ``.img.fits.gz`` / ``.msk.fits.gz`` (gzip of the
whole file) or ``.img.fits.fz`` / ``.msk.fits.fz`` (tile-compressed, fpack or astropy
``CompImageHDU``: the pixels are in the first image extension, HDU 1). One frame has one
version of its image and one of its mask, with any of these endings each.

Conventions
-----------
- Images are in ADU, sky *not* subtracted, bias removed.
- ``ZP`` is a multiplicative zero-point: calibrated flux [µJy] = flux [ADU] × ZP, so
  ``m_AB = 23.9 - 2.5 log10(flux_adu * ZP)``. ``ZPERR`` is its 1σ error in the same units.
- ``GAIN`` is in e⁻/ADU, ``RDNOISE`` in e⁻, ``EXPTIME`` in s, ``SATURATE`` in ADU.
- CCD numbers are 1-based (1..18), as in PAUCam.
"""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_PATTERN = "paucam.{expnum:07d}.{ccd:02d}.img.fits"
MASK_PATTERN = "paucam.{expnum:07d}.{ccd:02d}.msk.fits"
TRUTH_PATTERN = "paucam.{expnum:07d}.{ccd:02d}.true.fits"
CATALOGUE_NAME = "catalogue.parquet"
TRUTH_DIR = "truth"
TRUE_FLUXES_NAME = "fluxes.parquet"
#: Truth table of the exposures (``truth/exposures.parquet``, simulation only).
TRUE_EXPOSURES_NAME = "exposures.parquet"
#: Truth table of the sources (``truth/sources.parquet``, simulation only).
TRUE_SOURCES_NAME = "sources.parquet"
SURVEY_JSON = "survey.json"

#: Endings after ``.fits`` of the PAUS image and mask files read: plain, gzip, tile-compressed.
FITS_ENDINGS: tuple[str, ...] = ("", ".gz", ".fz")
#: Globs of the PAUS image names, one per ending of :data:`FITS_ENDINGS`.
IMAGE_GLOBS: tuple[str, ...] = tuple(f"paucam.*.img.fits{e}" for e in FITS_ENDINGS)

IMAGE_RE = re.compile(
    r"^paucam\.(?P<expnum>\d{7})\.(?P<ccd>\d{2})\.img\.fits(?P<ending>\.gz|\.fz)?$"
)

#: Names that become file or directory names (bands in photometry partitions, stacks):
#: letters, digits and ``. _ + -`` only, 1 to 64 characters; ``.`` and ``..`` are refused.
SAFE_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,64}")

#: Header keywords every PAUS image must carry (ingest refuses a file missing one).
REQUIRED_KEYS: tuple[str, ...] = (
    "EXPNUM",
    "CCD",
    "FILTER",
    "EXPTIME",
    "GAIN",
    "RDNOISE",
    "ZP",
    "ZPERR",
)
#: Optional keywords read when present.
OPTIONAL_KEYS: tuple[str, ...] = ("SATURATE", "MJD-OBS", "AIRMASS", "SKYLEVEL", "SEEING")

#: The 40 PAUS narrow bands, 13 nm wide, centred every 10 nm from 455 to 845 nm.
NARROW_BANDS: tuple[str, ...] = tuple(f"NB{c}" for c in range(455, 846, 10))

#: Columns of the reference catalogue, in order. One row per (ref_id, expnum, ccd).
CATALOGUE_COLUMNS: tuple[str, ...] = (
    "ref_id",  # int64, source identifier, unique per source
    "ra",  # float64, degrees (ICRS)
    "dec",  # float64, degrees (ICRS)
    "I_auto",  # float64, i-band AB magnitude used for binning
    "expnum",  # int64
    "ccd",  # int64, 1-based
    "band",  # str, e.g. "NB455"
    "aperture_x",  # float64, 0-based pixel column; the centre of pixel [0, 0] is (0.0, 0.0)
    "aperture_y",  # float64, 0-based pixel row
    "aperture_a",  # float64, semi-major axis, arcsec
    "aperture_b",  # float64, semi-minor axis, arcsec
    "aperture_theta",  # float64, degrees, PAUS sign: photutils theta = -aperture_theta*pi/180
)

#: Optional catalogue columns describing each source's intrinsic (pre-PSF) profile: a
#: de Vaucouleurs bulge plus an exponential disk sharing one half-light radius and shape,
#: oriented along ``aperture_theta``. Catalogues without them remain valid.
PROFILE_COLUMNS: tuple[str, ...] = (
    "profile_hlr",  # float64, half-light radius, arcsec; 0 = point source
    "profile_q",  # float64, axis ratio b/a in (0, 1]
    "profile_bulge_frac",  # float64, bulge (Sérsic n=4) flux fraction in [0, 1]
)


def image_path(root: Path, expnum: int, ccd: int) -> Path:
    """Return the path of the image FITS of exposure ``expnum``, CCD ``ccd`` (1-based).

    Parameters
    ----------
    root : Path
        Root of the PAUS reduced layout.
    expnum : int
        Exposure number.
    ccd : int
        CCD number, 1-based (PAUCam: 1..18).

    Returns
    -------
    Path
        ``root`` joined with :data:`IMAGE_PATTERN`.
    """
    return Path(root) / IMAGE_PATTERN.format(expnum=expnum, ccd=ccd)


def mask_path(root: Path, expnum: int, ccd: int) -> Path:
    """Return the path of the mask FITS of exposure ``expnum``, CCD ``ccd`` (1-based).

    Parameters
    ----------
    root : Path
        Root of the PAUS reduced layout.
    expnum : int
        Exposure number.
    ccd : int
        CCD number, 1-based (PAUCam: 1..18).

    Returns
    -------
    Path
        ``root`` joined with :data:`MASK_PATTERN`.
    """
    return Path(root) / MASK_PATTERN.format(expnum=expnum, ccd=ccd)


def mask_paths_found(root: Path, expnum: int, ccd: int) -> list[Path]:
    """Return the mask files of exposure ``expnum``, CCD ``ccd`` present under ``root``.

    Every ending of :data:`FITS_ENDINGS` is looked for (``.msk.fits``, ``.msk.fits.gz``,
    ``.msk.fits.fz``); a frame should have exactly one.

    Parameters
    ----------
    root : Path
        Root of the PAUS reduced layout.
    expnum : int
        Exposure number.
    ccd : int
        CCD number, 1-based (PAUCam: 1..18).

    Returns
    -------
    list of Path
        The existing files, in :data:`FITS_ENDINGS` order (empty when there is none).
    """
    plain = mask_path(root, expnum, ccd)
    found = [plain.with_name(plain.name + e) for e in FITS_ENDINGS]
    return [p for p in found if p.is_file()]


def truth_path(root: Path, expnum: int, ccd: int) -> Path:
    """Return the path of the noiseless truth image of ``expnum``, CCD ``ccd`` (simulation).

    Parameters
    ----------
    root : Path
        Root of the PAUS reduced layout.
    expnum : int
        Exposure number.
    ccd : int
        CCD number, 1-based (PAUCam: 1..18).

    Returns
    -------
    Path
        ``root / TRUTH_DIR`` joined with :data:`TRUTH_PATTERN`.
    """
    return Path(root) / TRUTH_DIR / TRUTH_PATTERN.format(expnum=expnum, ccd=ccd)


def parse_image_name(name: str) -> tuple[int, int] | None:
    """Return ``(expnum, ccd)`` for a PAUS image file name, or None if it is not one.

    ``.img.fits``, ``.img.fits.gz`` and ``.img.fits.fz`` names are image names.

    Parameters
    ----------
    name : str
        A file name or path (only the last component is matched).

    Returns
    -------
    tuple of (int, int) or None
        Exposure number and 1-based CCD number.
    """
    m = IMAGE_RE.match(Path(name).name)
    if m is None:
        return None
    return int(m["expnum"]), int(m["ccd"])


def is_safe_name(name: object) -> bool:
    """Tell whether ``name`` is a str usable as one path component inside a directory.

    Parameters
    ----------
    name : object
        A band, kind or frame name, typically from a header or a catalogue.

    Returns
    -------
    bool
        ``name`` is a str matching :data:`SAFE_NAME` and is not ``.`` or ``..``: it cannot
        hold a separator, a NUL, whitespace or ``=`` (the hive partition separator), so it
        cannot leave the directory it is joined to.
    """
    return isinstance(name, str) and bool(SAFE_NAME.fullmatch(name)) and name not in {".", ".."}


def band_wavelength_nm(band: str) -> float:
    """Return the central wavelength in nm of a PAUS narrow band name such as ``"NB455"``.

    Parameters
    ----------
    band : str
        ``"NB"`` followed by the wavelength in nm.

    Returns
    -------
    float
        The wavelength, nm.

    Raises
    ------
    ValueError
        If ``band`` does not start with ``"NB"``.
    """
    if not band.startswith("NB"):
        raise ValueError(f"not a PAUS narrow band name: {band!r}")
    return float(band[2:])
