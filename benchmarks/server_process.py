"""`bertqa serve` in a process of its own, for measurements: as users run it, so the load generator does not share
a Python interpreter (and its GIL) with the server's HTTP front and supervisor."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bertqa.server import ServerEndpoints, ServerError, free_ports


@dataclass
class ServerProcess(ServerEndpoints):
    repository: Path
    log_file: Path
    canary_interval_s: float = 10.0
    startup_timeout_s: float = 600.0
    host: str = "127.0.0.1"
    http_port: int = 0  # 0: a free port, chosen at construction
    grpc_port: int = 0
    metrics_port: int = 0
    _process: subprocess.Popen | None = field(init=False, default=None)
    _log: object | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        free = iter(free_ports(3))  # three distinct ports, each used or skipped in turn
        self.http_port, self.grpc_port, self.metrics_port = (
            port or next(free) for port in (self.http_port, self.grpc_port, self.metrics_port))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bertqa.cli", "serve", "--repository", str(self.repository), "--host", self.host,
                "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
                "--metrics-port", str(self.metrics_port),
                "--canary-interval", str(self.canary_interval_s), "--startup-timeout", str(self.startup_timeout_s)]

    def start(self) -> "ServerProcess":
        self._log = open(self.log_file, "ab")  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._ready():
            if (code := self._process.poll()) is not None:
                self.stop()
                raise ServerError(f"bertqa serve exited with code {code} while starting (log: {self.log_file})")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"bertqa serve was not ready after {self.startup_timeout_s:.0f} s (log: {self.log_file})")
            time.sleep(0.5)
        return self

    @property
    def pid(self) -> int:
        """The `bertqa serve` process (tritonserver and the model stubs are its descendants)."""
        if self._process is None:
            raise ServerError("the server is not running")
        return self._process.pid

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 90.0) -> None:
        """SIGTERM, as a process manager stops it (it then stops tritonserver); killed if it does not exit."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
