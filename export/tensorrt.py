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

from bertqa.text import WindowingConfig

PRECISIONS = ("fp32", "fp16", "int8")


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
    seq_buckets: Sequence[int] = WindowingConfig.seq_len_buckets,
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


class _CudaDriver:
    """Just enough of the CUDA driver API (ctypes, no CUDA toolkit or CUDA PyTorch needed).

    Retains device 0's primary context (the one TensorRT uses) on construction; ``close()``
    releases it. Use through ``TensorRTSession``, which pairs the two.
    """

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")
        self._check(self.lib.cuInit(0), "cuInit")
        self.device = ctypes.c_int()
        self._check(self.lib.cuDeviceGet(ctypes.byref(self.device), 0), "cuDeviceGet")
        context = ctypes.c_void_p()
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), self.device), "cuDevicePrimaryCtxRetain")
        self.retained = True
        self._check(self.lib.cuCtxSetCurrent(context), "cuCtxSetCurrent")

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise RuntimeError(f"CUDA driver call {what} failed with error {code}")

    def close(self) -> None:
        if self.retained:
            self.retained = False
            self._check(self.lib.cuDevicePrimaryCtxRelease_v2(self.device), "cuDevicePrimaryCtxRelease")

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


def _numpy_dtype(engine, name: str):
    return _NUMPY_OF_TRT[str(engine.get_tensor_dtype(name)).split(".")[-1]]


class TensorRTSession:
    """Building and running engines with every GPU resource released on exit.

    ``with TensorRTSession() as session:`` retains the CUDA primary context once (released at
    exit), keeps the TensorRT runtime alive as long as the engines it deserialized, creates one
    execution context per engine (reused by every ``run_engine``; released at exit, before the
    engines and the runtime) and frees each run's device buffers when the run ends, also on error.
    ``trt`` and ``driver`` can be given (tests pass fakes where there is no GPU).
    """

    def __init__(self, trt=None, driver: Callable[[], "_CudaDriver"] | None = None):
        self._trt = trt
        self._driver_factory = driver or _CudaDriver
        self.cuda = None
        self.runtime = None
        self.engines: list = []
        self.contexts: dict[int, object] = {}

    def __enter__(self) -> "TensorRTSession":
        self.trt = self._trt or require_gpu()
        self.cuda = self._driver_factory()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        # Order matters: contexts before engines before the runtime, the CUDA context last.
        self.contexts.clear()
        self.engines.clear()
        self.runtime = None
        if self.cuda is not None:
            cuda, self.cuda = self.cuda, None
            cuda.close()

    def deserialize(self, data: bytes):
        if self.runtime is None:
            self.runtime = self.trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine it built")
        self.engines.append(engine)
        return engine

    def execution_context(self, engine):
        key = id(engine)
        if key not in self.contexts:
            self.contexts[key] = engine.create_execution_context()
        return self.contexts[key]

    def build_engine(
        self,
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
        onnx_path, plan_path = Path(onnx_path), Path(plan_path)
        check_build_arguments(precision, sparsity, _has_qdq(onnx_path))
        data = _build_serialized(self.trt, self.logger, onnx_path, profiles, precision, sparsity, workspace_bytes,
                                 log or (lambda message: None))
        atomic_write_bytes(plan_path, data)
        engine = self.deserialize(data)
        report = TensorRTReport(plan_path, len(data), precision, sparsity, list(profiles), self.trt.__version__,
                                _gpu_name())
        return report, engine

    def run_engine(self, engine, profile_index: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One batch through the engine on GPU 0 (default stream); FP32/INT outputs on the host."""
        context = self.execution_context(engine)
        context.set_optimization_profile_async(profile_index, 0)
        pointers: list[int] = []
        outputs: dict[str, tuple[np.ndarray, int]] = {}
        try:
            for name, array in feeds.items():
                host = np.ascontiguousarray(array, dtype=_numpy_dtype(engine, name))
                pointers.append(self.cuda.alloc(host.nbytes))
                self.cuda.upload(pointers[-1], host)
                context.set_input_shape(name, tuple(host.shape))
                context.set_tensor_address(name, pointers[-1])
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) != self.trt.TensorIOMode.OUTPUT:
                    continue
                host = np.empty(tuple(context.get_tensor_shape(name)), dtype=_numpy_dtype(engine, name))
                pointers.append(self.cuda.alloc(host.nbytes))
                context.set_tensor_address(name, pointers[-1])
                outputs[name] = (host, pointers[-1])
            if not context.execute_async_v3(0):
                raise RuntimeError("TensorRT execution failed")
            self.cuda.synchronize()
            for host, pointer in outputs.values():
                self.cuda.download(host, pointer)
        finally:
            for pointer in pointers:
                self.cuda.free(pointer)
        return {name: host.astype(np.float32) if host.dtype == np.float16 else host
                for name, (host, _) in outputs.items()}


def build_engine(onnx_path: str | Path, plan_path: str | Path, profiles: Sequence[OptimizationProfile], **kwargs):
    """Builds and writes an engine in a session of its own; returns its TensorRTReport."""
    with TensorRTSession() as session:
        report, _engine = session.build_engine(onnx_path, plan_path, profiles, **kwargs)
    return report


def _build_serialized(trt, logger, onnx_path: Path, profiles, precision: str, sparsity: bool, workspace_bytes: int,
                      say: Callable[[str], None]) -> bytes:
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
    return bytes(serialized)


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
