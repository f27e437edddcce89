"""The other exposures of a frame, brought onto its grid and matched to it.

Shared by the stages that need independent noisy copies of a frame's truth: the evaluate
stage scores frames without truth against them (:mod:`pausdenoise.evaluate`), and the train
stage with ``train.method: n2n`` trains the network to predict their mean from the frame.

Every other exposure of the frame's band (any exposure number but its own, from the pool the
caller gives) whose footprint covers at least ``evaluate.min_overlap`` of the frame's good
pixels is a candidate. Frames with a WCS are compared through it; frames without one (small
telescope exposures of one field) are registered to each other by FFT cross-correlation
(:func:`pausdenoise.register.measure_offset`) and the offset, rounded to whole pixels, stands
in for the WCS. With ``evaluate.reference_kernel`` > 0 up to ``evaluate.reference_candidates``
candidates are each brought to the frame's seeing, sub-pixel position and flux scale by a
fitted pixel kernel (:mod:`pausdenoise.reference_match`) and the ``evaluate.max_references``
fitted best are kept; with ``evaluate.reference_model: psf`` their kernels then keep only the
fitted shift and plane, the shape being the kernel between the two PSF models.
Pixels are 0-based; values in ADU with the frame's sky subtracted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import evaluate as ev
from pausdenoise import reference_match as rm
from pausdenoise import register as rg
from pausdenoise import store as st
from pausdenoise.errors import PsfError, RegistrationError
from pausdenoise.pipeline.context import Context
from pausdenoise.psf import frame_psf, stored_ellipticity

__all__ = ["Registry", "frame_arrays", "frame_fwhm", "matched_references", "no_broader",
           "psf_model", "registration_pixels", "stored_psf"]


#: The arrays a frame's pixels are judged by (no truth, no denoised image).
PIXEL_ARRAYS = ("image", "mask", "ivar")


def frame_arrays(store: Any, frame: str,
                 wanted: tuple[str, ...] = (*PIXEL_ARRAYS, "truth", "denoised")
                 ) -> dict[str, np.ndarray]:
    """Read those of a frame's arrays in ``wanted`` that it has.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    frame : str
        Frame id.
    wanted : tuple of str, optional
        Array names (default: image, mask, ivar, truth and denoised).

    Returns
    -------
    dict of str to ndarray
        Array name → values.
    """
    names = st.frame_arrays(store, frame)
    return {n: np.asarray(st.open_frame(store, frame, n)) for n in names if n in wanted}


def _frame_wcs_or_none(store: Any, frame: str) -> Any:
    try:
        return st.frame_wcs(store, frame).celestial
    except st.StoreError:
        return None


def _lattice_coverage(target_wcs: Any, target_shape: tuple[int, int], wcs: Any,
                      shape: tuple[int, int]) -> float:
    """Measure how much of the target grid falls inside another frame.

    Returns
    -------
    float
        The fraction of a 9 × 9 lattice over the target grid inside the other frame.
    """
    ny, nx = target_shape
    yy, xx = np.meshgrid(np.linspace(0, ny - 1, 9), np.linspace(0, nx - 1, 9), indexing="ij")
    ra, dec = target_wcs.all_pix2world(xx.ravel(), yy.ravel(), 0)
    try:
        fx, fy = wcs.all_world2pix(ra, dec, 0)
    except Exception:  # e.g. distortion inversion not converging far off the frame
        fx, fy = wcs.wcs_world2pix(ra, dec, 0)
    inside = (np.isfinite(fx) & np.isfinite(fy) & (fx > -0.5) & (fx < shape[1] - 0.5)
              & (fy > -0.5) & (fy < shape[0] - 0.5))
    return float(inside.mean())


@dataclass
class Registry:
    """WCSs of the frames and offsets measured between frames without one (cached).

    ``stage`` names the stage that matches the references (``evaluate``, or ``train`` for
    the Noise2Noise targets): it prefixes the messages about unusable references.
    """

    wcs: dict[str, Any] = field(default_factory=dict)
    offsets: dict[tuple[str, str], Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    stage: str = "evaluate"

    def wcs_of(self, store: Any, frame: str) -> Any:
        """Return the frame's celestial WCS, or None without one (cached).

        Parameters
        ----------
        store : path or zarr.Group
            The survey store.
        frame : str
            Frame id.

        Returns
        -------
        astropy.wcs.WCS or None
            The celestial part of the frame's WCS.
        """
        if frame not in self.wcs:
            self.wcs[frame] = _frame_wcs_or_none(store, frame)
        return self.wcs[frame]


def registration_pixels(store: Any, frame: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a frame's image and bad-pixel map (mask, non-positive ivar) for registration.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    frame : str
        Frame id.

    Returns
    -------
    tuple of ndarray
        The image (ADU, float64) and a boolean map of its bad pixels.
    """
    arr = frame_arrays(store, frame, PIXEL_ARRAYS)
    image = arr["image"].astype(np.float64)
    return image, rg.bad_pixel_map(image, arr.get("mask"), arr.get("ivar"))


