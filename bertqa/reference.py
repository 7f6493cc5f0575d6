"""The in-process reference pipeline: tokenize + ONNX Runtime + span decoding, no server.

It reads the same repository files and parameters as the served `bert_qa` ensemble, so served and
reference answers must agree exactly; it is also the ceiling the benchmarks compare serving against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
from google.protobuf import json_format

from bertqa.repository import preprocess_of, read_config
from bertqa.text import (
    Answer,
    DecodingConfig,
    QAWindower,
    WindowingConfig,
    answers_from_spans,
    decode_spans,
    load_tokenizer,
    pair_contexts,
)
from bertqa.triton.params import PostprocessParameters, PreprocessParameters, parse_parameters


def _parameters(config_path: Path, spec):
    config = json_format.MessageToDict(read_config(config_path), preserving_proto_field_name=True)
    return parse_parameters(config, spec)


class ReferencePipeline:
    def __init__(
        self,
        onnx_path: str | Path,
        tokenizer_path: str | Path,
        windowing: WindowingConfig = WindowingConfig(),
        decoding: DecodingConfig = DecodingConfig(),
        intra_op_threads: int = 0,
        max_batch: int = 64,
        session=None,
    ):
        """``session``: anything with ONNX Runtime's ``run(output_names, feeds)`` (e.g. an OpenVinoSession);
        default: an ONNX Runtime session of ``onnx_path``."""
        if session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = intra_op_threads
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.session = session
        self.windower = QAWindower(load_tokenizer(tokenizer_path), windowing)
        self.decoding = decoding
        self.max_batch = max_batch

    @classmethod
    def from_repository(
        cls, repository: str | Path, bert_model: str = "bert_onnx", **kwargs
    ) -> "ReferencePipeline":
        """Built from the same files and parameters that the served ensemble uses."""
        repository = Path(repository)
        preprocess = preprocess_of(repository, bert_model)  # the variant's own tokenizer and windowing
        pre = _parameters(repository / preprocess / "config.pbtxt", PreprocessParameters)
        post = _parameters(repository / "qa_postprocess" / "config.pbtxt", PostprocessParameters)
        bert_config = read_config(repository / bert_model / "config.pbtxt")
        if bert_config.backend == "openvino" and "session" not in kwargs:
            from bertqa.openvino_runtime import NATIVE_ONLY_PARAMETERS, OpenVinoParameters, OpenVinoSession

            config = json_format.MessageToDict(bert_config, preserving_proto_field_name=True)
            params = parse_parameters(config, OpenVinoParameters, ignore=NATIVE_ONLY_PARAMETERS)
            kwargs["session"] = OpenVinoSession(
                repository / bert_model / "1" / (bert_config.default_model_filename or "model.xml"), params)
        return cls(
            repository / bert_model / "1" / "model.onnx",
            repository / preprocess / "1" / pre.tokenizer_file,
            pre.windowing(),
            post.decoding(),
            **kwargs,
        )

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray):
        starts, ends = [], []
        for first in range(0, input_ids.shape[0], self.max_batch):
            rows = slice(first, first + self.max_batch)
            start, end = self.session.run(
                ["start_logits", "end_logits"],
                {
                    "input_ids": input_ids[rows],
                    "attention_mask": attention_mask[rows],
                    "token_type_ids": token_type_ids[rows],
                },
            )
            starts.append(start)
            ends.append(end)
        return np.concatenate(starts), np.concatenate(ends)

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[Answer]:
        windows = self.windower.windows(questions, contexts)
        start, end = self.logits(windows.input_ids, windows.attention_mask, windows.token_type_ids)
        spans = decode_spans(
            start, end, windows.offsets, windows.pair_index, len(questions), self.decoding,
            window_text=pair_contexts(contexts, windows.pair_index),
        )
        return answers_from_spans(spans, contexts)
