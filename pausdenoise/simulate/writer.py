"""Write a simulated survey in the PAUS reduced layout, with its truth."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from astropy.io import fits

from pausdenoise.maskbits import MaskBit
from pausdenoise.paus_layout import (
    CATALOGUE_NAME,
    SURVEY_JSON,
    TRUE_EXPOSURES_NAME,
    TRUE_FLUXES_NAME,
    TRUE_SOURCES_NAME,
    TRUTH_DIR,
    image_path,
    mask_path,
    truth_path,
)
from pausdenoise.simulate.config import SimulationConfig
from pausdenoise.simulate.geometry import exposure_plan, focal_plane_layout
from pausdenoise.simulate.render import (
    STREAM_EXPOSURES,
    STREAM_SOURCES,
    TRUTH_COLUMNS,
    Frame,
    render_frame,
    stream_rng,
)
from pausdenoise.simulate.sources import make_source_catalogue

#: Version of the ``survey.json`` layout written by :func:`write_survey`.
SURVEY_JSON_VERSION = 1


@dataclass(frozen=True)
class SurveySummary:
    """What :func:`write_survey` wrote (``elapsed_s`` is wall time, not in any file)."""

    outdir: Path
    n_sources: int
    n_frames: int
    n_catalogue_rows: int
    expnums: list[int] = field(default_factory=list)
    ccds: list[int] = field(default_factory=list)
    bands: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def survey_tables(config: SimulationConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the survey's sources and exposure plan (each from its own seeded random stream).

    Parameters
    ----------
    config : SimulationConfig
        The simulation configuration.

    Returns
    -------
    sources : pandas.DataFrame
        :func:`~pausdenoise.simulate.sources.make_source_catalogue`.
    plan : pandas.DataFrame
        :func:`~pausdenoise.simulate.geometry.exposure_plan`.
    """
    sources = make_source_catalogue(config, stream_rng(config, STREAM_SOURCES))
    plan = exposure_plan(config, stream_rng(config, STREAM_EXPOSURES))
    return sources, plan


def iter_frames(
    config: SimulationConfig,
    sources: pd.DataFrame | None = None,
    plan: pd.DataFrame | None = None,
) -> Iterator[Frame]:
    """Render every (exposure, CCD) frame in order of expnum, then CCD.

    Frames are independent (each one's noise has its own random stream), so callers may
    render them in any order or in parallel with :func:`render_frame` directly.

    Parameters
    ----------
    config : SimulationConfig
        The simulation configuration.
    sources, plan : pandas.DataFrame, optional
        From :func:`survey_tables` (drawn here when either is missing).

    Yields
    ------
    Frame
        One rendered frame (image and truth in ADU, mask, header, tables).
    """
    if sources is None or plan is None:
        sources, plan = survey_tables(config)
    for _, exposure in plan.iterrows():
        for ccd in range(1, config.n_ccds + 1):
            yield render_frame(sources, exposure, ccd, config)


def _mask_header(frame: Frame) -> fits.Header:
    h = fits.Header()
    for key in ("EXPNUM", "CCD", "FILTER"):
        h[key] = frame.header[key]
    for bit in MaskBit:
        h[f"MASKB{int(bit).bit_length() - 1}"] = (str(bit.name), f"mask bit value {int(bit)}")
    return h


def write_frame_files(root: Path, frame: Frame) -> None:
    """Write the image, mask and truth FITS of one frame under ``root`` (PAUS names).

    Parameters
    ----------
    root : Path
        The survey directory (``truth/`` must exist).
    frame : Frame
        The rendered frame.
    """
    expnum, ccd = int(frame.header["EXPNUM"]), int(frame.header["CCD"])
    fits.PrimaryHDU(frame.image, header=frame.header).writeto(
        image_path(root, expnum, ccd), overwrite=True
    )
    fits.PrimaryHDU(frame.mask, header=_mask_header(frame)).writeto(
        mask_path(root, expnum, ccd), overwrite=True
    )
    th = frame.header.copy()
    th["TRUTH"] = (True, "noiseless expectation: sky + sources, ADU")
    fits.PrimaryHDU(frame.truth, header=th).writeto(truth_path(root, expnum, ccd), overwrite=True)


