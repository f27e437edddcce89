"""The Zarr v3 survey store: layout, writers, and lazy readers (dask, xarray, pandas).

Layout
------
::

    <store>.zarr/                      root group, attrs {"pausdenoise_layout": 1}
      frames/                          group
        <frame>/                       one group per (exposure, CCD), frame = "EEEEEEEE_CC"
          image     float32 (ny, nx)   ADU, sky not subtracted
          mask      uint8   (ny, nx)   0 = good, bits of pausdenoise.maskbits.MaskBit
          ivar      float32 (ny, nx)   optional inverse variance, 1/ADU²
          truth     float32 (ny, nx)   optional noiseless image (simulation), ADU
          denoised  float32 (ny, nx)   written by the denoise stage, ADU
          fits_header uint8 (n,)       optional: the source FITS header, 80-char ASCII cards
        attrs: expnum, ccd, band, exptime [s], zp [µJy/ADU], zp_err [µJy/ADU],
               gain [e⁻/ADU], rdnoise [e⁻], saturate [ADU], ny, nx,
               wcs (FITS header text of the WCS cards), source_image, source_mask,
               source_weight, source_truth, source_fingerprint, extra header values
               (e.g. mjd_obs, airmass), and complete (bool, set last)

Why one group per frame
-----------------------
- **Frames of different sizes** live side by side (PAUCam CCDs are 4096 × 2048, generic
  inputs such as DECam cut-outs are not); a single 4-D array would force one shape.
- **Independent parallel writes**: every frame is written by exactly one task, which owns
  all chunks of its arrays, so no two writers ever touch the same chunk or shard and no
  lock is needed. Zarr v3 groups do not list their children in metadata, so creating frame
  groups concurrently does not race on a parent document.
- **Per-frame completion and resume**: ``complete`` is written last (after the arrays and the
  other attributes). A frame without ``complete == True`` is treated as absent by readers
  (``complete_only=True``) and is rewritten by the next ingest; a complete frame whose
  ``source_fingerprint`` matches its input is skipped.

Storage choices
---------------
- Float arrays: Blosc(zstd, clevel 5, *byte* shuffle). Measured on 2048² float32 sky noise
  (σ = 33 ADU), ratio 1.52 against 1.34 for bitshuffle and 1.23 for zarr's default zstd,
  with faster decompression (~2.5 GB/s per core); noisy CCD pixels compress poorly whatever
  the codec, byte shuffle exploits the nearly constant exponent bytes. Fill value NaN (an
  unwritten chunk reads as "no data"); all chunks are written even when entirely NaN so
  NaN payloads survive bit-exactly.
- Masks (uint8): Blosc(zstd, bitshuffle): sparse bit masks compress ~1300× (vs ~900× for
  plain zstd). Fill value 0; all-zero chunks are not stored.
- Chunks default to (1024, 1024) (1 Mpx, large enough for ``map_overlap``, see
  ``docs/design.md``), clipped to the frame shape.
- Optional sharding (``shards=``, a multiple of the chunks; clipped to the smallest multiple
  of the chunks covering the frame). A shard is rewritten whole, so **parallel writers must
  write whole shards**: ingest writes each frame in one task (always safe); a dask writer
  (e.g. the denoise stage) must use dask chunks that are multiples of :func:`write_chunks`
  — :func:`open_frame` returns exactly those, and :func:`store_dask` checks it.

Consolidated metadata is *not* used: frames are added, rewritten and completed by
independent writers, and a consolidated snapshot at the root would hide later changes from
readers that trust it. :func:`exposure_table` instead fetches the frame groups' metadata
concurrently (zarr's async ``members``), one small document per frame.

Imports are kept light: at module level only numpy and zarr; dask, pandas, xarray and
astropy are imported by the functions that use them, so a process that only reads a
store's arrays (e.g. a task on a worker) does not import them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pausdenoise.errors import StoreError

if TYPE_CHECKING:  # heavy imports only where used: dask workers import this module
    import dask.array as da
    import pandas as pd
    import xarray as xr

__all__ = [
    "ARRAY_DTYPES",
    "DEFAULT_CHUNKS",
    "FRAMES_GROUP",
    "FRAME_ATTRS",
    "LAYOUT_KEY",
    "LAYOUT_VERSION",
    "MISSING_MASK_VALUE",
    "StoreError",
    "clip_chunks",
    "create_array",
    "create_output_array",
    "exposure_table",
    "frame_arrays",
    "frame_attrs",
    "frame_gain",
    "frame_id",
    "frame_wcs",
    "frames_by_shape",
    "init_store",
    "is_complete",
    "list_frames",
    "mark_incomplete",
    "open_dataset",
    "open_frame",
    "open_store",
    "parse_frame_id",
    "read_header_text",
    "store_dask",
    "update_frame_attrs",
    "write_chunks",
    "write_frame",
]

LAYOUT_KEY = "pausdenoise_layout"
LAYOUT_VERSION = 1
FRAMES_GROUP = "frames"
DEFAULT_CHUNKS: tuple[int, int] = (1024, 1024)
DEFAULT_CLEVEL = 5

#: dtype of the standard per-frame arrays; other names keep the dtype they are given.
ARRAY_DTYPES: dict[str, np.dtype] = {
    "image": np.dtype("float32"),
    "mask": np.dtype("uint8"),
    "ivar": np.dtype("float32"),
    "truth": np.dtype("float32"),
    "denoised": np.dtype("float32"),
    "fits_header": np.dtype("uint8"),
}

#: Attributes every frame written by ingest carries (others may be added), in table order.
FRAME_ATTRS: tuple[str, ...] = (
    "expnum",
    "ccd",
    "band",
    "exptime",
    "zp",
    "zp_err",
    "gain",
    "rdnoise",
    "saturate",
    "ny",
    "nx",
    "wcs",
    "source_image",
    "source_mask",
    "source_weight",
    "source_truth",
    "source_fingerprint",
    "complete",
)

#: Value :func:`open_dataset` gives a missing (exposure, ccd) combination of an integer
#: array such as the mask: every bit set, i.e. unusable.
MISSING_MASK_VALUE = 255

PathLike = str | os.PathLike[str]
StoreLike = PathLike | zarr.Group
AccessMode = Literal["r", "r+", "a", "w"]


# --------------------------------------------------------------------------- naming


def frame_id(expnum: int, ccd: int) -> str:
    """Name the frame group of exposure ``expnum`` and CCD ``ccd``.

    Parameters
    ----------
    expnum : int
        Exposure number (non-negative, < 10**8).
    ccd : int
        CCD number (PAUCam: 1-based, 1..18; any non-negative integer < 100).

    Returns
    -------
    str
        ``f"{expnum:08d}_{ccd:02d}"``; sorts in (expnum, ccd) order.

    Raises
    ------
    ValueError
        If ``expnum`` or ``ccd`` is out of range.
    """
    expnum, ccd = int(expnum), int(ccd)
    if not (0 <= expnum < 10**8 and 0 <= ccd < 100):
        raise ValueError(f"expnum {expnum} / ccd {ccd} out of range for a frame id")
    return f"{expnum:08d}_{ccd:02d}"


def parse_frame_id(frame: str) -> tuple[int, int]:
    """Invert :func:`frame_id`: ``"00012345_07"`` → ``(12345, 7)``.

    Parameters
    ----------
    frame : str
        A frame id.

    Returns
    -------
    tuple of (int, int)
        ``(expnum, ccd)``.

    Raises
    ------
    ValueError
        If ``frame`` is not a frame id.
    """
    try:
        e, c = frame.split("_")
        return int(e), int(c)
    except ValueError:
        raise ValueError(f"not a frame id: {frame!r}") from None


# --------------------------------------------------------------------------- opening


def _zarr_open(path: PathLike, mode: str) -> zarr.Group:
    return zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)


def init_store(path: PathLike, *, overwrite: bool = False) -> zarr.Group:
    """Create (or validate) a survey store.

    Parameters
    ----------
    path : str or os.PathLike
        Location of the store (a directory ``*.zarr`` or any zarr store URL).
    overwrite : bool
        Delete whatever is at ``path`` first.

    Returns
    -------
    zarr.Group
        The root group, writable, with attrs ``{"pausdenoise_layout": 1}`` and an empty
        (or existing) ``frames`` group.

    Raises
    ------
    StoreError
        When ``path`` holds a non-empty zarr group that is not a store of this layout
        version.
    """
    if overwrite:
        root = _zarr_open(path, "w")
    else:
        root = _zarr_open(path, "a")
        if LAYOUT_KEY in root.attrs:
            _check_layout(root, path)
        elif len(list(root.keys())) > 0:
            raise StoreError(f"{path}: a non-empty zarr group that is not a pausdenoise store")
    if LAYOUT_KEY not in root.attrs:
        root.update_attributes({LAYOUT_KEY: LAYOUT_VERSION})
    if FRAMES_GROUP not in root:
        root.create_group(FRAMES_GROUP)
    return root


def _check_layout(root: zarr.Group, path: Any) -> None:
    version = root.attrs.get(LAYOUT_KEY)
    if version is None:
        raise StoreError(f"{path}: not a pausdenoise store (no {LAYOUT_KEY!r} attribute)")
    if version != LAYOUT_VERSION:
        raise StoreError(
            f"{path}: store layout version {version}, this code reads version {LAYOUT_VERSION}"
        )


def open_store(path: StoreLike, mode: AccessMode = "r") -> zarr.Group:
    """Open a survey store and return its root group.

    Parameters
    ----------
    path : str, os.PathLike or zarr.Group
        Store location; a root group is passed through (after the layout check).
    mode : {"r", "r+", "a", "w"}
        ``"r"`` read only, ``"r+"`` read/write an existing store, ``"a"`` create when
        missing, ``"w"`` create anew (deleting what is there).

    Returns
    -------
    zarr.Group
        The root group.

    Raises
    ------
    StoreError
        When the location exists but is not a store of this layout version.
    FileNotFoundError
        When ``mode`` is ``"r"``/``"r+"`` and nothing is there.
    """
    if isinstance(path, zarr.Group):
        _check_layout(path, path.store_path)
        return path
    if mode == "w":
        return init_store(path, overwrite=True)
    if mode == "a":
        return init_store(path)
    try:
        root = _zarr_open(path, mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"no survey store at {path}") from None
    _check_layout(root, path)
    return root


def _frames(root: zarr.Group) -> zarr.Group:
    try:
        group = root[FRAMES_GROUP]
    except KeyError:
        raise StoreError(f"{root.store_path}: store has no {FRAMES_GROUP!r} group") from None
    assert isinstance(group, zarr.Group)
    return group


def _frame_group(store: StoreLike, frame: str, mode: AccessMode = "r") -> zarr.Group:
    frames = _frames(open_store(store, mode))
    try:
        group = frames[frame]
    except KeyError:
        raise StoreError(f"frame {frame!r} is not in the store") from None
    if not isinstance(group, zarr.Group):
        raise StoreError(f"{FRAMES_GROUP}/{frame} is not a group")
    return group


def _all_frame_groups(store: StoreLike) -> dict[str, zarr.Group]:
    """Return every frame group, metadata fetched concurrently; sorted by name.

    Returns
    -------
    dict of str to zarr.Group
        Frame id → group.
    """
    frames = _frames(open_store(store, "r"))
    found = {
        name: node for name, node in frames.members(max_depth=0) if isinstance(node, zarr.Group)
    }
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------- arrays


def clip_chunks(
    shape: Sequence[int],
    chunks: Sequence[int] = DEFAULT_CHUNKS,
    shards: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Return the chunk and shard shapes actually used for an array of ``shape``.

    Chunks are clipped to the shape. Shards must be a multiple of the (unclipped) chunks;
    they are clipped to the smallest multiple of the clipped chunks that covers the shape,
    so they remain a multiple of the chunks as zarr requires.

    Parameters
    ----------
    shape : sequence of int
        Array shape, ``(ny, nx)`` pixels for images.
    chunks : sequence of int, optional
        Requested chunk shape (two positive integers). Default :data:`DEFAULT_CHUNKS`.
    shards : sequence of int, optional
        Requested shard shape, a multiple of ``chunks``; None for no sharding.

    Returns
    -------
    (chunks, shards)
        ``shards`` is None when no sharding is asked for. Arrays that are not 2-D get one
        chunk along every axis and no sharding.

    Raises
    ------
    ValueError
        If ``chunks`` is not two positive integers or ``shards`` not a multiple of them.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        return tuple(max(1, s) for s in shape), None
    if len(chunks) != 2 or any(int(c) < 1 for c in chunks):
        raise ValueError(f"chunks must be two positive integers, got {chunks}")
    c = tuple(max(1, min(int(ci), si)) for ci, si in zip(chunks, shape, strict=True))
    if shards is None:
        return c, None
    if len(shards) != 2 or any(int(s) % int(ci) for s, ci in zip(shards, chunks, strict=True)):
        raise ValueError(f"shards {tuple(shards)} must be a multiple of the chunks {tuple(chunks)}")
    s = tuple(
        min(int(si), math.ceil(n / ci) * ci) for si, n, ci in zip(shards, shape, c, strict=True)
    )
    return c, s


def _compressors(dtype: np.dtype, clevel: int) -> list[BloscCodec]:
    if not 0 <= clevel <= 9:
        raise ValueError(f"compression level must be 0..9, got {clevel}")
    if dtype.kind == "f":
        return [BloscCodec(cname="zstd", clevel=clevel, shuffle="shuffle")]
    return [BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle")]


def create_array(
    group: zarr.Group,
    name: str,
    shape: Sequence[int],
    dtype: Any = None,
    *,
    chunks: Sequence[int] = DEFAULT_CHUNKS,
    shards: Sequence[int] | None = None,
    clevel: int = DEFAULT_CLEVEL,
    overwrite: bool = True,
) -> zarr.Array:
    """Create one array of a frame group with the store's codecs and chunking rules.

    Parameters
    ----------
    group : zarr.Group
        The frame group (writable).
    name : str
        Array name; the standard names (``image``, ``mask``, ``ivar``, ``truth``,
        ``denoised``, ``fits_header``) get their dtype from :data:`ARRAY_DTYPES`.
    shape : sequence of int
        ``(ny, nx)`` for images (pixels).
    dtype : numpy dtype, optional
        Required for non-standard names; must match :data:`ARRAY_DTYPES` for standard ones.
    chunks, shards : sequence of int, optional
        See :func:`clip_chunks`.
    clevel : int
        Blosc/zstd compression level, 0..9.
    overwrite : bool
        Replace an existing array of that name.

    Returns
    -------
    zarr.Array
        Empty array: float fill value NaN (all chunks written), integer fill value 0.

    Raises
    ------
    ValueError
        Without a dtype for a non-standard name, with the wrong dtype for a standard one, or
        with invalid chunks, shards or compression level.
    """
    expected = ARRAY_DTYPES.get(name)
    dt = np.dtype(dtype) if dtype is not None else expected
    if dt is None:
        raise ValueError(f"array {name!r}: give a dtype (not a standard array name)")
    if expected is not None and dt != expected:
        raise ValueError(f"array {name!r} must be {expected}, got {dt}")
    c, s = clip_chunks(shape, chunks, shards)
    is_float = dt.kind == "f"
    return group.create_array(
        name,
        shape=tuple(int(n) for n in shape),
        dtype=dt,
        chunks=c,
        shards=s,
        compressors=_compressors(dt, clevel),
        fill_value=float("nan") if is_float else 0,
        dimension_names=("y", "x") if len(shape) == 2 else None,
        overwrite=overwrite,
        config={"write_empty_chunks": is_float},
    )


def write_chunks(store: StoreLike, frame: str, name: str = "image") -> tuple[int, ...]:
    """Return the smallest block a parallel writer may own: the shard shape, else the chunks.

    Dask arrays written concurrently into this array must have chunks that are multiples of
    this shape (the last chunk along an axis may be shorter), otherwise two tasks rewrite
    the same shard and one update is lost.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    frame : str
        Frame id.
    name : str, optional
        Array name. Default ``"image"``.

    Returns
    -------
    tuple of int
        The write unit, pixels per axis.
    """
    arr = _get_array(store, frame, name)
    return tuple(arr.shards or arr.chunks)


def _get_array(store: StoreLike, frame: str, name: str) -> zarr.Array:
    group = _frame_group(store, frame)
    try:
        arr = group[name]
    except KeyError:
        raise StoreError(f"frame {frame!r} has no array {name!r}") from None
    assert isinstance(arr, zarr.Array)
    return arr


def create_output_array(
    store: StoreLike,
    frame: str,
    name: str,
    like: str = "image",
    *,
    dtype: Any = None,
    overwrite: bool = True,
) -> zarr.Array:
    """Create array ``name`` in ``frame`` with the shape, chunks, shards and codecs of ``like``.

    For later stages (denoise writes ``denoised`` like ``image``). The frame's ``complete``
    flag is left untouched: it describes the ingest products.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store (opened read/write).
    frame : str
        Frame id.
    name : str
        Name of the new array.
    like : str
        Existing array to copy the layout from.
    dtype : numpy dtype, optional
        Defaults to :data:`ARRAY_DTYPES` for standard names, else the dtype of ``like``.
    overwrite : bool
        Replace an existing array called ``name``.

    Returns
    -------
    zarr.Array
        The empty array (float fill value NaN, integer fill value 0).

    Raises
    ------
    StoreError
        If the frame or its array ``like`` is missing.
    """
    group = _frame_group(store, frame, "r+")
    try:
        ref = group[like]
    except KeyError:
        raise StoreError(f"frame {frame!r} has no array {like!r} to copy the layout of") from None
    assert isinstance(ref, zarr.Array)
    if dtype is None:
        dtype = ARRAY_DTYPES.get(name, ref.dtype)
    dt = np.dtype(dtype)
    is_float = dt.kind == "f"
    clevel = _clevel_of(ref)
    return group.create_array(
        name,
        shape=ref.shape,
        dtype=dt,
        chunks=ref.chunks,
        shards=ref.shards,
        compressors=_compressors(dt, clevel),
        fill_value=float("nan") if is_float else 0,
        dimension_names=ref.metadata.dimension_names,
        overwrite=overwrite,
        config={"write_empty_chunks": is_float},
    )


def _clevel_of(arr: zarr.Array) -> int:
    for codec in arr.compressors:
        level = getattr(codec, "clevel", None)
        if level is not None:
            return int(level)
    return DEFAULT_CLEVEL


def store_dask(
    darr: da.Array,
    store: StoreLike,
    frame: str,
    name: str,
    *,
    like: str = "image",
    compute: bool = True,
) -> Any:
    """Write a 2-D dask array into ``frame/name`` (created like ``like``), in parallel.

    Checks that every dask chunk boundary falls on a boundary of :func:`write_chunks`
    (the shard-alignment rule) before any task runs.

    Parameters
    ----------
    darr : dask.array.Array
        The data, shape ``(ny, nx)`` of the frame.
    store : path or zarr.Group
        The survey store (opened read/write).
    frame : str
        Frame id.
    name : str
        Name of the array to write (created or replaced).
    like : str, optional
        Existing array to copy the layout from. Default ``"image"``.
    compute : bool, optional
        Write now; else return the delayed store. Default True.

    Returns
    -------
    None or dask.delayed.Delayed
        The delayed store when ``compute`` is False.

    Raises
    ------
    StoreError
        If the shape differs from the frame's or the dask chunks are not aligned with the
        write unit.
    """
    import dask.array as da  # dask kept off the store's light import path

    arr = create_output_array(store, frame, name, like=like, dtype=darr.dtype)
    if tuple(darr.shape) != tuple(arr.shape):
        raise StoreError(f"{frame}/{name}: dask shape {darr.shape} != store shape {arr.shape}")
    unit = tuple(arr.shards or arr.chunks)
    for axis, (dchunks, u) in enumerate(zip(darr.chunks, unit, strict=True)):
        edges = np.cumsum(dchunks)[:-1]
        if np.any(edges % u):
            raise StoreError(
                f"{frame}/{name}: dask chunks {dchunks} along axis {axis} are not multiples of "
                f"the store's write unit {u} (shard or chunk); rechunk before writing"
            )
    return da.store(darr, arr, lock=False, compute=compute)


# --------------------------------------------------------------------------- writing


def _json_value(v: Any) -> Any:
    """Make an attribute value JSON: numpy scalars → Python, NaN/inf → None.

    Returns
    -------
    object
        The JSON-compatible value.
    """
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, tuple):
        return [_json_value(x) for x in v]
    return v


def write_frame(
    store: StoreLike,
    frame: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    *,
    chunks: Sequence[int] = DEFAULT_CHUNKS,
    shards: Sequence[int] | None = None,
    clevel: int = DEFAULT_CLEVEL,
    drop_other_arrays: bool = True,
) -> zarr.Group:
    """Write one frame: arrays first, then attributes, then ``complete=True`` last.

    An existing frame of that name is first marked incomplete, so an interruption at any
    point leaves a frame that readers skip and the next ingest redoes.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store; created when missing.
    frame : str
        Frame id (:func:`frame_id`).
    arrays : mapping of str to numpy.ndarray
        At least ``image`` (2-D); every 2-D array must have the image's shape. Standard
        names are cast to their dtype from :data:`ARRAY_DTYPES` (float32 casts of float32
        data are bit-exact; byte order becomes native).
    attrs : mapping
        Frame attributes (JSON values; NaN/inf become null). ``ny``/``nx`` are set from
        the image and ``complete`` is managed here.
    chunks, shards : sequence of int, optional
        See :func:`create_array`.
    clevel : int, optional
        See :func:`create_array`.
    drop_other_arrays : bool
        Delete arrays of an existing frame that are not in ``arrays`` (e.g. a ``denoised``
        made from a previous version of the source).

    Returns
    -------
    zarr.Group
        The frame group.

    Raises
    ------
    ValueError
        Without a 2-D ``image``, or when a 2-D array has another shape.
    StoreError
        If ``frames/<frame>`` exists and is not a group.
    """
    if "image" not in arrays:
        raise ValueError(f"frame {frame}: arrays must include 'image'")
    image = np.asarray(arrays["image"])
    if image.ndim != 2:
        raise ValueError(f"frame {frame}: image must be 2-D, got shape {image.shape}")
    for name, arr in arrays.items():
        if np.ndim(arr) == 2 and np.shape(arr) != image.shape:
            raise ValueError(
                f"frame {frame}: array {name!r} has shape {np.shape(arr)}, image has {image.shape}"
            )
    frames = _frames(open_store(store, "a"))
    if frame in frames:
        group = frames[frame]
        if not isinstance(group, zarr.Group):
            raise StoreError(f"{FRAMES_GROUP}/{frame} exists and is not a group")
        group.update_attributes({"complete": False})
    else:
        group = frames.create_group(frame, attributes={"complete": False})

    for name, data in arrays.items():
        data = np.asarray(data)
        dt = ARRAY_DTYPES.get(name, data.dtype.newbyteorder("="))
        data = np.ascontiguousarray(data, dtype=dt)
        arr = create_array(group, name, data.shape, dt, chunks=chunks, shards=shards, clevel=clevel)
        arr[...] = data
    if drop_other_arrays:
        for name in list(group.array_keys()):
            if name not in arrays:
                del group[name]

    clean = {k: _json_value(v) for k, v in attrs.items() if k != "complete"}
    clean["ny"], clean["nx"] = int(image.shape[0]), int(image.shape[1])
    clean["complete"] = False
    group.attrs.put(clean)
    group.update_attributes({"complete": True})
    return group


def mark_incomplete(store: StoreLike, frame: str) -> None:
    """Set ``complete=False`` on a frame (it will be redone by the next ingest).

    Parameters
    ----------
    store : path or zarr.Group
        The survey store (opened read/write).
    frame : str
        Frame id.
    """
    _frame_group(store, frame, "r+").update_attributes({"complete": False})


def update_frame_attrs(store: StoreLike, frame: str, updates: Mapping[str, Any]) -> None:
    """Set some attributes of a frame, keeping the others.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store (opened read/write).
    frame : str
        Frame id.
    updates : mapping
        Attribute → value (units as in the module docstring; None and NaN are stored as
        JSON null). ``complete`` cannot be set here.
    """
    clean = {k: _json_value(v) for k, v in updates.items() if k != "complete"}
    if clean:
        _frame_group(store, frame, "r+").update_attributes(clean)


# --------------------------------------------------------------------------- reading


def is_complete(store: StoreLike, frame: str) -> bool:
    """Tell whether ``frame`` exists and its ``complete`` attribute is True.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    frame : str
        Frame id.

    Returns
    -------
    bool
        False for a missing frame.
    """
    try:
        return _frame_group(store, frame).attrs.get("complete") is True
    except StoreError:
        return False


def frame_attrs(store: StoreLike, frame: str) -> dict[str, Any]:
    """Return all attributes of one frame as a plain dict.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    frame : str
        Frame id.

    Returns
    -------
    dict
        The attributes (units in the module docstring).
    """
    return _frame_group(store, frame).attrs.asdict()


def frame_arrays(store: StoreLike, frame: str) -> list[str]:
    """Return the names of the arrays a frame holds, sorted.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    frame : str
        Frame id.

    Returns
    -------
    list of str
        The array names.
    """
    return sorted(_frame_group(store, frame).array_keys())


def list_frames(store: StoreLike, complete_only: bool = True) -> list[str]:
    """Return the frame ids in the store, sorted (i.e. by expnum, then ccd).

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    complete_only : bool
        Leave out frames whose ``complete`` attribute is not True (half-written ones).

    Returns
    -------
    list of str
        The frame ids.
    """
    groups = _all_frame_groups(store)
    return [
        name for name, g in groups.items() if not complete_only or g.attrs.get("complete") is True
    ]


_INT_COLUMNS = ("expnum", "ccd", "ny", "nx")
_FLOAT_COLUMNS = ("exptime", "zp", "zp_err", "gain", "rdnoise", "saturate")


def exposure_table(store: StoreLike, complete_only: bool = True) -> pd.DataFrame:
    """One row per frame with its attributes.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    complete_only : bool
        Only frames whose ``complete`` attribute is True (the default).

    Returns
    -------
    pandas.DataFrame
        Columns ``frame`` then :data:`FRAME_ATTRS` then any extra attributes (sorted),
        one row per frame sorted by frame id. ``expnum``, ``ccd``, ``ny``, ``nx`` are
        int64; ``exptime``, ``zp``, ``zp_err``, ``gain``, ``rdnoise``, ``saturate`` are
        float64 (missing → NaN); the rest as stored (missing → pandas' missing value).
    """
    import pandas as pd  # pandas kept off the store's light import path

    rows = []
    for name, g in _all_frame_groups(store).items():
        a = g.attrs.asdict()
        if complete_only and a.get("complete") is not True:
            continue
        rows.append({"frame": name, **a})
    extras = sorted({k for r in rows for k in r} - set(FRAME_ATTRS) - {"frame"})
    columns = ["frame", *FRAME_ATTRS, *extras]
    df = pd.DataFrame(rows, columns=columns)
    for col in _INT_COLUMNS:
        if df[col].isna().any():
            df[col] = pd.to_numeric(df[col]).astype("Int64")
        else:
            df[col] = df[col].astype("int64")
    for col in _FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df["complete"] = df["complete"].fillna(False).astype(bool)
    return df.reset_index(drop=True)


def read_header_text(store: StoreLike, frame: str) -> str:
    """Return the source FITS header of a frame (80-character cards, as ingested).

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    frame : str
        Frame id.

    Returns
    -------
    str
        The header text, ASCII.
    """
    arr = _get_array(store, frame, "fits_header")
    return bytes(np.asarray(arr[...], dtype=np.uint8)).decode("ascii")


def frame_wcs(store: StoreLike, frame: str) -> Any:
    """Return the frame's WCS as an :class:`astropy.wcs.WCS` (pixel coordinates 0-based).

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    frame : str
        Frame id.

    Returns
    -------
    astropy.wcs.WCS
        The WCS built from the frame's ``wcs`` attribute.

    Raises
    ------
    StoreError
        If the frame has no WCS.
    """
    from astropy.io import fits  # astropy kept off the store's light import path
    from astropy.wcs import WCS, FITSFixedWarning  # astropy: as above

    text = frame_attrs(store, frame).get("wcs")
    if not text:
        raise StoreError(f"frame {frame!r} has no WCS")
    with warnings.catch_warnings():  # e.g. "set DATE-OBS from MJD-OBS": harmless fix-ups
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.Header.fromstring(text))


def open_frame(
    store: StoreLike,
    frame: str,
    name: str = "image",
    chunks: Sequence[int] | None = None,
) -> da.Array:
    """One frame's array as a lazy dask array.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    frame : str
        Frame id.
    name : str
        ``image``, ``mask``, ``ivar``, ``truth``, ``denoised`` …
    chunks : sequence of int, optional
        Dask chunks; by default the store's write unit (:func:`write_chunks`: the zarr
        chunks, or the shards of a sharded array), so results computed block-wise can be
        written back in parallel without shard races.

    Returns
    -------
    dask.array.Array
        Shape ``(ny, nx)``, dtype as stored, nothing read yet.
    """
    import dask.array as da  # dask kept off the store's light import path

    arr = _get_array(store, frame, name)
    use = tuple(chunks) if chunks is not None else tuple(arr.shards or arr.chunks)
    return da.from_zarr(arr, chunks=use, name=f"{name}-{frame}-{_token(arr)}")


def _token(arr: zarr.Array) -> str:
    """Return a dask token of an array's location, shape, dtype and chunks.

    Returns
    -------
    str
        The token.
    """
    from dask.base import tokenize  # dask kept off the store's light import path

    return tokenize(str(arr.store_path), arr.shape, str(arr.dtype), arr.chunks)


def frames_by_shape(
    store: StoreLike, complete_only: bool = True
) -> dict[tuple[int, int], list[str]]:
    """Group the frame ids by image shape ``(ny, nx)``, largest group first.

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    complete_only : bool, optional
        Leave out incomplete frames. Default True.

    Returns
    -------
    dict of (int, int) to list of str
        Shape in pixels → frame ids.
    """
    table = exposure_table(store, complete_only=complete_only)
    groups: dict[tuple[int, int], list[str]] = {}
    for frame, ny, nx in zip(table["frame"], table["ny"], table["nx"], strict=True):
        groups.setdefault((int(ny), int(nx)), []).append(frame)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def _frames_of_shape(
    store: StoreLike, shape: tuple[int, int] | None, complete_only: bool
) -> tuple[pd.DataFrame, tuple[int, int]]:
    """Restrict the exposure table to the frames of one shape.

    Returns
    -------
    tuple of (pandas.DataFrame, (int, int))
        The table and the shape.

    Raises
    ------
    StoreError
        Without frames, with several shapes and no ``shape``, or with none of ``shape``.
    """
    table = exposure_table(store, complete_only=complete_only)
    if table.empty:
        raise StoreError("no (complete) frames in the store")
    shapes = sorted({(int(a), int(b)) for a, b in zip(table["ny"], table["nx"], strict=True)})
    if shape is None:
        if len(shapes) > 1:
            counts = table.groupby(["ny", "nx"]).size().to_dict()
            raise StoreError(
                f"frames of several shapes {counts}; pass shape=(ny, nx) to open_dataset "
                "(see frames_by_shape)"
            )
        shape = shapes[0]
    shape = (int(shape[0]), int(shape[1]))
    table = table[(table["ny"] == shape[0]) & (table["nx"] == shape[1])]
    if table.empty:
        raise StoreError(f"no frames of shape {shape}; shapes present: {shapes}")
    return table, shape


def _stacked_variable(
    var: str,
    frames: zarr.Group,
    by_key: Mapping[tuple[int, int], Any],
    exposures: np.ndarray,
    ccds: np.ndarray,
    shape: tuple[int, int],
) -> da.Array:
    """Stack array ``var`` of every (exposure, ccd) into one lazy 4-D dask array, gaps filled.

    Returns
    -------
    dask.array.Array
        Shape ``(n_exposures, n_ccds, ny, nx)``.

    Raises
    ------
    StoreError
        If no frame has the array.
    """
    import dask.array as da  # dask kept off the store's light import path

    arrays: dict[tuple[int, int], zarr.Array] = {}
    for key, row in by_key.items():
        g = frames[row.frame]
        if var in g:
            arrays[key] = g[var]
    if not arrays:
        raise StoreError(f"no frame of shape {shape} has an array {var!r}")
    ref = next(iter(arrays.values()))
    dtype = ref.dtype
    chunks = tuple(ref.shards or ref.chunks)
    fill = np.nan if dtype.kind == "f" else MISSING_MASK_VALUE
    rows = []
    for e in exposures:
        row_arrays = []
        for c in ccds:
            key = (int(e), int(c))
            if key in arrays:
                frame = by_key[key].frame
                row_arrays.append(
                    da.from_zarr(
                        arrays[key], chunks=chunks, name=f"{var}-{frame}-{_token(arrays[key])}"
                    )
                )
            else:
                row_arrays.append(da.full(shape, fill, dtype=dtype, chunks=chunks))
        rows.append(da.stack(row_arrays))
    return da.stack(rows)


def _attr_grid(
    by_key: Mapping[tuple[int, int], Any],
    exposures: np.ndarray,
    ccds: np.ndarray,
    col: str,
    missing: Any,
    dtype: Any,
) -> np.ndarray:
    """Tabulate attribute ``col`` of every (exposure, ccd) frame; ``missing`` where absent or NaN.

    Returns
    -------
    ndarray
        Shape ``(n_exposures, n_ccds)``.
    """
    out = np.full((len(exposures), len(ccds)), missing, dtype=dtype)
    e_index = {int(e): i for i, e in enumerate(exposures)}
    c_index = {int(c): j for j, c in enumerate(ccds)}
    for (e, c), row in by_key.items():
        value = getattr(row, col)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[e_index[e], c_index[c]] = value
    return out


def _dataset_coords(
    by_key: Mapping[tuple[int, int], Any], exposures: np.ndarray, ccds: np.ndarray
) -> dict[str, Any]:
    """Build the coordinates of :func:`open_dataset`'s dataset (see its Returns section).

    Returns
    -------
    dict
        Name → coordinate (values or ``(dims, values)``).
    """

    def grid(col: str, missing: Any, dtype: Any) -> np.ndarray:
        return _attr_grid(by_key, exposures, ccds, col, missing, dtype)

    band_grid = grid("band", "", object)
    per_exposure = []
    for i in range(len(exposures)):
        present = {b for b in band_grid[i] if b != ""}
        per_exposure.append(present.pop() if len(present) == 1 else None)
    coords: dict[str, Any] = {
        "exposure": exposures,
        "ccd": ccds,
        "frame": (("exposure", "ccd"), grid("frame", "", object).astype(str)),
    }
    if all(b is not None for b in per_exposure):
        coords["band"] = ("exposure", np.array(per_exposure, dtype=str))
    else:
        coords["band"] = (("exposure", "ccd"), band_grid.astype(str))
    for col in ("zp", "zp_err", "gain", "rdnoise", "exptime"):
        coords[col] = (("exposure", "ccd"), grid(col, np.nan, np.float64))
    return coords


def open_dataset(
    store: StoreLike,
    name: str | Sequence[str] = "image",
    *,
    shape: tuple[int, int] | None = None,
    complete_only: bool = True,
) -> xr.Dataset:
    """Frames of one shape as a lazy 4-D :class:`xarray.Dataset` (exposure, ccd, y, x).

    Parameters
    ----------
    store : path or zarr.Group
        The survey store.
    name : str or sequence of str
        The array(s) to load, one data variable each (e.g. ``("image", "mask")``).
    shape : (int, int), optional
        Use only frames of this ``(ny, nx)``. Required when the store holds frames of
        several shapes (a :class:`StoreError` lists them; see :func:`frames_by_shape`).
    complete_only : bool
        Leave out incomplete frames.

    Returns
    -------
    xarray.Dataset
        Coordinates ``exposure`` (expnum, int64, sorted), ``ccd`` (int64, sorted),
        ``frame`` (exposure, ccd; "" where missing), ``band`` — dims ``(exposure,)`` when
        every exposure has one band, else ``(exposure, ccd)`` (PAUCam puts a different
        narrow band on each CCD of an exposure) — and ``zp``, ``zp_err``, ``gain``,
        ``rdnoise``, ``exptime`` on ``(exposure, ccd)`` (NaN where missing). A missing
        (exposure, ccd) combination, or a frame lacking the array, is filled lazily with
        NaN (float arrays) or :data:`MISSING_MASK_VALUE` (integer arrays).
    """
    import xarray as xr  # xarray kept off the store's light import path

    names = [name] if isinstance(name, str) else list(name)
    table, shape = _frames_of_shape(store, shape, complete_only)
    frames = _frames(open_store(store, "r"))
    exposures = np.array(sorted(table["expnum"].unique()), dtype=np.int64)
    ccds = np.array(sorted(table["ccd"].unique()), dtype=np.int64)
    by_key = {(int(r.expnum), int(r.ccd)): r for r in table.itertuples(index=False)}

    data_vars: dict[str, Any] = {
        var: (("exposure", "ccd", "y", "x"),
              _stacked_variable(var, frames, by_key, exposures, ccds, shape))
        for var in names
    }
    coords = _dataset_coords(by_key, exposures, ccds)
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs[LAYOUT_KEY] = LAYOUT_VERSION
    return ds


def frame_gain(attrs: dict[str, Any], frame: str) -> float:
    """Return a frame's gain in e⁻/ADU from its store attributes.

    Parameters
    ----------
    attrs : dict
        The frame group's attributes (``gain`` in e⁻/ADU, from the header or the ingest's
        noise fit; ``gain_source`` says which).
    frame : str
        Frame id, for the message.

    Returns
    -------
    float
        The gain, > 0.

    Raises
    ------
    ValueError
        Naming the frame when it has no usable gain (header without GAIN and a failed noise
        fit: ``gain_source`` ``none``), or when its gain is ≤ 0.
    """
    try:
        gain = float(attrs.get("gain", np.nan))
    except (TypeError, ValueError):
        gain = float("nan")
    if np.isfinite(gain) and gain <= 0:
        raise ValueError(
            f"frame {frame} has gain {gain:g} e-/ADU (gain_source="
            f"{attrs.get('gain_source')!r}); a gain must be > 0: correct GAIN in its FITS "
            "header (or remove it to have it fitted) and re-ingest"
        )
    if not np.isfinite(gain):
        raise ValueError(
            f"frame {frame} has no gain (gain={attrs.get('gain')!r}, gain_source="
            f"{attrs.get('gain_source')!r}): its header lacks GAIN and the ingest's noise fit "
            f"failed ({attrs.get('noise_fit_error') or 'no reason recorded'}); give the gain "
            "in the FITS header and re-ingest"
        )
    return gain
