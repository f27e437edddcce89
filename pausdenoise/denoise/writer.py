"""Resumable writing of denoised frames into the store.

Resumable writing
-----------------
:func:`denoise_to_store` writes ``frames/<frame>/denoised`` with the image's chunks, one task per
chunk, and sets ``frames/<frame>/denoised_done[i, j] = 1`` only after chunk ``(i, j)`` is
written (0-based chunk indices). A rerun skips chunks already done. The array's
``denoise_key`` attribute (:func:`denoise_key`) hashes everything that changes the values
(model fingerprint, frame statistics, halo, precision, masked-pixel policy, and with
``restore_catalogue`` the frame's apertures and the restoration settings); a different key
resets the flags first (then records the key), so a new model or catalogue recomputes
everything.
``complete`` is set last, after every flag is 1.
"""

from __future__ import annotations

import os

import dask
import numpy as np
import pandas as pd
import zarr

from pausdenoise import store as st
from pausdenoise.denoise.config import DenoiseConfig
from pausdenoise.denoise.model import ModelRef, as_model_ref
from pausdenoise.denoise.restore import block_overlap, restore_digest
from pausdenoise.denoise.tiling import (
    _map_denoise,
    check_chunks,
    frame_stats_from_dask,
    merge_short_edges,
    resolve_halo,
)
from pausdenoise.digest import json_digest
from pausdenoise.errors import StoreError
from pausdenoise.n2v.normalise import FrameStats
from pausdenoise.n2v.unet import UNet

__all__ = ["DENOISED", "DONE", "denoise_key", "denoise_to_store"]

#: Name of the denoised array in a frame's group (float32 ADU, the image's chunks).
DENOISED = "denoised"
#: Name of the per-chunk done flags (uint8, one element per dask chunk).
DONE = "denoised_done"


def denoise_key(ref: ModelRef, stats: FrameStats, halo: int, config: DenoiseConfig,
                restore: str | None = None) -> str:
    """Hash everything that changes the denoised values of a frame.

    Parameters
    ----------
    ref : ModelRef
        The model (its fingerprint enters the key).
    stats : FrameStats
        Normalisation statistics of the frame (sky and σ in ADU).
    halo : int
        Halo in px.
    config : DenoiseConfig
        Its ``precision``, ``masked_output`` and (when not 1) ``prior_scale`` enter the key.
    restore : str, optional
        :func:`pausdenoise.denoise.restore.restore_digest` of the frame when
        ``restore_catalogue`` is on (absent otherwise: keys of earlier runs stay valid).

    Returns
    -------
    str
        24 hex characters of the SHA-256 of the canonical JSON of these values.
    """
    payload = {
        "model": ref.fingerprint,
        "sky": float(stats.sky),
        "sigma": float(stats.sigma),
        "halo": int(halo),
        "precision": config.precision,
        "masked_output": config.masked_output,
    }
    if config.prior_scale != 1.0:  # absent at 1: keys of earlier runs stay valid
        payload["prior_scale"] = float(config.prior_scale)
    if restore is not None:
        payload["restore"] = restore
    return json_digest(payload, 24)  # JSON-native payload: identical to json.dumps(sort_keys)


def _write_block(block: np.ndarray, store_path: str, frame: str, index: tuple[int, int],
                 region: tuple[slice, slice]) -> int:
    """Write one denoised chunk, then (only then) mark it done.

    Returns
    -------
    int
        1 (one chunk written).
    """
    arr = zarr.open_array(store_path, path=f"frames/{frame}/{DENOISED}", mode="r+")
    arr[region] = block
    done = zarr.open_array(store_path, path=f"frames/{frame}/{DONE}", mode="r+")
    done[index] = 1
    return 1


