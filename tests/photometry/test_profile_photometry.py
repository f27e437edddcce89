"""Tests of the profile-weighted forced photometry (``flux_prof``) against GalSim truth.

Fields are rendered with the simulation's own GalSim profiles (bulge + disk Sérsic galaxies
truncated at 6 hlr, Moffat β=3 PSF truncated at 8 FWHM, pixel response), so the estimator
is checked against an independent renderer, not against its own mixture approximation.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pausdenoise.maskbits import MaskBit
from pausdenoise.photometry import OUTPUT_COLUMNS, PhotometryConfig, measure_frame
from pausdenoise.photometry.config import ProfFlag
from pausdenoise.photometry.profile import PROFILE_COLUMNS
from pausdenoise.psf import PsfEstimate
from pausdenoise.simulate.config import SimulationConfig
from pausdenoise.simulate.render import aperture_axes, galsim_psf, galsim_source, paus_theta_deg
from pausdenoise.stats import sigma68

galsim = pytest.importorskip("galsim")

SCALE = 0.265  # arcsec/px
FWHM_ARCSEC = 0.85
FWHM_PX = FWHM_ARCSEC / SCALE
GAIN = 2.0
SKY = 500.0  # ADU/px
PSF = PsfEstimate(fwhm_px=FWHM_PX, beta=3.0, n_stars=0, source="header")


def _catalogue(rng: np.random.Generator, n: int, size: int, pairs: int) -> pd.DataFrame:
    """Random galaxies and stars; the first ``2 * pairs`` rows are overlapping pairs."""
    x = rng.uniform(12, size - 12, n)
    y = rng.uniform(12, size - 12, n)
    for k in range(pairs):  # partner at 4-6 px from the first of the pair
        ang, sep = rng.uniform(0, 2 * np.pi), rng.uniform(4.0, 6.0)
        x[2 * k + 1] = np.clip(x[2 * k] + sep * np.cos(ang), 5, size - 6)
        y[2 * k + 1] = np.clip(y[2 * k] + sep * np.sin(ang), 5, size - 6)
    star = rng.random(n) < 0.25
    hlr = np.where(star, 0.0, rng.uniform(0.2, 0.8, n))
    q = np.where(star, 1.0, rng.uniform(0.4, 1.0, n))
    theta_pix = rng.uniform(-90, 90, n)
    a, b = aperture_axes(hlr, q, FWHM_ARCSEC, 1.5)
    return pd.DataFrame({
        "ref_id": np.arange(n, dtype=np.int64), "aperture_x": x, "aperture_y": y,
        "aperture_a": a, "aperture_b": b, "aperture_theta": paus_theta_deg(theta_pix),
        "profile_hlr": hlr, "profile_q": q,
        "profile_bulge_frac": np.where(star, 0.0, rng.uniform(0.0, 1.0, n)),
        "flux_true": 10 ** rng.uniform(3.3, 4.5, n), "is_star": star,
        "theta_pix_deg": theta_pix,
    })


def _render(cat: pd.DataFrame, size: int, fwhm_arcsec: float = FWHM_ARCSEC) -> np.ndarray:
    """Noiseless sky-free image (ADU) of the catalogue, drawn by GalSim (FFT, pixel response)."""
    cfg = SimulationConfig()
    psf = galsim_psf(fwhm_arcsec, cfg)
    img = galsim.ImageD(size, size, scale=SCALE)
    for r in cat.itertuples():
        row = SimpleNamespace(is_star=r.is_star, hlr_arcsec=r.profile_hlr, q=r.profile_q,
                              bulge_frac=r.profile_bulge_frac, theta_pix_deg=r.theta_pix_deg)
        obj = galsim_source(row, psf, r.flux_true, cfg)
        stamp = obj.drawImage(nx=64, ny=64, scale=SCALE, method="fft",
                              center=galsim.PositionD(r.aperture_x + 1, r.aperture_y + 1))
        overlap = stamp.bounds & img.bounds
        img[overlap] += stamp[overlap]
    return img.array.copy()


@pytest.fixture(scope="module")
def field():
    """A 200×200 px field: 30 sources (stars and bulge+disk galaxies), 5 overlapping pairs."""
    rng = np.random.default_rng(7)
    cat = _catalogue(rng, 30, 200, pairs=5)
    return cat, _render(cat, 200)


def _measure(image, cat, mask=None, psf=PSF, **cfg):
    config = PhotometryConfig(pixel_scale=SCALE, **cfg)
    return measure_frame(image, mask, cat, config, gain=GAIN, psf=psf)


def _isolated(cat: pd.DataFrame, n_pair_rows: int = 10) -> np.ndarray:
    """Rows farther than 15 px from every other source (and not in the pairs)."""
    xy = cat[["aperture_x", "aperture_y"]].to_numpy()
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    iso = d.min(axis=1) > 15
    iso[:n_pair_rows] = False
    return iso


def _kernel(image, cat, *, drop_profile=False, sky=0.0):
    """Run the profile kernel with the exact sky (``sky`` ADU/px) and unit sky variance."""
    from pausdenoise.photometry.apertures import _aperture_geometry
    from pausdenoise.photometry.profile import intrinsic_shapes, profile_fluxes, usable_pixels

    config = PhotometryConfig(pixel_scale=SCALE)
    x, y, a, b, theta = _aperture_geometry(cat, config)
    rows = cat.drop(columns=list(PROFILE_COLUMNS)) if drop_profile else cat
    *shapes, approx = intrinsic_shapes(rows, a, b, FWHM_PX, config)
    good, sat = usable_pixels(image, None, 0xFFFF, None)
    pixels = {"image": image.ravel(), "good": good.ravel(), "sat": sat.ravel(),
              "shape": image.shape}
    n = len(cat)
    res = profile_fluxes(pixels, x, y, theta, tuple(shapes), fwhm_px=FWHM_PX, beta=3.0,
                         sky=(np.full(n, sky), np.ones(n), np.zeros(n)), gain=GAIN,
                         config=config)
    return res, approx


def test_noiseless_field_recovers_total_flux(field):
    """Isolated sources within 0.5 %, members of overlapping pairs (joint fit) within 1 %."""
    cat, image = field
    res, approx = _kernel(image, cat)
    rel = res["flux"] / cat["flux_true"].to_numpy() - 1
    iso = _isolated(cat)
    assert iso.sum() >= 8 and not approx.any()
    assert np.abs(rel[iso]).max() < 0.005, rel[iso]
    assert np.all(res["group_size"][:10] >= 2)  # the pairs were fitted jointly
    assert np.abs(rel[:10]).max() < 0.01, rel[:10]
    assert np.abs(rel).max() < 0.01


def test_joint_fit_removes_neighbour_light(field):
    """Fitting a pair member alone (neighbour ignored) is biased high; jointly it is not."""
    cat, _ = field
    pair = cat.iloc[[0, 1]].reset_index(drop=True)
    single = cat.iloc[[0]].reset_index(drop=True)
    # render only the pair so no other source contributes
    img = _render(pair, 200)
    joint, _ = _kernel(img, pair)
    alone, _ = _kernel(img, single)
    f0 = pair["flux_true"].iloc[0]
    assert abs(joint["flux"][0] / f0 - 1) < 0.01
    assert alone["flux"][0] / f0 - 1 > 0.03


def _sparse_catalogue(seed: int) -> pd.DataFrame:
    """12 sources on a 3×3 grid of 60 px cells (3 cells hold a pair 5 px apart), so that
    the 30–45 px sky annuli see only sky."""
    rng = np.random.default_rng(seed)
    cat = _catalogue(rng, 12, 200, pairs=0)
    gx, gy = np.meshgrid([40.0, 100.0, 160.0], [40.0, 100.0, 160.0])
    x = np.concatenate([gx.ravel(), gx.ravel()[:3] + 5.0])
    y = np.concatenate([gy.ravel(), gy.ravel()[:3] + 1.5])
    return cat.assign(aperture_x=x + rng.uniform(-0.5, 0.5, 12),
                      aperture_y=y + rng.uniform(-0.5, 0.5, 12))


@pytest.fixture(scope="module")
def sparse():
    cat = _sparse_catalogue(3)
    return cat, _render(cat, 200)


def test_measure_frame_sparse_noiseless(sparse):
    """Through measure_frame (annulus sky): total flux within 0.5 % (pairs 1 %), flags 0."""
    cat, image = sparse
    out = _measure(image + SKY, cat)
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    rel = out["flux_prof"].to_numpy() / cat["flux_true"].to_numpy() - 1
    assert np.abs(rel[3:9]).max() < 0.005, rel
    assert np.abs(rel).max() < 0.01, rel
    assert (out["flags_prof"] == 0).all()
    assert np.allclose(out["psf_fwhm_px"], FWHM_PX)
    assert np.allclose(out["flux_prof_cal"], out["flux_prof"])  # zp = 1
    assert (out["flux_prof_err"] > 0).all()


def test_noise_bias_and_pull(sparse):
    """Sky + Poisson noise, 60 realisations: median bias ≈ 0 and pull σ68 = 1.00 ± 0.1."""
    cat, image = sparse
    truth = cat["flux_true"].to_numpy()
    rng = np.random.default_rng(11)
    pulls, rels = [], []
    for _ in range(60):
        noisy = rng.poisson((image + SKY) * GAIN) / GAIN
        out = _measure(noisy, cat)
        assert (out["flags_prof"] == 0).all()
        pulls.append((out["flux_prof"] - truth) / out["flux_prof_err"])
        rels.append(out["flux_prof"] / truth - 1)
    pulls, rels = np.concatenate(pulls), np.concatenate(rels)
    assert abs(sigma68(pulls) - 1.0) < 0.1, sigma68(pulls)
    assert abs(np.median(pulls)) < 0.1, np.median(pulls)
    assert abs(np.median(rels)) < 0.005, np.median(rels)


def test_masked_core_does_not_bias(sparse):
    """Masking (or NaN-ing) the 3×3 core of a galaxy and a star leaves flux_prof unbiased."""
    cat, image = sparse
    img = image + SKY
    mask = np.zeros(img.shape, np.uint8)
    nan_img = img.copy()
    for k in (4, 5):
        ix, iy = round(cat.aperture_x[k]), round(cat.aperture_y[k])
        mask[iy - 1:iy + 2, ix - 1:ix + 2] = MaskBit.COSMIC_RAY
        nan_img[iy - 1:iy + 2, ix - 1:ix + 2] = np.nan
    ref = _measure(img, cat)
    for out in (_measure(img, cat, mask=mask), _measure(nan_img, cat)):
        rel = out["flux_prof"] / ref["flux_prof"] - 1
        assert np.abs(rel).max() < 0.005, rel
        assert (out["flags"].to_numpy()[[4, 5]] != 0).all()  # the aperture flux is flagged
    masked = _measure(img, cat, mask=mask)
    assert (masked["flux_prof_err"][[4, 5]] > ref["flux_prof_err"][[4, 5]]).all()


def test_source_half_off_image_flagged_but_unbiased(sparse):
    """A source in the image corner (~3/4 off): analytic normalisation keeps the total flux."""
    cat, _ = sparse
    edge = cat.iloc[[3]].assign(aperture_x=-0.4, aperture_y=-0.4).reset_index(drop=True)
    img = _render(edge, 200)
    out = _measure(img + SKY, edge)
    assert abs(out["flux_prof"][0] / edge["flux_true"][0] - 1) < 0.01
    assert out["flags_prof"][0] == int(ProfFlag.LOW_WEIGHT)


def test_profile_less_catalogue_is_flagged_with_bounded_bias(field):
    """Without profile columns the profile comes from the aperture: flagged, |bias| < 10 %."""
    cat, image = field
    res, approx = _kernel(image, cat, drop_profile=True)
    assert approx.all()
    rel = res["flux"] / cat["flux_true"].to_numpy() - 1
    stars = cat["is_star"].to_numpy()
    assert np.abs(rel[stars]).max() < 0.005  # a point source is recovered exactly
    assert np.abs(rel).max() < 0.10, rel
    out = _measure(image + SKY, cat.drop(columns=list(PROFILE_COLUMNS)))
    assert (out["flags_prof"] & int(ProfFlag.APPROX_PROFILE)).all()


def test_no_psf_leaves_aperture_columns_unchanged(sparse):
    """psf=None or profile=False: profile columns NaN + NO_PSF; aperture columns identical."""
    cat, image = sparse
    with_psf = _measure(image + SKY, cat)
    for out in (_measure(image + SKY, cat, psf=None),
                _measure(image + SKY, cat, profile=False)):
        assert out["flux_prof"].isna().all() and out["flux_prof_err"].isna().all()
        assert (out["flags_prof"] == int(ProfFlag.NO_PSF)).all()
        assert out[["aper_frac", "aper_neighbours", "aper_neighbours_err"]].isna().all().all()
        aper = [c for c in OUTPUT_COLUMNS if c not in
                ("flux_prof", "flux_prof_err", "flux_prof_cal", "flux_prof_cal_err",
                 "flags_prof", "psf_fwhm_px", "aper_frac", "aper_neighbours",
                 "aper_neighbours_err")]
        pd.testing.assert_frame_equal(out[aper], with_psf[aper])


def test_bad_rows_flagged(sparse):
    """NaN shape and a centre off the image are flagged, the other rows unaffected."""
    cat, image = sparse
    bad = cat.copy()
    bad.loc[0, "profile_q"] = 1.5
    bad.loc[1, "aperture_x"] = -30.0
    out = _measure(image + SKY, bad)
    ref = _measure(image + SKY, cat)
    assert out["flags_prof"][0] & int(ProfFlag.BAD_INPUT) and np.isnan(out["flux_prof"][0])
    assert out["flags_prof"][1] & int(ProfFlag.OFF_IMAGE)
    assert np.allclose(out["flux_prof"][3:9], ref["flux_prof"][3:9], rtol=1e-9)


def _write_store(path, image, attrs, denoised=None):
    from pausdenoise import store

    arrays = {"image": image.astype(np.float32), "mask": np.zeros(image.shape, np.uint8)}
    if denoised is not None:
        arrays["denoised"] = denoised.astype(np.float32)
    fid = store.frame_id(1000, 3)
    store.write_frame(path, fid, arrays, {"expnum": 1000, "ccd": 3, "band": "NB455",
                                          "gain": GAIN, "zp": 2.0, "zp_err": 0.0, **attrs})
    return fid


def test_store_frame_takes_psf_from_header_for_both_kinds(sparse, tmp_path):
    """measure_store_frame: PSF from the 'seeing' attribute; the denoised kind uses it too."""
    from pausdenoise.photometry.driver import measure_store_frame

    cat, image = sparse
    img = image + SKY
    fid = _write_store(tmp_path / "s.zarr", img, {"seeing": FWHM_ARCSEC}, denoised=img)
    config = PhotometryConfig(pixel_scale=SCALE)
    raw = measure_store_frame(tmp_path / "s.zarr", fid, cat, config, kind="raw")
    den = measure_store_frame(tmp_path / "s.zarr", fid, cat, config, kind="denoised")
    for out in (raw, den):
        assert np.allclose(out["psf_fwhm_px"], FWHM_PX)
        rel = out["flux_prof"].to_numpy() / cat["flux_true"].to_numpy() - 1
        assert np.abs(rel).max() < 0.01
        assert np.allclose(out["flux_prof_cal"], 2.0 * out["flux_prof"])


def test_store_frame_without_psf_keeps_aperture_columns(sparse, tmp_path):
    """No PSF in the header and no star in a pure-noise frame: profile NaN + NO_PSF."""
    from pausdenoise.photometry.driver import measure_store_frame

    cat, _ = sparse
    noise = np.random.default_rng(5).normal(SKY, 10.0, (200, 200))
    fid = _write_store(tmp_path / "n.zarr", noise, {})
    out = measure_store_frame(tmp_path / "n.zarr", fid, cat, PhotometryConfig(pixel_scale=SCALE))
    assert out["flux_prof"].isna().all()
    assert (out["flags_prof"] == int(ProfFlag.NO_PSF)).all()
    assert np.isfinite(out["flux"]).all()


def test_saturated_core_left_out_and_flagged(sparse):
    """Pixels at/above the saturation level are left out: total flux still within 1 %."""
    cat, _ = sparse
    star = cat[cat["is_star"]].iloc[[0]].assign(flux_true=3e5).reset_index(drop=True)
    img = _render(star, 200) + SKY
    level = SKY + 0.3 * (img.max() - SKY)
    config = PhotometryConfig(pixel_scale=SCALE)
    out = measure_frame(img, None, star, config, gain=GAIN, psf=PSF, saturate=level)
    assert abs(out["flux_prof"][0] / 3e5 - 1) < 0.01
    assert out["flags_prof"][0] & int(ProfFlag.SATURATED)
    assert out["flags"][0] != 0  # the aperture flux is flagged SATURATED too


def test_rows_without_profile_values_use_the_aperture():
    """Only rows with NaN profile columns are approximate; a star's aperture gives hlr 0."""
    from pausdenoise.photometry.profile import intrinsic_shapes

    config = PhotometryConfig(pixel_scale=SCALE)
    half = FWHM_PX / 2
    a = np.array([1.5 * half, 1.5 * np.hypot(4.0, half), 3.0])
    b = np.array([1.5 * half, 1.5 * np.hypot(1.0, half), 3.0])
    rows = pd.DataFrame({"profile_hlr": [np.nan, np.nan, 0.5], "profile_q": [np.nan, 1, 0.5],
                         "profile_bulge_frac": [np.nan, 0.0, 0.2]})
    hlr, q, frac, approx = intrinsic_shapes(rows, a, b, FWHM_PX, config)
    assert approx.tolist() == [True, True, False]
    assert hlr[0] == pytest.approx(0.0, abs=1e-6) and q[0] == 1.0
    assert hlr[1] == pytest.approx(2.0) and q[1] == pytest.approx(0.25)
    assert hlr[2] == pytest.approx(0.5 / SCALE) and q[2] == 0.5 and frac[2] == 0.2


