"""Injection metrics on synthetic truth and photometry tables whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pausdenoise.inject.metrics import (
    ESTIMATORS,
    cross_fitted_transfer,
    injection_tables,
    summary_lines,
)

BANDS = ("NB455", "NB845")
SIG_RAW = 40.0  # raw aperture noise, ADU
SIG_CR = 30.0  # Cramér–Rao σ of the total flux, ADU


def make_tables(
    n_src: int = 700,
    n_exp: int = 3,
    *,
    seed: int = 1,
    bands=BANDS,
    den_shrink=1.0,
    mags=(17.0, 24.0),
):
    """Truth and photometry: every estimator unbiased with Gaussian noise of known σ.

    Aperture flux = 0.8 × total; raw aperture noise SIG_RAW (flux_err = SIG_RAW); denoised
    aperture = den_shrink(I) × F_aper + N(0, SIG_RAW/2) with the raw error; profile =
    F_total + N(0, SIG_CR) with error SIG_CR.
    """
    rng = np.random.default_rng(seed)
    i_auto = rng.uniform(*mags, n_src)
    src = pd.DataFrame({"ref_id": 1_000_000_000 + np.arange(n_src), "I_auto": i_auto})
    frames = pd.DataFrame(
        [
            {"band": b, "expnum": 1000 * j + e, "ccd": 1}
            for j, b in enumerate(bands)
            for e in range(n_exp)
        ]
    )
    t = src.merge(frames, how="cross")
    t["flux_true_adu"] = 400.0 * 10 ** (-0.4 * (t["I_auto"] - 24.0))
    t["mag_true"] = t["I_auto"]
    t["flux_true_aper_adu"] = 0.8 * t["flux_true_adu"]
    t["flux_cr_var_adu2"] = SIG_CR**2
    n = len(t)
    shrink = den_shrink(t["I_auto"].to_numpy()) if callable(den_shrink) else den_shrink
    fa = t["flux_true_aper_adu"].to_numpy()
    raw = t[["ref_id", "expnum", "ccd", "band", "I_auto"]].assign(
        kind="raw",
        flux=fa + rng.normal(0, SIG_RAW, n),
        flux_err=SIG_RAW,
        flags=0,
        flux_prof=t["flux_true_adu"].to_numpy() + rng.normal(0, SIG_CR, n),
        flux_prof_err=SIG_CR,
        flags_prof=0,
        psf_fwhm_px=4.0,
    )
    den = t[["ref_id", "expnum", "ccd", "band", "I_auto"]].assign(
        kind="denoised",
        flux=shrink * fa + rng.normal(0, SIG_RAW / 2, n),
        flux_err=SIG_RAW,
        flags=0,
        flux_prof=np.nan,
        flux_prof_err=np.nan,
        flags_prof=1,
        psf_fwhm_px=4.0,
    )
    return pd.concat([raw, den], ignore_index=True), t


def _rows(tab: pd.DataFrame, est: str, band: str = "all") -> pd.DataFrame:
    return tab[(tab["estimator"] == est) & (tab["band"] == band)].reset_index(drop=True)


@pytest.fixture(scope="module")
def unbiased():
    phot, truth = make_tables()
    return injection_tables(phot, truth, n_boot=300, seed=0)


def test_unbiased_estimators_cover_zero_with_unit_pulls(unbiased):
    bias = unbiased["bias"]
    for est in ("raw_aperture", "raw_profile", "denoised_aperture"):
        r = _rows(bias, est)
        assert len(r) == 7 and (r["n"] > 400).all()
        covers = (r["ci_lo"] <= 0) & (r["ci_hi"] >= 0)
        assert covers.sum() >= 6, (est, r[["bin", "median_rel_bias", "ci_lo", "ci_hi"]])
        assert (r["median_rel_bias"].abs() < 0.03).all()
    for est in ("raw_aperture", "raw_profile"):
        r = _rows(bias, est)
        assert np.allclose(r["pull_sigma68"], 1.0, atol=0.12)
        assert np.allclose(r["pull_sigma68_err"], 0.96 / np.sqrt(r["n"]), rtol=0.15)
        assert ((r["pull_ci_lo"] < r["pull_sigma68"]) & (r["pull_ci_hi"] > r["pull_sigma68"])).all()
    # per band, the same (half the rows)
    r = _rows(bias, "raw_aperture", "NB455")
    assert np.allclose(r["pull_sigma68"], 1.0, atol=0.15)


def test_scatter_in_raw_units_and_cramer_rao(unbiased):
    bias = unbiased["bias"]
    raw, den = _rows(bias, "raw_aperture"), _rows(bias, "denoised_aperture")
    prof = _rows(bias, "raw_profile")
    assert np.allclose(raw["scatter_vs_raw"], 1.0, atol=0.12)
    # denoised noise is half the raw one: what denoising buys, in raw-error units
    assert np.allclose(den["scatter_vs_raw"], 0.5, atol=0.06)
    # with the raw errors the denoised pulls are too narrow by the same factor
    assert np.allclose(den["pull_sigma68"], 0.5, atol=0.06)
    assert np.allclose(prof["scatter_vs_raw"], SIG_CR / SIG_RAW, atol=0.08)
    assert np.allclose(prof["cr_ratio"], 1.0, atol=0.12)
    assert np.allclose(prof["cr_pull_sigma68"], 1.0, atol=0.12)
    assert np.allclose(prof["cr_vs_raw"], SIG_CR / SIG_RAW)
    assert raw["cr_ratio"].isna().all() and den["cr_pull_sigma68"].isna().all()


def test_bootstrap_interval_has_the_width_of_the_median_error():
    phot, truth = make_tables(n_src=1500, n_exp=1, bands=("NB455",), mags=(20.0, 21.0))
    bias = injection_tables(phot, truth, mag_bins=(20, 21), n_boot=1000)["bias"]
    r = _rows(bias, "raw_profile").iloc[0]
    f = truth["flux_true_adu"].to_numpy()
    # σ of a median of n Gaussian values: √(π/2)·σ/√n, σ of the relative error ≈ SIG_CR/F
    sd = np.sqrt(np.pi / 2) * np.median(SIG_CR / f) / np.sqrt(r["n"])
    assert (r["ci_hi"] - r["ci_lo"]) == pytest.approx(2 * 1.96 * sd, rel=0.2)


def test_shrinkage_in_one_bin_is_found():
    phot, truth = make_tables(den_shrink=lambda i: np.where((i >= 20) & (i < 21), 0.9, 1.0))
    bias = injection_tables(phot, truth, n_boot=300)["bias"]
    r = _rows(bias, "denoised_aperture").set_index("bin")
    assert r.loc["20-21", "median_rel_bias"] == pytest.approx(-0.10, abs=0.01)
    assert r.loc["20-21", "ci_hi"] < 0
    others = r.drop(index="20-21")
    assert ((others["ci_lo"] <= 0.005) & (others["ci_hi"] >= -0.005)).all()
    for band in BANDS:
        rb = _rows(bias, "denoised_aperture", band).set_index("bin")
        assert rb.loc["20-21", "ci_hi"] < 0


def test_flagged_rows_are_counted_not_used():
    phot, truth = make_tables(n_src=300)
    raw = phot["kind"] == "raw"
    bad = raw & (np.arange(len(phot)) % 5 == 0)
    phot.loc[bad, "flux"] *= 10.0  # would be a huge bias if used
    phot.loc[bad, "flags"] = 4
    prof_bad = raw & (np.arange(len(phot)) % 7 == 0)
    phot.loc[prof_bad, "flux_prof"] = -1e6
    phot.loc[prof_bad, "flags_prof"] = 2
    bias = injection_tables(phot, truth, n_boot=100)["bias"]
    r = _rows(bias, "raw_aperture")
    assert r["n_flagged"].sum() == bad.sum()
    assert r["n"].sum() + r["n_flagged"].sum() == raw.sum()
    assert (r["median_rel_bias"].abs() < 0.03).all()
    p = _rows(bias, "raw_profile")
    assert p["n_flagged"].sum() == prof_bad.sum()
    assert (p["median_rel_bias"].abs() < 0.03).all()
    # the aperture flags do not touch the profile estimator and vice versa
    assert p["n"].sum() == raw.sum() - prof_bad.sum()


def test_transfer_correction_removes_a_known_shrinkage():
    phot, truth = make_tables(den_shrink=0.8)
    tabs = injection_tables(phot, truth, n_boot=300)
    tr = tabs["transfer"]
    t_all = tr[tr["band"] == "all"]
    assert np.allclose(t_all["transfer"], 0.8, atol=0.01)
    assert ((t_all["ci_lo"] <= 0.8) & (t_all["ci_hi"] >= 0.8)).sum() >= 6
    assert np.allclose(t_all["transfer_even"], 0.8, atol=0.015)
    assert np.allclose(t_all["transfer_odd"], 0.8, atol=0.015)
    den = _rows(tabs["bias"], "denoised_aperture")
    cor = _rows(tabs["bias"], "denoised_aperture_corrected")
    assert np.allclose(den["median_rel_bias"], -0.2, atol=0.01)
    assert (cor["median_rel_bias"].abs() < 0.01).all()
    assert ((cor["ci_lo"] <= 0) & (cor["ci_hi"] >= 0)).sum() >= 6
    # flux and error divided alike: the pull is the noise over the raw error (0.5), and the
    # scatter in raw-error units grows by 1/T (what the denoising buys once corrected)
    assert np.allclose(cor["pull_sigma68"], 0.5, atol=0.06)
    assert np.allclose(cor["scatter_vs_raw"], 0.5 / 0.8, atol=0.07)


def test_cross_fitting_uses_the_other_half():
    ref = np.arange(40)
    ratio = np.where(ref % 2 == 0, 0.8, 0.9)
    band = np.where(ref < 20, "A", "B")
    t = cross_fitted_transfer(ratio, ref, np.zeros(40, int), band)
    assert np.allclose(t[ref % 2 == 0], 0.9) and np.allclose(t[ref % 2 == 1], 0.8)
    # a (band, bin) cell with too few training rows falls back to the bin over all bands
    ratio2 = ratio.copy()
    ratio2[(band == "B") & (ref % 2 == 1)] = 0.5
    ratio2[(band == "B") & (ref % 2 == 1) & (ref > 24)] = np.nan  # 3 left in cell (B, odd)
    t2 = cross_fitted_transfer(ratio2, ref, np.zeros(40, int), band, min_rows=5)
    train = ratio2[(ref % 2 == 1) & np.isfinite(ratio2)]
    assert np.allclose(t2[(band == "B") & (ref % 2 == 0)], np.median(train))
    assert np.allclose(t2[(band == "A") & (ref % 2 == 0)], 0.9)
    # rows outside the bins, and halves with nothing to learn from, get NaN
    t3 = cross_fitted_transfer(ratio, ref, np.where(ref % 2 == 0, 0, -1), band)
    assert np.isnan(t3).all()


def test_colour_bias_of_a_known_offset_is_recovered():
    phot, truth = make_tables(n_src=400, mags=(17.0, 22.0))
    nb455 = (phot["kind"] == "raw") & (phot["band"] == "NB455")
    phot.loc[nb455, "flux"] *= 10 ** (-0.4 * 0.1)  # 0.1 mag too faint in NB455
    col = injection_tables(phot, truth, n_boot=300)["colour"]
    r = col[col["estimator"] == "raw_aperture"].set_index("bin")
    filled = r[r["n"] > 0]
    assert list(filled.index) == ["17-18", "18-19", "19-20", "20-21", "21-22"]
    assert np.allclose(filled["median_colour_bias"], 0.1, atol=0.01)
    assert ((filled["ci_lo"] <= 0.1) & (filled["ci_hi"] >= 0.1)).sum() >= 4
    assert (filled["ci_lo"] > 0.05).all()
    assert (filled["colour"] == "NB455-NB845").all()
    p = col[(col["estimator"] == "raw_profile") & (col["n"] > 0)]
    assert (p["median_colour_bias"].abs() < 0.01).all()
    assert (filled["n"] + filled["n_undefined"]).sum() == 400


def _noisy_colour_tables(n_src: int, sigma: dict[str, float]):
    """Raw aperture fluxes F(1 + N(0, σ_band)) with error σ_band·F in every frame of the band
    (3 per band, I 17–18): unbiased, but a noisy band's mean ratio is sometimes ≤ 0."""
    phot, truth = make_tables(n_src=n_src, mags=(17.0, 18.0), seed=5)
    rng = np.random.default_rng(11)
    raw = (phot["kind"] == "raw").to_numpy()
    fa = 0.8 * 400.0 * 10 ** (-0.4 * (phot["I_auto"].to_numpy() - 24.0))
    s = phot["band"].map(sigma).to_numpy(float)
    phot.loc[raw, "flux"] = (fa * (1 + rng.normal(0, 1, len(phot)) * s))[raw]
    phot.loc[raw, "flux_err"] = (s * fa)[raw]
    return phot, truth


