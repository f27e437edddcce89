"""Noise2Noise from the other exposures of a field, beside SURE and a blur, on unseen sky.

On real multi-exposure frames the other exposures of the field, registered and brought to a
frame's seeing, sub-pixel position and flux scale (:mod:`pausdenoise.reference_match`), are
independent noisy copies of its truth. A network trained to predict their mean from the
frame (Noise2Noise, Lehtinen et al. 2018) has every pixel as a target and needs no noise
model: what the exposures share is signal, what they do not is noise.

The independent-exposure estimator scores with such references too, so a network trained
on them must not see the sky it is scored on. Every network here trains on the columns
``x < --train-columns`` of every frame and every estimate is scored on the columns
``x ≥ --score-columns`` only (0-based frame pixels). The SAAO frames are offset from one
another by at most 35 px along x, so with the defaults (200, 312) the trained and the
scored sky are ≥ 77 px apart, wider than the depth-2 U-Net's receptive field (~45 px).

Side by side on the same columns and wall-clock budgets: Noise2Noise (:func:`train_n2n`;
the demo's U-Net without posterior head, Adam at the data set's learning rate, 64² patches,
batches of 16, the same random square symmetry on input and target), options of
``bench_training_budget.py`` (default ``sure-avg``) trained on the same columns, the best
Gaussian blur (σ chosen on the scored columns) and the SURE linear filter of
``bench_reference_match.py`` (7 × 7, fitted on the training columns of each scored frame).

Usage (project venv; the SAAO store is ingested into ``--out`` when absent)::

    python benchmarks/bench_noise2noise.py --budgets 3,10 --append

Time: ~4 min to match every frame's references, then per option the largest budget plus
~1 min of scoring.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_reference_match as brm
import bench_training_budget as tb

from pausdenoise import reference_match as rm
from pausdenoise import store as st
from pausdenoise.config import load_config
from pausdenoise.n2v.config import TrainConfig
from pausdenoise.n2v.normalise import frame_statistics, normalise
from pausdenoise.n2v.patches import Frame
from pausdenoise.n2v.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
#: Optimiser steps between checks of the wall clock (snapshots are taken at these).
CHECK_EVERY = 10


@dataclasses.dataclass
class Pair:
    """One frame's training input and Noise2Noise target, normalised by the frame's statistics.

    Attributes
    ----------
    name : str
        Frame id.
    x : ndarray float32 (ny, nx)
        ``(image − sky) / σ``, bad pixels 0.
    target : ndarray float32 (ny, nx)
        The mean of the frame's matched references in the same units.
    valid : ndarray bool (ny, nx)
        Pixels whose target counts in the loss (good in the frame, valid in every reference).
    refs : ndarray float32 (k, ny, nx)
        Each matched reference in the same units, NaN where invalid or bad in the frame
        (the targets of ``target="single"``).
    """

    name: str
    x: np.ndarray
    target: np.ndarray
    valid: np.ndarray
    refs: np.ndarray


def _batch(pairs: list[Pair], size: int, patch: int, rng: np.random.Generator,
           target: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``size`` random patches (frame and position uniform), one square symmetry.

    With ``target="single"`` each patch's target is one of the frame's references, drawn
    at random per patch, instead of their mean.

    Returns
    -------
    tuple of Tensor (size, 1, patch, patch)
        Inputs, targets (0 where not valid) and the valid mask (float).
    """
    xs, ts, vs = [], [], []
    for _ in range(size):
        p = pairs[int(rng.integers(len(pairs)))]
        ny, nx = p.x.shape
        y0, x0 = int(rng.integers(ny - patch + 1)), int(rng.integers(nx - patch + 1))
        sl = (slice(y0, y0 + patch), slice(x0, x0 + patch))
        if target == "single":
            ref = p.refs[int(rng.integers(len(p.refs)))][sl]
            ok = np.isfinite(ref)
            t = np.where(ok, ref, 0.0)
        else:
            ok, t = p.valid[sl], np.where(p.valid[sl], p.target[sl], 0.0)
        xs.append(p.x[sl])
        ts.append(t)
        vs.append(ok)
    out = [torch.from_numpy(np.stack(a).astype(np.float32))[:, None] for a in (xs, ts, vs)]
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = [torch.rot90(t, k, dims=(2, 3)) for t in out]
    return tuple(torch.flip(t, dims=(3,)) if flip else t for t in out)  # type: ignore[return-value]


