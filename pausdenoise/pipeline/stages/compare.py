"""Compare stage: cross-exposure Δf statistics, the denoised error model, truth.

Reads the photometry Parquet of the run and writes into ``<run>/compare/``:

- ``sigma68_by_bin.csv`` (+ ``.json``): per I_auto bin and overall, pair counts, σ68 of Δf
  for raw fluxes, denoised fluxes with raw errors and with the calibrated error model, and
  the median denoised/raw flux ratio;
- ``error_model.csv`` / ``error_model_bands.csv``: the error model σ_den = s(I_auto)·g(band)·σ_raw
  fitted on all pairs: s per bin, g per band (:class:`pausdenoise.compare.ErrorModel`);
- ``error_model.json``: the same model, machine-readable
  (:meth:`pausdenoise.compare.ErrorModel.from_dict`), to apply to other runs;
- ``denoised_errors/band=<band>/errors.parquet``: every measurement's raw and denoised
  calibrated flux with ``flux_cal_err_den_model``, the error to use with the denoised flux
  (:meth:`pausdenoise.compare.ErrorModel.calibrated_errors`), flags kept;
- ``error_model_validation.csv``: σ68 with model errors on held-out pairs, by k-fold
  cross-validation over exposures stratified by band (each pair judged by a model fitted
  without either of its exposures), overall, per bin and per band, with pass/fail against
  1.00 ± tolerance for rows with enough pairs;
- ``truth_comparison.csv``: flux bias and scatter against the truth (simulation only): for
  aperture-corrected bands the true total flux, otherwise the source's own noiseless flux
  inside its aperture (``flux_true_aper_adu`` × the exact zero-point), so aperture losses do
  not pose as bias; ``pull_sigma68_exact_zp`` judges the photometry without the header
  zero-points' errors, and the summary's ``truth_zp_pulls`` those errors against their
  stated size (the bright bins' pulls hold both);
- ``repeatability_floor.csv``: per band, the raw fluxes' repeatability floor
  (:func:`pausdenoise.compare.repeatability_floor`): the relative error that, added to every
  raw error, brings σ68 of Δf to 1 over the band's pairs of S/N ≥ ``compare.floor_snr``;
- ``df_values.npz``: the Δf values per flavour (at most 500,000), for the report's histograms.

- ``zero_point_check.csv``: for the bands that keep calibrated header zero-points, the same
  relative scales fitted but not applied (:func:`zero_point_scales`, on the table
  :func:`band_pairs` reads): with right header
  zero-points each is 1 within the stated zero-point error; the summary's
  ``zero_point_check`` gives their scatter and pulls.

- ``relative_zp.csv``: the frames' relative flux scales, for the bands put on one flux scale
  (``compare.relative_zp``; :mod:`pausdenoise.relative_zp`).

With ``compare.aperture_correction`` every calibrated flux and error is first divided by its
row's ``aper_frac`` (:mod:`pausdenoise.photometry.apcor`), so that all of the above describe
total fluxes; the summary's ``aperture_correction`` says for which bands.

The photometry is read twice, a band per task each time (three times for the bands put on
one flux scale: :func:`band_exposure_scales` first; the zero-point check of calibrated bands
rides on the pairing read; its ``aper_frac`` column once more,
:func:`band_aperture_fractions`, unless ``compare.aperture_correction`` is off):
:func:`band_pairs` pairs a band and sends back its exact pair counts (in all and per I_auto
bin) with its bottom-``max_pairs`` sample (the pairs with the smallest
:func:`pausdenoise.compare.pair_hash`), which the driver folds into the running global
bottom-``compare.max_pairs`` as the bands complete; after the error model is fitted,
:func:`band_calibrated_errors` writes the band's per-measurement errors. Memory is bounded
by one band's photometry on a worker, and on the driver by the compact pair table of at most
``compare.max_pairs`` pairs (about twice that while a band is merged) plus the measurements'
I_auto and fluxes. The sample is exactly min(pairs, ``compare.max_pairs``) pairs, uniform
without replacement, and depends on the pairs and ``compare.seed`` only (not on the workers
or the order the bands complete in).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from distributed import as_completed

from pausdenoise import compare as cmp
from pausdenoise import store as st
from pausdenoise.errors import StageError
from pausdenoise.photometry.apcor import aperture_corrected
from pausdenoise.photometry.config import ProfFlag
from pausdenoise.photometry.driver import (
    band_has_columns,
    photometry_bands,
    read_photometry,
    write_partition,
)
from pausdenoise.pipeline.context import Context
from pausdenoise.relative_zp import apply_exposure_scales, fit_exposure_scales
from pausdenoise.stats import sigma68

__all__ = ["BandPairs", "band_aperture_fractions", "band_calibrated_errors",
           "band_exposure_scales", "band_pairs", "run", "transfer_corrected",
           "zero_point_scales"]

#: the photometry columns the compare stage reads (the other ~20 are never loaded)
_COLUMNS = ("ref_id", "expnum", "ccd", "I_auto", "flags", "flux_cal", "flux_cal_err")
#: the zero-point and its error: the aperture corrections and the relative zero-points take
#: the header zero-point's error out of the flux errors (pausdenoise.photometry.calibration)
_ZP_COLUMNS = ("zp", "zp_err")
#: and those the aperture corrections add (pausdenoise.photometry.apcor.aperture_corrected)
_APCOR_COLUMNS = ("aper_frac", "aper_neighbours", "aper_neighbours_err", *_ZP_COLUMNS)


def transfer_corrected(table: pd.DataFrame, transfer: pd.DataFrame | None) -> pd.DataFrame:
    """Divide the denoised rows' calibrated flux and error by their transfer function.

    Parameters
    ----------
    table : pandas.DataFrame
        Photometry rows of one band (``kind``, ``I_auto``, ``flux_cal``, ``flux_cal_err``).
    transfer : pandas.DataFrame or None
        The band's rows of the inject stage's ``transfer.csv`` (``mag_lo``, ``mag_hi``,
        ``transfer``); None leaves the table as it is.

    Returns
    -------
    pandas.DataFrame
        A copy with the denoised rows divided by T(I_auto bin); rows outside the bins or in
        a bin without a finite, positive transfer are unchanged.
    """
    if transfer is None or transfer.empty:
        return table
    edges = np.append(transfer["mag_lo"].to_numpy(float), transfer["mag_hi"].to_numpy(float)[-1])
    t = transfer["transfer"].to_numpy(float)
    idx = np.searchsorted(edges, table["I_auto"].to_numpy(float), side="right") - 1
    ok = (idx >= 0) & (idx < len(t))
    factor = np.ones(len(table))
    factor[ok] = t[idx[ok]]
    factor[~(np.isfinite(factor) & (factor > 0))] = 1.0
    factor[(table["kind"] != "denoised").to_numpy()] = 1.0
    out = table.copy()
    out["flux_cal"] = out["flux_cal"] / factor
    out["flux_cal_err"] = out["flux_cal_err"] / factor
    return out


def _band_table(phot_dir: str, band: str, transfer: pd.DataFrame | None,
                scales: pd.DataFrame | None, apcor: bool = False,
                zero_points: bool = False) -> pd.DataFrame:
    """Read one band's photometry: exposures on one flux scale, denoised fluxes corrected.

    Returns
    -------
    DataFrame
        The long table; with ``apcor`` aperture-corrected
        (:func:`pausdenoise.photometry.apcor.aperture_corrected`: rows without an aperture
        share dropped), then divided by the frames' relative scales (``scales``, frames
        without one dropped) and the transfer function (``transfer``) when given.
    """
    columns = [*_COLUMNS, *(_APCOR_COLUMNS if apcor
                            else _ZP_COLUMNS if scales is not None or zero_points else ())]
    table = read_photometry(phot_dir, bands=[band], columns=columns)
    if apcor:
        table = aperture_corrected(table)
    if scales is not None:
        table = apply_exposure_scales(table, scales)
    return transfer_corrected(table, transfer)


def band_aperture_fractions(phot_dir: str, band: str) -> dict[str, Any]:
    """Count one band's rows with an aperture share (``aper_frac``); runs on a worker.

    Parameters
    ----------
    phot_dir : str
        The photometry Parquet directory.
    band : str
        The band to read.

    Returns
    -------
    dict
        ``band``, ``rows``, ``with_share`` (rows with a finite, positive ``aper_frac``;
        both 0, unread, when the band's files lack it or the neighbours' light, as written
        before they existed),
        ``approximate`` (those of them whose shape was derived from the aperture, the
        catalogue having no profile columns: ``ProfFlag.APPROX_PROFILE``) and, over the
        rows with a share, ``median``, ``p01`` and ``p99`` of ``aper_frac`` (NaN without).
    """
    cols = ["aper_frac", "flags_prof"]
    if band_has_columns(phot_dir, band, [*cols, *_APCOR_COLUMNS]):
        table = read_photometry(phot_dir, bands=[band], columns=cols)
    else:  # written before aper_frac existed: no share to use, and nothing to read
        return {"band": band, "rows": 0, "with_share": 0, "approximate": 0,
                "median": np.nan, "p01": np.nan, "p99": np.nan}
    frac = table["aper_frac"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        has = np.isfinite(frac) & (frac > 0)
    approx = has & (table["flags_prof"].to_numpy() & int(ProfFlag.APPROX_PROFILE) != 0)
    frac = frac[has]
    p01, med, p99 = np.percentile(frac, [1, 50, 99]) if frac.size else (np.nan,) * 3
    return {"band": band, "rows": len(table), "with_share": int(frac.size),
            "approximate": int(approx.sum()), "median": float(med), "p01": float(p01),
            "p99": float(p99)}


def band_exposure_scales(phot_dir: str, band: str, snr_min: float,
                         min_sources: int, apcor: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Fit one band's relative exposure scales; runs on a worker.

    Parameters
    ----------
    phot_dir : str
        The photometry Parquet directory.
    band : str
        The band to read.
    snr_min : float
        ``compare.relative_zp_snr``.
    min_sources : int
        ``compare.relative_zp_min_sources``.
    apcor : frozenset of str, optional
        The aperture-corrected bands: the band's fluxes are corrected before the fit when
        it is one of them (:func:`_band_table`).

    Returns
    -------
    DataFrame
        :func:`pausdenoise.relative_zp.fit_exposure_scales` of the band, with ``band``.
    """
    table = _band_table(phot_dir, band, None, None, band in apcor)
    return fit_exposure_scales(table, snr_min, min_sources).assign(band=band)


