"""Star fields simulated to match real exposures: the truth a denoiser can be trained on.

On a crowded star field a self-supervised denoiser cannot tell the unresolved stars from
the noise; a network shown the truth can. This module simulates, for one real exposure, a
field that looks like it (an :class:`ExposureModel` copies what matters from the
exposure):

* a Moffat PSF of the exposure's FWHM and β, round or elliptical (its ellipticity
  measured on its stars, :func:`pausdenoise.psf.psf_ellipticity`), drawn on a grid
  :data:`OVERSAMPLE` times finer than the pixels and summed to pixels
  (:func:`render_stars`);
* stars at uniform random positions (:func:`draw_stars`): a catalogue's own fluxes above
  the flux where it is complete, and below it a power law ``dN/dlog₁₀F ∝ F^−a`` down to a
  faintest flux, continuous with the catalogue's counts (:func:`population`), the number
  of faint stars scaled by one factor per exposure (:func:`fit_factor`) so that the
  simulated frame's robust σ (clipped MAD, as the network's normalisation) is the
  exposure's own within 2 %: on a crowded field the unresolved stars, not the noise, set
  that σ;
* the exposure's sky level, Poisson noise from its gain and Gaussian read noise
  (:func:`observe`).

All fluxes and levels are in ADU of the exposure, sizes in its pixels; positions are
0-based with pixel centres at integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.signal import fftconvolve

from pausdenoise.n2v.normalise import FrameStats, frame_statistics
from pausdenoise.psf import elliptical_radius2, moffat_fwhm_to_alpha

__all__ = ["OVERSAMPLE", "PAD", "PSF_RADIUS", "ExposureModel", "Population", "draw_stars",
           "faint_fluxes", "fit_factor", "noise_variance", "observe", "population",
           "render_stars", "simulate", "small_scale_sigma"]

#: Oversampling of the grid the stars are drawn on before summing to pixels.
OVERSAMPLE = 3
#: Margin (px) simulated around the frame, so that stars just outside it add their wings.
PAD = 24
#: Radius (px) of the drawn PSF.
PSF_RADIUS = 30


@dataclass
class ExposureModel:
    """What the simulation copies from one real exposure.

    Attributes
    ----------
    fwhm : float
        The PSF's Moffat FWHM before pixelisation, px.
    beta : float
        Its Moffat β.
    gain : float
        e⁻/ADU.
    read_noise_adu : float
        Read noise, ADU.
    sky : float
        Sky level, ADU.
    sigma : float
        The frame's robust σ, ADU (what :func:`fit_factor` matches).
    """

    fwhm: float
    beta: float
    gain: float
    read_noise_adu: float
    sky: float
    sigma: float
    #: Factor on the noise variance of the gain and read noise (1: as the headers say).
    variance_factor: float = 1.0
    #: The PSF's ellipticity (:func:`pausdenoise.psf.elliptical_radius2`); 0, 0: round.
    e1: float = 0.0
    e2: float = 0.0
    #: Saturation level of the exposure (ADU, sky included); pixels at or above it are
    #: masked in the real frames and left out here.
    saturate: float = math.inf


@dataclass
class Population:
    """Star fluxes (ADU): the catalogue's above ``complete``, a power law below it.

    Attributes
    ----------
    bright : ndarray
        The catalogue's fluxes at or above ``complete``, ADU.
    complete : float
        Flux above which the catalogue is taken as complete, ADU.
    fmin : float
        Faintest simulated star, ADU.
    slope : float
        ``a`` of ``dN/dlog₁₀F ∝ F^−a`` below ``complete``.
    n_faint : float
        Stars per frame between ``fmin`` and ``complete`` before an exposure's factor.
    """

    bright: np.ndarray
    complete: float
    fmin: float
    slope: float
    #: Stars per frame between ``fmin`` and ``complete`` before an exposure's own factor.
    n_faint: float


def population(fluxes: np.ndarray, complete: float, fmin: float, slope: float) -> Population:
    """Build the star population from a catalogue's fluxes.

    Parameters
    ----------
    fluxes : ndarray
        The catalogue's fluxes (ADU; non-positive ones are ignored).
    complete : float
        Flux above which the catalogue is taken as complete (ADU).
    fmin : float
        Faintest simulated star (ADU).
    slope : float
        ``a`` of ``dN/dlog₁₀F ∝ F^−a`` below ``complete``.

    Returns
    -------
    Population
        The bright stars and the power law, normalised to the catalogue's counts in the
        decade above ``complete``.
    """
    bright = np.asarray(fluxes, float)
    bright = bright[np.isfinite(bright) & (bright >= complete)]
    n_decade = np.sum(bright < 10 * complete)
    amp = n_decade / _dlogf_integral(complete, 10 * complete, slope)
    return Population(bright, complete, fmin, slope, amp * _dlogf_integral(fmin, complete, slope))


def _dlogf_integral(f1: float, f2: float, a: float) -> float:
    """Return ∫ F^−a dlog₁₀F from f1 to f2.

    Returns
    -------
    float
        The integral (stars per unit of the power law's amplitude).
    """
    if abs(a) < 1e-9:
        return math.log10(f2 / f1)
    return (f1 ** -a - f2 ** -a) / (a * math.log(10))


def faint_fluxes(pop: Population, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` fluxes (ADU) from the power law between ``fmin`` and ``complete``.

    Parameters
    ----------
    pop : Population
        The population.
    n : int
        Stars.
    rng : numpy.random.Generator
        Random numbers.

    Returns
    -------
    ndarray
        Fluxes, ADU.
    """
    u = rng.random(n)
    if abs(pop.slope) < 1e-9:
        return pop.fmin * (pop.complete / pop.fmin) ** u
    lo, hi = pop.fmin ** -pop.slope, pop.complete ** -pop.slope
    return (lo + u * (hi - lo)) ** (-1.0 / pop.slope)


def render_stars(x: np.ndarray, y: np.ndarray, flux: np.ndarray, fwhm: float, beta: float,
                 shape: tuple[int, int], offset: tuple[float, float] = (0.0, 0.0),
                 e1: float = 0.0, e2: float = 0.0) -> np.ndarray:
    """Draw point sources through a Moffat PSF, integrated over the pixels.

    The sources are placed on a grid :data:`OVERSAMPLE` times finer than the pixels (their
    positions rounded to it) and the PSF is centred ``offset`` from each: two renders of
    one list with different offsets differ by exactly that shift of every source, as two
    exposures of a field registered to the nearest pixel do.

    Parameters
    ----------
    x, y : ndarray
        Positions, 0-based px (pixel centres at integers); sources up to :data:`PAD` px
        outside the frame add their wings.
    flux : ndarray
        Fluxes, ADU.
    fwhm : float
        Moffat FWHM before pixelisation, px.
    beta : float
        Moffat β.
    shape : (int, int)
        Frame shape (ny, nx).
    offset : (float, float)
        (dx, dy) added to every position, px, not rounded.
    e1, e2 : float
        The PSF's ellipticity (:func:`pausdenoise.psf.elliptical_radius2`; 0, 0: round).

    Returns
    -------
    ndarray of float64
        The noiseless frame without sky, ADU.
    """
    ny, nx = shape
    k = OVERSAMPLE
    fine = np.zeros(((ny + 2 * PAD) * k, (nx + 2 * PAD) * k))
    # fine cell (j, i) covers [i/k − 1/2, (i+1)/k − 1/2) + (−PAD) in frame px
    ix = np.floor((np.asarray(x) + PAD + 0.5) * k).astype(np.int64)
    iy = np.floor((np.asarray(y) + PAD + 0.5) * k).astype(np.int64)
    ok = (ix >= 0) & (ix < fine.shape[1]) & (iy >= 0) & (iy < fine.shape[0])
    np.add.at(fine, (iy[ok], ix[ok]), np.asarray(flux, float)[ok])
    r = PSF_RADIUS * k
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1] / k
    alpha = float(moffat_fwhm_to_alpha(fwhm, beta))
    xx, yy = xx - offset[0], yy - offset[1]
    psf = (1.0 + elliptical_radius2(xx, yy, e1, e2) / alpha ** 2) ** -beta
    img = fftconvolve(fine, psf / psf.sum(), mode="same")
    img = img.reshape(ny + 2 * PAD, k, nx + 2 * PAD, k).sum(axis=(1, 3))
    return np.clip(img[PAD:PAD + ny, PAD:PAD + nx], 0.0, None)


