"""Tracked files speak of the software only.

Every file of the repository (``git ls-files``, plus untracked files that git does not
ignore) is scanned for text about how the project was built rather than what it does:
numbered work sessions, ticket numbers, scratch or machine-specific paths, and references
to files outside the repository. ``DEVELOPERS.md`` ("Words and paths that do not belong in
the repository") describes them in words; ``PATTERNS`` below is their one definition, and
this file is the only one allowed to spell them out.

The patterns are written so that ordinary code passes: a pytest or Dask ``session``
(``scope="session"``, ``start_new_session=True``, a ``session_id`` key), hex colours
(``#f4f4f4``, ``#222``), ``# noqa`` comments, upstream references such as ``dask#3671`` and
example paths such as ``/tmp/sched.json`` do not match.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Files that must spell the patterns out: the contributor guide and this test.
EXEMPT = {"tests/test_hygiene.py"}

#: (name, regular expression); all matched case-insensitively, line by line.
PATTERNS: list[tuple[str, str]] = [
    ("numbered session", r"\bsessions?[\s_-]*\d"),
    (
        "work session",
        r"\b(?:this|that|earlier|previous|next|later|last|same|other|every|each|helper|"
        r"agent|project's|first|second|third|fourth|fifth)\s+sessions?\b"
        r"|\bsessions'",
    ),
    ("ticket number", r"\b(?:issue|ticket|pr)s?\s*#?\d+"),
    ("ticket reference", r"(?<![\w&#/:])#\d{1,5}\b(?![0-9a-f;}])"),
    ("numbered round", r"\brounds?\s+\d"),
    ("lent", r"\blent\b"),
    ("workplace", r"\bworkplace\b"),
    ("helper as author", r"\b(?:earlier|other|previous|later|next)\s+helpers?\b"),
    ("scratch path", r"/tmp/(?:fresh|care|h\d)"),
    ("machine path", r"(?<![\w.-])/work/"),
    ("home directory", r"(?<![\w.-])/(?:home|Users)/[\w.-]+/"),
    ("outside the repository", r"\.\./shared\b"),
    ("external document", r"\bDOMAIN\.md\b|\bARCHITECTURE\.md\b"),
]

_COMPILED = [(name, re.compile(rx, re.IGNORECASE)) for name, rx in PATTERNS]


def _repository_files() -> list[str]:
    """Return the tracked and untracked-but-not-ignored files, relative to the root."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout
    return sorted({p for p in out.decode("utf-8", "surrogateescape").split("\0") if p})


def _text_lines(path: Path) -> list[str] | None:
    """Return the lines of a text file, or None for a binary or unreadable one."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None


def scan(files: list[str], root: Path = ROOT) -> list[str]:
    """Return ``file:line: [pattern] text`` for every line that matches a pattern.

    Parameters
    ----------
    files : list of str
        Paths relative to ``root``; exempt, missing and binary files are skipped.
    root : Path, optional
        Repository root. Default: the directory above ``tests/``.

    Returns
    -------
    list of str
        One entry per matching line and pattern, in file order.
    """
    hits = []
    for rel in files:
        if rel in EXEMPT:
            continue
        lines = _text_lines(root / rel)
        if lines is None:
            continue
        for number, line in enumerate(lines, start=1):
            for name, rx in _COMPILED:
                if rx.search(line):
                    hits.append(f"{rel}:{number}: [{name}] {line.strip()[:160]}")
    return hits


@pytest.mark.parametrize(
    "text",
    [
        "measured in session 3", "see issue #4", "the goal of issue 3", "fixed in #12",
        "in round 2", "no GPU was lent", "this workplace", "/tmp/fresh7/demo-output",
        "/tmp/care2/venv", "/work/main/bench-output", "/home/alice/project",
        "../shared/data/real", "see DOMAIN.md", "ARCHITECTURE.md says", "this session",
        "other sessions' jobs", "by earlier helpers", "the session-2 demo",
    ],
)
def test_patterns_catch_process_text(text):
    """Each kind of process text is caught by at least one pattern."""
    assert any(rx.search(text) for _, rx in _COMPILED), text


@pytest.mark.parametrize(
    "text",
    [
        '@pytest.fixture(scope="session")', "start_new_session=True", "session_id",
        "color:#222}", "color: #555;", "th{background:#f4f4f4}", "x = 1  # noqa: E501",
        "#!/usr/bin/env bash",
        "(dask#3671)", "--scheduler-file /tmp/sched.json", "WORKDIR /home/dask",
        "the daemons run in their own sessions", "catalogue_issues.csv", "a private helper",
        "round(x, 2)", "rounded to 3 digits", "framework/", "[Timings](#timings)",
    ],
)
def test_patterns_spare_ordinary_code(text):
    """Ordinary code and prose about the software match no pattern."""
    assert not [name for name, rx in _COMPILED if rx.search(text)], text


def test_repository_speaks_of_the_software_only():
    """No tracked file holds process text, scratch paths or references outside the repo."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (git ls-files is needed to list the files)")
    hits = scan(_repository_files())
    assert not hits, f"{len(hits)} line(s) about the build process, not the software:\n" + (
        "\n".join(hits)
    )
