"""Triton's perf_analyzer beside `bertqa bench`: installing it, running it, reading its figures.

The binary comes from the PyPI wheel ``tritonclient==2.51.0`` (the release of the embedded server;
later wheels no longer ship it), extracted into the venv's ``bin/``. On a CPU host it still links
``libb64.so.0d`` (Debian ``libb64-0d``) and ``libcudart.so.12`` (PyPI ``nvidia-cuda-runtime-cu12``,
put on ``LD_LIBRARY_PATH`` here).

    python -m benchmarks.perf_analyzer --install     # what `make install-dev` runs
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL = "tritonclient==2.51.0"
MEMBER = "tritonclient-2.51.0.data/data/bin/perf_analyzer"
VENV_BIN = Path(sys.executable).parent


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, cannot start, or failed; the message says what to do."""


def cuda_runtime_lib() -> Path | None:
    try:
        import nvidia.cuda_runtime as cuda_runtime
    except ImportError:
        return None
    for root in cuda_runtime.__path__:
        if (Path(root) / "lib" / "libcudart.so.12").is_file():
            return Path(root) / "lib"
    return None


def environment() -> dict[str, str]:
    env = dict(os.environ)
    lib = cuda_runtime_lib()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    return env


def find_binary() -> Path | None:
    candidate = VENV_BIN / "perf_analyzer"
    if candidate.is_file():
        return candidate
    found = shutil.which("perf_analyzer")
    return Path(found) if found else None


def missing_libraries(binary: Path) -> list[str]:
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=environment())
    return [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]


def require() -> Path:
    """The usable binary, or PerfAnalyzerError naming what to install."""
    binary = find_binary()
    if binary is None:
        raise PerfAnalyzerError(f"perf_analyzer not found: run `python -m benchmarks.perf_analyzer --install` "
                                f"(extracts it from the {WHEEL} wheel) or `make install-dev`")
    missing = missing_libraries(binary)
    if missing:
        hints = {"libb64.so.0d": "apt-get install libb64-0d", "libcudart.so.12": "pip install nvidia-cuda-runtime-cu12"}
        raise PerfAnalyzerError(f"{binary} cannot load {', '.join(missing)}: "
                                + "; ".join(hints.get(m, m) for m in missing))
    return binary


def install(bin_dir: Path = VENV_BIN) -> Path:
    """Extracts perf_analyzer from the tritonclient 2.51.0 wheel (pip download, no install) into ``bin_dir``."""
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("tritonclient-2.51.0-*.whl"))
        target = bin_dir / "perf_analyzer"
        partial = target.with_name(".perf_analyzer.partial")
        with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as source, open(partial, "wb") as out:
            shutil.copyfileobj(source, out)
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(partial, target)
    return target


@dataclass
class PerfAnalyzerResult:
    concurrency: int
    throughput: float  # inferences (requests) per second
    p50_ms: float
    p99_ms: float
    command: list[str]

    def as_dict(self) -> dict:
        return {"concurrency": self.concurrency, "throughput": self.throughput, "p50_ms": self.p50_ms,
                "p99_ms": self.p99_ms, "command": " ".join(self.command)}


def command(url: str, model: str, protocol: str, input_data: Path, concurrency: int, *,
            measurement_interval_ms: int = 3000, max_trials: int = 10, stability_pct: float = 10,
            csv_file: Path | None = None, binary: Path | str = "perf_analyzer") -> list[str]:
    """The perf_analyzer command line `make bench` runs (and the README shows)."""
    args = [str(binary), "-m", model, "-i", protocol, "-u", url, "--input-data", str(input_data), "-b", "1",
            "--concurrency-range", f"{concurrency}:{concurrency}", "--measurement-interval", str(measurement_interval_ms),
            "--max-trials", str(max_trials), "--stability-percentage", f"{stability_pct:g}"]
    return args + (["-f", str(csv_file)] if csv_file else [])


def run(url: str, model: str, protocol: str, input_data: Path, concurrency: int, *,
        measurement_interval_ms: int = 3000, max_trials: int = 10, stability_pct: float = 10,
        timeout_s: float = 300) -> PerfAnalyzerResult:
    binary = require()
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        out = Path(tmp) / "result.csv"
        args = command(url, model, protocol, input_data, concurrency, measurement_interval_ms=measurement_interval_ms,
                       max_trials=max_trials, stability_pct=stability_pct, csv_file=out, binary=binary)
        result = subprocess.run(args, capture_output=True, text=True, env=environment(), timeout=timeout_s)
        if result.returncode != 0 or not out.is_file():
            tail = (result.stdout + result.stderr).strip().splitlines()[-8:]
            raise PerfAnalyzerError(f"perf_analyzer exited {result.returncode}: " + " | ".join(tail))
        rows = list(csv.DictReader(out.read_text().splitlines()))
    if not rows:
        raise PerfAnalyzerError("perf_analyzer wrote no measurement")
    row = rows[-1]
    try:  # latencies in microseconds
        return PerfAnalyzerResult(concurrency, float(row["Inferences/Second"]), float(row["p50 latency"]) / 1000.0,
                                  float(row["p99 latency"]) / 1000.0, args)
    except (KeyError, ValueError) as err:
        raise PerfAnalyzerError(f"unexpected perf_analyzer CSV ({err}); columns: {sorted(row)}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf_analyzer", description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help=f"extract perf_analyzer from {WHEEL} into {VENV_BIN}")
    args = parser.parse_args(argv)
    if args.install:
        print(f"installed {install()}")
    try:
        print(f"perf_analyzer ready: {require()}")
    except PerfAnalyzerError as err:
        print(f"note: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
