"""Forced elliptical-aperture photometry of one (exposure, CCD) block, and its Dask driver.

The recipe is the one of the PAUS analyses (``/work/shared/DOMAIN.md``):

1. **Background** — a circular annulus (``annulus_r_in`` … ``annulus_r_out`` pixels) around
   each source. A pixel belongs to the annulus when its *centre* lies in it (photutils'
   ``method='center'``: ``r_in² <= d² < r_out²``); masked and non-finite pixels are dropped
   and never enter the statistics; the rest are sigma-clipped exactly like
   ``astropy.stats.sigma_clip(sigma=3, maxiters=2)`` (centre = median, scale = population
   std, a pixel survives when ``median - 3σ <= v <= median + 3σ``, each iteration clipping
   the survivors of the previous one). The clipped mean, median, std and pixel count are
   recorded; the clipped *mean* (default) or *median* is subtracted.
2. **Source** — the sum over an elliptical aperture (a circle when ``a == b``) of the
   pixel values times their overlap fraction with the ellipse (exact overlap, or N×N
   sub-pixel sampling as SExtractor does), masked pixels excluded. ``area`` is the sum of the
   overlap fractions of the *unmasked* in-image pixels, so that
   ``flux = aper_sum - area * bkg`` subtracts sky only where sky was summed.
3. **Error** (all in ADU; ``gain`` in e⁻/ADU)::

       flux_err² = max(flux, 0) / gain            # source Poisson term (ADU²)
                 + area * bkg_std²                 # sky noise in the aperture
                 + area² * bkg_std² / bkg_n        # error of the background estimate

   With ``background="median"`` the last term is multiplied by π/2 (the variance of a
   median of ``n`` Gaussian values is π/2 · σ²/n).
4. **Calibration** (ZP multiplicative, ``pausdenoise.paus_layout``)::

       flux_cal = flux * zp
       flux_cal_err = sqrt(flux_err² zp_err² + flux_err² zp² + flux² zp_err²)

Why not one photutils object per source: that is the ~44 sources/s of the original
analyses. Here the aperture weights come from the same low-level routines photutils itself
uses (``photutils.geometry.elliptical_overlap_grid`` / ``circular_overlap_grid``) on a small
cutout per source, and the annulus statistics are computed for batches of sources at once:
the annulus pixels of a batch are gathered into one ``(batch, K)`` array, sorted once per
row, and since every sigma-clipping pass keeps a contiguous range of the sorted values, the
clipped median/mean/std come from indices and prefix sums. The results equal photutils'
``aperture_photometry`` + ``ApertureStats``/``sigma_clip`` to ≤ 1e-6 relative (tests).
Statistics are computed in float64 (float32 images are up-cast per pixel).

Conventions (``pausdenoise.paus_layout``): ``aperture_x/y`` are 0-based pixel coordinates,
``aperture_a/b`` arcsec (``aperture_units="arcsec"``) and ``aperture_theta`` degrees with the
PAUS sign, i.e. photutils ``theta = -aperture_theta * pi / 180`` (radians, counter-clockwise
from +x).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntFlag
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from photutils.geometry import circular_overlap_grid, elliptical_overlap_grid
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pausdenoise.errors import CatalogueError
from pausdenoise.maskbits import MaskBit
from pausdenoise.paus_layout import is_safe_name

__all__ = [
    "OUTPUT_COLUMNS",
    "REQUIRED_COLUMNS",
    "CatalogueCheck",
    "CatalogueError",
    "PhotFlag",
    "PhotometryConfig",
    "annulus_stats",
    "aperture_sums",
    "calibrate_flux",
    "frame_catalogue",
    "measure_frame",
    "measure_store_frame",
    "partition_path",
    "photometry_dataframe",
    "photometry_tasks",
    "read_catalogue",
    "read_photometry",
    "run_photometry",
    "validate_catalogue",
    "write_partition",
]


class PhotFlag(IntFlag):
    """Bits of the ``flags`` column. Flagged rows are kept; select with ``flags == 0``."""

    OFF_IMAGE = 1
    """Aperture centre outside the image (the sum covers only what overlaps, if anything)."""
    TRUNCATED = 2
    """The aperture's bounding box crosses the image edge."""
    MASKED = 4
    """At least one masked (or non-finite) pixel overlaps the aperture; it was excluded."""
    FEW_ANNULUS = 8
    """Fewer than ``min_annulus_pixels`` usable annulus pixels after clipping."""
    SATURATED = 16
    """A pixel in the aperture is at/above the saturation level or has the SATURATED bit."""
    NONFINITE_PIXEL = 32
    """A NaN/Inf pixel value (not masked) inside the aperture; it was excluded."""
    NONFINITE_RESULT = 64
    """flux or flux_err is not finite."""
    BAD_INPUT = 128
    """The catalogue row is unusable (NaN position/shape, non-positive axes)."""


