"""An image catalogue (pixel positions of one frame) placed on every exposure of a run:
through the frames' WCS, or by registering frames without one to the catalogue's frame; the
frame named by id or FITS file name; the real SAAO exposures measured through the command
line from a catalogue of one of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from pausdenoise import store as st
from pausdenoise.cli import EXIT_OK, EXIT_USAGE, main
from pausdenoise.photometry import read_photometry
from pausdenoise.pipeline.image_catalogue import place_image_catalogue, resolve_frame

SCALE = 0.265  # arcsec/px


def _tan(rot_deg: float, crpix: tuple[float, float]) -> str:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = list(crpix)
    s = SCALE / 3600.0
    c, si = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    w.wcs.cd = np.array([[c, -si], [si, c]]) @ np.array([[-s, 0.0], [0.0, s]])
    return w.to_header().tostring()


def _store(path: Path, wcs: list[str], shape=(120, 140)) -> Path:
    for k, text in enumerate(wcs, start=1):
        st.write_frame(path, st.frame_id(k, 1), {"image": np.zeros(shape, np.float32)},
                       {"expnum": k, "ccd": 1, "band": "I", "wcs": text,
                        "source_image": f"night/IMG{k:04d}.fits"})
    return path


def _image_cat(n: int = 25, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"ref_id": np.arange(1, n + 1), "aperture_x": rng.uniform(30, 110, n),
                         "aperture_y": rng.uniform(30, 90, n),
                         "aperture_a": rng.uniform(2, 4, n), "aperture_b": rng.uniform(1, 2, n),
                         "aperture_theta": rng.uniform(-90, 90, n)})


def test_the_catalogue_frame_is_found_by_id_file_name_or_path():
    frames = ["00000001_01", "00000002_01"]
    attrs = {f: {"source_image": f"night/IMG{k:04d}.fits"} for k, f in enumerate(frames, 1)}
    for name in ("00000002_01", "IMG0002.fits", "night/IMG0002.fits"):
        assert resolve_frame(name, frames, attrs) == ("00000002_01", None)
    assert resolve_frame(None, frames[:1], attrs) == ("00000001_01", None)
    ref, why = resolve_frame(None, frames, attrs)
    assert ref is None and "the store has 2 frames" in why and "input.catalogue_frame" in why
    ref, why = resolve_frame("IMG0003.fits", frames, attrs)
    assert ref is None and "'IMG0003.fits' is none of the store's 2 frames" in why
    same = {f: {"source_image": "IMG.fits"} for f in frames}
    ref, why = resolve_frame("IMG.fits", frames, same)
    assert ref is None and "names 2 frames" in why and "give the frame id" in why


@pytest.mark.parametrize("units", ["pixel", "arcsec"])
def test_placed_through_the_wcs_as_the_sky_positions_would_be(tmp_path, units):
    """A catalogue made on frame 1 lands on frame 2 (rotated by 35°, shifted) where the
    sources' sky positions project, with the same ellipses turned with the frame; on
    frame 1 it stays where it was. Sources that fall off frame 2 are not placed there."""
    texts = [_tan(0.0, (70.0, 60.0)), _tan(35.0, (20.0, 110.0))]
    store = _store(tmp_path / "s.zarr", texts)
    cat = _image_cat()
    got = place_image_catalogue(cat, store, "IMG0001.fits", SCALE, units)
    assert got.frame == "00000001_01" and not got.registered and not got.skipped
    to_px = 1.0 if units == "pixel" else SCALE
    one = got.rows[got.rows["expnum"] == 1].set_index("ref_id").loc[cat["ref_id"]]
    np.testing.assert_allclose(one["aperture_x"], cat["aperture_x"], atol=1e-6)
    np.testing.assert_allclose(one["aperture_a"], cat["aperture_a"] * to_px, rtol=1e-9)
    # the same sources through an independent route: frame 1's pixels to the sky by astropy
    w1 = WCS(fits.Header.fromstring(texts[0]))
    ra, dec = w1.all_pix2world(cat["aperture_x"], cat["aperture_y"], 0)
    w2 = WCS(fits.Header.fromstring(texts[1]))
    x2, y2 = w2.all_world2pix(ra, dec, 0)
    on = (x2 >= -0.5) & (x2 <= 139.5) & (y2 >= -0.5) & (y2 <= 119.5)
    assert 0 < on.sum() < len(cat)
    two = got.rows[got.rows["expnum"] == 2].set_index("ref_id")
    assert sorted(two.index) == sorted(cat["ref_id"][on])
    np.testing.assert_allclose(two.loc[cat["ref_id"][on], "aperture_x"], x2[on], atol=1e-6)
    np.testing.assert_allclose(two.loc[cat["ref_id"][on], "aperture_y"], y2[on], atol=1e-6)
    turned = np.mod(two.loc[cat["ref_id"][on], "aperture_theta"].to_numpy()
                    - cat["aperture_theta"][on].to_numpy() + 35.0 + 90.0, 180.0) - 90.0
    assert np.abs(turned).max() < 1e-5  # the frame turned by +35°: PAUS angle by −35°
    assert "2 frame(s)" in got.note()


def test_frames_without_a_wcs_on_one_side_are_named_not_placed(tmp_path):
    """The catalogue's frame has a WCS, another frame none: that frame is skipped, named."""
    store = _store(tmp_path / "s.zarr", [_tan(0.0, (70.0, 60.0)), ""])
    got = place_image_catalogue(_image_cat(), store, "00000001_01", SCALE, "pixel")
    assert set(got.rows["expnum"]) == {1}
    assert got.skipped == {"00000002_01": "no WCS"}
    assert "not placed on 1 frame(s): 00000002_01: no WCS" in got.note()


