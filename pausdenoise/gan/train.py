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

import contextlib
import math
import sys
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pausdenoise.gan.config import GanTrainConfig  # also importable from here
from pausdenoise.gan.models import Discriminator, Generator
from pausdenoise.gan.pairs import CutoutPairs
from pausdenoise.n2v.precision import resolve_precision
from pausdenoise.progress import is_terminal


def resolve_device(device: str) -> torch.device:
    """Pick the torch device for a ``device`` setting.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` takes CUDA when available, else the CPU.

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    RuntimeError
        If ``"cuda"`` is asked for and torch sees no CUDA device.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but torch sees no CUDA device")
    return torch.device(device)


def make_optimizers(
    generator: Generator, discriminator: Discriminator, config: GanTrainConfig
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Build the Adam optimisers of the generator and the discriminator.

    Parameters
    ----------
    generator : Generator
        The generator network.
    discriminator : Discriminator
        The discriminator network.
    config : GanTrainConfig
        Learning rate ``lr`` and betas ``beta1``, ``beta2`` (the same for both).

    Returns
    -------
    tuple of torch.optim.Adam
        (generator's optimiser, discriminator's optimiser).
    """
    betas = (config.beta1, config.beta2)
    return (
        torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas),
        torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas),
    )


def masked_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Return the mean ``|pred − target|`` over valid pixels.

    Parameters
    ----------
    pred, target : Tensor (n, 1, h, w)
        Generated and target images (same units; sky σ for the cGAN's pairs).
    valid : Tensor of bool (n, 1, h, w)
        Pixels that count.

    Returns
    -------
    Tensor
        Scalar ≥ 0 in the images' units; 0 when no pixel is valid.
    """
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

    Raises
    ------
    ValueError
        If ``scale`` is outside ``[1, min(h, w)]`` or ``norm`` is unknown.
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
    precision: Literal["fp32", "bf16"] = "fp32",
) -> dict[str, float]:
    """Make one discriminator and one generator update on a batch.

    Parameters
    ----------
    generator : Generator
        The generator (put in ``train()`` mode).
    discriminator : Discriminator
        The discriminator (put in ``train()`` mode).
    opt_g, opt_d : torch.optim.Optimizer
        Their optimisers.
    x : Tensor (n, 1, h, w)
        Normalised single-exposure inputs (sky σ units).
    y : Tensor (n, 1, h, w)
        Normalised targets (stacks of the other exposures).
    valid : Tensor of bool (n, 1, h, w)
        Pixels that enter the losses and that the discriminator sees.
    l1_weight : float, optional
        λ of the L1 term. Default 100.
    flux_weight : float, optional
        μ of the flux term (0: measured only). Default 0.
    flux_scale : int, optional
        Box side of the flux term in px. Default 8.
    flux_norm : {"squared", "absolute"}, optional
        Norm of the flux term. Default ``"squared"``.
    precision : {"fp32", "bf16"}, optional
        Autocast the networks' forward passes to bfloat16 (``bf16``); the losses are
        computed in float32 either way. Default ``"fp32"``.

    Returns
    -------
    dict of str to float
        ``loss_d``, ``loss_g_adv``, ``loss_l1`` and ``loss_flux`` (:func:`masked_flux_loss`;
        measured, and part of the generator loss only when ``flux_weight > 0``).
    """
    generator.train()
    discriminator.train()

    def cast() -> Any:
        if precision == "bf16":
            return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    v = valid.to(x.dtype)
    with cast():
        fake = generator(x)
    fake = fake.float()
    real_d = y * v
    fake_d = fake * v

    # Discriminator.
    opt_d.zero_grad(set_to_none=True)
    with cast():
        logit_real = discriminator(x, real_d).float()
        logit_fake = discriminator(x, fake_d.detach()).float()
    loss_d = 0.5 * (
        F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
        + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
    )
    loss_d.backward()
    opt_d.step()

    # Generator.
    opt_g.zero_grad(set_to_none=True)
    with cast():
        logit_fake = discriminator(x, fake_d).float()
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

    The steps: check the pairs against the config (:func:`_check_pairs`), seed torch and
    NumPy with ``config.seed``, build both networks and their optimisers, then run the
    epochs (:func:`_train_epoch`: a fresh permutation of the pairs per epoch, one
    :func:`train_step` per batch).

    Parameters
    ----------
    pairs : CutoutPairs
        Normalised cutout pairs (units of the single frame's sky σ; sizes in px, multiples
        of ``2**generator.depth``).
    config : GanTrainConfig, optional
        Defaults to ``GanTrainConfig()``.

    Returns
    -------
    generator : Generator
        On CPU, in ``eval()`` mode.
    history : dict
        ``"epoch"``: per-epoch dicts of mean ``loss_d``, ``loss_g_adv``, ``loss_l1``,
        ``loss_flux``;
        ``"step"``: the same per batch; ``"config"``: the training config (JSON form);
        ``"n_pairs"``, ``"device"``, ``"precision"`` (the autocast precision in force).

    Raises
    ------
    ValueError
        If there are no pairs, the cutout size is not a multiple of ``2**depth`` or is
        smaller than ``flux_scale``.
    FloatingPointError
        If a loss becomes non-finite.
    RuntimeError
        If ``device="cuda"`` is asked for and torch sees no CUDA device.
    """
    config = config or GanTrainConfig()
    _check_pairs(pairs, config)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = Generator(config.generator).to(device)
    discriminator = Discriminator(config.discriminator).to(device)
    if precision == "bf16" and device.type == "cpu":  # oneDNN's fast bfloat16 layout
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    opt_g, opt_d = make_optimizers(generator, discriminator, config)

    data = (
        torch.from_numpy(np.ascontiguousarray(pairs.inputs, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(pairs.targets, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(pairs.valid, dtype=bool)),
    )
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
        "precision": precision,
    }
    show_bar = config.progress and is_terminal(sys.stderr)
    bar = tqdm(total=steps * config.epochs, desc="pix2pix", disable=not show_bar)
    try:
        for epoch in range(config.epochs):
            nets = (generator, discriminator, opt_g, opt_d)
            sums = _train_epoch(nets, data, config, epoch, steps, rng, device, history, bar)
            history["epoch"].append({"epoch": epoch, **{k: v / steps for k, v in sums.items()}})
            if config.progress:
                _print_epoch(history["epoch"][-1], config.epochs)
    finally:
        bar.close()
    # handed back in the standard layout, so that it equals its saved and reloaded copy
    return generator.cpu().to(memory_format=torch.contiguous_format).eval(), history


def _print_epoch(means: dict[str, float], epochs: int) -> None:
    """Print one epoch's mean losses as one line (above the bar, if one is drawn)."""
    tqdm.write(
        f"pix2pix epoch {means['epoch'] + 1}/{epochs}: l1 {means['loss_l1']:.4g}  "
        f"adv {means['loss_g_adv']:.4g}  flux {means['loss_flux']:.4g}  d {means['loss_d']:.3g}"
    )


def _check_pairs(pairs: CutoutPairs, config: GanTrainConfig) -> None:
    """Refuse an empty pair set and cutouts the networks or the flux term cannot take.

    Raises
    ------
    ValueError
        If there are no pairs, or the cutout size does not fit the generator or the flux term.
    """
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


def _train_epoch(
    nets: tuple[Generator, Discriminator, torch.optim.Optimizer, torch.optim.Optimizer],
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    config: GanTrainConfig,
    epoch: int,
    steps: int,
    rng: np.random.Generator,
    device: torch.device,
    history: dict[str, Any],
    bar: Any,
) -> dict[str, float]:
    """Make one pass over a fresh permutation of the pairs.

    Returns
    -------
    dict of str to float
        The losses summed over the epoch's steps.

    Raises
    ------
    FloatingPointError
        If a loss is not finite.
    """
    generator, discriminator, opt_g, opt_d = nets
    inputs, targets, valid = data
    order = rng.permutation(inputs.shape[0])
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
            history["precision"],
        )
        if not all(math.isfinite(val) for val in losses.values()):
            raise FloatingPointError(f"non-finite loss at epoch {epoch} step {s}: {losses}")
        history["step"].append({"epoch": epoch, "step": s, **losses})
        for k in sums:
            sums[k] += losses[k]
        bar.update(1)
        bar.set_postfix(l1=f"{losses['loss_l1']:.4g}", d=f"{losses['loss_d']:.3g}")
    return sums
