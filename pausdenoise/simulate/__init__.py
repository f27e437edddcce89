"""GalSim simulation of a PAUCam-like survey in the PAUS reduced layout, with its truth.

``galsim`` is imported lazily (inside the rendering functions), so this package imports on
machines without it.

Typical use::

    from pausdenoise.simulate import SimulationConfig, write_survey
    summary = write_survey(SimulationConfig(seed=1), "sim/")

Sub-modules: :mod:`.config` (the pydantic config), :mod:`.geometry` (focal plane, exposure
plan, WCS, headers), :mod:`.sources` (galaxies, stars, SEDs), :mod:`.render` (one frame),
:mod:`.writer` (files).
"""

from pausdenoise.simulate.config import SimulationConfig
from pausdenoise.simulate.geometry import (
    EXPOSURE_COLUMNS,
    exposure_plan,
    focal_plane_layout,
    frame_header,
    frame_wcs,
)
from pausdenoise.simulate.render import (
    TRUTH_COLUMNS,
    Frame,
    aperture_axes,
    bad_columns,
    paus_theta_deg,
    render_frame,
)
from pausdenoise.simulate.sources import band_fluxes, mag_to_ujy, make_source_catalogue, ujy_to_mag
from pausdenoise.simulate.writer import (
    TRUE_EXPOSURES_NAME,
    TRUE_SOURCES_NAME,
    SurveySummary,
    iter_frames,
    load_config,
    survey_tables,
    write_survey,
)

__all__ = [
    "EXPOSURE_COLUMNS",
    "TRUE_EXPOSURES_NAME",
    "TRUE_SOURCES_NAME",
    "TRUTH_COLUMNS",
    "Frame",
    "SimulationConfig",
    "SurveySummary",
    "aperture_axes",
    "bad_columns",
    "band_fluxes",
    "exposure_plan",
    "focal_plane_layout",
    "frame_header",
    "frame_wcs",
    "iter_frames",
    "load_config",
    "mag_to_ujy",
    "make_source_catalogue",
    "paus_theta_deg",
    "render_frame",
    "survey_tables",
    "ujy_to_mag",
    "write_survey",
]
