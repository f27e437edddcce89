"""How far the U-Net gets when it is shown the truth: star fields simulated to match the frames.

A bound for the real-frame denoising target. Instead of a self-supervised loss on the real
SAAO exposures, the network (the SAAO configuration's depth 2 / 32 channels, residual
output) is trained with the *truth* as its target, on star fields simulated to look like
those exposures, and scored

* on held-out simulated frames with the independent-exposure estimator (four more noisy
  exposures of the same simulated field as its references): how far the network gets in
  each budget when the training data are exactly the kind of frame it is scored on;
* on the real frames with the same estimator as ``bench_training_budget.py --data saao``:
  what of that survives the differences between the simulation and the sky;

beside the best Gaussian blur (σ chosen by the same estimator, per pixel class) of each
(``bench_training_budget.best_blur``).
Besides the sky and source pixels of ``bench_training_budget.py`` its frames' low-S/N
pixels are scored (``low_snr``: detected light at most ``evaluate.low_snr_max`` σ of the
frame's pixel noise, as the evaluate stage), and the source pixels are
split at ``--core-level`` ADU of the references' mean (sky subtracted): the stars' bright
cores, where a small blur changes a pixel by far more than its noise and the score depends
most on how well the references match the frame's PSF, and the rest.

The simulation, per real exposure (its ingest attributes and its own pixels):

* a circular Moffat PSF of the exposure's measured FWHM and β (``psf_fwhm_px``,
  ``psf_beta``), drawn on a 3× finer grid and summed to pixels; with ``--elliptical-psf``
  an elliptical Moffat of the same FWHM and β, with the ellipticity measured on the
  exposure's isolated stars (:func:`pausdenoise.psf.psf_ellipticity`);
* stars at uniform random positions: the catalogue's own fluxes above ``--complete-flux``
  (resampled, as many as the catalogue holds), and below it a power law
  ``dN/dlog₁₀F ∝ F^−a`` (``--slope``) down to ``--fmin`` ADU, continuous with the
  catalogue's counts at ``--complete-flux`` and scaled by one factor per exposure, fitted
  (by bisection) so that the simulated frame's robust σ (clipped MAD, as the network's
  normalisation) is the exposure's own within 2 %: on this crowded field the unresolved
  stars, not the noise, set that σ (43–114 ADU against ~24 ADU of noise);
* the exposure's sky level (its clipped median), Poisson noise from its gain and Gaussian
  read noise (``gain``, ``rdnoise``), drawn afresh for every training patch; the noise's
  small measured correlation (lag 1 ≲ 0.05) is left out; pixels at the real frames'
  saturation (:data:`SATURATION`) are masked, as the ingest masks the real ones;
* with ``--cosmic-rays N``: N cosmic-ray hits per 512² px (:func:`add_cosmic_rays`: tracks
  of 1–4 px, 3–200 times the sky noise, not through the PSF) in every simulated exposure,
  never in the truth. Each real SAAO exposure has its own (on the four scored frames,
  15–35 groups of sky pixels more than 8 σ of the noise above the other exposures' mean),
  and a network that has never seen one keeps it;
* with ``--mesh M``: the σ matched is that left after a background on an M-px mesh is
  taken out of the frame (:func:`small_scale_sigma`), so that the field's large-scale
  light is not counted as unresolved stars.

The held-out simulated frames are scored three ways (:func:`sim_eval_sets`): by the
estimator with references through the frame's own PSF, against their truth, and, with
``--other-seeing``, by the estimator with references made as the real frames' are (other
exposures' seeing, sub-pixel offsets, each matched to the frame by the evaluate stage's
pixel kernel): how far the real-frame score can be from the truth's. With
``--estimator-check`` nothing is trained: for each kind of reference of
:data:`CHECK_VARIANTS` (the frame's PSF or others, on its grid or offset, matched by the
fitted kernel or through the PSF models, of any seeing or no broader than the frame) the
raw frame's estimated MSE is compared with its true one and the
best blur chosen by the truth and by the estimator (:func:`estimator_check`), written to
``<out>/estimator-check.json`` and, with ``--append``, to RESULTS.md. With
``--sure-budgets M1,M2,…`` the pipeline's SURE is also trained, self-supervised, on one
noisy exposure of each simulated field and scored on the same sets
(:func:`sure_on_simulation`).

With ``--real-psf-references`` the real frames are also scored with references no broader
than the frame, re-matched through the PSF models (``evaluate.reference_model: psf``,
``evaluate.max_seeing_ratio: 1``), and, on the frames that have at least two, with the
fitted kernels' references (:func:`real_sets`); with ``--real-frames-alone`` each real
frame is also scored on its own. With ``--real-check`` nothing is trained:
for each of those sets, and for each real frame alone, the raw frames' estimated MSE is
compared with their noise model (:func:`noise_model_check`: the one truth the real frames
have) beside the best blur, written to ``<out>/real-check.json`` and, with ``--append``,
to RESULTS.md.

With ``--variance-factor k`` the simulated noise variance is k times the headers' (a test of
whether the frames are noisier than their gain and read noise say). With ``--fine-tune
M1,M2,…`` the network, after the last budget, is fine-tuned on the real training frames
with the pipeline's SURE (``train.method: sure``, each frame's own noise model, starting
from the simulation-trained weights: :func:`~pausdenoise.n2v.train.train_n2v`'s
``initial_state``) and scored at each of those fine-tuning budgets.

Training: 64² patches, batches of 16, from the simulated frames (one per real exposure),
Adam at 10⁻³ decayed by a cosine to 0 at the largest budget, loss the mean of
``(output − truth)² / noise variance`` (normalised units), bfloat16 autocast where the CPU
has the units (as ``train.precision: auto``), ``--threads`` torch threads. The budgets count
the optimiser steps and their patch drawing, not the simulation (its time is printed).

Usage (project venv; the SAAO store as ``bench_training_budget.py`` finds or makes it, and
the SExtractor catalogue of one exposure, ``sextractor_catalogue.py``)::

    python benchmarks/bench_matched_simulation.py --catalogue bench-output/saao-frame1.cat \\
        --budgets 1,3,10 --append

Writes ``<out>/matched-simulation.json``; ``--append`` adds a dated section to
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_training_budget as tb  # noqa: E402  (a sibling script)

from pausdenoise import reference_match as rm  # noqa: E402
from pausdenoise import store as st  # noqa: E402
from pausdenoise.config import load_config  # noqa: E402
from pausdenoise.n2v.config import TrainConfig  # noqa: E402
from pausdenoise.n2v.normalise import FrameStats, frame_statistics  # noqa: E402
from pausdenoise.n2v.patches import Frame, split_regions  # noqa: E402
from pausdenoise.n2v.precision import resolve_precision  # noqa: E402
from pausdenoise.n2v.train import calibrate_offset, train_n2v  # noqa: E402
from pausdenoise.n2v.unet import UNet, UNetConfig  # noqa: E402
from pausdenoise.photometry.sextractor import read_sextractor  # noqa: E402
from pausdenoise.psf import psf_ellipticity  # noqa: E402
from pausdenoise.simulate.star_field import (  # noqa: E402
    ExposureModel,
    Population,
    draw_stars,
    fit_factor,
    noise_variance,
    observe,
    population,
    render_stars,
    small_scale_sigma,
)

#: Pixel classes scored: the estimator's three, and the source pixels split at the core level.
SCORED = ("sky", "source", "low_snr", "faint", "core")
#: Simulated exposures scored (each with four more exposures as its references).
SIM_EVAL = 4
#: Real exposures scored (spread over the exposure order).
REAL_EVAL = 4
#: Saturation (ADU): the SAAO frames' plateau, which their ingest masks. Simulated pixels
#: at or above it are masked the same way: the network sees the sky there, and they are
#: neither training targets nor scored.
SATURATION = 65300.0


def add_cosmic_rays(image: np.ndarray, per_frame: float, noise_sigma: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Add cosmic-ray hits (sharper than the PSF, in one exposure only) to a noisy image.

    Each hit is a straight track of 1–4 px in a random direction, its pixels at
    ``A · U(0.5, 1)`` with ``A`` log-uniform between 3 and 200 times the sky noise; the
    number of hits is Poisson with ``per_frame`` per 512² px.

    Parameters
    ----------
    image : ndarray
        The noisy image, ADU (a copy is returned).
    per_frame : float
        Hits per 512 × 512 px.
    noise_sigma : float
        The sky noise, ADU.
    rng : numpy.random.Generator
        Random numbers.

    Returns
    -------
    ndarray
        The image with the hits.
    """
    out = np.array(image, dtype=float)
    ny, nx = out.shape
    for _ in range(rng.poisson(per_frame * ny * nx / 512.0 ** 2)):
        n = int(rng.integers(1, 5))
        ang = rng.uniform(0.0, np.pi)
        amp = noise_sigma * 10 ** rng.uniform(np.log10(3.0), np.log10(200.0))
        y0, x0 = rng.uniform(0, ny), rng.uniform(0, nx)
        t = np.arange(n)
        yy = np.clip(np.floor(y0 + t * np.sin(ang)).astype(int), 0, ny - 1)
        xx = np.clip(np.floor(x0 + t * np.cos(ang)).astype(int), 0, nx - 1)
        out[yy, xx] += amp * rng.uniform(0.5, 1.0, n)
    return out


