"""Reliability under faults, with real processes on a tiny simulated survey.

1. A dask worker process SIGKILLed mid-denoise and mid-photometry on a 2-worker
   ``distributed.LocalCluster`` (nannies restart it, the scheduler reruns the lost tasks):
   outputs equal an undisturbed run's bit for bit.
2. The whole ``pausdenoise run`` SIGKILLed during train, then during denoise, then during
   photometry (one run directory, each rerun killed at the next stage): everything on disk
   stays readable, each rerun recomputes only what was missing (counted from ``run.json``),
   and the end result equals an undisturbed run's (training is deterministic given the seed).
3. Two runs on one run directory: the second exits 4 naming the holder; a SIGKILLed holder's
   stale lock is taken over.
4. An unusable output location (``--out`` below a regular file; a survey needing more disk than
   exists): exit 1 with a clear message before any work, completed outputs untouched.

The CLI subprocesses of (2) run through a small wrapper that sleeps before every denoised-chunk
write and photometry-partition write (``THROTTLE_S``), so the kill lands inside the stage on a
busy 2-core machine; what is computed and written is unchanged (the undisturbed reference run
uses plain ``python -m pausdenoise.cli`` and the outputs are compared bit for bit).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from pipeline_fixtures import TINY

from pausdenoise.cli import EXIT_FAILURE, EXIT_LOCKED, EXIT_OK, main

ROOT = Path(__file__).resolve().parents[2]
THROTTLE_S = 0.12

#: Same tiny survey as test_pipeline; 6 training epochs so that a kill can land mid-training.
KILL_CFG = copy.deepcopy(TINY)
KILL_CFG["train"].update(epochs=6, steps_per_epoch=4)
KILL_STAGES = "simulate,ingest,train,denoise,photometry"

_WRAPPER = """
import functools, os, sys, time
delay = float(os.environ.get("PAUSDENOISE_TEST_THROTTLE", "0"))
if delay:
    import pausdenoise.denoise.writer as d
    import pausdenoise.photometry.driver as p
    def slow(f):
        @functools.wraps(f)
        def g(*a, **k):
            time.sleep(delay)
            return f(*a, **k)
        return g
    d._write_block = slow(d._write_block)
    p._measure_and_write = slow(p._measure_and_write)
