"""Dask execution backends: one typed config, one context manager that yields a client.

A cluster is named by a *spec string* (the ``--cluster`` option of ``pausdenoise run``):

``threads``
    No distributed scheduler: dask's threaded scheduler in this process (tiny runs, tests).
    :func:`make_client` yields ``None``.
``local``
    A :class:`distributed.LocalCluster` of worker *processes* on this machine.
``cuda``
    ``dask_cuda.LocalCUDACluster``: one worker process per visible GPU, a device memory limit
    above which device data spills to host memory (and host memory spills to disk).
``scheduler-file:PATH``
    Connect to a running scheduler that wrote ``PATH`` (``dask scheduler --scheduler-file``);
    the pattern of the SLURM / HTCondor batch recipes in ``deploy/``.
``address:tcp://HOST:PORT`` (or ``tls://``; a bare ``tcp://`` / ``tls://`` address also works)
    Connect to a running scheduler by address (Kubernetes, a manually started cluster).
``slurm`` / ``htcondor``
    Submit worker jobs with dask-jobqueue (``SLURMCluster`` / ``HTCondorCluster``) from this
    process, which runs the scheduler; see :class:`JobQueueConfig`.

:func:`make_client` starts what the spec asks for and, on exit, closes what it started: a
LocalCluster, a LocalCUDACluster, a jobqueue cluster (its jobs are cancelled). An *external*
scheduler (``scheduler-file:``, ``address:``) is never shut down — only the client
disconnects.

Threads rule (PyTorch threads x dask threads oversubscribe the cores otherwise): a worker that
runs ``threads_per_worker`` dask tasks at once on ``cores`` cores gives each task
``max(1, cores // threads_per_worker)`` torch intra-op threads — see
:func:`torch_threads_per_task` and :class:`TorchThreads`. GPU workers run one task at a time
(``threads_per_worker=1``); their torch CPU threads only feed the device.

The dashboard binds to 127.0.0.1 unless ``dashboard_address`` says otherwise; reach a remote
one with an SSH tunnel (``ssh -L 8787:127.0.0.1:8787 host``), never by exposing it.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dask
from dask.system import CPU_COUNT
from dask.utils import format_bytes
from distributed import Client, LocalCluster, Security
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.system import MEMORY_LIMIT
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pausdenoise.redact import redact_text

if TYPE_CHECKING:  # pragma: no cover
    import distributed

__all__ = [
    "KINDS",
    "ClusterConfig",
    "CudaConfig",
    "JobQueueConfig",
    "TLSConfig",
    "TorchThreads",
    "cluster_summary",
    "describe",
    "make_client",
    "make_jobqueue_cluster",
    "parse_spec",
    "render_job_script",
    "set_torch_threads",
    "torch_threads_per_task",
]

Kind = Literal["threads", "local", "cuda", "scheduler-file", "address", "slurm", "htcondor"]
#: The cluster kinds a spec string may name, in the order the documentation lists them.
KINDS: tuple[str, ...] = (
    "threads",
    "local",
    "cuda",
    "scheduler-file",
    "address",
    "slurm",
    "htcondor",
)
_ADDRESS_SCHEMES = ("tcp://", "tls://", "ucx://")
_SPEC_HELP = (
    "expected one of: 'threads', 'local', 'cuda', 'slurm', 'htcondor', "
    "'scheduler-file:PATH', 'address:tcp://HOST:PORT' (or tls://)"
)

# Environment variables that size the OpenMP / BLAS thread pools torch and numpy use.
# Even without a dashboard a scheduler serves /health and /metrics over HTTP; keep that local.
_NO_DASHBOARD_HTTP = "127.0.0.1:0"
_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def parse_spec(spec: str) -> tuple[Kind, str | None]:
    """Split a cluster spec string into ``(kind, target)``.

    Parameters
    ----------
    spec : str
        A spec string (module docstring): ``threads``, ``local``, ``cuda``, ``slurm``,
        ``htcondor``, ``scheduler-file:PATH``, ``address:tcp://HOST:PORT`` (or ``tls://``;
        a bare ``tcp://`` / ``tls://`` / ``ucx://`` address also works). Surrounding blanks are
        ignored.

    Returns
    -------
    tuple of (str, str or None)
        The kind and its target: the scheduler-file path or the scheduler address, ``None``
        for the kinds that take none.

    Raises
    ------
    ValueError
        For anything else, naming the accepted forms.
    """
    if not isinstance(spec, str):
        raise ValueError(f"cluster spec must be a string, got {type(spec).__name__}; {_SPEC_HELP}")
    text = spec.strip()
    if text in ("threads", "local", "cuda", "slurm", "htcondor"):
        return text, None  # type: ignore[return-value]
    if text.startswith(_ADDRESS_SCHEMES):  # bare address shorthand
        text = "address:" + text
    kind, sep, target = text.partition(":")
    if sep and kind == "scheduler-file":
        if not target.strip():
            raise ValueError(f"cluster spec {spec!r}: 'scheduler-file:' needs a path")
        return "scheduler-file", target.strip()
    if sep and kind == "address":
        target = target.strip()
        if not target.startswith(_ADDRESS_SCHEMES):
            raise ValueError(
                f"cluster spec {spec!r}: the address must start with one of "
                f"{', '.join(_ADDRESS_SCHEMES)} (e.g. 'address:tcp://10.0.0.5:8786')"
            )
        host_port = target.split("://", 1)[1]
        if not host_port or ":" not in host_port or not host_port.rsplit(":", 1)[1].isdigit():
            raise ValueError(f"cluster spec {spec!r}: the address needs HOST:PORT")
        return "address", target
    raise ValueError(f"unknown cluster spec {spec!r}; {_SPEC_HELP}")


class TLSConfig(BaseModel):
    """Mutual TLS between client, scheduler and workers.

    PEM files, e.g. from ``deploy/make-certs.sh``. Every party presents a certificate signed
    by the cluster's own CA and verifies the others' against it; plaintext connections are
    refused.
    """

    model_config = ConfigDict(extra="forbid")

    ca_file: Path = Field(description="CA certificate that signed every party's certificate")
    cert: Path = Field(
        description="this party's certificate (client; also used for the "
        "scheduler and workers of a cluster that make_client starts)"
    )
    key: Path = Field(description="private key of `cert`")
    require_encryption: bool = Field(
        default=True, description="refuse plaintext tcp:// connections altogether"
    )

    @field_validator("ca_file", "cert", "key", mode="after")
    @classmethod
    def _expand_user(cls, path: Path) -> Path:
        return path.expanduser()

    @model_validator(mode="after")
    def _files_exist(self) -> TLSConfig:
        for name in ("ca_file", "cert", "key"):
            path = getattr(self, name)
            if not path.is_file():
                raise ValueError(f"TLS {name} file not found: {path}")
        return self

    def to_security(self) -> distributed.Security:
        """Build a :class:`distributed.Security` with this certificate for every role.

        The same object serves a client and the scheduler/workers of a locally started cluster.

        Returns
        -------
        distributed.Security
            The security settings.
        """
        ca, cert, key = str(self.ca_file), str(self.cert), str(self.key)
        return Security(
            tls_ca_file=ca,
            tls_client_cert=cert,
            tls_client_key=key,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_worker_cert=cert,
            tls_worker_key=key,
            require_encryption=self.require_encryption,
        )


class CudaConfig(BaseModel):
    """Options of the ``cuda`` kind (``dask_cuda.LocalCUDACluster``)."""

    model_config = ConfigDict(extra="forbid")

    visible_devices: str | None = Field(
        default=None,
        description="comma-separated GPU ids to use (CUDA_VISIBLE_DEVICES); None = all visible",
    )
    device_memory_limit: str | float = Field(
        default=0.8,
        description="per-GPU size (bytes string or fraction of device memory) above which "
        "device data spills to host memory; 0 disables device spilling",
    )
    rmm_pool_size: str | None = Field(
        default=None, description="RMM pool per worker (e.g. '20GB'); None = no RMM pool"
    )
    jit_unspill: bool = Field(
        default=False, description="dask-cuda just-in-time unspilling (proxy objects)"
    )


class JobQueueConfig(BaseModel):
    """One batch job = one dask worker process (kinds ``slurm`` and ``htcondor``).

    GPU jobs ask for one GPU each (``--gres=gpu:1`` / ``request_gpus = 1``) and advertise the
    dask resource ``GPU=1``; the batch system pins the device. For several GPUs per node in
    one job, use the batch-script recipes in ``deploy/`` (``dask cuda worker`` via srun).
    """

    model_config = ConfigDict(extra="forbid")

    cores: int = Field(default=8, ge=1, description="cores per job (the worker's threads)")
    memory: str = Field(default="48GiB", description="memory per job")
    processes: int = Field(
        default=1, ge=1, description="worker processes per job (cores are split among them)"
    )
    walltime: str = Field(
        default="04:00:00",
        pattern=r"^(\d+-)?(\d+:)?\d+:\d{2}$",
        description="job wall time, [D-]HH:MM:SS (HTCondor: written as +MaxRuntime seconds)",
    )
    queue: str | None = Field(default=None, description="SLURM partition")
    account: str | None = Field(default=None, description="SLURM account")
    gpus_per_job: int = Field(default=0, ge=0, le=1, description="0 (CPU) or 1 GPU per job")
    disk: str = Field(default="20GiB", description="HTCondor scratch disk request per job")
    job_extra_directives: list[str] = Field(
        default_factory=list,
        description="extra header lines: SLURM options ('--constraint=a100'), HTCondor "
        "submit commands ('+SingularityImage = \"...\"', 'requirements = ...')",
    )
    job_script_prologue: list[str] = Field(
        default_factory=list,
        description="shell lines run before the worker (module load, venv activation)",
    )
    python: str | None = Field(
        default=None, description="python on the compute nodes; None = this interpreter"
    )
    interface: str | None = Field(
        default=None, description="network interface for scheduler and workers (e.g. 'ib0')"
    )
    log_directory: str | None = Field(default=None, description="job stdout/stderr folder")
    death_timeout: int = Field(
        default=120, ge=1, description="seconds a worker waits for the scheduler before exiting"
    )
    n_jobs: int = Field(default=1, ge=0, description="jobs to submit (scale)")
    adapt_max_jobs: int | None = Field(
        default=None,
        ge=1,
        description="if set, adapt between n_jobs and this many jobs instead of a fixed scale",
    )

    @model_validator(mode="after")
    def _adapt_range(self) -> JobQueueConfig:
        if self.adapt_max_jobs is not None and self.adapt_max_jobs < self.n_jobs:
            raise ValueError(
                f"adapt_max_jobs ({self.adapt_max_jobs}) must be >= n_jobs ({self.n_jobs})"
            )
        if self.cores % self.processes:
            raise ValueError(
                f"cores ({self.cores}) must be a multiple of processes ({self.processes})"
            )
        return self


class ClusterConfig(BaseModel):
    """Where the pipeline's dask graphs run.

    ``kind`` is the spec string (module docstring); the other fields size the workers of the
    kinds that start them.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        default="local",
        description="cluster spec: threads | local | cuda | scheduler-file:PATH | "
        "address:tcp://HOST:PORT (or tls://) | slurm | htcondor",
    )
    n_workers: int | None = Field(
        default=None,
        ge=1,
        description="local: worker processes (None = cores // threads_per_worker); "
        "cuda: GPUs to use (None = all visible); threads: scheduler threads; "
        "scheduler-file/address: wait until this many workers joined",
    )
    threads_per_worker: int = Field(
        default=1, ge=1, description="dask task threads per worker (1 for GPU workers)"
    )
    memory_limit: str | float = Field(
        default="auto", description="host memory per worker: '8GiB', a fraction, or 'auto'"
    )
    dashboard_address: str | None = Field(
        default="127.0.0.1:0",
        description="dashboard bind address of a scheduler that make_client starts; "
        "localhost by default (tunnel to reach it); None disables it",
    )
    security: TLSConfig | None = Field(default=None, description="mutual TLS; None = plain tcp")
    local_directory: str | None = Field(
        default=None, description="worker scratch / spill directory (node-local disk)"
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch intra-op threads per task; None = torch_threads_per_task rule",
    )
    malloc_trim_threshold: int | None = Field(
        default=None,
        ge=0,
        description="MALLOC_TRIM_THRESHOLD_ of the worker processes that local/cuda start "
        "(bytes). None: glibc's own adaptive thresholds (measured end to end on an 18-CCD "
        "exposure: float32 1.0-1.18x and CPU bfloat16 1.9-2.0x faster than with "
        "distributed's default 65536, 130-400 MB more RSS per worker); 65536 restores "
        "distributed's default",
    )
    connect_timeout: float = Field(
        default=30.0, gt=0, description="seconds to connect / to wait for n_workers"
    )
    cuda: CudaConfig = Field(
        default_factory=CudaConfig, description="Options of kind 'cuda' (one worker per GPU)."
    )
    jobqueue: JobQueueConfig = Field(
        default_factory=JobQueueConfig,
        description="Options of kinds 'slurm' and 'htcondor' (batch jobs of workers).",
    )

    @field_validator("kind")
    @classmethod
    def _valid_kind(cls, value: str) -> str:
        kind, target = parse_spec(value)
        return kind if target is None else f"{kind}:{target}"

    @model_validator(mode="after")
    def _tls_consistent(self) -> ClusterConfig:
        target = self.target
        if self.backend == "address" and target is not None:
            if target.startswith("tcp://") and self.security is not None:
                raise ValueError(
                    f"`security` is configured but the scheduler address {target} is plain "
                    "tcp://; use tls://"
                )
        return self

    @classmethod
    def from_spec(cls, spec: str, **fields: Any) -> ClusterConfig:
        """Build ``ClusterConfig(kind=spec, **fields)``; the ``--cluster`` option's entry point.

        Parameters
        ----------
        spec : str
            The cluster spec string (:func:`parse_spec`).
        **fields
            Any other field of the config.

        Returns
        -------
        ClusterConfig
            The validated config.
        """
        return cls(kind=spec, **fields)

    @property
    def backend(self) -> Kind:
        """The kind without its target: 'threads', 'local', 'scheduler-file', ..."""
        return parse_spec(self.kind)[0]

    @property
    def target(self) -> str | None:
        """Scheduler-file path or scheduler address; None for the other kinds."""
        return parse_spec(self.kind)[1]


