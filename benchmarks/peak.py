"""The machine's dense FP32 GEMM peak, measured: ONNX Runtime MatMul (MLAS) and OpenVINO MatMul (oneDNN),
the kernels the served FP32 models run, and numpy (OpenBLAS), at BERT-like shapes; the best figure is the peak."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

# (M tokens, K, N): BERT-base/demo projections and FFN at 8 x 384 tokens, plus a square one.
DEFAULT_SHAPES = ((3072, 768, 768), (3072, 768, 3072), (3072, 3072, 768), (3072, 384, 1536), (2048, 2048, 2048))


@dataclass
class GemmPeak:
    threads: int
    results: list[dict] = field(default_factory=list)  # {engine, m, k, n, gflops}

    @property
    def best(self) -> dict:
        return max(self.results, key=lambda r: r["gflops"])

    @property
    def peak_flops(self) -> float:
        return self.best["gflops"] * 1e9


def _time_best(fn, seconds: float, min_repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    deadline = time.perf_counter() + seconds
    repeats = 0
    while repeats < min_repeats or time.perf_counter() < deadline:
        begin = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - begin)
        repeats += 1
    return best


def _ort_matmul(k: int, n: int, weight: np.ndarray, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "W"], ["Y"])], "gemm",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _openvino_matmul(m: int, k: int, weight: np.ndarray, threads: int):
    from bertqa.openvino_runtime import import_openvino

    ov = import_openvino()  # before any other openvino import
    from openvino import opset13 as ops

    a = ops.parameter([m, k], np.float32, name="A")
    model = ov.Model([ops.matmul(a, ops.constant(weight), False, False)], [a])
    properties = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}  # f32: no BF16/AMX shortcut
    if threads:
        properties["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(model, "CPU", properties).create_infer_request()


def measure_gemm_peak(threads: int = 0, shapes=DEFAULT_SHAPES, seconds: float = 1.0,
                      engines=("onnxruntime", "openvino", "numpy"), progress=None) -> GemmPeak:
    """Best-of-N FP32 GEMM throughput per shape and engine. ``threads`` 0: each runtime's default."""
    rng = np.random.default_rng(0)
    peak = GemmPeak(threads)
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        flops = 2.0 * m * k * n
        for engine in engines:
            if engine == "numpy":
                out = np.empty((m, n), dtype=np.float32)
                seconds_best = _time_best(lambda: np.matmul(a, b, out=out), seconds)
            elif engine == "openvino":
                request = _openvino_matmul(m, k, b, threads)
                seconds_best = _time_best(lambda: request.infer({0: a}), seconds)
            else:
                session = _ort_matmul(k, n, b, threads)
                feeds = {"A": a}
                seconds_best = _time_best(lambda: session.run(None, feeds), seconds)
            peak.results.append({"engine": engine, "m": m, "k": k, "n": n, "gflops": flops / seconds_best / 1e9})
            if progress:
                progress()
    return peak
