"""Bad input through the real CLI and stage functions: corrupted FITS, bad catalogue
rows, impossible configurations, and hypothesis fuzzing of the ingest header reader and the
catalogue validator.

Exit codes checked: 0 success, 1 failure, 2 usage/configuration, 3 partial (some inputs
skipped and named). Every message is checked for the file / row / key it must name.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from pipeline_fixtures import TINY

from pausdenoise.cli import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, main
from pausdenoise.maskbits import MaskBit
from pausdenoise.paus_layout import image_path, mask_path
from pausdenoise.photometry import PhotFlag, validate_catalogue

SIM = {"seed": 5, "ccd_shape": [128, 128], "bands": ["NB455"], "exposures_per_band": 3,
       "galaxy_density": 120}
EXPNUMS = (1000, 1001, 1002)
FRAMES = [f"{e:08d}_01" for e in EXPNUMS]

CFG = copy.deepcopy(TINY)
CFG["simulate"] = SIM
CFG["train"].update(epochs=1, steps_per_epoch=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A clean tiny survey (3 frames of 128x128), its config file, a random tiny checkpoint
    and an ingested store of the clean survey."""
    import torch

    from pausdenoise.n2v.checkpoint import save_checkpoint
    from pausdenoise.n2v.unet import UNet
    from pausdenoise.simulate import SimulationConfig, write_survey

    root = tmp_path_factory.mktemp("badinput")
    write_survey(SimulationConfig(**SIM), root / "survey")
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    torch.manual_seed(0)
    unet_cfg = copy.deepcopy(CFG["train"]["unet"])
    from pausdenoise.n2v.train import UNetSettings

    model = UNet(UNetSettings(**unet_cfg).to_unet_config()).eval()
    ckpt = root / "random.safetensors"
    save_checkpoint(ckpt, model)
    clean = root / "clean"
    assert main(["ingest", "--config", str(cfg), "--out", str(clean),
                 "--fits", str(root / "survey")]) == EXIT_OK
    return {"root": root, "survey": root / "survey", "cfg": cfg, "ckpt": ckpt,
            "store": clean / "store.zarr", "catalogue": root / "survey" / "catalogue.parquet"}


def _survey_copy(base, tmp_path: Path) -> Path:
    d = tmp_path / "fits"
    shutil.copytree(base["survey"], d)
    return d


def _ingest(base, fits_dir: Path, out: Path, *extra: str) -> int:
    return main(["ingest", "--config", str(base["cfg"]), "--out", str(out), "--fits",
                 str(fits_dir), *extra])


def _run_from_fits(base, fits_dir: Path, out: Path, stages: str, *extra: str) -> int:
    return main(["run", "--config", str(base["cfg"]), "--out", str(out), "--stages", stages,
                 "--set", "input.source=fits", "--set", f"input.fits_path={fits_dir}",
                 "--set", f"input.catalogue={fits_dir / 'catalogue.parquet'}", *extra])


def _stage(out: Path, name: str) -> dict:
    stage = json.loads((out / "run.json").read_text())["stages"][name]
    return {**stage, **stage.get("summary", {})}


def _frames_in(store: Path) -> list[str]:
    from pausdenoise import store as st

    return st.list_frames(store)


# --------------------------------------------------------------------------- FITS


def test_truncated_fits_is_named_and_the_rest_ingested(base, tmp_path, capsys):
    d = _survey_copy(base, tmp_path)
    bad = image_path(d, EXPNUMS[1], 1)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert _ingest(base, d, out) == EXIT_PARTIAL
    text = capsys.readouterr().out
    assert f"FAILED {bad}" in text and "truncated FITS file" in text
    st_ = _stage(out, "ingest")
    assert st_["partial"] is True
    assert [f[0] for f in st_["failed"]] == [str(bad)]
    assert sorted(st_["ingested"]) == [FRAMES[0], FRAMES[2]]
    assert _frames_in(out / "store.zarr") == [FRAMES[0], FRAMES[2]]


def test_int16_image_is_converted_and_its_bitpix_recorded(base, tmp_path):
    from pausdenoise import store as st

    d = _survey_copy(base, tmp_path)
    p = image_path(d, EXPNUMS[0], 1)
    with fits.open(p) as h:
        header = h[0].header.copy()
        ints = np.clip(np.round(h[0].data), -32768, 32767).astype(np.int16)
    header["BITPIX"] = 16
    fits.PrimaryHDU(ints, header=header).writeto(p, overwrite=True)
    out = tmp_path / "out"
    assert _ingest(base, d, out) == EXIT_OK
    attrs = st.open_store(out / "store.zarr", "r")[f"frames/{FRAMES[0]}"].attrs
    assert attrs["source_bitpix"] == 16
    img = np.asarray(st.open_frame(out / "store.zarr", FRAMES[0], "image"))
    assert img.dtype == np.float32
    np.testing.assert_array_equal(img, ints.astype(np.float32))


