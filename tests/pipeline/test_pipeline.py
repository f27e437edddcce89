"""End to end through the real CLI on a tiny simulated survey: every stage, the report,
resume on rerun, configuration errors and exit codes."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pipeline_fixtures import TINY

from pausdenoise import store as st
from pausdenoise.cli import EXIT_LOCKED, EXIT_OK, EXIT_USAGE, main
from pausdenoise.config import PipelineConfig, load_config, reference_yaml
from pausdenoise.errors import ConfigError


def _png_ok(path: Path) -> bool:
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    w, h = struct.unpack(">II", data[16:24])
    return w > 50 and h > 50


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = root / "out"
    code = main(["run", "--config", str(cfg), "--out", str(out)])
    return code, cfg, out


def test_run_all_stages_and_report(tiny_run):
    code, _, out = tiny_run
    assert code == EXIT_OK
    record = json.loads((out / "run.json").read_text())
    for stage in ("simulate", "ingest", "train", "denoise", "photometry", "compare",
                  "evaluate", "report"):
        assert record["stages"][stage]["status"] == "done", stage
        assert record["stages"][stage]["seconds"] > 0
    html = (out / "report" / "index.html").read_text()
    assert html.count("data:image/png;base64,") >= 6
    figs = sorted((out / "report" / "figures").glob("*.png"))
    names = {p.stem for p in figs}
    assert {"stamps", "profile", "residuals", "df_histograms", "sigma68", "flux_bias",
            "completeness", "training_loss", "timings"} <= names
    assert all(_png_ok(p) for p in figs)
    s68 = pd.read_csv(out / "report" / "tables" / "sigma68_by_bin.csv")
    assert {"bin", "n_pairs", "sigma68_raw", "sigma68_den_rawerr",
            "median_ratio_den_raw"} <= set(s68.columns)
    allrow = s68[s68["bin"] == "all"].iloc[0]
    assert allrow["n_pairs"] > 0 and np.isfinite(allrow["sigma68_raw"])
    pix = pd.read_csv(out / "report" / "tables" / "pixel_summary.csv")
    assert set(pix["kind"]) == {"raw", "denoised"}
    assert np.isfinite(pix["rms"]).all() and (pix["rms"] > 0).all()
    # the raw image's noise on sky pixels is what the simulation put in (~sqrt(sky+rn^2))
    sky_raw = pix[(pix["kind"] == "raw") & (pix["pixel_class"] == "sky")]["rms"].iloc[0]
    assert 5 < sky_raw < 60


def test_evaluate_writes_depth_at_equal_purity(tiny_run):
    _, _, out = tiny_run
    ev_dir = out / "evaluate"
    sweep = pd.read_csv(ev_dir / "depth_sweep.csv")
    assert {"raw", "denoised"} <= set(sweep["kind"]) and set(sweep["truth"]) == {"simulation"}
    for _, g in sweep.drop_duplicates(["kind", "threshold"]).groupby("kind"):
        n = g["n_detections"].to_numpy()  # (blends can split as the threshold rises)
        assert n[0] > n[-1] and (g["purity"].dropna().between(0, 1)).all()
    depth = pd.read_csv(ev_dir / "depth.csv")
    assert set(depth["purity_target"]) == {0.9, 0.95}
    ok = depth.dropna(subset=["threshold"])
    assert len(ok) >= 2 and (ok["m50"].between(15, 26)).all()
    assert ((ok["m50_lo"] <= ok["m50"]) & (ok["m50"] <= ok["m50_hi"])).all()
    # the completeness at the chosen threshold matches the purity it was chosen for
    for _, r in ok.iterrows():
        s = sweep[(sweep["kind"] == r["kind"])].drop_duplicates("threshold")
        below = s[s["threshold"] <= r["threshold"] + 1e-9]["purity"].to_numpy()
        assert len(below) == 0 or below[-1] <= r["purity_target"] + 1e-9
    summary = json.loads((ev_dir / "summary.json").read_text())
    assert "raw" in summary["depth"]["simulation"]
    assert (out / "report" / "figures" / "depth_simulation_raw.png").exists()


def test_rerun_resumes_and_recomputes_nothing(tiny_run, capsys):
    code, cfg, out = tiny_run
    assert code == EXIT_OK
    before = (out / "model" / "n2v.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == EXIT_OK
    text = capsys.readouterr().out
    assert text.count("up to date (same configuration); skipped") == 8
    assert (out / "model" / "n2v.safetensors").stat().st_mtime_ns == before


def test_single_stage_force_redoes_it(tiny_run, capsys):
    _, cfg, out = tiny_run
    capsys.readouterr()
    assert main(["evaluate", "--config", str(cfg), "--out", str(out), "--force"]) == EXIT_OK
    assert "[evaluate] done" in capsys.readouterr().out


def test_locked_run_directory(tiny_run):
    _, cfg, out = tiny_run
    import os
    import socket

    (out / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    try:
        assert main(["report", "--config", str(cfg), "--out", str(out)]) == EXIT_LOCKED
    finally:
        (out / ".lock").unlink()


def test_unknown_key_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 2\n  epoks: 3\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "train.epoks" in err and "unknown key" in err


def test_impossible_chunking_is_refused_before_work(tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "o"), "--set", "ingest.chunks=[30, 30]"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "ingest.chunks" in err and "try ingest.chunks" in err
    assert not (tmp_path / "o").exists()


def test_unknown_stage_and_override_syntax(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "o"), "--stages", "nonsense"]) == EXIT_USAGE
    assert main(["run", "--out", str(tmp_path / "o"), "--set", "novalue"]) == EXIT_USAGE


def test_text_options_keep_their_value_as_written(tmp_path):
    """--set of a text option keeps the text (YAML would make 00000001_01 a number);
    in a config file an unquoted frame id is refused, saying to quote it; other options
    are still read as YAML."""
    cfg = load_config(None, overrides=["input.catalogue_frame=00000001_01",
                                       "input.catalogue_magnitude='MAG AUTO'",
                                       "train.epochs=3", "compare.relative_zp=off"])
    assert cfg.input.catalogue_frame == "00000001_01"
    assert cfg.input.catalogue_magnitude == "MAG AUTO"
    assert cfg.train.epochs == 3 and cfg.compare.relative_zp == "off"
    cfg = load_config(None, overrides=["input.catalogue_magnitude=MAG_AUTO",
                                       "input.catalogue_magnitude=null",
                                       'simulate.bands=["NB455", "NB465"]'])
    assert cfg.input.catalogue_magnitude is None  # YAML's null still resets it
    assert cfg.simulate.bands == ["NB455", "NB465"]  # a list is still read as YAML
    bad = tmp_path / "bad.yaml"
    bad.write_text("input:\n  catalogue_frame: 00000001_01\n")
    with pytest.raises(ConfigError, match="quote it"):
        load_config(bad)
    bad.write_text("input:\n  catalogue_frame: '00000001_01'\n")
    assert load_config(bad).input.catalogue_frame == "00000001_01"


def test_reference_yaml_is_in_sync_and_loads():
    ref = Path(__file__).resolve().parents[2] / "configs" / "reference.yaml"
    assert ref.read_text() == reference_yaml(), "regenerate: python -m pausdenoise.config"
    assert load_config(ref) == PipelineConfig()


def test_reference_yaml_comments_every_option():
    """Each option (and section) of the generated reference has its description above it."""
    lines = reference_yaml().splitlines()
    options = [i for i, line in enumerate(lines) if re.match(r"\s*[A-Za-z_]\w*:", line)]
    assert len(options) > 100
    bare = [lines[i].strip() for i in options if not lines[i - 1].lstrip().startswith("#")]
    assert bare == [], "add a description= to these config fields"


@pytest.mark.parametrize("name", ["demo-fast.yaml", "demo.yaml", "demo-gan.yaml"])
def test_demo_configs_are_valid(name):
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
    assert cfg.input.source == "simulate"


def test_halo_override_below_receptive_field_is_refused(tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "o"), "--set", "denoise.halo=8"])
    assert code == EXIT_USAGE
    assert "smaller than the halo of 32 px" in capsys.readouterr().err


def test_info_summarises_the_store(tiny_run, capsys):
    _, cfg, out = tiny_run
    capsys.readouterr()
    assert main(["info", "--config", str(cfg), "--out", str(out)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "frames: 6 (6 complete)" in text
    assert "NB455: 3 exposures" in text and "denoised ×6" in text


def test_info_without_store_fails_cleanly(tmp_path, capsys):
    assert main(["info", "--out", str(tmp_path / "none")]) == 1
    assert "no survey store" in capsys.readouterr().err


@pytest.mark.real_data
def test_decam_config_ingests_real_frames_through_the_cli(decam_config, tmp_path, capsys):
    out = tmp_path / "decam"
    assert main(["ingest", "--config", str(decam_config), "--out", str(out)]) == EXIT_OK
    capsys.readouterr()
    assert main(["info", "--config", str(decam_config), "--out", str(out)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "frames: 8 (8 complete)" in text
    assert "g: 3 exposures" in text and "ivar ×8" in text and "mask ×8" in text


def test_decam_missing_zero_point_table_is_refused_before_work(decam_config, tmp_path,
                                                                capsys):
    """A configured zero-point table that is not there is one configuration error (exit 2)
    naming the setting and the path, before any frame is read or a store made; not one
    failed frame per image."""
    out = tmp_path / "decam"
    code = main(["ingest", "--config", str(decam_config), "--out", str(out),
                 "--set", "ingest.zp_table.path=data/real/decam-multiepoch/nope.fits"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "ingest.zp_table.path" in err and "nope.fits" in err and "not found" in err
    assert err.count("nope.fits") == 1
    assert not (out / "store.zarr").exists()


def test_fits_frames_without_catalogue_run_the_stages_that_need_none(tmp_path, capsys):
    """Frames from FITS with no input.catalogue: the default stages leave out those that
    measure catalogue sources (saying so), and asking for them is refused before any work
    with what to set."""
    from pausdenoise.pipeline.runner import resolve_stages

    fits_cfg = PipelineConfig.model_validate(
        {"input": {"source": "fits", "fits_path": str(tmp_path)}})
    assert resolve_stages(fits_cfg, None) == ["ingest", "train", "denoise", "evaluate",
                                              "report"]
    with_cat = PipelineConfig.model_validate(
        {"input": {"source": "fits", "fits_path": str(tmp_path),
                   "catalogue": str(tmp_path / "cat.parquet")}})
    assert {"photometry", "compare"} <= set(resolve_stages(with_cat, None))
    assert "photometry" in resolve_stages(PipelineConfig(), None)  # simulated: its own
    cfg = tmp_path / "fits.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"source": "fits", "fits_path": str(tmp_path)}}))
    out = tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out),
                 "--stages", "ingest,photometry"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "photometry measure the sources of a reference catalogue" in err
    assert "set input.catalogue" in err and not out.exists()


@pytest.mark.real_data
def test_a_sky_catalogue_for_frames_without_wcs_stops_the_run_before_training(
        two_saao_frames, tmp_path, capsys):
    """RA/Dec sources for the SAAO frames (no WCS): the run ingests, then stops with a
    configuration error naming the frames, before any training."""
    frames = two_saao_frames
    cat = tmp_path / "sky.csv"
    pd.DataFrame({"ref_id": [1, 2], "ra": [270.1, 270.2], "dec": [-27.0, -27.1],
                  "a": [2.0, 2.0], "b": [1.5, 1.5], "theta": [0.0, 30.0]}).to_csv(
        cat, index=False)
    out = tmp_path / "out"
    config = Path(__file__).resolve().parents[2] / "configs" / "saao.yaml"
    code = main(["run", "--config", str(config), "--out", str(out),
                 "--cluster", "threads", "--stages", "ingest,train,denoise,photometry",
                 "--set", f"input.fits_path={frames}", "--set", f"input.catalogue={cat}"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "gives sky positions (ra, dec) but 2 of 2 frames have no WCS" in err
    assert not (out / "model").exists()
    assert json.loads((out / "run.json").read_text())["stages"]["ingest"]["status"] == "done"
    ingested = json.loads((out / "run.json").read_text())["stages"]["ingest"]
    hits = ingested["summary"]["cosmic_rays"]
    assert sorted(hits) == ["00000001_01", "00000002_01"] and min(hits.values()) > 0
    assert f"{sum(hits.values())} cosmic-ray hits masked in 2 frame(s)" in ingested["note"]


def test_decam_zero_point_table_edited_in_place_is_ingested_again(decam_config, tmp_path):
    """The zero-point table is an input of the ingest stage: a corrected table (same name)
    makes the stage run again and the frames take its zero-points."""
    from astropy.table import Table

    out = tmp_path / "decam"
    table = tmp_path / "ccds.fits"
    Table.read("data/real/decam-multiepoch/survey-ccds-1.fits.gz").write(table)
    args = ["run", "--config", str(decam_config), "--out", str(out), "--stages", "ingest",
            "--set", f"ingest.zp_table.path={table}"]
    assert main(args) == EXIT_OK
    zp_before = st.exposure_table(out / "store.zarr").set_index("frame")["zp"]
    assert main(args) == EXIT_OK
    assert json.loads((out / "run-summary.json").read_text())["ingest"]["status"] == \
        "up to date"
    t = Table.read(table)
    t["zpt"] = t["zpt"] + 0.1
    t.write(table, overwrite=True)
    assert main(args) == EXIT_OK
    assert json.loads((out / "run-summary.json").read_text())["ingest"]["status"] == "done"
    zp_after = st.exposure_table(out / "store.zarr").set_index("frame")["zp"]
    np.testing.assert_allclose(zp_after / zp_before.loc[zp_after.index], 10 ** (-0.04),
                               rtol=1e-5)  # the table holds float32 magnitudes


def test_plan_command_prints_a_plan(capsys):
    assert main(["plan", "--exposures", "10", "--workers", "4"]) == EXIT_OK
    text = capsys.readouterr().out
    assert "10 exposure(s) × 18 CCD(s)" in text and "denoise" in text and "total" in text
    assert main(["plan", "--exposures", "10", "--rate", "bogus=1"]) == EXIT_USAGE
    capsys.readouterr()
    assert main(["plan", "--exposures", "10", "--json"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan  # a JSON object describing the stages


def test_pipeline_on_real_scheduler_and_workers_equals_local_run(tiny_run, tmp_path):
    """The scheduler-file pattern of the deploy recipes: `dask scheduler` and two
    `dask worker` processes started from the command line; the pipeline's outputs must
    equal the local (threaded) run's bit for bit."""
    from cluster_fixtures import assert_same_outputs, dask_cli_cluster

    code, cfg, ref = tiny_run
    assert code == EXIT_OK
    out = tmp_path / "out"
    # same survey and the same trained model: the stages that run on the cluster
    # (ingest, denoise, photometry) must not depend on where they ran
    with dask_cli_cluster(tmp_path / "cluster", n_workers=2) as cluster:
        code = main(["run", "--config", str(cfg), "--out", str(out),
                     "--cluster", cluster.spec,
                     "--set", f"input.checkpoint={ref / 'model' / 'n2v.safetensors'}",
                     "--stages", "simulate,ingest,denoise,photometry"])
    assert code == EXIT_OK
    assert_same_outputs(ref, out)


