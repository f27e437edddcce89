"""The pipeline: stage wiring, run directories and the Dask client.

Nothing else in pausdenoise opens run paths or makes clients. Sub-modules:

- :mod:`.context`: :class:`~.context.Context` (what a stage gets), :class:`~.context.RunResult`
  and helpers the stages share (hold-out split, progress-bar compute, frame statistics);
- :mod:`.runner`: :func:`~.runner.run`, stage order and fingerprints, ``info``;
- :mod:`.stages`: one module a stage, each with ``run(ctx)``.
"""

from pausdenoise._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(__name__, {
    "Context": "context",
    "RunResult": "context",
    "compute_with_progress": "context",
    "frame_stats_table": "context",
    "split_holdout": "context",
    "STAGE_FUNCS": "runner",
    "StageError": "runner",
    "estimate_bytes": "runner",
    "resolve_stages": "runner",
    "run": "runner",
    "stage_fingerprints": "runner",
    "store_info": "runner",
    "with_ingest_source": "runner",
})
