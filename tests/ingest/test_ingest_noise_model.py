"""The noise model (gain, read noise) and the noise correlation measured at ingest from each
frame's own pixels: used when the header lacks GAIN/RDNOISE, recorded always."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from noise_frames import (
    crowded_scene_e,
    generic_config,
    observe,
    observe_sky,
    scene_e,
    write_frame,
)

from pausdenoise import store as st
from pausdenoise.ingest import IngestConfig, ingest
from pausdenoise.ingest.noise import NOISE_COLUMNS, NOISE_MEASUREMENT_VERSION, noise_table

N = 256
CASES = [(1, 0.65, 9.0), (2, 2.0, 5.0)]  # expnum, gain [e-/ADU], read noise [e-]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Two header-less frames and the same two with GAIN/RDNOISE, in two directories."""
    root = tmp_path_factory.mktemp("noise")
    for name in ("bare", "header", "rdnoise"):
        (root / name).mkdir()
    for expnum, gain, rn in CASES:
        img = observe(scene_e(N, expnum), gain, rn, seed=10 + expnum)
        write_frame(root / "bare" / f"f{expnum}.fits", img, expnum)
        write_frame(root / "header" / f"f{expnum}.fits", img, expnum,
                    gain=1.11 * gain, rdnoise=7.0)
        write_frame(root / "rdnoise" / f"f{expnum}.fits", img, expnum, rdnoise=rn)
    return root


def test_headerless_frames_get_the_fitted_gain(frames, tmp_path):
    """Gain within 5 % of the truth (and within 3σ of its quoted error), read noise within
    20 % (it is an extrapolation to zero signal from a 200 e⁻ sky), source 'fitted'."""
    report = ingest(frames / "bare", tmp_path / "s.zarr", generic_config())
    assert report.exit_status == 0 and len(report.ingested) == 2, report.summary()
    assert report.warnings == []
    t = st.exposure_table(tmp_path / "s.zarr").set_index("expnum")
    for expnum, gain, rn in CASES:
        row = t.loc[expnum]
        assert row["gain_source"] == "fitted"
        assert row["gain"] == row["gain_fitted"] == pytest.approx(gain, rel=0.05)
        assert abs(row["gain_fitted"] - gain) < 3 * row["gain_fitted_err"] < 0.1 * gain
        assert row["rdnoise"] == row["read_noise_fitted_e"] == pytest.approx(rn, rel=0.2)
        assert pd.isna(row["gain_header"]) and pd.isna(row["rdnoise_header"])
        # white noise: no correlation between neighbours
        assert abs(row["noise_corr_x"]) < 0.02 and abs(row["noise_corr_y"]) < 0.02


def test_rdnoise_without_gain_keeps_a_constrained_fit_else_takes_the_sky(frames, tmp_path):
    """RDNOISE but no GAIN in the headers: frames with bright extended galaxies keep their own
    fit (within 5 %; the sky's gain, recorded, within 3 % too); a sparse star field, whose
    own fit rests on a few bright pixels (error above 20 %), takes the gain its sky's
    variance and the read noise give, within 3 %. No warning."""
    report = ingest(frames / "rdnoise", tmp_path / "s.zarr", generic_config())
    assert report.exit_status == 0 and report.warnings == [], report.summary()
    t = st.exposure_table(tmp_path / "s.zarr").set_index("expnum")
    for expnum, gain, _ in CASES:
        row = t.loc[expnum]
        assert row["gain_source"] == "fitted"
        assert row["rdnoise"] == row["read_noise_fitted_e"]  # the gain's source's
        assert row["gain"] == pytest.approx(gain, rel=0.05)
        assert row["gain_sky"] == pytest.approx(gain, rel=0.03)
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    img = observe_sky(crowded_scene_e(N, seed=7, n_stars=50), 150.0, 1.6, 8.0, seed=8)
    write_frame(sparse / "s.fits", img, 7, rdnoise=8.0)
    report = ingest(sparse, tmp_path / "p.zarr", generic_config())
    assert report.exit_status == 0 and report.warnings == [], report.summary()
    row = st.exposure_table(tmp_path / "p.zarr").iloc[0]
    assert row["gain_fitted_err"] > 0.2 * row["gain_fitted"]
    assert row["gain_source"] == "sky" and row["rdnoise"] == 8.0
    assert row["gain"] == pytest.approx(1.6, rel=0.03)