@dataclass
class SimFrame:
    """A simulated training frame: truth (ADU, no sky), its exposure and statistics."""

    truth: np.ndarray
    exposure: ExposureModel
    stats: FrameStats
    factor: float


def batch(frames: list[SimFrame], size: int, patch: int, rng: np.random.Generator,
          cosmic_rays: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Draw a batch: noisy patches, their truth and the inverse noise variance (normalised).

    Parameters
    ----------
    frames : list of SimFrame
        Training frames.
    size : int
        Patches.
    patch : int
        Patch side, px.
    rng : numpy.random.Generator
        Random numbers.
    cosmic_rays : float
        Cosmic-ray hits per 512² px added to the inputs (:func:`add_cosmic_rays`), not to
        the targets.

    Returns
    -------
    tuple of Tensor (size, 1, patch, patch)
        Input, target, weight (σ² / noise variance), float32; each patch rotated by a
        random multiple of 90°. Saturated pixels: input 0 (the sky, as a masked pixel),
        weight 0.
    """
    xs, ys, ws = [], [], []
    for _ in range(size):
        f = frames[rng.integers(len(frames))]
        y0 = rng.integers(0, f.truth.shape[0] - patch + 1)
        x0 = rng.integers(0, f.truth.shape[1] - patch + 1)
        t = f.truth[y0:y0 + patch, x0:x0 + patch]
        var = noise_variance(t, f.exposure)
        x = t + f.exposure.sky + rng.normal(size=t.shape) * np.sqrt(var)
        if cosmic_rays:
            x = add_cosmic_rays(x, cosmic_rays, math.sqrt(noise_variance(0.0, f.exposure)), rng)
        k = int(rng.integers(4))
        s = f.stats
        sat = t + f.exposure.sky >= SATURATION
        xs.append(np.rot90(np.where(sat, 0.0, (x - s.sky) / s.sigma), k))
        ys.append(np.rot90((t + f.exposure.sky - s.sky) / s.sigma, k))
        ws.append(np.rot90(np.where(sat, 0.0, s.sigma ** 2 / var), k))

    def tensor(v: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.stack(v)[:, None], dtype=np.float32))

    return tensor(xs), tensor(ys), tensor(ws)


def train(frames: list[SimFrame], budgets_s: list[float], net: UNet, precision: str,
          rng: np.random.Generator, on_budget, lr: float = 1e-3, size: int = 16,
          patch: int = 64, cosmic_rays: float = 0.0) -> dict[str, Any]:
    """Train ``net`` on the truth until each budget, calling ``on_budget(seconds, steps)``.

    Parameters
    ----------
    frames : list of SimFrame
        Training frames.
    budgets_s : list of float
        Budgets, seconds of training (steps and their batches), ascending.
    net : UNet
        The network (trained in place).
    precision : {"bf16", "fp32"}
        Autocast precision of the forward pass.
    rng : numpy.random.Generator
        Random numbers.
    on_budget : callable
        Called with (seconds, steps) at the first step past each budget.
    lr : float
        Adam's initial rate (cosine decay to 0 at the last budget).
    size, patch : int
        Batch size and patch side.
    cosmic_rays : float
        Hits per 512² px in the inputs (:func:`batch`).

    Returns
    -------
    dict
        ``steps``, ``seconds``, ``patches_per_second``, ``last_loss``.
    """
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    total, spent, steps, k = budgets_s[-1], 0.0, 0, 0
    loss = torch.tensor(math.nan)
    net.train()
    while k < len(budgets_s):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * min(spent / total, 1.0)))
        x, y, w = batch(frames, size, patch, rng, cosmic_rays)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(x)
        loss = (w * (out.float() - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        spent += time.perf_counter() - t0
        while k < len(budgets_s) and spent >= budgets_s[k]:
            on_budget(spent, steps)
            net.train()
            k += 1
    return {"steps": steps, "seconds": spent, "patches_per_second": steps * size / spent,
            "last_loss": float(loss.detach())}


def exposures_of(ds: tb.DataSet, store: Path, mesh: int = 0,
                 elliptical: bool = False) -> list[ExposureModel]:
    """The simulation's copy of each training exposure (store attributes, frame statistics).

    Parameters
    ----------
    ds : DataSet
        The SAAO data set (its training frames).
    store : Path
        Its store.
    mesh : int
        ``sigma`` is :func:`small_scale_sigma` of the frame on this mesh (0: its robust σ).
    elliptical : bool
        Give each its PSF's ellipticity, measured on its isolated stars
        (:func:`pausdenoise.psf.psf_ellipticity`, saturation at :data:`SATURATION`).

    Returns
    -------
    list of ExposureModel
        One per training frame.
    """
    out = []
    for f in ds.train:
        a = st.frame_attrs(store, f.name)
        sigma = f.stats.sigma
        if mesh:
            image = np.asarray(f.image, float)
            good = np.isfinite(image)
            if f.mask is not None:
                good &= np.asarray(f.mask) == 0
            sigma = small_scale_sigma(image, good, mesh)
        exp = ExposureModel(float(a["psf_fwhm_px"]), float(a["psf_beta"]), float(a["gain"]),
                            float(a["rdnoise"]) / float(a["gain"]), f.stats.sky, sigma,
                            saturate=SATURATION)
        if elliptical:
            shape = psf_ellipticity(np.asarray(f.image, float), f.mask, fwhm_px=exp.fwhm,
                                    beta=exp.beta, saturate=SATURATION)
            exp = dataclasses.replace(exp, e1=shape.e1, e2=shape.e2)
        out.append(exp)
    return out


def sim_eval_sets(pop: Population, exps: list[ExposureModel], factors: list[float],
                  shape: tuple[int, int], rng: np.random.Generator,
                  cosmic_rays: float = 0.0, other_seeing: bool = False,
                  choice: str = "random", shift: float = 0.5, same_psf: bool = False,
                  reference_model: str = "free") -> dict[str, list[tb.EvalFrame]]:
    """Held-out simulated frames, scored against their truth and by the estimator.

    :data:`SIM_EVAL` exposures, spread over ``exps``, each of its own simulated field. The
    same noisy image of each is scored in every set, on the same pixel classes (the
    ``"simulation"`` set's, from its references' mean) and the same good pixels:

    * ``"simulation"``: the independent-exposure estimator with four more exposures of the
      field *through the same PSF*, on the same pixel grid, their sky known exactly;
    * ``"simulation, truth"``: the MSE against the noiseless field itself;
    * with ``other_seeing``, ``"simulation, other seeing"``: the estimator with references
      made as the real frames' are. Each of ``evaluate.references_to_read`` other exposures
      (:func:`pick_references`) sees the field through its own PSF (``same_psf``: the
      frame's), offset by a sub-pixel shift (uniform in ± ``shift`` px on each axis; 0.5:
      what whole-pixel registration leaves), with its own sky, noise and saturation; its
      sky is its clipped median, the frame's too, and the ``evaluate.max_references`` that
      a ``evaluate.reference_kernel`` kernel fits best are kept
      (:func:`~pausdenoise.reference_match.best_matched`), as for the real frames. With
      ``reference_model="psf"`` (``evaluate.reference_model: psf``) each kept one is then
      re-matched through the kernel between the two exposures' Moffat PSFs
      (:func:`~pausdenoise.reference_match.psf_matched`; here the models are exact), its
      flux scale measured on the other kept references' bright pixels.

    The gap between the first two sets is the estimator's own error when the references
    hold the frame's truth; the third adds what the seeing, the sub-pixel position and the
    kernel match of real references leave.

    Parameters
    ----------
    pop : Population
        The stars.
    exps : list of ExposureModel
        Exposures copied (spread over the list).
    factors : list of float
        Their faint stars' factors.
    shape : (int, int)
        Frame shape.
    rng : numpy.random.Generator
        Random numbers.
    cosmic_rays : float
        Hits per 512² px in every exposure, the scored one and its references.
    other_seeing : bool
        Add the set with references of other seeing.
    choice : {"random", "closest", "sharper", "sharper-only"}
        How its candidate references are chosen (:func:`pick_references`); an exposure
        with fewer than two candidates is not scored in any set.
    shift : float
        Largest sub-pixel offset of its references, px.
    same_psf : bool
        Its references through the frame's own PSF instead of their exposures'.
    reference_model : {"free", "psf"}
        Its references' kernels as fitted, or re-matched through the PSF models.

    Returns
    -------
    dict of str to list of EvalFrame
        Set name → frames (the k-th frame of every set is the same image).
    """
    cfg = load_config(tb.CONFIGS["saao"]).evaluate
    sets: dict[str, list[tb.EvalFrame]] = {"simulation": [], "simulation, truth": []}
    if other_seeing:
        sets["simulation, other seeing"] = []
    for j in np.linspace(0, len(exps) - 1, SIM_EVAL).round().astype(int).tolist():
        x, y, f = draw_stars(pop, factors[j], shape, rng)
        truth = render_stars(x, y, f, exps[j].fwhm, exps[j].beta, shape, e1=exps[j].e1,
                             e2=exps[j].e2)

        def exposure(i: int, truth: np.ndarray = truth) -> np.ndarray:
            noise = math.sqrt(noise_variance(0.0, exps[i]))
            return add_cosmic_rays(observe(truth, exps[i], rng), cosmic_rays, noise, rng)

        good = truth + exps[j].sky < SATURATION
        image = exposure(j)
        exact = [np.where(good, exposure(j) - exps[j].sky, np.nan) for _ in range(4)]
        others, psfs = [], []
        picked = (pick_references(exps, j, cfg.references_to_read, choice, rng)
                  if other_seeing else [])
        if other_seeing and len(picked) < 2:
            print(f"  simulated exposure {j}: {len(picked)} candidate reference(s) by "
                  f"{choice!r}, not scored", flush=True)
            continue
        if other_seeing:
            for i in picked:
                dx, dy = rng.uniform(-shift, shift, 2)
                psf = exps[j] if same_psf else exps[i]
                psfs.append((psf.fwhm, psf.beta))
                t_i = render_stars(x, y, f, psf.fwhm, psf.beta, shape, offset=(dx, dy))
                ok = t_i + exps[i].sky < SATURATION
                obs = exposure(i, t_i)
                sky_i = frame_statistics(obs, (~ok).astype(np.uint8)).sky
                others.append(np.where(ok, obs - sky_i, np.nan))
            sky = frame_statistics(image, (~good).astype(np.uint8)).sky
            best = rm.best_matched(np.where(good, image - sky, np.nan), good, others,
                                   cfg.max_references, sky=sky, gain=exps[j].gain,
                                   read_noise_adu=exps[j].read_noise_adu,
                                   half_width=cfg.reference_kernel)
            if reference_model == "psf":
                frame = np.where(good, image - sky, np.nan)
                best = [(k, rm.psf_matched(
                    others[k], m, (exps[j].fwhm, exps[j].beta), psfs[k], frame,
                    rm.bright_pixels([o.values for n, o in best if n != k] or [m.values])))
                    for k, m in best]
            others = [m.values for _, m in best]
            good &= np.all([np.isfinite(r) for r in others], axis=0)
            exact = [np.where(good, r, np.nan) for r in exact]
        fr = tb.independent_frame(f"sim{j}", image, good, exact, cfg, (~good).astype(np.uint8))
        fr.sky = exps[j].sky  # the references' sky is the simulation's, known exactly
        sets["simulation"].append(fr)
        sets["simulation, truth"].append(dataclasses.replace(
            fr, truth=truth + exps[j].sky, references=[]))
        if other_seeing:
            sets["simulation, other seeing"].append(dataclasses.replace(
                fr, references=others, sky=sky))
    return sets


def pick_references(exps: list[ExposureModel], j: int, n: int, choice: str,
                    rng: np.random.Generator) -> list[int]:
    """Choose the candidate references of exposure ``j`` among the others.

    Parameters
    ----------
    exps : list of ExposureModel
        The exposures.
    j : int
        The scored one.
    n : int
        Candidates wanted (fewer when there are fewer others).
    choice : {"random", "closest", "sharper", "sharper-only"}
        ``"random"``: any others; ``"closest"``: those of the nearest PSF FWHM;
        ``"sharper"``: the nearest among those at most as broad as ``j``'s, then the
        nearest broader ones; ``"sharper-only"``: the nearest among those at most as broad
        (fewer, or none, for the sharpest exposures).
    rng : numpy.random.Generator
        Random numbers.

    Returns
    -------
    list of int
        Indices into ``exps``.
    """
    others = [i for i in range(len(exps)) if i != j]
    n = min(n, len(others))
    if choice == "random":
        return rng.choice(others, n, replace=False).tolist()
    dist = {i: abs(exps[i].fwhm - exps[j].fwhm) for i in others}
    if choice == "sharper":
        return sorted(others, key=lambda i: (exps[i].fwhm > exps[j].fwhm, dist[i]))[:n]
    if choice == "sharper-only":
        return sorted((i for i in others if exps[i].fwhm <= exps[j].fwhm),
                      key=lambda i: dist[i])[:n]
    if choice == "closest":
        return sorted(others, key=lambda i: dist[i])[:n]
    raise ValueError(f"unknown reference choice {choice!r}")


#: The estimator check's kinds of references: (name, through the frame's own PSF, largest
#: sub-pixel offset in px, kernel: ``"free"`` as fitted or ``"psf"`` between the PSF models,
#: candidates: None for the check's choice or a :func:`pick_references` choice).
CHECK_VARIANTS = (("frame's PSF, same grid", True, 0.0, "free", None),
                  ("frame's PSF, sub-pixel offsets", True, 0.5, "free", None),
                  ("other PSFs, same grid", False, 0.0, "free", None),
                  ("other PSFs, sub-pixel offsets", False, 0.5, "free", None),
                  ("frame's PSF, sub-pixel offsets, PSF-model kernel", True, 0.5, "psf", None),
                  ("other PSFs, sub-pixel offsets, PSF-model kernel", False, 0.5, "psf", None),
                  ("other PSFs no broader, sub-pixel offsets, fitted kernel", False, 0.5,
                   "free", "sharper-only"),
                  ("other PSFs no broader, sub-pixel offsets, PSF-model kernel", False, 0.5,
                   "psf", "sharper-only"))


def estimator_check(pop: Population, exps: list[ExposureModel], factors: list[float],
                    shape: tuple[int, int], rng: np.random.Generator, core_level: float,
                    choice: str = "random") -> list[dict[str, Any]]:
    """Score the raw frames and the blurs by the estimator and against the truth.

    For each of :data:`CHECK_VARIANTS`, :func:`sim_eval_sets` with references of other
    seeing made that way, matched to the frame as the real frames' are; per scored pixel
    class, the raw image's estimated MSE over its true one (1 where the references hold the
    frame's truth) and the best Gaussian blur's gain (σ and gain chosen against the truth,
    and by the estimator).

    Parameters
    ----------
    pop : Population
        The stars.
    exps : list of ExposureModel
        The exposures copied.
    factors : list of float
        Their faint stars' factors.
    shape : (int, int)
        Frame shape.
    rng : numpy.random.Generator
        Random numbers.
    core_level : float
        ADU of the references' mean above which a source pixel is a core.
    choice : str
        :func:`pick_references`' choice.

    Returns
    -------
    list of dict
        Per variant: ``variant``, ``frames`` (scored: fewer than :data:`SIM_EVAL` where
        its candidates leave some with fewer than two references), ``raw_mse_ratio``
        (class → ratio), ``blur_truth`` and ``blur_estimated``
        (:func:`~bench_training_budget.best_blur`'s per class).
    """
    out = []
    for name, same, shift, model, candidates in CHECK_VARIANTS:
        sets = sim_eval_sets(pop, exps, factors, shape, rng, other_seeing=True,
                             choice=candidates or choice, shift=shift, same_psf=same,
                             reference_model=model)
        split_sources(sets["simulation"], core_level)
        truth, est = sets["simulation, truth"], sets["simulation, other seeing"]
        raw = {w: tb.pool([tb.score_frame(f, {}) for f in frames]).set_index("pixel_class")
               for w, frames in (("truth", truth), ("estimated", est))}
        row = {"variant": name, "frames": len(truth), "raw_mse_ratio": {
            c: float(raw["estimated"].loc[c, "mse"] / raw["truth"].loc[c, "mse"])
            for c in SCORED}}
        row["blur_truth"] = tb.best_blur(truth, tb.BLUR_SIGMAS, SCORED)
        row["blur_estimated"] = tb.best_blur(est, tb.BLUR_SIGMAS, SCORED)
        print(f"{name}: raw MSE estimated / true " + ", ".join(
            f"{c} {v:.2f}" for c, v in row["raw_mse_ratio"].items()), flush=True)
        out.append(row)
    return out


def render_check(rows: list[dict[str, Any]]) -> str:
    """The RESULTS.md table of :func:`estimator_check`.

    Parameters
    ----------
    rows : list of dict
        Its results.

    Returns
    -------
    str
        Markdown: per kind of reference, the raw MSE ratio and the best blur's gain by
        the truth and by the estimator, per class.
    """
    head = " | ".join(f"{c}: raw MSE ratio, best blur (truth → estimated)" for c in SCORED)
    lines = [f"| references | frames | {head} |", "|---|---|" + "---|" * len(SCORED)]
    for r in rows:
        cells = " | ".join(
            f"{r['raw_mse_ratio'][c]:.2f}, {r['blur_truth'][c]['gain']:.2f} "
            f"(σ {r['blur_truth'][c]['sigma']:g}) → {r['blur_estimated'][c]['gain']:.2f} "
            f"(σ {r['blur_estimated'][c]['sigma']:g})" for c in SCORED)
        lines.append(f"| {r['variant']} | {r['frames']} | {cells} |")
    return "\n".join(lines)


def split_sources(frames: list[tb.EvalFrame], level: float) -> None:
    """Add the classes ``faint`` and ``core``: source pixels at most / above ``level``.

    Parameters
    ----------
    frames : list of EvalFrame
        Scored frames (with references); their ``classes`` gain the two entries.
    level : float
        The references' mean (sky subtracted, ADU) that separates them.
    """
    for f in frames:
        with np.errstate(invalid="ignore"):
            ref = np.mean(f.references, axis=0)
        src = f.classes["source"]
        f.classes["faint"] = src & (ref <= level)
        f.classes["core"] = src & (ref > level)


def score(net: UNet, frames: list[tb.EvalFrame]) -> dict[str, float]:
    """Pooled RMS gains of the network on scored frames, per scored class.

    Parameters
    ----------
    net : UNet
        The network (put in eval mode).
    frames : list of EvalFrame
        The frames.

    Returns
    -------
    dict
        ``<class>_gain``, ``<class>_gain_se`` (and MSEs) for :data:`SCORED`.
    """
    return score_sets(net, {"frames": frames})["frames"]


def score_sets(net: UNet, sets: dict[str, list[tb.EvalFrame]]) -> dict[str, dict[str, float]]:
    """:func:`score` on every set of :func:`sim_eval_sets`, each image denoised once.

    Parameters
    ----------
    net : UNet
        The network (put in eval mode).
    sets : dict of str to list of EvalFrame
        Set name → frames; frames of one name hold the same image in every set.

    Returns
    -------
    dict
        Set name → :func:`score`'s gains.
    """
    net.eval()
    den: dict[str, np.ndarray] = {}
    for frames in sets.values():
        for f in frames:
            if f.name not in den:
                den[f.name] = tb.denoise(net, f)
    return {name: tb._gains(tb.pool([tb.score_frame(f, {"net": den[f.name]}) for f in frames]),
                            "net", SCORED)
            for name, frames in sets.items()}


#: The real frames' sets of :func:`real_sets` beyond ``"real"``.
REAL_PSF, REAL_SAME = "real, PSF-model references", "real, those frames, fitted kernels"


def real_sets(ds: tb.DataSet, out: Path, core_level: float, psf_references: bool,
              alone: bool = False) -> dict[str, list[tb.EvalFrame]]:
    """The real frames' scored sets, their source pixels split at the core level.

    Parameters
    ----------
    ds : DataSet
        The SAAO data set (its :data:`REAL_EVAL` frames scored with the SAAO
        configuration's references).
    out : Path
        The benchmark's output folder (its store).
    core_level : float
        ADU of the references' mean above which a source pixel is a core.
    psf_references : bool
        Add :data:`REAL_PSF`: the same frames scored with references no broader than the
        frame (``evaluate.max_seeing_ratio: 1``) re-matched through the PSF models
        (``evaluate.reference_model: psf``), those with at least two; and
        :data:`REAL_SAME`: those frames with the fitted kernels' references.
    alone : bool
        Add each frame of ``"real"`` as a set of its own (``"real, <frame> alone"``).

    Returns
    -------
    dict of str to list of EvalFrame
        ``"real"``, and with ``psf_references`` the two other sets, with ``alone`` one set
        per frame.
    """
    sets = {"real": ds.frames}
    if psf_references:
        sets[REAL_PSF] = tb.load_saao(out, REAL_EVAL, {
            "reference_model": "psf", "max_seeing_ratio": 1.0}).frames
        names = {f.name for f in sets[REAL_PSF]}
        sets[REAL_SAME] = [f for f in ds.frames if f.name in names]
    for frames in sets.values():
        split_sources(frames, core_level)
    if alone:
        sets.update({f"real, {f.name} alone": [f] for f in ds.frames})
    return sets


def noise_model_check(frames: list[tb.EvalFrame], store: Path) -> dict[str, float]:
    """Compare the raw frames' estimated MSE with their noise model, per pixel class.

    The raw frame's error *is* its noise, whose variance the headers give: per pixel
    ``(sky + light) / gain + read noise²`` (ADU², the light from the references' mean, at
    least 0). Where the references hold the frame's truth the estimator finds it (ratio 1,
    to the accuracy of the gain); what they miss of the truth adds to the estimate. A check
    of the real-frame estimator on real pixels, for the raw frame only.

    Parameters
    ----------
    frames : list of EvalFrame
        Real frames with references (their ``classes`` and ``good`` as scored).
    store : Path
        Their store (``gain`` in e⁻/ADU and ``rdnoise`` in e⁻ of each frame).

    Returns
    -------
    dict of str to float
        Class → the pooled estimated raw MSE over the pooled noise-model variance.
    """
    est, model = dict.fromkeys(SCORED, 0.0), dict.fromkeys(SCORED, 0.0)
    for f in frames:
        gain, rn = rm.frame_noise(st.frame_attrs(store, f.name))
        if gain is None:
            raise ValueError(f"{f.name}: no gain in the store attributes")
        var = rm.noise_variance(np.where(f.good, f.image - f.sky, np.nan), f.good,
                                f.references, f.sky, gain, rn)
        raw = tb.score_frame(f, {}).set_index("pixel_class")
        for c in SCORED:
            sel = f.classes[c] & f.good
            est[c] += float(raw.loc[c, "mse"]) * int(sel.sum())
            model[c] += float(var[sel].sum())
    return {c: est[c] / model[c] if model[c] > 0 else math.nan for c in SCORED}


def fine_tune(ds: tb.DataSet, net: UNet, budgets_min: list[float], threads: int,
              lr: float) -> list[dict[str, Any]]:
    """Fine-tune the simulation-trained network on the real frames with SURE; score budgets.

    The pipeline's ``train.method: sure`` (:func:`~pausdenoise.n2v.train.train_n2v` with
    ``initial_state``) on the data set's training frames, the network's architecture
    (residual output, no batch normalisation), ``lr`` decayed by the plateau schedule as
    the ``sure`` option of ``bench_training_budget.py``; each budget's snapshot scored
    as there (its output offset refitted) and with :func:`score`'s classes.

    Parameters
    ----------
    ds : DataSet
        The SAAO data set.
    net : UNet
        The simulation-trained network (not modified).
    budgets_min : list of float
        Fine-tuning budgets, minutes, ascending.
    threads : int
        Torch threads.
    lr : float
        Initial learning rate.

    Returns
    -------
    list of dict
        Per budget: ``minutes``, ``seconds``, ``epochs`` and ``real`` (the gains).
    """
    base = tb.option_config(ds.train_cfg, "sure", max(budgets_min), threads, ds.sky_variance)
    d = base.model_dump(mode="python")
    d["unet"].update(residual=True, batch_norm=False, depth=net.config.depth,
                     base_channels=net.config.base_channels)
    d["learning_rate"] = lr
    cfg = TrainConfig.model_validate(d)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    print(f"fine-tuning with SURE up to {max(budgets_min):g} min", flush=True)
    return _trained_budgets(ds.train, cfg, budgets_min, state,
                            lambda m: {"real": score(m, ds.frames)})


def _trained_budgets(frames: list[Any], cfg: TrainConfig, budgets_min: list[float],
                     initial_state: dict[str, torch.Tensor] | None,
                     scorer: Any) -> list[dict[str, Any]]:
    """Train with the pipeline's :func:`~pausdenoise.n2v.train.train_n2v`; score each budget.

    Each budget's snapshot gets its output offset refitted on the training frames'
    validation regions (as ``bench_training_budget.py`` does) and is scored by ``scorer``.

    Returns
    -------
    list of dict
        Per budget: ``minutes``, ``seconds``, ``epochs``, ``output_offset_sigma``,
        ``patches_per_second`` and ``scorer``'s entries (``status`` if not reached).
    """
    snaps = tb.BudgetSnapshots([60.0 * b for b in budgets_min])
    model, history = train_n2v(frames, cfg, progress=False, on_epoch_end=snaps,
                               initial_state=initial_state)
    out = []
    for b in budgets_min:
        snap = snaps.taken.get(60.0 * b)
        if snap is None:
            out.append({"minutes": b, "status": "not reached"})
            continue
        tuned = copy.deepcopy(model)
        tuned.load_state_dict(snap.state)
        tuned.eval()
        _, regions = split_regions(frames, cfg.validation_fraction, cfg.patch_size)
        offset = calibrate_offset(tuned, cfg, frames, regions)
        row = {"minutes": b, "seconds": snap.seconds, "epochs": snap.epochs,
               "output_offset_sigma": float(offset),
               "patches_per_second": float(np.median(history.patches_per_second)),
               **scorer(tuned)}
        print(f"{b:g} min of SURE: " + "; ".join(
            f"{w} " + ", ".join(f"{c} {g[f'{c}_gain']:.2f}" for c in SCORED)
            for w, g in row.items() if isinstance(g, dict)), flush=True)
        out.append(row)
    return out


def sure_on_simulation(ds: tb.DataSet, frames: list[SimFrame], budgets_min: list[float],
                       threads: int, rng: np.random.Generator,
                       sets: dict[str, list[tb.EvalFrame]]) -> list[dict[str, Any]]:
    """Train the ``sure`` option on one noisy exposure of each simulated field; score it.

    Self-supervised, as on real frames: each training field is observed once (its
    exposure's sky, gain and read noise; saturated pixels masked), the noise model is the
    simulation's own (median over the fields of ``(sky / gain + read noise²) / σ²`` and
    ``gain · σ``), and the pipeline's ``train.method: sure`` (the ``sure`` option of
    ``bench_training_budget.py``: its network, learning rate and schedule) trains on them.
    Each budget is scored on the held-out simulated sets: against the truth and by the
    estimators.

    Parameters
    ----------
    ds : DataSet
        The SAAO data set (its training configuration).
    frames : list of SimFrame
        The simulated training fields.
    budgets_min : list of float
        Budgets, minutes, ascending.
    threads : int
        Torch threads.
    rng : numpy.random.Generator
        Random numbers (the noise).
    sets : dict of str to list of EvalFrame
        :func:`sim_eval_sets`.

    Returns
    -------
    list of dict
        Per budget: as :func:`fine_tune`, the gains under each set's name.
    """
    train_frames, sky_var, scale = [], [], []
    for k, sf in enumerate(frames):
        e = sf.exposure
        image = observe(sf.truth, e, rng)
        mask = (sf.truth + e.sky >= SATURATION).astype(np.uint8)
        stats = frame_statistics(image, mask)
        train_frames.append(Frame(image, mask, stats, f"sim{k:02d}"))
        sky_var.append((e.sky / e.gain + e.read_noise_adu ** 2) / stats.sigma ** 2)
        scale.append(e.gain * stats.sigma)
    cfg = tb.option_config(ds.train_cfg, "sure", max(budgets_min), threads,
                           float(np.median(sky_var)))  # the option leaves sky_variance unset
    cfg = cfg.model_copy(update={"poisson_scale": float(np.median(scale))})
    print(f"SURE on the simulated fields up to {max(budgets_min):g} min", flush=True)
    return _trained_budgets(train_frames, cfg, budgets_min, None,
                            lambda m: score_sets(m, sets))


def render(res: dict[str, Any]) -> str:
    """The RESULTS.md table of a run.

    Parameters
    ----------
    res : dict
        The benchmark's results.

    Returns
    -------
    str
        Markdown: per scored set, the best blur and each budget's gains (× the best blur).
    """
    head = " | ".join(f"{c} gain" for c in SCORED)
    lines = [f"| scored on | estimate | steps | {head} |", "|---|---|---|" + "---|" * len(SCORED)]

    def cells(g: dict[str, float], blur: dict[str, Any]) -> str:
        return " | ".join(f"{g[f'{c}_gain']:.2f} ± {g[f'{c}_gain_se']:.2f} "
                          f"({g[f'{c}_gain'] / blur[c]['gain']:.2f} ×)" for c in SCORED)

    for where in res["blur"]:
        blur = res["blur"][where]
        best = " | ".join(f"{blur[c]['gain']:.2f} (σ {blur[c]['sigma']:g})" for c in SCORED)
        lines.append(f"| {where} | best blur | — | {best} |")
        for b in res["budgets"]:
            lines.append(f"| {where} | network, {b['minutes']:g} min | {b['steps']} | "
                         f"{cells(b[where], blur)} |")
        for b in res.get("sure_on_simulation", []):
            if where in b:
                lines.append(f"| {where} | SURE on the simulation, {b['minutes']:g} min | "
                             f"{b['epochs']} epochs | {cells(b[where], blur)} |")
    blur, last = res["blur"]["real"], res["budgets"][-1]["minutes"] if res["budgets"] else 0
    for b in res.get("fine_tune", []):
        if "real" in b:
            lines.append(f"| real | network, {last:g} min + SURE {b['minutes']:g} min | "
                         f"{b['epochs']} epochs | {cells(b['real'], blur)} |")
    return "\n".join(lines)


def _run_check(a: argparse.Namespace, argv: list[str] | None, pop: Population,
               exps: list[ExposureModel], factors: list[float], shape: tuple[int, int],
               rng: np.random.Generator, load0: tuple[float, float, float]) -> int:
    """Run :func:`estimator_check`, write its JSON and (``--append``) its section.

    Returns
    -------
    int
        Exit status.
    """
    rows = estimator_check(pop, exps, factors, shape, rng, a.core_level, a.reference_choice)
    return _write_check(a, argv, "estimator-check.json",
                        {"choice": a.reference_choice, "rows": rows}, render_check(rows),
                        "The real-frame estimator checked on star fields matched to the SAAO "
                        "frames", load0)


def _write_check(a: argparse.Namespace, argv: list[str] | None, name: str,
                 payload: dict[str, Any], table: str, title: str,
                 load0: tuple[float, float, float]) -> int:
    """Write a check's JSON to ``<out>/name``, print its table and (``--append``) its section.

    Returns
    -------
    int
        Exit status (0).
    """
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / name).write_text(json.dumps({"date": date, **payload}, indent=1, default=float))
    print(table)
    if a.append:
        cmd = "python benchmarks/bench_matched_simulation.py " + " ".join(argv or sys.argv[1:])
        with open(a.results, "a") as fh:
            fh.write(f"\n## {title} ({date})\n\n{platform.machine()}, {tb._cpu_name()}, "
                     f"{os.cpu_count()} CPUs; load {load0[0]:.2f} at the start, "
                     f"{os.getloadavg()[0]:.2f} at the end.\n\n```\n{cmd}\n```\n\n"
                     f"{table}\n")
    return 0


def render_real_check(rows: dict[str, dict[str, Any]]) -> str:
    """The RESULTS.md table of :func:`_run_real_check`.

    Parameters
    ----------
    rows : dict
        Set name → ``frames``, ``noise_model_ratio`` and ``blur`` (class → best blur).

    Returns
    -------
    str
        Markdown: per set of real frames, per class the raw MSE over the noise model and
        the best blur's gain.
    """
    head = " | ".join(f"{c}: raw MSE / noise model, best blur" for c in SCORED)
    lines = [f"| references | frames | {head} |", "|---|---|" + "---|" * len(SCORED)]
    for name, r in rows.items():
        cells = " | ".join(f"{r['noise_model_ratio'][c]:.2f}, {r['blur'][c]['gain']:.2f} "
                           f"(σ {r['blur'][c]['sigma']:g})" for c in SCORED)
        lines.append(f"| {name} | {r['frames']} | {cells} |")
    return "\n".join(lines)


def _run_real_check(a: argparse.Namespace, argv: list[str] | None, ds: tb.DataSet,
                    store: Path, load0: tuple[float, float, float]) -> int:
    """Check the real-frame estimators against the raw frames' noise model (no training).

    Returns
    -------
    int
        Exit status.
    """
    sets = real_sets(ds, a.out, a.core_level, True, alone=True)
    rows = {name: {"frames": len(frames), "noise_model_ratio": noise_model_check(frames, store),
                   "blur": tb.best_blur(frames, tb.BLUR_SIGMAS, SCORED)}
            for name, frames in sets.items()}
    return _write_check(a, argv, "real-check.json", {"rows": rows}, render_real_check(rows),
                        "The real-frame estimators checked against the SAAO frames' noise "
                        "model, frame by frame and on low-S/N pixels", load0)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    int
        Exit status.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalogue", type=Path, required=True,
                   help="SExtractor ASCII_HEAD catalogue of one exposure (FLUX_AUTO, ADU)")
    p.add_argument("--complete-flux", type=float, default=1e4)
    p.add_argument("--fmin", type=float, default=20.0)
    p.add_argument("--slope", type=float, default=0.75)
    p.add_argument("--cosmic-rays", type=float, default=0.0,
                   help="cosmic-ray hits per 512² px in the simulated exposures (not the truth)")
    p.add_argument("--variance-factor", type=float, default=1.0,
                   help="factor on the simulated noise variance (1: the headers' gain and "
                   "read noise)")
    p.add_argument("--elliptical-psf", action="store_true",
                   help="draw each exposure's stars with its PSF's ellipticity, measured on "
                   "its isolated stars (pausdenoise.psf.psf_ellipticity); default: round")
    p.add_argument("--mesh", type=int, default=0,
                   help="match the frames' σ after a background on this mesh (px; 0: whole)")
    p.add_argument("--other-seeing", action="store_true",
                   help="score the simulated frames also with references of the other "
                   "exposures' seeing and sub-pixel positions, matched as the real frames'")
    p.add_argument("--reference-choice", default="random",
                   choices=("random", "closest", "sharper", "sharper-only"),
                   help="how the references of other seeing are chosen (pick_references)")
    p.add_argument("--real-frames-alone", action="store_true",
                   help="also score each real frame on its own (its gains and best blur)")
    p.add_argument("--real-psf-references", action="store_true",
                   help="also score the real frames with references no broader than the "
                   "frame, matched through the PSF models (evaluate.reference_model: psf, "
                   "evaluate.max_seeing_ratio: 1), and with the fitted kernels on those frames")
    p.add_argument("--real-check", action="store_true",
                   help="train nothing: score the real frames' raw images against their noise "
                   "model with each kind of reference (--real-psf-references' sets) and each "
                   "frame alone, beside the best blur")
    p.add_argument("--estimator-check", action="store_true",
                   help="no training: score the raw frames and blurs of the simulation by "
                   "the estimator with each kind of reference (CHECK_VARIANTS) and against "
                   "the truth")
    p.add_argument("--core-level", type=float, default=5000.0,
                   help="ADU of the references' mean above which a source pixel is a core")
    p.add_argument("--budgets", default="1,3,10", help="minutes, ascending")
    p.add_argument("--fine-tune", default="",
                   help="minutes, ascending: after the last budget, fine-tune the network on "
                   "the real training frames with SURE (train.method: sure) and score it at "
                   "each of these fine-tuning budgets")
    p.add_argument("--sure-budgets", default="",
                   help="minutes, ascending: also train the pipeline's SURE (train.method: "
                   "sure) on one noisy exposure of each simulated field and score it on the "
                   "simulated frames at these budgets")
    p.add_argument("--fine-tune-lr", type=float, default=3e-4,
                   help="the fine-tuning's initial learning rate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=tb.DEFAULT_OUT)
    p.add_argument("--append", action="store_true")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    a = p.parse_args(argv)
    if a.elliptical_psf and a.other_seeing:
        p.error("--other-seeing draws its references with round PSFs: not with --elliptical-psf")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    load0 = os.getloadavg()
    ds = tb.load_saao(a.out, REAL_EVAL)
    store = Path(tb._ensure_store("saao", a.out))
    if a.real_check:
        return _run_real_check(a, argv, ds, store, load0)
    cat = read_sextractor(a.catalogue)
    pop = population(cat["FLUX_AUTO"].to_numpy(float), a.complete_flux, a.fmin, a.slope)
    exps = [dataclasses.replace(e, variance_factor=a.variance_factor)
            for e in exposures_of(ds, store, a.mesh, a.elliptical_psf)]
    shape = ds.train[0].image.shape
    t0 = time.perf_counter()
    frames = []
    for e in exps:
        factor, truth, stats = fit_factor(pop, e, shape, rng, mesh=a.mesh)
        frames.append(SimFrame(truth, e, stats, factor))
    sim_s = time.perf_counter() - t0
    if a.estimator_check:
        return _run_check(a, argv, pop, exps, [f.factor for f in frames], shape, rng, load0)
    sims = sim_eval_sets(pop, exps, [f.factor for f in frames], shape, rng, a.cosmic_rays,
                         a.other_seeing, a.reference_choice)
    split_sources(sims["simulation"], a.core_level)  # the classes every set shares
    real = real_sets(ds, a.out, a.core_level, a.real_psf_references, a.real_frames_alone)
    blur = {w: tb.best_blur(f, tb.BLUR_SIGMAS, SCORED) for w, f in (*sims.items(), *real.items())}
    precision = resolve_precision("auto", torch.device("cpu"))
    net = UNet(UNetConfig(depth=2, base_channels=32, batch_norm=False, residual=True))
    budgets = [float(b) for b in a.budgets.split(",")]
    rows: list[dict[str, Any]] = []

    def on_budget(seconds: float, steps: int) -> None:
        row = {"minutes": budgets[len(rows)], "seconds": seconds, "steps": steps,
               **score_sets(net, sims), **score_sets(net, real)}
        print(f"{row['minutes']:g} min ({steps} steps): " + "; ".join(
            f"{w} " + ", ".join(f"{c} {row[w][f'{c}_gain']:.2f}" for c in SCORED)
            for w in blur), flush=True)
        rows.append(row)

    stats = train(frames, [60.0 * b for b in budgets], net, precision, rng, on_budget,
                  cosmic_rays=a.cosmic_rays)
    fine = (fine_tune(ds, net, [float(b) for b in a.fine_tune.split(",")], a.threads,
                      a.fine_tune_lr) if a.fine_tune else [])
    sure = (sure_on_simulation(ds, frames, [float(b) for b in a.sure_budgets.split(",")],
                               a.threads, rng, sims) if a.sure_budgets else [])
    res = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": f"{platform.machine()}, {tb._cpu_name()}, {os.cpu_count()} CPUs",
           "precision": precision, "threads": a.threads, "simulation_seconds": sim_s,
           "stars_per_frame": [float(pop.n_faint * f.factor + len(pop.bright)) for f in frames],
           "factors": [f.factor for f in frames], "population": {
               "bright": len(pop.bright), "complete": a.complete_flux, "fmin": a.fmin,
               "slope": a.slope, "core_level": a.core_level, "mesh": a.mesh,
               "variance_factor": a.variance_factor,
               "cosmic_rays": a.cosmic_rays, "other_seeing": a.other_seeing,
               "elliptical_psf": a.elliptical_psf},
           "ellipticity": [[e.e1, e.e2] for e in exps],
           "blur": blur, "budgets": rows, "training": stats, "fine_tune": fine,
           "sure_on_simulation": sure,
           "fine_tune_lr": a.fine_tune_lr,
           "load": [list(load0), list(os.getloadavg())]}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "matched-simulation.json").write_text(json.dumps(res, indent=1, default=float))
    table = render(res)
    print(table)
    if a.append:
        cmd = "python benchmarks/bench_matched_simulation.py " + " ".join(argv or sys.argv[1:])
        with open(a.results, "a") as fh:
            extra = ", with cosmic rays" if a.cosmic_rays else ""
            extra += ", references of other seeing" if a.other_seeing else ""
            extra += ", each real frame also alone" if a.real_frames_alone else ""
            extra += ", stars as elongated as the exposures' PSFs" if a.elliptical_psf else ""
            fh.write(f"\n## The U-Net shown the truth: star fields matched to the SAAO frames"
                     f"{extra} ({res['date']})\n\n{res['machine']}; {precision}, {a.threads} torch "
                     f"threads; load {load0[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at "
                     f"the end. Simulation {sim_s:.0f} s (not counted), "
                     f"{stats['patches_per_second']:.0f} patches/s.\n\n```\n{cmd}\n```\n\n"
                     f"{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
