"""FITS → survey store: the PAUS reduced layout and generic (multi-extension) FITS frames.

The stage runs in three steps:

1. **Plan** (:func:`plan_ingest`): find the image files, read only their headers (one dask
   task per file), resolve each frame's ``(expnum, ccd)``, shape and companion files, and
   refuse — per frame, with the file and keyword named — what cannot be ingested: non-FITS or
   unreadable files, missing header keys, a PAUS file whose EXPNUM/CCD disagree with its name,
   missing companions, duplicate ``(expnum, ccd)`` in one batch (every claimant fails, the
   store keeps what it had), and (when ``require_same_shape``) a shape that disagrees with
   the frames already in the store.
2. **Read** (:func:`read_frame`, pure): one frame's pixels and metadata in a
   :class:`FrameData`; checks truncation and image/mask/weight shapes.
3. **Write** (:func:`write_frame_data`): :func:`pausdenoise.store.write_frame` — arrays, then
   attributes, then ``complete=True``.

:func:`ingest` runs steps 2–3 as one dask task per image file on the current scheduler (or
a given :class:`distributed.Client`), and returns an :class:`IngestReport` (ingested /
skipped / failed with reasons, and an exit status). It is idempotent: each frame records a
``source_fingerprint`` (sha256 of every source file it came from, the HDU, and the
configuration fields that change what is stored); a complete frame with the same fingerprint
is skipped, a changed one is re-ingested, a frame whose earlier writing was interrupted
(``complete`` not True) is redone. Hashing every file on every rerun is costly at survey
scale, so a cheap ``source_stat`` (paths, sizes, mtimes in ns) is recorded too: when it is
unchanged the frame is skipped without hashing (``verify_hash=True`` always hashes); when it
changed (files touched, copied or moved) the sha256 fingerprint decides. Chunking and
compression are not part of the fingerprint (use ``force=True`` to rewrite with new ones).

Pixel conventions
-----------------
- Images are stored float32, byte order native. Float32 input (any byte order) is kept
  bit-exact, NaN and Inf included (their payloads too). Other BITPIX are converted after
  FITS scaling (BSCALE/BZERO): integers exactly up to 2**24, float64 rounded to float32;
  the attribute ``source_bitpix`` records the input type.
- Every non-finite image pixel gets :attr:`MaskBit.NONFINITE` in the mask; the pixel value
  itself is not changed (downstream code must honour the mask).
- Masks are stored uint8. ``mask_mode="bits"`` (PAUS default) keeps the bits that are
  :class:`~pausdenoise.maskbits.MaskBit` values and maps any other non-zero bits (wider
  integer masks, unknown bits, negative values) to ``MaskBit.OTHER``; ``mask_mode="other"``
  (generic default, e.g. DECam data-quality masks where 0 = good) maps every non-zero value
  to ``MaskBit.OTHER``. A pixel is therefore masked in the store exactly when it was
  non-zero in the input (or non-finite in the image).
- Weights: ``weight_kind="ivar"`` (stored as is, float32), ``"variance"`` (1/v) or
  ``"sigma"`` (1/σ²); zero or non-finite variance/σ gives ivar 0.

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

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pausdenoise import paus_layout
from pausdenoise import store as st
from pausdenoise.errors import IngestError
from pausdenoise.maskbits import MaskBit

__all__ = [
    "EXIT_FATAL",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "FrameData",
    "FrameSource",
    "HeaderKeys",
    "IngestConfig",
    "IngestError",
    "IngestReport",
    "ZeroPointTable",
    "apply_mask_convention",
    "file_sha256",
    "ingest",
    "plan_ingest",
    "read_frame",
    "write_frame_data",
    "zp_factor_from_mag",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_PARTIAL = 3

# --------------------------------------------------------------------------- configuration


#: Band names become directory names downstream: plain names only.
SAFE_NAME = paus_layout.SAFE_NAME


class HeaderKeys(BaseModel):
    """Header keywords of generic frames (looked up in the image HDU, then the primary HDU).

    A list of keywords means the average of their values (e.g. ``["GAINA", "GAINB"]``); all
    listed keywords must be present. Keywords that are absent use ``IngestConfig.defaults``
    (keyed by the field name), else the frame fails naming the file and keyword.
    """

    model_config = ConfigDict(extra="forbid")

    expnum: str = "EXPNUM"
    ccd: str = "CCDNUM"
    band: str = "FILTER"
    band_token: int | None = Field(0, description="whitespace token of the band value; None = all")
    exptime: str = "EXPTIME"
    gain: str | list[str] = "GAIN"
    rdnoise: str | list[str] = "RDNOISE"
    saturate: str | list[str] | None = "SATURATE"
    zp: str | None = "ZP"
    zp_err: str | None = "ZPERR"
    extra: dict[str, str] = Field(
        default_factory=lambda: {"mjd_obs": "MJD-OBS", "airmass": "AIRMASS"},
        description="attribute name -> keyword, stored when present (null otherwise)",
    )


class ZeroPointTable(BaseModel):
    """A table of zero-points, one row per (exposure, CCD): FITS, Parquet or CSV.

    A frame's row is the one whose ``expnum_column`` equals the frame's exposure number and
    whose ``ccd_column`` equals the value of header keyword ``ccd_header_key`` (compared as
    stripped strings, e.g. ``ccdname`` "N12" against ``EXTNAME``).
    """

    model_config = ConfigDict(extra="forbid")

    path: Path
    expnum_column: str = "expnum"
    ccd_column: str = "ccdname"
    ccd_header_key: str = "EXTNAME"
    zp_column: str = "zpt"
    zp_err_column: str | None = None
    kind: Literal["factor", "mag"] = "mag"
    per_second: bool = True


class IngestConfig(BaseModel):
    """Configuration of the ingest stage.

    Attributes
    ----------
    layout : {"paus", "generic"}
        ``paus``: files named as in :mod:`pausdenoise.paus_layout` (image + ``.msk`` mask +
        optional ``truth/`` image), headers with ``REQUIRED_KEYS``. ``generic``: any FITS
        images, keywords mapped by ``keys``, companions found by name substitution.
    chunks, shards, clevel
        Store chunking (pixels), optional sharding (a multiple of ``chunks``) and
        compression level (0–9); see :mod:`pausdenoise.store`.
    pattern : str, optional
        Glob for image files in an input directory (default: PAUS image names, or
        ``"*.fits"`` for generic; files that are another image's mask/weight companion are
        left out).
    recursive : bool
        Search sub-directories too.
    hdu : int, str or None
        Generic: the image HDU (index or EXTNAME); None = every HDU holding a 2-D image,
        one frame each (multi-extension files).
    mask_substitution, weight_substitution : (str, str), optional
        Generic: companion file name = image name with the first string replaced by the
        second (e.g. ``("_ooi_", "_ood_")`` and ``("_ooi_", "_oow_")`` for DECam). The
        companion uses the same HDU (by EXTNAME when the image HDU has one, else index).
    weight_kind : {"ivar", "variance", "sigma"}
        What the weight file holds; stored as inverse variance ``ivar`` [1/ADU²].
    mask_mode : {"bits", "other"}, optional
        See the module docstring; default ``bits`` for PAUS, ``other`` for generic.
    keys : HeaderKeys
        Generic keyword mapping.
    zp_kind, zp_per_second
        Meaning of the header zero-point of generic frames (factor, or AB magnitude).
    zp_table : ZeroPointTable, optional
        Zero-points from a table instead of the header.
    defaults : dict
        Values for missing generic keywords, keyed by attribute name (``band``,
        ``exptime``, ``gain``, ``rdnoise``, ``saturate``, ``zp``, ``zp_err``). A defaulted
        ``zp`` adds a warning to the report.
    require_same_shape : bool, optional
        Refuse frames whose shape differs from the store's (PAUCam CCDs all share one
        shape); default True for PAUS, False for generic.
    keep_header : bool
        Store the source FITS header as the ``fits_header`` array.
    force : bool
        Re-ingest frames even when complete with an unchanged fingerprint.
    verify_hash : bool
        Hash the source files even when their paths, sizes and mtimes are unchanged.
    progress : bool
        Show a dask progress bar.
    """

    model_config = ConfigDict(extra="forbid")

    layout: Literal["paus", "generic"] = "paus"
    chunks: tuple[int, int] = st.DEFAULT_CHUNKS
    shards: tuple[int, int] | None = None
    clevel: int = Field(st.DEFAULT_CLEVEL, ge=0, le=9)
    pattern: str | None = None
    recursive: bool = False
    hdu: int | str | None = None
    mask_substitution: tuple[str, str] | None = None
    weight_substitution: tuple[str, str] | None = None
    weight_kind: Literal["ivar", "variance", "sigma"] = "ivar"
    mask_mode: Literal["bits", "other"] | None = None
    keys: HeaderKeys = Field(default_factory=HeaderKeys)
    zp_kind: Literal["factor", "mag"] = "factor"
    zp_per_second: bool = False
    zp_table: ZeroPointTable | None = None
    defaults: dict[str, float | int | str | None] = Field(default_factory=dict)
    require_same_shape: bool | None = None
    keep_header: bool = True
    force: bool = False
    verify_hash: bool = False
    progress: bool = False

    @model_validator(mode="after")
    def _check(self) -> IngestConfig:
        if any(c < 1 for c in self.chunks):
            raise ValueError(f"chunks must be positive, got {self.chunks}")
        if self.shards is not None and any(
            s < 1 or s % c for s, c in zip(self.shards, self.chunks, strict=True)
        ):
            raise ValueError(f"shards {self.shards} must be positive multiples of {self.chunks}")
        allowed = {"band", "exptime", "gain", "rdnoise", "saturate", "zp", "zp_err"}
        unknown = set(self.defaults) - allowed
        if unknown:
            raise ValueError(f"defaults for unknown keys {sorted(unknown)}; allowed {allowed}")
        for sub in (self.mask_substitution, self.weight_substitution):
            if sub is not None and not sub[0]:
                raise ValueError("a file name substitution needs a non-empty search string")
        return self

    @property
    def effective_mask_mode(self) -> Literal["bits", "other"]:
        if self.mask_mode is not None:
            return self.mask_mode
        return "bits" if self.layout == "paus" else "other"

    @property
    def effective_require_same_shape(self) -> bool:
        if self.require_same_shape is not None:
            return self.require_same_shape
        return self.layout == "paus"

    @classmethod
    def decam_community_pipeline(
        cls, zp_table: Path | str | None = None, **overrides: Any
    ) -> IngestConfig:
        """Preset for DECam Community Pipeline ``ooi`` images (``ood`` masks, ``oow`` ivar).

        EXPNUM / FILTER (first token) / EXPTIME come from the primary header, CCDNUM, the
        means of GAINA/GAINB and RDNOISEA/RDNOISEB and SATURATE from the CCD extension. The
        headers hold no zero-point: pass legacypipe's ``survey-ccds`` table (``zpt`` for
        1 ADU/s, matched on expnum and ``ccdname`` = EXTNAME); the table has no zero-point
        error, so ``zp_err`` defaults to 0 unless overridden.
        """
        params: dict[str, Any] = {
            "layout": "generic",
            "pattern": "*_ooi_*.fits*",
            "mask_substitution": ("_ooi_", "_ood_"),
            "weight_substitution": ("_ooi_", "_oow_"),
            "weight_kind": "ivar",
            "mask_mode": "other",
            "keys": HeaderKeys(
                expnum="EXPNUM",
                ccd="CCDNUM",
                band="FILTER",
                band_token=0,
                exptime="EXPTIME",
                gain=["GAINA", "GAINB"],
                rdnoise=["RDNOISEA", "RDNOISEB"],
                saturate="SATURATE",
                zp=None,
                zp_err=None,
                extra={"mjd_obs": "MJD-OBS", "airmass": "AIRMASS", "detpos": "DETPOS"},
            ),
            "defaults": {"zp_err": 0.0},
        }
        if zp_table is not None:
            params["zp_table"] = ZeroPointTable(path=Path(zp_table))
        params.update(overrides)
        return cls(**params)

    def content_digest(self) -> str:
        """Hash of the fields that change what is stored (not chunking or compression)."""
        payload = self.model_dump(
            mode="json",
            exclude={
                "chunks",
                "shards",
                "clevel",
                "force",
                "verify_hash",
                "progress",
                "pattern",
                "recursive",
            },
        )
        payload["mask_mode"] = self.effective_mask_mode
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- data types




@dataclass(frozen=True)
class FrameSource:
    """Where one frame comes from (after planning)."""

    image: Path
    hdu: int | str
    expnum: int
    ccd: int
    shape: tuple[int, int]
    mask: Path | None = None
    weight: Path | None = None
    truth: Path | None = None
    companion_hdu: int | str | None = None

    @property
    def frame(self) -> str:
        return st.frame_id(self.expnum, self.ccd)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.image, self.mask, self.weight, self.truth) if p)


@dataclass
class FrameData:
    """One frame read from FITS: pixels (native byte order) and metadata.

    ``image`` float32 [ADU]; ``mask`` uint8 (MaskBit); ``ivar`` float32 [1/ADU²] or None;
    ``truth`` float32 [ADU] or None; ``attrs`` the store attributes (band, exptime [s],
    zp [µJy/ADU], zp_err, gain [e⁻/ADU], rdnoise [e⁻], saturate [ADU], wcs, sources …);
    ``header`` the source header text (80-char cards).
    """

    expnum: int
    ccd: int
    image: np.ndarray
    mask: np.ndarray
    attrs: dict[str, Any]
    ivar: np.ndarray | None = None
    truth: np.ndarray | None = None
    header: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def frame(self) -> str:
        return st.frame_id(self.expnum, self.ccd)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    def arrays(self, keep_header: bool = True) -> dict[str, np.ndarray]:
        out = {"image": self.image, "mask": self.mask}
        if self.ivar is not None:
            out["ivar"] = self.ivar
        if self.truth is not None:
            out["truth"] = self.truth
        if keep_header and self.header:
            out["fits_header"] = np.frombuffer(self.header.encode("ascii"), dtype=np.uint8)
        return out


@dataclass
class IngestReport:
    """Outcome of :func:`ingest`.

    ``ingested`` and ``skipped`` are frame ids, ``failed`` (file, reason) pairs; ``fatal``
    is set when the run could not start (no input, unusable store).
    """

    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fatal: str | None = None

    @property
    def exit_status(self) -> int:
        """0 all in (ingested or skipped), 3 partial, 1 nothing ingested or fatal."""
        if self.fatal is not None:
            return EXIT_FATAL
        if not self.failed:
            return EXIT_OK if (self.ingested or self.skipped) else EXIT_FATAL
        return EXIT_PARTIAL if (self.ingested or self.skipped) else EXIT_FATAL

    def summary(self) -> str:
        lines = [
            f"ingested {len(self.ingested)}, skipped {len(self.skipped)} (complete, unchanged), "
            f"failed {len(self.failed)}; exit status {self.exit_status}"
        ]
        if self.fatal:
            lines.append(f"fatal: {self.fatal}")
        lines += [f"  FAILED {f}: {r}" for f, r in self.failed]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------- FITS helpers

_WCS_KEY = re.compile(
    r"^(WCSAXES|WCSNAME|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|"
    r"PV\d_\d+|PS\d_\d+|LONPOLE|LATPOLE|RADESYS|EQUINOX|EPOCH|MJD-OBS|DATE-OBS|"
    r"A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_DMAX|B_DMAX|A_\d+_\d+|B_\d+_\d+|AP_\d+_\d+|BP_\d+_\d+)$"
)


def wcs_header_text(header: Any) -> str:
    """The WCS cards of a FITS header, verbatim, as header text ('' if it has none)."""
    from astropy.io import fits

    out = fits.Header()
    for card in header.cards:
        if _WCS_KEY.match(card.keyword or ""):
            out.append(card, end=True)
    if "CTYPE1" not in out and "CD1_1" not in out and "CRVAL1" not in out:
        return ""
    return out.tostring()


def file_sha256(path: os.PathLike[str] | str, blocksize: int = 1 << 22) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(blocksize):
            h.update(chunk)
    return h.hexdigest()


_FITS_BLOCK = 2880
#: FITS standard limit on NAXIS; astropy loops over range(NAXIS) before it checks anything,
#: so a header claiming NAXIS = 2**31 would hang the reader for minutes to hours.
_MAX_NAXIS = 999
_MAX_HDUS = 10_000


def _card_value(card: bytes) -> str:
    """Value text of a fixed-format 80-byte card (before any ``/`` comment)."""
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


def _check_fits_structure(path: Path) -> None:
    """Walk the header blocks of every HDU before astropy parses them.

    Checks that each header's ``NAXIS`` is an integer in 0..999 (the FITS standard) and
    each ``NAXISn`` a non-negative integer, skipping data units by the size the header
    declares. Anything else (unparsable cards, truncation, missing ``END``) is left to
    astropy. Compressed files (gzip, bzip2) are read as a stream.

    Raises
    ------
    IngestError
        Naming the file and the keyword.
    """
    import bz2
    import gzip

    with open(path, "rb") as raw:
        magic = raw.read(3)
    opener: Any = open
    if magic[:2] == b"\x1f\x8b":
        opener = gzip.open
    elif magic == b"BZh":
        opener = bz2.open
    try:
        fh = opener(path, "rb")
    except OSError:
        return
    with fh:
        offset = 0
        for _ in range(_MAX_HDUS):
            try:
                fh.seek(offset)
            except (OSError, EOFError):
                return
            cards: dict[str, str] = {}
            ended = False
            while not ended:
                try:
                    block = fh.read(_FITS_BLOCK)
                except (OSError, EOFError):
                    return
                if len(block) < _FITS_BLOCK:
                    return  # truncated or at the end: astropy decides
                offset += _FITS_BLOCK
                for i in range(0, _FITS_BLOCK, 80):
                    card = block[i : i + 80]
                    key = card[:8].decode("ascii", "replace").strip()
                    if key == "END":
                        ended = True
                        break
                    if card[8:10] == b"= " and key not in cards:
                        cards[key] = _card_value(card)
            if "NAXIS" not in cards:
                return
            naxis = _card_int(path, "NAXIS", cards["NAXIS"], 0, _MAX_NAXIS)
            dims = []
            for n in range(1, naxis + 1):
                text = cards.get(f"NAXIS{n}")
                if text is None:
                    return
                dims.append(_card_int(path, f"NAXIS{n}", text, 0, 2**62))
            try:
                bitpix = abs(int(cards.get("BITPIX", "")))
                pcount = int(cards.get("PCOUNT", "0"))
                gcount = int(cards.get("GCOUNT", "1"))
            except ValueError:
                return
            if naxis == 0:
                nbytes = 0
            elif dims[0] == 0 and cards.get("GROUPS") == "T":  # random groups
                nbytes = bitpix // 8 * gcount * (pcount + math.prod(dims[1:]))
            else:
                nbytes = bitpix // 8 * gcount * (pcount + math.prod(dims))
            offset += -(-nbytes // _FITS_BLOCK) * _FITS_BLOCK


def _open_fits(path: Path) -> Any:
    from astropy.io import fits

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
    """Read every HDU header of a lazily opened file; the number of HDUs."""
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
    """An HDU's EXTNAME, stripped ('' when absent)."""
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
    """The keyword of the first card astropy cannot format (None if every card is fine)."""
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


