"""Export of a store's denoised (and raw) frames to FITS, for SExtractor, DS9 or any reader.

Kernel (pure: arrays and attributes in, astropy headers and HDUs out)
--------------------------------------------------------------------
- :func:`header_from_text` turns the source header the store keeps (``fits_header``: the
  primary header followed by the image extension's) into one header without the structural
  cards (``SIMPLE``, ``BITPIX``, ``NAXISn``, ``BSCALE`` …), extension cards overriding primary
  ones.
- :func:`frame_header` adds the frame's WCS (the ``wcs`` attribute, FITS convention:
  ``CRPIXn`` 1-based), ``BUNIT = 'adu'``, the store's metadata and ``HISTORY`` cards saying
  what was done (model fingerprint, denoise key, chunks and halo, precision, package version).
- :func:`image_hdu` makes the HDU: float32 data, plain or tile-compressed (``GZIP_2`` without
  quantisation, so every float32 value, NaN and Inf included, comes back bit-exact).

Driver
------
:func:`export_store` reads the store (:mod:`pausdenoise.store` readers) and writes the files,
one image at a time. Layouts: ``"exposure"``, one file ``<expnum:08d>_<kind>.fits`` per exposure
with an empty primary HDU and one image extension per CCD (``EXTNAME = 'CCD07'``);
``"frame"``, one file ``<expnum:08d>_<ccd:02d>_<kind>.fits`` per frame (the image in the
primary HDU; in extension ``CCD07`` when compressed). Compressed files end in ``.fits.fz``.

Every file is written under a temporary name in the destination and renamed over the final
name, so a reader never sees a half-written file. The primary header's ``PDEXPKEY`` is a
digest of what the file holds (format, kind, layout, compression, and per frame its
``source_fingerprint`` and, for denoised images, its ``denoise_key``); a file already there
with the same key is skipped unless ``force``. A frame without a complete ``denoised`` array
is skipped and listed (the export is then partial); its exposure's file holds the other CCDs
and is rewritten once the frame is denoised (its key changes).

Header keywords written (8 characters, pipeline-owned ones prefixed ``PD``): ``BUNIT``,
``PDKIND`` (``denoised`` or ``raw``), ``PDFRAME``, ``PDMODEL`` (sha256 of the N2V checkpoint)
and ``PDDNKEY`` (denoise key) for denoised images, ``PDZP`` / ``PDZPERR`` (µJy per ADU, the
zero-point the pipeline used), ``PDMAGZP`` (AB magnitude of 1 ADU, ``23.9 - 2.5 log10 PDZP``;
SExtractor's ``MAG_ZEROPOINT`` for these images), ``PDVERS`` (package version), ``PDEXPKEY``
(primary HDU); and, only when the source header lacks them, ``EXPNUM``, ``CCDNUM``,
``FILTER``, ``EXPTIME`` [s], ``GAIN`` [e⁻/ADU], ``RDNOISE`` [e⁻] and ``SATURATE`` [ADU].
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from pausdenoise import __version__
from pausdenoise import store as st
from pausdenoise.digest import json_digest

__all__ = [
    "EXPORT_FORMAT",
    "KEY_CARD",
    "KINDS",
    "LAYOUTS",
    "ExportReport",
    "content_key",
    "export_store",
    "file_name",
    "frame_header",
    "header_from_text",
    "history_lines",
    "image_hdu",
    "primary_header",
]

#: version of the file layout below; part of the content key, so a change rewrites files
EXPORT_FORMAT = 1
#: export kind → the store array it reads
KINDS: dict[str, str] = {"denoised": "denoised", "raw": "image"}
LAYOUTS: tuple[str, ...] = ("exposure", "frame")
#: primary-header keyword holding the file's content key
KEY_CARD = "PDEXPKEY"
#: the tile compression: GZIP_2 (byte shuffle) on unquantised float32 is lossless
COMPRESSION = "GZIP_2"

_STRUCTURAL = frozenset({
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "GROUPS",
    "BSCALE", "BZERO", "BLANK", "BUNIT", "CHECKSUM", "DATASUM", "EXTNAME", "EXTVER",
    "EXTLEVEL", "INHERIT", "END", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZCMPTYPE", "ZQUANTIZ",
    "ZDITHER0", "ZSIMPLE", "ZTENSION", "ZEXTEND", "ZBLOCKED", "ZPCOUNT", "ZGCOUNT",
    "ZHECKSUM", "ZDATASUM", "ZTHEAP",
})
_STRUCTURAL_PATTERN = re.compile(r"^(NAXIS\d+|ZNAXIS\d+|ZTILE\d+|ZNAME\d+|ZVAL\d+)$")
_COMMENTARY = frozenset({"HISTORY", "COMMENT", ""})

#: (attribute, keyword, comment) written only when the source header lacks the keyword
_STANDARD_CARDS: tuple[tuple[str, str, str], ...] = (
    ("expnum", "EXPNUM", "exposure number"),
    ("ccd", "CCDNUM", "CCD number"),
    ("band", "FILTER", "band"),
    ("exptime", "EXPTIME", "[s] exposure time"),
    ("gain", "GAIN", "[e-/ADU] gain"),
    ("rdnoise", "RDNOISE", "[e-] read noise"),
    ("saturate", "SATURATE", "[ADU] saturation level"),
)


def _is_structural(keyword: str) -> bool:
    return keyword in _STRUCTURAL or bool(_STRUCTURAL_PATTERN.match(keyword))


def _header_blocks(text: str) -> list[str]:
    """Split concatenated header text into one string of cards per header (END dropped).

    Returns
    -------
    list of str
        The headers in order, each a multiple of 80 characters.
    """
    blocks: list[str] = []
    cards: list[str] = []
    for i in range(0, len(text), 80):
        card = text[i:i + 80]
        if card.rstrip() == "END":
            blocks.append("".join(cards))
            cards = []
        elif cards or card.strip():  # blank padding after END is not a card
            cards.append(card.ljust(80))
    if cards:
        blocks.append("".join(cards))
    return blocks


def header_from_text(text: str) -> fits.Header:
    """Return the stored source header as one header, without structural cards.

    Parameters
    ----------
    text : str
        Header text as the store keeps it (:func:`pausdenoise.store.read_header_text`):
        80-character cards, the primary header then the image extension's, each ended by
        ``END``.

    Returns
    -------
    astropy.io.fits.Header
        The cards of every header in order; a keyword in a later header (the extension)
        replaces the earlier value; ``HISTORY``/``COMMENT`` cards are all kept. Structural
        and compression cards (``SIMPLE``, ``XTENSION``, ``BITPIX``, ``NAXISn``, ``BSCALE``,
        ``BZERO``, ``BLANK``, ``BUNIT``, ``EXTNAME``, ``CHECKSUM``, ``Z…`` tile-compression
        keywords) are dropped: the writer sets them for the exported data.
    """
    out = fits.Header()
    with warnings.catch_warnings():  # non-standard cards of the source: kept as they are
        warnings.simplefilter("ignore", VerifyWarning)
        for block in _header_blocks(text):
            for card in fits.Header.fromstring(block).cards:
                keyword = card.keyword
                if _is_structural(keyword):
                    continue
                if keyword in _COMMENTARY:
                    out.append((keyword, card.value), end=True)
                else:
                    out[keyword] = (card.value, card.comment)
    return out


def _finite(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return value is not None
    if isinstance(value, int | float | np.number):
        return math.isfinite(float(value))
    return isinstance(value, str)


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, int | float) else str(value)


def _set_metadata(header: fits.Header, attrs: Mapping[str, Any], frame: str) -> None:
    """Set the store's metadata cards (see the module docstring)."""
    for attr, keyword, comment in _STANDARD_CARDS:
        value = attrs.get(attr)
        if keyword not in header and _finite(value):
            header[keyword] = (value, comment)
    header["PDFRAME"] = (frame, "pausdenoise frame id (expnum_ccd)")
    zp = attrs.get("zp")
    if _finite(zp) and zp > 0:
        header["PDZP"] = (float(zp), "[uJy/ADU] zero-point factor used by pausdenoise")
        header["PDMAGZP"] = (23.9 - 2.5 * math.log10(zp), "[mag] AB magnitude of 1 ADU")
    if _finite(attrs.get("zp_err")):
        header["PDZPERR"] = (float(attrs["zp_err"]), "[uJy/ADU] zero-point factor error")


