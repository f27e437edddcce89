"""``train.n2n_targets: star-field``: training on star fields simulated to match the exposures.

The exposures of a synthetic crowded field (elliptical Moffat stars, Poisson and read noise,
gain and PSF in their attributes) are copied into simulated fields; the train stage trains
on those alone, their truth as the target, skips an exposure without a gain, and the network
denoises a held-out real exposure it never saw, which the evaluate stage scores against any
other exposure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pausdenoise import store as st
from pausdenoise.errors import CatalogueError, PsfError
from pausdenoise.n2v.normalise import frame_statistics
from pausdenoise.pipeline.star_field_targets import (
    catalogue_fluxes,
    complete_flux,
    exposure_model,
)
from pausdenoise.psf import elliptical_moffat_stamp

SHAPE = (128, 128)
SKY, GAIN, RDNOISE_E = 400.0, 2.0, 6.0
FWHM, BETA, E1, E2 = 3.2, 3.0, 0.3, -0.1


def _field(rng: np.random.Generator, n: int = 60, shape: tuple[int, int] = SHAPE
           ) -> tuple[np.ndarray, np.ndarray]:
    """A crowded field's truth (ADU, sky included) and its stars' fluxes (ADU)."""
    flux = 10 ** rng.uniform(2.5, 4.5, n)
    truth = np.full(shape, SKY)
    stamp = 25
    big = np.zeros((shape[0] + stamp, shape[1] + stamp))
    for f in flux:
        x, y = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
        ix, iy = round(x), round(y)
        big[iy:iy + stamp, ix:ix + stamp] += f * elliptical_moffat_stamp(
            FWHM, BETA, E1, E2, stamp, x - ix, y - iy)
    return truth + big[stamp // 2:stamp // 2 + shape[0], stamp // 2:stamp // 2 + shape[1]], flux


def _observe(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    electrons = rng.poisson(truth * GAIN) + rng.normal(0, RDNOISE_E, truth.shape)
    return (electrons / GAIN).astype(np.float32)


def _store(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Five exposures of one field; the first has no gain. Returns truth, fluxes, names."""
    rng = np.random.default_rng(3)
    truth, flux = _field(rng)
    names = []
    for k in range(5):
        name = st.frame_id(20 + k, 1)
        attrs = {"expnum": 20 + k, "ccd": 1, "band": "I", "exptime": 10.0, "zp": 1.0,
                 "zp_err": 0.0, "rdnoise": RDNOISE_E, "psf_fwhm_px": FWHM, "psf_beta": BETA,
                 "psf_e1": E1, "psf_e2": E2, "saturate": 60000.0,
                 **({} if k == 0 else {"gain": GAIN})}
        st.write_frame(path, name, {"image": _observe(truth, rng),
                                    "mask": np.zeros(SHAPE, np.uint8)}, attrs, chunks=(64, 64))
        names.append(name)
    return truth, flux, names


def _config(store: Path, catalogue: Path):
    from pausdenoise.config import PipelineConfig

    return PipelineConfig.model_validate({
        "input": {"source": "store", "store_path": str(store)},
        "holdout_exposures_per_band": 1, "cluster": {"kind": "threads"},
        "evaluate": {"max_references": 3, "reference_kernel": 2, "depth": False},
        "train": {"method": "n2n", "n2n_targets": "star-field",
                  "star_field": {"catalogue": str(catalogue), "flux_column": "flux",
                                 "size": 96, "realisations": 2},
                  "unet": {"depth": 2, "base_channels": 8, "posterior": "none",
                           "batch_norm": False, "residual": True},
                  "loss_weighting": "poisson", "patch_size": 32, "batch_size": 8,
                  "steps_per_epoch": 25, "epochs": 8, "learning_rate": 3e-3,
                  "validation_patches": 16, "validation_fraction": 0.25, "num_threads": 1,
                  "keep": "last", "noise_correlation": [0.0, 0.0]},
    })


def test_the_network_trains_on_simulated_fields_and_denoises_a_real_exposure(tmp_path):
    from pausdenoise.pipeline.runner import run

    store = tmp_path / "s.zarr"
    truth, flux, names = _store(store)
    catalogue = tmp_path / "stars.csv"
    pd.DataFrame({"flux": flux}).to_csv(catalogue, index=False)
    out = tmp_path / "run"
    run(_config(store, catalogue), out, stages=["train", "denoise", "evaluate"])
    summary = json.loads((out / "run.json").read_text())["stages"]["train"]["summary"]
    copied = names[1:4]  # the last exposure is held out, the first has no gain
    assert summary["train_frames"] == [f"{f}~sim{k}" for f in copied for k in range(2)]
    assert [f for f, _ in summary["skipped"]] == [names[0]]
    assert "no gain" in summary["skipped"][0][1]
    sim = summary["star_field"]
    assert sim["stars"] > 0 and sim["complete_flux"] > 0 and sim["faint_min_flux"] > 0
    assert set(sim["exposures"]) == set(copied)
    assert all(e["e1"] == E1 and e["e2"] == E2 and e["faint_factor"] > 0
               for e in sim["exposures"].values())
    held = names[4]
    den = np.asarray(st.open_frame(store, held, "denoised"), dtype=np.float64)
    raw = np.asarray(st.open_frame(store, held, "image"), dtype=np.float64)
    inner = (slice(8, -8), slice(8, -8))
    rms = [np.sqrt(np.mean((a - truth)[inner] ** 2)) for a in (raw, den)]
    assert rms[1] < 0.5 * rms[0], rms  # ÷3.4 here
    # the network saw no real frame: any other exposure may be a reference
    ev = json.loads((out / "evaluate" / "summary.json").read_text())
    assert ev["reference_pool"] == "all" and ev["frames_evaluated_independent"] == 1


