"""Question/context windowing and answer-span decoding.

Written once and used by the Triton Python models (`qa_preprocess`, `qa_postprocess`) and by the
in-process reference pipeline, so served answers and reference answers come from the same code.

Conventions
- Windows follow Hugging Face semantics: consecutive windows of one context overlap by
  ``doc_stride`` tokens (``tokenizers``' ``stride``).
- Character offsets are Python string indices (Unicode code points) into the original context, so
  ``context[start:end] == answer``.
- ``offsets[w, t] == (-1, -1)`` marks tokens of window ``w`` that are not context tokens
  (``[CLS]``, question, ``[SEP]``, padding); only context tokens can start or end an answer.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tokenizers import Encoding, Tokenizer
from tokenizers.processors import TemplateProcessing


class InvalidInputError(ValueError):
    """A request the models cannot answer; the message names the problem (-> HTTP 400)."""


#: Window lengths the pre-processing pads to (the smallest that fits), up to ``max_seq_len``.
DEFAULT_SEQ_LEN_BUCKETS = (128, 192, 256, 320, 384)


def bucket_lengths(max_seq_len: int, candidates: Sequence[int] = DEFAULT_SEQ_LEN_BUCKETS) -> tuple[int, ...]:
    """The candidate buckets below ``max_seq_len``, then ``max_seq_len`` itself (384 -> 128,...,384)."""
    return tuple(b for b in sorted(candidates) if b < max_seq_len) + (max_seq_len,)


@dataclass(frozen=True)
class WindowingConfig:
    """How question/context pairs become BERT windows: defined once here, validated on construction.

    `qa_preprocess`'s parameters are these fields (``bertqa.triton.params.PreprocessParameters``),
    the committed and exported ``qa_preprocess`` configs are generated from them, and the exporter
    validates and evaluates with the variant's own instance.
    """

    max_seq_len: int = 384
    doc_stride: int = 128
    max_query_len: int = 64
    # Windows are padded to the smallest bucket that fits them, so the dynamic batcher can group
    # requests of equal shape without padding everything to max_seq_len.
    seq_len_buckets: tuple[int, ...] = DEFAULT_SEQ_LEN_BUCKETS
    # The most windows one request may need (README "Long documents": 512 windows of 384 tokens hold
    # roughly 70,000 words of English prose); beyond it the request is refused with HTTP 400.
    # BERT runs them in chunks of its own max_batch_size.
    max_windows: int = 512

    def __post_init__(self) -> None:
        if self.max_seq_len - self.max_query_len - 3 <= self.doc_stride:
            raise ValueError(
                f"max_seq_len ({self.max_seq_len}) - max_query_len ({self.max_query_len}) - 3 special "
                f"tokens must exceed doc_stride ({self.doc_stride}), or windows could not advance"
            )
        if not self.seq_len_buckets or max(self.seq_len_buckets) != self.max_seq_len:
            raise ValueError(
                f"seq_len_buckets {self.seq_len_buckets} must end at max_seq_len {self.max_seq_len}"
            )
        if list(self.seq_len_buckets) != sorted(set(self.seq_len_buckets)):
            raise ValueError(f"seq_len_buckets {self.seq_len_buckets} must be strictly increasing")
        if min(self.seq_len_buckets) < self.max_query_len + 4:
            raise ValueError(f"the smallest bucket {min(self.seq_len_buckets)} cannot hold a question")
        if self.max_windows < 1:
            raise ValueError("max_windows must be >= 1")

    @classmethod
    def for_max_seq_len(cls, max_seq_len: int, **overrides) -> "WindowingConfig":
        """The defaults fitted to another window length (a model with fewer positions, ``--seq-len``).

        384 gives exactly the defaults; shorter windows get a proportionally shorter question and stride.
        """
        if max_seq_len < 16:
            raise ValueError(f"max_seq_len {max_seq_len} is too short for question/context windows")
        query = min(cls.max_query_len, max_seq_len // 4)
        settings = dict(
            max_seq_len=max_seq_len,
            max_query_len=query,
            doc_stride=min(cls.doc_stride, (max_seq_len - query - 4) // 2),
            seq_len_buckets=tuple(b for b in bucket_lengths(max_seq_len) if b >= query + 4),
        )
        return cls(**{**settings, **overrides})


@dataclass(frozen=True)
class DecodingConfig:
    n_best: int = 20
    max_answer_len: int = 30
    # Widen an answer that starts or ends inside a word to the whole word, as the Hugging Face
    # question-answering pipeline does (its ``align_to_words``, on by default there too).
    align_to_words: bool = True


@dataclass
class Windows:
    """Fixed-length model inputs for a batch of question/context pairs (N windows, length L)."""

    input_ids: np.ndarray  # [N, L] int64
    attention_mask: np.ndarray  # [N, L] int64
    token_type_ids: np.ndarray  # [N, L] int64
    offsets: np.ndarray  # [N, L, 2] int64 character offsets into the pair's context, -1 if not context
    pair_index: np.ndarray  # [N] int64: which pair of the batch each window belongs to

    @property
    def num_windows(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class Span:
    """The best answer of one pair: character offsets into its context and a probability-like score."""

    start: int
    end: int
    score: float
    window: int = -1  # index of the window it came from (-1: no answer found)
    logit: float = field(default=-math.inf, compare=False)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Loads a `tokenizer.json`, making sure pairs are encoded as ``[CLS] q [SEP] c [SEP]``.

    A tokenizer saved by `tokenizers`' ``BertWordPieceTokenizer.save()`` has no post-processor;
    one saved by ``transformers``' ``save_pretrained`` has it. Both work here.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if tokenizer.post_processor is None:
        cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError(f"{path}: vocabulary has no [CLS]/[SEP] tokens; not a BERT tokenizer")
        tokenizer.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    return tokenizer


def _decode_text(value: bytes | str, name: str, index: int) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidInputError(
                f"{name}[{index}] is not valid UTF-8 (byte 0x{value[err.start]:02x} at position {err.start})"
            ) from None
    if not isinstance(value, str):
        raise InvalidInputError(f"{name}[{index}] must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(f"{name}[{index}] is empty")
    return value


def decode_texts(values: Sequence[bytes | str], name: str) -> list[str]:
    """UTF-8 decodes and validates one request input (a flat sequence of BYTES elements)."""
    return [_decode_text(v, name, i) for i, v in enumerate(values)]


class QAWindower:
    """Turns (question, context) pairs into overlapping fixed-length windows."""

    def __init__(self, tokenizer: Tokenizer, config: WindowingConfig = WindowingConfig()):
        self.config = config
        # Two tokenizer objects: truncation and padding settings are state of the object.
        self._question_tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._question_tokenizer.no_truncation()
        self._pair_tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._pair_tokenizer.enable_truncation(
            max_length=config.max_seq_len, stride=config.doc_stride, strategy="only_second"
        )
        self._pair_tokenizer.no_padding()
        pad_id = tokenizer.token_to_id("[PAD]")
        self._pad_id = 0 if pad_id is None else pad_id

    def _truncate_questions(self, questions: list[str]) -> list[str]:
        limit = self.config.max_query_len
        encodings = self._question_tokenizer.encode_batch(questions, add_special_tokens=False)
        truncated = []
        for question, encoding in zip(questions, encodings):
            if not encoding.ids:
                raise InvalidInputError(f"question {question[:40]!r} has no tokens")
            if len(encoding.ids) > limit:
                question = question[: encoding.offsets[limit - 1][1]]
            truncated.append(question)
        return truncated

    def encode_pairs(self, questions: Sequence[str], contexts: Sequence[str]) -> list[list[Encoding]]:
        """Tokenizes all pairs in one call (the Rust tokenizer parallelises it); windows per pair."""
        if len(questions) != len(contexts):
            raise InvalidInputError(
                f"got {len(questions)} questions but {len(contexts)} contexts; they must pair up"
            )
        if not questions:
            raise InvalidInputError("no question/context pairs in the request")
        questions = self._truncate_questions(list(questions))
        encodings = self._pair_tokenizer.encode_batch(list(zip(questions, contexts)))
        return [[encoding, *encoding.overflowing] for encoding in encodings]

    def assemble(self, per_pair: Sequence[Sequence[Encoding]]) -> Windows:
        """Pads the windows of one request's pairs to a common bucket length."""
        total = sum(len(w) for w in per_pair)
        if total > self.config.max_windows:
            longest = max(range(len(per_pair)), key=lambda i: len(per_pair[i]))
            raise InvalidInputError(
                f"the request needs {total} windows of {self.config.max_seq_len} tokens "
                f"(context[{longest}] alone needs {len(per_pair[longest])}), but at most "
                f"{self.config.max_windows} are allowed per request (qa_preprocess parameter max_windows; "
                f"README \"Long documents\"); shorten the context or split it over several requests"
            )
        longest_window = max(len(w.ids) for windows in per_pair for w in windows)
        length = next(b for b in sorted(self.config.seq_len_buckets) if b >= longest_window)

        input_ids = np.full((total, length), self._pad_id, dtype=np.int64)
        attention_mask = np.zeros((total, length), dtype=np.int64)
        token_type_ids = np.zeros((total, length), dtype=np.int64)
        offsets = np.full((total, length, 2), -1, dtype=np.int64)
        pair_index = np.empty(total, dtype=np.int64)
        row = 0
        for pair, windows in enumerate(per_pair):
            has_context = False
            for window in windows:
                n = len(window.ids)
                input_ids[row, :n] = window.ids
                attention_mask[row, :n] = window.attention_mask
                token_type_ids[row, :n] = window.type_ids
                is_context = np.fromiter((s == 1 for s in window.sequence_ids), dtype=bool, count=n)
                if is_context.any():
                    has_context = True
                    offsets[row, :n][is_context] = np.asarray(window.offsets, dtype=np.int64)[is_context]
                pair_index[row] = pair
                row += 1
            if not has_context:
                raise InvalidInputError(f"context[{pair}] has no tokens the model can read")
        return Windows(input_ids, attention_mask, token_type_ids, offsets, pair_index)

    def windows(self, questions: Sequence[str], contexts: Sequence[str]) -> Windows:
        return self.assemble(self.encode_pairs(questions, contexts))