def _survey_json(config: SimulationConfig, n_sources: int, plan: pd.DataFrame) -> dict:
    return {
        "pausdenoise_simulation": SURVEY_JSON_VERSION,
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
        "n_sources": n_sources,
        "focal_plane": focal_plane_layout(config).to_dict(orient="records"),
        "exposures": json.loads(plan.to_json(orient="records", double_precision=15)),
    }


def write_survey(config: SimulationConfig, outdir: str | Path) -> SurveySummary:
    """Simulate the survey and write it in the PAUS reduced layout.

    Writes, under ``outdir`` (names from :mod:`pausdenoise.paus_layout`): one image and one
    mask FITS per (exposure, CCD), ``catalogue.parquet`` (``CATALOGUE_COLUMNS`` and the
    intrinsic shapes, ``PROFILE_COLUMNS``),
    ``truth/<...>.true.fits`` (noiseless images, ADU, sky included), ``truth/fluxes.parquet``
    (:data:`TRUTH_COLUMNS`), ``truth/exposures.parquet`` (the exposure plan with the true
    zero-points, seeing and sky), ``truth/sources.parquet`` (the source list with shapes and
    SEDs) and ``survey.json`` (config, seed, focal plane, exposures). Identical configs give
    bit-identical files.

    Parameters
    ----------
    config : SimulationConfig
        The simulation configuration.
    outdir : str or Path
        The survey directory (created if needed).

    Returns
    -------
    SurveySummary
        What was written.
    """
    t0 = time.perf_counter()
    root = Path(outdir)
    (root / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
    sources, plan = survey_tables(config)
    catalogues, truths = [], []
    for frame in iter_frames(config, sources, plan):
        write_frame_files(root, frame)
        catalogues.append(frame.catalogue)
        truths.append(frame.fluxes)
    catalogue = pd.concat(catalogues, ignore_index=True)
    catalogue["band"] = catalogue["band"].astype(str)
    catalogue.to_parquet(root / CATALOGUE_NAME, index=False)
    fluxes = pd.concat(truths, ignore_index=True)[list(TRUTH_COLUMNS)]
    fluxes["band"] = fluxes["band"].astype(str)
    fluxes.to_parquet(root / TRUTH_DIR / TRUE_FLUXES_NAME, index=False)
    plan.to_parquet(root / TRUTH_DIR / TRUE_EXPOSURES_NAME, index=False)
    sources.to_parquet(root / TRUTH_DIR / TRUE_SOURCES_NAME, index=False)
    with open(root / SURVEY_JSON, "w") as fh:
        json.dump(_survey_json(config, len(sources), plan), fh, indent=2)
        fh.write("\n")
    return SurveySummary(
        outdir=root,
        n_sources=len(sources),
        n_frames=len(plan) * config.n_ccds,
        n_catalogue_rows=len(catalogue),
        expnums=[int(e) for e in plan["expnum"]],
        ccds=list(range(1, config.n_ccds + 1)),
        bands=list(config.bands),
        elapsed_s=time.perf_counter() - t0,
    )


def load_config(path: str | Path) -> SimulationConfig:
    """Read the :class:`SimulationConfig` back from a ``survey.json``.

    Parameters
    ----------
    path : str or Path
        The ``survey.json`` of a simulated survey.

    Returns
    -------
    SimulationConfig
        The configuration it was simulated with.
    """
    with open(path) as fh:
        return SimulationConfig.model_validate(json.load(fh)["config"])


__all__ = [
    "TRUE_EXPOSURES_NAME",
    "TRUE_SOURCES_NAME",
    "SurveySummary",
    "iter_frames",
    "load_config",
    "survey_tables",
    "write_frame_files",
    "write_survey",
]
