"""ONNX (or a PyTorch module) -> OpenVINO IR for Triton's ``backend: "openvino"``, validated before writing.

Precisions (what the CPU computes; weights are stored in FP32 except INT8's quantized MatMuls):
* ``fp32``: the converted model, run with ``INFERENCE_PRECISION_HINT f32`` (OpenVINO would
  otherwise compute in BF16 on CPUs with native BF16).
* ``bf16``: the same IR, run with ``HINT_BF16 YES`` (the native backend's parameter).
* ``int8``: NNCF post-training quantization (``model_type=TRANSFORMER``), activation ranges
  calibrated on windows of real SQuAD questions; the operations left in floating point run in BF16
  where the CPU has it (``HINT_BF16 YES``), else FP32.

Validation, before anything is written: logits against PyTorch on the exporter's sample windows
(FP32: max |diff| <= atol; BF16/INT8: start/end argmax agreement >= ``min_agreement``), and when
evaluation examples are given, SQuAD EM/F1 of the variant against the FP32 conversion on the same
questions; F1 below ``min_f1_retained`` of FP32 is an error, so a variant that answers worse than
the bert-99 rule allows is never installed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bertqa.files import file_digest
from bertqa.openvino_runtime import OpenVinoParameters, OpenVinoSession, chunk_rows, cpu_capabilities, import_openvino
from bertqa.squad import QAExample
from bertqa.text import WindowingConfig

PRECISIONS = ("fp32", "bf16", "int8")
AUTO = "auto"  # the CPU default: bf16 or int8, by what this CPU computes natively (cpu_default_precision)
MODEL_FILE = "model.xml"  # the native backend's default_model_filename; weights beside it in model.bin
CALIBRATION_QUESTIONS = 128  # questions (one window each at most) spread over the calibration file


class OpenVinoExportError(RuntimeError):
    """The converted model failed validation; nothing was written."""


@dataclass
class OpenVinoExportReport:
    precision: str
    path: str
    size_bytes: int
    runtime: str  # what the compiled model reports: streams, threads, precision
    max_abs_diff_start: float
    max_abs_diff_end: float
    argmax_agreement: float  # share of windows whose start and end argmax equal PyTorch's
    calibration_windows: int = 0
    eval_questions: int = 0
    fp32_exact_match: float | None = None
    fp32_f1: float | None = None
    exact_match: float | None = None
    f1: float | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def f1_retained(self) -> float | None:
        if self.f1 is None or not self.fp32_f1:
            return None
        return self.f1 / self.fp32_f1

    def summary(self) -> str:
        lines = [f"OpenVINO {self.precision}: {self.runtime}; {self.size_bytes / 1e6:.1f} MB",
                 f"vs reference logits: max |diff| start {self.max_abs_diff_start:.3g}, end {self.max_abs_diff_end:.3g}, "
                 f"argmax agreement {self.argmax_agreement:.1%}"]
        if self.f1 is not None:
            retained = f" ({self.f1_retained:.1%})" if self.f1_retained is not None else ""
            lines.append(f"SQuAD ({self.eval_questions} questions): EM {self.exact_match:.2f} F1 {self.f1:.2f} "
                         f"vs FP32 EM {self.fp32_exact_match:.2f} F1 {self.fp32_f1:.2f}{retained}")
        return "\n".join(lines)


def runtime_parameters(precision: str, *, streams: int = 1, threads: int = 0) -> OpenVinoParameters:
    """The config parameters each precision is served with (latency hint; threads 0 = all cores)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return OpenVinoParameters(
        NUM_STREAMS=str(streams), PERFORMANCE_HINT="LATENCY", INFERENCE_NUM_THREADS=threads,
        HINT_BF16=precision in ("bf16", "int8"), INFERENCE_PRECISION_HINT="f32" if precision == "fp32" else "",
    )


def bf16_note(capabilities: Sequence[str] | None = None) -> str | None:
    """Why a BF16 variant will not be fast on this CPU, or None when it will. On CPUs without native BF16
    (AVX512_BF16, AMX, AVX2-VNNI-2) OpenVINO 2026 emulates a BF16 hint, far slower than FP32; the runtime
    (bertqa.openvino_runtime) computes such a variant in f32 instead."""
    if capabilities is None:
        capabilities = cpu_capabilities()
    if "BF16" in capabilities:
        return None
    return ("this CPU has no native BF16 (OpenVINO's CPU capabilities: " + ", ".join(capabilities) +
            "): OpenVINO would emulate BF16 here (about 30x slower than FP32), so the runtime computes the BF16 "
            "variant in f32; INT8 (--precision int8, or auto) is the fast one")


