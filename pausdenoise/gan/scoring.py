"""Scoring kernels of the cGAN path: arrays and tables in, numbers and tables out.

The ``gan`` stage (:mod:`pausdenoise.pipeline.stages.gan`) reads held-out frames from the
store and hands their images to these functions; nothing here opens a path or a store.

Image kinds (:data:`KINDS`) are the raw single exposure, the N2V-denoised frame, the cGAN
output and the stack of the other exposures. Every image is compared sky-subtracted, in the
single frame's ADU and zero-point. The correlation coefficient is scale-free and comparable
with the published study; the RMS is in ADU (and in units of the frame's sky σ), so only
the ratio generated/single is comparable with the published numbers
(:mod:`pausdenoise.gan.metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import evaluate as ev
from pausdenoise.gan import metrics as gm
from pausdenoise.n2v.normalise import frame_statistics
from pausdenoise.stats import sigma68

__all__ = [
    "KINDS",
    "METRIC_NOTES",
    "bias_rows",
    "bias_table",
    "cut_stamps",
    "detection_rows",
    "detection_summary",
    "kind_mask",
    "metrics_table",
    "pixel_metric_rows",
    "robust_sigma",
    "summary_table",
]

KINDS = ("raw", "denoised", "gan", "stack_others")
"""Image kinds scored: single exposure, N2V output, cGAN output, stack of the others."""

METRIC_NOTES = {
    "pixel correlation": "Pearson r of pixel values; scale-free, comparable with the study",
    "RMS pixel error [ADU]": "ADU of the single frame; the published RMS is in the study's "
                             "own units: compare only ratios",
    "RMS pixel error [frame σ]": "in units of the single frame's sky noise σ",
    "RMS ratio to raw": "comparable with the study: published 7.67e-4/1.24e-3 = 0.62",
}
"""Explanation of each pixel metric, written in the ``note`` column of ``metrics.csv``."""

_NO_PUBLISHED = {"published_single": np.nan, "published_generated": np.nan}


def robust_sigma(values: np.ndarray, valid: np.ndarray) -> float:
    """Return the sigma-clipped MAD σ of the valid pixels of an image.

    Parameters
    ----------
    values : ndarray of float, shape (ny, nx)
        Image in ADU.
    valid : ndarray of bool, shape (ny, nx)
        True where a pixel counts.

    Returns
    -------
    float
        The robust σ in ADU (:func:`pausdenoise.n2v.normalise.frame_statistics`).
    """
    return float(frame_statistics(values, (~valid).astype(np.uint8)).sigma)


def kind_mask(kind: str, mask: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Return the bad-pixel mask of an image kind.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    mask : ndarray of uint8, shape (ny, nx)
        The single frame's mask (non-zero: bad).
    weight : ndarray of float, shape (ny, nx)
        Weight of the stack of the other exposures (1/ADU²; 0: no coverage).

    Returns
    -------
    ndarray of uint8, shape (ny, nx)
        ``mask`` for the single-frame kinds; 1 where the stack has no coverage for
        ``"stack_others"``.
    """
    if kind == "stack_others":
        return (weight <= 0).astype(np.uint8)
    return mask


def pixel_metric_rows(frame: str, images: Mapping[str, np.ndarray],
                      references: Mapping[str, np.ndarray], good: np.ndarray,
                      sigma: float) -> list[dict[str, Any]]:
    """Return the pixel metrics of every image kind against every reference of one frame.

    Parameters
    ----------
    frame : str
        Frame name, written in each row.
    images : mapping of str to ndarray of float, shape (ny, nx)
        Sky-subtracted images by kind, ADU of the frame.
    references : mapping of str to ndarray of float, shape (ny, nx)
        Sky-subtracted references by name (``"stack_others"``, ``"truth"``), ADU.
    good : ndarray of bool, shape (ny, nx)
        Pixels that count (finite values are further required per pair).
    sigma : float
        The frame's sky noise σ in ADU.

    Returns
    -------
    list of dict
        One row per (kind, reference) with a kind different from the reference:
        ``n_pixels``, ``correlation``, ``rms_adu``, ``rms_sigma``, ``mean_adu``.
    """
    rows = []
    for kind, est in images.items():
        for rname, ref in references.items():
            if kind == rname:
                continue
            ok = good & np.isfinite(est) & np.isfinite(ref)
            d = est[ok] - ref[ok]
            rows.append({
                "frame": frame, "kind": kind, "reference": rname, "n_pixels": int(ok.sum()),
                "correlation": gm.pixel_correlation(est, ref, ok),
                "rms_adu": float(np.sqrt(np.mean(d**2))),
                "rms_sigma": float(np.sqrt(np.mean(d**2)) / sigma),
                "mean_adu": float(np.mean(d)),
            })
    return rows


