"""Configuration of the denoise stage (:class:`DenoiseConfig`).

Deliberately free of torch, so that :mod:`pausdenoise.config` (and a client that only
builds or checks a configuration) loads without it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DenoiseConfig"]


class DenoiseConfig(BaseModel):
    """Configuration of the denoise stage (inference only; the model comes separately).

    Attributes
    ----------
    device : {"auto", "cpu", "cuda"}
        Where each worker runs the network. ``"auto"`` is resolved *in the worker* (CUDA when
        that process sees a GPU, else CPU), so a CPU-only client can drive GPU workers.
    precision : {"float32", "bfloat16", "float16"}
        Reduced precision (``torch.autocast``). On CUDA both are used. On CPU, float32 is the
        default and ``"auto"`` on a CPU worker falls back to float32 with a warning; bfloat16
        autocast runs on CPU only when asked for explicitly with ``device="cpu",
        precision="bfloat16"`` (float16 with ``device="cpu"`` is rejected). CPU bfloat16 is
        ≈ 2.1–2.3× faster than the optimised float32 network. Its pixel error grows with
        the pixel value (8-bit mantissa): on the demo model and frames RMS 6e-3 σ, but up to
        4 σ at bright-star pixels; judged by forced aperture photometry it is small: the
        fluxes move by a median ≤ +0.013 flux errors (≤ +0.05 %) and p99 ≤ 0.05 flux
        errors from I_auto 17 down (``benchmarks/bench_precision.py``; RESULTS.md, "Reduced
        precision judged by photometry"). It stays opt-in because only float32 keeps the
        tiled = whole-image agreement at 1e-5 σ. Measure it on your own run first with
        ``bench_precision.py --run`` (or per pixel with
        :func:`pausdenoise.denoise.precision_check.measure_precision_error`).
    batch_size : int
        Sub-tiles per forward pass when ``tile_size`` splits a block (the GPU batch).
    tile_size : int or None
        Split each block (chunk + halo) into sub-tiles of this core size (a multiple of
        ``2**depth``) with the same halo, batched ``batch_size`` at a time. Bounds the memory
        of one forward pass (the activations of a 1024² block at 32 channels need ~1 GB).
        ``None``: one forward per block. The result does not depend on it (exact tiling).
    halo : int or None
        Override of the halo (px). Must be ≥ the model's halo and a multiple of ``2**depth``;
        ``None`` uses :meth:`UNet.halo`.
    torch_threads : int or None
        ``torch.set_num_threads`` in each worker process. ``None``: see
        :func:`pausdenoise.denoise.model.default_torch_threads` (cores divided by the dask
        threads of the process).
    masked_output : {"network", "nan", "input"}
        Value written at masked / non-finite pixels (see the docstring of
        :mod:`pausdenoise.denoise.tiling`, "Masked and bad pixels").
    prior_scale : float
        For a Gaussian-posterior network: τ multiplying the prior variance in the posterior
        mean (:meth:`pausdenoise.n2v.unet.UNet.infer`); 1 = least pixel error, larger trusts
        each pixel's own value more (less faint-flux loss, more noise). Ignored otherwise.
    restore_catalogue : bool
        Give the run's catalogue sources back, inside their apertures, the low-pass part of
        what the network removed (:mod:`pausdenoise.denoise.restore`): faint sources the
        network cannot tell from the sky keep their aperture flux. Needs a catalogue.
    restore_sigma : float
        σ (px) of the Gaussian low pass of the restoration (0: the raw pixels).
    restore_grow : float
        px added to both semi-axes of each aperture for the restoration mask.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' resolves per worker: cuda if visible, else cpu"
    )
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="autocast dtype. On CUDA as asked. On CPU float32 unless "
        "device is 'cpu' and precision 'bfloat16' (2.1-2.3x faster here; pixels off by up to "
        "4 sigma at bright stars, aperture fluxes by <= 0.05 flux errors (p99): measure with "
        "benchmarks/bench_precision.py); float16 needs CUDA"
    )
    batch_size: int = Field(4, ge=1, description="sub-tiles per forward pass")
    tile_size: int | None = Field(
        None, ge=1, description="core size of sub-tiles inside a block; None = whole block"
    )
    halo: int | None = Field(
        None, ge=0, description="halo override (>= model halo, multiple of 2**depth)"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per worker process; None = derived"
    )
    masked_output: Literal["network", "nan", "input"] = Field(
        "network", description="value written at masked or non-finite pixels"
    )
    prior_scale: float = Field(
        1.0,
        gt=0,
        description="Gaussian-posterior networks: prior-variance factor τ (1: least pixel "
        "error; larger: less faint-flux loss, more noise left); ignored by plain N2V",
    )

    restore_catalogue: bool = Field(
        False,
        description="Give each catalogue source back, inside its aperture (grown by "
        "restore_grow px, edge softened over 1 px), the low-pass part (Gaussian "
        "restore_sigma px) of what the network removed: faint galaxies it cannot tell from "
        "the sky keep their aperture flux (and its noise); the sky elsewhere stays as "
        "denoised. Needs the run's catalogue; the injection stage adds its injected sources",
    )
    restore_sigma: float = Field(
        1.0, ge=0, le=8, description="σ (px) of the restoration's Gaussian low pass (0: the "
        "raw pixels inside the apertures)"
    )
    restore_grow: float = Field(
        2.0, ge=0, le=20, description="px added to both semi-axes of each catalogue aperture "
        "for the restoration mask"
    )

    @model_validator(mode="after")
    def _check(self) -> DenoiseConfig:
        if self.device == "cpu" and self.precision == "float16":
            raise ValueError(
                "precision='float16' needs device='cuda' (or 'auto'); on CPU only bfloat16 "
                "can be asked for, explicitly (device='cpu', precision='bfloat16')"
            )
        return self