def test_nonfinite_pixels_are_masked_and_never_spread(base, tmp_path):
    """NaN and Inf pixels: NONFINITE mask bit at exactly those pixels, a finite denoised
    image (the network sees the sky there), photometry flags the apertures they touch and
    keeps every flux finite."""
    from pausdenoise import store as st
    from pausdenoise.photometry import read_photometry

    d = _survey_copy(base, tmp_path)
    p = image_path(d, EXPNUMS[0], 1)
    with fits.open(p) as h:
        header, img = h[0].header.copy(), h[0].data.astype(np.float32)
    img[40:44, 50:60] = np.nan
    img[90, 10] = np.inf
    img[5, 120] = -np.inf
    fits.PrimaryHDU(img, header=header).writeto(p, overwrite=True)
    out = tmp_path / "out"
    code = _run_from_fits(base, d, out, "ingest,denoise,photometry",
                          "--set", f"input.checkpoint={base['ckpt']}")
    assert code == EXIT_OK
    store = out / "store.zarr"
    mask = np.asarray(st.open_frame(store, FRAMES[0], "mask"))
    bad = ~np.isfinite(img)
    assert ((mask & MaskBit.NONFINITE) != 0).sum() == bad.sum() == 42
    assert np.all((mask[bad] & MaskBit.NONFINITE) != 0)
    assert st.open_store(store, "r")[f"frames/{FRAMES[0]}"].attrs["n_nonfinite"] == 42
    den = np.asarray(st.open_frame(store, FRAMES[0], "denoised"))
    assert np.isfinite(den).all(), "NaN/Inf spread into the denoised image"
    phot = read_photometry(out / "photometry")
    assert np.isfinite(phot["flux"]).all() and np.isfinite(phot["flux_err"]).all()
    near = phot[(phot["expnum"] == EXPNUMS[0]) & (phot["x"].between(45, 65))
                & (phot["y"].between(36, 48))]
    if len(near):
        assert ((near["flags"] & PhotFlag.MASKED) != 0).all()


def test_missing_zp_keyword_is_named(base, tmp_path, capsys):
    d = _survey_copy(base, tmp_path)
    p = image_path(d, EXPNUMS[2], 1)
    with fits.open(p, mode="update") as h:
        del h[0].header["ZP"]
    out = tmp_path / "out"
    assert _ingest(base, d, out) == EXIT_PARTIAL
    text = capsys.readouterr().out
    assert f"FAILED {p}" in text and f"{p} [ZP]: missing required header keyword(s) ZP" in text
    assert _frames_in(out / "store.zarr") == FRAMES[:2]


def test_duplicate_exposure_is_refused_for_every_claimant(base, tmp_path, capsys):
    """The same (EXPNUM, CCD) in two files (a copy in a sub-directory, recursive search):
    both fail naming both files; the other frames go in; exit 3."""
    d = _survey_copy(base, tmp_path)
    (d / "again").mkdir()
    for f in (image_path(d, EXPNUMS[0], 1), mask_path(d, EXPNUMS[0], 1)):
        shutil.copy(f, d / "again" / f.name)
    out = tmp_path / "out"
    assert _ingest(base, d, out, "--set", "ingest.recursive=true") == EXIT_PARTIAL
    text = capsys.readouterr().out
    assert text.count("duplicate (expnum, ccd) = (1000, 1)") == 2
    assert "again/paucam.0001000.01.img.fits" in text
    assert _frames_in(out / "store.zarr") == FRAMES[1:]


def test_header_expnum_disagreeing_with_file_name_is_named(base, tmp_path, capsys):
    d = _survey_copy(base, tmp_path)
    p = image_path(d, EXPNUMS[1], 1)
    with fits.open(p, mode="update") as h:
        h[0].header["EXPNUM"] = EXPNUMS[0]  # a second claimant of exposure 1000
    out = tmp_path / "out"
    assert _ingest(base, d, out) == EXIT_PARTIAL
    text = capsys.readouterr().out
    assert f"{p} [EXPNUM]: header EXPNUM/CCD = 1000/1 disagree with the file name" in text


def test_nothing_ingestible_is_a_failure(base, tmp_path, capsys):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "paucam.0001000.01.img.fits").write_bytes(b"not a fits file at all" * 10)
    out = tmp_path / "out"
    assert _ingest(base, d, out) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "nothing could be ingested" in err and "not a readable FITS file" in err


@pytest.mark.parametrize("stages", ["ingest,train,denoise,photometry", "ingest,denoise,photometry"])
def test_all_masked_ccd_is_skipped_with_a_reason(base, tmp_path, stages, capsys):
    """Every pixel of one CCD masked: train should use the other frames, denoise should skip
    (or pass through) that frame with a reason, photometry flags all its rows MASKED; the
    run goes on (exit 0 or 3), and nothing non-finite appears in the other frames."""
    from pausdenoise import store as st
    from pausdenoise.photometry import read_photometry

    d = _survey_copy(base, tmp_path)
    p = mask_path(d, EXPNUMS[0], 1)
    with fits.open(p) as h:
        m = np.full_like(h[0].data, int(MaskBit.OTHER))
        header = h[0].header.copy()
    fits.PrimaryHDU(m, header=header).writeto(p, overwrite=True)
    out = tmp_path / "out"
    extra = [] if "train" in stages else ["--set", f"input.checkpoint={base['ckpt']}"]
    code = _run_from_fits(base, d, out, stages, *extra)
    err = capsys.readouterr().err
    assert code in (EXIT_OK, EXIT_PARTIAL), err
    store = out / "store.zarr"
    for f in FRAMES[1:]:
        assert np.isfinite(np.asarray(st.open_frame(store, f, "denoised"))).all()
    # the all-masked frame is skipped by the denoiser with its reason (partial success)
    assert "denoised" not in st.frame_arrays(store, FRAMES[0])
    skipped = _stage(out, "denoise")["summary"]["skipped"]
    assert skipped[0][0] == FRAMES[0] and "no good finite pixel" in skipped[0][1]
    assert code == EXIT_PARTIAL
    phot = read_photometry(out / "photometry")
    rows = phot[phot["expnum"] == EXPNUMS[0]]
    assert ((rows["flags"].to_numpy() & int(PhotFlag.MASKED)) != 0).all()


