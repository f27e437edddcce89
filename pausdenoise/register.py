"""Registration of exposures without a WCS: whole-frame offsets by FFT cross-correlation.

Exposures of one field from small telescopes often carry no WCS; consecutive frames differ by
a translation of a few tens of pixels (guiding drift, dithers) and no rotation. This module
measures that translation from the pixels and turns it into a shift-only transform the
stacks and the independent-exposure evaluation use in place of the frames' WCSs.

Conventions
-----------
Pixels are 0-based with pixel centres at integers (array ``a[y, x]``). The offset of
``image`` relative to ``reference`` is ``(dx, dy) = (position in image) − (position in
reference)``: a star at ``(x, y)`` in the reference is found at ``(x + dx, y + dy)`` in the
image, i.e. ``image[y + dy, x + dx] ≈ reference[y, x]``. Offsets are additive:
``off(A, C) = off(A, B) + off(B, C)`` and ``off(B, A) = −off(A, B)``.

How an offset is measured (:func:`measure_offset`)
--------------------------------------------------
1. **Preparation** of each image: good pixels are finite, unmasked and below ``saturation``
   (when it is not given: the image's maximum when at least 3 pixels reach it, a saturated
   plateau), saturated pixels dilated by one pixel. The image is sky-subtracted (median of
   the good pixels) and divided by its MAD σ (the sky noise in a sparse field, larger in a
   crowded one). Columns and rows whose median exceeds 3 in absolute value, or with more
   than 10 % of their good pixels above ``clip_sigma`` (bleed trails, hot or dead lines),
   are dropped whole, so that a defect at the same place in both frames cannot pull the
   peak to zero shift. Bad pixels are set to 0.
2. **Integer peak**: the image clipped to ``[−5, clip_sigma]`` (bright stars, cosmic rays
   tamed) and high-pass filtered (minus its Gaussian-smoothed self of σ = ``highpass_sigma``
   px, normalised over the good pixels: removes gradients and scattered light) is
   cross-correlated, ``c(s) = Σ_p r(p) · i(p + s)`` for every shift ``s``, by zero-padded
   FFTs (no wrap-around), together with the number of pixel pairs good in both, ``n(s)``.
   ``z(s) = c(s) / sqrt(n(s))`` (a z-score for white noise) is searched over the shifts
   where ``n(s)`` covers at least ``min_overlap`` of the reference's good pixels and
   ``|s| ≤ max_shift_px`` on each axis.
3. **Significance**: ``(z_peak − median(z)) / MAD-σ(z)`` over the shifts searched. Pure
   noise frames give ≈ 5 (the largest of ~10⁵-10⁶ Gaussian values); fields with stars
   tens to hundreds. Below ``min_significance`` a :class:`RegistrationError` is raised.
4. **Sub-pixel refinement** on the overlap at the integer peak, restricted to the pixels
   good in *both* images (sources cut by an edge or a masked line are cut alike) and
   high-pass filtered there. Values above ``clip_sigma`` are compressed logarithmically
   (``c (1 + ln(z / c))``): smooth, so unlike a clip no phase-dependent plateau aliases the
   sub-pixel information, while the brightest (possibly non-linear) stars do not dominate.
   Both images are weighted by a taper (0 to 1 over 4 px from bad pixels and edges); the
   correlation is evaluated by a matrix-multiply DFT of the cross-power spectrum on a grid
   ``1 / upsample`` px fine over ±1.5 px, and a 3-point parabola through the finest maximum
   gives the remainder. The taper pulls a single estimate towards zero, so the image is
   Fourier-shifted back by the estimate and the remainder measured again (≤ 3 times).
   Synthetic stellar fields: errors ≤ 0.03 px; real SAAO frames: triangle closure ≤ 0.05 px
   (``tests/test_register.py``).

How an offset is applied
------------------------
:func:`shift_wcs` builds a tangent-plane WCS per frame that differs from the reference's
only by its reference pixel; the two map onto each other by an exact translation, so the
existing WCS machinery (:func:`pausdenoise.stack.resample_frame`, ``resampling="auto"`` or
``"shift"``) applies it: a whole-pixel offset is pure re-indexing (an exact copy: no
interpolation, so the noise stays independent between pixels and frames), a sub-pixel
remainder is bilinear (flux-conserving, smooths and correlates the noise of neighbouring
pixels). Callers that need exact copies round the offset first (``round_to_pixel=True``);
the residual misalignment (≤ 0.5 px) then only affects pixels with signal.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage

from pausdenoise.errors import RegistrationError
from pausdenoise.stats import mad_sigma

__all__ = ["Offset", "bad_pixel_map", "measure_offset", "register_frames", "shift_wcs"]

#: Pixel scale of the synthetic WCSs of :func:`shift_wcs`, degrees per pixel (1 arcsec).
SYNTHETIC_PIXEL_DEG = 1.0 / 3600.0


@dataclass(frozen=True)
class Offset:
    """The translation of one image relative to a reference image.

    Attributes
    ----------
    dx, dy : float
        Position in the image minus position in the reference, px (0-based pixels; a star at
        ``(x, y)`` in the reference is at ``(x + dx, y + dy)`` in the image).
    significance : float
        Height of the correlation peak above the median, in robust σ of the correlation
        surface (dimensionless).
    overlap : float
        Fraction of the reference's good pixels that have a good counterpart in the image at
        the integer part of the offset.
    """

    dx: float
    dy: float
    significance: float
    overlap: float


@dataclass(frozen=True)
class _Prepared:
    """An image ready for correlation: normalised, clipped, filtered; 0 on bad pixels."""

    z: np.ndarray
    soft: np.ndarray
    good: np.ndarray
    highpass_sigma: float | None


def _defect_lines(z: np.ndarray, good: np.ndarray, clip: float) -> np.ndarray:
    """Flag whole columns and rows that look like defects (bleed trails, hot/dead lines).

    Returns
    -------
    ndarray of bool
        True on the pixels of the flagged columns and rows.
    """
    zn = np.where(good, z, np.nan)
    bad = np.zeros(z.shape, dtype=bool)
    for axis in (0, 1):  # axis 0: statistics along y -> one value per column
        n = good.sum(axis=axis)
        with warnings.catch_warnings():  # all-NaN lines: NaN median, flagged below as not
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(zn, axis=axis)
            high = np.nansum(zn > clip, axis=axis) / np.maximum(n, 1)
        flag = (n > 0) & ((np.abs(np.nan_to_num(med)) > 3.0) | (high > 0.1))
        bad |= flag[None, :] if axis == 0 else flag[:, None]
    return bad


def _prepare(image: np.ndarray, mask: np.ndarray | None, *, clip_sigma: float,
             highpass_sigma: float | None, saturation: float | None) -> _Prepared:
    """Normalise, tame and filter one image for the correlation (module docstring, step 1).

    Returns
    -------
    _Prepared
        The prepared image and its good pixels.

    Raises
    ------
    RegistrationError
        Too few good pixels or no noise to normalise by.
    """
    x = np.asarray(image, dtype=np.float64)
    good = np.isfinite(x)
    if mask is not None:
        good &= np.asarray(mask) == 0
    if saturation is None and good.any():  # a plateau at the maximum: saturated cores
        top = float(x[good].max())
        saturation = top if np.count_nonzero(x[good] == top) >= 3 else None
    if saturation is not None:
        sat = np.isfinite(x) & (x >= saturation)
        good &= ~ndimage.binary_dilation(sat, iterations=1)
    if good.sum() < 16:
        raise RegistrationError(f"only {int(good.sum())} good pixels to register with")
    sky = float(np.median(x[good]))
    sigma = float(mad_sigma(x[good]))
    if not sigma > 0:
        raise RegistrationError("the image has no noise (MAD σ = 0): cannot normalise it")
    z = (np.where(good, x, sky) - sky) / sigma
    good &= ~_defect_lines(z, good, clip_sigma)
    soft = np.where(good, z, 0.0)
    # Refinement: compressed logarithmically above the clip (smooth, no plateau to alias)
    c = clip_sigma
    soft = np.where(soft > c, c * (1.0 + np.log(np.maximum(soft, c) / c)), soft)
    z = np.clip(soft, -5.0, c)  # the integer search: clipped
    if highpass_sigma:
        g = good.astype(np.float64)
        den = ndimage.gaussian_filter(g, highpass_sigma, mode="constant")
        num = ndimage.gaussian_filter(z, highpass_sigma, mode="constant")
        z = z - np.divide(num, den, out=np.zeros_like(num), where=den > 1e-3)
    return _Prepared(z=np.where(good, z, 0.0), soft=np.where(good, soft, 0.0), good=good,
                     highpass_sigma=highpass_sigma)


def _fft_shape(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return (sfft.next_fast_len(a[0] + b[0]), sfft.next_fast_len(a[1] + b[1]))


def _signed(idx: int, n: int) -> int:
    return idx - n if idx > n // 2 else idx


def _shift_grid(n: int) -> np.ndarray:
    """Return the signed shift of each index of an FFT axis of length ``n`` (wrap-around).

    Returns
    -------
    ndarray of int
        ``0, 1, …, n//2, −(n − n//2 − 1), …, −1``.
    """
    i = np.arange(n)
    return np.where(i > n // 2, i - n, i)


def _allowed(counts: np.ndarray, n_ref: int, min_overlap: float,
             max_shift_px: float | None) -> np.ndarray:
    """Select the shifts considered: enough overlap and within ``max_shift_px``.

    Returns
    -------
    ndarray of bool
        Over the FFT grid of shifts.
    """
    ok = counts >= max(min_overlap * n_ref, 1.0)
    if max_shift_px is not None:
        sy = np.abs(_shift_grid(counts.shape[0]))[:, None]
        sx = np.abs(_shift_grid(counts.shape[1]))[None, :]
        ok &= (sy <= max_shift_px) & (sx <= max_shift_px)
    return ok


def _common_support(ref: _Prepared, img: _Prepared, sy: int, sx: int,
                    taper_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut both images to their overlap at an integer shift, on the pixels good in both.

    Both cut-outs are zero where either image is bad and high-passed on that common support
    (the same filter for both). The weight is 0 on bad pixels and rises linearly to 1 over
    ``taper_px`` px from the nearest bad or outside pixel: sources cut by a frame edge or a
    masked line are then weighted alike in both images.

    Returns
    -------
    tuple of ndarray
        ``(r, i, w)`` with ``i[p] ≈ r[p]`` up to the sub-pixel remainder, and the weight.
    """
    ny = min(ref.z.shape[0], img.z.shape[0] - sy) - max(0, -sy)
    nx = min(ref.z.shape[1], img.z.shape[1] - sx) - max(0, -sx)
    y0, x0 = max(0, -sy), max(0, -sx)
    rs = (slice(y0, y0 + ny), slice(x0, x0 + nx))
    is_ = (slice(y0 + sy, y0 + sy + ny), slice(x0 + sx, x0 + sx + nx))
    common = ref.good[rs] & img.good[is_]
    cuts = [np.where(common, ref.soft[rs], 0.0), np.where(common, img.soft[is_], 0.0)]
    if ref.highpass_sigma:
        den = ndimage.gaussian_filter(common.astype(np.float64), ref.highpass_sigma,
                                      mode="constant")
        for a in cuts:
            num = ndimage.gaussian_filter(a, ref.highpass_sigma, mode="constant")
            a -= np.divide(num, den, out=np.zeros_like(num), where=den > 1e-3)
    edge = np.pad(common, 1)  # outside the overlap counts as bad
    w = np.clip(ndimage.distance_transform_edt(edge) / taper_px, 0.0, 1.0)[1:-1, 1:-1]
    return np.where(common, cuts[0], 0.0), np.where(common, cuts[1], 0.0), w


