"""Smoke test of the atheris fuzz harnesses (``benchmarks/fuzz/``), in the fast suite.

The coverage-guided runs themselves are ``make fuzz`` (minutes, needs the ``fuzz`` extra);
here each target's one-input function gets its seed corpus and a few hundred deterministic
random inputs, without atheris: every input must be accepted consistently or refused with
the project's own error naming the file. A harness that rots (an API renamed, a seed that
no longer decodes to a valid file) fails here rather than in the next fuzzing campaign.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

TARGETS_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz" / "targets.py"


@pytest.fixture(scope="module")
def targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pausdenoise_fuzz_targets", TARGETS_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["fits", "catalogue"])
def test_harness_accepts_seeds_and_random_inputs(targets, name):
    one_input, seeds = targets.TARGETS[name]
    rng = np.random.default_rng(2024)
    inputs = list(seeds())
    inputs += [bytes(rng.integers(0, 256, int(rng.integers(1, 1200)), dtype=np.uint8))
               for _ in range(150)]
    for data in inputs:
        one_input(data)  # raises on a finding


def test_seeds_reach_a_successful_read(targets, monkeypatch):
    """The seeds must produce accepted inputs, or the fuzzer would start from refusals only."""
    accepted: list[str] = []
    check = targets.check_frame
    monkeypatch.setattr(targets, "check_frame",
                        lambda frame, source: (accepted.append(frame.attrs["layout"]),
                                               check(frame, source)))
    for data in targets.fits_seeds():
        targets.fits_header_one_input(data)
    assert {"paus", "generic"} <= set(accepted)

    import pausdenoise.photometry as ph

    measured: list[int] = []
    measure = ph.measure_frame
    monkeypatch.setattr(ph, "measure_frame",
                        lambda *a, **k: (measured.append(len(a[2])), measure(*a, **k))[1])
    for data in targets.catalogue_seeds():
        targets.catalogue_one_input(data)
    assert sum(measured) >= 3


def test_harness_reports_an_unintended_exception(targets, monkeypatch):
    """A reader that raises something other than IngestError is a finding, not a pass."""
    import pausdenoise.ingest.plan as ingest

    def broken(path, config):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(ingest, "_plan_file", broken)
    seed = next(s for s in targets.fits_seeds() if s[:2] == bytes([0, 0]))
    with pytest.raises(ZeroDivisionError, match="planted"):
        targets.fits_header_one_input(seed)
