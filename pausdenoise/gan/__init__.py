"""pix2pix conditional GAN: single exposure → stack of the other exposures.

- :mod:`~pausdenoise.gan.models`: U-Net generator, conditional PatchGAN, ``predict_array``.
- :mod:`~pausdenoise.gan.pairs`: leave-one-out cutout pairs (128 px, stride 100).
- :mod:`~pausdenoise.gan.train`: ``GanTrainConfig``, ``train_pix2pix``.
- :mod:`~pausdenoise.gan.checkpoint`: safetensors + JSON metadata, no pickle.
- :mod:`~pausdenoise.gan.apply`: tiled inference with ``map_overlap``.
- :mod:`~pausdenoise.gan.metrics`: pixel correlation and RMS vs a reference.
"""

from pausdenoise.gan.apply import gan_apply, generate_array
from pausdenoise.gan.checkpoint import load_generator, save_generator
from pausdenoise.gan.models import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    predict_array,
)
from pausdenoise.gan.pairs import CutoutPairs, cutout_pairs, make_pairs
from pausdenoise.gan.train import GanTrainConfig, train_pix2pix

__all__ = [
    "CutoutPairs",
    "Discriminator",
    "DiscriminatorConfig",
    "GanTrainConfig",
    "Generator",
    "GeneratorConfig",
    "cutout_pairs",
    "gan_apply",
    "generate_array",
    "load_generator",
    "make_pairs",
    "predict_array",
    "save_generator",
    "train_pix2pix",
]
