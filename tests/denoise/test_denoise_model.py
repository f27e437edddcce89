"""Model references and the per-process cache (:mod:`pausdenoise.denoise.model`): one load
per process under every scheduler, weights once in the graph, the optimised CPU network,
checkpoint refs."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
import torch
from denoise_cases import TOL, assert_matches, in_sigma, make_image, random_unet

from pausdenoise import denoise as dn
from pausdenoise.denoise import (
    DenoiseConfig,
    ModelRef,
    clear_model_cache,
    denoise_frame,
    model_cache_info,
)
from pausdenoise.n2v.normalise import frame_statistics
from pausdenoise.n2v.unet import (
    OptimisedUNet,
    UNet,
    UNetConfig,
    optimise_for_inference,
    predict_array,
)

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
