"""``benchmarks/bench_injection.py``: the RESULTS.md tables it writes.

A run that injects only into some magnitude bins lists those bins alone (a bin with only
flagged injections still counts: flagged rows are reported, not hidden), the command
line it records can be pasted back into a shell, and pooled injection realisations are kept
so that adding seeds later injects only the new ones.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_injection

    return bench_injection


def _bias_row(estimator: str, band: str, bin_: str, n: int, n_flagged: int) -> dict:
    nan = np.nan if n == 0 else 0.01
    return {"estimator": estimator, "band": band, "bin": bin_, "n": n,
            "n_flagged": n_flagged, "median_rel_bias": nan, "ci_lo": nan, "ci_hi": nan,
            "pull_sigma68": nan, "pull_ci_lo": nan, "pull_ci_hi": nan, "rel_scatter": nan,
            "cr_ratio": np.nan}


def test_bias_lines_leave_out_bins_without_injections(bench):
    bias = pd.DataFrame([
        _bias_row("raw_profile", "all", "21-22", 0, 0),
        _bias_row("raw_profile", "all", "22-23", 120, 1),
        _bias_row("raw_profile", "all", "23-24", 0, 2),  # flagged only: still listed
        _bias_row("raw_profile", "NB455", "22-23", 40, 0),  # per band: not in this table
    ])
    lines = bench.bias_lines(bias)
    rows = lines[2:]
    assert [r.split(" | ")[1] for r in rows] == ["22-23", "23-24"]
    assert "120 (1)" in rows[0] and "0 (2)" in rows[1]


def test_recorded_command_keeps_quoted_arguments(bench, tmp_path, capsys):
    inj = tmp_path / "inject"  # a finished run's tables, as the inject stage writes them
    inj.mkdir()
    pd.DataFrame([_bias_row("raw_profile", "all", "22-23", 120, 1)]).to_csv(
        inj / "bias_by_bin.csv", index=False)
    pd.DataFrame([{"estimator": "raw_profile", "colour": "NB455-NB845", "bin": "22-23",
                   "n": 0, "median_colour_bias": np.nan, "ci_lo": np.nan, "ci_hi": np.nan,
                   "method": "band medians"}]).to_csv(inj / "colour_bias.csv", index=False)
    pd.DataFrame({"expnum": [1], "ccd": [1], "band": ["NB455"]}).to_parquet(
        inj / "truth.parquet")
    args = ["--out", str(tmp_path), "--title", "two words", "--set", "inject.mag_range=[22,23]"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Source injection: two words (")
    command = next(line for line in out.splitlines() if line.startswith("command: "))
    assert shlex.split(command.removeprefix("command: `").rstrip(" `"))[2:] == args
    assert "| raw_profile | 22-23 | 120 (1) |" in out and "(no colour: one band only)" in out


def test_colour_lines_show_the_flux_scale_colour_when_the_table_has_it(bench):
    row = {"estimator": "raw_profile", "colour": "NB455-NB845", "bin": "22-23", "n": 80,
           "median_colour_bias": -0.01, "ci_lo": -0.04, "ci_hi": 0.02, "method": "per source"}
    old = bench.colour_lines(pd.DataFrame([row]))
    assert old[2].count("|") == 5
    assert old[4] == "| raw_profile | 22-23 | 80 | -0.010 [-0.040, +0.020] |"
    new = bench.colour_lines(pd.DataFrame([{**row, "scale_colour_bias": 0.005,
                                            "scale_ci_lo": np.nan, "scale_ci_hi": 0.012}]))
    assert "flux scales" in new[0] and new[2].count("|") == 6
    assert new[4] == "| raw_profile | 22-23 | 80 | -0.010 [-0.040, +0.020] | +0.005 [—, +0.012] |"


def test_bias_lines_add_the_flux_scale_bias_when_the_table_has_it(bench):
    row = _bias_row("raw_profile", "all", "22-23", 120, 0)
    assert "flux-scale" not in bench.bias_lines(pd.DataFrame([row]))[0]
    lines = bench.bias_lines(pd.DataFrame([{**row, "scale_bias": -0.004, "scale_ci_lo": -0.011,
                                            "scale_ci_hi": 0.002}]))
    assert lines[0].endswith("| flux-scale bias % [95 % CI] |") and lines[1].endswith("---:|---|")
    assert lines[2].endswith("| -0.4 [-1.1, +0.2] |")


def test_pooled_realisations_are_kept_and_reused_when_seeds_are_added(bench, tmp_path,
                                                                      capsys):
    import yaml
    from pipeline_fixtures import TINY

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "inject": {
        "per_frame": 6, "min_separation_px": 10, "edge_px": 20, "detect_nsigma": 5}}))
    out = tmp_path / "out"
    common = ["--config", str(cfg), "--out", str(out)]
    assert bench.main([*common, "--stages", "simulate,ingest,train,denoise,photometry,inject",
                       "--seeds", "0,1"]) == 0
    groups = list((out / bench.REALISATIONS).iterdir())
    assert len(groups) == 1  # one set of settings
    saved = groups[0]
    first = pd.read_parquet(out / "inject-pooled" / "truth.parquet")
    step = bench.REALISATION_ID_STEP
    assert set(first["ref_id"] // step) == {0, 1}
    mtime = (saved / "seed-1" / "photometry.parquet").stat().st_mtime_ns
    capsys.readouterr()

    # one more seed: the two saved realisations are reused as they are, keeping their ids
    assert bench.main([*common, "--stages", "inject", "--seeds", "1,0,2"]) == 0
    err = capsys.readouterr().err
    assert "seed 0: reused" in err and "seed 1: reused" in err and "seed 2: reused" not in err
    assert (saved / "seed-1" / "photometry.parquet").stat().st_mtime_ns == mtime
    pooled = pd.read_parquet(out / "inject-pooled" / "truth.parquet")
    assert set(pooled["ref_id"] // step) == {0, 1, 2}
    keys = ["ref_id", "expnum", "ccd"]
    old = pooled[pooled["ref_id"] // step < 2].sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(old, first.sort_values(keys).reset_index(drop=True))
    phot = pd.read_parquet(out / "inject-pooled" / "photometry.parquet")
    assert set(phot["ref_id"]) <= set(pooled["ref_id"])

    # other settings make a different realisation: it is injected again, not reused
    assert bench.main([*common, "--stages", "inject", "--seeds", "0",
                       "--set", "inject.per_frame=4"]) == 0
    assert "reused" not in capsys.readouterr().err
    other = [g for g in (out / bench.REALISATIONS).iterdir() if g != saved]
    assert len(other) == 1 and (pd.read_parquet(other[0] / "seed-0" / "truth.parquet")
                                .groupby(["expnum", "ccd"]).size().max() <= 4)
    # ... and the first settings' realisations are still there to be reused
    assert bench.main([*common, "--stages", "inject", "--seeds", "0"]) == 0
    assert "seed 0: reused" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="distinct"):
        bench.main([*common, "--stages", "inject", "--seeds", "0,0"])
