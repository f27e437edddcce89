"""``benchmarks/bench_training_budget.py``: blur baseline, budget snapshots, a tiny run.

The blur selection is checked against answers known without the implementation: a flat
truth wants the widest blur, a noiseless image the narrowest, and a Gaussian random field
in white noise the σ that minimises the expected MSE computed from its power spectrum.
The end-to-end run trains a small network for a few seconds on synthetic frames.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from pausdenoise.n2v.config import TrainConfig
from pausdenoise.n2v.normalise import FrameStats, frame_statistics
from pausdenoise.n2v.patches import Frame
from pausdenoise.n2v.train import TrainHistory

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_training_budget

    return bench_training_budget


def _frame(bench, image, truth, border: int = 0):
    good = np.ones(image.shape, bool)
    inner = np.zeros(image.shape, bool)
    inner[border:image.shape[0] - border, border:image.shape[1] - border] = True
    half = inner.copy()
    half[:, : image.shape[1] // 2] = False
    return bench.EvalFrame("f", image, good, {"sky": inner & ~half, "source": half},
                           FrameStats(0.0, 1.0), truth=truth)


def test_blur_flat_truth_picks_widest_and_noiseless_picks_narrowest(bench):
    rng = np.random.default_rng(1)
    truth = np.full((96, 96), 100.0)
    noisy = _frame(bench, truth + rng.normal(0, 5, truth.shape), truth)
    best = bench.best_blur([noisy])
    assert best["sky"]["sigma"] == 3.0 and best["source"]["sigma"] == 3.0
    assert best["sky"]["gain"] > 5  # a σ=3 px blur averages ~113 independent pixels

    field = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 1.0) * 50 + 100
    clean = _frame(bench, field.copy(), field)
    best = bench.best_blur([clean])
    assert best["sky"]["sigma"] == 0.5 and best["source"]["sigma"] == 0.5


def test_blur_random_field_matches_spectral_optimum(bench):
    """Truth: white noise smoothed by s = 1.5 px (variance A²), plus white noise σ_n."""
    n, s, amp, sig_n = 256, 1.5, 1.0, 1.0
    rng = np.random.default_rng(7)
    f = ndimage.gaussian_filter(rng.normal(size=(n, n)), s, mode="wrap")
    truth = amp * f / f.std()
    image = truth + rng.normal(0, sig_n, (n, n))
    # expected MSE(σ) = mean_k (1 − G_σ)² S(k) + σ_n² mean_k G_σ², S ∝ G_s² with variance A²
    k2 = np.add.outer(np.fft.fftfreq(n) ** 2, np.fft.fftfreq(n) ** 2)
    g_s2 = np.exp(-4 * np.pi**2 * s**2 * k2)
    spec = amp**2 * g_s2 / g_s2.mean()

    def expected(sigma):
        g = np.exp(-2 * np.pi**2 * sigma**2 * k2)
        return float(np.mean((1 - g) ** 2 * spec) + sig_n**2 * np.mean(g**2))

    want = min(bench.BLUR_SIGMAS, key=expected)
    assert 0.5 < want < 3.0  # an interior optimum: the test can tell σ apart
    best = bench.best_blur([_frame(bench, image, truth, border=16)])
    for cls in ("sky", "source"):
        assert abs(best[cls]["sigma"] - want) <= 0.25, (cls, best[cls]["sigma"], want)
        assert best[cls]["mse"] == pytest.approx(expected(best[cls]["sigma"]), rel=0.1)


def test_budget_snapshots_copy_at_first_crossing(bench):
    net = torch.nn.Linear(2, 1)
    snaps = bench.BudgetSnapshots([10.0, 5.0, 30.0])
    hist = TrainHistory()
    for t, w in ((2.0, 1.0), (6.0, 2.0), (8.0, 3.0), (35.0, 4.0), (40.0, 5.0)):
        with torch.no_grad():
            net.weight.fill_(w)
        hist.total_seconds = t
        hist.train_loss.append(0.0)
        snaps(net, hist)
    # 5 s first passed at 6 s (weight 2); 10 s and 30 s together at 35 s (weight 4)
    assert sorted(snaps.taken) == [5.0, 10.0, 30.0]
    assert snaps.taken[5.0].seconds == 6.0 and snaps.taken[5.0].epochs == 2
    assert float(snaps.taken[5.0].state["weight"][0, 0]) == 2.0
    assert snaps.taken[10.0].seconds == 35.0 and snaps.taken[30.0].seconds == 35.0
    assert float(snaps.taken[30.0].state["weight"][0, 0]) == 4.0
    with torch.no_grad():  # copies, not views of the live weights
        net.weight.fill_(9.0)
    assert float(snaps.taken[5.0].state["weight"][0, 0]) == 2.0


def test_option_config_applies_overrides_and_budget(bench):
    base = TrainConfig(unet={"posterior": "gaussian", "base_channels": 32}, steps_per_epoch=50,
                       lr_schedule={"patience": 5}, epochs=12, keep="best")
    cfg = bench.option_config(base, "n2v2-5pc", 3.0, threads=2)
    assert cfg.unet.n2v2 and cfg.unet.posterior == "none" and cfg.unet.base_channels == 32
    assert cfg.strategy == "median" and cfg.masked_fraction == 0.05
    assert cfg.max_minutes == 3.0 and cfg.num_threads == 2 and cfg.keep == "last"
    assert cfg.early_stopping_patience is None and cfg.steps_per_epoch == bench.STEPS_PER_EPOCH
    # the plateau patience covers the same number of steps as in the base (5 × 50)
    assert cfg.lr_schedule.patience * cfg.steps_per_epoch == 250


def _synthetic(bench, seed: int, n: int = 96):
    rng = np.random.default_rng(seed)
    truth = np.full((n, n), 200.0)
    yy, xx = np.mgrid[:n, :n]
    src = np.zeros((n, n), bool)
    for x, y in rng.uniform(12, n - 12, (8, 2)):
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        truth += 400 * np.exp(-r2 / (2 * 1.5**2))
        src |= r2 < 16
    image = rng.poisson(truth / 2.0) * 2.0  # gain 0.5 e⁻/ADU: σ ≈ 20 ADU on the sky
    return image.astype(np.float32), truth, src


def test_tiny_end_to_end_produces_table_json_and_section(bench, tmp_path, capsys):
    train = []
    for i in range(3):
        image, _, _ = _synthetic(bench, i)
        train.append(Frame(image, None, frame_statistics(image), f"t{i}"))
    image, truth, src = _synthetic(bench, 10)
    frame = bench.truth_frame("e0", image, truth, np.ones(image.shape, bool), src, 0.05)
    base = TrainConfig(unet={"depth": 2, "base_channels": 8, "batch_norm": False},
                       patch_size=32, batch_size=4, learning_rate=1e-3, poisson_scale=10.0)
    ds = bench.DataSet("tiny", train, [frame], base, None, "three 96² synthetic frames")
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n")
    rc = bench.main(["--budgets", "0.02,0.05", "--options", "n2v,n2v-posterior",
                     "--threads", "1", "--out", str(tmp_path), "--append",
                     "--prior-scales", "1,8", "--results", str(results)], ds=ds)
    assert rc == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "training-budget-tiny.json").read_text())
    assert data["blur"]["sky"]["gain"] > 2  # flat sky: any blur of the grid helps a lot
    for opt in data["options"]:
        assert opt["status"] == "ok" and opt["patches_per_second"] > 0
        assert 0 < opt["inference_mpix_s"] and opt["inference_ratio"] > 0
        # a posterior network is scored at each τ, a plain one once
        taus = (1.0, 8.0) if opt["option"] == "n2v-posterior" else (1.0,)
        expected = [(b, t) for b in (0.02, 0.05) for t in taus]
        assert [(b["budget_min"], b["prior_scale"]) for b in opt["budgets"]] == expected
        for b in opt["budgets"]:
            assert b["status"] == "ok" and b["seconds"] >= 60 * b["budget_min"]
            assert math.isfinite(b["sky_gain"]) and b["sky_gain"] > 0
            assert math.isfinite(b["source_gain"]) and b["source_gain_se"] > 0
        assert opt["budgets"][-1]["seconds"] <= 60 * 0.05 + 30  # stopped near the budget
    rows = [ln for ln in out.splitlines() if ln.startswith("| n2v")]
    assert len(rows) == 6 and sum("| n2v-posterior τ=8 |" in r for r in rows) == 2
    text = results.read_text()
    assert "## Quality against CPU training time: tiny" in text and "load average" in text
    assert "--budgets 0.02,0.05" in text


def test_a_larger_prior_scale_keeps_the_estimate_closer_to_the_observed_pixels(bench):
    from pausdenoise.n2v.unet import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4, batch_norm=False,
                          posterior="gaussian")).eval()
    image, truth, src = _synthetic(bench, 3)
    frame = bench.truth_frame("e0", image, truth, np.ones(image.shape, bool), src, 0.05)
    frame.stats = frame_statistics(image)
    dist = {tau: np.abs(bench.denoise(net, frame, tau) - image) for tau in (1.0, 8.0, 1e6)}
    assert np.all(dist[8.0] <= dist[1.0] + 1e-3)  # the observation's weight grows with τ
    assert np.median(dist[8.0]) < np.median(dist[1.0])
    assert np.max(dist[1e6]) < 1e-2 * np.std(image)  # τ → ∞ returns the input



#: Bright stars of the Moffat fields: (y, x) px and flux ADU.
_STARS = [((30, 30), 4e4), ((30, 66), 2e4), ((66, 30), 3e4), ((66, 66), 1.5e4), ((48, 48), 2.5e4)]


def _moffat_stars(fwhm: float, shift: tuple[int, int] = (0, 0),
                  shape: tuple[int, int] = (96, 96)) -> np.ndarray:
    """Noiseless bright Moffat stars (β 3), shifted by whole pixels, ADU."""
    from pausdenoise.psf import moffat_stamp

    img = np.zeros(shape)
    for (y, x), f in _STARS:
        y, x = y + shift[1], x + shift[0]
        img[y - 12:y + 13, x - 12:x + 13] += f * moffat_stamp(fwhm, 3.0, 25)
    return img


def test_references_no_broader_than_the_frame_matched_through_the_psf_models(bench, tmp_path):
    from pausdenoise import store as st
    from pausdenoise.config import load_config

    rng = np.random.default_rng(3)
    store = tmp_path / "s.zarr"
    fwhm = [4.0, 3.0, 4.6, 3.4, 3.7]
    shifts = [(0, 0), (2, -1), (-1, 2), (1, 1), (-2, 0)]
    names = [st.frame_id(k + 1, 1) for k in range(5)]
    for name, w, sh in zip(names, fwhm, shifts, strict=True):
        image = rng.poisson((_moffat_stars(w, sh) + 900.0) * 1.9) / 1.9  # gain 1.9, sky 900
        st.write_frame(store, name, {"image": image.astype(np.float32)},
                       {"expnum": int(name[:8]), "ccd": 1, "band": "I", "gain": 1.9,
                        "rdnoise": 0.0, "psf_fwhm_px": w, "psf_beta": 3.0})
    image = np.asarray(st.open_frame(store, names[0]), np.float64)
    truth, good = _moffat_stars(4.0), np.ones(image.shape, bool)
    core = truth > 300  # within about a FWHM of each star (peaks 600–1,700 ADU)
    base = load_config(bench.CONFIGS["saao"]).evaluate
    err = {}
    for model in ("free", "psf"):
        cfg = base.model_copy(update={"max_seeing_ratio": 1.0, "reference_model": model})
        refs = bench._references(store, names[0], names[1:], image, good, cfg)
        assert len(refs) == 3  # the sharper exposures only: 4.6 px is left out
        mean = np.mean([m.values for m in refs], axis=0)
        sel = core & np.isfinite(mean)
        err[model] = float(np.mean((mean - truth)[sel] ** 2))
    # the mean of three references carries at most a third of one exposure's noise (less
    # once the kernels blur them to the frame's seeing); the fitted kernel blurs the cores
    # beyond it (10 × the PSF models' error here), the kernel between the PSF models not
    noise = float(np.mean((truth[core] + 900.0) / 1.9)) / 3
    assert err["psf"] < 2.0 * noise < err["free"], (err, noise)


def test_references_without_a_psf_qualify_and_keep_their_fitted_kernel(bench, tmp_path):
    """As the evaluate stage: an exposure without a PSF size passes the seeing limit, and
    with ``reference_model: psf`` it keeps its fitted kernel (no KeyError)."""
    from pausdenoise import store as st
    from pausdenoise.config import load_config

    rng = np.random.default_rng(5)
    store = tmp_path / "s.zarr"
    fwhm = [4.0, 3.0, 4.6, None]
    shifts = [(0, 0), (2, -1), (-1, 2), (1, 1)]
    names = [st.frame_id(k + 1, 1) for k in range(4)]
    for name, w, sh in zip(names, fwhm, shifts, strict=True):
        image = rng.poisson((_moffat_stars(w or 3.5, sh) + 900.0) * 1.9) / 1.9
        attrs = {"expnum": int(name[:8]), "ccd": 1, "band": "I", "gain": 1.9, "rdnoise": 0.0}
        if w is not None:
            attrs.update(psf_fwhm_px=w, psf_beta=3.0)
        st.write_frame(store, name, {"image": image.astype(np.float32)}, attrs)
    image = np.asarray(st.open_frame(store, names[0]), np.float64)
    good = np.ones(image.shape, bool)
    base = load_config(bench.CONFIGS["saao"]).evaluate
    cfg = base.model_copy(update={"max_seeing_ratio": 1.0, "reference_model": "psf"})
    refs = bench._references(store, names[0], names[1:], image, good, cfg)
    assert len(refs) == 2  # 3.0 px and the one without a size; 4.6 px is left out
    free = bench._references(store, names[0], names[1:], image, good,
                             cfg.model_copy(update={"reference_model": "free"}))
    # the 3.0 px exposure is re-matched through the PSF models, the other keeps its fit
    same = [any(np.array_equal(a.values, b.values, equal_nan=True) for b in free) for a in refs]
    assert sorted(same) == [False, True]
    # the frame itself without a size: no limit, every registered exposure may be a reference
    from pausdenoise.pipeline.references import stored_psf

    assert stored_psf(store, names[3], 0.265) is None
    assert stored_psf(store, names[1], 0.265) == (3.0, 3.0, 0.0, 0.0)  # round: no psf_e1/e2