def test_header_values_kept_in_auto_and_replaced_in_fitted(frames, tmp_path):
    auto = ingest(frames / "header", tmp_path / "a.zarr", generic_config())
    assert auto.exit_status == 0, auto.summary()
    t = st.exposure_table(tmp_path / "a.zarr").set_index("expnum")
    for expnum, gain, _ in CASES:
        row = t.loc[expnum]
        assert row["gain_source"] == "header"
        assert row["gain"] == row["gain_header"] == pytest.approx(1.11 * gain)
        assert row["rdnoise"] == row["rdnoise_header"] == 7.0
        assert row["gain_fitted"] == pytest.approx(gain, rel=0.05)  # recorded all the same
    fitted = ingest(frames / "header", tmp_path / "f.zarr", generic_config(noise_model="fitted"))
    t = st.exposure_table(tmp_path / "f.zarr").set_index("expnum")
    for expnum, gain, _ in CASES:
        row = t.loc[expnum]
        assert fitted.exit_status == 0 and row["gain_source"] == "fitted"
        assert row["gain"] == row["gain_fitted"] == pytest.approx(gain, rel=0.05)
        assert row["gain_header"] == pytest.approx(1.11 * gain)
    # 'header' mode refuses a header-less frame, naming the keyword
    strict = ingest(frames / "bare", tmp_path / "h.zarr", generic_config(noise_model="header"))
    assert strict.exit_status == 1
    assert all("missing header keyword GAIN" in reason for _, reason in strict.failed)


def test_correlated_noise_is_reported(tmp_path):
    """Noise smoothed along x by [1/4, 1/2, 1/4]: ρ_x = 2/3, ρ_y = 0."""
    img = observe(scene_e(N, 5), 1.3, 6.0, seed=5, smooth_x=True)
    write_frame(tmp_path / "c.fits", img, 5, gain=1.3, rdnoise=6.0)
    report = ingest(tmp_path / "c.fits", tmp_path / "s.zarr", generic_config())
    assert report.exit_status == 0, report.summary()
    row = st.exposure_table(tmp_path / "s.zarr").iloc[0]
    assert row["noise_corr_x"] == pytest.approx(2 / 3, abs=0.03)
    assert abs(row["noise_corr_y"]) < 0.02
    assert row["gain_source"] == "header" and row["gain"] == 1.3
    # few sources: the tiles' measurement is in force, the high-frequency one recorded
    assert row["noise_corr_method"] == "tiles"
    assert row["noise_corr_tiles_x"] == row["noise_corr_x"]
    assert row["noise_corr_hf_x"] == pytest.approx(2 / 3, abs=0.05)


def test_failed_fit_leaves_the_gain_unknown_and_warns(tmp_path):
    """A frame too small to fit: ingested, no gain, gain_source 'none', a warning naming
    the file; the noise table shows NaN."""
    rng = np.random.default_rng(0)
    write_frame(tmp_path / "tiny.fits", rng.normal(100, 5, (24, 24)).astype(np.float32), 9)
    report = ingest(tmp_path / "tiny.fits", tmp_path / "s.zarr", generic_config())
    assert report.exit_status == 0, report.summary()
    assert len(report.warnings) == 1 and "tiny.fits" in report.warnings[0]
    assert "noise model not fitted" in report.warnings[0]
    attrs = st.frame_attrs(tmp_path / "s.zarr", report.ingested[0])
    assert "gain" not in attrs and attrs["gain_source"] == "none"
    assert "clean" in attrs["noise_fit_error"]
    table = noise_table(st.exposure_table(tmp_path / "s.zarr"))
    assert list(table.columns) == ["frame", "band", *NOISE_COLUMNS]
    assert np.isnan(table.loc[0, "gain"]) and np.isnan(table.loc[0, "gain_fitted"])
    assert table.loc[0, "gain_source"] == "none"
    # photometry of that frame refuses it by name and says why, instead of a KeyError
    from pausdenoise.store import frame_gain

    with pytest.raises(ValueError, match=f"frame {report.ingested[0]} has no gain.*clean"):
        frame_gain(attrs, report.ingested[0])
    assert frame_gain({"gain": 1.5}, "x") == 1.5
    with pytest.raises(ValueError, match=r"frame y has gain -2 e-/ADU.*must be > 0"):
        frame_gain({"gain": -2.0, "gain_source": "header"}, "y")


