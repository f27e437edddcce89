"""Checkpoints: exact round trip, metadata, fingerprint, and refusal of bad files."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pausdenoise.n2v.checkpoint import (
    METADATA_KEY,
    REQUIRED_KEYS,
    CheckpointError,
    checkpoint_fingerprint,
    load_checkpoint,
    load_model,
    read_metadata,
    save_checkpoint,
)
from pausdenoise.n2v.normalise import NORMALISATION_METHOD
from pausdenoise.n2v.train import TrainHistory
from pausdenoise.n2v.unet import UNet, UNetConfig, predict_array

torch.set_num_threads(1)


def _model(seed: int = 0, **kw) -> UNet:
    torch.manual_seed(seed)
    cfg = UNetConfig(**{"depth": 2, "base_channels": 4, **kw})
    model = UNet(cfg)
    model.train()
    with torch.no_grad():  # non-trivial batch-norm running statistics
        model(torch.randn(4, 1, 32, 32) * 3 + 1)
    return model.eval()


def _save(path: Path, seed: int = 0, **kw) -> UNet:
    model = _model(seed, **kw)
    hist = TrainHistory(train_loss=[1.0, 0.5], val_loss=[0.9, 0.6], best_epoch=1)
    save_checkpoint(
        path,
        model,
        provenance={"store": Path("/data/survey.zarr"), "frames": ["00000001_01"], "seed": 7},
        history=hist,
    )
    return model


def _rewrite(src: Path, dst: Path, tensors=None, **meta_changes) -> None:
    """Copy a checkpoint with modified tensors and/or metadata entries."""
    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        state = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes)
    for k in [k for k, v in meta_changes.items() if v is None]:
        del meta[k]
    save_file(tensors if tensors is not None else state, str(dst), {METADATA_KEY: json.dumps(meta)})


@pytest.mark.parametrize("n2v2", [False, True])
def test_round_trip_reproduces_outputs_exactly(tmp_path: Path, n2v2: bool) -> None:
    path = tmp_path / "model.safetensors"
    model = _save(path, n2v2=n2v2)
    loaded, _ = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    x = torch.randn(2, 1, 48, 40)
    assert torch.equal(predict_array(loaded, x), predict_array(model, x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_metadata_contents(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model = _save(path)
    meta = read_metadata(path)
    assert set(REQUIRED_KEYS) <= set(meta)
    assert meta["unet_config"] == model.config.to_dict()
    assert meta["normalisation"] == NORMALISATION_METHOD
    assert meta["receptive_field_radius"] == model.receptive_field_radius()
    assert meta["halo"] == model.halo()
    assert meta["provenance"] == {
        "store": "/data/survey.zarr",
        "frames": ["00000001_01"],
        "seed": 7,
    }
    assert meta["history"]["best_epoch"] == 1 and meta["history"]["val_loss"] == [0.9, 0.6]
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["created"].endswith("+00:00")
    _, meta2 = load_model(path)
    assert meta2["halo"] == model.halo()


def test_fingerprint(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _save(a, seed=0)
    _save(b, seed=1)
    fa = checkpoint_fingerprint(a)
    assert fa == hashlib.sha256(a.read_bytes()).hexdigest()
    assert len(fa) == 64 and fa == checkpoint_fingerprint(a)
    assert fa != checkpoint_fingerprint(b)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint_fingerprint(tmp_path / "missing.safetensors")


def _refused(path: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_random_bytes_refused(tmp_path: Path) -> None:
    p = tmp_path / "random.safetensors"
    p.write_bytes(os.urandom(4096))
    _refused(p, "not a")
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    _refused(short, "too short")
    _refused(tmp_path / "nope.safetensors", "not found")


def test_truncated_file_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    _save(good)
    data = good.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 20):
        bad = tmp_path / f"trunc{cut}.safetensors"
        bad.write_bytes(data[:cut])
        _refused(bad, "corrupt|truncated|not a")


def test_corrupted_weight_bytes_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    _save(good)
    data = bytearray(good.read_bytes())
    data[-50] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    _refused(bad, "digest")


def test_wrong_shapes_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    _save(good)  # base_channels 4
    other = {k: v.contiguous() for k, v in _model(base_channels=8).state_dict().items()}
    bad = tmp_path / "shapes.safetensors"
    _rewrite(good, bad, tensors=other)
    _refused(bad, "architecture")
    # missing tensors
    state = {k: v.contiguous() for k, v in _model().state_dict().items()}
    state.pop("head.weight")
    missing = tmp_path / "missing.safetensors"
    _rewrite(good, missing, tensors=state)
    _refused(missing, "head.weight")


def test_pickle_files_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    raw = tmp_path / "evil.safetensors"
    raw.write_bytes(pickle.dumps({"state": Evil()}))
    _refused(raw, "not a")
    zipped = tmp_path / "torch.safetensors"
    torch.save(_model().state_dict(), zipped)  # torch's zip+pickle format
    _refused(zipped, "not a")
    assert not marker.exists()


def test_foreign_safetensors_and_metadata_problems_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    _refused(plain, "not a pausdenoise checkpoint")
    good = tmp_path / "good.safetensors"
    _save(good)
    norm = tmp_path / "norm.safetensors"
    _rewrite(good, norm, normalisation="asinh/v9")
    _refused(norm, "unknown normalisation method 'asinh/v9'")
    nokey = tmp_path / "nokey.safetensors"
    _rewrite(good, nokey, halo=None)
    _refused(nokey, "lacks keys \\['halo'\\]")
    future = tmp_path / "future.safetensors"
    _rewrite(good, future, format_version=99)
    _refused(future, "newer")
    arch = tmp_path / "arch.safetensors"
    _rewrite(good, arch, unet_config={"depth": 0})
    _refused(arch, "unet_config")
    # load_checkpoint gives the same verdicts
    with pytest.raises(CheckpointError):
        load_checkpoint(norm)


def test_save_is_atomic_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.safetensors"
    _save(path, seed=0)
    f0 = checkpoint_fingerprint(path)
    _save(path, seed=1)
    assert checkpoint_fingerprint(path) != f0
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]
