"""GalSim simulation of a PAUCam-like survey in the PAUS reduced layout, with its truth.

``galsim`` is imported lazily (inside the rendering functions), and the names below load
their sub-module on first use, so this package and :mod:`.config` import on machines
without GalSim.

Typical use::

    from pausdenoise.simulate import SimulationConfig, write_survey
    summary = write_survey(SimulationConfig(seed=1), "sim/")

Sub-modules:

- :mod:`.config`: the pydantic config (``SimulationConfig``).
- :mod:`.geometry`: focal plane, exposure plan, WCS, headers.
- :mod:`.sources`: galaxies, stars, SEDs.
- :mod:`.render`: one frame.
- :mod:`.writer`: files.
"""

from pausdenoise._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "SimulationConfig": "config",
        "EXPOSURE_COLUMNS": "geometry",
        "exposure_plan": "geometry",
        "focal_plane_layout": "geometry",
        "frame_header": "geometry",
        "frame_wcs": "geometry",
        "TRUTH_COLUMNS": "render",
        "Frame": "render",
        "aperture_axes": "render",
        "bad_columns": "render",
        "paus_theta_deg": "render",
        "render_frame": "render",
        "band_fluxes": "sources",
        "mag_to_ujy": "sources",
        "make_source_catalogue": "sources",
        "ujy_to_mag": "sources",
        "TRUE_EXPOSURES_NAME": "writer",
        "TRUE_SOURCES_NAME": "writer",
        "SurveySummary": "writer",
        "iter_frames": "writer",
        "load_config": "writer",
        "survey_tables": "writer",
        "write_survey": "writer",
    },
)