def history_lines(
    kind: str,
    frame: str,
    attrs: Mapping[str, Any],
    denoised_attrs: Mapping[str, Any] | None = None,
    chunks: Sequence[int] | None = None,
) -> list[str]:
    """Return the ``HISTORY`` text of an exported image: what it is and how it was made.

    Parameters
    ----------
    kind : {"denoised", "raw"}
        The exported image.
    frame : str
        Frame id (``expnum_ccd``).
    attrs : mapping
        The frame's store attributes (``source_image``, ``source_fingerprint`` …).
    denoised_attrs : mapping, optional
        The ``denoised`` array's attributes (``model_fingerprint``, ``denoise_key``,
        ``halo`` [px], ``precision``, ``masked_output``, ``sky`` and ``sigma`` [ADU]);
        needed for ``kind="denoised"``.
    chunks : sequence of int, optional
        The block shape (ny, nx) [px] the network saw each chunk of (before the halo).

    Returns
    -------
    list of str
        One entry per ``HISTORY`` statement (astropy wraps long ones over several cards).
    """
    lines = [f"pausdenoise {__version__} export of frame {frame}: {kind} image",
             "pixels float32 ADU, sky not subtracted"]
    if attrs.get("source_image"):
        lines.append(f"source image {attrs['source_image']}")
    if attrs.get("source_fingerprint"):
        lines += ["source fingerprint (sha256):", str(attrs["source_fingerprint"])]
    if kind == "denoised" and denoised_attrs is not None:
        d = denoised_attrs
        tiles = "x".join(str(int(c)) for c in chunks) if chunks else "?"
        lines += [
            "denoised by Noise2Void (pausdenoise denoise stage)",
            "model fingerprint (sha256 of the checkpoint):",
            str(d.get("model_fingerprint")),
            f"denoise key {d.get('denoise_key')}",
            f"tiling: map_overlap over {tiles} px chunks, {d.get('halo')} px halo",
            f"precision {d.get('precision')}, masked pixels: {d.get('masked_output')}",
            f"normalisation: sky {_num(d.get('sky'))} ADU, sigma {_num(d.get('sigma'))} ADU",
        ]
    return lines