def _vertex(m1: float, c0: float, p1: float) -> float:
    den = m1 - 2.0 * c0 + p1
    return 0.0 if den >= 0 else float(np.clip(0.5 * (m1 - p1) / den, -0.5, 0.5))


def _upsampled_peak(cross: np.ndarray, upsample: int) -> tuple[float, float]:
    """Find the peak of ``ifft2(cross)`` within ±1.5 px of zero shift, to sub-pixel precision.

    The correlation is evaluated by a matrix DFT (a band-limited interpolation) on a grid of
    step ``1 / upsample`` px; a 3-point parabola through the finest maximum on each axis
    gives the result.

    Returns
    -------
    tuple of float
        ``(dy, dx)`` in px.
    """
    half = int(np.ceil(1.5 * upsample))
    steps = np.arange(-half, half + 1) / upsample
    ey = np.exp(2j * np.pi * np.outer(steps, sfft.fftfreq(cross.shape[0])))
    ex = np.exp(2j * np.pi * np.outer(sfft.fftfreq(cross.shape[1]), steps))
    c = (ey @ cross @ ex).real
    iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
    last = len(steps) - 1
    fy = _vertex(c[iy - 1, ix], c[iy, ix], c[iy + 1, ix]) if 0 < iy < last else 0.0
    fx = _vertex(c[iy, ix - 1], c[iy, ix], c[iy, ix + 1]) if 0 < ix < last else 0.0
    return steps[iy] + fy / upsample, steps[ix] + fx / upsample


