"""Shared makers for the denoise tests: tiny random U-Nets, synthetic frames and the
whole-image reference every tiled result is compared with."""

from __future__ import annotations

import numpy as np
import torch

from pausdenoise.denoise.model import ModelRef, get_model
from pausdenoise.n2v.normalise import FrameStats, normalise
from pausdenoise.n2v.unet import UNet, UNetConfig, predict_array

torch.set_num_threads(1)

SKY, SIGMA = 100.0, 10.0  # ADU
TOL = 1e-5  # in units of σ


def assert_matches(got_adu: np.ndarray, ref_sigma: np.ndarray, stats: FrameStats) -> None:
    """``got`` (ADU) equals the whole-image network output ``ref`` (σ units) to 1e-5 σ.

    The output is stored as float32 ADU, whose spacing near bright pixels (a star of
    4000 ADU: 2.4e-4 ADU) can exceed 1e-5 σ; a few float32 spacings of the value are
    therefore allowed on top, which is the best any float32 ADU output can do.
    """
    ref_adu = ref_sigma.astype(np.float64) * stats.sigma + stats.sky
    spacing = np.spacing(np.abs(ref_adu).astype(np.float32)).astype(np.float64)
    excess = np.abs(got_adu - ref_adu) - (TOL * stats.sigma + 4 * spacing)
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess.max() <= 0, (
        f"max |diff| {np.abs(got_adu - ref_adu).max() / stats.sigma:.3g} σ at {worst}"
    )


# --------------------------------------------------------------------------- helpers


def random_unet(depth: int, channels: int, n2v2: bool, seed: int,
                posterior: str = "none", kernel_size: int = 0) -> UNet:
    """A tiny eval-mode U-Net with random weights and random BatchNorm statistics, its head
    scaled so the output varies by ~1 σ over a noise image (a meaningful comparison);
    ``kernel_size`` > 0 gives it a kernel-prediction head."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(depth=depth, base_channels=channels, n2v2=n2v2,
                            posterior=posterior, kernel_size=kernel_size))
    g = torch.Generator().manual_seed(seed + 1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            mod.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            mod.weight.data.copy_(1 + 0.3 * torch.randn(n, generator=g))
            mod.bias.data.copy_(0.1 + 0.1 * torch.randn(n, generator=g))
    model.eval()
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 1, 64, 64)))
    with torch.no_grad():
        spread = float(predict_array(model, x.float()).std())
        if spread > 0:  # bounded: a nearly dead random net is not blown up to huge outputs
            model.head.weight.mul_(min(20.0, 1.0 / spread))
    return model


def make_image(ny: int, nx: int, seed: int = 0, n_stars: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = SKY + SIGMA * rng.standard_normal((ny, nx))
    yy, xx = np.mgrid[:ny, :nx]
    for _ in range(n_stars):
        y0, x0 = rng.uniform(0, ny), rng.uniform(0, nx)
        img += rng.uniform(50, 500) * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / 4.0)
    return img.astype(np.float32)


def whole_image(model: UNet, img: np.ndarray, stats: FrameStats, mask=None) -> np.ndarray:
    """Whole-image inference in normalised units (σ) – the reference – through the network
    the denoise stage runs on CPU (:func:`pausdenoise.denoise.model.get_model`: the
    optimised copy unless ``PAUSDENOISE_CPU_OPTIMISE=0``), so chunked and whole image share
    one code path; the optimised copy against the eager network is tested on its own in
    ``test_denoise_model.py``."""
    x = torch.from_numpy(normalise(img, stats, mask))[None, None]
    return predict_array(get_model(ModelRef.from_model(model), "cpu"), x)[0, 0].numpy()


def in_sigma(out_adu: np.ndarray, stats: FrameStats) -> np.ndarray:
    return (out_adu.astype(np.float64) - stats.sky) / stats.sigma

