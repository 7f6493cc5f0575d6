"""`qa_preprocess`: question/context pairs -> BERT windows -> BERT logits (one request of B pairs -> N windows).

BERT runs by BLS in chunks of its max_batch_size (bertqa.triton.bert_runner), so a request may need
up to ``max_windows`` windows however small BERT's batches are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from bertqa.text import InvalidInputError, QAWindower, decode_texts, load_tokenizer, window_text_spans
from bertqa.repository import check_window_capacity
from bertqa.triton.bert_runner import BertRunner
from bertqa.triton.common import bytes_tensor, error_response, input_array, model_parameters, version_dir
from bertqa.triton.params import PreprocessParameters


def check_lengths(texts: dict[str, list[str]], limits: dict[str, int]) -> None:
    """Rejects any text over its character cap before any tokenizing work is spent on it."""
    for name, values in texts.items():
        for i, value in enumerate(values):
            if len(value) > limits[name]:
                raise InvalidInputError(
                    f"{name}[{i}] has {len(value):,} characters; the limit is {limits[name]:,} "
                    f"(qa_preprocess parameter max_{name}_chars)"
                )


class PreprocessModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = model_parameters(config, PreprocessParameters)
        try:
            self.limits = {"question": params.max_question_chars, "context": params.max_context_chars}
            windowing = params.windowing()
            tokenizer_path = version_dir(args) / params.tokenizer_file
            self.windower = QAWindower(load_tokenizer(tokenizer_path), windowing)
            chunk = check_window_capacity(Path(args["model_repository"]).parent, config["name"], params.bert_model,
                                          windowing.max_windows)
            self.bert = BertRunner(params.bert_model, chunk)
        except (ValueError, FileNotFoundError) as err:
            raise pb_utils.TritonModelException(f"qa_preprocess: {err}") from err
        pb_utils.Logger.log_info(f"qa_preprocess: {tokenizer_path}, {windowing}")

    def execute(self, requests: list) -> list:
        # Decode and validate each request on its own, so one bad request fails alone.
        responses: list = [None] * len(requests)
        questions: list[str] = []
        contexts: list[str] = []
        spans: list[tuple[int, int, int]] = []  # (request, first pair, pair count)
        for i, request in enumerate(requests):
            try:
                q = decode_texts(input_array(request, "question").reshape(-1), "question")
                c = decode_texts(input_array(request, "context").reshape(-1), "context")
                if len(q) != len(c):
                    raise InvalidInputError(f"got {len(q)} questions but {len(c)} contexts")
                check_lengths({"question": q, "context": c}, self.limits)
            except InvalidInputError as err:
                responses[i] = error_response(str(err))
                continue
            spans.append((i, len(questions), len(q)))
            questions += q
            contexts += c

        # Batch across requests: tokenize every pair in one call, then split back per request.
        per_pair = []
        if questions:
            try:
                per_pair = self.windower.encode_pairs(questions, contexts)
            except InvalidInputError:
                per_pair = None  # some pair is bad: fall back to per-request encoding to blame it
        windows_of: list = [None] * len(requests)
        for i, first, count in spans:
            try:
                encoded = (
                    per_pair[first : first + count]
                    if per_pair is not None
                    else self.windower.encode_pairs(questions[first : first + count], contexts[first : first + count])
                )
                windows_of[i] = self.windower.assemble(encoded)
            except InvalidInputError as err:
                responses[i] = error_response(str(err))
        # Batch across requests again: BERT runs the windows of all of them, then split per request.
        logits = self.bert.run(windows_of)
        for i, first, count in spans:
            if windows_of[i] is None:
                continue
            if isinstance(logits[i], pb_utils.TritonError):
                responses[i] = pb_utils.InferenceResponse(error=logits[i])
                continue
            responses[i] = self._response(windows_of[i], logits[i], contexts[first : first + count])
        return responses

    @staticmethod
    def _response(windows, logits, contexts: list[str]) -> "pb_utils.InferenceResponse":
        text_spans = window_text_spans(windows.offsets)
        window_text = [
            contexts[pair][start:end].encode("utf-8")
            for pair, (start, end) in zip(windows.pair_index.tolist(), text_spans.tolist())
        ]
        start_logits, end_logits = logits
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("start_logits", start_logits),
                pb_utils.Tensor("end_logits", end_logits),
                pb_utils.Tensor("offsets", windows.offsets),
                pb_utils.Tensor("pair_index", windows.pair_index.reshape(-1, 1)),
                bytes_tensor("window_text", window_text),
                pb_utils.Tensor("window_text_start", np.ascontiguousarray(text_spans[:, :1])),
            ]
        )
