"""Where to inject: pixels of existing sources, the frame's sky noise, and clear positions.

Pixels are 0-based with pixel centres at integer coordinates: ``image[y, x]`` is pixel
(x, y). Distances are in px.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from pausdenoise.stats import mad_sigma

__all__ = ["good_pixels", "occupancy_from_image", "place", "sky_background", "sky_variance"]

#: Largest number of pixels used for a noise estimate (a regular subsample beyond it).
_MAX_NOISE_SAMPLES = 1 << 20
#: Half the diagonal of a pixel: how far a position inside a pixel lies from its centre.
_HALF_DIAGONAL = float(np.sqrt(0.5))


def good_pixels(
    image: np.ndarray, mask: np.ndarray | None = None, bad_mask_bits: int = 0xFFFF
) -> np.ndarray:
    """Return the usable pixels: finite and without a bad mask bit.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Pixel values.
    mask : ndarray of int, shape (ny, nx), optional
        Mask bits, 0 = good.
    bad_mask_bits : int, optional
        A pixel is bad when ``mask & bad_mask_bits != 0``.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        True where the pixel is usable.
    """
    good = np.isfinite(image)
    if mask is not None:
        good &= (np.asarray(mask).astype(np.int64) & int(bad_mask_bits)) == 0
    return good


def _interp_axis(grid: np.ndarray, n: int, box: int, axis: int) -> np.ndarray:
    # linear interpolation of block values (at block centres) to n pixels along axis
    nb = grid.shape[axis]
    t = np.clip((np.arange(n) + 0.5) / box - 0.5, 0.0, nb - 1.0)
    i0 = np.minimum(np.floor(t).astype(int), max(nb - 2, 0))
    i1 = np.minimum(i0 + 1, nb - 1)
    shape = [1, 1]
    shape[axis] = n
    w = (t - i0).reshape(shape)
    return np.take(grid, i0, axis=axis) * (1.0 - w) + np.take(grid, i1, axis=axis) * w


def sky_background(image: np.ndarray, good: np.ndarray, *, box_px: int = 64) -> np.ndarray:
    """Estimate a smooth sky map: medians of ``box_px`` blocks, 3×3 median-filtered, bilinear.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Pixel values (ADU).
    good : ndarray of bool, shape (ny, nx)
        Pixels to use (finite, unmasked; sources excluded where known).
    box_px : int, optional
        Block size in px.

    Returns
    -------
    ndarray of float64, shape (ny, nx)
        The sky in ADU; blocks without a good pixel take the median of the others (0 when
        no pixel is good).
    """
    ny, nx = image.shape
    nby, nbx = -(-ny // box_px), -(-nx // box_px)
    pad = np.full((nby * box_px, nbx * box_px), np.nan)
    pad[:ny, :nx] = np.where(good, image, np.nan)
    blocks = pad.reshape(nby, box_px, nbx, box_px).transpose(0, 2, 1, 3).reshape(nby, nbx, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks give NaN, filled below
        grid = np.nanmedian(blocks, axis=2)
    fill = float(np.median(grid[np.isfinite(grid)])) if np.isfinite(grid).any() else 0.0
    grid = ndimage.median_filter(np.where(np.isfinite(grid), grid, fill), size=3, mode="nearest")
    return _interp_axis(_interp_axis(grid, ny, box_px, 0), nx, box_px, 1)


def _robust_sigma(values: np.ndarray) -> float:
    # MAD sigma of (a regular subsample of) values; NaN when empty
    if values.size == 0:
        return float("nan")
    step = max(1, values.size // _MAX_NOISE_SAMPLES)
    return float(mad_sigma(values[::step]))


def occupancy_from_image(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    nsigma: float = 4.0,
    grow_px: float = 2.0,
    smooth_px: float = 1.5,
    min_area_px: int = 5,
    box_px: int = 64,
    bad_mask_bits: int = 0xFFFF,
) -> np.ndarray:
    """Find the pixels that belong to existing sources (or cannot be used).

    The sky (:func:`sky_background`) is subtracted, the residual (masked pixels set to 0)
    is smoothed with a Gaussian of σ = ``smooth_px``, and pixels above ``nsigma`` times the
    smoothed image's own MAD noise, in connected groups of at least ``min_area_px``, are
    detections; these are grown by ``grow_px``. Masked and non-finite pixels are occupied
    too.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Pixel values in ADU, sky not subtracted (any numeric dtype).
    mask : ndarray of int, shape (ny, nx), optional
        Mask bits, 0 = good.
    nsigma : float, optional
        Detection threshold in σ of the smoothed image.
    grow_px : float, optional
        Pixels within this distance (px) of a detection are occupied.
    smooth_px : float, optional
        σ of the Gaussian smoothing, px (about the PSF's σ).
    min_area_px : int, optional
        Smallest connected detection kept, px.
    box_px : int, optional
        Block size of the sky map, px.
    bad_mask_bits : int, optional
        Mask bits that make a pixel unusable.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        True for occupied pixels.
    """
    img = np.asarray(image, dtype=np.float64)
    good = good_pixels(img, mask, bad_mask_bits)
    resid = np.where(good, img - sky_background(img, good, box_px=box_px), 0.0)
    smooth = ndimage.gaussian_filter(resid, smooth_px) if smooth_px > 0 else resid
    sigma = _robust_sigma(smooth[good])
    det = good & (smooth > nsigma * sigma) if np.isfinite(sigma) else np.zeros_like(good)
    if min_area_px > 1 and det.any():
        labels, _ = ndimage.label(det, structure=np.ones((3, 3), dtype=bool))
        area = np.bincount(labels.ravel())
        area[0] = 0
        det = area[labels] >= min_area_px
    if det.any() and grow_px > 0:
        det = ndimage.distance_transform_edt(~det) <= grow_px
    return det | ~good


def sky_variance(image: np.ndarray, occupied: np.ndarray) -> float:
    """Measure the per-pixel noise variance of a frame's sky, robustly, away from its sources.

    The MAD σ of the differences of horizontally adjacent unoccupied pixels, divided by √2:
    white pixel noise (sky Poisson and read noise) without the structure that a crowded
    field's unresolved sources or a sky gradient add to the spread of the pixel values.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Pixel values in ADU (sky subtracted or not).
    occupied : ndarray of bool, shape (ny, nx)
        Pixels of sources and masked pixels (:func:`occupancy_from_image`), left out.

    Returns
    -------
    float
        The variance, ADU² (NaN when no pair of adjacent free pixels is left).
    """
    img = np.asarray(image, dtype=np.float64)
    free = ~np.asarray(occupied, dtype=bool) & np.isfinite(img)
    pair = free[:, 1:] & free[:, :-1]
    diff = (img[:, 1:] - img[:, :-1])[pair]
    return _robust_sigma(diff) ** 2 / 2.0


def _allowed_pixels(
    shape: tuple[int, int], occupied_mask: np.ndarray | None, sep: float, edge_px: float
) -> np.ndarray:
    """Return the pixels whose whole area is far enough from occupancy and edges.

    Returns
    -------
    ndarray of int64
        Flat indices into ``shape``.

    Raises
    ------
    ValueError
        When ``occupied_mask`` does not have ``shape``.
    """
    ny, nx = shape
    ok = np.ones(shape, dtype=bool)
    if occupied_mask is not None:
        occ = np.asarray(occupied_mask, dtype=bool)
        if occ.shape != tuple(shape):
            raise ValueError(f"occupied_mask shape {occ.shape} != shape {tuple(shape)}")
        if occ.all():
            return np.zeros(0, dtype=np.int64)
        if occ.any():
            ok = ndimage.distance_transform_edt(~occ) >= sep + _HALF_DIAGONAL
    lo = edge_px + 0.5
    cols, rows = np.arange(nx), np.arange(ny)
    ok &= ((rows >= lo) & (rows <= ny - 1 - lo))[:, None]
    ok &= ((cols >= lo) & (cols <= nx - 1 - lo))[None, :]
    return np.flatnonzero(ok)


def place(
    rng: np.random.Generator,
    n: int,
    shape: tuple[int, int],
    *,
    occupied_xy: tuple[np.ndarray, np.ndarray] | None = None,
    occupied_mask: np.ndarray | None = None,
    min_separation_px: float,
    edge_px: float,
    clearance_px: float | None = None,
    max_batches: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw up to ``n`` positions clear of existing sources, of each other and of the edges.

    Each position lies at least ``clearance_px`` from every point of ``occupied_xy`` and
    from the centre of every occupied pixel, at least ``min_separation_px`` from every other
    position returned, and at least ``edge_px`` from the image edges
    (``edge_px <= x <= nx - 1 - edge_px``, same for y).
    Candidates are uniform over the allowed pixels (a distance transform of the occupied
    map), with a uniform sub-pixel offset; they are tested against the catalogue points with
    a KD-tree and accepted in random order against the positions already kept.

    Parameters
    ----------
    rng : numpy.random.Generator
        The generator; the positions depend only on it and the other arguments.
    n : int
        Number of positions wanted.
    shape : (int, int)
        ``(ny, nx)`` of the frame, px.
    occupied_xy : (ndarray, ndarray), optional
        ``(x, y)`` of existing sources (e.g. the frame's catalogue), 0-based px.
    occupied_mask : ndarray of bool, shape ``shape``, optional
        Occupied pixels (:func:`occupancy_from_image`).
    min_separation_px : float
        Smallest distance between two returned positions, px.
    edge_px : float
        Smallest distance from the edges, px.
    clearance_px : float, optional
        Smallest distance from existing sources and occupied pixels, px; default
        ``min_separation_px``.
    max_batches : int, optional
        Batches of candidates drawn before giving up on a full frame.

    Returns
    -------
    x, y : ndarray of float64
        0-based pixel positions; fewer than ``n`` (possibly none) when the frame has no room
        left: ``len(x)`` says how many were placed.

    Raises
    ------
    ValueError
        When ``occupied_mask`` does not have ``shape``.
    """
    nx = int(shape[1])
    clear = min_separation_px if clearance_px is None else clearance_px
    allowed = _allowed_pixels(tuple(shape), occupied_mask, clear, edge_px)
    tree = None
    if occupied_xy is not None and np.size(occupied_xy[0]):
        pts = np.column_stack(
            [np.asarray(occupied_xy[0], float), np.asarray(occupied_xy[1], float)]
        )
        tree = cKDTree(pts[np.all(np.isfinite(pts), axis=1)])
    kept: list[np.ndarray] = []
    for _ in range(max_batches if allowed.size and n > 0 else 0):
        m = max(50 * n, 1000)
        pix = allowed[rng.integers(0, allowed.size, m)]
        cand = np.column_stack([pix % nx, pix // nx]).astype(float)
        cand += rng.uniform(-0.5, 0.5, cand.shape)
        if tree is not None and tree.n:
            d, _ = tree.query(cand, k=1)
            cand = cand[d >= clear]
        _accept(cand, kept, n, min_separation_px)
        if len(kept) >= n:
            break
    out = np.array(kept).reshape(-1, 2)
    return out[:, 0].copy(), out[:, 1].copy()


def _accept(cand: np.ndarray, kept: list[np.ndarray], n: int, sep: float) -> None:
    """Append candidates (in order) that lie ``sep`` or more from every kept position."""
    for c in cand:
        if len(kept) >= n:
            return
        if kept:
            k = np.asarray(kept)
            if np.min(np.hypot(k[:, 0] - c[0], k[:, 1] - c[1])) < sep:
                continue
        kept.append(c)


def detected_sources(
    image: np.ndarray,
    occupied: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    min_area_px: int = 5,
    bad_mask_bits: int = 0xFFFF,
) -> pd.DataFrame:
    """Describe each connected group of occupied pixels as a catalogue-like ellipse.

    For frames without a reference catalogue, so that the photometry of injected sources
    still knows the real sources around them: their ellipses are left out of the
    background annuli and, in the profile fit, modelled as neighbours. Masked pixels are
    not sources: they are left out before grouping.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The frame in ADU.
    occupied : ndarray of bool, shape (ny, nx)
        Occupied pixels (:func:`occupancy_from_image`).
    mask : ndarray of int, optional
        Mask bits (0 = good).
    min_area_px : int, optional
        Smallest group kept, px. Default 5.
    bad_mask_bits : int, optional
        Mask bits that make a pixel unusable.

    Returns
    -------
    pandas.DataFrame
        ``x``, ``y`` (flux-weighted centroid, 0-based px), ``a_px``, ``b_px`` (semi-axes from
        the second moments of the group's pixels, ×2, at least 1 px), ``theta_deg`` (major
        axis, counter-clockwise from +x, photutils' sense), ``area_px``.
    """
    src = np.asarray(occupied, bool) & good_pixels(image, mask, bad_mask_bits)
    labels, n = ndimage.label(src)
    if n == 0:
        return pd.DataFrame(columns=["x", "y", "a_px", "b_px", "theta_deg", "area_px"])
    idx = np.arange(1, n + 1)
    w = np.clip(np.nan_to_num(image - np.median(image[~src & np.isfinite(image)]
                                                 if (~src).any() else 0.0)), 0, None)
    w = np.where(src, w + 1e-6, 0.0)
    yy, xx = np.indices(image.shape)
    sw = ndimage.sum(w, labels, idx)
    mx = ndimage.sum(w * xx, labels, idx) / sw
    my = ndimage.sum(w * yy, labels, idx) / sw
    lx, ly = xx - mx[labels - 1], yy - my[labels - 1]
    inside = labels > 0
    lx, ly = np.where(inside, lx, 0.0), np.where(inside, ly, 0.0)
    cxx = ndimage.sum(w * lx * lx, labels, idx) / sw
    cyy = ndimage.sum(w * ly * ly, labels, idx) / sw
    cxy = ndimage.sum(w * lx * ly, labels, idx) / sw
    half = 0.5 * (cxx + cyy)
    root = np.sqrt(np.maximum(0.25 * (cxx - cyy) ** 2 + cxy**2, 0.0))
    area = ndimage.sum(np.ones(image.shape), labels, idx)
    out = pd.DataFrame({
        "x": mx, "y": my,
        "a_px": np.maximum(2.0 * np.sqrt(half + root), 1.0),
        "b_px": np.maximum(2.0 * np.sqrt(np.maximum(half - root, 0.0)), 1.0),
        "theta_deg": np.degrees(0.5 * np.arctan2(2.0 * cxy, cxx - cyy)),
        "area_px": area,
    })
    return out[out["area_px"] >= min_area_px].reset_index(drop=True)
