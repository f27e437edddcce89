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
    training batch) and whole-image; ours :func:`pausdenoise.n2v.unet.predict_array` on the
    whole image and :func:`pausdenoise.denoise.predict_block` with 256 px tiles and the
    model's halo (normalisation included in ours; CAREamics normalises inside predict);
(c) RMS (ADU) against ``truth`` on sky pixels (good pixels with |truth − sky| < 0.05 σ,
    as in the evaluate stage) of each tool's prediction of the training frame (CAREamics
    tiled 256/48, ours whole-image), and of the raw frame.

CAREamics runs in its own virtual environment (``--care-python``, default
``/tmp/care2/venv/bin/python``) as a subprocess of this script (``--worker careamics``);
the two sides run one after the other, never together. Usage (from the project venv)::

    .venv/bin/python benchmarks/bench_careamics.py            # 600 steps, appends RESULTS.md
    .venv/bin/python benchmarks/bench_careamics.py --steps 60 --no-append

CAREamics venv (careamics 0.3.5 pins ``torch<2.14``, ``torchvision<=0.26``; the torchvision
wheels are CUDA builds, so torch must be the matching CUDA build too -- it runs on CPU when
no GPU is present; the local ``torch-2.13.0+cpu`` wheel in ``/opt/wheels`` must be avoided)::

    python3.11 -m venv /tmp/care2/venv
    /tmp/care2/venv/bin/pip install torch==2.10.0 torchvision==0.25.0 \
        /tmp/care/careamics-0.3.5-py3-none-any.whl
    # torch 2.10.0+cu128 + torchvision 0.25.0+cu128 from the index (~5 GB with the nvidia-*
    # wheels; what pip resolved for the wheel alone in the venv used here); check:
    /tmp/care2/venv/bin/python -c "import careamics, torchvision; from careamics import CAREamist"
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
DEFAULT_STORE = "/tmp/fresh7/demo-output/store.zarr"
DEFAULT_FRAME = "00001003_01"
TILE, OVERLAP = 256, 48
MASKED_PERCENT = 0.5  # = pausdenoise DEFAULT_MASKED_FRACTION 0.005
LR = 4e-4


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
                     normalisation: str = "default") -> None:
    """Runs in the CAREamics venv: train, time predictions, save the frame's prediction."""
    import careamics
    import numpy as np
    import torch
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config
    from lightning.pytorch.callbacks import Callback

    d = np.load(data)
    image = d["image"].astype(np.float32)
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
                                     "input_stds": [float(d["sigma"])]}}
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
    res = {
        "careamics": careamics.__version__, "torch": torch.__version__,
        "config": {"epochs": epochs, "global_steps": int(care.trainer.global_step),
                   "model": cfg.algorithm_config.model.model_dump(),
                   "n2v": cfg.algorithm_config.n2v_config.model_dump()
                   if hasattr(cfg.algorithm_config, "n2v_config") else None},
        "train": {"threads": train_threads, "patches": timer.total, "wall_s": wall,
                  "steady_patches_per_s": sum(n for n, _ in steady) / sum(s for _, s in steady),
                  "end_to_end_patches_per_s": timer.total / wall},
        "predict": [],
    }
    print(f"careamics: trained {res['config']['global_steps']} steps, {timer.total} patches "
          f"in {wall:.1f} s", flush=True)

    pred, _ = care.predict(image, tile_size=(TILE, TILE), tile_overlap=(OVERLAP, OVERLAP),
                           axes="YX")
    np.save(out.with_suffix(".npy"), np.asarray(pred[0], dtype=np.float32).reshape(image.shape))

    for t in threads:
        torch.set_num_threads(t)
        for mode, kw in (("tiled 256/48", {"tile_size": (TILE, TILE),
                                            "tile_overlap": (OVERLAP, OVERLAP)}),
                         ("whole image", {"tile_size": None, "tile_overlap": None})):
            best = math.inf
            for _ in range(repeat):
                t0 = time.perf_counter()
                care.predict(big, axes="YX", **kw)
                best = min(best, time.perf_counter() - t0)
            res["predict"].append({"threads": t, "mode": mode, "seconds": best,
                                   "mpix_per_s": big.size / best / 1e6})
            print(f"careamics predict {mode}, {t} thread(s): {big.size / best / 1e6:.3f} "
                  f"Mpix/s", flush=True)
    out.write_text(json.dumps(res, indent=1, default=str))


