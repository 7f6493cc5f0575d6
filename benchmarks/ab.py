"""A / B of two models served by one running server, in alternating rounds: which is faster on this machine?

    python -m benchmarks.ab --url 127.0.0.1:8000 bert_qa_openvino_int8 bert_qa_openvino_bf16 \
        [--protocol http] [--concurrency 1,16] [--rounds 5] [--questions 200] [--json FILE]

Each round measures A and B with `bertqa bench` at one concurrency on the same SQuAD v1.1 dev questions
(the official file when fetched with `bertqa data squad`, else the committed dev slice), the order
alternating (benchmarks.paired), and A / B is the median of the rounds' ratios: two sweeps minutes apart
differ by more than two close variants do. The README's OpenVINO INT8 / BF16 figures were measured this way,
with both converted into the served repository (`python -m bertqa.export.openvino --precision int8`, then
`--precision bf16`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from benchmarks.measure import ServedSettings, served_points
from benchmarks.paired import PairedRatio, paired_rounds
from benchmarks.workloads import Workload

# Short windows: each round is one measurement per side, and the rounds, not long windows, absorb drift.
ROUND_SETTINGS = ServedSettings(window_s=2.0, warmup_s=1.0, max_trials=3)


@dataclass(frozen=True)
class Endpoint:
    """A running server's address, as benchmarks.measure.served_points reads it."""

    url: str

    @property
    def http_url(self) -> str:
        return self.url

    @property
    def grpc_url(self) -> str:
        return self.url


def squad_pairs(questions: int) -> Workload:
    from benchmarks.run import squad_sample

    examples, source = squad_sample(questions)
    return Workload(source, [e.question for e in examples], [e.context for e in examples], None)


def compare(server, model_a: str, model_b: str, pairs: Workload, concurrencies: list[int], rounds: int,
            protocol: str = "http", settings: ServedSettings = ROUND_SETTINGS,
            on_round: Callable[[int, int, float, float], None] | None = None) -> dict[int, PairedRatio]:
    """Per concurrency, A's and B's questions/s in ``rounds`` alternating rounds (A / B per round)."""
    from bertqa.client.bench import Load

    def speed(model: str, concurrency: int) -> float:
        (m,) = served_points(server, pairs, model=model, protocol=protocol, loads=[Load("concurrency", concurrency)],
                             settings=settings, system=f"{model} {protocol}", shape="served")
        if m.extra.get("errors"):
            raise RuntimeError(f"{model}: {m.extra['errors']} failed requests at concurrency {concurrency}")
        return m.pairs_per_s

    results = {}
    for c in concurrencies:
        results[c] = paired_rounds(lambda: speed(model_a, c), lambda: speed(model_b, c), rounds,
                                   on_round=(lambda i, a, b: on_round(c, i, a, b)) if on_round else None)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.splitlines()[0])
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--url", default=None, help="the server (default: localhost:8000 for HTTP, :8001 for gRPC)")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated concurrencies")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--questions", type=int, default=200, help="SQuAD dev questions every measurement sends")
    parser.add_argument("--window", type=float, default=ROUND_SETTINGS.window_s, help="seconds per measurement window")
    parser.add_argument("--json", type=Path, default=None, help="also write the rounds here")
    args = parser.parse_args(argv)
    try:
        concurrencies = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if min(concurrencies) < 1 or args.rounds < 1 or args.questions < 1 or args.window <= 0:
        parser.error("concurrencies, --rounds and --questions must be >= 1, --window > 0")
    url = args.url or f"localhost:{8000 if args.protocol == 'http' else 8001}"
    pairs = squad_pairs(args.questions)
    print(f"{args.model_a} / {args.model_b} over {args.protocol} at {url}: {len(pairs)} questions ({pairs.name}), "
          f"{args.rounds} alternating rounds per concurrency", flush=True)
    results = compare(Endpoint(url), args.model_a, args.model_b, pairs, concurrencies, args.rounds, args.protocol,
                      replace(ROUND_SETTINGS, window_s=args.window),
                      on_round=lambda c, i, a, b: print(f"  concurrency {c}, round {i + 1}: {a:.1f} vs {b:.1f} "
                                                        f"questions/s = {a / b:.3f}", flush=True))
    for c, paired in results.items():
        print(f"concurrency {c}: {args.model_a} / {args.model_b} = {paired.median:.3f} (median of "
              f"{', '.join(f'{r:.3f}' for r in paired.ratios)}; medians {statistics_line(paired)})")
    if args.json:
        args.json.write_text(json.dumps({"model_a": args.model_a, "model_b": args.model_b, "protocol": args.protocol,
                                         "questions": len(pairs), "data": pairs.name,
                                         "concurrencies": {str(c): p.as_dict() for c, p in results.items()}}, indent=2))
    return 0


def statistics_line(paired: PairedRatio) -> str:
    d = paired.as_dict()
    return f"{d['median_numerator']:.1f} vs {d['median_denominator']:.1f} questions/s"


if __name__ == "__main__":
    sys.exit(main())
