"""SExtractor's own catalogues (ASCII_HEAD, FITS_LDAC) as reference catalogues: the same sky
catalogue of Kron ellipses from either; pixel-only ones as image catalogues of one frame
(the real NTT catalogue, its FLUX_AUTO reproduced through the command line); forced
photometry through the command line on the real DECam frames."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from pausdenoise.cli import EXIT_OK, EXIT_USAGE, main
from pausdenoise.photometry import CatalogueError, PhotFlag, read_photometry
from pausdenoise.photometry.catalogue import (
    catalogue_format,
    check_catalogue_file,
    is_image_catalogue,
    is_sky_catalogue,
    read_any_catalogue,
    validate_sky_catalogue,
)
from pausdenoise.photometry.sextractor import read_sextractor

#: (name, description, unit, width of a vector column)
_PARAMS = [("NUMBER", "Running object number", "", 1),
           ("ALPHA_J2000", "Right ascension of barycenter (J2000)", "deg", 1),
           ("DELTA_J2000", "Declination of barycenter (J2000)", "deg", 1),
           ("A_WORLD", "Profile RMS along major axis (world units)", "deg", 1),
           ("B_WORLD", "Profile RMS along minor axis (world units)", "deg", 1),
           ("THETA_J2000", "Position angle (east of north) (J2000)", "deg", 1),
           ("KRON_RADIUS", "Kron apertures in units of A or B", "", 1),
           ("FLUX_APER", "Flux vector within fixed circular aperture(s)", "count", 2),
           ("MAG_AUTO", "Kron-like elliptical aperture magnitude", "mag", 1),
           ("FLAGS", "Extraction flags", "", 1)]


def _sources(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"NUMBER": np.arange(1, n + 1), "ALPHA_J2000": 150.0 + rng.uniform(0, 0.01, n),
            "DELTA_J2000": 2.0 + rng.uniform(0, 0.01, n),
            "A_WORLD": rng.uniform(1, 3, n) / 3600, "B_WORLD": rng.uniform(0.5, 1, n) / 3600,
            "THETA_J2000": rng.uniform(-90, 90, n), "KRON_RADIUS": np.r_[3.5, 4.0, 0.0, 5.0,
                                                                          3.5][:n],
            "FLUX_APER": rng.uniform(100, 1000, (n, 2)), "MAG_AUTO": rng.uniform(18, 23, n),
            "FLAGS": np.r_[0, 0, 2, 0, 16][:n]}


def _write_ascii_head(src: dict[str, np.ndarray], path: Path) -> Path:
    """Write the columns as SExtractor writes CATALOG_TYPE ASCII_HEAD."""
    lines, k = [], 1
    known = {q[0]: q for q in [*_PIXEL_PARAMS, *_PARAMS]}  # _PARAMS' descriptions first
    params = [known[name] for name in src]
    for name, what, unit, width in params:
        lines.append(f"#{k:4d} {name:<22s} {what:<58s}" + (f" [{unit}]" if unit else ""))
        k += width
    for i in range(len(src["NUMBER"])):
        row = []
        for name, *_ in params:
            v = np.atleast_1d(src[name][i])
            row += [f"{x:d}" if name in ("NUMBER", "FLAGS") else f"{x:.10g}" for x in v]
        lines.append(" ".join(row))
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def _write_ldac(src: dict[str, np.ndarray], path: Path) -> Path:
    """Write the columns as SExtractor writes CATALOG_TYPE FITS_LDAC."""
    head = fits.Header({"NAXIS": 2, "NAXIS1": 64, "NAXIS2": 64}).tostring()
    imhead = fits.BinTableHDU.from_columns(
        [fits.Column("Field Header Card", f"{len(head)}A", array=np.array([head]))],
        name="LDAC_IMHEAD")
    objects = fits.BinTableHDU(Table(src), name="LDAC_OBJECTS")
    fits.HDUList([fits.PrimaryHDU(), imhead, objects]).writeto(path)
    return path


def test_ascii_head_and_ldac_give_the_same_sky_catalogue_of_kron_ellipses(tmp_path):
    src = _sources()
    paths = [_write_ascii_head(src, tmp_path / "stack.cat"),
             _write_ascii_head(src, tmp_path / "stack.txt.gz"),
             _write_ldac(src, tmp_path / "stack.ldac.fits"),
             _write_ldac(src, tmp_path / "stack_ldac.cat")]
    assert [catalogue_format(p) for p in paths] == [
        "SExtractor ASCII_HEAD", "SExtractor ASCII_HEAD", "SExtractor FITS_LDAC",
        "SExtractor FITS_LDAC"]
    cats = [read_any_catalogue(p) for p in paths]
    ref = cats[0]
    assert list(ref.columns[:6]) == ["ref_id", "ra", "dec", "a", "b", "theta"]
    np.testing.assert_array_equal(ref["ref_id"], src["NUMBER"])
    np.testing.assert_allclose(ref["a"], src["KRON_RADIUS"] * src["A_WORLD"] * 3600, rtol=1e-9)
    np.testing.assert_allclose(ref["b"], src["KRON_RADIUS"] * src["B_WORLD"] * 3600, rtol=1e-9)
    np.testing.assert_allclose(ref["theta"], src["THETA_J2000"], rtol=1e-9)
    np.testing.assert_allclose(ref["FLUX_APER_1"], src["FLUX_APER"][:, 1], rtol=1e-9)
    assert {"MAG_AUTO", "FLAGS", "FLUX_APER"} <= set(ref.columns)
    # KRON_RADIUS 0 (SExtractor could not measure it): zero axes, flagged, not measured
    check = validate_sky_catalogue(ref)
    assert set(check.issues["ref_id"]) == {3}
    assert check.row_flags[2] & PhotFlag.BAD_INPUT and not check.row_flags[[0, 1, 3, 4]].any()
    for other in cats[1:]:
        pd.testing.assert_frame_equal(other[ref.columns].astype(float),
                                      ref.astype(float), rtol=1e-9)
    # the reader takes a path as a string too (ASCII_HEAD, compressed)
    pd.testing.assert_frame_equal(read_sextractor(str(paths[1])), read_sextractor(paths[1]))


def test_a_catalogue_without_world_positions_or_kron_radius_is_refused(tmp_path):
    src = _sources()
    del src["KRON_RADIUS"]
    with pytest.raises(CatalogueError, match=r"\[KRON_RADIUS\].*without \['KRON_RADIUS'\]"):
        read_any_catalogue(_write_ascii_head(
            src, tmp_path / "nokron.cat"))


_PIXEL_PARAMS = [("NUMBER", "Running object number", "", 1),
                 ("X_IMAGE", "Object position along x", "pixel", 1),
                 ("Y_IMAGE", "Object position along y", "pixel", 1),
                 ("X2_IMAGE", "Variance along x", "pixel**2", 1),
                 ("Y2_IMAGE", "Variance along y", "pixel**2", 1),
                 ("XY_IMAGE", "Covariance between x and y", "pixel**2", 1),
                 ("A_IMAGE", "Profile RMS along major axis", "pixel", 1),
                 ("B_IMAGE", "Profile RMS along minor axis", "pixel", 1),
                 ("THETA_IMAGE", "Position angle (CCW/x)", "deg", 1),
                 ("KRON_RADIUS", "Kron apertures in units of A or B", "", 1)]


def test_pixel_positions_become_an_image_catalogue_of_kron_ellipses(tmp_path):
    """Pixel positions only: 0-based centres, Kron semi-axes in pixels, the PAUS angle;
    A, B, THETA from the second moments when the catalogue lacks them."""
    # x2, y2, xy -> A, B, theta: (4, 1, 0) -> 2, 1, 0°; (2.5, 2.5, 1.5) -> 2, 1, 45°;
    # (1, 4, 0) -> 2, 1, 90°; (2.5, 2.5, -1.5) -> 2, 1, -45°
    moments = {"NUMBER": np.arange(1, 5), "X_IMAGE": np.array([1.0, 10.5, 20.0, 30.0]),
               "Y_IMAGE": np.array([1.0, 5.0, 7.25, 9.0]),
               "X2_IMAGE": np.array([4.0, 2.5, 1.0, 2.5]),
               "Y2_IMAGE": np.array([1.0, 2.5, 4.0, 2.5]),
               "XY_IMAGE": np.array([0.0, 1.5, 0.0, -1.5]),
               "KRON_RADIUS": np.array([3.0, 2.5, 4.0, 0.0])}
    cat = read_any_catalogue(_write_ascii_head(moments, tmp_path / "image.cat"))
    assert is_image_catalogue(cat) and not is_sky_catalogue(cat)
    assert list(cat.columns[:6]) == ["ref_id", "aperture_x", "aperture_y", "aperture_a",
                                     "aperture_b", "aperture_theta"]
    np.testing.assert_allclose(cat["aperture_x"], moments["X_IMAGE"] - 1)
    np.testing.assert_allclose(cat["aperture_y"], moments["Y_IMAGE"] - 1)
    np.testing.assert_allclose(cat["aperture_a"], moments["KRON_RADIUS"] * 2.0)
    np.testing.assert_allclose(cat["aperture_b"], moments["KRON_RADIUS"] * 1.0)
    # photutils' angle (counter-clockwise from +x) = THETA_IMAGE = -aperture_theta
    np.testing.assert_allclose(cat["aperture_theta"], [-0.0, -45.0, -90.0, 45.0], atol=1e-9)
    check = check_catalogue_file(tmp_path / "image.cat")
    assert check.image and not check.sky and set(check.issues["ref_id"]) == {4}  # Kron 0
    # given axes and angle are used as they are
    given = {**moments, "A_IMAGE": np.full(4, 3.0), "B_IMAGE": np.full(4, 2.0),
             "THETA_IMAGE": np.array([10.0, -20.0, 30.0, 89.0])}
    cat = read_any_catalogue(_write_ascii_head(given, tmp_path / "given.cat"))
    np.testing.assert_allclose(cat["aperture_a"], moments["KRON_RADIUS"] * 3.0)
    np.testing.assert_allclose(cat["aperture_theta"], -given["THETA_IMAGE"])
    # no shape at all: refused, naming what to add
    del moments["XY_IMAGE"]
    with pytest.raises(CatalogueError, match=r"pixel positions without \['A_IMAGE'\]"):
        read_any_catalogue(_write_ascii_head(moments, tmp_path / "noshape.cat"))


@pytest.mark.real_data
def test_the_real_pixel_only_ntt_catalogue_is_an_image_catalogue(real_data_dir):
    """SExtractor's catalogue of the NTT frame (pixel positions, second moments, A_IMAGE,
    KRON_RADIUS; no B or THETA): 65 Kron ellipses whose major axes, from the moments, are
    SExtractor's own A_IMAGE."""
    cat_path = real_data_dir / "ntt-emmi-sextractor" / "image.cat"
    if not cat_path.is_file():
        pytest.skip(f"{cat_path} not present")
    assert catalogue_format(cat_path) == "SExtractor ASCII_HEAD"
    cat = read_any_catalogue(cat_path)
    assert is_image_catalogue(cat) and len(cat) == 65
    kron = cat["KRON_RADIUS"].to_numpy()
    ok = kron > 0
    np.testing.assert_allclose(cat["aperture_a"][ok] / kron[ok], cat["A_IMAGE"][ok],
                               atol=1e-3)  # A_IMAGE is printed to 3 decimals
    assert (cat["aperture_b"] <= cat["aperture_a"]).all()
    np.testing.assert_allclose(cat["aperture_x"], cat["X_IMAGE"] - 1)
    check = check_catalogue_file(cat_path)
    assert check.image and list(check.issues["ref_id"]) == list(cat["ref_id"][~ok])