@dataclass(frozen=True)
class BandPairs:
    """What :func:`band_pairs` sends back for one band.

    Parameters
    ----------
    band : str
        The band.
    n_pairs : int
        Every pair of the band (exact, before sampling).
    per_bin : ndarray of int64
        Every pair per I_auto bin (exact; ``len(bins) − 1``), binned as ``summarise`` bins.
    pairs : DataFrame
        The band's bottom-``max_pairs`` pairs (compact table with the ``pair_hash`` column).
    measurements : DataFrame
        The band's measurements: I_auto and calibrated fluxes (float32).
    exposures : DataFrame
        The band's exposures (``expnum``, ``band``).
    floor : dict
        The band's raw repeatability floor (:func:`pausdenoise.compare.repeatability_floor`
        on its pairs of S/N ≥ ``compare.floor_snr``, as compared: corrected and rescaled).
    zero_points : DataFrame or None
        The band's zero-point check (:func:`zero_point_scales`), when it was asked for.
    """

    band: str
    #: every pair of the band (exact, before sampling)
    n_pairs: int
    #: every pair per I_auto bin (exact; ``len(bins) − 1``), binned as ``summarise`` bins
    per_bin: np.ndarray
    #: the band's bottom-``max_pairs`` pairs (compact table with the ``pair_hash`` column)
    pairs: pd.DataFrame
    #: the band's measurements: I_auto and calibrated fluxes (float32)
    measurements: pd.DataFrame
    #: the band's exposures (``expnum``, ``band``)
    exposures: pd.DataFrame
    #: the band's raw repeatability floor (pausdenoise.compare.repeatability_floor)
    floor: dict[str, float]
    #: the band's zero-point check (zero_point_scales), when it was asked for
    zero_points: pd.DataFrame | None = None


