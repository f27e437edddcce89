"""Ctrl-C through the command line: exit 130, one line, the stage recorded as interrupted,
the lock released, and a rerun that proceeds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pausdenoise.cli import EXIT_INTERRUPTED, EXIT_OK, main
from pausdenoise.pipeline import runner


def _interrupt(ctx: Any) -> dict[str, Any]:
    raise KeyboardInterrupt


def _finish(ctx: Any) -> dict[str, Any]:
    return {"note": "finished"}


@pytest.mark.parametrize(
    ("stage", "cluster"), [("train", []), ("denoise", ["--cluster", "threads"])]
)
def test_cli_ctrl_c_exits_130_and_records_the_stage(stage, cluster, tmp_path, capsys, monkeypatch):
    """A cluster stage also closes its client without a word on stderr beyond the line
    that says which cluster it made."""
    out = tmp_path / "run"
    monkeypatch.setitem(runner.STAGE_FUNCS, stage, _interrupt)
    assert main([stage, "--out", str(out), *cluster]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if not line.startswith("[pausdenoise.cluster]")]
    assert said == ["pausdenoise: interrupted; completed work is kept, rerun to resume"]
    record = json.loads((out / "run.json").read_text())
    assert record["stages"][stage]["status"] == "interrupted"
    assert not (out / ".lock").exists()

    monkeypatch.setitem(runner.STAGE_FUNCS, stage, _finish)
    assert main([stage, "--out", str(out), *cluster]) == EXIT_OK
    assert f"[{stage}] done in " in capsys.readouterr().out
    record = json.loads((out / "run.json").read_text())
    assert record["stages"][stage]["status"] == "done"
