"""FITS → store ingest of generic frames: multi-extension files, BITPIX conversions,
wide integer masks, zero-point defaults, and real DECam Community Pipeline frames."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from ingest_cases import SHAPE

from pausdenoise import store as st
from pausdenoise.ingest import (
    EXIT_FATAL,
    EXIT_OK,
    HeaderKeys,
    IngestConfig,
    ingest,
    zp_factor_from_mag,
)
from pausdenoise.maskbits import MaskBit


def test_generic_multi_extension_bitpix_and_masks(tmp_path, capsys):
    src = tmp_path / "gen"
    src.mkdir()
    rng = np.random.default_rng(3)
    prim = fits.PrimaryHDU()
    prim.header["EXPNUM"] = 77
    prim.header["FILTER"] = "i DECam SDSS c0003"
    prim.header["EXPTIME"] = 30.0
    prim.header["MAGZP"] = 30.0
    ints = rng.integers(-1000, 30000, SHAPE).astype(np.int16)
    dbl = rng.normal(100, 5, SHAPE)
    hdus = [prim]
    for i, (name, data) in enumerate((("CCDA", ints), ("CCDB", dbl)), start=1):
        h = fits.ImageHDU(data, name=name)
        h.header["CCDNUM"] = i
        h.header["GAINA"], h.header["GAINB"] = 4.0, 4.2
        h.header["RDNOISEA"], h.header["RDNOISEB"] = 6.0, 7.0
        hdus.append(h)
    fits.HDUList(hdus).writeto(src / "exp_img_77.fits")
    wide = np.zeros(SHAPE, dtype=np.int32)
    wide[0, 0], wide[1, 1], wide[2, 2] = 1, 1 << 20, -5
    mhdus = [fits.PrimaryHDU(), fits.ImageHDU(wide, name="CCDA"), fits.ImageHDU(wide, name="CCDB")]
    fits.HDUList(mhdus).writeto(src / "exp_msk_77.fits")

    cfg = IngestConfig(
        layout="generic",
        mask_substitution=("_img_", "_msk_"),
        keys=HeaderKeys(
            gain=["GAINA", "GAINB"], rdnoise=["RDNOISEA", "RDNOISEB"], zp="MAGZP", zp_err=None
        ),
        zp_kind="mag",
        defaults={"zp_err": 0.0, "saturate": None},
    )
    report = ingest(src, tmp_path / "s.zarr", cfg)
    assert report.exit_status == EXIT_OK, report.summary()
    assert report.ingested == ["00000077_01", "00000077_02"]
    a = st.frame_attrs(tmp_path / "s.zarr", "00000077_01")
    assert a["band"] == "i" and a["gain"] == pytest.approx(4.1) and a["rdnoise"] == 6.5
    assert a["zp"] == pytest.approx(10 ** ((23.9 - 30.0) / 2.5)) and a["source_bitpix"] == 16
    img1 = st.open_frame(tmp_path / "s.zarr", "00000077_01").compute()
    np.testing.assert_array_equal(img1, ints.astype(np.float32))
    img2 = st.open_frame(tmp_path / "s.zarr", "00000077_02").compute()
    np.testing.assert_array_equal(img2, dbl.astype(np.float32))
    m = st.open_frame(tmp_path / "s.zarr", "00000077_02", "mask").compute()
    assert m[0, 0] == m[1, 1] == m[2, 2] == MaskBit.OTHER and m.sum() == 3 * MaskBit.OTHER

    one = IngestConfig(**{**cfg.model_dump(), "hdu": "CCDB"})
    r1 = ingest(src, tmp_path / "one.zarr", one)
    assert r1.ingested == ["00000077_02"]

    # progress to a log file (not a terminal): whole lines, no carriage returns
    capsys.readouterr()
    shown = ingest(src, tmp_path / "shown.zarr", IngestConfig(**{**cfg.model_dump(),
                                                                  "progress": True}))
    out = capsys.readouterr().out
    assert shown.ingested == report.ingested
    assert "\r" not in out and "ingest: 100% (" in out

    # no zero-point: default with a warning, or a failure naming the keyword
    nozp = IngestConfig(**{**cfg.model_dump(), "keys": {**cfg.keys.model_dump(), "zp": "NOPE"}})
    r2 = ingest(src, tmp_path / "nozp.zarr", nozp)
    assert r2.exit_status == EXIT_FATAL and "[NOPE]" in r2.failed[0][1]
    withdef = IngestConfig(**{**nozp.model_dump(), "defaults": {"zp": 1.0, "zp_err": 0.0}})
    r3 = ingest(src, tmp_path / "def.zarr", withdef)
    assert r3.exit_status == EXIT_OK and len(r3.warnings) == 2 and "default zp" in r3.warnings[0]


@pytest.mark.real_data
def test_decam_real_frames_generic_path(real_data_dir, tmp_path):
    src = real_data_dir / "decam-multiepoch"
    if not src.is_dir():
        pytest.skip(f"{src} not present")
    ccds = src / "survey-ccds-1.fits.gz"
    cfg = IngestConfig.decam_community_pipeline(zp_table=ccds)
    store = tmp_path / "decam.zarr"
    report = ingest(src, store, cfg)
    assert report.exit_status == EXIT_OK, report.summary()
    assert len(report.ingested) == 8
    # 51 × 41 px: no sky variance to fit across exposures, the header gains are in force;
    # the summary counts the unfitted groups in one line instead of one line per group
    text = report.summary()
    assert "not fitted for 8 CCD/gain group(s) whose frames have a header gain" in text
    assert "none (" not in text
    t = st.exposure_table(store)
    assert sorted(t["band"]) == ["g", "g", "g", "r", "r", "z", "z", "z"]
    assert set(t["ccd"]) == {41, 42, 43} and set(t["detpos"]) == {"N10", "N11", "N12"}
    from astropy.table import Table

    zpt = Table.read(ccds)
    for images in sorted(src.glob("c4d_*_ooi_*.fits")):
        with fits.open(images) as h:
            prim, ext = h[0].header, h[1].header
            fid = st.frame_id(prim["EXPNUM"], ext["CCDNUM"])
            raw = h[1].data
            row = t[t["frame"] == fid].iloc[0]
            assert row["exptime"] == prim["EXPTIME"]
            assert row["gain"] == pytest.approx((ext["GAINA"] + ext["GAINB"]) / 2)
            assert row["rdnoise"] == pytest.approx((ext["RDNOISEA"] + ext["RDNOISEB"]) / 2)
            assert row["saturate"] == pytest.approx(ext["SATURATE"])
            (z,) = zpt["zpt"][
                (zpt["expnum"] == prim["EXPNUM"]) & (zpt["ccdname"] == ext["EXTNAME"])
            ]
            m0 = z + 2.5 * np.log10(prim["EXPTIME"])
            assert row["zp"] == pytest.approx(10 ** ((23.9 - m0) / 2.5), rel=1e-12)
            assert zp_factor_from_mag(z, prim["EXPTIME"], per_second=True) == pytest.approx(
                row["zp"]
            )
            # pixels: big-endian float32 in, native float32 out, bit-exact
            got = st.open_frame(store, fid).compute()
            assert got.shape == raw.shape and got.dtype == np.float32
            np.testing.assert_array_equal(
                got.view(np.uint32), raw.astype(np.float32).view(np.uint32)
            )
            ivar = fits.getdata(str(images).replace("_ooi_", "_oow_"), 1)
            np.testing.assert_array_equal(st.open_frame(store, fid, "ivar").compute(), ivar)
            dq = fits.getdata(str(images).replace("_ooi_", "_ood_"), 1)
            mask = st.open_frame(store, fid, "mask").compute()
            np.testing.assert_array_equal(mask != 0, dq != 0)
            # WCS (TPV distortion included) survives
            w_src, w_store = WCS(ext), st.frame_wcs(store, fid)
            px = np.array([[0.0, 0.0], [40.0, 50.0], [20.5, 10.25]])
            np.testing.assert_allclose(
                w_store.all_pix2world(px, 0), w_src.all_pix2world(px, 0), rtol=0, atol=1e-10
            )
    # frames of two shapes: open_dataset asks which
    with pytest.raises(st.StoreError, match="several shapes"):
        st.open_dataset(store)
    ds = st.open_dataset(store, shape=(51, 41))
    assert ds["image"].shape[2:] == (51, 41)
    assert ds["image"].dims[0] == "exposure" and len(ds["exposure"]) == 7
    again = ingest(src, store, cfg)
    assert again.exit_status == EXIT_OK and len(again.skipped) == 8
