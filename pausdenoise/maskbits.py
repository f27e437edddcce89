"""Bit values of the pixel masks, shared by the simulation, ingest and photometry.

A mask pixel of 0 is good; any non-zero value marks the pixel as unusable. The bits say why.
Masks are stored as unsigned integers (``uint8`` unless the input file uses a wider type).
"""

from __future__ import annotations

from enum import IntFlag


class MaskBit(IntFlag):
    """Reasons a pixel is masked (bitwise OR-ed in one mask value)."""

    BAD_COLUMN = 1
    """Defective CCD column (hot or dead)."""
    COSMIC_RAY = 2
    """Cosmic-ray hit."""
    SATURATED = 4
    """Pixel reached the saturation level (ADU)."""
    EDGE = 8
    """Outside the usable CCD area (vignetting, edge rows)."""
    NONFINITE = 16
    """Pixel value was NaN or Inf in the input file (set at ingest)."""
    NODATA = 32
    """No data: the input weight (inverse variance) is 0 at the pixel (set at ingest)."""
    OTHER = 128
    """Any other reason given by an external pipeline's mask."""


def is_good(mask_value: int) -> bool:
    """Return True when a mask value marks a usable pixel (value 0).

    Parameters
    ----------
    mask_value : int
        One pixel's mask value (bits of :class:`MaskBit`).

    Returns
    -------
    bool
        Whether no bit is set.
    """
    return int(mask_value) == 0
