"""The content digests behind fingerprints and resumable-write keys (JSON values, files)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

__all__ = ["file_sha256", "json_digest"]


def json_digest(obj: Any, length: int | None = 16) -> str:
    """SHA-256 hex digest of ``obj`` as canonical JSON (sorted keys; ``str`` for the rest).

    Parameters
    ----------
    obj : Any
        JSON-serialisable data; other objects (paths, numpy scalars) are written with
        ``str``.
    length : int or None, optional
        Number of hex characters kept (16 by default); ``None`` keeps all 64.

    Returns
    -------
    str
        The hex digest, truncated to ``length``.
    """
    text = json.dumps(obj, sort_keys=True, default=str)
    h = hashlib.sha256(text.encode()).hexdigest()
    return h if length is None else h[:length]


def file_sha256(path: os.PathLike[str] | str, blocksize: int = 1 << 22) -> str:
    """Return the sha256 of a file's bytes.

    Parameters
    ----------
    path : path-like or str
        The file.
    blocksize : int, optional
        Bytes read at a time (default 4 MiB).

    Returns
    -------
    str
        The hex digest (64 characters).
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(blocksize):
            h.update(chunk)
    return h.hexdigest()
