"""`qa_postprocess`: start/end logits of N windows -> the best answer of each of the B pairs."""

from __future__ import annotations

import json
import numpy as np
import triton_python_backend_utils as pb_utils

from bertqa.text import decode_spans
from bertqa.triton.common import bytes_tensor, error_response, input_array, model_parameters
from bertqa.triton.params import PostprocessParameters


def check_windows(start_logits, end_logits, offsets, pair_index, window_text, window_start) -> int:
    """The number of pairs the N windows belong to; ValueError (-> 400) when the tensors disagree.

    qa_postprocess is reachable by clients, not only from the ensemble: nothing here may index out
    of range or produce more answers than the request has windows.
    """
    windows = offsets.shape[0]
    if start_logits.shape != offsets.shape[:2] or end_logits.shape != start_logits.shape:
        raise ValueError(f"logits {start_logits.shape}/{end_logits.shape} do not match offsets {offsets.shape}")
    per_window = {"pair_index": pair_index, "window_text": window_text, "window_text_start": window_start}
    wrong = {name: len(values) for name, values in per_window.items() if len(values) != windows}
    if wrong:
        raise ValueError(f"expected one value per window ({windows}), got {wrong}")
    if windows == 0:
        raise ValueError("no windows")
    # Windows arrive pair by pair: pair_index runs 0, 0, 1, 2, 2, ... without gaps.
    steps = np.diff(pair_index)
    if pair_index[0] != 0 or ((steps != 0) & (steps != 1)).any():
        raise ValueError(
            "pair_index must start at 0 and count up by at most 1 per window "
            f"(got {pair_index[:8].tolist()}{'...' if windows > 8 else ''})"
        )
    if (window_start < 0).any():
        raise ValueError("window_text_start must be >= 0")
    return int(pair_index[-1]) + 1


class PostprocessModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = model_parameters(config, PostprocessParameters)
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
        num_pairs = check_windows(start_logits, end_logits, offsets, pair_index, window_text, window_start)

        def text_of(window: int) -> tuple[str, int]:
            return window_text[window].decode("utf-8"), int(window_start[window])

        spans = decode_spans(start_logits, end_logits, offsets, pair_index, num_pairs, self.decoding, window_text=text_of)

        answers = []
        for span in spans:
            if span.window < 0:
                answers.append(b"")
                continue
            text, base = text_of(span.window)
            answers.append(text[span.start - base : span.end - base].encode("utf-8"))
        return pb_utils.InferenceResponse(
            output_tensors=[
                bytes_tensor("answer", answers),
                pb_utils.Tensor("score", np.array([[s.score] for s in spans], dtype=np.float32)),
                pb_utils.Tensor("start", np.array([[s.start] for s in spans], dtype=np.int64)),
                pb_utils.Tensor("end", np.array([[s.end] for s in spans], dtype=np.int64)),
            ]
        )
