"""Tests of pausdenoise.photometry: exactness against photutils/astropy and SExtractor,
flux recovery, invariants, the PAUS theta sign, flags, catalogue checks and the driver."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from astropy.stats import sigma_clip
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from photutils.aperture import (
    ApertureStats,
    CircularAnnulus,
    CircularAperture,
    EllipticalAperture,
    aperture_photometry,
)
from scipy.special import erf

from pausdenoise.maskbits import MaskBit
from pausdenoise.photometry import (
    OUTPUT_COLUMNS,
    PhotFlag,
    PhotometryConfig,
    aperture_sums,
    calibrate_flux,
    measure_frame,
    photometry_dataframe,
    read_photometry,
    run_photometry,
    validate_catalogue,
)

GAIN = 0.65


# ----------------------------------------------------------------------------- makers


def make_frame(ny=160, nx=200, n=12, seed=0, masked_fraction=0.02, sky=1000.0, noise=30.0):
    """A noisy flat-sky frame with a random mask, bad column, cosmic rays, and a catalogue
    of elliptical apertures (arcsec, PAUS theta sign) including edge cases."""
    rng = np.random.default_rng(seed)
    image = rng.normal(sky, noise, (ny, nx))
    # a few bright outliers in the sky so that clipping has something to do
    hot = rng.random((ny, nx)) < 0.01
    image[hot] += rng.uniform(200, 2000, hot.sum())
    mask = np.zeros((ny, nx), np.uint8)
    mask[rng.random((ny, nx)) < masked_fraction] = MaskBit.COSMIC_RAY
    mask[:, 37] |= np.uint8(MaskBit.BAD_COLUMN)
    x = rng.uniform(-2.0, nx + 1.0, n)
    y = rng.uniform(-2.0, ny + 1.0, n)
    x[:3] = [37.2, 100.4, 150.7]  # one on the bad column
    y[:3] = [80.3, 50.6, 120.1]
    x[4], y[4] = 0.8, 30.2  # aperture crosses the left edge
    a = rng.uniform(0.5, 1.5, n)  # arcsec
    b = a * rng.uniform(0.4, 1.0, n)
    b[3] = a[3]  # a circle
    cat = pd.DataFrame(
        {
            "ref_id": np.arange(n, dtype=np.int64) + 100,
            "I_auto": rng.uniform(17, 23, n),
            "expnum": 7,
            "ccd": 3,
            "band": "NB455",
            "aperture_x": x,
            "aperture_y": y,
            "aperture_a": a,
            "aperture_b": b,
            "aperture_theta": rng.uniform(-90, 90, n),
        }
    )
    # add smooth sources so aperture sums are not just sky
    yy, xx = np.mgrid[0:ny, 0:nx]
    for xi, yi in zip(x[:6], y[:6], strict=True):
        image += 5000 * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / (2 * 1.5**2))
    return image, mask, cat


def reference_loop(image, mask, cat, cfg: PhotometryConfig, gain=GAIN) -> pd.DataFrame:
    """The straightforward per-source photutils loop of the PAUS analyses."""
    mbool = mask != 0
    method = "exact" if cfg.subpixels == 0 else "subpixel"
    sub = max(cfg.subpixels, 1)
    rows = []
    for r in cat.itertuples():
        a = r.aperture_a / cfg.pixel_scale
        b = r.aperture_b / cfg.pixel_scale
        th = -r.aperture_theta * np.pi / 180.0
        pos = (r.aperture_x, r.aperture_y)
        ap = CircularAperture(pos, r=a) if a == b else EllipticalAperture(pos, a, b, theta=th)
        s = float(
            aperture_photometry(image, ap, mask=mbool, method=method, subpixels=sub)[
                "aperture_sum"
            ][0]
        )
        area = float(
            ApertureStats(
                image, ap, mask=mbool, sum_method=method, subpixels=sub
            ).sum_aper_area.value
        )
        ann = CircularAnnulus(pos, r_in=cfg.annulus_r_in, r_out=cfg.annulus_r_out)
        vals = ann.to_mask(method="center").get_values(image, mask=mbool)
        vals = vals[np.isfinite(vals)]
        clipped = sigma_clip(vals, sigma=3, maxiters=2).compressed()
        mean, med, std = clipped.mean(), np.median(clipped), clipped.std()
        bkg = mean if cfg.background == "mean" else med
        flux = s - area * bkg
        k = np.pi / 2 if cfg.background == "median" else 1.0
        err = math.sqrt(max(flux, 0) / gain + area * std**2 + k * area**2 * std**2 / clipped.size)
        rows.append(
            dict(
                aper_sum=s,
                area=area,
                bkg_mean=mean,
                bkg_median=med,
                bkg_std=std,
                bkg_n=clipped.size,
                flux=flux,
                flux_err=err,
            )
        )
    return pd.DataFrame(rows)


def rel_diff(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-300)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(
    "subpixels,background", [(0, "mean"), (5, "mean"), (0, "median"), (1, "mean")]
)
def test_matches_per_source_photutils_loop(subpixels, background):
    image, mask, cat = make_frame(seed=subpixels + 11)
    # keep centres on the image (photutils needs overlap); edge truncation still happens
    cat = cat[
        (cat.aperture_x > 0)
        & (cat.aperture_x < 199)
        & (cat.aperture_y > 0)
        & (cat.aperture_y < 159)
    ].reset_index(drop=True)
    # the plain annulus (no catalogue-source mask), as the per-source loop computes it
    cfg = PhotometryConfig(pixel_scale=0.263, subpixels=subpixels, background=background,
                           annulus_mask_grow=0)
    ours = measure_frame(image, mask, cat, cfg, gain=GAIN)
    ref = reference_loop(image, mask, cat, cfg)
    assert len(ours) == len(cat) >= 8
    assert (ours["flags"].to_numpy() & PhotFlag.TRUNCATED).any()  # edge cases covered
    assert (ours["a"] == ours["b"]).any() and (ours["a"] != ours["b"]).any()
    assert (ours["flags"].to_numpy() & PhotFlag.MASKED).any()  # the bad-column source
    for col in ref.columns:
        np.testing.assert_array_less(rel_diff(ours[col], ref[col]), 1e-6, err_msg=col)
    np.testing.assert_array_equal(ours["bkg_n"], ref["bkg_n"])


def test_float32_image_matches_float64_statistics():
    image, mask, cat = make_frame(seed=5)
    cfg = PhotometryConfig()
    a = measure_frame(image.astype(np.float32), mask, cat, cfg, gain=GAIN)
    b = measure_frame(image.astype(np.float32).astype(np.float64), mask, cat, cfg, gain=GAIN)
    pd.testing.assert_frame_equal(a, b, rtol=1e-12)


@pytest.mark.real_data
def test_sextractor_flux_aper(real_data_dir):
    """r = 5 px circular apertures, 5x5 sub-pixel sampling, on image - back at the
    catalogue positions (1-based -> 0-based) reproduce SExtractor's FLUX_APER."""
    from astropy.io import fits

    d = real_data_dir / "ntt-emmi-sextractor"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-standard ESO-LOG header cards
        image = fits.getdata(d / "image.fits").astype(np.float32)
        back = fits.getdata(d / "back.fits").astype(np.float32)
    cat = np.loadtxt(d / "image.cat")
    x, y = cat[:, 1] - 1.0, cat[:, 2] - 1.0
    flux_aper, sex_flags = cat[:, 12], cat[:, -1].astype(int)
    data = image - back  # SExtractor works in float32
    r = np.full(len(x), 5.0)
    res = aperture_sums(data, x, y, r, r, np.zeros(len(x)), subpixels=5)
    ok = sex_flags == 0
    assert ok.sum() >= 40
    rel = rel_diff(res["aper_sum"][ok], flux_aper[ok])
    # the catalogue prints 7 significant digits: that alone is up to 5e-7 relative
    assert rel.max() <= 1e-5, rel.max()
    assert np.median(rel) < 1e-6
    # sources SExtractor flagged as truncated (flag 8) are flagged here too
    trunc = (sex_flags & 8) != 0
    assert np.all(res["flags"][trunc] & PhotFlag.TRUNCATED)


