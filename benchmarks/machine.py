"""What the benchmark ran on: CPU, cores, memory and the versions of everything measured."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    except OSError:
        pass
    return []


def _memory_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _openvino_capabilities() -> list[str]:
    """What OpenVINO computes natively here (BF16 decides the CPU default, `CPU_DEFAULT_PRECISION=auto`)."""
    try:
        from bertqa.openvino_runtime import cpu_capabilities

        return cpu_capabilities()
    except ImportError:
        return []


def describe(triton_version: str | None = None) -> dict:
    import psutil

    return {
        "cpu": _cpu_model(),
        "cpu_flags": ", ".join(_cpu_flags()),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "openvino_cpu_capabilities": _openvino_capabilities(),
        "memory_gib": round(_memory_gib(), 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "tritonserver": triton_version or "2.51.0 (nvidia-pytriton 0.7.0)",
        "versions": {name: _version(name) for name in (
            "onnxruntime", "numpy", "torch", "transformers", "tokenizers", "tritonclient", "nvidia-pytriton", "onnx")},
    }