def _subpixel(r: np.ndarray, i: np.ndarray, w: np.ndarray, upsample: int,
              iterations: int = 3) -> tuple[float, float]:
    """Measure the sub-pixel shift of ``i`` relative to ``r`` (both on one support).

    The weight ``w`` pulls a single estimate towards zero shift (it is not shifted with the
    image), so the estimate is iterated: ``i`` is shifted back by the current estimate
    (Fourier shift, zero-padded) before the next measurement, until the remainder, and with
    it the pull, is negligible.

    Returns
    -------
    tuple of float
        ``(dy, dx)`` in px, with ``i[p + (dy, dx)] ≈ r[p]``.
    """
    shape = (sfft.next_fast_len(r.shape[0] + 8), sfft.next_fast_len(r.shape[1] + 8))
    rw = np.conj(sfft.fft2(r * w, shape))
    spec = sfft.fft2(i, shape)
    ky = sfft.fftfreq(shape[0])[:, None]
    kx = sfft.fftfreq(shape[1])[None, :]
    ty = tx = 0.0
    for _ in range(iterations):
        back = sfft.ifft2(spec * np.exp(2j * np.pi * (ky * ty + kx * tx))).real
        cut = back[: r.shape[0], : r.shape[1]] * w  # i(p + t) on the support
        dy, dx = _upsampled_peak(rw * sfft.fft2(cut, shape), upsample)
        ty, tx = ty + dy, tx + dx
        if max(abs(dy), abs(dx)) < 0.1 / upsample:
            break
    return ty, tx


