"""Reporting for `bertqa bench`: live progress, the final tables, JSON/CSV files and a latency/throughput plot."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bertqa.client.bench import BenchResult, PointResult
from bertqa.client.stats import PERCENTILES, STABILITY_WINDOWS, percentile_key

LATENCY_KEYS = ["avg", *(percentile_key(p) for p in PERCENTILES)]


def _ms(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _stable_text(point: PointResult) -> Text:
    if point.stable is None:
        return Text("n/a", style="dim")
    return Text("yes", style="green") if point.stable else Text("NO", style="bold red")


# --------------------------------------------------------------------------------------------------
# Live progress


class LiveProgress:
    """The progress callback of a run: a live table on a terminal, one line per window otherwise."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.done: list[PointResult] = []
        self.status = ""
        self.live: Live | None = None

    def __enter__(self) -> "LiveProgress":
        if self.console.is_terminal and not self.quiet:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    def _render(self):
        table = Table(title="bertqa bench", title_justify="left", expand=False)
        for column in ("load", "stable", "answers/s", "avg ms", "p99 ms", "errors"):
            table.add_column(column, justify="right" if column != "load" else "left")
        for point in self.done:
            table.add_row(point.load.label, _stable_text(point), f"{point.throughput:.1f}",
                          _ms(point.latency.avg), _ms(point.latency.metric("p99")), str(point.measured.errors))
        return Group(table, Text(self.status, style="cyan"))

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if self.quiet:
            return
        label = info.get("label", "")
        if event == "start":
            self.status = f"{label}: starting"
        elif event == "tick":
            total = f"/{info['total']}" if "total" in info else ""
            self.status = f"{label}: {info['phase']} ({info['completed']}{total} requests completed)"
        elif event == "window":
            window, verdict = info["window"], info["verdict"]
            lat = window.latency()
            line = (f"{label}: window {info['trial']}: {window.throughput:.1f} answers/s, avg {_ms(lat.avg)} ms, "
                    f"p99 {_ms(lat.metric('p99'))} ms, errors {window.errors}")
            if verdict is not None and verdict.windows >= STABILITY_WINDOWS:
                line += (f" | last {verdict.windows}: spread thr {verdict.throughput_spread:.0%} "
                         f"lat {verdict.latency_spread:.0%} -> {'stable' if verdict.stable else 'not stable'}")
            self.status = line
            if self.live is None:
                self.console.print(line, highlight=False)
        elif event == "point":
            self.done.append(info["point"])
            self.status = ""
        if self.live is not None:
            self.live.update(self._render())


# --------------------------------------------------------------------------------------------------
# Final tables


