"""ONNX export (parity with PyTorch on real windows), FP16 weight storage, INT8, SQuAD metric."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch

from bertqa.export.checkpoints import load_checkpoint
from bertqa.export.evaluation import QAExample, normalize_answer, read_examples, squad_scores
from bertqa.export.onnx import (
    DEFAULT_SAMPLE_PAIRS,
    ExportValidationError,
    export_onnx,
    ort_session,
    validation_batches,
    validation_windowing,
)
from bertqa.export.quantize import (
    Int8AccuracyWarning,
    calibration_batches,
    compare_int8,
    quantize_int8,
)
from bertqa.text import QAWindower, decode_spans, load_tokenizer
from export_helpers import write_hf_checkpoint

QUIET = {"log": None}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder, _ = write_hf_checkpoint(tmp_path_factory.mktemp("hf") / "ckpt")
    ckpt = load_checkpoint(folder)
    tokenizer = ckpt.save_tokenizer(folder / "serving_tokenizer.json")
    return ckpt, tokenizer


@pytest.fixture(scope="module")
def fp32_onnx(checkpoint, tmp_path_factory):
    ckpt, tokenizer = checkpoint
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    report = export_onnx(ckpt.model, tokenizer, out, **QUIET)
    return out, report


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    """A small SQuAD v1.1 file (answers the random tiny model will mostly miss: F1 is just a number)."""
    pairs = [
        ("what is the capital of france?", "paris is the capital of france.", "paris", 0),
        ("who wrote the theory?", "albert einstein wrote the theory of general relativity.", "albert einstein", 0),
        ("how many crates did the quest carry?", "the quest did carry 120 crates of supplies.", "120", 22),
    ]
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": [{"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": s}]}]}
        for i, (q, c, a, s) in enumerate(pairs)]}]}
    path = tmp_path_factory.mktemp("data") / "squad.json"
    path.write_text(json.dumps(data))
    return path


def test_export_matches_pytorch_on_real_windows(fp32_onnx, checkpoint):
    path, report = fp32_onnx
    assert report.path == path and report.size_bytes == path.stat().st_size
    assert report.max_abs_diff_start < 1e-4 and report.max_abs_diff_end < 1e-4
    assert report.opset == 17 and report.ir_version <= 10
    model = onnx.load(str(path))
    names = [(i.name, [d.dim_param for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
    assert names == [(n, ["batch", "sequence"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    assert [o.name for o in model.graph.output] == ["start_logits", "end_logits"]
    # No temporary files left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]


def test_validation_inputs_cover_batches_lengths_and_multiple_windows(checkpoint):
    _, tokenizer = checkpoint
    batches = validation_batches(tokenizer, None, validation_windowing(512))
    lengths = {b.input_ids.shape[1] for b in batches}
    assert len(lengths) >= 2 and max(lengths) == 384
    long_pair_windows = QAWindower(load_tokenizer(tokenizer), validation_windowing(512)).windows(
        [DEFAULT_SAMPLE_PAIRS[-1][0]], [DEFAULT_SAMPLE_PAIRS[-1][1]]).num_windows
    assert long_pair_windows >= 2
    assert any(b.num_windows > 1 for b in batches)


def test_onnx_runs_answers_like_pytorch(fp32_onnx, checkpoint):
    ckpt, tokenizer = checkpoint
    windower = QAWindower(load_tokenizer(tokenizer), validation_windowing(512))
    w = windower.windows(["what is the capital of france?"], ["paris is the capital of france."])
    start, end = ort_session(fp32_onnx[0]).run(None, {k: getattr(w, k) for k in ("input_ids", "attention_mask", "token_type_ids")})
    with torch.no_grad():
        ref = ckpt.model(input_ids=torch.from_numpy(w.input_ids), attention_mask=torch.from_numpy(w.attention_mask),
                         token_type_ids=torch.from_numpy(w.token_type_ids))
    # Token spans (window_text=None): the two models must pick the same tokens, not merely the same words.
    ours = decode_spans(start, end, w.offsets, w.pair_index, 1, window_text=None)
    theirs = decode_spans(ref.start_logits.numpy(), ref.end_logits.numpy(), w.offsets, w.pair_index, 1, window_text=None)
    assert (ours[0].start, ours[0].end) == (theirs[0].start, theirs[0].end)


def test_failed_validation_writes_nothing_and_keeps_the_old_file(checkpoint, tmp_path):
    ckpt, tokenizer = checkpoint
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous model")
    with pytest.raises(ExportValidationError, match="was not written"):
        export_onnx(ckpt.model, tokenizer, out, atol=1e-12, **QUIET)
    assert out.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_fp16_storage_refused_when_lossy(checkpoint, tmp_path):
    ckpt, tokenizer = checkpoint
    with pytest.raises(ValueError, match=r"weight_storage='fp16' would change .*not exactly representable in FP16"):
        export_onnx(ckpt.model, tokenizer, tmp_path / "m.onnx", weight_storage="fp16", **QUIET)
    assert not list(tmp_path.iterdir())


def test_fp16_storage_when_lossless_halves_the_file(fp32_onnx, tmp_path):
    folder, _ = write_hf_checkpoint(tmp_path / "ckpt", seed=3)
    ckpt = load_checkpoint(folder)
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.copy_(p.half().float())
    tokenizer = ckpt.save_tokenizer(tmp_path / "tok.json")
    out = tmp_path / "half.onnx"
    report = export_onnx(ckpt.model, tokenizer, out, weight_storage="fp16", **QUIET)
    assert report.max_abs_diff_start < 1e-4
    fp32 = export_onnx(ckpt.model, tokenizer, tmp_path / "full.onnx", **QUIET)
    assert report.size_bytes < 0.65 * fp32.size_bytes  # tiny model: graph overhead; ~0.5 for BERT-base
    model = onnx.load(str(out))
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer if i.dims)
    assert sum(n.op_type == "Cast" and n.input[0].endswith("__fp16") for n in model.graph.node) == len(model.graph.initializer)


def test_offline_optimized_copy(checkpoint, tmp_path):
    ckpt, tokenizer = checkpoint
    export_onnx(ckpt.model, tokenizer, tmp_path / "m.onnx", optimized_output_path=tmp_path / "m.ort.onnx", **QUIET)
    assert (tmp_path / "m.ort.onnx").is_file()


@pytest.mark.parametrize("kwargs, message", [
    ({"opset": 22}, "opset 22 is not supported"),
    ({"weight_storage": "int4"}, "weight_storage must be one of"),
    ({"sample_pairs": []}, "sample_pairs is empty"),
])
def test_export_argument_checks(checkpoint, tmp_path, kwargs, message):
    ckpt, tokenizer = checkpoint
    with pytest.raises(ValueError, match=message):
        export_onnx(ckpt.model, tokenizer, tmp_path / "m.onnx", **kwargs, **QUIET)


def test_training_mode_model_is_refused(checkpoint, tmp_path):
    ckpt, tokenizer = checkpoint
    ckpt.model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            export_onnx(ckpt.model, tokenizer, tmp_path / "m.onnx", **QUIET)
    finally:
        ckpt.model.eval()


# --------------------------------------------------------------------------------------------------
# INT8


def test_dynamic_int8_loads_answers_and_reports(fp32_onnx, checkpoint, eval_file, tmp_path):
    _, tokenizer = checkpoint
    int8 = quantize_int8(fp32_onnx[0], tmp_path / "int8.onnx")
    model = onnx.load(str(int8))
    assert any(n.op_type == "MatMulInteger" for n in model.graph.node)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Int8AccuracyWarning)
        report = compare_int8(fp32_onnx[0], int8, tokenizer, eval_file=eval_file, log=None)
    assert report.size_bytes < report.fp32_size_bytes
    assert report.speedup > 0 and report.eval_questions == 3
    assert 0 <= report.int8_f1 <= 100 and 0 <= report.fp32_f1 <= 100
    assert "SQuAD on" in report.summary()
    # It answers: every question gets a span cut from its context.
    windower = QAWindower(load_tokenizer(tokenizer), validation_windowing(512))
    w = windower.windows(["what is the capital of france?"], ["paris is the capital of france."])
    start, end = ort_session(int8).run(None, {k: getattr(w, k) for k in ("input_ids", "attention_mask", "token_type_ids")})
    assert np.isfinite(start).all() and decode_spans(start, end, w.offsets, w.pair_index, 1, window_text=None)[0].window == 0


def test_static_qdq_int8_with_calibration(fp32_onnx, checkpoint, eval_file, tmp_path):
    _, tokenizer = checkpoint
    feeds = calibration_batches(tokenizer, read_examples(eval_file), validation_windowing(512))
    for target in ("cpu", "tensorrt"):
        out = quantize_int8(fp32_onnx[0], tmp_path / f"{target}.onnx", method="static", target=target,
                            calibration_feeds=feeds)
        ops = {n.op_type for n in onnx.load(str(out)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        start, _ = ort_session(out).run(None, feeds[0])
        assert np.isfinite(start).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "static"}, "needs calibration data"),
    ({"method": "dynamic", "target": "tensorrt"}, "TensorRT needs static"),
    ({"method": "dynamic", "calibration_feeds": [{}]}, "takes no calibration data"),
    ({"method": "fancy"}, "method must be one of"),
])
def test_quantize_argument_checks(fp32_onnx, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize_int8(fp32_onnx[0], tmp_path / "x.onnx", **kwargs)


def test_int8_warns_loudly_below_99_percent_of_fp32_f1(fp32_onnx, checkpoint, eval_file, tmp_path, monkeypatch):
    from bertqa.export import quantize
    from bertqa.export.evaluation import EvalResult

    _, tokenizer = checkpoint
    int8 = quantize_int8(fp32_onnx[0], tmp_path / "int8.onnx")
    results = iter([EvalResult(80.0, 90.0, 1.0, 3, {}), EvalResult(75.0, 85.0, 0.5, 3, {})])
    monkeypatch.setattr(quantize, "evaluate_session", lambda *a, **k: next(results))
    with pytest.warns(Int8AccuracyWarning, match=r"INT8 keeps only 94.4% of the FP32 F1"):
        report = compare_int8(fp32_onnx[0], int8, tokenizer, eval_file=eval_file, log=None)
    assert report.warnings and report.f1_retained == pytest.approx(85 / 90)


def test_int8_refuses_fp16_storage_source(checkpoint, tmp_path):
    ckpt, tokenizer = checkpoint
    with torch.no_grad():
        backup = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
        for p in ckpt.model.parameters():
            p.copy_(p.half().float())
    try:
        export_onnx(ckpt.model, tokenizer, tmp_path / "half.onnx", weight_storage="fp16", **QUIET)
    finally:
        ckpt.model.load_state_dict(backup)
    with pytest.raises(ValueError, match="quantize from an FP32-storage export"):
        quantize_int8(tmp_path / "half.onnx", tmp_path / "int8.onnx")


# --------------------------------------------------------------------------------------------------
# SQuAD metric (official v1.1 normalisation)


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple and a pear") == "apple and pear"
    examples = [QAExample("1", "q", "c", ("Denver Broncos", "The Broncos")), QAExample("2", "q", "c", ("1998",))]
    em, f1 = squad_scores({"1": "the broncos", "2": "in 1998 it was"}, examples)
    assert em == pytest.approx(50.0)
    assert f1 == pytest.approx(100 * (1.0 + 2 * (1 / 4) * 1 / (1 / 4 + 1)) / 2)


def test_read_examples_formats(tmp_path, eval_file):
    assert [e.answers for e in read_examples(eval_file)][0] == ("paris",)
    jsonl = tmp_path / "calib.jsonl"
    jsonl.write_text('{"question": "q1", "context": "c1"}\n\n{"question": "q2", "context": "c2", "answers": ["x"]}\n')
    assert [(e.question, e.answers) for e in read_examples(jsonl)] == [("q1", ()), ("q2", ("x",))]
    from bertqa.export.evaluation import DataFileError

    unanswered = _write(tmp_path / "noans.jsonl", '{"question": "q", "context": "c"}\n{"question": "r", "context": "d"}\n')
    assert len(read_examples(unanswered)) == 2
    with pytest.raises(DataFileError, match=r"noans.jsonl: no gold answers"):
        read_examples(unanswered, require_answers=True)
    with pytest.raises(DataFileError, match=r"bad.jsonl:1: neither SQuAD JSON nor JSON Lines"):
        read_examples(_write(tmp_path / "bad.jsonl", "{oops\n"))


def _write(path, text):
    path.write_text(text)
    return path