def test_colour_counts_sources_with_a_negative_mean_flux_as_infinitely_faint():
    """A source whose mean flux ratio in a band is ≤ 0 is ranked as infinitely faint there,
    not left out: leaving the ~7 % of NB455 means ≤ 0 out would move the median colour by
    about −0.06 mag on these unbiased fluxes; counted, it stays at 0."""
    phot, truth = _noisy_colour_tables(8000, {"NB455": 1.2, "NB845": 0.3})
    col = injection_tables(phot, truth, n_boot=100)["colour"]
    r = col[(col["estimator"] == "raw_aperture") & (col["bin"] == "17-18")].iloc[0]
    # the same median by hand: the inverse-variance mean over a band's frames is the plain
    # mean here (equal errors); −2.5 log10 of a mean ≤ 0 is +∞
    raw = phot[phot["kind"] == "raw"].merge(truth[["ref_id", "expnum", "ccd"]])
    ratio = (raw.assign(r=raw["flux"] / (0.8 * 400.0 * 10 ** (-0.4 * (raw["I_auto"] - 24.0))))
             .groupby(["ref_id", "band"])["r"].mean().unstack("band"))
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = (-2.5 * np.log10(ratio.where(ratio > 0))).fillna(np.inf)
    both_out = (ratio <= 0).all(axis=1)
    colour = (mag["NB455"] - mag["NB845"])[~both_out]
    assert (ratio["NB455"] <= 0).mean() > 0.04 and both_out.sum() == r["n_undefined"]
    assert r["n"] == len(colour) and r["n"] + r["n_undefined"] == 8000
    assert r["median_colour_bias"] == pytest.approx(np.median(colour), abs=1e-9)
    assert abs(r["median_colour_bias"]) < 0.03 < abs(np.median(colour[np.isfinite(colour)]))
    assert r["ci_lo"] <= 0 <= r["ci_hi"]


