"""Reading one frame, and the fingerprints that tell whether a stored frame is up to date.

:func:`read_frame` is pure: paths in, arrays and metadata out (a :class:`FrameData`).
:func:`source_fingerprint` and :func:`source_stat` sign a frame's source files.

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
  ``"sigma"`` (1/σ²); zero or non-finite variance/σ gives ivar 0. Every pixel whose ivar
  is not positive (0, negative or NaN: no data, e.g. outside a CCD's footprint in a
  resampled or DECam CP frame) gets :attr:`MaskBit.NODATA` in the mask; the stored ivar
  keeps its value.
- Mask and weight come from companion files (``mask_substitution``,
  ``weight_substitution``) or from HDUs of the image's own file (``mask_hdu``,
  ``weight_hdu``, by index or EXTNAME).
- gzip/bzip2-compressed files and tile-compressed (fpack, ``CompImageHDU``) HDUs are read
  decompressed; integer images with BZERO/BSCALE are stored as float32 physical values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pausdenoise import store as st
from pausdenoise.errors import IngestError, PsfError
from pausdenoise.ingest.config import IngestConfig
from pausdenoise.ingest.cosmic_rays import detect_cosmic_rays
from pausdenoise.ingest.fits import (
    _bad_card,
    _ivar_from,
    _open_fits,
    _read_hdu_data,
    _resolve_hdu,
    _to_float32,
    apply_mask_convention,
    file_sha256,
    wcs_header_text,
)
from pausdenoise.ingest.metadata import _metadata
from pausdenoise.ingest.noise import noise_attrs
from pausdenoise.ingest.plan import FrameSource
from pausdenoise.maskbits import MaskBit
from pausdenoise.psf import measure_psf

__all__ = ["FrameData", "IngestError", "read_frame", "searches_cosmic_rays", "source_fingerprint",
           "source_stat"]


@dataclass
class FrameData:
    """One frame read from FITS: pixels (native byte order) and metadata.

    ``image`` float32 [ADU]; ``mask`` uint8 (MaskBit); ``ivar`` float32 [1/ADU²] or None;
    ``truth`` float32 [ADU] or None; ``attrs`` the store attributes (band, exptime [s],
    zp [µJy/ADU], zp_err, gain [e⁻/ADU], rdnoise [e⁻], saturate [ADU], wcs, sources, the
    noise model of :mod:`pausdenoise.ingest.noise` …);
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
        """The store's frame id of ``(expnum, ccd)``."""
        return st.frame_id(self.expnum, self.ccd)

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape ``(ny, nx)`` in pixels."""
        return (int(self.image.shape[0]), int(self.image.shape[1]))

    def arrays(self, keep_header: bool = True) -> dict[str, np.ndarray]:
        """Return the arrays to store, by store array name.

        Parameters
        ----------
        keep_header : bool, optional
            Include the header text as the uint8 array ``fits_header`` (when there is
            one). Default True.

        Returns
        -------
        dict of str to ndarray
            ``image`` and ``mask``, plus ``ivar``, ``truth`` and ``fits_header`` when
            present.
        """
        out = {"image": self.image, "mask": self.mask}
        if self.ivar is not None:
            out["ivar"] = self.ivar
        if self.truth is not None:
            out["truth"] = self.truth
        if keep_header and self.header:
            out["fits_header"] = np.frombuffer(self.header.encode("ascii"), dtype=np.uint8)
        return out


def _read_image(
    source: FrameSource, config: IngestConfig, out_warnings: list[str]
) -> tuple[np.ndarray, dict[str, Any], int, str, str]:
    """Read the image HDU: pixels, metadata, BITPIX, header text and WCS text.

    Returns
    -------
    tuple
        ``(image float32, meta, bitpix, header_text, wcs_text)``; the header text is the
        primary header followed by the image HDU's when the image is an extension.

    Raises
    ------
    IngestError
        Unreadable file or header, EXPNUM/CCD changed since planning, truncated data.
    """
    hdul = _open_fits(source.image)
    try:
        index = _resolve_hdu(hdul, source.hdu, source.image)
        header = hdul[index].header
        primary = hdul[0].header if index else None
        meta = _metadata(header, primary, source.image, config, out_warnings, source.position)
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
    return image, meta, bitpix, header_text, wcs


def _read_companion(
    source: FrameSource,
    path: Path | None,
    what: str,
    shape: tuple[int, ...],
    own_hdu: int | str | None = None,
) -> np.ndarray | None:
    """Read a companion's HDU (mask, weight or truth) and check its shape.

    The companion is ``own_hdu`` of ``path`` when given (a mask or weight HDU of the image's
    own file), else the companion file's HDU matching the image's (EXTNAME, else index).

    Returns
    -------
    ndarray or None
        A copy of the data; None when the frame has no such companion.

    Raises
    ------
    IngestError
        Unreadable companion, or a shape other than the image's.
    """
    if path is None:
        return None
    with _open_fits(path) as chdul:
        hdu = source.companion_hdu if source.companion_hdu is not None else source.hdu
        try:
            idx = _resolve_hdu(chdul, hdu if own_hdu is None else own_hdu, path)
        except IngestError:
            if isinstance(hdu, str) and own_hdu is None:  # fall back to the image's index
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


def _frame_attrs(
    source: FrameSource,
    config: IngestConfig,
    meta: dict[str, Any],
    wcs: str,
    bitpix: int,
    n_nonfinite: int,
) -> dict[str, Any]:
    attrs: dict[str, Any] = dict(meta)
    attrs.update(
        wcs=wcs,
        source_image=str(source.image),
        source_hdu=source.hdu,
        source_mask=str(source.mask) if source.mask else None,
        source_weight=str(source.weight) if source.weight else None,
        source_truth=str(source.truth) if source.truth else None,
        source_bitpix=bitpix,
        n_nonfinite=n_nonfinite,
        layout=config.layout,
    )
    return attrs


def _psf_attrs(image: np.ndarray, mask: np.ndarray, attrs: dict[str, Any]) -> dict[str, Any]:
    """Measure the PSF on the frame's stars when its header gives no seeing.

    Stored once here so that photometry and source injection do not measure it again for
    every image kind (:func:`pausdenoise.psf.frame_psf` reads ``psf_fwhm_px``/``psf_beta``).

    Returns
    -------
    dict
        ``psf_fwhm_px`` (Moffat FWHM, px), ``psf_beta``, ``psf_n_stars`` and, where at least
        5 isolated stars allow it, the PSF's ellipticity ``psf_e1``, ``psf_e2``
        (:func:`pausdenoise.psf.psf_ellipticity`; x along columns) and ``psf_e_n_stars``;
        or ``psf_error`` (why no PSF could be measured); empty when the header has a seeing.
    """
    if attrs.get("seeing") or attrs.get("psf_fwhm_px"):
        return {}
    try:
        est = measure_psf(image, mask, saturate=attrs.get("saturate"), ellipticity=True)
    except PsfError as exc:
        return {"psf_error": str(exc)}
    out = {"psf_fwhm_px": est.fwhm_px, "psf_beta": est.beta, "psf_n_stars": est.n_stars}
    if est.shape is None:
        return out  # too few stars for the ellipticity: the round description stands
    return {**out, "psf_e1": est.shape.e1, "psf_e2": est.shape.e2,
            "psf_e_n_stars": est.shape.n_stars}


def searches_cosmic_rays(source: FrameSource, config: IngestConfig) -> bool:
    """Whether ingest looks for cosmic-ray hits in this frame (``ingest.cosmic_rays.detect``).

    Parameters
    ----------
    source : FrameSource
        The planned frame.
    config : IngestConfig
        Its ``cosmic_rays.detect``: ``"auto"`` searches frames without an input mask.

    Returns
    -------
    bool
        True to search.
    """
    detect = config.cosmic_rays.detect
    no_mask = source.mask is None and source.mask_hdu is None
    return detect == "always" or (detect == "auto" and no_mask)


def _cosmic_ray_attrs(image: np.ndarray, mask: np.ndarray, attrs: dict[str, Any],
                      source: FrameSource, config: IngestConfig) -> dict[str, Any]:
    """Look for cosmic-ray hits when the config says so; mark them in ``mask`` (in place).

    Returns
    -------
    dict
        ``cosmic_rays`` (``"detected"``, ``"input mask"``, ``"off"``, or why the frame
        was not searched) and ``n_cosmic_ray_px`` (pixels with ``COSMIC_RAY``, input mask
        included), ``n_cosmic_rays`` (hits found, when searched).
    """
    bit = np.uint8(MaskBit.COSMIC_RAY)
    gain = attrs.get("gain")
    if not searches_cosmic_rays(source, config):
        state = "off" if config.cosmic_rays.detect == "never" else "input mask"
        out: dict[str, Any] = {"cosmic_rays": state}
    elif gain is None or not gain > 0:
        out = {"cosmic_rays": "not searched: no gain"}
    else:
        found = detect_cosmic_rays(image, mask, float(gain),
                                   float(attrs.get("rdnoise") or 0.0), config.cosmic_rays,
                                   attrs.get("psf_fwhm_px"))
        mask[found.hits] |= bit
        out = {"cosmic_rays": "detected", "n_cosmic_rays": found.n_hits}
    return {**out, "n_cosmic_ray_px": int(np.count_nonzero(mask & bit))}


def read_frame(source: FrameSource, config: IngestConfig) -> FrameData:
    """Read one frame's image, mask, weight and truth (pure; no store access).

    Parameters
    ----------
    source : FrameSource
        The planned frame (see :func:`pausdenoise.ingest.plan.plan_ingest`).
    config : IngestConfig
        Layout, keyword mapping, mask mode and weight kind.

    Returns
    -------
    FrameData
        Arrays in the store's types (see the pixel conventions above) and the attributes.

    Raises
    ------
    IngestError
        Unreadable / truncated file, missing keyword, shape mismatch between the image and
        its companions.
    """
    out_warnings: list[str] = []
    image, meta, bitpix, header_text, wcs = _read_image(source, config, out_warnings)
    shape = image.shape
    mask_in = _read_companion(source, source.mask, "mask", shape, source.mask_hdu)
    if mask_in is None:
        mask = np.zeros(shape, dtype=np.uint8)
    else:
        mask = apply_mask_convention(mask_in, config.effective_mask_mode)
    nonfinite = ~np.isfinite(image)
    if nonfinite.any():
        mask[nonfinite] |= np.uint8(MaskBit.NONFINITE)
    weight_in = _read_companion(source, source.weight, "weight", shape, source.weight_hdu)
    ivar = None if weight_in is None else _ivar_from(weight_in, config.weight_kind)
    if ivar is not None:
        mask[~(ivar > 0)] |= np.uint8(MaskBit.NODATA)
    truth_in = _read_companion(source, source.truth, "truth", shape)
    truth = None if truth_in is None else _to_float32(truth_in)
    attrs = _frame_attrs(source, config, meta, wcs, bitpix, int(nonfinite.sum()))
    if config.measure_psf:
        attrs.update(_psf_attrs(image, mask, attrs))
    name = f"{source.image} [{st.frame_id(source.expnum, source.ccd)}]"
    noise, noise_warnings = noise_attrs(image, mask, attrs, config.noise_model, name)
    cosmic = _cosmic_ray_attrs(image, mask, {**attrs, **noise}, source, config)
    if cosmic.get("n_cosmic_rays"):  # measured again on the pixels the store keeps
        noise, noise_warnings = noise_attrs(image, mask, attrs, config.noise_model, name)
    attrs.update(noise)
    attrs.update(cosmic)
    for key in ("gain", "rdnoise"):  # unknown: left out (readers then see no gain)
        if attrs[key] is None:
            del attrs[key]
    out_warnings += noise_warnings
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


def _layout_tokens(source: FrameSource, config: IngestConfig) -> list[str]:
    """Return the fingerprint parts of what was added to frames over time (none by default).

    A frame with a weight gets ``nodata``: its mask gained :attr:`MaskBit.NODATA` where
    ivar is 0, so a store written before is re-ingested once; mask/weight HDUs of the image
    file are named.

    A frame searched for cosmic rays gets ``cosmic_rays`` (its mask gains the hits).

    Returns
    -------
    list of str
        Empty for a frame without weight, own-file HDUs or cosmic-ray search.
    """
    out = ["nodata"] if source.weight is not None else []
    if searches_cosmic_rays(source, config):
        out.append("cosmic_rays")
    if source.mask_hdu is not None:
        out.append(f"mask_hdu={source.mask_hdu}")
    if source.weight_hdu is not None:
        out.append(f"weight_hdu={source.weight_hdu}")
    return out


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
    """Return the sha256 over the source files' sizes and contents, the HDU and the config.

    File paths are not part of it: the same bytes moved elsewhere are "unchanged".

    Parameters
    ----------
    source : FrameSource
        The frame; its image, mask, weight and truth files (and the zero-point table of
        ``config``) are hashed.
    config : IngestConfig
        Its :meth:`~IngestConfig.content_digest` is part of the fingerprint.
    hashes : dict of Path to str, optional
        Cache of per-file ``"size:sha256"`` between the frames of one multi-extension
        file; filled in place.

    Returns
    -------
    str
        sha256 hex digest (64 characters).
    """
    hashes = {} if hashes is None else hashes
    parts = [config.content_digest(), f"hdu={source.hdu}", *_layout_tokens(source, config)]
    for role, p in _roles(source, config):
        if p is None or not p.is_file():
            parts.append(f"{role}=-")
            continue
        if p not in hashes:
            hashes[p] = f"{p.stat().st_size}:{file_sha256(p)}"
        parts.append(f"{role}={hashes[p]}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def source_stat(source: FrameSource, config: IngestConfig) -> str:
    """Return a cheap signature (paths, sizes, mtimes in ns, HDU, config) of a frame's sources.

    When it equals the one recorded with a complete frame, ingest skips the frame without
    hashing the files (``verify_hash=True`` always hashes).

    Parameters
    ----------
    source : FrameSource
        The frame; the resolved paths, sizes and mtimes of its files are used.
    config : IngestConfig
        Its :meth:`~IngestConfig.content_digest` is part of the signature.

    Returns
    -------
    str
        sha256 hex digest (64 characters).
    """
    parts = [config.content_digest(), f"hdu={source.hdu}", *_layout_tokens(source, config)]
    for role, p in _roles(source, config):
        if p is None or not p.is_file():
            parts.append(f"{role}=-")
            continue
        info = p.stat()
        parts.append(f"{role}={p.resolve()}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
