"""Independent exposures brought to a frame's seeing, position and flux scale (its truth).

The independent-exposure estimator of :mod:`pausdenoise.evaluate` assumes that every
reference ``R_j`` carries the *same* noiseless image as the frame D being scored. Exposures of
one field differ in exposure time, transparency, seeing, sub-pixel position (frames without a
WCS are shifted by whole pixels) and sky gradient; a zero-point from the headers (or a default
one, for frames without calibration) removes none of these but the first. On a crowded field,
whose "sky" is unresolved stars, the mismatch enters sky pixels as well as sources, adds terms
of the order of the noise variance to every estimate and of either sign to a denoised one.

The correction is the one of difference imaging (Alard & Lupton 1998, here with a free pixel
kernel as in Bramich 2008): each reference on D's grid is replaced by ``K_j ⊗ R_j + B_j``, with
``K_j`` a (2h+1)² pixel kernel (h = ``half_width``) and ``B_j`` a plane (constant and x, y
gradients), fitted by weighted linear least squares to D's raw image A over D's good
pixels, with weights 1 / ((sky + light) / gain + read noise²) (the light from the
references' mean, so the weights do not follow A's own noise; without them the brightest
stars, whose Poisson noise is largest, would set the kernel). ``Σ K_j`` is the flux scale
A / R_j, the kernel's centroid the residual sub-pixel shift, its second moment the seeing
difference (a sharper reference is blurred to D's seeing; a broader one cannot be fully
sharpened and keeps part of its mismatch). The kernel smooths the reference's noise, which is
why the estimator measures σ_j² on the references as compared. A enters only through a fit of
(2h+1)² + 3 numbers to many thousands of pixels, so the matched reference stays independent
of A's noise to that order.

What it does not remove: the least-squares kernel predicts A from a *noisy* R, so where R's
noise exceeds its signal (high spatial frequencies, shallow references) it shrinks, like a
Wiener filter (errors in variables): the matched reference is slightly smoother than D's
truth and, for a shallow reference, a few per cent faint. Correcting the normal equations
for R's noise, or instrumental variables from the other references, undo this in principle
but amplify noise until the fit is unstable (tried on the synthetic test). In the synthetic
test (``tests/test_reference_match.py``) sky-pixel estimates of the raw image and of a
σ = 1 px blur and the raw image's source-pixel estimate come out within a few per cent of
the truth, but the blur's source-pixel MSE about a quarter low: source-pixel scores of
smoothing estimates stay indicative. On a crowded field with bright stars it is worse: on
star fields matched to the SAAO exposures even references through the frame's own PSF on
its own grid put the raw frame's source-pixel MSE at 3 × its truth (the smoothing kernel
blurs the cores), while the sky stays within 5 %
(``benchmarks/bench_matched_simulation.py --estimator-check``). Where the PSFs are known,
:func:`psf_matched` avoids the shrinkage: it keeps the fit's shift and plane and takes the
kernel's shape from the two PSF models and its sum from sums over bright pixels.
:func:`select_matched` keeps the references the kernel fits best (smallest normalised
residual): the closest in seeing and the steadiest in flux.

Pure functions of arrays; the evaluate stage and the benchmarks call them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pausdenoise.psf import elliptical_moffat_stamp, moffat_stamp
from pausdenoise.stats import mad_sigma, pixel_noise_sigma

#: Most pixels a kernel is fitted on (a seeded random subset beyond it).
MAX_FIT_PIXELS = 150_000
#: Fewest pixels a kernel is fitted on, per free parameter.
MIN_PIXELS_PER_PARAMETER = 20


@dataclass(frozen=True)
class MatchedReference:
    """A reference brought to the frame's seeing, position and flux scale.

    Attributes
    ----------
    values : ndarray (ny, nx)
        ``K ⊗ R + B``: ADU on the frame's grid and scale, sky-subtracted, NaN where any
        pixel of the kernel's footprint is invalid.
    kernel : ndarray (2h+1, 2h+1)
        The fitted kernel (identity when not fitted); ``kernel[h + dy, h + dx]`` weighs the
        reference pixel at (y + dy, x + dx).
    background : tuple of float
        Plane B: constant (ADU), x and y gradients (ADU over the frame's width / height,
        from its centre).
    n_fit : int
        Pixels the kernel was fitted on (0: not fitted).
    residual_rms : float
        RMS of (A − (K ⊗ R + B)) / σ_A on those pixels, σ_A the frame's modelled noise
        (≈ 1 for a perfect match; NaN when not fitted).
    """

    values: np.ndarray
    kernel: np.ndarray
    background: tuple[float, float, float]
    n_fit: int
    residual_rms: float

    @property
    def flux_scale(self) -> float:
        """Σ K: the frame's flux over the reference's (dimensionless)."""
        return float(self.kernel.sum())

    @property
    def shift_px(self) -> tuple[float, float]:
        """(dx, dy): the kernel's centroid, px.

        Where, relative to (x, y), the reference holds the light the frame holds at (x, y).
        """
        h = self.kernel.shape[0] // 2
        k, tot = self.kernel, self.kernel.sum()
        if tot == 0:
            return (math.nan, math.nan)
        yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
        return (float((k * xx).sum() / tot), float((k * yy).sum() / tot))


def _footprint_valid(valid: np.ndarray, h: int) -> np.ndarray:
    """Return the pixels whose whole (2h+1)² neighbourhood is valid (False near the edge).

    Returns
    -------
    ndarray of bool
    """
    return ndimage.binary_erosion(valid, structure=np.ones((2 * h + 1, 2 * h + 1), bool),
                                  border_value=0)


def _design(reference: np.ndarray, yy: np.ndarray, xx: np.ndarray, h: int,
            shape: tuple[int, int]) -> np.ndarray:
    """Return the design matrix: the shifted reference per kernel offset, then 1, x, y.

    Returns
    -------
    ndarray (n_pixels, (2h+1)² + 3)
    """
    cols = [reference[yy + dy, xx + dx] for dy in range(-h, h + 1) for dx in range(-h, h + 1)]
    ny, nx = shape
    cols += [np.ones(yy.size), (xx - (nx - 1) / 2) / nx, (yy - (ny - 1) / 2) / ny]
    return np.stack(cols, axis=1)


def fit_kernel(image: np.ndarray, reference: np.ndarray, fit: np.ndarray,
               variance: np.ndarray, half_width: int = 3, seed: int = 0
               ) -> tuple[np.ndarray | None, tuple[float, float, float], int, float]:
    """Weighted least-squares pixel kernel and background plane taking a reference to the frame.

    Parameters
    ----------
    image : ndarray (ny, nx)
        The frame's raw pixels A, sky-subtracted ADU, NaN where unusable.
    reference : ndarray (ny, nx)
        The reference on the frame's grid, sky-subtracted ADU, NaN where invalid.
    fit : ndarray of bool (ny, nx)
        Pixels to fit on.
    variance : ndarray (ny, nx)
        The frame's noise variance per pixel (ADU², or proportional to it): the weights.
    half_width : int
        h: the kernel is (2h+1) × (2h+1) px.
    seed : int
        Seed of the subset drawn when more than :data:`MAX_FIT_PIXELS` pixels qualify.

    Returns
    -------
    kernel : ndarray (2h+1, 2h+1) or None
        None when fewer than ``MIN_PIXELS_PER_PARAMETER`` pixels per parameter qualify.
    background : tuple of float
        Constant, x and y gradient of the plane (ADU).
    n_fit : int
        Pixels used.
    residual_rms : float
        RMS of the fit's normalised residual (residual / sqrt(variance)).
    """
    h = int(half_width)
    a = np.asarray(image, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    sel = fit & np.isfinite(a) & np.isfinite(var) & (var > 0) \
        & _footprint_valid(np.isfinite(r), h)
    yy, xx = np.nonzero(sel)
    n_par = (2 * h + 1) ** 2 + 3
    if yy.size < MIN_PIXELS_PER_PARAMETER * n_par:
        return None, (0.0, 0.0, 0.0), int(yy.size), math.nan
    if yy.size > MAX_FIT_PIXELS:
        pick = np.sort(np.random.default_rng(seed).choice(yy.size, MAX_FIT_PIXELS,
                                                          replace=False))
        yy, xx = yy[pick], xx[pick]
    w = 1.0 / np.sqrt(var[yy, xx])
    x = _design(r, yy, xx, h, a.shape) * w[:, None]
    y = a[yy, xx] * w
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    kernel = coef[:-3].reshape(2 * h + 1, 2 * h + 1)
    return kernel, tuple(float(c) for c in coef[-3:]), int(yy.size), float(np.sqrt(np.mean(
        resid**2)))


def apply_kernel(reference: np.ndarray, kernel: np.ndarray,
                 background: tuple[float, float, float]) -> np.ndarray:
    """``K ⊗ R + B`` on the reference's grid (the form :func:`fit_kernel` fits).

    Parameters
    ----------
    reference : ndarray (ny, nx)
        Sky-subtracted ADU, NaN where invalid.
    kernel : ndarray (2h+1, 2h+1)
        ``kernel[h + dy, h + dx]`` weighs the pixel at (y + dy, x + dx).
    background : tuple of float
        Constant, x and y gradient (ADU).

    Returns
    -------
    ndarray float64
        NaN wherever a pixel of the kernel's footprint is invalid.
    """
    r = np.asarray(reference, dtype=np.float64)
    h = kernel.shape[0] // 2
    valid = np.isfinite(r)
    out = ndimage.correlate(np.where(valid, r, 0.0), kernel, mode="constant", cval=0.0)
    out += background_plane(r.shape, background)
    return np.where(_footprint_valid(valid, h), out, np.nan)


def background_plane(shape: tuple[int, int], background: tuple[float, float, float]
                     ) -> np.ndarray:
    """Evaluate the background plane B of :func:`fit_kernel` on a frame's grid.

    Parameters
    ----------
    shape : (int, int)
        (ny, nx).
    background : tuple of float
        Constant (ADU), x and y gradients (ADU over the width / height, from the centre).

    Returns
    -------
    ndarray float64 ``shape``
    """
    ny, nx = shape
    return background[0] + background[1] * ((np.arange(nx) - (nx - 1) / 2) / nx)[None, :] \
        + background[2] * ((np.arange(ny) - (ny - 1) / 2) / ny)[:, None]


def _psf_stamp(psf: tuple[float, ...], size: int, x0: float = 0.0, y0: float = 0.0
               ) -> np.ndarray:
    """Return a PSF model's pixel-integrated stamp of unit flux.

    Returns
    -------
    ndarray (size, size)
        :func:`~pausdenoise.psf.moffat_stamp` for ``(FWHM, β)`` or a round
        ``(FWHM, β, e1, e2)``, :func:`~pausdenoise.psf.elliptical_moffat_stamp` for an
        elongated one.
    """
    if len(psf) >= 4 and (psf[2] or psf[3]):
        return elliptical_moffat_stamp(psf[0], psf[1], psf[2], psf[3], size, x0, y0)
    return moffat_stamp(psf[0], psf[1], size, x0, y0)


def psf_kernel(flux_scale: float, shift_px: tuple[float, float],
               frame_psf: tuple[float, ...], reference_psf: tuple[float, ...],
               half_width: int, resampled: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Return the kernel that takes the reference's PSF model to the frame's, moved by a shift.

    Both PSFs are Moffats (pixel-integrated): circular for ``(FWHM, β)``, elliptical for
    ``(FWHM, β, e1, e2)`` (:func:`pausdenoise.psf.elliptical_radius2`).
    The kernel is the least-squares (2h+1)² solution of ``K ⊗ P_ref(· − shift) = P_target``
    on noiseless model stamps, so no noise shrinks it: ``P_target`` is the frame's PSF when
    the reference is at least as sharp, otherwise the reference's own (no kernel sharpens;
    the kernel then only moves the light by the sub-pixel shift, with the least blur that
    PSF allows). Normalised to Σ K = ``flux_scale``.

    Parameters
    ----------
    flux_scale : float
        Σ K (the frame's flux over the reference's).
    shift_px : tuple of float
        (dx, dy): where, relative to (x, y), the reference holds the light the frame holds
        at (x, y), px (the convention of :attr:`MatchedReference.shift_px`).
    frame_psf, reference_psf : tuple of float
        (FWHM px, Moffat β[, e1, e2]) of the frame and of the reference.
    half_width : int
        h: the kernel is (2h+1) × (2h+1) px.
    resampled : tuple of float
        (fx, fy): the fractional part of the reference's pixel offset from the frame's grid
        when it was brought there by bilinear interpolation (0 for whole-pixel shifts). The
        interpolation blurs it by f(1 − f) px² per axis; the reference's model includes it.

    Returns
    -------
    ndarray (2h+1, 2h+1)
        ``kernel[h + dy, h + dx]`` weighs the reference pixel at (y + dy, x + dx).
    """
    h = int(half_width)
    target = frame_psf if frame_psf[0] >= reference_psf[0] else reference_psf
    n = 2 * math.ceil(2.5 * max(frame_psf[0], reference_psf[0])) + 2 * h + 1
    (fx, fy), (sx, sy) = resampled, shift_px
    big = sum(wx * wy * _psf_stamp(reference_psf, n + 2 * h, sx + fx - a, sy + fy - b)
              for a, wx in ((0, 1.0 - fx), (1, fx)) for b, wy in ((0, 1.0 - fy), (1, fy))
              if wx * wy > 0)
    want = _psf_stamp(target, n)
    cols = [big[h + dy:h + dy + n, h + dx:h + dx + n].ravel()
            for dy in range(-h, h + 1) for dx in range(-h, h + 1)]
    coef, *_ = np.linalg.lstsq(np.stack(cols, axis=1), want.ravel(), rcond=None)
    kernel = coef.reshape(2 * h + 1, 2 * h + 1)
    return float(flux_scale) * kernel / kernel.sum()


