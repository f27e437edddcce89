"""Training pairs for the cGAN: single-exposure cutouts → cutouts of the stack of the others.

For each exposure ``i`` of a pointing (all frames of one band covering the same sky):

- **input**: exposure ``i`` itself, normalised as the N2V path does
  (:func:`pausdenoise.n2v.normalise.normalise`): ``(image_i − sky_i) / σ_i`` with the frame's
  sigma-clipped median sky and MAD σ, masked pixels set to 0;
- **target**: the stack of the *other* exposures (``exclude=i``), resampled onto exposure
  ``i``'s grid, brought to its zero-point, sky-subtracted
  (:func:`pausdenoise.stack.stack_frames`), and divided by the same ``σ_i``.

Exposure ``i`` never enters its own target: its noise would otherwise be in both, and the
generator would learn to copy noise. Input and target share one scale (``σ_i``, ADU at
``ZP_i``), so the inverse at inference is ``output · σ_i + sky_i``
(:func:`pausdenoise.n2v.normalise.denormalise`): the generated image is in the single frame's
ADU, sky included, like the N2V-denoised image. The method name stored in checkpoints is
:data:`PAIR_NORMALISATION`.

Cutouts are ``size × size`` (128) on a ``stride`` (100) grid — 28 px overlap — covering the
whole frame (the last row/column of cutouts is shifted to end at the frame edge). ``valid``
marks pixels good in the single frame *and* covered by the target stack; the L1 loss is
computed on valid pixels only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.wcs import WCS

from pausdenoise.n2v.normalise import (
    NORMALISATION_METHOD,
    FrameStats,
    frame_statistics,
    normalise,
)
from pausdenoise.stack import StackConfig, stack_frames

#: Stored in checkpoint metadata: how inputs/targets were scaled (see the module docstring).
PAIR_NORMALISATION = f"single-frame-sky-sigma/{NORMALISATION_METHOD}"


@dataclass
class CutoutPairs:
    """A set of cutout pairs (all arrays ``float32``/``bool`` with shape ``(n, 1, s, s)``).

    Attributes
    ----------
    inputs : ndarray
        Normalised single-exposure cutouts.
    targets : ndarray
        Normalised cutouts of the stack of the other exposures.
    valid : ndarray of bool
        Pixels that enter the loss.
    source : ndarray of int, shape (n,)
        Index of the exposure each input comes from.
    origins : ndarray of int, shape (n, 2)
        ``(y, x)`` of each cutout's corner in its exposure.
    target_members : dict[int, tuple[int, ...]]
        For each source exposure, the exposures stacked into its target.
    stats : dict[int, FrameStats]
        The normalisation of each source exposure.
    """

    inputs: np.ndarray
    targets: np.ndarray
    valid: np.ndarray
    source: np.ndarray
    origins: np.ndarray
    target_members: dict[int, tuple[int, ...]] = field(default_factory=dict)
    stats: dict[int, FrameStats] = field(default_factory=dict)

    def __len__(self) -> int:
        """Return the number of pairs.

        Returns
        -------
        int
            ``n``.
        """
        return int(self.inputs.shape[0])

    @staticmethod
    def concatenate(parts: Sequence[CutoutPairs]) -> CutoutPairs:
        """Join pair sets (their exposure indices must refer to the same frame list).

        Parameters
        ----------
        parts : sequence of CutoutPairs
            The pair sets, in order.

        Returns
        -------
        CutoutPairs
            All pairs; ``target_members`` and ``stats`` merged.

        Raises
        ------
        ValueError
            If ``parts`` is empty.
        """
        if not parts:
            raise ValueError("no pair sets to concatenate")
        members: dict[int, tuple[int, ...]] = {}
        stats: dict[int, FrameStats] = {}
        for p in parts:
            members.update(p.target_members)
            stats.update(p.stats)
        return CutoutPairs(
            inputs=np.concatenate([p.inputs for p in parts]),
            targets=np.concatenate([p.targets for p in parts]),
            valid=np.concatenate([p.valid for p in parts]),
            source=np.concatenate([p.source for p in parts]),
            origins=np.concatenate([p.origins for p in parts]),
            target_members=members,
            stats=stats,
        )


def cutout_origins(shape: tuple[int, int], size: int = 128, stride: int = 100) -> np.ndarray:
    """Place ``size`` cutouts every ``stride`` px so that they cover ``shape``.

    The last cutout along each axis is moved back to end at the edge (so it overlaps its
    neighbour by more than ``size − stride``).

    Parameters
    ----------
    shape : (int, int)
        Frame shape ``(ny, nx)`` in px.
    size : int, optional
        Cutout side in px. Default 128.
    stride : int, optional
        Step between cutouts in px, ``0 < stride <= size``. Default 100.

    Returns
    -------
    ndarray of int64, shape (n, 2)
        0-based ``(y, x)`` pixel corners, row-major.

    Raises
    ------
    ValueError
        If the stride is out of range or the frame is smaller than ``size``.
    """
    if not 0 < stride <= size:
        raise ValueError(f"need 0 < stride <= size, got stride={stride}, size={size}")

    def axis(n: int) -> list[int]:
        if n < size:
            raise ValueError(f"frame axis of {n} px is smaller than the cutout size {size}")
        starts = list(range(0, n - size + 1, stride))
        if starts[-1] != n - size:
            starts.append(n - size)
        return starts

    ys, xs = axis(shape[0]), axis(shape[1])
    return np.array([(y, x) for y in ys for x in xs], dtype=np.int64).reshape(-1, 2)


def cutout_pairs(
    single: np.ndarray,
    single_mask: np.ndarray | None,
    target: np.ndarray,
    target_weight: np.ndarray,
    stats: FrameStats,
    *,
    source: int = 0,
    size: int = 128,
    stride: int = 100,
    max_pairs: int | None = None,
    seed: int = 0,
) -> CutoutPairs:
    """Cut pairs from one single frame and its (sky-subtracted) target stack, same grid.

    Parameters
    ----------
    single : ndarray (ny, nx)
        The single exposure in ADU (sky included).
    single_mask : ndarray or None
        Its mask (non-zero = bad).
    target : ndarray (ny, nx)
        Stack of the other exposures on the single frame's grid and zero-point, sky-subtracted.
    target_weight : ndarray (ny, nx)
        Its weight map (0 = not covered).
    stats : FrameStats
        The single frame's sky and σ.
    source : int
        Index of the single exposure (recorded).
    size, stride : int
        Cutout side and step (128, 100: 28 px overlap).
    max_pairs : int, optional
        Keep at most this many cutouts, drawn at random (``seed``) without replacement.
    seed : int
        Seed of that draw.

    Returns
    -------
    CutoutPairs
        Inputs and targets in units of the single frame's sky σ.

    Raises
    ------
    ValueError
        If ``target`` or ``target_weight`` is not on the single frame's grid.
    """
    single = np.asarray(single)
    if target.shape != single.shape or target_weight.shape != single.shape:
        raise ValueError(
            f"single {single.shape}, target {target.shape} and weight {target_weight.shape} "
            "must share one grid"
        )
    x = normalise(single, stats, single_mask)
    y = (np.asarray(target, dtype=np.float32) / np.float32(stats.sigma)).astype(np.float32)
    valid = np.asarray(target_weight) > 0
    valid &= np.isfinite(np.asarray(single))
    if single_mask is not None:
        valid &= np.asarray(single_mask) == 0
    y = np.where(valid, y, 0.0).astype(np.float32)
    origins = cutout_origins(single.shape, size, stride)
    if max_pairs is not None and len(origins) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(origins), max_pairs, replace=False)
        origins = origins[np.sort(pick)]

    def cut(a: np.ndarray) -> np.ndarray:
        return np.stack([a[oy : oy + size, ox : ox + size] for oy, ox in origins])[:, None]

    return CutoutPairs(
        inputs=cut(x),
        targets=cut(y),
        valid=cut(valid),
        source=np.full(len(origins), source, dtype=np.int64),
        origins=origins,
        stats={source: stats},
    )


def make_pairs(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None,
    weights: Sequence[np.ndarray | None] | None,
    wcs_list: Sequence[WCS],
    *,
    zps: Sequence[float] | None = None,
    stack_config: StackConfig | None = None,
    sources: Sequence[int] | None = None,
    size: int = 128,
    stride: int = 100,
    max_pairs_per_frame: int | None = None,
    seed: int = 0,
) -> CutoutPairs:
    """Make leave-one-out pairs from the frames of one pointing and band.

    For each source exposure ``i`` (default: all), the target is
    ``stack_frames(..., ref_wcs=wcs_i, ref_shape=shape_i, zp_ref=zps[i], exclude=i)``.

    Parameters
    ----------
    images : sequence of ndarray (ny, nx)
        The exposures in ADU (sky included).
    masks : sequence of ndarray or None, or None
        Their masks (non-zero = bad).
    weights : sequence of ndarray or None, or None
        Their weight maps, as :func:`pausdenoise.stack.stack_frames` takes them.
    wcs_list : sequence of WCS
        Their WCS.
    zps : sequence of float, optional
        Their zero-points (µJy/ADU); the target is put on the source exposure's.
    stack_config : StackConfig, optional
        How the targets are stacked.
    sources : sequence of int, optional
        The exposures that serve as inputs (default: all).
    size, stride : int
        Cutout side and step in px (:func:`cutout_pairs`).
    max_pairs_per_frame : int, optional
        Keep at most this many cutouts per source exposure.
    seed : int
        Seed of those draws (``seed + i`` for exposure ``i``).

    Returns
    -------
    CutoutPairs
        The pairs of all source exposures.

    Raises
    ------
    ValueError
        If there are fewer than two frames.
    """
    n = len(images)
    if n < 2:
        raise ValueError("need at least two exposures: the target is the stack of the others")
    stack_config = stack_config or StackConfig()
    sources = list(range(n)) if sources is None else [int(s) for s in sources]
    parts = []
    for i in sources:
        image = np.asarray(images[i])
        mask = None if masks is None else masks[i]
        stats = frame_statistics(image, mask)
        target, wmap = stack_frames(
            images,
            masks,
            weights,
            wcs_list,
            wcs_list[i].celestial,
            image.shape,
            stack_config,
            exclude=i,
            zps=zps,
            zp_ref=None if zps is None else float(zps[i]),
        )
        part = cutout_pairs(
            image,
            mask,
            target,
            wmap,
            stats,
            source=i,
            size=size,
            stride=stride,
            max_pairs=max_pairs_per_frame,
            seed=seed + i,
        )
        part.target_members = {i: tuple(k for k in range(n) if k != i)}
        parts.append(part)
    return CutoutPairs.concatenate(parts)
