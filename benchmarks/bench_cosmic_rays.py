"""Cosmic-ray detection at ingest against the simulated survey's hits and on real frames.

1. **Simulated survey** (``configs/demo.yaml``: 24 frames of 512² px, with truth): the
   simulation masks its hits ``COSMIC_RAY``; the benchmark takes that bit off the mask,
   searches each frame (:func:`pausdenoise.ingest.cosmic_rays.detect_cosmic_rays`, the
   frame's gain, read noise and seeing) and compares: hits and hit pixels found, false
   pixels (more than 2 px from any hit) in all and on sources (truth above the sky by more
   than 20 σ of the sky noise).
2. **Real SAAO exposures** (no mask, no truth): each exposure is searched and compared with
   the median of ``--others`` other exposures registered onto it by whole-pixel offsets.
   A hit that is real stands far above that median (the other exposures do not have it),
   so the share of hits whose peak is more than 8 σ above it measures purity; on the sky
   (7 × 7 px clear of sources in that median) the groups of pixels more than 15 σ above it
   and above the frame's own sky are the bright hits there, and the share found measures
   completeness.
3. **Time** per frame of each data set, and of a 4096 × 2048 px frame of noise (a PAUCam
   CCD's size).

Run from the project root::

    python benchmarks/bench_cosmic_rays.py --out bench-output/cosmic-rays

It prints a Markdown section for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage

from pausdenoise import store as st
from pausdenoise.config import load_config
from pausdenoise.evaluate import reference_on_grid
from pausdenoise.ingest.config import CosmicRayConfig
from pausdenoise.ingest.cosmic_rays import detect_cosmic_rays
from pausdenoise.maskbits import MaskBit
from pausdenoise.psf import frame_psf
from pausdenoise.register import measure_offset, shift_wcs

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_training_budget import _cpu_name, _ensure_store  # noqa: E402 (benchmark folder)

ROOT = HERE.parent
_EIGHT = np.ones((3, 3), dtype=bool)


def registered_median(reference: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """The median of other exposures moved onto ``reference``'s grid by whole pixels.

    Each is registered (:func:`~pausdenoise.register.measure_offset`) and brought to the
    grid as the evaluate stage brings its references
    (:func:`~pausdenoise.evaluate.reference_on_grid` with a whole-pixel
    :func:`~pausdenoise.register.shift_wcs`: an exact copy, its sky subtracted).

    Parameters
    ----------
    reference : ndarray (ny, nx)
        The exposure searched, ADU.
    others : list of ndarray
        Other exposures of the same field and shape, ADU.

    Returns
    -------
    ndarray of float64
        Their median per pixel (NaN where none covers it), shifted to ``reference``'s sky
        level (the median of the difference of the two).
    """
    moved = []
    for img in others:
        off = measure_offset(reference, img)  # a star at (x, y) is at (x + dx, y + dy) there
        values, _ = reference_on_grid(img, None, None, shift_wcs(off.dx, off.dy,
                                                                 round_to_pixel=True),
                                      None, shift_wcs(), reference.shape, None, "shift")
        moved.append(values)
    with warnings.catch_warnings():  # pixels no other exposure covers: NaN, as documented
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(moved, axis=0)
    return med + float(np.nanmedian(reference - med))


def score_real(hits: np.ndarray, reference: np.ndarray, median: np.ndarray, gain: float,
               read_noise_e: float) -> dict[str, float]:
    """Purity and sky completeness of one real exposure's hits against other exposures.

    Parameters
    ----------
    hits : ndarray of bool
        The hits found in ``reference``.
    reference : ndarray
        The exposure, ADU.
    median : ndarray
        :func:`registered_median` of the other exposures, ADU (NaN where uncovered).
    gain, read_noise_e : float
        e⁻/ADU and e⁻: the noise of the difference is that of ``reference``.

    Returns
    -------
    dict
        ``hits``, ``pixels``, ``confirmed`` (share of hits peaking > 8 σ above the median),
        ``sky_outliers`` (groups > 15 σ above it on the sky, and > 15 σ above the
        frame's own sky: a dip in the median is no hit), ``sky_found`` (their share found;
        NaN without any).
    """
    sigma = np.sqrt(np.maximum(np.nan_to_num(median), 0.0) / gain + (read_noise_e / gain) ** 2)
    excess = np.nan_to_num((reference - median) / sigma)
    groups, n = ndimage.label(hits, structure=_EIGHT)
    peaks = np.asarray(ndimage.maximum(excess, groups, np.arange(1, n + 1))) if n else []
    sky = float(np.nanmedian(median))
    sky_sigma = math.sqrt(max(sky, 0.0) / gain + (read_noise_e / gain) ** 2)
    clear = ndimage.maximum_filter(np.nan_to_num(median, nan=np.inf), size=7)
    bright = (excess > 15) & (reference - sky > 15 * sky_sigma)  # above the frame's sky too
    outliers, n_out = ndimage.label(bright & (clear < sky + 5 * sky_sigma), structure=_EIGHT)
    found = set(np.unique(outliers[hits]).tolist()) - {0}
    return {"hits": n, "pixels": int(hits.sum()),
            "confirmed": float(np.mean(np.asarray(peaks) > 8)) if n else math.nan,
            "sky_outliers": n_out, "sky_found": len(found) / n_out if n_out else math.nan}


def score_sim(hits: np.ndarray, true_hits: np.ndarray, on_source: np.ndarray) -> dict[str, int]:
    """Hits found against the simulation's own.

    Parameters
    ----------
    hits, true_hits : ndarray of bool
        Pixels found, and those the simulation hit.
    on_source : ndarray of bool
        Pixels on sources (truth well above the sky).

    Returns
    -------
    dict
        ``true_hits``, ``hits_found`` (true hits with a pixel found), ``true_px``,
        ``px_found``, ``false_px`` (found more than 2 px from any true hit),
        ``false_on_source``.
    """
    groups, n = ndimage.label(true_hits, structure=_EIGHT)
    rim = ndimage.binary_dilation(true_hits, _EIGHT, iterations=2)
    false = hits & ~rim
    return {"true_hits": n, "hits_found": len(set(np.unique(groups[hits]).tolist()) - {0}),
            "true_px": int(true_hits.sum()), "px_found": int((hits & true_hits).sum()),
            "false_px": int(false.sum()), "false_on_source": int((false & on_source).sum())}


def run_sim(out: Path, config: CosmicRayConfig) -> tuple[dict[str, int], list[float]]:
    """Search the simulated survey's frames with their hits unmasked; pooled counts, times."""
    store = _ensure_store("sim", out)
    pixel_scale = load_config(ROOT / "configs" / "demo.yaml").photometry.pixel_scale
    totals: dict[str, int] = {}
    times = []
    for frame in st.list_frames(store):
        attrs = st.frame_attrs(store, frame)
        image = st.open_frame(store, frame).compute().astype(np.float64)
        mask = st.open_frame(store, frame, "mask").compute()
        truth = st.open_frame(store, frame, "truth").compute().astype(np.float64)
        true_hits = (mask & np.uint8(MaskBit.COSMIC_RAY)) != 0
        other = mask & np.uint8(~MaskBit.COSMIC_RAY & 0xFF)
        gain, rn = float(attrs["gain"]), float(attrs["rdnoise"])
        fwhm = frame_psf(attrs, pixel_scale=pixel_scale).fwhm_px
        t0 = time.perf_counter()
        found = detect_cosmic_rays(image, other, gain, rn, config, fwhm)
        times.append(time.perf_counter() - t0)
        sky = float(np.median(truth))
        on_source = truth - sky > 20 * math.sqrt(sky / gain + (rn / gain) ** 2)
        for k, v in score_sim(found.hits, true_hits & (other == 0), on_source).items():
            totals[k] = totals.get(k, 0) + v
    totals["frames"] = len(times)
    return totals, times


