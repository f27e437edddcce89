"""Training of the pix2pix cGAN (single exposure → stack of the other exposures).

Losses (Isola et al. 2017, vanilla GAN with logits):

- discriminator: ``½ [BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)]``;
- generator: ``BCE(D(x, G(x)), 1) + λ · L1(G(x), y)`` with ``λ = 100``; the L1 term is the
  mean absolute error over the *valid* pixels of the pair (see
  :class:`pausdenoise.gan.pairs.CutoutPairs`). Invalid pixels are zeroed in both the real
  and the generated image before the discriminator sees them, so it cannot use them.

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
        λ of the L1 term (100 in pix2pix).
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


def train_step(
    generator: Generator,
    discriminator: Discriminator,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    valid: torch.Tensor,
    l1_weight: float = 100.0,
) -> dict[str, float]:
    """One discriminator and one generator update on a batch; returns the losses."""
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
    loss_g.backward()
    opt_g.step()
    return {
        "loss_d": float(loss_d.detach()),
        "loss_g_adv": float(loss_adv.detach()),
        "loss_l1": float(loss_l1.detach()),
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
        ``"epoch"``: per-epoch dicts of mean ``loss_d``, ``loss_g_adv``, ``loss_l1``;
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
            sums = {"loss_d": 0.0, "loss_g_adv": 0.0, "loss_l1": 0.0}
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
