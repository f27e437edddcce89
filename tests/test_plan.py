"""The dry-run planner's arithmetic (``pausdenoise.plan``)."""

from __future__ import annotations

import json

import pytest

from pausdenoise.cli import EXIT_USAGE, main
from pausdenoise.plan import MEASURED_RATES, RATE_KEYS, RATE_UNITS, exposures_per_hour, plan_run

RATES = {
    "ingest_mb_s": 10.0,
    "train_patches_s": 100.0,
    "denoise_mpix_s": 1.0,
    "store_read_mb_s": None,
    "photometry_sources_s": 1000.0,
    "compare_pairs_s": 500.0,
}


def small(**kw):
    args = dict(exposures=2, ccds_per_exposure=3, ccd_shape=(100, 60), n_workers=1, gpus=0,
                rates=RATES, chunk=(32, 32), halo=8, sources_per_ccd=10, kinds=2,
                exposures_per_source=2, compression_ratio=0.5, train_steps=10,
                train_batch=4, patch_size=16)
    args.update(kw)
    return plan_run(**args)


def test_task_counts():
    p = small()
    # 100x60 in 32x32 chunks: ceil(100/32)=4 rows x ceil(60/32)=2 cols = 8 chunks per frame
    assert p.assumptions["frames"] == 6
    assert p.assumptions["chunks_per_frame"] == 8
    assert p.stage("ingest").tasks == 6
    assert p.stage("denoise").tasks == 48
    assert p.stage("photometry").tasks == 12  # frames x kinds
    assert p.stage("train").tasks == 1
    assert p.stage("compare").tasks == 1


def test_bytes():
    p = small()
    px = 6 * 100 * 60
    ing = p.stage("ingest")
    assert ing.read_bytes == px * 5  # float32 image + uint8 mask
    assert ing.written_bytes == int(px * 5 * 0.5)
    den = p.stage("denoise")
    assert den.read_bytes == int(px * 5 * 0.5)
    assert den.written_bytes == int(px * 4 * 0.5)  # float32 denoised, compressed
    ph = p.stage("photometry")
    assert ph.read_bytes == int(px * 5 * 0.5 * 2)
    assert ph.work == 6 * 10 * 2  # frames x sources x kinds
    assert p.total_read_bytes == sum(s.read_bytes for s in p.stages)


def test_times_from_rates():
    p = small()
    px = 6 * 100 * 60
    assert p.stage("ingest").seconds == pytest.approx(px * 5 / 1e6 / 10.0)
    assert p.stage("denoise").seconds == pytest.approx(px / 1e6 / 1.0)
    assert p.stage("photometry").seconds == pytest.approx(120 / 1000.0)
    # 2 exposures per source: one pair per measurement pair -> 60 measurements / 2
    assert p.stage("compare").work == pytest.approx(30)
    assert p.stage("compare").seconds == pytest.approx(30 / 500.0)
    assert p.stage("train").seconds == pytest.approx(40 / 100.0)
    assert p.total_seconds == pytest.approx(sum(s.seconds for s in p.stages))


@pytest.mark.parametrize("stage", ["ingest", "denoise", "photometry"])
def test_time_scales_inversely_with_workers(stage):
    t1 = small(n_workers=1).stage(stage).seconds
    for w in (2, 3, 6):
        assert small(n_workers=w).stage(stage).seconds == pytest.approx(t1 / w)


def test_parallelism_capped_by_tasks_and_single_process_stages():
    p = small(n_workers=1000)
    assert p.stage("ingest").parallelism == 6  # only 6 frames
    assert p.stage("denoise").parallelism == 48
    assert p.stage("compare").seconds == small(n_workers=1).stage("compare").seconds
    assert p.stage("train").seconds == small(n_workers=1).stage("train").seconds


def test_parallel_efficiency_and_io_bound():
    base = small(n_workers=4).stage("denoise").seconds
    assert small(n_workers=4, parallel_efficiency=0.5).stage("denoise").seconds == (
        pytest.approx(2 * base))
    slow_io = small(n_workers=4, io_gb_s=1e-9)  # 1 byte/s: I/O bound
    den = slow_io.stage("denoise")
    assert den.seconds == pytest.approx(den.read_bytes + den.written_bytes)


def test_store_read_added_to_photometry():
    p = small(rates={**RATES, "store_read_mb_s": 1.0}, n_workers=2)
    ph = p.stage("photometry")
    assert ph.seconds == pytest.approx((120 / 1000.0 + ph.read_bytes / 1e6) / 2)


def test_gpu_rates_unmeasured_by_default():
    assert MEASURED_RATES["denoise_gpu_mpix_s"] is None
    p = small(gpus=2)
    assert p.stage("denoise").device == "gpu"
    assert p.stage("denoise").seconds is None
    assert p.total_seconds is None
    assert any("not measured" in n or "no GPU" in n for n in p.notes)
    assert "unknown" in p.table()
    # the notes speak the command line, and the table the GPU count it plans for
    assert any("--rate denoise_gpu_mpix_s=VALUE" in n for n in p.notes)
    assert any("--rate train_gpu_patches_s=VALUE" in n for n in p.notes)
    assert not any("rates=" in n for n in p.notes)
    table = p.table()
    assert "GPUs: 2 in all" in table and "no GPU" not in table
    assert "rate not measured: train_gpu_patches_s, denoise_gpu_mpix_s" in table
    assert "GPUs: none (--gpus 0)" in small().table()
    q = small(gpus=2, rates={**RATES, "denoise_gpu_mpix_s": 10.0, "train_gpu_patches_s": 1e3})
    assert q.stage("denoise").seconds == pytest.approx(6 * 100 * 60 / 1e6 / 10.0 / 2)
    assert q.total_seconds is not None
    assert "rate not measured" not in q.table()


