"""Load generation and measurement for `bertqa bench` (perf_analyzer-style windows, MLPerf-style scenarios).

Load modes (one *load point* each):
* ``concurrency`` N — closed loop: N requests always outstanding; each completion sends the next.
  Latency = completion - send.
* ``rate`` R — open loop: requests are scheduled at R per second (``constant`` or ``poisson``
  inter-arrival times) whether or not earlier ones have completed (up to ``max_outstanding`` in
  flight). Latency = completion - *scheduled* time, as MLPerf LoadGen measures it, so a generator
  or server that falls behind shows up in latency instead of silently lowering the offered load.
* ``offline`` — MLPerf Offline: a fixed amount of work issued all at once (``inflight`` requests
  outstanding at most); throughput = pairs / (last completion - issue), latency from the issue time.

Measurement of a concurrency/rate point, like perf_analyzer: load starts, a warm-up runs, then
fixed windows of ``window_s`` are measured (requests counted by *completion* inside the window).
After each window the stability rule (:mod:`bertqa.client.stats`) is applied to the last 3 windows;
the point ends when they are stable or after ``max_trials`` windows (then flagged unstable). The
point's figures are those of the judged windows merged. Every point has its own recorder, and
in-flight requests are drained before the next point starts, so no count crosses points.

Two engines drive the load; both keep one ``InferInput`` list per distinct request, built once:
* ``async`` (default): one asyncio event loop in a background thread with tritonclient's aio
  clients (``tritonclient.http.aio`` over aiohttp with a connection pool, ``tritonclient.grpc.aio``
  over one HTTP/2 channel);
* ``threads``: one OS thread per outstanding request, each with its own synchronous client.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import psutil

from bertqa.client.qa_client import default_url, normalize_url, qa_inputs, qa_outputs
from bertqa.client.stats import (
    STABILITY_WINDOWS,
    LatencySummary,
    ModelBreakdown,
    ModelCounters,
    StabilityVerdict,
    WindowStats,
    breakdown,
    composing_models,
    is_stable,
    merge_windows,
    parse_statistics,
)

ENGINES = ("async", "threads")
ARRIVALS = ("constant", "poisson")
SCENARIOS = ("singlestream", "server", "offline")


class BenchError(RuntimeError):
    """The benchmark cannot run (server unreachable, model not ready...); the message says why."""


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Load:
    kind: str  # "concurrency" | "rate" | "offline"
    value: float  # concurrency, requests/s, or (offline) the most requests in flight
    arrivals: str = "constant"  # rate only
    requests: int = 0  # offline only: how many requests make up the query

    @property
    def label(self) -> str:
        if self.kind == "concurrency":
            return f"concurrency {int(self.value)}"
        if self.kind == "rate":
            return f"rate {self.value:g}/s {self.arrivals}"
        return f"offline {self.requests} requests"


@dataclass
class BenchConfig:
    url: str | None = None
    protocol: str = "http"
    model: str = "bert_qa"
    batch_size: int = 1
    window_s: float = 3.0
    warmup_s: float = 1.0
    max_trials: int = 10
    stability_threshold: float = 0.10
    stability_latency: str = "avg"  # what latency the stability rule judges (perf_analyzer: avg)
    engine: str = "async"
    timeout_s: float = 120.0
    max_outstanding: int = 256  # rate mode: most requests in flight
    server_stats: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self.url = normalize_url(self.url or default_url(self.protocol))
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}")
        if self.max_trials < STABILITY_WINDOWS:
            raise ValueError(f"max trials must be >= {STABILITY_WINDOWS} (the stability rule judges {STABILITY_WINDOWS} windows)")
        if self.batch_size < 1:
            raise ValueError("batch size must be >= 1")


# --------------------------------------------------------------------------------------------------
# Requests and their records


def build_payloads(module, batches: Sequence[tuple[list[str], list[str]]]) -> list[list]:
    """One list of InferInputs per distinct request, serialised once (tritonclient copies them per call)."""
    return [qa_inputs(module, questions, contexts) for questions, contexts in batches]


class Recorder:
    """Completions of one load point, in completion order: ``latencies[k]`` and ``lags[k]`` belong to the
    same request. The load threads record under a lock (a latency and its lag are two appends, which
    threads could otherwise interleave); the controller cuts windows at ``len(latencies)``."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.latencies: list[float] = []  # seconds; NaN marks a failed request
        self.lags: list[float] = []  # open loop: send time - scheduled time (s)
        self.issued = 0
        self.errors: Counter[str] = Counter()
        self.arrivals: Arrivals | None = None  # open loop: the schedule
        self._lock = threading.Lock()

    def done(self, latency_s: float, lag_s: float = 0.0) -> None:
        with self._lock:
            self.lags.append(lag_s)  # before the latency: a cut at len(latencies) always has the lags
            self.latencies.append(latency_s)

    def failed(self, message: str, lag_s: float = 0.0) -> None:
        with self._lock:
            self.errors[message[:300]] += 1
            self.lags.append(lag_s)
            self.latencies.append(math.nan)


