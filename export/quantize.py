"""INT8 ONNX models with ONNX Runtime quantization, and how they compare with FP32.

* ``dynamic`` (default, CPU): ``quantize_dynamic`` of the MatMul weights, per output channel; the
  activations are quantized on the fly. No calibration data needed.
* ``static`` (QDQ): ``quantize_static`` with QuantizeLinear/DequantizeLinear pairs around the
  MatMuls, activation ranges calibrated on windows of a user data file. ``target="cpu"`` uses
  U8 activations/S8 weights; ``target="tensorrt"`` uses symmetric S8 for both, the form TensorRT
  reads as explicit quantization.

``compare_int8`` reports size, speed-up over FP32 (ONNX Runtime CPU, same windows, one thread)
and SQuAD EM/F1 of both on an evaluation file, and warns when INT8 keeps < 99 % of FP32's F1.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bertqa.export.evaluation import (
    QAExample,
    evaluate_session,
    read_examples,
    time_session,
)
from bertqa.export.onnx import INPUT_NAMES, ort_session, validation_batches
from bertqa.text import QAWindower, Windows, WindowingConfig, load_tokenizer

METHODS = ("dynamic", "static")
TARGETS = ("cpu", "tensorrt")
F1_RETENTION_WARNING = 0.99


class Int8AccuracyWarning(UserWarning):
    """INT8 keeps less than 99 % of the FP32 F1."""


@dataclass
class Int8Report:
    path: Path
    method: str
    size_bytes: int
    fp32_size_bytes: int
    fp32_seconds: float
    int8_seconds: float
    windows_timed: int
    max_abs_diff_start: float  # INT8 vs FP32 logits on the timing windows
    max_abs_diff_end: float
    eval_file: Path | None = None
    eval_questions: int = 0
    fp32_exact_match: float | None = None
    fp32_f1: float | None = None
    int8_exact_match: float | None = None
    int8_f1: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        return self.size_bytes / self.fp32_size_bytes

    @property
    def speedup(self) -> float:
        return self.fp32_seconds / self.int8_seconds if self.int8_seconds > 0 else float("nan")

    @property
    def f1_retained(self) -> float | None:
        if self.fp32_f1 is None or self.int8_f1 is None:
            return None
        return self.int8_f1 / self.fp32_f1 if self.fp32_f1 > 0 else float("nan")

    def summary(self) -> str:
        lines = [
            f"INT8 ({self.method}) {self.path.name}: {self.size_bytes / 1e6:.2f} MB vs FP32 "
            f"{self.fp32_size_bytes / 1e6:.2f} MB ({self.size_ratio:.0%})",
            f"speed: FP32 {self.fp32_seconds * 1e3:.1f} ms, INT8 {self.int8_seconds * 1e3:.1f} ms for "
            f"{self.windows_timed} windows -> {self.speedup:.2f}x (ONNX Runtime CPU, 1 thread)",
            f"logits vs FP32: max |diff| start {self.max_abs_diff_start:.3g}, end {self.max_abs_diff_end:.3g}",
        ]
        if self.f1_retained is not None:
            lines.append(
                f"SQuAD on {self.eval_file} ({self.eval_questions} questions): FP32 EM {self.fp32_exact_match:.2f} "
                f"F1 {self.fp32_f1:.2f}; INT8 EM {self.int8_exact_match:.2f} F1 {self.int8_f1:.2f} "
                f"({self.f1_retained:.1%} of FP32 F1)"
            )
        else:
            lines.append("F1 not measured (no evaluation file)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def _batches_of(windows: Windows, batch_size: int) -> list[dict[str, np.ndarray]]:
    out = []
    for start in range(0, windows.num_windows, batch_size):
        out.append({n: getattr(windows, n)[start:start + batch_size] for n in INPUT_NAMES})
    return out


def calibration_batches(
    tokenizer_file: str | Path, examples: Sequence[QAExample], windowing: WindowingConfig,
    *, max_windows: int = 128, batch_size: int = 8,
) -> list[dict[str, np.ndarray]]:
    """Input feeds for calibration: windows of the examples, at most ``max_windows`` of them."""
    windower = QAWindower(load_tokenizer(tokenizer_file), windowing)
    feeds: list[dict[str, np.ndarray]] = []
    total = 0
    for example in examples:
        windows = windower.windows([example.question], [example.context])
        feeds += _batches_of(windows, batch_size)
        total += windows.num_windows
        if total >= max_windows:
            break
    return feeds


class _FeedReader:
    """onnxruntime.quantization.CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._iter = iter(self._feeds)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self):
        self._iter = iter(self._feeds)


