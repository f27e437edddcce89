"""Cosmic-ray hits found at ingest from their sharp edges: the simulated survey's hits on
frames with stars and galaxies (completeness against the hits put in, no star or galaxy
core taken for one), masked pixels, bad arguments, and real SAAO exposures, where each hit
found must be missing from the other exposures of the field
(``tests/test_bench_cosmic_rays.py``); ingest masks them in frames without a mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from noise_frames import scene_e
from scipy import ndimage

from pausdenoise import store as st
from pausdenoise.config import load_config
from pausdenoise.ingest import IngestConfig, ingest
from pausdenoise.ingest import cosmic_rays as cr
from pausdenoise.ingest.config import CosmicRayConfig
from pausdenoise.ingest.cosmic_rays import detect_cosmic_rays
from pausdenoise.maskbits import MaskBit
from pausdenoise.simulate.config import SimulationConfig
from pausdenoise.simulate.render import add_cosmic_rays

ROOT = Path(__file__).resolve().parents[2]
GAIN, RN_E, SKY_E = 1.5, 6.0, 400.0
N = 384


def _stars_e(n: int, seed: int, fwhm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian stars of FWHM in ``fwhm`` (px), peaks 10²–3·10⁴ e⁻; returns (scene, centres)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    out, centres = np.zeros((n, n)), []
    for _ in range(60):
        x0, y0 = rng.uniform(4, n - 4, 2)
        s = rng.uniform(*fwhm) / 2.3548
        r2 = (xx - x0) ** 2 + (yy - y0) ** 2
        out += 10 ** rng.uniform(2.0, 4.5) * np.exp(-r2 / (2 * s * s))
        centres.append((y0, x0))
    return out, np.array(centres)


def _frame(seed: int, fwhm: tuple[float, float] = (2.5, 4.0), n_hits: float = 40.0):
    """A frame in ADU with stars, galaxies and the simulated survey's hits, and the hit mask."""
    stars, centres = _stars_e(N, seed, fwhm)
    scene = stars + scene_e(N, seed)
    rng = np.random.default_rng(seed)
    electrons = rng.poisson(scene + SKY_E) + rng.normal(0.0, RN_E, scene.shape)
    truth_mask = np.zeros((N, N), dtype=np.uint8)
    add_cosmic_rays(electrons, truth_mask, rng, SimulationConfig(n_cosmic_rays=n_hits))
    return (electrons / GAIN).astype(np.float32), truth_mask != 0, centres, scene


def test_finds_the_hits_and_leaves_stars_and_galaxies():
    """≥ 97 % of the hit pixels and every hit found over three frames; no pixel within
    1 FWHM of a star centre or on a star or galaxy core (scene > 20 σ of the sky) flagged,
    4 px or more inside the frame and 3 px or more from a hit (a hit's rim is masked with
    it)."""
    found_px = true_px = hits_seen = hits_total = false_px = 0
    for seed in (1, 2, 3):
        image, truth, centres, scene = _frame(seed)
        res = detect_cosmic_rays(image, None, GAIN, RN_E)
        found_px += int((res.hits & truth).sum())
        true_px += int(truth.sum())
        labels, n = ndimage.label(truth, structure=np.ones((3, 3)))
        hits_total += n
        hits_seen += len(set(np.unique(labels[res.hits & truth])) - {0})
        near_star = np.zeros_like(truth)
        for y0, x0 in centres:
            y, x = round(y0), round(x0)
            near_star[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4] = True
        core = scene > 20 * np.sqrt(SKY_E + RN_E**2)
        inner = np.zeros_like(truth)
        inner[4:-4, 4:-4] = True  # a star centred on the edge is half a star
        halo = ndimage.binary_dilation(truth, np.ones((3, 3)), iterations=2)  # a hit's rim
        false_px += int((res.hits & ~halo & (near_star | core) & inner).sum())
        assert res.iterations >= 2 and res.n_pixels == int(res.hits.sum())
    assert found_px >= 0.97 * true_px, (found_px, true_px)
    assert hits_seen == hits_total
    assert false_px == 0


def test_few_false_hits_on_the_sky():
    """Frames without hits: fewer than 1 pixel in 10⁴ flagged (noise peaks on the sky)."""
    flagged = 0
    for seed in (7, 8, 9):
        image, truth, _, _ = _frame(seed, n_hits=0.0)
        assert not truth.any()
        flagged += detect_cosmic_rays(image, None, GAIN, RN_E).n_pixels
    assert flagged < 3 * N * N / 1e4