def test_every_subcommand_has_help(capsys):
    from pausdenoise.cli import STAGE_HELP

    for command in STAGE_HELP:
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert "--out" in capsys.readouterr().out
    assert main([]) == EXIT_USAGE


def test_compare_per_band_with_a_pair_cap(tiny_run, tmp_path, capsys):
    """The compare stage pairs each band on its own and, above compare.max_pairs, keeps a
    deterministic uniform sample of exactly max_pairs pairs (the bottom-k by pair hash):
    exact counts, max_pairs pairs used, same outputs on rerun."""
    import shutil

    code, cfg, ref = tiny_run
    assert code == EXIT_OK
    full = json.loads((ref / "compare" / "summary.json").read_text())
    assert full["pair_sampling_rate"] == 1.0 and full["pairs_used"] == full["pairs"]
    assert full["bands"] == 2
    cap = 50
    assert full["pairs"] > 2 * cap
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    runs = []
    for _ in range(2):
        assert main(["compare", "--config", str(cfg), "--out", str(out), "--force",
                     "--set", f"compare.max_pairs={cap}"]) == EXIT_OK
        runs.append((out / "compare" / "sigma68_by_bin.csv").read_text())
    assert runs[0] == runs[1]
    capped = json.loads((out / "compare" / "summary.json").read_text())
    assert capped["pairs"] == full["pairs"]
    assert capped["pair_sampling_rate"] == pytest.approx(cap / full["pairs"])
    assert capped["pairs_used"] == cap
    by_bin = pd.read_csv(out / "compare" / "sigma68_by_bin.csv")
    assert by_bin.loc[0, "n_pairs_total"] == full["pairs"]
    assert by_bin.loc[0, "n_pairs"] == capped["pairs_used"]
    assert "used)" in capsys.readouterr().out


