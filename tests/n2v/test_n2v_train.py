"""N2V training (config, a tiny run that learns, determinism, DDP) and the patch sampler."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pausdenoise.n2v.checkpoint import load_model
from pausdenoise.n2v.normalise import FrameStats, denormalise, frame_statistics, normalise
from pausdenoise.n2v.patches import Frame, PatchSampler, make_validation_set, split_regions
from pausdenoise.n2v.train import TrainConfig, TrainHistory, UNetSettings, train_n2v
from pausdenoise.n2v.unet import UNet, predict_array

torch.set_num_threads(1)


def _noisy_frame(ny: int = 128, nx: int = 128, sigma: float = 10.0, seed: int = 0):
    """Smooth pattern + Gaussian noise: (noisy, clean, mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ny, :nx]
    clean = (100 + 30 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.float32)
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    return noisy, clean, np.zeros((ny, nx), np.uint8)


def _tiny_config(**kw) -> TrainConfig:
    base = dict(
        unet=UNetSettings(depth=2, base_channels=4),
        patch_size=32,
        batch_size=16,
        steps_per_epoch=15,
        epochs=4,
        learning_rate=2e-3,
        validation_patches=32,
        validation_fraction=0.25,
        masked_fraction=0.01,
        device="cpu",
        num_threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------- config


def test_model_configs_import_without_torch() -> None:
    """The config modules of the model and simulation packages load without torch/galsim."""
    import subprocess

    code = (
        "import sys, pausdenoise.n2v.config, pausdenoise.gan.config, "
        "pausdenoise.simulate.config; "
        "sys.exit(any(m in sys.modules for m in ('torch', 'galsim')))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_config_defaults_and_validation() -> None:
    cfg = TrainConfig()
    assert (cfg.unet.depth, cfg.unet.base_channels, cfg.patch_size) == (2, 32, 64)
    assert cfg.neighbourhood_radius == 5 and cfg.strategy == "uniform"
    assert TrainConfig(unet=UNetSettings(n2v2=True)).strategy == "median"
    with pytest.raises(ValidationError, match="multiple of 2\\*\\*depth"):
        TrainConfig(unet=UNetSettings(depth=3), patch_size=36)
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(patch_szie=64)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(unet={"depth": 2, "channels": 8})
    with pytest.raises(ValidationError, match="neighbourhood radius"):
        TrainConfig(patch_size=8, unet=UNetSettings(depth=1))
    with pytest.raises(ValidationError):
        TrainConfig(device="tpu")  # type: ignore[arg-type]
    # round trip through JSON (stored in checkpoints)
    assert TrainConfig.model_validate_json(cfg.model_dump_json()) == cfg


# ---------------------------------------------------------------- training


def test_training_to_a_log_prints_one_line_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    """With stdout and stderr not a terminal (a batch job's log) there is no bar."""
    noisy, _, mask = _noisy_frame(64, 64)
    train_n2v([(noisy, mask, frame_statistics(noisy, mask))],
              _tiny_config(epochs=2, steps_per_epoch=3), progress=True)
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    assert [line.split(":")[0] for line in captured.out.splitlines()] == ["epoch 1", "epoch 2"]
    assert "N2V epoch" not in captured.err


def test_tiny_net_learns_to_denoise(tmp_path: Path) -> None:
    noisy, clean, mask = _noisy_frame()
    stats = frame_statistics(noisy, mask)
    ckpt = tmp_path / "n2v.safetensors"
    model, hist = train_n2v(
        [(noisy, mask, stats, "f0")], _tiny_config(), progress=False, checkpoint_path=ckpt
    )
    assert isinstance(hist, TrainHistory)
    assert hist.epochs_run == 4 and len(hist.val_loss) == 4 and len(hist.train_loss) == 4
    assert all(p > 0 for p in hist.patches_per_second)
    assert hist.best_val_loss < hist.initial_val_loss
    assert hist.best_val_loss == min(hist.val_loss)
    # the (normalised) noise variance is the floor of the N2V loss
    noise_var = (10.0 / stats.sigma) ** 2
    assert hist.best_val_loss < 1.6 * noise_var
    # denoised output is closer to the truth than the noisy input is
    x = torch.from_numpy(normalise(noisy, stats, mask))[None, None]
    out = denormalise(predict_array(model, x)[0, 0].numpy(), stats)
    rms_out = float(np.sqrt(np.mean((out - clean) ** 2)))
    rms_noise = float(np.sqrt(np.mean((noisy - clean) ** 2)))
    assert rms_out < 0.6 * rms_noise
    assert not model.training
    # the best checkpoint was written and reproduces the returned model
    loaded, meta = load_model(ckpt)
    with torch.no_grad():
        assert torch.equal(predict_array(loaded, x), predict_array(model, x))
    assert meta["provenance"]["frames"] == ["f0"]
    assert meta["history"]["best_epoch"] == hist.best_epoch


def test_training_is_deterministic_and_n2v2_runs() -> None:
    noisy, _, mask = _noisy_frame(96, 96)
    frames = [(noisy, mask, frame_statistics(noisy, mask))]
    cfg = _tiny_config(
        unet=UNetSettings(depth=1, base_channels=4, n2v2=True),
        steps_per_epoch=3,
        epochs=2,
        batch_size=4,
        validation_patches=8,
    )
    assert cfg.strategy == "median"
    m1, h1 = train_n2v(frames, cfg, progress=False)
    m2, h2 = train_n2v(frames, cfg, progress=False)
    assert h1.train_loss == h2.train_loss and h1.val_loss == h2.val_loss
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert all(np.isfinite(h1.val_loss))


def test_early_stopping_and_separate_validation_frames() -> None:
    noisy, _, mask = _noisy_frame(64, 64, seed=1)
    other, _, _ = _noisy_frame(64, 64, seed=2)
    st = frame_statistics(noisy, mask)
    cfg = _tiny_config(
        unet=UNetSettings(depth=1, base_channels=4),
        learning_rate=1e-12,  # nothing improves after the first epoch
        early_stopping_patience=1,
        epochs=10,
        steps_per_epoch=2,
        batch_size=4,
        validation_patches=8,
    )
    _, hist = train_n2v([(noisy, mask, st)], cfg, progress=False, val_frames=[(other, mask, st)])
    assert hist.stopped_early and hist.epochs_run < 10


# ---------------------------------------------------------------- DDP (gloo, CPU)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    noisy, _, mask = _noisy_frame(96, 96)
    cfg = _tiny_config(
        unet=UNetSettings(depth=1, base_channels=4),
        steps_per_epoch=3,
        epochs=1,
        batch_size=4,
        validation_patches=8,
    )
    model, hist = train_n2v(
        [(noisy, mask, frame_statistics(noisy, mask))],
        cfg,
        progress=False,
        checkpoint_path=Path(out) / "ddp.safetensors",
    )
    torch.save(
        {"state": model.state_dict(), "world": hist.world_size}, Path(out) / f"rank{rank}.pt"
    )


@pytest.mark.slow
def test_ddp_gloo_two_processes(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    if root not in sys.path:
        sys.path.insert(0, root)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world"] == r1["world"] == 2
    for k in r0["state"]:  # DDP keeps the replicas identical
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert (tmp_path / "ddp.safetensors").exists()  # rank 0 checkpointed


# ---------------------------------------------------------------- patch sampler


class _CountingArray:
    """Array proxy recording every 2-D slice read from it."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr
        self.shape = arr.shape
        self.reads: list[tuple[slice, slice]] = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.arr[key]


def _frames(n: int = 3, ny: int = 96, nx: int = 80, seed: int = 0) -> list[Frame]:
    """Frames whose pixel values encode (frame, y, x), with unit statistics."""
    out = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        yy, xx = np.mgrid[:ny, :nx]
        img = (i * 1_000_000 + yy * 1000 + xx).astype(np.float64)
        img += rng.uniform(0, 0.1, img.shape)
        out.append(Frame(img, np.zeros((ny, nx), np.uint8), FrameStats(0.0, 1.0), f"f{i}"))
    return out


def test_sampler_deterministic_with_seed() -> None:
    frames = _frames()
    a = PatchSampler(frames, 16, seed=3).sample(40, return_sources=True)
    b = PatchSampler(frames, 16, seed=3).sample(40, return_sources=True)
    c = PatchSampler(frames, 16, seed=4).sample(40, return_sources=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert a[2] != c[2]


def test_patches_come_from_their_frames_and_positions() -> None:
    frames = _frames()
    s = PatchSampler(frames, 16, seed=1, block_size=32)
    x, bad, src = s.sample(200, return_sources=True)
    assert x.shape == (200, 1, 16, 16) and x.dtype == torch.float32
    assert bad.shape == x.shape and bad.dtype == torch.bool and not bad.any()
    for k, (f, y, xx) in enumerate(src):
        ref = frames[f].image[y : y + 16, xx : xx + 16]
        np.testing.assert_array_equal(x[k, 0].numpy(), ref.astype(np.float32))
    seen = {f for f, _, _ in src}
    assert seen == {0, 1, 2}


def test_patches_are_normalised_with_their_frame_stats() -> None:
    rng = np.random.default_rng(0)
    img_a = rng.normal(100, 5, (64, 64)).astype(np.float32)
    img_b = rng.normal(-50, 2, (64, 64)).astype(np.float32)
    frames = [
        (img_a, None, FrameStats(100.0, 5.0)),
        (img_b, None, FrameStats(-50.0, 2.0)),
    ]
    x, _, src = PatchSampler(frames, 16, seed=0).sample(50, return_sources=True)
    for k, (f, y, xx) in enumerate(src):
        img, _, st = frames[f]
        ref = normalise(img[y : y + 16, xx : xx + 16], st)
        np.testing.assert_allclose(x[k, 0].numpy(), ref, rtol=0, atol=1e-6)


def test_positions_uniform_including_edges() -> None:
    frames = [_frames(1, 128, 128)[0]]
    s = PatchSampler(frames, 16, seed=2, block_size=64, patches_per_block=8)
    _, _, src = s.sample(12000, return_sources=True)
    ys = np.array([y for _, y, _ in src])
    xs = np.array([x for _, _, x in src])
    assert ys.min() == 0 and ys.max() == 112 and xs.min() == 0 and xs.max() == 112
    counts = np.bincount(ys // 16, minlength=8)[:7]  # origins 0..111 in 7 equal bins
    assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()


def test_frames_sampled_in_proportion_to_their_area() -> None:
    big, small = _frames(1, 192, 128)[0], _frames(1, 64, 128)[0]
    _, _, src = PatchSampler([big, small], 16, seed=5, block_size=32).sample(
        6000, return_sources=True
    )
    share_big = np.mean([f == 0 for f, _, _ in src])
    # valid origins: (177*113) vs (49*113) -> 0.78; window weights make it 0.75
    assert 0.70 < share_big < 0.82


def test_skips_heavily_masked_patches() -> None:
    frames = _frames(2, 64, 64)
    m0 = np.ones((64, 64), np.uint8)  # frame 0 entirely masked
    m1 = np.zeros((64, 64), np.uint8)
    m1[:, :32] = 4  # left half of frame 1 masked
    frames = [
        Frame(frames[0].image, m0, frames[0].stats, "dead"),
        Frame(frames[1].image, m1, frames[1].stats, "half"),
    ]
    s = PatchSampler(frames, 16, seed=0, max_bad_fraction=0.25)
    x, bad, src = s.sample(300, return_sources=True)
    assert all(f == 1 for f, _, _ in src)
    frac = bad.float().mean(dim=(1, 2, 3))
    assert frac.max() <= 0.25
    assert all(xx >= 32 - 4 for _, _, xx in src)  # at most 4 of 16 columns masked
    assert s.patches_skipped > 0
    # masked pixels are 0 (the sky) in the normalised patches
    assert torch.all(x[bad] == 0)


def test_all_masked_frames_raise() -> None:
    f = _frames(1, 64, 64)[0]
    frames = [Frame(f.image, np.ones((64, 64), np.uint8), f.stats)]
    with pytest.raises(RuntimeError, match="masked"):
        PatchSampler(frames, 16, seed=0).sample(4, max_empty_reads=50)


def test_reads_only_windows_batched_per_block() -> None:
    img = _CountingArray(_frames(1, 512, 512)[0].image)
    mask = _CountingArray(np.zeros((512, 512), np.uint8))
    s = PatchSampler([(img, mask, FrameStats(0.0, 1.0))], 32, seed=0, block_size=128)
    s.sample(256)
    assert len(img.reads) == len(mask.reads) == s.blocks_read
    for ys, xs in img.reads:
        assert ys.stop - ys.start <= 128 and xs.stop - xs.start <= 128
    assert s.blocks_read < 256 / 2  # several patches per read
    pixels = sum((ys.stop - ys.start) * (xs.stop - xs.start) for ys, xs in img.reads)
    assert pixels < 16 * 512 * 512  # bounded, never the whole frame per read


def test_zarr_and_dask_inputs_use_chunk_sized_blocks() -> None:
    zarr = pytest.importorskip("zarr")
    da = pytest.importorskip("dask.array")
    base = _frames(1, 256, 256)[0].image.astype(np.float32)
    z = zarr.create_array(
        zarr.storage.MemoryStore(), shape=base.shape, chunks=(64, 64), dtype="float32"
    )
    z[:] = base
    zm = zarr.create_array(
        zarr.storage.MemoryStore(), shape=base.shape, chunks=(64, 64), dtype="uint8"
    )
    zm[:] = 0
    for img, mask in ((z, zm), (da.from_zarr(z), da.from_zarr(zm))):
        s = PatchSampler([(img, mask, FrameStats(0.0, 1.0))], 16, seed=0)
        assert s._blocks[0] == (64, 64)
        x, _, src = s.sample(64, return_sources=True)
        for k, (_, y, xx) in enumerate(src):
            np.testing.assert_array_equal(x[k, 0].numpy(), base[y : y + 16, xx : xx + 16])


def test_sky_keep_oversamples_source_patches() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (256, 256)).astype(np.float32)
    img[100:104, 60:64] += 1000.0  # one bright "star"
    stats = FrameStats(100.0, 10.0)
    frames = [Frame(img, None, stats, "a")]

    def bright_fraction(sampler: PatchSampler) -> float:
        x, _ = sampler.sample(200)
        return float((x.reshape(200, -1).amax(1) > 50).float().mean())

    uniform = PatchSampler(frames, 32, seed=0)
    biased = PatchSampler(frames, 32, seed=0, sky_keep=0.05, source_threshold=10.0)
    assert bright_fraction(biased) > 2 * bright_fraction(uniform)
    assert biased.sky_patches_dropped > 0 and uniform.sky_patches_dropped == 0
    with pytest.raises(ValueError, match="sky_keep"):
        PatchSampler(frames, 32, sky_keep=0.0)


def test_validation_set_is_sampled_like_training() -> None:
    """A uniformly drawn validation set is almost all sky; with sky_keep it holds the source
    contexts the training emphasises (so best-epoch selection can see them)."""
    from pausdenoise.n2v.patches import make_validation_set

    rng = np.random.default_rng(1)
    img = rng.normal(100, 10, (256, 256)).astype(np.float32)
    img[100:104, 60:64] += 1000.0
    frames = [Frame(img, None, FrameStats(100.0, 10.0), "a")]

    def bright_fraction(vs) -> float:
        x = vs.originals.reshape(len(vs.originals), -1)
        return float((x.amax(1) > 50).float().mean())

    uniform = make_validation_set(frames, 64, 32, seed=3)
    like_training = make_validation_set(frames, 64, 32, seed=3, sky_keep=0.05)
    assert bright_fraction(like_training) > 2 * bright_fraction(uniform)


def test_source_weighting_options_train() -> None:
    noisy, _, mask = _noisy_frame(seed=4)
    cfg = _tiny_config(
        epochs=1,
        sky_keep=0.5,
        source_threshold=2.0,
        loss_weighting="poisson",
        poisson_scale=5.0,
        grad_clip=1.0,
        warmup_steps=5,
    )
    _, hist = train_n2v([(noisy, mask, frame_statistics(noisy, mask))], cfg, progress=False)
    assert np.isfinite(hist.val_loss[0])
    assert TrainConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(ValidationError):
        TrainConfig(loss_weighting="chi2")  # type: ignore[arg-type]


def test_gaussian_posterior_trains_checkpoints_and_denoises(tmp_path: Path) -> None:
    """The Gaussian-posterior head trains on the blind-spot NLL, beats the noise, and its
    checkpoint (noise model included) reproduces the posterior-mean output."""
    noisy, clean, mask = _noisy_frame(seed=5)
    stats = frame_statistics(noisy, mask)
    ckpt = tmp_path / "n2v.safetensors"
    cfg = _tiny_config(unet=UNetSettings(depth=2, base_channels=4, posterior="gaussian"),
                       poisson_scale=12.0, nll_beta=0.5, epochs=5)
    model, hist = train_n2v([(noisy, mask, stats, "f0")], cfg, progress=False,
                            checkpoint_path=ckpt)
    assert model.config.posterior == "gaussian" and model.config.noise_scale == 12.0
    assert all(np.isfinite(hist.val_loss)) and hist.best_val_loss < hist.initial_val_loss
    x = torch.from_numpy(normalise(noisy, stats, mask))[None, None]
    out = denormalise(predict_array(model, x)[0, 0].numpy(), stats)
    rms_out = float(np.sqrt(np.mean((out - clean) ** 2)))
    rms_noise = float(np.sqrt(np.mean((noisy - clean) ** 2)))
    assert rms_out < 0.7 * rms_noise
    loaded, _ = load_model(ckpt)
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(predict_array(loaded, x), predict_array(model, x))


def test_split_regions_and_fixed_validation_set() -> None:
    frames = _frames(2, 160, 64)
    train, val = split_regions(frames, 0.1, 32)
    for t, v in zip(train, val, strict=True):
        assert t.y1 == v.y0 == 160 - 32 and v.y1 == 160 and t.y0 == 0
    _, _, src = PatchSampler(frames, 32, regions=train, seed=0).sample(100, return_sources=True)
    assert max(y for _, y, _ in src) <= 128 - 32
    v1 = make_validation_set(frames, 20, 32, regions=val, seed=7)
    v2 = make_validation_set(frames, 20, 32, regions=val, seed=7)
    assert len(v1) == 20
    assert torch.equal(v1.inputs, v2.inputs) and torch.equal(v1.targets, v2.targets)
    assert torch.equal(v1.originals, v2.originals)
    assert v1.targets.any() and not torch.equal(v1.inputs, v1.originals)
    # originals are from the held-out rows: values encode y*1000 (+frame*1e6)
    rows = (v1.originals.numpy() % 1_000_000) // 1000
    assert rows.min() >= 128
    with pytest.raises(ValueError, match=r"too small.*at most 30 px fit"):
        split_regions(_frames(1, 60, 64), 0.1, 32)
    # a DECam-cutout-sized frame: 51 rows split for 25 px, not 26; the error's size works
    with pytest.raises(ValueError, match="at most 25 px fit"):
        split_regions(_frames(1, 51, 41), 0.1, 26)
    train, val = split_regions(_frames(1, 51, 41), 0.1, 25)
    assert train[0].y1 - train[0].y0 >= 25 and val[0].y1 - val[0].y0 >= 25


def test_keep_last_returns_the_final_epoch_weights() -> None:
    """keep='best' and keep='last' follow the same (deterministic) trajectory; their weights
    differ exactly when the best validation epoch is not the last one."""
    noisy, _, mask = _noisy_frame(seed=5)
    frames = [(noisy, mask, frame_statistics(noisy, mask))]
    cfg = dict(epochs=4, learning_rate=2e-2, early_stopping_patience=None)
    best, hb = train_n2v(frames, _tiny_config(**cfg, keep="best"), progress=False)
    last, hl = train_n2v(frames, _tiny_config(**cfg, keep="last"), progress=False)
    assert hb.val_loss == hl.val_loss  # same trajectory
    same = all(torch.equal(a, b) for a, b in zip(best.state_dict().values(),
                                                  last.state_dict().values(), strict=True))
    assert same == (hb.best_epoch == hb.epochs_run - 1)


def test_bf16_training_on_the_cpu_autocasts_and_learns_as_fp32_does() -> None:
    """``precision: bf16`` on the CPU trains under bfloat16 autocast (channels-last, its
    own trajectory) to about fp32's validation loss, and hands back fp32 weights in the
    standard layout; fp16 stays ignored there (the fp32 trajectory)."""
    noisy, _, mask = _noisy_frame(seed=5)
    frames = [(noisy, mask, frame_statistics(noisy, mask))]
    m32, h32 = train_n2v(frames, _tiny_config(precision="fp32"), progress=False)
    _, h16 = train_n2v(frames, _tiny_config(precision="fp16"), progress=False)
    layouts: list[bool] = []

    def during(model: torch.nn.Module, _history: TrainHistory) -> None:
        conv = next(p for p in model.parameters() if p.ndim == 4 and p.shape[1] > 1)
        layouts.append(conv.is_contiguous(memory_format=torch.channels_last))

    mbf, hbf = train_n2v(frames, _tiny_config(precision="bf16"), progress=False,
                         on_epoch_end=during)
    assert (h32.precision, h16.precision, hbf.precision) == ("fp32", "fp32", "bf16")
    assert layouts and all(layouts)  # channels-last while training
    assert h16.val_loss == h32.val_loss
    assert hbf.val_loss != h32.val_loss
    assert all(np.isfinite(hbf.val_loss))
    assert min(hbf.val_loss) == pytest.approx(min(h32.val_loss), rel=0.1)
    assert all(p.dtype == torch.float32 for p in mbf.parameters())
    # handed back in the standard layout, as its checkpoint loads
    for m in (mbf, m32):
        assert all(p.is_contiguous() for p in m.parameters())


def test_noise_scale_from_frames_is_median_gain_times_sigma() -> None:
    import pandas as pd

    from pausdenoise.n2v.normalise import FrameStats
    from pausdenoise.pipeline.stages.train import noise_scale_from_frames

    ex = pd.DataFrame({"frame": ["a", "b", "c"], "gain": [0.5, 1.0, np.nan]})
    stats = {"a": FrameStats(0.0, 20.0), "b": FrameStats(0.0, 30.0), "c": FrameStats(0, 9.0)}
    assert noise_scale_from_frames(ex, stats) == pytest.approx(np.median([10.0, 30.0]))
    assert noise_scale_from_frames(ex.drop(columns="gain"), stats) is None
    assert noise_scale_from_frames(ex.assign(gain=np.nan), stats) is None
    # unset in the config: the default noise model, and set: used as given
    assert TrainConfig().noise_scale == 15.0 and TrainConfig(poisson_scale=7.0).noise_scale == 7.0


def test_sky_variance_from_frames_is_the_noise_under_a_crowded_sky() -> None:
    """On a field of unresolved stars the robust spread σ is mostly signal: the noise model's
    sky variance over σ² is what two noise realisations of the same sky differ by."""
    import pandas as pd

    from pausdenoise.pipeline.stages.train import sky_variance_from_frames

    rng = np.random.default_rng(4)
    gain, rn_e, n = 2.0, 6.0, 256
    truth = np.full((n, n), 800.0)  # sky, ADU
    yy, xx = np.mgrid[:n, :n]
    for cy, cx, f in zip(rng.uniform(0, n, 8000), rng.uniform(0, n, 8000),
                         rng.pareto(1.5, 8000) * 400.0, strict=True):
        y0, x0 = int(cy), int(cx)
        sl = (slice(max(y0 - 6, 0), y0 + 7), slice(max(x0 - 6, 0), x0 + 7))
        truth[sl] += f / (2 * np.pi * 1.5**2) * np.exp(
            -((yy[sl] - cy) ** 2 + (xx[sl] - cx) ** 2) / (2 * 1.5**2))

    def expose() -> np.ndarray:
        return rng.poisson(truth * gain) / gain + rng.normal(0, rn_e / gain, truth.shape)

    a, b = expose(), expose()
    stats = {"a": frame_statistics(a)}
    ex = pd.DataFrame({"frame": ["a"], "gain": [gain], "rdnoise": [rn_e]})
    var = sky_variance_from_frames(ex, stats)
    faint = np.abs(truth - 800.0) < 30.0
    measured = np.var((a - b)[faint]) / 2 / stats["a"].sigma ** 2
    assert var < 0.5  # the stars dominate σ
    assert var == pytest.approx(measured, rel=0.1)
    assert sky_variance_from_frames(ex.drop(columns="rdnoise"), stats) < var
    assert sky_variance_from_frames(ex.assign(gain=np.nan), stats) is None
    model = UNet(UNetSettings(posterior="gaussian").to_unet_config(10.0, var))
    assert float(model.noise_variance(torch.tensor([0.0, 10.0]))[1]) == pytest.approx(var + 1.0)
    assert TrainConfig().sky_noise_variance == 1.0
    assert TrainConfig(sky_variance=None).sky_noise_variance == 1.0


def test_frame_noise_models_are_each_frames_own() -> None:
    import pandas as pd

    from pausdenoise.pipeline.stages.train import frame_noise_models, sky_variance_from_frames

    ex = pd.DataFrame({"frame": ["a", "b", "c"], "gain": [2.0, 1.0, np.nan],
                       "rdnoise": [4.0, 0.0, 5.0]})
    stats = {"a": FrameStats(800.0, 40.0), "b": FrameStats(100.0, 20.0),
             "c": FrameStats(0.0, 9.0)}
    models = frame_noise_models(ex, stats)
    assert set(models) == {"a", "b"}  # no gain: no model
    assert models["a"].sky_variance == pytest.approx((800 / 2 + (4 / 2) ** 2) / 40**2)
    assert models["a"].noise_scale == pytest.approx(80.0)
    assert models["b"].sky_variance == pytest.approx(100 / 20**2)
    assert sky_variance_from_frames(ex, stats) == pytest.approx(
        np.median([m.sky_variance for m in models.values()]))


def test_training_starts_from_given_weights() -> None:
    noisy, _, mask = _noisy_frame()
    frames = [(noisy, mask, frame_statistics(noisy, mask), "f0")]
    cfg = _tiny_config(epochs=1, steps_per_epoch=2)
    torch.manual_seed(123)
    other = UNet(cfg.unet.to_unet_config()).state_dict()
    _, fresh = train_n2v(frames, cfg, progress=False)
    _, a = train_n2v(frames, cfg, progress=False, initial_state=other)
    _, b = train_n2v(frames, cfg, progress=False, initial_state=other)
    assert a.initial_val_loss == b.initial_val_loss != fresh.initial_val_loss
    deeper = _tiny_config(unet=UNetSettings(depth=3, base_channels=4))
    with pytest.raises(RuntimeError, match="state_dict"):
        train_n2v(frames, deeper, progress=False, initial_state=other)


def test_output_offset_is_refitted_after_training() -> None:
    """A deliberately offset network is found out by ``output_offset``, and training folds
    the refitted offset into the head so the held-out residual mean is ~0."""
    noisy, _, mask = _noisy_frame(seed=6)
    stats = frame_statistics(noisy, mask)
    frames = [(noisy, mask, stats, "f0")]
    model, hist = train_n2v(frames, _tiny_config(epochs=2), progress=False)
    assert hist.summary()["output_offset"] == hist.output_offset != 0.0
    val = make_validation_set(frames, 64, 32, seed=11)
    assert abs(val.output_offset(model)) < 0.1
    with torch.no_grad():
        model.head.bias += 0.5
    assert val.output_offset(model) == pytest.approx(-0.5, abs=0.1)
    # off: nothing is refitted
    _, hist2 = train_n2v(frames, _tiny_config(epochs=1, calibrate_offset=False), progress=False)
    assert hist2.output_offset == 0.0


def test_cosine_decay_follows_the_steps_and_the_time_budget() -> None:
    """``lr_decay: cosine``: the recorded rate at each epoch end is half a cosine from
    learning_rate to min_lr over epochs × steps; on a wall-clock budget it reaches the floor
    by the last epoch. The plateau schedule is left alone."""
    noisy, _, mask = _noisy_frame(seed=7)
    frames = [(noisy, mask, frame_statistics(noisy, mask))]
    lr0, lo, steps, epochs = 2e-3, 1e-5, 5, 4
    cfg = _tiny_config(lr_decay="cosine", learning_rate=lr0, steps_per_epoch=steps,
                       epochs=epochs, early_stopping_patience=None,
                       lr_schedule={"min_lr": lo, "patience": 0})
    _, hist = train_n2v(frames, cfg, progress=False)
    # the rate of the last step of epoch e (step index (e+1)*steps - 1)
    want = [lo + 0.5 * (lr0 - lo) * (1 + np.cos(np.pi * ((e + 1) * steps - 1) / (epochs * steps)))
            for e in range(epochs)]
    assert hist.learning_rate == pytest.approx(want, rel=1e-6)
    budgeted = cfg.model_copy(update={"epochs": 10_000, "max_minutes": 0.04})
    _, hb = train_n2v(frames, budgeted, progress=False)
    assert hb.stopped_on_budget and hb.epochs_run >= 2
    assert hb.learning_rate[0] > 0.5 * lr0 and hb.learning_rate[-1] < 0.2 * lr0
    assert all(a >= b for a, b in zip(hb.learning_rate, hb.learning_rate[1:], strict=False))


def test_weight_average_is_what_is_validated_and_returned(tmp_path: Path) -> None:
    """``weight_average``: the returned (and saved) U-Net is the exponential moving average
    of the trained weights, not the last step's weights; with decay → 0 it is the last."""
    noisy, _, mask = _noisy_frame(seed=8)
    frames = [(noisy, mask, frame_statistics(noisy, mask), "f0")]
    common = dict(epochs=2, keep="last", calibrate_offset=False, early_stopping_patience=None)
    plain, hp = train_n2v(frames, _tiny_config(**common), progress=False)
    avg, ha = train_n2v(frames, _tiny_config(**common, weight_average=0.9),
                        checkpoint_path=tmp_path / "m.safetensors", progress=False)
    assert ha.train_loss == hp.train_loss  # the same trajectory: the average does not steer it
    assert ha.val_loss != hp.val_loss  # but it is what is validated
    diff = max(float((a - b).abs().max()) for a, b in zip(
        plain.state_dict().values(), avg.state_dict().values(), strict=True))
    assert diff > 1e-4
    saved = load_model(tmp_path / "m.safetensors")[0]
    for k, v in avg.state_dict().items():
        assert torch.allclose(saved.state_dict()[k].float(), v.float()), k
    tiny, _ = train_n2v(frames, _tiny_config(**common, weight_average=1e-9), progress=False)
    for a, b in zip(plain.state_dict().values(), tiny.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