def train_n2n(pairs: list[Pair], cfg: TrainConfig, budgets_s: list[float],
              variant: N2NVariant | None = None, *, in_steps: bool = False
              ) -> tuple[UNet, dict[float, tb.Snapshot], float]:
    """Train the plain U-Net on Noise2Noise pairs, copying the weights at every budget.

    The loss is the mean squared difference between the network's output on the input
    patch and the target over the target's valid pixels. With ``variant.cosine`` the
    learning rate falls along half a cosine from ``cfg.learning_rate`` to
    ``cfg.lr_schedule.min_lr`` at the largest budget (by wall time), so only the snapshot at
    that budget is a finished schedule. With ``in_steps`` the budgets count optimiser
    steps instead of seconds, so the result does not depend on the machine's load (the
    tests use this).

    Parameters
    ----------
    pairs : list of Pair
        Training inputs and targets (at least ``cfg.patch_size`` px on each axis).
    cfg : TrainConfig
        ``unet`` (its posterior head is ignored: the plain network is trained),
        ``patch_size``, ``batch_size``, ``learning_rate``, ``seed``.
    budgets_s : list of float
        Wall-clock budgets, seconds from the start; training stops after the largest.
        Optimiser steps instead with ``in_steps``.
    variant : N2NVariant, optional
        Target and schedule (default: the mean target at a constant rate).
    in_steps : bool, optional
        Count the budgets (and the cosine schedule's horizon) in optimiser steps.

    Returns
    -------
    model : UNet
        The network (weights at the end).
    snapshots : dict of float to Snapshot
        Budget → the weights at the first check past it (its ``seconds`` are the wall time
        at the copy in either unit).
    patches_per_second : float
        Training rate over the whole run.
    """
    variant = variant or N2NVariant("noise2noise")
    torch.manual_seed(cfg.seed)
    arch = cfg.unet.model_copy(update={"posterior": "none"}).to_unet_config(None, 1.0)
    model = UNet(arch)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    rng = np.random.default_rng(cfg.seed)
    snaps: dict[float, tb.Snapshot] = {}
    t0, steps, horizon = time.perf_counter(), 0, max(budgets_s)
    lo = min(cfg.lr_schedule.min_lr, cfg.learning_rate)
    model.train()
    while len(snaps) < len(budgets_s):
        if variant.cosine:
            spent = steps if in_steps else time.perf_counter() - t0
            done = min(1.0, spent / horizon)
            for group in opt.param_groups:
                group["lr"] = lo + 0.5 * (cfg.learning_rate - lo) * (1 + math.cos(math.pi * done))
        for _ in range(CHECK_EVERY):
            x, t, v = _batch(pairs, cfg.batch_size, cfg.patch_size, rng, variant.target)
            loss = torch.sum(v * (model(x) - t) ** 2) / torch.clamp(v.sum(), min=1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        elapsed = time.perf_counter() - t0
        for b in budgets_s:
            if b not in snaps and (steps if in_steps else elapsed) >= b:
                snaps[b] = tb.Snapshot(copy.deepcopy(model.state_dict()), elapsed,
                                       steps // CHECK_EVERY)
    model.eval()
    return model, snaps, steps * cfg.batch_size / (time.perf_counter() - t0)


@dataclasses.dataclass(frozen=True)
class N2NVariant:
    """One Noise2Noise setting: its target and learning-rate schedule.

    Attributes
    ----------
    name : str
        ``noise2noise`` (mean target, constant rate), ``noise2noise-cosine`` (mean target,
        cosine decay) or ``noise2noise-single-cosine`` (one random reference per patch,
        cosine decay).
    """

    name: str

    @property
    def target(self) -> str:
        """Return ``"single"`` or ``"mean"``."""
        return "single" if "-single" in self.name else "mean"

    @property
    def cosine(self) -> bool:
        """Return whether the learning rate decays along a cosine to the largest budget."""
        return self.name.endswith("-cosine")


#: The Noise2Noise settings that ``--n2n`` accepts.
N2N_VARIANTS = ("noise2noise", "noise2noise-cosine", "noise2noise-single-cosine")


def make_pair(name: str, image: np.ndarray, good: np.ndarray, references: list[np.ndarray],
              columns: int) -> Pair:
    """Build one frame's pair on its first ``columns`` columns.

    Parameters
    ----------
    name : str
        Frame id.
    image : ndarray (ny, nx)
        Raw pixels, ADU (sky included).
    good : ndarray of bool (ny, nx)
        Usable pixels.
    references : list of ndarray (ny, nx)
        Matched references, ADU with the frame's sky (:func:`frame_statistics`) subtracted,
        NaN where invalid.
    columns : int
        Columns kept (``x < columns``).

    Returns
    -------
    Pair
    """
    stats = frame_statistics(image, (~good).astype(np.uint8))
    refs = np.where(good, np.stack(references) / stats.sigma, np.nan).astype(np.float32)
    target = np.mean(refs, axis=0)
    valid = np.isfinite(target)
    x = normalise(image, stats, (~good).astype(np.uint8))
    t = np.where(valid, target, 0.0).astype(np.float32)
    return Pair(name, x[:, :columns], t[:, :columns], valid[:, :columns],
                np.ascontiguousarray(refs[:, :, :columns]))


def load_pairs(store: Path, columns: int) -> list[Pair]:
    """Every frame of the store with the mean of its matched references, on its training columns.

    Parameters
    ----------
    store : Path
        The ingested SAAO store.
    columns : int
        Training columns (``x < columns``).

    Returns
    -------
    list of Pair
        Frames with at least two matched references.
    """
    cfg = load_config(tb.CONFIGS["saao"]).evaluate
    names = st.exposure_table(store).sort_values("expnum")["frame"].tolist()
    pairs = []
    for f in names:
        arr = tb._arrays(store, f)
        good = tb._good(arr)
        refs = tb._references(store, f, [o for o in names if o != f], arr["image"], good, cfg)
        if len(refs) >= 2:
            pairs.append(make_pair(f, arr["image"], good, [m.values for m in refs], columns))
    return pairs


def on_columns(ds: tb.DataSet, train_columns: int, score_columns: int) -> tb.DataSet:
    """The data set trained on ``x < train_columns`` and scored on ``x ≥ score_columns``.

    Returns
    -------
    DataSet
        Training frames cropped (in memory), scored frames with their pixel classes cut.
    """
    train = [Frame(np.asarray(f.image[:, :train_columns]),
                   None if f.mask is None else np.asarray(f.mask[:, :train_columns]),
                   f.stats, f.name) for f in ds.train]
    frames = []
    for f in ds.frames:
        right = np.zeros(f.image.shape, bool)
        right[:, score_columns:] = True
        frames.append(dataclasses.replace(f, classes={k: v & right
                                                      for k, v in f.classes.items()}))
    return dataclasses.replace(ds, train=train, frames=frames)


def score_images(ds: tb.DataSet, images: list[np.ndarray]) -> dict[str, Any]:
    """Pooled gains (± standard error) and each frame's own gains of one estimate.

    Returns
    -------
    dict
        ``sky_gain``, ``sky_gain_se``, ``source_gain``, ``source_gain_se`` and ``per_frame``.
    """
    scores = [tb.score_frame(f, {"denoised": im}) for f, im in zip(ds.frames, images,
                                                                    strict=True)]
    return {**tb._gains(tb.pool(scores), "denoised"),
            "per_frame": tb.frame_gains(ds.frames, scores, "denoised")}


def run_n2n(ds: tb.DataSet, pairs: list[Pair], budgets_min: list[float],
            variant: N2NVariant | None = None, seed: int | None = None) -> list[dict]:
    """Train one Noise2Noise setting to the largest budget and score each snapshot.

    Parameters
    ----------
    ds : DataSet
        Scored frames and the training configuration.
    pairs : list of Pair
        Training inputs and targets.
    budgets_min : list of float
        Wall-clock budgets (minutes).
    variant : N2NVariant, optional
        Target and schedule (default: mean target, constant rate).
    seed : int, optional
        Overrides the configuration's seed; the rows' ``estimate`` then names it.

    Returns
    -------
    list of dict
        Per budget: ``estimate``, ``budget_min``, ``seconds``, ``patches_per_second`` and the
        gains of :func:`score_images`.
    """
    variant = variant or N2NVariant("noise2noise")
    cfg = ds.train_cfg if seed is None else ds.train_cfg.model_copy(update={"seed": seed})
    label = variant.name if seed is None else f"{variant.name}, seed {seed}"
    print(f"[{label}] training up to {max(budgets_min):g} min on {len(pairs)} frames",
          flush=True)
    model, snaps, rate = train_n2n(pairs, cfg, [60.0 * b for b in budgets_min], variant)
    rows = []
    for b in budgets_min:
        snap = snaps[60.0 * b]
        net = copy.deepcopy(model)
        net.load_state_dict(snap.state)
        net.eval()
        row = {"estimate": label, "budget_min": b, "seconds": snap.seconds,
               "patches_per_second": rate,
               **score_images(ds, [tb.denoise(net, f) for f in ds.frames])}
        print(f"[{label}] {b:g} min: sky {row['sky_gain']:.2f}, "
              f"source {row['source_gain']:.2f}", flush=True)
        rows.append(row)
    return rows


def run_options(ds: tb.DataSet, options: list[str], budgets_min: list[float], threads: int
                ) -> list[dict]:
    """Options of ``bench_training_budget.py``, trained on the same columns and scored alike.

    Returns
    -------
    list of dict
        As :func:`run_n2n`, one row per option, budget and τ = 1.
    """
    rows = []
    for option in options:
        res = tb.run_option(ds, option, budgets_min, threads, math.nan)
        for b in res.get("budgets", []):
            if b.get("status") == "ok" and b.get("prior_scale", 1.0) == 1.0:
                rows.append({"estimate": option, "budget_min": b["budget_min"],
                             "seconds": b["seconds"],
                             "patches_per_second": res.get("patches_per_second", math.nan),
                             **{k: b[k] for k in ("sky_gain", "sky_gain_se", "source_gain",
                                                  "source_gain_se", "per_frame")}})
    return rows


def run_linear(ds: tb.DataSet, store: Path, train_columns: int) -> list[dict]:
    """The best blur (σ chosen on the scored columns) and the SURE linear filter.

    Returns
    -------
    list of dict
        One row each (``budget_min`` NaN), gains as :func:`score_images`.
    """
    bl = tb.best_blur(ds.frames)
    rows = [{"estimate": f"blur σ = {bl['sky']['sigma']:g} / {bl['source']['sigma']:g} px",
             "budget_min": math.nan, "seconds": math.nan, "patches_per_second": math.nan,
             **{f"{c}_gain": bl[c]["gain"] for c in tb.CLASSES},
             **{f"{c}_gain_se": bl[c]["gain_se"] for c in tb.CLASSES},
             "per_frame": {f: {c: bl[c]["per_frame"][f] for c in tb.CLASSES}
                           for f in bl["sky"]["per_frame"]}}]
    images = []
    for f in ds.frames:
        gain, rn = rm.frame_noise(st.frame_attrs(store, f.name))
        left = np.zeros(f.image.shape, bool)
        left[:, :train_columns] = True
        images.append(brm.sure_linear_filter(f, 3, gain, rn, left & f.good))
    rows.append({"estimate": "linear SURE 7 × 7", "budget_min": math.nan,
                 "seconds": math.nan, "patches_per_second": math.nan,
                 **score_images(ds, images)})
    return rows


def render(rows: list[dict]) -> str:
    """Markdown: pooled gains with ratios to the blur, then each frame's sky / source gains.

    Returns
    -------
    str
    """
    blur = rows[0]
    lines = ["| estimate | budget (min) | trained (s) | patches/s | sky gain | source gain "
             "| sky / blur | source / blur |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['estimate']} | {tb._num(r['budget_min'], 'g')} | "
            f"{tb._num(r['seconds'], '.0f')} | {tb._num(r['patches_per_second'], '.0f')} | "
            f"{tb._pm(r['sky_gain'], r['sky_gain_se'])} | "
            f"{tb._pm(r['source_gain'], r['source_gain_se'])} | "
            f"{tb._num(r['sky_gain'] / blur['sky_gain'])} | "
            f"{tb._num(r['source_gain'] / blur['source_gain'])} |")
    frames = list(blur["per_frame"])
    names = [r["estimate"] + ("" if math.isnan(r["budget_min"]) else f", {r['budget_min']:g} min")
             for r in rows]
    lines += ["", "| frame | " + " | ".join(names) + " |", "|---|" + "---|" * len(rows)]
    for f in frames:
        lines.append(f"| {f} | " + " | ".join(
            f"{tb._num(r['per_frame'][f]['sky'])} / {tb._num(r['per_frame'][f]['source'])}"
            for r in rows) + " |")
    return "\n".join(lines)


DEFINITIONS = """\
Every network trains on the columns x < {train} of all 24 frames; every estimate is scored
on the columns x ≥ {score} of the scored frames only (0-based), against references matched
to each scored frame (independent-exposure estimator, as in the training-budget
benchmark), ± one standard error. *noise2noise*: the U-Net of `configs/saao.yaml` without
posterior head trained to predict the mean of each frame's matched references (its
`evaluate.max_references` best-fitting other exposures, brought to its seeing, sub-pixel
position and flux scale) from the frame, squared error over the references' valid pixels,
constant learning rate. *-cosine*: the rate falls along half a cosine to the largest budget
(only that budget's snapshot ends its schedule). *-single*: each patch's target is one of
the references drawn at random instead of their mean.
Other options: as in `bench_training_budget.py`, on the same columns. *blur*: the Gaussian
σ chosen per pixel class on the scored columns (sky / source σ). *linear SURE*: the 7 × 7
kernel of least SURE, fitted on the training columns of each scored frame from its header
noise model. Second table: each frame's own sky / source gains."""


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print (and optionally append) the tables.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    int
        Exit status.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=tb.DEFAULT_OUT)
    p.add_argument("--budgets", default="3,10", help="minutes, comma-separated")
    p.add_argument("--n2n", default="noise2noise",
                   help=f"Noise2Noise settings, comma-separated, of {', '.join(N2N_VARIANTS)}")
    p.add_argument("--seeds", default="",
                   help="seeds of every Noise2Noise setting (default: the configuration's)")
    p.add_argument("--options", default="sure-avg",
                   help="bench_training_budget options to run beside (comma-separated)")
    p.add_argument("--train-columns", type=int, default=200)
    p.add_argument("--score-columns", type=int, default=312)
    p.add_argument("--eval-frames", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--append", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    budgets = [float(b) for b in a.budgets.split(",")]
    load0 = os.getloadavg()
    full = tb.load_saao(a.out, a.eval_frames)
    ds = on_columns(full, a.train_columns, a.score_columns)
    store = tb._ensure_store("saao", a.out)
    pairs = load_pairs(store, a.train_columns)
    rows = run_linear(ds, store, a.train_columns)
    seeds = [int(x) for x in a.seeds.split(",") if x] or [None]
    for name in [n for n in a.n2n.split(",") if n]:
        if name not in N2N_VARIANTS:
            p.error(f"--n2n: unknown setting {name!r} (choose from {', '.join(N2N_VARIANTS)})")
        for seed in seeds:
            rows += run_n2n(ds, pairs, budgets, N2NVariant(name), seed)
    rows += run_options(ds, [o for o in a.options.split(",") if o], budgets, a.threads)
    table = render(rows)
    print(table)
    if a.append:
        load1 = os.getloadavg()
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "python benchmarks/bench_noise2noise.py " + " ".join(argv or sys.argv[1:])
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Noise2Noise from the other exposures: saao, unseen columns ({now})\n\n"
                     f"Machine: {platform.platform()}, {tb._cpu_name()}, {os.cpu_count()} "
                     f"CPUs; load average {load0[0]:.2f} before, {load1[0]:.2f} after. torch "
                     f"{torch.__version__}, {a.threads} torch thread(s). Data: "
                     f"{full.description}.\n\n```\n{cmd}\n```\n\n{table}\n\n"
                     + DEFINITIONS.format(train=a.train_columns, score=a.score_columns) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
