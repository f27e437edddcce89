"""U-Net: shapes, the size-multiple rule, and the receptive field against autograd."""

from __future__ import annotations

import pytest
import torch

from pausdenoise.n2v.unet import UNet, UNetConfig, pad_to_multiple, predict_array

torch.set_num_threads(1)


@pytest.mark.parametrize("n2v2", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_output_shape_matches_input(depth: int, n2v2: bool) -> None:
    model = UNet(UNetConfig(depth=depth, base_channels=4, n2v2=n2v2)).eval()
    m = 2**depth
    x = torch.randn(3, 1, 4 * m, 6 * m)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_size_not_multiple_is_refused(depth: int) -> None:
    model = UNet(UNetConfig(depth=depth, base_channels=4)).eval()
    m = 2**depth
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth"):
        model(torch.zeros(1, 1, 4 * m + 1, 4 * m))
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth"):
        model(torch.zeros(1, 1, 4 * m, 4 * m - 1))


def test_predict_array_any_size_and_padding() -> None:
    model = UNet(UNetConfig(depth=2, base_channels=4)).eval()
    x = torch.randn(2, 1, 37, 51)
    y = predict_array(model, x)
    assert y.shape == x.shape
    xp, hw = pad_to_multiple(x, 4)
    assert xp.shape[-2:] == (40, 52) and hw == (37, 51)
    assert torch.equal(xp[..., :37, :51], x)
    # an input that already fits is not padded and predict_array equals the forward pass
    x2 = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(predict_array(model, x2), model(x2))


def _empirical_extent(model: UNet, reps: int = 2) -> int:
    """Largest Chebyshev distance at which an input pixel has a non-zero gradient on an
    output pixel, over output pixels at every pooling phase (diagonal) and random inputs."""
    model.eval()
    m = model.config.size_multiple
    r = model.receptive_field_radius()
    n = -(-(2 * r + 4 * m + 2) // m) * m  # the field fits inside the image
    c = n // 2 - m // 2
    phases = [(i, i) for i in range(m)] + [(0, m - 1), (m - 1, 0)]
    extent = 0
    gen = torch.Generator().manual_seed(1)
    for _ in range(reps):
        x = torch.randn(len(phases), 1, n, n, generator=gen, requires_grad=True)
        out = model(x)
        sel = sum(out[k, 0, c + i, c + j] for k, (i, j) in enumerate(phases))
        (g,) = torch.autograd.grad(sel, x)
        for k, (i, j) in enumerate(phases):
            nz = g[k, 0].nonzero()
            assert nz.numel(), "no gradient at all"
            d = (nz - torch.tensor([c + i, c + j])).abs().max()
            extent = max(extent, int(d))
    return extent


@pytest.mark.parametrize("n2v2", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_receptive_field_covers_gradient_extent(depth: int, n2v2: bool) -> None:
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=depth, base_channels=4, n2v2=n2v2))
    rf = model.receptive_field_radius()
    extent = _empirical_extent(model)
    assert rf >= extent, f"receptive field {rf} < empirical extent {extent}"
    # and it is not wildly conservative either (a halo costs compute)
    assert rf <= extent + 2 * model.config.size_multiple
    halo = model.halo()
    assert halo >= rf and halo % model.config.size_multiple == 0


def test_default_net_receptive_field_is_about_forty_pixels() -> None:
    model = UNet(UNetConfig())
    assert 25 <= model.receptive_field_radius() <= 45


# --------------------------------------------------------------------------- Gaussian posterior


def test_gaussian_posterior_head_and_infer_formula() -> None:
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4, posterior="gaussian", noise_scale=10.0))
    model.eval()
    x = torch.randn(2, 1, 32, 32) * 3
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 2, 32, 32)  # prior mean and (raw) prior variance
        mean, var_p = model.prior(out)
        assert (var_p > 0).all()
        var_n = 1.0 + mean.clamp(min=0) / 10.0
        expected = (var_n * mean + var_p * x) / (var_n + var_p)
        assert torch.allclose(model.infer(x), expected, atol=1e-6)
        assert torch.allclose(predict_array(model, x), expected, atol=1e-6)
        # predict_array on a size that needs padding crops back the posterior mean
        assert predict_array(model, torch.randn(1, 1, 30, 27)).shape == (1, 1, 30, 27)