def _saao_stars(path: Path, n: int = 30) -> pd.DataFrame:
    """The n brightest isolated, unsaturated stars of a SAAO frame: centroids (0-based px)."""
    img = fits.getdata(path).astype(float)
    sky = np.median(img)
    smooth = ndimage.gaussian_filter(img - sky, 1.5)
    peaks = (smooth == ndimage.maximum_filter(smooth, 15)) & (smooth > 200)
    ys, xs = np.nonzero(peaks)
    keep = (xs > 40) & (xs < img.shape[1] - 40) & (ys > 40) & (ys < img.shape[0] - 40) \
        & (img[ys, xs] < 20000)
    order = np.argsort(-smooth[ys[keep], xs[keep]])[:n]
    ys, xs = ys[keep][order], xs[keep][order]
    cx, cy = [], []
    for y, x in zip(ys, xs, strict=True):
        cut = img[y - 5:y + 6, x - 5:x + 6] - sky
        w = np.clip(cut, 0, None)
        gy, gx = np.mgrid[-5:6, -5:6]
        cx.append(x + (w * gx).sum() / w.sum())
        cy.append(y + (w * gy).sum() / w.sum())
    return pd.DataFrame({"ref_id": np.arange(1, len(cx) + 1), "aperture_x": cx,
                         "aperture_y": cy, "aperture_a": 8.0, "aperture_b": 8.0,
                         "aperture_theta": 0.0})


def _centroid(img: np.ndarray, x: float, y: float, r: int = 5) -> tuple[float, float]:
    """Flux-weighted centroid in a (2r+1)² box centred on the nearest pixel (0-based px)."""
    ix, iy = round(x), round(y)
    cut = img[iy - r:iy + r + 1, ix - r:ix + r + 1]
    w = np.clip(cut - np.median(img), 0, None)
    gy, gx = np.mgrid[-r:r + 1, -r:r + 1]
    return ix + (w * gx).sum() / w.sum(), iy + (w * gy).sum() / w.sum()