# --------------------------------------------------------------------------------------------
# Threads


def torch_threads_per_task(
    cores: int | None = None, threads_per_worker: int = 1, workers_per_node: int = 1
) -> int:
    """Return the torch intra-op threads for one dask task.

    ``max(1, cores // (threads_per_worker * workers_per_node))``, so that the tasks running
    at once on a node never ask for more threads than it has cores.

    Parameters
    ----------
    cores : int, optional
        Cores of the node; default the cores this process may use (affinity and cgroup quota
        aware, ``dask.system.CPU_COUNT``).
    threads_per_worker : int, optional
        Dask tasks a worker runs at once (≥ 1). Default 1.
    workers_per_node : int, optional
        Worker processes sharing the node (≥ 1). Default 1.

    Returns
    -------
    int
        Threads per task, at least 1.

    Raises
    ------
    ValueError
        If ``threads_per_worker`` or ``workers_per_node`` is below 1.
    """
    if cores is None:
        cores = CPU_COUNT
    if threads_per_worker < 1 or workers_per_node < 1:
        raise ValueError("threads_per_worker and workers_per_node must be >= 1")
    return max(1, int(cores) // (threads_per_worker * workers_per_node))


def set_torch_threads(n: int) -> int:
    """Size torch's (and OpenMP/BLAS's) intra-op pool in *this* process to ``n`` threads.

    Sets ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` (read when
    torch's OpenMP runtime loads) and, when torch is already imported, calls
    ``torch.set_num_threads``. Does not import torch.

    Parameters
    ----------
    n : int
        Number of threads (≥ 1).

    Returns
    -------
    int
        ``n``.

    Raises
    ------
    ValueError
        If ``n`` is below 1.
    """
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    for var in _THREAD_ENV_VARS:
        os.environ[var] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n


class TorchThreads(WorkerPlugin):
    """Worker plugin that sets each worker's torch intra-op threads (see module docstring).

    ``threads=None`` applies the rule on the worker itself:
    ``torch_threads_per_task(CPU_COUNT, worker.state.nthreads)``, i.e. it assumes one worker
    per node or per job cgroup (the jobqueue / batch recipes). Clusters that put several
    workers on one node (``local``, ``cuda``) pass an explicit count.

    Parameters
    ----------
    threads : int, optional
        Torch threads per task (≥ 1); None for the rule on each worker.

    Raises
    ------
    ValueError
        If ``threads`` is below 1.
    """

    idempotent = True
    name = "pausdenoise-torch-threads"

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads

    def setup(self, worker: distributed.Worker) -> None:
        """Set the torch threads of ``worker``'s process (called by distributed on each worker).

        Parameters
        ----------
        worker : distributed.Worker
            The worker the plugin is registered on.
        """
        n = self.threads
        if n is None:
            n = torch_threads_per_task(threads_per_worker=worker.state.nthreads)
        set_torch_threads(n)


class _CtrlCToParent(WorkerPlugin):
    """Make a worker process that this run spawned ignore SIGINT (Ctrl-C).

    Ctrl-C in a terminal reaches the whole foreground process group, so the worker processes
    of a local cluster would each print a traceback. The parent process alone handles it
    (it closes the client and the cluster, which stops the workers). Workers of other
    processes (``dask worker``, batch jobs) and in-process workers are left alone.
    """

    idempotent = True
    name = "pausdenoise-ctrl-c-to-parent"

    def setup(self, worker: distributed.Worker) -> None:
        """Ignore SIGINT in ``worker``'s process when it is a spawned child's main thread.

        Parameters
        ----------
        worker : distributed.Worker
            The worker the plugin is registered on.
        """
        if multiprocessing.parent_process() is None:
            return
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------------------------
# Clusters


def _say(message: str) -> None:
    print(f"[pausdenoise.cluster] {message}", file=sys.stderr, flush=True)


def _security(config: ClusterConfig) -> distributed.Security | None:
    return None if config.security is None else config.security.to_security()


def _protocol(config: ClusterConfig) -> str | None:
    return "tls://" if config.security is not None else None


def make_jobqueue_cluster(config: ClusterConfig) -> Any:
    """Build (but do not scale) the dask-jobqueue cluster for kind ``slurm`` / ``htcondor``.

    Starting it starts a scheduler in this process; no job is submitted until ``scale`` /
    ``adapt``.

    Parameters
    ----------
    config : ClusterConfig
        A config of kind ``slurm`` or ``htcondor``; its ``jobqueue`` sizes the jobs.

    Returns
    -------
    dask_jobqueue.SLURMCluster or dask_jobqueue.HTCondorCluster
        The cluster, with no job submitted.

    Raises
    ------
    ValueError
        If the kind is not a jobqueue kind, or an HTCondor extra directive is not
        ``key = value``.
    ImportError
        With the install hint when dask-jobqueue is missing.
    """
    if config.backend not in ("slurm", "htcondor"):
        raise ValueError(f"kind {config.kind!r} is not a jobqueue kind (slurm, htcondor)")
    try:
        import dask_jobqueue  # optional: the cluster extra
    except ImportError as exc:  # pragma: no cover - dev extra installs it
        raise ImportError(
            "the slurm/htcondor kinds need dask-jobqueue: pip install 'pausdenoise[cluster]'"
        ) from exc

    jq = config.jobqueue
    worker_args: list[str] = []
    if jq.gpus_per_job:
        worker_args += ["--resources", f"GPU={jq.gpus_per_job}"]
    kwargs: dict[str, Any] = dict(
        cores=jq.cores,
        memory=jq.memory,
        processes=jq.processes,
        job_script_prologue=list(jq.job_script_prologue),
        worker_extra_args=worker_args,
        death_timeout=jq.death_timeout,
        local_directory=config.local_directory,
        log_directory=jq.log_directory,
        interface=jq.interface,
        security=_security(config),
        protocol=_protocol(config),
        scheduler_options={"dashboard_address": config.dashboard_address}
        if config.dashboard_address is not None
        else {"dashboard": False, "dashboard_address": _NO_DASHBOARD_HTTP},
        name="pausdenoise-worker",  # the dask worker names
        job_name="pausdenoise-worker",  # the batch jobs (#SBATCH -J; default 'dask-worker')
    )
    if jq.python is not None:
        kwargs["python"] = jq.python
    if config.backend == "slurm":
        directives = list(jq.job_extra_directives)
        if jq.gpus_per_job:
            directives.append(f"--gres=gpu:{jq.gpus_per_job}")
        return dask_jobqueue.SLURMCluster(
            walltime=jq.walltime,
            queue=jq.queue,
            account=jq.account,
            job_extra_directives=directives,
            **kwargs,
        )
    directives_dict: dict[str, str] = {}
    for line in jq.job_extra_directives:
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"HTCondor job_extra_directives need 'key = value', got {line!r}")
        directives_dict[key.strip()] = value.strip()
    if jq.gpus_per_job:
        directives_dict["request_gpus"] = str(jq.gpus_per_job)
    # HTCondor has no native wall time; +MaxRuntime (seconds) is the common site convention.
    directives_dict.setdefault("+MaxRuntime", str(_walltime_seconds(jq.walltime)))
    return dask_jobqueue.HTCondorCluster(
        disk=jq.disk, job_extra_directives=directives_dict, **kwargs
    )


