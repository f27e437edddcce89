"""The forced-photometry reference catalogue: reading, type normalisation and row checks.

A catalogue has one row per (source, exposure, CCD) with the PAUS columns
(``pausdenoise.paus_layout.CATALOGUE_COLUMNS``): ``aperture_x/y`` are 0-based pixel
coordinates of the aperture centre on that CCD, ``aperture_a/b`` the semi-axes (arcsec by
default, see ``PhotometryConfig.aperture_units``) and ``aperture_theta`` the position angle
in degrees with the PAUS sign (photutils ``theta = -aperture_theta * pi / 180``).

A **sky catalogue** instead has one row per source and no ``expnum``, ``ccd``,
``aperture_x`` or ``aperture_y`` column: ``ref_id``, ``ra``, ``dec`` (degrees), ``a``, ``b``
(semi-axes, arcsec) and ``theta`` (position angle of the major axis, degrees east of north on
the sky); :mod:`pausdenoise.photometry.projection` places it on each frame through its WCS.

Files are read by their name: ``.csv`` / ``.csv.gz`` as CSV (a header line of column names),
``.fits`` / ``.fit`` / ``.fts`` (optionally ``.gz``) as a FITS binary table (the first table
HDU), anything else as Parquet; SExtractor's own catalogues (ASCII_HEAD, FITS_LDAC), told by
their content, become sky catalogues of Kron ellipses, or, with pixel positions only,
**image catalogues**: per-frame rows without ``expnum`` and ``ccd`` (axes in pixels) for a
run of the one frame they were made on (:mod:`pausdenoise.photometry.sextractor`).

:func:`read_catalogue` refuses a file it cannot use (:class:`~pausdenoise.errors.CatalogueError`
naming the file, column and row); :func:`validate_catalogue` lists the rows that can be read
but not measured, which the photometry keeps with a flag.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pausdenoise.errors import CatalogueError
from pausdenoise.paus_layout import is_safe_name
from pausdenoise.photometry.config import PhotFlag
from pausdenoise.photometry.sextractor import (
    is_ascii_head,
    is_pixel_only,
    ldac_objects_hdu,
    read_sextractor,
    sextractor_to_image,
    sextractor_to_sky,
)

__all__ = [
    "FLOAT_COLUMNS",
    "INT_COLUMNS",
    "REQUIRED_COLUMNS",
    "SKY_COLUMNS",
    "CatalogueCheck",
    "CatalogueError",
    "catalogue_format",
    "check_catalogue_file",
    "frame_catalogue",
    "is_image_catalogue",
    "is_sky_catalogue",
    "read_any_catalogue",
    "read_catalogue",
    "validate_catalogue",
    "validate_sky_catalogue",
    "with_magnitude",
]

#: Catalogue columns measure_frame needs (the rest of CATALOGUE_COLUMNS is passed through).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "ref_id",
    "aperture_x",
    "aperture_y",
    "aperture_a",
    "aperture_b",
    "aperture_theta",
)

#: Catalogue columns read as float64 by :func:`read_catalogue` (when present).
FLOAT_COLUMNS: tuple[str, ...] = (
    "ra",
    "dec",
    "I_auto",
    "aperture_x",
    "aperture_y",
    "aperture_a",
    "aperture_b",
    "aperture_theta",
)
#: Catalogue columns read as int64 by :func:`read_catalogue` (no missing values allowed).
INT_COLUMNS: tuple[str, ...] = ("ref_id", "expnum", "ccd")

#: Columns of a sky catalogue: ``ra``, ``dec`` in degrees, ``a``, ``b`` semi-axes in arcsec,
#: ``theta`` degrees east of north (read as float64 in a sky catalogue).
SKY_COLUMNS: tuple[str, ...] = ("ref_id", "ra", "dec", "a", "b", "theta")

#: Columns whose absence (all of them) makes a catalogue a sky catalogue.
_FRAME_COLUMNS: tuple[str, ...] = ("expnum", "ccd", "aperture_x", "aperture_y")

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


# --------------------------------------------------------------------------------------
# Column types
# --------------------------------------------------------------------------------------


def _show(v: Any) -> str:
    """Show a cell value in a message (numpy scalars shown as Python values).

    Returns
    -------
    str
        The value's ``repr``.
    """
    return repr(v.item() if isinstance(v, np.generic) else v)


def _as_float(v: Any) -> float | None:
    """Read one cell as a float.

    Returns
    -------
    float or None
        The value (NaN for a missing value), or None when it is not a number.
    """
    if v is None or v is pd.NA or v is pd.NaT:
        return math.nan
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, float, np.integer, np.floating, str)):
        try:
            return float(v)
        except (ValueError, OverflowError):
            return None
    return None


def _float_column(s: pd.Series, path: Path, column: str) -> np.ndarray:
    dt = s.dtype
    if pd.api.types.is_bool_dtype(dt) or pd.api.types.is_complex_dtype(dt):
        raise CatalogueError(path, f"has type {dt}, not a real number", column)
    if pd.api.types.is_numeric_dtype(dt):
        with np.errstate(over="ignore", invalid="ignore"):
            return s.to_numpy(dtype=np.float64, na_value=np.nan)
    if not (pd.api.types.is_object_dtype(dt) or pd.api.types.is_string_dtype(dt)):
        raise CatalogueError(path, f"has type {dt}, not a number", column)
    out = np.empty(len(s), dtype=np.float64)
    for i, v in enumerate(s.array):
        f = _as_float(v)
        if f is None:
            raise CatalogueError(path, f"value {_show(v)} is not a number", column, i)
        out[i] = f
    return out


def _as_int(v: Any) -> int | None:
    """Read one cell as an integer in the int64 range.

    Returns
    -------
    int or None
        The value, or None when it is missing or not an integer.
    """
    if isinstance(v, (bool, np.bool_)) or v is None or v is pd.NA:
        return None
    if isinstance(v, (int, np.integer)):
        out = int(v)
    elif isinstance(v, (float, np.floating, str)):
        f = _as_float(v)
        if f is None or not math.isfinite(f) or f != math.floor(f):
            return None
        out = int(f)
    else:
        return None
    return out if _INT64_MIN <= out <= _INT64_MAX else None


def _int_column(s: pd.Series, path: Path, column: str) -> np.ndarray:
    dt = s.dtype
    if pd.api.types.is_integer_dtype(dt) and not s.isna().any():
        if dt.kind == "u" and len(s) and int(s.max()) > _INT64_MAX:
            row = int(np.argmax(s.to_numpy() > _INT64_MAX))
            raise CatalogueError(path, f"value {s.iloc[row]} does not fit int64", column, row)
        return s.to_numpy(dtype=np.int64)
    if pd.api.types.is_bool_dtype(dt) or not (
        pd.api.types.is_numeric_dtype(dt)
        or pd.api.types.is_object_dtype(dt)
        or pd.api.types.is_string_dtype(dt)
    ):
        raise CatalogueError(path, f"has type {dt}, not an integer", column)
    out = np.empty(len(s), dtype=np.int64)
    for i, v in enumerate(s.array):
        n = _as_int(v)
        if n is None:
            raise CatalogueError(path, f"value {_show(v)} is not an integer", column, i)
        out[i] = n
    return out


def _band_column(s: pd.Series, path: Path) -> pd.Series:
    """Read the ``band`` column: str values, None where missing.

    Returns
    -------
    pandas.Series
        Object dtype.

    Raises
    ------
    CatalogueError
        For a value that is not a plain name (it names output directories).
    """
    bands = []
    for i, v in enumerate(s.array):
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            bands.append(None)
        elif isinstance(v, str) and is_safe_name(v):
            bands.append(str(v))
        else:
            raise CatalogueError(
                path,
                f"band {_show(v)} is not a plain name (letters, digits, '.', '_', '+', '-'); "
                "it names output directories",
                "band",
                i,
            )
    return pd.Series(bands, dtype=object)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def catalogue_format(path: os.PathLike[str] | str) -> str:
    """Return the table format a catalogue file is read as, from its name.

    Parameters
    ----------
    path : path-like
        The catalogue file.

    Returns
    -------
    str
        ``"CSV"`` for ``.csv`` / ``.csv.gz``; ``"FITS"`` for ``.fits``, ``.fit``, ``.fts``
        (each optionally ``.gz``), ``"SExtractor FITS_LDAC"`` when such a file (or a
        ``.cat`` / ``.ldac`` one) holds an ``LDAC_OBJECTS`` table; ``"SExtractor
        ASCII_HEAD"`` for a file of any other name whose first line is SExtractor's
        (``#   1 NUMBER ...``); ``"Parquet"`` for the rest.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "CSV"
    fits_name = name.endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz"))
    if (fits_name or name.endswith((".cat", ".ldac"))) and path.is_file() \
            and ldac_objects_hdu(path) is not None:
        return "SExtractor FITS_LDAC"
    if fits_name:
        return "FITS"
    if path.is_file() and is_ascii_head(path):
        return "SExtractor ASCII_HEAD"
    return "Parquet"


def _unreadable(path: Path, exc: Exception, fmt: str = "Parquet") -> CatalogueError:
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return CatalogueError(path, f"not a readable {fmt} table ({type(exc).__name__}: {text})")


def _csv_names(path: Path) -> list[str]:
    """Read the header line of a CSV file (gzip-compressed when its name ends in .gz).

    Returns
    -------
    list of str
        The column names as written (duplicates kept, unlike pandas).
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as fh:
        return [n.strip() for n in next(csv.reader(fh), [])]


def _fits_table(path: Path) -> pd.DataFrame:
    """Read the first table HDU of a FITS file into pandas (byte strings decoded).

    Returns
    -------
    pandas.DataFrame
        The table; masked values become NaN (float) or a nullable integer.
    """
    from astropy.table import Table  # astropy: imported only for FITS catalogues

    with warnings.catch_warnings():  # unit-parsing warnings of foreign tables
        warnings.simplefilter("ignore")
        table = Table.read(path, format="fits")
    table.convert_bytestring_to_unicode()
    return table.to_pandas()


def _open_table(path: Path, fmt: str) -> tuple[list[str], Any]:
    """Read a catalogue file's column names, and return a loader of its rows.

    Returns
    -------
    tuple of (list of str, callable)
        The names in file order, and a function returning the table as pandas.
    """
    if fmt == "CSV":
        return _csv_names(path), lambda: pd.read_csv(path)
    if fmt.startswith("SExtractor"):
        raw = read_sextractor(path, ldac_objects_hdu(path) if fmt.endswith("LDAC") else None)
        table = (sextractor_to_image if is_pixel_only(raw) else sextractor_to_sky)(raw, path)
        return [str(c) for c in table.columns], lambda: table
    if fmt == "FITS":
        df = _fits_table(path)
        return [str(c) for c in df.columns], lambda: df
    names = [str(n) for n in pq.read_schema(path).names]
    return names, lambda: pq.read_table(path).to_pandas()


def _check_names(path: Path, names: list[str], required: Sequence[str], sky: bool) -> None:
    """Refuse duplicated or missing columns.

    Raises
    ------
    CatalogueError
        Naming the file and the first column to blame.
    """
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise CatalogueError(path, f"duplicate column name(s) {dup}", dup[0])
    missing = [c for c in required if c not in names]
    if not missing:
        return
    hint = ""
    if sky:
        hint = (
            f"; without {list(_FRAME_COLUMNS)} it is read as a sky catalogue (ref_id, ra, "
            "dec in degrees, a, b semi-axes in arcsec, theta in degrees east of north), "
            f"else it needs {[*REQUIRED_COLUMNS, 'expnum', 'ccd']}"
        )
    raise CatalogueError(path, f"missing column(s) {missing}; it has {names}{hint}", missing[0])


def _load(path: Path, required: Sequence[str] | None) -> tuple[pd.DataFrame, bool]:
    """Read a catalogue file and check its columns (``required=None``: by its kind).

    Returns
    -------
    tuple of (pandas.DataFrame, bool)
        The raw table with str column names and a fresh index, and whether it is a sky
        catalogue (only when ``required`` is None; else False).

    Raises
    ------
    CatalogueError
        The file is missing or unreadable, or a column is duplicated or missing.
    """
    if not path.is_file():
        raise CatalogueError(path, "reference catalogue not found")
    fmt = catalogue_format(path)
    try:  # arrow, pandas and astropy raise many exception types for corrupt input
        names, loader = _open_table(path, fmt)
    except CatalogueError:
        raise
    except Exception as exc:
        error = _unreadable(path, exc, fmt)
        raise error from None
    sky = required is None and not any(c in names for c in _FRAME_COLUMNS)
    # pixel apertures without frame ids: an image catalogue of one frame (SExtractor's, or
    # any table), placed on the run's frames from input.catalogue_frame
    image = required is None and "aperture_x" in names and "expnum" not in names \
        and "ccd" not in names
    if required is None:
        required = (SKY_COLUMNS if sky else REQUIRED_COLUMNS if image
                    else (*REQUIRED_COLUMNS, "expnum", "ccd"))
    _check_names(path, names, required, sky)
    try:
        df = loader()
    except Exception as exc:
        error = _unreadable(path, exc, fmt)
        raise error from None
    df = df.reset_index(drop=True)
    df.columns = [str(c) for c in df.columns]
    return df, sky


def _normalise(df: pd.DataFrame, path: Path, sky: bool) -> pd.DataFrame:
    """Convert the known columns to their types (see :func:`read_catalogue`).

    Returns
    -------
    pandas.DataFrame
        ``df``, converted in place.
    """
    floats = (*FLOAT_COLUMNS, "a", "b", "theta") if sky else FLOAT_COLUMNS
    for c in floats:
        if c in df.columns:
            df[c] = _float_column(df[c], path, c)
    for c in INT_COLUMNS:
        if c in df.columns:
            df[c] = _int_column(df[c], path, c)
    if "band" in df.columns:
        df["band"] = _band_column(df["band"], path)
    return df


def read_catalogue(
    path: os.PathLike[str] | str,
    required: Sequence[str] = (*REQUIRED_COLUMNS, "expnum", "ccd"),
) -> pd.DataFrame:
    """Read a per-frame forced-photometry catalogue and normalise its types.

    Parameters
    ----------
    path : path-like
        The catalogue file (``paus_layout.CATALOGUE_COLUMNS``): Parquet, CSV or a FITS
        table, by its name (:func:`catalogue_format`).
    required : sequence of str
        Columns that must be present.

    Returns
    -------
    pandas.DataFrame
        The catalogue with a fresh ``RangeIndex``; :data:`FLOAT_COLUMNS` as float64 (missing
        values become NaN, which :func:`validate_catalogue` then flags per row),
        :data:`INT_COLUMNS` as int64, ``band`` (when present) as str or None; every other
        column as stored.

    Raises
    ------
    CatalogueError
        The file is missing or not a readable table of its format; a column is missing or
        duplicated; a numeric column holds text, booleans or other non-numbers; an integer
        column holds a missing, non-integral or out-of-range value; a ``band`` is not a
        plain name (it becomes a directory name: see
        :func:`pausdenoise.photometry.driver.partition_path`). The message names the file,
        the column and the first offending (0-based) row.
    """
    path = Path(path)
    df, _ = _load(path, required)
    return _normalise(df, path, sky=False)


def read_any_catalogue(path: os.PathLike[str] | str) -> pd.DataFrame:
    """Read a per-frame, a sky or an image catalogue, whichever the file holds.

    A file without any of ``expnum``, ``ccd``, ``aperture_x``, ``aperture_y`` is a sky
    catalogue and needs :data:`SKY_COLUMNS` (``ra``, ``dec``, ``theta`` in degrees, ``a``,
    ``b`` in arcsec; read as float64); a SExtractor catalogue of pixel positions only is an
    image catalogue (:data:`REQUIRED_COLUMNS`, no ``expnum``/``ccd``, axes in pixels); any
    other needs the per-frame columns of :func:`read_catalogue`. :func:`is_sky_catalogue`
    and :func:`is_image_catalogue` tell them apart afterwards.

    Parameters
    ----------
    path : path-like
        The catalogue file: Parquet, CSV or a FITS table (:func:`catalogue_format`).

    Returns
    -------
    pandas.DataFrame
        The catalogue, types normalised as in :func:`read_catalogue`.

    Raises
    ------
    CatalogueError
        As :func:`read_catalogue`, naming the file, column and first offending row.
    """
    path = Path(path)
    df, sky = _load(path, None)
    return _normalise(df, path, sky=sky)


def is_sky_catalogue(catalogue: pd.DataFrame) -> bool:
    """Tell whether a catalogue is a sky catalogue (no per-frame columns).

    Parameters
    ----------
    catalogue : pandas.DataFrame
        A catalogue as read by :func:`read_any_catalogue`.

    Returns
    -------
    bool
        True when none of ``expnum``, ``ccd``, ``aperture_x``, ``aperture_y`` is a column.
    """
    return not any(c in catalogue.columns for c in _FRAME_COLUMNS)


def is_image_catalogue(catalogue: pd.DataFrame) -> bool:
    """Tell whether a catalogue is an image catalogue (pixel apertures of one frame).

    Parameters
    ----------
    catalogue : pandas.DataFrame
        A catalogue as read by :func:`read_any_catalogue`.

    Returns
    -------
    bool
        True with ``aperture_x`` but neither ``expnum`` nor ``ccd``: a SExtractor
        catalogue of pixel positions, whose ``aperture_a``/``aperture_b`` are in pixels.
    """
    cols = catalogue.columns
    return "aperture_x" in cols and "expnum" not in cols and "ccd" not in cols


# --------------------------------------------------------------------------------------
# Row checks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogueCheck:
    """Result of :func:`validate_catalogue`.

    ``issues``: one row per problem with columns ``row`` (positional index), ``ref_id``,
    ``expnum``, ``ccd``, ``problem``. ``row_flags``: PhotFlag bits per catalogue row
    (BAD_INPUT for unusable rows, OFF_IMAGE for centres off the CCD). ``sky``: the rows
    are a sky catalogue's (:func:`validate_sky_catalogue`), placed through each frame's WCS.
    ``image``: an image catalogue's (:func:`is_image_catalogue`), for a run of one frame.
    """

    issues: pd.DataFrame
    row_flags: np.ndarray
    sky: bool = False
    image: bool = False

    @property
    def ok(self) -> bool:
        """Whether no problem was found (``issues`` is empty)."""
        return self.issues.empty


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str = "catalogue") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what} is missing column(s) {missing}; it has {list(df.columns)}")


_PAUS_DEGREES = "the PAUS convention is degrees (photutils theta = -aperture_theta*pi/180)"


def _warn_if_radians(
    th: np.ndarray, column: str = "aperture_theta", convention: str = _PAUS_DEGREES
) -> None:
    """Warn when the angles look like radians (all within ±2π, most non-integer)."""
    fin = th[np.isfinite(th)]
    if fin.size >= 5:
        nonzero = fin[(fin != 0) & (np.abs(fin - np.round(fin)) > 1e-9)]
        if np.all(np.abs(fin) <= 2 * np.pi) and nonzero.size >= max(5, fin.size // 2):
            warnings.warn(
                f"{column} values all lie within ±2π and most are non-integer: they "
                f"look like radians, but {convention}",
                UserWarning,
                stacklevel=3,
            )


def _issues_table(catalogue: pd.DataFrame, problems: list[tuple[int, str]]) -> pd.DataFrame:
    """Build the ``issues`` table of :class:`CatalogueCheck`.

    Returns
    -------
    pandas.DataFrame
        One row per problem, sorted by catalogue row (stable).
    """
    rows = [p[0] for p in problems]
    idx = catalogue.iloc[rows] if rows else catalogue.iloc[[]]
    issues = pd.DataFrame(
        {
            "row": np.asarray(rows, dtype=np.int64),
            "ref_id": idx["ref_id"].to_numpy(),
            "expnum": idx["expnum"].to_numpy() if "expnum" in idx else np.full(len(rows), -1),
            "ccd": idx["ccd"].to_numpy() if "ccd" in idx else np.full(len(rows), -1),
            "problem": [p[1] for p in problems],
        }
    )
    return issues.sort_values("row", kind="stable").reset_index(drop=True)


def validate_catalogue(
    catalogue: pd.DataFrame, shape: tuple[int, int] | None = None
) -> CatalogueCheck:
    """Check a forced-photometry catalogue (all frames, or one frame's rows).

    Problems found, each naming the row (positional index and ref_id):
    NaN/Inf position, shape or angle; non-positive axes; a < b (axes swapped);
    position off the CCD (when ``shape=(ny, nx)`` is given); the same ref_id twice in one
    (expnum, ccd) frame. A ``theta`` column whose values all lie within ±2π while many are
    non-zero and non-integer looks like radians although PAUS uses degrees: a
    ``UserWarning`` says so.

    Parameters
    ----------
    catalogue : pandas.DataFrame
        Catalogue rows with at least :data:`REQUIRED_COLUMNS` (``aperture_x/y`` 0-based
        pixels, ``aperture_a/b`` in the catalogue's units, ``aperture_theta`` degrees);
        ``expnum`` and ``ccd`` are used when present.
    shape : tuple of int, optional
        ``(ny, nx)`` of the CCD in pixels; when given, centres outside
        ``[-0.5, nx - 0.5] x [-0.5, ny - 0.5]`` are reported as off the CCD.

    Returns
    -------
    CatalogueCheck
        The problems found (``issues``) and the PhotFlag bits per row (``row_flags``).

    Raises
    ------
    KeyError
        When a required column is missing (the message names it).
    """
    _require_columns(catalogue, REQUIRED_COLUMNS)
    n = len(catalogue)
    flags = np.zeros(n, dtype=np.int32)
    problems: list[tuple[int, str]] = []

    x = catalogue["aperture_x"].to_numpy(dtype=float)
    y = catalogue["aperture_y"].to_numpy(dtype=float)
    a = catalogue["aperture_a"].to_numpy(dtype=float)
    b = catalogue["aperture_b"].to_numpy(dtype=float)
    th = catalogue["aperture_theta"].to_numpy(dtype=float)

    def add(sel: np.ndarray, text: str, bit: int) -> None:
        for i in np.flatnonzero(sel):
            problems.append((int(i), text))
        flags[sel] |= bit

    add(~(np.isfinite(x) & np.isfinite(y)), "non-finite position", PhotFlag.BAD_INPUT)
    add(~(np.isfinite(a) & np.isfinite(b)), "non-finite aperture axes", PhotFlag.BAD_INPUT)
    add(~np.isfinite(th), "non-finite aperture_theta", PhotFlag.BAD_INPUT)
    with np.errstate(invalid="ignore"):
        add((a <= 0) | (b <= 0), "non-positive aperture axis", PhotFlag.BAD_INPUT)
        add(a < b, "aperture_a < aperture_b (semi-major smaller than semi-minor)", 0)
        if shape is not None:
            ny, nx = shape
            off = (x < -0.5) | (x > nx - 0.5) | (y < -0.5) | (y > ny - 0.5)
            add(off, f"position off the CCD ({ny}x{nx})", PhotFlag.OFF_IMAGE)

    keys = [c for c in ("expnum", "ccd") if c in catalogue.columns] + ["ref_id"]
    dup = catalogue.duplicated(subset=keys, keep=False).to_numpy()
    add(dup, f"duplicate ref_id within frame ({', '.join(keys)})", PhotFlag.BAD_INPUT)

    _warn_if_radians(th)
    return CatalogueCheck(issues=_issues_table(catalogue, problems), row_flags=flags)


def validate_sky_catalogue(catalogue: pd.DataFrame) -> CatalogueCheck:
    """Check a sky catalogue (one row per source, positions in degrees).

    Problems found, each naming the row (positional index) and ref_id: NaN/Inf ``ra``,
    ``dec``, ``a``, ``b`` or ``theta``; ``dec`` outside [-90, 90]; non-positive axes; a < b;
    the same ref_id twice. A ``theta`` column that looks like radians (as in
    :func:`validate_catalogue`) gives a ``UserWarning``: ``theta`` is in degrees east of
    north. Rows that cannot be placed (non-finite or impossible position) are measured on no
    frame; the others are flagged by the photometry as their per-frame rows would be.

    Parameters
    ----------
    catalogue : pandas.DataFrame
        Sky catalogue with :data:`SKY_COLUMNS` (``ra``, ``dec``, ``theta`` degrees; ``a``,
        ``b`` arcsec).

    Returns
    -------
    CatalogueCheck
        The problems (``expnum`` and ``ccd`` are -1) and the PhotFlag bits per row.

    Raises
    ------
    KeyError
        When a column of :data:`SKY_COLUMNS` is missing (the message names it).
    """
    _require_columns(catalogue, SKY_COLUMNS, "sky catalogue")
    as_pixel = pd.DataFrame({
        "ref_id": catalogue["ref_id"].to_numpy(),
        "aperture_x": catalogue["ra"].to_numpy(dtype=float),
        "aperture_y": catalogue["dec"].to_numpy(dtype=float),
        "aperture_a": catalogue["a"].to_numpy(dtype=float),
        "aperture_b": catalogue["b"].to_numpy(dtype=float),
        "aperture_theta": np.zeros(len(catalogue)),  # theta is checked below, as theta
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check = validate_catalogue(as_pixel)
    th = catalogue["theta"].to_numpy(dtype=float)
    dec = as_pixel["aperture_y"].to_numpy()
    extra = [(int(i), "non-finite theta") for i in np.flatnonzero(~np.isfinite(th))]
    with np.errstate(invalid="ignore"):
        extra += [(int(i), "dec outside [-90, 90] degrees")
                  for i in np.flatnonzero(np.abs(dec) > 90)]
    flags = check.row_flags.copy()
    for i, _ in extra:
        flags[i] |= PhotFlag.BAD_INPUT
    problems = [(int(r), str(p).replace("aperture_a < aperture_b", "a < b")
                 .replace("aperture axes", "axes").replace("aperture axis", "axis"))
                for r, p in zip(check.issues["row"], check.issues["problem"], strict=True)]
    _warn_if_radians(th, "theta", "theta is in degrees east of north")
    return CatalogueCheck(issues=_issues_table(catalogue, problems + extra), row_flags=flags,
                          sky=True)


def with_magnitude(catalogue: pd.DataFrame, column: str | None,
                   path: os.PathLike[str] | str) -> pd.DataFrame:
    """Take a catalogue column of AB magnitudes as ``I_auto``, the comparison's binning.

    Parameters
    ----------
    catalogue : pandas.DataFrame
        A catalogue as read by :func:`read_any_catalogue`.
    column : str or None
        The column (``input.catalogue_magnitude``); None leaves the catalogue as it is.
    path : path-like
        The catalogue file (named in errors).

    Returns
    -------
    pandas.DataFrame
        ``catalogue`` with ``I_auto`` (float64) = ``column`` (replacing an ``I_auto`` of its
        own); missing values become NaN (outside every bin).

    Raises
    ------
    CatalogueError
        The column is not in the catalogue (its columns are listed), or holds non-numbers.
    """
    if column is None:
        return catalogue
    if column not in catalogue.columns:
        raise CatalogueError(
            Path(path), f"input.catalogue_magnitude {column!r} is not a column; it has "
            f"{[str(c) for c in catalogue.columns]}", column)
    return catalogue.assign(I_auto=_float_column(catalogue[column], Path(path), column))


def check_catalogue_file(path: os.PathLike[str] | str,
                         magnitude: str | None = None) -> CatalogueCheck:
    """Read and check a reference catalogue file before any pipeline work.

    Reads it as the photometry stage will (:func:`read_any_catalogue`) and checks its rows
    (:func:`validate_sky_catalogue` or :func:`validate_catalogue`); a ``theta`` or
    ``aperture_theta`` that looks like radians warns (``UserWarning``) here already.

    Parameters
    ----------
    path : path-like
        The catalogue file (Parquet, CSV or FITS table).
    magnitude : str, optional
        ``input.catalogue_magnitude``: the column taken as ``I_auto``
        (:func:`with_magnitude`).

    Returns
    -------
    CatalogueCheck
        The row problems, which the photometry flags (not errors).

    Raises
    ------
    CatalogueError
        When the file cannot be used at all: missing, unreadable, a column missing or
        duplicated, a value of the wrong type (naming the file, column and 0-based row),
        or no column ``magnitude``.
    """
    catalogue = with_magnitude(read_any_catalogue(path), magnitude, path)
    if is_sky_catalogue(catalogue):
        return validate_sky_catalogue(catalogue)
    check = validate_catalogue(catalogue)
    return replace(check, image=True) if is_image_catalogue(catalogue) else check


def frame_catalogue(catalogue: pd.DataFrame, expnum: int, ccd: int) -> pd.DataFrame:
    """Select the catalogue rows of one (expnum, ccd) frame.

    Parameters
    ----------
    catalogue : pandas.DataFrame
        Catalogue with ``expnum`` and ``ccd`` columns.
    expnum : int
        Exposure number.
    ccd : int
        CCD number (PAUCam: 1-based).

    Returns
    -------
    pandas.DataFrame
        The matching rows in catalogue order, with a fresh ``RangeIndex``.

    Raises
    ------
    KeyError
        When ``expnum`` or ``ccd`` is missing from the catalogue.
    """
    _require_columns(catalogue, ("expnum", "ccd"))
    sel = (catalogue["expnum"].to_numpy() == expnum) & (catalogue["ccd"].to_numpy() == ccd)
    return catalogue.loc[sel].reset_index(drop=True)