from pausdenoise.cli import main
sys.exit(main(sys.argv[1:]))
"""


# --------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                           if p))


def _cli(args: list[str], log: Path, throttle: float = 0.0) -> subprocess.Popen:
    """Start ``pausdenoise <args>`` in its own process group, output to ``log``."""
    env = _env()
    if throttle:
        env["PAUSDENOISE_TEST_THROTTLE"] = str(throttle)
        cmd = [sys.executable, "-c", _WRAPPER, *args]
    else:
        cmd = [sys.executable, "-m", "pausdenoise.cli", *args]
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(ROOT),
                                start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for(cond, proc: subprocess.Popen, log: Path, timeout: float = 120.0,
              what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}\n"
                                 + log.read_text(errors="replace")[-4000:])
        if time.monotonic() > deadline:
            _kill(proc)
            raise AssertionError(f"timed out waiting for {what}\n"
                                 + log.read_text(errors="replace")[-4000:])
        time.sleep(0.01)


def _record(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _flag_files(out: Path) -> list[Path]:
    return list((out / "store.zarr" / "frames").glob("*/denoised_done/c/*/*"))


def _parquet_files(out: Path) -> list[Path]:
    return [p for p in (out / "photometry").rglob("*.parquet") if not p.name.startswith(".")]


def _check_readable(out: Path) -> dict[str, int]:
    """Open and read every zarr array and every Parquet file under ``out``; return counts."""
    import zarr

    n_arrays = 0
    store = out / "store.zarr"
    if store.exists():
        root = zarr.open_group(str(store), mode="r")
        for name, frame in root["frames"].groups():
            for _aname, arr in frame.arrays():
                np.asarray(arr[...])  # every chunk decodes
                n_arrays += 1
            assert name
    files = _parquet_files(out) if (out / "photometry").exists() else []
    for p in files:
        pq.read_table(p)
    return {"arrays": n_arrays, "parquet": len(files)}


def _denoised_done(out: Path) -> int:
    import zarr

    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    total = 0
    for _, frame in root["frames"].groups():
        if "denoised_done" in frame:
            total += int(np.asarray(frame["denoised_done"][...]).sum())
    return total


def _denoised_arrays(out: Path) -> dict[str, np.ndarray]:
    import zarr

    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    return {name: np.asarray(g["denoised"][...]) for name, g in root["frames"].groups()}


def _photometry_table(out: Path) -> pd.DataFrame:
    from pausdenoise.photometry import read_photometry

    df = read_photometry(out / "photometry")
    return df.sort_values(["kind", "expnum", "ccd", "ref_id"]).reset_index(drop=True)


def _state_dict(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _assert_same_outputs(a: Path, b: Path) -> None:
    da_, db_ = _denoised_arrays(a), _denoised_arrays(b)
    assert sorted(da_) == sorted(db_)
    for k in da_:
        assert da_[k].tobytes() == db_[k].tobytes(), f"denoised {k} differs"
    pd.testing.assert_frame_equal(_photometry_table(a), _photometry_table(b), check_exact=True)


# --------------------------------------------------------------------------- 2. whole run killed


@pytest.fixture(scope="module")
def kill_cfg(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("killcfg") / "kill.yaml"
    p.write_text(yaml.safe_dump(KILL_CFG))
    return p


def test_run_killed_in_train_denoise_photometry_resumes_exactly(kill_cfg, tmp_path):
    """SIGKILL the CLI in train, rerun and SIGKILL it in denoise, rerun and SIGKILL it in
    photometry, rerun to the end: readable at every step, only the missing work redone,
    final outputs equal an undisturbed run's bit for bit."""
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    log = tmp_path / "cli.log"
    args = ["run", "--config", str(kill_cfg), "--stages", KILL_STAGES]
    # the undisturbed reference runs beside the chain (plain CLI, no throttle)
    ref = _cli([*args, "--out", str(ref_out)], tmp_path / "ref.log")
    observed: dict[str, object] = {}
    try:
        # --- kill 1: during training (after epoch 1 saved its partial checkpoint)
        p = _cli([*args, "--out", str(out)], log, THROTTLE_S)
        partial = out / "model" / ".n2v.partial.safetensors"
        _wait_for(partial.exists, p, log, what="the first epoch's partial checkpoint")
        _kill(p)
        rec = _record(out)
        assert rec["stages"]["train"]["status"] == "running"
        assert rec["stages"]["ingest"]["status"] == "done"
        assert not (out / "model" / "n2v.safetensors").exists()
        observed["after_train_kill"] = _check_readable(out)

        # --- rerun, kill 2: during denoise, once >= 30 % of the 24 chunks are flagged
        p = _cli([*args, "--out", str(out)], log, THROTTLE_S)
        _wait_for(lambda: len(_flag_files(out)) >= 8, p, log, what="30 % of denoised chunks")
        _kill(p)
        rec = _record(out)
        assert rec["stages"]["train"]["status"] == "done"
        assert rec["stages"]["denoise"]["status"] == "running"
        done_before = _denoised_done(out)
        assert 8 <= done_before < 24
        observed["denoise_chunks_done_at_kill"] = done_before
        observed["after_denoise_kill"] = _check_readable(out)
        ckpt_bytes = (out / "model" / "n2v.safetensors").read_bytes()

        # --- rerun, kill 3: during photometry, once 4 of the 12 partitions exist
        p = _cli([*args, "--out", str(out)], log, THROTTLE_S)
        _wait_for(lambda: len(_parquet_files(out)) >= 4, p, log, what="4 photometry partitions")
        _kill(p)
        rec = _record(out)
        assert rec["stages"]["photometry"]["status"] == "running"
        assert rec["stages"]["train"]["status"] == "done"  # not retrained
        assert (out / "model" / "n2v.safetensors").read_bytes() == ckpt_bytes
        den = rec["stages"]["denoise"]
        assert den["status"] == "done"
        assert den["summary"]["chunks_written"] == 24 - done_before  # only the missing chunks
        observed["denoise_rerun_chunks_written"] = den["summary"]["chunks_written"]
        readable = _check_readable(out)
        parts_before = readable["parquet"]
        assert 4 <= parts_before < 12
        observed["photometry_partitions_at_kill"] = parts_before
        observed["after_photometry_kill"] = readable

        # --- final rerun: completes, writes only the missing partitions
        p = _cli([*args, "--out", str(out)], log, THROTTLE_S)
        assert p.wait(timeout=300) == EXIT_OK, log.read_text(errors="replace")[-4000:]
        rec = _record(out)
        assert all(rec["stages"][s]["status"] == "done" for s in KILL_STAGES.split(","))
        pho = rec["stages"]["photometry"]["summary"]
        assert pho["partitions_written"] == 12 - parts_before
        observed["photometry_rerun_partitions_written"] = pho["partitions_written"]
        leftovers = [q.name for q in (out / "photometry").rglob(".*")]
        observed["hidden_leftovers"] = leftovers

        assert ref.wait(timeout=300) == EXIT_OK, (tmp_path / "ref.log").read_text()[-4000:]
        # training is deterministic given the seed: the retrained weights equal the reference
        w_ref = _state_dict(ref_out / "model" / "n2v.safetensors")
        w_out = _state_dict(out / "model" / "n2v.safetensors")
        assert sorted(w_ref) == sorted(w_out)
        assert all(w_ref[k].tobytes() == w_out[k].tobytes() for k in w_ref)
        _assert_same_outputs(ref_out, out)
    finally:
        if ref.poll() is None:
            _kill(ref)
        print("observed:", json.dumps(observed))


