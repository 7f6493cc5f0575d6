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


# What tritonclient puts in InferenceServerException.status() for a request the server rejected as invalid.
REJECTED_STATUS = {"400", "StatusCode.INVALID_ARGUMENT"}


def is_rejected(err) -> bool:
    """The server answered 400 / INVALID_ARGUMENT: this request is wrong, the server is fine."""
    return str(err.status()) in REJECTED_STATUS


class ThreadClients:
    """One QAClient per worker thread (tritonclient's synchronous clients are not thread-safe)."""

    def __init__(self, url: str | None, protocol: str, model: str, timeout_s: float):
        self.settings = (url, protocol, model, timeout_s)
        self.local = threading.local()
        self.opened: list = []
        self.lock = threading.Lock()

    def get(self):
        from bertqa.client.qa_client import QAClient

        if not hasattr(self.local, "client"):
            url, protocol, model, timeout_s = self.settings
            self.local.client = QAClient(url, protocol, model, timeout_s=timeout_s)
            with self.lock:
                self.opened.append(self.local.client)
        return self.local.client

    def close(self) -> None:
        for client in self.opened:
            client.close()


def answer_chunk(clients: ThreadClients, chunk: Sequence[QAExample]) -> list[tuple[str, str]]:
    """(id, answer) per example. A request the server rejects (for instance more windows than one request
    may hold, as several long contexts together can need) is answered in halves; a single rejected
    question is an error that names it."""
    from tritonclient.utils import InferenceServerException

    try:
        answers = clients.get().ask([e.question for e in chunk], [e.context for e in chunk])
    except InferenceServerException as err:
        if len(chunk) > 1 and is_rejected(err):
            half = len(chunk) // 2
            return answer_chunk(clients, chunk[:half]) + answer_chunk(clients, chunk[half:])
        raise EvalError(f"the server failed on question {chunk[0].id!r}: {err.message()}") from None
    return [(e.id, a.text) for e, a in zip(chunk, answers)]


def check_ready(clients: ThreadClients, model: str, where: str) -> None:
    try:
        ready = clients.get().is_ready()
    except Exception as err:  # noqa: BLE001 - connection refused and friends
        raise EvalError(f"cannot query {model!r} at {where}: {err}") from None
    if not ready:
        raise EvalError(f"model {model!r} is not ready at {where}; is the server running?")


def answer_all(clients: ThreadClients, chunks, concurrency: int, progress) -> dict[str, str]:
    predictions: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eval") as pool:
        futures = [pool.submit(answer_chunk, clients, chunk) for chunk in chunks]
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
    return predictions


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
    """The served model's answer to every example: {id: answer text}, in the examples' order."""
    if batch_size < 1 or concurrency < 1:
        raise EvalError("batch size and concurrency must be >= 1")
    from bertqa.client.qa_client import default_url, normalize_url

    clients = ThreadClients(url, protocol, model, timeout_s)
    where = f"{normalize_url(url or default_url(protocol))} ({protocol})"
    chunks = [list(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]
    try:
        check_ready(clients, model, where)
        predictions = answer_all(clients, chunks, concurrency, progress)
    except EvalError:
        raise
    except Exception as err:  # noqa: BLE001 - connection refused and friends
        raise EvalError(f"cannot query {model!r} at {where}: {err}") from None
    finally:
        clients.close()
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
