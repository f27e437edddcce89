"""Resumable writing into the store (:mod:`pausdenoise.denoise.writer`): equality with
in-memory denoising, resume after an interruption, recompute on another model."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from denoise_cases import make_image, random_unet

from pausdenoise.denoise import denoise_frame, denoise_to_store, writer
from pausdenoise.n2v.normalise import FrameStats

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
    real = writer._write_block
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "_write_block", flaky)
    with pytest.raises(KeyboardInterrupt):
        denoise_to_store(path, frame, model, force=True).compute(scheduler="sync")
    monkeypatch.setattr(writer, "_write_block", real)

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


def test_frame_side_not_a_multiple_of_the_chunk(tmp_path):
    """A 296-px-high frame in 96-px chunks ends in an 8-px chunk, narrower than the halo:
    the writer merges it into its neighbour, and the result is the whole-frame one."""
    from pausdenoise import store
    from pausdenoise.denoise.model import as_model_ref
    from pausdenoise.denoise.tiling import merge_short_edges, resolve_halo

    model = random_unet(2, 3, False, 17)
    halo = resolve_halo(as_model_ref(model))
    assert 8 < halo
    assert merge_short_edges(((96, 96, 96, 8), (96, 96)), halo) == ((96, 96, 104), (96, 96))
    assert merge_short_edges(((96, 96),), halo) == ((96, 96),)
    path = tmp_path / "odd.zarr"
    store.init_store(path)
    img = make_image(296, 192, seed=5)
    frame = store.frame_id(1000, 1)
    store.write_frame(path, frame, {"image": img}, {"band": "NB455"}, chunks=(96, 96))
    assert denoise_to_store(path, frame, model).compute(scheduler="sync") == 6
    arr = store.open_store(path)[f"frames/{frame}/denoised"]
    stats = FrameStats(arr.attrs["sky"], arr.attrs["sigma"])
    whole = store.open_frame(path, frame, "image").rechunk((296, 192))
    direct = denoise_frame(whole, None, stats, model).compute()
    # float32 round-off of a different tiling only (1 ulp at ~150 ADU is 1.5e-5)
    np.testing.assert_allclose(_read(path, frame), direct, rtol=2e-7, atol=0)
    assert denoise_to_store(path, frame, model).compute(scheduler="sync") == 0
