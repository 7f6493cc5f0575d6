"""Exported models served by the real tritonserver answer exactly as in-process PyTorch / ORT do.

Uses its own server over a repository with freshly exported tiny checkpoints (the session
``triton_server`` fixture in conftest.py serves the demo model).
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from bertqa.server import free_ports
from bertqa.export.checkpoints import load_checkpoint
from bertqa.export.onnx import DEFAULT_SAMPLE_PAIRS, ort_session
from bertqa.export.pipeline import ExportOptions, export_to_repository
from bertqa.export.repository import read_parameter
from bertqa.text import DecodingConfig, QAWindower, WindowingConfig, decode_spans, load_tokenizer, pair_contexts
from export_helpers import write_dle_checkpoint, write_hf_checkpoint

pytestmark = pytest.mark.slow

PAIRS = [*DEFAULT_SAMPLE_PAIRS, ("who published the theory?", "albert einstein published the theory in 1915.")]




@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A repository that `bertqa export` creates from nothing, holding variants of two checkpoints
    with different vocabularies (FP32: an uncased DLE one; INT8: a cased HF one) and a variant whose
    BERT takes only 4 windows per batch, with at most 24 windows per request."""
    from bertqa.server import EmbeddedServer

    root = tmp_path_factory.mktemp("serving")
    repository = root / "new_repository"  # does not exist: the export creates a complete repository
    pt, _ = write_dle_checkpoint(root / "dle", seed=11)
    cased, _ = write_hf_checkpoint(root / "cased", cased=True, seed=3)
    export_to_repository(ExportOptions(checkpoint=pt, repository=repository))
    export_to_repository(ExportOptions(checkpoint=cased, format="onnx-int8", repository=repository, no_eval=True))
    export_to_repository(ExportOptions(checkpoint=pt, repository=repository, max_batch=SMALL_BATCH, max_windows=24,
                                       model_name="bert_small_batch", ensemble_name="bert_qa_small_batch"))
    http, grpc, metrics = free_ports(3)
    server = EmbeddedServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            host="127.0.0.1", log_file=root / "tritonserver.log")
    server.start()
    try:
        yield server, repository, load_checkpoint(pt)
    finally:
        server.stop()


SMALL_BATCH = 4


def _windowing(repository, preprocess="qa_preprocess") -> WindowingConfig:
    from google.protobuf import json_format

    from bertqa.export.repository import parse_config
    from bertqa.triton.params import PreprocessParameters, parse_parameters

    config = parse_config((repository / preprocess / "config.pbtxt").read_text(), preprocess)
    return parse_parameters(json_format.MessageToDict(config, preserving_proto_field_name=True),
                            PreprocessParameters).windowing()


def _decoding(repository) -> DecodingConfig:
    from google.protobuf import json_format

    from bertqa.export.repository import parse_config
    from bertqa.triton.params import PostprocessParameters, parse_parameters

    config = parse_config((repository / "qa_postprocess" / "config.pbtxt").read_text(), "qa_postprocess")
    return parse_parameters(json_format.MessageToDict(config, preserving_proto_field_name=True),
                            PostprocessParameters).decoding()


def _ask(server, model, question, context):
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url, network_timeout=300)
    try:
        inputs = [http.InferInput("question", [1, 1], "BYTES"), http.InferInput("context", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[question.encode()]], dtype=object))
        inputs[1].set_data_from_numpy(np.array([[context.encode()]], dtype=object))
        result = client.infer(model, inputs)
    finally:
        client.close()
    return (result.as_numpy("answer")[0][0].decode(), int(result.as_numpy("start")[0][0]),
            int(result.as_numpy("end")[0][0]), float(result.as_numpy("score")[0][0]))


def _expected(logits_fn, repository, question, context, preprocess="qa_preprocess"):
    tokenizer = load_tokenizer(repository / preprocess / "1" / "tokenizer.json")
    w = QAWindower(tokenizer, _windowing(repository, preprocess)).windows([question], [context])
    start, end = logits_fn(w)
    span = decode_spans(start, end, w.offsets, w.pair_index, 1, _decoding(repository),
                        window_text=pair_contexts([context], w.pair_index))[0]
    return context[span.start:span.end], span.start, span.end, span.score


def _torch_logits(model):
    def logits(w):
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(w.input_ids), attention_mask=torch.from_numpy(w.attention_mask),
                        token_type_ids=torch.from_numpy(w.token_type_ids))
        return out.start_logits.numpy(), out.end_logits.numpy()

    return logits