def error_text(err: BaseException) -> str:
    message = getattr(err, "message", None)
    text = message() if callable(message) else str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Arrivals:
    """Scheduled send times of an open-loop load: constant gaps or Poisson (exponential gaps)."""

    def __init__(self, rate: float, kind: str, start: float, seed: int = 0):
        if rate <= 0:
            raise ValueError("request rate must be > 0")
        if kind not in ARRIVALS:
            raise ValueError(f"arrivals must be one of {ARRIVALS}")
        self.rate, self.kind = rate, kind
        self.rng = random.Random(seed)
        self.next_time = start
        self.lock = threading.Lock()
        self.times: list[float] = []  # every scheduled time handed out, increasing

    def take(self) -> float:
        with self.lock:
            scheduled = self.next_time
            gap = 1.0 / self.rate if self.kind == "constant" else self.rng.expovariate(self.rate)
            self.next_time += gap
            self.times.append(scheduled)
            return scheduled

    def scheduled_between(self, first: float, last: float) -> int:
        """How many sends were due in [first, last)."""
        times = self.times
        return bisect.bisect_left(times, last) - bisect.bisect_left(times, first)


# --------------------------------------------------------------------------------------------------
# Engines


class Engine:
    """Drives one load at a time; ``start`` returns at once, ``stop`` drains what is in flight."""

    def __init__(self, config: BenchConfig, batches: Sequence[tuple[list[str], list[str]]]):
        self.config = config
        self.module = _protocol_module(config.protocol)
        self.payloads = build_payloads(self.module, batches)
        self.outputs = qa_outputs(self.module)
        self.counter = itertools.count()
        self.finished = threading.Event()  # offline: all requests completed

    def payload(self) -> list:
        return self.payloads[next(self.counter) % len(self.payloads)]

    def start(self, load: Load, recorder: Recorder) -> None:
        raise NotImplementedError

    def stop(self, timeout_s: float) -> bool:
        """Stops issuing and waits for requests in flight; False if some were still running."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _protocol_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise ValueError(f"protocol must be http or grpc, got {protocol!r}")
    return module


class AsyncEngine(Engine):
    def __init__(self, config: BenchConfig, batches):
        super().__init__(config, batches)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self.thread.start()
        self.client = self._call(self._open_client())
        self.stopping = False
        self.tasks: set[asyncio.Task] = set()

    def _call(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _open_client(self):
        if self.config.protocol == "http":
            import tritonclient.http.aio as aio

            # conn_timeout is aiohttp's total timeout per request; the pool must not cap concurrency
            return aio.InferenceServerClient(self.config.url, conn_limit=0, conn_timeout=self.config.timeout_s)
        import tritonclient.grpc.aio as aio

        return aio.InferenceServerClient(self.config.url)

    async def _send(self, recorder: Recorder, reference: float, lag: float = 0.0) -> None:
        inputs = self.payload()
        recorder.issued += 1
        kwargs = {"client_timeout": self.config.timeout_s} if self.config.protocol == "grpc" else {}
        try:
            await self.client.infer(self.config.model, inputs, outputs=self.outputs, **kwargs)
        except Exception as err:  # noqa: BLE001 - every failure is counted, the run goes on
            recorder.failed(error_text(err), lag)
        else:
            recorder.done(time.perf_counter() - reference, lag)

    def _spawn(self, coroutine) -> asyncio.Task:
        task = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _closed_loop(self, recorder: Recorder) -> None:
        while not self.stopping:
            await self._send(recorder, time.perf_counter())

    async def _open_loop(self, load: Load, recorder: Recorder) -> None:
        arrivals = recorder.arrivals = Arrivals(load.value, load.arrivals, time.perf_counter(), self.config.seed)
        slots = asyncio.Semaphore(self.config.max_outstanding)
        while not self.stopping:
            scheduled = arrivals.take()
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            if self.stopping:
                slots.release()
                break

            async def one(scheduled=scheduled):
                try:
                    await self._send(recorder, scheduled, time.perf_counter() - scheduled)
                finally:
                    slots.release()

            self._spawn(one())

    async def _offline(self, load: Load, recorder: Recorder) -> None:
        issued = time.perf_counter()
        remaining = itertools.count(load.requests, -1)

        async def worker():
            while not self.stopping and next(remaining) > 0:
                await self._send(recorder, issued)

        await asyncio.gather(*(worker() for _ in range(int(load.value))))
        self.finished.set()

    async def _start(self, load: Load, recorder: Recorder) -> None:
        self.stopping = False
        self.finished.clear()
        if load.kind == "concurrency":
            for _ in range(int(load.value)):
                self._spawn(self._closed_loop(recorder))
        elif load.kind == "rate":
            self._spawn(self._open_loop(load, recorder))
        else:
            self._spawn(self._offline(load, recorder))

    def start(self, load: Load, recorder: Recorder) -> None:
        self._call(self._start(load, recorder))

    async def _stop(self, timeout_s: float) -> bool:
        self.stopping = True
        pending = set(self.tasks)
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout_s)
        for task in still:
            task.cancel()
        return not still

    def stop(self, timeout_s: float) -> bool:
        return self._call(self._stop(timeout_s), timeout_s + 10)

    def close(self) -> None:
        try:
            self._call(self._stop(1.0), 15)
            self._call(self.client.close(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


class ThreadEngine(Engine):
    def __init__(self, config: BenchConfig, batches):
        super().__init__(config, batches)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.clients: list = []  # kept across points: a fresh connection per point would skew its start
        self.clients_lock = threading.Lock()
        self.kwargs = {"client_timeout": config.timeout_s} if config.protocol == "grpc" else {}

    def _client(self, index: int):
        with self.clients_lock:
            while len(self.clients) <= index:
                if self.config.protocol == "http":
                    client = self.module.InferenceServerClient(
                        self.config.url, concurrency=1,
                        connection_timeout=self.config.timeout_s, network_timeout=self.config.timeout_s,
                    )
                else:
                    client = self.module.InferenceServerClient(self.config.url)
                self.clients.append(client)
            return self.clients[index]

    def _send(self, client, recorder: Recorder, reference: float, lag: float = 0.0) -> None:
        inputs = self.payload()
        recorder.issued += 1  # approximate under threads; only used for the offered-rate figure
        try:
            client.infer(self.config.model, inputs, outputs=self.outputs, **self.kwargs)
        except Exception as err:  # noqa: BLE001
            recorder.failed(error_text(err), lag)
        else:
            recorder.done(time.perf_counter() - reference, lag)

    def start(self, load: Load, recorder: Recorder) -> None:
        self.stopping.clear()
        self.finished.clear()
        workers = self.config.max_outstanding if load.kind == "rate" else int(load.value)
        clients = [self._client(i) for i in range(workers)]  # connected before the clock starts
        if load.kind == "concurrency":
            target, args = self._closed_loop, (recorder,)
        elif load.kind == "rate":
            arrivals = recorder.arrivals = Arrivals(load.value, load.arrivals, time.perf_counter(), self.config.seed)
            target, args = self._open_loop, (recorder, arrivals)
        else:
            remaining = itertools.count(load.requests, -1)
            done = itertools.count(1)
            issued = time.perf_counter()
            target, args = self._offline, (recorder, remaining, done, load, issued)
        self.threads = [
            threading.Thread(target=target, args=(client, *args), name=f"bench-{i}", daemon=True)
            for i, client in enumerate(clients)
        ]
        for thread in self.threads:
            thread.start()

    def _closed_loop(self, client, recorder: Recorder) -> None:
        while not self.stopping.is_set():
            self._send(client, recorder, time.perf_counter())

    def _open_loop(self, client, recorder: Recorder, arrivals: Arrivals) -> None:
        while not self.stopping.is_set():
            scheduled = arrivals.take()
            delay = scheduled - time.perf_counter()
            if delay > 0 and self.stopping.wait(delay):
                break
            self._send(client, recorder, scheduled, time.perf_counter() - scheduled)

    def _offline(self, client, recorder, remaining, done, load: Load, issued: float) -> None:
        while not self.stopping.is_set() and next(remaining) > 0:
            self._send(client, recorder, issued)
            if next(done) >= load.requests:
                self.finished.set()

    def stop(self, timeout_s: float) -> bool:
        self.stopping.set()
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in self.threads if t.is_alive()]
        self.threads = []
        return not alive

    def close(self) -> None:
        self.stop(5.0)
        for client in self.clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass


def make_engine(config: BenchConfig, batches) -> Engine:
    return (AsyncEngine if config.engine == "async" else ThreadEngine)(config, batches)


# --------------------------------------------------------------------------------------------------
# Server statistics


class ServerStats:
    """Snapshots of Triton's per-model statistics over a separate (synchronous) connection."""

    def __init__(self, config: BenchConfig):
        self.protocol = config.protocol
        module = _protocol_module(config.protocol)
        self.client = module.InferenceServerClient(config.url)
        self.url = config.url
        self.model = config.model
        self.enabled = config.server_stats

    def check_model(self) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            live = self.client.is_server_live()
        except Exception as err:  # noqa: BLE001 - tritonclient, OSError, and grpc/geventhttpclient's own types
            raise BenchError(f"no Triton server answers at {self.protocol}://{self.client_url()}: {error_text(err)}") from None
        if not live:
            raise BenchError(f"the server at {self.client_url()} is not live")
        try:
            ready = self.client.is_model_ready(self.model)
        except InferenceServerException:
            ready = False
        if not ready:
            try:
                index = self.client.get_model_repository_index()
                if self.protocol == "grpc":
                    names = [m.name for m in index.models if m.state == "READY"]
                else:
                    names = [m["name"] for m in index if m.get("state") == "READY"]
            except Exception:  # noqa: BLE001
                names = []
            raise BenchError(f"model {self.model!r} is not ready on {self.client_url()} (ready: {', '.join(names) or 'none'})")

    def client_url(self) -> str:
        return self.url

    def _config(self, model: str) -> dict:
        try:
            if self.protocol == "grpc":
                return self.client.get_model_config(model, as_json=True).get("config", {})
            return self.client.get_model_config(model)
        except Exception:  # noqa: BLE001
            return {}

    def models(self) -> list[str]:
        """The tested model and, for an ensemble, its composing models (step order), each followed by
        the BERT model it runs by BLS (a pre-processing step's ``bert_model`` parameter)."""
        names = [self.model]
        for name in composing_models(self._config(self.model)):
            bls = (self._config(name).get("parameters") or {}).get("bert_model", {}).get("string_value")
            names += [n for n in (name, bls) if n and n not in names]
        return names

    def metadata(self) -> dict:
        try:
            if self.protocol == "grpc":
                meta = self.client.get_server_metadata(as_json=True)
            else:
                meta = self.client.get_server_metadata()
            return {"name": meta.get("name"), "version": meta.get("version")}
        except Exception:  # noqa: BLE001
            return {}

    def snapshot(self) -> dict[str, ModelCounters] | None:
        if not self.enabled:
            return None
        try:
            if self.protocol == "grpc":
                payload = self.client.get_inference_statistics(model_name="", as_json=True)
            else:
                payload = self.client.get_inference_statistics(model_name="")
        except Exception:  # noqa: BLE001 - statistics are optional (e.g. disabled on the server)
            return None
        return parse_statistics(payload)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass


# --------------------------------------------------------------------------------------------------
# Measuring one load point


@dataclass
class Cut:
    """A window boundary: where the recorder stood, CPU counters and the server's statistics."""

    time: float
    index: int
    issued: int
    process_cpu_s: float
    host_busy_s: float
    host_total_s: float
    server: dict[str, ModelCounters] | None


def _host_cpu() -> tuple[float, float]:
    times = psutil.cpu_times()
    total = sum(times)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


@dataclass
class PointResult:
    load: Load
    protocol: str
    model: str
    engine: str
    batch_size: int
    stable: bool | None  # None: offline (one pass, no stability rule)
    verdict: StabilityVerdict | None
    windows: list[WindowStats]  # every measured window
    used: int  # how many of the last windows make up the figures
    measured: WindowStats  # the used windows merged
    latency: LatencySummary
    issued_rate: float  # requests issued per second over the used windows
    scheduled_rate: float  # open loop: requests due per second over the used windows (the offered load)
    send_lag_p99_ms: float  # open loop: how late the generator sent (p99)
    client_cpu_pct: float  # this process, % of one core, over the used windows
    host_cpu_pct: float  # whole machine, % of all cores
    server: list[ModelBreakdown]
    errors: dict[str, int]
    drained: bool = True  # in-flight requests all finished before the next point

    @property
    def throughput(self) -> float:
        return self.measured.throughput

    @property
    def request_rate(self) -> float:
        return self.measured.request_rate

    @property
    def littles_law_concurrency(self) -> float:
        """X * W: equals the concurrency of a closed loop whose figures are consistent."""
        return self.request_rate * self.latency.avg / 1e3 if self.latency.count else math.nan

    @property
    def generator_behind(self) -> bool:
        """Open loop: sends were late (p99 > 10 ms) or fewer were sent than were due."""
        if self.load.kind != "rate":
            return False
        due = self.scheduled_rate * self.measured.duration_s
        sent = self.issued_rate * self.measured.duration_s
        return self.send_lag_p99_ms > 10.0 or sent < 0.95 * due - 2

    @property
    def client_saturated(self) -> bool:
        """The load generator used most of a core: its own queueing may inflate latency."""
        return self.client_cpu_pct >= 85.0

    @property
    def foreign_requests(self) -> int:
        """Requests the server counted for the model beyond this client's (other clients share the
        server; statistics are server-wide). Allows for requests in flight at the window cuts."""
        for row in self.server:
            if row.name == self.model:
                extra = row.requests - self.measured.requests - self.measured.errors
                in_flight = self.littles_law_concurrency if math.isfinite(self.littles_law_concurrency) else 1.0
                slack = 0.05 * self.measured.requests + 2 * max(1.0, in_flight)
                return extra if extra > slack else 0
        return 0

    @property
    def server_request_ms(self) -> float:
        for row in self.server:
            if row.name == self.model:
                return row.request_us / 1e3
        return math.nan

    def as_dict(self) -> dict:
        return {
            "mode": self.load.kind,
            "label": self.load.label,
            "concurrency": int(self.load.value) if self.load.kind in ("concurrency", "offline") else None,
            "rate": self.load.value if self.load.kind == "rate" else None,
            "arrivals": self.load.arrivals if self.load.kind == "rate" else None,
            "protocol": self.protocol,
            "model": self.model,
            "engine": self.engine,
            "batch_size": self.batch_size,
            "stable": self.stable,
            "throughput_spread": self.verdict.throughput_spread if self.verdict else None,
            "latency_spread": self.verdict.latency_spread if self.verdict else None,
            "windows_measured": len(self.windows),
            "windows_used": self.used,
            "duration_s": self.measured.duration_s,
            "requests": self.measured.requests,
            "errors": self.measured.errors,
            "throughput": self.throughput,
            "request_rate": self.request_rate,
            "issued_rate": self.issued_rate,
            "scheduled_rate": self.scheduled_rate,
            "generator_behind": self.generator_behind,
            "send_lag_p99_ms": self.send_lag_p99_ms,
            "latency_ms": self.latency.as_dict(),
            "littles_law_concurrency": self.littles_law_concurrency,
            "client_cpu_pct": self.client_cpu_pct,
            "client_saturated": self.client_saturated,
            "host_cpu_pct": self.host_cpu_pct,
            "server_request_ms": self.server_request_ms,
            "server": [row.as_dict() for row in self.server],
            "foreign_requests": self.foreign_requests,
            "window_figures": [_window_figures(w) for w in self.windows],
            "error_messages": self.errors,
            "drained": self.drained,
        }


