"""Every accepted layout loads to the same policy; bad files fail with one clear message."""

import argparse
import pathlib
from collections import OrderedDict

import numpy as np
import pytest
import torch

from vla_export.errors import CheckpointError
from vla_export.models.checkpoint import normalize_keys, parse_renames, read_checkpoint
from vla_export.models.config import get_preset
from vla_export.models.loader import PolicyFromCheckpoint
from vla_export.models.resolve import LoadOptions


@pytest.fixture(scope="module")
def sd(tiny_policy):
    return OrderedDict((k, v.clone()) for k, v in tiny_policy.state_dict().items())


@pytest.fixture(scope="module")
def inputs(tiny_policy):
    from vla_export.data.source import SyntheticSource

    return {k: torch.from_numpy(v) for k, v in SyntheticSource(tiny_policy.cfg, seed=3, batch=2).sample(0).items()}


def _assert_same_policy(path, tiny_policy, inputs, renames=()):
    # Files without vla-export's config record are inferred with the Tanh off: the tiny preset has one, so say so.
    loaded = PolicyFromCheckpoint(path, options=LoadOptions(renames=tuple(renames), sets=(("head_tanh", True),)))()
    assert loaded.config.replace(name="tiny") == get_preset("tiny")
    with torch.no_grad():
        torch.testing.assert_close(loaded.policy(**inputs), tiny_policy(**inputs), rtol=0, atol=0)
    return loaded


def test_training_format(tiny_ckpt, tiny_policy, inputs):
    ckpt = read_checkpoint(tiny_ckpt)
    assert (ckpt.layout, ckpt.file_format) == ("mobile-vla-training", "torch-zip")
    assert ckpt.metadata["args"]["batch_size"] == 4 and ckpt.metadata["epoch"] == 0
    assert ckpt.optimizer_state["param_groups"][0]["lr"] == 1e-4
    _assert_same_policy(tiny_ckpt, tiny_policy, inputs)


@pytest.mark.parametrize(
    "wrap, layout",
    [
        (lambda sd: {"state_dict": sd, "epoch": 3, "global_step": 10}, "state_dict"),
        (lambda sd: {"model": sd, "epoch": 1}, "model"),
        (lambda sd: sd, "bare"),
        (lambda sd: {"state_dict": OrderedDict(("module." + k, v) for k, v in sd.items())}, "state_dict"),
        (lambda sd: OrderedDict(("_orig_mod." + k, v) for k, v in sd.items()), "bare"),
        (lambda sd: OrderedDict(("module._orig_mod." + k, v) for k, v in sd.items()), "bare"),
    ],
    ids=["state_dict", "model", "bare", "dataparallel", "compiled", "both"],
)
def test_wrapper_layouts(tmp_path, sd, wrap, layout, tiny_policy, inputs):
    path = tmp_path / "c.pt"
    torch.save(wrap(sd), path)
    assert read_checkpoint(path).layout == layout
    _assert_same_policy(path, tiny_policy, inputs)


def test_val_mae_numpy_scalar_and_path_args_are_allowed(tmp_path, sd, tiny_policy, inputs):
    path = tmp_path / "np.pt"
    args = argparse.Namespace(data_path=pathlib.Path("/data"), batch_size=2, num_epochs=5, output_dir="out", save_interval=1)
    torch.save({"epoch": 4, "model_state_dict": sd, "optimizer_state_dict": {}, "val_mae": np.float64(0.125), "args": args}, path)
    ckpt = read_checkpoint(path)
    assert ckpt.metadata["val_mae"] == 0.125
    assert ckpt.metadata["args"]["data_path"] == "/data"
    _assert_same_policy(path, tiny_policy, inputs)


def test_legacy_non_zip_format(tmp_path, sd, tiny_policy, inputs):
    path = tmp_path / "legacy.pt"
    torch.save({"model_state_dict": sd}, path, _use_new_zipfile_serialization=False)
    assert read_checkpoint(path).file_format == "torch-legacy"
    _assert_same_policy(path, tiny_policy, inputs)