def test_paus_frames_without_gain_are_accepted_unless_header_mode(tmp_path):
    """PAUS layout: GAIN/RDNOISE become optional with noise_model 'auto'; this 48 × 40
    frame is too small to fit, so its gain stays unknown (with a warning)."""
    from ingest_cases import write_paus_frame  # test-local: the PAUS maker

    write_paus_frame(tmp_path / "paus", 101, 1, drop=("GAIN", "RDNOISE"))
    report = ingest(tmp_path / "paus", tmp_path / "s.zarr", IngestConfig(chunks=(16, 16)))
    assert report.exit_status == 0 and report.ingested == ["00000101_01"], report.summary()
    assert len(report.warnings) == 1 and "paucam.0000101.01.img.fits" in report.warnings[0]
    row = st.exposure_table(tmp_path / "s.zarr").iloc[0]
    assert row["gain_source"] == "none" and np.isnan(row["gain"]) and np.isnan(row["rdnoise"])
    strict = ingest(tmp_path / "paus", tmp_path / "h.zarr",
                    IngestConfig(chunks=(16, 16), noise_model="header"))
    assert strict.exit_status == 1 and "GAIN" in strict.failed[0][1]


# ------------------------------------------------- the noise model across exposures

CROWDED_GAIN, CROWDED_RN = 1.6, 6.0
SKIES_E = (150.0, 400.0, 900.0, 1600.0, 2400.0)


def _write_crowded(folder, gain=None, rdnoise=None, true_gain=CROWDED_GAIN, first=1,
                   skies=SKIES_E):
    folder.mkdir(exist_ok=True)
    scene = crowded_scene_e(N, seed=3)
    for k, sky in enumerate(skies):
        img = observe_sky(scene, sky, true_gain, CROWDED_RN, seed=40 + first + k)
        write_frame(folder / f"c{first + k}.fits", img, first + k, gain=gain, rdnoise=rdnoise)
    return folder


def test_crowded_headerless_frames_get_the_gain_across_exposures(tmp_path):
    """Five exposures of a crowded field under different skies, no GAIN in the headers:
    each frame's own fit is far too low (unresolved stars), the fit across the exposures is
    put in force (source 'exposures', within 5 %), with a warning that says why; ingesting
    again changes nothing."""
    folder = _write_crowded(tmp_path / "bare")
    report = ingest(folder, tmp_path / "s.zarr", generic_config())
    assert report.exit_status == 0 and len(report.ingested) == 5, report.summary()
    (model,) = report.exposure_noise
    assert model["error"] == "" and model["n_exposures"] == 5
    assert model["gain"] == pytest.approx(CROWDED_GAIN, rel=0.05)
    assert model["gain_fitted_median"] < 0.6 * CROWDED_GAIN
    assert f"noise model across exposures: ccd 1: gain {model['gain']:.3g} ± " in report.summary()
    assert any("ccd 1: gain" in w and "crowded field" in w for w in report.warnings)
    assert report.gains_changed == report.ingested
    t = st.exposure_table(tmp_path / "s.zarr")
    assert (t["gain_source"] == "exposures").all()
    assert np.allclose(t["gain"], model["gain"]) and np.allclose(t["gain_exposures"], t["gain"])
    assert np.allclose(t["rdnoise"], model["read_noise_e"])
    assert (t["gain_fitted"] < 0.6 * CROWDED_GAIN).all()  # the frames' own fits, recorded
    table = noise_table(t)
    assert np.allclose(table["gain_exposures"], model["gain"])
    assert np.isfinite(table["sky_var_fitted_adu2"]).all()
    # white noise under unresolved stars: the tiles see the stars, the high frequencies not
    assert (table["noise_corr_method"] == "high-frequency").all()
    assert (table["noise_corr_tiles_x"] > 0.09).all()  # less under brighter skies
    assert (table[["noise_corr_x", "noise_corr_y"]].abs() < 0.05).all(axis=None)

    again = ingest(folder, tmp_path / "s.zarr", generic_config())
    assert again.skipped == report.ingested and again.gains_changed == []
    t2 = st.exposure_table(tmp_path / "s.zarr")
    assert np.array_equal(t2["gain"], t["gain"]) and (t2["gain_source"] == "exposures").all()


