"""Numerical precision of inference: autocast dtype, CPU/CUDA policy, TF32.

float32 is the default and the only precision that keeps tiled inference equal to
whole-image inference at 1e-5 σ. Reduced precision (``torch.autocast`` to bfloat16 or
float16) is opt-in through :attr:`DenoiseConfig.precision
<pausdenoise.denoise.config.DenoiseConfig.precision>`: on CUDA it is used as asked; on CPU
only bfloat16, and only when asked for explicitly with ``device="cpu"``
(:func:`_effective_precision`). On CUDA, ``precision="float32"`` also switches TF32 off
(:func:`pausdenoise.denoise.model._configure_process`, :func:`tf32_mode`), so float32
means float32. :func:`pausdenoise.denoise.precision_check.measure_precision_error`
measures what reduced precision costs in units of the noise σ.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from pausdenoise.denoise.config import DenoiseConfig

__all__ = ["tf32_mode"]


def _autocast(device: torch.device, precision: str):
    if precision == "float32":
        return contextlib.nullcontext()
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _effective_precision(config: DenoiseConfig, device: torch.device) -> str:
    """Choose the autocast dtype a worker uses: reduced precision on CPU only when explicit.

    Returns
    -------
    str
        ``config.precision``, or ``"float32"`` (with a warning) off CUDA unless bfloat16
        was asked for with ``device="cpu"``.
    """
    if device.type == "cpu" and config.device == "cpu" and config.precision == "bfloat16":
        return "bfloat16"
    if config.precision != "float32" and device.type != "cuda":
        warnings.warn(
            f"precision={config.precision!r} requested but the worker runs on {device}; "
            "using float32", RuntimeWarning, stacklevel=3,
        )
        return "float32"
    return config.precision


@contextlib.contextmanager
def tf32_mode(device: torch.device, enabled: bool) -> Iterator[None]:
    """Switch TF32 convolutions and matmuls on or off on CUDA inside the block.

    The previous flags are restored on exit. Nothing happens on CPU.
    ``tf32_mode(dev, False)`` makes float32 mean float32 (torch allows TF32 convolutions
    by default).

    Parameters
    ----------
    device : torch.device
        The device the block runs on; only ``"cuda"`` devices are affected.
    enabled : bool
        TF32 allowed (``True``) or not (``False``) inside the block.

    Yields
    ------
    None
        Control to the ``with`` block.
    """
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