def _walltime_seconds(walltime: str) -> int:
    """Convert 'HH:MM:SS' (or 'D-HH:MM:SS', 'MM:SS') to seconds.

    Returns
    -------
    int
        Seconds.
    """
    days, _, clock = walltime.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def render_job_script(config: ClusterConfig) -> str:
    """Render the batch job script that kind ``slurm`` / ``htcondor`` would submit.

    Nothing is submitted (the scheduler the script points at is started and closed again).

    Parameters
    ----------
    config : ClusterConfig
        A config of kind ``slurm`` or ``htcondor``.

    Returns
    -------
    str
        The job script.
    """
    cluster = make_jobqueue_cluster(config)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def _torch_threads_local(config: ClusterConfig, workers_per_node: int) -> int:
    if config.torch_threads is not None:
        return config.torch_threads
    return torch_threads_per_task(
        threads_per_worker=config.threads_per_worker, workers_per_node=workers_per_node
    )


def _check_tls(address: str | None, security: Any, where: str) -> None:
    """Fail early and clearly when a TLS scheduler meets a client without a certificate.

    A client certificate may come from ``ClusterConfig.security`` or from dask's own
    configuration (``distributed.comm.tls.client.cert``, e.g. set by DASK_* environment
    variables in the Kubernetes recipe); distributed picks the latter up by itself.

    Raises
    ------
    ValueError
        When ``address`` is ``tls://`` and no client certificate is configured.
    """
    if not address or not address.startswith("tls://") or security is not None:
        return
    if dask.config.get("distributed.comm.tls.client.cert", None):
        return
    raise ValueError(
        f"{where} listens on {address} (TLS) but no client certificate is configured: set "
        "`security` (ca_file, cert, key) in the cluster config or distributed.comm.tls.* in "
        "the dask config"
    )


