"""docs/ACCURACY.md and its PNG from the saved passes of `python -m benchmarks.accuracy`."""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bertqa.squad import QAExample, squad_scores

FP32_F1_TOLERANCE = 0.3  # served FP32 F1 within this of the in-process PyTorch reference
INT8_F1_RATIO = 0.99  # MLPerf bert-99: INT8 keeps at least 99 % of FP32 F1


@dataclass(frozen=True)
class Score:
    questions: int
    em: float
    f1: float


def score_of(predictions: dict[str, str], examples: Sequence[QAExample]) -> Score:
    em, f1 = squad_scores(predictions, examples)
    return Score(len(examples), em, f1)


def agreement(a: dict[str, str], b: dict[str, str], examples: Sequence[QAExample]) -> tuple[int, int]:
    """(questions where both gave the same answer text, questions compared)."""
    ids = [e.id for e in examples if e.id in a and e.id in b]
    return sum(a[i] == b[i] for i in ids), len(ids)


def examples_table(a: dict[str, str], b: dict[str, str], examples: Sequence[QAExample], headings: tuple[str, str],
                   lead: str, limit: int = 5) -> list[str]:
    """``lead`` and the first ``limit`` questions where ``a`` and ``b`` answer differently, with the gold
    answer; nothing where they never differ."""
    rows = [lead, "", f"| Question | {headings[0]} | {headings[1]} | Gold |", "|---|---|---|---|"]
    for example in [e for e in examples if e.id in a and e.id in b and a[e.id] != b[e.id]][:limit]:
        cells = (example.question, a[example.id], b[example.id], example.answers[0])
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return [*rows, ""] if len(rows) > 4 else []


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pct(same: int, total: int) -> str:
    return f"{same:,} / {total:,} ({100.0 * same / total:.2f} %)" if total else "n/a"


def results_table(passes: dict, examples: Sequence[QAExample]) -> list[str]:
    lines = ["| System | Questions | EM | F1 | Questions/s | Answering time |", "|---|---:|---:|---:|---:|---:|"]
    for record in passes.values():
        if record is None or not record.predictions:
            continue
        scored = [e for e in examples[: record.total] if e.id in record.predictions]
        score = score_of(record.predictions, scored)
        partial = "" if record.complete else f" (partial: {len(record.predictions):,} of {record.total:,})"
        lines.append(f"| {record.title}{partial} | {score.questions:,} | {_fmt(score.em)} | {_fmt(score.f1)} | "
                     f"{_fmt(record.questions_per_s, 1)} | {record.seconds / 60:.1f} min |")
    return lines


def paired_f1(passes: dict, a: str, b: str, examples: Sequence[QAExample]) -> tuple[float, float, str] | None:
    """F1 of passes ``a`` and ``b`` over the questions both answered, and a note when that is not all."""
    ra, rb = passes.get(a), passes.get(b)
    if ra is None or rb is None:
        return None
    common = [e for e in examples if e.id in ra.predictions and e.id in rb.predictions]
    if not common:
        return None
    scope = "" if len(common) == len(examples) else f"; on the {len(common):,} questions both answered so far"
    return score_of(ra.predictions, common).f1, score_of(rb.predictions, common).f1, scope


def targets_table(passes: dict, examples: Sequence[QAExample]) -> list[str]:
    lines = ["| Target | Measured | Result |", "|---|---|---|"]
    for protocol in ("http", "grpc"):
        if found := paired_f1(passes, f"fp32-{protocol}", "pytorch", examples):
            served, ref, scope = found
            verdict = "PASS" if abs(served - ref) <= FP32_F1_TOLERANCE else "FAIL"
            lines.append(f"| served FP32 F1 within {FP32_F1_TOLERANCE} of in-process PyTorch ({protocol.upper()}) | "
                         f"{served:.2f} vs {ref:.2f} (difference {round(served - ref, 2) + 0.0:+.2f}{scope}) | **{verdict}** |")
        if found := paired_f1(passes, f"int8-{protocol}", f"fp32-{protocol}", examples):
            int8, fp32, scope = found
            ratio = int8 / fp32 if fp32 else 0.0
            verdict = "PASS" if ratio >= INT8_F1_RATIO else "FAIL"
            lines.append(f"| served INT8 F1 >= {INT8_F1_RATIO:.0%} of served FP32 ({protocol.upper()}) | "
                         f"{int8:.2f} / {fp32:.2f} = {ratio:.2%}{scope} | **{verdict}** |")
    return lines


def whole_word_section(passes: dict, examples: Sequence[QAExample]) -> list[str]:
    record = passes.get("pytorch")
    if record is None or "unaligned" not in record.decodings:
        return []
    scored = [e for e in examples if e.id in record.predictions and e.id in record.decodings["unaligned"]]
    before = score_of(record.decodings["unaligned"], scored)
    after = score_of(record.predictions, scored)
    same, total = agreement(record.predictions, record.decodings["unaligned"], scored)
    return [
        "## Whole-word answers",
        "",
        "An answer that starts or ends inside a word (on a `##` piece, or any token touching a letter of the same",
        "word) is widened to the word's boundaries, as the Hugging Face pipeline does (`align_to_words`, a typed",
        "`qa_postprocess` parameter, on by default). Same PyTorch logits, decoded both ways:",
        "",
        "| Decoding | Questions | EM | F1 |",
        "|---|---:|---:|---:|",
        f"| token spans as chosen (before) | {before.questions:,} | {before.em:.2f} | {before.f1:.2f} |",
        f"| widened to whole words (after) | {after.questions:,} | {after.em:.2f} | {after.f1:.2f} |",
        "",
        f"Answers changed by the widening: {total - same:,} of {total:,}; "
        f"EM {after.em - before.em:+.2f}, F1 {after.f1 - before.f1:+.2f}.",
        "",
        *examples_table(record.decodings["unaligned"], record.predictions, scored, ("Before", "After"),
                        "The first answers the widening changed:"),
    ]