# --------------------------------------------------------------------------- catalogue


def _phot_with(base, tmp_path: Path, catalogue: pd.DataFrame) -> tuple[int, Path]:
    cat = tmp_path / "cat.parquet"
    catalogue.to_parquet(cat, index=False)
    out = tmp_path / "out"
    code = main(["photometry", "--config", str(base["cfg"]), "--out", str(out),
                 "--set", "input.source=store", "--set", f"input.store_path={base['store']}",
                 "--set", f"input.catalogue={cat}", "--set", "photometry.kinds=[raw]"])
    return code, out


def test_catalogue_missing_column_fails_naming_it(base, tmp_path, capsys):
    cat = pd.read_parquet(base["catalogue"]).drop(columns=["aperture_theta"])
    code, _ = _phot_with(base, tmp_path, cat)
    assert code == EXIT_USAGE  # refused before any work
    err = capsys.readouterr().err
    assert "catalogue error" in err and "[aperture_theta]: missing column" in err
    with pytest.raises(KeyError, match="aperture_theta"):
        validate_catalogue(cat)


def test_catalogue_bad_rows_are_flagged_and_the_rest_measured(base, tmp_path, capsys):
    """NaN position, zero and negative axes, a duplicated ref_id and a position off the CCD:
    each named by row and ref_id in catalogue_issues.csv, flagged in the output, the run
    finishes (exit 0: rows are flagged, not skipped) with every other row measured."""
    cat = pd.read_parquet(base["catalogue"]).reset_index(drop=True)
    cat = cat[cat["expnum"] == EXPNUMS[0]].reset_index(drop=True)
    ids = cat["ref_id"].to_numpy()
    cat.loc[0, "aperture_x"] = np.nan
    cat.loc[1, "aperture_a"] = 0.0
    cat.loc[2, "aperture_b"] = -1.0
    cat.loc[4, "ref_id"] = ids[3]  # duplicate within the frame
    cat.loc[5, ["aperture_x", "aperture_y"]] = [5000.0, -300.0]
    code, out = _phot_with(base, tmp_path, cat)
    assert code == EXIT_OK
    assert "catalogue row problem(s), flagged" in capsys.readouterr().out
    issues = pd.read_csv(out / "catalogue_issues.csv")
    by_row = issues.groupby("row")["problem"].apply(list).to_dict()
    assert "non-finite position" in by_row[0]
    assert "non-positive aperture axis" in by_row[1]
    assert "non-positive aperture axis" in by_row[2]
    assert any("duplicate ref_id" in t for t in by_row[3])
    assert any("duplicate ref_id" in t for t in by_row[4])
    assert issues.loc[issues["row"] == 0, "ref_id"].iloc[0] == ids[0]
    phot = _partitions(out / "photometry")
    phot = phot[phot["expnum"] == EXPNUMS[0]]
    assert len(phot) == len(cat)  # nothing dropped
    bad = phot[phot["ref_id"].isin(ids[[0, 1, 2, 3]])]
    assert ((bad["flags"] & int(PhotFlag.BAD_INPUT)) != 0).all()
    off = phot[(phot["x"] == 5000.0)]
    assert len(off) == 1 and (off["flags"].iloc[0] & int(PhotFlag.OFF_IMAGE))
    good = phot[~phot["ref_id"].isin(ids[:6]) & ((phot["flags"] & int(PhotFlag.BAD_INPUT)) == 0)]
    assert len(good) == len(cat) - 6 and np.isfinite(good["flux"]).all()


def _partitions(d: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(d.rglob("*.parquet"))],
                     ignore_index=True)


def test_photometry_readable_after_catalogue_issues(base, tmp_path):
    from pausdenoise.photometry import read_photometry

    cat = pd.read_parquet(base["catalogue"]).reset_index(drop=True)
    cat.loc[0, "aperture_x"] = np.nan
    code, out = _phot_with(base, tmp_path, cat)
    assert code == EXIT_OK
    assert (out / "catalogue_issues.csv").exists()
    assert len(read_photometry(out / "photometry")) == len(cat)


def test_catalogue_off_ccd_rows_named_when_shape_given(base):
    cat = pd.read_parquet(base["catalogue"]).reset_index(drop=True)
    cat.loc[7, "aperture_x"] = 128.0
    cat.loc[8, "aperture_y"] = -0.6
    check = validate_catalogue(cat, shape=(128, 128))
    assert set(check.issues["row"]) == {7, 8}
    assert all("off the CCD (128x128)" in p for p in check.issues["problem"])
    assert check.row_flags[7] & PhotFlag.OFF_IMAGE and check.row_flags[8] & PhotFlag.OFF_IMAGE