def test_read_photometry_by_band_and_columns(tiny_run):
    from pausdenoise.photometry import photometry_bands, read_photometry

    _, _, out = tiny_run
    full = read_photometry(out / "photometry")
    assert photometry_bands(out / "photometry") == ["NB455", "NB615"]
    part = read_photometry(out / "photometry", bands=["NB615"], columns=["ref_id", "flux_cal"])
    assert list(part.columns) == ["ref_id", "band", "kind", "flux_cal"]
    want = full[full.band == "NB615"][list(part.columns)]
    key = ["ref_id", "kind", "flux_cal"]
    pd.testing.assert_frame_equal(part.sort_values(key).reset_index(drop=True),
                                  want.sort_values(key).reset_index(drop=True))
    with pytest.raises(KeyError, match="not photometry columns: nope"):
        read_photometry(out / "photometry", columns=["nope"])
    assert list(read_photometry(out / "missing", columns=["x"]).columns) == ["band", "kind", "x"]


def test_compare_writes_the_calibrated_errors(tiny_run):
    from pausdenoise.compare import ErrorModel
    from pausdenoise.photometry import read_photometry

    code, _, out = tiny_run
    assert code == EXIT_OK
    model = ErrorModel.from_dict(json.loads((out / "compare" / "error_model.json").read_text()))
    errs = pd.read_parquet(out / "compare" / "denoised_errors")
    table = read_photometry(out / "photometry")
    assert len(errs) == (table.kind == "denoised").sum()
    assert set(errs.band.astype(str)) == set(table.band)
    want = model.scale_for(errs.I_auto.to_numpy(), errs.band.astype(str)) * errs.flux_cal_err_raw
    np.testing.assert_allclose(errs.flux_cal_err_den_model, want)
    summary = json.loads((out / "compare" / "summary.json").read_text())
    assert summary["calibrated_error_rows"] == len(errs)


