"""SQuAD v1.1 dev, all 10,570 questions, in-process: EM/F1 of chosen variants (the CPU default's accuracy rule).

    python -m benchmarks.full_dev --repository DIR --models bert_onnx,bert_openvino_int8 --output full_dev.json

One question at a time through the reference pipeline (the served ensemble's tokenizer, windowing and
decoding, the variant's own runtime settings), so the answers are those a single client gets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.progress import Progress


def evaluate(repository: Path, model: str, examples, progress: Progress | None = None) -> dict:
    from bertqa.reference import ReferencePipeline
    from bertqa.squad import squad_scores

    pipeline = ReferencePipeline.from_repository(repository, model)
    task = progress.add_task(model, total=len(examples)) if progress else None
    predictions, begin = {}, time.perf_counter()
    for e in examples:
        predictions[e.id] = pipeline.answer([e.question], [e.context])[0].text
        if progress:
            progress.advance(task)
    em, f1 = squad_scores(predictions, examples)
    return {"model": model, "exact_match": em, "f1": f1, "questions": len(examples),
            "seconds": time.perf_counter() - begin}


def main(argv=None) -> int:
    from bertqa.squad import read_examples, squad_file

    parser = argparse.ArgumentParser(prog="python -m benchmarks.full_dev", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--models", required=True, help="comma-separated BERT models of the repository")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    examples = read_examples(squad_file("dev"), require_answers=True)
    results = {}
    with Progress() as progress:
        for model in args.models.split(","):
            results[model] = evaluate(args.repository, model, examples, progress)
    args.output.write_text(json.dumps(results, indent=2))
    for row in results.values():
        print(f"{row['model']}: EM {row['exact_match']:.2f} F1 {row['f1']:.2f} on {row['questions']} questions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
