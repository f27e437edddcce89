"""Time of the profile photometry of one real frame of a run, and its neighbours' light.

The neighbours' light (:func:`pausdenoise.photometry.apcor.neighbour_light`) sums, for every
aperture, the light the catalogue's other sources put into it; on a crowded field with large
apertures it is most of a frame's photometry. This script measures one frame of a finished
run as the photometry stage does (:func:`pausdenoise.photometry.driver.measure_store_frame`,
the run's photometry settings, the raw image), with the apertures the run measured scaled
by each ``--aperture-scale`` (2 = Kron apertures twice as large, reaching about four times
as many neighbours). The apertures are read back from the run's raw photometry of the frame
(centres, semi-axes in px, angles), so no catalogue placement is repeated.

Prints, per scale: the frame's sources, its photometry time (best of ``--repeat``), the
part of it spent in the neighbours' light, and the mean number of other sources whose
profile stamp reaches an aperture. Run it against two checkouts one after the other to
compare them.

Usage::

    python benchmarks/bench_neighbour_light.py --run RUN [--frame 00000005_01] \\
        [--aperture-scale 1 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import pandas as pd


def frame_apertures(run: Path, frame: str, scale: float) -> pd.DataFrame:
    """Rebuild the frame's catalogue rows from its raw photometry, semi-axes × ``scale``.

    Returns
    -------
    pandas.DataFrame
        ``aperture_x/y`` (0-based px), ``aperture_a/b`` (px), ``aperture_theta`` (degrees,
        the PAUS sign: the photometry's photutils radians negated), ``ref_id``, ``I_auto``.
    """
    paths = sorted(run.glob(f"photometry/band=*/kind=raw/{frame}.parquet"))
    if not paths:
        raise SystemExit(f"{run}: no raw photometry of frame {frame}")
    d = pd.read_parquet(paths[0])
    return pd.DataFrame({
        "ref_id": d["ref_id"], "I_auto": d["I_auto"], "aperture_x": d["x"],
        "aperture_y": d["y"], "aperture_a": d["a"] * scale, "aperture_b": d["b"] * scale,
        "aperture_theta": -np.degrees(d["theta"]),
    })


def main(argv: list[str] | None = None) -> None:
    """Time one frame's photometry at each aperture scale.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``sys.argv[1:]`` when None).

    Returns
    -------
    None
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a run directory")
    p.add_argument("--frame", default=None, help="frame id (default: the first measured)")
    p.add_argument("--aperture-scale", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)

    from pausdenoise.photometry import apcor, measure
    from pausdenoise.photometry.config import PhotometryConfig
    from pausdenoise.photometry.driver import measure_store_frame

    cfg = json.loads((args.run / "run.json").read_text())["config"]["photometry"]
    config = PhotometryConfig(**cfg).model_copy(update={"aperture_units": "pixel",
                                                        "profile": True})
    frame = args.frame or sorted(args.run.glob("photometry/band=*/kind=raw/*.parquet"))[0].stem
    spent: list[float] = []
    last: dict[str, tuple] = {}

    def timed(geometry, components, fluxes, flux_errs, radii, cfg):
        t0 = time.perf_counter()
        out = apcor.neighbour_light(geometry, components, fluxes, flux_errs, radii, cfg)
        spent.append(time.perf_counter() - t0)
        last["call"] = (geometry, radii)
        return out

    def reached() -> float:
        """Mean number of other sources whose stamp reaches a usable aperture (last call)."""
        (x, y, a, b, theta), radii = last["call"]
        hx, hy, *_, ok = apcor._boxes(x, y, a, b, theta)
        pairs = apcor._reach_pairs((x, y, hx, hy), ok, np.isfinite(x) & np.isfinite(y),
                                   np.asarray(radii, dtype=np.float64))
        return float(np.bincount(pairs[:, 0], minlength=len(x))[ok].mean())

    measure.neighbour_light = timed  # the photometry's own call, timed
    print(f"# neighbours' light benchmark: run {args.run.name}, frame {frame}, raw image")
    print(f"# {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs; one process, best of {args.repeat}")
    print(f"{'scale':>6s} {'sources':>8s} {'frame s':>8s} {'neighbours s':>13s} "
          f"{'reached':>8s}")
    for scale in args.aperture_scale:
        apertures = frame_apertures(args.run, frame, scale)
        best, best_nl = np.inf, np.inf
        for _ in range(args.repeat):
            spent.clear()
            t0 = time.perf_counter()
            measure_store_frame(args.run / "store.zarr", frame, apertures, config, "raw")
            wall = time.perf_counter() - t0
            if wall < best:
                best, best_nl = wall, sum(spent)
        print(f"{scale:6.2f} {len(apertures):8d} {best:8.2f} {best_nl:13.2f} "
              f"{reached():8.1f}")
    print(f"# load average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