def _read_scheduler_address(path: str) -> str | None:
    try:
        return json.loads(Path(path).read_text()).get("address")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def worker_malloc_env(trim_threshold: int | None = None) -> Iterator[None]:
    """Worker processes that nannies spawn in this block get glibc's malloc tuning.

    distributed's nannies export ``MALLOC_TRIM_THRESHOLD_=65536`` to the workers they spawn
    (``distributed.nanny.pre-spawn-environ``) so that freed memory goes back to the OS.
    Setting any malloc threshold switches off glibc's adaptive mmap threshold as well, so
    every buffer over 128 KiB is then mmap'ed and page-faulted afresh on each allocation —
    the U-Net's activations on each forward pass. Measured on one 1088×1056 block (1 thread,
    2-core AMD EPYC; benchmarks/RESULTS.md, "Worker malloc setting"): float32 2.81 s →
    2.51 s and CPU bfloat16 2.12 s → 1.29 s without the setting, peak RSS 1.23 → 1.43 GB.

    Parameters
    ----------
    trim_threshold : int or None
        Bytes for ``MALLOC_TRIM_THRESHOLD_`` in the spawned workers; ``None`` leaves it unset
        (glibc's adaptive defaults).

    Notes
    -----
    A nanny also writes its variables into *this* process's environment before spawning
    (distributed does so on purpose), so the variable is set or removed here for the block
    and restored afterwards. Workers started elsewhere (``dask worker``, batch jobs) read the
    same key from their dask configuration: ``deploy/dask.yaml`` sets it to null.
    """
    key = "MALLOC_TRIM_THRESHOLD_"
    saved = os.environ.get(key)
    if trim_threshold is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = str(int(trim_threshold))
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{key}": trim_threshold}):
            yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


