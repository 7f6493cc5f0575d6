"""`bertqa bench` without a server: percentiles and the stability rule against numpy, statistics
deltas, arrivals, the built-in data set, load arguments and the report files."""

from __future__ import annotations

import csv
import json
import math
import random

import numpy as np
import pytest

from bertqa.client import report
from bertqa.client.bench import Arrivals, BenchConfig, BenchResult, Load, PointResult
from bertqa.client.cli import build_loads
from bertqa.client.data import builtin_examples, load_examples, request_batches, summarize
from bertqa.client.stats import (
    PERCENTILES,
    LatencySummary,
    WindowStats,
    breakdown,
    composing_models,
    is_stable,
    merge_windows,
    parse_statistics,
    percentile,
    spread,
)
from bertqa.text import WindowingConfig  # noqa: F401  (the package imports cleanly without a server)

# --------------------------------------------------------------------------------------------------
# Percentiles


SAMPLES = {
    "one": [7.0],
    "two": [1.0, 3.0],
    "five": [5.0, 1.0, 4.0, 2.0, 3.0],
    "ties": [2.0, 2.0, 2.0, 9.0, 9.0, 1.0],
    "hundred": list(range(1, 101)),
    "lognormal-1001": list(np.random.default_rng(0).lognormal(2.0, 0.6, 1001)),
    "uniform-4096": list(np.random.default_rng(1).uniform(0, 1, 4096)),
}


@pytest.mark.parametrize("name", SAMPLES)
def test_percentiles_equal_numpy(name):
    values = SAMPLES[name]
    for p in (0.0, 1.0, 25.0, *PERCENTILES, 100.0):
        assert percentile(values, p) == pytest.approx(np.percentile(values, p), rel=1e-12, abs=1e-12), p


def test_known_percentiles_by_hand():
    assert percentile(list(range(1, 101)), 50) == 50.5
    assert percentile(list(range(1, 101)), 90) == pytest.approx(90.1)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([10.0, 20.0], 99.9) == pytest.approx(19.99)
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_equals_numpy_in_milliseconds():
    seconds = list(np.random.default_rng(2).gamma(2.0, 0.01, 777))
    summary = LatencySummary.of(seconds)
    ms = np.array(seconds) * 1e3
    assert summary.count == 777
    assert summary.avg == pytest.approx(ms.mean(), rel=1e-12)
    assert summary.std == pytest.approx(ms.std(), rel=1e-9)
    assert (summary.min, summary.max) == pytest.approx((ms.min(), ms.max()))
    for p in PERCENTILES:
        assert summary.percentiles[f"p{p:g}"] == pytest.approx(np.percentile(ms, p), rel=1e-12)
    assert set(summary.percentiles) == {"p50", "p90", "p95", "p97", "p99", "p99.9"}
    assert math.isnan(LatencySummary.of([]).avg)


# --------------------------------------------------------------------------------------------------
# Stability (perf_analyzer: max/min of the last 3 windows within the threshold, throughput and latency)


def test_spread_is_max_over_min_minus_one():
    assert spread([100.0, 105.0, 110.0]) == pytest.approx(0.10)
    assert spread([5.0, 5.0]) == 0.0
    assert spread([0.0, 1.0]) == math.inf
    assert spread([1.0, math.nan]) == math.inf


@pytest.mark.parametrize(
    "throughputs, latencies, stable",
    [
        ([100, 105, 109.9], [10, 10.5, 10.9], True),  # both within 10 %
        ([100, 105, 111], [10, 10, 10], False),  # throughput 11 %
        ([100, 100, 100], [10, 11.5, 10], False),  # latency 15 %
        ([50, 300, 100, 105, 109], [90, 9, 10, 10.5, 10.9], True),  # only the last 3 count
        ([100, 100, 300], [10, 10, 10], False),  # the newest window breaks it
        ([100, 100], [10, 10], False),  # fewer than 3 windows: not judged stable
        ([0, 0, 0], [math.nan, math.nan, math.nan], False),  # nothing completed
    ],
)
def test_stability_rule(throughputs, latencies, stable):
    verdict = is_stable(throughputs, latencies, 0.10)
    assert verdict.stable is stable
    last_t = np.array(throughputs[-3:], dtype=float)
    if stable:
        assert verdict.throughput_spread == pytest.approx(last_t.max() / last_t.min() - 1)
        assert verdict.windows == 3


