"""`bertqa bench` and `bertqa eval` (registered into the `bertqa` CLI by bertqa.cli)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_CONCURRENCY = "1,2,4,8,16,32"
MLPERF_BERT_SERVER_BOUND_MS = 130.0  # MLPerf Inference BERT (datacenter) Server latency bound


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _numbers(text: str, kind=float) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _ints(text: str) -> list[int]:
    return _numbers(text, int)


def _floats(text: str) -> list[float]:
    return _numbers(text, float)


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _add_target(parser: argparse.ArgumentParser) -> None:
    from bertqa.client.qa_client import PROTOCOLS

    parser.add_argument("--url", default=None, help="host:port (default localhost:8000 http, localhost:8001 grpc)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http")
    parser.add_argument("--model", default="bert_qa", help="the ensemble or a variant (default bert_qa)")


def register(subparsers) -> None:
    _register_bench(subparsers)
    _register_eval(subparsers)


def _register_bench(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="measure throughput and latency against a running server (perf_analyzer / MLPerf LoadGen style)",
        description=(
            "Sends question/context pairs to a Triton server and measures throughput (answers/s) and "
            "latency percentiles per load point: a concurrency sweep (default), a request rate, or an "
            "MLPerf-style scenario. Each point: warm-up, then windows of --window-s until the last 3 "
            "are stable (max/min within --stability-pct on throughput and on --stability-latency) or "
            "--max-trials windows were measured (then flagged as not stable)."
        ),
    )
    _add_target(bench)
    _add_load_options(bench.add_argument_group("load (one of)"))
    _add_measurement_options(bench.add_argument_group("measurement"))
    _add_data_options(bench.add_argument_group("data"))
    _add_output_options(bench.add_argument_group("output"))
    bench.set_defaults(func=cmd_bench)


def _add_load_options(load) -> None:
    from bertqa.client.bench import ARRIVALS, SCENARIOS

    load.add_argument("--concurrency", type=_ints, default=None,
                      help=f"closed-loop sweep of requests in flight, e.g. 1,2,4 (default {DEFAULT_CONCURRENCY}); "
                           "with --scenario offline: the most requests in flight (default 64)")
    modes = load.add_mutually_exclusive_group()
    modes.add_argument("--rate", type=_floats, default=None, help="open-loop request rate(s) per second, e.g. 20,40")
    modes.add_argument("--scenario", choices=SCENARIOS, default=None,
                       help="MLPerf-style: singlestream (1 in flight, p90), server (Poisson at --target-qps, "
                            "p99 vs --latency-bound-ms), offline (all at once, samples/s)")
    load.add_argument("--arrivals", choices=ARRIVALS, default="constant", help="inter-arrival times of --rate")
    load.add_argument("--target-qps", type=_positive(float), default=None, help="--scenario server: offered QPS")
    load.add_argument("--latency-bound-ms", type=_positive(float), default=MLPERF_BERT_SERVER_BOUND_MS,
                      help="--scenario server: the p99 bound (default 130, MLPerf BERT)")
    load.add_argument("--offline-samples", type=_positive(int), default=512,
                      help="--scenario offline: pairs in the single query (default 512)")
    load.add_argument("--batch-size", type=_positive(int), default=None,
                      help="pairs per request (default 1; 8 for --scenario offline)")
    load.add_argument("--max-outstanding", type=_positive(int), default=256,
                      help="open loop: most requests in flight (default 256)")


def _add_measurement_options(measure) -> None:
    from bertqa.client.bench import ENGINES
    from bertqa.client.stats import STABILITY_LATENCY_METRICS

    measure.add_argument("--window-s", type=_positive(float), default=3.0, help="measurement window (default 3 s)")
    measure.add_argument("--warmup-s", type=float, default=1.0, help="warm-up before the windows (default 1 s)")
    measure.add_argument("--max-trials", type=int, default=10, help="most windows per point (default 10, >= 3)")
    measure.add_argument("--stability-pct", type=_positive(float), default=10.0,
                         help="max/min spread allowed over the last 3 windows (default 10)")
    measure.add_argument("--stability-latency", choices=STABILITY_LATENCY_METRICS, default="avg",
                         help="latency judged by the stability rule (default avg, like perf_analyzer)")
    measure.add_argument("--engine", choices=ENGINES, default="async",
                         help="async: aio clients on one event loop (default); threads: a thread and client per request in flight")
    measure.add_argument("--timeout-s", type=_positive(float), default=120.0, help="per-request timeout")
    measure.add_argument("--no-server-stats", action="store_true", help="skip Triton's statistics API")


def _add_data_options(data) -> None:
    from bertqa.client.data import DEFAULT_SAMPLES

    data.add_argument("--data", type=Path, default=None,
                      help="SQuAD JSON or JSON Lines of {question, context} (default: SQuAD v1.1 dev pairs when "
                           "fetched by `bertqa data squad`, else the built-in generated set)")
    data.add_argument("--samples", type=_positive(int), default=DEFAULT_SAMPLES,
                      help=f"pairs to use (default {DEFAULT_SAMPLES}; a --data file is cut to this many)")
    data.add_argument("--seed", type=int, default=0, help="seed of the pair sample / built-in set and of Poisson arrivals")


def _add_output_options(output) -> None:
    output.add_argument("--json", type=Path, default=None, help="write all results as JSON")
    output.add_argument("--csv", type=Path, default=None, help="write one CSV row per load point")
    output.add_argument("--plot", type=Path, default=None, help="write a PNG: latency percentiles vs throughput")
    output.add_argument("--quiet", action="store_true", help="no live progress")
    output.add_argument("--perf-analyzer-data", type=Path, default=None, metavar="FILE",
                        help="only write the requests as perf_analyzer's --input-data JSON to FILE and exit "
                             "(same pairs and batches; no server needed)")


def _register_eval(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "eval",
        help="SQuAD v1.1 exact match / F1 through the server (official metric and output)",
        description=(
            "Answers every question of a SQuAD v1.1 file through the server, writes the predictions "
            "in the official format and prints {\"exact_match\": ..., \"f1\": ...} as evaluate-v1.1.py does."
        ),
    )
    evaluate.add_argument("--data", type=Path, default=None,
                          help="SQuAD v1.1 JSON or JSON Lines with answers (default: SQuAD v1.1 dev, fetched by "
                               "`bertqa data squad`)")
    _add_target(evaluate)
    evaluate.add_argument("--batch-size", type=_positive(int), default=8, help="pairs per request (default 8)")
    evaluate.add_argument("--concurrency", type=_positive(int), default=2, help="requests in flight (default 2)")
    evaluate.add_argument("--limit", type=_positive(int), default=None, help="only the first N questions")
    evaluate.add_argument("--predictions", type=Path, default=None, help="write predictions ({id: answer}) here")
    evaluate.add_argument("--predictions-in", type=Path, default=None,
                          help="score this predictions file instead of querying a server")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=cmd_eval)


def _usage_error(message: str):
    print(f"bertqa bench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build_loads(args) -> tuple[list, str | None, int]:
    """The load points, the scenario and the batch size the arguments ask for."""
    from bertqa.client.bench import Load

    batch = args.batch_size
    if args.concurrency and (args.rate or args.scenario in ("singlestream", "server")):
        _usage_error("--concurrency goes with neither --rate nor --scenario singlestream/server")
    if args.scenario == "singlestream":
        return [Load("concurrency", 1)], "singlestream", batch or 1
    if args.scenario == "server":
        if args.target_qps is None:
            _usage_error("--scenario server needs --target-qps")
        return [Load("rate", args.target_qps, "poisson")], "server", batch or 1
    if args.scenario == "offline":
        batch = batch or 8
        inflight = max(args.concurrency or [64])
        requests = -(-args.offline_samples // batch)
        return [Load("offline", inflight, requests=requests)], "offline", batch
    if args.rate:
        return [Load("rate", r, args.arrivals) for r in args.rate], None, batch or 1
    return [Load("concurrency", c) for c in (args.concurrency or _ints(DEFAULT_CONCURRENCY))], None, batch or 1


def _bench_config(args: argparse.Namespace, batch_size: int):
    from bertqa.client.bench import BenchConfig

    return BenchConfig(
        url=args.url, protocol=args.protocol, model=args.model, batch_size=batch_size,
        window_s=args.window_s, warmup_s=args.warmup_s, max_trials=args.max_trials,
        stability_threshold=args.stability_pct / 100.0, stability_latency=args.stability_latency,
        engine=args.engine, timeout_s=args.timeout_s, max_outstanding=args.max_outstanding,
        server_stats=not args.no_server_stats, seed=args.seed,
    )


def _bench_exit_code(result) -> int:
    if result.interrupted:
        return 130
    if result.points and all(p.measured.requests == 0 for p in result.points):
        return 1  # nothing succeeded
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bertqa.client import report
    from bertqa.client.bench import BenchError, run_bench
    from bertqa.client.data import load_examples, request_batches, summarize
    from bertqa.squad import DataFileError

    console = _console()
    loads, scenario, batch_size = build_loads(args)
    try:
        config = _bench_config(args, batch_size)
        pairs = load_examples(args.data, args.samples, args.seed)
    except (ValueError, DataFileError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    summary = summarize(pairs.examples, pairs.source)
    console.print(f"data: {summary.describe()}", highlight=False)
    if args.perf_analyzer_data is not None:
        from bertqa.client.data import perf_analyzer_input_data
        from bertqa.files import atomic_write_text

        data = perf_analyzer_input_data(request_batches(pairs.examples, batch_size))
        atomic_write_text(args.perf_analyzer_data, json.dumps(data, ensure_ascii=False))
        console.print(f"wrote {args.perf_analyzer_data} ({len(data['data'])} requests of {batch_size} pair(s)); "
                      f"run: perf_analyzer -m {config.model} -i {config.protocol} -u {config.url} "
                      f"--input-data {args.perf_analyzer_data} -b {batch_size}", highlight=False)
        return 0
    console.print(f"target: {config.model} over {config.protocol} at {config.url}; {len(loads)} load point(s)",
                  highlight=False)
    try:
        with report.LiveProgress(console, quiet=args.quiet) as progress:
            result = run_bench(
                config, loads, request_batches(pairs.examples, batch_size), summary.as_dict(), progress,
                scenario=scenario, latency_bound_ms=args.latency_bound_ms if scenario == "server" else None,
                target_qps=args.target_qps if scenario == "server" else None,
            )
    except BenchError as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    report.print_report(result)
    for writer, path in ((report.write_json, args.json), (report.write_csv, args.csv), (report.plot, args.plot)):
        if path is not None:
            console.print(f"wrote {writer(result, path)}", highlight=False)
    return _bench_exit_code(result)


def cmd_eval(args: argparse.Namespace) -> int:
    from bertqa.client.eval import EvalError, evaluate, official_json, read_predictions, score, write_predictions
    from bertqa.squad import DataFileError, read_examples, squad_file

    console = _console()
    try:
        examples = read_examples(args.data or squad_file("dev"), require_answers=True)
    except (DataFileError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    if args.limit:
        examples = examples[: args.limit]
    try:
        if args.predictions_in is not None:
            predictions = read_predictions(args.predictions_in)
            em, f1 = score(predictions, examples, warn=lambda m: print(m, file=sys.stderr))
        else:
            predictions, em, f1, seconds = evaluate(
                examples, url=args.url, protocol=args.protocol, model=args.model,
                batch_size=args.batch_size, concurrency=args.concurrency, show_progress=not args.quiet,
            )
            console.print(f"{len(examples)} questions answered by {args.model} in {seconds:.1f} s "
                          f"({len(examples) / seconds:.1f} questions/s)", highlight=False)
    except EvalError as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    if args.predictions is not None:
        console.print(f"wrote {write_predictions(predictions, args.predictions)}", highlight=False)
    print(official_json(em, f1))
    return 0
