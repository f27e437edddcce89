"""``pausdenoise export``: denoised and raw frames of a tiny run to FITS, read back with astropy.

The exported pixels must equal the store's float32 arrays bit for bit (compressed too), the
WCS must map pixels to the same sky positions as the frame's, and a rerun must skip what is
up to date while a frame without a denoised image makes the export partial (exit code 3).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from pipeline_fixtures import TINY

from pausdenoise import store as st
from pausdenoise.cli import EXIT_FAILURE, EXIT_LOCKED, EXIT_OK, EXIT_PARTIAL, main
from pausdenoise.export import KEY_CARD, header_from_text, image_hdu

PIXELS = np.array([[0.0, 0.0], [10.5, 3.0], [63.0, 100.0], [127.0, 127.0]])  # (x, y) 0-based


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny run through simulate, ingest, train and denoise (no photometry onwards)."""
    root = tmp_path_factory.mktemp("export")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = root / "out"
    code = main(["run", "--config", str(cfg), "--out", str(out),
                 "--stages", "simulate,ingest,train,denoise"])
    assert code == EXIT_OK
    return out


def _wcs(header: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a32, b32 = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return a32.shape == b32.shape and np.array_equal(a32.view(np.uint32), b32.view(np.uint32))


def _check_hdu(hdu, store: Path, frame: str, kind: str) -> None:
    """The HDU holds the store's array exactly, its WCS and the history of what was done."""
    name = "denoised" if kind == "denoised" else "image"
    assert hdu.data.dtype.kind == "f" and hdu.data.dtype.itemsize == 4
    assert _same_bits(hdu.data, st.open_frame(store, frame, name).compute())
    header = hdu.header
    assert header["BUNIT"] == "adu" and header["PDKIND"] == kind and header["PDFRAME"] == frame
    world = _wcs(header).pixel_to_world(PIXELS[:, 0], PIXELS[:, 1])
    expected = st.frame_wcs(store, frame).pixel_to_world(PIXELS[:, 0], PIXELS[:, 1])
    assert np.all(world.separation(expected).to_value("arcsec") < 1e-6)
    history = "\n".join(str(h) for h in header["HISTORY"])
    assert "pausdenoise" in history
    if kind == "denoised":
        den = dict(st.open_store(store)[f"frames/{frame}/denoised"].attrs)
        assert header["PDMODEL"] == den["model_fingerprint"]
        assert den["model_fingerprint"] in history and den["denoise_key"] in history
        assert f"{den['halo']} px halo" in history and den["precision"] in history


def test_exposure_layout_is_exact_with_wcs_and_history(run_dir, capsys):
    to = run_dir.parent / "exp-exposure"
    assert main(["export", "--out", str(run_dir), "--to", str(to)]) == EXIT_OK
    store = run_dir / "store.zarr"
    frames = st.list_frames(store)
    assert sorted(p.name for p in to.iterdir()) == sorted(
        f"{st.parse_frame_id(f)[0]:08d}_denoised.fits" for f in frames)
    for frame in frames:
        expnum, ccd = st.parse_frame_id(frame)
        with fits.open(to / f"{expnum:08d}_denoised.fits") as hdul:
            assert hdul[0].data is None and hdul[0].header[KEY_CARD]
            _check_hdu(hdul[f"CCD{ccd:02d}"], store, frame, "denoised")
    assert capsys.readouterr().out.count("written") == len(frames) + 1  # + the summary


def test_frame_layout_both_kinds(run_dir):
    to = run_dir.parent / "exp-frame"
    assert main(["export", "--out", str(run_dir), "--to", str(to), "--layout", "frame",
                 "--kind", "both"]) == EXIT_OK
    store = run_dir / "store.zarr"
    for frame in st.list_frames(store):
        for kind in ("denoised", "raw"):
            with fits.open(to / f"{frame}_{kind}.fits") as hdul:
                assert len(hdul) == 1 and hdul[0].header[KEY_CARD]
                _check_hdu(hdul[0], store, frame, kind)


@pytest.mark.parametrize("layout", ["exposure", "frame"])
def test_compress_round_trips_exactly(run_dir, layout):
    to = run_dir.parent / f"exp-fz-{layout}"
    assert main(["export", "--out", str(run_dir), "--to", str(to), "--layout", layout,
                 "--compress", "--kind", "both"]) == EXIT_OK
    store = run_dir / "store.zarr"
    for frame in st.list_frames(store):
        expnum, ccd = st.parse_frame_id(frame)
        for kind in ("denoised", "raw"):
            stem = f"{expnum:08d}_{kind}" if layout == "exposure" else f"{frame}_{kind}"
            with fits.open(to / f"{stem}.fits.fz") as hdul:
                hdu = hdul[f"CCD{ccd:02d}"]
                assert isinstance(hdu, fits.CompImageHDU)
                _check_hdu(hdu, store, frame, kind)


def test_rerun_skips_and_force_rewrites(run_dir, capsys):
    to = run_dir.parent / "exp-rerun"
    args = ["export", "--out", str(run_dir), "--to", str(to)]
    assert main(args) == EXIT_OK
    before = {p.name: p.stat().st_mtime_ns for p in to.iterdir()}
    capsys.readouterr()
    assert main(args) == EXIT_OK
    out = capsys.readouterr().out
    assert out.count("up to date, skipped") == len(before)
    assert {p.name: p.stat().st_mtime_ns for p in to.iterdir()} == before
    assert main([*args, "--force"]) == EXIT_OK
    assert capsys.readouterr().out.count("up to date, skipped") == 0
    assert not list(to.glob(".*.tmp"))  # no temporary file left behind


def test_frame_without_denoised_is_partial(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(run_dir / "store.zarr", out / "store.zarr")
    store = out / "store.zarr"
    frames = st.list_frames(store)
    shutil.rmtree(store / "frames" / frames[0] / "denoised")
    capsys.readouterr()
    assert main(["export", "--out", str(out), "--layout", "frame"]) == EXIT_PARTIAL
    text = capsys.readouterr().out
    assert f"skipped {frames[0]}: no complete denoised array" in text
    names = {p.name for p in (out / "export").iterdir()}
    assert names == {f"{f}_denoised.fits" for f in frames[1:]}
    assert main(["export", "--out", str(out), "--kind", "raw"]) == EXIT_OK


def test_locked_run_directory_is_refused(run_dir, tmp_path):
    lock = run_dir / ".lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    try:
        code = main(["export", "--out", str(run_dir), "--to", str(tmp_path / "x")])
    finally:
        lock.unlink()
    assert code == EXIT_LOCKED and not (tmp_path / "x").exists()


def test_no_store_fails(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "nothing")]) == EXIT_FAILURE
    assert "no survey store" in capsys.readouterr().err


