"""FITS files as archives ship them: gzip and tile-compressed (fpack) files, globs and
several paths for ``--fits``, frames without survey keywords (exposure number from the file
order or name, band from the defaults), every missing keyword in one message, ivar = 0
masked as no data, and mask/weight HDUs of the image's own file."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from astropy.io import fits

from pausdenoise import store as st
from pausdenoise.cli import EXIT_OK, EXIT_USAGE, main
from pausdenoise.ingest import IngestConfig, IngestError
from pausdenoise.ingest.driver import ingest
from pausdenoise.ingest.frame import read_frame
from pausdenoise.ingest.plan import _plan_file, plan_ingest
from pausdenoise.maskbits import MaskBit

DECAM_EXPOSURE = "c4d_140818_232043_*_z_ls9.N12.fits"


def _arrays(store: Path) -> dict[str, dict[str, np.ndarray]]:
    root = zarr.open_group(str(store / "frames"), mode="r")
    return {f: {a: np.asarray(root[f][a]) for a in ("image", "mask", "ivar") if a in root[f]}
            for f in root.group_keys()}


def _decam_config(**kw) -> IngestConfig:
    base = {"pattern": None, "defaults": {"zp": 1.0, "zp_err": 0.0}, "chunks": (32, 32)}
    return IngestConfig.decam_community_pipeline(**{**base, **kw})


def _gzip(src: Path, dst: Path) -> None:
    with open(src, "rb") as a, gzip.open(dst, "wb") as b:
        shutil.copyfileobj(a, b)


def _fpack(src: Path, dst: Path) -> None:
    """Tile-compress every image HDU losslessly (GZIP_2, no quantisation of floats)."""
    with fits.open(src) as h:
        out = [h[0].copy()] + [
            fits.CompImageHDU(x.data, x.header, compression_type="GZIP_2", quantize_level=0)
            for x in h[1:]
        ]
        fits.HDUList(out).writeto(dst)


@pytest.fixture
def decam_copies(real_data_dir, tmp_path) -> dict[str, Path]:
    """One DECam exposure (image, mask, ivar) plain, gzipped and fpacked, a folder each."""
    src = real_data_dir / "decam-multiepoch"
    if not src.is_dir():
        pytest.skip("decam-multiepoch not present in the real test data")
    dirs = {k: tmp_path / k for k in ("plain", "gz", "fz")}
    for d in dirs.values():
        d.mkdir()
    for f in sorted(src.glob(DECAM_EXPOSURE)):
        shutil.copy(f, dirs["plain"] / f.name)
        _gzip(f, dirs["gz"] / (f.name + ".gz"))
        _fpack(f, dirs["fz"] / (f.name + ".fz"))
    return dirs


@pytest.mark.real_data
def test_compressed_copies_ingest_to_the_same_pixels(decam_copies, tmp_path):
    stored = {}
    for kind, d in decam_copies.items():
        report = ingest(d, tmp_path / f"{kind}.zarr", _decam_config())
        assert report.exit_status == 0 and report.ingested == ["00349590_43"], report.summary()
        stored[kind] = _arrays(tmp_path / f"{kind}.zarr")["00349590_43"]
    for kind in ("gz", "fz"):  # both lossless: bit for bit
        for name, arr in stored["plain"].items():
            assert np.array_equal(stored[kind][name], arr, equal_nan=True), (kind, name)
    # ivar = 0 is no data: masked with NODATA (exactly there)
    plain = stored["plain"]
    assert np.array_equal((plain["mask"] & MaskBit.NODATA) != 0, ~(plain["ivar"] > 0))
    # a compressed copy next to its uncompressed file is left out of the default scan
    both = tmp_path / "both"
    shutil.copytree(decam_copies["plain"], both)
    for f in decam_copies["gz"].iterdir():
        shutil.copy(f, both / f.name)
    report = ingest(both, tmp_path / "both.zarr", _decam_config())
    assert report.exit_status == 0 and report.ingested == ["00349590_43"], report.summary()


@pytest.mark.real_data
def test_truncated_gzip_is_named(decam_copies, tmp_path):
    gz = next(decam_copies["gz"].glob("*_ooi_*"))
    for cut in (100, gz.stat().st_size // 2, gz.stat().st_size - 8):
        bad = tmp_path / gz.name
        bad.write_bytes(gz.read_bytes()[:cut])
        with pytest.raises(IngestError, match="truncated or damaged gzip file") as info:
            _plan_file(bad, _decam_config(mask_substitution=None, weight_substitution=None))
        assert str(bad) in str(info.value)
    fz = next(decam_copies["fz"].glob("*_ooi_*"))
    bad = tmp_path / fz.name
    bad.write_bytes(fz.read_bytes()[: fz.stat().st_size - 3000])
    cfg = _decam_config(mask_substitution=None, weight_substitution=None)
    (source,), _ = plan_ingest([bad], tmp_path / "s.zarr", cfg)
    with pytest.raises(IngestError, match="truncated FITS file: HDU 1"):
        read_frame(source, cfg)


def _scaled_frame(path: Path, header: fits.Header, compress: str = "") -> np.ndarray:
    """An int16 image with BSCALE 0.5, BZERO 1000 (RICE_1 when fpacked, lossless for
    integers): returns the physical values."""
    physical = (np.arange(-300, 300).reshape(20, 30) * 0.5 + 1000.0).astype(np.float32)
    if compress == "fz":
        hdu = fits.CompImageHDU(physical.copy(), header, compression_type="RICE_1")
        hdu.scale("int16", bscale=0.5, bzero=1000.0)
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
        return physical
    plain = path.with_suffix("") if compress else path
    image = fits.PrimaryHDU(physical.copy(), header)
    image.scale("int16", bscale=0.5, bzero=1000.0)
    image.writeto(plain)
    assert fits.getheader(plain)["BITPIX"] == 16 and fits.getheader(plain)["BSCALE"] == 0.5
    if compress:
        _gzip(plain, path)
        plain.unlink()
    return physical


def _header(**cards) -> fits.Header:
    h = fits.Header()
    for k, v in {"EXPTIME": 30.0, "GAIN": 1.9, "RDNOISE": 5.0, **cards}.items():
        if v is not None:
            h[k] = v
    return h


def test_scaled_integer_images_are_physical_float32(tmp_path):
    cfg = IngestConfig(layout="generic", expnum_from="order", chunks=(32, 32),
                       defaults={"band": "I", "ccd": 0, "zp": 1.0, "zp_err": 0.0})
    expect = {}
    for n, compress in enumerate(("", "gz", "fz"), start=1):
        name = f"f{n}.fits" + {"": "", "gz": ".gz", "fz": ".fz"}[compress]
        expect[st.frame_id(n, 0)] = _scaled_frame(tmp_path / name, _header(), compress)
    report = ingest(tmp_path, tmp_path / "s.zarr", cfg)
    assert report.exit_status == 0 and len(report.ingested) == 3, report.summary()
    got = _arrays(tmp_path / "s.zarr")
    for frame, physical in expect.items():
        assert got[frame]["image"].dtype == np.float32
        assert np.array_equal(got[frame]["image"], physical), frame


def test_headerless_frames_take_expnum_from_order_or_name(tmp_path):
    d = tmp_path / "night"
    d.mkdir()
    for n in (7, 13, 20):
        fits.PrimaryHDU(np.full((8, 8), n, np.float32), _header()).writeto(d / f"obj{n:04d}.fits")
    defaults = {"band": "I", "zp": 1.0, "zp_err": 0.0}
    by_order = IngestConfig(layout="generic", expnum_from="order",
                            defaults={**defaults, "ccd": 3})
    report = ingest(d, tmp_path / "order.zarr", by_order)
    assert report.ingested == ["00000001_03", "00000002_03", "00000003_03"], report.summary()
    t = st.exposure_table(tmp_path / "order.zarr").sort_values("expnum")
    assert list(t["band"]) == ["I"] * 3
    assert [Path(p).name for p in t["source_image"]] == ["obj0007.fits", "obj0013.fits",
                                                         "obj0020.fits"]
    by_name = IngestConfig(layout="generic", expnum_from="filename",
                           filename_pattern=r"obj(?P<expnum>\d+)", defaults=defaults | {"ccd": 0})
    report = ingest(d, tmp_path / "name.zarr", by_name)
    assert report.ingested == ["00000007_00", "00000013_00", "00000020_00"], report.summary()
    # ccd from the name too; a name the pattern does not match is named
    (d / "flat.fits").write_bytes((d / "obj0007.fits").read_bytes())
    both = by_name.model_copy(update={"filename_pattern": r"obj(?P<expnum>\d\d)(?P<ccd>\d\d)",
                                      "defaults": defaults})
    report = ingest(d, tmp_path / "both.zarr", both)
    assert report.ingested == ["00000000_07", "00000000_13", "00000000_20"], report.summary()
    assert len(report.failed) == 1
    assert "flat.fits [filename_pattern]: 2 header problems: [filename_pattern] file name " \
        "does not match ingest.filename_pattern" in report.failed[0][1]
    assert "[CCDNUM] missing header keyword CCDNUM (for ccd)" in report.failed[0][1]


def test_every_missing_keyword_in_one_message(tmp_path):
    p = tmp_path / "bare.fits"
    fits.PrimaryHDU(np.zeros((8, 8), np.float32), _header(GAIN=None, RDNOISE=None,
                                                           EXPNUM=5, CCDNUM=1)).writeto(p)
    with pytest.raises(IngestError) as info:
        _plan_file(p, IngestConfig(layout="generic", noise_model="header"))
    text = str(info.value)
    assert text.startswith(f"{p} [FILTER]: 4 header problems: ")
    for piece in ("[FILTER] missing header keyword FILTER (for band) and no default: set "
                  "ingest.keys.band or ingest.defaults.band",
                  "[GAIN] missing header keyword GAIN (for gain) and no default: set "
                  "ingest.keys.gain or ingest.defaults.gain",
                  "[RDNOISE] missing header keyword RDNOISE (for rdnoise)",
                  "[ZP] no zero-point (header, table) and no default: set ingest.keys.zp, "
                  "ingest.zp_table or ingest.defaults.zp (and its error, "
                  "ingest.defaults.zp_err)"):
        assert piece in text, piece
    # without EXPNUM/CCDNUM either: five, the exposure number's options named
    q = tmp_path / "barer.fits"
    fits.PrimaryHDU(np.zeros((8, 8), np.float32), _header(GAIN=None)).writeto(q)
    with pytest.raises(IngestError, match="5 header problems") as info:
        _plan_file(q, IngestConfig(layout="generic", keys={"zp": None, "zp_err": None},
                                   noise_model="header"))
    assert "or ingest.expnum_from to 'order' or 'filename'" in str(info.value)
    assert "ingest.defaults.ccd, or a 'ccd' group in ingest.filename_pattern" in str(info.value)
    assert info.value.key == "EXPNUM"


def _mef(path: Path, names: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    ivar = np.full((8, 8), 0.25, np.float32)
    ivar[0, :3] = 0.0
    mask = np.zeros((8, 8), np.int16)
    mask[5, 5] = 3
    prim = fits.PrimaryHDU(header=_header(EXPNUM=42, CCDNUM=2, FILTER="r", ZP=1.0, ZPERR=0.0))
    fits.HDUList([prim, fits.ImageHDU(image, name=names[0]), fits.ImageHDU(ivar, name=names[1]),
                  fits.ImageHDU(mask, name=names[2])]).writeto(path)
    return image, ivar


@pytest.mark.parametrize(("weight_hdu", "mask_hdu"), [("WHT", "MSK"), (2, 3)])
def test_mask_and_weight_hdus_of_the_image_file(tmp_path, weight_hdu, mask_hdu):
    image, ivar = _mef(tmp_path / "mef.fits", ("SCI", "WHT", "MSK"))
    cfg = IngestConfig(layout="generic", weight_hdu=weight_hdu, mask_hdu=mask_hdu)
    report = ingest(tmp_path, tmp_path / "s.zarr", cfg)
    assert report.ingested == ["00000042_02"], report.summary()
    got = _arrays(tmp_path / "s.zarr")["00000042_02"]
    assert np.array_equal(got["image"], image) and np.array_equal(got["ivar"], ivar)
    assert got["mask"][5, 5] == MaskBit.OTHER
    assert np.all(got["mask"][0, :3] == MaskBit.NODATA)
    assert np.count_nonzero(got["mask"]) == 4
    with pytest.raises(ValueError, match="alternatives"):
        IngestConfig(layout="generic", weight_hdu="WHT", weight_substitution=("a", "b"))


def test_missing_weight_hdu_is_named(tmp_path):
    _mef(tmp_path / "mef.fits", ("SCI", "IVAR", "DQ"))
    with pytest.raises(IngestError, match="no HDU named 'WHT'"):
        _plan_file(tmp_path / "mef.fits", IngestConfig(layout="generic", weight_hdu="WHT"))


def _cli_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ingest:\n  layout: generic\n  chunks: [32, 32]\n  expnum_from: order\n"
                   "  defaults: {band: I, ccd: 0, zp: 1.0, zp_err: 0.0}\n" + extra
                   + "cluster:\n  kind: threads\n")
    return cfg


def test_cli_fits_takes_globs_and_several_paths(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    for n in range(3):
        fits.PrimaryHDU(np.full((8, 8), n, np.float32), _header()).writeto(d / f"a{n}.fits")
    _gzip(d / "a2.fits", d / "a2.fits.gz")
    (d / "a2.fits").unlink()
    cfg = _cli_config(tmp_path)
    out = tmp_path / "run"
    assert main(["ingest", "--config", str(cfg), "--out", str(out),
                 "--fits", str(d / "a*.fits*")]) == EXIT_OK
    assert len(st.exposure_table(out / "store.zarr")) == 3
    out2 = tmp_path / "run2"  # several paths (a shell-expanded glob)
    assert main(["ingest", "--config", str(cfg), "--out", str(out2),
                 "--fits", str(d / "a0.fits"), str(d / "a2.fits.gz")]) == EXIT_OK
    assert len(st.exposure_table(out2 / "store.zarr")) == 2
    capsys.readouterr()
    out3 = tmp_path / "run3"
    assert main(["ingest", "--config", str(cfg), "--out", str(out3),
                 "--fits", str(d / "*.fz")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--fits: no file matches '{d / '*.fz'}'" in err
    assert not out3.exists()
    # an unquoted glob in --set is a configuration error, not a traceback
    assert main(["ingest", "--config", str(cfg), "--out", str(out3), "--fits", str(d),
                 "--set", "ingest.pattern=*.fits*"]) == EXIT_USAGE
    assert "override 'ingest.pattern=*.fits*': the value is not valid YAML" in \
        capsys.readouterr().err


@pytest.mark.real_data
def test_saao_frames_without_survey_keywords(real_data_dir, tmp_path):
    src = real_data_dir / "saao-kb13475"
    if not src.is_dir():
        pytest.skip("saao-kb13475 not present in the real test data")
    files = sorted(src.glob("AKB13475I*.fits"))
    # the PSF measurement is checked on two frames below; 24 would only cost time here
    cfg = _cli_config(tmp_path, "  measure_psf: false\n")
    out = tmp_path / "run"
    assert main(["ingest", "--config", str(cfg), "--out", str(out), "--fits",
                 str(src / "AKB13475I*.fits")]) == EXIT_OK
    t = st.exposure_table(out / "store.zarr").sort_values("expnum")
    assert list(t["expnum"]) == list(range(1, len(files) + 1))
    assert set(t["band"]) == {"I"} and set(t["gain"]) == {1.9}
    assert [Path(p).name for p in t["source_image"]] == [f.name for f in files]
    first = _arrays(out / "store.zarr")[st.frame_id(1, 0)]["image"]
    with fits.open(files[0]) as h:  # uint16 via BZERO 32768: physical values, float32
        assert np.array_equal(first, h[0].data.astype(np.float32))


def test_psf_measured_at_ingest_when_the_header_has_no_seeing(real_data_dir, tmp_path):
    src = real_data_dir / "saao-kb13475"
    if not src.is_dir():
        pytest.skip("saao-kb13475 not present in the real test data")
    cfg = _cli_config(tmp_path)
    out = tmp_path / "run"
    files = [str(src / "AKB13475I0007.fits"), str(src / "AKB13475I0100.fits")]
    assert main(["ingest", "--config", str(cfg), "--out", str(out), "--fits", *files]) == 0
    t = st.exposure_table(out / "store.zarr")
    # Moffat FWHM of the stars (their half-maximum width is 3.9-4.4 px on these frames)
    assert t["psf_fwhm_px"].between(3.0, 5.0).all(), t["psf_fwhm_px"].tolist()
    assert t["psf_beta"].between(2.0, 5.0).all() and (t["psf_n_stars"] >= 5).all()
    # these exposures' stars are longer along x (e1 0.16-0.57 over the 24, e2 within ±0.21)
    assert t["psf_e1"].between(0.1, 0.7).all() and t["psf_e2"].abs().lt(0.3).all(), t[
        ["psf_e1", "psf_e2"]].to_dict("records")
    assert (t["psf_e_n_stars"] >= 5).all()


@pytest.mark.real_data
def test_a_single_eso_frame_ingests_quietly_from_the_command_line(real_data_dir, tmp_path):
    """The NTT/EMMI frame (no EXPNUM/CCDNUM/FILTER/ZP, ESO-LOG cards that follow no FITS
    convention), ingested as a user does, in a process of its own: exit 0, the cards kept in
    the stored header, and no astropy warning per card on the console."""
    import subprocess
    import sys

    image = real_data_dir / "ntt-emmi-sextractor" / "image.fits"
    if not image.is_file():
        pytest.skip(f"{image} not present")
    out = tmp_path / "ntt"
    proc = subprocess.run(
        [sys.executable, "-m", "pausdenoise.cli", "ingest", "--out", str(out), "--fits",
         str(image), "--layout", "generic", "--cluster", "threads",
         "--set", "ingest.expnum_from=order",
         "--set", 'ingest.defaults={"ccd": 1, "band": "R", "zp": 1.0, "zp_err": 0.0}'],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "header keyword is invalid" not in proc.stdout + proc.stderr
    frame = st.list_frames(out / "store.zarr")[0]
    assert "ESO-LOG" in st.read_header_text(out / "store.zarr", frame)


def test_a_warning_many_files_share_is_said_once():
    from pausdenoise.ingest.driver import grouped_warnings

    same = [f"data/f{i}.fits [{i}/1]: no zero-point found, default zp=0.0145 used"
            for i in range(1, 25)]
    other = "data/f7.fits [7/1]: gain from the sky, a lower bound"
    got = grouped_warnings([same[0], other, *same[1:], "a warning of no file"])
    assert got == ["no zero-point found, default zp=0.0145 used (24 files: f1.fits, f2.fits, "
                   "f3.fits, …)", other, "a warning of no file"]
    assert grouped_warnings(same[:3]) == same[:3]  # a few stay as they were
