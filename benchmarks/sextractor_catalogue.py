"""Write a SExtractor catalogue (CATALOG_TYPE ASCII_HEAD) of one FITS frame with ``sep``.

``sep`` is SExtractor's extraction and photometry as a Python library (``pip install sep``;
not a dependency of pausdenoise). This script stands in for running SExtractor on a frame, to
give the pipeline the kind of image catalogue (pixel positions only) a user brings: global
background on a 64-px mesh, detection at 1.5 σ over 5 pixels (sep's default 3 × 3 filter),
deblending contrast 0.005, Kron radius with ``PHOT_AUTOPARAMS 2.5, 3.5``, ``FLUX_AUTO`` in
that ellipse, ``MAG_AUTO = zero-point − 2.5 log10 FLUX_AUTO``. Columns: NUMBER, X_IMAGE,
Y_IMAGE (1-based, as SExtractor), A_IMAGE, B_IMAGE (px), THETA_IMAGE (degrees counter-clockwise
from +x), KRON_RADIUS, FLUX_AUTO, FLUXERR_AUTO (ADU), MAG_AUTO, FLAGS.

Example (the catalogue of the first SAAO exposure that benchmarks/RESULTS.md uses)::

    python benchmarks/sextractor_catalogue.py data/real/saao-kb13475/AKB13475I0007.fits \\
        bench-output/saao-frame1.cat
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

#: (name, description, unit) of the columns written, in order.
PARAMS = [("NUMBER", "Running object number", ""),
          ("X_IMAGE", "Object position along x", "pixel"),
          ("Y_IMAGE", "Object position along y", "pixel"),
          ("A_IMAGE", "Profile RMS along major axis", "pixel"),
          ("B_IMAGE", "Profile RMS along minor axis", "pixel"),
          ("THETA_IMAGE", "Position angle (CCW/x)", "deg"),
          ("KRON_RADIUS", "Kron apertures in units of A or B", ""),
          ("FLUX_AUTO", "Flux within a Kron-like elliptical aperture", "count"),
          ("FLUXERR_AUTO", "RMS error for AUTO flux", "count"),
          ("MAG_AUTO", "Kron-like elliptical aperture magnitude", "mag"),
          ("FLAGS", "Extraction flags", "")]


def catalogue_lines(image: np.ndarray, threshold: float = 1.5, zero_point: float = 25.0
                    ) -> list[str]:
    """Detect and measure the sources of an image as SExtractor's ASCII_HEAD lines.

    Parameters
    ----------
    image : ndarray (ny, nx)
        The frame, ADU.
    threshold : float
        Detection threshold in units of the background RMS.
    zero_point : float
        Magnitude of a flux of 1 ADU (``MAG_ZEROPOINT``).

    Returns
    -------
    list of str
        The header lines and one line per source with a positive ``FLUX_AUTO``.
    """
    import sep  # optional: only this script needs it

    data = np.ascontiguousarray(image, dtype=np.float64)
    bkg = sep.Background(data, bw=64, bh=64)
    sub = data - bkg
    objs = sep.extract(sub, threshold, err=bkg.globalrms, minarea=5, deblend_cont=0.005)
    x, y, a, b, t = (objs[k] for k in ("x", "y", "a", "b", "theta"))
    kron, _ = sep.kron_radius(sub, x, y, a, b, t, 6.0)
    kron = np.maximum(2.5 * kron, 3.5)
    flux, ferr, fflag = sep.sum_ellipse(sub, x, y, a, b, t, kron, err=bkg.globalrms, subpix=1)
    lines = [f"#{k + 1:4d} {n:<22s} {w:<58s}" + (f" [{u}]" if u else "")
             for k, (n, w, u) in enumerate(PARAMS)]
    number = 0
    for i in np.flatnonzero((flux > 0) & (a > 0) & np.isfinite(kron)):
        number += 1
        lines.append(" ".join([
            str(number), f"{x[i] + 1:.4f}", f"{y[i] + 1:.4f}", f"{a[i]:.4f}", f"{b[i]:.4f}",
            f"{np.degrees(t[i]):.3f}", f"{kron[i]:.3f}", f"{flux[i]:.5g}", f"{ferr[i]:.5g}",
            f"{zero_point - 2.5 * np.log10(flux[i]):.4f}",
            str(int(objs["flag"][i]) | int(fflag[i]))]))
    return lines


def main(argv: list[str] | None = None) -> int:
    """Write the catalogue of one frame.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 when ``sep`` is not installed.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path, help="FITS frame (primary HDU)")
    ap.add_argument("out", type=Path, help="catalogue to write (ASCII_HEAD)")
    ap.add_argument("--threshold", type=float, default=1.5, help="detection threshold, σ")
    ap.add_argument("--zero-point", type=float, default=25.0, help="MAG_ZEROPOINT")
    args = ap.parse_args(argv)
    try:
        import sep  # noqa: F401  (checked here to say what to install)
    except ImportError:
        print("this script needs sep (pip install sep)", file=sys.stderr)
        return 2
    from astropy.io import fits  # astropy: with the frame

    lines = catalogue_lines(fits.getdata(args.image), args.threshold, args.zero_point)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{args.out}: {len(lines) - len(PARAMS)} sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