def _finish(counts: list[int], store_path: str, frame: str, key: str) -> int:
    """Set ``complete`` once every chunk flag is 1.

    Returns
    -------
    int
        Number of chunks written by this run.
    """
    arr = zarr.open_array(store_path, path=f"frames/{frame}/{DENOISED}", mode="r+")
    done = zarr.open_array(store_path, path=f"frames/{frame}/{DONE}", mode="r")
    if arr.attrs.get("denoise_key") == key and bool(np.all(done[...] == 1)):
        arr.attrs["complete"] = True
    return int(sum(counts))


def _open_input(store_path: str, frame: str, use_mask: bool):
    """Open the frame's group and its lazy ``image`` and ``mask`` (or None).

    Returns
    -------
    tuple
        ``(group, image, mask)``.

    Raises
    ------
    StoreError
        If the frame is missing or its ingest is not complete.
    """
    if not st.is_complete(store_path, frame):
        raise StoreError(f"frame {frame!r} is missing or not completely ingested")
    group = st.open_store(store_path, "r+")[f"{st.FRAMES_GROUP}/{frame}"]
    image = st.open_frame(store_path, frame, "image")
    mask = st.open_frame(store_path, frame, "mask") if use_mask and "mask" in group else None
    return group, image, mask


def _done_flags(group, store_path: str, frame: str, image, key: str, ref: ModelRef,
                stats: FrameStats, halo: int, config: DenoiseConfig,
                force: bool) -> np.ndarray:
    """Reuse the stored flags when layout and key match, else reset output and flags.

    Returns
    -------
    ndarray of uint8
        One flag per dask chunk (1 = written), indexed by 0-based chunk indices.
    """
    grid = tuple(len(c) for c in image.chunks)
    unit = st.write_chunks(store_path, frame, "image")
    arr = group.get(DENOISED)
    done = group.get(DONE)
    reuse = (
        not force and arr is not None and done is not None
        and arr.shape == image.shape and tuple(arr.shards or arr.chunks) == unit
        and tuple(done.shape) == grid and arr.attrs.get("denoise_key") == key
    )
    if reuse:
        return np.asarray(done[...])
    # Flags first (all zero), then a fresh array (NaN: no stale values survive) and its
    # key last: an interruption anywhere leaves no flag that a later run could trust.
    group.create_array(DONE, shape=grid, chunks=(1,) * len(grid), dtype="uint8",
                       fill_value=0, overwrite=True)
    arr = st.create_output_array(store_path, frame, DENOISED, like="image",
                                 overwrite=True)
    arr.attrs.update({
        "denoise_key": key,
        "model_fingerprint": ref.fingerprint,
        "sky": float(stats.sky),
        "sigma": float(stats.sigma),
        "halo": int(halo),
        "precision": config.precision,
        "masked_output": config.masked_output,
        "restore_catalogue": bool(config.restore_catalogue),
        "complete": False,
    })
    return np.zeros(grid, dtype=np.uint8)


def _chunk_writes(den, chunks: tuple[tuple[int, ...], ...], flags: np.ndarray,
                  store_path: str, frame: str, key: str) -> list:
    """Build one delayed :func:`_write_block` per chunk whose flag is not set.

    Returns
    -------
    list of dask.delayed.Delayed
        The writes, in row-major chunk order.
    """
    blocks = den.to_delayed()
    offsets = [np.concatenate([[0], np.cumsum(c)]) for c in chunks]
    writes = []
    for index in np.ndindex(*flags.shape):
        if flags[index]:
            continue
        region = tuple(slice(int(o[i]), int(o[i + 1])) for o, i in zip(offsets, index,
                                                                          strict=True))
        writes.append(dask.delayed(_write_block, pure=False)(
            blocks[index], store_path, frame, tuple(int(i) for i in index), region,
            dask_key_name=f"denoise-write-{frame}-{key}-{'-'.join(map(str, index))}",
        ))
    return writes


