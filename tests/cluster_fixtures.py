"""Real dask processes for tests: a ``dask scheduler --scheduler-file`` and N ``dask worker``
processes started with subprocess, as the SLURM / HTCondor recipes in ``deploy/`` do.

Use :func:`dask_cli_cluster` as a context manager (or wrap it in a fixture); every wait is
bounded and every process it started is terminated (then killed) on exit, whatever happens.
Each process runs in its own session, so tearing down its process group also ends a nanny's
worker child. Logs go to ``<tmp>/logs/*.log`` and are quoted in errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MAKE_CERTS = DEPLOY / "make-certs.sh"


@dataclass
class CliCluster:
    """What :func:`dask_cli_cluster` started."""

    scheduler_file: Path
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def spec(self) -> str:
        """The ``--cluster`` spec that connects to it."""
        return f"scheduler-file:{self.scheduler_file}"

    def logs(self) -> str:
        if self.log_dir is None:
            return ""
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


def make_certs(out: Path) -> Path:
    """Run ``deploy/make-certs.sh out`` (needs openssl); returns ``out``."""
    subprocess.run(
        ["bash", str(MAKE_CERTS), str(out), "2"], check=True, capture_output=True, timeout=60
    )
    return out


def tls_args(certs: Path, role: str) -> list[str]:
    """``dask scheduler`` / ``dask worker`` TLS options for a make-certs.sh folder."""
    return [
        "--tls-ca-file", str(certs / "ca.pem"),
        "--tls-cert", str(certs / f"{role}.pem"),
        "--tls-key", str(certs / f"{role}.key"),
    ]  # fmt: skip


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "dask", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group we created for ``proc``; SIGKILL it after ``grace`` s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    # the leader may be gone while a nanny's worker child lingers in the group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def dask_cli_cluster(
    tmp: Path,
    n_workers: int = 2,
    *,
    nthreads: int = 1,
    certs: Path | None = None,
    nanny: bool = False,
    memory_limit: str = "1GiB",
    timeout: float = 60.0,
) -> Iterator[CliCluster]:
    """Start ``dask scheduler --scheduler-file`` and ``n_workers`` ``dask worker
    --scheduler-file`` processes bound to 127.0.0.1, wait (at most ``timeout`` s) until all
    workers joined, yield, then stop them all.

    ``certs``: a :func:`make_certs` folder; scheduler and workers then speak TLS only.
    ``nanny=False`` (default) keeps one process per worker: faster to start on small CI
    machines; the deploy recipes use nannies.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    log_dir = tmp / "logs"
    log_dir.mkdir(exist_ok=True)
    scheduler_file = tmp / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    # Same software on every process: the project and the test modules (tasks defined in
    # tests pickle by reference) must be importable by scheduler and workers.
    pythonpath = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=pythonpath)  # fmt: skip
    env.pop("DASK_SCHEDULER_ADDRESS", None)

    protocol = ["--protocol", "tls", *tls_args(certs, "scheduler")] if certs else []
    scheduler = _spawn(
        ["scheduler", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--idle-timeout", "600", *protocol],
        log_dir / "scheduler.log",
        env,
    )  # fmt: skip
    cluster = CliCluster(scheduler_file, "", scheduler, [], log_dir)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if scheduler.poll() is not None:
                raise RuntimeError(
                    f"dask scheduler exited ({scheduler.returncode})\n" + cluster.logs()
                )
            if scheduler_file.is_file():
                with contextlib.suppress(ValueError):
                    cluster.address = json.loads(scheduler_file.read_text())["address"]
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no scheduler file after {timeout:.0f} s\n{cluster.logs()}")
            time.sleep(0.1)

        worker_tls = tls_args(certs, "worker") if certs else []
        for i in range(n_workers):
            args = ["worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                    "--name", f"w{i}", "--nthreads", str(nthreads),
                    "--memory-limit", memory_limit, "--no-dashboard",
                    "--nanny" if nanny else "--no-nanny",
                    "--local-directory", str(tmp / f"w{i}"), "--death-timeout", "60",
                    *worker_tls]  # fmt: skip
            cluster.workers.append(_spawn(args, log_dir / f"worker-{i}.log", env))
        _wait_for_workers(cluster, n_workers, certs, deadline)
        yield cluster
    finally:
        for proc in cluster.workers:
            _stop(proc)
        _stop(scheduler)


def _wait_for_workers(cluster: CliCluster, n: int, certs: Path | None, deadline: float) -> None:
    from distributed import Client, Security

    security = None
    if certs is not None:
        security = Security(
            tls_ca_file=str(certs / "ca.pem"),
            tls_client_cert=str(certs / "client.pem"),
            tls_client_key=str(certs / "client.key"),
            require_encryption=True,
        )
    remaining = max(1.0, deadline - time.monotonic())
    with Client(cluster.address, security=security, timeout=remaining) as client:
        while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
            dead = [p.args for p in cluster.workers if p.poll() is not None]
            if dead:
                raise RuntimeError(f"dask worker exited: {dead}\n{cluster.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} workers joined\n{cluster.logs()}")
            time.sleep(0.2)


def assert_same_outputs(ref: Path, out: Path) -> None:
    """Images, masks, denoised frames and photometry of two run directories are identical."""
    import numpy as np
    import pandas as pd

    from pausdenoise import store as st
    from pausdenoise.photometry import read_photometry

    frames = st.list_frames(ref / "store.zarr")
    assert frames and frames == st.list_frames(out / "store.zarr")
    for f in frames:
        for name in ("image", "mask", "denoised"):
            a = np.asarray(st.open_frame(ref / "store.zarr", f, name))
            b = np.asarray(st.open_frame(out / "store.zarr", f, name))
            np.testing.assert_array_equal(a, b, err_msg=f"{f}/{name}")
    keys = ["ref_id", "expnum", "ccd", "kind"]
    pa = read_photometry(ref / "photometry").sort_values(keys).reset_index(drop=True)
    pb = read_photometry(out / "photometry").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(pa, pb, check_like=True)
