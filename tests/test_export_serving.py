"""Exported models served by the real tritonserver answer exactly as in-process PyTorch / ORT do.

Uses its own server over a repository with freshly exported tiny checkpoints (the session
``triton_server`` fixture in conftest.py serves the demo model).
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from bertqa.server import free_ports
from bertqa.export.checkpoints import load_checkpoint
from bertqa.export.onnx import DEFAULT_SAMPLE_PAIRS, ort_session
from bertqa.export.pipeline import ExportOptions, export_to_repository
from bertqa.export.repository import read_parameter
from bertqa.text import DecodingConfig, QAWindower, WindowingConfig, decode_spans, load_tokenizer, pair_contexts
from export_helpers import copy_repository_configs, write_dle_checkpoint

pytestmark = pytest.mark.slow

PAIRS = [*DEFAULT_SAMPLE_PAIRS, ("who published the theory?", "albert einstein published the theory in 1915.")]




@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from bertqa.server import EmbeddedServer

    root = tmp_path_factory.mktemp("serving")
    repository = copy_repository_configs(root / "model_repository")
    pt, _ = write_dle_checkpoint(root / "dle", seed=11)
    export_to_repository(ExportOptions(checkpoint=pt, repository=repository))
    export_to_repository(ExportOptions(checkpoint=pt, format="onnx-int8", repository=repository, no_eval=True))
    http, grpc, metrics = free_ports(3)
    server = EmbeddedServer(repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics,
                            host="127.0.0.1", log_file=root / "tritonserver.log")
    server.start()
    try:
        yield server, repository, load_checkpoint(pt)
    finally:
        server.stop()


def _windowing(repository) -> WindowingConfig:
    get = lambda key: read_parameter(repository, "qa_preprocess", key)  # noqa: E731
    return WindowingConfig(
        max_seq_len=int(get("max_seq_len")), doc_stride=int(get("doc_stride")), max_query_len=int(get("max_query_len")),
        seq_len_buckets=tuple(int(b) for b in get("seq_len_buckets").split(",")), max_windows=int(get("max_windows")),
    )


def _decoding(repository) -> DecodingConfig:
    return DecodingConfig(n_best=int(read_parameter(repository, "qa_postprocess", "n_best")),
                          max_answer_len=int(read_parameter(repository, "qa_postprocess", "max_answer_len")))


def _ask(server, model, question, context):
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url)
    inputs = [http.InferInput("question", [1, 1], "BYTES"), http.InferInput("context", [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[question.encode()]], dtype=object))
    inputs[1].set_data_from_numpy(np.array([[context.encode()]], dtype=object))
    result = client.infer(model, inputs)
    return (result.as_numpy("answer")[0][0].decode(), int(result.as_numpy("start")[0][0]),
            int(result.as_numpy("end")[0][0]), float(result.as_numpy("score")[0][0]))


def _expected(logits_fn, repository, question, context):
    windower = QAWindower(load_tokenizer(repository / "qa_preprocess" / "1" / "tokenizer.json"), _windowing(repository))
    w = windower.windows([question], [context])
    start, end = logits_fn(w)
    span = decode_spans(start, end, w.offsets, w.pair_index, 1, _decoding(repository),
                        pair_contexts([context], w.pair_index))[0]
    return context[span.start:span.end], span.start, span.end, span.score


def test_fp32_answers_equal_pytorch(served):
    server, repository, ckpt = served

    def torch_logits(w):
        with torch.no_grad():
            out = ckpt.model(input_ids=torch.from_numpy(w.input_ids), attention_mask=torch.from_numpy(w.attention_mask),
                             token_type_ids=torch.from_numpy(w.token_type_ids))
        return out.start_logits.numpy(), out.end_logits.numpy()

    for question, context in PAIRS:
        answer, start, end, score = _ask(server, "bert_qa", question, context)
        e_answer, e_start, e_end, e_score = _expected(torch_logits, repository, question, context)
        assert (answer, start, end) == (e_answer, e_start, e_end), question
        assert score == pytest.approx(e_score, abs=1e-4)


def test_int8_answers_equal_onnxruntime_int8(served):
    server, repository, _ = served
    session = ort_session(repository / "bert_onnx_int8" / "1" / "model.onnx")

    def int8_logits(w):
        return tuple(session.run(["start_logits", "end_logits"],
                                 {k: getattr(w, k) for k in ("input_ids", "attention_mask", "token_type_ids")}))

    for question, context in PAIRS:
        answer, start, end, _ = _ask(server, "bert_qa_int8", question, context)
        assert (answer, start, end) == _expected(int8_logits, repository, question, context)[:3], question
