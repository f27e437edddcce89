"""Relative zero-points of exposures from the sources they share.

Exposures whose zero-points were not calibrated (the ingest's default ZP for every frame:
small-telescope frames without photometric keywords) differ by their exposure time and the
sky's transparency: on the real SAAO frames the same stars' fluxes differ by factors 0.5 to
1.55 between exposures. Paired across exposures, such fluxes give Δf dominated by the
exposures' flux scales, not by the errors the comparison is meant to test. The PAUS
analyses calibrate every exposure first; this module does the relative part of that from
the photometry itself.

Model: the calibrated flux of source ``i`` on frame ``e`` (one exposure's CCD) is
``f_ie = s_e · F_i``. With ``y = ln f``, ``z_e = ln s_e`` and ``m_i = ln F_i`` are fitted by
alternating medians (``m_i`` = median over frames of ``y_ie − z_e``, ``z_e`` = median over
sources of ``y_ie − m_i``; robust to variable stars, blends and cosmic rays) on the raw,
unflagged measurements of the sources whose median S/N is at least ``snr_min`` and that are
seen on two frames or more.
Frames with fewer than ``min_sources`` such sources are left out (no scale). The fit
determines the scales up to one factor per set of frames linked by shared sources (a
connected component of the frame–source graph); each set is normalised so that its median
frame has scale 1. The error of ``z_e`` is ``1.2533 · 1.4826 · MAD / √n`` of its residuals
(the standard error of a median). Dividing a frame's calibrated fluxes and errors by its
``s_e`` puts every exposure on one flux scale. The scale takes over the header
zero-point's role, so the header zero-point's error (``zp_err``, where the table has it)
is taken out of each flux error and the scale's own error put in its place, as a
zero-point error is (it is common to the frame's sources, like a zero-point's, and
independent between frames, so it is part of every Δf).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pausdenoise.photometry.calibration import without_zero_point_error

__all__ = ["apply_exposure_scales", "fit_exposure_scales"]

#: The key of a frame in the photometry table.
FRAME_KEYS = ("expnum", "ccd")


def _usable(table: pd.DataFrame, snr_min: float) -> pd.DataFrame:
    """Select the measurements the scales are fitted on.

    A source is used when the median S/N of its raw, unflagged measurements is at least
    ``snr_min``; then all of them are (a cut on each measurement's own S/N would keep the
    upward fluctuations of sources near the cut on the frames of lower S/N, and bias their
    scales up).

    Returns
    -------
    pandas.DataFrame
        ``ref_id``, ``expnum``, ``ccd`` and ``y`` = ln ``flux_cal`` of those measurements
        (positive finite fluxes with positive errors).
    """
    raw = table[table["kind"] == "raw"] if "kind" in table.columns else table
    f = raw["flux_cal"].to_numpy(float)
    e = raw["flux_cal_err"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (raw["flags"].to_numpy() == 0) & np.isfinite(f) & np.isfinite(e) & (e > 0)
    snr = pd.Series(f[ok] / e[ok]).groupby(raw["ref_id"].to_numpy()[ok]).median()
    bright = raw["ref_id"].isin(snr.index[snr >= snr_min]).to_numpy()
    use = ok & bright & (f > 0)
    out = raw.loc[use, ["ref_id", *FRAME_KEYS]].reset_index(drop=True)
    out["y"] = np.log(f[use])
    return out


def _prune(m: pd.DataFrame, min_sources: int) -> pd.DataFrame:
    """Keep sources on two frames or more and frames with ``min_sources`` of them (iterated).

    Returns
    -------
    pandas.DataFrame
        The rows left.
    """
    while True:
        n = len(m)
        per_source = m.groupby("ref_id")["y"].transform("size")
        m = m[per_source >= 2]
        per_frame = m.groupby(list(FRAME_KEYS))["y"].transform("size")
        m = m[per_frame >= min_sources]
        if len(m) == n:
            return m


def _components(fi: np.ndarray, si: np.ndarray, n_frames: int) -> np.ndarray:
    """Label the sets of frames linked by shared sources.

    Returns
    -------
    ndarray of int
        One label per frame index.
    """
    from scipy.sparse import coo_matrix  # scipy: only when scales are fitted
    from scipy.sparse.csgraph import connected_components  # scipy: as above

    n_src = int(si.max()) + 1 if si.size else 0
    a = coo_matrix((np.ones(fi.size), (fi, n_frames + si)),
                   shape=(n_frames + n_src, n_frames + n_src))
    _, labels = connected_components(a, directed=False)
    return labels[:n_frames]


def fit_exposure_scales(table: pd.DataFrame, snr_min: float = 20.0, min_sources: int = 5,
                        iterations: int = 100) -> pd.DataFrame:
    """Fit each frame's flux scale relative to the frames it shares sources with.

    Parameters
    ----------
    table : pandas.DataFrame
        Long photometry table of one band: ``ref_id``, ``expnum``, ``ccd``, ``flags``,
        ``flux_cal``, ``flux_cal_err`` and, when several kinds are in it, ``kind`` (only
        ``raw`` rows are used).
    snr_min : float
        Minimum median ``flux_cal / flux_cal_err`` of a source used.
    min_sources : int
        Minimum number of such sources (each also seen on another frame) per frame.
    iterations : int
        Maximum alternations of the medians (stops when no ``ln s`` moves by 1e-9).

    Returns
    -------
    pandas.DataFrame
        One row per frame of ``table``: ``expnum``, ``ccd``, ``scale`` (NaN for a frame left
        out), ``scale_err``, ``dmag`` = 2.5 log10 ``scale`` (mag the frame's zero-point
        magnitude moves by), ``n_sources``, ``component`` (the set of linked frames; −1
        when left out).
    """
    frames = table[list(FRAME_KEYS)].drop_duplicates().sort_values(list(FRAME_KEYS))
    frames = frames.reset_index(drop=True)
    m = _prune(_usable(table, snr_min), min_sources)
    fitted = m[list(FRAME_KEYS)].drop_duplicates().sort_values(list(FRAME_KEYS))
    fitted = fitted.reset_index(drop=True)
    out = frames.assign(scale=np.nan, scale_err=np.nan, dmag=np.nan, n_sources=0,
                        component=-1)
    if fitted.empty:
        return out
    fi = pd.MultiIndex.from_frame(m[list(FRAME_KEYS)]).map(
        {k: i for i, k in enumerate(pd.MultiIndex.from_frame(fitted))}).to_numpy(int)
    si, _ = pd.factorize(m["ref_id"])
    y = m["y"].to_numpy(float)
    z = np.zeros(len(fitted))
    for _ in range(iterations):
        mi = pd.Series(y - z[fi]).groupby(si).median().to_numpy()
        z_new = np.array(pd.Series(y - mi[si]).groupby(fi).median(), dtype=float)
        moved = np.abs(z_new - z).max()
        z = z_new
        if moved < 1e-9:
            break
    comp = _components(fi, si, len(fitted))
    for c in np.unique(comp):
        z[comp == c] -= np.median(z[comp == c])
    resid = pd.Series(y - mi[si] - z[fi])
    mad = (resid - resid.groupby(fi).transform("median")).abs().groupby(fi).median()
    n = pd.Series(fi).value_counts().sort_index().to_numpy()
    err = 1.2533 * 1.4826 * mad.to_numpy() / np.sqrt(n)
    res = fitted.assign(scale=np.exp(z), scale_err=np.exp(z) * err,
                        dmag=2.5 * np.log10(np.exp(z)), n_sources=n, component=comp)
    return out.drop(columns=["scale", "scale_err", "dmag", "n_sources", "component"]).merge(
        res, on=list(FRAME_KEYS), how="left").fillna({"n_sources": 0, "component": -1}).astype(
        {"n_sources": np.int64, "component": np.int64})


def apply_exposure_scales(table: pd.DataFrame, scales: pd.DataFrame) -> pd.DataFrame:
    """Divide each frame's calibrated fluxes and errors by its scale.

    Parameters
    ----------
    table : pandas.DataFrame
        Long photometry table (``expnum``, ``ccd``, ``flux_cal``, ``flux_cal_err``; raw and
        denoised rows alike: the scale is the exposure's), and ``zp`` and ``zp_err`` when
        the header zero-points' errors are to be replaced by the scales' (without them the
        errors are taken as the measurements' own).
    scales : pandas.DataFrame
        :func:`fit_exposure_scales`' table.

    Returns
    -------
    pandas.DataFrame
        The rows of frames with a scale (frames left out of the fit are dropped: they cannot
        be compared on the common scale), ``flux_cal`` divided by it and ``flux_cal_err``
        by it with the scale's own error in place of the header zero-point's::

            σ' = sqrt((σ_c/s)² + (f/s)² (σ_s/s)²)

        (``σ_c``: ``flux_cal_err`` without the zero-point's error,
        :func:`~pausdenoise.photometry.calibration.without_zero_point_error`; ``σ_s`` =
        ``scale_err``, a missing one counts as 0); other columns unchanged, fresh index.
    """
    cols = [*FRAME_KEYS, "scale", *(["scale_err"] if "scale_err" in scales.columns else [])]
    s = scales.dropna(subset=["scale"])[cols]
    out = table.merge(s, on=list(FRAME_KEYS), how="inner")
    scale = out["scale"].to_numpy(float)
    rel = (out["scale_err"].fillna(0.0).to_numpy(float) / scale if "scale_err" in out.columns
           else np.zeros(len(out)))
    f = out["flux_cal"].to_numpy(float)
    e = out["flux_cal_err"].to_numpy(float)
    if {"zp", "zp_err"} <= set(out.columns):
        e = without_zero_point_error(f, e, out["zp"].to_numpy(float),
                                     out["zp_err"].to_numpy(float))
    f, e = f / scale, e / scale
    out["flux_cal"] = f
    out["flux_cal_err"] = np.sqrt(e * e + (f * rel) ** 2)
    return out.drop(columns=[c for c in ("scale", "scale_err") if c in out.columns])
