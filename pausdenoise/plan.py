"""Dry-run planner: how many tasks, how many bytes, how much memory, how long.

:func:`plan_run` does arithmetic only (no store, no cluster, no torch): given the size of a
survey (exposures × CCDs of a given shape), the store chunking, the cluster (CPU workers,
GPUs) and **measured per-stage rates**, it returns a :class:`PlanReport` with, per stage,
the number of tasks, the bytes read and written, the expected wall time, the expected memory
of a denoise worker, and the total.

Rates
-----
Every rate is *per single-threaded CPU worker process* (or per GPU for the ``*_gpu_*`` keys)
and is an explicit argument: pass ``rates={...}`` (``--rate KEY=VALUE`` on the command line)
to override any of :data:`MEASURED_RATES`. Its values were measured with ``python
benchmarks/run_all.py --quick`` on the project's development machine (2 vCPUs "AMD EPYC", no
GPU) when it was quiet (load average 0.47 at the start), one single-threaded worker each;
they are recorded in ``benchmarks/RESULTS.md``, section "run_all 2026-11-21 11:25 UTC
(quick)", except the denoise rate, taken from the full-size 18-CCD exposure of section
"Denoise at full size" (12:16 UTC; the quick run's 2048² frame gave 0.473, first-forward
costs and edge blocks weigh less there); it includes the per-worker
TorchScript/channels-last network copy. Rates on this shared machine varied up to 3× with
the load: treat them as order-of-magnitude figures for one CPU core and pass your own.

=========================  ========  ==============================================
key                        value     source
=========================  ========  ==============================================
``ingest_mb_s``            38.5      ``benchmarks/bench_ingest.py``: PAUS FITS (image +
                                     mask) → Zarr, 1 worker, MB of FITS input per s
``train_patches_s``        41.8      ``benchmarks/bench_train.py``: N2V depth 2/32 ch,
                                     64² patches, CPU, one process
``denoise_mpix_s``         0.347     ``benchmarks/bench_denoise.py --ccds 18``: a full
                                     PAUCam exposure (18 × 4096×2048), depth 2/32 ch,
                                     float32, 1024² chunks, 1 worker, end to end
                                     (zarr → zarr); bfloat16 on CPU ≈ 2.1–2.3× this
``store_read_mb_s``        504       ``benchmarks/bench_ingest.py``: reading frames back
                                     from the store (decompression), one process, MB of
                                     stored (compressed) bytes per s
``photometry_sources_s``   3420      ``benchmarks/bench_photometry.py``: measure_frame,
                                     full PAUS recipe, dask, 1 worker: 7780 (image in
                                     memory: the store read is added from
                                     ``store_read_mb_s``), × 0.44 for the profile fit and
                                     the aperture corrections (``aper_frac``,
                                     ``aper_neighbours``) that
                                     measure_frame adds by default (aperture +
                                     profile against aperture alone side by side,
                                     ``benchmarks/bench_profile_photometry.py``)
``compare_pairs_s``        2.56e6    ``benchmarks/bench_compare.py``: pandas widen +
                                     make_pairs + summarise, in-process
``*_gpu_*``                None      **not measured** (no GPU was available); a plan with
                                     ``gpus > 0`` reports those stages as unknown unless
                                     you pass a rate
=========================  ========  ==============================================

Model of the wall time
----------------------
Stages run one after another (as ``pausdenoise run`` does). A parallel stage with ``T``
tasks on ``W`` workers takes ``work / (rate · min(W, T) · parallel_efficiency)``, so it
scales as 1/W until there are fewer tasks than workers. Photometry adds the time to read
its frames from the store (``store_read_mb_s`` per worker). With ``io_gb_s`` (aggregate
bandwidth of the shared file system, both directions) a stage takes at least
``(read + written) / io_gb_s``; by default I/O is not limiting, which is optimistic for a
large cluster on one file system. Training is one process (or one DDP job over the GPUs);
compare pairs each band in its own task but fits the error
model and the statistics in one process (on at most ``compare.max_pairs`` pairs), so it is
modelled as one process.

Bytes
-----
Input FITS: float32 image + uint8 mask (5 B/px). The store holds them compressed
(``compression_ratio`` = compressed/raw, Blosc-zstd with byte shuffle; 0.53 measured by
the ingest benchmark on synthetic sky + Gaussian noise frames: real frames may differ) and
the float32 ``denoised`` output (same ratio assumed). Photometry reads image + mask per
kind (raw, denoised) and writes ``photometry_row_bytes`` per measurement (Parquet). Compare
reads the photometry twice (pairing, which also checks calibrated zero-points, then
writing each measurement's calibrated error; uncalibrated frames once more for their
relative zero-points), 12 of its 35 columns each time with the default aperture
corrections
(:data:`COMPARE_COLUMN_SHARE` of a row's bytes, assuming columns of equal size), and 2 of
them once more to count the aperture shares (:data:`COMPARE_SHARE_COUNT`).

Memory of a denoise worker
--------------------------
``worker_base_mb`` (Python + torch + dask, measured ≈ 350 MB) + per block in flight
(``threads_per_worker`` of them): the input block with its halo ((chunk + 2·halo)² px ×
5 B), the output chunk (4 B/px) and the network's activations,
``activation_factor × base_channels × block_px × 4 B``. ``activation_factor = 8`` was
calibrated on the measured peak RSS of 1.6 GB/worker at 32 channels with 1024² chunks and
checked against ≈ 0.5 GB at 4 channels (``benchmarks/bench_memory.py``). With
``tile_size`` the block is cut into ``batch_size`` sub-tiles of (tile + 2·halo)² per forward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: Per-worker (CPU) / per-GPU rates measured on the development machine; see the module
#: docstring and ``benchmarks/RESULTS.md``. ``None``: not measured.
#: the share of a photometry row's bytes the compare stage reads per pass (12 of 35
#: columns: its 7 and the 5 of the aperture corrections, with compare.aperture_correction
#: 'auto')
COMPARE_COLUMN_SHARE = 12 / 35
#: the share it reads once to count the aperture shares (aper_frac, flags_prof)
COMPARE_SHARE_COUNT = 2 / 35

MEASURED_RATES: dict[str, float | None] = {
    "ingest_mb_s": 38.5,
    "store_read_mb_s": 504.0,
    "train_patches_s": 41.8,
    "train_gpu_patches_s": None,
    "denoise_mpix_s": 0.347,
    "denoise_gpu_mpix_s": None,
    "photometry_sources_s": 3420.0,
    "compare_pairs_s": 2.56e6,
}

RATE_KEYS = tuple(MEASURED_RATES)

#: The unit of each rate (``--rate KEY=VALUE`` on the command line).
RATE_UNITS: dict[str, str] = {
    "ingest_mb_s": "MB of FITS input/s per worker",
    "store_read_mb_s": "MB read from the store/s per worker",
    "train_patches_s": "patches/s, one process",
    "train_gpu_patches_s": "patches/s per GPU",
    "denoise_mpix_s": "Mpix/s per worker",
    "denoise_gpu_mpix_s": "Mpix/s per GPU",
    "photometry_sources_s": "sources/s per worker",
    "compare_pairs_s": "pairs/s, one process",
}


@dataclass
class StagePlan:
    """One stage of the plan. ``seconds`` is None when no rate is known for the device."""

    name: str
    tasks: int
    work: float
    work_unit: str
    read_bytes: int
    written_bytes: int
    parallelism: int
    device: str
    rate: float | None
    seconds: float | None
    note: str = ""


@dataclass
class PlanReport:
    """What :func:`plan_run` returns: stages, memory per worker, totals and assumptions."""

    stages: list[StagePlan]
    memory: dict[str, float]
    assumptions: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float | None:
        """Sum of the stage times; None when a stage has no known rate."""
        if any(s.seconds is None for s in self.stages):
            return None
        return float(sum(s.seconds for s in self.stages))

    @property
    def total_read_bytes(self) -> int:
        """Sum of the bytes the stages read."""
        return int(sum(s.read_bytes for s in self.stages))

    @property
    def total_written_bytes(self) -> int:
        """Sum of the bytes the stages write."""
        return int(sum(s.written_bytes for s in self.stages))

    def stage(self, name: str) -> StagePlan:
        """Return the plan of one stage.

        Parameters
        ----------
        name : str
            The stage's name (``"ingest"``, ``"train"``, ``"denoise"``, ``"photometry"``,
            ``"compare"``).

        Returns
        -------
        StagePlan
            The first stage of that name.

        Raises
        ------
        KeyError
            If the plan has no such stage.
        """
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Describe the plan as a JSON-serialisable dict.

        Returns
        -------
        dict
            ``stages`` (one dict per :class:`StagePlan`), ``memory``, ``assumptions``, the totals
            (``total_seconds``, ``total_read_bytes``, ``total_written_bytes``) and ``notes``.
        """
        return {
            "stages": [asdict(s) for s in self.stages],
            "memory": dict(self.memory),
            "assumptions": dict(self.assumptions),
            "total_seconds": self.total_seconds,
            "total_read_bytes": self.total_read_bytes,
            "total_written_bytes": self.total_written_bytes,
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """Format the plan as the text table ``pausdenoise plan`` prints.

        Returns
        -------
        str
            The survey line, the GPUs planned for (and their unmeasured rates), one line per
            stage and the total, the memory of a denoise worker (MB) and the notes.
        """
        a = self.assumptions
        lines = [
            f"plan: {a['exposures']} exposure(s) × {a['ccds_per_exposure']} CCD(s) of "
            f"{a['ccd_shape'][0]}×{a['ccd_shape'][1]} px = {a['frames']} frames, "
            f"{a['pixels'] / 1e9:.3f} Gpix; chunks {a['chunk'][0]}×{a['chunk'][1]}, "
            f"halo {a['halo']} px; {a['n_workers']} CPU worker(s)",
            _gpu_line(a),
            "",
            f"{'stage':<11} {'tasks':>9} {'work':>22} {'read':>10} {'written':>10} "
            f"{'par':>5} {'device':>6} {'rate/unit':>12} {'wall time':>12}  note",
        ]
        for s in self.stages:
            rate = "unmeasured" if s.rate is None else f"{s.rate:,.4g}"
            lines.append(
                f"{s.name:<11} {s.tasks:>9,} {s.work:>14,.4g} {s.work_unit:<7} "
                f"{_fmt_bytes(s.read_bytes):>10} {_fmt_bytes(s.written_bytes):>10} "
                f"{s.parallelism:>5} {s.device:>6} {rate:>12} {_fmt_time(s.seconds):>12}  "
                f"{s.note}"
            )
        lines.append(
            f"{'total':<11} {'':>9} {'':>22} {_fmt_bytes(self.total_read_bytes):>10} "
            f"{_fmt_bytes(self.total_written_bytes):>10} {'':>5} {'':>6} {'':>12} "
            f"{_fmt_time(self.total_seconds):>12}"
        )
        m = self.memory
        lines += [
            "",
            f"denoise worker memory: {m['denoise_worker_mb']:,.0f} MB "
            f"(base {m['worker_base_mb']:,.0f} MB + {m['blocks_in_flight']:.0f} block(s) × "
            f"[input+halo {m['block_input_mb']:,.1f} MB + output {m['block_output_mb']:,.1f} MB "
            f"+ activations {m['activations_mb']:,.0f} MB])",
            f"compare (one process) holds ~{m['compare_process_mb']:,.0f} MB of pairs "
            f"(at most compare.max_pairs)",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _gpu_line(a: Mapping[str, Any]) -> str:
    """Say how many GPUs the plan is for and whether their rates are measured.

    Returns
    -------
    str
        One line of the table.
    """
    gpus = a["gpus"]
    if gpus == 0:
        return "GPUs: none (--gpus 0): train and denoise run on the CPU"
    unmeasured = [k for k in ("train_gpu_patches_s", "denoise_gpu_mpix_s")
                  if a["rates"].get(k) is None]
    rates = (f"; rate not measured: {', '.join(unmeasured)} (pass --rate KEY=VALUE)"
             if unmeasured else "")
    return f"GPUs: {gpus} in all: train (DDP) and denoise run on them{rates}"


def _fmt_bytes(n: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} B"


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "unknown"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _pos(name: str, v: float) -> None:
    if not v > 0:
        raise ValueError(f"{name} must be positive, got {v}")


def plan_run(
    exposures: int,
    ccds_per_exposure: int = 18,
    ccd_shape: Sequence[int] = (4096, 2048),
    n_workers: int = 1,
    gpus: int = 0,
    rates: Mapping[str, float | None] | None = None,
    chunk: Sequence[int] | int = (1024, 1024),
    *,
    halo: int = 32,
    base_channels: int = 32,
    tile_size: int | None = None,
    batch_size: int = 4,
    threads_per_worker: int = 1,
    compression_ratio: float = 0.53,
    sources_per_ccd: int = 2000,
    kinds: int = 2,
    exposures_per_source: int = 4,
    train_steps: int = 5000,
    train_batch: int = 64,
    patch_size: int = 64,
    parallel_efficiency: float = 1.0,
    worker_base_mb: float = 350.0,
    activation_factor: float = 8.0,
    io_gb_s: float | None = None,
    photometry_row_bytes: int = 150,
    pair_row_bytes: int = 150,
    max_pairs: int = 10_000_000,
    stages: Sequence[str] = ("ingest", "train", "denoise", "photometry", "compare"),
) -> PlanReport:
    """Plan a run of ``exposures × ccds_per_exposure`` frames of ``ccd_shape`` pixels.

    Parameters
    ----------
    exposures, ccds_per_exposure : int
        Size of the survey (PAUCam: 18 CCDs per exposure).
    ccd_shape : (int, int)
        Rows and columns of a CCD frame, pixels (PAUCam: 4096 × 2048).
    n_workers : int
        Single-threaded CPU worker processes (ingest, photometry; denoise when ``gpus == 0``).
    gpus : int
        GPUs (one denoise worker each; training with DDP over all of them). Their rates
        are ``rates["denoise_gpu_mpix_s"]`` / ``rates["train_gpu_patches_s"]``, unmeasured
        by default, in which case those stages' times are ``None`` (unknown).
    rates : mapping of str to float or None, optional
        Overrides of :data:`MEASURED_RATES` (per worker / per GPU; see the module docstring
        for their sources). Unknown keys are an error.
    chunk : (int, int) or int
        Store chunk (rows, cols) in pixels, or one int for square chunks.
    halo : int
        Halo of the network in px (32 for the default depth-2 U-Net).
    base_channels, tile_size, batch_size, threads_per_worker : int
        Memory model of a denoise worker (module docstring); ``tile_size`` in pixels, None
        for no tiling.
    activation_factor, worker_base_mb : float
        Memory model of a denoise worker (module docstring); ``worker_base_mb`` in MB.
    compression_ratio : float
        Compressed / raw size of the store arrays.
    sources_per_ccd, kinds, exposures_per_source : int
        Catalogue sources per CCD frame, photometry kinds (raw, denoised), and exposures of
        the same band that observe each source (pairs per source: n(n−1)/2).
    train_steps, train_batch, patch_size : int
        Training budget (optimiser steps × patches per step; patch side in pixels);
        ``"train"`` can be left out of ``stages`` when a checkpoint is reused.
    parallel_efficiency : float
        Fraction of linear speed-up achieved by parallel stages (1: ideal).
    io_gb_s : float, optional
        Aggregate file-system bandwidth (GB/s); None: I/O not limiting.
    photometry_row_bytes, pair_row_bytes : int
        Bytes per photometry row on disk and per pair in memory at the compare stage's peak
        (150 measured by ``benchmarks/bench_compare_scale.py``).
    max_pairs : int
        ``compare.max_pairs``: pairs kept for the statistics (a uniform subsample above).
    stages : sequence of str
        Which stages to plan, in order.

    Returns
    -------
    PlanReport
        Per stage tasks, bytes and wall time (s), the memory model and the assumptions.

    Raises
    ------
    ValueError
        For an unknown rate or stage, a non-positive size or rate, a negative ``gpus`` or a
        ``parallel_efficiency`` above 1.
    """
    r = _checked_rates(rates)
    if isinstance(chunk, int):
        chunk = (chunk, chunk)
    cy, cx = (int(c) for c in chunk)
    ny, nx = (int(s) for s in ccd_shape)
    _check_sizes(exposures, ccds_per_exposure, n_workers, cy, cx, ny, nx, kinds,
                 exposures_per_source, parallel_efficiency, compression_ratio, gpus, stages)

    frames = exposures * ccds_per_exposure
    px = frames * ny * nx
    z = _Survey(
        frames=frames,
        px=px,
        chunks_per_frame=math.ceil(ny / cy) * math.ceil(nx / cx),
        fits_bytes=px * 5,  # float32 image + uint8 mask
        n_workers=n_workers,
        gpus=gpus,
        compression_ratio=compression_ratio,
        parallel_efficiency=parallel_efficiency,
        io_gb_s=io_gb_s,
    )
    notes: list[str] = []
    planners = {
        "ingest": lambda: _plan_ingest(z, r),
        "train": lambda: _plan_train(z, r, train_steps, train_batch, patch_size, notes),
        "denoise": lambda: _plan_denoise(z, r, notes),
        "photometry": lambda: _plan_photometry(z, r, sources_per_ccd, kinds,
                                               photometry_row_bytes),
        "compare": lambda: _plan_compare(z, r, sources_per_ccd, kinds, exposures_per_source,
                                         photometry_row_bytes),
    }
    out = [planners[name]() for name in stages]

    memory = _worker_memory(
        cy, cx, halo, tile_size, batch_size, base_channels, activation_factor,
        threads_per_worker, worker_base_mb,
    )
    pairs_all = frames * sources_per_ccd * (exposures_per_source - 1) / 2
    memory["compare_process_mb"] = min(pairs_all, max_pairs) * pair_row_bytes / 2**20
    if memory["compare_process_mb"] > 16 * 1024:
        notes.append(f"compare would hold ~{memory['compare_process_mb'] / 1024:,.0f} GB of "
                     "pairs in one process: lower compare.max_pairs")
    if gpus > 0 and ("ingest" in stages or "photometry" in stages):
        notes.append(f"ingest and photometry run on the {n_workers} CPU worker(s)")
    assumptions = {
        "exposures": exposures, "ccds_per_exposure": ccds_per_exposure,
        "ccd_shape": [ny, nx], "frames": frames, "pixels": px, "chunk": [cy, cx],
        "chunks_per_frame": z.chunks_per_frame, "halo": halo, "n_workers": n_workers,
        "gpus": gpus, "rates": r, "base_channels": base_channels, "tile_size": tile_size,
        "batch_size": batch_size, "threads_per_worker": threads_per_worker,
        "compression_ratio": compression_ratio, "sources_per_ccd": sources_per_ccd,
        "kinds": kinds, "exposures_per_source": exposures_per_source,
        "train_steps": train_steps, "train_batch": train_batch, "patch_size": patch_size,
        "parallel_efficiency": parallel_efficiency, "activation_factor": activation_factor,
        "io_gb_s": io_gb_s,
        "stages": list(stages),
    }
    return PlanReport(out, memory, assumptions, notes)


def _checked_rates(rates: Mapping[str, float | None] | None) -> dict[str, float | None]:
    """Apply the overrides to :data:`MEASURED_RATES`; check every known rate > 0.

    Returns
    -------
    dict of str to float or None
        The rates to plan with.

    Raises
    ------
    ValueError
        For an unknown key or a non-positive rate.
    """
    r: dict[str, float | None] = dict(MEASURED_RATES)
    for k, v in (rates or {}).items():
        if k not in MEASURED_RATES:
            raise ValueError(f"unknown rate {k!r}; known rates: {', '.join(RATE_KEYS)}")
        r[k] = None if v is None else float(v)
    for k, v in r.items():
        if v is not None:
            _pos(f"rate {k}", v)
    return r


def _check_sizes(exposures: int, ccds_per_exposure: int, n_workers: int, cy: int, cx: int,
                 ny: int, nx: int, kinds: int, exposures_per_source: int,
                 parallel_efficiency: float, compression_ratio: float, gpus: int,
                 stages: Sequence[str]) -> None:
    """Reject non-positive sizes, a negative GPU count, an efficiency above 1, unknown stages.

    Raises
    ------
    ValueError
        For the first offending value.
    """
    for name, v in (("exposures", exposures), ("ccds_per_exposure", ccds_per_exposure),
                    ("n_workers", n_workers), ("chunk rows", cy), ("chunk cols", cx),
                    ("ccd rows", ny), ("ccd cols", nx), ("kinds", kinds),
                    ("exposures_per_source", exposures_per_source),
                    ("parallel_efficiency", parallel_efficiency),
                    ("compression_ratio", compression_ratio)):
        _pos(name, v)
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    if parallel_efficiency > 1:
        raise ValueError("parallel_efficiency must be <= 1")
    unknown = set(stages) - {"ingest", "train", "denoise", "photometry", "compare"}
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}")


@dataclass(frozen=True)
class _Survey:
    """The sizes every stage's plan needs, and the wall-time model."""

    frames: int
    px: int
    chunks_per_frame: int
    fits_bytes: int
    n_workers: int
    gpus: int
    compression_ratio: float
    parallel_efficiency: float
    io_gb_s: float | None

    def wall(self, work: float, rate: float | None, par: int, io_bytes: float = 0.0,
             extra_per_worker: float = 0.0) -> float | None:
        """Return the seconds for ``work`` at ``rate`` on ``par`` workers.

        Returns
        -------
        float or None
            None without a rate.
        """
        if rate is None:
            return None
        t = (work / rate + extra_per_worker) / (par * self.parallel_efficiency)
        if self.io_gb_s:
            t = max(t, io_bytes / (self.io_gb_s * 1e9))
        return t


def _plan_ingest(z: _Survey, r: Mapping[str, float | None]) -> StagePlan:
    tasks = z.frames  # one task per image file (one frame)
    par = min(z.n_workers, tasks)
    mb = z.fits_bytes / 1e6
    return StagePlan(
        "ingest", tasks, mb, "MB", z.fits_bytes, int(z.fits_bytes * z.compression_ratio),
        par, "cpu", r["ingest_mb_s"],
        z.wall(mb, r["ingest_mb_s"], par, z.fits_bytes * (1 + z.compression_ratio)),
        "FITS image+mask → compressed Zarr")


def _plan_train(z: _Survey, r: Mapping[str, float | None], train_steps: int,
                train_batch: int, patch_size: int, notes: list[str]) -> StagePlan:
    patches = train_steps * train_batch
    read = int(patches * patch_size**2 * 5 * z.compression_ratio)
    if z.gpus > 0:
        rate, par, dev = r["train_gpu_patches_s"], z.gpus, "gpu"
        note = f"DDP over {z.gpus} GPU(s)" if rate else f"{z.gpus} GPU(s); GPU rate not measured"
    else:
        rate, par, dev = r["train_patches_s"], 1, "cpu"
        note = "one process (torch threads); no worker scaling"
    if rate is None:
        notes.append("training time unknown: the GPU rate is not measured; pass "
                     "--rate train_gpu_patches_s=VALUE (patches/s per GPU)")
    return StagePlan(
        "train", 1 if dev == "cpu" else z.gpus, patches, "patches", read, 0, par, dev,
        rate, z.wall(patches, rate, par), note)


def _plan_denoise(z: _Survey, r: Mapping[str, float | None], notes: list[str]) -> StagePlan:
    tasks = z.frames * z.chunks_per_frame
    mpix = z.px / 1e6
    read = int(z.fits_bytes * z.compression_ratio)
    written = int(z.px * 4 * z.compression_ratio)
    if z.gpus > 0:
        rate, par, dev = r["denoise_gpu_mpix_s"], min(z.gpus, tasks), "gpu"
        note = (f"one worker per GPU, {par} GPU(s)" if rate
                else f"{par} GPU(s); GPU rate not measured")
    else:
        rate, par, dev = r["denoise_mpix_s"], min(z.n_workers, tasks), "cpu"
        note = "map_overlap, one task per chunk"
    if rate is None:
        notes.append("denoise time unknown: the GPU rate is not measured; pass "
                     "--rate denoise_gpu_mpix_s=VALUE (Mpix/s per GPU) or plan with --gpus 0")
    return StagePlan("denoise", tasks, mpix, "Mpix", read, written, par, dev,
                     rate, z.wall(mpix, rate, par, read + written), note)


def _plan_photometry(z: _Survey, r: Mapping[str, float | None], sources_per_ccd: int,
                     kinds: int, photometry_row_bytes: int) -> StagePlan:
    tasks = z.frames * kinds  # one partition per frame and kind
    n_src = z.frames * sources_per_ccd * kinds
    read = int(z.px * 5 * z.compression_ratio * kinds)
    written = n_src * photometry_row_bytes
    par = min(z.n_workers, tasks)
    read_s = read / 1e6 / r["store_read_mb_s"] if r["store_read_mb_s"] else 0.0
    return StagePlan(
        "photometry", tasks, n_src, "sources", read, written, par, "cpu",
        r["photometry_sources_s"],
        z.wall(n_src, r["photometry_sources_s"], par, read + written, read_s),
        "forced apertures, raw + denoised" if kinds == 2 else "forced apertures")


def _plan_compare(z: _Survey, r: Mapping[str, float | None], sources_per_ccd: int,
                  kinds: int, exposures_per_source: int,
                  photometry_row_bytes: int) -> StagePlan:
    measurements = z.frames * sources_per_ccd
    pairs = measurements * (exposures_per_source - 1) / 2
    # two passes (pairing with the zero-point check, then the per-measurement errors),
    # each reading the 12 of the 35 photometry columns it uses, and one counting the shares
    read = int(z.frames * sources_per_ccd * kinds * photometry_row_bytes
               * (2 * COMPARE_COLUMN_SHARE + COMPARE_SHARE_COUNT))
    written = int(pairs * 8 * kinds)  # Δf values per kind (df_values.npz)
    return StagePlan(
        "compare", 1, pairs, "pairs", read, written, 1,
        "cpu", r["compare_pairs_s"], z.wall(pairs, r["compare_pairs_s"], 1),
        "pairs per band, statistics in one process (modelled as one process)")


def _worker_memory(cy: int, cx: int, halo: int, tile_size: int | None, batch_size: int,
                   base_channels: int, activation_factor: float, threads_per_worker: int,
                   worker_base_mb: float) -> dict[str, float]:
    """Apply the memory model of a denoise worker (module docstring).

    Returns
    -------
    dict of str to float
        The terms in MiB and the blocks in flight.
    """
    block = (cy + 2 * halo) * (cx + 2 * halo)
    if tile_size:
        act_px = batch_size * (tile_size + 2 * halo) ** 2
    else:
        act_px = block
    block_in = block * 5 / 2**20
    block_out = cy * cx * 4 / 2**20
    act = activation_factor * base_channels * act_px * 4 / 2**20
    per_block = block_in + block_out + act
    worker_mb = worker_base_mb + threads_per_worker * per_block
    return {
        "worker_base_mb": worker_base_mb,
        "blocks_in_flight": threads_per_worker,
        "block_input_mb": block_in,
        "block_output_mb": block_out,
        "activations_mb": act,
        "denoise_worker_mb": worker_mb,
    }


def exposures_per_hour(report_for_one_exposure: PlanReport,
                       stages: Sequence[str] = ("ingest", "denoise", "photometry",
                                                "compare")) -> float | None:
    """Return the exposures per hour implied by a plan of one exposure.

    Only the per-exposure stages count; training is a one-off cost.

    Parameters
    ----------
    report_for_one_exposure : PlanReport
        A plan with ``exposures=1``.
    stages : sequence of str, optional
        The stages that count.

    Returns
    -------
    float or None
        Exposures per hour; None when a stage time is unknown or no stage counts.
    """
    secs = [s.seconds for s in report_for_one_exposure.stages if s.name in stages]
    if not secs or any(s is None for s in secs):
        return None
    return 3600.0 / sum(secs)


def plan_from_config(
    cfg: Any,
    exposures: int,
    ccds_per_exposure: int = 18,
    ccd_shape: Sequence[int] = (4096, 2048),
    n_workers: int | None = None,
    gpus: int = 0,
    rates: Mapping[str, float | None] | None = None,
    **kwargs: Any,
) -> PlanReport:
    """Run :func:`plan_run` with the settings of a pipeline configuration.

    The chunking, halo, network width, tiling and training budget come from a
    :class:`pausdenoise.config.PipelineConfig` (the halo is derived from the network, and
    widened for the catalogue restoration, as the pipeline does).

    Parameters
    ----------
    cfg : PipelineConfig
        The pipeline configuration.
    exposures, ccds_per_exposure : int
        Size of the survey.
    ccd_shape : (int, int)
        Rows and columns of a CCD frame, pixels.
    n_workers : int, optional
        CPU workers; default ``cfg.cluster.n_workers`` (or 1).
    gpus : int, optional
        GPUs. Default 0.
    rates : mapping of str to float or None, optional
        Overrides of :data:`MEASURED_RATES`.
    **kwargs
        Override anything else :func:`plan_run` takes.

    Returns
    -------
    PlanReport
        The plan.
    """
    from pausdenoise.config import denoise_overlap  # after the CLI configures logging

    halo, _ = denoise_overlap(cfg)  # with the catalogue restoration's reach when it is on
    args: dict[str, Any] = {
        "chunk": tuple(cfg.ingest.chunks),
        "halo": halo,
        "base_channels": cfg.train.unet.base_channels,
        "tile_size": cfg.denoise.tile_size,
        "batch_size": cfg.denoise.batch_size,
        "threads_per_worker": cfg.cluster.threads_per_worker,
        "train_steps": cfg.train.epochs * cfg.train.steps_per_epoch,
        "train_batch": cfg.train.batch_size,
        "patch_size": cfg.train.patch_size,
        "kinds": len(cfg.photometry.kinds),
    }
    args.update(kwargs)
    workers = n_workers if n_workers is not None else (cfg.cluster.n_workers or 1)
    return plan_run(exposures, ccds_per_exposure, ccd_shape, workers, gpus, rates, **args)