def test_band_median_colour_is_the_colour_of_the_median_ratios():
    """Sources measured in one band each (injections drawn per frame): the colour bias is
    −2.5 log10 of the ratio of the two bands' median flux ratios, negatives included; when
    more than half of a band's sources have a mean ratio ≤ 0 it is ±∞."""
    phot, truth = _noisy_colour_tables(4000, {"NB455": 1.2, "NB845": 0.3})
    first = phot["ref_id"] < phot["ref_id"].min() + 2000
    keep = (first & (phot["band"] == "NB455")) | (~first & (phot["band"] == "NB845"))
    col = injection_tables(phot[keep], truth, n_boot=50)["colour"]
    r = col[(col["estimator"] == "raw_aperture") & (col["bin"] == "17-18")].iloc[0]
    assert r["method"] == "band medians"
    raw = phot[keep & (phot["kind"] == "raw")]
    ratio = (raw.assign(r=raw["flux"] / (0.8 * 400.0 * 10 ** (-0.4 * (raw["I_auto"] - 24.0))))
             .groupby(["ref_id", "band"])["r"].mean())
    med = ratio.groupby("band").median()
    assert r["median_colour_bias"] == pytest.approx(-2.5 * np.log10(med["NB455"] / med["NB845"]))
    faint, truth2 = _noisy_colour_tables(400, {"NB455": 20.0, "NB845": 0.3})
    faint.loc[faint["band"] == "NB455", "flux"] -= 1e9  # every NB455 mean ≤ 0
    col = injection_tables(faint, truth2, n_boot=20)["colour"]
    r = col[(col["estimator"] == "raw_aperture") & (col["bin"] == "17-18")].iloc[0]
    assert r["median_colour_bias"] == np.inf and r["n"] == 400