# ----------------------------------------------------------------------------- physics


def gaussian_pixels(ny, nx, x0, y0, sigma, total):
    """Pixel-integrated circular Gaussian (exact integrals with erf)."""

    def edges(n, c):
        e = np.arange(n + 1) - 0.5
        c_ = 0.5 * (1 + erf((e - c) / (sigma * np.sqrt(2))))
        return np.diff(c_)

    return total * np.outer(edges(ny, y0), edges(nx, x0))


def sersic_pixels(ny, nx, x0, y0, r_e, n, q, phi, oversample=8):
    """Elliptical Sérsic profile sampled on an oversampled grid (unnormalised)."""
    bn = 2 * n - 1 / 3 + 4 / (405 * n)
    o = oversample
    yy, xx = np.mgrid[0 : ny * o, 0 : nx * o]
    xs = (xx + 0.5) / o - 0.5 - x0
    ys = (yy + 0.5) / o - 0.5 - y0
    c, s = np.cos(phi), np.sin(phi)
    u = xs * c + ys * s
    v = -xs * s + ys * c
    r = np.sqrt(u**2 + (v / q) ** 2)
    img = np.exp(-bn * ((r / r_e) ** (1 / n) - 1))
    return img.reshape(ny, o, nx, o).mean(axis=(1, 3))