def _registered_offset(ctx: Context, reg: Registry, frame: str, other: str,
                       frame_pixels: tuple[np.ndarray, np.ndarray]) -> Any:
    """Measure (or reuse) the offset of ``other`` relative to ``frame`` by cross-correlation.

    A failed registration is recorded in ``reg.rows`` with its reason and gives None; a pair
    measured the other way round is reused with the opposite sign.

    Returns
    -------
    Offset or None
        Position in ``other`` minus position in ``frame``, px (0-based pixels).
    """
    if (other, frame) in reg.offsets:
        o = reg.offsets[(other, frame)]
        return None if o is None else rg.Offset(-o.dx, -o.dy, o.significance, o.overlap)
    if (frame, other) not in reg.offsets:
        sat = st.frame_attrs(ctx.store, frame).get("saturate")
        image_o, bad_o = registration_pixels(ctx.store, other)
        row = {"frame": frame, "other_frame": other, "dx_px": np.nan, "dy_px": np.nan,
               "significance": np.nan, "overlap": np.nan, "error": ""}
        try:
            off = rg.measure_offset(frame_pixels[0], image_o, mask_ref=frame_pixels[1],
                                    mask_img=bad_o, min_overlap=ctx.cfg.evaluate.min_overlap,
                                    saturation=float(sat) if sat else None)
            row.update(dx_px=off.dx, dy_px=off.dy, significance=off.significance,
                       overlap=off.overlap)
        except RegistrationError as exc:
            off = None
            row["error"] = str(exc)
            print(f"{reg.stage}: {frame}: {other} not registered: {exc}")
        reg.offsets[(frame, other)] = off
        reg.rows.append(row)
    return reg.offsets[(frame, other)]


def _reference_candidates(ctx: Context, frame: str, row: pd.Series, others: pd.DataFrame,
                          shape: tuple[int, ...], reg: Registry,
                          frame_pixels: tuple[np.ndarray, np.ndarray]
                          ) -> tuple[list[tuple[float, int, str, Any]], Any]:
    """List the other exposures that overlap the frame, with the frame's WCS.

    Frames with a WCS are compared through it. When neither the frame nor the other
    exposure has one, the other exposure (same CCD) is registered to the frame by
    cross-correlation (:func:`pausdenoise.register.measure_offset`) and the offset, rounded
    to whole pixels (exact copies: the references' noise stays independent and
    uncorrelated), stands in for the WCS (:func:`pausdenoise.register.shift_wcs`).

    Returns
    -------
    tuple of (list, WCS or None)
        ``(−coverage, expnum, frame, wcs)`` of each overlapping exposure, and the frame's
        celestial WCS (the synthetic reference WCS when registered; None without a WCS and
        no registered exposure).
    """
    wcs_d = reg.wcs_of(ctx.store, frame)
    cands = []
    registered = False
    for _, o in others.iterrows():
        f = o["frame"]
        wcs_o = reg.wcs_of(ctx.store, f)
        if wcs_d is None and wcs_o is None:  # no WCS: register by cross-correlation
            if int(o["ccd"]) != int(row["ccd"]):
                continue
            off = _registered_offset(ctx, reg, frame, f, frame_pixels)
            if off is None:
                continue
            cov, wcs_o = off.overlap, rg.shift_wcs(off.dx, off.dy, round_to_pixel=True)
            registered = True
        elif wcs_d is None or wcs_o is None:  # one WCS only: cannot align them
            continue
        else:
            cov = _lattice_coverage(wcs_d, shape, wcs_o, (int(o["ny"]), int(o["nx"])))
        if cov > 0:
            cands.append((-cov, int(o["expnum"]), f, wcs_o))
    return cands, (rg.shift_wcs() if registered else wcs_d)


