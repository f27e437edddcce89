"""An image catalogue (pixel apertures of one frame) placed on every exposure of the run.

A SExtractor catalogue of ``X_IMAGE``/``Y_IMAGE`` (:mod:`pausdenoise.photometry.sextractor`)
or any table of ``aperture_x``/``aperture_y`` without frame ids gives positions on the one
image it was made on: ``input.catalogue_frame`` names that frame (its store id, e.g.
``00000001_01``, or its FITS file's name). With a store of one frame it needs no name and the
rows are measured on that frame as they are. With several frames the catalogue is placed on
each of them, so the same source is measured on every exposure and the comparison pairs it
across exposures (Δf, σ68, the error model):

- **frames with a WCS** (when the catalogue's frame has one): the apertures go to the sky
  through that frame's WCS (:func:`pausdenoise.photometry.projection.image_to_sky`) and
  back onto each frame through its own
  (:func:`~pausdenoise.photometry.projection.project_catalogue`);
- **frames without a WCS** (small-telescope exposures of one field): each frame of the
  catalogue frame's CCD is registered to it by FFT cross-correlation
  (:func:`pausdenoise.register.measure_offset`, sub-pixel offsets, not rounded: the
  apertures follow the sources) and the offset stands in for the WCS
  (:func:`pausdenoise.register.shift_wcs`).

A frame that cannot be placed this way (another CCD without a WCS, a WCS on only one side,
a failed registration) gets no rows and is named in the note. Ellipse axes keep their size
in pixels on every frame (:func:`~pausdenoise.photometry.projection.image_to_sky`). Pixels are
0-based.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pausdenoise import register as rg
from pausdenoise import store as st
from pausdenoise.errors import RegistrationError
from pausdenoise.photometry.projection import (
    FrameWCS,
    image_to_sky,
    project_catalogue,
    wcs_from_text,
)
from pausdenoise.pipeline.references import registration_pixels

__all__ = ["Placement", "catalogue_frame_problem", "place_image_catalogue", "resolve_frame"]


def _names_of(frame: str, attrs: dict[str, Any]) -> set[str]:
    """Return the names a user may call a frame by.

    Returns
    -------
    set of str
        Its id, and its FITS file's path and name (the ingest's ``source_image``).
    """
    names = {frame}
    source = attrs.get("source_image")
    if source:
        names |= {str(source), Path(str(source)).name}
    return names


def resolve_frame(name: str | None, frames: list[str],
                  attrs: dict[str, dict[str, Any]]) -> tuple[str | None, str | None]:
    """Find the frame an image catalogue was measured on.

    Parameters
    ----------
    name : str or None
        ``input.catalogue_frame``: a frame id, or the name or path of the frame's FITS file
        (the ``source_image`` the ingest recorded); None for a store of one frame.
    frames : list of str
        The store's frames.
    attrs : dict of str to dict
        Each frame's attributes (``source_image``).

    Returns
    -------
    tuple of (str or None, str or None)
        The frame id, or None and the reason (what to set, which frames there are).
    """
    shown = ", ".join(frames[:4]) + (", …" if len(frames) > 4 else "")
    if name is None:
        if len(frames) == 1:
            return frames[0], None
        return None, (f"the store has {len(frames)} frames ({shown or 'none'}): set "
                      "input.catalogue_frame to the frame the catalogue was made on (its "
                      "frame id or FITS file name); the catalogue is then placed on the "
                      "other exposures through their WCS or, without one, by registering "
                      "them to that frame")
    hits = [f for f in frames if name in _names_of(f, attrs[f])]
    if len(hits) == 1:
        return hits[0], None
    if not hits:
        return None, (f"input.catalogue_frame {name!r} is none of the store's {len(frames)} "
                      f"frames ({shown or 'none'}) nor their FITS file names")
    return None, (f"input.catalogue_frame {name!r} names {len(hits)} frames "
                  f"({', '.join(hits[:4])}): give the frame id")


def catalogue_frame_problem(path: Path | str, name: str | None, store: Any) -> str | None:
    """Say why an image catalogue cannot be placed on a store's frames, before any work.

    Parameters
    ----------
    path : Path or str
        The catalogue file (named in the message).
    name : str or None
        ``input.catalogue_frame``.
    store : path or zarr.Group
        The run's store.

    Returns
    -------
    str or None
        None when the catalogue's frame is found; else the reason and what to do.
    """
    frames = st.list_frames(store)
    attrs = {f: st.frame_attrs(store, f) for f in frames}
    _, problem = resolve_frame(name, frames, attrs)
    if problem is None:
        return None
    return (f"input.catalogue {path} gives pixel positions only (an image catalogue, e.g. "
            f"SExtractor's X_IMAGE/Y_IMAGE), which belong to the image it was made on; "
            f"{problem}")


@dataclass
class Placement:
    """An image catalogue placed on the run's frames.

    Attributes
    ----------
    rows : pandas.DataFrame
        Per-frame catalogue rows (``expnum``, ``ccd``, ``aperture_*``; axes in
        ``photometry.aperture_units``).
    frame : str
        The frame the catalogue was measured on.
    registered : dict of str to (float, float)
        Frames placed by registration: offset ``(dx, dy)`` px from the catalogue's frame.
    skipped : dict of str to str
        Frames not placed, with the reason.
    """

    rows: pd.DataFrame
    frame: str
    registered: dict[str, tuple[float, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def note(self) -> str:
        """Describe the placement for the stage's line.

        Returns
        -------
        str
            Sources, rows, frames; registered and skipped frames (up to 3 named).
        """
        n_frames = self.rows.groupby(["expnum", "ccd"]).ngroups if len(self.rows) else 0
        out = (f", image catalogue of frame {self.frame}: {len(self.rows)} rows on "
               f"{n_frames} frame(s)")
        if self.registered:
            out += f" ({len(self.registered)} registered to it by cross-correlation)"
        if self.skipped:
            shown = "; ".join(f"{f}: {why}" for f, why in list(self.skipped.items())[:3])
            more = ", …" if len(self.skipped) > 3 else ""
            out += f"; not placed on {len(self.skipped)} frame(s): {shown}{more}"
        return out


def _shape(store: Any, frame: str, attrs: dict[str, Any]) -> tuple[int, int]:
    """Return a frame's shape.

    Returns
    -------
    tuple of int
        ``(ny, nx)`` px: from its attributes, else from its image array.
    """
    if "ny" in attrs and "nx" in attrs:
        return int(attrs["ny"]), int(attrs["nx"])
    ny, nx = st.open_frame(store, frame, "image").shape
    return int(ny), int(nx)


#: Offsets measured in this process: (store, catalogue frame, frame, their source
#: fingerprints) → ``(dx, dy)`` px or why the registration failed. Each stage that places
#: the catalogue asks again; a re-ingested frame has another fingerprint.
_OFFSETS: dict[tuple[str, str, str, str, str], tuple[float, float] | str] = {}


def _offsets(store: Any, ref: str, frames: list[str], attrs: dict[str, dict[str, Any]]
             ) -> dict[str, tuple[float, float] | str]:
    """Measure the frames' offsets from the catalogue's frame (the reference read once).

    Returns
    -------
    dict of str to (tuple of float, or str)
        Frame → ``(dx, dy)`` px (position in the frame minus in ``ref``), or why it failed.
    """
    root = str(Path(store).resolve())

    def key(f: str) -> tuple[str, str, str, str, str]:
        return (root, ref, f, str(attrs[ref].get("source_fingerprint")),
                str(attrs[f].get("source_fingerprint")))

    todo = [f for f in frames if key(f) not in _OFFSETS]
    if todo:
        ref_img, ref_bad = registration_pixels(store, ref)
        sat = attrs[ref].get("saturate")
        for f in todo:
            img, bad = registration_pixels(store, f)
            try:
                o = rg.measure_offset(ref_img, img, mask_ref=ref_bad, mask_img=bad,
                                      saturation=float(sat) if sat else None)
                _OFFSETS[key(f)] = (o.dx, o.dy)
            except RegistrationError as exc:
                _OFFSETS[key(f)] = f"not registered ({exc})"
    return {f: _OFFSETS[key(f)] for f in frames}


def _frame_wcs_texts(store: Any, ref: str, frames: list[str],
                     attrs: dict[str, dict[str, Any]], placement: Placement
                     ) -> tuple[str, dict[str, str]]:
    """Give the catalogue's frame and every placeable frame a WCS (theirs, or a shift).

    Returns
    -------
    tuple of (str, dict of str to str)
        The catalogue frame's WCS text, and frame → WCS text of the frames to place on.
    """
    ref_wcs = str(attrs[ref].get("wcs") or "")
    if ref_wcs:
        texts = {f: str(attrs[f]["wcs"]) for f in frames if attrs[f].get("wcs")}
        placement.skipped.update({f: "no WCS" for f in frames if f not in texts})
        return ref_wcs, texts
    texts = {ref: rg.shift_wcs().to_header().tostring()}
    same = []
    for f in frames:
        if f == ref:
            continue
        if attrs[f].get("wcs") or int(attrs[f]["ccd"]) != int(attrs[ref]["ccd"]):
            placement.skipped[f] = ("a WCS, unlike the catalogue's frame" if attrs[f].get("wcs")
                                    else f"CCD {attrs[f]['ccd']} without a WCS")
        else:
            same.append(f)
    for f, off in _offsets(store, ref, same, attrs).items():
        if isinstance(off, str):
            placement.skipped[f] = off
            continue
        placement.registered[f] = off
        texts[f] = rg.shift_wcs(*off).to_header().tostring()
    return texts[ref], texts


def place_image_catalogue(catalogue: pd.DataFrame, store: Any, name: str | None,
                          pixel_scale: float, aperture_units: str) -> Placement:
    """Place an image catalogue on the frames of a store.

    Parameters
    ----------
    catalogue : pandas.DataFrame
        Image catalogue (``aperture_x``/``aperture_y`` 0-based px of one frame, axes in px,
        ``aperture_theta`` degrees with the PAUS sign; no ``expnum``/``ccd``).
    store : path
        The run's store.
    name : str or None
        ``input.catalogue_frame`` (:func:`resolve_frame`).
    pixel_scale : float
        ``photometry.pixel_scale``, arcsec/px.
    aperture_units : {"pixel", "arcsec"}
        ``photometry.aperture_units``: the units the rows' axes are given in.

    Returns
    -------
    Placement
        The per-frame rows and what was registered or skipped.

    Raises
    ------
    ValueError
        When the catalogue's frame cannot be found (:func:`resolve_frame`'s reason).
    """
    frames = st.list_frames(store)
    attrs = {f: st.frame_attrs(store, f) for f in frames}
    ref, problem = resolve_frame(name, frames, attrs)
    if ref is None:
        raise ValueError(problem)
    scale = 1.0 if aperture_units == "pixel" else pixel_scale
    if len(frames) == 1:  # measured where it was made: the rows as they are
        rows = catalogue.assign(expnum=int(attrs[ref]["expnum"]), ccd=int(attrs[ref]["ccd"]))
        rows["aperture_a"] = rows["aperture_a"] * scale
        rows["aperture_b"] = rows["aperture_b"] * scale
        return Placement(rows, ref)
    placement = Placement(pd.DataFrame(), ref)
    ref_text, texts = _frame_wcs_texts(store, ref, frames, attrs, placement)
    sky = image_to_sky(catalogue, wcs_from_text(ref_text), pixel_scale)
    targets = [FrameWCS(f, int(attrs[f]["expnum"]), int(attrs[f]["ccd"]),
                        _shape(store, f, attrs[f]), texts[f])
               for f in frames if f in texts]
    placement.rows = project_catalogue(sky, targets, axis_scale=scale / pixel_scale)
    return placement
