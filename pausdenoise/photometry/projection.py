"""Sky catalogue → per-frame apertures, through each frame's WCS.

A sky catalogue (:func:`pausdenoise.photometry.catalogue.read_any_catalogue`) has one row per
source: ``ra``, ``dec`` (degrees), ``a``, ``b`` (semi-axes, arcsec) and ``theta`` (position
angle of the major axis in degrees **east of north** on the sky, the astronomical
convention). :func:`project_to_frame` turns it into the per-frame rows that
:func:`pausdenoise.photometry.measure.measure_frame` measures:

- ``aperture_x``, ``aperture_y``: the WCS position, 0-based pixels (pixel centres at
  integers; ``astropy.wcs.WCS.all_world2pix`` with origin 0, distortions included);
- ``aperture_a``, ``aperture_b``: ``a`` and ``b`` unchanged (arcsec; divided by
  ``pixel_scale`` when the photometry reads axes in pixels);
- ``aperture_theta``: degrees with the PAUS sign (photutils ``theta = -aperture_theta·π/180``
  counter-clockwise from +x). At each source the points 1 arcsec either side along the
  position angle are projected through the WCS (:func:`axis_angle`); their pixel direction
  ``φ`` (counter-clockwise from +x) is the major axis on the frame, so the local rotation,
  a flip and any skew of the WCS are followed, and ``aperture_theta = −φ``, wrapped into
  [−180, 180). On a north-up, east-left frame ``φ = 90° + theta``.

:func:`image_to_sky` goes the other way for an *image catalogue* (pixel apertures measured
on one frame, e.g. a SExtractor catalogue of ``X_IMAGE``/``Y_IMAGE``): through that frame's
WCS (or the synthetic WCS of :func:`pausdenoise.register.shift_wcs` for frames registered by
cross-correlation) it becomes a sky catalogue that :func:`project_catalogue` places on the
other exposures. Its axes keep their size in pixels (``a = aperture_a × pixel_scale``, the
nominal scale the photometry divides by again): the frames are of one instrument.

A source is placed on a frame only when its centre is on it (``-0.5 <= x <= nx - 0.5``,
``-0.5 <= y <= ny - 0.5``); sources off a frame are not measured there. Non-finite positions
are placed nowhere (:func:`~pausdenoise.photometry.catalogue.validate_sky_catalogue` lists
them).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise.paus_layout import CATALOGUE_COLUMNS

__all__ = [
    "FrameWCS",
    "axis_angle",
    "footprint_note",
    "image_to_sky",
    "project_catalogue",
    "project_to_frame",
    "wcs_from_text",
]

#: Half-length of the sky segment whose pixel direction gives the major axis, degrees.
_STEP_DEG = 1.0 / 3600.0

#: Sky-only columns dropped from the per-frame rows (replaced by the aperture_* columns);
#: ``band`` too: a frame's band comes from the frame.
_SKY_ONLY = ("a", "b", "theta", "band")


@dataclass(frozen=True)
class FrameWCS:
    """What the projection needs of one frame.

    Parameters
    ----------
    frame : str
        Frame id.
    expnum, ccd : int
        The frame's exposure and CCD numbers (written to the per-frame rows).
    shape : tuple of int
        ``(ny, nx)`` in pixels.
    wcs_text : str
        The frame's WCS cards as FITS header text (the store's ``wcs`` frame attribute).
    """

    frame: str
    expnum: int
    ccd: int
    shape: tuple[int, int]
    wcs_text: str


def wcs_from_text(text: str) -> Any:
    """Build an astropy WCS from FITS header text (harmless fix-up warnings silenced).

    Parameters
    ----------
    text : str
        WCS cards as FITS header text.

    Returns
    -------
    astropy.wcs.WCS
        The celestial WCS.
    """
    from astropy.io import fits  # astropy: imported only where WCS are used
    from astropy.wcs import WCS, FITSFixedWarning  # astropy: as above

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.Header.fromstring(text)).celestial


def _to_pixels(wcs: Any, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project sky positions (degrees) to 0-based pixels.

    Returns
    -------
    tuple of ndarray
        ``x``, ``y``; NaN where the projection has no answer.
    """
    if ra.size == 0:
        return np.empty(0), np.empty(0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        x, y = wcs.all_world2pix(ra, dec, 0, tolerance=1e-10, maxiter=100, quiet=True)
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def axis_angle(
    wcs: Any, ra: np.ndarray, dec: np.ndarray, theta: np.ndarray
) -> np.ndarray:
    """Return the pixel-frame direction of a sky position angle at each position.

    The points 1 arcsec either side of the source along the position angle ``theta``
    (degrees east of north) are projected through the WCS; their pixel direction is the
    major axis on the frame. Unlike rotating by the direction of north alone, this follows a
    WCS whose pixel axes are skewed or distorted (DECam's TPV).

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        The frame's celestial WCS.
    ra, dec : ndarray of float
        Positions, degrees.
    theta : ndarray of float
        Position angles, degrees east of north.

    Returns
    -------
    ndarray of float
        Angles in degrees, counter-clockwise from +x towards +y (photutils' sense).
    """
    ra, dec = np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)
    t = np.radians(np.asarray(theta, dtype=float))
    d_dec = _STEP_DEG * np.cos(t)
    d_ra = _STEP_DEG * np.sin(t) / np.maximum(np.cos(np.radians(dec)), 1e-12)
    x1, y1 = _to_pixels(wcs, ra + d_ra, dec + d_dec)
    x0, y0 = _to_pixels(wcs, ra - d_ra, dec - d_dec)
    return np.degrees(np.arctan2(y1 - y0, x1 - x0))


