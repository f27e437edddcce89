"""Ingest stage: FITS frames (the simulated survey, or ``input.fits_path``) into the store."""

from __future__ import annotations

from typing import Any

from pausdenoise.errors import StageError
from pausdenoise.ingest.driver import ingest
from pausdenoise.pipeline.context import Context


def run(ctx: Context) -> dict[str, Any]:
    """Ingest the run's FITS frames into the survey store; complete frames are skipped.

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        The stage summary: frames ingested, up to date and failed (``partial`` when some
        failed).

    Raises
    ------
    StageError
        When no frame at all could be ingested.
    """
    source = ctx.cfg.input.fits_path if ctx.cfg.input.source == "fits" else ctx.paths.survey
    report = ingest(source, ctx.store, ctx.cfg.ingest, client=ctx.client)
    print(report.summary())
    if report.exit_status == 1:
        raise StageError(f"ingest: nothing could be ingested from {source}\n{report.summary()}")
    return {
        "note": f"{len(report.ingested)} ingested, {len(report.skipped)} up to date, "
                f"{len(report.failed)} failed",
        "ingested": report.ingested,
        "skipped": report.skipped,
        "failed": [list(f) for f in report.failed],
        "partial": bool(report.failed),
    }
