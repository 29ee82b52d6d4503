"""The ``vla-export`` command."""

from __future__ import annotations

import sys

from vla_export.cli import bench as bench_cmd, checkpoint_cmds, evaluate_cmds, inspect_cmds, onnx_cmds, quant_cmds, runtime_cmds, serve_cmds, trt_cmds
from vla_export.cli.common import debug_option_callback, new_app, run_app

app = new_app("Export a VLA policy checkpoint to verified ONNX and TensorRT artifacts.")
app.callback()(debug_option_callback)
app.command("init")(checkpoint_cmds.init)
app.command("inspect")(inspect_cmds.inspect)
app.command("onnx")(onnx_cmds.onnx)
app.command("parity")(onnx_cmds.parity)
app.command("replay")(runtime_cmds.replay)
app.command("evaluate")(evaluate_cmds.evaluate)
app.command("episodes")(trt_cmds.episodes)
app.command("calib")(trt_cmds.calib)
app.command("quantize")(trt_cmds.quantize)
app.command("sensitivity")(quant_cmds.sensitivity)
app.command("trt")(trt_cmds.trt)
app.command("bench")(bench_cmd.bench)  # the same command as `vla-bench`, which stays as an alias
app.command("triton")(serve_cmds.triton)
app.command("serve")(serve_cmds.serve)


def main() -> None:
    sys.exit(run_app(app, prog_name="vla-export"))


if __name__ == "__main__":
    main()