def test_a_member_without_sky_does_not_blank_its_overlap_group(field):
    """A chain of overlapping sources in which one member has no annulus sky (NaN, as a
    source whose annulus is all masked): the others keep their joint-fit fluxes (computed
    with that member's light modelled on the frame's median sky), and the member is
    flagged, not silently given a NaN that the joint solve spreads to the whole group."""
    from pausdenoise.photometry.apertures import _aperture_geometry
    from pausdenoise.photometry.profile import intrinsic_shapes, profile_fluxes, usable_pixels

    cat, _ = field
    chain = cat.iloc[:5].reset_index(drop=True)
    chain = chain.assign(aperture_x=60.0 + 5.0 * np.arange(5), aperture_y=100.0)
    img = _render(chain, 200) + 10.0
    config = PhotometryConfig(pixel_scale=SCALE)
    x, y, a, b, theta = _aperture_geometry(chain, config)
    shapes = tuple(intrinsic_shapes(chain, a, b, FWHM_PX, config)[:3])
    good, sat = usable_pixels(img, None, 0xFFFF, None)
    pixels = {"image": img.ravel(), "good": good.ravel(), "sat": sat.ravel(),
              "shape": img.shape}

    def fluxes(sky_b):
        return profile_fluxes(pixels, x, y, theta, shapes, fwhm_px=FWHM_PX, beta=3.0,
                              sky=(sky_b, np.ones(5), np.zeros(5)), gain=GAIN, config=config)

    ref = fluxes(np.full(5, 10.0))
    assert (ref["group_size"] == 5).all() and not ref["sky_filled"].any()
    got = fluxes(np.array([10.0, 10.0, np.nan, 10.0, 10.0]))
    assert np.isfinite(got["flux"]).all() and np.isfinite(got["flux_err"]).all()
    np.testing.assert_allclose(got["flux"], ref["flux"], rtol=1e-9)
    np.testing.assert_array_equal(got["sky_filled"], [False, False, True, False, False])
    np.testing.assert_allclose(ref["flux"], chain["flux_true"], rtol=0.02)
    # measure_frame: a NaN sky row is flagged FEW_ANNULUS in flags_prof
    from pausdenoise.photometry.measure import _profile_flags

    st = {"bkg_n": np.full(5, 500)}
    flags = _profile_flags(got, np.zeros(5, bool), x, y, st, img.shape, config)
    few = (flags & ProfFlag.FEW_ANNULUS) != 0
    np.testing.assert_array_equal(few, [False, False, True, False, False])


