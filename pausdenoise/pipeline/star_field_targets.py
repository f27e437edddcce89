"""Training frames simulated to match the exposures (``train.n2n_targets: star-field``).

On a crowded star field neither target of the self-supervised methods is good: the other
exposures' mean carries their different PSFs, and a noise model cannot tell the
unresolved stars from the noise. A network shown the truth can. For each training exposure
a star field is simulated that looks like it (:mod:`pausdenoise.simulate.star_field`):

* its PSF: the Moffat FWHM and β from its attributes (``psf_fwhm_px``/``psf_beta``
  measured at ingest, or the header's seeing), with ``train.star_field.elliptical`` the
  ellipticity ``psf_e1``/``psf_e2`` from the ingest or, where it has none, measured on
  its stars (:func:`pausdenoise.psf.psf_ellipticity`);
* its sky (the clipped median), gain and read noise (its attributes, header or fitted at
  ingest) and saturation level;
* the stars of ``train.star_field.catalogue`` (the fluxes of one exposure of the field),
  with fainter ones down to ``faint_min_noise`` pixel-noise σ on a power law, their number
  fitted so that the simulated frame has the exposure's robust σ.

Each field (``size`` px square) is observed ``realisations`` times; each noisy copy is a
training frame (named ``<frame>~sim<k>``) whose Noise2Noise target is the field's truth
(ADU, with the sky, so it is normalised like the image). Pixels at the saturation level are
masked, as the ingest masks the real ones. The simulation is drawn from ``train.seed``, so a
rerun trains on the same frames. Exposures without a PSF or a gain cannot be copied: they
are skipped, with the reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pausdenoise import reference_match as rm
from pausdenoise import store as st
from pausdenoise.errors import CatalogueError, PsfError
from pausdenoise.maskbits import MaskBit
from pausdenoise.n2v.normalise import frame_statistics
from pausdenoise.n2v.patches import Frame
from pausdenoise.photometry.catalogue import catalogue_format
from pausdenoise.photometry.sextractor import ldac_objects_hdu, read_sextractor
from pausdenoise.psf import frame_psf, psf_ellipticity, stored_ellipticity
from pausdenoise.simulate import star_field as sf
from pausdenoise.stats import pixel_noise_sigma

__all__ = ["catalogue_fluxes", "complete_flux", "exposure_model", "star_field_frames"]

#: Fewest positive fluxes a catalogue must hold to define the stars.
MIN_STARS = 10


def catalogue_fluxes(path: str | Path, column: str) -> np.ndarray:
    """Read the positive, finite fluxes (ADU) of a catalogue's ``column``.

    Parameters
    ----------
    path : str or Path
        SExtractor (ASCII_HEAD or FITS_LDAC), CSV, FITS table or Parquet
        (:func:`pausdenoise.photometry.catalogue.catalogue_format`).
    column : str
        The flux column.

    Returns
    -------
    ndarray
        The fluxes, ADU.

    Raises
    ------
    CatalogueError
        Naming the file: missing, unreadable, without the column, or with fewer than
        :data:`MIN_STARS` positive fluxes.
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogueError(path, "star catalogue not found")
    fmt = catalogue_format(path)
    try:  # pandas, astropy and arrow raise many exception types for corrupt input
        if fmt.startswith("SExtractor"):
            table = read_sextractor(path, ldac_objects_hdu(path) if fmt.endswith("LDAC")
                                    else None)
        elif fmt == "CSV":
            table = pd.read_csv(path)
        elif fmt == "FITS":
            from astropy.table import Table  # heavy: only for FITS tables

            table = Table.read(path).to_pandas()
        else:
            table = pd.read_parquet(path)
    except Exception as exc:
        raise CatalogueError(path, f"cannot be read as {fmt}: {exc}") from None
    if column not in table.columns:
        raise CatalogueError(path, f"no flux column (train.star_field.flux_column) among "
                             f"{list(table.columns)[:12]}", column=column)
    flux = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
    flux = flux[np.isfinite(flux) & (flux > 0)]
    if flux.size < MIN_STARS:
        raise CatalogueError(path, f"{flux.size} positive fluxes; the stars need "
                             f"{MIN_STARS}", column=column)
    return flux


def complete_flux(fluxes: np.ndarray) -> float:
    """Return the turnover of a catalogue's counts: where it stops being complete.

    The counts per 0.25 dex of flux are taken below the median flux; the centre of the
    fullest bin is returned (fainter, the catalogue loses stars).

    Parameters
    ----------
    fluxes : ndarray
        Positive fluxes, ADU.

    Returns
    -------
    float
        The flux, ADU.
    """
    logf = np.log10(np.asarray(fluxes, float))
    low = logf[logf <= np.median(logf)]
    edges = np.arange(np.floor(low.min() * 4) / 4, low.max() + 0.25, 0.25)
    if edges.size < 2:
        return float(10 ** np.median(logf))
    counts, edges = np.histogram(low, bins=edges)
    k = int(np.argmax(counts))
    return float(10 ** (0.5 * (edges[k] + edges[k + 1])))


