"""Co-adding (stacking) exposures of one band onto a common pixel grid.

Pure functions on arrays and :class:`astropy.wcs.WCS` objects; no file access.

What a stack is here
--------------------
For frames ``k = 1..N`` (image ``I_k`` in ADU, mask ``M_k``, optional inverse variance
``ivar_k``, zero-point ``ZP_k``, WCS ``W_k``) and a reference grid (``ref_wcs``, ``ref_shape``,
reference zero-point ``ZP_ref``):

1. **Sky.** Each frame's sky level — the sigma-clipped median of its good pixels
   (:func:`pausdenoise.n2v.normalise.frame_statistics`) — is subtracted before anything else.
   The stack is therefore *sky-subtracted*. (A constant per frame is the right model for
   PAUS narrow-band CCD frames after the instrument pipeline; a spatially varying
   background should be removed upstream.) Set ``subtract_sky=False`` to keep the levels.
2. **Zero-point.** Calibrated flux is ``f · ZP`` (ADU times zero-point), so a frame is brought
   to the reference calibration by multiplying it by ``ZP_k / ZP_ref``; its variance is
   multiplied by ``(ZP_k / ZP_ref)²``. Without zero-points all frames count as equal.
3. **Resampling** onto the reference grid (``StackConfig.resampling``):

   - ``"shift"``: the frame grid must equal the reference grid up to a translation (checked
     on a lattice of points to ``shift_tolerance`` px; a ``ValueError`` otherwise). An
     integer translation is applied exactly (pure re-indexing, no interpolation); a
     sub-pixel remainder by bilinear interpolation, which conserves the total flux.
   - ``"interp"``: general bilinear interpolation through the two WCSs (rotation, scale,
     distortion allowed); pixel values are multiplied by the pixel-area ratio
     ``area_ref / area_k`` (at the grid centre) so fluxes, not surface brightness, are kept.
   - ``"reproject"``: the same through :func:`reproject.reproject_interp` (bilinear) from the
     optional ``reproject`` package; an ``ImportError`` with advice when it is absent.
   - ``"auto"`` (default): ``"shift"`` when the grids differ only by a translation,
     ``"interp"`` otherwise.

   A resampled pixel is valid only when every input pixel that enters its interpolation with
   a non-zero coefficient is inside the frame and unmasked: **masked pixels never contribute**.
   Its variance for weighting is the *linearly interpolated* input variance ``Σ c_j var_j``
   (as SWarp interpolates weight maps): the noise per unit area, which is what aperture
   fluxes see. The per-pixel variance of an interpolated value is lower (``Σ c_j² var_j``)
   but the noise becomes correlated, and weights must not reward that smoothing — a frame
   shifted by half a pixel would otherwise count up to 4× more than an aligned one.
4. **Weights.** Inverse variance: from ``ivar`` arrays when given, else ``1 / σ_k²`` with
   ``σ_k`` the frame's robust (MAD) sky σ — always propagated through steps 2 and 3.
   ``weighting="uniform"`` gives every valid pixel weight 1 (an unweighted mean).
5. **Combination.** ``combine="mean"``: the weighted mean ``Σ w x / Σ w``.
   ``combine="clipped"``: iterated; a frame's pixel is rejected when it lies more than
   ``clip_sigma`` of *its own* noise (``1/sqrt(w)``, in quadrature with the noise of the
   current mean) from the weighted mean of the kept frames. That scale is right for sky and
   faint sources and catches unmasked cosmic rays and artefacts; for bright sources with a
   seeing that changes between frames, give ``ivar`` arrays with the source Poisson term.

The weight map returned is ``Σ w`` over the kept frames — the stack's inverse variance in
``(ADU at ZP_ref)⁻²`` when ``weighting="inverse_variance"``. Pixels where no frame contributes
have stack value 0 and weight 0.

Frames without a WCS (exposures of one field offset by a translation) are stacked with the
shift-only WCSs of :func:`pausdenoise.register.shift_wcs`, built from offsets measured by
cross-correlation: ``"shift"`` then applies them exactly as above.

``exclude=`` leaves frames out: the "stack of the other exposures" used as cGAN targets (see
:mod:`pausdenoise.gan.pairs`) is ``stack_frames(..., ref_wcs=W_i, ref_shape=shape_i,
zp_ref=ZP_i, exclude=i)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from astropy.wcs import WCS
from pydantic import BaseModel, ConfigDict, Field

from pausdenoise.n2v.normalise import frame_statistics
from pausdenoise.stats import MAD_TO_SIGMA


class StackConfig(BaseModel):
    """How frames are combined into a stack (see the module docstring for the definitions).

    Parameters
    ----------
    combine : {"mean", "clipped"}
        Weighted mean, or sigma-clipped weighted mean.
    clip_sigma : float
        Rejection threshold, in units of each frame's own noise, for ``combine="clipped"``.
    clip_iterations : int
        Maximum clipping iterations.
    resampling : {"auto", "shift", "interp", "reproject"}
        How frames are brought onto the reference grid.
    shift_tolerance : float
        Largest departure (px) from a pure translation that ``"shift"`` accepts.
    weighting : {"inverse_variance", "uniform"}
        Inverse-variance weights, or equal weights.
    subtract_sky : bool
        Subtract each frame's robust sky level before stacking.
    reference : int
        Index of the frame that defines the grid and the zero-point in
        :func:`reference_grid` (and ``zp_ref`` when it is not given).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    combine: Literal["mean", "clipped"] = Field(
        "mean", description="'mean': weighted mean; 'clipped': sigma-clipped weighted mean."
    )
    clip_sigma: float = Field(
        3.0, gt=0,
        description="Rejection threshold of combine 'clipped', in units of each frame's own "
        "noise σ.",
    )
    clip_iterations: int = Field(
        3, ge=1, description="Maximum clipping iterations of combine 'clipped'."
    )
    resampling: Literal["auto", "shift", "interp", "reproject"] = Field(
        "auto",
        description="How frames are brought onto the reference grid: 'shift' (a pure "
        "translation: integer part exact, sub-pixel remainder bilinear), 'interp' (bilinear "
        "through the two WCSs, flux kept), 'reproject' (the same with the reproject package); "
        "'auto': 'shift' when the grids differ only by a translation, else 'interp'.",
    )
    shift_tolerance: float = Field(
        1e-3, gt=0,
        description="Largest departure (px) from a pure translation that 'shift' accepts.",
    )
    weighting: Literal["inverse_variance", "uniform"] = Field(
        "inverse_variance", description="Inverse-variance weights, or equal weights."
    )
    subtract_sky: bool = Field(
        True, description="Subtract each frame's robust sky level (ADU) before stacking."
    )
    reference: int = Field(
        0, ge=0,
        description="0-based index of the frame that defines the grid and the zero-point.",
    )


