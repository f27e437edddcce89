"""The stack and gan stage runners on a tiny deep field: stacks, leave-one-out pairs, the
generator applied to held-out frames with the image's chunks, and finite metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pausdenoise import store as st
from pausdenoise.config import PipelineConfig
from pausdenoise.pipeline.core import Context, run
from pausdenoise.runstate import RunPaths, RunRecord

torch.set_num_threads(1)

N_EXP = 6
TINY_DEEP = {
    "cluster": {"kind": "threads", "n_workers": 1, "threads_per_worker": 2},
    # One band, aligned exposures (no dither: no interpolation smoothing) of equal sky, so
    # the stack's noise must fall as √N.
    "simulate": {"seed": 11, "ccd_shape": [96, 96], "bands": ["NB455"],
                 "exposures_per_band": N_EXP, "dither_px": 0.0,
                 "sky_range_e": [150.0, 150.0], "transparency_range": [1.0, 1.0],
                 "zp_err_frac": 0.0, "n_cosmic_rays": 0, "galaxy_density": 150},
    "ingest": {"chunks": [32, 32]},
    "train": {"unet": {"depth": 2, "base_channels": 4, "batch_norm": False},
              "patch_size": 32, "batch_size": 8, "steps_per_epoch": 2, "epochs": 1,
              "validation_patches": 8, "block_size": 32},
    "photometry": {"annulus_r_in": 12, "annulus_r_out": 20, "min_annulus_pixels": 20},
    "report": {"n_stamps": 2, "stamp_size": 24},
    "holdout_exposures_per_band": 2,
    "gan": {
        "enabled": True,
        "cutout_size": 32,
        "cutout_stride": 32,
        "train": {"generator": {"depth": 2, "base_channels": 4, "max_channels": 8},
                  "discriminator": {"n_layers": 1, "base_channels": 4, "max_channels": 8},
                  "epochs": 1, "batch_size": 8, "device": "cpu", "progress": False},
        "apply": {"chunks": [32, 32]},
        "scatter_pixels": 500,
    },
}


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    from pausdenoise.pipeline.gan_stage import run_gan, run_stack

    out = tmp_path_factory.mktemp("gan") / "out"
    cfg = PipelineConfig.model_validate(TINY_DEEP)
    run(cfg, out, stages=["simulate", "ingest", "train", "denoise"])
    paths = RunPaths(out.resolve())
    ctx = Context(cfg, paths, None, RunRecord(paths))
    stack_summary = run_stack(ctx, cfg.gan)
    gan_summary = run_gan(ctx, cfg.gan)
    return ctx, stack_summary, gan_summary


def test_stack_noise_falls_as_sqrt_n(gan_run):
    ctx, summary, _ = gan_run
    tab = pd.read_csv(ctx.paths.out / "gan" / "stack_summary.csv")
    assert len(tab) == 1 and tab["n_frames"].iloc[0] == N_EXP
    ratio = tab["sigma_single_adu"].iloc[0] / tab["sigma_stack_adu"].iloc[0]
    assert ratio == pytest.approx(np.sqrt(N_EXP), rel=0.15)
    assert tab["expected_ratio_ivar"].iloc[0] == pytest.approx(np.sqrt(N_EXP), rel=0.05)
    # The same measured independently on sky pixels of the stored arrays.
    root = st.open_store(ctx.store)
    g = root["stacks/NB455_01"]
    assert g.attrs["complete"] is True and len(g.attrs["frames"]) == N_EXP
    stack = np.asarray(g["stack"][...])
    ref = g.attrs["reference_frame"]
    truth = np.asarray(st.open_frame(ctx.store, ref, "truth"))
    image = np.asarray(st.open_frame(ctx.store, ref, "image"))
    good = np.asarray(st.open_frame(ctx.store, ref, "mask")) == 0
    sky_px = good & (np.abs(truth - np.median(truth)) < 0.5) & (np.asarray(g["stack_weight"]) > 0)
    assert sky_px.sum() > 1000
    single = np.std(image[sky_px] - truth[sky_px])
    stacked = np.std(stack[sky_px] - (truth[sky_px] - np.median(truth[sky_px])))
    assert single / stacked == pytest.approx(np.sqrt(N_EXP), rel=0.15)
    assert summary["pairs"] > 0


def test_pairs_never_contain_their_own_exposure(gan_run):
    from pausdenoise.pipeline.gan_stage import load_pairs

    ctx, summary, _ = gan_run
    pairs, frames = load_pairs(ctx.paths.out / "gan" / "pairs.npz")
    held = set(summary["held_out_frames"])
    assert len(held) == 2 and not held & set(frames)
    for k, f in enumerate(frames):
        members = pairs.target_members[k]
        assert f not in members and not held & set(members)
    assert pairs.inputs.shape[1:] == (1, 32, 32)
    assert np.isfinite(pairs.inputs).all() and np.isfinite(pairs.targets).all()
    for h in held:  # scoring references: the stack of the others, without h
        arrays = st.frame_arrays(ctx.store, h)
        assert {"stack_others", "stack_others_weight"} <= set(arrays)
        a = st.open_store(ctx.store)[f"frames/{h}/stack_others"]
        assert h not in a.attrs["members"] and len(a.attrs["members"]) == N_EXP - 1


def test_gan_output_written_with_image_chunks(gan_run):
    ctx, _, summary = gan_run
    assert (ctx.paths.model_dir / "gan.safetensors").exists()
    root = st.open_store(ctx.store)
    for h in summary["held_out_frames"]:
        img = root[f"frames/{h}/image"]
        gan = root[f"frames/{h}/gan"]
        assert gan.shape == img.shape and gan.chunks == img.chunks
        assert gan.attrs["complete"] is True
        assert np.isfinite(np.asarray(gan[...])).all()


def test_metrics_are_finite_and_side_by_side(gan_run):
    ctx, _, _ = gan_run
    d = ctx.paths.out / "gan"
    m = pd.read_csv(d / "metrics.csv")
    corr = m[(m["metric"] == "pixel correlation") & (m["reference"] == "stack_others")].iloc[0]
    assert corr["published_single"] == 0.777 and corr["published_generated"] == 0.940
    for ref in ("stack_others", "truth"):
        sel = m[(m["reference"] == ref) & m["metric"].str.startswith(("pixel", "RMS"))]
        assert len(sel) == 4
        assert np.isfinite(sel[["raw", "denoised", "gan"]].to_numpy()).all(), ref
    ratio = m[(m["metric"] == "RMS ratio to raw") & (m["reference"] == "stack_others")]
    assert ratio["published_generated"].iloc[0] == pytest.approx(7.67e-4 / 1.24e-3)
    det = m[m["metric"] == "detection detections"]
    assert (det[["raw", "gan", "stack_others"]].to_numpy() >= 0).all()
    bias = pd.read_csv(d / "photometry_bias.csv")
    assert set(bias["kind"]) >= {"raw", "denoised", "gan", "stack_others"}
    assert np.isfinite(bias[bias["bin"] == "all"]["median_rel_bias"]).all()
    z = np.load(d / "scatter.npz")
    assert {"raw", "gan", "stack_others", "truth"} <= set(z.files)
    assert all(np.isfinite(z[k]).all() and len(z[k]) > 100 for k in z.files)
    assert set(np.load(d / "detections.npz").files) >= {"raw", "gan", "all_true"}
    assert json.loads((d / "detection_summary.json").read_text())["raw"]["detections"] >= 0


def test_rerun_reuses_checkpoint_and_output(gan_run):
    from pausdenoise.pipeline.gan_stage import run_gan

    ctx, _, _ = gan_run
    before = (ctx.paths.model_dir / "gan.safetensors").stat().st_mtime_ns
    again = run_gan(ctx, ctx.cfg.gan)
    assert again["checkpoint_reused"] is True
    assert (ctx.paths.model_dir / "gan.safetensors").stat().st_mtime_ns == before
    assert "applied to 0 held-out frames" in again["note"]


def test_report_section(gan_run, tmp_path):
    from pausdenoise.pipeline.gan_stage import report_section
    from pausdenoise.pipeline.report_stage import _Writer

    ctx, _, _ = gan_run
    sec = report_section(ctx, _Writer(tmp_path, 60))
    assert sec is not None and len(sec.figures) >= 4 and len(sec.tables) >= 2
    assert {"gan_pixel_scatter", "gan_completeness", "gan_detection_mags"} <= {
        p.stem for p in (tmp_path / "figures").glob("*.png")}


def test_gan_disabled_by_default_and_chunking_checked():
    from pausdenoise.config import PipelineConfig as PC
    from pausdenoise.pipeline.core import resolve_stages

    cfg = PC()
    assert cfg.gan.enabled is False
    assert "stack" not in resolve_stages(cfg, None) and "gan" not in resolve_stages(cfg, None)
    on = PC.model_validate(TINY_DEEP)
    chosen = resolve_stages(on, None)
    assert chosen.index("denoise") < chosen.index("stack") < chosen.index("gan")
    bad = {**TINY_DEEP, "gan": {**TINY_DEEP["gan"], "apply": {"chunks": [30, 30]}}}
    with pytest.raises(ValueError, match=r"gan\.apply\.chunks"):
        PC.model_validate(bad)
    small = {**TINY_DEEP, "gan": {**TINY_DEEP["gan"], "apply": {"chunks": [8, 8]}}}
    with pytest.raises(ValueError, match="halo"):
        PC.model_validate(small)
