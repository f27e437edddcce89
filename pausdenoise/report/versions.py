"""The versions of the software behind a run, recorded in ``run.json`` and the report."""

from __future__ import annotations

import importlib.metadata as md
import platform

__all__ = ["software_versions"]


def software_versions() -> dict[str, str]:
    """Return the versions of the packages whose behaviour shapes the results.

    Returns
    -------
    dict of str to str
        Package → version (``"not installed"`` for a missing one), and ``python``.
    """
    out = {"python": platform.python_version()}
    for pkg in ("pausdenoise", "numpy", "torch", "dask", "distributed", "zarr", "astropy",
                "photutils", "galsim", "pandas", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
