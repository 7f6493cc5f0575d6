"""Typed model `parameters` from a Triton model config.

Triton passes every parameter as a string (``{"key": {"string_value": "..."}}``). Each model declares
a dataclass of what it accepts; values are converted by the field's type and anything unparseable
or unknown is an error, never silently ignored (``bool("False")`` is True, so booleans are parsed).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from bertqa.text import DecodingConfig, WindowingConfig

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ParameterError(ValueError):
    pass


def _convert(name: str, raw: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")
        if kind in (int, float, str):
            return kind(raw.strip()) if kind is not str else raw
        if origin is tuple:
            (item_kind, *_rest) = typing.get_args(kind)
            return tuple(_convert(name, item, item_kind) for item in raw.split(",") if item.strip())
    except ValueError as err:
        raise ParameterError(f"parameter {name!r}: cannot read {raw!r} as {kind}: {err}") from None
    raise ParameterError(f"parameter {name!r}: unsupported type {kind}")


def parse_parameters(model_config: dict, spec: type[T], *, ignore: tuple[str, ...] = ()) -> T:
    """Builds ``spec`` (a dataclass) from ``model_config["parameters"]``; missing keys keep defaults."""
    raw = {key: value.get("string_value", "") for key, value in model_config.get("parameters", {}).items()}
    hints = typing.get_type_hints(spec)
    fields = {f.name for f in dataclasses.fields(spec)}
    unknown = sorted(set(raw) - fields - set(ignore))
    if unknown:
        raise ParameterError(
            f"model {model_config.get('name', '?')!r}: unknown parameters {unknown}; accepted: {sorted(fields)}"
        )
    values = {name: _convert(name, raw[name], hints[name]) for name in fields if name in raw}
    try:
        return spec(**values)
    except (TypeError, ValueError) as err:
        raise ParameterError(f"model {model_config.get('name', '?')!r}: {err}") from None


@dataclass(frozen=True)
class PreprocessParameters(WindowingConfig):
    """`qa_preprocess` parameters: the windowing fields (defined once, in ``WindowingConfig``), the
    variant's own tokenizer file and the BERT model it runs (by BLS, in chunks of that model's
    ``max_batch_size``)."""

    tokenizer_file: str = "tokenizer.json"
    bert_model: str = "bert_onnx"
    # Request-size caps, checked before tokenizing so one huge text cannot hold the instance for seconds.
    max_context_chars: int = 500_000
    max_question_chars: int = 10_000

    def windowing(self) -> WindowingConfig:
        return WindowingConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(WindowingConfig)})


@dataclass(frozen=True)
class PostprocessParameters(DecodingConfig):
    """`qa_postprocess` parameters: the decoding fields, defined once in ``DecodingConfig``."""

    def decoding(self) -> DecodingConfig:
        return DecodingConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DecodingConfig)})
