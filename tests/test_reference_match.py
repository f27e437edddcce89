"""References brought to the scored frame's seeing, position and flux scale.

A synthetic crowded field (a star every ~30 px², as on a bulge field): the scored frame and
four independent exposures that see it at other flux scales (0.6–1.5), sharper seeing,
sub-pixel offsets left by whole-pixel registration and other sky gradients. The truth of the
scored frame is known, so the independent-exposure estimate of the MSE of its raw image and
of a blurred version can be checked with and without the match.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pausdenoise import evaluate as ev
from pausdenoise import reference_match as rm

SHAPE = (128, 128)
GAIN = 2.0
SKY = 400.0
# (PSF σ px, flux scale, dy, dx, x gradient ADU across the frame)
FRAME = (1.7, 1.0, 0.0, 0.0, 0.0)
REFERENCES = [(1.3, 0.6, 0.3, -0.2, 6.0), (1.5, 1.5, -0.25, 0.35, -4.0),
              (1.2, 1.0, 0.1, 0.4, 0.0), (1.4, 0.8, -0.4, -0.1, 3.0)]


def _scene(rng: np.random.Generator) -> np.ndarray:
    """Stars: x, y (px, 0-based), flux (ADU at scale 1)."""
    n = SHAPE[0] * SHAPE[1] // 30
    return np.column_stack([rng.uniform(-5, SHAPE[1] + 5, n), rng.uniform(-5, SHAPE[0] + 5, n),
                            np.exp(rng.uniform(np.log(30.0), np.log(5000.0), n))])


def _render(stars: np.ndarray, sigma: float, scale: float, dy: float, dx: float,
            grad: float) -> np.ndarray:
    """Noiseless sky-subtracted image: Gaussian stars moved by (dx, dy), plus a plane."""
    img = np.zeros(SHAPE)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]].astype(np.float64)
    for x, y, f in stars:
        x0, y0 = round(x + dx), round(y + dy)
        sl = (slice(max(y0 - 8, 0), max(min(y0 + 9, SHAPE[0]), 0)),
              slice(max(x0 - 8, 0), max(min(x0 + 9, SHAPE[1]), 0)))
        img[sl] += scale * f / (2 * np.pi * sigma**2) * np.exp(
            -((xx[sl] - x - dx) ** 2 + (yy[sl] - y - dy) ** 2) / (2 * sigma**2))
    return img + grad * (xx - (SHAPE[1] - 1) / 2) / SHAPE[1]


def _observe(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """Sky plus Poisson-like Gaussian noise (gain GAIN), sky-subtracted again."""
    var = (SKY + np.clip(truth, 0, None)) / GAIN
    return truth + rng.normal(0.0, 1.0, SHAPE) * np.sqrt(var)


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(7)
    stars = _scene(rng)
    truth = _render(stars, *FRAME)
    frame = _observe(rng, truth)
    refs = [_observe(rng, _render(stars, *p)) for p in REFERENCES]
    return truth, frame, refs


def _estimates(truth, frame, refs):
    """Estimated and true MSE of raw and blurred, per pixel class."""
    good = np.ones(SHAPE, bool)
    est = {"raw": frame, "blur": ndimage.gaussian_filter(frame, 1.0)}
    level = np.sqrt(SKY / GAIN)
    classes = {"sky": truth < 0.5 * level, "source": truth > 10 * level}
    res = ev.independent_exposure_metrics(est, frame, refs, classes).combined
    out = {}
    for _, r in res.iterrows():
        sel = classes[r["pixel_class"]]
        true = float(np.mean((est[r["kind"]][sel] - truth[sel]) ** 2))
        out[(r["kind"], r["pixel_class"])] = (float(r["mse"]), true)
    assert good.all()
    return out


def test_matching_recovers_scale_and_shift(field):
    _truth, frame, refs = field
    matched = rm.match_references(frame, np.ones(SHAPE, bool), refs, sky=SKY, gain=GAIN)
    for m, (_s, scale, dy, dx, _g) in zip(matched, REFERENCES, strict=True):
        # the shallowest reference (scale 0.6) comes out ~2 % faint (errors in variables)
        assert m.flux_scale == pytest.approx(1.0 / scale, rel=0.03)
        sx, sy = m.shift_px
        assert sx == pytest.approx(dx, abs=0.05) and sy == pytest.approx(dy, abs=0.05)
        assert 0.95 < m.residual_rms < 1.15


def test_matched_references_give_the_true_mse(field):
    truth, frame, refs = field
    unmatched = _estimates(truth, frame, refs)
    matched = rm.match_references(frame, np.ones(SHAPE, bool), refs, sky=SKY, gain=GAIN)
    fixed = _estimates(truth, frame, [m.values for m in matched])
    for key in (("raw", "sky"), ("blur", "sky"), ("raw", "source")):
        est, true = fixed[key]
        assert est == pytest.approx(true, rel=0.05), key
    # the smoothing estimate's source pixels stay biased low (module docstring)
    est, true = fixed[("blur", "source")]
    assert 0.6 < est / true < 0.9
    # unmatched, the same estimator is far off (the test can fail)
    for key in (("blur", "sky"), ("raw", "source"), ("blur", "source")):
        est, true = unmatched[key]
        assert abs(est / true - 1) > 0.3, key


def test_best_matched_prefers_the_references_that_fit(field):
    _truth, frame, refs = field
    rng = np.random.default_rng(3)
    stars = _scene(rng)  # another field: nothing to match
    wrong = _observe(rng, _render(stars, 1.3, 1.0, 0.0, 0.0, 0.0))
    best = rm.best_matched(frame, np.ones(SHAPE, bool), [wrong, *refs], 3, sky=SKY, gain=GAIN)
    assert 0 not in [i for i, _ in best] and len(best) == 3
    plain = rm.best_matched(frame, np.ones(SHAPE, bool), [wrong, *refs], 2, half_width=0)
    assert [i for i, _ in plain] == [0, 1]
    assert np.array_equal(plain[0][1].values, wrong)


def test_benchmark_scores_both_ways_and_tabulates(field, monkeypatch):
    """``benchmarks/bench_reference_match.py``: per-frame raw sky RMS and gains, both ways."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_reference_match as brm
    import bench_training_budget as tb

    _truth, frame, refs = field
    image = frame + SKY
    good = np.ones(SHAPE, bool)
    cfg = ev.EvaluateConfig()
    predicted = float(np.sqrt(SKY / GAIN))
    results = {}
    for k in (0, 3):
        sky = tb.frame_statistics(image, np.zeros(SHAPE, np.uint8)).sky
        best = rm.best_matched(image - sky, good, refs, 4, sky=sky, gain=GAIN, half_width=k)
        fr = tb.independent_frame("f", image, good, [m.values for _, m in best], cfg)
        results[k] = brm.score([fr], [predicted], None)
    est0 = results[0]["per_frame"][0]["raw_sky_rms"]
    est3 = results[3]["per_frame"][0]["raw_sky_rms"]
    # crowded "sky" pixels (classes from the references): matched, the raw estimate is the
    # noise; unmatched, the references' other scales and seeings inflate it
    assert est3 == pytest.approx(predicted, rel=0.05)
    assert est0 > 1.1 * predicted
    assert set(results[3]["gains"]) == {f"blur {s:g}" for s in brm.SIGMAS}
    table = brm.render(results)
    assert "raw sky RMS, kernel 3" in table and "| f |" in table
    assert table.count("| blur ") == len(brm.SIGMAS)
    # the oracle linear filter (cross-fitted on halves): on Gaussian stars in white noise
    # the blurs are near the best linear filter, so it comes out level with the best blur
    # in the class it was fitted on (a wrong shift or scale would put it far below), and
    # worse in the other class
    oracle = brm.score([fr], [predicted], None, oracle_width=2)["gains"]
    for cls in ("sky", "source"):
        best_blur = max(oracle[f"blur {s:g}"][cls][0] for s in brm.SIGMAS)
        assert oracle[f"linear, {cls}-fitted"][cls][0] > 0.85 * best_blur, cls
    assert oracle["linear, source-fitted"]["sky"][0] < oracle["linear, sky-fitted"]["sky"][0]


