"""Sky catalogues (ra, dec, a, b, theta east of north) placed on frames through their WCS,
and the annulus-on-image flag of small images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from pausdenoise.ingest.fits import wcs_header_text
from pausdenoise.photometry import PhotFlag, PhotometryConfig, measure_frame
from pausdenoise.photometry.projection import (
    FrameWCS,
    footprint_note,
    image_to_sky,
    project_catalogue,
    project_to_frame,
)


def _tan(rot_deg: float = 0.0, flip: bool = False, scale: float = 0.265) -> str:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [80.0, 95.0]
    s = scale / 3600.0
    c, si = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    cd = np.array([[c, -si], [si, c]]) @ np.array([[-s, 0.0], [0.0, s]])
    if flip:
        cd = cd @ np.diag([-1.0, 1.0])
    w.wcs.cd = cd
    return w.to_header().tostring()


def _pixel_cat(n: int = 40, shape=(160, 180), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ny, nx = shape
    return pd.DataFrame({
        "ref_id": np.arange(n, dtype=np.int64), "I_auto": rng.uniform(18, 23, n),
        "expnum": np.int64(7), "ccd": np.int64(3),
        "aperture_x": rng.uniform(5, nx - 6, n), "aperture_y": rng.uniform(5, ny - 6, n),
        "aperture_a": rng.uniform(1.0, 2.0, n), "aperture_b": rng.uniform(0.4, 0.9, n),
        "aperture_theta": rng.uniform(-90, 90, n),
    })


def _to_sky(pix: pd.DataFrame, wcs: WCS) -> pd.DataFrame:
    """The sky catalogue of a pixel catalogue, by an independent route: the major axis is
    followed 2 px in pixel space and its sky position angle measured by astropy."""
    x, y = pix["aperture_x"].to_numpy(), pix["aperture_y"].to_numpy()
    phi = np.radians(-pix["aperture_theta"].to_numpy())  # photutils angle
    ra, dec = wcs.all_pix2world(x, y, 0)
    ra2, dec2 = wcs.all_pix2world(x + 2 * np.cos(phi), y + 2 * np.sin(phi), 0)
    pa = SkyCoord(ra, dec, unit="deg").position_angle(SkyCoord(ra2, dec2, unit="deg")).deg
    return pd.DataFrame({"ref_id": pix["ref_id"], "ra": ra, "dec": dec,
                         "I_auto": pix["I_auto"], "a": pix["aperture_a"],
                         "b": pix["aperture_b"], "theta": pa})


def _same_angle(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    d = np.mod(np.asarray(a) - np.asarray(b) + 90.0, 180.0) - 90.0
    assert np.abs(d).max() < tol, d


@pytest.mark.parametrize(("rot", "flip"), [(0.0, False), (30.0, False), (-123.0, False),
                                           (40.0, True)])
def test_projection_matches_the_pixel_catalogue(rot, flip):
    shape = (160, 180)
    text = _tan(rot, flip)
    pix = _pixel_cat(shape=shape)
    sky = _to_sky(pix, WCS(fits.Header.fromstring(text)))
    got = project_to_frame(sky, FrameWCS("00000007_03", 7, 3, shape, text))
    assert len(got) == len(pix)
    np.testing.assert_allclose(got["aperture_x"], pix["aperture_x"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["aperture_y"], pix["aperture_y"], rtol=0, atol=1e-6)
    _same_angle(got["aperture_theta"], pix["aperture_theta"], 1e-5)
    assert (got["expnum"] == 7).all() and (got["ccd"] == 3).all()
    np.testing.assert_array_equal(got["aperture_a"], pix["aperture_a"])  # arcsec, unchanged
    rng = np.random.default_rng(2)
    image = rng.normal(200.0, 4.0, shape).astype(np.float32)
    cfg = PhotometryConfig(annulus_r_in=6.0, annulus_r_out=10.0, min_annulus_pixels=5)
    a = measure_frame(image, None, pix, cfg, gain=1.0)
    b = measure_frame(image, None, got, cfg, gain=1.0)
    np.testing.assert_allclose(b["flux"], a["flux"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(b["flags"], a["flags"])


@pytest.mark.parametrize(("rot", "flip"), [(0.0, False), (30.0, False), (-123.0, False),
                                           (40.0, True)])
def test_an_image_catalogue_goes_to_the_sky_and_back_unchanged(rot, flip):
    """image_to_sky is project_to_frame's inverse on the catalogue's own frame (positions,
    angles mod 180, axes in px through the nominal scale), and agrees with the independent
    route of _to_sky on the sky (ra, dec, position angle east of north)."""
    shape, scale = (160, 180), 0.265
    text = _tan(rot, flip, scale)
    wcs = WCS(fits.Header.fromstring(text))
    pix = _pixel_cat(shape=shape).drop(columns=["expnum", "ccd"])
    sky = image_to_sky(pix, wcs, scale)
    assert not {"expnum", "ccd", "aperture_x", "aperture_theta"} & set(sky.columns)
    np.testing.assert_array_equal(sky["I_auto"], pix["I_auto"])  # passed through
    ref = _to_sky(pix, wcs)
    np.testing.assert_allclose(sky["ra"], ref["ra"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(sky["dec"], ref["dec"], rtol=0, atol=1e-10)
    _same_angle(sky["theta"], ref["theta"], 1e-4)
    assert ((sky["theta"] >= 0) & (sky["theta"] < 180)).all()
    np.testing.assert_allclose(sky["a"], pix["aperture_a"] * scale, rtol=1e-12)
    back = project_to_frame(sky, FrameWCS("f", 1, 1, shape, text), axis_scale=1 / scale)
    np.testing.assert_allclose(back["aperture_x"], pix["aperture_x"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(back["aperture_y"], pix["aperture_y"], rtol=0, atol=1e-6)
    _same_angle(back["aperture_theta"], pix["aperture_theta"], 1e-5)
    np.testing.assert_allclose(back["aperture_b"], pix["aperture_b"], rtol=1e-12)


def test_rotation_convention_north_up_east_left():
    """theta 30° east of north on a north-up, east-left frame: the major axis points 30°
    from +y towards −x, photutils angle 120°, PAUS aperture_theta −120 ≡ 60 (mod 180);
    rotating the WCS by 30° turns the aperture with it."""
    sky = pd.DataFrame({"ref_id": [1], "ra": [150.0], "dec": [2.0], "a": [1.0], "b": [0.5],
                        "theta": [30.0]})
    frame = FrameWCS("f", 1, 1, (200, 200), _tan(0.0))
    _same_angle(project_to_frame(sky, frame)["aperture_theta"], [60.0], 1e-6)
    pa_n = []
    for rot in (0.0, 30.0):
        got = project_to_frame(sky, FrameWCS("f", 1, 1, (200, 200), _tan(rot)))
        pa_n.append(got["aperture_theta"].iloc[0])
    _same_angle([pa_n[1] - pa_n[0]], [-30.0], 1e-6)  # pixel angle +30°, PAUS sign −30°


def test_sources_off_the_frame_are_not_placed():
    shape = (160, 180)
    text = _tan()
    pix = _pixel_cat(shape=shape)
    sky = _to_sky(pix, WCS(fits.Header.fromstring(text)))
    far = sky.iloc[:2].assign(ref_id=[900, 901], ra=[150.5, 330.0])  # 0.5° away, other side
    nan = sky.iloc[:1].assign(ref_id=[902], ra=[np.nan])
    got = project_catalogue(pd.concat([sky, far, nan], ignore_index=True),
                            [FrameWCS("a", 7, 3, shape, text), FrameWCS("b", 8, 3, (20, 20), text)])
    assert set(got.loc[got["expnum"] == 7, "ref_id"]) == set(pix["ref_id"])
    small = got[got["expnum"] == 8]
    assert ((small["aperture_x"] <= 19.5) & (small["aperture_y"] <= 19.5)).all()


def test_a_catalogue_off_every_frame_is_told_where_both_lie():
    """A catalogue of another field places no row; the note gives both footprints."""
    shape = (160, 180)
    text = _tan()
    sky = _to_sky(_pixel_cat(shape=shape), WCS(fits.Header.fromstring(text)))
    elsewhere = sky.assign(ra=sky["ra"] + 10.0)
    frames = [FrameWCS("a", 7, 3, shape, text)]
    assert project_catalogue(elsewhere, frames).empty
    note = footprint_note(elsewhere, frames)
    lo, hi = elsewhere["ra"].min(), elsewhere["ra"].max()
    assert f"catalogue ra {lo:.4f}–{hi:.4f}°" in note
    centre = WCS(fits.Header.fromstring(text)).all_pix2world([[89.5, 79.5]], 0)[0]
    assert f"frame centres ra {centre[0]:.4f}–{centre[0]:.4f}°" in note
    assert f"dec {centre[1]:.4f}–{centre[1]:.4f}°" in note


def test_decam_frames_project_to_their_pixel_positions(real_data_dir: Path):
    files = sorted((real_data_dir / "decam-multiepoch").glob("*_ooi_*.fits"))[:2]
    if not files:
        pytest.skip("no DECam image in the real test data")
    for path in files:
        with fits.open(path) as hdul:
            hdu = next(h for h in hdul if h.header.get("NAXIS") == 2)
            header = hdu.header
        text = wcs_header_text(header)
        shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        pix = _pixel_cat(60, shape, seed=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(fits.Header.fromstring(text))
        sky = _to_sky(pix, wcs)
        got = project_to_frame(sky, FrameWCS(path.stem, 7, 3, shape, text))
        assert len(got) == len(pix)
        np.testing.assert_allclose(got["aperture_x"], pix["aperture_x"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(got["aperture_y"], pix["aperture_y"], rtol=0, atol=1e-6)
        _same_angle(got["aperture_theta"], pix["aperture_theta"], 1e-3)


def test_stamp_smaller_than_the_annulus_is_flagged():
    rng = np.random.default_rng(0)
    cat = pd.DataFrame({"ref_id": [1, 2, 3], "aperture_x": [25.0, 22.0, 28.0],
                        "aperture_y": [25.0, 28.0, 23.0], "aperture_a": 1.0,
                        "aperture_b": 0.8, "aperture_theta": 10.0})
    stamp = rng.normal(100.0, 3.0, (51, 51)).astype(np.float32)
    out = measure_frame(stamp, None, cat, PhotometryConfig(), gain=1.0)
    assert ((out["flags"] & int(PhotFlag.ANNULUS_OFF_IMAGE)) != 0).all()
    off = measure_frame(stamp, None, cat, PhotometryConfig(min_annulus_fraction=0), gain=1.0)
    assert ((off["flags"] & int(PhotFlag.ANNULUS_OFF_IMAGE)) == 0).all()
    pd.testing.assert_series_equal(off["flux"], out["flux"])
    # the same rows with the annulus fully on a large frame: not flagged
    big = rng.normal(100.0, 3.0, (200, 200)).astype(np.float32)
    moved = cat.assign(aperture_x=cat["aperture_x"] + 60, aperture_y=cat["aperture_y"] + 60)
    res = measure_frame(big, None, moved, PhotometryConfig(), gain=1.0)
    assert ((res["flags"] & int(PhotFlag.ANNULUS_OFF_IMAGE)) == 0).all()
