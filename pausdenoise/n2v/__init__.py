"""Noise2Void / N2V2 denoising network: architecture, normalisation, masking, training, checkpoints.

Public API (import from here): the U-Net (:class:`UNet`, :class:`UNetConfig`,
:func:`predict_array`), per-frame normalisation (:class:`FrameStats`, :func:`frame_statistics`,
:func:`normalise`, :func:`denormalise`), blind-spot masking (:func:`apply_blind_spot`,
:func:`n2v_loss`), out-of-core patch sampling (:class:`Frame`, :class:`PatchSampler`,
:func:`make_validation_set`), training (:class:`TrainConfig`, :func:`train_n2v`,
:class:`TrainHistory`) and checkpoints (:func:`save_checkpoint`, :func:`load_model`,
:func:`checkpoint_fingerprint`, :class:`CheckpointError`).
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
from pausdenoise.n2v.unet import UNet, UNetConfig, pad_to_multiple, predict_array

__all__ = [
    "DEFAULT_MASKED_FRACTION",
    "DEFAULT_RADIUS",
    "NORMALISATION_METHOD",
    "CheckpointError",
    "Frame",
    "FrameStats",
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
    "checkpoint_fingerprint",
    "denormalise",
    "frame_statistics",
    "load_checkpoint",
    "load_model",
    "make_validation_set",
    "n2v_loss",
    "normalise",
    "pad_to_multiple",
    "predict_array",
    "read_metadata",
    "save_checkpoint",
    "split_regions",
    "stratified_targets",
    "train_n2v",
]
