"""benchmarks/ (`make bench`): FLOP counting, the report writer, the orchestrator end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.flops import BertShape, flops_per_sequence, model_flop_utilisation
from benchmarks.models import read_parameter, with_instance_count, with_parameter, without_dynamic_batching

BERT_BASE = BertShape("bert-base", 12, 768, 12, 3072)


def test_flops_per_sequence_matches_a_hand_count():
    L, H, I, layers = 384, 768, 3072, 12
    q_k_v_o = 4 * (2 * L * H * H)  # four H x H projections, 2 FLOPs per multiply-add
    ffn = 2 * (2 * L * H * I)  # H -> I and I -> H
    scores_and_context = 2 * (2 * L * L * H)  # Q K^T and P V over all heads
    head = 2 * L * H * 2
    assert flops_per_sequence(BERT_BASE, L) == layers * (q_k_v_o + ffn + scores_and_context) + head
    assert flops_per_sequence(BERT_BASE, L) == pytest.approx(70.67e9, rel=1e-3)
    # Roughly 2 * params per token plus the quadratic attention term.
    assert flops_per_sequence(BERT_BASE, 1) == pytest.approx(2 * BERT_BASE.dense_params(), rel=1e-3)


def test_flop_utilisation():
    assert model_flop_utilisation(BERT_BASE, 384, 1.0, 70.66681344e9) == pytest.approx(1.0)


def test_shape_from_hf_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"num_hidden_layers": 4, "hidden_size": 288, "num_attention_heads": 12, "intermediate_size": 1152}))
    shape = BertShape.from_hf_config(tmp_path)
    assert (shape.layers, shape.hidden, shape.heads, shape.intermediate) == (4, 288, 12, 1152)


def test_config_edits():
    text = Path("model_repository/qa_preprocess/config.pbtxt").read_text()
    assert "dynamic_batching" not in without_dynamic_batching(text)
    assert read_parameter(with_parameter(text, "seq_len_buckets", "384"), "seq_len_buckets") == "384"
    bert = Path("model_repository/bert_onnx/config.pbtxt").read_text()
    from bertqa.export.repository import parse_config

    assert not parse_config(with_instance_count(bert, None), "x").instance_group
    (group,) = parse_config(with_instance_count(bert, 1), "x").instance_group
    assert group.count == 1 and "KIND" not in with_instance_count(bert, 1)


def _m(system, shape, pairs, workload="fixed-384", concurrency=None, latency=None, rate=None, server=()):
    return {"system": system, "shape": shape, "workload": workload, "pairs_per_s": pairs, "windows_per_s": pairs,
            "detail": f"concurrency {concurrency}" if concurrency else "batches of 8 pairs",
            "latency_ms": latency or {}, "concurrency": concurrency, "rate": rate, "stable": True if concurrency else None,
            "server": list(server), "extra": {}}


def synthetic_results() -> dict:
    lat = {"avg": 100.0, "p50": 90.0, "p90": 120.0, "p99": 130.0}
    row = {"name": "bert_onnx", "requests": 10, "failures": 0, "executions": 5, "inferences": 10, "avg_batch": 2.0,
           "request_us": 1e5, "queue_us": 1e4, "compute_input_us": 10.0, "compute_infer_us": 9e4, "compute_output_us": 5.0}
    shape = BERT_BASE.__dict__
    ms = [
        _m("in-process reference (FP32)", "bert-base", 1.0),
        _m("in-process reference (INT8)", "bert-base", 2.5),
        _m("HF pipeline (PyTorch FP32)", "bert-base", 0.5),
        _m("Triton bert_qa (FP32) gRPC", "bert-base", 0.97, concurrency=16, latency=lat, server=[row]),
        _m("Triton bert_qa_int8 (INT8) gRPC", "bert-base", 2.2, concurrency=16, latency=lat),
        _m("Triton bert_qa, dynamic batching off gRPC", "bert-base", 0.6, concurrency=16, latency=lat),
        _m("Triton bert_qa, Triton default instances (untuned) gRPC", "bert-base", 0.8, concurrency=16, latency=lat),
        _m("Triton bert_qa (FP32), Server scenario gRPC", "bert-base", 0.68, latency=lat, rate=0.68),
        _m("Triton bert_qa, buckets gRPC", "bert-base", 3.0, workload="squad-like mix", concurrency=16, latency=lat),
        _m("Triton bert_qa, padded to 384 gRPC", "bert-base", 1.2, workload="squad-like mix", concurrency=16, latency=lat),
    ]
    return {
        "profile": "synthetic", "elapsed_s": 60.0, "command": "make bench",
        "machine": {"cpu": "Test CPU", "cpu_flags": "avx2", "logical_cpus": 2, "physical_cores": 2, "memory_gib": 8,
                    "os": "Linux", "python": "3.11", "tritonserver": "2.51.0", "versions": {"onnxruntime": "1.x"}},
        "gemm": {"results": [{"engine": "numpy", "m": 8, "k": 8, "n": 8, "gflops": 80.0}],
                 "best": {"engine": "numpy", "m": 8, "k": 8, "n": 8, "gflops": 80.0}, "peak_gflops": 80.0},
        "shapes": {"bert-base": {"title": "BERT-base shape", "shape": shape, "export_fp32_s": 10.0, "export_int8_s": 20.0,
                                 "flops_per_sequence": flops_per_sequence(BERT_BASE, 384),
                                 "int8_export_report": {"size_bytes": 1e8, "fp32_size_bytes": 4e8, "speedup": 2.1,
                                                        "eval_questions": 40, "fp32_f1": 80.0, "int8_f1": 79.5,
                                                        "f1_retained": 79.5 / 80.0}}},
        "measurements": ms,
        "checks": {"bert-base": {"server_scenario_basis": {"max_pairs_per_s": 0.97, "system": "Triton bert_qa (FP32) gRPC",
                                                          "concurrency": 16, "rate": 0.68},
                                 "served_bucket_answers": {"identical": 16, "pairs": 16},
                                 "inprocess_bucket_answers": {"identical": 16, "pairs": 16, "buckets": [128, 256, 384]}}},
    }


def test_targets_on_synthetic_results():
    rows = {t["target"]: t for t in report.targets(synthetic_results())}
    assert rows["served FP32 / in-process FP32 at saturation (BERT-base)"]["measured"] == pytest.approx(0.97)
    assert rows["served FP32 / in-process FP32 at saturation (BERT-base)"]["met"]
    assert rows["served INT8 / served FP32 (BERT-base)"]["measured"] == pytest.approx(2.2 / 0.97)
    assert rows["served FP32 / HF pipeline (BERT-base)"]["met"]  # 1.94 >= 1.8
    mfu = rows["model FLOP utilisation of served FP32 BERT-base / GEMM peak"]
    assert mfu["measured"] == pytest.approx(0.97 * 70.66681344 / 80.0)
    assert rows["dynamic batching on / off at concurrency 16 (BERT-base)"]["measured"] == pytest.approx(0.97 / 0.6)
    p99 = rows["p99 / p50 <= 1.5 at 70 % of max throughput, Server scenario (BERT-base)"]
    assert p99["measured"] == pytest.approx(130 / 90) and p99["met"]
    assert rows["length buckets / padding to 384 on the SQuAD-like mix (BERT-base)"]["measured"] == pytest.approx(2.5)
    assert rows["INT8 F1 / FP32 F1, exporter comparison (BERT-base)"]["met"]


def test_report_writer(tmp_path):
    written = report.write_report(synthetic_results(), tmp_path / "BENCHMARKS.md")
    text = written[0].read_text()
    assert written[1].suffix == ".png" and written[1].stat().st_size > 1000
    assert "Test CPU" in text and "## Targets" in text and "make bench" in text
    assert "| Triton bert_qa (FP32) gRPC | concurrency 16 | 0.97 |" in text
    assert "BENCHMARKS.png" in text
    assert "nan" not in text.lower().replace("nano", "")


@pytest.mark.slow
def test_orchestrator_end_to_end_with_a_tiny_model(tmp_path):
    from rich.console import Console

    from benchmarks.measure import ServedSettings
    from benchmarks.models import ShapeSpec
    from benchmarks.run import Profile, Run, ShapePlan

    settings = ServedSettings(window_s=0.5, warmup_s=0.2, max_trials=3)
    plan = ShapePlan("tiny", fixed_pairs=4, inproc_batches=(1, 4), inproc_seconds=0.3, hf_seconds=0.3, http=(2,), grpc=(2,),
                     int8=(2,), served=settings, full=True)
    profile = Profile("test", (plan,), gemm_seconds=0.01, mix_pairs=8, server_window_s=0.5, dynamic_concurrency=2)
    spec = {"tiny": ShapeSpec("tiny", "tiny random model", 2, 64, 2, 128)}
    results = Run(profile, tmp_path / "work", Console(quiet=True), shapes_spec=spec).execute()
    systems = {m["system"] for m in results["measurements"]}
    assert {"in-process reference (FP32)", "HF pipeline (PyTorch FP32)", "Triton bert_qa (FP32) HTTP",
            "Triton bert_qa_int8 (INT8) gRPC", "Triton bert_qa, dynamic batching off gRPC"} <= systems
    assert all(m["pairs_per_s"] > 0 for m in results["measurements"])
    assert all(m["extra"].get("errors", 0) == 0 for m in results["measurements"])
    checks = results["checks"]["tiny"]
    assert checks["served_bucket_answers"]["identical"] == checks["served_bucket_answers"]["pairs"] == 8
    from bertqa.export.repository import parse_config

    assert [g.count for g in parse_config(results["shapes"]["tiny"]["bert_config"], "x").instance_group] == [1]
    written = report.write_report(results, tmp_path / "BENCHMARKS.md")
    assert "tiny" in written[0].read_text()
    assert math.isfinite(results["gemm"]["peak_gflops"])
