"""The package's exceptions: one root, :class:`PausDenoiseError`, and one class per domain.

Every error that pausdenoise raises on purpose derives from :class:`PausDenoiseError`, so a
caller (the command line among them) can catch the package's errors in one clause. Where
callers have long relied on a built-in base (``ValueError`` for bad values and files,
``RuntimeError`` for run-time conditions), that base is kept as a second base.

Messages name the file, and where one is to blame the header key, column or (0-based) row.
"""

from __future__ import annotations

import os

__all__ = [
    "CatalogueError",
    "CheckpointError",
    "ChunkingError",
    "ConfigError",
    "IngestError",
    "NoiseModelError",
    "PausDenoiseError",
    "PreflightError",
    "PsfError",
    "RegistrationError",
    "RunLockedError",
    "StageError",
    "StoreError",
]


class PausDenoiseError(Exception):
    """Root of every error that pausdenoise raises on purpose."""


class ConfigError(PausDenoiseError, ValueError):
    """A configuration file cannot be read or its values are inconsistent."""


class StoreError(PausDenoiseError, ValueError):
    """The path is not a pausdenoise store, or a frame/array is missing or inconsistent."""


class IngestError(PausDenoiseError):
    """A frame cannot be ingested; names the file and, where relevant, the header key.

    Parameters
    ----------
    file : path-like or str
        The FITS file that cannot be ingested.
    reason : str
        What is wrong with it, in words.
    key : str, optional
        The header keyword to blame, when there is one.
    """

    def __init__(self, file: os.PathLike[str] | str, reason: str, key: str | None = None):
        self.file = str(file)
        self.key = key
        self.reason = reason
        where = f" [{key}]" if key else ""
        super().__init__(f"{self.file}{where}: {reason}")


class CatalogueError(PausDenoiseError, ValueError):
    """The reference catalogue file cannot be used as a whole.

    The message names the file and, where one is to blame, the column and the (0-based,
    positional) row: ``<file> [<column>] row <row>: <reason>``. Problems of single rows
    that photometry can flag and go on with (NaN positions, non-positive axes, duplicates)
    are not errors: :func:`pausdenoise.photometry.catalogue.validate_catalogue` lists them.

    Parameters
    ----------
    path : path-like or str
        The catalogue file.
    reason : str
        What is wrong, in words.
    column : str, optional
        The column to blame.
    row : int, optional
        The 0-based positional row to blame.
    """

    def __init__(
        self,
        path: os.PathLike[str] | str,
        reason: str,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path, self.reason, self.column, self.row = str(path), reason, column, row
        where = (f" [{column}]" if column is not None else "") + (
            f" row {row}" if row is not None else ""
        )
        super().__init__(f"{self.path}{where}: {reason}")


class ChunkingError(PausDenoiseError, ValueError):
    """The dask chunking cannot give seam-free tiled inference.

    See :func:`pausdenoise.denoise.tiling.check_chunks` for the rules (chunk origins on the
    network's pooling grid, every chunk at least as wide as the halo).
    """


class CheckpointError(PausDenoiseError, ValueError):
    """A file is not a usable pausdenoise checkpoint (message names the file and why)."""


class StageError(PausDenoiseError, RuntimeError):
    """A pipeline stage failed; the message names the stage and the cause."""


class RunLockedError(PausDenoiseError, RuntimeError):
    """Another live process holds the run directory's lock."""


class PreflightError(PausDenoiseError, RuntimeError):
    """The output location cannot hold the run (not writable, too little free space)."""


class PsfError(PausDenoiseError, ValueError):
    """A frame's PSF cannot be found: no header value and no usable star in its pixels."""


class RegistrationError(PausDenoiseError, ValueError):
    """Two exposures cannot be registered (no significant correlation peak, or too little overlap).

    See :mod:`pausdenoise.register`.
    """


class NoiseModelError(PausDenoiseError, ValueError):
    """A frame's variance-versus-signal relation cannot be fitted from its pixels."""
