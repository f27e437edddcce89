"""PAUS layout with compressed files: ``.img.fits.gz`` / ``.img.fits.fz`` images and
``.msk.fits.gz`` / ``.msk.fits.fz`` masks ingest bit-identically to the plain layout, and two
versions of one image or mask are refused with both files named."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from astropy.io import fits
from ingest_cases import small_config, write_paus_frame

from pausdenoise import paus_layout
from pausdenoise import store as st
from pausdenoise.ingest import EXIT_OK, ingest

pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")

#: attributes that name the source files (and digests of them): expected to differ
SOURCE_ATTRS = {"source_image", "source_mask", "source_truth", "source_hdu",
                "source_fingerprint", "source_stat"}


def _fz(path: Path) -> Path:
    """Replace a primary-HDU FITS file by a lossless tile-compressed ``.fz`` copy."""
    out = path.with_name(path.name + ".fz")
    with fits.open(path) as h:
        comp = fits.CompImageHDU(h[0].data, header=h[0].header, compression_type="GZIP_2",
                                 quantize_level=0.0)
        fits.HDUList([fits.PrimaryHDU(), comp]).writeto(out)
    path.unlink()
    return out


def _gz(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    out.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return out


def _image_header(store: Path, fid: str) -> fits.Header:
    """The stored header of the image HDU (the last one: an extension's text follows the
    primary header's)."""
    text = st.read_header_text(store, fid)
    header = fits.Header.fromstring(text)
    rest = text[len(header.tostring()):]
    return fits.Header.fromstring(rest) if rest.strip() else header


@pytest.fixture
def layouts(tmp_path):
    """The same three frames plain (``plain/``) and compressed (``packed/``)."""
    plain = tmp_path / "plain"
    write_paus_frame(plain, 101, 1, truth=True)
    write_paus_frame(plain, 101, 2)
    write_paus_frame(plain, 102, 1)
    packed = tmp_path / "packed"
    shutil.copytree(plain, packed)
    _fz(paus_layout.image_path(packed, 101, 1))
    _gz(paus_layout.mask_path(packed, 101, 1))
    _gz(paus_layout.image_path(packed, 101, 2))
    _fz(paus_layout.mask_path(packed, 101, 2))
    _fz(paus_layout.image_path(packed, 102, 1))
    _fz(paus_layout.mask_path(packed, 102, 1))
    return plain, packed


def test_names_with_compression_endings_are_paus_images():
    for ending in ("", ".gz", ".fz"):
        assert paus_layout.parse_image_name(f"paucam.0000101.02.img.fits{ending}") == (101, 2)
    for bad in ("paucam.0000101.02.img.fits.fz.gz", "paucam.0000101.02.img.fits.bz2",
                "paucam.0000101.02.msk.fits.gz"):
        assert paus_layout.parse_image_name(bad) is None


def test_compressed_layout_ingests_bit_identically(layouts, tmp_path):
    plain, packed = layouts
    stores = {}
    for name, root in (("plain", plain), ("packed", packed)):
        stores[name] = tmp_path / f"{name}.zarr"
        report = ingest(root, stores[name], small_config())
        assert report.exit_status == EXIT_OK, report.summary()
        assert report.ingested == ["00000101_01", "00000101_02", "00000102_01"]
    a_store, b_store = stores["plain"], stores["packed"]
    for fid in st.list_frames(a_store):
        names = st.frame_arrays(a_store, fid)
        assert st.frame_arrays(b_store, fid) == names
        assert {"image", "mask"} <= set(names)
        for arr in set(names) & {"image", "mask", "truth"}:
            a = st.open_frame(a_store, fid, arr).compute()
            b = st.open_frame(b_store, fid, arr).compute()
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes(), (fid, arr)  # NaN payloads included
        attrs_a, attrs_b = st.frame_attrs(a_store, fid), st.frame_attrs(b_store, fid)
        assert set(attrs_a) == set(attrs_b)
        assert {k: v for k, v in attrs_a.items() if k not in SOURCE_ATTRS} == {
            k: v for k, v in attrs_b.items() if k not in SOURCE_ATTRS}
        ha, hb = _image_header(a_store, fid), _image_header(b_store, fid)
        for key in paus_layout.REQUIRED_KEYS:
            assert ha[key] == hb[key]
    b = st.frame_attrs(b_store, "00000101_01")
    assert b["source_image"].endswith(".img.fits.fz") and b["source_hdu"] == 1
    assert b["source_mask"].endswith(".msk.fits.gz")
    assert st.frame_attrs(b_store, "00000101_02")["source_mask"].endswith(".msk.fits.fz")


def test_two_versions_of_one_frame_are_refused_naming_both(layouts, tmp_path):
    plain, packed = layouts
    shutil.copy(paus_layout.image_path(plain, 101, 1), packed)  # next to its .fz
    report = ingest(packed, tmp_path / "s.zarr", small_config())
    assert report.exit_status != EXIT_OK
    assert report.ingested == ["00000101_02", "00000102_01"]
    text = "\n".join(reason for _, reason in report.failed)
    assert "paucam.0000101.01.img.fits[0]" in text and "paucam.0000101.01.img.fits.fz[1]" in text
    assert "[EXPNUM/CCD]: 2 versions of one frame" in text and "keep one" in text


def test_two_versions_of_one_mask_are_refused_naming_both(layouts, tmp_path):
    plain, packed = layouts
    shutil.copy(paus_layout.mask_path(plain, 102, 1), packed)  # next to its .fz
    report = ingest(packed, tmp_path / "s.zarr", small_config())
    assert report.exit_status != EXIT_OK
    assert report.ingested == ["00000101_01", "00000101_02"]
    (reason,) = [r for f, r in report.failed if "0000102" in f]
    assert "paucam.0000102.01.msk.fits and paucam.0000102.01.msk.fits.fz" in reason


def test_missing_mask_names_every_ending(layouts, tmp_path):
    _, packed = layouts
    (packed / "paucam.0000102.01.msk.fits.fz").unlink()
    report = ingest(packed, tmp_path / "s.zarr", small_config())
    (reason,) = [r for f, r in report.failed if "0000102" in f]
    assert "mask file paucam.0000102.01.msk.fits not found" in reason
    assert ".msk.fits.gz" in reason and ".msk.fits.fz" in reason
