"""A Python-based Triton backend that serves ``backend: "openvino"`` models with the OpenVINO runtime.

The NGC Triton image serves the same config.pbtxt with its native openvino backend; the
tritonserver of the nvidia-pytriton wheel has none, so embedded mode loads this instead. It reads
the native backend's parameters (bertqa.openvino_runtime.OpenVinoParameters), loads
``<version>/model.xml`` (or ``default_model_filename``), and batches across requests like the
ONNX Runtime one (bertqa.triton.batching): concatenate, run once, split back.
"""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from bertqa.openvino_runtime import NATIVE_ONLY_PARAMETERS, OpenVinoParameters, OpenVinoSession
from bertqa.triton.batching import BatchedExecutor
from bertqa.triton.common import model_parameters, version_dir

DEFAULT_MODEL_FILE = "model.xml"


class OpenVinoModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        name = config["name"]
        params = model_parameters(config, OpenVinoParameters, ignore=NATIVE_ONLY_PARAMETERS)
        if args.get("model_instance_kind") == "GPU":
            raise pb_utils.TritonModelException(f"{name}: the openvino backend runs on CPU instances only (KIND_CPU)")
        path = version_dir(args) / (config.get("default_model_filename") or DEFAULT_MODEL_FILE)
        if not path.is_file() or not path.with_suffix(".bin").is_file():
            raise pb_utils.TritonModelException(f"{name}: model files not found: {path} and {path.with_suffix('.bin').name}")
        try:
            self.session = OpenVinoSession(path, params)
        except Exception as err:  # OpenVINO raises its own exception types; the message says what failed
            raise pb_utils.TritonModelException(f"{name}: cannot load {path}: {err}") from err

        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        missing = ((set(self.input_names) - set(self.session.input_names))
                   | (set(self.output_names) - set(self.session.output_names)))
        if missing:
            raise pb_utils.TritonModelException(
                f"{name}: config names tensors {sorted(missing)} that {path.name} does not have "
                f"(model inputs {sorted(self.session.input_names)}, outputs {sorted(self.session.output_names)})"
            )
        self.executor = BatchedExecutor(name, self.input_names, self.output_names,
                                        lambda feeds: self.session.run(self.output_names, feeds))
        if self.session.bf16_fallback:
            pb_utils.Logger.log_warn(f"{name}: this CPU has no native BF16 and OpenVINO would emulate it (about 30x "
                                     f"slower than FP32): computing in f32 instead")
        pb_utils.Logger.log_info(f"{name}: OpenVINO {self.session.describe()}")

    def execute(self, requests: list) -> list:
        return self.executor.execute(requests)
