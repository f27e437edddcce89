"""The tiny simulated survey that the end-to-end pipeline and system tests run on."""

from __future__ import annotations

#: a pipeline configuration that runs every stage in seconds (2 bands × 3 exposures of
#: one 128 × 128 CCD, a 2-level U-Net trained for 2 short epochs)
TINY = {
    "cluster": {"kind": "threads", "n_workers": 1, "threads_per_worker": 2},
    "simulate": {"seed": 7, "ccd_shape": [128, 128], "bands": ["NB455", "NB615"],
                 "exposures_per_band": 3, "galaxy_density": 120},
    "ingest": {"chunks": [64, 64]},
    "train": {"unet": {"depth": 2, "base_channels": 4, "batch_norm": False},
              "patch_size": 32, "batch_size": 8, "steps_per_epoch": 3, "epochs": 2,
              "validation_patches": 8, "block_size": 64},
    "photometry": {"annulus_r_in": 12, "annulus_r_out": 20, "min_annulus_pixels": 20},
    "compare": {"min_fit_pairs": 5, "min_validate_pairs": 5},
    "report": {"n_stamps": 2, "stamp_size": 24},
}
