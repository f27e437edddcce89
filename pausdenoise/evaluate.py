"""Evaluation of raw and denoised images against the truth (simulation) or another exposure.

Pure functions of arrays and tables; the pipeline feeds them frames from the store.

Pixel classes
-------------
*Sky pixels* are good pixels where the noiseless truth is within ``sky_tolerance`` × σ_noise
of the sky level (far from every source); *source pixels* are good pixels inside a catalogue
aperture. Metrics are computed separately for each class because a denoiser that smooths the
sky well can still erode galaxies, and the photometry lives in the apertures.

Definitions (all in ADU unless stated)
--------------------------------------
- RMS error: ``sqrt(mean((estimate - truth)**2))`` over the pixel class.
- PSNR [dB]: ``20 log10(data_range / RMS)`` with ``data_range`` = the truth's 99.9th minus 0.1th
  percentile over the frame (a robust range: one saturated star must not set it).
- SSIM: the Wang et al. (2004) index with a Gaussian window (σ = 1.5 px), K1 = 0.01,
  K2 = 0.03, the same data range, averaged over the pixel class.

Real data without truth
-----------------------
For two independent exposures A and B of the same sky on the same pixel grid, with B's noise
independent of A and of variance ``var_B``:
``E[(est_A - raw_B)^2] = E[(est_A - truth)^2] + var_B``, so
``MSE_truth(est_A) = MSE(est_A, raw_B) - var_B``. ``var_B`` is estimated from a third
exposure C: ``var(raw_B - raw_C) / 2`` assuming equal noise in B and C (or, in general,
``var_B = (var(B-C) + var(B-D) - var(C-D)) / 2`` with a fourth exposure D, which drops that
assumption). Both are implemented below.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage


class EvaluateConfig(BaseModel):
    """Configuration of the evaluation stage."""

    model_config = ConfigDict(extra="forbid")

    sky_tolerance: float = Field(
        0.05, gt=0, description="Sky pixels: |truth - sky| < sky_tolerance * sigma_noise."
    )
    ssim_sigma: float = Field(1.5, gt=0, description="SSIM Gaussian window σ (px).")
    detection_threshold: float = Field(
        3.0,
        gt=0,
        description="Detection threshold in σ of the smoothed *raw* sky noise; the same "
        "absolute level (ADU) is used for raw and denoised images.",
    )
    detection_npixels: int = Field(5, ge=1, description="Minimum connected pixels of a detection.")
    detection_fwhm: float = Field(
        3.0, gt=0, description="FWHM (px) of the Gaussian kernel the image is smoothed with."
    )
    match_radius: float = Field(2.0, gt=0, description="Detection-to-truth match radius (px).")
    mag_bins: list[float] = Field(
        default_factory=lambda: [float(m) for m in np.arange(17.0, 25.01, 0.5)],
        description="Edges of the magnitude bins for completeness (AB mag).",
    )


# --------------------------------------------------------------------------- pixel classes


def sky_pixel_mask(
    truth: np.ndarray, sky: float, sigma_noise: float, good: np.ndarray, tolerance: float
) -> np.ndarray:
    """Good pixels whose noiseless value is within ``tolerance * sigma_noise`` of ``sky``."""
    return good & (np.abs(truth - sky) < tolerance * sigma_noise)


def aperture_pixel_mask(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    a_px: np.ndarray,
    b_px: np.ndarray,
    theta_rad: np.ndarray,
) -> np.ndarray:
    """Boolean mask of pixels whose centre lies in any of the given ellipses.

    Parameters
    ----------
    shape : (ny, nx)
    x, y : array
        Ellipse centres, 0-based pixel coordinates (centre of pixel [0, 0] is (0, 0)).
    a_px, b_px : array
        Semi-axes in pixels.
    theta_rad : array
        Position angle in radians, counter-clockwise from +x (photutils convention).
    """
    ny, nx = shape
    out = np.zeros(shape, dtype=bool)
    for xi, yi, a, b, t in zip(x, y, a_px, b_px, theta_rad, strict=True):
        r = int(np.ceil(max(a, b))) + 1
        x0, x1 = max(int(np.floor(xi)) - r, 0), min(int(np.floor(xi)) + r + 2, nx)
        y0, y1 = max(int(np.floor(yi)) - r, 0), min(int(np.floor(yi)) + r + 2, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dx, dy = xx - xi, yy - yi
        c, s = np.cos(t), np.sin(t)
        u, v = dx * c + dy * s, -dx * s + dy * c
        out[y0:y1, x0:x1] |= (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return out


# --------------------------------------------------------------------------- pixel metrics


def robust_range(truth: np.ndarray) -> float:
    """Data range for PSNR/SSIM: 99.9th minus 0.1th percentile of the finite truth values."""
    lo, hi = np.nanpercentile(truth[np.isfinite(truth)], [0.1, 99.9])
    return float(hi - lo)


def ssim_map(
    estimate: np.ndarray, truth: np.ndarray, data_range: float, sigma: float = 1.5
) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004) with a Gaussian window of width ``sigma`` px."""
    x = np.nan_to_num(estimate.astype(np.float64))
    y = np.nan_to_num(truth.astype(np.float64))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x = ndimage.gaussian_filter(x, sigma)
    mu_y = ndimage.gaussian_filter(y, sigma)
    sxx = ndimage.gaussian_filter(x * x, sigma) - mu_x**2
    syy = ndimage.gaussian_filter(y * y, sigma) - mu_y**2
    sxy = ndimage.gaussian_filter(x * y, sigma) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return num / den