def results_table(result: BenchResult) -> Table:
    config = result.config
    title = (f"{config.model} over {config.protocol} at {config.url}, batch {config.batch_size} pair(s)/request, "
             f"{config.engine} engine")
    table = Table(title=title, title_justify="left")
    table.add_column("load", justify="left")
    table.add_column("stable")
    table.add_column("answers/s", justify="right")
    table.add_column("req/s", justify="right")
    for key in LATENCY_KEYS:
        table.add_column(f"{key} ms", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("X·W", justify="right")  # Little's law: in-flight requests implied by the figures
    table.add_column("client CPU", justify="right")
    table.add_column("host CPU", justify="right")
    table.add_column("server ms", justify="right")
    for point in result.points:
        table.add_row(
            point.load.label,
            _stable_text(point),
            f"{point.throughput:.1f}",
            f"{point.request_rate:.1f}",
            *(_ms(point.latency.metric(key)) for key in LATENCY_KEYS),
            Text(str(point.measured.errors), style="red" if point.measured.errors else ""),
            f"{point.littles_law_concurrency:.2f}",
            Text(f"{point.client_cpu_pct:.0f}%", style="bold yellow" if point.client_saturated else ""),
            f"{point.host_cpu_pct:.0f}%",
            _ms(point.server_request_ms),
        )
    return table


def server_table(result: BenchResult) -> Table | None:
    if not any(p.server for p in result.points):
        return None
    table = Table(title="server-side per request (Triton statistics, deltas over the measured windows)",
                  title_justify="left")
    for column in ("load", "model", "requests", "avg batch", "request ms", "queue ms", "compute input ms",
                   "compute infer ms", "compute output ms"):
        table.add_column(column, justify="left" if column in ("load", "model") else "right")
    for point in result.points:
        for number, row in enumerate(point.server):
            table.add_row(
                point.load.label if number == 0 else "",
                row.name,
                str(row.requests),
                f"{row.avg_batch:.2f}",
                _ms(row.request_us / 1e3),
                _ms(row.queue_us / 1e3),
                _ms(row.compute_input_us / 1e3),
                _ms(row.compute_infer_us / 1e3),
                _ms(row.compute_output_us / 1e3),
                end_section=number == len(point.server) - 1,
            )
    return table


def warnings(result: BenchResult) -> list[str]:
    notes = []
    for point in result.points:
        if point.stable is False:
            v = point.verdict
            notes.append(
                f"{point.load.label}: did NOT stabilise within {len(point.windows)} windows "
                f"(throughput spread {v.throughput_spread:.0%}, latency spread {v.latency_spread:.0%}); "
                "its figures merge the last windows anyway"
            )
        per_window = point.measured.requests / max(point.used, 1)
        if point.load.kind != "offline" and 0 < per_window < 50:
            notes.append(f"{point.load.label}: only {per_window:.0f} requests per window - too few for a steady "
                         f"p99 or for the stability rule; use a longer --window-s (~{50 / max(point.request_rate, 0.1):.0f} s)")
        if point.client_saturated:
            notes.append(f"{point.load.label}: the client used {point.client_cpu_pct:.0f}% of a core - it may be "
                         "the bottleneck (compare 'server ms' with the client latency; try --engine threads)")
        if point.generator_behind:
            notes.append(f"{point.load.label}: the generator fell behind the schedule: {point.issued_rate:.1f} requests/s "
                         f"sent of {point.scheduled_rate:.1f} due, send lag p99 {point.send_lag_p99_ms:.1f} ms "
                         "(--max-outstanding reached or the client is short of CPU; latency counts from the schedule)")
        if point.measured.errors:
            first = next(iter(point.errors), "")
            notes.append(f"{point.load.label}: {point.measured.errors} failed requests, e.g. {first}")
        if point.foreign_requests:
            notes.append(f"{point.load.label}: the server counted {point.foreign_requests} more {point.model} requests "
                         "than this client sent: another client shares the server, so the server-side figures "
                         "include its traffic")
        if not point.drained:
            notes.append(f"{point.load.label}: requests still in flight after the point ended (cancelled)")
    if result.interrupted:
        notes.append("interrupted: the results above are partial")
    return notes


def scenario_line(result: BenchResult) -> str | None:
    summary = result.scenario_summary()
    if summary is None:
        return None
    if summary["scenario"] == "SingleStream":
        return (f"MLPerf-style SingleStream: p90 latency {_ms(summary['value'])} ms "
                f"({summary['samples_per_s']:.1f} samples/s)")
    if summary["scenario"] == "Server":
        verdict = "VALID" if summary["valid"] else "INVALID"
        return (f"MLPerf-style Server: target {summary['target_qps']:g} QPS (Poisson), achieved "
                f"{summary['achieved_qps']:.1f} QPS, p99 {_ms(summary['value'])} ms vs bound "
                f"{summary['latency_bound_ms']:g} ms: {verdict}")
    return f"MLPerf-style Offline: {summary['value']:.1f} samples/s"


def print_report(result: BenchResult, console: Console | None = None) -> None:
    console = console or Console(width=None if Console().is_terminal else 220)
    console.print(results_table(result))
    table = server_table(result)
    if table is not None:
        console.print(table)
    console.print(
        Text(f"stability: {result.as_dict()['stability_rule']}; figures merge those windows. "
             "X·W = requests/s x avg latency (Little's law: ~ requests in flight). "
             "client CPU: this process, % of one core.", style="dim")
    )
    line = scenario_line(result)
    if line:
        console.print(Text(line, style="bold"))
    for note in warnings(result):
        console.print(Text(f"warning: {note}", style="yellow"))


# --------------------------------------------------------------------------------------------------
# Files


def _clean(value):
    """JSON has no NaN/Infinity: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(result: BenchResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(result.as_dict()), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def csv_rows(result: BenchResult) -> list[dict]:
    rows = []
    for point in result.points:
        data = point.as_dict()
        row = {k: data[k] for k in (
            "label", "mode", "concurrency", "rate", "arrivals", "protocol", "model", "engine", "batch_size",
            "stable", "throughput_spread", "latency_spread", "windows_measured", "windows_used", "duration_s",
            "requests", "errors", "throughput", "request_rate", "issued_rate", "scheduled_rate", "send_lag_p99_ms",
        )}
        for key in ("avg", "min", "max", "std", *(percentile_key(p) for p in PERCENTILES)):
            row[f"latency_{key}_ms"] = data["latency_ms"][key]
        row["littles_law_concurrency"] = data["littles_law_concurrency"]
        row["client_cpu_pct"] = data["client_cpu_pct"]
        row["host_cpu_pct"] = data["host_cpu_pct"]
        row["server_request_ms"] = data["server_request_ms"]
        for model in point.server:
            for key in ("requests", "avg_batch", "request_us", "queue_us", "compute_input_us", "compute_infer_us",
                        "compute_output_us"):
                row[f"{model.name}.{key}"] = getattr(model, key)
        rows.append(_clean(row))
    return rows


def write_csv(result: BenchResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = csv_rows(result)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot(result: BenchResult, path: str | Path) -> Path:
    """Latency percentiles (y, ms, log scale) against throughput (x, answers/s) across the sweep.
    Hollow markers: points that did not stabilise."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    points = [p for p in result.points if p.latency.count]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-"), ("avg", "x--")):
        xs = [p.throughput for p in points]
        ys = [p.latency.metric(key) for p in points]
        (line,) = ax.plot(xs, ys, style, label=key, markersize=6)
        unstable = [(x, y) for p, x, y in zip(points, xs, ys) if p.stable is False]
        if unstable:
            ax.plot(*zip(*unstable), "o", markersize=11, markerfacecolor="none",
                    markeredgecolor=line.get_color(), label=f"{key} (not stable)" if key == "p50" else None)
    for p in points:
        ax.annotate(p.load.label.replace("concurrency ", "c=").replace("rate ", "r="),
                    (p.throughput, p.latency.metric("p99")), textcoords="offset points", xytext=(4, 6), fontsize=7)
    config = result.config
    ax.set_xlabel("throughput (answers/s)")
    ax.set_ylabel("latency (ms)")
    if points and min(p.latency.metric("p50") for p in points) > 0:
        ax.set_yscale("log")
    ax.set_title(f"{config.model} over {config.protocol}, batch {config.batch_size}: latency vs throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
