"""The training's autocast precision: ``train.precision: auto`` resolved on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pausdenoise.n2v.checkpoint import load_checkpoint
from pausdenoise.n2v.config import TrainConfig, UNetSettings
from pausdenoise.n2v.normalise import frame_statistics
from pausdenoise.n2v.precision import cpu_has_bfloat16_units, training_precision
from pausdenoise.n2v.sure import sure_loss
from pausdenoise.n2v.train import train_n2v
from pausdenoise.n2v.unet import UNet

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("flags"))
    return set(line.split(":", 1)[1].split())


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux /proc/cpuinfo")
def test_bfloat16_units_are_those_the_kernel_reports() -> None:
    flags = _cpu_flags()
    assert cpu_has_bfloat16_units() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_auto_is_the_default_and_bf16_exactly_where_the_cpu_has_the_units() -> None:
    assert TrainConfig().precision == "auto"
    expected = "bf16" if cpu_has_bfloat16_units() else "fp32"
    assert training_precision(TrainConfig(), CPU) == expected
    assert training_precision(TrainConfig(precision="fp32"), CPU) == "fp32"
    assert training_precision(TrainConfig(precision="bf16"), CPU) == "bf16"
    assert training_precision(TrainConfig(precision="fp16"), CPU) == "fp32"  # ignored


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_the_device_s_bfloat16_support(monkeypatch, supported) -> None:
    # no CUDA device here: the device's answer is given
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert training_precision(TrainConfig(), CUDA) == ("bf16" if supported else "fp32")
    assert training_precision(TrainConfig(precision="fp16"), CUDA) == "fp16"
    assert training_precision(TrainConfig(precision="fp32"), CUDA) == "fp32"


def test_sure_trains_in_fp32_and_refuses_16_bit_floats() -> None:
    sure = dict(method="sure", unet=UNetSettings(posterior="none"))
    assert training_precision(TrainConfig(**sure), CPU) == "fp32"
    assert training_precision(TrainConfig(**sure), CUDA) == "fp32"
    for precision in ("bf16", "fp16"):
        with pytest.raises(ValidationError, match=r"method 'sure' trains in fp32.*resolution"):
            TrainConfig(**sure, precision=precision)


def test_sure_divergence_probe_is_lost_in_bfloat16() -> None:
    """Why SURE is kept in fp32: its probe difference f(y + ε b) − f(y) with ε = 0.01 σ is
    below bfloat16's resolution. For the identity map (a 1 × 1 convolution of weight 1,
    which autocast runs in bfloat16) each pixel's divergence sample b (f(y + ε b) − f(y)) / ε
    is b² in fp32 and noise in bfloat16 at a sky of 30 σ; SURE of a batch moves with it."""

    class Identity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1, bias=False)
            torch.nn.init.ones_(self.conv.weight)

        def forward(self, y: torch.Tensor) -> torch.Tensor:
            return self.conv(y)

        def noise_variance(self, f: torch.Tensor) -> torch.Tensor:
            return torch.ones_like(f)

    y = 30.0 + torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    good = torch.ones_like(y, dtype=torch.bool)
    net = Identity()
    b = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    eps = 0.01

    def divergence_error(autocast: bool) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            div = b * (net(y + eps * b).float() - net(y).float()) / eps
        return float((div - b.square()).square().mean().sqrt())

    def sure(autocast: bool) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return float(sure_loss(net, net, y, good, epsilon=eps,
                                   generator=torch.Generator().manual_seed(1)))

    assert divergence_error(False) < 0.01
    assert divergence_error(True) > 2.0
    exact = float(-1.0 + 2.0 * b.square().mean())
    assert sure(False) == pytest.approx(exact, abs=1e-3)
    assert abs(sure(True) - exact) > 0.05


def test_the_precision_in_force_is_recorded_in_history_and_checkpoint(tmp_path) -> None:
    rng = np.random.default_rng(0)
    noisy = (100 + rng.normal(0, 10, (96, 96))).astype(np.float32)
    frames = [(noisy, np.zeros(noisy.shape, np.uint8), frame_statistics(noisy))]
    cfg = TrainConfig(unet=UNetSettings(depth=2, base_channels=4), patch_size=32,
                      batch_size=8, steps_per_epoch=3, epochs=1, validation_patches=8,
                      validation_fraction=0.25, device="cpu", num_threads=1)
    model, history = train_n2v(frames, cfg, progress=False,
                               checkpoint_path=tmp_path / "n2v.pt")
    assert history.precision == training_precision(cfg, CPU)
    assert isinstance(model, UNet)
    _, meta = load_checkpoint(tmp_path / "n2v.pt")
    assert meta["history"]["precision"] == history.precision
    assert meta["provenance"]["train_config"]["precision"] == "auto"
