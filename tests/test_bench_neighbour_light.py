"""``benchmarks/bench_neighbour_light.py``: the apertures it reads back from a run's raw
photometry are the ones the photometry measured (centres, semi-axes × the scale, angles in
the photometry's own convention once read in again)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pausdenoise.photometry.apertures import _aperture_geometry
from pausdenoise.photometry.config import PhotometryConfig

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_neighbour_light

    return bench_neighbour_light


def test_the_frame_s_apertures_come_back_from_its_photometry(bench, tmp_path):
    rng = np.random.default_rng(3)
    n = 50
    measured = pd.DataFrame({
        "ref_id": np.arange(n), "I_auto": rng.uniform(10, 16, n),
        "x": rng.uniform(0, 511, n), "y": rng.uniform(0, 511, n),
        "a": rng.uniform(3, 20, n), "b": rng.uniform(2, 3, n),
        "theta": rng.uniform(-np.pi / 2, np.pi / 2, n)})
    part = tmp_path / "photometry" / "band=I" / "kind=raw"
    part.mkdir(parents=True)
    measured.to_parquet(part / "00000005_01.parquet")
    apertures = bench.frame_apertures(tmp_path, "00000005_01", 2.0)
    x, y, a, b, theta = _aperture_geometry(apertures,
                                           PhotometryConfig(aperture_units="pixel"))
    np.testing.assert_allclose(x, measured["x"])
    np.testing.assert_allclose(y, measured["y"])
    np.testing.assert_allclose(a, 2.0 * measured["a"])
    np.testing.assert_allclose(b, 2.0 * measured["b"])
    np.testing.assert_allclose(theta, measured["theta"])
    with pytest.raises(SystemExit, match="no raw photometry of frame 00000006_01"):
        bench.frame_apertures(tmp_path, "00000006_01", 1.0)
