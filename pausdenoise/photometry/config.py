"""Settings of the forced-photometry stage and the bits of its ``flags`` column.

Kept free of numerical imports (pydantic only), so that :mod:`pausdenoise.config` can load
the whole configuration without importing photutils, Dask or torch.
"""

from __future__ import annotations

from enum import IntFlag
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pausdenoise.digest import json_digest

__all__ = ["PhotFlag", "PhotometryConfig"]


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
    ANNULUS_OFF_IMAGE = 256
    """Less than ``min_annulus_fraction`` of the background annulus lies on the image
    (small frames or stamps, sources near a corner): the sky comes from a small, one-sided
    part of the annulus."""


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
    min_annulus_fraction: float = Field(
        0.25,
        ge=0,
        le=1,
        description="a row whose annulus (annulus_r_in..annulus_r_out px, pixel centres) has "
        "less than this fraction of its pixels on the image gets ANNULUS_OFF_IMAGE "
        "(0 = never; annuli fully on the image never). 0.25 flags stamps smaller than the "
        "annulus (a 51x51 stamp keeps 5 % of the 30/45 px annulus) but not sources in the "
        "corner of a large frame (>= ~0.29 on 128x128 and larger)",
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
        """Short hash of the settings that change measured values (for rerun checks).

        Returns
        -------
        str
            16 hex characters: the SHA-256 of the JSON of every field except ``kinds`` and
            ``batch_size`` (they choose what is measured and how fast, not the values).
        """
        d = self.model_dump(exclude={"kinds", "batch_size"})
        return json_digest(d)
