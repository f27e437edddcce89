"""What a denoiser takes from a faint galaxy's aperture when it smooths the galaxy as sky.

A denoiser that reduces the sky's white noise by a factor g must average, on the sky, over an
area of about 4π σ_s² px² with σ_s = g / (2√π) (a Gaussian smoother of that width has exactly
that RMS gain). A galaxy it cannot tell from the sky (one whose signal in a single exposure
is within the noise) is averaged the same way, and the part of its light carried past its
catalogue aperture is lost to aperture photometry, however well the denoiser conserves flux.
This benchmark predicts that loss per I_auto bin from the catalogue apertures, the measured
PSF and the galaxies' half-light radii, for the sky gain each pipeline run reached, and sets it
beside the run's measured flux bias against the simulation's truth and the raw single-exposure
S/N of the bin's sources::

    python benchmarks/bench_faint_spill.py bench-output/RUN [bench-output/RUN2 ...] \
        [--label RUN=text ...] [--results]

Each RUN is an output directory of ``pausdenoise run`` on a simulation (stages photometry,
compare and evaluate done). Conventions: pixels (px) throughout; the profile of a source is a
circular Gaussian of variance σ_PSF² + σ_gal², σ_PSF = FWHM / 2.3548 from the photometry's
``psf_fwhm_px`` and σ_gal = hlr / 1.1774 (the Gaussian with the catalogue's half-light radius
``profile_hlr``, arcsec, divided by the simulation's pixel scale), centred in the catalogue's
elliptical aperture (semi-axes ``a``, ``b`` px).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM / σ of a Gaussian (2.3548)."""
HLR_PER_SIGMA = math.sqrt(2.0 * math.log(2.0))
"""Half-light radius / σ of a circular Gaussian (1.1774)."""
DETECTABLE_SNR = 5.0
"""Single-exposure aperture S/N below which a source is counted as not detectable."""
BINS = (17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0)
"""I_auto bin edges, AB mag."""


def smoothing_sigma_for_sky_gain(gain: float | np.ndarray) -> float | np.ndarray:
    """Width of the Gaussian smoother whose RMS gain on white noise is ``gain``.

    A normalised Gaussian kernel of standard deviation σ_s (px) leaves white noise with
    variance ``1 / (4π σ_s²)`` of the input's, so ``gain = 2√π σ_s``.

    Parameters
    ----------
    gain : float or ndarray
        RMS(raw) / RMS(smoothed) on the sky, >= 1.

    Returns
    -------
    float or ndarray
        σ_s in px.
    """
    return np.asarray(gain, dtype=float) / (2.0 * math.sqrt(math.pi))


def gaussian_fraction_in_ellipse(sigma: np.ndarray, a: np.ndarray, b: np.ndarray,
                                 n_angles: int = 360) -> np.ndarray:
    """Fraction of a centred circular Gaussian's flux inside an ellipse.

    Integrated in polar angle about the centre: ``(1/2π) ∫ 1 − exp(−r(φ)² / 2σ²) dφ`` with
    ``r(φ)`` the ellipse's radius in direction φ (exact for a centred circular profile, so
    the ellipse's orientation does not enter).

    Parameters
    ----------
    sigma : ndarray
        Gaussian standard deviation, px, > 0.
    a, b : ndarray
        Semi-major and semi-minor axes, px, > 0 (broadcast with ``sigma``).
    n_angles : int, optional
        Angles in the midpoint rule over [0, 2π). Default 360.

    Returns
    -------
    ndarray
        The enclosed fraction, in (0, 1).
    """
    sigma, a, b = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (sigma, a, b)))
    phi = (np.arange(n_angles) + 0.5) * (2.0 * math.pi / n_angles)
    r2 = (a * b)[..., None] ** 2 / ((b[..., None] * np.cos(phi)) ** 2
                                    + (a[..., None] * np.sin(phi)) ** 2)
    return np.mean(1.0 - np.exp(-r2 / (2.0 * sigma[..., None] ** 2)), axis=-1)


