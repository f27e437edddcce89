"""Run directory bookkeeping: the lock, preflight checks and the per-stage record.

A run directory holds everything one pipeline run makes (see :class:`RunPaths`). The record
``run.json`` is rewritten atomically after every stage, so a run killed at any point leaves a
readable record, and a rerun knows which stages finished with which configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pausdenoise.errors import PreflightError, RunLockedError
from pausdenoise.redact import redact


@dataclass(frozen=True)
class RunPaths:
    """Where each stage's outputs live inside a run directory ``out``.

    Parameters
    ----------
    out : Path
        The run directory.
    """

    out: Path

    @property
    def survey(self) -> Path:
        """Simulated survey in the PAUS reduced layout (FITS, catalogue, truth)."""
        return self.out / "survey"

    @property
    def store(self) -> Path:
        """The Zarr v3 survey store."""
        return self.out / "store.zarr"

    @property
    def model_dir(self) -> Path:
        """Directory of the trained model and its metadata."""
        return self.out / "model"

    @property
    def checkpoint(self) -> Path:
        """The trained N2V checkpoint (safetensors + JSON metadata)."""
        return self.model_dir / "n2v.safetensors"

    @property
    def photometry(self) -> Path:
        """Forced photometry, Parquet partitioned by band and image kind."""
        return self.out / "photometry"

    @property
    def compare(self) -> Path:
        """Outputs of the compare stage (pair statistics, error model)."""
        return self.out / "compare"

    @property
    def evaluate(self) -> Path:
        """Outputs of the evaluate stage (pixel and detection metrics)."""
        return self.out / "evaluate"

    @property
    def inject(self) -> Path:
        """Source injection: injected store, injection tables, their photometry and biases."""
        return self.out / "inject"

    @property
    def report(self) -> Path:
        """The HTML report and its figures."""
        return self.out / "report"

    @property
    def record(self) -> Path:
        """The per-stage record ``run.json`` (:class:`RunRecord`)."""
        return self.out / "run.json"

    @property
    def lock(self) -> Path:
        """The lock file of a running run (:func:`run_lock`)."""
        return self.out / ".lock"

    @property
    def catalogue_issues(self) -> Path:
        """Rows of the reference catalogue that photometry flagged, with the problem."""
        return self.out / "catalogue_issues.csv"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and an atomic rename.

    Parameters
    ----------
    path : Path
        Destination; its directory is created when missing.
    data : object
        JSON-serialisable data (other values are written as ``str``), indented 2.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(paths: RunPaths) -> Iterator[None]:
    """Hold an exclusive lock on the run directory for the duration of a run.

    A lock left by a dead process on this host is taken over.

    Parameters
    ----------
    paths : RunPaths
        The run directory (created when missing).

    Yields
    ------
    None
        While the lock is held; it is removed on exit.

    Raises
    ------
    RunLockedError
        At once when another run holds the lock (naming the holder), or when the takeover of
        a stale lock was lost twice.
    """
    paths.out.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(2):
        try:
            fd = os.open(paths.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(paths.lock.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
                # Stale lock of a dead process: move it aside atomically. If two processes
                # race for it, only one rename succeeds; the other finds the new lock.
                aside = paths.lock.with_name(f".lock.stale.{os.getpid()}")
                try:
                    os.rename(paths.lock, aside)
                except FileNotFoundError:
                    continue
                aside.unlink(missing_ok=True)
                continue
            raise RunLockedError(
                f"run directory {paths.out} is locked by pid {holder.get('pid')} on "
                f"{holder.get('host')} (lock file {paths.lock}); another run is writing there. "
                "Wait for it, or choose another --out."
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:  # lost the race for a stale lock twice: never run without holding the lock
        raise RunLockedError(
            f"run directory {paths.out}: could not take the lock {paths.lock} (another process "
            "took over a stale lock at the same time); retry"
        )
    try:
        yield
    finally:
        paths.lock.unlink(missing_ok=True)


def preflight(out: Path, need_bytes: int) -> None:
    """Check, before any work, that ``out`` is writable and has ``need_bytes`` free.

    Parameters
    ----------
    out : Path
        The run directory (created when missing).
    need_bytes : int
        Estimated bytes the run will write.

    Raises
    ------
    PreflightError
        With the path and the numbers, so hours of work are not spent before a full disk.
    """
    probe = out / f".write-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreflightError(f"output directory {out} cannot be created: {exc}") from exc
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise PreflightError(f"output directory {out} is not writable: {exc}") from exc
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise PreflightError(
            f"output directory {out} has {free / 1e9:.2f} GB free but this run needs about "
            f"{need_bytes / 1e9:.2f} GB; free space or choose another --out"
        )


class RunRecord:
    """The per-stage record of a run directory (``run.json``).

    An unreadable record starts empty.

    Parameters
    ----------
    paths : RunPaths
        The run directory whose ``run.json`` is read (when present) and written.
    """

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.data: dict[str, Any] = {"stages": {}}
        if paths.record.exists():
            try:
                self.data = json.loads(paths.record.read_text())
            except ValueError:
                self.data = {"stages": {}}
            self.data.setdefault("stages", {})

    def stage(self, name: str) -> dict[str, Any]:
        """Return the record of stage ``name`` (empty dict if it never ran).

        Parameters
        ----------
        name : str
            Stage name.

        Returns
        -------
        dict
            The stage's fields (``status``, ``fingerprint``, ``seconds`` …).
        """
        return self.data["stages"].get(name, {})

    def is_done(self, name: str, fingerprint: str) -> bool:
        """Tell whether stage ``name`` finished with this exact configuration fingerprint.

        Parameters
        ----------
        name : str
            Stage name.
        fingerprint : str
            The stage's configuration fingerprint now.

        Returns
        -------
        bool
            ``status == "done"`` and the fingerprints match.
        """
        st = self.stage(name)
        return st.get("status") == "done" and st.get("fingerprint") == fingerprint

    def set(self, name: str, **fields: Any) -> None:
        """Update stage ``name`` and rewrite the record atomically.

        Parameters
        ----------
        name : str
            Stage name.
        **fields
            JSON-serialisable values merged into the stage's record.
        """
        self.data["stages"].setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        """Rewrite ``run.json`` atomically, credentials redacted.

        See :func:`pausdenoise.redact.redact`.
        """
        write_json_atomic(self.paths.record, redact(self.data))

    def timings(self) -> dict[str, float]:
        """Return the wall time of every stage that has one, in run order.

        Returns
        -------
        dict of str to float
            Stage name → seconds.
        """
        return {
            k: float(v["seconds"]) for k, v in self.data["stages"].items() if "seconds" in v
        }
