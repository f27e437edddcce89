"""``method: sure``: Stein's unbiased risk estimate as the training loss (every pixel a target).

The loss is checked against the true squared error of fixed estimates (identity, zero,
box blurs) on pure white noise and on a noisy smooth image, then a small U-Net trained on it
must denoise a synthetic frame and be saved in the ordinary checkpoint format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pausdenoise.n2v.checkpoint import load_model
from pausdenoise.n2v.normalise import denormalise, frame_statistics, normalise
from pausdenoise.n2v.patches import Frame, FrameNoise, PatchSampler, make_validation_set
from pausdenoise.n2v.sure import noise_variance, sure_loss, sure_validation_loss
from pausdenoise.n2v.train import TrainConfig, UNetSettings, train_n2v
from pausdenoise.n2v.unet import UNet, predict_array

torch.set_num_threads(1)


class FixedFilter(torch.nn.Module):
    """A fixed k × k box blur (k = 1: the identity; weight 0: the zero map), noise variance 1."""

    def __init__(self, k: int, weight: float = 1.0) -> None:
        super().__init__()
        self.k, self.weight = k, weight

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """The filtered patches (reflected edges)."""
        p = self.k // 2
        out = F.avg_pool2d(F.pad(y, (p, p, p, p), mode="reflect"), self.k, stride=1)
        return self.weight * out

    def noise_variance(self, signal: torch.Tensor) -> torch.Tensor:
        """White noise of unit variance."""
        return torch.ones_like(signal)


def _smooth(n: int = 16, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    phase = torch.rand(n, 1, 1, 1, generator=g) * 6.28
    s = 3.0 * torch.sin(xx / 6.0 + phase) * torch.cos(yy / 5.0)
    return s, s + torch.randn(s.shape, generator=g)


@pytest.mark.parametrize("k, weight", [(1, 1.0), (1, 0.0), (3, 1.0), (5, 1.0)])
def test_sure_matches_the_true_squared_error_of_fixed_estimates(k: int, weight: float) -> None:
    s, y = _smooth()
    f = FixedFilter(k, weight)
    good = torch.ones_like(y, dtype=torch.bool)
    est = float(sure_loss(f, f, y, good, generator=torch.Generator().manual_seed(1)))
    true = float((f(y) - s).square().mean())
    # 65,536 pixels: the estimate's scatter is ~1 % of the noise variance
    assert est == pytest.approx(true, abs=0.03 + 0.03 * true)


def test_bad_pixels_take_no_part_and_the_validation_probe_is_fixed() -> None:
    _, y = _smooth(n=4)
    f = FixedFilter(3)
    good = torch.ones_like(y, dtype=torch.bool)
    good[:, :, :8] = False
    y_bad = torch.where(good, y, torch.full_like(y, 1e6))
    gen = torch.Generator().manual_seed(3)
    a = float(sure_loss(FixedFilter(1), FixedFilter(1), y_bad, good, generator=gen))
    assert a == pytest.approx(1.0, abs=0.05)  # the identity keeps all the noise
    net = UNet(TrainConfig().unet.to_unet_config())
    v1, v2 = sure_validation_loss(net, y), sure_validation_loss(net, y)
    assert v1 == v2 and np.isfinite(v1)
    assert float(sure_loss(f, f, y, good)) < 0.6  # a 3x3 blur beats the raw noise here


def test_sure_needs_a_network_without_posterior_head() -> None:
    with pytest.raises(ValueError, match="method 'sure'"):
        TrainConfig(method="sure", unet=UNetSettings(posterior="gaussian"))


def _frame(seed: int = 0, n: int = 192, sigma: float = 10.0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    clean = (100 + 30 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.float32)
    for cy, cx in rng.uniform(10, n - 10, (25, 2)):  # compact sources
        clean += 300 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    return noisy, clean, np.zeros((n, n), np.uint8)


def test_sure_method_trains_a_plain_unet_that_denoises(tmp_path: Path) -> None:
    noisy, clean, mask = _frame()
    stats = frame_statistics(noisy, mask)
    ckpt = tmp_path / "n2v.safetensors"
    cfg = TrainConfig(unet=UNetSettings(depth=2, base_channels=8, posterior="none"),
                      method="sure", patch_size=64, batch_size=4, steps_per_epoch=10,
                      epochs=12, learning_rate=3e-3, validation_patches=16,
                      validation_fraction=0.25, device="cpu", num_threads=1,
                      poisson_scale=1e6, sky_variance=(10.0 / stats.sigma) ** 2)
    model, hist = train_n2v([(noisy, mask, stats, "f0")], cfg, progress=False,
                            checkpoint_path=ckpt)
    assert type(model) is UNet and model.config.posterior == "none"
    # the validation loss estimates MSE / noise variance: the untrained net is far above 1
    assert hist.best_val_loss < 0.5 < hist.initial_val_loss
    x = torch.from_numpy(normalise(noisy, stats, mask))[None, None]
    out = denormalise(predict_array(model, x)[0, 0].numpy(), stats)
    rms_out = float(np.sqrt(np.mean((out - clean) ** 2)))
    rms_noise = float(np.sqrt(np.mean((noisy - clean) ** 2)))
    assert rms_out < 0.6 * rms_noise
    # on the whole frame the loss tells the trained network's true squared error (in units
    # of the noise variance) without the truth
    model.eval()
    with torch.no_grad():
        est = float(sure_loss(model, model, x, torch.ones_like(x, dtype=torch.bool)))
    assert est == pytest.approx((rms_out / rms_noise) ** 2, rel=0.15)
    loaded, meta = load_model(ckpt)
    with torch.no_grad():
        assert torch.equal(predict_array(loaded, x), predict_array(model, x))
    assert meta["provenance"]["train_config"]["method"] == "sure"


class UnitNoiseBlur(FixedFilter):
    """A 3 × 3 box blur whose own noise model is wrong (variance 1 for every patch)."""


def test_each_patch_takes_its_own_noise_model() -> None:
    # two frames normalised by a spread that is not their noise: variances 0.25 and 4
    s, y = _smooth(n=16)
    var = torch.where(torch.arange(16).view(-1, 1, 1, 1) < 8, 0.25, 4.0)
    y = s + (y - s) * var.sqrt()
    f = UnitNoiseBlur(3)
    good = torch.ones_like(y, dtype=torch.bool)
    noise = torch.stack([var.view(-1), torch.full((16,), 1e9)], dim=1)
    true = float(((f(y) - s).square() / var).mean())
    gen = torch.Generator().manual_seed(1)
    own = float(sure_loss(f, f, y, good, generator=gen, noise=noise))
    assert own == pytest.approx(true, abs=0.05 + 0.03 * true)
    # one model for all (the network's variance 1) misjudges the blur on both halves
    gen = torch.Generator().manual_seed(1)
    one = float(sure_loss(f, f, y, good, generator=gen))
    assert abs(one - true) > 0.3
    # a row of NaN falls back to the network's model
    nan = noise.clone()
    nan[8:] = float("nan")
    v = noise_variance(f, torch.zeros_like(y), nan)
    assert torch.all(v[:8] == 0.25) and torch.all(v[8:] == 1.0)


def test_the_sampler_gives_each_patch_its_frame_noise_model() -> None:
    noisy, _, mask = _frame()
    stats = frame_statistics(noisy, mask)
    plain = [Frame(noisy, mask, stats, "a"), Frame(noisy, mask, stats, "b")]
    sampler = PatchSampler(plain, 32, seed=0)
    assert sampler.noise_of(sampler.sample(4, return_sources=True)[2]) is None
    frames = [Frame(noisy, mask, stats, "a", noise=FrameNoise(0.5, 100.0)),
              Frame(noisy, mask, stats, "b")]
    sampler = PatchSampler(frames, 32, seed=0)
    _, _, src = sampler.sample(40, return_sources=True)
    noise = sampler.noise_of(src).numpy()
    own = np.array([k == 0 for k, _, _ in src])
    assert own.any() and (~own).any()
    np.testing.assert_array_equal(noise[own], [[0.5, 100.0]] * int(own.sum()))
    assert np.isnan(noise[~own]).all()
    val = make_validation_set(frames, 8, 32, seed=3)
    assert val.noise is not None and val.noise.shape == (8, 2)


def test_sure_training_uses_the_frames_noise_models_when_told_to() -> None:
    noisy, _, mask = _frame()
    stats = frame_statistics(noisy, mask)
    cfg = TrainConfig(unet=UNetSettings(depth=1, base_channels=4, posterior="none"),
                      method="sure", patch_size=32, batch_size=4, steps_per_epoch=2,
                      epochs=1, validation_patches=8, device="cpu", num_threads=1,
                      poisson_scale=1e6, sky_variance=100.0, noise_per_frame=True)

    def history(noise: FrameNoise | None, **kw):
        frames = [Frame(noisy, mask, stats, "f0", noise=noise)]
        return train_n2v(frames, cfg.model_copy(update=kw), progress=False)[1]

    network = history(None)
    # a frame model equal to the network's changes nothing; another one changes the
    # validation and the training losses, unless noise_per_frame is off
    same = history(FrameNoise(100.0, 1e6))
    own = history(FrameNoise((10.0 / stats.sigma) ** 2, 1e6))
    off = history(FrameNoise((10.0 / stats.sigma) ** 2, 1e6), noise_per_frame=False)
    assert same.initial_val_loss == network.initial_val_loss == off.initial_val_loss
    assert same.train_loss == network.train_loss == off.train_loss
    # the frame's true noise (far below the network's 100) makes the untrained network's
    # kept noise count: its SURE per noise variance rises
    assert own.initial_val_loss > network.initial_val_loss + 1.0
    assert own.train_loss[0] > network.train_loss[0] + 1.0
