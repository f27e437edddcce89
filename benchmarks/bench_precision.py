"""Reduced-precision inference judged by photometry: bfloat16/float16 vs float32 fluxes.

A per-pixel maximum error says little about science: a bright star's pixel holds thousands
of σ of signal and its own Poisson noise. This benchmark takes a finished pipeline run (its
store, trained checkpoint and catalogue; ``make demo`` writes one to ``demo-output``),
denoises every frame twice with the denoise stage's own per-block path (float32 and the
reduced ``--precision``, same model, same tiling), runs the forced photometry of the PAUS
recipe (:func:`pausdenoise.photometry.measure_frame`) on both outputs and on the raw frame,
and reports, per I_auto bin:

- the aperture-flux difference (reduced − float32) in units of the raw flux error
  ``flux_err`` (its median is the systematic shift, its 99th percentile and maximum the
  spread), and as a fraction of the float32 flux;
- per-pixel differences in units of the frame's sky σ (RMS and maximum), for reference;
- the time of each precision's forward passes.

Rows flagged by the photometry (masked, saturated, edge) are left out, as in the compare
stage. A flux difference ≪ 1 flux error (p99 ≤ 0.1, median ≤ 0.02) adds nothing visible to
σ68 of Δf (1 ⊕ 0.1 = 1.005) and no bias at the 1.3 % level that PAUS tolerates.

Usage::

    python benchmarks/bench_precision.py --run demo-output               # CPU, bfloat16
    python benchmarks/bench_precision.py --run demo-output --device cuda --precision float16
    python benchmarks/bench_precision.py --run demo-output --append      # + RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

try:  # run from a checkout without installing the package
    import pausdenoise  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: I_auto bin edges of the report (the compare stage's default bins, open-ended at both ends)
BINS = (-np.inf, 17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, np.inf)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=Path("demo-output"),
                   help="finished run directory (store.zarr, model/n2v.safetensors, "
                        "survey/catalogue.parquet)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint (default: RUN/model/n2v.safetensors)")
    p.add_argument("--catalogue", type=Path, default=None,
                   help="catalogue Parquet (default: RUN/survey/catalogue.parquet)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["bfloat16", "float16"], default="bfloat16")
    p.add_argument("--frames", type=int, default=None, help="at most this many frames")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    p.add_argument("--append", action="store_true",
                   help="append a dated section to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def flux_differences(
    image: np.ndarray,
    mask: np.ndarray | None,
    outputs: dict[str, np.ndarray],
    apertures: pd.DataFrame,
    attrs: dict,
    reduced: str,
) -> pd.DataFrame:
    """Forced photometry of one frame's raw image and of its float32 / reduced outputs.

    Parameters
    ----------
    image, mask : the raw frame (ADU) and its mask (0 = good).
    outputs : ``{"float32": array, reduced: array}``, denoised frames in ADU.
    apertures : the frame's catalogue rows (pixel positions 0-based, axes in arcsec).
    attrs : the frame's store attributes (``gain`` e⁻/ADU, ``zp``, ``zp_err``, ...).
    reduced : the key of the reduced-precision output.

    Returns
    -------
    DataFrame, one row per unflagged source: ``I_auto``, ``band``, ``flux_f32``, ``flux_red`` (ADU),
    ``flux_err_raw`` (ADU, from the raw frame), ``d_err`` = (red − f32)/flux_err_raw,
    ``d_rel`` = (red − f32)/|f32|.
    """
    from pausdenoise.photometry import measure_frame

    kw = dict(gain=float(attrs["gain"]), zp=float(attrs.get("zp", 1.0)),
              zp_err=float(attrs.get("zp_err", 0.0)), saturate=attrs.get("saturate"),
              expnum=attrs.get("expnum"), ccd=attrs.get("ccd"), band=attrs.get("band"))
    raw = measure_frame(image, mask, apertures, kind="raw", **kw)
    f32 = measure_frame(outputs["float32"], mask, apertures, kind="denoised", **kw)
    red = measure_frame(outputs[reduced], mask, apertures, kind="denoised", **kw)
    ok = ((raw["flags"].to_numpy() == 0) & (f32["flags"].to_numpy() == 0)
          & (red["flags"].to_numpy() == 0) & np.isfinite(raw["flux_err"].to_numpy())
          & (raw["flux_err"].to_numpy() > 0))
    d = red["flux"].to_numpy() - f32["flux"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        out = pd.DataFrame({
            "I_auto": apertures["I_auto"].to_numpy(float),
            "band": str(attrs.get("band", "")),
            "flux_f32": f32["flux"].to_numpy(),
            "flux_red": red["flux"].to_numpy(),
            "flux_err_raw": raw["flux_err"].to_numpy(),
            "d_err": d / raw["flux_err"].to_numpy(),
            "d_rel": d / np.abs(f32["flux"].to_numpy()),
        })
    return out[ok].reset_index(drop=True)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per I_auto bin and overall: n, median / p99 / max of |Δflux|/flux_err, median Δ/f,
    and (when ``rows`` has ``d_cal``) p99 of |Δflux| / the calibrated denoised error."""
    def stats(g: pd.DataFrame, name: str) -> dict:
        a = np.abs(g["d_err"].to_numpy())
        extra = {}
        if "d_cal" in g.columns:
            extra["p99_abs_d_cal"] = (float(np.percentile(np.abs(g["d_cal"]), 99))
                                      if len(g) else np.nan)
        return {"bin": name, "n": len(g), **extra,
                "median_d_err": float(np.median(g["d_err"])) if len(g) else np.nan,
                "p99_abs_d_err": float(np.percentile(a, 99)) if len(g) else np.nan,
                "max_abs_d_err": float(a.max()) if len(g) else np.nan,
                "median_d_rel": float(np.median(g["d_rel"])) if len(g) else np.nan}

    out = []
    idx = np.digitize(rows["I_auto"].to_numpy(), BINS[1:-1])
    for i in range(len(BINS) - 1):
        lo, hi = BINS[i], BINS[i + 1]
        name = (f"< {hi:g}" if not np.isfinite(lo) else
                f"> {lo:g}" if not np.isfinite(hi) else f"{lo:g}–{hi:g}")
        out.append(stats(rows[idx == i], name))
    out.append(stats(rows, "all"))
    return pd.DataFrame(out)


