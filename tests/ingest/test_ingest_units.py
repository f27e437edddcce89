"""Ingest units: the mask convention, magnitude zero-points, configuration validation and
its content digest."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pausdenoise.ingest import IngestConfig, apply_mask_convention, zp_factor_from_mag


def test_mask_convention():
    m = np.array([0, 1, 2, 16, 32, 129, 255], dtype=np.uint8)
    bits = apply_mask_convention(m, "bits")
    assert list(bits) == [0, 1, 2, 16, 128, 129, 128 | 1 | 2 | 4 | 8 | 16]
    assert list(apply_mask_convention(m, "other")) == [0] + [128] * 6
    wide = np.array([0, 1, 256, -1, 1 << 20 | 2], dtype=np.int64)
    assert list(apply_mask_convention(wide, "bits")) == [0, 1, 128, 128, 130]
    f = np.array([0.0, 1.0, np.nan, 0.5])
    assert list(apply_mask_convention(f, "other")) == [0, 128, 128, 128]
    assert list(apply_mask_convention(f, "bits")) == [0, 1, 128, 128]


def test_zp_factor_from_mag():
    assert zp_factor_from_mag(23.9) == pytest.approx(1.0)
    assert zp_factor_from_mag(26.4) == pytest.approx(0.1)
    assert zp_factor_from_mag(21.4, exptime=10.0, per_second=True) == pytest.approx(
        zp_factor_from_mag(23.9)
    )
    with pytest.raises(ValueError):
        zp_factor_from_mag(25.0, exptime=0.0, per_second=True)


def test_config_validation():
    with pytest.raises(ValidationError):
        IngestConfig(unknown_option=1)
    with pytest.raises(ValidationError, match="multiple"):
        IngestConfig(chunks=(64, 64), shards=(100, 100))
    with pytest.raises(ValidationError, match="unknown keys"):
        IngestConfig(defaults={"expnum": 3})
    assert IngestConfig().effective_require_same_shape
    assert IngestConfig(layout="generic").effective_mask_mode == "other"
    a = IngestConfig(chunks=(32, 32)).content_digest()
    assert a == IngestConfig(chunks=(64, 64), clevel=1).content_digest()
    assert a != IngestConfig(mask_mode="other").content_digest()
