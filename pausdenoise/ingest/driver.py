"""Running the ingest stage: plan, then read and write every frame as dask tasks.

:func:`ingest` is the only part of the stage that writes to the store and uses the dask
client. It runs one task per image file that reads its frames (:func:`read_frame`) and
writes them (:func:`write_frame_data`: arrays, then attributes, then ``complete=True``),
and returns an :class:`IngestReport`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import pandas as pd

from pausdenoise import store as st
from pausdenoise.errors import IngestError
from pausdenoise.ingest.config import IngestConfig
from pausdenoise.ingest.frame import FrameData, read_frame, source_fingerprint, source_stat
from pausdenoise.ingest.noise import (
    NOISE_MEASUREMENT_VERSION,
    correlation_moved,
    exposure_gain_updates,
    exposure_noise_models,
    gain_below_sky_bound,
    noise_correlation_attrs,
)
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
    is set when the run could not start (no input, unusable store). ``exposure_noise``:
    the rows of :func:`~pausdenoise.ingest.noise.exposure_noise_models` (one per CCD);
    ``gains_changed``: frames whose gain or read noise in force the fit across exposures
    changed; ``correlations_remeasured``: frames stored without the high-frequency noise
    correlation, measured now, and ``correlations_changed``: those whose correlation in
    force changed (:func:`_complete_noise_correlation`). ``cosmic_rays``: frame → number
    of cosmic-ray hits found and masked, for the frames searched by this ingest
    (``ingest.cosmic_rays``).
    """

    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fatal: str | None = None
    exposure_noise: list[dict[str, Any]] = field(default_factory=list)
    gains_changed: list[str] = field(default_factory=list)
    correlations_remeasured: list[str] = field(default_factory=list)
    correlations_changed: list[str] = field(default_factory=list)
    cosmic_rays: dict[str, int] = field(default_factory=dict)

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
        quiet = [m for m in self.exposure_noise if _unfitted_beside_header_gain(m)]
        lines += [f"  noise model across exposures: {_exposure_line(m)}"
                  for m in self.exposure_noise if m not in quiet]
        if quiet:
            lines.append(f"  noise model across exposures: not fitted for {len(quiet)} "
                         "CCD/gain group(s) whose frames have a header gain (too few "
                         "exposures with a measured sky variance; the exposure noise table "
                         "says why)")
        if self.correlations_remeasured:
            lines.append(f"  noise correlation measured again on "
                         f"{len(self.correlations_remeasured)} frame(s) stored without its "
                         f"high-frequency measurement; {len(self.correlations_changed)} "
                         "changed")
        if self.cosmic_rays:
            counts = sorted(self.cosmic_rays.values())
            lines.append(f"  cosmic rays: {sum(counts)} hit(s) masked in "
                         f"{len(counts)} frame(s) searched ({counts[0]}–{counts[-1]} per "
                         "frame; n_cosmic_rays in the exposure table)")
        lines += [f"  warning: {w}" for w in grouped_warnings(self.warnings)]
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
    cosmic_rays: dict[str, int] = field(default_factory=dict)


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
            if data.attrs.get("cosmic_rays") == "detected":
                result.cosmic_rays[source.frame] = int(data.attrs["n_cosmic_rays"])
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
        report.cosmic_rays.update(r.cosmic_rays)
    report.ingested.sort()
    report.skipped.sort()
    if report.ingested or report.skipped:
        table = st.exposure_table(store, complete_only=True)
        table = _complete_noise_correlation(store, table, report)
        _apply_exposure_noise(store, table, config, report)
    log.info("%s", report.summary())
    return report


#: a per-file warning: ``<path> [<expnum>/<ccd>]: <what>``
_FILE_WARNING = re.compile(r"^(?P<path>.+?) \[(?P<frame>[^\]]*)\]: (?P<what>.+)$", re.S)


