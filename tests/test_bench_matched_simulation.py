"""``benchmarks/bench_matched_simulation.py``: the simulated star fields and their training.

The supervised training brings a small network below the raw frame's error against the
truth; the scoring, its tables and checks (the simulation itself:
``tests/simulate/test_star_field.py``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from pausdenoise.n2v.unet import UNet, UNetConfig
from pausdenoise.simulate import star_field as sf


@pytest.fixture()
def ms(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_matched_simulation

    return bench_matched_simulation


def _seeing_series(ms):
    """Five exposures of one sky, gain and read noise, FWHM 3 to 5 px."""
    return [ms.ExposureModel(fwhm, 2.9, 1.9, 2.6, 900.0, 0.0) for fwhm in (3.0, 3.5, 4.0, 4.5, 5.0)]


def test_training_on_the_truth_denoises_a_simulated_frame(ms):
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    pop = ms.population(10 ** rng.uniform(4, 5, 5), 1e4, 50.0, 0.5)
    exp = ms.ExposureModel(3.8, 2.9, 1.9, 2.6, 900.0, 0.0)
    exp.sigma = 1.3 * float(np.sqrt(900.0 / 1.9 + 2.6 ** 2))
    frames = []
    for _ in range(2):
        factor, truth, stats = ms.fit_factor(pop, exp, (96, 96), rng, iterations=6)
        frames.append(ms.SimFrame(truth, exp, stats, factor))
    net = UNet(UNetConfig(depth=1, base_channels=8, batch_norm=False, residual=True))
    calls = []
    out = ms.train(frames, [4.0, 8.0], net, "fp32", rng,
                   lambda s, n: calls.append((s, n)), lr=3e-3, size=8, patch=32)
    assert len(calls) == 2 and calls[0][1] < calls[1][1] == out["steps"]
    assert calls[0][0] >= 4.0 and calls[1][0] >= 8.0
    x, y, w = ms.batch(frames, 16, 32, rng)
    net.eval()
    with torch.no_grad():
        pred = net(x)
    raw = float((w * (x - y) ** 2).mean())
    assert float((w * (pred - y) ** 2).mean()) < 0.7 * raw


def test_source_pixels_split_at_the_core_level(ms):
    f = SimpleNamespace(  # the fields split_sources reads and writes
        references=[np.array([[0.0, 100.0, 6000.0]]), np.array([[0.0, 300.0, 4200.0]])],
        classes={"source": np.array([[False, True, True]])})
    ms.split_sources([f], 5000.0)
    assert f.classes["faint"].tolist() == [[False, True, False]]  # mean 200
    assert f.classes["core"].tolist() == [[False, False, True]]  # mean 5100


def _blur_and_network(ms):
    """Gains of a best blur (2.0 at σ 0.75) and a network (3.0 ± 0.1) in every class."""
    net = {}
    for c in ms.SCORED:
        net[f"{c}_gain"], net[f"{c}_gain_se"] = 3.0, 0.1
    return {c: {"sigma": 0.75, "gain": 2.0} for c in ms.SCORED}, net


def test_the_table_gives_each_class_against_its_best_blur(ms):
    blur, net = _blur_and_network(ms)
    res = {"blur": {"simulation": blur, "real": blur},
           "budgets": [{"minutes": 1.0, "steps": 10, "simulation": net, "real": net}]}
    table = ms.render(res).splitlines()
    assert len(table) == 2 + 2 * 2
    assert table[2].startswith("| simulation | best blur | — | 2.00 (σ 0.75)")
    assert table[3].count("3.00 ± 0.10 (1.50 ×)") == len(ms.SCORED)


def test_cosmic_rays_are_sharp_hits_of_the_asked_number(ms):
    rng = np.random.default_rng(5)
    base = np.zeros((512, 512))
    hit = ms.add_cosmic_rays(base, 200.0, 10.0, rng)
    assert base.max() == 0.0  # a copy
    lab, n = ndimage.label(hit > 0, structure=np.ones((3, 3)))
    assert 150 < n <= 230  # Poisson(200), a few tracks touching
    sizes = np.bincount(lab.ravel())[1:]
    assert sizes.max() <= 8 and np.median(sizes) <= 3
    assert hit[hit > 0].min() >= 0.5 * 3 * 10.0 and hit.max() <= 2 * 200 * 10.0
    assert ms.add_cosmic_rays(base, 0.0, 10.0, rng).max() == 0.0


def test_fine_tuning_rows_follow_the_last_budget(ms):
    blur, net = _blur_and_network(ms)
    res = {"blur": {"simulation": blur, "real": blur},
           "budgets": [{"minutes": 3.0, "steps": 10, "simulation": net, "real": net}],
           "fine_tune": [{"minutes": 1.0, "epochs": 4, "real": net},
                         {"minutes": 7.0, "status": "not reached"}]}
    table = ms.render(res).splitlines()
    assert len(table) == 2 + 2 * 2 + 1  # the budget not reached has no row
    assert table[-1].startswith("| real | network, 3 min + SURE 1 min | 4 epochs | 3.00 ± 0.10")


def test_simulated_frames_are_scored_against_truth_and_by_both_estimators(ms):
    rng = np.random.default_rng(7)
    pop = ms.population(10 ** rng.uniform(4, 4.5, 4), 1e4, 200.0, 0.5)
    exps = _seeing_series(ms)
    sets = ms.sim_eval_sets(pop, exps, [0.2] * 5, (96, 96), rng, other_seeing=True)
    assert list(sets) == ["simulation", "simulation, truth", "simulation, other seeing"]
    exact, truth, other = (sets[k] for k in sets)
    assert len(exact) == ms.SIM_EVAL
    noise_var = 900.0 / 1.9 + 2.6 ** 2
    for e, t, o in zip(exact, truth, other, strict=True):
        assert e.image is t.image is o.image and e.classes is t.classes is o.classes
        assert np.array_equal(e.good, o.good) and t.references == []
        assert len(e.references) == 4 and len(o.references) == 4
    mse, counts = {}, []
    for name, frames in sets.items():
        raw = ms.tb.pool([ms.tb.score_frame(f, {}) for f in frames]).set_index("pixel_class")
        counts.append(raw["n_pixels"].tolist())
        mse[name] = raw["mse"]
        # the raw image's error on this sparse field's sky pixels is its noise, every way
        assert mse[name]["sky"] == pytest.approx(noise_var, rel=0.1)
    assert counts[0] == counts[1] == counts[2]  # the same pixels scored in every set
    # with exact references the estimator finds the source pixels' error against the truth
    assert mse["simulation"]["source"] == pytest.approx(mse["simulation, truth"]["source"],
                                                        rel=0.15)
    # references through other PSFs, matched by a kernel, leave some of their mismatch there
    assert mse["simulation, other seeing"]["source"] > 1.5 * mse["simulation, truth"]["source"]


def test_the_estimator_check_finds_what_other_psfs_leave_in_star_cores(ms):
    rng = np.random.default_rng(8)
    pop = ms.population(10 ** rng.uniform(4, 4.7, 6), 1e4, 200.0, 0.5)
    exps = _seeing_series(ms)
    rows = ms.estimator_check(pop, exps, [0.2] * 5, (96, 96), rng, 500.0)
    assert [r["variant"] for r in rows] == [v[0] for v in ms.CHECK_VARIANTS]
    ratio = [r["raw_mse_ratio"] for r in rows]
    # on this sparse field's sky every kind of matched reference holds the frame's truth
    assert all(r["sky"] == pytest.approx(1.0, abs=0.1) for r in ratio)
    # in the cores the kernel match leaves light even for the frame's own PSF, and more
    # for the other exposures' PSFs
    assert ratio[0]["core"] > 2.0
    assert ratio[2]["core"] > 1.3 * ratio[0]["core"] and ratio[3]["core"] > 1.3 * ratio[1]["core"]
    # the kernel between the PSF models holds the truth where the PSFs are the frame's, and
    # for references no broader than the frame's (exact models here); broader ones it
    # cannot sharpen
    assert ratio[4]["core"] == pytest.approx(1.0, abs=0.5)
    assert ratio[4]["core"] < ratio[1]["core"] / 3
    assert ratio[7]["source"] == pytest.approx(1.0, abs=0.2)
    assert ratio[6]["core"] > 2.0  # the fitted kernel still blurs the cores
    assert ratio[5]["source"] > 3.0 * ratio[7]["source"]
    # the two sharpest of the scored exposures have fewer than two sharper ones
    assert [r["frames"] for r in rows] == [4] * 6 + [2] * 2
    for r in rows:
        assert set(r["blur_truth"]) == set(ms.SCORED) == set(r["blur_estimated"])
    table = ms.render_check(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("| frame's PSF, same grid | 4 | ")


def test_sure_trained_on_the_simulated_fields_is_scored_on_every_set(ms, monkeypatch):
    from pausdenoise.config import load_config

    monkeypatch.setattr(ms.tb, "STEPS_PER_EPOCH", 2)  # a short epoch: budgets end quickly
    monkeypatch.setattr(ms.tb, "VALIDATION_PATCHES", 8)
    torch.manual_seed(0)
    rng = np.random.default_rng(9)
    pop = ms.population(10 ** rng.uniform(4, 4.5, 4), 1e4, 200.0, 0.5)
    exps = _seeing_series(ms)
    frames = []
    for e in exps[:2]:
        truth = sf.simulate(pop, e, 0.2, (128, 128), rng)
        frames.append(ms.SimFrame(truth, e, ms.frame_statistics(ms.observe(truth, e, rng)), 0.2))
    sets = ms.sim_eval_sets(pop, exps, [0.2] * 5, (96, 96), rng)
    ds = SimpleNamespace(train_cfg=load_config(ms.tb.CONFIGS["saao"]).train)
    rows = ms.sure_on_simulation(ds, frames, [0.01, 0.02], 1, rng, sets)
    assert [r["minutes"] for r in rows] == [0.01, 0.02]
    for r in rows:
        assert r["epochs"] >= 1 and r["seconds"] >= 0.6
        for name in sets:
            assert np.isfinite(r[name]["sky_gain"]) and r[name]["sky_gain"] > 0
    res = {"blur": {n: {c: {"sigma": 0.75, "gain": 2.0} for c in ms.SCORED}
                    for n in (*sets, "real")},
           "budgets": [], "sure_on_simulation": rows}
    assert ms.render(res).count("SURE on the simulation, 0.01 min") == len(sets)


def test_the_noise_model_check_finds_exact_references_at_one_and_blurred_ones_above(
        ms, tmp_path):
    from pausdenoise import store as st
    from pausdenoise.config import load_config

    rng = np.random.default_rng(12)
    pop = ms.population(10 ** rng.uniform(4, 4.7, 6), 1e4, 200.0, 0.5)
    exp = ms.ExposureModel(3.5, 2.9, 1.9, 2.6, 900.0, 0.0)
    x, y, f = ms.draw_stars(pop, 0.2, (96, 96), rng)
    truth = ms.render_stars(x, y, f, exp.fwhm, exp.beta, (96, 96))
    cfg = load_config(ms.tb.CONFIGS["saao"]).evaluate
    frames = {}
    for kind, smooth in (("exact", 0.0), ("blurred", 1.5)):
        image = ms.observe(truth, exp, rng)
        refs = [ndimage.gaussian_filter(ms.observe(truth, exp, rng) - exp.sky, smooth)
                if smooth else ms.observe(truth, exp, rng) - exp.sky for _ in range(4)]
        good = np.ones(truth.shape, bool)
        fr = ms.tb.independent_frame(f"{kind}", image, good, refs, cfg)
        fr.sky = exp.sky
        ms.split_sources([fr], 500.0)
        st.write_frame(tmp_path / "s.zarr", kind, {"image": image.astype(np.float32)},
                       {"gain": exp.gain, "rdnoise": exp.read_noise_adu * exp.gain})
        frames[kind] = fr
    exact = ms.noise_model_check([frames["exact"]], tmp_path / "s.zarr")
    blurred = ms.noise_model_check([frames["blurred"]], tmp_path / "s.zarr")
    assert set(exact) == set(ms.SCORED)
    for c in ("sky", "source"):
        assert exact[c] == pytest.approx(1.0, abs=0.15), (c, exact)
    # references blurred beyond the frame's PSF miss the stars' light: counted as error
    assert blurred["source"] > 3.0 * exact["source"]
    rows = {"exact": {"frames": 1, "noise_model_ratio": exact,
                      "blur": ms.tb.best_blur([frames["exact"]], ms.tb.BLUR_SIGMAS, ms.SCORED)}}
    table = ms.render_real_check(rows).splitlines()
    assert len(table) == 3 and table[2].startswith("| exact | 1 | ")


def test_a_check_writes_its_json_and_its_dated_section(ms, tmp_path):
    import json

    a = SimpleNamespace(out=tmp_path / "out", append=True, results=tmp_path / "RESULTS.md")
    assert ms._write_check(a, ["--real-check"], "c.json", {"rows": {"x": 1}}, "| t |",
                           "A check", (0.5, 0.0, 0.0)) == 0
    assert json.loads((a.out / "c.json").read_text())["rows"] == {"x": 1}
    text = a.results.read_text()
    assert text.startswith("\n## A check (") and "--real-check\n```\n\n| t |\n" in text
