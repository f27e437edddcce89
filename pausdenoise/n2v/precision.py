"""The autocast precision a training run uses: ``train.precision`` resolved on its device.

``train.precision: auto`` (the default) trains in bfloat16 where the hardware computes it
natively and in float32 elsewhere:

- a CPU with AVX-512 BF16 or AMX instructions (Intel Cooper Lake, Sapphire Rapids and
  later; AMD Zen 4 and later): bf16 (oneDNN's bfloat16 convolutions; 2.7-3.0 × the
  patches/s of float32 on an Intel Xeon with AMX, ``benchmarks/RESULTS.md``);
- any other CPU: fp32 (bfloat16 would be emulated, with no gain);
- a CUDA device that supports bfloat16 (Ampere and later): bf16; older ones fp32.

``method: sure`` always trains in fp32: its Monte-Carlo divergence
``(f(y + ε b) − f(y)) / ε`` with ε = 0.01 σ is a difference far below bfloat16's
resolution (8 bits of mantissa: steps of 0.4 % of the output), so asking for bf16 or fp16
with it is a configuration error (:class:`~pausdenoise.n2v.config.TrainConfig`). On the CPU
an explicit ``fp16`` is ignored (fp32). Weights, optimiser and loss stay float32 in every
case; the precision in force is recorded in the training history and the checkpoint.
"""

from __future__ import annotations

import torch

from pausdenoise.n2v.config import TrainConfig

__all__ = ["cpu_has_bfloat16_units", "resolve_precision", "training_precision"]

# torch.cpu's probes of the instruction sets behind oneDNN's native bfloat16 kernels
_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_has_bfloat16_units() -> bool:
    """Tell whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX).

    Returns
    -------
    bool
        True when torch reports AVX-512 BF16 or AMX tiles; False otherwise, or when this
        torch build cannot tell.
    """
    for name in _BF16_PROBES:
        probe = getattr(torch.cpu, name, None)
        if probe is not None and bool(probe()):
            return True
    return False


def training_precision(cfg: TrainConfig, device: torch.device) -> str:
    """Return the autocast precision a training run on ``device`` uses.

    Parameters
    ----------
    cfg : TrainConfig
        Its ``precision`` (``auto``, ``fp32``, ``bf16`` or ``fp16``) and ``method``.
    device : torch.device
        The training device.

    Returns
    -------
    str
        ``"fp32"``, ``"bf16"`` or ``"fp16"`` (the last on CUDA only): ``auto`` resolved as
        the module says; fp16 on a CPU gives fp32; ``method: sure`` gives fp32.
    """
    if cfg.method == "sure":
        return "fp32"
    return resolve_precision(cfg.precision, device)


def resolve_precision(requested: str, device: torch.device) -> str:
    """Resolve a precision setting on a device (the rules of this module, any network).

    Parameters
    ----------
    requested : {"auto", "fp32", "bf16", "fp16"}
        The setting.
    device : torch.device
        The training device.

    Returns
    -------
    str
        ``"fp32"``, ``"bf16"`` or ``"fp16"`` (the last on CUDA only): ``auto`` gives bf16
        on a CPU with bfloat16 units or a CUDA device that supports it, else fp32; fp16 on
        a CPU gives fp32; any other device type fp32.
    """
    if device.type not in ("cuda", "cpu"):
        return "fp32"
    if device.type == "cuda":
        if requested == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return requested
    if requested == "auto":
        return "bf16" if cpu_has_bfloat16_units() else "fp32"
    return "bf16" if requested == "bf16" else "fp32"  # fp16 is ignored on the CPU
