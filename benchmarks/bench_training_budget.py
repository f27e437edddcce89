"""Denoising quality against CPU training time: each N2V option after 1, 3, 10 (30) minutes.

For every option (:data:`OPTIONS`, overrides of the data set's ``train`` section) ONE
training run goes to the largest budget; the weights are copied at the first epoch end past
each budget (:class:`BudgetSnapshots`, epochs of :data:`STEPS_PER_EPOCH` steps) and each copy,
with its output offset refitted as at the end of training
(:func:`pausdenoise.n2v.train.calibrate_offset`), is evaluated after training (evaluation
time is not counted). Beside them: the best Gaussian blur (σ on a grid, chosen separately for
sky and for source pixels by the same estimator) and, with ``--careamics``, CAREamics' N2V at
the same wall budgets on the same frames.

Data sets:

* ``sim`` -- the demo's simulated survey (``configs/demo.yaml``; simulated and ingested with
  the pipeline into ``--out``/sim when absent). Training on the training exposures, scoring
  on the held-out ones (:func:`pausdenoise.pipeline.context.split_holdout`) against the
  noiseless truth: RMS on sky pixels (|truth − sky| < ``evaluate.sky_tolerance`` σ) and
  inside the catalogue's source apertures, gain = raw RMS / denoised RMS; per I_auto bin the
  median relative aperture-flux error (F_den − F_true) / F_true of the denoised images
  (:func:`pausdenoise.photometry.measure.measure_frame`, truth: the noiseless flux inside the
  same aperture) with a bootstrap 95 % interval.
* ``saao`` -- the 24 real 512² SAAO exposures (``configs/saao.yaml``; the ingested store
  ``bench-output/saao/store.zarr``, ingested into ``--out``/saao when absent). Training on
  all frames, scoring on ``--eval-frames`` frames spread over the set with the
  independent-exposure estimator (:func:`pausdenoise.evaluate.independent_exposure_metrics`;
  the other exposures registered by whole-pixel offsets are the references): estimated MSE
  to the unknown truth on sky and source pixels, gains with standard errors.

Also per option: training patches/s, and the whole-frame inference rate (Mpix/s, the
optimised CPU network, ``--threads`` threads) of the trained network next to a freshly
initialised network of the demo's architecture (the reference rate).

Usage (project venv)::

    python benchmarks/bench_training_budget.py --data sim --budgets 1,3,10 --append
    python benchmarks/bench_training_budget.py --data saao --budgets 1,3,10 --careamics
    python benchmarks/bench_training_budget.py --data sim --budgets 0.2,0.5 --options n2v
    python benchmarks/bench_training_budget.py --data sim --budgets 1.67 --prior-scales 1,2,4

Writes ``<out>/training-budget-<data>.json`` with every number; ``--append`` adds a dated
section to ``benchmarks/RESULTS.md``. Time: per option the largest budget, plus up to one
epoch (the copy waits for an epoch end), plus ~10 s of scoring per budget; CAREamics the
largest budget plus its start-up and predictions (~1 min). The real frames are looked for in
``data/real/saao-kb13475``, else in ``$PAUSDENOISE_REAL_DATA/saao-kb13475``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pausdenoise import evaluate as ev
from pausdenoise import reference_match as rm
from pausdenoise import register as rg
from pausdenoise import store as st
from pausdenoise.compare import bin_index
from pausdenoise.config import PipelineConfig, load_config
from pausdenoise.n2v.config import TrainConfig
from pausdenoise.n2v.normalise import FrameStats, denormalise, frame_statistics, normalise
from pausdenoise.n2v.patches import Frame, split_regions
from pausdenoise.n2v.train import TrainHistory, calibrate_offset, train_n2v
from pausdenoise.n2v.unet import UNet, optimise_for_inference, predict_array
from pausdenoise.paus_layout import CATALOGUE_NAME, TRUE_FLUXES_NAME, TRUTH_DIR
from pausdenoise.photometry.config import PhotometryConfig
from pausdenoise.photometry.measure import measure_frame
from pausdenoise.pipeline.context import frame_stats_table, split_holdout
from pausdenoise.pipeline.references import no_broader, stored_psf
from pausdenoise.pipeline.stages.train import (
    frame_noise_models,
    noise_scale_from_frames,
    sky_variance_from_frames,
)
from pausdenoise.stats import MAD_TO_SIGMA, pixel_noise_sigma

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Option name → overrides of the data set's ``train`` section (nested dicts merge);
#: ``sky_variance: None`` takes the value measured from the frames' gains (DataSet).
#: Settings of the "-avg" options: the learning rate decays along half a cosine to the end
#: of the budget, and the weights scored are an exponential moving average (decay per step).
_AVERAGED: dict[str, Any] = {"lr_decay": "cosine", "weight_average": 0.995}
OPTIONS: dict[str, dict[str, Any]] = {
    "n2v-posterior": {"unet": {"posterior": "gaussian"}},
    "n2v": {"unet": {"posterior": "none"}},
    "n2v2-5pc": {"unet": {"posterior": "none", "n2v2": True}, "replacement": "median",
                 "masked_fraction": 0.05},
    "n2v2-5pc-posterior": {"unet": {"posterior": "gaussian", "n2v2": True},
                           "replacement": "median", "masked_fraction": 0.05},
    "n2v-posterior-avg": {"unet": {"posterior": "gaussian"}, **_AVERAGED},
    "n2v2-5pc-posterior-avg": {"unet": {"posterior": "gaussian", "n2v2": True},
                               "replacement": "median", "masked_fraction": 0.05, **_AVERAGED},
    "blindspot": {"method": "blindspot", "unet": {"posterior": "none"}},
    "blindspot-posterior": {"method": "blindspot", "unet": {"posterior": "gaussian"}},
    "n2v-posterior-skyvar": {"unet": {"posterior": "gaussian"}, "sky_variance": None},
    "sure": {"method": "sure", "unet": {"posterior": "none"}, "sky_variance": None},
    "sure-per-frame": {"method": "sure", "unet": {"posterior": "none"}, "sky_variance": None,
                       "noise_per_frame": True},
    "sure-avg": {"method": "sure", "unet": {"posterior": "none"}, "sky_variance": None,
                 **_AVERAGED},
    "sure-avg-deep": {"method": "sure", "unet": {"posterior": "none", "depth": 3,
                                                 "base_channels": 48},
                      "sky_variance": None, **_AVERAGED},
}
#: The option whose architecture gives the reference inference rate (the demo's recipe).
REFERENCE_OPTION = "n2v-posterior"
#: Optimiser steps between snapshot checks (an epoch; validation follows each).
STEPS_PER_EPOCH = 10
#: Validation patches per epoch end (the plateau schedule's loss).
VALIDATION_PATCHES = 32
#: σ grid (px) of the Gaussian blur baseline.
BLUR_SIGMAS = tuple(np.round(np.arange(0.5, 3.0001, 0.25), 2).tolist())
#: I_auto bin edges (AB mag) of the flux bias.
FLUX_BINS = tuple(float(m) for m in range(17, 24))
#: The reference to beat: the demo's held-out pixel gains with its earlier recipe (Gaussian
#: posterior, plain N2V masking of 0.5 % of the pixels, 12 epochs x 50 steps x 16 patches).
DEMO_GAINS = {"sky_gain": 15.4, "source_gain": 1.92}
#: Training patches of that recipe.
DEMO_PATCHES = 12 * 50 * 16
#: Bootstrap resamplings of the flux-bias intervals.
BOOTSTRAP = 400
CLASSES = ("sky", "source")
DEFAULT_OUT = ROOT / "bench-output" / "training-budget"
CONFIGS = {"sim": ROOT / "configs" / "demo.yaml", "saao": ROOT / "configs" / "saao.yaml"}


# --------------------------------------------------------------------------- data


@dataclass
class EvalFrame:
    """One scored frame: raw pixels (ADU), good pixels, pixel classes, truth or references.

    With ``truth`` the score is the MSE against it; otherwise ``references`` (independent
    exposures on this frame's grid, sky-subtracted ADU, NaN where invalid) feed the
    independent-exposure estimator and ``sky`` is subtracted from every estimate first.
    """

    name: str
    image: np.ndarray
    good: np.ndarray
    classes: dict[str, np.ndarray]
    stats: FrameStats
    mask: np.ndarray | None = None
    truth: np.ndarray | None = None
    references: list[np.ndarray] = field(default_factory=list)
    sky: float = 0.0
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Photometry:
    """What the flux-bias measurement needs (simulations): catalogue, truth, settings."""

    catalogue: pd.DataFrame
    truth: pd.DataFrame
    config: PhotometryConfig


@dataclass
class DataSet:
    """Training frames, scored frames and the base training configuration of a data set."""

    name: str
    train: list[Frame]
    frames: list[EvalFrame]
    train_cfg: TrainConfig
    photometry: Photometry | None = None
    description: str = ""
    #: The noise model's sky variance from the training frames' gains and read noise
    #: (:func:`~pausdenoise.pipeline.stages.train.sky_variance_from_frames`; 1 without gains).
    sky_variance: float = 1.0


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def option_config(base: TrainConfig, option: str, budget_minutes: float,
                  threads: int, sky_variance: float = 1.0) -> TrainConfig:
    """Build an option's training configuration for a budgeted run.

    The base (the data set's ``train`` section) gets the option's overrides and the budget
    settings: epochs of :data:`STEPS_PER_EPOCH` steps without early stopping, the last
    weights kept, ``max_minutes`` = the largest budget, the plateau patience scaled to the
    same number of steps as in the base, ``threads`` torch threads.

    Parameters
    ----------
    base : TrainConfig
        The data set's training section.
    option : str
        A key of :data:`OPTIONS`.
    budget_minutes : float
        The largest wall-clock budget (minutes).
    threads : int
        Torch CPU threads.
    sky_variance : float
        The measured sky variance, for a ``sky_variance`` left unset.

    Returns
    -------
    TrainConfig
        The validated configuration.
    """
    d = base.model_dump(mode="python")
    patience = max(1, round(base.lr_schedule.patience * base.steps_per_epoch / STEPS_PER_EPOCH))
    d = _merge(d, OPTIONS[option])
    d = _merge(d, {"epochs": 10_000_000, "steps_per_epoch": STEPS_PER_EPOCH,
                   "early_stopping_patience": None, "keep": "last",
                   "validation_patches": VALIDATION_PATCHES, "max_minutes": budget_minutes,
                   "num_threads": threads, "lr_schedule": {"patience": patience}})
    if d.get("sky_variance") is None:
        d["sky_variance"] = sky_variance
    return TrainConfig.model_validate(d)


def method_available(cfg: TrainConfig) -> str:
    """Return why an option cannot run in this build ('' when it can).

    Parameters
    ----------
    cfg : TrainConfig
        The option's configuration.

    Returns
    -------
    str
        The reason, or ''.
    """
    if cfg.method == "blindspot":
        import importlib.util  # only to probe for the optional module

        if importlib.util.find_spec("pausdenoise.n2v.blindspot") is None:
            return "method 'blindspot' is not in this build (no pausdenoise.n2v.blindspot)"
    return ""


def _open_train_frames(store: Path, frames: list[str]) -> tuple[list[Frame], dict[str, Any]]:
    """Open the frames lazily, each with its statistics and, where it has a gain, its own
    noise model (which ``method: sure`` uses with ``noise_per_frame: true``)."""
    stats, _ = frame_stats_table(store, frames)
    noise = frame_noise_models(st.exposure_table(store), stats)
    root = st.open_store(store, "r")
    out = []
    for f in frames:
        if f in stats:
            g = root[f"{st.FRAMES_GROUP}/{f}"]
            out.append(Frame(g["image"], g["mask"] if "mask" in g else None, stats[f], f,
                             noise=noise.get(f)))
    return out, stats


def _arrays(store: Path, frame: str) -> dict[str, np.ndarray]:
    return {n: np.asarray(st.open_frame(store, frame, n)) for n in st.frame_arrays(store, frame)
            if n in ("image", "mask", "ivar", "truth")}


def _good(arr: dict[str, np.ndarray]) -> np.ndarray:
    good = np.isfinite(arr["image"])
    if "mask" in arr:
        good &= arr["mask"] == 0
    if "ivar" in arr:
        good &= np.isfinite(arr["ivar"]) & (arr["ivar"] > 0)
    return good


def _aperture_mask(rows: pd.DataFrame, shape: tuple[int, ...], pixel_scale: float) -> np.ndarray:
    """Source pixels: centres inside the catalogue apertures (as the evaluate stage)."""
    return ev.aperture_pixel_mask(
        shape, rows["aperture_x"].to_numpy(), rows["aperture_y"].to_numpy(),
        rows["aperture_a"].to_numpy() / pixel_scale, rows["aperture_b"].to_numpy() / pixel_scale,
        -np.deg2rad(rows["aperture_theta"].to_numpy()))  # PAUS sign convention


def truth_frame(name: str, image: np.ndarray, truth: np.ndarray, good: np.ndarray,
                source: np.ndarray, sky_tolerance: float, mask: np.ndarray | None = None,
                attrs: dict[str, Any] | None = None, low_snr_max: float = 10.0) -> EvalFrame:
    """Build a frame scored against its truth (pixel classes as the evaluate stage).

    Parameters
    ----------
    name : str
        Frame id.
    image, truth : ndarray (ny, nx)
        Raw and noiseless pixels, ADU.
    good : ndarray of bool
        Usable pixels.
    source : ndarray of bool
        Source pixels (inside the catalogue apertures).
    sky_tolerance : float
        Sky pixels: |truth − sky| < this × σ_noise (σ_noise: MAD of image − truth).
    low_snr_max : float
        Low-S/N pixels: sky_tolerance ≤ (truth − sky) / σ_noise ≤ this.
    mask : ndarray, optional
        Bad-pixel mask (non-zero bad) for normalisation and photometry.
    attrs : dict, optional
        The frame's store attributes (gain, zp, expnum, ccd, band, ...).

    Returns
    -------
    EvalFrame
        The frame.
    """
    sky = float(np.median(truth[good]))
    resid = (image - truth)[good]
    sigma = float(MAD_TO_SIGMA * np.median(np.abs(resid - np.median(resid))))
    classes = {"sky": ev.sky_pixel_mask(truth, sky, sigma, good, sky_tolerance),
               "source": source & good,
               "low_snr": ev.low_snr_pixel_mask(truth - sky, good, sigma, sky_tolerance,
                                                low_snr_max)}
    stats = frame_statistics(image, None if mask is None else (mask != 0) | ~good)
    return EvalFrame(name, image.astype(np.float64), good, classes, stats, mask=mask,
                     truth=truth.astype(np.float64), attrs=attrs or {})


def _rel(path: Path) -> str:
    """The path relative to the project root when it lies inside (for printed records)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name


def _ensure_store(kind: str, out: Path) -> Path:
    """Return the data set's store, creating it with the pipeline when absent."""
    if kind == "saao":
        shipped = ROOT / "bench-output" / "saao" / "store.zarr"
        if shipped.exists():
            return shipped
        stages, target = "ingest", out / "saao"
    else:
        stages, target = "simulate,ingest", out / "sim"
    if not (target / "store.zarr").exists():
        cmd = [sys.executable, "-m", "pausdenoise.cli", "run", "--config", str(CONFIGS[kind]),
               "--out", str(target), "--stages", stages]
        if kind == "saao":
            src = ROOT / "data" / "real" / "saao-kb13475"  # where configs/saao.yaml looks
            if "PAUSDENOISE_REAL_DATA" in os.environ or not src.exists():
                real = os.environ.get("PAUSDENOISE_REAL_DATA",
                                      ROOT.parent / "shared" / "data" / "real")
                src = Path(real) / "saao-kb13475"
            cmd += ["--set", f"input.fits_path={src}"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return target / "store.zarr"


def load_sim(out: Path) -> DataSet:
    """Open (or create) the simulated survey: training and held-out frames with truth.

    Parameters
    ----------
    out : Path
        The benchmark's output folder (the survey goes to ``out/sim``).

    Returns
    -------
    DataSet
        The data set.
    """
    cfg = load_config(CONFIGS["sim"])
    store = _ensure_store("sim", out)
    survey = store.parent / "survey"
    exposures = st.exposure_table(store)
    train_names, held = split_holdout(exposures, cfg.holdout_exposures_per_band)
    train, stats = _open_train_frames(store, train_names)
    catalogue = pd.read_parquet(survey / CATALOGUE_NAME)
    truth = pd.read_parquet(survey / TRUTH_DIR / TRUE_FLUXES_NAME)
    frames = []
    for f in held:
        arr, attrs = _arrays(store, f), st.frame_attrs(store, f)
        if "truth" not in arr:
            raise SystemExit(f"{store}: frame {f} has no truth array")
        rows = catalogue[(catalogue["expnum"] == attrs["expnum"])
                         & (catalogue["ccd"] == attrs["ccd"])]
        good = _good(arr)
        src = _aperture_mask(rows, arr["image"].shape, cfg.photometry.pixel_scale)
        frames.append(truth_frame(f, arr["image"], arr["truth"], good, src,
                                  cfg.evaluate.sky_tolerance, arr.get("mask"), attrs,
                                  cfg.evaluate.low_snr_max))
    base, sky_var = _with_noise_scale(cfg, exposures, stats)
    return DataSet("sim", train, frames, base,
                   Photometry(catalogue, truth, cfg.photometry),
                   f"{_rel(store)} ({len(train)} training frames, held out: {', '.join(held)})",
                   sky_var)


def _with_noise_scale(cfg: PipelineConfig, exposures: pd.DataFrame,
                      stats: dict[str, Any]) -> tuple[TrainConfig, float]:
    """The ``train`` section with ``poisson_scale`` and ``sky_variance`` set as the train stage
    sets them, and the sky variance measured from the gains (1 without gains)."""
    base = cfg.train
    if base.poisson_scale is None:
        scale = noise_scale_from_frames(exposures, stats)
        if scale is not None:
            base = base.model_copy(update={"poisson_scale": scale})
    var = sky_variance_from_frames(exposures, stats)
    var = 1.0 if var is None else var
    if base.sky_variance is None:
        base = base.model_copy(update={"sky_variance": var})
    return base, var


def _references(store: Path, frame: str, others: list[str], image: np.ndarray,
                good: np.ndarray, cfg: ev.EvaluateConfig,
                rest: list[rm.MatchedReference] | None = None) -> list[rm.MatchedReference]:
    """The other exposures registered to ``frame`` by whole-pixel offsets, on its grid.

    With ``evaluate.reference_kernel`` > 0 each candidate is brought to the frame's seeing,
    sub-pixel position and flux scale (:mod:`pausdenoise.reference_match`) and those fitted
    best are kept, as the evaluate stage does; their ``values`` are the references.
    Given a list ``rest`` (and a kernel), every other registered exposure is matched too and
    those not kept as references are appended to it, best fit first; the references are
    still chosen among the evaluate stage's candidates only. As in the evaluate stage,
    ``evaluate.max_seeing_ratio`` keeps to exposures whose ``psf_fwhm_px`` is at most that
    ratio times the frame's, and ``evaluate.reference_model: psf`` re-matches the kept
    references through the kernel between the two Moffat PSFs
    (:func:`~pausdenoise.reference_match.psf_matched`; the shifts here are whole pixels).
    """
    attrs = st.frame_attrs(store, frame)
    sat = attrs.get("saturate")
    psf: dict[str, tuple[float, ...]] = {}  # frame → (FWHM px, β, e1, e2), where needed
    if cfg.max_seeing_ratio is not None or cfg.reference_model == "psf":
        scale = PhotometryConfig().pixel_scale  # for a seeing in arcsec
        psf = {o: m for o in [frame, *others] for m in [stored_psf(store, o, scale)]
               if m is not None}
    if cfg.max_seeing_ratio is not None:
        others = [o for o in no_broader(frame, [frame, *others],
                                        {o: m[0] for o, m in psf.items()},
                                        cfg.max_seeing_ratio) if o != frame]
    cands = []
    for o in others:
        a = _arrays(store, o)
        img_o = a["image"].astype(np.float64)
        bad_o = rg.bad_pixel_map(img_o, a.get("mask"), a.get("ivar"))
        try:
            off = rg.measure_offset(image, img_o, mask_ref=~good, mask_img=bad_o,
                                    min_overlap=cfg.min_overlap,
                                    saturation=float(sat) if sat else None)
        except Exception as exc:  # RegistrationError and friends: skip that exposure
            print(f"  {frame}: {o} not registered ({exc})", flush=True)
            continue
        cands.append((-off.overlap, o, a, rg.shift_wcs(off.dx, off.dy, round_to_pixel=True)))
    with_rest = rest is not None and cfg.reference_kernel > 0
    if with_rest and cfg.reference_model == "psf":
        raise ValueError("a list of the other matches (rest) takes the fitted kernels only")
    refs, names = [], []
    read = len(cands) if with_rest else cfg.references_to_read
    for _, o, a, wcs_o in sorted(cands, key=lambda c: c[:2]):
        if len(refs) >= read:
            break
        values, valid = ev.reference_on_grid(a["image"], a.get("mask"), a.get("ivar"), wcs_o,
                                             None, rg.shift_wcs(), image.shape, None,
                                             cfg.resampling)
        if (valid & good).sum() / good.sum() >= cfg.min_overlap:
            refs.append(values)
            names.append(o)
    gain, rn = rm.frame_noise(attrs)
    sky = frame_statistics(image, (~good).astype(np.uint8)).sky
    a_sub = np.where(good, image - sky, np.nan)
    if with_rest:
        matched = rm.match_references(a_sub, good, refs, sky=sky, gain=gain,
                                      read_noise_adu=rn, half_width=cfg.reference_kernel)
        pool = min(cfg.references_to_read, len(matched))
        keep = rm.select_matched(matched[:pool], cfg.max_references)
        others_left = [m for i, m in enumerate(matched) if i not in keep]
        rest.extend(others_left[i] for i in rm.select_matched(others_left, len(others_left)))
        return [matched[i] for i in keep]
    best = rm.best_matched(a_sub, good, refs, cfg.max_references, sky=sky, gain=gain,
                           read_noise_adu=rn, half_width=cfg.reference_kernel)
    if cfg.reference_model == "psf" and cfg.reference_kernel > 0 and frame in psf:
        # as the evaluate stage: a reference without a PSF keeps its fitted kernel
        best = [(i, rm.psf_matched(refs[i], m, psf[frame], psf[names[i]], a_sub,
                                   rm.bright_pixels([o.values for j, o in best if j != i]
                                                    or [m.values])))
                if names[i] in psf else (i, m) for i, m in best]
    return [m for _, m in best]



def independent_frame(name: str, image: np.ndarray, good: np.ndarray,
                      references: list[np.ndarray], cfg: ev.EvaluateConfig,
                      mask: np.ndarray | None = None) -> EvalFrame:
    """Build a frame scored with the independent-exposure estimator (no truth).

    Parameters
    ----------
    name : str
        Frame id.
    image : ndarray (ny, nx)
        Raw pixels, ADU (sky included).
    good : ndarray of bool
        Usable pixels.
    references : list of ndarray
        Independent exposures on this grid, sky-subtracted ADU, NaN where invalid (≥ 2).
    cfg : EvaluateConfig
        Source threshold, smoothing FWHM, sky margin and low-S/N limit of the pixel classes.
    mask : ndarray, optional
        Bad-pixel mask (non-zero bad).

    Returns
    -------
    EvalFrame
        The frame (classes from the references' mean, as the evaluate stage without truth).
    """
    common = good.copy()
    for r in references:
        common &= np.isfinite(r)
    stats = frame_statistics(image, (~good).astype(np.uint8))
    classes = ev.pixel_classes_without_truth(
        np.mean(references, axis=0), common, threshold=cfg.source_threshold,
        fwhm=cfg.detection_fwhm, margin=cfg.sky_margin,
        noise_sigma=pixel_noise_sigma(image, good), low_snr_max=cfg.low_snr_max)
    return EvalFrame(name, image.astype(np.float64), common, classes, stats, mask=mask,
                     references=references, sky=stats.sky)


def load_saao(out: Path, n_eval: int, evaluate: dict[str, Any] | None = None) -> DataSet:
    """Open (or ingest) the SAAO frames: all for training, ``n_eval`` spread ones scored.

    Parameters
    ----------
    out : Path
        The benchmark's output folder (an ingest goes to ``out/saao`` when needed).
    n_eval : int
        Frames scored, evenly spread over the exposure order.
    evaluate : dict, optional
        ``evaluate`` settings that replace the SAAO configuration's for the references
        (e.g. ``{"reference_model": "psf", "max_seeing_ratio": 1.0}``).

    Returns
    -------
    DataSet
        The data set.
    """
    cfg = load_config(CONFIGS["saao"])
    if evaluate:
        cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update=evaluate)})
    store = _ensure_store("saao", out)
    exposures = st.exposure_table(store).sort_values("expnum")
    names = exposures["frame"].tolist()
    train, stats = _open_train_frames(store, names)
    pick = sorted({names[round(float(i))] for i in np.linspace(0, len(names) - 1, n_eval)})
    frames = []
    for f in pick:
        arr = _arrays(store, f)
        good = _good(arr)
        refs = _references(store, f, [o for o in names if o != f], arr["image"], good,
                           cfg.evaluate)
        if len(refs) < 2:
            print(f"  {f}: fewer than 2 references, not scored", flush=True)
            continue
        frames.append(independent_frame(f, arr["image"], good, [m.values for m in refs],
                                        cfg.evaluate, arr.get("mask")))
    base, sky_var = _with_noise_scale(cfg, exposures, stats)
    return DataSet("saao", train, frames, base, None,
                   f"{_rel(store)} ({len(train)} frames trained on, scored: {', '.join(pick)})",
                   sky_var)


