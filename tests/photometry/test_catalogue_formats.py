"""Reference catalogues as Parquet, CSV and FITS tables: the same rows, the same photometry,
the same error messages (file, column, 0-based row); and refused before any work."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from pausdenoise.cli import EXIT_USAGE, main
from pausdenoise.photometry import CatalogueError, PhotometryConfig, measure_frame, read_catalogue
from pausdenoise.photometry.catalogue import catalogue_format, read_any_catalogue

ROOT = Path(__file__).resolve().parents[2]


def _cat(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({
        "ref_id": np.arange(10, 10 + n, dtype=np.int64), "ra": np.linspace(150.0, 150.01, n),
        "dec": 2.0, "I_auto": np.linspace(18.0, 22.0, n), "expnum": np.int64(1000),
        "ccd": np.int64(1), "band": "NB455",
        "aperture_x": np.linspace(20.0, 80.0, n), "aperture_y": np.linspace(30.0, 70.0, n),
        "aperture_a": 2.0, "aperture_b": 1.5, "aperture_theta": np.linspace(-80.0, 80.0, n),
    })


def _write(df: pd.DataFrame, path: Path) -> Path:
    fmt = catalogue_format(path)
    if fmt == "CSV":
        df.to_csv(path, index=False)
    elif fmt == "FITS":
        Table.from_pandas(df).write(path, format="fits", overwrite=True)
    else:
        df.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("name", ["cat.csv", "cat.csv.gz", "cat.fits", "cat.fit", "cat.fits.gz"])
def test_csv_and_fits_read_as_parquet(tmp_path, name):
    ref = read_catalogue(_write(_cat(), tmp_path / "cat.parquet"))
    got = read_catalogue(_write(_cat(), tmp_path / name))
    pd.testing.assert_frame_equal(got, ref)
    image = np.random.default_rng(1).normal(100.0, 5.0, (100, 100)).astype(np.float32)
    cfg = PhotometryConfig(annulus_r_in=8.0, annulus_r_out=14.0, min_annulus_pixels=10)
    a = measure_frame(image, None, ref, cfg, gain=1.0)
    b = measure_frame(image, None, got, cfg, gain=1.0)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("name", ["cat.csv", "cat.fits"])
def test_errors_name_file_column_and_row(tmp_path, name):
    df = _cat(3)
    df["aperture_x"] = ["1.5", "abc", "2"]
    path = _write(df, tmp_path / name)
    with pytest.raises(CatalogueError) as info:
        read_catalogue(path)
    assert str(info.value).startswith(str(path))
    assert "[aperture_x] row 1: value 'abc' is not a number" in str(info.value)
    path = _write(_cat(3).drop(columns=["aperture_b"]), tmp_path / name)
    with pytest.raises(CatalogueError, match=r"\[aperture_b\]: missing column"):
        read_catalogue(path)


def test_csv_duplicate_columns_refused(tmp_path):
    path = tmp_path / "cat.csv"
    _write(_cat(3), path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",aperture_x"] + [s + ",1.0" for s in lines[1:]]))
    with pytest.raises(CatalogueError, match=r"duplicate column name\(s\) \['aperture_x'\]"):
        read_catalogue(path)


@pytest.mark.parametrize(("name", "fmt"), [("cat.csv", "CSV"), ("cat.csv.gz", "CSV"),
                                           ("cat.fits", "FITS"), ("cat.fits.gz", "FITS")])
def test_unreadable_files_name_their_format(tmp_path, name, fmt):
    path = tmp_path / name
    path.write_bytes(b"\xff\xfe\x00garbage" * 10)
    with pytest.raises(CatalogueError, match=f"not a readable {fmt} table") as info:
        read_catalogue(path)
    assert str(path) in str(info.value)


def test_sky_catalogue_missing_column_is_explained(tmp_path):
    sky = _cat(3)[["ref_id", "ra", "dec", "I_auto"]].assign(a=1.0, b=0.5)
    path = _write(sky, tmp_path / "sky.csv")
    with pytest.raises(CatalogueError, match=r"\[theta\]: missing column.*sky catalogue"):
        read_any_catalogue(path)


@pytest.mark.parametrize(("edit", "text"), [
    (lambda p: p.write_bytes(b"PAR1 not parquet"), "not a readable Parquet table"),
    (lambda p: _write(_cat().drop(columns=["aperture_theta"]), p),
     "[aperture_theta]: missing column"),
    (lambda p: _write(_cat().assign(ref_id=["1", "2", "x", "4", "5", "6"]), p),
     "[ref_id] row 2: value 'x' is not an integer"),
])
def test_bad_catalogue_refused_before_any_work(tmp_path, capsys, edit, text):
    """``pausdenoise run`` on the demo configuration (simulate, ingest, train first) with a
    bad catalogue: exit 2 within seconds, nothing written."""
    path = tmp_path / "cat.parquet"
    edit(path)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code = main(["run", "--config", str(ROOT / "configs" / "demo-fast.yaml"), "--out", str(out),
                 "--set", f"input.catalogue={path}"])
    assert code == EXIT_USAGE
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err
    assert "catalogue error" in err and str(path) in err and text in err
    assert not out.exists()


def test_radians_warn_before_any_work(tmp_path):
    cat = _cat(8).assign(aperture_theta=np.linspace(-1.3, 1.4, 8))
    path = _write(cat, tmp_path / "cat.csv")
    from pausdenoise.photometry.catalogue import check_catalogue_file

    with pytest.warns(UserWarning, match="look like radians"):
        check_catalogue_file(path)


def test_a_magnitude_column_of_the_user_s_is_taken_as_i_auto(tmp_path):
    """``input.catalogue_magnitude`` names the column the comparison bins by: taken as
    I_auto (replacing the catalogue's own), refused by name when absent or not numbers, and
    part of the photometry's fingerprint (a new column re-measures), not the denoise's."""
    from pausdenoise.config import PipelineConfig
    from pausdenoise.photometry.catalogue import check_catalogue_file, with_magnitude
    from pausdenoise.pipeline.runner import stage_fingerprints

    path = tmp_path / "sky.csv"
    pd.DataFrame({"ref_id": [1, 2, 3], "ra": [150.0, 150.1, 150.2], "dec": [2.0, 2.1, 2.2],
                  "a": [1.0, 1.0, 1.0], "b": [0.5, 0.5, 0.5], "theta": [0.0, 10.0, 20.0],
                  "I_auto": [30.0, 30.0, 30.0], "r_mag": [19.5, None, 21.25],
                  "note": ["a", "b", "c"]}).to_csv(path, index=False)
    cat = read_any_catalogue(path)
    assert with_magnitude(cat, None, path) is cat
    got = with_magnitude(cat, "r_mag", path)
    np.testing.assert_array_equal(got["I_auto"], [19.5, np.nan, 21.25])
    assert got["I_auto"].dtype == np.float64 and (cat["I_auto"] == 30.0).all()
    with pytest.raises(CatalogueError, match=r"catalogue_magnitude 'MAG_AUTO' is not a "
                                             r"column; it has \['ref_id'"):
        check_catalogue_file(path, "MAG_AUTO")
    with pytest.raises(CatalogueError, match=r"note.*row 0"):
        with_magnitude(cat, "note", path)
    assert check_catalogue_file(path, "r_mag").ok

    def fingerprints(magnitude):
        cfg = PipelineConfig.model_validate({"input": {
            "source": "fits", "fits_path": str(tmp_path), "catalogue": str(path),
            "catalogue_magnitude": magnitude}, "denoise": {"restore_catalogue": True}})
        return stage_fingerprints(cfg, ["photometry", "denoise"])

    fps = [fingerprints(m) for m in (None, "r_mag", "I_auto")]
    assert len({fp["photometry"] for fp in fps}) == 3  # re-measured with the new I_auto
    assert len({fp["denoise"] for fp in fps}) == 1  # the restoration does not bin
