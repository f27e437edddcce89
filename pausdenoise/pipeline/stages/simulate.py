"""Simulate stage: render the simulated PAUCam-like survey into ``<run>/survey/``."""

from __future__ import annotations

from typing import Any

from pausdenoise.pipeline.context import Context
from pausdenoise.simulate.writer import write_survey


def run(ctx: Context) -> dict[str, Any]:
    """Write the simulated survey (FITS frames, catalogue, truth) of ``ctx.cfg.simulate``.

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        The stage summary: frames, sources and catalogue rows written.
    """
    s = write_survey(ctx.cfg.simulate, ctx.paths.survey)
    return {
        "note": f"{s.n_frames} frames, {s.n_sources} sources in {s.elapsed_s:.0f} s",
        "frames": s.n_frames,
        "sources": s.n_sources,
        "catalogue_rows": s.n_catalogue_rows,
    }
