"""Aperture errors from empty apertures (``photometry.errors = "empty"``): white noise gives
the annulus formula back; correlated noise, which the annulus formula underestimates, gets
calibrated pulls; positions avoid the catalogue; a frame with no room falls back."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from photometry_fixtures import circular_catalogue
from scipy import ndimage

from pausdenoise.photometry import PhotometryConfig, measure_frame
from pausdenoise.photometry.apertures import _aperture_geometry
from pausdenoise.photometry.empty import empty_aperture_noise, empty_field, spaced_batches
from pausdenoise.stats import sigma68

GAIN = 4.0
SKY = 200.0
N = 384
SPACING = 96.0  # px between sources: beyond each other's 30-45 px annulus


def _config(**kw):
    base = dict(aperture_units="pixel", profile=False)
    return PhotometryConfig(**{**base, **kw})


def _noise(rng, smooth: float, sigma_pix: float) -> np.ndarray:
    """Gaussian noise of per-pixel σ ``sigma_pix`` (ADU), smoothed by a Gaussian of
    ``smooth`` px (0: white) and rescaled to the same per-pixel σ."""
    n = rng.normal(0.0, 1.0, (N, N))
    if smooth > 0:
        n = ndimage.gaussian_filter(n, smooth, mode="wrap")
        n /= n.std()
    return sigma_pix * n


def _sources():
    g = np.arange(48.0, N - 40, SPACING)
    xs, ys = np.meshgrid(g + 0.3, g - 0.2)
    return xs.ravel(), ys.ravel()


def _frame(rng, smooth: float, flux: float = 2000.0):
    """Sky + faint Gaussian sources (total ``flux`` ADU, σ 1.5 px) + their Poisson noise +
    sky noise (white or correlated); returns the image and the true in-aperture flux."""
    xs, ys = _sources()
    yy, xx = np.mgrid[0:N, 0:N].astype(float)
    model = np.zeros((N, N))
    for x0, y0 in zip(xs, ys, strict=True):
        model += flux / (2 * np.pi * 1.5**2) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 4.5)
    src = rng.poisson(np.clip(model * GAIN, 0, None)) / GAIN
    image = SKY + src + _noise(rng, smooth, 8.0)
    r = 5.0
    inside = np.zeros(len(xs))
    for i, (x0, y0) in enumerate(zip(xs, ys, strict=True)):
        inside[i] = model[(xx - x0) ** 2 + (yy - y0) ** 2 <= r**2].sum()
    return image, circular_catalogue(xs, ys, r), inside


def _pulls(smooth: float, errors: str, frames: int = 6) -> np.ndarray:
    rng = np.random.default_rng(11)
    pulls = []
    for k in range(frames):
        image, cat, true = _frame(rng, smooth)
        ph = measure_frame(image, None, cat, _config(errors=errors, empty_apertures=150),
                           gain=GAIN, expnum=k, ccd=1)
        assert (ph["flags"] == 0).all()
        pulls.append((ph["flux"] - true) / ph["flux_err"])
    return np.concatenate(pulls)


def test_white_noise_gives_the_annulus_errors_back():
    rng = np.random.default_rng(3)
    image = SKY + _noise(rng, 0.0, 8.0)
    cat = circular_catalogue(*_sources(), 5.0)
    cfg = _config(errors="empty", empty_apertures=200)
    geom = _aperture_geometry(cat, cfg)
    field = empty_field(image, None, geom, cfg, None)
    noise = empty_aperture_noise(image, None, field, geom, cfg, seed=1)
    assert noise is not None and len(noise.area) >= 3 and (noise.n >= 20).all()
    assert noise.beta == pytest.approx(0.5, abs=0.12)  # σ ∝ √A for white noise
    area = np.pi * 25.0
    assert noise.sigma_at(np.array([area]))[0] == pytest.approx(8.0 * np.sqrt(area), rel=0.15)
    emp = measure_frame(image, None, cat, cfg, gain=GAIN, expnum=1, ccd=1)
    ann = measure_frame(image, None, cat, _config(), gain=GAIN, expnum=1, ccd=1)
    ratio = emp["flux_err"] / ann["flux_err"]
    assert ratio.median() == pytest.approx(1.0, abs=0.15)
    # the flux itself is not touched
    np.testing.assert_array_equal(emp["flux"], ann["flux"])


def test_correlated_noise_pulls_are_calibrated_only_with_empty_apertures():
    """Noise smoothed over 1.5 px: the annulus formula (white-noise propagation) gives
    errors ~4× too small; the empty-aperture errors give pull σ68 ≈ 1."""
    annulus = sigma68(_pulls(1.5, "annulus"))
    empty = sigma68(_pulls(1.5, "empty"))
    assert annulus > 2.5
    assert empty == pytest.approx(1.0, abs=0.2)
    assert sigma68(_pulls(0.0, "empty")) == pytest.approx(1.0, abs=0.2)


def test_positions_avoid_catalogue_sources_and_bad_pixels():
    rng = np.random.default_rng(5)
    image = SKY + _noise(rng, 0.0, 8.0)
    xs, ys = _sources()
    # a bright source that is in the catalogue: empty apertures must not sample it
    yy, xx = np.mgrid[0:N, 0:N].astype(float)
    image += 5e5 / (2 * np.pi * 4.0) * np.exp(-((xx - xs[4]) ** 2 + (yy - ys[4]) ** 2) / 8.0)
    mask = np.zeros((N, N), np.uint16)
    mask[:, 200:260] = 1  # a bad stripe: not sampled either
    image[:, 200:260] = 1e6
    cat = circular_catalogue(xs, ys, 5.0)
    cfg = _config(errors="empty")
    geom = _aperture_geometry(cat, cfg)
    field = empty_field(image, mask, geom, cfg, None)
    assert field.blocked[:, 200:260].all() and field.blocked[round(ys[4]), round(xs[4])]
    noise = empty_aperture_noise(image, mask, field, geom, cfg, seed=2)
    assert noise is not None
    assert noise.sigma_at(np.array([78.5]))[0] == pytest.approx(8.0 * np.sqrt(78.5), rel=0.2)


def test_no_room_for_empty_apertures_falls_back_with_a_warning():
    rng = np.random.default_rng(6)
    image = SKY + rng.normal(0, 8.0, (70, 70))  # smaller than the 45 px annulus margin
    cat = circular_catalogue([35.0], [35.0], 4.0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        emp = measure_frame(image, None, cat, _config(errors="empty", min_annulus_fraction=0),
                            gain=GAIN, expnum=7, ccd=3)
    assert any("too few empty apertures" in str(w.message) and "exposure 7 ccd 3"
               in str(w.message) for w in rec)
    ann = measure_frame(image, None, cat, _config(min_annulus_fraction=0), gain=GAIN)
    np.testing.assert_allclose(emp["flux_err"], ann["flux_err"])


def test_fingerprint_unchanged_unless_empty_errors_are_asked_for():
    base = PhotometryConfig()
    assert base.fingerprint() == PhotometryConfig(empty_apertures=500).fingerprint()
    e1 = PhotometryConfig(errors="empty")
    assert e1.fingerprint() != base.fingerprint()
    assert e1.fingerprint() != PhotometryConfig(errors="empty", empty_apertures=500).fingerprint()


def test_profile_errors_follow_the_empty_aperture_noise():
    """The profile-weighted flux is unchanged by the error mode; its pulls on correlated
    noise go from ≫ 1 to ≈ 1 with ``errors="empty"`` (scatter about the median: the
    Moffat model of the Gaussian sources leaves a small common bias)."""
    from pausdenoise.psf import PsfEstimate

    rng = np.random.default_rng(12)
    psf = PsfEstimate(fwhm_px=1.5 * 2.3548, beta=30.0, n_stars=0, source="header")
    out = {"annulus": [], "empty": []}
    for k in range(10):
        image, cat, _ = _frame(rng, 1.5)
        cat = cat.assign(profile_hlr=0.0, profile_q=1.0, profile_bulge_frac=0.0)
        res = {}
        for mode in out:
            cfg = _config(errors=mode, profile=True, pixel_scale=1.0)
            res[mode] = measure_frame(image, None, cat, cfg, gain=GAIN, psf=psf, expnum=k, ccd=1)
            f = res[mode]["flux_prof"]
            out[mode].append((f - np.median(f)) / res[mode]["flux_prof_err"])
        np.testing.assert_array_equal(res["annulus"]["flux_prof"], res["empty"]["flux_prof"])
    assert sigma68(np.concatenate(out["annulus"])) > 2.0
    assert sigma68(np.concatenate(out["empty"])) == pytest.approx(1.0, abs=0.2)


def test_sigma_of_area_interpolates_the_measured_curve_in_log_log():
    """σ(A) goes through the measured points, is non-decreasing, and is extrapolated with
    the end slopes clipped to [½, 1]."""
    from pausdenoise.photometry.empty import EmptyApertureNoise

    area = np.array([10.0, 40.0, 160.0, 640.0])
    sigma = np.array([10.0, 35.0, 30.0, 80.0])  # a dip: made non-decreasing
    noise = EmptyApertureNoise(area, sigma, np.full(4, 200), coef=1.0, beta=0.7)
    got = noise.sigma_at(np.array([10.0, 20.0, 40.0, 160.0, 5.0, 2560.0, 0.0]))
    np.testing.assert_allclose(got[[0, 2, 3]], [10.0, 35.0, 35.0])
    assert got[1] == pytest.approx(np.sqrt(10.0 * 35.0))  # geometric mean halfway in log A
    slope_lo = np.log(3.5) / np.log(4.0)  # 0.90, inside [½, 1]
    assert got[4] == pytest.approx(10.0 * 0.5**slope_lo)
    slope_hi = np.log(80.0 / 35.0) / np.log(4.0)  # 0.60, inside [½, 1]
    assert got[5] == pytest.approx(80.0 * 4.0**slope_hi)
    assert np.isnan(got[6])
    steep = EmptyApertureNoise(area[:2], np.array([10.0, 400.0]), np.full(2, 200), 1.0, 1.0)
    assert steep.sigma_at(np.array([160.0]))[0] == pytest.approx(400.0 * 4.0)  # clipped to 1


def test_real_crowded_frames_null_apertures_have_calibrated_errors(real_data_dir):
    """Apertures and profiles of galaxy-like sizes placed as injections are (12 px from
    every detected star) on real crowded frames measure only sky and confusion noise: their
    flux over its error has σ68 ≈ 1 with ``errors="empty"`` (the annulus formula gives ≈ 6
    for both estimators)."""
    from astropy.io import fits

    from pausdenoise.inject.placement import detected_sources, occupancy_from_image, place
    from pausdenoise.psf import frame_psf

    names = ["AKB13475I0007.fits", "AKB13475I0013.fits", "AKB13475I0020.fits",
             "AKB13475I0021.fits", "AKB13475I0027.fits"]
    paths = [real_data_dir / "saao-kb13475" / n for n in names]
    if not all(p.is_file() for p in paths):
        pytest.skip("saao-kb13475 frames not in the real test data")
    rng = np.random.default_rng(4)
    pulls = {"empty": [], "annulus": []}
    prof = {"empty": [], "annulus": []}
    for k, path in enumerate(paths):
        image = fits.getdata(path).astype(float)
        psf = frame_psf({}, image, pixel_scale=1.0)
        occ = occupancy_from_image(image, smooth_px=2.0, grow_px=0.0)
        det = detected_sources(image, occ)
        x, y = place(rng, 80, image.shape, occupied_xy=(det["x"].to_numpy(), det["y"].to_numpy()),
                     occupied_mask=occupancy_from_image(image, smooth_px=2.0),
                     min_separation_px=20.0, edge_px=45.0, clearance_px=12.0)
        r = rng.uniform(2.5, 8.0, x.size)
        q = rng.uniform(0.5, 1.0, x.size)
        null = pd.DataFrame({"ref_id": np.arange(x.size), "aperture_x": x, "aperture_y": y,
                             "aperture_a": r / np.sqrt(q), "aperture_b": r * np.sqrt(q),
                             "aperture_theta": rng.uniform(-90, 90, x.size),
                             "profile_hlr": rng.uniform(0.3, 1.2, x.size) * r,
                             "profile_q": q, "profile_bulge_frac": 0.0})
        stars = pd.DataFrame({"ref_id": -1 - np.arange(len(det)), "aperture_x": det["x"],
                              "aperture_y": det["y"], "aperture_a": det["a_px"],
                              "aperture_b": det["b_px"], "aperture_theta": -det["theta_deg"]})
        cat = pd.concat([null, stars], ignore_index=True)
        for mode in pulls:
            cfg = _config(errors=mode, profile=True, pixel_scale=1.0)
            ph = measure_frame(image, None, cat, cfg, gain=1.9, expnum=k, ccd=1, psf=psf)
            ph = ph[ph["ref_id"] >= 0]
            ok = ph[ph["flags"] == 0]
            pulls[mode].append((ok["flux"] / ok["flux_err"]).to_numpy())
            ok = ph[ph["flags_prof"] == 0]
            prof[mode].append((ok["flux_prof"] / ok["flux_prof_err"]).to_numpy())
    empty, empty_prof = np.concatenate(pulls["empty"]), np.concatenate(prof["empty"])
    assert empty.size >= 300 and empty_prof.size >= 300
    assert sigma68(np.concatenate(pulls["annulus"])) > 3.0
    assert sigma68(np.concatenate(prof["annulus"])) > 3.0
    assert 0.9 < sigma68(empty) < 1.12
    assert 0.9 < sigma68(empty_prof) < 1.12


def test_spaced_batches_split_positions_into_non_overlapping_sets():
    """Every position lands in exactly one batch, members of a batch are ≥ spacing apart,
    and a new batch opens only when every earlier one has a member too close."""
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 100, 300), rng.uniform(0, 100, 300)
    batches = spaced_batches(x, y, 15.0)
    flat = np.sort(np.concatenate(batches))
    np.testing.assert_array_equal(flat, np.arange(300))
    for members in batches:
        d2 = (x[members, None] - x[None, members]) ** 2 + (y[members, None] - y[None, members]) ** 2
        np.fill_diagonal(d2, np.inf)
        assert d2.min() >= 15.0**2
    first_of_each = [b[0] for b in batches[1:]]
    for k, i in enumerate(first_of_each, start=1):
        for earlier in batches[:k]:
            before = earlier[earlier < i]
            assert np.min((x[before] - x[i]) ** 2 + (y[before] - y[i]) ** 2) < 15.0**2
    assert len(spaced_batches(x[:3], y[:3], 0.0)) == 1


def test_profile_sky_variance_replaces_the_annulus_variance():
    """With ``sky_variance`` the profile error's sky term uses V_eff in place of each
    source's annulus V (σ_b² scaled alike); flux unchanged."""
    from pausdenoise.photometry.profile import profile_fluxes

    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 5.0, (96, 96))
    pixels = {"image": image.ravel(), "good": np.ones(image.size, bool),
              "sat": np.zeros(image.size, bool), "shape": image.shape}
    x, y = np.array([30.0, 60.0]), np.array([40.0, 60.0])
    shapes = (np.array([1.0, 2.0]), np.array([1.0, 0.7]), np.zeros(2))
    v, var_b = np.array([25.0, 100.0]), np.array([0.5, 2.0])
    cfg = _config(profile=True, pixel_scale=1.0)
    kw = dict(fwhm_px=3.0, beta=3.0, gain=1e12, config=cfg)
    base = profile_fluxes(pixels, x, y, np.zeros(2), shapes, sky=(np.zeros(2), v, var_b), **kw)
    got = profile_fluxes(pixels, x, y, np.zeros(2), shapes, sky=(np.zeros(2), v, var_b),
                         sky_variance=lambda area: np.full(np.shape(area), 400.0), **kw)
    np.testing.assert_array_equal(got["flux"], base["flux"])
    # the error is linear in (V, σ_b²) jointly: V → 400 multiplies it by sqrt(400 / V)
    np.testing.assert_allclose(got["flux_err"], base["flux_err"] * np.sqrt(400.0 / v), rtol=1e-9)


