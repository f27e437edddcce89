"""Shared builders for the photometry tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def circular_catalogue(xs, ys, r: float) -> pd.DataFrame:
    """Catalogue rows with circular apertures of radius ``r`` (aperture units) at (xs, ys),
    0-based px, ``ref_id`` 0, 1, …"""
    n = len(xs)
    return pd.DataFrame({"ref_id": np.arange(n), "aperture_x": np.asarray(xs, float),
                         "aperture_y": np.asarray(ys, float), "aperture_a": np.full(n, r),
                         "aperture_b": np.full(n, r), "aperture_theta": np.zeros(n)})
