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
from pausdenoise.pipeline.context import Context
from pausdenoise.pipeline.runner import run
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
    from pausdenoise.pipeline.stages.gan import run_gan
    from pausdenoise.pipeline.stages.stack import run_stack

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
    from pausdenoise.pipeline.stages.stack import load_pairs

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
    from pausdenoise.pipeline.stages.gan import run_gan

    ctx, _, _ = gan_run
    before = (ctx.paths.model_dir / "gan.safetensors").stat().st_mtime_ns
    again = run_gan(ctx, ctx.cfg.gan)
    assert again["checkpoint_reused"] is True
    assert (ctx.paths.model_dir / "gan.safetensors").stat().st_mtime_ns == before
    assert "applied to 0 held-out frames" in again["note"]


def test_report_section(gan_run, tmp_path):
    from pausdenoise.pipeline.stages.gan import report_section
    from pausdenoise.report.html import ReportWriter

    ctx, _, _ = gan_run
    sec = report_section(ctx, ReportWriter(tmp_path, 60))
    assert sec is not None and len(sec.figures) >= 4 and len(sec.tables) >= 2
    assert {"gan_pixel_scatter", "gan_completeness", "gan_detection_mags"} <= {
        p.stem for p in (tmp_path / "figures").glob("*.png")}


def test_scoring_reads_a_sky_catalogue(gan_run, tmp_path):
    """A CSV sky catalogue (ra/dec, no per-frame columns) is placed through each frame's WCS
    for the forced photometry of the scoring, as the photometry stage places it."""
    from pausdenoise.pipeline.stages.gan import run_gan

    ctx, _, _ = gan_run
    cat = pd.read_parquet(ctx.paths.survey / "catalogue.parquet")
    sky = cat.groupby("ref_id", as_index=False).first()
    sky = sky[["ref_id", "ra", "dec", "I_auto", "aperture_a", "aperture_b"]].rename(
        columns={"aperture_a": "a", "aperture_b": "b"}).assign(theta=0.0)
    path = tmp_path / "sky.csv"
    sky.to_csv(path, index=False)
    cfg = ctx.cfg.model_copy(update={"input": ctx.cfg.input.model_copy(
        update={"catalogue": path})})
    run_gan(Context(cfg, ctx.paths, None, ctx.record), cfg.gan)
    bias = pd.read_csv(ctx.paths.out / "gan" / "photometry_bias.csv")
    rows = bias[bias["bin"] == "all"]
    assert set(rows["kind"]) >= {"raw", "gan"}
    assert np.isfinite(rows["median_rel_bias"]).all()


def test_gan_disabled_by_default_and_chunking_checked():
    from pausdenoise.config import PipelineConfig as PC
    from pausdenoise.pipeline.runner import resolve_stages

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


# --------------------------------------------------------------------------- stacks on a cluster


def _stack_products(ctx) -> dict[str, np.ndarray]:
    """Every array the stack stage writes, plus the training pairs, by name."""
    root = st.open_store(ctx.store)
    out = {}
    for gid in root["stacks"].group_keys():
        for name in ("stack", "stack_weight"):
            out[f"stacks/{gid}/{name}"] = np.asarray(root[f"stacks/{gid}/{name}"][...])
    for f in st.list_frames(ctx.store):
        for name in ("stack_others", "stack_others_weight"):
            if name in st.frame_arrays(ctx.store, f):
                out[f"{f}/{name}"] = np.asarray(root[f"frames/{f}/{name}"][...])
    with np.load(ctx.paths.out / "gan" / "pairs.npz") as z:
        out.update({f"pairs/{k}": z[k] for k in z.files})
    return out


