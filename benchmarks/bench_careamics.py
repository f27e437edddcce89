"""Side-by-side with CAREamics: N2V training speed, tiled prediction speed, RMS to truth.

Same image, same network size, same training budget for both tools:

* **image** -- one simulated 512×512 frame of a store (``--store``/``--frame``): its
  ``image`` (ADU) to train and denoise, its ``mask`` (bad pixels; CAREamics has no mask
  input, so it sees them as they are), its noiseless ``truth`` for the RMS;
* **network** -- U-Net depth 2, 32 channels at the top level, batch norm, plain N2V (not
  N2V2), blind-spot masking of 0.5 % of the pixels replaced from a radius-5 neighbourhood
  (CAREamics ``masked_pixel_percentage=0.5``, ``roi_size=11``; ours the default);
* **training** -- ``--steps`` Adam steps (lr 4e-4, LR halved on a plateau) of ``--batch``
  patches of ``--patch`` px with the 8 flips/rotations, ``--train-threads`` torch threads,
  no data-loader workers. CAREamics draws its patches per epoch from the one array (a few
  batches an epoch), so it runs ``ceil(steps / batches per epoch)`` epochs, each ending
  with validation on 8 held-out patches and a checkpoint; ours runs ``--steps`` steps in
  epochs of at most 60 (the largest divisor of ``--steps``) with a validation set of
  8 patches and no early stopping.

Measured:

(a) training patches/s: steady state (patches counted in the training batches divided by
    the time from each epoch's start to its last batch's end, first epoch dropped -- it
    excludes validation and checkpointing) and end to end (all patches / wall time of the
    whole ``train`` call);
(b) prediction Mpix/s on a 2048×2048 image (the frame tiled 4×4), best of ``--repeat``,
    for 1 and 2 torch threads: CAREamics ``CAREamist.predict`` with
    ``tile_size=(256, 256), tile_overlap=(48, 48)`` (its documented tiling; batch size = the
    training batch) and whole-image; ours the denoise stage's path
    :func:`pausdenoise.denoise.denoise_frame` (dask ``map_overlap``, sync scheduler, the
    cached optimised CPU network of :func:`pausdenoise.denoise.get_model`) with chunks of
    256 px (CAREamics' tile) and of ``--chunk`` px (default 1024, the reference
    configuration's) split into 256 px sub-tiles (``DenoiseConfig.tile_size``), each
    chunk or sub-tile plus the model's halo in one forward;
    :func:`pausdenoise.n2v.unet.predict_array` on the whole image (optimised and eager); and
    the eager network in :func:`pausdenoise.denoise.predict_block` with 256 px tiles (the
    path measured before the CPU optimisation). Normalisation is included in ours; CAREamics
    normalises inside predict;
(c) RMS (ADU) against ``truth`` on sky pixels (good pixels with |truth − sky| < 0.05 σ,
    as in the evaluate stage) of each tool's prediction of the training frame (CAREamics
    tiled 256/48, ours whole-image), and of the raw frame;
(d) agreement of tiled with whole-image inference on the 2048² image: max |tiled − whole|
    in units of the frame's noise σ, CAREamics 256/48 against its own whole-image
    prediction, ours against whole-image inference through the same network (optimised or
    eager), and our optimised whole image against the eager one.

CAREamics runs in its own virtual environment (``--care-python``, default
``.venv-careamics/bin/python``, built by ``make careamics``) as a subprocess of this script
(``--worker careamics``);
the two sides run one after the other, never together. ``--checkpoints DIR`` keeps the two
trained models (``ours.safetensors``, ``careamics.ckpt``): a model found there is reloaded
and its training skipped, so prediction can be re-measured alone. Usage (project venv)::

    .venv/bin/python benchmarks/bench_careamics.py            # 600 steps, appends RESULTS.md
    .venv/bin/python benchmarks/bench_careamics.py --steps 60 --no-append
    .venv/bin/python benchmarks/bench_careamics.py --steps 100 --checkpoints bench-output/care

CAREamics venv (``make careamics``; careamics 0.3.5 pins ``torch<2.14``,
``torchvision<=0.26``; the torchvision wheels are CUDA builds, so torch must be the matching
CUDA build too -- it runs on CPU when no GPU is present; the local ``torch-2.13.0+cpu`` wheel
in ``/opt/wheels`` must be avoided, hence ``--no-find-links``)::

    python3.11 -m venv .venv-careamics
    .venv-careamics/bin/pip install --no-find-links torch==2.10.0 torchvision==0.25.0 \
        careamics==0.3.5
    # torch 2.10.0+cu128 + torchvision 0.25.0+cu128 from the index (~5 GB with the nvidia-*
    # wheels); check:
    .venv-careamics/bin/python -c "import careamics, torchvision; from careamics import CAREamist"
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = str(ROOT / "demo-output" / "store.zarr")
DEFAULT_FRAME = "00001003_01"
TILE, OVERLAP = 256, 48
MASKED_PERCENT = 0.5  # = pausdenoise DEFAULT_MASKED_FRACTION 0.005
LR = 4e-4
#: CAREamics' interpreter when --care-python is not given: `make careamics`'s venv.
CARE_VENVS = (ROOT / ".venv-careamics" / "bin" / "python",)


def _batch_size_of(b, default: int) -> int:
    import torch

    if torch.is_tensor(b):
        return int(b.shape[0]) if b.ndim else default
    if isinstance(b, (list, tuple)) and b:
        return _batch_size_of(b[0], default)
    if isinstance(b, dict) and b:
        return _batch_size_of(next(iter(b.values())), default)
    for name in ("data", "input", "x"):
        if hasattr(b, name):
            return _batch_size_of(getattr(b, name), default)
    return default


# --------------------------------------------------------------------------- CAREamics side


def careamics_worker(data: Path, out: Path, steps: int, batch: int, patch: int,
                     train_threads: int, threads: list[int], repeat: int, work: Path,
                     normalisation: str = "default", checkpoint: Path | None = None) -> None:
    """Runs in the CAREamics venv: train (or reload ``checkpoint``), time predictions, save
    the frame's prediction, measure tiled vs whole-image agreement."""
    import shutil

    import careamics
    import numpy as np
    import torch
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config
    from lightning.pytorch.callbacks import Callback

    d = np.load(data)
    image = d["image"].astype(np.float32)
    sigma = float(d["sigma"])
    big = np.tile(image, (4, 4))

    class Timer(Callback):
        def __init__(self):
            self.epochs = []  # (patches, seconds) per epoch, training batches only
            self.total = 0

        def on_train_epoch_start(self, trainer, pl_module):
            self.t0, self.n, self.t_last = time.perf_counter(), 0, None

        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
            k = _batch_size_of(b, batch)
            self.n += k
            self.total += k
            self.t_last = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            if self.t_last is not None:
                self.epochs.append((self.n, self.t_last - self.t0))

    torch.set_num_threads(train_threads)
    res: dict[str, Any] = {"careamics": careamics.__version__, "torch": torch.__version__,
                           "predict": []}
    if checkpoint is not None and checkpoint.exists():
        care = CAREamist(checkpoint_path=checkpoint, work_dir=work, enable_progress_bar=False)
        res["config"] = {"checkpoint": str(checkpoint)}
        res["train"] = None
        print(f"careamics: reloaded {checkpoint} (no training)", flush=True)
    else:
        # probe the number of batches per epoch from the patching of this array
        n_train_patches = (image.shape[0] // patch) * (image.shape[1] // patch) - 8
        per_epoch = max(1, math.ceil(n_train_patches / batch))
        epochs = math.ceil(steps / per_epoch)
        cfg = create_advanced_n2v_config(
            experiment_name="bench", data_type="array", axes="YX", patch_size=[patch, patch],
            batch_size=batch, num_epochs=epochs, n_val_patches=8, num_workers=0,
            masked_pixel_percentage=MASKED_PERCENT, roi_size=11,
            **({"normalization": "mean_std",
                "normalization_params": {"input_means": [float(d["sky"])],
                                         "input_stds": [sigma]}}
               if normalisation == "sky" else {}),
            model_params={"depth": 2, "num_channels_init": 32, "use_batch_norm": True},
            optimizer="Adam", optimizer_params={"lr": LR}, seed=1,
        )
        timer = Timer()
        care = CAREamist(cfg, work_dir=work, callbacks=[timer], enable_progress_bar=False)
        t0 = time.perf_counter()
        care.train(train_data=image)
        wall = time.perf_counter() - t0
        steady = timer.epochs[1:] or timer.epochs
        res["config"] = {"epochs": epochs, "global_steps": int(care.trainer.global_step),
                         "model": cfg.algorithm_config.model.model_dump(),
                         "n2v": cfg.algorithm_config.n2v_config.model_dump()
                         if hasattr(cfg.algorithm_config, "n2v_config") else None}
        res["train"] = {"threads": train_threads, "patches": timer.total, "wall_s": wall,
                        "steady_patches_per_s":
                            sum(n for n, _ in steady) / sum(s for _, s in steady),
                        "end_to_end_patches_per_s": timer.total / wall}
        print(f"careamics: trained {res['config']['global_steps']} steps, {timer.total} "
              f"patches in {wall:.1f} s", flush=True)
        if checkpoint is not None:
            last = sorted(work.glob("checkpoints/**/*last.ckpt"))
            if last:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(last[-1], checkpoint)
                print(f"careamics: checkpoint saved to {checkpoint}", flush=True)

    pred, _ = care.predict(image, tile_size=(TILE, TILE), tile_overlap=(OVERLAP, OVERLAP),
                           axes="YX")
    np.save(out.with_suffix(".npy"), np.asarray(pred[0], dtype=np.float32).reshape(image.shape))

    outputs: dict[str, np.ndarray] = {}
    for t in threads:
        torch.set_num_threads(t)
        for mode, kw in (("tiled 256/48", {"tile_size": (TILE, TILE),
                                            "tile_overlap": (OVERLAP, OVERLAP)}),
                         ("whole image", {"tile_size": None, "tile_overlap": None})):
            best = math.inf
            for _ in range(repeat):
                t0 = time.perf_counter()
                y, _ = care.predict(big, axes="YX", **kw)
                best = min(best, time.perf_counter() - t0)
            outputs.setdefault(mode, np.asarray(y[0], dtype=np.float64).reshape(big.shape))
            res["predict"].append({"threads": t, "mode": mode, "seconds": best,
                                   "mpix_per_s": big.size / best / 1e6})
            print(f"careamics predict {mode}, {t} thread(s): {big.size / best / 1e6:.3f} "
                  f"Mpix/s", flush=True)
    diff = np.abs(outputs["tiled 256/48"] - outputs["whole image"]) / sigma
    res["agreement"] = {"max_sigma": float(diff.max()), "rms_sigma": float(np.sqrt(np.mean(
        diff**2))), "p99_9_sigma": float(np.percentile(diff, 99.9))}
    print(f"careamics tiled 256/48 vs whole: max {diff.max():.3g} σ", flush=True)
    out.write_text(json.dumps(res, indent=1, default=str))


# --------------------------------------------------------------------------- our side


def our_modes(tile: int, chunk: int) -> list[tuple[str, str]]:
    """Our prediction variants: (label, CAREamics mode it is compared with)."""
    return [
        (f"eager (before this change) predict_block tiles {tile}", "tiled 256/48"),
        (f"denoise_frame chunks {tile}", "tiled 256/48"),
        (f"denoise_frame chunks {chunk}, tile_size {tile}", "tiled 256/48"),
        ("predict_array whole, optimised", "whole image"),
        ("predict_array whole, eager (before this change)", "whole image"),
    ]


def ours(image, mask, steps: int, batch: int, patch: int, train_threads: int,
         threads: list[int], repeat: int, checkpoint: Path | None = None,
         chunk: int = 1024) -> tuple[dict, Any]:
    """Train (or reload ``checkpoint``) our network and time its predictions."""
    import dask.array as da
    import numpy as np
    import torch

    from pausdenoise.denoise import (
        DenoiseConfig,
        ModelRef,
        denoise_frame,
        get_model,
        predict_block,
    )
    from pausdenoise.n2v.checkpoint import load_model, save_checkpoint
    from pausdenoise.n2v.normalise import denormalise, frame_statistics, normalise
    from pausdenoise.n2v.patches import Frame
    from pausdenoise.n2v.train import TrainConfig, UNetSettings, train_n2v
    from pausdenoise.n2v.unet import predict_array

    stats = frame_statistics(image, mask)
    res: dict[str, Any] = {"torch": torch.__version__, "predict": []}
    torch.set_num_threads(train_threads)
    if checkpoint is not None and checkpoint.exists():
        model, _ = load_model(checkpoint)
        res["config"] = {"checkpoint": str(checkpoint), "unet": model.config.to_dict()}
        res["train"] = None
        print(f"ours: reloaded {checkpoint} (no training)", flush=True)
    else:
        frame = Frame(image, mask, stats, "bench")
        per_epoch = max(k for k in range(1, min(steps, 60) + 1) if steps % k == 0)
        cfg = TrainConfig(
            unet=UNetSettings(depth=2, base_channels=32), patch_size=patch,
            batch_size=batch, epochs=math.ceil(steps / per_epoch), steps_per_epoch=per_epoch,
            device="cpu", num_threads=train_threads, validation_patches=8,
            early_stopping_patience=None, learning_rate=LR, seed=0,
        )
        t0 = time.perf_counter()
        model, hist = train_n2v([frame], cfg, progress=False)
        wall = time.perf_counter() - t0
        pps = hist.patches_per_second[1:] or hist.patches_per_second
        n_patches = cfg.epochs * cfg.steps_per_epoch * batch
        res["config"] = {"epochs": cfg.epochs, "steps": cfg.epochs * cfg.steps_per_epoch,
                         "masked_fraction": cfg.masked_fraction,
                         "radius": cfg.neighbourhood_radius, "unet": cfg.unet.model_dump()}
        res["train"] = {"threads": train_threads, "patches": n_patches, "wall_s": wall,
                        "steady_patches_per_s": float(np.mean(pps)),
                        "end_to_end_patches_per_s": n_patches / wall}
        print(f"ours: trained {cfg.epochs * cfg.steps_per_epoch} steps in {wall:.1f} s",
              flush=True)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model.cpu())
            print(f"ours: checkpoint saved to {checkpoint}", flush=True)
    model = model.cpu().eval()
    halo = model.halo()
    ref = ModelRef.from_model(model)
    opt = get_model(ref, "cpu", optimise=True)  # the denoise stage's cached CPU network
    res["backend"] = opt.backend
    res["halo"] = halo

    def whole(net):
        def run(img, msk):
            x = torch.from_numpy(normalise(img, stats, msk))[None, None]
            return denormalise(predict_array(net, x)[0, 0].numpy(), stats)
        return run

    def eager_tiled(img, msk):
        return denormalise(predict_block(model, normalise(img, stats, msk), halo=halo,
                                         tile_size=TILE, batch_size=4), stats)

    def dask_chunks(size: int, t: int, tile_size: int | None = None):
        cfg = DenoiseConfig(device="cpu", torch_threads=t, tile_size=tile_size)

        def run(img, msk):
            x = da.from_array(img, chunks=(size, size))
            m = da.from_array(msk, chunks=(size, size))
            return denoise_frame(x, m, stats, ref, cfg).compute(scheduler="sync")
        return run

    torch.set_num_threads(train_threads)
    den = whole(opt)(image, mask)
    big, bigm = np.tile(image, (4, 4)), np.tile(mask, (4, 4))
    outputs: dict[str, np.ndarray] = {}
    labels = [m for m, _ in our_modes(TILE, chunk)]
    for t in threads:
        torch.set_num_threads(t)
        fns = [eager_tiled, dask_chunks(TILE, t), dask_chunks(chunk, t, TILE), whole(opt),
               whole(model)]
        for mode, fn in zip(labels, fns, strict=True):
            best = math.inf
            for _ in range(repeat):
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                y = fn(big, bigm)
                best = min(best, time.perf_counter() - t0)
            outputs.setdefault(mode, y.astype(np.float64))
            res["predict"].append({"threads": t, "mode": mode, "seconds": best,
                                   "mpix_per_s": big.size / best / 1e6})
            print(f"ours predict {mode}, {t} thread(s): {big.size / best / 1e6:.3f} Mpix/s",
                  flush=True)
    # tiled against whole-image inference through the same network (the exactness claim),
    # and the optimised network against the eager one (float32 round-off only)
    w_opt, w_eager = labels[3], labels[4]
    res["agreement"] = {}
    for mode, ref_mode in ((labels[0], w_eager), (labels[1], w_opt), (labels[2], w_opt),
                           (w_opt, w_eager)):
        diff = np.abs(outputs[mode] - outputs[ref_mode]) / stats.sigma
        key = f"{mode} vs {ref_mode}"
        res["agreement"][key] = {"max_sigma": float(diff.max()),
                                 "rms_sigma": float(np.sqrt(np.mean(diff**2)))}
        print(f"ours {key}: max {diff.max():.3g} σ", flush=True)
    return res, den