def test_sure_linear_filter_finds_the_best_linear_filter_without_the_truth(field, monkeypatch):
    """The kernel of least SURE is, on its true error, as good as the one fitted to the truth."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_reference_match as brm
    import bench_training_budget as tb

    truth, frame, refs = field
    image = frame + SKY
    good = np.ones(SHAPE, bool)
    fr = tb.independent_frame("f", image, good, refs, ev.EvaluateConfig())
    h = 2
    raw = image - fr.sky
    inner = rm._footprint_valid(good, h)
    yy, xx = np.nonzero(inner)
    var = (SKY + np.clip(truth, 0, None)) / GAIN
    w = 1.0 / var[yy, xx]
    x = rm._design(raw, yy, xx, h, SHAPE)
    best = x @ np.linalg.solve(x.T @ (x * w[:, None]), x.T @ (w * (truth + SKY - fr.sky)[yy, xx]))

    def weighted_error(estimate: np.ndarray) -> float:
        return float(np.mean(w * (estimate - (truth + SKY))[yy, xx] ** 2))

    floor = float(np.mean(w * (best - (truth + SKY - fr.sky)[yy, xx]) ** 2))
    sure = weighted_error(brm.sure_linear_filter(fr, h, GAIN, 0.0))
    assert weighted_error(image) == pytest.approx(1.0, rel=0.05)  # χ² per pixel of the raw
    assert sure < 0.3 * weighted_error(image)
    assert sure == pytest.approx(floor, rel=0.03)
    # a noise model 4 × too quiet (gain 4 × too large) under-smooths: far worse
    assert weighted_error(brm.sure_linear_filter(fr, h, 4 * GAIN, 0.0)) > 2 * sure


def _fwhm(sigma: float) -> float:
    return 2.0 * np.sqrt(2.0 * np.log(2.0)) * sigma


def test_psf_kernel_takes_the_reference_psf_to_the_frames():
    from pausdenoise.psf import moffat_stamp

    h, n = rm.model_half_width(3, 4.0, 3.0), 41
    assert h == 8
    shift = (0.3, -0.45)

    def convolve(kernel: np.ndarray, big: np.ndarray) -> np.ndarray:
        w = kernel.shape[0] // 2
        return sum(kernel[w + dy, w + dx] * big[h + dy:h + dy + n, h + dx:h + dx + n]
                   for dy in range(-w, w + 1) for dx in range(-w, w + 1))

    k = rm.psf_kernel(0.8, shift, (4.0, 3.0), (3.0, 3.0), h)
    assert k.shape == (17, 17) and k.sum() == pytest.approx(0.8)
    # K ⊗ (the reference's PSF, displaced by the shift) = 0.8 × the frame's PSF
    ref = moffat_stamp(3.0, 3.0, n + 2 * h, *shift)
    want = 0.8 * moffat_stamp(4.0, 3.0, n)
    assert np.abs(convolve(k, ref) - want).max() < 0.01 * want.max()
    # a 7 x 7 kernel cannot reach the Moffat's wings: the core comes out too bright
    small = rm.psf_kernel(0.8, shift, (4.0, 3.0), (3.0, 3.0), 3)
    assert np.abs(convolve(small, ref) - want).max() > 0.02 * want.max()
    x = np.arange(-h, h + 1)
    px, py = k.sum(axis=0) / 0.8, k.sum(axis=1) / 0.8
    assert (px * x).sum() == pytest.approx(shift[0], abs=0.03)
    assert (py * x).sum() == pytest.approx(shift[1], abs=0.03)
    # a broader reference is not sharpened: the kernel only moves its light
    move = rm.psf_kernel(1.0, shift, (3.0, 3.0), (4.0, 3.0), h)
    want = moffat_stamp(4.0, 3.0, n)
    assert np.abs(convolve(move, moffat_stamp(4.0, 3.0, n + 2 * h, *shift)) - want).max() \
        < 0.01 * want.max()
    # bilinear resampling at half a pixel blurred the reference along x: undone
    same = rm.psf_kernel(1.0, (0.0, 0.0), (3.0, 3.0), (3.0, 3.0), h, resampled=(0.5, 0.0))
    blurred = 0.5 * (moffat_stamp(3.0, 3.0, n + 2 * h, 0.5, 0.0)
                     + moffat_stamp(3.0, 3.0, n + 2 * h, -0.5, 0.0))
    want = moffat_stamp(3.0, 3.0, n)
    assert np.abs(convolve(same, blurred) - want).max() < 0.01 * want.max()
    assert np.abs(blurred[h:h + n, h:h + n] - want).max() > 0.05 * want.max()


def test_psf_model_keeps_the_flux_and_sharpness_the_fitted_kernel_smooths(field):
    """Flux scale and shape from the PSFs: the reference's noise shrinks neither."""
    truth, frame, refs = field
    matched = rm.match_references(frame, np.ones(SHAPE, bool), refs, sky=SKY, gain=GAIN)
    psf = []
    for j, (r, m) in enumerate(zip(refs, matched, strict=True)):
        others = [o.values for i, o in enumerate(matched) if i != j]
        # Gaussian stars: Moffats of large β
        psf.append(rm.psf_matched(r, m, (_fwhm(FRAME[0]), 50.0),
                                  (_fwhm(REFERENCES[j][0]), 50.0), frame,
                                  rm.bright_pixels(others)))
    for p, (_s, scale, dy, dx, _g) in zip(psf, REFERENCES, strict=True):
        assert p.flux_scale == pytest.approx(1.0 / scale, rel=0.02)
        assert p.shift_px == pytest.approx((dx, dy), abs=0.05)
    # star peaks of the references' mean against the frame's truth
    level = np.sqrt(SKY / GAIN)
    peaks = (ndimage.maximum_filter(truth, 5) == truth) & (truth > 5 * level)
    peaks[:10], peaks[-10:], peaks[:, :10], peaks[:, -10:] = False, False, False, False
    ratio = {}
    for name, ms in (("free", matched), ("psf", psf)):
        mean = np.mean([m.values for m in ms], axis=0)
        ratio[name] = float(np.median(mean[peaks] / truth[peaks]))
    assert ratio["psf"] == pytest.approx(1.0, abs=0.03)
    assert ratio["free"] < ratio["psf"] - 0.02  # the fitted kernel smooths: ~4 % low here


