"""Tests of the GalSim PAUCam-like survey simulation (pausdenoise.simulate)."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from pydantic import ValidationError

from pausdenoise import paus_layout as pl
from pausdenoise.maskbits import MaskBit
from pausdenoise.simulate import (
    TRUE_EXPOSURES_NAME,
    TRUE_SOURCES_NAME,
    TRUTH_COLUMNS,
    SimulationConfig,
    bad_columns,
    band_fluxes,
    focal_plane_layout,
    frame_wcs,
    load_config,
    make_source_catalogue,
    paus_theta_deg,
    render_frame,
    survey_tables,
    write_survey,
)
from pausdenoise.simulate.geometry import grid_shape

pytest.importorskip("galsim")

#: A tiny survey: 2 CCDs of 256², 2 bands × 2 exposures; sparse galaxies, many stars so that
#: isolated bright sources exist.
TINY = dict(
    seed=7,
    ccd_shape=(256, 256),
    n_ccds=2,
    bands=["NB455", "NB845"],
    exposures_per_band=2,
    galaxy_density=15.0,
    star_density=12.0,
    n_cosmic_rays=15.0,
    n_bad_columns=2,
)


@pytest.fixture(scope="module")
def tiny_config() -> SimulationConfig:
    return SimulationConfig(**TINY)


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory, tiny_config: SimulationConfig) -> Path:
    root = tmp_path_factory.mktemp("sim")
    write_survey(tiny_config, root)
    return root


def _frames(root: Path) -> list[tuple[int, int]]:
    out = [pl.parse_image_name(p.name) for p in sorted(root.glob("*.img.fits"))]
    return [f for f in out if f is not None]


def _read(path: Path) -> tuple[np.ndarray, fits.Header]:
    with fits.open(path) as hdul:
        return hdul[0].data, hdul[0].header


# --- configuration -------------------------------------------------------------------------


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        SimulationConfig(bands=["NB450"])
    with pytest.raises(ValidationError):
        SimulationConfig(not_a_field=1)
    with pytest.raises(ValidationError):
        SimulationConfig(n_ccds=19)
    with pytest.raises(ValidationError):
        SimulationConfig(ccd_shape=(8192, 2048))
    with pytest.raises(ValidationError):
        SimulationConfig(seeing_fwhm_range=(1.2, 0.7))
    assert SimulationConfig(ccd_shape=(4096, 2048), n_ccds=18).n_exposures == 12


def test_import_does_not_import_galsim() -> None:
    code = "import sys, pausdenoise.simulate; sys.exit('galsim' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_focal_plane_grid_paucam() -> None:
    cfg = SimulationConfig(ccd_shape=(4096, 2048), n_ccds=18, ccd_gap_px=100)
    assert grid_shape(cfg) == (3, 6)
    lay = focal_plane_layout(cfg)
    assert list(lay["ccd"]) == list(range(1, 19))
    # CCDs do not overlap and the grid is centred on the optical axis
    assert np.allclose(np.diff(np.unique(lay["x0"])), 2048 + 100)
    assert np.allclose(np.diff(np.unique(lay["y0"])), 4096 + 100)
    assert lay["x0"].min() + (lay["x0"].max() + 2047) == pytest.approx(0.0)


# --- files and catalogue -------------------------------------------------------------------


def test_layout_and_headers(survey: Path, tiny_config: SimulationConfig) -> None:
    frames = _frames(survey)
    expnums = sorted({e for e, _ in frames})
    assert expnums == list(range(1000, 1000 + tiny_config.n_exposures))
    assert sorted({c for _, c in frames}) == [1, 2]
    assert len(frames) == tiny_config.n_exposures * tiny_config.n_ccds
    for expnum, ccd in frames:
        img, h = _read(pl.image_path(survey, expnum, ccd))
        msk, _ = _read(pl.mask_path(survey, expnum, ccd))
        tru, _ = _read(pl.truth_path(survey, expnum, ccd))
        assert img.dtype == np.dtype(">f4") and img.shape == tiny_config.ccd_shape
        assert msk.dtype == np.uint8 and msk.shape == img.shape
        assert tru.dtype == np.dtype(">f4") and tru.shape == img.shape
        for key in (*pl.REQUIRED_KEYS, "SATURATE", "SKYLEVEL", "SEEING"):
            assert key in h, key
        assert (h["EXPNUM"], h["CCD"]) == (expnum, ccd)
        assert h["FILTER"] in tiny_config.bands
        assert h["ZPERR"] == pytest.approx(tiny_config.zp_err_frac * h["ZP"])
        assert h["SATURATE"] == pytest.approx(tiny_config.full_well / tiny_config.gain)
        assert WCS(h).wcs.ctype[0] == "RA---TAN"
    saved = json.loads((survey / pl.SURVEY_JSON).read_text())
    assert saved["seed"] == tiny_config.seed
    assert load_config(survey / pl.SURVEY_JSON) == tiny_config


def test_catalogue_columns_and_wcs_round_trip(survey: Path, tiny_config: SimulationConfig) -> None:
    cat = pd.read_parquet(survey / pl.CATALOGUE_NAME)
    assert tuple(cat.columns) == pl.CATALOGUE_COLUMNS + pl.PROFILE_COLUMNS
    assert len(cat) > 50
    assert not cat.duplicated(["ref_id", "expnum", "ccd"]).any()
    # a source centre lies on one CCD only per exposure (the CCDs do not overlap)
    assert not cat.duplicated(["ref_id", "expnum"]).any()
    assert (cat["aperture_a"] >= cat["aperture_b"]).all()
    fwhm_min = tiny_config.seeing_fwhm_range[0]
    assert (cat["aperture_b"] >= 0.75 * fwhm_min * tiny_config.aperture_factor / 1.5).all()
    assert cat["aperture_theta"].between(-90, 90).all()
    ny, nx = tiny_config.ccd_shape
    for (expnum, ccd), rows in cat.groupby(["expnum", "ccd"]):
        _, h = _read(pl.image_path(survey, expnum, ccd))
        x, y = WCS(h).all_world2pix(rows["ra"], rows["dec"], 0)
        assert np.max(np.abs(x - rows["aperture_x"])) < 0.01
        assert np.max(np.abs(y - rows["aperture_y"])) < 0.01
        assert rows["aperture_x"].between(-0.5, nx - 0.5).all()
        assert rows["aperture_y"].between(-0.5, ny - 0.5).all()
        assert (rows["band"] == h["FILTER"]).all()
    # dithers: the same source lands at different sub-pixel positions in different exposures
    one = cat[cat["ref_id"] == cat["ref_id"].iloc[0]]
    assert one["aperture_x"].nunique() == len(one) > 1


def test_truth_tables(survey: Path, tiny_config: SimulationConfig) -> None:
    cat = pd.read_parquet(survey / pl.CATALOGUE_NAME)
    tru = pd.read_parquet(survey / pl.TRUTH_DIR / pl.TRUE_FLUXES_NAME)
    plan = pd.read_parquet(survey / pl.TRUTH_DIR / TRUE_EXPOSURES_NAME)
    src = pd.read_parquet(survey / pl.TRUTH_DIR / TRUE_SOURCES_NAME)
    assert tuple(tru.columns) == TRUTH_COLUMNS
    key = ["ref_id", "expnum", "ccd"]
    pd.testing.assert_frame_equal(cat[key], tru[key])
    assert np.allclose(tru[["x_true", "y_true"]], cat[["aperture_x", "aperture_y"]])
    # flux_true_adu × ZP_true = flux_true_cal = the source's band flux (µJy)
    m = tru.merge(plan[["expnum", "zp_true", "zp"]], on="expnum", suffixes=("", "_plan"))
    assert np.allclose(m["flux_true_adu"] * m["zp_true_plan"], m["flux_true_cal"], rtol=1e-10)
    m = m.merge(src, on="ref_id", suffixes=("", "_src"))
    band_flux = np.choose(
        (m["band"] == "NB845").to_numpy().astype(int), [m["flux_NB455"], m["flux_NB845"]]
    )
    assert np.allclose(m["flux_true_cal"], band_flux, rtol=1e-10)
    assert np.allclose(m["mag_true"], 23.9 - 2.5 * np.log10(band_flux))
    # the header ZP is off by about the calibration error, not more
    rel = plan["zp"] / plan["zp_true"] - 1
    assert np.all(np.abs(rel) < 5 * tiny_config.zp_err_frac) and np.any(rel != 0)
    assert tru["isolated"].sum() >= 5
    assert (tru.loc[tru["is_star"], "hlr_arcsec"] == 0).all()
    assert (tru["flux_true_aper_adu"] < tru["flux_true_adu"]).all()
    assert (tru["flux_true_aper_adu"] > 0.3 * tru["flux_true_adu"]).all()


# --- pixels ----------------------------------------------------------------------------------


def test_truth_aperture_flux_matches_true_flux(survey: Path, tiny_config: SimulationConfig) -> None:
    from photutils.aperture import CircularAperture

    tru = pd.read_parquet(survey / pl.TRUTH_DIR / pl.TRUE_FLUXES_NAME)
    ny, nx = tiny_config.ccd_shape
    n_checked = 0
    for (expnum, ccd), rows in tru.groupby(["expnum", "ccd"]):
        truth, h = _read(pl.truth_path(survey, expnum, ccd))
        r = 6.0 * h["SEEING"] / tiny_config.pixel_scale
        ok = (
            rows["isolated"]
            & (rows["flux_true_adu"] > 1000.0)
            & rows["x_true"].between(r + 1, nx - r - 2)
            & rows["y_true"].between(r + 1, ny - r - 2)
        )
        for row in rows[ok].itertuples():
            ap = CircularAperture((row.x_true, row.y_true), r=r)
            flux = ap.do_photometry(truth.astype(float) - h["SKYLEVEL"])[0][0]
            assert flux == pytest.approx(row.flux_true_adu, rel=0.01)
            n_checked += 1
    assert n_checked >= 3


def test_sky_noise_level(survey: Path, tiny_config: SimulationConfig) -> None:
    g, rn = tiny_config.gain, tiny_config.read_noise
    for expnum, ccd in _frames(survey):
        img, h = _read(pl.image_path(survey, expnum, ccd))
        msk, _ = _read(pl.mask_path(survey, expnum, ccd))
        truth, _ = _read(pl.truth_path(survey, expnum, ccd))
        expected = np.sqrt(h["SKYLEVEL"] * g + rn**2) / g
        sky = (msk == 0) & (truth.astype(float) - h["SKYLEVEL"] < 0.01 * expected)
        assert sky.sum() > 0.3 * sky.size
        resid = img[sky].astype(float) - truth[sky]
        assert abs(resid.mean()) < 0.02 * expected
        assert resid.std() == pytest.approx(expected, rel=0.05)


def test_defects_masked(survey: Path, tiny_config: SimulationConfig) -> None:
    g = tiny_config.gain
    n_cr = 0
    for expnum, ccd in _frames(survey):
        img, h = _read(pl.image_path(survey, expnum, ccd))
        msk, _ = _read(pl.mask_path(survey, expnum, ccd))
        truth, _ = _read(pl.truth_path(survey, expnum, ccd))
        bad = bad_columns(tiny_config, ccd)
        assert len(bad) == tiny_config.n_bad_columns
        expected_bad = np.zeros(msk.shape, dtype=bool)
        for col, start, stop, hot in bad:
            expected_bad[start:stop, col] = True
            value = h["SATURATE"] if hot else 0.0
            assert np.all(img[start:stop, col] == np.float32(value))
        assert np.array_equal((msk & MaskBit.BAD_COLUMN) > 0, expected_bad)
        cr = ((msk & MaskBit.COSMIC_RAY) > 0) & ~expected_bad
        sigma = np.sqrt(h["SKYLEVEL"] * g + tiny_config.read_noise**2) / g
        assert np.all(img[cr] - truth[cr] > 10 * sigma)
        n_cr += int(cr.sum())
        # nothing else is masked in these sky-limited frames unless saturated
        other = (msk > 0) & ~expected_bad & ~cr
        assert np.all((msk[other] & MaskBit.SATURATED) > 0)
    assert n_cr > 0


def _single_source_frame(
    theta_pix_deg: float, q: float, full_well: float = 210_000.0, flux_ujy: float = 100.0
):
    cfg = SimulationConfig(
        seed=3, ccd_shape=(128, 128), bands=["NB615"], exposures_per_band=1,
        n_cosmic_rays=0, n_bad_columns=0, full_well=full_well,
    )  # fmt: skip
    _, plan = survey_tables(cfg)
    exposure = plan.iloc[0]
    ra, dec = frame_wcs(cfg, exposure, 1).wcs_pix2world([60.3], [70.7], 0)
    src = pd.DataFrame(
        dict(
            ref_id=[1], ra=ra, dec=dec, I_auto=[19.0], is_star=[q == 1.0],
            hlr_arcsec=[0.0 if q == 1.0 else 1.0], bulge_frac=[0.3], q=[q],
            theta_pix_deg=[theta_pix_deg], flux_NB615=[flux_ujy],
        )
    )  # fmt: skip
    return render_frame(src, exposure, 1, cfg), exposure


@pytest.mark.parametrize("theta_pix_deg", [30.0, -60.0, 80.0])
def test_theta_convention_matches_pixel_moments(theta_pix_deg: float) -> None:
    from photutils.aperture import EllipticalAperture

    frame, exposure = _single_source_frame(theta_pix_deg, q=0.4)
    row = frame.catalogue.iloc[0]
    img = frame.truth.astype(float) - exposure["sky_adu"]
    yy, xx = np.indices(img.shape)
    s = img.sum()
    mx, my = (img * xx).sum() / s, (img * yy).sum() / s
    assert (mx, my) == pytest.approx((row["aperture_x"], row["aperture_y"]), abs=0.01)
    mxx = (img * (xx - mx) ** 2).sum() / s
    myy = (img * (yy - my) ** 2).sum() / s
    mxy = (img * (xx - mx) * (yy - my)).sum() / s
    measured = np.degrees(0.5 * np.arctan2(2 * mxy, mxx - myy))
    # PAUS convention: photutils theta [rad] = -aperture_theta * pi / 180
    diff = (measured - (-row["aperture_theta"]) + 90.0) % 180.0 - 90.0
    assert abs(diff) < 1.0
    # and the aperture built that way holds more light than the one turned by 90 degrees
    pos = (row["aperture_x"], row["aperture_y"])
    a, b = row["aperture_a"] / 0.265, row["aperture_b"] / 0.265
    t = -np.radians(row["aperture_theta"])
    right = EllipticalAperture(pos, a, b, theta=t).do_photometry(img)[0][0]
    wrong = EllipticalAperture(pos, a, b, theta=t + np.pi / 2).do_photometry(img)[0][0]
    assert right > 1.05 * wrong
    assert right == pytest.approx(frame.fluxes["flux_true_aper_adu"].iloc[0], rel=1e-6)
    assert s == pytest.approx(frame.fluxes["flux_true_adu"].iloc[0], rel=1e-3)


def test_saturation_masked() -> None:
    frame, _ = _single_source_frame(0.0, q=1.0, full_well=30_000.0, flux_ujy=10_000.0)
    sat = (frame.mask & MaskBit.SATURATED) > 0
    assert sat.sum() > 0
    saturate = frame.header["SATURATE"]
    assert np.all(frame.image[sat] == np.float32(saturate))
    assert np.all(frame.image[~sat] < saturate)
    assert frame.truth.max() > saturate  # the truth is not clipped


# --- determinism -----------------------------------------------------------------------------


def test_deterministic_files(survey: Path, tiny_config: SimulationConfig, tmp_path: Path) -> None:
    write_survey(tiny_config, tmp_path)
    names = sorted(p.relative_to(survey) for p in survey.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for name in names:
        assert filecmp.cmp(survey / name, tmp_path / name, shallow=False), name


def test_different_seed_differs(tiny_config: SimulationConfig) -> None:
    frames = []
    for seed in (tiny_config.seed, tiny_config.seed + 1):
        cfg = tiny_config.model_copy(update={"seed": seed})
        sources, plan = survey_tables(cfg)
        frames.append(render_frame(sources, plan.iloc[0], 1, cfg))
    assert not np.array_equal(frames[0].image, frames[1].image)
    assert not np.array_equal(frames[0].truth, frames[1].truth)
    sources, plan = survey_tables(tiny_config)
    again = render_frame(sources, plan.iloc[0], 1, tiny_config)
    assert np.array_equal(again.image, frames[0].image)
    assert np.array_equal(again.mask, frames[0].mask)
    assert np.array_equal(again.truth, frames[0].truth)


# --- source population -----------------------------------------------------------------------


def test_number_counts_and_sizes() -> None:
    cfg = SimulationConfig(ccd_shape=(2048, 2048), galaxy_density=60.0)
    src = make_source_catalogue(cfg, np.random.default_rng(0))
    gal = src[~src["is_star"]]
    counts, _ = np.histogram(gal["I_auto"], bins=np.arange(17.0, 24.5, 1.0))
    # dN/dm ∝ 10^(0.3 m): each magnitude bin holds ~2x the previous one
    ratios = counts[2:] / counts[1:-1]
    assert np.all(np.abs(np.log10(ratios) - 0.3) < 0.1)
    # fainter galaxies are smaller; sizes and shapes are in physical ranges
    bright = gal.loc[gal["I_auto"] < 20, "hlr_arcsec"].median()
    faint = gal.loc[gal["I_auto"] > 23, "hlr_arcsec"].median()
    assert 0.2 < faint < 0.4 < bright < 1.0
    assert gal["q"].between(0.17, 1.0).all() and gal["bulge_frac"].between(0, 1).all()
    # the narrow-band fluxes follow a smooth SED normalised to I_auto at 775 nm
    assert np.all(src["flux_NB455"] > 0) and np.all(src["flux_NB845"] > 0)
    assert np.allclose(band_fluxes(src, "NB775"), 10 ** ((23.9 - src["I_auto"]) / 2.5))


def test_paus_theta_range() -> None:
    theta = np.linspace(-400.0, 400.0, 1601)
    out = paus_theta_deg(theta)
    assert np.all((out > -90.0) & (out <= 90.0))
    assert np.allclose(np.cos(np.radians(2 * out)), np.cos(np.radians(-2 * theta)))
    assert np.allclose(np.sin(np.radians(2 * out)), np.sin(np.radians(-2 * theta)))
