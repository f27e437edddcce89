"""Evaluate stage: metrics of raw and denoised frames against the truth or other exposures.

Simulated frames are scored against their noiseless truth; real data without truth against
independent exposures of the same band.

Frames are read one at a time (out of core). Evaluated frames are the exposures held out of
training (``holdout_exposures_per_band``), or every frame when none is held out. A frame with
a ``truth`` array (simulation) is scored against it; a frame without one is scored with the
independent-exposure estimator of :mod:`pausdenoise.evaluate` (``MSE to truth = MSE to an
independent exposure − that exposure's noise variance``), with references found and matched
by :mod:`pausdenoise.pipeline.references`: every other exposure of its band (any exposure
number but its own; training exposures included unless ``evaluate.reference_pool`` keeps to
the held-out ones, as it does for ``train.method: n2n``) whose footprint covers at
least ``evaluate.min_overlap`` of its good pixels is a candidate reference (the
``evaluate.max_references`` with the largest coverage are used), brought onto the frame's grid
by :func:`pausdenoise.evaluate.reference_on_grid`. Frames without a WCS (small-telescope
exposures of one field): every other exposure of the band on the same CCD is registered to
the frame by FFT cross-correlation (:func:`pausdenoise.register.measure_offset`); its
coverage is the overlap at the measured offset, and the offset, rounded to whole pixels,
stands in for the WCS (:func:`pausdenoise.register.shift_wcs`), so references are exact
copies whose noise stays independent and uncorrelated (the ≤ 0.5 px rounding only touches
pixels with signal: a Δ term of :mod:`pausdenoise.evaluate`). An exposure that cannot be
registered is not a reference (reason in ``registration.csv``). With
``evaluate.reference_kernel`` > 0 up to ``evaluate.reference_candidates`` references are each
brought to the frame's seeing, sub-pixel position and flux scale by a fitted pixel kernel
(:mod:`pausdenoise.reference_match`) and the ``max_references`` fitted best are used; with
``evaluate.reference_model: psf`` their kernels keep the fitted shift and plane, take the flux
scale from sums over bright pixels and the shape from the kernel between the two PSF models.
``evaluate.max_seeing_ratio`` keeps a frame's references to exposures whose PSF FWHM is at most
that ratio times its own (no kernel sharpens a broader one; with ``reference_model: psf`` use
1); a frame left with none is skipped, the setting named in ``skipped.csv``.
Writes into ``<run>/evaluate/``:

- ``pixel_metrics.csv``: per frame, image kind (raw | denoised, and without truth the
  baselines ``blur_sigma_<σ>``: the raw frame blurred, ``evaluate.blur_sigmas``) and pixel
  class (sky | source): ``reference`` (truth | independent-exposure), ``estimator``
  (exact | triplet | equal-noise), n_pixels, rms [ADU], psnr_db, ssim (truth only), mse
  [ADU²] and, without truth, mse_se, mse_to_reference, noise_var_reference [ADU²],
  noise_var_model [ADU²] (the frame's noise model over the class's pixels: the raw frame's
  true MSE; NaN without a gain), n_references;
- ``pixel_summary.csv``: the same pooled over frames per reference, with the RMS reduction
  factor raw/denoised per class; the summary's ``best_blur_sigma_<class>_independent`` and
  ``denoised_over_best_blur_<class>_independent`` (best blur's RMS / denoised RMS) say whether
  the denoiser beats every blur on the same pixels and references;
  ``raw_mse_over_noise_model_<class>_independent`` (the raw frame's estimated MSE over its
  noise model: near 1 where the references hold the frame's truth; far above, what they
  miss of it dominates that class's scores);
- ``independent_references.csv`` (without truth): the estimate with each reference alone
  and its noise variance (they must agree within their errors), its coverage and its match
  (``flux_scale`` frame / reference, kernel centroid ``shift_x_px``/``shift_y_px``,
  ``background_adu``, ``kernel_fit_rms``, ``kernel_fit_pixels``);
- ``registration.csv`` (frames without a WCS): per pair registered, ``frame``,
  ``other_frame``, ``dx_px``, ``dy_px`` (position in the other frame minus position in the
  frame, px, 0-based), ``significance``, ``overlap``, ``error`` (empty when registered);
  the summary's ``registration`` gives the pairs, failures, largest offset (px) and
  smallest significance;
- ``skipped.csv``: frames that could not be evaluated and why (e.g. no independent exposure
  in the band) — recorded, not an error;
- ``completeness.csv``: detection completeness per true-magnitude bin for raw and denoised,
  ``detection_summary.json``: 50 %/90 % completeness magnitudes and purity (truth only);
- ``depth_sweep.csv``, ``depth.csv``, ``depth_completeness.csv``, ``depth_gain.csv``
  (``evaluate.depth``; frames with truth, and the injected store when ``inject/truth.parquet``
  exists): one detection engine (:mod:`pausdenoise.detection`) swept over thresholds on
  every image kind of the frame (raw, denoised, and ``gan`` / ``stack_others`` where the
  frame has them; a kind missing on some frame is left out); per kind and threshold the
  purity, detections and completeness per magnitude bin (``evaluate.depth_mag_column``);
  per kind and purity target (``evaluate.depth_purity_targets``) the threshold, m50 and m90
  (AB) with 95 % bootstrap intervals, the completeness curve, and the gain over raw (mag,
  paired bootstrap). Column ``truth``: ``simulation`` (every simulated source) or
  ``injected`` (completeness of the injected sources; purity measured against injections
  plus the simulation's sources on simulated frames, estimated from the negated image on
  real ones). The summary's ``depth`` holds the same numbers;
- ``stamps.npz``: cutouts (raw, denoised, truth) of galaxies at several magnitudes for the
  report, with their labels (truth only);
- ``residuals.npz``: raw − truth and denoised − truth over a central cutout of one frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import detection as dt
from pausdenoise import evaluate as ev
from pausdenoise import reference_match as rm
from pausdenoise import store as st
from pausdenoise.errors import PsfError
from pausdenoise.n2v.normalise import frame_statistics
from pausdenoise.pipeline.context import Context, split_holdout
from pausdenoise.pipeline.references import (
    Registry,
    frame_arrays,
    frame_fwhm,
    matched_references,
    no_broader,
)
from pausdenoise.pipeline.stages.photometry import read_frame_catalogue
from pausdenoise.psf import frame_psf
from pausdenoise.stats import MAD_TO_SIGMA, pixel_noise_sigma

__all__ = ["run"]


def _source_mask(rows: pd.DataFrame, shape, pixel_scale: float) -> np.ndarray:
    return ev.aperture_pixel_mask(
        shape,
        rows["aperture_x"].to_numpy(),
        rows["aperture_y"].to_numpy(),
        rows["aperture_a"].to_numpy() / pixel_scale,
        rows["aperture_b"].to_numpy() / pixel_scale,
        -np.deg2rad(rows["aperture_theta"].to_numpy()),  # PAUS sign convention
    )


def _pool(metrics: pd.DataFrame) -> pd.DataFrame:
    """Pool per-frame metrics over frames, per reference, kind and pixel class.

    MSE pixel-weighted (so the RMS is that of all pixels together), PSNR/SSIM as
    pixel-weighted means, the MSE standard error as for independent frames; then the RMS
    reduction raw/denoised per reference and class (raw/blur on the blur baselines' rows).

    Returns
    -------
    DataFrame
        One row per reference, estimator, kind and pixel class, with ``rms_reduction``.
    """
    rows = []
    keys = ["reference", "estimator", "kind", "pixel_class"]
    for (ref, est, kind, cls), g in metrics.groupby(keys, sort=False):
        ok = g["mse"].notna().to_numpy() & (g["n_pixels"].to_numpy() > 0)
        g = g[ok]
        n = g["n_pixels"].to_numpy(float)
        w = n / n.sum() if n.sum() else n
        mse = float(np.sum(w * g["mse"].to_numpy())) if len(g) else np.nan
        se = g["mse_se"].to_numpy(float)
        rows.append({
            "reference": ref,
            "estimator": est,
            "kind": kind,
            "pixel_class": cls,
            "n_frames": len(g),
            "n_pixels": int(n.sum()),
            "rms": float(np.sqrt(mse)) if mse > 0 else np.nan,
            "mse": mse,
            "mse_se": float(np.sqrt(np.sum((w * se) ** 2))) if np.isfinite(se).all() and len(g)
            else np.nan,
            "psnr_db": float(np.sum(w * g["psnr_db"].to_numpy())) if len(g) else np.nan,
            "ssim": float(np.sum(w * g["ssim"].to_numpy())) if len(g) else np.nan,
            "noise_var_model": (float(np.sum(w * g["noise_var_model"].to_numpy()))
                                if len(g) else np.nan),
        })
    out = pd.DataFrame(rows)
    out["rms_reduction"] = np.nan
    for _, g in out.groupby(["reference", "estimator", "pixel_class"], sort=False):
        kinds = dict(zip(g["kind"], g["rms"], strict=True))
        if {"raw", "denoised"} <= set(kinds):
            out.loc[g.index, "rms_reduction"] = kinds["raw"] / kinds["denoised"]
        for i in g.index[g["kind"].str.startswith(_BLUR)]:  # a blur: raw / its own RMS
            out.loc[i, "rms_reduction"] = kinds.get("raw", np.nan) / out.loc[i, "rms"]
    return out


def _truth_columns(m: pd.DataFrame) -> pd.DataFrame:
    """Give the truth path's metrics the layout shared with the independent-exposure path.

    Returns
    -------
    DataFrame
        A copy with ``mse``, ``estimator`` and the independent-exposure columns (NaN).
    """
    m = m.copy()
    m["mse"] = m["rms"] ** 2
    for col in ("mse_se", "mse_to_reference", "noise_var_reference", "noise_var_model",
                "n_references"):
        m[col] = np.nan
    m["estimator"] = "exact"
    return m


_OUTPUTS = ("pixel_metrics.csv", "pixel_summary.csv", "independent_references.csv",
            "skipped.csv", "completeness.csv", "detection_summary.json", "stamps.npz",
            "residuals.npz", "registration.csv", "summary.json", "depth_sweep.csv",
            "depth.csv", "depth_completeness.csv", "depth_gain.csv")

#: Kind prefix of the blurred raw images scored as baselines (``evaluate.blur_sigmas``).
_BLUR = "blur_sigma_"

_METRIC_COLUMNS = ["frame", "kind", "reference", "estimator", "pixel_class", "n_pixels", "rms",
                   "mse", "mse_se", "psnr_db", "ssim", "mse_to_reference",
                   "noise_var_reference", "noise_var_model", "n_references"]


# --------------------------------------------------------------------------- without truth


def _good_pixels(arr: dict[str, np.ndarray], image: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Select the pixels usable for the metrics.

    Returns
    -------
    ndarray of bool
        Finite in image and denoised, unmasked, positive inverse variance.
    """
    good = np.isfinite(image) & np.isfinite(den)
    if "mask" in arr:
        good &= arr["mask"] == 0
    if "ivar" in arr:
        good &= np.isfinite(arr["ivar"]) & (arr["ivar"] > 0)
    return good


def _noise_model_variance(row: pd.Series, raw: np.ndarray, sky: float, refs: list[np.ndarray],
                          classes: dict[str, np.ndarray], pixel_sigma: float | None = None
                          ) -> dict[str, float]:
    """Return the mean of the frame's noise-model variance over each class's pixels.

    Per pixel ``(sky + light) / gain + read noise²`` (ADU²; gain in e⁻/ADU and read noise
    from the frame's row of the exposure table, the light from the references' mean, at least 0:
    :func:`pausdenoise.reference_match.noise_variance`): the raw frame's own MSE, which its
    estimated MSE equals where the references hold its truth.

    Parameters
    ----------
    row : Series
        The frame's row of the exposure table (``gain``, ``rdnoise``).
    raw : ndarray (ny, nx)
        Its raw pixels, sky-subtracted ADU, NaN where unusable.
    sky : float
        Its sky level, ADU.
    refs : list of ndarray (ny, nx)
        Its matched references, sky-subtracted ADU, NaN where invalid.
    classes : dict of str to ndarray of bool
        The scored pixels of each class.
    pixel_sigma : float, optional
        The raw frame's pixel noise σ, ADU, when already measured.

    Returns
    -------
    dict of str to float
        Class → mean variance, ADU² (NaN for every class without a gain: a gain estimated
        from the frame's own scatter would make the comparison circular).
    """
    gain, rn_adu = rm.frame_noise(row)
    if gain is None:
        return dict.fromkeys(classes, np.nan)
    var = rm.noise_variance(raw, np.isfinite(raw), refs, sky, gain, rn_adu, pixel_sigma)
    return {c: float(var[sel].mean()) if sel.any() else np.nan for c, sel in classes.items()}


def _independent_metrics(ctx: Context, frame: str, row: pd.Series,
                         estimates: dict[str, np.ndarray], raw: np.ndarray,
                         refs: list[np.ndarray], names: list[str], coverage: list[float],
                         good: np.ndarray, catalogue: pd.DataFrame | None,
                         matches: pd.DataFrame | None = None, sky: float = 0.0,
                         sky_sigma: float | None = None
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score the frame's estimates against its references.

    ``sky`` (ADU) enters the noise model of ``noise_var_model``
    (:func:`_noise_model_variance`); ``sky_sigma`` (the raw frame's pixel-to-pixel noise σ,
    ADU: :func:`~pausdenoise.stats.pixel_noise_sigma`) sets the ``low_snr`` class (none
    without it).

    Returns
    -------
    tuple of (DataFrame, DataFrame)
        The frame's metrics (all references combined) and the estimate with each
        reference alone.
    """
    cfg = ctx.cfg.evaluate
    common = good.copy()
    for r in refs:
        common &= np.isfinite(r)
    source_mask = None
    if catalogue is not None:
        rows = catalogue[(catalogue["expnum"] == int(row["expnum"]))
                         & (catalogue["ccd"] == row["ccd"])]
        if len(rows):
            source_mask = _source_mask(rows, raw.shape, ctx.cfg.photometry.pixel_scale)
    mean_refs = np.mean(refs, axis=0)
    classes = ev.pixel_classes_without_truth(
        mean_refs, common, source_mask=source_mask, threshold=cfg.source_threshold,
        fwhm=cfg.detection_fwhm, margin=cfg.sky_margin, noise_sigma=sky_sigma,
        low_snr_max=cfg.low_snr_max)
    estimator = "triplet" if len(refs) >= 2 else "equal-noise"
    res = ev.independent_exposure_metrics(estimates, raw, refs, classes, estimator=estimator)
    metrics = res.combined.copy()
    metrics.insert(0, "frame", frame)
    metrics["reference"] = ev.REFERENCE_INDEPENDENT
    scored = {c: sel & common & np.isfinite(raw) for c, sel in classes.items()}
    metrics["noise_var_model"] = metrics["pixel_class"].map(
        _noise_model_variance(row, raw, sky, refs, scored, sky_sigma))
    per_ref = res.per_reference.copy()
    per_ref.insert(0, "frame", frame)
    idx = per_ref["reference_index"].to_numpy()
    per_ref.insert(1, "reference_frame", np.asarray(names)[idx])
    per_ref.insert(2, "coverage", np.asarray(coverage)[idx])
    per_ref = per_ref.drop(columns=["reference_index", "n_references", "psnr_db", "ssim"])
    if matches is not None and len(matches):
        per_ref = per_ref.join(matches, on="reference_frame")
    return metrics, per_ref


def _independent_frame(
    ctx: Context,
    frame: str,
    arr: dict[str, np.ndarray],
    exposures: pd.DataFrame,
    catalogue: pd.DataFrame | None,
    reg: Registry,
    pool: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame] | str:
    """Score one frame without truth against its independent exposures.

    ``pool`` limits the references to these frames (see ``evaluate.reference_pool``).

    Returns
    -------
    tuple of (DataFrame, DataFrame) or str
        ``(metrics, per_reference)``, or the reason the frame is skipped.
    """
    cfg = ctx.cfg.evaluate
    row = exposures.set_index("frame").loc[frame]
    image, den = arr["image"].astype(np.float64), arr["denoised"].astype(np.float64)
    good = _good_pixels(arr, image, den)
    if good.sum() < 2:
        return "no good pixel"
    try:
        sky = frame_statistics(image, (~good).astype(np.uint8)).sky
    except ValueError as exc:
        return f"no sky level: {exc}"
    raw = np.where(good, image - sky, np.nan)
    estimates = {"raw": raw, "denoised": np.where(good, den - sky, np.nan)}
    for s in cfg.blur_sigmas:  # the baselines: the raw frame blurred
        estimates[f"{_BLUR}{s:g}"] = np.where(good, ev.gaussian_blur(raw, good, s), np.nan)
    refs = matched_references(ctx, frame, exposures, image, good, sky, reg, pool)
    if isinstance(refs, str):
        return refs
    if len(refs.values) == 1 and cfg.single_reference == "skip":
        return (f"one independent exposure ({refs.frames[0]}) in band {row['band']}: its "
                "noise variance needs a second (evaluate.single_reference='equal-noise' "
                "assumes equal noise instead)")
    return _independent_metrics(ctx, frame, row, estimates, raw, refs.values, refs.frames,
                                refs.coverage, good, catalogue, refs.matches, sky,
                                pixel_noise_sigma(raw, good))


# --------------------------------------------------------------------------- with truth


@dataclass
class _Tally:
    """What the frames of the stage add up to, frame by frame."""

    metric_rows: list[pd.DataFrame] = field(default_factory=list)
    ref_rows: list[pd.DataFrame] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    found: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {"raw": [], "denoised": []})
    true_mags: list[np.ndarray] = field(default_factory=list)
    purity_counts: dict[str, list[int]] = field(
        default_factory=lambda: {"raw": [0, 0], "denoised": [0, 0]})
    stamps: list[dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0
    registry: Registry = field(default_factory=Registry)
    depth: dict[str, list[dt.FrameSweep]] = field(default_factory=dict)
    depth_mags: list[np.ndarray] = field(default_factory=list)


def _write_residuals(out_dir: Path, frame: str, image: np.ndarray, truth: np.ndarray,
                     den: np.ndarray, good: np.ndarray, sigma: float) -> None:
    """``residuals.npz``: raw − truth and denoised − truth over a central cutout."""
    h = min(128, image.shape[0] // 2, image.shape[1] // 2)
    cy, cx = image.shape[0] // 2, image.shape[1] // 2
    sl = (slice(cy - h, cy + h), slice(cx - h, cx + h))
    res_raw = np.where(good, image - truth, np.nan)[sl]  # masked pixels blank
    res_den = np.where(good, den - truth, np.nan)[sl]
    np.savez_compressed(out_dir / "residuals.npz", raw=res_raw, denoised=res_den,
                        sigma=sigma, frame=frame)


def _truth_detections(ctx: Context, frame: str, arr: dict[str, np.ndarray],
                      t: pd.DataFrame, sky: float, sigma: float, tally: _Tally,
                      stamps: bool) -> None:
    """Detect on raw and denoised, match with the true sources, pick stamps if asked."""
    cfg = ctx.cfg.evaluate
    image, truth, den = arr["image"], arr["truth"], arr["denoised"]
    mask = arr.get("mask", np.zeros(image.shape, np.uint8))
    t = t.rename(columns={"x_true": "x", "y_true": "y"})
    thr = cfg.detection_threshold * ev.smoothed_noise_sigma(sigma, cfg.detection_fwhm)
    tally.true_mags.append(t["mag_true"].to_numpy())
    for kind, est in (("raw", image), ("denoised", den)):
        det = ev.detect(est, sky, thr, mask, cfg)
        f, real = ev.match_detections(det, t, cfg.match_radius)
        tally.found[kind].append(f)
        tally.purity_counts[kind][0] += int(real.sum())
        tally.purity_counts[kind][1] += len(real)
    n_stamps = ctx.cfg.report.n_stamps
    if len(tally.stamps) < n_stamps and stamps:
        tally.stamps += _pick_stamps(t, image, den, truth, ctx.cfg.report.stamp_size,
                                     n_stamps - len(tally.stamps), frame)


def _truth_frame(ctx: Context, frame: str, arr: dict[str, np.ndarray],
                 catalogue: pd.DataFrame | None, truth_tab: pd.DataFrame | None,
                 tally: _Tally) -> None:
    """Score one simulated frame against its noiseless truth."""
    cfg = ctx.cfg.evaluate
    tally.evaluated += 1
    attrs = st.frame_attrs(ctx.store, frame)
    image, truth, den = arr["image"], arr["truth"], arr["denoised"]
    mask = arr.get("mask", np.zeros(image.shape, np.uint8))
    good = (mask == 0) & np.isfinite(image)
    sky = float(np.median(truth[good]))
    resid = (image - truth)[good]
    sigma = float(MAD_TO_SIGMA * np.median(np.abs(resid - np.median(resid))))
    classes = {"sky": ev.sky_pixel_mask(truth, sky, sigma, good, cfg.sky_tolerance)}
    rows = None
    if catalogue is not None:
        rows = catalogue[(catalogue["expnum"] == attrs["expnum"])
                         & (catalogue["ccd"] == attrs["ccd"])]
        classes["source"] = _source_mask(rows, image.shape, ctx.cfg.photometry.pixel_scale) \
            & good
    classes["low_snr"] = ev.low_snr_pixel_mask(truth - sky, good, sigma, cfg.sky_tolerance,
                                               cfg.low_snr_max)
    if tally.evaluated == 1:  # residual maps of the first evaluated frame, central cutout
        _write_residuals(ctx.paths.evaluate, frame, image, truth, den, good, sigma)
    for kind, est in (("raw", image), ("denoised", den)):
        m = ev.pixel_metrics(est, truth, classes, ssim_sigma=cfg.ssim_sigma)
        m.insert(0, "kind", kind)
        m.insert(0, "frame", frame)
        m["reference"] = ev.REFERENCE_TRUTH
        tally.metric_rows.append(_truth_columns(m))
    if truth_tab is not None:
        t = truth_tab[(truth_tab["expnum"] == attrs["expnum"])
                      & (truth_tab["ccd"] == attrs["ccd"])]
        _truth_detections(ctx, frame, arr, t, sky, sigma, tally, stamps=rows is not None)
        if cfg.depth:
            _depth_frame(ctx, frame, _depth_images(ctx.store, frame, arr), attrs, t, tally)


# --------------------------------------------------------------------------- depth

#: image kind -> frame array swept for the depth; "gan" and "stack_others" are the names
#: of ``pipeline.stages.gan.GAN_ARRAY`` and ``pipeline.stages.stack.OTHERS_ARRAY`` (not
#: imported: those stages pull in torch)
_DEPTH_ARRAYS = {"raw": "image", "denoised": "denoised", "gan": "gan", "stack": "stack_others"}
_STACK_WEIGHT = "stack_others_weight"


def _depth_settings(cfg: ev.EvaluateConfig) -> dt.DetectionSettings:
    return dt.DetectionSettings(
        npixels=cfg.depth_npixels, background_box=cfg.depth_background_box,
        deblend=cfg.depth_deblend, deblend_nlevels=cfg.depth_deblend_nlevels,
        deblend_contrast=cfg.depth_deblend_contrast,
        match_radius_fwhm=cfg.depth_match_radius_fwhm,
        smooth_fwhm_factor=cfg.depth_smooth_fwhm_factor)


def _depth_fwhm(ctx: Context, attrs: dict[str, Any]) -> float:
    """Return the detection kernel's FWHM (px): config, else the frame's PSF header.

    Returns
    -------
    float
        ``evaluate.depth_fwhm``, else ``psf_fwhm_px`` or ``seeing`` / pixel scale, else
        ``evaluate.detection_fwhm``.
    """
    cfg = ctx.cfg.evaluate
    if cfg.depth_fwhm is not None:
        return float(cfg.depth_fwhm)
    try:
        return float(frame_psf(attrs, pixel_scale=ctx.cfg.photometry.pixel_scale).fwhm_px)
    except PsfError:
        return float(cfg.detection_fwhm)


def _depth_images(store: Any, frame: str, arr: dict[str, np.ndarray]
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Collect the frame's image kinds with their bad-pixel masks.

    Returns
    -------
    dict
        kind -> (image in ADU, mask: non-zero = bad); raw and denoised always, the cGAN
        output and the leave-one-out stack when the frame has them.
    """
    mask = arr.get("mask", np.zeros(arr["image"].shape, np.uint8))
    names = st.frame_arrays(store, frame)
    out = {}
    for kind, name in _DEPTH_ARRAYS.items():
        if name in arr:
            out[kind] = (arr[name], mask)
        elif name in names:
            img = np.asarray(st.open_frame(store, frame, name), dtype=np.float64)
            bad = mask != 0
            if kind == "stack" and _STACK_WEIGHT in names:
                bad = bad | ~(np.asarray(st.open_frame(store, frame, _STACK_WEIGHT)) > 0)
            out[kind] = (img, bad.astype(np.uint8))
    return out


def _depth_truth(t: pd.DataFrame, shape: tuple[int, ...]) -> pd.DataFrame:
    """Keep the true sources inside the frame, with their brightness key.

    Returns
    -------
    DataFrame
        The rows with ``-0.5 <= x, y < n - 0.5`` and ``flux_order`` = −mag_true.
    """
    x = t["x_true"].to_numpy() if "x_true" in t else t["x"].to_numpy()
    y = t["y_true"].to_numpy() if "y_true" in t else t["y"].to_numpy()
    inside = (x >= -0.5) & (x < shape[1] - 0.5) & (y >= -0.5) & (y < shape[0] - 0.5)
    out = t[inside].copy()
    out["x_true"], out["y_true"] = x[inside], y[inside]
    out["flux_order"] = -out["mag_true"].to_numpy(float)
    return out.reset_index(drop=True)


def _depth_frame(ctx: Context, frame: str, images: dict[str, tuple[np.ndarray, np.ndarray]],
                 attrs: dict[str, Any], t: pd.DataFrame, tally: _Tally,
                 complete: bool = True, score: np.ndarray | None = None) -> None:
    """Sweep the detection thresholds on every image kind of one frame."""
    cfg = ctx.cfg.evaluate
    truth = _depth_truth(t, images["raw"][0].shape)
    fwhm = _depth_fwhm(ctx, attrs)
    settings = _depth_settings(cfg)
    mags = truth[cfg.depth_mag_column].to_numpy(float)
    if score is not None:
        mags = np.where(truth["ref_id"].isin(score).to_numpy(), mags, np.nan)
    tally.depth_mags.append(mags)
    for kind, (img, mask) in images.items():
        sw = dt.sweep_image(img, mask, fwhm, truth, cfg.depth_thresholds, settings,
                            truth_complete=complete)
        tally.depth.setdefault(kind, []).append(sw)


def _depth_result(ctx: Context, tally: _Tally) -> dt.DepthResult | None:
    """Compare the kinds swept on every frame (a kind missing on some frame is left out).

    Returns
    -------
    DepthResult or None
        None when nothing was swept.
    """
    cfg = ctx.cfg.evaluate
    n = len(tally.depth_mags)
    sweeps = {k: v for k, v in tally.depth.items() if len(v) == n}
    if not n or "raw" not in sweeps:
        return None
    for k in set(tally.depth) - set(sweeps):
        print(f"evaluate: depth of {k!r} left out: present on {len(tally.depth[k])} of "
              f"{n} frames")
    return dt.depth_analysis(sweeps, np.concatenate(tally.depth_mags), cfg.depth_thresholds,
                             cfg.mag_bins, cfg.depth_purity_targets, cfg.depth_bootstrap)


def _injected_depth(ctx: Context, frames: list[str]) -> dt.DepthResult | None:
    """Depth on the injected store: completeness of the injected sources.

    The matching truth is the injections plus, on simulated frames, the simulation's
    sources (then purity is measured; on real frames it is estimated from the negated image).

    Returns
    -------
    DepthResult or None
        None without ``inject/truth.parquet`` and ``inject/store.zarr``.
    """
    tpath, spath = ctx.paths.inject / "truth.parquet", ctx.paths.inject / "store.zarr"
    if not (tpath.exists() and spath.exists()):
        return None
    inj = pd.read_parquet(tpath)
    sim = pd.read_parquet(ctx.truth_fluxes) if ctx.truth_fluxes else None
    have = set(st.list_frames(spath))
    tally = _Tally()
    for frame in frames:
        if frame not in have or "denoised" not in st.frame_arrays(spath, frame):
            continue
        attrs = st.frame_attrs(spath, frame)
        arr = frame_arrays(spath, frame)
        rows = inj[(inj["expnum"] == attrs["expnum"]) & (inj["ccd"] == attrs["ccd"])]
        others = pd.DataFrame() if sim is None else \
            sim[(sim["expnum"] == attrs["expnum"]) & (sim["ccd"] == attrs["ccd"])]
        t = pd.concat([rows, others], ignore_index=True)
        images = {k: (arr[a], arr.get("mask", np.zeros(arr["image"].shape, np.uint8)))
                  for k, a in (("raw", "image"), ("denoised", "denoised"))}
        _depth_frame(ctx, frame, images, attrs, t, tally, complete=not others.empty,
                     score=rows["ref_id"].to_numpy())
    return _depth_result(ctx, tally)


def _depth_summary(res: dt.DepthResult) -> dict[str, Any]:
    """Condense a depth result for ``summary.json``.

    Returns
    -------
    dict
        kind -> purity target -> threshold and m50/m90 with intervals; ``gain`` -> kind ->
        purity target -> dm50/dm90 with intervals (mag).
    """
    out: dict[str, Any] = {}
    for _, r in res.depth.iterrows():
        out.setdefault(r["kind"], {})[f"{r['purity_target']:g}"] = {
            k: float(r[k]) for k in ("threshold", "m50", "m50_lo", "m50_hi", "m90", "m90_lo",
                                     "m90_hi")}
    for _, r in res.gains.iterrows():
        out.setdefault("gain", {}).setdefault(r["kind"], {})[f"{r['purity_target']:g}"] = {
            k: float(r[k]) for k in ("dm50", "dm50_lo", "dm50_hi", "dm90", "dm90_lo",
                                     "dm90_hi")}
    return out


def _write_depth(ctx: Context, frames: list[str], tally: _Tally) -> dict[str, Any]:
    """``depth_sweep.csv``, ``depth.csv``, ``depth_completeness.csv``, ``depth_gain.csv``.

    Returns
    -------
    dict
        The summary's ``depth`` entry (empty when nothing was swept).
    """
    results = {"simulation": _depth_result(ctx, tally),
               "injected": _injected_depth(ctx, frames)}
    results = {k: v for k, v in results.items() if v is not None}
    if not results:
        return {}
    out_dir = ctx.paths.evaluate
    for name, attr in (("depth_sweep.csv", "sweep"), ("depth.csv", "depth"),
                       ("depth_completeness.csv", "curves"), ("depth_gain.csv", "gains")):
        pd.concat([getattr(r, attr).assign(truth=k) for k, r in results.items()],
                  ignore_index=True).to_csv(out_dir / name, index=False)
    summary = {k: _depth_summary(r) for k, r in results.items()}
    target = max(ctx.cfg.evaluate.depth_purity_targets)
    for k, r in results.items():
        g = r.gains[(r.gains["kind"] == "denoised") & (r.gains["purity_target"] == target)]
        if len(g):
            summary[f"denoised_gain_m50_{k}"] = {
                "purity": target, "dm50": float(g["dm50"].iloc[0]),
                "lo": float(g["dm50_lo"].iloc[0]), "hi": float(g["dm50_hi"].iloc[0])}
    return summary


# --------------------------------------------------------------------------- the stage


def _write_detection(ctx: Context, tally: _Tally, summary: dict[str, Any]) -> None:
    """``completeness.csv`` and ``detection_summary.json`` (truth only)."""
    cfg = ctx.cfg.evaluate
    out_dir = ctx.paths.evaluate
    mags = np.concatenate(tally.true_mags)
    tables = []
    det_summary = {}
    for kind in ("raw", "denoised"):
        tab = ev.completeness_table(mags, np.concatenate(tally.found[kind]), cfg.mag_bins)
        tab.insert(0, "kind", kind)
        tables.append(tab)
        real, total = tally.purity_counts[kind]
        det_summary[kind] = {
            "m50": ev.completeness_limit(tab, 0.5),
            "m90": ev.completeness_limit(tab, 0.9),
            "purity": real / total if total else float("nan"),
            "detections": total,
        }
    pd.concat(tables, ignore_index=True).to_csv(out_dir / "completeness.csv", index=False)
    (out_dir / "detection_summary.json").write_text(json.dumps(det_summary, indent=2))
    summary["detection"] = det_summary


def _write_stamps(out_dir: Path, stamps: list[dict[str, Any]]) -> None:
    """``stamps.npz``: the report's galaxy cutouts and labels."""
    np.savez_compressed(
        out_dir / "stamps.npz",
        raw=np.stack([s["raw"] for s in stamps]),
        denoised=np.stack([s["denoised"] for s in stamps]),
        truth=np.stack([s["truth"] for s in stamps]),
        label=np.array([s["label"] for s in stamps]),
    )


def _reference_pool(ctx: Context, held: list[str]) -> list[str] | None:
    """Return the frames that may be references (``evaluate.reference_pool``; None: all).

    Parameters
    ----------
    ctx : Context
        The stage context.
    held : list of str
        The held-out frames.

    Returns
    -------
    list of str or None
        The held-out frames for ``held-out`` (and for ``auto`` with ``train.method: n2n``
        on the exposures' targets) when there are any; None (every exposure) otherwise.
    """
    pool = ctx.cfg.evaluate.reference_pool
    if pool == "auto":
        own = ctx.cfg.train.method == "n2n" and ctx.cfg.train.n2n_targets == "exposures"
        pool = "held-out" if own else "all"
    return list(held) if pool == "held-out" and held else None


def _seeing_limited(frame: str, names: list[str], fwhm: dict[str, float],
                    ratio: float | None) -> list[str] | str:
    """Return the frames that may be the frame's references under ``evaluate.max_seeing_ratio``.

    Parameters
    ----------
    frame : str
        The frame scored.
    names : list of str
        The reference pool (``evaluate.reference_pool``).
    fwhm : dict of str to float
        Frame → PSF FWHM, px (:func:`~pausdenoise.pipeline.references.frame_fwhm`).
    ratio : float or None
        ``evaluate.max_seeing_ratio``.

    Returns
    -------
    list of str or str
        The pool limited to exposures no broader than ``ratio`` × the frame's PSF, or the
        reason the frame is skipped when that leaves none but the frame.
    """
    kept = no_broader(frame, names, fwhm, ratio)
    if ratio is None or any(g != frame for g in kept) or not any(g != frame for g in names):
        return kept
    return (f"evaluate.max_seeing_ratio: no other exposure with a PSF FWHM ≤ {ratio:g} × the "
            f"frame's ({fwhm[frame]:.2f} px)")


def _off_noise_model(res: tuple[pd.DataFrame, pd.DataFrame], limit: float | None
                     ) -> tuple[pd.DataFrame, pd.DataFrame] | str:
    """Apply ``evaluate.max_sky_noise_model_ratio`` to a frame's independent-exposure scores.

    Parameters
    ----------
    res : tuple of (DataFrame, DataFrame)
        The frame's metrics (with ``noise_var_model``, ADU²) and per-reference rows.
    limit : float or None
        The largest raw sky MSE over the noise model accepted; None accepts every frame.

    Returns
    -------
    tuple of (DataFrame, DataFrame) or str
        ``res``, or the reason the frame is skipped (the ratio and the limit). A frame
        without a noise model (no gain: NaN) is kept.
    """
    if limit is None:
        return res
    m = res[0]
    sky = m[(m["kind"] == "raw") & (m["pixel_class"] == "sky")]
    if sky.empty:
        return res
    model = float(sky["noise_var_model"].iloc[0])
    if not np.isfinite(model) or model <= 0:
        return res
    ratio = float(sky["mse"].iloc[0]) / model
    if not ratio > limit:  # within the limit, or no sky estimate (NaN)
        return res
    return (f"evaluate.max_sky_noise_model_ratio: the raw sky's estimated MSE is {ratio:.2f} × "
            f"its noise model (limit {limit:g}): the references do not hold the frame's sky")


def _evaluate_frames(ctx: Context, frames: list[str], exposures: pd.DataFrame,
                     pool: list[str] | None = None) -> _Tally:
    """Score every frame (one at a time), against the truth or independent exposures.

    ``pool``: the frames that may serve as independent exposures (None: all), each frame's
    further limited by ``evaluate.max_seeing_ratio`` (:func:`_seeing_limited`).

    Returns
    -------
    _Tally
        The metrics, detections, stamps and skipped frames.
    """
    catalogue = read_frame_catalogue(ctx)[0] if ctx.catalogue_path.exists() else None
    truth_tab = pd.read_parquet(ctx.truth_fluxes) if ctx.truth_fluxes else None
    tally = _Tally()
    ratio = ctx.cfg.evaluate.max_seeing_ratio
    names = exposures["frame"].tolist() if pool is None else list(pool)
    fwhm = frame_fwhm(ctx, sorted({*names, *frames})) if ratio is not None else {}
    for frame in frames:
        arr = frame_arrays(ctx.store, frame)
        if "denoised" not in arr:
            tally.skipped[frame] = "no denoised array (run the denoise stage)"
            continue
        if "truth" not in arr:  # real data: against independent exposures
            res = _seeing_limited(frame, names, fwhm, ratio)
            if isinstance(res, list):
                res = _independent_frame(ctx, frame, arr, exposures, catalogue,
                                         tally.registry, pool if ratio is None else res)
            if not isinstance(res, str):
                res = _off_noise_model(res, ctx.cfg.evaluate.max_sky_noise_model_ratio)
            if isinstance(res, str):
                tally.skipped[frame] = res
                print(f"evaluate: {frame} skipped: {res}")
                continue
            tally.metric_rows.append(res[0])
            tally.ref_rows.append(res[1])
            continue
        _truth_frame(ctx, frame, arr, catalogue, truth_tab, tally)
    return tally


def _write_registration(out_dir: Path, reg: Registry) -> dict[str, Any]:
    """Write ``registration.csv`` (frames without a WCS) and summarise it.

    Returns
    -------
    dict
        ``{"registration": {...}}`` with the pairs measured, failed, and the largest
        offset (px); empty when no frame was registered.
    """
    if not reg.rows:
        return {}
    tab = pd.DataFrame(reg.rows)
    tab.to_csv(out_dir / "registration.csv", index=False)
    ok = tab["error"] == ""
    shift = np.hypot(tab.loc[ok, "dx_px"], tab.loc[ok, "dy_px"])
    return {"registration": {
        "pairs": len(tab), "failed": int((~ok).sum()),
        "max_offset_px": float(shift.max()) if ok.any() else float("nan"),
        "min_significance": float(tab.loc[ok, "significance"].min()) if ok.any()
        else float("nan")}}


def _best_blur(pooled: pd.DataFrame) -> dict[str, float]:
    """Summarise the blur baselines: per pixel class the best σ and the gains over it.

    Parameters
    ----------
    pooled : DataFrame
        The pooled metrics (:func:`_pool`) of the independent-exposure reference.

    Returns
    -------
    dict
        Per class ``c``: ``best_blur_sigma_c_independent`` (px),
        ``rms_reduction_c_independent_best_blur`` (raw RMS / best blur's) and
        ``denoised_over_best_blur_c_independent`` (best blur's RMS / denoised RMS: above 1
        the denoiser beats every blur). Empty without blur rows.
    """
    out: dict[str, float] = {}
    ind = pooled[pooled["reference"] == ev.REFERENCE_INDEPENDENT]
    for cls, g in ind.groupby("pixel_class", sort=False):
        blurs = g[g["kind"].str.startswith(_BLUR) & g["rms"].notna()]
        kinds = dict(zip(g["kind"], g["rms"], strict=True))
        if blurs.empty or not {"raw", "denoised"} <= set(kinds):
            continue
        best = blurs.loc[blurs["rms"].idxmin()]
        out[f"best_blur_sigma_{cls}_independent"] = float(best["kind"].removeprefix(_BLUR))
        out[f"rms_reduction_{cls}_independent_best_blur"] = kinds["raw"] / float(best["rms"])
        out[f"denoised_over_best_blur_{cls}_independent"] = float(best["rms"]) / kinds["denoised"]
    return out


def _note(summary: dict[str, Any], evaluated: int, n_independent: int,
          skipped: dict[str, str]) -> str:
    """Write the stage's one-line note: frames scored and RMS reductions.

    Returns
    -------
    str
        The note.
    """
    red = {k: v for k, v in summary.items() if k.startswith("rms_reduction")}
    note = ", ".join(f"{k.removeprefix('rms_reduction_')} RMS ÷{v:.2f}" for k, v in red.items())
    counts = f"{evaluated} frames vs truth" if evaluated else ""
    if n_independent:
        counts += (", " if counts else "") + f"{n_independent} vs independent exposures"
    if skipped:
        counts += f", {len(skipped)} skipped"
    return f"{counts}; {note}"


def run(ctx: Context) -> dict[str, Any]:
    """Compute and write the evaluation tables of the held-out frames (or of every frame).

    Parameters
    ----------
    ctx : Context
        The stage context.

    Returns
    -------
    dict
        The summary (also written to ``evaluate/summary.json``) with a ``note``: frames
        evaluated against the truth and against independent exposures, RMS reduction
        factors per pixel class, detection completeness, skipped frames.
    """
    exposures = st.exposure_table(ctx.store)
    _, held = split_holdout(exposures, ctx.cfg.holdout_exposures_per_band)
    frames = held or exposures["frame"].tolist()
    out_dir = ctx.paths.evaluate
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in _OUTPUTS:  # a rerun must not leave a previous run's tables behind
        (out_dir / name).unlink(missing_ok=True)
    pool = _reference_pool(ctx, held)
    tally = _evaluate_frames(ctx, frames, exposures, pool)
    evaluated, skipped = tally.evaluated, tally.skipped
    n_independent = len(tally.ref_rows)
    pd.DataFrame({"frame": list(skipped), "reason": list(skipped.values())}).to_csv(
        out_dir / "skipped.csv", index=False)
    registration = _write_registration(out_dir, tally.registry)
    if not tally.metric_rows:
        why = "; ".join(f"{f}: {r}" for f, r in skipped.items()) or "no frame"
        return {"note": f"nothing to evaluate ({why})", "skipped": skipped, **registration}

    metrics = pd.concat(tally.metric_rows, ignore_index=True)[_METRIC_COLUMNS]
    metrics.to_csv(out_dir / "pixel_metrics.csv", index=False)
    pooled = _pool(metrics)
    pooled.to_csv(out_dir / "pixel_summary.csv", index=False)
    if tally.ref_rows:
        pd.concat(tally.ref_rows, ignore_index=True).to_csv(
            out_dir / "independent_references.csv", index=False)
    summary: dict[str, Any] = {"frames_evaluated": evaluated + n_independent,
                               "frames_evaluated_truth": evaluated,
                               "frames_evaluated_independent": n_independent,
                               "reference_pool": "all" if pool is None else "held-out",
                               "reference_model": ctx.cfg.evaluate.reference_model,
                               "max_seeing_ratio": ctx.cfg.evaluate.max_seeing_ratio,
                               "max_sky_noise_model_ratio":
                                   ctx.cfg.evaluate.max_sky_noise_model_ratio,
                               "skipped": skipped, **registration}
    for _, r in pooled[pooled["kind"] == "denoised"].iterrows():
        suffix = "" if r["reference"] == ev.REFERENCE_TRUTH else "_independent"
        summary[f"rms_reduction_{r['pixel_class']}{suffix}"] = float(r["rms_reduction"])
    summary.update(_best_blur(pooled))
    for _, r in pooled[(pooled["kind"] == "raw")
                       & (pooled["reference"] == ev.REFERENCE_INDEPENDENT)].iterrows():
        summary[f"raw_mse_over_noise_model_{r['pixel_class']}_independent"] = (
            float(r["mse"] / r["noise_var_model"]) if r["noise_var_model"] > 0 else None)
    if tally.true_mags:
        _write_detection(ctx, tally, summary)
    if tally.stamps:
        _write_stamps(out_dir, tally.stamps)
    if ctx.cfg.evaluate.depth:
        depth = _write_depth(ctx, frames, tally)
        if depth:
            summary["depth"] = depth
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return {"note": _note(summary, evaluated, n_independent, skipped), **summary}


def _pick_stamps(truth_rows: pd.DataFrame, image, den, truth, size: int, n: int,
                 frame: str) -> list[dict[str, Any]]:
    """Cut out isolated galaxies spread over magnitude, fully inside the frame.

    Returns
    -------
    list of dict
        ``raw``, ``denoised``, ``truth`` cutouts (ADU) and a ``label`` each; at most ``n``.
    """
    h = size // 2
    ny, nx = image.shape
    t = truth_rows
    sel = (~t["is_star"].astype(bool)) & (t["x"] > h) & (t["x"] < nx - h - 1) \
        & (t["y"] > h) & (t["y"] < ny - h - 1)
    t = t[sel]
    if "neighbour_ratio" in t:  # prefer the least blended (few are isolated at survey density)
        clean = t[t["neighbour_ratio"].to_numpy() < 0.1]
        t = clean if len(clean) >= n else t.nsmallest(n, "neighbour_ratio")
    t = t.sort_values("mag_true")
    if t.empty:
        return []
    idx = np.unique(np.linspace(0, len(t) - 1, min(n, len(t))).round().astype(int))
    out = []
    for _, r in t.iloc[idx].iterrows():
        y0, x0 = int(np.round(r["y"])) - h, int(np.round(r["x"])) - h
        sl = (slice(y0, y0 + size), slice(x0, x0 + size))
        out.append({
            "raw": image[sl], "denoised": den[sl], "truth": truth[sl],
            "label": f"{frame} ref {int(r['ref_id'])}\n{r['band']} m={r['mag_true']:.1f}",
        })
    return out
