"""cGAN inference on whole frames, lazily and in tiles (``dask.array.map_overlap``).

The pattern is the N2V path's: each block is normalised with the *frame's* statistics
(never per tile), passed through :func:`pausdenoise.gan.models.predict_array` (the one
inference primitive, which pads right/bottom by reflection to ``2**depth``), and mapped back
to ADU with :func:`pausdenoise.n2v.normalise.denormalise` (``output · σ + sky``: the result is
the estimated stack in the single frame's ADU and zero-point, sky level added back).

Tiling is exact when

- the halo is at least the generator's receptive-field radius and a multiple of
  ``2**depth`` (default :meth:`Generator.halo`), and
- every chunk boundary is a multiple of ``2**depth`` (stride-2 layers make the output depend
  on where the 2-pixel grid starts).

``boundary="none"``: tiles at the image edge are *not* padded by dask, so they end where the
image ends and ``predict_array`` pads them exactly as it pads the whole image; the
convolutions' own zero padding then acts at the same pixels in both cases.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import torch

from pausdenoise.gan.models import Generator, predict_array
from pausdenoise.n2v.normalise import FrameStats, denormalise, normalise


def generate_array(
    generator: Generator,
    image: np.ndarray,
    stats: FrameStats,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Run the generator on a whole frame at once.

    Parameters
    ----------
    generator : Generator
        The generator (in ``eval()`` mode for deterministic output).
    image : ndarray (ny, nx)
        The single exposure in ADU (sky included).
    stats : FrameStats
        The frame's robust sky and σ in ADU.
    mask : ndarray, optional
        Non-zero = bad pixel (set to the sky before the network sees it).

    Returns
    -------
    ndarray of float32 (ny, nx)
        The generated (stack-like) image in ADU.
    """
    x = normalise(image, stats, mask)
    device = next(generator.parameters()).device
    t = torch.from_numpy(np.ascontiguousarray(x))[None, None].to(device)
    out = predict_array(generator, t)[0, 0].cpu().numpy()
    return denormalise(out, stats)


def _merge_small_tail(chunks: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    """Merge a last chunk smaller than ``minimum`` into its neighbour (origins unchanged).

    Returns
    -------
    tuple of int
        The chunk sizes.
    """
    chunks = tuple(chunks)
    if len(chunks) > 1 and chunks[-1] < minimum:
        chunks = (*chunks[:-2], chunks[-2] + chunks[-1])
    return chunks


def check_tiling(chunks: tuple[tuple[int, ...], ...], halo: int, generator: Generator) -> None:
    """Check that tiles with this halo give the whole-image output.

    Parameters
    ----------
    chunks : tuple of tuple of int
        Dask chunk sizes (px) along each axis of the frame.
    halo : int
        Overlap of the tiles (px).
    generator : Generator
        The generator (its ``size_multiple`` and receptive field).

    Raises
    ------
    ValueError
        If the halo is smaller than the receptive-field radius or not a multiple of
        ``2**depth``, or a chunk (but the last) is not a multiple of ``2**depth``, or a
        chunk is smaller than the halo.
    """
    m = generator.config.size_multiple
    r = generator.receptive_field_radius()
    if halo < r:
        raise ValueError(f"halo {halo} px < generator receptive-field radius {r} px: seams")
    if halo % m:
        raise ValueError(f"halo {halo} px is not a multiple of 2**depth = {m}")
    for axis, cs in enumerate(chunks):
        if any(c % m for c in cs[:-1]):
            raise ValueError(
                f"chunks along axis {axis} {cs} are not multiples of 2**depth = {m} "
                "(the last one may be any size)"
            )
        if len(cs) > 1 and min(cs) < halo:
            raise ValueError(f"chunks along axis {axis} {cs} are smaller than the halo {halo}")


def gan_apply(
    image: da.Array,
    stats: FrameStats,
    generator: Generator,
    halo: int | None = None,
    mask: da.Array | None = None,
) -> da.Array:
    """Lazily apply the generator to a frame, tile by tile.

    Parameters
    ----------
    image : dask.array.Array (ny, nx)
        The single exposure in ADU (sky included).
    stats : FrameStats
        The frame's robust sky and σ (:func:`pausdenoise.n2v.normalise.frame_statistics`).
    generator : Generator
        Put in ``eval()`` mode here; shared by the tasks (forward passes under
        ``torch.no_grad`` are thread-safe).
    halo : int, optional
        Overlap (px); default ``generator.halo()``.
    mask : dask.array.Array, optional
        Non-zero = bad pixel (set to the sky before the network sees it); rechunked like
        ``image``.

    Returns
    -------
    dask.array.Array float32 (ny, nx)
        The generated image in ADU, equal to :func:`generate_array` on the whole frame.

    Raises
    ------
    ValueError
        If ``image`` is not 2-D, ``mask`` has another shape, or the tiling cannot be
        seam-free (:func:`check_tiling`).
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D frame, got shape {image.shape}")
    generator.eval()
    halo = generator.halo() if halo is None else int(halo)
    chunks = tuple(_merge_small_tail(c, halo) for c in image.chunks)
    if chunks != image.chunks:
        image = image.rechunk(chunks)
    check_tiling(image.chunks, halo, generator)
    meta = np.empty((0, 0), dtype=np.float32)

    if mask is None:

        def block(img: np.ndarray) -> np.ndarray:
            return generate_array(generator, img, stats)

        return image.map_overlap(
            block, depth=halo, boundary="none", trim=True, dtype=np.float32, meta=meta
        )

    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {image.shape}")
    mask = mask.rechunk(image.chunks)

    def block_masked(img: np.ndarray, msk: np.ndarray) -> np.ndarray:
        return generate_array(generator, img, stats, msk)

    return da.map_overlap(
        block_masked,
        image,
        mask,
        depth=halo,
        boundary="none",
        trim=True,
        dtype=np.float32,
        meta=meta,
        align_arrays=False,
    )
