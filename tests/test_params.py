"""Typed model parameters: strings from config.pbtxt become checked values, unknown keys are errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bertqa.triton.params import ParameterError, PreprocessParameters, parse_parameters


@dataclass(frozen=True)
class Example:
    enabled: bool = False
    count: int = 1
    buckets: tuple[int, ...] = (384,)
    name: str = "x"


def config(**values):
    return {"name": "m", "parameters": {k: {"string_value": v} for k, v in values.items()}}


def test_values_are_converted_by_type():
    parsed = parse_parameters(config(enabled="False", count=" 7", buckets="128, 256,384", name="y"), Example)
    assert parsed == Example(enabled=False, count=7, buckets=(128, 256, 384), name="y")
    assert parse_parameters(config(enabled="yes"), Example).enabled is True
    assert parse_parameters(config(), Example) == Example()


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(enabled="maybe"), "parameter 'enabled': cannot read 'maybe'"),
        (dict(count="many"), "parameter 'count'"),
        (dict(buckets="128,x"), "parameter 'buckets'"),
        (dict(colour="red"), r"unknown parameters \['colour'\]"),
    ],
)
def test_bad_values_are_errors(values, message):
    with pytest.raises(ParameterError, match=message):
        parse_parameters(config(**values), Example)


def test_preprocess_parameters_build_a_validated_windowing_config():
    params = parse_parameters(config(max_seq_len="256", seq_len_buckets="128,256"), PreprocessParameters)
    assert params.windowing().max_seq_len == 256
    with pytest.raises(ValueError, match="must end at max_seq_len"):
        parse_parameters(config(max_seq_len="256"), PreprocessParameters).windowing()
