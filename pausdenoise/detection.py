"""One source-detection engine for every image kind, and detection depth at equal purity.

The same engine (:func:`prepare_image` then :func:`detect`) runs on raw exposures, denoised
images, cGAN outputs and leave-one-out stacks, so that their depths are comparable:

1. **Background**: a smooth sky map (sigma-clipped medians in boxes of ``background_box``
   px, interpolated) is subtracted.
2. **Smoothing**: normalised convolution with a Gaussian matched to the PSF (FWHM in px: the
   frame's ``seeing`` in arcsec ÷ the pixel scale, or a configured FWHM). Bad pixels (mask
   non-zero, non-finite) carry no weight: the smoothed value is ``G*(w·x) / G*w``, so a
   masked column through a galaxy is bridged by its neighbours instead of cutting it in two
   (which moved both halves' centroids away from the true position). Pixels where less than
   half of the kernel weight is good are excluded from detection.
3. **Noise**: the RMS of the *smoothed* image, ``MAD_TO_SIGMA × MAD`` of the good pixels
   outside a source mask (pixels above 4 σ, dilated by one FWHM, iterated; a lower
   cut would remove the positive noise excursions themselves and bias the RMS low). Each
   image is measured on its own: a threshold of ν means ν × that image's RMS. For a
   denoised image the noise left is correlated and non-Gaussian, so equal ν is *not* equal
   false-detection rate; that is why depths are compared at equal measured purity.
4. **Segmentation**: photutils ``detect_sources`` (``npixels`` connected pixels, 8-
   connectivity), then a multi-threshold deblending of each segment with more than one
   local maximum (:func:`deblend`, the SExtractor scheme: ``deblend_nlevels`` levels spaced
   exponentially between the threshold and the segment's peak; a branch splits when at least
   two components above a level each hold ``npixels`` pixels and ``deblend_contrast`` of the
   segment's flux; the leaves are the sources and every pixel of the segment goes to the
   nearest leaf). Without deblending, a bright galaxy and a neighbour 9–30 px away
   merge into one segment whose centroid falls between them, and *both* go unmatched.
   Centroids: first moments of the positive smoothed flux in each segment.

Matching to the truth (:func:`match_to_truth`)
----------------------------------------------
The radius is ``match_radius_fwhm`` × FWHM (default 0.6, 2.2 px at 0.96″ seeing and
0.265″/px): a detection at the threshold (S/N ≈ 5) has a centroid error of about
σ_PSF √2 / (S/N) ≈ 0.4 px, so 99 % of true matches lie within ≈ 1.3 px; blends and
galaxy profiles add more. A larger radius would count noise peaks as real by chance:
with n true sources per px² a false detection lands within r of one with probability
π r² n (2.6 % for r = 2.2 px at the demo's 1.8 × 10⁻³ px⁻²).

1. *Segment membership*: every true source whose position (pixel containing it, clipped
   to the frame) lies in a detected segment is a candidate of that segment; the segment
   is assigned to its **brightest** candidate (one-to-one: a segment detects at most one
   source, the others inside it were not separated).
2. *Radius*: segments left without a candidate are matched to the nearest source not yet
   detected within the radius (closest pairs first, one-to-one).

A detection is *real* when its segment holds a true position or a true source of any
magnitude (the full simulated truth) is within the radius; *false* otherwise. Purity =
real / all detections.

Depth at equal purity
---------------------
A sweep over thresholds gives purity(ν) and, per true source, whether it was detected at
each ν. For a purity target the threshold is interpolated in (log ν, purity); the per-source
detection flags are interpolated linearly in log ν between the two neighbouring thresholds
(a fraction in [0, 1]); completeness per magnitude bin is their mean. m50 and m90 are the
magnitudes where that curve, made non-increasing by an isotonic fit, crosses 0.5 and 0.9
(:func:`magnitude_at_completeness`), with 95 % intervals from a bootstrap over sources
(the same resampled sources for every kind, so differences between kinds are paired).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from pausdenoise.stats import MAD_TO_SIGMA

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class DetectionSettings:
    """Settings of the detection engine (one set for every image kind).

    Attributes
    ----------
    npixels : int
        Minimum connected pixels of a segment.
    background_box : int
        Box size of the background map, px.
    deblend : bool
        Deblend segments (photutils ``deblend_sources``).
    deblend_nlevels : int
        Multi-threshold levels of the deblending.
    deblend_contrast : float
        Minimum flux fraction of a deblended component.
    match_radius_fwhm : float
        Matching radius in units of the PSF FWHM.
    smooth_fwhm_factor : float
        FWHM of the detection kernel in units of the PSF FWHM: 1 is the PSF-matched filter;
        0 thresholds the unsmoothed pixels (a diagnostic: what a denoiser gains against a
        detector without the matched filter).
    """

    npixels: int = 5
    background_box: int = 64
    deblend: bool = True
    deblend_nlevels: int = 32
    deblend_contrast: float = 0.005
    match_radius_fwhm: float = 0.6
    smooth_fwhm_factor: float = 1.0


@dataclass(frozen=True)
class PreparedImage:
    """A background-subtracted, PSF-smoothed image ready for thresholding.

    Attributes
    ----------
    smooth : ndarray of float64, shape (ny, nx)
        The smoothed, background-subtracted image, ADU (0 where excluded).
    excluded : ndarray of bool, shape (ny, nx)
        Pixels never part of a detection (too little good support).
    rms : float
        Robust RMS of ``smooth`` over source-free good pixels, ADU.
    fwhm_px : float
        PSF FWHM, px (the smoothing Gaussian's is ``smooth_fwhm_factor`` × it).
    """

    smooth: np.ndarray
    excluded: np.ndarray
    rms: float
    fwhm_px: float


@dataclass(frozen=True)
class Detections:
    """Segments found at one threshold.

    Attributes
    ----------
    table : DataFrame
        ``label``, ``x``, ``y`` (0-based px, first moments of the smoothed flux), ``area``
        (px).
    segmap : ndarray of int, shape (ny, nx)
        Segment labels (0: no segment).
    """

    table: pd.DataFrame
    segmap: np.ndarray


def _background_map(data: np.ndarray, bad: np.ndarray, box: int) -> np.ndarray:
    """Estimate the sky: sigma-clipped box medians of the good pixels, interpolated.

    Returns
    -------
    ndarray
        The background map, ADU.
    """
    # photutils is heavy (~1 s): kept off the import path of the config
    from photutils.background import Background2D, MedianBackground

    ny, nx = data.shape
    b = (min(box, ny), min(box, nx))
    try:
        bkg = Background2D(data, b, mask=bad, filter_size=3, bkg_estimator=MedianBackground())
        return np.asarray(bkg.background, dtype=np.float64)
    except ValueError:  # too few good pixels in every box: one global level
        vals = data[~bad]
        return np.full(data.shape, float(np.median(vals)) if vals.size else 0.0)


def _normalised_smooth(data: np.ndarray, good: np.ndarray, fwhm_px: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Smooth with a Gaussian, bad pixels given no weight (normalised convolution).

    Returns
    -------
    tuple of ndarray
        The smoothed image (ADU) and the kernel weight of the good pixels (0–1).
    """
    s = fwhm_px * FWHM_TO_SIGMA
    num = ndimage.gaussian_filter(np.where(good, data, 0.0), s, mode="constant", truncate=3.0)
    den = ndimage.gaussian_filter(good.astype(np.float64), s, mode="constant", truncate=3.0)
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-3)
    return out, den


