"""``vla-export serve``: a real ``tritonserver`` on loopback, from the ``nvidia-pytriton`` wheel's files.

The wheel ships the Triton 2.51 server binary, the Python backend and a backend stub per Python
version (its own ``pytriton`` package pins numpy<2 and is not used). The backend directory is
assembled from those files; the stub's embedded Python finds this interpreter's ``python3`` first on
``PATH`` and so runs the model with this environment's packages (vla_export, onnxruntime, torch).
For development and tests; production runs NVIDIA's Triton container on the same repository.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from vla_export import system
from vla_export.fileio import pid_alive
from vla_export.errors import ArtifactError, ConfigError, EnvironmentProblem, MissingDependencyError
from vla_export.lazy import lazy_import
from vla_export.serve.fleet import SERVING_FILE, read_serving
from vla_export.serve.repository import read_repository

WHEEL = "nvidia-pytriton"
WHEEL_VERSION = "0.7.0"
INSTALL = f"`pip install --no-deps {WHEEL}=={WHEEL_VERSION}` (its numpy<2 pin is for its pytriton package, which is not used)"
STOP_SECONDS = 30.0


class ServerError(EnvironmentProblem):
    """The server could not start, or did not become ready (exit code 3)."""


@dataclass(frozen=True)
class TritonFiles:
    """Where the wheel's server binary, Python backend and stub for this Python are."""

    binary: Path
    backend: Path  # the folder holding libtriton_python.so and triton_python_backend_utils.py
    stub: Path
    libs: Path
    version: str

    def backends_dir(self, folder: Path) -> Path:
        """``folder/python/`` with the backend library, its utils and this Python's stub (Triton's layout)."""
        python = folder / "python"
        python.mkdir(parents=True, exist_ok=True)
        for src in (self.backend / "libtriton_python.so", self.backend / "triton_python_backend_utils.py", self.stub):
            shutil.copy2(src, python / src.name)
        return folder


def find_triton() -> TritonFiles:
    """The server files of the installed ``nvidia-pytriton`` wheel, or an EnvironmentProblem saying why not."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise EnvironmentProblem(
            f"the {WHEEL} wheel's tritonserver is for Linux x86_64 (glibc 2.35+), this is {sys.platform} {platform.machine()}; "
            "run NVIDIA's Triton container on the repository instead (see the README)"
        )
    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise MissingDependencyError(f"`vla-export serve` needs the {WHEEL} wheel (it ships tritonserver); install it with {INSTALL}") from None
    root = Path(str(dist.locate_file("pytriton"))) / "tritonserver"
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    files = TritonFiles(
        binary=root / "bin" / "tritonserver", backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / pyver / "triton_python_backend_stub",
        libs=Path(str(dist.locate_file("nvidia_pytriton.libs"))), version=dist.version,
    )
    for path in (files.binary, files.backend / "libtriton_python.so", files.libs):
        if not path.exists():
            raise EnvironmentProblem(f"{path}: missing from the installed {WHEEL} {dist.version}; reinstall it with {INSTALL}")
    if not files.stub.exists():
        raise EnvironmentProblem(f"{WHEEL} {dist.version} has no Python backend stub for Python {pyver} (looked in {files.stub.parent.parent})")
    return files


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_ports(ports: dict[str, int]) -> None:
    """Usage errors, before anything starts: a port outside 0-65535, or one port given for two services (0: any free port)."""
    for what, port in ports.items():
        if not 0 <= port <= 65535:
            raise ConfigError(f"--{what}-port {port}: a TCP port is 1-65535 (0: any free port)")
    given = [(what, port) for what, port in ports.items() if port]
    for i, (what, port) in enumerate(given):
        for other, port2 in given[i + 1:]:
            if port == port2:
                raise ConfigError(f"--{what}-port and --{other}-port are both {port}: each service needs its own port")


def port_holder(port: int) -> str | None:
    """Who listens on TCP ``port`` (from /proc: "pid 1234 (tritonserver --model-repository=...)"), None when unknown."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    return f"pid {proc.name} ({command[:200]})"
        except OSError:  # another user's process, or one that just ended
            continue
    return "a process of another user (its pid is not readable)"


def check_port(port: int, what: str) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            holder = port_holder(port)
            by = f" by {holder}" if holder else ""
            raise EnvironmentProblem(f"port {port} ({what}) on 127.0.0.1 is in use{by} ({exc.strerror}); stop it, or pick another "
                                     f"port with --{what}-port") from None


