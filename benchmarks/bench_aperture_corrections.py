"""The aperture corrections and the zero-points, judged on a run directory.

Reads a run's raw photometry (``RUN/photometry``) and, where they exist, the simulation's
truth (``RUN/survey/truth``) and the compare stage's relative zero-points
(``RUN/compare/relative_zp.csv``), and writes what the section "Aperture corrections" and
"The demo's brightest bin" of ``benchmarks/RESULTS.md`` quote:

* **the aperture share against the truth** (simulations): the photometry's ``aper_frac``
  over the true share ``flux_true_aper_adu / flux_true_adu`` (percentiles over the
  measurements), and how much the true share of one galaxy moves between its exposures;
* **the header zero-points against the exact ones** (simulations): σ68 of zp/zp_true − 1 and
  of (zp − zp_true)/zp_err over the frames, and the raw fluxes' pulls against the truth per
  I_auto bin with the header and with the exact zero-points (aperture-corrected where the
  photometry has the shares and the catalogue gave shapes, as ``compare.aperture_correction:
  auto`` does);
* **the bright stars' scatter between exposures** (any run): for the sources whose median
  raw S/N is above ``--snr`` on at least ``--min-exposures`` exposures, the σ68 of
  ln(f / the source's median) after each exposure's median (on the relative zero-points'
  common scale when the run has them), against the median flux error, overall and by
  quarters of S/N, of the PSF FWHM and of the aperture area (the smallest quarter, the
  middle half and the largest quarter), with the pulls by S/N quarter.

Usage (project venv)::

    python benchmarks/bench_aperture_corrections.py --run RUN [--snr 80]
        [--min-exposures 10] [--append]

``--append`` adds a dated section to ``benchmarks/RESULTS.md``. Time: seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_training_budget as tb  # the benchmarks' CPU-name helper

from pausdenoise import compare as cmp
from pausdenoise.photometry.apcor import aperture_corrected
from pausdenoise.photometry.config import ProfFlag
from pausdenoise.photometry.driver import read_photometry
from pausdenoise.relative_zp import apply_exposure_scales
from pausdenoise.stats import sigma68

ROOT = Path(__file__).resolve().parents[1]
PERCENTILES = (1, 16, 50, 84, 99)


def share_against_truth(raw: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Compare the photometry's aperture shares with the simulation's true shares.

    Parameters
    ----------
    raw : pandas.DataFrame
        Raw photometry rows (``ref_id``, ``expnum``, ``band``, ``I_auto``, ``aper_frac``).
    truth : pandas.DataFrame
        The simulation's ``fluxes.parquet`` (``flux_true_aper_adu``, ``flux_true_adu``).

    Returns
    -------
    dict
        ``n``; ``p1`` … ``p99``: percentiles of T / T_true; ``true_rms_bright`` and
        ``ratio_rms_bright``: the median over galaxies at I_auto < 20 of the rms of T_true,
        and of T / T_true, between a galaxy's exposures (relative). Empty without shares.
    """
    m = raw.merge(truth[["ref_id", "expnum", "band", "flux_true_aper_adu", "flux_true_adu"]],
                  on=["ref_id", "expnum", "band"])
    m = m.assign(t_true=m["flux_true_aper_adu"] / m["flux_true_adu"])
    m = m[np.isfinite(m["aper_frac"]) & (m["aper_frac"] > 0) & (m["t_true"] > 0)]
    if m.empty:
        return {}
    m = m.assign(ratio=m["aper_frac"] / m["t_true"])
    out: dict[str, float] = {"n": len(m)}
    out.update({f"p{q}": float(v) for q, v in
                zip(PERCENTILES, np.percentile(m["ratio"], PERCENTILES), strict=True)})
    bright = m[m["I_auto"] < 20]
    if len(bright):
        g = bright.groupby(["ref_id", "band"])
        rel = g["t_true"].std() / g["t_true"].mean()
        out["true_rms_bright"] = float(rel.median())
        out["ratio_rms_bright"] = float((g["ratio"].std() / g["ratio"].mean()).median())
    return out