def frame_header(
    attrs: Mapping[str, Any],
    header_text: str = "",
    *,
    kind: str,
    frame: str,
    denoised_attrs: Mapping[str, Any] | None = None,
    chunks: Sequence[int] | None = None,
) -> fits.Header:
    """Build the header of one exported image.

    Parameters
    ----------
    attrs : mapping
        The frame's store attributes (:func:`pausdenoise.store.frame_attrs`); its ``wcs``
        text (FITS convention, ``CRPIXn`` 1-based) is written over any WCS card of the
        source header.
    header_text : str, optional
        The stored source header (:func:`header_from_text`); ``""`` when the store has none.
    kind : {"denoised", "raw"}
        The exported image.
    frame : str
        Frame id.
    denoised_attrs : mapping, optional
        The ``denoised`` array's attributes (for the ``HISTORY`` cards).
    chunks : sequence of int, optional
        The denoised array's chunk shape (ny, nx) [px].

    Returns
    -------
    astropy.io.fits.Header
        Source cards, WCS, metadata, ``BUNIT = 'adu'``, ``PDKIND``, ``PDVERS`` and
        ``HISTORY``; no structural cards.
    """
    header = header_from_text(header_text) if header_text else fits.Header()
    if attrs.get("wcs"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)
            for card in fits.Header.fromstring(attrs["wcs"]).cards:
                if not _is_structural(card.keyword) and card.keyword not in _COMMENTARY:
                    header[card.keyword] = (card.value, card.comment)
    _set_metadata(header, attrs, frame)
    header["BUNIT"] = ("adu", "ADU, sky not subtracted")
    header["PDKIND"] = (kind, "pausdenoise image: denoised or raw")
    header["PDVERS"] = (__version__, "pausdenoise version")
    if denoised_attrs is not None and kind == "denoised":
        # the checkpoint's sha256 (64 characters: no room left for a comment)
        header["PDMODEL"] = str(denoised_attrs.get("model_fingerprint"))
        header["PDDNKEY"] = (str(denoised_attrs.get("denoise_key")), "pausdenoise denoise key")
    for line in history_lines(kind, frame, attrs, denoised_attrs, chunks):
        header.add_history(line)
    return header


