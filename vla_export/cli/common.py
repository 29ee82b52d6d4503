"""What every command shares: consoles, one-line errors, the exit-code table, ``--debug``, ``--verbose``."""

from __future__ import annotations

import contextlib
import enum
from contextvars import ContextVar
import io
import json
import logging
import sys
import time
import traceback
import typing
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, ConsoleDimensions, Group
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from vla_export import __version__, interrupts, schemas
from vla_export.errors import ExitCode, VlaExportError
from vla_export.fileio import FS_ERRNOS, atomic_write, error_path, fs_error_message
from vla_export.progress import listening

DEBUG_FLAG = "--debug"
VERBOSE_FLAGS = ("--verbose", "-v")
VERSION_FLAG = "--version"
#: What a non-terminal (a CI log, ``| tee``) is given as its width: wide enough that no table is cut.
LOG_WIDTH = 1000


class _Console(Console):
    """A Rich console that never cuts a number, a verdict or a path.

    On a terminal, table cells fold onto a second line instead of ending in an ellipsis; anywhere
    else (a CI log, a pipe) the width is taken as unlimited, so lines come out whole.
    """

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        return dims if self.is_terminal else ConsoleDimensions(LOG_WIDTH, dims.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: A003 - Rich's name
        shown: list[Any] = []
        for obj in objects:
            if isinstance(obj, Table):
                for column in obj.columns:
                    column.overflow = "fold"
                if obj.title and not self.is_terminal:
                    # Rich wraps a title to its table's width; in a log it is one line above the table.
                    title = obj.title if isinstance(obj.title, Text) else Text.from_markup(str(obj.title))
                    title.stylize("table.title")
                    obj.title = None
                    obj = Group(title, obj)
            shown.append(obj)
        super().print(*shown, **kwargs)


console = _Console(highlight=False)
console.report_file = None  # where ``--json -`` goes while a command runs (the real standard output)
err_console = _Console(stderr=True, highlight=False)


def new_app(help: str) -> typer.Typer:
    # Plain Click help: it wraps, where Rich's boxed help cuts paths and defaults on a narrow or
    # non-terminal output.
    return typer.Typer(
        help=help,
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def debug_option_callback(
    debug: bool = typer.Option(False, DEBUG_FLAG, help="Show full tracebacks on errors (accepted anywhere on the command line)."),
    verbose: bool = typer.Option(False, *VERBOSE_FLAGS, help="Show the libraries' own output (exporter progress, warnings)."),
    version: bool = typer.Option(False, VERSION_FLAG, help="Print the version and exit."),
) -> None:
    """Options every command accepts; ``run_app`` acts on them before Typer parses the line."""


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


class _StepDisplay:
    """Shows :mod:`vla_export.progress` steps on standard error.

    On a terminal: a spinner per running step with its elapsed time (Rich), nested steps indented;
    a counted step shows "k/N unit, elapsed, ~left". Elsewhere (a CI log): a line when an outermost
    step starts, a counted step's count every :attr:`LOG_EVERY_S`, and one line per finished step
    with its time, so a log shows what runs now and where time went.
    """

    #: In a log, a counted step prints its count at most this often (its last count is in the final line).
    LOG_EVERY_S = 5.0
    #: On a terminal, a timed count (benchmark iterations) is redrawn at most this often.
    TIMED_REDRAW_S = 0.25

    def __init__(self, out: Console) -> None:
        self.out = out
        self.live: Progress | None = None
        self.depth = 0

    def _start_task(self, description: str) -> Any:
        if self.live is None:
            self.live = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=self.out, transient=True)
            self.live.start()
        return self.live.add_task(description, total=None)

    def _end_task(self, task: Any) -> None:
        if task is not None and self.live is not None:
            self.live.remove_task(task)
        if self.depth == 0 and self.live is not None:
            self.live.stop()
            self.live = None

    @contextlib.contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        start = time.perf_counter()
        task = None
        if self.out.is_terminal:
            task = self._start_task("  " * self.depth + label)
        elif self.depth == 0:
            self.out.print(f"{label} ...", style="dim", markup=False)
        self.depth += 1
        ok = False
        try:
            yield
            ok = True
        finally:
            self.depth -= 1
            self._end_task(task)
            if ok:  # a failure is told by the one error line that follows, not by a step line
                self.out.print(f"{'  ' * self.depth}{label}: {time.perf_counter() - start:.1f} s", style="dim", markup=False)

    @contextlib.contextmanager
    def counted(self, label: str, total: int | None, unit: str, *, timed: bool = False) -> Iterator[Any]:
        """A step of ``total`` items; yields ``advance(n=1)``. A ``timed`` count is drawn only inside ``advance``
        (between measurements), never by Rich's refresh thread."""
        start = time.perf_counter()
        indent = "  " * self.depth
        done, shown = 0, start
        terminal = self.out.is_terminal
        # A timed count is drawn by hand (\r) inside advance, never by Rich's refresh thread; under a running
        # spinner (a live display) it is not drawn at all until its final line.
        inline = terminal and timed and self.live is None
        task = self._start_task(indent + label) if terminal and not timed else None
        if not terminal and self.depth == 0:
            self.out.print(f"{label}: {total if total else '?'} {unit} ...", style="dim", markup=False)

        def text(now: float) -> str:
            elapsed = now - start
            left = f", ~{_duration(elapsed / done * (total - done))} left" if total and 0 < done < total else ""
            return f"{label}: {done}/{total if total else '?'} {unit}, {_duration(elapsed)}{left}"

        def advance(n: int = 1) -> None:
            nonlocal done, shown
            done += n
            now = time.perf_counter()
            if task is not None and self.live is not None:
                self.live.update(task, description=indent + text(now))
            elif inline and now - shown >= self.TIMED_REDRAW_S:
                self.out.file.write("\r\x1b[2K" + indent + text(now))
                self.out.file.flush()
                shown = now
            elif not terminal and now - shown >= self.LOG_EVERY_S and (not total or done < total):
                self.out.print(indent + text(now), style="dim", markup=False)
                shown = now

        self.depth += 1
        ok = False
        try:
            yield advance
            ok = True
        finally:
            self.depth -= 1
            self._end_task(task)
            if inline:
                self.out.file.write("\r\x1b[2K")
                self.out.file.flush()
            if ok:
                self.out.print(f"{indent}{label}: {done} {unit} in {time.perf_counter() - start:.1f} s", style="dim", markup=False)


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


@contextlib.contextmanager
def _streams(pass_through: bool, json_to_stdout: bool) -> Iterator[None]:
    """Route output for one command.

    Libraries' own output (exporter progress, FutureWarnings, ``WARNING:root`` lines) is held
    back unless ``--verbose``; our consoles keep writing to the real streams. With ``--json -``
    standard output carries only the JSON, and the human-readable output goes to standard error.
    """
    out, err = sys.stdout, sys.stderr
    console.file, err_console.file = (err if json_to_stdout else out), err
    console.report_file = out
    root = logging.getLogger()
    level = root.level
    try:
        if pass_through:
            yield
            return
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            root.setLevel(logging.ERROR)
            yield
    finally:
        root.setLevel(level)
        console.file, err_console.file = None, None  # type: ignore[assignment]  # follow sys.stdout/err again
        console.report_file = None


def _is_choice(param: Any) -> bool:
    """Whether a Typer parameter takes an enum (a closed choice), ``Optional`` or not."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    candidates = (annotation, *typing.get_args(annotation))
    return any(isinstance(a, type) and issubclass(a, enum.Enum) for a in candidates)


def _usage_error(exc: typer.TyperException) -> int:
    if isinstance(exc, typer.BadParameter) and _is_choice(exc.param):
        # A closed choice (an enum option, vla_export.choices): the usage lines as Click prints them, then the
        # project's one `error:` line naming the choices.
        if exc.ctx is not None:
            typer.echo(f"{exc.ctx.get_usage()}\nTry '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help.\n", err=True)
        err_console.print(f"error: {exc.format_message().replace('Value error, ', '')}", style="red", markup=False, soft_wrap=True)
        return ExitCode.BAD_INPUT
    exc.show()
    return ExitCode.BAD_INPUT if exc.exit_code not in (0, ExitCode.BAD_INPUT) else exc.exit_code


def run_app(app: typer.Typer, argv: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Run a Typer app and map every outcome onto the exit-code table (``vla_export.errors.ExitCode``).

    Usage errors print the usage line and the problem (exit 2); user errors one ``error:`` line
    with the error's code; an internal error one line (exit 4). Tracebacks only with ``--debug``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    options = args[: args.index("--")] if "--" in args else args
    debug = DEBUG_FLAG in options
    verbose = any(flag in options for flag in VERBOSE_FLAGS)
    if VERSION_FLAG in options:
        console.print(f"{prog_name or 'vla-export'} {__version__}", markup=False)
        return ExitCode.OK
    # --debug and --verbose are accepted anywhere on the line: hand them to the app's callback.
    rest = [a for a in options if a != DEBUG_FLAG and a not in VERBOSE_FLAGS] + args[len(options):]
    args = [*([DEBUG_FLAG] if debug else []), *(["--verbose"] if verbose else []), *rest] if _has_callback(app) else rest
    _setup_logging(debug)
    token = _reports_written.set(set())
    try:
        with interrupts.handling():
            try:
                code = _run_command(app, args, options, prog_name, debug, verbose)
            except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the staging was removed on the way out
                return _interrupted(exc)
            if interrupts.received() is not None:  # a library swallowed the exception: still an interruption
                return _interrupted(interrupts.Interrupted(interrupts.received()))
            return code
    finally:
        _reports_written.reset(token)


def _interrupted(exc: BaseException) -> int:
    signum = exc.signum if isinstance(exc, interrupts.Interrupted) else int(interrupts.received() or 2)
    name = "SIGTERM" if signum == 15 else "Ctrl-C" if signum == 2 else f"signal {signum}"
    err_console.print(f"interrupted ({name}): nothing was published", style="red", markup=False)
    return 128 + signum


def _failed(debug: bool, code: int, message: str) -> int:
    """Print the one error line (after the traceback with ``--debug``) and give the error's own exit code."""
    if debug:
        traceback.print_exc(file=sys.stderr)
    err_console.print(f"error: {message}", style="red", markup=False, soft_wrap=True)
    return code


def _run_command(app: typer.Typer, args: list[str], options: list[str], prog_name: str | None, debug: bool, verbose: bool) -> int:
    try:
        command = typer.main.get_command(app)
        if not sys.stdout.isatty():  # a log or a pipe: Click's help wraps at this width instead of cutting
            command.context_settings.setdefault("terminal_width", LOG_WIDTH // 5)
        # Help goes through Click's own echo to sys.stdout, so it is never held back.
        quiet = verbose or any(a in ("-h", "--help") for a in options)
        with _streams(quiet, json_to_stdout=_stdout_report(options)), listening(_StepDisplay(err_console)):
            result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
        return int(result) if isinstance(result, int) else ExitCode.OK
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # Click's usage errors (typer vendors Click)
        return _usage_error(exc)
    except typer.Abort:
        err_console.print("aborted", style="red")
        return ExitCode.INTERRUPTED
    except VlaExportError as exc:
        _failure_report(options, exc.exit_code, str(exc))
        return _failed(debug, exc.exit_code, str(exc))
    except OSError as exc:  # the file system said no: a user-facing problem, not a bug
        path = error_path(exc)
        message = fs_error_message(path or "?", exc) if exc.errno in FS_ERRNOS else f"{exc.strerror or exc}{f': {path}' if path else ''}"
        _failure_report(options, ExitCode.BAD_INPUT, message)
        return _failed(debug, ExitCode.BAD_INPUT, message)
    except Exception as exc:  # an internal bug: still one line unless --debug
        message = f"internal error {type(exc).__name__}: {exc} (a bug in vla-export; rerun with --debug for the traceback)"
        _failure_report(options, ExitCode.INTERNAL, message)
        return _failed(debug, ExitCode.INTERNAL, message)


def _failure_report(options: list[str], exit_code: int, message: str) -> None:
    """A command that fails still leaves its ``--json`` report, saying why it failed."""
    path = _json_option(options)
    if not path:
        return
    if str(Path(path)) in (_reports_written.get() or ()):  # the command wrote its own report, with the failure in it
        return
    if path != STDOUT and str(path) in message:  # the error is about that very location (unwritable, or named twice)
        return
    command = next((a for a in options if not a.startswith("-")), None)
    report = {"schema": schemas.FAILURE, "command": command, "argv": options, "passed": False,
              "exit_code": int(exit_code), "error": message}
    try:
        write_json(path, report)
    except (OSError, VlaExportError) as exc:  # the report cannot be written either: say so beside the real error
        err_console.print(f"warning: could not write the failure report to {path}: {exc}", style="yellow", markup=False)


def _option_value(options: list[str], flag: str) -> str | None:
    """The value of ``flag`` on the command line (``FLAG VALUE`` or ``FLAG=VALUE``), None without one."""
    value = next((b for a, b in zip(options, options[1:]) if a == flag), None)
    return value or next((a.split("=", 1)[1] for a in options if a.startswith(flag + "=")), None)


def _json_option(options: list[str]) -> str | None:
    return _option_value(options, "--json")


def _stdout_report(options: list[str]) -> bool:
    """A report (``--json -`` or ``--junit -``) goes to standard output: the tables then go to standard error."""
    return STDOUT in (_option_value(options, "--json"), _option_value(options, "--junit"))


def _has_callback(app: typer.Typer) -> bool:
    """Multi-command apps take --debug/--verbose in their callback; a single-command app in its command."""
    return app.registered_callback is not None


STDOUT = "-"
#: The reports written while one command runs, so that a failure report never replaces one of them.
_reports_written: ContextVar[set[str] | None] = ContextVar("vla_export_reports_written", default=None)


def write_json(path: str | Path, data: dict[str, Any], schema: str = schemas.REPORT) -> Path:
    """Write a JSON report atomically; ``-`` writes it to standard output instead.

    Every report names its schema first (``schema``, one of :mod:`vla_export.schemas`, unless ``data``
    has its own), so readers can tell what they hold.
    """
    data = {"schema": schema, **data} if "schema" not in data else data
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    written = _reports_written.get()
    if written is not None:
        written.add(str(Path(path)))
    if str(path) == STDOUT:
        stream = console.report_file or sys.stdout
        stream.write(text)
        stream.flush()
        return Path(STDOUT)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def wrote(path: str | Path, what: str = "") -> None:
    """Say where a report went, unless it went to standard output (which must hold only the JSON)."""
    if str(path) != STDOUT:
        console.print(f"wrote {what + ' ' if what else ''}{path}", markup=False)
