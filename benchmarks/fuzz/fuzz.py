"""Coverage-guided fuzzing (atheris / libFuzzer) of the FITS header reader and the catalogue
reader. The targets and what counts as a finding are in ``targets.py``.

Usage::

    python benchmarks/fuzz/fuzz.py fits -max_total_time=120
    python benchmarks/fuzz/fuzz.py catalogue -max_total_time=120 -rss_limit_mb=4096
    python benchmarks/fuzz/fuzz.py catalogue --corpus DIR crash-<sha1>   # replay one input

Arguments after the target name are libFuzzer's (``-max_total_time``, ``-runs``,
``-timeout`` …). The corpus lives in ``--corpus`` (default ``bench-output/fuzz/<target>``,
ignored by git); it is seeded from ``targets.py`` when empty, and grows across runs. A
finding stops the run, prints the traceback and leaves the input as ``crash-<sha1>`` in
the current directory. ``make fuzz`` runs both targets (``FUZZ_SECONDS`` each). Needs the
optional extra ``fuzz`` (``pip install -e '.[fuzz]'``); ``make test`` never runs this.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, seed the corpus, instrument the readers and fuzz.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=("fits", "catalogue"))
    parser.add_argument("--corpus", type=Path, default=None, help="corpus directory")
    args, libfuzzer = parser.parse_known_args(argv)

    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: pip install -e '.[fuzz]'")

    sys.path[:0] = [str(HERE), str(ROOT)]
    with atheris.instrument_imports(include=["pausdenoise", "astropy.io.fits", "targets"]):
        import astropy.io.fits  # noqa: F401
        import targets

        import pausdenoise.ingest.frame  # noqa: F401  (instrumented for the fuzzer)
        import pausdenoise.paus_layout  # noqa: F401  (instrumented for the fuzzer)
        import pausdenoise.photometry  # noqa: F401

    one_input, seeds = targets.TARGETS[args.target]
    corpus = args.corpus or ROOT / "bench-output" / "fuzz" / args.target
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for seed in seeds():
            (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    replay = [a for a in libfuzzer if not a.startswith("-")]
    inputs = [] if replay else [str(corpus)]
    atheris.Setup([sys.argv[0], *libfuzzer, *inputs], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
