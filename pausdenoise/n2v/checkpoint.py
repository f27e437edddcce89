"""Checkpoints of trained N2V networks: one safetensors file, weights plus JSON metadata.

Format
------
A checkpoint is a single ``.safetensors`` file. The tensors are the network's ``state_dict``
(weights and batch-norm statistics); the safetensors header's ``__metadata__`` holds one entry,
``"pausdenoise"``, a JSON document with:

- ``format`` (``"pausdenoise-n2v"``) and ``format_version``;
- ``unet_config`` (:meth:`UNetConfig.to_dict`), ``normalisation``
  (:data:`pausdenoise.n2v.normalise.NORMALISATION_METHOD`), ``receptive_field_radius`` and
  ``halo`` (recorded for humans; on load they are recomputed from the architecture);
- ``weights_sha256``: a digest of the tensors (names, dtypes, shapes, bytes) that detects
  corrupted weight bytes which a safetensors parser would happily accept;
- ``provenance`` (store path, frames, bands, epochs, seed, … as given by the trainer),
  ``history`` (a summary of the training history), ``versions`` (pausdenoise, torch,
  safetensors, numpy, python) and ``created`` (UTC, ISO 8601).

One file (rather than weights + a side-car JSON) keeps the two from drifting apart and lets
:func:`checkpoint_fingerprint` — the SHA-256 of the file — identify both at once; the header is
plain JSON that any safetensors tool can show.

Loading never executes code: safetensors holds only raw tensors (no pickle), and the JSON is
parsed as data. Every failure raises :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import struct
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file, save_file

from pausdenoise import __version__
from pausdenoise.errors import CheckpointError
from pausdenoise.n2v.normalise import NORMALISATION_METHOD
from pausdenoise.n2v.unet import UNet, UNetConfig

FORMAT = "pausdenoise-n2v"
FORMAT_VERSION = 1
METADATA_KEY = "pausdenoise"
REQUIRED_KEYS = (
    "format",
    "format_version",
    "unet_config",
    "normalisation",
    "receptive_field_radius",
    "halo",
    "weights_sha256",
    "provenance",
    "history",
    "versions",
    "created",
)
KNOWN_NORMALISATIONS = frozenset({NORMALISATION_METHOD})
_MAX_HEADER = 100 * 2**20




def _versions() -> dict[str, str]:
    return {
        "pausdenoise": __version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """Hash the tensors' names, dtypes, shapes and bytes (in name order) with SHA-256.

    Parameters
    ----------
    state : dict of str to Tensor
        A state dict.

    Returns
    -------
    str
        The 64-character hex digest.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """Make ``obj`` JSON-serialisable (dataclasses/pydantic models/paths/numpy scalars).

    Returns
    -------
    Any
        Plain dicts, lists, strings, numbers, booleans and None.
    """
    if hasattr(obj, "model_dump"):
        return _jsonable(obj.model_dump(mode="json"))
    if hasattr(obj, "summary") and callable(obj.summary):
        return _jsonable(obj.summary())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch arrays and scalars
        return _jsonable(obj.tolist())
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return str(obj)