def corrected_rows(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Aperture-correct the rows as ``compare.aperture_correction: auto`` would.

    Returns
    -------
    table : pandas.DataFrame
        The bands whose rows all have shares and catalogue shapes (no
        ``ProfFlag.APPROX_PROFILE``) aperture-corrected, the others as measured.
    bands : list of str
        The corrected bands.
    """
    approx = (raw["flags_prof"].to_numpy() & int(ProfFlag.APPROX_PROFILE)) != 0
    has = np.isfinite(raw["aper_frac"].to_numpy(float))
    ok = pd.Series(has & ~approx).groupby(raw["band"].to_numpy()).all()
    bands = sorted(str(b) for b, v in ok.items() if v)
    sel = raw["band"].isin(bands)
    return pd.concat([raw[~sel], aperture_corrected(raw[sel])], ignore_index=True), bands


def truth_pulls(raw: pd.DataFrame, truth: pd.DataFrame,
                bins: np.ndarray = cmp.DEFAULT_BINS) -> pd.DataFrame:
    """Raw pulls against the truth per I_auto bin, with the header and the exact zero-points.

    Returns
    -------
    pandas.DataFrame
        :func:`pausdenoise.compare.truth_comparison`'s rows (``kind`` raw), against the true
        total flux for the aperture-corrected bands and the true flux in the aperture for
        the others.
    """
    table, bands = corrected_rows(raw)
    inside = truth["flux_true_aper_adu"] * truth["zp_true"]
    t = truth.assign(flux_true_cal=truth["flux_true_cal"].where(truth["band"].isin(bands),
                                                                inside))
    return cmp.truth_comparison(table.assign(kind="raw"), t, bins)


def _on_common_scale(raw: pd.DataFrame, scales: pd.DataFrame | None) -> pd.DataFrame:
    """Divide each frame's fluxes by its relative scale where the run fitted them.

    Returns
    -------
    pandas.DataFrame
        The rows of bands with scales on the common scale (frames without one dropped);
        the other bands' rows unchanged.
    """
    if scales is None or scales.empty:
        return raw
    sel = raw["band"].isin(scales["band"].unique())
    frames = scales[[c for c in ("expnum", "ccd", "scale", "scale_err") if c in scales]]
    return pd.concat([raw[~sel], apply_exposure_scales(raw[sel], frames)], ignore_index=True)


def _groups(values: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Split into the smallest quarter, the middle half and the largest quarter.

    Returns
    -------
    list of (str, ndarray of bool)
        Label and selection of each group.
    """
    q1, q3 = np.percentile(values, [25, 75])
    return [(f"< {q1:.3g}", values < q1), (f"{q1:.3g}–{q3:.3g}", (values >= q1) & (values <= q3)),
            (f"> {q3:.3g}", values > q3)]


def bright_stars(raw: pd.DataFrame, scales: pd.DataFrame | None, snr_min: float = 80.0,
                 min_exposures: int = 10) -> tuple[dict[str, float], list[str]]:
    """Measure the bright sources' flux scatter between exposures against their errors.

    Parameters
    ----------
    raw : pandas.DataFrame
        Raw, unflagged photometry rows (``ref_id``, ``expnum``, ``ccd``, ``band``,
        ``flux_cal``, ``flux_cal_err``, ``area`` [px²], ``psf_fwhm_px``).
    scales : pandas.DataFrame or None
        The run's ``relative_zp.csv`` (``band``, ``expnum``, ``ccd``, ``scale``,
        ``scale_err``), or None.
    snr_min : float
        Least median S/N of a source used.
    min_exposures : int
        Least number of exposures a source used is measured on.

    Returns
    -------
    summary : dict
        ``sources``, ``measurements``, ``scatter`` (σ68 of ln(f/median) after each
        exposure's median) and ``error`` (median relative flux error); empty without such
        sources.
    rows : list of str
        Markdown table rows: scatter, error and pulls by S/N quarter, and scatter by
        PSF FWHM quarter and aperture-area group.
    """
    t = _on_common_scale(raw, scales)
    f = t["flux_cal"].to_numpy(float)
    e = t["flux_cal_err"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = t.assign(snr=f / e)
    t = t[np.isfinite(t["snr"]) & (f > 0)]
    g = t.groupby(["ref_id", "band"])["snr"]
    t = t[(g.transform("median") > snr_min) & (g.transform("size") >= min_exposures)]
    if t.empty:
        return {}, []
    med = t.groupby(["ref_id", "band"])["flux_cal"].transform("median")
    r = np.log(t["flux_cal"] / med)
    r = r - r.groupby([t["band"], t["expnum"]]).transform("median")
    rel_err = (t["flux_cal_err"] / t["flux_cal"]).to_numpy()
    pull = (r / rel_err).to_numpy()
    r = r.to_numpy()
    summary = {"sources": int(t.groupby(["ref_id", "band"]).ngroups),
               "measurements": len(t), "scatter": sigma68(r),
               "error": float(np.median(rel_err))}
    rows = ["| grouped by | group | measurements | scatter σ68 [%] | median error [%] | "
            "pull σ68 |", "|---|---|---|---|---|---|"]

    def row(by: str, group: str, sel: np.ndarray) -> str:
        return (f"| {by} | {group} | {sel.sum()} | {100 * sigma68(r[sel]):.2f} | "
                f"{100 * np.median(rel_err[sel]):.2f} | {sigma68(pull[sel]):.2f} |")

    snr = t["snr"].to_numpy()
    for lo, hi in itertools.pairwise(np.percentile(snr, [0, 25, 50, 75, 100])):
        rows.append(row("S/N quarter", f"{lo:.0f}–{hi:.0f}", (snr >= lo) & (snr <= hi)))
    fwhm = t["psf_fwhm_px"].to_numpy(float)
    if np.isfinite(fwhm).all():
        for lo, hi in itertools.pairwise(np.percentile(fwhm, [0, 25, 50, 75, 100])):
            rows.append(row("PSF FWHM quarter [px]", f"{lo:.2f}–{hi:.2f}",
                            (fwhm >= lo) & (fwhm <= hi)))
    for label, sel in _groups(t["area"].to_numpy(float)):
        rows.append(row("aperture area [px²]", label, sel))
    return summary, rows


def report(run: Path, snr_min: float, min_exposures: int) -> str:
    """Measure everything the run allows and return it as Markdown.

    Returns
    -------
    str
        The tables and sentences.
    """
    phot = read_photometry(run / "photometry")
    raw = phot[(phot["kind"] == "raw") & (phot["flags"] == 0)].reset_index(drop=True)
    parts = [f"Run directory with {len(raw):,} raw unflagged measurements of "
             f"{raw['ref_id'].nunique():,} sources in {raw['band'].nunique()} band(s) on "
             f"{raw[['expnum', 'ccd']].drop_duplicates().shape[0]} frame(s)."]
    truth_path = run / "survey" / "truth" / "fluxes.parquet"
    if truth_path.exists():
        truth = pd.read_parquet(truth_path)
        share = share_against_truth(raw, truth)
        if share:
            parts.append(
                f"Aperture share against the truth ({share['n']:,} measurements): T / T_true "
                "percentiles 1 / 16 / 50 / 84 / 99 % "
                + " / ".join(f"{share[f'p{q}']:.4f}" for q in PERCENTILES)
                + (f"; at I_auto < 20 the true share of a galaxy moves by "
                   f"{100 * share['true_rms_bright']:.2f} % rms between its exposures "
                   f"(median over galaxies), T / T_true by "
                   f"{100 * share['ratio_rms_bright']:.2f} %." if "true_rms_bright" in share
                   else "."))
        zp = cmp.zero_point_errors(raw, truth)
        if zp:
            parts.append(f"Header zero-points of the {zp['truth_zp_frames']} frames against "
                         f"the exact ones: σ68 of zp/zp_true − 1 = "
                         f"{100 * zp['truth_zp_scatter']:.2f} %, of (zp − zp_true)/zp_err = "
                         f"{zp['truth_zp_pulls']:.2f}.")
        tc = truth_pulls(raw, truth)
        lines = ["| I_auto | measurements | median bias [%] | pull σ68, header zero-points | "
                 "pull σ68, exact zero-points |", "|---|---|---|---|---|"]
        for _, row in tc.iterrows():
            lines.append(f"| {row['bin']} | {row['n']} | {100 * row['bias_median']:+.1f} | "
                         f"{row['pull_sigma68']:.2f} | {row['pull_sigma68_exact_zp']:.2f} |")
        parts.append("Raw fluxes against the truth (aperture-corrected bands against the "
                     "true total flux):\n\n" + "\n".join(lines))
    scales_path = run / "compare" / "relative_zp.csv"
    scales = pd.read_csv(scales_path) if scales_path.exists() else None
    summary, rows = bright_stars(raw, scales, snr_min, min_exposures)
    if summary:
        parts.append(
            f"Bright sources (median S/N > {snr_min:g} on ≥ {min_exposures} exposures"
            + (", on the relative zero-points' common scale" if scales is not None else "")
            + f"): {summary['sources']} sources, {summary['measurements']:,} measurements; "
            f"σ68 of ln(f / median) after each exposure's median "
            f"{100 * summary['scatter']:.2f} % against a median error of "
            f"{100 * summary['error']:.2f} %.\n\n" + "\n".join(rows))
    else:
        parts.append(f"No source has a median S/N above {snr_min:g} on {min_exposures} "
                     "exposures or more.")
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure one run directory; print (and optionally append) the tables.

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
    p.add_argument("--run", type=Path, required=True, help="the run directory")
    p.add_argument("--snr", type=float, default=80.0, help="least median S/N of a bright source")
    p.add_argument("--min-exposures", type=int, default=10,
                   help="least number of exposures of a bright source")
    p.add_argument("--append", action="store_true")
    a = p.parse_args(argv)
    text = report(a.run, a.snr, a.min_exposures)
    print(text)
    if a.append:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        # the run directory by its name: where it lies on this machine says nothing
        args = [a.run.name if Path(x) == a.run else x for x in (argv or sys.argv[1:])]
        cmd = "python benchmarks/bench_aperture_corrections.py " + " ".join(args)
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Aperture corrections and zero-points of a run ({now})\n\n"
                     f"machine: {platform.machine()}, {tb._cpu_name()}\n"
                     f"command: `{cmd.strip()}`\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