def test_frames_stored_without_the_high_frequency_correlation_are_measured_again(tmp_path):
    """A store written before the high-frequency measurement holds the tiles' correlation
    only (the unresolved stars' on a crowded field): the next ingest measures those frames
    from their stored pixels, puts the high-frequency value in force and lists the frames
    whose correlation moved; a further ingest measures nothing again."""
    import zarr  # test-local: rewriting a stored frame's attributes as an older version did

    folder = _write_crowded(tmp_path / "old", gain=1.6, rdnoise=6.0, skies=SKIES_E[:2])
    store = tmp_path / "s.zarr"
    first = ingest(folder, store, generic_config())
    assert first.exit_status == 0 and first.correlations_remeasured == []
    fresh = st.exposure_table(store).set_index("frame")
    root = zarr.open_group(str(store), mode="r+")
    for frame in fresh.index:  # as an older version stored it
        attrs = root[f"{st.FRAMES_GROUP}/{frame}"].attrs
        attrs.update({"noise_corr_x": float(fresh.loc[frame, "noise_corr_tiles_x"]),
                      "noise_corr_y": float(fresh.loc[frame, "noise_corr_tiles_y"])})
        for key in ("noise_corr_method", "noise_corr_tiles_x", "noise_corr_tiles_y",
                    "noise_corr_hf_x", "noise_corr_hf_y", "noise_measurement_version"):
            del attrs[key]
    again = ingest(folder, store, generic_config())
    assert again.skipped == first.ingested
    assert again.correlations_remeasured == again.correlations_changed == first.ingested
    assert "noise correlation measured again on 2 frame(s)" in again.summary()
    t = st.exposure_table(store).set_index("frame")
    assert (t["noise_corr_method"] == "high-frequency").all()
    assert (t["noise_measurement_version"] == NOISE_MEASUREMENT_VERSION).all()
    assert np.allclose(t["noise_corr_x"], fresh["noise_corr_x"])
    assert np.allclose(t["noise_corr_tiles_x"], fresh["noise_corr_tiles_x"])
    third = ingest(folder, store, generic_config())
    assert third.correlations_remeasured == [] and third.correlations_changed == []


def test_crowded_frames_of_an_older_store_get_the_gain_from_their_sky(tmp_path):
    """A store of version 2 (no sky variance from the high frequencies): its two headerless
    crowded frames carry their own fit, far too low. The next ingest measures them again,
    puts the sky's gain in force and lists them as changed (so later stages run again); a
    further ingest changes nothing."""
    import zarr  # test-local: rewriting stored frames' attributes as version 2 stored them

    folder = _write_crowded(tmp_path / "old", skies=SKIES_E[1:3])
    store = tmp_path / "s.zarr"
    first = ingest(folder, store, generic_config())
    fresh = st.exposure_table(store).set_index("frame")
    root = zarr.open_group(str(store), mode="r+")
    for frame in fresh.index:
        attrs = root[f"{st.FRAMES_GROUP}/{frame}"].attrs
        row = fresh.loc[frame]
        bound = float(row["sky_fitted_adu"] / row["sky_var_fitted_adu2"])
        attrs.update({"gain": float(row["gain_fitted"]), "gain_source": "fitted",
                      "rdnoise": row["read_noise_fitted_e"], "gain_sky_min": bound,
                      "noise_measurement_version": 2})
        for key in ("sky_hf_adu", "sky_var_hf_adu2", "sky_var_hf_err", "gain_sky"):
            del attrs[key]
    again = ingest(folder, store, generic_config())
    assert again.correlations_remeasured == first.ingested
    assert again.gains_changed == first.ingested
    t = st.exposure_table(store).set_index("frame")
    assert (t["gain_source"] == "sky").all() and (t["rdnoise"] == 0.0).all()
    assert np.allclose(t["gain"], fresh["gain"]) and np.allclose(t["gain_sky"], t["gain"])
    third = ingest(folder, store, generic_config())
    assert third.correlations_remeasured == [] and third.gains_changed == []


