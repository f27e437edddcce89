"""Training of the pix2pix cGAN (single exposure → stack of the other exposures).

Losses (Isola et al. 2017, vanilla GAN with logits):

- discriminator: ``½ [BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)]``;
- generator: ``BCE(D(x, G(x)), 1) + λ · L1(G(x), y) + μ · F_k(G(x), y)`` with ``λ = 100``;
  the L1 term is the mean absolute error over the *valid* pixels of the pair (see
  :class:`pausdenoise.gan.pairs.CutoutPairs`). Invalid pixels are zeroed in both the real
  and the generated image before the discriminator sees them, so it cannot use them.
- optional **flux term** ``F_k`` (:func:`masked_flux_loss`, weight ``μ = flux_weight``, scale
  ``k = flux_scale`` px, ``flux_norm``): the mean squared (default) or absolute difference of
  the fluxes of generated and target image summed in every ``k × k`` box (an aperture),
  valid pixels only. Off by default (``μ = 0``).

Why a flux term: L1 makes each output pixel the conditional *median* of its target. Where a
pixel's signal-to-noise is ≪ 1 — the outskirts of faint galaxies — that distribution is
skewed (mostly sky, sometimes source) and its median lies below its mean, so the generator
paints faint sources too faint: a flux bias. A term on the flux summed over an aperture-sized
box acts on what photometry measures. Squared by default because the minimiser of a squared
error is the conditional *mean* — an unbiased flux — whereas an absolute box-flux error is
again a median, of a distribution that at the demo's signal-to-noise is still skewed: on the
demo-gan field an absolute term (μ = 100) made the median flux bias worse (−0.39 against
−0.25 without), a squared one (μ = 100) left it about unchanged. The cost of squaring: a
squared term grows with the residual, so bright stars and cosmic rays left in a target
dominate it at large μ (μ ≥ 1000 there: the bias at I 18–21 improved by 0.01–0.06, but fainter
sources got worse and the pixel RMS rose by 15–30 %). At the demo's budget no μ reduced the
overall bias, hence the default 0 (numbers in ``benchmarks/RESULTS.md``).

Adam with ``lr = 2e-4`` and ``β = (0.5, 0.999)`` for both networks; one discriminator and
one generator update per batch; random flips and 90° rotations (the same for input, target
and valid mask) when ``augment`` is on. The generator is returned in ``eval()`` mode.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from pausdenoise.gan.models import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
)
from pausdenoise.gan.pairs import CutoutPairs


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
        μ of the flux term (:func:`masked_flux_loss`, module docstring): the mean squared (or
        absolute, ``flux_norm``) difference of generated and target flux in
        ``flux_scale × flux_scale`` boxes, as a per-pixel mean in units of the single
        frame's sky σ (σ² when squared). 0 (default: off) is plain pix2pix. On the demo-gan
        field at its CPU budget μ = 100–3000 did not reduce the cGAN's median photometric
        bias (module docstring, ``benchmarks/RESULTS.md``); a squared term's gradient on a
        faint source (box residual ~0.1 σ) is ~0.2 μ against the L1 term's λ per pixel,
        so μ must be ≳ λ/0.2 = 500 to matter there.
    flux_scale : int
        ``k``: side of the boxes (px) the flux term sums over, about an aperture
        diameter (8 px ≈ 2.1″ at 0.265″/px). Must not exceed the cutout size.
    flux_norm : {"squared", "absolute"}
        Squared (a mean-type estimator: unbiased box fluxes) or absolute (median-type)
        box-flux difference (module docstring).
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
    num_threads : int, optional
        ``torch.set_num_threads`` for CPU training (None leaves it).
    progress : bool
        Show a tqdm progress bar.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    l1_weight: float = Field(100.0, ge=0)
    flux_weight: float = Field(0.0, ge=0)
    flux_scale: int = Field(8, ge=1)
    flux_norm: Literal["squared", "absolute"] = "squared"
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    augment: bool = True
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    num_threads: int | None = Field(None, ge=1)
    progress: bool = True


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but torch sees no CUDA device")
    return torch.device(device)


def make_optimizers(
    generator: Generator, discriminator: Discriminator, config: GanTrainConfig
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam optimisers for the generator and the discriminator."""
    betas = (config.beta1, config.beta2)
    return (
        torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas),
        torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas),
    )


