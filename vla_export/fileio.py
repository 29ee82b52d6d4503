"""Atomic file output: artifacts appear complete or not at all."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vla_export import interrupts
from vla_export.errors import OutputError

#: errno values that mean "this location cannot take the output", not a bug: reported as OutputError.
FS_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
                       errno.EDQUOT, errno.EEXIST, errno.EFBIG, errno.ENAMETOOLONG})


#: errno values of a failed write: for an error naming two paths (a copy, a link, a rename) the second, the destination, is the one that could not be written.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def error_path(exc: OSError) -> str | None:
    """The path an OSError is about: the destination of a copy that filled the disk (``shutil.copy`` names
    the source first), else the one path it names; None when it names none."""
    if exc.errno in WRITE_ERRNOS and getattr(exc, "filename2", None):
        return str(exc.filename2)
    return None if exc.filename is None else str(exc.filename)


def remove_tree(path: str | Path) -> None:
    """Remove a staging folder whole, even while Ctrl-C or SIGTERM arrive (they are raised after it)."""
    with interrupts.deferred_cleanup():
        shutil.rmtree(path, ignore_errors=True)


def fs_error_message(path: str | Path, exc: OSError) -> str:
    """One line for a file-system error: the path, what went wrong, and what to do about it."""
    reason = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EDQUOT: "free some space or write elsewhere",
        errno.EROFS: "the file system is read-only: write elsewhere",
        errno.EACCES: "no permission to write there: write elsewhere",
        errno.EPERM: "no permission to write there: write elsewhere",
    }.get(exc.errno or 0)
    where = (error_path(exc) or path) if str(path) == "?" else path
    return f"{where}: cannot write ({reason})" + (f"; {hint}" if hint else "")


def check_output_path(path: str | Path, *, folder: bool = False) -> Path:
    """Refuse, before any expensive work, an output location that cannot be written.

    ``path`` is a file to write (``folder=True``: a folder to fill). Refused with :class:`OutputError`:
    a file path that names an existing folder, a folder path that names an existing file, a parent
    that is a file, and a location where no file can be created (read-only, no permission, no
    space); the last is found by creating and removing an empty file in the nearest existing folder.
    Nothing is created.
    """
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path}: is a file, but a folder is needed here")
    elif path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name (in it, or elsewhere)")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{existing}: is a file, but {path} needs it to be a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vla-export-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(fs_error_message(path, exc) + (f" (checked in {existing})" if existing != path.parent else "")) from exc
    return path


@contextmanager
def output_errors(path: str | Path) -> Iterator[None]:
    """Turn a file-system error while writing ``path`` (no space left, read-only) into :class:`OutputError`."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        if exc.errno not in FS_ERRNOS:
            raise
        raise OutputError(fs_error_message(path, exc)) from exc


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then rename it into place.

    An interrupted or failed write leaves nothing at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(path)
        fd, tmp = tempfile.mkstemp(prefix=_staging_prefix(path), suffix=".partial", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with output_errors(path):
            write(tmp_path)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
            interrupts.check()  # an interrupted command publishes nothing, even if a library swallowed the signal
            os.replace(tmp_path, path)
    finally:
        with interrupts.deferred_cleanup():
            if tmp_path.exists():
                tmp_path.unlink()
    return path


@contextmanager
def staging_dir(target: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` (same file system, so moves out of it are renames), removed afterwards."""
    target = Path(target)
    with output_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(target)
        tmpdir = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), suffix=".partial", dir=target.parent))
    try:
        with output_errors(target):
            yield tmpdir
    except OutputError as exc:
        if isinstance(exc.__cause__, OSError):  # name the target, not a file in the staging folder
            raise OutputError(fs_error_message(target, exc.__cause__)) from exc.__cause__
        raise
    finally:
        remove_tree(tmpdir)


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def remove_stale_staging(target: str | Path) -> list[Path]:
    """Remove what a killed earlier run left beside ``target`` (SIGKILL, an abort or the OOM killer skip every
    clean-up): staged files and folders ``.NAME.PID.*.partial`` whose process is gone. The removed paths."""
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.glob(f".{_glob_escape(target.name)}.*.partial"):
        pid = entry.name[len(target.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
