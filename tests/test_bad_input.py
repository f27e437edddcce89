"""Bad input through the real CLI and stage functions (issue 9): corrupted FITS, bad catalogue
rows, impossible configurations, and hypothesis fuzzing of the ingest header reader and the
catalogue validator.

Exit codes checked: 0 success, 1 failure, 2 usage/configuration, 3 partial (some inputs
skipped and named). Every message is checked for the file / row / key it must name.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from test_pipeline import TINY

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
    assert code == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "stage 'photometry' failed" in err and "aperture_theta" in err
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


def test_catalogue_file_missing_is_a_failure(base, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["photometry", "--config", str(base["cfg"]), "--out", str(out),
                 "--set", "input.source=store", "--set", f"input.store_path={base['store']}",
                 "--set", f"input.catalogue={tmp_path / 'nope.parquet'}"])
    assert code == EXIT_FAILURE
    assert "nope.parquet not found" in capsys.readouterr().err


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


def _is_nonfinite_number(s: str) -> bool:
    try:
        return not math.isfinite(float(s))
    except (TypeError, ValueError):
        return False


_TEXT = hs.text(alphabet="0123456789 .+-eEabcNInfGAZP_'", max_size=12)
_VALUE = hs.one_of(
    hs.none(),  # keyword absent
    hs.integers(-(2**62), 2**62),
    hs.floats(allow_nan=False, allow_infinity=False, width=64),
    hs.booleans(),
    _TEXT.filter(lambda s: not _is_nonfinite_number(s)),
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
    from pausdenoise.ingest import IngestConfig, _plan_file, read_frame

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