def test_spanning_rows_cover_the_whole_range_of_profile_areas():
    """Half the picks follow the catalogue's mix, half are spread in log area, so the rare
    largest and smallest profiles are always among them; non-finite areas only by chance."""
    from pausdenoise.photometry.empty import spanning_rows

    rng = np.random.default_rng(8)
    area = np.r_[rng.lognormal(np.log(40.0), 0.2, 995), [400.0, 900.0, 3.0], [np.nan, -1.0]]
    pick = spanning_rows(area, 200, np.random.default_rng(1))
    assert pick.size == 200 and pick.min() >= 0 and pick.max() < area.size
    assert {995, 996, 997} <= set(pick.tolist())  # both ends of the range and the one between
    big = np.isin(pick, [995, 996])
    assert big.sum() >= 15  # the log-spaced half reaches the sparse upper range repeatedly
    # a frame with one row: every pick is that row
    np.testing.assert_array_equal(spanning_rows(np.array([50.0]), 7, rng), np.zeros(7, int))


def test_profile_area_proxy_orders_profiles_as_their_stamp_sums_do():
    """The one-Gaussian effective area ranks profiles of varied size and axis ratio as the
    stamp sums (Σp)²/Σp² of the real profiles do, and is within a factor 2 of them."""
    from scipy.stats import spearmanr

    from pausdenoise.photometry.empty import profile_area_proxy
    from pausdenoise.photometry.profile import profile_fluxes

    rng = np.random.default_rng(9)
    n = 40
    shapes = (rng.uniform(0.0, 6.0, n), rng.uniform(0.2, 1.0, n), rng.uniform(0.0, 0.6, n))
    image = np.zeros((200, 200 * n))
    pixels = {"image": image.ravel(), "good": np.ones(image.size, bool),
              "sat": np.zeros(image.size, bool), "shape": image.shape}
    x, y = 100.0 + 200.0 * np.arange(n), np.full(n, 100.0)
    res = profile_fluxes(pixels, x, y, rng.uniform(0, np.pi, n), shapes, fwhm_px=3.5, beta=3.0,
                         sky=(np.zeros(n), np.ones(n), np.zeros(n)), gain=np.inf,
                         config=_config(profile=True, pixel_scale=1.0))
    proxy = profile_area_proxy(shapes, 3.5)
    assert spearmanr(proxy, res["area_eff"]).statistic > 0.95
    assert np.all((proxy / res["area_eff"] > 0.5) & (proxy / res["area_eff"] < 2.0))