def test_noiseless_sources_recover_total_flux():
    ny, nx = 200, 260
    sky = 812.5
    image = np.full((ny, nx), sky)
    truth = {}
    g = gaussian_pixels(ny, nx, 60.3, 70.8, 2.0, 2.0e5)
    image += g
    truth[1] = 2.0e5
    s1 = sersic_pixels(ny, nx, 180.6, 60.2, r_e=2.5, n=1.0, q=0.6, phi=0.5)
    s1 *= 1.5e5 / s1.sum()
    image += s1
    truth[2] = 1.5e5
    s2 = sersic_pixels(ny, nx, 130.4, 140.9, r_e=1.5, n=1.5, q=0.8, phi=-1.0)
    s2 *= 8.0e4 / s2.sum()
    image += s2
    truth[3] = 8.0e4
    cat = pd.DataFrame(
        {
            "ref_id": [1, 2, 3],
            "aperture_x": [60.3, 180.6, 130.4],
            "aperture_y": [70.8, 60.2, 140.9],
            "aperture_a": [12.0, 20.0, 18.0],
            "aperture_b": [12.0, 14.0, 15.0],
            "aperture_theta": [0.0, -0.5 * 180 / np.pi, 1.0 * 180 / np.pi],
        }
    )
    # apertures of 12-20 px: grown 3x they would cover the whole 30-45 px annulus
    cfg = PhotometryConfig(aperture_units="pixel", annulus_mask_grow=0)
    out = measure_frame(image, None, cat, cfg, gain=GAIN)
    assert (out["flags"] == 0).all()
    np.testing.assert_allclose(out["bkg_mean"], sky, rtol=1e-3)
    for rid, ft in truth.items():
        f = out.loc[out.ref_id == rid, "flux"].item()
        assert abs(f / ft - 1) < 0.01, (rid, f, ft)


def test_paus_theta_sign_convention():
    """A source elongated at +30 deg counter-clockwise from +x in pixel coordinates is
    matched by photutils theta = +30 deg, i.e. PAUS aperture_theta = -30."""
    ny, nx = 120, 120
    phi = np.deg2rad(30.0)
    yy, xx = np.mgrid[0:ny, 0:nx]
    u = (xx - 60) * np.cos(phi) + (yy - 60) * np.sin(phi)
    v = -(xx - 60) * np.sin(phi) + (yy - 60) * np.cos(phi)
    image = 100 + 1e4 * np.exp(-0.5 * (u**2 / 5.0**2 + v**2 / 1.0**2))
    angles = np.arange(-90, 91, 15, dtype=float)
    cat = pd.DataFrame(
        {
            "ref_id": np.arange(len(angles)),
            "aperture_x": 60.0,
            "aperture_y": 60.0,
            "aperture_a": 8.0,
            "aperture_b": 1.5,
            "aperture_theta": angles,
        }
    )
    cat["expnum"] = np.arange(len(angles))  # distinct rows, not duplicates of one source
    out = measure_frame(image, None, cat, PhotometryConfig(aperture_units="pixel"), gain=GAIN)
    best = angles[np.argmax(out["flux"].to_numpy())]
    assert best == -30.0
    f = dict(zip(angles, out["flux"], strict=True))
    assert f[-30.0] > 1.5 * f[30.0]
    np.testing.assert_allclose(out["theta"][angles == -30.0], np.deg2rad(30.0))