def cpu_default_precision(capabilities: Sequence[str] | None = None) -> str:
    """The CPU default for this CPU, by `make bench`'s rule (the fastest served variant keeping 99 % of FP32's
    full-dev F1). With native BF16 (AVX512_BF16, AMX), BF16 and INT8 serve at one speed and BF16 keeps FP32's
    F1, so BF16; without it a BF16 variant runs in f32 (OpenVINO would emulate BF16), and INT8 is the fastest
    (docs/BENCHMARKS.md)."""
    return "bf16" if "BF16" in (cpu_capabilities() if capabilities is None else capabilities) else "int8"


def resolve_precision(precision: str, capabilities: Sequence[str] | None = None) -> str:
    """``auto`` as :func:`cpu_default_precision`; any other precision as it is."""
    return cpu_default_precision(capabilities) if precision == AUTO else precision


def convert(source, sample_feeds: dict[str, np.ndarray] | None = None):
    """``ov.Model`` from an ONNX file, an IR ``.xml`` or a PyTorch ``BertForQuestionAnswering`` (traced on ``sample_feeds``)."""
    ov = import_openvino()

    if isinstance(source, (str, Path)):
        if Path(source).suffix == ".xml":
            return ov.Core().read_model(str(source))
        return ov.convert_model(str(source))
    import torch

    if sample_feeds is None:
        raise ValueError("converting a PyTorch module needs sample_feeds (input_ids, attention_mask, token_type_ids)")

    class _Logits(torch.nn.Module):  # plain tensors out, named like the ONNX export
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.start_logits, out.end_logits

    example = {k: torch.from_numpy(v) for k, v in sample_feeds.items()}
    model = ov.convert_model(_Logits(source.eval()), example_input=example,
                             input=[(name, [-1, -1], ov.Type.i64) for name in example])
    for port, name in zip(model.outputs, ("start_logits", "end_logits")):
        port.get_tensor().set_names({name})
    return model


def quantize(model, calibration_feeds: Sequence[dict[str, np.ndarray]]):
    """NNCF post-training INT8 quantization for transformers (SmoothQuant-free defaults)."""
    import_openvino()  # NNCF reports usage through OpenVINO's telemetry: declined first
    import nncf

    if not calibration_feeds:
        raise ValueError("INT8 needs calibration windows (real questions and contexts)")
    return nncf.quantize(model, nncf.Dataset(list(calibration_feeds)), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(calibration_feeds))


def _compare_logits(session: OpenVinoSession, reference_batches) -> tuple[float, float, float]:
    """Max |diff| of start/end logits against PyTorch and the share of windows with equal argmaxes."""
    diff_start = diff_end = 0.0
    agree = total = 0
    for feeds, (ref_start, ref_end) in reference_batches:
        start, end = session.run(["start_logits", "end_logits"], feeds)
        diff_start = max(diff_start, float(np.abs(start - ref_start).max()))
        diff_end = max(diff_end, float(np.abs(end - ref_end).max()))
        agree += int(((start.argmax(1) == ref_start.argmax(1)) & (end.argmax(1) == ref_end.argmax(1))).sum())
        total += start.shape[0]
    return diff_start, diff_end, agree / max(total, 1)


