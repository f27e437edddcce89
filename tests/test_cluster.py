"""pausdenoise.cluster: spec parsing, real scheduler/worker processes, TLS, jobqueue scripts,
and the deploy/ recipes' files."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import yaml
from cluster_fixtures import DEPLOY, dask_cli_cluster, make_certs
from pydantic import ValidationError
from scipy import ndimage

from pausdenoise import cluster as cl
from pausdenoise.cluster import ClusterConfig, TLSConfig, make_client, parse_spec

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _tls(tmp_path, name="certs", role="client") -> TLSConfig:
    """TLSConfig for a fresh deploy/make-certs.sh folder (skips without openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    certs = make_certs(tmp_path / name)
    return TLSConfig(
        ca_file=certs / "ca.pem", cert=certs / f"{role}.pem", key=certs / f"{role}.key"
    )


# --------------------------------------------------------------------------------------------
# Spec strings


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("threads", ("threads", None)),
        ("local", ("local", None)),
        (" cuda ", ("cuda", None)),
        ("slurm", ("slurm", None)),
        ("htcondor", ("htcondor", None)),
        (
            "scheduler-file:/scratch/x/scheduler.json",
            ("scheduler-file", "/scratch/x/scheduler.json"),
        ),
        ("address:tcp://10.0.0.5:8786", ("address", "tcp://10.0.0.5:8786")),
        ("address:tls://sched.pic.es:8786", ("address", "tls://sched.pic.es:8786")),
        ("tcp://127.0.0.1:8786", ("address", "tcp://127.0.0.1:8786")),
    ],
)
def test_parse_spec_accepts_documented_forms(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("kubernetes", "unknown cluster spec 'kubernetes'"),
        ("", "unknown cluster spec"),
        ("scheduler-file:", "needs a path"),
        ("address:10.0.0.5:8786", "must start with one of tcp://"),
        ("address:tcp://10.0.0.5", "needs HOST:PORT"),
        ("LOCAL", "unknown cluster spec"),
    ],
)
def test_parse_spec_rejects_with_clear_message(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_spec(spec)
    if "unknown" in message:  # the error lists what is accepted
        assert "scheduler-file:PATH" in str(info.value) and "'htcondor'" in str(info.value)


def test_cluster_config_validates_kind_and_fields(tmp_path):
    with pytest.raises(ValidationError, match="unknown cluster spec 'yarn'"):
        ClusterConfig(kind="yarn")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ClusterConfig(kind="local", n_worker=2)
    with pytest.raises(ValidationError, match="plain tcp://; use tls://"):
        ClusterConfig(kind="address:tcp://10.0.0.5:8786", security=_tls(tmp_path))
    with pytest.raises(ValueError, match=r"\(TLS\) but no client certificate"):
        with make_client(ClusterConfig(kind="address:tls://127.0.0.1:1"), quiet=True):
            pass
    with pytest.raises(ValidationError, match="must be >= n_jobs"):
        ClusterConfig(kind="slurm", jobqueue={"n_jobs": 4, "adapt_max_jobs": 2})
    with pytest.raises(ValidationError, match=f"TLS ca_file file not found: {Path.home()}/x"):
        TLSConfig(ca_file="~/x/ca.pem", cert="~/x/c.pem", key="~/x/c.key")
    with pytest.raises(ValidationError, match="TLS ca_file file not found"):
        TLSConfig(ca_file=tmp_path / "nope.pem", cert=tmp_path / "c", key=tmp_path / "k")
    cfg = ClusterConfig.from_spec("tcp://127.0.0.1:8786", n_workers=3)
    assert (cfg.kind, cfg.backend, cfg.target) == (
        "address:tcp://127.0.0.1:8786",
        "address",
        "tcp://127.0.0.1:8786",
    )
    assert ClusterConfig().dashboard_address.startswith("127.0.0.1:")


def test_torch_threads_rule():
    assert cl.torch_threads_per_task(16, threads_per_worker=4) == 4
    assert cl.torch_threads_per_task(16, threads_per_worker=2, workers_per_node=4) == 2
    assert cl.torch_threads_per_task(2, threads_per_worker=4) == 1  # never below one
    with pytest.raises(ValueError):
        cl.torch_threads_per_task(8, threads_per_worker=0)


class _FakeClient:
    """Just enough of distributed.Client for cluster_summary."""

    dashboard_link = "http://127.0.0.1:8787/status"

    def __init__(self, workers):
        self._workers = workers

    def scheduler_info(self, n_workers=-1):
        return {"address": "tcp://10.0.0.1:8786", "workers": self._workers}


def _ws(host, gpu=None, resources=None, nthreads=1):
    info = {"host": host, "nthreads": nthreads, "memory_limit": 2**30,
            "resources": resources or {}}  # fmt: skip
    if gpu:
        info["gpu"] = {"name": gpu, "memory-total": 80 * 2**30}
    return info


def test_summary_counts_gpus_by_resource_not_by_worker():
    h100 = "NVIDIA H100"
    gpu_workers = {f"w{i}": _ws(f"n{i // 4}", h100, {"GPU": 1}) for i in range(8)}
    s = cl.cluster_summary(_FakeClient(gpu_workers))
    assert (s["workers"], s["hosts"], len(s["gpus"]), s["threads"]) == (8, 2, 8, 8)
    assert "8 GPU(s) (NVIDIA H100)" in cl.describe(_FakeClient(gpu_workers))
    # CPU workers on a GPU node all see device 0 through NVML: one GPU, not four
    cpu_workers = {f"w{i}": _ws("n0", h100, nthreads=4) for i in range(4)}
    s = cl.cluster_summary(_FakeClient(cpu_workers))
    assert (s["gpus"], s["threads"], s["memory_bytes"]) == ([h100], 16, 4 * 2**30)
    assert cl.cluster_summary(_FakeClient({"w": _ws("n0")}))["gpus"] == []


# --------------------------------------------------------------------------------------------
# threads and local kinds


def test_threads_kind_configures_and_restores(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    with make_client(
        ClusterConfig(kind="threads", n_workers=2, torch_threads=2), quiet=True
    ) as client:
        assert client is None
        assert dask.config.get("scheduler") == "threads"
        assert dask.config.get("num_workers") == 2
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
        x = da.arange(1000, chunks=100)
        assert int(x.sum().compute()) == 499500
        assert cl.cluster_summary(None)["threads"] == 2
    assert torch.get_num_threads() == before and os.environ["OMP_NUM_THREADS"] == "1"
    assert dask.config.get("scheduler", None) != "threads"


def test_local_kind_starts_and_closes_workers_on_localhost():
    # 2 torch threads: differs from the nanny's OMP_NUM_THREADS=1 default, and torch caps an
    # env-var thread count at the core count (2 on CI)
    cfg = ClusterConfig(kind="local", n_workers=2, memory_limit="512MiB", torch_threads=2)
    # what this process does on Ctrl-C before the cluster starts (a shell's background job
    # already ignores SIGINT; then there is nothing to keep)
    sigint_before = signal.getsignal(signal.SIGINT)
    with make_client(cfg, quiet=True) as client:
        cluster = client.cluster
        info = client.scheduler_info(n_workers=-1)
        assert len(info["workers"]) == 2
        assert all(w["nthreads"] == 1 for w in info["workers"].values())
        assert all(w["memory_limit"] == 512 * 2**20 for w in info["workers"].values())
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        # the dashboard / http endpoint listens on localhost only
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        bound = {s.getsockname()[0] for s in cluster.scheduler.http_server._sockets.values()}
        assert bound == {"127.0.0.1"}
        # the torch-threads plugin ran on every worker
        assert set(client.run(lambda: os.environ["OMP_NUM_THREADS"]).values()) == {"2"}
        # ... and torch, imported later by a task, runs with that many threads
        one = next(iter(info["workers"]))
        expected = 2 if (os.cpu_count() or 1) >= 2 else 1
        threads = client.run(lambda: __import__("torch").get_num_threads(), workers=[one])
        assert threads == {one: expected}
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        # Ctrl-C is for this process alone: the workers ignore SIGINT, this process does not
        ignored = client.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
        assert set(ignored.values()) == {True}
        assert signal.getsignal(signal.SIGINT) == sigint_before
        summary = cl.cluster_summary(client)
        assert (summary["workers"], summary["threads"], summary["gpus"]) == (2, 2, [])
        assert "2 worker(s)" in cl.describe(client)
    assert cluster.status.name == "closed"
    assert client.status == "closed"


def _malloc_env() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


@pytest.mark.parametrize("threshold", [None, 65536])
def test_local_workers_get_the_malloc_trim_setting(monkeypatch, threshold):
    # distributed's nannies export MALLOC_TRIM_THRESHOLD_=65536, which switches off glibc's
    # adaptive mmap threshold (slow U-Net forwards); the pipeline leaves it unset by default.
    # The client process's own variable (a nanny writes it there) is restored afterwards.
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    cfg = ClusterConfig(kind="local", n_workers=1, memory_limit="512MiB",
                        malloc_trim_threshold=threshold)
    with make_client(cfg, quiet=True) as client:
        seen = set(client.run(_malloc_env).values())
    assert seen == {None if threshold is None else str(threshold)}
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"


def test_shipped_dask_yaml_leaves_malloc_trim_unset():
    from distributed.nanny import _get_env_variables

    cfg = yaml.safe_load((DEPLOY / "dask.yaml").read_text())
    with dask.config.set(cfg):
        env = _get_env_variables("distributed.nanny.pre-spawn-environ")
    assert "MALLOC_TRIM_THRESHOLD_" not in env
    assert env["OMP_NUM_THREADS"] == "1"


def test_cuda_kind_without_dask_cuda_says_how_to_install():
    try:
        import dask_cuda  # noqa: F401

        pytest.skip("dask-cuda is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"pausdenoise\[gpu\]"):
        with make_client(ClusterConfig(kind="cuda"), quiet=True):
            pass


@pytest.mark.gpu
def test_cuda_kind_one_worker_per_gpu():
    pytest.importorskip("dask_cuda")
    import torch

    with make_client(ClusterConfig(kind="cuda"), quiet=True) as client:
        assert cl.cluster_summary(client)["workers"] == torch.cuda.device_count()


# --------------------------------------------------------------------------------------------
# Real scheduler + worker processes (the scheduler-file pattern of the batch recipes)


def _workload():
    x = da.random.RandomState(42).standard_normal((600, 400), chunks=(150, 100))
    smooth = functools.partial(ndimage.uniform_filter, size=5, mode="reflect")
    y = x.map_overlap(smooth, depth=2, boundary="reflect", dtype=x.dtype)
    # lambdas travel by value: the workers need not import this test module
    pids = x.map_blocks(lambda b: np.full((1, 1), os.getpid()), chunks=(1, 1), dtype=np.int64)
    return y, (y * x).sum(axis=0), pids


def test_scheduler_file_cluster_matches_local_result_bit_for_bit(tmp_path):
    y, s, _ = _workload()
    expected_y, expected_s = dask.compute(y, s, scheduler="sync")
    with dask_cli_cluster(tmp_path, n_workers=2) as proc_cluster:
        cfg = ClusterConfig(kind=proc_cluster.spec, n_workers=2, connect_timeout=30)
        with make_client(cfg, quiet=True) as client:
            info = client.scheduler_info(n_workers=-1)
            assert len(info["workers"]) == 2
            assert client.scheduler.address == proc_cluster.address
            got_y, got_s = client.compute([y, s], sync=True)
            pids = set(np.unique(client.compute(_workload()[2], sync=True)).tolist())
            worker_pids = {p.pid for p in proc_cluster.workers}
        # leaving make_client disconnects but must not stop an external scheduler
        assert proc_cluster.scheduler.poll() is None
        assert all(p.poll() is None for p in proc_cluster.workers)
    np.testing.assert_array_equal(got_y, expected_y)
    np.testing.assert_array_equal(got_s, expected_s)
    assert got_y.dtype == expected_y.dtype
    assert pids <= worker_pids and len(pids) == 2  # both worker processes computed
    assert proc_cluster.scheduler.poll() is not None  # the fixture tore everything down


# --------------------------------------------------------------------------------------------
# TLS


@needs_openssl
def test_tls_cluster_accepts_only_clients_with_a_cluster_certificate(tmp_path):
    from distributed import Client, Security

    certs = make_certs(tmp_path / "certs")
    rogue = make_certs(tmp_path / "rogue")  # a valid chain, but from another CA
    good = TLSConfig(ca_file=certs / "ca.pem", cert=certs / "client.pem", key=certs / "client.key")
    with dask_cli_cluster(tmp_path / "c", n_workers=1, certs=certs) as proc_cluster:
        assert proc_cluster.address.startswith("tls://127.0.0.1:")
        cfg = ClusterConfig(kind=proc_cluster.spec, security=good, connect_timeout=20)
        with make_client(cfg, quiet=True) as client:
            x = da.arange(10_000, chunks=1000)
            assert int(client.compute(x.sum(), sync=True)) == 49_995_000
            assert all(a.startswith("tls://") for a in client.scheduler_info()["workers"])

        # the certificate may also come from dask's config (as in the Kubernetes recipe)
        tls_env = {"distributed.comm.require-encryption": True,
                   "distributed.comm.tls.ca-file": str(certs / "ca.pem"),
                   "distributed.comm.tls.client.cert": str(certs / "client.pem"),
                   "distributed.comm.tls.client.key": str(certs / "client.key")}  # fmt: skip
        with dask.config.set(tls_env):
            with make_client(ClusterConfig(kind=proc_cluster.spec), quiet=True) as client:
                assert int(client.submit(sum, [1, 2, 3]).result(timeout=30)) == 6

        # no security configured: a clear error before any connection attempt
        with pytest.raises(ValueError, match=r"\(TLS\) but no client certificate"):
            with make_client(ClusterConfig(kind=proc_cluster.spec), quiet=True):
                pass
        # plaintext to the TLS port: refused
        plain = proc_cluster.address.replace("tls://", "tcp://")
        with pytest.raises((OSError, TimeoutError)):
            Client(plain, timeout=3)
        # a certificate from another CA: the handshake fails both ways
        wrong = Security(
            tls_ca_file=str(rogue / "ca.pem"),
            tls_client_cert=str(rogue / "client.pem"),
            tls_client_key=str(rogue / "client.key"),
            require_encryption=True,
        )
        with pytest.raises((OSError, TimeoutError)):
            Client(proc_cluster.address, security=wrong, timeout=3)
        # the right CA but a client certificate it did not sign: rejected by the scheduler
        half = Security(
            tls_ca_file=str(certs / "ca.pem"),
            tls_client_cert=str(rogue / "client.pem"),
            tls_client_key=str(rogue / "client.key"),
            require_encryption=True,
        )
        with pytest.raises((OSError, TimeoutError)):
            Client(proc_cluster.address, security=half, timeout=3)


@needs_openssl
def test_local_kind_with_security_speaks_tls_only(tmp_path):
    cfg = ClusterConfig(kind="local", n_workers=1, memory_limit="512MiB", security=_tls(tmp_path))
    with make_client(cfg, quiet=True) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert [a[:6] for a in client.scheduler_info()["workers"]] == ["tls://"]
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6


@needs_openssl
def test_make_certs_script_outputs_a_verifiable_chain(tmp_path):
    certs = make_certs(tmp_path / "certs")
    for role in ("scheduler", "worker", "client"):
        subprocess.run(
            ["openssl", "verify", "-CAfile", str(certs / "ca.pem"), str(certs / f"{role}.pem")],
            check=True,
            capture_output=True,
        )
        assert (certs / f"{role}.key").stat().st_mode & 0o077 == 0  # keys private
    rerun = subprocess.run(
        ["bash", str(DEPLOY / "make-certs.sh"), str(certs)], capture_output=True, text=True
    )
    assert rerun.returncode != 0 and "not overwriting" in rerun.stderr


# --------------------------------------------------------------------------------------------
# dask-jobqueue job scripts (rendered, never submitted)


def test_slurm_job_script_has_gpu_and_worker_lines():
    pytest.importorskip("dask_jobqueue")
    cfg = ClusterConfig(
        kind="slurm",
        local_directory="$TMPDIR",
        jobqueue={"cores": 8, "memory": "48GiB", "walltime": "06:00:00", "queue": "gpu",
                  "account": "paus", "gpus_per_job": 1,
                  "job_extra_directives": ["--constraint=a100"],
                  "job_script_prologue": ["source /opt/pausdenoise/.venv/bin/activate"]},
    )  # fmt: skip
    script = cl.render_job_script(cfg)
    lines = script.splitlines()
    for directive in (
        "#SBATCH -p gpu",
        "#SBATCH -A paus",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH -t 06:00:00",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --constraint=a100",
    ):
        assert directive in lines, (directive, script)
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert worker.startswith(f"{sys.executable} -m distributed.cli.dask_worker tcp://")
    for arg in (
        "--nthreads 8",
        "--memory-limit 48.00GiB",
        "--resources GPU=1",
        "--local-directory $TMPDIR",
        "--death-timeout 120",
    ):
        assert arg in worker, (arg, worker)
    assert lines.index("source /opt/pausdenoise/.venv/bin/activate") < lines.index(worker)


def test_htcondor_job_script_has_gpu_and_worker_lines():
    pytest.importorskip("dask_jobqueue")
    cfg = ClusterConfig(
        kind="htcondor",
        jobqueue={"cores": 4, "memory": "16GiB", "disk": "30GiB", "walltime": "1-00:00:00",
                  "gpus_per_job": 1,
                  "job_extra_directives": ['+SingularityImage = "/cvmfs/x/pausdenoise.sif"']},
    )  # fmt: skip
    script = cl.render_job_script(cfg)
    lines = script.splitlines()
    for line in (
        "request_gpus = 1",
        "MY.DaskWorkerCores = 4",
        "+MaxRuntime = 86400",
        f"MY.DaskWorkerMemory = {16 * 2**30}",
        f"MY.DaskWorkerDisk = {30 * 2**30}",
        '+SingularityImage = "/cvmfs/x/pausdenoise.sif"',
        "RequestCpus = MY.DaskWorkerCores",
    ):
        assert line in lines, (line, script)
    args = next(line for line in lines if line.startswith("Arguments"))
    assert "-m distributed.cli.dask_worker tcp://" in args and "--resources GPU=1" in args


@needs_openssl
def test_jobqueue_with_tls_passes_certificates_to_workers(tmp_path):
    pytest.importorskip("dask_jobqueue")
    certs = make_certs(tmp_path / "certs")
    tls = TLSConfig(ca_file=certs / "ca.pem", cert=certs / "worker.pem", key=certs / "worker.key")
    script = cl.render_job_script(ClusterConfig(kind="slurm", security=tls))
    worker = next(line for line in script.splitlines() if "dask_worker" in line)
    assert " tls://" in worker
    assert f"--tls-ca-file {certs / 'ca.pem'}" in worker
    assert f"--tls-cert {certs / 'worker.pem'}" in worker


# --------------------------------------------------------------------------------------------
# deploy/ recipes: the files parse and the shipped jobqueue configs render


@pytest.mark.parametrize(("name", "cls_name", "expected"), [
    ("slurm", "SLURMCluster", "#SBATCH --gres=gpu:1"),
    ("htcondor", "HTCondorCluster", "request_gpus = 1"),
])  # fmt: skip
def test_shipped_jobqueue_yaml_renders(name, cls_name, expected):
    jq = pytest.importorskip("dask_jobqueue")
    conf = yaml.safe_load((DEPLOY / name / "jobqueue.yaml").read_text())["jobqueue"][name]
    with dask.config.set({f"jobqueue.{name}.{key}": value for key, value in conf.items()}):
        cluster = getattr(jq, cls_name)()
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    assert expected in script.splitlines()
    assert "python -m distributed.cli.dask_worker tcp://" in script
    assert "--resources GPU=1" in script and "--nthreads 8" in script


def test_deploy_files_parse():
    for script in DEPLOY.rglob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    for sbatch in DEPLOY.rglob("*.sbatch"):
        subprocess.run(["bash", "-n", str(sbatch)], check=True)
    for path in DEPLOY.rglob("*.yaml"):
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(d is not None for d in docs), path
    manifest = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "daskcluster.yaml").read_text()))
    gpu_limits = [
        c["resources"]["limits"].get("nvidia.com/gpu")
        for d in manifest if d.get("kind") == "DaskCluster"
        for c in d["spec"]["worker"]["spec"]["containers"]
    ]  # fmt: skip
    assert gpu_limits and all(int(n) >= 1 for n in gpu_limits)
    # deploy/dask.yaml only sets keys dask knows, with values of the default's kind
    import distributed  # noqa: F401  (registers distributed's defaults)

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    for key, value in leaves(yaml.safe_load((DEPLOY / "dask.yaml").read_text())):
        default = dask.config.get(key)  # KeyError for a misspelt key
        if value is None:  # distributed documents None as "unset this variable" here only
            assert key.startswith("distributed.nanny.pre-spawn-environ."), key
            continue
        assert type(value) in (type(default), str, int, float), key
    memory = yaml.safe_load((DEPLOY / "dask.yaml").read_text())["distributed"]["worker"]["memory"]
    fractions = [memory[k] for k in ("target", "spill", "pause", "terminate")]
    assert fractions == sorted(fractions) and fractions[-1] < 1
    for recipe in ("local-gpu-node", "slurm", "htcondor", "kubernetes"):
        assert (DEPLOY / recipe / "README.md").is_file(), recipe