def _window_figures(window: WindowStats) -> dict:
    latency = window.latency()
    return {"duration_s": window.duration_s, "throughput": window.throughput, "requests": window.requests,
            "errors": window.errors, "latency_avg_ms": latency.avg, "latency_p99_ms": latency.metric("p99")}


ProgressFn = Callable[[str, dict], None]


class Measurer:
    def __init__(self, config: BenchConfig, engine: Engine, server: ServerStats, progress: ProgressFn | None = None):
        self.config = config
        self.engine = engine
        self.server = server
        self.models = server.models() if config.server_stats else []
        self.process = psutil.Process()
        self.progress = progress or (lambda event, info: None)

    def _cut(self, recorder: Recorder) -> Cut:
        now = time.perf_counter()
        index = len(recorder.latencies)
        issued = recorder.issued
        cpu = self.process.cpu_times()
        busy, total = _host_cpu()
        return Cut(now, index, issued, cpu.user + cpu.system, busy, total, self.server.snapshot())

    def _window(self, recorder: Recorder, first: Cut, last: Cut) -> WindowStats:
        latencies = recorder.latencies[first.index:last.index]
        ok = [v for v in latencies if not math.isnan(v)]
        errors = len(latencies) - len(ok)
        return WindowStats(last.time - first.time, len(ok), errors, len(ok) * self.config.batch_size, ok)

    def _sleep(self, seconds: float, label: str, recorder: Recorder, phase: str) -> None:
        deadline = time.perf_counter() + seconds
        while (left := deadline - time.perf_counter()) > 0:
            time.sleep(min(0.25, left))
            self.progress("tick", {"label": label, "phase": phase, "completed": len(recorder.latencies)})

    def measure(self, load: Load) -> PointResult:
        recorder = Recorder(self.config.batch_size)
        if load.kind == "offline":
            return self._measure_offline(load, recorder)
        config = self.config
        self.progress("start", {"label": load.label})
        self.engine.start(load, recorder)
        drained = True
        stopped = False
        try:
            self._sleep(config.warmup_s, load.label, recorder, "warm-up")
            cuts = [self._cut(recorder)]
            windows: list[WindowStats] = []
            verdict = None
            for trial in range(config.max_trials):
                self._sleep(config.window_s, load.label, recorder, f"window {trial + 1}")
                cuts.append(self._cut(recorder))
                windows.append(self._window(recorder, cuts[-2], cuts[-1]))
                verdict = is_stable(
                    [w.throughput for w in windows],
                    [w.latency().metric(config.stability_latency) for w in windows],
                    config.stability_threshold,
                )
                self.progress("window", {"label": load.label, "trial": trial + 1, "window": windows[-1], "verdict": verdict})
                if verdict.stable:
                    break
                if windows[-1].requests == 0 and windows[-1].errors > 0 and trial >= 1:
                    break  # everything fails: more windows would not help
        except KeyboardInterrupt:
            self.engine.stop(5.0)  # Ctrl-C: do not wait long for requests in flight
            stopped = True
            raise
        finally:
            if not stopped:
                drained = self.engine.stop(config.timeout_s)
        used = min(STABILITY_WINDOWS, len(windows))
        return self._result(load, recorder, windows, cuts[-used - 1], cuts[-1], used, verdict, drained)

    def _measure_offline(self, load: Load, recorder: Recorder) -> PointResult:
        config = self.config
        self.progress("start", {"label": load.label})
        if config.warmup_s > 0:  # a short closed-loop warm-up at the same in-flight count
            warm = Recorder(config.batch_size)
            self.engine.start(Load("concurrency", load.value), warm)
            try:
                self._sleep(config.warmup_s, load.label, warm, "warm-up")
            except KeyboardInterrupt:
                self.engine.stop(5.0)
                raise
            self.engine.stop(config.timeout_s)
        first = self._cut(recorder)
        self.engine.start(load, recorder)
        try:
            while not self.engine.finished.wait(0.25):
                self.progress("tick", {"label": load.label, "phase": "offline", "completed": len(recorder.latencies),
                                       "total": load.requests})
        except KeyboardInterrupt:
            self.engine.stop(5.0)
            raise
        last = self._cut(recorder)
        drained = self.engine.stop(config.timeout_s)
        # Throughput runs from the issue of the query to its last completion.
        finished_at = first.time + max((v for v in recorder.latencies if not math.isnan(v)), default=0.0)
        last.time = max(finished_at, first.time + 1e-9) if recorder.latencies else last.time
        window = self._window(recorder, first, last)
        self.progress("window", {"label": load.label, "trial": 1, "window": window, "verdict": None})
        return self._result(load, recorder, [window], first, last, 1, None, drained)

    def _result(self, load, recorder, windows, first: Cut, last: Cut, used, verdict, drained) -> PointResult:
        measured = merge_windows(windows[-used:]) if windows else WindowStats(0.0, 0, 0, 0, [])
        wall = max(last.time - first.time, 1e-9)
        lags = recorder.lags[first.index:last.index]
        host_total = last.host_total_s - first.host_total_s
        server_rows = []
        if first.server is not None and last.server is not None:
            server_rows = breakdown(first.server, last.server, self.models or None)
        return PointResult(
            load=load,
            protocol=self.config.protocol,
            model=self.config.model,
            engine=self.config.engine,
            batch_size=self.config.batch_size,
            stable=verdict.stable if verdict is not None else None,
            verdict=verdict,
            windows=windows,
            used=used,
            measured=measured,
            latency=LatencySummary.of(measured.latencies_s),
            issued_rate=(last.issued - first.issued) / wall,
            scheduled_rate=(recorder.arrivals.scheduled_between(first.time, last.time) / wall
                            if recorder.arrivals is not None else math.nan),
            send_lag_p99_ms=float(np.percentile(lags, 99) * 1e3) if lags and load.kind == "rate" else 0.0,
            client_cpu_pct=100.0 * (last.process_cpu_s - first.process_cpu_s) / wall,
            host_cpu_pct=100.0 * (last.host_busy_s - first.host_busy_s) / host_total if host_total > 0 else math.nan,
            server=server_rows,
            errors=dict(recorder.errors),
            drained=drained,
        )