def grouped_warnings(warnings: Sequence[str], most: int = 3) -> list[str]:
    """Say a per-file warning that many files share once, with the files it concerns.

    A configured default (``ingest.defaults.zp`` for frames without a zero-point) warns
    for every file; 24 identical lines hide the one that differs.

    Parameters
    ----------
    warnings : sequence of str
        The ingest's warnings, in order.
    most : int, optional
        A text shared by more than this many files is said once. Default 3.

    Returns
    -------
    list of str
        The warnings, those shared by more than ``most`` files as one line each (``<what>
        (N files: name, name, name, …)``, at the place of the first), the rest as they were.
    """
    groups: dict[str, list[str]] = {}
    for w in warnings:
        m = _FILE_WARNING.match(w)
        if m:
            groups.setdefault(m["what"], []).append(Path(m["path"]).name)
    out, said = [], set()
    for w in warnings:
        m = _FILE_WARNING.match(w)
        if not m or len(groups[m["what"]]) <= most:
            out.append(w)
        elif m["what"] not in said:
            said.add(m["what"])
            names = groups[m["what"]]
            out.append(f"{m['what']} ({len(names)} files: {', '.join(names[:most])}, …)")
    return out


def _unfitted_beside_header_gain(m: dict[str, Any]) -> bool:
    """Tell whether a CCD's fit across exposures could not be made where a header gain is.

    Such lines say nothing a user acts on (the header's gain is there), so the summary
    counts them instead of listing one per CCD.

    Returns
    -------
    bool
        No fit, and a finite header gain.
    """
    header = m["gain_header"]
    return (bool(m["error"]) and not math.isfinite(m["gain"])
            and header is not None and math.isfinite(header))


def _exposure_line(m: dict[str, Any]) -> str:
    """Describe one CCD's fit across exposures in one line.

    Returns
    -------
    str
        Gain and read noise with errors, or why there is no fit.
    """
    head = f"ccd {m['ccd']}"
    if m["gain_header"] is not None and math.isfinite(m["gain_header"]):
        head += f" (header gain {m['gain_header']:.4g})"
    if m["error"] and not math.isfinite(m["gain"]):
        return f"{head}: none ({m['error']})"
    text = (f"{head}: gain {m['gain']:.3g} ± {m['gain_err']:.2g} e-/ADU, read noise "
            f"{m['read_noise_e']:.3g} ± {m['read_noise_e_err']:.2g} e- from the skies of "
            f"{m['n_exposures']} exposures ({m['sky_min_adu']:.4g}–{m['sky_max_adu']:.4g} ADU)")
    return f"{text}; not used: {m['error']}" if m["error"] else text


def _complete_noise_correlation(store: os.PathLike[str] | str, table: Any,
                                report: IngestReport) -> Any:
    """Measure the noise correlation of frames stored before the high-frequency measurement.

    Such frames (``noise_measurement_version`` absent or below
    :data:`~pausdenoise.ingest.noise.NOISE_MEASUREMENT_VERSION`) carry only the small tiles'
    lag-1 correlation, which on a crowded field is the unresolved sources', and no sky
    variance from the high frequencies. Each is measured both ways from its stored image
    and mask, and the choice put in force
    (:func:`~pausdenoise.ingest.noise.noise_correlation_attrs`, which also stores the
    version, so each frame is measured once). Fills ``report.correlations_remeasured`` and
    ``report.correlations_changed`` (those whose ``noise_corr_x``/``noise_corr_y`` in force
    moved by more than 0.005). ``table`` is the store's exposure table of complete frames.

    Returns
    -------
    pandas.DataFrame
        ``table`` with the new values, for the gain decision that follows
        (:func:`_apply_exposure_noise`).
    """
    column = table.get("noise_measurement_version")
    todo = table if column is None else table[~column.apply(_current_version)]
    if todo.empty:
        return table
    root = st.open_store(store, "r")
    measured: dict[str, dict[str, Any]] = {}
    for row in todo.to_dict("records"):
        frame = row["frame"]
        try:
            group = root[f"{st.FRAMES_GROUP}/{frame}"]
            mask = group["mask"][...] if "mask" in group else None
            image = group["image"][...]
        except (KeyError, OSError, ValueError, RuntimeError) as exc:  # unreadable chunks
            report.warnings.append(f"{frame}: stored pixels unreadable, noise correlation and "
                                   f"sky variance not measured again "
                                   f"({type(exc).__name__}: {exc})")
            continue
        attrs, _ = noise_correlation_attrs(image, mask)
        st.update_frame_attrs(store, frame, attrs)
        measured[frame] = attrs
        report.correlations_remeasured.append(frame)
        if any(correlation_moved(row.get(k), attrs[k])
               for k in ("noise_corr_x", "noise_corr_y")):
            report.correlations_changed.append(frame)
    if not measured:
        return table
    return pd.DataFrame([{**r, **measured.get(r["frame"], {})}
                         for r in table.to_dict("records")], index=table.index)


