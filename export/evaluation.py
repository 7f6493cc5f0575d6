"""SQuAD v1.1 EM/F1 of an ONNX model (exporter-side evaluation); data files and metric: bertqa.squad."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from bertqa.squad import DataFileError, QAExample, normalize_answer, read_examples, squad_scores  # noqa: F401
from bertqa.text import DecodingConfig, QAWindower, WindowingConfig, decode_spans, load_tokenizer, pair_contexts


# --------------------------------------------------------------------------------------------------
# Running a model over examples


@dataclass
class EvalResult:
    exact_match: float
    f1: float
    seconds: float  # model time only (ONNX Runtime run calls)
    windows: int
    predictions: dict[str, str]


def evaluate_session(
    session, tokenizer_file: str | Path, examples: Sequence[QAExample], *,
    windowing: WindowingConfig | None = None, batch_size: int = 8, decoding: DecodingConfig = DecodingConfig(),
) -> EvalResult:
    """EM/F1 of an ONNX Runtime session; each question is windowed and decoded like the server does."""
    windower = QAWindower(load_tokenizer(tokenizer_file), windowing or WindowingConfig())
    predictions: dict[str, str] = {}
    seconds = 0.0
    count = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        windows = windower.windows([e.question for e in chunk], [e.context for e in chunk])
        feeds = {n: getattr(windows, n) for n in ("input_ids", "attention_mask", "token_type_ids")}
        begin = time.perf_counter()
        start_logits, end_logits = session.run(["start_logits", "end_logits"], feeds)
        seconds += time.perf_counter() - begin
        count += windows.num_windows
        spans = decode_spans(start_logits, end_logits, windows.offsets, windows.pair_index, len(chunk), decoding,
                             window_text=pair_contexts([e.context for e in chunk], windows.pair_index))
        for example, span in zip(chunk, spans):
            predictions[example.id] = example.context[span.start:span.end] if span.window >= 0 else ""
    scored = [e for e in examples if e.answers]
    em, f1 = squad_scores(predictions, scored) if scored else (float("nan"), float("nan"))
    return EvalResult(em, f1, seconds, count, predictions)


def time_session(session, batches: Sequence[dict[str, np.ndarray]], repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds to run all batches once (after one warm-up pass)."""
    for feeds in batches[:1]:
        session.run(None, feeds)
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        for feeds in batches:
            session.run(None, feeds)
        best = min(best, time.perf_counter() - begin)
    return best
