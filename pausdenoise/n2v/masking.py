"""Blind-spot masking for Noise2Void (N2V) and N2V2, done on the device inside the training step.

The patch reader (:mod:`pausdenoise.n2v.patches`) returns plain normalised patches and their
bad-pixel masks; this module turns a batch of them into the network's *input* (a few pixels
replaced) and the boolean map of *target* pixels, with torch operations on the batch tensor
only (no NumPy round trip, so it runs where the batch lives: CPU or GPU).

Scheme
------
1. **Targets on a stratified grid.** The patch is tiled by square cells of side
   ``s = round(1 / sqrt(masked_fraction))``; one pixel at a uniformly random position in each
   cell becomes a target, so the targets cover the patch evenly and the expected masked
   fraction is ``1 / s**2``. Cells that overhang the right/bottom edge keep their target only
   when it falls inside the patch, which keeps the expected fraction at ``1 / s**2`` there too.
   Bad pixels (bad-pixel mask true) are never targets: their value carries no information
   about the sky, and training on them teaches the net to reproduce the filler value.
2. **Replacement.** Each target's input value is replaced so that the net cannot see it:

   - ``"uniform"`` (N2V): the value of a neighbour drawn uniformly from the
     ``(2r+1) × (2r+1)`` square around it (``r`` = ``radius``, default 5), the centre
     excluded. A neighbour that falls outside the patch is mirrored *through the centre* on
     that axis (offset ``d`` becomes ``-d``), which keeps it inside the patch and keeps the
     offset non-zero, so the centre never replaces itself. Bad neighbours are avoided
     cheaply: ``n_candidates`` (default 4) offsets are drawn per target and the first whose
     pixel is good is used; if all are bad the last is used, and its value is the sky level
     0 (normalisation sets bad pixels to 0), which carries no signal and no leak.
   - ``"median"`` (N2V2): the median of the good pixels of the same square neighbourhood,
     centre excluded; neighbours outside the patch and bad pixels are left out of the median
     (``nanmedian``); a target without any good neighbour gets 0 (the sky).

3. **structN2V** (``struct_axes``, for noise correlated between neighbouring pixels, as in
   resampled frames; Broaddus et al. 2020). The blind spot of plain N2V assumes that the
   noise of a pixel is independent of its neighbours'; when it is not, the neighbours
   reveal part of the target's noise and the net learns to reproduce it. With
   ``struct_axes`` ``"x"`` (columns), ``"y"`` (rows) or ``"xy"``, the pixels at
   ±1..``struct_half_width`` from each target along those axes are replaced too, and are
   never targets (two targets that would mask each other are both dropped). Their new
   value is the *original* value of a pixel drawn uniformly from the same patch, at a
   Chebyshev distance above ``2 · struct_half_width`` from the replaced pixel (so beyond
   the correlation reach of any target that masks it); when ``n_candidates`` draws all fall
   closer, the sky level 0 is used. A drawn pixel has the patch's own distribution (sky,
   sources, their noise), so the masked input holds no out-of-distribution values that a
   fixed or Gaussian fill would introduce at source pixels, and it carries no information
   about the target's noise. The target's own replacement (``"uniform"``) and its
   neighbourhood median (``"median"``) leave out the masked segment too. Bad pixels in the
   segment keep their value 0. With ``struct_axes=""`` (default) nothing of this runs and
   the masks are bit-identical to plain N2V's.
4. **Loss** (:func:`n2v_loss`): the mean squared error between the prediction and the
   *original* value, at target pixels only. For a network with a Gaussian-posterior head
   (:class:`~pausdenoise.n2v.unet.UNetConfig` ``posterior="gaussian"``) the loss is instead
   the Gaussian negative log-likelihood of the original value (:func:`gaussian_nll_loss`),
   also at target pixels only; :func:`blind_spot_loss` picks the right one for a model.

Default masked fraction
-----------------------
``DEFAULT_MASKED_FRACTION = 0.005`` (0.5 %: grid cells of 14 px, ~21 targets in a 64×64
patch). The N2V literature uses 0.2 %–1.5 %. The loss gets its signal only from the targets,
so a larger fraction gives more gradient per patch read (patch reading from the survey store is
the expensive part out-of-core); but every replaced pixel is a corrupted input pixel for its
neighbours, and with a receptive field of ~35 px radius (depth 2) a 1.5 % fraction puts ~60
replaced pixels in each target's field. 0.5 % keeps that corruption small (~20 pixels out of
~5000, i.e. 0.5 % of the context) while giving ~2.5× the signal of CAREamics' 0.2 %. On CCD
frames, which are mostly sky with a few percent of source pixels, the extra targets also
sample more source pixels per batch.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from pausdenoise.n2v.config import DEFAULT_MASKED_FRACTION, DEFAULT_RADIUS

Strategy = Literal["uniform", "median"]


def grid_spacing(masked_fraction: float) -> int:
    """Return the side of the stratified grid's cells for a masked fraction.

    Parameters
    ----------
    masked_fraction : float
        Expected fraction of target pixels ``f``, in (0, 0.25].

    Returns
    -------
    int
        ``round(1 / sqrt(f))`` px, at least 2.

    Raises
    ------
    ValueError
        If ``masked_fraction`` is outside (0, 0.25].
    """
    if not 0.0 < masked_fraction <= 0.25:
        raise ValueError(f"masked_fraction must be in (0, 0.25], got {masked_fraction}")
    return max(2, round(1.0 / math.sqrt(masked_fraction)))


def stratified_targets(
    shape: tuple[int, int, int],
    masked_fraction: float = DEFAULT_MASKED_FRACTION,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One random pixel per grid cell: a boolean ``(N, H, W)`` map of candidate targets.

    Parameters
    ----------
    shape : (N, H, W)
        Batch size and patch size.
    masked_fraction : float
        Expected fraction of target pixels; the cell side is :func:`grid_spacing`.
    device : torch device, optional
        Where to build the map (that of ``generator`` when it is given).
    generator : torch.Generator, optional
        Random generator on ``device`` (for reproducible masks).

    Returns
    -------
    bool Tensor, shape (N, H, W)
        True at the candidate targets.
    """
    n, h, w = shape
    s = grid_spacing(masked_fraction)
    if generator is not None:
        device = generator.device
    ny, nx = -(-h // s), -(-w // s)
    off = torch.randint(0, s, (n, ny, nx, 2), device=device, generator=generator)
    rows = torch.arange(ny, device=device).view(1, ny, 1) * s + off[..., 0]
    cols = torch.arange(nx, device=device).view(1, 1, nx) * s + off[..., 1]
    batch = torch.arange(n, device=device).view(n, 1, 1).expand(n, ny, nx)
    inside = (rows < h) & (cols < w)
    targets = torch.zeros((n, h, w), dtype=torch.bool, device=device)
    targets[batch[inside], rows[inside], cols[inside]] = True
    return targets


def _offsets(
    radius: int, device: torch.device | str | None, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """List all ``(dy, dx)`` of the ``(2r+1)²`` square except ``(0, 0)`` (and ``exclude``).

    Returns
    -------
    Tensor of int64, shape (P, 2)
        The offsets in px.
    """
    d = torch.arange(-radius, radius + 1, device=device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    off = torch.stack([dy.reshape(-1), dx.reshape(-1)], dim=1)
    off = off[(off != 0).any(dim=1)]
    if exclude is not None and exclude.numel():
        hit = (off[:, None, :] == exclude.to(off.device)[None, :, :]).all(dim=2).any(dim=1)
        off = off[~hit]
    return off


def struct_offsets(
    struct_axes: str, half_width: int = 1, device: torch.device | str | None = None
) -> torch.Tensor:
    """List the ``(dy, dx)`` offsets that structN2V masks around each target.

    Parameters
    ----------
    struct_axes : {"", "x", "y", "xy"}
        Axes of correlated noise: ``x`` along a row (columns ±d), ``y`` along a column.
    half_width : int, optional
        Masked pixels on each side of a target along an axis (px). Default 1.
    device : torch device, optional
        Where to build the tensor.

    Returns
    -------
    Tensor of int64, shape (K, 2)
        ``(0, ±1..half_width)`` for ``x`` and ``(±1..half_width, 0)`` for ``y``; empty
        for ``""``.

    Raises
    ------
    ValueError
        An axis other than ``x``/``y``, or ``half_width`` < 1.
    """
    if set(struct_axes) - {"x", "y"} or len(set(struct_axes)) != len(struct_axes):
        raise ValueError(f"struct_axes must be '', 'x', 'y' or 'xy', got {struct_axes!r}")
    if half_width < 1:
        raise ValueError(f"struct_half_width must be >= 1, got {half_width}")
    d = [k for k in range(-half_width, half_width + 1) if k]
    out = [(0, k) for k in d] if "x" in struct_axes else []
    out += [(k, 0) for k in d] if "y" in struct_axes else []
    return torch.tensor(out, dtype=torch.int64, device=device).reshape(-1, 2)


def _mirror(pos: torch.Tensor, centre: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range neighbour coordinates through the centre (``c + d -> c - d``).

    Returns
    -------
    Tensor
        The coordinates, all inside ``[0, size)``.
    """
    return torch.where((pos < 0) | (pos >= size), 2 * centre - pos, pos)


def uniform_sources(
    b: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    shape: tuple[int, int],
    *,
    radius: int = DEFAULT_RADIUS,
    bad: torch.Tensor | None = None,
    n_candidates: int = 4,
    generator: torch.Generator | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a uniform random neighbour ``(sy, sx)`` as the source of each target ``(b, y, x)``.

    The neighbour is drawn from the ``(2r+1)²`` square minus the centre; an out-of-patch
    neighbour is mirrored through the centre on that axis, so ``(sy, sx) != (y, x)`` always.

    Parameters
    ----------
    b, y, x : Tensor of int64, shape (M,)
        Batch index, row and column (0-based px) of each target.
    shape : (int, int)
        Patch size ``(H, W)`` in px.
    radius : int, optional
        Half-width of the square in px. Default :data:`DEFAULT_RADIUS`.
    bad : bool Tensor, shape (N, H, W), optional
        Bad pixels; the first of ``n_candidates`` draws whose pixel is good is taken (the
        last draw when none is).
    n_candidates : int, optional
        Draws per target when ``bad`` is given. Default 4.
    generator : torch.Generator, optional
        Random generator on the targets' device.
    exclude : Tensor of int64, shape (K, 2), optional
        Offsets ``(dy, dx)`` never drawn (the structN2V segment, :func:`struct_offsets`).

    Returns
    -------
    sy, sx : Tensor of int64, shape (M,)
        Row and column of each target's source pixel.
    """
    h, w = shape
    m = y.numel()
    if m == 0:
        return y.clone(), x.clone()
    offsets = _offsets(radius, y.device, exclude)
    k = max(1, n_candidates if bad is not None else 1)
    pick = torch.randint(0, offsets.shape[0], (m, k), device=y.device, generator=generator)
    sy = _mirror(y[:, None] + offsets[pick, 0], y[:, None], h)
    sx = _mirror(x[:, None] + offsets[pick, 1], x[:, None], w)
    if k == 1:
        return sy[:, 0], sx[:, 0]
    good = ~bad[b[:, None].expand(m, k), sy, sx]
    good[:, -1] = True  # fall back to the last candidate
    first = good.to(torch.int8).argmax(dim=1, keepdim=True)
    return sy.gather(1, first)[:, 0], sx.gather(1, first)[:, 0]


def neighbourhood_median(
    img: torch.Tensor,
    b: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    *,
    radius: int = DEFAULT_RADIUS,
    bad: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the median of the good in-patch pixels of each target's neighbourhood.

    Parameters
    ----------
    img : Tensor, shape (N, H, W)
        Normalised patches.
    b, y, x : Tensor of int64, shape (M,)
        Batch index, row and column (0-based px) of each target.
    radius : int, optional
        Half-width of the square neighbourhood in px (centre excluded). Default
        :data:`DEFAULT_RADIUS`.
    bad : bool Tensor, shape (N, H, W), optional
        Bad pixels, left out of the median.
    exclude : Tensor of int64, shape (K, 2), optional
        Offsets ``(dy, dx)`` left out of the neighbourhood (the structN2V segment).

    Returns
    -------
    Tensor, shape (M,)
        One value per target, ``img``'s dtype; 0 where no good neighbour exists.
    """
    _, h, w = img.shape
    if y.numel() == 0:
        return img.new_zeros((0,))
    offsets = _offsets(radius, y.device, exclude)
    sy = y[:, None] + offsets[None, :, 0]
    sx = x[:, None] + offsets[None, :, 1]
    inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
    syc, sxc = sy.clamp(0, h - 1), sx.clamp(0, w - 1)
    bb = b[:, None].expand_as(sy)
    vals = img[bb, syc, sxc].float()
    ok = inside if bad is None else inside & ~bad[bb, syc, sxc]
    vals = torch.where(ok, vals, torch.full_like(vals, float("nan")))
    med = torch.nanmedian(vals, dim=1).values
    return torch.nan_to_num(med, nan=0.0).to(img.dtype)


def _shifted(mask: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Return ``mask`` moved by ``(dy, dx)`` px: ``out[y + dy, x + dx] = mask[y, x]``.

    Returns
    -------
    bool Tensor
        Same shape as ``mask`` (N, H, W); pixels shifted in from outside are False.
    """
    _, h, w = mask.shape
    out = torch.zeros_like(mask)
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _struct_segments(targets: torch.Tensor, offsets: list[list[int]]) -> torch.Tensor:
    """Return the pixels at the structN2V offsets of any target.

    Returns
    -------
    bool Tensor, shape (N, H, W)
        True where a pixel lies at one of ``offsets`` from a target.
    """
    seg = torch.zeros_like(targets)
    for dy, dx in offsets:
        seg |= _shifted(targets, dy, dx)
    return seg


def _struct_fill(
    img: torch.Tensor,
    seg: torch.Tensor,
    half_width: int,
    n_candidates: int,
    generator: torch.Generator | None,
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Draw the fill values of the structN2V segment (see the module docstring).

    Returns
    -------
    index : tuple of Tensor
        ``(b, y, x)`` of the segment pixels.
    values : Tensor
        The original value of a pixel of the same patch at a Chebyshev distance above
        ``2 · half_width`` (the first of ``n_candidates`` uniform draws that is), else 0.
    """
    _, h, w = img.shape
    pb, py, px = seg.nonzero(as_tuple=True)
    m, k = py.numel(), max(1, n_candidates)
    ry = torch.randint(0, h, (m, k), device=img.device, generator=generator)
    rx = torch.randint(0, w, (m, k), device=img.device, generator=generator)
    far = torch.maximum((ry - py[:, None]).abs(), (rx - px[:, None]).abs()) > 2 * half_width
    first = far.to(torch.int8).argmax(dim=1, keepdim=True)
    vals = img[pb[:, None].expand(m, k), ry, rx].gather(1, first)[:, 0]
    return (pb, py, px), torch.where(far.any(dim=1), vals, torch.zeros_like(vals))


def _as_batch(
    x: torch.Tensor, bad: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """Return ``x`` and ``bad`` as ``(N, H, W)`` and whether a channel axis was dropped.

    Returns
    -------
    tuple
        ``(img, bad as bool on img's device or None, squeezed)``.

    Raises
    ------
    ValueError
        If ``x`` is not ``(N, 1, H, W)`` or ``(N, H, W)``.
    """
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"blind-spot masking expects one channel, got {x.shape[1]}")
        bad2 = None if bad is None else bad[:, 0]
        return x[:, 0], (None if bad2 is None else bad2.to(device=x.device, dtype=torch.bool)), True
    if x.dim() == 3:
        return x, (None if bad is None else bad.to(device=x.device, dtype=torch.bool)), False
    raise ValueError(f"expected (N, 1, H, W) or (N, H, W), got shape {tuple(x.shape)}")


def apply_blind_spot(
    x: torch.Tensor,
    bad: torch.Tensor | None = None,
    *,
    masked_fraction: float = DEFAULT_MASKED_FRACTION,
    radius: int = DEFAULT_RADIUS,
    strategy: Strategy = "uniform",
    n_candidates: int = 4,
    generator: torch.Generator | None = None,
    struct_axes: str = "",
    struct_half_width: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blind-spot mask a batch: returns ``(masked input, target-location boolean mask)``.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W) or (N, H, W)
        Normalised patches (bad pixels already set to 0 by the reader).
    bad : bool Tensor, same shape as ``x``, optional
        True where the pixel is bad: never a target, never a replacement source.
    masked_fraction : float
        Expected fraction of targets (default :data:`DEFAULT_MASKED_FRACTION`).
    radius : int
        Half-width of the square neighbourhood (default 5); ``H, W > 2 * radius``.
    strategy : {"uniform", "median"}
        N2V (random neighbour) or N2V2 (median of the neighbourhood without the centre).
    n_candidates : int
        Draws per target used to avoid bad neighbours (``"uniform"`` only), and per
        structN2V pixel to find a fill pixel far enough away.
    generator : torch.Generator, optional
        Random generator on ``x``'s device.
    struct_axes : {"", "x", "y", "xy"}
        structN2V: also replace the pixels at ±1..``struct_half_width`` px from each target
        along these axes (``x``: same row, ``y``: same column); ``""`` (default) = plain
        N2V, bit-identical to a call without the argument.
    struct_half_width : int
        Pixels masked on each side of a target along a struct axis (px, ≥ 1).

    Returns
    -------
    masked : Tensor, same shape and dtype as ``x``
        ``x`` with each target (and its structN2V segment) replaced.
    targets : bool Tensor, same shape as ``x``
        True at the target pixels; the loss is computed there against ``x``.

    Raises
    ------
    ValueError
        If ``x`` is not ``(N, 1, H, W)`` or ``(N, H, W)``, the patch is not larger than
        ``2 * radius``, ``strategy`` is unknown, or ``struct_axes`` is not one of the four.
    """
    img, bad2, squeeze = _as_batch(x, bad)
    n, h, w = img.shape
    if min(h, w) <= 2 * radius:
        raise ValueError(f"patch {h}×{w} too small for neighbourhood radius {radius}")
    if strategy not in ("uniform", "median"):
        raise ValueError(f"unknown replacement strategy {strategy!r}: 'uniform' or 'median'")
    struct = struct_offsets(struct_axes, struct_half_width)
    targets = stratified_targets((n, h, w), masked_fraction, device=img.device, generator=generator)
    if bad2 is not None:
        targets &= ~bad2
    if struct.numel():  # targets that would mask each other are dropped
        targets &= ~_struct_segments(targets, struct.tolist())
    tb, ty, tx = targets.nonzero(as_tuple=True)
    masked = img.clone()
    exclude = struct if struct.numel() else None
    if strategy == "uniform":
        sy, sx = uniform_sources(
            tb, ty, tx, (h, w), radius=radius, bad=bad2, n_candidates=n_candidates,
            generator=generator, exclude=exclude,
        )
        masked[tb, ty, tx] = img[tb, sy, sx]
    else:
        masked[tb, ty, tx] = neighbourhood_median(
            img, tb, ty, tx, radius=radius, bad=bad2, exclude=exclude
        )
    if struct.numel():
        seg = _struct_segments(targets, struct.tolist())
        if bad2 is not None:
            seg &= ~bad2
        index, values = _struct_fill(img, seg, struct_half_width, n_candidates, generator)
        masked[index] = values
    if squeeze:
        return masked[:, None], targets[:, None]
    return masked, targets


def n2v_loss(
    prediction: torch.Tensor,
    original: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the mean squared error between ``prediction`` and ``original`` at ``targets``.

    Computed in float32 (also under autocast). With no target in the batch the loss is 0
    (still a function of ``prediction``, so ``backward`` works). A weight that is a
    function of the *context* only (e.g. of the detached prediction, see
    :func:`poisson_weight`) leaves the minimiser at the conditional mean
    ``E[x_i | context]``; a weight that depended on the target value would not.

    Parameters
    ----------
    prediction : Tensor
        The network's output (normalised units).
    original : Tensor, same shape
        The unmasked input.
    targets : bool Tensor, same shape
        The target pixels.
    weight : Tensor, optional
        Broadcastable to ``prediction``, no gradient: multiplies each squared error; the
        sum is still divided by the number of targets.

    Returns
    -------
    Tensor
        Scalar float32 loss.
    """
    diff = prediction.float() - original.float()
    t = targets.to(torch.bool)
    sq = diff.square()
    if weight is not None:
        sq = sq * weight.detach().float()
    # No boolean indexing: keeps the step free of host-device synchronisation on a GPU;
    # torch.where (not a product) so a non-finite prediction off-target cannot leak in.
    sq = torch.where(t, sq, torch.zeros_like(sq))
    return sq.sum() / t.sum().to(diff.dtype).clamp(min=1.0)


def poisson_weight(prediction: torch.Tensor, scale: float) -> torch.Tensor:
    """Return the inverse-variance (χ²) weight ``1 / (1 + max(ŷ, 0) / scale)``.

    In normalised units (``(x - sky) / σ``) a pixel with source signal ``s`` has variance
    ``1 + s / (gain·σ)`` (sky-plus-read noise, plus the source's Poisson noise in electrons).
    The prediction is detached, so it is a function of the context only and the weight does
    not move the minimiser away from the conditional mean; it only stops a few bright-star
    pixels, whose squared errors are 10²–10⁴ times a sky pixel's, from dominating the
    gradient.

    Parameters
    ----------
    prediction : Tensor
        The network's output ``ŷ`` (normalised units); detached here.
    scale : float
        ``gain·σ`` (e⁻ per normalised unit), one typical value for the survey.

    Returns
    -------
    Tensor
        float32 weights in (0, 1], same shape as ``prediction``.
    """
    return 1.0 / (1.0 + prediction.detach().float().clamp(min=0.0) / float(scale))


def gaussian_nll_loss(
    prior_mean: torch.Tensor,
    prior_variance: torch.Tensor,
    noise_variance: torch.Tensor,
    original: torch.Tensor,
    targets: torch.Tensor,
    beta: float = 0.0,
) -> torch.Tensor:
    """Gaussian negative log-likelihood of the original values at ``targets`` only.

    The blind-spot observation ``y`` of a target pixel is modelled as the clean value drawn
    from the prior ``N(μ, σ_p²)`` (predicted from the context) plus independent noise of
    variance ``σ_n²``, so ``y ~ N(μ, σ_p² + σ_n²)``; the loss per target is
    ``½ [log(σ_p² + σ_n²) + (y - μ)² / (σ_p² + σ_n²)]`` (constant dropped), averaged over
    the targets. Its minimiser in ``μ`` is still the conditional mean of ``y`` given the
    context, and ``σ_p² + σ_n²`` the conditional variance, so bright sources, whose pixels
    carry large variance, no longer dominate the gradient as they do in the plain MSE.
    ``noise_variance`` should be a function of the context only (e.g. of the detached
    prior mean); it is used as given. Computed in float32; 0 when there is no target.

    ``beta`` > 0 gives the β-NLL of Seitzer et al. (2022): each target's term is multiplied
    by the detached ``(σ_p² + σ_n²)**beta``. The minimiser is unchanged, but the gradient on
    ``μ`` becomes ``(μ - y) / var**(1 - beta)``: with ``beta = 1`` it is the plain MSE
    gradient, so the mean is fitted like plain N2V's and is not starved where the variance is
    large — the plain NLL (``beta = 0``) is known to under-fit the mean there, which on CCD
    frames showed up as a sky offset of ~0.1 σ.

    Parameters
    ----------
    prior_mean, prior_variance : Tensor
        The prior ``μ`` and ``σ_p²`` predicted from the context (normalised units).
    noise_variance : Tensor
        ``σ_n²``, same shape (detached here).
    original : Tensor
        The unmasked values ``y``.
    targets : bool Tensor
        The target pixels.
    beta : float, optional
        β of the β-NLL, in [0, 1]. Default 0.

    Returns
    -------
    Tensor
        Scalar float32 loss.
    """
    t = targets.to(torch.bool)
    var = prior_variance.float() + noise_variance.detach().float()
    diff = original.float() - prior_mean.float()
    nll = 0.5 * (torch.log(var) + diff.square() / var)
    if beta:
        nll = nll * var.detach().pow(beta)
    nll = torch.where(t, nll, torch.zeros_like(nll))
    return nll.sum() / t.sum().to(nll.dtype).clamp(min=1.0)


def blind_spot_loss(
    model: torch.nn.Module,
    output: torch.Tensor,
    original: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    beta: float = 0.0,
) -> torch.Tensor:
    """Return the training loss for ``model``'s raw ``output``.

    :func:`n2v_loss` for a plain N2V network, :func:`gaussian_nll_loss` (with ``beta``)
    for a Gaussian-posterior one (``weight`` unused then).

    Parameters
    ----------
    model : torch.nn.Module
        The bare :class:`~pausdenoise.n2v.unet.UNet` (not a DDP wrapper).
    output : Tensor
        Its raw output on the masked batch.
    original : Tensor
        The unmasked batch (normalised units).
    targets : bool Tensor
        The target pixels.
    weight : Tensor, optional
        Per-pixel weight of the plain loss (:func:`poisson_weight`).
    beta : float, optional
        β of the β-NLL. Default 0.

    Returns
    -------
    Tensor
        Scalar float32 loss.
    """
    config = getattr(model, "config", None)
    if getattr(config, "posterior", "none") == "gaussian":
        mean, var_p = model.prior(output)
        return gaussian_nll_loss(mean, var_p, model.noise_variance(mean.detach()), original,
                                 targets, beta)
    return n2v_loss(output, original, targets, weight)
