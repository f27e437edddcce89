"""Noise2Void / N2V2 denoising network: architecture, normalisation, masking, training, checkpoints.

Sub-modules:

- :mod:`~pausdenoise.n2v.config`: ``TrainConfig`` and its parts (no torch needed).
- :mod:`~pausdenoise.n2v.unet`: the U-Net, ``predict_array``, ``optimise_for_inference``.
- :mod:`~pausdenoise.n2v.normalise`: per-frame robust sky and σ (ADU), ``normalise``.
- :mod:`~pausdenoise.n2v.masking`: blind-spot masking and the losses.
- :mod:`~pausdenoise.n2v.patches`: out-of-core patch sampling and the validation set.
- :mod:`~pausdenoise.n2v.train`: the training loop (``train_n2v``), optional DDP.
- :mod:`~pausdenoise.n2v.checkpoint`: safetensors checkpoints with JSON metadata.

Public API (import from here; names load their sub-module, and torch, on first use): the
U-Net (:class:`UNet`, :class:`UNetConfig`, :func:`predict_array`;
:func:`optimise_for_inference` for a faster CPU inference copy, :class:`OptimisedUNet`),
per-frame normalisation (:class:`FrameStats`, :func:`frame_statistics`, :func:`normalise`,
:func:`denormalise`), blind-spot masking and losses (:func:`apply_blind_spot`,
:func:`n2v_loss`, :func:`gaussian_nll_loss`, :func:`blind_spot_loss`), out-of-core patch
sampling (:class:`Frame`, :class:`PatchSampler`, :func:`make_validation_set`), training
(:class:`TrainConfig`, :func:`train_n2v`, :class:`TrainHistory`) and checkpoints
(:func:`save_checkpoint`, :func:`load_model`, :func:`checkpoint_fingerprint`,
:class:`CheckpointError`).

Two output models share the U-Net (``UNetConfig.posterior``): plain N2V, whose output is the
conditional mean of a pixel given its context (the blind spot), and the Gaussian posterior
(Laine et al. 2019, "High-quality self-supervised deep image denoising"), whose network
predicts a Gaussian prior (mean, variance) of the clean pixel from the same context, is
trained on the Gaussian likelihood of the blind-spot value, and at inference combines the
prior with the pixel's own observed value through the CCD noise model (sky + read noise,
plus the source's Poisson noise). Plain N2V must throw away the information in the pixel
itself; the posterior puts it back where the context cannot predict the pixel — the cores
and knots of galaxies — which is where plain N2V erodes sources.
"""

from pausdenoise._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "CheckpointError": "checkpoint",
        "checkpoint_fingerprint": "checkpoint",
        "load_checkpoint": "checkpoint",
        "load_model": "checkpoint",
        "read_metadata": "checkpoint",
        "save_checkpoint": "checkpoint",
        "DEFAULT_MASKED_FRACTION": "config",
        "DEFAULT_RADIUS": "config",
        "PlateauSchedule": "config",
        "TrainConfig": "config",
        "UNetSettings": "config",
        "apply_blind_spot": "masking",
        "blind_spot_loss": "masking",
        "gaussian_nll_loss": "masking",
        "n2v_loss": "masking",
        "stratified_targets": "masking",
        "NORMALISATION_METHOD": "normalise",
        "FrameStats": "normalise",
        "denormalise": "normalise",
        "frame_statistics": "normalise",
        "normalise": "normalise",
        "Frame": "patches",
        "PatchSampler": "patches",
        "Region": "patches",
        "ValidationSet": "patches",
        "make_validation_set": "patches",
        "split_regions": "patches",
        "TrainHistory": "train",
        "train_n2v": "train",
        "OptimisedUNet": "unet",
        "UNet": "unet",
        "UNetConfig": "unet",
        "optimise_for_inference": "unet",
        "pad_to_multiple": "unet",
        "predict_array": "unet",
    },
)
