"""Evaluation of raw and denoised images against the truth (simulation) or another exposure.

Pure functions of arrays and tables; the pipeline feeds them frames from the store.

Pixel classes
-------------
*Sky pixels* are good pixels where the noiseless truth is within ``sky_tolerance`` × σ_noise
of the sky level (far from every source); *source pixels* are good pixels inside a catalogue
aperture. *Low-S/N pixels* (``low_snr``) hold source light of at most ``low_snr_max`` × the
frame's pixel noise σ: with truth (σ the MAD-σ of image − truth), good pixels whose noiseless
light above the sky lies between ``sky_tolerance`` and ``low_snr_max`` σ; without truth (σ
from neighbour differences, :func:`~pausdenoise.stats.pixel_noise_sigma`, which a crowded
field's unresolved stars inflate far less than its robust spread), pixels of the
references' smoothed mean above ``source_threshold`` whose (unsmoothed) mean is at most
``low_snr_max`` σ.
They are the faint galaxies and the outskirts of everything, where a denoiser has the most to
gain (without truth only what the references' smoothed mean detects: on a crowded field,
whose detection threshold is high, the edges of the detected sources), and, on real frames,
the source light the references miss least (on the SAAO frames
the raw frame's estimated MSE there is 1.1–1.3 × its noise model on most frames, against
tens to hundreds × over all source pixels; ``docs/evaluation.md``). Metrics are computed
separately for each class because a denoiser that smooths the sky well can still erode
galaxies, and the photometry lives in the apertures.

Definitions (all in ADU unless stated)
--------------------------------------
- RMS error: ``sqrt(mean((estimate - truth)**2))`` over the pixel class.
- PSNR [dB]: ``20 log10(data_range / RMS)`` with ``data_range`` = the truth's 99.9th minus 0.1th
  percentile over the frame (a robust range: one saturated star must not set it).
- SSIM: the Wang et al. (2004) index with a Gaussian window (σ = 1.5 px), K1 = 0.01,
  K2 = 0.03, the same data range, averaged over the pixel class.

Real data without truth: the independent-exposure estimator
-----------------------------------------------------------
Notation: ``E`` is the image of frame D being scored (its raw image, or its denoised
version), ``A`` is D's raw image, and ``R_j`` (j = 1..k) are *independent* exposures of the
same band and sky (other exposure numbers), each brought onto D's pixel grid and flux scale:
sky-subtracted (each frame's sigma-clipped median), multiplied by ``ZP_j / ZP_D``
(calibrated flux = ADU · ZP) and resampled with :func:`pausdenoise.stack.resample_frame`
(exact re-indexing when the grids coincide, bilinear through the WCSs otherwise; frames
without a WCS are registered by cross-correlation and shifted by whole pixels, see
:mod:`pausdenoise.register`). D's own
sky level (from its raw image) is subtracted from both of D's versions, so a denoiser that
shifts the sky is charged for it. All images in ADU of D; variances in ADU².

Model: ``R_j = T + n_j``, ``A = T + n_A`` with one noiseless image ``T`` (same signal) and
zero-mean noises ``n_A, n_1 … n_k`` that are mutually independent (independent exposures).
Then, over a pixel class (means over the pixels good in D and in every reference):

``MSE(E, T) = MSE(E, R_j) − σ_j²``                                            (1)

because the cross term ``⟨(E − T) n_j⟩`` vanishes: E is made from exposure D only. The sign
convention is *estimate minus reference*; a squared difference has no sign, but a negative
result of (1) (possible for a very good E, from noise) means "consistent with zero" — its
RMS (``sqrt``) is then reported as NaN and the signed MSE is kept in the ``mse`` column.
``σ_j²`` is the per-pixel noise variance *of R_j as compared*, i.e. after scaling and
resampling onto D's grid, and is estimated from exposure differences on the same pixels
(``var`` = mean square about the class mean):

- ``pair`` (needs k ≥ 2): ``σ_j² = var(R_j − R_p) / 2`` for a partner p ≠ j — assumes
  ``σ_j = σ_p``; averaged over the partners.
- ``triplet`` (needs k ≥ 2; default): ``σ_j² = (var(A − R_j) + var(R_j − R_p) − var(A − R_p)) / 2``
  with D's raw image A as the third independent exposure — exact for *unequal* noises
  (``var(X − Y) = σ_X² + σ_Y²`` for independent X, Y); averaged over the partners. For the
  raw image itself (E = A) the estimate of (1) is the triplet estimate of ``σ_A²``.
- ``equal-noise`` (k = 1, only when ``single_reference="equal-noise"``):
  ``σ_1² = var(A − R_1) / 2``, assuming A and R_1 have equal noise on D's grid — biased
  when R_1 is resampled (see below) or its depth differs; by default such frames are
  skipped with the reason recorded.

(1) is evaluated for every reference and averaged uniformly. In that average ``pair`` and
``triplet`` coincide algebraically — the mean of ``var(R_j − R_p) / 2`` over ordered pairs
is the mean σ_j², so the equal-noise assumption cancels — and the combined number rests on
independence and same signal only. They differ *per reference*, where only ``triplet`` is
unbiased for unequal noise; the evaluate stage uses it (``independent_references.csv``:
σ_j² and (1) with each reference alone, which must agree within their errors). The frame's
raw image A enters the triplet and ``equal-noise`` forms; that it shares A's noise with a
denoised E does not bias (1) (expectations are linear), it only changes the scatter.
``mse_se`` is the standard error from 8 × 8 px blocks (resampled noise is correlated between
neighbouring pixels, so per-pixel errors would be too optimistic).

Biases to keep in mind:

- **Resampling** interpolates the references: their noise is smoothed (a bilinear shift by
  half a pixel divides the per-pixel variance by up to 4 in 2-D) and correlated. That is why
  σ_j² is estimated from differences of references resampled the *same way onto D's grid*:
  it is then the variance of what (1) actually compares with. Using σ_j² measured on R_j's
  own grid (or from its inverse-variance map) would over-subtract and bias (1) low.
  Interpolation also smooths the references' *signal* (bilinear: up to a 2 × 2 box at
  half-pixel offsets), a Δ term (below) in source pixels only: it raises the raw estimate
  and *lowers* that of a smoothing denoiser, whose output then resembles the blurred
  reference. Synthetic test (Gaussian sources of σ = 1.8 px, a σ = 1 px Gaussian smoothing
  as the "denoiser", ``tests/test_evaluate_independent.py``): with references at sub-pixel
  offsets the source-pixel MSE comes out ≈ −44 % (denoised) and ≈ +10 % (raw); with
  references at whole-pixel offsets (exact copies) within its standard error; sky pixels
  within 3 % in both cases.
- **PSF / seeing, astrometry and calibration differences** break "same signal": with
  ``T_X`` the noiseless image as seen by exposure X and ``Δ_XY = mean((T_X − T_Y)²)``, the
  raw estimate of (1) averaged over two references B and C becomes
  ``σ_A² + (Δ_AB + Δ_AC − Δ_BC) / 2`` (with B alone: ``σ_A² + (Δ_AB + Δ_AC − Δ_BC) / 2``
  for the triplet σ_B², ``σ_A² + Δ_AB + (σ_B² − σ_C² − Δ_BC) / 2`` for the pair σ_B²), and
  a denoised E picks up the same terms plus a cross term ``2⟨(E − T_A)(T_A − T_B)⟩`` of
  either sign. When D's seeing differs from the references' the Δ terms with A dominate
  and the estimated MSE is **inflated in source pixels** (for seeings s_A, s_B, s_C and
  small differences the bias is ∝ (s_A − s_B)(s_A − s_C): positive unless D's seeing lies
  between the references'). Sky pixels (T flat) are free of it, up to a sky level or
  background gradient that differs between exposures (a constant sky is subtracted per
  frame; a ZP error scales the references' sources, so it too acts in source pixels).
  Treat source-pixel numbers as indicative (see ``independent_references.csv``: references
  of different seeing disagree there), and the sky-pixel numbers as the measurement. On a
  crowded field the "sky" is unresolved stars and carries the same terms; the evaluate stage
  therefore first brings each reference to D's seeing, sub-pixel position and flux scale
  with a fitted pixel kernel (``evaluate.reference_kernel``,
  :mod:`pausdenoise.reference_match`, which says what that leaves).
- **Pixel classes** come from a threshold on the references' mean (or from catalogue
  apertures), not from the truth: sky pixels are good pixels farther than ``sky_margin`` px
  from any pixel of the references' smoothed mean above ``source_threshold`` σ. The
  selection uses the references' noise: a small selection effect (≲ 1 % on sky pixels,
  a few % upwards on the raw source pixels in the synthetic test); catalogue apertures
  avoid it.
- The denoiser was trained on other exposures (possibly the references): a negligible
  dependence between E and n_j.

The helpers :func:`noise_variance_from_pair`, :func:`noise_variance_from_triplet` and
:func:`mse_to_truth_via_independent` implement the single-number forms;
:func:`independent_exposure_metrics` the per-class tables the evaluate stage writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from astropy.convolution import Gaussian2DKernel, convolve
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from scipy.spatial import cKDTree

from pausdenoise.n2v.normalise import frame_statistics
from pausdenoise.stack import StackConfig, stack_frames
from pausdenoise.stats import MAD_TO_SIGMA

#: Values of the ``reference`` column of the pixel-metric tables.
REFERENCE_TRUTH = "truth"
REFERENCE_INDEPENDENT = "independent-exposure"


class EvaluateConfig(BaseModel):
    """Configuration of the evaluation stage."""

    model_config = ConfigDict(extra="forbid")

    sky_tolerance: float = Field(
        0.05, gt=0, description="Sky pixels: |truth - sky| < sky_tolerance * sigma_noise."
    )
    low_snr_max: float = Field(
        10.0,
        gt=0,
        description="Upper end of the low_snr pixel class: source light per pixel, in σ of "
        "the frame's pixel noise (the faint light; without truth, the references' detected "
        "light up to this level, σ from neighbour differences).",
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
    # -- detection depth at equal purity (pausdenoise.detection) --------------------------
    depth: bool = Field(
        True,
        description="Measure detection depth at equal purity (threshold sweep per image "
        "kind, evaluate/depth*.csv) on frames with truth and on injected frames.",
    )
    depth_thresholds: list[float] = Field(
        default_factory=lambda: [round(float(t), 3) for t in np.geomspace(2.0, 50.0, 15)],
        min_length=2,
        description="Detection thresholds of the sweep, increasing, in σ of each image's own "
        "PSF-smoothed background RMS (dimensionless).",
    )
    depth_fwhm: float | None = Field(
        None,
        gt=0,
        description="FWHM (px) of the PSF-matched smoothing kernel; None: the frame's seeing "
        "(arcsec) / photometry.pixel_scale (arcsec/px), else detection_fwhm.",
    )
    depth_npixels: int = Field(
        5, ge=1, description="Minimum connected pixels of a detected segment (px)."
    )
    depth_background_box: int = Field(
        64, ge=8, description="Box size of the background map subtracted before detection (px)."
    )
    depth_deblend: bool = Field(True, description="Deblend segments (multi-thresholding).")
    depth_smooth_fwhm_factor: float = Field(
        1.0,
        ge=0.0,
        description="Detection kernel FWHM in units of the PSF FWHM: 1 the PSF-matched filter "
        "(the most powerful detector of faint compact sources in white noise); 0 no smoothing "
        "(a diagnostic: the depth a denoiser gains against a detector without that filter).",
    )
    depth_deblend_nlevels: int = Field(
        32, ge=2, description="Deblending: number of thresholds between detection and peak."
    )
    depth_deblend_contrast: float = Field(
        0.005,
        gt=0,
        lt=1,
        description="Deblending: least fraction of a segment's smoothed flux a component "
        "must hold (dimensionless).",
    )
    depth_match_radius_fwhm: float = Field(
        0.6,
        gt=0,
        description="Detection-to-truth matching radius in units of the PSF FWHM (after "
        "matching by segment membership).",
    )
    depth_purity_targets: list[float] = Field(
        default_factory=lambda: [0.9, 0.95],
        min_length=1,
        description="Purities (fractions) at which completeness and depth are compared.",
    )
    depth_mag_column: Literal["I_auto", "mag_true"] = Field(
        "I_auto",
        description="Magnitude (AB) the completeness is binned in: the catalogue's I_auto or "
        "the source's magnitude in the frame's band.",
    )
    depth_bootstrap: int = Field(
        200, ge=0, description="Bootstrap resamplings of the sources for the intervals (0: none)."
    )
    # -- real data without truth: metrics against independent exposures ------------------
    single_reference: Literal["skip", "equal-noise"] = Field(
        "skip",
        description="Without truth, a frame with exactly one independent exposure B: "
        "'skip' it (reason recorded), or use var(A-B)/2 assuming the frame and B have equal "
        "noise on the frame's grid (biased when B is resampled or deeper).",
    )
    max_references: int = Field(
        4, ge=1, description="Without truth: at most this many independent exposures per frame."
    )
    blur_sigmas: list[float] = Field(
        default_factory=lambda: [0.5, 0.75, 1.0, 1.5, 2.0, 3.0],
        description="Without truth: Gaussian σ (px) of the blurred raw images scored beside "
        "the denoised one, as a baseline; the summary gives the best σ per pixel class and "
        "the denoised image's RMS gain over that best blur (empty: no baseline).",
    )
    reference_pool: Literal["auto", "all", "held-out"] = Field(
        "auto",
        description="Without truth: which exposures may be a frame's references. 'all': any "
        "other exposure of its band, training exposures included. 'held-out': only the "
        "other held-out exposures (none of whose pixels the network trained on, as input "
        "or as target). 'auto': 'held-out' when train.method is 'n2n' on the exposures' "
        "targets (the training exposures were the network's targets: a network that has "
        "learned their noise at fixed sky positions would be scored against that same "
        "noise), 'all' otherwise (with n2n_targets 'star-field' the network saw simulated "
        "frames only).",
    )
    reference_kernel: int = Field(
        3,
        ge=0,
        description="Without truth: half-width h (px) of the (2h+1)² pixel kernel and "
        "background plane fitted to bring each reference to the frame's seeing, sub-pixel "
        "position and flux scale (pausdenoise.reference_match); the references the kernel "
        "fits best are used. 0: references as resampled, flux scale from zero-points only.",
    )
    reference_model: Literal["free", "psf"] = Field(
        "free",
        description="Without truth, with reference_kernel > 0: 'free' uses the fitted pixel "
        "kernel as it is. It predicts the frame from a noisy reference, so it smooths what "
        "the reference's noise hides (the matched reference is smoother than the frame's "
        "truth, and its flux scale low). 'psf' keeps its sub-pixel shift and background "
        "plane, takes the shape from the least-squares kernel between the two PSF models "
        "(Moffats from psf_fwhm_px/psf_beta or seeing, elliptical with psf_e1/psf_e2 from the "
        "ingest; a broader reference is only "
        "moved, never sharpened: pair it with max_seeing_ratio 1) and the flux scale from "
        "sums over bright pixels of the other references "
        "(pausdenoise.reference_match.psf_matched).",
    )
    max_seeing_ratio: float | None = Field(
        None,
        gt=0.0,
        description="Without truth: a frame's references come only from exposures whose PSF "
        "FWHM (psf_fwhm_px or seeing) is at most this times the frame's; exposures without "
        "one always qualify. No kernel sharpens a broader reference: with reference_model "
        "'psf' use 1.0, since on a crowded field each broader reference leaves its mismatch "
        "in every star's core (the PSF-model match is then only as good as the Moffat "
        "models: docs/evaluation.md). A frame left without any is skipped, with the reason. "
        "None: any exposure.",
    )
    max_sky_noise_model_ratio: float | None = Field(
        None,
        gt=0.0,
        description="Without truth: a frame whose raw sky pixels' estimated MSE exceeds this "
        "times their noise model ((sky + light)/gain + read noise², from the frame's gain "
        "and read noise) is not scored: its references miss its sky by more than the gain's "
        "accuracy allows, and one such frame can move the pooled figures "
        "(docs/evaluation.md). skipped.csv gives the ratio. Frames without a gain are "
        "scored. None: every frame.",
    )
    reference_candidates: int = Field(
        12,
        ge=1,
        description="Without truth, with reference_kernel > 0: at most this many exposures "
        "(largest coverage first) are matched, of which max_references are kept.",
    )
    min_overlap: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Without truth: an exposure of the same band counts as a reference when "
        "it covers at least this fraction of the frame's good pixels once resampled.",
    )
    resampling: Literal["auto", "shift", "interp", "reproject"] = Field(
        "auto",
        description="Without truth: how references are brought onto the frame's grid "
        "(pausdenoise.stack.resample_frame; 'auto' is exact for aligned grids).",
    )
    source_threshold: float = Field(
        3.0,
        gt=0,
        description="Without truth or catalogue: source pixels are where the references' "
        "mean, smoothed with the detection kernel, exceeds this many σ of its noise.",
    )
    sky_margin: int = Field(
        3,
        ge=0,
        description="Without truth: sky pixels lie farther than this (px) from any source "
        "or above-threshold pixel.",
    )

    @property
    def references_to_read(self) -> int:
        """Exposures brought onto a frame's grid: the candidates to match, or the references.

        Returns
        -------
        int
        """
        if self.reference_kernel > 0:
            return max(self.reference_candidates, self.max_references)
        return self.max_references


# --------------------------------------------------------------------------- pixel classes


def gaussian_blur(image: np.ndarray, good: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur normalised over the good pixels (bad pixels get their neighbours' mean).

    Parameters
    ----------
    image : ndarray (ny, nx)
        Pixels, ADU (values at bad pixels are ignored).
    good : ndarray of bool (ny, nx)
        Usable pixels (the others do not contribute).
    sigma : float
        Gaussian σ, px.

    Returns
    -------
    ndarray of float64
        The blurred image, ADU (NaN where no good pixel is near).
    """
    num = ndimage.gaussian_filter(np.where(good, image, 0.0), sigma, mode="constant")
    den = ndimage.gaussian_filter(good.astype(np.float64), sigma, mode="constant")
    return np.divide(num, den, out=np.full(image.shape, np.nan), where=den > 1e-3)


