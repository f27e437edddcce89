"""Settings of the forced-photometry stage and the bits of its ``flags`` column.

Kept free of numerical imports (pydantic only), so that :mod:`pausdenoise.config` can load
the whole configuration without importing photutils, Dask or torch.
"""

from __future__ import annotations

from enum import IntFlag
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pausdenoise.digest import json_digest

__all__ = ["EMPTY_NOISE_MODEL", "PROFILE_MODEL", "PhotFlag", "PhotometryConfig", "ProfFlag"]

#: Version of the empty-aperture σ(A) model of :mod:`pausdenoise.photometry.empty` (part of
#: the fingerprint with ``errors="empty"``): "loglog-8" = 8 radii, σ68 interpolated in log–log;
#: "profile-veff-span" = the profile errors' sky variance per pixel measured once per frame,
#: with profiles spanning the catalogue's range of profile areas.
EMPTY_NOISE_MODEL = "loglog-8;profile-veff-span"
#: Version of the profile-weighted fit of :mod:`pausdenoise.photometry.profile` (part of the
#: fingerprint with ``profile=True``): "sky-filled" = a row without a usable annulus sky
#: takes the frame's median sky in its overlap group's joint solve instead of making the
#: group's fluxes NaN; "aper-frac-neighbours" = the rows carry ``aper_frac``, the
#: aperture's share of the profile's flux, and ``aper_neighbours(_err)``, the other sources'
#: light in the aperture (:mod:`pausdenoise.photometry.apcor`); "box-corners" = that light
#: includes the sources that reach only the corners of an aperture's box.
PROFILE_MODEL = "sky-filled;aper-frac-neighbours;box-corners"


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