def _correlate(ref: _Prepared, img: _Prepared, *, max_shift_px: float | None,
               upsample: int, min_significance: float, min_overlap: float) -> Offset:
    """Cross-correlate two prepared images (module docstring, steps 2-4).

    Returns
    -------
    Offset
        The measured offset of ``img`` relative to ``ref``.

    Raises
    ------
    RegistrationError
        No shift with enough overlap, or a peak below ``min_significance``.
    """
    shape = _fft_shape(ref.z.shape, img.z.shape)
    cc = sfft.irfft2(np.conj(sfft.rfft2(ref.z, shape)) * sfft.rfft2(img.z, shape), shape)
    gcross = np.conj(sfft.rfft2(ref.good.astype(np.float64), shape)) \
        * sfft.rfft2(img.good.astype(np.float64), shape)
    counts = np.rint(sfft.irfft2(gcross, shape))
    n_ref = int(ref.good.sum())
    ok = _allowed(counts, n_ref, min_overlap, max_shift_px)
    if not ok.any():
        raise RegistrationError(
            f"no shift{'' if max_shift_px is None else f' within ±{max_shift_px} px'} "
            f"overlaps ≥ {min_overlap:.0%} of the reference's good pixels")
    z = np.where(ok, cc / np.sqrt(np.maximum(counts, 1.0)), np.nan)
    peak = int(np.nanargmax(z))
    iy, ix = np.unravel_index(peak, z.shape)
    vals = z[ok]
    med = float(np.median(vals))
    spread = float(mad_sigma(vals))
    signif = float((z[iy, ix] - med) / spread) if spread > 0 else 0.0
    if not signif >= min_significance:
        raise RegistrationError(
            f"no significant correlation peak: {signif:.1f} σ < {min_significance:g} σ "
            "(different fields, or no sources in common)")
    sy, sx = _signed(int(iy), shape[0]), _signed(int(ix), shape[1])
    dy, dx = float(sy), float(sx)
    if upsample > 1:
        fy, fx = _subpixel(*_common_support(ref, img, sy, sx, taper_px=4.0), upsample)
        dy, dx = dy + fy, dx + fx
    return Offset(dx=float(dx), dy=float(dy), significance=signif,
                  overlap=float(counts[iy, ix] / n_ref))


