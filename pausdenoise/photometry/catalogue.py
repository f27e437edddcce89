"""The forced-photometry reference catalogue: reading, type normalisation and row checks.

A catalogue has one row per (source, exposure, CCD) with the PAUS columns
(``pausdenoise.paus_layout.CATALOGUE_COLUMNS``): ``aperture_x/y`` are 0-based pixel
coordinates of the aperture centre on that CCD, ``aperture_a/b`` the semi-axes (arcsec by
default, see ``PhotometryConfig.aperture_units``) and ``aperture_theta`` the position angle
in degrees with the PAUS sign (photutils ``theta = -aperture_theta * pi / 180``).

:func:`read_catalogue` refuses a file it cannot use (:class:`~pausdenoise.errors.CatalogueError`
naming the file, column and row); :func:`validate_catalogue` lists the rows that can be read
but not measured, which the photometry keeps with a flag.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pausdenoise.errors import CatalogueError
from pausdenoise.paus_layout import is_safe_name
from pausdenoise.photometry.config import PhotFlag

__all__ = [
    "FLOAT_COLUMNS",
    "INT_COLUMNS",
    "REQUIRED_COLUMNS",
    "CatalogueCheck",
    "CatalogueError",
    "frame_catalogue",
    "read_catalogue",
    "validate_catalogue",
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


def _unreadable(path: Path, exc: Exception) -> CatalogueError:
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return CatalogueError(path, f"not a readable Parquet table ({type(exc).__name__}: {text})")


def _check_schema(path: Path, required: Sequence[str]) -> None:
    """Refuse a file that is not Parquet, or has duplicated or missing columns.

    Raises
    ------
    CatalogueError
        Naming the file and, where there is one, the column.
    """
    try:  # arrow raises many exception types for corrupt input
        names = [str(n) for n in pq.read_schema(path).names]
    except Exception as exc:
        error = _unreadable(path, exc)
        raise error from None
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise CatalogueError(path, f"duplicate column name(s) {dup}", dup[0])
    missing = [c for c in required if c not in names]
    if missing:
        raise CatalogueError(path, f"missing column(s) {missing}; it has {names}", missing[0])


def read_catalogue(
    path: os.PathLike[str] | str,
    required: Sequence[str] = (*REQUIRED_COLUMNS, "expnum", "ccd"),
) -> pd.DataFrame:
    """Read a forced-photometry reference catalogue (Parquet) and normalise its types.

    Parameters
    ----------
    path : path-like
        The Parquet file (``paus_layout.CATALOGUE_COLUMNS``).
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
        The file is missing or not a readable Parquet table; a column is missing or
        duplicated; a numeric column holds text, booleans or other non-numbers; an integer
        column holds a missing, non-integral or out-of-range value; a ``band`` is not a
        plain name (it becomes a directory name: see
        :func:`pausdenoise.photometry.driver.partition_path`). The message names the file,
        the column and the first offending row.
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogueError(path, "reference catalogue not found")
    _check_schema(path, required)
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:
        error = _unreadable(path, exc)
        raise error from None
    names = [str(c) for c in df.columns]
    df = df.reset_index(drop=True)
    df.columns = names
    for c in FLOAT_COLUMNS:
        if c in df.columns:
            df[c] = _float_column(df[c], path, c)
    for c in INT_COLUMNS:
        if c in df.columns:
            df[c] = _int_column(df[c], path, c)
    if "band" in df.columns:
        df["band"] = _band_column(df["band"], path)
    return df


# --------------------------------------------------------------------------------------
# Row checks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogueCheck:
    """Result of :func:`validate_catalogue`.

    ``issues``: one row per problem with columns ``row`` (positional index), ``ref_id``,
    ``expnum``, ``ccd``, ``problem``. ``row_flags``: PhotFlag bits per catalogue row
    (BAD_INPUT for unusable rows, OFF_IMAGE for centres off the CCD).
    """

    issues: pd.DataFrame
    row_flags: np.ndarray

    @property
    def ok(self) -> bool:
        """Whether no problem was found (``issues`` is empty)."""
        return self.issues.empty


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str = "catalogue") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what} is missing column(s) {missing}; it has {list(df.columns)}")


def _warn_if_radians(th: np.ndarray) -> None:
    """Warn when the angles look like radians (all within ±2π, most non-integer)."""
    fin = th[np.isfinite(th)]
    if fin.size >= 5:
        nonzero = fin[(fin != 0) & (np.abs(fin - np.round(fin)) > 1e-9)]
        if np.all(np.abs(fin) <= 2 * np.pi) and nonzero.size >= max(5, fin.size // 2):
            warnings.warn(
                "aperture_theta values all lie within ±2π and most are non-integer: they "
                "look like radians, but the PAUS convention is degrees "
                "(photutils theta = -aperture_theta*pi/180)",
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
