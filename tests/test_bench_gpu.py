"""Smoke test of ``benchmarks/bench_gpu.py`` on CPU with tiny sizes (no mocks).

Runs every section (network-only sweep, precision error, end to end on a one-worker
cluster, training) and checks the markdown section, the ``--append`` file and the JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _positive(v: object) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v > 0


def test_bench_gpu_cpu_quick_tiny(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_gpu

    out_json = tmp_path / "gpu.json"
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    rc = bench_gpu.main([
        "--device", "cpu", "--quick", "--ny", "256", "--nx", "256", "--chunk", "128",
        "--channels", "8", "--ccds", "1", "--error-shape", "256", "256", "--torch-threads", "1",
        "--tilings", "whole", "64/4", "--warmup", "2", "--repeat", "1",
        "--train-batch", "4", "--train-patch", "32", "--train-epochs", "2",
        "--train-steps", "2", "--store", str(tmp_path), "--json", str(out_json),
        "--results", str(results), "--append",
    ])
    text = capsys.readouterr().out
    assert rc == 0, text

    # the section says the figures are CPU figures, and has every table
    assert "CPU figures, not GPU" in text
    assert "**CPU figures: these were measured with `--device cpu`" in text
    for heading in ("### Network only", "### Precision error vs float32",
                    "### End to end", "### Training"):
        assert heading in text
    for row in ("| float32 | whole |", "| float32 | 64/4 |", "| bfloat16 | whole |",
                "| bfloat16 | sky |", "| bfloat16 | source |", "| float32 | all |"):
        assert row in text, row
    assert "n/a (CPU)" in text  # the 300 Mpix/s goal column
    appended = results.read_text()
    assert appended.startswith("# results\n") and "## bench_gpu " in appended

    res = json.loads(out_json.read_text())
    assert res["device"] == "cpu" and "CPU figures" in res["note"] and "failed" not in res
    assert {(r["precision"], r["tiling"]) for r in res["network"]} == {
        ("float32", "whole"), ("float32", "64/4"), ("bfloat16", "whole"), ("bfloat16", "64/4")}
    assert all(_positive(r["mpix_per_s"]) and _positive(r["seconds"]) for r in res["network"])
    assert all(r["peak_gpu_gib"] is None for r in res["network"])  # no tf32 row, no GPU

    err = {(r["precision"], r["pixels"]): r for r in res["precision_error"]}
    for pixels in ("all", "sky", "source"):
        f32 = err[("float32", pixels)]
        assert f32["n"] > 0
        assert f32["rms_sigma"] == f32["max_abs_sigma"] == f32["p99_abs_sigma"] == 0.0
        bf = err[("bfloat16", pixels)]
        assert math.isfinite(bf["rms_sigma"]) and bf["max_abs_sigma"] >= bf["rms_sigma"]
    assert err[("bfloat16", "all")]["from"] == "measure_precision_error"

    (e2e,) = res["e2e"]  # 1 CCD, float32, 1 worker x 1 thread
    assert e2e["ccds"] == 1 and e2e["precision"] == "float32" and e2e["workers"] == 1
    assert _positive(e2e["mpix_per_s"]) and _positive(e2e["network_mpix_per_s"])
    assert math.isfinite(e2e["io_share"]) and e2e["io_share"] < 1
    assert e2e["goal_reached"] is False

    (train,) = res["train"]
    assert _positive(train["patches_per_s"]) and train["device"] == "cpu"
    assert train["precision"] == "fp32"
