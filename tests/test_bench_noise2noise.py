"""``benchmarks/bench_noise2noise.py``: Noise2Noise pairs and training on synthetic exposures.

A smooth random field (the truth) seen in several exposures with independent white noise:
a network trained to predict one exposure's neighbours' mean from it must denoise an
exposure it never saw, with no noise model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from pausdenoise.n2v.config import TrainConfig
from pausdenoise.n2v.normalise import frame_statistics

SHAPE = (96, 96)
SKY = 200.0
NOISE = 10.0


@pytest.fixture()
def n2n(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_noise2noise

    return bench_noise2noise


def _truth(rng: np.random.Generator) -> np.ndarray:
    return 60.0 * ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0, mode="wrap") / 0.14


def _exposure(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    return SKY + truth + rng.normal(0.0, NOISE, SHAPE)


def test_pair_normalises_input_and_target_alike(n2n):
    rng = np.random.default_rng(0)
    truth = _truth(rng)
    image = _exposure(rng, truth)
    good = np.ones(SHAPE, bool)
    good[5, 7] = False
    stats = frame_statistics(image, (~good).astype(np.uint8))
    refs = [_exposure(rng, truth) - stats.sky for _ in range(3)]  # the frame's sky off, as matched
    refs[1][10, 20] = np.nan
    pair = n2n.make_pair("f", image, good, refs, 64)
    assert pair.x.shape == pair.target.shape == pair.valid.shape == (SHAPE[0], 64)
    assert not pair.valid[5, 7] and not pair.valid[10, 20] and pair.valid.sum() == 96 * 64 - 2
    assert pair.x[5, 7] == 0.0 and pair.target[10, 20] == 0.0
    # same units (the frame's σ): input minus target is the frame's noise minus the mean
    # reference noise, centred, with σ · sqrt(1 + 1/3) in ADU
    d = (pair.x - pair.target)[pair.valid] * stats.sigma
    assert abs(np.mean(d)) < 0.05 * NOISE
    assert np.std(d) == pytest.approx(NOISE * np.sqrt(4 / 3), rel=0.05)


def test_noise2noise_denoises_an_unseen_exposure(n2n):
    rng = np.random.default_rng(1)
    pairs = []
    for k in range(4):
        truth = _truth(rng)
        refs = [_exposure(rng, truth) - SKY for _ in range(2)]
        pairs.append(n2n.make_pair(f"f{k}", _exposure(rng, truth), np.ones(SHAPE, bool),
                                   refs, SHAPE[1]))
    cfg = TrainConfig(unet={"depth": 2, "base_channels": 8, "batch_norm": False,
                            "posterior": "none"},
                      patch_size=32, batch_size=8, learning_rate=0.003, seed=0)
    # budgets in optimiser steps, so a loaded host trains as far as a quiet one (~20 s)
    model, snaps, rate = n2n.train_n2n(pairs, cfg, [200, 2000], in_steps=True)
    assert set(snaps) == {200, 2000} and rate > 0
    assert snaps[200].epochs == 200 // n2n.CHECK_EVERY
    assert snaps[2000].seconds > snaps[200].seconds
    truth = _truth(rng)
    image = _exposure(rng, truth)
    pair = n2n.make_pair("test", image, np.ones(SHAPE, bool), [truth], SHAPE[1])  # truth
    with torch.no_grad():
        out = model(torch.from_numpy(pair.x)[None, None])[0, 0].numpy()
    raw_rms = float(np.sqrt(np.mean((pair.x - pair.target) ** 2)))
    den_rms = float(np.sqrt(np.mean((out - pair.target) ** 2)))
    # an untrained or an identity network would give ≥ 1 ×
    assert den_rms < 0.7 * raw_rms
