"""Generator checkpoints: one safetensors file, JSON metadata in its header, no pickle.

The file holds the generator's ``state_dict`` tensors (weights and batch-norm running
statistics) and, under the header metadata key ``"pausdenoise"``, a JSON document::

    {"format": "pausdenoise-pix2pix-generator", "format_version": 1,
     "generator": {...GeneratorConfig...},
     "normalisation": "single-frame-sky-sigma/...",
     "receptive_field_radius": 69, "halo": 80,
     "weights_sha256": "...",
     "extra": {...anything JSON-serialisable: training config, history, data...}}

(the same key and field names as the N2V checkpoints of :mod:`pausdenoise.n2v.checkpoint`).
:func:`load_generator` rebuilds the network from the stored config and refuses, with a
``ValueError`` that says why, files that are not safetensors, lack the metadata, are of
another format or version, whose tensors do not match the architecture, or whose tensor
bytes do not match the recorded digest (corruption a safetensors parser would accept).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pausdenoise.gan.models import Generator, GeneratorConfig
from pausdenoise.gan.pairs import PAIR_NORMALISATION

CHECKPOINT_FORMAT = "pausdenoise-pix2pix-generator"
CHECKPOINT_VERSION = 1
_META_KEY = "pausdenoise"


def weights_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Hash the tensors' names, dtypes, shapes and bytes (sorted by name) with SHA-256.

    Parameters
    ----------
    tensors : dict of str to Tensor
        A state dict.

    Returns
    -------
    str
        The 64-character hex digest.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_generator(
    path: str | Path, generator: Generator, *, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``generator`` to ``path`` (safetensors) with its metadata.

    The file is written under a temporary name and renamed, so a reader never sees half
    a checkpoint.

    Parameters
    ----------
    path : str or Path
        The checkpoint file.
    generator : Generator
        The network whose weights and architecture are saved.
    extra : dict, optional
        More metadata; must be JSON-serialisable (checked before anything is written).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "generator": generator.config.model_dump(),
        "normalisation": PAIR_NORMALISATION,
        "receptive_field_radius": generator.receptive_field_radius(),
        "halo": generator.halo(),
        "weights_sha256": weights_digest(tensors),
        "extra": extra or {},
    }
    text = json.dumps(meta)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: text})
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint's JSON metadata, checked for format, version and normalisation.

    Parameters
    ----------
    path : str or Path
        The checkpoint file.

    Returns
    -------
    dict
        The metadata (architecture, normalisation, halo, weights digest, extra).

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If it is not a readable pausdenoise generator checkpoint of this format version and
        normalisation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {exc}") from exc
    if _META_KEY not in header:
        raise ValueError(f"{path} has no '{_META_KEY}' metadata: not a pausdenoise checkpoint")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path} holds a {fmt!r} checkpoint, not a {CHECKPOINT_FORMAT!r}")
    if meta.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format_version {meta.get('format_version')!r}; this version "
            f"reads format_version {CHECKPOINT_VERSION}"
        )
    if meta.get("normalisation") != PAIR_NORMALISATION:
        raise ValueError(
            f"{path}: trained with normalisation {meta.get('normalisation')!r}, this version "
            f"uses {PAIR_NORMALISATION!r}"
        )
    return meta


def load_generator(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Generator, dict[str, Any]]:
    """Rebuild the generator of a checkpoint, in ``eval()`` mode.

    Parameters
    ----------
    path : str or Path
        The checkpoint file.
    device : str or torch.device, optional
        Where to put the generator. Default ``"cpu"``.

    Returns
    -------
    generator : Generator
        The network with the saved weights.
    metadata : dict
        As :func:`read_metadata`.

    Raises
    ------
    ValueError
        If the metadata or the tensors do not match the architecture, or the weights do not
        match their recorded digest.
    """
    meta = read_metadata(path)
    try:
        config = GeneratorConfig.model_validate(meta.get("generator"))
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid generator config in metadata: {exc}") from exc
    generator = Generator(config)
    tensors = load_file(str(path), device="cpu")
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: tensors do not match the architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for k, v in expected.items():
        if tensors[k].shape != v.shape or tensors[k].dtype != v.dtype:
            raise ValueError(
                f"{path}: tensor {k!r} is {tuple(tensors[k].shape)} {tensors[k].dtype}, "
                f"the architecture needs {tuple(v.shape)} {v.dtype}"
            )
    if weights_digest(tensors) != meta.get("weights_sha256"):
        raise ValueError(f"{path}: tensor bytes do not match the recorded weights_sha256")
    generator.load_state_dict(tensors, strict=True)
    return generator.to(device).eval(), meta
