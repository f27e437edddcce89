"""Planning: which image files, HDUs and companion files become which frames.

:func:`find_images` lists the image files of the inputs; :func:`plan_ingest` reads only
their headers (one dask task per file), resolves each frame's ``(expnum, ccd)``, shape and
companion files into a :class:`FrameSource`, and refuses, per frame with the file and
keyword named, what cannot be ingested: non-FITS or unreadable files, missing header keys,
a PAUS file whose EXPNUM/CCD disagree with its name, missing companions, duplicate
``(expnum, ccd)`` in one batch (every claimant fails, the store keeps what it had), and
(when ``require_same_shape``) a shape that disagrees with the frames already in the store.
"""

from __future__ import annotations

import glob as pyglob
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import pandas as pd

from pausdenoise import paus_layout
from pausdenoise import store as st
from pausdenoise.errors import IngestError
from pausdenoise.ingest.config import IngestConfig
from pausdenoise.ingest.fits import (
    _hdu_name,
    _hdu_shape,
    _image_hdu_indices,
    _naxis,
    _open_fits,
    _resolve_hdu,
)
from pausdenoise.ingest.metadata import _metadata
from pausdenoise.progress import compute_reporting

__all__ = [
    "DEFAULT_GENERIC_PATTERNS",
    "FrameSource",
    "IngestError",
    "expand_inputs",
    "find_images",
    "input_files",
    "is_glob",
    "plan_ingest",
]


@dataclass(frozen=True)
class FrameSource:
    """Where one frame comes from (after planning).

    Attributes
    ----------
    image : Path
        The image file.
    hdu : int or str
        The image HDU: 0-based index, or EXTNAME.
    expnum, ccd : int
        Exposure number and CCD of the frame (from the header).
    shape : (int, int)
        Image shape ``(NAXIS2, NAXIS1)`` = ``(ny, nx)`` in pixels.
    mask, weight, truth : Path, optional
        Companion files (None when the frame has none).
    companion_hdu : int, str or None
        The HDU of the companions (EXTNAME when the image HDU has one, else its index).
    mask_hdu, weight_hdu : int, str or None
        The mask / weight HDU (index or EXTNAME) when it is in the image's own file
        (``mask`` / ``weight`` are then the image file), or, PAUS layout, the HDU of a
        tile-compressed ``.msk.fits.fz`` mask (its first image extension).
    position : int, optional
        1-based position of the image file in the sorted list of the ingest's input files
        (the exposure number with ``expnum_from="order"``).
    """

    image: Path
    hdu: int | str
    expnum: int
    ccd: int
    shape: tuple[int, int]
    mask: Path | None = None
    weight: Path | None = None
    truth: Path | None = None
    companion_hdu: int | str | None = None
    mask_hdu: int | str | None = None
    weight_hdu: int | str | None = None
    position: int | None = None

    @property
    def frame(self) -> str:
        """The store's frame id of ``(expnum, ccd)``."""
        return st.frame_id(self.expnum, self.ccd)

    @property
    def files(self) -> tuple[Path, ...]:
        """The source files that exist for this frame: image, mask, weight, truth."""
        return tuple(p for p in (self.image, self.mask, self.weight, self.truth) if p)


#: the name endings of the FITS files found by default (generic layout)
DEFAULT_GENERIC_PATTERNS = ("*.fits", "*.fits.gz", "*.fz", "*.fz.gz")
#: compression endings, outermost first: ``x.fits.fz.gz`` -> ``x.fits.fz`` -> ``x.fits``
_COMPRESSED_ENDINGS = (".gz", ".fz")
_GLOB_CHARS = frozenset("*?[")


def _uncompressed_name(name: str) -> str:
    """Return a file name without its compression endings (``.gz``, then ``.fz``).

    Returns
    -------
    str
        ``"x.fits"`` for ``"x.fits.fz.gz"``; the name itself when it has none.
    """
    for ending in _COMPRESSED_ENDINGS:
        if name.endswith(ending) and len(name) > len(ending):
            name = name[: -len(ending)]
    return name


def _substitute(path: Path, sub: tuple[str, str] | None) -> Path | None:
    if sub is None:
        return None
    if sub[0] not in path.name:
        return None
    return path.with_name(path.name.replace(sub[0], sub[1], 1))


