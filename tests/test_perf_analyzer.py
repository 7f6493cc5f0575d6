"""perf_analyzer (Triton's own load tool) runs against the embedded server with the project's data file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import perf_analyzer
from bertqa.squad import dev_slice_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def binary():
    """`make install-dev` installs it and .ci/run the Debian library; only a non-root machine may lack libb64."""
    try:
        return perf_analyzer.require()
    except perf_analyzer.PerfAnalyzerError as err:
        if "libb64" in str(err) and "libcudart" not in str(err) and os.geteuid() != 0:
            pytest.skip(f"{err} (needs root)")
        raise


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bench_writes_input_data_perf_analyzer_reads(tmp_path, binary, triton_server, protocol):
    import tritonclient.http as http

    data = tmp_path / "pairs.json"
    written = subprocess.run([sys.executable, "-m", "bertqa.cli", "bench", "--data", str(dev_slice_path()),
                              "--samples", "16", "--perf-analyzer-data", str(data)], capture_output=True, text=True)
    assert written.returncode == 0, written.stderr
    entries = json.loads(data.read_text())["data"]
    assert len(entries) == 16 and all(len(e["question"]) == len(e["context"]) == 1 for e in entries)

    client = http.InferenceServerClient(triton_server.http_url)
    try:
        before = client.get_inference_statistics("bert_qa")["model_stats"][0]
        # HTTP goes through the embedded server's front, gRPC straight to Triton.
        url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
        result = perf_analyzer.run(url, "bert_qa", protocol, data,
                                   concurrency=1, measurement_interval_ms=1500, max_trials=4,
                                   stability_pct=1000)  # a shared CI machine: any 3 windows will do
        after = client.get_inference_statistics("bert_qa")["model_stats"][0]
    finally:
        client.close()
    assert result.throughput > 0 and 0 < result.p50_ms <= result.p99_ms
    answered = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
    failed = int(after["inference_stats"]["fail"]["count"]) - int(before["inference_stats"]["fail"]["count"])
    assert answered >= 5 and failed == 0
