"""Blind-spot masking: no centre leak, stratified fraction, bad pixels, loss only at targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pausdenoise.n2v.masking import (
    DEFAULT_MASKED_FRACTION,
    apply_blind_spot,
    blind_spot_loss,
    gaussian_nll_loss,
    grid_spacing,
    n2v_loss,
    poisson_weight,
    stratified_targets,
    uniform_sources,
)

torch.set_num_threads(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unique_image(n: int, h: int, w: int) -> torch.Tensor:
    return torch.arange(n * h * w, dtype=torch.float32).reshape(n, 1, h, w)


def _neighbour_has_target(targets: torch.Tensor, r: int) -> torch.Tensor:
    """True where another target lies in the (2r+1)² square around the pixel."""
    k = torch.ones(1, 1, 2 * r + 1, 2 * r + 1)
    k[0, 0, r, r] = 0
    return F.conv2d(targets.float(), k, padding=r) > 0


def test_default_fraction_in_literature_range() -> None:
    assert 0.002 <= DEFAULT_MASKED_FRACTION <= 0.015


@pytest.mark.parametrize("strategy", ["uniform", "median"])
def test_target_value_is_never_its_own(strategy: str) -> None:
    # every pixel value unique: a replaced value equal to the original would be a leak
    x = _unique_image(32, 24, 40)
    masked, targets = apply_blind_spot(
        x, masked_fraction=0.02, strategy=strategy, generator=_gen(1)
    )
    assert targets.any()
    assert torch.all(masked[targets] != x[targets])
    assert torch.equal(masked[~targets], x[~targets])  # nothing else touched


def test_uniform_replacement_comes_from_a_neighbour_within_radius() -> None:
    n, h, w, r = 16, 24, 40, 5
    x = _unique_image(n, h, w)
    masked, targets = apply_blind_spot(
        x, masked_fraction=0.02, radius=r, strategy="uniform", generator=_gen(2)
    )
    b, _, y, xx = targets.nonzero(as_tuple=True)
    src = masked[targets].long()  # the value is the flat index of its source pixel
    sb, rem = src // (h * w), src % (h * w)
    sy, sx = rem // w, rem % w
    assert torch.equal(sb, b)
    dy, dx = sy - y, sx - xx
    assert int(dy.abs().max()) <= r and int(dx.abs().max()) <= r
    assert not torch.any((dy == 0) & (dx == 0))


def test_uniform_sources_never_the_centre_even_at_edges() -> None:
    h, w, r = 16, 16, 5
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    y = ys.reshape(-1).repeat(50)
    x = xs.reshape(-1).repeat(50)
    b = torch.zeros_like(y)
    sy, sx = uniform_sources(b, y, x, (h, w), radius=r, generator=_gen(3))
    assert torch.all((sy != y) | (sx != x))
    assert sy.min() >= 0 and sy.max() < h and sx.min() >= 0 and sx.max() < w
    assert int((sy - y).abs().max()) <= r and int((sx - x).abs().max()) <= r
    # all 120 offsets are used (uniform over the square minus the centre)
    centre = (y == 8) & (x == 8)
    offs = set(zip((sy - y)[centre].tolist(), (sx - x)[centre].tolist(), strict=True))
    assert len(offs) > 20
    many = uniform_sources(
        torch.zeros(20000, dtype=torch.long),
        torch.full((20000,), 8),
        torch.full((20000,), 8),
        (h, w),
        radius=r,
        generator=_gen(4),
    )
    offs = torch.stack([many[0] - 8, many[1] - 8], 1)
    counts = torch.unique(offs, dim=0, return_counts=True)[1]
    assert counts.numel() == (2 * r + 1) ** 2 - 1
    assert counts.min() > 0.5 * 20000 / 120 and counts.max() < 1.5 * 20000 / 120


@pytest.mark.parametrize("strategy", ["uniform", "median"])
def test_constant_image_with_bright_targets(strategy: str) -> None:
    # Reproduce the targets first (the same seed draws the same grid), then make an image
    # that is constant except at the targets: the centre's value must never come back.
    n, h, w, f, r = 8, 64, 64, 0.005, 5
    targets = stratified_targets((n, h, w), f, generator=_gen(5))[:, None]
    x = torch.full((n, 1, h, w), 3.0)
    x[targets] = 100.0
    masked, t2 = apply_blind_spot(
        x, masked_fraction=f, radius=r, strategy=strategy, generator=_gen(5)
    )
    assert torch.equal(t2, targets)
    vals = masked[targets]
    if strategy == "median":
        assert torch.all(vals == 3.0)  # targets are < half of any neighbourhood
    else:
        near = _neighbour_has_target(targets, r)[targets]
        assert torch.all(vals[~near] == 3.0)
        assert torch.all((vals == 3.0) | (vals == 100.0))


def test_masked_fraction_close_to_configured() -> None:
    for f in (0.002, 0.005, 0.015):
        t = stratified_targets((64, 64, 64), f, generator=_gen(6))
        frac = t.float().mean().item()
        s = grid_spacing(f)
        assert abs(frac - 1 / s**2) < 0.1 / s**2
        assert 0.8 * f < frac < 1.25 * f


def test_targets_are_stratified_one_per_cell() -> None:
    f = 1 / 16**2
    s = grid_spacing(f)
    assert s == 16
    t = stratified_targets((10, 64, 96), f, generator=_gen(7))
    per_cell = t.reshape(10, 4, s, 6, s).sum(dim=(2, 4))
    assert torch.all(per_cell == 1)


def test_bad_pixels_never_targets_nor_sources() -> None:
    n, h, w = 32, 48, 48
    g = _gen(8)
    bad = torch.rand(n, 1, h, w, generator=g) < 0.3
    bad[:, :, :, 10] = True  # a bad column
    x = _unique_image(n, h, w)
    masked, targets = apply_blind_spot(x, bad, masked_fraction=0.02, generator=g)
    assert targets.any()
    assert not torch.any(targets & bad)
    # uniform: 4 candidate draws, so a bad source needs 4 bad draws (~0.3**4 of targets)
    src = masked[targets].long()
    from_bad = bad.reshape(-1)[src].float().mean().item()
    assert from_bad < 0.03
    # median: bad pixels (a huge value) are never part of the median
    xb = torch.where(bad, torch.tensor(1e6), torch.randn(n, 1, h, w, generator=g))
    mm, tm = apply_blind_spot(xb, bad, masked_fraction=0.02, strategy="median", generator=g)
    assert not torch.any(tm & bad)
    assert torch.all(mm[tm].abs() < 10)


def test_shapes_dtype_and_errors() -> None:
    x = torch.randn(4, 32, 32)
    m, t = apply_blind_spot(x, generator=_gen(9))
    assert m.shape == x.shape and t.shape == x.shape and t.dtype == torch.bool
    assert m.dtype == x.dtype
    with pytest.raises(ValueError, match="too small"):
        apply_blind_spot(torch.zeros(1, 1, 10, 10), radius=5)
    with pytest.raises(ValueError, match="strategy"):
        apply_blind_spot(torch.zeros(1, 1, 32, 32), strategy="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="masked_fraction"):
        apply_blind_spot(torch.zeros(1, 1, 32, 32), masked_fraction=0.0)


def test_deterministic_with_seeded_generator() -> None:
    x = torch.randn(4, 1, 32, 32, generator=_gen(10))
    a = apply_blind_spot(x, generator=_gen(11))
    b = apply_blind_spot(x, generator=_gen(11))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_loss_only_at_targets() -> None:
    g = _gen(12)
    orig = torch.randn(4, 1, 32, 32, generator=g)
    targets = torch.rand(4, 1, 32, 32, generator=g) < 0.05
    pred = torch.randn(4, 1, 32, 32, generator=g)
    loss = n2v_loss(pred, orig, targets)
    expected = ((pred - orig)[targets] ** 2).mean()
    assert torch.allclose(loss, expected)
    # changing the prediction off-target (even to inf) does not change the loss
    pred2 = pred.clone()
    pred2[~targets] = torch.randn(int((~targets).sum()), generator=g) * 100
    assert torch.equal(n2v_loss(pred2, orig, targets), loss)
    pred2[~targets] = float("inf")
    assert torch.equal(n2v_loss(pred2, orig, targets), loss)
    # changing it at a target does
    pred3 = pred.clone()
    pred3[targets] += 1.0
    assert not torch.allclose(n2v_loss(pred3, orig, targets), loss)
    # gradients only at targets
    p = pred.clone().requires_grad_(True)
    n2v_loss(p, orig, targets).backward()
    assert torch.all(p.grad[~targets] == 0) and torch.all(p.grad[targets] != 0)


def test_loss_without_targets_is_zero_and_differentiable() -> None:
    p = torch.randn(2, 1, 16, 16, requires_grad=True)
    loss = n2v_loss(p, torch.zeros_like(p), torch.zeros_like(p, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.all(p.grad == 0)


def test_weighted_loss_and_poisson_weight() -> None:
    g = _gen(13)
    orig = torch.randn(2, 1, 16, 16, generator=g)
    targets = torch.rand(2, 1, 16, 16, generator=g) < 0.1
    pred = torch.randn(2, 1, 16, 16, generator=g) * 50
    ones = torch.ones_like(pred)
    assert torch.allclose(n2v_loss(pred, orig, targets, ones), n2v_loss(pred, orig, targets))
    w = poisson_weight(pred, 15.0)
    expected = (((pred - orig) ** 2 * w)[targets]).sum() / targets.sum()
    assert torch.allclose(n2v_loss(pred, orig, targets, w), expected)
    # 1 on sky (ŷ <= 0), inverse variance 1 / (1 + ŷ/scale) on sources, never a gradient path
    assert torch.all(w[pred <= 0] == 1) and torch.all(w <= 1) and torch.all(w > 0)
    assert torch.allclose(poisson_weight(torch.tensor([30.0]), 15.0), torch.tensor([1 / 3]))
    p = pred.clone().requires_grad_(True)
    assert not poisson_weight(p, 15.0).requires_grad


def test_gaussian_nll_loss_matches_formula_and_ignores_non_targets():
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(2, 1, 8, 8, generator=g)
    var_p = torch.rand(2, 1, 8, 8, generator=g) + 0.1
    var_n = torch.ones(2, 1, 8, 8) * 1.5
    y = torch.randn(2, 1, 8, 8, generator=g)
    t = torch.rand(2, 1, 8, 8, generator=g) < 0.2
    v = var_p + var_n
    expected = (0.5 * (torch.log(v) + (y - mean) ** 2 / v))[t].mean()
    got = gaussian_nll_loss(mean, var_p, var_n, y, t)
    assert torch.allclose(got, expected, atol=1e-6)
    # changing predictions off-target (even to inf) changes nothing
    mean2 = mean.clone()
    mean2[~t] = float("inf")
    assert torch.allclose(gaussian_nll_loss(mean2, var_p, var_n, y, t), got)
    empty = torch.zeros_like(t)
    assert float(gaussian_nll_loss(mean, var_p, var_n, y, empty)) == 0.0


def test_gaussian_nll_minimiser_is_mean_and_variance():
    """Fitting one (μ, σ_p²) to samples y ~ N(3, 4) with σ_n² = 1 gives μ≈3, σ_p²≈3."""
    y = 3.0 + 2.0 * torch.randn(20000, generator=torch.Generator().manual_seed(0))
    mu = torch.zeros(1, requires_grad=True)
    raw = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([mu, raw], lr=0.05)
    t = torch.ones_like(y, dtype=torch.bool)
    for _ in range(600):
        opt.zero_grad()
        loss = gaussian_nll_loss(mu.expand_as(y), raw.exp().expand_as(y), torch.ones_like(y), y, t)
        loss.backward()
        opt.step()
    assert abs(mu.item() - y.mean().item()) < 0.02
    assert abs(raw.exp().item() - (y.var().item() - 1.0)) < 0.1


def test_blind_spot_loss_dispatches_on_the_model():
    from pausdenoise.n2v.unet import UNet, UNetConfig

    plain = UNet(UNetConfig(depth=1, base_channels=2))
    gauss = UNet(UNetConfig(depth=1, base_channels=2, posterior="gaussian", noise_scale=5.0))
    x = torch.randn(1, 1, 16, 16)
    t = torch.rand(1, 1, 16, 16) < 0.3
    out = plain(x)
    assert torch.equal(blind_spot_loss(plain, out, x, t), n2v_loss(out, x, t))
    out2 = gauss(x)
    mean, var_p = gauss.prior(out2)
    expected = gaussian_nll_loss(mean, var_p, 1 + mean.clamp(min=0) / 5.0, x, t)
    assert torch.allclose(blind_spot_loss(gauss, out2, x, t), expected)


def test_beta_nll_scales_terms_and_gives_the_mse_gradient_at_beta_one():
    g = torch.Generator().manual_seed(4)
    mean = torch.randn(1, 1, 8, 8, generator=g, requires_grad=True)
    var_p = torch.rand(1, 1, 8, 8, generator=g) * 5 + 0.1
    var_n = torch.full((1, 1, 8, 8), 2.0)
    y = torch.randn(1, 1, 8, 8, generator=g) * 3
    t = torch.rand(1, 1, 8, 8, generator=g) < 0.5
    v = var_p + var_n
    plain = 0.5 * (torch.log(v) + (y - mean) ** 2 / v)
    half = gaussian_nll_loss(mean, var_p, var_n, y, t, beta=0.5)
    assert torch.allclose(half, (plain * v.sqrt())[t].mean(), atol=1e-5)
    loss = gaussian_nll_loss(mean, var_p, var_n, y, t, beta=1.0)
    (grad,) = torch.autograd.grad(loss, mean)
    expected = torch.where(t, (mean - y) / t.sum(), torch.zeros_like(y)).detach()
    assert torch.allclose(grad, expected, atol=1e-6)  # d/dμ ½(y-μ)² = μ - y