@pytest.mark.real_data
def test_a_catalogue_of_one_saao_exposure_is_measured_on_the_other(
        real_data_dir, two_saao_frames, tmp_path, capsys):
    """Two real SAAO exposures without a WCS, a CSV of star apertures measured on the first
    (named by its FITS file name): the second is registered to it, the apertures land on
    the stars there (centroids within 0.15 px), and the two exposures' fluxes of each star
    differ by one transparency factor (scatter ≤ 3 %), which the comparison's relative
    zero-points (uncalibrated frames: on by default) take out: the two scales' ratio is the
    stars' median flux ratio, and σ68 of Δf falls; pairs without a magnitude bin are said.
    Without input.catalogue_frame the run stops after the ingest, saying what to set;
    neighbour masks that cover the background annuli are named in the photometry's line."""
    first = sorted(two_saao_frames.iterdir())[0]
    cat = _saao_stars(first)
    assert len(cat) >= 20
    path = tmp_path / "stars.csv"
    cat.to_csv(path, index=False)
    config = Path(__file__).resolve().parents[2] / "configs" / "saao.yaml"
    base = ["run", "--config", str(config), "--cluster", "threads",
            "--stages", "ingest,photometry,compare",
            "--set", f"input.fits_path={two_saao_frames}",
            "--set", f"input.catalogue={path}", "--set", "photometry.kinds=[raw]",
            "--set", "photometry.aperture_units=pixel", "--set", "photometry.errors=annulus",
            "--set", "photometry.profile=false"]
    assert main([*base, "--out", str(tmp_path / "unnamed")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "gives pixel positions only" in err and "set input.catalogue_frame" in err
    out = tmp_path / "run"
    assert main([*base, "--out", str(out), "--set",
                 f"input.catalogue_frame={first.name}"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert (f"image catalogue of frame 00000001_01: {2 * len(cat)} rows on 2 frame(s) "
            "(1 registered to it by cross-correlation)") in printed
    phot = read_photometry(out / "photometry")
    one = phot[phot["expnum"] == 1].set_index("ref_id").sort_index()
    two = phot[phot["expnum"] == 2].set_index("ref_id").sort_index()
    np.testing.assert_allclose(one["x"], cat["aperture_x"], atol=1e-6)
    img2 = np.asarray(st.open_frame(out / "store.zarr", "00000002_01", "image"), float)
    found = np.array([_centroid(img2, x, y) for x, y in zip(two["x"], two["y"], strict=True)])
    miss = np.hypot(found[:, 0] - two["x"], found[:, 1] - two["y"])
    print(f"centroid offsets median {np.median(miss):.3f} px")
    assert np.median(miss) < 0.15
    good = (one["flags"] == 0) & (two["flags"] == 0)
    ratio = (two["flux"] / one["flux"])[good]
    assert good.sum() >= 15
    print(f"{good.sum()} stars, flux ratio {np.median(ratio):.3f} ± "
          f"{np.std(ratio / np.median(ratio)):.4f}")
    assert np.std(ratio / np.median(ratio)) < 0.03, ratio.to_numpy()
    scales = pd.read_csv(out / "compare" / "relative_zp.csv").set_index("expnum")["scale"]
    assert abs(scales[2] / scales[1] / np.median(ratio) - 1) < 0.01
    assert "exposures put on one flux scale (relative zero-points of 2 frames" in printed
    # the CSV has no magnitudes: no pair falls in a magnitude bin, and the line says so
    assert "pairs outside compare.bins 17–23 (no I_auto: set input.catalogue_magnitude)" \
        in printed
    on = json.loads((out / "compare" / "summary.json").read_text())["sigma68_raw"]
    assert main([*base, "--out", str(out), "--set", f"input.catalogue_frame={first.name}",
                 "--set", "compare.relative_zp=off"]) == EXIT_OK
    assert not (out / "compare" / "relative_zp.csv").exists()
    off = json.loads((out / "compare" / "summary.json").read_text())["sigma68_raw"]
    assert off > 3 * on, (on, off)
    # neighbour masks that cover the annuli: the photometry's line says so and what to change
    assert main([*base, "--out", str(out), "--set", f"input.catalogue_frame={first.name}",
                 "--stages", "photometry", "--set", "photometry.annulus_mask_grow=40"]) == EXIT_OK
    said = capsys.readouterr().out
    assert "raw measurements flagged FEW_ANNULUS" in said
    assert "need a smaller value (e.g. 20)" in said  # smaller than the one given


@pytest.mark.real_data
def test_a_pixel_catalogue_of_one_decam_cutout_lands_on_the_others_through_their_wcs(
        decam_config, tmp_path, capsys):
    """The galaxy at the centre of the first real DECam cutout, given in its pixels, is
    placed on all 8 cutouts (three bands, two CCDs) where their WCSs put its sky position.
    The cutouts are smaller than the background annulus: the photometry's line says so
    (not the neighbour masks), and the comparison that all measurements are flagged."""
    image = sorted(Path("data/real/decam-multiepoch").glob("*_ooi_*.fits"))[0]
    cat = pd.DataFrame({"ref_id": [1], "aperture_x": [21.0], "aperture_y": [27.0],
                        "aperture_a": [4.0], "aperture_b": [3.0], "aperture_theta": [30.0]})
    path = tmp_path / "galaxy.csv"
    cat.to_csv(path, index=False)
    out = tmp_path / "decam"
    base = ["run", "--config", str(decam_config), "--out", str(out), "--cluster", "threads",
            "--set", f"input.catalogue={path}", "--set", f"input.catalogue_frame={image.name}",
            "--set", "photometry.kinds=[raw]", "--set", "photometry.aperture_units=pixel"]
    assert main([*base, "--stages", "ingest,photometry,compare"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "rows on 8 frame(s)" in printed
    assert "no unflagged measurement to compare" in printed  # ANNULUS_OFF_IMAGE everywhere
    phot = read_photometry(out / "photometry")
    assert len(phot) == 8
    with fits.open(image) as hdul:
        ra, dec = WCS(hdul[1].header).all_pix2world([[21.0, 27.0]], 0)[0]
    store = out / "store.zarr"
    for _, row in phot.iterrows():
        frame = st.frame_id(int(row["expnum"]), int(row["ccd"]))
        x, y = st.frame_wcs(store, frame).celestial.all_world2pix([[ra, dec]], 0)[0]
        assert abs(row["x"] - x) < 1e-4 and abs(row["y"] - y) < 1e-4
    # without the off-image flag, too few annulus pixels: the cause named is the frame size
    assert main([*base, "--stages", "photometry", "--set", "photometry.min_annulus_fraction=0",
                 "--set", "photometry.min_annulus_pixels=2000"]) == EXIT_OK
    assert "frames of 51 x 41 px are smaller than the background annulus" \
        in capsys.readouterr().out
