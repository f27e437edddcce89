"""The pipeline package: stage wiring (:mod:`.core`) and the stage runners that read and
write the run directory (compare, evaluate, report). Nothing else in pausdenoise opens run
paths or makes clients."""

from pausdenoise.pipeline.core import (
    Context,
    RunResult,
    StageError,
    resolve_stages,
    run,
    split_holdout,
    stage_fingerprints,
    with_ingest_source,
)

__all__ = [
    "Context",
    "RunResult",
    "StageError",
    "resolve_stages",
    "run",
    "split_holdout",
    "stage_fingerprints",
    "with_ingest_source",
]