def band_pairs(phot_dir: str, band: str, exclude_flagged: bool, bins: np.ndarray,
               max_pairs: int, seed: int,
               transfer: dict[str, pd.DataFrame] | None = None,
               scales: dict[str, pd.DataFrame] | None = None,
               apcor: frozenset[str] = frozenset(),
               floor_snr: float = 50.0,
               zero_point_check: tuple[frozenset[str], float, int] | None = None,
               ) -> BandPairs | None:
    """Read and pair one band; runs on a worker.

    Parameters
    ----------
    phot_dir : str
        The photometry Parquet directory.
    band : str
        The band to read.
    exclude_flagged : bool
        Drop flagged measurements before pairing.
    bins : numpy.ndarray
        I_auto bin edges of the per-bin counts.
    max_pairs : int
        At most this many pairs come back: those with the smallest
        :func:`pausdenoise.compare.pair_hash` (``seed``).
    seed : int
        The seed of the hash.
    transfer : dict of str to DataFrame, optional
        Per band, the rows of the inject stage's ``transfer.csv`` to divide the denoised
        fluxes by (:func:`transfer_corrected`); None for none.
    scales : dict of str to DataFrame, optional
        Per band, the relative exposure scales to divide every flux by
        (:func:`band_exposure_scales`); None, or a band not in it: none.
    apcor : frozenset of str, optional
        The aperture-corrected bands (``compare.aperture_correction``).
    floor_snr : float, optional
        The least pair S/N of the repeatability floor (``compare.floor_snr``).
    zero_point_check : (frozenset of str, float, int), optional
        The bands whose header zero-points are checked, ``compare.relative_zp_snr`` and
        ``compare.relative_zp_min_sources``: for such a band the check
        (:func:`zero_point_scales`) is made on the table read for the pairs.

    Returns
    -------
    BandPairs or None
        The band's exact pair counts, its sample of pairs, measurements and exposures;
        None when the band has no measurement (or, with ``exclude_flagged``, no unflagged
        one).
    """
    check = zero_point_check is not None and band in zero_point_check[0]
    table = _band_table(phot_dir, band, (transfer or {}).get(band), (scales or {}).get(band),
                        band in apcor, zero_points=check)
    if table.empty or (exclude_flagged and not (table["flags"] == 0).any()):
        return None  # nothing, or nothing unflagged (e.g. stamps smaller than the annulus)
    zero_points = (zero_point_scales(table, band, *zero_point_check[1:])
                   if check and zero_point_check is not None else None)
    wide = cmp.widen(table, exclude_flags=exclude_flagged)
    del table
    if wide.empty:
        return None
    pairs = cmp.make_pairs(wide)
    floor = cmp.repeatability_floor(pairs, snr_min=floor_snr, seed=seed)
    deltas = cmp.pair_deltas(pairs)
    del pairs
    n_pairs, per_bin = len(deltas), cmp.pairs_per_bin(deltas, bins)
    sample = cmp.bottom_k_pairs(deltas, max_pairs, seed)
    del deltas
    meas = wide[[c for c in ("I_auto", "f_raw", "f_den") if c in wide.columns]]
    return BandPairs(band=band, n_pairs=n_pairs, per_bin=per_bin, pairs=sample,
                     measurements=meas.astype(np.float32),
                     exposures=wide[["expnum", "band"]].drop_duplicates("expnum"),
                     floor=floor, zero_points=zero_points)