def test_response_cancels_the_noise_of_the_place_and_finds_a_scale_error():
    """With the photometry before injection, (F̂ − F̂_null − F)/F keeps only the galaxy's own
    light: a 1 % scale error of the profile flux, buried in the flux bias's noise at I 22–24,
    comes out of the response table with a tight interval; an offset common to F̂ and
    F̂_null (the background of the place) cancels; flags of either row count as flagged."""
    phot, truth = make_tables(n_src=600, mags=(22.0, 24.0), seed=7)
    rng = np.random.default_rng(8)
    raw = (phot["kind"] == "raw").to_numpy()
    place = rng.normal(0, 20 * SIG_RAW, len(phot))  # the noise and confusion of each place
    null = phot.copy()
    null["flux"] = np.where(raw, place, rng.normal(0, SIG_RAW / 2, len(phot)))
    null["flux_prof"] = place
    key = phot.merge(truth, on=["ref_id", "expnum", "ccd"], how="left")
    own = rng.normal(0, 0.002, len(phot)) * key["flux_true_adu"].to_numpy()  # Poisson
    phot["flux"] = np.where(raw, 0.8 * key["flux_true_adu"] + place + own, phot["flux"])
    phot["flux_prof"] = 0.99 * key["flux_true_adu"] + place + own
    phot.loc[raw & (phot["ref_id"] % 50 == 0).to_numpy(), "flags"] = 4
    null.loc[raw & (phot["ref_id"] % 50 == 1).to_numpy(), "flags_prof"] = 2
    tabs = injection_tables(phot, truth, mag_bins=(22, 23, 24), n_boot=200, null=null)
    resp = tabs["response"]
    assert set(resp["estimator"]) == {"raw_aperture", "denoised_aperture", "raw_profile"}
    r = _rows(resp, "raw_profile").set_index("bin")
    assert np.allclose(r["median_response_bias"], -0.01, atol=0.001)
    assert ((r["ci_hi"] - r["ci_lo"]) < 0.002).all() and (r["ci_hi"] < -0.008).all()
    a = _rows(resp, "raw_aperture")
    assert (a["median_response_bias"].abs() < 0.001).all()
    assert a["n_flagged"].sum() == 12 * 6 and r["n_flagged"].sum() == 12 * 6
    # the flux bias of the same rows cannot see the 1 %: its noise is far larger
    b = _rows(tabs["bias"], "raw_profile")
    assert ((b["ci_hi"] - b["ci_lo"]) > 0.05).all()
    assert "response" not in injection_tables(phot, truth, mag_bins=(22, 23, 24), n_boot=0)
    # the place's own flux in units of its error: a skewed (confusion-like) null noise has
    # its mean above its median
    null["flux"] = np.where(raw, rng.exponential(SIG_RAW, len(phot)) - SIG_RAW, null["flux"])
    resp = injection_tables(phot, truth, mag_bins=(22, 23, 24), n_boot=0, null=null)["response"]
    a = _rows(resp, "raw_aperture")
    assert np.allclose(a["null_pull_median"], np.log(2) - 1, atol=0.08)
    assert np.allclose(a["null_pull_mean"], 0.0, atol=0.08)


