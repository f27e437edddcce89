"""Configuration of the PAUCam-like survey simulation."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pausdenoise.paus_layout import NARROW_BANDS

#: Largest CCD shape (ny, nx) the simulation accepts: one full PAUCam CCD.
MAX_CCD_SHAPE: tuple[int, int] = (4096, 2048)


class SimulationConfig(BaseModel):
    """Everything that defines a simulated PAUCam-like survey (deterministic from ``seed``).

    Units are given per field. Fluxes are AB: ``m_AB = 23.9 - 2.5 log10(f / µJy)``. The
    photometric zero-point convention is the PAUS one (see :mod:`pausdenoise.paus_layout`):
    calibrated flux [µJy] = flux [ADU] × ZP.
    """

    model_config = ConfigDict(extra="forbid")

    # --- survey geometry -----------------------------------------------------------------
    seed: int = Field(20240601, ge=0, description="Master random seed; same config → same files.")
    ccd_shape: tuple[int, int] = Field(
        (512, 512), description="CCD image shape (ny, nx) in pixels; PAUCam is (4096, 2048)."
    )
    n_ccds: int = Field(1, ge=1, le=18, description="Number of CCDs (1-based numbers 1..n_ccds).")
    ccd_gap_px: int = Field(
        64, ge=0, description="Gap between neighbouring CCDs on the focal-plane grid, pixels."
    )
    bands: list[str] = Field(
        default_factory=lambda: ["NB455", "NB615", "NB845"],
        description="PAUS narrow bands observed (names from paus_layout.NARROW_BANDS).",
    )
    exposures_per_band: int = Field(
        4, ge=1, le=64, description="Exposures per band (16–32 for a deep field)."
    )
    first_expnum: int = Field(1000, ge=1, description="Exposure number of the first exposure.")
    pixel_scale: float = Field(0.265, gt=0, description="Pixel scale, arcsec per pixel.")
    ra_center: float = Field(150.1, ge=0, lt=360, description="Field centre right ascension, deg.")
    dec_center: float = Field(2.2, ge=-89, le=89, description="Field centre declination, deg.")
    dither_px: float = Field(
        4.0, ge=0, description="Dither amplitude: offsets uniform in ±dither_px per axis, pixels."
    )

    # --- observing conditions ------------------------------------------------------------
    exptime: float = Field(100.0, gt=0, description="Exposure time, s.")
    mjd_start: float = Field(58500.0, description="MJD of the first exposure, days.")
    seeing_fwhm_range: tuple[float, float] = Field(
        (0.7, 1.2), description="Range of the Moffat PSF FWHM (uniform draw), arcsec."
    )
    moffat_beta: float = Field(3.0, gt=1.5, description="Moffat PSF β (dimensionless).")
    psf_trunc_fwhm: float = Field(
        8.0, ge=3.0, description="PSF truncation radius in units of its FWHM (finite support)."
    )
    sky_range_e: tuple[float, float] = Field(
        (40.0, 250.0), description="Range of the sky level per exposure (uniform), e⁻/pixel."
    )
    electrons_per_ujy: float = Field(
        120.0,
        gt=0,
        description=(
            "Source electrons per µJy in one exposure at transparency 1 (13 nm band, 4.2 m "
            "telescope, exptime s, ~30 % throughput), e⁻/µJy."
        ),
    )
    transparency_range: tuple[float, float] = Field(
        (0.8, 1.0), description="Range of the atmospheric transparency (uniform), fraction."
    )
    zp_err_frac: float = Field(
        0.01, ge=0, lt=0.5, description="Calibration error σ_ZP/ZP (header ZP scatter), fraction."
    )
    airmass_range: tuple[float, float] = Field(
        (1.0, 1.5), description="Range of the airmass written in the header (no effect)."
    )

    # --- detector --------------------------------------------------------------------------
    gain: float = Field(0.65, gt=0, description="Gain, e⁻/ADU.")
    read_noise: float = Field(9.0, ge=0, description="Read noise, e⁻ rms per pixel.")
    full_well: float = Field(210_000.0, gt=0, description="Saturation (full well), e⁻/pixel.")
    n_bad_columns: int = Field(2, ge=0, description="Bad (hot or dead) columns per CCD.")
    n_cosmic_rays: float = Field(
        20.0, ge=0, description="Mean number of cosmic-ray hits per CCD per exposure (Poisson)."
    )
    cosmic_ray_e_range: tuple[float, float] = Field(
        (2_000.0, 30_000.0), description="Charge deposited per cosmic-ray pixel (uniform), e⁻."
    )

    # --- sources ---------------------------------------------------------------------------
    galaxy_density: float = Field(
        60.0, ge=0, description="Galaxies per arcmin² with mag_range[0] ≤ i_AB < mag_range[1]."
    )
    star_density: float = Field(
        2.0, ge=0, description="Stars per arcmin² with star_mag_range[0] ≤ i_AB < [1]."
    )
    mag_range: tuple[float, float] = Field(
        (17.0, 24.0), description="Galaxy i_AB magnitude range (I_auto), mag."
    )
    star_mag_range: tuple[float, float] = Field(
        (15.0, 24.0), description="Star i_AB magnitude range, mag (bright stars saturate)."
    )
    count_slope: float = Field(
        0.3, description="Galaxy number-count slope: dN/dm ∝ 10^(count_slope·m), per mag."
    )
    star_count_slope: float = Field(0.1, description="Star number-count slope, per mag.")
    hlr_at_mag20: float = Field(
        0.6, gt=0, description="Median galaxy half-light radius at i_AB = 20, arcsec."
    )
    hlr_mag_slope: float = Field(
        -0.08, description="d log10(hlr) / d mag of the median galaxy size, dex per mag."
    )
    hlr_scatter_dex: float = Field(0.15, ge=0, description="Scatter of log10(hlr), dex.")
    ellipticity_sigma: float = Field(
        0.25, ge=0, le=0.6, description="Per-component rms of the ellipticity (a-b)/(a+b)."
    )
    profile_trunc_hlr: float = Field(
        6.0, ge=3.0, description="Sérsic profiles are truncated at this many half-light radii."
    )
    aperture_factor: float = Field(
        1.5,
        gt=0,
        description=(
            "Catalogue aperture semi-axes = factor × PSF-convolved half-light semi-axes "
            "(dimensionless; a point source gets factor × FWHM/2)."
        ),
    )
    isolation_radius_px: float = Field(
        45.0, gt=0, description="Radius of the `isolated` test in the truth table, pixels."
    )
    isolation_flux_frac: float = Field(
        0.01,
        gt=0,
        description=(
            "A source is not isolated when another source within isolation_radius_px is "
            "brighter (in the same band) than this fraction of its flux."
        ),
    )

    @field_validator("bands")
    @classmethod
    def _check_bands(cls, bands: list[str]) -> list[str]:
        if not bands:
            raise ValueError("at least one band is required")
        unknown = [b for b in bands if b not in NARROW_BANDS]
        if unknown:
            raise ValueError(f"not PAUS narrow bands: {unknown}")
        if len(set(bands)) != len(bands):
            raise ValueError("bands must be distinct")
        return bands

    @field_validator("ccd_shape")
    @classmethod
    def _check_shape(cls, shape: tuple[int, int]) -> tuple[int, int]:
        ny, nx = shape
        if not (64 <= ny <= MAX_CCD_SHAPE[0] and 64 <= nx <= MAX_CCD_SHAPE[1]):
            raise ValueError(f"ccd_shape {shape} outside (64, 64)..{MAX_CCD_SHAPE} (ny, nx)")
        return shape

    @model_validator(mode="after")
    def _check_ranges(self) -> SimulationConfig:
        for name in (
            "seeing_fwhm_range",
            "sky_range_e",
            "transparency_range",
            "airmass_range",
            "cosmic_ray_e_range",
            "mag_range",
            "star_mag_range",
        ):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: lower bound {lo} > upper bound {hi}")
        if self.seeing_fwhm_range[0] <= 0 or self.sky_range_e[0] < 0:
            raise ValueError("seeing must be > 0 and sky ≥ 0")
        if not 0 < self.transparency_range[0] <= self.transparency_range[1] <= 1:
            raise ValueError("transparency_range must lie in (0, 1]")
        return self

    @property
    def n_exposures(self) -> int:
        """Total number of exposures (all bands)."""
        return len(self.bands) * self.exposures_per_band