def _read_hdu_data(hdul: Any, index: int, path: Path) -> np.ndarray:
    """The data of HDU ``index``, after checking the file holds all of it."""
    hdu = hdul[index]
    header = hdu.header
    shape = _hdu_shape(header, path)
    try:
        nbytes = abs(int(header["BITPIX"])) // 8 * shape[0] * shape[1]
        info = hdul.fileinfo(index)  # astropy re-verifies (and may refuse) every card here
    except Exception as exc:
        raise IngestError(
            path, f"HDU {index} header cannot be read ({type(exc).__name__}: {exc})",
            key=_bad_card(header),
        ) from None
    size = path.stat().st_size
    if info is not None and info["datLoc"] + nbytes > size:
        raise IngestError(
            path,
            f"truncated FITS file: HDU {index} needs {nbytes} data bytes from offset "
            f"{info['datLoc']}, file has {size} bytes",
        )
    try:
        data = hdu.data
    except Exception as exc:
        raise IngestError(path, f"cannot read HDU {index} data ({exc})") from None
    if data is None or data.shape != shape:
        raise IngestError(path, f"HDU {index} data shape {getattr(data, 'shape', None)} != {shape}")
    return data


def _to_float32(data: np.ndarray) -> np.ndarray:
    """float32, native byte order; float32 input is bit-exact (NaN payloads included)."""
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

    ``bits``: MaskBit bits are kept; any other non-zero content (unknown bits, values wider
    than 8 bits, negative or non-integer values) adds ``MaskBit.OTHER``. ``other``: every
    non-zero value becomes ``MaskBit.OTHER``. Zero stays zero in both modes.
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