def test_neighbours_empty_bins_and_missing_kinds():
    phot, truth = make_tables(n_src=60, mags=(19.0, 20.0))
    neighbour = phot.iloc[:10].assign(ref_id=np.arange(5, 15), flux=1e9)  # not injected: ignored
    raw_only = pd.concat([phot[phot["kind"] == "raw"], neighbour], ignore_index=True)
    tabs = injection_tables(raw_only, truth, mag_bins=(17, 18, 19, 20, 21), n_boot=50)
    bias = tabs["bias"]
    assert set(bias["estimator"]) == set(ESTIMATORS)
    assert set(bias["band"]) == {*BANDS, "all"}
    r = _rows(bias, "raw_aperture").set_index("bin")
    assert r.loc["19-20", "n"] == 60 * 6 and abs(r.loc["19-20", "median_rel_bias"]) < 0.01
    empty = bias[bias["bin"] != "19-20"]
    assert (empty["n"] == 0).all() and empty["median_rel_bias"].isna().all()
    assert empty["ci_lo"].isna().all() and empty["pull_sigma68"].isna().all()
    assert (_rows(bias, "denoised_aperture")["n"] == 0).all()
    assert (_rows(bias, "denoised_aperture_corrected")["n"] == 0).all()
    assert (tabs["transfer"]["n"] == 0).all()
    # no photometry at all, and colour bands that were not injected
    none = injection_tables(phot.iloc[:0], truth, n_boot=10, colour_bands=("NB455", "X"))
    assert (none["bias"]["n"] == 0).all() and (none["colour"]["n"] == 0).all()
    assert len(none["colour"]) == len(ESTIMATORS) * 7