def measure_offset(
    reference: np.ndarray,
    image: np.ndarray,
    *,
    mask_ref: np.ndarray | None = None,
    mask_img: np.ndarray | None = None,
    max_shift_px: float | None = None,
    upsample: int = 20,
    highpass_sigma: float | None = 10.0,
    clip_sigma: float = 20.0,
    saturation: float | None = None,
    min_significance: float = 10.0,
    min_overlap: float = 0.25,
) -> Offset:
    """Measure the translation of ``image`` relative to ``reference`` by cross-correlation.

    See the module docstring for the method and the sign convention.

    Parameters
    ----------
    reference, image : ndarray (ny, nx)
        The two exposures, ADU (sky not subtracted; shapes may differ).
    mask_ref, mask_img : ndarray of int or bool, optional
        Non-zero marks a bad pixel (ignored by the correlation).
    max_shift_px : float, optional
        Largest offset considered on each axis, px. None: any with enough overlap.
    upsample : int
        Sub-pixel refinement factor (grid step ``1 / upsample`` px); 1: integer offsets.
    highpass_sigma : float or None
        σ (px) of the Gaussian whose smoothed image is subtracted; None: no high-pass.
    clip_sigma : float
        Upper clip of the normalised images, in σ of the sky noise.
    saturation : float, optional
        Pixels at or above this level (ADU, both images) are ignored, with their neighbours.
    min_significance : float
        Smallest accepted peak significance (robust σ of the correlation surface).
    min_overlap : float
        Smallest accepted fraction of the reference's good pixels overlapped.

    Returns
    -------
    Offset
        ``dx, dy`` (px, image minus reference, 0-based pixels), significance and overlap.

    Raises
    ------
    RegistrationError
        No significant peak, too small an overlap, or an image without usable pixels.
    """
    kw = {"clip_sigma": clip_sigma, "highpass_sigma": highpass_sigma, "saturation": saturation}
    ref = _prepare(reference, mask_ref, **kw)
    img = _prepare(image, mask_img, **kw)
    return _correlate(ref, img, max_shift_px=max_shift_px, upsample=max(int(upsample), 1),
                      min_significance=min_significance, min_overlap=min_overlap)


