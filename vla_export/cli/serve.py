"""``vla-export serve``: run Triton on a model repository from ``vla-export triton`` (vla_export.serve.server)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vla_export.cli import checks
from vla_export.cli.common import console, err_console


def serve(
    repository: Path = typer.Argument(..., help="A model repository written by `vla-export triton`."),
    http_port: int = typer.Option(8000, "--http-port", help="HTTP port on 127.0.0.1 (0: any free port)."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port on 127.0.0.1 (0: any free port)."),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="Prometheus metrics port on 127.0.0.1 (0: any free port)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds to wait for the server and models to become ready (default: 60, or 900 for a repository written with --compile)."),
    log: Optional[Path] = typer.Option(None, "--log", help="Write the server's log here (default: a temporary file, shown, removed at a clean stop)."),
) -> int:
    """Run a real Triton server (from the nvidia-pytriton wheel) on loopback until Ctrl-C or SIGTERM."""
    from vla_export import interrupts
    from vla_export.errors import ConfigError
    from vla_export.serve.repository import load_seconds, read_repository
    from vla_export.serve.server import TritonServer, check_ports, free_port, log_tail

    check_ports({"http": http_port, "grpc": grpc_port, "metrics": metrics_port})  # usage errors first (exit 2)
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout:g}")
    checks.output_file(log)
    if timeout is None:
        timeout = load_seconds(read_repository(repository))
    taken = {p for p in (http_port, grpc_port, metrics_port) if p}
    ports = []
    for port in (http_port, grpc_port, metrics_port):
        while not port:  # 0: any free port, never one given for another service
            port = free_port()
            port = 0 if port in taken else port
        taken.add(port)
        ports.append(port)
    server = TritonServer(repository, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2], log_path=log, ready_timeout=timeout)
    try:  # Ctrl-C and SIGTERM (the CLI turns both into KeyboardInterrupt) are how a server is stopped: exit 0
        server.start()
        info = server.server_info()
        console.print(f"tritonserver {info.get('version')} ready: models {', '.join(server.models)}; HTTP {server.http_url}, "
                      f"gRPC {server.grpc_url}, metrics {server.metrics_url}; log {server.log_path}", markup=False)
        console.print("Ctrl-C or SIGTERM stops it; it also stops if this process is killed", markup=False)
        server.process.wait()
        err_console.print(f"tritonserver exited by itself with code {server.process.returncode}: {log_tail(server.log_path)} "
                          f"(log: {server.log_path})", markup=False)
        return 3
    except KeyboardInterrupt:
        if server.process is None:  # interrupted while starting: an interruption like any other
            raise
        interrupts.consume()
        code = server.stop()
        console.print(f"stopped (tritonserver exit code {code})", markup=False)
        return 0
    finally:
        server.stop()