def band_calibrated_errors(phot_dir: str, band: str, model: dict, out_dir: str,
                           transfer: dict[str, pd.DataFrame] | None = None,
                           scales: dict[str, pd.DataFrame] | None = None,
                           apcor: frozenset[str] = frozenset(),
                           floors: dict[str, float] | None = None) -> int:
    """Write one band's per-measurement calibrated denoised errors; runs on a worker.

    The table is written atomically to ``out_dir/band=<band>/errors.parquet``, with
    ``flux_cal_err_raw_floor`` = sqrt(``flux_cal_err_raw``² + (ε·``flux_cal_raw``)²), the raw
    error with the band's repeatability floor ε (0 where none was measured).

    Parameters
    ----------
    phot_dir : str
        The photometry Parquet directory.
    band : str
        The band to read.
    model : dict
        The error model (:meth:`pausdenoise.compare.ErrorModel.to_dict`).
    out_dir : str
        The directory of the per-band tables.
    transfer, scales : dict of str to DataFrame, optional
        As for :func:`band_pairs`.
    apcor : frozenset of str, optional
        As for :func:`band_pairs`.
    floors : dict of str to float, optional
        Per band, the repeatability floor ε (a fraction of the flux; a band not in it, or
        NaN: 0).

    Returns
    -------
    int
        The number of rows written.
    """
    table = _band_table(phot_dir, band, (transfer or {}).get(band), (scales or {}).get(band),
                        band in apcor)
    rows = cmp.ErrorModel.from_dict(model).calibrated_errors(table)
    eps = float(np.nan_to_num((floors or {}).get(band, 0.0)))
    rows["flux_cal_err_raw_floor"] = np.hypot(rows["flux_cal_err_raw"].to_numpy(float),
                                              eps * rows["flux_cal_raw"].to_numpy(float))
    write_partition(rows, Path(out_dir) / f"band={band}" / "errors.parquet")
    return len(rows)


def _per_band(ctx: Context, fn: Any, bands: list[str], *args: Any) -> list[Any]:
    """Call ``fn(photometry_dir, band, *args)`` for every band, on the cluster if there is one.

    Returns
    -------
    list
        The results, in band order.
    """
    phot = str(ctx.paths.photometry)
    if ctx.client is None:
        return [fn(phot, b, *args) for b in bands]
    futures = [ctx.client.submit(fn, phot, b, *args, pure=False) for b in bands]
    return ctx.client.gather(futures)


def _per_band_as_completed(ctx: Context, fn: Any, bands: list[str], *args: Any) -> Iterator[Any]:
    """Call ``fn(photometry_dir, band, *args)`` for every band, on the cluster if there is one.

    Yields
    ------
    Any
        Each result as soon as its task completes (in band order without a cluster), so
        that the caller need not hold them all.
    """
    phot = str(ctx.paths.photometry)
    if ctx.client is None:
        for b in bands:
            yield fn(phot, b, *args)
        return
    futures = [ctx.client.submit(fn, phot, b, *args, pure=False) for b in bands]
    try:
        for fut in as_completed(futures):
            result = fut.result()
            fut.release()  # the worker may drop its copy now
            yield result
    finally:  # an error (or an early stop) leaves no band task running for nothing
        pending = [f for f in futures if not f.done()]
        if pending:
            ctx.client.cancel(pending)


def _transfer(ctx: Context) -> dict[str, pd.DataFrame] | None:
    """Read the inject stage's transfer function per band when ``compare.denoised_transfer``.

    Returns
    -------
    dict of str to DataFrame or None
        Band → its rows of ``transfer.csv`` sorted by ``mag_lo``; None when not asked for.

    Raises
    ------
    StageError
        When it is asked for and the inject stage has not written ``transfer.csv``.
    """
    if ctx.cfg.compare.denoised_transfer != "inject":
        return None
    path = ctx.paths.inject / "transfer.csv"
    if not path.exists():
        raise StageError(f"compare: compare.denoised_transfer is 'inject' but {path} does not "
                         "exist; set inject.enabled and run the inject stage first")
    table = pd.read_csv(path).sort_values("mag_lo")
    return {str(b): g.reset_index(drop=True) for b, g in table.groupby("band") if b != "all"}


def _aperture_corrected_bands(ctx: Context, bands: list[str],
                              summary: dict[str, Any]) -> frozenset[str]:
    """Choose the bands whose fluxes are aperture-corrected (``compare.aperture_correction``).

    Returns
    -------
    frozenset of str
        'off': none; 'auto': the bands with an aperture share on at least one row and no
        share from a shape derived from the aperture (a catalogue without profile columns:
        its sizes are those of the simulation's aperture rule, not the sources'); 'on':
        every band. The summary gets ``aperture_correction`` (bands, rows, rows left out
        for want of a share, median and 1–99 % range of the shares) and, under 'auto',
        ``aperture_correction_skipped`` (the bands left uncorrected for their approximate
        shapes).

    Raises
    ------
    StageError
        With 'on' when a band's photometry has no aperture share at all.
    """
    mode = ctx.cfg.compare.aperture_correction
    if mode == "off":
        return frozenset()
    counts = _per_band(ctx, band_aperture_fractions, bands)
    missing = [c["band"] for c in counts if not c["with_share"]]
    if mode == "on" and missing:
        raise StageError(
            f"compare: compare.aperture_correction is 'on' but the photometry of band(s) "
            f"{', '.join(missing)} has no aper_frac: it needs photometry.profile and a PSF per "
            "frame (header psf_fwhm_px/seeing, or measured); rerun the photometry stage, or "
            "set compare.aperture_correction to auto or off")
    chosen = [c for c in counts if c["with_share"]]
    if mode == "auto":
        skipped = [c["band"] for c in chosen if c["approximate"]]
        chosen = [c for c in chosen if not c["approximate"]]
        if skipped:
            summary["aperture_correction_skipped"] = skipped
    if chosen:
        summary["aperture_correction"] = {
            "bands": [c["band"] for c in chosen],
            "rows": int(sum(c["rows"] for c in chosen)),
            "rows_left_out": int(sum(c["rows"] - c["with_share"] for c in chosen)),
            "median": float(np.median([c["median"] for c in chosen])),
            "p01": float(min(c["p01"] for c in chosen)),
            "p99": float(max(c["p99"] for c in chosen))}
    return frozenset(c["band"] for c in chosen)


