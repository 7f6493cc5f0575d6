"""bertqa.squad: data files and the official SQuAD v1.1 metric."""

from __future__ import annotations

import json

import pytest

from bertqa.squad import DataFileError, QAExample, normalize_answer, read_examples, squad_scores


def test_normalization_matches_the_official_script():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple a day") == "apple day"


def test_scores_take_the_best_gold_answer():
    examples = [QAExample("1", "q", "c", ("Paris", "the city of Paris")), QAExample("2", "q", "c", ("1889",))]
    assert squad_scores({"1": "city of Paris", "2": "1889"}, examples) == (100.0, 100.0)
    em, f1 = squad_scores({"1": "Paris France", "2": "in 1889"}, examples)
    assert em == 0.0 and f1 == pytest.approx(100 * (2 / 3 + 2 / 3) / 2)


def test_jsonl_with_one_record_and_squad_json(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"question": "Who?", "context": "Ann.", "answers": ["Ann"]}) + "\n")
    (example,) = read_examples(one)
    assert example.answers == ("Ann",) and example.question == "Who?"
    squad = tmp_path / "dev.json"
    squad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "Ann.", "qas": [
        {"id": "x", "question": "Who?", "answers": [{"text": "Ann", "answer_start": 0}]}]}]}]}))
    assert read_examples(squad)[0].id == "x"


@pytest.mark.parametrize(
    "content, message",
    [('{"question": "Who?"}', "record 1 needs 'question' and 'context'"), ("42", "not SQuAD JSON")],
)
def test_bad_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataFileError, match=message):
        read_examples(path)