def _ntt_run(real_data_dir: Path, out: Path, *extra: str) -> int:
    ntt = real_data_dir / "ntt-emmi-sextractor"
    return main(["run", "--out", str(out), "--cluster", "threads",
                 "--stages", "ingest,photometry",
                 "--set", "input.source=fits", "--set", f"input.fits_path={ntt / 'image.fits'}",
                 "--set", f"input.catalogue={ntt / 'image.cat'}",
                 "--set", "ingest.layout=generic", "--set", "ingest.expnum_from=order",
                 "--set", "ingest.defaults={band: R, ccd: 1, zp: 1.0, zp_err: 0.0, gain: 1.0}",
                 "--set", "photometry.kinds=[raw]", *extra])


@pytest.mark.real_data
def test_forced_photometry_in_sextractor_s_kron_ellipses_gives_its_flux_auto(
        real_data_dir, tmp_path, capsys):
    """The real NTT frame measured through the command line in the Kron ellipses of its own
    SExtractor catalogue (pixel positions only): the fluxes are SExtractor's FLUX_AUTO
    (the four of highest S/N within 1.5 %, every unflagged source above S/N 20 within 10 %,
    median within −1 % .. +3 %: our local annulus background against SExtractor's mesh),
    with errors of the same size; the axes in arcsec (the default units) measure the same
    ellipses as in pixels. With one exposure the comparison writes its (empty) summary and
    says why."""
    ntt = real_data_dir / "ntt-emmi-sextractor"
    if not (ntt / "image.fits").is_file():
        pytest.skip(f"{ntt} not present")
    runs, printed = {}, {}
    for units, extra in (("pixel", ("--set", "photometry.aperture_units=pixel",
                                    "--stages", "ingest,photometry,compare")),
                         ("arcsec", ("--set", "photometry.pixel_scale=0.5"))):
        assert _ntt_run(real_data_dir, tmp_path / units, *extra) == EXIT_OK
        printed[units] = capsys.readouterr().out
        assert "image catalogue of frame 00000001_01: 65 rows on 1 frame(s)" in printed[units]
        runs[units] = read_photometry(tmp_path / units / "photometry")
    # one exposure: the comparison says why it has nothing to say
    assert "0 pairs: no source is measured in two exposures of one band" in printed["pixel"]
    assert (tmp_path / "pixel" / "compare" / "summary.json").is_file()
    phot = runs["pixel"]
    np.testing.assert_allclose(runs["arcsec"]["flux"], phot["flux"], rtol=1e-9)
    sex = read_any_catalogue(ntt / "image.cat")
    m = phot.merge(sex[["ref_id", "FLUX_AUTO", "FLUXERR_AUTO", "FLAGS"]], on="ref_id")
    assert len(m) == 65
    good = m[(m["FLAGS"] == 0) & (m["flags"] == 0) & (m["FLUX_AUTO"] > 20 * m["FLUXERR_AUTO"])]
    assert len(good) >= 15
    ratio = (good["flux"] / good["FLUX_AUTO"]).to_numpy()
    sharpest = np.argsort(-(good["FLUX_AUTO"] / good["FLUXERR_AUTO"]).to_numpy())[:4]
    assert np.all(np.abs(ratio[sharpest] - 1) < 0.015), ratio[sharpest]
    assert np.all(np.abs(ratio - 1) < 0.10), ratio
    assert 0.99 <= np.median(ratio) <= 1.03
    assert 0.9 <= np.median(good["flux_err"] / good["FLUXERR_AUTO"]) <= 1.15


