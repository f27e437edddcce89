"""Figures and the report section of source injection: flux bias, scatter, colour, transfer.

The tables are those of :func:`pausdenoise.inject.metrics.injection_tables` (or the CSV
files the inject stage writes from them): ``bias`` (per estimator × band × I_auto bin),
``transfer`` and ``colour``. Each ``fig_*`` function takes one of them and returns a
:class:`matplotlib.figure.Figure`; :func:`injection_section` assembles the section.
Magnitudes are AB; relative biases are fractions (plotted in per cent).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pausdenoise.inject.metrics import ESTIMATORS, summary_lines
from pausdenoise.report.html import ReportSection, ReportWriter

__all__ = [
    "BIAS_TARGET",
    "fig_colour_bias",
    "fig_injection_bias",
    "fig_injection_scatter",
    "fig_transfer",
    "injection_section",
]

#: The |median relative bias| aimed at per I_auto bin (shaded in the bias figure).
BIAS_TARGET = 0.02

_LABELS = {
    "raw_aperture": "raw, aperture",
    "denoised_aperture": "denoised, aperture",
    "denoised_aperture_corrected": "denoised, aperture / T (cross-fitted)",
    "raw_profile": "raw, profile-weighted (total)",
}
_MARKERS = {"raw_aperture": "o", "denoised_aperture": "s",
            "denoised_aperture_corrected": "D", "raw_profile": "^"}


def _centre(t: pd.DataFrame) -> np.ndarray:
    return 0.5 * (t["mag_lo"].to_numpy(float) + t["mag_hi"].to_numpy(float))


def _errorbars(ax: Axes, t: pd.DataFrame, y: str, lo: str, hi: str, k: int, est: str,
               scale: float = 1.0, label: str | None = None) -> None:
    """Points with asymmetric interval bars, shifted by estimator so that bars do not hide."""
    x = _centre(t) + 0.06 * (k - 1.5)
    v = t[y].to_numpy(float) * scale
    err = np.vstack([v - t[lo].to_numpy(float) * scale, t[hi].to_numpy(float) * scale - v])
    ax.errorbar(x, v, yerr=np.where(np.isfinite(err), err, 0.0), color=f"C{k}",
                marker=_MARKERS.get(est, "o"), ms=4, lw=1, capsize=2,
                label=label or _LABELS.get(est, est))


def fig_injection_bias(bias: pd.DataFrame, *, target: float = BIAS_TARGET,
                       ncol: int = 4) -> Figure:
    """Plot median relative flux bias vs I_auto with 95 % intervals, one panel per band.

    Parameters
    ----------
    bias : DataFrame
        The ``bias`` table (``estimator, band, mag_lo, mag_hi, median_rel_bias, ci_lo,
        ci_hi``; bias as a fraction).
    target : float, optional
        The aimed-at |bias| (fraction), shaded. Default :data:`BIAS_TARGET`.
    ncol : int, optional
        Panels per row. Default 4.

    Returns
    -------
    Figure
        Panel "all" (every band pooled) first, then each band; bias in per cent.
    """
    bands = ["all", *sorted(b for b in bias["band"].astype(str).unique() if b != "all")]
    ncol = min(ncol, len(bands))
    nrow = math.ceil(len(bands) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), sharex=True,
                             squeeze=False)
    for ax, band in zip(axes.flat, bands, strict=False):
        sub = bias[bias["band"].astype(str) == band]
        for k, est in enumerate(ESTIMATORS):
            t = sub[sub["estimator"] == est]
            if len(t) and (t["n"] > 0).any():
                _errorbars(ax, t, "median_rel_bias", "ci_lo", "ci_hi", k, est, 100.0)
        ax.axhspan(-100 * target, 100 * target, color="0.9", zorder=0)
        ax.axhline(0.0, color="k", lw=0.7, ls=":")
        ax.set_title(band, fontsize=9)
    for ax in axes.flat[len(bands):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("median (F̂ − F)/F [%]")
    for ax in axes[-1, :]:
        ax.set_xlabel("I_auto [AB mag]")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("flux bias against the injected truth (95 % intervals; shaded "
                 f"±{100 * target:g} %)", fontsize=9)
    fig.tight_layout()
    return fig


def fig_injection_scatter(bias: pd.DataFrame, *, band: str = "all") -> Figure:
    """Plot scatter in raw-error units, pull σ68 and the Cramér–Rao ratio vs I_auto.

    Parameters
    ----------
    bias : DataFrame
        The ``bias`` table (``scatter_vs_raw``, ``cr_vs_raw``, ``pull_sigma68``,
        ``pull_ci_lo``, ``pull_ci_hi``, ``cr_ratio``).
    band : str, optional
        The band shown (``"all"``: every band pooled). Default ``"all"``.

    Returns
    -------
    Figure
        Three panels: σ68(F̂ − F)/σ_raw with the Cramér–Rao bound of the total flux in the
        same units; σ68 of the pulls with 1.00 ± 0.05; σ68(F̂ − F) over the bound for the
        total-flux estimators, with 1 and 1.1.
    """
    sub = bias[bias["band"].astype(str) == band]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for k, est in enumerate(ESTIMATORS):
        t = sub[(sub["estimator"] == est) & (sub["n"] > 0)]
        if t.empty:
            continue
        kw = {"color": f"C{k}", "marker": _MARKERS[est], "ms": 4, "label": _LABELS[est]}
        axes[0].plot(_centre(t), t["scatter_vs_raw"], **kw)
        _errorbars(axes[1], t, "pull_sigma68", "pull_ci_lo", "pull_ci_hi", k, est)
        if t["cr_ratio"].notna().any():
            axes[2].plot(_centre(t), t["cr_ratio"], **kw)
    cr = sub[sub["n"] > 0].groupby(["mag_lo", "mag_hi"], as_index=False)["cr_vs_raw"].median()
    if len(cr):
        axes[0].plot(_centre(cr), cr["cr_vs_raw"], color="k", ls="--", lw=1,
                     label="Cramér–Rao bound (total flux)")
    axes[0].axhline(1.0, color="0.5", lw=0.7, ls=":")
    axes[0].set_ylabel("σ68(F̂ − F) / σ_raw aperture")
    axes[1].axhspan(0.95, 1.05, color="0.9", zorder=0)
    axes[1].axhline(1.0, color="k", lw=0.7, ls=":")
    axes[1].set_ylabel("σ68 of (F̂ − F)/σ̂")
    for lev in (1.0, 1.1):
        axes[2].axhline(lev, color="k", lw=0.7, ls=":" if lev == 1.0 else "--")
    axes[2].set_ylabel("σ68(F̂ − F) / median √CR")
    for ax in axes:
        ax.set_xlabel("I_auto [AB mag]")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"scatter and errors of each estimator (band: {band})", fontsize=9)
    fig.tight_layout()
    return fig


def fig_colour_bias(colour: pd.DataFrame) -> Figure:
    """Plot the (measured − true) colour per I_auto bin, with 95 % intervals.

    Parameters
    ----------
    colour : DataFrame
        The ``colour`` table (``estimator, colour, mag_lo, mag_hi, n,
        median_colour_bias, ci_lo, ci_hi`` and, when present, ``scale_colour_bias,
        scale_ci_lo, scale_ci_hi``; mag).

    Returns
    -------
    Figure
        Colour bias in mmag versus I_auto, one series per estimator: the median per-source
        colour, and beside it (a second panel, when the table has it) the colour of the
        bands' flux scales; ±20 mmag shaded.
    """
    scale = "scale_colour_bias" in colour.columns
    fig, axes = plt.subplots(1, 2 if scale else 1, figsize=(12 if scale else 6.5, 3.8),
                             squeeze=False, sharey=True)
    name = str(colour["colour"].iloc[0]) if len(colour) else ""
    panels = [("median_colour_bias", "ci_lo", "ci_hi", f"median Δ({name}) [mmag]")]
    if scale:
        panels.append(("scale_colour_bias", "scale_ci_lo", "scale_ci_hi",
                       f"flux-scale Δ({name}) [mmag]"))
    for ax, (y, lo, hi, label) in zip(axes[0], panels, strict=True):
        for k, est in enumerate(ESTIMATORS):
            t = colour[(colour["estimator"] == est) & (colour["n"] > 0)]
            if len(t):
                _errorbars(ax, t, y, lo, hi, k, est, 1000.0)
        ax.axhspan(-20.0, 20.0, color="0.92", zorder=0)
        ax.axhline(0.0, color="k", lw=0.7, ls=":")
        ax.set_xlabel("I_auto [AB mag]")
        ax.set_title(label, fontsize=9)
    axes[0, 0].set_ylabel("colour bias [mmag]")
    if axes[0, 0].get_legend_handles_labels()[0]:  # no colour measured: no legend
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_transfer(transfer: pd.DataFrame) -> Figure:
    """Plot the denoised aperture transfer T = median F̂_den/F_true_aper vs I_auto.

    Parameters
    ----------
    transfer : DataFrame
        The ``transfer`` table (``band, mag_lo, mag_hi, n, transfer, ci_lo, ci_hi``).

    Returns
    -------
    Figure
        All bands pooled with 95 % intervals, each band as a thin grey line, T = 1 marked.
    """
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for band, t in transfer[transfer["n"] > 0].groupby("band"):
        if band != "all":
            ax.plot(_centre(t), t["transfer"], color="0.75", lw=0.7)
    t = transfer[(transfer["band"] == "all") & (transfer["n"] > 0)]
    if len(t):
        _errorbars(ax, t, "transfer", "ci_lo", "ci_hi", 1, "denoised_aperture",
                   label="all bands (95 % interval); grey: each band")
    ax.axhline(1.0, color="k", lw=0.7, ls=":")
    ax.set_xlabel("I_auto [AB mag]")
    ax.set_ylabel("median F̂_den / F_true (aperture)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def injection_section(tables: Mapping[str, pd.DataFrame], writer: ReportWriter) -> ReportSection:
    """Build the "Source injection" section: summary lines, four figures, the tables.

    Parameters
    ----------
    tables : mapping of str to DataFrame
        ``bias`` (required), ``transfer``, ``colour`` and ``response`` (optional) as
        written by the inject stage.
    writer : ReportWriter
        Saves the figures (``injection_*.png``) and tables (``injection_*.csv``).

    Returns
    -------
    ReportSection
        The section; the page shows the all-band rows, the files hold every band.
    """
    bias = writer.table("injection_bias", tables["bias"])
    lines = "".join(f"<li>{html.escape(s)}</li>" for s in summary_lines(tables))
    text = ("Galaxies of known flux injected into the raw frames and measured like the "
            "catalogue's sources; each estimator's flux is compared with the injected truth "
            "(aperture estimators with the source's noiseless light in its aperture, the "
            "profile-weighted one with the total flux). Intervals: 95 % bootstrap over "
            f"injected sources. Flagged measurements are counted, not used.<ul>{lines}</ul>")
    figs = [("Median relative flux bias per I_auto bin and band.",
             writer.figure("injection_bias", fig_injection_bias(bias))),
            ("Scatter in units of the raw aperture error (what denoising buys), pull widths "
             "and the distance from the Cramér–Rao bound, all bands pooled.",
             writer.figure("injection_scatter", fig_injection_scatter(bias)))]
    keep = ["estimator", "bin", "n", "n_flagged", "median_rel_bias", "ci_lo", "ci_hi",
            "pull_sigma68", "pull_sigma68_err", "scatter_vs_raw", "cr_vs_raw", "cr_ratio"]
    shown = [("Flux estimators against the injected truth, all bands pooled",
              bias.loc[bias["band"] == "all", [c for c in keep if c in bias]])]
    if tables.get("transfer") is not None:
        tr = writer.table("injection_transfer", tables["transfer"])
        figs.append(("Transfer of the denoised aperture flux: median F̂_den/F_true per bin "
                     "(the correction divides by it, learnt from the other half of the "
                     "sources).", writer.figure("injection_transfer", fig_transfer(tr))))
        shown.append(("Denoised aperture transfer, all bands pooled", tr[tr["band"] == "all"]))
    if tables.get("colour") is not None and (tables["colour"]["n"] > 0).any():
        col = writer.table("injection_colour", tables["colour"])
        figs.append(("Colour bias (measured − true) per source, median per I_auto bin.",
                     writer.figure("injection_colour", fig_colour_bias(col))))
        shown.append(("Colour bias per estimator [mag]", col))
    if tables.get("response") is not None:
        resp = writer.table("injection_response", tables["response"])
        shown.append(("Response to the injected light, (F̂ − F̂ before injection − F)/F: the "
                      "sky and confusion noise of each place cancel, so scale errors show to "
                      "a fraction of a per cent; all bands pooled",
                      resp.loc[resp["band"] == "all",
                               ["estimator", "bin", "n", "n_flagged", "median_response_bias",
                                "ci_lo", "ci_hi", "rel_scatter", "null_pull_median",
                                "null_pull_mean"]]))
    return ReportSection("Source injection: flux bias against the truth", text=text,
                         figures=figs, tables=shown)
