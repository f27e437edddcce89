"""FITS → store ingest: PAUS layout, generic frames (real DECam data), parallel runs,
idempotence and resume, and every kind of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from pydantic import ValidationError

from pausdenoise import paus_layout
from pausdenoise import store as st
from pausdenoise.ingest import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_PARTIAL,
    HeaderKeys,
    IngestConfig,
    apply_mask_convention,
    ingest,
    zp_factor_from_mag,
)
from pausdenoise.maskbits import MaskBit

SHAPE = (48, 40)
ODD_NAN = np.array([0x7FC0_ABCD], dtype=np.uint32).view(np.float32)[0]


# --------------------------------------------------------------------------- fixtures


def paus_header(expnum: int, ccd: int, band: str = "NB455") -> fits.Header:
    h = fits.Header()
    h["EXPNUM"] = expnum
    h["CCD"] = ccd
    h["FILTER"] = band
    h["EXPTIME"] = 90.0
    h["GAIN"] = 0.65
    h["RDNOISE"] = 9.1
    h["ZP"] = 1.25 + 0.001 * expnum
    h["ZPERR"] = 0.012
    h["SATURATE"] = 200000.0
    h["MJD-OBS"] = 58000.5
    h["AIRMASS"] = 1.11
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"] = 20.5, 24.5
    h["CRVAL1"], h["CRVAL2"] = 150.0 + 0.01 * ccd, 2.0
    h["CD1_1"], h["CD1_2"] = -7.36e-5, 0.0
    h["CD2_1"], h["CD2_2"] = 0.0, 7.36e-5
    return h


def write_paus_frame(
    root: Path,
    expnum: int,
    ccd: int,
    *,
    shape: tuple[int, int] = SHAPE,
    band: str = "NB455",
    truth: bool = False,
    seed: int | None = None,
    drop: tuple[str, ...] = (),
    mask_shape: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """One PAUS-layout frame (big-endian float32 image with NaN/Inf, uint8 mask)."""
    rng = np.random.default_rng(expnum * 100 + ccd if seed is None else seed)
    image = (500 + rng.normal(0, 20, shape)).astype(np.float32)
    image[2, 3] = ODD_NAN
    image[4, 5] = np.inf
    mask = np.zeros(mask_shape or shape, dtype=np.uint8)
    mask[:, 6] = MaskBit.BAD_COLUMN
    mask[7, 8] = MaskBit.COSMIC_RAY
    mask[4, 5] = MaskBit.SATURATED
    header = paus_header(expnum, ccd, band)
    for key in drop:
        del header[key]
    root.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(image.astype(">f4"), header=header).writeto(
        paus_layout.image_path(root, expnum, ccd), overwrite=True
    )
    fits.PrimaryHDU(mask).writeto(paus_layout.mask_path(root, expnum, ccd), overwrite=True)
    out = {"image": image, "mask": mask}
    if truth:
        t = (500 + rng.normal(0, 1, shape)).astype(np.float32)
        p = paus_layout.truth_path(root, expnum, ccd)
        p.parent.mkdir(exist_ok=True)
        fits.PrimaryHDU(t).writeto(p, overwrite=True)
        out["truth"] = t
    return out


@pytest.fixture
def paus_dir(tmp_path):
    root = tmp_path / "paus"
    frames = {}
    for e in (101, 102):
        for c in (1, 2):
            frames[(e, c)] = write_paus_frame(
                root, e, c, band=f"NB{445 + 10 * c}", truth=(e, c) == (101, 1)
            )
    return root, frames


def small_config(**kw) -> IngestConfig:
    return IngestConfig(chunks=(32, 32), **kw)


# --------------------------------------------------------------------------- PAUS layout


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_paus_round_trip_bit_exact_with_metadata(paus_dir, tmp_path):
    root, frames = paus_dir
    store = tmp_path / "s.zarr"
    report = ingest(root, store, small_config())
    assert report.exit_status == EXIT_OK, report.summary()
    assert report.ingested == ["00000101_01", "00000101_02", "00000102_01", "00000102_02"]
    assert report.skipped == [] and report.failed == []

    for (e, c), src in frames.items():
        fid = st.frame_id(e, c)
        image = st.open_frame(store, fid).compute()
        np.testing.assert_array_equal(image.view(np.uint32), src["image"].view(np.uint32))
        expected_mask = src["mask"].copy()
        expected_mask[2, 3] |= MaskBit.NONFINITE
        expected_mask[4, 5] |= MaskBit.NONFINITE
        np.testing.assert_array_equal(st.open_frame(store, fid, "mask").compute(), expected_mask)
        names = st.frame_arrays(store, fid)
        if "truth" in src:
            np.testing.assert_array_equal(
                st.open_frame(store, fid, "truth").compute(), src["truth"]
            )
        else:
            assert "truth" not in names
        # metadata: attributes, full header, WCS
        a = st.frame_attrs(store, fid)
        assert (a["expnum"], a["ccd"], a["band"]) == (e, c, f"NB{445 + 10 * c}")
        assert a["zp"] == pytest.approx(1.25 + 0.001 * e) and a["zp_err"] == pytest.approx(0.012)
        assert a["gain"] == 0.65 and a["rdnoise"] == 9.1 and a["saturate"] == 200000.0
        assert a["mjd_obs"] == 58000.5 and a["airmass"] == 1.11 and a["n_nonfinite"] == 2
        assert a["source_image"] == str(paus_layout.image_path(root, e, c))
        assert a["source_mask"] == str(paus_layout.mask_path(root, e, c))
        hdr = fits.Header.fromstring(st.read_header_text(store, fid))
        assert hdr["EXPNUM"] == e and hdr["FILTER"] == f"NB{445 + 10 * c}"
        w_src = WCS(paus_header(e, c))
        w_store = st.frame_wcs(store, fid)
        px = np.array([[0.0, 0.0], [39.0, 47.0], [12.3, 30.7]])
        np.testing.assert_allclose(
            w_store.all_pix2world(px, 0), w_src.all_pix2world(px, 0), rtol=0, atol=1e-12
        )

    t = st.exposure_table(store)
    assert len(t) == 4
    assert {"frame", "expnum", "ccd", "band", "zp", "zp_err", "wcs", "source_fingerprint"} <= set(
        t.columns
    )
    assert t["source_fingerprint"].str.len().eq(64).all()
    ds = st.open_dataset(store, ("image", "mask"))
    assert ds["image"].dims == ("exposure", "ccd", "y", "x")
    assert ds["image"].shape == (2, 2, *SHAPE)
    assert list(ds["exposure"].values) == [101, 102]
    assert ds["band"].dims == ("exposure", "ccd")
    assert st.open_frame(store, "00000101_01").chunks == ((32, 16), (32, 8))


def test_rerun_skips_complete_and_redoes_interrupted_and_changed(paus_dir, tmp_path):
    root, frames = paus_dir
    store = tmp_path / "s.zarr"
    assert ingest(root, store, small_config()).exit_status == EXIT_OK

    again = ingest(root, store, small_config())
    assert again.exit_status == EXIT_OK
    assert again.ingested == [] and len(again.skipped) == 4

    # interrupted writing: complete unset and pixels half-written
    st.mark_incomplete(store, "00000102_01")
    arr = st.open_store(store, "r+")["frames/00000102_01/image"]
    arr[:16, :] = 0.0
    # changed source
    new = write_paus_frame(root, 101, 2, seed=999)
    # chunking changes do not trigger a rewrite; force does
    third = ingest(root, store, small_config())
    assert third.exit_status == EXIT_OK
    assert third.ingested == ["00000101_02", "00000102_01"]
    assert third.skipped == ["00000101_01", "00000102_02"]
    np.testing.assert_array_equal(
        st.open_frame(store, "00000102_01").compute().view(np.uint32),
        frames[(102, 1)]["image"].view(np.uint32),
    )
    np.testing.assert_array_equal(
        st.open_frame(store, "00000101_02").compute().view(np.uint32),
        new["image"].view(np.uint32),
    )
    assert st.list_frames(store) == sorted(st.frame_id(e, c) for e, c in frames)
    forced = ingest(root, store, small_config(force=True))
    assert len(forced.ingested) == 4 and forced.skipped == []


def test_parallel_local_cluster_matches_serial(paus_dir, tmp_path):
    distributed = pytest.importorskip("distributed")
    root, _ = paus_dir
    serial, parallel = tmp_path / "serial.zarr", tmp_path / "parallel.zarr"
    cfg = small_config()
    assert ingest(root, serial, cfg).exit_status == EXIT_OK
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        report = ingest(root, parallel, cfg, client=client)
        # both workers took part in the writes
        assert len(client.scheduler_info()["workers"]) == 2
    assert report.exit_status == EXIT_OK, report.summary()
    assert report.ingested == st.list_frames(serial)
    t_s, t_p = st.exposure_table(serial), st.exposure_table(parallel)
    assert t_s.equals(t_p)
    for fid in st.list_frames(serial):
        assert st.frame_arrays(serial, fid) == st.frame_arrays(parallel, fid)
        for name in st.frame_arrays(serial, fid):
            a = st.open_store(serial)[f"frames/{fid}/{name}"][...]
            b = st.open_store(parallel)[f"frames/{fid}/{name}"][...]
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


# --------------------------------------------------------------------------- bad input


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


# --------------------------------------------------------------------------- generic path


def test_generic_multi_extension_bitpix_and_masks(tmp_path):
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


# --------------------------------------------------------------------------- units


def test_mask_convention():
    m = np.array([0, 1, 2, 16, 32, 129, 255], dtype=np.uint8)
    bits = apply_mask_convention(m, "bits")
    assert list(bits) == [0, 1, 2, 16, 128, 129, 128 | 1 | 2 | 4 | 8 | 16]
    assert list(apply_mask_convention(m, "other")) == [0] + [128] * 6
    wide = np.array([0, 1, 256, -1, 1 << 20 | 2], dtype=np.int64)
    assert list(apply_mask_convention(wide, "bits")) == [0, 1, 128, 128, 130]
    f = np.array([0.0, 1.0, np.nan, 0.5])
    assert list(apply_mask_convention(f, "other")) == [0, 128, 128, 128]
    assert list(apply_mask_convention(f, "bits")) == [0, 1, 128, 128]


def test_zp_factor_from_mag():
    assert zp_factor_from_mag(23.9) == pytest.approx(1.0)
    assert zp_factor_from_mag(26.4) == pytest.approx(0.1)
    assert zp_factor_from_mag(21.4, exptime=10.0, per_second=True) == pytest.approx(
        zp_factor_from_mag(23.9)
    )
    with pytest.raises(ValueError):
        zp_factor_from_mag(25.0, exptime=0.0, per_second=True)


def test_config_validation():
    with pytest.raises(ValidationError):
        IngestConfig(unknown_option=1)
    with pytest.raises(ValidationError, match="multiple"):
        IngestConfig(chunks=(64, 64), shards=(100, 100))
    with pytest.raises(ValidationError, match="unknown keys"):
        IngestConfig(defaults={"expnum": 3})
    assert IngestConfig().effective_require_same_shape
    assert IngestConfig(layout="generic").effective_mask_mode == "other"
    a = IngestConfig(chunks=(32, 32)).content_digest()
    assert a == IngestConfig(chunks=(64, 64), clevel=1).content_digest()
    assert a != IngestConfig(mask_mode="other").content_digest()


def test_sharded_ingest(paus_dir, tmp_path):
    root, frames = paus_dir
    store = tmp_path / "s.zarr"
    report = ingest(root, store, IngestConfig(chunks=(16, 16), shards=(32, 32)))
    assert report.exit_status == EXIT_OK
    arr = st.open_store(store)["frames/00000101_01/image"]
    assert arr.chunks == (16, 16) and arr.shards == (32, 32)
    np.testing.assert_array_equal(
        arr[...].view(np.uint32), frames[(101, 1)]["image"].view(np.uint32)
    )


def test_copied_directory_is_skipped_only_if_same_bytes(paus_dir, tmp_path):
    root, _ = paus_dir
    store = tmp_path / "s.zarr"
    ingest(root, store, small_config())
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    r = ingest(moved, store, small_config())
    # the fingerprint is content-based: same bytes elsewhere are still "unchanged"
    assert len(r.skipped) == 4 and r.ingested == []
    r = ingest(root, store, small_config(verify_hash=True))
    assert len(r.skipped) == 4 and r.ingested == []
