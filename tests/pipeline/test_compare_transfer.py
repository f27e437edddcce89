"""Dividing the denoised fluxes by the transfer function measured by source injection."""

import numpy as np
import pandas as pd

from pausdenoise.config import PipelineConfig
from pausdenoise.pipeline.runner import stage_fingerprints
from pausdenoise.pipeline.stages.compare import transfer_corrected


def test_denoised_rows_are_divided_by_their_bin_transfer():
    table = pd.DataFrame({
        "kind": ["raw", "denoised", "denoised", "denoised", "denoised"],
        "I_auto": [20.5, 20.5, 22.5, 16.0, 21.5],
        "flux_cal": [10.0, 8.0, 2.0, 50.0, 4.0],
        "flux_cal_err": [1.0, 0.4, 0.3, 1.0, 0.5],
    })
    transfer = pd.DataFrame({"mag_lo": [20.0, 21.0, 22.0], "mag_hi": [21.0, 22.0, 23.0],
                             "transfer": [0.8, np.nan, 0.25]})
    out = transfer_corrected(table, transfer)
    np.testing.assert_allclose(out["flux_cal"], [10.0, 10.0, 8.0, 50.0, 4.0])
    np.testing.assert_allclose(out["flux_cal_err"], [1.0, 0.5, 1.2, 1.0, 0.5])
    assert transfer_corrected(table, None) is table
    np.testing.assert_array_equal(table["flux_cal"], [10.0, 8.0, 2.0, 50.0, 4.0])


def test_compare_chains_the_inject_stage_only_when_it_uses_its_transfer():
    base = {"inject": {"enabled": True}}
    plain = PipelineConfig.model_validate(base)
    other_inject = PipelineConfig.model_validate({"inject": {"enabled": True, "seed": 3}})
    fp = stage_fingerprints(plain, ["compare"])["compare"]
    assert stage_fingerprints(other_inject, ["compare"])["compare"] == fp
    used = PipelineConfig.model_validate({**base, "compare": {"denoised_transfer": "inject"}})
    used2 = PipelineConfig.model_validate({"inject": {"enabled": True, "seed": 3},
                                           "compare": {"denoised_transfer": "inject"}})
    assert stage_fingerprints(used, ["compare"])["compare"] != \
        stage_fingerprints(used2, ["compare"])["compare"]


def test_a_new_compare_model_makes_the_comparison_stale(monkeypatch):
    """What the compare stage computes from the same photometry is part of its
    fingerprint: after it changes, a rerun compares again (and reports again)."""
    import pausdenoise.pipeline.runner as runner

    cfg = PipelineConfig()
    before = stage_fingerprints(cfg, ["photometry", "compare", "report"])
    monkeypatch.setattr(runner, "COMPARE_MODEL", runner.COMPARE_MODEL + "-next")
    after = stage_fingerprints(cfg, ["photometry", "compare", "report"])
    assert after["photometry"] == before["photometry"]
    assert after["compare"] != before["compare"] and after["report"] != before["report"]
