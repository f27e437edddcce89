"""``benchmarks/bench_stack_profile.py``: the stack-profile flux and its error.

Checked against answers known without the implementation: with the source's own noiseless
image as the profile the estimator returns the flux inside the stamp and its pulls on
repeated noise have σ68 ≈ 1; a stack scaled by any constant gives the same flux (``p`` is
normalised); a masked pixel is left out; a stamp over the edge is not measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pausdenoise.stats import sigma68

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SKY, SIGMA, FLUX, GAIN = 100.0, 5.0, 3000.0, 1e9  # huge gain: no source Poisson term


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_stack_profile

    return bench_stack_profile


def _source(shape=(64, 64), x0=30.3, y0=31.6, width=2.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    return FLUX * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * width**2)) / (
        2 * np.pi * width**2)


def _rows(x=30.3, y=31.6) -> pd.DataFrame:
    return pd.DataFrame({"x": [x], "y": [y], "bkg": [SKY], "bkg_std": [SIGMA],
                         "bkg_n": [10**6]})


def test_stack_flux_is_unbiased_with_calibrated_errors(bench):
    model = _source()
    rad = 8
    inside = model[32 - rad: 32 + rad + 1, 30 - rad: 30 + rad + 1].sum()
    rng = np.random.default_rng(1)
    fluxes, errs = [], []
    for _ in range(400):
        image = SKY + model + rng.normal(0.0, SIGMA, model.shape)
        data = {"image": image, "mask": None, "gain": GAIN}
        f, e = bench._stack_flux(7.0 * model, data, _rows(), np.array([rad]))
        fluxes.append(f[0])
        errs.append(e[0])
    fluxes, errs = np.array(fluxes), np.array(errs)
    assert np.mean(fluxes) == pytest.approx(inside, rel=0.01)
    assert sigma68((fluxes - inside) / errs) == pytest.approx(1.0, abs=0.1)


def test_masked_pixels_and_edges(bench):
    model = _source()
    image = SKY + model
    mask = np.zeros(model.shape, np.uint16)
    mask[32, 30] = 1  # the brightest pixel: left out, the flux still comes out right
    image[32, 30] = 1e9
    data = {"image": image, "mask": mask, "gain": GAIN}
    rows = pd.concat([_rows(), _rows(x=3.0, y=3.0)], ignore_index=True)
    f, e = bench._stack_flux(model, data, rows, np.array([8, 8]))
    rad = 8
    inside = model[32 - rad: 32 + rad + 1, 30 - rad: 30 + rad + 1].sum()
    assert f[0] == pytest.approx(inside, rel=1e-6)
    assert np.isfinite(e[0]) and np.isnan(f[1]) and np.isnan(e[1])
