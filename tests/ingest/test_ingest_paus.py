"""FITS → store ingest of the PAUS layout: bit-exact round trip with metadata, idempotent
reruns and resume, parallel runs on a local cluster, sharding, moved sources."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from ingest_cases import SHAPE, make_paus_dir, paus_header, small_config, write_paus_frame

from pausdenoise import paus_layout
from pausdenoise import store as st
from pausdenoise.ingest import EXIT_OK, IngestConfig, ingest
from pausdenoise.maskbits import MaskBit


@pytest.fixture
def paus_dir(tmp_path):
    return make_paus_dir(tmp_path)


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