def test_catalogue_theta_in_radians_warns(base, tmp_path):
    cat = pd.read_parquet(base["catalogue"]).reset_index(drop=True)
    rng = np.random.default_rng(0)
    cat["aperture_theta"] = rng.uniform(-np.pi / 2, np.pi / 2, len(cat))
    with pytest.warns(UserWarning, match="look like radians"):
        validate_catalogue(cat)
    with pytest.warns(UserWarning, match="look like radians"):
        code, _ = _phot_with(base, tmp_path, cat)
    assert code == EXIT_OK
    # degrees (the convention) do not warn
    cat["aperture_theta"] = rng.uniform(-90, 90, len(cat))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_catalogue(cat)


def test_catalogue_file_missing_is_a_configuration_error(base, tmp_path, capsys):
    """Refused before any work (its content enters the stage fingerprints): exit 2."""
    out = tmp_path / "out"
    code = main(["photometry", "--config", str(base["cfg"]), "--out", str(out),
                 "--set", "input.source=store", "--set", f"input.store_path={base['store']}",
                 "--set", f"input.catalogue={tmp_path / 'nope.parquet'}"])
    assert code == EXIT_USAGE
    assert "nope.parquet not found" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "text", "needles"),
    [
        ([], "[train.unet]\ndept = 3\n", ["train.unet.dept", "unknown key"]),
        ([], "trian:\n  epochs: 2\n", ["trian", "unknown key"]),
        (["--set", "train.epochs=abc"], None, ["train.epochs"]),
        (["--set", "denoise.halo=34"], None, ["denoise.halo = 34", "multiple of 2**depth"]),
        (["--set", "denoise.halo=128", "--set", "ingest.chunks=[64, 64]"], None,
         ["ingest.chunks = [64, 64]", "halo of 128 px", "try ingest.chunks = [128, 128]"]),
        (["--set", "ingest.chunks=[36, 36]", "--set", "denoise.restore_catalogue=true"], None,
         ["ingest.chunks = [36, 36]", "halo of 40 px", "restoration's reach",
          "try ingest.chunks = [40, 40]"]),
        (["--set", "ingest.chunks=[0, 64]"], None, ["ingest", "chunks must be positive"]),
        (["--set", "ingest.chunks=[64, 64]", "--set", "ingest.shards=[100, 100]"], None,
         ["shards", "multiples"]),
        (["--set", "input.source=fits"], None, ["input.fits_path"]),
        (["--set", "photometry.annulus_r_out=10"], None, ["annulus_r_out"]),
        ([], "- just\n- a list\n", ["mapping at the top level"]),
        ([], "train: {epochs: [\n", ["is not valid yaml"]),
    ],
)
def test_bad_configuration_is_a_usage_error_before_work(tmp_path, capsys, overrides, text,
                                                        needles):
    args = ["run", "--out", str(tmp_path / "o"), *overrides]
    if text is not None:
        cfg = tmp_path / ("c.toml" if text.startswith("[") else "c.yaml")
        cfg.write_text(text)
        args += ["--config", str(cfg)]
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    for n in needles:
        assert n in err, err
    assert not (tmp_path / "o").exists()


def test_missing_config_file_is_a_usage_error(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "none.yaml"),
                 "--out", str(tmp_path / "o")]) == EXIT_USAGE
    assert "none.yaml does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- fuzz: headers


_TEXT = hs.text(alphabet="0123456789 .+-eEabcNInfGAZP_'", max_size=12)
_VALUE = hs.one_of(
    hs.none(),  # keyword absent
    hs.integers(-(2**62), 2**62),
    hs.floats(allow_nan=False, allow_infinity=False, width=64),
    hs.booleans(),
    hs.sampled_from(["inf", "nan", "-inf", "1e999"]),  # strings that float() reads
    _TEXT,
)
_KEYS = ("EXPNUM", "CCD", "FILTER", "EXPTIME", "GAIN", "RDNOISE", "ZP", "ZPERR", "SATURATE")


def _write_paus(d: Path, values: dict) -> Path:
    img = np.arange(64, dtype=np.float32).reshape(8, 8)
    h = fits.Header()
    for k, v in values.items():
        if v is not None:
            h[k] = v
    p = image_path(d, 1000, 1)
    fits.PrimaryHDU(img, header=h).writeto(p, overwrite=True)
    fits.PrimaryHDU(np.zeros((8, 8), np.uint8)).writeto(mask_path(d, 1000, 1), overwrite=True)
    return p


def _plan_and_read(path: Path):
    from pausdenoise.ingest import IngestConfig, read_frame
    from pausdenoise.ingest.plan import _plan_file

    cfg = IngestConfig()
    return [read_frame(s, cfg) for s in _plan_file(path, cfg)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=hs.fixed_dictionaries({k: _VALUE for k in _KEYS}),
       good=hs.sets(hs.sampled_from(_KEYS)))