def hf_section(passes: dict, examples: Sequence[QAExample]) -> list[str]:
    hf = passes.get("hf-pipeline")
    if hf is None or not hf.predictions:
        return []
    first = [e for e in examples[: hf.total] if e.id in hf.predictions]
    lines = [
        "## Hugging Face pipeline",
        "",
        f"`pipeline(\"question-answering\")` (transformers, PyTorch FP32) on the same checkpoint, the first "
        f"{len(first):,} dev questions, settings {', '.join(f'{k}={v}' for k, v in hf.settings.items())} "
        "(the pipeline's defaults except max_answer_len, which is set to ours).",
        "",
        "| System | EM | F1 | Same answer text as the HF pipeline |",
        "|---|---:|---:|---:|",
    ]
    for key in ("hf-pipeline", "fp32-http", "fp32-grpc", "int8-http", "pytorch"):
        record = passes.get(key)
        if record is None or not all(e.id in record.predictions for e in first):
            continue
        score = score_of(record.predictions, first)
        same = "—" if key == "hf-pipeline" else _pct(*agreement(record.predictions, hf.predictions, first))
        lines.append(f"| {record.title} | {score.em:.2f} | {score.f1:.2f} | {same} |")
    lines += [
        "",
        "Within one window both rank spans the same way (start x end probability orders spans as start + end logit",
        "does) and both widen answers to whole words. They can part where a context needs several windows (the",
        "pipeline compares windows by probabilities normalised per window, we compare logits, as the SQuAD/MLPerf",
        "reference does) or where the pipeline's best span is outside our 20 best starts x 20 best ends.",
        "",
    ]
    served = passes.get("fp32-http")
    if served is not None:
        lines += examples_table(hf.predictions, served.predictions, first, ("HF pipeline", "Served FP32"),
                                "The first questions where the pipeline and served FP32 differ:")
    return lines


def agreement_section(passes: dict, examples: Sequence[QAExample]) -> list[str]:
    pairs = (("fp32-http", "fp32-grpc"), ("int8-http", "int8-grpc"), ("fp32-http", "pytorch"),
             ("fp32-http", "int8-http"))
    rows = []
    for a, b in pairs:
        ra, rb = passes.get(a), passes.get(b)
        if ra is None or rb is None:
            continue
        rows.append(f"| {ra.title} | {rb.title} | {_pct(*agreement(ra.predictions, rb.predictions, examples))} |")
    if not rows:
        return []
    return ["## Agreement between systems", "", "| System | System | Same answer text |", "|---|---|---:|", *rows, ""]


def plot(path: Path, passes: dict, examples: Sequence[QAExample]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = [r for r in passes.values() if r is not None and r.complete]
    if not records:
        return None
    names = [r.title.replace(", ", "\n") + ("" if r.total == len(examples) else f"\n(first {r.total:,} questions)")
             for r in records]
    f1 = [score_of(r.predictions, [e for e in examples[: r.total]]).f1 for r in records]
    speed = [r.questions_per_s for r in records]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.barh(names, f1, color="tab:blue")
    left.set_xlim(min(f1) - 3, max(f1) + 1)
    left.set_xlabel("SQuAD v1.1 dev F1")
    for y, value in enumerate(f1):
        left.text(value, y, f" {value:.2f}", va="center")
    right.barh(names, speed, color="tab:orange")
    right.set_xlabel("questions / s (this machine, while measured)")
    right.set_yticks([])
    left.invert_yaxis()
    right.invert_yaxis()
    figure.suptitle("Accuracy and speed of every way the demo model answers")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def header(examples, data: Path, identity: dict, minutes: float, passes: dict, note: str = "") -> list[str]:
    import os

    answering = sum(r.seconds for r in passes.values() if r is not None) / 60
    return [
        "# Accuracy on SQuAD v1.1 dev",
        "",
        f"Generated by `make eval` (`python -m benchmarks.accuracy`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- Data: `{data.name}`, {len(examples):,} questions with gold answers, scored with the official v1.1 metric "
        "(`bertqa.squad`).",
        f"- Checkpoint: `{Path(identity['checkpoint']).name}` (`{identity['weights']}` SHA-256 `{identity['sha256']}`).",
        "- Served: the embedded tritonserver (bertqa.server) with `bert_qa` (FP32 ONNX) and `bert_qa_int8` (dynamic INT8,",
        "  exported by `bertqa export --format onnx-int8`), queried with `bertqa eval`'s client "
        "(8 questions per request, 2 requests in flight).",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work while measured, so "
        f"questions/s are indicative; {answering:.0f} min of answering in all ({minutes:.0f} min this session).",
        "",
        *([note, ""] if note else []),
    ]


def write_report(output: Path, passes: dict, examples: Sequence[QAExample], *, data: Path, identity: dict,
                 minutes: float, note: str = "") -> list[Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    image = plot(output.with_suffix(".png"), passes, examples)
    lines = header(examples, data, identity, minutes, passes, note)
    lines += ["## Results", "", *results_table(passes, examples), ""]
    if image is not None:
        lines += [f"![F1 and questions/s per system]({image.name})", ""]
    lines += ["## Targets", "", *targets_table(passes, examples), ""]
    lines += whole_word_section(passes, examples)
    lines += hf_section(passes, examples)
    lines += agreement_section(passes, examples)
    lines += ["## Reproduce", "", "```", "make eval            # fetches dev if missing; resumes an interrupted run",
              "python -m benchmarks.accuracy --help", "```", ""]
    output.write_text("\n".join(lines), encoding="utf-8")
    return [output] + ([image] if image else [])