class ProfFlag(IntFlag):
    """Bits of the ``flags_prof`` column (the profile-weighted flux); ``flags`` is separate.

    Flagged rows are kept; select with ``flags_prof == 0``.
    """

    NO_PSF = 1
    """No PSF estimate for the frame (or ``profile=False``): the profile columns are NaN."""
    APPROX_PROFILE = 2
    """The catalogue row has no profile columns: the intrinsic profile was derived from the
    aperture (an exponential disk; ``profile_aperture_factor``), so it is approximate."""
    LOW_WEIGHT = 4
    """Less than ``profile_min_weight`` of the profile weight Σp² of the source's stamp is on
    usable pixels (masked, non-finite, saturated or off-image pixels are left out)."""
    SATURATED = 8
    """Saturated pixels carrying more than 0.1 % of the stamp's profile weight were left out."""
    BAD_INPUT = 16
    """Unusable position or shape (NaN, q outside (0, 1], negative hlr): not measured."""
    FEW_ANNULUS = 32
    """Fewer than ``min_annulus_pixels`` usable annulus pixels: the sky is uncertain."""
    NONFINITE_RESULT = 64
    """flux_prof or flux_prof_err is not finite (e.g. a singular joint fit)."""
    OFF_IMAGE = 128
    """The source centre is outside the image."""


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
    annulus_mask_grow: float = Field(
        3.0,
        ge=0,
        description="pixels within this many aperture semi-axes (at least 3 px) of any "
        "catalogue source of the frame are left out of every background annulus, so "
        "neighbours' wings do not raise the sky (0 = off, the plain clipped annulus). "
        "Measured on the simulated demo survey (median over its sources): the clipped annulus "
        "mean sits 1.0 ADU/px above the true sky with 0, 0.17 with 2 and 0.02 with 3 (sky "
        "noise 24 ADU/px)",
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
    errors: Literal["annulus", "ivar", "empty"] = Field(
        "annulus",
        description="sky-noise term of the aperture flux_err (ADU²): 'annulus' = area × "
        "bkg_std² (the clipped annulus scatter); 'ivar' = Σ overlap²/ivar over the aperture's "
        "unmasked pixels with ivar > 0 (ivar in 1/ADU², the frame's inverse-variance plane "
        "from the ingested weight map), so a spatially varying noise is followed. The ivar "
        "is taken as sky + read noise only (as DECam CP oow maps are), so the source Poisson "
        "term max(flux, 0)/gain is kept; the background-estimate term stays from the "
        "annulus. Used for kind 'raw' only (the ivar does not describe a denoised image's "
        "noise); frames without an ivar array fall back to 'annulus' with a warning. "
        "'empty' = σ(A)² from the flux scatter of empty apertures of the frame measured with "
        "the same recipe (pausdenoise.photometry.empty; it holds correlated and confusion "
        "noise and the background estimate's noise, so the separate background term is "
        "dropped), on raw and denoised images alike; a frame where too few empty apertures "
        "fit falls back to 'annulus' with a warning; flux_prof_err's sky terms are scaled by "
        "σ68² of the pulls of profile fluxes measured at empty positions (as a function of "
        "the profile's effective area). Otherwise flux_prof_err is not affected",
    )
    empty_apertures: int = Field(
        200,
        ge=20,
        description="errors 'empty': random empty apertures per radius (8 radii from half "
        "the smallest to the largest catalogue aperture; twice as many profiles for "
        "flux_prof_err), placed clear of every catalogue source and bad pixel",
    )
    kinds: tuple[Literal["raw", "denoised"], ...] = Field(
        ("raw", "denoised"), min_length=1, description="which images to measure"
    )
    batch_size: int = Field(64, ge=1, description="sources per vectorised annulus batch")
    profile: bool = Field(
        True,
        description="also compute the profile-weighted (optimal-extraction) total flux "
        "flux_prof; needs the frame's PSF (False: profile columns NaN, flags_prof NO_PSF)",
    )
    psf_beta: float = Field(
        3.0,
        gt=1,
        description="Moffat beta of the PSF model (dimensionless) when the PSF estimate has "
        "none (a header FWHM)",
    )
    psf_trunc_fwhm: float = Field(
        8.0, gt=0, description="the PSF model is truncated at this radius, in units of its FWHM"
    )
    profile_trunc_hlr: float = Field(
        6.0,
        ge=3.0,
        description="Sérsic profiles of the catalogue are truncated at this many half-light "
        "radii (as in the simulation)",
    )
    profile_aperture_factor: float = Field(
        1.5,
        gt=0,
        description="catalogues without profile columns: aperture semi-axes are taken as this "
        "factor × (intrinsic half-light semi-axis ⊕ PSF FWHM/2) to derive an approximate "
        "exponential-disk profile (dimensionless)",
    )
    profile_stamp_fwhm: float = Field(
        2.5,
        gt=0,
        description="half-size of a source's profile stamp, in PSF FWHM, plus "
        "profile_stamp_hlr × its major-axis half-light radius",
    )
    profile_stamp_hlr: float = Field(
        2.0, ge=0, description="see profile_stamp_fwhm (major-axis half-light radii)"
    )
    profile_max_radius: int = Field(
        48, ge=3, description="largest half-size of a profile stamp, pixels"
    )
    profile_max_group: int = Field(
        1000,
        ge=2,
        description="overlap groups of more sources than this (crowded fields) are solved in "
        "spatial tiles, each with its neighbours within profile_group_margin, instead of "
        "as one dense system (memory ∝ sources², time ∝ sources³)",
    )
    profile_group_margin: float = Field(
        4.0,
        gt=0,
        description="margin around each tile of a large overlap group, in the group's median "
        "stamp half-size: its sources enter the tile's system but keep their own tile's "
        "solution",
    )
    profile_min_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="flag LOW_WEIGHT when less than this fraction of a source's profile "
        "weight Σp² (over its stamp) is on usable pixels",
    )

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
            ``batch_size`` (they choose what is measured and how fast, not the values);
            ``errors`` only when not the default ``"annulus"`` and ``empty_apertures`` only
            with ``errors="empty"``, so partitions written before the options existed stay
            up to date; with ``errors="empty"`` also :data:`EMPTY_NOISE_MODEL` (a change of
            the σ(A) model remeasures the partitions it wrote), and with ``profile=True``
            :data:`PROFILE_MODEL`.
        """
        d = self.model_dump(exclude={"kinds", "batch_size"})
        if d.get("errors") != "empty":
            del d["empty_apertures"]
        if d.get("errors") == "annulus":
            del d["errors"]
        d.update(self.model_versions())
        return json_digest(d)

    def model_versions(self) -> dict[str, str]:
        """Return the versions of the measurement models these settings use.

        A new version changes measured values for the same settings, so it enters both
        :meth:`fingerprint` (per partition) and the pipeline's stage fingerprints.

        Returns
        -------
        dict of str to str
            ``empty_noise_model`` (:data:`EMPTY_NOISE_MODEL`) with ``errors="empty"``,
            ``profile_model`` (:data:`PROFILE_MODEL`) with ``profile=True``.
        """
        out = {}
        if self.errors == "empty":
            out["empty_noise_model"] = EMPTY_NOISE_MODEL
        if self.profile:
            out["profile_model"] = PROFILE_MODEL
        return out