def test_fuzz_header_values_ingest_or_raise_ingest_error(tmp_path_factory, values, good):
    """Random values/types for the PAUS header keywords (keys in ``good`` get sane values so
    that valid frames occur too): the reader ingests or raises IngestError, nothing else."""
    from pausdenoise.ingest import IngestError

    sane = {"EXPNUM": 1000, "CCD": 1, "FILTER": "NB455", "EXPTIME": 100.0, "GAIN": 0.65,
            "RDNOISE": 9.0, "ZP": 0.01, "ZPERR": 1e-4, "SATURATE": 6e4}
    values = {k: (sane[k] if k in good else v) for k, v in values.items()}
    d = tmp_path_factory.mktemp("fz")
    try:
        p = _write_paus(d, values)
    except (ValueError, TypeError):
        return  # astropy refuses to write such a card: not a file anyone can hand us
    try:
        frames = _plan_and_read(p)
    except IngestError as exc:
        assert str(p) in str(exc)
        return
    (frame,) = frames
    assert frame.attrs["expnum"] == 1000 and frame.attrs["ccd"] == 1


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_nonfinite_expnum_string_raises_ingest_error(tmp_path, value):
    from pausdenoise.ingest import IngestError

    p = _write_paus(tmp_path, {"EXPNUM": value, "CCD": 1, "FILTER": "NB455", "EXPTIME": 1.0,
                               "GAIN": 1.0, "RDNOISE": 1.0, "ZP": 1.0, "ZPERR": 0.1})
    with pytest.raises(IngestError, match="EXPNUM"):
        _plan_and_read(p)


def test_non_integer_expnum_is_refused(tmp_path):
    from pausdenoise.ingest import IngestError

    p = _write_paus(tmp_path, {"EXPNUM": 1000.7, "CCD": 1, "FILTER": "NB455", "EXPTIME": 1.0,
                               "GAIN": 1.0, "RDNOISE": 1.0, "ZP": 1.0, "ZPERR": 0.1})
    with pytest.raises(IngestError, match="EXPNUM"):
        _plan_and_read(p)


# --------------------------------------------------------------------------- fuzz findings: headers
# Inputs the atheris fuzzer (benchmarks/fuzz/) found or led to; each used to end in an
# exception other than IngestError, a hang, or a frame that broke a later stage.

_PAUS_CARDS = {"EXPNUM": "1000", "CCD": "1", "FILTER": "'NB455'", "EXPTIME": "100.0",
               "GAIN": "0.65", "RDNOISE": "9.0", "ZP": "0.01", "ZPERR": "0.0001"}


def _raw_hdu(cards: dict[str, str], naxis: str = "2", extension: bool = False) -> bytes:
    """One 4x4 float32 HDU written card by card (astropy refuses to write most of these)."""
    first = ["XTENSION= 'IMAGE   '"] if extension else ["SIMPLE  =                    T"]
    head = [*first, "BITPIX  =                  -32", f"NAXIS   = {naxis:>20}",
            "NAXIS1  =                    4", "NAXIS2  =                    4",
            *(["PCOUNT  =                    0", "GCOUNT  =                    1"]
              if extension else []),
            *(f"{k:<8}= {v:>20}" for k, v in cards.items()), "END"]
    raw = "".join(c.ljust(80)[:80] for c in head).encode("latin-1")
    raw += b" " * (-len(raw) % 2880)
    data = bytes(4 * 16)
    return raw + data + b"\0" * (-len(data) % 2880)


def _raw_fits(path: Path, cards: dict[str, str], naxis: str = "2") -> Path:
    path.write_bytes(_raw_hdu(cards, naxis))
    return path


def _paus_raw(d: Path, naxis: str = "2", **override: str) -> Path:
    p = _raw_fits(image_path(d, 1000, 1), {**_PAUS_CARDS, **override}, naxis)
    fits.PrimaryHDU(np.zeros((4, 4), np.uint8)).writeto(mask_path(d, 1000, 1), overwrite=True)
    return p


@pytest.mark.parametrize(("override", "key", "text"), [
    ({"GAIN": "T"}, "GAIN", "is a logical, not a number"),  # was read as gain 1.0
    ({"GAIN": "0.0"}, "GAIN", "must be finite and > 0"),  # photometry failed on it later
    ({"ZP": "'nan'"}, "ZP", "must be finite and > 0"),
    ({"EXPTIME": "-1.0"}, "EXPTIME", "must be finite and >= 0"),
    ({"RDNOISE": "'inf'"}, "RDNOISE", "must be finite and >= 0"),
    ({"MJD-OBS": "(1.0, 2.0)"}, "MJD-OBS", "is not a number"),  # was TypeError
    ({"EXPNUM": "'abc"}, "EXPNUM", "cannot be parsed"),  # was astropy VerifyError
    ({"EXPTIME": "\x17 100.0"}, "EXPTIME", "cannot be parsed"),
    ({"OBSERVER": "'\x17abc'"}, "OBSERVER", "header cannot be read"),  # was ValueError
])
def test_fuzz_finding_header_values_are_named(tmp_path, override, key, text):
    from pausdenoise.ingest import IngestError

    p = _paus_raw(tmp_path, **override)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(IngestError, match=re.escape(text)) as info:
            _plan_and_read(p)
    assert info.value.key == key and str(p) in str(info.value)


