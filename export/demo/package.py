"""Packages a SQuAD-trained `BertForQuestionAnswering` folder as the bundled demo (`demo_model/`).

1. Copies the Hugging Face files (config, FP16 `model.safetensors`, vocabulary and tokenizer configs;
   `tokenizer.json` without truncation/padding state, as `qa_preprocess` reads it). No vocabulary
   trimming: the full 30,522-token uncased vocabulary is kept.
2. Exports `onnx/model.onnx` with the project's exporter (`bertqa.export.onnx.export_onnx`, the code
   path of `bertqa export`): FP16 weight storage + Cast (lossless for FP16 weights), FP32 compute,
   validated against PyTorch on real SQuAD dev windows from the committed slice.
3. Measures EM/F1 of exactly that ONNX file in-process (`bertqa.reference.ReferencePipeline`, the
   served windowing and decoding parameters of `model_repository/`) on the SQuAD v1.1 dev file.
4. Writes `eval_results.json` and the model card `README.md`.

Everything is built in a temporary folder beside the output and swapped in at the end: a failed
or interrupted build leaves a working demo as it was.

``python -m bertqa.export.demo.package --checkpoint DIR [--output demo_model] [--dev FILE] [--max-eval N]``\n``python -m bertqa.export.demo.package --remeasure [--output demo_model]``: measure the files again
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from bertqa.files import atomic_write_text, file_digest
from bertqa.squad import QAExample, dev_slice_path, file_md5, read_examples, squad_file, squad_scores

HF_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
EVAL_CHUNK = 8  # questions per reference call: at most 8 x 3 windows, within qa_preprocess's max_windows


def folder_bytes(folder: Path) -> int:
    """Bytes of all files under ``folder`` (what `du -b` counts for the files)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def validation_pairs(count: int = 12) -> list[tuple[str, str]]:
    """Real SQuAD dev pairs for the exporter's check: short ones and the longest (multi-window) ones."""
    examples = read_examples(dev_slice_path())
    longest = sorted(examples, key=lambda e: len(e.context), reverse=True)[: count // 3]
    short = [e for e in examples if e not in longest][:: max(1, len(examples) // (count - len(longest)))]
    return [(e.question, e.context) for e in longest + short[: count - len(longest)]]


def copy_checkpoint(checkpoint: Path, output: Path, log: Callable[[str], None] = print) -> dict:
    """Step 1 + 2: HF files and the validated ONNX export into ``output``; returns the export report."""
    from bertqa.export.checkpoints import load_hf_checkpoint
    from bertqa.export.onnx import export_onnx

    loaded = load_hf_checkpoint(checkpoint)
    if loaded.model.config.vocab_size != loaded.tokenizer.get_vocab_size():
        raise ValueError(f"{checkpoint}: vocabulary and embeddings differ in size")
    for name in HF_FILES:
        shutil.copyfile(checkpoint / name, output / name)
    loaded.save_tokenizer(output / "tokenizer.json")
    report = export_onnx(loaded.model, output / "tokenizer.json", output / "onnx" / "model.onnx", opset=17,
                         sample_pairs=validation_pairs(), atol=1e-3, weight_storage="fp16", log=log)
    return {"size_bytes": report.size_bytes, "opset": report.opset, "ir_version": report.ir_version,
            "max_abs_diff_start": report.max_abs_diff_start, "max_abs_diff_end": report.max_abs_diff_end}


@dataclass
class DevEvaluation:
    exact_match: float
    f1: float
    questions: int
    windows: int
    seconds: float
    data_file: str
    data_md5: str
    windowing: dict  # the served parameters the measurement used (qa_preprocess / qa_postprocess)
    decoding: dict


def evaluate_demo(demo_dir: Path, examples: Sequence[QAExample], data_file: Path, threads: int = 2,
                  show_progress: bool = True) -> tuple[DevEvaluation, dict[str, str]]:
    """SQuAD EM/F1 of the demo's ONNX file through the in-process reference pipeline, with the windowing
    and decoding parameters the served `bert_qa` ensemble uses; also returns the predictions."""
    from tqdm import tqdm

    from bertqa.demo import install_demo
    from bertqa.reference import ReferencePipeline
    from bertqa.server import DEFAULT_REPOSITORY

    with tempfile.TemporaryDirectory(prefix="bertqa-demo-eval-") as scratch:
        repository = Path(scratch) / "model_repository"
        for model in ("qa_preprocess", "bert_onnx", "qa_postprocess"):
            shutil.copytree(DEFAULT_REPOSITORY / model, repository / model,
                            ignore=shutil.ignore_patterns("*.onnx", "tokenizer.json", "__pycache__"))
        install_demo(repository, demo_dir, force=True)
        pipeline = ReferencePipeline.from_repository(repository, intra_op_threads=threads)
        predictions: dict[str, str] = {}
        windows = 0
        began = time.perf_counter()
        with tqdm(total=len(examples), desc="SQuAD dev (in-process ONNX)", unit="q", disable=not show_progress) as bar:
            for first in range(0, len(examples), EVAL_CHUNK):
                chunk = examples[first:first + EVAL_CHUNK]
                questions, contexts = [e.question for e in chunk], [e.context for e in chunk]
                windows += pipeline.windower.windows(questions, contexts).num_windows
                for example, answer in zip(chunk, pipeline.answer(questions, contexts)):
                    predictions[example.id] = answer.text
                bar.update(len(chunk))
        seconds = time.perf_counter() - began
    em, f1 = squad_scores(predictions, examples)
    return DevEvaluation(round(em, 2), round(f1, 2), len(examples), windows, round(seconds, 1), data_file.name,
                         file_md5(data_file), asdict(pipeline.windower.config), asdict(pipeline.decoding)), predictions


def measure_demo(folder: Path, dev_file: Path, *, provenance: dict, onnx_report: dict,
                 max_eval: int | None = None, predictions_out: Path | None = None, threads: int = 2,
                 log: Callable[[str], None] = print) -> dict:
    """Steps 3 + 4 on a packaged folder: measures its ONNX file, writes eval_results.json and the card."""
    from bertqa.export.demo.card import write_model_card

    examples = read_examples(dev_file, require_answers=True)[:max_eval]
    evaluation, predictions = evaluate_demo(folder, examples, Path(dev_file), threads)
    log(f"SQuAD v1.1 dev, {evaluation.questions} questions, {folder / 'onnx/model.onnx'} in-process: "
        f"EM {evaluation.exact_match} F1 {evaluation.f1} ({evaluation.seconds} s)")
    if predictions_out is not None:
        atomic_write_text(predictions_out, json.dumps(predictions, ensure_ascii=False) + "\n")
    results = {
        "provenance": provenance,
        "weights_sha256": file_digest(folder / "model.safetensors"),
        "vocab_size": json.loads((folder / "config.json").read_text())["vocab_size"],
        "onnx": onnx_report,
        "squad_v1.1_dev": asdict(evaluation),
    }
    atomic_write_text(folder / "eval_results.json", json.dumps(results, indent=2) + "\n")
    write_model_card(folder, results)
    log(f"{folder}: {folder_bytes(folder):,} bytes")
    return results


def build_demo(checkpoint: Path, output: Path, dev_file: Path, *, provenance: dict, max_eval: int | None = None,
               predictions_out: Path | None = None, threads: int = 2, log: Callable[[str], None] = print) -> dict:
    """Steps 1-4 into a temporary folder, swapped into ``output`` at the end. Returns eval_results."""
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the demo from a server running as another user
    try:
        (staging / "onnx").mkdir()
        onnx_report = copy_checkpoint(Path(checkpoint), staging, log)
        results = measure_demo(staging, dev_file, provenance=provenance, onnx_report=onnx_report, max_eval=max_eval,
                               predictions_out=predictions_out, threads=threads, log=log)
        previous = output.with_name(f".{output.name}.previous")
        shutil.rmtree(previous, ignore_errors=True)
        if output.exists():
            output.rename(previous)
        staging.rename(output)
        shutil.rmtree(previous, ignore_errors=True)
        return results
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="Hugging Face BertForQuestionAnswering folder to package")
    source.add_argument("--remeasure", action="store_true",
                        help="keep --output's files, only measure them again (e.g. after a decoding change) and "
                             "rewrite eval_results.json and README.md")
    parser.add_argument("--output", type=Path, default=Path("demo_model"))
    parser.add_argument("--dev", type=Path, default=None, help="SQuAD v1.1 dev file (default: the fetched one)")
    parser.add_argument("--max-eval", type=int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--predictions", type=Path, default=None, help="also write the dev predictions here")
    parser.add_argument("--provenance", type=Path, default=None,
                        help="JSON with the training facts for the model card (default: training_metrics.json "
                             "or metrics.json in the checkpoint folder)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    dev_file = args.dev or squad_file("dev")
    if args.remeasure:
        previous = json.loads((args.output / "eval_results.json").read_text())
        provenance = json.loads(args.provenance.read_text()) if args.provenance else previous["provenance"]
        measure_demo(args.output, dev_file, provenance=provenance, onnx_report=previous["onnx"],
                     max_eval=args.max_eval, predictions_out=args.predictions, threads=args.threads)
        return
    provenance_file = args.provenance or next(
        (p for p in (args.checkpoint / "training_metrics.json", args.checkpoint / "metrics.json") if p.is_file()), None)
    provenance = json.loads(provenance_file.read_text()) if provenance_file else {}
    build_demo(args.checkpoint, args.output, dev_file, provenance=provenance,
               max_eval=args.max_eval, predictions_out=args.predictions, threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
