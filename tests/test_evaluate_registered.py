"""The evaluate stage on exposures without a WCS: references registered by cross-correlation.

Real SAAO frames (512², uint16 with BZERO, no WCS, offsets of a few to ~40 px) ingested
through the generic FITS path; the "denoised" image is a Gaussian filter of the raw one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from scipy import ndimage

from pausdenoise import evaluate as ev
from pausdenoise import store as st
from pausdenoise.cli import EXIT_OK, main
from pausdenoise.n2v.normalise import frame_statistics
from pausdenoise.register import measure_offset

# Three exposures of one night (similar sky and transparency), offsets of 17-26 px.
PICK = (12, 13, 19)


def _saao_files(real_data_dir: Path) -> list[Path]:
    src = real_data_dir / "saao-kb13475"
    if not src.is_dir():
        pytest.skip("saao-kb13475 not present in the real test data")
    files = sorted(src.glob("AKB13475I*.fits"))
    return [files[i] for i in PICK]


def _ingest(tmp_path: Path, files: list[Path]) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ingest:\n  layout: generic\n  chunks: [256, 256]\n  expnum_from: order\n"
                   "  defaults: {band: I, ccd: 0, zp: 1.0, zp_err: 0.0}\n"
                   "cluster:\n  kind: threads\n")
    out = tmp_path / "ingest"
    assert main(["ingest", "--config", str(cfg), "--out", str(out), "--fits",
                 *[str(f) for f in files]]) == EXIT_OK
    store = out / "store.zarr"
    for f in st.list_frames(store):
        assert not st.frame_attrs(store, f).get("wcs")  # the case at hand: no WCS
        img = np.asarray(st.open_frame(store, f), dtype=np.float64)
        good = np.asarray(st.open_frame(store, f, "mask")) == 0  # cosmic rays masked at ingest
        den = st.create_output_array(store, f, "denoised", like="image", dtype=np.float32)
        den[...] = ev.gaussian_blur(img, good, 1.0)  # a stand-in "denoiser"
    return store


def _evaluate_store(store: Path, out: Path, **sections: dict) -> tuple[Path, dict]:
    """Run the evaluate stage on a store (threads, nothing held out); its folder and summary."""
    from pausdenoise.config import PipelineConfig
    from pausdenoise.pipeline.runner import run

    cfg = PipelineConfig.model_validate({
        "input": {"source": "store", "store_path": str(store)},
        "holdout_exposures_per_band": 0, "cluster": {"kind": "threads"}, **sections})
    run(cfg, out, stages=["evaluate"])
    ev_dir = out / "evaluate"
    return ev_dir, json.loads((ev_dir / "summary.json").read_text())


@pytest.mark.real_data
def test_evaluate_registers_saao_frames_without_wcs(real_data_dir, tmp_path):
    files = _saao_files(real_data_dir)
    store = _ingest(tmp_path, files)
    ev_dir, summary = _evaluate_store(store, tmp_path / "run", evaluate={"max_references": 3})
    metrics = pd.read_csv(ev_dir / "pixel_metrics.csv")
    reg = pd.read_csv(ev_dir / "registration.csv", keep_default_na=False)
    assert summary["frames_evaluated_independent"] == 3, summary["skipped"]
    # every pair measured once (the reverse pair reused), none failed
    assert len(reg) == 3 and (reg["error"] == "").all()
    assert summary["registration"]["pairs"] == 3 and summary["registration"]["failed"] == 0
    assert summary["registration"]["min_significance"] > 20
    # the offsets recorded are those measured directly on the FITS pixels
    raw = [fits.getdata(f).astype(np.float64) for f in files]
    names = sorted(st.list_frames(store), key=lambda f: st.frame_attrs(store, f)["expnum"])
    r = reg[(reg["frame"] == names[0]) & (reg["other_frame"] == names[2])].iloc[0]
    direct = measure_offset(raw[0], raw[2])
    assert abs(r["dx_px"] - direct.dx) < 0.05 and abs(r["dy_px"] - direct.dy) < 0.05
    assert np.hypot(r["dx_px"], r["dy_px"]) > 20  # a real offset, not an aligned pair
    refs_tab = pd.read_csv(ev_dir / "independent_references.csv")
    match = refs_tab.drop_duplicates(["frame", "reference_frame"])
    assert len(match) == 6  # 3 frames × 2 references
    assert match["flux_scale"].between(0.3, 3.0).all()
    assert match["kernel_fit_rms"].between(0.5, 10.0).all()
    assert (match[["shift_x_px", "shift_y_px"]].abs() <= 1.0).all().all()
    assert (metrics["reference"] == ev.REFERENCE_INDEPENDENT).all()
    assert (metrics["estimator"] == "triplet").all() and (metrics["n_references"] == 2).all()
    # the blur baselines, scored on the same pixels: the stand-in "denoiser" is the σ = 1 px
    # blur over the good pixels, so the best blur is at least as good
    assert set(metrics["kind"]) == {"raw", "denoised"} | {
        f"blur_sigma_{s:g}" for s in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)}
    b1 = metrics[metrics["kind"] == "blur_sigma_1"].set_index(["frame", "pixel_class"])["mse"]
    d = metrics[metrics["kind"] == "denoised"].set_index(["frame", "pixel_class"])["mse"]
    np.testing.assert_allclose(b1.sort_index(), d.sort_index(), rtol=0.02)
    # the raw frames' estimated MSE over their noise model (headers' gain and read noise):
    # near 1 on sky, far above in the stars, which the references match worst
    nm = metrics[metrics["kind"] == "raw"].set_index(["frame", "pixel_class"])
    assert (nm["noise_var_model"] > 0).all()
    assert 0.9 < summary["raw_mse_over_noise_model_sky_independent"] < 1.7
    assert (summary["raw_mse_over_noise_model_source_independent"]
            > 3 * summary["raw_mse_over_noise_model_sky_independent"])
    for cls in ("sky", "source"):
        assert summary[f"denoised_over_best_blur_{cls}_independent"] <= 1.01
        assert summary[f"best_blur_sigma_{cls}_independent"] in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    sky = metrics[metrics["pixel_class"] == "sky"].set_index(["frame", "kind"])
    for f, image in zip(names, raw, strict=True):
        est = sky.loc[(f, "raw"), "mse"]
        h = fits.getheader(files[names.index(f)])
        # Poisson + read noise of the sky (ADU²); the field is a crowded bulge field whose
        # "sky" pixels hold faint stars seen with different seeing and flux scales by the
        # references: 1.5-1.9 × this as registered, 1.16-1.52 × once matched to the frame
        # (evaluate.reference_kernel)
        expected = np.median(image) / h["GAIN"] + (h["RDNOISE"] / h["GAIN"]) ** 2
        assert sky.loc[(f, "raw"), "n_pixels"] > 50_000
        assert 0.9 < est / expected < 1.7, (f, est, expected)
        assert est > 5 * sky.loc[(f, "raw"), "mse_se"]
        assert sky.loc[(f, "denoised"), "mse"] < est  # smoothing a flat sky helps
    # without registration (the frames taken as one grid) the same estimate is thousands of
    # times larger: the references' stars do not line up
    a = raw[0] - frame_statistics(raw[0], None).sky
    refs = [ev.reference_on_grid(b, None, None, None, None, None, a.shape, None)[0]
            for b in raw[1:]]
    classes = ev.pixel_classes_without_truth(np.mean(refs, axis=0), np.ones(a.shape, bool))
    unreg = ev.independent_exposure_metrics({"raw": a}, a, refs, classes).combined
    assert unreg.set_index("pixel_class").loc["sky", "mse"] > 1000 * sky.loc[(names[0], "raw"),
                                                                              "mse"]


def _synthetic_store(path: Path, shifts, noise_only: int) -> list[np.ndarray]:
    """Frames without a WCS: one star field at the given offsets, one frame of pure noise."""
    rng = np.random.default_rng(4)
    shape = (128, 140)
    x, y = rng.uniform(-20, shape[1] + 20, 40), rng.uniform(-20, shape[0] + 20, 40)
    flux = 10 ** rng.uniform(3, 4.5, 40)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    images = []
    for k, (dx, dy) in enumerate(shifts):
        img = np.full(shape, 300.0) + rng.normal(0, 8.0, shape)
        if k != noise_only:
            for xi, yi, f in zip(x + dx, y + dy, flux, strict=True):
                img += f / (2 * np.pi * 2.0**2) * np.exp(
                    -0.5 * ((xx - xi) ** 2 + (yy - yi) ** 2) / 2.0**2)
        images.append(img)
        st.write_frame(path, st.frame_id(10 + k, 1),
                       {"image": img.astype(np.float32), "mask": np.zeros(shape, np.uint8),
                        "denoised": ndimage.gaussian_filter(img, 1.0).astype(np.float32)},
                       {"expnum": 10 + k, "ccd": 1, "band": "V", "exptime": 60.0, "zp": 1.0,
                        "zp_err": 0.0, "gain": 1.0, "rdnoise": 5.0}, chunks=(64, 64))
    return images


def test_evaluate_and_stack_without_wcs_record_failed_registrations(tmp_path):
    """A frame with no stars in common is no reference (evaluate) and stops a stack."""
    from pausdenoise.config import PipelineConfig
    from pausdenoise.errors import StageError
    from pausdenoise.pipeline.context import Context
    from pausdenoise.pipeline.runner import run
    from pausdenoise.pipeline.stages.stack import run_stack
    from pausdenoise.runstate import RunPaths, RunRecord

    store = tmp_path / "s.zarr"
    shifts = [(0, 0), (9, -5), (-7, 11), (4, 4)]
    _synthetic_store(store, shifts, noise_only=3)
    cfg = PipelineConfig.model_validate({
        "input": {"source": "store", "store_path": str(store)},
        "holdout_exposures_per_band": 0, "cluster": {"kind": "threads"},
        "gan": {"enabled": True, "cutout_size": 32, "cutout_stride": 32}})
    out = tmp_path / "run"
    run(cfg, out, stages=["evaluate"])
    ev_dir = out / "evaluate"
    reg = pd.read_csv(ev_dir / "registration.csv")
    reg["error"] = reg["error"].fillna("")
    skipped = pd.read_csv(ev_dir / "skipped.csv")
    summary = json.loads((ev_dir / "summary.json").read_text())
    noise = st.frame_id(13, 1)
    assert skipped["frame"].tolist() == [noise]
    assert "covers" in skipped["reason"].iloc[0]
    bad = (reg["frame"] == noise) | (reg["other_frame"] == noise)
    assert len(reg) == 6 and (reg.loc[bad, "error"].str.contains("no significant")).all()
    assert (reg.loc[~bad, "error"] == "").all()
    assert summary["registration"]["failed"] == 3
    assert summary["frames_evaluated_independent"] == 3
    # the frames' noise is 8 ADU, their attributes say gain 1 and read noise 5 e⁻ on a sky of
    # 300 ADU (325 ADU²): the raw sky estimate over that noise model says so
    assert summary["raw_mse_over_noise_model_sky_independent"] == pytest.approx(64 / 325,
                                                                                rel=0.1)
    one = reg[(reg["frame"] == st.frame_id(10, 1)) & (reg["other_frame"] == st.frame_id(12, 1))]
    assert one["dx_px"].iloc[0] == pytest.approx(-7, abs=0.05)
    assert one["dy_px"].iloc[0] == pytest.approx(11, abs=0.05)
    paths = RunPaths((tmp_path / "stack").resolve())
    paths.out.mkdir(parents=True)
    with pytest.raises(StageError, match=f"cannot be registered.*{noise}: no significant"):
        run_stack(Context(cfg, paths, None, RunRecord(paths)), cfg.gan)
    reg = pd.read_csv(paths.out / "gan" / "registration.csv")
    assert reg.set_index("frame").loc[noise, "error"].startswith("no significant")


def test_evaluate_takes_references_no_broader_than_the_frame(tmp_path):
    """``evaluate.max_seeing_ratio``: only sharper exposures are references; the sharpest
    frame, with none, is skipped with the setting named."""
    store = tmp_path / "s.zarr"
    _synthetic_store(store, [(0, 0), (9, -5), (-7, 11), (4, 4)], noise_only=-1)
    fwhm = {st.frame_id(10 + k, 1): f for k, f in enumerate((4.0, 3.0, 4.5, 3.5))}
    for f, w in fwhm.items():
        st.update_frame_attrs(store, f, {"psf_fwhm_px": w, "psf_beta": 3.0})
    ev_dir, summary = _evaluate_store(store, tmp_path / "run", evaluate={
        "max_seeing_ratio": 1.0, "reference_model": "psf", "single_reference": "equal-noise"})
    assert summary["max_seeing_ratio"] == 1.0 and summary["reference_model"] == "psf"
    skipped = pd.read_csv(ev_dir / "skipped.csv")
    sharpest = st.frame_id(11, 1)
    assert skipped["frame"].tolist() == [sharpest]
    assert skipped["reason"].iloc[0].startswith(
        "evaluate.max_seeing_ratio: no other exposure with a PSF FWHM ≤ 1 × the frame's "
        "(3.00 px)")
    refs = pd.read_csv(ev_dir / "independent_references.csv").drop_duplicates(
        ["frame", "reference_frame"])
    used = refs.groupby("frame")["reference_frame"].apply(sorted).to_dict()
    assert used == {f: sorted(g for g in fwhm if g != f and fwhm[g] <= fwhm[f])
                    for f in fwhm if f != sharpest}
    assert summary["frames_evaluated_independent"] == 3


def test_evaluate_skips_a_frame_whose_sky_its_references_do_not_hold(tmp_path):
    """``evaluate.max_sky_noise_model_ratio``: a frame whose raw sky estimate is far above
    its noise model is skipped with the ratio; frames without a gain are kept."""
    from pausdenoise.pipeline.stages.evaluate import _off_noise_model

    store = tmp_path / "s.zarr"
    _synthetic_store(store, [(0, 0), (9, -5), (-7, 11), (4, 4)], noise_only=-1)
    # 8 ADU of noise; gain 100 e⁻/ADU says 300/100 + (5/100)² ≈ 3 ADU² (ratio ≈ 21), the
    # others' gain 1 says 325 ADU² (ratio ≈ 0.2)
    st.update_frame_attrs(store, st.frame_id(12, 1), {"gain": 100.0})
    ev_dir, summary = _evaluate_store(store, tmp_path / "run",
                                      evaluate={"max_sky_noise_model_ratio": 1.5})
    skipped = pd.read_csv(ev_dir / "skipped.csv")
    assert skipped["frame"].tolist() == [st.frame_id(12, 1)]
    ratio = float(re.search(r"MSE is ([\d.]+) ×", skipped["reason"].iloc[0]).group(1))
    assert ratio == pytest.approx(64 / 3.0025, rel=0.15)
    assert "limit 1.5" in skipped["reason"].iloc[0]
    assert summary["frames_evaluated_independent"] == 3
    assert summary["max_sky_noise_model_ratio"] == 1.5
    assert set(pd.read_csv(ev_dir / "pixel_metrics.csv")["frame"]) == {
        st.frame_id(k, 1) for k in (10, 11, 13)}
    # no gain, no noise model: the frame is kept; no limit keeps everything
    m = pd.DataFrame({"kind": ["raw"], "pixel_class": ["sky"], "mse": [64.0],
                      "noise_var_model": [np.nan]})
    assert _off_noise_model((m, m), 1.5)[0] is m
    m2 = m.assign(noise_var_model=1.0)
    assert isinstance(_off_noise_model((m2, m2), 1.5), str)
    assert _off_noise_model((m2, m2), None)[0] is m2