def test_fuzz_finding_huge_naxis_is_refused_at_once(tmp_path):
    """astropy loops over range(NAXIS) before checking anything: NAXIS = 2**31 kept the
    planner busy for hours. The header walk refuses it first."""
    from pausdenoise.ingest import IngestError

    p = _paus_raw(tmp_path, naxis="2147483648")
    t0 = time.perf_counter()
    with pytest.raises(IngestError, match=r"NAXIS = 2147483648 is outside 0\.\.999") as info:
        _plan_and_read(p)
    assert time.perf_counter() - t0 < 5.0
    assert info.value.key == "NAXIS"


def _generic_raw(d: Path, name: str = "img.fits", **override: str) -> Path:
    cards = {**_PAUS_CARDS, "CCDNUM": "1", **override}
    cards.pop("CCD")
    return _raw_fits(d / name, cards)


@pytest.mark.parametrize(("override", "cfg", "key", "text"), [
    ({"EXPNUM": "1000000000"}, {}, "EXPNUM", "outside 0..99999999"),  # frame id ValueError
    ({"CCDNUM": "-3"}, {}, "CCDNUM", "outside 0..99"),
    ({"EXPTIME": "0.0", "ZP": "25.0"}, {"zp_kind": "mag", "zp_per_second": True}, "ZP",
     "needs a positive exptime"),  # was ValueError from zp_factor_from_mag
    ({"ZP": "-1E308"}, {"zp_kind": "mag"}, "ZP", "gives no finite factor"),  # OverflowError
])
def test_fuzz_finding_generic_values_are_named(tmp_path, override, cfg, key, text):
    from pausdenoise.ingest import IngestConfig, IngestError
    from pausdenoise.ingest.plan import _plan_file

    p = _generic_raw(tmp_path, **override)
    with pytest.raises(IngestError, match=re.escape(text)) as info:
        _plan_file(p, IngestConfig(layout="generic", **cfg))
    assert info.value.key == key and str(p) in str(info.value)


def test_fuzz_finding_out_of_range_expnum_fails_its_file_not_the_batch(tmp_path):
    """EXPNUM = 10**9 used to raise ValueError (frame id) in plan_ingest's main loop, which
    stopped the whole batch without naming the file."""
    from pausdenoise.ingest import IngestConfig, plan_ingest

    good = _generic_raw(tmp_path, "good.fits")
    bad = _generic_raw(tmp_path, "bad.fits", EXPNUM="1000000000", CCDNUM="2")
    sources, failed = plan_ingest([good, bad], tmp_path / "store.zarr",
                                  IngestConfig(layout="generic"))
    assert [s.image for s in sources] == [good]
    assert len(failed) == 1 and failed[0][0] == str(bad) and "[EXPNUM]" in failed[0][1]


@pytest.mark.parametrize(("first", "extname", "key"), [
    ("XTENSION= 'IMAGE   '", "'N4", "EXTNAME"),  # was VerifyError from hdu.name
    ("XTENSION= 'IMAGE", "'N4'", "XTENSION"),  # was VerifyError from hdu.is_image
])
def test_fuzz_finding_unparsable_extension_cards_are_named(tmp_path, first, extname, key):
    from pausdenoise.ingest import IngestConfig, IngestError
    from pausdenoise.ingest.plan import _plan_file

    p = tmp_path / "mef.fits"
    cards = {**_PAUS_CARDS, "CCDNUM": "1"}
    ext = _raw_hdu({"EXTNAME": extname}, extension=True)
    ext = ext.replace(b"XTENSION= 'IMAGE   '".ljust(80), first.encode().ljust(80))
    p.write_bytes(_raw_hdu(cards) + ext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(IngestError) as info:
            _plan_file(p, IngestConfig(layout="generic"))
    assert info.value.key == key and str(p) in str(info.value)


# --------------------------------------------------------------------------- fuzz: catalogue

_NUM = hs.one_of(hs.floats(allow_nan=True, allow_infinity=True, width=64),
                 hs.integers(-(10**6), 10**6).map(float))


@settings(max_examples=80, deadline=None)
@given(
    n=hs.integers(0, 12),
    data=hs.data(),
    drop=hs.sets(hs.sampled_from(("aperture_x", "aperture_y", "aperture_a", "aperture_b",
                                  "aperture_theta", "ref_id", "expnum", "ccd")), max_size=2),
    shape=hs.one_of(hs.none(), hs.tuples(hs.integers(1, 300), hs.integers(1, 300))),
)
def test_fuzz_catalogue_validator(n, data, drop, shape):
    """Random catalogues: validate_catalogue returns a consistent CatalogueCheck, or raises
    KeyError naming a missing required column; never anything else."""
    from pausdenoise.photometry import REQUIRED_COLUMNS

    cols = {
        "ref_id": data.draw(hs.lists(hs.integers(0, 5), min_size=n, max_size=n)),
        "expnum": data.draw(hs.lists(hs.integers(1000, 1001), min_size=n, max_size=n)),
        "ccd": [1] * n,
    }
    for c in ("aperture_x", "aperture_y", "aperture_a", "aperture_b", "aperture_theta"):
        cols[c] = data.draw(hs.lists(_NUM, min_size=n, max_size=n))
    df = pd.DataFrame({k: v for k, v in cols.items() if k not in drop})
    missing = [c for c in REQUIRED_COLUMNS if c in drop]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if missing:
            with pytest.raises(KeyError, match=missing[0]):
                validate_catalogue(df, shape)
            return
        check = validate_catalogue(df, shape)
    assert len(check.row_flags) == n
    assert check.issues["row"].between(0, max(n - 1, 0)).all()
    x, y = df["aperture_x"].to_numpy(), df["aperture_y"].to_numpy()
    a, b = df["aperture_a"].to_numpy(), df["aperture_b"].to_numpy()
    with np.errstate(invalid="ignore"):
        unusable = (~np.isfinite(x) | ~np.isfinite(y) | ~np.isfinite(a) | ~np.isfinite(b)
                    | ~np.isfinite(df["aperture_theta"].to_numpy()) | (a <= 0) | (b <= 0))
    flagged = (check.row_flags & PhotFlag.BAD_INPUT) != 0
    assert np.all(flagged[unusable])
    assert set(np.flatnonzero(check.row_flags)) <= set(check.issues["row"])
    assert check.ok == check.issues.empty


# --------------------------------------------------------------------------- catalogue reader
# read_catalogue (pausdenoise.photometry) is what the photometry stage reads the catalogue
# with; the cases below are what the atheris fuzzer fed it, or what reached measure_frame.


def _cat_df(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"ref_id": np.arange(n), "ra": 0.0, "dec": 0.0, "I_auto": 20.0,
                         "expnum": 1000, "ccd": 1, "band": "NB455",
                         "aperture_x": np.linspace(5.0, 20.0, n), "aperture_y": 8.0,
                         "aperture_a": 2.0, "aperture_b": 1.5, "aperture_theta": 10.0})


