"""`make eval` / `python -m benchmarks.accuracy`: SQuAD v1.1 dev accuracy of every way the demo model
answers, written to docs/ACCURACY.md (+ a PNG).

Systems, all on the same checkpoint (default: the bundled demo model):
* Triton `bert_qa` (FP32, the committed ONNX export) and `bert_qa_int8` (exported here with the project's
  exporter) over HTTP and gRPC, every dev question, through `bertqa eval`'s client;
* the in-process PyTorch reference: the project's windowing and span decoding (bertqa.text) around
  ``BertForQuestionAnswering``; one set of logits decoded with and without whole-word alignment;
* the Hugging Face ``pipeline("question-answering")`` on the first ``--hf-questions`` questions, with
  agreement counts against the served answers.

Each system is a *pass* whose predictions are saved under ``--work-dir`` every few hundred questions, so
an interrupted run resumes where it stopped (``--fresh`` starts over); the report is rebuilt from the
saved passes. Questions/s are measured per pass on whatever else the machine is doing at the time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from bertqa.files import atomic_write_text
from bertqa.server import PROJECT_ROOT
from bertqa.squad import QAExample, read_examples

DEFAULT_WORK_DIR = PROJECT_ROOT / "results" / "accuracy"
DEFAULT_OUTPUT = PROJECT_ROOT / "docs" / "ACCURACY.md"
FP32_ENSEMBLE, INT8_ENSEMBLE = "bert_qa", "bert_qa_int8"
SERVED_BATCH, SERVED_CONCURRENCY = 8, 2  # `bertqa eval`'s defaults


# --------------------------------------------------------------------------------------------------
# Passes: predictions saved as they come, resumed from what was saved


@dataclass
class PassRecord:
    """What one system answered so far. ``decodings`` holds other decodings of the same model outputs."""

    key: str
    title: str
    total: int
    predictions: dict[str, str] = field(default_factory=dict)
    decodings: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: float = 0.0  # answering time, summed over resumed sessions
    settings: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.predictions) >= self.total

    @property
    def questions_per_s(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds else float("nan")


class PassStore:
    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def load(self, key: str) -> PassRecord | None:
        path = self.path(key)
        return PassRecord(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None

    def save(self, record: PassRecord) -> None:
        atomic_write_text(self.path(record.key), json.dumps(record.__dict__, ensure_ascii=False))

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """Whether this process may answer pass ``key``: False while another process holds it."""
        with open(self.directory / f"{key}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True


# answer(chunk) -> {decoding name: {question id: answer}}; the decoding "answer" is the system's own.
Answerer = Callable[[Sequence[QAExample]], dict[str, dict[str, str]]]


def run_pass(store: PassStore, key: str, title: str, examples: Sequence[QAExample], answer: Answerer,
             block: int = 256, settings: dict | None = None) -> PassRecord:
    """Answers the examples not answered yet, in blocks, saving after each block; skips a pass that another
    process is answering."""
    with store.claim(key) as mine:
        if not mine:
            print(f"{title}: another process is answering it; skipped here", file=sys.stderr)
            return store.load(key)
        return _answer_pass(store, key, title, examples, answer, block, settings)


def _answer_pass(store, key, title, examples, answer, block, settings) -> PassRecord:
    record = store.load(key) or PassRecord(key, title, len(examples), settings=settings or {})
    record.total = len(examples)
    todo = [e for e in examples if e.id not in record.predictions]
    with tqdm(total=len(examples), initial=len(examples) - len(todo), unit="q", desc=title, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for first in range(0, len(todo), block):
            chunk = todo[first:first + block]
            began = time.perf_counter()
            decoded = answer(chunk)
            record.seconds += time.perf_counter() - began
            record.predictions.update(decoded.pop("answer"))
            for name, predictions in decoded.items():
                record.decodings.setdefault(name, {}).update(predictions)
            store.save(record)
            bar.update(len(chunk))
    return record


# --------------------------------------------------------------------------------------------------
# Systems


def served_answerer(url: str, protocol: str, model: str) -> Answerer:
    from bertqa.client.eval import predict

    def answer(chunk):
        return {"answer": predict(chunk, url, protocol, model, SERVED_BATCH, SERVED_CONCURRENCY)}

    return answer


class TorchReference:
    """The checkpoint in PyTorch, windowed and decoded by the same code (and parameters) as the server."""

    def __init__(self, checkpoint: Path, repository: Path, batch_questions: int = 8):
        import torch
        from transformers import BertForQuestionAnswering

        from bertqa.text import QAWindower, load_tokenizer

        windowing, self.decoding = served_parameters(repository)
        self.windower = QAWindower(load_tokenizer(checkpoint / "tokenizer.json"), windowing)
        self.model = BertForQuestionAnswering.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.batch_questions = batch_questions
        self.torch = torch

    def logits(self, windows):
        feeds = {n: self.torch.from_numpy(getattr(windows, n)) for n in ("input_ids", "attention_mask", "token_type_ids")}
        with self.torch.inference_mode():
            out = self.model(**feeds)
        return out.start_logits.float().numpy(), out.end_logits.float().numpy()

    def __call__(self, chunk: Sequence[QAExample]) -> dict[str, dict[str, str]]:
        from bertqa.text import decode_spans, pair_contexts

        aligned, unaligned = {}, {}
        for first in range(0, len(chunk), self.batch_questions):
            part = chunk[first:first + self.batch_questions]
            contexts = [e.context for e in part]
            windows = self.windower.windows([e.question for e in part], contexts)
            start, end = self.logits(windows)
            texts = pair_contexts(contexts, windows.pair_index)
            for config, target in ((replace(self.decoding, align_to_words=True), aligned),
                                   (replace(self.decoding, align_to_words=False), unaligned)):
                spans = decode_spans(start, end, windows.offsets, windows.pair_index, len(part), config, window_text=texts)
                target.update({e.id: e.context[s.start:s.end] if s.window >= 0 else "" for e, s in zip(part, spans)})
        return {"answer": aligned, "unaligned": unaligned}


def served_parameters(repository: Path):
    """The windowing and decoding configured in the repository's qa_preprocess / qa_postprocess."""
    from google.protobuf import json_format

    from bertqa.repository import read_config
    from bertqa.triton.params import PostprocessParameters, PreprocessParameters, parse_parameters

    def parameters(model: str, spec):
        config = read_config(repository / model / "config.pbtxt")
        return parse_parameters(json_format.MessageToDict(config, preserving_proto_field_name=True), spec)

    return (parameters("qa_preprocess", PreprocessParameters).windowing(),
            parameters("qa_postprocess", PostprocessParameters).decoding())


