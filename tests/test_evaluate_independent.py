"""The independent-exposure estimator of the MSE to the truth (real data without truth).

Synthetic frames: one noiseless sky seen by several exposures with independent Gaussian noise
of different σ, different zero-points and sky levels, on grids shifted by whole and sub-pixel
offsets (so the references are resampled); the truth is known, so the estimate can be checked.
Then the evaluate stage on a synthetic store and on the real DECam multi-epoch frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.wcs import WCS
from scipy import ndimage

from pausdenoise import evaluate as ev
from pausdenoise import store as st

PIXEL_DEG = 0.263 / 3600


def _wcs(shape: tuple[int, int], dy: float, dx: float) -> WCS:
    """TAN WCS whose pixel (y + dy, x + dx) sees what pixel (y, x) of the reference grid sees."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [shape[1] / 2 + 1 + dx, shape[0] / 2 + 1 + dy]
    w.wcs.cdelt = [-PIXEL_DEG, PIXEL_DEG]
    return w


def _truth(shape, dy, dx, sources, sky, zp):
    """Noiseless frame in its own ADU: sources (reference-grid px, calibrated flux) + sky."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    img = np.full(shape, float(sky))
    for x, y, flux, s in sources:
        img += (flux / zp) / (2 * np.pi * s**2) * np.exp(
            -((xx - x - dx) ** 2 + (yy - y - dy) ** 2) / (2 * s**2))
    return img


def _sources(rng, shape, n):
    return [(rng.uniform(12, shape[1] - 12), rng.uniform(12, shape[0] - 12),
             rng.uniform(300, 3000), 1.8) for _ in range(n)]


# Exposures of one band: (shift dy, dx in px, noise σ in own ADU, zero-point, sky in own ADU).
# Frame 0 is the scored frame D; 1 and 2 are shifted by sub-pixel amounts (bilinear
# resampling), 3 and 4 by whole pixels (exact copies).
EXPOSURES = [(0.0, 0.0, 4.0, 1.0, 100.0),
             (0.5, 0.25, 2.0, 0.8, 300.0),
             (-0.3, 0.6, 2.0, 1.25, 50.0),
             (2.0, -3.0, 2.0, 1.0, 80.0),
             (-1.0, 2.0, 3.0, 1.1, 120.0)]


def _bilinear_var_factor(dy: float, dx: float) -> float:
    fy, fx = dy - np.floor(dy), dx - np.floor(dx)
    return ((1 - fy) ** 2 + fy**2) * ((1 - fx) ** 2 + fx**2)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(11)
    shape = (320, 320)
    srcs = _sources(rng, shape, 25)
    frames = []
    for dy, dx, sigma, zp, sky in EXPOSURES:
        truth = _truth(shape, dy, dx, srcs, sky, zp)
        frames.append({"truth": truth, "image": truth + rng.normal(0, sigma, shape),
                       "wcs": _wcs(shape, dy, dx), "zp": zp, "sky": sky, "sigma": sigma})
    return shape, frames


def test_triplet_recovers_unequal_noise_variances_pair_does_not():
    rng = np.random.default_rng(1)
    shape = (300, 300)
    truth = _truth(shape, 0, 0, _sources(rng, shape, 20), 0.0, 1.0)
    good = np.ones(shape, bool)
    a, b, c = (truth + rng.normal(0, s, shape) for s in (5.0, 1.5, 2.5))
    assert ev.noise_variance_from_triplet(b, c, a, good) == pytest.approx(1.5**2, rel=0.05)
    assert ev.noise_variance_from_triplet(c, b, a, good) == pytest.approx(2.5**2, rel=0.03)
    assert ev.noise_variance_from_triplet(a, b, c, good) == pytest.approx(5.0**2, rel=0.02)
    pair = ev.noise_variance_from_pair(b, c, good)  # assumes equal noise: the average
    assert pair == pytest.approx((1.5**2 + 2.5**2) / 2, rel=0.03)
    assert abs(pair / 1.5**2 - 1) > 0.5
    # per reference, the table carries the same triplet variances; the pair's are equal
    sky = {"all": good}
    tri = ev.independent_exposure_metrics({"raw": a}, a, [b, c], sky).per_reference
    assert tri["noise_var_reference"].to_numpy() == pytest.approx([1.5**2, 2.5**2], rel=0.05)
    pr = ev.independent_exposure_metrics({"raw": a}, a, [b, c], sky, estimator="pair")
    assert pr.per_reference["noise_var_reference"].nunique() == 1
    # ... and averaged over the references both give the same combined estimate (docstring)
    comb_t = ev.independent_exposure_metrics({"raw": a}, a, [b, c], sky).combined
    assert pr.combined["mse"].iloc[0] == pytest.approx(comb_t["mse"].iloc[0], rel=1e-10)
    assert comb_t["mse"].iloc[0] == pytest.approx(25.0, rel=0.03)
    with pytest.raises(ValueError, match="needs ≥ 2"):
        ev.independent_exposure_metrics({"raw": a}, a, [b], sky)


def test_mse_to_truth_via_independent_single_number():
    rng = np.random.default_rng(2)
    shape = (256, 256)
    truth = _truth(shape, 0, 0, _sources(rng, shape, 10), 0.0, 1.0)
    good = np.ones(shape, bool)
    est = truth + rng.normal(0, 1.0, shape)
    b = truth + rng.normal(0, 2.0, shape)
    mse = ev.mse_to_truth_via_independent(est, b, 4.0, good)
    assert mse == pytest.approx(np.mean((est - truth) ** 2), abs=0.05)


def _on_d_grid(frames, shape, idx):
    d = frames[0]
    out = []
    for k in idx:
        f = frames[k]
        v, valid = ev.reference_on_grid(f["image"], None, None, f["wcs"], f["zp"], d["wcs"],
                                        shape, d["zp"])
        out.append((v, valid))
    return out


def test_reference_on_grid_exact_for_whole_pixel_shift(synthetic):
    shape, frames = synthetic
    (v, valid), = _on_d_grid(frames, shape, [3])
    f = frames[3]
    from pausdenoise.n2v.normalise import frame_statistics

    sky = frame_statistics(f["image"]).sky
    # D pixel (y, x) is frame-3 pixel (y + 2, x - 3): pure re-indexing, no interpolation
    np.testing.assert_allclose(v[10:-10, 10:-10], (f["image"] - sky)[12:-8, 7:-13], rtol=0,
                               atol=1e-3)
    assert not valid[-2:, :].any() and not valid[:, :3].any()


def _score(frames, shape, idx):
    """Raw and smoothed ("denoised") D scored against references ``idx``; with the truth."""
    d = frames[0]
    refs = _on_d_grid(frames, shape, idx)
    good = np.ones(shape, bool)
    for _, valid in refs:
        good &= valid
    from pausdenoise.n2v.normalise import frame_statistics

    sky_d = frame_statistics(d["image"]).sky
    raw = np.where(good, d["image"] - sky_d, np.nan)
    den = np.where(good, ndimage.gaussian_filter(d["image"], 1.0) - sky_d, np.nan)
    values = [v for v, _ in refs]
    classes = ev.pixel_classes_without_truth(np.mean(values, axis=0), good)
    res = ev.independent_exposure_metrics({"raw": raw, "denoised": den}, raw, values, classes)
    truth = d["truth"] - d["sky"]
    true = {(kind, c): float(np.mean((img - truth)[classes[c]] ** 2))
            for kind, img in (("raw", raw), ("denoised", den)) for c in classes}
    return res, classes, truth, good, true


def test_independent_estimate_matches_true_mse_with_resampled_references(synthetic):
    shape, frames = synthetic
    d = frames[0]
    res, classes, truth, good, true = _score(frames, shape, [1, 2, 3, 4])
    # the sky class, found from the references without the truth, is truly source-free
    assert np.sqrt(np.mean(truth[classes["sky"]] ** 2)) < 0.02 * d["sigma"]
    assert classes["sky"].sum() > 0.6 * good.sum() and classes["source"].sum() > 300
    m = res.combined.set_index(["kind", "pixel_class"])
    for kind in ("raw", "denoised"):
        got = m.loc[(kind, "sky")]
        assert got["mse"] == pytest.approx(true[(kind, "sky")], rel=0.03), kind
        assert abs(got["mse"] - true[(kind, "sky")]) < 4 * got["mse_se"]
    assert m.loc[("raw", "sky"), "mse"] == pytest.approx(d["sigma"] ** 2, rel=0.03)
    assert m.loc[("raw", "sky"), "rms"] / m.loc[("denoised", "sky"), "rms"] > 2
    # σ_j² is the variance of the reference *as compared*: scaled to D's zero-point and
    # lowered by the bilinear resampling (exact copies for the whole-pixel shifts)
    per = res.per_reference[(res.per_reference["kind"] == "raw")
                            & (res.per_reference["pixel_class"] == "sky")]
    expect = [(f["sigma"] * f["zp"] / d["zp"]) ** 2 * _bilinear_var_factor(dy, dx)
              for f, (dy, dx, *_) in zip(frames[1:], EXPOSURES[1:], strict=True)]
    assert per["noise_var_reference"].to_numpy() == pytest.approx(expect, rel=0.1)
    # subtracting the references' variance on their own grids instead over-subtracts
    native = np.mean([(f["sigma"] * f["zp"] / d["zp"]) ** 2 for f in frames[1:]])
    naive = m.loc[("denoised", "sky"), "mse_to_reference"] - native
    assert naive < 0.7 * true[("denoised", "sky")]


def test_low_snr_class_holds_the_faint_light_and_no_bright_core():
    """The low-S/N class: detected light at most ``low_snr_max`` σ, never a bright core."""
    shape, sigma = (96, 96), 5.0
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)

    def star(x, y, peak, s=1.5):
        return peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s**2))

    truth = star(30, 30, 2000.0) + star(66, 60, 4 * sigma, 2.5)
    rng = np.random.default_rng(3)
    refs = [truth + rng.normal(0, sigma, shape) for _ in range(4)]
    good = np.ones(shape, bool)
    mean = np.mean(refs, axis=0)
    classes = ev.pixel_classes_without_truth(mean, good, noise_sigma=sigma, low_snr_max=10.0)
    low = classes["low_snr"]
    assert "low_snr" not in ev.pixel_classes_without_truth(mean, good)
    assert not (low & classes["sky"]).any()
    assert low[60, 66] and low[58:63, 64:69].mean() > 0.8  # the faint source's core
    assert not low[28:33, 28:33].any()  # the bright core
    assert low[30, 36]  # the bright star's outskirts (about 6 σ)
    assert (mean[low] <= 10 * sigma).all()
    # with truth: the band between the sky tolerance and the limit
    band = ev.low_snr_pixel_mask(truth, good, sigma, 0.05, 10.0)
    assert band[60, 66] and not band[30, 30] and not band[0, 0]
    assert ((truth[band] >= 0.05 * sigma) & (truth[band] <= 10 * sigma)).all()
    assert not ev.low_snr_pixel_mask(np.full(shape, np.nan), good, sigma, -np.inf, 10).any()


def test_source_pixels_exact_with_aligned_references_biased_by_interpolation(synthetic):
    """Source pixels: unbiased with whole-pixel (exact) references; bilinear resampling
    blurs the references' signal, so a smoothing denoiser looks better than it is there
    (the bias documented in pausdenoise.evaluate)."""
    shape, frames = synthetic
    res, _, _, _, true = _score(frames, shape, [3, 4])
    m = res.combined.set_index(["kind", "pixel_class"])
    for kind in ("raw", "denoised"):
        got = m.loc[(kind, "source")]
        assert abs(got["mse"] - true[(kind, "source")]) < 3 * got["mse_se"], kind
        assert got["mse"] == pytest.approx(true[(kind, "source")], rel=0.1), kind
    res, _, _, _, true = _score(frames, shape, [1, 2])
    m = res.combined.set_index(["kind", "pixel_class"])
    assert m.loc[("denoised", "source"), "mse"] < 0.85 * true[("denoised", "source")]
    assert m.loc[("denoised", "sky"), "mse"] == pytest.approx(true[("denoised", "sky")],
                                                              rel=0.05)


# --------------------------------------------------------------------------- the stage


def _write_store(path: Path, frames, shape, band_of, denoise_sigma=1.0):
    for i, f in enumerate(frames):
        img = f["image"].astype(np.float32)
        den = ndimage.gaussian_filter(f["image"], denoise_sigma).astype(np.float32)
        mask = np.zeros(shape, np.uint8)
        mask[5, 7 + i] = 1  # a bad pixel per frame: never used
        st.write_frame(path, st.frame_id(100 + i, 1),
                       {"image": img, "mask": mask, "denoised": den},
                       {"expnum": 100 + i, "ccd": 1, "band": band_of[i], "exptime": 60.0,
                        "zp": f["zp"], "zp_err": 0.0, "gain": 1.0, "rdnoise": 5.0,
                        "saturate": 6e4, "wcs": f["wcs"].to_header().tostring()},
                       chunks=(64, 64))


def _run_evaluate(store: Path, out: Path, **evaluate):
    from pausdenoise.config import PipelineConfig
    from pausdenoise.pipeline.runner import run

    cfg = PipelineConfig.model_validate({
        "input": {"source": "store", "store_path": str(store)},
        "holdout_exposures_per_band": 0,
        "cluster": {"kind": "threads"},
        "evaluate": evaluate,
    })
    run(cfg, out, stages=["evaluate"])
    ev_dir = out / "evaluate"

    def read(name: str) -> pd.DataFrame | None:
        return pd.read_csv(ev_dir / name) if (ev_dir / name).exists() else None

    summary = ev_dir / "summary.json"
    return (read("pixel_metrics.csv"), read("pixel_summary.csv"), read("skipped.csv"),
            json.loads(summary.read_text()) if summary.exists() else None)


def test_evaluate_stage_without_truth_on_synthetic_store(synthetic, tmp_path):
    _, frames = synthetic
    sub = [dict(f, image=f["image"][:160, :160], truth=f["truth"][:160, :160]) for f in frames]
    store = tmp_path / "s.zarr"
    # four exposures of band x; one of band y has no independent exposure
    _write_store(store, sub, (160, 160), ["x", "x", "x", "x", "y"])
    metrics, pooled, skipped, summary = _run_evaluate(store, tmp_path / "run")
    assert skipped["frame"].tolist() == [st.frame_id(104, 1)]
    assert "no independent exposure in band y" in skipped["reason"].iloc[0]
    assert summary["frames_evaluated_independent"] == 4 and summary["frames_evaluated_truth"] == 0
    assert (metrics["reference"] == ev.REFERENCE_INDEPENDENT).all()
    assert (metrics["estimator"] == "triplet").all() and (metrics["n_references"] == 3).all()
    assert set(pooled["reference"]) == {ev.REFERENCE_INDEPENDENT}
    assert np.isfinite(pooled["rms_reduction"]).all()
    assert "rms_reduction_sky_independent" in summary
    assert "rms_reduction_low_snr_independent" in summary  # the faint light, a class of its own
    # the frame D of σ = 4: estimated sky MSE of raw and denoised vs the truth
    d = metrics[(metrics["frame"] == st.frame_id(100, 1)) & (metrics["pixel_class"] == "sky")]
    d = d.set_index("kind")
    truth = sub[0]["truth"] - sub[0]["sky"]
    flat = np.abs(truth) < 1e-3
    flat[5, 7] = False
    raw_true = np.mean((sub[0]["image"] - sub[0]["sky"] - truth)[flat] ** 2)
    den = ndimage.gaussian_filter(sub[0]["image"], 1.0) - sub[0]["sky"]
    den_true = np.mean((den - truth)[flat] ** 2)
    assert d.loc["raw", "mse"] == pytest.approx(raw_true, rel=0.05)
    assert abs(d.loc["denoised", "mse"] - den_true) < max(4 * d.loc["denoised", "mse_se"],
                                                          0.05 * den_true)
    # with one independent exposure: skipped by default, or assumed equal noise on request
    store2 = tmp_path / "two.zarr"
    _write_store(store2, sub[:2], (160, 160), ["x", "x"])
    m2, _, sk2, _ = _run_evaluate(store2, tmp_path / "run2")
    assert len(sk2) == 2 and sk2["reason"].str.contains("one independent exposure").all()
    assert m2 is None  # nothing evaluated: no metric table (not an error)
    m3, _, sk3, _ = _run_evaluate(store2, tmp_path / "run3", single_reference="equal-noise")
    assert sk3.empty and (m3["estimator"] == "equal-noise").all()


@pytest.mark.real_data
def test_evaluate_without_truth_on_real_decam_frames(decam_config, tmp_path):
    """Real DECam frames (3 g, 2 r, 3 z of one patch, sub-pixel offsets, TPV WCS): the raw
    frame's estimated MSE to the truth on sky pixels is its own noise variance."""
    from pausdenoise.config import PipelineConfig, load_config
    from pausdenoise.n2v.normalise import frame_statistics
    from pausdenoise.pipeline.runner import run

    cfg = load_config(decam_config)
    out = tmp_path / "decam"
    run(cfg, out, stages=["ingest"])
    store = out / "store.zarr"
    noise = {}
    for f in st.list_frames(store):
        img = np.asarray(st.open_frame(store, f))
        ivar = np.asarray(st.open_frame(store, f, "ivar"))
        mask = np.asarray(st.open_frame(store, f, "mask"))
        arr = st.create_output_array(store, f, "denoised", like="image", dtype=np.float32)
        arr[...] = ndimage.gaussian_filter(img, 1.0)  # a stand-in "denoiser"
        noise[f] = (float(np.median(1 / ivar[(ivar > 0) & (mask == 0)])),
                    frame_statistics(img, mask).sigma ** 2)
    d = cfg.model_dump()
    d["holdout_exposures_per_band"] = 0
    cfg = PipelineConfig.model_validate(d)
    run(cfg, out, stages=["evaluate"])
    ev_dir = out / "evaluate"
    metrics = pd.read_csv(ev_dir / "pixel_metrics.csv")
    pooled = pd.read_csv(ev_dir / "pixel_summary.csv")
    skipped = pd.read_csv(ev_dir / "skipped.csv")
    # g and z: 3 exposures each (2 references per frame); r: 2, so skipped with the reason
    assert len(skipped) == 2 and skipped["reason"].str.contains("band r").all()
    assert metrics["frame"].nunique() == 6
    assert (metrics["reference"] == ev.REFERENCE_INDEPENDENT).all()
    assert (metrics["estimator"] == "triplet").all()
    num = ["n_pixels", "mse", "mse_se", "mse_to_reference", "noise_var_reference"]
    assert np.isfinite(metrics[num].to_numpy(float)).all()
    assert np.isfinite(pooled[["mse", "mse_se", "rms", "rms_reduction"]].to_numpy(float)).all()
    sky = metrics[metrics["pixel_class"] == "sky"].set_index(["frame", "kind"])
    for f in metrics["frame"].unique():
        ivar_var, mad_var = noise[f]
        est = sky.loc[(f, "raw"), "mse"]
        assert sky.loc[(f, "raw"), "n_pixels"] > 1000
        # raw MSE to truth = the frame's noise variance: vs the pipeline's inverse variance
        # (within 25 %) and vs the frame's MAD σ² (looser: sources inflate it in 51×41 px)
        assert 0.75 < est / ivar_var < 1.25, (f, est, ivar_var)
        assert 0.4 < est / mad_var < 1.5, (f, est, mad_var)
        assert est > 5 * sky.loc[(f, "raw"), "mse_se"]
        # smoothing a flat sky lowers the error there
        assert sky.loc[(f, "denoised"), "mse"] < 0.5 * est