def test_profile_errors_hold_for_rare_large_profiles_in_correlated_noise():
    """Noise correlated over ~2.5 px makes V_eff grow with the profile's area; with only
    8 % of the catalogue large, the large profiles' errors are still calibrated because
    V_eff is measured at their sizes (random rows alone: σ68 ≈ 1.5)."""
    from pausdenoise.psf import PsfEstimate

    rng = np.random.default_rng(21)
    psf = PsfEstimate(fwhm_px=3.0, beta=3.0, n_stars=0, source="header")
    cfg = _config(errors="empty", profile=True, pixel_scale=1.0)
    big, small = [], []
    for k in range(8):
        image = SKY + _noise(rng, 2.5, 8.0)
        g = np.arange(50.0, N - 45, 24.0)
        xs, ys = (v.ravel() + rng.uniform(-3, 3, v.size) for v in np.meshgrid(g, g))
        large = rng.random(xs.size) < 0.08
        hlr = np.where(large, 4.0, 0.3)
        cat = pd.DataFrame({"ref_id": np.arange(xs.size), "aperture_x": xs, "aperture_y": ys,
                            "aperture_a": 2.5 * hlr + 3, "aperture_b": 2.5 * hlr + 3,
                            "aperture_theta": 0.0, "profile_hlr": hlr, "profile_q": 1.0,
                            "profile_bulge_frac": 0.0})
        ph = measure_frame(image, None, cat, cfg, gain=GAIN, psf=psf, expnum=k, ccd=1)
        ok = (ph["flags_prof"] == 0).to_numpy()
        z = (ph["flux_prof"] / ph["flux_prof_err"]).to_numpy()  # nothing there: truth 0
        big.append(z[ok & large])
        small.append(z[ok & ~large])
    big, small = np.concatenate(big), np.concatenate(small)
    assert big.size >= 80 and small.size >= 1000
    assert sigma68(big) == pytest.approx(1.0, abs=0.15)
    assert sigma68(small) == pytest.approx(1.0, abs=0.1)


