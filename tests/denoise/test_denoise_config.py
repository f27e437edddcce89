"""The denoise configuration (:mod:`pausdenoise.denoise.config`): strict, torch-free."""

from __future__ import annotations

import pytest

from pausdenoise.denoise import DenoiseConfig


def test_config_is_strict():
    with pytest.raises(ValueError):
        DenoiseConfig(tile_sise=64)  # typo: extra fields are forbidden
    with pytest.raises(ValueError, match="needs device='cuda'"):
        DenoiseConfig(device="cpu", precision="float16")
    assert DenoiseConfig(device="auto", precision="bfloat16").precision == "bfloat16"
    # CPU bfloat16 only when asked for explicitly (device='cpu'); never the default
    assert DenoiseConfig(device="cpu", precision="bfloat16").precision == "bfloat16"
    assert DenoiseConfig().precision == "float32"


def test_config_module_loads_without_torch():
    """``pausdenoise.config`` imports :class:`DenoiseConfig`; it must not need torch."""
    import subprocess
    import sys

    code = ("import sys, pausdenoise.denoise.config, pausdenoise.denoise; "
            "from pausdenoise.denoise import DenoiseConfig; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
