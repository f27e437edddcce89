"""Seam-free tiled inference of whole CCD frames with ``dask.array.map_overlap``.

How a frame is denoised
-----------------------
1. The frame is normalised with statistics of the *whole frame* (:class:`FrameStats`,
   computed once, e.g. by :func:`frame_stats_from_dask`), so every tile sees the same linear
   transform as whole-image inference. Masked and non-finite pixels become 0 (the sky)
   before the network sees them.
2. ``image.map_overlap(..., depth=halo, boundary="none", trim=True)`` gives every chunk a halo
   of neighbouring pixels; each block runs :func:`pausdenoise.n2v.unet.predict_array` (the one
   inference primitive, through :func:`predict_block`) and the halo is trimmed off.
3. The result is denormalised back to ADU (float32, same chunks as the input).

Why this is *exactly* whole-image inference (seam-free, not approximately)
-------------------------------------------------------------------------
- ``halo`` is derived from the model (:meth:`UNet.halo`: receptive-field radius rounded up to
  a multiple of ``2**depth``), never typed in. A pixel's output cannot depend on input farther
  than the receptive-field radius, so zero padding at an interior tile border never reaches
  a kept pixel.
- Max-pooling (and N2V2's blur-pool) make the output depend on where the ``2**depth`` grid
  starts. Every chunk origin except at the image edge is required to be a multiple of
  ``2**depth`` and so is the halo, so every tile origin lies on the whole image's pooling grid.
  :func:`check_chunks` enforces this (and halo ≤ every chunk, so a halo only ever reaches the
  adjacent chunk) *before* any graph is built, and suggests a valid chunking otherwise.
- ``boundary="none"``: tiles at the image edge get no artificial padding from dask; they
  end at the image edge exactly like the whole image does, and ``predict_array`` then pads
  them identically (zero padding of the convolutions at the top/left, reflection to a
  multiple of ``2**depth`` at the bottom/right, by the same amount because tile origins are
  multiples of ``2**depth``). Any dask boundary (``reflect``, ``nearest``, constant) would feed
  the network pixels that whole-image inference never sees, and change the edge pixels.
  The tests check equality to 1e-5 σ against whole-image inference, image edges included.

Masked and bad pixels
---------------------
Masked pixels (mask ≠ 0) and non-finite pixels enter the network as the sky (0 in normalised
units), exactly as in training, where they are never loss targets. Their values therefore
cannot leak into neighbours (no NaN spreads). The value written *at* such a pixel is chosen by
:attr:`DenoiseConfig.masked_output`: ``"network"`` (default, finite everywhere) is the network's
prediction there, an inpainting from the neighbours that was never trained against a target
and must not be used for photometry; ``"nan"`` writes NaN; ``"input"`` keeps the raw value.
The mask stays the authority: downstream stages drop masked pixels.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import torch

from pausdenoise.denoise.config import DenoiseConfig
from pausdenoise.denoise.model import (
    ModelRef,
    _configure_process,
    _resolve_device,
    as_model_ref,
    get_model,
)
from pausdenoise.denoise.precision import _autocast, _effective_precision
from pausdenoise.denoise.restore import restore_block, restore_overlap, weight_map
from pausdenoise.errors import ChunkingError
from pausdenoise.n2v.normalise import FrameStats, denormalise, frame_statistics, normalise
from pausdenoise.n2v.unet import OptimisedUNet, UNet, predict_array

__all__ = [
    "CPU_BATCH_PIXELS",
    "ChunkingError",
    "check_chunks",
    "denoise_frame",
    "frame_stats_from_dask",
    "merge_short_edges",
    "predict_block",
    "resolve_halo",
    "suggest_chunks",
]

# --------------------------------------------------------------------------- halo & chunks


def resolve_halo(ref: ModelRef | UNet, config: DenoiseConfig | None = None) -> int:
    """Return the halo used: the model's (:meth:`UNet.halo`) or a validated override.

    Parameters
    ----------
    ref : ModelRef or UNet
        The network.
    config : DenoiseConfig, optional
        Its ``halo`` overrides the model's when not ``None``.

    Returns
    -------
    int
        Halo in px (a multiple of ``2**depth``).

    Raises
    ------
    ValueError
        If the override is smaller than the model's halo or not a multiple of
        ``2**depth``.
    """
    ref = ref if isinstance(ref, ModelRef) else ModelRef.from_model(ref)
    config = config or DenoiseConfig()
    if config.halo is None:
        return ref.halo
    m = ref.size_multiple
    if config.halo < ref.halo or config.halo % m:
        raise ValueError(
            f"halo override {config.halo} must be >= the model's halo {ref.halo} "
            f"(receptive field) and a multiple of 2**depth = {m}"
        )
    return config.halo


def _axis_ok(chunks: tuple[int, ...], multiple: int, halo: int) -> bool:
    if len(chunks) == 1:
        return True
    return all(c % multiple == 0 for c in chunks[:-1]) and min(chunks) >= halo


def suggest_chunks(shape: tuple[int, ...], requested: tuple[int, ...], multiple: int,
                   halo: int) -> tuple[int, ...]:
    """Suggest a regular chunk size per axis near ``requested`` that :func:`check_chunks` accepts.

    Candidates are multiples of ``multiple`` that are ≥ ``halo`` and leave a last chunk of
    either 0 or ≥ ``halo`` pixels (or a single chunk); the closest to the request wins.

    Parameters
    ----------
    shape : tuple of int
        Image shape (px).
    requested : tuple of int
        Wanted chunk size per axis (px).
    multiple : int
        ``2**depth`` of the network.
    halo : int
        Halo in px.

    Returns
    -------
    tuple of int
        Chunk size per axis (px); the whole axis when no candidate fits.
    """
    out = []
    for n, want in zip(shape, requested, strict=True):
        best = n
        lo = max(multiple, -(-halo // multiple) * multiple)
        for c in range(lo, n, multiple):
            rest = n % c
            if rest and rest < halo:
                continue
            if abs(c - want) < abs(best - want) or (abs(c - want) == abs(best - want) and c > best):
                best = c
        out.append(best)
    return tuple(out)


def merge_short_edges(
    chunks: tuple[tuple[int, ...], ...], halo: int
) -> tuple[tuple[int, ...], ...]:
    """Merge a last chunk shorter than the halo into the chunk before it, on each axis.

    A frame whose side is not a multiple of the store's chunk (1040 px with 1024-px chunks)
    ends in a short remainder chunk; a halo wider than that chunk would make dask rechunk
    inside ``map_overlap``. Merging the remainder into its neighbour keeps every task on
    whole store chunks (the write unit) and every chunk but the last on the pooling grid, so
    any frame size works with any valid chunk size.

    Parameters
    ----------
    chunks : tuple of tuple of int
        Dask chunks (px per chunk, per axis).
    halo : int
        Halo in px.

    Returns
    -------
    tuple of tuple of int
        The chunks, with short last chunks merged (unchanged when none is short).
    """
    out = []
    for c in chunks:
        if len(c) > 1 and c[-1] < halo:
            c = (*c[:-2], c[-2] + c[-1])
        out.append(tuple(c))
    return tuple(out)


def check_chunks(chunks: tuple[tuple[int, ...], ...], multiple: int, halo: int) -> None:
    """Raise :class:`ChunkingError` unless tiled inference with these chunks is exact.

    Rules, per axis with more than one chunk: every chunk but the last is a multiple of
    ``multiple`` (``2**depth``, so chunk origins lie on the pooling grid) and every chunk is
    ≥ ``halo`` (so a halo reads only the adjacent chunk and dask never rechunks it).

    Parameters
    ----------
    chunks : tuple of tuple of int
        Dask chunks of a 2-D image (px per chunk, per axis).
    multiple : int
        ``2**depth`` of the network.
    halo : int
        Halo in px.

    Raises
    ------
    ChunkingError
        If the image is not 2-D or an axis breaks the rules; the message suggests a valid
        chunking (:func:`suggest_chunks`).
    """
    if len(chunks) != 2:
        raise ChunkingError(f"expected a 2-D image, got {len(chunks)} dimensions")
    bad = [ax for ax, c in enumerate(chunks) if not _axis_ok(c, multiple, halo)]
    if not bad:
        return
    shape = tuple(sum(c) for c in chunks)
    requested = tuple(c[0] for c in chunks)
    sugg = suggest_chunks(shape, requested, multiple, halo)
    details = "; ".join(
        f"axis {ax}: chunks {chunks[ax][:4]}{'...' if len(chunks[ax]) > 4 else ''}"
        for ax in bad
    )
    raise ChunkingError(
        f"chunking incompatible with seam-free tiled inference ({details}): every chunk but "
        f"the last must be a multiple of 2**depth = {multiple} and every chunk >= the halo "
        f"{halo} px. Suggested chunks: {sugg} (e.g. image.rechunk({sugg}); chunks of "
        ">= 1 Mpx keep the map_overlap graph small)"
    )


# --------------------------------------------------------------------------- block inference


#: On CPU a forward pass holds at most this many input pixels (batch × tile area): larger
#: batches only add memory traffic (the 96-channel skip concatenation of 4 × 320² tiles is
#: 157 MB); measured 4 × 320² per forward 1.34× slower than 1 × 320² (benchmarks/RESULTS.md,
#: "CPU inference"). Batching small tiles still amortises the per-call overhead.
CPU_BATCH_PIXELS = 1 << 17

_GPU_LOCKS: dict[str, threading.Lock] = {}


def _tiles(n: int, core: int) -> list[tuple[int, int]]:
    return [(o, min(o + core, n)) for o in range(0, n, core)]


def predict_block(
    model: UNet | OptimisedUNet,
    x: np.ndarray,
    *,
    halo: int,
    tile_size: int | None = None,
    batch_size: int = 4,
    precision: str = "float32",
    prior_scale: float = 1.0,
) -> np.ndarray:
    """Run the network on a normalised 2-D block, optionally in batched sub-tiles.

    With ``tile_size=None`` this is :func:`predict_array` of the block. Otherwise the block
    is cut into cores of ``tile_size`` (origins on multiples of ``tile_size`` from the block
    origin), each read with ``halo`` px around it (clipped at the block), tiles of equal
    shape batched ``batch_size`` at a time; this equals the un-split result by the same
    argument as the chunk-level tiling. Runs on the model's device; on CUDA the input goes
    through pinned memory with non-blocking copies and ``precision`` sets the autocast dtype.
    On CPU a batch is also capped at :data:`CPU_BATCH_PIXELS` input pixels (so 320² tiles
    go one per forward), the faster choice there; the result does not depend on it.

    Parameters
    ----------
    model : UNet or OptimisedUNet
        The network or its optimised CPU copy (:class:`OptimisedUNet`).
    x : ndarray, shape (ny, nx)
        The block in normalised units (σ of the frame, sky at 0).
    halo : int
        Halo of each sub-tile in px (the model's or larger).
    tile_size : int or None, optional
        Core size of sub-tiles in px, a multiple of ``2**depth``; ``None``: one forward.
    batch_size : int, optional
        Sub-tiles per forward pass. Default 4.
    precision : {"float32", "bfloat16", "float16"}, optional
        Autocast dtype. Default ``"float32"``.
    prior_scale : float, optional
        Prior-variance factor τ of a Gaussian-posterior network. Default 1.

    Returns
    -------
    ndarray of float32, shape (ny, nx)
        Network output in normalised units (σ).

    Raises
    ------
    ValueError
        If ``tile_size`` splits the block and is not a multiple of ``2**depth``.
    """
    device = next(model.parameters()).device
    ny, nx = x.shape
    m = model.config.size_multiple
    if tile_size is None or (tile_size >= ny and tile_size >= nx):
        jobs = [((0, ny), (0, nx), (0, ny), (0, nx))]
    else:
        if tile_size % m:
            raise ValueError(f"tile_size {tile_size} must be a multiple of 2**depth = {m}")
        jobs = []
        for y0, y1 in _tiles(ny, tile_size):
            for x0, x1 in _tiles(nx, tile_size):
                jobs.append(((max(0, y0 - halo), min(ny, y1 + halo)),
                             (max(0, x0 - halo), min(nx, x1 + halo)), (y0, y1), (x0, x1)))
    groups: dict[tuple[int, int], list] = {}
    for job in jobs:
        (ry0, ry1), (rx0, rx1), _, _ = job
        groups.setdefault((ry1 - ry0, rx1 - rx0), []).append(job)
    out = np.empty((ny, nx), dtype=np.float32)
    cuda = device.type == "cuda"
    lock = _GPU_LOCKS.setdefault(str(device), threading.Lock()) if cuda else None
    for (gy, gx), group in groups.items():
        step = batch_size if cuda else max(1, min(batch_size, CPU_BATCH_PIXELS // (gy * gx)))
        for b0 in range(0, len(group), step):
            batch = group[b0:b0 + step]
            stack = np.stack([x[ry0:ry1, rx0:rx1] for (ry0, ry1), (rx0, rx1), _, _ in batch])
            xt = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
            with lock if lock is not None else contextlib.nullcontext():
                if cuda:
                    xt = xt.pin_memory().to(device, non_blocking=True)
                with torch.no_grad(), _autocast(device, precision):
                    yt = predict_array(model, xt, prior_scale=prior_scale)
                y = yt[:, 0].float().cpu().numpy()
            for k, ((ry0, _), (rx0, _), (y0, y1), (x0, x1)) in enumerate(batch):
                out[y0:y1, x0:x1] = y[k, y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]
    return out


# --------------------------------------------------------------------------- frames


def _denoise_block(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    ref: ModelRef,
    stats: FrameStats,
    halo: int,
    config: DenoiseConfig,
) -> np.ndarray:
    """Denoise one map_overlap block: normalise, run the network, denormalise.

    Returns
    -------
    ndarray of float32
        The block in ADU, masked / non-finite pixels as ``config.masked_output`` says.
    """
    if image.size == 0:
        return np.empty(image.shape, dtype=np.float32)
    device = _resolve_device(config.device)
    _configure_process(config, device)
    model = get_model(ref, device)
    x = normalise(image, stats, mask)
    y = predict_block(model, x, halo=halo, tile_size=config.tile_size,
                      batch_size=config.batch_size,
                      precision=_effective_precision(config, device),
                      prior_scale=config.prior_scale)
    out = denormalise(y, stats)
    if config.masked_output != "network":
        bad = ~np.isfinite(image)
        if mask is not None:
            bad |= np.asarray(mask) != 0
        if bad.any():
            out[bad] = np.nan if config.masked_output == "nan" else image[bad]
    return out


def _ref_key(ref: ModelRef):
    """Wrap the ref as one graph key shared by all tasks (and all frames using the model).

    Returns
    -------
    dask.delayed.Delayed
        Named ``n2v-model-<fingerprint>``.
    """
    return dask.delayed(ref, traverse=False, pure=True, name=f"n2v-model-{ref.fingerprint}")


def _denoise_restore_block(image: np.ndarray, weight: np.ndarray,
                           mask: np.ndarray | None = None, **block: Any) -> np.ndarray:
    """Denoise one block (:func:`_denoise_block`, its keywords), then restore its apertures.

    Returns
    -------
    ndarray of float32
        :func:`pausdenoise.denoise.restore.restore_block` of the denoised block, ADU.
    """
    den = _denoise_block(image, mask, **block)
    if image.size == 0:
        return den
    return restore_block(den, image, mask, weight, block["config"].restore_sigma)


def _map_denoise(image: da.Array, mask: da.Array | None, stats: FrameStats, ref: ModelRef,
                 config: DenoiseConfig, halo: int,
                 apertures: pd.DataFrame | None = None) -> da.Array:
    """Build the map_overlap graph, without validation (tests use it to shrink the halo).

    With ``apertures`` (the frame's catalogue geometry, :mod:`pausdenoise.denoise.restore`)
    each block is also restored, in the same task: the overlap widens to
    :func:`~pausdenoise.denoise.restore.restore_overlap` and the aperture mask travels as a
    second input, so no chunk waits for its neighbours' network output.

    Returns
    -------
    dask.array.Array
        float32 ADU, the image's chunks.
    """
    if apertures is None:
        block, overlap, extra = _denoise_block, halo, []
    else:
        block = _denoise_restore_block
        overlap = restore_overlap(halo, config.restore_sigma, ref.size_multiple)
        extra = [weight_map(image, apertures, config.restore_grow)]
    depth = {ax: (overlap if len(c) > 1 else 0) for ax, c in enumerate(image.chunks)}
    arrays = [image, *extra] + ([] if mask is None else [mask])
    return da.map_overlap(
        block,
        *arrays,
        depth=depth,
        boundary="none",
        trim=True,
        align_arrays=False,
        dtype=np.float32,
        meta=np.empty((0, 0), dtype=np.float32),
        name="n2v-denoise-" + dask.base.tokenize(
            image, mask, stats, ref.fingerprint, config.model_dump_json(), halo, apertures
        ),
        ref=_ref_key(ref),
        stats=stats,
        halo=halo,
        config=config,
    )


def denoise_frame(
    image: da.Array,
    mask: da.Array | None,
    stats: FrameStats,
    model: UNet | ModelRef | str | os.PathLike,
    config: DenoiseConfig | None = None,
) -> da.Array:
    """Lazily denoise one frame; equals whole-image :func:`predict_array` inference.

    Parameters
    ----------
    image : dask.array.Array, shape (ny, nx)
        Frame in ADU. Its chunks must satisfy :func:`check_chunks` for the model.
    mask : dask.array.Array or None
        Non-zero = bad pixel (set to the sky before the network). Rechunked to ``image``'s
        chunks if they differ.
    stats : FrameStats
        Whole-frame normalisation statistics (sky and σ in ADU; never per chunk).
    model : UNet, ModelRef or path
        The network; a path is a checkpoint (see :class:`ModelRef`).
    config : DenoiseConfig, optional
        Device, precision, sub-tiling, halo override, masked-pixel policy.

    Returns
    -------
    dask.array.Array
        float32 ADU, same shape and chunks. At masked / non-finite pixels: see
        ``config.masked_output``.

    Raises
    ------
    ChunkingError
        Before any graph is built, if the chunks would give seams; the message suggests
        a valid chunking.
    ValueError
        If ``mask`` has another shape than ``image``, or the halo override is invalid.
    """
    config = config or DenoiseConfig()
    ref = as_model_ref(model)
    halo = resolve_halo(ref, config)
    if image.ndim != 2:
        raise ChunkingError(f"expected a 2-D image, got shape {image.shape}")
    check_chunks(image.chunks, ref.size_multiple, halo)
    if mask is not None:
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} != image shape {image.shape}")
        if mask.chunks != image.chunks:
            mask = mask.rechunk(image.chunks)
    return _map_denoise(image, mask, stats, ref, config, halo)


def frame_stats_from_dask(image: da.Array, mask: da.Array | None = None,
                          max_samples: int = 1_000_000) -> FrameStats:
    """Compute :func:`frame_statistics` of a lazy frame from a regular-stride sample (eager).

    Reads the frame once (strided slicing still reads whole chunks) but never holds more
    than the sample in memory.

    Parameters
    ----------
    image : dask.array.Array, shape (ny, nx)
        Frame in ADU.
    mask : dask.array.Array or None, optional
        Non-zero = bad pixel, left out of the statistics.
    max_samples : int, optional
        Upper bound on the sampled pixels (stride ``ceil(sqrt(size / max_samples))`` on
        both axes). Default 10⁶.

    Returns
    -------
    FrameStats
        Sky and σ of the frame in ADU.
    """
    stride = max(1, math.ceil(math.sqrt(image.size / max_samples)))
    parts = [image[::stride, ::stride]]
    if mask is not None:
        parts.append(mask[::stride, ::stride])
    values = dask.compute(*parts)
    return frame_statistics(values[0], values[1] if mask is not None else None,
                            max_samples=max_samples)