# --------------------------------------------------------------------------- geometry


def reference_grid(
    wcs_list: Sequence[WCS], shapes: Sequence[tuple[int, int]], config: StackConfig
) -> tuple[WCS, tuple[int, int]]:
    """Return the grid of frame ``config.reference``: its WCS (celestial part) and shape.

    Parameters
    ----------
    wcs_list : sequence of WCS
        One WCS per frame.
    shapes : sequence of (int, int)
        One ``(ny, nx)`` per frame, pixels.
    config : StackConfig
        Its ``reference`` (0-based frame index) chooses the frame.

    Returns
    -------
    tuple of (WCS, (int, int))
        The celestial WCS and the shape ``(ny, nx)`` of the reference frame.

    Raises
    ------
    ValueError
        If ``config.reference`` is not the index of a frame.
    """
    if config.reference >= len(wcs_list):
        raise ValueError(f"reference={config.reference} but only {len(wcs_list)} frames")
    return wcs_list[config.reference].celestial, tuple(shapes[config.reference])


def _pixel_map(frame_wcs: WCS, ref_wcs: WCS, y: np.ndarray, x: np.ndarray):
    """Return the frame pixel coordinates (0-based) of reference pixels ``(y, x)``.

    Returns
    -------
    tuple of ndarray
        ``(fy, fx)``, float64.
    """
    ra, dec = ref_wcs.celestial.all_pix2world(x, y, 0)
    fx, fy = frame_wcs.celestial.all_world2pix(ra, dec, 0)
    return np.asarray(fy, dtype=np.float64), np.asarray(fx, dtype=np.float64)