def _write_cat(tmp_path: Path, df: pd.DataFrame) -> Path:
    path = tmp_path / "catalogue.parquet"
    df.to_parquet(path, index=False)
    return path


def _edit(df: pd.DataFrame, column: str, values: list) -> pd.DataFrame:
    df = df.copy()
    df[column] = pd.Series(values, dtype=object)
    return df


@pytest.mark.parametrize(("column", "values", "text"), [
    ("aperture_x", ["1.5", "abc", "2"], "[aperture_x] row 1: value 'abc' is not a number"),
    ("aperture_a", [True, False, True], "[aperture_a]: has type bool"),
    ("ref_id", [1, None, 3], "[ref_id] row 1: value nan is not an integer"),
    ("ref_id", [1.0, 2.5, 3.0], "[ref_id] row 1: value 2.5 is not an integer"),
    ("expnum", ["1000", "x", "1000"], "[expnum] row 1"),
    ("I_auto", [b"\xc8", b"a", b"b"], "[I_auto] row 0"),  # was ValueError in measure_frame
    ("band", ["NB455", "../../escape", "NB455"], "[band] row 1: band '../../escape'"),
    ("band", ["NB 455", "NB455", "NB455"], "[band] row 0"),
    ("band", ["a=b", "NB455", "NB455"], "[band] row 0"),
])
def test_catalogue_reader_names_file_column_and_row(tmp_path, column, values, text):
    from pausdenoise.photometry import CatalogueError, read_catalogue

    path = _write_cat(tmp_path, _edit(_cat_df(), column, values))
    with pytest.raises(CatalogueError) as info:
        read_catalogue(path)
    assert str(info.value).startswith(str(path)) and text in str(info.value)
    assert isinstance(info.value, ValueError)


def test_catalogue_reader_normalises_types(tmp_path):
    from pausdenoise.photometry import read_catalogue

    df = _edit(_cat_df(), "aperture_x", ["1.5", None, " 7 "])
    df["ref_id"] = pd.array([10, 11, 2**62], dtype="Int64")
    df["aperture_y"] = df["aperture_y"].astype("float32")
    cat = read_catalogue(_write_cat(tmp_path, df))
    assert cat["aperture_x"].dtype == np.float64 and cat["ref_id"].dtype == np.int64
    np.testing.assert_array_equal(cat["aperture_x"], [1.5, np.nan, 7.0])
    assert cat["ref_id"].tolist() == [10, 11, 2**62]  # exact, not through float
    check = validate_catalogue(cat)  # the missing position is a row problem, not an error
    assert check.issues["row"].tolist() == [1]


@pytest.mark.parametrize("content", [b"", b"PAR1", b"PAR1" + bytes(100) + b"PAR1",
                                     b"not parquet at all"])
def test_catalogue_reader_refuses_unreadable_files(tmp_path, content):
    from pausdenoise.photometry import CatalogueError, read_catalogue

    path = tmp_path / "catalogue.parquet"
    path.write_bytes(content)
    with pytest.raises(CatalogueError, match="not a readable Parquet table") as info:
        read_catalogue(path)
    assert str(path) in str(info.value)


def test_catalogue_reader_refuses_missing_and_duplicate_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pausdenoise.photometry import CatalogueError, read_catalogue

    path = _write_cat(tmp_path, _cat_df().drop(columns=["aperture_b"]))
    with pytest.raises(CatalogueError, match=r"\[aperture_b\]: missing column"):
        read_catalogue(path)
    table = pa.Table.from_pandas(_cat_df(), preserve_index=False)
    table = table.append_column("aperture_x", pa.array([1.0, 2.0, 3.0]))
    pq.write_table(table, path)
    with pytest.raises(CatalogueError, match=r"duplicate column name\(s\) \['aperture_x'\]"):
        read_catalogue(path)