def sky_pixel_mask(
    truth: np.ndarray, sky: float, sigma_noise: float, good: np.ndarray, tolerance: float
) -> np.ndarray:
    """Select good pixels whose noiseless value is within ``tolerance * sigma_noise`` of ``sky``.

    Parameters
    ----------
    truth : ndarray of float, shape (ny, nx)
        Noiseless image, ADU.
    sky : float
        Sky level, ADU.
    sigma_noise : float
        Per-pixel noise σ, ADU.
    good : ndarray of bool, shape (ny, nx)
        Usable pixels.
    tolerance : float
        Half-width of the accepted band, in units of ``sigma_noise``.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        The sky pixels (a subset of ``good``).
    """
    return good & (np.abs(truth - sky) < tolerance * sigma_noise)


def low_snr_pixel_mask(
    light: np.ndarray, good: np.ndarray, sigma_noise: float, lower: float, upper: float
) -> np.ndarray:
    """Select good pixels whose source light lies between ``lower`` and ``upper`` σ.

    Parameters
    ----------
    light : ndarray of float, shape (ny, nx)
        Source light per pixel above the sky, ADU (noiseless truth minus sky, or the
        references' mean; NaN is never selected).
    good : ndarray of bool, shape (ny, nx)
        Usable pixels.
    sigma_noise : float
        Per-pixel noise σ of one exposure, ADU.
    lower, upper : float
        The accepted band ``lower·σ ≤ light ≤ upper·σ``, in units of ``sigma_noise``.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        The low-S/N pixels (a subset of ``good``).
    """
    with np.errstate(invalid="ignore"):
        band = (light >= lower * sigma_noise) & (light <= upper * sigma_noise)
    return good & band


