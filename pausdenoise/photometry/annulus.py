"""Sigma-clipped annulus background: step 1 (**Background**) of the forced-photometry recipe.

A circular annulus (``annulus_r_in`` … ``annulus_r_out`` pixels) around each source. A pixel
belongs to the annulus when its *centre* lies in it (photutils' ``method='center'``:
``r_in² <= d² < r_out²``); masked and non-finite pixels are dropped and never enter the
statistics; the rest are sigma-clipped exactly like
``astropy.stats.sigma_clip(sigma=3, maxiters=2)`` (centre = median, scale = population std,
a pixel survives when ``median - 3σ <= v <= median + 3σ``, each iteration clipping the
survivors of the previous one). The clipped mean, median, std and pixel count are recorded.

:func:`annulus_fraction_on_image` says how much of each annulus lies on the image (small
frames and stamps: the default 30/45 px annulus does not fit a 51 × 51 stamp).

The statistics are computed for batches of sources at once: the annulus pixels of a batch
are gathered into one ``(batch, K)`` array, sorted once per row, and since every
sigma-clipping pass keeps a contiguous range of the sorted values, the clipped
median/mean/std come from indices and prefix sums. Statistics are computed in float64
(float32 images are up-cast per pixel; sorting stays in float32, which gives the same
order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pausdenoise.maskbits import MaskBit

__all__ = ["annulus_fraction_on_image", "annulus_stats", "sky_estimate"]


def _annulus_offsets(r_in: float, r_out: float) -> tuple[np.ndarray, np.ndarray, int]:
    """List the integer pixel offsets that can hold an annulus pixel centre.

    A superset, valid for any source position within half a pixel of the integer centre.
    The offsets are ordered boundary first: the first ``n_edge`` may or may not be members
    depending on the sub-pixel position (tested per source); the rest are members for any
    position within half a pixel, so their distance test is skipped. Row-major otherwise.

    Returns
    -------
    tuple
        ``(dy, dx, n_edge)``: int64 offsets in pixels (rows, columns) and the count of
        boundary offsets at the front.
    """
    slack = math.sqrt(0.5) + 1e-6
    m = math.ceil(r_out + slack)
    dy, dx = np.mgrid[-m : m + 1, -m : m + 1]
    d = np.hypot(dx, dy)
    keep = (d >= r_in - slack) & (d <= r_out + slack)
    sure = keep & (d - slack >= r_in) & (d + slack < r_out)
    edge = keep & ~sure
    dy_o = np.concatenate([dy[edge], dy[sure]]).astype(np.int64)
    dx_o = np.concatenate([dx[edge], dx[sure]]).astype(np.int64)
    return dy_o, dx_o, int(edge.sum())


def _range_stats(
    srt: np.ndarray,
    c1: np.ndarray,
    c2: np.ndarray,
    piv: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, mean and ddof=0 std of ``srt[r, lo[r]:hi[r]]`` for every row ``r``.

    ``srt`` is row-sorted; ``c1``/``c2`` are the row prefix sums (with a leading 0 column)
    of ``srt - piv`` and its square, so a range's sums are two look-ups.

    Returns
    -------
    tuple of ndarray
        ``(median, mean, std)`` per row; NaN for empty ranges.
    """
    rows = np.arange(srt.shape[0])
    k = srt.shape[1]
    c = hi - lo
    cc = np.maximum(c, 1)
    i1 = np.clip(lo + (cc - 1) // 2, 0, k - 1)
    i2 = np.clip(lo + cc // 2, 0, k - 1)
    med = 0.5 * (srt[rows, i1] + srt[rows, i2])
    s1 = c1[rows, hi] - c1[rows, lo]
    s2 = c2[rows, hi] - c2[rows, lo]
    mean_d = s1 / cc
    var = np.maximum(s2 / cc - mean_d * mean_d, 0.0)
    empty = c <= 0
    med = np.where(empty, np.nan, med)
    mean = np.where(empty, np.nan, piv + mean_d)
    std = np.where(empty, np.nan, np.sqrt(var))
    return med, mean, std


@dataclass(frozen=True)
class _Annulus:
    """The annulus offsets around a source and their flat-index form for one image width."""

    dy: np.ndarray
    dx: np.ndarray
    n_edge: int  # the first n_edge offsets need the per-source radius test
    m: int  # largest |offset| (px): the half width of the annulus box
    doff: np.ndarray  # dy * nx + dx
    rin2: float
    rout2: float


def _annulus(r_in: float, r_out: float, nx: int) -> _Annulus:
    """Describe the annulus of radii ``r_in``, ``r_out`` (px) on an image ``nx`` px wide.

    Returns
    -------
    _Annulus
        Offsets, their flat form and the squared radii.
    """
    dy, dx, n_edge = _annulus_offsets(r_in, r_out)
    m = int(max(np.abs(dy).max(), np.abs(dx).max()))
    return _Annulus(dy, dx, n_edge, m, dy * nx + dx, r_in * r_in, r_out * r_out)


@dataclass(frozen=True)
class _Pixels:
    """The flattened image and mask, and which pixels are unusable."""

    nx: int
    ny: int
    flat_img: np.ndarray
    flat_msk: np.ndarray | None
    mbits: np.ndarray | None  # mask bits that drop a pixel, in the mask's dtype
    sort_dtype: np.dtype
    saturate_level: float | None
    mask_saturated: bool


def _pixels(
    image: np.ndarray,
    mask: np.ndarray | None,
    bad_mask_bits: int,
    saturate_level: float | None,
    mask_saturated: bool,
) -> _Pixels:
    """Flatten the image and mask and fix the sort dtype and the dropping mask bits.

    Returns
    -------
    _Pixels
        What every batch reads its pixels from.
    """
    ny, nx = image.shape
    flat_img = image.reshape(-1)
    flat_msk = None if mask is None else np.asarray(mask).reshape(-1)
    # sort in float32 when the image is float32 (order is the same), sums in float64
    sort_dtype = np.dtype(np.float32 if image.dtype == np.float32 else np.float64)
    mbits_arr = None
    if flat_msk is not None:
        mbits = bad_mask_bits | (int(MaskBit.SATURATED) if mask_saturated else 0)
        mbits_arr = np.asarray(mbits & int(np.iinfo(flat_msk.dtype).max), dtype=flat_msk.dtype)
    return _Pixels(
        nx, ny, flat_img, flat_msk, mbits_arr, sort_dtype, saturate_level, mask_saturated
    )


def _work_buffers(bmax: int, ann: _Annulus, pix: _Pixels) -> dict[str, np.ndarray | None]:
    """Work buffers, allocated once per call and reused by every batch.

    The per-batch arrays are ~2 MB each, and under dask's Nanny (which sets
    MALLOC_TRIM_THRESHOLD_ and thereby pins glibc's mmap threshold at 128 kB) allocating
    them afresh every batch costs a page fault per 4 kB (+60 % run time measured).

    Returns
    -------
    dict of str to ndarray
        Arrays of ``bmax`` rows; a batch uses the first rows of each (``mv`` is None
        without a mask).
    """
    kk, n_edge = ann.dy.size, ann.n_edge
    return {
        "flat": np.empty((bmax, kk), np.int64),
        "vals": np.empty((bmax, kk), pix.sort_dtype),
        "mv": None if pix.flat_msk is None else np.empty((bmax, kk), pix.flat_msk.dtype),
        "member": np.empty((bmax, kk), bool),
        "bb": np.empty((bmax, kk), bool),
        "srt": np.empty((bmax, kk), np.float64),
        "dev": np.empty((bmax, kk), np.float64),
        "c1": np.zeros((bmax, kk + 1)),
        "c2": np.zeros((bmax, kk + 1)),
        "e1": np.empty((bmax, n_edge)),
        "e2": np.empty((bmax, n_edge)),
        "eb": np.empty((bmax, n_edge), bool),
    }


def _pixel_indices(
    xs: np.ndarray, ys: np.ndarray, ann: _Annulus, pix: _Pixels, w: dict
) -> tuple[np.ndarray, np.ndarray]:
    """Find the flat indices of a batch's annulus pixels (in ``w["flat"]``).

    ``w["member"]`` is set to whether each pixel lies in the image; pixels outside are
    pointed at the nearest edge pixel so that reading them is safe.

    Returns
    -------
    tuple of ndarray
        ``(fx, fy)``: each position minus its nearest integer pixel (px).
    """
    nx, ny, m = pix.nx, pix.ny, ann.m
    flat, member = w["flat"], w["member"]
    ix, iy = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
    fx, fy = xs - ix, ys - iy
    interior = (ix - m >= 0) & (ix + m < nx) & (iy - m >= 0) & (iy + m < ny)
    np.add((iy * nx + ix)[:, None], ann.doff[None, :], out=flat)
    member.fill(True)
    edge_rows = np.flatnonzero(~interior)
    if edge_rows.size:  # annulus box crosses the image edge: clip and drop outside
        xx = ix[edge_rows, None] + ann.dx[None, :]
        yy = iy[edge_rows, None] + ann.dy[None, :]
        member[edge_rows] = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
        flat[edge_rows] = np.clip(yy, 0, ny - 1) * nx + np.clip(xx, 0, nx - 1)
    return fx, fy


def _gather_usable(pix: _Pixels, w: dict) -> None:
    """Read the values into ``w["vals"]``; drop masked, non-finite (and saturated) pixels."""
    flat, vals, member, bb = w["flat"], w["vals"], w["member"], w["bb"]
    if pix.flat_img.dtype == pix.sort_dtype:
        np.take(pix.flat_img, flat, out=vals)
    else:
        vals[...] = np.take(pix.flat_img, flat)
    if pix.flat_msk is not None:
        mv = w["mv"]
        np.take(pix.flat_msk, flat, out=mv)
        np.bitwise_and(mv, pix.mbits, out=mv)
        np.equal(mv, 0, out=bb)
        member &= bb
    np.isfinite(vals, out=bb)
    member &= bb
    if pix.mask_saturated and pix.saturate_level is not None:
        np.less(vals, pix.saturate_level, out=bb)
        member &= bb


def _radius_test(fx: np.ndarray, fy: np.ndarray, ann: _Annulus, w: dict) -> None:
    """Per-source centre-membership test, only for the offsets near the two radii."""
    n_edge, member = ann.n_edge, w["member"]
    e1, e2, eb = w["e1"], w["e2"], w["eb"]
    np.subtract(ann.dx[None, :n_edge], fx[:, None], out=e1)
    np.multiply(e1, e1, out=e1)
    np.subtract(ann.dy[None, :n_edge], fy[:, None], out=e2)
    np.multiply(e2, e2, out=e2)
    np.add(e1, e2, out=e1)
    np.greater_equal(e1, ann.rin2, out=eb)
    member[:, :n_edge] &= eb
    np.less(e1, ann.rout2, out=eb)
    member[:, :n_edge] &= eb


def _sort_members(w: dict) -> np.ndarray:
    """Sort each row's member values to its front (as float64 in ``w["srt"]``).

    Returns
    -------
    ndarray of int
        Member count per row.
    """
    vals, member, bb = w["vals"], w["member"], w["bb"]
    np.logical_not(member, out=bb)
    np.copyto(vals, np.nan, where=bb)
    vals.sort(axis=1)  # NaN sorted to the end
    np.copyto(w["srt"], vals)
    return np.count_nonzero(member, axis=1)


def _prefix_sums(cnt0: np.ndarray, w: dict) -> tuple[np.ndarray, np.ndarray]:
    """Fill the prefix sums ``w["c1"]``/``w["c2"]`` of the values minus a pivot.

    Returns
    -------
    tuple of ndarray
        ``(piv, has)``: the pivot of each row (its middle member value, 0 when empty) and
        whether the row has any member.
    """
    srt, dev, c1, c2 = w["srt"], w["dev"], w["c1"], w["c2"]
    rows = np.arange(srt.shape[0])
    has = cnt0 > 0
    piv = np.where(has, srt[rows, np.maximum(cnt0 - 1, 0) // 2], 0.0)
    # prefix sums of (value - pivot) and its square; the NaNs sit after position cnt0
    # and only reach prefix sums beyond it, which no clipped range [lo, hi) uses
    np.subtract(srt, piv[:, None], out=dev)
    np.cumsum(dev, axis=1, out=c1[:, 1:])
    np.multiply(dev, dev, out=dev)
    np.cumsum(dev, axis=1, out=c2[:, 1:])
    return piv, has


def _clip_ranges(
    cnt0: np.ndarray,
    piv: np.ndarray,
    has: np.ndarray,
    sigma: float,
    maxiters: int,
    w: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """Clip each row: iterate the sigma clipping on index ranges of the sorted values.

    Returns
    -------
    tuple of ndarray
        ``(lo, hi)``: the sorted-index range ``[lo, hi)`` of each row that survives.
    """
    srt, c1, c2, bb = w["srt"], w["c1"], w["c2"], w["bb"]
    lo = np.zeros(srt.shape[0], dtype=np.int64)
    hi = cnt0.astype(np.int64)
    for _ in range(maxiters):
        med, _mean, std = _range_stats(srt, c1, c2, piv, lo, hi)
        lower = med - std * sigma
        upper = med + std * sigma
        np.less(srt, lower[:, None], out=bb)
        nlo = np.count_nonzero(bb, axis=1)
        np.less_equal(srt, upper[:, None], out=bb)
        nhi = np.count_nonzero(bb, axis=1)
        nlo = np.where(has, np.maximum(lo, nlo), lo)
        nhi = np.where(has, np.minimum(hi, nhi), hi)
        if np.array_equal(nlo, lo) and np.array_equal(nhi, hi):
            break
        lo, hi = nlo, nhi
    return lo, hi


def annulus_stats(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    r_in: float,
    r_out: float,
    mask: np.ndarray | None = None,
    sigma: float = 3.0,
    maxiters: int = 2,
    bad_mask_bits: int = 0xFFFF,
    saturate_level: float | None = None,
    mask_saturated: bool = False,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Compute sigma-clipped statistics of circular-annulus pixels around each position.

    Membership by pixel centre (``r_in² <= d² < r_out²``, photutils ``method='center'``),
    masked / non-finite / off-image pixels dropped, then clipping identical to
    ``astropy.stats.sigma_clip(values, sigma=sigma, maxiters=maxiters)`` (median centre,
    ddof=0 std, inclusive bounds).

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Pixel values in ADU (float32 or float64).
    x, y : ndarray of float, shape (n,)
        Annulus centres: column and row, 0-based pixels (pixel centres at integers).
    r_in, r_out : float
        Inner and outer annulus radius in pixels (``r_out > r_in``).
    mask : ndarray of unsigned int, shape (ny, nx), optional
        ``MaskBit`` bits per pixel (0 = good); None when there is no mask.
    sigma : float, optional
        Clipping threshold in standard deviations, both sides. Default 3.
    maxiters : int, optional
        Maximum number of clipping iterations (astropy's ``maxiters``). Default 2.
    bad_mask_bits : int, optional
        A pixel is dropped when ``mask & bad_mask_bits != 0``. Default: any bit.
    saturate_level : float, optional
        Saturation level in ADU; only used with ``mask_saturated``.
    mask_saturated : bool, optional
        Also drop pixels at/above ``saturate_level`` or with the SATURATED mask bit.
    batch_size : int, optional
        Sources per vectorised batch (memory and speed only; the result does not depend
        on it). Default 64.

    Returns
    -------
    dict of str to ndarray, each shape (n,)
        ``bkg_mean``, ``bkg_median``, ``bkg_std`` (float64, ADU per pixel) and ``bkg_n``
        (int64, clipped pixel count); NaN statistics when no pixel is usable.
    """
    image = np.asarray(image)
    ny, nx = image.shape
    n = len(x)
    res = {
        "bkg_mean": np.full(n, np.nan),
        "bkg_median": np.full(n, np.nan),
        "bkg_std": np.full(n, np.nan),
        "bkg_n": np.zeros(n, dtype=np.int64),
    }
    # positions farther than r_out + 1 px from the image have no annulus pixel in it; leaving
    # them out also keeps the int64 pixel indices below from overflowing (x = 1e300)
    reach = float(r_out) + 1.0
    with np.errstate(invalid="ignore"):
        near = (np.abs(x - (nx - 1) / 2) <= nx / 2 + reach) & (
            np.abs(y - (ny - 1) / 2) <= ny / 2 + reach
        )
    ok = np.flatnonzero(near)
    if ok.size == 0:
        return res
    ann = _annulus(r_in, r_out, nx)
    pix = _pixels(image, mask, bad_mask_bits, saturate_level, mask_saturated)
    buffers = _work_buffers(min(batch_size, ok.size), ann, pix)

    for start in range(0, ok.size, batch_size):
        sel = ok[start : start + batch_size]
        nb = len(sel)
        w = {k: None if v is None else v[:nb] for k, v in buffers.items()}
        fx, fy = _pixel_indices(x[sel], y[sel], ann, pix, w)
        _gather_usable(pix, w)
        _radius_test(fx, fy, ann, w)
        cnt0 = _sort_members(w)
        piv, has = _prefix_sums(cnt0, w)
        lo, hi = _clip_ranges(cnt0, piv, has, sigma, maxiters, w)
        med, mean, std = _range_stats(w["srt"], w["c1"], w["c2"], piv, lo, hi)
        res["bkg_mean"][sel] = mean
        res["bkg_median"][sel] = med
        res["bkg_std"][sel] = std
        res["bkg_n"][sel] = hi - lo
    return res


def _fraction_batch(
    x: np.ndarray, y: np.ndarray, r_in: float, r_out: float, shape: tuple[int, int]
) -> np.ndarray:
    """Count annulus pixel centres on the image over all of them, for a few sources.

    Returns
    -------
    ndarray of float
        The fraction per source.
    """
    ny, nx = shape
    m = math.ceil(r_out) + 1
    off = np.arange(-m, m + 1, dtype=np.int64)
    cx = np.round(x).astype(np.int64)[:, None, None] + off[None, None, :]
    cy = np.round(y).astype(np.int64)[:, None, None] + off[None, :, None]
    d2 = (cx - x[:, None, None]) ** 2 + (cy - y[:, None, None]) ** 2
    member = (d2 >= r_in * r_in) & (d2 < r_out * r_out)
    on = member & (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny)
    total = member.sum(axis=(1, 2))
    return on.sum(axis=(1, 2)) / np.maximum(total, 1)


def annulus_fraction_on_image(
    x: np.ndarray,
    y: np.ndarray,
    *,
    r_in: float,
    r_out: float,
    shape: tuple[int, int],
    batch_size: int = 64,
) -> np.ndarray:
    """Return the fraction of each annulus that lies on the image.

    Counted as :func:`annulus_stats` selects pixels: the pixel centres with
    ``r_in² <= d² < r_out²`` inside the image over those on an unbounded pixel grid (masks
    are not considered). An annulus whose square ``[x - r_out, x + r_out] × [y - r_out,
    y + r_out]`` lies within the pixel centres ``[0, nx - 1] × [0, ny - 1]`` has fraction 1
    without counting.

    Parameters
    ----------
    x, y : ndarray of float, shape (n,)
        Annulus centres: column and row, 0-based pixels (pixel centres at integers).
    r_in, r_out : float
        Inner and outer annulus radius in pixels (``r_out > r_in``).
    shape : tuple of int
        ``(ny, nx)`` of the image in pixels.
    batch_size : int, optional
        Sources counted at once (memory only). Default 64.

    Returns
    -------
    ndarray of float64, shape (n,)
        Fractions in [0, 1]; 0 for a centre so far off the image that no annulus pixel is
        on it; NaN for a non-finite centre.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ny, nx = shape
    out = np.full(len(x), np.nan)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(x) & np.isfinite(y)
        inside = finite & (x - r_out >= 0) & (x + r_out <= nx - 1) & (y - r_out >= 0) & (
            y + r_out <= ny - 1)
        reach = float(r_out) + 1.0
        near = finite & (np.abs(x - (nx - 1) / 2) <= nx / 2 + reach) & (
            np.abs(y - (ny - 1) / 2) <= ny / 2 + reach)
    out[inside] = 1.0
    out[finite & ~near] = 0.0
    todo = np.flatnonzero(near & ~inside)
    for start in range(0, todo.size, batch_size):
        sel = todo[start:start + batch_size]
        out[sel] = _fraction_batch(x[sel], y[sel], float(r_in), float(r_out), (ny, nx))
    return out


def sky_estimate(st: dict[str, np.ndarray], background: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the recipe's sky level per source and the variance of that estimate.

    Parameters
    ----------
    st : dict of str to ndarray
        :func:`annulus_stats`' columns (``bkg_mean``, ``bkg_median``, ``bkg_std`` in ADU per
        pixel, ``bkg_n``).
    background : {"mean", "median"}
        The estimator (``PhotometryConfig.background``).

    Returns
    -------
    tuple of ndarray
        ``(bkg, var_b)``: the sky, ADU/px, and ``bkg_std² / bkg_n`` (× π/2 for the
        median; ``bkg_n`` taken as ≥ 1), ADU².
    """
    bkg = st["bkg_mean"] if background == "mean" else st["bkg_median"]
    var_b = st["bkg_std"] ** 2 / np.maximum(st["bkg_n"], 1)
    return bkg, var_b * (np.pi / 2.0) if background == "median" else var_b
