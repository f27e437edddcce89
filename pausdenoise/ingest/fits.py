"""FITS structure checks and safe reads, with failures named by file and keyword.

Every failure is an :class:`IngestError` naming the file and, where one is to blame, the
header keyword. astropy parses headers lazily and raises many exception types on damaged
files; the helpers here check the structure first (:func:`_check_fits_structure`), read
HDUs with their size verified against the file, and convert pixels, masks and weights to
the store's types (see the pixel conventions in :mod:`pausdenoise.ingest.frame`).
"""

from __future__ import annotations

import bz2
import gzip
import math
import re
import warnings
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from pausdenoise.digest import file_sha256
from pausdenoise.errors import IngestError
from pausdenoise.maskbits import MaskBit

# Cards that follow no FITS convention (ESO's "ESO-LOG 03:04:08> ..." log lines and the
# like) make astropy warn once per card whenever a header is parsed, in every worker. The
# pipeline reads none of them and stores the header text verbatim, so the warning says
# nothing a user can act on.
warnings.filterwarnings("ignore", message="The following header keyword is invalid",
                        category=AstropyUserWarning)

__all__ = [
    "IngestError",
    "apply_mask_convention",
    "file_sha256",
    "stream_compression",
    "wcs_header_text",
]

_WCS_KEY = re.compile(
    r"^(WCSAXES|WCSNAME|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|"
    r"PV\d_\d+|PS\d_\d+|LONPOLE|LATPOLE|RADESYS|EQUINOX|EPOCH|MJD-OBS|DATE-OBS|"
    r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_DMAX|B_DMAX|A_\d+_\d+|B_\d+_\d+|AP_\d+_\d+|BP_\d+_\d+)$"
)


def wcs_header_text(header: Any) -> str:
    """Return the WCS cards of a FITS header, verbatim, as header text.

    The cards kept are the WCS keywords of the FITS standard (``CTYPEn``, ``CRPIXn``,
    ``CRVALn``, ``CDi_j``, ``PCi_j``, ``PVi_m`` …, SIP ``A_p_q``/``B_p_q``, ``MJD-OBS``,
    ``DATE-OBS``). ``CRPIXn`` keep the FITS convention (1-based pixels).

    Parameters
    ----------
    header : astropy.io.fits.Header
        The image HDU's header.

    Returns
    -------
    str
        The WCS cards as 80-character header text; ``''`` when the header has none of
        ``CTYPE1``, ``CD1_1`` and ``CRVAL1``.
    """
    out = fits.Header()
    for card in header.cards:
        if _WCS_KEY.match(card.keyword or ""):
            out.append(card, end=True)
    if "CTYPE1" not in out and "CD1_1" not in out and "CRVAL1" not in out:
        return ""
    return out.tostring()


_FITS_BLOCK = 2880
#: FITS standard limit on NAXIS; astropy loops over range(NAXIS) before it checks anything,
#: so a header claiming NAXIS = 2**31 would hang the reader for minutes to hours.
_MAX_NAXIS = 999
_MAX_HDUS = 10_000


def _card_value(card: bytes) -> str:
    """Return the value text of a fixed-format 80-byte card (before any ``/`` comment).

    Returns
    -------
    str
        The stripped value text.
    """
    text = card[10:].decode("ascii", "replace")
    return text.split("/", 1)[0].strip()