def _companion(path: Path, sub: tuple[str, str] | None) -> Path | None:
    """Return the companion file of an image: the substituted name, else a (de)compressed one.

    The substituted name is used when it exists; otherwise the first existing of the same
    name with other compression endings (``.fits``, ``.fits.gz``, ``.fits.fz``,
    ``.fits.fz.gz``), so compressed images pair with uncompressed companions and back.

    Returns
    -------
    Path or None
        None without a substitution (or when its search string is not in the name); the
        substituted name (existing or not) when no other ending exists.
    """
    exact = _substitute(path, sub)
    if exact is None or exact.is_file():
        return exact
    base = _uncompressed_name(exact.name)
    for ending in ("", ".gz", ".fz", ".fz.gz"):
        other = exact.with_name(base + ending)
        if other.is_file():
            return other
    return exact


def _drop_compressed_twins(found: list[Path]) -> list[Path]:
    """Leave out a compressed file whose uncompressed twin (same name, no ending) is listed.

    Returns
    -------
    list of Path
        The files kept.
    """
    names = {f.parent / f.name for f in found}
    return [f for f in found if _uncompressed_name(f.name) == f.name
            or f.with_name(_uncompressed_name(f.name)) not in names]


def _scan_dir(p: Path, config: IngestConfig) -> list[Path]:
    if config.layout == "paus":
        if config.pattern is None:
            globs = list(paus_layout.IMAGE_GLOBS)
        else:
            globs = config.pattern if isinstance(config.pattern, list) else [config.pattern]
        cand = [c for g in globs for c in (p.rglob(g) if config.recursive else p.glob(g))]
        return [
            c
            for c in cand
            if paus_layout.parse_image_name(c.name) and c.parent.name != paus_layout.TRUTH_DIR
        ]
    if not config.pattern:
        globs = DEFAULT_GENERIC_PATTERNS
    else:
        globs = (config.pattern,) if isinstance(config.pattern, str) else tuple(config.pattern)
    found = [c for g in globs for c in (p.rglob(g) if config.recursive else p.glob(g))]
    if not config.pattern:
        found = _drop_compressed_twins(sorted(set(found)))
    return found


def is_glob(item: os.PathLike[str] | str) -> bool:
    """Tell whether an input is a glob pattern rather than a path.

    Parameters
    ----------
    item : path or str
        An input as given.

    Returns
    -------
    bool
        True when it holds ``*``, ``?`` or ``[`` and no file or directory has that name.
    """
    text = str(item)
    return bool(_GLOB_CHARS & set(text)) and not Path(text).exists()


def expand_inputs(
    inputs: os.PathLike[str] | str | Sequence[os.PathLike[str] | str],
) -> tuple[list[Path], list[str]]:
    """Expand the glob patterns among the inputs (``~`` too); paths pass as given.

    Parameters
    ----------
    inputs : path or sequence of paths
        Directories, files and glob patterns (``/data/*.fits``, ``night*/*.fz``,
        ``**`` for any depth).

    Returns
    -------
    (list of Path, list of str)
        The paths (patterns replaced by their sorted matches), and the patterns that
        matched nothing.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    paths: list[Path] = []
    unmatched: list[str] = []
    for item in items:
        text = os.path.expanduser(str(item))
        if not is_glob(text):
            paths.append(Path(text))
            continue
        matches = sorted(pyglob.glob(text, recursive=True))
        if not matches:
            unmatched.append(str(item))
        paths += [Path(m) for m in matches]
    return paths, unmatched


def find_images(
    inputs: os.PathLike[str] | str | Sequence[os.PathLike[str] | str], config: IngestConfig
) -> list[Path]:
    """List the image files to ingest: explicit files as given, directories scanned.

    PAUS: files whose names :func:`paus_layout.parse_image_name` accepts. Generic: the
    ``pattern`` glob, minus files that are another selected image's mask/weight companion.

    Parameters
    ----------
    inputs : path or sequence of paths
        Directories (scanned with ``config.pattern``, recursively with
        ``config.recursive``) and/or image files.
    config : IngestConfig
        Layout, pattern and companion substitutions.

    Returns
    -------
    list of Path
        Sorted, without duplicates.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found += _scan_dir(p, config)
        else:
            found.append(p)
    found = sorted(set(found))
    if config.layout == "generic":
        companions = set()
        for f in found:
            for sub in (config.mask_substitution, config.weight_substitution):
                for c in (_substitute(f, sub), _companion(f, sub)):
                    if c is not None and c != f:
                        companions.add(c)
        found = [f for f in found if f not in companions]
    return found