def test_catalogue_text_column_fails_the_stage_naming_it(base, tmp_path, capsys):
    cat = pd.read_parquet(base["catalogue"]).reset_index(drop=True)
    cat = _edit(cat, "aperture_y", ["oops", *map(str, cat["aperture_y"].tolist()[1:])])
    code, _ = _phot_with(base, tmp_path, cat)
    assert code == EXIT_USAGE  # refused before any work
    err = capsys.readouterr().err
    assert "cat.parquet [aperture_y] row 0: value 'oops' is not a number" in err


@pytest.mark.parametrize(("column", "value", "flag"), [
    ("aperture_a", 1e-300, "BAD_INPUT"),  # was ZeroDivisionError in photutils' overlap
    ("aperture_b", 5e-324, "BAD_INPUT"),
    ("aperture_a", 1e200, "BAD_INPUT"),  # was OverflowError (infinite bounding box)
    ("aperture_x", 1e300, "OFF_IMAGE"),  # was IndexError (int64 overflow in the annulus)
    ("aperture_y", -1e300, "OFF_IMAGE"),
])
def test_fuzz_finding_extreme_apertures_are_flagged(column, value, flag):
    from pausdenoise.photometry import PhotometryConfig, measure_frame

    rows = _cat_df(3)
    rows.loc[1, column] = value
    rows.loc[1, "aperture_b"] = min(rows.loc[1, "aperture_b"], rows.loc[1, "aperture_a"])
    image = np.random.default_rng(0).normal(100.0, 5.0, (32, 32)).astype(np.float32)
    for subpixels in (0, 5):
        out = measure_frame(image, None, rows, PhotometryConfig(
            aperture_units="pixel", subpixels=subpixels, annulus_r_in=4, annulus_r_out=8,
            min_annulus_pixels=5), gain=1.0)
        assert out["flags"].iloc[1] & PhotFlag[flag]
        assert np.isfinite(out["flux"].iloc[[0, 2]]).all()


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("band", ["a/../../../../etc", "..", "NB 455", "x\\y"])
def test_band_names_that_could_escape_the_output_are_refused(tmp_path, band):
    """FILTER becomes a directory name downstream (photometry partitions): refuse it at
    ingest, naming the file and the keyword."""
    from pausdenoise.ingest import IngestError

    p = _write_paus(tmp_path, {"EXPNUM": 1000, "CCD": 1, "FILTER": band, "EXPTIME": 1.0,
                               "GAIN": 1.0, "RDNOISE": 1.0, "ZP": 1.0, "ZPERR": 0.1})
    with pytest.raises(IngestError, match="FILTER") as info:
        _plan_and_read(p)
    assert p.name in str(info.value)


@pytest.mark.parametrize("bad", [("../x", "raw", "f"), ("NB455", "..", "f"),
                                 ("NB455", "raw", "../../f")])
def test_photometry_partition_path_stays_inside(tmp_path, bad):
    from pausdenoise.photometry import partition_path

    with pytest.raises(ValueError, match="cannot be used in an output path"):
        partition_path(tmp_path, *bad)
    assert partition_path(tmp_path, "NB455", "raw", "00001000_01").is_relative_to(tmp_path)


@pytest.mark.parametrize("band", ["NB 455", "a=b", "x" * 65, "", "NB455\n", ".", 455, None])
def test_photometry_partition_path_refuses_names_that_are_not_plain(tmp_path, band):
    """Bands come from the catalogue: whitespace, '=' (the hive separator), over-long,
    empty or non-text names are refused too, not only separators and '..'."""
    from pausdenoise.photometry import partition_path

    with pytest.raises(ValueError, match="cannot be used in an output path"):
        partition_path(tmp_path, band, "raw", "00001000_01")


def test_catalogue_band_cannot_escape_the_photometry_directory(base, tmp_path):
    """A catalogue DataFrame handed to run_photometry directly (not through read_catalogue)
    with a band that would climb out of the output: refused before anything is written."""
    from pausdenoise.photometry import PhotometryConfig, run_photometry

    cat = pd.read_parquet(base["catalogue"]).reset_index(drop=True)
    cat["band"] = "../../../escaped"
    out = tmp_path / "phot"
    with pytest.raises(ValueError, match=re.escape("band name '../../../escaped' cannot")):
        run_photometry(base["store"], out, [FRAMES[0]], cat, PhotometryConfig(kinds=("raw",)),
                       compute=False)
    assert not out.exists() and not (tmp_path / "escaped").exists()


def test_catalogue_band_escape_through_the_cli_is_named(base, tmp_path, capsys):
    cat = pd.read_parquet(base["catalogue"]).reset_index(drop=True)
    cat.loc[3, "band"] = "../../../escaped"
    code, _ = _phot_with(base, tmp_path, cat)
    assert code == EXIT_USAGE  # refused before any work
    assert "[band] row 3: band '../../../escaped' is not a plain name" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*escaped*"))