# --------------------------------------------------------------------------------------------------
# A run: several load points


@dataclass
class BenchResult:
    config: BenchConfig
    scenario: str | None
    data: dict
    points: list[PointResult] = field(default_factory=list)
    latency_bound_ms: float | None = None
    target_qps: float | None = None
    interrupted: bool = False
    environment: dict = field(default_factory=dict)

    def scenario_summary(self) -> dict | None:
        """The MLPerf-style figure of merit of the scenario run."""
        if not self.scenario or not self.points:
            return None
        point = self.points[-1]
        if self.scenario == "singlestream":
            return {"scenario": "SingleStream", "metric": "p90 latency (ms)", "value": point.latency.metric("p90"),
                    "samples_per_s": point.throughput}
        if self.scenario == "server":
            p99 = point.latency.metric("p99")
            achieved = point.request_rate
            valid = (
                point.latency.count > 0
                and p99 <= (self.latency_bound_ms or math.inf)
                and point.measured.errors == 0
                and achieved >= 0.9 * (self.target_qps or 0)
            )
            return {"scenario": "Server", "metric": "p99 latency (ms)", "value": p99,
                    "target_qps": self.target_qps, "achieved_qps": achieved,
                    "latency_bound_ms": self.latency_bound_ms, "valid": valid,
                    "samples_per_s": point.throughput}
        return {"scenario": "Offline", "metric": "samples/s", "value": point.throughput,
                "samples_per_s": point.throughput}

    def as_dict(self) -> dict:
        config = {k: v for k, v in self.config.__dict__.items()}
        return {
            "config": config,
            "scenario": self.scenario_summary(),
            "data": self.data,
            "stability_rule": (
                f"last {STABILITY_WINDOWS} windows: max/min - 1 <= {self.config.stability_threshold:.0%} "
                f"for throughput and {self.config.stability_latency} latency"
            ),
            "interrupted": self.interrupted,
            "environment": self.environment,
            "points": [p.as_dict() for p in self.points],
        }


def environment(server: ServerStats) -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        client_version = version("tritonclient")
    except PackageNotFoundError:
        client_version = None
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "client_host": platform.node(),
        "client_cpus": psutil.cpu_count(),
        "python": platform.python_version(),
        "tritonclient": client_version,
        "server": server.metadata(),
    }


def run_bench(
    config: BenchConfig,
    loads: Sequence[Load],
    batches: Sequence[tuple[list[str], list[str]]],
    data_summary: dict,
    progress: ProgressFn | None = None,
    scenario: str | None = None,
    latency_bound_ms: float | None = None,
    target_qps: float | None = None,
) -> BenchResult:
    server = ServerStats(config)
    try:
        server.check_model()
        result = BenchResult(config, scenario, data_summary, latency_bound_ms=latency_bound_ms, target_qps=target_qps,
                             environment=environment(server))
        engine = make_engine(config, batches)
        try:
            measurer = Measurer(config, engine, server, progress)
            for load in loads:
                try:
                    point = measurer.measure(load)
                except KeyboardInterrupt:
                    result.interrupted = True
                    break
                result.points.append(point)
                if progress:
                    progress("point", {"label": load.label, "point": point})
        finally:
            engine.close()
        return result
    finally:
        server.close()