def test_stability_threshold_is_configurable():
    assert not is_stable([100, 120, 110], [10, 10, 10], 0.10).stable
    assert is_stable([100, 120, 110], [10, 10, 10], 0.25).stable


def test_merged_windows_pool_counts_and_samples():
    a = WindowStats(1.0, 10, 1, 20, [0.01] * 10)
    b = WindowStats(2.0, 30, 0, 60, [0.02] * 30)
    merged = merge_windows([a, b])
    assert (merged.duration_s, merged.requests, merged.errors, merged.pairs) == (3.0, 40, 1, 80)
    assert merged.throughput == pytest.approx(80 / 3)
    assert merged.latency().avg == pytest.approx((10 * 10 + 30 * 20) / 40)


# --------------------------------------------------------------------------------------------------
# Server statistics


def _http_stats(scale: int) -> dict:
    def d(count, ns):
        return {"count": count * scale, "ns": ns * scale}

    return {"model_stats": [
        {"name": "bert_onnx", "version": "1", "inference_count": 30 * scale, "execution_count": 10 * scale,
         "inference_stats": {"success": d(20, 8_000_000), "fail": d(0, 0), "queue": d(20, 1_000_000),
                             "compute_input": d(20, 200_000), "compute_infer": d(20, 6_000_000),
                             "compute_output": d(20, 400_000)}},
        {"name": "idle_model", "version": "1", "inference_count": 0, "execution_count": 0,
         "inference_stats": {"success": d(0, 0)}},
    ]}


def _as_grpc_json(stats: dict) -> dict:
    """gRPC's as_json form: int64 as strings, zero fields left out."""
    def convert(value):
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items() if convert(v) not in ({}, "0")}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return str(value) if isinstance(value, int) else value

    return convert(stats)


def test_statistics_parse_the_same_from_http_and_grpc_json():
    assert parse_statistics(_http_stats(1)) == parse_statistics(_as_grpc_json(_http_stats(1)))


def test_breakdown_is_per_request_deltas():
    before, after = parse_statistics(_http_stats(1)), parse_statistics(_http_stats(3))
    (row,) = breakdown(before, after)  # the idle model served nothing and is left out
    assert row.name == "bert_onnx"
    assert (row.requests, row.executions, row.inferences) == (40, 20, 60)
    assert row.avg_batch == 3.0
    assert row.queue_us == pytest.approx(50.0)  # 2 ms over 40 requests
    assert row.compute_infer_us == pytest.approx(300.0)
    assert row.request_us == pytest.approx(400.0)
    assert [r.name for r in breakdown(before, after, ["bert_onnx", "idle_model", "absent"])] == ["bert_onnx", "idle_model"]


def test_composing_models_follow_the_ensemble_steps():
    config = {"platform": "ensemble", "ensemble_scheduling": {"step": [
        {"model_name": "qa_preprocess"}, {"model_name": "bert_onnx"}, {"model_name": "qa_postprocess"}]}}
    assert composing_models(config) == ["qa_preprocess", "bert_onnx", "qa_postprocess"]
    assert composing_models({"platform": "onnxruntime_onnx"}) == []


# --------------------------------------------------------------------------------------------------
# Arrivals and data


def test_constant_arrivals_are_evenly_spaced():
    arrivals = Arrivals(50.0, "constant", start=10.0)
    times = [arrivals.take() for _ in range(5)]
    assert np.diff(times) == pytest.approx([0.02] * 4)
    assert times[0] == 10.0


def test_poisson_arrivals_have_the_rate_and_exponential_gaps():
    arrivals = Arrivals(200.0, "poisson", start=0.0, seed=3)
    gaps = np.diff([arrivals.take() for _ in range(20001)])
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 200, rel=0.05)  # exponential: std == mean
    again = Arrivals(200.0, "poisson", start=0.0, seed=3)
    assert [again.take() for _ in range(3)] == pytest.approx([0.0, *np.cumsum(gaps[:2])])


