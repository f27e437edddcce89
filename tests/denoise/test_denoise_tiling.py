"""Tiled inference (:mod:`pausdenoise.denoise.tiling`): seam-free equality with whole-image
inference, chunk and halo rules, masked and NaN pixels."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
from denoise_cases import assert_matches, in_sigma, make_image, random_unet, whole_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pausdenoise.denoise import (
    ChunkingError,
    DenoiseConfig,
    ModelRef,
    check_chunks,
    denoise_frame,
    suggest_chunks,
)
from pausdenoise.denoise.tiling import _map_denoise
from pausdenoise.n2v.normalise import FrameStats, frame_statistics, normalise
from pausdenoise.n2v.unet import predict_array


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
    kernel_size = draw(st.sampled_from([0, 3])) if posterior == "none" else 0
    seed = draw(st.integers(0, 10_000))
    ny, nx = draw(st.integers(40, 200)), draw(st.integers(40, 200))
    model = random_unet(depth, channels, n2v2, seed, posterior, kernel_size)
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
    good = _map_denoise(x, None, stats, ref_obj, cfg, model.halo()).compute()
    bad = _map_denoise(x, None, stats, ref_obj, cfg, 4).compute()
    assert_matches(good, ref, stats)
    diff = np.abs(in_sigma(bad, stats) - ref)
    assert diff.max() > 1e-3  # seams, far above the 1e-5 σ tolerance
    # ... and they sit at the seams: far from the chunk boundaries at 64 the result is exact
    rf = model.receptive_field_radius()
    assert_matches(bad[: 64 - rf, : 64 - rf], ref[: 64 - rf, : 64 - rf], stats)
    assert diff[60:68].max() > 1e-3 or diff[:, 60:68].max() > 1e-3


@pytest.mark.parametrize("kernel_size", [3, 9])
def test_kernel_head_is_seam_free(kernel_size):
    model = random_unet(2, 3, False, 7, kernel_size=kernel_size)
    plain_halo = random_unet(2, 3, False, 7).halo()
    assert model.halo() >= plain_halo  # the kernels' radius is part of the receptive field
    img = make_image(160, 136, seed=7)
    stats = frame_statistics(img)
    ref = whole_image(model, img, stats)
    x = da.from_array(img, chunks=(80, 72))
    out = denoise_frame(x, None, stats, model, DenoiseConfig(batch_size=2))
    assert_matches(out.compute(scheduler="sync"), ref, stats)  # image edges included
    short = _map_denoise(x, None, stats, ModelRef.from_model(model), DenoiseConfig(),
                         4).compute()
    assert np.abs(in_sigma(short, stats) - ref).max() > 1e-3  # a short halo shows seams



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
