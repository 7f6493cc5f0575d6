"""Windowing and span decoding (bertqa.text), shared by the Triton models and the reference pipeline."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from bertqa.text import (
    DecodingConfig,
    InvalidInputError,
    QAWindower,
    WindowingConfig,
    answers_from_spans,
    decode_spans,
    decode_texts,
    load_tokenizer,
    pair_contexts,
    window_text_spans,
)

WORDS = "the a of in is was who where when what river city born founded zoe zurich cafe naive alpha beta".split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    """A real WordPiece tokenizer (saved without a post-processor, as BertWordPieceTokenizer.save does)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "'"]
    vocab += [str(d) for d in range(10)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += ["##" + v for v in vocab[9:]] + WORDS
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return load_tokenizer(path)


def small(**overrides) -> WindowingConfig:
    settings = dict(max_seq_len=32, doc_stride=8, max_query_len=8, seq_len_buckets=(16, 32), max_windows=64)
    settings.update(overrides)
    return WindowingConfig(**settings)


def one_hot_logits(windows, pick_start, pick_end):
    """Logits that put all mass on the chosen (window, token) start and end."""
    shape = windows.input_ids.shape
    start, end = np.full(shape, -10.0, np.float32), np.full(shape, -10.0, np.float32)
    start[pick_start] = 10.0
    end[pick_end] = 10.0
    return start, end


def context_tokens(windows, w):
    return np.flatnonzero(windows.offsets[w, :, 0] >= 0)


def test_pairs_are_cls_question_sep_context_sep(tokenizer):
    w = QAWindower(tokenizer, small()).windows(["who is zoe?"], ["zoe was born in zurich."])
    ids = w.input_ids[0]
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    assert ids[0] == cls_id and (ids == sep_id).sum() == 2
    assert w.input_ids.shape == (1, 16)  # padded to the smallest bucket that fits, not 32
    assert w.attention_mask[0].sum() == np.count_nonzero(ids)
    assert set(w.token_type_ids[0][w.offsets[0, :, 0] >= 0]) == {1}


def test_long_context_windows_overlap_by_doc_stride(tokenizer):
    context = " ".join(WORDS * 3)
    w = QAWindower(tokenizer, small()).windows(["who?"], [context])
    assert w.num_windows > 2 and w.input_ids.shape[1] == 32
    for a in range(w.num_windows - 1):
        first = w.offsets[a][context_tokens(w, a)][:, 0].tolist()
        second = w.offsets[a + 1][context_tokens(w, a + 1)][:, 0].tolist()
        assert first[-8:] == second[:8]  # doc_stride tokens shared between neighbours


def test_answer_in_last_window(tokenizer):
    context = " ".join(WORDS * 3) + " alpha river"
    w = QAWindower(tokenizer, small()).windows(["where?"], [context])
    last = w.num_windows - 1
    tokens = context_tokens(w, last)
    start, end = one_hot_logits(w, (last, tokens[-2]), (last, tokens[-1]))
    (span,) = decode_spans(start, end, w.offsets, w.pair_index, 1, window_text=None)
    assert context[span.start : span.end] == "alpha river"
    assert span.window == last and span.score > 0.99


def test_answer_across_window_boundary_is_found_whole_in_next_window(tokenizer):
    context = " ".join(WORDS * 3)
    w = QAWindower(tokenizer, small()).windows(["what?"], [context])
    first_tokens = context_tokens(w, 0)
    # The answer starts in the last two tokens of window 0 and ends past it: only window 1 holds it.
    start_char = int(w.offsets[0, first_tokens[-2], 0])
    second = context_tokens(w, 1)
    s_tok = second[np.flatnonzero(w.offsets[1, second, 0] == start_char)[0]]
    start, end = one_hot_logits(w, (1, s_tok), (1, s_tok + 4))
    start[0, first_tokens[-2]] = 9.0  # window 0 prefers the same start but cannot end it there
    (span,) = decode_spans(start, end, w.offsets, w.pair_index, 1, window_text=None)
    assert span.window == 1 and span.start == start_char
    assert context[span.start : span.end] == " ".join(context[start_char:].split()[:5])


def test_end_before_start_and_too_long_spans_are_rejected(tokenizer):
    context = " ".join(WORDS)
    w = QAWindower(tokenizer, small(max_seq_len=64, seq_len_buckets=(64,))).windows(["who?"], [context])
    tokens = context_tokens(w, 0)
    start, end = one_hot_logits(w, (0, tokens[10]), (0, tokens[3]))  # end before start
    start[0, tokens[2]] = 5.0
    (span,) = decode_spans(start, end, w.offsets, w.pair_index, 1, window_text=None)
    assert span.start == w.offsets[0, tokens[2], 0] and span.end == w.offsets[0, tokens[3], 1]
    start, end = one_hot_logits(w, (0, tokens[0]), (0, tokens[15]))
    (span,) = decode_spans(start, end, w.offsets, w.pair_index, 1, DecodingConfig(max_answer_len=4), window_text=None)
    assert span.window == -1 or (span.end - span.start) < len(context)  # no 16-token answer
    assert span.window == -1 or np.searchsorted(w.offsets[0, tokens, 0], span.end) - np.searchsorted(
        w.offsets[0, tokens, 0], span.start
    ) <= 4


def test_question_tokens_are_never_answers(tokenizer):
    w = QAWindower(tokenizer, small()).windows(["zoe zurich"], ["alpha beta"])
    start, end = one_hot_logits(w, (0, 1), (0, 2))  # the question's tokens
    (span,) = decode_spans(start, end, w.offsets, w.pair_index, 1, window_text=None)
    assert "alpha beta"[span.start : span.end] in ("alpha", "beta", "alpha beta")


def test_offsets_survive_accents_case_and_extra_whitespace(tokenizer):
    context = "  Zoë   was\tborn in  ZÜRICH.\n Café, naïve!  "
    w = QAWindower(tokenizer, small()).windows(["where was zoe born?"], [context])
    tokens = context_tokens(w, 0)
    pieces = [context[a:b] for a, b in w.offsets[0, tokens]]
    assert pieces[:6] == ["Zoë", "was", "born", "in", "ZÜRICH", "."]
    assert "Café" in pieces and "naïve" in pieces
    zurich = pieces.index("ZÜRICH")
    start, end = one_hot_logits(w, (0, tokens[zurich]), (0, tokens[zurich]))
    (answer,) = answers_from_spans(decode_spans(start, end, w.offsets, w.pair_index, 1,
                                                    window_text=pair_contexts([context], w.pair_index)), [context])
    assert answer.text == "ZÜRICH" and context[answer.start : answer.end] == "ZÜRICH"


def test_several_pairs_in_one_request(tokenizer):
    contexts = ["alpha beta.", " ".join(WORDS * 3), "zoe was born in zurich."]
    w = QAWindower(tokenizer, small()).windows(["who?", "what?", "where?"], contexts)
    counts = np.bincount(w.pair_index)
    assert counts[0] == 1 and counts[1] > 1 and counts[2] == 1
    assert list(w.pair_index) == sorted(w.pair_index)
    picks = []
    for pair, word in ((0, "beta"), (1, "river"), (2, "zurich")):
        rows = np.flatnonzero(w.pair_index == pair)
        row = rows[-1]
        token = next(t for t in context_tokens(w, row) if contexts[pair][slice(*w.offsets[row, t])] == word)
        picks.append((row, token))
    start = np.full(w.input_ids.shape, -10.0, np.float32)
    end = start.copy()
    for row, token in picks:
        start[row, token] = end[row, token] = 10.0
    answers = answers_from_spans(decode_spans(start, end, w.offsets, w.pair_index, 3,
                                                window_text=pair_contexts(contexts, w.pair_index)), contexts)
    assert [a.text for a in answers] == ["beta", "river", "zurich"]


def test_window_text_spans_cover_context_tokens(tokenizer):
    context = " ".join(WORDS * 2)
    w = QAWindower(tokenizer, small()).windows(["who?"], [context])
    spans = window_text_spans(w.offsets)
    for row in range(w.num_windows):
        tokens = context_tokens(w, row)
        assert spans[row, 0] == w.offsets[row, tokens[0], 0] and spans[row, 1] == w.offsets[row, tokens[-1], 1]


def test_long_questions_are_truncated_to_max_query_len(tokenizer):
    question = " ".join(WORDS)  # 20 tokens > max_query_len 8
    w = QAWindower(tokenizer, small()).windows([question], ["alpha beta"])
    assert w.token_type_ids[0].tolist().index(1) == 1 + 8 + 1  # [CLS] 8 question tokens [SEP]


@pytest.mark.parametrize(
    "questions, contexts, message",
    [
        ([""], ["alpha"], "question[0] is empty"),
        (["who?"], ["   \n"], "context[0] is empty"),
        ([b"who\xff?"], ["alpha"], "question[0] is not valid UTF-8 (byte 0xff at position 3)"),
    ],
)
def test_bad_texts_name_the_problem(questions, contexts, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        decode_texts(questions, "question")
        decode_texts(contexts, "context")


def test_too_many_windows_is_an_input_error(tokenizer):
    windower = QAWindower(tokenizer, small(max_windows=3))
    with pytest.raises(InvalidInputError, match=r"needs \d+ windows .* at most 3"):
        windower.windows(["who?"], [" ".join(WORDS * 5)])


def test_mismatched_pairs_and_unreadable_context(tokenizer):
    windower = QAWindower(tokenizer, small())
    with pytest.raises(InvalidInputError, match="2 questions but 1 contexts"):
        windower.windows(["a", "b"], ["alpha"])
    with pytest.raises(InvalidInputError, match="context\\[0\\] has no tokens"):
        windower.windows(["who?"], ["\u200b\u200b"])


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(doc_stride=30), "must exceed doc_stride"),
        (dict(seq_len_buckets=(16,)), "must end at max_seq_len"),
        (dict(seq_len_buckets=(8, 32)), "cannot hold a question"),
    ],
)
def test_inconsistent_windowing_configs_are_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        small(**settings)


def test_windowing_defined_once_fits_other_window_lengths():
    from bertqa.text import bucket_lengths

    assert WindowingConfig.for_max_seq_len(384) == WindowingConfig()
    assert bucket_lengths(256) == (128, 192, 256) and bucket_lengths(200) == (128, 192, 200)
    short = WindowingConfig.for_max_seq_len(128)
    assert (short.max_query_len, short.doc_stride, short.seq_len_buckets) == (32, 46, (128,))
    assert WindowingConfig.for_max_seq_len(512, max_windows=9).seq_len_buckets[-2:] == (384, 512)
    with pytest.raises(ValueError, match="strictly increasing"):
        WindowingConfig(seq_len_buckets=(256, 128, 384))
