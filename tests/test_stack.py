"""Tests of pausdenoise.stack: noise reduction, flux conservation under shifts, masks, weights."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS
from pydantic import ValidationError

from pausdenoise.stack import StackConfig, frame_offset, reference_grid, stack_frames

SCALE_DEG = 0.265 / 3600.0
RA0, DEC0 = 150.0, 2.0


def make_wcs(crpix=(32.5, 32.5), rot_deg=0.0, scale=1.0) -> WCS:
    """TAN WCS at (RA0, DEC0); ``crpix`` is FITS 1-based (x, y)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.crpix = list(crpix)
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    w.wcs.cd = SCALE_DEG * scale * np.array([[-c, s], [s, c]])
    return w


def gaussian(shape, y0, x0, flux, sigma=1.6) -> np.ndarray:
    """Pixel-integrated-enough Gaussian (σ ≥ 1.5 px: sampling error ≪ 1e-3)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    g = np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * sigma**2))
    return flux * g / (2 * np.pi * sigma**2)


def aperture_sum(img, y0, x0, r=10.0) -> float:
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    return float(img[(yy - y0) ** 2 + (xx - x0) ** 2 <= r**2].sum())


# --------------------------------------------------------------------------- config


def test_config_forbids_unknown_fields():
    with pytest.raises(ValidationError):
        StackConfig(combine="median")
    with pytest.raises(ValidationError):
        StackConfig(bogus=1)


# --------------------------------------------------------------------------- noise


def test_noise_drops_as_sqrt_n():
    rng = np.random.default_rng(1)
    n, shape, sigma = 16, (128, 128), 5.0
    w = make_wcs((64.5, 64.5))
    frames = [100.0 + rng.normal(0, sigma, shape) for _ in range(n)]
    stack, wmap = stack_frames(frames, None, None, [w] * n, w, shape)
    assert abs(stack.std() / (sigma / np.sqrt(n)) - 1) < 0.05
    assert abs(stack.mean()) < 5 * sigma / np.sqrt(n * stack.size)  # sky subtracted
    # Weight map = inverse variance of the stack: N / σ².
    assert np.allclose(wmap, n / sigma**2, rtol=0.05)


def test_clipped_noise_and_outlier_rejection():
    rng = np.random.default_rng(2)
    n, shape, sigma = 9, (64, 64), 3.0
    w = make_wcs()
    frames = [rng.normal(0, sigma, shape) for _ in range(n)]
    frames[3][10, 20] += 1000.0  # an unmasked cosmic ray
    cfg = StackConfig(combine="clipped")
    stack, wmap = stack_frames(frames, None, None, [w] * n, w, shape, cfg)
    assert abs(stack[10, 20]) < 4 * sigma / np.sqrt(n - 1)
    assert wmap[10, 20] < wmap.max()
    # Clipping at 3σ barely changes pure noise.
    assert abs(stack.std() / (sigma / np.sqrt(n)) - 1) < 0.06
    mean_stack, _ = stack_frames(frames, None, None, [w] * n, w, shape)
    assert abs(mean_stack[10, 20]) > 50


# --------------------------------------------------------------------------- flux


@pytest.mark.parametrize(
    "shifts",
    [
        [(0, 0), (3, -2), (-5, 7), (1, 1)],  # integer
        [(0, 0), (0.37, -0.81), (2.5, 1.25), (-3.3, 0.6)],  # sub-pixel
    ],
)
@pytest.mark.parametrize("resampling", ["shift", "interp"])
def test_shifted_frames_restore_flux(shifts, resampling):
    shape, flux = (64, 64), 5000.0
    ref = make_wcs((32.5, 32.5))
    src = (30.3, 33.7)  # (y, x) on the reference grid
    frames, wcss = [], []
    for dy, dx in shifts:
        # frame pixel = ref pixel + (dy, dx)  <=>  CRPIX moves by (dx, dy)
        wcss.append(make_wcs((32.5 + dx, 32.5 + dy)))
        frames.append(gaussian(shape, src[0] + dy, src[1] + dx, flux))
    cfg = StackConfig(resampling=resampling, subtract_sky=False)
    ivars = [np.ones(shape)] * len(frames)
    stack, wmap = stack_frames(frames, None, ivars, wcss, ref, shape, cfg)
    assert wmap[round(src[0]), round(src[1])] > 0
    assert abs(aperture_sum(stack, *src) / flux - 1) < 0.01
    for (dy, dx), w in zip(shifts, wcss, strict=True):
        off = frame_offset(w, ref, shape)
        assert off is not None and np.allclose(off, (dy, dx), atol=1e-6)


def test_integer_shift_is_exact():
    rng = np.random.default_rng(3)
    shape = (32, 40)
    ref = make_wcs((20.5, 16.5))
    base = rng.normal(0, 1, (32 + 8, 40 + 8))
    # frame pixel = ref pixel + (3, -2): f1[y, x] = f0[y - 3, x + 2].
    f0 = base[4:36, 4:44]
    f1 = base[4 - 3 : 36 - 3, 4 + 2 : 44 + 2]
    w1 = make_wcs((20.5 - 2, 16.5 + 3))
    cfg = StackConfig(subtract_sky=False)
    s1, wm = stack_frames([f1], None, None, [w1], ref, shape, cfg)
    covered = wm > 0
    assert np.array_equal(s1[covered], f0[covered].astype(np.float32))
    assert covered.sum() == (32 - 3) * (40 - 2)


def test_rotated_and_scaled_frames_interp_flux():
    shape, flux = (80, 80), 8000.0
    ref = make_wcs((40.5, 40.5))
    src = (38.2, 41.6)
    ra, dec = ref.all_pix2world([[src[1], src[0]]], 0)[0]
    frames, wcss = [], []
    for rot, scale, crpix in [(0.0, 1.0, (40.5, 40.5)), (7.0, 1.05, (42.0, 39.3))]:
        w = make_wcs(crpix, rot, scale)
        x, y = w.all_world2pix([[ra, dec]], 0)[0]
        # The same source flux; its width in pixels shrinks with larger pixels.
        frames.append(gaussian(shape, y, x, flux, sigma=2.0 / scale))
        wcss.append(w)
    assert frame_offset(wcss[1], ref, shape) is None
    with pytest.raises(ValueError, match="translation"):
        stack_frames(frames, None, None, wcss, ref, shape, StackConfig(resampling="shift"))
    cfg = StackConfig(resampling="auto", subtract_sky=False)
    ivars = [np.ones(shape)] * 2
    stack, _ = stack_frames(frames[1:], None, ivars[1:], wcss[1:], ref, shape, cfg)
    assert abs(aperture_sum(stack, *src, r=12) / flux - 1) < 0.01


def test_zero_points_normalise_flux():
    shape = (48, 48)
    w = make_wcs((24.5, 24.5))
    truth = gaussian(shape, 24, 24, 1000.0, 2.0)  # calibrated at zp_ref = 1
    zps = [1.0, 2.0, 0.5]
    frames = [truth / zp for zp in zps]  # f · ZP = calibrated flux
    cfg = StackConfig(subtract_sky=False)
    stack, _ = stack_frames(
        frames, None, [np.ones(shape)] * 3, [w] * 3, w, shape, cfg, zps=zps, zp_ref=1.0
    )
    np.testing.assert_allclose(stack, truth, rtol=1e-6, atol=1e-9)


def test_reference_grid():
    ws = [make_wcs((10.5, 10.5)), make_wcs((12.5, 9.5))]
    w, shape = reference_grid(ws, [(20, 30), (25, 35)], StackConfig(reference=1))
    assert shape == (25, 35) and np.allclose(w.wcs.crpix, ws[1].wcs.crpix)


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("resampling", ["shift", "interp"])
@pytest.mark.parametrize("combine", ["mean", "clipped"])
def test_masked_pixels_never_contribute(resampling, combine):
    rng = np.random.default_rng(4)
    shape, n = (40, 40), 4
    ref = make_wcs((20.5, 20.5))
    shifts = [(0, 0), (0.5, 0.25), (1, -2), (-0.3, 0.7)]
    wcss = [make_wcs((20.5 + dx, 20.5 + dy)) for dy, dx in shifts]
    frames = [rng.normal(0, 1, shape) for _ in range(n)]
    masks = [np.zeros(shape, np.uint8) for _ in range(n)]
    for k in range(n):
        bad = rng.random(shape) < 0.05
        masks[k][bad] = 2
        frames[k][bad] = 1e9  # would dominate anything it touched
        frames[k][5, :] = np.nan  # non-finite row, unmasked: also never used
    cfg = StackConfig(resampling=resampling, combine=combine)
    stack, wmap = stack_frames(frames, masks, None, wcss, ref, shape, cfg)
    assert np.all(np.isfinite(stack)) and np.abs(stack).max() < 100
    # A reference pixel whose footprint is masked in every frame has zero weight.
    for k, (dy, dx) in enumerate(shifts):
        y, x = int(np.floor(30 + dy)), int(np.floor(30 + dx))
        masks[k][y : y + 2, x : x + 2] = 1
    stack, wmap = stack_frames(frames, masks, None, wcss, ref, shape, cfg)
    assert wmap[30, 30] == 0 and stack[30, 30] == 0


def test_leave_one_out_excludes_frame():
    shape, n = (32, 32), 3
    w = make_wcs((16.5, 16.5))
    frames = [np.full(shape, float(k + 1)) for k in range(n)]
    cfg = StackConfig(subtract_sky=False, weighting="uniform")
    s, _ = stack_frames(frames, None, None, [w] * n, w, shape, cfg, exclude=1)
    np.testing.assert_allclose(s, 2.0)  # mean of 1 and 3
    s, _ = stack_frames(frames, None, None, [w] * n, w, shape, cfg, exclude=[0, 1])
    np.testing.assert_allclose(s, 3.0)
    with pytest.raises(ValueError, match="excluded"):
        stack_frames(frames, None, None, [w] * n, w, shape, cfg, exclude=[0, 1, 2])


# --------------------------------------------------------------------------- weights


def test_inverse_variance_weights_beat_uniform():
    rng = np.random.default_rng(5)
    shape = (128, 128)
    sigmas = [1.0, 1.0, 4.0, 6.0]
    w = make_wcs((64.5, 64.5))
    frames = [rng.normal(0, s, shape) for s in sigmas]
    ws = [w] * len(frames)
    s_w, _ = stack_frames(frames, None, None, ws, w, shape)
    s_u, _ = stack_frames(frames, None, None, ws, w, shape, StackConfig(weighting="uniform"))
    expected = 1 / np.sqrt(sum(1 / s**2 for s in sigmas))
    assert s_w.var() < 0.5 * s_u.var()
    assert abs(s_w.std() / expected - 1) < 0.05
    # Explicit ivar maps give the same answer as the robust-σ weights.
    ivars = [np.full(shape, 1 / s**2) for s in sigmas]
    s_i, wmap_i = stack_frames(frames, None, ivars, ws, w, shape)
    assert abs(s_i.std() / expected - 1) < 0.05
    np.testing.assert_allclose(wmap_i, sum(1 / s**2 for s in sigmas), rtol=1e-5)


def test_reproject_matches_interp():
    pytest.importorskip("reproject")
    shape, flux = (64, 64), 5000.0
    ref = make_wcs((32.5, 32.5))
    w = make_wcs((33.2, 31.7), rot_deg=3.0)
    ra, dec = ref.all_pix2world([[33.0, 30.0]], 0)[0]
    x, y = w.all_world2pix([[ra, dec]], 0)[0]
    frame = gaussian(shape, y, x, flux, sigma=2.0)
    mask = np.zeros(shape, np.uint8)
    mask[10, 12] = 1
    cfg_i = StackConfig(resampling="interp", subtract_sky=False)
    cfg_r = StackConfig(resampling="reproject", subtract_sky=False)
    ivar = [np.ones(shape)]
    s_i, w_i = stack_frames([frame], [mask], ivar, [w], ref, shape, cfg_i)
    s_r, w_r = stack_frames([frame], [mask], ivar, [w], ref, shape, cfg_r)
    assert abs(aperture_sum(s_r, 30.0, 33.0, r=12) / flux - 1) < 0.01
    both = (w_i > 0) & (w_r > 0)
    assert both.sum() > 0.8 * s_i.size
    np.testing.assert_allclose(s_r[both], s_i[both], atol=1e-3 * s_i.max())
    # The masked input pixel never contributes (footprints differ only at the frame edges:
    # reproject accepts samples up to half a pixel outside).
    ra, dec = w.all_pix2world([[12.0, 10.0]], 0)[0]
    mx, my = ref.all_world2pix([[ra, dec]], 0)[0]
    assert w_i[round(my), round(mx)] == 0 and w_r[round(my), round(mx)] == 0
