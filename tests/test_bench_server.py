"""`bertqa bench` against the real embedded tritonserver over HTTP and gRPC.

The CPU is shared (2 cores, other jobs running), so absolute figures are not checked; the figures
must be consistent with each other: Little's law, client latency >= the server's own time, the
server's request count matching the client's, a non-zero per-model breakdown.
"""

from __future__ import annotations

import csv
import json

import pytest

from bertqa.cli import main

MODELS = ("bert_qa", "qa_preprocess", "bert_onnx", "qa_postprocess")
QUICK = ["--window-s", "1", "--warmup-s", "0.5", "--max-trials", "3", "--samples", "64", "--quiet"]


def url_of(server, protocol):
    return server.http_url if protocol == "http" else server.grpc_url


def bench(tmp_path, server, protocol, *argv) -> tuple[int, dict]:
    out = tmp_path / f"bench-{protocol}.json"
    code = main(["bench", "--url", url_of(server, protocol), "--protocol", protocol, *QUICK, "--json", str(out), *argv])
    return code, json.loads(out.read_text()) if out.exists() else {}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_concurrency_sweep_figures_are_consistent(triton_server, tmp_path, capsys, protocol):
    code, data = bench(
        tmp_path, triton_server, protocol, "--concurrency", "1,4",
        "--csv", str(tmp_path / "b.csv"), "--plot", str(tmp_path / "b.png"),
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "concurrency 4" in printed and "compute infer ms" in printed
    points = data["points"]
    assert [p["concurrency"] for p in points] == [1, 4]
    for point in points:
        c = point["concurrency"]
        assert point["errors"] == 0 and point["requests"] > 5, point
        assert point["windows_used"] == 3 and isinstance(point["stable"], bool)
        latency = point["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p97"] <= latency["p99"] <= latency["p99.9"]
        assert latency["min"] <= latency["avg"] <= latency["max"]
        # Little's law for a closed loop: completions/s x mean latency = requests in flight.
        assert point["littles_law_concurrency"] == pytest.approx(c, rel=0.3), point
        assert point["throughput"] == pytest.approx(point["request_rate"])  # batch size 1
        server = {row["name"]: row for row in point["server"]}
        # The models' compute time is part of the client's latency. (Not the ensemble's own request
        # time: Triton stamps it when the request is released, after the response was sent, which
        # on a loaded CPU can come later than the client saw the answer.)
        # qa_preprocess's compute time includes the bert_onnx run it waits for (BLS): not counted twice.
        computed_ms = sum(server[m]["compute_infer_us"] for m in ("qa_preprocess", "qa_postprocess")) / 1e3
        assert server["bert_onnx"]["compute_infer_us"] <= server["qa_preprocess"]["compute_infer_us"]
        assert 0 < computed_ms <= latency["avg"] * 1.1
        assert point["server_request_ms"] > 0
        assert list(server) == list(MODELS)
        for row in server.values():
            assert row["requests"] > 0 and row["compute_infer_us"] > 0 and row["compute_input_us"] > 0
            assert row["compute_output_us"] > 0 and row["queue_us"] >= 0
        # the server counted the same requests as the client, give or take those in flight at the cuts
        assert abs(server["bert_qa"]["requests"] - point["requests"]) <= 0.1 * point["requests"] + 2 * c
        assert 0 <= point["client_cpu_pct"] < 400
    rows = list(csv.DictReader((tmp_path / "b.csv").open()))
    assert [int(r["concurrency"]) for r in rows] == [1, 4]
    assert float(rows[1]["latency_p99_ms"]) == pytest.approx(points[1]["latency_ms"]["p99"])
    assert float(rows[0]["bert_onnx.compute_infer_us"]) > 0
    png = (tmp_path / "b.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_threads_engine_and_batched_requests(triton_server, tmp_path):
    code, data = bench(tmp_path, triton_server, "grpc", "--engine", "threads", "--concurrency", "2", "--batch-size", "3")
    assert code == 0
    (point,) = data["points"]
    assert point["engine"] == "threads" and point["errors"] == 0
    assert point["throughput"] == pytest.approx(3 * point["request_rate"])  # answers = requests x pairs
    assert point["littles_law_concurrency"] == pytest.approx(2, rel=0.3)
    server = {row["name"]: row for row in point["server"]}
    assert server["bert_qa"]["inferences"] >= 3 * server["bert_qa"]["requests"] - 6


def test_poisson_rate_and_server_scenario(triton_server, tmp_path):
    code, data = bench(tmp_path, triton_server, "http", "--scenario", "server", "--target-qps", "15",
                       "--latency-bound-ms", "60000")
    assert code == 0
    (point,) = data["points"]
    assert point["mode"] == "rate" and point["arrivals"] == "poisson" and point["errors"] == 0
    assert point["issued_rate"] == pytest.approx(15, rel=0.5)
    scenario = data["scenario"]
    assert scenario["scenario"] == "Server" and scenario["value"] == point["latency_ms"]["p99"]
    assert scenario["valid"] == (scenario["value"] <= 60000 and scenario["achieved_qps"] >= 0.9 * 15)


def test_offline_scenario_sends_all_pairs_at_once(triton_server, tmp_path):
    code, data = bench(tmp_path, triton_server, "grpc", "--scenario", "offline", "--offline-samples", "32",
                       "--batch-size", "4", "--concurrency", "4")
    assert code == 0
    (point,) = data["points"]
    assert point["mode"] == "offline" and point["requests"] == 8 and point["errors"] == 0
    assert data["scenario"]["value"] == pytest.approx(32 / point["duration_s"])
    assert point["stable"] is None


def test_unknown_model_and_no_server_are_clear_errors(triton_server, tmp_path, capsys):
    code, _ = bench(tmp_path, triton_server, "http", "--model", "no_such_model", "--concurrency", "1")
    assert code == 2
    assert "no_such_model" in capsys.readouterr().err
    code = main(["bench", "--url", "localhost:9", "--concurrency", "1", *QUICK])
    assert code == 2
    assert "no Triton server answers" in capsys.readouterr().err
