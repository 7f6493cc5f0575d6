"""`bertqa eval`: SQuAD v1.1 exact match / F1 of a served model, scored like the official script.

Questions are sent to the server in batches (``--batch-size`` pairs per request, ``--concurrency``
requests in flight, one client per worker thread); the answers make a predictions file in the
official format (``{question id: answer text}``) which :func:`bertqa.squad.squad_scores` scores with
the official normalisation. ``--predictions-in`` scores an existing predictions file without a server.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Sequence

from bertqa.squad import QAExample, squad_scores


class EvalError(RuntimeError):
    """The evaluation cannot finish; the message says why."""


def official_json(exact_match: float, f1: float) -> str:
    """What evaluate-v1.1.py prints: ``print(json.dumps({'exact_match': ..., 'f1': ...}))``."""
    return json.dumps({"exact_match": exact_match, "f1": f1})


def score(predictions: dict[str, str], examples: Sequence[QAExample], warn: Callable[[str], None] | None = None):
    """(EM, F1) in percent over the examples that have gold answers; unanswered questions score 0."""
    scored = [e for e in examples if e.answers]
    if not scored:
        raise EvalError("no question has a gold answer; nothing to score")
    if warn is not None:
        for example in scored:
            if example.id not in predictions:
                warn(f"Unanswered question {example.id} will receive score 0.")
    return squad_scores(predictions, scored)


def read_predictions(path: str | Path) -> dict[str, str]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise EvalError(f"{path}: cannot read predictions ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise EvalError(f"{path}: predictions must be a JSON object of question id -> answer text")
    return {str(k): v for k, v in data.items()}


def write_predictions(predictions: dict[str, str], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(predictions, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def predict(
    examples: Sequence[QAExample],
    url: str | None = None,
    protocol: str = "http",
    model: str = "bert_qa",
    batch_size: int = 8,
    concurrency: int = 2,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 300.0,
) -> dict[str, str]:
    """The served model's answer to every example: {id: answer text}."""
    from tritonclient.utils import InferenceServerException

    from bertqa.client.qa_client import QAClient

    if batch_size < 1 or concurrency < 1:
        raise EvalError("batch size and concurrency must be >= 1")
    local = threading.local()
    clients: list[QAClient] = []
    lock = threading.Lock()

    def client() -> QAClient:
        if not hasattr(local, "client"):
            local.client = QAClient(url, protocol, model, timeout_s=timeout_s)
            with lock:
                clients.append(local.client)
        return local.client

    def answer(chunk: Sequence[QAExample]) -> list[tuple[str, str]]:
        try:
            answers = client().ask([e.question for e in chunk], [e.context for e in chunk])
        except InferenceServerException as err:
            # A batch whose windows exceed the model's batch limit: answer it in halves.
            if len(chunk) > 1 and "batch" in (err.message() or "").lower():
                half = len(chunk) // 2
                return answer(chunk[:half]) + answer(chunk[half:])
            raise EvalError(f"the server failed on question {chunk[0].id!r}: {err.message()}") from None
        return [(e.id, a.text) for e, a in zip(chunk, answers)]

    try:
        ready = client().is_ready()
    except Exception as err:  # noqa: BLE001 - connection refused and friends
        raise EvalError(f"cannot query {model!r} at {url or protocol + ' default'}: {err}") from None
    if not ready:
        for c in clients:
            c.close()
        raise EvalError(f"model {model!r} is not ready at {client().url} ({protocol}); is the server running?")
    chunks = [list(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]
    predictions: dict[str, str] = {}
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval") as pool:
            futures = [pool.submit(answer, chunk) for chunk in chunks]
            try:
                for future in as_completed(futures):
                    pairs = future.result()
                    predictions.update(pairs)
                    if progress:
                        progress(len(pairs))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    except EvalError:
        raise
    except Exception as err:  # noqa: BLE001 - connection refused and friends
        raise EvalError(f"cannot query {model!r} at {url or protocol + ' default'}: {err}") from None
    finally:
        for c in clients:
            c.close()
    # keep the data file's order in the written file
    return {e.id: predictions[e.id] for e in examples if e.id in predictions}


def evaluate(
    examples: Sequence[QAExample],
    *,
    url: str | None = None,
    protocol: str = "http",
    model: str = "bert_qa",
    batch_size: int = 8,
    concurrency: int = 2,
    show_progress: bool = True,
) -> tuple[dict[str, str], float, float, float]:
    """(predictions, EM, F1, seconds) of the served model over the examples."""
    from tqdm import tqdm

    began = time.perf_counter()
    with tqdm(total=len(examples), unit="q", desc=f"eval {model}", disable=not show_progress, file=sys.stderr) as bar:
        predictions = predict(examples, url, protocol, model, batch_size, concurrency, progress=bar.update)
    em, f1 = score(predictions, examples)
    return predictions, em, f1, time.perf_counter() - began