def _log_softmax_at(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    masked = np.where(mask, logits, -np.inf)
    peak = masked.max()
    return masked - (peak + np.log(np.exp(masked - peak).sum()))


def best_span_in_window(
    start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray, config: DecodingConfig
) -> tuple[int, int, float, float] | None:
    """Best (start_token, end_token, logit_sum, probability) among the n-best starts and ends.

    Candidates are context tokens only, with end >= start and at most ``max_answer_len`` tokens,
    ranked by start + end logit (as the SQuAD/MLPerf reference does). The probability is
    softmax(start) * softmax(end) over the window's context tokens.
    """
    is_context = offsets[:, 0] >= 0
    count = int(is_context.sum())
    if count == 0:
        return None
    k = min(config.n_best, count)
    masked_start = np.where(is_context, start_logits, -np.inf)
    masked_end = np.where(is_context, end_logits, -np.inf)
    top_starts = np.argpartition(-masked_start, k - 1)[:k]
    top_ends = np.argpartition(-masked_end, k - 1)[:k]
    length = top_ends[None, :] - top_starts[:, None]
    valid = (length >= 0) & (length < config.max_answer_len)
    if not valid.any():
        return None
    scores = np.where(valid, masked_start[top_starts][:, None] + masked_end[top_ends][None, :], -np.inf)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    start, end = int(top_starts[i]), int(top_ends[j])
    log_p = _log_softmax_at(start_logits, is_context)[start] + _log_softmax_at(end_logits, is_context)[end]
    return start, end, float(scores[i, j]), float(np.exp(log_p))


# The text a window's offsets point into: window -> (text, context offset of the text's first character).
WindowText = Callable[[int], tuple[str, int]]


def pair_contexts(contexts: Sequence[str], pair_index: np.ndarray) -> WindowText:
    """``WindowText`` when the whole context of every pair is at hand (in-process decoding)."""
    return lambda window: (contexts[int(pair_index[window])], 0)


def decode_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    pair_index: np.ndarray,
    num_pairs: int,
    config: DecodingConfig = DecodingConfig(),
    *,
    window_text: WindowText | None,
) -> list[Span]:
    """The best span for each of ``num_pairs`` pairs over all of its windows.

    With ``window_text`` and ``config.align_to_words``, spans are widened to whole words
    (:func:`align_to_words`), as the server answers. ``window_text`` is required so that no caller
    gets token spans by forgetting it; ``None`` (token spans as the model chose them) must be explicit.
    """
    length = offsets.shape[1]
    if start_logits.shape != (offsets.shape[0], length) or end_logits.shape != start_logits.shape:
        raise ValueError(
            f"logits {start_logits.shape}/{end_logits.shape} do not match offsets {offsets.shape}"
        )
    best = [Span(0, 0, 0.0) for _ in range(num_pairs)]
    for window in range(offsets.shape[0]):
        found = best_span_in_window(start_logits[window], end_logits[window], offsets[window], config)
        if found is None:
            continue
        start_token, end_token, logit, probability = found
        pair = int(pair_index[window])
        if logit > best[pair].logit:
            best[pair] = Span(
                start=int(offsets[window, start_token, 0]),
                end=int(offsets[window, end_token, 1]),
                score=probability,
                window=window,
                logit=logit,
            )
    if window_text is None or not config.align_to_words:
        return best
    return [span if span.window < 0 else align_to_words(span, *window_text(span.window)) for span in best]


