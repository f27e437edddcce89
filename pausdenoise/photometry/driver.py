"""The distributed photometry driver: Zarr store in, hive-partitioned Parquet out.

One Dask task per (frame, kind) reads that frame's image and mask from the survey store
(:mod:`pausdenoise.store`), measures the frame's catalogue rows
(:func:`pausdenoise.photometry.measure.measure_frame`) and writes one Parquet file
``<out_dir>/band=<band>/kind=<kind>/<frame>.parquet`` atomically.

Each partition records in its Parquet metadata the settings fingerprint and the digests of
its inputs (:func:`plan_partitions`): the frame's ingested content, for ``kind=denoised`` the
denoised image's ``denoise_key``, and the catalogue rows measured. A rerun skips a partition
only when all of them are unchanged, so new pixels, a new model or new catalogue rows
remeasure exactly the partitions they touch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pausdenoise.errors import PsfError
from pausdenoise.paus_layout import is_safe_name
from pausdenoise.photometry.catalogue import REQUIRED_COLUMNS, _require_columns
from pausdenoise.photometry.config import PhotometryConfig
from pausdenoise.photometry.measure import OUTPUT_COLUMNS, _empty_table, measure_frame
from pausdenoise.store import frame_gain, open_store, parse_frame_id

if TYPE_CHECKING:  # typing only
    from pausdenoise.psf import PsfEstimate

__all__ = [
    "Partition",
    "band_has_columns",
    "catalogue_rows_digest",
    "measure_store_frame",
    "partition_path",
    "partition_tasks",
    "partition_warnings",
    "photometry_bands",
    "photometry_dataframe",
    "photometry_tasks",
    "plan_partitions",
    "read_photometry",
    "remove_stale_partitions",
    "run_photometry",
    "write_partition",
]

_IMAGE_OF_KIND = {"raw": "image", "denoised": "denoised"}

_METADATA_KEY = b"pausdenoise_photometry"


# --------------------------------------------------------------------------------------
# Store access
# --------------------------------------------------------------------------------------


def measure_store_frame(
    store_path: str | os.PathLike[str],
    frame: str,
    apertures: pd.DataFrame,
    config: PhotometryConfig,
    kind: str = "raw",
) -> pd.DataFrame:
    """Read one frame's image (``kind``) and mask from the Zarr store and measure it.

    Frame attributes used: ``gain``, ``zp``, ``zp_err``, ``saturate``, ``expnum``, ``ccd``,
    ``band``, and ``psf_fwhm_px`` / ``seeing`` for the PSF of the profile-weighted flux
    (else the PSF is measured on the raw image; :func:`pausdenoise.psf.frame_psf`). With
    ``config.errors == "ivar"`` and ``kind="raw"``, the frame's ``ivar`` array (1/ADU²)
    gives the sky-noise term of ``flux_err``; a frame without one falls back to the annulus
    scatter with a warning. This is the body of one Dask task.

    Parameters
    ----------
    store_path : path-like
        The survey store (:func:`pausdenoise.store.open_store`), opened read-only.
    frame : str
        Frame id ``f"{expnum:08d}_{ccd:02d}"``.
    apertures : pandas.DataFrame
        The frame's catalogue rows (see :func:`~pausdenoise.photometry.measure.measure_frame`).
    config : PhotometryConfig
        Photometry settings.
    kind : {"raw", "denoised"}, optional
        Which image of the frame to measure: the ``image`` or the ``denoised`` array.

    Returns
    -------
    pandas.DataFrame
        The frame's photometry (``OUTPUT_COLUMNS``), one row per catalogue row.

    Raises
    ------
    KeyError
        When the frame has no array for ``kind`` (for example not denoised yet).
    """
    grp = open_store(store_path, mode="r")["frames"][frame]
    attrs = dict(grp.attrs)
    name = _IMAGE_OF_KIND[kind]
    if name not in grp:
        raise KeyError(
            f"frame {frame} of store {store_path} has no array {name!r} (needed for kind={kind!r})"
        )
    image = grp[name][...]
    mask = grp["mask"][...] if "mask" in grp else None
    psf = _frame_psf(grp, attrs, image if kind == "raw" else None, mask, config)
    ivar = None
    if config.errors == "ivar" and kind != "raw":  # the ivar describes the raw pixels only
        config = config.model_copy(update={"errors": "annulus"})
    elif config.errors == "ivar" and "ivar" in grp:
        ivar = grp["ivar"][...]
    return measure_frame(
        image,
        mask,
        apertures,
        config,
        gain=frame_gain(attrs, f"{frame} of store {store_path}"),
        zp=float(attrs.get("zp", np.nan)),
        zp_err=float(attrs.get("zp_err", np.nan)),
        saturate=attrs.get("saturate"),
        kind=kind,
        expnum=attrs.get("expnum"),
        ccd=attrs.get("ccd"),
        band=attrs.get("band"),
        psf=psf,
        ivar=ivar,
    )


def _frame_psf(grp: Any, attrs: dict[str, Any], raw: np.ndarray | None,
               mask: np.ndarray | None, config: PhotometryConfig) -> PsfEstimate | None:
    """Return the frame's PSF (:func:`pausdenoise.psf.frame_psf`) from its RAW image.

    The PSF always comes from the header or the raw pixels, also when the denoised image
    is measured (``raw`` None: read here only if the header has no PSF size). None when
    ``config.profile`` is off or no PSF can be found (:class:`~pausdenoise.errors.PsfError`):
    the profile columns are then NaN and flagged ``NO_PSF``; the aperture columns are not
    affected.

    Returns
    -------
    PsfEstimate or None
    """
    if not config.profile:
        return None
    from pausdenoise.psf import frame_psf  # local: the profile flux is optional

    try:
        return frame_psf(attrs, raw, mask, pixel_scale=config.pixel_scale,
                         beta=config.psf_beta)
    except PsfError:
        if raw is not None or "image" not in grp:
            return None
    try:  # no PSF size in the header: measure it on the raw image
        return frame_psf(attrs, grp["image"][...], mask, pixel_scale=config.pixel_scale,
                         beta=config.psf_beta)
    except PsfError:
        return None


# --------------------------------------------------------------------------------------
# Dask tasks
# --------------------------------------------------------------------------------------


def photometry_tasks(
    store_path: str | os.PathLike[str],
    frames: Sequence[str],
    catalogue: pd.DataFrame,
    config: PhotometryConfig,
) -> dict[tuple[str, str], Any]:
    """Build one ``dask.delayed`` task per (frame, kind) returning that frame's table.

    The catalogue rows of each frame are selected here (``expnum``/``ccd`` parsed from the
    frame id ``f"{expnum:08d}_{ccd:02d}"``) and embedded in its task, so a worker reads only
    its own frame's arrays from the store.

    Parameters
    ----------
    store_path : path-like
        The survey store.
    frames : sequence of str
        Frame ids to measure.
    catalogue : pandas.DataFrame
        The reference catalogue of all frames (``REQUIRED_COLUMNS``, ``expnum``, ``ccd``).
    config : PhotometryConfig
        Photometry settings; ``config.kinds`` says which images.

    Returns
    -------
    dict of (str, str) to dask.delayed.Delayed
        ``(frame, kind)`` → task computing
        :func:`measure_store_frame` for it.

    Raises
    ------
    KeyError
        When a required catalogue column is missing.
    """
    _require_columns(catalogue, (*REQUIRED_COLUMNS, "expnum", "ccd"))
    groups = {k: g for k, g in catalogue.groupby(["expnum", "ccd"], sort=False)}
    tasks: dict[tuple[str, str], Any] = {}
    for frame in frames:
        e, c = parse_frame_id(frame)
        rows = groups.get((e, c), catalogue.iloc[:0]).reset_index(drop=True)
        for kind in config.kinds:
            tasks[(frame, kind)] = dask.delayed(measure_store_frame, pure=True)(
                str(store_path),
                frame,
                rows,
                config,
                kind,
                dask_key_name=f"photometry-{frame}-{kind}",
            )
    return tasks


def photometry_dataframe(
    store_path: str | os.PathLike[str],
    frames: Sequence[str],
    catalogue: pd.DataFrame,
    config: PhotometryConfig,
) -> Any:
    """Return the photometry of all (frame, kind) as one lazy ``dask.dataframe``.

    One partition per task of :func:`photometry_tasks`, ready for
    :func:`pausdenoise.compare.make_pairs` on a cluster.

    Parameters
    ----------
    store_path : path-like
        The survey store.
    frames : sequence of str
        Frame ids to measure.
    catalogue : pandas.DataFrame
        The reference catalogue of all frames.
    config : PhotometryConfig
        Photometry settings.

    Returns
    -------
    dask.dataframe.DataFrame
        Lazy table with ``OUTPUT_COLUMNS``.
    """
    tasks = list(photometry_tasks(store_path, frames, catalogue, config).values())
    return dd.from_delayed(tasks, meta=_empty_table(), verify_meta=False)


# --------------------------------------------------------------------------------------
# Parquet partitions
# --------------------------------------------------------------------------------------


def partition_path(out_dir: str | os.PathLike[str], band: str, kind: str, frame: str) -> Path:
    """Return ``<out_dir>/band=<band>/kind=<kind>/<frame>.parquet``.

    Hive-partitioned by band and kind, one file per frame. The band may come from the
    reference catalogue: every name must be a plain name
    (:func:`pausdenoise.paus_layout.is_safe_name`: letters, digits, ``. _ + -``; no
    separator, ``=``, whitespace, ``..``), so that no catalogue value can leave ``out_dir``
    or break the hive partitioning.

    Parameters
    ----------
    out_dir : path-like
        Root of the photometry output.
    band : str
        Band name (for example ``"NB455"``).
    kind : str
        ``"raw"`` or ``"denoised"``.
    frame : str
        Frame id.

    Returns
    -------
    pathlib.Path
        The partition file's path (not created).

    Raises
    ------
    ValueError
        When ``band``, ``kind`` or ``frame`` is not a plain name (the message names it).
    """
    for what, value in (("band", band), ("kind", kind), ("frame", frame)):
        if not is_safe_name(value):
            raise ValueError(
                f"photometry: {what} name {value!r} cannot be used in an output path "
                "(letters, digits, '.', '_', '+', '-' only)"
            )
    return Path(out_dir) / f"band={band}" / f"kind={kind}" / f"{frame}.parquet"


def _is_complete(path: Path, fingerprint: str, inputs: dict[str, Any]) -> bool:
    if not path.is_file():
        return False
    try:
        meta = pq.read_schema(path).metadata or {}
        raw = meta.get(_METADATA_KEY)
        stored = json.loads(raw) if raw is not None else {}
    except Exception:
        return False
    return stored.get("fingerprint") == fingerprint and stored.get("inputs") == inputs


def write_partition(
    table: pd.DataFrame,
    path: str | os.PathLike[str],
    fingerprint: str = "",
    inputs: dict[str, Any] | None = None,
    said: Sequence[str] = (),
) -> Path:
    """Write one (band, kind, frame) table atomically.

    The table goes to a hidden temporary file in the same folder, then ``os.replace`` puts
    it onto ``path``. ``band`` and ``kind`` are dropped from the file (they are the hive
    partition keys); ``fingerprint`` and ``inputs`` are stored in the Parquet metadata
    (key ``pausdenoise_photometry``) so that a rerun knows the file is complete and made
    with the same settings from the same inputs.

    Parameters
    ----------
    table : pandas.DataFrame
        One frame's photometry for one band and kind.
    path : path-like
        Destination (:func:`partition_path`); parent folders are created.
    fingerprint : str, optional
        ``PhotometryConfig.fingerprint()`` of the settings used.
    inputs : dict, optional
        Digests of the partition's inputs (:attr:`Partition.inputs`); default none.
    said : sequence of str, optional
        The warnings its measurement gave, kept in the metadata (``warnings``) for the
        stage to report once for all partitions (:func:`partition_warnings`).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tab = pa.Table.from_pandas(
        table.drop(columns=["band", "kind"], errors="ignore"), preserve_index=False
    )
    meta = dict(tab.schema.metadata or {})
    meta[_METADATA_KEY] = json.dumps(
        {"fingerprint": fingerprint, "inputs": inputs or {}, "rows": len(table),
         "warnings": list(said)}
    ).encode()
    tab = tab.replace_schema_metadata(meta)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        pq.write_table(tab, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _measure_and_write(
    store_path: str,
    frame: str,
    rows: pd.DataFrame,
    config: PhotometryConfig,
    kind: str,
    path: Path,
    inputs: dict[str, Any],
) -> str:
    # the warnings go into the partition's metadata, reported once by the stage for all
    # partitions instead of by every worker as it meets them; catch_warnings swaps
    # process-wide state, so tasks on threads of one process take turns (a worker process
    # of the local cluster runs one task at a time anyway)
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = measure_store_frame(store_path, frame, rows, config, kind)
    said = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    write_partition(table, path, config.fingerprint(), inputs, said)
    return str(path)


#: Held while a partition is measured with its warnings caught (see :func:`_measure_and_write`).
_WARNINGS_LOCK = threading.Lock()

#: A warning's frame prefix, dropped to tell the partitions' warnings apart by content.
_FRAME_PREFIX = re.compile(r"exposure \d+ ccd \d+: ")


def partition_warnings(paths: Sequence[str | os.PathLike[str]], limit: int = 3) -> list[str]:
    """Summarise the warnings kept in partition files, one line per distinct warning.

    Parameters
    ----------
    paths : sequence of path-like
        Partition files (:func:`write_partition`); files without the metadata are skipped.
    limit : int
        Partitions named per warning.

    Returns
    -------
    list of str
        ``"<warning> (<n> of <N> partitions: <frame> <kind>, …)"``, the frame prefix
        (``exposure N ccd M: ``) dropped so that one cause on many frames is one line;
        in order of first appearance.
    """
    seen: dict[str, list[str]] = {}
    for p in paths:
        p = Path(p)
        try:
            meta = pq.read_schema(p).metadata or {}
            said = json.loads(meta.get(_METADATA_KEY, b"{}")).get("warnings", [])
        except Exception:  # unreadable or foreign file: nothing to report from it
            continue
        where = f"{p.stem} {p.parent.name.removeprefix('kind=')}"
        for text in said:
            where_seen = seen.setdefault(_FRAME_PREFIX.sub("", text), [])
            if where not in where_seen:
                where_seen.append(where)
    out = []
    for text, where in seen.items():
        shown = ", ".join(where[:limit]) + (", …" if len(where) > limit else "")
        out.append(f"{text} ({len(where)} of {len(paths)} partitions: {shown})")
    return out


def catalogue_rows_digest(rows: pd.DataFrame) -> str:
    """Return a digest of catalogue rows: column names, dtypes and every value, in order.

    Parameters
    ----------
    rows : pandas.DataFrame
        The rows (the index is ignored).

    Returns
    -------
    str
        16 hex characters of a SHA-256.
    """
    h = hashlib.sha256()
    h.update(json.dumps([[str(c) for c in rows.columns],
                         [str(t) for t in rows.dtypes]]).encode())
    try:
        h.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    except TypeError:  # unhashable cells (lists, dicts): their JSON text instead
        h.update(rows.to_json(orient="split", index=False, default_handler=str).encode())
    return h.hexdigest()[:16]


@dataclass(eq=False)
class Partition:
    """One (frame, kind) partition to measure, and the digests of what it is made from.

    Parameters
    ----------
    frame : str
        Frame id.
    kind : str
        ``"raw"`` or ``"denoised"``.
    path : pathlib.Path
        Its file (:func:`partition_path`).
    rows : pandas.DataFrame
        The frame's catalogue rows.
    inputs : dict
        ``image``: the frame's ``source_fingerprint`` attribute (the ingested content;
        ``None`` when the store does not record it); ``denoise_key``: for
        ``kind="denoised"`` the ``denoise_key`` of the frame's ``denoised`` array;
        ``catalogue_rows``: :func:`catalogue_rows_digest` of ``rows``; ``noise``: the gain
        [e⁻/ADU] and read noise [e⁻] in force (the ingest can change them without touching
        the pixels, when a CCD's fit across exposures moves).
    """

    frame: str
    kind: str
    path: Path
    rows: pd.DataFrame
    inputs: dict[str, Any]


def plan_partitions(
    store_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    frames: Sequence[str],
    catalogue: pd.DataFrame,
    config: PhotometryConfig,
) -> list[Partition]:
    """List the (frame, kind) partitions of ``frames`` with their paths and input digests.

    Parameters
    ----------
    store_path : path-like
        The survey store (read: frame attributes and the ``denoised`` array's attributes).
    out_dir : path-like
        Root of the photometry output (:func:`partition_path`).
    frames : sequence of str
        Frame ids to measure.
    catalogue : pandas.DataFrame
        The reference catalogue of all frames (``REQUIRED_COLUMNS``, ``expnum``, ``ccd``;
        ``band`` when present names the partition, else the frame's ``band`` attribute).
    config : PhotometryConfig
        Photometry settings; ``config.kinds`` says which images.

    Returns
    -------
    list of Partition
        Frame-major, kinds in ``config.kinds`` order.

    Raises
    ------
    KeyError
        When a required catalogue column is missing.
    """
    _require_columns(catalogue, (*REQUIRED_COLUMNS, "expnum", "ccd"))
    groups = {k: g for k, g in catalogue.groupby(["expnum", "ccd"], sort=False)}
    band_of = {}
    if "band" in catalogue.columns:
        band_of = catalogue.groupby(["expnum", "ccd"], sort=False)["band"].first().to_dict()
    root = open_store(store_path, mode="r")["frames"]
    plans = []
    for frame in frames:
        e, c = parse_frame_id(frame)
        grp = root[frame]
        attrs = dict(grp.attrs)
        band = band_of.get((e, c))
        if band is None:
            band = str(attrs.get("band", "unknown"))
        rows = groups.get((e, c), catalogue.iloc[:0]).reset_index(drop=True)
        base = {"image": attrs.get("source_fingerprint"),
                "catalogue_rows": catalogue_rows_digest(rows),
                "noise": [attrs.get("gain"), attrs.get("rdnoise")]}
        for kind in config.kinds:
            inputs = dict(base)
            if kind == "denoised":
                den = grp.get(_IMAGE_OF_KIND[kind])
                inputs["denoise_key"] = None if den is None else den.attrs.get("denoise_key")
            plans.append(Partition(frame, kind, partition_path(out_dir, band, kind, frame),
                                   rows, inputs))
    return plans


def partition_tasks(
    store_path: str | os.PathLike[str],
    plans: Sequence[Partition],
    config: PhotometryConfig,
    *,
    overwrite: bool = False,
) -> list[Any]:
    """Build one ``dask.delayed`` measure-and-write task per partition not up to date.

    A partition is up to date when its file exists and its metadata holds this config's
    fingerprint and the partition's input digests (:class:`Partition`).

    Parameters
    ----------
    store_path : path-like
        The survey store.
    plans : sequence of Partition
        The partitions (:func:`plan_partitions`).
    config : PhotometryConfig
        Photometry settings (``kinds`` is not used: each partition names its kind).
    overwrite : bool, optional
        Remeasure up-to-date partitions too. Default False.

    Returns
    -------
    list of dask.delayed.Delayed
        Each returns the path written, as str.
    """
    fp = config.fingerprint()
    return [
        dask.delayed(_measure_and_write, pure=False)(
            str(store_path), p.frame, p.rows, config, p.kind, p.path, p.inputs,
            dask_key_name=f"photometry-write-{p.frame}-{p.kind}",
        )
        for p in plans
        if overwrite or not _is_complete(p.path, fp, p.inputs)
    ]


def remove_stale_partitions(
    out_dir: str | os.PathLike[str], plans: Sequence[Partition]
) -> list[Path]:
    """Delete the partition files under ``out_dir`` that no planned partition owns.

    Such files were measured for a frame no longer in the store, a frame without a complete
    denoised image now, a band the catalogue no longer gives, or a kind no longer
    configured; left in place, :func:`read_photometry` would return their rows.

    Parameters
    ----------
    out_dir : path-like
        Root of the photometry output.
    plans : sequence of Partition
        Every partition of the current configuration (:func:`plan_partitions`).

    Returns
    -------
    list of pathlib.Path
        The files deleted, sorted.
    """
    root = Path(out_dir)
    if not root.is_dir():
        return []
    keep = {p.path.resolve() for p in plans}
    stale = sorted(f for f in root.glob("band=*/kind=*/*.parquet") if f.resolve() not in keep)
    for f in stale:
        f.unlink()
    return stale


def run_photometry(
    store_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    frames: Sequence[str],
    catalogue: pd.DataFrame,
    config: PhotometryConfig,
    *,
    overwrite: bool = False,
    compute: bool = True,
) -> list[Path] | list[Any]:
    """Measure every (frame, kind) not up to date under ``out_dir`` and write its file.

    Uses whatever Dask scheduler is active (a ``distributed.Client`` when one exists). A
    partition is up to date when its file exists and carries this config's fingerprint and
    the digests of its inputs (:func:`plan_partitions`); those are skipped unless
    ``overwrite``.

    Parameters
    ----------
    store_path : path-like
        The survey store.
    out_dir : path-like
        Root of the photometry output (:func:`partition_path`).
    frames : sequence of str
        Frame ids to measure.
    catalogue : pandas.DataFrame
        The reference catalogue of all frames (``REQUIRED_COLUMNS``, ``expnum``, ``ccd``;
        ``band`` when present names the partition, else the frame's ``band`` attribute).
    config : PhotometryConfig
        Photometry settings.
    overwrite : bool, optional
        Remeasure up-to-date partitions too. Default False.
    compute : bool, optional
        Run the tasks (default) or only return them.

    Returns
    -------
    list of pathlib.Path, or list of dask.delayed.Delayed
        The paths written, or with ``compute=False`` the delayed tasks.

    Raises
    ------
    KeyError
        When a required catalogue column is missing.
    """
    plans = plan_partitions(store_path, out_dir, frames, catalogue, config)
    tasks = partition_tasks(store_path, plans, config, overwrite=overwrite)
    if not compute:
        return tasks
    return [Path(p) for p in dask.compute(*tasks)] if tasks else []


# --------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------


def photometry_bands(out_dir: str | os.PathLike[str]) -> list[str]:
    """List the bands :func:`run_photometry` wrote (its ``band=<name>`` partitions).

    Parameters
    ----------
    out_dir : path-like
        Root of the photometry output.

    Returns
    -------
    list of str
        Band names with at least one Parquet file, sorted; empty when ``out_dir`` is absent.
    """
    root = Path(out_dir)
    if not root.is_dir():
        return []
    return sorted(
        p.name.split("=", 1)[1]
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("band=") and any(p.rglob("*.parquet"))
    )


def band_has_columns(out_dir: str | os.PathLike[str], band: str,
                     columns: Sequence[str]) -> bool:
    """Say whether every Parquet file of a band holds the given columns (read from footers).

    Partitions written before a column existed lack it; reading it from them fails.

    Parameters
    ----------
    out_dir : path-like
        Root of the photometry output.
    band : str
        The band (its ``band=<name>`` partition).
    columns : sequence of str
        Photometry columns.

    Returns
    -------
    bool
        True when the band has files and each holds all of ``columns``.
    """
    files = list((Path(out_dir) / f"band={band}").rglob("*.parquet"))
    return bool(files) and all(set(columns) <= set(pq.read_schema(f).names) for f in files)


def read_photometry(
    out_dir: str | os.PathLike[str],
    bands: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read what :func:`run_photometry` wrote back into one table.

    Parameters
    ----------
    out_dir : path-like
        Root of the photometry output.
    bands : sequence of str, optional
        Read only these bands (the Parquet partitions of other bands are not read).
    columns : sequence of str, optional
        Read only these columns (a subset of ``OUTPUT_COLUMNS``); ``band`` and ``kind`` are
        always included.

    Returns
    -------
    pandas.DataFrame
        ``band`` and ``kind`` restored as str columns, columns in ``OUTPUT_COLUMNS`` order
        and dtypes, fresh ``RangeIndex``; an empty table of that schema when nothing was
        written. A float column that no file has (photometry written before that column
        existed, e.g. ``aper_frac``) is NaN; one that some files have is NaN in the others.

    Raises
    ------
    KeyError
        When ``columns`` names a column that is not a photometry column, or when no file has
        a wanted column that is not a float (the photometry must be measured again).
    """
    wanted = dict(OUTPUT_COLUMNS)
    if columns is not None:
        unknown = set(columns) - set(OUTPUT_COLUMNS)
        if unknown:
            raise KeyError(f"not photometry columns: {', '.join(sorted(unknown))}")
        keep = set(columns) | {"band", "kind"}
        wanted = {c: t for c, t in OUTPUT_COLUMNS.items() if c in keep}
    if not Path(out_dir).is_dir() or not any(Path(out_dir).rglob("*.parquet")):
        return _empty_table()[list(wanted)]
    dataset = ds.dataset(str(out_dir), format="parquet", partitioning="hive")
    written = set(dataset.schema.names)
    absent = [c for c in wanted if c not in written]
    not_float = [c for c in absent if not wanted[c].startswith("float")]
    if not_float:
        raise KeyError(f"the photometry in {out_dir} has no column(s) "
                       f"{', '.join(not_float)} (written by an earlier version): rerun the "
                       "photometry stage")
    flt = ds.field("band").isin(list(bands)) if bands is not None else None
    df = dataset.to_table(columns=[c for c in wanted if c in written],
                          filter=flt).to_pandas()
    if df.empty:
        return _empty_table()[list(wanted)]
    for c in absent:  # measured by later versions only: not measured here
        df[c] = np.nan
    for c in ("band", "kind"):
        df[c] = df[c].astype(str)
    return df[list(wanted)].astype(wanted).reset_index(drop=True)
