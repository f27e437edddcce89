"""CAREamics' N2V at fixed wall-clock budgets: the worker of ``bench_training_budget.py``.

Runs in CAREamics' own virtual environment (``make careamics``), started by
``bench_training_budget.py --careamics`` as::

    .venv-careamics/bin/python benchmarks/bench_training_budget_careamics.py \
        --data frames.npz --out DIR --budgets 60,180 --threads 2

``frames.npz`` holds ``train`` (S, ny, nx) and ``eval`` (E, ny, nx), float32, both already
normalised by the caller ((image − sky) / σ per frame, bad pixels at 0). One training run
(U-Net depth 2, 32 channels, ``--batch`` patches of ``--patch`` px, Adam at ``--lr``, N2V
masking of ``--masked-percent`` % of the pixels from an 11 px neighbourhood) goes on until
the largest budget (wall seconds since the ``train`` call); a checkpoint is saved after the
first training batch past each budget. Each checkpoint then predicts every ``eval`` frame
(whole image); the predictions go to ``DIR/pred_<i>.npy`` (E, ny, nx) and the timings (with
the whole-frame ``CAREamist.predict`` rate of the last snapshot) to ``DIR/careamics.json``.
Only the standard library and NumPy are imported at module level.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def _as_image(res: Any, shape: tuple[int, ...]) -> np.ndarray:
    """CAREamics' prediction (array, list or tuple of them) as one float32 image."""
    while isinstance(res, (tuple, list)):
        res = res[0]
    return np.asarray(res, dtype=np.float32).reshape(shape)


def _config(args: argparse.Namespace) -> Any:
    from careamics.config import create_advanced_n2v_config  # CAREamics' venv only

    return create_advanced_n2v_config(
        experiment_name="budget", data_type="array", axes="SYX",
        patch_size=[args.patch, args.patch], batch_size=args.batch, num_epochs=1_000_000,
        n_val_patches=8, num_workers=0, masked_pixel_percentage=args.masked_percent,
        roi_size=11, model_params={"depth": 2, "num_channels_init": 32,
                                   "use_batch_norm": args.batch_norm},
        optimizer="Adam", optimizer_params={"lr": args.lr}, seed=args.seed,
    )


def _snapshot_callback(budgets: list[float], work: Path, batch: int) -> Any:
    from lightning.pytorch.callbacks import Callback  # CAREamics' venv only

    class Snapshots(Callback):
        """Save a checkpoint after the first batch past each budget; stop after the last."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.rows: list[dict[str, Any]] = []
            self.patches = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx) -> None:
            self.patches += batch
            t = time.perf_counter() - self.t0
            while len(self.rows) < len(budgets) and t >= budgets[len(self.rows)]:
                path = work / f"budget_{len(self.rows)}.ckpt"
                trainer.save_checkpoint(path)
                self.rows.append({"budget_s": budgets[len(self.rows)], "seconds": t,
                                  "steps": int(trainer.global_step), "patches": self.patches,
                                  "checkpoint": str(path)})
            if len(self.rows) == len(budgets):
                trainer.should_stop = True

    return Snapshots()


def main(argv: list[str] | None = None) -> int:
    """Train, snapshot at the budgets, predict with every snapshot.

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
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budgets", required=True, help="seconds, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--masked-percent", type=float, default=0.5)
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    import careamics  # CAREamics' venv only
    import torch  # CAREamics' own torch
    from careamics import CAREamist  # CAREamics' venv only

    torch.set_num_threads(args.threads)
    budgets = sorted(float(b) for b in args.budgets.split(","))
    d = np.load(args.data)
    train, evals = d["train"], d["eval"]
    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    snaps = _snapshot_callback(budgets, work, args.batch)
    care = CAREamist(_config(args), work_dir=work, callbacks=[snaps], enable_progress_bar=False)
    snaps.t0 = time.perf_counter()
    care.train(train_data=train)
    wall = time.perf_counter() - snaps.t0
    for i, row in enumerate(snaps.rows):
        model = CAREamist(checkpoint_path=row["checkpoint"], work_dir=work,
                          enable_progress_bar=False)
        pred = [_as_image(model.predict(e, axes="YX"), e.shape) for e in evals]
        np.save(args.out / f"pred_{i}.npy", np.stack(pred))
    rate = float("nan")
    if snaps.rows:  # whole-frame prediction rate of the last snapshot, best of 3
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            model.predict(evals[0], axes="YX")
            best = min(best, time.perf_counter() - t0)
        rate = evals[0].size / best / 1e6
    res = {"careamics": careamics.__version__, "torch": torch.__version__, "wall_s": wall,
           "patches": snaps.patches, "patches_per_second": snaps.patches / wall,
           "inference_mpix_s": rate, "snapshots": snaps.rows}
    (args.out / "careamics.json").write_text(json.dumps(res, indent=1))
    print(f"careamics: {snaps.patches} patches in {wall:.1f} s, {len(snaps.rows)} snapshot(s)",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