def test_unreadable_stored_pixels_are_named_and_the_rest_measured(tmp_path):
    """A frame to be measured again whose stored image chunk is corrupt: a warning names the
    frame and the error, the other frame is measured, and nothing stored is lost."""
    import zarr  # test-local: rewriting a stored frame as an older version did

    folder = _write_crowded(tmp_path / "old", gain=1.6, rdnoise=6.0, skies=SKIES_E[:2])
    store = tmp_path / "s.zarr"
    first = ingest(folder, store, generic_config())
    root = zarr.open_group(str(store), mode="r+")
    for frame in first.ingested:
        del root[f"{st.FRAMES_GROUP}/{frame}"].attrs["noise_measurement_version"]
    broken = first.ingested[0]
    chunk = next(p for p in (store / st.FRAMES_GROUP / broken / "image").rglob("*")
                 if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"not a compressed chunk")
    again = ingest(folder, store, generic_config())
    assert again.exit_status == 0 and again.skipped == first.ingested
    assert again.correlations_remeasured == first.ingested[1:]
    assert any(w.startswith(f"{broken}: stored pixels unreadable") for w in again.warnings)
    t = st.exposure_table(store).set_index("frame")
    assert np.isfinite(t.loc[broken, "noise_corr_x"]) and np.isfinite(t.loc[broken, "gain"])


def test_header_gain_stays_in_force_and_the_fit_across_exposures_is_recorded(tmp_path):
    """With GAIN in the headers ('auto' and 'header') the header stays in force; the fit
    across exposures is recorded beside it. 'fitted' puts the fit across exposures in force,
    not the frames' own."""
    folder = _write_crowded(tmp_path / "hdr", gain=1.9, rdnoise=5.0)
    for mode, source in (("auto", "header"), ("header", "header"), ("fitted", "exposures")):
        report = ingest(folder, tmp_path / f"{mode}.zarr", generic_config(noise_model=mode))
        assert report.exit_status == 0, report.summary()
        t = st.exposure_table(tmp_path / f"{mode}.zarr")
        assert (t["gain_source"] == source).all(), mode
        assert np.allclose(t["gain_exposures"], CROWDED_GAIN, rtol=0.05)
        expected = 1.9 if source == "header" else t["gain_exposures"]
        assert np.allclose(t["gain"], expected)
        assert not any("crowded" in w for w in report.warnings) or source == "exposures"


def test_exposures_of_different_gains_under_one_ccd_are_not_fitted_together(tmp_path):
    """Three exposures at gain 1.6 and three at 0.5 e⁻/ADU, one CCD number, no GAIN: the
    skies do not lie on one line, the fit across exposures is refused (saying why) and each
    frame keeps a gain of its own: not its own fit (the unresolved stars put it far below
    what its sky's variance allows) but the one its sky's variance gives, each near its own
    camera's gain."""
    folder = _write_crowded(tmp_path / "mixed", skies=SKIES_E[:3])
    _write_crowded(folder, true_gain=0.5, first=10, skies=SKIES_E[2:])
    report = ingest(folder, tmp_path / "s.zarr", generic_config())
    assert report.exit_status == 0 and len(report.ingested) == 6, report.summary()
    (model,) = report.exposure_noise
    assert "do not share one noise model" in model["error"]
    assert "not used: an exposure's sky variance" in report.summary()
    t = noise_table(st.exposure_table(tmp_path / "s.zarr"))
    assert (t["gain_source"] == "sky").all() and t["gain_exposures"].isna().all()
    true = np.where(t.index < 3, CROWDED_GAIN, 0.5)
    assert np.all(t["gain"] / true > 0.75) and np.all(t["gain"] / true < 1.03)
    assert report.gains_changed == []


def test_real_saao_frames_without_gain_get_it_from_their_exposures(real_data_dir, tmp_path):
    """The 24 SAAO exposures with GAIN/RDNOISE removed from their headers: each frame's own
    fit would give 0.19-0.59 e⁻/ADU (a crowded bulge field); the fit across the exposures
    puts 1.77 in force, within 10 % of the removed header value of 1.9."""
    from astropy.io import fits  # test-local: rewriting the real frames' headers

    folder = real_data_dir / "saao-kb13475"
    paths = sorted(folder.glob("AKB13475I*.fits"))
    if len(paths) < 24:
        pytest.skip(f"{folder}: the 24 SAAO frames are not present")
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in paths:
        with fits.open(path) as hdul:
            header = hdul[0].header.copy()
            for key in ("GAIN", "RDNOISE"):
                header.remove(key, ignore_missing=True)
            fits.PrimaryHDU(hdul[0].data, header).writeto(bare / path.name)
    config = IngestConfig(layout="generic", pattern="AKB13475I*.fits", expnum_from="order",
                          defaults={"band": "I", "ccd": 1, "zp": 0.0145, "zp_err": 0.0},
                          chunks=(256, 256), measure_psf=False)
    report = ingest(bare, tmp_path / "s.zarr", config)
    assert report.exit_status == 0 and len(report.ingested) == 24, report.summary()
    t = st.exposure_table(tmp_path / "s.zarr")
    assert (t["gain_source"] == "exposures").all()
    assert t["gain"].iloc[0] == pytest.approx(1.9, rel=0.1)
    assert (t["gain_fitted"] < 0.65).all()
    assert any("crowded field" in w for w in report.warnings)
    # the lag-1 correlation in force is the high-frequency one (0.25-0.65 in the tiles)
    assert (t["noise_corr_method"] == "high-frequency").all()
    assert t["noise_corr_x"].median() < 0.07 and t["noise_corr_y"].median() < 0.04
    assert t["noise_corr_tiles_x"].min() > 0.2