def quantize_int8(
    fp32_path: str | Path,
    output_path: str | Path,
    *,
    method: str = "dynamic",
    target: str = "cpu",
    calibration_feeds: Sequence[dict[str, np.ndarray]] | None = None,
    per_channel: bool = True,
) -> Path:
    """Writes an INT8 copy of ``fp32_path`` (FP32 weights stored as FP32) to ``output_path``, atomically."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if method == "dynamic" and target == "tensorrt":
        raise ValueError("TensorRT needs static (QDQ) quantization with calibration data, not dynamic")
    if method == "static" and not calibration_feeds:
        raise ValueError("static quantization needs calibration data (a question/context file)")
    if method == "dynamic" and calibration_feeds:
        raise ValueError("dynamic quantization takes no calibration data; use method='static'")
    fp32_path, output_path = Path(fp32_path), Path(output_path)
    _require_fp32_weights(fp32_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_path.parent, prefix=".quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quantized = Path(scratch) / "int8.onnx"
        # Shape inference + ORT basic optimizations, as the ORT quantization guide recommends.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method == "dynamic":
                quantize_dynamic(
                    str(prepared), str(quantized), op_types_to_quantize=["MatMul"], per_channel=per_channel,
                    weight_type=QuantType.QInt8,
                )
            else:
                reader = _FeedReader(calibration_feeds)
                assert isinstance(reader, object) and CalibrationDataReader  # duck-typed reader
                symmetric = target == "tensorrt"
                quantize_static(
                    str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul"], per_channel=per_channel,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
                )
        _cap_ir(quantized)
        fd, tmp = tempfile.mkstemp(prefix=output_path.name + ".tmp", dir=output_path.parent)
        os.close(fd)
        try:
            os.chmod(quantized, 0o644)
            os.replace(quantized, tmp)
            os.replace(tmp, output_path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return output_path


def _require_fp32_weights(path: Path) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(node.op_type == "Cast" and node.input and node.input[0].endswith("__fp16") for node in model.graph.node):
        raise ValueError(f"{path}: weights are stored as FP16 + Cast; quantize from an FP32-storage export")


def _cap_ir(path: Path) -> None:
    """IR <= 10, opset <= 21, and only the operator domains the graph uses.

    ORT's quantization tools stamp every domain they know (e.g. ai.onnx.ml 5), which an older
    ONNX Runtime (Triton 24.10: 1.19) may refuse; unused imports are dropped.
    """
    import onnx

    from bertqa.export.onnx import MAX_IR_VERSION, MAX_OPSET, model_opset

    model = onnx.load(str(path))
    if model_opset(model) > MAX_OPSET:
        raise ValueError(f"{path}: quantized model has opset {model_opset(model)} > {MAX_OPSET}")
    used = {node.domain or "" for node in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used | {"", "ai.onnx"}]
    if len(keep) != len(model.opset_import) or model.ir_version > MAX_IR_VERSION:
        del model.opset_import[:]
        model.opset_import.extend(keep)
        model.ir_version = min(model.ir_version, MAX_IR_VERSION)
        onnx.save(model, str(path))


# --------------------------------------------------------------------------------------------------


def compare_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    tokenizer_file: str | Path,
    *,
    method: str = "dynamic",
    eval_file: str | Path | None = None,
    windowing: WindowingConfig | None = None,
    max_eval_questions: int | None = None,
    log: Callable[[str], None] | None = print,
) -> Int8Report:
    """Size, speed and (with ``eval_file``) SQuAD EM/F1 of an INT8 model against its FP32 source."""
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    say = log or (lambda message: None)
    windowing = windowing or WindowingConfig()
    fp32 = ort_session(fp32_path)
    int8 = ort_session(int8_path)

    # Timing and logit differences on the built-in validation pairs (several lengths, a multi-window one).
    feeds = [{n: getattr(b, n) for n in INPUT_NAMES} for b in validation_batches(tokenizer_file, None, windowing)]
    diff_start = diff_end = 0.0
    for f in feeds:
        s32, e32 = fp32.run(["start_logits", "end_logits"], f)
        s8, e8 = int8.run(["start_logits", "end_logits"], f)
        if not (np.isfinite(s8).all() and np.isfinite(e8).all()):
            raise ValueError(f"{int8_path}: INT8 model produced NaN/Inf logits")
        diff_start = max(diff_start, float(np.abs(s8 - s32).max()))
        diff_end = max(diff_end, float(np.abs(e8 - e32).max()))
    report = Int8Report(
        path=int8_path, method=method, size_bytes=int8_path.stat().st_size, fp32_size_bytes=fp32_path.stat().st_size,
        fp32_seconds=time_session(fp32, feeds), int8_seconds=time_session(int8, feeds),
        windows_timed=sum(int(f["input_ids"].shape[0]) for f in feeds),
        max_abs_diff_start=diff_start, max_abs_diff_end=diff_end,
    )
    if eval_file is not None:
        examples = read_examples(eval_file, require_answers=True)
        if max_eval_questions:
            examples = examples[:max_eval_questions]
        r32 = evaluate_session(fp32, tokenizer_file, examples, windowing=windowing)
        r8 = evaluate_session(int8, tokenizer_file, examples, windowing=windowing)
        report.eval_file = Path(eval_file)
        report.eval_questions = len(examples)
        report.fp32_exact_match, report.fp32_f1 = r32.exact_match, r32.f1
        report.int8_exact_match, report.int8_f1 = r8.exact_match, r8.f1
        # The timing over real evaluation windows is the more representative one.
        if r32.seconds > 0 and r8.seconds > 0 and r32.windows >= report.windows_timed:
            report.fp32_seconds, report.int8_seconds, report.windows_timed = r32.seconds, r8.seconds, r32.windows
        retained = report.f1_retained
        if retained is not None and retained < F1_RETENTION_WARNING:
            message = (
                f"INT8 keeps only {retained:.1%} of the FP32 F1 ({report.int8_f1:.2f} vs {report.fp32_f1:.2f}) "
                f"on {eval_file}; below the {F1_RETENTION_WARNING:.0%} target — consider static QDQ "
                f"calibration (--calibration FILE) or serving FP32"
            )
            report.warnings.append(message)
            warnings.warn(message, Int8AccuracyWarning, stacklevel=2)
    say(report.summary())
    for message in report.warnings:
        say(f"WARNING: {message}")
    return report
