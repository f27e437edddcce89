"""What every stage shares: the run context, the run result and a few helpers.

A stage module (:mod:`pausdenoise.pipeline.stages`) gets a :class:`Context` and returns a
summary dict. This module imports no stage, so that the stages and the runner can import it
without an import cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pausdenoise import store as st
from pausdenoise.config import PipelineConfig
from pausdenoise.denoise.tiling import frame_stats_from_dask
from pausdenoise.paus_layout import CATALOGUE_NAME, TRUE_FLUXES_NAME, TRUTH_DIR
from pausdenoise.progress import compute_reporting
from pausdenoise.runstate import RunPaths, RunRecord

__all__ = [
    "Context",
    "RunResult",
    "compute_with_progress",
    "frame_stats_table",
    "split_holdout",
]


@dataclass
class RunResult:
    """What a run did, stage by stage.

    Parameters
    ----------
    out : Path
        The run directory.
    stages : dict of str to dict, optional
        Per stage: ``status`` ("done", "up to date"), ``seconds``, ``note``, ``partial``.
    """

    out: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        """True when some stage finished but skipped inputs (listed in its summary)."""
        return any(s.get("partial") for s in self.stages.values())

    def summary_text(self) -> str:
        """Return the run's summary as printed by the command line.

        Returns
        -------
        str
            One line for the run directory, one per stage, and lines for the report and a
            partial success, where they apply.
        """
        lines = [f"run directory: {self.out}"]
        for name, st_ in self.stages.items():
            secs = st_.get("seconds")
            t = f"{secs:7.1f} s" if secs is not None else "        "
            lines.append(f"  {name:<11} {st_.get('status', '?'):<10} {t}  {st_.get('note', '')}")
        report = self.out / "report" / "index.html"
        if report.exists():
            lines.append(f"report: {report}")
        if self.partial:
            lines.append("partial success: some inputs were skipped (see run.json)")
        return "\n".join(lines)


@dataclass
class Context:
    """What a stage function gets: the config, the paths, the client, the record.

    Parameters
    ----------
    cfg : PipelineConfig
        The run's configuration.
    paths : RunPaths
        The run directory's layout.
    client : distributed.Client or None
        The Dask client, or ``None`` for stages that run without a cluster.
    record : RunRecord
        The run record (``run.json``).
    force : bool, optional
        Redo work even where outputs are complete. Default False.
    """

    cfg: PipelineConfig
    paths: RunPaths
    client: Any
    record: RunRecord
    force: bool = False

    @property
    def store(self) -> Path:
        """The survey store: the configured one, or the run directory's own."""
        if self.cfg.input.source == "store":
            return Path(self.cfg.input.store_path)
        return self.paths.store

    @property
    def catalogue_path(self) -> Path:
        """The reference catalogue: the configured one, or the simulated survey's."""
        return self.cfg.input.catalogue or (self.paths.survey / CATALOGUE_NAME)

    @property
    def checkpoint(self) -> Path:
        """The N2V checkpoint: the configured one, or the run directory's trained one."""
        return self.cfg.input.checkpoint or self.paths.checkpoint

    @property
    def truth_fluxes(self) -> Path | None:
        """The simulated survey's true fluxes table, or ``None`` where there is none."""
        p = self.paths.survey / TRUTH_DIR / TRUE_FLUXES_NAME
        return p if p.exists() else None


def split_holdout(exposures: pd.DataFrame, per_band: int) -> tuple[list[str], list[str]]:
    """Split frames into training and held-out: the last ``per_band`` exposures of each band.

    Parameters
    ----------
    exposures : DataFrame
        The store's exposure table (columns ``frame``, ``band``, ``expnum``).
    per_band : int
        Exposures held out per band (the highest exposure numbers). A band with no more
        than ``per_band`` exposures holds none out.

    Returns
    -------
    tuple of (list of str, list of str)
        Training frames and held-out frames, in table order.
    """
    held: set[int] = set()
    if per_band > 0:
        for _, g in exposures.groupby("band"):
            nums = sorted(g["expnum"].unique())
            if len(nums) > per_band:
                held.update(nums[-per_band:])
    train = exposures.loc[~exposures["expnum"].isin(held), "frame"].tolist()
    hold = exposures.loc[exposures["expnum"].isin(held), "frame"].tolist()
    return train, hold


#: Compute dask objects with a bar on a terminal, progress lines elsewhere (the stages' name
#: for :func:`pausdenoise.progress.compute_reporting`).
compute_with_progress = compute_reporting


def frame_stats_table(store: Path, frames: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Per-frame normalisation statistics (the one function training and denoising share).

    Parameters
    ----------
    store : Path
        The survey store.
    frames : sequence of str
        Frame names in the store.

    Returns
    -------
    tuple of (dict, dict)
        ``(stats, skipped)``: frame → :class:`~pausdenoise.n2v.normalise.FrameStats`, and
        frame → reason for the frames whose statistics cannot be computed (e.g. a CCD with
        every pixel masked), which are left out of ``stats``.
    """
    out, skipped = {}, {}
    for f in frames:
        img = st.open_frame(store, f, "image")
        msk = st.open_frame(store, f, "mask") if "mask" in st.frame_arrays(store, f) else None
        try:
            out[f] = frame_stats_from_dask(img, msk)
        except ValueError as exc:
            skipped[f] = str(exc)
            print(f"frame {f} of {store}: skipped ({exc})")
    return out, skipped
