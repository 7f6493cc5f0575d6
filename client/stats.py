"""Latency percentiles, the stability rule and server-side statistics deltas for `bertqa bench`.

Percentiles use linear interpolation between the closest ranks, i.e. numpy's default
(``np.percentile(x, p, method="linear")``), so figures can be checked with numpy.

Stability follows perf_analyzer: a load point is stable when, over the last ``STABILITY_WINDOWS``
(3) measurement windows, ``max / min - 1 <= threshold`` (10% by default) holds both for
throughput and for the latency metric — the *average* latency by default, as perf_analyzer uses
unless ``--percentile`` is given (here ``--stability-latency p99`` and so on).

Server statistics come from Triton's statistics extension
(``get_inference_statistics(model_name="")``: cumulative per-model counters since the model was
loaded). A snapshot is taken at each window boundary; the difference of two snapshots gives, per
model, what the server did between them: successful requests, executions (batches), inferences
(batch items), and the cumulative queue / compute input / compute infer / compute output time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 97.0, 99.0, 99.9)
STABILITY_WINDOWS = 3
STABILITY_LATENCY_METRICS = ("avg", "p50", "p90", "p95", "p97", "p99", "p99.9")
SERVER_PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


# --------------------------------------------------------------------------------------------------
# Percentiles and latency summaries


def percentile(values: Sequence[float], p: float, *, presorted: bool = False) -> float:
    """The p-th percentile (0..100) by linear interpolation, equal to ``np.percentile(values, p)``."""
    if not 0.0 <= p <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {p}")
    if len(values) == 0:
        return math.nan
    ordered = values if presorted else sorted(values)
    rank = (len(ordered) - 1) * (p / 100.0)  # numpy's virtual index for method='linear'
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    # numpy's _lerp form, so the result equals numpy's to the last bit in ordinary cases
    a, b = float(ordered[low]), float(ordered[high])
    diff = b - a
    return b - diff * (1.0 - fraction) if fraction >= 0.5 else a + diff * fraction


def percentile_key(p: float) -> str:
    """50 -> 'p50', 99.9 -> 'p99.9'."""
    return f"p{p:g}"


@dataclass(frozen=True)
class LatencySummary:
    """Latencies in milliseconds."""

    count: int
    avg: float
    min: float
    max: float
    std: float
    percentiles: dict[str, float]

    @classmethod
    def of(cls, latencies_s: Iterable[float], percentiles: Sequence[float] = PERCENTILES) -> "LatencySummary":
        ordered = sorted(float(v) * 1e3 for v in latencies_s)
        n = len(ordered)
        if n == 0:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, {percentile_key(p): nan for p in percentiles})
        avg = math.fsum(ordered) / n
        std = math.sqrt(math.fsum((v - avg) ** 2 for v in ordered) / n)
        return cls(
            n, avg, ordered[0], ordered[-1], std,
            {percentile_key(p): percentile(ordered, p, presorted=True) for p in percentiles},
        )

    def metric(self, name: str) -> float:
        """'avg' or a percentile key such as 'p99'."""
        return self.avg if name == "avg" else self.percentiles[name]

    def as_dict(self) -> dict[str, float]:
        return {"count": self.count, "avg": self.avg, "min": self.min, "max": self.max, "std": self.std,
                **self.percentiles}


# --------------------------------------------------------------------------------------------------
# Stability


def spread(values: Sequence[float]) -> float:
    """max/min - 1 (0 for equal values, inf when the smallest is 0 or a value is missing)."""
    if not values or any(not math.isfinite(v) for v in values):
        return math.inf
    low, high = min(values), max(values)
    if low <= 0:
        return 0.0 if high == low else math.inf
    return high / low - 1.0


@dataclass(frozen=True)
class StabilityVerdict:
    stable: bool
    throughput_spread: float  # max/min - 1 over the judged windows
    latency_spread: float
    windows: int  # how many windows were judged (STABILITY_WINDOWS unless fewer exist)

    def describe(self, threshold: float) -> str:
        return (
            f"{'stable' if self.stable else 'NOT stable'}: throughput spread {self.throughput_spread:.1%}, "
            f"latency spread {self.latency_spread:.1%} over the last {self.windows} windows "
            f"(rule: max/min - 1 <= {threshold:.0%} for both)"
        )


def is_stable(
    throughputs: Sequence[float],
    latencies: Sequence[float],
    threshold: float = 0.10,
    windows: int = STABILITY_WINDOWS,
) -> StabilityVerdict:
    """perf_analyzer's rule over the last ``windows`` measurements of throughput and latency."""
    if len(throughputs) != len(latencies):
        raise ValueError("one throughput and one latency per window")
    last_t, last_l = list(throughputs[-windows:]), list(latencies[-windows:])
    t_spread, l_spread = spread(last_t), spread(last_l)
    enough = len(last_t) >= windows
    return StabilityVerdict(
        enough and t_spread <= threshold and l_spread <= threshold, t_spread, l_spread, len(last_t)
    )


# --------------------------------------------------------------------------------------------------
# Server-side statistics (Triton statistics extension)


