"""A blind-spot network in which every pixel is a training target (Laine et al. 2019).

Masked Noise2Void (:mod:`pausdenoise.n2v.masking`) hides a few pixels per patch (0.5 % by
default: ~21 targets in a 64² patch) and learns from those alone; the rest of each
forward/backward pass is spent on pixels that teach nothing. :class:`BlindSpotNet` is built so
that its output at a pixel *cannot* depend on that pixel's own value, so the loss can be
taken over every pixel of the patch at once: about 200 times more targets per patch, for
about four times the cost of a forward pass.

Construction
------------
Four copies of the input, rotated by 0°, 90°, 180° and 270°, go through one U-Net branch
(shared weights) whose receptive field is restricted to the half-plane *above* each output
pixel:

- every 3×3 convolution sees the rows ``y − 2 … y`` of its input (the input is padded with two
  rows at the top and none at the bottom: a convolution followed by a shift down by one row);
- before each 2×2 max-pool the features are shifted down by one row, so that a coarse pixel
  never sees a fine row below the top row of its cell;
- up-sampling is nearest-neighbour (bilinear would reach one coarse row down);
- at the end the features are shifted down by ``1 + blind_radius`` rows.

So a branch's output at ``(y, x)`` depends only on input rows ``≤ y − 1 − r``. Rotated back,
the four branches see the half-planes above, left of, below and right of the pixel; their
features are concatenated and mixed by 1×1 convolutions, which adds no spatial reach. The
union of the four fields is every pixel except the ``(2r + 1)²`` square centred on the
output pixel (``r = blind_radius``): ``r = 0`` hides the pixel alone (white noise), ``r = 1``
its 3×3 neighbourhood (for noise correlated between neighbouring pixels, where the
neighbours would betray the pixel's own noise). ``tests/n2v/test_blindspot.py`` checks
with autograd that the output's gradient with respect to the hidden square is exactly zero
and non-zero just outside it.

Use
---
The network costs ~4× a plain U-Net of the same width at inference, so it is used as a
*teacher* (:mod:`pausdenoise.n2v.train`, ``method: blindspot``): in every training step it
takes its own loss over all good pixels and the plain U-Net (the *student*, which is what
is saved, tiled and run on the survey) is fitted to the teacher's output on the same
unmasked patch (:func:`distillation_loss`). The student sees the pixel itself, but its target
is a function of the context only, so the best student is the teacher and the pixel's own
noise cannot be learned. With ``posterior: gaussian`` the teacher predicts a Gaussian prior
(mean, variance) from the context; the student learns both maps and combines them with the
observed pixel at inference exactly as a masked-N2V posterior network does.

Normalised units (``(ADU − sky) / σ_sky``) throughout, as in :mod:`pausdenoise.n2v.normalise`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pausdenoise.n2v.unet import UNet, UNetConfig

__all__ = [
    "BlindSpotNet",
    "all_pixel_offset",
    "distillation_loss",
    "distillation_validation_loss",
]


SKY_LIMIT = 3.0
"""Largest predicted |mean| (normalised units, σ of the sky) of a pixel in the offset refit."""


def shift_down(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Shift a ``(N, C, H, W)`` map down by ``rows`` rows, zero-filling the top.

    Parameters
    ----------
    x : Tensor (N, C, H, W)
        The map.
    rows : int
        Rows to shift, ≥ 0.

    Returns
    -------
    Tensor (N, C, H, W)
        ``out[..., y, :] = x[..., y − rows, :]`` (0 for ``y < rows``).
    """
    if rows <= 0:
        return x
    return F.pad(x, (0, 0, rows, 0))[..., : x.shape[-2], :]


class _UpwardConv(nn.Module):
    """3×3 convolution whose output row ``y`` sees input rows ``y − 2 … y`` only."""

    def __init__(self, c_in: int, c_out: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=0)
        self.norm = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(F.pad(x, (1, 1, 2, 0)))))


class _UpwardBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, batch_norm: bool) -> None:
        super().__init__(_UpwardConv(c_in, c_out, batch_norm),
                         _UpwardConv(c_out, c_out, batch_norm))


