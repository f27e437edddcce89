"""Shared fixtures. Stage-specific synthetic data makers live in the package or in each
test module; this file holds only what every test tree needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One thread each for torch and the BLAS libraries: the test machine has two cores and the
# threaded dask scheduler runs tasks concurrently (PyTorch threads x dask threads
# oversubscribe the cores otherwise).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

try:  # torch is a core dependency, but keep collection working if it is broken
    import torch

    torch.set_num_threads(1)
except Exception:  # pragma: no cover
    pass

ROOT = Path(__file__).resolve().parents[1]
# Real CCD frames for tests: PAUSDENOISE_REAL_DATA, else a shared/data/real folder beside the
# checkout (the layout the project's data bundle unpacks to).
REAL_DATA = Path(os.environ.get("PAUSDENOISE_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real CCD test data (see ``REAL_DATA``); skip with a reason when absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real CCD test data not found at {REAL_DATA} (set PAUSDENOISE_REAL_DATA)")
    return REAL_DATA


@pytest.fixture
def two_saao_frames(real_data_dir: Path, tmp_path: Path) -> Path:
    """A directory linking the first two real SAAO exposures (no WCS); skip when absent.

    Returns the directory.
    """
    src = real_data_dir / "saao-kb13475"
    if not src.is_dir():
        pytest.skip(f"{src} not present")
    frames = tmp_path / "frames"
    frames.mkdir()
    for f in sorted(src.glob("AKB13475I*.fits"))[:2]:
        (frames / f.name).symlink_to(f)
    return frames


@pytest.fixture
def decam_config(real_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``configs/decam.yaml`` run from a directory whose ``data/real`` is the real data.

    The config names its frames relative to the working directory
    (``data/real/decam-multiepoch``), as a user runs it from the project root; this fixture
    links the test data there and changes into that directory. Returns the config's path.
    """
    if not (real_data_dir / "decam-multiepoch").is_dir():
        pytest.skip("decam-multiepoch not present in the real test data")
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "real").symlink_to(real_data_dir, target_is_directory=True)
    monkeypatch.chdir(work)
    return ROOT / "configs" / "decam.yaml"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests with a reason when no CUDA device is present."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none present on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
