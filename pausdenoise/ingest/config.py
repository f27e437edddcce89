"""Configuration of the ingest stage: header keyword mapping, zero-point table, options.

Light on purpose: :mod:`pausdenoise.config` imports it, so it imports neither astropy nor
dask nor torch.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pausdenoise import paus_layout
from pausdenoise import store as st
from pausdenoise.digest import json_digest

__all__ = ["SAFE_NAME", "CosmicRayConfig", "HeaderKeys", "IngestConfig", "ZeroPointTable"]

#: Band names become directory names downstream: plain names only.
SAFE_NAME = paus_layout.SAFE_NAME


class HeaderKeys(BaseModel):
    """Header keywords of generic frames (looked up in the image HDU, then the primary HDU).

    A list of keywords means the average of their values (e.g. ``["GAINA", "GAINB"]``); all
    listed keywords must be present. Keywords that are absent use ``IngestConfig.defaults``
    (keyed by the field name), else the frame fails naming the file and keyword.
    """

    model_config = ConfigDict(extra="forbid")

    expnum: str = Field("EXPNUM", description="Keyword of the exposure number (an integer).")
    ccd: str = Field(
        "CCDNUM",
        description="Keyword of the CCD number (an integer); frames are named "
        "<expnum, 8 digits>_<ccd, 2 digits>.",
    )
    band: str = Field("FILTER", description="Keyword of the band (filter) name.")
    band_token: int | None = Field(
        0,
        description="0-based whitespace-separated token of the band value that names the band "
        "(0: 'i DECam SDSS c0003' -> 'i'); null = the whole value.",
    )
    exptime: str = Field("EXPTIME", description="Keyword of the exposure time [s].")
    gain: str | list[str] = Field(
        "GAIN", description="Keyword of the gain [e⁻/ADU]; a list = the mean of their values."
    )
    rdnoise: str | list[str] = Field(
        "RDNOISE", description="Keyword of the read noise [e⁻]; a list = the mean of their values."
    )
    saturate: str | list[str] | None = Field(
        "SATURATE",
        description="Keyword of the saturation level [ADU]; a list = the mean; optional: "
        "absent (or null) records none.",
    )
    zp: str | None = Field(
        "ZP",
        description="Keyword of the zero-point, read as ingest.zp_kind says; null = from "
        "ingest.zp_table or ingest.defaults.",
    )
    zp_err: str | None = Field(
        "ZPERR",
        description="Keyword of the zero-point's 1σ error (a magnitude error with zp_kind "
        "'mag'); null = from ingest.zp_table or ingest.defaults.",
    )
    extra: dict[str, str] = Field(
        default_factory=lambda: {"mjd_obs": "MJD-OBS", "airmass": "AIRMASS"},
        description="Further frame attributes to store: attribute name -> keyword; stored when "
        "the keyword is present (null otherwise).",
    )


class ZeroPointTable(BaseModel):
    """A table of zero-points, one row per (exposure, CCD): FITS, Parquet or CSV.

    A frame's row is the one whose ``expnum_column`` equals the frame's exposure number and
    whose ``ccd_column`` equals the value of header keyword ``ccd_header_key`` (compared as
    stripped strings, e.g. ``ccdname`` "N12" against ``EXTNAME``).
    """

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="The table file: FITS, Parquet or CSV.")
    expnum_column: str = Field(
        "expnum", description="Column of the exposure number, matched to the frame's."
    )
    ccd_column: str = Field(
        "ccdname",
        description="Column matched (as stripped strings) to the frame's value of header "
        "keyword ccd_header_key.",
    )
    ccd_header_key: str = Field(
        "EXTNAME",
        description="Header keyword whose value selects the row (e.g. EXTNAME 'N12' against "
        "ccdname).",
    )
    zp_column: str = Field("zpt", description="Column of the zero-point (see kind).")
    zp_err_column: str | None = Field(
        None,
        description="Column of the zero-point's 1σ error (a magnitude error when kind is "
        "'mag'); null = none in the table.",
    )
    kind: Literal["factor", "mag"] = Field(
        "mag",
        description="'mag': AB magnitude m0 of 1 ADU (of 1 ADU/s with per_second); 'factor': "
        "µJy per ADU.",
    )
    per_second: bool = Field(
        True,
        description="With kind 'mag': m0 is for 1 ADU/s (legacypipe's zpt), so "
        "2.5 log10(EXPTIME [s]) is added.",
    )


class CosmicRayConfig(BaseModel):
    """Cosmic-ray detection at ingest (:mod:`pausdenoise.ingest.cosmic_rays`).

    The hits found get :attr:`~pausdenoise.maskbits.MaskBit.COSMIC_RAY` in the frame's mask.
    """

    model_config = ConfigDict(extra="forbid")

    detect: Literal["auto", "always", "never"] = Field(
        "auto",
        description="'auto': look for cosmic-ray hits in frames that come without a mask "
        "(nothing says which of their pixels are bad), 'always': in every frame (as well as "
        "the input mask), 'never': keep the input mask only. Needs the frame's gain and "
        "read noise (header or fitted); a frame without a gain is not searched (the "
        "attribute cosmic_rays says why).",
    )
    sigma_clip: float = Field(
        4.5, gt=0,
        description="A hit's pixels stand this many σ of the noise above their surroundings "
        "in the Laplacian edge image (S').",
    )
    sigma_frac: float = Field(
        0.3, gt=0, le=1,
        description="A hit's faint ends: neighbours above sigma_frac × sigma_clip are added.",
    )
    contrast: float = Field(
        5.0, gt=0,
        description="Least ratio L+ / (2 F) of the edge image to the fine-structure image "
        "(what tells a hit from a star's core: below 1 on a noiseless star of FWHM >= 2.5 px); "
        "raise it for undersampled frames (PSF FWHM < 2 px).",
    )
    star_fwhm_px: float | None = Field(
        None, gt=0,
        description="The narrowest FWHM [px] a star may have: a hit's seed pixel stands above "
        "the mean of two opposite neighbours by more than such a star's pixels can. null = "
        "star_fwhm_fraction x the frame's measured PSF FWHM (psf_fwhm_px), else 2.0 px.",
    )
    star_fwhm_fraction: float = Field(
        0.8, gt=0, le=1,
        description="With star_fwhm_px null: the narrowest star is this fraction of the "
        "frame's measured PSF FWHM (the PSF varies over the frame and between fits).",
    )
    iterations: int = Field(
        4, ge=1, le=20,
        description="Detection passes at most; each one fills the hits found and looks "
        "again (stops early when a pass finds nothing new).",
    )


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
    mask_hdu, weight_hdu : int or str, optional
        Generic: the mask / weight is that HDU (0-based index or EXTNAME) of the image's
        own file, instead of a companion file.
    expnum_from : {"header", "order", "filename"}
        Generic: exposure number from keyword ``keys.expnum``, from the 1-based position of
        the file in the sorted input list, or from ``filename_pattern``.
    filename_pattern : str, optional
        Generic: regular expression with named groups ``expnum`` and/or ``ccd``, searched
        in the image file's name.
    weight_kind : {"ivar", "variance", "sigma"}
        What the weight holds; stored as inverse variance ``ivar`` [1/ADU²]; pixels of
        ivar 0 get :attr:`MaskBit.NODATA`.
    mask_mode : {"bits", "other"}, optional
        See the pixel conventions in :mod:`pausdenoise.ingest.frame`; default ``bits`` for
        PAUS, ``other`` for generic.
    keys : HeaderKeys
        Generic keyword mapping.
    zp_kind, zp_per_second
        Meaning of the header zero-point of generic frames (factor, or AB magnitude).
    zp_table : ZeroPointTable, optional
        Zero-points from a table instead of the header.
    defaults : dict
        Values for missing generic keywords, keyed by attribute name (``band``,
        ``ccd``, ``exptime``, ``gain``, ``rdnoise``, ``saturate``, ``zp``, ``zp_err``). A defaulted
        ``zp`` adds a warning to the report.
    require_same_shape : bool, optional
        Refuse frames whose shape differs from the store's (PAUCam CCDs all share one
        shape); default True for PAUS, False for generic.
    cosmic_rays : CosmicRayConfig
        Whether and how cosmic-ray hits are looked for in each frame.
    noise_model : {"auto", "header", "fitted"}
        Where the stored ``gain``/``rdnoise`` come from: the header, else the noise model
        fitted across the CCD's exposures, else from the frame's own pixels (``auto``),
        always a fit, or the header only; see :mod:`pausdenoise.ingest.noise`.
    keep_header : bool
        Store the source FITS header as the ``fits_header`` array.
    force : bool
        Re-ingest frames even when complete with an unchanged fingerprint.
    verify_hash : bool
        Hash the source files even when their paths, sizes and mtimes are unchanged.
    progress : bool
        Report progress: a dask bar on a terminal, else a line at each tenth of the files.
    """

    model_config = ConfigDict(extra="forbid")

    layout: Literal["paus", "generic"] = Field(
        "paus",
        description="'paus': PAUS file names and headers (image + .msk mask + optional truth/ "
        "image); 'generic': any FITS images, header keywords mapped by ingest.keys, mask and "
        "weight files found by name substitution.",
    )
    chunks: tuple[int, int] = Field(
        st.DEFAULT_CHUNKS,
        description="Store chunk shape [y, x] in px (rows, columns); one chunk is one denoise "
        "task.",
    )
    shards: tuple[int, int] | None = Field(
        None,
        description="Zarr shard shape [y, x] in px, a multiple of chunks (fewer files); "
        "null = one file per chunk.",
    )
    clevel: int = Field(
        st.DEFAULT_CLEVEL, ge=0, le=9,
        description="Compression level of the stored arrays: 0 (none) to 9 (smallest, slowest).",
    )
    pattern: str | list[str] | None = Field(
        None,
        description="Glob (or list of globs) of the image files in an input directory; "
        "null = the PAUS image names (paus) or, generic, '*.fits' plus the compressed "
        "'*.fits.gz', '*.fz' (tile-compressed, fpack) and '*.fz.gz', where a compressed "
        "copy next to its uncompressed file is left out. Files that are another image's "
        "mask or weight are left out.",
    )
    recursive: bool = Field(False, description="Search the sub-directories too.")
    hdu: int | str | None = Field(
        None,
        description="Generic: the image HDU, a 0-based index (0 = primary) or an EXTNAME; "
        "null = every HDU holding a 2-D image, one frame each (multi-extension files).",
    )
    mask_substitution: tuple[str, str] | None = Field(
        None,
        description="Generic: [search, replace]: the mask file is the image file's name with "
        "the first occurrence of search replaced (DECam: ['_ooi_', '_ood_']); read from the "
        "image's HDU (by EXTNAME, else index). null = no mask file (only non-finite pixels "
        "are masked).",
    )
    weight_substitution: tuple[str, str] | None = Field(
        None,
        description="Generic: [search, replace] giving the weight file from the image file's "
        "name, as mask_substitution (DECam: ['_ooi_', '_oow_']); null = no weight "
        "(no ivar array).",
    )
    mask_hdu: int | str | None = Field(
        None,
        description="Generic: the mask is this HDU of the image's own file, a 0-based index "
        "or an EXTNAME (an alternative to mask_substitution); it is not ingested as an "
        "image. null = no mask HDU.",
    )
    weight_hdu: int | str | None = Field(
        None,
        description="Generic: the weight (see weight_kind) is this HDU of the image's own "
        "file, a 0-based index or an EXTNAME (an alternative to weight_substitution); it is "
        "not ingested as an image. null = no weight HDU.",
    )
    expnum_from: Literal["header", "order", "filename"] = Field(
        "header",
        description="Generic: where the exposure number comes from: 'header' (keyword "
        "keys.expnum), 'order' (1-based position of the image file in the sorted list of "
        "this ingest's input files: adding a file renumbers the ones after it), or "
        "'filename' (group 'expnum' of filename_pattern).",
    )
    filename_pattern: str | None = Field(
        None,
        description="Generic: Python regular expression searched in the image file's name "
        "(without directory), with named groups 'expnum' (used with expnum_from "
        "'filename') and optionally 'ccd' (then the CCD number; otherwise keyword keys.ccd, "
        "else defaults.ccd), e.g. 'I(?P<expnum>\\d+)\\.fits'.",
    )
    weight_kind: Literal["ivar", "variance", "sigma"] = Field(
        "ivar",
        description="What the weight file holds: 'ivar' [1/ADU²], 'variance' [ADU²] or "
        "'sigma' σ [ADU]; stored as inverse variance ivar, 0 where the variance or σ is "
        "zero or not finite.",
    )
    mask_mode: Literal["bits", "other"] | None = Field(
        None,
        description="'bits': keep the mask bits that are pausdenoise MaskBit values and map "
        "other non-zero bits to OTHER; 'other': every non-zero value -> OTHER (masks where "
        "0 = good, e.g. DECam). Either way a pixel is masked exactly when it is non-zero in "
        "the input (or not finite in the image). null = 'bits' (paus), 'other' (generic).",
    )
    keys: HeaderKeys = Field(
        default_factory=HeaderKeys,
        description="Generic: header keywords of the frame attributes (looked up in the image "
        "HDU, then the primary HDU).",
    )
    zp_kind: Literal["factor", "mag"] = Field(
        "factor",
        description="Generic: the header zero-point ZP is a 'factor' (flux [µJy] = flux [ADU] "
        "× ZP) or an AB magnitude 'mag' m0 (m_AB = m0 - 2.5 log10 flux [ADU]), stored as "
        "the factor 10**((23.9 - m0) / 2.5).",
    )
    zp_per_second: bool = Field(
        False,
        description="Generic, zp_kind 'mag': m0 is for 1 ADU/s, so 2.5 log10(EXPTIME [s]) is "
        "added first.",
    )
    zp_table: ZeroPointTable | None = Field(
        None,
        description="Zero-points from a table (one row per exposure and CCD: path, "
        "expnum_column, ccd_column, ccd_header_key, zp_column, zp_err_column, kind, "
        "per_second) instead of the header; null = from the header.",
    )
    defaults: dict[str, float | int | str | None] = Field(
        default_factory=dict,
        description="Generic: values for absent keywords, keyed by attribute: band, ccd (an "
        "integer 0..99), exptime [s], gain [e⁻/ADU], rdnoise [e⁻], saturate [ADU], zp "
        "[µJy/ADU], zp_err; a defaulted zp adds a warning to the report.",
    )
    require_same_shape: bool | None = Field(
        None,
        description="Refuse frames whose shape differs from the store's; null = true for "
        "paus (PAUCam CCDs share one shape), false for generic.",
    )
    measure_psf: bool = Field(
        True,
        description="measure the PSF (Moffat FWHM in px and beta) on the frame's own stars when "
        "its header gives no seeing, and store it with the frame (psf_fwhm_px, psf_beta): "
        "the profile-weighted photometry and source injection need it; its ellipticity "
        "(psf_e1, psf_e2) is stored beside it where at least 5 isolated stars allow",
    )
    noise_model: Literal["auto", "header", "fitted"] = Field(
        "auto",
        description="Gain [e⁻/ADU] and read noise [e⁻] stored with each frame (gain, "
        "rdnoise). Every frame's noise model is fitted from its own pixels (variance against "
        "signal; gain_fitted, gain_fitted_err, read_noise_fitted_e) and its lag-1 noise "
        "correlation measured (noise_corr_x, noise_corr_y); once every frame is in, the "
        "same line is fitted across each CCD's exposures from their sky levels and sky "
        "variances (gain_exposures; robust on crowded fields, needs >= 4 exposures whose skies "
        "span a factor 1.5). 'auto': the header (or ingest.defaults) value when present, else "
        "the fit across exposures, else the frame's own, else the gain that gives its sky's "
        "variance (gain_sky, with the header's read noise, else 0: a lower bound); 'fitted': "
        "the fit across exposures, else the frame's own, else its sky's, else the header's; "
        "'header': the header's only, a missing keyword fails the frame. A frame's own fit "
        "counts only when its sky's variance allows it (gain >= sky / sky variance; crowded "
        "fields break it). gain_source records 'header', 'exposures', 'fitted', 'sky' or "
        "'none'.",
    )
    cosmic_rays: CosmicRayConfig = Field(
        default_factory=CosmicRayConfig,
        description="Cosmic-ray hits found in each exposure from their sharp edges (detect, "
        "sigma_clip, sigma_frac, contrast, star_fwhm_px, star_fwhm_fraction, iterations) and "
        "masked COSMIC_RAY; each frame records cosmic_rays ('detected', 'input mask', 'off' "
        "or why it was not searched), n_cosmic_rays and n_cosmic_ray_px.",
    )
    keep_header: bool = Field(
        True, description="Store each source FITS header as the frame's fits_header array."
    )
    force: bool = Field(
        False,
        description="Re-ingest frames even when stored complete with an unchanged source "
        "fingerprint.",
    )
    verify_hash: bool = Field(
        False,
        description="Hash (sha256) the source files even when their paths, sizes and "
        "modification times are unchanged.",
    )
    progress: bool = Field(
        False,
        description="Report progress: a Dask bar on a terminal, else a line at each tenth of "
        "the files.",
    )

    @model_validator(mode="after")
    def _check(self) -> IngestConfig:
        if any(c < 1 for c in self.chunks):
            raise ValueError(f"chunks must be positive, got {self.chunks}")
        if self.shards is not None and any(
            s < 1 or s % c for s, c in zip(self.shards, self.chunks, strict=True)
        ):
            raise ValueError(f"shards {self.shards} must be positive multiples of {self.chunks}")
        allowed = {"band", "ccd", "exptime", "gain", "rdnoise", "saturate", "zp", "zp_err"}
        unknown = set(self.defaults) - allowed
        if unknown:
            raise ValueError(f"defaults for unknown keys {sorted(unknown)}; allowed {allowed}")
        for sub in (self.mask_substitution, self.weight_substitution):
            if sub is not None and not sub[0]:
                raise ValueError("a file name substitution needs a non-empty search string")
        self._check_sources()
        return self

    def _check_sources(self) -> None:
        """Refuse contradictory companion and frame-number options.

        Raises
        ------
        ValueError
            A mask/weight from both a substitution and an HDU, an HDU shared by two roles,
            or a filename pattern that cannot give what is asked of it.
        """
        for what, sub, hdu in (("mask", self.mask_substitution, self.mask_hdu),
                               ("weight", self.weight_substitution, self.weight_hdu)):
            if sub is not None and hdu is not None:
                raise ValueError(f"{what}_substitution and {what}_hdu are alternatives: set one")
        roles = [h for h in (self.hdu, self.mask_hdu, self.weight_hdu) if h is not None]
        if len({str(h).strip().upper() for h in roles}) < len(roles):
            raise ValueError("hdu, mask_hdu and weight_hdu must name different HDUs")
        if self.filename_pattern is not None:
            try:
                groups = re.compile(self.filename_pattern).groupindex
            except re.error as exc:
                raise ValueError(f"filename_pattern is not a regular expression: {exc}") from None
            if not {"expnum", "ccd"} & set(groups):
                raise ValueError("filename_pattern needs a named group 'expnum' or 'ccd'")
        if self.expnum_from == "filename" and (
            self.filename_pattern is None
            or "expnum" not in re.compile(self.filename_pattern).groupindex
        ):
            raise ValueError("expnum_from 'filename' needs filename_pattern with a named "
                             "group 'expnum', e.g. 'I(?P<expnum>\\d+)\\.fits'")
        ccd = self.defaults.get("ccd")
        if ccd is not None and (isinstance(ccd, (bool, float, str)) or not 0 <= ccd < 100):
            raise ValueError(f"defaults.ccd must be an integer in 0..99, got {ccd!r}")

    @property
    def effective_mask_mode(self) -> Literal["bits", "other"]:
        """The mask mode in force: ``mask_mode``, else ``bits`` (PAUS) or ``other``."""
        if self.mask_mode is not None:
            return self.mask_mode
        return "bits" if self.layout == "paus" else "other"

    @property
    def effective_require_same_shape(self) -> bool:
        """Whether shapes must agree: ``require_same_shape``, else True for PAUS only."""
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

        Parameters
        ----------
        zp_table : path or str, optional
            The ``survey-ccds`` table (FITS, Parquet or CSV) with the ``zpt`` column
            (AB magnitude for 1 ADU/s).
        **overrides
            Any :class:`IngestConfig` field, replacing the preset's value.

        Returns
        -------
        IngestConfig
            The preset, with ``overrides`` applied.
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
        """Hash the fields that change what is stored (not chunking or compression).

        Returns
        -------
        str
            sha256 hex digest (64 characters) of the JSON dump of those fields, with the
            effective mask mode.
        """
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
        for name in _ADDED_FIELDS:  # at their defaults, fingerprints stay as they were
            default = type(self).model_fields[name].get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            if payload.get(name) == default:
                payload.pop(name, None)
        return json_digest(payload, length=None)


#: fields added after stores were first written: left out of the content digest when at
#: their defaults, so that a store ingested before they existed stays up to date
_ADDED_FIELDS = ("mask_hdu", "weight_hdu", "expnum_from", "filename_pattern", "measure_psf",
                 "noise_model", "cosmic_rays")
