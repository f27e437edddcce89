"""SExtractor's own catalogues (ASCII_HEAD, FITS_LDAC) as reference catalogues: the same sky
catalogue of Kron ellipses from either, a clear refusal of pixel-only ones (the real NTT
catalogue), and forced photometry through the command line on the real DECam frames."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from pausdenoise.cli import EXIT_OK, main
from pausdenoise.photometry import CatalogueError, PhotFlag, read_photometry
from pausdenoise.photometry.catalogue import (
    catalogue_format,
    read_any_catalogue,
    validate_sky_catalogue,
)

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
    params = [q for q in _PARAMS if q[0] in src]
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


def test_a_catalogue_without_world_positions_or_kron_radius_is_refused(tmp_path):
    src = _sources()
    del src["KRON_RADIUS"]
    with pytest.raises(CatalogueError, match=r"\[KRON_RADIUS\].*without \['KRON_RADIUS'\]"):
        read_any_catalogue(_write_ascii_head(
            src, tmp_path / "nokron.cat"))


@pytest.mark.real_data
def test_the_real_pixel_only_ntt_catalogue_is_refused_with_what_to_do(real_data_dir):
    """SExtractor's catalogue of the NTT frame has pixel positions only: refused, naming
    the world columns to add and the 1-based pixels of a per-frame table."""
    cat = real_data_dir / "ntt-emmi-sextractor" / "image.cat"
    if not cat.is_file():
        pytest.skip(f"{cat} not present")
    assert catalogue_format(cat) == "SExtractor ASCII_HEAD"
    with pytest.raises(CatalogueError) as info:
        read_any_catalogue(cat)
    text = str(info.value)
    assert str(cat) in text and "ALPHA_J2000" in text and "A_WORLD" in text
    assert "aperture_x = X_IMAGE - 1" in text


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