# ----------------------------------------------------------------------------- invariants


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    py=st.integers(0, 139),
    px=st.integers(0, 139),
)
def test_masking_far_pixel_changes_nothing(seed, py, px):
    rng = np.random.default_rng(seed)
    ny = nx = 140
    image = rng.normal(500, 20, (ny, nx))
    mask = np.zeros((ny, nx), np.uint8)
    x = rng.uniform(10, 130, 3)
    y = rng.uniform(10, 130, 3)
    cat = pd.DataFrame(
        {
            "ref_id": [1, 2, 3],
            "aperture_x": x,
            "aperture_y": y,
            "aperture_a": 3.0,
            "aperture_b": 2.0,
            "aperture_theta": 20.0,
        }
    )
    cfg = PhotometryConfig(aperture_units="pixel", annulus_r_in=8, annulus_r_out=14)
    d = np.hypot(px - x, py - y)
    # outside every aperture (d > a + 1) and every annulus (d outside [r_in-1, r_out+1])
    assume(np.all((d > 4) & ((d < 7) | (d > 15))))
    base = measure_frame(image, mask, cat, cfg, gain=GAIN)
    mask[py, px] = MaskBit.COSMIC_RAY
    image2 = image.copy()
    image2[py, px] = 1e6
    after = measure_frame(image2, mask, cat, cfg, gain=GAIN)
    pd.testing.assert_frame_equal(base, after, check_exact=True)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), dy=st.integers(0, 30), dx=st.integers(0, 30))
def test_integer_shift_changes_nothing(seed, dy, dx):
    rng = np.random.default_rng(seed)
    ny, nx = 90, 110
    image = rng.normal(500, 20, (ny, nx))
    mask = (rng.random((ny, nx)) < 0.03).astype(np.uint8)
    x = rng.uniform(8, nx - 9, 4)
    y = rng.uniform(8, ny - 9, 4)
    cat = pd.DataFrame(
        {
            "ref_id": [1, 2, 3, 4],
            "aperture_x": x,
            "aperture_y": y,
            "aperture_a": 3.5,
            "aperture_b": 2.0,
            "aperture_theta": rng.uniform(-90, 90, 4),
        }
    )
    cfg = PhotometryConfig(
        aperture_units="pixel", annulus_r_in=10, annulus_r_out=20, min_annulus_pixels=10
    )
    base = measure_frame(image, mask, cat, cfg, gain=GAIN)
    # a bigger canvas whose extra pixels are masked: they must never count
    big = np.full((ny + 40, nx + 40), 7.0)
    bigm = np.full((ny + 40, nx + 40), MaskBit.EDGE, np.uint8)
    big[dy : dy + ny, dx : dx + nx] = image
    bigm[dy : dy + ny, dx : dx + nx] = mask
    cat2 = cat.assign(aperture_x=cat.aperture_x + dx, aperture_y=cat.aperture_y + dy)
    shifted = measure_frame(big, bigm, cat2, cfg, gain=GAIN)
    cols = [
        "aper_sum",
        "area",
        "area_masked",
        "bkg_mean",
        "bkg_median",
        "bkg_std",
        "flux",
        "flux_err",
    ]
    np.testing.assert_array_equal(shifted["bkg_n"], base["bkg_n"])
    np.testing.assert_array_equal(shifted["flags"], base["flags"])
    for c in cols:
        np.testing.assert_allclose(shifted[c], base[c], rtol=1e-11, atol=1e-9, err_msg=c)


