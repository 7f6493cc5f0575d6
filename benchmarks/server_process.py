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

from bertqa.server import ServerError, free_ports


@dataclass
class ServerProcess:
    repository: Path
    log_file: Path
    canary_interval_s: float = 10.0
    startup_timeout_s: float = 600.0
    host: str = "127.0.0.1"
    ports: list[int] = field(default_factory=lambda: free_ports(3))
    _process: subprocess.Popen | None = field(init=False, default=None)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports[0]}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports[2]}/metrics"

    def command(self) -> list[str]:
        http, grpc, metrics = self.ports
        return [sys.executable, "-m", "bertqa.cli", "serve", "--repository", str(self.repository),
                "--host", self.host, "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                "--canary-interval", str(self.canary_interval_s), "--startup-timeout", str(self.startup_timeout_s)]

    def start(self) -> "ServerProcess":
        self._log = open(self.log_file, "ab")  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._ready():
            if self._process.poll() is not None:
                self.stop()
                raise ServerError(f"bertqa serve exited with code {self._process.returncode} while starting "
                                  f"(log: {self.log_file})")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"bertqa serve was not ready after {self.startup_timeout_s:.0f} s (log: {self.log_file})")
            time.sleep(0.5)
        return self

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
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
