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

VALIDATION_ROWS = ("all", "17-18", "18-19", "19-20", "20-21", "21-22", "22-23",
                   "band NB455", "band NB615", "band NB845")


def _pins(val_loss: str, offset: str, raw_errs: str, sky: str, source: str, den: str,
          corrected: str, sigma68: tuple[float, ...]) -> dict:
    """The network-dependent lines of one CPU rounding (numbers as printed)."""
    esc = re.escape
    return {
        "train": re.compile(rf"12 epochs, best val loss {esc(val_loss)}, output offset "
                            rf"{esc(offset)} σ refitted, \d+ patches/s on cpu"),
        "compare": re.compile(rf"25218 pairs; σ68 raw 1\.03, denoised/raw-errors "
                              rf"{esc(raw_errs)}, denoised/model-errors \(cross-validated\) "
                              r"1\.00"),
        "evaluate": re.compile(rf"3 frames vs truth; sky RMS ÷{esc(sky)}, source RMS "
                               rf"÷{esc(source)}"),
        "inject": re.compile(
            r"960 galaxies in 24 frames \(24 injected now, 96 chunks denoised, 96 partitions\); "
            rf"worst \|median bias\| I 17-23: raw_aperture -2\.6 %, denoised_aperture "
            rf"{esc(den)} %, denoised_aperture_corrected {esc(corrected)} %, raw_profile -2\.7 %"
        ),
        "validation": dict(zip(VALIDATION_ROWS, zip(
            (10807, 138, 174, 464, 645, 1298, 2573, 3588, 3579, 3640), sigma68, strict=True),
            strict=True)),
    }


#: Per CPU rounding: the network-dependent lines, and the cross-validated σ68 of Δf with the
#: calibrated denoised errors per row of compare/error_model_validation.csv (held-out
#: pairs, σ68 rounded to 3 decimals; rows as in ``VALIDATION_ROWS``).
PINNED = {
    "rounding A": _pins("0.4763", "+0.016", "0.40", "20.03", "1.95", "-77.8", "+3.2",
                        (1.004, 0.977, 1.005, 1.007, 0.993, 1.005, 1.006, 1.001, 1.003, 1.009)),
    "rounding B": _pins("0.4762", "-0.006", "0.49", "15.38", "1.92", "-72.3", "-4.7",
                        (1.005, 0.999, 1.040, 1.015, 0.992, 1.009, 0.995, 1.005, 0.999, 1.002)),
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