def export_openvino(
    source,
    target_dir: str | Path,
    *,
    precision: str,
    reference_batches: Sequence[tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]],
    tokenizer_file: str | Path,
    windowing: WindowingConfig,
    calibration_feeds: Sequence[dict[str, np.ndarray]] = (),
    eval_examples: Sequence[QAExample] = (),
    atol: float = 1e-3,
    min_agreement: float = 0.9,
    min_f1_retained: float = 0.99,
    parameters: OpenVinoParameters | None = None,
    log: Callable[[str], None] | None = None,
) -> OpenVinoExportReport:
    """Converts ``source`` (ONNX path or PyTorch module) and writes ``model.xml``/``model.bin`` into ``target_dir``.

    ``reference_batches``: (feeds, PyTorch (start, end) logits) pairs to validate against. The
    files are written only after every check passed; a failed check raises OpenVinoExportError.
    """
    ov = import_openvino()

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not reference_batches:
        raise ValueError("reference_batches is empty: the conversion cannot be validated")
    say = log or (lambda message: None)
    if precision == "bf16" and (note := bf16_note()):
        say(f"warning: {note}")
    parameters = parameters or runtime_parameters(precision)
    seconds: dict[str, float] = {}
    target_dir = Path(target_dir)
    scratch = Path(tempfile.mkdtemp(prefix=".openvino-", dir=target_dir.parent if target_dir.parent.is_dir() else None))
    try:
        begin = time.perf_counter()
        sample = reference_batches[0][0]
        fp32_model = convert(source, None if isinstance(source, (str, Path)) else sample)
        seconds["convert"] = time.perf_counter() - begin
        fp32_path = scratch / "fp32" / MODEL_FILE
        ov.save_model(fp32_model, str(fp32_path), compress_to_fp16=False)
        model_path = fp32_path
        if precision == "int8":
            begin = time.perf_counter()
            quantized = quantize(fp32_model, calibration_feeds)
            seconds["quantize"] = time.perf_counter() - begin
            model_path = scratch / "int8" / MODEL_FILE
            ov.save_model(quantized, str(model_path), compress_to_fp16=False)
            say(f"quantized with NNCF on {len(calibration_feeds)} calibration batches ({seconds['quantize']:.0f} s)")

        session = OpenVinoSession(model_path, parameters)
        diff_start, diff_end, agreement = _compare_logits(session, reference_batches)
        report = OpenVinoExportReport(
            precision=precision, path=str(target_dir / MODEL_FILE),
            size_bytes=sum(p.stat().st_size for p in model_path.parent.iterdir()), runtime=session.describe(),
            max_abs_diff_start=diff_start, max_abs_diff_end=diff_end, argmax_agreement=agreement,
            calibration_windows=sum(f["input_ids"].shape[0] for f in calibration_feeds), seconds=seconds,
        )
        if precision == "fp32" and max(diff_start, diff_end) > atol:
            raise OpenVinoExportError(f"OpenVINO FP32 differs from PyTorch by {max(diff_start, diff_end):.3g} > {atol}")
        if agreement < min_agreement:
            raise OpenVinoExportError(f"OpenVINO {precision} agrees with PyTorch on only {agreement:.1%} of the "
                                      f"validation windows' start/end tokens (< {min_agreement:.0%})")
        if eval_examples:
            _evaluate(report, session, fp32_path, tokenizer_file, windowing, eval_examples, min_f1_retained)
        del session
        target_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(model_path.parent.iterdir()):
            shutil.copy2(path, target_dir / path.name)
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _evaluate(report: OpenVinoExportReport, session: OpenVinoSession, fp32_path: Path, tokenizer_file,
              windowing: WindowingConfig, examples: Sequence[QAExample], min_f1_retained: float) -> None:
    from bertqa.export.evaluation import evaluate_session

    begin = time.perf_counter()
    result = evaluate_session(session, tokenizer_file, examples, windowing=windowing)
    if report.precision == "fp32":
        fp32 = result
    else:
        fp32 = evaluate_session(OpenVinoSession(fp32_path, runtime_parameters("fp32")), tokenizer_file, examples,
                                windowing=windowing)
    report.seconds["evaluate"] = time.perf_counter() - begin
    report.eval_questions = len(examples)
    report.exact_match, report.f1 = result.exact_match, result.f1
    report.fp32_exact_match, report.fp32_f1 = fp32.exact_match, fp32.f1
    retained = report.f1_retained
    if retained is not None and retained < min_f1_retained:
        raise OpenVinoExportError(
            f"OpenVINO {report.precision} keeps {retained:.1%} of FP32's SQuAD F1 ({report.f1:.2f} vs {report.fp32_f1:.2f} "
            f"on {len(examples)} questions), below {min_f1_retained:.0%}: not installed")


# --------------------------------------------------------------------------------------------------
# Triton config


