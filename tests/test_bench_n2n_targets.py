"""``benchmarks/bench_n2n_targets.py``: a Noise2Noise target judged against the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

SHAPE = (128, 128)
SKY, NOISE = 300.0, 10.0


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_n2n_targets

    return bench_n2n_targets


def _truth() -> np.ndarray:
    """Sky plus Gaussian stars (σ = 1.5 px) from 30 to 3000 σ at their peaks."""
    rng = np.random.default_rng(1)
    img = np.zeros(SHAPE)
    for _ in range(60):
        y, x = rng.integers(8, SHAPE[0] - 8, 2)
        img[y, x] += 10 ** rng.uniform(3.0, 5.5)
    return SKY + ndimage.gaussian_filter(img, 1.5)


def test_target_light_tells_a_faithful_target_from_a_blurred_faint_one(bench):
    truth = _truth()
    rng = np.random.default_rng(2)
    image = truth + rng.normal(0, NOISE, SHAPE)
    mask = np.zeros(SHAPE, np.uint8)
    sky_est = bench.frame_statistics(image, mask).sky
    # a faithful target: the truth plus a quarter of the noise, on the frame's sky estimate
    good = truth - SKY + sky_est + rng.normal(0, NOISE / 4, SHAPE)
    res = bench.target_light(image, mask, good, truth, SKY)
    for lo, _ in bench.LEVELS:
        assert res[f"light_{lo:g}"] == pytest.approx(1.0, abs=0.03), lo
    assert res["sky_rms_sigma"] == pytest.approx(0.25, abs=0.05)
    # 10 % faint and blurred: the cores lose a quarter, their light goes to the faint pixels
    bad = 0.9 * ndimage.gaussian_filter(truth - SKY, 1.0) + sky_est
    res = bench.target_light(image, mask, bad, truth, SKY)
    assert res["light_300"] < 0.8 and res["light_3"] > 1.2
    bad[:20] = np.nan  # undefined target pixels are left out, not counted as zero
    assert bench.target_light(image, mask, bad, truth, SKY)["light_300"] < 0.8
