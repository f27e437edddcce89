"""FITS → store ingest of bad input: every bad file fails on its own, named, and the store
keeps what it had (truncation, non-FITS, shapes, missing keywords and companions,
duplicates)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from ingest_cases import SHAPE, make_paus_dir, small_config, write_paus_frame

from pausdenoise import paus_layout
from pausdenoise import store as st
from pausdenoise.ingest import EXIT_FATAL, EXIT_OK, EXIT_PARTIAL, ingest


@pytest.fixture
def paus_dir(tmp_path):
    return make_paus_dir(tmp_path)


def _failed_for(report, name: str) -> str:
    reasons = [r for f, r in report.failed if Path(f).name == name]
    assert reasons, f"{name} not among failures: {report.failed}"
    assert name in reasons[0]
    return reasons[0]


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_bad_inputs_fail_individually(paus_dir, tmp_path):
    root, _ = paus_dir
    store = tmp_path / "s.zarr"
    # truncated FITS
    img = paus_layout.image_path(root, 201, 1)
    write_paus_frame(root, 201, 1)
    data = img.read_bytes()
    img.write_bytes(data[: len(data) - 4000])
    # non-FITS file with an image name
    write_paus_frame(root, 202, 1)
    paus_layout.image_path(root, 202, 1).write_bytes(b"this is not a FITS file\n" * 200)
    # image / mask shape mismatch
    write_paus_frame(root, 203, 1, mask_shape=(SHAPE[0] - 1, SHAPE[1]))
    # missing required header keyword
    write_paus_frame(root, 204, 1, drop=("ZPERR",))
    # shape that disagrees with the rest
    write_paus_frame(root, 205, 1, shape=(SHAPE[0] + 8, SHAPE[1]))
    # header EXPNUM disagreeing with the name
    write_paus_frame(root, 206, 1)
    with fits.open(paus_layout.image_path(root, 206, 1), mode="update") as h:
        h[0].header["EXPNUM"] = 207
    # image without its mask
    write_paus_frame(root, 208, 1)
    paus_layout.mask_path(root, 208, 1).unlink()

    report = ingest(root, store, small_config())
    assert report.exit_status == EXIT_PARTIAL
    assert report.ingested == ["00000101_01", "00000101_02", "00000102_01", "00000102_02"]
    assert "truncated" in _failed_for(report, "paucam.0000201.01.img.fits")
    assert "FITS" in _failed_for(report, "paucam.0000202.01.img.fits")
    reason = _failed_for(report, "paucam.0000203.01.msk.fits")
    assert "shape" in reason and "paucam.0000203.01.img.fits" in reason
    reason = _failed_for(report, "paucam.0000204.01.img.fits")
    assert "[ZPERR]" in reason and "missing" in reason
    reason = _failed_for(report, "paucam.0000205.01.img.fits")
    assert "shape" in reason and "disagrees" in reason
    assert "[EXPNUM]" in _failed_for(report, "paucam.0000206.01.img.fits")
    assert "msk" in _failed_for(report, "paucam.0000208.01.img.fits")
    assert len(report.failed) == 7
    assert st.list_frames(store, complete_only=False) == report.ingested


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_shape_disagreeing_with_store_and_existing_frame_kept(paus_dir, tmp_path):
    root, frames = paus_dir
    store = tmp_path / "s.zarr"
    assert ingest(root, store, small_config()).exit_status == EXIT_OK
    # a new directory whose frames all have another shape than the store's
    other = tmp_path / "other"
    write_paus_frame(other, 301, 1, shape=(64, 64))
    write_paus_frame(other, 301, 2, shape=(64, 64))
    report = ingest(other, store, small_config())
    assert report.exit_status == EXIT_FATAL
    reason = _failed_for(report, "paucam.0000301.01.img.fits")
    assert "(64, 64)" in reason and str(SHAPE) in reason
    # the existing frame's source goes bad: reported, and the stored frame is not lost
    img = paus_layout.image_path(root, 101, 1)
    img.write_bytes(img.read_bytes()[:5000])
    report = ingest(root, store, small_config())
    assert report.exit_status == EXIT_PARTIAL
    assert "truncated" in _failed_for(report, img.name)
    assert len(report.skipped) == 3
    assert st.is_complete(store, "00000101_01")
    np.testing.assert_array_equal(
        st.open_frame(store, "00000101_01").compute().view(np.uint32),
        frames[(101, 1)]["image"].view(np.uint32),
    )


def test_duplicate_expnum_ccd_fails_all_claimants(paus_dir, tmp_path):
    root, _ = paus_dir
    twin = tmp_path / "twin"
    write_paus_frame(twin, 101, 1, seed=5)
    store = tmp_path / "s.zarr"
    report = ingest([root, twin / "paucam.0000101.01.img.fits"], store, small_config())
    assert report.exit_status == EXIT_PARTIAL
    dup = [r for _, r in report.failed]
    assert len(dup) == 2 and all("duplicate" in r and "(101, 1)" in r for r in dup)
    assert {Path(f).parent for f, _ in report.failed} == {root, twin}
    assert report.ingested == ["00000101_02", "00000102_01", "00000102_02"]
    assert "00000101_01" not in st.list_frames(store, complete_only=False)


def test_nothing_ingested_is_exit_1(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "paucam.0000001.01.img.fits").write_text("garbage")
    report = ingest(bad, tmp_path / "s.zarr", small_config())
    assert report.exit_status == EXIT_FATAL and report.ingested == []
    empty = tmp_path / "empty"
    empty.mkdir()
    report = ingest(empty, tmp_path / "s.zarr", small_config())
    assert report.exit_status == EXIT_FATAL and report.fatal and "no image files" in report.fatal
