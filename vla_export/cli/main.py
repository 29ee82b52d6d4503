"""The ``vla-export`` command."""

from __future__ import annotations

import sys

from vla_export.cli import bench, calib, episodes, evaluate, init, inspect, onnx, parity, quantize, replay, sensitivity, serve, triton, trt
from vla_export.cli.common import debug_option_callback, new_app, run_app

app = new_app("Export a VLA policy checkpoint to verified ONNX and TensorRT artifacts.")
app.callback()(debug_option_callback)
app.command("init")(init.init)
app.command("inspect")(inspect.inspect)
app.command("onnx")(onnx.onnx)
app.command("parity")(parity.parity)
app.command("replay")(replay.replay)
app.command("evaluate")(evaluate.evaluate)
app.command("episodes")(episodes.episodes)
app.command("calib")(calib.calib)
app.command("quantize")(quantize.quantize)
app.command("sensitivity")(sensitivity.sensitivity)
app.command("trt")(trt.trt)
app.command("bench")(bench.bench)  # the same command as `vla-bench`, which stays as an alias
app.command("triton")(triton.triton)
app.command("serve")(serve.serve)


def main() -> None:
    sys.exit(run_app(app, prog_name="vla-export"))


if __name__ == "__main__":
    main()
