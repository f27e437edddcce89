"""Keep credentials out of what a run writes.

That is ``run.json``, ``run-summary.json``, the report, logged job scripts and error
messages.

Nothing in the pipeline dumps the environment, but the configuration is recorded, and a
configuration can carry credentials the user put there (a ``job_script_prologue`` line
``export WANDB_API_KEY=…``, a URL with a user and password before its host), and an error
message can quote a path or value that holds one. :func:`redact` replaces, anywhere in a
JSON-like object:

- the string value of a mapping key that names a secret (:func:`is_sensitive_name`:
  ``password``, ``secret``, ``token``, ``api_key``, ``*_KEY`` …);
- inside strings: ``NAME=value`` / ``NAME: value`` where ``NAME`` names a secret, the
  password of a URL's ``user:password@``, and every occurrence of the value of an
  environment variable whose name names a secret (values of 8 characters or more, so that
  short values such as ``1`` do not blank out unrelated text).

Replaced text becomes ``***``. Keys ending in ``fingerprint`` are never touched (reruns
compare them).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MASK", "is_sensitive_name", "redact", "redact_text", "secret_env_values"]

MASK = "***"
#: Minimum length of an environment value that is searched for in text.
MIN_ENV_SECRET_LEN = 8

_SENSITIVE = re.compile(
    r"(passw(or)?d|passphrase|secret|token|credential|api[_-]?key|access[_-]?key|"
    r"private[_-]?key|_key$|^key_|(^|[_-])auth([_-]|$)|authori[sz]ation|cookie|session[_-]?id)",
    re.IGNORECASE,
)
#: ``NAME=value`` or ``NAME: value`` inside text (shell lines, URLs' query strings, messages).
_ASSIGN = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>\s*[=:]\s*)(?P<q>['\"]?)(?P<value>[^\s'\"&;,]+)"
    r"(?P=q)"
)
#: the ``user:password@`` part of a URL (after ``scheme://``)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@")


def is_sensitive_name(name: str) -> bool:
    """Tell whether a variable / key name says its value is a credential.

    Parameters
    ----------
    name : str
        An environment variable or configuration key, e.g. ``AWS_SECRET_ACCESS_KEY``,
        ``GITHUB_TOKEN``, ``db_password``, ``WANDB_API_KEY``.

    Returns
    -------
    bool
        Whether the name contains ``password``/``passwd``/``passphrase``, ``secret``,
        ``token``, ``credential``, ``api_key``, ``access_key``, ``private_key``, a whole
        word ``auth``, ``authorization``, ``cookie`` or ``session_id``, or ends in ``_KEY``.
        ``band_token``-style names are sensitive too; only *string* values are redacted.
    """
    return bool(_SENSITIVE.search(name))


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment variables with sensitive names, longest first.

    Parameters
    ----------
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    list of str
        Values at least :data:`MIN_ENV_SECRET_LEN` characters long.
    """
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_sensitive_name(k) and len(v) >= MIN_ENV_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def _assignment(m: re.Match[str]) -> str:
    value = m["value"]
    if not is_sensitive_name(m["name"]) or value == MASK or value.lstrip("-").isdigit():
        return m[0]
    if value.startswith("$"):  # a reference such as $TOKEN or ${TOKEN}, not the secret
        return m[0]
    return f"{m['name']}{m['sep']}{m['q']}{MASK}{m['q']}"


def redact_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with credentials replaced by ``***`` (see the module docstring).

    Parameters
    ----------
    text : str
        Any text: a shell line, a message, a URL.
    environ : mapping, optional
        The environment whose secret values are searched for (default ``os.environ``).

    Returns
    -------
    str
        The redacted text (``text`` itself when nothing matched).
    """
    for value in secret_env_values(environ):
        if value in text:
            text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _ASSIGN.sub(_assignment, text)


def redact(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Copy a JSON-like object with credentials replaced by ``***``.

    Parameters
    ----------
    obj : object
        Dicts, lists, tuples, strings and scalars (as written to ``run.json``).
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    object
        The same structure; string values under sensitive keys become ``***``, other
        strings go through :func:`redact_text`; keys and non-string scalars are unchanged.
    """
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if is_sensitive_name(k)}

    def walk(value: Any, key: str | None) -> Any:
        if key is not None and key.endswith("fingerprint"):
            return value
        if isinstance(value, Mapping):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v, None) for v in value)
        if isinstance(value, str):
            if key is not None and is_sensitive_name(key) and value:
                return MASK
            return redact_text(value, env)
        return value

    return walk(obj, None)