def _apcor_note(summary: dict[str, Any]) -> str:
    """Describe the aperture corrections for the stage's line ('' without them).

    Returns
    -------
    str
        The bands left uncorrected for want of catalogue shapes; the corrected bands'
        count, the median and range of their aperture shares, rows left out.
    """
    ac, skipped = summary.get("aperture_correction"), summary.get("aperture_correction_skipped")
    out = ""
    if skipped:
        out = (f"; not aperture-corrected: {', '.join(skipped)} (the catalogue has no "
               "profile_hlr/profile_q/profile_bulge_frac, so the sources' shapes would be "
               "guessed from their apertures; compare.aperture_correction=on uses the guess)")
    if not ac:
        return out
    out += (f"; aperture-corrected ({len(ac['bands'])} band(s), aperture share median "
            f"{ac['median']:.2f}, {ac['p01']:.2f}–{ac['p99']:.2f})")
    if ac["rows_left_out"]:
        out += f", {ac['rows_left_out']} row(s) without a share left out"
    return out


def _relative_bands(ctx: Context, bands: list[str],
                    default: dict[str, list[bool]]) -> list[str]:
    """Return the bands whose exposures are put on one flux scale (``compare.relative_zp``).

    Returns
    -------
    list of str
        'on': every band; 'auto': the bands all of whose frames in the store carry the
        ingest's default zero-point (``zp_source`` 'default'); 'off': none. A band of one
        frame has nothing to put on its scale and is left as it is. ``default``:
        :func:`_default_zero_points`.
    """
    mode = ctx.cfg.compare.relative_zp
    if mode == "off":
        return []
    return [b for b in bands if len(default.get(b, [])) > 1
            and (mode == "on" or all(default[b]))]


def _default_zero_points(ctx: Context) -> dict[str, list[bool]]:
    """Tell, per band, which of its frames in the store carry the ingest's default ZP.

    Returns
    -------
    dict of str to list of bool
        Band → one flag per frame (``zp_source`` 'default'); empty without a store.
    """
    default: dict[str, list[bool]] = {}
    if not Path(ctx.store).exists():
        return default
    for frame in st.list_frames(ctx.store):
        attrs = st.frame_attrs(ctx.store, frame)
        default.setdefault(str(attrs.get("band")), []).append(
            attrs.get("zp_source") == "default")
    return default


def zero_point_scales(table: pd.DataFrame, band: str, snr_min: float,
                      min_sources: int) -> pd.DataFrame:
    """Judge one band's header zero-points by the sources its exposures share.

    The relative exposure scales are fitted as for ``compare.relative_zp`` but not applied:
    with right header zero-points each scale is 1 within the zero-point's stated error
    and the scale's own.

    Parameters
    ----------
    table : pandas.DataFrame
        The band's long photometry table (:func:`_band_table` with ``zero_points``: raw
        rows, ``zp`` and ``zp_err``).
    band : str
        The band.
    snr_min, min_sources : float, int
        ``compare.relative_zp_snr`` and ``compare.relative_zp_min_sources``.

    Returns
    -------
    DataFrame
        :func:`pausdenoise.relative_zp.fit_exposure_scales` of the band with ``band``,
        ``zp_rel_err`` (the header's σZP/ZP) and ``pull`` = ln(scale) /
        sqrt(zp_rel_err² + (scale_err/scale)²) (NaN without a scale or any error).
    """
    fit = fit_exposure_scales(table, snr_min, min_sources)
    zp = table.groupby(["expnum", "ccd"])[["zp", "zp_err"]].first().reset_index()
    fit = fit.merge(zp, on=["expnum", "ccd"], how="left")
    rel = np.nan_to_num(fit["zp_err"].to_numpy(float) / fit["zp"].to_numpy(float))
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.hypot(rel, fit["scale_err"].to_numpy(float) / fit["scale"].to_numpy(float))
        pull = np.where(err > 0, np.log(fit["scale"].to_numpy(float)) / err, np.nan)
    return fit.drop(columns=["zp", "zp_err"]).assign(band=band, zp_rel_err=rel, pull=pull)


def _zero_point_bands(bands: list[str], default: dict[str, list[bool]],
                      relative: dict | None) -> list[str]:
    """Return the bands whose calibrated header zero-points are checked.

    Returns
    -------
    list of str
        The bands of two frames or more none of which carries the ingest's default
        zero-point (``default``: :func:`_default_zero_points`), and that are not put on
        relative zero-points.
    """
    return [b for b in bands if len(default.get(b, [])) > 1 and not any(default[b])
            and b not in (relative or {})]


def _zero_point_check(checked: list[pd.DataFrame], keep: list[str], out: Path,
                      summary: dict[str, Any]) -> None:
    """``zero_point_check.csv`` and the summary's ``zero_point_check``.

    ``checked``: the bands' :func:`zero_point_scales` tables, as :func:`band_pairs` made
    them for the bands in ``keep`` (:func:`_zero_point_bands`); without such bands a
    stale file is removed.
    """
    path = out / "zero_point_check.csv"
    if not keep or not checked:
        path.unlink(missing_ok=True)
        return
    table = pd.concat(checked, ignore_index=True)
    table = table[["band", *[c for c in table.columns if c != "band"]]]
    table.to_csv(path, index=False)
    ok = table["scale"].notna()
    if not ok.any():
        return
    summary["zero_point_check"] = {
        "bands": keep, "frames": int(ok.sum()),
        "scatter": sigma68(np.log(table.loc[ok, "scale"].to_numpy(float))),
        "stated": float(np.median(table.loc[ok, "zp_rel_err"])),
        "pulls": sigma68(table.loc[ok, "pull"].to_numpy(float))}