def test_gaussian_posterior_limits() -> None:
    """A confident prior returns the prior mean; a vague one returns the observation."""
    model = UNet(UNetConfig(depth=1, base_channels=2, posterior="gaussian")).eval()
    x = torch.randn(1, 1, 16, 16) * 5
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([2.0, -30.0]))  # μ = 2, σ_p² ≈ 1e-4
        assert torch.allclose(model.infer(x), torch.full_like(x, 2.0), atol=5e-3)
        model.head.bias.copy_(torch.tensor([2.0, 1e4]))  # σ_p² = 1e4 ≫ σ_n²
        assert torch.allclose(model.infer(x), x, atol=2e-3)


def test_plain_infer_is_forward_and_bad_config_refused() -> None:
    model = UNet(UNetConfig(depth=1, base_channels=2)).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.infer(x), model(x))
    with pytest.raises(ValueError, match="posterior"):
        UNetConfig(posterior="laplace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_scale"):
        UNetConfig(noise_scale=0.0)


def test_prior_scale_moves_the_posterior_toward_the_observation() -> None:
    torch.manual_seed(1)
    model = UNet(UNetConfig(depth=1, base_channels=2, posterior="gaussian")).eval()
    x = torch.randn(1, 1, 16, 16) * 4
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 0.5]))
        base = model.infer(x)
        assert torch.equal(model.infer(x, prior_scale=1.0), base)
        errs = [float((model.infer(x, prior_scale=t) - x).abs().mean()) for t in (1, 4, 1e6)]
        assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3
        assert torch.equal(predict_array(model, x, prior_scale=4.0), model.infer(x, 4.0))
        with pytest.raises(ValueError, match="prior_scale"):
            model.infer(x, prior_scale=0.0)
        plain = UNet(UNetConfig(depth=1, base_channels=2)).eval()
        assert torch.equal(plain.infer(x, prior_scale=4.0), plain(x))  # ignored
        ident = torch.nn.Identity()
        ident.config = UNetConfig(depth=1)  # what predict_array reads for padding
        with pytest.raises(TypeError, match="no inference options"):
            predict_array(ident, x, prior_scale=2.0)


def test_residual_unet_starts_as_the_identity_and_keeps_the_receptive_field() -> None:
    from pausdenoise.n2v.config import UNetSettings
    from pausdenoise.n2v.unet import optimise_for_inference

    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4, residual=True, batch_norm=False))
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
    x = torch.randn(1, 1, 24, 40)
    assert torch.equal(net(x), x)  # zero correction: the input itself
    with torch.no_grad():
        net.head.bias.fill_(0.5)
    plain = UNet(UNetConfig(depth=2, base_channels=4, batch_norm=False))
    plain.load_state_dict(net.state_dict())
    assert torch.allclose(net(x), plain(x) + x)
    assert torch.allclose(optimise_for_inference(net)(x), net(x), atol=1e-6)
    assert net.halo() == plain.halo()
    with pytest.raises(ValueError, match="residual"):
        UNetConfig(posterior="gaussian", residual=True)
    with pytest.raises(ValueError, match="residual"):
        UNetSettings(posterior="gaussian", residual=True)


def test_gated_residual_passes_the_share_of_the_input_its_gate_says() -> None:
    from pausdenoise.n2v.config import UNetSettings
    from pausdenoise.n2v.unet import GATE_BIAS_INIT, optimise_for_inference

    torch.manual_seed(0)
    cfg = UNetSettings(depth=2, base_channels=4, batch_norm=False,
                       residual="gated").to_unet_config()
    net = UNet(cfg)
    assert cfg.head_channels == 2 and net.head.out_channels == 2
    assert float(net.head.bias[1]) == GATE_BIAS_INIT  # the gate starts nearly shut
    x = torch.randn(1, 1, 24, 40)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([0.25, 0.0]))  # correction 0.25, gate sigmoid(0)
    assert torch.allclose(net(x), 0.25 + 0.5 * x)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.0, 40.0]))  # gate wide open: the identity
    assert torch.allclose(net(x), x)
    with torch.no_grad():  # a gate that follows the features: output is no longer affine
        net.head.weight.normal_()
    plain = UNet(UNetConfig(depth=2, base_channels=4, batch_norm=False))
    assert torch.allclose(optimise_for_inference(net)(x), net(x), atol=1e-6)
    assert net.halo() == plain.halo()
    with pytest.raises(ValueError, match="residual"):
        UNetConfig(residual="sometimes")
    with pytest.raises(ValueError, match="residual"):
        UNetSettings(posterior="gaussian", residual="gated")