@contextlib.contextmanager
def make_client(
    config: ClusterConfig, *, quiet: bool = False
) -> Iterator[distributed.Client | None]:
    """Start (or connect to) the cluster ``config`` names and yield a client.

    On exit the client is closed, and so is everything this call started (local clusters,
    jobqueue jobs); external schedulers keep running. Registers the :class:`TorchThreads`
    worker plugin and prints the dashboard address to stderr unless ``quiet``.

    Parameters
    ----------
    config : ClusterConfig
        The cluster to use.
    quiet : bool, optional
        Print nothing to stderr. Default False.

    Yields
    ------
    distributed.Client or None
        The client; ``None`` for kind ``threads`` (dask's threaded scheduler is configured for
        the duration of the block).
    """
    backend = config.backend
    if backend == "threads":
        with _threaded_scheduler(config, quiet=quiet):
            yield None
        return

    with contextlib.ExitStack() as stack:
        if backend in ("local", "cuda"):
            stack.enter_context(worker_malloc_env(config.malloc_trim_threshold))
        security = _security(config)
        cluster, torch_threads = _start_cluster(config, stack, security, quiet=quiet)
        client = _connect(config, cluster, security)
        stack.callback(client.close)

        if backend in ("scheduler-file", "address") and config.n_workers:
            client.wait_for_workers(config.n_workers, timeout=config.connect_timeout)
        client.register_plugin(TorchThreads(torch_threads), name=TorchThreads.name)
        if backend in ("local", "cuda"):
            client.register_plugin(_CtrlCToParent(), name=_CtrlCToParent.name)
        if not quiet:
            _say(f"dask dashboard: {client.dashboard_link}")
            _say(describe(client))
        yield client


