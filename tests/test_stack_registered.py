"""Stacking exposures without a WCS: offsets by cross-correlation, shift-only WCSs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from scipy import ndimage

from pausdenoise import store as st
from pausdenoise.cli import EXIT_OK, main
from pausdenoise.register import measure_offset, register_frames, shift_wcs
from pausdenoise.stack import StackConfig, stack_frames

SHAPE = (160, 180)


def _scene(dx: float, dy: float, stars) -> np.ndarray:
    """Noiseless frame (sky 0) with Gaussian stars (σ = 1.6 px) at ``(x + dx, y + dy)``."""
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(np.float64)
    img = np.zeros(SHAPE)
    for x, y, f in stars:
        r2 = (xx - x - dx) ** 2 + (yy - y - dy) ** 2
        img += f / (2 * np.pi * 1.6**2) * np.exp(-0.5 * r2 / 1.6**2)
    return img


def test_registered_stack_of_whole_pixel_offsets_is_exact_and_deeper():
    rng = np.random.default_rng(2)
    stars = list(zip(rng.uniform(-20, SHAPE[1] + 20, 50), rng.uniform(-20, SHAPE[0] + 20, 50),
                     10 ** rng.uniform(3, 4.5, 50), strict=True))
    shifts = [(0, 0), (11, -7), (-6, 13), (17, 9)]
    sigma, sky = 6.0, 200.0
    truth = [_scene(dx, dy, stars) for dx, dy in shifts]
    frames = [t + sky + rng.normal(0, sigma, SHAPE) for t in truth]
    tab = register_frames(frames, None, reference_index=0)
    np.testing.assert_allclose(tab["dx"], [s[0] for s in shifts], atol=0.05)
    np.testing.assert_allclose(tab["dy"], [s[1] for s in shifts], atol=0.05)
    wcs = [shift_wcs(dx, dy, round_to_pixel=True) for dx, dy in zip(tab["dx"], tab["dy"],
                                                                   strict=True)]
    cfg = StackConfig(weighting="uniform")
    stack, weight = stack_frames(frames, None, None, wcs, wcs[0], SHAPE, cfg)
    full = weight == len(frames)
    assert full.sum() > 0.6 * full.size
    resid = (stack - truth[0])[full]  # whole pixels: exact copies, noise σ/√N
    assert np.std(resid) == pytest.approx(sigma / 2.0, rel=0.05)
    assert abs(np.mean(resid)) < 0.1 * sigma  # each frame's sky: a clipped median
    # without registration the stars of the other frames land elsewhere
    naive, _ = stack_frames(frames, None, None, [shift_wcs()] * 4, shift_wcs(), SHAPE, cfg)
    assert np.std((naive - truth[0])[full]) > 10 * np.std(resid)


def _saao_store(real_data_dir: Path, tmp_path: Path, idx) -> tuple[Path, list[Path]]:
    src = real_data_dir / "saao-kb13475"
    if not src.is_dir():
        pytest.skip("saao-kb13475 not present in the real test data")
    files = [sorted(src.glob("AKB13475I*.fits"))[i] for i in idx]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ingest:\n  layout: generic\n  chunks: [256, 256]\n  expnum_from: order\n"
                   "  defaults: {band: I, ccd: 0, zp: 1.0, zp_err: 0.0}\n"
                   "cluster:\n  kind: threads\n")
    out = tmp_path / "ingest"
    assert main(["ingest", "--config", str(cfg), "--out", str(out), "--fits",
                 *[str(f) for f in files]]) == EXIT_OK
    return out / "store.zarr", files


@pytest.mark.real_data
def test_stack_stage_registers_saao_frames_without_wcs(real_data_dir, tmp_path):
    from pausdenoise.config import PipelineConfig
    from pausdenoise.pipeline.context import Context
    from pausdenoise.pipeline.stages.stack import run_stack
    from pausdenoise.runstate import RunPaths, RunRecord

    store, files = _saao_store(real_data_dir, tmp_path, (12, 13, 19))  # offsets 17-26 px
    cfg = PipelineConfig.model_validate({
        "input": {"source": "store", "store_path": str(store)},
        "holdout_exposures_per_band": 1, "cluster": {"kind": "threads"},
        "gan": {"enabled": True, "cutout_size": 64, "cutout_stride": 64,
                "max_pairs_per_frame": 4}})
    paths = RunPaths((tmp_path / "run").resolve())
    paths.out.mkdir(parents=True)
    summary = run_stack(Context(cfg, paths, None, RunRecord(paths)), cfg.gan)
    assert summary["registered_frames"] == 3 and summary["stacks"] == 1
    assert summary["pairs"] > 0
    reg = pd.read_csv(paths.out / "gan" / "registration.csv", keep_default_na=False)
    raw = [fits.getdata(f).astype(np.float64) for f in files]
    assert (reg["error"] == "").all() and reg["dx_px"].iloc[0] == 0.0
    direct = measure_offset(raw[0], raw[2])
    assert reg["dx_px"].iloc[2] == pytest.approx(direct.dx, abs=0.01)
    assert reg["dy_px"].iloc[2] == pytest.approx(direct.dy, abs=0.01)
    assert np.hypot(direct.dx, direct.dy) > 20
    g = st.open_store(store)["stacks/I_00"]
    assert g.attrs["wcs"] is None and len(g.attrs["registration_offsets_px"]) == 3
    stack, weight = np.asarray(g["stack"]), np.asarray(g["stack_weight"])
    # star aperture fluxes (7 × 7 px sums at the peaks) of the stack equal the reference
    # frame's; a stack of the frames taken as aligned does not
    ref = raw[0] - np.median(raw[0])
    naive = np.mean([r - np.median(r) for r in raw], axis=0)

    def box(x: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(x, 7) * 49.0

    full = ndimage.binary_erosion(weight >= 0.9 * weight.max(), iterations=7)
    peaks = ((ref == ndimage.maximum_filter(ref, 5)) & full & (ref > 400)
             & (ndimage.maximum_filter(raw[0], 7) < 6e4))
    assert peaks.sum() > 300
    f_ref = box(ref)[peaks]
    res = np.sqrt(np.mean((box(stack.astype(np.float64))[peaks] - f_ref) ** 2))
    res_naive = np.sqrt(np.mean((box(naive)[peaks] - f_ref) ** 2))
    assert res < 0.1 * np.sqrt(np.mean(f_ref**2)), res
    assert res < 0.2 * res_naive, (res, res_naive)
    # the held-out frame's stack of the others exists on its own grid
    held = summary["held_out_frames"]
    assert len(held) == 1
    others = np.asarray(st.open_store(store)[f"frames/{held[0]}/stack_others"])
    assert np.isfinite(others).all() and (others != 0).mean() > 0.8
