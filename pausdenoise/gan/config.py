"""Configuration of the pix2pix cGAN (architectures and training), importable without torch.

:class:`GeneratorConfig` and :class:`DiscriminatorConfig` describe the networks of
:mod:`pausdenoise.gan.models`; :class:`GanTrainConfig` is what the pipeline's ``gan`` section
validates and :func:`pausdenoise.gan.train.train_pix2pix` runs (losses explained in
:mod:`pausdenoise.gan.train`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GeneratorConfig(BaseModel):
    """Architecture of the pix2pix U-Net generator.

    Parameters
    ----------
    depth : int
        Number of stride-2 down-sampling steps; inputs, tile origins and halos must be
        multiples of ``2**depth``.
    base_channels : int
        Channels after the first convolution; doubled each level, capped at ``max_channels``.
    max_channels : int
        Channel cap.
    batch_norm : bool
        Batch normalisation in the encoder (except the first layer) and the decoder.
    dropout : float
        Dropout probability in the decoder during training (0 disables; never at inference).
    residual : bool
        Predict ``output = input + G(input)``.
    in_channels, out_channels : int
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    depth: int = Field(
        4, ge=1, le=8,
        description="Stride-2 down-sampling steps; inputs, tile origins and halos (px) must be "
        "multiples of 2**depth.",
    )
    base_channels: int = Field(
        16, ge=1,
        description="Channels after the first convolution; doubled each level, capped at "
        "max_channels.",
    )
    max_channels: int = Field(128, ge=1, description="Channel cap of the encoder levels.")
    batch_norm: bool = Field(
        True,
        description="Batch normalisation in the encoder (except the first layer) and the "
        "decoder.",
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Dropout probability in the decoder during training (0: none; never at "
        "inference).",
    )
    residual: bool = Field(True, description="Predict output = input + G(input).")
    in_channels: int = Field(1, ge=1, description="Channels of the input image.")
    out_channels: int = Field(1, ge=1, description="Channels of the output image.")

    @property
    def size_multiple(self) -> int:
        """Input sizes, tile origins and halos must be multiples of this (``2**depth``)."""
        return 2**self.depth

    def channels(self) -> list[int]:
        """Return the feature channels after each encoder level.

        Returns
        -------
        list of int
            ``depth`` entries: ``base_channels · 2**i`` capped at ``max_channels``.
        """
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(self.depth)]


