"""Where a served question's CPU goes: CPU seconds per process while the server answers, per question.

On a machine whose cores the served measurement keeps busy, served / in-process is a CPU budget: in
process, one question costs the tokenizer, the model and the span decoding; served, the same work
is spread over Triton's Python stubs, and tritonserver (HTTP/gRPC, the ensemble, the stubs' IPC),
the `bertqa serve` front and the load generator cost CPU on top. Measured per process with psutil
around a served measurement, so the report can say which of them the gap is made of.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

LOAD_GENERATOR = "load generator (bertqa bench, this process)"
FRONT = "bertqa serve (HTTP front, supervisor, canaries)"
TRITONSERVER = "tritonserver (HTTP/gRPC, ensemble scheduling, stub IPC)"
OTHER = "other processes and the kernel"


def role_of(cmdline: list[str]) -> str:
    """A report label for one of the server's processes, from its command line."""
    if not cmdline:
        return OTHER
    executable = Path(cmdline[0]).name
    if executable == "tritonserver":
        return TRITONSERVER
    if executable == "triton_python_backend_stub" and len(cmdline) > 1:
        # The stub's first argument is <repository copy>/models/<model>/<version>/model.py.
        parts = Path(cmdline[1]).parts
        model = parts[parts.index("models") + 1] if "models" in parts[:-1] else Path(cmdline[1]).name
        return f"{model} (Python stub)"
    return executable


def process_roles(server_pid: int) -> dict[int, str]:
    """pid -> role for the `bertqa serve` process, everything it started, and the load generator (this process)."""
    roles = {server_pid: FRONT, os.getpid(): LOAD_GENERATOR}
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            roles[child.pid] = role_of(child.cmdline())
        except psutil.Error:  # exited meanwhile
            continue
    return roles


def _cpu_seconds(pids) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        seconds[pid] = times.user + times.system
    return seconds


def _machine_busy_seconds() -> float:
    """Every CPU's busy time. Not sum(fields) - idle: Linux counts guest time inside user time, and steal
    is the hypervisor's, not this machine's work."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


@dataclass
class CpuSplit:
    """CPU milliseconds per question by role, over one served measurement."""

    ms_per_question: dict[str, float]
    machine_busy_cores: float  # average busy cores of the whole machine over the measurement
    cores: int
    questions_per_s: float
    wall_s: float

    @property
    def total_ms(self) -> float:
        return sum(self.ms_per_question.values())


def measure(server_pid: int, served: Callable[[], float]) -> tuple[float, CpuSplit]:
    """Runs ``served()`` (a served measurement returning questions/s at a steady load, warm-up included)
    between two CPU snapshots. Per question = the role's CPU seconds / (questions/s x wall seconds): the
    warm-up runs at the same load, so it is counted at the same rate."""
    roles = process_roles(server_pid)
    before, machine_before, begin = _cpu_seconds(roles), _machine_busy_seconds(), time.perf_counter()
    questions_per_s = served()
    wall, machine = time.perf_counter() - begin, _machine_busy_seconds() - machine_before
    after = _cpu_seconds(roles)
    questions = questions_per_s * wall
    if questions <= 0:
        raise ValueError(f"served measurement answered {questions_per_s} questions/s: nothing to divide by")
    by_role: dict[str, float] = {}
    for pid, seconds in after.items():
        if pid in before:
            by_role[roles[pid]] = by_role.get(roles[pid], 0.0) + seconds - before[pid]
    by_role[OTHER] = by_role.get(OTHER, 0.0) + max(0.0, machine - sum(by_role.values()))
    ms = {role: 1000.0 * seconds / questions for role, seconds in by_role.items()}
    return questions_per_s, CpuSplit(ms, machine / wall, psutil.cpu_count() or 1, questions_per_s, wall)


def median_split(splits: list[CpuSplit]) -> dict:
    """Per role, the median over rounds of CPU ms per question (a role missing from a round counts 0)."""
    if not splits:
        raise ValueError("no CPU splits to summarise")
    roles = sorted({role for s in splits for role in s.ms_per_question},
                   key=lambda r: -statistics.median(s.ms_per_question.get(r, 0.0) for s in splits))
    return {"ms_per_question": {r: statistics.median(s.ms_per_question.get(r, 0.0) for s in splits) for r in roles},
            "machine_busy_cores": statistics.median(s.machine_busy_cores for s in splits),
            "cores": splits[0].cores, "rounds": len(splits)}