def _current_version(value: Any) -> bool:
    """Tell whether a stored ``noise_measurement_version`` is the current one (or newer).

    Returns
    -------
    bool
        False for an older, missing (NaN, None) or unreadable version.
    """
    try:
        return float(value) >= NOISE_MEASUREMENT_VERSION
    except (TypeError, ValueError):
        return False


def _apply_exposure_noise(store: os.PathLike[str] | str, table: Any, config: IngestConfig,
                          report: IngestReport) -> None:
    """Fit the noise model across each CCD's exposures and put it in force where it belongs.

    Fills ``report.exposure_noise`` and ``report.gains_changed``, and warns when the gain
    put in force differs from the frames' own fits by more than 20 %, or when a frame
    carries the gain its sky's variance gives because its own fit lies below the bound that
    variance sets (crowded fields). ``table`` is
    the store's exposure table of complete frames (read once after the ingest).
    """
    models = exposure_noise_models(table)
    updates = exposure_gain_updates(table, models, config.noise_model)
    for frame, attrs in updates.items():
        st.update_frame_attrs(store, frame, attrs)
    report.exposure_noise = models.to_dict("records")
    report.gains_changed = sorted(f for f, a in updates.items()
                                  if {"gain", "rdnoise", "gain_source"} & a.keys())
    ccds_in_force, below, no_read_noise = set(), [], False
    for r in table.to_dict("records"):
        r = {**r, **updates.get(r["frame"], {})}
        if r.get("gain_source") == "exposures":
            ccds_in_force.add(int(r["ccd"]))
        elif r.get("gain_source") == "sky" and gain_below_sky_bound(r):
            below.append(f"{r['frame']} ({r['gain']:.3g}; own fit {r['gain_fitted']:.3g})")
            no_read_noise |= bool(pd.isna(r.get("rdnoise_header")))
    if below:
        report.warnings.append(
            f"{len(below)} frame(s) carry the gain their sky's variance gives (gain_source "
            "'sky'): their own fit is below what that variance allows (gain ≥ sky / sky "
            "variance for a bias-subtracted frame), their tiles at higher signal holding "
            "unresolved sources (a crowded field?)"
            + ("; without a read noise (RDNOISE, ingest.defaults.rdnoise) it is a lower "
               "bound, right at the sky, that overestimates the photon noise of brighter "
               "sources" if no_read_noise else "")
            + "; give the gain (GAIN, ingest.defaults.gain) or ingest at least 4 exposures "
            "of the CCD under different skies: " + ", ".join(below[:5])
            + (", …" if len(below) > 5 else ""))
    for m in report.exposure_noise:
        own = m["gain_fitted_median"]
        if (m["error"] or int(m["ccd"]) not in ccds_in_force
                or not math.isfinite(own) or abs(own / m["gain"] - 1.0) <= 0.2):
            continue
        report.warnings.append(
            f"ccd {m['ccd']}: gain {m['gain']:.3g} e-/ADU from the skies of "
            f"{m['n_exposures']} exposures in force; the frames' own fits (median "
            f"{own:.3g}) differ by more than 20 %: at higher signal their tiles hold "
            "unresolved sources (a crowded field), whose light adds variance")