def test_compare_checks_calibrated_zero_points_against_the_shared_sources(tiny_run, tmp_path):
    """Frames with calibrated header zero-points keep them, and the compare stage fits the
    relative scales anyway, to judge them: zero_point_check.csv, its summary and a
    sentence and table in the report; put on relative zero-points instead, no check."""
    import shutil

    code, cfg, ref = tiny_run
    assert code == EXIT_OK
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    easy = ["--set", "compare.relative_zp_snr=3", "--set", "compare.relative_zp_min_sources=2"]
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", "compare,report",
                 "--force", *easy]) == EXIT_OK
    check = pd.read_csv(out / "compare" / "zero_point_check.csv")
    assert set(check["band"]) == {"NB455", "NB615"} and check["scale"].notna().all()
    np.testing.assert_allclose(check["zp_rel_err"], 0.01, rtol=1e-6)  # the simulation's 1 %
    want = np.log(check["scale"]) / np.hypot(0.01, check["scale_err"] / check["scale"])
    np.testing.assert_allclose(check["pull"], want, rtol=1e-6)
    zc = json.loads((out / "compare" / "summary.json").read_text())["zero_point_check"]
    assert zc["frames"] == len(check) and 0 < zc["scatter"] < 0.1
    page = (out / "report" / "index.html").read_text()
    assert f"the header zero-points of {len(check)} frames scatter by" in page
    assert main(["run", "--config", str(cfg), "--out", str(out), "--stages", "compare",
                 "--force", *easy, "--set", "compare.relative_zp=on"]) == EXIT_OK
    assert not (out / "compare" / "zero_point_check.csv").exists()
    assert "zero_point_check" not in json.loads((out / "compare" / "summary.json").read_text())


