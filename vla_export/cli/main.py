"""The ``vla-export`` command."""

from __future__ import annotations

import sys

from vla_export.cli import checkpoint_cmds, onnx_cmds, runtime_cmds
from vla_export.cli.common import debug_option_callback, new_app, run_app

app = new_app("Export a VLA policy checkpoint to verified ONNX and TensorRT artifacts.")
app.callback()(debug_option_callback)
app.command("init")(checkpoint_cmds.init)
app.command("inspect")(checkpoint_cmds.inspect)
app.command("onnx")(onnx_cmds.onnx)
app.command("parity")(onnx_cmds.parity)
app.command("replay")(runtime_cmds.replay)


def main() -> None:
    sys.exit(run_app(app, prog_name="vla-export"))


if __name__ == "__main__":
    main()
