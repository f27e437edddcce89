"""Settings of source injection: GalSim galaxies of known flux added to a frame's own pixels.

Kept free of numerical imports (pydantic only). The population defaults are read from
:class:`~pausdenoise.simulate.config.SimulationConfig` and the separation defaults from
:class:`~pausdenoise.photometry.config.PhotometryConfig`, so that injected galaxies look like
the simulated ones and their photometry annuli stay clear by default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pausdenoise.digest import json_digest
from pausdenoise.photometry.config import PhotometryConfig
from pausdenoise.simulate.config import SimulationConfig

__all__ = ["InjectConfig"]


def _sim(name: str) -> Any:
    # the default of a SimulationConfig field: the numbers have one source
    return SimulationConfig.model_fields[name].default


_ANNULUS_OUT_PX: float = PhotometryConfig.model_fields["annulus_r_out"].default
_ANNULUS_IN_PX: float = PhotometryConfig.model_fields["annulus_r_in"].default


class InjectConfig(BaseModel):
    """Configuration of source injection (Balrog-like truth on any frame)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Inject sources and measure them (off by default).")
    per_frame: int = Field(
        40,
        ge=0,
        description="Injections attempted per frame (fewer when the frame has no room left "
        "at clearance_px and min_separation_px), count.",
    )
    mag_range: tuple[float, float] = Field(
        (17.0, 24.0), description="I_auto range of the injected sources, AB mag."
    )
    mag_slope: float = Field(
        0.0,
        description="Magnitude distribution dN/dm ∝ 10^(mag_slope·m), per mag; 0 = uniform in "
        "magnitude (every I bin equally populated; the simulation's counts use "
        f"{_sim('count_slope')}).",
    )
    hlr_at_mag20: float = Field(
        _sim("hlr_at_mag20"), gt=0, description="Median half-light radius at I = 20, arcsec."
    )
    hlr_mag_slope: float = Field(
        _sim("hlr_mag_slope"), description="d log10(hlr) / d mag of the median size, dex/mag."
    )
    hlr_scatter_dex: float = Field(
        _sim("hlr_scatter_dex"), ge=0, description="Scatter of log10(hlr) at fixed mag, dex."
    )
    ellipticity_sigma: float = Field(
        _sim("ellipticity_sigma"),
        ge=0,
        le=0.6,
        description="Per-component rms of the intrinsic ellipticity (a-b)/(a+b), dimensionless.",
    )
    star_fraction: float = Field(
        0.0, ge=0, le=1, description="Fraction of injections that are point sources (PSF only)."
    )
    share: Literal["sky", "frame"] = Field(
        "sky",
        description="'sky': one population per CCD, placed on the sky and drawn into every "
        "exposure and band at the same positions (a galaxy is seen in every exposure, so "
        "colours and exposure pairs can be measured); 'frame': each frame gets its own "
        "population (as many distinct galaxies as frames × per_frame, for tight bias "
        "intervals; no colours). Frames without a WCS always get their own.",
    )
    clearance_px: float = Field(
        12.0,
        gt=0,
        description="Smallest distance of an injection centre from every existing catalogue "
        "source and every occupied (detected or masked) pixel, px. Larger values give cleaner "
        "truth (no neighbour light in the aperture) but fewer injections on crowded frames "
        "(on the 512x512 demo frames 12 px leaves room for ~20-40 per frame; on a crowded "
        "real field 20 px for ~20, 45 px for none).",
    )
    min_separation_px: float = Field(
        _ANNULUS_IN_PX,
        gt=0,
        description="Smallest distance between two injections, px. The default, the "
        "photometry annulus inner radius, keeps injections out of each other's apertures; "
        "their light in each other's annuli is left out by photometry.annulus_mask_grow.",
    )
    edge_px: float = Field(
        _ANNULUS_OUT_PX,
        ge=0,
        description="Smallest distance of an injection centre from the image edges, px "
        "(default: the annulus outer radius, so the annulus lies on the image).",
    )
    detect_nsigma: float = Field(
        4.0,
        gt=0,
        description="Pixels of existing sources: smoothed sky-subtracted image above this "
        "many σ of its own noise, in groups of >= 5 px, dimensionless (3 also detects noise "
        "peaks, which then block clearance_px around each).",
    )
    detect_smooth_px: float = Field(
        1.5, ge=0, description="σ of the Gaussian smoothing before detection, px (~PSF σ)."
    )
    detect_grow_px: float = Field(
        2.0, ge=0, description="Dilation of the detected source pixels, px."
    )
    zp_ab: float | None = Field(
        None,
        description="AB magnitude of 1 ADU, used only for frames without a usable zero-point "
        "(zp attribute missing, NaN or <= 0); None: such frames are refused. Frames with a "
        "zero-point use theirs (µJy/ADU: flux_adu = flux_µJy / zp).",
    )
    seed: int = Field(0, ge=0, description="Seed of the injections (positions, shapes, noise).")
    aperture_factor: float = Field(
        _sim("aperture_factor"),
        gt=0,
        description="Catalogue aperture semi-axes = factor × PSF-convolved half-light "
        "semi-axes (the simulation's convention), dimensionless.",
    )
    profile_trunc_hlr: float = Field(
        _sim("profile_trunc_hlr"),
        ge=3.0,
        description="Sérsic profiles are truncated at this many half-light radii.",
    )
    psf_trunc_fwhm: float = Field(
        _sim("psf_trunc_fwhm"),
        ge=3.0,
        description="The Moffat PSF drawn is truncated at this many FWHM (finite support).",
    )

    @model_validator(mode="after")
    def _check_range(self) -> InjectConfig:
        lo, hi = self.mag_range
        if lo > hi:
            raise ValueError(f"mag_range: lower bound {lo} > upper bound {hi}")
        return self

    def population_config(self) -> SimulationConfig:
        """Return the simulation settings that draw this configuration's population.

        Returns
        -------
        SimulationConfig
            The simulation's defaults with this configuration's magnitude range and slope
            (galaxies and stars alike), sizes, shapes and truncation.
        """
        return SimulationConfig(
            mag_range=self.mag_range,
            star_mag_range=self.mag_range,
            count_slope=self.mag_slope,
            star_count_slope=self.mag_slope,
            hlr_at_mag20=self.hlr_at_mag20,
            hlr_mag_slope=self.hlr_mag_slope,
            hlr_scatter_dex=self.hlr_scatter_dex,
            ellipticity_sigma=self.ellipticity_sigma,
            profile_trunc_hlr=self.profile_trunc_hlr,
            psf_trunc_fwhm=self.psf_trunc_fwhm,
            aperture_factor=self.aperture_factor,
        )

    def fingerprint(self) -> str:
        """Short hash of the settings that change what is injected (for rerun checks).

        Returns
        -------
        str
            16 hex characters: the SHA-256 of the JSON of every field except ``enabled``.
        """
        return json_digest(self.model_dump(mode="json", exclude={"enabled"}))
