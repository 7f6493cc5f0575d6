"""`qa_postprocess`: start/end logits of N windows -> the best answer of each of the B pairs."""

from __future__ import annotations

import json
import numpy as np
import triton_python_backend_utils as pb_utils

from bertqa.text import decode_spans
from bertqa.triton.common import bytes_tensor, error_response, input_array
from bertqa.triton.params import PostprocessParameters, parse_parameters


class PostprocessModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        try:
            params = parse_parameters(config, PostprocessParameters)
        except ValueError as err:
            raise pb_utils.TritonModelException(f"qa_postprocess: {err}") from err
        self.decoding = params.decoding()

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._answer(request))
            except ValueError as err:
                responses.append(error_response(f"qa_postprocess: {err}"))
        return responses

    def _answer(self, request) -> "pb_utils.InferenceResponse":
        start_logits = input_array(request, "start_logits")
        end_logits = input_array(request, "end_logits")
        offsets = input_array(request, "offsets")
        pair_index = input_array(request, "pair_index").reshape(-1)
        window_text = input_array(request, "window_text").reshape(-1)
        window_start = input_array(request, "window_text_start").reshape(-1)
        num_pairs = int(pair_index.max()) + 1
        spans = decode_spans(start_logits, end_logits, offsets, pair_index, num_pairs, self.decoding)

        answers = []
        for span in spans:
            if span.window < 0:
                answers.append(b"")
                continue
            text = window_text[span.window].decode("utf-8")
            base = int(window_start[span.window])
            answers.append(text[span.start - base : span.end - base].encode("utf-8"))
        return pb_utils.InferenceResponse(
            output_tensors=[
                bytes_tensor("answer", answers),
                pb_utils.Tensor("score", np.array([[s.score] for s in spans], dtype=np.float32)),
                pb_utils.Tensor("start", np.array([[s.start] for s in spans], dtype=np.int64)),
                pb_utils.Tensor("end", np.array([[s.end] for s in spans], dtype=np.int64)),
            ]
        )