HF_SETTINGS = {"max_seq_len": 384, "doc_stride": 128, "max_question_len": 64, "max_answer_len": 30}


def hf_answerer(checkpoint: Path, batch_size: int = 8) -> Answerer:
    """transformers' pipeline("question-answering"): its defaults, but answers up to 30 tokens like ours."""
    import torch

    from benchmarks.measure import load_hf_pipeline

    qa = load_hf_pipeline(checkpoint)

    def answer(chunk):
        with torch.inference_mode():
            out = qa(question=[e.question for e in chunk], context=[e.context for e in chunk],
                     batch_size=batch_size, **HF_SETTINGS)
        out = out if isinstance(out, list) else [out]
        return {"answer": {e.id: o["answer"] for e, o in zip(chunk, out)}}

    return answer


# --------------------------------------------------------------------------------------------------
# Repository and server


def checkpoint_identity(checkpoint: Path) -> dict:
    from bertqa.files import file_digest

    weights = next((checkpoint / n for n in ("model.safetensors", "pytorch_model.bin") if (checkpoint / n).is_file()), None)
    if weights is None:
        raise SystemExit(f"error: {checkpoint} has no model.safetensors / pytorch_model.bin")
    return {"checkpoint": str(checkpoint), "weights": weights.name, "sha256": file_digest(weights)}


def serving_fingerprint() -> str:
    """A hash of what decides the served answers besides the weights: the committed model configs and the
    serving code. Saved passes and the exported repository are kept only while it is unchanged."""
    import hashlib

    from bertqa.server import DEFAULT_REPOSITORY

    package = Path(__file__).resolve().parents[1] / "bertqa"
    files = sorted(DEFAULT_REPOSITORY.glob("*/config.pbtxt")) + sorted(package.glob("triton/*.py"))
    digest = hashlib.sha256()
    for path in [*files, package / "text.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def prepare_repository(checkpoint: Path, target: Path, identity: dict) -> Path:
    """``target``: the committed configs, FP32 and INT8 exports of ``checkpoint``. Reused while the checkpoint
    is the same (a stamp file records its hash), exported again otherwise."""
    import shutil

    from benchmarks.models import committed_configs, export
    from bertqa.demo import DEMO_DIR, install_demo

    stamp = target / "checkpoint.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == identity:
        return target
    if target.exists():
        shutil.rmtree(target)
    committed_configs(target)
    if checkpoint == DEMO_DIR.resolve():
        install_demo(target)  # FP32: the committed export, exactly what `make serve` serves
    else:
        export(checkpoint, target, "onnx", no_eval=True)
    print(f"exporting {checkpoint} as onnx-int8 into {target}", file=sys.stderr)
    export(checkpoint, target, "onnx-int8", no_eval=True)
    stamp.write_text(json.dumps(identity))
    return target


def start_server(repository: Path, log_file: Path):
    from bertqa.server import EmbeddedServer, free_ports

    http, grpc, metrics = free_ports(3)
    print(f"starting tritonserver on {repository} (log {log_file})", file=sys.stderr)
    server = EmbeddedServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            host="127.0.0.1", log_file=log_file)
    return server.start()


# --------------------------------------------------------------------------------------------------
# The run


