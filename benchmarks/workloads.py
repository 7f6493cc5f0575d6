"""The inputs every system under test gets: the same question/context pairs, as plain strings.

* ``fixed``: pairs whose encoding ``[CLS] question [SEP] context [SEP]`` is exactly ``seq_len``
  tokens (one full window each), so sequences/s and FLOPs per sequence are exact.
* ``mix``: the built-in SQuAD-like set of ``bertqa bench`` (contexts mostly 60-250 words, an 8 %
  tail of two-three-window paragraphs), for the sequence-length bucket comparison.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from bertqa.client.data import builtin_examples
from bertqa.text import load_tokenizer


@dataclass(frozen=True)
class Workload:
    name: str
    questions: list[str]
    contexts: list[str]
    seq_len: int | None  # every pair is one window of exactly this many tokens (None: a length mix)

    def __len__(self) -> int:
        return len(self.questions)

    def batches(self, batch_size: int = 1) -> list[tuple[list[str], list[str]]]:
        n = len(self)
        out = []
        for k in range(n):
            rows = [(k * batch_size + j) % n for j in range(batch_size)]
            out.append(([self.questions[r] for r in rows], [self.contexts[r] for r in rows]))
        return out


def fixed_length_workload(tokenizer_file: str | Path, count: int = 64, seq_len: int = 384,
                          max_query_len: int = 64, seed: int = 0) -> Workload:
    """``count`` pairs of exactly ``seq_len`` tokens: a SQuAD-like context extended with further
    paragraphs, then cut at the last token that fits (the question keeps its fact sentence first)."""
    tokenizer = load_tokenizer(tokenizer_file)
    pool = builtin_examples(max(4 * count, 64), seed)
    rng = random.Random(seed)
    questions, contexts = [], []
    for example in pool[:count]:
        question_ids = tokenizer.encode(example.question, add_special_tokens=False).ids
        if len(question_ids) > max_query_len:
            raise ValueError("built-in questions are short; this cannot happen")
        budget = seq_len - 3 - len(question_ids)
        context = example.context
        while len(tokenizer.encode(context, add_special_tokens=False).ids) < budget:
            context += " " + rng.choice(pool).context
        offsets = tokenizer.encode(context, add_special_tokens=False).offsets
        context = context[: offsets[budget - 1][1]]
        length = len(tokenizer.encode(example.question, context).ids)
        if length != seq_len:  # a word cut in two can re-tokenize differently: trim further
            while length > seq_len:
                context = context[: context.rstrip().rfind(" ")]
                length = len(tokenizer.encode(example.question, context).ids)
        questions.append(example.question)
        contexts.append(context)
    return Workload(f"fixed-{seq_len}", questions, contexts, seq_len)


def mix_workload(count: int = 256, seed: int = 0) -> Workload:
    examples = builtin_examples(count, seed)
    return Workload("squad-like mix", [e.question for e in examples], [e.context for e in examples], None)


def padding_flops(tokenizer_file: str | Path, workload: Workload, shape, bucket_sets: dict[str, tuple[int, ...]],
                  max_seq_len: int = 384, doc_stride: int = 128, max_query_len: int = 64) -> dict[str, float]:
    """Model FLOPs to answer the whole workload when windows are padded to each bucket set
    (``"exact"``: no padding at all, the bound any bucketing can reach)."""
    from benchmarks.flops import flops_per_sequence
    from bertqa.text import QAWindower, WindowingConfig

    windower = QAWindower(load_tokenizer(tokenizer_file),
                          WindowingConfig(max_seq_len, doc_stride, max_query_len, (max_seq_len,)))
    per_pair = windower.encode_pairs(workload.questions, workload.contexts)
    out = {}
    for label, buckets in {**bucket_sets, "exact": ()}.items():
        total = 0.0
        for windows in per_pair:
            longest = max(len(w.ids) for w in windows)  # a request's windows share one length
            length = next((b for b in sorted(buckets) if b >= longest), longest) if buckets else longest
            total += len(windows) * flops_per_sequence(shape, length)
        out[label] = total
    return out