# ----------------------------------------------------------------------------- flags


def _flag_frame():
    rng = np.random.default_rng(3)
    ny, nx = 200, 200
    image = rng.normal(1000, 10, (ny, nx))
    mask = np.zeros((ny, nx), np.uint8)
    rows = {
        "clean": (100.2, 100.7),
        "off": (-20.0, 50.0),
        "truncated": (1.0, 60.0),
        "masked": (60.0, 150.0),
        "few_annulus": (150.0, 150.0),
        "saturated": (150.0, 40.0),
        "nan_pixel": (40.0, 100.5),
        "sat_bit": (100.0, 160.0),
        "nan_pos": (np.nan, 10.0),
    }
    cat = pd.DataFrame(
        {
            "ref_id": np.arange(len(rows)),
            "name": list(rows),
            "aperture_x": [p[0] for p in rows.values()],
            "aperture_y": [p[1] for p in rows.values()],
            "aperture_a": 2.5,
            "aperture_b": 2.0,
            "aperture_theta": 10.0,
        }
    )
    mask[150, 60] = MaskBit.COSMIC_RAY  # "masked": x=60, y=150
    yy, xx = np.mgrid[0:ny, 0:nx]
    ring = np.hypot(xx - 150, yy - 150) > 29
    mask[ring & (np.hypot(xx - 150, yy - 150) < 46)] = MaskBit.EDGE  # kill its annulus
    image[40, 150] = 70000.0  # "saturated": x=150, y=40
    image[100, 40] = np.nan  # "nan_pixel": x=40, y=100.5
    image[103, 103] = np.nan  # in the aperture's cutout of "clean" but outside its ellipse
    mask[160, 100] = MaskBit.SATURATED  # "sat_bit"
    return image, mask, cat


def test_flags_for_each_bad_case():
    image, mask, cat = _flag_frame()
    cfg = PhotometryConfig(aperture_units="pixel", saturate_level=60000.0)
    out = measure_frame(image, mask, cat, cfg, gain=GAIN).set_index(cat["name"])
    f = out["flags"]
    assert f["clean"] == 0 and np.isfinite(out.loc["clean", "flux"])
    assert f["off"] & PhotFlag.OFF_IMAGE and np.isnan(out.loc["off", "flux"])
    assert f["off"] & PhotFlag.NONFINITE_RESULT
    assert f["truncated"] & PhotFlag.TRUNCATED and not f["truncated"] & PhotFlag.OFF_IMAGE
    assert np.isfinite(out.loc["truncated", "flux"])
    assert f["masked"] == PhotFlag.MASKED
    assert 0 < out.loc["masked", "area_masked"] <= 1
    np.testing.assert_allclose(
        out.loc["masked", "area"] + out.loc["masked", "area_masked"], np.pi * 2.5 * 2.0, rtol=1e-9
    )
    assert f["few_annulus"] & PhotFlag.FEW_ANNULUS
    assert f["few_annulus"] & PhotFlag.NONFINITE_RESULT  # no background at all
    assert out.loc["few_annulus", "bkg_n"] == 0
    assert f["saturated"] == PhotFlag.SATURATED
    assert f["sat_bit"] & PhotFlag.SATURATED
    assert f["nan_pixel"] & PhotFlag.NONFINITE_PIXEL and f["nan_pixel"] & PhotFlag.MASKED
    assert np.isfinite(out.loc["nan_pixel", "flux"])  # the NaN pixel was excluded
    assert f["nan_pos"] & PhotFlag.BAD_INPUT
    assert len(out) == len(cat)  # flagged rows are kept

    # saturation="mask" excludes the saturated pixel from the sum
    cfg_m = PhotometryConfig(aperture_units="pixel", saturate_level=60000.0, saturation="mask")
    out_m = measure_frame(image, mask, cat, cfg_m, gain=GAIN).set_index(cat["name"])
    assert out_m.loc["saturated", "aper_sum"] < out.loc["saturated", "aper_sum"] - 5e4
    assert out_m.loc["saturated", "flags"] & PhotFlag.MASKED


