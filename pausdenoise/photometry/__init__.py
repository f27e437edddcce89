"""Forced elliptical-aperture photometry of one (exposure, CCD) block, and its Dask driver.

The recipe is the one of the PAUS analyses:

1. **Background** — a circular annulus (``annulus_r_in`` … ``annulus_r_out`` pixels) around
   each source. A pixel belongs to the annulus when its *centre* lies in it (photutils'
   ``method='center'``: ``r_in² <= d² < r_out²``); masked and non-finite pixels are dropped
   and never enter the statistics; the rest are sigma-clipped exactly like
   ``astropy.stats.sigma_clip(sigma=3, maxiters=2)`` (centre = median, scale = population
   std, a pixel survives when ``median - 3σ <= v <= median + 3σ``, each iteration clipping
   the survivors of the previous one). The clipped mean, median, std and pixel count are
   recorded; the clipped *mean* (default) or *median* is subtracted.
2. **Source** — the sum over an elliptical aperture (a circle when ``a == b``) of the
   pixel values times their overlap fraction with the ellipse (exact overlap, or N×N
   sub-pixel sampling as SExtractor does), masked pixels excluded. ``area`` is the sum of the
   overlap fractions of the *unmasked* in-image pixels, so that
   ``flux = aper_sum - area * bkg`` subtracts sky only where sky was summed.
3. **Error** (all in ADU; ``gain`` in e⁻/ADU)::

       flux_err² = max(flux, 0) / gain            # source Poisson term (ADU²)
                 + area * bkg_std²                 # sky noise in the aperture
                 + area² * bkg_std² / bkg_n        # error of the background estimate

   With ``background="median"`` the last term is multiplied by π/2 (the variance of a
   median of ``n`` Gaussian values is π/2 · σ²/n).
4. **Calibration** (ZP multiplicative, ``pausdenoise.paus_layout``)::

       flux_cal = flux * zp
       flux_cal_err = sqrt(flux_err² zp_err² + flux_err² zp² + flux² zp_err²)

Why not one photutils object per source: that is the ~44 sources/s of the original
analyses. Here the aperture weights come from the same low-level routines photutils itself
uses (``photutils.geometry.elliptical_overlap_grid`` / ``circular_overlap_grid``) on a small
cutout per source, and the annulus statistics are computed for batches of sources at once:
the annulus pixels of a batch are gathered into one ``(batch, K)`` array, sorted once per
row, and since every sigma-clipping pass keeps a contiguous range of the sorted values, the
clipped median/mean/std come from indices and prefix sums. The results equal photutils'
``aperture_photometry`` + ``ApertureStats``/``sigma_clip`` to ≤ 1e-6 relative (tests).
Statistics are computed in float64 (float32 images are up-cast per pixel).

Conventions (``pausdenoise.paus_layout``): ``aperture_x/y`` are 0-based pixel coordinates,
``aperture_a/b`` arcsec (``aperture_units="arcsec"``) and ``aperture_theta`` degrees with the
PAUS sign, i.e. photutils ``theta = -aperture_theta * pi / 180`` (radians, counter-clockwise
from +x). The output layout is described in ``docs/CONTRACTS.md``.

Sub-modules, in import order:

- ``config``: :class:`PhotometryConfig` and the :class:`PhotFlag` bits (no numerical imports).
- ``catalogue``: reading and checking the reference catalogue.
- ``apertures``: the elliptical aperture sums kernel (step 2).
- ``annulus``: the sigma-clipped annulus background kernel (step 1).
- ``mog``: mixture-of-Gaussians fits of truncated Sérsic and Moffat profiles.
- ``profile``: the profile-weighted (optimal-extraction) total flux ``flux_prof``: the
  catalogue's intrinsic shape ⊗ the frame's Moffat PSF, neighbours fitted jointly.
- ``apcor``: the aperture share ``aper_frac`` and the neighbours' light ``aper_neighbours``
  (aperture corrections).
- ``calibration``: the zero-point calibration of fluxes and errors (step 4), and the
  zero-point's part of an error.
- ``measure``: one frame's arrays in, its photometry table out (steps 3 and 4, and the
  profile-weighted columns when a PSF is given).
- ``driver``: store reading, Dask tasks and the Parquet partitions.
"""

from pausdenoise._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "PhotFlag": "config",
        "PhotometryConfig": "config",
        "ProfFlag": "config",
        "CatalogueCheck": "catalogue",
        "CatalogueError": "catalogue",
        "FLOAT_COLUMNS": "catalogue",
        "INT_COLUMNS": "catalogue",
        "REQUIRED_COLUMNS": "catalogue",
        "frame_catalogue": "catalogue",
        "read_catalogue": "catalogue",
        "validate_catalogue": "catalogue",
        "MAX_AXIS_PX": "apertures",
        "MIN_AXIS_PX": "apertures",
        "aperture_sums": "apertures",
        "annulus_stats": "annulus",
        "Mixture": "mog",
        "moffat_mixture": "mog",
        "sersic_mixture": "mog",
        "PROFILE_COLUMNS": "profile",
        "intrinsic_shapes": "profile",
        "profile_fluxes": "profile",
        "OUTPUT_COLUMNS": "measure",
        "calibrate_flux": "calibration",
        "with_zero_point_error": "calibration",
        "without_zero_point_error": "calibration",
        "measure_frame": "measure",
        "Partition": "driver",
        "catalogue_rows_digest": "driver",
        "measure_store_frame": "driver",
        "partition_path": "driver",
        "partition_tasks": "driver",
        "partition_warnings": "driver",
        "plan_partitions": "driver",
        "photometry_bands": "driver",
        "photometry_dataframe": "driver",
        "photometry_tasks": "driver",
        "read_photometry": "driver",
        "remove_stale_partitions": "driver",
        "run_photometry": "driver",
        "write_partition": "driver",
    },
)
