"""Question/context data files and the official SQuAD v1.1 EM/F1 metric (shared by export, client, load tests).

Data files accepted (evaluation and INT8 calibration):
* SQuAD JSON (v1.1 / v2.0): ``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question",
  "answers": [{"text", "answer_start"}]}]}]}]}``;
* JSON Lines: one ``{"question": ..., "context": ..., "answers": [...]}`` object per line
  (``answers``: strings or ``{"text": ...}`` objects; optional for calibration).

The metric is the official SQuAD v1.1 one (``evaluate-v1.1.py``): answers normalised by
lower-casing, removing punctuation, the articles a/an/the and extra white space; EM and token F1
take the best over the gold answers.
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence



@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: tuple[str, ...] = ()


class DataFileError(ValueError):
    """A data file that cannot be read; the message names the file and the problem."""


def read_examples(path: str | Path, *, require_answers: bool = False) -> list[QAExample]:
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: data file not found")
    text = path.read_text(encoding="utf-8")
    examples: list[QAExample] = []
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "data" in data:
        for article in data["data"]:
            for paragraph in article.get("paragraphs", []):
                context = paragraph["context"]
                for qa in paragraph.get("qas", []):
                    answers = tuple(a["text"] for a in qa.get("answers", []))
                    examples.append(QAExample(str(qa.get("id", len(examples))), qa["question"], context, answers))
    elif data is None or isinstance(data, (list, dict)):
        # A JSON list of records, JSON Lines, or JSON Lines holding a single record (parses as a dict).
        rows = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
        if data is None:
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataFileError(f"{path}:{number}: neither SQuAD JSON nor JSON Lines ({err})") from None
        for number, row in enumerate(rows, 1):
            if not isinstance(row, dict) or "question" not in row or "context" not in row:
                raise DataFileError(f"{path}: record {number} needs 'question' and 'context'")
            answers = tuple(a["text"] if isinstance(a, dict) else str(a) for a in row.get("answers", []))
            examples.append(QAExample(str(row.get("id", number)), row["question"], row["context"], answers))
    else:
        raise DataFileError(f"{path}: not SQuAD JSON (no 'data') nor JSON Lines")
    if not examples:
        raise DataFileError(f"{path}: no questions found")
    if require_answers:
        unanswered = [e.id for e in examples if not e.answers]
        if len(unanswered) == len(examples):
            raise DataFileError(f"{path}: no gold answers; an evaluation file needs them")
        examples = [e for e in examples if e.answers]  # SQuAD v2 unanswerable questions are skipped
    return examples


# --------------------------------------------------------------------------------------------------
# Official SQuAD v1.1 metric


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(true_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], examples: Sequence[QAExample]) -> tuple[float, float]:
    """(exact match, F1) in percent, as the official v1.1 script computes them."""
    em = f1 = 0.0
    for example in examples:
        prediction = predictions.get(example.id, "")
        em += max(exact_match(prediction, a) for a in example.answers)
        f1 += max(f1_score(prediction, a) for a in example.answers)
    return 100.0 * em / len(examples), 100.0 * f1 / len(examples)
