"""Checks of a KServe v2 inference request body that Triton 2.51's HTTP frontend gets wrong.

Triton answers 500 (not 400) for JSON that is not an object with an ``inputs`` list, for a negative
dimension, for string data under a numeric datatype and numbers under BYTES, and it accepts a shape
whose element count is not what the data holds (a batch dimension of 2**32 with one element).
The front (bertqa.front) runs these checks before forwarding, so clients get a 400 naming the problem.
Only the JSON part is parsed; binary tensor data is checked by size.
"""

from __future__ import annotations

import json
import math

# Bytes per element of the fixed-size KServe datatypes (BYTES is variable-length).
ITEM_SIZE = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
    "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2,
}
DATATYPES = set(ITEM_SIZE) | {"BYTES"}


class RequestError(ValueError):
    """The request is malformed; the message says how (-> HTTP 400)."""


def check_infer_request(body: bytes, header_length: int | None = None) -> None:
    """Raises RequestError for a malformed request. ``header_length``: the binary protocol's
    Inference-Header-Content-Length (the JSON header is then followed by binary tensor data)."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise RequestError(f"Inference-Header-Content-Length {header_length} is outside the body ({len(body)} bytes)")
    header = body if header_length is None else body[:header_length]
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON: {err}") from None
    if not isinstance(request, dict):
        raise RequestError(f"the request must be a JSON object with an 'inputs' list, got {type(request).__name__}")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("the request needs a non-empty 'inputs' list")
    binary_bytes = sum(_check_input(i, tensor) for i, tensor in enumerate(inputs))
    available = 0 if header_length is None else len(body) - header_length
    if binary_bytes != available:
        raise RequestError(f"the inputs declare {binary_bytes} bytes of binary data, the body holds {available}")


def _check_input(index: int, tensor: object) -> int:
    """Checks one entry of ``inputs``; returns the bytes of binary data it declares."""
    if not isinstance(tensor, dict):
        raise RequestError(f"inputs[{index}] must be an object")
    name = tensor.get("name")
    label = f"input {name!r}" if isinstance(name, str) else f"inputs[{index}]"
    if not isinstance(name, str):
        raise RequestError(f"{label} needs a 'name' string")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise RequestError(f"{label}: datatype {datatype!r} is not one of {sorted(DATATYPES)}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f"{label}: shape must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    parameters = tensor.get("parameters") or {}
    binary_size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if binary_size is not None:
        return _check_binary(label, datatype, count, binary_size)
    if "data" not in tensor:
        raise RequestError(f"{label} has neither 'data' nor a binary_data_size parameter")
    values = _flatten(tensor["data"])
    if len(values) != count:
        raise RequestError(f"{label}: shape {shape} holds {count} elements, the data has {len(values)}")
    _check_element_types(label, datatype, values)
    return 0


def _check_binary(label: str, datatype: str, count: int, size: object) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestError(f"{label}: binary_data_size must be a non-negative integer")
    if datatype in ITEM_SIZE and size != count * ITEM_SIZE[datatype]:
        raise RequestError(
            f"{label}: {count} {datatype} elements take {count * ITEM_SIZE[datatype]} bytes, binary_data_size is {size}"
        )
    if datatype == "BYTES" and size < 4 * count:  # each element has a 4-byte length prefix
        raise RequestError(f"{label}: {count} BYTES elements need at least {4 * count} bytes, binary_data_size is {size}")
    return size


def _flatten(data: object) -> list:
    if not isinstance(data, list):
        return [data]
    flat: list = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested list must not exhaust the recursion limit
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_element_types(label: str, datatype: str, values: list) -> None:
    accepts, expected = {
        "BYTES": (lambda v: isinstance(v, str), "strings"),
        "BOOL": (lambda v: isinstance(v, bool), "true/false"),
    }.get(datatype, (_is_number, "numbers"))
    for value in values:
        if not accepts(value):
            raise RequestError(f"{label}: datatype {datatype} needs {expected}, got {json.dumps(value)[:40]}")