# --------------------------------------------------------------------------- scoring


def _block_se(q: np.ndarray, sel: np.ndarray, block: int = 8) -> float:
    """Standard error of mean(q) from block × block px block sums (q: values at ``sel``)."""
    yy, xx = np.nonzero(sel)
    ids = (yy // block) * (sel.shape[1] // block + 1) + xx // block
    _, inv = np.unique(ids, return_inverse=True)
    n_k, s_k = np.bincount(inv).astype(float), np.bincount(inv, weights=q)
    k = n_k.size
    if k < 2:
        return math.nan
    mean = s_k.sum() / n_k.sum()
    return float(np.sqrt(k / (k - 1) * np.sum((s_k - mean * n_k) ** 2)) / n_k.sum())


def score_frame(frame: EvalFrame, estimates: dict[str, np.ndarray]) -> pd.DataFrame:
    """Estimated MSE to the truth of each estimate (and of the raw image), per pixel class.

    Parameters
    ----------
    frame : EvalFrame
        The frame.
    estimates : dict of str to ndarray
        Name → image of the frame (ADU, sky included); ``"raw"`` is added.

    Returns
    -------
    DataFrame
        ``kind, pixel_class, n_pixels, mse, mse_se`` (ADU²).
    """
    est = {"raw": frame.image, **estimates}
    if frame.truth is None:
        nan = ~frame.good
        e = {k: np.where(nan, np.nan, v - frame.sky) for k, v in est.items()}
        res = ev.independent_exposure_metrics(e, e["raw"], frame.references, frame.classes,
                                              estimator="triplet")
        return res.combined[["kind", "pixel_class", "n_pixels", "mse", "mse_se"]]
    rows = []
    for kind, v in est.items():
        for cls, sel in frame.classes.items():
            sel = sel & frame.good & np.isfinite(v)
            q = (v[sel] - frame.truth[sel]) ** 2
            rows.append({"kind": kind, "pixel_class": cls, "n_pixels": int(sel.sum()),
                         "mse": float(q.mean()) if q.size else math.nan,
                         "mse_se": _block_se(q, sel) if q.size else math.nan})
    return pd.DataFrame(rows)


def pool(scores: list[pd.DataFrame]) -> pd.DataFrame:
    """Pool per-frame MSEs over frames (pixel-weighted), per kind and pixel class.

    Parameters
    ----------
    scores : list of DataFrame
        :func:`score_frame` results.

    Returns
    -------
    DataFrame
        ``kind, pixel_class, n_pixels, mse, mse_se``.
    """
    rows = []
    for (kind, cls), g in pd.concat(scores).groupby(["kind", "pixel_class"], sort=False):
        g = g[g["mse"].notna() & (g["n_pixels"] > 0)]
        n = g["n_pixels"].to_numpy(float)
        w = n / n.sum() if n.sum() else n
        rows.append({"kind": kind, "pixel_class": cls, "n_pixels": int(n.sum()),
                     "mse": float(np.sum(w * g["mse"])) if len(g) else math.nan,
                     "mse_se": float(np.sqrt(np.sum((w * g["mse_se"]) ** 2)))})
    return pd.DataFrame(rows)


def gain(mse_raw: float, se_raw: float, mse: float, se: float) -> tuple[float, float]:
    """RMS gain sqrt(MSE_raw / MSE) and its standard error (delta method).

    Parameters
    ----------
    mse_raw, se_raw : float
        Raw MSE and its standard error (ADU²).
    mse, se : float
        The estimate's MSE and its standard error (ADU²).

    Returns
    -------
    tuple of float
        (gain, standard error); NaN when an MSE is not positive.
    """
    if not (mse_raw > 0 and mse > 0):
        return math.nan, math.nan
    g = math.sqrt(mse_raw / mse)
    return g, 0.5 * g * math.hypot(se_raw / mse_raw, se / mse)


def best_blur(frames: list[EvalFrame], sigmas: tuple[float, ...] = BLUR_SIGMAS,
              classes: tuple[str, ...] = CLASSES) -> dict[str, dict[str, float]]:
    """Choose the Gaussian-blur σ that minimises the pooled MSE, per pixel class.

    Parameters
    ----------
    frames : list of EvalFrame
        The scored frames.
    sigmas : tuple of float
        The σ grid, px.
    classes : tuple of str
        The pixel classes (keys of the frames' ``classes``) to choose a σ for.

    Returns
    -------
    dict
        Class → ``sigma`` (px), ``mse``, ``mse_se``, ``gain``, ``gain_se``, and ``curve``
        (σ → MSE), ``per_frame`` (frame → that σ's gain on the frame alone).
    """
    scores = [score_frame(f, {f"blur{s:g}": ev.gaussian_blur(f.image, f.good, s) for s in sigmas})
              for f in frames]
    pooled = pool(scores).set_index(["kind", "pixel_class"])
    out = {}
    for cls in classes:
        curve = {s: float(pooled.loc[(f"blur{s:g}", cls), "mse"]) for s in sigmas}
        s_best = min(curve, key=lambda s: curve[s] if np.isfinite(curve[s]) else math.inf)
        row, raw = pooled.loc[(f"blur{s_best:g}", cls)], pooled.loc[("raw", cls)]
        g, g_se = gain(raw["mse"], raw["mse_se"], row["mse"], row["mse_se"])
        per_frame = frame_gains(frames, scores, f"blur{s_best:g}", classes)
        out[cls] = {"sigma": s_best, "mse": float(row["mse"]), "mse_se": float(row["mse_se"]),
                    "gain": g, "gain_se": g_se, "curve": curve,
                    "per_frame": {f: v[cls] for f, v in per_frame.items()}}
    return out


# --------------------------------------------------------------------------- training


@dataclass
class Snapshot:
    """Weights copied at a budget: the state, the training time and epochs at the copy."""

    state: dict[str, torch.Tensor]
    seconds: float
    epochs: int


class BudgetSnapshots:
    """``on_epoch_end`` callback: copy the weights at the first epoch end past each budget.

    Parameters
    ----------
    budgets_s : sequence of float
        Wall-clock budgets, seconds since training started (``history.total_seconds``).
    """

    def __init__(self, budgets_s: list[float]) -> None:
        self.budgets = sorted(float(b) for b in budgets_s)
        self.taken: dict[float, Snapshot] = {}

    def __call__(self, model: torch.nn.Module, history: TrainHistory) -> None:
        """Copy the weights for every budget passed and not yet taken.

        Parameters
        ----------
        model : torch.nn.Module
            The network being trained.
        history : TrainHistory
            Its history (``total_seconds``, ``epochs_run``).
        """
        t = history.total_seconds
        pending = [b for b in self.budgets if b not in self.taken and t >= b]
        if pending:
            snap = Snapshot(copy.deepcopy(model.state_dict()), t, history.epochs_run)
            for b in pending:
                self.taken[b] = snap


def denoise(model: UNet, frame: EvalFrame, prior_scale: float = 1.0) -> np.ndarray:
    """Denoise a whole frame: normalise, one forward pass, denormalise.

    Parameters
    ----------
    model : UNet
        The network in eval mode.
    frame : EvalFrame
        The frame.
    prior_scale : float
        τ of a Gaussian-posterior network (``denoise.prior_scale``: σ_p² × τ; 1 = the
        posterior mean); ignored by a plain network.

    Returns
    -------
    ndarray of float64
        The denoised image, ADU.
    """
    x = normalise(frame.image, frame.stats, None if frame.mask is None
                  else (frame.mask != 0) | ~frame.good)
    with torch.no_grad():
        y = predict_array(model, torch.from_numpy(x)[None, None],
                          prior_scale=prior_scale)[0, 0].numpy()
    return denormalise(y, frame.stats).astype(np.float64)


def inference_rate(model: UNet, shape: tuple[int, int], repeat: int = 3) -> float:
    """Whole-frame inference rate of the optimised CPU network, best of ``repeat``.

    Parameters
    ----------
    model : UNet
        The network (not modified).
    shape : (int, int)
        Frame shape, px.
    repeat : int
        Timed passes after one warm-up.

    Returns
    -------
    float
        Mpix/s with the current torch thread count.
    """
    net = optimise_for_inference(model)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    x = x[None, None]
    predict_array(net, x)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        predict_array(net, x)
        best = min(best, time.perf_counter() - t0)
    return shape[0] * shape[1] / best / 1e6


def train_option(ds: DataSet, option: str, budgets_min: list[float], threads: int
                 ) -> tuple[UNet, TrainHistory, BudgetSnapshots, TrainConfig]:
    """Train one option to the largest budget, with snapshots at every budget.

    Parameters
    ----------
    ds : DataSet
        The data set.
    option : str
        A key of :data:`OPTIONS`.
    budgets_min : list of float
        Budgets, minutes.
    threads : int
        Torch CPU threads.

    Returns
    -------
    tuple
        The trained network, its history, the snapshots and the configuration.
    """
    cfg = option_config(ds.train_cfg, option, max(budgets_min), threads, ds.sky_variance)
    snaps = BudgetSnapshots([60.0 * b for b in budgets_min])
    print(f"[{ds.name}] {option}: training up to {max(budgets_min):g} min on {threads} "
          f"thread(s)", flush=True)
    model, history = train_n2v(ds.train, cfg, progress=False, on_epoch_end=snaps)
    return model, history, snaps, cfg


# --------------------------------------------------------------------------- photometry


def _frame_photometry(frame: EvalFrame, image: np.ndarray, phot: Photometry,
                      kind: str) -> pd.DataFrame:
    a = frame.attrs
    rows = phot.catalogue[(phot.catalogue["expnum"] == a["expnum"])
                          & (phot.catalogue["ccd"] == a["ccd"])]
    mask = None if frame.mask is None else frame.mask.astype(np.uint16)
    return measure_frame(image.astype(np.float32), mask, rows, phot.config,
                         gain=float(a.get("gain", np.nan)), zp=float(a.get("zp", np.nan)),
                         zp_err=float(a.get("zp_err", np.nan)), saturate=a.get("saturate"),
                         kind=kind, expnum=a.get("expnum"), ccd=a.get("ccd"),
                         band=a.get("band"))


def flux_bias(frames: list[EvalFrame], images: list[np.ndarray], phot: Photometry,
              kind: str = "denoised", seed: int = 0) -> list[dict[str, Any]]:
    """Median relative aperture-flux error against the truth per I_auto bin, with 95 % CI.

    Parameters
    ----------
    frames : list of EvalFrame
        The scored frames (with their store attributes).
    images : list of ndarray
        The image of each frame to measure, ADU.
    phot : Photometry
        Catalogue, true fluxes (``flux_true_aper_adu`` × ``zp_true``: the noiseless flux in
        the same aperture, calibrated) and settings.
    kind : str
        Label of the images.
    seed : int
        Bootstrap seed.

    Returns
    -------
    list of dict
        Per bin ``bin, n, median, lo, hi``: median of (F − F_true) / F_true of unflagged
        measurements, and the 2.5/97.5 percentiles of :data:`BOOTSTRAP` resampled medians.
    """
    tab = pd.concat([_frame_photometry(f, im, phot, kind)
                     for f, im in zip(frames, images, strict=True)])
    tab = tab[tab["flags"] == 0]
    t = phot.truth.assign(flux_true=phot.truth["flux_true_aper_adu"] * phot.truth["zp_true"])
    m = tab.merge(t[["ref_id", "expnum", "band", "flux_true"]], on=["ref_id", "expnum", "band"])
    rel = ((m["flux_cal"] - m["flux_true"]) / m["flux_true"]).to_numpy(float)
    idx = bin_index(m["I_auto"].to_numpy(float), np.asarray(FLUX_BINS))
    rng = np.random.default_rng(seed)
    out = []
    for i, (lo, hi) in enumerate(itertools.pairwise(FLUX_BINS)):
        r = rel[(idx == i) & np.isfinite(rel)]
        row = {"bin": f"{lo:g}-{hi:g}", "n": int(r.size), "median": math.nan,
               "lo": math.nan, "hi": math.nan}
        if r.size:
            boots = np.median(rng.choice(r, size=(BOOTSTRAP, r.size)), axis=1)
            row.update(median=float(np.median(r)), lo=float(np.percentile(boots, 2.5)),
                       hi=float(np.percentile(boots, 97.5)))
        out.append(row)
    return out


# --------------------------------------------------------------------------- one option


def frame_gains(frames: list[EvalFrame], scores: list[pd.DataFrame], kind: str,
                classes: tuple[str, ...] = CLASSES) -> dict[str, dict[str, float]]:
    """Each frame's own sky and source RMS gains of one estimate (no pooling).

    Parameters
    ----------
    frames : list of EvalFrame
        The scored frames.
    scores : list of DataFrame
        Their :func:`score_frame` results, in the same order.
    kind : str
        The estimate's name in the scores.
    classes : tuple of str
        The pixel classes.

    Returns
    -------
    dict
        Frame name → class → gain (NaN where an MSE is not positive).
    """
    out = {}
    for f, sc in zip(frames, scores, strict=True):
        p = sc.set_index(["kind", "pixel_class"])["mse"]
        out[f.name] = {cls: gain(p[("raw", cls)], 0.0, p[(kind, cls)], 0.0)[0]
                       for cls in classes}
    return out


def _gains(pooled: pd.DataFrame, kind: str, classes: tuple[str, ...] = CLASSES
           ) -> dict[str, float]:
    p = pooled.set_index(["kind", "pixel_class"])
    out = {}
    for cls in classes:
        if (kind, cls) not in p.index:
            out[f"{cls}_gain"] = out[f"{cls}_gain_se"] = math.nan
            continue
        raw, row = p.loc[("raw", cls)], p.loc[(kind, cls)]
        g, se = gain(raw["mse"], raw["mse_se"], row["mse"], row["mse_se"])
        out[f"{cls}_gain"], out[f"{cls}_gain_se"] = g, se
        out[f"{cls}_mse"], out[f"{cls}_mse_se"] = float(row["mse"]), float(row["mse_se"])
    return out


def evaluate_snapshot(ds: DataSet, model: UNet, snap: Snapshot, cfg: TrainConfig,
                      prior_scales: tuple[float, ...] = (1.0,)
                      ) -> list[tuple[dict[str, Any], list[np.ndarray]]]:
    """Score one snapshot: refit its output offset (on a copy), denoise, pool the MSEs.

    A Gaussian-posterior network is scored once per ``prior_scales`` τ (the same weights
    and offset; only the inference's weighting of the observed pixel changes); a plain
    network once.

    Parameters
    ----------
    ds : DataSet
        The data set.
    model : UNet
        The trained network (its architecture; not modified).
    snap : Snapshot
        The weights to score.
    cfg : TrainConfig
        The training configuration (the offset refit's sampling).
    prior_scales : tuple of float
        The τ values to score a Gaussian-posterior network at.

    Returns
    -------
    list of (dict, list of ndarray)
        Per τ: gains with standard errors and MSEs, the output offset (σ), τ
        (``prior_scale``) and each frame's own gains (``per_frame``); the denoised frames.
    """
    net = copy.deepcopy(model)
    net.load_state_dict(snap.state)
    net.eval()
    _, val_regions = split_regions(ds.train, cfg.validation_fraction, cfg.patch_size)
    offset = calibrate_offset(net, cfg, ds.train, val_regions) if cfg.calibrate_offset else 0.0
    taus = prior_scales if net.config.posterior == "gaussian" else (1.0,)
    out = []
    for tau in taus:
        images = [denoise(net, f, tau) for f in ds.frames]
        scores = [score_frame(f, {"denoised": im})
                  for f, im in zip(ds.frames, images, strict=True)]
        out.append(({"output_offset_sigma": float(offset), "prior_scale": float(tau),
                     **_gains(pool(scores), "denoised"),
                     "per_frame": frame_gains(ds.frames, scores, "denoised")}, images))
    return out


def run_option(ds: DataSet, option: str, budgets_min: list[float], threads: int,
               reference_rate: float, prior_scales: tuple[float, ...] = (1.0,)
               ) -> dict[str, Any]:
    """Train one option and score its snapshot at every budget.

    Parameters
    ----------
    ds : DataSet
        The data set.
    option : str
        A key of :data:`OPTIONS`.
    budgets_min : list of float
        Budgets, minutes.
    threads : int
        Torch CPU threads.
    reference_rate : float
        Inference Mpix/s of the reference architecture.
    prior_scales : tuple of float
        τ values a Gaussian-posterior option is scored at (one budget row each).

    Returns
    -------
    dict
        ``option, status, patches_per_second, inference_mpix_s, inference_ratio, budgets``
        (per budget and τ: the actual seconds and epochs at the copy, gains, flux bias).
    """
    res: dict[str, Any] = {"option": option, "overrides": OPTIONS[option], "budgets": []}
    first = option_config(ds.train_cfg, option, 1.0, threads, ds.sky_variance)
    reason = method_available(first)
    if reason:
        return {**res, "status": f"not run: {reason}"}
    # a blind-spot teacher is distilled at the end of its budget: one run per budget
    runs = [[b] for b in budgets_min] if first.method == "blindspot" else [budgets_min]
    for budgets in runs:
        model, history, snaps, cfg = train_option(ds, option, budgets, threads)
        pps = history.patches_per_second[1:] or history.patches_per_second
        rate = inference_rate(model, ds.frames[0].image.shape) if ds.frames else math.nan
        res.update(status="ok", patches_per_second=float(np.median(pps)),
                   train_seconds=history.total_seconds, epochs=history.epochs_run,
                   inference_mpix_s=rate, inference_ratio=rate / reference_rate)
        for b in budgets:
            res["budgets"] += _score_budget(ds, option, model, snaps, cfg, b, prior_scales)
    return res


def _score_budget(ds: DataSet, option: str, model: UNet, snaps: BudgetSnapshots,
                  cfg: TrainConfig, b: float, prior_scales: tuple[float, ...] = (1.0,)
                  ) -> list[dict[str, Any]]:
    """Score the snapshot of one budget (minutes): rows of ``run_option``'s budgets, one
    per τ."""
    snap = snaps.taken.get(60.0 * b)
    if snap is None:
        return [{"budget_min": b, "status": "not reached"}]
    rows = []
    for scores, images in evaluate_snapshot(ds, model, snap, cfg, prior_scales):
        row = {"budget_min": b, "status": "ok", "seconds": snap.seconds,
               "epochs": snap.epochs, **scores}
        if ds.photometry is not None:
            row["flux_bias"] = flux_bias(ds.frames, images, ds.photometry)
        print(f"[{ds.name}] {_label(option, row)} @ {b:g} min ({snap.seconds:.0f} s): sky "
              f"gain {row['sky_gain']:.2f}, source gain {row['source_gain']:.2f}", flush=True)
        rows.append(row)
    return rows


def _label(option: str, row: dict[str, Any]) -> str:
    """The option's name in the tables, with τ when it is not 1."""
    tau = row.get("prior_scale", 1.0)
    return option if tau == 1.0 else f"{option} τ={tau:g}"


# --------------------------------------------------------------------------- tables


def _pm(v: float, se: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.2f} ± {se:.2f}" if np.isfinite(se) else f"{v:.2f}"


def _num(v: Any, fmt: str = ".2f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and np.isfinite(v) else "n/a"


def _quality_rows(results: dict[str, Any]) -> list[str]:
    blur_g = {c: results["blur"][c]["gain"] for c in CLASSES}
    lines = []
    for opt in results["options"]:
        if opt["status"] != "ok":
            lines.append(f"| {opt['option']} | – | – | {opt['status']} | | | | | |")
            continue
        rate = f"{_num(opt.get('inference_mpix_s'))} ({_num(opt.get('inference_ratio'))}×)"
        for b in opt["budgets"]:
            if b["status"] != "ok":
                lines.append(f"| {opt['option']} | {b['budget_min']:g} | – | {b['status']} "
                             "| | | | | |")
                continue
            lines.append(
                f"| {_label(opt['option'], b)} | {b['budget_min']:g} | {b['seconds']:.0f} | "
                f"{_pm(b['sky_gain'], b['sky_gain_se'])} | "
                f"{_pm(b['source_gain'], b['source_gain_se'])} | "
                f"{_num(b['sky_gain'] / blur_g['sky'])} | "
                f"{_num(b['source_gain'] / blur_g['source'])} | "
                f"{_num(opt.get('patches_per_second'), '.0f')} | {rate} |")
    return lines


def _frame_rows(results: dict[str, Any]) -> list[str]:
    """Markdown rows: per scored frame, the best blur's and each snapshot's own gains.

    Returns
    -------
    list of str
    """
    bl = results["blur"]
    frames = list(bl["sky"].get("per_frame", {}))
    if not frames:
        return []
    cols = [("best blur", {f: (bl["sky"]["per_frame"][f], bl["source"]["per_frame"][f])
                           for f in frames})]
    for opt in results["options"]:
        for b in opt.get("budgets", []):
            if b.get("per_frame"):
                cols.append((f"{_label(opt['option'], b)}, {b['budget_min']:g} min",
                             {f: (b["per_frame"][f]["sky"], b["per_frame"][f]["source"])
                              for f in frames}))
    lines = ["| frame | " + " | ".join(name for name, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for f in frames:
        lines.append(f"| {f} | " + " | ".join(f"{_num(v[f][0])} / {_num(v[f][1])}"
                                             for _, v in cols) + " |")
    return lines


def _bias_rows(results: dict[str, Any]) -> list[str]:
    bins = [f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(FLUX_BINS)]
    lines = ["| option | budget (min) | " + " | ".join(f"I {b}" for b in bins) + " |",
             "|---|---|" + "---|" * len(bins)]

    def cells(bias: list[dict[str, Any]]) -> str:
        return " | ".join(f"{100 * r['median']:+.1f} [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}]"
                          if r["n"] else "–" for r in bias)

    if results.get("raw_flux_bias"):
        lines.append(f"| raw | – | {cells(results['raw_flux_bias'])} |")
    for opt in results["options"]:
        for b in opt.get("budgets", []):
            if b.get("flux_bias"):
                lines.append(f"| {_label(opt['option'], b)} | {b['budget_min']:g} | "
                             f"{cells(b['flux_bias'])} |")
    return lines


def _demo_line(results: dict[str, Any]) -> list[str]:
    d = results.get("demo_reference")
    if results["data"] != "sim" or not d:
        return []
    return [f"Demo network (reference to beat): sky gain {d['sky_gain']}, source gain "
            f"{d['source_gain']}, {d['patches']} training patches = "
            f"{_num(d['train_seconds'] / 60, '.1f')} min at the {REFERENCE_OPTION} rate here."]


def render(results: dict[str, Any]) -> str:
    """Render the markdown tables of one data set's results.

    Parameters
    ----------
    results : dict
        As written to the JSON (``data, blur, options``, optional ``raw_flux_bias``).

    Returns
    -------
    str
        Markdown: the quality table (gains ± standard error, ratios to the best blur,
        patches/s, inference rate and its ratio to the reference) and, with truth, the
        flux bias per I_auto bin (%).
    """
    bl = results["blur"]
    ref = results.get("reference_inference_mpix_s", math.nan)
    lines = [
        f"Best Gaussian blur: sky σ = {bl['sky']['sigma']:g} px, gain "
        f"{_pm(bl['sky']['gain'], bl['sky']['gain_se'])}; source σ = "
        f"{bl['source']['sigma']:g} px, gain {_pm(bl['source']['gain'], bl['source']['gain_se'])}."
        f" Reference inference rate ({REFERENCE_OPTION} architecture, untrained): "
        f"{_num(ref)} Mpix/s.",
        *_demo_line(results),
        "",
        "| option | budget (min) | trained (s) | sky gain | source gain | sky / blur "
        "| source / blur | patches/s | inference Mpix/s (× ref) |",
        "|---|---|---|---|---|---|---|---|---|",
        *_quality_rows(results),
    ]
    if results.get("data") == "saao":
        lines += ["", "Each frame's own sky / source gains (the best blur's σ as above):", "",
                  *_frame_rows(results)]
    if any(b.get("flux_bias") for o in results["options"] for b in o.get("budgets", [])):
        lines += ["", "Median (F − F_true) / F_true of the aperture flux, % [bootstrap 95 %]:",
                  "", *_bias_rows(results)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CAREamics

#: The CAREamics worker script (run in CAREamics' own venv) and that venv's python.
CARE_WORKER = HERE / "bench_training_budget_careamics.py"
CARE_PYTHON = ROOT / ".venv-careamics" / "bin" / "python"


def _care_inputs(ds: DataSet, path: Path) -> None:
    """Write the normalised training and scored frames for the CAREamics worker."""
    train = []
    for f in ds.train:
        img = np.asarray(f.image[...])
        mask = None if f.mask is None else np.asarray(f.mask[...])
        train.append(normalise(img, f.stats, mask))
    evals = [normalise(f.image, f.stats, ~f.good if f.mask is None else (f.mask != 0) | ~f.good)
             for f in ds.frames]
    np.savez(path, train=np.stack(train), eval=np.stack(evals))


def _care_budget_row(ds: DataSet, b: float, snap: dict[str, Any], pred: np.ndarray
                     ) -> dict[str, Any]:
    images = [denormalise(p, f.stats).astype(np.float64) for p, f in zip(pred, ds.frames,
                                                                          strict=True)]
    pooled = pool([score_frame(f, {"denoised": im}) for f, im in zip(ds.frames, images,
                                                                      strict=True)])
    row = {"budget_min": b, "status": "ok", "seconds": snap["seconds"],
           "steps": snap["steps"], **_gains(pooled, "denoised")}
    if ds.photometry is not None:
        row["flux_bias"] = flux_bias(ds.frames, images, ds.photometry)
    return row


def run_careamics(ds: DataSet, budgets_min: list[float], threads: int, out: Path,
                  reference_rate: float, care_python: Path | None = None) -> dict[str, Any]:
    """CAREamics' N2V at the same budgets on the same frames, scored the same way.

    The frames go to CAREamics normalised as ours are; its predictions are denormalised with
    the same statistics. Architecture and training settings follow the data set's ``train``
    section (depth, channels, batch norm, patch, batch, learning rate, masked fraction).

    Parameters
    ----------
    ds : DataSet
        The data set.
    budgets_min : list of float
        Budgets, minutes.
    threads : int
        Torch CPU threads.
    out : Path
        Working folder (``out/careamics-<data>``).
    reference_rate : float
        Inference Mpix/s of our reference architecture (for the ratio).
    care_python : Path, optional
        CAREamics' python (default ``.venv-careamics/bin/python``).

    Returns
    -------
    dict
        An option entry (``option`` "careamics-n2v") for :func:`render`; ``status`` says
        why it did not run when it did not.
    """
    res: dict[str, Any] = {"option": "careamics-n2v", "budgets": []}
    python = care_python or CARE_PYTHON
    if not ds.frames:
        return {**res, "status": "not run: no scored frame"}
    if not Path(python).exists():
        return {**res, "status": f"not run: no CAREamics venv ({_rel(python)}; `make careamics`)"}
    work = (out / f"careamics-{ds.name}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    _care_inputs(ds, work / "frames.npz")
    c = ds.train_cfg
    cmd = [str(python), str(CARE_WORKER), "--data", str(work / "frames.npz"), "--out",
           str(work), "--budgets", ",".join(f"{60 * b:g}" for b in budgets_min),
           "--threads", str(threads), "--batch", str(c.batch_size), "--patch",
           str(c.patch_size), "--lr", str(c.learning_rate), "--masked-percent",
           f"{100 * c.masked_fraction:g}"] + (["--batch-norm"] if c.unet.batch_norm else [])
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**res, "status": "not run: CAREamics failed "
                f"({tail[0].replace(str(ROOT), '.')[:200]})"}
    info = json.loads((work / "careamics.json").read_text())
    rate = float(info.get("inference_mpix_s", math.nan))
    res.update(status="ok", patches_per_second=info["patches_per_second"],
               inference_mpix_s=rate, inference_ratio=rate / reference_rate,
               careamics=info["careamics"])
    for i, b in enumerate(budgets_min):
        if i >= len(info["snapshots"]):
            res["budgets"].append({"budget_min": b, "status": "not reached"})
            continue
        res["budgets"].append(_care_budget_row(ds, b, info["snapshots"][i],
                                               np.load(work / f"pred_{i}.npy")))
    return res


# --------------------------------------------------------------------------- driver

DEFINITIONS = """\
Definitions: each option is one training run to the largest budget (torch threads as
given, wall time from the start of `train_n2v`, set-up included); the weights are copied at
the first epoch end ({steps} steps) past each budget, their output offset refitted as at
the end of training, and scored after training (blind-spot options: one run per budget,
the teacher trained for 70 % of it and distilled into the U-Net in the rest). Options
ending in -avg: the learning rate decays along half a cosine to the end of the largest
budget and the scored weights are their exponential moving average (decay 0.995 per step).
Option `sure`: the U-Net without blind spot trained on Stein's unbiased estimate of its
squared error from the noise model (`train.method: sure`; every pixel a target, two
forward passes per step), with the noise model's sky variance in normalised units measured
from the frames' gains and read noise (`train.sky_variance: null`; {sky_variance:.3g} here);
`sure-per-frame`: each frame's patches with that frame's own noise model in its normalised
units, from its gain, read noise, sky and σ (`train.noise_per_frame: true`);
`sure-avg-deep`: the same with a U-Net of depth 3 and 48 base channels (the others: the
data set's, depth 2 and 32).
Rows `option τ=k`: the same snapshot at inference with `denoise.prior_scale` k (the prior
variance × k: the observed pixel weighs more; `--prior-scales`).
*Gain* = RMS(raw) / RMS(estimate): with
truth (sim) on the held-out exposures' sky pixels (|truth − sky| < evaluate.sky_tolerance σ)
and catalogue-aperture pixels; without truth (saao) the MSE to the unknown truth is
estimated from independent exposures registered by whole-pixel offsets and matched to the
frame's seeing and flux scale (evaluate.reference_kernel; triplet estimator, pixel classes
from the references' mean), ± one standard error (8 px blocks,
delta method). *Blur*: Gaussian σ in {sigmas} px chosen per pixel class by the same
estimator; *sky / blur*, *source / blur*: option gain over the best blur's. *patches/s*:
median training rate over epochs; *inference*: one whole-frame forward pass of the
optimised CPU network, best of 3, with the ratio to an untrained network of the
{ref} architecture. Flux bias (sim): median over unflagged held-out measurements of
(F − F_true) / F_true, F_true the noiseless flux in the same aperture."""


def demo_reference(results: dict[str, Any]) -> dict[str, Any]:
    """Today's demo network as the reference: its gains and its training time at our rate.

    Parameters
    ----------
    results : dict
        The results so far (the ``n2v-posterior`` option's patches/s, if it ran).

    Returns
    -------
    dict
        ``sky_gain``, ``source_gain`` (:data:`DEMO_GAINS`), ``patches``
        (:data:`DEMO_PATCHES`) and ``train_seconds`` = patches / the measured
        ``n2v-posterior`` patches/s (NaN when that option did not run).
    """
    patches = DEMO_PATCHES
    pps = next((o.get("patches_per_second", math.nan) for o in results["options"]
                if o["option"] == REFERENCE_OPTION and o["status"] == "ok"), math.nan)
    return {**DEMO_GAINS, "patches": patches, "train_seconds": patches / pps}


def run_benchmark(ds: DataSet, options: list[str], budgets_min: list[float], threads: int,
                  out: Path, careamics: Path | None = None,
                  prior_scales: tuple[float, ...] = (1.0,)) -> dict[str, Any]:
    """Run every option on a data set and collect all numbers (written after each option).

    Parameters
    ----------
    ds : DataSet
        The data set.
    options : list of str
        Keys of :data:`OPTIONS`.
    budgets_min : list of float
        Budgets, minutes.
    threads : int
        Torch CPU threads (training and inference).
    out : Path
        Output folder: ``training-budget-<data>.json`` (rewritten after each option) and
        CAREamics' working folder.
    careamics : Path, optional
        CAREamics' python: run :func:`run_careamics` after the options (None: skip).
    prior_scales : tuple of float
        τ values each Gaussian-posterior option is scored at.

    Returns
    -------
    dict
        ``data, description, budgets_min, threads, blur, reference_inference_mpix_s,
        options, demo_reference`` (and ``raw_flux_bias`` with truth).
    """
    json_path = out / f"training-budget-{ds.name}.json"
    torch.set_num_threads(threads)
    ref_cfg = option_config(ds.train_cfg, REFERENCE_OPTION, 1.0, threads, ds.sky_variance)
    ref_net = UNet(ref_cfg.unet.to_unet_config(ref_cfg.noise_scale,
                                               ref_cfg.sky_noise_variance)).eval()
    results: dict[str, Any] = {
        "data": ds.name, "description": ds.description, "budgets_min": budgets_min,
        "threads": threads, "blur": best_blur(ds.frames),
        "sky_variance": ds.sky_variance,
        "reference_inference_mpix_s": inference_rate(ref_net, ds.frames[0].image.shape),
        "options": []}
    if ds.photometry is not None:
        results["raw_flux_bias"] = flux_bias(ds.frames, [f.image for f in ds.frames],
                                             ds.photometry, kind="raw")
    for option in options:
        results["options"].append(run_option(ds, option, budgets_min, threads,
                                             results["reference_inference_mpix_s"],
                                             prior_scales))
        json_path.write_text(json.dumps(results, indent=1, default=float))
    if careamics is not None:
        torch.set_num_threads(threads)
        results["options"].append(run_careamics(ds, budgets_min, threads, out,
                                                results["reference_inference_mpix_s"],
                                                careamics))
    results["demo_reference"] = demo_reference(results)
    json_path.write_text(json.dumps(results, indent=1, default=float))
    return results


def _cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _section(results: dict[str, Any], table: str, command: str, load0, load1) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"\n## Quality against CPU training time: {results['data']} ({now})\n\n"
        f"Machine: {platform.platform()}, {_cpu_name()}, "
        f"{os.cpu_count()} CPUs; load average {load0[0]:.2f} / {load0[1]:.2f} / "
        f"{load0[2]:.2f} before, {load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} after. "
        f"torch {torch.__version__}, {results['threads']} torch thread(s). "
        f"Data: {results['description']}.\n\n```\n{command}\n```\n\n{table}\n\n"
        + DEFINITIONS.format(steps=STEPS_PER_EPOCH, sigmas=f"{BLUR_SIGMAS[0]:g} … "
                             f"{BLUR_SIGMAS[-1]:g} (step 0.25)", ref=REFERENCE_OPTION,
                             sky_variance=results.get("sky_variance", 1.0)) + "\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=["sim", "saao"], default="sim")
    p.add_argument("--budgets", default="1,3,10",
                   help="wall-clock training budgets, minutes, comma-separated")
    p.add_argument("--options", default=",".join(OPTIONS),
                   help=f"comma-separated, of: {', '.join(OPTIONS)}")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--eval-frames", type=int, default=4, help="saao: frames scored")
    p.add_argument("--careamics", action="store_true",
                   help="also CAREamics' N2V at the same budgets (its own venv)")
    p.add_argument("--care-python", type=Path, default=None,
                   help="CAREamics' python (default .venv-careamics/bin/python)")
    p.add_argument("--prior-scales", default="1",
                   help="τ values (denoise.prior_scale) at which each Gaussian-posterior "
                        "option is scored, comma-separated (same weights; rows 'option τ=4')")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--append", action="store_true", help="add a section to RESULTS.md")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    return p


def main(argv: list[str] | None = None, ds: DataSet | None = None) -> int:
    """Run the benchmark (``ds`` replaces the ``--data`` set, for tests).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).
    ds : DataSet, optional
        A data set built by the caller instead of ``--data``.

    Returns
    -------
    int
        Exit status.
    """
    args = _parser().parse_args(argv)
    budgets = sorted({float(b) for b in args.budgets.split(",") if b.strip()})
    if not budgets or budgets[0] <= 0:
        raise SystemExit(f"--budgets needs positive minutes, got {args.budgets!r}")
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SystemExit(f"unknown option(s) {unknown}; known: {list(OPTIONS)}")
    taus = tuple(float(t) for t in args.prior_scales.split(",") if t.strip())
    if not taus or min(taus) <= 0:
        raise SystemExit(f"--prior-scales needs positive values, got {args.prior_scales!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    if ds is None:
        ds = load_sim(args.out) if args.data == "sim" else load_saao(args.out, args.eval_frames)
    care = (args.care_python or CARE_PYTHON) if args.careamics else None
    results = run_benchmark(ds, options, budgets, args.threads, args.out, care, taus)
    load1 = os.getloadavg()
    table = render(results)
    print(f"\n### {ds.name}\n\n{table}", flush=True)
    if args.append:
        cmd = "python benchmarks/bench_training_budget.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        with open(args.results, "a") as fh:
            fh.write(_section(results, table, cmd, load0, load1))
        print(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
