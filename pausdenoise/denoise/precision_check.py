"""What reduced precision costs: :func:`measure_precision_error` against float32.

Separate from :mod:`pausdenoise.denoise.precision` (the policy that block inference
uses) because the measurement itself runs block inference
(:func:`pausdenoise.denoise.tiling.predict_block`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch

from pausdenoise.denoise.model import ModelRef, _resolve_device, get_model
from pausdenoise.denoise.precision import tf32_mode
from pausdenoise.denoise.tiling import predict_block
from pausdenoise.n2v.normalise import FrameStats, normalise
from pausdenoise.n2v.unet import OptimisedUNet, UNet

__all__ = ["measure_precision_error"]


def _timed_runs(net: UNet | OptimisedUNet, x: np.ndarray, dev: torch.device,
                precision: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Run float32 and ``precision`` inference, each warmed up first, and time them.

    Returns
    -------
    tuple of dict
        Outputs (σ units) and seconds, both keyed by precision.
    """
    results = {}
    timings = {}
    with tf32_mode(dev, False):
        for prec in ("float32", precision):
            predict_block(net, x[:256, :256], halo=net.halo(), precision=prec)  # warm-up
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            results[prec] = predict_block(net, x, halo=net.halo(), precision=prec)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            timings[prec] = time.perf_counter() - t0
    return results, timings


def measure_precision_error(
    model: UNet,
    image: np.ndarray,
    stats: FrameStats,
    mask: np.ndarray | None = None,
    *,
    precision: Literal["bfloat16", "float16"] = "bfloat16",
    device: str = "cuda",
) -> dict[str, Any]:
    """Measure the error of reduced-precision inference against float32, in units of σ.

    Runs :func:`predict_array` on the normalised ``image`` twice on ``device`` (float32 and
    autocast ``precision``; CPU autocast works for bfloat16) and compares the outputs. On
    CUDA the float32 reference is strict float32 (TF32 switched off for the call, as the
    denoise stage does for ``precision="float32"``); each precision is warmed up on a
    256² corner first, so the timings leave out one-off autotuning.
    Normalised units are units of the frame's σ, so the numbers read directly as fractions
    of the noise. On CPU both runs use the network the denoise stage runs there (the
    optimised copy unless ``PAUSDENOISE_CPU_OPTIMISE=0``; under bfloat16 autocast its eager
    channels-last form), so the timings compare the two production paths.

    Parameters
    ----------
    model : UNet
        The network.
    image : ndarray, shape (ny, nx)
        Frame in ADU.
    stats : FrameStats
        Its normalisation statistics (sky and σ in ADU).
    mask : ndarray or None, optional
        Non-zero = bad pixel: set to the sky before the network and left out of the
        comparison (as are non-finite differences).
    precision : {"bfloat16", "float16"}, optional
        Reduced precision to judge. Default ``"bfloat16"``.
    device : str, optional
        ``"cuda"`` (default), ``"cpu"`` or ``"auto"``.

    Returns
    -------
    dict
        ``rms_sigma``, ``max_abs_sigma``, ``mean_sigma`` (bias), ``p99_abs_sigma`` (all in
        units of σ), ``precision``, ``device``, ``seconds_float32``, ``seconds_reduced``.
    """
    dev = _resolve_device(device)
    net = get_model(ModelRef.from_model(model), dev)
    x = normalise(image, stats, mask)
    results, timings = _timed_runs(net, x, dev, precision)
    d = results[precision].astype(np.float64) - results["float32"]
    good = np.ones_like(d, dtype=bool) if mask is None else np.asarray(mask) == 0
    d = d[good & np.isfinite(d)]
    return {
        "precision": precision,
        "device": str(dev),
        "rms_sigma": float(np.sqrt(np.mean(d**2))),
        "max_abs_sigma": float(np.max(np.abs(d))),
        "mean_sigma": float(np.mean(d)),
        "p99_abs_sigma": float(np.percentile(np.abs(d), 99)),
        "seconds_float32": timings["float32"],
        "seconds_reduced": timings[precision],
    }