def _pooled(g: pd.DataFrame, col: str, kind: str) -> float:
    """Pool ``col`` of one kind over frames.

    Returns
    -------
    float
        Pixel-weighted mean (quadratic mean for an RMS column); NaN without rows.
    """
    k = g[g["kind"] == kind]
    if k.empty:
        return float("nan")
    w = k["n_pixels"].to_numpy(float)
    if col.startswith("rms"):
        return float(np.sqrt(np.sum(w * k[col].to_numpy() ** 2) / w.sum()))
    return float(np.sum(w * k[col].to_numpy()) / w.sum())


def summary_table(per_frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Pool the per-frame pixel metrics over frames, with the published numbers alongside.

    Parameters
    ----------
    per_frame : DataFrame
        Rows of :func:`pixel_metric_rows` of all frames.

    Returns
    -------
    list of dict
        Per reference (in order of appearance): pixel correlation, RMS [ADU], RMS [frame σ]
        and RMS ratio to raw, one column per kind of :data:`KINDS`; the published values
        only against ``"stack_others"``.
    """
    rows = []
    for ref, g in per_frame.groupby("reference", sort=False):
        pub = ref == "stack_others"
        corr = {k: _pooled(g, "correlation", k) for k in KINDS}
        rms = {k: _pooled(g, "rms_adu", k) for k in KINDS}
        rms_s = {k: _pooled(g, "rms_sigma", k) for k in KINDS}
        rows.append({"metric": "pixel correlation", "reference": ref, **corr,
                     "published_single": gm.PUBLISHED_CORRELATION_SINGLE if pub else np.nan,
                     "published_generated": gm.PUBLISHED_CORRELATION_GENERATED if pub
                     else np.nan})
        rows.append({"metric": "RMS pixel error [ADU]", "reference": ref, **rms,
                     "published_single": gm.PUBLISHED_RMS_SINGLE if pub else np.nan,
                     "published_generated": gm.PUBLISHED_RMS_GENERATED if pub else np.nan})
        rows.append({"metric": "RMS pixel error [frame σ]", "reference": ref, **rms_s,
                     **_NO_PUBLISHED})
        rows.append({"metric": "RMS ratio to raw", "reference": ref,
                     **{k: rms[k] / rms["raw"] for k in KINDS},
                     "published_single": 1.0 if pub else np.nan,
                     "published_generated": gm.PUBLISHED_RMS_GENERATED / gm.PUBLISHED_RMS_SINGLE
                     if pub else np.nan})
    return rows


def detection_summary(true_mags: Sequence[np.ndarray], found: Mapping[str, list[np.ndarray]],
                      purity: Mapping[str, Sequence[int]],
                      mag_bins: Sequence[float]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Return the completeness curves and limits of every image kind with detections.

    Parameters
    ----------
    true_mags : sequence of ndarray of float
        True AB magnitudes of the sources of each frame.
    found : mapping of str to list of ndarray of bool
        Per kind, per frame: whether each true source was detected.
    purity : mapping of str to (int, int)
        Per kind: detections matched to a true source, all detections.
    mag_bins : sequence of float
        Magnitude bin edges (AB).

    Returns
    -------
    completeness : DataFrame
        :func:`pausdenoise.evaluate.completeness_table` of each kind, with a ``kind`` column.
    summary : dict
        Per kind: ``m50`` and ``m90`` (AB), ``purity`` (fraction) and ``detections``.
    """
    mags = np.concatenate(true_mags)
    comp, summary = [], {}
    for kind in found:
        if not found[kind]:
            continue
        tab = ev.completeness_table(mags, np.concatenate(found[kind]), mag_bins)
        tab.insert(0, "kind", kind)
        comp.append(tab)
        real, total = purity[kind]
        summary[kind] = {"m50": ev.completeness_limit(tab, 0.5),
                         "m90": ev.completeness_limit(tab, 0.9),
                         "purity": real / total if total else float("nan"),
                         "detections": total}
    return pd.concat(comp, ignore_index=True), summary


def detection_rows(summary: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """Return the detection rows of ``metrics.csv``.

    Parameters
    ----------
    summary : mapping
        The ``summary`` of :func:`detection_summary`.

    Returns
    -------
    list of dict
        One row per ``m50``, ``m90``, ``purity``, ``detections``; one column per kind.
    """
    return [{"metric": f"detection {metric}", "reference": "truth",
             **{k: summary.get(k, {}).get(metric, np.nan) for k in KINDS}, **_NO_PUBLISHED}
            for metric in ("m50", "m90", "purity", "detections")]


def bias_table(phot: pd.DataFrame, bins: Sequence[float]) -> pd.DataFrame:
    """Return the median relative flux bias and σ68 of the relative error per bin and kind.

    Parameters
    ----------
    phot : DataFrame
        Columns ``kind``, ``I_auto`` (AB mag), ``flux`` and ``flux_truth`` (the same
        aperture on the truth image, ADU).
    bins : sequence of float
        ``I_auto`` bin edges (AB mag).

    Returns
    -------
    DataFrame
        Columns ``kind``, ``bin`` (``"all"`` then ``"lo-hi"``), ``n``, ``median_rel_bias``
        and ``sigma68_rel`` (:func:`pausdenoise.stats.sigma68`) of (f − f_true)/f_true.
    """
    phot = phot.assign(rel=(phot["flux"] - phot["flux_truth"]) / phot["flux_truth"])
    edges = np.asarray(bins, float)
    rows = []
    for kind, g in phot.groupby("kind", sort=False):
        sel_all = [("all", np.ones(len(g), bool))]
        idx = np.digitize(g["I_auto"].to_numpy(), edges) - 1
        sel_bins = [(f"{edges[i]:g}-{edges[i + 1]:g}", idx == i) for i in range(len(edges) - 1)]
        for name, sel in sel_all + sel_bins:
            r = g["rel"].to_numpy()[sel]
            rows.append({"kind": kind, "bin": name, "n": int(sel.sum()),
                         "median_rel_bias": float(np.median(r)) if len(r) else np.nan,
                         "sigma68_rel": sigma68(r)})
    return pd.DataFrame(rows)


def bias_rows(bias: pd.DataFrame) -> list[dict[str, Any]]:
    """Return the photometric bias and scatter rows of ``metrics.csv`` (all magnitudes).

    Parameters
    ----------
    bias : DataFrame
        The output of :func:`bias_table`.

    Returns
    -------
    list of dict
        Median relative bias and σ68 of the relative error, one column per kind.
    """
    allb = bias[bias["bin"] == "all"].set_index("kind")
    return [{"metric": metric, "reference": "truth",
             **{k: float(allb[col].get(k, np.nan)) for k in KINDS}, **_NO_PUBLISHED}
            for col, metric in (
                ("median_rel_bias", "photometric bias (median (f−f_true)/f_true)"),
                ("sigma68_rel", "photometric scatter (σ68 of (f−f_true)/f_true)"))]


def metrics_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Return the rows as the ``metrics.csv`` table, with its ``note`` column.

    Parameters
    ----------
    rows : sequence of mappings
        Rows of :func:`summary_table`, :func:`detection_rows` and :func:`bias_rows`.

    Returns
    -------
    DataFrame
        Columns ``metric``, ``reference``, the kinds, ``published_single``,
        ``published_generated`` and ``note`` (:data:`METRIC_NOTES`).
    """
    tab = pd.DataFrame(list(rows))[["metric", "reference", *KINDS, "published_single",
                                    "published_generated"]]
    tab["note"] = tab["metric"].map(METRIC_NOTES).fillna("")
    return tab


def cut_stamps(truth_table: pd.DataFrame, images: Mapping[str, np.ndarray],
               truth: np.ndarray | None, size: int, n: int,
               frame: str) -> list[dict[str, Any]]:
    """Cut stamps of up to ``n`` galaxies spread in magnitude from every image of a frame.

    Parameters
    ----------
    truth_table : DataFrame
        True sources of the frame: ``x``, ``y`` (0-based pixels), ``is_star``,
        ``mag_true`` (AB), ``ref_id``.
    images : mapping of str to ndarray of float, shape (ny, nx)
        Sky-subtracted images by kind (ADU); must hold ``"raw"``.
    truth : ndarray of float, shape (ny, nx), optional
        Sky-subtracted noiseless image (ADU).
    size : int
        Stamp side in pixels.
    n : int
        Most stamps to cut.
    frame : str
        Frame name, used in the labels.

    Returns
    -------
    list of dict
        Per stamp: one float32 array per kind (and ``"truth"``) and a ``label``.
    """
    h = size // 2
    ny, nx = images["raw"].shape
    t = truth_table
    sel = (~t["is_star"].astype(bool)) & (t["x"] > h) & (t["x"] < nx - h - 1) \
        & (t["y"] > h) & (t["y"] < ny - h - 1)
    t = t[sel].sort_values("mag_true")
    if t.empty:
        return []
    out = []
    for _, r in t.iloc[np.unique(np.linspace(0, len(t) - 1, min(n, len(t))).round()
                                 .astype(int))].iterrows():
        y0, x0 = round(r["y"]) - h, round(r["x"]) - h
        sl = (slice(y0, y0 + size), slice(x0, x0 + size))
        s = {k: v[sl].astype(np.float32) for k, v in images.items()}
        if truth is not None:
            s["truth"] = truth[sl].astype(np.float32)
        s["label"] = f"{frame} ref {int(r['ref_id'])} m={r['mag_true']:.1f}"
        out.append(s)
    return out
