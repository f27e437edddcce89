"""Tests of tiled inference (pausdenoise.denoise): seam-free equality with whole-image
inference, chunk validation, halo necessity, schedulers, weights-once graphs, resume,
masked/NaN pixels, precision measurement."""

from __future__ import annotations

import pickle

import dask
import dask.array as da
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pausdenoise import denoise as dn
from pausdenoise.denoise import (
    ChunkingError,
    DenoiseConfig,
    ModelRef,
    check_chunks,
    clear_model_cache,
    denoise_frame,
    denoise_to_store,
    model_cache_info,
    suggest_chunks,
)
from pausdenoise.n2v.normalise import FrameStats, frame_statistics, normalise
from pausdenoise.n2v.unet import (
    OptimisedUNet,
    UNet,
    UNetConfig,
    optimise_for_inference,
    predict_array,
)

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
                posterior: str = "none") -> UNet:
    """A tiny eval-mode U-Net with random weights and random BatchNorm statistics, its head
    scaled so the output varies by ~1 σ over a noise image (a meaningful comparison)."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(depth=depth, base_channels=channels, n2v2=n2v2,
                            posterior=posterior))
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
    the denoise stage runs on CPU (:func:`dn.get_model`: the optimised copy unless
    ``PAUSDENOISE_CPU_OPTIMISE=0``), so chunked and whole image share one code path; the
    optimised copy against the eager network is tested on its own below."""
    x = torch.from_numpy(normalise(img, stats, mask))[None, None]
    return predict_array(dn.get_model(ModelRef.from_model(model), "cpu"), x)[0, 0].numpy()


def in_sigma(out_adu: np.ndarray, stats: FrameStats) -> np.ndarray:
    return (out_adu.astype(np.float64) - stats.sky) / stats.sigma