def image_hdu(
    data: np.ndarray,
    header: fits.Header,
    *,
    name: str | None = None,
    primary: bool = False,
    compress: bool = False,
) -> fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU:
    """Make the HDU of one image (float32).

    Parameters
    ----------
    data : ndarray
        The image (ny, nx) [ADU]; converted to float32 (a no-op for store arrays).
    header : astropy.io.fits.Header
        Its header (:func:`frame_header`), copied.
    name : str, optional
        ``EXTNAME`` (e.g. ``"CCD07"``); ignored for a primary HDU.
    primary : bool, optional
        Make a primary HDU (not with ``compress``). Default False.
    compress : bool, optional
        Tile-compress (``GZIP_2``, ``quantize_level=0``: no quantisation, lossless for
        float32). Default False.

    Returns
    -------
    astropy.io.fits.PrimaryHDU, ImageHDU or CompImageHDU
        The HDU.

    Raises
    ------
    ValueError
        For ``primary`` with ``compress`` (a compressed image is always an extension).
    """
    data = np.asarray(data, dtype=np.float32)
    header = header.copy()
    if compress:
        if primary:
            raise ValueError("a compressed image cannot be the primary HDU")
        header.add_history(f"tile-compressed {COMPRESSION} without quantisation: float32 "
                           "values exact")
        return fits.CompImageHDU(data, header, name=name, compression_type=COMPRESSION,
                                 quantize_level=0.0)
    if primary:
        return fits.PrimaryHDU(data, header)
    return fits.ImageHDU(data, header, name=name)


def primary_header(expnum: int, kind: str, key: str, items: Sequence[Mapping[str, Any]]
                   ) -> fits.Header:
    """Build the primary header of a file whose images are in extensions.

    Parameters
    ----------
    expnum : int
        Exposure number.
    kind : {"denoised", "raw"}
        The exported images.
    key : str
        The file's content key (:func:`content_key`).
    items : sequence of mapping
        The frames' store attributes (their ``band`` gives ``FILTER`` when all agree).

    Returns
    -------
    astropy.io.fits.Header
        ``EXPNUM``, ``FILTER`` (one band only), ``NEXTEND``, ``PDKIND``, ``PDVERS``,
        ``PDEXPKEY`` and a ``HISTORY`` card.
    """
    header = fits.Header()
    header["EXPNUM"] = (int(expnum), "exposure number")
    bands = {a.get("band") for a in items}
    if len(bands) == 1 and _finite(next(iter(bands))):
        header["FILTER"] = (next(iter(bands)), "band")
    header["NEXTEND"] = (len(items), "image extensions, one per CCD (EXTNAME CCDnn)")
    header["PDKIND"] = (kind, "pausdenoise image: denoised or raw")
    header["PDVERS"] = (__version__, "pausdenoise version")
    header[KEY_CARD] = (key, "pausdenoise export content key")
    header.add_history(f"pausdenoise {__version__} export: {kind} images, float32 ADU")
    return header


def content_key(kind: str, layout: str, compress: bool,
                frames: Sequence[Mapping[str, Any]]) -> str:
    """Digest what an exported file holds (resume: an equal key means an equal file).

    Parameters
    ----------
    kind : {"denoised", "raw"}
        The exported images.
    layout : {"exposure", "frame"}
        The file layout.
    compress : bool
        Tile compression.
    frames : sequence of mapping
        Per frame in file order: ``frame``, ``source`` (its ``source_fingerprint``) and, for
        denoised images, ``denoise_key``.

    Returns
    -------
    str
        24 hex characters.
    """
    return json_digest({"format": EXPORT_FORMAT, "kind": kind, "layout": layout,
                        "compress": bool(compress), "frames": list(frames)}, 24)