class _UpwardUNet(nn.Module):
    """A U-Net branch whose output at row ``y`` depends on input rows ``≤ y`` only."""

    def __init__(self, depth: int, base_channels: int, c_in: int, batch_norm: bool) -> None:
        super().__init__()
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        c_prev = c_in
        for level in range(depth):
            self.encoders.append(_UpwardBlock(c_prev, chans[level], batch_norm))
            c_prev = chans[level]
        self.bottleneck = _UpwardBlock(c_prev, chans[depth], batch_norm)
        self.decoders = nn.ModuleList()
        c_prev = chans[depth]
        for level in reversed(range(depth)):
            self.decoders.append(_UpwardBlock(c_prev + chans[level], chans[level], batch_norm))
            c_prev = chans[level]
        self.out_channels = c_prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = F.max_pool2d(shift_down(x, 1), 2)
        x = self.bottleneck(x)
        for dec, skip in zip(self.decoders, reversed(skips), strict=True):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = dec(torch.cat([x, skip], dim=1))
        return x


class BlindSpotNet(nn.Module):
    """Four rotated half-plane U-Net branches: a network blind to each output's own pixel.

    Parameters
    ----------
    config : UNetConfig
        Depth, width, batch normalisation, head (``posterior``) and noise model, as for
        :class:`UNet` (``n2v2`` is not used). In training mode batch normalisation mixes
        every pixel of the batch into every output through the batch mean and variance,
        the hidden pixel with a weight of 1 / (pixels in the batch) (6e-5 for 16 patches of
        64²); in eval mode it is a fixed affine map and the blindness is exact.
    blind_radius : int
        Half-width (px) of the hidden square around each output pixel; 0 hides the pixel
        alone.

    Notes
    -----
    :meth:`prior`, :meth:`noise_variance`, :meth:`posterior_mean` and :meth:`infer` are
    :class:`UNet`'s, so losses and inference treat both networks alike.
    """

    prior = UNet.prior
    noise_variance = UNet.noise_variance
    posterior_mean = UNet.posterior_mean
    infer = UNet.infer

    def __init__(self, config: UNetConfig | None = None, blind_radius: int = 0) -> None:
        super().__init__()
        if blind_radius < 0:
            raise ValueError(f"blind_radius must be >= 0, got {blind_radius}")
        self.config = config or UNetConfig()
        self.blind_radius = int(blind_radius)
        cfg = self.config
        self.branch = _UpwardUNet(cfg.depth, cfg.base_channels, cfg.in_channels, cfg.batch_norm)
        c = self.branch.out_channels
        self.mix = nn.Sequential(
            nn.Conv2d(4 * c, 2 * c, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(2 * c, c, 1),
            nn.LeakyReLU(0.1),
        )
        self.head = nn.Conv2d(c, cfg.head_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the raw output, blind to the ``(2r + 1)²`` square around each pixel.

        Parameters
        ----------
        x : Tensor (N, C, H, W)
            Normalised images; ``H, W`` multiples of ``2**depth``.

        Returns
        -------
        Tensor (N, head_channels, H, W)
            As :meth:`UNet.forward`.

        Raises
        ------
        ValueError
            If ``H`` or ``W`` is not a multiple of ``2**depth``.
        """
        m = self.config.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of 2**depth = {m}"
            )
        shift = 1 + self.blind_radius
        if x.shape[-1] == x.shape[-2]:  # one batched pass over the four rotations
            n = x.shape[0]
            rotated = torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)])
            feats = shift_down(self.branch(rotated), shift)
            parts = [torch.rot90(feats[k * n:(k + 1) * n], -k, (2, 3)) for k in range(4)]
        else:
            parts = [
                torch.rot90(shift_down(self.branch(torch.rot90(x, k, (2, 3))), shift), -k, (2, 3))
                for k in range(4)
            ]
        return self.head(self.mix(torch.cat(parts, dim=1)))


def distillation_loss(student: UNet, student_out: torch.Tensor,
                      teacher_out: torch.Tensor) -> torch.Tensor:
    """Return the loss that fits the student's raw output to the teacher's, on every pixel.

    Plain networks: the mean squared difference of the outputs. Gaussian-posterior networks:
    what matters at inference is the posterior mean ``x̂ = μ + w (y − μ)`` with the weight
    ``w = σ_p² / (σ_p² + σ_n²)`` given to the observation ``y``; the loss is the mean of
    ``(μ_s − μ_t)² + (w_s − w_t)² (σ_p,t² + σ_n,t²)``, the expected squared difference of
    the two posterior means over the observation's spread (to first order). Variances are
    not compared directly: where the prior is sharp the teacher's ``σ_p²`` sits at the
    floor (1e-4) and any ratio there is irrelevant to ``x̂``.

    Parameters
    ----------
    student : UNet
        The student (its ``config.posterior`` decides the form).
    student_out, teacher_out : Tensor (N, head_channels, H, W)
        Raw outputs for the same input; the teacher's is detached here.

    Returns
    -------
    Tensor
        Scalar float32 loss (normalised units squared).
    """
    t = teacher_out.detach().float()
    s = student_out.float()
    if student.config.posterior == "none":
        return (s - t).square().mean()
    mean_s, var_s = student.prior(s)
    mean_t, var_t = student.prior(t)
    noise_t = student.noise_variance(mean_t)
    w_s = var_s / (var_s + student.noise_variance(mean_s.detach()))
    w_t = var_t / (var_t + noise_t)
    return ((mean_s - mean_t).square() + (w_s - w_t).square() * (var_t + noise_t)).mean()


@torch.no_grad()
def distillation_validation_loss(student: UNet, teacher: nn.Module, originals: torch.Tensor,
                                 batch_size: int = 64) -> float:
    """Return the mean :func:`distillation_loss` over held-out unmasked patches.

    Both networks are switched to eval mode and back.

    Parameters
    ----------
    student : UNet
        The student.
    teacher : torch.nn.Module
        The (frozen) teacher.
    originals : Tensor (n, 1, P, P)
        Held-out normalised patches.
    batch_size : int, optional
        Patches per forward pass. Default 64.

    Returns
    -------
    float
        The loss, normalised units squared.
    """
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    total = 0.0
    try:
        for i in range(0, originals.shape[0], batch_size):
            y = originals[i:i + batch_size]
            total += float(distillation_loss(student, student(y), teacher(y))) * y.shape[0]
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    return total / max(originals.shape[0], 1)


@torch.no_grad()
def all_pixel_offset(model: nn.Module, originals: torch.Tensor, batch_size: int = 64,
                     sky_limit: float = SKY_LIMIT) -> float:
    """Maximum-likelihood shift of a network's (prior-)mean output on the sky.

    ``δ = Σ (y − μ)/v / Σ 1/v`` over the pixels of ``originals`` that are not exactly 0
    (bad pixels are set to 0 by the patch reader) and whose predicted mean is sky-like,
    ``|μ| < sky_limit``, and whose residual is within 5 σ, ``(y − μ)² / v < 25`` (cosmic
    rays, stars the network has not learned yet; a 5 σ cut shifts the mean of Gaussian
    noise by < 1e-5 σ), with ``v = 1`` for a plain network and ``σ_p² + σ_n²`` for a
    Gaussian-posterior one, the network run on the *unmasked* patches. The offset being
    refitted is the sky level's; with every pixel a target, a network that is not yet
    converged on bright stars (residuals of 10³ σ) would otherwise set ``δ`` (measured:
    +1 to +5 σ on crowded real frames after a short training). Exact for a blind-spot
    network; for a student distilled from one, ``μ`` depends on the pixel itself only as
    far as the student failed to match its teacher.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`BlindSpotNet` or a :class:`UNet` (switched to eval mode and back).
    originals : Tensor (n, 1, P, P)
        Held-out normalised patches, sampled the way the survey is.
    batch_size : int, optional
        Patches per forward pass. Default 64.
    sky_limit : float, optional
        Largest ``|μ|`` (normalised units) of the pixels used. Default :data:`SKY_LIMIT`.

    Returns
    -------
    float
        ``δ`` in normalised units; 0 when there is no such pixel.
    """
    was_training = model.training
    model.eval()
    num = torch.zeros((), dtype=torch.float64)
    den = torch.zeros((), dtype=torch.float64)
    try:
        for i in range(0, originals.shape[0], batch_size):
            y = originals[i:i + batch_size]
            out = model(y)
            if model.config.posterior == "gaussian":
                mean, var_p = model.prior(out)
                inv = 1.0 / (var_p + model.noise_variance(mean))
            else:
                mean, inv = out.float(), torch.ones_like(out, dtype=torch.float32)
            resid = y.float() - mean
            good = (y != 0) & (mean.abs() < sky_limit) & (resid.square() * inv < 25.0)
            num += torch.where(good, resid * inv, 0.0).sum().double().cpu()
            den += torch.where(good, inv, 0.0).sum().double().cpu()
    finally:
        model.train(was_training)
    return float(num / den) if float(den) > 0 else 0.0
