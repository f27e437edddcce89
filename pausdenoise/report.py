"""Figures (matplotlib) and a self-contained HTML report.

Each ``fig_*`` function takes arrays or tables and returns a :class:`matplotlib.figure.Figure`;
:func:`render_html` assembles figures (embedded as base64 PNG) and tables into one HTML file.
Only the pipeline decides where files go.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

GREY = "gray"


# --------------------------------------------------------------------------- stretches


def asinh_limits(image: np.ndarray) -> tuple[float, float]:
    """Display limits from astropy's zscale of the finite pixels (astronomy convention)."""
    from astropy.visualization import ZScaleInterval

    vals = image[np.isfinite(image)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = ZScaleInterval().get_limits(vals)
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _asinh_norm(vmin: float, vmax: float):
    from astropy.visualization import AsinhStretch, ImageNormalize

    return ImageNormalize(vmin=vmin, vmax=vmax, stretch=AsinhStretch(a=0.1))


# --------------------------------------------------------------------------- images


def fig_stamps(stamps: Sequence[Mapping]) -> Figure:
    """Galaxy stamps: one row per source, columns raw | denoised | truth (when given).

    Parameters
    ----------
    stamps : sequence of mappings
        Each with ``raw``, ``denoised`` (2-D arrays, ADU, same cutout), optional ``truth`` and a
        ``label`` (e.g. ``"ref 42, I_auto 21.3"``). All panels of a row share one asinh
        stretch with zscale limits taken from the *raw* stamp, so brightness is comparable.
    """
    ncol = 3 if any(s.get("truth") is not None for s in stamps) else 2
    nrow = max(len(stamps), 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.4 * ncol, 2.4 * nrow), squeeze=False)
    titles = ["raw", "denoised", "truth (noiseless)"][:ncol]
    for i, s in enumerate(stamps):
        vmin, vmax = asinh_limits(np.asarray(s["raw"]))
        norm = _asinh_norm(vmin, vmax)
        panels = [s["raw"], s["denoised"], s.get("truth")][:ncol]
        for j, p in enumerate(panels):
            ax = axes[i, j]
            if p is not None:
                ax.imshow(np.asarray(p), origin="lower", cmap=GREY, norm=norm,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
            if j == 0:
                ax.set_ylabel(s.get("label", ""), fontsize=8)
    note = "asinh stretch, zscale limits of the raw stamp, per row; origin lower-left"
    fig.suptitle(note, fontsize=8, y=0.995)
    fig.tight_layout()
    return fig


def fig_profile(
    raw: np.ndarray,
    denoised: np.ndarray,
    truth: np.ndarray | None,
    row: int,
    label: str = "",
) -> Figure:
    """Line profile along one image row (0-based) through a galaxy: raw vs denoised vs truth."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(raw.shape[1])
    ax.plot(x, raw[row], color="0.6", lw=0.8, label="raw")
    ax.plot(x, denoised[row], color="C0", lw=1.4, label="denoised")
    if truth is not None:
        ax.plot(x, truth[row], color="C3", lw=1.0, ls="--", label="truth (noiseless)")
    ax.set_xlabel("x [px, 0-based, in the cutout]")
    ax.set_ylabel("pixel value [ADU]")
    ax.set_title(f"profile along row {row} {label}".strip(), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_residuals(raw_residual: np.ndarray, denoised_residual: np.ndarray, sigma: float,
                  label: str = "") -> Figure:
    """Residual maps against the noiseless truth, raw and denoised, on one colour scale.

    Parameters
    ----------
    raw_residual, denoised_residual : ndarray (ny, nx)
        ``image − truth`` in ADU (same cutout); NaN marks masked pixels (left blank, not
        counted in the RMS).
    sigma : float
        Raw noise σ (ADU); the colour scale spans ±3σ.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharex=True, sharey=True)
    lim = 3.0 * sigma
    for ax, data, title in zip(axes, (raw_residual, denoised_residual),
                               ("raw − truth", "denoised − truth"), strict=True):
        im = ax.imshow(data, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                       interpolation="nearest")
        rms = float(np.sqrt(np.nanmean(np.asarray(data, dtype=float) ** 2)))
        ax.set_title(f"{title}  (RMS {rms:.2f} ADU)", fontsize=9)
        ax.set_xlabel("x [px]")
    axes[0].set_ylabel("y [px]")
    fig.colorbar(im, ax=axes, shrink=0.85, label="residual [ADU], scale ±3σ of the raw noise")
    if label:
        fig.suptitle(label, fontsize=9)
    return fig


# --------------------------------------------------------------------------- photometry