# --------------------------------------------------------------------------- 3. lock


def test_second_run_on_same_directory_is_refused(tmp_path):
    """A live run holds the directory: a second run exits 4 naming the holder's pid; after
    the holder is SIGKILLed its stale lock is taken over."""
    from pausdenoise.runstate import RunPaths, run_lock

    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    # 72 frames of 512x512 keep the first run busy for a minute or more, far longer than the
    # second one needs to start and check the lock even on a loaded machine (with the
    # default 12 frames the first run could end first); it is killed as soon as the second
    # has answered
    cfg.write_text(yaml.safe_dump({"cluster": {"kind": "threads"},
                                   "simulate": {"exposures_per_band": 24}}))
    first = _cli(["simulate", "--config", str(cfg), "--out", str(out)], tmp_path / "first.log")
    try:
        _wait_for((out / ".lock").exists, first, tmp_path / "first.log", what="the lock")
        holder = json.loads((out / ".lock").read_text())
        assert holder["pid"] == first.pid
        second = subprocess.run(
            [sys.executable, "-m", "pausdenoise.cli", "simulate", "--config", str(cfg),
             "--out", str(out)], capture_output=True, text=True, env=_env(), timeout=120)
        assert first.poll() is None, "the first run ended before the second checked the lock"
        assert second.returncode == EXIT_LOCKED, second.stderr
        assert f"locked by pid {first.pid}" in second.stderr
        assert str(out / ".lock") in second.stderr
    finally:
        _kill(first)
    # SIGKILL left the lock behind; the next run on this host takes it over
    assert (out / ".lock").exists()
    with run_lock(RunPaths(out)):
        assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    assert not (out / ".lock").exists()


