"""Progress reports: a live bar on a terminal, plain lines in a log file.

A bar redraws itself with carriage returns several times a second; in a batch job's log
file that is one very long line. So every bar in the package is drawn only when the stream
it writes to is a terminal (:func:`is_terminal`); elsewhere progress is reported as whole
lines: one per epoch for training (printed by the trainers) and one at each tenth of the
tasks for a Dask computation (:func:`compute_reporting`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

import dask
from dask.callbacks import Callback
from dask.diagnostics import ProgressBar
from distributed import as_completed, progress

__all__ = ["LineProgress", "compute_reporting", "is_terminal"]


def is_terminal(stream: Any) -> bool:
    """Return whether ``stream`` is an interactive terminal.

    Parameters
    ----------
    stream : file-like or None
        E.g. ``sys.stdout`` or ``sys.stderr``; ``None`` (no stream) is not a terminal.

    Returns
    -------
    bool
        True when the stream has an ``isatty`` that says so; False for files, pipes,
        captured streams and closed streams.
    """
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """Print ``<label>: P% (done/total tasks)`` each time another tenth of the tasks is done.

    Parameters
    ----------
    label : str
        What is computed, e.g. ``"denoise"``.
    total : int
        Number of tasks; can be set later (before the first :meth:`update`).
    stream : file-like, optional
        Where the lines go; by default ``sys.stdout`` at the time of each line.
    """

    def __init__(self, label: str, total: int = 0, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self._tenths = 0

    def update(self, done: int) -> None:
        """Record that ``done`` tasks are finished; print a line when a tenth is crossed.

        Parameters
        ----------
        done : int
            Tasks finished so far (cumulative, not an increment).
        """
        if self.total <= 0:
            return
        tenths = min(10, 10 * done // self.total)
        if tenths <= self._tenths:
            return
        self._tenths = tenths
        pct = 100 * done // self.total
        print(f"{self.label}: {pct}% ({done}/{self.total} tasks)", file=self.stream or sys.stdout)


class _LineCallback(Callback):
    """Feed the local scheduler's finished-task count to a :class:`LineProgress`."""

    def __init__(self, lines: LineProgress) -> None:
        super().__init__()
        self._lines = lines

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        self._lines.total = sum(
            len(state[k]) for k in ("ready", "waiting", "running", "finished")
        )

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], wid: Any) -> None:
        self._lines.update(len(state["finished"]))


def compute_reporting(tasks: Sequence[Any], client: Any, label: str) -> list[Any]:
    """Compute dask objects and report progress on ``sys.stdout``.

    On a terminal the progress is Dask's bar (distributed or local); otherwise a line at
    each tenth of the tasks: the futures of ``tasks`` on a client, the graph's tasks on the
    local scheduler.

    Parameters
    ----------
    tasks : sequence of dask collections or delayed objects
        What to compute.
    client : distributed.Client or None
        Compute on this client; ``None`` uses the local scheduler.
    label : str
        Printed before the progress and at the start of each progress line.

    Returns
    -------
    list
        The computed results, in the order of ``tasks``.
    """
    if not tasks:
        return []
    bar = is_terminal(sys.stdout)
    if client is not None:
        futures = client.compute(list(tasks))
        print(f"{label}: {len(tasks)} task group(s) on {client.dashboard_link or client}")
        if bar:
            progress(futures, notebook=False)
            print()
        else:
            lines = LineProgress(label, len(futures))
            for done, _ in enumerate(as_completed(futures), start=1):
                lines.update(done)
        return client.gather(futures)
    if bar:
        print(f"{label}:")
    with ProgressBar() if bar else _LineCallback(LineProgress(label)):
        return list(dask.compute(*tasks))