def test_fingerprint_carries_the_profile_model_version_only_with_the_profile(monkeypatch):
    import pausdenoise.photometry.config as pc

    with_prof, without = PhotometryConfig(profile=True), PhotometryConfig(profile=False)
    before = with_prof.fingerprint(), without.fingerprint()
    monkeypatch.setattr(pc, "PROFILE_MODEL", "another")
    assert with_prof.fingerprint() != before[0]  # a new profile fit remeasures
    assert without.fingerprint() == before[1]


def test_the_partitions_warnings_are_kept_and_said_once_for_all_frames(tmp_path):
    """Three frames too small for empty apertures: each partition's metadata keeps its
    warnings (none reaches the terminal from the workers), and partition_warnings says the
    cause once for the three, the frame prefix dropped."""
    from pausdenoise import store as st  # beside its only use
    from pausdenoise.photometry.driver import partition_warnings, run_photometry

    rng = np.random.default_rng(6)
    rows = []
    for k in (1, 2, 3):
        st.write_frame(tmp_path / "s.zarr", st.frame_id(k, 1),
                       {"image": (SKY + rng.normal(0, 8.0, (70, 70))).astype(np.float32)},
                       {"expnum": k, "ccd": 1, "band": "I", "gain": GAIN, "rdnoise": 5.0,
                        "zp": 1.0, "zp_err": 0.0})
        rows.append(circular_catalogue([35.0], [35.0], 4.0).assign(expnum=k, ccd=1))
    cat = pd.concat(rows, ignore_index=True)
    cfg = _config(errors="empty", min_annulus_fraction=0, kinds=["raw"], profile=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping the tasks fails the test
        written = run_photometry(tmp_path / "s.zarr", tmp_path / "phot",
                                 st.list_frames(tmp_path / "s.zarr"), cat, cfg)
    lines = partition_warnings(written)
    assert len(written) == 3
    empty = [s for s in lines if "too few empty apertures fit" in s]
    assert len(empty) == 1 and "exposure" not in empty[0]
    assert "(3 of 3 partitions: 00000001_01 raw, 00000002_01 raw, 00000003_01 raw)" in empty[0]
    assert empty[0].startswith("UserWarning: ")