#: Largest half-width (px) of a PSF-model kernel.
MAX_MODEL_HALF_WIDTH = 12


def model_half_width(half_width: int, fwhm_frame_px: float, fwhm_reference_px: float) -> int:
    """Return the half-width of a PSF-model kernel: at least twice the broader FWHM.

    A Moffat's wings reach far: a 7 × 7 kernel between Moffats (β = 3) of FWHM 2.7 and
    4.4 px leaves 7 % of the peak in the core, a 17 × 17 one 1 % (checked in
    ``tests/test_reference_match.py``).

    Parameters
    ----------
    half_width : int
        The fitted kernel's half-width h (``evaluate.reference_kernel``).
    fwhm_frame_px, fwhm_reference_px : float
        The two PSF FWHMs, px.

    Returns
    -------
    int
        max(h, ⌈2 × the broader FWHM⌉), at most :data:`MAX_MODEL_HALF_WIDTH`.
    """
    want = math.ceil(2.0 * max(fwhm_frame_px, fwhm_reference_px))
    return int(max(half_width, min(want, MAX_MODEL_HALF_WIDTH)))


def psf_matched(reference: np.ndarray, match: MatchedReference,
                frame_psf: tuple[float, ...], reference_psf: tuple[float, ...],
                image: np.ndarray, bright: np.ndarray,
                resampled: tuple[float, float] = (0.0, 0.0)) -> MatchedReference:
    """Re-match a reference with the kernel between the two PSF models, not the fitted one.

    The fitted pixel kernel predicts the frame from a *noisy* reference, so it shrinks what
    the reference's noise hides, like a Wiener filter: the matched reference is smoother
    than the frame's truth, and on a frame of mostly sky even Σ K, the flux scale, comes
    out low (by ~10 % on the simulated survey, whose references are already on the frame's
    zero-point). Kept from the fit: the centroid (the sub-pixel shift) and the background
    plane. The shape is the kernel between the two PSF models (:func:`psf_kernel`), and
    the flux scale the ratio of the frame's to the re-matched reference's sums over
    ``bright`` pixels: sums, not a regression, so the reference's noise averages out
    instead of shrinking the scale.

    Parameters
    ----------
    reference : ndarray (ny, nx)
        The reference on the frame's grid, sky-subtracted ADU, NaN where invalid (as given
        to :func:`match_references`).
    match : MatchedReference
        Its fitted match.
    frame_psf, reference_psf : tuple of float
        (FWHM px, Moffat β[, e1, e2]) of the frame and of the reference (:func:`psf_kernel`).
    image : ndarray (ny, nx)
        The frame's raw pixels, sky-subtracted ADU, NaN where unusable.
    bright : ndarray of bool (ny, nx)
        Pixels of bright sources, chosen without this reference's noise (e.g. from the
        other references), on which the flux scale is measured.
    resampled : tuple of float
        Fractional pixel offset of the bilinear resampling (:func:`psf_kernel`).

    Returns
    -------
    MatchedReference
        Values ``K_psf ⊗ R + B``, the kernel of :func:`model_half_width` (larger than the
        fitted one when the PSFs are broad); ``n_fit`` and ``residual_rms`` those of the
        fitted match.
        The fitted match unchanged when fewer than 50 bright pixels are usable or their sum
        in the reference is not positive.
    """
    if match.kernel.shape[0] // 2 == 0:
        return match
    h = model_half_width(match.kernel.shape[0] // 2, frame_psf[0], reference_psf[0])
    kernel = psf_kernel(1.0, match.shift_px, frame_psf, reference_psf, h, resampled)
    unit = apply_kernel(reference, kernel, (0.0, 0.0, 0.0))
    plane = background_plane(unit.shape, match.background)
    a = np.asarray(image, dtype=np.float64)
    sel = bright & np.isfinite(unit) & np.isfinite(a)
    den = float(unit[sel].sum())
    if sel.sum() < 50 or not den > 0:
        return match
    scale = float((a - plane)[sel].sum()) / den
    return MatchedReference(scale * unit + plane, scale * kernel, match.background,
                            match.n_fit, match.residual_rms)


def valid_mean(references: Sequence[np.ndarray]) -> np.ndarray:
    """Return the mean of the references valid at each pixel.

    Parameters
    ----------
    references : sequence of ndarray (ny, nx)
        Matched references, ADU, NaN where invalid.

    Returns
    -------
    ndarray float64 (ny, nx)
        Per pixel the mean over the finite references; NaN where none is finite.
    """
    stack = np.stack([np.asarray(r, np.float64) for r in references])
    n = np.isfinite(stack).sum(axis=0)
    return np.where(n > 0, np.nansum(stack, axis=0) / np.maximum(n, 1), np.nan)


def bright_pixels(references: Sequence[np.ndarray], threshold: float = 10.0,
                  grow: int = 3) -> np.ndarray:
    """Return the pixels of bright sources in the mean of matched references.

    Parameters
    ----------
    references : sequence of ndarray (ny, nx)
        Matched references, sky-subtracted ADU, NaN where invalid.
    threshold : float
        Pixels whose mean exceeds this many σ of the mean's noise (MAD of its values)...
    grow : int
        ... dilated by this many px, to take in the sources' wings.

    Returns
    -------
    ndarray of bool (ny, nx)
    """
    mean = valid_mean(references)
    fin = mean[np.isfinite(mean)]
    if fin.size == 0:
        return np.zeros(mean.shape, bool)
    sigma = float(mad_sigma(fin))
    core = np.isfinite(mean) & (mean > threshold * max(sigma, 1e-12))
    if grow > 0:
        core = ndimage.binary_dilation(core, iterations=grow)
    return core


def noise_variance(image: np.ndarray, good: np.ndarray, references: Sequence[np.ndarray],
                   sky: float, gain: float | None, read_noise_adu: float = 0.0,
                   pixel_sigma: float | None = None) -> np.ndarray:
    """Return the frame's Poisson-plus-read noise variance per pixel from the references' light.

    Parameters
    ----------
    image : ndarray (ny, nx)
        The frame's raw pixels, sky-subtracted ADU.
    good : ndarray of bool (ny, nx)
        The frame's usable pixels.
    references : sequence of ndarray (ny, nx)
        References on the frame's grid, sky-subtracted ADU (their mean stands for the
        source light, so the weights do not follow the frame's own noise).
    sky : float
        The frame's sky level, ADU (0 for sky-subtracted data).
    gain : float or None
        e⁻/ADU. None: ``sky / σ²`` with σ the pixel-to-pixel noise (MAD of differences of
        horizontal neighbours / √2) when the sky is positive; otherwise the weights are σ²
        alone.
    read_noise_adu : float
        Read noise, ADU.
    pixel_sigma : float, optional
        σ already measured on these pixels (:func:`~pausdenoise.stats.pixel_noise_sigma`);
        None measures it.

    Returns
    -------
    ndarray (ny, nx)
        ``(sky + max(light, 0)) / gain + read_noise²`` (ADU²), never below 1 % of σ².
    """
    a = np.where(good, np.asarray(image, dtype=np.float64), np.nan)
    sig2 = (pixel_noise_sigma(a) if pixel_sigma is None else float(pixel_sigma)) ** 2
    sig2 = sig2 if sig2 > 0 else 1.0  # also NaN: no usable pair
    if gain is None or not gain > 0:
        gain = sky / sig2 if sky > 0 else None
    if gain is None:
        return np.full(a.shape, sig2)
    total, n = np.zeros(a.shape), np.zeros(a.shape)
    for r in references:  # a running mean: no stacked copy of full-size references
        ok = np.isfinite(r)
        total += np.where(ok, r, 0.0)
        n += ok
    light = np.where(n > 0, total / np.maximum(n, 1), 0.0)
    var = (max(float(sky), 0.0) + np.clip(light, 0.0, None)) / gain + read_noise_adu**2
    return np.maximum(var, 0.01 * sig2)


def match_references(image: np.ndarray, good: np.ndarray, references: Sequence[np.ndarray],
                     *, sky: float = 0.0, gain: float | None = None,
                     read_noise_adu: float = 0.0, half_width: int = 3
                     ) -> list[MatchedReference]:
    """Bring each reference to the frame's seeing, sub-pixel position and flux scale.

    Parameters
    ----------
    image : ndarray (ny, nx)
        The frame's raw pixels, sky-subtracted ADU.
    good : ndarray of bool (ny, nx)
        The frame's usable pixels (the kernel is fitted on all of them, a seeded subset of
        :data:`MAX_FIT_PIXELS` on large frames).
    references : sequence of ndarray (ny, nx)
        References on the frame's grid, sky-subtracted ADU, NaN where invalid.
    sky : float
        The frame's sky level (ADU) for the weights (:func:`noise_variance`).
    gain : float or None
        e⁻/ADU for the weights.
    read_noise_adu : float
        Read noise (ADU) for the weights.
    half_width : int
        Kernel half-width h, px ((2h+1)² free pixels).

    Returns
    -------
    list of MatchedReference
        In the order given. A reference whose kernel cannot be fitted (too few pixels) is
        returned unchanged with an identity kernel and ``n_fit`` saying how many qualified.
    """
    a = np.where(good, np.asarray(image, dtype=np.float64), np.nan)
    var = noise_variance(a, good, references, sky, gain, read_noise_adu)
    h = int(half_width)
    out = []
    for j, r in enumerate(references):
        kernel, bkg, n, rms = fit_kernel(a, r, good, var, h, seed=j)
        if kernel is None:
            ident = np.zeros((2 * h + 1, 2 * h + 1))
            ident[h, h] = 1.0
            out.append(MatchedReference(np.asarray(r, np.float64).copy(), ident,
                                        (0.0, 0.0, 0.0), n, math.nan))
            continue
        out.append(MatchedReference(apply_kernel(r, kernel, bkg), kernel, bkg, n, rms))
    return out


def select_matched(matched: Sequence[MatchedReference], k: int) -> list[int]:
    """Return the indices of the ``k`` references the kernel fits best (smallest residual).

    Parameters
    ----------
    matched : sequence of MatchedReference
        :func:`match_references` results.
    k : int
        How many to keep.

    Returns
    -------
    list of int
        Indices into ``matched`` in order of increasing ``residual_rms`` (unfitted ones,
        NaN, last, in their given order).
    """
    def key(i: int) -> tuple[int, float, int]:
        r = matched[i].residual_rms
        return (0, r, i) if np.isfinite(r) else (1, 0.0, i)
    return sorted(range(len(matched)), key=key)[:k]


def best_matched(image: np.ndarray, good: np.ndarray, references: Sequence[np.ndarray], k: int,
                 *, sky: float = 0.0, gain: float | None = None, read_noise_adu: float = 0.0,
                 half_width: int = 3) -> list[tuple[int, MatchedReference]]:
    """Match every candidate reference to the frame and keep the ``k`` that fit best.

    Parameters
    ----------
    image, good, references, sky, gain, read_noise_adu, half_width
        As :func:`match_references`; ``half_width = 0`` matches nothing and keeps the
        first ``k`` candidates as given (identity kernels).
    k : int
        References kept.

    Returns
    -------
    list of (int, MatchedReference)
        Candidate index and matched reference, best fit first.
    """
    if half_width <= 0:
        ident = np.ones((1, 1))
        return [(i, MatchedReference(np.asarray(r, np.float64), ident, (0.0, 0.0, 0.0), 0,
                                     math.nan)) for i, r in enumerate(references[:k])]
    matched = match_references(image, good, references, sky=sky, gain=gain,
                               read_noise_adu=read_noise_adu, half_width=half_width)
    return [(i, matched[i]) for i in select_matched(matched, k)]


def matched_row(m: MatchedReference) -> dict[str, float]:
    """Return what a table of references records of a match.

    Parameters
    ----------
    m : MatchedReference
        A match.

    Returns
    -------
    dict
        ``flux_scale`` (frame / reference), ``shift_x_px``, ``shift_y_px`` (the kernel's
        centroid, px), ``background_adu`` (the plane's constant), ``kernel_fit_rms``
        (normalised residual RMS; NaN when not fitted), ``kernel_fit_pixels``.
    """
    dx, dy = m.shift_px
    return {"flux_scale": m.flux_scale, "shift_x_px": dx, "shift_y_px": dy,
            "background_adu": m.background[0], "kernel_fit_rms": m.residual_rms,
            "kernel_fit_pixels": m.n_fit}


def frame_noise(attrs: Mapping[str, Any]) -> tuple[float | None, float]:
    """Return the gain and read noise the weights of :func:`match_references` need.

    Parameters
    ----------
    attrs : mapping
        A frame's store attributes (``gain`` in e⁻/ADU, ``rdnoise`` in e⁻).

    Returns
    -------
    tuple of (float or None, float)
        Gain (None when missing or not > 0: :func:`noise_variance` then estimates it) and
        read noise in ADU (0 when either is unknown).
    """
    def positive(key: str) -> float | None:
        try:
            v = float(attrs.get(key))
        except (TypeError, ValueError):
            return None
        return v if np.isfinite(v) and v > 0 else None

    gain, rdnoise = positive("gain"), positive("rdnoise")
    return gain, (rdnoise / gain if gain and rdnoise else 0.0)