def test_bright_pixels_take_the_sources_and_their_wings():
    img = np.zeros((64, 64))
    img[30:33, 30:33] = 100.0
    rng = np.random.default_rng(0)
    refs = [img + rng.normal(0, 1.0, img.shape) for _ in range(2)]
    refs[1][0, :] = np.nan  # an invalid row of one reference: the other's values there
    bright = rm.bright_pixels(refs, threshold=10.0, grow=2)
    core = np.zeros(img.shape, bool)
    core[30:33, 30:33] = True
    assert np.array_equal(bright, ndimage.binary_dilation(core, iterations=2))
    assert not rm.bright_pixels(refs, threshold=10.0, grow=0)[29, 31]


def test_stack_ceiling_fits_floor_and_noise(monkeypatch):
    """``MSE(n) = a + b / n`` is recovered exactly; no positive floor means no ceiling."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_reference_match as brm

    depths = [1, 2, 4, 8]
    mse = [3.0 + 40.0 / n for n in depths]
    c = brm.stack_ceiling(depths, mse, [0.1] * 4, mse_raw=48.0)
    assert c["floor"] == pytest.approx(3.0) and c["per_exposure"] == pytest.approx(40.0)
    assert c["ceiling"] == pytest.approx(4.0) and c["floor_fraction"] == pytest.approx(3 / 48)
    assert c["ceiling_se"] == pytest.approx(0.5 * 4.0 * c["floor_se"] / 3.0)
    none = brm.stack_ceiling(depths, [40.0 / n - 0.5 for n in depths], [0.1] * 4, 48.0)
    assert none["ceiling"] == math.inf


@pytest.mark.parametrize("variable", [1.0, 1.6])
def test_stack_floor_is_what_the_estimator_charges_the_truth(variable, monkeypatch):
    """Stacks of other exposures, matched to the frame: their fitted floor is the estimated
    MSE of the noiseless truth itself -- ~0 when the references show the frame's sky, and
    the references' difference when their stars are brighter than in the frame."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_reference_match as brm
    import bench_training_budget as tb

    rng = np.random.default_rng(11)
    stars = _scene(rng)
    truth = _render(stars, *FRAME)
    var_stars = stars.copy()
    var_stars[::7, 2] *= variable  # a seventh of the stars, brighter in the references
    refs = [_observe(rng, _render(var_stars, *p)) for p in REFERENCES]
    members = [_observe(rng, _render(stars, sig, sc, dy, dx, 0.0))
               for sig, sc, dy, dx in [(1.2, 1.0, 0.2, 0.1), (1.4, 0.7, -0.3, 0.2),
                                        (1.3, 1.3, 0.1, -0.35), (1.5, 0.9, -0.1, -0.2),
                                        (1.25, 1.1, 0.4, 0.3), (1.35, 0.8, -0.2, 0.45),
                                        (1.45, 1.2, 0.3, -0.15), (1.3, 1.0, -0.45, -0.3)]]
    image = _observe(rng, truth) + SKY
    good = np.ones(SHAPE, bool)
    sky = tb.frame_statistics(image, np.zeros(SHAPE, np.uint8)).sky
    matched = [m.values for m in rm.match_references(image - sky, good, refs, sky=sky,
                                                      gain=GAIN)]
    fr = tb.independent_frame("f", image, good, matched, ev.EvaluateConfig())
    fr.attrs["stack_members"] = [m.values for m in rm.match_references(
        image - sky, good, members, sky=sky, gain=GAIN)]
    depths = [1, 2, 4, 8]
    res = brm.score([fr], [float(np.sqrt(SKY / GAIN))], None, stack_depths=depths)
    sky_gain = [res["gains"][f"stack of {n}"]["sky"][0] for n in depths]
    assert sky_gain == sorted(sky_gain)
    if variable == 1.0:  # no floor: eight exposures have ~1/8 of one's noise variance
        assert sky_gain[-1] > 2.2 * sky_gain[0]
    # the noiseless truth, scored on the same pixels by the same estimator
    scored = tb.score_frame(brm.stacked_frame(fr, fr.attrs["stack_members"]),
                            {"truth": truth + SKY}).set_index(["kind", "pixel_class"])
    for cls in ("sky", "source"):
        c = res["ceiling"][cls]
        raw = scored.loc[("raw", cls), "mse"]
        floor_truth = scored.loc[("truth", cls), "mse"]
        se = scored.loc[("truth", cls), "mse_se"]
        assert c["per_exposure"] > 0
        if variable == 1.0:  # nothing to charge: both floors are noise around 0
            assert abs(c["floor"]) < 0.03 * raw and abs(floor_truth) < 3 * se + 0.02 * raw
        else:  # the references' brighter stars: both floors well above 0, and alike
            assert floor_truth > 0.02 * raw, cls
            assert c["floor"] == pytest.approx(floor_truth, rel=0.25), cls
            assert c["ceiling"] == pytest.approx(np.sqrt(raw / floor_truth), rel=0.15), cls
    table = brm.render({3: res})
    assert "stack of 8" in table and "highest gain the estimator credits" in table


