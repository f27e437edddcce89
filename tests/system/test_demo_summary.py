"""The demo's printed summary, pinned.

``make demo`` runs ``pausdenoise run --config configs/demo.yaml``: the simulated survey end
to end on a local Dask cluster of 2 workers. Training is seeded and every stage is
deterministic on one machine, so what the demo prints (sky and source RMS gains against the
truth, the pair count, σ68 of Δf with raw and with cross-validated model errors) and the
cross-validated σ68 per I_auto bin are fixed numbers: a change of the code that moves any of
them changes the science and must say so here. Reference: x86-64 CPUs, torch 2.13.0 (CPU
build), one torch thread per worker. Two x86-64 CPU models seen so far round the training
differently and so train two different networks from the same seed; each gives its own
fixed set of numbers (``PINNED``, told apart by the train stage's line). A run must match
one set in full: a code change that moves either set fails here.

The run takes several minutes on 2 cores; it is the suite's one end-to-end demo run.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What each stage prints after "done in N s:", as ``make demo`` prints it; the stages whose
#: figures do not depend on the trained network.
COMMON_NOTES = {
    "simulate": re.compile(r"24 frames, 462 sources in \d+ s"),
    "ingest": re.compile(r"24 ingested, 0 up to date, 0 failed"),
    "denoise": re.compile(r"24 frames, 96 chunks written, [\d.]+ Mpix/s"),
    "photometry": re.compile(r"48 partitions written, 0 catalogue issues"),
}

#: Per CPU rounding: the network-dependent lines, and the cross-validated σ68 of Δf with the
#: calibrated denoised errors per row of compare/error_model_validation.csv (held-out
#: pairs, σ68 rounded to 3 decimals).
PINNED = {
    "rounding A": {
        "train": re.compile(
            r"12 epochs, best val loss 0\.4763, output offset \+0\.016 σ refitted, "
            r"\d+ patches/s on cpu"
        ),
        "compare": re.compile(
            r"25218 pairs; σ68 raw 1\.03, denoised/raw-errors 0\.40, "
            r"denoised/model-errors \(cross-validated\) 1\.00"
        ),
        "evaluate": re.compile(r"3 frames vs truth; sky RMS ÷20\.03, source RMS ÷1\.95"),
        "inject": re.compile(
            r"960 galaxies in 24 frames \(24 injected now, 96 chunks denoised, 96 partitions\); "
            r"worst \|median bias\| I 17-23: raw_aperture -2\.6 %, denoised_aperture -77\.8 %, "
            r"denoised_aperture_corrected \+3\.2 %, raw_profile -2\.7 %"
        ),
        "validation": {
            "all": (10807, 1.004),
            "17-18": (138, 0.977),
            "18-19": (174, 1.005),
            "19-20": (464, 1.007),
            "20-21": (645, 0.993),
            "21-22": (1298, 1.005),
            "22-23": (2573, 1.006),
            "band NB455": (3588, 1.001),
            "band NB615": (3579, 1.003),
            "band NB845": (3640, 1.009),
        },
    },
    "rounding B": {
        "train": re.compile(
            r"12 epochs, best val loss 0\.4762, output offset -0\.006 σ refitted, "
            r"\d+ patches/s on cpu"
        ),
        "compare": re.compile(
            r"25218 pairs; σ68 raw 1\.03, denoised/raw-errors 0\.49, "
            r"denoised/model-errors \(cross-validated\) 1\.00"
        ),
        "evaluate": re.compile(r"3 frames vs truth; sky RMS ÷15\.38, source RMS ÷1\.92"),
        "inject": re.compile(
            r"960 galaxies in 24 frames \(24 injected now, 96 chunks denoised, 96 partitions\); "
            r"worst \|median bias\| I 17-23: raw_aperture -2\.6 %, denoised_aperture -72\.3 %, "
            r"denoised_aperture_corrected -4\.7 %, raw_profile -2\.7 %"
        ),
        "validation": {
            "all": (10807, 1.005),
            "17-18": (138, 0.999),
            "18-19": (174, 1.040),
            "19-20": (464, 1.015),
            "20-21": (645, 0.992),
            "21-22": (1298, 1.009),
            "22-23": (2573, 0.995),
            "band NB455": (3588, 1.005),
            "band NB615": (3579, 0.999),
            "band NB845": (3640, 1.002),
        },
    },
}


def _printed_notes(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^\[(\w+)\] done in [\d.]+ s: (.*)$", stdout, re.MULTILINE))


def _rounding(notes: dict[str, str]) -> dict:
    """The pinned set whose train line the run printed (fails when none does)."""
    assert "train" in notes, f"the train stage did not finish: {notes}"
    for pins in PINNED.values():
        if pins["train"].fullmatch(notes["train"]):
            return pins
    raise AssertionError(f"[train] printed {notes['train']!r}: no pinned set has this line")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Run the demo configuration through the command line, as ``make demo`` does."""
    out = tmp_path_factory.mktemp("demo") / "run"
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # as in a plain shell
    proc = subprocess.run(
        [sys.executable, "-m", "pausdenoise.cli", "run", "--config",
         str(ROOT / "configs" / "demo.yaml"), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1700,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, out


@pytest.mark.timeout(1800)
def test_demo_prints_the_pinned_summary(demo_run):
    stdout, out = demo_run
    notes = _printed_notes(stdout)
    pins = _rounding(notes)
    expected = {**COMMON_NOTES, **{k: v for k, v in pins.items() if k != "validation"}}
    for stage, pattern in expected.items():
        assert stage in notes, f"stage {stage} did not finish:\n{stdout[-2000:]}"
        assert pattern.fullmatch(notes[stage]), f"[{stage}] printed {notes[stage]!r}"
    assert stdout.rstrip().endswith(f"report: {out / 'report' / 'index.html'}")


@pytest.mark.timeout(1800)
def test_demo_cross_validated_sigma68_per_bin_is_pinned(demo_run):
    stdout, out = demo_run
    pinned = _rounding(_printed_notes(stdout))["validation"]
    with open(out / "compare" / "error_model_validation.csv", newline="") as fh:
        rows = {r["bin"]: r for r in csv.DictReader(fh)}
    got = {b: (int(rows[b]["n_pairs"]), round(float(rows[b]["sigma68_den_model"]), 3))
           for b in pinned if b in rows}
    assert got == pinned
    assert all(rows[b]["passed"] == "True" for b in pinned)