def test_duplicate_ref_id_and_bad_axes_flagged():
    image, mask, cat = _flag_frame()
    cat = cat.iloc[:3].copy()
    cat.loc[2, "ref_id"] = cat.loc[1, "ref_id"]
    cat.loc[0, "aperture_b"] = -1.0
    out = measure_frame(image, mask, cat, PhotometryConfig(aperture_units="pixel"), gain=GAIN)
    assert out["flags"][0] & PhotFlag.BAD_INPUT
    assert out["flags"][1] & PhotFlag.BAD_INPUT and out["flags"][2] & PhotFlag.BAD_INPUT


def test_error_formula_and_calibration():
    image, mask, cat = make_frame(seed=9)
    out = measure_frame(image, mask, cat, PhotometryConfig(), gain=GAIN, zp=2.5, zp_err=0.1)
    ok = out["flags"] == 0
    o = out[ok]
    var = np.maximum(o.flux, 0) / GAIN + o.area * o.bkg_std**2 + o.area**2 * o.bkg_std**2 / o.bkg_n
    np.testing.assert_allclose(o.flux_err, np.sqrt(var), rtol=1e-12)
    f, s = o.flux, o.flux_err
    np.testing.assert_allclose(o.flux_cal, 2.5 * f, rtol=1e-12)
    np.testing.assert_allclose(
        o.flux_cal_err, np.sqrt(s**2 * 0.1**2 + s**2 * 2.5**2 + f**2 * 0.1**2), rtol=1e-12
    )
    fc, sc = calibrate_flux(np.array([100.0]), np.array([10.0]), 2.0, 0.0)
    assert fc[0] == 200.0 and sc[0] == 20.0
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    assert {str(t) for t in out.dtypes} <= {"int64", "int32", "float64", "object"}


def test_config_validation():
    with pytest.raises(ValueError, match="annulus_r_out"):
        PhotometryConfig(annulus_r_in=40, annulus_r_out=30)
    with pytest.raises(ValueError, match="extra"):
        PhotometryConfig(nonsense=1)
    assert PhotometryConfig().fingerprint() != PhotometryConfig(background="median").fingerprint()


# ----------------------------------------------------------------------------- catalogue


def test_validate_catalogue_names_rows():
    _, _, cat = make_frame(seed=2, n=10)
    cat = cat.copy()
    cat.loc[1, "aperture_x"] = np.nan
    cat.loc[2, "aperture_y"] = 5000.0
    cat.loc[3, "aperture_a"] = 0.0
    cat.loc[5, "ref_id"] = cat.loc[4, "ref_id"]
    chk = validate_catalogue(cat, shape=(160, 200))
    assert not chk.ok
    by_row = chk.issues.groupby("row")["problem"].apply(" | ".join)
    assert "non-finite position" in by_row[1]
    assert "off the CCD" in by_row[2]
    assert "non-positive" in by_row[3]
    assert "duplicate" in by_row[4] and "duplicate" in by_row[5]
    assert chk.issues.loc[chk.issues.row == 1, "ref_id"].item() == cat.loc[1, "ref_id"]
    assert chk.row_flags[1] & PhotFlag.BAD_INPUT and chk.row_flags[2] & PhotFlag.OFF_IMAGE

    with pytest.raises(KeyError, match="aperture_theta"):
        validate_catalogue(cat.drop(columns=["aperture_theta"]))
    with pytest.raises(KeyError, match="aperture_theta"):
        measure_frame(np.zeros((10, 10)), None, cat.drop(columns=["aperture_theta"]), gain=1.0)

    radians = cat.assign(aperture_theta=np.deg2rad(cat.aperture_theta))
    with pytest.warns(UserWarning, match="radians"):
        validate_catalogue(radians)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_catalogue(cat)  # degrees: no warning


# ----------------------------------------------------------------------------- driver