def _robust_rms(smooth: np.ndarray, usable: np.ndarray, fwhm_px: float) -> float:
    """Measure the MAD-σ of the source-free usable pixels of the smoothed image.

    Returns
    -------
    float
        The RMS, ADU (NaN with fewer than 10 pixels).
    """
    sel = usable.copy()
    rms = np.nan
    for _ in range(3):
        vals = smooth[sel]
        if vals.size < 10:
            break
        med = float(np.median(vals))
        rms = float(MAD_TO_SIGMA * np.median(np.abs(vals - med)))
        src = usable & (smooth > med + 4.0 * rms)
        grow = max(round(fwhm_px), 1)
        src = ndimage.binary_dilation(src, iterations=grow)
        sel = usable & ~src
    return rms


def prepare_image(image: np.ndarray, mask: np.ndarray | None, fwhm_px: float,
                  settings: DetectionSettings) -> PreparedImage:
    """Subtract the background, smooth with the PSF-matched kernel and measure the noise.

    Parameters
    ----------
    image : ndarray of float, shape (ny, nx)
        The image, ADU (non-finite pixels are bad).
    mask : ndarray of int, shape (ny, nx), or None
        Non-zero marks a bad pixel.
    fwhm_px : float
        PSF FWHM, px (the smoothing kernel's FWHM is ``settings.smooth_fwhm_factor`` × it).
    settings : DetectionSettings
        ``background_box``, ``smooth_fwhm_factor``.

    Returns
    -------
    PreparedImage
        The smoothed image, its excluded pixels and its robust RMS (ADU).

    Raises
    ------
    ValueError
        ``fwhm_px`` is not positive or the image has no good pixel.
    """
    if not fwhm_px > 0:
        raise ValueError(f"fwhm_px must be > 0, got {fwhm_px!r}")
    data = np.asarray(image, dtype=np.float64)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    if bad.all():
        raise ValueError("no good pixel")
    data = np.where(bad, 0.0, data)
    data = data - _background_map(data, bad, settings.background_box)
    kernel_fwhm = settings.smooth_fwhm_factor * fwhm_px
    if kernel_fwhm > 0:
        smooth, weight = _normalised_smooth(data, ~bad, kernel_fwhm)
    else:
        smooth, weight = data.copy(), (~bad).astype(np.float64)
    excluded = weight < 0.5
    smooth[excluded] = 0.0
    rms = _robust_rms(smooth, ~excluded & ~bad, fwhm_px)
    return PreparedImage(smooth=smooth, excluded=excluded, rms=rms, fwhm_px=float(fwhm_px))


