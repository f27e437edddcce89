"""Running the ingest stage: plan, then read and write every frame as dask tasks.

:func:`ingest` is the only part of the stage that writes to the store and uses the dask
client. It runs one task per image file that reads its frames (:func:`read_frame`) and
writes them (:func:`write_frame_data`: arrays, then attributes, then ``complete=True``),
and returns an :class:`IngestReport`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask

from pausdenoise import store as st
from pausdenoise.errors import IngestError
from pausdenoise.ingest.config import IngestConfig
from pausdenoise.ingest.frame import FrameData, read_frame, source_fingerprint, source_stat
from pausdenoise.ingest.plan import (
    FrameSource,
    _compute,
    _existing_table,
    expand_inputs,
    find_images,
    plan_ingest,
)

__all__ = [
    "EXIT_FATAL",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "IngestError",
    "IngestReport",
    "ingest",
    "write_frame_data",
]

#: The stage's logger keeps the package name (log lines name ``pausdenoise.ingest``).
log = logging.getLogger("pausdenoise.ingest")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_PARTIAL = 3


@dataclass
class IngestReport:
    """Outcome of :func:`ingest`.

    ``ingested`` and ``skipped`` are frame ids, ``failed`` (file, reason) pairs; ``fatal``
    is set when the run could not start (no input, unusable store).
    """

    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fatal: str | None = None

    @property
    def exit_status(self) -> int:
        """0 all in (ingested or skipped), 3 partial, 1 nothing ingested or fatal."""
        if self.fatal is not None:
            return EXIT_FATAL
        if not self.failed:
            return EXIT_OK if (self.ingested or self.skipped) else EXIT_FATAL
        return EXIT_PARTIAL if (self.ingested or self.skipped) else EXIT_FATAL

    def summary(self) -> str:
        """Return the report as text: counts and exit status, then failures and warnings.

        Returns
        -------
        str
            One line of counts, then one line per fatal problem, failure and warning.
        """
        lines = [
            f"ingested {len(self.ingested)}, skipped {len(self.skipped)} (complete, unchanged), "
            f"failed {len(self.failed)}; exit status {self.exit_status}"
        ]
        if self.fatal:
            lines.append(f"fatal: {self.fatal}")
        lines += [f"  FAILED {f}: {r}" for f, r in self.failed]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def write_frame_data(
    store: os.PathLike[str] | str,
    data: FrameData,
    config: IngestConfig,
    fingerprint: str,
    stat: str | None = None,
) -> str:
    """Write a :class:`FrameData` into the store (arrays, attributes, ``complete`` last).

    Parameters
    ----------
    store : path
        The survey store.
    data : FrameData
        The frame, as :func:`read_frame` returns it.
    config : IngestConfig
        Chunks, shards, compression level and ``keep_header``.
    fingerprint : str
        Recorded as the attribute ``source_fingerprint`` (see :func:`source_fingerprint`).
    stat : str, optional
        Recorded as the attribute ``source_stat`` (see :func:`source_stat`).

    Returns
    -------
    str
        The frame id written.
    """
    attrs = dict(data.attrs)
    attrs["source_fingerprint"] = fingerprint
    attrs["source_stat"] = stat
    st.write_frame(
        store,
        data.frame,
        data.arrays(keep_header=config.keep_header),
        attrs,
        chunks=config.chunks,
        shards=config.shards,
        clevel=config.clevel,
    )
    return data.frame


@dataclass
class _Result:
    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _same_storage(store: str, frame: str, config: IngestConfig) -> bool:
    """Tell whether a stored frame's image has the chunks and shards ``config`` asks for.

    A frame whose content is unchanged but whose chunking differs is written again, so a
    new ``ingest.chunks`` takes effect without ``force``.

    Returns
    -------
    bool
        False when the frame or its image is missing.
    """
    try:
        arr = st.open_store(store, "r")[f"{st.FRAMES_GROUP}/{frame}/image"]
    except (KeyError, FileNotFoundError, st.StoreError):
        return False
    chunks, shards = st.clip_chunks(arr.shape, config.chunks, config.shards)
    stored_shards = tuple(arr.shards) if arr.shards else None
    return tuple(arr.chunks) == chunks and stored_shards == shards


def _ingest_file_task(
    sources: list[FrameSource],
    store: str,
    config: IngestConfig,
    existing: dict[str, tuple[str, str]],
) -> _Result:
    """Ingest every frame of one image file (one dask task); never raises.

    ``existing`` maps frame id → (fingerprint, stat) of complete frames in the store.

    Returns
    -------
    _Result
        The file's frames, ingested, skipped or failed with reasons.
    """
    result = _Result()
    hashes: dict[Path, str] = {}
    for source in sources:
        try:
            old_fp, old_stat = existing.get(source.frame, ("", ""))
            stat = source_stat(source, config)
            keep = not config.force and bool(old_fp) and _same_storage(store, source.frame,
                                                                       config)
            if keep and not config.verify_hash and old_stat == stat:
                result.skipped.append(source.frame)
                continue
            fp = source_fingerprint(source, config, hashes)
            if keep and old_fp == fp:
                result.skipped.append(source.frame)
                continue
            data = read_frame(source, config)
            write_frame_data(store, data, config, fp, stat)
            result.ingested.append(source.frame)
            result.warnings += data.warnings
        except IngestError as exc:
            result.failed.append((exc.file, str(exc)))
        except Exception as exc:
            log.exception("ingest of %s failed", source.image)
            result.failed.append(
                (str(source.image), f"{source.image}: {type(exc).__name__}: {exc}")
            )
    return result


def ingest(
    inputs: os.PathLike[str] | str | Sequence[os.PathLike[str] | str],
    store: os.PathLike[str] | str,
    config: IngestConfig | None = None,
    client: Any = None,
) -> IngestReport:
    """Ingest FITS frames into the survey store, in parallel, idempotently.

    Parameters
    ----------
    inputs : path or sequence of paths
        Directories (scanned, see :func:`find_images`), image files and/or glob patterns
        (expanded, see :func:`~pausdenoise.ingest.plan.expand_inputs`).
    store : path
        The survey store (created when missing and there are image files).
    config : IngestConfig, optional
        Defaults to the PAUS layout.
    client : distributed.Client, optional
        Run the tasks on this client; by default on dask's current scheduler (a default
        distributed client if one is active, else the threaded scheduler).

    Returns
    -------
    IngestReport
        Never raises for bad input files; fatal problems (no input, unusable store) are
        reported in ``fatal`` with exit status 1.
    """
    config = config or IngestConfig()
    report = IngestReport()
    items, unmatched = expand_inputs(inputs)
    for pattern in unmatched:
        report.failed.append((pattern, f"{pattern}: no file matches the pattern"))
    for p in items:
        if not p.exists():
            report.failed.append((str(p), f"{p}: input not found"))
    images = find_images([p for p in items if p.exists()], config)
    if not images:
        report.fatal = f"no image files found in {inputs}"
        return report
    try:
        st.open_store(store, "a")
    except Exception as exc:
        report.fatal = f"cannot open or create the store {store}: {exc}"
        return report
    sources, failed = plan_ingest(images, store, config, client)
    report.failed += failed

    existing = {
        r.frame: (r.source_fingerprint, getattr(r, "source_stat", None) or "")
        for r in _existing_table(store).itertuples(index=False)
        if isinstance(r.source_fingerprint, str)
    }
    by_file: dict[Path, list[FrameSource]] = {}
    for s in sources:
        by_file.setdefault(s.image, []).append(s)
    tasks = [
        dask.delayed(_ingest_file_task, pure=False)(
            frames,
            str(store),
            config,
            {s.frame: existing[s.frame] for s in frames if s.frame in existing},
        )
        for frames in by_file.values()
    ]
    for r in _compute(tasks, client, config.progress):
        report.ingested += r.ingested
        report.skipped += r.skipped
        report.failed += r.failed
        report.warnings += r.warnings
    report.ingested.sort()
    report.skipped.sort()
    log.info("%s", report.summary())
    return report
