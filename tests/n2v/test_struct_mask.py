"""structN2V masks: the neighbours of each target along the correlated axes are replaced by
values that carry no information about the target's noise, and are never targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pausdenoise.n2v.masking import apply_blind_spot, struct_offsets
from pausdenoise.n2v.normalise import FrameStats
from pausdenoise.n2v.patches import Frame, make_validation_set

torch.set_num_threads(1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unique_image(n: int, h: int, w: int) -> torch.Tensor:
    """Pixel values 1 … n·h·w, so a value tells where it came from."""
    return torch.arange(1, n * h * w + 1, dtype=torch.float32).reshape(n, 1, h, w)


def _segment(targets: torch.Tensor, axes: str, hw: int) -> torch.Tensor:
    """Pixels at ±1..hw along ``axes`` from a target (independent of the module's code)."""
    kh = 2 * hw + 1
    k = torch.zeros(1, 1, kh, kh)
    if "x" in axes:
        k[0, 0, hw, :] = 1
    if "y" in axes:
        k[0, 0, :, hw] = 1
    k[0, 0, hw, hw] = 0
    return F.conv2d(targets.float(), k, padding=hw) > 0


@pytest.mark.parametrize(("axes", "hw"), [("x", 1), ("y", 2), ("xy", 1)])
def test_segment_replaced_by_far_pixels_and_never_targets(axes: str, hw: int) -> None:
    n, h, w = 16, 40, 48
    x = _unique_image(n, h, w)
    bad = torch.zeros_like(x, dtype=torch.bool)
    bad[:, :, 5, :] = True  # a bad row keeps its value and is never a target
    masked, targets = apply_blind_spot(
        x, bad, masked_fraction=0.02, struct_axes=axes, struct_half_width=hw, generator=_gen(1)
    )
    seg = _segment(targets, axes, hw) & ~bad
    assert targets.sum() > 100 and seg.sum() >= targets.sum()
    assert not (targets & _segment(targets, axes, hw)).any()
    assert not (targets & bad).any()
    assert torch.all(masked[seg] != x[seg])
    assert torch.equal(masked[~(seg | targets)], x[~(seg | targets)])
    # every fill value is the original of a pixel of the same patch, > 2·hw px away
    b, yy, xx = (t for t in seg[:, 0].nonzero(as_tuple=True))
    src = masked[:, 0][b, yy, xx].long() - 1
    assert torch.all(src // (h * w) == b)
    sy, sx = (src % (h * w)) // w, src % w
    assert torch.all(torch.maximum((sy - yy).abs(), (sx - xx).abs()) > 2 * hw)
    # the targets' own replacement never comes from the masked segment
    tb, ty, tx = targets[:, 0].nonzero(as_tuple=True)
    rep = masked[:, 0][tb, ty, tx].long() - 1
    dy, dx = (rep % (h * w)) // w - ty, rep % w - tx
    on_x = (dy == 0) & (dx.abs() <= hw) if "x" in axes else torch.zeros_like(dy, dtype=torch.bool)
    on_y = (dx == 0) & (dy.abs() <= hw) if "y" in axes else torch.zeros_like(dy, dtype=torch.bool)
    assert not (on_x | on_y).any()


def test_default_is_plain_n2v() -> None:
    x = torch.randn(8, 1, 32, 32, generator=_gen(0))
    a = apply_blind_spot(x, generator=_gen(3))
    b = apply_blind_spot(x, generator=_gen(3), struct_axes="", struct_half_width=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert struct_offsets("").shape == (0, 2)
    assert struct_offsets("xy", 2).shape == (8, 2)
    with pytest.raises(ValueError, match="struct_axes"):
        apply_blind_spot(x, struct_axes="z")
    with pytest.raises(ValueError, match="struct_half_width"):
        apply_blind_spot(x, struct_axes="x", struct_half_width=0)


def _correlated_along_x(n: int, size: int, seed: int) -> torch.Tensor:
    """Unit-variance noise smoothed along x by [1/4, 1/2, 1/4]: lag-1 ρ_x = 2/3, ρ_y = 0."""
    white = torch.randn(n, 1, size, size + 2, generator=_gen(seed))
    k = torch.tensor([0.25, 0.5, 0.25]).view(1, 1, 1, 3)
    return F.conv2d(white, k) / float(np.sqrt(6 / 16))


def _neighbour_correlation(masked: torch.Tensor, x: torch.Tensor, targets: torch.Tensor,
                           dy: int, dx: int) -> float:
    b, _, ty, tx = targets.nonzero(as_tuple=True)
    h, w = x.shape[-2:]
    ok = (ty + dy >= 0) & (ty + dy < h) & (tx + dx >= 0) & (tx + dx < w)
    b, ty, tx = b[ok], ty[ok], tx[ok]
    orig = x[b, 0, ty, tx].double()
    near = masked[b, 0, ty + dy, tx + dx].double()
    return float(np.corrcoef(orig.numpy(), near.numpy())[0, 1])


def test_struct_mask_removes_the_correlated_neighbours() -> None:
    """On noise correlated along x, the masked input at target ± 1 px along x tells
    nothing about the target's value with struct_axes='x' (ρ ≈ 0), and ρ = 2/3 without."""
    x = _correlated_along_x(64, 64, seed=5)
    plain_m, plain_t = apply_blind_spot(x, masked_fraction=0.02, generator=_gen(6))
    sx_m, sx_t = apply_blind_spot(x, masked_fraction=0.02, struct_axes="x", generator=_gen(6))
    n_targets = int(sx_t.sum())
    assert n_targets > 4000
    tol = 4.0 / np.sqrt(n_targets)
    for dx in (-1, 1):
        assert _neighbour_correlation(plain_m, x, plain_t, 0, dx) == pytest.approx(2 / 3, abs=0.04)
        assert abs(_neighbour_correlation(sx_m, x, sx_t, 0, dx)) < tol
    # along y the noise is white: the neighbours are kept and uncorrelated either way
    assert abs(_neighbour_correlation(sx_m, x, sx_t, 1, 0)) < tol
    seg = _segment(sx_t, "x", 1)
    below = sx_t[:, :, :-1] & ~(sx_t | seg)[:, :, 1:]  # the pixel below a target, untouched
    assert torch.equal(sx_m[:, :, 1:][below], x[:, :, 1:][below])
    # the filled values keep the patch's distribution (unit variance, zero mean)
    assert float(sx_m[seg].std()) == pytest.approx(1.0, abs=0.05)
    assert abs(float(sx_m[seg].mean())) < 0.05


def test_validation_set_passes_the_struct_axes() -> None:
    rng = np.random.default_rng(2)
    img = rng.normal(100.0, 10.0, (128, 128)).astype(np.float32)
    frames = [Frame(img, None, FrameStats(100.0, 10.0), "a")]
    plain = make_validation_set(frames, 16, 32, seed=4, masked_fraction=0.02)
    struct = make_validation_set(frames, 16, 32, seed=4, masked_fraction=0.02,
                                 struct_axes="y", struct_half_width=2)
    assert torch.equal(plain.originals, struct.originals)
    seg = _segment(struct.targets, "y", 2)
    assert seg.any() and not (seg & struct.targets).any()
    assert torch.all(struct.inputs[seg] != struct.originals[seg])
