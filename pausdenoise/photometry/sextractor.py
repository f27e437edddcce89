"""SExtractor catalogues as reference catalogues: ASCII_HEAD and FITS_LDAC, world positions.

A SExtractor run on a detection image (a stack, or another survey's image of the field)
gives the sources to measure in every exposure. Its catalogue becomes a **sky catalogue**
(one row per source, placed on each frame through the frame's WCS by
:mod:`pausdenoise.photometry.projection`), each source measured in its Kron ("AUTO")
ellipse:

=============  ==========================================================================
column         from SExtractor's
=============  ==========================================================================
``ref_id``     ``NUMBER``
``ra, dec``    ``ALPHA_J2000, DELTA_J2000`` (else the ``WIN`` ones, else ``X_WORLD,
               Y_WORLD``), degrees
``a, b``       ``KRON_RADIUS × A_WORLD``, ``KRON_RADIUS × B_WORLD`` (degrees → arcsec); the
               semi-axes of SExtractor's AUTO aperture
``theta``      ``THETA_J2000`` (else ``THETAWIN_J2000``, else ``THETA_SKY``): degrees east of
               north, as a sky catalogue's ``theta``
=============  ==========================================================================

Every other column is kept under its SExtractor name (``MAG_AUTO``, ``FLAGS``, …). A
source whose Kron radius SExtractor could not measure (0) gets zero axes, which the
catalogue checks flag.

A catalogue with **pixel positions only** (no world columns) belongs to the one image it was
made on; it becomes an **image catalogue** (:func:`sextractor_to_image`), a per-frame table
without ``expnum`` and ``ccd``, which a run of that one frame measures
(:func:`pausdenoise.pipeline.stages.photometry.read_frame_catalogue`):

==================  =====================================================================
column              from SExtractor's
==================  =====================================================================
``ref_id``          ``NUMBER``
``aperture_x, y``   ``X_IMAGE − 1``, ``Y_IMAGE − 1`` (SExtractor counts pixels from 1;
                    these are 0-based)
``aperture_a, b``   ``KRON_RADIUS × A_IMAGE``, ``KRON_RADIUS × B_IMAGE``, **pixels**; A, B
                    and THETA from the second moments ``X2_IMAGE, Y2_IMAGE, XY_IMAGE`` when
                    the catalogue lacks them (SExtractor's own formulas)
``aperture_theta``  ``−THETA_IMAGE`` (degrees; the PAUS sign, so that photutils' angle,
                    counter-clockwise from +x, is ``THETA_IMAGE``)
==================  =====================================================================

Formats: ASCII_HEAD (``#   1 NUMBER  Running object number``, vector columns as astropy
names them: ``FLUX_APER``, ``FLUX_APER_1``, …) and FITS_LDAC (the ``LDAC_OBJECTS`` table).
"""

from __future__ import annotations

import gzip
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from pausdenoise.errors import CatalogueError

__all__ = [
    "is_ascii_head",
    "is_pixel_only",
    "ldac_objects_hdu",
    "read_sextractor",
    "sextractor_to_image",
    "sextractor_to_sky",
]

#: the first line of an ASCII_HEAD catalogue: ``#   1 NUMBER ...``
_ASCII_HEAD = re.compile(r"^#\s+\d+\s+[A-Z][A-Z0-9_]*")
#: alternatives for each sky column, in order of preference
_RA = ("ALPHA_J2000", "ALPHAWIN_J2000", "X_WORLD")
_DEC = ("DELTA_J2000", "DELTAWIN_J2000", "Y_WORLD")
_THETA = ("THETA_J2000", "THETAWIN_J2000", "THETA_SKY")
_AXES = ("A_WORLD", "B_WORLD", "KRON_RADIUS")
#: an image catalogue's shape: the axes and angle, else the second moments they come from
_PIXEL_SHAPE = ("A_IMAGE", "B_IMAGE", "THETA_IMAGE")
_MOMENTS = ("X2_IMAGE", "Y2_IMAGE", "XY_IMAGE")


def _opener(path: Path) -> Callable[..., IO[Any]]:
    """Return ``gzip.open`` for a ``.gz`` name, else ``open``.

    Returns
    -------
    callable
        The opener.
    """
    return gzip.open if path.name.lower().endswith(".gz") else open


def is_ascii_head(path: Path) -> bool:
    """Tell whether a file is a SExtractor ASCII_HEAD catalogue (by its first line).

    Parameters
    ----------
    path : Path
        The file (gzip-compressed when its name ends in ``.gz``).

    Returns
    -------
    bool
        True when the first line reads like ``#   1 NUMBER  Running object number``.
    """
    try:
        with _opener(path)(path, "rt", encoding="ascii", errors="replace") as fh:
            return bool(_ASCII_HEAD.match(fh.readline(256)))  # bounded: binary files
    except OSError:
        return False


