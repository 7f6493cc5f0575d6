"""benchmarks.long_documents: the contexts it builds and the linearity figure it reports (no server)."""

from __future__ import annotations

import pytest

from benchmarks.long_documents import Point, linear_fit, long_context, markdown


@pytest.mark.parametrize("words", [5000, 40000])
def test_long_context_is_real_prose_of_the_requested_length_with_the_answer_inside(words):
    question, context, answers = long_context(words)
    count = len(context.split())
    assert words <= count < words + 400
    assert any(a in context for a in answers) and question.endswith("?")
    assert context.count(answers[0]) >= 1


def test_linear_fit_and_report():
    points = [Point(w, n, [0.05 + 0.02 * n], "x", ["x"]) for w, n in ((5000, 30), (10000, 60), (40000, 240))]
    slope, intercept, r2 = linear_fit(points)
    assert slope == pytest.approx(0.02) and intercept == pytest.approx(0.05) and r2 == pytest.approx(1.0)
    text = markdown(points, "127.0.0.1:8000", "bert_qa", "long.png")
    assert "| 40,000 | 240 |" in text and "20.0 ms per window" in text and "R² = 1.0000" in text
