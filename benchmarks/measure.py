"""Measuring each system under test on a Workload: in-process (reference pipeline, HF pipeline) and
served (the `bertqa bench` library against an EmbeddedServer)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.workloads import Workload


@dataclass
class Measurement:
    system: str  # e.g. "Triton bert_qa (FP32) gRPC"
    shape: str
    workload: str
    pairs_per_s: float
    windows_per_s: float
    detail: str = ""
    latency_ms: dict = field(default_factory=dict)  # p50/p90/p99/avg where measured
    concurrency: int | None = None
    rate: float | None = None
    stable: bool | None = None
    server: list = field(default_factory=list)  # per-model server-side breakdown rows
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _timed_loop(step, min_seconds: float, min_iterations: int, warmup: int = 1):
    """Runs ``step()`` (returns (pairs, windows)) warm-up times, then until both minimums are met."""
    for _ in range(warmup):
        step()
    pairs = windows = iterations = 0
    begin = time.perf_counter()
    while iterations < min_iterations or time.perf_counter() - begin < min_seconds:
        p, w = step()
        pairs += p
        windows += w
        iterations += 1
    elapsed = time.perf_counter() - begin
    return pairs / elapsed, windows / elapsed, elapsed


def reference_answers(pipeline, questions, contexts):
    """One in-process batch as the server answers it (whole words): (answers, number of windows)."""
    from bertqa.text import answers_from_spans, decode_spans, pair_contexts

    windows = pipeline.windower.windows(questions, contexts)
    start, end = pipeline.logits(windows.input_ids, windows.attention_mask, windows.token_type_ids)
    spans = decode_spans(start, end, windows.offsets, windows.pair_index, len(questions), pipeline.decoding,
                         window_text=pair_contexts(contexts, windows.pair_index))
    return answers_from_spans(spans, contexts), windows.num_windows


def reference_throughput(pipeline, workload: Workload, *, batch_size: int, min_seconds: float,
                         system: str, shape: str) -> Measurement:
    """The in-process ceiling: tokenize + ONNX Runtime + span decoding in this process, batches of pairs."""
    batches = workload.batches(batch_size)
    cursor = iter(range(10**9))

    def step():
        questions, contexts = batches[next(cursor) % len(batches)]
        _, num_windows = reference_answers(pipeline, questions, contexts)
        return len(questions), num_windows

    pairs_s, windows_s, elapsed = _timed_loop(step, min_seconds, 2)
    return Measurement(system, shape, workload.name, pairs_s, windows_s,
                       detail=f"batches of {batch_size} pairs, {elapsed:.1f} s")


def forward_passes_alone(pipeline, workload: Workload):
    """A pass of the model's forward passes alone over the workload's windows, as questions/s: every pair's
    windows padded to its own bucket (as one question per request is), all windows of a length batched
    together in the served model's chunks. No tokenization, decoding or serving: what a server with
    perfect batching and no overhead of its own would answer at most."""
    import numpy as np

    by_length: dict[int, list] = {}
    for question, context in zip(workload.questions, workload.contexts):
        windows = pipeline.windower.windows([question], [context])
        by_length.setdefault(windows.input_ids.shape[1], []).append(windows)
    batches = [[np.concatenate([getattr(w, name) for w in group]) for name in ("input_ids", "attention_mask",
                                                                            "token_type_ids")]
               for group in by_length.values()]
    pipeline.logits(*batches[0])  # warm-up

    def one_pass() -> float:
        begin = time.perf_counter()
        for batch in batches:
            pipeline.logits(*batch)
        return len(workload) / (time.perf_counter() - begin)

    return one_pass


def load_hf_pipeline(checkpoint: Path):
    import torch
    from transformers import AutoTokenizer, BertForQuestionAnswering, pipeline

    model = BertForQuestionAnswering.from_pretrained(checkpoint, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return pipeline("question-answering", model=model, tokenizer=tokenizer, device=-1)


def hf_throughput(qa, workload: Workload, *, min_seconds: float, shape: str, batch_size: int = 1) -> Measurement:
    """transformers' pipeline("question-answering") on PyTorch, its defaults (max_seq_len 384,
    doc_stride 128, max_question_len 64), one call per ``batch_size`` pairs."""
    import torch

    n = len(workload)
    cursor = iter(range(10**9))

    def step():
        first = next(cursor) * batch_size
        rows = [(first + j) % n for j in range(batch_size)]
        with torch.inference_mode():
            qa(question=[workload.questions[r] for r in rows], context=[workload.contexts[r] for r in rows],
               batch_size=batch_size)
        return batch_size, batch_size if workload.seq_len else 0

    pairs_s, windows_s, elapsed = _timed_loop(step, min_seconds, 2)
    label = "HF pipeline (PyTorch FP32)" + (f", batch_size={batch_size}" if batch_size > 1 else "")
    return Measurement(label, shape, workload.name, pairs_s, windows_s if workload.seq_len else math.nan,
                       detail=f"torch {torch.__version__}, {torch.get_num_threads()} threads, {elapsed:.1f} s")


# --------------------------------------------------------------------------------------------------
# Served


@dataclass
class ServedSettings:
    window_s: float = 3.0
    warmup_s: float = 1.5
    max_trials: int = 5
    stability_pct: float = 10.0


def served_points(server, workload: Workload, *, model: str, protocol: str, loads, settings: ServedSettings,
                  system: str, shape: str, progress=None) -> list[Measurement]:
    from bertqa.client.bench import BenchConfig, run_bench

    url = server.http_url if protocol == "http" else server.grpc_url
    config = BenchConfig(url=url, protocol=protocol, model=model, batch_size=1, window_s=settings.window_s,
                         warmup_s=settings.warmup_s, max_trials=settings.max_trials,
                         stability_threshold=settings.stability_pct / 100.0)
    result = run_bench(config, loads, workload.batches(1), {"name": workload.name}, progress)
    out = []
    for point in result.points:
        latency = {k: point.latency.metric(k) for k in ("avg", "p50", "p90", "p99")}
        windows_s = point.throughput if workload.seq_len else math.nan
        out.append(Measurement(
            system, shape, workload.name, point.throughput, windows_s, detail=point.load.label,
            latency_ms=latency, concurrency=int(point.load.value) if point.load.kind == "concurrency" else None,
            rate=point.load.value if point.load.kind == "rate" else None, stable=point.stable,
            server=[row.as_dict() for row in point.server],
            extra={"errors": point.measured.errors, "client_cpu_pct": point.client_cpu_pct,
                   "host_cpu_pct": point.host_cpu_pct, "request_rate": point.request_rate},
        ))
    return out


def served_answers(server, workload: Workload, model: str, protocol: str = "grpc", batch_size: int = 8):
    from bertqa.client.qa_client import QAClient

    url = server.http_url if protocol == "http" else server.grpc_url
    answers = []
    with QAClient(url, protocol, model=model) as client:
        for first in range(0, len(workload), batch_size):
            answers += client.ask(workload.questions[first:first + batch_size], workload.contexts[first:first + batch_size])
    return answers
