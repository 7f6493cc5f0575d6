"""OpenVINO variants: typed parameters, export validation, and the embedded openvino backend served by tritonserver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from bertqa.openvino_runtime import NATIVE_ONLY_PARAMETERS, OpenVinoParameters, OpenVinoSession
from bertqa.server import free_ports
from bertqa.triton.params import ParameterError, parse_parameters
from export_helpers import copy_repository_configs, write_hf_checkpoint

pytest.importorskip("openvino")

PAIRS = [
    ("who published the theory?", "albert einstein published the theory of general relativity in 1915."),
    ("what is the capital of france?", "paris is the capital of france and its population is large."),
]


# --------------------------------------------------------------------------------------------------
# Parameters and config


@pytest.mark.parametrize("raw, message", [
    ({"NUM_STREAMS": "two"}, "NUM_STREAMS"),
    ({"PERFORMANCE_HINT": "fast"}, "PERFORMANCE_HINT"),
    ({"INFERENCE_NUM_THREADS": "-1"}, "INFERENCE_NUM_THREADS"),
    ({"HINT_BF16": "maybe"}, "HINT_BF16"),
    ({"INFERENCE_PRECISION_HINT": "f16"}, "INFERENCE_PRECISION_HINT"),
    ({"HINT_BF16": "YES", "INFERENCE_PRECISION_HINT": "f32"}, "contradicts"),
    ({"TOKENS_PER_RUN": "0"}, "TOKENS_PER_RUN"),
    ({"NUM_STREMS": "1"}, "unknown parameters"),
])
def test_bad_parameters_are_named(raw, message):
    config = {"name": "m", "parameters": {k: {"string_value": v} for k, v in raw.items()}}
    with pytest.raises(ParameterError, match=message):
        parse_parameters(config, OpenVinoParameters, ignore=NATIVE_ONLY_PARAMETERS)


def test_parameters_become_openvino_properties():
    params = OpenVinoParameters(NUM_STREAMS="2", PERFORMANCE_HINT="throughput", INFERENCE_NUM_THREADS=1, HINT_BF16=True)
    assert params.properties() == {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2", "ENABLE_CPU_PINNING": False,
                                   "INFERENCE_NUM_THREADS": "1", "INFERENCE_PRECISION_HINT": "bf16"}
    assert OpenVinoParameters(INFERENCE_PRECISION_HINT="f32").properties()["INFERENCE_PRECISION_HINT"] == "f32"
    # Without native BF16, OpenVINO would emulate it (about 30x slower than FP32): f32 is asked for instead.
    assert params.properties(native_bf16=False)["INFERENCE_PRECISION_HINT"] == "f32"
    assert OpenVinoParameters(INFERENCE_PRECISION_HINT="bf16").properties(False)["INFERENCE_PRECISION_HINT"] == "f32"


def test_session_computes_bf16_only_where_the_cpu_has_it(exported):
    from bertqa.openvino_runtime import cpu_capabilities

    repository, _, _ = exported
    session = OpenVinoSession(repository / "bert_openvino" / "1" / "model.xml", OpenVinoParameters(HINT_BF16=True))
    if "BF16" in cpu_capabilities():
        assert session.precision == "bf16" and not session.bf16_fallback
    else:
        assert session.precision == "f32" and session.bf16_fallback and "no native BF16" in session.describe()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_generated_config_is_read_back_by_the_embedded_backend(precision):
    from tritonclient.grpc import model_config_pb2

    from bertqa.export.openvino import openvino_model_config, runtime_parameters
    from bertqa.export.repository import TensorSpec, parse_config

    params = runtime_parameters(precision, streams=2, threads=1)
    text = openvino_model_config(
        "bert_openvino", [TensorSpec("input_ids", "TYPE_INT64", (-1,))],
        [TensorSpec("start_logits", "TYPE_FP32", (-1,))], params, max_batch_size=16)
    config = parse_config(text, "bert_openvino/config.pbtxt")
    assert config.backend == "openvino" and config.default_model_filename == "model.xml"
    # qa_preprocess batches across requests; a dynamic batcher here would busy-wait (bertqa.export.repository).
    assert config.max_batch_size == 16 and not config.HasField("dynamic_batching")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    # The native backend's keys; the embedded backend parses the very same dict back.
    assert config.parameters["RESHAPE_IO_LAYERS"].string_value == "YES"
    as_json = json_format.MessageToDict(config, preserving_proto_field_name=True)
    assert parse_parameters(as_json, OpenVinoParameters, ignore=NATIVE_ONLY_PARAMETERS) == params
    assert ("HINT_BF16" in config.parameters) == (precision != "fp32")
    assert len(config.model_warmup) == 0


@pytest.mark.parametrize("tokens_per_run", [512, None])
def test_warmup_covers_every_shape_the_backend_runs(tokens_per_run):
    import dataclasses

    from bertqa.export.openvino import openvino_model_config, runtime_parameters
    from bertqa.export.repository import TensorSpec, parse_config

    params = runtime_parameters("int8")
    if tokens_per_run:
        params = dataclasses.replace(params, TOKENS_PER_RUN=tokens_per_run)
    inputs = [TensorSpec(n, "TYPE_INT64", (-1,)) for n in ("input_ids", "attention_mask", "token_type_ids")]
    text = openvino_model_config("m", inputs, [TensorSpec("start_logits", "TYPE_FP32", (-1,))],
                                 params, warmup_lengths=(128, 384))
    config = parse_config(text, "m")
    shapes = {(w.batch_size, tuple(w.inputs["input_ids"].dims)) for w in config.model_warmup}
    most_rows = {length: params.TOKENS_PER_RUN // length for length in (128, 384)}
    assert shapes == {(rows, (length,)) for length, most in most_rows.items() for rows in range(1, most + 1)}
    assert config.parameters["TOKENS_PER_RUN"].string_value == str(params.TOKENS_PER_RUN)


def test_batches_run_in_bounded_chunks_with_the_same_logits(tmp_path):
    """Chunking (and the stream/latency-model split) changes no logit: a batch equals its rows run alone."""
    import openvino as ov

    ids = ov.opset13.parameter([-1, -1], ov.Type.i64, name="input_ids")
    scores = ov.opset13.convert(ids, ov.Type.f32)
    model = ov.Model([ov.opset13.multiply(scores, ov.opset13.constant(np.float32(0.5)))], [ids], "m")
    model.outputs[0].get_tensor().set_names({"start_logits"})
    ov.save_model(model, str(tmp_path / "model.xml"))
    rows = 2 * (256 // 128) + 1
    feeds = {"input_ids": np.arange(rows * 128, dtype=np.int64).reshape(rows, 128)}
    for params in (OpenVinoParameters(TOKENS_PER_RUN=256),
                   OpenVinoParameters(NUM_STREAMS="2", INFERENCE_NUM_THREADS=2, LATENCY_THREADS=2, TOKENS_PER_RUN=256)):
        session = OpenVinoSession(tmp_path / "model.xml", params)
        chunks = []
        run_chunk = session._run_chunk
        session._run_chunk = lambda names, part: chunks.append(len(part["input_ids"])) or run_chunk(names, part)
        (out,) = session.run(None, feeds)
        assert np.array_equal(out, feeds["input_ids"] * 0.5)
        if session.streams == 1:  # one stream: chunk by chunk, at most 256 tokens each
            assert chunks == [2, 2, 1]


# --------------------------------------------------------------------------------------------------
# Export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from bertqa.export.pipeline import ExportOptions, export_to_repository

    root = tmp_path_factory.mktemp("openvino")
    repository = copy_repository_configs(root / "model_repository")
    folder, _ = write_hf_checkpoint(root / "hf", seed=5)
    reports = {}
    for precision in ("fp32", "int8"):
        result = export_to_repository(ExportOptions(checkpoint=folder, format="openvino", precision=precision,
                                                    repository=repository, max_eval=8))
        reports[precision] = result.reports["openvino"]
    return repository, folder, reports


@pytest.mark.slow
def test_export_writes_validated_ir_and_ensemble(exported):
    from bertqa.export.repository import read_parameter

    repository, _, reports = exported
    for model, ensemble in (("bert_openvino", "bert_qa_openvino"), ("bert_openvino_int8", "bert_qa_openvino_int8")):
        assert (repository / model / "1" / "model.xml").is_file() and (repository / model / "1" / "model.bin").is_file()
        preprocess = ensemble.replace("bert_qa", "qa_preprocess")  # the variant's own pre-processing runs it by BLS
        assert f'model_name: "{preprocess}"' in (repository / ensemble / "config.pbtxt").read_text()
        assert read_parameter(repository, preprocess, "bert_model") == model
    assert reports["fp32"]["max_abs_diff_start"] < 1e-3 and reports["fp32"]["argmax_agreement"] == 1.0
    assert reports["int8"]["calibration_windows"] > 0 and reports["int8"]["eval_questions"] == 8
    assert json.loads((repository / "bert_openvino_int8" / "1" / "export.json").read_text())["precision"] == "int8"


@pytest.mark.slow
def test_failed_validation_writes_nothing(exported, tmp_path):
    from bertqa.export.onnx import INPUT_NAMES
    from bertqa.export.openvino import OpenVinoExportError, export_openvino
    from bertqa.text import WindowingConfig

    repository, folder, _ = exported
    session = OpenVinoSession(repository / "bert_openvino" / "1" / "model.xml")
    feeds = {n: np.ones((1, 16), dtype=np.int64) for n in INPUT_NAMES}
    start, end = session.run(None, feeds)
    wrong = [(feeds, (start + 1.0, end))]  # a reference the conversion cannot match
    with pytest.raises(OpenVinoExportError, match="differs from PyTorch"):
        export_openvino(repository / "bert_openvino" / "1" / "model.xml", tmp_path / "out", precision="fp32",
                        reference_batches=wrong, tokenizer_file=folder / "tokenizer.json", windowing=WindowingConfig())
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_install_from_repository_onnx_without_pytorch(tmp_path, monkeypatch, capsys):
    from bertqa.export.openvino import install_from_repository, main
    from bertqa.export.pipeline import ExportOptions, export_to_repository

    repository = copy_repository_configs(tmp_path / "model_repository")
    assert main(["--repository", str(repository), "--precision", "int8"]) == 1  # no ONNX model yet: a clear error
    assert not (repository / "bert_openvino_int8").exists()
    folder, _ = write_hf_checkpoint(tmp_path / "hf", seed=7)
    export_to_repository(ExportOptions(checkpoint=folder, repository=repository))
    model_dir = install_from_repository(repository, "int8", max_eval=4)
    assert (model_dir / "1" / "model.xml").is_file() and (repository / "bert_qa_openvino_int8" / "config.pbtxt").is_file()
    assert json.loads((model_dir / "1" / "export.json").read_text())["report"]["calibration_windows"] > 0
    assert main(["--repository", str(repository), "--precision", "int8", "--if-missing"]) == 0
    # auto on a CPU without native BF16 is that INT8 variant (already installed from this ONNX model).
    monkeypatch.setattr("bertqa.export.openvino.cpu_capabilities", lambda: ["FP32", "INT8"])
    capsys.readouterr()
    assert main(["--repository", str(repository), "--precision", "auto", "--if-missing"]) == 0
    said = capsys.readouterr().out
    assert "CPU default for this CPU: int8" in said and "bert_openvino_int8: already installed" in said
    assert not (repository / "bert_openvino_bf16").exists()


# --------------------------------------------------------------------------------------------------
# Served by the embedded openvino backend


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    from bertqa.server import EmbeddedServer

    repository, _, _ = exported
    http, grpc, metrics = free_ports(3)
    server = EmbeddedServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            host="127.0.0.1", log_file=tmp_path_factory.mktemp("logs") / "tritonserver.log")
    server.start()
    try:
        yield server, repository
    finally:
        server.stop()


def _ask(client_module, url, model, question, context):
    client = client_module.InferenceServerClient(url)
    try:
        inputs = [client_module.InferInput("question", [1, 1], "BYTES"), client_module.InferInput("context", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[question.encode()]], dtype=object))
        inputs[1].set_data_from_numpy(np.array([[context.encode()]], dtype=object))
        result = client.infer(model, inputs)
        return result.as_numpy("answer")[0][0].decode(), int(result.as_numpy("start")[0][0]), int(result.as_numpy("end")[0][0])
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bert_openvino", "bert_openvino_int8"])
def test_served_answers_equal_in_process_openvino(served, model):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    from bertqa.reference import ReferencePipeline

    server, repository = served
    reference = ReferencePipeline.from_repository(repository, model)
    ensemble = model.replace("bert_", "bert_qa_")
    for question, context in PAIRS:
        expected = reference.answer([question], [context])[0]
        for module, url in ((http, server.http_url), (grpc, server.grpc_url)):
            assert _ask(module, url, ensemble, question, context) == (expected.text, expected.start, expected.end)


@pytest.mark.slow
def test_bad_batch_fails_alone_and_the_model_keeps_serving(served):
    # gRPC reaches the internal BERT model directly (the HTTP front keeps it private: 403).
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    server, _ = served
    client = grpc.InferenceServerClient(server.grpc_url)
    try:
        def request(ids_len, mask_len):
            inputs = []
            for name, length in (("input_ids", ids_len), ("attention_mask", mask_len), ("token_type_ids", ids_len)):
                tensor = grpc.InferInput(name, [1, length], "INT64")
                tensor.set_data_from_numpy(np.ones((1, length), dtype=np.int64))
                inputs.append(tensor)
            return client.infer("bert_openvino", inputs)

        with pytest.raises(InferenceServerException) as caught:
            request(16, 12)  # mismatched lengths: OpenVINO cannot run it
        assert "INVALID_ARGUMENT" in str(caught.value.status()) and "bert_openvino" in caught.value.message()
        assert request(16, 16).as_numpy("start_logits").shape == (1, 16)
    finally:
        client.close()


@pytest.mark.slow
def test_canary_probes_idle_ensembles_one_at_a_time(served):
    """Each idle ensemble is probed once per canary interval, but in turns spread over the interval, not
    all at once: probes arriving together cost a busy model's tail latency on a 2-core host."""
    import time
    import urllib.request

    server, repository = served
    ensembles = sorted(d.name for d in repository.iterdir() if 'platform: "ensemble"' in (
        (d / "config.pbtxt").read_text() if (d / "config.pbtxt").is_file() else ""))
    ensembles = [m for m in ensembles if m in server.supervisor.state.public]
    assert len(ensembles) >= 2, ensembles

    def succeeded(model: str) -> int:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/stats", timeout=10) as response:
            stats = json.loads(response.read())
        return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])

    counts = {m: succeeded(m) for m in ensembles}
    probes: list[tuple[float, str]] = []
    began = time.monotonic()
    while time.monotonic() - began < 3.5 * server.supervisor.health.canary_interval_s:
        for model in ensembles:
            if (now := succeeded(model)) > counts[model]:
                probes += [(time.monotonic(), model)] * (now - counts[model])
                counts[model] = now
        time.sleep(0.02)
    assert all(sum(m == model for _, m in probes) >= 2 for model in ensembles), probes  # each still probed
    gaps = [later - earlier for (earlier, a), (later, b) in zip(probes, probes[1:]) if a != b]
    assert min(gaps) > 0.25, f"probes of different ensembles arrived together: {probes}"