def input_files(images: Sequence[Path], config: IngestConfig) -> list[Path]:
    """List every existing file the ingest of ``images`` reads, without opening any.

    The images, their companions (PAUS: the ``.msk`` mask and the simulation's truth,
    found from the file name; generic: the ``mask_substitution`` / ``weight_substitution``
    files) and the zero-point table. What a run signs to tell that its ingest inputs
    changed (an edited mask or table as much as an edited image).

    Parameters
    ----------
    images : sequence of Path
        Image files, as :func:`find_images` lists them.
    config : IngestConfig
        Layout, companion substitutions and zero-point table.

    Returns
    -------
    list of Path
        Sorted, without duplicates; files that do not exist are left out.
    """
    files: set[Path] = set(images)
    for image in images:
        if config.layout == "generic":
            for sub in (config.mask_substitution, config.weight_substitution):
                companion = _companion(image, sub)
                if companion is not None:
                    files.add(companion)
            continue
        parsed = paus_layout.parse_image_name(image.name)
        if parsed is not None:
            files.update(paus_layout.mask_paths_found(image.parent, *parsed))
            files.add(paus_layout.truth_path(image.parent, *parsed))
    if config.zp_table is not None:
        files.add(Path(config.zp_table.path))
    return sorted(p for p in files if p.is_file())


def _paus_image_hdu(hdul: Any, path: Path) -> int:
    """Return the image HDU of a PAUS file: the primary HDU, or (``.fz``) the first image one.

    Returns
    -------
    int
        The first 2-D image extension when the primary HDU is empty (``NAXIS = 0``, as in a
        tile-compressed file) and there is one; else 0, the primary HDU (whose shape is
        checked later).

    Raises
    ------
    IngestError
        An HDU header after the primary one cannot be read.
    """
    if _naxis(hdul[0].header, path) != 0:
        return 0
    indices = _image_hdu_indices(hdul, path)
    return indices[0] if indices else 0


def _paus_mask(path: Path, expnum: int, ccd: int) -> tuple[Path, int | None]:
    """Find a PAUS frame's one mask file (``.msk.fits``, ``.msk.fits.gz`` or ``.msk.fits.fz``).

    Returns
    -------
    (Path, int or None)
        The mask file, and its HDU when tile-compressed (1, the first image extension;
        None: the primary HDU).

    Raises
    ------
    IngestError
        No mask file, or more than one version of it (both named).
    """
    found = paus_layout.mask_paths_found(path.parent, expnum, ccd)
    if not found:
        plain = paus_layout.mask_path(path.parent, expnum, ccd).name
        raise IngestError(path, f"mask file {plain} not found (nor {plain}.gz, {plain}.fz)",
                          key="mask")
    if len(found) > 1:
        raise IngestError(path, f"{len(found)} versions of one mask: "
                          f"{' and '.join(f.name for f in found)}; keep one", key="mask")
    return found[0], (1 if found[0].name.endswith(".fz") else None)


def _plan_paus(hdul: Any, path: Path, config: IngestConfig) -> list[FrameSource]:
    """Plan the single frame of a PAUS image file (image HDU, ``.msk`` mask, truth).

    The image is the primary HDU, or the first image extension of a tile-compressed
    ``.img.fits.fz``; the mask may be plain, gzip or tile-compressed (:func:`_paus_mask`).

    Returns
    -------
    list of FrameSource
        One frame.

    Raises
    ------
    IngestError
        Header unusable, EXPNUM/CCD disagreeing with the file name, mask missing.
    """
    parsed = paus_layout.parse_image_name(path.name)
    index = _paus_image_hdu(hdul, path)
    header = hdul[index].header
    scratch: list[str] = []
    meta = _metadata(header, hdul[0].header if index else None, path, config, scratch)
    if parsed is not None and (meta["expnum"], meta["ccd"]) != parsed:
        key = "EXPNUM" if meta["expnum"] != parsed[0] else "CCD"
        raise IngestError(
            path,
            f"header EXPNUM/CCD = {meta['expnum']}/{meta['ccd']} disagree with the "
            f"file name ({parsed[0]}/{parsed[1]})",
            key=key,
        )
    shape = _hdu_shape(header, path)
    root = path.parent
    mask, mask_hdu = _paus_mask(path, meta["expnum"], meta["ccd"])
    truth = paus_layout.truth_path(root, meta["expnum"], meta["ccd"])
    return [
        FrameSource(
            image=path,
            hdu=index,
            expnum=meta["expnum"],
            ccd=meta["ccd"],
            shape=shape,
            mask=mask,
            truth=truth if truth.is_file() else None,
            companion_hdu=0,
            mask_hdu=mask_hdu,
        )
    ]


