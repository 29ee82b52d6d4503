"""A truncated or changed NAME.onnx.data is refused first, in one line, by every reader."""

from __future__ import annotations

import pytest

from tests.conftest import assert_one_error
from vla_export.errors import ArtifactError, ExitCode


@pytest.fixture
def external_copy(tiny_onnx, tmp_path):
    """tiny_onnx re-saved with its weights in one NAME.onnx.data file (as exports over 2 GB are)."""
    import onnx

    out = tmp_path / "tiny.onnx"
    onnx.save_model(onnx.load(str(tiny_onnx)), str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="tiny.onnx.data", size_threshold=0)
    return out


def _truncate(path, by=1000):
    data = path.with_name(path.name + ".data")
    data.write_bytes(data.read_bytes()[:-by])
    return data


def test_truncated_data_refused_by_every_reader(external_copy):
    from vla_export.backends.onnxrt import OnnxrtRunner
    from vla_export.artifacts.onnxfile import check_model
    from vla_export.artifacts.onnxfile import load_onnx

    check_model(external_copy)  # whole: accepted
    _truncate(external_copy)
    for read in (lambda p: OnnxrtRunner(p).activate(), check_model, load_onnx):
        with pytest.raises(ArtifactError, match=r"tiny.onnx.data: \d+ bytes, the model's weights need \d+ \(truncated\)"):
            read(external_copy)


def test_data_of_another_size_than_the_manifest_records(external_copy):
    from vla_export.artifacts.manifest import build_manifest, write_manifest
    from vla_export.artifacts.onnxfile import OnnxFile, check_model

    data = external_copy.with_name("tiny.onnx.data")
    write_manifest(external_copy, build_manifest("onnx", external_copy, [external_copy, data]))
    check_model(external_copy)
    assert OnnxFile(external_copy).model().graph.initializer  # the typed manifest's file sizes, checked and loaded
    with data.open("ab") as fh:
        fh.write(b"\0" * 16)  # long enough for the tensors, but not the file that was exported
    for read in (check_model, lambda p: OnnxFile(p).model()):  # the one-pass reader of quantize checks the same
        with pytest.raises(ArtifactError, match="the manifest records"):
            read(external_copy)


def test_cli_parity_truncated_data_is_one_line(cli, tiny_ckpt, external_copy):
    _truncate(external_copy)
    r = cli("parity", tiny_ckpt, external_copy, "--samples", "1")
    assert_one_error(r, ExitCode.BAD_INPUT, "truncated")
    assert "onnxruntime" not in r.stderr.lower()