# --------------------------------------------------------------------------- driver


def sky_rms(img, truth, mask) -> float:
    import numpy as np

    from pausdenoise.evaluate import sky_pixel_mask

    good = (mask == 0) & np.isfinite(img)
    sky = float(np.median(truth[good]))
    resid = (img - truth)[good]
    sigma = float(1.4826 * np.median(np.abs(resid - np.median(resid))))
    sel = sky_pixel_mask(truth, sky, sigma, good, 0.05)
    return float(np.sqrt(np.mean((img[sel] - truth[sel]) ** 2))), int(sel.sum())


def default_care_python() -> Path:
    """CAREamics' interpreter: ``.venv-careamics`` (``make careamics``) if built; a clear
    error otherwise."""
    for cand in CARE_VENVS:
        if cand.exists():
            return cand
    raise SystemExit(
        "no CAREamics virtual environment: run `make careamics` (builds .venv-careamics with "
        "careamics 0.3.5 and its own torch) or pass --care-python PATH"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", choices=["careamics"], help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--frame", default=DEFAULT_FRAME)
    p.add_argument("--care-python", type=Path, default=None,
                   help="CAREamics' python (default: .venv-careamics/bin/python, built by "
                   "`make careamics`)")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="folder of the two trained models (ours.safetensors, careamics.ckpt): "
                   "each one present is reloaded and its training skipped (prediction only); "
                   "each one missing is trained and saved there")
    p.add_argument("--chunk", type=int, default=1024,
                   help="our larger dask chunk size for the pipeline row (default 1024, the "
                   "reference configuration's)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--train-threads", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--care-normalisation", choices=["default", "sky"], default="default",
                   help="CAREamics' own mean/std of the image (default), or our frame "
                   "statistics (clipped sky, MAD-σ) passed as its mean/std")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    a = p.parse_args(argv)

    if a.worker == "careamics":
        careamics_worker(a.data, a.out, a.steps, a.batch, a.patch, a.train_threads,
                         a.threads, a.repeat, a.work, a.care_normalisation, a.checkpoint)
        return 0

    care_python = a.care_python or default_care_python()
    if not Path(care_python).exists():
        raise SystemExit(f"--care-python {care_python} does not exist; run `make careamics`")

    import numpy as np
    import zarr

    sys.path.insert(0, str(ROOT))
    g = zarr.open_group(f"{a.store}/frames/{a.frame}", mode="r")
    image = np.asarray(g["image"][:], dtype=np.float32)
    truth = np.asarray(g["truth"][:], dtype=np.float32)
    mask = np.asarray(g["mask"][:]) if "mask" in g else np.zeros(image.shape, np.uint8)
    tmp = Path(tempfile.mkdtemp(prefix="bench_careamics_"))
    from pausdenoise.n2v.normalise import frame_statistics

    stats = frame_statistics(image, mask)
    np.savez(tmp / "data.npz", image=image, sky=stats.sky, sigma=stats.sigma)
    ckpt_dir = a.checkpoints.resolve() if a.checkpoints else None
    reused = {k: bool(ckpt_dir and (ckpt_dir / f).exists())
              for k, f in (("ours", "ours.safetensors"), ("careamics", "careamics.ckpt"))}
    load0 = os.getloadavg()

    cmd = [str(care_python), str(Path(__file__).resolve()), "--worker", "careamics",
           "--data", str(tmp / "data.npz"), "--out", str(tmp / "care.json"),
           "--work", str(tmp / "care_work"), "--steps", str(a.steps), "--batch", str(a.batch),
           "--patch", str(a.patch), "--train-threads", str(a.train_threads),
           "--repeat", str(a.repeat), "--care-normalisation", a.care_normalisation,
           *(["--checkpoint", str(ckpt_dir / "careamics.ckpt")] if ckpt_dir else []),
           "--threads", *map(str, a.threads)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        raise SystemExit(f"CAREamics worker failed ({proc.returncode})")
    print("\n".join(ln for ln in proc.stdout.splitlines()
                    if ln.startswith("careamics")), flush=True)
    care = json.loads((tmp / "care.json").read_text())
    care_den = np.load(tmp / "care.npy")
    care_secs = time.perf_counter() - t0

    mine, my_den = ours(image, mask, a.steps, a.batch, a.patch, a.train_threads, a.threads,
                        a.repeat, ckpt_dir / "ours.safetensors" if ckpt_dir else None,
                        a.chunk)
    load1 = os.getloadavg()

    rms_raw, n_sky = sky_rms(image, truth, mask)
    rms_care, _ = sky_rms(care_den, truth, mask)
    rms_ours, _ = sky_rms(my_den, truth, mask)

    lines = []
    ct, ot = care["train"], mine["train"]
    lines.append("| measure | CAREamics | pausdenoise | ours ÷ CAREamics |")
    lines.append("|---|---:|---:|---:|")
    if ct and ot:
        for key, label in (("steady_patches_per_s", "train patches/s, steady state"),
                           ("end_to_end_patches_per_s", "train patches/s, end to end")):
            lines.append(f"| {label} ({a.train_threads} threads) | {ct[key]:.1f} | "
                         f"{ot[key]:.1f} | {ot[key] / ct[key]:.2f} |")
        lines.append(f"| train wall (s) | {ct['wall_s']:.1f} | {ot['wall_s']:.1f} | "
                     f"{ot['wall_s'] / ct['wall_s']:.2f} |")
    cp = {(r["threads"], r["mode"]): r["mpix_per_s"] for r in care["predict"]}
    ref_of = dict(our_modes(TILE, a.chunk))
    for r in mine["predict"]:
        ref_mode = ref_of[r["mode"]]
        c = cp[(r["threads"], ref_mode)]
        lines.append(f"| predict 2048², {r['threads']} thr: ours {r['mode']} vs CAREamics "
                     f"{ref_mode} (Mpix/s) | {c:.3f} | {r['mpix_per_s']:.3f} | "
                     f"{r['mpix_per_s'] / c:.2f} |")
    ca = care["agreement"]
    for key, ag in mine["agreement"].items():
        lines.append(f"| max \\|Δ\\| / σ: ours {key}; CAREamics tiled 256/48 vs its whole "
                     f"image | {ca['max_sigma']:.3g} | {ag['max_sigma']:.3g} | |")
    lines.append(f"| sky RMS to truth (ADU; raw frame {rms_raw:.2f}, {n_sky} px) | "
                 f"{rms_care:.2f} | {rms_ours:.2f} | {rms_ours / rms_care:.2f} |")
    table = "\n".join(lines)
    print(table)

    if not a.no_append:
        cpu = "?"
        try:
            cpu = next(ln.split(":", 1)[1].strip() for ln in
                       Path("/proc/cpuinfo").read_text().splitlines()
                       if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        cc = care["config"]
        if ct and ot:
            budget = (f"Budget: ours {mine['config']['steps']} steps; CAREamics "
                      f"{cc['epochs']} epochs = {cc['global_steps']} steps, {ct['patches']} "
                      "patches (its epoch is the array's patches minus 8 validation "
                      "patches; validation + checkpoint after every epoch, which is in its "
                      "end-to-end figure and not in its steady-state one).")
        else:
            budget = ("Prediction only: "
                      + ", ".join(f"{k} reloaded from `{ckpt_dir}`" if v else f"{k} trained "
                                  f"({a.steps} steps) and saved to `{ckpt_dir}`"
                                  for k, v in reused.items())
                      + " (training rows omitted when a side was reloaded).")
        extra = f" --checkpoints {a.checkpoints}" if a.checkpoints else ""
        text = f"""

## CAREamics side-by-side ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)

Machine: {platform.node()}, {cpu}, {os.cpu_count()} CPUs, no GPU. Load average
{load0[0]:.2f} before, {load1[0]:.2f} after (1 min). CAREamics {care['careamics']} on
torch {care['torch']} (its own venv); pausdenoise on torch {mine['torch']}, CPU network
backend `{mine['backend']}` (channels-last, traced and frozen; see "CPU inference").

Command: `.venv/bin/python benchmarks/bench_careamics.py --steps {a.steps} --batch {a.batch}
--patch {a.patch} --train-threads {a.train_threads} --threads {' '.join(map(str, a.threads))}
--repeat {a.repeat} --care-normalisation {a.care_normalisation} --chunk {a.chunk}{extra}`
(CAREamics side: `{care_python}` subprocess, {care_secs:.0f} s).

Image: `{a.store}` frame `{a.frame}` (512×512 ADU, its mask and truth); 2048² prediction
image = that frame tiled 4×4. Network: U-Net depth 2, 32 channels, batch norm, plain N2V,
0.5 % blind spots from a radius-5 neighbourhood, Adam lr 4e-4, {a.batch} patches of
{a.patch}² per step. {budget}

Ours: `denoise_frame` = the denoise stage's dask `map_overlap` path (sync scheduler,
normalisation and denormalisation included, the cached optimised CPU network): chunks of
{TILE}² px plus the model's {mine['halo']} px halo, one forward per chunk, or chunks of
{a.chunk}² px split into {TILE}² sub-tiles (`DenoiseConfig.tile_size={TILE}`), one per
forward; `eager` rows = the plain network as before this change. CAREamics: its
`predict` with `tile_size=(256, 256), tile_overlap=(48, 48)` (documented settings), batch =
its training batch. Agreement: max over all 2048² pixels (edges included) of |tiled − whole| in
units of the frame's noise σ ({stats.sigma:.2f} ADU), each tool's tiled output against its own
whole-image output through the same network; for ours also the optimised whole image against
the eager one (float32 round-off of a different summation order, largest at bright stars).

{table}
"""
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(text)
        print(f"appended to {ROOT / 'benchmarks' / 'RESULTS.md'}")
    print(json.dumps({"careamics": care, "ours": mine,
                      "rms": {"raw": rms_raw, "careamics": rms_care, "ours": rms_ours,
                              "n_sky": n_sky}}, default=str)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