def zp_factor_from_mag(m0: float, exptime: float | None = None, per_second: bool = False) -> float:
    """µJy-per-ADU factor of an AB magnitude zero-point ``m0``.

    ``m_AB = m0 - 2.5 log10(flux_ADU)``; with ``per_second`` ``m0`` is for 1 ADU/s and the
    exposure time ``exptime`` [s] is folded in. Returns ``10**((23.9 - m0_total) / 2.5)``.
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
    import pandas as pd

    p = Path(path)
    if p.suffix in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if p.suffix == ".csv":
        return pd.read_csv(p)
    from astropy.table import Table

    t = Table.read(p)
    cols = [c for c in t.colnames if len(t[c].shape) <= 1]
    df = t[cols].to_pandas()
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: v.decode() if isinstance(v, bytes) else v).str.strip()
    return df


# --------------------------------------------------------------------------- metadata


class _Header:
    """Keyword lookup in the image HDU header, falling back to the primary header."""

    def __init__(self, header: Any, primary: Any | None, path: Path):
        self.header, self.primary, self.path = header, primary, path

    def get(self, key: str) -> Any:
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
        """A real-valued keyword (None when absent); a logical (T/F), complex or
        non-numeric value raises :class:`IngestError`."""
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
        """An integer keyword (EXPNUM, CCD): finite and integral, else :class:`IngestError`."""
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


def _paus_metadata(h: _Header, path: Path) -> dict[str, Any]:
    missing = [k for k in paus_layout.REQUIRED_KEYS if h.get(k) is None]
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


def _generic_metadata(
    h: _Header, path: Path, config: IngestConfig, out_warnings: list[str]
) -> dict[str, Any]:
    keys = config.keys
    defaults = config.defaults

    def required_int(attr: str, key: str) -> int:
        v = h.integer(key)
        if v is None:
            raise IngestError(path, f"missing header keyword {key} (for {attr})", key=key)
        return v

    meta: dict[str, Any] = {
        "expnum": required_int("expnum", keys.expnum),
        "ccd": required_int("ccd", keys.ccd),
    }
    band = h.get(keys.band)
    if band is None:
        if "band" not in defaults:
            raise IngestError(path, f"missing header keyword {keys.band} (for band)", key=keys.band)
        band = defaults["band"]
    band = str(band).strip()
    if keys.band_token is not None and band:
        tokens = band.split()
        band = tokens[keys.band_token] if len(tokens) > keys.band_token else band
    meta["band"] = band

    def numeric(attr: str, spec: str | list[str] | None, required: bool = True) -> float | None:
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
            path, f"missing header keyword {key} (for {attr}) and no default", key=key
        )

    meta["exptime"] = numeric("exptime", keys.exptime)
    meta["gain"] = numeric("gain", keys.gain)
    meta["rdnoise"] = numeric("rdnoise", keys.rdnoise)
    meta["saturate"] = numeric("saturate", keys.saturate, required=False)

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
            raise IngestError(path, "no zero-point (header, table) and no default", key=key)
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
            raise IngestError(path, "no zero-point error and no default", key=key)
    meta["zp"], meta["zp_err"], meta["zp_source"] = float(zp), float(zp_err), zp_source
    for name, key in keys.extra.items():
        value = h.get(key)
        if isinstance(value, bool) or value is None or isinstance(value, str):
            meta[name] = value.strip() if isinstance(value, str) else value
        elif isinstance(value, (int, float)):
            meta[name] = float(value) if isinstance(value, float) else value
        else:  # e.g. a complex value: kept as its text, it is not used for anything
            meta[name] = str(value)
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
    """The header keyword(s) an attribute comes from, for messages."""
    if config.layout == "paus":
        return {"expnum": "EXPNUM", "ccd": "CCD", "exptime": "EXPTIME", "gain": "GAIN",
                "rdnoise": "RDNOISE", "zp": "ZP", "zp_err": "ZPERR",
                "saturate": "SATURATE"}[attr]
    spec = getattr(config.keys, attr, None)
    if isinstance(spec, list):
        return "/".join(spec)
    return spec or attr


def _check_values(meta: dict[str, Any], path: Path, config: IngestConfig, out: list[str]) -> None:
    """Refuse values that would break later stages (frame ids, photometry errors, fluxes).

    ``expnum`` must lie in 0..10**8 - 1 and ``ccd`` in 0..99 (the frame id); ``gain`` and
    ``zp`` must be finite and positive, ``exptime``, ``rdnoise`` and ``zp_err`` finite and
    not negative. A non-finite or non-positive ``saturate`` is dropped with a warning (the
    frame is usable, its saturation level unknown).

    Raises
    ------
    IngestError
        Naming the file and the keyword.
    """
    for attr, hi in (("expnum", 10**8), ("ccd", 100)):
        if not 0 <= meta[attr] < hi:
            raise IngestError(path, f"{attr} {meta[attr]} is outside 0..{hi - 1}",
                              key=_key_of(attr, config))
    for attr, (lo, inclusive) in _VALUE_RANGES.items():
        v = meta[attr]
        if not (math.isfinite(v) and (v >= lo if inclusive else v > lo)):
            rule = "finite and >= 0" if inclusive else "finite and > 0"
            raise IngestError(path, f"{attr} = {v!r} must be {rule}", key=_key_of(attr, config))
    sat = meta.get("saturate")
    if sat is not None and not (math.isfinite(sat) and sat > 0):
        out.append(f"{path} [{_key_of('saturate', config)}]: saturate = {sat!r} ignored "
                   "(not finite and positive)")
        meta["saturate"] = None


def _metadata(
    header: Any, primary: Any | None, path: Path, config: IngestConfig, out: list[str]
) -> dict[str, Any]:
    h = _Header(header, primary, path)
    if config.layout == "paus":
        meta = _paus_metadata(h, path)
    else:
        meta = _generic_metadata(h, path, config, out)
    _check_values(meta, path, config, out)
    if not paus_layout.is_safe_name(meta["band"]):
        # the band names output directories (photometry partitions, stacks): refuse
        # anything that could escape them or is not a plain name
        key = "FILTER" if config.layout == "paus" else config.keys.band
        raise IngestError(path, f"band name {meta['band']!r} is not a plain name "
                          "(letters, digits, '.', '_', '+', '-')", key=key)
    return meta


# --------------------------------------------------------------------------- planning


def _substitute(path: Path, sub: tuple[str, str] | None) -> Path | None:
    if sub is None:
        return None
    if sub[0] not in path.name:
        return None
    return path.with_name(path.name.replace(sub[0], sub[1], 1))


def find_images(
    inputs: os.PathLike[str] | str | Sequence[os.PathLike[str] | str], config: IngestConfig
) -> list[Path]:
    """Image files to ingest: explicit files as given, directories scanned with the pattern.

    PAUS: files whose names :func:`paus_layout.parse_image_name` accepts. Generic: the
    ``pattern`` glob, minus files that are another selected image's mask/weight companion.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            if config.layout == "paus":
                glob = config.pattern or "paucam.*.img.fits"
                cand = p.rglob(glob) if config.recursive else p.glob(glob)
                found += [
                    c
                    for c in cand
                    if paus_layout.parse_image_name(c.name)
                    and c.parent.name != paus_layout.TRUTH_DIR
                ]
            else:
                glob = config.pattern or "*.fits"
                found += list(p.rglob(glob) if config.recursive else p.glob(glob))
        else:
            found.append(p)
    found = sorted(set(found))
    if config.layout == "generic":
        companions = set()
        for f in found:
            for sub in (config.mask_substitution, config.weight_substitution):
                c = _substitute(f, sub)
                if c is not None and c != f:
                    companions.add(c)
        found = [f for f in found if f not in companions]
    return found


