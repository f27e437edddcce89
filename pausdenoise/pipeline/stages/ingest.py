"""Ingest stage: FITS frames (the simulated survey, or ``input.fits_path``) into the store.

Besides the store it writes ``<run>/ingest/noise_model.csv``, the per-frame noise table
(:func:`pausdenoise.ingest.noise.noise_table`: gain in force and its source, the fitted gain
and read noise, the header's values, the lag-1 noise correlation), regenerated from the
store's exposure table at every run of the stage, also when every frame was up to date,
and ``<run>/ingest/noise_model_exposures.csv``, the noise model fitted across each CCD's
exposures (:func:`pausdenoise.ingest.noise.exposure_noise_models`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pausdenoise import store as st
from pausdenoise.errors import StageError
from pausdenoise.ingest.driver import ingest
from pausdenoise.ingest.noise import EXPOSURE_COLUMNS, noise_table
from pausdenoise.pipeline.context import Context

NOISE_TABLE = Path("ingest") / "noise_model.csv"
"""The per-frame noise table, relative to the run directory."""

EXPOSURE_NOISE_TABLE = Path("ingest") / "noise_model_exposures.csv"
"""The noise model fitted across each CCD's exposures, relative to the run directory."""


def _write_csv(table: Any, out: Path) -> None:
    """Write a table atomically (a partial file first, renamed when complete)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    table.to_csv(tmp, index=False)
    tmp.replace(out)


def _write_noise_table(store: Path, out: Path) -> dict[str, Any]:
    """Write the noise table of the store's complete frames (atomically) and summarise it.

    Returns
    -------
    dict
        ``table`` (its path), ``gain_source`` (frames per source), ``noise_corr``
        (median lag-1 correlation along x and y over the frames, None when not measured)
        and ``noise_corr_method`` (frames per measurement in force: ``tiles``,
        ``high-frequency``, ``none``).
    """
    table = noise_table(st.exposure_table(store, complete_only=True))
    _write_csv(table, out)
    corr = [table[c].median() for c in ("noise_corr_x", "noise_corr_y")]
    return {
        "table": str(out),
        "gain_source": {str(k): int(v) for k, v in table["gain_source"].value_counts().items()},
        "noise_corr": [round(float(c), 4) if math.isfinite(c) else None for c in corr],
        "noise_corr_method": {str(k): int(v) for k, v
                              in table["noise_corr_method"].value_counts().items() if k},
    }


def _source_fingerprints(store: Path) -> dict[str, str]:
    """Read the ``source_fingerprint`` attribute of the store's complete frames.

    Returns
    -------
    dict of str to str
        Frame → fingerprint; empty when there is no usable store yet.
    """
    try:
        table = st.exposure_table(store, complete_only=True)
    except (FileNotFoundError, st.StoreError):  # no store yet (ingest reports a bad one)
        return {}
    if table.empty or "source_fingerprint" not in table:
        return {}
    return {r.frame: r.source_fingerprint for r in table.itertuples(index=False)}


def run(ctx: Context) -> dict[str, Any]:
    """Ingest the run's FITS frames into the survey store.

    Complete frames whose sources are unchanged are skipped, unless ``ctx.force`` (or
    ``ingest.force``): then every frame is read and written again.

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        The stage summary (its note adds the frames per gain source unless every gain is
        the header's): frames ingested, up to date and failed (``partial`` when some
        failed), and of the ingested frames those already in the store before:
        ``frames_changed`` (other content now) and ``frames_rewritten`` (same content);
        ``noise_model``: the noise table's path, the frames per gain source and the median
        noise correlation, and ``exposures``: per CCD, the gain and read noise fitted across
        its exposures (or why none); ``gains_changed``: the frames whose gain or read noise in
        force that fit changed, and ``correlations_changed``: the frames stored before the
        high-frequency noise correlation whose correlation in force changed when measured
        now (either outdates the later stages); ``cosmic_rays``: frame → cosmic-ray hits
        found and masked, for the frames searched (the note gives the total).

    Raises
    ------
    StageError
        When no frame at all could be ingested.
    """
    source = ctx.cfg.input.fits_path if ctx.cfg.input.source == "fits" else ctx.paths.survey
    config = ctx.cfg.ingest
    if ctx.force:
        config = config.model_copy(update={"force": True})
    before = _source_fingerprints(ctx.store)
    report = ingest(source, ctx.store, config, client=ctx.client)
    after = _source_fingerprints(ctx.store)
    again = [f for f in report.ingested if f in before]
    if report.exit_status == 1:  # the error carries the summary (printed once, recorded)
        raise StageError(f"ingest: nothing could be ingested from {source}\n{report.summary()}")
    print(report.summary())
    exposures = pd.DataFrame(report.exposure_noise, columns=list(EXPOSURE_COLUMNS))
    _write_csv(exposures, ctx.paths.out / EXPOSURE_NOISE_TABLE)
    noise = _write_noise_table(ctx.store, ctx.paths.out / NOISE_TABLE)
    noise["exposures"] = [_exposure_summary(m) for m in report.exposure_noise]
    sources = noise["gain_source"]
    gains = ("" if set(sources) <= {"header"} else "; gain from " + ", ".join(
        f"{k} {v}" for k, v in sorted(sources.items())))
    hits = (f"; {sum(report.cosmic_rays.values())} cosmic-ray hits masked in "
            f"{len(report.cosmic_rays)} frame(s)" if report.cosmic_rays else "")
    return {
        "note": f"{len(report.ingested)} ingested, {len(report.skipped)} up to date, "
                f"{len(report.failed)} failed{gains}{hits}",
        "cosmic_rays": report.cosmic_rays,
        "ingested": report.ingested,
        "skipped": report.skipped,
        "failed": [list(f) for f in report.failed],
        "frames_changed": [f for f in again if after.get(f) != before[f]],
        "frames_rewritten": [f for f in again if after.get(f) == before[f]],
        "partial": bool(report.failed),
        "noise_model": noise,
        "gains_changed": report.gains_changed,
        "correlations_changed": report.correlations_changed,
    }


def _exposure_summary(m: dict[str, Any]) -> dict[str, Any]:
    """Round one CCD's fit across exposures for the stage summary.

    Returns
    -------
    dict
        ``ccd``, ``n_exposures``, ``gain`` and ``gain_err`` [e⁻/ADU], ``read_noise_e`` [e⁻]
        (None when not fitted) and ``error`` (why it is not used; empty when used).
    """
    def r(v: Any, digits: int) -> float | None:
        return round(float(v), digits) if v is not None and math.isfinite(v) else None

    return {"ccd": int(m["ccd"]), "n_exposures": int(m["n_exposures"]),
            "gain": r(m["gain"], 4), "gain_err": r(m["gain_err"], 4),
            "read_noise_e": r(m["read_noise_e"], 3), "error": m["error"]}