class PhotometryConfig(BaseModel):
    """Configuration of the forced-photometry stage."""

    model_config = ConfigDict(extra="forbid")

    pixel_scale: float = Field(
        0.265,
        gt=0,
        description="arcsec per pixel used to convert aperture_a/b to pixels "
        "(PAUCam: 0.265; the PAUS pipeline code used 0.263).",
    )
    aperture_units: Literal["arcsec", "pixel"] = Field(
        "arcsec", description="units of aperture_a/aperture_b in the catalogue"
    )
    annulus_r_in: float = Field(30.0, gt=0, description="inner annulus radius, pixels")
    annulus_r_out: float = Field(45.0, gt=0, description="outer annulus radius, pixels")
    sigma: float = Field(3.0, gt=0, description="sigma-clipping threshold (both sides)")
    maxiters: int = Field(2, ge=0, description="sigma-clipping iterations (astropy maxiters)")
    background: Literal["mean", "median"] = Field(
        "mean",
        description="clipped statistic subtracted as sky: 'mean' (PAUS denoising analysis) "
        "or 'median' (PAUS production pipeline)",
    )
    subpixels: int = Field(
        0,
        ge=0,
        le=64,
        description="0 = exact pixel/ellipse overlap; N = N×N sub-pixel sampling "
        "(SExtractor uses 5; 1 = pixel-centre membership)",
    )
    min_annulus_pixels: int = Field(
        50, ge=1, description="fewer usable (clipped) annulus pixels sets FEW_ANNULUS"
    )
    bad_mask_bits: int = Field(
        0xFFFF,
        ge=0,
        description="a pixel is masked when (mask & bad_mask_bits) != 0 (default: any bit)",
    )
    saturation: Literal["flag", "mask"] = Field(
        "flag",
        description="pixels at/above the saturation level in the aperture: 'flag' keeps them "
        "and sets SATURATED; 'mask' also excludes them like masked pixels (aperture and "
        "annulus)",
    )
    saturate_level: float | None = Field(
        None,
        description="saturation level in ADU; None = use the frame's 'saturate' attribute "
        "(no level check when that is absent as well)",
    )
    kinds: tuple[Literal["raw", "denoised"], ...] = Field(
        ("raw", "denoised"), min_length=1, description="which images to measure"
    )
    batch_size: int = Field(64, ge=1, description="sources per vectorised annulus batch")

    @model_validator(mode="after")
    def _check_annulus(self) -> PhotometryConfig:
        if self.annulus_r_out <= self.annulus_r_in:
            raise ValueError(
                f"annulus_r_out ({self.annulus_r_out}) must exceed annulus_r_in "
                f"({self.annulus_r_in})"
            )
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds has duplicates: {self.kinds}")
        return self

    def fingerprint(self) -> str:
        """Short hash of the settings that change measured values (for rerun checks)."""
        d = self.model_dump(exclude={"kinds", "batch_size"})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


#: Catalogue columns measure_frame needs (the rest of CATALOGUE_COLUMNS is passed through).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "ref_id",
    "aperture_x",
    "aperture_y",
    "aperture_a",
    "aperture_b",
    "aperture_theta",
)

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


# --------------------------------------------------------------------------------------
# Catalogue handling
# --------------------------------------------------------------------------------------




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


def _show(v: Any) -> str:
    """A cell value for a message (numpy scalars shown as Python values)."""
    return repr(v.item() if isinstance(v, np.generic) else v)


def _as_float(v: Any) -> float | None:
    """``v`` as a float (NaN for a missing value), or None when it is not a number."""
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
    """``v`` as an int64-range integer, or None when it is missing or not an integer."""
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
        plain name (it becomes a directory name: see :func:`partition_path`). The message
        names the file, the column and the first offending row.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise CatalogueError(path, "reference catalogue not found")

    def unreadable(exc: Exception) -> CatalogueError:
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        return CatalogueError(path, f"not a readable Parquet table ({type(exc).__name__}: {text})")

    try:  # arrow raises many exception types for corrupt input
        names = [str(n) for n in pq.read_schema(path).names]
    except Exception as exc:
        raise unreadable(exc) from None
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise CatalogueError(path, f"duplicate column name(s) {dup}", dup[0])
    missing = [c for c in required if c not in names]
    if missing:
        raise CatalogueError(path, f"missing column(s) {missing}; it has {names}", missing[0])
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:
        raise unreadable(exc) from None
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
        bands = []
        for i, v in enumerate(df["band"].array):
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
        df["band"] = pd.Series(bands, dtype=object)
    return df


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
        return self.issues.empty


def _require_columns(df: pd.DataFrame, columns: Iterable[str], what: str = "catalogue") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{what} is missing column(s) {missing}; it has {list(df.columns)}")