def _plan_file(path: Path, config: IngestConfig) -> list[FrameSource]:
    """Header-only planning of one image file (one dask task). Raises IngestError."""
    hdul = _open_fits(path)
    try:
        if config.layout == "paus":
            parsed = paus_layout.parse_image_name(path.name)
            header = hdul[0].header
            scratch: list[str] = []
            meta = _metadata(header, None, path, config, scratch)
            if parsed is not None and (meta["expnum"], meta["ccd"]) != parsed:
                key = "EXPNUM" if meta["expnum"] != parsed[0] else "CCD"
                raise IngestError(
                    path,
                    f"header EXPNUM/CCD = {meta['expnum']}/{meta['ccd']} disagree with the "
                    f"file name ({parsed[0]}/{parsed[1]})",
                    key=key,
                )
            shape = _hdu_shape(header, path)
            root = path.parent
            mask = paus_layout.mask_path(root, meta["expnum"], meta["ccd"])
            if not mask.is_file():
                raise IngestError(path, f"mask file {mask.name} not found", key="mask")
            truth = paus_layout.truth_path(root, meta["expnum"], meta["ccd"])
            return [
                FrameSource(
                    image=path,
                    hdu=0,
                    expnum=meta["expnum"],
                    ccd=meta["ccd"],
                    shape=shape,
                    mask=mask,
                    truth=truth if truth.is_file() else None,
                    companion_hdu=0,
                )
            ]
        # generic
        if config.hdu is None:
            indices = _image_hdu_indices(hdul, path)
            if not indices:
                raise IngestError(path, "no 2-D image HDU in file", key="NAXIS")
        else:
            indices = [_resolve_hdu(hdul, config.hdu, path)]
        primary = hdul[0].header
        mask = _substitute(path, config.mask_substitution)
        weight = _substitute(path, config.weight_substitution)
        for companion, what in ((mask, "mask"), (weight, "weight")):
            if companion is not None and not companion.is_file():
                raise IngestError(path, f"{what} companion {companion.name} not found", key=what)
        sources = []
        for i in indices:
            header = hdul[i].header
            scratch = []
            meta = _metadata(header, primary if i else None, path, config, scratch)
            name = _hdu_name(hdul[i], path)
            sources.append(
                FrameSource(
                    image=path,
                    hdu=i,
                    expnum=meta["expnum"],
                    ccd=meta["ccd"],
                    shape=_hdu_shape(header, path),
                    mask=mask,
                    weight=weight,
                    companion_hdu=name if name and name != "PRIMARY" else i,
                )
            )
        return sources
    finally:
        hdul.close()