# --------------------------------------------------------------------------- our side


def ours(image, mask, steps: int, batch: int, patch: int, train_threads: int,
         threads: list[int], repeat: int) -> tuple[dict, Any]:
    import numpy as np
    import torch

    from pausdenoise.denoise import predict_block
    from pausdenoise.n2v.normalise import denormalise, frame_statistics, normalise
    from pausdenoise.n2v.patches import Frame
    from pausdenoise.n2v.train import TrainConfig, UNetSettings, train_n2v
    from pausdenoise.n2v.unet import predict_array

    stats = frame_statistics(image, mask)
    frame = Frame(image, mask, stats, "bench")
    per_epoch = max(k for k in range(1, min(steps, 60) + 1) if steps % k == 0)
    cfg = TrainConfig(
        unet=UNetSettings(depth=2, base_channels=32), patch_size=patch, batch_size=batch,
        epochs=math.ceil(steps / per_epoch), steps_per_epoch=per_epoch, device="cpu",
        num_threads=train_threads, validation_patches=8, early_stopping_patience=None,
        learning_rate=LR, seed=0,
    )
    t0 = time.perf_counter()
    model, hist = train_n2v([frame], cfg, progress=False)
    wall = time.perf_counter() - t0
    pps = hist.patches_per_second[1:] or hist.patches_per_second
    n_patches = cfg.epochs * cfg.steps_per_epoch * batch
    res = {"torch": torch.__version__,
           "config": {"epochs": cfg.epochs, "steps": cfg.epochs * cfg.steps_per_epoch,
                      "masked_fraction": cfg.masked_fraction,
                      "radius": cfg.neighbourhood_radius, "unet": cfg.unet.model_dump()},
           "train": {"threads": train_threads, "patches": n_patches, "wall_s": wall,
                     "steady_patches_per_s": float(np.mean(pps)),
                     "end_to_end_patches_per_s": n_patches / wall},
           "predict": []}
    print(f"ours: trained {cfg.epochs * cfg.steps_per_epoch} steps in {wall:.1f} s", flush=True)
    model = model.cpu().eval()
    halo = model.halo()

    def run_whole(img, msk):
        x = torch.from_numpy(normalise(img, stats, msk))[None, None]
        return denormalise(predict_array(model, x)[0, 0].numpy(), stats)

    def run_tiled(img, msk):
        return denormalise(predict_block(model, normalise(img, stats, msk), halo=halo,
                                         tile_size=TILE, batch_size=4), stats)

    torch.set_num_threads(train_threads)
    den = run_whole(image, mask)
    big, bigm = np.tile(image, (4, 4)), np.tile(mask, (4, 4))
    for t in threads:
        torch.set_num_threads(t)
        for mode, fn in (("predict_array whole", run_whole),
                         (f"predict_block tiles {TILE}, halo {halo}", run_tiled)):
            best = math.inf
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn(big, bigm)
                best = min(best, time.perf_counter() - t0)
            res["predict"].append({"threads": t, "mode": mode, "seconds": best,
                                   "mpix_per_s": big.size / best / 1e6})
            print(f"ours predict {mode}, {t} thread(s): {big.size / best / 1e6:.3f} Mpix/s",
                  flush=True)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", choices=["careamics"], help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--frame", default=DEFAULT_FRAME)
    p.add_argument("--care-python", default="/tmp/care2/venv/bin/python")
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
                         a.threads, a.repeat, a.work, a.care_normalisation)
        return 0

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
    load0 = os.getloadavg()

    cmd = [a.care_python, str(Path(__file__).resolve()), "--worker", "careamics",
           "--data", str(tmp / "data.npz"), "--out", str(tmp / "care.json"),
           "--work", str(tmp / "care_work"), "--steps", str(a.steps), "--batch", str(a.batch),
           "--patch", str(a.patch), "--train-threads", str(a.train_threads),
           "--repeat", str(a.repeat), "--care-normalisation", a.care_normalisation,
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
                        a.repeat)
    load1 = os.getloadavg()

    rms_raw, n_sky = sky_rms(image, truth, mask)
    rms_care, _ = sky_rms(care_den, truth, mask)
    rms_ours, _ = sky_rms(my_den, truth, mask)

    lines = []
    ct, ot = care["train"], mine["train"]
    lines.append("| measure | CAREamics | pausdenoise | ours ÷ CAREamics |")
    lines.append("|---|---:|---:|---:|")
    for key, label in (("steady_patches_per_s", "train patches/s, steady state"),
                       ("end_to_end_patches_per_s", "train patches/s, end to end")):
        lines.append(f"| {label} ({a.train_threads} threads) | {ct[key]:.1f} | {ot[key]:.1f} "
                     f"| {ot[key] / ct[key]:.2f} |")
    lines.append(f"| train wall (s) | {ct['wall_s']:.1f} | {ot['wall_s']:.1f} | "
                 f"{ot['wall_s'] / ct['wall_s']:.2f} |")
    cp = {(r["threads"], r["mode"]): r["mpix_per_s"] for r in care["predict"]}
    for r in mine["predict"]:
        ref_mode = "whole image" if "whole" in r["mode"] else "tiled 256/48"
        c = cp[(r["threads"], ref_mode)]
        lines.append(f"| predict 2048², {r['threads']} thr: ours {r['mode']} vs CAREamics "
                     f"{ref_mode} (Mpix/s) | {c:.3f} | {r['mpix_per_s']:.3f} | "
                     f"{r['mpix_per_s'] / c:.2f} |")
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
        text = f"""

## CAREamics side-by-side ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)

Machine: {platform.node()}, {cpu}, {os.cpu_count()} CPUs, no GPU. Load average
{load0[0]:.2f} before, {load1[0]:.2f} after (1 min). CAREamics {care['careamics']} on
torch {care['torch']} (its own venv, CUDA build running on CPU); pausdenoise on torch
{mine['torch']}.

Command: `.venv/bin/python benchmarks/bench_careamics.py --steps {a.steps} --batch {a.batch}
--patch {a.patch} --train-threads {a.train_threads} --threads {' '.join(map(str, a.threads))}
--repeat {a.repeat} --care-normalisation {a.care_normalisation}`
(CAREamics side: `{a.care_python}` subprocess, {care_secs:.0f} s).

Image: `{a.store}` frame `{a.frame}` (512×512 ADU, its mask and truth); 2048² prediction
image = that frame tiled 4×4. Network: U-Net depth 2, 32 channels, batch norm, plain N2V,
0.5 % blind spots from a radius-5 neighbourhood, Adam lr 4e-4, {a.batch} patches of
{a.patch}² per step. Budget: ours {mine['config']['steps']} steps; CAREamics
{cc['epochs']} epochs = {cc['global_steps']} steps, {ct['patches']} patches (its epoch is
the array's patches minus 8 validation patches; validation + checkpoint after every epoch,
which is in its end-to-end figure and not in its steady-state one).

{table}

Mismatches: CAREamics normalises by the mean/std of the whole image (stars included) and
does not know the bad-pixel mask; ours uses the sigma-clipped sky/MAD and sets bad pixels to
the sky. CAREamics' prediction goes through a Lightning trainer (and reloads the last
checkpoint) per call, and its batch size is the training batch ({a.batch}); ours
`predict_block` batches 4 tiles. Torch versions differ (see above). Steady-state training
rates count sampling, masking, forward, backward and the optimiser step, without validation.
"""
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(text)
        print(f"appended to {ROOT / 'benchmarks' / 'RESULTS.md'}")
    print(json.dumps({"careamics": care, "ours": mine,
                      "rms": {"raw": rms_raw, "careamics": rms_care, "ours": rms_ours,
                              "n_sky": n_sky}}, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
