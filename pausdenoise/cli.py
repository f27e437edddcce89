"""Command line: ``pausdenoise <stage>`` runs one stage, ``pausdenoise run`` the pipeline.

``pausdenoise export`` writes a run's denoised (and raw) frames as FITS files
(:mod:`pausdenoise.export`); it reads the store only and is not a pipeline stage.

Every command works inside a *run directory* (``--out``, default ``pausdenoise-run``) whose
layout is fixed by :class:`pausdenoise.runstate.RunPaths`, and reads the pipeline
configuration from ``--config`` (YAML or TOML; every key documented in
``configs/reference.yaml``; unknown keys are refused with their path).

Exit codes (scripts can trust them)
-----------------------------------
0  success: everything asked for was done (or was already up to date)
1  failure: the command could not do its job; nothing completed was lost
2  usage or configuration error (bad option, unknown config key, impossible chunking, a
   reference catalogue that cannot be used, found before any work)
3  partial success: the run finished but some inputs were skipped (listed in the summary)
4  the run directory is locked by another live run
130  interrupted (Ctrl-C): the running stage is recorded as ``interrupted`` in ``run.json``;
     completed work is kept and a rerun resumes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pausdenoise import __version__
from pausdenoise.errors import (
    CatalogueError,
    ConfigError,
    PausDenoiseError,
    PreflightError,
    RunLockedError,
)
from pausdenoise.plan import MEASURED_RATES, RATE_UNITS, plan_from_config
from pausdenoise.redact import redact_text

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a job stopped by Ctrl-C

STAGE_HELP = {
    "simulate": "render the simulated PAUCam-like survey (FITS in the PAUS layout + truth)",
    "ingest": "ingest FITS frames (PAUS layout or generic) into the Zarr survey store",
    "info": "summarise the survey store (frames, bands, shapes, arrays present)",
    "train": "train the Noise2Void network on patches sampled from the store",
    "denoise": "denoise every frame of the store with map_overlap (seam-free, resumable)",
    "stack": "co-add the exposures per band/CCD and cut leave-one-out cGAN training pairs "
             "(needs gan.enabled)",
    "gan": "train the pix2pix cGAN, apply it to held-out frames, score it against the "
           "stack and the truth (needs gan.enabled)",
    "photometry": "forced photometry (apertures and profile-weighted total flux) on raw "
                  "and denoised images (Parquet)",
    "inject": "add galaxies of known flux to copies of the frames, denoise and measure them: "
              "flux bias, pulls and scatter per magnitude bin (needs inject.enabled)",
    "compare": "cross-exposure df statistics, sigma68, flux ratios, calibrated errors",
    "evaluate": "metrics against the truth (simulation) or independent exposures: pixels, "
                "fluxes, detection depth at equal purity",
    "report": "figures and the self-contained HTML report of a run directory",
    "run": "the whole pipeline from a config file; resumes what is already done",
    "plan": "dry run: tasks, bytes, memory per worker and time for N exposures, from "
            "measured stage rates (nothing is computed)",
}


#: the ``--rate`` keys with their units and measured values, for the help of ``plan``
_RATE_HELP = ", ".join(
    f"{k} ({RATE_UNITS[k]}; {'not measured' if v is None else f'measured {v:g}'})"
    for k, v in MEASURED_RATES.items()
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="pipeline configuration file (YAML or TOML); defaults if omitted")
    p.add_argument("--out", type=Path, default=Path("pausdenoise-run"),
                   help="run directory (created if missing; default: ./pausdenoise-run)")
    p.add_argument("--cluster", default=None,
                   help="Dask cluster spec overriding the config: local | threads | cuda | "
                        "scheduler-file:PATH | address:tcp://HOST:PORT | slurm | htcondor")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="redo the stage even if its outputs are complete")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``pausdenoise`` (all subcommands).

    Returns
    -------
    argparse.ArgumentParser
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="pausdenoise",
        description="Out-of-core, Dask-parallel Noise2Void denoising of PAUS exposures, "
                    "judged by forced photometry.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage/config error, 3 partial success, "
               "4 run directory locked, 130 interrupted.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, text in STAGE_HELP.items():
        p = sub.add_parser(name, help=text, description=text)
        _add_common(p)
        if name == "ingest":
            p.add_argument("--fits", nargs="+", default=None, metavar="PATH",
                           help="directories, FITS files (.fits, .fits.gz, .fits.fz) or glob "
                                "patterns (expanded here, quoted or not) to ingest instead "
                                "of the run's simulated survey")
            p.add_argument("--layout", choices=["paus", "generic"], default=None,
                           help="input layout (overrides ingest.layout)")
        if name == "run":
            p.add_argument("--stages", default=None,
                           help="comma-separated subset of stages to run, in pipeline order")
        if name == "plan":
            p.add_argument("--exposures", type=int, required=True,
                           help="number of exposures to plan for")
            p.add_argument("--ccds", type=int, default=18, help="CCDs per exposure (18)")
            p.add_argument("--ccd-shape", default="4096x2048",
                           help="CCD shape NYxNX in px (4096x2048)")
            p.add_argument("--workers", type=int, default=None,
                           help="workers (default: cluster.n_workers or 1)")
            p.add_argument("--gpus", type=int, default=0,
                           help="GPUs in all (0): train (DDP) and denoise run on them; their "
                                "rates are not measured, pass them with --rate")
            p.add_argument("--rate", action="append", default=[], metavar="KEY=VALUE",
                           help="override a rate (repeatable); keys: " + _RATE_HELP)
            p.add_argument("--json", action="store_true", help="print the plan as JSON")
        if name == "report":
            p.add_argument("--open", action="store_true", help="print a file:// URL to open")
    _add_export(sub)
    return parser


def _configure_logging(verbose: int) -> None:
    """Log at WARNING (INFO with -v, DEBUG with -vv); quiet distributed unless -vv."""
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if verbose < 2:  # distributed logs every worker start/stop at INFO
        # read by distributed when it is imported (it configures its own loggers then)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.WARNING)


#: exit code and message prefix of the package's errors that are not a stage failure
_ERROR_EXITS: tuple[tuple[type[PausDenoiseError], int, str], ...] = (
    (ConfigError, EXIT_USAGE, "configuration error: "),
    (CatalogueError, EXIT_USAGE, "catalogue error: "),
    (RunLockedError, EXIT_LOCKED, ""),
    (PreflightError, EXIT_FAILURE, "preflight failed: "),
)


def _error_exit(exc: PausDenoiseError) -> int:
    """Print the error (credentials redacted) and return its exit code.

    Returns
    -------
    int
        :data:`EXIT_USAGE` for a configuration or catalogue error, :data:`EXIT_LOCKED` for a
        locked run directory, :data:`EXIT_FAILURE` for the rest.
    """
    code, prefix = EXIT_FAILURE, ""
    for cls, cls_code, cls_prefix in _ERROR_EXITS:
        if isinstance(exc, cls):
            code, prefix = cls_code, cls_prefix
            break
    print(f"pausdenoise: {prefix}{redact_text(str(exc))}", file=sys.stderr)
    return code


def _run_command(args: argparse.Namespace) -> int:
    """Load the configuration and run the command.

    Returns
    -------
    int
        The exit code.
    """
    if args.command == "export":
        return _export(args)
    # imported only now, after _configure_logging: the configuration and the pipeline
    # import distributed, which reads DASK_LOGGING__DISTRIBUTED when it is imported
    from pausdenoise.config import load_config
    from pausdenoise.pipeline.runner import run, store_info, with_ingest_source  # as above

    cfg = load_config(args.config, overrides=args.overrides, cluster=args.cluster)
    if args.command == "plan":
        return _plan(cfg, args)
    if args.command == "info":
        print(store_info(cfg, args.out))
        return EXIT_OK
    if args.command == "ingest":
        cfg = with_ingest_source(cfg, _fits_inputs(args.fits), args.layout)
    stages = None
    if args.command == "run" and args.stages:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    elif args.command != "run":
        stages = [args.command]
    result = run(cfg, args.out, stages=stages, force=args.force)
    print(result.summary_text())
    return EXIT_PARTIAL if result.partial else EXIT_OK


def _fits_inputs(items: list[str] | None) -> Path | list[Path] | None:
    """Expand the ``--fits`` patterns: one path as it was, several as a list.

    Returns
    -------
    Path, list of Path or None
        None without ``--fits``.

    Raises
    ------
    ConfigError
        A pattern matches no file (nothing is created then).
    """
    if not items:
        return None
    # the ingest package imports dask; only the ingest command needs it
    from pausdenoise.ingest.plan import expand_inputs

    paths, unmatched = expand_inputs(items)
    if unmatched:
        raise ConfigError(f"--fits: no file matches {', '.join(map(repr, unmatched))}")
    return paths[0] if len(items) == 1 and len(paths) == 1 else paths


def main(argv: list[str] | None = None) -> int:
    """Run the ``pausdenoise`` command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code (see the module docstring).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(__version__)
        return EXIT_OK
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    _configure_logging(args.verbose)
    try:
        return _run_command(args)
    except ValidationError as exc:
        print(f"pausdenoise: configuration error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except PausDenoiseError as exc:
        return _error_exit(exc)
    except KeyboardInterrupt:
        print("pausdenoise: interrupted; completed work is kept, rerun to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


def _rates(items: list[str]) -> dict[str, float]:
    """Apply the ``--rate KEY=VALUE`` options to the measured rates.

    Returns
    -------
    dict of str to float
        :data:`pausdenoise.plan.MEASURED_RATES` with the overrides.

    Raises
    ------
    ValueError
        For an unknown key or a value that is not a number.
    """
    rates = dict(MEASURED_RATES)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--rate expects KEY=VALUE, got {item!r}")
        if key not in rates:
            raise ValueError(f"unknown rate {key!r}; rates are {', '.join(rates)}")
        try:
            rates[key] = float(value)
        except ValueError:
            raise ValueError(f"--rate {key}=VALUE needs a number, got {value!r}") from None
    return rates


def _plan(cfg: Any, args: argparse.Namespace) -> int:
    """Print the plan of ``pausdenoise plan`` (table or JSON).

    Returns
    -------
    int
        :data:`EXIT_OK`, or :data:`EXIT_USAGE` for a bad option.
    """
    try:
        ny, nx = (int(v) for v in args.ccd_shape.lower().split("x"))
        rates = _rates(args.rate)
        report = plan_from_config(cfg, args.exposures, args.ccds, (ny, nx),
                                  n_workers=args.workers, gpus=args.gpus, rates=rates)
    except ValueError as exc:
        print(f"pausdenoise: plan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.table())
    return EXIT_OK


EXPORT_HELP = ("write the denoised (and/or raw) frames of a run's store as FITS files for "
               "SExtractor, DS9 or any FITS reader (header, WCS and history kept)")


def _add_export(sub: Any) -> None:
    """Add the ``export`` subcommand (not a pipeline stage: it reads the store only)."""
    p = sub.add_parser("export", help=EXPORT_HELP, description=EXPORT_HELP)
    p.add_argument("--out", type=Path, default=Path("pausdenoise-run"),
                   help="run directory whose store is exported (default: ./pausdenoise-run)")
    p.add_argument("--to", type=Path, default=None,
                   help="destination directory (default: RUN_DIR/export)")
    p.add_argument("--kind", choices=["denoised", "raw", "both"], default="denoised",
                   help="images to export (default: denoised)")
    p.add_argument("--layout", choices=["exposure", "frame"], default="exposure",
                   help="exposure: <expnum>_<kind>.fits, one extension CCDnn per CCD; "
                        "frame: <expnum>_<ccd>_<kind>.fits (default: exposure)")
    p.add_argument("--compress", action="store_true",
                   help="lossless tile compression (GZIP_2, no quantisation): .fits.fz")
    p.add_argument("--force", action="store_true",
                   help="rewrite files that are already up to date")


def _export(args: argparse.Namespace) -> int:
    """Run ``pausdenoise export`` under the run directory's lock.

    Returns
    -------
    int
        :data:`EXIT_OK`, :data:`EXIT_PARTIAL` when some frame had no denoised image, or
        :data:`EXIT_FAILURE` when there is no store or nothing could be exported.
    """
    from pausdenoise.export import export_store  # astropy kept off the other commands' path
    from pausdenoise.runstate import RunPaths, run_lock  # as above, with the export

    paths = RunPaths(args.out)
    if not paths.store.is_dir():
        print(f"pausdenoise: export: no survey store at {paths.store} (run ingest first)",
              file=sys.stderr)
        return EXIT_FAILURE
    kinds = ("denoised", "raw") if args.kind == "both" else (args.kind,)
    with run_lock(paths):
        report = export_store(paths.store, args.to or paths.out / "export", kinds=kinds,
                              layout=args.layout, compress=args.compress, force=args.force)
    print(report.summary_text())
    if not report.written and not report.up_to_date:
        return EXIT_FAILURE
    return EXIT_PARTIAL if report.partial else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
