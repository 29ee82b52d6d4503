"""The ``vla-bench`` command (benchmarks across backends)."""

from __future__ import annotations

import sys

from vla_export.cli.common import debug_option_callback, new_app, run_app

app = new_app("Honest latency and FPS of a policy across backends, with a physical-limit check.")
app.callback()(debug_option_callback)


def main() -> None:
    sys.exit(run_app(app, prog_name="vla-bench"))


if __name__ == "__main__":
    main()