def is_word_char(char: str) -> bool:
    """Whether BERT's pre-tokenizer keeps ``char`` inside a word: not white space, punctuation
    (ASCII symbols count as punctuation), a control character, or a CJK ideograph (one word each)."""
    code = ord(char)
    if char.isspace() or 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return False
    category = unicodedata.category(char)
    return not (category.startswith("P") or category in ("Cc", "Cf") or _is_cjk(code))


def _is_cjk(code: int) -> bool:
    return any(first <= code <= last for first, last in _CJK_RANGES)


# The CJK Unified Ideographs blocks that BertPreTokenizer splits character by character.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def align_to_words(span: Span, text: str, text_start: int = 0) -> Span:
    """``span`` widened so that it neither starts nor ends inside a word of ``text``.

    ``text`` holds the context from character ``text_start`` on (a window's text in the server,
    the whole context in process). A word is what BERT's pre-tokenizer calls one, so the result is
    what the Hugging Face pipeline's ``token_to_word`` / ``word_to_chars`` give: "##" pieces and
    sub-word splits grow to their word, while punctuation and white space stay boundaries.
    """
    start, end = span.start - text_start, span.end - text_start
    if not 0 <= start < end <= len(text):
        return span
    while start > 0 and is_word_char(text[start - 1]) and is_word_char(text[start]):
        start -= 1
    while end < len(text) and is_word_char(text[end]) and is_word_char(text[end - 1]):
        end += 1
    return replace(span, start=start + text_start, end=end + text_start)


def window_text_spans(offsets: np.ndarray) -> np.ndarray:
    """[N, 2] character range of the context covered by each window's context tokens."""
    is_context = offsets[:, :, 0] >= 0
    starts = np.where(is_context, offsets[:, :, 0], np.iinfo(np.int64).max).min(axis=1)
    ends = np.where(is_context, offsets[:, :, 1], -1).max(axis=1)
    return np.stack([starts, ends], axis=1)


@dataclass(frozen=True)
class Answer:
    """What `bert_qa` returns for one question/context pair."""

    text: str
    score: float
    start: int
    end: int


def answers_from_spans(spans: Sequence[Span], contexts: Sequence[str]) -> list[Answer]:
    return [Answer(c[s.start : s.end], s.score, s.start, s.end) for s, c in zip(spans, contexts)]
