"""The catalogue restoration's settings scanned on finished runs, without rerunning them.

``denoise.restore_catalogue`` (:mod:`pausdenoise.denoise.restore`) gives the catalogue's
sources back, inside their apertures, the low-pass part of what the network removed. This
benchmark applies it after the fact to the stored network output of pipeline runs on a
simulation (run without restoration), for several low-pass widths σ and one aperture
growth, and scores on the held-out exposures the sky and source-aperture RMS against the
truth and the median flux bias against the truth per I_auto bin with 95 % intervals
(aperture sums above the known sky, so that the annulus background does not enter)::

    python benchmarks/bench_catalogue_restore.py bench-output/RUN [...] [--sigma 0,1,2] \
        [--grow 2] [--results]

Pixels are 0-based (the catalogue's ``aperture_x/y``); aperture semi-axes are the
catalogue's arcsec divided by ``photometry.pixel_scale``; position angles follow the PAUS
sign convention, as in the evaluate stage.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from bench_faint_spill import publish

from pausdenoise import evaluate as ev
from pausdenoise import store as st
from pausdenoise.denoise.restore import aperture_weight, geometry_from_catalogue, restore_block
from pausdenoise.photometry.apertures import aperture_sums
from pausdenoise.stats import mad_sigma

BINS = (17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0)
"""I_auto bin edges, AB mag."""


def aperture_fluxes(image: np.ndarray, geometry: pd.DataFrame, sky: float) -> np.ndarray:
    """Exact-overlap elliptical aperture sums above a known flat sky (ADU), no mask."""
    g = geometry
    return np.asarray(aperture_sums(image.astype(np.float64) - sky, g["x"].to_numpy(),
                                    g["y"].to_numpy(), g["a"].to_numpy(), g["b"].to_numpy(),
                                    g["theta"].to_numpy())["aper_sum"], dtype=np.float64)


def score_frame(raw: np.ndarray, denoised: np.ndarray, truth: np.ndarray, good: np.ndarray,
                rows: pd.DataFrame, pixel_scale: float, rhos: list[float], grow: float,
                sky_tolerance: float = 0.05) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pixel RMS and per-source fluxes of raw, denoised and restored images of one exposure.

    Parameters
    ----------
    raw, denoised, truth : ndarray (ny, nx)
        ADU; ``truth`` noiseless, sky included.
    good : ndarray of bool
        Unmasked pixels (the others give and receive nothing).
    rows : pandas.DataFrame
        The exposure's catalogue rows (see :func:`geometry_from_catalogue`) with ``I_auto``.
    pixel_scale : float
        arcsec per px.
    rhos : list of float
        Low-pass widths σ to restore with, px.
    grow : float
        Aperture growth of the restoration mask, px.
    sky_tolerance : float, optional
        Sky pixels: ``|truth − sky| < sky_tolerance · σ`` (as the evaluate stage).

    Returns
    -------
    pixels : pandas.DataFrame
        ``estimate``, ``pixel_class`` (sky, source), ``n``, ``sse`` (sum of squared errors).
    fluxes : pandas.DataFrame
        ``I_auto``, ``flux_true`` and one flux column per estimate.
    """
    sky = float(np.median(truth[good]))
    sigma = float(mad_sigma((raw - truth)[good]))
    g = geometry_from_catalogue(rows, axis_scale=1.0 / pixel_scale)
    classes = {"sky": ev.sky_pixel_mask(truth, sky, sigma, good, sky_tolerance),
               "source": ev.aperture_pixel_mask(raw.shape, g["x"].to_numpy(),
                                                g["y"].to_numpy(), g["a"].to_numpy(),
                                                g["b"].to_numpy(), g["theta"].to_numpy())
               & good}
    weight = aperture_weight((0, raw.shape[0], 0, raw.shape[1]), g, grow)
    estimates = {"raw": raw, "denoised": denoised}
    for rho in rhos:
        estimates[f"restored σ={rho:g}"] = restore_block(denoised, raw, ~good, weight, rho)
    pix, flux = [], {"I_auto": rows["I_auto"].to_numpy(),
                     "flux_true": aperture_fluxes(truth, g, sky)}
    for name, img in estimates.items():
        err = img.astype(np.float64) - truth
        for cls, sel in classes.items():
            pix.append({"estimate": name, "pixel_class": cls, "n": int(sel.sum()),
                        "sse": float(np.sum(err[sel] ** 2))})
        flux[name] = aperture_fluxes(img, g, sky)
    return pd.DataFrame(pix), pd.DataFrame(flux)


