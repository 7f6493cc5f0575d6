"""TensorRT engines (``model.plan``) from the exported ONNX, with the TensorRT Python API.

An engine is specific to the GPU model and the TensorRT version it was built with: build it on
the serving host (or an identical one) with the TensorRT that Triton uses (24.10: TensorRT 10.5).

* Optimization profiles: one per sequence bucket (default 128/256/384), each over batch
  1..max_batch and the sequence lengths above the previous bucket up to the bucket, optimised for
  the bucket length (the pre-processing pads windows to exactly a bucket). The generated
  ``tensorrt_plan`` config lists the same profiles for its GPU instance.
* Precision: ``fp32``; ``fp16`` (BuilderFlag.FP16); ``int8``: explicit quantization from a Q/DQ
  ONNX (static calibration, symmetric S8, see ``bertqa.export.quantize``) with FP16 for the rest.
* ``sparsity``: BuilderFlag.SPARSE_WEIGHTS (2:4 structured-sparse weights use sparse kernels on
  Ampere and newer; weights that are not 2:4 sparse are unaffected).

``tensorrt`` is imported lazily; ``require_gpu()`` says clearly when there is no usable GPU.
Everything else here (profiles, argument checks, configs) runs anywhere.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bertqa.files import atomic_write_bytes

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BUCKETS = (128, 256, 384)


class GPUUnavailableError(RuntimeError):
    """No NVIDIA GPU/driver or no TensorRT here; a TensorRT engine cannot be built."""


@dataclass(frozen=True)
class OptimizationProfile:
    """min/opt/max shapes (batch, sequence) shared by all inputs of the engine."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def contains(self, batch: int, seq: int) -> bool:
        return self.min[0] <= batch <= self.max[0] and self.min[1] <= seq <= self.max[1]


def profile_shapes(
    max_batch: int,
    seq_buckets: Sequence[int] = DEFAULT_BUCKETS,
    *,
    opt_batch: int | None = None,
    max_position_embeddings: int | None = None,
) -> list[OptimizationProfile]:
    """One profile per bucket: batch 1..max_batch (opt ``opt_batch``, default max_batch),
    sequence (previous bucket + 1)..bucket, opt = bucket. Buckets must be increasing and fit the model."""
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max batch must be a positive integer, got {max_batch!r}")
    buckets = list(seq_buckets)
    if not buckets:
        raise ValueError("at least one sequence length bucket is needed")
    if any(not isinstance(b, int) or b < 8 for b in buckets):
        raise ValueError(f"sequence buckets must be integers >= 8, got {buckets}")
    if buckets != sorted(set(buckets)):
        raise ValueError(f"sequence buckets must be strictly increasing, got {buckets}")
    if max_position_embeddings is not None and buckets[-1] > max_position_embeddings:
        raise ValueError(
            f"sequence length {buckets[-1]} exceeds the model's max_position_embeddings {max_position_embeddings}"
        )
    opt_batch = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"opt batch {opt_batch} must be within 1..{max_batch}")
    profiles = []
    previous = 0
    for bucket in buckets:
        profiles.append(OptimizationProfile((1, previous + 1), (opt_batch, bucket), (max_batch, bucket)))
        previous = bucket
    return profiles


def buckets_up_to(seq_len: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[int, ...]:
    """The default buckets below ``seq_len``, then ``seq_len`` itself (e.g. 384 -> 128/256/384)."""
    return tuple(b for b in buckets if b < seq_len) + (seq_len,)


def check_build_arguments(precision: str, sparsity: bool, qdq_model: bool) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and not qdq_model:
        raise ValueError(
            "INT8 TensorRT engines are built from a Q/DQ ONNX (explicit quantization): give calibration data"
        )
    if precision != "int8" and qdq_model:
        raise ValueError(f"a Q/DQ (INT8) ONNX cannot build a {precision} engine")
    if not isinstance(sparsity, bool):
        raise ValueError("sparsity must be True or False")


# --------------------------------------------------------------------------------------------------
# GPU detection


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without driver or GPU); no CUDA toolkit needed."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            libcuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0
    if libcuda.cuInit(0) != 0:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def import_tensorrt():
    try:
        import tensorrt  # noqa: PLC0415 - lazy: only GPU hosts have it
    except ImportError as err:
        raise GPUUnavailableError(
            f"the TensorRT Python package is not installed ({err}); install it on the GPU host "
            f"(`pip install 'bertqa[tensorrt]'`, or use the NGC TensorRT/Triton image)"
        ) from None
    return tensorrt


def require_gpu():
    """Returns the ``tensorrt`` module, or raises GPUUnavailableError saying what is missing."""
    if cuda_device_count() == 0:
        raise GPUUnavailableError(
            "no NVIDIA GPU found (no CUDA driver or no device): TensorRT engines are built on, and "
            "only run on, the GPU they are made for. Build on the GPU serving host, or serve ONNX "
            "(--format onnx / onnx-int8) on CPU"
        )
    return import_tensorrt()


# --------------------------------------------------------------------------------------------------
# Building


@dataclass
class TensorRTReport:
    path: Path
    size_bytes: int
    precision: str
    sparsity: bool
    profiles: list[OptimizationProfile]
    tensorrt_version: str
    gpu: str
    max_abs_diff_start: float | None = None
    max_abs_diff_end: float | None = None