def test_safetensors(tmp_path, sd, tiny_policy, inputs):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    ckpt = read_checkpoint(path)
    assert (ckpt.file_format, ckpt.layout) == ("safetensors", "bare")
    _assert_same_policy(path, tiny_policy, inputs)


@pytest.mark.parametrize("layout", ["nested", "flat"], ids=["transformers-4.x-keys", "transformers-5.x-keys"])
def test_both_clip_layouts_load(tmp_path, sd, tiny_policy, inputs, layout):
    """transformers 4.x kept a `vision_model.` level inside CLIPVisionModel; 5.x dropped it. Either file loads."""
    keyed = OrderedDict(normalize_keys(sd, clip_layout=layout))
    assert any(k.startswith("clip.vision_model.") for k in keyed) == (layout == "nested")
    path = tmp_path / f"{layout}.pt"
    torch.save({"model_state_dict": keyed}, path)
    _assert_same_policy(path, tiny_policy, inputs)


def test_layout_adapter_both_directions(sd):
    flat = normalize_keys(sd, clip_layout="flat")
    nested = normalize_keys(sd, clip_layout="nested")
    assert all(not k.startswith("clip.vision_model.") for k in flat)
    assert all(k.startswith("clip.vision_model.") for k in nested if k.startswith("clip."))
    assert normalize_keys(nested, clip_layout="flat").keys() == flat.keys()


def test_rename(tmp_path, sd, tiny_policy, inputs):
    other = OrderedDict((k.replace("kosmos_model.", "backbone.", 1).replace("action.", "policy_head.mlp.", 1), v) for k, v in sd.items())
    path = tmp_path / "renamed.pt"
    torch.save(other, path)
    renames = parse_renames(["backbone.=kosmos_model.", "policy_head.mlp.=action."])
    _assert_same_policy(path, tiny_policy, inputs, renames=renames)
    with pytest.raises(CheckpointError, match="OLD=NEW"):
        parse_renames(["backbone"])


# --- safety -----------------------------------------------------------------------------------------

class Unlisted:  # a class the allow-list does not know: stands for the lost training class
    def __init__(self):
        self.x = 1


def test_unlisted_global_needs_trust(tmp_path, sd):
    path = tmp_path / "unsafe.pt"
    torch.save({"model_state_dict": sd, "extra": Unlisted()}, path)
    with pytest.raises(CheckpointError, match=r"Unlisted.*--trust-checkpoint"):
        read_checkpoint(path)
    ckpt = read_checkpoint(path, trust=True)
    assert ckpt.trusted and ckpt.layout == "mobile-vla-training"


def test_trust_with_missing_class_is_clear(tmp_path, sd, monkeypatch):
    path = tmp_path / "lost.pt"
    torch.save({"model_state_dict": sd, "extra": Unlisted()}, path)
    import sys

    monkeypatch.delattr(sys.modules[__name__], "Unlisted")
    with pytest.raises(CheckpointError, match="not importable"):
        read_checkpoint(path, trust=True)


# --- bad files --------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="directory"):
        read_checkpoint(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(tmp_path / "e.pt")


@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_truncated(tmp_path, tiny_ckpt, cut):
    data = tiny_ckpt.read_bytes()
    path = tmp_path / "trunc.pt"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)


def test_truncated_safetensors(tmp_path, sd):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(path)


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"hello, this is a text file\n", b"\x08\x07\x12\x04onnx"],
    ids=["png", "text", "onnx-like"],
)
def test_foreign_file(tmp_path, content):
    path = tmp_path / "foreign.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(path)


def test_zip_that_is_not_torch(tmp_path):
    import zipfile

    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(path)


def test_pickle_without_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save({"epoch": 1, "notes": "no weights"}, path)
    with pytest.raises(CheckpointError, match="no state dict found.*epoch"):
        read_checkpoint(path)
