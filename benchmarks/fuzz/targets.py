"""Fuzz targets for the FITS header reader (ingest) and the reference-catalogue reader.

Each target is a *one-input function*: it turns a byte string into an input file, runs the
project's reader on it and returns normally when the reader either accepts the input (and
the result is consistent) or refuses it with one of the project's intended, clear errors:

- FITS: :class:`pausdenoise.ingest.IngestError` whose message names the file;
- catalogue: :class:`pausdenoise.photometry.CatalogueError` whose message names the file.

Anything else (another exception type, an intended error that does not name the file, an
accepted result that breaks an invariant) propagates, which is what a fuzzer counts as a
crash. The byte string is decoded by :class:`Bytes`, a small deterministic reader, so the
targets behave the same under atheris/libFuzzer (``benchmarks/fuzz/fuzz.py``), under
hypothesis, and in the fast smoke test (``tests/test_fuzz_harnesses.py``) where atheris is
not installed.

The first byte chooses between a *raw* input (the remaining bytes are the file, so that
mutations of a valid seed reach the low-level parsers) and a *structured* one (header cards
or a Parquet table assembled from pools of awkward values and fuzzed text, so that inputs
reach the keyword and column checks behind the parsers).
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

_WORK = Path(tempfile.mkdtemp(prefix="pausdenoise-fuzz-"))
atexit.register(shutil.rmtree, _WORK, True)


class HarnessSkip(Exception):
    """The harness itself cannot build a file from these bytes (not a finding)."""


class Bytes:
    """Deterministic decoder of a fuzz byte string (reads from the front; zeros when empty).

    Parameters
    ----------
    data : bytes
        The fuzzer's input.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        """Number of bytes not consumed yet."""
        return len(self.data) - self.pos

    def byte(self) -> int:
        """The next byte (0 when the input is exhausted)."""
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def int_in(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]`` from as few bytes as the range needs."""
        span = hi - lo
        if span <= 0:
            return lo
        nbytes = (span.bit_length() + 7) // 8
        value = int.from_bytes(bytes(self.byte() for _ in range(nbytes)), "little")
        return lo + value % (span + 1)

    def bool(self) -> bool:
        """True or False."""
        return bool(self.byte() & 1)

    def pick(self, items: Sequence[T]) -> T:
        """One element of ``items``."""
        return items[self.int_in(0, len(items) - 1)]

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes."""
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        """Every byte not consumed yet."""
        return self.take(self.remaining())

    def text(self, max_len: int) -> str:
        """Printable ASCII text of up to ``max_len`` characters."""
        n = self.int_in(0, max_len)
        return "".join(chr(32 + b % 95) for b in self.take(n))

    def float64(self) -> float:
        """Any float64 bit pattern (NaN payloads, infinities, subnormals included)."""
        raw = self.take(8).ljust(8, b"\0")
        return float(np.frombuffer(raw, dtype="<f8")[0])


# --------------------------------------------------------------------------- FITS headers

#: Keyword values that have broken readers before, as FITS value text.
FITS_VALUE_POOL: tuple[str, ...] = (
    "1000", "1", "0", "-1", "18", "1000.7", "1.0E3", "1D3", "1E999", "-1E999", "1E308",
    "99999999999999999999999", "-99999999999999999999999", "2147483648", "T", "F",
    "(1, 2)", "(1.5, -2.0)", "''", "'   '", "'NB455'", "'NB 455'", "'../../x'", "'..'",
    "'a/b'", "'inf'", "'nan'", "'-inf'", "'1000'", "'1.0e3'", "'0x10'", "'1_000'", "'N4'",
    "'" + "x" * 68 + "'", "0.0", "-0.0", "1E-320", "NAN", "INF",
)
#: Plausible values, so that most keywords can be right while one is wrong.
FITS_SANE = {
    "EXPNUM": "1000", "CCD": "1", "CCDNUM": "1", "FILTER": "'NB455'", "EXPTIME": "100.0",
    "GAIN": "0.65", "GAINA": "0.6", "GAINB": "0.7", "RDNOISE": "9.0", "RDNOISEA": "8.0",
    "RDNOISEB": "10.0", "ZP": "0.01", "ZPERR": "0.0001", "SATURATE": "60000.0",
    "MJD-OBS": "58000.5", "AIRMASS": "1.2", "EXTNAME": "'N4'", "CTYPE1": "'RA---TAN'",
    "CTYPE2": "'DEC--TAN'", "CRVAL1": "150.0", "CRVAL2": "2.0", "CRPIX1": "4.0",
    "CRPIX2": "4.0", "CD1_1": "-7.3E-5", "CD2_2": "7.3E-5",
}
_META_KEYS = tuple(FITS_SANE)
_BITPIX = (8, 16, 32, 64, -32, -64)


