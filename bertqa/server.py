"""The embedded server: the real `tritonserver` 2.51.0 from the nvidia-pytriton wheel, on CPU.

It assembles a backend directory (Triton's Python backend, the stub for the running interpreter,
and the project's Python-based `onnxruntime` backend), shows the stub this virtualenv's packages,
loads only the models whose files exist, waits for readiness and stops cleanly.

Clients reach it through the HTTP front and supervisor (bertqa.front, bertqa.supervisor): Triton's
own HTTP port listens on loopback for the front only.

Closed by default, like the compose deployment: it listens on 127.0.0.1 unless told otherwise, and
the model-repository, shared-memory, trace and logging APIs need the header ``admin-key`` (the
``TRITON_ADMIN_KEY`` environment variable, else a random key per start that only this process knows).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from bertqa.front import FrontConfig
from bertqa.paths import PROJECT_ROOT
from bertqa.repository import plan_loading
from bertqa.supervisor import HealthConfig, Supervisor

DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
DEFAULT_HOST = "127.0.0.1"
# APIs that need the admin key (the same list as docker/triton/entrypoint.sh). Inference, health,
# metadata, model configuration and statistics stay open to clients.
RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")
# Python-based stand-ins for native backends the wheel lacks: backends/<name>/model.py (onnxruntime, openvino).
PROJECT_BACKENDS = Path(__file__).resolve().parent / "backends"


class ServerError(RuntimeError):
    """The embedded server cannot start; the message says why and what to do."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that nothing listens on right now (for tests and benchmarks)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    libraries: Path
    python_backend: Path
    stub: Path

    @classmethod
    def locate(cls) -> "TritonInstall":
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise ServerError("nvidia-pytriton is not installed (pip install nvidia-pytriton==0.7.0)")
        package = Path(list(spec.submodule_search_locations)[0])
        root = package / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        install = cls(
            binary=root / "bin" / "tritonserver",
            libraries=package.parent / "nvidia_pytriton.libs",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        )
        if not install.binary.is_file():
            raise ServerError(f"tritonserver binary not found at {install.binary}")
        if not install.stub.is_file():
            raise ServerError(f"nvidia-pytriton ships no Python backend stub for Python {version}")
        return install