def aperture_pixel_mask(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    a_px: np.ndarray,
    b_px: np.ndarray,
    theta_rad: np.ndarray,
) -> np.ndarray:
    """Mark the pixels whose centre lies in any of the given ellipses.

    Parameters
    ----------
    shape : (ny, nx)
        Shape of the mask, pixels.
    x, y : array
        Ellipse centres, 0-based pixel coordinates (centre of pixel [0, 0] is (0, 0)).
    a_px, b_px : array
        Semi-axes in pixels.
    theta_rad : array
        Position angle in radians, counter-clockwise from +x (photutils convention).

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        True inside at least one ellipse.
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
    """Return the data range for PSNR/SSIM: 99.9th minus 0.1th percentile of the finite truth.

    Parameters
    ----------
    truth : ndarray of float
        Noiseless image, ADU.

    Returns
    -------
    float
        The range, ADU.
    """
    lo, hi = np.nanpercentile(truth[np.isfinite(truth)], [0.1, 99.9])
    return float(hi - lo)


def ssim_map(
    estimate: np.ndarray, truth: np.ndarray, data_range: float, sigma: float = 1.5
) -> np.ndarray:
    """Compute the per-pixel SSIM (Wang et al. 2004) with a Gaussian window of width ``sigma`` px.

    Parameters
    ----------
    estimate : ndarray of float, shape (ny, nx)
        The image scored, ADU (NaN taken as 0).
    truth : ndarray of float, shape (ny, nx)
        The reference image, ADU (NaN taken as 0).
    data_range : float
        Data range for the stabilising constants (K1 = 0.01, K2 = 0.03), ADU.
    sigma : float, optional
        σ of the Gaussian window, pixels. Default 1.5.

    Returns
    -------
    ndarray of float64, shape (ny, nx)
        The SSIM index per pixel (dimensionless, at most 1).
    """
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


def _finite_good(d: np.ndarray, good: np.ndarray) -> np.ndarray:
    x = np.asarray(d, dtype=np.float64)[good]
    return x[np.isfinite(x)]


def noise_variance_from_pair(b: np.ndarray, c: np.ndarray, good: np.ndarray) -> float:
    """Noise variance of exposure B from two independent exposures of equal noise.

    ``σ_B² = var(B − C) / 2`` over the good pixels (assumes ``σ_B = σ_C`` and the same
    signal; see the module docstring).

    Parameters
    ----------
    b, c : ndarray (ny, nx)
        Two exposures on the same pixel grid and flux scale, ADU.
    good : ndarray of bool (ny, nx)
        Pixels to use (good in both).

    Returns
    -------
    float
        ``σ_B²`` in ADU².
    """
    return float(np.var(_finite_good(np.asarray(b, np.float64) - c, good)) / 2.0)


def noise_variance_from_triplet(
    b: np.ndarray, c: np.ndarray, d: np.ndarray, good: np.ndarray
) -> float:
    """Noise variance of B from three independent exposures B, C, D (unequal noise allowed).

    ``σ_B² = (var(B − C) + var(B − D) − var(C − D)) / 2``, exact in expectation for
    independent noises of any variances and the same signal (``var(X − Y) = σ_X² + σ_Y²``).

    Parameters
    ----------
    b, c, d : ndarray (ny, nx)
        Three exposures on the same pixel grid and flux scale, ADU.
    good : ndarray of bool (ny, nx)
        Pixels to use (good in all three).

    Returns
    -------
    float
        ``σ_B²`` in ADU².
    """
    sel = good & np.isfinite(b) & np.isfinite(c) & np.isfinite(d)

    def v(p: np.ndarray, q: np.ndarray) -> float:
        return float(np.var(_finite_good(np.asarray(p, np.float64) - q, sel)))

    return 0.5 * (v(b, c) + v(b, d) - v(c, d))


def mse_to_truth_via_independent(
    estimate_a: np.ndarray, raw_b: np.ndarray, noise_var_b: float, good: np.ndarray
) -> float:
    """Unbiased MSE of ``estimate_a`` to the unknown truth: ``MSE(est_A, raw_B) − σ_B²``.

    Parameters
    ----------
    estimate_a : ndarray (ny, nx)
        Image of exposure A being scored (raw or denoised), ADU.
    raw_b : ndarray (ny, nx)
        Independent exposure B on A's grid and flux scale, ADU. The sky levels must agree
        (subtract each frame's sky first): an offset counts as error.
    noise_var_b : float
        Per-pixel noise variance of ``raw_b`` as given (after any resampling), ADU².
    good : ndarray of bool (ny, nx)

    Returns
    -------
    float
        Estimated ``MSE(est_A, truth)`` in ADU²; may be negative from noise when the true
        MSE is small.
    """
    d = _finite_good(np.asarray(estimate_a, np.float64) - raw_b, good)
    return float(np.mean(d**2) - noise_var_b)


def reference_on_grid(
    image: np.ndarray,
    mask: np.ndarray | None,
    ivar: np.ndarray | None,
    wcs: Any,
    zp: float | None,
    target_wcs: Any,
    target_shape: tuple[int, int],
    target_zp: float | None,
    resampling: Literal["auto", "shift", "interp", "reproject"] = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Bring an independent exposure onto a target frame's grid and flux scale.

    Sky-subtracted (sigma-clipped median of its good pixels), scaled by ``zp / target_zp``
    and resampled with :func:`pausdenoise.stack.stack_frames` (one frame, uniform weight),
    i.e. exactly as the stacks are made: masked pixels never contribute.

    Parameters
    ----------
    image : ndarray (ny, nx)
        The exposure in its own ADU, sky not subtracted.
    mask : ndarray of int or None
        Non-zero marks a bad pixel.
    ivar : ndarray or None
        Inverse variance (1/ADU²); ``ivar ≤ 0`` marks a bad pixel.
    wcs, target_wcs : astropy.wcs.WCS or None
        Both None: the grids are taken as identical (shapes must agree; exact copy).
    zp, target_zp : float or None
        Multiplicative zero-points (calibrated flux = ADU · ZP); None or non-positive on
        either side: no scaling.
    target_shape : (int, int)
    resampling : str
        ``StackConfig.resampling``.

    Returns
    -------
    values : ndarray float64 ``target_shape``
        ADU at ``target_zp`` on the target grid, NaN where invalid.
    valid : ndarray of bool ``target_shape``

    Raises
    ------
    ValueError
        No WCS on one side only, or no WCS and different shapes.
    """
    scale_ok = zp is not None and target_zp is not None and np.isfinite([zp, target_zp]).all() \
        and zp > 0 and target_zp > 0
    if (wcs is None) != (target_wcs is None):
        raise ValueError("one frame has a WCS and the other not: cannot align them")
    if wcs is None:
        img = np.asarray(image, dtype=np.float64)
        if img.shape != tuple(target_shape):
            raise ValueError(f"no WCS and shapes differ: {img.shape} vs {tuple(target_shape)}")
        valid = np.isfinite(img)
        if mask is not None:
            valid &= np.asarray(mask) == 0
        if ivar is not None:
            valid &= np.isfinite(ivar) & (np.asarray(ivar) > 0)
        sky = frame_statistics(img, (~valid).astype(np.uint8)).sky
        scale = float(zp) / float(target_zp) if scale_ok else 1.0
        return np.where(valid, (img - sky) * scale, np.nan), valid
    cfg = StackConfig(weighting="uniform", resampling=resampling)
    value, weight = stack_frames(
        [image], [mask], [ivar], [wcs], target_wcs, tuple(target_shape), cfg,
        zps=[float(zp)] if scale_ok else None, zp_ref=float(target_zp) if scale_ok else None,
    )
    valid = weight > 0
    return np.where(valid, value.astype(np.float64), np.nan), valid


def pixel_classes_without_truth(
    references_mean: np.ndarray,
    good: np.ndarray,
    *,
    source_mask: np.ndarray | None = None,
    threshold: float = 3.0,
    fwhm: float = 3.0,
    margin: int = 3,
    noise_sigma: float | None = None,
    low_snr_max: float = 10.0,
) -> dict[str, np.ndarray]:
    """Sky and source pixel classes of a frame without truth, from its references.

    The sky-subtracted mean of the independent exposures (on the frame's grid) is smoothed
    with a unit-sum Gaussian of FWHM ``fwhm`` px (normalised over good pixels); its noise σ
    is the MAD-σ over the good pixels. *Source* pixels: ``source_mask`` (e.g. catalogue
    apertures) when given, else the smoothed mean above ``threshold`` σ. *Sky* pixels: good
    pixels farther than ``margin`` px from any source or above-threshold pixel. With
    ``noise_sigma``, *low-S/N* pixels: the smoothed mean above ``threshold`` σ and the
    unsmoothed mean at most ``low_snr_max`` × ``noise_sigma`` (the faint light, whatever the
    catalogue says).

    Parameters
    ----------
    references_mean : ndarray (ny, nx)
        Mean of the references, ADU, sky-subtracted (NaN where invalid).
    good : ndarray of bool (ny, nx)
        Pixels good in the frame and in every reference.
    source_mask : ndarray of bool, optional
    threshold : float
        In σ of the smoothed mean.
    fwhm : float
        Smoothing kernel FWHM, px.
    margin : int
        Dilation of the source pixels excluded from the sky, px.
    noise_sigma : float, optional
        The frame's pixel noise σ, ADU (e.g. :func:`~pausdenoise.stats.pixel_noise_sigma`);
        None: no low-S/N class.
    low_snr_max : float
        Upper end of the low-S/N class, in units of ``noise_sigma``.

    Returns
    -------
    dict
        ``{"sky": mask, "source": mask}`` and, with ``noise_sigma``, ``"low_snr"``
        (boolean, subsets of ``good``).
    """
    g = good & np.isfinite(references_mean)
    x = np.where(g, references_mean, 0.0)
    s = fwhm / 2.3548
    num = ndimage.gaussian_filter(x, s, mode="constant")
    den = ndimage.gaussian_filter(g.astype(np.float64), s, mode="constant")
    smooth = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-3)
    vals = smooth[g]
    if vals.size == 0:
        empty = np.zeros(good.shape, dtype=bool)
        out = {"sky": empty, "source": empty.copy()}
        if noise_sigma is not None:
            out["low_snr"] = empty.copy()
        return out
    med = float(np.median(vals))
    sigma = float(MAD_TO_SIGMA * np.median(np.abs(vals - med)))
    above = g & (smooth > med + threshold * sigma)
    source = above if source_mask is None else (np.asarray(source_mask, bool) & g)
    exclude = above | source
    if margin > 0 and exclude.any():
        exclude = ndimage.binary_dilation(exclude, iterations=margin)
    out = {"sky": g & ~exclude, "source": source & g}
    if noise_sigma is not None:
        out["low_snr"] = above & low_snr_pixel_mask(references_mean, g, noise_sigma,
                                                    -np.inf, low_snr_max)
    return out