def test_a_missing_star_catalogue_fails_the_run_before_any_work(tmp_path):
    from pausdenoise.errors import ConfigError
    from pausdenoise.pipeline.runner import run

    store = tmp_path / "s.zarr"
    _store(store)
    with pytest.raises(ConfigError, match=r"train\.star_field\.catalogue"):
        run(_config(store, tmp_path / "nowhere.csv"), tmp_path / "run", stages=["train"])
    assert not (tmp_path / "run" / "model").exists()


def test_star_field_targets_need_method_n2n_and_a_catalogue():
    from pausdenoise.n2v.config import TrainConfig

    with pytest.raises(ValueError, match=r"star_field\.catalogue"):
        TrainConfig(method="n2n", n2n_targets="star-field", unet={"posterior": "none"})
    with pytest.raises(ValueError, match="method 'n2n'"):
        TrainConfig(n2n_targets="star-field", star_field={"catalogue": "x.cat"})


def test_catalogue_fluxes_name_the_file_and_column(tmp_path):
    good = tmp_path / "stars.csv"
    pd.DataFrame({"FLUX_AUTO": [-1.0, np.nan, *np.linspace(10, 1e4, 12)]}).to_csv(good)
    assert catalogue_fluxes(good, "FLUX_AUTO").size == 12  # the non-positive left out
    with pytest.raises(CatalogueError, match=r"stars.csv \[FLUX_ISO\].*no flux column"):
        catalogue_fluxes(good, "FLUX_ISO")
    few = tmp_path / "few.csv"
    pd.DataFrame({"FLUX_AUTO": [1.0, 2.0]}).to_csv(few)
    with pytest.raises(CatalogueError, match="2 positive fluxes"):
        catalogue_fluxes(few, "FLUX_AUTO")
    with pytest.raises(CatalogueError, match="not found"):
        catalogue_fluxes(tmp_path / "none.csv", "FLUX_AUTO")


def test_the_complete_flux_is_the_turnover_of_the_counts():
    rng = np.random.default_rng(0)
    # counts rising as F^-0.6 per dex down to 10^3.5, then lost (a detection limit)
    u = rng.random(20_000)
    lo, hi = 10 ** (-0.6 * 3.5), 10 ** (-0.6 * 6)
    f = (lo + u * (hi - lo)) ** (-1 / 0.6)
    f = f[rng.random(f.size) < np.clip((np.log10(f) - 3.0) / 0.5, 0, 1)]
    assert np.log10(complete_flux(f)) == pytest.approx(3.6, abs=0.2)


def test_the_exposure_model_measures_the_ellipticity_where_the_ingest_did_not():
    rng = np.random.default_rng(5)
    img = np.full((256, 256), SKY)
    for cy in range(24, 232, 40):
        for cx in range(24, 232, 40):
            img[cy - 12:cy + 13, cx - 12:cx + 13] += 3e4 * elliptical_moffat_stamp(
                FWHM, BETA, E1, E2, 25, *rng.uniform(-0.5, 0.5, 2))
    img = _observe(img, rng)
    stats = frame_statistics(img)
    attrs = {"psf_fwhm_px": FWHM, "psf_beta": BETA, "gain": GAIN, "rdnoise": RDNOISE_E}
    model = exposure_model(attrs, img, None, stats, 0.3, elliptical=True)
    assert (model.e1, model.e2) == pytest.approx((E1, E2), abs=0.03)
    assert model.read_noise_adu == pytest.approx(RDNOISE_E / GAIN)
    assert model.saturate == np.inf and model.sigma == stats.sigma
    given = exposure_model({**attrs, "psf_e1": 0.1, "psf_e2": 0.2}, img, None, stats, 0.3,
                           elliptical=True)
    assert (given.e1, given.e2) == (0.1, 0.2)
    assert exposure_model(attrs, img, None, stats, 0.3, elliptical=False).e1 == 0.0
    with pytest.raises(PsfError):
        exposure_model({"gain": GAIN}, img, None, stats, 0.3, elliptical=False)
    with pytest.raises(ValueError, match="no gain"):
        exposure_model({"psf_fwhm_px": FWHM}, img, None, stats, 0.3, elliptical=False)