def frame_offset(
    frame_wcs: WCS, ref_wcs: WCS, ref_shape: tuple[int, int], tolerance: float = 1e-3
) -> tuple[float, float] | None:
    """Find the translation ``(dy, dx)`` with ``frame_pixel = ref_pixel + (dy, dx)``, if any.

    Checked on a 5×5 lattice spanning the reference grid.

    Parameters
    ----------
    frame_wcs : WCS
        WCS of the frame.
    ref_wcs : WCS
        WCS of the reference grid.
    ref_shape : (int, int)
        Shape ``(ny, nx)`` of the reference grid, pixels.
    tolerance : float, optional
        Largest departure from a pure translation anywhere on the lattice, pixels.
        Default 1e-3.

    Returns
    -------
    tuple of (float, float) or None
        ``(dy, dx)`` in pixels (0-based on both grids); None when the mapping departs from a
        translation by more than ``tolerance`` or is not finite.
    """
    ny, nx = ref_shape
    yy, xx = np.meshgrid(np.linspace(0, ny - 1, 5), np.linspace(0, nx - 1, 5), indexing="ij")
    fy, fx = _pixel_map(frame_wcs, ref_wcs, yy.ravel(), xx.ravel())
    dy, dx = fy - yy.ravel(), fx - xx.ravel()
    if not (np.all(np.isfinite(dy)) and np.all(np.isfinite(dx))):
        return None
    if np.ptp(dy) > tolerance or np.ptp(dx) > tolerance:
        return None
    return float(np.median(dy)), float(np.median(dx))


def _pixel_area(wcs: WCS) -> float:
    return float(wcs.celestial.proj_plane_pixel_area().value)


# --------------------------------------------------------------------------- resampling


