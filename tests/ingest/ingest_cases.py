"""Shared makers for the ingest tests: PAUS-layout frames written as FITS (big-endian
float32 with NaN/Inf, uint8 masks, optional truth) and the small-chunk configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from pausdenoise import paus_layout
from pausdenoise.ingest import IngestConfig
from pausdenoise.maskbits import MaskBit

SHAPE = (48, 40)
ODD_NAN = np.array([0x7FC0_ABCD], dtype=np.uint32).view(np.float32)[0]


def paus_header(expnum: int, ccd: int, band: str = "NB455") -> fits.Header:
    h = fits.Header()
    h["EXPNUM"] = expnum
    h["CCD"] = ccd
    h["FILTER"] = band
    h["EXPTIME"] = 90.0
    h["GAIN"] = 0.65
    h["RDNOISE"] = 9.1
    h["ZP"] = 1.25 + 0.001 * expnum
    h["ZPERR"] = 0.012
    h["SATURATE"] = 200000.0
    h["MJD-OBS"] = 58000.5
    h["AIRMASS"] = 1.11
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"] = 20.5, 24.5
    h["CRVAL1"], h["CRVAL2"] = 150.0 + 0.01 * ccd, 2.0
    h["CD1_1"], h["CD1_2"] = -7.36e-5, 0.0
    h["CD2_1"], h["CD2_2"] = 0.0, 7.36e-5
    return h


def write_paus_frame(
    root: Path,
    expnum: int,
    ccd: int,
    *,
    shape: tuple[int, int] = SHAPE,
    band: str = "NB455",
    truth: bool = False,
    seed: int | None = None,
    drop: tuple[str, ...] = (),
    mask_shape: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """One PAUS-layout frame (big-endian float32 image with NaN/Inf, uint8 mask)."""
    rng = np.random.default_rng(expnum * 100 + ccd if seed is None else seed)
    image = (500 + rng.normal(0, 20, shape)).astype(np.float32)
    image[2, 3] = ODD_NAN
    image[4, 5] = np.inf
    mask = np.zeros(mask_shape or shape, dtype=np.uint8)
    mask[:, 6] = MaskBit.BAD_COLUMN
    mask[7, 8] = MaskBit.COSMIC_RAY
    mask[4, 5] = MaskBit.SATURATED
    header = paus_header(expnum, ccd, band)
    for key in drop:
        del header[key]
    root.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(image.astype(">f4"), header=header).writeto(
        paus_layout.image_path(root, expnum, ccd), overwrite=True
    )
    fits.PrimaryHDU(mask).writeto(paus_layout.mask_path(root, expnum, ccd), overwrite=True)
    out = {"image": image, "mask": mask}
    if truth:
        t = (500 + rng.normal(0, 1, shape)).astype(np.float32)
        p = paus_layout.truth_path(root, expnum, ccd)
        p.parent.mkdir(exist_ok=True)
        fits.PrimaryHDU(t).writeto(p, overwrite=True)
        out["truth"] = t
    return out


def make_paus_dir(tmp_path: Path) -> tuple[Path, dict]:
    """Four PAUS frames (exposures 101, 102 x CCDs 1, 2; truth for 101/1) under ``paus/``."""
    root = tmp_path / "paus"
    frames = {}
    for e in (101, 102):
        for c in (1, 2):
            frames[(e, c)] = write_paus_frame(
                root, e, c, band=f"NB{445 + 10 * c}", truth=(e, c) == (101, 1)
            )
    return root, frames


def small_config(**kw) -> IngestConfig:
    return IngestConfig(chunks=(32, 32), **kw)