def _generic_companions(
    hdul: Any, path: Path, config: IngestConfig
) -> tuple[dict[str, Any], set[int]]:
    """Find a generic image's mask and weight: companion files, or HDUs of its own file.

    Returns
    -------
    (dict, set of int)
        ``FrameSource`` fields (``mask``, ``weight``, ``mask_hdu``, ``weight_hdu``), and the
        indices of the mask/weight HDUs (not images themselves).

    Raises
    ------
    IngestError
        A companion file or HDU that does not exist.
    """
    fields: dict[str, Any] = {}
    own: set[int] = set()
    for what, sub, hdu in (("mask", config.mask_substitution, config.mask_hdu),
                           ("weight", config.weight_substitution, config.weight_hdu)):
        if hdu is not None:
            own.add(_resolve_hdu(hdul, hdu, path))
            fields[what], fields[f"{what}_hdu"] = path, hdu
            continue
        companion = _companion(path, sub)
        if companion is not None and not companion.is_file():
            raise IngestError(path, f"{what} companion {companion.name} not found "
                              "(nor with another .fits/.gz/.fz ending)", key=what)
        fields[what] = companion
    return fields, own


def _plan_generic(
    hdul: Any, path: Path, config: IngestConfig, position: int | None = None
) -> list[FrameSource]:
    """Plan the frames of a generic file: ``config.hdu``, or every 2-D image HDU.

    Returns
    -------
    list of FrameSource
        One per image HDU (mask and weight HDUs named by the config are not images).

    Raises
    ------
    IngestError
        No image HDU, unusable header, or a missing companion file or HDU.
    """
    companions, own = _generic_companions(hdul, path, config)
    if config.hdu is None:
        indices = [i for i in _image_hdu_indices(hdul, path) if i not in own]
        if not indices:
            raise IngestError(path, "no 2-D image HDU in file", key="NAXIS")
        if own and len(indices) > 1:
            raise IngestError(path, f"{len(indices)} image HDUs {indices} share one mask/"
                              "weight HDU: name the image HDU with ingest.hdu", key="HDU")
    else:
        indices = [_resolve_hdu(hdul, config.hdu, path)]
    primary = hdul[0].header
    sources = []
    for i in indices:
        header = hdul[i].header
        scratch: list[str] = []
        meta = _metadata(header, primary if i else None, path, config, scratch, position)
        name = _hdu_name(hdul[i], path)
        sources.append(
            FrameSource(
                image=path,
                hdu=i,
                expnum=meta["expnum"],
                ccd=meta["ccd"],
                shape=_hdu_shape(header, path),
                companion_hdu=name if name and name != "PRIMARY" else i,
                position=position,
                **companions,
            )
        )
    return sources


def _plan_file(
    path: Path, config: IngestConfig, position: int | None = None
) -> list[FrameSource]:
    """Plan one image file from its headers only (one dask task).

    Returns
    -------
    list of FrameSource
        The file's frames.

    Raises
    ------
    IngestError
        Anything that keeps the file's frames out, naming the file and keyword.
    """
    hdul = _open_fits(path)
    try:
        if config.layout == "paus":
            return _plan_paus(hdul, path, config)
        return _plan_generic(hdul, path, config, position)
    finally:
        hdul.close()


def _plan_task(
    path: Path, config: IngestConfig, position: int | None = None
) -> tuple[list[FrameSource], tuple[str, str] | None]:
    try:
        return _plan_file(path, config, position), None
    except IngestError as exc:
        return [], (exc.file, str(exc))
    except Exception as exc:  # a reader bug must not sink the batch
        return [], (str(path), f"{type(exc).__name__}: {exc}")


