"""Reruns follow the data: each change recomputes exactly the work it touches.

One tiny run (simulate → photometry) is made once; each case copies it and reruns with a
change: a retrained model, another catalogue, the same catalogue named explicitly, a given
checkpoint with train asked for, and ``--force`` on one stage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pipeline_fixtures import TINY

from pausdenoise import store as st
from pausdenoise.cli import EXIT_OK, EXIT_USAGE, main
from pausdenoise.denoise.restore import aperture_weight, geometry_from_catalogue
from pausdenoise.photometry import read_photometry
from pausdenoise.pipeline.runner import STAGES as ALL
from pausdenoise.pipeline.runner import _outdate_downstream
from pausdenoise.runstate import RunPaths, RunRecord

STAGES = "simulate,ingest,train,denoise,photometry"
KEYS = ["ref_id", "expnum", "ccd", "kind"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fresh")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = root / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", STAGES]) == EXIT_OK
    return cfg, out


def _copy(base: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    cfg, out = base
    dst = tmp_path / "out"
    shutil.copytree(out, dst)
    return cfg, dst


def _run(cfg: Path, out: Path, *args: str, command: str = "run") -> int:
    extra = ["--stages", STAGES] if command == "run" else []
    return main([command, "--config", str(cfg), "--out", str(out), *extra, *args])


def _statuses(out: Path) -> dict[str, str]:
    summary = json.loads((out / "run-summary.json").read_text())
    return {name: s["status"] for name, s in summary.items()}


def _summary(out: Path, stage: str) -> dict:
    return json.loads((out / "run.json").read_text())["stages"][stage]["summary"]


def _frames(out: Path) -> list[str]:
    return st.list_frames(out / "store.zarr")


def _mtimes(out: Path, kind: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns
            for p in (out / "photometry").glob(f"band=*/kind={kind}/*.parquet")}


def _phot(out: Path) -> pd.DataFrame:
    return read_photometry(out / "photometry").sort_values(KEYS).reset_index(drop=True)


UPSTREAM = {"simulate": "up to date", "ingest": "up to date", "train": "up to date",
            "denoise": "up to date"}


def test_retraining_remeasures_the_denoised_partitions_only(base, tmp_path):
    cfg, out = _copy(base, tmp_path)
    before, raw_times = _phot(out), _mtimes(out, "raw")
    n = len(_frames(out))
    assert _run(cfg, out, "--set", "train.epochs=1") == EXIT_OK
    assert _statuses(out) == {"simulate": "up to date", "ingest": "up to date",
                              "train": "done", "denoise": "done", "photometry": "done"}
    assert _summary(out, "denoise")["chunks_written"] == 4 * n  # 128² px in 64² chunks
    assert _summary(out, "photometry")["partitions_written"] == n  # kind=denoised
    assert _mtimes(out, "raw") == raw_times
    after = _phot(out)
    assert after[KEYS].equals(before[KEYS])
    raw = (after["kind"] == "raw").to_numpy()
    np.testing.assert_array_equal(after.loc[raw, "flux"], before.loc[raw, "flux"])
    den_a, den_b = after.loc[~raw, "flux"].to_numpy(), before.loc[~raw, "flux"].to_numpy()
    ok = np.isfinite(den_a) & np.isfinite(den_b)
    assert ok.sum() > 0.5 * len(ok) and not np.array_equal(den_a[ok], den_b[ok])


def test_another_catalogue_remeasures_the_frames_whose_rows_changed(base, tmp_path):
    cfg, out = _copy(base, tmp_path)
    cat = pd.read_parquet(out / "survey" / "catalogue.parquet")
    groups = [g for _, g in cat.groupby(["expnum", "ccd"], sort=True)]
    kept = groups[0]
    new = pd.concat([g.head(3) for g in groups[1:]] + [kept]).sort_index()
    path = tmp_path / "smaller.parquet"
    new.to_parquet(path, index=False)
    frame0 = f"{int(kept['expnum'].iloc[0]):08d}_{int(kept['ccd'].iloc[0]):02d}.parquet"
    times = {k: _mtimes(out, k)[frame0] for k in ("raw", "denoised")}
    n = len(_frames(out))
    assert _run(cfg, out, "--set", f"input.catalogue={path}") == EXIT_OK
    assert _statuses(out) == {**UPSTREAM, "photometry": "done"}
    assert _summary(out, "photometry")["partitions_written"] == 2 * (n - 1)
    assert {k: _mtimes(out, k)[frame0] for k in ("raw", "denoised")} == times
    after = _phot(out)
    assert len(after) == 2 * len(new)  # no row of the old catalogue is left
    got = set(after[["ref_id", "expnum", "ccd"]].itertuples(index=False, name=None))
    assert got == set(new[["ref_id", "expnum", "ccd"]].itertuples(index=False, name=None))


def test_naming_the_default_catalogue_recomputes_nothing(base, tmp_path):
    cfg, out = _copy(base, tmp_path)
    times = _mtimes(out, "raw") | {f"d{k}": v for k, v in _mtimes(out, "denoised").items()}
    default = out / "survey" / "catalogue.parquet"
    assert _run(cfg, out, "--set", f"input.catalogue={default}") == EXIT_OK
    assert _statuses(out) == {**UPSTREAM, "photometry": "done"}
    assert _summary(out, "photometry")["partitions_written"] == 0
    assert (_mtimes(out, "raw") | {f"d{k}": v for k, v in _mtimes(out, "denoised").items()}
            == times)


def test_a_catalogue_frame_for_a_per_frame_catalogue_is_said_to_be_unused(base, tmp_path,
                                                                          capsys):
    """input.catalogue_frame names the frame of an image catalogue; given with a per-frame
    catalogue it changes nothing (no partition remeasured) and the run says it is unused."""
    cfg, out = _copy(base, tmp_path)
    default = out / "survey" / "catalogue.parquet"
    assert _run(cfg, out, "--set", f"input.catalogue={default}",
                "--set", "input.catalogue_frame=00000001_01") == EXIT_OK
    assert "input.catalogue_frame '00000001_01' is not used" in capsys.readouterr().out
    assert _summary(out, "photometry")["partitions_written"] == 0


def test_given_checkpoint_with_train_asked_for_is_refused(base, capsys):
    cfg, out = base
    record = (out / "run.json").stat().st_mtime_ns
    ckpt = f"input.checkpoint={out / 'model' / 'n2v.safetensors'}"
    capsys.readouterr()
    assert main(["run", "--config", str(cfg), "--out", str(out),
                 "--stages", "ingest,train,denoise", "--set", ckpt]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "input.checkpoint is set" in err and "drop train from --stages" in err
    assert _run(cfg, out, "--set", ckpt, command="train") == EXIT_USAGE
    assert "training would be thrown away" in capsys.readouterr().err
    assert (out / "run.json").stat().st_mtime_ns == record


def test_missing_catalogue_or_checkpoint_is_refused_before_work(base, tmp_path, capsys):
    cfg, out = base
    record = (out / "run.json").stat().st_mtime_ns
    missing = tmp_path / "nowhere.parquet"
    capsys.readouterr()
    assert _run(cfg, out, "--set", f"input.catalogue={missing}",
                command="photometry") == EXIT_USAGE
    assert f"input.catalogue {missing} not found" in capsys.readouterr().err
    ckpt = tmp_path / "nowhere.safetensors"
    assert _run(cfg, out, "--set", f"input.checkpoint={ckpt}",
                command="denoise") == EXIT_USAGE
    assert f"input.checkpoint {ckpt} not found" in capsys.readouterr().err
    assert (out / "run.json").stat().st_mtime_ns == record


def test_force_redoes_the_work_of_the_stage_it_names(base, tmp_path):
    cfg, out = _copy(base, tmp_path)
    frames = _frames(out)
    assert _run(cfg, out, "--force", command="ingest") == EXIT_OK
    ing = _summary(out, "ingest")
    assert ing["ingested"] == frames and ing["skipped"] == []
    assert ing["frames_rewritten"] == frames and ing["frames_changed"] == []
    # the re-ingest dropped the denoised arrays: denoise reruns, which outdates the
    # photometry; the same pixels and model give the same key, so its partitions stay
    # valid and it rewrites none
    assert _run(cfg, out) == EXIT_OK
    assert _statuses(out) == {"simulate": "up to date", "ingest": "up to date",
                              "train": "up to date", "denoise": "done",
                              "photometry": "done"}
    assert _summary(out, "denoise")["chunks_written"] == 4 * len(frames)
    assert _summary(out, "photometry")["partitions_written"] == 0
    assert _run(cfg, out, "--force", command="photometry") == EXIT_OK
    assert _summary(out, "photometry")["partitions_written"] == 2 * len(frames)
    assert _run(cfg, out, "--force", command="denoise") == EXIT_OK
    assert _summary(out, "denoise")["chunks_written"] == 4 * len(frames)


def test_a_stage_run_after_the_stages_that_read_it_outdates_them(base, tmp_path):
    """Fingerprints digest configuration: an evaluate run before the denoise ever ran, or a
    forced retraining, would leave the readers "up to date" and stale. A stage that runs
    outdates every stage that reads its outputs (and nothing else)."""
    record = RunRecord(RunPaths(tmp_path))
    for stage in ALL:
        record.set(stage, status="done", fingerprint="x")
    _outdate_downstream(record, "denoise", {})
    outdated = {s for s in ALL if record.stage(s)["status"] == "outdated"}
    assert outdated == {"gan", "photometry", "compare", "evaluate", "report"}
    for stage in ALL:
        record.set(stage, status="done")
    _outdate_downstream(record, "train", {})
    assert {s for s in ALL if record.stage(s)["status"] == "outdated"} == {
        "denoise", "gan", "photometry", "inject", "compare", "evaluate", "report"}
    for stage in ALL:
        record.set(stage, status="done")
    _outdate_downstream(record, "simulate", {})
    assert {s for s in ALL if record.stage(s)["status"] == "outdated"} == {"ingest"}
    # through the command line: the denoise run on its own after the photometry
    cfg, out = _copy(base, tmp_path / "run")
    assert _run(cfg, out, "--force", command="denoise") == EXIT_OK
    assert json.loads((out / "run.json").read_text())["stages"]["photometry"]["status"] \
        == "outdated"
    assert _run(cfg, out) == EXIT_OK
    assert _statuses(out)["photometry"] == "done"
    assert _summary(out, "photometry")["partitions_written"] == 0  # same model, same key


def test_new_chunks_rewrite_the_store_but_keep_the_model(base, tmp_path):
    cfg, out = _copy(base, tmp_path)
    frames = _frames(out)
    model = (out / "model" / "n2v.safetensors").stat().st_mtime_ns
    assert _run(cfg, out, "--set", "ingest.chunks=[128,128]") == EXIT_OK
    statuses = _statuses(out)
    assert statuses["ingest"] == "done" and statuses["train"] == "up to date"
    assert statuses["denoise"] == "done"
    assert _summary(out, "ingest")["frames_rewritten"] == frames
    assert _summary(out, "ingest")["frames_changed"] == []
    assert st.write_chunks(out / "store.zarr", frames[0]) == (128, 128)
    assert _summary(out, "denoise")["chunks_written"] == len(frames)  # one 128² chunk each
    assert (out / "model" / "n2v.safetensors").stat().st_mtime_ns == model


def _add_to_pixel(hdul) -> None:
    hdul[0].data[10, 10] += 1000.0


def _mask_pixels(hdul) -> None:
    hdul[0].data[10:12, 10:12] = 1


@pytest.mark.parametrize(("pattern", "edit"), [("*.img.fits", _add_to_pixel),
                                               ("*.msk.fits*", _mask_pixels)])
def test_a_fits_file_edited_in_place_is_ingested_again(base, tmp_path, pattern, edit):
    """An image or a mask file (the image untouched) edited in place: the ingest stage runs
    again and re-reads that frame; a rerun without an edit finds it up to date."""
    from astropy.io import fits

    _, src = base
    survey = tmp_path / "survey"
    shutil.copytree(src / "survey", survey)
    cfg = tmp_path / "fits.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "input": {"source": "fits",
                                                     "fits_path": str(survey)}}))
    out = tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", "ingest"]) == 0
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", "ingest"]) == 0
    assert _statuses(out) == {"ingest": "up to date"}
    with fits.open(sorted(survey.glob(pattern))[0], mode="update") as hdul:
        edit(hdul)
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", "ingest"]) == 0
    assert _statuses(out) == {"ingest": "done"}
    summary = _summary(out, "ingest")
    assert len(summary["frames_changed"]) == 1 and len(summary["ingested"]) == 1


def test_a_new_profile_model_remeasures_every_partition(base, tmp_path, monkeypatch):
    """The profile fit's version is part of what the photometry stage reads: a new one
    redoes the stage and every partition, with the same settings."""
    import pausdenoise.photometry.config as pc

    cfg, out = _copy(base, tmp_path)
    n = len(_frames(out))
    monkeypatch.setattr(pc, "PROFILE_MODEL", pc.PROFILE_MODEL + "-next")
    assert _run(cfg, out) == EXIT_OK
    assert _statuses(out) == {**UPSTREAM, "photometry": "done"}
    assert _summary(out, "photometry")["partitions_written"] == 2 * n


def test_restoring_the_catalogue_follows_its_rows(base, tmp_path):
    """``denoise.restore_catalogue``: turning it on re-denoises every frame and remeasures
    the denoised partitions only; a catalogue changed on some frames re-denoises those."""
    cfg, out = _copy(base, tmp_path)
    n = len(_frames(out))
    before = {f: st.open_frame(out / "store.zarr", f, "denoised").compute()
              for f in _frames(out)}
    raw_times = _mtimes(out, "raw")
    assert _run(cfg, out, "--set", "denoise.restore_catalogue=true") == EXIT_OK
    assert _statuses(out) == {**UPSTREAM, "denoise": "done", "photometry": "done"}
    assert _summary(out, "denoise")["chunks_written"] == 4 * n
    assert _summary(out, "photometry")["partitions_written"] == n  # kind=denoised
    assert _mtimes(out, "raw") == raw_times
    restored = _summary(out, "denoise")["apertures_restored"]
    assert f"{restored} catalogue apertures restored" in _summary(out, "denoise")["note"]
    cat = pd.read_parquet(out / "survey" / "catalogue.parquet")
    scale = 1 / json.loads((out / "run.json").read_text())["config"]["photometry"]["pixel_scale"]
    for f in _frames(out):
        after = st.open_frame(out / "store.zarr", f, "denoised").compute()
        geo = geometry_from_catalogue(cat, axis_scale=scale, frame=st.parse_frame_id(f))
        weight = aperture_weight((0, 128, 0, 128), geo, 2.0)
        assert (weight == 0).any() and (weight == 1).any()
        sigma = st.open_store(out / "store.zarr")[f"frames/{f}/denoised"].attrs["sigma"]
        # outside the apertures the network's output, to the seam-free tiling's tolerance
        # (the restoring block is wider, so float rounding may differ)
        np.testing.assert_allclose(after[weight == 0], before[f][weight == 0], rtol=1e-6,
                                   atol=1e-5 * sigma)
        assert not np.array_equal(after[weight == 1], before[f][weight == 1])
    assert _run(cfg, out, "--set", "denoise.restore_catalogue=true") == EXIT_OK
    assert _statuses(out) == {**UPSTREAM, "photometry": "up to date"}
    groups = [g for _, g in cat.groupby(["expnum", "ccd"], sort=True)]
    smaller = pd.concat([groups[0]] + [g.head(3) for g in groups[1:]]).sort_index()
    bad = groups[1].head(1).assign(aperture_a=np.nan)  # unusable: photometry lists it
    smaller = pd.concat([smaller, bad], ignore_index=True)
    path = tmp_path / "smaller.parquet"
    smaller.to_parquet(path, index=False)
    assert _run(cfg, out, "--set", "denoise.restore_catalogue=true",
                "--set", f"input.catalogue={path}") == EXIT_OK
    assert _statuses(out) == {**UPSTREAM, "denoise": "done", "photometry": "done"}
    assert _summary(out, "denoise")["chunks_written"] == 4 * (n - 1)
    assert _summary(out, "photometry")["partitions_written"] == 2 * (n - 1)
    assert _summary(out, "denoise")["apertures_restored"] < restored
    bad_frame = st.frame_id(int(bad["expnum"].iloc[0]), int(bad["ccd"].iloc[0]))
    assert _summary(out, "denoise")["apertures_not_restored"] == [[bad_frame, 1]]
    assert "1 catalogue row(s) on 1 frame(s) not restored" in _summary(out, "denoise")["note"]


def test_a_gain_changed_by_the_fit_across_exposures_outdates_the_later_stages(tmp_path):
    """New exposures can move a CCD's gain fitted across its exposures: frames whose gain in
    force changed make every later stage run again (their inner resume then redoes it)."""
    later = ALL[ALL.index("ingest") + 1:]
    record = RunRecord(RunPaths(tmp_path))
    for stage in later:
        record.set(stage, status="done", fingerprint="x")
    _outdate_downstream(record, "ingest", {"frames_changed": [], "frames_rewritten": [],
                                           "gains_changed": []})
    assert all(record.stage(s)["status"] == "done" for s in later)
    _outdate_downstream(record, "ingest", {"frames_changed": [], "frames_rewritten": [],
                                           "gains_changed": ["00000001_01"]})
    assert all(record.stage(s)["status"] == "outdated" for s in later)


def test_a_noise_correlation_measured_again_outdates_the_later_stages(tmp_path):
    """Frames stored before the high-frequency noise correlation are measured again at the
    next ingest; where the correlation in force moved, training (struct masks) must rerun."""
    later = ALL[ALL.index("ingest") + 1:]
    record = RunRecord(RunPaths(tmp_path))
    for stage in later:
        record.set(stage, status="done", fingerprint="x")
    _outdate_downstream(record, "ingest", {"gains_changed": [], "correlations_changed": []})
    assert all(record.stage(s)["status"] == "done" for s in later)
    _outdate_downstream(record, "ingest", {"correlations_changed": ["00000001_01"]})
    assert all(record.stage(s)["status"] == "outdated" for s in later)


def test_a_changed_gain_remeasures_that_frames_partitions(base, tmp_path):
    """When the ingest changes a frame's gain in force (a CCD's fit across exposures moved),
    the photometry stage, outdated by it, remeasures that frame's partitions and no other:
    the gain is among each partition's inputs."""
    cfg, out = _copy(base, tmp_path)
    frame = _frames(out)[0]
    attrs = st.frame_attrs(out / "store.zarr", frame)
    st.update_frame_attrs(out / "store.zarr", frame, {"gain": 1.25 * attrs["gain"]})
    # as the ingest's gains_changed outdates it (train and denoise too: kept done here,
    # so that only the photometry's own inputs differ)
    RunRecord(RunPaths(out)).set("photometry", status="outdated")
    assert _run(cfg, out) == EXIT_OK
    assert _statuses(out) == {**UPSTREAM, "photometry": "done"}
    assert _summary(out, "photometry")["partitions_written"] == 2  # raw and denoised
    after = _phot(out).query("expnum == @st.parse_frame_id(@frame)[0] and kind == 'raw'")
    assert len(after) > 0