def _bilinear(
    image: np.ndarray,
    good: np.ndarray,
    var: np.ndarray | float,
    fy: np.ndarray,
    fx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``image`` bilinearly at (broadcastable) coordinates ``(fy, fx)``.

    ``variance`` is the linearly interpolated input variance (noise per unit area, see the
    module docstring). A sample is valid when all input pixels with a non-zero coefficient
    are inside the image and ``good``; integer coordinates use exactly one input pixel
    (exact copy).

    Returns
    -------
    tuple of ndarray
        ``(value, variance, valid)``, 0 where invalid.
    """
    ny, nx = image.shape
    y0 = np.floor(fy)
    x0 = np.floor(fx)
    ty = fy - y0
    tx = fx - x0
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    shape = np.broadcast_shapes(np.shape(fy), np.shape(fx))
    value = np.zeros(shape)
    variance = np.zeros(shape)
    valid = np.ones(shape, dtype=bool)
    var_is_map = np.ndim(var) == 2
    for dy, cy in ((0, 1.0 - ty), (1, ty)):
        for dx, cx in ((0, 1.0 - tx), (1, tx)):
            c = cy * cx
            used = c != 0
            yi = y0 + dy
            xi = x0 + dx
            inside = (yi >= 0) & (yi < ny) & (xi >= 0) & (xi < nx)
            yc = np.clip(yi, 0, ny - 1)
            xc = np.clip(xi, 0, nx - 1)
            ok = inside & good[yc, xc]
            valid &= ~used | ok
            c_eff = np.where(used & ok, c, 0.0)
            value += c_eff * image[yc, xc]
            v = var[yc, xc] if var_is_map else var
            variance += c_eff * v
    value[~valid] = 0.0
    variance[~valid] = 0.0
    return value, variance, valid


def _resample_reproject(
    image: np.ndarray,
    good: np.ndarray,
    var: np.ndarray | float,
    frame_wcs: WCS,
    ref_wcs: WCS,
    ref_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        from reproject import reproject_interp  # optional: the stack extra
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "StackConfig(resampling='reproject') needs the optional 'reproject' package "
            "(pip install reproject); resampling='interp' does the same bilinear "
            "interpolation without it"
        ) from exc

    def rp(a: np.ndarray) -> np.ndarray:
        out, foot = reproject_interp(
            (a, frame_wcs.celestial), ref_wcs.celestial, shape_out=ref_shape, order="bilinear"
        )
        return np.where(foot > 0, out, np.nan)

    img = np.where(good, image, 0.0)
    value = rp(img)
    # A pixel is valid when no bad pixel enters its interpolation: resample the bad indicator.
    bad = rp((~good).astype(np.float64))
    valid = np.isfinite(value) & np.isfinite(bad) & (bad == 0)
    varmap = var if np.ndim(var) == 2 else np.full(image.shape, float(var))
    # Variance: linearly interpolated, as in the built-in path.
    variance = rp(np.where(good, varmap, 0.0))
    value = np.where(valid, value, 0.0)
    variance = np.where(valid, variance, 0.0)
    return value, variance, valid


def resample_frame(
    image: np.ndarray,
    mask: np.ndarray | None,
    var: np.ndarray | float,
    frame_wcs: WCS,
    ref_wcs: WCS,
    ref_shape: tuple[int, int],
    config: StackConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample one frame onto the reference grid (see the module docstring, step 3).

    Parameters
    ----------
    image : ndarray (ny, nx)
        Frame values (already sky-subtracted and zero-point scaled, if wanted).
    mask : ndarray of int or None
        Non-zero marks a bad pixel.
    var : ndarray (ny, nx) or float
        Per-pixel variance (``inf`` or non-positive ivar already turned into bad pixels).
    frame_wcs, ref_wcs : WCS
    ref_shape : (int, int)
    config : StackConfig

    Returns
    -------
    value, variance, valid : ndarrays of ``ref_shape``
        Resampled values (0 where invalid), their variance for weighting (linearly
        interpolated, 0 where invalid), validity.

    Raises
    ------
    ValueError
        If ``config.resampling`` is ``"shift"`` and the frame's WCS is not a translation
        of the reference grid.
    """
    image = np.asarray(image, dtype=np.float64)
    good = np.isfinite(image)
    if mask is not None:
        good &= np.asarray(mask) == 0
    if np.ndim(var) == 2:
        good &= np.isfinite(var)
    image = np.where(good, image, 0.0)
    ny, nx = ref_shape
    method = config.resampling
    if method == "reproject":
        return _resample_reproject(image, good, var, frame_wcs, ref_wcs, ref_shape)
    offset = None
    if method in ("auto", "shift"):
        offset = frame_offset(frame_wcs, ref_wcs, ref_shape, config.shift_tolerance)
        if offset is None and method == "shift":
            raise ValueError(
                "resampling='shift' but the frame's WCS is not a pure translation of the "
                "reference grid; use resampling='interp' (or 'auto')"
            )
    if offset is not None:
        dy, dx = offset
        # Snap offsets within the tolerance of an integer: exact re-indexing.
        ry, rx = round(dy), round(dx)
        dy = float(ry) if abs(dy - ry) <= config.shift_tolerance else dy
        dx = float(rx) if abs(dx - rx) <= config.shift_tolerance else dx
        fy = (np.arange(ny, dtype=np.float64) + dy)[:, None]
        fx = (np.arange(nx, dtype=np.float64) + dx)[None, :]
        return _bilinear(image, good, var, fy, fx)
    yy, xx = np.mgrid[0:ny, 0:nx]
    fy, fx = _pixel_map(frame_wcs, ref_wcs, yy.ravel().astype(float), xx.ravel().astype(float))
    fy = fy.reshape(ref_shape)
    fx = fx.reshape(ref_shape)
    bad_coord = ~(np.isfinite(fy) & np.isfinite(fx))
    fy = np.where(bad_coord, -10.0, fy)
    fx = np.where(bad_coord, -10.0, fx)
    value, variance, valid = _bilinear(image, good, var, fy, fx)
    area = _pixel_area(ref_wcs) / _pixel_area(frame_wcs)
    return value * area, variance * area**2, valid


# --------------------------------------------------------------------------- stacking


def _as_index_set(exclude: int | Sequence[int] | None, n: int) -> set[int]:
    if exclude is None:
        return set()
    idx = {int(exclude)} if np.isscalar(exclude) else {int(i) for i in exclude}
    for i in idx:
        if not -n <= i < n:
            raise IndexError(f"exclude index {i} out of range for {n} frames")
    return {i % n for i in idx}


def _frames_to_use(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None,
    weights: Sequence[np.ndarray | None] | None,
    wcs_list: Sequence[WCS],
    exclude: int | Sequence[int] | None,
    zps: Sequence[float] | None,
    skies: Sequence[float] | None,
) -> list[int]:
    """Check the per-frame sequences against each other; return the frames to stack.

    Returns
    -------
    list of int
        Indices of the frames not excluded.

    Raises
    ------
    ValueError
        Inconsistent lengths, or every frame excluded.
    """
    n = len(images)
    if len(wcs_list) != n:
        raise ValueError(f"{n} images but {len(wcs_list)} WCS")
    for name, seq in (("masks", masks), ("weights", weights), ("zps", zps), ("skies", skies)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{n} images but {len(seq)} {name}")
    skip = _as_index_set(exclude, n)
    use = [k for k in range(n) if k not in skip]
    if not use:
        raise ValueError("every frame is excluded: nothing to stack")
    return use


def _frame_on_grid(
    k: int,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None,
    weights: Sequence[np.ndarray | None] | None,
    wcs_list: Sequence[WCS],
    ref_wcs: WCS,
    ref_shape: tuple[int, int],
    config: StackConfig,
    zps: Sequence[float] | None,
    zp_ref: float | None,
    skies: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bring frame ``k`` onto the grid: sky-subtracted, scaled to ``zp_ref``, resampled.

    Returns
    -------
    tuple of ndarray
        ``(value, weight)`` on ``ref_shape`` (weight 0 where invalid).

    Raises
    ------
    ValueError
        If the frame's ivar has another shape than its image.
    """
    image = np.asarray(images[k], dtype=np.float64)
    mask = None if masks is None or masks[k] is None else np.asarray(masks[k])
    ivar = None if weights is None or weights[k] is None else np.asarray(weights[k], float)
    if ivar is not None:
        if ivar.shape != image.shape:
            raise ValueError(f"frame {k}: ivar shape {ivar.shape} != image {image.shape}")
        bad_ivar = ~(np.isfinite(ivar) & (ivar > 0))
        mask = bad_ivar if mask is None else (mask != 0) | bad_ivar
        with np.errstate(divide="ignore"):
            var: np.ndarray | float = np.where(bad_ivar, np.inf, 1.0 / ivar)
    need_var = ivar is None and config.weighting == "inverse_variance"
    need_stats = need_var or (skies is None and config.subtract_sky)
    st = frame_statistics(image, mask) if need_stats else None
    if skies is not None:
        sky = float(skies[k])
    else:
        sky = st.sky if config.subtract_sky else 0.0
    if ivar is None:
        var = st.sigma**2 if need_var else 1.0
    scale = 1.0 if zps is None else float(zps[k]) / zp_ref
    image = (image - sky) * scale
    var = var * scale**2
    value, variance, valid = resample_frame(
        image, mask, var, wcs_list[k], ref_wcs, ref_shape, config
    )
    if config.weighting == "uniform":
        w = valid.astype(np.float64)
    else:
        w = np.zeros(ref_shape)
        ok = valid & (variance > 0)
        w[ok] = 1.0 / variance[ok]
    return value, w


def _clipped_sums(
    values: list[np.ndarray],
    wts: list[np.ndarray],
    ref_shape: tuple[int, int],
    config: StackConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Clip the resampled frames iteratively; sum the kept pixels.

    The lists are emptied on the way (their memory is freed).

    Returns
    -------
    tuple of ndarray
        ``(Σ w x, Σ w)`` over the kept frames, float64, ``ref_shape``.
    """
    x = np.stack(values).astype(np.float64)
    w = np.stack(wts).astype(np.float64)
    del values[:], wts[:]
    keep = w > 0
    for _ in range(config.clip_iterations):
        wk = np.where(keep, w, 0.0)
        sw = wk.sum(axis=0)
        mean = np.divide((wk * x).sum(axis=0), sw, out=np.zeros(ref_shape), where=sw > 0)
        # Noise of a frame pixel around the mean: its own var plus that of the mean.
        var_frame = np.divide(1.0, w, out=np.full_like(w, np.inf), where=w > 0)
        var_mean = np.divide(1.0, sw, out=np.zeros(ref_shape), where=sw > 0)
        if config.weighting == "uniform":  # no noise model in the weights: robust scatter
            dev = np.abs(np.where(keep, x - mean, np.nan))
            with np.errstate(all="ignore"):
                s = MAD_TO_SIGMA * np.nanmedian(dev, axis=0)
            var_frame = np.broadcast_to(s**2, x.shape)
            var_mean = np.zeros(ref_shape)
        new_keep = keep & ((x - mean) ** 2 <= config.clip_sigma**2 * (var_frame + var_mean))
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    w = np.where(keep, w, 0.0)
    return (w * x).sum(axis=0), w.sum(axis=0)


def stack_frames(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None,
    weights: Sequence[np.ndarray | None] | None,
    wcs_list: Sequence[WCS],
    ref_wcs: WCS,
    ref_shape: tuple[int, int],
    config: StackConfig | None = None,
    exclude: int | Sequence[int] | None = None,
    *,
    zps: Sequence[float] | None = None,
    zp_ref: float | None = None,
    skies: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack frames onto the reference grid.

    Parameters
    ----------
    images : sequence of ndarray (ny_k, nx_k)
        Frames in ADU (sky not subtracted).
    masks : sequence of ndarray or None, or None
        Per-frame masks; non-zero marks a bad pixel (never contributes).
    weights : sequence of ndarray or None, or None
        Per-frame inverse-variance maps (1/ADU²); pixels with ivar ≤ 0 or non-finite count
        as masked. None (for all or one frame): ``1/σ²`` from the frame's robust sky σ.
    wcs_list : sequence of WCS
        One WCS per frame (celestial axes used).
    ref_wcs : WCS
        WCS of the output grid.
    ref_shape : (int, int)
        Output shape.
    config : StackConfig, optional
    exclude : int or sequence of int, optional
        Frames left out (leave-one-out targets for the cGAN).
    zps : sequence of float, optional
        Multiplicative zero-points (calibrated flux = flux · ZP); None: all equal.
    zp_ref : float, optional
        Zero-point of the output; default ``zps[config.reference]``.
    skies : sequence of float, optional
        Sky levels to subtract (ADU); default: each frame's sigma-clipped median.

    Returns
    -------
    stack : ndarray float32, ``ref_shape``
        Sky-subtracted weighted mean in ADU at ``zp_ref`` (0 where no frame contributes).
    weight_map : ndarray float32, ``ref_shape``
        Sum of the weights of the contributing frames (inverse variance of the stack for
        inverse-variance weighting).

    Raises
    ------
    ValueError
        Inconsistent lengths, or every frame excluded.
    """
    config = config or StackConfig()
    use = _frames_to_use(images, masks, weights, wcs_list, exclude, zps, skies)
    if zps is not None and zp_ref is None:
        zp_ref = float(zps[config.reference])
    ref_shape = (int(ref_shape[0]), int(ref_shape[1]))

    values: list[np.ndarray] = []
    wts: list[np.ndarray] = []
    streaming = config.combine == "mean"
    sum_wx = np.zeros(ref_shape)
    sum_w = np.zeros(ref_shape)
    for k in use:
        value, w = _frame_on_grid(
            k, images, masks, weights, wcs_list, ref_wcs, ref_shape, config, zps, zp_ref, skies
        )
        if streaming:
            sum_wx += w * value
            sum_w += w
        else:
            values.append(value.astype(np.float32))
            wts.append(w.astype(np.float32))

    if not streaming:
        sum_wx, sum_w = _clipped_sums(values, wts, ref_shape, config)

    stack = np.divide(sum_wx, sum_w, out=np.zeros(ref_shape), where=sum_w > 0)
    return stack.astype(np.float32), sum_w.astype(np.float32)