def exposure_model(attrs: dict[str, Any], image: np.ndarray, mask: np.ndarray | None,
                   stats: Any, pixel_scale: float, elliptical: bool) -> sf.ExposureModel:
    """Copy what the simulation needs from one exposure.

    Parameters
    ----------
    attrs : dict
        The frame's store attributes (PSF, ``gain`` e⁻/ADU, ``rdnoise`` e⁻, ``saturate``
        ADU, ``psf_e1``/``psf_e2``).
    image : ndarray
        Its pixels, ADU (read only to measure the ellipticity where ``attrs`` has none).
    mask : ndarray or None
        Its mask (non-zero: bad).
    stats : FrameStats
        Its normalisation statistics (``sky``, ``sigma`` in ADU).
    pixel_scale : float
        Arcsec per pixel, for a header seeing in arcsec.
    elliptical : bool
        Give the PSF its ellipticity.

    Returns
    -------
    ExposureModel
        The exposure's copy.

    Raises
    ------
    PsfError
        Without a PSF (no ``psf_fwhm_px`` or seeing), or, when elliptical and the
        attributes hold no ellipticity, too few stars to measure it.
    ValueError
        Without a positive gain.
    """
    psf = frame_psf(attrs, pixel_scale=pixel_scale)
    gain, rn_adu = rm.frame_noise(attrs)
    if gain is None:
        raise ValueError("no gain (header GAIN or fitted at ingest)")
    e1 = e2 = 0.0
    if elliptical:
        stored = stored_ellipticity(attrs)
        if stored is None:
            shape = psf_ellipticity(image, mask, fwhm_px=psf.fwhm_px, beta=psf.beta,
                                    saturate=attrs.get("saturate"))
            stored = shape.e1, shape.e2
        e1, e2 = stored
    saturate = attrs.get("saturate")
    saturate = float(saturate) if saturate is not None and np.isfinite(saturate) else math.inf
    return sf.ExposureModel(float(psf.fwhm_px), float(psf.beta), float(gain), float(rn_adu),
                            float(stats.sky), float(stats.sigma), e1=float(e1), e2=float(e2),
                            saturate=saturate)


def _simulated_frames(name: str, model: sf.ExposureModel, pop: sf.Population,
                      shape: tuple[int, int], realisations: int, rng: np.random.Generator
                      ) -> tuple[list[Frame], float]:
    """Simulate one exposure's field and observe it ``realisations`` times.

    Returns
    -------
    frames : list of Frame
        The noisy copies (float32 ADU, saturated pixels masked) with the truth + sky as
        their target.
    factor : float
        The fitted factor on the faint stars' number.
    """
    factor, truth, _ = sf.fit_factor(pop, model, shape, rng)
    target = (truth + model.sky).astype(np.float32)
    mask = np.where(target >= model.saturate, np.uint8(MaskBit.SATURATED), np.uint8(0))
    frames = []
    for k in range(realisations):
        image = sf.observe(truth, model, rng).astype(np.float32)
        frames.append(Frame(image, mask, frame_statistics(image, mask), f"{name}~sim{k}",
                            target=target))
    return frames, float(factor)


def star_field_frames(store: Any, frames: list[Frame], settings: Any, pixel_scale: float,
                      seed: int) -> tuple[list[Frame], dict[str, Any], dict[str, str]]:
    """Simulate a star field like each training exposure, as Noise2Noise training frames.

    Parameters
    ----------
    store : path-like or zarr.Group
        The store (the frames' attributes).
    frames : list of Frame
        The real training frames (their images, masks and statistics).
    settings : StarFieldSettings
        ``train.star_field``.
    pixel_scale : float
        Arcsec per pixel (``photometry.pixel_scale``), for a header seeing in arcsec.
    seed : int
        Seed of the simulation (``train.seed``).

    Returns
    -------
    frames : list of Frame
        The simulated frames, ``realisations`` per exposure copied, each with its target.
    info : dict
        For the provenance: ``star_field`` with the catalogue's stars, the complete and
        faintest fluxes (ADU), the slope and, per exposure, the PSF, ellipticity and
        fitted factor.
    skipped : dict of str to str
        Exposures that could not be copied → why.
    """
    fluxes = catalogue_fluxes(settings.catalogue, settings.flux_column)
    complete = settings.complete_flux or complete_flux(fluxes)
    models: dict[str, sf.ExposureModel] = {}
    noise: list[float] = []
    skipped: dict[str, str] = {}
    for f in frames:  # each image read once: its noise and its copy's settings
        image = np.asarray(f.image[...], float)
        mask = None if f.mask is None else np.asarray(f.mask[...])
        noise.append(pixel_noise_sigma(image, None if mask is None else mask == 0))
        try:
            models[f.name] = exposure_model(st.frame_attrs(store, f.name), image, mask,
                                            f.stats, pixel_scale, settings.elliptical)
        except (PsfError, ValueError) as exc:
            skipped[f.name] = f"star-field simulation: {exc}"
    pop = sf.population(fluxes, complete, settings.faint_min_noise * float(np.nanmedian(noise)),
                        settings.faint_slope)
    rng = np.random.default_rng(seed)
    out: list[Frame] = []
    per_exposure: dict[str, dict[str, float]] = {}
    for f in frames:
        if f.name not in models:
            continue
        model = models[f.name]
        shape = (min(settings.size, f.shape[0]), min(settings.size, f.shape[1]))
        sims, factor = _simulated_frames(f.name, model, pop, shape, settings.realisations, rng)
        out.extend(sims)
        per_exposure[f.name] = {"fwhm_px": model.fwhm, "beta": model.beta, "e1": model.e1,
                                "e2": model.e2, "faint_factor": factor}
    info = {"star_field": {"catalogue": str(settings.catalogue), "stars": len(pop.bright),
                           "complete_flux": float(complete), "faint_min_flux": float(pop.fmin),
                           "faint_slope": float(pop.slope), "exposures": per_exposure}}
    return out, info, skipped