def openvino_model_config(name: str, inputs, outputs, parameters: OpenVinoParameters, *,
                          max_batch_size: int = 64, instance_count: int = 1, warmup_lengths: Sequence[int] = ()) -> str:
    """``backend: "openvino"`` config text, built as a ModelConfig protobuf.

    ``inputs``/``outputs``: TensorSpec-like objects (name, data_type, dims). For the native backend:
    ``RESHAPE_IO_LAYERS YES`` keeps the config's variable sequence length, ``ENABLE_BATCH_PADDING YES``
    accepts batches smaller than max_batch_size (it pads them; the embedded backend never pads).
    ``warmup_lengths`` (qa_preprocess's sequence buckets): ``model_warmup`` runs every shape the
    embedded backend will run (each length, 1..chunk_rows(length, TOKENS_PER_RUN) rows) before the model is ready.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from bertqa.export.repository import NO_DYNAMIC_BATCHER_NOTE

    config = mc.ModelConfig(name=name, backend="openvino", max_batch_size=max_batch_size,
                            default_model_filename=MODEL_FILE)
    for spec, target in [(s, config.input) for s in inputs] + [(s, config.output) for s in outputs]:
        target.add(name=spec.name, data_type=mc.DataType.Value(spec.data_type), dims=list(spec.dims))
    config.instance_group.add(count=instance_count, kind=mc.ModelInstanceGroup.KIND_CPU)
    for length in warmup_lengths:
        for rows in range(1, chunk_rows(length, parameters.TOKENS_PER_RUN) + 1):
            warmup = config.model_warmup.add(name=f"{rows}x{length}", batch_size=rows)
            for spec in inputs:
                data = warmup.inputs[spec.name]
                data.data_type = mc.DataType.Value(spec.data_type)
                data.dims.extend([length])
                data.zero_data = True
    values = {**parameters.as_config(), "RESHAPE_IO_LAYERS": "YES", "ENABLE_BATCH_PADDING": "YES"}
    for key, value in values.items():
        config.parameters[key].string_value = value
    header = ("# Generated by `bertqa export --format openvino`; served by Triton's native openvino backend (NGC\n"
              "# image) and, embedded, by bertqa/backends/openvino (bertqa.triton.openvino_backend).\n"
              f"# {NO_DYNAMIC_BATCHER_NOTE}\n")
    return header + text_format.MessageToString(config)


# --------------------------------------------------------------------------------------------------
# From an installed ONNX model (no PyTorch): what `make serve` and the CPU compose profile run


SOURCE_MODEL = "bert_onnx"
_OV_TO_TRITON = {"i64": "TYPE_INT64", "i32": "TYPE_INT32", "f32": "TYPE_FP32", "f16": "TYPE_FP16", "bf16": "TYPE_BF16"}


def ir_io(model_xml: Path):
    """TensorSpecs (first dimension = batch) of an IR's inputs and outputs, read with OpenVINO (no onnx package)."""
    ov = import_openvino()

    from bertqa.export.repository import RepositoryError, TensorSpec

    model = ov.Core().read_model(str(model_xml))

    def specs(ports):
        out = []
        for port in ports:
            kind = port.get_element_type().to_string()
            if kind not in _OV_TO_TRITON:
                raise RepositoryError(f"{model_xml}: tensor {port.get_any_name()} has type {kind} unknown here")
            dims = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
            out.append(TensorSpec(port.get_any_name(), _OV_TO_TRITON[kind], tuple(dims[1:])))
        return out

    return specs(model.inputs), specs(model.outputs)