def _relative_scales(ctx: Context, bands: list[str], out: Path, summary: dict[str, Any],
                     apcor: frozenset[str],
                     default: dict[str, list[bool]]) -> dict[str, pd.DataFrame] | None:
    """Fit the relative exposure scales of the bands that need them; ``relative_zp.csv``.

    Returns
    -------
    dict of str to DataFrame or None
        Band → its frames' scales (:func:`band_exposure_scales`); None when no band needs
        them (a stale ``relative_zp.csv`` is removed).
    """
    chosen = _relative_bands(ctx, bands, default)
    path = out / "relative_zp.csv"
    if not chosen:
        path.unlink(missing_ok=True)
        return None
    cfg = ctx.cfg.compare
    table = pd.concat(_per_band(ctx, band_exposure_scales, chosen, cfg.relative_zp_snr,
                                cfg.relative_zp_min_sources, apcor), ignore_index=True)
    table = table[["band", *[c for c in table.columns if c != "band"]]]
    table.to_csv(path, index=False)
    ok = table["scale"].notna()
    summary["relative_zp"] = {
        "bands": chosen, "frames": int(ok.sum()), "frames_left_out": int((~ok).sum()),
        "scale_min": float(table.loc[ok, "scale"].min()) if ok.any() else None,
        "scale_max": float(table.loc[ok, "scale"].max()) if ok.any() else None,
        "sources_min": int(table.loc[ok, "n_sources"].min()) if ok.any() else 0,
        "sources_max": int(table.loc[ok, "n_sources"].max()) if ok.any() else 0}
    return {str(b): g.reset_index(drop=True) for b, g in table.groupby("band")}


def _relative_note(summary: dict[str, Any]) -> str:
    """Describe the relative zero-points for the stage's line ('' without them).

    Returns
    -------
    str
        Frames, range of scales and of sources used, frames left out.
    """
    rz = summary.get("relative_zp")
    if not rz:
        return ""
    if not rz["frames"]:
        return (f"; relative zero-points: no frame has enough shared bright sources, "
                f"{rz['frames_left_out']} frame(s) left out")
    out = (f"; exposures put on one flux scale (relative zero-points of {rz['frames']} "
           f"frames: scales {rz['scale_min']:.3f}–{rz['scale_max']:.3f} from "
           f"{rz['sources_min']}–{rz['sources_max']} shared sources)")
    if rz["frames_left_out"]:
        out += f", {rz['frames_left_out']} frame(s) without enough sources left out"
    return out


@dataclass
class _Pairs:
    """The driver's merge of every band's :class:`BandPairs`."""

    n_total: int
    per_bin_total: np.ndarray
    #: the global bottom-``compare.max_pairs`` sample, canonical columns
    pairs: pd.DataFrame
    #: every band's measurements, in band order
    wide: pd.DataFrame
    #: every band's exposures (``expnum``, ``band``), in band order
    exp_bands: pd.DataFrame
    #: every band's raw repeatability floor, one row per band, in band order
    floors: pd.DataFrame
    #: the checked bands' zero-point tables (zero_point_scales), in band order
    zero_points: list[pd.DataFrame]


def _collect_pairs(ctx: Context, bands: list[str], bins: np.ndarray,
                   scales: dict[str, pd.DataFrame] | None,
                   apcor: frozenset[str], checked: list[str]) -> _Pairs | None:
    """Pair every band (on the cluster) and fold the bands' samples as they complete.

    Returns
    -------
    _Pairs or None
        The merged pairs; None when no band has a measurement.
    """
    cfg = ctx.cfg.compare
    n_total = 0
    per_bin_total = np.zeros(len(bins) - 1, dtype=np.int64)
    sample: pd.DataFrame | None = None
    meas: dict[str, pd.DataFrame] = {}
    exps: dict[str, pd.DataFrame] = {}
    floors: dict[str, dict[str, float]] = {}
    zero_points: dict[str, pd.DataFrame] = {}
    check = (frozenset(checked), cfg.relative_zp_snr, cfg.relative_zp_min_sources)
    for part in _per_band_as_completed(ctx, band_pairs, bands, cfg.exclude_flagged, bins,
                                       cfg.max_pairs, cfg.seed, _transfer(ctx), scales,
                                       apcor, cfg.floor_snr, check):
        if part is None:
            continue
        n_total += part.n_pairs
        per_bin_total += part.per_bin
        meas[part.band], exps[part.band] = part.measurements, part.exposures
        floors[part.band] = part.floor
        if part.zero_points is not None:
            zero_points[part.band] = part.zero_points
        # the running global bottom-k: at most max_pairs kept, ~2·max_pairs while merging
        sample = cmp.bottom_k_pairs(part.pairs if sample is None else [sample, part.pairs],
                                    cfg.max_pairs, cfg.seed)
        del part
    if sample is None:
        return None
    pairs = cmp.canonical_pairs(sample)
    del sample
    present = [b for b in bands if b in meas]  # band order, whatever the completion order
    wide = pd.concat([meas[b] for b in present], ignore_index=True)
    exp_bands = pd.concat([exps[b] for b in present], ignore_index=True)
    floor_table = pd.DataFrame([{"band": b, **floors[b]} for b in present])
    return _Pairs(n_total, per_bin_total, pairs, wide, exp_bands, floor_table,
                  [zero_points[b] for b in present if b in zero_points])