@pytest.mark.real_data
def test_sextractor_s_mag_auto_becomes_the_binning_magnitude_through_the_command_line(
        real_data_dir, tmp_path, capsys):
    """``input.catalogue_magnitude=MAG_AUTO``: the photometry's I_auto is SExtractor's
    magnitude; a column the catalogue lacks stops the run before any work."""
    ntt = real_data_dir / "ntt-emmi-sextractor"
    if not (ntt / "image.fits").is_file():
        pytest.skip(f"{ntt} not present")
    sex = read_any_catalogue(ntt / "image.cat")
    flux = sex["FLUX_AUTO"].to_numpy()
    mag = np.where(flux > 0, 25.0 - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), 99.0)
    cols = ["NUMBER", "X_IMAGE", "Y_IMAGE", "X2_IMAGE", "Y2_IMAGE", "XY_IMAGE",
            "KRON_RADIUS"]
    src = {c: sex["ref_id" if c == "NUMBER" else c].to_numpy() for c in cols}
    cat = _write_ascii_head({**src, "MAG_AUTO": mag}, tmp_path / "image_mag.cat")
    base = ["run", "--out", str(tmp_path / "run"), "--cluster", "threads",
            "--stages", "ingest,photometry", "--set", "input.source=fits",
            "--set", f"input.fits_path={ntt / 'image.fits'}", "--set", f"input.catalogue={cat}",
            "--set", "ingest.layout=generic", "--set", "ingest.expnum_from=order",
            "--set", "ingest.defaults={band: R, ccd: 1, zp: 1.0, zp_err: 0.0, gain: 1.0}",
            "--set", "photometry.kinds=[raw]"]
    assert main([*base, "--set", "input.catalogue_magnitude=MAG_APER"]) == EXIT_USAGE
    assert "input.catalogue_magnitude 'MAG_APER' is not a column" in capsys.readouterr().err
    assert not (tmp_path / "run" / "store.zarr").exists()
    assert main([*base, "--set", "input.catalogue_magnitude=MAG_AUTO"]) == EXIT_OK
    phot = read_photometry(tmp_path / "run" / "photometry").sort_values("ref_id")
    np.testing.assert_allclose(phot["I_auto"], mag, rtol=1e-9)