def _own_aperture_sums(image: np.ndarray, cat: pd.DataFrame) -> np.ndarray:
    """Aperture sums (ADU) of a noiseless sky-free image at the catalogue's apertures."""
    from pausdenoise.photometry.apertures import _aperture_geometry, aperture_sums

    return aperture_sums(image, *_aperture_geometry(cat, PhotometryConfig(pixel_scale=SCALE)))[
        "aper_sum"]


def test_aperture_share_is_the_light_galsim_puts_in_the_aperture(sparse):
    """aper_frac × the true total flux is the noiseless aperture sum of GalSim's rendering
    (isolated stars and bulge+disk galaxies, to 0.3 %), and every share is in (0, 1)."""
    cat, image = sparse
    out = _measure(image + SKY, cat)
    frac = out["aper_frac"].to_numpy()
    assert ((frac > 0.3) & (frac < 1.0)).all(), frac
    rel = _own_aperture_sums(image, cat) / (frac * cat["flux_true"].to_numpy()) - 1
    assert np.abs(rel[3:9]).max() < 0.003, rel


def test_aperture_correction_takes_out_the_seeing(sparse):
    """The same sources in 0.85″ and 1.30″ seeing: their aperture sums differ by up to
    tens of per cent, the sums divided by each frame's aperture share by < 0.5 %."""
    cat, sharp = sparse
    blurred = _render(cat, 200, fwhm_arcsec=1.30)
    wide_psf = PsfEstimate(fwhm_px=1.30 / SCALE, beta=3.0, n_stars=0, source="header")
    f_sharp, f_blur = _own_aperture_sums(sharp, cat), _own_aperture_sums(blurred, cat)
    t_sharp = _measure(sharp + SKY, cat)["aper_frac"].to_numpy()
    t_blur = _measure(blurred + SKY, cat, psf=wide_psf)["aper_frac"].to_numpy()
    iso = slice(3, 9)
    assert (f_blur / f_sharp)[iso].min() < 0.85
    np.testing.assert_allclose((f_blur / t_blur)[iso], (f_sharp / t_sharp)[iso], rtol=0.005)


def test_neighbours_light_leaves_each_aperture_its_own_light(field):
    """A crowded noiseless field (5 pairs 4–6 px apart): the aperture sums hold the
    neighbours' light (up to tens of per cent); minus ``aper_neighbours`` they are each
    source's own light in its aperture (aper_frac × the true flux) to 1 %."""
    cat, image = field
    out = _measure(image + SKY, cat)
    own = out["aper_frac"].to_numpy() * cat["flux_true"].to_numpy()
    summed = _own_aperture_sums(image, cat)
    pairs = slice(0, 10)
    assert (summed / own - 1)[pairs].max() > 0.1
    rel = (summed - out["aper_neighbours"].to_numpy()) / own - 1
    assert np.abs(rel[pairs]).max() < 0.01, rel
    assert np.abs(rel).max() < 0.01, rel
    assert (out["aper_neighbours_err"] > 0).any()
