"""The simulated reference catalogue carries the true profiles, and the readers accept them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pausdenoise.paus_layout import CATALOGUE_COLUMNS, PROFILE_COLUMNS
from pausdenoise.photometry.catalogue import read_catalogue, validate_catalogue
from pausdenoise.simulate.config import SimulationConfig
from pausdenoise.simulate.writer import iter_frames, survey_tables

pytest.importorskip("galsim")


def test_simulated_catalogue_rows_hold_the_true_profiles(tmp_path: Path):
    cfg = SimulationConfig(
        seed=3, ccd_shape=(128, 128), exposures_per_band=1, bands=["NB455"], star_density=30.0
    )
    sources, plan = survey_tables(cfg)
    frame = next(iter(iter_frames(cfg, sources, plan)))
    cat = frame.catalogue
    assert tuple(cat.columns) == (*CATALOGUE_COLUMNS, *PROFILE_COLUMNS)
    assert len(cat) > 5
    truth = sources.set_index("ref_id").loc[cat["ref_id"]]
    np.testing.assert_array_equal(cat["profile_hlr"], truth["hlr_arcsec"])
    np.testing.assert_array_equal(cat["profile_q"], truth["q"])
    np.testing.assert_array_equal(cat["profile_bulge_frac"], truth["bulge_frac"])
    stars = truth["is_star"].to_numpy()
    assert stars.any() and (cat.loc[stars, "profile_hlr"] == 0).all()
    # the catalogue readers keep the extra columns and find nothing wrong
    assert validate_catalogue(cat, cfg.ccd_shape).issues.empty
    path = tmp_path / "catalogue.parquet"
    cat.assign(band=cat["band"].astype(str)).to_parquet(path, index=False)
    back = read_catalogue(path)
    assert tuple(back.columns) == tuple(cat.columns)
    np.testing.assert_array_equal(back["profile_q"], cat["profile_q"])