def save_checkpoint(
    path: str | os.PathLike,
    model: UNet,
    *,
    provenance: dict[str, Any] | None = None,
    history: Any = None,
) -> dict[str, Any]:
    """Write ``model`` and its metadata to ``path`` (a ``.safetensors`` file), atomically.

    Parameters
    ----------
    path : path-like
        Destination; written to a temporary name in the same folder then renamed.
    model : UNet
        The network (a DDP/compiled wrapper is unwrapped).
    provenance : dict, optional
        Training provenance: store path, frames, bands, epochs, seed, config, ...
    history : TrainHistory or dict, optional
        Its ``summary()`` is stored.

    Returns
    -------
    dict
        The metadata written.

    Raises
    ------
    TypeError
        If ``model`` (unwrapped) is not a :class:`UNet`.
    """
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, UNet):
        raise TypeError(f"expected a UNet, got {type(model).__name__}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "unet_config": model.config.to_dict(),
        "normalisation": NORMALISATION_METHOD,
        "receptive_field_radius": model.receptive_field_radius(),
        "halo": model.halo(),
        "weights_sha256": weights_digest(state),
        "provenance": _jsonable(provenance or {}),
        "history": _jsonable(history) if history is not None else {},
        "versions": _versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return meta


def _read_header(path: Path) -> dict[str, Any]:
    """Parse the safetensors header without touching the tensors.

    Returns
    -------
    dict
        The header (tensor table and ``__metadata__``).

    Raises
    ------
    CheckpointError
        If the file is missing, too short, a directory or not a safetensors file.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: not a checkpoint (file of {size} bytes is too short)"
                )
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > min(_MAX_HEADER, size - 8):
                raise CheckpointError(
                    f"{path}: not a safetensors checkpoint (header length {n} does not fit a "
                    f"{size}-byte file; a pickle or a corrupt file?)"
                )
            raw = fh.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint (header: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors checkpoint (header is not a mapping)")
    return header


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint's metadata (JSON), checked for the required keys; tensors not read.

    Parameters
    ----------
    path : path-like
        The ``.safetensors`` checkpoint.

    Returns
    -------
    dict
        The metadata: format, architecture, normalisation, halo (px), weights digest,
        provenance, history, versions.

    Raises
    ------
    CheckpointError
        Not a checkpoint, missing keys, or an unknown normalisation method.
    """
    path = Path(path)
    header = _read_header(path)
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(
            f"{path}: a safetensors file but not a pausdenoise checkpoint "
            f"(no '{METADATA_KEY}' metadata)"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: metadata is not of format {FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks keys {missing}")
    if meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {meta['format_version']} is newer than this "
            f"pausdenoise understands ({FORMAT_VERSION}); upgrade pausdenoise"
        )
    if meta["normalisation"] not in KNOWN_NORMALISATIONS:
        raise CheckpointError(
            f"{path}: unknown normalisation method {meta['normalisation']!r} "
            f"(this version knows {sorted(KNOWN_NORMALISATIONS)}); the network would see "
            "inputs on a different scale than it was trained on"
        )
    return meta


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint.

    Verifies the metadata (:func:`read_metadata`), that the file parses as safetensors, that
    the weights digest matches, and that the state dict's names and shapes match the
    architecture in the metadata.

    Parameters
    ----------
    path : path-like
        The ``.safetensors`` checkpoint.

    Returns
    -------
    state : dict of str to Tensor
        The state dict, on the CPU.
    metadata : dict
        As :func:`read_metadata`.

    Raises
    ------
    CheckpointError
        Naming the file, for: not a checkpoint, corrupt or truncated file, architecture
        mismatch, unknown normalisation method.
    """
    path = Path(path)
    meta = read_metadata(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    try:
        cfg = UNetConfig(**meta["unet_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid unet_config in metadata ({exc})") from None
    expected = {k: tuple(v.shape) for k, v in UNet(cfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        shapes = [
            f"{k}: file {got[k]} vs architecture {expected[k]}"
            for k in sorted(set(got) & set(expected))
            if got[k] != expected[k]
        ]
        raise CheckpointError(
            f"{path}: weights do not match the architecture {cfg.to_dict()}: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'…' if len(extra) > 5 else ''}, "
            f"wrong shapes {shapes[:5]}{'…' if len(shapes) > 5 else ''}"
        )
    if weights_digest(state) != meta["weights_sha256"]:
        raise CheckpointError(f"{path}: corrupt checkpoint (weights digest does not match)")
    return state, meta


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Build the network from a checkpoint.

    The returned metadata's ``receptive_field_radius`` and ``halo`` are recomputed from the
    architecture (the stored values are kept under ``stored_receptive_field_radius`` and
    ``stored_halo``; a warning is issued if they differ, i.e. if the field computation changed).

    Parameters
    ----------
    path : path-like
        The ``.safetensors`` checkpoint.
    device : str or torch.device, optional
        Where to put the network. Default ``"cpu"``.

    Returns
    -------
    model : UNet
        In eval mode, on ``device``.
    metadata : dict
        As :func:`read_metadata`, with the recomputed radius and halo (px).

    Raises
    ------
    CheckpointError
        As :func:`load_checkpoint`.
    """
    state, meta = load_checkpoint(path)
    model = UNet(UNetConfig(**meta["unet_config"]))
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    meta = dict(meta)
    meta["stored_receptive_field_radius"] = meta["receptive_field_radius"]
    meta["stored_halo"] = meta["halo"]
    meta["receptive_field_radius"] = model.receptive_field_radius()
    meta["halo"] = model.halo()
    if (meta["receptive_field_radius"], meta["halo"]) != (
        meta["stored_receptive_field_radius"],
        meta["stored_halo"],
    ):
        warnings.warn(
            f"{path}: stored receptive field/halo ({meta['stored_receptive_field_radius']}, "
            f"{meta['stored_halo']}) differ from the recomputed ones "
            f"({meta['receptive_field_radius']}, {meta['halo']}); using the recomputed ones",
            stacklevel=2,
        )
    return model, meta


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """Hash the checkpoint file's bytes with SHA-256: the cache key of denoised outputs.

    Parameters
    ----------
    path : path-like
        The checkpoint file.

    Returns
    -------
    str
        The 64-character hex digest.

    Raises
    ------
    CheckpointError
        If the file does not exist.
    """
    path = Path(path)
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    return h.hexdigest()
