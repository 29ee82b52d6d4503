"""What every command shares: consoles, one-line errors, ``--debug``, logging."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console

from vla_export.errors import ExitCode, VlaExportError
from vla_export.fileio import FS_ERRNOS, fs_error_message

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
DEBUG_FLAG = "--debug"


def new_app(help: str) -> typer.Typer:
    return typer.Typer(
        help=help,
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def debug_option_callback(debug: bool = typer.Option(False, DEBUG_FLAG, help="Show full tracebacks on errors.")) -> None:
    """Shared ``--debug`` flag (it is also accepted anywhere on the command line)."""


class _RichLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        style = "yellow" if record.levelno >= logging.WARNING else "dim"
        err_console.print(f"{record.levelname.lower()}: {record.getMessage()}", style=style, markup=False)


def _setup_logging(debug: bool) -> None:
    log = logging.getLogger("vla_export")
    if not any(isinstance(h, _RichLogHandler) for h in log.handlers):
        log.addHandler(_RichLogHandler())
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def run_app(app: typer.Typer, argv: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Run a Typer app: user errors become one red line and exit code 2, tracebacks only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    if debug:  # accept --debug after the subcommand too
        args = [DEBUG_FLAG] + [a for a in args if a != DEBUG_FLAG]
    _setup_logging(debug)
    try:
        result = app(args=args, prog_name=prog_name, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted", style="red")
        return ExitCode.INTERRUPTED
    except VlaExportError as exc:
        if debug:
            raise
        err_console.print(f"error: {exc}", style="red", markup=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted", style="red")
        return ExitCode.INTERRUPTED
    except Exception as exc:  # an internal bug: still one line unless --debug
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno in FS_ERRNOS:  # a file-system error no command named: still one line, exit 2
            err_console.print(f"error: {fs_error_message(exc.filename or '?', exc)}", style="red", markup=False, soft_wrap=True)
            return ExitCode.BAD_INPUT
        err_console.print(
            f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            style="red", markup=False, soft_wrap=True,
        )
        return ExitCode.INTERNAL


def write_json(path: str | Path, data: Any) -> Path:
    """Write a JSON report atomically."""
    from vla_export.fileio import atomic_write

    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))