def ldac_objects_hdu(path: Path) -> int | None:
    """Return the index of a FITS file's ``LDAC_OBJECTS`` table, or None.

    Parameters
    ----------
    path : Path
        A FITS file.

    Returns
    -------
    int or None
        The HDU index of SExtractor's FITS_LDAC object table; None for any other FITS file
        (or one astropy cannot open).
    """
    from astropy.io import fits  # astropy: imported only for FITS catalogues

    try:
        with fits.open(path, memmap=False) as hdul:
            for i, hdu in enumerate(hdul):
                if hdu.name == "LDAC_OBJECTS":
                    return i
    except Exception:  # not a FITS file astropy can open: no LDAC table
        return None
    return None


def read_sextractor(path: Path | str, hdu: int | None = None) -> pd.DataFrame:
    """Read a SExtractor catalogue as it is (SExtractor's column names).

    Parameters
    ----------
    path : Path or str
        ASCII_HEAD text (optionally ``.gz``), or a FITS_LDAC file.
    hdu : int, optional
        The ``LDAC_OBJECTS`` HDU of a FITS_LDAC file (:func:`ldac_objects_hdu`); None reads
        ASCII_HEAD.

    Returns
    -------
    pandas.DataFrame
        One row per source; vector columns of a FITS_LDAC table are split into
        ``NAME``, ``NAME_1``, … as the ASCII reader names them.
    """
    from astropy.table import Table  # astropy: imported only for SExtractor catalogues

    path = Path(path)
    with warnings.catch_warnings():  # SExtractor's unit strings are not all FITS units
        warnings.simplefilter("ignore")
        if hdu is None:
            with _opener(path)(path, "rt", encoding="ascii") as fh:
                table = Table.read(fh.read(), format="ascii.sextractor")
        else:
            table = Table.read(path, hdu=hdu, format="fits")
    columns: dict[str, np.ndarray] = {}
    for name in table.colnames:
        values = np.asarray(table[name])
        if values.ndim == 1:
            columns[name] = values
            continue
        flat = values.reshape(len(values), -1)
        for k in range(flat.shape[1]):
            columns[name if k == 0 else f"{name}_{k}"] = flat[:, k]
    return pd.DataFrame(columns)


def _first(names: list[str], options: tuple[str, ...]) -> str | None:
    return next((c for c in options if c in names), None)