def libpython_dir() -> Path | None:
    """Where this interpreter's shared libpython lives; the stub embeds it."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).exists():
        return Path(libdir)
    return None


def check_stub_libraries(install: TritonInstall, env: dict[str, str]) -> None:
    """Fails clearly when the stub cannot find a shared libpython (a statically linked Python)."""
    if shutil.which("ldd") is None:
        return
    result = subprocess.run(["ldd", str(install.stub)], capture_output=True, text=True, env=env)
    missing = [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]
    if missing:
        raise ServerError(
            f"the Triton Python backend stub cannot load {', '.join(missing)}: this Python "
            f"({sys.executable}) has no shared libpython. Use a Python built with --enable-shared "
            "(Debian's python3, pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared, or conda)."
        )


def build_backend_directory(install: TritonInstall, target: Path) -> Path:
    """<target>/python (Triton's Python backend + stub) and <target>/<name>/model.py per project backend."""
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    # Copies, not symlinks: Triton refuses a backend library whose real path leaves the directory.
    for item in install.python_backend.iterdir():
        if item.is_file():
            shutil.copy2(item, python_dir / item.name)
    shutil.copy2(install.stub, python_dir / "triton_python_backend_stub")
    for model in sorted(PROJECT_BACKENDS.glob("*/model.py")):
        (target / model.parent.name).mkdir()
        (target / model.parent.name / "model.py").symlink_to(model)
    return target


def build_repository_view(repository: Path, models: list[str], target: Path) -> Path:
    """A directory of symlinks to the loadable models only, so Triton needs no model-control API."""
    target.mkdir(parents=True)
    for name in models:
        (target / name).symlink_to(repository.resolve() / name, target_is_directory=True)
    return target


def admin_key_from_env() -> str:
    """``$TRITON_ADMIN_KEY`` if set (validated), else a random key: the admin APIs are then closed to clients."""
    key = os.environ.get(ADMIN_KEY_ENV, "")
    if not key:
        return secrets.token_urlsafe(32)
    if len(key) < 16 or not all(c.isalnum() or c in "._~-" for c in key):
        # It travels inside a tritonserver flag whose syntax uses ',', ':' and '='.
        raise ServerError(f"{ADMIN_KEY_ENV} must be at least 16 characters of A-Z a-z 0-9 . _ ~ -")
    return key


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host`` (a wildcard means loopback)."""
    if host in _WILDCARD_HOSTS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class ServerEndpoints:
    """The client-side URLs of a server with ``host``, ``http_port``, ``grpc_port`` and ``metrics_port``."""

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        """The public HTTP endpoint (the front)."""
        return f"{client_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{client_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{client_host(self.host)}:{self.metrics_port}/metrics"


@dataclass
class EmbeddedServer(ServerEndpoints):
    """tritonserver over a repository behind the HTTP front, supervised (bertqa.supervisor): restarted
    if it dies, models reloaded when the canary fails. A context manager, or start()/stop()."""

    repository: Path = DEFAULT_REPOSITORY
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = DEFAULT_HOST
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)
    log_file: Path | None = None
    startup_timeout_s: float = 120.0
    admin_key: str = field(default_factory=admin_key_from_env, repr=False)
    front: FrontConfig = field(default_factory=FrontConfig)
    health: HealthConfig | None = None  # default: HealthConfig with startup_timeout_s

    loaded: list[str] = field(init=False, default_factory=list)
    skipped: dict[str, str] = field(init=False, default_factory=dict)
    supervisor: Supervisor | None = field(init=False, default=None)
    _thread: threading.Thread | None = field(init=False, default=None)
    _workdir: tempfile.TemporaryDirectory | None = field(init=False, default=None)
    _log: object | None = field(init=False, default=None)
    _stop_requested: bool = field(init=False, default=False)

    @property
    def triton_pid(self) -> int | None:
        """The running tritonserver's process id (it changes when the supervisor restarts it)."""
        process = self.supervisor.process if self.supervisor else None
        return process.pid if process is not None and process.poll() is None else None

    def command(self, repository_view: Path, backends: Path, binary: Path, triton_http_port: int) -> list[str]:
        return [
            str(binary),
            f"--model-repository={repository_view}",
            f"--backend-directory={backends}",
            # Triton's own HTTP endpoint is for the front only (its parser crashes on some bodies).
            "--http-address=127.0.0.1",
            f"--http-port={triton_http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--log-verbose={self.log_verbose}",
            # Explicit model control, as in compose: /v2/health/ready means "every loaded model is
            # ready", and the supervisor reloads an unhealthy model through the (admin-only) repository API.
            "--model-control-mode=explicit",
            "--strict-readiness=true",
            *[f"--load-model={name}" for name in self.loaded],
            f"--http-restricted-api={RESTRICTED_APIS}:admin-key={self.admin_key}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:admin-key={self.admin_key}",
            *self.extra_args,
        ]

    def environment(self, install: TritonInstall) -> dict[str, str]:
        env = dict(os.environ)
        library_path = [str(install.libraries)]
        if (libdir := libpython_dir()) is not None:
            library_path.append(str(libdir))  # the stub then embeds this interpreter, not another
        if env.get("LD_LIBRARY_PATH"):
            library_path.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
        env["BERTQA_SITE_PACKAGES"] = sysconfig.get_paths()["purelib"]
        return env

    def check_ports_free(self) -> None:
        """Another server on our port would answer our readiness probe; refuse to start instead."""
        address = "" if self.host in _WILDCARD_HOSTS else self.host
        for label, port in (("HTTP", self.http_port), ("gRPC", self.grpc_port), ("metrics", self.metrics_port)):
            with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((address, port))
                except OSError as err:
                    raise ServerError(
                        f"{label} port {port} is already in use ({err.strerror}); stop the other server "
                        "or choose another port (--http-port/--grpc-port/--metrics-port)"
                    ) from None

    def start(self) -> "EmbeddedServer":
        repository = Path(self.repository).resolve()
        self.loaded, self.skipped = plan_loading(repository)
        if not any(n.startswith("bert_qa") for n in self.loaded):
            reasons = "; ".join(f"{k}: {v}" for k, v in self.skipped.items())
            raise ServerError(
                f"no question-answering model in {repository} has its files ({reasons}). "
                "Install the bundled demo with `bertqa install-demo` or export a checkpoint with "
                "`bertqa export --checkpoint PATH`."
            )
        self.check_ports_free()
        install = TritonInstall.locate()
        env = self.environment(install)
        check_stub_libraries(install, env)
        self._workdir = tempfile.TemporaryDirectory(prefix="bertqa-triton-")
        work = Path(self._workdir.name)
        backends = build_backend_directory(install, work / "backends")
        view = build_repository_view(repository, self.loaded, work / "models")
        self._log = open(self.log_file, "ab") if self.log_file else None  # closed by stop()
        (triton_http_port,) = free_ports(1)
        self.supervisor = Supervisor(
            self.command(view, backends, install.binary, triton_http_port),
            triton_http=f"127.0.0.1:{triton_http_port}", listen_host=self.host, listen_port=self.http_port,
            admin_key=self.admin_key, env=env, output=self._log, front=self.front,
            health=self.health or HealthConfig(startup_timeout_s=self.startup_timeout_s),
        )
        self._thread = threading.Thread(target=self.supervisor.run, name="bertqa-supervisor", daemon=True)
        self._thread.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        while not self.supervisor.ready.wait(0.1):
            if self._stop_requested:
                raise KeyboardInterrupt("stopped while starting")
            if not self._thread.is_alive():
                hint = f" (log: {self.log_file})" if self.log_file else " (see its log above)"
                raise ServerError(f"{self.supervisor.failure or 'the supervisor stopped'}{hint}")

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._thread is not None:
            self.supervisor.request_stop()
            self._thread.join(timeout_s)
            self._thread = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def forward_signals(self) -> None:
        """SIGINT/SIGTERM stop the server gracefully (once) instead of killing this process."""
        def forward(signum, _frame):
            self._stop_requested = True
            if self.supervisor is not None:
                self.supervisor.request_stop()

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)

    def serve_forever(self) -> int:
        """Blocks until a stop is requested (see forward_signals), then cleans up; 0 after a requested stop."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)  # short waits: signal handlers run in this thread
        failure = self.supervisor.failure if self.supervisor else None
        self.stop()
        return 1 if failure and not self._stop_requested else 0