def register_frames(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None = None,
    reference_index: int = 0,
    *,
    errors: str = "raise",
    **kwargs: object,
) -> pd.DataFrame:
    """Measure the offset of every frame relative to one reference frame.

    Parameters
    ----------
    images : sequence of ndarray (ny, nx)
        The exposures, ADU.
    masks : sequence of ndarray or None, optional
        Per-frame masks (non-zero: bad pixel).
    reference_index : int
        0-based index of the reference frame.
    errors : {"raise", "record"}
        On a frame that cannot be registered: raise, or record the message in ``error``
        (its ``dx, dy`` NaN).
    **kwargs
        Passed to :func:`measure_offset` (``max_shift_px``, ``upsample``, …).

    Returns
    -------
    DataFrame
        One row per frame: ``index``, ``dx``, ``dy`` (px, frame minus reference, 0-based;
        0 for the reference), ``significance`` (NaN for the reference), ``overlap`` (1 for
        the reference), ``error`` (empty when registered).

    Raises
    ------
    RegistrationError
        A frame cannot be registered and ``errors="raise"``.
    IndexError
        ``reference_index`` is not the index of a frame.
    ValueError
        An unknown ``errors``.
    """
    if errors not in ("raise", "record"):
        raise ValueError(f"errors must be 'raise' or 'record', not {errors!r}")
    n = len(images)
    if not 0 <= reference_index < n:
        raise IndexError(f"reference_index {reference_index} out of range for {n} frames")
    mk = [None] * n if masks is None else list(masks)
    rows = []
    for k in range(n):
        if k == reference_index:
            rows.append({"index": k, "dx": 0.0, "dy": 0.0, "significance": np.nan,
                         "overlap": 1.0, "error": ""})
            continue
        try:
            o = measure_offset(images[reference_index], images[k],
                               mask_ref=mk[reference_index], mask_img=mk[k], **kwargs)
        except RegistrationError as exc:
            if errors == "raise":
                raise RegistrationError(f"frame {k}: {exc}") from exc
            rows.append({"index": k, "dx": np.nan, "dy": np.nan, "significance": np.nan,
                         "overlap": np.nan, "error": str(exc)})
            continue
        rows.append({"index": k, "dx": o.dx, "dy": o.dy, "significance": o.significance,
                     "overlap": o.overlap, "error": ""})
    return pd.DataFrame(rows)


def bad_pixel_map(image: np.ndarray, mask: np.ndarray | None = None,
                  ivar: np.ndarray | None = None) -> np.ndarray:
    """Return the pixels registration must ignore: non-finite, masked or without weight.

    Parameters
    ----------
    image : ndarray (ny, nx)
        The exposure, ADU.
    mask : ndarray of int, optional
        Non-zero marks a bad pixel.
    ivar : ndarray, optional
        Inverse variance (1/ADU²); non-finite or ≤ 0 marks a bad pixel.

    Returns
    -------
    ndarray of bool (ny, nx)
        True on bad pixels (the ``mask_ref`` / ``mask_img`` of :func:`measure_offset`).
    """
    bad = ~np.isfinite(np.asarray(image, dtype=np.float64))
    if mask is not None:
        bad |= np.asarray(mask) != 0
    if ivar is not None:
        iv = np.asarray(ivar, dtype=np.float64)
        bad |= ~(np.isfinite(iv) & (iv > 0))
    return bad


def shift_wcs(dx: float = 0.0, dy: float = 0.0, *, round_to_pixel: bool = False):
    """Build a synthetic WCS for a frame offset by ``(dx, dy)`` from the reference frame.

    All synthetic WCSs share one tangent point and pixel scale (``SYNTHETIC_PIXEL_DEG``);
    only the reference pixel differs, so two of them map onto each other by the exact
    translation ``frame pixel = reference pixel + (dx, dy)``, which
    :func:`pausdenoise.stack.frame_offset` recovers (to ~1e-6 px) and
    :func:`pausdenoise.stack.resample_frame` applies: whole pixels by re-indexing (exact
    copies), a sub-pixel remainder bilinearly. ``shift_wcs()`` is the reference's own.

    Parameters
    ----------
    dx, dy : float
        Offset of the frame relative to the reference, px (position in the frame minus
        position in the reference, 0-based pixels), as :class:`Offset`.
    round_to_pixel : bool
        Round the offset to whole pixels first (no interpolation when applied).

    Returns
    -------
    astropy.wcs.WCS
        A celestial TAN WCS (not a sky position: only its differences mean anything).
    """
    from astropy.wcs import WCS  # astropy: kept off this module's import path

    if round_to_pixel:
        dx, dy = float(np.round(dx)), float(np.round(dy))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [180.0, 0.0]
    w.wcs.crpix = [1.0 + float(dx), 1.0 + float(dy)]  # FITS pixels are 1-based
    w.wcs.cdelt = [-SYNTHETIC_PIXEL_DEG, SYNTHETIC_PIXEL_DEG]
    return w
