"""Figures of the Noise2Void report (matplotlib), and the PNG rendering of any figure.

Each ``fig_*`` function takes arrays or tables and returns a :class:`matplotlib.figure.Figure`;
:func:`figure_png` renders one to PNG bytes. Images are shown with :func:`asinh_norm` and
:func:`asinh_limits` (asinh stretch, zscale limits), origin lower-left.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval
from matplotlib.figure import Figure

__all__ = [
    "GREY",
    "asinh_limits",
    "asinh_norm",
    "fig_completeness",
    "fig_df_histograms",
    "fig_flux_bias",
    "fig_loss",
    "fig_profile",
    "fig_residuals",
    "fig_sigma68",
    "fig_stamps",
    "fig_timings",
    "figure_png",
]

#: colour map of the image panels
GREY = "gray"


# --------------------------------------------------------------------------- stretches


def asinh_limits(image: np.ndarray) -> tuple[float, float]:
    """Return display limits from astropy's zscale of the finite pixels.

    Parameters
    ----------
    image : ndarray
        Pixel values (ADU); non-finite pixels are ignored.

    Returns
    -------
    tuple of (float, float)
        ``(vmin, vmax)`` with ``vmax > vmin``; ``(0, 1)`` when no pixel is finite.
    """
    vals = image[np.isfinite(image)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = ZScaleInterval().get_limits(vals)
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def asinh_norm(vmin: float, vmax: float) -> ImageNormalize:
    """Return the asinh normalisation (``a = 0.1``) of the report's image panels.

    Parameters
    ----------
    vmin, vmax : float
        Display limits in the image's units (e.g. from :func:`asinh_limits`).

    Returns
    -------
    astropy.visualization.ImageNormalize
        The normalisation to pass to ``imshow(norm=...)``.
    """
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

    Returns
    -------
    Figure
        One row per stamp.
    """
    ncol = 3 if any(s.get("truth") is not None for s in stamps) else 2
    nrow = max(len(stamps), 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.4 * ncol, 2.4 * nrow), squeeze=False)
    titles = ["raw", "denoised", "truth (noiseless)"][:ncol]
    for i, s in enumerate(stamps):
        vmin, vmax = asinh_limits(np.asarray(s["raw"]))
        norm = asinh_norm(vmin, vmax)
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
    """Plot a line profile along one image row through a galaxy: raw vs denoised vs truth.

    Parameters
    ----------
    raw, denoised : ndarray, shape (ny, nx)
        Cutouts in ADU.
    truth : ndarray, shape (ny, nx), or None
        The noiseless cutout in ADU, where known.
    row : int
        The row, 0-based, in the cutout.
    label : str, optional
        Appended to the title.

    Returns
    -------
    Figure
        The profile plot.
    """
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
    label : str, optional
        The figure's title (e.g. the frame).

    Returns
    -------
    Figure
        Two panels sharing one colour scale.
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
    """Plot histograms of df = (f1 − f2)/sqrt(σ1² + σ2²) side by side, with N(0, 1) overlaid.

    Parameters
    ----------
    df_by_label : mapping of str to ndarray
        Panel title → df values (dimensionless); non-finite values are ignored.
    bins : int, optional
        Histogram bins over −5 … 5. Default 60.

    Returns
    -------
    Figure
        One panel per label.
    """
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
    table : DataFrame
        With ``mag_lo``, ``mag_hi`` (AB mag) and the σ68 columns.
    columns : mapping of str to str
        Legend label → column name; absent columns are left out.

    Returns
    -------
    Figure
        σ68 versus magnitude, with the band 1.00 ± 0.05.
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
    """Plot a flux-bias statistic (e.g. median denoised/raw ratio − 1) versus magnitude bin.

    Parameters
    ----------
    table : DataFrame
        With ``mag_lo``, ``mag_hi`` (AB mag) and the statistic's columns.
    columns : mapping of str to str
        Legend label → column name; absent columns are left out.
    ylabel : str
        The y axis label.

    Returns
    -------
    Figure
        The statistic versus magnitude, with zero marked.
    """
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
    """Plot detection completeness versus true magnitude, one curve per image kind.

    Parameters
    ----------
    tables : mapping of str to DataFrame
        Label → table with ``mag_lo``, ``mag_hi`` (AB mag) and ``completeness`` (0–1).

    Returns
    -------
    Figure
        Completeness curves, with 50 % and 90 % marked.
    """
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
    """Plot training and validation loss (normalised units²) per epoch.

    Parameters
    ----------
    history : DataFrame
        With ``epoch`` and ``train_loss`` and/or ``val_loss``.

    Returns
    -------
    Figure
        Loss versus epoch.
    """
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
    """Plot the wall time per pipeline stage.

    Parameters
    ----------
    timings : mapping of str to float
        Stage → wall time in seconds.

    Returns
    -------
    Figure
        Horizontal bars in stage order.
    """
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.35 * max(len(timings), 1)))
    names = list(timings)
    ax.barh(names, [timings[n] for n in names], color="C0")
    ax.invert_yaxis()
    ax.set_xlabel("wall time [s]")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- HTML


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes and close it.

    Parameters
    ----------
    fig : Figure
        The figure (closed afterwards).
    dpi : int, optional
        Resolution in dots per inch. Default 110.

    Returns
    -------
    bytes
        The PNG file's content.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