def simulate(pop: Population, exp: ExposureModel, factor: float, shape: tuple[int, int],
             rng: np.random.Generator) -> np.ndarray:
    """Simulate one field like ``exp``: noiseless, without sky, ADU.

    Parameters
    ----------
    pop : Population
        The stars.
    exp : ExposureModel
        The exposure copied.
    factor : float
        The exposure's factor on the faint stars' number.
    shape : (int, int)
        Frame shape.
    rng : numpy.random.Generator
        Random numbers.

    Returns
    -------
    ndarray
        The truth, ADU.
    """
    x, y, f = draw_stars(pop, factor, shape, rng)
    return render_stars(x, y, f, exp.fwhm, exp.beta, shape, e1=exp.e1, e2=exp.e2)


def draw_stars(pop: Population, factor: float, shape: tuple[int, int],
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one field's stars: uniform positions, the population's fluxes.

    Parameters
    ----------
    pop : Population
        The stars.
    factor : float
        The factor on the faint stars' number.
    shape : (int, int)
        Frame shape (ny, nx).
    rng : numpy.random.Generator
        Random numbers.

    Returns
    -------
    x, y, flux : ndarray
        0-based px (up to :data:`PAD` px outside the frame) and ADU.
    """
    f = np.concatenate([faint_fluxes(pop, rng.poisson(pop.n_faint * factor), rng),
                        rng.choice(pop.bright, rng.poisson(len(pop.bright)))])
    x = rng.uniform(-PAD, shape[1] + PAD - 1, f.size)
    y = rng.uniform(-PAD, shape[0] + PAD - 1, f.size)
    return x, y, f


def observe(truth: np.ndarray, exp: ExposureModel, rng: np.random.Generator) -> np.ndarray:
    """Draw a noisy exposure of ``truth``: sky, Poisson and read noise (Gaussian), ADU.

    Parameters
    ----------
    truth : ndarray
        Noiseless pixels without sky, ADU.
    exp : ExposureModel
        Sky, gain and read noise.
    rng : numpy.random.Generator
        Random numbers.

    Returns
    -------
    ndarray
        The exposure, ADU.
    """
    return truth + exp.sky + rng.normal(size=truth.shape) * np.sqrt(noise_variance(truth, exp))


def noise_variance(truth: np.ndarray, exp: ExposureModel) -> np.ndarray:
    """Return the per-pixel noise variance, ADU²: ``((truth + sky) / gain + RN²) · factor``.

    Parameters
    ----------
    truth : ndarray
        Noiseless pixels without sky, ADU.
    exp : ExposureModel
        Sky (ADU), gain (e⁻/ADU), read noise (ADU), the variance factor.

    Returns
    -------
    ndarray
        Variance, ADU².
    """
    return ((truth + exp.sky) / exp.gain + exp.read_noise_adu ** 2) * exp.variance_factor


def small_scale_sigma(image: np.ndarray, good: np.ndarray, mesh: int) -> float:
    """Return a frame's robust σ after its background on a ``mesh``-px mesh is taken out.

    The background: the median of each ``mesh × mesh`` block of good pixels, interpolated
    bilinearly between the blocks' centres. What is left is the scatter on scales below the
    mesh (noise, stars), without the field's large-scale light. (The detection engine's sky
    map also median-filters its boxes, which leaves more of that light in: 18.7 instead of
    11.5 ADU on the test's field of 10 ADU noise.)

    Parameters
    ----------
    image : ndarray (ny, nx)
        Pixels, ADU.
    good : ndarray of bool
        Usable pixels.
    mesh : int
        Block size, px (0: no background taken out).

    Returns
    -------
    float
        The clipped MAD σ (as :func:`~pausdenoise.n2v.normalise.frame_statistics`), ADU.
    """
    x = np.asarray(image, float)
    if mesh > 0:
        ny, nx = (x.shape[0] // mesh) * mesh, (x.shape[1] // mesh) * mesh
        blocks = np.where(good, x, np.nan)[:ny, :nx].reshape(ny // mesh, mesh, nx // mesh, mesh)
        with np.errstate(all="ignore"):
            med = np.nanmedian(blocks.transpose(0, 2, 1, 3).reshape(ny // mesh, nx // mesh, -1),
                               axis=2)
        med = np.where(np.isfinite(med), med, np.nanmedian(med))
        yc = (np.arange(x.shape[0]) + 0.5) / mesh - 0.5
        xc = (np.arange(x.shape[1]) + 0.5) / mesh - 0.5
        yy, xx = np.meshgrid(np.clip(yc, 0, med.shape[0] - 1), np.clip(xc, 0, med.shape[1] - 1),
                             indexing="ij")
        x = x - map_coordinates(med, [yy, xx], order=1)
    return frame_statistics(x, (~good).astype(np.uint8)).sigma


def fit_factor(pop: Population, exp: ExposureModel, shape: tuple[int, int],
               rng: np.random.Generator, iterations: int = 10, mesh: int = 0
               ) -> tuple[float, np.ndarray, FrameStats]:
    """Find the faint stars' factor that gives a simulated frame the exposure's robust σ.

    Parameters
    ----------
    pop : Population
        The stars.
    exp : ExposureModel
        The exposure (its ``sigma``: the target).
    shape : (int, int)
        Frame shape.
    rng : numpy.random.Generator
        Random numbers.
    iterations : int
        Bisection steps at most (stops within 2 %).
    mesh : int
        The σ compared is :func:`small_scale_sigma` on this mesh (0: the whole frame's
        robust σ); ``exp.sigma`` must be the same statistic of the real exposure.

    Returns
    -------
    factor : float
        The factor of the last simulated truth (the fitted one unless the bisection ran out
        of steps first).
    truth : ndarray
        The last simulated truth (ADU, without sky).
    stats : FrameStats
        Its noisy frame's statistics.
    """
    lo, hi, factor = 0.0, math.inf, 1.0
    for _ in range(iterations):
        used = factor
        truth = simulate(pop, exp, used, shape, rng)
        obs = observe(truth, exp, rng)
        stats = frame_statistics(obs)
        sig = small_scale_sigma(obs, truth + exp.sky < exp.saturate, mesh) if mesh else stats.sigma
        if abs(sig / exp.sigma - 1.0) < 0.02:
            break
        if sig < exp.sigma:
            lo = factor
            factor = 2.0 * factor if math.isinf(hi) else 0.5 * (factor + hi)
        else:
            hi = factor
            factor = 0.5 * (lo + factor)
    return used, truth, stats
