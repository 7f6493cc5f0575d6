"""A Python-based Triton backend that serves `platform: "onnxruntime_onnx"` models with ONNX Runtime.

The NGC Triton image serves the same config.pbtxt with its native onnxruntime backend; the
tritonserver from the nvidia-pytriton wheel has no native one, so embedded mode loads this instead.
It honours the native backend's thread parameters and graph optimisation level, runs on the
instance's device, and batches across requests like pytriton: concatenate, run once, split back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from bertqa.triton.batching import BatchedExecutor
from bertqa.triton.common import model_parameters, version_dir

# Parameters the native onnxruntime backend understands that have no effect here (logged, not errors:
# the same config.pbtxt must also be valid for the native backend).
_NATIVE_ONLY_PARAMETERS = (
    "execution_mode",
    "enable_mem_arena",
    "enable_mem_pattern",
    "memory.enable_memory_arena_shrinkage",
    "cudnn_conv_algo_search",
    "session_thread_pool",
    "share_session_between_instances",
)

# Triton config graph level -> ONNX Runtime (as the native backend maps it).
_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


# CPU instances run merged batches in chunks of at most this many tokens (see OnnxRuntimeModel._run).
CPU_TOKENS_PER_RUN = 512


@dataclass(frozen=True)
class OnnxRuntimeParameters:
    intra_op_thread_count: int = 0  # 0: ONNX Runtime's default (one per physical core)
    inter_op_thread_count: int = 0


def _providers(config: dict, args: dict) -> list:
    if args.get("model_instance_kind") != "GPU":
        return ["CPUExecutionProvider"]
    device = int(args.get("model_instance_device_id", 0))
    providers = []
    accelerators = config.get("optimization", {}).get("execution_accelerators", {})
    for accelerator in accelerators.get("gpu_execution_accelerator", []):
        if accelerator.get("name") == "tensorrt":
            options = {"device_id": device, **{k: str(v) for k, v in accelerator.get("parameters", {}).items()}}
            providers.append(("TensorrtExecutionProvider", options))
    providers += [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
    return providers


class OnnxRuntimeModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        name = config["name"]
        params = model_parameters(config, OnnxRuntimeParameters, ignore=_NATIVE_ONLY_PARAMETERS)
        for key in set(config.get("parameters", {})) & set(_NATIVE_ONLY_PARAMETERS):
            pb_utils.Logger.log_warn(f"{name}: parameter {key!r} only applies to the native onnxruntime backend")

        path = version_dir(args) / (config.get("default_model_filename") or "model.onnx")
        if not path.is_file():
            raise pb_utils.TritonModelException(f"{name}: model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = params.intra_op_thread_count
        options.inter_op_num_threads = params.inter_op_thread_count
        level = int(config.get("optimization", {}).get("graph", {}).get("level", 0))
        options.graph_optimization_level = _GRAPH_LEVELS.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        available = set(ort.get_available_providers())
        providers = [p for p in _providers(config, args) if (p if isinstance(p, str) else p[0]) in available]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # ORT raises its own exception types; the message says what failed
            raise pb_utils.TritonModelException(f"{name}: cannot load {path}: {err}") from err

        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        session_inputs = {i.name for i in self.session.get_inputs()}
        session_outputs = {o.name for o in self.session.get_outputs()}
        missing = (set(self.input_names) - session_inputs) | (set(self.output_names) - session_outputs)
        if missing:
            raise pb_utils.TritonModelException(
                f"{name}: config names tensors {sorted(missing)} that {path.name} does not have "
                f"(model inputs {sorted(session_inputs)}, outputs {sorted(session_outputs)})"
            )
        self.name = name
        self.cpu = self.session.get_providers()[0] == "CPUExecutionProvider"
        self.executor = BatchedExecutor(name, self.input_names, self.output_names, self._run)
        pb_utils.Logger.log_info(
            f"{name}: {path} on {self.session.get_providers()[0]}, "
            f"intra_op={params.intra_op_thread_count} inter_op={params.inter_op_thread_count}"
        )

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One session run, or on CPU several runs of at most ``CPU_TOKENS_PER_RUN`` tokens each.

        On a CPU, a forward pass over one 384-token window already keeps every core busy, and larger
        batches only push the activations out of the caches (measured: batch 16 ran 10-20 % slower per
        window than batch 1; docs/BENCHMARKS.md). The dynamic batcher still merges requests, which
        saves the per-request overhead; the merged batch is then run in cache-sized chunks.
        """
        rows, length = feeds[self.input_names[0]].shape[:2] if feeds[self.input_names[0]].ndim >= 2 else (0, 0)
        if not self.cpu or rows <= 1 or length == 0:
            return self.session.run(self.output_names, feeds)
        step = max(1, CPU_TOKENS_PER_RUN // length)
        if step >= rows:
            return self.session.run(self.output_names, feeds)
        parts = [self.session.run(self.output_names, {n: a[first:first + step] for n, a in feeds.items()})
                 for first in range(0, rows, step)]
        return [np.concatenate([part[i] for part in parts]) for i in range(len(self.output_names))]

    def execute(self, requests: list) -> list:
        return self.executor.execute(requests)
