"""The real tritonserver over HTTP and gRPC: answers equal the in-process reference; bad input is a 400."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bertqa.client.qa_client import QAClient

CITY = (
    "Zürich is the largest city in Switzerland. The river Limmat flows through it. "
    "Zoë Müller was born in Zürich in 1987 and later moved to Genève, where she founded "
    "the café Naïve Rêve in 2012."
)
PAIRS = [
    ("Where was Zoë Müller born?", CITY),
    ("When did she found the café?", CITY),
    ("Which river flows through Zürich?", "  The   river \t Limmat   flows through   Zürich.  "),
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
]


def long_context(words: int) -> str:
    filler = "The committee met again on a rainy day and discussed the budget for the next year. "
    needle = "The secret password of the archive is marmalade. "
    sentences = [filler] * (words // len(filler.split()))
    sentences[len(sentences) * 3 // 4] = needle
    return "".join(sentences)


def post_json(server, body: dict, model: str = "bert_qa"):
    url = f"http://{server.http_url}/v2/models/{model}/infer"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def pair_body(questions, contexts, shape=None):
    shape = shape or [len(questions), 1]
    return {
        "inputs": [
            {"name": "question", "shape": shape, "datatype": "BYTES", "data": list(questions)},
            {"name": "context", "shape": shape, "datatype": "BYTES", "data": list(contexts)},
        ]
    }


@pytest.fixture(scope="module", params=["http", "grpc"])
def client(request, triton_server):
    url = triton_server.http_url if request.param == "http" else triton_server.grpc_url
    with QAClient(url, request.param) as qa:
        yield qa


def assert_same(served, expected):
    assert [a.text for a in served] == [e.text for e in expected]
    assert [(a.start, a.end) for a in served] == [(e.start, e.end) for e in expected]
    np.testing.assert_allclose([a.score for a in served], [e.score for e in expected], rtol=1e-4, atol=1e-6)


def test_server_loaded_the_ensemble_and_skipped_nothing_needed(triton_server):
    assert {"qa_preprocess", "bert_onnx", "qa_postprocess", "bert_qa"} <= set(triton_server.loaded)


def test_answers_equal_reference_one_pair_per_request(client, reference):
    for question, context in PAIRS:
        served = client.ask(question, context)
        assert_same(served, reference.answer([question], [context]))
        (answer,) = served
        assert context[answer.start : answer.end] == answer.text


def test_answers_equal_reference_batched_request(client, reference):
    questions, contexts = zip(*PAIRS)
    served = client.ask(list(questions), list(contexts))
    assert len(served) == len(PAIRS)
    assert_same(served, reference.answer(questions, contexts))


def test_multi_window_context_equals_reference(client, reference):
    context = long_context(1500)
    question = "What is the secret password of the archive?"
    assert reference.windower.windows([question], [context]).num_windows > 2
    served = client.ask(question, context)
    assert_same(served, reference.answer([question], [context]))
    assert served[0].text == "marmalade"


def test_concurrent_requests_equal_reference(triton_server, reference, client):
    jobs = [PAIRS[i % len(PAIRS)] for i in range(24)]
    expected = {q: reference.answer([q], [c])[0] for q, c in PAIRS}

    def ask(pair):
        with QAClient(client.url, client.protocol) as own:
            return pair[0], own.ask(*pair)[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, jobs))
    for question, answer in results:
        assert (answer.text, answer.start, answer.end) == (
            expected[question].text,
            expected[question].start,
            expected[question].end,
        )


def test_eight_thousand_word_context_is_answered(client):
    context = long_context(8000)
    assert len(context.split()) >= 7900
    (answer,) = client.ask("What is the secret password of the archive?", context)
    # The planted answer itself, where it was planted (an empty or wrong span would pass a bare offsets check).
    assert answer.text == "marmalade"
    assert answer.start == context.index("The secret password of the archive is marmalade.") + len(
        "The secret password of the archive is "
    )
    assert context[answer.start : answer.end] == answer.text


def test_curl_style_json_request(triton_server, reference):
    question, context = PAIRS[0]
    status, body = post_json(triton_server, pair_body([question], [context]))
    assert status == 200, body
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    expected = reference.answer([question], [context])[0]
    assert outputs["answer"] == [expected.text]
    assert outputs["start"] == [expected.start] and outputs["end"] == [expected.end]


# --- bad input: a clear 400 / INVALID_ARGUMENT naming the problem, and the server stays up -------------

HTTP_BAD_REQUESTS = [
    ("empty question", pair_body([""], ["Some context."]), "question[0] is empty"),
    ("empty context", pair_body(["Who?"], ["  "]), "context[0] is empty"),
    (
        "wrong dtype",
        {
            "inputs": [
                {"name": "question", "shape": [1, 1], "datatype": "INT32", "data": [1]},
                {"name": "context", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]},
            ]
        },
        "question",
    ),
    ("wrong shape", pair_body(["a", "b"], ["c", "d"], shape=[1, 2]), "unexpected shape"),
    (
        "missing input",
        {"inputs": [{"name": "question", "shape": [1, 1], "datatype": "BYTES", "data": ["Who?"]}]},
        "context",
    ),
    (
        "too many windows",
        pair_body(["Who?"], ["word " * 30000]),  # > the session server's max_windows (conftest)
        "windows",
    ),
]


@pytest.mark.parametrize("case, body, named", HTTP_BAD_REQUESTS, ids=[c[0] for c in HTTP_BAD_REQUESTS])
def test_bad_http_input_is_400_and_server_keeps_serving(triton_server, case, body, named):
    status, response = post_json(triton_server, body)
    assert status == 400, response
    assert named in response["error"]
    status, _ = post_json(triton_server, pair_body(*zip(PAIRS[3])))
    assert status == 200


def _grpc_input(name, array, datatype):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def grpc_bad_inputs():
    text = lambda *v: np.array(list(v), dtype=np.object_).reshape(-1, 1)  # noqa: E731
    return [
        ("non-UTF-8 bytes", [_grpc_input("question", text(b"who\xff?"), "BYTES"), _grpc_input("context", text(b"x"), "BYTES")], "not valid UTF-8 (byte 0xff at position 3)"),
        ("empty context", [_grpc_input("question", text(b"who?"), "BYTES"), _grpc_input("context", text(b""), "BYTES")], "context[0] is empty"),
        ("wrong dtype", [_grpc_input("question", np.ones((1, 1), np.int32), "INT32"), _grpc_input("context", text(b"x"), "BYTES")], "question"),
        ("missing input", [_grpc_input("question", text(b"who?"), "BYTES")], "context"),
        ("mismatched batch", [_grpc_input("question", text(b"a", b"b"), "BYTES"), _grpc_input("context", text(b"x"), "BYTES")], "batch"),
    ]


@pytest.mark.parametrize("case", [c[0] for c in grpc_bad_inputs()])
def test_bad_grpc_input_is_invalid_argument_and_server_keeps_serving(triton_server, case):
    _, inputs, named = next(c for c in grpc_bad_inputs() if c[0] == case)
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as raised:
            client.infer("bert_qa", inputs)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert named in raised.value.message()
    with QAClient(triton_server.grpc_url, "grpc") as qa:
        assert qa.ask(*PAIRS[3])[0].text


def test_non_utf8_over_http_binary_protocol(triton_server):
    inputs = []
    for name, value in (("question", b"who\xfe?"), ("context", b"x")):
        tensor = httpclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_), binary_data=True)
        inputs.append(tensor)
    with httpclient.InferenceServerClient(triton_server.http_url) as client:
        with pytest.raises(InferenceServerException) as raised:
            client.infer("bert_qa", inputs)
    assert raised.value.status() == "400"
    assert "question[0] is not valid UTF-8 (byte 0xfe at position 3)" in raised.value.message()


def test_one_bad_pair_fails_only_its_request(triton_server):
    """Requests batched together by the dynamic batcher are validated one by one."""
    bodies = [pair_body(["Who?"], [""]) if i % 2 else pair_body(*zip(PAIRS[3])) for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda b: post_json(triton_server, b)[0], bodies))
    assert statuses == [400 if i % 2 else 200 for i in range(8)]


def test_metrics_endpoint_reports_inference_counts(triton_server):
    with urllib.request.urlopen(triton_server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert 'nv_inference_request_success{model="bert_qa"' in text


def test_bad_parameters_fail_the_load_naming_the_model(repository, tmp_path):
    """Both backends' initialize (ONNX Runtime and the Python postprocess) turn a bad parameter into a
    TritonModelException that names the model; tritonserver then refuses to start."""
    import shutil

    from bertqa.server import EmbeddedServer, ServerError, free_ports

    broken = tmp_path / "repository"
    shutil.copytree(repository, broken)
    for model, key in (("bert_onnx", "intra_op_threads"), ("qa_postprocess", "colour")):
        config = broken / model / "config.pbtxt"
        config.write_text(config.read_text() + f'parameters {{ key: "{key}" value {{ string_value: "2" }} }}\n')
    http, grpc, metrics = free_ports(3)
    log = tmp_path / "tritonserver.log"
    server = EmbeddedServer(repository=broken, http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1",
                            log_file=log, startup_timeout_s=60)
    with pytest.raises(ServerError):
        server.start()
    server.stop()
    text = log.read_text()
    assert "bert_onnx: model 'bert_onnx': unknown parameters ['intra_op_threads']" in text
    assert "qa_postprocess: model 'qa_postprocess': unknown parameters ['colour']" in text
