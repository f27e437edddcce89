"""The inject stage: galaxies of known flux added to a copy of every frame, then measured.

A tiny run (simulate → photometry) is made once; the stage is run on it and checked against
what it must never do (touch the input store) and what it must do (add exactly the drawn
light, measure it, tabulate it, resume, redo under ``--force`` with the same result).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pipeline_fixtures import TINY

from pausdenoise import store as st
from pausdenoise.cli import EXIT_OK, main
from pausdenoise.photometry.driver import read_photometry

INJECT = {"enabled": True, "per_frame": 10, "min_separation_px": 10, "edge_px": 20,
          "detect_nsigma": 5}
STAGES = "simulate,ingest,train,denoise,photometry,inject"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inject")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "inject": INJECT}))
    out = root / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", STAGES]) == EXIT_OK
    return cfg, out


def _image_digest(store: Path) -> str:
    h = hashlib.sha256()
    for f in st.list_frames(store):
        h.update(np.ascontiguousarray(st.open_frame(store, f, "image").compute()).tobytes())
    return h.hexdigest()


def test_injected_light_is_added_to_a_copy_and_measured(run_dir):
    _, out = run_dir
    inj = out / "inject"
    truth = pd.read_parquet(inj / "truth.parquet")
    assert len(truth) >= 10 and truth["ref_id"].min() >= 1_000_000_000
    frames = st.list_frames(out / "store.zarr")
    assert set(st.list_frames(inj / "store.zarr")) == set(frames)
    for f in frames:
        raw = st.open_frame(out / "store.zarr", f, "image").compute().astype(float)
        new = st.open_frame(inj / "store.zarr", f, "image").compute().astype(float)
        e, c = st.parse_frame_id(f)
        t = truth[(truth["expnum"] == e) & (truth["ccd"] == c)]
        gain = st.frame_attrs(out / "store.zarr", f)["gain"]
        added = (new - raw).sum()
        # the drawn light plus its own Poisson noise (σ = sqrt(F / gain) ADU)
        assert abs(added - t["flux_true_adu"].sum()) < 5 * np.sqrt(
            t["flux_true_adu"].sum() / gain) + 1e-3 * t["flux_true_adu"].sum()
        assert "denoised" in st.frame_arrays(inj / "store.zarr", f)
    phot = read_photometry(inj / "photometry")
    measured = phot.merge(truth[["ref_id", "expnum", "ccd"]], on=["ref_id", "expnum", "ccd"])
    assert set(measured["kind"]) == {"raw", "denoised"}
    assert len(measured) == 2 * len(truth)
    bias = pd.read_csv(inj / "bias_by_bin.csv")
    assert {"raw_aperture", "denoised_aperture", "raw_profile"} <= set(bias["estimator"])
    assert bias["n"].sum() > 0
    # the same apertures on the frames before injection: the response keeps only the
    # galaxy's own light (and Poisson noise), whatever the sky noise of the place
    null = read_photometry(inj / "photometry_null")
    keys = ["ref_id", "expnum", "ccd", "kind"]
    both = measured.merge(null, on=keys, suffixes=("", "_null"))
    assert len(both) == len(measured) and set(both["kind"]) == {"raw", "denoised"}
    raw_rows = both[(both["kind"] == "raw") & (both["flags"] == 0) & (both["flags_null"] == 0)]
    raw_rows = raw_rows.merge(truth, on=["ref_id", "expnum", "ccd"])
    added = raw_rows["flux"] - raw_rows["flux_null"]
    # summed over galaxies (the bright ones weigh most): the injected light, to a few per
    # cent (on these small frames other injections' wings reach some apertures and annuli)
    assert len(added) >= 10
    assert abs(added.sum() / raw_rows["flux_true_aper_adu"].sum() - 1) < 0.05
    # faint galaxies: the place's sky noise, which dominates their flux error, cancels
    faint = (raw_rows["flux_true_aper_adu"] < 1000).to_numpy()
    resid = (added - raw_rows["flux_true_aper_adu"])[faint]
    noise = (raw_rows["flux"] - raw_rows["flux_true_aper_adu"])[faint]
    assert faint.sum() >= 10 and np.median(np.abs(resid)) < 0.5 * np.median(np.abs(noise))
    response = pd.read_csv(inj / "response.csv")
    assert set(response["estimator"]) == {"raw_aperture", "denoised_aperture", "raw_profile"}
    assert response.loc[response["band"] == "all", "n"].sum() > 0
    summary = json.loads((out / "run.json").read_text())["stages"]["inject"]["summary"]
    assert summary["galaxies"] == len(truth) and summary["frames"] == len(frames)


def test_input_store_untouched_and_rerun_resumes(run_dir, tmp_path):
    cfg, base = run_dir
    out = tmp_path / "out"
    shutil.copytree(base, out)
    before = _image_digest(out / "store.zarr")
    truth = pd.read_parquet(out / "inject" / "truth.parquet")
    injected = _image_digest(out / "inject" / "store.zarr")
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", STAGES]) == 0
    statuses = json.loads((out / "run-summary.json").read_text())
    assert statuses["inject"]["status"] == "up to date"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", "inject",
                 "--force"]) == 0
    summary = json.loads((out / "run.json").read_text())["stages"]["inject"]["summary"]
    assert summary["frames_injected"] == len(st.list_frames(out / "store.zarr"))
    assert _image_digest(out / "store.zarr") == before
    # seeded: the same galaxies, the same noise
    assert _image_digest(out / "inject" / "store.zarr") == injected
    pd.testing.assert_frame_equal(pd.read_parquet(out / "inject" / "truth.parquet"), truth)
    # another seed: other galaxies, only the injected frames are redone
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", "inject",
                 "--set", "inject.seed=5"]) == 0
    assert not pd.read_parquet(out / "inject" / "truth.parquet").equals(truth)
    assert _image_digest(out / "store.zarr") == before


def test_a_frame_without_a_psf_is_skipped_and_named(run_dir, tmp_path):
    """A frame with no seeing in its header and no usable star cannot be drawn into: the
    stage skips it by name (exit code 3, partial) and injects and measures the others."""
    cfg, base = run_dir
    out = tmp_path / "out"
    shutil.copytree(base, out)
    frames = st.list_frames(out / "store.zarr")
    bad = frames[0]
    grp = st.open_store(out / "store.zarr", "r+")[st.FRAMES_GROUP][bad]
    grp.attrs["seeing"] = None  # the header gives no PSF size ...
    noise = np.random.default_rng(0).normal(100.0, 5.0, grp["image"].shape)
    grp["image"][...] = noise.astype(np.float32)  # ... and the frame holds no star
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", "inject",
                 "--force"]) == 3
    summary = json.loads((out / "run.json").read_text())["stages"]["inject"]["summary"]
    assert summary["partial"] is True
    assert [f for f, _ in summary["skipped"]] == [bad]
    assert "no PSF" in summary["skipped"][0][1]
    truth = pd.read_parquet(out / "inject" / "truth.parquet")
    e, c = st.parse_frame_id(bad)
    assert not ((truth["expnum"] == e) & (truth["ccd"] == c)).any()
    assert summary["frames"] == len(frames) - 1 and len(truth) > 0


def test_asked_for_while_disabled_does_nothing(run_dir, tmp_path):
    cfg, base = run_dir
    out = tmp_path / "out"
    shutil.copytree(base, out)
    shutil.rmtree(out / "inject")
    assert main(["inject", "--config", str(cfg), "--out", str(out), "--set",
                 "inject.enabled=false"]) == 0
    assert not (out / "inject").exists()


def test_restoration_gives_the_injected_galaxies_back_their_light(run_dir, tmp_path):
    """With ``denoise.restore_catalogue`` the injected copies are restored at the injected
    galaxies as well as at the catalogue's sources. With ``restore_sigma: 0`` each pixel is
    the denoised copy's plus ``W`` times what the network removed there: the raw copy's
    inside every aperture (each injected galaxy's centre among them), the denoised copy's
    far from all of them."""
    from pausdenoise.denoise.restore import aperture_weight, geometry_from_catalogue

    cfg, base = run_dir
    out = tmp_path / "out"
    shutil.copytree(base, out)
    inj = out / "inject"
    plain = {f: st.open_frame(inj / "store.zarr", f, "denoised").compute()
             for f in st.list_frames(inj / "store.zarr")}
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", STAGES,
                 "--set", "denoise.restore_catalogue=true",
                 "--set", "denoise.restore_sigma=0"]) == EXIT_OK
    statuses = json.loads((out / "run-summary.json").read_text())
    assert statuses["denoise"]["status"] == "done" and statuses["inject"]["status"] == "done"
    galaxies = pd.read_parquet(inj / "catalogue.parquet")
    own = pd.read_parquet(out / "survey" / "catalogue.parquet")
    scale = 1 / json.loads((out / "run.json").read_text())["config"]["photometry"]["pixel_scale"]
    centres = 0
    for f, before in plain.items():
        frame = st.parse_frame_id(f)
        raw = st.open_frame(inj / "store.zarr", f, "image").compute()
        mask = st.open_frame(inj / "store.zarr", f, "mask").compute()
        after = st.open_frame(inj / "store.zarr", f, "denoised").compute()
        both = pd.concat([geometry_from_catalogue(t, axis_scale=scale, frame=frame)
                          for t in (galaxies, own)], ignore_index=True)
        weight = aperture_weight((0, raw.shape[0], 0, raw.shape[1]), both, 2.0)
        np.testing.assert_array_equal(after[weight == 0], before[weight == 0])
        good = mask == 0  # σ = 0: denoised + W · (raw − denoised), pixel by pixel
        expected = before.astype(float) + weight * (raw.astype(float) - before)
        np.testing.assert_allclose(after[good], expected[good], rtol=1e-6, atol=1e-3)
        for g in geometry_from_catalogue(galaxies, axis_scale=scale, frame=frame).itertuples():
            y, x = round(g.y), round(g.x)
            assert weight[y, x] > 0.999 and after[y, x] != before[y, x]
            centres += 1
    assert centres >= 10


def test_injection_key_follows_the_gain_in_force(tmp_path):
    """The injected galaxies' photon noise and the injected frame's attributes carry the
    gain: a gain changed by the ingest (a CCD's fit across exposures moved) injects the
    frame again."""
    from pausdenoise.config import PipelineConfig  # test-local: a bare context
    from pausdenoise.pipeline.context import Context
    from pausdenoise.pipeline.stages.inject import _injection_key
    from pausdenoise.runstate import RunPaths, RunRecord

    paths = RunPaths(tmp_path)
    ctx = Context(PipelineConfig(), paths, None, RunRecord(paths))
    injections = pd.DataFrame({"x": [10.0], "y": [12.0], "flux": [100.0]})
    attrs = {"source_fingerprint": "abc", "gain": 1.5, "rdnoise": 5.0}
    key = _injection_key(ctx, attrs, injections)
    assert _injection_key(ctx, dict(attrs), injections) == key
    assert _injection_key(ctx, {**attrs, "gain": 1.8}, injections) != key
    assert _injection_key(ctx, {**attrs, "rdnoise": 7.0}, injections) != key
