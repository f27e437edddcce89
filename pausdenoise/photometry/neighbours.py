"""Pixels that hold the catalogue sources' light, kept out of the background annuli.

A 30–45 px annulus on a PAUS-depth frame holds the wings of several neighbours. Their light
survives a 3σ clip (it is spread thinly over many pixels), so the clipped mean sits above the
sky and every flux comes out low: on the simulated demo survey the clipped annulus mean is
1.0 ADU/px above the true sky (median over its 7,500 unflagged measurements; the sky noise is
24 ADU/px), which makes the aperture flux of an I = 21–22 galaxy 8 % low. Leaving out the
pixels within ``grow`` semi-axes of every catalogue source brings the offset to 0.17 ADU/px
with ``grow = 2`` and 0.02 ADU/px with ``grow = 3``.

The mask is built once per frame from the whole catalogue of that frame (so a source's own
ellipse is masked too, which matters only when ``grow × a`` exceeds the annulus' inner
radius: the annulus then keeps its outer pixels).
"""

from __future__ import annotations

import numpy as np

__all__ = ["neighbour_mask"]


def _ellipse_box(
    x: float, y: float, r: float, shape: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Return the pixel box ``(y0, y1, x0, x1)`` (half-open) around a circle, or None.

    Returns
    -------
    tuple of int or None
        The box clipped to the image; None when it misses the image.
    """
    ny, nx = shape
    x0, x1 = max(int(np.floor(x - r)), 0), min(int(np.ceil(x + r)) + 1, nx)
    y0, y1 = max(int(np.floor(y - r)), 0), min(int(np.ceil(y + r)) + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def neighbour_mask(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    theta: np.ndarray,
    *,
    grow: float,
    min_radius_px: float = 3.0,
) -> np.ndarray:
    """Mark the pixels inside every catalogue ellipse grown by ``grow``.

    Parameters
    ----------
    shape : (int, int)
        Image shape (ny, nx).
    x, y : ndarray of float
        Ellipse centres: column and row, 0-based pixels (pixel centres at integers).
    a, b : ndarray of float
        Semi-major and semi-minor axes in pixels (the catalogue apertures).
    theta : ndarray of float
        Major-axis angle in radians, photutils' sense (counter-clockwise from +x).
    grow : float
        Scale of the masked ellipse in units of the aperture (2 = twice the semi-axes).
    min_radius_px : float, optional
        Smallest masked semi-axis in pixels (point sources get at least this). Default 3.

    Returns
    -------
    ndarray of bool, shape ``shape``
        True where a pixel centre lies inside a grown ellipse. Rows with non-finite
        geometry mask nothing.
    """
    out = np.zeros(shape, dtype=bool)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(a) & np.isfinite(b) & np.isfinite(theta)
    for xi, yi, ai, bi, ti in zip(x[ok], y[ok], a[ok], b[ok], theta[ok], strict=True):
        ra = max(grow * ai, min_radius_px)
        rb = max(grow * bi, min_radius_px)
        box = _ellipse_box(xi, yi, ra, shape)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        dx = np.arange(x0, x1) - xi
        dy = (np.arange(y0, y1) - yi)[:, None]
        c, s = np.cos(ti), np.sin(ti)
        u = dx * c + dy * s
        v = -dx * s + dy * c
        out[y0:y1, x0:x1] |= (u / ra) ** 2 + (v / rb) ** 2 <= 1.0
    return out