def test_stacks_on_a_dask_cluster_equal_serial_bit_for_bit_and_resume(tmp_path):
    """The stack stage's tasks on a real distributed Client give the serial result (dask's
    synchronous scheduler in this process, and direct in-memory ``stack_frames`` /
    ``make_pairs`` calls) bit for bit; a rerun skips every finished stack."""
    import shutil

    import dask
    from distributed import Client, LocalCluster

    from pausdenoise.gan.pairs import make_pairs
    from pausdenoise.pipeline.context import split_holdout
    from pausdenoise.pipeline.stages.stack import run_stack
    from pausdenoise.stack import stack_frames

    cfg = PipelineConfig.model_validate(TINY_DEEP)
    out_a = tmp_path / "a"
    run(cfg, out_a, stages=["simulate", "ingest"])
    out_b = tmp_path / "b"
    shutil.copytree(out_a, out_b)
    ctx_b = Context(cfg, RunPaths(out_b.resolve()), None, RunRecord(RunPaths(out_b.resolve())))
    with dask.config.set(scheduler="synchronous"):
        serial = run_stack(ctx_b, cfg.gan)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        paths = RunPaths(out_a.resolve())
        ctx_a = Context(cfg, paths, client, RunRecord(paths))
        par = run_stack(ctx_a, cfg.gan)
        n_held = len(par["held_out_frames"])
        assert par["stack_tasks"] == 1 + n_held and par["pair_tasks"] == N_EXP - n_held
        a, b = _stack_products(ctx_a), _stack_products(ctx_b)
        assert set(a) == set(b) and len(a) >= 2 + 2 * n_held
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
        assert (pd.read_csv(out_a / "gan" / "stack_summary.csv")
                .equals(pd.read_csv(out_b / "gan" / "stack_summary.csv")))
        assert par["pairs"] == serial["pairs"] > 0

        # The serial computation itself: whole frames in memory, direct calls.
        store = ctx_a.store
        exposures = st.exposure_table(store)
        frames = exposures.sort_values("expnum")["frame"].tolist()
        train, held = split_holdout(exposures, cfg.holdout_exposures_per_band)
        load = {name: [np.asarray(st.open_frame(store, f, name)) for f in frames]
                for name in ("image", "mask")}
        wcs = [st.frame_wcs(store, f) for f in frames]
        zps = exposures.set_index("frame").loc[frames, "zp"].astype(float).tolist()
        deep, wdeep = stack_frames(load["image"], load["mask"], None, wcs, wcs[0].celestial,
                                   load["image"][0].shape, cfg.gan.stack, zps=zps)
        assert np.array_equal(a["stacks/NB455_01/stack"], deep)
        assert np.array_equal(a["stacks/NB455_01/stack_weight"], wdeep)
        h = held[0]
        i = frames.index(h)
        others, _ = stack_frames(load["image"], load["mask"], None, wcs, wcs[i].celestial,
                                 load["image"][i].shape, cfg.gan.stack, exclude=i, zps=zps,
                                 zp_ref=zps[i])
        assert np.array_equal(a[f"{h}/stack_others"], others)
        tr = [f for f in frames if f in train]
        k = [frames.index(f) for f in tr]
        first = make_pairs([load["image"][j] for j in k], [load["mask"][j] for j in k], None,
                           [wcs[j] for j in k], zps=[zps[j] for j in k],
                           stack_config=cfg.gan.stack, sources=[0], size=cfg.gan.cutout_size,
                           stride=cfg.gan.cutout_stride,
                           max_pairs_per_frame=cfg.gan.max_pairs_per_frame, seed=0)
        sel = a["pairs/source"] == 0
        assert np.array_equal(a["pairs/targets"][sel], first.targets)
        assert np.array_equal(a["pairs/inputs"][sel], first.inputs)

        # Rerun: every stack and the pairs are up to date; nothing is rewritten.
        root = st.open_store(store)
        before = {n: root[n].attrs.asdict() for n in ("stacks/NB455_01",
                                                      f"frames/{h}/stack_others")}
        mtime = (out_a / "gan" / "pairs.npz").stat().st_mtime_ns
        again = run_stack(ctx_a, cfg.gan)
        assert again["stack_tasks"] == 0 and again["pair_tasks"] == 0
        assert again["stacks_up_to_date"] == 1 + n_held and again["pairs_reused"] is True
        assert (out_a / "gan" / "pairs.npz").stat().st_mtime_ns == mtime
        assert again["noise_ratio_over_sqrt_n"] == par["noise_ratio_over_sqrt_n"]
        root = st.open_store(store)
        for n, attrs in before.items():
            assert root[n].attrs.asdict() == attrs
        # An unfinished stack (interrupted task) is redone, and only it.
        root = st.open_store(store, "r+")
        root[f"frames/{h}/stack_others"].attrs.update({"complete": False})
        redo = run_stack(ctx_a, cfg.gan)
        assert redo["stack_tasks"] == 1 and redo["stacks_up_to_date"] == n_held
        assert np.array_equal(_stack_products(ctx_a)[f"{h}/stack_others"], others)
