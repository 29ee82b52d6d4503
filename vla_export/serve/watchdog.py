"""Keeps ``tritonserver`` from outliving ``vla-export serve``: ``python watchdog.py GRACE WORKDIR -- COMMAND...``.

The launcher starts this script (by path: it imports only the standard library) with its standard input
a pipe whose other end only the launcher holds. The script runs COMMAND as its child and waits. When the
launcher dies, by SIGKILL too, the kernel closes its end and the read here returns: the server gets
SIGTERM, then SIGKILL after GRACE seconds. SIGTERM sent to this script is passed on the same way; the
script exits with the server's exit code (128 + N for a server ended by signal N), after removing WORKDIR
(the server's backend folder: a killed launcher cannot).

A parent-death signal (``prctl(PR_SET_PDEATHSIG)``) would be simpler, but it did not fire on the machine
this was written on (a Firecracker VM, kernel 6.18): a pipe's end of file does not depend on it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading


def main(argv: list[str]) -> int:
    grace, workdir = float(argv[0]), argv[1]
    command = argv[argv.index("--") + 1:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when to stop (its own session anyway)
    ending = threading.Event()
    child: subprocess.Popen | None = None

    def end() -> None:
        ending.set()
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        timer = threading.Timer(grace, lambda: child.poll() is None and child.kill())
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, lambda signum, frame: end())  # before the child starts: no window without it
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    if ending.is_set():
        end()

    def launcher_gone() -> None:
        try:
            while os.read(0, 4096):  # b"" at end of file: the launcher closed the pipe or died (raw: no buffer lock at exit)
                pass
        except OSError:
            pass
        end()

    threading.Thread(target=launcher_gone, daemon=True).start()
    code = child.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