def _make_store(path, n_frames=2):
    store = pytest.importorskip("pausdenoise.store")
    frames, cats = [], []
    for i in range(n_frames):
        expnum, ccd = 1000 + i, 2
        image, mask, cat = make_frame(seed=40 + i, n=8)
        cat = cat.assign(expnum=expnum, ccd=ccd, band="NB455" if i == 0 else "NB465")
        fid = store.frame_id(expnum, ccd)
        store.write_frame(
            path,
            fid,
            {
                "image": image.astype(np.float32),
                "mask": mask,
                "denoised": (0.5 * image + 500).astype(np.float32),
            },
            {
                "expnum": expnum,
                "ccd": ccd,
                "band": cat.band[0],
                "gain": GAIN,
                "zp": 1.5,
                "zp_err": 0.01,
                "saturate": 60000.0,
                "exptime": 60.0,
                "rdnoise": 9.0,
            },
        )
        frames.append(fid)
        cats.append(cat)
    return frames, pd.concat(cats, ignore_index=True)


def test_photometry_written_before_a_column_existed_reads_it_as_not_measured(tmp_path):
    """Every partition written before aper_frac and the neighbours' light existed: they read
    as NaN (nothing measured), not as an Arrow error; a missing integer column (flags) is
    refused, naming it and what to do."""
    import dask

    store_path = tmp_path / "s.zarr"
    frames, cat = _make_store(store_path)
    out = tmp_path / "phot"
    with dask.config.set(scheduler="synchronous"):
        run_photometry(store_path, out, frames, cat, PhotometryConfig())
    new = read_photometry(out)
    old_cols = ["aper_frac", "aper_neighbours", "aper_neighbours_err"]
    for part in out.rglob("*.parquet"):
        pd.read_parquet(part).drop(columns=old_cols).to_parquet(part)
    old = read_photometry(out)
    assert list(old.columns) == list(OUTPUT_COLUMNS) and len(old) == len(new)
    assert old[old_cols].isna().all().all()
    assert read_photometry(out, columns=["flux_cal", "aper_frac"])["aper_frac"].isna().all()
    for part in out.rglob("*.parquet"):
        pd.read_parquet(part).drop(columns=["flags"]).to_parquet(part)
    with pytest.raises(KeyError, match=r"no column\(s\) flags .* rerun the photometry stage"):
        read_photometry(out)


def test_driver_writes_partitions_and_skips_on_rerun(tmp_path):
    import dask

    store_path = tmp_path / "s.zarr"
    frames, cat = _make_store(store_path)
    out = tmp_path / "phot"
    cfg = PhotometryConfig()
    assert read_photometry(out).empty and list(read_photometry(out).columns) == list(OUTPUT_COLUMNS)
    with dask.config.set(scheduler="synchronous"):
        written = run_photometry(store_path, out, frames, cat, cfg)
        assert len(written) == 4
        assert (out / "band=NB465" / "kind=denoised" / f"{frames[1]}.parquet").is_file()
        assert not list(out.rglob(".*tmp*"))
        assert run_photometry(store_path, out, frames, cat, cfg) == []  # all complete
        # a different config is not "complete"
        assert (
            len(
                run_photometry(
                    store_path, out, frames, cat, cfg.model_copy(update={"background": "median"})
                )
            )
            == 4
        )
        written = run_photometry(store_path, out, frames, cat, cfg)
        assert len(written) == 4
        table = read_photometry(out)
        lazy = photometry_dataframe(store_path, frames, cat, cfg).compute()
    assert len(table) == 2 * len(cat)
    key = ["ref_id", "expnum", "ccd", "kind"]
    t = table.sort_values(key).reset_index(drop=True)
    lz = lazy.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(t, lz.astype(OUTPUT_COLUMNS))
    assert set(t["kind"]) == {"raw", "denoised"} and set(t["band"]) == {"NB455", "NB465"}
    assert np.allclose(t.zp, 1.5)
    # the denoised frame is 0.5*image + 500: background-subtracted flux halves
    raw = t[t.kind == "raw"].set_index(["ref_id", "expnum"])
    den = t[t.kind == "denoised"].set_index(["ref_id", "expnum"])
    ok = (raw["flags"] == 0) & (den["flags"] == 0)
    np.testing.assert_allclose(den.flux[ok], 0.5 * raw.flux[ok], rtol=1e-4, atol=1e-2)
