"""Tests of pausdenoise.compare: pairs, Δf, σ68, summaries, the denoised error model and
the comparison with truth, on synthetic photometry tables with known statistics."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from pausdenoise.compare import (
    HASH_COLUMN,
    ErrorModel,
    bottom_k_pairs,
    calibrate,
    canonical_pairs,
    cross_validate_error_model,
    delta_f,
    df_arrays,
    exposure_folds,
    fit_error_model,
    make_pairs,
    pair_deltas,
    pair_hash,
    pairs_per_bin,
    sigma68,
    sigma68_stderr,
    split_exposures,
    summarise,
    truth_comparison,
    validate_error_model,
    widen,
    zero_point_errors,
)

#: true denoised-scatter / raw-error ratio per 1-mag bin 17-18 … 22-23
TRUE_K = np.array([0.50, 0.55, 0.60, 0.70, 0.80, 0.90])
DEN_BIAS = 0.01  # denoised fluxes 1 % high


def synthetic_table(n_src=6000, n_exp=12, seed=0, bands=("NB455",), band_k=None):
    """A long photometry table (raw + denoised) with known truth.

    Raw fluxes scatter by exactly their errors; denoised fluxes scatter by TRUE_K × the raw
    error (per I_auto bin) around (1 + DEN_BIAS) × truth, and their own reported errors
    are the raw ones (what a pipeline that ignores denoising would report). ``band_k``
    (band -> factor) multiplies TRUE_K per band; each band has its own ``n_exp`` exposures.
    """
    rng = np.random.default_rng(seed)
    rows = []
    exps = np.arange(100, 100 + n_exp)
    mags = rng.uniform(17.0, 23.0, n_src)
    ftrue = 10 ** (-0.4 * (mags - 23.9))
    sig = np.sqrt(0.01 * ftrue + 0.5**2)
    k = TRUE_K[np.clip(np.floor(mags - 17).astype(int), 0, 5)]
    for ib, band in enumerate(bands):
        kb = k * (band_k or {}).get(band, 1.0)
        for e in exps + ib * n_exp:
            zp = rng.uniform(0.8, 1.2)
            f_raw = ftrue + rng.normal(0, sig)
            f_den = ftrue * (1 + DEN_BIAS) + rng.normal(0, kb * sig)
            for kind, f in (("raw", f_raw), ("denoised", f_den)):
                rows.append(
                    pd.DataFrame(
                        {
                            "ref_id": np.arange(n_src, dtype=np.int64),
                            "expnum": np.int64(e),
                            "ccd": np.int64(1 + e % 3),
                            "band": band,
                            "kind": kind,
                            "I_auto": mags,
                            "flux": f / zp,
                            "flux_err": sig / zp,
                            "zp": zp,
                            "zp_err": 0.0,
                            "flux_cal": f,
                            "flux_cal_err": sig,
                            "flags": np.zeros(n_src, np.int32),
                        }
                    )
                )
    table = pd.concat(rows, ignore_index=True)
    truth = (
        table[table.kind == "raw"][["ref_id", "expnum", "band"]]
        .assign(flux_true_cal=lambda d: ftrue[d.ref_id.to_numpy()])
        .reset_index(drop=True)
    )
    return table, truth


@pytest.fixture(scope="module")
def synth():
    return synthetic_table()


@pytest.fixture(scope="module")
def synth_pairs(synth):
    return make_pairs(synth[0])


# ----------------------------------------------------------------------------- basics


def test_sigma68_of_standard_normal():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 200_000)
    assert abs(sigma68(x) - 1) < 0.01
    assert abs(sigma68(3 * x + 5) - 3) < 0.03
    assert np.isnan(sigma68([]))
    assert sigma68(np.r_[x[:1000], np.nan, np.inf]) == sigma68(x[:1000])
    assert 0.045 < float(sigma68_stderr(400)) < 0.05


def test_delta_f_formula():
    p = pd.DataFrame(
        {
            "f_raw_1": [10.0],
            "f_raw_2": [7.0],
            "e_raw_1": [3.0],
            "e_raw_2": [4.0],
            "f_den_1": [9.0],
            "f_den_2": [8.0],
            "e_den_1": [1.0],
            "e_den_2": [1.0],
        }
    )
    assert delta_f(p, "raw")[0] == pytest.approx(3.0 / 5.0)
    assert delta_f(p, "denoised", errors="raw")[0] == pytest.approx(1.0 / 5.0)
    assert delta_f(p, "denoised")[0] == pytest.approx(1.0 / np.sqrt(2))
    assert delta_f(p, "raw", scale=0.5)[0] == pytest.approx(6.0 / 5.0)


def test_calibrate_formula_and_new_zeropoints():
    t = pd.DataFrame(
        {
            "expnum": [1, 2],
            "ccd": [1, 1],
            "flux": [100.0, -4.0],
            "flux_err": [10.0, 2.0],
            "zp": [2.0, 3.0],
            "zp_err": [0.1, 0.2],
        }
    )
    c = calibrate(t)
    np.testing.assert_allclose(c.flux_cal, [200.0, -12.0])
    s = np.sqrt(np.array([100 * 0.01 + 100 * 4 + 1e4 * 0.01, 4 * 0.04 + 4 * 9 + 16 * 0.04]))
    np.testing.assert_allclose(c.flux_cal_err, s)
    c2 = calibrate(t, pd.DataFrame({"expnum": [1, 2], "zp": [1.0, 1.0], "zp_err": [0.0, 0.0]}))
    np.testing.assert_allclose(c2.flux_cal, t.flux)
    np.testing.assert_allclose(c2.flux_cal_err, t.flux_err)


# ----------------------------------------------------------------------------- pairs


def _random_observations(seed=3):
    rng = np.random.default_rng(seed)
    rows = []
    for rid in range(60):
        for band in ("NB455", "NB465"):
            n = int(rng.integers(0, 7))
            for e in rng.choice(np.arange(50), size=n, replace=False):
                for kind in ("raw", "denoised"):
                    rows.append((rid, int(e), 4, band, kind, 20.0, 1.0, 0.1, 0))
    return pd.DataFrame(
        rows,
        columns=[
            "ref_id",
            "expnum",
            "ccd",
            "band",
            "kind",
            "I_auto",
            "flux_cal",
            "flux_cal_err",
            "flags",
        ],
    )


def test_pair_count_and_uniqueness():
    t = _random_observations()
    pairs = make_pairs(t)
    n = t[t.kind == "raw"].groupby(["ref_id", "band"]).size()
    assert len(pairs) == int((n * (n - 1) // 2).sum()) > 100
    assert (pairs.expnum_1 < pairs.expnum_2).all()
    key = pairs[["ref_id", "band", "expnum_1", "expnum_2"]]
    assert not key.duplicated().any()
    for c in ("f_raw_1", "e_raw_2", "f_den_1", "e_den_2", "I_auto", "ccd_1"):
        assert c in pairs.columns


def test_flagged_measurements_leave_pairs():
    t = _random_observations()
    first = t.index[(t.kind == "denoised")][0]
    rid, e, band = t.loc[first, ["ref_id", "expnum", "band"]]
    t.loc[first, "flags"] = 4
    pairs = make_pairs(t)
    bad = (
        (pairs.ref_id == rid)
        & (pairs.band == band)
        & ((pairs.expnum_1 == e) | (pairs.expnum_2 == e))
    )
    assert not bad.any()
    assert len(make_pairs(t, exclude_flags=False)) > len(pairs)


def test_pairs_on_dask_dataframe_match_pandas():
    dd = pytest.importorskip("dask.dataframe")
    import dask

    t = _random_observations()
    lazy = make_pairs(dd.from_pandas(t, npartitions=3))
    with dask.config.set(scheduler="synchronous"):
        got = lazy.compute()
    key = ["ref_id", "band", "expnum_1", "expnum_2"]
    want = make_pairs(t).sort_values(key).reset_index(drop=True)
    got = got.sort_values(key).reset_index(drop=True)[want.columns]
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    s_lazy = summarise(lazy)
    assert s_lazy.n_pairs.iloc[0] == len(want)


# ----------------------------------------------------------------------------- summaries


def test_summarise_recovers_known_scatter_and_bias(synth, synth_pairs):
    s = summarise(synth_pairs)
    assert list(s.bin) == ["all", "17-18", "18-19", "19-20", "20-21", "21-22", "22-23"]
    assert s.n_pairs.iloc[0] == s.n_pairs.iloc[1:].sum() == len(synth_pairs)
    per_bin = s.iloc[1:]
    np.testing.assert_allclose(per_bin.sigma68_raw, 1.0, atol=0.06)
    np.testing.assert_allclose(per_bin.sigma68_den_rawerr, TRUE_K, atol=0.06)
    # bias: denoised/raw median ratio ≈ 1.01 where S/N is high
    np.testing.assert_allclose(per_bin.median_ratio_den_raw.iloc[:3], 1 + DEN_BIAS, atol=0.004)
    arrays = df_arrays(synth_pairs)
    assert set(arrays) == {"raw", "denoised_rawerr"}
    assert arrays["raw"].size == len(synth_pairs)


def test_error_model_validated_on_held_out_exposures(synth, synth_pairs):
    table, _ = synth
    fit_set = split_exposures(table.expnum, fraction=0.5, seed=4)
    assert len(fit_set) == 6
    model = fit_error_model(synth_pairs, fit_set)
    # the fitted scale is the true denoised/raw scatter ratio
    # (open-ended bins below 17 and above 23 hold no source here)
    np.testing.assert_allclose(model.scale[1:-1], TRUE_K, atol=0.06)
    assert np.isnan(model.scale[[0, -1]]).all() and model.band_factor == {}
    val = validate_error_model(synth_pairs, model)
    per_bin = val.iloc[1:]
    assert (per_bin.n_pairs >= 400).all()
    # held-out pairs use neither fit exposure
    held = synth_pairs[~synth_pairs.expnum_1.isin(fit_set) & ~synth_pairs.expnum_2.isin(fit_set)]
    assert val.n_pairs.iloc[0] == len(held)
    np.testing.assert_allclose(per_bin.sigma68_den_model, 1.0, atol=0.05)
    assert per_bin.passed.all()
    # without the model the same held-out pairs fail (raw errors overstate by 1/k)
    no_model = fit_error_model(
        synth_pairs.assign(f_den_1=synth_pairs.f_raw_1, f_den_2=synth_pairs.f_raw_2), fit_set
    )
    np.testing.assert_allclose(no_model.scale[1:-1], 1.0, atol=0.06)
    assert not validate_error_model(synth_pairs, no_model).iloc[1:4].passed.any()
    s = summarise(synth_pairs, model=model)
    np.testing.assert_allclose(s.sigma68_den_model.iloc[1:], 1.0, atol=0.05)
    assert "denoised_model" in df_arrays(synth_pairs, model)
    assert list(model.to_frame().bin) == ["<17", *[f"{a}-{a + 1}" for a in range(17, 23)], ">=23"]


def test_truth_comparison(synth):
    table, truth = synth
    res = truth_comparison(table, truth).set_index(["kind", "bin"])
    bright = ["17-18", "18-19", "19-20"]
    np.testing.assert_allclose(res.loc[("raw", "all"), "bias_median"], 0.0, atol=0.003)
    for b in bright:
        assert res.loc[("denoised", b), "bias_median"] == pytest.approx(DEN_BIAS, abs=0.003)
        assert res.loc[("raw", b), "pull_sigma68"] == pytest.approx(1.0, abs=0.05)
    assert res.loc[("denoised", "all"), "n"] == len(truth)
    with pytest.raises(KeyError, match="flux_true_cal"):
        truth_comparison(table, truth.drop(columns=["flux_true_cal"]))


def test_widen_requires_a_kind():
    t = _random_observations()
    w = widen(t[t.kind == "raw"])
    assert "f_raw" in w.columns and "f_den" not in w.columns
    s = summarise(make_pairs(t[t.kind == "raw"]))
    assert np.isnan(s.sigma68_den_rawerr).all()


def test_unfitted_bins_take_the_nearest_fitted_factor():
    from pausdenoise.compare import ErrorModel

    model = ErrorModel(
        bins=np.array([17.0, 18.0, 19.0, 20.0, 21.0]),
        scale=np.array([np.nan, 0.9, np.nan, 0.4]),
        n_pairs=np.array([3, 80, 4, 500]),
        global_scale=0.45,
        fit_exposures=(1, 2),
    )
    s = model.scale_for(np.array([17.5, 18.5, 19.2, 20.5, 16.0, 25.0, np.nan]))
    # 17-18 takes 18-19's factor; 19-20 is equidistant and takes the brighter neighbour;
    # outside the bins: the nearest end bin; NaN magnitude: the global factor
    np.testing.assert_allclose(s, [0.9, 0.9, 0.9, 0.4, 0.9, 0.4, 0.45])


# ------------------------------------------------------- error model across bands, CV


BAND_K = {"NB455": 0.8, "NB615": 1.0, "NB845": 1.25}


@pytest.fixture(scope="module")
def three_bands():
    table, _ = synthetic_table(n_src=2500, n_exp=6, seed=3, bands=tuple(BAND_K), band_k=BAND_K)
    wide = widen(table)
    return make_pairs(wide), wide[["expnum", "band"]].drop_duplicates("expnum")


def test_split_and_folds_are_stratified_by_band(three_bands):
    _, eb = three_bands
    bands = dict(zip(eb.expnum, eb.band, strict=True))
    fit = split_exposures(eb.expnum, 0.5, seed=1, exposure_bands=eb)
    for b in BAND_K:
        n_in = sum(bands[e] == b for e in fit)
        assert n_in == 3  # half of each band's 6 exposures, never a band left out
    folds = exposure_folds(eb, folds=3, seed=2)
    flat = [e for f in folds for e in f]
    assert sorted(flat) == sorted(eb.expnum) and len(set(flat)) == len(flat)
    for f in folds:
        # 6 exposures per band dealt into 3 folds: 2 of every band in each
        assert sorted(bands[e] for e in f) == sorted([b for b in BAND_K for _ in range(2)])
    with pytest.raises(ValueError, match="folds"):
        exposure_folds(eb, folds=1)


def test_band_factors_are_recovered_and_needed(three_bands):
    pairs, eb = three_bands
    model = fit_error_model(pairs, eb.expnum, min_pairs=50)
    g = model.band_factor
    # identified up to a common factor (normalised to a geometric mean of 1)
    assert g["NB845"] / g["NB455"] == pytest.approx(1.25 / 0.8, rel=0.05)
    assert g["NB615"] / g["NB455"] == pytest.approx(1.0 / 0.8, rel=0.05)
    s = model.scale_for(np.array([22.5, 22.5]), ["NB845", "NB999"])
    assert s[0] == pytest.approx(TRUE_K[5] * 1.25, rel=0.06)
    assert s[1] == pytest.approx(model.scale_for(22.5)[0])  # unknown band: g = 1
    assert set(model.band_frame().band) == set(BAND_K)

    val, models = cross_validate_error_model(pairs, eb, folds=2, seed=0, min_pairs=400)
    assert len(models) == 2
    assert set(models[0].fit_exposures).isdisjoint(models[1].fit_exposures)
    rows = val.set_index("bin")
    for b in BAND_K:
        assert rows.loc[f"band {b}", "sigma68_den_model"] == pytest.approx(1.0, abs=0.05)
    judged = val[val.passed.notna()]
    assert len(judged) >= 9 and judged.passed.all()
    # without the band factor the per-band calibration fails on held-out exposures
    val0, _ = cross_validate_error_model(pairs, eb, folds=2, seed=0, band_factors=False)
    rows0 = val0.set_index("bin")
    assert rows0.loc["band NB845", "sigma68_den_model"] > 1.1
    assert rows0.loc["band NB455", "sigma68_den_model"] < 0.9
    assert not rows0.loc[["band NB455", "band NB845"], "passed"].any()


def test_open_ended_bins_fit_sources_beyond_the_edges(three_bands):
    pairs, eb = three_bands
    # bins 17-20 only: sources at 20-23 fall in the open bin above, with their own factor
    model = fit_error_model(pairs, eb.expnum, bins=[17, 18, 19, 20], min_pairs=50)
    assert list(model.to_frame().bin) == ["<17", "17-18", "18-19", "19-20", ">=20"]
    assert model.scale[-1] == pytest.approx(np.mean(TRUE_K[3:]), abs=0.1)
    closed = fit_error_model(pairs, eb.expnum, bins=[17, 18, 19, 20], min_pairs=50,
                             open_ends=False)
    assert closed.scale.size == 3


# ------------------------------------------------------------ compact pairs, sampling


def test_compact_pairs_give_the_same_statistics(three_bands):
    pairs, eb = three_bands
    compact = pair_deltas(pairs)
    assert list(compact.columns) == ["ref_id", "band", "I_auto", "expnum_1", "expnum_2",
                                     "d_raw", "d_den"]
    assert compact.memory_usage(deep=False).sum() < pairs.memory_usage(deep=False).sum() / 2
    full = fit_error_model(pairs, eb.expnum, min_pairs=50)
    small = fit_error_model(compact, eb.expnum, min_pairs=50)
    np.testing.assert_allclose(small.scale, full.scale, rtol=1e-5)
    for b in BAND_K:
        assert small.band_factor[b] == pytest.approx(full.band_factor[b], rel=1e-5)
    s_full = summarise(pairs, model=full)
    s_small = summarise(compact, model=small)
    for col in ("n_pairs", "sigma68_raw", "sigma68_den_rawerr", "sigma68_den_model"):
        np.testing.assert_allclose(s_small[col], s_full[col], rtol=1e-5)
    v_full, _ = cross_validate_error_model(pairs, eb)
    v_small, _ = cross_validate_error_model(compact, eb)
    np.testing.assert_allclose(v_small.sigma68_den_model, v_full.sigma68_den_model, rtol=1e-5)


def _fold(pieces, k, seed):
    """What the compare stage does: each piece (a band task's pairs) sends back its own
    bottom k, the driver folds them in one at a time keeping the running bottom k."""
    sample = None
    for piece in pieces:
        sent = bottom_k_pairs(piece, k, seed)
        assert len(sent) == min(len(piece), k)
        sample = bottom_k_pairs(sent if sample is None else [sample, sent], k, seed)
        assert len(sample) <= k
    return canonical_pairs(sample)


def test_bottom_k_is_exact_and_independent_of_partitioning_and_order(three_bands):
    pairs, _ = three_bands
    compact = pair_deltas(pairs)
    n = len(compact)
    per_band = [pair_deltas(pairs[pairs.band == b]) for b in BAND_K]  # as the band tasks do
    assert sum(map(len, per_band)) == n
    h = pair_hash(compact, seed=3)
    # the hash does not depend on dtypes or categories: per band tables hash the same
    np.testing.assert_array_equal(np.sort(np.concatenate([pair_hash(t, 3) for t in per_band])),
                                  np.sort(h))
    rng = np.random.default_rng(0)
    shuffled = compact.iloc[rng.permutation(n)]
    cuts = np.r_[0, np.sort(rng.choice(np.arange(1, n), 6, replace=False)), n]
    chunks = [shuffled.iloc[a:b] for a, b in itertools.pairwise(cuts)]
    for k in (n // 10, 777, 1):
        want = canonical_pairs(compact[h <= np.sort(h)[k - 1]])
        assert len(want) == k  # the k smallest hashes (no tie)
        for pieces in (per_band, per_band[::-1], per_band[1:] + per_band[:1], chunks,
                       chunks[::-1], [compact]):
            got = _fold(pieces, k, seed=3)
            pd.testing.assert_frame_equal(got, want)
        assert list(got.columns) == list(compact.columns)  # no hash column left
    # max_pairs ≥ total: every pair, whatever the partitioning
    for k in (n, n + 5):
        for pieces in (per_band, chunks):
            pd.testing.assert_frame_equal(_fold(pieces, k, seed=3), canonical_pairs(compact))
    assert len(bottom_k_pairs(compact, 0, seed=3)) == 0
    # uniform without replacement: every band in proportion, σ68 of the sample estimates all's
    k = n // 10
    sample = _fold(per_band, k, seed=3)
    assert not sample.duplicated(["ref_id", "band", "expnum_1", "expnum_2"]).any()
    np.testing.assert_allclose(sample.band.value_counts().sort_index() / k, 1 / 3, atol=0.02)
    assert sigma68(sample.d_den) == pytest.approx(sigma68(compact.d_den), rel=0.05)
    # another seed, another sample
    other = _fold(per_band, k, seed=4)
    assert len(other.merge(sample, on=["ref_id", "band", "expnum_1", "expnum_2"])) < k // 2
    with pytest.raises(ValueError, match="k must be"):
        bottom_k_pairs(compact, -1)


def test_bottom_k_breaks_hash_ties_by_the_pair_key():
    t = pd.DataFrame({
        "ref_id": np.array([5, 3, 4, 1, 2, 6], np.int64),
        "band": pd.Categorical(["NB455"] * 6),
        "expnum_1": np.int32(1), "expnum_2": np.int32(2),
        HASH_COLUMN: np.array([9, 7, 7, 7, 1, 8], np.uint64),  # a tie at the cut
    })
    # cut at 7 (3rd smallest): 2 below it needs 2 more from 3 tied pairs → ref_id 1 and 3
    for pieces in ([t], [t.iloc[:3], t.iloc[3:]], [t.iloc[3:], t.iloc[:3]],
                   [t.iloc[[i]] for i in (3, 0, 5, 1, 4, 2)]):
        got = bottom_k_pairs(pieces, 3)
        assert sorted(got.ref_id) == [1, 2, 3]
    assert sorted(bottom_k_pairs([t.iloc[:2], t.iloc[2:]], 4).ref_id) == [1, 2, 3, 4]


# ------------------------------------------------------------------- the compare stage


@pytest.fixture(scope="module")
def phot_table(tmp_path_factory):
    """Synthetic photometry of 3 bands written as the photometry stage writes it."""
    from pausdenoise.photometry import write_partition

    table, _ = synthetic_table(n_src=300, n_exp=4, seed=11, bands=tuple(BAND_K), band_k=BAND_K)
    root = tmp_path_factory.mktemp("phot") / "photometry"
    for (band, kind, expnum), part in table.groupby(["band", "kind", "expnum"]):
        write_partition(part, root / f"band={band}" / f"kind={kind}" / f"{expnum}.parquet")
    return table, root


def _run_compare(phot_root, out, client=None, **compare):
    import shutil

    from pausdenoise.config import PipelineConfig
    from pausdenoise.pipeline.context import Context
    from pausdenoise.pipeline.stages.compare import run as run_compare
    from pausdenoise.runstate import RunPaths

    shutil.copytree(phot_root, out / "photometry")
    cfg = PipelineConfig.model_validate(
        {"compare": {"min_fit_pairs": 5, "min_validate_pairs": 5, **compare}})
    return run_compare(Context(cfg=cfg, paths=RunPaths(out), client=client, record=None))


def test_compare_stage_reads_each_band_twice_and_keeps_the_bottom_k(phot_table, tmp_path,
                                                                    monkeypatch):
    from collections import Counter

    import pausdenoise.pipeline.stages.compare as photometry  # the stage's reader

    table, root = phot_table
    real = photometry.read_photometry
    calls = []

    def counting_read(out_dir, bands=None, columns=None):
        calls.append(tuple(bands) if bands is not None else None)
        return real(out_dir, bands=bands, columns=columns)

    # count the stage's reads (the real reader does the reading)
    monkeypatch.setattr(photometry, "read_photometry", counting_read)
    k = 500
    summary = _run_compare(root, tmp_path, max_pairs=k, seed=2)
    # one read to pair, one to write the per-measurement errors: no counting pass (these
    # tables are as written before aper_frac existed, so there are no aperture shares to
    # count, and the footers say so without a read)
    assert Counter(calls) == {(b,): 2 for b in BAND_K}
    assert summary["calibrated_error_rows"] == (table.kind == "raw").sum()
    everything = pair_deltas(make_pairs(widen(table)))
    n = len(everything)
    assert n == 3 * 300 * 6 > k
    assert summary["pairs"] == n and summary["pairs_used"] == k
    assert summary["pair_sampling_rate"] == pytest.approx(k / n)
    bins = np.arange(17.0, 24.0)
    want = canonical_pairs(bottom_k_pairs(everything, k, seed=2))
    by_bin = pd.read_csv(tmp_path / "compare" / "sigma68_by_bin.csv")
    np.testing.assert_array_equal(by_bin.n_pairs_total, np.r_[n, pairs_per_bin(everything, bins)])
    np.testing.assert_array_equal(by_bin.n_pairs, np.r_[k, pairs_per_bin(want, bins)])
    # the statistics are those of exactly the bottom-k pairs
    np.testing.assert_allclose(by_bin.sigma68_raw[0], sigma68(want.d_raw), rtol=1e-12)
    df = np.load(tmp_path / "compare" / "df_values.npz")
    np.testing.assert_array_equal(np.sort(df["raw"]), np.sort(want.d_raw.to_numpy(float)))


def test_compare_stage_without_sampling_equals_the_unsampled_statistics(phot_table, tmp_path):
    import json

    table, root = phot_table
    wide = widen(table)
    everything = pair_deltas(make_pairs(wide))
    n = len(everything)
    runs = {}
    for k in (n, 10**7):
        out = tmp_path / str(k)
        summary = _run_compare(root, out, max_pairs=k)
        assert summary["pairs"] == summary["pairs_used"] == n
        assert summary["pair_sampling_rate"] == 1.0
        runs[k] = [(out / "compare" / f).read_text()
                   for f in ("sigma68_by_bin.csv", "error_model.json", "summary.json")]
    assert runs[n] == runs[10**7]
    # the same numbers as all pairs taken at once, outside the stage
    bins = np.arange(17.0, 24.0)
    eb = wide[["expnum", "band"]].drop_duplicates("expnum")
    model = fit_error_model(everything, eb.expnum, bins, min_pairs=5)
    stage_model = ErrorModel.from_dict(json.loads(runs[n][1]))
    np.testing.assert_allclose(stage_model.scale, model.scale, rtol=1e-12)
    assert stage_model.band_factor == pytest.approx(model.band_factor, rel=1e-12)
    want = summarise(everything, bins, model=model, measurements=wide)
    got = pd.read_csv(tmp_path / str(n) / "compare" / "sigma68_by_bin.csv")
    np.testing.assert_array_equal(got.n_pairs, want.n_pairs)
    np.testing.assert_array_equal(got.n_pairs_total, want.n_pairs)
    for col in ("sigma68_raw", "sigma68_den_rawerr", "sigma68_den_model"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-9)
    # measurements go back as float32
    np.testing.assert_allclose(got.median_ratio_den_raw, want.median_ratio_den_raw, rtol=1e-6)


def test_compare_stage_on_a_cluster_matches_in_process(phot_table, tmp_path):
    from distributed import Client, LocalCluster

    _, root = phot_table
    files = ("sigma68_by_bin.csv", "error_model.json", "error_model_validation.csv",
             "summary.json")
    _run_compare(root, tmp_path / "local", max_pairs=700)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        _run_compare(root, tmp_path / "cluster", client=client, max_pairs=700)
    for f in files:
        assert ((tmp_path / "cluster" / "compare" / f).read_text()
                == (tmp_path / "local" / "compare" / f).read_text()), f
    df_local = np.load(tmp_path / "local" / "compare" / "df_values.npz")
    df_cluster = np.load(tmp_path / "cluster" / "compare" / "df_values.npz")
    for key in df_local.files:
        np.testing.assert_array_equal(df_cluster[key], df_local[key])


def test_model_round_trip_and_per_measurement_errors(three_bands):
    import json

    from pausdenoise.compare import ErrorModel

    pairs, eb = three_bands
    model = fit_error_model(pairs, eb.expnum, min_pairs=50)
    back = ErrorModel.from_dict(json.loads(json.dumps(model.to_dict())))
    np.testing.assert_array_equal(back.bins, model.bins)  # ±inf open ends survive JSON
    np.testing.assert_array_equal(back.scale, model.scale)
    assert back.band_factor == model.band_factor
    mags, bands = np.array([16.0, 20.5, 22.5, 25.0]), ["NB455", "NB615", "NB845", "NB999"]
    np.testing.assert_array_equal(back.scale_for(mags, bands), model.scale_for(mags, bands))
    # per-measurement errors: s(I)·g(band)·raw error, one row per raw+denoised measurement
    table, _ = synthetic_table(n_src=300, n_exp=3, seed=9, bands=tuple(BAND_K), band_k=BAND_K)
    table.loc[table.index[:5], "flags"] = 4
    rows = model.calibrated_errors(table)
    assert len(rows) == (table.kind == "raw").sum()
    assert (rows.flags_raw > 0).sum() == 5  # flagged rows kept, with their flags
    want = model.scale_for(rows.I_auto, rows.band) * rows.flux_cal_err_raw
    np.testing.assert_allclose(rows.flux_cal_err_den_model, want)
    assert {"flux_cal_den", "flux_cal_err_den", "flags_den"} <= set(rows.columns)


def test_truth_comparison_judges_the_photometry_apart_from_the_zero_points():
    """Header zero-points 3 % off but saying 1 %: the bright sources' pulls against the
    truth show it; with the exact zero-points and their errors taken out they are 1."""
    from pausdenoise.photometry.calibration import calibrate_flux

    rng = np.random.default_rng(5)
    n_src, rows, truth = 3000, [], []
    mags = rng.uniform(17.0, 23.0, n_src)
    ftrue = 10 ** (-0.4 * (mags - 23.9))
    sig = np.sqrt(0.01 * ftrue + 0.5**2)
    for e in range(100, 112):
        zp = 1.0 + 0.03 * rng.standard_normal()
        f_cal, e_cal = calibrate_flux(ftrue + rng.normal(0, sig), sig, zp, 0.01 * zp)
        rows.append(pd.DataFrame({"ref_id": np.arange(n_src), "expnum": e, "ccd": 1,
                                  "band": "NB455", "kind": "raw", "I_auto": mags,
                                  "flux_cal": f_cal,
                                  "flux_cal_err": e_cal, "zp": zp, "zp_err": 0.01 * zp,
                                  "flags": 0}))
        truth.append(pd.DataFrame({"ref_id": np.arange(n_src), "expnum": e, "ccd": 1,
                                   "band": "NB455", "flux_true_cal": ftrue, "zp_true": 1.0}))
    table, truth = pd.concat(rows), pd.concat(truth)
    res = truth_comparison(table, truth).set_index(["kind", "bin"])
    assert res.loc[("raw", "17-18"), "pull_sigma68"] > 1.5
    for b in ["17-18", "18-19", "19-20", "22-23"]:
        assert res.loc[("raw", b), "pull_sigma68_exact_zp"] == pytest.approx(1.0, abs=0.06)
    # without the exact zero-points there is nothing to judge them by
    plain = truth_comparison(table, truth.drop(columns="zp_true"))
    assert plain["pull_sigma68_exact_zp"].isna().all()
    # the header zero-points themselves: 12 frames, 3 % off where they say 1 %
    zp = zero_point_errors(table, truth)
    assert zp["truth_zp_frames"] == 12 and 0.015 < zp["truth_zp_scatter"] < 0.05
    assert zp["truth_zp_pulls"] == pytest.approx(100 * zp["truth_zp_scatter"], rel=0.1)
    assert zero_point_errors(table, truth.assign(expnum=0)) == {}


def _floor_table(floor: float, n_src: int = 400, n_exp: int = 8, seed: int = 3):
    rng = np.random.default_rng(seed)
    ftrue = 10 ** rng.uniform(3, 6, n_src)
    sig = np.sqrt(ftrue + 100.0)  # S/N 30-1000
    rows = []
    for e in range(n_exp):
        f = ftrue * (1 + floor * rng.standard_normal(n_src)) + rng.normal(0, sig)
        rows.append(pd.DataFrame({"ref_id": np.arange(n_src), "expnum": e, "ccd": 1,
                                  "band": "NB455", "kind": "raw", "I_auto": 20.0,
                                  "flux_cal": f, "flux_cal_err": sig, "flags": 0}))
    return pd.concat(rows, ignore_index=True)


def test_the_repeatability_floor_is_what_the_raw_errors_leave_out():
    """A 1 % error common to every measurement that the errors do not hold is found in the
    brightest pairs, within its interval; without one the floor is ~0."""
    from pausdenoise.compare import repeatability_floor

    pairs = make_pairs(_floor_table(0.01))
    r = repeatability_floor(pairs)
    snr = (pairs.f_raw_1 + pairs.f_raw_2) / np.hypot(pairs.e_raw_1, pairs.e_raw_2)
    assert r["n_pairs"] == (snr >= 50).sum() > 1000
    assert r["sigma68_before"] > 1.5 and r["sigma68_after"] == pytest.approx(1.0, abs=0.01)
    assert r["floor_lo"] < r["floor"] < r["floor_hi"]
    assert r["floor"] == pytest.approx(0.01, rel=0.1)
    assert r["floor_lo"] < 0.0105 and r["floor_hi"] > 0.0095
    none = repeatability_floor(make_pairs(_floor_table(0.0)))
    assert none["floor"] < 0.002 and none["sigma68_after"] <= 1.0 + 1e-3
    few = repeatability_floor(pairs, snr_min=1e9)  # none that bright
    assert few["n_pairs"] == 0 and np.isnan(few["floor"])
