"""The injected population: magnitudes, shapes and SEDs drawn as the simulation draws them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pausdenoise.inject.config import InjectConfig
from pausdenoise.paus_layout import NARROW_BANDS
from pausdenoise.simulate.sources import _population, band_fluxes, mag_to_ujy

__all__ = ["INJECT_REF_ID0", "POPULATION_COLUMNS", "band_flux_ujy", "draw_injections"]

#: First ``ref_id`` of injected sources (real and simulated catalogues stay below it).
INJECT_REF_ID0: int = 1_000_000_000

#: Columns of :func:`draw_injections`, in order.
POPULATION_COLUMNS: tuple[str, ...] = (
    "ref_id",  # int64, >= INJECT_REF_ID0
    "I_auto",  # float64, AB mag
    "is_star",  # bool
    "profile_hlr",  # float64, intrinsic half-light radius, arcsec (0 for stars)
    "profile_q",  # float64, axis ratio b/a
    "theta_pix_deg",  # float64, major axis, degrees from +x towards +y (pixel frame)
    "profile_bulge_frac",  # float64, de Vaucouleurs flux fraction
    "sed_slope",  # float64, SED power-law slope (pausdenoise.simulate.sources.sed_shape)
    "break_nm",  # float64, SED break wavelength, nm
    "break_factor",  # float64, flux factor blueward of the break
)

_RENAME = {
    "hlr_arcsec": "profile_hlr",
    "q": "profile_q",
    "bulge_frac": "profile_bulge_frac",
}


def draw_injections(
    config: InjectConfig,
    rng: np.random.Generator,
    n: int,
    *,
    first_ref_id: int = INJECT_REF_ID0,
) -> pd.DataFrame:
    """Draw ``n`` sources to inject, from the simulation's galaxy (and star) population.

    Magnitudes follow dN/dm ∝ 10^(``mag_slope``·m) on ``mag_range`` (uniform by default);
    galaxy sizes, shapes, bulge fractions and SEDs are drawn by
    :mod:`pausdenoise.simulate.sources` with ``config``'s size and shape parameters. A
    binomial(``n``, ``star_fraction``) number of them are point sources; the rows are in
    random order.

    Parameters
    ----------
    config : InjectConfig
        The population settings.
    rng : numpy.random.Generator
        The generator; the table depends only on it, ``config`` and ``n``.
    n : int
        Number of sources (>= 0).
    first_ref_id : int, optional
        ``ref_id`` of the first row; the rows get consecutive ids from it.

    Returns
    -------
    pandas.DataFrame
        :data:`POPULATION_COLUMNS`, one row per source.

    Raises
    ------
    ValueError
        When ``n`` is negative.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    sim = config.population_config()
    n_star = int(rng.binomial(n, config.star_fraction)) if n else 0
    parts = [_population(sim, rng, n - n_star, False), _population(sim, rng, n_star, True)]
    pop = pd.concat(parts, ignore_index=True).rename(columns=_RENAME)
    pop = pop.iloc[rng.permutation(n)].reset_index(drop=True)
    pop.insert(0, "ref_id", np.arange(first_ref_id, first_ref_id + n, dtype=np.int64))
    pop["is_star"] = pop["is_star"].astype(bool)
    return pop[list(POPULATION_COLUMNS)]


def band_flux_ujy(injections: pd.DataFrame, band: str) -> np.ndarray:
    """Return the true flux density of each injected source in ``band``.

    A PAUS narrow band (``NB455`` … ``NB845``) gets the SED flux of
    :func:`pausdenoise.simulate.sources.band_fluxes`; any other band (e.g. a real frame's
    broad ``I`` filter) gets the ``I_auto`` flux.

    Parameters
    ----------
    injections : pandas.DataFrame
        Rows of :func:`draw_injections` (``I_auto`` in AB mag and the SED parameters).
    band : str
        The frame's band.

    Returns
    -------
    ndarray of float64
        Flux densities in µJy.
    """
    if band in NARROW_BANDS:
        return band_fluxes(injections, band)
    return mag_to_ujy(injections["I_auto"].to_numpy(dtype=float))