def median_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Median and its distribution-free interval (binomial order statistics)."""
    v = np.sort(values[np.isfinite(values)])
    n = v.size
    if n == 0:
        return math.nan, math.nan, math.nan
    half = 0.5 * 1.959964 * math.sqrt(n) if level == 0.95 else 0.5 * math.sqrt(n)
    lo, hi = int(max(math.floor(n / 2 - half), 0)), int(min(math.ceil(n / 2 + half), n - 1))
    return float(np.median(v)), float(v[lo]), float(v[hi])


def summarise(pixels: pd.DataFrame, fluxes: pd.DataFrame,
              bins: tuple[float, ...] = BINS) -> pd.DataFrame:
    """One row per estimate: sky and source RMS gains over raw, flux bias per bin.

    Returns
    -------
    pandas.DataFrame
        ``estimate``, ``sky_gain``, ``source_gain`` and, per bin ``lo-hi``, ``bias[lo-hi]``,
        ``lo[lo-hi]``, ``hi[lo-hi]`` (median of (F − F_true)/F_true and its 95 % interval).
    """
    agg = pixels.groupby(["estimate", "pixel_class"], sort=False)[["n", "sse"]].sum()
    rms = np.sqrt(agg["sse"] / agg["n"])
    rows = []
    for name in pixels["estimate"].unique():
        row = {"estimate": name,
               "sky_gain": float(rms[("raw", "sky")] / rms[(name, "sky")]),
               "source_gain": float(rms[("raw", "source")] / rms[(name, "source")])}
        rel = (fluxes[name] - fluxes["flux_true"]) / fluxes["flux_true"]
        for lo, hi in itertools.pairwise(bins):
            sel = (fluxes["I_auto"] >= lo) & (fluxes["I_auto"] < hi) & (fluxes["flux_true"] > 0)
            key = f"{lo:g}-{hi:g}"
            row[f"bias[{key}]"], row[f"lo[{key}]"], row[f"hi[{key}]"] = median_interval(
                rel[sel].to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- run directories


def held_out_frames(run: Path) -> list[str]:
    """Frames the run's evaluate stage scored against the truth (its held-out exposures)."""
    pm = pd.read_csv(run / "evaluate" / "pixel_metrics.csv")
    return sorted(pm.loc[pm["reference"] == "truth", "frame"].unique())


def score_run(run: Path, rhos: list[float], grow: float) -> pd.DataFrame:
    """:func:`summarise` over the held-out exposures of one ``pausdenoise run`` directory."""
    cfg = json.loads((run / "run.json").read_text())["config"]
    pixel_scale = float(cfg["photometry"]["pixel_scale"])
    catalogue = pd.read_parquet(run / "survey" / "catalogue.parquet")
    store = run / "store.zarr"
    pixels, fluxes = [], []
    for frame in held_out_frames(run):
        attrs = st.frame_attrs(store, frame)
        arrays = {name: st.open_frame(store, frame, name).compute()
                  for name in ("image", "denoised", "truth", "mask")}
        rows = catalogue[(catalogue["expnum"] == attrs["expnum"])
                         & (catalogue["ccd"] == attrs["ccd"])]
        p, f = score_frame(arrays["image"], arrays["denoised"], arrays["truth"],
                           arrays["mask"] == 0, rows, pixel_scale, rhos, grow)
        pixels.append(p)
        fluxes.append(f)
    return summarise(pd.concat(pixels), pd.concat(fluxes, ignore_index=True))


def markdown(results: dict[str, pd.DataFrame], faint: tuple[str, ...]) -> str:
    """One table: per run and estimate, the gains and the faint bins' bias with intervals."""
    head = ("| run | image | sky gain | source gain | "
            + " | ".join(f"I {b}" for b in faint) + " |")
    lines = [head, "|---|---|---|---|" + "---|" * len(faint)]
    for run, table in results.items():
        for r in table.to_dict("records"):
            cells = [f"{100 * r[f'bias[{b}]']:+.1f} [{100 * r[f'lo[{b}]']:+.0f}, "
                     f"{100 * r[f'hi[{b}]']:+.0f}] %" for b in faint]
            lines.append(f"| {run} | {r['estimate']} | ÷{r['sky_gain']:.1f} | "
                         f"÷{r['source_gain']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="pausdenoise run output directories")
    ap.add_argument("--sigma", default="0,1,2", help="low-pass widths σ to restore with, px")
    ap.add_argument("--grow", type=float, default=2.0, help="aperture growth of the mask, px")
    ap.add_argument("--faint", default="19-20,20-21,21-22,22-23", help="bins to tabulate")
    ap.add_argument("--results", action="store_true",
                    help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    rhos = [float(v) for v in args.sigma.split(",")]
    results = {run.name: score_run(run, rhos, args.grow) for run in args.runs}
    command = (f"python benchmarks/bench_catalogue_restore.py "
               f"{' '.join(str(r) for r in args.runs)} --sigma {args.sigma} --grow {args.grow:g}")
    publish("Catalogue sources given back their smoothed flux", command,
            markdown(results, tuple(args.faint.split(","))), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
