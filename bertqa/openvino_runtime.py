"""OpenVINO inference with the settings of a Triton ``backend: "openvino"`` model config.

One place that turns the config's ``parameters`` into OpenVINO properties and runs a compiled
model with an ONNX-Runtime-like ``run(output_names, feeds)``, so the embedded Triton backend
(bertqa.triton.openvino_backend), the in-process reference pipeline and the exporter's
validation all run the model the same way.

Parameter names are those of Triton's native openvino backend (its README and ``src/openvino.cc``,
r24.10): ``NUM_STREAMS``, ``PERFORMANCE_HINT``, ``INFERENCE_NUM_THREADS``, ``HINT_BF16`` (only
``YES``). ``INFERENCE_PRECISION_HINT`` (``f32``/``bf16``) is read here only: OpenVINO computes in
BF16 by default on CPUs with native BF16, so an FP32 variant must say so; the native backend
ignores parameters it does not know (it would compute such a model in BF16 there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

# Understood by the native backend, meaningless here (this runner takes any batch and length).
NATIVE_ONLY_PARAMETERS = (
    "SKIP_OV_DYNAMIC_BATCHSIZE",
    "ENABLE_BATCH_PADDING",
    "RESHAPE_IO_LAYERS",
    "COMPILATION_NUM_THREADS",
    "CPU_EXTENSION_PATH",
    "TARGET_DEVICE",
)
PRECISIONS = ("f32", "bf16")
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


@dataclass(frozen=True)
class OpenVinoParameters:
    """A ``backend: "openvino"`` model's ``parameters`` (field names are the config keys)."""

    NUM_STREAMS: str = "1"  # an integer, AUTO or NUMA
    PERFORMANCE_HINT: str = "LATENCY"
    INFERENCE_NUM_THREADS: int = 0  # 0: OpenVINO's default (one per core)
    HINT_BF16: bool = False
    INFERENCE_PRECISION_HINT: str = ""  # "" = OpenVINO's default for the CPU

    def __post_init__(self) -> None:
        streams = self.NUM_STREAMS.strip().upper()
        if streams not in ("AUTO", "NUMA") and not (streams.isdigit() and int(streams) >= 1):
            raise ValueError(f"NUM_STREAMS must be a positive integer, AUTO or NUMA, got {self.NUM_STREAMS!r}")
        if self.PERFORMANCE_HINT.upper() not in HINTS:
            raise ValueError(f"PERFORMANCE_HINT must be one of {', '.join(HINTS)}, got {self.PERFORMANCE_HINT!r}")
        if self.INFERENCE_NUM_THREADS < 0:
            raise ValueError(f"INFERENCE_NUM_THREADS must be >= 0, got {self.INFERENCE_NUM_THREADS}")
        if self.INFERENCE_PRECISION_HINT and self.INFERENCE_PRECISION_HINT.lower() not in PRECISIONS:
            raise ValueError(f"INFERENCE_PRECISION_HINT must be one of {', '.join(PRECISIONS)}, "
                             f"got {self.INFERENCE_PRECISION_HINT!r}")
        if self.HINT_BF16 and self.INFERENCE_PRECISION_HINT.lower() == "f32":
            raise ValueError("HINT_BF16 YES contradicts INFERENCE_PRECISION_HINT f32")

    def properties(self) -> dict[str, str]:
        """OpenVINO CPU properties (string form, as ``compile_model`` accepts them)."""
        props = {"PERFORMANCE_HINT": self.PERFORMANCE_HINT.upper(), "NUM_STREAMS": self.NUM_STREAMS.strip().upper()}
        if self.INFERENCE_NUM_THREADS:
            props["INFERENCE_NUM_THREADS"] = str(self.INFERENCE_NUM_THREADS)
        precision = "bf16" if self.HINT_BF16 else self.INFERENCE_PRECISION_HINT.lower()
        if precision:
            props["INFERENCE_PRECISION_HINT"] = precision
        return props

    def as_config(self) -> dict[str, str]:
        """The config.pbtxt ``parameters`` that reproduce these settings (defaults included)."""
        out = {"NUM_STREAMS": self.NUM_STREAMS, "PERFORMANCE_HINT": self.PERFORMANCE_HINT,
               "INFERENCE_NUM_THREADS": str(self.INFERENCE_NUM_THREADS)}
        if self.HINT_BF16:
            out["HINT_BF16"] = "YES"
        if self.INFERENCE_PRECISION_HINT:
            out["INFERENCE_PRECISION_HINT"] = self.INFERENCE_PRECISION_HINT
        return out


class OpenVinoSession:
    """A compiled OpenVINO model with ONNX Runtime's ``run(output_names, feeds)`` calling convention.

    With more than one stream, a batch is split into one chunk per stream and the chunks run
    concurrently (``AsyncInferQueue``); with one stream it runs as one request.
    """

    def __init__(self, model_path: str | Path, parameters: OpenVinoParameters = OpenVinoParameters(),
                 device: str = "CPU"):
        import openvino as ov

        self.path = Path(model_path)
        self.parameters = parameters
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), device, parameters.properties())
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = precision.to_string() if hasattr(precision, "to_string") else str(precision)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self._request = self.compiled.create_infer_request()
        self._queue = ov.AsyncInferQueue(self.compiled, self.streams) if self.streams > 1 else None

    def describe(self) -> str:
        return f"{self.path.name}: {self.streams} stream(s), {self.threads} threads, precision {self.precision}"

    def _outputs(self, request, names: Sequence[str]) -> list[np.ndarray]:
        return [np.array(request.get_tensor(name).data, copy=True) for name in names]

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(output_names or self.output_names)
        rows = next(iter(feeds.values())).shape[0]
        if self._queue is None or rows < 2:
            self._request.infer(feeds)
            return self._outputs(self._request, names)
        bounds = np.linspace(0, rows, min(self.streams, rows) + 1).astype(int)
        parts: dict[int, list[np.ndarray]] = {}
        self._queue.set_callback(lambda request, index: parts.__setitem__(index, self._outputs(request, names)))
        for index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            self._queue.start_async({n: a[lo:hi] for n, a in feeds.items()}, index)
        self._queue.wait_all()
        return [np.concatenate([parts[i][k] for i in range(len(bounds) - 1)]) for k in range(len(names))]
