"""Figures of the report's "Stacking and the cGAN" section (matplotlib).

Each ``fig_*`` function takes arrays or tables (as written by the ``gan`` stage) and returns
a :class:`matplotlib.figure.Figure`. Pixel values are sky-subtracted; the image panels use
the report's asinh stretch (:func:`pausdenoise.report.figures.asinh_norm`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pausdenoise.report.figures import asinh_limits, asinh_norm

__all__ = ["fig_detection_mags", "fig_gan_loss", "fig_gan_stamps", "fig_pixel_scatter"]

_STAMP_KINDS = ("raw", "denoised", "gan", "stack_others", "truth")


def fig_pixel_scatter(z: Mapping[str, np.ndarray]) -> Figure:
    """Plot single, denoised and generated pixel values against the stack of the others.

    Sky pixels (truth below 1σ) are grey, source pixels coloured; both axes are symlog.

    Parameters
    ----------
    z : mapping of str to ndarray of float
        Pixel samples in units of the single frame's sky σ, sky-subtracted:
        ``stack_others`` (required), ``raw``, ``denoised``, ``gan`` (those present are
        plotted) and optional ``truth`` (selects the signal pixels).

    Returns
    -------
    Figure
        One panel per kind, titled with its Pearson correlation with the stack.
    """
    kinds = [k for k in ("raw", "denoised", "gan") if k in z]
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.3 * len(kinds), 3.4), squeeze=False)
    ref = z["stack_others"]
    signal = (z["truth"] > 1.0) if "truth" in z else (ref > 1.0)
    lim = (-5, max(float(np.percentile(ref, 99.5)), 10.0))
    for ax, k in zip(axes[0], kinds, strict=True):
        ax.scatter(ref[~signal], z[k][~signal], s=1, c="0.6", alpha=0.3, rasterized=True,
                   label="sky (truth < 1σ)")
        ax.scatter(ref[signal], z[k][signal], s=1, c="C3", alpha=0.4, rasterized=True,
                   label="signal (truth ≥ 1σ)")
        ax.plot(lim, lim, "k-", lw=0.7)
        ax.set_xscale("symlog", linthresh=3)
        ax.set_yscale("symlog", linthresh=3)
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        r = np.corrcoef(ref, z[k])[0, 1]
        ax.set_title(f"{k} (r = {r:.3f})", fontsize=9)
        ax.set_xlabel("stack of the other exposures [σ]")
    axes[0, 0].set_ylabel("pixel value [σ of the single frame]")
    axes[0, 0].legend(fontsize=7, markerscale=6, loc="upper left")
    fig.tight_layout()
    return fig


def fig_detection_mags(z: Mapping[str, np.ndarray], bins: Sequence[float],
                       kinds: Sequence[str]) -> Figure:
    """Plot histograms of the true magnitudes of the sources detected in each image kind.

    Parameters
    ----------
    z : mapping of str to ndarray of float
        True AB magnitudes of the detected sources per kind, and optionally ``all_true``
        (every true source).
    bins : sequence of float
        Magnitude bin edges (AB).
    kinds : sequence of str
        The kinds to plot, in order (colours ``C0``, ``C1``, … by position); those absent
        from ``z`` are skipped.

    Returns
    -------
    Figure
        Step histograms over the filled histogram of all true sources.
    """
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if "all_true" in z:
        ax.hist(z["all_true"], bins=bins, histtype="stepfilled", color="0.85",
                label="all true sources")
    for i, k in enumerate(kinds):
        if k in z:
            ax.hist(z[k], bins=bins, histtype="step", lw=1.4, color=f"C{i}", label=k)
    ax.set_xlabel("true magnitude of detected sources [AB, in the band]")
    ax.set_ylabel("sources")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def fig_gan_stamps(z: Mapping[str, np.ndarray]) -> Figure:
    """Plot stamps: single | N2V | cGAN | stack of the others | truth, one stretch per row.

    Parameters
    ----------
    z : mapping of str to ndarray
        Stacks of stamps, shape (n, size, size), in ADU sky-subtracted: ``raw`` (required;
        it sets each row's zscale limits), optional ``denoised``, ``gan``, ``stack_others``,
        ``truth``; and ``label`` (n strings).

    Returns
    -------
    Figure
        One row per stamp, one column per kind present.
    """
    keys = [k for k in _STAMP_KINDS if k in z]
    n = len(z["raw"])
    fig, axes = plt.subplots(n, len(keys), figsize=(2.1 * len(keys), 2.1 * n), squeeze=False)
    for i in range(n):
        vmin, vmax = asinh_limits(np.asarray(z["raw"][i]))
        norm = asinh_norm(vmin, vmax)
        for j, k in enumerate(keys):
            ax = axes[i, j]
            ax.imshow(z[k][i], origin="lower", cmap="gray", norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(k, fontsize=9)
            if j == 0:
                ax.set_ylabel(str(z["label"][i]), fontsize=7)
    fig.tight_layout()
    return fig


def fig_gan_loss(history: pd.DataFrame) -> Figure:
    """Plot the pix2pix training loss: mean L1 over valid pixels per epoch.

    Parameters
    ----------
    history : DataFrame
        With ``epoch`` (0-based; plotted from 1) and ``loss_l1`` (units of the frame σ).

    Returns
    -------
    Figure
        L1 versus epoch.
    """
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(history["epoch"] + 1, history["loss_l1"], marker="o", label="L1 (valid pixels)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("L1 [σ]")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