def _block_standard_error(q: np.ndarray, sel: np.ndarray, block: int) -> float:
    """Return the standard error of ``mean(q[sel])`` from ``block`` × ``block`` px blocks.

    Returns
    -------
    float
        NaN with fewer than two blocks.
    """
    yy, xx = np.nonzero(sel)
    nbx = sel.shape[1] // block + 1
    ids = (yy // block) * nbx + xx // block
    _, inv = np.unique(ids, return_inverse=True)
    n_k = np.bincount(inv).astype(np.float64)
    s_k = np.bincount(inv, weights=q)
    k = n_k.size
    if k < 2:
        return float("nan")
    mean = s_k.sum() / n_k.sum()
    return float(np.sqrt(k / (k - 1) * np.sum((s_k - mean * n_k) ** 2)) / n_k.sum())


@dataclass(frozen=True)
class IndependentMetrics:
    """Result of :func:`independent_exposure_metrics`.

    Attributes
    ----------
    combined : DataFrame
        Per (kind, pixel class): the estimate of equation (1) averaged over the references.
    per_reference : DataFrame
        Per (reference index, kind, pixel class): equation (1) with that reference alone
        and its own σ_j² — a consistency check between references.
    """

    combined: pd.DataFrame
    per_reference: pd.DataFrame


def _nan_row(kind: str, name: str, n: int, estimator: str, k: int) -> dict[str, Any]:
    return {"kind": kind, "pixel_class": name, "n_pixels": n, "rms": np.nan,
            "psnr_db": np.nan, "ssim": np.nan, "mse": np.nan, "mse_se": np.nan,
            "mse_to_reference": np.nan, "noise_var_reference": np.nan,
            "estimator": estimator, "n_references": k}


def independent_exposure_metrics(
    estimates: Mapping[str, np.ndarray],
    raw: np.ndarray,
    references: Sequence[np.ndarray],
    classes: Mapping[str, np.ndarray],
    *,
    estimator: Literal["triplet", "pair", "equal-noise"] = "triplet",
    block: int = 8,
) -> IndependentMetrics:
    """Estimated MSE to the unknown truth, per image kind and pixel class (no truth needed).

    Implements equation (1) of the module docstring: for each reference ``R_j``,
    ``MSE(E, R_j) − σ_j²`` with σ_j² from exposure differences on the same pixels, then
    the plain mean over the references. With that uniform mean the ``"pair"`` and
    ``"triplet"`` estimators give the *same* combined value (the equal-noise assumption of
    ``"pair"`` cancels in the average over ordered pairs); they differ per reference, where
    only ``"triplet"`` is unbiased for unequal noise.

    Parameters
    ----------
    estimates : mapping of kind -> ndarray (ny, nx)
        Images of frame D to score, e.g. ``{"raw": A, "denoised": E}``; ADU with D's sky
        subtracted.
    raw : ndarray (ny, nx)
        D's raw image A, sky-subtracted, ADU (the third exposure of ``"triplet"`` and
        ``"equal-noise"``).
    references : sequence of ndarray (ny, nx)
        Independent exposures on D's grid and flux scale, sky-subtracted, ADU (NaN where
        invalid). ``"triplet"`` and ``"pair"`` need at least two, ``"equal-noise"`` one.
    classes : mapping of name -> bool ndarray (ny, nx)
        Pixel classes; only pixels finite in every input are used.
    estimator : {"triplet", "pair", "equal-noise"}
        How σ_j² is estimated (module docstring).
    block : int
        Block size (px) of the standard errors.

    Returns
    -------
    IndependentMetrics
        ``combined``: one row per (kind, class) with ``kind, pixel_class, n_pixels, rms``
        (ADU, the square root of ``mse``; NaN when ``mse`` ≤ 0), ``psnr_db, ssim`` (NaN: no
        truth to scale them), ``mse`` (estimated MSE to the truth, ADU²), ``mse_se`` (its
        standard error, ADU²), ``mse_to_reference`` (mean over references of MSE(E, R_j),
        ADU²), ``noise_var_reference`` (mean σ_j², ADU²), ``estimator``, ``n_references``.
        ``per_reference``: the same columns (``n_references`` = 1) plus ``reference_index``.

    Raises
    ------
    ValueError
        Too few references for the estimator, or an unknown estimator.
    """
    if estimator not in ("triplet", "pair", "equal-noise"):
        raise ValueError(f"unknown noise estimator {estimator!r}")
    k = len(references)
    need = 1 if estimator == "equal-noise" else 2
    if k < need:
        raise ValueError(f"estimator {estimator!r} needs ≥ {need} independent exposures, got {k}")
    a_full = np.asarray(raw, dtype=np.float64)
    refs_full = [np.asarray(r, dtype=np.float64) for r in references]
    est_full = {kind: np.asarray(e, dtype=np.float64) for kind, e in estimates.items()}
    finite = np.isfinite(a_full)
    for x in (*refs_full, *est_full.values()):
        finite &= np.isfinite(x)
    rows: list[dict[str, Any]] = []
    ref_rows: list[dict[str, Any]] = []
    for name, sel_in in classes.items():
        sel = np.asarray(sel_in, bool) & finite
        n = int(sel.sum())
        if n < 2:
            for kind in est_full:
                rows.append(_nan_row(kind, name, n, estimator, k))
                for j in range(k):
                    ref_rows.append({"reference_index": j, **_nan_row(kind, name, n,
                                                                      estimator, 1)})
            continue
        a = a_full[sel]
        refs = [r[sel] for r in refs_full]

        def csq(d: np.ndarray) -> np.ndarray:
            return (d - d.mean()) ** 2  # per-pixel terms whose mean is var(d)

        # Per-pixel terms v_j whose mean is the σ_j² estimate.
        vmaps = []
        for j, rj in enumerate(refs):
            if estimator == "equal-noise":
                vmaps.append(0.5 * csq(a - rj))
                continue
            parts = [
                0.5 * csq(rj - rp) if estimator == "pair"
                else 0.5 * (csq(a - rj) + csq(rj - rp) - csq(a - rp))
                for p, rp in enumerate(refs) if p != j
            ]
            vmaps.append(np.mean(parts, axis=0))
        for kind, e_full in est_full.items():
            e = e_full[sel]
            qs = []
            for j, (rj, v) in enumerate(zip(refs, vmaps, strict=True)):
                sq = (e - rj) ** 2
                q = sq - v
                qs.append(q)
                ref_rows.append({"reference_index": j, **_summarise(
                    kind, name, n, q, sq, v, sel, block, estimator, 1)})
            q_all = np.mean(qs, axis=0)
            sq_all = np.mean([(e - rj) ** 2 for rj in refs], axis=0)
            v_all = np.mean(vmaps, axis=0)
            rows.append(_summarise(kind, name, n, q_all, sq_all, v_all, sel, block,
                                   estimator, k))
    return IndependentMetrics(pd.DataFrame(rows), pd.DataFrame(ref_rows))


def _summarise(kind: str, name: str, n: int, q: np.ndarray, sq: np.ndarray, v: np.ndarray,
               sel: np.ndarray, block: int, estimator: str, k: int) -> dict[str, Any]:
    mse = float(q.mean())
    return {
        "kind": kind,
        "pixel_class": name,
        "n_pixels": n,
        "rms": float(np.sqrt(mse)) if mse > 0 else np.nan,
        "psnr_db": np.nan,
        "ssim": np.nan,
        "mse": mse,
        "mse_se": _block_standard_error(q, sel, block),
        "mse_to_reference": float(sq.mean()),
        "noise_var_reference": float(v.mean()),
        "estimator": estimator,
        "n_references": k,
    }


# --------------------------------------------------------------------------- detection


def smoothed_noise_sigma(sigma_noise: float, fwhm: float) -> float:
    """Return σ of white noise after the normalised Gaussian smoothing of :func:`detect`.

    A unit-sum Gaussian of σ = s px lowers white-noise σ by ``1 / (2 sqrt(pi) s)``.

    Parameters
    ----------
    sigma_noise : float
        Per-pixel noise σ before smoothing, ADU.
    fwhm : float
        FWHM of the smoothing Gaussian, pixels.

    Returns
    -------
    float
        The σ after smoothing, ADU.
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

    Parameters
    ----------
    image : ndarray of float, shape (ny, nx)
        The image, ADU (non-finite pixels are masked).
    sky : float
        Sky level subtracted first, ADU.
    threshold_adu : float
        Detection threshold on the smoothed image, ADU.
    mask : ndarray of int, shape (ny, nx), or None
        Non-zero marks a bad pixel.
    config : EvaluateConfig
        ``detection_fwhm`` (pixels) and ``detection_npixels``.

    Returns
    -------
    pandas.DataFrame
        ``x, y`` (0-based px) of each detection's centroid.
    """
    # photutils is heavy (~1 s): kept off the config import path, which imports this module
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

    Parameters
    ----------
    detections : pandas.DataFrame
        ``x, y`` of the detections, 0-based pixels.
    truth : pandas.DataFrame
        ``x, y`` of the true sources, 0-based pixels.
    radius : float
        Largest accepted distance, pixels.

    Returns
    -------
    true_found : ndarray of bool
        Over ``truth`` rows: some detection is matched to it.
    det_real : ndarray of bool
        Over ``detections`` rows: matched to some true source.
    """
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
    """Tabulate the fraction of true sources detected per magnitude bin.

    Parameters
    ----------
    true_mag : ndarray of float
        Magnitudes of the true sources, AB.
    found : ndarray of bool
        Whether each true source was detected.
    bins : list of float
        Bin edges, AB magnitudes.

    Returns
    -------
    pandas.DataFrame
        ``mag_lo``, ``mag_hi``, ``n_true`` and ``completeness`` (NaN for an empty bin).
    """
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
    """Find the faintest magnitude where completeness ≥ ``level``.

    Linear interpolation between the bin centres around the first drop below ``level``
    (after it was reached); the faintest centre when completeness never drops below it
    again. The bright end is assumed complete.

    Parameters
    ----------
    table : pandas.DataFrame
        A :func:`completeness_table`.
    level : float
        Completeness level, a fraction in [0, 1].

    Returns
    -------
    float
        The magnitude, AB; NaN when completeness never reaches ``level``.
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