@pytest.mark.real_data
@pytest.mark.parametrize("stages", ["ingest,train,denoise,photometry",
                                    "ingest,train,denoise,evaluate"])
def test_an_image_catalogue_of_an_unnamed_frame_stops_the_run_before_training(
        real_data_dir, two_saao_frames, tmp_path, capsys, stages):
    """Pixel positions belong to one image: with two frames in the store and no
    input.catalogue_frame the run stops right after the ingest, saying what to set, before
    any training; also when only the evaluation (which masks the catalogue's sources) would
    read the catalogue."""
    cat, frames = real_data_dir / "ntt-emmi-sextractor", two_saao_frames
    if not cat.is_dir():
        pytest.skip(f"{cat} not present")
    out = tmp_path / "out"
    config = Path(__file__).resolve().parents[2] / "configs" / "saao.yaml"
    code = main(["run", "--config", str(config), "--out", str(out), "--cluster", "threads",
                 "--stages", stages, "--set", f"input.fits_path={frames}",
                 "--set", f"input.catalogue={cat / 'image.cat'}"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "gives pixel positions only" in err and "the store has 2 frames" in err
    assert "set input.catalogue_frame" in err
    assert not (out / "model").exists()


@pytest.mark.real_data
def test_forced_photometry_of_the_real_decam_frames_from_a_sextractor_catalogue(
        decam_config, tmp_path):
    """The galaxy at the centre of the DECam cutouts, in a SExtractor catalogue of world
    positions (as from a detection on a stack), is measured raw in all 8 exposures through
    the command line; the source off the cutouts is placed on none."""
    out = tmp_path / "decam"
    assert main(["ingest", "--config", str(decam_config), "--out", str(out)]) == EXIT_OK
    image = sorted(Path("data/real/decam-multiepoch").glob("*_ooi_*.fits"))[0]
    with fits.open(image) as hdul:
        wcs = WCS(hdul[1].header)
    ra, dec = wcs.all_pix2world([[21.0, 27.0]], 0)[0]
    src = {k: v[:2] for k, v in _sources(2).items()}
    src["ALPHA_J2000"] = np.array([ra, ra + 0.1])
    src["DELTA_J2000"] = np.array([dec, dec])
    cat = _write_ascii_head(src, tmp_path / "stack.cat")
    assert main(["photometry", "--config", str(decam_config), "--out", str(out),
                 "--set", f"input.catalogue={cat}", "--set", "photometry.kinds=[raw]",
                 "--set", "photometry.aperture_units=arcsec"]) == EXIT_OK
    phot = read_photometry(out / "photometry")
    assert len(phot) == 8 and set(phot["ref_id"]) == {1}
    assert phot["expnum"].nunique() == 8
    assert np.isfinite(phot["flux"]).all() and (phot["flux"] > 0).all()