def denoise_to_store(
    store_path: str | os.PathLike,
    frame: str,
    model: UNet | ModelRef | str | os.PathLike,
    config: DenoiseConfig | None = None,
    *,
    stats: FrameStats | None = None,
    use_mask: bool = True,
    force: bool = False,
    apertures: pd.DataFrame | None = None,
):
    """Build (do not run) the resumable write of ``frames/<frame>/denoised``.

    Eager, small steps here: open the frame's ``image`` (and ``mask``), compute the frame
    statistics if not given, validate the chunks, create or reuse ``denoised``
    (:func:`pausdenoise.store.create_output_array`: float32, NaN fill, the image's chunks and
    shards; the dask chunks are the store's write unit, so each task owns whole chunks or
    shards) and ``denoised_done`` (uint8, one element per dask chunk, each element its own
    zarr chunk so concurrent flag writes never share an object), and read which
    chunks are done. A stored ``denoise_key`` different from this run's (other model,
    statistics, halo, precision or masked policy) or ``force`` resets the flags before the
    new key is recorded.

    Parameters
    ----------
    store_path : str or os.PathLike
        The pausdenoise store.
    frame : str
        Frame id in the store.
    model : UNet, ModelRef or path
        The network; a path is a checkpoint (see :class:`ModelRef`).
    config : DenoiseConfig, optional
        Device, precision, sub-tiling, halo override, masked-pixel policy.
    stats : FrameStats, optional
        Normalisation statistics (ADU); computed from the stored frame when not given
        (:func:`frame_stats_from_dask`).
    use_mask : bool, optional
        Use the frame's ``mask`` array when it has one. Default ``True``.
    force : bool, optional
        Recompute every chunk even if the stored key matches. Default ``False``.
    apertures : pandas.DataFrame, optional
        The frame's catalogue apertures (:data:`pausdenoise.denoise.restore.GEOMETRY_COLUMNS`,
        0-based px, px, radians); needed, and only used, with ``config.restore_catalogue``
        (:mod:`pausdenoise.denoise.restore`). Empty: nothing to restore on this frame.

    Returns
    -------
    dask.delayed.Delayed
        Computing it writes every chunk not yet done (one task per chunk, each marking its
        flag after the write), sets ``complete=True`` on ``denoised`` at the end, and returns
        the number of chunks written. Combine several frames with ``dask.compute(*ds)``;
        frames using the same model share one model key in the graph. One writer per frame
        at a time (two concurrent runs of the same frame are not coordinated).

    Raises
    ------
    pausdenoise.store.StoreError
        If the frame is missing or its ingest is not complete.
    ChunkingError
        If the store's chunks (its write unit) do not allow seam-free tiling.
    ValueError
        If ``config.restore_catalogue`` is on and ``apertures`` is None.
    """
    config = config or DenoiseConfig()
    if config.restore_catalogue and apertures is None:
        raise ValueError(f"denoise {frame}: restore_catalogue needs the frame's catalogue "
                         "apertures (none given)")
    store_path = str(store_path)
    ref = as_model_ref(model)
    halo = resolve_halo(ref, config)
    group, image, mask = _open_input(store_path, frame, use_mask)
    overlap = block_overlap(halo, config, ref.size_multiple)  # the map_overlap's depth
    fitted = merge_short_edges(image.chunks, overlap)
    if fitted != image.chunks:  # a short remainder chunk at the frame's edge
        image = image.rechunk(fitted)
    check_chunks(image.chunks, ref.size_multiple, overlap)
    if stats is None:
        stats = frame_stats_from_dask(image, mask)
    restore = (restore_digest(apertures, config.restore_sigma, config.restore_grow)
               if config.restore_catalogue else None)
    key = denoise_key(ref, stats, halo, config, restore)
    flags = _done_flags(group, store_path, frame, image, key, ref, stats, halo, config, force)
    if mask is not None and mask.chunks != image.chunks:
        mask = mask.rechunk(image.chunks)
    den = _map_denoise(image, mask, stats, ref, config, halo,
                       apertures if config.restore_catalogue else None)
    writes = _chunk_writes(den, image.chunks, flags, store_path, frame, key)
    return dask.delayed(_finish, pure=False)(
        writes, store_path, frame, key, dask_key_name=f"denoise-finish-{frame}-{key}"
    )
