"""Checkpoint -> validated variant in the Triton repository (what `bertqa export` runs).

Order of work, so that a failure anywhere leaves the repository as it was:
check the options -> (TensorRT: check for a GPU) -> load the checkpoint strictly -> decide the
variant's windowing -> stage the variant's folders beside the repository (BERT model, its own
pre-processing model with the checkpoint's tokenizer, its ensemble; qa_postprocess when the
repository has none) -> export ONNX (validated against PyTorch) -> quantize / build the engine
(validated) -> generate the configs -> swap every folder in as one transaction.

A format is a row in ``repository.VARIANTS`` plus a builder in ``BUILDERS``: a function that writes
the BERT model file into the staged version folder and returns its config text and reports.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from rich.console import Console

from bertqa.export import repository as repo
from bertqa.export.checkpoints import Checkpoint, load_checkpoint
from bertqa.export.onnx import DEFAULT_OPSET, INPUT_NAMES, OUTPUT_NAMES, export_onnx, ort_session
from bertqa.text import WindowingConfig

FORMATS = repo.FORMATS
DEFAULT_PRECISION = {"onnx": "fp32", "onnx-int8": "int8", "tensorrt": "fp16", "openvino": "fp32"}
# TensorRT validation tolerances against PyTorch FP32 logits.
TRT_ATOL = {"fp32": 1e-2, "fp16": 0.15}
RESERVED_NAMES = (repo.POSTPROCESS_MODEL,)


class ExportOptionsError(ValueError):
    """Options that make no sense together (checked before any work is done)."""


@dataclass
class ExportOptions:
    checkpoint: Path
    format: str = "onnx"
    precision: str | None = None
    sparsity: bool = False
    max_batch: int = 64
    seq_len: int | None = None  # default: the variant's current max_seq_len, else min(384, model positions)
    max_windows: int | None = None  # default: the variant's current max_windows, else WindowingConfig's
    repository: Path = Path("model_repository")
    opset: int = DEFAULT_OPSET
    weight_storage: str = "fp32"
    calibration: Path | None = None
    eval_file: Path | None = None  # onnx-int8 default: the committed SQuAD dev slice
    no_eval: bool = False
    max_eval: int | None = None
    gpu_accelerator: str | None = None
    seq_buckets: tuple[int, ...] | None = None
    opt_batch: int | None = None
    workspace_gib: float | None = None
    lowercase: bool | None = None
    bert_config: Path | None = None
    vocab: Path | None = None
    model_name: str | None = None
    ensemble_name: str | None = None
    atol: float = 1e-3

    def resolved_precision(self) -> str:
        return self.precision or DEFAULT_PRECISION[self.format]

    def variant(self) -> repo.Variant:
        return repo.variant_for(self.format, self.model_name, self.ensemble_name, self.resolved_precision())

    @property
    def uses_trt_shapes(self) -> bool:
        return self.format == "tensorrt" or self.gpu_accelerator == "tensorrt"


@dataclass
class ExportResult:
    model_dir: Path
    config_path: Path
    model_file: Path
    preprocess_dir: Path
    ensemble_config: Path
    windowing: WindowingConfig
    reports: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def default_eval_file() -> Path | None:
    """The committed SQuAD v1.1 dev slice (package data, so installed copies have it too)."""
    from bertqa.squad import dev_slice_path

    path = dev_slice_path()
    return path if path.is_file() else None


# --------------------------------------------------------------------------------------------------
# Option checks


def check_options(o: ExportOptions) -> None:
    """Rejects combinations that would be silently ignored or cannot work."""
    _check_format_options(o)
    _check_data_options(o)
    _check_accelerator_options(o)
    _check_names(o)


def _check_format_options(o: ExportOptions) -> None:
    err = ExportOptionsError
    if o.format not in FORMATS:
        raise err(f"--format must be one of {', '.join(FORMATS)}, got {o.format!r}")
    precision = o.resolved_precision()
    allowed = {"onnx": ("fp32", "fp16"), "onnx-int8": ("int8",), "tensorrt": ("fp32", "fp16", "int8"),
               "openvino": ("fp32", "bf16", "int8")}[o.format]
    if precision not in allowed:
        raise err(f"--precision {precision} does not apply to --format {o.format} (use {' or '.join(allowed)})")
    if o.format == "onnx" and precision == "fp16" and o.gpu_accelerator != "tensorrt":
        raise err(
            "--format onnx --precision fp16 means FP16 compute in ONNX Runtime's TensorRT execution provider; "
            "add --gpu-accelerator tensorrt (for a smaller file with FP32 compute use --weight-storage fp16)"
        )
    if o.sparsity and o.format != "tensorrt":
        raise err("--sparsity only applies to --format tensorrt (TensorRT sparse-weight kernels)")
    if not isinstance(o.max_batch, int) or o.max_batch < 1:
        raise err(f"--max-batch must be a positive integer, got {o.max_batch}")
    if o.seq_len is not None and not 16 <= o.seq_len <= 4096:
        raise err(f"--seq-len must be within 16..4096, got {o.seq_len}")
    if o.max_windows is not None and o.max_windows < 1:
        raise err(f"--max-windows must be a positive integer, got {o.max_windows}")
    if o.weight_storage not in ("fp32", "fp16"):
        raise err(f"--weight-storage must be fp32 or fp16, got {o.weight_storage!r}")
    if o.weight_storage != "fp32" and o.format != "onnx":
        raise err("--weight-storage fp16 only applies to --format onnx (INT8 and TensorRT choose their own storage)")
    if o.opset != DEFAULT_OPSET and not 14 <= o.opset <= 21:
        raise err(f"--opset must be within 14..21 (Triton 24.10's ONNX Runtime 1.19 reads up to 21), got {o.opset}")


def _check_data_options(o: ExportOptions) -> None:
    err = ExportOptionsError
    precision = o.resolved_precision()
    if o.calibration is not None:
        if o.format == "onnx" or (o.format == "openvino" and precision != "int8"):
            raise err("--calibration applies to --format onnx-int8 (static Q/DQ), tensorrt --precision int8 "
                      "or openvino --precision int8")
        if o.format == "tensorrt" and precision != "int8":
            raise err(f"--calibration only applies to TensorRT --precision int8, not {precision}")
        if not Path(o.calibration).is_file():
            raise err(f"--calibration {o.calibration}: file not found")
    if o.format == "tensorrt" and precision == "int8" and o.calibration is None:
        raise err("TensorRT --precision int8 needs --calibration FILE (questions/contexts for Q/DQ calibration)")
    if o.eval_file is not None or o.no_eval or o.max_eval is not None:
        if o.format == "tensorrt":
            raise err("--eval-file/--no-eval/--max-eval apply to ONNX formats (the TensorRT build is validated "
                      "against PyTorch logits instead)")
        if o.eval_file is not None and o.no_eval:
            raise err("--eval-file and --no-eval contradict each other")
        if o.eval_file is not None and not Path(o.eval_file).is_file():
            raise err(f"--eval-file {o.eval_file}: file not found")


def _check_accelerator_options(o: ExportOptions) -> None:
    err = ExportOptionsError
    if o.gpu_accelerator is not None:
        if o.format == "openvino":
            raise err("--gpu-accelerator configures ONNX Runtime; --format openvino runs on CPU instances")
        if o.format == "tensorrt":
            raise err("--gpu-accelerator configures ONNX Runtime for ONNX formats; --format tensorrt is TensorRT itself")
        if o.gpu_accelerator not in ("cuda", "tensorrt"):
            raise err(f"--gpu-accelerator must be cuda or tensorrt, got {o.gpu_accelerator!r}")
        if o.format == "onnx-int8" and o.gpu_accelerator == "tensorrt" and o.calibration is None:
            raise err("dynamic INT8 (MatMulInteger) cannot run in TensorRT; add --calibration for a Q/DQ model "
                      "or use --gpu-accelerator cuda")
    if (o.seq_buckets is not None or o.opt_batch is not None) and not o.uses_trt_shapes:
        raise err("--seq-buckets/--opt-batch shape TensorRT profiles: use them with --format tensorrt "
                  "or --gpu-accelerator tensorrt")
    if o.workspace_gib is not None and not o.uses_trt_shapes:
        raise err("--workspace-gib applies to TensorRT builds (--format tensorrt or --gpu-accelerator tensorrt)")


def _check_names(o: ExportOptions) -> None:
    for name in (o.model_name, o.ensemble_name):
        if name is not None and (not name or "/" in name or name.startswith(".")):
            raise ExportOptionsError(f"invalid model name {name!r}")
    v = o.variant()
    names = (v.model_name, v.ensemble_name, v.preprocess_name)
    if len(set(names)) != 3 or set(names) & set(RESERVED_NAMES):
        raise ExportOptionsError(
            f"--model-name/--ensemble-name must give the variant's BERT model {v.model_name!r}, ensemble "
            f"{v.ensemble_name!r} and pre-processing {v.preprocess_name!r} distinct names, none of them "
            f"{', '.join(RESERVED_NAMES)} (the pipeline's shared model)"
        )
    for other in repo.VARIANTS.values():
        if other.format != o.format and v.model_name in (other.model_name, other.preprocess_name, other.ensemble_name):
            raise ExportOptionsError(f"--model-name {v.model_name!r} is the {other.format} variant's; "
                                     f"it must not replace the pipeline's other models")


# --------------------------------------------------------------------------------------------------
# Progress


class _Steps:
    """Rich spinner per slow step, with the elapsed time printed when it ends."""

    def __init__(self, console: Console | None):
        self.console = console

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.console is None:
            yield
            return
        with self.console.status(f"{title} ..."):
            yield
        self.console.print(f"[green]✓[/green] {title} ({time.perf_counter() - start:.1f} s)")

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False, markup=False)

    def warn(self, message: str) -> None:
        if self.console is not None:
            self.console.print(f"[bold red]WARNING:[/bold red] {message}", highlight=False)


# --------------------------------------------------------------------------------------------------
# The export


@dataclass
class Job:
    """Everything a format builder needs: the options, the loaded checkpoint and where to write."""

    options: ExportOptions
    variant: repo.Variant
    checkpoint: Checkpoint
    windowing: WindowingConfig
    tokenizer_file: Path  # staged
    model_file: Path  # staged, in the BERT model's version folder
    scratch: Path
    steps: _Steps
    reports: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profiles: list = field(default_factory=list)  # TensorRT shapes (TensorRT and ORT's TensorRT EP)

    @property
    def model(self):
        return self.checkpoint.model


def export_to_repository(options: ExportOptions, *, console: Console | None = None) -> ExportResult:
    check_options(options)
    steps = _Steps(console)
    if options.format == "tensorrt":
        from bertqa.export import tensorrt as trt_mod

        trt_mod.require_gpu()  # fail before any slow work
    with steps.step(f"loading checkpoint {options.checkpoint}"):
        checkpoint = load_checkpoint(options.checkpoint, lowercase=options.lowercase,
                                     bert_config=options.bert_config, vocab_file=options.vocab)
    for note in checkpoint.notes:
        steps.say(f"  {note}")
    variant = options.variant()
    windowing = variant_windowing(options, variant, int(checkpoint.model.config.max_position_embeddings))

    with repo.StagedExport(options.repository) as staged:
        job = Job(options, variant, checkpoint, windowing, staged.root / repo.TOKENIZER_FILE,
                  staged.version_dir(variant.model_name) / variant.model_file, staged.root / "scratch", steps,
                  notes=list(checkpoint.notes))
        job.scratch.mkdir()
        checkpoint.save_tokenizer(job.tokenizer_file)
        job.profiles = _trt_profiles(job)
        config_text = BUILDERS[options.format](job)
        _relabel_report_paths(job, staged.version)
        repo.write_model_folder(staged.folder(variant.model_name), config_text)
        repo.write_metadata(job.model_file.parent, _metadata(job))
        repo.stage_pipeline(staged, variant, windowing, job.tokenizer_file)
        # ---- swap in: nothing in the repository has changed before this point ----
        installed = staged.commit()
    steps.say(f"installed {variant.ensemble_name} ({variant.preprocess_name} -> {variant.model_name}) "
              f"in {options.repository}")
    model_dir = installed[variant.model_name]
    return ExportResult(model_dir, model_dir / "config.pbtxt", model_dir / "1" / variant.model_file,
                        installed[variant.preprocess_name], installed[variant.ensemble_name] / "config.pbtxt",
                        windowing, job.reports, job.notes)


def variant_windowing(o: ExportOptions, variant: repo.Variant, max_positions: int) -> WindowingConfig:
    """The variant's windowing: its current parameters when it has them, else the defaults fitted
    to ``--seq-len`` (or the model's positions); ``--max-windows`` overrides the limit."""
    current = _current_windowing(Path(o.repository), variant.preprocess_name)
    overrides = {"max_windows": o.max_windows} if o.max_windows is not None else {}
    if o.seq_len is None and current is not None and current.max_seq_len <= max_positions:
        return replace(current, **overrides)
    seq_len = o.seq_len or min(WindowingConfig.max_seq_len, max_positions)
    if seq_len > max_positions:
        raise ExportOptionsError(f"--seq-len {seq_len} exceeds the model's max_position_embeddings {max_positions}")
    try:
        return WindowingConfig.for_max_seq_len(seq_len, **overrides)
    except ValueError as err:
        raise ExportOptionsError(str(err)) from None


def _current_windowing(repository: Path, preprocess_name: str) -> WindowingConfig | None:
    from google.protobuf import json_format

    from bertqa.triton.params import PreprocessParameters, parse_parameters

    path = repository / preprocess_name / "config.pbtxt"
    if not path.is_file():
        return None
    config = repo.parse_config(path.read_text(encoding="utf-8"), str(path))
    as_dict = json_format.MessageToDict(config, preserving_proto_field_name=True)
    try:
        return parse_parameters(as_dict, PreprocessParameters).windowing()
    except ValueError as err:
        raise repo.RepositoryError(f"{path}: {err}") from None


def _trt_profiles(job: Job) -> list:
    o = job.options
    if not o.uses_trt_shapes:
        return []
    from bertqa.export import tensorrt as trt_mod

    seq_len = job.windowing.max_seq_len
    buckets = o.seq_buckets or job.windowing.seq_len_buckets
    if buckets[-1] < seq_len:
        raise ExportOptionsError(
            f"--seq-buckets {','.join(map(str, buckets))} end below the window length {seq_len}: "
            f"TensorRT would reject the longest windows"
        )
    return trt_mod.profile_shapes(o.max_batch, buckets, opt_batch=o.opt_batch,
                                  max_position_embeddings=int(job.model.config.max_position_embeddings))


def _relabel_report_paths(job: Job, version: int) -> None:
    """Staging paths mean nothing after the swap."""
    for report in job.reports.values():
        if isinstance(report, dict) and "path" in report:
            final = Path(report["path"])
            report["path"] = (f"{job.variant.model_name}/{version}/{final.name}"
                              if final == job.model_file else "(intermediate, not kept)")


def _metadata(job: Job) -> dict:
    o = job.options
    return {
        "checkpoint": str(Path(o.checkpoint).resolve()), "checkpoint_format": job.checkpoint.format,
        "format": o.format, "precision": o.resolved_precision(), "max_batch": o.max_batch,
        "windowing": asdict(job.windowing), "preprocess_model": job.variant.preprocess_name,
        "notes": job.notes, "reports": job.reports, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------------------------------
# Format builders: write job.model_file, return its config.pbtxt text


def _export_fp32(job: Job, target: Path, **kwargs) -> Path:
    o = job.options
    with job.steps.step("exporting ONNX and validating it against PyTorch"):
        report = export_onnx(job.model, job.tokenizer_file, target, opset=o.opset, atol=o.atol,
                             windowing=job.windowing, log=job.steps.say, **kwargs)
    job.reports["onnx" if target == job.model_file else "onnx_fp32"] = asdict(report)
    return target


def _onnx_config(job: Job) -> str:
    o = job.options
    inputs, outputs = repo.onnx_io(job.model_file)
    _check_io(inputs, outputs, job.model_file)
    extra = {}
    if o.gpu_accelerator == "tensorrt" and o.workspace_gib:
        extra["trt_workspace_bytes"] = int(o.workspace_gib * (1 << 30))
    text = repo.onnx_model_config(
        job.variant.model_name, inputs, outputs, max_batch_size=o.max_batch, gpu_accelerator=o.gpu_accelerator,
        trt_precision=o.resolved_precision().upper(), trt_profiles=job.profiles, **extra,
    )
    ort_session(job.model_file)  # the staged file loads and runs exactly as the server will load it
    return text


def build_onnx(job: Job) -> str:
    _export_fp32(job, job.model_file, weight_storage=job.options.weight_storage)
    if job.options.eval_file is not None:
        job.reports["eval"] = _evaluate(job, job.model_file, job.options.eval_file)
    return _onnx_config(job)


def build_onnx_int8(job: Job) -> str:
    from bertqa.export.quantize import compare_int8, quantize_int8

    o = job.options
    fp32_file = _export_fp32(job, job.scratch / "fp32.onnx")
    method = "static" if o.calibration else "dynamic"
    target = "tensorrt" if o.gpu_accelerator == "tensorrt" else "cpu"
    with job.steps.step(f"quantizing to INT8 ({method})"):
        quantize_int8(fp32_file, job.model_file, method=method, target=target, calibration_feeds=_calibration(job))
    eval_file = None if o.no_eval else (o.eval_file or default_eval_file())
    if eval_file is None and not o.no_eval:
        job.steps.say("no evaluation file (the SQuAD dev slice is missing): F1 not measured; pass --eval-file")
    with job.steps.step("comparing INT8 with FP32 (size, speed" + (", SQuAD F1)" if eval_file else ")")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # compare_int8 reports the F1 warning itself
            report = compare_int8(fp32_file, job.model_file, job.tokenizer_file, method=method, eval_file=eval_file,
                                  windowing=job.windowing, max_eval_questions=o.max_eval, log=None)
    for line in report.summary().splitlines():
        job.steps.say(f"  {line}")
    for message in report.warnings:
        job.steps.warn(message)
    job.reports["int8"] = {**asdict(report), "speedup": report.speedup, "f1_retained": report.f1_retained}
    return _onnx_config(job)


def build_tensorrt(job: Job) -> str:
    from bertqa.export import tensorrt as trt_mod

    o = job.options
    precision = o.resolved_precision()
    fp32_file = _export_fp32(job, job.scratch / "fp32.onnx")
    source = fp32_file
    if precision == "int8":
        from bertqa.export.quantize import quantize_int8

        source = job.scratch / "qdq.onnx"
        with job.steps.step("calibrating Q/DQ INT8 ONNX for TensorRT"):
            quantize_int8(fp32_file, source, method="static", target="tensorrt", calibration_feeds=_calibration(job))
    workspace = int((o.workspace_gib or 4) * (1 << 30))
    with trt_mod.TensorRTSession() as session:
        with job.steps.step(f"building the TensorRT engine ({precision})"):
            report, engine = session.build_engine(source, job.model_file, job.profiles, precision=precision,
                                                  sparsity=o.sparsity, workspace_bytes=workspace, log=job.steps.say)
        with job.steps.step("validating the engine against PyTorch"):
            _validate_engine(session, engine, job, report)
        inputs, outputs = trt_mod.engine_io(engine)
    job.steps.say(f"  engine vs PyTorch: max |diff| start {report.max_abs_diff_start:.3g}, "
                  f"end {report.max_abs_diff_end:.3g}")
    onnx_inputs, onnx_outputs = repo.onnx_io(fp32_file)
    if sorted((t.name, t.data_type) for t in inputs + outputs) != sorted(
            (t.name, t.data_type) for t in onnx_inputs + onnx_outputs):
        raise repo.RepositoryError(
            f"the engine's tensors {[(t.name, t.data_type) for t in inputs + outputs]} differ from the ONNX "
            f"model's {[(t.name, t.data_type) for t in onnx_inputs + onnx_outputs]}; qa_preprocess sends INT64 "
            f"(TensorRT >= 10 keeps INT64 inputs)"
        )
    job.reports["tensorrt"] = asdict(report)
    return repo.tensorrt_model_config(job.variant.model_name, inputs, outputs, job.profiles, max_batch_size=o.max_batch)


def build_openvino(job: Job) -> str:
    """OpenVINO IR of the validated FP32 ONNX (NNCF INT8 calibrated on real SQuAD questions)."""
    from bertqa.export.evaluation import read_examples
    from bertqa.export.onnx import torch_logits, validation_batches
    from bertqa.export.openvino import CALIBRATION_QUESTIONS, export_openvino, openvino_model_config, runtime_parameters
    from bertqa.export.quantize import calibration_batches
    from bertqa.squad import dev_slice_path

    o = job.options
    precision = o.resolved_precision()
    fp32_file = _export_fp32(job, job.scratch / "fp32.onnx")
    reference = [({n: getattr(b, n) for n in INPUT_NAMES}, torch_logits(job.model, b))
                 for b in validation_batches(job.tokenizer_file, None, job.windowing)]
    calibration = []
    if precision == "int8":  # real SQuAD questions: --calibration, else the committed dev slice
        examples = read_examples(o.calibration or dev_slice_path())
        spread = examples[:: max(1, len(examples) // CALIBRATION_QUESTIONS)]  # many articles, not the first one
        calibration = calibration_batches(job.tokenizer_file, spread, job.windowing, max_windows=CALIBRATION_QUESTIONS,
                                          batch_size=1)
    eval_examples = []
    if not o.no_eval:
        eval_examples = read_examples(o.eval_file or dev_slice_path(), require_answers=True)[: o.max_eval or None]
    parameters = runtime_parameters(precision)
    with job.steps.step(f"converting to OpenVINO IR ({precision}) and validating it"):
        report = export_openvino(fp32_file, job.model_file.parent, precision=precision, reference_batches=reference,
                                 tokenizer_file=job.tokenizer_file, windowing=job.windowing,
                                 calibration_feeds=calibration, eval_examples=eval_examples, atol=o.atol,
                                 parameters=parameters, log=job.steps.say)
    for line in report.summary().splitlines():
        job.steps.say(f"  {line}")
    job.reports["openvino"] = {**asdict(report), "f1_retained": report.f1_retained}
    inputs, outputs = repo.onnx_io(fp32_file)
    _check_io(inputs, outputs, fp32_file)
    return openvino_model_config(job.variant.model_name, inputs, outputs, parameters, max_batch_size=o.max_batch,
                                 warmup_lengths=tuple(job.windowing.seq_len_buckets))


BUILDERS: dict[str, Callable[[Job], str]] = {
    "onnx": build_onnx,
    "onnx-int8": build_onnx_int8,
    "tensorrt": build_tensorrt,
    "openvino": build_openvino,
}


def _calibration(job: Job):
    if job.options.calibration is None:
        return None
    from bertqa.export.evaluation import read_examples
    from bertqa.export.quantize import calibration_batches

    return calibration_batches(job.tokenizer_file, read_examples(job.options.calibration), job.windowing)


def _evaluate(job: Job, model_file: Path, eval_file: Path) -> dict:
    from bertqa.export.evaluation import evaluate_session, read_examples

    with job.steps.step(f"evaluating on {eval_file}"):
        examples = read_examples(eval_file, require_answers=True)[: job.options.max_eval or None]
        result = evaluate_session(ort_session(model_file), job.tokenizer_file, examples, windowing=job.windowing)
    job.steps.say(f"  SQuAD EM {result.exact_match:.2f} F1 {result.f1:.2f} on {len(examples)} questions")
    return {"file": str(eval_file), "exact_match": result.exact_match, "f1": result.f1}


def _check_io(inputs, outputs, path: Path) -> None:
    names_in = [s.name for s in inputs]
    names_out = [s.name for s in outputs]
    if sorted(names_in) != sorted(INPUT_NAMES) or sorted(names_out) != sorted(OUTPUT_NAMES):
        raise repo.RepositoryError(f"{path}: inputs {names_in} / outputs {names_out} are not the BERT QA tensors")


def _validate_engine(session, engine, job: Job, report) -> None:
    """Runs the validation windows through every profile that covers them; compares with PyTorch."""
    import numpy as np

    from bertqa.export.onnx import ExportValidationError, torch_logits, validation_batches

    precision = job.options.resolved_precision()
    diff_start = diff_end = 0.0
    agree = total = 0
    for batch in validation_batches(job.tokenizer_file, None, job.windowing):
        n, length = batch.input_ids.shape
        index = next((i for i, p in enumerate(job.profiles) if p.contains(min(n, p.max[0]), length)), None)
        if index is None:
            continue
        cap = job.profiles[index].max[0]
        ref_start, ref_end = torch_logits(job.model, batch)
        for lo in range(0, n, cap):
            out = session.run_engine(engine, index, {k: getattr(batch, k)[lo:lo + cap] for k in INPUT_NAMES})
            s, e = out["start_logits"], out["end_logits"]
            diff_start = max(diff_start, float(np.abs(s - ref_start[lo:lo + cap]).max()))
            diff_end = max(diff_end, float(np.abs(e - ref_end[lo:lo + cap]).max()))
            agree += int((s.argmax(1) == ref_start[lo:lo + cap].argmax(1)).sum())
            total += s.shape[0]
    report.max_abs_diff_start, report.max_abs_diff_end = diff_start, diff_end
    if precision in TRT_ATOL:
        if max(diff_start, diff_end) > TRT_ATOL[precision]:
            raise ExportValidationError(
                f"TensorRT {precision} engine differs from PyTorch by {max(diff_start, diff_end):.3g} "
                f"> {TRT_ATOL[precision]}; not installed"
            )
    elif total and agree / total < 0.9:
        raise ExportValidationError(f"TensorRT INT8 engine agrees with PyTorch on only {agree}/{total} start tokens")