def _usable_references(ctx: Context, frame: str, row: pd.Series, by_frame: pd.DataFrame,
                       cands: list[tuple[float, int, str, Any]], wcs_d: Any,
                       shape: tuple[int, ...], good: np.ndarray, stage: str = "evaluate"
                       ) -> tuple[list[np.ndarray], list[str], list[float]]:
    """Bring the best-covering candidates onto the frame's grid.

    Returns
    -------
    tuple of (list of ndarray, list of str, list of float)
        The references on the frame's grid (ADU, NaN outside), their frames and their
        coverage of the frame's good pixels; at most ``evaluate.max_references`` (or
        ``evaluate.reference_candidates`` to be matched, see :func:`_matched_references`).
    """
    cfg = ctx.cfg.evaluate
    refs, names, coverage = [], [], []
    for _, _, f, wcs_o in sorted(cands, key=lambda c: c[:3]):
        if len(refs) >= cfg.references_to_read:
            break
        o_arr = frame_arrays(ctx.store, f, PIXEL_ARRAYS)
        zp_o = by_frame.loc[f, "zp"]
        try:
            values, valid = ev.reference_on_grid(
                o_arr["image"], o_arr.get("mask"), o_arr.get("ivar"), wcs_o,
                None if pd.isna(zp_o) else float(zp_o), wcs_d, shape,
                None if pd.isna(row["zp"]) else float(row["zp"]), cfg.resampling)
        except ValueError as exc:
            print(f"{stage}: {frame}: reference {f} unusable: {exc}")
            continue
        cov = float((valid & good).sum() / good.sum())
        if cov >= cfg.min_overlap:
            refs.append(values)
            names.append(f)
            coverage.append(cov)
    return refs, names, coverage


def psf_model(ctx: Context, frame: str) -> tuple[float, ...] | None:
    """Return a frame's PSF (FWHM px, Moffat β, e1, e2) from its attributes, None without one.

    Parameters
    ----------
    ctx : Context
        The stage context (store, ``photometry.pixel_scale`` for a seeing in arcsec).
    frame : str
        Frame id.

    Returns
    -------
    tuple of float or None
        :func:`stored_psf` of the run's store.
    """
    return stored_psf(ctx.store, frame, ctx.cfg.photometry.pixel_scale)


def stored_psf(store: str | Path, frame: str, pixel_scale: float
               ) -> tuple[float, ...] | None:
    """Return a frame's PSF (FWHM px, Moffat β, e1, e2) from a store's attributes, or None.

    Parameters
    ----------
    store : str or Path
        The Zarr store.
    frame : str
        Frame id.
    pixel_scale : float
        Arcsec per pixel, for a ``seeing`` in arcsec.

    Returns
    -------
    tuple of float or None
        FWHM and β from ``psf_fwhm_px``/``psf_beta`` (measured at ingest) or ``seeing``
        (:func:`pausdenoise.psf.frame_psf`), and the ellipticity ``psf_e1``/``psf_e2``
        measured at ingest (0, 0: round, where it was not); None when the attributes have
        neither a PSF nor a seeing.
    """
    attrs = st.frame_attrs(store, frame)
    try:
        est = frame_psf(attrs, pixel_scale=pixel_scale)
    except PsfError:
        return None
    e1, e2 = stored_ellipticity(attrs) or (0.0, 0.0)
    return float(est.fwhm_px), float(est.beta), e1, e2