def run(args: argparse.Namespace) -> dict:
    """Denoise every frame of ``args.run`` at float32 and ``args.precision``; photometry."""
    import torch

    from pausdenoise import denoise as dn
    from pausdenoise import store
    from pausdenoise.n2v.normalise import denormalise, frame_statistics, normalise
    from pausdenoise.photometry import frame_catalogue, read_catalogue

    store_path = args.run / "store.zarr"
    ref = dn.ModelRef.from_checkpoint(args.checkpoint or args.run / "model" / "n2v.safetensors")
    cat = read_catalogue(args.catalogue or args.run / "survey" / "catalogue.parquet")
    device = dn.model._resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # float32 on CUDA means float32 (TF32 off), as in the denoise stage
    dn.model._configure_process(dn.DenoiseConfig(device=args.device, torch_threads=args.threads),
                          device)
    net = dn.get_model(ref, device)
    frames = store.list_frames(store_path)[: args.frames]
    seconds = {"float32": 0.0, args.precision: 0.0}
    pix_rms, pix_max, tables, mpix = [], 0.0, [], 0.0
    for k, frame in enumerate(frames):
        attrs = store.frame_attrs(store_path, frame)
        image = store.open_frame(store_path, frame, "image").compute()
        mask = store.open_frame(store_path, frame, "mask").compute()
        stats = frame_statistics(image, mask)
        x = normalise(image, stats, mask)
        outputs = {}
        for prec in ("float32", args.precision):
            if k == 0:  # warm-up at this shape (TorchScript profiling / cuDNN autotuning)
                dn.predict_block(net, x, halo=ref.halo, precision=prec)
            t0 = time.perf_counter()
            y = dn.predict_block(net, x, halo=ref.halo, precision=prec)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[prec] += time.perf_counter() - t0
            outputs[prec] = denormalise(y, stats)
        mpix += image.size / 1e6
        good = mask == 0
        d = (outputs[args.precision] - outputs["float32"])[good] / stats.sigma
        pix_rms.append(float(np.sqrt(np.mean(d.astype(np.float64) ** 2))))
        pix_max = max(pix_max, float(np.abs(d).max()))
        aps = frame_catalogue(cat, int(attrs["expnum"]), int(attrs["ccd"]))
        if len(aps):
            tables.append(flux_differences(image, mask, outputs, aps, attrs, args.precision))
    rows = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["I_auto", "band", "d_err", "d_rel"])
    model_path = args.run / "compare" / "error_model.json"
    if model_path.exists() and len(rows):
        # σ_den = s(I_auto)·g(band)·σ_raw: the error a user quotes with the denoised flux
        from pausdenoise.compare import ErrorModel

        model = ErrorModel.from_dict(json.loads(model_path.read_text()))
        rows["d_cal"] = rows["d_err"] / model.scale_for(rows["I_auto"].to_numpy(float),
                                                        rows["band"].to_numpy())
    return {"run": str(args.run), "device": str(device), "precision": args.precision,
            "frames": len(frames), "mpix": mpix,
            "mpix_per_s": {p: mpix / s for p, s in seconds.items()},
            "pixel_rms_sigma": float(np.sqrt(np.mean(np.square(pix_rms)))),
            "pixel_max_abs_sigma": pix_max, "error_model": "d_cal" in rows.columns,
            "table": summarise(rows).to_dict(orient="records")}