def spill_bias(a: np.ndarray, b: np.ndarray, psf_fwhm: np.ndarray, source_sigma: np.ndarray,
               sky_gain: float) -> np.ndarray:
    """Relative aperture-flux change of a source smoothed as the sky is smoothed.

    Parameters
    ----------
    a, b : ndarray
        Aperture semi-axes, px.
    psf_fwhm : ndarray
        PSF FWHM of the exposure, px.
    source_sigma : ndarray
        Intrinsic Gaussian σ of the source, px (0: a point source).
    sky_gain : float
        The sky RMS gain the denoiser reaches (1: no smoothing).

    Returns
    -------
    ndarray
        ``f(σ_out) / f(σ_in) − 1``, with ``σ_in² = σ_PSF² + σ_gal²``,
        ``σ_out² = σ_in² + σ_s²`` and ``f`` the fraction inside the aperture; ≤ 0.
    """
    s_in = np.sqrt((np.asarray(psf_fwhm, float) / FWHM_PER_SIGMA) ** 2
                   + np.asarray(source_sigma, float) ** 2)
    s_out = np.sqrt(s_in**2 + float(smoothing_sigma_for_sky_gain(sky_gain)) ** 2)
    inside = gaussian_fraction_in_ellipse(s_out, a, b)
    return inside / gaussian_fraction_in_ellipse(s_in, a, b) - 1.0


def bin_label(lo: float, hi: float) -> str:
    """``"20-21"`` for the bin [20, 21)."""
    return f"{lo:g}-{hi:g}"


def spill_table(sources: pd.DataFrame, sky_gains: dict[str, float],
                bins: tuple[float, ...] = BINS) -> pd.DataFrame:
    """Per I_auto bin: the sources' S/N and aperture, and the predicted spill per sky gain.

    Parameters
    ----------
    sources : pandas.DataFrame
        One row per raw single-exposure measurement: ``I_auto`` (mag), ``a``, ``b`` (px),
        ``psf_fwhm_px`` (px), ``source_sigma`` (px), ``flux``, ``flux_err`` (same units).
    sky_gains : dict of str to float
        Label → sky RMS gain.
    bins : tuple of float, optional
        I_auto bin edges. Default :data:`BINS`.

    Returns
    -------
    pandas.DataFrame
        ``bin``, ``n``, ``snr_median``, ``undetectable`` (share with S/N <
        :data:`DETECTABLE_SNR`), ``a``, ``b`` (medians, px), and for each label the median
        predicted relative change ``spill[<label>]``.
    """
    rows = []
    for lo, hi in itertools.pairwise(bins):
        s = sources[(sources["I_auto"] >= lo) & (sources["I_auto"] < hi)]
        snr = (s["flux"] / s["flux_err"]).to_numpy()
        row = {"bin": bin_label(lo, hi), "n": len(s),
               "snr_median": float(np.median(snr)) if len(s) else math.nan,
               "undetectable": float(np.mean(snr < DETECTABLE_SNR)) if len(s) else math.nan,
               "a": float(s["a"].median()), "b": float(s["b"].median())}
        for label, gain in sky_gains.items():
            spill = spill_bias(s["a"].to_numpy(), s["b"].to_numpy(),
                               s["psf_fwhm_px"].to_numpy(), s["source_sigma"].to_numpy(), gain)
            row[f"spill[{label}]"] = float(np.median(spill)) if len(s) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- run directories


def read_sources(run: Path) -> pd.DataFrame:
    """The raw, unflagged single-exposure measurements of a run, with each source's σ_gal.

    Parameters
    ----------
    run : Path
        A ``pausdenoise run`` output directory on a simulation.

    Returns
    -------
    pandas.DataFrame
        The columns :func:`spill_table` needs.
    """
    files = sorted((run / "photometry").glob("band=*/kind=raw/*.parquet"))
    if not files:
        raise FileNotFoundError(f"{run}: no raw photometry under photometry/band=*/kind=raw")
    cols = ["ref_id", "expnum", "I_auto", "a", "b", "psf_fwhm_px", "flux", "flux_err", "flags"]
    phot = pd.concat([pd.read_parquet(f, columns=cols) for f in files], ignore_index=True)
    phot = phot[phot["flags"] == 0]
    cat = pd.read_parquet(run / "survey" / "catalogue.parquet", columns=["ref_id", "profile_hlr"])
    hlr = cat.drop_duplicates("ref_id").set_index("ref_id")["profile_hlr"]
    scale = _pixel_scale(run)
    phot["source_sigma"] = phot["ref_id"].map(hlr).fillna(0.0).to_numpy() / scale / HLR_PER_SIGMA
    return phot


def _config(run: Path) -> dict:
    return json.loads((run / "run.json").read_text()).get("config") or {}


