"""Relative zero-points of exposures from the sources they share: scales recovered within
their errors, sets of frames that share no source normalised each on its own, frames with
too few sources left out, and the scales applied to raw and denoised rows alike."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pausdenoise.relative_zp import apply_exposure_scales, fit_exposure_scales


def _table(scales: dict[tuple[int, int], float], n_src: int = 300, seed: int = 0,
           sources_of: dict[int, range] | None = None) -> pd.DataFrame:
    """Raw and denoised rows: true fluxes × frame scale, 1 % noise plus the flux error."""
    rng = np.random.default_rng(seed)
    true = 10 ** rng.uniform(2, 5, n_src)
    rows = []
    for (expnum, ccd), s in scales.items():
        ids = (sources_of or {}).get(ccd, range(n_src))
        for i in ids:
            err = np.sqrt(true[i] * s + 400.0)
            f = true[i] * s + rng.normal(0, err)
            for kind in ("raw", "denoised"):
                rows.append({"ref_id": i, "expnum": expnum, "ccd": ccd, "kind": kind,
                             "flags": 0, "flux_cal": f, "flux_cal_err": err})
    return pd.DataFrame(rows)


def test_exposure_scales_are_recovered_within_their_errors():
    truth = {(1, 1): 1.0, (2, 1): 0.514, (3, 1): 1.223, (4, 1): 1.552, (5, 1): 0.721}
    t = _table(truth)
    t.loc[(t["expnum"] == 3) & (t["ref_id"] < 20), "flux_cal"] *= 3.0  # outliers: medians
    t.loc[(t["expnum"] == 2) & (t["ref_id"] < 40), "flags"] = 4  # flagged: not used
    got = fit_exposure_scales(t, snr_min=20.0)
    want = np.array(list(truth.values()))
    s, e = got["scale"].to_numpy(), got["scale_err"].to_numpy()
    ratio = s / s[0]  # against frame 1, with both frames' errors
    pull = (ratio - want) / (ratio * np.hypot(e / s, e[0] / s[0]))
    assert np.all(np.abs(pull[1:]) < 4), pull
    assert np.all(got["scale_err"] / got["scale"] < 0.005)
    assert np.median(got["scale"]) == 1.0
    np.testing.assert_allclose(got["dmag"], 2.5 * np.log10(got["scale"]))
    assert (got["component"] == 0).all() and (got["n_sources"] > 150).all()
    fixed = apply_exposure_scales(t, got)
    assert len(fixed) == len(t)
    for kind in ("raw", "denoised"):
        k = fixed[(fixed["kind"] == kind) & (fixed["ref_id"] >= 40)]
        ratio = k.pivot(index="ref_id", columns="expnum", values="flux_cal")
        bright = ratio[ratio[1] > 3e4]
        med = (bright.div(bright[1], axis=0)).median().to_numpy()
        np.testing.assert_allclose(med, 1.0, atol=0.005)


def test_unlinked_sets_are_normalised_apart_and_thin_frames_left_out():
    """CCD 1's and CCD 2's frames share no source: each set's median frame gets scale 1
    (the data say nothing about the ratio between them). A frame with 3 usable sources
    gets no scale, and its rows are dropped when the scales are applied."""
    truth = {(1, 1): 1.0, (2, 1): 2.0, (3, 1): 0.5, (1, 2): 3.0, (2, 2): 6.0, (3, 2): 4.5}
    t = _table(truth, sources_of={1: range(0, 150), 2: range(150, 300)})
    thin = _table({(4, 1): 1.0}, seed=1).query("ref_id < 3")
    t = pd.concat([t, thin], ignore_index=True)
    got = fit_exposure_scales(t).set_index(["expnum", "ccd"])
    np.testing.assert_allclose(got.loc[[(1, 1), (2, 1), (3, 1)], "scale"], [1, 2, 0.5],
                               rtol=0.01)
    np.testing.assert_allclose(got.loc[[(1, 2), (2, 2), (3, 2)], "scale"],
                               [3 / 4.5, 6 / 4.5, 1.0], rtol=0.01)
    assert got.loc[(1, 1), "component"] != got.loc[(1, 2), "component"]
    assert np.isnan(got.loc[(4, 1), "scale"]) and got.loc[(4, 1), "component"] == -1
    applied = apply_exposure_scales(t, got.reset_index())
    assert not (applied["expnum"] == 4).any()


def test_yaml_s_on_and_off_switch_the_relative_zero_points():
    """YAML 1.1 reads a bare on/off as a boolean: the setting takes it as the word."""
    import yaml  # beside its only use

    from pausdenoise.config import CompareConfig

    for text, want in (("off", "off"), ("on", "on"), ("auto", "auto")):
        value = yaml.safe_load(f"relative_zp: {text}")["relative_zp"]
        assert CompareConfig(relative_zp=value).relative_zp == want


def test_a_scale_s_own_error_enters_the_flux_errors_as_a_zero_point_error():
    table = pd.DataFrame({"ref_id": [1, 2, 1], "expnum": [1, 1, 2], "ccd": [1, 1, 1],
                          "flux_cal": [200.0, 50.0, 100.0], "flux_cal_err": [2.0, 1.0, 1.0]})
    scales = pd.DataFrame({"expnum": [1, 2], "ccd": [1, 1], "scale": [2.0, 0.5],
                           "scale_err": [0.02, np.nan]})
    out = apply_exposure_scales(table, scales).sort_values(["expnum", "ref_id"])
    np.testing.assert_allclose(out["flux_cal"], [100.0, 25.0, 200.0])
    # 1 % scale error: σ' = sqrt((σ/s)² + (0.01 f/s)²); no error given: σ/s
    np.testing.assert_allclose(out["flux_cal_err"], [np.hypot(1.0, 1.0), np.hypot(0.5, 0.25),
                                                     2.0])
    assert list(out.columns) == list(table.columns)


def test_the_scales_replace_the_header_zero_points_errors():
    """Frames with calibrated header zero-points, each 2 % off (and saying so): once the
    scales have put them on one flux scale, the header's 2 % is no longer part of Δf, so
    the bright sources' pulls are ~1 only when it is taken out of their errors."""
    from pausdenoise.photometry.calibration import calibrate_flux
    from pausdenoise.stats import sigma68

    rng = np.random.default_rng(4)
    n_frames, n_src = 16, 400
    true = 10 ** rng.uniform(3.5, 5.5, n_src)  # ADU: S/N 60-600
    rows = []
    for e in range(n_frames):
        zp_true = 0.006
        zp = zp_true * (1 + 0.02 * rng.standard_normal())
        err = np.sqrt(true + 400.0)
        f_adu = true * zp_true / zp + rng.normal(0, err)
        f_cal, e_cal = calibrate_flux(f_adu, err, zp, 0.02 * zp)
        rows.append(pd.DataFrame({"ref_id": np.arange(n_src), "expnum": e, "ccd": 1,
                                  "flags": 0, "flux_cal": f_cal, "flux_cal_err": e_cal,
                                  "zp": zp, "zp_err": 0.02 * zp}))
    table = pd.concat(rows, ignore_index=True)
    scales = fit_exposure_scales(table)

    def pulls(t: pd.DataFrame) -> float:
        w = t.pivot(index="ref_id", columns="expnum")
        f, e = w["flux_cal"].to_numpy(), w["flux_cal_err"].to_numpy()
        return sigma68(((f[:, 1:] - f[:, :1]) / np.hypot(e[:, 1:], e[:, :1])).ravel())

    assert 0.9 < pulls(apply_exposure_scales(table, scales)) < 1.1
    # kept, the header's error would make the errors too large by far
    kept = apply_exposure_scales(table.drop(columns=["zp", "zp_err"]), scales)
    assert pulls(kept) < 0.6