def frame_fwhm(ctx: Context, frames: list[str]) -> dict[str, float]:
    """Read each frame's PSF FWHM from its attributes (frames without one are left out).

    Parameters
    ----------
    ctx : Context
        The stage context.
    frames : list of str
        Frame ids.

    Returns
    -------
    dict of str to float
        Frame → FWHM, px (``psf_fwhm_px``, or ``seeing`` in arcsec over
        ``photometry.pixel_scale``: :func:`psf_model`).
    """
    models = {f: psf_model(ctx, f) for f in frames}
    return {f: m[0] for f, m in models.items() if m is not None}


def no_broader(frame: str, frames: list[str], fwhm: dict[str, float],
               ratio: float | None) -> list[str]:
    """Return the frames whose PSF is at most ``ratio`` × the frame's (the frame included).

    A matching kernel can blur a sharper reference to the frame's seeing but not sharpen a
    broader one (``train.n2n_max_seeing_ratio``, ``evaluate.max_seeing_ratio``).

    Parameters
    ----------
    frame : str
        The frame.
    frames : list of str
        Candidate frames.
    fwhm : dict of str to float
        Frame → PSF FWHM, px (:func:`frame_fwhm`).
    ratio : float or None
        The largest FWHM ratio reference / frame; None: no limit.

    Returns
    -------
    list of str
        ``frames`` when ``ratio`` is None or the frame has no FWHM; otherwise the frame and
        those without a FWHM or with one ≤ ``ratio`` × the frame's.
    """
    if ratio is None or frame not in fwhm:
        return list(frames)
    limit = ratio * fwhm[frame]
    return [g for g in frames if g == frame or g not in fwhm or fwhm[g] <= limit]


def _grid_fraction(wcs_d: Any, wcs_o: Any, shape: tuple[int, ...]) -> tuple[float, float]:
    """Return the fractional part of another exposure's pixel offset from the frame's grid.

    Returns
    -------
    tuple of float
        (fx, fy) in [0, 1) at the frame's centre: where its pixel (x, y) falls on the other
        exposure's grid, modulo whole pixels (0, 0 without both WCSs).
    """
    if wcs_d is None or wcs_o is None:
        return (0.0, 0.0)
    cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    ox, oy = wcs_o.world_to_pixel(wcs_d.pixel_to_world(cx, cy))
    return (float((ox - cx) % 1.0), float((oy - cy) % 1.0))


def _psf_rematched(ctx: Context, frame: str, raw: np.ndarray, refs: list[np.ndarray],
                   names: list[str], best: list[tuple[int, rm.MatchedReference]],
                   reg: Registry) -> list[tuple[int, rm.MatchedReference]]:
    """Replace each fitted kernel's shape by the kernel between the two PSF models.

    The flux scale is measured on the bright pixels of the *other* kept references
    (:func:`pausdenoise.reference_match.bright_pixels`), so that the reference's own noise
    does not choose them (with one reference, on its own). A reference resampled through
    the WCSs carries the blur of the bilinear interpolation at its fractional offset
    (:func:`_grid_fraction`); its PSF model does too.

    Returns
    -------
    list of (int, MatchedReference)
        As ``best``; a reference whose frame or itself has no PSF keeps its fitted kernel
        (with a message).
    """
    psf_d = psf_model(ctx, frame)
    out = []
    for i, m in best:
        psf_r = psf_model(ctx, names[i])
        if psf_d is None or psf_r is None:
            print(f"{reg.stage}: {frame}: reference {names[i]}: no PSF size, fitted kernel "
                  "kept")
            out.append((i, m))
            continue
        others = [o.values for j, o in best if j != i] or [m.values]
        frac = _grid_fraction(reg.wcs_of(ctx.store, frame), reg.wcs_of(ctx.store, names[i]),
                              raw.shape)
        out.append((i, rm.psf_matched(refs[i], m, psf_d, psf_r, raw,
                                      rm.bright_pixels(others), frac)))
    return out


