"""``benchmarks/bench_gan_train.py``: one tiny timing per precision, printed one line each
after the machine's line, and the timed step runs in both precisions."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_gan_train  # the script, from benchmarks/ on the path

    return bench_gan_train


def test_a_tiny_timing_prints_one_line_per_precision(bench, capsys):
    assert bench.main(["--precision", "fp32", "bf16", "--depth", "2", "--channels", "4",
                       "--size", "32", "--batch", "2", "--steps", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("machine: ") and "bfloat16 units:" in out[0]
    assert [line.split(":")[0] for line in out[1:]] == ["fp32", "bf16"]
    assert all(float(line.split()[1]) > 0 for line in out[1:])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_timed_step_is_finite(bench, precision):
    assert bench.time_steps(precision, depth=2, channels=4, size=32, batch=2, steps=2,
                            warmup=0) > 0