def test_real_saao_frames_one_by_one_without_gain_get_it_from_their_sky(real_data_dir,
                                                                         tmp_path):
    """Three SAAO exposures without GAIN/RDNOISE, each on its own CCD number (no fit across
    exposures): their own fits (0.3-0.6 e⁻/ADU) lie far below what their skies allow; the
    sky's gain (read noise 0) is in force, 1.45-1.95 against the header's 1.9."""
    from astropy.io import fits  # test-local: rewriting the real frames' headers

    folder = real_data_dir / "saao-kb13475"
    paths = sorted(folder.glob("AKB13475I*.fits"))[:3]
    if len(paths) < 3:
        pytest.skip(f"{folder}: the SAAO frames are not present")
    bare = tmp_path / "bare"
    bare.mkdir()
    for ccd, path in enumerate(paths, start=1):
        with fits.open(path) as hdul:
            header = hdul[0].header.copy()
            for key in ("GAIN", "RDNOISE"):
                header.remove(key, ignore_missing=True)
            header["CCDNUM"] = ccd
            fits.PrimaryHDU(hdul[0].data, header).writeto(bare / path.name)
    config = IngestConfig(layout="generic", pattern="AKB13475I*.fits", expnum_from="order",
                          defaults={"band": "I", "zp": 0.0145, "zp_err": 0.0},
                          chunks=(256, 256), measure_psf=False)
    report = ingest(bare, tmp_path / "s.zarr", config)
    assert report.exit_status == 0 and len(report.ingested) == 3, report.summary()
    t = st.exposure_table(tmp_path / "s.zarr")
    assert (t["gain_source"] == "sky").all() and (t["gain_fitted"] < 0.65).all()
    assert t["gain"].between(1.45, 1.95).all()
    assert any("sky's variance gives" in w and "lower bound" in w for w in report.warnings)


def _sky_e(row, gain=CROWDED_GAIN):
    """The true sky of a crowded test frame, e⁻, from its stored sky level [ADU]."""
    return row["sky_hf_adu"] * gain


def test_a_crowded_frames_own_gain_below_its_sky_bound_gives_way_to_its_sky(tmp_path):
    """Two headerless crowded exposures (too few for the fit across exposures): their own
    fits lie far below the least gain their sky's variance allows, so the gain that gives
    that variance is in force (source 'sky', read noise 0: a lower bound, S/(S + rn²) of
    the truth, and the noise model gives the sky's variance); the report says so,
    naming the frames. Frames of an uncrowded scene raise no such warning (the other tests
    here expect no warning at all)."""
    folder = _write_crowded(tmp_path / "two", skies=SKIES_E[1:3])
    report = ingest(folder, tmp_path / "s.zarr", generic_config())
    assert report.exit_status == 0 and len(report.ingested) == 2, report.summary()
    assert "(at least 4 needed)" in report.exposure_noise[0]["error"]
    t = st.exposure_table(tmp_path / "s.zarr")
    assert (t["gain_source"] == "sky").all() and (t["rdnoise"] == 0.0).all()
    assert (t["gain_sky_min"] > 2 * t["gain_fitted"]).all()
    assert np.allclose(t["gain"], t["gain_sky"]) and np.allclose(t["gain"], t["gain_sky_min"])
    for _, row in t.iterrows():
        bound = CROWDED_GAIN * _sky_e(row) / (_sky_e(row) + CROWDED_RN**2)
        assert 0.95 * bound < row["gain"] < 1.02 * CROWDED_GAIN
        # at the sky the model's variance is the measured one (both measurements, combined)
        for kind in ("fitted", "hf"):
            ratio = row[f"sky_{kind}_adu"] / row["gain"] / row[f"sky_var_{kind}_adu2"]
            assert 0.97 < ratio < 1.08, kind
    (warning,) = [w for w in report.warnings if "sky's variance gives" in w]
    assert warning.startswith("2 frame(s)") and all(f in warning for f in report.ingested)
    assert "lower bound" in warning