def _refuse_duplicates(
    sources: list[FrameSource], failed: list[tuple[str, str]]
) -> list[FrameSource]:
    """Fail every claimant of a duplicate ``(expnum, ccd)``; the store keeps what it had.

    Returns
    -------
    list of FrameSource
        The frames claimed once.
    """
    by_frame: dict[str, list[FrameSource]] = {}
    for s in sources:
        by_frame.setdefault(s.frame, []).append(s)
    kept: list[FrameSource] = []
    for claimants in by_frame.values():
        if len(claimants) == 1:
            kept.append(claimants[0])
            continue
        where = ", ".join(f"{c.image.name}[{c.hdu}]" for c in claimants)
        versions = len({c.image.parent / _uncompressed_name(c.image.name)
                        for c in claimants}) == 1
        for c in claimants:
            what = (f": {len(claimants)} versions of one frame, {where} (plain, gzip or "
                    "tile-compressed): keep one" if versions else f" claimed by {where}")
            failed.append(
                (
                    str(c.image),
                    f"{c.image}: duplicate (expnum, ccd) = ({c.expnum}, {c.ccd}) [EXPNUM/CCD]"
                    f"{what}; none ingested",
                )
            )
    return kept


def _refuse_other_shapes(
    sources: list[FrameSource], store: os.PathLike[str] | str, failed: list[tuple[str, str]]
) -> list[FrameSource]:
    """Fail frames whose shape is not the most common one of the store (else of the batch).

    Returns
    -------
    list of FrameSource
        The frames of the reference shape.
    """
    existing = _existing_table(store)
    batch = {s.frame for s in sources}
    ref_shapes = Counter(
        (int(r.ny), int(r.nx)) for r in existing.itertuples(index=False) if r.frame not in batch
    )
    if not ref_shapes:
        ref_shapes = Counter(s.shape for s in sorted(sources, key=lambda s: s.frame))
    ref = ref_shapes.most_common(1)[0][0]
    ok = []
    for s in sources:
        if s.shape != ref:
            failed.append(
                (
                    str(s.image),
                    f"{s.image}: image shape {s.shape} [NAXIS2, NAXIS1] disagrees with the "
                    f"frames in the store {ref}",
                )
            )
        else:
            ok.append(s)
    return ok


def plan_ingest(
    images: Sequence[Path],
    store: os.PathLike[str] | str,
    config: IngestConfig,
    client: Any = None,
) -> tuple[list[FrameSource], list[tuple[str, str]]]:
    """Resolve frames from headers and refuse the ones that cannot go in.

    Parameters
    ----------
    images : sequence of Path
        Image files, e.g. from :func:`find_images`; a file's 1-based position in their
        sorted list is its exposure number with ``expnum_from="order"``.
    store : path
        The survey store; read only, for the shapes of its complete frames.
    config : IngestConfig
        Layout, keyword mapping and ``require_same_shape``.
    client : distributed.Client, optional
        Run the header tasks on this client; by default on dask's current scheduler.

    Returns
    -------
    (sources, failed)
        Frames to ingest (sorted by frame id), and ``(file, reason)`` for everything
        refused.
    """
    tasks = [
        dask.delayed(_plan_task, pure=False)(p, config, n)
        for n, p in enumerate(sorted(images), start=1)
    ]
    results = _compute(tasks, client, progress=False)
    sources: list[FrameSource] = []
    failed: list[tuple[str, str]] = []
    for frames, err in results:
        sources += frames
        if err is not None:
            failed.append(err)
    sources = _refuse_duplicates(sources, failed)
    if config.effective_require_same_shape and sources:
        sources = _refuse_other_shapes(sources, store, failed)
    return sorted(sources, key=lambda s: s.frame), failed


def _existing_table(store: os.PathLike[str] | str) -> Any:
    try:
        return st.exposure_table(store, complete_only=True)
    except (FileNotFoundError, st.StoreError):
        return pd.DataFrame(columns=["frame", "ny", "nx", "source_fingerprint"])


def _compute(tasks: list[Any], client: Any, progress: bool) -> list[Any]:
    if progress:
        return compute_reporting(tasks, client, "ingest")
    if not tasks:
        return []
    if client is not None:
        return client.gather(client.compute(tasks))
    return list(dask.compute(*tasks))