def _repeatability_floor(p: _Pairs, out: Path, summary: dict[str, Any]) -> None:
    """``repeatability_floor.csv`` and the summary's ``repeatability_floor``.

    The summary holds the bands measured and the median, least and largest floor over them.
    """
    p.floors.to_csv(out / "repeatability_floor.csv", index=False)
    measured = p.floors[p.floors["n_pairs"] > 0]
    if measured.empty:
        return
    floor = measured["floor"].to_numpy(float)
    summary["repeatability_floor"] = {
        "bands": len(measured), "median": float(np.median(floor)),
        "min": float(floor.min()), "max": float(floor.max()),
        "pairs": int(measured["n_pairs"].sum())}


def _validate_error_model(ctx: Context, p: _Pairs, bins: np.ndarray, out: Path,
                          summary: dict[str, Any]) -> None:
    """Cross-validate the error model over exposures; ``error_model_validation.csv``."""
    cfg = ctx.cfg.compare
    try:
        val, fold_models = cmp.cross_validate_error_model(
            p.pairs, p.exp_bands, bins, folds=cfg.folds, seed=cfg.seed,
            min_fit_pairs=cfg.min_fit_pairs, min_pairs=cfg.min_validate_pairs,
            tolerance=cfg.tolerance, band_factors=cfg.band_factors)
    except ValueError as exc:
        summary["error_model_validation"] = f"not validated: {exc}"
        return
    val.to_csv(out / "error_model_validation.csv", index=False)
    summary["error_model_folds"] = [list(m.fit_exposures) for m in fold_models]
    allrow = val[val["bin"] == "all"].iloc[0]
    summary["validation_sigma68_all"] = float(allrow["sigma68_den_model"])
    summary["validation_pairs"] = int(allrow["n_pairs"])
    judged = val[val["passed"].notna()]
    summary["validation_bins_passed"] = f"{int(judged['passed'].sum())}/{len(judged)}"


def _error_model(ctx: Context, p: _Pairs, bands: list[str], bins: np.ndarray, out: Path,
                 summary: dict[str, Any],
                 scales: dict[str, pd.DataFrame] | None,
                 apcor: frozenset[str]) -> cmp.ErrorModel | None:
    """Fit, write, apply (per measurement) and cross-validate the denoised error model.

    Returns
    -------
    ErrorModel or None
        The model fitted on all pairs; None without denoised fluxes or when the fit fails.
    """
    cfg = ctx.cfg.compare
    if "d_den" not in p.pairs.columns or not len(p.pairs):
        return None
    try:
        model = cmp.fit_error_model(p.pairs, p.exp_bands["expnum"], bins,
                                    min_pairs=cfg.min_fit_pairs, band_factors=cfg.band_factors)
    except ValueError as exc:
        summary["error_model"] = f"not fitted: {exc}"
        return None
    mf = model.to_frame()
    mf["global_scale"] = model.global_scale
    mf.to_csv(out / "error_model.csv", index=False)
    model.band_frame().to_csv(out / "error_model_bands.csv", index=False)
    (out / "error_model.json").write_text(json.dumps(model.to_dict(), indent=2))
    floors = dict(zip(p.floors["band"], p.floors["floor"], strict=True))
    written = _per_band(ctx, band_calibrated_errors, bands, model.to_dict(),
                        str(out / "denoised_errors"), _transfer(ctx), scales, apcor, floors)
    summary["calibrated_error_rows"] = int(sum(written))
    summary["error_model_global_scale"] = model.global_scale
    summary["error_model_band_factor"] = dict(model.band_factor)
    _validate_error_model(ctx, p, bins, out, summary)
    return model


def _write_statistics(ctx: Context, p: _Pairs, model: cmp.ErrorModel | None, bins: np.ndarray,
                      out: Path, summary: dict[str, Any]) -> None:
    """``sigma68_by_bin.csv``/``.json`` and the report's ``df_values.npz``."""
    by_bin = cmp.summarise(p.pairs, bins, model=model, measurements=p.wide)
    by_bin.insert(by_bin.columns.get_loc("n_pairs") + 1, "n_pairs_total",
                  np.r_[p.n_total, p.per_bin_total].astype(np.int64))
    by_bin.to_csv(out / "sigma68_by_bin.csv", index=False)
    (out / "sigma68_by_bin.json").write_text(by_bin.to_json(orient="records", indent=2))
    # the report's histograms need no more than a few 10^5 values: the bottom 500,000 of the
    # same hash, i.e. of all pairs (a rate subsample with the same hash would be nested in
    # the sample's hash cut and keep far more than 500,000 of a sampled table)
    hist_pairs = cmp.bottom_k_pairs(p.pairs, 500_000, ctx.cfg.compare.seed).drop(
        columns=cmp.HASH_COLUMN)
    np.savez_compressed(out / "df_values.npz", **cmp.df_arrays(hist_pairs, model))
    allb = by_bin[by_bin["bin"] == "all"].iloc[0]
    for col in ("sigma68_raw", "sigma68_den_rawerr", "sigma68_den_model",
                "median_ratio_den_raw"):
        if col in allb:
            summary[col] = float(allb[col])


