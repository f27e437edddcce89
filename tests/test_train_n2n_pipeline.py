"""``train.method: n2n`` through the pipeline: targets from the other training exposures.

Synthetic exposures of one star field without a WCS (integer offsets, white noise, known
truth): the train stage registers and matches every training frame's other training
exposures, stores their mean as the frame's ``n2n_target``, skips a frame that has none and
trains on the rest; the evaluate stage then scores the held-out frames against the other
held-out frames only (none of whose pixels the network saw as input or target).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pausdenoise import store as st

SHAPE = (128, 128)
SKY, NOISE = 300.0, 8.0
# exposures 10-17: 10 is pure noise (no stars: no registration, no target); 15-17 held out
SHIFTS = [(0, 0), (0, 0), (9, -5), (-7, 11), (4, 4), (-3, -8), (6, 2), (-5, 5)]
NOISE_ONLY = 0


def _truth(dx: float, dy: float) -> np.ndarray:
    """The star field (40 Gaussian stars, σ = 2 px) on the sky, shifted by (dx, dy) px."""
    rng = np.random.default_rng(4)
    x, y = rng.uniform(-20, SHAPE[1] + 20, 40), rng.uniform(-20, SHAPE[0] + 20, 40)
    flux = 10 ** rng.uniform(3, 4.5, 40)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(np.float64)
    img = np.full(SHAPE, SKY)
    for xi, yi, f in zip(x + dx, y + dy, flux, strict=True):
        img += f / (2 * np.pi * 2.0**2) * np.exp(-0.5 * ((xx - xi) ** 2 + (yy - yi) ** 2) / 4.0)
    return img


def _store(path: Path, fwhm: list[float] | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    truths = {}
    for k, (dx, dy) in enumerate(SHIFTS):
        truth = np.full(SHAPE, SKY) if k == NOISE_ONLY else _truth(dx, dy)
        img = truth + rng.normal(0, NOISE, SHAPE)
        name = st.frame_id(10 + k, 1)
        truths[name] = truth
        st.write_frame(path, name,
                       {"image": img.astype(np.float32), "mask": np.zeros(SHAPE, np.uint8)},
                       {"expnum": 10 + k, "ccd": 1, "band": "V", "exptime": 60.0, "zp": 1.0,
                        "zp_err": 0.0, "gain": 1.0, "rdnoise": 5.0,
                        **({"psf_fwhm_px": fwhm[k]} if fwhm else {})}, chunks=(64, 64))
    return truths


def _config(store: Path):
    from pausdenoise.config import PipelineConfig

    return PipelineConfig.model_validate({
        "input": {"source": "store", "store_path": str(store)},
        "holdout_exposures_per_band": 3, "cluster": {"kind": "threads"},
        "evaluate": {"max_references": 3, "reference_kernel": 2, "depth": False},
        "train": {"method": "n2n", "unet": {"depth": 2, "base_channels": 8,
                                            "posterior": "none", "batch_norm": False},
                  "patch_size": 32, "batch_size": 8, "steps_per_epoch": 20, "epochs": 6,
                  "learning_rate": 3e-3, "validation_patches": 16,
                  "validation_fraction": 0.3, "num_threads": 1, "keep": "last",
                  "noise_correlation": [0.0, 0.0]},
    })


def test_n2n_trains_on_matched_exposures_and_scores_on_held_out_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pausdenoise.pipeline.runner import run

    store = tmp_path / "s.zarr"
    truths = _store(store)
    names = sorted(truths)
    noise, train, held = names[NOISE_ONLY], names[1:5], names[5:]
    cfg = _config(store)
    out = tmp_path / "run"
    run(cfg, out, stages=["train", "denoise", "evaluate"])
    printed = capsys.readouterr().out.splitlines()
    # the star-less exposure cannot be registered; the train stage says so under its name
    failed = [line for line in printed if "not registered" in line and f" {noise}: " in line]
    assert failed and all(line.startswith(f"train: {noise}: ") for line in failed), failed
    record = json.loads((out / "run.json").read_text())
    summary = record["stages"]["train"]["summary"]
    assert summary["n2n_targets_built"] == 4 and summary["n2n_targets_reused"] == 0
    assert summary["n2n_targets_seconds"] > 0
    assert summary["train_frames"] == train
    assert [f for f, _ in summary["skipped"]] == [noise]
    assert "no Noise2Noise target" in summary["skipped"][0][1]
    root = st.open_store(store, "r")
    for f in names:
        arrays = st.frame_arrays(store, f)
        assert ("n2n_target" in arrays) == (f in train), f
    for f in train:
        target = root[f"{st.FRAMES_GROUP}/{f}/n2n_target"]
        refs = target.attrs["n2n_references"]
        assert f not in refs and set(refs) <= set(train) and len(refs) == 3
        t = np.asarray(target)
        inner = (slice(8, -8), slice(8, -8))
        ok = np.isfinite(t[inner])
        assert ok.mean() > 0.7
        # the mean of three matched exposures: ~σ/√3 from the truth (plus the match's error)
        resid = (t - truths[f])[inner][ok]
        assert abs(np.median(resid)) < 1.0 and np.std(resid) < 0.75 * NOISE
    ev_summary = json.loads((out / "evaluate" / "summary.json").read_text())
    assert ev_summary["reference_pool"] == "held-out"
    assert ev_summary["frames_evaluated_independent"] == 3
    # beside the best Gaussian blur of the raw frames, on the same pixels and references
    assert ev_summary["best_blur_sigma_sky_independent"] >= 1.0
    assert ev_summary["denoised_over_best_blur_sky_independent"] > 0
    refs_tab = pd.read_csv(out / "evaluate" / "independent_references.csv")
    assert set(refs_tab["reference_frame"]) <= set(held)
    for f in held:  # the network never saw these frames; it denoises them
        den = np.asarray(st.open_frame(store, f, "denoised"), dtype=np.float64)
        raw = np.asarray(st.open_frame(store, f, "image"), dtype=np.float64)
        rms_den = np.sqrt(np.mean((den - truths[f]) ** 2))
        rms_raw = np.sqrt(np.mean((raw - truths[f]) ** 2))
        assert rms_den < 0.8 * rms_raw, (f, rms_den, rms_raw)
    # a forced rerun of training reuses every stored target
    run(cfg, out, stages=["train"], force=True)
    summary = json.loads((out / "run.json").read_text())["stages"]["train"]["summary"]
    assert summary["n2n_targets_reused"] == 4 and summary["n2n_targets_built"] == 0


def test_n2n_without_any_target_stops_the_train_stage(tmp_path: Path) -> None:
    from pausdenoise.errors import StageError
    from pausdenoise.pipeline.runner import run

    store = tmp_path / "s.zarr"
    _store(store)
    cfg = _config(store).model_copy(update={"holdout_exposures_per_band": 7})
    with pytest.raises(StageError, match=r"no training frame .* has a Noise2Noise target"):
        run(cfg, tmp_path / "run", stages=["train"])


def test_n2n_targets_come_only_from_exposures_as_sharp_as_the_frame(tmp_path: Path) -> None:
    """``train.n2n_max_seeing_ratio``: no reference in worse seeing than the frame."""
    from pausdenoise.pipeline.runner import run

    fwhm = [3.0, 2.0, 2.5, 3.0, 2.2, 2.0, 2.0, 2.0]  # px; exposures 15-17 held out
    store = tmp_path / "s.zarr"
    truths = _store(store, fwhm)
    names = sorted(truths)
    cfg = _config(store)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={
        "n2n_max_seeing_ratio": 1.0, "epochs": 1, "steps_per_epoch": 2})})
    run(cfg, tmp_path / "run", stages=["train"])
    summary = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["train"]
    skipped = dict(summary["summary"]["skipped"])
    excluded = dict(summary["summary"]["excluded"])
    # the sharpest training frame has no reference as sharp: excluded by the setting, not a
    # failure; the pure-noise frame has no reference at all: skipped (the run is partial)
    assert set(skipped) == {names[0]} and set(excluded) == {names[1]}
    assert excluded[names[1]].startswith("train.n2n_max_seeing_ratio: no other training "
                                         "exposure of band V with a PSF FWHM ≤ 1 × the "
                                         "frame's (2.00 px)")
    root = st.open_store(store, "r")
    by_name = dict(zip(names, fwhm, strict=True))
    for f in names[2:5]:
        refs = root[f"{st.FRAMES_GROUP}/{f}/n2n_target"].attrs["n2n_references"]
        assert refs and all(by_name[r] <= by_name[f] for r in refs), (f, refs)
    assert set(root[f"{st.FRAMES_GROUP}/{names[2]}/n2n_target"].attrs["n2n_references"]) == {
        names[1], names[4]}


def test_n2n_targets_from_the_psf_reference_model(tmp_path: Path) -> None:
    """``evaluate.reference_model: psf``: targets rebuilt, each star's light kept."""
    from pausdenoise.pipeline.runner import run

    store = tmp_path / "s.zarr"
    truths = _store(store, [2.0 * np.sqrt(2.0 * np.log(2.0)) * 2.0] * len(SHIFTS))
    names = sorted(truths)
    cfg = _config(store)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={
        "epochs": 1, "steps_per_epoch": 2})})
    out = tmp_path / "run"
    run(cfg, out, stages=["train"])
    root = st.open_store(store, "r")
    key = {f: root[f"{st.FRAMES_GROUP}/{f}/n2n_target"].attrs["n2n_key"] for f in names[1:5]}
    psf = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={
        "reference_model": "psf"})})
    run(psf, out, stages=["train"])
    summary = json.loads((out / "run.json").read_text())["stages"]["train"]["summary"]
    assert summary["n2n_targets_built"] == 4 and summary["n2n_targets_reused"] == 0
    root = st.open_store(store, "r")
    for f in names[1:5]:
        target = root[f"{st.FRAMES_GROUP}/{f}/n2n_target"]
        assert target.attrs["n2n_key"] != key[f]
        t, truth = np.asarray(target, np.float64), truths[f]
        light = truth - SKY > 20 * NOISE  # the stars' cores
        ok = light & np.isfinite(t)
        assert ok.sum() > 50
        # the same seeing everywhere: flux scale and shift only, the stars' light kept
        assert ((t - SKY)[ok].sum() / (truth - SKY)[ok].sum()) == pytest.approx(1.0, abs=0.02)

