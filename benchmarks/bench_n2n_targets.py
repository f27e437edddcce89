"""Noise2Noise targets against the simulation's truth: how much of the frame's light they keep.

``train.method: n2n`` stores each training frame's target, the mean of its matched other
exposures, as the array ``n2n_target`` beside the frame (:mod:`pausdenoise.pipeline.
n2n_targets`). On a simulated store the frame's truth is there too, so the target can be
judged directly: a target smoother or fainter than the frame's truth teaches the network to
blur and to lose flux, whatever the training does. For each training frame that has a target
this benchmark reports, against the truth with the simulation's sky level subtracted
(``skylevel``, ADU):

* the ratio Σ target / Σ truth over the pixels whose truth lies 3–30, 30–300 and > 300 σ
  above the sky (σ the frame's robust noise, :func:`pausdenoise.n2v.normalise.
  frame_statistics`): faint light, the shoulders of bright sources, their cores;
* the target's RMS about the truth on sky pixels (|truth| < 0.3 σ), in units of σ: the noise
  the target carries.

Usage (project venv), after pipeline runs with ``train.method: n2n`` on the simulation, e.g.
the two reference models side by side::

    python benchmarks/bench_n2n_targets.py bench-output/demo-n2n-free bench-output/demo-n2n-psf2

``--append`` adds a dated section to ``benchmarks/RESULTS.md``. Time: seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_training_budget as tb

from pausdenoise import store as st
from pausdenoise.n2v.normalise import frame_statistics

ROOT = Path(__file__).resolve().parents[1]
#: Truth levels (multiples of the frame's σ above the sky) of the pixel classes.
LEVELS = ((3.0, 30.0), (30.0, 300.0), (300.0, np.inf))


def target_light(image: np.ndarray, mask: np.ndarray, target: np.ndarray, truth: np.ndarray,
                 sky_true: float) -> dict[str, float]:
    """Compare one frame's Noise2Noise target with its truth.

    Parameters
    ----------
    image : ndarray (ny, nx)
        The frame's raw pixels, ADU (its sky, as the pipeline estimates it, is what the
        stored target carries).
    mask : ndarray (ny, nx)
        Non-zero marks a bad pixel.
    target : ndarray (ny, nx)
        The stored ``n2n_target`` (ADU, sky included, NaN where undefined).
    truth : ndarray (ny, nx)
        The noiseless frame, ADU, sky included.
    sky_true : float
        The simulation's sky level, ADU.

    Returns
    -------
    dict
        ``light_<lo>`` (Σ target / Σ truth, sky-subtracted, over the class of truth between
        ``lo`` and the next level × σ), ``sky_rms_sigma`` (target − truth on sky pixels, in σ)
        and ``sigma_adu``.
    """
    stats = frame_statistics(image, mask)
    t = np.asarray(target, np.float64) - stats.sky
    tru = np.asarray(truth, np.float64) - sky_true
    ok = np.isfinite(t) & (np.asarray(mask) == 0)
    out: dict[str, float] = {"sigma_adu": float(stats.sigma)}
    for lo, hi in LEVELS:
        sel = ok & (tru > lo * stats.sigma) & (tru < hi * stats.sigma)
        den = float(tru[sel].sum())
        out[f"light_{lo:g}"] = float(t[sel].sum()) / den if sel.any() and den > 0 else np.nan
    sky = ok & (np.abs(tru) < 0.3 * stats.sigma)
    out["sky_rms_sigma"] = float(np.sqrt(np.mean((t - tru)[sky] ** 2)) / stats.sigma) \
        if sky.any() else np.nan
    return out


def run_rows(run: Path) -> list[dict[str, Any]]:
    """Judge every stored target of one pipeline run.

    Parameters
    ----------
    run : Path
        The run directory (its ``store.zarr`` simulated, trained with ``train.method: n2n``).

    Returns
    -------
    list of dict
        One row per training frame with a target: ``frame``, ``seeing`` (arcsec),
        ``n_references`` and :func:`target_light`'s keys.
    """
    store = run / "store.zarr"
    summary = json.loads((run / "run.json").read_text())["stages"]["train"]["summary"]
    rows = []
    for f in summary["train_frames"]:
        arrays = st.frame_arrays(store, f)
        if "n2n_target" not in arrays or "truth" not in arrays:
            continue
        attrs = st.frame_attrs(store, f)
        target = st.open_store(store, "r")[f"{st.FRAMES_GROUP}/{f}/n2n_target"]
        rows.append({"frame": f, "seeing": float(attrs.get("seeing", np.nan)),
                     "n_references": len(target.attrs.get("n2n_references", [])),
                     **target_light(np.asarray(st.open_frame(store, f, "image")),
                                    np.asarray(st.open_frame(store, f, "mask")),
                                    np.asarray(target), np.asarray(st.open_frame(store, f,
                                                                                 "truth")),
                                    float(attrs["skylevel"]))})
    return rows


def render(results: dict[str, list[dict[str, Any]]]) -> str:
    """Format the rows of each run as a markdown table, then a median row per run.

    Parameters
    ----------
    results : dict of str to list of dict
        Run name → :func:`run_rows`.

    Returns
    -------
    str
    """
    lines = ["| run | frame | seeing (arcsec) | references | light 3–30 σ | light 30–300 σ "
             "| light > 300 σ | sky RMS (σ) |", "|---|---|---|---|---|---|---|---|"]
    keys = [f"light_{lo:g}" for lo, _ in LEVELS] + ["sky_rms_sigma"]
    for name, rows in results.items():
        for r in rows:
            lines.append(f"| {name} | {r['frame']} | {r['seeing']:.2f} | {r['n_references']} | "
                         + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
        if rows:
            med = [float(np.nanmedian([r[k] for r in rows])) for k in keys]
            lines.append(f"| {name} | median of {len(rows)} | | | "
                         + " | ".join(f"**{m:.3f}**" for m in med) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Judge the targets of the runs given; print (and optionally append) the table.

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
    p.add_argument("runs", nargs="+", type=Path, help="pipeline run directories")
    p.add_argument("--append", action="store_true")
    a = p.parse_args(argv)
    table = render({r.name: run_rows(r) for r in a.runs})
    print(table)
    if a.append:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "python benchmarks/bench_n2n_targets.py " + " ".join(argv or sys.argv[1:])
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Noise2Noise targets from the PSF models ({now})\n\n"
                     f"Machine: {platform.machine()}, {tb._cpu_name()}\n\n"
                     f"```\n{cmd}\n```\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