def _plan_task(
    path: Path, config: IngestConfig
) -> tuple[list[FrameSource], tuple[str, str] | None]:
    try:
        return _plan_file(path, config), None
    except IngestError as exc:
        return [], (exc.file, str(exc))
    except Exception as exc:  # a reader bug must not sink the batch
        return [], (str(path), f"{type(exc).__name__}: {exc}")


def plan_ingest(
    images: Sequence[Path],
    store: os.PathLike[str] | str,
    config: IngestConfig,
    client: Any = None,
) -> tuple[list[FrameSource], list[tuple[str, str]]]:
    """Resolve frames from headers and refuse the ones that cannot go in.

    Returns
    -------
    (sources, failed)
        Frames to ingest, and ``(file, reason)`` for everything refused.
    """
    import dask

    tasks = [dask.delayed(_plan_task, pure=False)(p, config) for p in images]
    results = _compute(tasks, client, progress=False)
    sources: list[FrameSource] = []
    failed: list[tuple[str, str]] = []
    for frames, err in results:
        sources += frames
        if err is not None:
            failed.append(err)

    # duplicate (expnum, ccd): every claimant fails; the store keeps what it had
    by_frame: dict[str, list[FrameSource]] = {}
    for s in sources:
        by_frame.setdefault(s.frame, []).append(s)
    kept: list[FrameSource] = []
    for claimants in by_frame.values():
        if len(claimants) == 1:
            kept.append(claimants[0])
            continue
        where = ", ".join(f"{c.image.name}[{c.hdu}]" for c in claimants)
        for c in claimants:
            failed.append(
                (
                    str(c.image),
                    f"{c.image}: duplicate (expnum, ccd) = ({c.expnum}, {c.ccd}) [EXPNUM/CCD] "
                    f"claimed by {where}; none ingested",
                )
            )
    sources = kept

    if config.effective_require_same_shape and sources:
        existing = _existing_table(store)
        batch = {s.frame for s in sources}
        ref_shapes = Counter(
            (int(r.ny), int(r.nx)) for r in existing.itertuples(index=False) if r.frame not in batch
        )
        if not ref_shapes:
            ref_shapes = Counter(s.shape for s in sorted(sources, key=lambda s: s.frame))
        ref = ref_shapes.most_common(1)[0][0]
        ok = []
        for s in sources:
            if s.shape != ref:
                failed.append(
                    (
                        str(s.image),
                        f"{s.image}: image shape {s.shape} [NAXIS2, NAXIS1] disagrees with the "
                        f"frames in the store {ref}",
                    )
                )
            else:
                ok.append(s)
        sources = ok
    return sorted(sources, key=lambda s: s.frame), failed