def _card(key: str, value: str) -> bytes:
    text = f"{key:<8}= {value}" if len(key) <= 8 else f"HIERARCH {key} = {value}"
    return text.encode("ascii", "replace")[:80].ljust(80, b" ")


def _value(b: Bytes, key: str) -> str | None:
    """The value text of ``key``: absent, sane, from the pool, or fuzzed text."""
    choice = b.int_in(0, 31)
    if choice == 0:
        return None
    if choice <= 27:
        return FITS_SANE.get(key, "1")
    if choice <= 30:
        return b.pick(FITS_VALUE_POOL)
    return b.text(70)


def _fits_hdu(b: Bytes, primary: bool, keys: Sequence[str]) -> tuple[bytes, tuple[int, int]]:
    """One header + data unit; returns its bytes and the (ny, nx) it declares (0, 0 if not)."""
    cards = [_card("SIMPLE", "T") if primary else _card("XTENSION", "'IMAGE   '")]
    sane_struct = b.int_in(0, 5) > 0
    if sane_struct:
        bitpix, naxis = b.pick(_BITPIX), b.pick((2, 2, 2, 2, 0, 1, 3))
        dims = [b.int_in(1, 9) for _ in range(naxis)]
        cards.append(_card("BITPIX", str(bitpix)))
        cards.append(_card("NAXIS", str(naxis)))
        cards += [_card(f"NAXIS{i + 1}", str(d)) for i, d in enumerate(dims)]
    else:
        bitpix, dims = 0, []
        for key in ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2"):
            v = b.pick((*FITS_VALUE_POOL, "2", "-32", "8", "3")) if b.bool() else b.text(20)
            cards.append(_card(key, v))
    if not primary:
        cards += [_card("PCOUNT", "0"), _card("GCOUNT", "1")]
    if b.int_in(0, 7) == 0:  # scaling / blank keywords
        for key in ("BSCALE", "BZERO", "BLANK"):
            if b.bool():
                cards.append(_card(key, b.pick(FITS_VALUE_POOL)))
    for key in keys:
        v = _value(b, key)
        if v is not None:
            cards.append(_card(key, v))
    if b.int_in(0, 7) == 0:  # one free-form card
        cards.append(b.text(80).encode("ascii").ljust(80, b" "))
    cards.append(b"END".ljust(80, b" "))
    header = b"".join(cards)
    header += b" " * (-len(header) % 2880)
    shape = (0, 0)
    nbytes = 0
    if sane_struct and dims:
        nbytes = abs(bitpix) // 8 * math.prod(dims)
        if len(dims) == 2:
            shape = (dims[1], dims[0])
    pixels = b.take(b.int_in(0, 64)) or b"\x00"
    data = (pixels * (nbytes // len(pixels) + 1))[:nbytes]
    cut = b.int_in(0, 15)
    if cut == 0 and data:  # truncated data
        data = data[: b.int_in(0, len(data) - 1)]
    elif cut > 1:
        data += b"\0" * (-len(data) % 2880)
    return header + data, shape


def _fits_file(b: Bytes, generic: bool) -> bytes:
    if b.int_in(0, 4) == 0:  # raw bytes: what a damaged file looks like to the parser
        return b.rest()
    keys = [k for k in _META_KEYS if b.int_in(0, 15)]
    if not generic or b.bool():
        return _fits_hdu(b, True, keys)[0]
    # multi-extension: an empty primary with some keywords, then 1-2 image extensions
    split = b.int_in(0, len(keys))
    out = _fits_hdu(b, True, keys[:split])[0]
    for _ in range(b.int_in(1, 2)):
        out += _fits_hdu(b, False, keys[split:])[0]
    return out


def _ingest_config(b: Bytes, generic: bool) -> Any:
    from pausdenoise.ingest import HeaderKeys, IngestConfig

    if not generic:
        return IngestConfig()
    keys: dict[str, Any] = {}
    if b.bool():
        keys.update(gain=["GAINA", "GAINB"], rdnoise=["RDNOISEA", "RDNOISEB"])
    if b.bool():
        keys["band_token"] = None
    params: dict[str, Any] = {
        "layout": "generic",
        "keys": HeaderKeys(**keys),
        "mask_substitution": ("_img", "_msk"),
        "weight_substitution": ("_img", "_wht"),
        "weight_kind": b.pick(("ivar", "variance", "sigma")),
        "zp_kind": b.pick(("factor", "mag")),
        "zp_per_second": b.bool(),
        "hdu": b.pick((None, None, 0, 1, "N4")),
    }
    if b.bool():
        params["defaults"] = {"zp": b.pick((1.0, 25.0, 0.0)), "zp_err": 0.0,
                              "band": b.pick(("r", "NB455", "a b"))}
    return IngestConfig(**params)


def _companion(path: Path, sources: Sequence[Any], b: Bytes) -> None:
    """A valid companion FITS (mask / weight / truth) whose HDUs match ``sources``."""
    from astropy.io import fits

    n = max(int(s.hdu) if isinstance(s.hdu, int) else 0 for s in sources) + 1
    hdus: list[Any] = [fits.PrimaryHDU()] + [fits.ImageHDU() for _ in range(n - 1)]
    dtype = b.pick((np.uint8, np.int16, np.int32, np.float32, np.float64))
    for s in sources:
        data = np.zeros(s.shape, dtype=dtype)
        fill = b.take(data.nbytes)
        data.reshape(-1).view(np.uint8)[: len(fill)] = np.frombuffer(fill, np.uint8)
        i = int(s.hdu) if isinstance(s.hdu, int) else 0
        name = s.companion_hdu if isinstance(s.companion_hdu, str) else None
        hdus[i] = fits.PrimaryHDU(data) if i == 0 else fits.ImageHDU(data, name=name)
    try:
        fits.HDUList(hdus).writeto(path, overwrite=True)
    except Exception as exc:  # astropy refuses to write it: the harness's problem
        raise HarnessSkip(str(exc)) from None


def check_frame(frame: Any, source: Any) -> None:
    """Invariants of a frame the reader accepted."""
    import json

    from pausdenoise.maskbits import MaskBit
    from pausdenoise.paus_layout import is_safe_name
    from pausdenoise.store import _json_value

    assert frame.image.dtype == np.float32 and frame.image.shape == source.shape
    assert frame.mask.dtype == np.uint8 and frame.mask.shape == source.shape
    nonfinite = ~np.isfinite(frame.image)
    assert np.all(frame.mask[nonfinite] & MaskBit.NONFINITE)
    assert frame.attrs["n_nonfinite"] == int(nonfinite.sum())
    if frame.ivar is not None:
        assert frame.ivar.dtype == np.float32 and frame.ivar.shape == source.shape
    assert isinstance(frame.attrs["expnum"], int) and isinstance(frame.attrs["ccd"], int)
    assert (frame.attrs["expnum"], frame.attrs["ccd"]) == (source.expnum, source.ccd)
    assert is_safe_name(frame.attrs["band"])
    for key in ("exptime", "zp", "zp_err"):
        assert isinstance(frame.attrs[key], float) and math.isfinite(frame.attrs[key]), key
    assert frame.attrs["zp"] > 0
    # gain and read noise: from the header or fitted from the pixels; absent when neither
    # gave them (a header without them and a fit that failed)
    for key in ("gain", "rdnoise"):
        if key in frame.attrs:
            value = frame.attrs[key]
            assert isinstance(value, float) and math.isfinite(value), key
    if "gain" in frame.attrs:
        assert frame.attrs["gain"] > 0
    else:
        assert frame.attrs.get("gain_source") == "none"
    frame.arrays()  # header text must encode
    # store attributes must serialise as the store writes them (NaN/inf become null)
    json.dumps({k: _json_value(v) for k, v in frame.attrs.items()}, allow_nan=False)


def fits_header_one_input(data: bytes) -> None:
    """Plan and read one fuzzed FITS image (PAUS or generic layout, with companions).

    Returns normally when the file is read with consistent results or refused with an
    :class:`~pausdenoise.ingest.IngestError` naming it; raises otherwise.
    """
    from pausdenoise import paus_layout
    from pausdenoise.ingest import IngestError, read_frame
    from pausdenoise.ingest.plan import _plan_file

    b = Bytes(data)
    generic = b.bool()
    try:
        config = _ingest_config(b, generic)
    except ValueError:
        return  # a configuration the project refuses up front (pydantic)
    d = _WORK / "fits"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    if generic:
        path = d / "c4d_img.fits"
        mask, weight = d / "c4d_msk.fits", d / "c4d_wht.fits"
    else:
        path = paus_layout.image_path(d, 1000, 1)
        mask, weight = paus_layout.mask_path(d, 1000, 1), None
    path.write_bytes(_fits_file(b, generic))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mask.write_bytes(b"")  # planning only checks that the companion exists
            if weight is not None:
                weight.write_bytes(b"")
            try:
                sources = _plan_file(path, config)
            except IngestError as exc:
                assert str(path) in str(exc), exc
                return
            assert sources
            _companion(mask, sources, b)
            if weight is not None:
                _companion(weight, sources, b)
            for s in sources:
                try:
                    frame = read_frame(s, config)
                except IngestError as exc:
                    assert str(exc.file) in {str(path), str(mask), str(weight)}, exc
                    assert exc.file in str(exc)
                    continue
                check_frame(frame, s)
        except HarnessSkip:
            return


def fits_seeds() -> Iterator[bytes]:
    """Inputs that decode to valid files (a starting corpus), and valid PAUS and
    multi-extension FITS files as raw bytes."""
    import io

    from astropy.io import fits

    rng = np.random.default_rng(0)
    for _ in range(8):
        yield bytes(rng.integers(0, 256, 600, dtype=np.uint8))
    header = fits.Header()
    for key, text in FITS_SANE.items():
        header[key] = fits.Card.fromstring(_card(key, text).decode()).value
    image = rng.normal(100.0, 5.0, (6, 5)).astype(np.float32)
    image[1, 2] = np.nan
    buf = io.BytesIO()
    fits.PrimaryHDU(image, header=header).writeto(buf)
    yield bytes([0, 0]) + buf.getvalue()  # PAUS layout, raw
    buf = io.BytesIO()
    ext = fits.ImageHDU(np.nan_to_num(image).astype(np.int16), header=header, name="N4")
    fits.HDUList([fits.PrimaryHDU(header=header), ext]).writeto(buf)
    # generic layout; 7 bytes of configuration choices (0: the first of each); raw
    yield bytes([1, 0, 0, 0, 0, 0, 0, 0, 0]) + buf.getvalue()


# --------------------------------------------------------------------------- catalogue

_FLOAT_POOL = (0.0, -0.0, 1.0, 3.5, 31.5, -0.5, 32.0, 1e-300, 1e300, -1e300, 1e154, 5e-324,
               math.inf, -math.inf, math.nan, 2.0**53 + 1, 1e10)
_INT_POOL = (0, 1, 2, 1000, 1001, -1, 2**31, 2**53 + 1, 2**62, -(2**63))


def _column(b: Bytes, name: str, n: int) -> Any:
    """One Arrow column of ``n`` values of a fuzz-chosen type."""
    import pyarrow as pa

    kind = b.int_in(0, 127)  # 0-11: an awkward type, else a plausible column
    if name in ("ref_id", "expnum", "ccd") and kind >= 12:
        base = {"ref_id": 0, "expnum": 1000, "ccd": 1}[name]
        return pa.array([base + b.int_in(0, 3) for _ in range(n)], pa.int64())
    if name.startswith("aperture_") and kind >= 12:
        lo, hi = {"aperture_x": (-2, 34), "aperture_y": (-2, 34), "aperture_a": (0, 8),
                  "aperture_b": (0, 8)}.get(name, (-200, 200))
        return pa.array([b.pick(_FLOAT_POOL) if b.int_in(0, 7) == 0
                         else lo + (hi - lo) * b.byte() / 255 for _ in range(n)], pa.float64())
    if name == "band" and kind >= 12:
        return pa.array([b.pick(("NB455", "NB465", "r")) for _ in range(n)], pa.string())
    if kind == 0:
        return pa.array([b.float64() for _ in range(n)], pa.float64())
    if kind == 1:
        return pa.array([b.pick(_INT_POOL) for _ in range(n)], pa.int64())
    if kind == 2:
        return pa.array([2**64 - 1 - b.byte() if b.bool() else b.byte() for _ in range(n)],
                        pa.uint64())
    if kind == 3:
        return pa.array([None if b.bool() else b.pick(_INT_POOL) for _ in range(n)],
                        pa.int64())
    if kind == 4:
        words = ("1", "2.5", "nan", "inf", "-1e999", "1e999", "abc", "", " 7 ", "1_0", "0x1",
                 "../../x", "NB 455", "NB455", "=", "1000")
        return pa.array([b.pick(words) if b.bool() else b.text(8) for _ in range(n)],
                        pa.string())
    if kind == 5:
        return pa.array([b.bool() for _ in range(n)], pa.bool_())
    if kind == 6:
        return pa.array([b.take(3) for _ in range(n)], pa.binary())
    if kind == 7:
        return pa.array([[b.float64()] * b.int_in(0, 2) for _ in range(n)],
                        pa.list_(pa.float64()))
    if kind == 8:
        return pa.array([b.int_in(0, 2**40) for _ in range(n)], pa.timestamp("s"))
    if kind == 9:
        return pa.array([None] * n, pa.null())
    if kind == 10:
        return pa.array([b.float64() for _ in range(n)], pa.float32())
    if kind == 11:
        return pa.array([b.pick(("NB455", "x/y", "..", None)) for _ in range(n)],
                        pa.string()).dictionary_encode()
    return pa.array([b.pick(_FLOAT_POOL) for _ in range(n)], pa.float64())


def _catalogue_file(b: Bytes, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pausdenoise.paus_layout import CATALOGUE_COLUMNS

    if b.int_in(0, 4) == 0:  # raw bytes (mutations of a valid Parquet seed)
        path.write_bytes(b.rest())
        return
    n = b.int_in(0, 12)
    names = [c for c in CATALOGUE_COLUMNS if b.int_in(0, 15)]
    if b.int_in(0, 7) == 0:
        names.append(b.pick(("junk", *CATALOGUE_COLUMNS)))  # possibly a duplicate name
    table = pa.Table.from_arrays([_column(b, c, n) for c in names], names=names)
    try:
        pq.write_table(table, path)
    except Exception as exc:
        raise HarnessSkip(str(exc)) from None


def catalogue_one_input(data: bytes) -> None:
    """Read, validate and measure one fuzzed reference catalogue (Parquet).

    :func:`~pausdenoise.photometry.read_catalogue`, then
    :func:`~pausdenoise.photometry.validate_catalogue` (without and with a CCD shape), then,
    per frame, :func:`~pausdenoise.photometry.measure_frame` on a 32x32 image with a masked
    and a NaN pixel, and :func:`~pausdenoise.photometry.partition_path` for its band.
    Returns normally when everything is consistent or the file is refused with a
    :class:`~pausdenoise.photometry.CatalogueError` naming it; raises otherwise.
    """
    from pausdenoise.photometry import (
        CatalogueError,
        PhotFlag,
        PhotometryConfig,
        frame_catalogue,
        measure_frame,
        partition_path,
        read_catalogue,
        validate_catalogue,
    )

    b = Bytes(data)
    d = _WORK / "cat"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    path = d / "catalogue.parquet"
    try:
        _catalogue_file(b, path)
    except HarnessSkip:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cat = read_catalogue(path)
        except CatalogueError as exc:
            assert str(path) in str(exc), exc
            return
        check = validate_catalogue(cat)
        assert len(check.row_flags) == len(cat)
        check = validate_catalogue(cat, shape=(32, 32))
        image = np.linspace(0.0, 100.0, 32 * 32, dtype=np.float32).reshape(32, 32)
        image[5, 5] = np.nan
        mask = np.zeros((32, 32), np.uint8)
        mask[10, 10] = 1
        config = PhotometryConfig(aperture_units=b.pick(("arcsec", "pixel")),
                                  subpixels=b.pick((0, 0, 5)))
        for (expnum, ccd), _ in cat.groupby(["expnum", "ccd"], sort=False):
            rows = frame_catalogue(cat, int(expnum), int(ccd))
            out = measure_frame(image, mask, rows, config, gain=1.0, zp=1.0, zp_err=0.0,
                                expnum=int(expnum), ccd=int(ccd), band="NB455")
            assert len(out) == len(rows)
            bad = ~(np.isfinite(out["flux"]) & np.isfinite(out["flux_err"]))
            assert np.all(out["flags"].to_numpy()[bad.to_numpy()] != 0)
            assert np.all((out["flags"].to_numpy() & PhotFlag.BAD_INPUT)
                          [~np.isfinite(rows["aperture_x"].to_numpy())])
        if "band" in cat.columns:
            for band in cat["band"].dropna().unique():
                p = partition_path(d, band, "raw", "00001000_01")
                assert p.resolve().is_relative_to(d.resolve())


def catalogue_seeds() -> Iterator[bytes]:
    """Inputs that decode to valid catalogues, and a valid Parquet file as raw bytes."""
    import io

    import pandas as pd

    rng = np.random.default_rng(1)
    for _ in range(6):
        yield bytes([1]) + bytes(rng.integers(0, 256, 600, dtype=np.uint8))
    df = pd.DataFrame({"ref_id": [1, 2, 3], "ra": 0.0, "dec": 0.0, "I_auto": 20.0,
                       "expnum": 1000, "ccd": 1, "band": "NB455",
                       "aperture_x": [5.0, 16.0, 30.0], "aperture_y": [5.0, 16.0, 2.0],
                       "aperture_a": [1.5, 2.0, 1.0], "aperture_b": [1.0, 2.0, 0.5],
                       "aperture_theta": [10.0, 0.0, -45.0]})
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    yield bytes([0]) + buf.getvalue()


#: name -> (one-input function, seed generator)
TARGETS: dict[str, tuple[Callable[[bytes], None], Callable[[], Iterator[bytes]]]] = {
    "fits": (fits_header_one_input, fits_seeds),
    "catalogue": (catalogue_one_input, catalogue_seeds),
}
