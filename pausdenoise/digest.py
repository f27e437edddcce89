"""One helper for the content digests behind fingerprints and resumable-write keys."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["json_digest"]


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
