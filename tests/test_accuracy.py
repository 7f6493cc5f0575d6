"""benchmarks/accuracy.py (`make eval`): resumable passes, the targets' verdicts, and the whole run end to end on
the committed dev slice (no download)."""

from __future__ import annotations

import json

import pytest

from benchmarks.accuracy import PassRecord, PassStore, main, run_pass
from benchmarks.accuracy_report import targets_table
from bertqa.squad import QAExample, dev_slice_path, read_examples

EXAMPLES = [QAExample(f"q{i}", f"question {i}?", f"context {i}.", (f"answer {i}",)) for i in range(10)]


def test_an_interrupted_pass_resumes_with_the_unanswered_questions(tmp_path):
    store = PassStore(tmp_path)
    asked: list[list[str]] = []

    def flaky(chunk):
        asked.append([e.id for e in chunk])
        if len(asked) == 2:
            raise KeyboardInterrupt
        return {"answer": {e.id: e.answers[0] for e in chunk}, "other": {e.id: "x" for e in chunk}}

    with pytest.raises(KeyboardInterrupt):
        run_pass(store, "sys", "a system", EXAMPLES, flaky, block=4)
    saved = store.load("sys")
    assert list(saved.predictions) == ["q0", "q1", "q2", "q3"] and not saved.complete and saved.seconds > 0

    record = run_pass(store, "sys", "a system", EXAMPLES, flaky, block=4)
    assert asked[2:] == [["q4", "q5", "q6", "q7"], ["q8", "q9"]]
    assert record.complete and record.predictions == {e.id: e.answers[0] for e in EXAMPLES}
    assert record.decodings["other"] == {e.id: "x" for e in EXAMPLES}
    assert store.load("sys") == record


def _record(key: str, right: int) -> PassRecord:
    """A complete pass that answers the first ``right`` of the examples correctly, the rest wrongly."""
    answers = {e.id: e.answers[0] if n < right else "wrong" for n, e in enumerate(EXAMPLES)}
    return PassRecord(key, key, len(EXAMPLES), answers, seconds=1.0)


def _verdicts(passes) -> dict[str, str]:
    rows = targets_table(passes, EXAMPLES)[2:]
    return {row.split(" | ")[0].lstrip("| "): row.rsplit("**", 2)[-2] for row in rows}


def test_target_verdicts_follow_the_figures():
    passes = {"fp32-http": _record("fp32-http", 10), "pytorch": _record("pytorch", 10),
              "int8-http": _record("int8-http", 10)}
    verdicts = _verdicts(passes)
    assert set(verdicts.values()) == {"PASS"} and len(verdicts) == 2
    passes["int8-http"] = _record("int8-http", 9)  # F1 90 of 100: below 99 %
    passes["pytorch"] = _record("pytorch", 9)  # served FP32 10 F1 points away from PyTorch
    assert set(_verdicts(passes).values()) == {"FAIL"}


@pytest.mark.slow
def test_make_eval_end_to_end_on_the_dev_slice(tmp_path):
    """The whole run on 12 real dev questions: INT8 export, tritonserver over HTTP and gRPC, PyTorch, HF."""
    output = tmp_path / "ACCURACY.md"
    args = ["--data", str(dev_slice_path()), "--limit", "12", "--hf-questions", "6", "--work-dir", str(tmp_path / "work"),
            "--output", str(output)]
    assert main(args) == 0
    text = output.read_text()
    answered = [line for line in text.splitlines() if line.startswith(("| Triton", "| in-process")) and "| 12 |" in line]
    assert len(answered) == 5 and "(partial" not in text  # four served passes and PyTorch, all answered
    assert "**FAIL**" not in text and text.count("**PASS**") == 4
    assert "## Whole-word answers" in text and "## Hugging Face pipeline" in text
    assert output.with_suffix(".png").is_file()

    run_dir = next((tmp_path / "work").glob("*-12q"))
    served, reference = (json.loads((run_dir / "passes" / f"{key}.json").read_text())["predictions"]
                         for key in ("fp32-grpc", "pytorch"))
    assert list(served) == [e.id for e in read_examples(dev_slice_path())[:12]]
    assert served == reference and any(served.values())  # served answers are the PyTorch reference's
    before = output.stat().st_mtime_ns
    assert main(args) == 0  # everything saved: nothing is answered again, the report is rewritten
    assert output.stat().st_mtime_ns > before


def test_targets_of_a_run_cut_short_are_judged_on_the_questions_answered():
    partial = _record("pytorch", 10)
    partial.predictions = dict(list(partial.predictions.items())[:5])
    rows = targets_table({"fp32-http": _record("fp32-http", 5), "pytorch": partial}, EXAMPLES)[2:]
    assert len(rows) == 1 and "100.00 vs 100.00" in rows[0] and "on the 5 questions both answered" in rows[0]


def test_a_pass_being_answered_elsewhere_is_skipped(tmp_path):
    store = PassStore(tmp_path)
    with store.claim("sys") as first:
        assert first
        with PassStore(tmp_path).claim("sys") as second:  # another process would get the same answer
            assert not second
        assert run_pass(store, "other", "t", EXAMPLES[:1], lambda c: {"answer": {"q0": "a"}}).complete
    with store.claim("sys") as again:
        assert again