def test_masked_and_nonfinite_pixels_are_filled_never_reported():
    """Hits under an input mask are not reported (they are masked already), NaN pixels do not
    spread, and the hits elsewhere are still found."""
    image, truth, _, _ = _frame(4)
    mask = np.zeros(image.shape, dtype=np.uint8)
    labels, n = ndimage.label(truth, structure=np.ones((3, 3)))
    masked = np.isin(labels, np.arange(1, n // 2 + 1))
    mask[ndimage.binary_dilation(masked, iterations=1)] = 1
    image = image.copy()
    image[100:104, 50:60] = np.nan
    res = detect_cosmic_rays(image, mask, GAIN, RN_E)
    assert not (res.hits & (mask != 0)).any()
    assert not res.hits[98:106, 48:62].any()
    rest = truth & ~masked
    assert (res.hits & rest).sum() >= 0.97 * rest.sum()


def test_later_passes_near_the_hits_equal_passes_over_the_whole_frame():
    """Passes after the first look only around the hits just filled; the hits are those that
    passes over the whole frame find."""
    image, _, _, _ = _frame(5, n_hits=120.0)
    config = CosmicRayConfig()
    k = cr.neighbour_ratio(cr.DEFAULT_STAR_FWHM_PX)
    bad = np.zeros(image.shape, dtype=bool)
    full = np.zeros(image.shape, dtype=bool)
    for _ in range(config.iterations):
        new = cr._pass(cr._fill(image, bad | full, float(np.median(image))), GAIN, RN_E, config,
                       k) & ~full
        if not new.any():
            break
        full |= new
    res = detect_cosmic_rays(image, None, GAIN, RN_E, config)
    assert res.iterations >= 3
    assert np.array_equal(res.hits, full)


def test_a_masked_out_frame_has_no_hits():
    image, _, _, _ = _frame(9)
    res = detect_cosmic_rays(image, np.ones(image.shape, dtype=np.uint8), GAIN, RN_E)
    assert res.n_pixels == res.n_hits == res.iterations == 0 and not res.hits.any()


@pytest.mark.parametrize(("args", "match"), [
    ((np.zeros((8, 8)), None, 0.0, 5.0), "gain"),
    ((np.zeros((8, 8)), None, 1.0, -1.0), "read noise"),
    ((np.zeros((8, 8)), np.zeros((4, 4)), 1.0, 5.0), "mask shape"),
    ((np.zeros(8), None, 1.0, 5.0), "2-D"),
])
def test_bad_arguments_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        detect_cosmic_rays(*args)


def test_ingest_masks_hits_in_frames_without_a_mask(real_data_dir, two_saao_frames, tmp_path):
    """Generic frames without a mask get their hits masked COSMIC_RAY and say so; 'never'
    keeps the mask empty; the frames are ingested again when the setting changes."""
    store = tmp_path / "s.zarr"
    cfg = load_config(ROOT / "configs" / "saao.yaml").ingest.model_copy(
        update={"measure_psf": False})
    report = ingest(two_saao_frames, store, cfg)
    assert report.exit_status == 0, report.summary()
    table = st.exposure_table(store)
    assert set(table["cosmic_rays"]) == {"detected"}
    assert (table["n_cosmic_rays"] > 0).all()
    for frame, n_px in zip(table["frame"], table["n_cosmic_ray_px"], strict=True):
        mask = st.open_frame(store, frame, "mask").compute()
        assert int(np.count_nonzero(mask & MaskBit.COSMIC_RAY)) == n_px > 0
    assert "cosmic rays: " in report.summary() and "masked in 2 frame(s)" in report.summary()
    assert sorted(report.cosmic_rays) == sorted(table["frame"])
    assert ingest(two_saao_frames, store, cfg).ingested == []
    never = cfg.model_copy(update={"cosmic_rays": CosmicRayConfig(detect="never")})
    again = ingest(two_saao_frames, store, never)
    assert len(again.ingested) == 2
    table = st.exposure_table(store)
    assert set(table["cosmic_rays"]) == {"off"} and (table["n_cosmic_ray_px"] == 0).all()


def test_frames_with_a_mask_are_searched_only_when_asked(tmp_path):
    """A frame with its own mask keeps it ('input mask', nothing searched) unless
    ``detect: always``, which adds the hits to the input mask's bad pixels."""
    image, truth, _, _ = _frame(6)
    mask = np.zeros(image.shape, dtype=np.int16)
    mask[:, 200] = 4  # a bad column
    h = fits.Header()
    h["EXPNUM"], h["CCDNUM"], h["FILTER"], h["EXPTIME"] = 1, 1, "r", 30.0
    h["ZP"], h["ZPERR"], h["GAIN"], h["RDNOISE"] = 1.0, 0.01, GAIN, RN_E
    folder = tmp_path / "in"
    folder.mkdir()
    fits.HDUList([fits.PrimaryHDU(image, h), fits.ImageHDU(mask, name="MASK")]).writeto(
        folder / "f1.fits")
    base = IngestConfig(layout="generic", chunks=(128, 128), measure_psf=False, mask_hdu="MASK")
    for detect, state in (("auto", "input mask"), ("always", "detected")):
        store = tmp_path / f"{detect}.zarr"
        cfg = base.model_copy(update={"cosmic_rays": CosmicRayConfig(detect=detect)})
        assert ingest(folder, store, cfg).exit_status == 0
        (row,) = st.exposure_table(store).to_dict("records")
        stored = st.open_frame(store, row["frame"], "mask").compute()
        assert row["cosmic_rays"] == state
        assert (stored[:, 200] & MaskBit.OTHER).all()
        hits = (stored & MaskBit.COSMIC_RAY) != 0
        assert row["n_cosmic_ray_px"] == int(hits.sum())
        if detect == "auto":
            assert not hits.any()
        else:
            rest = truth.copy()
            rest[:, 199:202] = False
            assert (hits & rest).sum() >= 0.97 * rest.sum() and not hits[:, 200].any()