def test_auto_precision_is_bf16_only_where_the_cpu_computes_bf16():
    from bertqa.export.openvino import cpu_default_precision, resolve_precision

    assert cpu_default_precision(["WINOGRAD", "BF16", "FP32", "INT8"]) == "bf16"
    assert cpu_default_precision(["WINOGRAD", "FP32", "INT8"]) == "int8"
    assert resolve_precision("auto", ["FP32", "INT8"]) == "int8"
    assert resolve_precision("fp32", ["BF16"]) == "fp32"  # a forced precision stays


def test_bf16_note_names_the_missing_hardware():
    from bertqa.export.openvino import bf16_note

    assert bf16_note(["BF16", "FP32", "INT8"]) is None
    note = bf16_note(["FP32", "INT8"])
    assert "no native BF16" in note and "FP32" in note and "--precision int8" in note


_FORKS_AFTER_IMPORT = """
import os, sys, time
forks = []
os.register_at_fork(before=lambda: forks.append(1))
if sys.argv[1] == "plain":
    import openvino
else:
    from bertqa.openvino_runtime import import_openvino
    import_openvino()
    import nncf  # reports through the same telemetry
time.sleep(1)  # the report is sent from a worker thread
print(len(forks))
"""


@pytest.mark.parametrize("how", ["plain", "bertqa"])
def test_openvino_telemetry_is_declined(tmp_path, how):
    """`import openvino` forks a child to report usage (and creates ~/intel) unless declined; the project's
    import declines it: a server does not phone home, and a fork inside a Triton stub once hung it."""
    pytest.importorskip("nncf")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}  # CI declines too
    env["HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", _FORKS_AFTER_IMPORT, how], env=env, capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    forks = int(done.stdout.split()[-1])
    if how == "plain":  # the reason for import_openvino; if OpenVINO stops reporting, this says so
        assert forks >= 1 and (tmp_path / "intel").is_dir(), "OpenVINO no longer reports usage on import"
    else:
        assert forks == 0 and not (tmp_path / "intel").exists()