def file_name(kind: str, layout: str, compress: bool, expnum: int, ccd: int | None = None
              ) -> str:
    """Return the name of an exported file.

    Parameters
    ----------
    kind : {"denoised", "raw"}
        The exported images.
    layout : {"exposure", "frame"}
        The file layout.
    compress : bool
        Tile compression (suffix ``.fits.fz``, else ``.fits``).
    expnum : int
        Exposure number.
    ccd : int, optional
        CCD number (``layout="frame"``).

    Returns
    -------
    str
        ``<expnum:08d>_<kind>.fits`` or ``<expnum:08d>_<ccd:02d>_<kind>.fits`` (+ ``.fz``).
    """
    stem = f"{expnum:08d}_{kind}" if layout == "exposure" else f"{expnum:08d}_{ccd:02d}_{kind}"
    return stem + (".fits.fz" if compress else ".fits")


# --------------------------------------------------------------------------- driver


@dataclass
class ExportReport:
    """What :func:`export_store` did.

    Attributes
    ----------
    to : Path
        The destination directory.
    written : list of str
        File names written by this call.
    up_to_date : list of str
        File names already there with the same content key (skipped).
    skipped : list of (str, str)
        ``(frame, reason)`` of each image not exported (e.g. no complete denoised array).
    """

    to: Path
    written: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        """Whether some image was skipped."""
        return bool(self.skipped)

    def summary_text(self) -> str:
        """Return the summary printed at the end of ``pausdenoise export``.

        Returns
        -------
        str
            Counts and the skipped frames with their reasons, one per line.
        """
        lines = [f"export: {len(self.written)} file(s) written, {len(self.up_to_date)} up to "
                 f"date, {len(self.skipped)} image(s) skipped → {self.to}"]
        lines += [f"  skipped {frame}: {reason}" for frame, reason in self.skipped]
        return "\n".join(lines)


@dataclass
class _Item:
    frame: str
    expnum: int
    ccd: int
    attrs: dict[str, Any]
    denoised_attrs: dict[str, Any] | None


@dataclass
class _File:
    name: str
    kind: str
    expnum: int
    items: list[_Item]
    key: str


def _denoised_attrs(root: Any, frame: str) -> dict[str, Any] | None:
    """Return the ``denoised`` array's attributes when it is complete.

    Returns
    -------
    dict or None
        The attributes; None when the array is absent or not complete.
    """
    group = root[f"{st.FRAMES_GROUP}/{frame}"]
    if "denoised" not in group:
        return None
    attrs = dict(group["denoised"].attrs)
    return attrs if attrs.get("complete") is True else None


def _collect(store: Any, kind: str, report: ExportReport) -> list[_Item]:
    """Return the frames that have ``kind``; record the others in ``report.skipped``.

    Returns
    -------
    list of _Item
        Sorted by (expnum, ccd).
    """
    root = st.open_store(store, "r")
    items = []
    for frame in st.list_frames(root):
        expnum, ccd = st.parse_frame_id(frame)
        den = _denoised_attrs(root, frame) if kind == "denoised" else None
        if kind == "denoised" and den is None:
            report.skipped.append((frame, "no complete denoised array (run the denoise stage)"))
            continue
        items.append(_Item(frame, expnum, ccd, st.frame_attrs(root, frame), den))
    return items


def _plan(store: Any, kinds: Sequence[str], layout: str, compress: bool,
          report: ExportReport) -> list[_File]:
    """Group the frames into files and compute each file's content key.

    Returns
    -------
    list of _File
        In (expnum, ccd, kind order) order.
    """
    files = []
    for kind in kinds:
        groups: dict[tuple[int, int | None], list[_Item]] = {}
        for item in _collect(store, kind, report):
            gkey = (item.expnum, None) if layout == "exposure" else (item.expnum, item.ccd)
            groups.setdefault(gkey, []).append(item)
        for (expnum, ccd), items in groups.items():
            parts = [{"frame": i.frame, "source": i.attrs.get("source_fingerprint"),
                      **({"denoise_key": i.denoised_attrs.get("denoise_key")}
                         if i.denoised_attrs is not None else {})} for i in items]
            files.append(_File(file_name(kind, layout, compress, expnum, ccd), kind, expnum,
                               items, content_key(kind, layout, compress, parts)))
    files.sort(key=lambda f: (f.expnum, f.items[0].ccd, list(kinds).index(f.kind)))
    return files


