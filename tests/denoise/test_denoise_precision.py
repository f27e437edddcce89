"""Precision (:mod:`pausdenoise.denoise.precision`, :mod:`~pausdenoise.denoise.precision_check`):
reduced-precision error against float32, CPU bfloat16 only when explicit, GPU."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from denoise_cases import in_sigma, make_image, random_unet

from pausdenoise import denoise as dn
from pausdenoise.denoise import DenoiseConfig, ModelRef, denoise_frame
from pausdenoise.n2v.normalise import frame_statistics

# --------------------------------------------------------------------------- precision


def test_precision_error_measured_against_float32_on_cpu_bf16():
    model = random_unet(2, 4, False, 16)
    img = make_image(64, 64, seed=16)
    res = dn.measure_precision_error(model, img, frame_statistics(img),
                                     precision="bfloat16", device="cpu")
    assert res["device"] == "cpu"
    assert 0 < res["rms_sigma"] < 0.2  # bf16 (8-bit mantissa) is visibly, not grossly, off
    assert res["max_abs_sigma"] >= res["rms_sigma"]



def test_cpu_bfloat16_only_when_explicit():
    """``device='auto'`` on a CPU worker never runs bf16 (warning, float32 result);
    ``device='cpu', precision='bfloat16'`` does (different from float32, close to it)."""
    model = random_unet(2, 4, False, 26)
    img = make_image(96, 96, seed=26)
    stats = frame_statistics(img)
    x = da.from_array(img, chunks=(48, 48))
    f32 = denoise_frame(x, None, stats, model, DenoiseConfig(device="cpu")).compute()
    with pytest.warns(RuntimeWarning, match="using float32"):
        auto = denoise_frame(x, None, stats, model,
                             DenoiseConfig(device="auto", precision="bfloat16")).compute()
    np.testing.assert_array_equal(auto, f32)
    bf16 = denoise_frame(x, None, stats, model,
                         DenoiseConfig(device="cpu", precision="bfloat16")).compute()
    d = np.abs(in_sigma(bf16, stats) - in_sigma(f32, stats))
    assert 0 < d.max() < 0.5 and np.sqrt(np.mean(d**2)) < 0.05
    assert (dn.denoise_key(ModelRef.from_model(model), stats, model.halo(),
                           DenoiseConfig(device="cpu", precision="bfloat16"))
            != dn.denoise_key(ModelRef.from_model(model), stats, model.halo(),
                              DenoiseConfig(device="cpu")))



@pytest.mark.gpu
def test_gpu_float32_matches_cpu_and_bf16_error_is_small():
    model = random_unet(2, 8, False, 18)
    img = make_image(256, 256, seed=18)
    stats = frame_statistics(img)
    x = da.from_array(img, chunks=(128, 128))
    cpu = denoise_frame(x, None, stats, model, DenoiseConfig(device="cpu")).compute()
    gpu = denoise_frame(
        x, None, stats, model, DenoiseConfig(device="cuda", tile_size=64, batch_size=4)
    ).compute()
    assert np.abs(in_sigma(gpu, stats) - in_sigma(cpu, stats)).max() < 1e-4
    res = dn.measure_precision_error(model, img, stats, precision="bfloat16", device="cuda")
    assert res["rms_sigma"] < 0.2