def test_psf_kernel_between_elongated_psfs():
    """Exposures whose PSFs are elongated differently: the kernel between the elliptical
    models takes one to the other; round models of the same FWHMs leave the difference."""
    from pausdenoise.psf import elliptical_moffat_stamp

    h, n = rm.model_half_width(3, 4.0, 3.2), 41
    frame, ref = (4.0, 3.0, 0.35, 0.0), (3.2, 3.0, 0.1, -0.2)

    def convolve(kernel: np.ndarray, big: np.ndarray) -> np.ndarray:
        w = kernel.shape[0] // 2
        return sum(kernel[w + dy, w + dx] * big[h + dy:h + dy + n, h + dx:h + dx + n]
                   for dy in range(-w, w + 1) for dx in range(-w, w + 1))

    big = elliptical_moffat_stamp(*ref, n + 2 * h)
    want = elliptical_moffat_stamp(*frame, n)
    k = rm.psf_kernel(1.0, (0.0, 0.0), frame, ref, h)
    assert np.abs(convolve(k, big) - want).max() < 0.01 * want.max()  # 0.5 %
    round_ = rm.psf_kernel(1.0, (0.0, 0.0), frame[:2], ref[:2], h)
    assert np.abs(convolve(round_, big) - want).max() > 0.05 * want.max()  # 10 %
    # (FWHM, β, 0, 0) is the round model
    np.testing.assert_allclose(rm.psf_kernel(1.0, (0.2, 0.1), (4.0, 3.0, 0.0, 0.0),
                                             (3.0, 3.0, 0.0, 0.0), h),
                               rm.psf_kernel(1.0, (0.2, 0.1), (4.0, 3.0), (3.0, 3.0), h))
