"""A question-answering client for the `bert_qa` ensemble over Triton's HTTP/REST or gRPC protocol."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bertqa.text import Answer

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
PROTOCOLS = tuple(DEFAULT_PORTS)
OUTPUTS = ("answer", "score", "start", "end")


def bytes_input(module, name: str, values: Sequence[str | bytes], binary_data: bool | None = None):
    """A BYTES ``InferInput`` of shape [len(values), 1], strings UTF-8 encoded, for ``tritonclient.http`` or
    ``tritonclient.grpc`` (``module``). ``binary_data`` (HTTP only): binary tensor extension or JSON."""
    array = np.array([v if isinstance(v, bytes) else v.encode("utf-8") for v in values], dtype=np.object_)
    array = array.reshape(-1, 1)
    tensor = module.InferInput(name, list(array.shape), "BYTES")
    if binary_data is None:
        tensor.set_data_from_numpy(array)
    else:
        tensor.set_data_from_numpy(array, binary_data=binary_data)
    return tensor


def qa_inputs(module, questions: Sequence[str | bytes], contexts: Sequence[str | bytes],
              binary_data: bool | None = None) -> list:
    """The ``question`` and ``context`` inputs of the `bert_qa` ensemble for a batch of pairs."""
    return [bytes_input(module, "question", questions, binary_data), bytes_input(module, "context", contexts, binary_data)]


def qa_outputs(module, binary_data: bool | None = None) -> list:
    """The four outputs of the `bert_qa` ensemble, requested."""
    if binary_data is None:
        return [module.InferRequestedOutput(name) for name in OUTPUTS]
    return [module.InferRequestedOutput(name, binary_data=binary_data) for name in OUTPUTS]


def default_url(protocol: str, host: str = "localhost") -> str:
    return f"{host}:{DEFAULT_PORTS[protocol]}"


def normalize_url(url: str) -> str:
    """tritonclient wants host:port; accept http://host:port and grpc://host:port too."""
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    return url.rstrip("/")


class QAClient:
    """Sends batches of question/context pairs to one model and returns one Answer per pair."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "http",
        model: str = "bert_qa",
        timeout_s: float = 120.0,
        concurrency: int = 1,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.model = model
        self.url = normalize_url(url or default_url(protocol))
        self.timeout_s = timeout_s
        self._module = httpclient if protocol == "http" else grpcclient
        if protocol == "http":
            self.client = httpclient.InferenceServerClient(
                self.url, concurrency=concurrency, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        else:
            self.client = grpcclient.InferenceServerClient(self.url)

    def inputs(self, questions: Sequence[str | bytes], contexts: Sequence[str | bytes]) -> list:
        return qa_inputs(self._module, questions, contexts)

    def outputs(self) -> list:
        return qa_outputs(self._module)

    def infer(self, questions: Sequence[str | bytes], contexts: Sequence[str | bytes]):
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        return self.client.infer(self.model, self.inputs(questions, contexts), outputs=self.outputs(), **kwargs)

    @staticmethod
    def parse(result) -> list[Answer]:
        answers = result.as_numpy("answer").reshape(-1)
        scores = result.as_numpy("score").reshape(-1)
        starts = result.as_numpy("start").reshape(-1)
        ends = result.as_numpy("end").reshape(-1)
        return [
            Answer(a.decode("utf-8"), float(s), int(b), int(e))
            for a, s, b, e in zip(answers, scores, starts, ends)
        ]

    def ask(self, questions: Sequence[str] | str, contexts: Sequence[str] | str) -> list[Answer]:
        if isinstance(questions, str):
            questions = [questions]
        if isinstance(contexts, str):
            contexts = [contexts]
        return self.parse(self.infer(questions, contexts))

    def is_ready(self) -> bool:
        try:
            return bool(self.client.is_model_ready(self.model))
        except InferenceServerException:
            return False

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "QAClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