def validate_catalogue(
    catalogue: pd.DataFrame, shape: tuple[int, int] | None = None
) -> CatalogueCheck:
    """Check a forced-photometry catalogue (all frames, or one frame's rows).

    Problems found, each naming the row (positional index and ref_id):
    NaN/Inf position, shape or angle; non-positive axes; a < b (axes swapped);
    position off the CCD (when ``shape=(ny, nx)`` is given); the same ref_id twice in one
    (expnum, ccd) frame. A ``theta`` column whose values all lie within ±2π while many are
    non-zero and non-integer looks like radians although PAUS uses degrees: a
    ``UserWarning`` says so. A missing required column raises ``KeyError`` naming it.
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

    fin = th[np.isfinite(th)]
    if fin.size >= 5:
        nonzero = fin[(fin != 0) & (np.abs(fin - np.round(fin)) > 1e-9)]
        if np.all(np.abs(fin) <= 2 * np.pi) and nonzero.size >= max(5, fin.size // 2):
            warnings.warn(
                "aperture_theta values all lie within ±2π and most are non-integer: they "
                "look like radians, but the PAUS convention is degrees "
                "(photutils theta = -aperture_theta*pi/180)",
                UserWarning,
                stacklevel=2,
            )

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
    return CatalogueCheck(
        issues=issues.sort_values("row", kind="stable").reset_index(drop=True), row_flags=flags
    )


def frame_catalogue(catalogue: pd.DataFrame, expnum: int, ccd: int) -> pd.DataFrame:
    """The catalogue rows of one (expnum, ccd) frame."""
    _require_columns(catalogue, ("expnum", "ccd"))
    sel = (catalogue["expnum"].to_numpy() == expnum) & (catalogue["ccd"].to_numpy() == ccd)
    return catalogue.loc[sel].reset_index(drop=True)


def _aperture_geometry(apertures: pd.DataFrame, config: PhotometryConfig) -> tuple[np.ndarray, ...]:
    """x, y (px, 0-based), a, b (px), photutils theta (rad) from catalogue columns."""
    x = apertures["aperture_x"].to_numpy(dtype=np.float64)
    y = apertures["aperture_y"].to_numpy(dtype=np.float64)
    a = apertures["aperture_a"].to_numpy(dtype=np.float64)
    b = apertures["aperture_b"].to_numpy(dtype=np.float64)
    if config.aperture_units == "arcsec":
        a = a / config.pixel_scale
        b = b / config.pixel_scale
    theta = -apertures["aperture_theta"].to_numpy(dtype=np.float64) * (np.pi / 180.0)
    return x, y, a, b, theta


# --------------------------------------------------------------------------------------
# Aperture sums
# --------------------------------------------------------------------------------------


def _bad_pixels(
    values: np.ndarray,
    mask_values: np.ndarray | None,
    bad_bits: int,
    sat_level: float | None,
    mask_saturated: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masked, nonfinite, saturated) booleans for a block of pixels."""
    nonfinite = ~np.isfinite(values)
    if mask_values is None:
        masked = np.zeros(values.shape, dtype=bool)
        sat = np.zeros(values.shape, dtype=bool)
    else:
        dt = mask_values.dtype
        bits = np.asarray(bad_bits & int(np.iinfo(dt).max), dtype=dt)
        masked = (mask_values & bits) != 0
        sat = (mask_values & np.asarray(int(MaskBit.SATURATED), dtype=dt)) != 0
    if sat_level is not None:
        with np.errstate(invalid="ignore"):
            sat = sat | (values >= sat_level)
    if mask_saturated:
        masked = masked | sat
    return masked, nonfinite, sat


#: Aperture axes (pixels) outside [MIN_AXIS_PX, MAX_AXIS_PX] are flagged BAD_INPUT and not
#: measured: the overlap routines divide by zero below ~1e-300 px and overflow above
#: ~1e150 px, and neither end means anything on a CCD.
MIN_AXIS_PX = 1e-6
MAX_AXIS_PX = 1e7


def aperture_sums(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    theta: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    subpixels: int = 0,
    bad_mask_bits: int = 0xFFFF,
    saturate_level: float | None = None,
    mask_saturated: bool = False,
) -> dict[str, np.ndarray]:
    """Elliptical aperture sums at 0-based pixel positions (all lengths in pixels).

    ``theta`` is the photutils angle (radians, counter-clockwise from +x). A source with
    ``a == b`` uses the circular overlap routine. ``subpixels=0`` is the exact overlap,
    ``N`` samples each pixel on an N×N grid of sub-pixel centres (photutils 'subpixel',
    SExtractor's scheme for N=5). Masked pixels (``mask & bad_mask_bits``) and non-finite
    pixels are excluded. Returns arrays ``aper_sum``, ``area`` (unmasked overlap),
    ``area_masked`` and ``flags`` (PhotFlag bits OFF_IMAGE, TRUNCATED, MASKED, SATURATED,
    NONFINITE_PIXEL, BAD_INPUT). BAD_INPUT: a non-finite position, axis or angle, or an
    axis outside [``MIN_AXIS_PX``, ``MAX_AXIS_PX``].
    """
    image = np.asarray(image)
    ny, nx = image.shape
    n = len(x)
    out_sum = np.full(n, np.nan)
    out_area = np.full(n, np.nan)
    out_amask = np.full(n, np.nan)
    flags = np.zeros(n, dtype=np.int32)
    use_exact = 1 if subpixels == 0 else 0
    nsub = max(int(subpixels), 1)

    cos_t, sin_t = np.cos(theta), np.sin(theta)
    with np.errstate(invalid="ignore", over="ignore"):  # huge axes: flagged below
        hx = np.sqrt((a * cos_t) ** 2 + (b * sin_t) ** 2)
        hy = np.sqrt((a * sin_t) ** 2 + (b * cos_t) ** 2)
        good_in = (
            np.isfinite(x)
            & np.isfinite(y)
            & np.isfinite(a)
            & np.isfinite(b)
            & np.isfinite(theta)
            & (a >= MIN_AXIS_PX)
            & (b >= MIN_AXIS_PX)
            & (a <= MAX_AXIS_PX)
            & (b <= MAX_AXIS_PX)
        )
        off = (x < -0.5) | (x > nx - 0.5) | (y < -0.5) | (y > ny - 0.5)
    flags[~good_in] |= PhotFlag.BAD_INPUT
    flags[good_in & off] |= PhotFlag.OFF_IMAGE

    for i in np.flatnonzero(good_in):
        x0, y0 = float(x[i]), float(y[i])
        ixmin = math.floor(x0 - hx[i] + 0.5)
        ixmax = math.floor(x0 + hx[i] + 0.5) + 1
        iymin = math.floor(y0 - hy[i] + 0.5)
        iymax = math.floor(y0 + hy[i] + 0.5) + 1
        if ixmin < 0 or iymin < 0 or ixmax > nx or iymax > ny:
            flags[i] |= PhotFlag.TRUNCATED
            ixmin, iymin = max(ixmin, 0), max(iymin, 0)
            ixmax, iymax = min(ixmax, nx), min(iymax, ny)
            if ixmax <= ixmin or iymax <= iymin:
                flags[i] |= PhotFlag.OFF_IMAGE
                continue
        gx, gy = ixmax - ixmin, iymax - iymin
        xe0, xe1 = ixmin - 0.5 - x0, ixmax - 0.5 - x0
        ye0, ye1 = iymin - 0.5 - y0, iymax - 0.5 - y0
        if a[i] == b[i]:
            w = circular_overlap_grid(xe0, xe1, ye0, ye1, gx, gy, float(a[i]), use_exact, nsub)
        else:
            w = elliptical_overlap_grid(
                xe0,
                xe1,
                ye0,
                ye1,
                gx,
                gy,
                float(a[i]),
                float(b[i]),
                float(theta[i]),
                use_exact,
                nsub,
            )
        cut = image[iymin:iymax, ixmin:ixmax]
        mcut = None if mask is None else mask[iymin:iymax, ixmin:ixmax]
        tot = float(np.sum(w * cut))
        # fast path (most sources): nothing masked, nothing non-finite, nothing saturated
        # anywhere in the cutout; otherwise look at the pixels inside the aperture
        if (
            math.isfinite(tot)
            and (mcut is None or not mcut.any())
            and (saturate_level is None or float(cut.max()) < saturate_level)
        ):
            out_sum[i] = tot
            out_area[i] = float(np.sum(w))
            out_amask[i] = 0.0
            continue
        masked, nonfinite, sat = _bad_pixels(
            cut, mcut, bad_mask_bits, saturate_level, mask_saturated
        )
        inside = w > 0
        bad = masked | nonfinite
        if np.any(bad & inside):
            flags[i] |= PhotFlag.MASKED
            if np.any(nonfinite & inside & ~masked):
                flags[i] |= PhotFlag.NONFINITE_PIXEL
        # bad pixels outside the aperture (weight 0) must not turn the sum into NaN either
        wg = np.where(bad, 0.0, w)
        out_sum[i] = float(np.sum(wg * np.where(bad, 0.0, cut)))
        if np.any(sat & inside):
            flags[i] |= PhotFlag.SATURATED
        area = float(np.sum(wg))
        out_area[i] = area
        out_amask[i] = float(np.sum(w)) - area
    return {"aper_sum": out_sum, "area": out_area, "area_masked": out_amask, "flags": flags}