def _pixel_scale(run: Path) -> float:
    scale = _config(run).get("simulate", {}).get("pixel_scale")
    if not scale:
        raise KeyError(f"{run}/run.json: no simulate.pixel_scale (not a simulation run?)")
    return float(scale)


def describe(run: Path) -> str:
    """A short label of a run's denoiser: method, head, training budget, restoration."""
    cfg = _config(run)
    train = cfg.get("train", {})
    unet = train.get("unet", {})
    head = ("kernel " + str(unet["kernel_size"]) if unet.get("kernel_size")
            else "gated residual" if unet.get("residual") == "gated"
            else "residual" if unet.get("residual")
            else f"posterior {unet.get('posterior', 'none')}")
    minutes = train.get("max_minutes")
    budget = f", {60 * minutes:.0f} s" if minutes else f", {train.get('epochs')} epochs"
    if unet.get("n2v2"):
        head = f"N2V2 {100 * train.get('masked_fraction', 0):g} %, {head}"
    restored = (", catalogue restored" if cfg.get("denoise", {}).get("restore_catalogue")
                else "")
    weight = train.get("loss_weighting", "none")
    loss = f", {weight}-weighted loss" if weight not in (None, "none") else ""
    return (f"{train.get('method', 'n2v')}, {head}{loss}{budget}, seed {train.get('seed', 0)}"
            f"{restored}")


def measured(run: Path) -> tuple[float, dict[str, float]]:
    """The run's sky RMS gain and its denoised flux bias against truth per bin."""
    gain = float(json.loads((run / "evaluate" / "summary.json").read_text())["rms_reduction_sky"])
    tc = pd.read_csv(run / "compare" / "truth_comparison.csv")
    tc = tc[(tc["kind"] == "denoised") & (tc["bin"] != "all")]
    return gain, dict(zip(tc["bin"], tc["bias_median"].astype(float), strict=True))


def _pct(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{100 * v:+.0f} %"


def markdown(runs: list[Path], labels: dict[str, str], faint: tuple[str, ...]) -> str:
    """The benchmark's tables (markdown): sources per bin, then model against measurement."""
    sources = read_sources(runs[0])
    gains, biases = {}, {}
    for run in runs:
        gains[run.name], biases[run.name] = measured(run)
    table = spill_table(sources, gains)
    lines = ["| I_auto | measurements | median S/N (raw, one exposure) | S/N < 5 | aperture a × b"
             " [px] |", "|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.bin} | {r.n} | {r.snr_median:.1f} | {100 * r.undetectable:.0f} % | "
                     f"{r.a:.1f} × {r.b:.1f} |")
    lines += ["", "| run | sky gain | " + " | ".join(
        f"I {b}: spill if smoothed as sky / measured" for b in faint) + " |",
        "|---|---|" + "---|" * len(faint)]
    by_bin = table.set_index("bin")
    for run in sorted(runs, key=lambda r: gains[r.name]):
        cells = [f"{_pct(by_bin.loc[b, f'spill[{run.name}]'])} / "
                 f"{_pct(biases[run.name].get(b, math.nan))}" for b in faint]
        lines.append(f"| {labels.get(run.name, describe(run))} | ÷{gains[run.name]:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def publish(title: str, command: str, body: str, append: bool) -> str:
    """Print a RESULTS.md section (title with the UTC time, machine, command, body).

    Parameters
    ----------
    title : str
        Section title, without the time.
    command : str
        The command that produced it.
    body : str
        Markdown.
    append : bool
        Also append it to ``benchmarks/RESULTS.md``.

    Returns
    -------
    str
        The section.
    """
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"\n## {title} ({now})\n\nMachine: {platform.platform()}; nothing timed. "
            f"Command: `{command}`.\n\n{body}\n")
    print(text)
    if append:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as fh:
            fh.write(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="pausdenoise run output directories")
    ap.add_argument("--label", action="append", default=[], metavar="RUN=TEXT",
                    help="row label for the run directory named RUN")
    ap.add_argument("--faint", default="20-21,21-22,22-23", help="bins to tabulate")
    ap.add_argument("--results", action="store_true",
                    help="append the tables to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label)
    body = markdown(args.runs, labels, tuple(args.faint.split(",")))
    command = f"python benchmarks/bench_faint_spill.py {' '.join(str(r) for r in args.runs)}"
    publish("Faint-galaxy flux a denoiser smooths as sky", command, body, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
