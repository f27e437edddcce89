"""The pipeline's stages, one module each, in pipeline order.

Each module exposes ``run(ctx: Context) -> dict[str, Any]``: it reads its inputs from the
run directory or the survey store, calls the computational modules of pausdenoise, writes
its outputs, and returns the stage summary recorded in ``run.json`` (its ``note`` is printed).

- :mod:`.simulate`: render the simulated survey (FITS in the PAUS layout, truth);
- :mod:`.ingest`: FITS frames into the Zarr survey store;
- :mod:`.train`: train the Noise2Void network on the training exposures;
- :mod:`.denoise`: denoise every frame of the store (resumable, chunk by chunk);
- :mod:`.stack`: co-adds per band and CCD, and the cGAN training pairs;
- :mod:`.gan`: train, apply and score the cGAN;
- :mod:`.photometry`: forced aperture photometry on raw and denoised images;
- :mod:`.compare`: cross-exposure Δf statistics and the denoised error model;
- :mod:`.evaluate`: pixel metrics and detection completeness against the truth, or against
  independent exposures;
- :mod:`.report`: figures and the HTML report of the run directory.
"""
