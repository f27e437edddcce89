"""Source injection: GalSim sources of known flux added to a frame's own pixels.

As DES's Balrog does, galaxies drawn from the simulation's population are added to real or
simulated frames, so the true flux of every injected source is known on any data; their
photometry, compared with the truth, measures each flux estimator's bias and scatter.
``galsim`` is imported inside the drawing functions only, and the names below load their
sub-module on first use.

Sub-modules:

- :mod:`.config`: the pydantic config (``InjectConfig``).
- :mod:`.population`: magnitudes, shapes and SEDs of the injected sources.
- :mod:`.placement`: pixels of existing sources, sky noise, clear positions.
- :mod:`.render`: one frame with its injections, their catalogue and truth.
- :mod:`.metrics`: bias, pull and scatter tables per estimator, band and I bin.
"""

from pausdenoise._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "InjectConfig": "config",
        "INJECT_REF_ID0": "population",
        "POPULATION_COLUMNS": "population",
        "band_flux_ujy": "population",
        "draw_injections": "population",
        "good_pixels": "placement",
        "occupancy_from_image": "placement",
        "place": "placement",
        "sky_background": "placement",
        "sky_variance": "placement",
        "INJECT_CATALOGUE_COLUMNS": "render",
        "INJECT_TRUTH_COLUMNS": "render",
        "InjectionResult": "render",
        "draw_injection_stamps": "render",
        "frame_zp": "render",
        "inject_frame": "render",
        "ESTIMATORS": "metrics",
        "injection_tables": "metrics",
    },
)