def _matched_references(ctx: Context, frame: str, raw: np.ndarray, good: np.ndarray,
                        sky: float, refs: list[np.ndarray], names: list[str],
                        coverage: list[float], reg: Registry
                        ) -> tuple[list[np.ndarray], list[str], list[float], pd.DataFrame]:
    """Bring the candidates to the frame's seeing and flux scale; keep those fitted best.

    With ``evaluate.reference_model: psf`` the kept references are then re-matched through
    their PSF models (:func:`_psf_rematched`).

    Returns
    -------
    tuple
        References, their frames and coverage (at most ``evaluate.max_references``, best
        kernel fit first), and per reference the match (:func:`pausdenoise.reference_match.
        matched_row`) indexed by frame.
    """
    cfg = ctx.cfg.evaluate
    gain, rn_adu = rm.frame_noise(st.frame_attrs(ctx.store, frame))
    best = rm.best_matched(raw, good, refs, cfg.max_references, sky=sky, gain=gain,
                           read_noise_adu=rn_adu, half_width=cfg.reference_kernel)
    if cfg.reference_model == "psf" and cfg.reference_kernel > 0:
        best = _psf_rematched(ctx, frame, raw, refs, names, best, reg)
    info = pd.DataFrame([rm.matched_row(m) for _, m in best],
                        index=[names[i] for i, _ in best])
    return ([m.values for _, m in best], [names[i] for i, _ in best],
            [coverage[i] for i, _ in best], info)


@dataclass
class References:
    """A frame's matched references.

    Attributes
    ----------
    values : list of ndarray (ny, nx)
        Each reference on the frame's grid, ADU with the frame's sky subtracted, NaN where
        it has no valid pixel (best kernel fit first).
    frames : list of str
        The frames they come from.
    coverage : list of float
        Their coverage of the frame's good pixels (fraction).
    matches : DataFrame
        Per reference frame the match (:func:`pausdenoise.reference_match.matched_row`).
    """

    values: list[np.ndarray]
    frames: list[str]
    coverage: list[float]
    matches: pd.DataFrame


def matched_references(ctx: Context, frame: str, exposures: pd.DataFrame, image: np.ndarray,
                       good: np.ndarray, sky: float, reg: Registry,
                       pool: list[str] | None = None) -> References | str:
    """Find, bring onto the frame's grid and match the frame's independent exposures.

    Parameters
    ----------
    ctx : Context
        The stage context (store, ``evaluate`` settings).
    frame : str
        The frame.
    exposures : DataFrame
        The store's exposure table.
    image : ndarray (ny, nx)
        The frame's pixels, ADU (sky included).
    good : ndarray of bool (ny, nx)
        Its usable pixels.
    sky : float
        Its sky level, ADU.
    reg : Registry
        WCS and offset cache (shared between calls; its ``rows`` are the registrations).
    pool : list of str, optional
        Frames that may serve as references (default: every frame of the store).

    Returns
    -------
    References or str
        The references, or the reason there is none.
    """
    cfg = ctx.cfg.evaluate
    by_frame = exposures.set_index("frame")
    row = by_frame.loc[frame]
    band, expnum = str(row["band"]), int(row["expnum"])
    others = exposures[(exposures["band"].astype(str) == band)
                       & (exposures["expnum"] != expnum)]
    if pool is not None:
        others = others[others["frame"].isin(pool)]
    if others.empty:
        return f"no independent exposure in band {band} (no other exposure number)"
    cands, wcs_d = _reference_candidates(ctx, frame, row, others, image.shape, reg,
                                         (image, ~good))
    refs, names, coverage = _usable_references(ctx, frame, row, by_frame, cands, wcs_d,
                                               image.shape, good, reg.stage)
    if not refs:
        return (f"no independent exposure of band {band} covers ≥ {cfg.min_overlap:.0%} of "
                f"the frame ({len(cands)} overlapping candidate(s))")
    raw = np.where(good, image - sky, np.nan)
    return References(*_matched_references(ctx, frame, raw, good, sky, refs, names,
                                           coverage, reg))