@contextlib.contextmanager
def _threaded_scheduler(config: ClusterConfig, *, quiet: bool) -> Iterator[None]:
    """Kind ``threads``: dask's threaded scheduler and the torch threads, for the block.

    The thread environment variables and torch's thread count are restored afterwards.
    """
    n = config.n_workers or CPU_COUNT
    torch_n = config.torch_threads or torch_threads_per_task(threads_per_worker=n)
    saved = {var: os.environ.get(var) for var in _THREAD_ENV_VARS}
    torch = sys.modules.get("torch")
    saved_torch = torch.get_num_threads() if torch is not None else None
    set_torch_threads(torch_n)
    if not quiet:
        _say(f"threaded scheduler: {n} threads, {torch_n} torch thread(s) per task")
    try:
        with dask.config.set(scheduler="threads", num_workers=n):
            yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if saved_torch is not None:
            sys.modules["torch"].set_num_threads(saved_torch)


def _start_cluster(
    config: ClusterConfig, stack: contextlib.ExitStack, security: Any, *, quiet: bool
) -> tuple[Any, int | None]:
    """Start the cluster of the kinds that start one (closed by ``stack``).

    Returns
    -------
    tuple
        The cluster (None for ``scheduler-file`` / ``address``) and the torch threads per
        task for the worker plugin (None: the rule on each worker).
    """
    backend = config.backend
    if backend == "local":
        return _start_local(config, stack, security)
    if backend == "cuda":
        return _start_cuda(config, stack, security)
    if backend in ("slurm", "htcondor"):
        return _start_jobqueue(config, stack, quiet=quiet), config.torch_threads
    return None, config.torch_threads


