"""A real SLURM: ``deploy/slurm/single-node-slurm.sh`` starts a throw-away one-node cluster
(slurmctld + slurmd in a temporary folder); the pipeline's cluster stages run on it twice,
on dask-jobqueue worker *jobs* (kind ``slurm``) and through the ``pausdenoise.sbatch``
recipe, and must equal a local run's outputs bit for bit.

Marked ``slow`` (``make test-slow``); skipped with the reason when the SLURM daemons and
client commands are not installed (Debian: ``apt-get install slurm-wlm``) or when not run as
root (slurmd starts job steps as the submitting user). See ``deploy/slurm/README.md``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cluster_fixtures import DEPLOY, assert_same_outputs

from pausdenoise.cli import EXIT_OK, main

SCRIPT = DEPLOY / "slurm" / "single-node-slurm.sh"
SLURM_TOOLS = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
#: Daemons live in sbin, which a non-login PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
#: Bound on the start-up (measured: about 1.5 s on a 2-core VM).
UP_TIMEOUT_S = 120

_missing = [tool for tool in SLURM_TOOLS if shutil.which(tool, path=SEARCH_PATH) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_missing),
        reason=f"needs SLURM ({', '.join(_missing)} not on PATH; Debian: apt-get install "
        "slurm-wlm)",
    ),
    pytest.mark.skipif(
        hasattr(os, "geteuid") and os.geteuid() != 0,
        reason="the single-node SLURM runs slurmd, which must be root to start job steps",
    ),
]

# torch_threads pinned: float32 convolutions sum in a thread-count-dependent order, so the
# denoised pixels of runs whose workers size torch's pool differently (the rule gives 2
# threads to a 1-thread jobqueue worker, 1 to the recipe's 2-thread worker) differ in the
# last bit.
TINY = {
    "cluster": {"kind": "threads", "n_workers": 1, "threads_per_worker": 2, "torch_threads": 1},
    "simulate": {"seed": 11, "ccd_shape": [128, 128], "bands": ["NB455", "NB615"],
                 "exposures_per_band": 2, "galaxy_density": 120},
    "ingest": {"chunks": [64, 64]},
    "train": {"unet": {"depth": 2, "base_channels": 4, "batch_norm": False},
              "patch_size": 32, "batch_size": 8, "steps_per_epoch": 2, "epochs": 1,
              "validation_patches": 8, "block_size": 64},
    "photometry": {"annulus_r_in": 12, "annulus_r_out": 20, "min_annulus_pixels": 20},
}  # fmt: skip
CLUSTER_STAGES = "simulate,ingest,denoise,photometry"
#: squeue states of a job that has not ended yet.
ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED")


@dataclass
class SingleNodeSlurm:
    """A running cluster started by :func:`single_node_slurm`.

    Attributes
    ----------
    root : Path
        The folder holding its configuration, state, spool and logs.
    conf : Path
        Its ``slurm.conf``; client commands find the cluster through ``SLURM_CONF``.
    startup_s : float
        Wall time of ``single-node-slurm.sh up`` (until the node was idle).
    env : dict of str to str
        This process's environment with ``SLURM_CONF`` and the sbin folders on ``PATH``.
    """

    root: Path
    conf: Path
    startup_s: float
    env: dict[str, str]

    def logs(self) -> str:
        """The tails of the daemons' logs, for assertion messages."""
        return "\n".join(
            f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted((self.root / "log").glob("*.log"))
        )

    def squeue(self, *fields: str) -> list[list[str]]:
        """Every job this cluster still remembers (``-t all``), one list of ``fields``
        (squeue ``%`` format letters, e.g. ``"i"``, ``"j"``, ``"T"``) per job."""
        fmt = "|".join(f"%{f}" for f in fields)
        out = subprocess.run(
            ["squeue", "-h", "-t", "all", "-o", fmt],
            env=self.env, capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        return [line.split("|") for line in out.splitlines() if line.strip()]

    def sbatch(self, args: list[str], cwd: Path | None = None) -> str:
        """Submit a batch job (``sbatch --parsable ARGS``); returns its id."""
        proc = subprocess.run(
            ["sbatch", "--parsable", *args],
            env=self.env, cwd=cwd, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr + self.logs()
        return proc.stdout.strip().split(";")[0]

    def wait_for_job(self, job_id: str, timeout: float) -> str:
        """Poll (every 0.5 s, at most ``timeout`` s) until job ``job_id`` has ended; returns
        its final state (``COMPLETED``, ``FAILED``, ...). ``sbatch --wait`` would do, but
        it polls at ever longer intervals (tens of seconds)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            states = [st for jid, st in self.squeue("i", "T") if jid == job_id]
            state = states[0] if states else ""
            if state and state not in ACTIVE_STATES:
                return state
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} still {state or 'unknown'} after {timeout} s")


def _script(action: str, root: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        ["bash", str(SCRIPT), action, str(root)],
        env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(
            f"single-node-slurm.sh {action} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return proc.stderr


@contextlib.contextmanager
def single_node_slurm(root: Path) -> Iterator[SingleNodeSlurm]:
    """Start a one-node SLURM in ``root`` and stop it again on exit, whatever happens.

    Parameters
    ----------
    root : Path
        Empty or absent folder for the cluster's files (kept afterwards, for its logs).

    Yields
    ------
    SingleNodeSlurm
        The running cluster; jobs still queued or running on exit are cancelled first.
    """
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    env = dict(os.environ, PATH=SEARCH_PATH, SLURM_CONF=str(conf), UP_TIMEOUT=str(UP_TIMEOUT_S))
    t0 = time.perf_counter()
    try:
        _script("up", root, env, timeout=UP_TIMEOUT_S + 30)
        startup_s = time.perf_counter() - t0
        yield SingleNodeSlurm(root, conf, startup_s, env)
    finally:
        # `down` is safe after a failed `up` (it stops whatever pid files name)
        _script("down", root, env, timeout=90)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SingleNodeSlurm]:
    """The module's single-node SLURM; ``SLURM_CONF`` and ``PATH`` point at it meanwhile,
    so that dask-jobqueue's ``sbatch`` / ``scancel`` calls reach it."""
    with single_node_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(cluster.conf))
            mp.setenv("PATH", SEARCH_PATH)
            yield cluster


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny survey run locally (threaded scheduler), model trained: ``(config, run)``.
    The SLURM runs reuse its checkpoint, so only where the stages ran differs."""
    root = tmp_path_factory.mktemp("reference")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    ref = root / "run"
    stages = "simulate,ingest,train,denoise,photometry"
    assert main(["run", "--config", str(cfg), "--out", str(ref), "--stages", stages]) == EXIT_OK
    assert (ref / "model" / "n2v.safetensors").is_file()
    return cfg, ref


def test_single_node_slurm_starts_fast_and_runs_a_batch_job(slurm: SingleNodeSlurm) -> None:
    print(f"single-node SLURM up in {slurm.startup_s:.1f} s")
    assert slurm.startup_s < UP_TIMEOUT_S
    out = slurm.root / "hello.out"
    job_id = slurm.sbatch(
        ["--job-name=hello", "-n1", "-c1", "--mem=64M", "-t", "00:02:00", f"--output={out}",
         "--wrap", 'echo "job $SLURM_JOB_ID on $SLURMD_NODENAME"'],
    )  # fmt: skip
    assert slurm.wait_for_job(job_id, timeout=60) == "COMPLETED", slurm.logs()
    assert out.read_text().strip() == f"job {job_id} on localnode"


def test_pipeline_on_slurm_worker_jobs_equals_local_run(
    slurm: SingleNodeSlurm,
    reference: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``pausdenoise run --cluster slurm`` (deploy/slurm/README.md, B): the scheduler runs in
    this process, two dask-jobqueue worker jobs run under slurmd; ingest, denoise and
    photometry must equal the threaded run's bit for bit, and the worker jobs must be gone
    afterwards. The jobqueue cluster has no workers but the SLURM jobs', so a run that
    completes at all computed on them."""
    cfg, ref = reference
    jobs_before = {row[0] for row in slurm.squeue("i")}
    # the CLI quietens distributed to warnings through this variable, which sbatch passes
    # on to the jobs; at info the workers log "Registered to: <scheduler>"
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "info")
    logs = tmp_path / "worker-logs"
    out = tmp_path / "slurm-run"
    t0 = time.perf_counter()
    code = main([
        "run", "--config", str(cfg), "--out", str(out), "--stages", CLUSTER_STAGES,
        "--cluster", "slurm",
        "--set", f"input.checkpoint={ref / 'model' / 'n2v.safetensors'}",
        "--set", "cluster.jobqueue.n_jobs=2",
        "--set", "cluster.jobqueue.cores=1",
        "--set", "cluster.jobqueue.memory=2GiB",
        "--set", "cluster.jobqueue.walltime=00:15:00",
        "--set", "cluster.jobqueue.death_timeout=60",
        "--set", f"cluster.jobqueue.log_directory={logs}",
    ])  # fmt: skip
    seconds = time.perf_counter() - t0
    worker_logs = "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.err")))
    assert code == EXIT_OK, worker_logs + slurm.logs()
    print(f"pipeline ({CLUSTER_STAGES}) on SLURM worker jobs: {seconds:.1f} s")
    assert_same_outputs(ref, out)

    # the workers were SLURM jobs: two submitted and started, none left running once the
    # run closed its cluster (dask-jobqueue scancels them)
    jobs = [row for row in slurm.squeue("i", "j", "T") if row[0] not in jobs_before]
    assert len(jobs) == 2 and all(name == "pausdenoise-worker" for _, name, _ in jobs), jobs
    states = {job_id: slurm.wait_for_job(job_id, timeout=60) for job_id, *_ in jobs}
    assert set(states.values()) <= {"CANCELLED", "COMPLETED"}, states
    started = sorted(p.name for p in logs.glob("*.err"))  # written once a job starts
    assert started == [f"pausdenoise-worker-{job_id}.err" for job_id in sorted(states)], started
    registered = worker_logs.count("Registered to:")
    print(f"{registered} of 2 worker jobs joined the scheduler before the run ended")
    assert registered >= 1, worker_logs


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the recipe's steps need 2 CPUs")
def test_sbatch_recipe_runs_the_pipeline_on_real_slurm(
    slurm: SingleNodeSlurm,
    reference: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``deploy/slurm/pausdenoise.sbatch`` as submitted (deploy/slurm/README.md, A), its
    #SBATCH header sized down on the command line: the scheduler and a CPU worker as srun
    steps of the allocation, the pipeline on the batch node through the scheduler file;
    outputs equal the threaded run's bit for bit."""
    cfg, ref = reference
    monkeypatch.setenv("DASK_LOGGING__DISTRIBUTED", "info")
    monkeypatch.setenv("PAUSDENOISE_VENV", sys.prefix)
    monkeypatch.setenv("PAUSDENOISE_DEPLOY", str(DEPLOY))
    monkeypatch.setenv("GPUS_PER_NODE", "0")
    env = dict(os.environ)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    job_id = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", "--gres=none",
         "--time=00:10:00", f"--output={tmp_path}/pausdenoise-%j.out",
         str(DEPLOY / "slurm" / "pausdenoise.sbatch"), str(cfg), "--out", str(out),
         "--set", f"input.checkpoint={ref / 'model' / 'n2v.safetensors'}",
         "--stages", CLUSTER_STAGES],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    state = slurm.wait_for_job(job_id, timeout=300)
    seconds = time.perf_counter() - t0
    run_dir = tmp_path / ".dask" / job_id
    job_out = (tmp_path / f"pausdenoise-{job_id}.out").read_text(errors="replace")
    dask_logs = "\n".join(p.read_text(errors="replace") for p in sorted(run_dir.glob("*.log")))
    assert state == "COMPLETED", job_out + dask_logs + slurm.logs()
    print(f"pausdenoise.sbatch ({CLUSTER_STAGES}) on SLURM: {seconds:.1f} s")
    assert_same_outputs(ref, out)
    assert (run_dir / "scheduler.json").is_file()
    assert "Registered to:" in (run_dir / "workers.log").read_text(), dask_logs
    assert "[photometry] done" in job_out, job_out
