"""Progress reports: plain lines when the output is a log file, bars only on a terminal."""

from __future__ import annotations

import io
import sys

import dask
import pytest
from distributed import Client, LocalCluster

from pausdenoise.pipeline.context import compute_with_progress
from pausdenoise.progress import LineProgress, is_terminal


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _tasks(n: int) -> list:
    return [dask.delayed(lambda i: i * i, pure=True)(i) for i in range(n)]


def _progress_lines(out: str, label: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{label}: ") and "%" in line]


def test_is_terminal() -> None:
    assert is_terminal(_Terminal())
    assert not is_terminal(io.StringIO())
    assert not is_terminal(None)
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)


def test_line_progress_prints_each_tenth_once() -> None:
    out = io.StringIO()
    lines = LineProgress("denoise", 96, stream=out)
    for done in range(1, 97):
        lines.update(done)
    text = out.getvalue().splitlines()
    assert len(text) == 10
    assert text[3] == "denoise: 40% (39/96 tasks)"
    assert text[-1] == "denoise: 100% (96/96 tasks)"


def test_local_compute_to_a_log_writes_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert not sys.stdout.isatty()
    assert compute_with_progress(_tasks(57), None, "denoise") == [i * i for i in range(57)]
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = _progress_lines(out, "denoise")
    assert 1 <= len(lines) <= 11
    assert lines[-1].startswith("denoise: 100% (")


def test_local_compute_on_a_terminal_draws_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    term = _Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    assert compute_with_progress(_tasks(5), None, "stack") == [i * i for i in range(5)]
    assert "\r" in term.getvalue() and "Completed" in term.getvalue()


def test_distributed_compute_to_a_log_writes_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert compute_with_progress(_tasks(40), client, "photometry") == [
            i * i for i in range(40)
        ]
    out = capsys.readouterr().out
    assert "\r" not in out
    assert "photometry: 40 task group(s) on " in out
    lines = _progress_lines(out, "photometry")
    assert len(lines) == 10
    assert lines[-1] == "photometry: 100% (40/40 tasks)"