def _start_local(
    config: ClusterConfig, stack: contextlib.ExitStack, security: Any
) -> tuple[Any, int]:
    """Kind ``local``: a LocalCluster of worker processes; its torch threads per task.

    Returns
    -------
    tuple
        The cluster and the torch threads per task.
    """
    n = config.n_workers or max(1, CPU_COUNT // config.threads_per_worker)
    torch_threads = _torch_threads_local(config, n)
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=config.threads_per_worker,
        memory_limit=config.memory_limit,
        processes=True,
        host="127.0.0.1",
        dashboard_address=config.dashboard_address or _NO_DASHBOARD_HTTP,
        scheduler_kwargs=None if config.dashboard_address else {"dashboard": False},
        local_directory=config.local_directory,
        security=security,
        protocol=_protocol(config),
    )
    stack.callback(cluster.close)
    return cluster, torch_threads


def _start_cuda(
    config: ClusterConfig, stack: contextlib.ExitStack, security: Any
) -> tuple[Any, int]:
    """Kind ``cuda``: a LocalCUDACluster, one worker per GPU; its torch threads per task.

    Returns
    -------
    tuple
        The cluster and the torch threads per task.

    Raises
    ------
    ImportError
        When dask-cuda is not installed.
    """
    try:
        from dask_cuda import LocalCUDACluster  # optional: the gpu extra
    except ImportError as exc:
        raise ImportError(
            "kind 'cuda' needs dask-cuda and a CUDA device: pip install 'pausdenoise[gpu]'"
        ) from exc
    devices = config.cuda.visible_devices
    n_gpus = config.n_workers or (
        len(devices.split(",")) if devices else _visible_gpu_count()
    )
    torch_threads = _torch_threads_local(config, max(1, n_gpus))
    cuda_kwargs: dict[str, Any] = dict(
        n_workers=config.n_workers,
        threads_per_worker=config.threads_per_worker,
        memory_limit=config.memory_limit,
        device_memory_limit=config.cuda.device_memory_limit,
        CUDA_VISIBLE_DEVICES=devices,
        jit_unspill=config.cuda.jit_unspill,
        rmm_pool_size=config.cuda.rmm_pool_size,
        local_directory=config.local_directory,
        dashboard_address=config.dashboard_address or _NO_DASHBOARD_HTTP,
        scheduler_kwargs=None if config.dashboard_address else {"dashboard": False},
        host="127.0.0.1",
        security=security,
        protocol=_protocol(config),
        resources={"GPU": 1},  # as the recipes' workers: GPU tasks can ask for it
    )
    cluster = LocalCUDACluster(**{k: v for k, v in cuda_kwargs.items() if v is not None})
    stack.callback(cluster.close)
    return cluster, torch_threads