def install_from_repository(repository: str | Path, precision: str, *, source_model: str = SOURCE_MODEL,
                            calibration: str | Path | None = None, max_eval: int | None = 100,
                            log: Callable[[str], None] | None = None) -> Path:
    """``<repository>/bert_openvino[_<precision>]`` (+ its pre-processing and ensemble) from ``<source_model>``'s ONNX.

    Needs only OpenVINO (and NNCF for INT8): the reference logits are ONNX Runtime's of that ONNX
    file, which was itself validated against PyTorch when it was exported. The variant gets the
    source variant's tokenizer and windowing. Staged and swapped in like ``bertqa export``: a failed
    conversion leaves the repository as it was.
    """
    import onnxruntime as ort
    from google.protobuf import json_format

    from bertqa.export import repository as repo
    from bertqa.export.evaluation import read_examples
    from bertqa.export.onnx import INPUT_NAMES, validation_batches
    from bertqa.export.quantize import calibration_batches
    from bertqa.squad import dev_slice_path
    from bertqa.triton.params import PreprocessParameters, parse_parameters

    repository = Path(repository)
    source = next(v for v in repo.VARIANTS.values() if v.model_name == source_model)
    onnx_file = repository / source_model / "1" / "model.onnx"
    tokenizer_file = repository / source.preprocess_name / "1" / repo.TOKENIZER_FILE
    pre_config = repository / source.preprocess_name / "config.pbtxt"
    if not (onnx_file.is_file() and tokenizer_file.is_file() and pre_config.is_file()):
        raise FileNotFoundError(f"{onnx_file}, {tokenizer_file} and {pre_config} are needed "
                                f"(run `bertqa install-demo` or `bertqa export --format onnx` first)")
    config = json_format.MessageToDict(repo.parse_config(pre_config.read_text(encoding="utf-8"), str(pre_config)),
                                       preserving_proto_field_name=True)
    windowing = parse_parameters(config, PreprocessParameters).windowing()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    reference = []
    for batch in validation_batches(tokenizer_file, None, windowing):
        feeds = {n: getattr(batch, n) for n in INPUT_NAMES}
        reference.append((feeds, tuple(session.run(["start_logits", "end_logits"], feeds))))
    calibration_feeds = []
    if precision == "int8":
        examples = read_examples(calibration or dev_slice_path())
        spread = examples[:: max(1, len(examples) // CALIBRATION_QUESTIONS)]
        calibration_feeds = calibration_batches(tokenizer_file, spread, windowing, max_windows=CALIBRATION_QUESTIONS,
                                                batch_size=1)
    eval_examples = read_examples(dev_slice_path(), require_answers=True)[:max_eval] if max_eval else []
    variant = repo.variant_for("openvino", precision=precision)
    parameters = runtime_parameters(precision)
    with repo.StagedExport(repository) as staged:
        version_dir = staged.version_dir(variant.model_name)
        report = export_openvino(onnx_file, version_dir, precision=precision, reference_batches=reference,
                                 tokenizer_file=tokenizer_file, windowing=windowing, calibration_feeds=calibration_feeds,
                                 eval_examples=eval_examples, parameters=parameters, log=log)
        inputs, outputs = ir_io(version_dir / MODEL_FILE)
        repo.write_model_folder(staged.folder(variant.model_name), openvino_model_config(
            variant.model_name, inputs, outputs, parameters, warmup_lengths=tuple(windowing.seq_len_buckets)))
        repo.write_metadata(version_dir, {"source": str(onnx_file), "source_sha256": file_digest(onnx_file),
                                          "format": "openvino", "precision": precision,
                                          "report": {**report.__dict__, "f1_retained": report.f1_retained}})
        repo.stage_pipeline(staged, variant, windowing, tokenizer_file)
        installed = staged.commit()
    if log:
        log(report.summary())
    return installed[variant.model_name]


def _installed_from_current_onnx(repository: Path, model_name: str) -> bool:
    """The variant exists and was converted from the ONNX file the repository holds now (same SHA-256)."""
    import json

    from bertqa.export import repository as repo

    meta = repository / model_name / "1" / repo.METADATA_FILE
    source = repository / SOURCE_MODEL / "1" / "model.onnx"
    if not (meta.is_file() and (meta.parent / MODEL_FILE).is_file() and source.is_file()):
        return False
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8")).get("source_sha256")
    except (OSError, ValueError):
        return False
    return recorded == file_digest(source)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bertqa.export.openvino",
                                     description="Install an OpenVINO variant converted from the repository's ONNX model "
                                                 "(no PyTorch; INT8 needs nncf).")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--precision", choices=PRECISIONS + (AUTO,), required=True,
                        help="auto: the CPU default for this CPU (bf16 with native BF16, else int8)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when the variant's model.xml exists")
    parser.add_argument("--calibration", type=Path, default=None, help="INT8: SQuAD file (default: the committed dev slice)")
    args = parser.parse_args(argv)
    from bertqa.export import repository as repo

    capabilities = cpu_capabilities() if args.precision == AUTO else None
    precision = resolve_precision(args.precision, capabilities)
    if capabilities is not None:
        print(f"CPU default for this CPU: {precision} (OpenVINO CPU capabilities: {', '.join(capabilities)})")
    variant = repo.variant_for("openvino", precision=precision)
    if args.if_missing and _installed_from_current_onnx(args.repository, variant.model_name):
        print(f"{variant.model_name}: already installed from the current {SOURCE_MODEL} model "
              f"(ensemble {variant.ensemble_name})")
        return 0
    try:
        path = install_from_repository(args.repository, precision, calibration=args.calibration, log=print)
    except (FileNotFoundError, OpenVinoExportError, ImportError) as err:
        print(f"error: {err}")
        return 1
    print(f"installed {path} (ensemble {variant.ensemble_name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