def _existing_table(store: os.PathLike[str] | str) -> Any:
    import pandas as pd

    try:
        return st.exposure_table(store, complete_only=True)
    except (FileNotFoundError, st.StoreError):
        return pd.DataFrame(columns=["frame", "ny", "nx", "source_fingerprint"])


# --------------------------------------------------------------------------- reading


def read_frame(source: FrameSource, config: IngestConfig) -> FrameData:
    """Read one frame's image, mask, weight and truth (pure; no store access).

    Raises
    ------
    IngestError
        Unreadable / truncated file, missing keyword, shape mismatch between the image and
        its companions.
    """
    out_warnings: list[str] = []
    hdul = _open_fits(source.image)
    try:
        index = _resolve_hdu(hdul, source.hdu, source.image)
        header = hdul[index].header
        primary = hdul[0].header if index else None
        meta = _metadata(header, primary, source.image, config, out_warnings)
        if (meta["expnum"], meta["ccd"]) != (source.expnum, source.ccd):
            raise IngestError(source.image, "EXPNUM/CCD changed since planning", key="EXPNUM")
        raw = _read_hdu_data(hdul, index, source.image)
        bitpix = int(header["BITPIX"])
        image = _to_float32(raw)
        del raw
        try:
            header_text = header.tostring()
            if primary is not None:
                header_text = primary.tostring() + header_text
            wcs = wcs_header_text(header)
        except Exception as exc:  # a card astropy cannot write back (e.g. control bytes)
            raise IngestError(
                source.image, f"header cannot be stored ({type(exc).__name__}: {exc})",
                key=_bad_card(header) or (_bad_card(primary) if primary is not None else None),
            ) from None
    finally:
        hdul.close()
    shape = image.shape

    def companion(path: Path | None, what: str) -> np.ndarray | None:
        if path is None:
            return None
        with _open_fits(path) as chdul:
            hdu = source.companion_hdu if source.companion_hdu is not None else source.hdu
            try:
                idx = _resolve_hdu(chdul, hdu, path)
            except IngestError:
                if isinstance(hdu, str):  # fall back to the image's index
                    idx = _resolve_hdu(
                        chdul, source.hdu if isinstance(source.hdu, int) else 0, path
                    )
                else:
                    raise
            data = _read_hdu_data(chdul, idx, path)
            if data.shape != shape:
                raise IngestError(
                    path,
                    f"{what} shape {data.shape} does not match image shape {shape} "
                    f"({source.image.name})",
                    key="NAXIS",
                )
            return np.array(data)

    mask_in = companion(source.mask, "mask")
    if mask_in is None:
        mask = np.zeros(shape, dtype=np.uint8)
    else:
        mask = apply_mask_convention(mask_in, config.effective_mask_mode)
    nonfinite = ~np.isfinite(image)
    if nonfinite.any():
        mask[nonfinite] |= np.uint8(MaskBit.NONFINITE)
    weight_in = companion(source.weight, "weight")
    ivar = None if weight_in is None else _ivar_from(weight_in, config.weight_kind)
    truth_in = companion(source.truth, "truth")
    truth = None if truth_in is None else _to_float32(truth_in)

    attrs: dict[str, Any] = dict(meta)
    attrs.update(
        wcs=wcs,
        source_image=str(source.image),
        source_hdu=source.hdu,
        source_mask=str(source.mask) if source.mask else None,
        source_weight=str(source.weight) if source.weight else None,
        source_truth=str(source.truth) if source.truth else None,
        source_bitpix=bitpix,
        n_nonfinite=int(nonfinite.sum()),
        layout=config.layout,
    )
    return FrameData(
        expnum=source.expnum,
        ccd=source.ccd,
        image=image,
        mask=mask,
        attrs=attrs,
        ivar=ivar,
        truth=truth,
        header=header_text,
        warnings=out_warnings,
    )


