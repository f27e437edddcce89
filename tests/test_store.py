"""The Zarr survey store: layout, writers, completion flag, dask/xarray/pandas readers."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from pausdenoise import store as st
from pausdenoise.maskbits import MaskBit


def _frame_arrays(shape=(100, 70), seed=0):
    rng = np.random.default_rng(seed)
    image = (1000 + rng.normal(0, 30, shape)).astype(np.float32)
    # a NaN with a non-canonical payload, and infinities: must survive bit-exactly
    image[1, 2] = np.array([0x7FC0_1234], dtype=np.uint32).view(np.float32)[0]
    image[3, 4] = np.inf
    image[5, 6] = -np.inf
    mask = np.zeros(shape, dtype=np.uint8)
    mask[:, 7] = MaskBit.BAD_COLUMN
    mask[10, 11] = MaskBit.COSMIC_RAY | MaskBit.SATURATED
    return image, mask


def _attrs(expnum, ccd, band="NB455", **kw):
    return {
        "expnum": expnum,
        "ccd": ccd,
        "band": band,
        "exptime": 60.0,
        "zp": 1.5 + 0.01 * ccd,
        "zp_err": 0.01,
        "gain": 0.65,
        "rdnoise": 9.0,
        "saturate": None,
        **kw,
    }


@pytest.fixture
def path(tmp_path):
    return tmp_path / "survey.zarr"


def test_frame_id_round_trip_and_range():
    assert st.frame_id(12345, 7) == "00012345_07"
    assert st.parse_frame_id("00012345_07") == (12345, 7)
    assert st.frame_id(1, 2) < st.frame_id(1, 10) < st.frame_id(2, 1)
    with pytest.raises(ValueError):
        st.frame_id(10**8, 1)
    with pytest.raises(ValueError):
        st.parse_frame_id("nonsense")


def test_init_and_open_store(path, tmp_path):
    root = st.init_store(path)
    assert root.attrs[st.LAYOUT_KEY] == st.LAYOUT_VERSION
    assert st.FRAMES_GROUP in root
    assert st.open_store(path).attrs[st.LAYOUT_KEY] == 1
    assert st.list_frames(path) == []
    with pytest.raises(FileNotFoundError):
        st.open_store(tmp_path / "absent.zarr")
    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w").create_group("x")
    with pytest.raises(st.StoreError, match="not a pausdenoise store"):
        st.open_store(other)
    with pytest.raises(st.StoreError):
        st.init_store(other)  # refuses to adopt a foreign non-empty group
    zarr.open_group(str(path), mode="r+").update_attributes({st.LAYOUT_KEY: 99})
    with pytest.raises(st.StoreError, match="version 99"):
        st.open_store(path)


def test_write_frame_round_trip_bit_exact(path):
    image, mask = _frame_arrays()
    big_endian = image.astype(">f4")
    ivar = np.full(image.shape, 2.5e-3, dtype=np.float32)
    st.write_frame(
        path,
        "00000001_01",
        {"image": big_endian, "mask": mask, "ivar": ivar},
        _attrs(1, 1, wcs="", extra_value=np.float64(3.5)),
        chunks=(64, 64),
    )
    g = st.open_store(path)["frames/00000001_01"]
    got = g["image"][...]
    assert got.dtype == np.float32 and got.dtype.byteorder in ("=", "<")
    np.testing.assert_array_equal(got.view(np.uint32), image.view(np.uint32))
    np.testing.assert_array_equal(g["mask"][...], mask)
    assert g["mask"].dtype == np.uint8
    np.testing.assert_array_equal(g["ivar"][...], ivar)
    assert g["image"].chunks == (64, 64)
    codec = g["image"].compressors[0]
    assert codec.cname.value == "zstd" and codec.shuffle.value == "shuffle"
    assert g["mask"].compressors[0].shuffle.value == "bitshuffle"
    attrs = st.frame_attrs(path, "00000001_01")
    assert attrs["complete"] is True
    assert (attrs["ny"], attrs["nx"]) == image.shape
    assert attrs["extra_value"] == 3.5 and attrs["saturate"] is None


def test_chunks_clipped_and_shard_rules():
    assert st.clip_chunks((4096, 2048)) == ((1024, 1024), None)
    assert st.clip_chunks((51, 41)) == ((51, 41), None)
    assert st.clip_chunks((4096, 2048), (1024, 1024), (2048, 2048)) == (
        (1024, 1024),
        (2048, 2048),
    )
    # shards clipped to the smallest chunk multiple covering the frame
    assert st.clip_chunks((3000, 1000), (1024, 1024), (4096, 4096)) == (
        (1024, 1000),
        (3072, 1000),
    )
    with pytest.raises(ValueError, match="multiple"):
        st.clip_chunks((100, 100), (64, 64), (100, 100))


def test_shape_mismatch_and_missing_image_refused(path):
    image, mask = _frame_arrays()
    with pytest.raises(ValueError, match="shape"):
        st.write_frame(path, "00000001_01", {"image": image, "mask": mask[:-1]}, _attrs(1, 1))
    with pytest.raises(ValueError, match="image"):
        st.write_frame(path, "00000001_01", {"mask": mask}, _attrs(1, 1))


def test_completion_flag_and_listing(path):
    image, mask = _frame_arrays((20, 30))
    for e, c in [(2, 1), (1, 2), (1, 1)]:
        st.write_frame(path, st.frame_id(e, c), {"image": image, "mask": mask}, _attrs(e, c))
    assert st.list_frames(path) == ["00000001_01", "00000001_02", "00000002_01"]
    st.mark_incomplete(path, "00000001_02")
    assert not st.is_complete(path, "00000001_02")
    assert st.list_frames(path) == ["00000001_01", "00000002_01"]
    assert st.list_frames(path, complete_only=False) == [
        "00000001_01",
        "00000001_02",
        "00000002_01",
    ]
    assert len(st.exposure_table(path)) == 2
    assert len(st.exposure_table(path, complete_only=False)) == 3
    assert not st.is_complete(path, "00000099_01")


def test_rewrite_drops_stale_arrays(path):
    image, mask = _frame_arrays((20, 30))
    st.write_frame(path, "00000001_01", {"image": image, "mask": mask}, _attrs(1, 1))
    st.create_output_array(path, "00000001_01", "denoised")
    assert st.frame_arrays(path, "00000001_01") == ["denoised", "image", "mask"]
    st.write_frame(path, "00000001_01", {"image": image + 1, "mask": mask}, _attrs(1, 1))
    assert st.frame_arrays(path, "00000001_01") == ["image", "mask"]
    np.testing.assert_array_equal(st.open_frame(path, "00000001_01").compute(), image + 1)


def test_exposure_table_columns_and_types(path):
    image, mask = _frame_arrays((20, 30))
    for e, c in [(5, 2), (5, 1), (3, 1)]:
        st.write_frame(
            path, st.frame_id(e, c), {"image": image, "mask": mask}, _attrs(e, c, airmass=1.2)
        )
    t = st.exposure_table(path)
    assert list(t.columns[: len(st.FRAME_ATTRS) + 1]) == ["frame", *st.FRAME_ATTRS]
    assert "airmass" in t.columns
    assert list(t["frame"]) == ["00000003_01", "00000005_01", "00000005_02"]
    assert t["expnum"].dtype == np.int64 and t["ccd"].dtype == np.int64
    assert t["zp"].dtype == np.float64 and t["saturate"].isna().all()
    np.testing.assert_allclose(t["zp"], [1.51, 1.51, 1.52])
    assert (t["ny"] == 20).all() and (t["nx"] == 30).all() and t["complete"].all()


def test_open_frame_chunks_and_values(path):
    image, mask = _frame_arrays((100, 70))
    st.write_frame(path, "00000001_01", {"image": image, "mask": mask}, {}, chunks=(32, 32))
    d = st.open_frame(path, "00000001_01")
    assert isinstance(d, da.Array)
    assert d.chunks == ((32, 32, 32, 4), (32, 32, 6))
    np.testing.assert_array_equal(d.compute().view(np.uint32), image.view(np.uint32))
    assert st.open_frame(path, "00000001_01", "mask").dtype == np.uint8
    with pytest.raises(st.StoreError, match="truth"):
        st.open_frame(path, "00000001_01", "truth")
    with pytest.raises(st.StoreError, match="not in the store"):
        st.open_frame(path, "00000009_01")


def test_sharded_frame_write_unit_and_dask_store(path):
    image, mask = _frame_arrays((100, 70))
    st.write_frame(
        path, "00000001_01", {"image": image, "mask": mask}, {}, chunks=(16, 16), shards=(32, 32)
    )
    arr = st.open_store(path)["frames/00000001_01/image"]
    assert arr.chunks == (16, 16) and arr.shards == (32, 32)
    assert st.write_chunks(path, "00000001_01") == (32, 32)
    d = st.open_frame(path, "00000001_01")
    assert d.chunks[0][0] == 32  # the shard is the parallel write unit
    # aligned parallel write (threads) into a sharded output: every value lands
    st.store_dask(d * 2, path, "00000001_01", "denoised")
    out = st.open_store(path)["frames/00000001_01/denoised"]
    assert out.shards == (32, 32) and out.chunks == (16, 16)
    np.testing.assert_array_equal(out[...], image * 2)
    # chunks that straddle shards are refused before any task runs
    with pytest.raises(st.StoreError, match="multiples"):
        st.store_dask(d.rechunk((16, 16)), path, "00000001_01", "denoised")


def test_open_dataset_dims_coords_and_missing(path):
    shape = (24, 16)
    images = {}
    for e, c in [(10, 1), (10, 2), (11, 1)]:  # (11, 2) missing
        img, msk = _frame_arrays(shape, seed=e * 10 + c)
        images[(e, c)] = img
        st.write_frame(
            path, st.frame_id(e, c), {"image": img, "mask": msk}, _attrs(e, c, band=f"B{e}")
        )
    ds = st.open_dataset(path, ("image", "mask"))
    assert ds["image"].dims == ("exposure", "ccd", "y", "x")
    assert ds["image"].shape == (2, 2, *shape)
    assert list(ds["exposure"].values) == [10, 11] and list(ds["ccd"].values) == [1, 2]
    assert ds["band"].dims == ("exposure",) and list(ds["band"].values) == ["B10", "B11"]
    assert isinstance(ds["image"].data, da.Array)
    assert ds["image"].data.chunks[2:] == ((24,), (16,))
    np.testing.assert_array_equal(
        ds["image"].sel(exposure=10, ccd=2).values.view(np.uint32),
        images[(10, 2)].view(np.uint32),
    )
    assert np.isnan(ds["image"].sel(exposure=11, ccd=2).values).all()
    assert (ds["mask"].sel(exposure=11, ccd=2).values == st.MISSING_MASK_VALUE).all()
    assert ds["frame"].sel(exposure=11, ccd=2).item() == ""
    assert ds["zp"].sel(exposure=10, ccd=2).item() == pytest.approx(1.52)
    assert np.isnan(ds["zp"].sel(exposure=11, ccd=2).item())


def test_open_dataset_band_per_ccd_and_shapes(path):
    img, msk = _frame_arrays((24, 16))
    st.write_frame(path, "00000001_01", {"image": img, "mask": msk}, _attrs(1, 1, band="NB455"))
    st.write_frame(path, "00000001_02", {"image": img, "mask": msk}, _attrs(1, 2, band="NB465"))
    ds = st.open_dataset(path)
    assert ds["band"].dims == ("exposure", "ccd")  # PAUCam: one band per CCD
    assert ds["band"].sel(ccd=2).item() == "NB465"
    big, bigm = _frame_arrays((30, 16))
    st.write_frame(path, "00000002_01", {"image": big, "mask": bigm}, _attrs(2, 1))
    with pytest.raises(st.StoreError, match="several shapes"):
        st.open_dataset(path)
    assert st.frames_by_shape(path) == {
        (24, 16): ["00000001_01", "00000001_02"],
        (30, 16): ["00000002_01"],
    }
    ds30 = st.open_dataset(path, shape=(30, 16))
    assert ds30["image"].shape == (1, 1, 30, 16)


def test_create_output_array_copies_layout(path):
    img, msk = _frame_arrays((100, 70))
    st.write_frame(path, "00000001_01", {"image": img, "mask": msk}, {}, chunks=(32, 32), clevel=3)
    out = st.create_output_array(path, "00000001_01", "denoised")
    ref = st.open_store(path)["frames/00000001_01/image"]
    assert out.shape == ref.shape and out.chunks == ref.chunks and out.dtype == np.float32
    assert out.compressors[0].clevel == 3
    assert np.isnan(out[0, 0])  # unwritten = NaN
    assert st.is_complete(path, "00000001_01")  # untouched by later stages
