"""Figures and the report section of detection depth at equal purity.

The tables are those of :func:`pausdenoise.detection.depth_analysis` as the evaluate stage
writes them (``depth_sweep.csv``, ``depth.csv``, ``depth_completeness.csv``,
``depth_gain.csv``; a ``truth`` column says whether the completeness is that of the
simulation's sources or of injected ones). Thresholds are in σ of each image's own
PSF-smoothed background RMS; magnitudes are AB; purity and completeness are fractions.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from pausdenoise.report.html import ReportSection, ReportWriter

__all__ = ["depth_section", "fig_depth"]


def fig_depth(curves: pd.DataFrame, sweep: pd.DataFrame, depth: pd.DataFrame,
              title: str) -> Figure:
    """Plot one image kind's completeness at each purity target and its purity curve.

    Parameters
    ----------
    curves : DataFrame
        Rows of ``depth_completeness.csv`` of one kind: ``purity_target``, ``mag_lo``,
        ``mag_hi`` (AB), ``completeness``.
    sweep : DataFrame
        Rows of ``depth_sweep.csv`` of the same kind: ``threshold`` (σ), ``purity``.
    depth : DataFrame
        Rows of ``depth.csv`` of the same kind: ``purity_target``, ``threshold``, ``m50``.
    title : str
        The figure's title (kind and truth).

    Returns
    -------
    Figure
        Left: completeness vs magnitude per purity target, m50 marked; right: purity vs
        threshold with the thresholds of the targets marked.
    """
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, (target, g) in enumerate(curves.groupby("purity_target")):
        x = 0.5 * (g["mag_lo"].to_numpy(float) + g["mag_hi"].to_numpy(float))
        ax1.plot(x, g["completeness"], marker="o", ms=3, color=f"C{i}",
                 label=f"purity {target:.0%}")
        d = depth[depth["purity_target"] == target]
        if len(d) and np.isfinite(d["m50"].iloc[0]):
            ax1.axvline(d["m50"].iloc[0], color=f"C{i}", lw=0.8, ls="--")
    for lev in (0.5, 0.9):
        ax1.axhline(lev, color="0.5", lw=0.7, ls=":")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_xlabel("true magnitude [AB]")
    ax1.set_ylabel("completeness")
    ax1.legend(fontsize=8)
    s = sweep.drop_duplicates("threshold").sort_values("threshold")
    ax2.semilogx(s["threshold"], s["purity"], marker="o", ms=3, color="k")
    for i, (_, r) in enumerate(depth.sort_values("purity_target").iterrows()):
        if np.isfinite(r["threshold"]):
            ax2.axvline(r["threshold"], color=f"C{i}", lw=0.8, ls="--")
        ax2.axhline(r["purity_target"], color=f"C{i}", lw=0.7, ls=":")
    ticks = [t for t in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200)
             if s["threshold"].min() <= t <= s["threshold"].max()]
    ax2.xaxis.set_minor_formatter(NullFormatter())
    ax2.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("threshold [σ of the smoothed image]")
    ax2.set_ylabel("purity")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def depth_section(tables: Mapping[str, pd.DataFrame], w: ReportWriter) -> ReportSection:
    """Assemble the depth section: one figure per truth and kind, the depth and gain tables.

    Parameters
    ----------
    tables : mapping
        ``depth``, ``sweep``, ``curves`` and optionally ``gains`` (the CSV files).
    w : ReportWriter
        Writes the figures and tables.

    Returns
    -------
    ReportSection
        The section.
    """
    depth, sweep, curves = tables["depth"], tables["sweep"], tables["curves"]
    figs = []
    for (truth, kind), d in depth.groupby(["truth", "kind"], sort=False):
        c = curves[(curves["truth"] == truth) & (curves["kind"] == kind)]
        sw = sweep[(sweep["truth"] == truth) & (sweep["kind"] == kind)]
        fig = fig_depth(c, sw, d, f"{kind} ({truth} sources)")
        figs.append((f"{kind}, {truth} sources: completeness at equal purity and purity vs "
                     "threshold.", w.figure(f"depth_{truth}_{kind}", fig)))
    out = [("Depth at equal purity: threshold (σ), m50 and m90 (AB) with 95 % bootstrap "
            "intervals", w.table("depth", depth))]
    if "gains" in tables and len(tables["gains"]):
        out.append(("Depth gain over raw (mag, positive: deeper), paired bootstrap 95 % "
                    "intervals", w.table("depth_gain", tables["gains"])))
    text = ("One detection engine (PSF-matched smoothing, thresholds in σ of each image's own "
            "smoothed background RMS, deblending) swept over thresholds; each kind is compared "
            "at the threshold where its purity reaches the target.")
    return ReportSection("Detection depth at equal purity", text=text, figures=figs,
                         tables=out)