SERVED = (  # key, title, ensemble, protocol
    ("fp32-http", "Triton bert_qa FP32, HTTP", FP32_ENSEMBLE, "http"),
    ("fp32-grpc", "Triton bert_qa FP32, gRPC", FP32_ENSEMBLE, "grpc"),
    ("int8-http", "Triton bert_qa_int8 INT8, HTTP", INT8_ENSEMBLE, "http"),
    ("int8-grpc", "Triton bert_qa_int8 INT8, gRPC", INT8_ENSEMBLE, "grpc"),
)


PARTS = ("http", "in-process", "grpc")  # in this order: what the targets need first


def run_served(store: PassStore, repository: Path, examples, work_dir: Path, protocols: Sequence[str]) -> None:
    todo = [s for s in SERVED
            if s[3] in protocols and not ((r := store.load(s[0])) and r.complete and r.total == len(examples))]
    if not todo:
        return
    server = start_server(repository, work_dir / "tritonserver.log")
    try:
        for key, title, model, protocol in todo:
            url = server.http_url if protocol == "http" else server.grpc_url
            settings = {"batch_size": SERVED_BATCH, "concurrency": SERVED_CONCURRENCY, "model": model,
                        "protocol": protocol}
            run_pass(store, key, title, examples, served_answerer(url, protocol, model), block=128, settings=settings)
    finally:
        server.stop()


def run_in_process(store: PassStore, checkpoint: Path, repository: Path, examples, hf_questions: int) -> None:
    """The HF pipeline's fixed first questions, then the PyTorch reference on all of them."""
    if hf_questions:
        first = examples[:hf_questions]
        record = store.load("hf-pipeline")
        if not (record and record.complete and record.total == len(first)):
            run_pass(store, "hf-pipeline", "HF pipeline PyTorch FP32", first, hf_answerer(checkpoint),
                     block=64, settings={**HF_SETTINGS, "batch_size": 8})
    record = store.load("pytorch")
    if not (record and record.complete and record.total == len(examples)):
        run_pass(store, "pytorch", "in-process PyTorch FP32", examples, TorchReference(checkpoint, repository),
                 block=128, settings={"batch_questions": 8})


def dev_examples(data: Path | None, limit: int | None) -> tuple[Path, list[QAExample]]:
    if data is None:
        from bertqa.squad import fetch_squad, squad_file

        try:
            data = squad_file("dev")
        except FileNotFoundError:
            data = fetch_squad(["dev"])[0]
    examples = read_examples(data, require_answers=True)
    return data, examples[:limit] if limit else examples


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=PROJECT_ROOT / "demo_model",
                        help="Hugging Face BertForQuestionAnswering folder (default: the demo model)")
    parser.add_argument("--data", type=Path, default=None,
                        help="SQuAD v1.1 JSON (default: dev-v1.1.json, fetched by `bertqa data squad` if missing)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions (a quick check)")
    parser.add_argument("--hf-questions", type=int, default=1000, help="questions for the HF pipeline (0: skip)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                        help="exported repository and saved passes (default results/accuracy)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown report (PNG beside it)")
    parser.add_argument("--fresh", action="store_true", help="discard saved passes and answer everything again")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the saved passes")
    parser.add_argument("--only", choices=PARTS, action="append", default=None,
                        help="run only these passes (repeatable); processes running different parts side by side "
                             "share the saved passes")
    parser.add_argument("--note", default="", help="a paragraph for the report's header (e.g. about the checkpoint)")
    return parser.parse_args(argv)


def stop_on_sigterm() -> None:
    """SIGTERM (a background run's only polite stop: such jobs ignore SIGINT) unwinds like Ctrl-C, so the
    server is stopped and every answered block is already saved."""
    import signal

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.accuracy_report import write_report

    args = parse_args(argv)
    stop_on_sigterm()
    began = time.time()
    data, examples = dev_examples(args.data, args.limit)
    hf_questions = min(args.hf_questions, len(examples))
    identity = {**checkpoint_identity(args.checkpoint.resolve()), "serving": serving_fingerprint()}
    run_dir = args.work_dir / f"{identity['sha256'][:12]}-{identity['serving'][:8]}-{len(examples)}q"
    store = PassStore(run_dir / "passes")
    if args.fresh:
        for path in store.directory.glob("*.json"):
            path.unlink()
    if not args.report_only:
        repository = prepare_repository(args.checkpoint.resolve(), args.work_dir / "model_repository", identity)
        # What the targets need first (a run cut short still judges them), then the second protocol.
        parts = args.only or PARTS
        if "http" in parts:
            run_served(store, repository, examples, run_dir, ("http",))
        if "in-process" in parts:
            run_in_process(store, args.checkpoint.resolve(), repository, examples, hf_questions)
        if "grpc" in parts:
            run_served(store, repository, examples, run_dir, ("grpc",))
    passes = {key: store.load(key) for key in [s[0] for s in SERVED] + ["pytorch", "hf-pipeline"]}
    written = write_report(args.output, passes, examples, data=data, identity=identity,
                           minutes=(time.time() - began) / 60, note=args.note)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