def test_kernel_head_averages_its_neighbourhood_with_the_predicted_weights() -> None:
    from pausdenoise.n2v.config import UNetSettings
    from pausdenoise.n2v.unet import apply_predicted_kernels, optimise_for_inference

    torch.manual_seed(0)
    cfg = UNetSettings(depth=2, base_channels=4, batch_norm=False,
                       kernel_size=3).to_unet_config()
    net = UNet(cfg)
    assert cfg.head_channels == 9 and net.head.out_channels == 9
    x = torch.randn(1, 1, 24, 40)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(-50.0)
        net.head.bias[4] = 50.0  # all weight on the centre: the identity
    assert torch.allclose(net(x), x, atol=1e-6)
    with torch.no_grad():
        net.head.bias.zero_()  # equal weights: a 3×3 box mean, edges reflected
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    box = torch.nn.functional.avg_pool2d(padded, 3, stride=1)
    assert torch.allclose(net(x), box, atol=1e-6)
    with torch.no_grad():
        net.head.bias.zero_()
        net.head.bias[5] = 50.0  # all weight on offset (dy, dx) = (0, +1)
    assert torch.allclose(net(x)[..., :-1], x[..., 1:], atol=1e-6)
    with torch.no_grad():  # kernels that follow the features
        net.head.weight.normal_()
    flat = torch.full((1, 1, 24, 40), 3.5)
    assert torch.allclose(net(flat), flat, atol=1e-5)  # weights sum to 1: the sky level stays
    y = net(x)
    assert bool((y <= x.max() + 1e-5).all() and (y >= x.min() - 1e-5).all())  # a mean
    assert torch.allclose(optimise_for_inference(net)(x), net(x), atol=1e-6)
    # a compact source far from the edges: its flux spreads by at most k // 2 px
    src = torch.zeros(1, 1, 32, 32)
    src[0, 0, 14:18, 14:18] = 1.0
    spread = apply_predicted_kernels(src, torch.randn(1, 9, 32, 32), 3)
    outside = spread.clone()
    outside[..., 13:19, 13:19] = 0.0
    assert float(outside.abs().max()) == 0.0 and float(spread[..., 13:19, 13:19].min()) > 0
    for bad in (2, 1, -3):
        with pytest.raises(ValueError, match="kernel_size"):
            UNetConfig(kernel_size=bad)
    with pytest.raises(ValueError, match="kernel_size"):
        UNetConfig(kernel_size=5, residual=True)
    with pytest.raises(ValueError, match="kernel_size"):
        UNetSettings(kernel_size=5, posterior="gaussian")
    with pytest.raises(ValueError, match="kernel_size"):
        UNetSettings(kernel_size=4)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_kernel_head_receptive_field_covers_gradient_extent(kernel_size: int) -> None:
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=2, base_channels=4, kernel_size=kernel_size))
    plain = UNet(UNetConfig(depth=2, base_channels=4))
    rf = model.receptive_field_radius()
    assert rf == plain.receptive_field_radius() + kernel_size // 2
    extent = _empirical_extent(model)
    assert extent <= rf <= extent + 2 * model.config.size_multiple
    assert model.halo() >= rf and model.halo() % model.config.size_multiple == 0


def test_kernel_head_logits_stay_bounded_beside_a_bright_star() -> None:
    from pausdenoise.n2v.unet import KERNEL_CENTRE_INIT

    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=8, batch_norm=False, kernel_size=9))
    centre = net.head.bias[40] - net.head.bias[:40].mean()
    assert float(centre) == pytest.approx(KERNEL_CENTRE_INIT, abs=0.5)
    x = torch.randn(1, 1, 64, 64)
    x[0, 0, 30:33, 30:33] = 3000.0  # a star 10³ σ above the sky, as on a crowded field
    logits = {}
    net.head.register_forward_hook(lambda mod, inp, out: logits.update(out=out))
    net(x)
    w = net.head.weight.detach().flatten(1)
    bound = float(w.norm(dim=1).max()) * 8**0.5 + float(net.head.bias.abs().max())
    assert float(logits["out"].abs().max()) <= bound + 1e-4  # unit-RMS features
    weights = torch.softmax(logits["out"][0], dim=0)
    assert float(weights.max()) < 0.99  # no one-hot kernel, even on the star
