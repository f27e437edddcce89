"""``benchmarks/bench_precision.py``: photometric judgement of reduced-precision outputs.

The flux differences are checked against numbers known by construction: identical outputs
give zero, a constant offset inside every aperture gives offset × aperture area (the
annulus background moves by the same offset unless the offset is confined to the
aperture), and the per-bin summary bins by I_auto as documented.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pausdenoise.photometry import measure_frame

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
GAIN = 0.65


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_precision

    return bench_precision


def _frame(seed: int = 0):
    """Flat sky with noise, five Gaussian sources, their catalogue rows (arcsec axes)."""
    rng = np.random.default_rng(seed)
    ny, nx = 200, 220
    image = rng.normal(1000.0, 30.0, (ny, nx)).astype(np.float32)
    x = np.array([50.3, 110.7, 170.2, 60.5, 150.9])
    y = np.array([50.1, 60.4, 140.8, 150.2, 100.6])
    yy, xx = np.mgrid[0:ny, 0:nx]
    for xi, yi, f in zip(x, y, [5e4, 2e4, 8e3, 3e3, 1e3], strict=True):
        image += (f / (2 * np.pi * 1.5**2)
                  * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / (2 * 1.5**2))).astype(np.float32)
    cat = pd.DataFrame({
        "ref_id": np.arange(5, dtype=np.int64), "I_auto": [16.5, 17.5, 19.5, 21.5, 23.5],
        "expnum": 1, "ccd": 1, "band": "NB455", "aperture_x": x, "aperture_y": y,
        "aperture_a": 1.2, "aperture_b": 1.0, "aperture_theta": 30.0,
    })
    attrs = {"gain": GAIN, "zp": 1.0, "zp_err": 0.0, "expnum": 1, "ccd": 1, "band": "NB455"}
    return image, np.zeros((ny, nx), np.uint8), cat, attrs


def test_identical_outputs_give_zero(bench):
    image, mask, cat, attrs = _frame()
    den = image - 3.0
    rows = bench.flux_differences(image, mask, {"float32": den, "bfloat16": den.copy()},
                                  cat, attrs, "bfloat16")
    assert len(rows) == 5
    assert np.all(rows["d_err"] == 0) and np.all(rows["d_rel"] == 0)
    assert set(rows["band"]) == {"NB455"}


def test_offset_inside_apertures_is_area_times_offset(bench):
    image, mask, cat, attrs = _frame(1)
    f32 = image.copy()
    red = image.copy()
    ref = measure_frame(image, mask, cat, gain=GAIN)
    # +2 ADU on the pixels of the first source's aperture only (annulus untouched): its flux
    # moves by 2 × (the area the photometry sums, in px), the others do not move
    x0, y0 = cat.loc[0, ["aperture_x", "aperture_y"]]
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    inside = (xx - x0) ** 2 + (yy - y0) ** 2 <= 10.0**2
    red[inside] += 2.0
    rows = bench.flux_differences(image, mask, {"float32": f32, "bfloat16": red}, cat, attrs,
                                  "bfloat16")
    d = rows["d_err"].to_numpy() * rows["flux_err_raw"].to_numpy()
    np.testing.assert_allclose(d[0], 2.0 * ref.loc[0, "area"], rtol=1e-4)
    np.testing.assert_allclose(d[1:], 0.0, atol=1e-6)
    np.testing.assert_allclose(rows["flux_err_raw"], ref["flux_err"], rtol=1e-12)


def test_flagged_rows_are_left_out(bench):
    image, mask, cat, attrs = _frame(2)
    mask[int(cat.loc[2, "aperture_y"]), int(cat.loc[2, "aperture_x"])] = 1  # masked centre
    cat.loc[4, "aperture_x"] = -50.0  # outside the image
    rows = bench.flux_differences(image, mask, {"float32": image, "bfloat16": image}, cat,
                                  attrs, "bfloat16")
    flags = measure_frame(image, mask, cat, gain=GAIN)["flags"].to_numpy()
    assert len(rows) == int((flags == 0).sum()) < 5


def test_summary_bins_by_i_auto(bench):
    rows = pd.DataFrame({
        "I_auto": [16.0, 17.5, 17.6, 22.5, 24.0],
        "d_err": [0.5, -0.1, 0.1, 0.02, -0.03],
        "d_rel": [1e-3, -1e-4, 1e-4, 1e-5, -1e-5],
    })
    t = bench.summarise(rows).set_index("bin")
    assert t.loc["< 17", "n"] == 1 and t.loc["> 23", "n"] == 1
    assert t.loc["17–18", "n"] == 2 and t.loc["18–19", "n"] == 0
    assert t.loc["17–18", "max_abs_d_err"] == pytest.approx(0.1)
    assert t.loc["all", "n"] == 5
    assert t.loc["all", "max_abs_d_err"] == pytest.approx(0.5)
    assert np.isnan(t.loc["18–19", "median_d_err"])