_TRT_TO_TRITON = {"FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
                  "INT8": "TYPE_INT8", "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "BF16": "TYPE_BF16"}


def engine_io(engine):
    """(inputs, outputs) TensorSpecs of a deserialized engine (first dimension = batch)."""
    from bertqa.export.repository import TensorSpec

    trt = import_tensorrt()
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = str(engine.get_tensor_dtype(name)).split(".")[-1]
        if dtype not in _TRT_TO_TRITON:
            raise RuntimeError(f"engine tensor {name} has TensorRT type {dtype} unknown to Triton")
        shape = tuple(engine.get_tensor_shape(name))
        spec = TensorSpec(name, _TRT_TO_TRITON[dtype], tuple(int(d) for d in shape[1:]))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return inputs, outputs


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    profiles: Sequence[OptimizationProfile],
    *,
    precision: str = "fp16",
    sparsity: bool = False,
    workspace_bytes: int = 4 << 30,
    log: Callable[[str], None] | None = print,
):
    """Builds and writes (atomically) a serialized engine; returns (TensorRTReport, engine)."""
    say = log or (lambda message: None)
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    qdq = _has_qdq(onnx_path)
    check_build_arguments(precision, sparsity, qdq)
    trt = require_gpu()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") \
            and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit: scales come from the Q/DQ nodes
    if sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    input_names = [network.get_input(i).name for i in range(network.num_inputs)]
    for profile in profiles:
        p = builder.create_optimization_profile()
        for name in input_names:
            p.set_shape(name, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(p)
    say(f"building TensorRT {trt.__version__} engine ({precision}{', sparse weights' if sparsity else ''}, "
        f"{len(profiles)} profiles); this takes minutes for BERT-large")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    data = bytes(serialized)
    atomic_write_bytes(plan_path, data)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    gpu = _gpu_name()
    report = TensorRTReport(plan_path, len(data), precision, sparsity, list(profiles), trt.__version__, gpu)
    return report, engine


class _CudaDriver:
    """Just enough of the CUDA driver API (ctypes, no CUDA toolkit or CUDA PyTorch needed)."""

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self._check(self.lib.cuInit(0), "cuInit")
        device = ctypes.c_int()
        self._check(self.lib.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
        context = ctypes.c_void_p()
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
        self._check(self.lib.cuCtxSetCurrent(context), "cuCtxSetCurrent")  # the context TensorRT uses too

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"CUDA driver call {what} failed with error {code}")

    def alloc(self, nbytes: int) -> int:
        pointer = ctypes.c_uint64()
        self._check(self.lib.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(max(nbytes, 1))), "cuMemAlloc")
        return pointer.value

    def free(self, pointer: int) -> None:
        self.lib.cuMemFree_v2(ctypes.c_uint64(pointer))

    def upload(self, pointer: int, array: np.ndarray) -> None:
        self._check(self.lib.cuMemcpyHtoD_v2(ctypes.c_uint64(pointer), array.ctypes.data_as(ctypes.c_void_p),
                                             ctypes.c_size_t(array.nbytes)), "cuMemcpyHtoD")

    def download(self, array: np.ndarray, pointer: int) -> None:
        self._check(self.lib.cuMemcpyDtoH_v2(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(pointer),
                                             ctypes.c_size_t(array.nbytes)), "cuMemcpyDtoH")

    def synchronize(self) -> None:
        self._check(self.lib.cuCtxSynchronize(), "cuCtxSynchronize")


_NUMPY_OF_TRT = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_,
                 "INT8": np.int8, "UINT8": np.uint8}


def run_engine(engine, profile_index: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs one batch through the engine on GPU 0 (default stream); returns FP32/INT outputs on the host."""
    trt = import_tensorrt()
    cuda = _CudaDriver()
    context = engine.create_execution_context()
    context.set_optimization_profile_async(profile_index, 0)
    pointers: list[int] = []
    outputs: dict[str, tuple[np.ndarray, int]] = {}
    try:
        for name, array in feeds.items():
            dtype = _NUMPY_OF_TRT[str(engine.get_tensor_dtype(name)).split(".")[-1]]
            host = np.ascontiguousarray(array, dtype=dtype)
            pointer = cuda.alloc(host.nbytes)
            pointers.append(pointer)
            cuda.upload(pointer, host)
            context.set_input_shape(name, tuple(host.shape))
            context.set_tensor_address(name, pointer)
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                continue
            dtype = _NUMPY_OF_TRT[str(engine.get_tensor_dtype(name)).split(".")[-1]]
            host = np.empty(tuple(context.get_tensor_shape(name)), dtype=dtype)
            pointer = cuda.alloc(host.nbytes)
            pointers.append(pointer)
            context.set_tensor_address(name, pointer)
            outputs[name] = (host, pointer)
        if not context.execute_async_v3(0):
            raise RuntimeError("TensorRT execution failed")
        cuda.synchronize()
        for host, pointer in outputs.values():
            cuda.download(host, pointer)
    finally:
        for pointer in pointers:
            cuda.free(pointer)
    return {name: host.astype(np.float32) if host.dtype == np.float16 else host for name, (host, _) in outputs.items()}


def _has_qdq(onnx_path: Path) -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - informative only
        pass
    return "unknown NVIDIA GPU"