def test_plan_help_lists_every_rate_key(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pausdenoise.plan" not in text
    for key in RATE_KEYS:
        assert f"{key} ({RATE_UNITS[key]};" in text
    assert set(RATE_UNITS) == set(RATE_KEYS)


def test_plan_rate_option_errors_speak_the_command_line(capsys):
    assert main(["plan", "--exposures", "1", "--rate", "denoise_mpix_s"]) == EXIT_USAGE
    assert "--rate expects KEY=VALUE" in capsys.readouterr().err
    assert main(["plan", "--exposures", "1", "--rate", "denoise_mpix_s=fast"]) == EXIT_USAGE
    assert "needs a number" in capsys.readouterr().err


def test_memory_model():
    p = small(chunk=(1024, 1024), halo=32, base_channels=32, ccd_shape=(4096, 2048))
    m = p.memory
    block = 1088 * 1088
    assert m["block_input_mb"] == pytest.approx(block * 5 / 2**20)
    assert m["activations_mb"] == pytest.approx(8 * 32 * block * 4 / 2**20)
    # calibrated on the measured 1.6 GB/worker at 32 channels, 1024^2 chunks
    assert 1300 < m["denoise_worker_mb"] < 1800
    tiled = small(chunk=(1024, 1024), halo=32, tile_size=256, batch_size=2)
    assert tiled.memory["activations_mb"] < m["activations_mb"] / 4
    # memory per worker does not depend on the survey size (out-of-core)
    big = small(exposures=1000, chunk=(1024, 1024), halo=32, ccd_shape=(4096, 2048))
    assert big.memory["denoise_worker_mb"] == m["denoise_worker_mb"]


def test_outputs_and_errors():
    p = small()
    d = p.to_dict()
    json.dumps(d)  # JSON-serialisable
    assert [s["name"] for s in d["stages"]] == ["ingest", "train", "denoise", "photometry",
                                                 "compare"]
    text = p.table()
    for name in ("ingest", "denoise", "photometry", "compare", "total", "memory"):
        assert name in text
    assert exposures_per_hour(small(exposures=1)) == pytest.approx(
        3600 / sum(s.seconds for s in small(exposures=1).stages if s.name != "train"))
    with pytest.raises(ValueError, match="unknown rate"):
        small(rates={"denoise_mpixs": 1.0})
    with pytest.raises(ValueError, match="n_workers"):
        small(n_workers=0)
    with pytest.raises(ValueError, match="unknown stage"):
        small(stages=("denoise", "stack"))
    assert small(chunk=32).assumptions["chunk"] == [32, 32]


def test_plan_from_config():
    from pausdenoise.config import PipelineConfig
    from pausdenoise.plan import plan_from_config

    cfg = PipelineConfig()
    p = plan_from_config(cfg, 2, ccds_per_exposure=3, ccd_shape=(2048, 1024), n_workers=4,
                         rates=RATES)
    a = p.assumptions
    assert a["chunk"] == list(cfg.ingest.chunks)
    assert a["halo"] >= 26 and a["halo"] % 4 == 0  # derived from the depth-2 network
    assert a["base_channels"] == cfg.train.unet.base_channels
    assert a["train_steps"] == cfg.train.epochs * cfg.train.steps_per_epoch
    assert p.stage("denoise").tasks == 6 * 2  # 2048x1024 in 1024^2 chunks, 6 frames
    restored = cfg.model_copy(update={"denoise": cfg.denoise.model_copy(
        update={"restore_catalogue": True})})
    q = plan_from_config(restored, 2, ccds_per_exposure=3, ccd_shape=(2048, 1024),
                         n_workers=4, rates=RATES)
    assert q.assumptions["halo"] == a["halo"] + 8  # σ 1 px: reach 5 px, to the 4-px grid
    assert q.memory["block_input_mb"] > p.memory["block_input_mb"]


def test_compare_column_share_matches_the_stage():
    from pausdenoise.photometry import OUTPUT_COLUMNS
    from pausdenoise.pipeline.stages.compare import _APCOR_COLUMNS, _COLUMNS
    from pausdenoise.plan import COMPARE_COLUMN_SHARE, COMPARE_SHARE_COUNT

    # its columns and the aperture corrections' per pass (aperture corrections on),
    # aper_frac and flags_prof once to count the shares
    assert COMPARE_COLUMN_SHARE == pytest.approx((len(_COLUMNS) + len(_APCOR_COLUMNS))
                                                 / len(OUTPUT_COLUMNS))
    assert COMPARE_SHARE_COUNT == pytest.approx(2 / len(OUTPUT_COLUMNS))