def markdown(res: dict, command: str) -> str:
    """The result as a RESULTS.md section."""
    import platform

    import torch

    t = pd.DataFrame(res["table"])
    cal = "p99_abs_d_cal" in t.columns
    lines = [
        f"## Reduced precision judged by photometry ({res['precision']} vs float32, "
        f"{res['device']}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)", "",
        f"machine: {platform.processor() or platform.machine()}, {platform.platform()}, "
        f"torch {torch.__version__}  ",
        f"command: `{command}`  ",
        f"run: `{res['run']}`, {res['frames']} frames, {res['mpix']:.1f} Mpix; network "
        f"float32 {res['mpix_per_s']['float32']:.3f} Mpix/s, {res['precision']} "
        f"{res['mpix_per_s'][res['precision']]:.3f} Mpix/s "
        f"(×{res['mpix_per_s'][res['precision']] / res['mpix_per_s']['float32']:.2f})  ",
        f"pixels (unmasked), {res['precision']} − float32 in units of the sky σ: RMS "
        f"{res['pixel_rms_sigma']:.2e}, max {res['pixel_max_abs_sigma']:.3f}", "",
        "| I_auto | sources | median Δf / σ_f | p99 \\|Δf\\| / σ_f | max \\|Δf\\| / σ_f "
        "| median Δf / f |" + (" p99 \\|Δf\\| / σ_den |" if cal else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if cal else ""),
    ]
    for r in t.itertuples():
        lines.append(f"| {r.bin} | {r.n} | {r.median_d_err:+.4f} | {r.p99_abs_d_err:.4f} | "
                     f"{r.max_abs_d_err:.4f} | {r.median_d_rel:+.2e} |"
                     + (f" {r.p99_abs_d_cal:.4f} |" if cal else ""))
    lines += ["", "Δf = aperture flux on the reduced-precision output − on the float32 output "
              "(same frame, model, tiling, apertures); σ_f = the raw frame's flux error "
              "(PAUS recipe); flagged rows left out."
              + (" σ_den = the run's calibrated denoised error s(I_auto)·g(band)·σ_f "
                 "(compare/error_model.json)." if cal else ""), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/bench_precision.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    res = run(args)
    text = markdown(res, command)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1, default=float))
    if args.append:
        results = Path(__file__).resolve().parent / "RESULTS.md"
        with results.open("a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
