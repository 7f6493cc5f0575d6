"""Runs a variant's BERT model from its pre-processing model by BLS, in chunks of BERT's max_batch_size.

Long documents need more windows than one BERT batch holds (a 40,000-word context is about 300
windows of 384 tokens). The pre-processing model therefore does not hand its windows to BERT as one
ensemble step: it concatenates the windows of every request in its batch that share a length,
cuts them into chunks of at most BERT's ``max_batch_size``, sends the chunks to BERT concurrently
(BLS ``async_exec``; BERT's dynamic batcher and instances take it from there), and splits the
logits back per request. Short requests keep being batched across requests, now explicitly.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from bertqa.text import Windows

BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BERT_OUTPUTS = ("start_logits", "end_logits")


class BertRunner:
    def __init__(self, bert_model: str, chunk: int):
        self.bert_model = bert_model
        self.chunk = chunk  # BERT's max_batch_size (bertqa.repository.check_window_capacity)

    def run(self, per_request: Sequence[Windows | None]) -> list:
        """(start_logits, end_logits) per request, or the BLS error that failed its chunk; None stays None."""
        results: list = [None] * len(per_request)
        by_length: dict[int, list[int]] = {}
        for index, windows in enumerate(per_request):
            if windows is not None:
                by_length.setdefault(windows.input_ids.shape[1], []).append(index)
        jobs = []  # (request indices, feeds of all their windows, the BLS requests of its chunks)
        for members in by_length.values():
            feeds = {n: np.concatenate([getattr(per_request[i], n) for i in members]) for n in BERT_INPUTS}
            jobs.append((members, feeds, self._chunk_requests(feeds)))
        try:
            responses = self._execute([r for _, _, requests in jobs for r in requests])
        except Exception as err:  # noqa: BLE001 - a failed BLS call fails these requests, not the model
            failure = pb_utils.TritonError(f"{self.bert_model} could not be run: {err}")
            return [failure if windows is not None else None for windows in per_request]
        for members, feeds, requests in jobs:
            output = self._logits(responses[:len(requests)], feeds[BERT_INPUTS[0]].shape[0])
            responses = responses[len(requests):]
            if isinstance(output, pb_utils.TritonError):
                for i in members:
                    results[i] = output
                continue
            bounds = np.cumsum([per_request[i].num_windows for i in members])[:-1]
            for i, start, end in zip(members, np.split(output[0], bounds), np.split(output[1], bounds)):
                results[i] = (start, end)
        return results

    def _chunk_requests(self, feeds: dict[str, np.ndarray]) -> list:
        rows = feeds[BERT_INPUTS[0]].shape[0]
        return [
            pb_utils.InferenceRequest(
                model_name=self.bert_model,
                requested_output_names=list(BERT_OUTPUTS),
                inputs=[pb_utils.Tensor(n, np.ascontiguousarray(a[first:first + self.chunk])) for n, a in feeds.items()],
                # Logits back in host memory even from a GPU model (as_numpy needs CPU tensors).
                preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
            )
            for first in range(0, rows, self.chunk)
        ]

    @staticmethod
    def _execute(requests: list) -> list:
        """One request: a plain blocking BLS call (the common short case); several: all in flight at once,
        so BERT's dynamic batcher and instances see them together."""
        if len(requests) <= 1:
            return [r.exec() for r in requests]

        async def all_at_once():
            return await asyncio.gather(*(r.async_exec() for r in requests))

        return asyncio.run(all_at_once())

    def _logits(self, responses: list, rows: int):
        """(start, end) logits of one length group's chunks, or the first error."""
        parts = []
        for response in responses:
            if response.has_error():
                return response.error()
            parts.append([pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in BERT_OUTPUTS])
        start, end = (np.concatenate([p[k] for p in parts]) for k in range(2))
        if start.shape[0] != rows or end.shape[0] != rows:
            return pb_utils.TritonError(f"{self.bert_model} returned {start.shape[0]} rows of logits for {rows} windows")
        return start, end