def _near_frame(wcs: Any, shape: tuple[int, int], ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Select the sources within the frame's circumscribed circle (plus 10 %).

    Returns
    -------
    ndarray of bool
        True for sources worth projecting exactly.
    """
    ny, nx = shape
    px = np.array([(nx - 1) / 2, -0.5, nx - 0.5, -0.5, nx - 0.5])
    py = np.array([(ny - 1) / 2, -0.5, -0.5, ny - 0.5, ny - 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cra, cdec = wcs.all_pix2world(px, py, 0)

    def unit(r: np.ndarray, d: np.ndarray) -> np.ndarray:
        r, d = np.radians(r), np.radians(d)
        return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=-1)

    corners = unit(np.asarray(cra), np.asarray(cdec))
    radius = np.arccos(np.clip(corners[1:] @ corners[0], -1, 1)).max() * 1.1 + 1e-6
    with np.errstate(invalid="ignore"):
        return unit(ra, dec) @ corners[0] >= np.cos(min(radius, np.pi))


def _frame_rows(
    sky: pd.DataFrame, frame: FrameWCS, x: np.ndarray, y: np.ndarray, theta_pix: np.ndarray,
    axis_scale: float,
) -> pd.DataFrame:
    """Assemble the per-frame rows of the placed sources (CATALOGUE_COLUMNS order first).

    Returns
    -------
    pandas.DataFrame
        One row per placed source.
    """
    n = len(sky)
    rows = sky.drop(columns=[c for c in _SKY_ONLY if c in sky.columns]).reset_index(drop=True)
    rows["expnum"] = np.full(n, frame.expnum, dtype=np.int64)
    rows["ccd"] = np.full(n, frame.ccd, dtype=np.int64)
    rows["aperture_x"] = x
    rows["aperture_y"] = y
    rows["aperture_a"] = sky["a"].to_numpy(dtype=float) * axis_scale
    rows["aperture_b"] = sky["b"].to_numpy(dtype=float) * axis_scale
    rows["aperture_theta"] = theta_pix
    first = [c for c in CATALOGUE_COLUMNS if c in rows.columns]
    return rows[first + [c for c in rows.columns if c not in first]]


#: Columns of an image catalogue that its sky catalogue replaces (frame ids, pixel aperture).
_IMAGE_ONLY = ("expnum", "ccd", "aperture_x", "aperture_y", "aperture_a", "aperture_b",
               "aperture_theta")


def image_to_sky(catalogue: pd.DataFrame, wcs: Any, pixel_scale: float) -> pd.DataFrame:
    """Turn an image catalogue (pixel apertures on one frame) into a sky catalogue.

    Parameters
    ----------
    catalogue : pandas.DataFrame
        Image catalogue: ``aperture_x``, ``aperture_y`` (0-based pixels of the frame,
        centres at integers), ``aperture_a``, ``aperture_b`` (semi-axes, pixels),
        ``aperture_theta`` (degrees, PAUS sign: the major axis lies at ``−aperture_theta``
        counter-clockwise from +x); other columns (``ref_id``, ``I_auto``, SExtractor's
        own) are passed through.
    wcs : astropy.wcs.WCS
        The celestial WCS of the frame the catalogue was measured on.
    pixel_scale : float
        Nominal pixel scale, arcsec/px: ``a = aperture_a × pixel_scale`` (and ``b``), so
        that the photometry, which divides by the same scale, measures the axes in the
        catalogue's pixels on every frame.

    Returns
    -------
    pandas.DataFrame
        ``ra``, ``dec`` (degrees), ``a``, ``b`` (arcsec), ``theta`` (degrees east of north,
        in [0, 180)) and the passed-through columns, rows in catalogue order; the inverse of
        :func:`project_to_frame` on that frame (positions to ~1e-8 px, angles to ~1e-6°).
    """
    x = catalogue["aperture_x"].to_numpy(dtype=float)
    y = catalogue["aperture_y"].to_numpy(dtype=float)
    phi = np.radians(-catalogue["aperture_theta"].to_numpy(dtype=float))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ra, dec = (np.asarray(v, dtype=float) for v in wcs.all_pix2world(x, y, 0))
        ra1, dec1 = wcs.all_pix2world(x + np.cos(phi), y + np.sin(phi), 0)
        ra0, dec0 = wcs.all_pix2world(x - np.cos(phi), y - np.sin(phi), 0)
    d_ra = (np.mod(np.asarray(ra1) - np.asarray(ra0) + 180.0, 360.0) - 180.0) \
        * np.cos(np.radians(dec))
    theta = np.mod(np.degrees(np.arctan2(d_ra, np.asarray(dec1) - np.asarray(dec0))), 180.0)
    sky = catalogue.drop(columns=[c for c in _IMAGE_ONLY if c in catalogue.columns])
    sky = sky.reset_index(drop=True).assign(
        ra=ra, dec=dec,
        a=catalogue["aperture_a"].to_numpy(dtype=float) * pixel_scale,
        b=catalogue["aperture_b"].to_numpy(dtype=float) * pixel_scale,
        theta=theta)
    return sky


def project_to_frame(
    sky: pd.DataFrame, frame: FrameWCS, *, axis_scale: float = 1.0
) -> pd.DataFrame:
    """Place a sky catalogue on one frame: the per-frame rows of the sources on it.

    Parameters
    ----------
    sky : pandas.DataFrame
        Sky catalogue (``ref_id``, ``ra``, ``dec`` degrees, ``a``, ``b`` arcsec, ``theta``
        degrees east of north; other columns such as ``I_auto`` are passed through,
        ``band`` is dropped).
    frame : FrameWCS
        The frame: ids, shape and WCS text.
    axis_scale : float, optional
        Factor applied to ``a`` and ``b`` (1 keeps arcsec; ``1 / pixel_scale`` gives pixels).

    Returns
    -------
    pandas.DataFrame
        The sources whose centre is on the frame, in catalogue order, with ``expnum``,
        ``ccd``, ``aperture_x``, ``aperture_y`` (0-based px), ``aperture_a``,
        ``aperture_b`` and ``aperture_theta`` (degrees, PAUS sign; module docstring).
    """
    wcs = wcs_from_text(frame.wcs_text)
    ra = sky["ra"].to_numpy(dtype=float)
    dec = sky["dec"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        near = np.flatnonzero(np.isfinite(ra) & (np.abs(dec) <= 90))
    near = near[_near_frame(wcs, frame.shape, ra[near], dec[near])]
    x, y = _to_pixels(wcs, ra[near], dec[near])
    ny, nx = frame.shape
    with np.errstate(invalid="ignore"):
        on = (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    idx = near[on]
    phi = axis_angle(wcs, ra[idx], dec[idx], sky["theta"].to_numpy(dtype=float)[idx])
    with np.errstate(invalid="ignore"):
        aperture_theta = np.mod(-phi + 180.0, 360.0) - 180.0
    return _frame_rows(sky.iloc[idx], frame, x[on], y[on], aperture_theta, axis_scale)


def project_catalogue(
    sky: pd.DataFrame, frames: Iterable[FrameWCS], *, axis_scale: float = 1.0
) -> pd.DataFrame:
    """Place a sky catalogue on every frame (:func:`project_to_frame`), frame by frame.

    Parameters
    ----------
    sky : pandas.DataFrame
        Sky catalogue (see :func:`project_to_frame`).
    frames : iterable of FrameWCS
        The frames.
    axis_scale : float, optional
        Factor applied to ``a`` and ``b`` (1 keeps arcsec).

    Returns
    -------
    pandas.DataFrame
        The per-frame rows of all frames, frames in the order given, fresh ``RangeIndex``;
        an empty table with the per-frame columns when no source is on any frame.
    """
    parts = [project_to_frame(sky, f, axis_scale=axis_scale) for f in frames]
    if not parts:
        empty = FrameWCS("", 0, 0, (0, 0), "")
        return _frame_rows(sky.iloc[:0], empty, np.empty(0), np.empty(0), np.empty(0), 1.0)
    return pd.concat(parts, ignore_index=True)


def footprint_note(sky: pd.DataFrame, frames: Iterable[FrameWCS]) -> str:
    """Say where a sky catalogue and the frames lie, for a catalogue that misses every frame.

    Parameters
    ----------
    sky : pandas.DataFrame
        Sky catalogue (``ra``, ``dec`` in degrees).
    frames : iterable of FrameWCS
        The frames.

    Returns
    -------
    str
        The catalogue's RA/Dec ranges and those of the frames' centres (pixel
        ``((nx - 1) / 2, (ny - 1) / 2)``, 0-based), in degrees.
    """
    centres = []
    for f in frames:
        ny, nx = f.shape
        ra, dec = wcs_from_text(f.wcs_text).all_pix2world([(nx - 1) / 2], [(ny - 1) / 2], 0)
        centres.append((float(ra[0]), float(dec[0])))
    ra_c, dec_c = np.array(centres, dtype=float).reshape(-1, 2).T

    def _range(v: np.ndarray) -> str:
        v = v[np.isfinite(v)]
        return f"{v.min():.4f}–{v.max():.4f}°" if v.size else "none"

    return (f"catalogue ra {_range(sky['ra'].to_numpy(float))}, dec "
            f"{_range(sky['dec'].to_numpy(float))}; frame centres ra {_range(ra_c)}, dec "
            f"{_range(dec_c)}")