def _start_jobqueue(config: ClusterConfig, stack: contextlib.ExitStack, *, quiet: bool) -> Any:
    """Kinds ``slurm`` / ``htcondor``: build the jobqueue cluster and submit its jobs.

    Returns
    -------
    object
        The dask-jobqueue cluster, scaled (or adapting).
    """
    cluster = make_jobqueue_cluster(config)
    stack.callback(cluster.close)
    jq = config.jobqueue
    if jq.adapt_max_jobs is not None:
        cluster.adapt(minimum_jobs=jq.n_jobs, maximum_jobs=jq.adapt_max_jobs)
    else:
        cluster.scale(jobs=jq.n_jobs)
    if not quiet:
        _say(f"{config.backend}: submitted worker jobs; job script:\n"
             f"{redact_text(cluster.job_script())}")
    return cluster


def _connect(config: ClusterConfig, cluster: Any, security: Any) -> distributed.Client:
    """Connect a client to ``cluster``, or to the external scheduler the spec names.

    Returns
    -------
    distributed.Client
        The connected client.
    """
    if cluster is not None:
        return Client(cluster, security=security, timeout=config.connect_timeout)
    if config.backend == "scheduler-file":
        path = config.target
        assert path is not None
        _check_tls(_read_scheduler_address(path), security, f"the scheduler in {path}")
        return Client(scheduler_file=path, security=security, timeout=config.connect_timeout)
    # address
    _check_tls(config.target, security, "the scheduler")
    return Client(config.target, security=security, timeout=config.connect_timeout)


def _visible_gpu_count() -> int:
    """Count the GPUs this process may use (at least 1).

    Returns
    -------
    int
        From ``CUDA_VISIBLE_DEVICES``, else torch's device count.
    """
    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if devices:
        return len([d for d in devices.split(",") if d.strip()])
    try:
        import torch  # torch off the config import path

        return max(1, torch.cuda.device_count())
    except Exception:  # pragma: no cover - torch is a core dependency
        return 1


# --------------------------------------------------------------------------------------------
# Summary


def cluster_summary(client: distributed.Client | None) -> dict[str, Any]:
    """Describe the workers, threads, memory and GPUs of the cluster behind ``client``.

    GPU names come from the workers' NVML metrics (present when pynvml finds a device) or,
    failing that, from a ``GPU`` resource the workers advertise.

    Parameters
    ----------
    client : distributed.Client or None
        The client; ``None`` (kind ``threads``) describes this process's threaded scheduler.

    Returns
    -------
    dict
        ``scheduler``, ``workers``, ``threads``, ``memory_bytes``, ``gpus`` (one name per
        GPU), ``hosts`` and, with a client, ``dashboard``.
    """
    if client is None:
        n = dask.config.get("num_workers", None) or CPU_COUNT
        return {
            "scheduler": "threads",
            "workers": 1,
            "threads": n,
            "memory_bytes": MEMORY_LIMIT,
            "gpus": [],
            "hosts": 1,
        }
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    # A worker owns as many GPUs as its `GPU` resource says (every recipe and the cuda kind
    # advertise one); NVML gives the model. Without any GPU resource in the cluster, count
    # the distinct (host, model) pairs NVML reports: CPU workers on a GPU node report the
    # node's first device too, so counting workers would overstate.
    gpus: list[str] = []
    if any(ws.get("resources", {}).get("GPU") for ws in workers.values()):
        for ws in workers.values():
            name = str((ws.get("gpu") or {}).get("name") or "GPU")
            gpus.extend([name] * int(ws.get("resources", {}).get("GPU", 0)))
    else:
        seen = {
            (ws.get("host"), str(ws["gpu"]["name"]))
            for ws in workers.values()
            if (ws.get("gpu") or {}).get("name")
        }
        gpus = sorted(name for _, name in seen)
    return {
        "scheduler": info.get("address") or client.scheduler.address,
        "workers": len(workers),
        "threads": sum(int(ws.get("nthreads", 0)) for ws in workers.values()),
        "memory_bytes": sum(int(ws.get("memory_limit") or 0) for ws in workers.values()),
        "gpus": gpus,
        "hosts": len({ws.get("host") for ws in workers.values()}),
        "dashboard": client.dashboard_link,
    }


def describe(client: distributed.Client | None) -> str:
    """Describe the cluster in one line: scheduler, workers, threads, memory, GPUs.

    Parameters
    ----------
    client : distributed.Client or None
        As for :func:`cluster_summary`.

    Returns
    -------
    str
        The line.
    """
    s = cluster_summary(client)
    gpus = (
        f"{len(s['gpus'])} GPU(s) ({', '.join(sorted(set(s['gpus'])))})" if s["gpus"] else "no GPUs"
    )
    return (
        f"{s['scheduler']}: {s['workers']} worker(s) on {s['hosts']} host(s), "
        f"{s['threads']} thread(s), {format_bytes(s['memory_bytes'])} memory, {gpus}"
    )
