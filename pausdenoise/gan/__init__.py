"""pix2pix conditional GAN: single exposure → stack of the other exposures.

- :mod:`~pausdenoise.gan.config`: ``GeneratorConfig``, ``DiscriminatorConfig``,
  ``GanTrainConfig`` (no torch needed).
- :mod:`~pausdenoise.gan.models`: U-Net generator, conditional PatchGAN, ``predict_array``.
- :mod:`~pausdenoise.gan.pairs`: leave-one-out cutout pairs (128 px, stride 100).
- :mod:`~pausdenoise.gan.train`: the losses and ``train_pix2pix``.
- :mod:`~pausdenoise.gan.checkpoint`: safetensors + JSON metadata, no pickle.
- :mod:`~pausdenoise.gan.apply`: tiled inference with ``map_overlap``.
- :mod:`~pausdenoise.gan.metrics`: pixel correlation and RMS vs a reference.
- :mod:`~pausdenoise.gan.scoring`: the scoring tables of the ``gan`` stage (arrays in,
  tables out).

The names below load their sub-module (and torch, where it needs it) on first use.
"""

from pausdenoise._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "gan_apply": "apply",
        "generate_array": "apply",
        "load_generator": "checkpoint",
        "save_generator": "checkpoint",
        "DiscriminatorConfig": "config",
        "GanTrainConfig": "config",
        "GeneratorConfig": "config",
        "Discriminator": "models",
        "Generator": "models",
        "predict_array": "models",
        "CutoutPairs": "pairs",
        "cutout_pairs": "pairs",
        "make_pairs": "pairs",
        "train_pix2pix": "train",
        "KINDS": "scoring",
        "METRIC_NOTES": "scoring",
        "bias_rows": "scoring",
        "bias_table": "scoring",
        "cut_stamps": "scoring",
        "detection_rows": "scoring",
        "detection_summary": "scoring",
        "kind_mask": "scoring",
        "metrics_table": "scoring",
        "pixel_metric_rows": "scoring",
        "robust_sigma": "scoring",
        "summary_table": "scoring",
    },
)
