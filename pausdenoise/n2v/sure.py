"""Stein's unbiased risk estimate (SURE) as a self-supervised loss in which every pixel is a target.

A blind-spot loss supervises the masked pixels of a patch only (0.5 % of them by default).
With a noise model, Stein's lemma gives the mean squared error to the unknown truth ``s`` of
*any* estimate ``f(y)`` of the noisy patch ``y = s + n`` (independent Gaussian noise of
variance ``v_i`` per pixel) from ``y`` alone (Stein 1981; as a network loss, Metzler et al.
2018, Soltanayev & Chun 2018):

``E Σ (f_i − s_i)² = E Σ [(f_i − y_i)² − v_i + 2 v_i ∂f_i/∂y_i]``.

The divergence is estimated by Monte Carlo (Ramani et al. 2008): with ``b`` standard normal
per pixel, ``∂f_i/∂y_i ≈ b_i (f_i(y + ε b) − f_i(y)) / ε`` (unbiased in expectation over ``b``
as ε → 0), one extra forward pass. So a plain U-Net learns the minimum-MSE estimate on every
pixel of every patch, without masking, and is run at inference as it is trained (no blind
spot, no posterior head).

Units: normalised, ``(ADU − sky) / σ`` with σ the frame's robust spread; the noise model is
the U-Net's, ``v = sky_variance + max(f, 0) / noise_scale`` (``sky_variance`` 1 where σ is
the noise, less on crowded fields; ``noise_scale`` = gain · σ in electrons), evaluated on
the detached estimate, or with each patch's own frame's values where the frames carry them
(:class:`~pausdenoise.n2v.patches.FrameNoise`, ``train.noise_per_frame``): on a crowded
field σ, and with it the normalised noise, differs from frame to frame (7× between the SAAO
exposures), though there the median value scored as well. SURE needs it right: an
overestimated ``v`` makes the loss reward removing signal as if it were noise. Each pixel's
term is divided by its ``v`` (the χ² form), so that stars, whose squared errors are 10²–10⁴
times a sky pixel's, do not dominate the gradient; the weight depends on ``y`` only through
the detached estimate, which keeps the loss's minimiser the conditional mean up to that
approximation. Bad pixels (0 in the patches, flagged by the sampler) take no part. The noise
must be independent between pixels: on frames with correlated noise the divergence term
undercounts how much of the noise the estimate keeps.
"""

from __future__ import annotations

import torch

from pausdenoise.n2v.unet import poisson_noise_variance

__all__ = ["DEFAULT_EPSILON", "VALIDATION_SEED", "noise_variance", "sure_loss",
           "sure_validation_loss"]

#: Step ε of the Monte-Carlo divergence (normalised units, 1 = the frame's robust σ).
DEFAULT_EPSILON = 0.01
#: Seed of the validation probe (the same ``b`` at every epoch, so epochs compare).
VALIDATION_SEED = 7907


def sure_loss(
    net: torch.nn.Module,
    model: torch.nn.Module,
    y: torch.Tensor,
    good: torch.Tensor,
    epsilon: float = DEFAULT_EPSILON,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pixel SURE of the network's estimate, χ²-weighted, averaged over good pixels.

    Parameters
    ----------
    net : torch.nn.Module
        The module to run (the U-Net, or its DDP wrapper); its output is the estimate.
    model : torch.nn.Module
        The bare :class:`~pausdenoise.n2v.unet.UNet` (its ``noise_variance``).
    y : Tensor (n, 1, P, P)
        Noisy patches, normalised units.
    good : bool Tensor (n, 1, P, P)
        Pixels that enter the loss (the others are not perturbed either).
    epsilon : float
        ε of the Monte-Carlo divergence (normalised units).
    generator : torch.Generator, optional
        Source of the probe ``b`` (on ``y``'s device).
    noise : Tensor (n, 2), optional
        Each patch's own noise model ``[sky_variance, noise_scale]`` (its frame's,
        :class:`~pausdenoise.n2v.patches.FrameNoise`); rows of NaN, or None, take the
        network's (:func:`noise_variance`).

    Returns
    -------
    Tensor
        Scalar float32: the mean over good pixels of
        ``[(f − y)² − v + 2 v b (f(y + ε b) − f(y)) / ε] / v``, an estimate of the mean of
        ``(f − s)² / v``: 1 for the identity map (the raw noise), below 1 for an estimate
        closer to the truth than the raw pixels.
    """
    g = good.to(torch.bool)
    b = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    b = torch.where(g, b, torch.zeros_like(b))
    f = net(y).float()
    f_probe = net(y + float(epsilon) * b).float()
    v = noise_variance(model, f.detach(), noise)
    div = b.float() * (f_probe - f) / float(epsilon)
    term = (f - y.float()).square() / v - 1.0 + 2.0 * div
    term = torch.where(g, term, torch.zeros_like(term))
    return term.sum() / g.sum().to(term.dtype).clamp(min=1.0)


def noise_variance(model: torch.nn.Module, signal: torch.Tensor,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """Noise variance of pixels ``signal`` σ above the sky, per patch where it is known.

    Parameters
    ----------
    model : torch.nn.Module
        The bare U-Net: its ``noise_variance``, one noise model for every patch.
    signal : Tensor (n, 1, P, P)
        Source signal above the sky, normalised units.
    noise : Tensor (n, 2), optional
        Per patch ``[sky_variance, noise_scale]``: ``sky_variance + max(signal, 0) /
        noise_scale`` where the row is finite, the network's elsewhere.

    Returns
    -------
    Tensor (n, 1, P, P)
        The variance, normalised units squared.
    """
    v = model.noise_variance(signal)
    if noise is None:
        return v
    nz = noise.to(device=signal.device, dtype=signal.dtype)
    own = poisson_noise_variance(signal, nz[:, 0].view(-1, 1, 1, 1), nz[:, 1].view(-1, 1, 1, 1))
    return torch.where(torch.isfinite(own), own, v)


def sure_validation_loss(model: torch.nn.Module, originals: torch.Tensor,
                         batch_size: int = 64, epsilon: float = DEFAULT_EPSILON,
                         noise: torch.Tensor | None = None) -> float:
    """SURE of a network on fixed validation patches, with a fixed probe.

    Parameters
    ----------
    model : torch.nn.Module
        The bare U-Net (or its weight average), run without gradients in eval mode.
    originals : Tensor (n, 1, P, P)
        Unmasked validation patches, normalised units; pixels exactly 0 (bad pixels, as the
        patch reader writes them) take no part.
    batch_size : int
        Patches per forward pass.
    epsilon : float
        ε of the Monte-Carlo divergence.
    noise : Tensor (n, 2), optional
        Each patch's noise model (:func:`sure_loss`).

    Returns
    -------
    float
        The pixel-weighted mean of :func:`sure_loss` over the set (≈ MSE / noise variance).
    """
    gen = torch.Generator(device=originals.device)
    gen.manual_seed(VALIDATION_SEED)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, originals.shape[0], batch_size):
            y = originals[i:i + batch_size]
            good = y != 0
            k = int(good.sum())
            nz = None if noise is None else noise[i:i + batch_size]
            total += float(sure_loss(model, model, y, good, epsilon, gen, nz)) * k
            n += k
    model.train(was_training)
    return total / max(n, 1)
