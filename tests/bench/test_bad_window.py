"""vla-bench takes the window from the artifact; windows beyond the machine's memory are refused before the work."""

from __future__ import annotations

import json

import pytest

from vla_export.errors import ConfigError, ExitCode


def test_window_from_the_artifact(tiny_onnx, tiny_ckpt):
    from vla_export.bench.targets import default_window

    assert default_window([str(tiny_onnx)]) == 4  # the export's fixed window axis
    assert default_window([str(tiny_ckpt), str(tiny_onnx)]) == 4
    assert default_window([str(tiny_ckpt)]) == 1  # a checkpoint fixes none: one new frame


def test_artifacts_of_different_windows_need_window(tiny_onnx, tmp_path):
    """A dynamic window axis falls back to the manifest's window; artifacts that disagree are refused."""
    import onnx

    from vla_export.bench.targets import artifact_window, default_window
    from vla_export.artifacts.manifest import read_manifest, write_manifest

    model = onnx.load(str(tiny_onnx))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "window"  # pixel_values [B, T, 3, S, S]
    other = tmp_path / "dyn.onnx"
    onnx.save(model, str(other))
    assert artifact_window(str(other)) is None
    write_manifest(other, read_manifest(tiny_onnx).replace(window=8))
    assert artifact_window(str(other)) == 8
    with pytest.raises(ConfigError, match=r"different windows \(tiny.onnx: 4, dyn.onnx: 8\); pass --window"):
        default_window([str(tiny_onnx), str(other)])


def test_cli_bench_onnx_without_window(cli, tiny_onnx, tmp_path):
    out = tmp_path / "r.json"
    r = cli(tiny_onnx, "--warmup", "0", "--iters", "2", "--mode", "compute", "--json", out, app="bench")
    assert r.exit_code in (ExitCode.OK, ExitCode.CHECK_FAILED), r  # a floor verdict may flag a tiny model on a loaded CPU
    assert json.loads(out.read_text())["settings"]["window"] == 4


def test_window_beyond_memory_is_refused(tiny_policy):
    from vla_export.models.memory import check_window_memory

    est = check_window_memory(tiny_policy.cfg, 4, available=24 * 10**9)
    assert 0 < est.bytes < 10**8
    with pytest.raises(ConfigError, match=r"--window 100000: about \d+\.\d GB .* more than the 24.0 GB"):
        check_window_memory(tiny_policy.cfg, 100_000, available=24 * 10**9)


@pytest.mark.parametrize("app", ["main", "bench"])
def test_cli_window_100000_refused_quickly(cli, tiny_ckpt, tmp_path, monkeypatch, app):
    import time

    from vla_export.models import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 24 * 10**9)
    start = time.perf_counter()
    if app == "main":
        r = cli("onnx", tiny_ckpt, "-o", tmp_path / "t.onnx", "--window", "100000")
    else:
        r = cli(tiny_ckpt, "--window", "100000", "--iters", "1", app="bench")
    assert time.perf_counter() - start < 60
    assert r.exit_code == ExitCode.BAD_INPUT, r
    errors = [line for line in r.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "--window 100000" in errors[0] and "GB of memory available" in errors[0], r
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []
