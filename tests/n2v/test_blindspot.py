"""The blind-spot teacher (its field excludes the hidden square exactly) and ``method:
blindspot`` training (every pixel a target, distilled into the plain U-Net), plus the
training-time budget and the per-epoch callback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pausdenoise.n2v.blindspot import BlindSpotNet, all_pixel_offset, distillation_loss
from pausdenoise.n2v.checkpoint import load_model
from pausdenoise.n2v.config import BlindSpotSettings
from pausdenoise.n2v.normalise import denormalise, frame_statistics, normalise
from pausdenoise.n2v.train import TrainConfig, UNetSettings, calibrate_offset, train_n2v
from pausdenoise.n2v.unet import UNet, UNetConfig, predict_array

torch.set_num_threads(1)


@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("shape", [(32, 32), (32, 48)])
def test_output_is_blind_to_exactly_the_hidden_square(radius: int, shape) -> None:
    torch.manual_seed(radius)
    net = BlindSpotNet(UNetConfig(depth=2, base_channels=4), blind_radius=radius).eval()
    x = torch.randn(1, 1, *shape, requires_grad=True)
    y, xc = 15, 21
    net(x)[0, 0, y, xc].backward()
    g = x.grad[0, 0].abs()
    hidden = g[y - radius:y + radius + 1, xc - radius:xc + radius + 1]
    assert float(hidden.max()) == 0.0
    # everything just outside the square, on all four sides, is seen
    d = radius + 1
    for dy, dx in ((-d, 0), (d, 0), (0, -d), (0, d), (-d, -d), (d, d)):
        assert float(g[y + dy, xc + dx]) > 0.0, (dy, dx)
    # and nearly the whole image is in the field
    assert int((g > 0).sum()) >= g.numel() - (2 * radius + 1) ** 2 - 2 * shape[1]


def test_batch_norm_in_training_mode_leaks_only_through_batch_statistics() -> None:
    torch.manual_seed(0)
    net = BlindSpotNet(UNetConfig(depth=2, base_channels=4)).train()
    x = torch.randn(8, 1, 32, 32, requires_grad=True)
    net(x)[0, 0, 15, 21].backward()
    g = x.grad[0, 0].abs()
    assert float(g[15, 21]) < 1e-3 * float(g.max())
    plain = BlindSpotNet(UNetConfig(depth=2, base_channels=4, batch_norm=False)).train()
    x2 = torch.randn(8, 1, 32, 32, requires_grad=True)
    plain(x2)[0, 0, 15, 21].backward()
    assert float(x2.grad[0, 0, 15, 21]) == 0.0


def test_wrong_sizes_and_radius_raise() -> None:
    with pytest.raises(ValueError, match="multiple"):
        BlindSpotNet(UNetConfig(depth=2, base_channels=2))(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="blind_radius"):
        BlindSpotNet(blind_radius=-1)


def test_distillation_loss_is_zero_for_a_perfect_student() -> None:
    student = UNet(UNetConfig(depth=1, base_channels=2, posterior="gaussian"))
    t = torch.randn(2, 2, 8, 8)
    assert float(distillation_loss(student, t.clone(), t)) == 0.0
    shifted = t.clone()
    shifted[:, 0] += 0.5  # mean off by 0.5 σ everywhere (weights moved a little too)
    assert float(distillation_loss(student, shifted, t)) == pytest.approx(0.25, rel=0.2)
    plain = UNet(UNetConfig(depth=1, base_channels=2))
    assert float(distillation_loss(plain, t[:, :1] + 0.5, t[:, :1])) == pytest.approx(0.25)


def test_all_pixel_offset_recovers_a_known_shift() -> None:
    class Const(torch.nn.Module):
        config = UNetConfig(depth=1)

        def forward(self, x):
            return torch.full_like(x, 0.3)

    rng = np.random.default_rng(1)
    y = torch.from_numpy(rng.normal(1.3, 1.0, (8, 1, 32, 32)).astype(np.float32))
    assert all_pixel_offset(Const(), y) == pytest.approx(1.0, abs=0.03)
    y[:, :, 10:13, 10:13] = 1000.0  # stars the network has not learned: left out
    assert all_pixel_offset(Const(), y) == pytest.approx(1.0, abs=0.03)


def _frame(seed: int = 0, ny: int = 192, nx: int = 192, sigma: float = 10.0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ny, :nx]
    clean = (100 + 30 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.float32)
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    return noisy, clean, np.zeros((ny, nx), np.uint8)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        unet=UNetSettings(depth=2, base_channels=4),
        method="blindspot",
        patch_size=64,
        batch_size=4,
        steps_per_epoch=10,
        epochs=8,
        learning_rate=3e-3,
        validation_patches=16,
        validation_fraction=0.25,
        device="cpu",
        num_threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("posterior,head", [("none", {}), ("gaussian", {}),
                                            ("none", {"residual": "gated"}),
                                            ("none", {"kernel_size": 3})])
def test_blindspot_method_trains_a_plain_unet_that_denoises(tmp_path: Path, posterior,
                                                            head) -> None:
    noisy, clean, mask = _frame()
    stats = frame_statistics(noisy, mask)
    ckpt = tmp_path / "n2v.safetensors"
    cfg = _cfg(unet=UNetSettings(depth=2, base_channels=4, posterior=posterior, **head),
               poisson_scale=12.0, epochs=16, blindspot=BlindSpotSettings(distill_fraction=0.4))
    model, hist = train_n2v([(noisy, mask, stats, "f0")], cfg, progress=False,
                            checkpoint_path=ckpt)
    assert type(model) is UNet and model.config.posterior == posterior
    assert hist.teacher_val_loss < hist.initial_val_loss  # the teacher learned
    if posterior == "none":  # near the noise variance, the floor of any blind-spot MSE
        # (4.4x it before training; 10 epochs of a 4-channel teacher reach 1.2-1.4x it,
        # depending on the CPU's rounding)
        assert hist.teacher_val_loss < 1.5 * (10.0 / stats.sigma) ** 2
    assert hist.epochs_run == 16 and hist.teacher_epochs == 10
    student = hist.val_loss[hist.teacher_epochs:]  # distillation losses
    # a kernel head starts as a mild smoother, already nearer the teacher than a plain head
    assert student[-1] < (0.75 if head.get("kernel_size") else 0.5) * student[0]
    x = torch.from_numpy(normalise(noisy, stats, mask))[None, None]
    out = denormalise(predict_array(model, x)[0, 0].numpy(), stats)
    rms_out = float(np.sqrt(np.mean((out - clean) ** 2)))
    rms_noise = float(np.sqrt(np.mean((noisy - clean) ** 2)))
    assert rms_out < 0.6 * rms_noise
    loaded, meta = load_model(ckpt)  # the ordinary checkpoint format
    with torch.no_grad():
        assert torch.equal(predict_array(loaded, x), predict_array(model, x))
    assert meta["provenance"]["train_config"]["method"] == "blindspot"
    assert loaded.config.kernel_size == head.get("kernel_size", 0)  # the student's head


def test_time_budget_stops_training_and_callback_sees_every_epoch() -> None:
    noisy, _, mask = _frame(ny=128, nx=128)
    stats = frame_statistics(noisy, mask)
    seen: list[tuple[int, float]] = []
    cfg = _cfg(method="n2v", epochs=1000, steps_per_epoch=5, max_minutes=0.05,
               early_stopping_patience=None)
    model, hist = train_n2v(
        [(noisy, mask, stats, "f0")], cfg, progress=False,
        on_epoch_end=lambda m, h: seen.append((h.epochs_run, h.total_seconds)),
    )
    assert hist.stopped_on_budget and 1 <= hist.epochs_run < 1000
    assert [e for e, _ in seen] == list(range(1, hist.epochs_run + 1))
    assert seen[-1][1] >= 3.0 and seen[-2][1] < 3.0  # stopped at the first epoch past 3 s
    # a snapshot can be finished like the end of training does
    delta = calibrate_offset(model, cfg, [(noisy, mask, stats, "f0")])
    assert np.isfinite(delta)


def test_blind_radius_auto_follows_the_measured_correlation() -> None:
    assert TrainConfig().blind_radius == 0
    assert TrainConfig(noise_correlation=(0.3, 0.02)).blind_radius == 1
    assert TrainConfig(noise_correlation=(0.3, 0.02)).struct_axes == "x"
    assert TrainConfig(noise_correlation=(0.05, 0.02)).struct_axes == ""
    assert TrainConfig(blindspot=BlindSpotSettings(blind_radius=2)).blind_radius == 2


def test_cosine_decay_and_weight_average_restart_per_phase() -> None:
    """``method: blindspot`` with ``lr_decay: cosine`` and ``weight_average``: each phase
    (teacher, then student) decays from the full rate; the average covers the student."""
    noisy, _, mask = _frame(ny=128, nx=128)
    stats = frame_statistics(noisy, mask)
    cfg = _cfg(epochs=6, steps_per_epoch=4, lr_decay="cosine", weight_average=0.9,
               early_stopping_patience=None, keep="last",
               blindspot=BlindSpotSettings(distill_fraction=0.5))
    model, hist = train_n2v([(noisy, mask, stats, "f0")], cfg, progress=False)
    lr = hist.learning_rate
    assert hist.teacher_epochs == 3 and len(lr) == 6
    assert lr[0] > lr[1] > lr[2] and lr[3] > lr[2] and lr[3] > lr[4] > lr[5]
    assert lr[3] == pytest.approx(lr[0], rel=1e-6)  # the student restarts the schedule
    assert type(model) is UNet and all(torch.isfinite(v).all() for v in
                                       model.state_dict().values() if v.is_floating_point())