# --------------------------------------------------------------------------------------------
# The SLURM batch recipe, run for real with `srun` replaced by a local shim


FAKE_SRUN = """#!/usr/bin/env bash
# test shim: drop srun's options, run the command here
while [[ "${1:-}" == --* ]]; do shift; done
exec "$@"
"""

FAKE_PAUSDENOISE = """#!/usr/bin/env python
# test shim for `pausdenoise run`: connect with --cluster, compute, write the outcome
import json, os, sys
import dask.array as da
from pausdenoise.cluster import ClusterConfig, cluster_summary, make_client
spec = sys.argv[sys.argv.index("--cluster") + 1]
with make_client(ClusterConfig(kind=spec, n_workers=1, connect_timeout=60), quiet=True) as c:
    total = int(c.compute(da.arange(1000, chunks=100).sum(), sync=True))
    out = {"spec": spec, "total": total, "workers": cluster_summary(c)["workers"],
           "address": c.scheduler.address, "argv": sys.argv[1:]}
with open(os.environ["FAKE_RESULT"], "w") as fh:
    json.dump(out, fh)
"""


@pytest.mark.slow
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_slurm_batch_script_runs_scheduler_workers_and_pipeline(tmp_path, tls):
    if tls and shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    import json

    from cluster_fixtures import ROOT

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("pausdenoise", FAKE_PAUSDENOISE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # a "virtual environment" whose activate puts the shims before this interpreter's bin/
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(
        f'export PATH="{bin_dir}:{Path(sys.executable).parent}:$PATH"\n'
    )
    result = tmp_path / "result.json"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        PAUSDENOISE_VENV=str(venv),
        PAUSDENOISE_DEPLOY=str(DEPLOY),
        SLURM_JOB_ID="4242",
        SLURM_SUBMIT_DIR=str(tmp_path),
        SLURM_JOB_NUM_NODES="1",
        SLURM_CPUS_PER_TASK="1",
        GPUS_PER_NODE="0",
        TMPDIR=str(tmp_path),
        FAKE_RESULT=str(result),
    )
    if tls:
        env["PAUSDENOISE_CERTS"] = str(make_certs(tmp_path / "certs"))
    proc = subprocess.Popen(
        ["bash", str(DEPLOY / "slurm" / "pausdenoise.sbatch"), "survey.yaml", "--out", "x"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)
    run_dir = tmp_path / ".dask" / "4242"
    logs = "\n".join(p.read_text() for p in run_dir.glob("*.log"))
    assert proc.returncode == 0, output + logs
    got = json.loads(result.read_text())
    assert got["total"] == 499500 and got["workers"] == 1
    assert got["spec"] == f"scheduler-file:{run_dir / 'scheduler.json'}"
    assert got["address"].startswith("tls://" if tls else "tcp://")
    assert got["argv"][:2] == ["run", "--config"] and got["argv"][-2:] == ["--out", "x"]


@pytest.mark.slow
def test_htcondor_worker_script_joins_from_the_scheduler_file(tmp_path):
    """deploy/htcondor/worker.sh as an HTCondor job would run it: sized from the slot's
    machine ad, spilling to the job's scratch directory."""
    from cluster_fixtures import ROOT, _stop
    from distributed import Client

    ad = tmp_path / "machine.ad"
    ad.write_text("Cpus = 2\nMemory = 1024\n")
    env = dict(os.environ, PAUSDENOISE_VENV=sys.prefix, PAUSDENOISE_DEPLOY=str(DEPLOY),
               _CONDOR_MACHINE_AD=str(ad), _CONDOR_SCRATCH_DIR=str(tmp_path),
               PYTHONPATH=str(ROOT))  # fmt: skip
    env.pop("CUDA_VISIBLE_DEVICES", None)
    with dask_cli_cluster(tmp_path / "c", n_workers=0) as proc_cluster:
        with (tmp_path / "worker.log").open("wb") as log:
            job = subprocess.Popen(
                ["bash", str(DEPLOY / "htcondor" / "worker.sh"), str(proc_cluster.scheduler_file)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            with Client(proc_cluster.address, timeout=30) as client:
                client.wait_for_workers(1, timeout=60)
                (worker,) = client.scheduler_info(n_workers=-1)["workers"].values()
                assert client.submit(sum, [1, 2]).result(timeout=30) == 3
        finally:
            _stop(job)
    assert (worker["nthreads"], worker["memory_limit"]) == (2, 2**30)
    assert worker["local_directory"].startswith(str(tmp_path))