def test_a_crowded_frame_with_rdnoise_but_no_gain_gets_the_gain_from_its_sky(tmp_path):
    """RDNOISE in the header but no GAIN, one crowded exposure under each of two skies: the
    sky's variance and the read noise give the gain within 5 %, the header's read noise in
    force; the warning does not call it a lower bound."""
    folder = _write_crowded(tmp_path / "rn", rdnoise=CROWDED_RN, skies=(150.0, 900.0))
    report = ingest(folder, tmp_path / "s.zarr", generic_config())
    assert report.exit_status == 0 and len(report.ingested) == 2, report.summary()
    t = st.exposure_table(tmp_path / "s.zarr")
    assert (t["gain_source"] == "sky").all() and (t["rdnoise"] == CROWDED_RN).all()
    assert np.allclose(t["gain"], CROWDED_GAIN, rtol=0.05)
    assert (t["gain_sky"] > t["gain_sky_min"]).all()
    (warning,) = [w for w in report.warnings if "sky's variance gives" in w]
    assert "lower bound" not in warning


def test_an_uncrowded_frames_own_fit_stays_in_force(frames, tmp_path):
    """Uncrowded headerless frames keep their own fit (gain and read noise): it is within
    what their sky's variance allows, and the sky's gain (read noise 0) lies below it."""
    report = ingest(frames / "bare", tmp_path / "s.zarr", generic_config())
    t = st.exposure_table(tmp_path / "s.zarr")
    assert (t["gain_source"] == "fitted").all() and report.warnings == []
    assert (t["gain_sky_min"] < t["gain_fitted"] + 3 * t["gain_fitted_err"]).all()


def test_sky_bound_needs_all_three_values():
    from pausdenoise.ingest.noise import gain_below_sky_bound  # test-local: one helper

    assert gain_below_sky_bound({"gain_fitted": 0.4, "gain_fitted_err": 0.03,
                                 "gain_sky_min": 1.5})
    assert not gain_below_sky_bound({"gain_fitted": 1.4, "gain_fitted_err": 0.05,
                                     "gain_sky_min": 1.5})
    assert not gain_below_sky_bound({"gain_fitted": 0.4, "gain_fitted_err": 0.03})
    assert not gain_below_sky_bound({"gain_fitted": None, "gain_sky_min": 1.5})
    # with the header's read noise the sharper bound counts
    assert gain_below_sky_bound({"gain_fitted": 1.4, "gain_fitted_err": 0.01,
                                 "gain_sky_min": 1.2, "gain_sky": 1.6})


def test_the_read_noise_sharpens_the_sky_bound_on_the_own_fit():
    """A sky of 60 ADU with variance 160 ADU² (gain 1, read noise 10 e⁻): without the read
    noise the sky allows any gain above 0.375 and a fitted 0.56 ± 0.02 stays; with RDNOISE
    10 the sky gives 1.0 and the fit gives way to it (read noise 10 in force)."""
    from pausdenoise.ingest.noise import EXPOSURE_COLUMNS, exposure_gain_updates

    row = {"frame": "a", "ccd": 1, "gain_header": np.nan, "rdnoise_header": np.nan,
           "gain_fitted": 0.56, "gain_fitted_err": 0.02, "read_noise_fitted_e": 3.0,
           "gain": 0.56, "rdnoise": 3.0, "gain_source": "fitted", "sky_fitted_adu": 60.0,
           "sky_var_fitted_adu2": 160.0, "sky_var_fitted_err": 2.0}
    models = pd.DataFrame(columns=list(EXPOSURE_COLUMNS))
    bare = exposure_gain_updates(pd.DataFrame([row]), models, "auto").get("a", {})
    assert "gain_source" not in bare and bare["gain_sky_min"] == pytest.approx(0.375)
    known = exposure_gain_updates(pd.DataFrame([{**row, "rdnoise_header": 10.0}]), models,
                                  "auto")["a"]
    assert known["gain_source"] == "sky" and known["gain"] == pytest.approx(1.0)
    assert known["rdnoise"] == 10.0


