"""pausdenoise: Noise2Void denoising of PAUS survey exposures, judged by photometry.

Stages (one module each) take arrays or tables plus their config and return arrays or
tables; only :mod:`pausdenoise.pipeline` and :mod:`pausdenoise.cli` touch paths and clusters.
"""

__version__ = "0.1.0"
