"""Noise2Void / N2V2 denoising network: architecture, normalisation, masking, training, checkpoints.

Public API (import from here): the U-Net (:class:`UNet`, :class:`UNetConfig`,
:func:`predict_array`; :func:`optimise_for_inference` for a faster CPU inference copy,
:class:`OptimisedUNet`), per-frame normalisation (:class:`FrameStats`, :func:`frame_statistics`,
:func:`normalise`, :func:`denormalise`), blind-spot masking and losses
(:func:`apply_blind_spot`, :func:`n2v_loss`, :func:`gaussian_nll_loss`,
:func:`blind_spot_loss`), out-of-core patch sampling (:class:`Frame`, :class:`PatchSampler`,
:func:`make_validation_set`), training (:class:`TrainConfig`, :func:`train_n2v`,
:class:`TrainHistory`) and checkpoints (:func:`save_checkpoint`, :func:`load_model`,
:func:`checkpoint_fingerprint`, :class:`CheckpointError`).

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

from pausdenoise.n2v.checkpoint import (
    CheckpointError,
    checkpoint_fingerprint,
    load_checkpoint,
    load_model,
    read_metadata,
    save_checkpoint,
)
from pausdenoise.n2v.masking import (
    DEFAULT_MASKED_FRACTION,
    DEFAULT_RADIUS,
    apply_blind_spot,
    blind_spot_loss,
    gaussian_nll_loss,
    n2v_loss,
    stratified_targets,
)
from pausdenoise.n2v.normalise import (
    NORMALISATION_METHOD,
    FrameStats,
    denormalise,
    frame_statistics,
    normalise,
)
from pausdenoise.n2v.patches import (
    Frame,
    PatchSampler,
    Region,
    ValidationSet,
    make_validation_set,
    split_regions,
)
from pausdenoise.n2v.train import (
    PlateauSchedule,
    TrainConfig,
    TrainHistory,
    UNetSettings,
    train_n2v,
)
from pausdenoise.n2v.unet import (
    OptimisedUNet,
    UNet,
    UNetConfig,
    optimise_for_inference,
    pad_to_multiple,
    predict_array,
)

__all__ = [
    "DEFAULT_MASKED_FRACTION",
    "DEFAULT_RADIUS",
    "NORMALISATION_METHOD",
    "CheckpointError",
    "Frame",
    "FrameStats",
    "OptimisedUNet",
    "PatchSampler",
    "PlateauSchedule",
    "Region",
    "TrainConfig",
    "TrainHistory",
    "UNet",
    "UNetConfig",
    "UNetSettings",
    "ValidationSet",
    "apply_blind_spot",
    "blind_spot_loss",
    "checkpoint_fingerprint",
    "denormalise",
    "frame_statistics",
    "gaussian_nll_loss",
    "load_checkpoint",
    "load_model",
    "make_validation_set",
    "n2v_loss",
    "normalise",
    "optimise_for_inference",
    "pad_to_multiple",
    "predict_array",
    "read_metadata",
    "save_checkpoint",
    "split_regions",
    "stratified_targets",
    "train_n2v",
]
