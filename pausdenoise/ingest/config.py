"""Configuration of the ingest stage: header keyword mapping, zero-point table, options.

Light on purpose: :mod:`pausdenoise.config` imports it, so it imports neither astropy nor
dask nor torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pausdenoise import paus_layout
from pausdenoise import store as st
from pausdenoise.digest import json_digest

__all__ = ["SAFE_NAME", "HeaderKeys", "IngestConfig", "ZeroPointTable"]

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
        return json_digest(payload, length=None)
