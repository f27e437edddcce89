"""``method: n2n``: Noise2Noise from a second noisy copy of each frame (every pixel a target).

The sampler must cut the target exactly where it cuts the image and normalise both alike;
frames without targets, or targets without the method, are refused; a small U-Net trained on
pairs of independent noisy copies must denoise an unseen copy and be saved in the ordinary
checkpoint format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pausdenoise.n2v.checkpoint import load_model
from pausdenoise.n2v.normalise import denormalise, frame_statistics, normalise
from pausdenoise.n2v.patches import Frame, PatchSampler, make_validation_set
from pausdenoise.n2v.train import TrainConfig, UNetSettings, train_n2v
from pausdenoise.n2v.unet import UNet, predict_array

torch.set_num_threads(1)
SIGMA = 10.0


def _clean(n: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth sky with 25 compact sources (ADU)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    clean = (100 + 30 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.float32)
    for cy, cx in rng.uniform(10, n - 10, (25, 2)):
        clean += 300 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
    return clean


def _copy(clean: np.ndarray, seed: int) -> np.ndarray:
    """One noisy exposure of ``clean`` (white Gaussian noise of σ = SIGMA ADU)."""
    rng = np.random.default_rng(seed)
    return clean + rng.normal(0, SIGMA, clean.shape).astype(np.float32)


def test_sampler_cuts_the_target_where_it_cuts_the_image() -> None:
    image = np.arange(96 * 96, dtype=np.float32).reshape(96, 96)
    target = image + 500.0
    target[:10, :] = np.nan  # no target on the top rows
    mask = np.zeros(image.shape, np.uint8)
    stats = frame_statistics(_copy(_clean(96), 1), mask)
    sampler = PatchSampler([Frame(image, mask, stats, "f", target)], 32, seed=3,
                           max_bad_fraction=1.0)
    x, bad, src = sampler.sample(40, return_sources=True)
    assert x.shape == (40, 2, 32, 32) and bad.shape == (40, 1, 32, 32)
    for k, (_, y0, x0) in enumerate(src):
        np.testing.assert_allclose(x[k, 0].numpy(), normalise(image, stats)[y0:y0 + 32,
                                                                            x0:x0 + 32])
        want = normalise(target, stats)[y0:y0 + 32, x0:x0 + 32]
        rows = np.arange(y0, y0 + 32) < 10
        got = x[k, 1].numpy()
        assert np.isnan(got[rows]).all()
        np.testing.assert_allclose(got[~rows], want[~rows], rtol=1e-6)
    # patches mostly without a target are skipped like patches of bad pixels
    strict = PatchSampler([Frame(image, mask, stats, "f", target)], 32, seed=3,
                          max_bad_fraction=0.25)
    _, _, src = strict.sample(40, return_sources=True)
    assert all(y0 >= 2 for _, y0, _ in src)  # ≤ 8 of 32 rows without a target
    val = make_validation_set([Frame(image, mask, stats, "f", target)], 8, 32, seed=1,
                              max_bad_fraction=1.0)
    assert val.inputs.shape == (8, 1, 32, 32)
    assert not torch.isnan(val.originals).any()
    assert torch.equal(val.targets, torch.isfinite(val.originals) & (val.originals != 0))


def test_targets_and_method_must_go_together() -> None:
    clean = _clean(96)
    image, mask = _copy(clean, 1), np.zeros(clean.shape, np.uint8)
    stats = frame_statistics(image, mask)
    with_t = Frame(image, mask, stats, "a", _copy(clean, 2))
    without = Frame(image, mask, stats, "b")
    cfg = TrainConfig(unet=UNetSettings(depth=1, base_channels=4, posterior="none"),
                      method="n2n", patch_size=32, batch_size=2, steps_per_epoch=1, epochs=1,
                      validation_patches=2, validation_fraction=0.4, num_threads=1)
    with pytest.raises(ValueError, match="every frame has a Noise2Noise target or none"):
        PatchSampler([with_t, without], 32)
    with pytest.raises(ValueError, match="needs a Noise2Noise target for every training"):
        train_n2v([without], cfg, progress=False)
    with pytest.raises(ValueError, match="carry Noise2Noise targets but method is 'n2v'"):
        train_n2v([with_t], cfg.model_copy(update={"method": "n2v"}), progress=False)
    with pytest.raises(ValueError, match="method 'n2n' trains the estimate itself"):
        TrainConfig(method="n2n", unet=UNetSettings(posterior="gaussian"))
    with pytest.raises(ValueError, match="target shape"):
        PatchSampler([Frame(image, mask, stats, "c", image[:50])], 32)


@pytest.mark.parametrize("head", [{"residual": False}, {"residual": True},
                                  {"residual": "gated"}, {"kernel_size": 5}])
def test_n2n_trains_a_plain_unet_that_denoises_an_unseen_exposure(tmp_path: Path,
                                                                   head: dict) -> None:
    clean = _clean()
    mask = np.zeros(clean.shape, np.uint8)
    frames = []
    for k in range(3):  # three exposures, each with the mean of the other two as target
        image = _copy(clean, 10 + k)
        others = [_copy(clean, 10 + j) for j in range(3) if j != k]
        frames.append(Frame(image, mask, frame_statistics(image, mask), f"e{k}",
                            np.mean(others, axis=0)))
    ckpt = tmp_path / "n2v.safetensors"
    cfg = TrainConfig(unet=UNetSettings(depth=2, base_channels=8, posterior="none", **head),
                      method="n2n", patch_size=64, batch_size=4, steps_per_epoch=10,
                      epochs=12, learning_rate=3e-3, validation_patches=16,
                      validation_fraction=0.25, device="cpu", num_threads=1)
    model, hist = train_n2v(frames, cfg, progress=False, checkpoint_path=ckpt)
    assert type(model) is UNet and model.config.posterior == "none"
    # validation loss = MSE to a target whose own noise is σ²/2: the untrained net is far above
    assert hist.best_val_loss < 0.6 * hist.initial_val_loss
    unseen = _copy(clean, 99)
    stats = frame_statistics(unseen, mask)
    x = torch.from_numpy(normalise(unseen, stats, mask))[None, None]
    out = denormalise(predict_array(model, x)[0, 0].numpy(), stats)
    rms_out = float(np.sqrt(np.mean((out - clean) ** 2)))
    assert rms_out < 0.6 * SIGMA
    loaded, meta = load_model(ckpt)
    with torch.no_grad():
        assert torch.equal(predict_array(loaded, x), predict_array(model, x))
    assert meta["provenance"]["train_config"]["method"] == "n2n"
    assert loaded.config.residual == head.get("residual", False)
    assert loaded.config.kernel_size == head.get("kernel_size", 0)


def test_n2n_loss_takes_the_poisson_weight() -> None:
    """``loss_weighting: poisson`` weighs each squared error by 1 / (1 + max(ŷ, 0) / scale)."""
    from types import SimpleNamespace

    from pausdenoise.n2v.train import _n2n_step_loss

    torch.manual_seed(0)
    net = UNet(UNetSettings(depth=2, base_channels=8, posterior="none").to_unet_config())
    image = torch.randn(2, 1, 32, 32)
    image[0, 0, 10:14, 10:14] += 200.0  # a bright star: its output is large
    target = image + torch.randn_like(image)
    target[1, 0, :4] = float("nan")  # no target on those rows
    x = torch.cat([image, target], dim=1)
    bad = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    bad[0, 0, 0, 0] = True
    with torch.no_grad():
        out = net(image)
    use = torch.isfinite(target) & ~bad
    sq = (out - torch.nan_to_num(target))[use] ** 2
    losses = {}
    for weighting in ("none", "poisson"):
        cfg = TrainConfig(unet=UNetSettings(posterior="none"), method="n2n",
                          loss_weighting=weighting, poisson_scale=5.0)
        run = SimpleNamespace(cfg=cfg, net=net, device=torch.device("cpu"),
                              amp_dtype=torch.bfloat16, use_amp=False)
        with torch.no_grad():
            losses[weighting] = float(_n2n_step_loss(run, x, bad))
    w = 1.0 / (1.0 + out.clamp(min=0.0)[use] / 5.0)
    assert losses["none"] == pytest.approx(float(sq.mean()), rel=1e-5)
    assert losses["poisson"] == pytest.approx(float((w * sq).mean()), rel=1e-5)
    assert losses["poisson"] < 0.9 * losses["none"]