# --------------------------------------------------------------------------------------
# Annulus statistics (vectorised over batches of sources)
# --------------------------------------------------------------------------------------


def _annulus_offsets(r_in: float, r_out: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer (dy, dx) offsets that can hold an annulus pixel centre for a source whose
    position is within half a pixel of the integer centre (a superset).

    The offsets are ordered boundary first: the first ``n_edge`` may or may not be members
    depending on the sub-pixel position (tested per source); the rest are members for any
    position within half a pixel, so their distance test is skipped. Row-major otherwise.
    """
    slack = math.sqrt(0.5) + 1e-6
    m = math.ceil(r_out + slack)
    dy, dx = np.mgrid[-m : m + 1, -m : m + 1]
    d = np.hypot(dx, dy)
    keep = (d >= r_in - slack) & (d <= r_out + slack)
    sure = keep & (d - slack >= r_in) & (d + slack < r_out)
    edge = keep & ~sure
    dy_o = np.concatenate([dy[edge], dy[sure]]).astype(np.int64)
    dx_o = np.concatenate([dx[edge], dx[sure]]).astype(np.int64)
    return dy_o, dx_o, int(edge.sum())


def _range_stats(
    srt: np.ndarray,
    c1: np.ndarray,
    c2: np.ndarray,
    piv: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, mean and ddof=0 std of ``srt[r, lo[r]:hi[r]]`` for every row ``r``.

    ``srt`` is row-sorted; ``c1``/``c2`` are the row prefix sums (with a leading 0 column)
    of ``srt - piv`` and its square, so a range's sums are two look-ups. Empty ranges → NaN.
    """
    rows = np.arange(srt.shape[0])
    k = srt.shape[1]
    c = hi - lo
    cc = np.maximum(c, 1)
    i1 = np.clip(lo + (cc - 1) // 2, 0, k - 1)
    i2 = np.clip(lo + cc // 2, 0, k - 1)
    med = 0.5 * (srt[rows, i1] + srt[rows, i2])
    s1 = c1[rows, hi] - c1[rows, lo]
    s2 = c2[rows, hi] - c2[rows, lo]
    mean_d = s1 / cc
    var = np.maximum(s2 / cc - mean_d * mean_d, 0.0)
    empty = c <= 0
    med = np.where(empty, np.nan, med)
    mean = np.where(empty, np.nan, piv + mean_d)
    std = np.where(empty, np.nan, np.sqrt(var))
    return med, mean, std


def annulus_stats(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    r_in: float,
    r_out: float,
    mask: np.ndarray | None = None,
    sigma: float = 3.0,
    maxiters: int = 2,
    bad_mask_bits: int = 0xFFFF,
    saturate_level: float | None = None,
    mask_saturated: bool = False,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Sigma-clipped statistics of circular-annulus pixels around each position.

    Membership by pixel centre (``r_in² <= d² < r_out²``, photutils ``method='center'``),
    masked / non-finite / off-image pixels dropped, then clipping identical to
    ``astropy.stats.sigma_clip(values, sigma=sigma, maxiters=maxiters)`` (median centre,
    ddof=0 std, inclusive bounds). Returns ``bkg_mean``, ``bkg_median``, ``bkg_std`` (ADU
    per pixel) and ``bkg_n`` (clipped count); NaN statistics when no pixel is usable.
    """
    image = np.asarray(image)
    ny, nx = image.shape
    n = len(x)
    res = {
        "bkg_mean": np.full(n, np.nan),
        "bkg_median": np.full(n, np.nan),
        "bkg_std": np.full(n, np.nan),
        "bkg_n": np.zeros(n, dtype=np.int64),
    }
    # positions farther than r_out + 1 px from the image have no annulus pixel in it; leaving
    # them out also keeps the int64 pixel indices below from overflowing (x = 1e300)
    reach = float(r_out) + 1.0
    with np.errstate(invalid="ignore"):
        near = (np.abs(x - (nx - 1) / 2) <= nx / 2 + reach) & (
            np.abs(y - (ny - 1) / 2) <= ny / 2 + reach
        )
    ok = np.flatnonzero(near)
    if ok.size == 0:
        return res
    dy, dx, n_edge = _annulus_offsets(r_in, r_out)
    m = int(max(np.abs(dy).max(), np.abs(dx).max()))
    doff = dy * nx + dx
    rin2, rout2 = r_in * r_in, r_out * r_out
    flat_img = image.reshape(-1)
    flat_msk = None if mask is None else np.asarray(mask).reshape(-1)
    # sort in float32 when the image is float32 (order is the same), sums in float64
    sort_dtype = np.dtype(np.float32 if image.dtype == np.float32 else np.float64)
    if flat_msk is not None:
        mbits = bad_mask_bits | (int(MaskBit.SATURATED) if mask_saturated else 0)
        mbits_arr = np.asarray(mbits & int(np.iinfo(flat_msk.dtype).max), dtype=flat_msk.dtype)

    # Work buffers, allocated once per call and reused by every batch: the per-batch
    # arrays are ~2 MB each, and under dask's Nanny (which sets MALLOC_TRIM_THRESHOLD_ and
    # thereby pins glibc's mmap threshold at 128 kB) allocating them afresh every batch
    # costs a page fault per 4 kB (+60 % run time measured).
    bmax, kk = min(batch_size, ok.size), dy.size
    buf_flat = np.empty((bmax, kk), np.int64)
    buf_vals = np.empty((bmax, kk), sort_dtype)
    buf_mv = None if flat_msk is None else np.empty((bmax, kk), flat_msk.dtype)
    buf_member = np.empty((bmax, kk), bool)
    buf_b = np.empty((bmax, kk), bool)
    buf_srt = np.empty((bmax, kk), np.float64)
    buf_dev = np.empty((bmax, kk), np.float64)
    buf_c1 = np.zeros((bmax, kk + 1))
    buf_c2 = np.zeros((bmax, kk + 1))
    buf_e1 = np.empty((bmax, n_edge))
    buf_e2 = np.empty((bmax, n_edge))
    buf_eb = np.empty((bmax, n_edge), bool)

    for start in range(0, ok.size, batch_size):
        sel = ok[start : start + batch_size]
        nb = len(sel)
        flat, vals, member, bb = buf_flat[:nb], buf_vals[:nb], buf_member[:nb], buf_b[:nb]
        srt, dev, c1, c2 = buf_srt[:nb], buf_dev[:nb], buf_c1[:nb], buf_c2[:nb]
        e1, e2, eb = buf_e1[:nb], buf_e2[:nb], buf_eb[:nb]
        xs, ys = x[sel], y[sel]
        ix, iy = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
        fx, fy = xs - ix, ys - iy
        interior = (ix - m >= 0) & (ix + m < nx) & (iy - m >= 0) & (iy + m < ny)
        np.add((iy * nx + ix)[:, None], doff[None, :], out=flat)
        member.fill(True)
        edge_rows = np.flatnonzero(~interior)
        if edge_rows.size:  # annulus box crosses the image edge: clip and drop outside
            xx = ix[edge_rows, None] + dx[None, :]
            yy = iy[edge_rows, None] + dy[None, :]
            member[edge_rows] = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
            flat[edge_rows] = np.clip(yy, 0, ny - 1) * nx + np.clip(xx, 0, nx - 1)
        if flat_img.dtype == sort_dtype:
            np.take(flat_img, flat, out=vals)
        else:
            vals[...] = np.take(flat_img, flat)
        if flat_msk is not None:
            mv = buf_mv[:nb]
            np.take(flat_msk, flat, out=mv)
            np.bitwise_and(mv, mbits_arr, out=mv)
            np.equal(mv, 0, out=bb)
            member &= bb
        np.isfinite(vals, out=bb)
        member &= bb
        if mask_saturated and saturate_level is not None:
            np.less(vals, saturate_level, out=bb)
            member &= bb
        # per-source centre-membership test, only for the offsets near the two radii
        np.subtract(dx[None, :n_edge], fx[:, None], out=e1)
        np.multiply(e1, e1, out=e1)
        np.subtract(dy[None, :n_edge], fy[:, None], out=e2)
        np.multiply(e2, e2, out=e2)
        np.add(e1, e2, out=e1)
        np.greater_equal(e1, rin2, out=eb)
        member[:, :n_edge] &= eb
        np.less(e1, rout2, out=eb)
        member[:, :n_edge] &= eb
        np.logical_not(member, out=bb)
        np.copyto(vals, np.nan, where=bb)
        vals.sort(axis=1)  # NaN sorted to the end
        np.copyto(srt, vals)
        cnt0 = np.count_nonzero(member, axis=1)
        rows = np.arange(nb)
        has = cnt0 > 0
        piv = np.where(has, srt[rows, np.maximum(cnt0 - 1, 0) // 2], 0.0)
        # prefix sums of (value - pivot) and its square; the NaNs sit after position cnt0
        # and only reach prefix sums beyond it, which no clipped range [lo, hi) uses
        np.subtract(srt, piv[:, None], out=dev)
        np.cumsum(dev, axis=1, out=c1[:, 1:])
        np.multiply(dev, dev, out=dev)
        np.cumsum(dev, axis=1, out=c2[:, 1:])
        lo = np.zeros(nb, dtype=np.int64)
        hi = cnt0.astype(np.int64)

        for _ in range(maxiters):
            med, _mean, std = _range_stats(srt, c1, c2, piv, lo, hi)
            lower = med - std * sigma
            upper = med + std * sigma
            np.less(srt, lower[:, None], out=bb)
            nlo = np.count_nonzero(bb, axis=1)
            np.less_equal(srt, upper[:, None], out=bb)
            nhi = np.count_nonzero(bb, axis=1)
            nlo = np.where(has, np.maximum(lo, nlo), lo)
            nhi = np.where(has, np.minimum(hi, nhi), hi)
            if np.array_equal(nlo, lo) and np.array_equal(nhi, hi):
                break
            lo, hi = nlo, nhi
        med, mean, std = _range_stats(srt, c1, c2, piv, lo, hi)
        res["bkg_mean"][sel] = mean
        res["bkg_median"][sel] = med
        res["bkg_std"][sel] = std
        res["bkg_n"][sel] = hi - lo
    return res


# --------------------------------------------------------------------------------------
# One frame
# --------------------------------------------------------------------------------------


def calibrate_flux(
    flux: np.ndarray, flux_err: np.ndarray, zp: float | np.ndarray, zp_err: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``f_cal = f·ZP``, ``σ_cal = sqrt(σ²σZP² + σ²ZP² + f²σZP²)`` (ZP multiplicative)."""
    f, s = np.asarray(flux, dtype=float), np.asarray(flux_err, dtype=float)
    zp, zpe = np.asarray(zp, dtype=float), np.asarray(zp_err, dtype=float)
    return f * zp, np.sqrt(s * s * zpe * zpe + s * s * zp * zp + f * f * zpe * zpe)


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in OUTPUT_COLUMNS.items()})


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
    """Forced photometry of the catalogue rows ``apertures`` on one (exposure, CCD) image.

    Parameters
    ----------
    image : (ny, nx) array, ADU, sky not subtracted (raw or denoised).
    mask : (ny, nx) unsigned-int array (0 = good, ``MaskBit`` bits) or None.
    apertures : the frame's catalogue rows (``REQUIRED_COLUMNS``; ``expnum``, ``ccd``,
        ``band``, ``I_auto`` passed through when present).
    gain : e⁻/ADU. ``zp``, ``zp_err``: multiplicative zero-point and its error.
    saturate : ADU level from the frame header (``config.saturate_level`` overrides).
    kind : label of the image ("raw" or "denoised"); ``expnum``/``ccd``/``band`` fill
        those columns when the catalogue lacks them.

    Returns
    -------
    DataFrame with ``OUTPUT_COLUMNS``, one row per input row, in input order. Flux and
    errors are in ADU (``flux_cal`` in calibrated units); see the module docstring for the
    formulas. Flagged rows are kept (``flags != 0``).
    """
    config = config or PhotometryConfig()
    _require_columns(apertures, REQUIRED_COLUMNS, "apertures")
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
    n = len(apertures)
    if n == 0:
        return _empty_table()
    sat_level = config.saturate_level if config.saturate_level is not None else saturate
    if sat_level is not None and not np.isfinite(sat_level):
        sat_level = None
    mask_sat = config.saturation == "mask"
    x, y, a, b, theta = _aperture_geometry(apertures, config)

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
    flags = ap["flags"].copy()
    dup = apertures.duplicated(subset=["ref_id"], keep=False).to_numpy()
    flags[dup] |= PhotFlag.BAD_INPUT
    flags[st["bkg_n"] < config.min_annulus_pixels] |= PhotFlag.FEW_ANNULUS

    bkg = st["bkg_mean"] if config.background == "mean" else st["bkg_median"]
    area = ap["area"]
    flux = ap["aper_sum"] - area * bkg
    var_bkg_est = st["bkg_std"] ** 2 / np.maximum(st["bkg_n"], 1)
    if config.background == "median":
        var_bkg_est = var_bkg_est * (np.pi / 2.0)
    with np.errstate(invalid="ignore"):
        var = np.maximum(flux, 0.0) / gain + area * st["bkg_std"] ** 2 + area**2 * var_bkg_est
    var = np.where(st["bkg_n"] > 0, var, np.nan)
    flux_err = np.sqrt(var)
    flux_cal, flux_cal_err = calibrate_flux(flux, flux_err, zp, zp_err)
    flags[~(np.isfinite(flux) & np.isfinite(flux_err))] |= PhotFlag.NONFINITE_RESULT

    def col(name: str, default: Any, dtype: str) -> np.ndarray:
        if name in apertures.columns:
            return apertures[name].to_numpy()
        return np.full(n, default, dtype=dtype)

    out = pd.DataFrame(
        {
            "ref_id": apertures["ref_id"].to_numpy(dtype=np.int64),
            "expnum": col("expnum", -1 if expnum is None else expnum, "int64"),
            "ccd": col("ccd", -1 if ccd is None else ccd, "int64"),
            "band": col("band", "" if band is None else band, "object"),
            "kind": np.full(n, kind, dtype=object),
            "I_auto": col("I_auto", np.nan, "float64"),
            "x": x,
            "y": y,
            "a": a,
            "b": b,
            "theta": theta,
            "aper_sum": ap["aper_sum"],
            "area": area,
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


# --------------------------------------------------------------------------------------
# Store access and the distributed driver
# --------------------------------------------------------------------------------------

_IMAGE_OF_KIND = {"raw": "image", "denoised": "denoised"}


def _frame_id(expnum: int, ccd: int) -> str:
    try:
        from pausdenoise.store import frame_id

        return frame_id(expnum, ccd)
    except ImportError:  # store.py not present
        return f"{int(expnum):08d}_{int(ccd):02d}"


def _open_group(store_path: str | os.PathLike[str]) -> Any:
    try:
        from pausdenoise.store import open_store
    except ImportError:
        import zarr

        return zarr.open_group(str(store_path), mode="r")
    return open_store(store_path, mode="r")


def _frame_attrs(store_path: str | os.PathLike[str], frame: str) -> dict[str, Any]:
    return dict(_open_group(store_path)["frames"][frame].attrs)


def measure_store_frame(
    store_path: str | os.PathLike[str],
    frame: str,
    apertures: pd.DataFrame,
    config: PhotometryConfig,
    kind: str = "raw",
) -> pd.DataFrame:
    """Read one frame's image (``kind``) and mask from the Zarr store and measure it.

    Frame attributes used: ``gain``, ``zp``, ``zp_err``, ``saturate``, ``expnum``, ``ccd``,
    ``band``. This is the body of one Dask task.
    """
    grp = _open_group(store_path)["frames"][frame]
    attrs = dict(grp.attrs)
    name = _IMAGE_OF_KIND[kind]
    if name not in grp:
        raise KeyError(
            f"frame {frame} of store {store_path} has no array {name!r} (needed for kind={kind!r})"
        )
    image = grp[name][...]
    mask = grp["mask"][...] if "mask" in grp else None
    return measure_frame(
        image,
        mask,
        apertures,
        config,
        gain=float(attrs.get("gain", np.nan)),
        zp=float(attrs.get("zp", np.nan)),
        zp_err=float(attrs.get("zp_err", np.nan)),
        saturate=attrs.get("saturate"),
        kind=kind,
        expnum=attrs.get("expnum"),
        ccd=attrs.get("ccd"),
        band=attrs.get("band"),
    )


def _split_frame(frame: str) -> tuple[int, int]:
    e, c = frame.split("_")
    return int(e), int(c)


def photometry_tasks(
    store_path: str | os.PathLike[str],
    frames: Sequence[str],
    catalogue: pd.DataFrame,
    config: PhotometryConfig,
) -> dict[tuple[str, str], Any]:
    """One ``dask.delayed`` task per (frame, kind) returning that frame's table.

    The catalogue rows of each frame are selected here (``expnum``/``ccd`` parsed from the
    frame id ``f"{expnum:08d}_{ccd:02d}"``) and embedded in its task, so a worker reads only
    its own frame's arrays from the store.
    """
    import dask

    _require_columns(catalogue, (*REQUIRED_COLUMNS, "expnum", "ccd"))
    groups = {k: g for k, g in catalogue.groupby(["expnum", "ccd"], sort=False)}
    tasks: dict[tuple[str, str], Any] = {}
    for frame in frames:
        e, c = _split_frame(frame)
        rows = groups.get((e, c), catalogue.iloc[:0]).reset_index(drop=True)
        for kind in config.kinds:
            tasks[(frame, kind)] = dask.delayed(measure_store_frame, pure=True)(
                str(store_path),
                frame,
                rows,
                config,
                kind,
                dask_key_name=f"photometry-{frame}-{kind}",
            )
    return tasks


def photometry_dataframe(
    store_path: str | os.PathLike[str],
    frames: Sequence[str],
    catalogue: pd.DataFrame,
    config: PhotometryConfig,
) -> Any:
    """The photometry of all (frame, kind) as one lazy ``dask.dataframe`` (one partition
    per task), ready for :func:`pausdenoise.compare.make_pairs` on a cluster."""
    import dask.dataframe as dd

    tasks = list(photometry_tasks(store_path, frames, catalogue, config).values())
    return dd.from_delayed(tasks, meta=_empty_table(), verify_meta=False)


def partition_path(out_dir: str | os.PathLike[str], band: str, kind: str, frame: str) -> Path:
    """``<out_dir>/band=<band>/kind=<kind>/<frame>.parquet`` (hive-partitioned by band and
    kind, one file per frame).

    The band may come from the reference catalogue: every name must be a plain name
    (:func:`pausdenoise.paus_layout.is_safe_name`: letters, digits, ``. _ + -``; no
    separator, ``=``, whitespace, ``..``), so that no catalogue value can leave ``out_dir``
    or break the hive partitioning. Anything else raises ``ValueError`` naming it.
    """
    for what, value in (("band", band), ("kind", kind), ("frame", frame)):
        if not is_safe_name(value):
            raise ValueError(
                f"photometry: {what} name {value!r} cannot be used in an output path "
                "(letters, digits, '.', '_', '+', '-' only)"
            )
    return Path(out_dir) / f"band={band}" / f"kind={kind}" / f"{frame}.parquet"


def _metadata_key() -> bytes:
    return b"pausdenoise_photometry"


def _is_complete(path: Path, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    try:
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
    except Exception:
        return False
    raw = meta.get(_metadata_key())
    return raw is not None and json.loads(raw).get("fingerprint") == fingerprint


def write_partition(
    table: pd.DataFrame, path: str | os.PathLike[str], fingerprint: str = ""
) -> Path:
    """Write one (band, kind, frame) table atomically: to a hidden temporary file in the
    same folder, then ``os.replace`` onto ``path``. ``band`` and ``kind`` are dropped from
    the file (they are the hive partition keys); ``fingerprint`` is stored in the Parquet
    metadata so that a rerun knows the file is complete and made with the same config."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tab = pa.Table.from_pandas(
        table.drop(columns=["band", "kind"], errors="ignore"), preserve_index=False
    )
    meta = dict(tab.schema.metadata or {})
    meta[_metadata_key()] = json.dumps({"fingerprint": fingerprint, "rows": len(table)}).encode()
    tab = tab.replace_schema_metadata(meta)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        pq.write_table(tab, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _measure_and_write(
    store_path: str,
    frame: str,
    rows: pd.DataFrame,
    config: PhotometryConfig,
    kind: str,
    path: Path,
) -> str:
    table = measure_store_frame(store_path, frame, rows, config, kind)
    write_partition(table, path, config.fingerprint())
    return str(path)


def run_photometry(
    store_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    frames: Sequence[str],
    catalogue: pd.DataFrame,
    config: PhotometryConfig,
    *,
    overwrite: bool = False,
    compute: bool = True,
) -> list[Path] | list[Any]:
    """Measure every (frame, kind) not yet complete under ``out_dir`` and write its file.

    Uses whatever Dask scheduler is active (a ``distributed.Client`` when one exists). A
    partition counts as complete when its file exists and carries this config's
    fingerprint; those are skipped unless ``overwrite``. Returns the paths written (or, with
    ``compute=False``, the list of delayed tasks).
    """
    import dask

    _require_columns(catalogue, (*REQUIRED_COLUMNS, "expnum", "ccd"))
    fp = config.fingerprint()
    groups = {k: g for k, g in catalogue.groupby(["expnum", "ccd"], sort=False)}
    band_of = {}
    if "band" in catalogue.columns:
        band_of = catalogue.groupby(["expnum", "ccd"], sort=False)["band"].first().to_dict()
    tasks = []
    for frame in frames:
        e, c = _split_frame(frame)
        band = band_of.get((e, c))
        if band is None:
            band = str(_frame_attrs(store_path, frame).get("band", "unknown"))
        rows = groups.get((e, c), catalogue.iloc[:0]).reset_index(drop=True)
        for kind in config.kinds:
            path = partition_path(out_dir, band, kind, frame)
            if not overwrite and _is_complete(path, fp):
                continue
            tasks.append(
                dask.delayed(_measure_and_write, pure=False)(
                    str(store_path),
                    frame,
                    rows,
                    config,
                    kind,
                    path,
                    dask_key_name=f"photometry-write-{frame}-{kind}",
                )
            )
    if not compute:
        return tasks
    return [Path(p) for p in dask.compute(*tasks)] if tasks else []


def photometry_bands(out_dir: str | os.PathLike[str]) -> list[str]:
    """The bands :func:`run_photometry` wrote (its ``band=<name>`` partitions), sorted."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    return sorted(
        p.name.split("=", 1)[1]
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("band=") and any(p.rglob("*.parquet"))
    )


def read_photometry(
    out_dir: str | os.PathLike[str],
    bands: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read what :func:`run_photometry` wrote back into one table (``band`` and ``kind``
    restored as str columns, ``OUTPUT_COLUMNS`` order); only ``bands`` when given (the
    Parquet partitions of other bands are not read) and only ``columns`` (a subset of
    ``OUTPUT_COLUMNS``, always with ``band`` and ``kind``) when given."""
    import pyarrow.dataset as ds

    wanted = dict(OUTPUT_COLUMNS)
    if columns is not None:
        unknown = set(columns) - set(OUTPUT_COLUMNS)
        if unknown:
            raise KeyError(f"not photometry columns: {', '.join(sorted(unknown))}")
        keep = set(columns) | {"band", "kind"}
        wanted = {c: t for c, t in OUTPUT_COLUMNS.items() if c in keep}
    if not Path(out_dir).is_dir() or not any(Path(out_dir).rglob("*.parquet")):
        return _empty_table()[list(wanted)]
    dataset = ds.dataset(str(out_dir), format="parquet", partitioning="hive")
    flt = ds.field("band").isin(list(bands)) if bands is not None else None
    df = dataset.to_table(columns=list(wanted), filter=flt).to_pandas()
    if df.empty:
        return _empty_table()[list(wanted)]
    for c in ("band", "kind"):
        df[c] = df[c].astype(str)
    return df[list(wanted)].astype(wanted).reset_index(drop=True)