def test_builtin_set_is_deterministic_squad_like_and_answerable():
    examples = builtin_examples(256, seed=0)
    assert examples == builtin_examples(256, seed=0)
    assert examples != builtin_examples(256, seed=1)
    assert len({e.id for e in examples}) == 256
    assert all(e.answers[0] in e.context for e in examples)
    summary = summarize(examples, "built-in")
    assert 80 <= summary.context_words_p50 <= 170  # SQuAD v1.1 dev: median ~110 words
    assert summary.context_words_p95 >= 300  # a tail of multi-window contexts
    assert summary.context_words_max <= 700
    assert 5 <= summary.question_words_mean <= 14


def test_request_batches_cycle_through_every_pair():
    examples = builtin_examples(5)
    batches = request_batches(examples, 3)
    assert len(batches) == 5
    assert batches[0][0] == [examples[i].question for i in (0, 1, 2)]
    assert batches[1][0] == [examples[i].question for i in (3, 4, 0)]
    with pytest.raises(ValueError):
        request_batches(examples, 0)


def test_data_file_jsonl_is_read(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}?", "context": f"context {i}."}) for i in range(7)))
    pairs = load_examples(path, count=5)
    assert [e.question for e in pairs.examples] == [f"q{i}?" for i in range(5)]
    assert pairs.source == str(path)


@pytest.fixture
def fetched_dev(tmp_path, monkeypatch):
    """BERTQA_DATA_DIR with the committed dev slice standing in for a fetched dev-v1.1.json (no download)."""
    import shutil

    from bertqa.squad import dev_slice_path

    (tmp_path / "squad").mkdir()
    shutil.copy(dev_slice_path(), tmp_path / "squad" / "dev-v1.1.json")
    monkeypatch.setenv("BERTQA_DATA_DIR", str(tmp_path))
    return tmp_path / "squad" / "dev-v1.1.json"


def test_default_pairs_are_a_deterministic_squad_dev_sample_when_fetched(fetched_dev, tmp_path):
    from bertqa.squad import read_examples

    dev = {e.id: e for e in read_examples(fetched_dev)}
    pairs = load_examples(None, count=40, seed=0)
    assert pairs.source.startswith("SQuAD v1.1 dev") and str(fetched_dev) in pairs.source
    assert len(pairs.examples) == 40 and all(dev[e.id] == e for e in pairs.examples)
    assert pairs == load_examples(None, count=40, seed=0)
    assert pairs.examples != load_examples(None, count=40, seed=1).examples
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"question": "q?", "context": "c."}))
    assert [e.question for e in load_examples(path, count=40).examples] == ["q?"]  # --data still wins


