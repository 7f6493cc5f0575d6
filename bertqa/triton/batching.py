"""Batching across requests for the project's Python-based model backends (ONNX Runtime, OpenVINO).

Requests whose inputs have equal non-batch shapes (e.g. the same sequence bucket) are concatenated,
run once, and the outputs split back per request, with the sizes checked. If a merged batch
fails, each of its requests is retried alone, so only requests that fail by themselves get an
error: one client cannot fail another's request, and the model stays up.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from bertqa.triton.common import error_response

RunFn = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


class OutputMismatch(RuntimeError):
    """The model's outputs do not have one row per input row (a model error, not a client's)."""


def check_bert_inputs(arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a BERT request's tensors (HF names), or None. Internal models are reachable
    by clients too, and ONNX Runtime's Gather accepts negative ids (it wraps them) and any mask."""
    bert = {name: arrays[name] for name in ("input_ids", "attention_mask", "token_type_ids") if name in arrays}
    shapes = {name: array.shape for name, array in bert.items()}
    if len(set(shapes.values())) > 1:
        return f"inputs must have one shape, got {shapes}"
    if "input_ids" in bert and bert["input_ids"].size and bert["input_ids"].min() < 0:
        return f"input_ids must be >= 0, got {int(bert['input_ids'].min())}"
    for name in ("attention_mask", "token_type_ids"):
        if name in bert and bert[name].size and not np.isin(bert[name], (0, 1)).all():
            return f"{name} must hold only 0 and 1"
    return None


class BatchedExecutor:
    """``execute`` for a model whose ``run(feeds) -> outputs`` takes any batch of equal-shape rows."""

    def __init__(self, model_name: str, input_names: Sequence[str], output_names: Sequence[str], run: RunFn):
        self.name = model_name
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.run = run

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = defaultdict(list)
        for i, request in enumerate(requests):
            arrays = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names}
            problem = check_bert_inputs(arrays)
            if problem:
                responses[i] = error_response(f"{self.name}: {problem}")
                continue
            key = tuple(arrays[n].shape[1:] for n in self.input_names)
            groups[key].append((i, arrays))
        for members in groups.values():
            for i, response in self._run_group(members):
                responses[i] = response
        return responses

    def _run_group(self, members: list[tuple[int, dict[str, np.ndarray]]]) -> list[tuple[int, object]]:
        """Responses for one merged batch; if it fails, each request is retried alone."""
        try:
            return list(zip([i for i, _ in members], self._infer([arrays for _, arrays in members])))
        except Exception as err:  # runtimes raise their own exception types; the message says what failed
            if len(members) == 1:
                return [(members[0][0], self._failure(err))]
        results = []
        for i, arrays in members:
            try:
                (response,) = self._infer([arrays])
            except Exception as err:
                response = self._failure(err)
            results.append((i, response))
        return results

    def _failure(self, err: Exception) -> "pb_utils.InferenceResponse":
        if isinstance(err, OutputMismatch):
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err), pb_utils.TritonError.INTERNAL))
        return error_response(f"{self.name}: inference failed: {err}")

    def _infer(self, batch: list[dict[str, np.ndarray]]) -> list:
        """Runs the concatenated batch once and splits the outputs back, one response per member."""
        feeds = {n: np.concatenate([arrays[n] for arrays in batch]) for n in self.input_names}
        sizes = [arrays[self.input_names[0]].shape[0] for arrays in batch]
        outputs = self.run(feeds)
        for output_name, output in zip(self.output_names, outputs):
            if output.ndim == 0 or output.shape[0] != sum(sizes):
                raise OutputMismatch(
                    f"{self.name}: output {output_name} has shape {output.shape}, expected batch {sum(sizes)}"
                )
        bounds = np.cumsum(sizes)[:-1]
        split = [np.split(output, bounds) for output in outputs]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(parts[position]))
                    for name, parts in zip(self.output_names, split)
                ]
            )
            for position in range(len(batch))
        ]
