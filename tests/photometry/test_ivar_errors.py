"""Aperture flux errors from the inverse-variance plane (``photometry.errors = "ivar"``):
exact sums, unchanged default outputs, calibrated pulls on a frame whose noise varies on
scales the annulus cannot see, the fallback without ivar, the store driver, and real DECam
Community Pipeline frames with their ``oow`` inverse-variance maps."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from photometry_fixtures import circular_catalogue
from scipy import ndimage

from pausdenoise import store as st
from pausdenoise.ingest import EXIT_OK, IngestConfig, ingest
from pausdenoise.maskbits import MaskBit
from pausdenoise.photometry import PhotometryConfig, aperture_sums, measure_frame
from pausdenoise.photometry.driver import measure_store_frame
from pausdenoise.stats import sigma68

GAIN = 2.0
SKY = 100.0
SIG_LO, SIG_HI = 10.0, 30.0  # sky + read noise, ADU/px: quiet sky and noisy patches
PATCH_R = 8.0  # px, radius of the noisy patch around each source
CENTRES = (40.0, 100.0, 160.0)  # 3 x 3 sources, 60 px apart (beyond each other's annulus)


def _config(**kw):
    base = dict(aperture_units="pixel", annulus_mask_grow=0.0, profile=False)
    return PhotometryConfig(**{**base, **kw})


def _patchy_frame():
    """Noiseless model (sky + 9 Gaussian sources, ADU) and the sky+read σ map (ADU/px)."""
    yy, xx = np.mgrid[0:200, 0:200].astype(float)
    model = np.full((200, 200), SKY)
    sigma = np.full((200, 200), SIG_LO)
    xs, ys = np.meshgrid(CENTRES, CENTRES)
    xs, ys = xs.ravel() + 0.3, ys.ravel() - 0.2
    for x0, y0 in zip(xs, ys, strict=True):
        r2 = (xx - x0) ** 2 + (yy - y0) ** 2
        model += 3000.0 / (2 * np.pi * 1.5**2) * np.exp(-r2 / (2 * 1.5**2))
        sigma[r2 <= PATCH_R**2] = SIG_HI
    return model, sigma, circular_catalogue(xs, ys, 5.0)


def test_var_ivar_is_exact_and_other_outputs_unchanged():
    rng = np.random.default_rng(1)
    image = rng.normal(50.0, 5.0, (60, 70))
    mask = np.zeros(image.shape, np.uint8)
    mask[30, 30] = MaskBit.COSMIC_RAY
    ivar = rng.uniform(0.01, 0.05, image.shape)
    ivar[20, 40] = 0.0  # no data: adds no variance
    x, y = np.array([30.2, 40.1, 10.3, -20.0]), np.array([29.7, 20.4, 12.1, 5.0])
    r = np.full(4, 4.0)
    th = np.zeros(4)
    for sub in (0, 1, 5):
        plain = aperture_sums(image, x, y, r, r, th, mask=mask, subpixels=sub)
        with_iv = aperture_sums(image, x, y, r, r, th, mask=mask, subpixels=sub, ivar=ivar)
        assert set(with_iv) == {*plain, "var_ivar"}
        for k, v in plain.items():
            np.testing.assert_array_equal(with_iv[k], v)
    # pixel-centre membership (w = 0 or 1): the sum is Σ 1/ivar over the member pixels
    with_iv = aperture_sums(image, x, y, r, r, th, mask=mask, subpixels=1, ivar=ivar)
    yy, xx = np.mgrid[0:60, 0:70]
    for i in range(3):
        inside = ((xx - x[i]) ** 2 + (yy - y[i]) ** 2 <= 16.0) & (mask == 0) & (ivar > 0)
        expect = np.sum(1.0 / ivar[inside])
        assert with_iv["var_ivar"][i] == pytest.approx(expect, rel=1e-12)
    assert np.isnan(with_iv["var_ivar"][3])  # off the image, like aper_sum


def test_ivar_errors_calibrated_where_the_noise_varies():
    """Noise 3x higher inside 8 px of each source than in its 30-45 px annulus: the annulus
    error is ~2.7x too small, Σ overlap²/ivar (+ source shot noise) gives pulls of width 1."""
    model, sigma, cat = _patchy_frame()
    truth = aperture_sums(model - SKY, cat.aperture_x.to_numpy(), cat.aperture_y.to_numpy(),
                          cat.aperture_a.to_numpy(), cat.aperture_b.to_numpy(),
                          np.zeros(len(cat)))["aper_sum"]
    ivar = (1.0 / sigma**2).astype(np.float32)
    rng = np.random.default_rng(7)
    pulls = {"ivar": [], "annulus": []}
    for _ in range(120):
        var = sigma**2 + (model - SKY) / GAIN  # sky+read, plus the sources' shot noise
        image = (model + rng.normal(0.0, 1.0, model.shape) * np.sqrt(var)).astype(np.float32)
        for mode in pulls:
            t = measure_frame(image, None, cat, _config(errors=mode), gain=GAIN, ivar=ivar)
            pulls[mode].append((t.flux.to_numpy() - truth) / t.flux_err.to_numpy())
    s_ivar = sigma68(np.concatenate(pulls["ivar"]))
    s_ann = sigma68(np.concatenate(pulls["annulus"]))
    print(f"patchy noise: sigma68(pull) ivar={s_ivar:.3f} annulus={s_ann:.3f}")
    assert abs(s_ivar - 1.0) < 0.07, s_ivar  # 1080 pulls: σ68 known to ~3 %
    assert s_ann > 2.0, s_ann
    assert abs(np.median(np.concatenate(pulls["ivar"]))) < 0.1


def test_without_ivar_falls_back_to_annulus_with_a_warning():
    model, sigma, cat = _patchy_frame()
    image = model + np.random.default_rng(3).normal(0.0, 1.0, model.shape) * sigma
    ann = measure_frame(image, None, cat, _config(), gain=GAIN)
    with pytest.warns(UserWarning, match="no ivar plane"):
        fb = measure_frame(image, None, cat, _config(errors="ivar"), gain=GAIN)
    pd.testing.assert_frame_equal(fb, ann)
    with warnings.catch_warnings():  # errors="annulus" ignores a given ivar, silently
        warnings.simplefilter("error")
        same = measure_frame(image, None, cat, _config(), gain=GAIN, ivar=1.0 / sigma**2)
    pd.testing.assert_frame_equal(same, ann)
    with pytest.raises(ValueError, match="ivar shape"):
        measure_frame(image, None, cat, _config(errors="ivar"), gain=GAIN, ivar=sigma[:5])
    assert _config().fingerprint() != _config(errors="ivar").fingerprint()


def _decam_store(real_data_dir: Path, tmp_path: Path) -> Path:
    src = real_data_dir / "decam-multiepoch"
    if not src.is_dir():
        pytest.skip(f"{src} not present")
    store = tmp_path / "decam.zarr"
    cfg = IngestConfig.decam_community_pipeline(zp_table=src / "survey-ccds-1.fits.gz")
    report = ingest(src, store, cfg)
    assert report.exit_status == EXIT_OK, report.summary()
    return store


def _sky_apertures(image, mask, ivar, r=2.0, step=5):
    """Apertures of radius ``r`` px on a grid, away from anything above 5σ (smoothed)."""
    good = (mask == 0) & (ivar > 0)
    sky = np.median(image[good])
    sig = np.median(1.0 / np.sqrt(ivar[good]))
    smooth = ndimage.gaussian_filter(np.where(good, image - sky, 0.0), 1.5)
    busy = (smooth > 5.0 * sig / (2.0 * np.sqrt(np.pi) * 1.5)) | ~good
    busy = ndimage.binary_dilation(busy, iterations=4)
    ny, nx = image.shape
    ys, xs = np.mgrid[3 : ny - 3 : step, 3 : nx - 3 : step]
    keep = ~busy[ys, xs]
    return circular_catalogue(xs[keep], ys[keep], r)


@pytest.mark.real_data
@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_decam_oow_ivar_errors_match_sky_aperture_scatter(real_data_dir, tmp_path):
    """Eight real DECam CP frames (g, r, z): the pulls flux/flux_err of r = 2 px sky
    apertures, with flux_err from the oow inverse variance, have σ68 within 15 % of 1."""
    store = _decam_store(real_data_dir, tmp_path)
    cfg = _config(errors="ivar", annulus_r_in=4.0, annulus_r_out=10.0, min_annulus_pixels=10)
    pulls, ratios = [], []
    for fid in st.list_frames(store):
        image = st.open_frame(store, fid).compute()
        mask = st.open_frame(store, fid, "mask").compute()
        ivar = st.open_frame(store, fid, "ivar").compute()
        cat = _sky_apertures(image, mask, ivar)
        cat["expnum"], cat["ccd"] = st.parse_frame_id(fid)
        t = measure_store_frame(store, fid, cat, cfg, "raw")
        attrs = st.frame_attrs(store, fid)
        direct = measure_frame(image, mask, cat, cfg, gain=attrs["gain"], ivar=ivar,
                               saturate=attrs.get("saturate"))
        np.testing.assert_array_equal(t.flux_err.to_numpy(), direct.flux_err.to_numpy())
        ann = measure_store_frame(store, fid, cat, _config(annulus_r_in=4.0, annulus_r_out=10.0,
                                                           min_annulus_pixels=10), "raw")
        assert not np.allclose(t.flux_err, ann.flux_err)  # the ivar was used
        pulls.append(t.flux.to_numpy() / t.flux_err.to_numpy())
        ratios.append(np.median(t.flux_err / ann.flux_err))
    p = np.concatenate(pulls)
    assert len(p) >= 150
    s = sigma68(p)
    print(f"decam sky apertures: n={len(p)} sigma68(pull, ivar errors)={s:.3f} "
          f"median err ratio ivar/annulus per frame={np.round(ratios, 2)}")
    assert abs(s - 1.0) < 0.15, s
