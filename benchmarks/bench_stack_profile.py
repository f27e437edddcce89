"""Profile-weighted fluxes with the profile from the other exposures' stack, against truth.

The profile-weighted estimator of :mod:`pausdenoise.photometry.profile` takes its profile ``p``
from the catalogue shape convolved with the frame's PSF. The other way to get a profile that
does not depend on the noise of the exposure being measured is an image of the source from
the *other* exposures of the band. This benchmark measures that alternative on a finished
run with injected galaxies seen in several exposures (``inject.share: sky``; the demo, or the
12-CCD injection benchmark) and prints a RESULTS.md section comparing, per I_auto bin:

* ``model_profile``: the pipeline's ``flux_prof`` (catalogue shape ⊗ Moffat PSF);
* ``stack_profile_denoised``: ``p`` = the leave-one-out stack of the other exposures'
  *denoised* images (:func:`pausdenoise.stack.stack_frames` onto the measured frame's grid,
  sky-subtracted), cut on the same stamp as the model profile, negative pixels set to 0,
  normalised to unit sum over the stamp;
* ``stack_profile_raw``: the same from the other exposures' *raw* images.

For a stack profile the flux is ``F̂ = Σ p (y − b) / Σ p²`` over the usable stamp pixels of
the measured raw frame (``b`` its annulus sky), with the error
``σ̂² = V/Σp² + (Σp/Σp²)² σ_b² + F̂⁺ Σp³ / (gain (Σp²)²)`` (``V``, ``σ_b²`` as for the model
profile). A unit-sum stamp misses the light beyond the stamp, and the stack's seeing is not
the measured exposure's, so one constant per frame and estimator (median F̂ / F_true of the
frame's bright injections, I_auto < ``--bright``) is divided out, the bright-source aperture
correction a survey would fit per exposure. Rows are the injected
galaxies only; flagged model-profile rows and stamps off the frame are counted and left out;
intervals resample whole galaxies (all their exposures together).

Usage (project venv)::

    python benchmarks/bench_stack_profile.py --out bench-output/inject-2k --append
    python benchmarks/bench_stack_profile.py --out demo-output
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

try:  # run from a checkout without installing the package
    import pausdenoise  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pausdenoise import store as st
from pausdenoise.config import load_config
from pausdenoise.inject.metrics import _median_ci  # the injection tables' cluster bootstrap
from pausdenoise.photometry.driver import read_photometry
from pausdenoise.photometry.profile import stamp_radii
from pausdenoise.stack import stack_frames
from pausdenoise.stats import sigma68

HERE = Path(__file__).resolve().parent
BINS = np.arange(17.0, 25.0)
ESTIMATORS = ("model_profile", "stack_profile_denoised", "stack_profile_raw")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run directory (inject done)")
    p.add_argument("--config", type=Path, default=HERE.parent / "configs" / "demo.yaml",
                   help="the run's configuration (photometry settings)")
    p.add_argument("--bright", type=float, default=19.0,
                   help="I_auto below which the per-band constant is fitted")
    p.add_argument("--n-boot", type=int, default=300, help="bootstrap resamples")
    p.add_argument("--append", action="store_true", help="append the section to RESULTS.md")
    return p.parse_args(argv)


def _frame_data(run: Path, frame: str) -> dict:
    """Arrays and attributes of one injected frame (its WCS from the run's own store)."""
    inj = st.open_store(run / "inject" / "store.zarr")["frames"][frame]
    attrs = st.frame_attrs(run / "store.zarr", frame)
    return {"image": np.asarray(inj["image"][:], dtype=np.float64),
            "denoised": np.asarray(inj["denoised"][:], dtype=np.float64),
            "mask": np.asarray(inj["mask"][:]) if "mask" in inj else None,
            "wcs": st.frame_wcs(run / "store.zarr", frame), "attrs": attrs,
            "gain": st.frame_gain(attrs, frame)}


def _stack_flux(stack: np.ndarray, data: dict, rows: pd.DataFrame, radii: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Profile-weighted flux and error of each row with ``p`` cut from ``stack`` (ADU)."""
    image, mask = data["image"], data["mask"]
    ny, nx = image.shape
    flux = np.full(len(rows), np.nan)
    err = np.full(len(rows), np.nan)
    for i, r in enumerate(rows.itertuples()):
        ix, iy, rad = round(r.x), round(r.y), int(radii[i])
        if ix - rad < 0 or iy - rad < 0 or ix + rad >= nx or iy + rad >= ny:
            continue
        sl = (slice(iy - rad, iy + rad + 1), slice(ix - rad, ix + rad + 1))
        p = np.clip(np.nan_to_num(stack[sl]), 0.0, None)
        if p.sum() <= 0:
            continue
        p = p / p.sum()
        y = image[sl] - r.bkg
        good = np.isfinite(y) & ((mask[sl] == 0) if mask is not None else True)
        p_g, y_g = p[good], y[good]
        s1, s2, s3 = p_g.sum(), (p_g**2).sum(), (p_g**3).sum()
        if s2 <= 0:
            continue
        f = float((p_g * y_g).sum() / s2)
        var_b = r.bkg_std**2 / max(r.bkg_n, 1)
        var = r.bkg_std**2 / s2 + (s1 / s2) ** 2 * var_b + max(f, 0.0) * s3 / (data["gain"] * s2**2)
        flux[i], err[i] = f, np.sqrt(var)
    return flux, err


def measure(run: Path, config_path: Path) -> pd.DataFrame:
    """Every estimator's flux and error for every injected row with its truth."""
    pcfg = load_config(config_path).photometry
    truth = pd.read_parquet(run / "inject" / "truth.parquet")
    phot = read_photometry(run / "inject" / "photometry")
    phot = phot[(phot["kind"] == "raw") & phot["ref_id"].isin(truth["ref_id"])]
    keys = ["ref_id", "expnum", "ccd"]
    rows = truth.merge(phot[[*keys, "x", "y", "bkg", "bkg_std", "bkg_n", "flux_prof",
                             "flux_prof_err", "flags_prof", "psf_fwhm_px"]], on=keys,
                       suffixes=("_truth", ""))
    out = []
    for (_band, _ccd), grp in rows.groupby(["band", "ccd"]):
        frames = sorted({st.frame_id(int(e), int(c)) for e, c in zip(grp["expnum"], grp["ccd"],
                                                                      strict=True)})
        if len(frames) < 2:
            continue
        data = [_frame_data(run, f) for f in frames]
        for k, frame in enumerate(frames):
            e, c = st.parse_frame_id(frame)
            sel = grp[(grp["expnum"] == e) & (grp["ccd"] == c)].copy()
            fwhm = float(np.nanmedian(sel["psf_fwhm_px"]))  # the PSF the photometry used
            hlr_px = sel["profile_hlr"].to_numpy(float) / pcfg.pixel_scale
            radii = stamp_radii(hlr_px, sel["profile_q"].to_numpy(float), fwhm, pcfg)
            for kind in ("denoised", "raw"):
                stack, _ = stack_frames([d["denoised" if kind == "denoised" else "image"]
                                         for d in data], [d["mask"] for d in data], None,
                                        [d["wcs"] for d in data], data[k]["wcs"],
                                        data[k]["image"].shape, exclude=k)
                f, s = _stack_flux(stack, data[k], sel, radii)
                sel[f"f_stack_{kind}"], sel[f"e_stack_{kind}"] = f, s
            out.append(sel)
    return pd.concat(out, ignore_index=True)


def _estimates(m: pd.DataFrame, bright: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(F̂, σ̂) per estimator; stack fluxes divided by their bright-source constant per frame."""
    res = {"model_profile": (np.where(m["flags_prof"] == 0, m["flux_prof"], np.nan),
                             m["flux_prof_err"].to_numpy(float))}
    for kind in ("denoised", "raw"):
        f = m[f"f_stack_{kind}"].to_numpy(float).copy()
        e = m[f"e_stack_{kind}"].to_numpy(float).copy()
        frame = m["expnum"].astype(str) + "_" + m["ccd"].astype(str)
        for fr in frame.unique():
            b = (frame == fr).to_numpy()
            ref = b & (m["I_auto"] < bright).to_numpy() & np.isfinite(f)
            c = float(np.median(f[ref] / m["flux_true_adu"].to_numpy(float)[ref]))
            f[b], e[b] = f[b] / c, e[b] / c
        res[f"stack_profile_{kind}"] = (f, e)
    return res


def table(m: pd.DataFrame, bright: float, n_boot: int) -> pd.DataFrame:
    """Bias, pulls and scatter per estimator and I_auto bin (all bands together)."""
    rng = np.random.default_rng(0)
    est = _estimates(m, bright)
    truth = m["flux_true_adu"].to_numpy(float)
    mag = m["I_auto"].to_numpy(float)
    ids = m["ref_id"].to_numpy()
    rows = []
    for name in ESTIMATORS:
        f, e = est[name]
        for lo in BINS[:-1]:
            sel = (mag >= lo) & (mag < lo + 1)
            ok = sel & np.isfinite(f) & np.isfinite(e) & (e > 0)
            rel = (f[ok] - truth[ok]) / truth[ok]
            med, ci_lo, ci_hi = _median_ci(rel, ids[ok], n_boot if ok.sum() > 10 else 0, rng)
            rows.append({"estimator": name, "bin": f"{lo:.0f}-{lo + 1:.0f}", "n": int(ok.sum()),
                         "n_left_out": int(sel.sum() - ok.sum()),
                         "median_rel_bias": med, "ci_lo": ci_lo, "ci_hi": ci_hi,
                         "pull_sigma68": sigma68((f[ok] - truth[ok]) / e[ok]) if ok.any()
                         else np.nan,
                         "rel_scatter": sigma68(rel) if ok.any() else np.nan})
    return pd.DataFrame(rows)


def markdown(tab: pd.DataFrame, m: pd.DataFrame, command: str, seconds: float) -> str:
    """The table as a RESULTS.md section."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    when = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"
    lines = [f"## Profile from the other exposures' stack ({when} UTC)", "",
             f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"load {load:.1f}  ", f"command: `{command}`  ",
             f"{m['ref_id'].nunique()} injected galaxies, {len(m)} galaxy-exposures, bands "
             f"{', '.join(sorted(m['band'].unique()))}; {seconds:.0f} s", "",
             "| estimator | I_auto | n (left out) | median bias % [95 % CI] | pull σ68 "
             "| σ68(ΔF/F) |", "|---|---|---:|---|---:|---:|"]
    for r in tab.itertuples():
        lines.append(f"| {r.estimator} | {r.bin} | {r.n} ({r.n_left_out}) | "
                     f"{100 * r.median_rel_bias:+.1f} [{100 * r.ci_lo:+.1f}, "
                     f"{100 * r.ci_hi:+.1f}] | {r.pull_sigma68:.2f} | {r.rel_scatter:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/bench_stack_profile.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    t0 = time.perf_counter()
    m = measure(args.out, args.config)
    tab = table(m, args.bright, args.n_boot)
    text = markdown(tab, m, command, time.perf_counter() - t0)
    print(text)
    if args.append:
        with (HERE / "RESULTS.md").open("a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
