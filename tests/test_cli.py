"""The bertqa command line and the embedded launcher around the real tritonserver."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest

from bertqa.demo import DEMO_FILES, install_demo
from bertqa.repository import plan_loading
from bertqa.server import EmbeddedServer, ServerError
from conftest import copy_repository_configs, free_ports

BERTQA = [sys.executable, "-m", "bertqa.cli"]
CONTEXT = "The Eiffel Tower was completed in 1889 and stands in Paris on the Champ de Mars."


def test_unexported_variant_is_skipped_and_the_rest_served(triton_server):
    assert "bert_trt_unbuilt" in triton_server.skipped
    assert "model.plan" in triton_server.skipped["bert_trt_unbuilt"]
    assert "bert_qa" in triton_server.loaded


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ask_prints_answer_offsets_and_latency(triton_server, reference, protocol):
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    question = "When was the Eiffel Tower completed?"
    result = subprocess.run(
        [*BERTQA, "ask", question, "--context", CONTEXT, "--url", url, "--protocol", protocol],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    expected = reference.answer([question], [CONTEXT])[0]
    assert f"answer: {expected.text}\n" in result.stdout
    assert f"span:   [{expected.start}, {expected.end})" in result.stdout
    assert re.search(r"latency: \d+\.\d ms \(" + protocol, result.stdout)


def test_ask_reports_a_bad_request_without_a_traceback(triton_server):
    result = subprocess.run(
        [*BERTQA, "ask", " ", "--context", CONTEXT, "--url", triton_server.http_url],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "question[0] is empty" in result.stderr and "Traceback" not in result.stderr


def test_serve_reports_a_missing_repository_without_a_traceback(tmp_path):
    result = subprocess.run([*BERTQA, "serve", "--repository", str(tmp_path / "nowhere")],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "model repository not found" in output and "Traceback" not in output


def test_plan_loading_skips_missing_files_and_dependent_ensembles(tmp_path):
    repository = copy_repository_configs(tmp_path / "repo")
    loadable, skipped = plan_loading(repository)
    assert set(loadable) == {"qa_postprocess"}
    assert skipped["bert_onnx"] == "missing bert_onnx/1/model.onnx"
    assert skipped["qa_preprocess"] == "missing qa_preprocess/1/tokenizer.json"
    assert "qa_preprocess (skipped)" in skipped["bert_qa"]
    # The pre-processing runs its BERT model by BLS: without that model it cannot serve either.
    (repository / "qa_preprocess" / "1" / "tokenizer.json").write_text("{}")
    loadable, skipped = plan_loading(repository)
    assert skipped["qa_preprocess"] == "needs bert_onnx (skipped)" and "bert_qa" in skipped


def test_server_refuses_to_start_without_exported_model(tmp_path):
    repository = copy_repository_configs(tmp_path / "repo")
    with pytest.raises(ServerError, match="bertqa install-demo.*bertqa export"):
        EmbeddedServer(repository=repository).start()


def test_install_demo_writes_both_files_once_and_force_replaces(tmp_path):
    repository = copy_repository_configs(tmp_path / "repo")
    written = install_demo(repository)
    assert sorted(p.relative_to(repository).as_posix() for p in written) == sorted(f.target for f in DEMO_FILES)
    assert install_demo(repository) == []
    (repository / "bert_onnx/1/model.onnx").write_bytes(b"stale")
    assert install_demo(repository, force=True)
    assert (repository / "bert_onnx/1/model.onnx").stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="demo model files missing"):
        install_demo(repository, demo_dir=tmp_path / "nowhere", force=True)


def test_serve_comes_up_and_stops_cleanly_on_ctrl_c(repository):
    http, grpc, metrics = free_ports(3)
    process = subprocess.Popen(
        [*BERTQA, "serve", "--repository", str(repository), "--host", "127.0.0.1",
         "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            output.append(line)
            if line.startswith("Ctrl-C stops") or process.poll() is not None:
                break
        assert any(line.startswith("ready") for line in output), "".join(output[-30:])
        assert any(f"http://127.0.0.1:{http}/v2/models/bert_qa/infer" in line for line in output)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
    # The server is gone: its port is free again.
    import socket

    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", http)) != 0


def test_server_refuses_a_port_that_is_taken(repository):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        http, grpc, metrics = free_ports(3)
        server = EmbeddedServer(repository=repository, http_port=http, grpc_port=port, metrics_port=metrics, host="127.0.0.1")
        with pytest.raises(ServerError, match=f"gRPC port {port} is already in use"):
            server.start()