def check_engines(repository: Path, models: list[str]) -> None:
    """Refuse engines the local GPU cannot run (built for another one, or no GPU here) before Triton tries."""
    for model in models:
        settings_file = repository / model / "1" / SERVING_FILE
        if not settings_file.exists():
            continue
        engines = read_serving(settings_file.parent).get("engines") or {}
        if not engines:
            continue
        here = system.gpu_info()
        for part, info in engines.items():
            built = info.get("gpu") or {}
            if here.get("compute_capability") is None:
                raise EnvironmentProblem(
                    f"{model}: the {part} engine {info['file']} was built for {built.get('name')} (compute capability "
                    f"{built.get('compute_capability')}); this machine has no NVIDIA GPU to run it"
                )
            hw = (info.get("plan") or {}).get("hardware_compatibility", "none")
            if built.get("compute_capability") != here["compute_capability"] and hw != "ampere+":
                raise ArtifactError(
                    f"{model}: the {part} engine {info['file']} was built for {built.get('name')} (compute capability "
                    f"{built.get('compute_capability')}), this GPU is {here.get('name')} ({here['compute_capability']}); rebuild it here"
                )


#: Log lines of a CPU-only machine that state no cause (see reference/triton.md).
HARMLESS = ("CudaDriverHelper has not been initialized", "Failed to initialize NVML", "DCGM unable to start",
            "CUDA driver version is insufficient", "PyCapsule_GetPointer")
_CAUSE = re.compile(r"^(E\d{4} |\[libprotobuf ERROR|error: |.*\b(Error|ERROR|error)\b)")
_PREFIX = re.compile(r"^(E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] |\[libprotobuf ERROR [^\]]*\] )")


def log_causes(path: Path, most: int = 6) -> list[str]:
    """The log's lines that state why the server failed (its error lines, without the prefixes and the
    harmless lines of a machine without a GPU), the last ``most`` distinct ones."""
    if not path.exists():
        return []
    found: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip() or any(h in line for h in HARMLESS) or line.startswith(("+", "|")) or not _CAUSE.match(line):
            continue
        text = _PREFIX.sub("", line).strip().strip('"')
        if text not in found:
            found.append(text)
    return found[-most:]


def log_tail(path: Path, lines: int = 8) -> str:
    """What the log says went wrong: its error lines (:func:`log_causes`), else its last lines (the options
    table and harmless lines left out)."""
    if not path.exists():
        return "(no log)"
    causes = log_causes(path)
    if causes:
        return " | ".join(causes)
    text = [ln for ln in path.read_text(errors="replace").splitlines()
            if ln.strip() and not ln.startswith(("+", "|")) and not any(h in ln for h in HARMLESS)]
    return " | ".join(text[-lines:]) or "(empty log)"


WORKDIR_PREFIX = "vla-triton-"
WATCHDOG = Path(__file__).with_name("watchdog.py")
#: After SIGTERM (ours, or the watchdog's when we died), how long the server has before SIGKILL.
KILL_AFTER_SECONDS = 20.0


