"""`make bench` / `python -m benchmarks.run`: every comparison of docs/BENCHMARKS.md in one run.

Per model shape (same model, inputs and sequence length for every system):
in-process reference (tokenize + ONNX Runtime + decoding) FP32 and INT8, the HF transformers
pipeline on PyTorch, Triton `bert_qa` over HTTP and gRPC, `bert_qa_int8` (exported with the
project's exporter), and for the demo model dynamic batching off/on, Triton's default instance
count (untuned), an MLPerf-style Server scenario at 70 % of the maximum throughput and the
sequence-length buckets on a SQuAD-like length mix. A dense GEMM peak measured in the same run
gives the model FLOP utilisation.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from benchmarks import machine, models
from benchmarks.flops import BertShape, flops_per_sequence
from benchmarks.measure import (
    Measurement,
    ServedSettings,
    hf_throughput,
    load_hf_pipeline,
    reference_throughput,
    served_answers,
    served_points,
)
from benchmarks.peak import measure_gemm_peak
from benchmarks.workloads import fixed_length_workload, mix_workload
from bertqa.paths import PROJECT_ROOT as ROOT

DEFAULT_OUTPUT = ROOT / "docs" / "BENCHMARKS.md"


@dataclass(frozen=True)
class ShapePlan:
    """What runs for one shape and how long each measurement lasts."""

    key: str
    fixed_pairs: int = 64
    inproc_batches: tuple[int, ...] = (1, 2, 8)  # the ceiling is the best of these batch sizes
    inproc_seconds: float = 8.0
    hf_seconds: float = 8.0
    http: tuple[int, ...] = ()
    grpc: tuple[int, ...] = (16,)
    int8: tuple[int, ...] = (16,)
    served: ServedSettings = field(default_factory=ServedSettings)
    full: bool = False  # dynamic batching on/off, untuned, Server scenario, length mix, served F1
    int8_eval: bool = False  # SQuAD F1 of INT8 vs FP32 (trained weights only)


@dataclass(frozen=True)
class Profile:
    name: str
    shapes: tuple[ShapePlan, ...]
    gemm_seconds: float = 1.0
    mix_pairs: int = 256
    server_window_s: float = 6.0
    dynamic_concurrency: int = 16


PROFILES = {
    "full": Profile("full", (
        ShapePlan("demo", http=(1, 4, 16), grpc=(1, 4, 16), int8=(1, 16), full=True, int8_eval=True,
                  served=ServedSettings(window_s=3.0, warmup_s=2.0, max_trials=5)),
        ShapePlan("4l-288d", http=(16,), grpc=(16,), int8=(16,),
                  served=ServedSettings(window_s=3.0, warmup_s=2.0, max_trials=5)),
        ShapePlan("bert-base", fixed_pairs=16, inproc_batches=(1, 2), inproc_seconds=10.0, hf_seconds=10.0,
                  http=(2,), grpc=(2,), int8=(2,), served=ServedSettings(window_s=10.0, warmup_s=4.0, max_trials=3)),
    )),
    # The orchestrator end to end in about a minute: tiny windows, one point per system.
    "smoke": Profile("smoke", (
        ShapePlan("demo", fixed_pairs=8, inproc_batches=(1, 4), inproc_seconds=0.5, hf_seconds=0.5, http=(2,), grpc=(2,), int8=(2,),
                  full=True, int8_eval=False, served=ServedSettings(window_s=0.7, warmup_s=0.3, max_trials=3)),
    ), gemm_seconds=0.05, mix_pairs=16, server_window_s=0.7, dynamic_concurrency=4),
}


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Run:
    def __init__(self, profile: Profile, workdir: Path, console: Console, shapes_spec: dict | None = None):
        self.profile = profile
        self.workdir = workdir
        self.console = console
        self.shapes_spec = shapes_spec or models.SHAPES
        self.results: dict = {"profile": profile.name, "shapes": {}, "measurements": [], "checks": {}}
        self.progress: Progress | None = None
        self.task = None

    # ---------------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self.console.log(message, highlight=False)

    def step(self, description: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=description)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def add(self, measurement: Measurement) -> Measurement:
        self.results["measurements"].append(measurement.as_dict())
        latency = measurement.latency_ms
        extra = f", p50 {latency['p50']:.0f} ms, p99 {latency['p99']:.0f} ms" if latency else ""
        self.log(f"[{measurement.shape}] {measurement.system} ({measurement.workload}, {measurement.detail}): "
                 f"{measurement.pairs_per_s:.2f} pairs/s{extra}")
        self.advance()
        return measurement

    def bench_progress(self, label: str):
        def report(event: str, info: dict) -> None:
            if event == "window":
                window = info["window"]
                self.step(f"{label}: {info['label']} window {info['trial']} {window.throughput:.1f}/s")
        return report

    # ---------------------------------------------------------------------------------------------
    def total_steps(self) -> int:
        steps = 1
        for plan in self.profile.shapes:
            steps += 4 + 2 * len(plan.inproc_batches) + len(plan.http) + len(plan.grpc) + len(plan.int8)
            if plan.full:
                steps += 9
        return steps

    def execute(self) -> dict:
        started = time.perf_counter()
        self.results["machine"] = machine.describe()
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=self.console, transient=False) as progress:
            self.progress = progress
            self.task = progress.add_task("GEMM peak", total=self.total_steps())
            self.step("measuring the dense FP32 GEMM peak")
            peak = measure_gemm_peak(seconds=self.profile.gemm_seconds)
            self.results["gemm"] = {"results": peak.results, "best": peak.best, "peak_gflops": peak.best["gflops"]}
            self.log(f"GEMM peak: {peak.best['gflops']:.1f} GFLOP/s ({peak.best['engine']} {peak.best['m']}x{peak.best['k']}x{peak.best['n']})")
            self.advance()
            for plan in self.profile.shapes:
                self.run_shape(plan)
        self.results["elapsed_s"] = time.perf_counter() - started
        return self.results

    # ---------------------------------------------------------------------------------------------
    def prepare(self, plan: ShapePlan) -> tuple[Path, Path, dict]:
        spec = self.shapes_spec[plan.key]
        base = self.workdir / plan.key
        base.mkdir(parents=True, exist_ok=True)
        info: dict = {"title": spec.title}
        self.step(f"{plan.key}: checkpoint")
        if spec.layers is None:
            checkpoint = models.DEMO_DIR
        else:
            checkpoint = models.random_checkpoint(spec, base / "checkpoint")
        repository = models.committed_configs(base / "model_repository")
        self.step(f"{plan.key}: exporting FP32 ONNX (bertqa export --format onnx)")
        t0 = time.perf_counter()
        models.export(checkpoint, repository, "onnx", no_eval=True)
        info["export_fp32_s"] = time.perf_counter() - t0
        self.advance()
        self.step(f"{plan.key}: exporting INT8 ONNX (bertqa export --format onnx-int8)")
        t0 = time.perf_counter()
        result = models.export(checkpoint, repository, "onnx-int8", no_eval=not plan.int8_eval)
        info["export_int8_s"] = time.perf_counter() - t0
        int8 = result.reports.get("int8", {})
        info["int8_export_report"] = {k: int8.get(k) for k in (
            "method", "size_bytes", "fp32_size_bytes", "speedup", "eval_questions", "fp32_exact_match", "fp32_f1",
            "int8_exact_match", "int8_f1", "f1_retained")}
        self.advance()
        for name in ("bert_onnx", "bert_onnx_int8"):
            models.tune_bert_config(repository / name / "config.pbtxt", instances=1)
        info["bert_config"] = (repository / "bert_onnx" / "config.pbtxt").read_text()
        info["shape"] = BertShape.from_hf_config(checkpoint, plan.key).__dict__
        variants = models.add_variants(repository) if plan.full else {}
        info["variants"] = variants
        return checkpoint, repository, info

    def run_shape(self, plan: ShapePlan) -> None:
        from bertqa.reference import ReferencePipeline
        from bertqa.server import EmbeddedServer

        checkpoint, repository, info = self.prepare(plan)
        self.results["shapes"][plan.key] = info
        shape = BertShape(**info["shape"])
        tokenizer = repository / "qa_preprocess" / "1" / "tokenizer.json"
        fixed = fixed_length_workload(tokenizer, plan.fixed_pairs, 384)
        info["flops_per_sequence"] = flops_per_sequence(shape, 384)

        # In-process first, with no server running.
        for label, bert in (("in-process reference (FP32)", "bert_onnx"), ("in-process reference (INT8)", "bert_onnx_int8")):
            self.step(f"{plan.key}: {label}")
            pipeline = ReferencePipeline.from_repository(repository, bert)
            for batch in plan.inproc_batches:
                self.add(reference_throughput(pipeline, fixed, batch_size=batch, min_seconds=plan.inproc_seconds,
                                              system=label, shape=plan.key))
            del pipeline
        self.step(f"{plan.key}: ONNX Runtime profile (time per operator type)")
        from benchmarks.profile import op_time_shares

        windows = ReferencePipeline.from_repository(repository).windower.windows(
            fixed.questions[:max(plan.inproc_batches)], fixed.contexts[:max(plan.inproc_batches)])
        feeds = {n: getattr(windows, n) for n in ("input_ids", "attention_mask", "token_type_ids")}
        info["op_profile"] = {bert: op_time_shares(repository / bert / "1" / "model.onnx", feeds, runs=1)
                              for bert in ("bert_onnx", "bert_onnx_int8")}
        self.advance()
        self.step(f"{plan.key}: HF transformers pipeline")
        qa = load_hf_pipeline(checkpoint)
        self.add(hf_throughput(qa, fixed, min_seconds=plan.hf_seconds, shape=plan.key))
        del qa

        mix = None
        if plan.full:
            mix = mix_workload(self.profile.mix_pairs)
            self.check_bucket_answers_inprocess(repository, mix, plan.key)

        http, grpc, metrics = free_ports(3)
        log_file = self.workdir / f"tritonserver-{plan.key}.log"
        self.step(f"{plan.key}: starting tritonserver")
        server = EmbeddedServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                host="127.0.0.1", log_file=log_file)
        server.start()
        try:
            self.served(plan, server, fixed, mix)
        finally:
            server.stop()

    def served(self, plan: ShapePlan, server, fixed, mix) -> None:
        from bertqa.client.bench import Load

        settings = plan.served
        runs = [("http", "bert_qa", "Triton bert_qa (FP32) HTTP", plan.http),
                ("grpc", "bert_qa", "Triton bert_qa (FP32) gRPC", plan.grpc),
                ("grpc", "bert_qa_int8", "Triton bert_qa_int8 (INT8) gRPC", plan.int8)]
        for protocol, model, system, concurrencies in runs:
            if not concurrencies:
                continue
            self.step(f"{plan.key}: {system}")
            for m in served_points(server, fixed, model=model, protocol=protocol,
                                   loads=[Load("concurrency", c) for c in concurrencies], settings=settings,
                                   system=system, shape=plan.key, progress=self.bench_progress(f"{plan.key} {system}")):
                self.add(m)
        if not plan.full:
            return
        c = self.profile.dynamic_concurrency
        for label, model in (("Triton bert_qa, dynamic batching off", "bert_qa_nobatch"),
                             ("Triton bert_qa, Triton default instances (untuned)", "bert_qa_default")):
            self.step(f"{plan.key}: {label}")
            for m in served_points(server, fixed, model=model, protocol="grpc", loads=[Load("concurrency", c)],
                                   settings=settings, system=label + " gRPC", shape=plan.key,
                                   progress=self.bench_progress(label)):
                self.add(m)
        # Server scenario at 70 % of the best served FP32 throughput.
        best = max((m for m in self.results["measurements"]
                    if m["shape"] == plan.key and m["system"].startswith("Triton bert_qa (FP32)")),
                   key=lambda m: m["pairs_per_s"])
        rate = 0.7 * best["pairs_per_s"]
        self.results["checks"].setdefault(plan.key, {})["server_scenario_basis"] = {
            "max_pairs_per_s": best["pairs_per_s"], "system": best["system"], "concurrency": best["concurrency"],
            "rate": rate}
        self.step(f"{plan.key}: Server scenario (Poisson) at {rate:.1f}/s")
        scenario_settings = replace(settings, window_s=self.profile.server_window_s, max_trials=4)
        for m in served_points(server, fixed, model="bert_qa", protocol=best["system"].split()[-1].lower(),
                               loads=[Load("rate", rate, "poisson")], settings=scenario_settings,
                               system="Triton bert_qa (FP32), Server scenario " + best["system"].split()[-1],
                               shape=plan.key, progress=self.bench_progress("Server scenario")):
            self.add(m)
        # Sequence-length buckets on the SQuAD-like mix.
        mix_models = [("Triton bert_qa, buckets", "bert_qa"), ("Triton bert_qa, padded to 384", "bert_qa_pad")]
        variants = self.results["shapes"][plan.key]["variants"]
        alt = next((label for label, name in variants.items() if name == "bert_qa_fine"), None)
        if alt:
            mix_models.append((f"Triton bert_qa, alternative {alt}", "bert_qa_fine"))
        for label, model in mix_models:
            self.step(f"{plan.key}: length mix, {label}")
            for m in served_points(server, mix, model=model, protocol="grpc", loads=[Load("concurrency", c)],
                                   settings=settings, system=label + " gRPC", shape=plan.key,
                                   progress=self.bench_progress(label)):
                self.add(m)
        self.step(f"{plan.key}: served answers, buckets vs padded")
        bucketed = served_answers(server, mix, "bert_qa")
        padded = served_answers(server, mix, "bert_qa_pad")
        same = sum(a.text == b.text and a.start == b.start and a.end == b.end for a, b in zip(bucketed, padded))
        self.results["checks"][plan.key]["served_bucket_answers"] = {"identical": same, "pairs": len(mix)}
        if "bert_qa_fine" in self.results["shapes"][plan.key]["variants"].values():
            fine = served_answers(server, mix, "bert_qa_fine")
            same_fine = sum(a.text == b.text and a.start == b.start and a.end == b.end for a, b in zip(fine, padded))
            self.results["checks"][plan.key]["served_fine_bucket_answers"] = {"identical": same_fine, "pairs": len(mix)}
        self.log(f"served answers identical with and without buckets: {same}/{len(mix)}")
        self.advance()
        if plan.int8_eval:
            self.served_f1(plan, server)
        self.advance()

    def served_f1(self, plan: ShapePlan, server) -> None:
        from bertqa.client.eval import evaluate
        from bertqa.squad import read_examples

        data = ROOT / "tests" / "data" / "squad_sample.json"
        examples = read_examples(data, require_answers=True)
        scores = {}
        for model in ("bert_qa", "bert_qa_int8"):
            self.step(f"{plan.key}: bertqa eval {model}")
            _, em, f1, seconds = evaluate(examples, url=server.grpc_url, protocol="grpc", model=model,
                                          batch_size=8, concurrency=2, show_progress=False)
            scores[model] = {"exact_match": em, "f1": f1, "questions": len(examples)}
        self.results["checks"][plan.key]["served_f1"] = scores
        self.log(f"served SQuAD sample F1: FP32 {scores['bert_qa']['f1']:.2f}, INT8 {scores['bert_qa_int8']['f1']:.2f}")

    def check_bucket_answers_inprocess(self, repository: Path, mix, key: str) -> None:
        """The same answers with buckets and with every window padded to 384 (in-process, same code)."""
        from bertqa.reference import ReferencePipeline
        from bertqa.text import WindowingConfig

        self.step(f"{key}: in-process answers, buckets vs padded")
        bucketed = ReferencePipeline.from_repository(repository)
        w = bucketed.windower.config
        padded = ReferencePipeline.from_repository(repository)
        padded.windower.config = WindowingConfig(w.max_seq_len, w.doc_stride, w.max_query_len, (w.max_seq_len,), w.max_windows)
        from benchmarks.workloads import padding_flops

        shape = BertShape(**self.results["shapes"][key]["shape"])
        alt = models.COARSE_BUCKETS if tuple(w.seq_len_buckets) == models.FINE_BUCKETS else models.FINE_BUCKETS
        flops = padding_flops(repository / "qa_preprocess" / "1" / "tokenizer.json", mix, shape, {
            "padded to 384": (w.max_seq_len,), "buckets": tuple(w.seq_len_buckets), "alternative buckets": alt})
        self.results["checks"].setdefault(key, {})["padding_flops"] = {
            "flops": flops, "buckets": list(w.seq_len_buckets), "alternative_buckets": list(alt)}
        same = 0
        for first in range(0, len(mix), 8):
            q, c = mix.questions[first:first + 8], mix.contexts[first:first + 8]
            a, b = bucketed.answer(q, c), padded.answer(q, c)
            same += sum(x.text == y.text and x.start == y.start for x, y in zip(a, b))
        self.results["checks"].setdefault(key, {})["inprocess_bucket_answers"] = {
            "identical": same, "pairs": len(mix), "buckets": list(w.seq_len_buckets)}
        self.advance()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--shapes", default=None, help="comma-separated subset of the profile's shapes")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown report (PNG beside it)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep exports here (default: a temp dir)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.shapes:
        keep = set(args.shapes.split(","))
        profile = replace(profile, shapes=tuple(p for p in profile.shapes if p.key in keep))
    console = Console(stderr=True)
    from benchmarks import report

    with tempfile.TemporaryDirectory(prefix="bertqa-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run = Run(profile, workdir, console)
        results = run.execute()
    results["command"] = "make bench" if args.profile == "full" and not args.shapes else \
        "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    written = report.write_report(results, args.output)
    console.print(f"wrote {', '.join(str(p) for p in written)} in {results['elapsed_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