def test_fp32_answers_equal_pytorch(served):
    server, repository, ckpt = served
    for question, context in PAIRS:
        answer, start, end, score = _ask(server, "bert_qa", question, context)
        e_answer, e_start, e_end, e_score = _expected(_torch_logits(ckpt.model), repository, question, context)
        assert (answer, start, end) == (e_answer, e_start, e_end), question
        assert score == pytest.approx(e_score, abs=1e-4)


def test_int8_variant_of_another_checkpoint_answers_with_its_own_tokenizer(served):
    server, repository, _ = served
    session = ort_session(repository / "bert_onnx_int8" / "1" / "model.onnx")

    def int8_logits(w):
        # Dynamic INT8 scales activations per run, and the CPU backend runs 384-token windows one at
        # a time (CPU_TOKENS_PER_RUN): so does the reference.
        rows = [session.run(["start_logits", "end_logits"],
                            {k: getattr(w, k)[i:i + 1] for k in ("input_ids", "attention_mask", "token_type_ids")})
                for i in range(w.num_windows)]
        return tuple(np.concatenate([r[k] for r in rows]) for k in range(2))

    for question, context in PAIRS:
        answer, start, end, _ = _ask(server, "bert_qa_int8", question, context)
        assert (answer, start, end) == _expected(int8_logits, repository, question, context,
                                                 "qa_preprocess_int8")[:3], question


def _long_context(windows_wanted: int, windowing: WindowingConfig, tokenizer_file) -> str:
    text = DEFAULT_SAMPLE_PAIRS[-1][1]
    windower = QAWindower(load_tokenizer(tokenizer_file), dataclasses.replace(windowing, max_windows=10_000))
    context = text
    while windower.windows(["who?"], [context]).num_windows < windows_wanted:
        context += " " + text
    return context


def test_long_context_runs_bert_in_chunks_of_its_max_batch_size(served):
    """More windows than BERT's max_batch_size: the pre-processing runs them in chunks, the answer is
    the one over all windows."""
    server, repository, ckpt = served
    windowing = _windowing(repository, "qa_preprocess_small_batch")
    context = _long_context(5 * SMALL_BATCH + 1, windowing, repository / "qa_preprocess_small_batch" / "1" / "tokenizer.json")
    question = "How many crates did the Quest expedition carry?"
    answer = _ask(server, "bert_qa_small_batch", question, context)
    expected = _expected(_torch_logits(ckpt.model), repository, question, context, "qa_preprocess_small_batch")
    assert answer[:3] == expected[:3] and answer[3] == pytest.approx(expected[3], abs=1e-4)


def test_context_beyond_max_windows_is_a_clear_400_and_the_server_stays_up(served):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as http

    server, repository, _ = served
    windowing = _windowing(repository, "qa_preprocess_small_batch")
    context = _long_context(25, windowing, repository / "qa_preprocess_small_batch" / "1" / "tokenizer.json")
    with pytest.raises(http.InferenceServerException) as raised:
        _ask(server, "bert_qa_small_batch", "who?", context)
    assert raised.value.status() == "400"
    assert "but at most 24 are allowed per request (qa_preprocess parameter max_windows" in raised.value.message()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inputs = [grpcclient.InferInput("question", [1, 1], "BYTES"), grpcclient.InferInput("context", [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[b"who?"]], dtype=object))
        inputs[1].set_data_from_numpy(np.array([[context.encode()]], dtype=object))
        with pytest.raises(grpcclient.InferenceServerException) as raised:
            client.infer("bert_qa_small_batch", inputs)
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()
    assert _ask(server, "bert_qa_small_batch", *PAIRS[0])[0]  # the next good request is answered


def test_max_windows_beyond_what_postprocessing_takes_fails_at_load_naming_both_numbers(served, tmp_path):
    from bertqa.server import EmbeddedServer, ServerError

    _, repository, _ = served
    broken = tmp_path / "repository"
    shutil.copytree(repository, broken)
    post = broken / "qa_postprocess" / "config.pbtxt"
    post.write_text(post.read_text().replace("max_batch_size: 512", "max_batch_size: 16"))
    http, grpc, metrics = free_ports(3)
    log = tmp_path / "tritonserver.log"
    server = EmbeddedServer(repository=broken, http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1",
                            log_file=log, startup_timeout_s=60)
    with pytest.raises(ServerError):
        server.start()
    server.stop()
    assert "max_windows 512 exceeds qa_postprocess's max_batch_size 16" in log.read_text()