@st.composite
def axis_chunks(draw, n: int, multiple: int, halo: int) -> tuple[int, ...]:
    """A random valid irregular chunking of an axis of length ``n``."""
    kmin = max(1, -(-halo // multiple))
    sizes, rest = [], n
    while rest > 0:
        c = draw(st.integers(kmin, kmin + 6)) * multiple
        if c >= rest or rest - c < halo:
            sizes.append(rest)
            break
        sizes.append(c)
        rest -= c
    return tuple(sizes)


@st.composite
def cases(draw):
    depth = draw(st.integers(1, 2))
    channels = draw(st.integers(2, 4))
    n2v2 = draw(st.booleans())
    posterior = draw(st.sampled_from(["none", "gaussian"]))
    seed = draw(st.integers(0, 10_000))
    ny, nx = draw(st.integers(40, 200)), draw(st.integers(40, 200))
    model = random_unet(depth, channels, n2v2, seed, posterior)
    m, halo = 2**depth, model.halo()
    chunks = (draw(axis_chunks(ny, m, halo)), draw(axis_chunks(nx, m, halo)))
    tile = draw(st.none() | st.integers(4, 12).map(lambda k: k * m))
    with_mask = draw(st.booleans())
    return model, (ny, nx), chunks, tile, with_mask, seed


# --------------------------------------------------------------------------- seam-free


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_chunked_equals_whole_image(case):
    model, shape, chunks, tile, with_mask, seed = case
    img = make_image(*shape, seed=seed)
    rng = np.random.default_rng(seed)
    mask = (rng.random(shape) < 0.01).astype(np.uint8) if with_mask else None
    stats = frame_statistics(img, mask)
    ref = whole_image(model, img, stats, mask)

    x = da.from_array(img, chunks=chunks)
    dmask = None if mask is None else da.from_array(mask, chunks=chunks)
    out = denoise_frame(x, dmask, stats, model, DenoiseConfig(tile_size=tile, batch_size=3))
    assert out.chunks == x.chunks and out.dtype == np.float32
    got = out.compute(scheduler="sync")
    assert_matches(got, ref, stats)  # every pixel, image edges included


@pytest.mark.parametrize("posterior", ["none", "gaussian"])
def test_output_varies_enough_for_the_comparison_to_mean_something(posterior):
    model = random_unet(2, 3, False, 1, posterior)
    img = make_image(96, 96)
    y = whole_image(model, img, frame_statistics(img))
    assert y.std() > 0.1  # a near-constant network would hide seams


# --------------------------------------------------------------------------- chunk rules


def test_prior_scale_is_applied_chunked_and_changes_the_resume_key():
    from pausdenoise.denoise import as_model_ref, denoise_key

    model = random_unet(2, 3, False, 4, "gaussian")
    img = make_image(96, 80, seed=4)
    stats = frame_statistics(img)
    x = torch.from_numpy(normalise(img, stats))[None, None]
    ref = predict_array(model, x, prior_scale=4.0)[0, 0].numpy()
    out = denoise_frame(da.from_array(img, chunks=(48, 40)), None, stats, model,
                        DenoiseConfig(prior_scale=4.0))
    assert_matches(out.compute(scheduler="sync"), ref, stats)
    assert not np.allclose(ref, whole_image(model, img, stats))  # τ = 4 is not τ = 1
    mref = as_model_ref(model)
    k1 = denoise_key(mref, stats, 32, DenoiseConfig())
    assert k1 == denoise_key(mref, stats, 32, DenoiseConfig(prior_scale=1.0))
    assert k1 != denoise_key(mref, stats, 32, DenoiseConfig(prior_scale=4.0))


def test_bad_chunking_raises_with_suggestion():
    model = random_unet(2, 2, False, 0)  # halo 32, 2**depth 4
    img = da.zeros((200, 130), chunks=(50, 64), dtype=np.float32)  # 50 % 4 != 0
    with pytest.raises(ChunkingError, match=r"multiple of 2\*\*depth = 4.*Suggested chunks"):
        denoise_frame(img, None, FrameStats(0, 1), model)
    # last chunk smaller than the halo: 200 = 96 + 96 + 8
    img2 = da.zeros((200, 130), chunks=(96, 130), dtype=np.float32)
    with pytest.raises(ChunkingError, match=r">= the halo 32"):
        denoise_frame(img2, None, FrameStats(0, 1), model)
    # the suggestion is valid and close to the request
    sugg = suggest_chunks((200, 130), (50, 64), 4, 32)
    assert all(c % 4 == 0 for c in sugg) and abs(sugg[0] - 50) <= 4
    check_chunks(da.zeros((200, 130), chunks=sugg).chunks, 4, 32)
    sugg2 = suggest_chunks((200, 130), (96, 130), 4, 32)
    check_chunks(da.zeros((200, 130), chunks=sugg2).chunks, 4, 32)


def test_halo_override_validated_and_used():
    model = random_unet(2, 2, True, 3)
    h = model.halo()
    img = make_image(120, 120, seed=3)
    stats = frame_statistics(img)
    x = da.from_array(img, chunks=(48 if h <= 48 else h, 120))
    with pytest.raises(ValueError, match="halo override"):
        denoise_frame(x, None, stats, model, DenoiseConfig(halo=h - 4))
    with pytest.raises(ValueError, match="halo override"):
        denoise_frame(x, None, stats, model, DenoiseConfig(halo=h + 2))
    x2 = da.from_array(img, chunks=(60, 120))  # 60 >= h + 4 = 40
    got = denoise_frame(x2, None, stats, model, DenoiseConfig(halo=h + 4)).compute()
    assert_matches(got, whole_image(model, img, stats), stats)


@pytest.mark.parametrize("n2v2", [False, True])
def test_halo_smaller_than_receptive_field_makes_seams(n2v2):
    model = random_unet(2, 3, n2v2, 5)
    ref_obj = ModelRef.from_model(model)
    img = make_image(128, 128, seed=5)
    stats = frame_statistics(img)
    ref = whole_image(model, img, stats)
    x = da.from_array(img, chunks=(64, 64))
    cfg = DenoiseConfig()
    good = dn._map_denoise(x, None, stats, ref_obj, cfg, model.halo()).compute()
    bad = dn._map_denoise(x, None, stats, ref_obj, cfg, 4).compute()
    assert_matches(good, ref, stats)
    diff = np.abs(in_sigma(bad, stats) - ref)
    assert diff.max() > 1e-3  # seams, far above the 1e-5 σ tolerance
    # ... and they sit at the seams: far from the chunk boundaries at 64 the result is exact
    rf = model.receptive_field_radius()
    assert_matches(bad[: 64 - rf, : 64 - rf], ref[: 64 - rf, : 64 - rf], stats)
    assert diff[60:68].max() > 1e-3 or diff[:, 60:68].max() > 1e-3


def test_config_is_strict():
    with pytest.raises(ValueError):
        DenoiseConfig(tile_sise=64)  # typo: extra fields are forbidden
    with pytest.raises(ValueError, match="needs device='cuda'"):
        DenoiseConfig(device="cpu", precision="float16")
    assert DenoiseConfig(device="auto", precision="bfloat16").precision == "bfloat16"
    # CPU bfloat16 only when asked for explicitly (device='cpu'); never the default
    assert DenoiseConfig(device="cpu", precision="bfloat16").precision == "bfloat16"
    assert DenoiseConfig().precision == "float32"


# --------------------------------------------------------------------------- schedulers


def test_threaded_scheduler_loads_once_and_matches_sync():
    model = random_unet(2, 4, False, 7)
    img = make_image(192, 160, seed=7)
    stats = frame_statistics(img)
    x = da.from_array(img, chunks=(48, 40))  # 4 x 4 = 16 concurrent-ish tasks
    out = denoise_frame(x, None, stats, model)
    sync = out.compute(scheduler="sync")
    clear_model_cache()
    threaded = out.compute(scheduler="threads", num_workers=4)
    np.testing.assert_array_equal(sync, threaded)
    info = model_cache_info()
    assert info["loads"] == 1 and info["hits"] == 15


def test_weights_appear_once_in_the_graph():
    model = random_unet(2, 4, False, 8)
    ref = ModelRef.from_model(model)
    img = make_image(160, 160)
    stats = frame_statistics(img)
    frames = [
        denoise_frame(da.from_array(img + k, chunks=(40, 40)), None, stats, ref)
        for k in range(2)
    ]
    graph = {}
    for f in frames:
        graph.update(dict(f.__dask_graph__()))
    carrying = [k for k, v in graph.items() if ref.weights in pickle.dumps(v)]
    assert len(carrying) == 1  # 2 frames x 16 chunks, one copy of the weights
    assert str(carrying[0]).startswith("n2v-model-")


def test_local_cluster_processes_match_threaded():
    distributed = pytest.importorskip("distributed")
    model = random_unet(2, 2, True, 9)
    img = make_image(128, 96, seed=9)
    mask = np.zeros(img.shape, np.uint8)
    mask[10:14, 20:30] = 1
    stats = frame_statistics(img, mask)
    out = denoise_frame(
        da.from_array(img, chunks=(64, 48)), da.from_array(mask, chunks=(64, 48)), stats, model,
        DenoiseConfig(torch_threads=1),
    )
    local = out.compute(scheduler="threads")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = client.compute(out).result()
        loads = client.run(lambda: dn.model_cache_info()["loads"])
    np.testing.assert_array_equal(local, remote)
    assert all(n <= 1 for n in loads.values())  # at most one load per worker process


# --------------------------------------------------------------------------- masked / NaN


def test_masked_and_nan_pixels_do_not_spread():
    model = random_unet(2, 3, False, 11)
    img = make_image(128, 128, seed=11)
    mask = np.zeros(img.shape, np.uint8)
    mask[40:43, 50:53] = 4  # a masked cosmic ray of 1e6 ADU
    img[40:43, 50:53] = 1e6
    img[90, 20] = np.nan  # a NaN that is not masked
    img[91, 21] = np.inf
    stats = frame_statistics(img, mask)
    bad = (mask != 0) | ~np.isfinite(img)
    clean = np.where(bad, np.float32(stats.sky), img)  # what the network should "see"
    x = da.from_array(img, chunks=(64, 64))
    dm = da.from_array(mask, chunks=(64, 64))

    net = denoise_frame(x, dm, stats, model).compute()
    assert np.isfinite(net).all()
    assert_matches(net, whole_image(model, clean, stats), stats)  # bad values: no influence

    nan = denoise_frame(x, dm, stats, model, DenoiseConfig(masked_output="nan")).compute()
    assert np.array_equal(np.isnan(nan), bad)
    np.testing.assert_array_equal(nan[~bad], net[~bad])

    raw = denoise_frame(x, dm, stats, model, DenoiseConfig(masked_output="input")).compute()
    np.testing.assert_array_equal(raw[mask != 0], img[mask != 0])
    np.testing.assert_array_equal(raw[~bad], net[~bad])


def test_mask_with_other_chunks_is_rechunked():
    model = random_unet(1, 2, False, 12)
    img = make_image(80, 80, seed=12)
    mask = np.zeros(img.shape, np.uint8)
    mask[5, 5] = 1
    stats = frame_statistics(img, mask)
    out = denoise_frame(
        da.from_array(img, chunks=(40, 40)), da.from_array(mask, chunks=(80, 20)), stats, model
    ).compute()
    assert_matches(out, whole_image(model, img, stats, mask), stats)


# --------------------------------------------------------------------------- store / resume


@pytest.fixture
def survey(tmp_path):
    """A two-frame store (layout of pausdenoise.store): 288x192 frames in 96x96 chunks."""
    from pausdenoise import store

    path = tmp_path / "survey.zarr"
    store.init_store(path)
    frames = []
    for k in range(2):
        img = make_image(288, 192, seed=20 + k)
        mask = np.zeros(img.shape, np.uint8)
        mask[100:104, 30:34] = 1
        frame = store.frame_id(1000 + k, 1)
        store.write_frame(path, frame, {"image": img, "mask": mask}, {"band": "NB455"},
                          chunks=(96, 96))
        frames.append(frame)
    return path, frames


def _read(path, frame, name="denoised"):
    from pausdenoise import store

    return store.open_frame(path, frame, name).compute()


def test_denoise_to_store_matches_denoise_frame(survey):
    from pausdenoise import store

    path, frames = survey
    model = random_unet(2, 3, False, 13)
    ds = [denoise_to_store(path, f, model) for f in frames]
    counts = dask.compute(*ds, scheduler="threads")  # two frames in one compute
    assert counts == (6, 6)  # 3 x 2 chunks each
    for f in frames:
        img = store.open_frame(path, f, "image")
        mask = store.open_frame(path, f, "mask")
        arr = store.open_store(path)[f"frames/{f}/denoised"]
        stats = FrameStats(arr.attrs["sky"], arr.attrs["sigma"])
        direct = denoise_frame(img, mask, stats, model).compute()
        np.testing.assert_array_equal(_read(path, f), direct)
        assert arr.attrs["complete"] is True
    # a rerun finds everything done
    assert dask.compute(*[denoise_to_store(path, f, model) for f in frames]) == (0, 0)
    # a frame whose ingest is incomplete is refused
    store.mark_incomplete(path, frames[1])
    with pytest.raises(store.StoreError, match="not completely ingested"):
        denoise_to_store(path, frames[1], model)


def test_resume_after_interruption_equals_uninterrupted(survey, tmp_path, monkeypatch):
    from pausdenoise import store

    path, frames = survey
    frame = frames[0]
    model = random_unet(2, 3, True, 14)
    assert denoise_to_store(path, frame, model).compute(scheduler="sync") == 6
    uninterrupted = _read(path, frame)

    # Interrupt: the third chunk write raises (sync scheduler: two chunks are done before).
    real = dn._write_block
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(dn, "_write_block", flaky)
    with pytest.raises(KeyboardInterrupt):
        denoise_to_store(path, frame, model, force=True).compute(scheduler="sync")
    monkeypatch.setattr(dn, "_write_block", real)

    root = store.open_store(path)
    done = root[f"frames/{frame}/denoised_done"][...]
    assert done.sum() == 2
    arr = root[f"frames/{frame}/denoised"]
    assert arr.attrs["complete"] is False
    partial = _read(path, frame)  # the store stays readable: done chunks hold values,
    assert np.isnan(partial).any() and np.isfinite(partial).any()  # others NaN (fill)

    assert denoise_to_store(path, frame, model).compute(scheduler="sync") == 4  # only the rest
    np.testing.assert_array_equal(_read(path, frame), uninterrupted)
    assert store.open_store(path)[f"frames/{frame}/denoised"].attrs["complete"] is True

    # another model: everything is recomputed
    other = random_unet(2, 3, True, 15)
    assert denoise_to_store(path, frame, other).compute(scheduler="sync") == 6
    assert not np.array_equal(_read(path, frame), uninterrupted)


# --------------------------------------------------------------------------- precision


def test_precision_error_measured_against_float32_on_cpu_bf16():
    model = random_unet(2, 4, False, 16)
    img = make_image(64, 64, seed=16)
    res = dn.measure_precision_error(model, img, frame_statistics(img),
                                     precision="bfloat16", device="cpu")
    assert res["device"] == "cpu"
    assert 0 < res["rms_sigma"] < 0.2  # bf16 (8-bit mantissa) is visibly, not grossly, off
    assert res["max_abs_sigma"] >= res["rms_sigma"]


# --------------------------------------------------------------------------- CPU inference


@pytest.mark.parametrize("n2v2", [False, True])
@pytest.mark.parametrize("posterior", ["none", "gaussian"])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_optimised_network_equals_eager(n2v2, posterior, batch_norm):
    """The traced/frozen channels-last copy gives the eager output within 1e-5 σ, at sizes
    other than the one it was traced at (odd sizes padded by predict_array, batches)."""
    model = random_unet(2, 4, n2v2, 21, posterior)
    if not batch_norm:
        model = UNet(UNetConfig(depth=2, base_channels=4, n2v2=n2v2, posterior=posterior,
                                batch_norm=False)).eval()
    opt = optimise_for_inference(model)
    assert isinstance(opt, OptimisedUNet) and opt.backend == "jit"
    assert opt.config == model.config and opt.halo() == model.halo()
    rng = np.random.default_rng(21)
    for shape in [(1, 1, 100, 76), (3, 1, 64, 200), (1, 1, 37, 41)]:
        x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * 3)
        want = predict_array(model, x, prior_scale=2.0)
        got = predict_array(opt, x, prior_scale=2.0)
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= TOL
    assert all(not p.requires_grad for p in opt.parameters())
    assert any(p.requires_grad for p in model.parameters())  # the original is untouched


def test_optimise_falls_back_to_eager_when_tracing_fails(monkeypatch, caplog):
    model = random_unet(2, 4, False, 22)

    def broken(*args, **kwargs):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(torch.jit, "trace", broken)
    with caplog.at_level("DEBUG", logger="pausdenoise.n2v.unet"):
        opt = optimise_for_inference(model)
    assert opt.backend == "eager"
    assert "no TorchScript here" in caplog.text
    x = torch.randn(2, 1, 48, 64)
    assert float((predict_array(opt, x) - predict_array(model, x)).abs().max()) <= TOL


def test_optimise_without_torch_jit_freeze(monkeypatch):
    """A torch without TorchScript's freeze (torch itself needs ``torch.jit``, so the
    missing piece is simulated one level down) gives the eager channels-last network."""
    model = random_unet(2, 4, True, 23)
    monkeypatch.delattr(torch.jit, "freeze")
    opt = optimise_for_inference(model)
    assert opt.backend == "eager"
    x = torch.randn(1, 1, 64, 64)
    assert float((predict_array(opt, x) - predict_array(model, x)).abs().max()) <= TOL


def test_cpu_workers_cache_the_optimised_network(monkeypatch):
    ref = ModelRef.from_model(random_unet(2, 4, False, 24))
    clear_model_cache()
    monkeypatch.delenv("PAUSDENOISE_CPU_OPTIMISE", raising=False)
    a = dn.get_model(ref, "cpu")
    assert isinstance(a, OptimisedUNet) and dn.get_model(ref, "cpu") is a
    assert model_cache_info() == {"loads": 1, "hits": 1, "size": 1}
    assert isinstance(dn.get_model(ref, "cpu", optimise=False), UNet)
    monkeypatch.setenv("PAUSDENOISE_CPU_OPTIMISE", "0")
    assert not dn.cpu_optimise_default()
    assert isinstance(dn.get_model(ref, "cpu"), UNet)
    clear_model_cache()


def test_chunked_result_independent_of_cpu_optimisation(monkeypatch):
    model = random_unet(2, 4, False, 25, "gaussian")
    img = make_image(160, 128, seed=25)
    stats = frame_statistics(img)
    x = da.from_array(img, chunks=(64, 64))
    cfg = DenoiseConfig(device="cpu", tile_size=32, batch_size=2)
    clear_model_cache()
    fast = denoise_frame(x, None, stats, model, cfg).compute(scheduler="sync")
    monkeypatch.setenv("PAUSDENOISE_CPU_OPTIMISE", "0")
    clear_model_cache()
    plain = denoise_frame(x, None, stats, model, cfg).compute(scheduler="sync")
    clear_model_cache()
    assert_matches(fast, in_sigma(plain, stats), stats)


def test_cpu_bfloat16_only_when_explicit():
    """``device='auto'`` on a CPU worker never runs bf16 (warning, float32 result);
    ``device='cpu', precision='bfloat16'`` does (different from float32, close to it)."""
    model = random_unet(2, 4, False, 26)
    img = make_image(96, 96, seed=26)
    stats = frame_statistics(img)
    x = da.from_array(img, chunks=(48, 48))
    f32 = denoise_frame(x, None, stats, model, DenoiseConfig(device="cpu")).compute()
    with pytest.warns(RuntimeWarning, match="using float32"):
        auto = denoise_frame(x, None, stats, model,
                             DenoiseConfig(device="auto", precision="bfloat16")).compute()
    np.testing.assert_array_equal(auto, f32)
    bf16 = denoise_frame(x, None, stats, model,
                         DenoiseConfig(device="cpu", precision="bfloat16")).compute()
    d = np.abs(in_sigma(bf16, stats) - in_sigma(f32, stats))
    assert 0 < d.max() < 0.5 and np.sqrt(np.mean(d**2)) < 0.05
    assert (dn.denoise_key(ModelRef.from_model(model), stats, model.halo(),
                           DenoiseConfig(device="cpu", precision="bfloat16"))
            != dn.denoise_key(ModelRef.from_model(model), stats, model.halo(),
                              DenoiseConfig(device="cpu")))


# --------------------------------------------------------------------------- checkpoint / gpu


def test_checkpoint_ref_gives_same_result(tmp_path):
    ckpt = pytest.importorskip("pausdenoise.n2v.checkpoint")
    model = random_unet(2, 3, False, 17)
    path = tmp_path / "model.safetensors"
    ckpt.save_checkpoint(path, model)
    ref = ModelRef.from_checkpoint(path)
    assert ref.weights is None and ref.halo == model.halo()
    assert ref.nbytes < 2000  # only the path travels in the graph
    img = make_image(96, 96, seed=17)
    stats = frame_statistics(img)
    x = da.from_array(img, chunks=(48, 48))
    a = denoise_frame(x, None, stats, str(path)).compute()
    b = denoise_frame(x, None, stats, model).compute()
    np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
def test_gpu_float32_matches_cpu_and_bf16_error_is_small():
    model = random_unet(2, 8, False, 18)
    img = make_image(256, 256, seed=18)
    stats = frame_statistics(img)
    x = da.from_array(img, chunks=(128, 128))
    cpu = denoise_frame(x, None, stats, model, DenoiseConfig(device="cpu")).compute()
    gpu = denoise_frame(
        x, None, stats, model, DenoiseConfig(device="cuda", tile_size=64, batch_size=4)
    ).compute()
    assert np.abs(in_sigma(gpu, stats) - in_sigma(cpu, stats)).max() < 1e-4
    res = dn.measure_precision_error(model, img, stats, precision="bfloat16", device="cuda")
    assert res["rms_sigma"] < 0.2