def test_compare_corrects_the_apertures_for_seeing_and_neighbours(tiny_run, tmp_path, capsys):
    """compare.aperture_correction 'auto' (the default) divides every flux by its aperture
    share after taking out the neighbours' light: the written raw fluxes are the
    photometry's (flux_cal − aper_neighbours·zp) / aper_frac, and against the true total
    flux they lose the neighbours' bias that 'off' finds against the in-aperture truth.
    Photometry written without aper_frac (before it existed) is left as it is under 'auto'
    and refused under 'on', naming the band and what to do; shapes guessed from the
    apertures are not used under 'auto', and said."""
    import shutil

    from pausdenoise.photometry import read_photometry

    code, cfg, ref = tiny_run
    assert code == EXIT_OK
    summary = json.loads((ref / "compare" / "summary.json").read_text())
    ac = summary["aperture_correction"]
    assert ac["bands"] == ["NB455", "NB615"] and ac["rows_left_out"] == 0
    assert 0.3 < ac["p01"] <= ac["median"] <= ac["p99"] < 1.0
    phot = read_photometry(ref / "photometry")
    raw = phot[phot["kind"] == "raw"].set_index(["ref_id", "expnum"]).sort_index()
    errs = pd.read_parquet(ref / "compare" / "denoised_errors")
    errs = errs.set_index(["ref_id", "expnum"]).sort_index()
    own = (raw["flux_cal"] - raw["aper_neighbours"] * raw["zp"]) / raw["aper_frac"]
    np.testing.assert_allclose(errs["flux_cal_raw"], own.loc[errs.index])
    truth_on = pd.read_csv(ref / "compare" / "truth_comparison.csv")
    # the header zero-points judged against the exact ones, and the photometry without them
    frames = phot[["expnum", "ccd"]].drop_duplicates()
    assert summary["truth_zp_frames"] == len(frames)
    assert 0 < summary["truth_zp_scatter"] < 0.05 and summary["truth_zp_pulls"] > 0
    filled = truth_on["pull_sigma68"].notna()
    assert filled.any() and np.isfinite(truth_on["pull_sigma68_exact_zp"][filled]).all()
    page = (ref / "report" / "index.html").read_text()
    assert "times their stated errors" in page
    # the raw repeatability floor, per band, in a table of the report
    floor = pd.read_csv(ref / "compare" / "repeatability_floor.csv")
    assert floor["band"].tolist() == ["NB455", "NB615"]
    assert (floor["snr_min"] == 50.0).all() and (floor["n_pairs"] >= 0).all()
    assert "Repeatability floor of the raw fluxes per band" in page
    measured = floor[floor["n_pairs"] > 0]
    assert ("repeat to within their raw errors plus a floor" in page) == (len(measured) > 0)
    if len(measured):
        assert summary["repeatability_floor"]["median"] == pytest.approx(
            measured["floor"].median())
    eps = errs["band"].astype(str).map(dict(zip(floor["band"], floor["floor"].fillna(0.0),
                                                strict=True)))
    np.testing.assert_allclose(errs["flux_cal_err_raw_floor"],
                               np.hypot(errs["flux_cal_err_raw"], eps * errs["flux_cal_raw"]))
    from pausdenoise.pipeline.stages.compare import band_calibrated_errors

    model = json.loads((ref / "compare" / "error_model.json").read_text())
    band_calibrated_errors(str(ref / "photometry"), "NB455", model, str(tmp_path / "e"),
                           floors={"NB455": 0.05})
    five = pd.read_parquet(tmp_path / "e" / "band=NB455" / "errors.parquet")
    assert len(five) > 0
    np.testing.assert_allclose(five["flux_cal_err_raw_floor"],
                               np.hypot(five["flux_cal_err_raw"], 0.05 * five["flux_cal_raw"]))
    assert "Fluxes of NB455, NB615 are aperture-corrected: the light the neighbours" in page
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--force",
                 "--set", "compare.aperture_correction=off"]) == EXIT_OK
    assert "aperture-corrected" not in capsys.readouterr().out
    assert "aperture_correction" not in json.loads((out / "compare" / "summary.json")
                                                   .read_text())
    truth_off = pd.read_csv(out / "compare" / "truth_comparison.csv")
    # the aperture fluxes hold the neighbours' light (this crowded field: +11 % overall);
    # the sources' own total fluxes do not
    on, off = (tc[tc["kind"] == "raw"].set_index("bin") for tc in (truth_on, truth_off))
    assert (on["n"] == off["n"]).all() and on["n"]["all"] > 100
    assert off["bias_median"]["all"] > 0.05 and abs(on["bias_median"]["all"]) < 0.02, on
    # one band's photometry as written before aper_frac existed
    for part in (out / "photometry" / "band=NB615").rglob("*.parquet"):
        pd.read_parquet(part).drop(columns=["aper_frac"]).to_parquet(part)
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--force"]) == EXIT_OK
    assert "aperture-corrected (1 band(s)" in capsys.readouterr().out
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--force",
                 "--set", "compare.aperture_correction=on"]) != EXIT_OK
    err = capsys.readouterr().err
    assert "band(s) NB615 has no aper_frac" in err and "rerun the photometry stage" in err
    # shapes guessed from the apertures (a catalogue without profile columns): 'auto' skips
    from pausdenoise.photometry.config import ProfFlag

    for part in (out / "photometry" / "band=NB455").rglob("*.parquet"):
        t = pd.read_parquet(part)
        t["flags_prof"] = t["flags_prof"] | int(ProfFlag.APPROX_PROFILE)
        t.to_parquet(part)
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--force"]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "not aperture-corrected: NB455 (the catalogue has no profile_hlr" in printed
    assert "; aperture-corrected" not in printed
    summary = json.loads((out / "compare" / "summary.json").read_text())
    assert summary["aperture_correction_skipped"] == ["NB455"]
    assert "aperture_correction" not in summary
