"""Frame metadata from FITS headers: keyword lookup, zero-points, value checks.

Zero-points
-----------
PAUS headers carry ``ZP``/``ZPERR`` as factors (µJy per ADU, see
:mod:`pausdenoise.paus_layout`). Generic frames may give a factor, or an AB magnitude
zero-point ``m0`` (``zp_kind="mag"``) converted to the factor ``10**((23.9 - m0) / 2.5)``;
with ``zp_per_second=True`` ``m0`` refers to 1 ADU/s and ``2.5 log10(EXPTIME)`` is added
first. A magnitude error ``dm`` becomes ``zp · ln(10)/2.5 · dm``. A zero-point table
(:class:`ZeroPointTable`, e.g. legacypipe's ``survey-ccds`` with its ``zpt`` column, which is
for 1 ADU/s) overrides the header. When no zero-point is found, a value in ``defaults`` is
used and a warning is added to the report; without a default the frame fails.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy.table import Table

from pausdenoise import paus_layout
from pausdenoise.errors import IngestError
from pausdenoise.ingest.config import HeaderKeys, IngestConfig, ZeroPointTable

__all__ = ["IngestError", "zp_factor_from_mag"]


def zp_factor_from_mag(m0: float, exptime: float | None = None, per_second: bool = False) -> float:
    """Return the µJy-per-ADU factor of an AB magnitude zero-point ``m0``.

    ``m_AB = m0 - 2.5 log10(flux_ADU)``; with ``per_second`` ``m0`` is for 1 ADU/s and the
    exposure time ``exptime`` [s] is folded in.

    Parameters
    ----------
    m0 : float
        AB magnitude of 1 ADU (or of 1 ADU/s with ``per_second``).
    exptime : float, optional
        Exposure time in seconds; needed (positive, finite) with ``per_second``.
    per_second : bool, optional
        ``m0`` refers to a count rate of 1 ADU/s. Default False.

    Returns
    -------
    float
        ``10**((23.9 - m0_total) / 2.5)`` in µJy per ADU, where ``m0_total`` is ``m0``
        plus ``2.5 log10(exptime)`` with ``per_second``.

    Raises
    ------
    ValueError
        ``per_second`` without a positive finite ``exptime``, or a magnitude whose factor
        overflows.
    """
    total = float(m0)
    if per_second:
        if exptime is None or not 0 < exptime < math.inf:
            raise ValueError(f"per-second zero-point needs a positive exptime, got {exptime}")
        total += 2.5 * math.log10(exptime)
    try:
        return 10.0 ** ((23.9 - total) / 2.5)
    except OverflowError:
        raise ValueError(f"zero-point magnitude {m0} gives no finite factor") from None


@lru_cache(maxsize=8)
def _load_zp_table(path: str, mtime: float) -> Any:
    p = Path(path)
    if p.suffix in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if p.suffix == ".csv":
        return pd.read_csv(p)
    t = Table.read(p)
    cols = [c for c in t.colnames if len(t[c].shape) <= 1]
    df = t[cols].to_pandas()
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: v.decode() if isinstance(v, bytes) else v).str.strip()
    return df


class _Header:
    """Keyword lookup in the image HDU header, falling back to the primary header."""

    def __init__(self, header: Any, primary: Any | None, path: Path):
        self.header, self.primary, self.path = header, primary, path

    def get(self, key: str) -> Any:
        """Return a keyword's value; blank strings count as absent.

        Returns
        -------
        Any
            The value, or None when absent from both headers.

        Raises
        ------
        IngestError
            The card cannot be parsed.
        """
        for h in (self.header, self.primary):
            if h is not None and key in h:
                try:
                    value = h[key]
                except Exception as exc:  # astropy parses card values lazily
                    raise IngestError(
                        self.path, f"card {key} cannot be parsed ({type(exc).__name__}: {exc})",
                        key=key,
                    ) from None
                if isinstance(value, str) and value.strip() == "":
                    continue
                return value
        return None

    def number(self, key: str) -> float | None:
        """Return a real-valued keyword.

        Returns
        -------
        float or None
            None when absent.

        Raises
        ------
        IngestError
            A logical (T/F), complex or non-numeric value.
        """
        v = self.get(key)
        if v is None:
            return None
        if isinstance(v, (bool, np.bool_)):
            raise IngestError(self.path, f"value {v!r} is a logical, not a number", key=key)
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            raise IngestError(self.path, f"value {v!r} is not a number", key=key) from None
        return f

    def integer(self, key: str) -> int | None:
        """Return an integer keyword (EXPNUM, CCD).

        Returns
        -------
        int or None
            None when absent.

        Raises
        ------
        IngestError
            A value that is not finite and integral.
        """
        v = self.get(key)
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            return int(v)  # exact, whatever its size
        f = self.number(key)
        if f is None:
            return None
        if not math.isfinite(f) or f != math.floor(f):
            raise IngestError(self.path, f"{key} = {v!r} is not an integer", key=key)
        return int(f)


def _mean_of(h: _Header, keys: str | list[str]) -> tuple[float | None, str]:
    names = [keys] if isinstance(keys, str) else list(keys)
    values = [h.number(k) for k in names]
    missing = [k for k, v in zip(names, values, strict=True) if v is None]
    if missing:
        return None, "/".join(missing)
    return float(np.mean(values)), ""


def _paus_metadata(h: _Header, path: Path, config: IngestConfig) -> dict[str, Any]:
    optional = set() if config.noise_model == "header" else {"GAIN", "RDNOISE"}
    missing = [k for k in paus_layout.REQUIRED_KEYS if h.get(k) is None and k not in optional]
    if missing:
        raise IngestError(
            path, f"missing required header keyword(s) {', '.join(missing)}", key=missing[0]
        )
    meta: dict[str, Any] = {
        "expnum": h.integer("EXPNUM"),
        "ccd": h.integer("CCD"),
        "band": str(h.get("FILTER")).strip(),
        "exptime": h.number("EXPTIME"),
        "gain": h.number("GAIN"),
        "rdnoise": h.number("RDNOISE"),
        "zp": h.number("ZP"),
        "zp_err": h.number("ZPERR"),
    }
    for key in paus_layout.OPTIONAL_KEYS:
        name = key.lower().replace("-", "_")
        value = h.get(key)
        if key == "SATURATE":
            meta["saturate"] = h.number(key)
        else:
            meta[name] = value if isinstance(value, str) else h.number(key)
    return meta


def _filename_groups(path: Path, config: IngestConfig) -> dict[str, int]:
    """Return the integer groups ``expnum`` / ``ccd`` of ``filename_pattern`` in a file name.

    Returns
    -------
    dict of str to int
        The groups present in the pattern and matched (empty without a pattern).

    Raises
    ------
    IngestError
        The pattern does not match the name, or a group is not an integer.
    """
    if config.filename_pattern is None:
        return {}
    m = re.search(config.filename_pattern, path.name)
    if m is None:
        raise IngestError(path, f"file name does not match ingest.filename_pattern "
                          f"{config.filename_pattern!r}", key="filename_pattern")
    out = {}
    for group in ("expnum", "ccd"):
        text = m.groupdict().get(group)
        if text is None:
            continue
        try:
            out[group] = int(text)
        except ValueError:
            raise IngestError(path, f"group {group!r} of ingest.filename_pattern matched "
                              f"{text!r}, not an integer", key="filename_pattern") from None
    return out


def _frame_numbers(
    h: _Header, path: Path, config: IngestConfig, position: int | None, problems: list[IngestError]
) -> dict[str, Any]:
    """Find a generic frame's exposure number and CCD (problems collected, not raised).

    ``expnum``: header keyword, file order or file name (``config.expnum_from``). ``ccd``:
    the ``ccd`` group of ``filename_pattern``, else keyword ``keys.ccd``, else
    ``defaults.ccd``.

    Returns
    -------
    dict
        ``expnum`` and ``ccd`` (-1 where not found; then ``problems`` says why).
    """
    keys = config.keys
    out: dict[str, Any] = {"expnum": -1, "ccd": -1}
    named = _collect(problems, lambda: _filename_groups(path, config)) or {}
    if config.expnum_from == "order" and position is not None:
        out["expnum"] = position
    elif config.expnum_from == "filename":
        out["expnum"] = named.get("expnum", -1)
    else:
        value = _collect(problems, lambda: h.integer(keys.expnum))
        if value is None and not any(e.key == keys.expnum for e in problems):
            problems.append(IngestError(
                path, f"missing header keyword {keys.expnum} (for expnum): set ingest.keys."
                "expnum, or ingest.expnum_from to 'order' or 'filename'", key=keys.expnum))
        out["expnum"] = -1 if value is None else value
    if "ccd" in named:
        out["ccd"] = named["ccd"]
        return out
    value = _collect(problems, lambda: h.integer(keys.ccd))
    if value is None and config.defaults.get("ccd") is not None:
        value = int(config.defaults["ccd"])  # type: ignore[arg-type]
    if value is None and not any(e.key == keys.ccd for e in problems):
        problems.append(IngestError(
            path, f"missing header keyword {keys.ccd} (for ccd) and no default: set ingest."
            "keys.ccd, ingest.defaults.ccd, or a 'ccd' group in ingest.filename_pattern",
            key=keys.ccd))
    out["ccd"] = -1 if value is None else value
    return out


def _collect(problems: list[IngestError], func: Any) -> Any:
    """Call ``func``; on an :class:`IngestError` append it to ``problems`` and return None.

    Returns
    -------
    Any
        What ``func`` returns, or None when it raised an ``IngestError``.
    """
    try:
        return func()
    except IngestError as exc:
        problems.append(exc)
        return None


def _raise_problems(path: Path, problems: list[IngestError]) -> None:
    """Raise the collected problems of one file: alone as it is, several in one message.

    Raises
    ------
    IngestError
        The only problem, or one naming the first problem's keyword and listing all.
    """
    if not problems:
        return
    if len(problems) == 1:
        raise problems[0]
    listed = "; ".join(f"[{e.key}] {e.reason}" if e.key else e.reason for e in problems)
    raise IngestError(path, f"{len(problems)} header problems: {listed}", key=problems[0].key)


def _generic_band(h: _Header, path: Path, keys: HeaderKeys, defaults: dict[str, Any]) -> str:
    band = h.get(keys.band)
    if band is None:
        if "band" not in defaults:
            raise IngestError(path, f"missing header keyword {keys.band} (for band) and no "
                              "default: set ingest.keys.band or ingest.defaults.band",
                              key=keys.band)
        band = defaults["band"]
    band = str(band).strip()
    if keys.band_token is not None and band:
        tokens = band.split()
        band = tokens[keys.band_token] if len(tokens) > keys.band_token else band
    return band


def _generic_numeric(
    h: _Header,
    path: Path,
    defaults: dict[str, Any],
    attr: str,
    spec: str | list[str] | None,
    required: bool = True,
) -> float | None:
    if spec is None:
        value, missing = None, ""
    else:
        value, missing = _mean_of(h, spec)
    if value is not None:
        return value
    if attr in defaults:
        d = defaults[attr]
        return None if d is None else float(d)
    if not required:
        return None
    key = missing or str(spec)
    raise IngestError(
        path, f"missing header keyword {key} (for {attr}) and no default: set ingest.keys."
        f"{attr} or ingest.defaults.{attr}", key=key
    )


def _generic_zp(
    h: _Header, path: Path, config: IngestConfig, meta: dict[str, Any], out_warnings: list[str]
) -> tuple[float, float, str]:
    """Find a generic frame's zero-point: table, then header, then ``defaults``.

    Returns
    -------
    (float, float, str)
        Factor [µJy/ADU], its error, and where it came from.

    Raises
    ------
    IngestError
        No zero-point (or no error) and no default, or a magnitude that gives no factor.
    """
    keys = config.keys
    defaults = config.defaults
    zp = zp_err = None
    zp_source = ""
    if config.zp_table is not None:
        zp, zp_err, zp_source = _zp_from_table(h, path, config.zp_table, meta)
    if zp is None and keys.zp is not None and h.get(keys.zp) is not None:
        raw = h.number(keys.zp)
        raw_err = h.number(keys.zp_err) if keys.zp_err else None
        if config.zp_kind == "mag":
            try:
                zp = zp_factor_from_mag(raw, meta["exptime"], config.zp_per_second)  # type: ignore[arg-type]
            except ValueError as exc:
                raise IngestError(path, str(exc), key=keys.zp) from None
            zp_err = None if raw_err is None else zp * math.log(10) / 2.5 * raw_err
        else:
            zp, zp_err = raw, raw_err
        zp_source = f"header {keys.zp}"
    if zp is None:
        if "zp" not in defaults or defaults["zp"] is None:
            key = keys.zp or (config.zp_table.zp_column if config.zp_table else "ZP")
            no_err = defaults.get("zp_err") is None  # told now, not after the zp is given
            raise IngestError(path, "no zero-point (header, table) and no default: set "
                              "ingest.keys.zp, ingest.zp_table or ingest.defaults.zp"
                              + (" (and its error, ingest.defaults.zp_err)" if no_err else ""),
                              key=key)
        zp = float(defaults["zp"])  # type: ignore[arg-type]
        zp_source = "default"
        out_warnings.append(
            f"{path} [{meta['expnum']}/{meta['ccd']}]: no zero-point found, default zp={zp} used"
        )
    if zp_err is None:
        if "zp_err" in defaults and defaults["zp_err"] is not None:
            zp_err = float(defaults["zp_err"])  # type: ignore[arg-type]
        else:
            key = keys.zp_err or "ZPERR"
            raise IngestError(path, "no zero-point error and no default: set ingest.keys."
                              "zp_err, a zp_err_column of ingest.zp_table or "
                              "ingest.defaults.zp_err", key=key)
    return float(zp), float(zp_err), zp_source


def _extra_values(h: _Header, extra: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, key in extra.items():
        value = h.get(key)
        if isinstance(value, bool) or value is None or isinstance(value, str):
            out[name] = value.strip() if isinstance(value, str) else value
        elif isinstance(value, (int, float)):
            out[name] = float(value) if isinstance(value, float) else value
        else:  # e.g. a complex value: kept as its text, it is not used for anything
            out[name] = str(value)
    return out


def _generic_metadata(
    h: _Header, path: Path, config: IngestConfig, out_warnings: list[str], position: int | None
) -> dict[str, Any]:
    """Read a generic frame's attributes, every missing or invalid keyword reported at once.

    Returns
    -------
    dict
        The frame attributes.

    Raises
    ------
    IngestError
        Listing every keyword that is missing (with the option that would supply it) or
        cannot be read.
    """
    keys = config.keys
    defaults = config.defaults
    problems: list[IngestError] = []
    meta = _frame_numbers(h, path, config, position, problems)
    meta["band"] = _collect(problems, lambda: _generic_band(h, path, keys, defaults))
    for attr in ("exptime", "gain", "rdnoise"):  # gain, rdnoise: else fitted (noise_model)
        required = attr == "exptime" or config.noise_model == "header"
        meta[attr] = _collect(problems, lambda a=attr, r=required: _generic_numeric(
            h, path, defaults, a, getattr(keys, a), required=r))
    meta["saturate"] = _collect(problems, lambda: _generic_numeric(
        h, path, defaults, "saturate", keys.saturate, required=False))
    zp = _collect(problems, lambda: _generic_zp(h, path, config, meta, out_warnings))
    meta["zp"], meta["zp_err"], meta["zp_source"] = zp or (None, None, "")
    extra = _collect(problems, lambda: _extra_values(h, keys.extra))
    _raise_problems(path, problems)
    meta.update(extra or {})
    return meta


def _zp_from_table(
    h: _Header, path: Path, table_cfg: ZeroPointTable, meta: dict[str, Any]
) -> tuple[float | None, float | None, str]:
    tpath = Path(table_cfg.path)
    if not tpath.is_file():
        raise IngestError(tpath, "zero-point table not found", key=table_cfg.zp_column)
    df = _load_zp_table(str(tpath), tpath.stat().st_mtime)
    for col in (table_cfg.expnum_column, table_cfg.ccd_column, table_cfg.zp_column):
        if col not in df.columns:
            raise IngestError(tpath, f"zero-point table has no column {col!r}", key=col)
    ccd_value = h.get(table_cfg.ccd_header_key)
    if ccd_value is None:
        raise IngestError(
            path,
            f"missing header keyword {table_cfg.ccd_header_key} (to match the zero-point table)",
            key=table_cfg.ccd_header_key,
        )
    rows = df[
        (df[table_cfg.expnum_column].astype(np.int64) == meta["expnum"])
        & (df[table_cfg.ccd_column].astype(str).str.strip() == str(ccd_value).strip())
    ]
    if rows.empty:
        return None, None, ""
    row = rows.iloc[0]
    value = float(row[table_cfg.zp_column])
    err = None
    if table_cfg.zp_err_column is not None:
        err = float(row[table_cfg.zp_err_column])
    if table_cfg.kind == "mag":
        try:
            zp = zp_factor_from_mag(value, meta["exptime"], table_cfg.per_second)
        except ValueError as exc:
            raise IngestError(path, f"{exc} (zero-point table {tpath.name})",
                              key=table_cfg.zp_column) from None
        err = None if err is None else zp * math.log(10) / 2.5 * err
    else:
        zp = value
    return zp, err, f"table {tpath.name}:{table_cfg.zp_column}"


#: attribute -> (lowest allowed value, whether the lowest value itself is allowed)
_VALUE_RANGES: dict[str, tuple[float, bool]] = {
    "exptime": (0.0, True),
    "gain": (0.0, False),
    "rdnoise": (0.0, True),
    "zp": (0.0, False),
    "zp_err": (0.0, True),
}


def _key_of(attr: str, config: IngestConfig) -> str:
    """Return the header keyword(s) an attribute comes from, for messages.

    Returns
    -------
    str
        The keyword, ``/``-joined keywords, or the attribute name itself.
    """
    if config.layout == "paus":
        return {"expnum": "EXPNUM", "ccd": "CCD", "exptime": "EXPTIME", "gain": "GAIN",
                "rdnoise": "RDNOISE", "zp": "ZP", "zp_err": "ZPERR",
                "saturate": "SATURATE"}[attr]
    if attr == "expnum" and config.expnum_from != "header":
        return "filename_pattern" if config.expnum_from == "filename" else "expnum_from"
    spec = getattr(config.keys, attr, None)
    if isinstance(spec, list):
        return "/".join(spec)
    return spec or attr


def _check_values(meta: dict[str, Any], path: Path, config: IngestConfig, out: list[str]) -> None:
    """Refuse values that would break later stages (frame ids, photometry errors, fluxes).

    ``expnum`` must lie in 0..10**8 - 1 and ``ccd`` in 0..99 (the frame id); ``gain`` and
    ``zp`` must be finite and positive, ``exptime``, ``rdnoise`` and ``zp_err`` finite and
    not negative; ``gain`` and ``rdnoise`` may be absent (None) unless
    ``config.noise_model`` is ``"header"`` (they are then fitted from the pixels). A
    non-finite or non-positive ``saturate`` is dropped with a warning (the frame is usable,
    its saturation level unknown).

    Raises
    ------
    IngestError
        Naming the file and the keyword; every bad value of the frame in one message.
    """
    problems: list[IngestError] = []
    for attr, hi in (("expnum", 10**8), ("ccd", 100)):
        if not 0 <= meta[attr] < hi:
            problems.append(IngestError(path, f"{attr} {meta[attr]} is outside 0..{hi - 1}",
                                        key=_key_of(attr, config)))
    for attr, (lo, inclusive) in _VALUE_RANGES.items():
        v = meta[attr]
        if v is None and attr in ("gain", "rdnoise") and config.noise_model != "header":
            continue
        if not (math.isfinite(v) and (v >= lo if inclusive else v > lo)):
            rule = "finite and >= 0" if inclusive else "finite and > 0"
            problems.append(IngestError(path, f"{attr} = {v!r} must be {rule}",
                                        key=_key_of(attr, config)))
    _raise_problems(path, problems)
    sat = meta.get("saturate")
    if sat is not None and not (math.isfinite(sat) and sat > 0):
        out.append(f"{path} [{_key_of('saturate', config)}]: saturate = {sat!r} ignored "
                   "(not finite and positive)")
        meta["saturate"] = None


def _metadata(
    header: Any,
    primary: Any | None,
    path: Path,
    config: IngestConfig,
    out: list[str],
    position: int | None = None,
) -> dict[str, Any]:
    h = _Header(header, primary, path)
    if config.layout == "paus":
        meta = _paus_metadata(h, path, config)
    else:
        meta = _generic_metadata(h, path, config, out, position)
    _check_values(meta, path, config, out)
    if not paus_layout.is_safe_name(meta["band"]):
        # the band names output directories (photometry partitions, stacks): refuse
        # anything that could escape them or is not a plain name
        key = "FILTER" if config.layout == "paus" else config.keys.band
        raise IngestError(path, f"band name {meta['band']!r} is not a plain name "
                          "(letters, digits, '.', '_', '+', '-')", key=key)
    return meta