def run_saao(n_others: int, config: CosmicRayConfig) -> tuple[list[dict], list[float]]:
    """Search each SAAO exposure and score it against ``n_others`` others; rows, times."""
    real = Path(os.environ.get("PAUSDENOISE_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))
    files = sorted((real / "saao-kb13475").glob("AKB13475I*.fits"))
    if not files:
        raise SystemExit(f"no SAAO frames under {real} (set PAUSDENOISE_REAL_DATA)")
    images = [fits.getdata(f).astype(np.float64) for f in files]
    noise = [(float(h["GAIN"]), float(h["RDNOISE"])) for h in map(fits.getheader, files)]
    fwhms = [_saao_fwhm(img) for img in images]
    found, times = [], []
    for img, (gain, rn), fwhm in zip(images, noise, fwhms, strict=True):  # timed on its own
        t0 = time.perf_counter()
        found.append(detect_cosmic_rays(img, None, gain, rn, config, fwhm).hits)
        times.append(time.perf_counter() - t0)
    rows = []
    for i, (f, img, (gain, rn)) in enumerate(zip(files, images, noise, strict=True)):
        others = [images[j % len(images)] for j in range(i + 1, i + 1 + n_others)]
        rows.append({"frame": f.name, **score_real(found[i], img, registered_median(img, others),
                                                   gain, rn)})
    return rows, times


def _saao_fwhm(image: np.ndarray) -> float:
    """The exposure's PSF FWHM [px] as ingest measures it."""
    return frame_psf({}, image, np.zeros(image.shape, dtype=np.uint8), pixel_scale=1.0).fwhm_px


def time_large(config: CosmicRayConfig, shape: tuple[int, int] = (4096, 2048)) -> float:
    """Seconds to search a frame of white noise of ``shape`` (sky 300 e⁻, gain 1, 5 e⁻)."""
    rng = np.random.default_rng(0)
    image = rng.poisson(300.0, shape) + rng.normal(0.0, 5.0, shape)
    t0 = time.perf_counter()
    detect_cosmic_rays(image, None, 1.0, 5.0, config)
    return time.perf_counter() - t0


def render(sim: dict[str, int], sim_times: list[float], rows: list[dict],
           saao_times: list[float], large_s: float, command: str) -> str:
    """The Markdown section."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    conf = [r["confirmed"] for r in rows if np.isfinite(r["confirmed"])]
    n_out = sum(r["sky_outliers"] for r in rows)
    n_sky = sum(round(r["sky_found"] * r["sky_outliers"]) for r in rows if r["sky_outliers"])
    hits = sum(r["hits"] for r in rows)
    conf_hits = sum(round(r["confirmed"] * r["hits"]) for r in rows if r["hits"])
    lines = [
        "## Cosmic rays masked at ingest: the hits found in the simulated survey and the "
        f"SAAO frames ({now})",
        "",
        f"Machine: {platform.platform()}, {_cpu_name()}, {os.cpu_count()} CPUs.",
        "", "```", command, "```", "",
        "| data | frames | hits found | hit pixels found | false pixels (> 2 px from a hit) "
        "| of them on sources | s per frame |",
        "|---|---|---|---|---|---|---|",
        f"| simulated survey, 512² px | {sim['frames']} | {sim['hits_found']} / "
        f"{sim['true_hits']} ({sim['hits_found'] / max(sim['true_hits'], 1):.1%}) | "
        f"{sim['px_found']} / {sim['true_px']} ({sim['px_found'] / max(sim['true_px'], 1):.1%}) "
        f"| {sim['false_px']} | {sim['false_on_source']} | {np.median(sim_times):.2f} |",
        "",
        "| data | frames | hits found (per frame) | peak > 8 σ above the other exposures' "
        "median | sky groups > 15 σ above it found | s per frame |",
        "|---|---|---|---|---|---|",
        f"| SAAO, 512² px | {len(rows)} | {hits} ({min(r['hits'] for r in rows)}–"
        f"{max(r['hits'] for r in rows)}) | {conf_hits} / {hits} ({conf_hits / max(hits, 1):.1%};"
        f" per frame {min(conf):.0%}–{max(conf):.0%}) | {n_sky} / {n_out} "
        f"({n_sky / max(n_out, 1):.1%}) | {np.median(saao_times):.2f} |",
        "",
        f"A 4096 × 2048 px frame of noise (a PAUCam CCD's size): {large_s:.1f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its Markdown section.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0.
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench-output" / "cosmic-rays")
    ap.add_argument("--others", type=int, default=5,
                    help="other SAAO exposures whose median a hit is compared with")
    args = ap.parse_args(argv)
    config = CosmicRayConfig()
    sim, sim_times = run_sim(args.out, config)
    rows, saao_times = run_saao(args.others, config)
    large = time_large(config)
    command = "python benchmarks/bench_cosmic_rays.py " + " ".join(argv or sys.argv[1:])
    print(render(sim, sim_times, rows, saao_times, large, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