def fig_df_histograms(df_by_label: Mapping[str, np.ndarray], bins: int = 60) -> Figure:
    """Histograms of df = (f1 − f2)/sqrt(σ1² + σ2²) side by side, with N(0, 1) overlaid."""
    labels = list(df_by_label)
    fig, axes = plt.subplots(1, len(labels), figsize=(4.0 * len(labels), 3.4),
                             sharey=True, squeeze=False)
    grid = np.linspace(-5, 5, 400)
    gauss = np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
    for ax, lab in zip(axes[0], labels, strict=True):
        d = np.asarray(df_by_label[lab], dtype=float)
        d = d[np.isfinite(d)]
        if d.size:
            p16, p84 = np.percentile(d, [16, 84])
            s68 = (p84 - p16) / 2
            ax.hist(d, bins=np.linspace(-5, 5, bins + 1), density=True, color="C0", alpha=0.7,
                    label=f"N = {d.size}, σ68 = {s68:.2f}")
        ax.plot(grid, gauss, color="k", lw=1.2, label="N(0, 1)")
        ax.set_xlabel("df  [(f1 − f2) / √(σ1² + σ2²)]")
        ax.set_title(lab, fontsize=9)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("probability density")
    fig.tight_layout()
    return fig


def fig_sigma68(table: pd.DataFrame, columns: Mapping[str, str]) -> Figure:
    """σ68 of df versus I_auto bin centre for several flux/error combinations.

    Parameters
    ----------
    table : DataFrame with ``mag_lo``, ``mag_hi`` and the σ68 columns.
    columns : mapping of legend label -> column name.
    """
    fig, ax = plt.subplots(figsize=(6, 3.6))
    centre = 0.5 * (table["mag_lo"] + table["mag_hi"])
    for i, (lab, col) in enumerate(columns.items()):
        if col in table:
            ax.plot(centre, table[col], marker="o", color=f"C{i}", label=lab)
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.axhspan(0.95, 1.05, color="0.85", zorder=0, label="1.00 ± 0.05")
    ax.set_xlabel("I_auto [AB mag]")
    ax.set_ylabel("σ68 of df")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_flux_bias(table: pd.DataFrame, columns: Mapping[str, str], ylabel: str) -> Figure:
    """A flux-bias statistic (e.g. median denoised/raw ratio − 1) versus magnitude bin."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    centre = 0.5 * (table["mag_lo"] + table["mag_hi"])
    for i, (lab, col) in enumerate(columns.items()):
        if col in table:
            ax.plot(centre, table[col], marker="o", color=f"C{i}", label=lab)
    ax.axhline(0.0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("I_auto [AB mag]")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_completeness(tables: Mapping[str, pd.DataFrame]) -> Figure:
    """Detection completeness versus true magnitude, one curve per image kind."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (lab, t) in enumerate(tables.items()):
        centre = 0.5 * (t["mag_lo"] + t["mag_hi"])
        ax.plot(centre, t["completeness"], marker="o", color=f"C{i}", label=lab)
    for lev in (0.5, 0.9):
        ax.axhline(lev, color="0.5", lw=0.7, ls=":")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("true magnitude [AB, in the band]")
    ax.set_ylabel("completeness")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training/speed


def fig_loss(history: pd.DataFrame) -> Figure:
    """Training and validation loss (normalised units²) per epoch."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for col, colour in (("train_loss", "C0"), ("val_loss", "C1")):
        if col in history:
            ax.plot(history["epoch"], history[col], marker="o", color=colour,
                    label=col.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("N2V loss (MSE at blind spots, normalised units²)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_timings(timings: Mapping[str, float]) -> Figure:
    """Wall time per pipeline stage (s)."""
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.35 * max(len(timings), 1)))
    names = list(timings)
    ax.barh(names, [timings[n] for n in names], color="C0")
    ax.invert_yaxis()
    ax.set_xlabel("wall time [s]")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- HTML


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


@dataclass
class ReportSection:
    """One section of the HTML report: a heading, prose, figures (PNG bytes) and tables."""

    title: str
    text: str = ""
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:right}
th{background:#f4f4f4} figure{margin:1em 0} figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
"""


def render_html(
    title: str,
    sections: Sequence[ReportSection],
    *,
    config: Mapping | None = None,
    versions: Mapping[str, str] | None = None,
    timings: Mapping[str, float] | None = None,
) -> str:
    """One self-contained HTML page: figures embedded as base64 PNG, tables inline."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if timings:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{v:.1f}</td></tr>"
            for k, v in timings.items()
        )
        parts.append(f"<h2>Timings per stage [s]</h2><table>{rows}</table>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.text:
            parts.append(f"<p>{sec.text}</p>")
        for caption, png in sec.figures:
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(
                f"<figure><img src='data:image/png;base64,{b64}' style='max-width:100%'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        for caption, table in sec.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>")
            parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.4g}",
                                       border=0, na_rep="—"))
    if config is not None:
        parts.append("<h2>Configuration of this run</h2><pre>")
        parts.append(html.escape(json.dumps(config, indent=2, default=str)))
        parts.append("</pre>")
    if versions:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in versions.items()
        )
        parts.append(f"<h2>Software versions</h2><table>{rows}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def software_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the results."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("pausdenoise", "numpy", "torch", "dask", "distributed", "zarr", "astropy",
                "photutils", "galsim", "pandas", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