def test_header_from_text_merges_and_drops_structure():
    primary = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True),
                           ("TELESCOP", "WHT"), ("GAIN", 1.0)])
    ext = fits.Header([("XTENSION", "IMAGE"), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", 4),
                       ("NAXIS2", 3), ("PCOUNT", 0), ("GCOUNT", 1), ("BZERO", 0.0),
                       ("EXTNAME", "CCD01"), ("GAIN", 3.5), ("ZP", 0.01)])
    ext.add_history("flat-fielded")
    merged = header_from_text(primary.tostring() + ext.tostring())
    assert list(merged.keys()) == ["TELESCOP", "GAIN", "ZP", "HISTORY"]
    assert merged["GAIN"] == 3.5 and merged["TELESCOP"] == "WHT"


def test_compressed_hdu_keeps_nan_inf_bits(tmp_path):
    data = np.random.default_rng(0).normal(300, 30, (40, 24)).astype(np.float32)
    data[1, 2], data[3, 4], data[5, 6] = np.nan, np.inf, -0.0
    hdu = image_hdu(data, fits.Header([("BUNIT", "adu")]), name="CCD03", compress=True)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "x.fits.fz")
    with fits.open(tmp_path / "x.fits.fz") as hdul:
        assert _same_bits(hdul["CCD03"].data, data)
    with pytest.raises(ValueError, match="primary"):
        image_hdu(data, fits.Header(), primary=True, compress=True)