def test_sky_gains_combine_the_two_sky_variances():
    """Two sky variances that agree within 3σ give their weighted mean; apart by more, the
    larger gain (sources only add variance); one missing or unusable, the other; the header's
    read noise raises the second value only."""
    from pausdenoise.ingest.noise import sky_gains  # test-local: one helper

    row = {"sky_fitted_adu": 100.0, "sky_var_fitted_adu2": 61.0, "sky_var_fitted_err": 1.0,
           "sky_hf_adu": 100.0, "sky_var_hf_adu2": 60.0, "sky_var_hf_err": 1.0}
    least, sky = sky_gains(row)
    assert least == sky and 100 / 61 < least < 100 / 60
    assert least == pytest.approx(0.5 * (100 / 61 + 100 / 60), rel=2e-3)
    assert sky_gains({**row, "sky_var_fitted_adu2": 80.0})[0] == pytest.approx(100 / 60)
    assert sky_gains({**row, "sky_var_hf_adu2": None})[0] == pytest.approx(100 / 61)
    assert sky_gains({**row, "sky_var_hf_adu2": 0.0})[0] == pytest.approx(100 / 61)
    least, sky = sky_gains({**row, "rdnoise_header": 5.0})
    assert least < 100 / 60 < sky
    assert all(np.isnan(sky_gains({})))


def test_gain_choice_per_quantity_and_old_frames_left_alone():
    """The read noise comes from the gain's source, else the next that has one (GAIN without
    RDNOISE: the fit across exposures', else the frame's own); frames stored before the
    noise model was measured (no gain_source) are not touched."""
    from pausdenoise.ingest.noise import EXPOSURE_COLUMNS, exposure_gain_updates

    models = pd.DataFrame([{**dict.fromkeys(EXPOSURE_COLUMNS, np.nan), "ccd": 1,
                            "gain_header": 1.9, "gain": 1.8, "gain_err": 0.05,
                            "read_noise_e": 11.0, "error": ""}])
    table = pd.DataFrame([
        {"frame": "a", "ccd": 1, "gain_header": 1.9, "rdnoise_header": np.nan,
         "gain_fitted": 0.4, "read_noise_fitted_e": 7.0, "gain": 1.9, "rdnoise": 7.0,
         "gain_source": "header"},
        {"frame": "old", "ccd": 1, "gain": 1.9, "rdnoise": 5.0},
    ])
    auto = exposure_gain_updates(table, models, "auto")
    assert set(auto) == {"a"}  # the old frame is left alone
    assert auto["a"] == {"gain_exposures": 1.8, "gain_exposures_err": 0.05,
                         "read_noise_exposures_e": 11.0, "rdnoise": 11.0}
    # without a usable fit across exposures nothing changes: the frame's own 7.0 stays
    assert exposure_gain_updates(table, models.assign(error="not used"), "auto") == {}
    fitted = exposure_gain_updates(table, models, "fitted")["a"]
    assert fitted["gain"] == 1.8 and fitted["gain_source"] == "exposures"
    assert fitted["rdnoise"] == 11.0
    header = exposure_gain_updates(table, models, "header")["a"]
    assert header["rdnoise"] is None and "gain" not in header  # header only: no RDNOISE


def test_fit_across_exposures_with_a_negative_intercept_is_judged_by_its_slope():
    """Skies on a line through a slightly negative intercept (no read noise, a little
    over-subtracted bias): the fit is kept, its deviation measured against the line with the
    intercept at 0, not NaN."""
    from pausdenoise.ingest.noise import exposure_noise_models

    sky = np.array([500.0, 900.0, 1500.0, 2500.0, 4000.0])
    table = pd.DataFrame({"frame": [f"f{i}" for i in range(5)], "ccd": 1,
                          "gain_header": np.nan, "gain_fitted": 0.5, "sky_fitted_adu": sky,
                          "sky_var_fitted_adu2": sky / 2.0 - 5.0, "sky_var_fitted_err": 1.0})
    (row,) = exposure_noise_models(table).to_dict("records")
    assert row["gain"] == pytest.approx(2.0, rel=0.01) and np.isnan(row["read_noise_e"])
    assert row["error"] == "" and row["max_deviation"] == pytest.approx(5 / 245, rel=0.05)