@dataclass(frozen=True)
class Duration:
    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one model version, as Triton reports them."""

    name: str
    version: str
    inference_count: int  # batch items (pairs or windows) inferred
    execution_count: int  # model executions (batches)
    success: Duration
    fail: Duration
    phases: dict[str, Duration]

    def minus(self, earlier: "ModelCounters | None") -> "ModelCounters":
        if earlier is None:
            return self
        return ModelCounters(
            self.name, self.version,
            self.inference_count - earlier.inference_count,
            self.execution_count - earlier.execution_count,
            _sub(self.success, earlier.success),
            _sub(self.fail, earlier.fail),
            {k: _sub(v, earlier.phases.get(k, Duration())) for k, v in self.phases.items()},
        )


def _sub(a: Duration, b: Duration) -> Duration:
    return Duration(a.count - b.count, a.ns - b.ns)


def _duration(entry: Mapping | None) -> Duration:
    # gRPC's JSON form writes int64 as strings and omits zero fields; HTTP writes numbers.
    entry = entry or {}
    return Duration(int(entry.get("count", 0) or 0), int(entry.get("ns", 0) or 0))


def parse_statistics(payload: Mapping) -> dict[str, ModelCounters]:
    """Triton's statistics JSON (HTTP dict or gRPC ``as_json=True``) -> {model name: counters}.

    Several loaded versions of one model are summed under the model's name.
    """
    models: dict[str, ModelCounters] = {}
    for entry in payload.get("model_stats", []):
        stats = entry.get("inference_stats", {}) or {}
        counters = ModelCounters(
            entry["name"], str(entry.get("version", "")),
            int(entry.get("inference_count", 0) or 0),
            int(entry.get("execution_count", 0) or 0),
            _duration(stats.get("success")),
            _duration(stats.get("fail")),
            {phase: _duration(stats.get(phase)) for phase in SERVER_PHASES},
        )
        if counters.name in models:
            other = models[counters.name]
            counters = ModelCounters(
                counters.name, f"{other.version},{counters.version}",
                other.inference_count + counters.inference_count,
                other.execution_count + counters.execution_count,
                Duration(other.success.count + counters.success.count, other.success.ns + counters.success.ns),
                Duration(other.fail.count + counters.fail.count, other.fail.ns + counters.fail.ns),
                {k: Duration(other.phases[k].count + v.count, other.phases[k].ns + v.ns)
                 for k, v in counters.phases.items()},
            )
        models[counters.name] = counters
    return models


@dataclass(frozen=True)
class ModelBreakdown:
    """What one model did on the server between two snapshots; times are per request, in microseconds."""

    name: str
    requests: int  # successful requests
    failures: int
    executions: int
    inferences: int
    avg_batch: float  # inferences per execution: the effect of (dynamic) batching
    request_us: float  # end-to-end time of a request inside this model
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float

    def as_dict(self) -> dict[str, float | int | str]:
        return dict(self.__dict__)


def _per_request_us(duration: Duration) -> float:
    return duration.ns / duration.count / 1e3 if duration.count > 0 else 0.0


def breakdown(
    before: Mapping[str, ModelCounters],
    after: Mapping[str, ModelCounters],
    models: Sequence[str] | None = None,
) -> list[ModelBreakdown]:
    """Per-model deltas between two snapshots; ``models`` selects and orders them (default: the
    models that served requests in between, by name)."""
    names = list(models) if models else sorted(after)
    rows = []
    for name in names:
        if name not in after:
            continue
        delta = after[name].minus(before.get(name))
        if models is None and delta.success.count == 0 and delta.fail.count == 0:
            continue
        rows.append(
            ModelBreakdown(
                name,
                delta.success.count,
                delta.fail.count,
                delta.execution_count,
                delta.inference_count,
                delta.inference_count / delta.execution_count if delta.execution_count else 0.0,
                _per_request_us(delta.success),
                *(_per_request_us(delta.phases[p]) for p in SERVER_PHASES),
            )
        )
    return rows


def composing_models(config: Mapping) -> list[str]:
    """The models an ensemble's steps call (in step order), from its config JSON; [] otherwise."""
    steps = (config.get("ensemble_scheduling") or {}).get("step") or []
    names: list[str] = []
    for step in steps:
        name = step.get("model_name")
        if name and name not in names:
            names.append(name)
    return names


@dataclass
class WindowStats:
    """One measurement window (a time interval of the load point) as the client saw it."""

    duration_s: float
    requests: int  # successful requests completed in the window
    errors: int
    pairs: int  # question/context pairs answered (requests x batch size)
    latencies_s: list[float] = field(repr=False, default_factory=list)

    @property
    def throughput(self) -> float:
        """Answers per second."""
        return self.pairs / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def request_rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def latency(self) -> LatencySummary:
        return LatencySummary.of(self.latencies_s)


def merge_windows(windows: Sequence[WindowStats]) -> WindowStats:
    """Several windows taken as one measurement (perf_analyzer merges the windows it judged)."""
    merged = WindowStats(0.0, 0, 0, 0, [])
    for w in windows:
        merged.duration_s += w.duration_s
        merged.requests += w.requests
        merged.errors += w.errors
        merged.pairs += w.pairs
        merged.latencies_s.extend(w.latencies_s)
    return merged