class DiscriminatorConfig(BaseModel):
    """Architecture of the conditional PatchGAN.

    Parameters
    ----------
    n_layers : int
        Stride-2 layers after the first (3 gives the 70×70 PatchGAN).
    base_channels : int
        Channels of the first layer; doubled per layer, capped at ``max_channels``.
    max_channels : int
    batch_norm : bool
    in_channels : int
        Channels of one image; the network sees twice that (condition + image).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_layers: int = Field(
        3, ge=0, le=6,
        description="Stride-2 layers after the first (3 gives the 70×70 px PatchGAN).",
    )
    base_channels: int = Field(
        16, ge=1,
        description="Channels of the first layer; doubled per layer, capped at max_channels.",
    )
    max_channels: int = Field(128, ge=1, description="Channel cap.")
    batch_norm: bool = Field(True, description="Batch normalisation after the first layer.")
    in_channels: int = Field(
        1, ge=1,
        description="Channels of one image; the network sees twice that (condition + image).",
    )


class GanTrainConfig(BaseModel):
    """Training of the cGAN.

    Parameters
    ----------
    generator, discriminator : GeneratorConfig, DiscriminatorConfig
        Architectures.
    l1_weight : float
        λ of the L1 term (100 in pix2pix); dimensionless, the L1 is in units of the
        single frame's sky σ.
    flux_weight : float
        μ of the flux term (:func:`~pausdenoise.gan.train.masked_flux_loss`,
        :mod:`pausdenoise.gan.train`): the mean squared (or absolute, ``flux_norm``)
        difference of generated and target flux in ``flux_scale × flux_scale`` boxes, as a
        per-pixel mean in units of the single frame's sky σ (σ² when squared). 0 (default:
        off) is plain pix2pix. On the demo-gan field at its CPU budget μ = 100–3000 did not
        reduce the cGAN's median photometric bias (:mod:`pausdenoise.gan.train`,
        ``benchmarks/RESULTS.md``); a squared term's gradient on a faint source (box
        residual ~0.1 σ) is ~0.2 μ against the L1 term's λ per pixel, so μ must be
        ≳ λ/0.2 = 500 to matter there.
    flux_scale : int
        ``k``: side of the boxes (px) the flux term sums over, about an aperture
        diameter (8 px ≈ 2.1″ at 0.265″/px). Must not exceed the cutout size.
    flux_norm : {"squared", "absolute"}
        Squared (a mean-type estimator: unbiased box fluxes) or absolute (median-type)
        box-flux difference (:mod:`pausdenoise.gan.train`).
    lr : float
        Adam learning rate of both networks.
    beta1, beta2 : float
        Adam betas.
    epochs : int
        Passes over the pairs.
    batch_size : int
    max_steps_per_epoch : int, optional
        Cap on batches per epoch (quick runs).
    augment : bool
        Random flips / 90° rotations.
    seed : int
        Seeds the weights, the batch order and the augmentation.
    device : {"cpu", "cuda", "auto"}
        ``"auto"`` takes CUDA when available.
    precision : {"auto", "fp32", "bf16"}
        Autocast precision of the training steps (``auto``: bf16 where the hardware has it,
        :func:`pausdenoise.n2v.precision.resolve_precision`).
    num_threads : int, optional
        ``torch.set_num_threads`` for CPU training (None leaves it).
    progress : bool
        Print a line per epoch with the mean losses and, when stderr is a terminal, show a
        tqdm progress bar.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    generator: GeneratorConfig = Field(
        default_factory=GeneratorConfig, description="Architecture of the U-Net generator."
    )
    discriminator: DiscriminatorConfig = Field(
        default_factory=DiscriminatorConfig,
        description="Architecture of the conditional PatchGAN discriminator.",
    )
    l1_weight: float = Field(
        100.0, ge=0,
        description="λ of the L1 term (100 in pix2pix); the L1 is in units of the single "
        "frame's sky σ.",
    )
    flux_weight: float = Field(
        0.0, ge=0,
        description="μ of the box-flux term (0: off, plain pix2pix); to matter on faint "
        "sources it must be ≳ l1_weight / 0.2.",
    )
    flux_scale: int = Field(
        8, ge=1,
        description="Side (px) of the boxes the flux term sums over, about an aperture "
        "diameter; at most the cutout size.",
    )
    flux_norm: Literal["squared", "absolute"] = Field(
        "squared",
        description="Box-flux difference: 'squared' (mean-type, unbiased box fluxes) or "
        "'absolute' (median-type).",
    )
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of both networks.")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam β1.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam β2.")
    epochs: int = Field(10, ge=1, description="Passes over the cutout pairs.")
    batch_size: int = Field(8, ge=1, description="Cutout pairs per optimiser step.")
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="Cap on the batches per epoch (quick runs); null = all."
    )
    augment: bool = Field(True, description="Random flips and 90° rotations of the pairs.")
    seed: int = Field(
        0, description="Seeds the weights, the batch order and the augmentation."
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "auto", description="'auto' takes CUDA when available."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Autocast precision of the training steps: 'auto' trains in bfloat16 on "
        "a CPU with AVX-512 BF16 or AMX units (the networks then channels-last; 1.9x the "
        "steps/s of fp32 on an Intel Xeon with AMX, benchmarks/RESULTS.md) and on CUDA "
        "devices that support it, else fp32. Weights, optimisers and losses stay fp32; the "
        "precision in force is recorded in the checkpoint.",
    )
    num_threads: int | None = Field(
        None, ge=1,
        description="torch.set_num_threads for CPU training; null leaves it.",
    )
    progress: bool = Field(
        True,
        description="Print a line per epoch with the mean losses, and a bar on a terminal.",
    )
