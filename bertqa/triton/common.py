"""Helpers shared by the project's Triton Python models (imported only inside the Python backend)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import numpy as np
import triton_python_backend_utils as pb_utils

from bertqa.triton.params import parse_parameters

T = TypeVar("T")


def version_dir(args: dict) -> Path:
    """``<model_repository>/<version>``: where a model's own files live (Docker and embedded alike)."""
    return Path(args["model_repository"]) / args["model_version"]


def model_parameters(config: dict, spec: type[T], *, ignore: tuple[str, ...] = ()) -> T:
    """``parse_parameters`` for ``initialize``: a bad parameter fails the model's load, naming the model."""
    try:
        return parse_parameters(config, spec, ignore=ignore)
    except ValueError as err:
        raise pb_utils.TritonModelException(f"{config['name']}: {err}") from err


def input_array(request, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:  # Triton rejects requests missing a declared input; kept for safety.
        raise KeyError(name)
    return tensor.as_numpy()


def error_response(message: str) -> "pb_utils.InferenceResponse":
    """A per-request client error: HTTP 400 / gRPC INVALID_ARGUMENT, other requests unaffected."""
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def bytes_tensor(name: str, values: list[bytes]) -> "pb_utils.Tensor":
    array = np.empty((len(values), 1), dtype=np.object_)
    array[:, 0] = values
    return pb_utils.Tensor(name, array)