def _roles(source: FrameSource, config: IngestConfig) -> list[tuple[str, Path | None]]:
    roles: list[tuple[str, Path | None]] = [
        ("image", source.image),
        ("mask", source.mask),
        ("weight", source.weight),
        ("truth", source.truth),
    ]
    if config.zp_table is not None:
        roles.append(("zp_table", Path(config.zp_table.path)))
    return roles


def source_fingerprint(
    source: FrameSource, config: IngestConfig, hashes: dict[Path, str] | None = None
) -> str:
    """sha256 over the source files' sizes and contents, the HDU and the config digest.

    File paths are not part of it: the same bytes moved elsewhere are "unchanged".
    ``hashes`` caches per-file hashes between the frames of one multi-extension file.
    """
    hashes = {} if hashes is None else hashes
    parts = [config.content_digest(), f"hdu={source.hdu}"]
    for role, p in _roles(source, config):
        if p is None or not p.is_file():
            parts.append(f"{role}=-")
            continue
        if p not in hashes:
            hashes[p] = f"{p.stat().st_size}:{file_sha256(p)}"
        parts.append(f"{role}={hashes[p]}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def source_stat(source: FrameSource, config: IngestConfig) -> str:
    """Cheap signature (paths, sizes, mtimes in ns, HDU, config digest) of a frame's sources.

    When it equals the one recorded with a complete frame, ingest skips the frame without
    hashing the files (``verify_hash=True`` always hashes).
    """
    parts = [config.content_digest(), f"hdu={source.hdu}"]
    for role, p in _roles(source, config):
        if p is None or not p.is_file():
            parts.append(f"{role}=-")
            continue
        info = p.stat()
        parts.append(f"{role}={p.resolve()}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def write_frame_data(
    store: os.PathLike[str] | str,
    data: FrameData,
    config: IngestConfig,
    fingerprint: str,
    stat: str | None = None,
) -> str:
    """Write a :class:`FrameData` into the store (arrays, attributes, ``complete`` last)."""
    attrs = dict(data.attrs)
    attrs["source_fingerprint"] = fingerprint
    attrs["source_stat"] = stat
    st.write_frame(
        store,
        data.frame,
        data.arrays(keep_header=config.keep_header),
        attrs,
        chunks=config.chunks,
        shards=config.shards,
        clevel=config.clevel,
    )
    return data.frame


@dataclass
class _Result:
    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _ingest_file_task(
    sources: list[FrameSource],
    store: str,
    config: IngestConfig,
    existing: dict[str, tuple[str, str]],
) -> _Result:
    """One dask task: every frame of one image file. Never raises.

    ``existing`` maps frame id → (fingerprint, stat) of complete frames in the store.
    """
    result = _Result()
    hashes: dict[Path, str] = {}
    for source in sources:
        try:
            old_fp, old_stat = existing.get(source.frame, ("", ""))
            stat = source_stat(source, config)
            if not config.force and not config.verify_hash and old_fp and old_stat == stat:
                result.skipped.append(source.frame)
                continue
            fp = source_fingerprint(source, config, hashes)
            if not config.force and old_fp == fp:
                result.skipped.append(source.frame)
                continue
            data = read_frame(source, config)
            write_frame_data(store, data, config, fp, stat)
            result.ingested.append(source.frame)
            result.warnings += data.warnings
        except IngestError as exc:
            result.failed.append((exc.file, str(exc)))
        except Exception as exc:
            log.exception("ingest of %s failed", source.image)
            result.failed.append(
                (str(source.image), f"{source.image}: {type(exc).__name__}: {exc}")
            )
    return result


def _compute(tasks: list[Any], client: Any, progress: bool) -> list[Any]:
    import dask

    if not tasks:
        return []
    if client is not None:
        futures = client.compute(tasks)
        if progress:
            from distributed import progress as dprogress

            dprogress(futures)
        return client.gather(futures)
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return list(dask.compute(*tasks))
    return list(dask.compute(*tasks))


def ingest(
    inputs: os.PathLike[str] | str | Sequence[os.PathLike[str] | str],
    store: os.PathLike[str] | str,
    config: IngestConfig | None = None,
    client: Any = None,
) -> IngestReport:
    """Ingest FITS frames into the survey store, in parallel, idempotently.

    Parameters
    ----------
    inputs : path or sequence of paths
        Directories (scanned, see :func:`find_images`) and/or image files.
    store : path
        The survey store (created when missing).
    config : IngestConfig, optional
        Defaults to the PAUS layout.
    client : distributed.Client, optional
        Run the tasks on this client; by default on dask's current scheduler (a default
        distributed client if one is active, else the threaded scheduler).

    Returns
    -------
    IngestReport
        Never raises for bad input files; fatal problems (no input, unusable store) are
        reported in ``fatal`` with exit status 1.
    """
    config = config or IngestConfig()
    report = IngestReport()
    try:
        st.open_store(store, "a")
    except Exception as exc:
        report.fatal = f"cannot open or create the store {store}: {exc}"
        return report
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for p in items:
        if not Path(p).exists():
            report.failed.append((str(p), f"{p}: input not found"))
    images = find_images([p for p in items if Path(p).exists()], config)
    if not images:
        report.fatal = f"no image files found in {inputs}"
        return report
    sources, failed = plan_ingest(images, store, config, client)
    report.failed += failed

    existing = {
        r.frame: (r.source_fingerprint, getattr(r, "source_stat", None) or "")
        for r in _existing_table(store).itertuples(index=False)
        if isinstance(r.source_fingerprint, str)
    }
    by_file: dict[Path, list[FrameSource]] = {}
    for s in sources:
        by_file.setdefault(s.image, []).append(s)
    import dask

    tasks = [
        dask.delayed(_ingest_file_task, pure=False)(
            frames,
            str(store),
            config,
            {s.frame: existing[s.frame] for s in frames if s.frame in existing},
        )
        for frames in by_file.values()
    ]
    for r in _compute(tasks, client, config.progress):
        report.ingested += r.ingested
        report.skipped += r.skipped
        report.failed += r.failed
        report.warnings += r.warnings
    report.ingested.sort()
    report.skipped.sort()
    log.info("%s", report.summary())
    return report