def test_summary_lines_name_the_worst_bin(unbiased):
    lines = summary_lines(unbiased)
    assert len(lines) >= len(ESTIMATORS)
    for est in ESTIMATORS:
        assert any(line.startswith(f"{est}: worst |median bias|") for line in lines)
    assert any("transfer" in line for line in lines)
    colour = [line for line in lines if "worst colour bias" in line]
    assert len(colour) == len(ESTIMATORS)
    assert all("of the flux scales" in line and "95 % CI" in line for line in colour)


@pytest.mark.parametrize("cluster_size", [1, 7])
def test_windowed_cluster_bootstrap_equals_explicit_resampling(cluster_size):
    from pausdenoise.inject.metrics import _boot_quantiles  # the kernel of every interval

    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(size=700), rng.standard_cauchy(size=50)])
    clusters = np.arange(values.size) // cluster_size
    got = _boot_quantiles(values, clusters, (0.5, 0.1587), 200, np.random.default_rng(9))
    # the same draws, resampled explicitly (one chunk: the draws come in the same order)
    x = np.sort(values)
    cl = (np.arange(values.size) // cluster_size)[np.argsort(values, kind="stable")]
    n_c = cl.max() + 1
    draws = np.random.default_rng(9).integers(0, n_c, size=(200, n_c))
    for k in range(200):
        rows = np.concatenate([np.flatnonzero(cl == c) for c in draws[k]])
        sample = np.sort(x[rows])
        assert got[k, 0] == pytest.approx(np.median(sample))
        t = 0.1587 * sample.size
        lo, hi = int(np.ceil(t)) - 1, min(int(np.floor(t)), sample.size - 1)
        assert got[k, 1] == pytest.approx(0.5 * (sample[lo] + sample[hi]))


def test_colour_bias_from_band_medians_when_no_source_has_both_bands():
    phot, truth = make_tables(n_src=800, mags=(17.0, 22.0))
    # injections drawn per frame: each source is seen in one band only
    src_band = np.where(truth["ref_id"] % 2 == 0, "NB455", "NB845")
    keep_truth = truth["band"].to_numpy() == src_band[np.arange(len(truth))]
    truth = truth[keep_truth]
    phot = phot.merge(truth[["ref_id", "expnum", "ccd"]], on=["ref_id", "expnum", "ccd"])
    nb455 = (phot["kind"] == "raw") & (phot["band"] == "NB455")
    phot.loc[nb455, "flux"] *= 10 ** (-0.4 * 0.1)
    col = injection_tables(phot, truth, n_boot=300)["colour"]
    r = col[(col["estimator"] == "raw_aperture") & (col["n"] > 0)]
    assert len(r) == 5 and (r["method"] == "band medians").all()
    assert np.allclose(r["median_colour_bias"], 0.1, atol=0.02)
    assert ((r["ci_lo"] <= 0.1) & (r["ci_hi"] >= 0.1)).sum() >= 4
    p = col[(col["estimator"] == "raw_profile") & (col["n"] > 0)]
    assert (p["median_colour_bias"].abs() < 0.02).all()


def test_one_band_gives_an_empty_colour_table():
    phot, truth = make_tables(n_src=100, n_exp=2, bands=("I",))
    col = injection_tables(phot, truth, n_boot=20, colour_bands=("I", "I"))["colour"]
    assert (col["n"] == 0).all() and col["median_colour_bias"].isna().all()


def test_scale_colour_finds_a_band_scale_error_with_a_narrower_interval():
    """A 4 % flux-scale error of the profile flux in NB455 only: the colour of the bands'
    flux scales comes out at −2.5 log10 1.04 within its interval, with an interval
    narrower than the median per-source colour's (weights F²/V use the truth's
    Cramér–Rao variance); an unbiased estimator's interval covers 0."""
    phot, truth = make_tables(n_src=3000, n_exp=2, mags=(22.0, 24.0), seed=5)
    raw455 = ((phot["kind"] == "raw") & (phot["band"] == "NB455")).to_numpy()
    f_true = 400.0 * 10 ** (-0.4 * (phot["I_auto"].to_numpy() - 24.0))
    phot.loc[raw455, "flux_prof"] += 0.04 * f_true[raw455]
    col = injection_tables(phot, truth, mag_bins=(22, 23, 24), n_boot=400, seed=2)["colour"]
    for lab in ("22-23", "23-24"):
        prof = col[(col["estimator"] == "raw_profile") & (col["bin"] == lab)].iloc[0]
        want = -2.5 * np.log10(1.04)
        assert prof["scale_ci_lo"] <= want <= prof["scale_ci_hi"]
        assert prof["scale_colour_bias"] == pytest.approx(want, abs=0.01)
        assert (prof["scale_ci_hi"] - prof["scale_ci_lo"]) < (prof["ci_hi"] - prof["ci_lo"])
        ap = col[(col["estimator"] == "raw_aperture") & (col["bin"] == lab)].iloc[0]
        assert ap["scale_ci_lo"] <= 0.0 <= ap["scale_ci_hi"]
    one = injection_tables(*make_tables(n_src=200, bands=("NB455",)), n_boot=10)["colour"]
    assert one["scale_colour_bias"].isna().all()


def test_flux_scale_bias_finds_a_band_scale_error_with_a_narrower_interval():
    """A 2 % scale error of the profile flux in NB455 (S/N 13–33): the flux scale k̂ − 1
    comes out at +2 % with an interval that excludes 0 and is narrower than the median's;
    NB845 and the unbiased aperture cover 0."""
    phot, truth = make_tables(n_src=4000, n_exp=1, mags=(23.0, 24.0), seed=7)
    raw455 = ((phot["kind"] == "raw") & (phot["band"] == "NB455")).to_numpy()
    f_true = 400.0 * 10 ** (-0.4 * (phot["I_auto"].to_numpy() - 24.0))
    phot.loc[raw455, "flux_prof"] += 0.02 * f_true[raw455]
    bias = injection_tables(phot, truth, mag_bins=(23, 24), n_boot=400, seed=3)["bias"]
    r = _rows(bias, "raw_profile", "NB455").iloc[0]
    assert r["scale_bias"] == pytest.approx(0.02, abs=0.006)
    assert r["scale_ci_lo"] > 0.0 and r["scale_ci_lo"] <= 0.02 <= r["scale_ci_hi"]
    assert (r["scale_ci_hi"] - r["scale_ci_lo"]) < (r["ci_hi"] - r["ci_lo"])
    for est, band in (("raw_profile", "NB845"), ("raw_aperture", "all")):
        r = _rows(bias, est, band).iloc[0]
        assert r["scale_ci_lo"] <= 0.0 <= r["scale_ci_hi"]