def _card_int(path: Path, key: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise IngestError(path, f"{key} = {text!r} is not an integer", key=key) from None
    if not lo <= value <= hi:
        raise IngestError(path, f"{key} = {value} is outside {lo}..{hi}", key=key)
    return value


def stream_compression(path: Path) -> str | None:
    """Return how a file's bytes are compressed as a whole, from its first bytes.

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    {"gzip", "bzip2"} or None
        None for a plain file (a FITS file with tile-compressed HDUs, ``.fits.fz``, is
        plain: its HDUs are compressed, not the file).
    """
    with open(path, "rb") as raw:
        magic = raw.read(3)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"BZh":
        return "bzip2"
    return None


def _open_stream(path: Path) -> Any:
    """Open a FITS file as a byte stream, decompressing gzip and bzip2 on the fly.

    Returns
    -------
    file object or None
        None when the decompressor refuses the file (astropy decides then).
    """
    opener: Any = {"gzip": gzip.open, "bzip2": bz2.open}.get(stream_compression(path), open)
    try:
        return opener(path, "rb")
    except OSError:
        return None


def _read_header_cards(fh: Any) -> tuple[dict[str, str], int] | None:
    """Read one header's 2880-byte blocks from the stream's position up to ``END``.

    Returns
    -------
    (dict, int) or None
        The value text of each keyword (first occurrence) and the bytes read; None when the
        stream ends early or cannot be read (astropy decides then).
    """
    cards: dict[str, str] = {}
    nread = 0
    ended = False
    while not ended:
        try:
            block = fh.read(_FITS_BLOCK)
        except (OSError, EOFError):
            return None
        if len(block) < _FITS_BLOCK:
            return None  # truncated or at the end: astropy decides
        nread += _FITS_BLOCK
        for i in range(0, _FITS_BLOCK, 80):
            card = block[i : i + 80]
            key = card[:8].decode("ascii", "replace").strip()
            if key == "END":
                ended = True
                break
            if card[8:10] == b"= " and key not in cards:
                cards[key] = _card_value(card)
    return cards, nread


def _data_unit_bytes(path: Path, cards: dict[str, str]) -> int | None:
    """Return the size of the data unit a header declares (before padding).

    Returns
    -------
    int or None
        Bytes; None when the header lacks what is needed (astropy decides then).

    Raises
    ------
    IngestError
        ``NAXIS`` not an integer in 0..999 or ``NAXISn`` not a non-negative integer.
    """
    if "NAXIS" not in cards:
        return None
    naxis = _card_int(path, "NAXIS", cards["NAXIS"], 0, _MAX_NAXIS)
    dims = []
    for n in range(1, naxis + 1):
        text = cards.get(f"NAXIS{n}")
        if text is None:
            return None
        dims.append(_card_int(path, f"NAXIS{n}", text, 0, 2**62))
    try:
        bitpix = abs(int(cards.get("BITPIX", "")))
        pcount = int(cards.get("PCOUNT", "0"))
        gcount = int(cards.get("GCOUNT", "1"))
    except ValueError:
        return None
    if naxis == 0:
        return 0
    if dims[0] == 0 and cards.get("GROUPS") == "T":  # random groups
        return bitpix // 8 * gcount * (pcount + math.prod(dims[1:]))
    return bitpix // 8 * gcount * (pcount + math.prod(dims))


def _walk_hdus(fh: Any, path: Path) -> None:
    """Read every header of a stream, skipping data units by their declared size.

    Stops quietly where the headers end or cannot be read (astropy decides then).

    Raises
    ------
    IngestError
        ``NAXIS`` or ``NAXISn`` out of range (see :func:`_data_unit_bytes`).
    """
    offset = 0
    for _ in range(_MAX_HDUS):
        try:
            fh.seek(offset)
        except (OSError, EOFError, zlib.error):
            return
        header = _read_header_cards(fh)
        if header is None:
            return
        cards, nread = header
        offset += nread
        nbytes = _data_unit_bytes(path, cards)
        if nbytes is None:
            return
        offset += -(-nbytes // _FITS_BLOCK) * _FITS_BLOCK


def _check_stream_end(fh: Any, path: Path, compression: str) -> None:
    """Read a gzip or bzip2 stream to its end marker (astropy stops quietly before a cut).

    Raises
    ------
    IngestError
        The stream ends early or is damaged (named a truncated or damaged file).
    """
    try:
        while fh.read(1 << 20):
            pass
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise IngestError(
            path, f"truncated or damaged {compression} file ({type(exc).__name__}: {exc})"
        ) from None


def _check_fits_structure(path: Path) -> None:
    """Walk the header blocks of every HDU before astropy parses them.

    Checks that each header's ``NAXIS`` is an integer in 0..999 (the FITS standard) and
    each ``NAXISn`` a non-negative integer, skipping data units by the size the header
    declares. Anything else (unparsable cards, truncation, missing ``END``) is left to
    astropy. Compressed files (gzip, bzip2) are read as a stream, to its end: a cut or
    damaged stream is refused here, where astropy would stop quietly at the cut.

    Raises
    ------
    IngestError
        Naming the file and the keyword, or the compressed stream that ends early.
    """
    compression = stream_compression(path)
    fh = _open_stream(path)
    if fh is None:
        if compression is not None:
            raise IngestError(path, f"damaged {compression} file (cannot be opened)")
        return
    with fh:
        _walk_hdus(fh, path)
        if compression is not None:
            _check_stream_end(fh, path, compression)


def _open_fits(path: Path) -> Any:
    """Open a FITS file with astropy after the structure check (headers read lazily).

    Returns
    -------
    astropy.io.fits.HDUList
        Opened without memory mapping; the caller closes it.

    Raises
    ------
    IngestError
        File missing, structure refused, or astropy cannot read the primary header.
    """
    if not path.is_file():
        raise IngestError(path, "file not found")
    _check_fits_structure(path)
    try:
        hdul = fits.open(path, memmap=False, lazy_load_hdus=True)
        _ = hdul[0]  # force reading the primary header
    except OSError as exc:
        raise IngestError(path, f"not a readable FITS file ({exc})") from None
    except Exception as exc:
        raise IngestError(path, f"not a readable FITS file ({type(exc).__name__}: {exc})") from None
    return hdul


def _load_hdus(hdul: Any, path: Path) -> int:
    """Read every HDU header of a lazily opened file.

    Returns
    -------
    int
        The number of HDUs.

    Raises
    ------
    IngestError
        An HDU after the first cannot be read.
    """
    try:
        return len(hdul)
    except Exception as exc:  # astropy reads later HDUs lazily, and raises many types
        raise IngestError(
            path, f"not a readable FITS file: an HDU after the first cannot be read "
            f"({type(exc).__name__}: {exc})"
        ) from None


def _image_hdu_indices(hdul: Any, path: Path) -> list[int]:
    _load_hdus(hdul, path)
    out = []
    for i, hdu in enumerate(hdul):
        try:
            is_image = bool(getattr(hdu, "is_image", False))  # parses XTENSION
        except Exception as exc:
            raise IngestError(path, f"HDU {i} header cannot be read ({type(exc).__name__}: "
                              f"{exc})", key=_bad_card(hdu.header) or "XTENSION") from None
        if is_image and _naxis(hdu.header, path) == 2:
            out.append(i)
    return out


def _naxis(header: Any, path: Path) -> Any:
    try:
        return header.get("NAXIS", 0)
    except Exception as exc:
        raise IngestError(path, f"card NAXIS cannot be parsed ({exc})", key="NAXIS") from None


def _resolve_hdu(hdul: Any, hdu: int | str, path: Path) -> int:
    _load_hdus(hdul, path)
    if isinstance(hdu, int):
        if not 0 <= hdu < len(hdul):
            raise IngestError(path, f"no HDU {hdu} (file has {len(hdul)})", key="HDU")
        return hdu
    for i, h in enumerate(hdul):
        if _hdu_name(h, path).upper() == hdu.strip().upper():
            return i
    raise IngestError(path, f"no HDU named {hdu!r}", key="EXTNAME")


def _hdu_name(hdu: Any, path: Path) -> str:
    """Return an HDU's EXTNAME, stripped.

    Returns
    -------
    str
        ``''`` when the HDU has no EXTNAME.

    Raises
    ------
    IngestError
        The EXTNAME card cannot be parsed.
    """
    try:
        return str(hdu.name).strip()
    except Exception as exc:
        raise IngestError(path, f"card EXTNAME cannot be parsed ({exc})", key="EXTNAME") from None


def _hdu_shape(header: Any, path: Path) -> tuple[int, int]:
    naxis = _naxis(header, path)
    if naxis != 2:
        raise IngestError(path, f"not a 2-D image (NAXIS={naxis!r})", key="NAXIS")
    shape = []
    for key in ("NAXIS2", "NAXIS1"):
        try:
            value = header[key]
        except Exception as exc:
            raise IngestError(path, f"card {key} missing or unparsable ({exc})", key=key) from None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise IngestError(path, f"{key} = {value!r} is not a positive integer", key=key)
        shape.append(value)
    return shape[0], shape[1]


def _bad_card(header: Any) -> str | None:
    """Return the keyword of the first card astropy cannot format.

    Returns
    -------
    str or None
        None if every card is fine (or the cards cannot be listed at all).
    """
    try:
        cards = list(header.cards)
    except Exception:
        return None
    for card in cards:
        try:
            str(card)
        except Exception:
            return str(card.keyword) or None
    return None


#: what a damaged or cut gzip/bzip2 stream raises while astropy reads it
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError)


def _declared_data_bytes(hdul: Any, index: int, path: Path, shape: tuple[int, int]) -> int:
    """Return the bytes of HDU ``index``'s data unit as stored in the file (no padding).

    An image HDU stores ``|BITPIX|/8 · NAXIS1 · NAXIS2`` bytes. A tile-compressed HDU
    (``CompImageHDU``, a BINTABLE with ``ZIMAGE = T``) stores its table and heap, whose
    size its raw header declares (``NAXIS1 · NAXIS2 + PCOUNT``), read from the file here
    because astropy shows the decompressed image's header.

    Returns
    -------
    int
        Bytes.
    """
    hdu = hdul[index]
    if not isinstance(hdu, fits.CompImageHDU):
        return abs(int(hdu.header["BITPIX"])) // 8 * shape[0] * shape[1]
    info = hdul.fileinfo(index)
    with open(path, "rb") as raw:
        raw.seek(info["hdrLoc"])
        header = _read_header_cards(raw)
    declared = None if header is None else _data_unit_bytes(path, header[0])
    return int(info["datSpan"]) if declared is None else declared


def _read_hdu_data(hdul: Any, index: int, path: Path) -> np.ndarray:
    """Read the data of HDU ``index``, after checking the file holds all of it.

    The size check needs the file's length; in a gzip or bzip2 file it is not known
    without decompressing the whole stream, so there a stream that ends early is caught
    while reading (named a truncated or damaged compressed file).

    Returns
    -------
    ndarray, shape (NAXIS2, NAXIS1)
        The data as astropy gives it (FITS scaling applied, tile compression undone, byte
        order as in the file).

    Raises
    ------
    IngestError
        Unreadable header, truncated file, or data of another shape than the header's.
    """
    hdu = hdul[index]
    header = hdu.header
    shape = _hdu_shape(header, path)
    compression = stream_compression(path)
    try:
        nbytes = _declared_data_bytes(hdul, index, path, shape)
        info = hdul.fileinfo(index)  # astropy re-verifies (and may refuse) every card here
    except Exception as exc:
        raise IngestError(
            path, f"HDU {index} header cannot be read ({type(exc).__name__}: {exc})",
            key=_bad_card(header),
        ) from None
    size = path.stat().st_size
    if compression is None and info is not None and info["datLoc"] + nbytes > size:
        raise IngestError(
            path,
            f"truncated FITS file: HDU {index} needs {nbytes} data bytes from offset "
            f"{info['datLoc']}, file has {size} bytes",
        )
    try:
        data = hdu.data
    except _STREAM_ERRORS as exc:
        if compression is None:
            raise IngestError(path, f"cannot read HDU {index} data ({exc})") from None
        raise IngestError(path, f"truncated or damaged {compression} file: HDU {index} data "
                          f"cannot be read ({type(exc).__name__}: {exc})") from None
    except Exception as exc:
        raise IngestError(path, f"cannot read HDU {index} data ({exc})") from None
    if data is None or data.shape != shape:
        raise IngestError(path, f"HDU {index} data shape {getattr(data, 'shape', None)} != {shape}")
    return data


def _to_float32(data: np.ndarray) -> np.ndarray:
    """Convert to float32, native byte order; float32 input is bit-exact (NaN payloads too).

    Returns
    -------
    ndarray of float32
        A new array.
    """
    if data.dtype.kind == "f" and data.dtype.itemsize == 4:
        return data.astype(np.float32, copy=True)  # byte swap only: bit-exact
    return np.asarray(data, dtype=np.float64).astype(np.float32)


_KNOWN_BITS = int(
    MaskBit.BAD_COLUMN
    | MaskBit.COSMIC_RAY
    | MaskBit.SATURATED
    | MaskBit.EDGE
    | MaskBit.NONFINITE
    | MaskBit.OTHER
)


def apply_mask_convention(mask: np.ndarray, mode: Literal["bits", "other"]) -> np.ndarray:
    """Convert an input mask to the store's uint8 :class:`MaskBit` convention.

    ``bits``: MaskBit bits are kept, except ``NODATA``, which ingest sets from the weights
    only; any other non-zero content (unknown bits, bit 32, values wider than 8 bits,
    negative or non-integer values) adds ``MaskBit.OTHER``. ``other``: every
    non-zero value becomes ``MaskBit.OTHER``. Zero stays zero in both modes.

    Parameters
    ----------
    mask : ndarray
        The input mask, any shape; integer, boolean or float (NaN counts as non-zero).
    mode : {"bits", "other"}
        How non-zero values are mapped (see above).

    Returns
    -------
    ndarray of uint8
        Same shape as ``mask``, :class:`MaskBit` values.
    """
    m = np.asarray(mask)
    if m.dtype.kind == "f":
        nonzero = ~(m == 0)  # NaN counts as non-zero
        if mode == "other":
            return np.where(nonzero, np.uint8(MaskBit.OTHER), np.uint8(0))
        ints = np.where(np.isfinite(m) & (m == np.round(m)) & (m >= 0), m, -1)
        m = ints.astype(np.int64)
    if m.dtype.kind == "b":
        m = m.astype(np.uint8)
    if mode == "other":
        return np.where(m != 0, np.uint8(MaskBit.OTHER), np.uint8(0))
    if m.dtype == np.uint8:
        kept = m & np.uint8(_KNOWN_BITS)
        other = (m & np.uint8(~_KNOWN_BITS & 0xFF)) != 0
    else:
        wide = m.astype(np.int64)
        negative = wide < 0  # two's complement bits mean nothing: OTHER only
        kept = np.where(negative, 0, wide & _KNOWN_BITS).astype(np.uint8)
        other = negative | ((wide & ~_KNOWN_BITS) != 0)
    return (kept | np.where(other, np.uint8(MaskBit.OTHER), np.uint8(0))).astype(np.uint8)


def _ivar_from(weight: np.ndarray, kind: str) -> np.ndarray:
    if kind == "ivar":
        return _to_float32(weight)
    w = np.asarray(weight, dtype=np.float64)
    var = w if kind == "variance" else w * w
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = np.where(np.isfinite(var) & (var > 0), 1.0 / var, 0.0)
    return ivar.astype(np.float32)
