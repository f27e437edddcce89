"""Real-frame quality scores with and without references matched to the scored frame.

The independent-exposure estimator scores a frame of the 24 real SAAO exposures against other
exposures of the field. Those differ from the scored frame in flux scale (exposure times
150–300 s, transparency), seeing and sub-pixel position; on this crowded bulge field even the
"sky" pixels are unresolved stars, so the mismatch enters every score.
``evaluate.reference_kernel`` brings each reference to the frame with a fitted pixel kernel
(:mod:`pausdenoise.reference_match`). This benchmark scores the same frames both ways:

* the raw image's estimated sky-pixel RMS next to the one the frame's own noise model
  predicts, ``sqrt(sky / gain + (read noise / gain)²)`` (ADU, header GAIN and RDNOISE): the
  estimator's error on a known quantity (unresolved stars add a little Poisson noise above
  it);
* the gains (raw RMS / estimate RMS) of Gaussian blurs (σ grid) and, with ``--checkpoint``,
  of a trained network, pooled over the frames, and the network's gain over the best blur's;
* with ``--oracle-width h``, the best *linear* filter of the frame: the (2h+1)² pixel kernel
  (plus a background plane) that predicts the references' mean from the raw frame with the
  least squared error, fitted on one pixel class (sky, sources) of one half of the frame and
  applied to the other half (:func:`oracle_filter`). It uses the references, so it is no
  denoiser; it bounds what any linear shift-invariant smoothing of that support, Gaussian
  blurs included, can score with this estimator -- the Wiener filter the field's own power
  spectrum allows. The references' noise does not bias the fit (it is in the target, not in
  the regressor) and, cross-fitted by halves, does not enter the scored half;
* with ``--sure-width h``, the best linear filter the frame can find *without* references:
  the (2h+1)² kernel and plane that minimise Stein's unbiased estimate of the squared error
  to the unknown truth, computed from the frame and its noise model alone
  (:func:`sure_linear_filter`). It is a self-supervised denoiser (the closed-form linear
  counterpart of ``train.method: sure``); where it scores below the oracle, the estimator's
  "truth" differs from what the frame's noise model says the truth is;
* with ``--stack-depths n1,n2,...`` (a kernel > 0 only), the means of the n other exposures
  (not the references) matched to the frame best, scored as if they were denoised frames
  (:func:`stack_estimates`). A stack of n exposures has 1/n of one exposure's noise, so its
  MSE follows ``a + b / n``; the fitted floor ``a`` (:func:`stack_ceiling`) is what the
  estimator charges even an estimate with no noise -- the frame-to-reference differences no
  other exposure removes (variable stars, seeing the kernel cannot match, the references'
  own mismatch) -- and ``sqrt(raw MSE / a)`` the highest gain it can credit. Pixels are
  those all the stacked exposures cover, for every row of that table.

Usage (project venv; the SAAO store is ingested into ``--out`` when absent)::

    python benchmarks/bench_reference_match.py --checkpoint bench-output/saao/model/n2v.safetensors
    python benchmarks/bench_reference_match.py --kernels 3 --stack-depths 1,2,4,8,16

``--append`` adds a dated section to ``benchmarks/RESULTS.md``. Time: ~1–2 min per setting on
two cores (registration and kernel fits of up to 12 candidates per frame).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_training_budget as tb

from pausdenoise import evaluate as ev
from pausdenoise import reference_match as rm
from pausdenoise import store as st
from pausdenoise.config import load_config
from pausdenoise.n2v.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0)


def oracle_filter(frame: tb.EvalFrame, half_width: int, pixels: np.ndarray) -> np.ndarray:
    """The frame filtered by the linear kernel that best predicts its references' mean.

    Parameters
    ----------
    frame : EvalFrame
        A frame scored without truth (its ``references`` sky-subtracted ADU on its grid).
    half_width : int
        h: the kernel is (2h+1) × (2h+1) px.
    pixels : ndarray of bool (ny, nx)
        Pixels the kernel is fitted on (one pixel class).

    Returns
    -------
    ndarray (ny, nx)
        ADU, sky included. Columns x < nx // 2 (0-based) are filtered with the kernel fitted
        on the other columns and the reverse (cross-fitting); the image is reflected at its
        edges and unusable pixels count as sky.
    """
    raw = np.where(frame.good, frame.image - frame.sky, np.nan)
    target = np.mean(np.stack(frame.references), axis=0)  # NaN where any is invalid
    left = np.zeros(raw.shape, bool)
    left[:, : raw.shape[1] // 2] = True
    out = raw.copy()
    for fit_half in (left, ~left):
        kernel, bg, _, _ = rm.fit_kernel(target, raw, pixels & fit_half & frame.good,
                                         np.ones(raw.shape), half_width)
        if kernel is None:
            raise SystemExit(f"{frame.name}: too few pixels to fit the oracle filter")
        # reflected at the frame's edges (as the blurs are), unusable pixels at the sky
        applied = ndimage.correlate(np.where(frame.good, raw, 0.0), kernel, mode="reflect")
        applied += rm.apply_kernel(np.zeros(raw.shape), np.zeros((1, 1)), bg)  # the plane
        use = ~fit_half & frame.good
        out[use] = applied[use]
    return out + frame.sky


def sure_linear_filter(frame: tb.EvalFrame, half_width: int, gain: float, read_noise_adu: float,
                       pixels: np.ndarray | None = None) -> np.ndarray:
    """The frame filtered by the linear kernel of least SURE (no references used).

    For ``f = K ⊗ y + B`` the χ²-weighted SURE of pixel p is ``(f_p − y_p)² / v_p − 1 +
    2 K₀`` (``K₀`` the kernel's central tap, ``∂f_p / ∂y_p``), so the kernel minimising its
    sum over the fitted pixels solves the weighted normal equations
    ``Xᵀ W X θ = Xᵀ W y − n e₀`` (X the shifted frames and the plane, W = diag(1 / v),
    ``e₀`` the central tap's unit vector).

    Parameters
    ----------
    frame : EvalFrame
        The frame (raw ADU, sky included; ``sky`` its level, ADU).
    half_width : int
        h: the kernel is (2h+1) × (2h+1) px.
    gain : float
        e⁻/ADU.
    read_noise_adu : float
        Read noise, ADU.
    pixels : ndarray of bool (ny, nx), optional
        Pixels the kernel is fitted on; all usable pixels when None.

    Returns
    -------
    ndarray (ny, nx)
        ADU, sky included. The noise variance ``v = (sky + light) / gain + read noise²`` takes
        the light from the frame's 5 × 5 median (a pixel's own noise barely enters it); the
        image is reflected at its edges and unusable pixels count as sky.
    """
    h = int(half_width)
    raw = np.where(frame.good, frame.image - frame.sky, 0.0)
    light = np.clip(ndimage.median_filter(raw, size=5), 0.0, None)
    var = (max(frame.sky, 0.0) + light) / gain + read_noise_adu**2
    fit = rm._footprint_valid(frame.good, h) & (frame.good if pixels is None else pixels)
    yy, xx = np.nonzero(fit)
    if yy.size > rm.MAX_FIT_PIXELS:
        pick = np.sort(np.random.default_rng(0).choice(yy.size, rm.MAX_FIT_PIXELS,
                                                       replace=False))
        yy, xx = yy[pick], xx[pick]
    x = rm._design(raw, yy, xx, h, raw.shape)
    w = 1.0 / var[yy, xx]
    rhs = x.T @ (w * raw[yy, xx])
    rhs[h * (2 * h + 1) + h] -= yy.size
    coef = np.linalg.solve(x.T @ (x * w[:, None]), rhs)
    kernel = coef[:-3].reshape(2 * h + 1, 2 * h + 1)
    out = ndimage.correlate(raw, kernel, mode="reflect")
    out += rm.apply_kernel(np.zeros(raw.shape), np.zeros((1, 1)), tuple(coef[-3:]))
    return np.where(frame.good, out + frame.sky, frame.image)


def stack_estimates(frame: tb.EvalFrame, members: list[np.ndarray], depths: list[int]
                    ) -> dict[str, np.ndarray]:
    """Means of the first n of the frame's matched other exposures, as estimates of the frame.

    Parameters
    ----------
    frame : EvalFrame
        The scored frame (``sky`` its level, ADU).
    members : list of ndarray (ny, nx)
        Other exposures, none of them a reference, matched to the frame (sky-subtracted ADU
        on its grid and flux scale, NaN where invalid), best fit first.
    depths : list of int
        The n of each stack.

    Returns
    -------
    dict of str to ndarray
        ``"stack of n"`` → the mean of ``members[:n]`` plus the frame's sky (ADU); the raw
        frame where a stacked exposure is invalid (:func:`stacked_frame` scores only pixels
        all of them cover).
    """
    if max(depths) > len(members):
        raise SystemExit(f"{frame.name}: {len(members)} other exposures matched, a stack of "
                         f"{max(depths)} asked for")
    out = {}
    for n in depths:
        mean = np.mean(np.stack(members[:n]), axis=0)  # NaN where any is invalid
        out[f"stack of {n}"] = np.where(np.isfinite(mean), mean + frame.sky, frame.image)
    return out


def stacked_frame(frame: tb.EvalFrame, members: list[np.ndarray]) -> tb.EvalFrame:
    """The frame scored only where every one of ``members`` is valid (all estimates alike).

    Parameters
    ----------
    frame : EvalFrame
        The scored frame.
    members : list of ndarray
        Its matched other exposures (NaN where invalid).

    Returns
    -------
    EvalFrame
        A copy with ``good`` narrowed to the pixels all members cover.
    """
    covered = np.all(np.isfinite(np.stack(members)), axis=0)
    if not (covered & frame.good).any():
        raise SystemExit(f"{frame.name}: no pixel is covered by all the stacked exposures")
    return dataclasses.replace(frame, good=frame.good & covered)


def stack_ceiling(depths: list[int], mse: list[float], mse_se: list[float], mse_raw: float
                  ) -> dict[str, float]:
    """Fit ``MSE(n) = a + b / n`` to the stacks' estimated MSEs; the gain a noiseless one gets.

    Parameters
    ----------
    depths : list of int
        Exposures per stack (at least two distinct values).
    mse, mse_se : list of float
        The stacks' pooled MSE and its standard error (ADU²), one pixel class.
    mse_raw : float
        The raw frame's pooled MSE on the same pixels (ADU²).

    Returns
    -------
    dict
        ``floor`` (a, ADU²) and ``floor_se``, ``floor_fraction`` (a / raw MSE), ``ceiling``
        (``sqrt(mse_raw / a)``; inf when a ≤ 0: no floor measurable) and ``ceiling_se``
        (from a's standard error), ``per_exposure`` (b, ADU²: one matched exposure's noise).
        Weighted least squares, weights 1 / se².
    """
    n = np.asarray(depths, float)
    y = np.asarray(mse, float)
    w = 1.0 / np.maximum(np.asarray(mse_se, float), 1e-12 * np.abs(y).max()) ** 2
    x = np.column_stack([np.ones_like(n), 1.0 / n])
    cov = np.linalg.inv(x.T @ (x * w[:, None]))
    a, b = cov @ (x.T @ (w * y))
    se_a = math.sqrt(cov[0, 0])
    if a <= 0:
        return {"floor": float(a), "floor_se": se_a, "floor_fraction": float(a / mse_raw),
                "ceiling": math.inf, "ceiling_se": math.nan, "per_exposure": float(b)}
    g = math.sqrt(mse_raw / a)
    return {"floor": float(a), "floor_se": se_a, "floor_fraction": float(a / mse_raw),
            "ceiling": g, "ceiling_se": 0.5 * g * se_a / a, "per_exposure": float(b)}


def frames_for(kernel: int, out: Path, n_eval: int, stacks: bool = False
               ) -> tuple[list[tb.EvalFrame], list[float], list[list[float]]]:
    """Scored SAAO frames with references matched by a kernel of half-width ``kernel``.

    Parameters
    ----------
    kernel : int
        ``evaluate.reference_kernel`` (0: references as registered).
    out : Path
        Benchmark folder (the store is ``out/saao/store.zarr``).
    n_eval : int
        Frames scored, spread over the exposure order.
    stacks : bool
        Also match every other exposure; those not kept as references go to the frame's
        ``attrs["stack_members"]`` (matched values, best fit first).

    Returns
    -------
    tuple
        The frames, per frame the sky-pixel RMS the noise model predicts (ADU), and per frame
        the flux scales (frame / reference) of the references kept (1.0 when not matched).
    """
    if stacks and kernel <= 0:
        raise SystemExit("stacks of other exposures need a matching kernel (--kernels > 0)")
    cfg = load_config(tb.CONFIGS["saao"]).evaluate.model_copy(
        update={"reference_kernel": kernel})
    store = tb._ensure_store("saao", out)
    names = st.exposure_table(store).sort_values("expnum")["frame"].tolist()
    pick = sorted({names[round(float(i))] for i in np.linspace(0, len(names) - 1, n_eval)})
    frames, expected, scales = [], [], []
    for f in pick:
        arr = tb._arrays(store, f)
        good = tb._good(arr)
        rest: list | None = [] if stacks else None
        refs = tb._references(store, f, [o for o in names if o != f], arr["image"], good, cfg,
                              rest)
        fr = tb.independent_frame(f, arr["image"], good, [m.values for m in refs], cfg,
                                  arr.get("mask"))
        g, rn_adu = rm.frame_noise(st.frame_attrs(store, f))
        if g is None:
            raise SystemExit(f"frame {f} has no gain: no noise model to compare with")
        fr.attrs.update(gain=g, read_noise_adu=rn_adu)
        if stacks:
            fr.attrs["stack_members"] = [m.values for m in rest]
        frames.append(fr)
        expected.append(math.sqrt(fr.sky / g + rn_adu**2))
        scales.append([m.flux_scale for m in refs])
    return frames, expected, scales


def score(frames: list[tb.EvalFrame], expected: list[float], model: Any | None,
          scales: list[list[float]] | None = None, oracle_width: int = 0,
          sure_width: int = 0, stack_depths: list[int] | None = None) -> dict[str, Any]:
    """Raw sky RMS per frame, blur gains and the network's gains, pooled over frames.

    Parameters
    ----------
    frames : list of EvalFrame
        Scored frames.
    expected : list of float
        Their predicted raw sky-pixel RMS (ADU).
    model : UNet or None
        A trained network, or None.
    scales : list of list of float, optional
        Per frame, the flux scales of its references (reported as their range).
    oracle_width : int
        h of the oracle linear filters (:func:`oracle_filter`, one per pixel class); 0: none.
    sure_width : int
        h of the SURE-fitted linear filters (:func:`sure_linear_filter`, fitted on all
        pixels and on the sky pixels); 0: none.
    stack_depths : list of int, optional
        Score the stacks of that many matched other exposures (:func:`stack_estimates`;
        each frame's ``attrs["stack_members"]``), every estimate only on the pixels the
        deepest stack covers, and fit their floor (:func:`stack_ceiling`).

    Returns
    -------
    dict
        ``per_frame`` (name, estimated and predicted raw sky RMS, references' flux-scale
        range, each estimate's sky gain on that frame alone), ``gains``
        (kind → class → (gain, se)) and, with stacks, ``ceiling`` (class →
        :func:`stack_ceiling` result).
    """
    scores = []
    depths = sorted(set(stack_depths or []))
    for f in frames:
        stacked = {}
        if depths:
            members = f.attrs["stack_members"][: max(depths)]
            f = stacked_frame(f, members)
            stacked = stack_estimates(f, members, depths)
        est = {f"blur {s:g}": ev.gaussian_blur(f.image, f.good, s) for s in SIGMAS}
        if oracle_width > 0:
            for cls in tb.CLASSES:
                est[f"linear, {cls}-fitted"] = oracle_filter(f, oracle_width, f.classes[cls])
        if sure_width > 0:
            g, rn = f.attrs["gain"], f.attrs["read_noise_adu"]
            est["linear SURE"] = sure_linear_filter(f, sure_width, g, rn)
            est["linear SURE, sky pixels"] = sure_linear_filter(f, sure_width, g, rn,
                                                                f.classes["sky"])
        if model is not None:
            est["network"] = tb.denoise(model, f)
        est.update(stacked)
        scores.append(tb.score_frame(f, est))
    per_frame = []
    for i, (f, sc, e) in enumerate(zip(frames, scores, expected, strict=True)):
        raw = sc[(sc["kind"] == "raw") & (sc["pixel_class"] == "sky")].iloc[0]
        k = scales[i] if scales else [math.nan]
        sky = sc[sc["pixel_class"] == "sky"].set_index("kind")["mse"]
        per_frame.append({"frame": f.name, "raw_sky_rms": math.sqrt(max(raw["mse"], 0.0)),
                          "predicted": e, "scale_range": (min(k), max(k)),
                          "sky_gains": {kind: math.sqrt(raw["mse"] / m) if m > 0 else math.nan
                                        for kind, m in sky.items() if kind != "raw"}})
    pooled = tb.pool(scores).set_index(["kind", "pixel_class"])
    gains: dict[str, dict[str, tuple[float, float]]] = {}
    for kind in dict.fromkeys(pooled.index.get_level_values(0)):
        if kind == "raw":
            continue
        gains[kind] = {}
        for cls in tb.CLASSES:
            r, e = pooled.loc[("raw", cls)], pooled.loc[(kind, cls)]
            gains[kind][cls] = tb.gain(r["mse"], r["mse_se"], e["mse"], e["mse_se"])
    out: dict[str, Any] = {"per_frame": per_frame, "gains": gains}
    if len(depths) >= 2:
        out["ceiling"] = {}
        for cls in tb.CLASSES:
            rows = [pooled.loc[(f"stack of {n}", cls)] for n in depths]
            out["ceiling"][cls] = stack_ceiling(depths, [r["mse"] for r in rows],
                                                [r["mse_se"] for r in rows],
                                                float(pooled.loc[("raw", cls), "mse"]))
    return out


def _per_frame_gains(result: dict[str, Any], kernel: int) -> list[str]:
    """Markdown rows: each frame's sky gain of the pooled-best blur and of the other estimates.

    Returns
    -------
    list of str
    """
    gains = result["gains"]
    blurs = [k for k in gains if k.startswith("blur")]
    best = max(blurs, key=lambda k: np.nan_to_num(gains[k]["sky"][0], nan=-1.0))
    kinds = [best, *(k for k in gains if not k.startswith("blur"))]
    lines = [f"| frame (kernel {kernel}) | " + " | ".join(f"sky gain, {k}" for k in kinds) + " |",
             "|---|" + "---:|" * len(kinds)]
    for row in result["per_frame"]:
        lines.append(f"| {row['frame']} | "
                     + " | ".join(f"{row['sky_gains'][k]:.2f}" for k in kinds) + " |")
    return lines


def render(results: dict[int, dict[str, Any]]) -> str:
    """Markdown tables: raw sky RMS against the noise model, then gains, per setting.

    Parameters
    ----------
    results : dict
        Kernel half-width → :func:`score` result.

    Returns
    -------
    str
    """
    keys = list(results)
    head = " | ".join(f"raw sky RMS, kernel {k} | flux scales kept, kernel {k}" for k in keys)
    lines = [f"| frame | predicted by noise model | {head} |",
             "|---|---:|" + "---:|---|" * len(keys)]
    first = results[keys[0]]["per_frame"]
    for i, row in enumerate(first):
        cells = []
        for k in keys:
            r = results[k]["per_frame"][i]
            lo, hi = r["scale_range"]
            cells += [f"{r['raw_sky_rms']:.1f}",
                      "—" if not np.isfinite(lo) or k == 0 else f"{lo:.2f} – {hi:.2f}"]
        lines.append(f"| {row['frame']} | {row['predicted']:.1f} | {' | '.join(cells)} |")
    lines += ["", "| estimate | " + " | ".join(f"sky gain, kernel {k} | source gain, kernel {k}"
                                              for k in keys) + " |",
              "|---|" + "---|---|" * len(keys)]
    for kind in results[keys[0]]["gains"]:
        cells = []
        for k in keys:
            for cls in tb.CLASSES:
                g, se = results[k]["gains"][kind][cls]
                cells.append(tb._pm(g, se))
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", *_per_frame_gains(results[keys[-1]], keys[-1])]
    for k in keys:
        if "ceiling" not in results[k]:
            continue
        gg = results[k]["gains"]
        lines.append("")
        for cls, c in results[k]["ceiling"].items():
            best = max(v[cls][0] for n, v in gg.items() if n.startswith("blur")
                       and np.isfinite(v[cls][0]))
            ceil = ("none measurable (floor ≤ 0)" if not np.isfinite(c["ceiling"]) else
                    f"{c['ceiling']:.2f} ± {c['ceiling_se']:.2f} "
                    f"({c['ceiling'] / best:.2f} × the best blur's {best:.2f})")
            lines.append(f"- kernel {k}, {cls} pixels: stack floor a = "
                         f"{100 * c['floor_fraction']:.1f} % of the raw MSE; highest gain "
                         f"the estimator credits, sqrt(raw MSE / a) = {ceil}")
    if "network" in results[keys[0]]["gains"]:
        lines.append("")
        for k in keys:
            gg = results[k]["gains"]
            best = {c: max(v[c][0] for n, v in gg.items() if n.startswith("blur") and
                           np.isfinite(v[c][0])) for c in tb.CLASSES}
            lines.append(f"- kernel {k}: network / best blur = "
                         f"{gg['network']['sky'][0] / best['sky']:.2f} (sky), "
                         f"{gg['network']['source'][0] / best['source']:.2f} (source)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print (and optionally append) the tables.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    int
        Exit status.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench-output")
    p.add_argument("--kernels", default="0,3", help="reference_kernel values, comma-separated")
    p.add_argument("--eval-frames", type=int, default=4)
    p.add_argument("--checkpoint", type=Path, help="a trained network to score beside")
    p.add_argument("--oracle-width", type=int, default=0,
                   help="h of the oracle linear filters ((2h+1)² px kernels); 0: none")
    p.add_argument("--sure-width", type=int, default=0,
                   help="h of the SURE-fitted linear filters ((2h+1)² px kernels); 0: none")
    p.add_argument("--stack-depths", default="",
                   help="score stacks of this many matched other exposures, comma-separated "
                        "(kernels > 0), and fit the estimator's floor")
    p.add_argument("--append", action="store_true")
    a = p.parse_args(argv)
    model = load_model(a.checkpoint)[0] if a.checkpoint else None
    depths = [int(x) for x in a.stack_depths.split(",") if x.strip()]
    results = {}
    for k in (int(x) for x in a.kernels.split(",")):
        frames, expected, scales = frames_for(k, a.out, a.eval_frames, bool(depths))
        results[k] = score(frames, expected, model, scales, a.oracle_width, a.sure_width,
                           depths)
    table = render(results)
    print(table)
    if a.append:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        cmd = "python benchmarks/bench_reference_match.py " + " ".join(argv or sys.argv[1:])
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Real-frame scores with references matched to the frame ({now})\n\n"
                     f"machine: {platform.machine()}, {tb._cpu_name()}\n"
                     f"command: `{cmd}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