def test_default_pairs_are_the_builtin_set_without_dev(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTQA_DATA_DIR", str(tmp_path))
    pairs = load_examples(None, count=12, seed=3)
    assert pairs.examples == builtin_examples(12, seed=3)
    assert "built-in" in pairs.source and "bertqa data squad" in pairs.source


def test_bench_says_which_pairs_it_sends(fetched_dev, capsys):
    from bertqa.cli import main
    from bertqa.server import free_ports

    (port,) = free_ports(1)  # nothing listens: the data line is printed, then the run fails cleanly
    assert main(["bench", "--url", f"127.0.0.1:{port}", "--concurrency", "1", "--samples", "8", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "data: 8 pairs from SQuAD v1.1 dev" in err and "no Triton server answers" in err


# --------------------------------------------------------------------------------------------------
# Arguments -> load points


def _args(*argv):
    import argparse

    from bertqa.client.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_load_points_from_arguments():
    loads, scenario, batch = build_loads(_args())
    assert [l.value for l in loads] == [1, 2, 4, 8, 16, 32] and scenario is None and batch == 1
    loads, _, _ = build_loads(_args("--rate", "5,10", "--arrivals", "poisson"))
    assert [(l.kind, l.value, l.arrivals) for l in loads] == [("rate", 5, "poisson"), ("rate", 10, "poisson")]
    loads, scenario, _ = build_loads(_args("--scenario", "singlestream"))
    assert loads == [Load("concurrency", 1)] and scenario == "singlestream"
    loads, scenario, _ = build_loads(_args("--scenario", "server", "--target-qps", "40"))
    assert loads == [Load("rate", 40, "poisson")] and scenario == "server"
    loads, scenario, batch = build_loads(_args("--scenario", "offline", "--offline-samples", "100"))
    assert (loads[0].kind, loads[0].requests, batch) == ("offline", 13, 8)
    loads, _, _ = build_loads(_args("--scenario", "offline", "--concurrency", "4"))
    assert loads[0].value == 4  # offline: the most requests in flight
    with pytest.raises(SystemExit):
        build_loads(_args("--rate", "5", "--concurrency", "2"))  # one load mode at a time
    with pytest.raises(SystemExit):
        _args("--rate", "5", "--scenario", "offline")
    with pytest.raises(SystemExit):
        _args("--concurrency", "0")


# --------------------------------------------------------------------------------------------------
# Scenario verdicts and report files, on synthetic results


def synthetic_point(load: Load, latencies_ms: list[float], stable=True, errors=0, duration=3.0) -> PointResult:
    window = WindowStats(duration, len(latencies_ms), errors, len(latencies_ms), [v / 1e3 for v in latencies_ms])
    latency = LatencySummary.of(window.latencies_s)
    before, after = parse_statistics(_http_stats(1)), parse_statistics(_http_stats(2))
    verdict = is_stable([1.0, 1.0, 1.0 if stable else 2.0], [1.0, 1.0, 1.0])
    rate = window.requests / duration
    return PointResult(
        load=load, protocol="http", model="bert_qa", engine="async", batch_size=1, stable=stable, verdict=verdict,
        windows=[window] * 3, used=3, measured=window, latency=latency, issued_rate=rate, scheduled_rate=rate,
        send_lag_p99_ms=0.5, client_cpu_pct=12.0, host_cpu_pct=30.0, server=breakdown(before, after), errors={},
    )


def synthetic_result(scenario=None, **kwargs) -> BenchResult:
    rng = random.Random(0)
    result = BenchResult(BenchConfig(url="localhost:8000"), scenario, {"source": "test"}, **kwargs)
    for c, stable in ((1, True), (4, False)):
        result.points.append(synthetic_point(Load("concurrency", c), [rng.uniform(5, 20) * c for _ in range(200)], stable))
    return result


def test_server_scenario_is_valid_only_within_the_bound():
    def server(bound, qps=60.0):
        result = BenchResult(BenchConfig(), "server", {}, latency_bound_ms=bound, target_qps=qps)
        result.points.append(synthetic_point(Load("rate", qps, "poisson"), [10.0] * 170 + [50.0] * 12))
        return result.scenario_summary()

    assert server(130.0)["valid"] and server(130.0)["value"] == pytest.approx(np.percentile([10.0] * 170 + [50.0] * 12, 99))
    assert not server(20.0)["valid"]  # p99 (50 ms) over the bound
    assert not server(130.0, qps=100.0)["valid"]  # 60.7 QPS achieved of 100 offered
    single = BenchResult(BenchConfig(), "singlestream", {})
    single.points.append(synthetic_point(Load("concurrency", 1), list(range(1, 101))))
    assert single.scenario_summary()["value"] == pytest.approx(90.1)  # p90


def test_open_loop_generator_falling_behind_is_flagged():
    point = synthetic_point(Load("rate", 60.0, "poisson"), [10.0] * 180)
    assert not point.generator_behind
    point.issued_rate = 0.8 * point.scheduled_rate
    assert point.generator_behind
    assert any("fell behind" in n for n in report.warnings(BenchResult(BenchConfig(), None, {}, points=[point])))
    late = synthetic_point(Load("rate", 60.0), [10.0] * 180)
    late.send_lag_p99_ms = 25.0
    assert late.generator_behind


def test_scheduled_arrivals_are_counted_per_interval():
    arrivals = Arrivals(8.0, "constant", start=0.0)  # gaps of 1/8 s: exact in binary
    for _ in range(100):
        arrivals.take()
    assert arrivals.scheduled_between(1.0, 3.0) == 16  # [1.0, 3.0): 1.0, 1.125, ..., 2.875


def test_json_csv_and_plot_files(tmp_path):
    result = synthetic_result()
    result.points[1].latency = LatencySummary.of(result.points[1].measured.latencies_s)
    data = json.loads(report.write_json(result, tmp_path / "r.json").read_text())
    assert [p["stable"] for p in data["points"]] == [True, False]
    assert data["points"][0]["latency_ms"]["p99.9"] > 0 and "max/min" in data["stability_rule"]
    rows = list(csv.DictReader(report.write_csv(result, tmp_path / "r.csv").open()))
    assert len(rows) == 2 and float(rows[1]["latency_p99_ms"]) > 0 and "bert_onnx.queue_us" in rows[0]
    png = report.plot(result, tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    notes = report.warnings(result)
    assert any("concurrency 4: did NOT stabilise" in n for n in notes)


def test_json_has_no_nan(tmp_path):
    result = synthetic_result()
    result.points.append(synthetic_point(Load("concurrency", 8), [], errors=5))
    text = report.write_json(result, tmp_path / "r.json").read_text()
    assert "NaN" not in text and json.loads(text)["points"][2]["latency_ms"]["avg"] is None


# --------------------------------------------------------------------------------------------------
# The recorder under the threads engine


def test_recorder_keeps_each_latency_with_its_lag_under_threads():
    """Issue 12: Recorder.done appended to two lists without a lock, so two threads could interleave and
    pair one request's send lag with another's latency (the threads engine slices both lists together).
    CPython 3.11 rarely switches threads between two appends, so the lag list here yields the GIL after
    each append: exactly the interleaving that other interpreters (3.12+, free-threaded) allow."""
    import threading
    import time

    from bertqa.client.bench import Recorder

    class YieldingList(list):
        def append(self, value) -> None:
            super().append(value)
            time.sleep(0)  # let another thread run between the lag and the latency

    recorder = Recorder(batch_size=1)
    recorder.lags = YieldingList()
    per_thread = 300

    def record(thread: int) -> None:
        for i in range(per_thread):
            value = float(thread * per_thread + i)
            if i % 7:
                recorder.done(value, value)
            else:
                recorder.failed("boom", value)

    threads = [threading.Thread(target=record, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(recorder.latencies) == len(recorder.lags) == 8 * per_thread
    pairs = list(zip(recorder.latencies, recorder.lags))
    assert all(latency == lag for latency, lag in pairs if latency == latency)  # NaN: a failed request
    failed_lags = sorted(lag for latency, lag in pairs if latency != latency)
    assert failed_lags == sorted(float(t * per_thread + i) for t in range(8) for i in range(0, per_thread, 7))


def test_one_bytes_input_builder_serves_both_protocols():
    """qa_inputs: the one BYTES-tensor builder of qa_client, bench and the locustfile (issue 12)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import serialize_byte_tensor

    from bertqa.client.qa_client import qa_inputs, qa_outputs

    questions, contexts = ["Wo?", b"Who?"], ["Zürich liegt an der Limmat.", "Ada."]
    serialized = serialize_byte_tensor(np.array([[c.encode()] for c in contexts], dtype=np.object_))
    expected = serialized.item() if serialized.dtype == np.object_ else serialized.tobytes()
    for module, binary in ((httpclient, None), (httpclient, True), (httpclient, False), (grpcclient, None)):
        question, context = qa_inputs(module, questions, contexts, binary)
        assert (question.name(), context.name()) == ("question", "context")
        assert question.shape() == context.shape() == [2, 1] and context.datatype() == "BYTES"
        if module is grpcclient:
            assert context._get_content() == expected
        elif binary is False:
            assert question._get_tensor()["data"] == ["Wo?", "Who?"]
        else:
            assert context._get_binary_data() == expected
        assert [o.name() for o in qa_outputs(module, binary)] == ["answer", "score", "start", "end"]