def remove_stale_workdirs() -> list[Path]:
    """Remove the work folders of launchers that are gone (killed: no clean-up ran), not their logs."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid = folder.name[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@dataclass
class TritonServer:
    """A ``tritonserver`` process serving ``repository`` on 127.0.0.1; a context manager (start, wait ready, stop)."""

    repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    models: list[str] | None = None  # default: the repository's models
    log_path: Path | None = None
    ready_timeout: float = 60.0
    process: subprocess.Popen | None = field(default=None, init=False)
    _workdir: Path | None = field(default=None, init=False)
    _own_log: bool = field(default=False, init=False)  # a temporary log (no log_path given): removed at a clean stop

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self, files: TritonFiles, backends: Path) -> list[str]:
        cmd = [str(files.binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
               "--model-control-mode=explicit", "--http-address=127.0.0.1", f"--http-port={self.http_port}",
               "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}", "--metrics-address=127.0.0.1",
               f"--metrics-port={self.metrics_port}", "--allow-cpu-metrics=true", "--exit-timeout-secs=5"]
        return cmd + [f"--load-model={m}" for m in self.models or []]

    def start(self) -> TritonServer:
        """Check the repository and ports, start the server, wait until every model is ready."""
        self.repository = Path(self.repository).resolve()
        record = read_repository(self.repository)
        self.models = self.models or list(record["models"])
        for model in self.models:
            if not (self.repository / model / "config.pbtxt").exists():
                raise ArtifactError(f"{self.repository / model}: no config.pbtxt (model {model!r} is not in the repository)")
        check_engines(self.repository, self.models)
        ports = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}
        check_ports(ports)
        if not self.ready_timeout > 0:
            raise ConfigError(f"--timeout must be a positive number of seconds, got {self.ready_timeout:g}")
        for what, port in ports.items():
            check_port(port, what)
        files = find_triton()
        remove_stale_workdirs()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        try:
            backends = files.backends_dir(self._workdir / "backends")
            if self.log_path is None:  # beside the work folder, not in it: the folder always goes, the log only at a clean stop
                self.log_path = self._workdir.with_name(self._workdir.name + ".log")
                self._own_log = True
            self.log_path = Path(self.log_path)
            env = dict(os.environ)
            libdirs = [str(files.libs), str(self._python_library_dir(self._workdir / "lib"))]
            env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []))
            env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
            watched = [sys.executable, "-I", str(WATCHDOG), str(KILL_AFTER_SECONDS), str(self._workdir), "--", *self.command(files, backends)]
            with self.log_path.open("wb") as log:
                # Its own session: Ctrl-C reaches us, not the server (we stop it). Under the watchdog: when
                # this process dies, even by SIGKILL, the pipe on the watchdog's stdin closes and it ends the server.
                self.process = subprocess.Popen(watched, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _python_library_dir(folder: Path) -> Path:
        """A folder holding only a link to this interpreter's ``libpython3.X.so.1.0``, which the stub loads.

        Not the interpreter's LIBDIR itself: that is often /usr/lib/x86_64-linux-gnu, and putting it on
        LD_LIBRARY_PATH makes the model's torch load a system cuDNN instead of its own (seen on the lent
        H100: "PyTorch was compiled against cuDNN 9.19 but found runtime version 9.14").
        """
        folder.mkdir(parents=True, exist_ok=True)
        name = sysconfig.get_config_var("INSTSONAME") or f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
        source = Path(sysconfig.get_config_var("LIBDIR") or "") / name
        if source.exists() and not (folder / name).exists():
            (folder / name).symlink_to(source)
        return folder

    def client(self, timeout: float = 2.0) -> Any:
        """tritonclient's HTTP client for this server (``is_server_ready``, ``is_model_ready``, metadata)."""
        http = lazy_import("tritonclient.http", purpose="`vla-export serve` (waiting for the server)",
                           install="`pip install 'tritonclient[http,grpc]'`")
        return http.InferenceServerClient(self.http_url, connection_timeout=timeout, network_timeout=timeout)

    def _ready(self, client: Any) -> bool:
        """Server and every model ready, by tritonclient; a server not yet listening (connection refused,
        a timeout) is not ready yet."""
        utils = lazy_import("tritonclient.utils", purpose="`vla-export serve`", install="`pip install 'tritonclient[http,grpc]'`")
        try:
            return bool(client.is_server_ready()) and all(client.is_model_ready(m) for m in self.models)
        except (OSError, utils.InferenceServerException):  # not listening yet, or answering 5xx while loading
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        client = self.client()
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(f"tritonserver exited with code {self.process.returncode} before it was ready: "
                                      f"{log_tail(self.log_path)} (log: {self.log_path})")
                if self._ready(client):
                    return
                time.sleep(0.25)
        finally:
            client.close()
        raise ServerError(f"tritonserver was not ready within {self.ready_timeout:g} s (--timeout): {log_tail(self.log_path)} "
                          f"(log: {self.log_path})")

    def server_info(self) -> dict[str, Any]:
        """The server's metadata (``name``, ``version``, ``extensions``), by tritonclient."""
        client = self.client(timeout=5.0)
        try:
            return dict(client.get_server_metadata())
        finally:
            client.close()

    def stop(self) -> int | None:
        """SIGTERM (the watchdog passes it on), wait (Triton drains in flight requests), SIGKILL after ``STOP_SECONDS``;
        the server's exit code. The work folder goes, the log stays."""
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()
            code = proc.returncode
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if code == 0 and self._own_log and self.log_path is not None:  # a failure's log stays: the error names it
            self.log_path.unlink(missing_ok=True)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
