"""Answers are whole words (bertqa.text.align_to_words), as the Hugging Face pipeline returns them.

Checked against the real demo tokenizer: the widened span of any token range must equal what
``tokenizers`` itself calls that range's words (``word_ids`` / ``word_to_chars``, the calls the
Hugging Face question-answering pipeline makes), and a span the model starts or ends on a "##"
piece comes back as the whole word in decoding, unless ``align_to_words`` is off.
"""

from __future__ import annotations

import numpy as np
import pytest

from bertqa.demo import DEMO_DIR
from bertqa.text import (
    DecodingConfig,
    QAWindower,
    Span,
    WindowingConfig,
    align_to_words,
    answers_from_spans,
    decode_spans,
    load_tokenizer,
    pair_contexts,
)
from bertqa.triton.params import ParameterError, PostprocessParameters, parse_parameters

CONTEXTS = (
    "The Normans conquered Zürich in 1,066 A.D.; Tchaikovskyesque well-known symphonies (e.g. No. 6) "
    "premiered in 東京 before photosynthesizing audiences.",
    "Super Bowl 50 was an American football game to determine the champion of the National Football League "
    "(NFL) for the 2015 season. The Denver Broncos defeated the Carolina Panthers 24–10 at Levi's Stadium.",
    "Naïve café-owners' réplicas cost $3.50/kg — or 3½ francs — in Genève's marketplace\u00a0today.",
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEMO_DIR / "tokenizer.json")


def word_chars(encoding, token: int) -> tuple[int, int]:
    return encoding.word_to_chars(encoding.word_ids[token])


@pytest.mark.parametrize("context", CONTEXTS)
def test_widened_spans_equal_the_tokenizers_words(tokenizer, context):
    encoding = tokenizer.encode(context, add_special_tokens=False)
    count = len(encoding.ids)
    checked = 0
    for first in range(count):
        for last in range(first, min(first + 4, count)):
            span = Span(encoding.offsets[first][0], encoding.offsets[last][1], 0.5, window=0)
            aligned = align_to_words(span, context)
            expected = (word_chars(encoding, first)[0], word_chars(encoding, last)[1])
            assert (aligned.start, aligned.end) == expected, (context[span.start:span.end], encoding.tokens[first:last + 1])
            checked += 1
    assert checked > 3 * count - 6


def test_contexts_contain_words_split_into_pieces(tokenizer):
    """Guards the test above: it means nothing if no word of the contexts is split into pieces."""
    pieces = [t for c in CONTEXTS for t in tokenizer.encode(c, add_special_tokens=False).tokens if t.startswith("##")]
    assert len(pieces) >= 5


def test_window_text_that_begins_inside_a_word(tokenizer):
    """The server only has the window's text: widening stops at its edges instead of reading outside."""
    context = CONTEXTS[0]
    begin = context.index("chaikovsky")
    text = context[begin:]
    span = Span(begin + 2, begin + 5, 0.5, window=0)
    aligned = align_to_words(span, text, text_start=begin)
    assert context[aligned.start:aligned.end] == "chaikovskyesque"


def test_span_outside_its_text_is_left_alone():
    span = Span(40, 45, 0.5, window=0)
    assert align_to_words(span, "short text") == span


def _decode_on_piece(tokenizer, align: bool):
    context = "Classical music: Tchaikovskyesque symphonies premiered in Moscow."
    windower = QAWindower(tokenizer, WindowingConfig(max_seq_len=64, doc_stride=16, max_query_len=16,
                                                     seq_len_buckets=(64,)))
    windows = windower.windows(["What kind of symphonies?"], [context])
    tokens = [windower._pair_tokenizer.id_to_token(i) for i in windows.input_ids[0]]
    piece = next(t for t, name in enumerate(tokens) if name.startswith("##") and windows.offsets[0, t, 0] >= 0)
    start = np.full(windows.input_ids.shape, -10.0, np.float32)
    end = start.copy()
    start[0, piece] = end[0, piece] = 10.0  # the model's best span is one "##" piece
    config = DecodingConfig(align_to_words=align)
    spans = decode_spans(start, end, windows.offsets, windows.pair_index, 1, config,
                         window_text=pair_contexts([context], windows.pair_index))
    return answers_from_spans(spans, [context])[0], tokens[piece]


def test_decoding_widens_a_piece_to_its_word(tokenizer):
    answer, _ = _decode_on_piece(tokenizer, align=True)
    assert answer.text == "Tchaikovskyesque"


def test_decoding_keeps_the_piece_when_alignment_is_off(tokenizer):
    answer, piece = _decode_on_piece(tokenizer, align=False)
    assert answer.text.lower() == piece[2:]


@pytest.mark.parametrize("raw, expected", [("true", True), ("False", False), ("0", False), ("on", True)])
def test_align_to_words_is_a_typed_postprocess_parameter(raw, expected):
    config = {"name": "qa_postprocess", "parameters": {"align_to_words": {"string_value": raw}}}
    assert parse_parameters(config, PostprocessParameters).decoding().align_to_words is expected


def test_unreadable_align_to_words_is_an_error():
    config = {"name": "qa_postprocess", "parameters": {"align_to_words": {"string_value": "sometimes"}}}
    with pytest.raises(ParameterError, match="align_to_words"):
        parse_parameters(config, PostprocessParameters)


def test_decode_spans_requires_the_window_text_argument(tokenizer):
    """No caller can get token spans by forgetting the text: it must pass window_text (None explicitly)."""
    windows = QAWindower(tokenizer, WindowingConfig(max_seq_len=64, doc_stride=16, max_query_len=16,
                                                    seq_len_buckets=(64,))).windows(["who?"], ["alpha beta"])
    logits = np.zeros(windows.input_ids.shape, np.float32)
    with pytest.raises(TypeError, match="window_text"):
        decode_spans(logits, logits, windows.offsets, windows.pair_index, 1)


def test_benchmark_reference_answers_are_whole_words_like_the_server(tokenizer):
    """benchmarks/measure.py decodes in-process for the throughput ceiling; it widens like qa_postprocess."""
    from types import SimpleNamespace

    from benchmarks.measure import reference_answers

    context = "Classical music: Tchaikovskyesque symphonies premiered in Moscow."
    windower = QAWindower(tokenizer, WindowingConfig(max_seq_len=64, doc_stride=16, max_query_len=16,
                                                     seq_len_buckets=(64,)))

    def piece_logits(input_ids, attention_mask, token_type_ids):
        tokens = [tokenizer.id_to_token(int(i)) for i in input_ids[0]]
        piece = next(t for t, name in enumerate(tokens) if name.startswith("##") and token_type_ids[0, t] == 1)
        start = np.full(input_ids.shape, -10.0, np.float32)
        start[0, piece] = 10.0  # the model's best span is one "##" piece
        return start, start.copy()

    pipeline = SimpleNamespace(windower=windower, decoding=DecodingConfig(), logits=piece_logits)
    (answer,), num_windows = reference_answers(pipeline, ["What kind of symphonies?"], [context])
    assert answer.text == "Tchaikovskyesque" and num_windows == 1