def _truth_comparison(ctx: Context, bins: np.ndarray, out: Path,
                      summary: dict[str, Any], apcor: frozenset[str]) -> None:
    """``truth_comparison.csv``: flux bias and scatter against the truth (simulations).

    The aperture-corrected bands are compared with the true total flux; the others with the
    source's own noiseless flux inside its catalogue aperture.
    """
    # simulations only: the truth table is per measurement anyway
    table = read_photometry(ctx.paths.photometry)
    if apcor:
        corrected = table["band"].isin(list(apcor))
        table = pd.concat([table[~corrected], aperture_corrected(table[corrected])],
                          ignore_index=True)
    truth = pd.read_parquet(ctx.truth_fluxes)
    if {"flux_true_aper_adu", "zp_true"} <= set(truth.columns):
        # Apertures hold only part of a source's light: compare with the source's own
        # noiseless flux inside its catalogue aperture, calibrated with the exact ZP.
        inside = truth["flux_true_aper_adu"] * truth["zp_true"]
        truth = truth.assign(flux_true_cal=truth["flux_true_cal"].where(
            truth["band"].isin(list(apcor)), inside))
    tc = cmp.truth_comparison(table, truth, bins)
    tc.to_csv(out / "truth_comparison.csv", index=False)
    for kind, g in tc[tc["bin"] == "all"].groupby("kind"):
        summary[f"truth_bias_{kind}"] = float(g["bias_median"].iloc[0])
        summary[f"truth_scatter_{kind}"] = float(g["scatter_sigma68"].iloc[0])
    if "zp_true" in truth.columns:
        summary.update(cmp.zero_point_errors(table, truth))


def run(ctx: Context) -> dict[str, Any]:
    """Compute and write the comparison tables.

    Out of core: each band is read and paired on its own (one task per band on the
    cluster); only its exact pair counts and a compact pair table (Δf values, I_auto, band,
    exposures, hash: ~38 bytes a pair) of at most ``compare.max_pairs`` pairs come back, and
    the driver merges them as they complete into the global bottom-``compare.max_pairs``
    sample (:func:`pausdenoise.compare.bottom_k_pairs`): exactly min(pairs,
    ``compare.max_pairs``) pairs, uniform without replacement, deterministic, for the
    statistics and the error model; the pair counts stay exact. The photometry is read
    twice (three times for bands put on relative zero-points): to pair (and check
    calibrated zero-points), and to write the per-measurement errors with the fitted model.

    Parameters
    ----------
    ctx : Context
        The stage context (``ctx.client`` None: everything in this process).

    Returns
    -------
    dict
        The summary (also written to ``compare/summary.json``) with a ``note``; ``pairs``
        is the exact count, ``pairs_used`` the sample's size and ``pair_sampling_rate``
        their ratio.
    """
    bands = photometry_bands(ctx.paths.photometry)
    if not bands:
        return {"note": "no photometry to compare"}
    out = ctx.paths.compare
    out.mkdir(parents=True, exist_ok=True)
    bins = np.asarray(ctx.cfg.compare.bins, dtype=float)
    summary: dict[str, Any] = {}
    apcor = _aperture_corrected_bands(ctx, bands, summary)
    default = _default_zero_points(ctx)  # the store's frames, read once
    scales = _relative_scales(ctx, bands, out, summary, apcor, default)
    checked = _zero_point_bands(bands, default, scales)
    p = _collect_pairs(ctx, bands, bins, scales, apcor, checked)
    _zero_point_check(p.zero_points if p is not None else [], checked, out, summary)
    if p is None:
        what = "unflagged measurement" if ctx.cfg.compare.exclude_flagged else "measurement"
        return {"note": f"no {what} to compare" + _apcor_note(summary)
                + _relative_note(summary)}
    n_total, n_used = p.n_total, len(p.pairs)
    rate = n_used / n_total if n_total else 1.0
    summary.update({"pairs": n_total, "pairs_used": n_used, "pair_sampling_rate": rate,
                    "measurements": len(p.wide), "bands": len(bands)})
    model = _error_model(ctx, p, bands, bins, out, summary, scales, apcor)
    _write_statistics(ctx, p, model, bins, out, summary)
    _repeatability_floor(p, out, summary)
    if ctx.truth_fluxes is not None:
        _truth_comparison(ctx, bins, out, summary, apcor)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if n_total == 0:
        return {"note": "0 pairs: no source is measured in two exposures of one band, so "
                        "there is no Δf, σ68 or error model (they need two exposures or more "
                        "per band)", **summary}
    sampled = f" ({n_used} used)" if rate < 1.0 else ""
    note = (f"{n_total} pairs{sampled}; σ68 raw {summary.get('sigma68_raw', np.nan):.2f}, "
            f"denoised/raw-errors {summary.get('sigma68_den_rawerr', np.nan):.2f}, "
            f"denoised/model-errors (cross-validated) "
            f"{summary.get('validation_sigma68_all', np.nan):.2f}")
    return {"note": note + _apcor_note(summary) + _relative_note(summary)
            + _outside_bins_note(p, bins), **summary}


def _outside_bins_note(p: _Pairs, bins: np.ndarray) -> str:
    """Say so when nearly all pairs fall outside ``compare.bins`` (instrumental magnitudes).

    Returns
    -------
    str
        '' when at least 10 % of the pairs are binned (a survey catalogue deeper than the
        last bin is not a mistake); else how many are not, the range of the measurements'
        ``I_auto`` and what to set.
    """
    binned = int(p.per_bin_total.sum())
    if binned >= 0.1 * p.n_total:
        return ""
    mag = p.wide["I_auto"].to_numpy(float) if "I_auto" in p.wide.columns else np.empty(0)
    mag = mag[np.isfinite(mag)]
    where = (f"I_auto {mag.min():.1f}–{mag.max():.1f}" if mag.size
             else "no I_auto: set input.catalogue_magnitude")
    return (f"; {p.n_total - binned} of {p.n_total} pairs outside compare.bins "
            f"{bins[0]:g}–{bins[-1]:g} ({where}): only 'all' describes them; set compare.bins "
            "to the catalogue's magnitudes")