# --------------------------------------------------------------------------- 4. unusable output


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_out_below_a_regular_file_fails_cleanly(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("I am a file\n")
    res = subprocess.run(
        [sys.executable, "-m", "pausdenoise.cli", "run", "--out", str(blocker / "run"),
         "--stages", "simulate"], capture_output=True, text=True, env=_env(), timeout=120)
    assert res.returncode == EXIT_FAILURE, res.stderr
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "preflight failed" in res.stderr and str(blocker) in res.stderr
    assert blocker.read_text() == "I am a file\n"


def test_too_little_space_is_refused_before_work_and_keeps_outputs(tmp_path, capsys):
    """A survey that needs petabytes fails preflight (exit 1, GB numbers in the message) and
    leaves the completed run directory as it was."""
    out = tmp_path / "out"
    (out / "photometry" / "band=NB455" / "kind=raw").mkdir(parents=True)
    done = out / "photometry" / "band=NB455" / "kind=raw" / "00001000_01.parquet"
    pd.DataFrame({"ref_id": [1, 2]}).to_parquet(done)
    (out / "run.json").write_text(json.dumps({"stages": {"photometry": {"status": "done"}}}))
    before = _tree_digest(out)
    from pausdenoise.paus_layout import NARROW_BANDS

    huge = ["--set", f"simulate.bands={json.dumps(list(NARROW_BANDS))}",
            "--set", "simulate.exposures_per_band=64", "--set", "simulate.n_ccds=18",
            "--set", "simulate.ccd_shape=[4096, 2048]"]
    capsys.readouterr()
    assert main(["run", "--out", str(out), *huge]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "preflight failed" in err and "GB free but this run needs about" in err
    assert str(out) in err
    assert _tree_digest(out) == before
    assert not (out / ".lock").exists()


# --------------------------------------------------------------------------- 1. worker killed

WORKER_SIM = {"seed": 11, "ccd_shape": [128, 128], "bands": ["NB455", "NB615"],
              "exposures_per_band": 3, "galaxy_density": 300}


@pytest.fixture(scope="module")
def worker_setup(tmp_path_factory):
    """A tiny ingested store (6 frames of 128x128 in 32x32 chunks: 96 denoise chunks), a
    random-initialised tiny U-Net and its catalogue."""
    import torch

    from pausdenoise.ingest import IngestConfig, ingest
    from pausdenoise.n2v.unet import UNet, UNetConfig
    from pausdenoise.simulate import SimulationConfig, write_survey

    root = tmp_path_factory.mktemp("workerkill")
    write_survey(SimulationConfig(**WORKER_SIM), root / "survey")
    rep = ingest(root / "survey", root / "store.zarr", IngestConfig(chunks=(32, 32)))
    assert rep.exit_status == 0, rep.summary()
    torch.manual_seed(3)
    model = UNet(UNetConfig(depth=2, base_channels=4, batch_norm=False)).eval()
    cat = pd.read_parquet(root / "survey" / "catalogue.parquet")
    return root, model, cat


def _worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def _kill_busy_worker(client) -> int:
    """SIGKILL the worker process that is running a task now; return its pid."""
    pids = _worker_pids(client)
    processing = client.processing()
    busy = [w for w, keys in processing.items() if keys and w in pids] or list(pids)
    pid = pids[busy[0]]
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.slow  # ~70 s on the busy 2-core machine (LocalCluster start, nanny restarts)
@pytest.mark.timeout(300)
def test_worker_killed_mid_denoise_and_mid_photometry(worker_setup, tmp_path):
    from distributed import Client, LocalCluster, wait

    from pausdenoise import store as st
    from pausdenoise.denoise import DenoiseConfig, ModelRef, denoise_to_store
    from pausdenoise.photometry import PhotometryConfig, read_photometry, run_photometry

    root, model, cat = worker_setup
    ref = ModelRef.from_model(model)
    dcfg = DenoiseConfig(device="cpu", torch_threads=1)
    pcfg = PhotometryConfig(annulus_r_in=12, annulus_r_out=20, min_annulus_pixels=20,
                            subpixels=5)
    stores = {k: tmp_path / f"{k}.zarr" for k in ("calm", "killed")}
    for s in stores.values():
        shutil.copytree(root / "store.zarr", s)
    frames = st.list_frames(stores["calm"])
    total_chunks = 0
    observed: dict[str, object] = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      scheduler_kwargs={"dashboard": False}, memory_limit="1GiB") as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)

        def denoise(store):
            return client.compute([denoise_to_store(store, f, ref, dcfg) for f in frames])

        # undisturbed
        calm = client.gather(denoise(stores["calm"]))
        total_chunks = int(sum(calm))
        # disturbed: kill a busy worker when 30 % of the chunks are flagged
        futs = denoise(stores["killed"])
        flags = stores["killed"] / "frames"
        deadline = time.monotonic() + 120
        while len(list(flags.glob("*/denoised_done/c/*/*"))) < 0.3 * total_chunks:
            assert time.monotonic() < deadline, "denoise did not progress"
            time.sleep(0.005)
        at_kill = len(list(flags.glob("*/denoised_done/c/*/*")))
        killed_pid = _kill_busy_worker(client)
        written = client.gather(futs)
        observed["denoise"] = {"chunks": total_chunks, "flagged_at_kill": at_kill,
                               "chunks_written_by_disturbed_run": int(sum(written)),
                               "killed_pid": killed_pid}
        assert at_kill < total_chunks
        assert int(sum(written)) == total_chunks  # one graph: every chunk written once
        with contextlib.suppress(Exception):
            client.wait_for_workers(2, timeout=60)  # the nanny restarts the dead worker
        observed["workers_after_denoise"] = len(_worker_pids(client))

        # photometry, same pattern (12 partitions)
        outs = {k: tmp_path / f"phot-{k}" for k in stores}
        client.gather(client.compute(run_photometry(stores["calm"], outs["calm"], frames, cat,
                                                    pcfg, compute=False)))
        tasks = run_photometry(stores["killed"], outs["killed"], frames, cat, pcfg,
                               compute=False)
        futs = client.compute(tasks)
        deadline = time.monotonic() + 120
        while sum(f.done() for f in futs) < 0.3 * len(futs):
            assert time.monotonic() < deadline, "photometry did not progress"
            time.sleep(0.005)
        at_kill = sum(f.done() for f in futs)
        killed_pid = _kill_busy_worker(client)
        wait(futs, timeout=120)
        assert all(f.status == "finished" for f in futs), [f.status for f in futs]
        assert at_kill < len(futs)
        observed["photometry"] = {"partitions": len(futs), "done_at_kill": at_kill,
                                  "killed_pid": killed_pid}
    print("observed:", json.dumps(observed))

    a = _denoised_arrays_of(stores["calm"])
    b = _denoised_arrays_of(stores["killed"])
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), f"denoised {k} differs after the worker kill"
        assert np.isfinite(a[k]).all()
    for s in stores.values():
        for f in frames:
            assert st.open_store(s, "r")[f"frames/{f}/denoised"].attrs["complete"] is True
    ta = read_photometry(outs["calm"]).sort_values(["kind", "expnum", "ref_id"])
    tb = read_photometry(outs["killed"]).sort_values(["kind", "expnum", "ref_id"])
    assert len(ta) > 0
    pd.testing.assert_frame_equal(ta.reset_index(drop=True), tb.reset_index(drop=True),
                                  check_exact=True)


def _denoised_arrays_of(store: Path) -> dict[str, np.ndarray]:
    import zarr

    root = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(g["denoised"][...]) for name, g in root["frames"].groups()}
