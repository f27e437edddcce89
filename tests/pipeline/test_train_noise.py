"""Ingest then train on frames whose headers have no GAIN/RDNOISE: the fitted gains give the
training's noise scale, the measured noise correlation its structN2V axes, and the per-frame
noise table survives a rerun that finds the store up to date."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from noise_frames import SKY_E, observe, scene_e, write_frame

from pausdenoise import store as st
from pausdenoise.config import PipelineConfig
from pausdenoise.n2v.config import TrainConfig
from pausdenoise.n2v.patches import Frame
from pausdenoise.pipeline import runner
from pausdenoise.pipeline.context import Context, frame_stats_table
from pausdenoise.pipeline.stages import ingest as ingest_stage
from pausdenoise.pipeline.stages.train import (
    _noise_settings,
    _own_noise,
    noise_correlation_from_frames,
)
from pausdenoise.runstate import RunPaths, RunRecord

GAIN, RN_E = 1.3, 6.0

TINY_TRAIN = {"unet": {"depth": 2, "base_channels": 4, "batch_norm": False},
              "patch_size": 32, "batch_size": 4, "steps_per_epoch": 2, "epochs": 1,
              "validation_patches": 4, "block_size": 64}


def _config(fits_dir, **train) -> PipelineConfig:
    return PipelineConfig(**{
        "cluster": {"kind": "threads", "n_workers": 1, "threads_per_worker": 1},
        "input": {"source": "fits", "fits_path": str(fits_dir)},
        "ingest": {"layout": "generic", "chunks": [64, 64], "measure_psf": False},
        "train": {**TINY_TRAIN, **train},
        "holdout_exposures_per_band": 1,
    })


@pytest.fixture(scope="module")
def headerless_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("headerless")
    (root / "fits").mkdir()
    for expnum in (1, 2, 3):
        img = observe(scene_e(256, expnum, n_blobs=6), GAIN, RN_E, seed=20 + expnum)
        write_frame(root / "fits" / f"f{expnum}.fits", img, expnum)
    cfg = _config(root / "fits")
    runner.run(cfg, root / "out", stages=["ingest", "train"])
    record = RunRecord(RunPaths(root / "out"))  # the stages' full summaries
    return cfg, root / "out", {n: record.stage(n)["summary"] for n in ("ingest", "train")}


def test_fitted_gains_give_the_noise_scale(headerless_run):
    """Noise scale = median of fitted gain × the frames' normalisation σ: within 6 % of the
    true gain × σ, and near the sky noise in e⁻ √(sky + rn²) (σ is a robust σ of the
    whole frame, which the extended sources raise by ~10-30 %)."""
    _, out, summary = headerless_run
    train = summary["train"]
    assert train["noise_scale_source"] == "fitted gains"
    stats, _ = frame_stats_table(out / "store.zarr", train["train_frames"])
    truth = float(np.median([GAIN * s.sigma for s in stats.values()]))
    assert train["noise_scale_electrons"] == pytest.approx(truth, rel=0.06)
    assert 1.0 < truth / np.sqrt(SKY_E + RN_E**2) < 1.4
    assert train["noise_correlation_source"].startswith("measured at ingest")
    rho_x, rho_y = train["noise_correlation"]
    assert abs(rho_x) < 0.03 and abs(rho_y) < 0.03  # white noise
    assert train["struct_axes"] == "" and train["blind_radius"] == 0


def test_sky_variance_from_the_gains_when_unset(headerless_run):
    """``train.sky_variance: null``: the noise model's sky variance over the frames' σ² from
    the fitted gains, near the true (sky + read noise) variance over σ² (below 1: the
    sources raise σ); set in the configuration, it is kept."""
    _, out, summary = headerless_run
    store = out / "store.zarr"
    stats, _ = frame_stats_table(store, summary["train"]["train_frames"])
    exposures = st.exposure_table(store)
    cfg, noise = _noise_settings(TrainConfig(sky_variance=None), exposures, stats, list(stats))
    truth = float(np.median([(SKY_E + RN_E**2) / GAIN**2 / s.sigma**2 for s in stats.values()]))
    assert 0.4 < truth < 0.95
    assert noise["sky_variance_source"] == "fitted gains"
    assert cfg.sky_variance == noise["sky_variance"] == pytest.approx(truth, rel=0.1)
    assert summary["train"]["sky_variance"] == 1.0  # the default configuration's
    assert summary["train"]["sky_variance_source"] == "config"


def test_noise_table_is_written_and_regenerated(headerless_run):
    cfg, out, summary = headerless_run
    path = out / ingest_stage.NOISE_TABLE
    table = pd.read_csv(path)
    assert list(table["gain_source"]) == ["fitted"] * 3
    assert np.allclose(table["gain"], GAIN, rtol=0.05)
    assert table["gain_header"].isna().all()
    assert summary["ingest"]["noise_model"]["gain_source"] == {"fitted": 3}
    # frames without a mask are searched for cosmic rays: these have none
    assert summary["ingest"]["note"].endswith(
        "0 failed; gain from fitted 3; 0 cosmic-ray hits masked in 3 frame(s)")
    path.unlink()
    paths = RunPaths(out)
    summary = ingest_stage.run(Context(cfg, paths, None, RunRecord(paths)))
    assert summary["skipped"] == sorted(table["frame"]) and summary["ingested"] == []
    pd.testing.assert_frame_equal(pd.read_csv(path), table)


def test_correlation_sets_the_struct_axes():
    """The median over the training frames (NaN ignored) becomes train.noise_correlation;
    'auto' then masks along x only; a configured value is kept."""
    exposures = pd.DataFrame({
        "frame": ["a", "b", "c", "d"],
        "gain": [1.0, 1.0, 1.0, 1.0],
        "gain_source": ["fitted", "header", "fitted", "fitted"],
        "noise_corr_x": [0.60, 0.64, np.nan, 0.0],
        "noise_corr_y": [0.01, -0.01, 0.02, 0.0],
    })
    frames = ["a", "b", "c"]
    assert noise_correlation_from_frames(exposures, frames) == pytest.approx((0.62, 0.01))

    class _Stats:
        sigma = 10.0

    stats = dict.fromkeys(frames, _Stats())
    cfg, noise = _noise_settings(TrainConfig(), exposures, stats, frames)
    assert cfg.noise_correlation == pytest.approx((0.62, 0.01))
    assert noise["struct_axes"] == cfg.struct_axes == "x"
    assert noise["noise_scale_electrons"] == 10.0
    assert noise["noise_scale_source"] == "fitted+header gains"
    kept, noise = _noise_settings(TrainConfig(noise_correlation=(0.0, 0.5)), exposures,
                                  stats, frames)
    assert kept.noise_correlation == (0.0, 0.5) and noise["struct_axes"] == "y"
    assert noise["noise_correlation_source"] == "config"
    old = exposures.drop(columns=["noise_corr_x", "noise_corr_y", "gain_source"])
    _, noise = _noise_settings(TrainConfig(), old, stats, frames)
    assert noise["noise_correlation"] is None and noise["struct_axes"] == ""
    assert noise["noise_scale_source"] == "header gains"


def test_store_frames_without_a_gain_give_no_scale(tmp_path):
    rng = np.random.default_rng(0)
    write_frame(tmp_path / "tiny.fits", rng.normal(100, 5, (24, 24)).astype(np.float32), 4)
    from pausdenoise.ingest import ingest  # test-local: only this test ingests directly

    ingest(tmp_path / "tiny.fits", tmp_path / "s.zarr",
           _config(tmp_path).ingest)
    exposures = st.exposure_table(tmp_path / "s.zarr")

    class _Stats:
        sigma = 5.0

    _, noise = _noise_settings(TrainConfig(), exposures, {"00000004_01": _Stats()},
                               ["00000004_01"])
    assert noise["noise_scale_source"] == "default"


def test_measured_correlation_on_crowded_frames_comes_with_a_warning():
    """Frames whose own gain fits lie below their sky's bound (a crowded field) and whose
    measured correlation would mask neighbours: the settings carry a warning that names
    train.noise_correlation; uncrowded frames or a configured correlation carry none."""
    exposures = pd.DataFrame({
        "frame": ["a", "b", "c"], "gain": [1.9] * 3, "gain_source": ["header"] * 3,
        "noise_corr_x": [0.5, 0.55, 0.45], "noise_corr_y": [0.4, 0.45, 0.42],
        "gain_fitted": [0.4, 0.5, 0.35], "gain_fitted_err": [0.03] * 3,
        "gain_sky_min": [1.5, 1.6, 1.4],
    })

    class _Stats:
        sigma = 10.0

    stats = dict.fromkeys(exposures["frame"], _Stats())
    frames = list(exposures["frame"])
    _, noise = _noise_settings(TrainConfig(), exposures, stats, frames)
    assert noise["struct_axes"] == "xy"
    assert "train.noise_correlation" in noise["noise_correlation_warning"]
    assert "in small tiles" in noise["noise_correlation_warning"]
    high = exposures.assign(noise_corr_method="high-frequency")
    assert "upper bound" in _noise_settings(TrainConfig(), high, stats,
                                            frames)[1]["noise_correlation_warning"]
    clean = exposures.assign(gain_fitted=[1.8, 1.9, 2.0])
    assert "noise_correlation_warning" not in _noise_settings(TrainConfig(), clean, stats,
                                                              frames)[1]
    across = clean.assign(gain_exposures=3.0)  # own fits far below the fit across exposures
    assert "noise_correlation_warning" in _noise_settings(TrainConfig(), across, stats,
                                                          frames)[1]
    _, given = _noise_settings(TrainConfig(noise_correlation=(0.0, 0.0)), exposures, stats,
                               frames)
    assert "noise_correlation_warning" not in given


def test_sure_takes_each_frames_noise_model_from_the_fitted_gains(headerless_run):
    """``method: sure`` with ``noise_per_frame``: each frame keeps its own noise model from its
    fitted gain, sky and σ, and the summary gives their span; other methods do not."""
    _, out, summary = headerless_run
    assert summary["train"]["sky_variance_per_frame"] is None  # method n2v
    store = out / "store.zarr"
    names = summary["train"]["train_frames"]
    stats, _ = frame_stats_table(store, names)
    exposures = st.exposure_table(store)
    root = st.open_store(store, "r")
    frames = [Frame(root[f"{st.FRAMES_GROUP}/{f}/image"], None, stats[f], f) for f in names]
    sure = TrainConfig(method="sure", unet={"posterior": "none"}, noise_per_frame=True)
    own, span = _own_noise(sure, frames, exposures, stats)
    truth = {f: (SKY_E + RN_E**2) / GAIN**2 / stats[f].sigma ** 2 for f in names}
    for f in own:
        assert f.noise.sky_variance == pytest.approx(truth[f.name], rel=0.1)
        assert f.noise.noise_scale == pytest.approx(GAIN * stats[f.name].sigma, rel=0.06)
    assert span == [round(min(f.noise.sky_variance for f in own), 4),
                    round(max(f.noise.sky_variance for f in own), 4)]
    one = sure.model_copy(update={"noise_per_frame": False})
    assert _own_noise(one, frames, exposures, stats) == (frames, None)


def test_training_starts_from_an_earlier_runs_checkpoint(headerless_run, tmp_path):
    """``train.init_checkpoint``: the network starts from that file's weights (it begins
    where that run ended, far below a fresh start), which the provenance and summary name
    with their digest and the fingerprint follows; another network or a missing file is
    refused before any work, naming the setting and the file."""
    from pausdenoise.digest import file_sha256
    from pausdenoise.errors import ConfigError
    from pausdenoise.n2v.checkpoint import read_metadata

    cfg, out, _ = headerless_run
    first = RunPaths(out).checkpoint
    tuned = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"init_checkpoint": str(first), "epochs": 2})})
    # the same FITS frames, ingested into the new run
    runner.run(tuned, tmp_path / "tuned", stages=["ingest", "train"])
    tuned_train = RunRecord(RunPaths(tmp_path / "tuned")).stage("train")["summary"]
    assert tuned_train["init_checkpoint"] == str(first.resolve())
    assert tuned_train["init_checkpoint_sha256"] == file_sha256(first)
    prov = read_metadata(RunPaths(tmp_path / "tuned").checkpoint)["provenance"]
    assert prov["init_checkpoint_sha256"] == file_sha256(first)
    old = read_metadata(first)["history"]
    new = read_metadata(RunPaths(tmp_path / "tuned").checkpoint)["history"]
    assert new["initial_val_loss"] < old["initial_val_loss"]
    fp = runner.stage_fingerprints(tuned, ["train"])["train"]
    assert fp != runner.stage_fingerprints(cfg, ["train"])["train"]
    other = tuned.model_copy(update={"train": tuned.train.model_copy(
        update={"unet": tuned.train.unet.model_copy(update={"base_channels": 8})})})
    with pytest.raises(ConfigError, match=r"train.init_checkpoint .*base_channels 4 there, "
                                          r"8 in train.unet"):
        runner.run(other, tmp_path / "other", stages=["train"])
    assert not (tmp_path / "other" / "model").exists()
    gone = tuned.model_copy(update={"train": tuned.train.model_copy(
        update={"init_checkpoint": str(tmp_path / "none.safetensors")})})
    with pytest.raises(ConfigError, match=r"train\.init_checkpoint .*none\.safetensors not found"):
        runner.run(gone, tmp_path / "gone", stages=["train"])