def masked_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean ``|pred − target|`` over valid pixels (0 when none is valid)."""
    v = valid.to(pred.dtype)
    return (torch.abs(pred - target) * v).sum() / v.sum().clamp_min(1.0)


def masked_flux_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    scale: int = 8,
    norm: Literal["absolute", "squared"] = "absolute",
) -> torch.Tensor:
    """Mean absolute (or squared) flux difference in ``scale × scale`` boxes, valid pixels only.

    For every box ``b`` at every position (stride 1) of each image,
    ``d_b = Σ_{j ∈ b, valid} (pred_j − target_j)`` and ``n_b`` is the number of valid pixels
    in ``b``. ``norm="absolute"``: ``Σ_b |d_b| / Σ_b n_b``; ``norm="squared"``:
    ``Σ_b n_b (d_b / n_b)² / Σ_b n_b``. Both are means over boxes, weighted by ``n_b``, of the
    box's mean pixel difference (absolute or squared): per-pixel quantities in the images'
    units (sky σ for the cGAN's normalised pairs), like :func:`masked_l1`. Invalid pixels
    enter neither the flux nor the count (changing ``pred`` there changes nothing); a box
    without valid pixels adds nothing.

    Parameters
    ----------
    pred, target : Tensor (n, 1, h, w)
        Generated and target images (same units).
    valid : Tensor of bool (n, 1, h, w)
        Pixels that count.
    scale : int
        Box side ``k`` in px, ``1 ≤ k ≤ min(h, w)``; ``k = 1``, ``"absolute"`` is
        :func:`masked_l1`.
    norm : {"absolute", "squared"}
        Absolute (a median-type estimator of the box flux) or squared (a mean-type one)
        difference.

    Returns
    -------
    Tensor
        Scalar ≥ 0; 0 when no pixel is valid.
    """
    if not 1 <= scale <= min(pred.shape[-2:]):
        raise ValueError(f"flux_scale {scale} px must lie in [1, {min(pred.shape[-2:])}]")
    v = valid.to(pred.dtype)
    # avg_pool2d gives box means; both sums share the 1/k² factor, which cancels.
    diff = F.avg_pool2d((pred - target) * v, scale, stride=1)
    count = F.avg_pool2d(v, scale, stride=1)
    total = count.sum().clamp_min(1.0 / scale**2)
    if norm == "absolute":
        return diff.abs().sum() / total
    if norm == "squared":
        # n_b (d_b/n_b)² = k² · diff² / count (boxes without valid pixels have diff = 0).
        return (diff.square() / count.clamp_min(1.0 / scale**2)).sum() / total
    raise ValueError(f"norm must be 'absolute' or 'squared', got {norm!r}")


def train_step(
    generator: Generator,
    discriminator: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    valid: torch.Tensor,
    l1_weight: float = 100.0,
    flux_weight: float = 0.0,
    flux_scale: int = 8,
    flux_norm: Literal["squared", "absolute"] = "squared",
) -> dict[str, float]:
    """One discriminator and one generator update on a batch.

    Returns the losses: ``loss_d``, ``loss_g_adv``, ``loss_l1`` and ``loss_flux``
    (:func:`masked_flux_loss`; measured, and part of the generator loss only when
    ``flux_weight > 0``).
    """
    generator.train()
    discriminator.train()
    v = valid.to(x.dtype)
    fake = generator(x)
    real_d = y * v
    fake_d = fake * v

    # Discriminator.
    opt_d.zero_grad(set_to_none=True)
    logit_real = discriminator(x, real_d)
    logit_fake = discriminator(x, fake_d.detach())
    loss_d = 0.5 * (
        F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
        + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
    )
    loss_d.backward()
    opt_d.step()

    # Generator.
    opt_g.zero_grad(set_to_none=True)
    logit_fake = discriminator(x, fake_d)
    loss_adv = F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))
    loss_l1 = masked_l1(fake, y, valid)
    loss_g = loss_adv + l1_weight * loss_l1
    if flux_weight > 0:
        loss_flux = masked_flux_loss(fake, y, valid, flux_scale, flux_norm)
        loss_g = loss_g + flux_weight * loss_flux
    else:
        with torch.no_grad():
            loss_flux = masked_flux_loss(fake, y, valid, flux_scale, flux_norm)
    loss_g.backward()
    opt_g.step()
    return {
        "loss_d": float(loss_d.detach()),
        "loss_g_adv": float(loss_adv.detach()),
        "loss_l1": float(loss_l1.detach()),
        "loss_flux": float(loss_flux.detach()),
    }


def _augment(rng: np.random.Generator, *arrays: torch.Tensor) -> list[torch.Tensor]:
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = torch.rot90(a, k, dims=(-2, -1))
        out.append(torch.flip(a, dims=(-1,)) if flip else a)
    return out


def train_pix2pix(
    pairs: CutoutPairs, config: GanTrainConfig | None = None
) -> tuple[Generator, dict[str, Any]]:
    """Train generator and discriminator on ``pairs``.

    Parameters
    ----------
    pairs : CutoutPairs
        Normalised cutout pairs (sizes multiples of ``2**generator.depth``).
    config : GanTrainConfig

    Returns
    -------
    generator : Generator
        On CPU, in ``eval()`` mode.
    history : dict
        ``"epoch"``: per-epoch dicts of mean ``loss_d``, ``loss_g_adv``, ``loss_l1``,
        ``loss_flux``;
        ``"step"``: the same per batch; ``"config"``: the training config (JSON form);
        ``"n_pairs"``, ``"device"``.
    """
    config = config or GanTrainConfig()
    if len(pairs) == 0:
        raise ValueError("no training pairs")
    m = config.generator.size_multiple
    if pairs.inputs.shape[-1] % m or pairs.inputs.shape[-2] % m:
        raise ValueError(
            f"cutout size {pairs.inputs.shape[-2:]} is not a multiple of 2**depth = {m}"
        )
    if config.flux_scale > min(pairs.inputs.shape[-2:]):
        raise ValueError(
            f"flux_scale = {config.flux_scale} px exceeds the cutout size "
            f"{pairs.inputs.shape[-2:]}"
        )
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = Generator(config.generator).to(device)
    discriminator = Discriminator(config.discriminator).to(device)
    opt_g, opt_d = make_optimizers(generator, discriminator, config)

    inputs = torch.from_numpy(np.ascontiguousarray(pairs.inputs, dtype=np.float32))
    targets = torch.from_numpy(np.ascontiguousarray(pairs.targets, dtype=np.float32))
    valid = torch.from_numpy(np.ascontiguousarray(pairs.valid, dtype=bool))
    n = len(pairs)
    steps = math.ceil(n / config.batch_size)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    history: dict[str, Any] = {
        "epoch": [],
        "step": [],
        "config": config.model_dump(mode="json"),
        "n_pairs": n,
        "device": str(device),
    }
    bar = tqdm(total=steps * config.epochs, desc="pix2pix", disable=not config.progress)
    try:
        for epoch in range(config.epochs):
            order = rng.permutation(n)
            sums = {"loss_d": 0.0, "loss_g_adv": 0.0, "loss_l1": 0.0, "loss_flux": 0.0}
            for s in range(steps):
                idx = torch.from_numpy(order[s * config.batch_size : (s + 1) * config.batch_size])
                x, y, v = inputs[idx], targets[idx], valid[idx]
                if config.augment:
                    x, y, v = _augment(rng, x, y, v)
                losses = train_step(
                    generator,
                    discriminator,
                    opt_g,
                    opt_d,
                    x.to(device),
                    y.to(device),
                    v.to(device),
                    config.l1_weight,
                    config.flux_weight,
                    config.flux_scale,
                    config.flux_norm,
                )
                if not all(math.isfinite(val) for val in losses.values()):
                    raise FloatingPointError(f"non-finite loss at epoch {epoch} step {s}: {losses}")
                history["step"].append({"epoch": epoch, "step": s, **losses})
                for k in sums:
                    sums[k] += losses[k]
                bar.update(1)
                bar.set_postfix(l1=f"{losses['loss_l1']:.4g}", d=f"{losses['loss_d']:.3g}")
            history["epoch"].append({"epoch": epoch, **{k: v / steps for k, v in sums.items()}})
    finally:
        bar.close()
    return generator.cpu().eval(), history
