"""FITS → survey store: the PAUS reduced layout and generic (multi-extension) FITS frames.

The stage runs in three steps:

1. **Plan** (:func:`plan_ingest`): find the image files, read only their headers (one dask
   task per file), resolve each frame's ``(expnum, ccd)``, shape and companion files, and
   refuse — per frame, with the file and keyword named — what cannot be ingested: non-FITS or
   unreadable files, missing header keys, a PAUS file whose EXPNUM/CCD disagree with its name,
   missing companions, duplicate ``(expnum, ccd)`` in one batch (every claimant fails, the
   store keeps what it had), and (when ``require_same_shape``) a shape that disagrees with
   the frames already in the store.
2. **Read** (:func:`read_frame`, pure): one frame's pixels and metadata in a
   :class:`FrameData`; checks truncation and image/mask/weight shapes.
3. **Write** (:func:`write_frame_data`): :func:`pausdenoise.store.write_frame` — arrays, then
   attributes, then ``complete=True``.

:func:`ingest` runs steps 2–3 as one dask task per image file on the current scheduler (or
a given :class:`distributed.Client`), and returns an :class:`IngestReport` (ingested /
skipped / failed with reasons, and an exit status). It is idempotent: each frame records a
``source_fingerprint`` (sha256 of every source file it came from, the HDU, and the
configuration fields that change what is stored); a complete frame with the same fingerprint
is skipped, a changed one is re-ingested, a frame whose earlier writing was interrupted
(``complete`` not True) is redone. Hashing every file on every rerun is costly at survey
scale, so a cheap ``source_stat`` (paths, sizes, mtimes in ns) is recorded too: when it is
unchanged the frame is skipped without hashing (``verify_hash=True`` always hashes); when it
changed (files touched, copied or moved) the sha256 fingerprint decides. Chunking and
compression are not part of the fingerprint (use ``force=True`` to rewrite with new ones).

The pixel conventions (types, masks, weights) are described in
:mod:`pausdenoise.ingest.frame`, the zero-points in :mod:`pausdenoise.ingest.metadata`.

Sub-modules
-----------
config
    :class:`IngestConfig`, :class:`HeaderKeys`, :class:`ZeroPointTable` (no astropy, dask
    or torch).
fits
    FITS structure checks, safe HDU reads, pixel/mask/weight conversions, WCS cards.
metadata
    Header keyword lookup, zero-points, value checks.
plan
    :func:`find_images`, :class:`FrameSource`, :func:`plan_ingest`.
frame
    :class:`FrameData`, :func:`read_frame`, :func:`source_fingerprint`, :func:`source_stat`.
noise
    :func:`noise_attrs` (gain, read noise and noise correlation fitted from a frame's pixels,
    and the gain in force), :func:`noise_table`.
driver
    :class:`IngestReport`, :func:`write_frame_data`, the dask tasks and :func:`ingest`.
"""

from pausdenoise._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "EXIT_FATAL": "driver",
        "EXIT_OK": "driver",
        "EXIT_PARTIAL": "driver",
        "FrameData": "frame",
        "FrameSource": "plan",
        "HeaderKeys": "config",
        "IngestConfig": "config",
        "IngestError": "fits",
        "IngestReport": "driver",
        "SAFE_NAME": "config",
        "ZeroPointTable": "config",
        "apply_mask_convention": "fits",
        "file_sha256": "fits",
        "find_images": "plan",
        "ingest": "driver",
        "noise_attrs": "noise",
        "noise_table": "noise",
        "plan_ingest": "plan",
        "read_frame": "frame",
        "source_fingerprint": "frame",
        "source_stat": "frame",
        "wcs_header_text": "fits",
        "write_frame_data": "driver",
        "zp_factor_from_mag": "metadata",
    },
)
