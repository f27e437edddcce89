"""Out-of-core random patch sampling for Noise2Void training, and a fixed validation set.

The survey never enters memory: a frame is an ``(image, mask, FrameStats)`` triple whose
image and mask are any array-likes that support 2-D slicing (Zarr arrays, Dask arrays, NumPy
arrays or memory maps), and the sampler reads only small windows of them.

Reading strategy
----------------
A Zarr read decompresses whole chunks, so reading one 64×64 patch per read would decompress
(for 1024² chunks) 256× more pixels than it uses. The sampler therefore reads a *block* — a
window of about a chunk (``block_size``; by default the array's chunk shape capped at 1024, or
4 × the patch size for unchunked arrays) at a random position — normalises it once with the
frame's statistics (:func:`pausdenoise.n2v.normalise.normalise`) and cuts several patches
(``patches_per_block``) at random positions inside it. A window that is not aligned to the
chunk grid touches up to four chunks; aligning it would halve the I/O on average but would
never produce a patch straddling a chunk boundary, i.e. under-sample the pixels near chunk
edges. We prefer unbiased sampling; the decompression cost is amortised over the patches.

Uniformity: for a region whose valid patch origins are ``[a, b]`` (per axis), the window's
origin ``u`` is uniform on ``[a - (B - P), b]`` and each patch origin is uniform on
``[u, u + B - P]``; draws outside ``[a, b]`` are discarded. Every origin is then covered by
exactly ``B - P + 1`` window positions, so each patch origin is uniform over the region, and
regions are chosen with probability proportional to their number of window positions, which
makes the draw uniform over all (frame, position) pairs. Patches whose bad-pixel fraction
(mask non-zero or non-finite image) exceeds ``max_bad_fraction`` are skipped.

Validation: :func:`split_regions` holds out the bottom rows of every frame (or the caller
passes separate frames); :func:`make_validation_set` draws the validation patches once with
a fixed seed and applies a fixed blind-spot mask to them, so validation losses are comparable
across epochs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.ndimage import uniform_filter

from pausdenoise.n2v.config import DEFAULT_MASKED_FRACTION, DEFAULT_RADIUS
from pausdenoise.n2v.masking import (
    Strategy,
    apply_blind_spot,
    blind_spot_loss,
)
from pausdenoise.n2v.normalise import FrameStats, normalise

DEFAULT_PATCH_SIZE = 64
MAX_BLOCK = 1024
"""Largest default read window (px per axis)."""


@dataclass(frozen=True)
class FrameNoise:
    """One frame's noise model in the network's normalised units.

    A pixel ``s`` σ above the sky (σ the frame's robust spread, :mod:`.normalise`) has noise
    variance ``sky_variance + max(s, 0) / noise_scale``.

    Attributes
    ----------
    sky_variance : float
        Sky + read-noise variance over σ²: ``(sky / gain + (read noise / gain)²) / σ²``
        (sky in ADU, gain in e⁻/ADU, read noise in e⁻); 1 where σ is the noise, less on a
        crowded field whose σ includes unresolved stars.
    noise_scale : float
        gain · σ, e⁻ per normalised unit (the source's Poisson term).
    """

    sky_variance: float
    noise_scale: float


@dataclass(frozen=True)
class Frame:
    """One frame to train on: lazily sliceable image and mask, and its statistics.

    Attributes
    ----------
    image : array-like, shape (ny, nx)
        ADU; anything with 2-D slicing (Zarr, Dask, NumPy).
    mask : array-like, shape (ny, nx), or None
        Non-zero marks a bad pixel.
    stats : FrameStats
        The frame's normalisation statistics (computed once per frame).
    name : str
        Identifier used in provenance (e.g. ``"00012345_04"``).
    target : array-like, shape (ny, nx), or None
        Noise2Noise target (``method: n2n``): an independent noisy estimate of the frame's
        truth in the image's units (ADU, sky included, e.g. the mean of other exposures
        brought onto the frame), NaN where there is none. Normalised with the frame's
        statistics like the image.
    noise : FrameNoise or None
        The frame's own noise model (``method: sure`` with ``noise_per_frame`` takes each
        patch's from its frame); None: the network's (one for all frames).
    """

    image: Any
    mask: Any
    stats: FrameStats
    name: str = ""
    target: Any = None
    noise: FrameNoise | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(ny, nx)`` of the image in px."""
        ny, nx = self.image.shape[-2:]
        return int(ny), int(nx)


def as_frames(frames: Sequence[Any]) -> list[Frame]:
    """Check and convert training frames.

    Parameters
    ----------
    frames : sequence of Frame or (image, mask, FrameStats[, name])
        The frames; images 2-D (ADU), masks of the same shape or None.

    Returns
    -------
    list of Frame
        The frames, in order.

    Raises
    ------
    ValueError
        If there is no frame, a tuple has the wrong length, an image is not 2-D or a mask
        has another shape.
    TypeError
        If a frame's statistics are not a :class:`FrameStats`.
    """
    out: list[Frame] = []
    for i, f in enumerate(frames):
        if isinstance(f, Frame):
            fr = f
        else:
            items = tuple(f)
            if len(items) not in (3, 4):
                raise ValueError(
                    f"frame {i}: expected (image, mask, FrameStats[, name]), got {len(items)} items"
                )
            fr = Frame(*items)
        if not isinstance(fr.stats, FrameStats):
            raise TypeError(f"frame {i}: stats must be a FrameStats, got {type(fr.stats)}")
        if len(fr.image.shape) != 2:
            raise ValueError(f"frame {i}: image must be 2-D, got shape {fr.image.shape}")
        if fr.mask is not None and tuple(fr.mask.shape) != tuple(fr.image.shape):
            raise ValueError(f"frame {i}: mask shape {fr.mask.shape} != image {fr.image.shape}")
        if fr.target is not None and tuple(fr.target.shape) != tuple(fr.image.shape):
            raise ValueError(
                f"frame {i}: target shape {fr.target.shape} != image {fr.image.shape}"
            )
        out.append(fr)
    if not out:
        raise ValueError("no frames given")
    if len({f.target is None for f in out}) > 1:
        raise ValueError("either every frame has a Noise2Noise target or none has")
    return out


@dataclass(frozen=True)
class Region:
    """A rectangle ``[y0, y1) × [x0, x1)`` of frame number ``frame`` that patches may cover."""

    frame: int
    y0: int
    y1: int
    x0: int
    x1: int


def full_regions(frames: Sequence[Frame]) -> list[Region]:
    """Return one region covering the whole of each frame.

    Parameters
    ----------
    frames : sequence of Frame
        The frames.

    Returns
    -------
    list of Region
        ``[0, ny) × [0, nx)`` of every frame, in order.
    """
    return [Region(i, 0, f.shape[0], 0, f.shape[1]) for i, f in enumerate(frames)]


def split_regions(
    frames: Sequence[Frame], validation_fraction: float = 0.1, patch_size: int = DEFAULT_PATCH_SIZE
) -> tuple[list[Region], list[Region]]:
    """Split every frame into training rows (top) and held-out validation rows (bottom).

    The held-out strip has ``max(patch_size, ceil(fraction * ny))`` rows. Holding out rows of
    every frame (rather than whole frames) works with a single frame and keeps the validation
    set representative of all exposures and bands.

    Parameters
    ----------
    frames : sequence of Frame
        The frames.
    validation_fraction : float, optional
        Fraction of each frame's rows held out, in (0, 1). Default 0.1.
    patch_size : int, optional
        Patch side in px. Default :data:`DEFAULT_PATCH_SIZE`.

    Returns
    -------
    train : list of Region
        The top rows of every frame.
    validation : list of Region
        The bottom rows of every frame.

    Raises
    ------
    ValueError
        If a frame is too small to hold a training and a validation patch.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    train, val = [], []
    for i, f in enumerate(frames):
        ny, nx = f.shape
        n_val = max(patch_size, math.ceil(validation_fraction * ny))
        if ny - n_val < patch_size or nx < patch_size:
            fits = _largest_patch(ny, nx, validation_fraction)
            raise ValueError(
                f"frame {i} ({f.name or 'unnamed'}) of shape {ny}×{nx} is too small to split "
                f"into training and validation rows for patches of {patch_size}: patches "
                f"of at most {fits} px fit (train.patch_size, a multiple of 2**depth)"
            )
        train.append(Region(i, 0, ny - n_val, 0, nx))
        val.append(Region(i, ny - n_val, ny, 0, nx))
    return train, val


def _largest_patch(ny: int, nx: int, validation_fraction: float) -> int:
    """Return the largest patch side with which a ``ny × nx`` frame splits (0: none).

    Returns
    -------
    int
        The side in px (:func:`split_regions`' rule: a training and a validation strip of
        at least one patch each).
    """
    fits = [p for p in range(1, min(ny, nx) + 1)
            if ny - max(p, math.ceil(validation_fraction * ny)) >= p]
    return max(fits, default=0)


def _chunk_shape(arr: Any) -> tuple[int, int] | None:
    """Return the chunk shape of a Zarr or Dask array.

    Returns
    -------
    (int, int) or None
        The last two chunk sides in px; None for NumPy.
    """
    cs = getattr(arr, "chunksize", None)  # dask
    if cs is None:
        cs = getattr(arr, "chunks", None)  # zarr: tuple of ints; dask: tuple of tuples
        if cs is None or not all(isinstance(c, int | np.integer) for c in cs):
            return None
    return int(cs[-2]), int(cs[-1])


def _read(arr: Any, ys: slice, xs: slice) -> np.ndarray:
    """Read a 2-D window from any sliceable array (computing Dask results).

    Returns
    -------
    ndarray
        The window.
    """
    out = arr[ys, xs]
    if hasattr(out, "compute"):
        out = out.compute()
    return np.asarray(out)


class PatchSampler:
    """Random, seeded, out-of-core sampler of normalised patches and their bad-pixel masks.

    When the frames carry Noise2Noise targets (:attr:`Frame.target`) every patch has two
    channels: the normalised image and, cut at the same place, the normalised target (NaN
    where it has none); a pixel counts as bad for ``max_bad_fraction`` when it is bad in the
    image or has no target.

    Parameters
    ----------
    frames : sequence of Frame or (image, mask, FrameStats[, name])
        The frames; only windows of them are ever read.
    patch_size : int
        Patch side (px), default 64.
    regions : list of Region, optional
        Where patches may lie (default: whole frames); see :func:`split_regions`.
    max_bad_fraction : float
        Skip patches with a larger fraction of bad pixels (default 0.25).
    block_size : int, optional
        Side of the read window (px); default: the image's chunk shape capped at 1024, or
        ``4 * patch_size`` when the array is not chunked. Clipped to the region.
    patches_per_block : int, optional
        Patch draws per window; default ``clip(window_area / patch_area / 4, 1, 32)``
        (about a quarter of the window's area, so patches of one read overlap little).
    seed : int
        Seed of the NumPy generator that drives every random choice.
    sky_keep : float
        Probability of keeping a *sky* patch (default 1: uniform sampling). A patch is a
        *source* patch when the maximum of its 3×3 box-smoothed normalised image exceeds
        ``source_threshold``; source patches are always kept, so ``sky_keep < 1`` over-samples
        patches that contain source flux. Why this does not bias the denoiser: the N2V
        optimum at a target pixel is the conditional mean ``E[x_i | context]``, one value per
        context; re-weighting *which contexts* are seen changes how much each context counts
        in the loss, not the minimiser for a context the network can represent. The
        selection statistic does depend (through the box mean) on every pixel of the patch,
        a target's noise included, but only by ``1/9`` of one pixel's noise on a
        ``source_threshold``-σ feature: it can only matter for patches whose brightest
        feature sits right at the threshold, and not at all for clearly bright or clearly
        empty patches. The validation set is always drawn uniformly.
    source_threshold : float
        Threshold (normalised units, i.e. sky σ) of the source-patch test (default 10).

    Attributes
    ----------
    blocks_read, patches_drawn, patches_skipped, sky_patches_dropped : int
        Counters (windows read, patch draws inside regions, draws skipped as too bad, sky
        patches dropped by ``sky_keep``).
    """

    def __init__(
        self,
        frames: Sequence[Any],
        patch_size: int = DEFAULT_PATCH_SIZE,
        *,
        regions: Sequence[Region] | None = None,
        max_bad_fraction: float = 0.25,
        block_size: int | None = None,
        patches_per_block: int | None = None,
        seed: int = 0,
        sky_keep: float = 1.0,
        source_threshold: float = 10.0,
    ) -> None:
        if not 0.0 < sky_keep <= 1.0:
            raise ValueError(f"sky_keep must be in (0, 1], got {sky_keep}")
        self.sky_keep = float(sky_keep)
        self.source_threshold = float(source_threshold)
        self.frames = as_frames(frames)
        self.patch_size = int(patch_size)
        self.regions = list(regions) if regions is not None else full_regions(self.frames)
        self.max_bad_fraction = float(max_bad_fraction)
        self.rng = np.random.default_rng(seed)
        p = self.patch_size
        self.regions = [r for r in self.regions if r.y1 - r.y0 >= p and r.x1 - r.x0 >= p]
        if not self.regions:
            raise ValueError(f"no frame region can hold a {p}×{p} patch")
        self._blocks: list[tuple[int, int]] = []
        self._ppb: list[int] = []
        weights = []
        for r in self.regions:
            fr = self.frames[r.frame]
            if block_size is not None:
                bh = bw = int(block_size)
            else:
                cs = _chunk_shape(fr.image)
                bh, bw = (min(c, MAX_BLOCK) for c in cs) if cs else (4 * p, 4 * p)
            bh = int(np.clip(bh, p, r.y1 - r.y0))
            bw = int(np.clip(bw, p, r.x1 - r.x0))
            self._blocks.append((bh, bw))
            if patches_per_block is None:
                self._ppb.append(int(np.clip(bh * bw // (4 * p * p), 1, 32)))
            else:
                self._ppb.append(max(1, int(patches_per_block)))
            # number of window origins per axis: valid patch origins + (B - P)
            weights.append(float((r.y1 - r.y0 - p + 1 + bh - p) * (r.x1 - r.x0 - p + 1 + bw - p)))
        w = np.asarray(weights)
        self._weights = w / w.sum()
        self._buffer_x: list[np.ndarray] = []
        self._buffer_b: list[np.ndarray] = []
        self._sources: list[tuple[int, int, int]] = []
        self.blocks_read = 0
        self.patches_drawn = 0
        self.patches_skipped = 0
        self.sky_patches_dropped = 0

    # ------------------------------------------------------------------ reading

    def _read_block(self) -> None:
        """Read one window and append its accepted patches to the buffer."""
        rng, p = self.rng, self.patch_size
        k = int(rng.choice(len(self.regions), p=self._weights))
        r, (bh, bw), n = self.regions[k], self._blocks[k], self._ppb[k]
        fr = self.frames[r.frame]
        uy = int(rng.integers(r.y0 - (bh - p), r.y1 - p + 1))
        ux = int(rng.integers(r.x0 - (bw - p), r.x1 - p + 1))
        py = uy + rng.integers(0, bh - p + 1, size=n)
        px = ux + rng.integers(0, bw - p + 1, size=n)
        keep = (py >= r.y0) & (py <= r.y1 - p) & (px >= r.x0) & (px <= r.x1 - p)
        py, px = py[keep], px[keep]
        if py.size == 0:
            return
        self.patches_drawn += int(py.size)
        y0, y1 = max(uy, r.y0), min(uy + bh, r.y1)
        x0, x1 = max(ux, r.x0), min(ux + bw, r.x1)
        ys, xs = slice(y0, y1), slice(x0, x1)
        img = _read(fr.image, ys, xs)
        bad = ~np.isfinite(img)
        if fr.mask is not None:
            bad |= _read(fr.mask, ys, xs) != 0
        norm = normalise(img, fr.stats, bad)
        if fr.target is not None:
            tgt = _read(fr.target, ys, xs)
            no_target = bad | ~np.isfinite(tgt)
            tnorm = normalise(tgt, fr.stats, no_target)
            tnorm[no_target] = np.nan
            norm = np.stack([norm, tnorm])
        self.blocks_read += 1
        smooth = None
        if self.sky_keep < 1.0:
            smooth = uniform_filter(norm if norm.ndim == 2 else norm[0], size=3, mode="nearest")
        unusable = bad if norm.ndim == 2 else bad | ~np.isfinite(norm[1])
        for yy, xx in zip(py - y0, px - x0, strict=True):
            b = bad[yy : yy + p, xx : xx + p]
            if unusable[yy : yy + p, xx : xx + p].mean() > self.max_bad_fraction:
                self.patches_skipped += 1
                continue
            if (
                smooth is not None
                and smooth[yy : yy + p, xx : xx + p].max() <= self.source_threshold
                and rng.random() >= self.sky_keep
            ):
                self.sky_patches_dropped += 1
                continue
            self._buffer_x.append(norm[..., yy : yy + p, xx : xx + p])
            self._buffer_b.append(b)
            self._sources.append((r.frame, int(yy + y0), int(xx + x0)))

    def sample(
        self, n: int, *, return_sources: bool = False, max_empty_reads: int = 1000
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, list]:
        """Draw ``n`` patches.

        Parameters
        ----------
        n : int
            Number of patches.
        return_sources : bool, optional
            Also return where each patch lies. Default False.
        max_empty_reads : int, optional
            Give up after this many windows in a row without an acceptable patch.

        Returns
        -------
        patches : float32 Tensor (n, 1, P, P), or (n, 2, P, P) with targets
            Normalised patches (bad pixels are 0); with Noise2Noise targets the second
            channel is the normalised target (NaN where there is none).
        bad : bool Tensor (n, 1, P, P)
            True at bad pixels.
        sources : list of (frame index, y, x), only with ``return_sources``
            Where each patch's top-left corner lies.

        Raises
        ------
        RuntimeError
            If ``max_empty_reads`` windows in a row give no acceptable patch (the frames are
            almost entirely masked for this ``max_bad_fraction``).
        """
        empty = 0
        while len(self._buffer_x) < n:
            before = len(self._buffer_x)
            self._read_block()
            empty = 0 if len(self._buffer_x) > before else empty + 1
            if empty >= max_empty_reads:
                raise RuntimeError(
                    f"{max_empty_reads} reads in a row gave no patch with a bad-pixel fraction "
                    f"<= {self.max_bad_fraction}: are the frames almost entirely masked?"
                )
        xs, self._buffer_x = self._buffer_x[:n], self._buffer_x[n:]
        bs, self._buffer_b = self._buffer_b[:n], self._buffer_b[n:]
        src, self._sources = self._sources[:n], self._sources[n:]
        x = np.stack(xs)
        x = torch.from_numpy(x[:, None] if x.ndim == 3 else x)
        b = torch.from_numpy(np.stack(bs)[:, None])
        if return_sources:
            return x, b, src
        return x, b

    def noise_of(self, sources: Sequence[tuple[int, int, int]]) -> torch.Tensor | None:
        """Return the noise model of each patch's frame, or None when no frame has one.

        Parameters
        ----------
        sources : sequence of (frame index, y, x)
            Where the patches lie (:meth:`sample` with ``return_sources``).

        Returns
        -------
        float32 Tensor (n, 2) or None
            Per patch ``[sky_variance, noise_scale]`` (:class:`FrameNoise`), NaN for a
            frame without one.
        """
        if all(f.noise is None for f in self.frames):
            return None
        rows = [(np.nan, np.nan) if (nz := self.frames[k].noise) is None
                else (nz.sky_variance, nz.noise_scale) for k, _, _ in sources]
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 2)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches without end.

        Parameters
        ----------
        batch_size : int
            Patches per batch.

        Yields
        ------
        tuple of Tensor
            ``(patches, bad)`` as :meth:`sample` returns them.
        """
        while True:
            yield self.sample(batch_size)


# ---------------------------------------------------------------------- validation


@dataclass
class ValidationSet:
    """Fixed validation patches with a fixed blind-spot mask.

    Attributes
    ----------
    inputs : Tensor (n, 1, P, P)
        Blind-spot-masked patches (what the network sees).
    originals : Tensor (n, 1, P, P)
        The unmasked patches (the loss targets).
    targets : bool Tensor (n, 1, P, P)
        Where the loss is computed.
    noise : Tensor (n, 2) or None
        Each patch's frame noise model ``[sky_variance, noise_scale]``
        (:meth:`PatchSampler.noise_of`), or None.
    """

    inputs: torch.Tensor
    originals: torch.Tensor
    targets: torch.Tensor
    noise: torch.Tensor | None = None

    def __len__(self) -> int:
        """Return the number of patches.

        Returns
        -------
        int
            ``n``.
        """
        return int(self.inputs.shape[0])

    def to(self, device: torch.device | str) -> ValidationSet:
        """Copy the set to a device.

        Parameters
        ----------
        device : torch.device or str
            The device.

        Returns
        -------
        ValidationSet
            The same patches and targets on ``device``.
        """
        return ValidationSet(
            self.inputs.to(device), self.originals.to(device), self.targets.to(device),
            None if self.noise is None else self.noise.to(device),
        )

    @torch.no_grad()
    def output_offset(self, model: torch.nn.Module, batch_size: int = 64) -> float:
        """Fit the maximum-likelihood shift of the network's (prior-)mean output.

        ``δ = Σ (y − μ)/v / Σ 1/v`` over the target pixels (``v = 1`` for plain N2V,
        ``σ_p² + σ_n²`` for the Gaussian posterior): the one-parameter refit of the output
        bias. The model is switched to eval mode and back.

        Parameters
        ----------
        model : torch.nn.Module
            The bare U-Net.
        batch_size : int, optional
            Patches per forward pass. Default 64.

        Returns
        -------
        float
            ``δ`` in normalised units; 0 when there is no target.
        """
        was_training = model.training
        model.eval()
        num = torch.zeros((), dtype=torch.float64)
        den = torch.zeros((), dtype=torch.float64)
        try:
            for i in range(0, len(self), batch_size):
                sl = slice(i, i + batch_size)
                t = self.targets[sl].to(torch.bool)
                out = model(self.inputs[sl])
                if getattr(model.config, "posterior", "none") == "gaussian":
                    mean, var_p = model.prior(out)
                    inv = 1.0 / (var_p + model.noise_variance(mean))
                else:
                    mean, inv = out.float(), torch.ones_like(out, dtype=torch.float32)
                resid = self.originals[sl].float() - mean
                num += torch.where(t, resid * inv, torch.zeros_like(inv)).sum().double().cpu()
                den += torch.where(t, inv, torch.zeros_like(inv)).sum().double().cpu()
        finally:
            model.train(was_training)
        return float(num / den) if float(den) > 0 else 0.0

    @torch.no_grad()
    def loss(self, model: torch.nn.Module, batch_size: int = 64) -> float:
        """Return the mean blind-spot loss over all target pixels.

        The MSE for a plain N2V network, the Gaussian NLL for a Gaussian-posterior one; the
        model is switched to eval mode and back.

        Parameters
        ----------
        model : torch.nn.Module
            The bare U-Net.
        batch_size : int, optional
            Patches per forward pass. Default 64.

        Returns
        -------
        float
            The loss (normalised units).
        """
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for i in range(0, len(self), batch_size):
                sl = slice(i, i + batch_size)
                t = self.targets[sl]
                n = int(t.sum())
                pred = model(self.inputs[sl])
                total += float(blind_spot_loss(model, pred, self.originals[sl], t)) * n
                count += n
        finally:
            model.train(was_training)
        return total / max(count, 1)


def make_validation_set(
    frames: Sequence[Any],
    n_patches: int,
    patch_size: int = DEFAULT_PATCH_SIZE,
    *,
    regions: Sequence[Region] | None = None,
    seed: int = 12345,
    masked_fraction: float = DEFAULT_MASKED_FRACTION,
    radius: int = DEFAULT_RADIUS,
    strategy: Strategy = "uniform",
    max_bad_fraction: float = 0.25,
    sky_keep: float = 1.0,
    source_threshold: float = 10.0,
    struct_axes: str = "",
    struct_half_width: int = 1,
) -> ValidationSet:
    """Draw ``n_patches`` validation patches once (seeded) and blind-spot mask them once.

    Frames with Noise2Noise targets give unmasked patches whose ``originals`` are the
    targets (0 where there is none) and whose ``targets`` are the pixels with a target.

    ``sky_keep``/``source_threshold`` sample the validation patches like the training
    patches (see :class:`PatchSampler`): a uniformly drawn set is almost all sky, its loss
    is dominated by sky noise and cannot tell epochs apart on the sources, which then makes
    best-epoch selection and the LR schedule blind to source fidelity.

    Parameters
    ----------
    frames : sequence of Frame or (image, mask, FrameStats[, name])
        The frames to draw from.
    n_patches : int
        Number of patches.
    patch_size : int, optional
        Patch side in px. Default :data:`DEFAULT_PATCH_SIZE`.
    regions : sequence of Region, optional
        Where patches may lie (default: whole frames).
    seed : int, optional
        Seed of the patch draw and of the mask.
    masked_fraction, radius, strategy
        Blind-spot masking, as :func:`~pausdenoise.n2v.masking.apply_blind_spot`.
    max_bad_fraction, sky_keep, source_threshold
        Patch selection, as :class:`PatchSampler`.
    struct_axes, struct_half_width
        structN2V masking of correlated noise, as
        :func:`~pausdenoise.n2v.masking.apply_blind_spot` (default: none).

    Returns
    -------
    ValidationSet
        The masked patches, their originals and the target map.
    """
    sampler = PatchSampler(
        frames, patch_size, regions=regions, max_bad_fraction=max_bad_fraction, seed=seed,
        sky_keep=sky_keep, source_threshold=source_threshold,
    )
    x, bad, sources = sampler.sample(n_patches, return_sources=True)
    noise = sampler.noise_of(sources)
    if x.shape[1] == 2:  # Noise2Noise: the unmasked image, scored against its target
        has_target = torch.isfinite(x[:, 1:]) & ~bad
        return ValidationSet(x[:, :1].clone(), torch.nan_to_num(x[:, 1:], nan=0.0), has_target,
                             noise)
    gen = torch.Generator().manual_seed(seed)
    masked, targets = apply_blind_spot(
        x, bad, masked_fraction=masked_fraction, radius=radius, strategy=strategy, generator=gen,
        struct_axes=struct_axes, struct_half_width=struct_half_width,
    )
    return ValidationSet(masked, x, targets, noise)