def detect(prepared: PreparedImage, threshold_sigma: float,
           settings: DetectionSettings) -> Detections:
    """Segment (and deblend) the prepared image above ``threshold_sigma`` × its RMS.

    Parameters
    ----------
    prepared : PreparedImage
        From :func:`prepare_image`.
    threshold_sigma : float
        Threshold in units of the image's own smoothed RMS.
    settings : DetectionSettings
        ``npixels`` and the deblending settings.

    Returns
    -------
    Detections
        The segments' table (0-based px centroids) and label map.
    """
    # photutils is heavy (~1 s): kept off the import path of the config
    from photutils.segmentation import detect_sources
    from photutils.utils.exceptions import NoDetectionsWarning  # heavy: as above

    smooth = prepared.smooth
    empty = Detections(pd.DataFrame({"label": np.empty(0, int), "x": np.empty(0),
                                     "y": np.empty(0), "area": np.empty(0, int)}),
                       np.zeros(smooth.shape, dtype=np.int32))
    if not np.isfinite(prepared.rms) or prepared.rms <= 0:
        return empty
    with warnings.catch_warnings():  # no segment above a high threshold is a valid answer
        warnings.simplefilter("ignore", NoDetectionsWarning)
        seg = detect_sources(smooth, threshold_sigma * prepared.rms,
                             n_pixels=settings.npixels, mask=prepared.excluded)
    if seg is None:
        return empty
    segmap = np.asarray(seg.data, dtype=np.int32)
    if settings.deblend:
        segmap = deblend(smooth, segmap, threshold_sigma * prepared.rms, settings)
    labels = np.unique(segmap[segmap > 0])
    w = np.clip(smooth, 0.0, None)
    yy, xx = np.indices(smooth.shape)
    sw = ndimage.sum_labels(w, segmap, labels)
    sx = ndimage.sum_labels(w * xx, segmap, labels)
    sy = ndimage.sum_labels(w * yy, segmap, labels)
    area = ndimage.sum_labels(np.ones_like(w), segmap, labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        x, y = sx / sw, sy / sw
    return Detections(pd.DataFrame({"label": labels, "x": x, "y": y,
                                    "area": area.astype(int)}), segmap)


def _split_level(cut: np.ndarray, peaks: np.ndarray, region: np.ndarray, levels: np.ndarray,
                 total: float, settings: DetectionSettings) -> list[np.ndarray]:
    """Split one region along the multi-threshold tree.

    Returns
    -------
    list of ndarray of bool
        The leaves (masks of the cutout); ``[region]`` when it does not split.
    """
    pk = cut[peaks & region]
    for lv in levels:
        if np.count_nonzero(pk > lv) < 2:  # each component above lv holds a local maximum
            break
        lab, n = ndimage.label(region & (cut > lv), structure=np.ones((3, 3)))
        if n < 2:
            if n == 0:
                break
            continue
        idx = np.arange(1, n + 1)
        area = ndimage.sum_labels(np.ones_like(cut), lab, idx)
        flux = ndimage.sum_labels(cut, lab, idx)
        keep = idx[(area >= settings.npixels) & (flux >= settings.deblend_contrast * total)]
        if keep.size >= 2:
            higher = levels[levels > lv]
            out: list[np.ndarray] = []
            for k in keep:
                out += _split_level(cut, peaks, lab == k, higher, total, settings)
            return out
    return [region]


def deblend(smooth: np.ndarray, segmap: np.ndarray, threshold: float,
            settings: DetectionSettings) -> np.ndarray:
    """Split blended segments by multi-thresholding (SExtractor-like).

    Only segments with more than one local maximum (3 × 3) are examined. Levels are spaced
    exponentially between ``threshold`` and the segment's peak; a component counts when it
    has ``npixels`` pixels and ``deblend_contrast`` of the segment's flux. Leaves of the
    split tree become the new segments; every pixel of the parent goes to its nearest leaf.

    Parameters
    ----------
    smooth : ndarray (ny, nx)
        The smoothed image the segments were found on, ADU.
    segmap : ndarray of int (ny, nx)
        Segment labels (0: none).
    threshold : float
        The detection threshold, ADU (> 0).
    settings : DetectionSettings
        ``npixels``, ``deblend_nlevels``, ``deblend_contrast``.

    Returns
    -------
    ndarray of int32 (ny, nx)
        The new label map (labels renumbered 1..n).
    """
    out = segmap.astype(np.int32).copy()
    peaks = (smooth == ndimage.maximum_filter(smooth, size=3)) & (segmap > 0)
    n_peaks = np.bincount(segmap[peaks], minlength=int(segmap.max()) + 1)
    nxt = int(segmap.max()) + 1
    for lab, sl in enumerate(ndimage.find_objects(segmap), start=1):
        if sl is None or n_peaks[lab] < 2:
            continue
        region = segmap[sl] == lab
        cut = np.where(region, smooth[sl], 0.0)
        top = float(cut.max())
        if not top > threshold > 0:
            continue
        levels = threshold * (top / threshold) ** (np.arange(1, settings.deblend_nlevels)
                                                    / settings.deblend_nlevels)
        leaves = _split_level(cut, peaks[sl], region, levels, float(cut.sum()), settings)
        if len(leaves) < 2:
            continue
        seeds = np.zeros(cut.shape, dtype=np.int32)
        for k, leaf in enumerate(leaves):
            seeds[leaf] = k + 1
        _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        new = seeds[iy, ix]
        block = out[sl]
        block[region] = np.where(new[region] == 1, lab, nxt + new[region] - 2)
        nxt += len(leaves) - 1
    _, inv = np.unique(out, return_inverse=True)
    return inv.reshape(out.shape).astype(np.int32)


def match_to_truth(detections: Detections, x_true: np.ndarray, y_true: np.ndarray,
                   flux_order: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Match detections to true sources: segment membership first, then radius.

    See the module docstring for the rule.

    Parameters
    ----------
    detections : Detections
        From :func:`detect`.
    x_true, y_true : ndarray of float
        True positions, 0-based px (pixel centres at integers).
    flux_order : ndarray of float
        Brightness key: larger is brighter (e.g. the true flux, or minus the magnitude).
    radius : float
        Matching radius, px.

    Returns
    -------
    found : ndarray of bool
        Over the true sources: detected (one-to-one).
    real : ndarray of bool
        Over the detections: a true position lies in its segment or within ``radius``.
    """
    x_true = np.asarray(x_true, float)
    y_true = np.asarray(y_true, float)
    n_t, tab = x_true.size, detections.table
    found = np.zeros(n_t, dtype=bool)
    real = np.zeros(len(tab), dtype=bool)
    if n_t == 0 or len(tab) == 0:
        return found, real
    ny, nx = detections.segmap.shape
    ix = np.clip(np.round(x_true).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y_true).astype(int), 0, ny - 1)
    lab_t = detections.segmap[iy, ix]
    row_of = pd.Series(np.arange(len(tab)), index=tab["label"].to_numpy())
    order = np.argsort(-np.asarray(flux_order, float), kind="stable")
    claimed = np.zeros(len(tab), dtype=bool)
    for i in order:  # brightest first: a segment detects its brightest member
        if lab_t[i] > 0:
            r = row_of[lab_t[i]]
            if not claimed[r]:
                claimed[r] = found[i] = True
    real |= claimed
    xy = np.c_[tab["x"].to_numpy(), tab["y"].to_numpy()]
    ok = np.isfinite(xy).all(axis=1)
    tree = cKDTree(np.c_[x_true, y_true])
    dist, _ = tree.query(np.where(ok[:, None], xy, -1e9), distance_upper_bound=radius)
    real |= np.isfinite(dist)
    free = np.nonzero(~claimed & ok)[0]
    pairs = tree.query_ball_point(xy[free], radius) if free.size else []
    cand = [(np.hypot(*(xy[d] - (x_true[t], y_true[t]))), d, t)
            for d, ts in zip(free, pairs, strict=True) for t in ts if not found[t]]
    used = set()
    for _, d, t in sorted(cand):
        if d not in used and not found[t]:
            used.add(d)
            found[t] = True
    return found, real


@dataclass
class FrameSweep:
    """One image's threshold sweep against its truth.

    Attributes
    ----------
    counts : DataFrame
        Per threshold: ``threshold`` (σ), ``n_detections``, ``n_real``, ``n_negative``.
    found : ndarray of bool, shape (n_true, n_thresholds)
        Whether each true source is detected at each threshold.
    rms : float
        The image's smoothed RMS, ADU.
    """

    counts: pd.DataFrame
    found: np.ndarray
    rms: float


def sweep_image(image: np.ndarray, mask: np.ndarray | None, fwhm_px: float,
                truth: pd.DataFrame, thresholds: Sequence[float],
                settings: DetectionSettings, *, truth_complete: bool = True) -> FrameSweep:
    """Detect at every threshold and match with the truth.

    Parameters
    ----------
    image : ndarray (ny, nx)
        The image, ADU.
    mask : ndarray of int (ny, nx) or None
        Non-zero marks a bad pixel.
    fwhm_px : float
        PSF FWHM, px.
    truth : DataFrame
        ``x_true``, ``y_true`` (0-based px) and ``flux_order`` (larger is brighter) of the
        true sources on the image.
    thresholds : sequence of float
        Thresholds in units of the image's own smoothed RMS, increasing.
    settings : DetectionSettings
        The engine's settings.
    truth_complete : bool
        True when ``truth`` holds every source of the image (a simulation): a detection
        without a true counterpart is false. False (injected sources on real pixels): the
        number of false detections is estimated by running the same detection on the
        negated image (noise peaks are symmetric, sources are not), ``n_real = n_detections
        − n_negative``.

    Returns
    -------
    FrameSweep
        Counts per threshold (``threshold, n_detections, n_real, n_negative``; the last is
        −1 when not measured) and per-source detection flags.
    """
    prep = prepare_image(image, mask, fwhm_px, settings)
    neg = PreparedImage(-prep.smooth, prep.excluded, prep.rms, prep.fwhm_px)
    radius = settings.match_radius_fwhm * fwhm_px
    x, y = truth["x_true"].to_numpy(), truth["y_true"].to_numpy()
    order = truth["flux_order"].to_numpy()
    found = np.zeros((len(truth), len(thresholds)), dtype=bool)
    rows = []
    for j, thr in enumerate(thresholds):
        det = detect(prep, float(thr), settings)
        f, real = match_to_truth(det, x, y, order, radius)
        found[:, j] = f
        n_neg = -1 if truth_complete else len(detect(neg, float(thr), settings).table)
        rows.append({"threshold": float(thr), "n_detections": len(real),
                     "n_real": int(real.sum()) if truth_complete
                     else max(len(real) - n_neg, 0), "n_negative": n_neg})
    return FrameSweep(pd.DataFrame(rows), found, prep.rms)


def threshold_at_purity(thresholds: np.ndarray, purity: np.ndarray, target: float) -> float:
    """Interpolate the lowest threshold whose purity reaches ``target``.

    Linear in (log threshold, purity) between the last threshold below the target and the
    first one at or above it (scanning from low to high thresholds).

    Parameters
    ----------
    thresholds : ndarray of float
        Increasing thresholds, σ.
    purity : ndarray of float
        Purity at each threshold (NaN: no detection).
    target : float
        Purity in (0, 1].

    Returns
    -------
    float
        The threshold, σ; the lowest threshold when it already reaches the target; NaN when
        no threshold does.
    """
    t = np.asarray(thresholds, float)
    p = np.asarray(purity, float)
    ok = np.isfinite(p)
    t, p = t[ok], p[ok]
    hit = np.nonzero(p >= target)[0]
    if hit.size == 0:
        return float("nan")
    j = int(hit[0])
    if j == 0:
        return float(t[0])
    p0, p1, l0, l1 = p[j - 1], p[j], np.log(t[j - 1]), np.log(t[j])
    a = (target - p0) / (p1 - p0) if p1 != p0 else 1.0
    return float(np.exp(l0 + a * (l1 - l0)))


def detection_weights(found: np.ndarray, thresholds: np.ndarray, threshold: float
                      ) -> np.ndarray:
    """Interpolate per-source detection flags to ``threshold`` (linear in log threshold).

    Parameters
    ----------
    found : ndarray of bool, shape (n_true, n_thresholds)
        Flags from the sweep.
    thresholds : ndarray of float
        The sweep's increasing thresholds, σ.
    threshold : float
        Where to interpolate, σ (clipped to the swept range).

    Returns
    -------
    ndarray of float, shape (n_true,)
        Detection weight in [0, 1] of each source (NaN when ``threshold`` is NaN).
    """
    f = np.asarray(found, float)
    if not np.isfinite(threshold):
        return np.full(f.shape[0], np.nan)
    lt = np.log(np.asarray(thresholds, float))
    x = float(np.clip(np.log(threshold), lt[0], lt[-1]))
    j = int(np.clip(np.searchsorted(lt, x, side="right") - 1, 0, len(lt) - 1))
    if j == len(lt) - 1:
        return f[:, j]
    a = (x - lt[j]) / (lt[j + 1] - lt[j])
    return (1.0 - a) * f[:, j] + a * f[:, j + 1]


def completeness_curve(mags: np.ndarray, weights: np.ndarray, bins: Sequence[float]
                       ) -> pd.DataFrame:
    """Tabulate completeness (mean detection weight) per magnitude bin.

    Parameters
    ----------
    mags : ndarray of float
        Magnitudes of the true sources, AB.
    weights : ndarray of float
        Detection weight of each source in [0, 1].
    bins : sequence of float
        Bin edges, AB mag.

    Returns
    -------
    DataFrame
        ``mag_lo``, ``mag_hi``, ``n_true``, ``completeness`` (NaN in an empty bin).
    """
    edges = np.asarray(bins, float)
    idx = np.digitize(mags, edges) - 1
    k = len(edges) - 1
    inside = (idx >= 0) & (idx < k)
    n = np.bincount(idx[inside], minlength=k).astype(float)
    s = np.bincount(idx[inside], weights=np.asarray(weights, float)[inside], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(n > 0, s / n, np.nan)
    return pd.DataFrame({"mag_lo": edges[:-1], "mag_hi": edges[1:], "n_true": n.astype(int),
                         "completeness": c})


def _isotonic_decreasing(c: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Fit a non-increasing sequence by weighted least squares (pool adjacent violators).

    Returns
    -------
    ndarray
        The fitted values, one per input.
    """
    vals, wts, sizes = [], [], []
    for ci, wi in zip(c, w, strict=True):
        vals.append(float(ci))
        wts.append(float(wi))
        sizes.append(1)
        while len(vals) > 1 and vals[-2] < vals[-1]:
            wsum = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
            vals[-2:], wts[-2:], sizes[-2:] = [v], [wsum], [sizes[-2] + sizes[-1]]
    return np.repeat(vals, sizes)


def magnitude_at_completeness(table: pd.DataFrame, level: float) -> float:
    """Return the magnitude where completeness falls through ``level``.

    The binned completeness is first made non-increasing with magnitude by a weighted
    isotonic fit (weights: sources per bin), so that one blended bright source in a small
    bin cannot set the limit; the crossing is then interpolated linearly between bin
    centres. The faintest centre when the fit never drops below ``level``; the brightest
    centre when it starts below it.

    Parameters
    ----------
    table : DataFrame
        From :func:`completeness_curve`.
    level : float
        Completeness in [0, 1].

    Returns
    -------
    float
        The magnitude, AB (NaN for an empty table).
    """
    t = table[(table["n_true"] > 0) & table["completeness"].notna()]
    if t.empty:
        return float("nan")
    m = 0.5 * (t["mag_lo"].to_numpy() + t["mag_hi"].to_numpy())
    c = _isotonic_decreasing(t["completeness"].to_numpy(), t["n_true"].to_numpy(float))
    below = np.nonzero(c < level)[0]
    if below.size == 0:
        return float(m[-1])
    j = int(below[0])
    if j == 0:
        return float(m[0])
    return float(m[j - 1] + (c[j - 1] - level) / (c[j - 1] - c[j]) * (m[j] - m[j - 1]))


def bootstrap_limits(mags: np.ndarray, weights: Mapping[str, np.ndarray],
                     bins: Sequence[float], levels: Sequence[float], n_boot: int,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Bootstrap the completeness magnitudes over sources, paired between kinds.

    Parameters
    ----------
    mags : ndarray of float
        Magnitudes of the true sources, AB.
    weights : mapping of kind -> ndarray of float
        Detection weights of the same sources for each kind.
    bins : sequence of float
        Bin edges, AB mag.
    levels : sequence of float
        Completeness levels, e.g. (0.5, 0.9).
    n_boot : int
        Number of resamplings.
    seed : int
        Seed of the random generator.

    Returns
    -------
    dict of kind -> ndarray, shape (n_boot, len(levels))
        The magnitudes (AB) of each replicate; replicate ``b`` uses the same resampled
        sources for every kind.
    """
    rng = np.random.default_rng(seed)
    n = len(mags)
    out = {k: np.full((n_boot, len(levels)), np.nan) for k in weights}
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        for k, w in weights.items():
            tab = completeness_curve(mags[idx], w[idx], bins)
            out[k][b] = [magnitude_at_completeness(tab, lv) for lv in levels]
    return out


@dataclass(frozen=True)
class DepthResult:
    """Depth of several image kinds at equal purity (:func:`depth_analysis`).

    Attributes
    ----------
    sweep : DataFrame
        Per kind, threshold and magnitude bin: ``kind, threshold`` (σ), ``purity``,
        ``n_detections``, ``n_real``, ``mag_lo, mag_hi, n_true, completeness``.
    depth : DataFrame
        Per kind and purity target: ``kind, purity_target, threshold`` (σ; NaN when the
        target is never reached), ``m50, m50_lo, m50_hi, m90, m90_lo, m90_hi`` (AB mag, 95 %
        bootstrap intervals), ``n_sources``.
    curves : DataFrame
        Completeness per bin at each target: ``kind, purity_target, mag_lo, mag_hi, n_true,
        completeness``.
    gains : DataFrame
        Per kind other than the reference and target: ``kind, reference, purity_target,
        dm50, dm50_lo, dm50_hi, dm90, dm90_lo, dm90_hi`` (mag; positive: deeper than the
        reference; paired bootstrap).
    """

    sweep: pd.DataFrame
    depth: pd.DataFrame
    curves: pd.DataFrame
    gains: pd.DataFrame


def _sweep_rows(kind: str, thresholds: np.ndarray, counts: np.ndarray, found: np.ndarray,
                mags: np.ndarray, bins: Sequence[float]) -> tuple[pd.DataFrame, np.ndarray]:
    """Tabulate one kind's sweep (long format).

    Returns
    -------
    tuple of (DataFrame, ndarray)
        The table and the purity per threshold.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = np.where(counts[:, 0] > 0, counts[:, 1] / counts[:, 0], np.nan)
    parts = []
    for j, thr in enumerate(thresholds):
        tab = completeness_curve(mags, found[:, j].astype(float), bins)
        tab.insert(0, "n_real", int(counts[j, 1]))
        tab.insert(0, "n_detections", int(counts[j, 0]))
        tab.insert(0, "purity", purity[j])
        tab.insert(0, "threshold", float(thr))
        tab.insert(0, "kind", kind)
        parts.append(tab)
    return pd.concat(parts, ignore_index=True), purity


def _interval(values: np.ndarray) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size < 10:
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def depth_analysis(sweeps: Mapping[str, Sequence[FrameSweep]], mags: np.ndarray,
                   thresholds: Sequence[float], bins: Sequence[float],
                   targets: Sequence[float], n_boot: int, *, reference: str = "raw",
                   seed: int = 0) -> DepthResult:
    """Compare image kinds' completeness at equal purity, with bootstrap intervals.

    Parameters
    ----------
    sweeps : mapping of kind -> sequence of FrameSweep
        Each kind's sweeps of the *same* frames in the same order (so the true sources line
        up; :func:`sweep_image`).
    mags : ndarray of float
        Magnitude (AB) of every true source of those frames, concatenated in frame order;
        NaN for sources matched but not scored (e.g. the simulation's own sources when the
        completeness is that of injected ones).
    thresholds : sequence of float
        The sweep's increasing thresholds, σ.
    bins : sequence of float
        Magnitude bin edges, AB.
    targets : sequence of float
        Purity targets, e.g. (0.9, 0.95).
    n_boot : int
        Bootstrap resamplings of the sources (0: no intervals).
    reference : str
        The kind the gains are measured against.
    seed : int
        Bootstrap seed.

    Returns
    -------
    DepthResult
        The sweep, depth, completeness-curve and gain tables.
    """
    thr = np.asarray(thresholds, float)
    mags = np.asarray(mags, float)
    scored = np.isfinite(mags)
    sweep_parts, depth_rows, curve_parts, weights = [], [], [], {}
    for kind, frames in sweeps.items():
        counts = np.sum([fs.counts[["n_detections", "n_real"]].to_numpy() for fs in frames],
                        axis=0)
        found = np.concatenate([fs.found for fs in frames])[scored]
        tab, purity = _sweep_rows(kind, thr, counts, found, mags[scored], bins)
        sweep_parts.append(tab)
        for target in targets:
            t_star = threshold_at_purity(thr, purity, target)
            w = detection_weights(found, thr, t_star)
            weights[(kind, target)] = w
            curve = completeness_curve(mags[scored], w, bins)
            curve_parts.append(curve.assign(kind=kind, purity_target=target))
            depth_rows.append({"kind": kind, "purity_target": target, "threshold": t_star,
                               "m50": magnitude_at_completeness(curve, 0.5),
                               "m90": magnitude_at_completeness(curve, 0.9),
                               "n_sources": int(scored.sum())})
    depth = pd.DataFrame(depth_rows)
    gains = _bootstrap_depth(depth, weights, mags[scored], bins, targets, n_boot, reference,
                             seed)
    depth = depth[["kind", "purity_target", "threshold", "m50", "m50_lo", "m50_hi", "m90",
                   "m90_lo", "m90_hi", "n_sources"]]
    curves = pd.concat(curve_parts, ignore_index=True)
    curves = curves[["kind", "purity_target", "mag_lo", "mag_hi", "n_true", "completeness"]]
    return DepthResult(pd.concat(sweep_parts, ignore_index=True), depth, curves, gains)


def _bootstrap_depth(depth: pd.DataFrame, weights: dict[tuple[str, float], np.ndarray],
                     mags: np.ndarray, bins: Sequence[float], targets: Sequence[float],
                     n_boot: int, reference: str, seed: int) -> pd.DataFrame:
    """Fill the depth table's intervals (in place) and compute the paired gains.

    Returns
    -------
    DataFrame
        The gains of each kind over ``reference`` per target (mag).
    """
    for col in ("m50_lo", "m50_hi", "m90_lo", "m90_hi"):
        depth[col] = np.nan
    gain_rows = []
    for target in targets:
        ws = {k: w for (k, t), w in weights.items() if t == target and np.isfinite(w).all()}
        reps = bootstrap_limits(mags, ws, bins, (0.5, 0.9), n_boot, seed) if n_boot else {}
        for k, r in reps.items():
            sel = (depth["kind"] == k) & (depth["purity_target"] == target)
            for i, name in enumerate(("m50", "m90")):
                depth.loc[sel, [f"{name}_lo", f"{name}_hi"]] = _interval(r[:, i])
        for k in weights:
            if k[1] != target or k[0] == reference:
                continue
            row = {"kind": k[0], "reference": reference, "purity_target": target}
            d_point = depth.set_index(["kind", "purity_target"])
            for i, name in enumerate(("m50", "m90")):
                row[f"d{name}"] = (d_point.loc[(k[0], target), name]
                                   - d_point.loc[(reference, target), name]
                                   if (reference, target) in d_point.index else np.nan)
                both = k[0] in reps and reference in reps
                lo, hi = _interval(reps[k[0]][:, i] - reps[reference][:, i]) if both \
                    else (np.nan, np.nan)
                row[f"d{name}_lo"], row[f"d{name}_hi"] = lo, hi
            gain_rows.append(row)
    return pd.DataFrame(gain_rows, columns=["kind", "reference", "purity_target", "dm50",
                                            "dm50_lo", "dm50_hi", "dm90", "dm90_lo",
                                            "dm90_hi"])
