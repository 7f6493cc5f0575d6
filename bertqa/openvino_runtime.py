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

def cpu_capabilities(core=None) -> list[str]:
    """What OpenVINO computes natively on this CPU (OPTIMIZATION_CAPABILITIES: FP32, INT8, BF16 where native, ...)."""
    return list((core or import_openvino().Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def import_openvino():
    """``openvino``, with its usage telemetry declined for this process.

    ``import openvino`` (2024 and newer, via ``openvino.tools.ovc``) reports usage over the network unless an
    account opted out, from a ``multiprocessing`` child forked on a worker thread. Inside a Triton Python
    stub that fork of a multithreaded process left a child blocked on a lock, and the stub, waiting for it,
    outlived tritonserver. A server must not phone home either: the consent check answers "declined" in this
    process; the user's consent file is not touched (``opt_in_out --opt_out`` opts a whole account out).
    """
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        pass  # no telemetry package: nothing is sent
    else:
        OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
    import openvino

    return openvino


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
# Merged batches run in chunks of at most this many tokens (rows x length), by default. It bounds the
# activations (the FFN's intermediate of a 4096-token chunk outgrows the cache: 0.95x 2048) and the
# shapes a model ever sees (per bucket length L: 1..tokens//L rows; OpenVINO compiles each shape on its
# first run, so model_warmup runs them all at load). Longer chunks feed more rows to each GEMM: served
# OpenVINO INT8 at concurrency 16, 2048 against 512 tokens: 1.06x (1024: 1.04x), 1.00-1.02x at 1 and 4
# (python -m benchmarks.ab, 4 alternating rounds, AMX Xeon), for ~110 MB more resident memory.
TOKENS_PER_RUN = 2048


def chunk_rows(length: int, tokens_per_run: int) -> int:
    """Rows per run for windows of ``length`` tokens (``tokens_per_run``: the model's TOKENS_PER_RUN parameter)."""
    return max(1, tokens_per_run // max(1, length))
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


@dataclass(frozen=True)
class OpenVinoParameters:
    """A ``backend: "openvino"`` model's ``parameters`` (field names are the config keys)."""

    NUM_STREAMS: str = "1"  # an integer, AUTO or NUMA
    PERFORMANCE_HINT: str = "LATENCY"
    INFERENCE_NUM_THREADS: int = 0  # 0: OpenVINO's default (one per core)
    HINT_BF16: bool = False
    INFERENCE_PRECISION_HINT: str = ""  # "" = OpenVINO's default for the CPU
    # Embedded only: with several streams, a batch that fits one chunk runs on a second, one-stream
    # compiled model with this many threads instead of on one stream's share (0: off). Load wants streams
    # (a core taken by pre/post-processing stalls one stream, not every thread of a parallel op);
    # a single client wants every core on its one window.
    LATENCY_THREADS: int = 0
    # Embedded only: OpenVINO pins its threads to cores by default on Linux; beside Triton's Python
    # pre/post-processing on a small host, a pinned thread waits for its busy core while the other
    # core idles (measured under load: unpinned never slower, often faster).
    ENABLE_CPU_PINNING: bool = False
    # The project's backend only (embedded and in the Triton image; Triton's native openvino backend ignores
    # it): a merged batch runs in chunks of at most this many tokens (chunk_rows).
    TOKENS_PER_RUN: int = TOKENS_PER_RUN

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
        if self.LATENCY_THREADS < 0:
            raise ValueError(f"LATENCY_THREADS must be >= 0, got {self.LATENCY_THREADS}")
        if self.TOKENS_PER_RUN < 1:
            raise ValueError(f"TOKENS_PER_RUN must be >= 1, got {self.TOKENS_PER_RUN}")
        if self.HINT_BF16 and self.INFERENCE_PRECISION_HINT.lower() == "f32":
            raise ValueError("HINT_BF16 YES contradicts INFERENCE_PRECISION_HINT f32")

    @property
    def requested_precision(self) -> str:
        """"bf16", "f32" or "" (OpenVINO's default for the CPU)."""
        return "bf16" if self.HINT_BF16 else self.INFERENCE_PRECISION_HINT.lower()

    def properties(self, native_bf16: bool = True) -> dict[str, object]:
        """OpenVINO CPU properties, as ``compile_model`` accepts them. On a CPU without native BF16
        (``native_bf16`` False) a BF16 request becomes f32: OpenVINO would emulate BF16 there, measured
        32x slower than FP32 (0.8 vs 25.7 windows/s, MiniLM-L6, 384 tokens, 2-core Xeon without AVX512_BF16)."""
        props: dict[str, object] = {"PERFORMANCE_HINT": self.PERFORMANCE_HINT.upper(),
                                    "NUM_STREAMS": self.NUM_STREAMS.strip().upper(),
                                    "ENABLE_CPU_PINNING": self.ENABLE_CPU_PINNING}
        if self.INFERENCE_NUM_THREADS:
            props["INFERENCE_NUM_THREADS"] = str(self.INFERENCE_NUM_THREADS)
        precision = self.requested_precision
        if precision == "bf16" and not native_bf16:
            precision = "f32"
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
        if self.LATENCY_THREADS:
            out["LATENCY_THREADS"] = str(self.LATENCY_THREADS)
        out["ENABLE_CPU_PINNING"] = "YES" if self.ENABLE_CPU_PINNING else "NO"
        out["TOKENS_PER_RUN"] = str(self.TOKENS_PER_RUN)
        return out


class OpenVinoSession:
    """A compiled OpenVINO model with ONNX Runtime's ``run(output_names, feeds)`` calling convention.

    Batches run in chunks of at most TOKENS_PER_RUN tokens; with more than one stream the chunks
    run concurrently (``AsyncInferQueue``), one per stream at a time.
    """

    def __init__(self, model_path: str | Path, parameters: OpenVinoParameters = OpenVinoParameters(),
                 device: str = "CPU"):
        ov = import_openvino()
        self.path = Path(model_path)
        self.parameters = parameters
        core = ov.Core()
        model = core.read_model(str(self.path))
        native_bf16 = device != "CPU" or "BF16" in cpu_capabilities(core)
        # BF16 asked for on a CPU that would only emulate it: computed in f32 instead (see properties), and said.
        self.bf16_fallback = parameters.requested_precision == "bf16" and not native_bf16
        self.compiled = core.compile_model(model, device, parameters.properties(native_bf16))
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.output_names = [port.get_any_name() for port in self.compiled.outputs]
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = precision.to_string() if hasattr(precision, "to_string") else str(precision)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self._request = self.compiled.create_infer_request()
        self._queue = ov.AsyncInferQueue(self.compiled, self.streams) if self.streams > 1 else None
        self._single = None  # (compiled model, request) for batches that fit one chunk
        if parameters.LATENCY_THREADS and self.streams > 1:
            single = core.compile_model(model, device, {
                **parameters.properties(native_bf16), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                "INFERENCE_NUM_THREADS": str(parameters.LATENCY_THREADS)})
            self._single = (single, single.create_infer_request())

    def describe(self) -> str:
        single = f"; lone chunks: 1 stream of {self.parameters.LATENCY_THREADS} threads" if self._single else ""
        fallback = " (BF16 asked for; this CPU has no native BF16, so f32)" if self.bf16_fallback else ""
        return (f"{self.path.name}: {self.streams} stream(s), {self.threads} threads, "
                f"precision {self.precision}{fallback}{single}")

    def _outputs(self, request, names: Sequence[str]) -> list[np.ndarray]:
        return [np.array(request.get_tensor(name).data, copy=True) for name in names]

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for a batch, run in chunks of ``chunk_rows(length, TOKENS_PER_RUN)`` rows (spread over the streams)."""
        names = list(output_names or self.output_names)
        first = next(iter(feeds.values()))
        rows, step = first.shape[0], chunk_rows(first.shape[1] if first.ndim > 1 else 1, self.parameters.TOKENS_PER_RUN)
        if rows <= step:
            return self._run_chunk(names, feeds)
        if self._queue is None:
            parts = [self._run_chunk(names, {n: a[lo:lo + step] for n, a in feeds.items()})
                     for lo in range(0, rows, step)]
            return [np.concatenate([part[k] for part in parts]) for k in range(len(names))]
        done: dict[int, list[np.ndarray]] = {}
        self._queue.set_callback(lambda request, index: done.__setitem__(index, self._outputs(request, names)))
        starts = list(range(0, rows, step))
        for index, lo in enumerate(starts):
            self._queue.start_async({n: a[lo:lo + step] for n, a in feeds.items()}, index)
        self._queue.wait_all()
        return [np.concatenate([done[i][k] for i in range(len(starts))]) for k in range(len(names))]

    def _run_chunk(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One chunk, run alone: on the latency model when there is one (all its threads on this chunk)."""
        request = self._single[1] if self._single is not None else self._request
        request.infer(feeds)
        return self._outputs(request, names)