def sextractor_to_sky(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Turn a SExtractor catalogue into a sky catalogue of Kron ellipses.

    Parameters
    ----------
    df : pandas.DataFrame
        The catalogue as :func:`read_sextractor` reads it.
    path : Path
        The file (named in errors).

    Returns
    -------
    pandas.DataFrame
        ``ref_id``, ``ra``, ``dec`` (degrees), ``a``, ``b`` (arcsec), ``theta`` (degrees
        east of north), then SExtractor's other columns under their own names.

    Raises
    ------
    CatalogueError
        No ``NUMBER``, or no world position, axes, Kron radius or position angle east of
        north (the message says what to add to SExtractor's parameter file, or how to
        write a per-frame table from pixel positions).
    """
    names = [str(c) for c in df.columns]
    ra, dec, theta = _first(names, _RA), _first(names, _DEC), _first(names, _THETA)
    missing = ([] if "NUMBER" in names else ["NUMBER"]) + [
        what for what, col in (("ALPHA_J2000", ra), ("DELTA_J2000", dec),
                               ("THETA_J2000", theta)) if col is None
    ] + [c for c in _AXES if c not in names]
    if missing:
        pixel = "X_IMAGE" in names and "Y_IMAGE" in names
        raise CatalogueError(
            path,
            f"SExtractor catalogue without {missing}: a reference catalogue needs world "
            "positions and the Kron ellipse (NUMBER, ALPHA_J2000, DELTA_J2000, A_WORLD, "
            "B_WORLD, THETA_J2000, KRON_RADIUS in the parameter file; the detection image "
            "needs a WCS)"
            + ("; or pixel positions only (X_IMAGE, Y_IMAGE, no world positions) for a run "
               "of the one frame they were measured on" if pixel else ""),
            missing[0],
        )
    kron = pd.to_numeric(df["KRON_RADIUS"], errors="coerce").to_numpy(float)
    sky = pd.DataFrame({
        "ref_id": df["NUMBER"].to_numpy(),
        "ra": pd.to_numeric(df[ra], errors="coerce").to_numpy(float),
        "dec": pd.to_numeric(df[dec], errors="coerce").to_numpy(float),
        "a": kron * pd.to_numeric(df["A_WORLD"], errors="coerce").to_numpy(float) * 3600.0,
        "b": kron * pd.to_numeric(df["B_WORLD"], errors="coerce").to_numpy(float) * 3600.0,
        "theta": pd.to_numeric(df[theta], errors="coerce").to_numpy(float),
    })
    used = {"NUMBER", ra, dec, theta, *_AXES}
    rest = df[[c for c in df.columns if c not in used and c not in sky.columns]]
    return pd.concat([sky, rest.reset_index(drop=True)], axis=1)


def is_pixel_only(df: pd.DataFrame) -> bool:
    """Tell whether a SExtractor catalogue has pixel positions and no world positions.

    Parameters
    ----------
    df : pandas.DataFrame
        The catalogue as :func:`read_sextractor` reads it.

    Returns
    -------
    bool
        True with ``X_IMAGE`` and ``Y_IMAGE`` and none of the right ascension columns.
    """
    names = [str(c) for c in df.columns]
    return "X_IMAGE" in names and "Y_IMAGE" in names and _first(names, _RA) is None


def _numbers(df: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(df[column], errors="coerce").to_numpy(float)


def _pixel_shape(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return each source's A, B (px) and THETA (degrees counter-clockwise from +x).

    From ``A_IMAGE, B_IMAGE, THETA_IMAGE`` when all three are there, else from the second
    moments ``X2_IMAGE, Y2_IMAGE, XY_IMAGE`` (px²) as SExtractor computes them:
    ``A², B² = (x2 + y2)/2 ± √(((x2 − y2)/2)² + xy²)``, ``θ = ½ atan2(2 xy, x2 − y2)``.

    Returns
    -------
    tuple of ndarray
        ``(A, B, THETA)``.
    """
    if all(c in df.columns for c in _PIXEL_SHAPE):
        return tuple(_numbers(df, c) for c in _PIXEL_SHAPE)  # type: ignore[return-value]
    x2, y2, xy = (_numbers(df, c) for c in _MOMENTS)
    mean, root = 0.5 * (x2 + y2), np.sqrt((0.5 * (x2 - y2)) ** 2 + xy**2)
    with np.errstate(invalid="ignore"):
        a, b = np.sqrt(mean + root), np.sqrt(np.clip(mean - root, 0.0, None))
    return a, b, 0.5 * np.degrees(np.arctan2(2.0 * xy, x2 - y2))


def sextractor_to_image(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Turn a SExtractor catalogue of pixel positions into an image catalogue of Kron ellipses.

    Parameters
    ----------
    df : pandas.DataFrame
        The catalogue as :func:`read_sextractor` reads it (:func:`is_pixel_only`).
    path : Path
        The file (named in errors).

    Returns
    -------
    pandas.DataFrame
        ``ref_id``, ``aperture_x``, ``aperture_y`` (0-based px), ``aperture_a``,
        ``aperture_b`` (Kron semi-axes, px), ``aperture_theta`` (degrees, PAUS sign), then
        SExtractor's other columns under their own names (``X_IMAGE``, ``Y_IMAGE`` too).

    Raises
    ------
    CatalogueError
        No ``NUMBER`` or ``KRON_RADIUS``, or neither ``A_IMAGE, B_IMAGE, THETA_IMAGE`` nor
        the moments ``X2_IMAGE, Y2_IMAGE, XY_IMAGE``.
    """
    names = [str(c) for c in df.columns]
    missing = [c for c in ("NUMBER", "KRON_RADIUS") if c not in names]
    if not all(c in names for c in _PIXEL_SHAPE) and not all(c in names for c in _MOMENTS):
        missing.append(next(c for c in _PIXEL_SHAPE if c not in names))
    if missing:
        raise CatalogueError(
            path,
            f"SExtractor catalogue of pixel positions without {missing}: its sources are "
            "measured in their Kron ellipses (NUMBER, X_IMAGE, Y_IMAGE, KRON_RADIUS and "
            "A_IMAGE, B_IMAGE, THETA_IMAGE, or X2_IMAGE, Y2_IMAGE, XY_IMAGE in the "
            "parameter file)",
            missing[0],
        )
    kron = _numbers(df, "KRON_RADIUS")
    a, b, theta = _pixel_shape(df)
    image = pd.DataFrame({
        "ref_id": df["NUMBER"].to_numpy(),
        "aperture_x": _numbers(df, "X_IMAGE") - 1.0,
        "aperture_y": _numbers(df, "Y_IMAGE") - 1.0,
        "aperture_a": kron * a,
        "aperture_b": kron * b,
        "aperture_theta": -theta,
    })
    rest = df[[c for c in df.columns if c != "NUMBER" and c not in image.columns]]
    return pd.concat([image, rest.reset_index(drop=True)], axis=1)