def pixel_metrics(
    estimate: np.ndarray,
    truth: np.ndarray,
    classes: dict[str, np.ndarray],
    *,
    ssim_sigma: float = 1.5,
) -> pd.DataFrame:
    """RMS error, PSNR and SSIM of ``estimate`` against ``truth`` for each pixel class.

    Parameters
    ----------
    estimate, truth : ndarray (ny, nx), ADU
    classes : dict of name -> boolean mask
        E.g. ``{"sky": ..., "source": ...}``.

    Returns
    -------
    DataFrame with one row per class: ``pixel_class, n_pixels, rms, psnr_db, ssim``.
    """
    data_range = robust_range(truth)
    smap = ssim_map(estimate, truth, data_range, ssim_sigma)
    rows = []
    for name, sel in classes.items():
        sel = sel & np.isfinite(estimate)
        n = int(sel.sum())
        if n == 0:
            rows.append(
                {"pixel_class": name, "n_pixels": 0, "rms": np.nan, "psnr_db": np.nan,
                 "ssim": np.nan}
            )
            continue
        err = (estimate[sel].astype(np.float64) - truth[sel]).astype(np.float64)
        rms = float(np.sqrt(np.mean(err**2)))
        rows.append(
            {
                "pixel_class": name,
                "n_pixels": n,
                "rms": rms,
                "psnr_db": float(20 * np.log10(data_range / rms)) if rms > 0 else np.inf,
                "ssim": float(np.mean(smap[sel])),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- real data


def noise_variance_from_pair(b: np.ndarray, c: np.ndarray, good: np.ndarray) -> float:
    """Noise variance of one exposure from two independent ones of equal noise: var(B−C)/2."""
    d = (b - c)[good]
    return float(np.var(d[np.isfinite(d)]) / 2.0)


def noise_variance_from_triplet(
    b: np.ndarray, c: np.ndarray, d: np.ndarray, good: np.ndarray
) -> float:
    """Noise variance of B from three independent exposures B, C, D (unequal noise allowed).

    ``var_B = (var(B−C) + var(B−D) − var(C−D)) / 2``.
    """

    def v(p: np.ndarray, q: np.ndarray) -> float:
        x = (p - q)[good]
        return float(np.var(x[np.isfinite(x)]))

    return 0.5 * (v(b, c) + v(b, d) - v(c, d))


def mse_to_truth_via_independent(
    estimate_a: np.ndarray, raw_b: np.ndarray, noise_var_b: float, good: np.ndarray
) -> float:
    """Unbiased MSE of ``estimate_a`` to the unknown truth: MSE(est_A, raw_B) − var_B.

    The sky level of the two exposures must agree (subtract each frame's sky first).
    """
    d = (estimate_a - raw_b)[good]
    return float(np.mean(d[np.isfinite(d)] ** 2) - noise_var_b)


# --------------------------------------------------------------------------- detection


def smoothed_noise_sigma(sigma_noise: float, fwhm: float) -> float:
    """σ of white noise of σ ``sigma_noise`` after the normalised Gaussian smoothing of ``detect``.

    A unit-sum Gaussian of σ = s px lowers white-noise σ by ``1 / (2 sqrt(pi) s)``.
    """
    s = fwhm / 2.3548
    return float(sigma_noise / (2.0 * np.sqrt(np.pi) * s))


def detect(
    image: np.ndarray,
    sky: float,
    threshold_adu: float,
    mask: np.ndarray | None,
    config: EvaluateConfig,
) -> pd.DataFrame:
    """Detect sources above a fixed threshold with photutils image segmentation.

    The sky-subtracted image is smoothed with a unit-sum Gaussian of FWHM ``detection_fwhm``
    and thresholded at ``threshold_adu`` (ADU, on the smoothed image). Use the *same*
    absolute threshold for raw and denoised versions of a frame, e.g.
    ``config.detection_threshold * smoothed_noise_sigma(sigma_raw, config.detection_fwhm)``,
    so that the comparison asks "what does each image reveal above one fixed level".

    Returns
    -------
    DataFrame with ``x, y`` (0-based px) of each detection's centroid.
    """
    from astropy.convolution import Gaussian2DKernel, convolve
    from photutils.segmentation import SourceCatalog, detect_sources

    data = np.asarray(image, dtype=np.float64) - sky
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask) != 0
    data[bad] = 0.0
    kernel = Gaussian2DKernel(config.detection_fwhm / 2.3548)
    smooth = convolve(data, kernel, normalize_kernel=True)
    seg = detect_sources(smooth, threshold_adu, n_pixels=config.detection_npixels, mask=bad)
    if seg is None:
        return pd.DataFrame({"x": np.empty(0), "y": np.empty(0)})
    cat = SourceCatalog(data, seg, convolved_data=smooth, mask=bad)
    return pd.DataFrame({"x": np.asarray(cat.x_centroid), "y": np.asarray(cat.y_centroid)})


def match_detections(
    detections: pd.DataFrame, truth: pd.DataFrame, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Match detections to true positions (nearest, within ``radius`` px).

    Returns
    -------
    true_found : bool array over ``truth`` rows
    det_real : bool array over ``detections`` rows (matched to some true source)
    """
    from scipy.spatial import cKDTree

    true_found = np.zeros(len(truth), dtype=bool)
    det_real = np.zeros(len(detections), dtype=bool)
    if len(truth) == 0 or len(detections) == 0:
        return true_found, det_real
    tree = cKDTree(np.c_[truth["x"].to_numpy(), truth["y"].to_numpy()])
    dist, idx = tree.query(np.c_[detections["x"].to_numpy(), detections["y"].to_numpy()])
    det_real = dist <= radius
    true_found[idx[det_real]] = True
    return true_found, det_real


def completeness_table(
    true_mag: np.ndarray, found: np.ndarray, bins: list[float]
) -> pd.DataFrame:
    """Fraction of true sources detected per magnitude bin (``mag_lo, mag_hi, n, completeness``)."""
    edges = np.asarray(bins)
    idx = np.digitize(true_mag, edges) - 1
    rows = []
    for i in range(len(edges) - 1):
        sel = idx == i
        n = int(sel.sum())
        rows.append(
            {
                "mag_lo": edges[i],
                "mag_hi": edges[i + 1],
                "n_true": n,
                "completeness": float(found[sel].mean()) if n else np.nan,
            }
        )
    return pd.DataFrame(rows)


def completeness_limit(table: pd.DataFrame, level: float) -> float:
    """Faintest magnitude (bin centre, linearly interpolated) where completeness ≥ ``level``.

    Returns NaN when completeness never reaches ``level``; the bright end is assumed complete.
    """
    t = table.dropna(subset=["completeness"])
    if t.empty:
        return float("nan")
    centres = 0.5 * (t["mag_lo"].to_numpy() + t["mag_hi"].to_numpy())
    c = t["completeness"].to_numpy()
    if not (c >= level).any():
        return float("nan")
    below = np.nonzero(c < level)[0]
    below = below[below > np.argmax(c >= level)]
    if below.size == 0:
        return float(centres[-1])
    j = below[0]
    c0, c1, m0, m1 = c[j - 1], c[j], centres[j - 1], centres[j]
    return float(m0 + (c0 - level) / (c0 - c1) * (m1 - m0))
