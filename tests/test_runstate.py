"""Run-directory lock, preflight checks and the stage record."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pausdenoise.runstate import (
    PreflightError,
    RunLockedError,
    RunPaths,
    RunRecord,
    preflight,
    run_lock,
)


def test_second_run_on_same_directory_is_refused(tmp_path):
    paths = RunPaths(tmp_path / "run")
    with run_lock(paths):
        with pytest.raises(RunLockedError, match="locked by pid"):
            with run_lock(paths):
                pass
    assert not paths.lock.exists()  # released
    with run_lock(paths):  # and can be taken again
        pass


def test_lock_held_by_another_live_process_is_refused(tmp_path):
    paths = RunPaths(tmp_path / "run")
    code = (
        f"import sys, time; sys.path.insert(0, {os.getcwd()!r})\n"
        "from pausdenoise.runstate import RunPaths, run_lock\n"
        "from pathlib import Path\n"
        f"with run_lock(RunPaths(Path({str(paths.out)!r}))):\n"
        "    print('locked', flush=True); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=str(proc.pid)):
            with run_lock(paths):
                pass
    finally:
        proc.kill()
        proc.wait(10)


def test_stale_lock_of_dead_process_is_taken_over(tmp_path):
    paths = RunPaths(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(proc.stdout)
    paths.out.mkdir(parents=True)
    import socket

    paths.lock.write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname()}))
    with run_lock(paths):
        assert json.loads(paths.lock.read_text())["pid"] == os.getpid()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_preflight_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PreflightError, match="not writable"):
            preflight(ro, 0)
    finally:
        ro.chmod(0o700)


def test_preflight_unwritable_path_as_root(tmp_path):
    # A path under a regular file cannot be created, whoever we are.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((PreflightError, OSError)):
        preflight(blocker / "out", 0)


def test_preflight_disk_space(tmp_path):
    with pytest.raises(PreflightError, match="GB free but this run needs"):
        preflight(tmp_path, 10**18)
    preflight(tmp_path, 1)


def test_record_roundtrip_and_fingerprints(tmp_path):
    paths = RunPaths(tmp_path)
    rec = RunRecord(paths)
    rec.set("ingest", status="done", fingerprint="abc", seconds=1.5)
    rec2 = RunRecord(paths)
    assert rec2.is_done("ingest", "abc")
    assert not rec2.is_done("ingest", "other")
    assert not rec2.is_done("train", "abc")
    assert rec2.timings() == {"ingest": 1.5}
    assert not list(tmp_path.glob(".run.json.*.tmp"))


def test_lock_is_never_skipped_when_the_stale_race_is_lost(tmp_path, monkeypatch):
    """If taking over a stale lock keeps failing, refuse instead of running unlocked."""
    import pausdenoise.runstate as rs

    paths = RunPaths(tmp_path / "run")
    paths.out.mkdir(parents=True)
    import socket

    paths.lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    monkeypatch.setattr(rs, "_pid_alive", lambda pid: False)

    def rename_lost(src, dst):  # another process always renames it first
        raise FileNotFoundError(src)

    monkeypatch.setattr(rs.os, "rename", rename_lost)
    with pytest.raises(RunLockedError, match="could not take the lock"):
        with run_lock(paths):
            pass
    assert paths.lock.exists()  # the other process's lock is left alone
