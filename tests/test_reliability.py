"""Issue 11/12: closed by default, honest addresses, the canary, per-request isolation and caps.

All against the real tritonserver (the session server of conftest.py, or a dedicated one where the
test needs its own repository or address).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bertqa.canary import CONTEXT, QUESTION, canary_body
from bertqa.server import DEFAULT_HOST, EmbeddedServer, free_ports

ADMIN_PROBES = [
    ("POST", "/v2/repository/index", b"{}"),
    ("POST", "/v2/repository/models/bert_qa/unload", b"{}"),
    ("POST", "/v2/repository/models/bert_qa/load", b"{}"),
    ("GET", "/v2/logging", None),
    ("POST", "/v2/logging", b'{"log_verbose_level": 1}'),
    ("GET", "/v2/trace/setting", None),
    ("POST", "/v2/trace/setting", b'{"trace_level": ["TIMESTAMPS"]}'),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("POST", "/v2/systemsharedmemory/region/probe/register", b'{"key": "/probe", "offset": 0, "byte_size": 64}'),
]


def request(server_or_url, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    base = server_or_url if isinstance(server_or_url, str) else f"http://{server_or_url.http_url}"
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def infer(server, model: str, inputs: list[dict]) -> tuple[int, dict]:
    status, payload = request(server, "POST", f"/v2/models/{model}/infer", json.dumps({"inputs": inputs}).encode(),
                              {"Content-Type": "application/json"})
    return status, json.loads(payload or b"{}")


_NUMPY_TYPES = {"FP32": np.float32, "INT64": np.int64, "BYTES": np.object_}


def infer_grpc(server, model: str, inputs: list[dict]) -> tuple[str, str, object]:
    """(status, error message, result) over gRPC, where internal models stay reachable (the HTTP
    front refuses them), so they must validate what they receive themselves."""
    tensors = []
    for spec in inputs:
        data = spec["data"] if spec["datatype"] != "BYTES" else [v.encode() for v in spec["data"]]
        array = np.array(data, dtype=_NUMPY_TYPES[spec["datatype"]]).reshape(spec["shape"])
        tensor = grpcclient.InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        try:
            return "OK", "", client.infer(model, tensors)
        except InferenceServerException as err:
            return err.status(), err.message(), None


def pair(question: str, context: str) -> list[dict]:
    return [
        {"name": "question", "shape": [1, 1], "datatype": "BYTES", "data": [question]},
        {"name": "context", "shape": [1, 1], "datatype": "BYTES", "data": [context]},
    ]


# --- closed by default -----------------------------------------------------------------------------


def test_serve_binds_loopback_unless_told_otherwise():
    from bertqa.cli import build_parser

    assert EmbeddedServer().host == DEFAULT_HOST == "127.0.0.1"
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"


def test_server_listens_on_loopback_only(triton_server):
    addresses = {c.laddr.ip for c in psutil.Process(triton_server.triton_pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses


@pytest.mark.parametrize("method, path, body", ADMIN_PROBES, ids=[f"{m} {p}" for m, p, _ in ADMIN_PROBES])
def test_admin_http_apis_need_the_key(triton_server, method, path, body):
    status, payload = request(triton_server, method, path, body)
    assert status == 403, payload
    assert request(triton_server, "POST", "/v2/models/bert_qa/infer", canary_body())[0] == 200


def test_admin_key_opens_the_repository_api(triton_server):
    status, payload = request(triton_server, "POST", "/v2/repository/index", b"{}", {"admin-key": triton_server.admin_key})
    assert status == 200 and {m["name"] for m in json.loads(payload)} >= {"bert_qa", "qa_preprocess"}


def test_admin_grpc_apis_need_the_key(triton_server):
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        for call in (client.get_model_repository_index, client.get_system_shared_memory_status,
                     client.get_log_settings, client.get_trace_settings,
                     lambda: client.register_system_shared_memory("probe", "/probe", 64)):
            with pytest.raises(InferenceServerException) as raised:
                call()
            assert "admin-key" in raised.value.message() or raised.value.status() == "StatusCode.UNAVAILABLE"
        assert client.is_server_ready()


def test_host_other_than_localhost_is_probed_and_printed(repository, tmp_path):
    """`--host 127.0.0.2` (not what `localhost` resolves to): readiness is probed there, URLs name it,
    and the log file is closed once the server stops."""
    http, grpc, metrics = free_ports(3)
    log = tmp_path / "triton.log"
    server = EmbeddedServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            host="127.0.0.2", log_file=log, startup_timeout_s=60)
    assert server._stop_requested is False
    server.start()
    try:
        assert server.http_url == f"127.0.0.2:{http}" and server.grpc_url == f"127.0.0.2:{grpc}"
        assert server.metrics_url == f"http://127.0.0.2:{metrics}/metrics"
        assert request(server, "GET", "/v2/health/ready")[0] == 200
    finally:
        server.stop()
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert str(log.resolve()) not in open_files, "the log file handle is still open"


# --- the canary ---------------------------------------------------------------------------------------


def canary(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bertqa.canary", *args], capture_output=True, text=True, timeout=60)


def test_canary_passes_on_a_healthy_server(triton_server):
    result = canary("--url", f"http://{triton_server.http_url}", "--expect", "Paris")
    assert result.returncode == 0, result.stderr
    assert canary("--url", triton_server.http_url, "--model", "bert_qa", "--timeout", "5").returncode == 0


@pytest.mark.parametrize("case", ["no server", "unknown model", "wrong answer"])
def test_canary_fails_with_a_one_line_reason(triton_server, case):
    (port,) = free_ports(1)
    args = {
        "no server": ["--url", f"http://127.0.0.1:{port}", "--timeout", "2"],
        "unknown model": ["--url", triton_server.http_url, "--model", "no_such_model"],
        "wrong answer": ["--url", triton_server.http_url, "--expect", "Berlin"],
    }[case]
    result = canary(*args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("canary failed: "), result.stderr
    assert {"no server": "no answer within 2 s", "unknown model": "HTTP 404",
            "wrong answer": "expected 'Berlin'"}[case] in lines[0]


# --- internal models validate what they receive --------------------------------------------------------


def postprocess_inputs(pair_index: list[int], windows: int = 1, length: int = 4) -> list[dict]:
    return [
        {"name": "start_logits", "shape": [windows, length], "datatype": "FP32", "data": [0.0] * windows * length},
        {"name": "end_logits", "shape": [windows, length], "datatype": "FP32", "data": [0.0] * windows * length},
        {"name": "offsets", "shape": [windows, length, 2], "datatype": "INT64", "data": [0, 1] * windows * length},
        {"name": "pair_index", "shape": [len(pair_index), 1], "datatype": "INT64", "data": pair_index},
        {"name": "window_text", "shape": [windows, 1], "datatype": "BYTES", "data": ["x"] * windows},
        {"name": "window_text_start", "shape": [windows, 1], "datatype": "INT64", "data": [0] * windows},
    ]


@pytest.mark.parametrize("pair_index, windows, named", [
    ([1000000], 1, "pair_index must start at 0"),
    ([-5], 1, "pair_index must start at 0"),
    ([0, 2], 2, "pair_index must start at 0 and count up by at most 1"),
    ([0], 2, "batch size does not match"),  # Triton checks this one itself
])
def test_postprocess_rejects_inconsistent_windows(triton_server, pair_index, windows, named):
    status, message, _ = infer_grpc(triton_server, "qa_postprocess", postprocess_inputs(pair_index, windows))
    assert status == "StatusCode.INVALID_ARGUMENT", message
    assert named in message and "Traceback" not in message
    status, _, result = infer_grpc(triton_server, "qa_postprocess", postprocess_inputs([0, 0, 1], 3))
    assert status == "OK" and result.as_numpy("answer").shape[0] == 2


def bert_inputs(ids: np.ndarray, mask: np.ndarray | None = None, types: np.ndarray | None = None) -> list[dict]:
    mask = np.ones_like(ids) if mask is None else mask
    types = np.zeros_like(ids) if types is None else types
    return [{"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.reshape(-1).tolist()}
            for n, a in (("input_ids", ids), ("attention_mask", mask), ("token_type_ids", types))]


@pytest.mark.parametrize("case", ["negative id", "id beyond the vocabulary", "mask not 0/1", "shapes differ"])
def test_bert_model_rejects_bad_tensors_with_400(triton_server, case):
    ids = np.full((1, 128), 100, dtype=np.int64)
    inputs, named = {
        "negative id": (bert_inputs(np.where(np.arange(128) == 5, -3, ids)), "input_ids must be >= 0"),
        "id beyond the vocabulary": (bert_inputs(np.full((1, 128), 10**6)), "out of"),
        "mask not 0/1": (bert_inputs(ids, mask=np.full_like(ids, 7)), "attention_mask must hold only 0 and 1"),
        "shapes differ": (bert_inputs(ids, types=np.zeros((1, 64), np.int64)), "inputs must have one shape"),
    }[case]
    status, message, _ = infer_grpc(triton_server, "bert_onnx", inputs)
    assert status == "StatusCode.INVALID_ARGUMENT" and named in message, message
    assert infer_grpc(triton_server, "bert_onnx", bert_inputs(ids))[0] == "OK"


def test_bad_bert_requests_do_not_fail_other_clients(triton_server):
    """Out-of-range token ids sent straight to bert_onnx (over gRPC), in the shape the public traffic has, while
    bert_qa requests run: the dynamic batcher merges them, and only the bad requests may fail."""
    context = "Paris is the capital and most populous city of France. " * 3
    bad = bert_inputs(np.full((1, 128), 10**6, dtype=np.int64))
    jobs = [("bad", i) if i % 3 == 0 else ("good", i) for i in range(90)]

    def run(job):
        kind, _ = job
        if kind == "bad":
            return kind, infer_grpc(triton_server, "bert_onnx", bad)[0]
        return kind, infer(triton_server, "bert_qa", pair(QUESTION, context))[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, jobs))
    assert [s for k, s in results if k == "good"] == [200] * 60
    assert [s for k, s in results if k == "bad"] == ["StatusCode.INVALID_ARGUMENT"] * 30


# --- bounded work per request ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, limit", [("context", 500_000), ("question", 10_000)])
def test_text_over_its_cap_is_400_before_tokenizing(triton_server, name, limit):
    texts = {"question": QUESTION, "context": CONTEXT, name: "a" * (limit + 1)}
    status, body = infer(triton_server, "bert_qa", pair(texts["question"], texts["context"]))
    assert status == 400, body
    assert f"{name}[0] has {limit + 1:,} characters; the limit is {limit:,}" in body["error"]
    assert f"max_{name}_chars" in body["error"]
    texts[name] = "Paris " * (limit // 6 - 1) if name == "context" else "What is the capital of France? " * 300
    assert len(texts[name]) <= limit
    status, body = infer(triton_server, "bert_qa", pair(texts["question"], texts["context"]))
    assert status in (200, 400) and "characters; the limit" not in body.get("error", "")


# --- a model error in one group of a merged batch fails only that group (issue 12) ------------------------

BATCH_SUM_CONFIG = """name: "batch_sum"
platform: "onnxruntime_onnx"
max_batch_size: 8
# Ragged batching lets requests of different shapes reach one execute() call (as two shape groups);
# the queue delay is long enough that two concurrent requests are batched together.
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching { max_queue_delay_microseconds: 1000000 }
"""


def write_batch_sum_model(path: Path) -> None:
    """y = x summed over the batch, keeping a batch of 1: a model whose output batch is wrong for n > 1."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "batch_sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [0])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_model_error_in_one_group_leaves_the_other_groups_answered(repository, tmp_path):
    models = tmp_path / "models"
    (models / "batch_sum" / "1").mkdir(parents=True)
    (models / "batch_sum" / "config.pbtxt").write_text(BATCH_SUM_CONFIG)
    write_batch_sum_model(models / "batch_sum" / "1" / "model.onnx")
    # The server needs a question-answering model to start; borrow the session repository's.
    for name in ("qa_preprocess", "bert_onnx", "qa_postprocess", "bert_qa"):
        (models / name).symlink_to(repository / name, target_is_directory=True)
    http, grpc, metrics = free_ports(3)
    server = EmbeddedServer(repository=models, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            log_file=tmp_path / "triton.log", startup_timeout_s=90)
    server.start()
    try:
        one_row = [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]
        two_rows = [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 8}]
        with ThreadPoolExecutor(max_workers=2) as pool:
            good, bad = pool.map(lambda inputs: infer(server, "batch_sum", inputs), (one_row, two_rows))
    finally:
        server.stop()
    assert good[0] == 200, good
    assert good[1]["outputs"][0]["data"] == [1.0, 2.0, 3.0]
    assert bad[0] == 500 and "output y has shape (1, 4), expected batch 2" in bad[1]["error"], bad
    assert "Traceback" not in bad[1]["error"]
