"""Tests of the pix2pix cGAN path: networks, pairs, training, checkpoints, tiled inference."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import torch
from astropy.wcs import WCS
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pausdenoise.gan.apply import check_tiling, gan_apply, generate_array
from pausdenoise.gan.checkpoint import load_generator, read_metadata, save_generator
from pausdenoise.gan.metrics import (
    PUBLISHED_CORRELATION_GENERATED,
    comparison_table,
    pixel_correlation,
    rms_error,
)
from pausdenoise.gan.models import (
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    predict_array,
)
from pausdenoise.gan.pairs import CutoutPairs, cutout_origins, make_pairs
from pausdenoise.gan.train import (
    GanTrainConfig,
    masked_flux_loss,
    masked_l1,
    train_pix2pix,
    train_step,
)
from pausdenoise.n2v.normalise import FrameStats, frame_statistics
from pausdenoise.n2v.precision import resolve_precision

torch.set_num_threads(1)

TINY_G = GeneratorConfig(depth=2, base_channels=4, max_channels=8)
TINY_D = DiscriminatorConfig(n_layers=1, base_channels=4, max_channels=8)


def _with_running_stats(g: Generator, seed: int = 0) -> Generator:
    """Give batch-norm layers non-trivial running statistics, then switch to eval()."""
    torch.manual_seed(seed)
    for mod in g.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return g.eval()


# --------------------------------------------------------------------------- networks


def test_generator_and_discriminator_shapes():
    g = Generator(GeneratorConfig(depth=3, base_channels=4)).eval()
    x = torch.randn(2, 1, 64, 48)
    assert g(x).shape == x.shape
    with pytest.raises(ValueError, match="multiple"):
        g(torch.randn(1, 1, 60, 48))
    assert predict_array(g, torch.randn(1, 1, 50, 70)).shape == (1, 1, 50, 70)
    d = Discriminator(DiscriminatorConfig(base_channels=4))
    assert d.patch_size() == 70  # the 70×70 PatchGAN
    logits = d(torch.randn(2, 1, 128, 128), torch.randn(2, 1, 128, 128))
    assert logits.shape == (2, 1, 14, 14)
    assert Discriminator(DiscriminatorConfig(n_layers=1)).patch_size() == 16
    with pytest.raises(ValidationError):
        GeneratorConfig(depth=0)
    with pytest.raises(ValidationError):
        GeneratorConfig(width=3)


@pytest.mark.parametrize("depth", [2, 3])
def test_receptive_field_bounds_gradient_extent(depth):
    g = _with_running_stats(Generator(GeneratorConfig(depth=depth, base_channels=4)))
    r = g.receptive_field_radius()
    m = g.config.size_multiple
    assert g.halo() % m == 0 and g.halo() >= r
    size = 2 * r + 4 * m
    size += (-size) % m
    extent = 0
    for oy, ox in [(size // 2, size // 2), (size // 2 + 1, size // 2 + 3), (r + 2, r + 5)]:
        x = torch.randn(1, 1, size, size, requires_grad=True)
        g(x)[0, 0, oy, ox].backward()
        nz = (x.grad[0, 0] != 0).nonzero()
        extent = max(extent, int((nz - torch.tensor([oy, ox])).abs().max()))
    assert 0 < extent <= r
    assert extent > r // 2  # the bound is not absurdly loose


# --------------------------------------------------------------------------- training


def _tiny_pairs(n=8, size=16, seed=0, fn=lambda x: 0.5 * x) -> CutoutPairs:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 1, size, size)).astype(np.float32)
    return CutoutPairs(
        inputs=x,
        targets=fn(x).astype(np.float32),
        valid=np.ones_like(x, dtype=bool),
        source=np.zeros(n, dtype=np.int64),
        origins=np.zeros((n, 2), dtype=np.int64),
    )


def test_one_training_step_changes_weights():
    torch.manual_seed(0)
    g, d = Generator(TINY_G), Discriminator(TINY_D)
    cfg = GanTrainConfig(generator=TINY_G, discriminator=TINY_D)
    from pausdenoise.gan.train import make_optimizers

    opt_g, opt_d = make_optimizers(g, d, cfg)
    before_g = [p.detach().clone() for p in g.parameters()]
    before_d = [p.detach().clone() for p in d.parameters()]
    p = _tiny_pairs(n=2)
    valid = torch.from_numpy(p.valid)
    valid[0, 0, :4] = False
    losses = train_step(
        g, d, opt_g, opt_d, torch.from_numpy(p.inputs), torch.from_numpy(p.targets), valid
    )
    assert set(losses) == {"loss_d", "loss_g_adv", "loss_l1", "loss_flux"}
    assert all(np.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before_g, g.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, d.parameters(), strict=True))


def test_training_lowers_l1_on_learnable_mapping():
    cfg = GanTrainConfig(
        generator=TINY_G,
        discriminator=TINY_D,
        lr=2e-3,
        epochs=8,
        batch_size=4,
        device="cpu",
        progress=False,
    )
    g, history = train_pix2pix(_tiny_pairs(n=16), cfg)
    l1 = [s["loss_l1"] for s in history["step"]]
    assert len(l1) == 32 and len(history["epoch"]) == 8
    assert np.mean(l1[-4:]) < 0.7 * np.mean(l1[:4])
    assert not g.training
    json.dumps(history)  # JSON-serialisable, for checkpoint metadata


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_in_either_precision_learns_and_gives_back_a_standard_network(
        tmp_path, precision):
    """bfloat16 autocast (the networks channels-last on the CPU) learns the mapping as
    float32 does; the generator comes back in the standard layout, equal to its saved and
    reloaded copy, and the history says the precision in force ('auto': this CPU's)."""
    cfg = GanTrainConfig(generator=TINY_G, discriminator=TINY_D, lr=2e-3, epochs=8,
                         batch_size=4, device="cpu", progress=False, precision=precision)
    g, history = train_pix2pix(_tiny_pairs(n=16), cfg)
    assert history["precision"] == precision
    l1 = [s["loss_l1"] for s in history["step"]]
    assert np.mean(l1[-4:]) < 0.7 * np.mean(l1[:4])
    assert all(p.is_contiguous() for p in g.parameters())
    g2, _ = load_generator(save_generator(tmp_path / "g.safetensors", g))
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(predict_array(g, x), predict_array(g2, x))
    auto = train_pix2pix(_tiny_pairs(n=4), cfg.model_copy(update={"precision": "auto",
                                                                   "epochs": 1}))[1]
    assert auto["precision"] == resolve_precision("auto", torch.device("cpu"))


def test_training_to_a_log_prints_one_line_per_epoch(capsys):
    """With stdout and stderr not a terminal (a batch job's log) there is no bar."""
    cfg = GanTrainConfig(generator=TINY_G, discriminator=TINY_D, epochs=2, batch_size=4,
                         device="cpu", progress=True)
    train_pix2pix(_tiny_pairs(n=8), cfg)
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    assert [line.split(":")[0] for line in captured.out.splitlines()] == [
        "pix2pix epoch 1/2", "pix2pix epoch 2/2"
    ]
    assert "pix2pix" not in captured.err


# --------------------------------------------------------------------------- flux term


def _sources_image(seed: int = 0, size: int = 32) -> torch.Tensor:
    """Two images of a few positive Gaussian blobs on zero sky, shape (2, 1, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    out = np.zeros((2, 1, size, size), np.float32)
    for n in range(2):
        for _ in range(4):
            y0, x0 = rng.uniform(4, size - 4, 2)
            out[n, 0] += rng.uniform(2, 10) * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / 4.5)
    return torch.from_numpy(out)


@pytest.mark.parametrize("norm", ["absolute", "squared"])
def test_flux_term_zero_for_identical_images(norm):
    t = _sources_image()
    valid = torch.ones_like(t, dtype=torch.bool)
    assert float(masked_flux_loss(t, t.clone(), valid, 8, norm)) == 0.0


def test_flux_term_positive_for_flux_scaled_output():
    t = _sources_image()
    valid = torch.ones_like(t, dtype=torch.bool)
    low = masked_flux_loss(0.8 * t, t, valid, 8)
    lower = masked_flux_loss(0.5 * t, t, valid, 8)
    assert 0 < float(low) < float(lower)
    # Linear in a flux scaling: |0.2 Σt| per box vs |0.5 Σt|, t ≥ 0 everywhere.
    assert float(lower) / float(low) == pytest.approx(2.5, rel=1e-5)
    # Scale 1 is the per-pixel L1.
    assert float(masked_flux_loss(0.8 * t, t, valid, 1)) == pytest.approx(
        float(masked_l1(0.8 * t, t, valid)), rel=1e-6)
    # Squared: quadratic in the deficit.
    sq = [float(masked_flux_loss(f * t, t, valid, 8, "squared")) for f in (0.8, 0.5)]
    assert 0 < sq[0] < sq[1] and sq[1] / sq[0] == pytest.approx(6.25, rel=1e-5)
    with pytest.raises(ValueError, match="norm"):
        masked_flux_loss(t, t, valid, 8, "cubic")


def test_flux_term_sees_flux_not_noise():
    """Zero-mean pixel noise costs L1 but (almost) nothing in 8×8 box fluxes; a coherent
    flux deficit of the same L1 costs the full amount in both."""
    torch.manual_seed(0)
    t = _sources_image()
    valid = torch.ones_like(t, dtype=torch.bool)
    noisy = t + 0.1 * torch.sign(torch.randn_like(t))
    biased = t - 0.1
    assert float(masked_l1(noisy, t, valid)) == pytest.approx(0.1, rel=1e-5)
    assert float(masked_l1(biased, t, valid)) == pytest.approx(0.1, rel=1e-5)
    assert float(masked_flux_loss(biased, t, valid, 8)) == pytest.approx(0.1, rel=1e-5)
    assert float(masked_flux_loss(noisy, t, valid, 8)) < 0.03


@pytest.mark.parametrize(("norm", "cost"), [("absolute", 0.3), ("squared", 0.09)])
def test_flux_term_respects_the_mask(norm, cost):
    t = _sources_image()
    valid = torch.ones_like(t, dtype=torch.bool)
    valid[:, :, 10:20, 5:25] = False
    p = t.clone()
    p[~valid] = 1e6  # garbage where masked: invisible
    assert float(masked_flux_loss(p, t, valid, 8, norm)) == 0.0
    # Per valid pixel: a uniform offset on the valid pixels costs that offset (squared).
    assert float(masked_flux_loss(t + 0.3, t, valid, 8, norm)) == pytest.approx(cost, rel=1e-5)
    # Nothing valid: 0, not NaN.
    none = torch.zeros_like(valid)
    assert float(masked_flux_loss(p, t, none, 8, norm)) == 0.0
    with pytest.raises(ValueError, match="flux_scale"):
        masked_flux_loss(t, t, valid, 64)


def test_training_step_with_flux_term():
    torch.manual_seed(0)
    g, d = Generator(TINY_G), Discriminator(TINY_D)
    cfg = GanTrainConfig(generator=TINY_G, discriminator=TINY_D, flux_weight=50.0,
                         flux_scale=4, flux_norm="squared")
    from pausdenoise.gan.train import make_optimizers

    opt_g, opt_d = make_optimizers(g, d, cfg)
    before = [p.detach().clone() for p in g.parameters()]
    p = _tiny_pairs(n=2)
    losses = train_step(g, d, opt_g, opt_d, torch.from_numpy(p.inputs),
                        torch.from_numpy(p.targets), torch.from_numpy(p.valid),
                        cfg.l1_weight, cfg.flux_weight, cfg.flux_scale, cfg.flux_norm)
    assert losses["loss_flux"] > 0 and all(np.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, g.parameters(), strict=True))
    # Through train_pix2pix too, recorded per epoch.
    cfg2 = cfg.model_copy(update={"epochs": 1, "batch_size": 2, "device": "cpu",
                                  "progress": False})
    _, history = train_pix2pix(_tiny_pairs(n=4), cfg2)
    assert "loss_flux" in history["epoch"][0] and history["config"]["flux_weight"] == 50.0
    with pytest.raises(ValueError, match="flux_scale"):
        train_pix2pix(_tiny_pairs(n=4), cfg2.model_copy(update={"flux_scale": 64}))


def test_train_config_forbids_unknown_and_checks_sizes():
    with pytest.raises(ValidationError):
        GanTrainConfig(learning_rate=1e-3)
    assert GanTrainConfig().l1_weight == 100 and GanTrainConfig().beta1 == 0.5
    assert GanTrainConfig().lr == 2e-4
    cfg = GanTrainConfig(generator=GeneratorConfig(depth=3), progress=False)
    with pytest.raises(ValueError, match="multiple"):
        train_pix2pix(_tiny_pairs(size=12), cfg)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_exact(tmp_path):
    g = _with_running_stats(Generator(TINY_G), seed=3)
    path = save_generator(tmp_path / "g.safetensors", g, extra={"note": "test", "n": 3})
    g2, meta = load_generator(path)
    assert meta["extra"] == {"note": "test", "n": 3}
    assert meta["halo"] == g.halo() and meta["generator"] == TINY_G.model_dump()
    s1, s2 = g.state_dict(), g2.state_dict()
    assert set(s1) == set(s2)
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(predict_array(g, x), predict_array(g2, x))


def test_bad_checkpoints_refused(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not a safetensors file at all")
    with pytest.raises(ValueError, match="safetensors"):
        load_generator(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="metadata"):
        load_generator(plain)
    other = tmp_path / "other.safetensors"
    n2v_meta = {"pausdenoise": '{"format": "pausdenoise-n2v"}'}
    save_file({"w": torch.zeros(2)}, str(other), metadata=n2v_meta)
    with pytest.raises(ValueError, match="not a 'pausdenoise-pix2pix-generator'"):
        load_generator(other)
    # Right metadata, tensors of another architecture.
    g = Generator(TINY_G)
    good = save_generator(tmp_path / "good.safetensors", g)
    meta = read_metadata(good)
    meta["generator"]["base_channels"] = 8
    from safetensors.torch import load_file

    tensors = load_file(str(good))
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"pausdenoise": json.dumps(meta)})
    with pytest.raises(ValueError, match="architecture"):
        load_generator(bad)
    # Corrupted weight bytes (a valid safetensors file) are caught by the digest.
    meta = read_metadata(good)
    tensors_bad = dict(tensors)
    name = next(k for k in tensors if k.endswith("weight"))
    tensors_bad[name] = tensors[name] + 1e-3
    save_file(tensors_bad, str(bad), metadata={"pausdenoise": json.dumps(meta)})
    with pytest.raises(ValueError, match="sha256"):
        load_generator(bad)
    meta["format_version"] = 99
    save_file(tensors, str(bad), metadata={"pausdenoise": json.dumps(meta)})
    with pytest.raises(ValueError, match="format_version"):
        load_generator(bad)
    meta["format_version"] = 1
    meta["generator"] = {"depth": 2, "bogus": 1}
    save_file(tensors, str(bad), metadata={"pausdenoise": json.dumps(meta)})
    with pytest.raises(ValueError, match="invalid generator config"):
        load_generator(bad)


# --------------------------------------------------------------------------- tiled inference


@pytest.mark.parametrize("shape,chunks", [((150, 130), (48, 40)), ((96, 100), (32, 64))])
def test_gan_apply_seam_free(shape, chunks):
    g = _with_running_stats(Generator(TINY_G), seed=1)
    rng = np.random.default_rng(0)
    sigma = 7.0
    img = (500.0 + rng.normal(0, sigma, shape)).astype(np.float32)
    img[40:44, 60:63] += 3000.0  # a bright source across a chunk boundary
    stats = frame_statistics(img)
    whole = generate_array(g, img, stats)
    lazy = gan_apply(da.from_array(img, chunks=chunks), stats, g)
    assert lazy.dtype == np.float32 and lazy.shape == shape
    tiled = lazy.compute(scheduler="threads")
    # 1e-5 σ, or a few float32 steps of the brightest output (the bright source sits at
    # ~3500 ADU, where one step is 2.4e-4 ADU; a convolution over a different tile shape may
    # round differently there): a seam would be orders of magnitude larger.
    tol = max(1e-5 * stats.sigma, 4 * float(np.spacing(np.abs(whole).max())))
    assert np.max(np.abs(tiled - whole)) <= tol
    # With a mask.
    mask = np.zeros(shape, np.uint8)
    mask[10:20, 30] = 1
    whole_m = generate_array(g, img, stats, mask)
    tiled_m = gan_apply(
        da.from_array(img, chunks=chunks), stats, g, mask=da.from_array(mask, chunks=chunks)
    ).compute(scheduler="threads")
    assert np.max(np.abs(tiled_m - whole_m)) <= tol
    assert not np.allclose(whole_m, whole)


_SEAM_G = _with_running_stats(Generator(TINY_G), seed=2)


@settings(max_examples=8, deadline=None)
@given(
    ny=st.integers(33, 100),
    nx=st.integers(33, 100),
    cy=st.sampled_from([16, 20, 24, 32, 44]),
    cx=st.sampled_from([16, 20, 24, 32, 44]),
    seed=st.integers(0, 2**16),
)
def test_gan_apply_seam_free_any_tiling(ny, nx, cy, cx, seed):
    img = np.random.default_rng(seed).normal(10.0, 2.0, (ny, nx)).astype(np.float32)
    stats = FrameStats(10.0, 2.0)
    whole = generate_array(_SEAM_G, img, stats)
    tiled = gan_apply(da.from_array(img, chunks=(cy, cx)), stats, _SEAM_G).compute(
        scheduler="synchronous"
    )
    assert np.max(np.abs(tiled - whole)) <= 1e-5 * stats.sigma


def test_gan_apply_rejects_bad_tiling():
    g = Generator(TINY_G).eval()
    h = g.halo()
    with pytest.raises(ValueError, match="receptive"):
        check_tiling(((64, 64),), g.receptive_field_radius() - 1, g)
    with pytest.raises(ValueError, match="multiple"):
        check_tiling(((64, 64),), h + 1, g)
    with pytest.raises(ValueError, match="multiples"):
        check_tiling(((50, 50),), h, g)
    img = da.zeros((128, 128), chunks=(62, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="multiples"):
        gan_apply(img, FrameStats(0.0, 1.0), g)


# --------------------------------------------------------------------------- pairs


def _wcs(crpix) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = list(crpix)
    w.wcs.cd = np.diag([-0.265 / 3600, 0.265 / 3600])
    return w


def test_cutout_origins_cover_frame():
    o = cutout_origins((300, 228))
    assert sorted({int(y) for y, _ in o}) == [0, 100, 172]
    assert sorted({int(x) for _, x in o}) == [0, 100]
    assert len(o) == 6
    with pytest.raises(ValueError):
        cutout_origins((100, 300))


def test_pairs_never_use_the_same_exposure():
    rng = np.random.default_rng(7)
    n, shape, sigma = 3, (228, 200), 5.0
    shifts = [(0, 0), (2, -1), (-1.5, 0.5)]
    wcss = [_wcs((100.5 + dx, 114.5 + dy)) for dy, dx in shifts]
    images = [(300.0 + rng.normal(0, sigma, shape)).astype(np.float32) for _ in range(n)]
    markers = [(50, 60), (120, 30), (180, 150)]  # an unmasked artefact unique to each frame
    for k, (y, x) in enumerate(markers):
        images[k][y, x] += 5000.0
    pairs = make_pairs(images, None, None, wcss, zps=[1.0, 1.1, 0.9], max_pairs_per_frame=None)
    assert set(pairs.target_members) == {0, 1, 2}
    for i, members in pairs.target_members.items():
        assert i not in members and len(members) == n - 1
    assert pairs.inputs.shape[1:] == (1, 128, 128) and pairs.targets.shape == pairs.inputs.shape
    for j in range(len(pairs)):
        i = int(pairs.source[j])
        oy, ox = pairs.origins[j]
        y, x = markers[i]
        if oy <= y < oy + 128 and ox <= x < ox + 128:
            # The source's own artefact is in its input but not in its target.
            assert pairs.inputs[j, 0, y - oy, x - ox] > 500
            assert abs(pairs.targets[j, 0, y - oy, x - ox]) < 5
    # Input normalised to sky 0, σ 1; the target (2 frames, one interpolated, which smooths
    # its pixel noise) is less noisy than 1/√2.
    assert abs(float(np.median(pairs.inputs))) < 0.05
    t = pairs.targets[pairs.valid]
    robust_sigma = 1.4826 * float(np.median(np.abs(t - np.median(t))))
    assert 0.4 < robust_sigma < 0.72
    assert pairs.stats[0].sigma == pytest.approx(sigma, rel=0.05)


def test_make_pairs_needs_two_frames():
    with pytest.raises(ValueError, match="two"):
        make_pairs([np.zeros((128, 128))], None, None, [_wcs((64, 64))])


# --------------------------------------------------------------------------- metrics


def test_metrics():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (64, 64))
    assert pixel_correlation(ref, ref) == pytest.approx(1.0)
    assert rms_error(ref, ref) == 0.0
    noisy = ref + rng.normal(0, 1, ref.shape)
    assert pixel_correlation(noisy, ref) == pytest.approx(1 / np.sqrt(2), abs=0.03)
    assert rms_error(noisy, ref) == pytest.approx(1.0, rel=0.05)
    valid = np.ones(ref.shape, bool)
    valid[0] = False
    rows = comparison_table(noisy, ref + 0.1 * rng.normal(0, 1, ref.shape), ref, valid)
    assert rows[0]["published_generated"] == PUBLISHED_CORRELATION_GENERATED
    assert rows[0]["generated"] > rows[0]["single"]
    assert rows[1]["generated"] < rows[1]["single"]