def _existing_key(path: Path) -> str | None:
    """Return the content key of an exported file already there.

    Returns
    -------
    str or None
        The primary header's ``PDEXPKEY``; None when the file is absent or unreadable.
    """
    if not path.is_file():
        return None
    try:
        with fits.open(path) as hdul:
            return hdul[0].header.get(KEY_CARD)
    except Exception:  # any unreadable or truncated file is simply written again
        return None


def _item_hdu(store: Any, f: _File, item: _Item, *, primary: bool, compress: bool,
              extra: Mapping[str, Any] | None = None):
    """Read one image from the store and make its HDU.

    Returns
    -------
    astropy.io.fits HDU
        As :func:`image_hdu`.
    """
    name = KINDS[f.kind]
    data = st.open_frame(store, item.frame, name).compute(scheduler="threads")
    has_header = "fits_header" in st.frame_arrays(store, item.frame)
    header = frame_header(item.attrs, st.read_header_text(store, item.frame) if has_header
                          else "", kind=f.kind, frame=item.frame,
                          denoised_attrs=item.denoised_attrs,
                          chunks=st.write_chunks(store, item.frame, name))
    for k, v in (extra or {}).items():
        header[k] = v
    return image_hdu(data, header, name=f"CCD{item.ccd:02d}", primary=primary,
                     compress=compress)


def _write_file(store: Any, f: _File, tmp: Path, layout: str, compress: bool) -> None:
    """Write one exported file at ``tmp``, one image in memory at a time."""
    if layout == "frame" and not compress:
        hdu = _item_hdu(store, f, f.items[0], primary=True, compress=False,
                        extra={KEY_CARD: (f.key, "pausdenoise export content key")})
        hdu.writeto(tmp, output_verify="silentfix")
        return
    header = primary_header(f.expnum, f.kind, f.key, [i.attrs for i in f.items])
    fits.PrimaryHDU(header=header).writeto(tmp, output_verify="silentfix")
    for item in f.items:
        hdu = _item_hdu(store, f, item, primary=False, compress=compress)
        with fits.open(tmp, mode="append", output_verify="silentfix") as hdul:
            hdul.append(hdu)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary name next to ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_store(
    store: st.StoreLike,
    to: str | os.PathLike[str],
    *,
    kinds: Sequence[str] = ("denoised",),
    layout: str = "exposure",
    compress: bool = False,
    force: bool = False,
    stream: TextIO | None = None,
) -> ExportReport:
    """Export a store's denoised (and/or raw) images to FITS files in ``to``.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    to : path
        Destination directory (created when missing).
    kinds : sequence of {"denoised", "raw"}, optional
        Images to export; default only the denoised ones.
    layout : {"exposure", "frame"}, optional
        One file per exposure (an extension per CCD) or one file per frame; see the module
        docstring. Default ``"exposure"``.
    compress : bool, optional
        Lossless tile compression (``.fits.fz``). Default False.
    force : bool, optional
        Rewrite files whose content key matches. Default False.
    stream : file-like, optional
        Where the progress lines go (one per file); default ``sys.stdout``.

    Returns
    -------
    ExportReport
        Files written and up to date, images skipped with their reason.

    Raises
    ------
    ValueError
        For an unknown kind or layout.
    StoreError
        When the store holds no complete frame.
    """
    if not kinds or any(k not in KINDS for k in kinds) or layout not in LAYOUTS:
        raise ValueError(f"kinds must be among {sorted(KINDS)} and layout one of {LAYOUTS}; "
                         f"got {list(kinds)}, {layout!r}")
    to = Path(to)
    report = ExportReport(to)
    if not st.list_frames(store):
        raise st.StoreError(f"{store}: no complete frame to export (run the ingest stage)")
    files = _plan(store, kinds, layout, compress, report)
    to.mkdir(parents=True, exist_ok=True)
    for n, f in enumerate(files, 1):
        path = to / f.name
        if not force and _existing_key(path) == f.key:
            report.up_to_date.append(f.name)
            state = "up to date, skipped"
        else:
            _write_atomic(path, lambda tmp, f=f: _write_file(store, f, tmp, layout, compress))
            report.written.append(f.name)
            state = f"written ({len(f.items)} image(s))"
        print(f"export: [{n}/{len(files)}] {f.name} {state}", file=stream or sys.stdout,
              flush=True)
    return report
