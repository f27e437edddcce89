"""Configuration of Noise2Void training, importable without torch.

:class:`TrainConfig` (with its parts :class:`UNetSettings` and :class:`PlateauSchedule`) is
what the pipeline's ``train`` section validates; :mod:`pausdenoise.n2v.train` runs it. The
masking defaults (:data:`DEFAULT_MASKED_FRACTION`, :data:`DEFAULT_RADIUS`) live here so that
the config needs no torch; :mod:`pausdenoise.n2v.masking` explains their values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from pausdenoise.n2v.unet import UNetConfig

DEFAULT_MASKED_FRACTION = 0.005
"""Default fraction of pixels that are blind-spot targets (see :mod:`pausdenoise.n2v.masking`)."""

DEFAULT_RADIUS = 5
"""Default half-width (px) of the square neighbourhood the replacement is drawn from."""

DEFAULT_NOISE_SCALE = 15.0
"""gain·σ_sky (e⁻) assumed when neither the config nor the frames give it (PAUCam-like sky)."""


class UNetSettings(BaseModel):
    """Network architecture (see :class:`pausdenoise.n2v.unet.UNetConfig`)."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(2, ge=1, le=5, description="Down-sampling steps (2: N2V's 2-D default).")
    base_channels: int = Field(32, ge=1, description="Channels at the top level (N2V: 32).")
    n2v2: bool = Field(False, description="N2V2 variant: max-blur-pool, no top skip, median.")
    batch_norm: bool = Field(True, description="Batch normalisation after each convolution.")
    posterior: Literal["none", "gaussian"] = Field(
        "none",
        description="'gaussian': predict a Gaussian prior (mean, variance) per pixel, train on "
        "its likelihood and combine it with the observed pixel at inference (Laine et al. "
        "2019); noise model from train.poisson_scale. 'none': plain N2V.",
    )
    residual: bool | Literal["gated"] = Field(
        False,
        description="true: add the input to the network's output: it learns the correction "
        "to the noisy frame instead of the image (residual learning), so bright cores, "
        "hundreds of σ above the sky, are right from the first steps. 'gated': the network "
        "also predicts, per pixel, the share of the noisy pixel it passes (sigmoid gate, "
        "starting near 0): near 1 on bright cores, near 0 on the sky, which it smooths as a "
        "plain U-Net. Posterior 'none' only.",
    )
    kernel_size: int = Field(
        0,
        ge=0,
        description="0: the network outputs the image. Odd k >= 3: it predicts, per pixel, "
        "a non-negative k×k kernel summing to 1 and outputs that weighted mean of the noisy "
        "pixels around it (kernel prediction): a flat sky keeps its level, flux moves by at "
        "most k // 2 px, so wide apertures keep their flux; the halo grows by k // 2 and "
        "inference holds 2·k² floats per chunk pixel. Posterior 'none' and residual false "
        "only.",
    )

    @model_validator(mode="after")
    def _check_residual(self) -> UNetSettings:
        if self.residual and self.posterior != "none":
            raise ValueError("unet.residual needs unet.posterior 'none' (the Gaussian head "
                             "predicts a prior mean and variance, not a correction)")
        if self.kernel_size and (self.kernel_size < 3 or self.kernel_size % 2 == 0):
            raise ValueError(f"unet.kernel_size must be 0 or odd and >= 3, got "
                             f"{self.kernel_size}")
        if self.kernel_size and (self.posterior != "none" or self.residual):
            raise ValueError("unet.kernel_size needs unet.posterior 'none' and unet.residual "
                             "false (the head predicts kernels, not pixels)")
        return self

    def to_unet_config(self, noise_scale: float | None = None,
                       sky_variance: float = 1.0) -> UNetConfig:
        """Build the network's architecture from these settings.

        Parameters
        ----------
        noise_scale : float, optional
            gain·σ in e⁻ (electrons per normalised unit): the noise model of the
            Gaussian posterior. None takes :data:`DEFAULT_NOISE_SCALE`.
        sky_variance : float
            The sky + read-noise variance in normalised units (1: σ is the noise).

        Returns
        -------
        UNetConfig
            The architecture (importing it imports torch).
        """
        from pausdenoise.n2v.unet import UNetConfig  # torch off the config import path

        return UNetConfig(
            depth=self.depth,
            base_channels=self.base_channels,
            n2v2=self.n2v2,
            batch_norm=self.batch_norm,
            posterior=self.posterior,
            noise_scale=DEFAULT_NOISE_SCALE if noise_scale is None else noise_scale,
            sky_variance=sky_variance,
            residual=self.residual,
            kernel_size=self.kernel_size,
        )


class BlindSpotSettings(BaseModel):
    """The blind-spot teacher of ``method: blindspot`` (see :mod:`pausdenoise.n2v.blindspot`)."""

    model_config = ConfigDict(extra="forbid")

    base_channels: int | None = Field(
        None, ge=1, description="Channels at the teacher's top level (None: unet.base_channels)."
    )
    blind_radius: Annotated[int, Field(ge=0, le=3)] | Literal["auto"] = Field(
        "auto",
        description="Half-width (px) of the square the teacher cannot see around each pixel: "
        "0 hides the pixel alone (white noise); 1 a 3x3 square (noise correlated between "
        "neighbours). 'auto': 1 when the training frames' measured lag-1 noise correlation "
        "exceeds train.correlation_threshold, else 0.",
    )
    distill_fraction: float = Field(
        0.3,
        gt=0.0,
        lt=1.0,
        description="Share of the epochs (of train.max_minutes when set) spent distilling "
        "the frozen teacher into the U-Net; the rest trains the teacher.",
    )


class PlateauSchedule(BaseModel):
    """``ReduceLROnPlateau`` on the validation loss."""

    model_config = ConfigDict(extra="forbid")

    factor: float = Field(0.5, gt=0.0, lt=1.0, description="Multiply the LR by this on a plateau.")
    patience: int = Field(5, ge=0, description="Epochs without improvement before reducing.")
    min_lr: float = Field(1e-6, ge=0.0, description="Lower bound of the learning rate.")


class StarFieldSettings(BaseModel):
    """Star fields simulated to match the training exposures (``n2n_targets: star-field``).

    See :mod:`pausdenoise.simulate.star_field` (the simulation) and
    :mod:`pausdenoise.pipeline.star_field_targets` (how each exposure is copied).
    """

    model_config = ConfigDict(extra="forbid")

    catalogue: str | None = Field(
        None,
        description="Catalogue of one exposure of the field whose fluxes (ADU, flux_column) "
        "are the simulated stars: SExtractor (ASCII_HEAD or FITS_LDAC), CSV, FITS or Parquet. "
        "Required with n2n_targets 'star-field'; its bytes enter the train fingerprint.",
    )
    flux_column: str = Field("FLUX_AUTO", description="The catalogue's flux column, ADU.")
    complete_flux: float | None = Field(
        None,
        gt=0.0,
        description="ADU: the catalogue's stars above it are drawn as they are, below it a "
        "power law of faint_slope continues their counts. None: the turnover of the "
        "catalogue's counts per 0.25 dex of flux (the fullest bin below the median flux).",
    )
    faint_min_noise: float = Field(
        1.0,
        gt=0.0,
        description="Faintest simulated star, in units of the training frames' pixel noise "
        "σ (ADU, median over the frames; the star's total flux): fainter stars change "
        "nothing a network could see.",
    )
    faint_slope: float = Field(
        0.75, ge=0.0, description="a of dN/dlog10(F) ∝ F^-a below complete_flux."
    )
    size: int = Field(
        512,
        ge=64,
        description="Side (px) of the field simulated for each training exposure (at most "
        "the exposure's own shape): a field like the exposure, not a copy of it.",
    )
    realisations: int = Field(
        4, ge=1, description="Noisy exposures drawn of each simulated field (each a "
        "training frame with the field's truth as its target).",
    )
    elliptical: bool = Field(
        True,
        description="Draw the stars through an elliptical Moffat with each exposure's PSF "
        "ellipticity (psf_e1/psf_e2 from the ingest, else measured on its stars). false: "
        "round Moffats.",
    )


class TrainConfig(BaseModel):
    """Configuration of N2V training (validated before anything runs).

    Defaults follow the N2V papers for 2-D images where they exist (U-Net depth 2 with 32
    channels, 64×64 patches, Adam at 4e-4, LR halved on a plateau); the masked fraction is
    justified in :mod:`pausdenoise.n2v.masking`.
    """

    model_config = ConfigDict(extra="forbid")

    unet: UNetSettings = Field(default_factory=UNetSettings, description="Architecture.")
    method: Literal["n2v", "blindspot", "sure", "n2n"] = Field(
        "n2v",
        description="'n2v': masked blind-spot training of the U-Net (targets: masked_fraction "
        "of the pixels). 'blindspot': a blind-spot teacher network in which every pixel is a "
        "target (Laine et al. 2019) is trained, frozen and distilled into the "
        "U-Net, which is what is saved and run (inference costs the same as 'n2v'). 'sure': "
        "the unmasked U-Net trained on Stein's unbiased estimate of its squared error from "
        "the noise model (every pixel a target; unet.posterior 'none'). 'n2n': Noise2Noise, the "
        "unmasked U-Net trained to predict each frame's target, an independent noisy copy of "
        "its truth (in the pipeline: the mean of the other training exposures of the field "
        "brought to the frame's seeing and flux scale); no noise model; unet.posterior "
        "'none'.",
    )
    blindspot: BlindSpotSettings = Field(
        default_factory=BlindSpotSettings, description="The teacher of method 'blindspot'."
    )
    max_minutes: float | None = Field(
        None,
        gt=0.0,
        description="Wall-clock training budget (minutes): training stops at the first "
        "epoch end past it (None: epochs and early stopping alone).",
    )
    struct_mask: Literal["auto", "none", "x", "y", "xy"] = Field(
        "auto",
        description="structN2V masks for correlated noise (method 'n2v'): the pixels next to "
        "each target along these axes are masked too. 'auto': the axes whose measured lag-1 "
        "noise correlation exceeds correlation_threshold.",
    )
    struct_half_width: int = Field(
        1, ge=1, le=8, description="Masked pixels on each side of a target along a struct axis."
    )
    correlation_threshold: float = Field(
        0.1,
        gt=0.0,
        lt=1.0,
        description="Lag-1 noise correlation above which neighbouring pixels count as "
        "correlated (struct_mask and blindspot.blind_radius 'auto').",
    )
    noise_correlation: tuple[float, float] | None = Field(
        None,
        description="Lag-1 noise correlation (along x, along y) of the training frames; "
        "None: measured by the train stage (median over frames) for the 'auto' settings.",
    )
    patch_size: int = Field(64, ge=8, description="Training patch side (px), multiple of 2**depth.")
    batch_size: int = Field(64, ge=1, description="Patches per step (per rank under DDP).")
    masked_fraction: float = Field(
        DEFAULT_MASKED_FRACTION, gt=0.0, le=0.25, description="Fraction of blind-spot targets."
    )
    neighbourhood_radius: int = Field(
        DEFAULT_RADIUS, ge=1, description="Half-width of the replacement neighbourhood (px)."
    )
    replacement: Literal["auto", "uniform", "median"] = Field(
        "auto", description="'uniform' (N2V), 'median' (N2V2); 'auto' follows unet.n2v2."
    )
    max_bad_fraction: float = Field(
        0.25, ge=0.0, le=1.0, description="Skip patches with more bad pixels than this."
    )
    sky_keep: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Keep a patch without source flux with this probability (1: uniform); "
        "over-samples source contexts without biasing the conditional mean "
        "(see PatchSampler).",
    )
    source_threshold: float = Field(
        10.0, gt=0.0, description="Source-patch test: max of the 3×3 box mean above this (σ)."
    )
    loss_weighting: Literal["none", "poisson"] = Field(
        "none",
        description="'poisson': χ² weight 1/(1 + max(ŷ,0)/poisson_scale) from the detached "
        "prediction (context-only, so the minimiser stays the conditional mean), for methods "
        "'n2v', 'n2n' and the teacher of 'blindspot'. Method 'sure' is χ²-weighted by its "
        "noise model either way; the blindspot student fits the teacher's output unweighted.",
    )
    poisson_scale: float | None = Field(
        None,
        gt=0.0,
        description="gain·σ_sky (sky noise in electrons = electrons per normalised unit): the "
        "noise model of loss_weighting 'poisson' and of unet.posterior 'gaussian'. None: the "
        "pipeline takes the median over the training frames of gain × robust σ (ADU); "
        f"{DEFAULT_NOISE_SCALE:g} when the gains are unknown.",
    )
    sky_variance: float | None = Field(
        1.0,
        gt=0.0,
        description="The sky + read-noise variance in normalised units ((ADU - sky) / σ, σ "
        "the frame's robust spread): the noise model's floor (unet.posterior 'gaussian', "
        "method 'sure'). 1 where the sky is noise; on a crowded field σ includes unresolved "
        "stars and the noise is a fraction of it. None: the pipeline takes the median over "
        "the training frames of (sky / gain + read noise²) / σ² (gain and read noise from "
        "the headers or fitted at ingest; 1 when no frame has a gain).",
    )
    init_checkpoint: str | None = Field(
        None,
        description="Pipeline: start from the weights of this checkpoint (an earlier run's "
        "model/n2v.safetensors, e.g. of another night, band or a simulated survey) instead of "
        "a random initialisation, and train on this run's frames from there (fine-tuning). "
        "Its network must have the architecture of train.unet (depth, channels, head; the "
        "noise model may differ); its bytes enter the train fingerprint.",
    )
    noise_per_frame: bool = Field(
        False,
        description="Method 'sure': each training frame with a gain keeps its own noise model "
        "in its normalised units ((sky / gain + read noise²) / σ² and gain·σ, from its "
        "headers or the gain fitted at ingest), used for its patches instead of "
        "sky_variance / poisson_scale, which stay the model of frames without a gain. On a "
        "crowded field σ includes unresolved stars and the normalised noise differs from "
        "frame to frame (on the SAAO frames it did not score better than one model). "
        "false: one noise model for all frames.",
    )
    n2n_targets: Literal["exposures", "star-field"] = Field(
        "exposures",
        description="Method 'n2n' in the pipeline: what the network learns to predict. "
        "'exposures': the mean of each frame's other training exposures (Noise2Noise). "
        "'star-field': the truth of star fields simulated to match each training exposure "
        "(its PSF, sky, gain, read noise, robust σ; star_field): for crowded star fields, "
        "where neither the other exposures (their PSFs differ) nor a noise model (the "
        "unresolved stars look like noise) give a good target. The network trains on the "
        "simulated exposures only. Use loss_weighting 'poisson'.",
    )
    star_field: StarFieldSettings = Field(
        default_factory=StarFieldSettings,
        description="The simulated star fields of n2n_targets 'star-field'.",
    )
    n2n_max_seeing_ratio: float | None = Field(
        None,
        gt=0.0,
        description="Method 'n2n' in the pipeline: a training frame's targets come only from "
        "exposures whose PSF FWHM is at most this times the frame's (header psf_fwhm_px or "
        "seeing; exposures without one always qualify). A reference in worse seeing cannot "
        "be sharpened by the matching kernel, and the network would learn to blur what the "
        "frame resolves. A frame left without any is listed as excluded (as configured: the "
        "run is not partial for it). None: any exposure.",
    )
    nll_beta: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="β of the β-NLL for unet.posterior 'gaussian' (0: plain Gaussian NLL; "
        "1: the mean gets the MSE gradient of plain N2V).",
    )
    grad_clip: float | None = Field(
        None, gt=0.0, description="Clip the gradient norm to this (None: no clipping)."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up (steps).")
    steps_per_epoch: int = Field(100, ge=1, description="Optimiser steps per epoch.")
    epochs: int = Field(50, ge=1, description="Maximum number of epochs.")
    learning_rate: float = Field(4e-4, gt=0.0, description="Adam learning rate (N2V: 4e-4).")
    lr_schedule: PlateauSchedule = Field(
        default_factory=PlateauSchedule, description="ReduceLROnPlateau on the validation loss."
    )
    lr_decay: Literal["plateau", "cosine"] = Field(
        "plateau",
        description="'plateau': lr_schedule (halve on a validation plateau). 'cosine': half a "
        "cosine from learning_rate down to lr_schedule.min_lr over the training horizon "
        "(max_minutes of wall time when set, else epochs × steps_per_epoch steps; per phase "
        "for method 'blindspot'), so that a budgeted run ends at a small step size.",
    )
    weight_average: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Decay per optimiser step of an exponential moving average of the U-Net's "
        "weights (e.g. 0.99); the average is what is validated, kept and saved. None: the "
        "raw weights. Smooths the step-to-step scatter of a short run.",
    )
    early_stopping_patience: int | None = Field(
        15, ge=1, description="Stop after this many epochs without validation improvement."
    )
    keep: Literal["best", "last"] = Field(
        "best",
        description="Weights returned and saved: of the best validation epoch, or of the last "
        "epoch (the N2V validation loss is dominated by noise; it can miss source fidelity).",
    )
    validation_patches: int = Field(256, ge=1, description="Size of the fixed validation set.")
    calibrate_offset: bool = Field(
        True,
        description="After training, refit the one output offset (maximum likelihood on "
        "blind-spot targets of validation_patches held-out patches sampled uniformly, as the "
        "survey is) and fold it into the head's bias.",
    )
    validation_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="Bottom fraction of each frame's rows held out."
    )
    augment: bool = Field(True, description="Random rotations/flips (8 symmetries) per batch.")
    block_size: int | None = Field(
        None, ge=8, description="Read-window side (px); None: chunk shape or 4×patch."
    )
    patches_per_block: int | None = Field(
        None, ge=1, description="Patch draws per read window; None: automatic."
    )
    seed: int = Field(0, ge=0, description="Seed of initialisation, sampling, masking.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto': CUDA if present.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Autocast precision of the training. 'auto': bf16 on a CPU with "
        "AVX-512 BF16 or AMX units (2.7-3.0x the patches/s of fp32 on an Intel Xeon with "
        "AMX, benchmarks/RESULTS.md) and on CUDA devices that support it, else fp32. CUDA: "
        "bf16 or fp16 as asked. CPU: bf16 as asked (the network then channels-last; a CPU "
        "without bfloat16 units may gain nothing), fp16 ignored. method 'sure' trains in "
        "fp32 (its divergence probe is below bfloat16's resolution). Weights and optimiser "
        "stay fp32; the precision in force is recorded in the checkpoint."
    )
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads while training (None: leave as is)."
    )
    prefetch: bool = Field(True, description="Read the next batch in a background thread.")

    @model_validator(mode="after")
    def _check_sizes(self) -> TrainConfig:
        m = 2**self.unet.depth
        if self.patch_size % m:
            raise ValueError(
                f"patch_size {self.patch_size} must be a multiple of 2**depth = {m} "
                f"(unet.depth = {self.unet.depth})"
            )
        if self.method in ("sure", "n2n") and self.unet.posterior != "none":
            raise ValueError(f"method {self.method!r} trains the estimate itself: it needs "
                             f"unet.posterior 'none', got {self.unet.posterior!r}")
        if self.n2n_targets == "star-field" and (self.method != "n2n"
                                                 or self.star_field.catalogue is None):
            raise ValueError("n2n_targets 'star-field' needs method 'n2n' and "
                             "star_field.catalogue (the stars' fluxes)")
        if self.method == "sure" and self.precision in ("bf16", "fp16"):
            raise ValueError(
                f"method 'sure' trains in fp32, got precision {self.precision!r}: its "
                "Monte-Carlo divergence (f(y + 0.01 b) - f(y)) / 0.01 is a difference below "
                "the resolution of 16-bit floats (use precision 'auto' or 'fp32')"
            )
        if self.patch_size <= 2 * self.neighbourhood_radius:
            raise ValueError(
                f"patch_size {self.patch_size} must exceed twice the neighbourhood radius "
                f"({self.neighbourhood_radius})"
            )
        return self

    @property
    def noise_scale(self) -> float:
        """``poisson_scale``, or :data:`DEFAULT_NOISE_SCALE` when it is not set."""
        return DEFAULT_NOISE_SCALE if self.poisson_scale is None else self.poisson_scale

    @property
    def sky_noise_variance(self) -> float:
        """``sky_variance``, or 1 when it is not set."""
        return 1.0 if self.sky_variance is None else self.sky_variance

    @property
    def struct_axes(self) -> str:
        """The structN2V axes actually used: ``""``, ``"x"``, ``"y"`` or ``"xy"``.

        ``struct_mask: auto`` takes the axes whose ``noise_correlation`` exceeds
        ``correlation_threshold`` (none when the correlation is not known).
        """
        if self.struct_mask == "none":
            return ""
        if self.struct_mask != "auto":
            return self.struct_mask
        return "".join(self._correlated_axes())

    @property
    def blind_radius(self) -> int:
        """The blind-spot teacher's blind half-width (px) actually used.

        See :class:`BlindSpotSettings`; ``auto`` is 1 when any axis is correlated.
        """
        r = self.blindspot.blind_radius
        if r != "auto":
            return int(r)
        return 1 if self._correlated_axes() else 0

    def _correlated_axes(self) -> list[str]:
        if self.noise_correlation is None:
            return []
        return [axis for axis, rho in zip("xy", self.noise_correlation, strict=True)
                if rho > self.correlation_threshold]

    @property
    def strategy(self) -> Literal["uniform", "median"]:
        """The replacement strategy actually used."""
        if self.replacement == "auto":
            return "median" if self.unet.n2v2 else "uniform"
        return self.replacement
