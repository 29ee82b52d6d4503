"""``vla-export serve``: a real ``tritonserver`` on loopback, from the ``nvidia-pytriton`` wheel's files.

The wheel ships the Triton 2.51 server binary, the Python backend and a backend stub per Python
version (its own ``pytriton`` package pins numpy<2 and is not used). The backend directory is
assembled from those files; the stub's embedded Python finds this interpreter's ``python3`` first on
``PATH`` and so runs the model with this environment's packages (vla_export, onnxruntime, torch).
For development and tests; production runs NVIDIA's Triton container on the same repository.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from vla_export import system
from vla_export.errors import ArtifactError, EnvironmentProblem, MissingDependencyError
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


def check_port(port: int, what: str) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise EnvironmentProblem(f"port {port} ({what}) on 127.0.0.1 is in use ({exc.strerror}); pick another with --{what}-port") from None


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


def log_tail(path: Path, lines: int = 8) -> str:
    """The log's last lines, led by its last error line when that is further up (a traceback ends in frames)."""
    if not path.exists():
        return "(no log)"
    text = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip() and "PyCapsule_GetPointer" not in ln]
    tail = text[-lines:]
    errors = [ln for ln in text if "Error" in ln or ln.startswith("E1") or "error:" in ln]
    if errors and errors[-1] not in tail:
        tail = [errors[-1], "..."] + tail
    return " | ".join(tail) or "(empty log)"


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
        for port, what in ((self.http_port, "http"), (self.grpc_port, "grpc"), (self.metrics_port, "metrics")):
            check_port(port, what)
        files = find_triton()
        self._workdir = Path(tempfile.mkdtemp(prefix="vla-triton-"))
        backends = files.backends_dir(self._workdir / "backends")
        self.log_path = Path(self.log_path or self._workdir / "tritonserver.log")
        env = dict(os.environ)
        libdirs = [str(files.libs), str(self._python_library_dir(self._workdir / "lib"))]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command(files, backends), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)  # Ctrl-C reaches us, not the server: we stop it
        try:
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

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return 0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} before it was ready; its log ends: {log_tail(self.log_path)}")
            if self._get("/v2/health/ready") == 200 and all(self._get(f"/v2/models/{m}/ready") == 200 for m in self.models):
                return
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready within {self.ready_timeout:g} s (--timeout); its log ends: {log_tail(self.log_path)}")

    def server_info(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.http_url}/v2", timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> int | None:
        """SIGTERM, wait (Triton drains in flight requests), SIGKILL after ``STOP_SECONDS``; the exit code."""
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
            code = proc.returncode
        if self._workdir is not None:
            keep_log = self.log_path is not None and self._workdir in self.log_path.parents
            with contextlib.suppress(OSError):
                shutil.rmtree(self._workdir / "backends")
            if not keep_log:
                shutil.rmtree(self._workdir, ignore_errors=True)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
