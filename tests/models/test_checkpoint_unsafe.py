"""A malicious pickle is refused and the message names the global, in both torch file formats."""

import os

import pytest
import torch

from vla_export.errors import CheckpointError
from vla_export.models.checkpoint import read_checkpoint


class RunsCode:
    """Unpickling this would call os.system: what a malicious checkpoint does."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_names_the_global(tmp_path, zip_format):
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "payload": RunsCode()}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "system" in message and "safe loading" in message and "--trust-checkpoint" in message, message
    assert "truncated or corrupt" not in message
