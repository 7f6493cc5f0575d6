"""Checkpoint -> validated model in the Triton repository (what `bertqa export` runs).

Order of work, so that a failure anywhere leaves the repository's current model untouched:
check the options -> (TensorRT: check for a GPU) -> load the checkpoint strictly -> stage the
model folder beside the repository -> export ONNX (validated against PyTorch) -> quantize /
build the engine (validated) -> generate config.pbtxt from the result -> swap the folder in ->
replace qa_preprocess's tokenizer.json -> write the variant's ensemble.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from rich.console import Console

from bertqa.export import repository as repo
from bertqa.export.checkpoints import Checkpoint, load_checkpoint
from bertqa.export.onnx import DEFAULT_OPSET, INPUT_NAMES, OUTPUT_NAMES, export_onnx, ort_session

FORMATS = ("onnx", "onnx-int8", "tensorrt", "openvino")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EVAL_FILE = PROJECT_ROOT / "tests" / "data" / "squad_sample.json"
DEFAULT_PRECISION = {"onnx": "fp32", "onnx-int8": "int8", "tensorrt": "fp16", "openvino": "fp32"}
# TensorRT validation tolerances against PyTorch FP32 logits.
TRT_ATOL = {"fp32": 1e-2, "fp16": 0.15}


class ExportOptionsError(ValueError):
    """Options that make no sense together (checked before any work is done)."""


@dataclass
class ExportOptions:
    checkpoint: Path
    format: str = "onnx"
    precision: str | None = None
    sparsity: bool = False
    max_batch: int = 64
    seq_len: int | None = None  # default: qa_preprocess's max_seq_len, else 384
    repository: Path = Path("model_repository")
    opset: int = DEFAULT_OPSET
    weight_storage: str = "fp32"
    calibration: Path | None = None
    eval_file: Path | None = None  # onnx-int8 default: tests/data/squad_sample.json when present
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


@dataclass
class ExportResult:
    model_dir: Path
    config_path: Path
    model_file: Path
    ensemble_config: Path | None
    tokenizer_changed: bool
    reports: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_options(o: ExportOptions) -> None:
    """Rejects combinations that would be silently ignored or cannot work."""
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
    if o.weight_storage not in ("fp32", "fp16"):
        raise err(f"--weight-storage must be fp32 or fp16, got {o.weight_storage!r}")
    if o.weight_storage != "fp32" and o.format != "onnx":
        raise err("--weight-storage fp16 only applies to --format onnx (INT8 and TensorRT choose their own storage)")
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
    trt_shapes = o.format == "tensorrt" or o.gpu_accelerator == "tensorrt"
    if (o.seq_buckets is not None or o.opt_batch is not None) and not trt_shapes:
        raise err("--seq-buckets/--opt-batch shape TensorRT profiles: use them with --format tensorrt "
                  "or --gpu-accelerator tensorrt")
    if o.workspace_gib is not None and not trt_shapes:
        raise err("--workspace-gib applies to TensorRT builds (--format tensorrt or --gpu-accelerator tensorrt)")
    if o.opset != DEFAULT_OPSET and not 14 <= o.opset <= 21:
        raise err(f"--opset must be within 14..21 (Triton 24.10's ONNX Runtime 1.19 reads up to 21), got {o.opset}")
    for name in (o.model_name, o.ensemble_name):
        if name is not None and (not name or "/" in name or name.startswith(".")):
            raise err(f"invalid model name {name!r}")
    variant = repo.variant_for(o.format, o.model_name, o.ensemble_name, precision)
    if variant.ensemble_name == repo.TEMPLATE_ENSEMBLE and variant.model_name != repo.TEMPLATE_BERT_MODEL:
        raise err(f"{repo.TEMPLATE_ENSEMBLE} is the committed template ensemble (it runs {repo.TEMPLATE_BERT_MODEL}); "
                  f"give --ensemble-name for a model named {variant.model_name!r}")
    if variant.model_name in (repo.TEMPLATE_ENSEMBLE, repo.TOKENIZER_MODEL, "qa_postprocess") or \
            variant.ensemble_name in (repo.TEMPLATE_BERT_MODEL, repo.TOKENIZER_MODEL, "qa_postprocess") and \
            variant.ensemble_name != repo.TEMPLATE_ENSEMBLE:
        raise err(f"--model-name/--ensemble-name must not replace the pipeline's other models "
                  f"({variant.model_name!r}, {variant.ensemble_name!r})")


# --------------------------------------------------------------------------------------------------


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


def _repository_seq_settings(repository: Path) -> tuple[int | None, tuple[int, ...] | None, int | None]:
    """qa_preprocess's max_seq_len, seq_len_buckets and max_windows (None where absent)."""
    max_seq = repo.read_parameter(repository, repo.TOKENIZER_MODEL, "max_seq_len")
    buckets = repo.read_parameter(repository, repo.TOKENIZER_MODEL, "seq_len_buckets")
    windows = repo.read_parameter(repository, repo.TOKENIZER_MODEL, "max_windows")
    return (
        int(max_seq) if max_seq else None,
        tuple(int(b) for b in buckets.split(",")) if buckets else None,
        int(windows) if windows else None,
    )


def export_to_repository(options: ExportOptions, *, console: Console | None = None) -> ExportResult:
    from bertqa.export import tensorrt as trt_mod

    o = options
    check_options(o)
    steps = _Steps(console)
    repository = Path(o.repository)
    if not repository.is_dir():
        raise repo.RepositoryError(f"{repository}: model repository not found")
    precision = o.resolved_precision()
    variant = repo.variant_for(o.format, o.model_name, o.ensemble_name, precision)
    if o.format == "tensorrt":
        trt_mod.require_gpu()  # fail before any slow work

    pre_seq, pre_buckets, pre_windows = _repository_seq_settings(repository)
    seq_len = o.seq_len or pre_seq or 384
    notes: list[str] = []
    uses_trt_shapes = o.format == "tensorrt" or o.gpu_accelerator == "tensorrt"
    if uses_trt_shapes and pre_seq is not None and seq_len < pre_seq:
        raise ExportOptionsError(
            f"--seq-len {seq_len} is below qa_preprocess's max_seq_len {pre_seq}: TensorRT would reject its windows"
        )
    if pre_windows is not None and pre_windows > o.max_batch:
        notes.append(
            f"qa_preprocess's max_windows is {pre_windows} > --max-batch {o.max_batch}: requests needing more than "
            f"{o.max_batch} windows will fail in the {variant.ensemble_name} ensemble"
        )
    # Template ensemble must exist before anything is staged.
    repo.template_ensemble_text(repository)

    with steps.step(f"loading checkpoint {o.checkpoint}"):
        checkpoint: Checkpoint = load_checkpoint(
            o.checkpoint, lowercase=o.lowercase, bert_config=o.bert_config, vocab_file=o.vocab
        )
    model = checkpoint.model
    max_pos = int(model.config.max_position_embeddings)
    if seq_len > max_pos:
        raise ExportOptionsError(f"--seq-len {seq_len} exceeds the model's max_position_embeddings {max_pos}")
    for note in checkpoint.notes:
        steps.say(f"  {note}")
    notes += checkpoint.notes

    profiles = []
    if uses_trt_shapes:
        buckets = o.seq_buckets or tuple(b for b in (pre_buckets or trt_mod.DEFAULT_BUCKETS) if b < seq_len) + (seq_len,)
        if buckets[-1] < seq_len:
            raise ExportOptionsError(
                f"--seq-buckets {','.join(map(str, buckets))} end below the window length {seq_len}: "
                f"TensorRT would reject the longest windows"
            )
        profiles = trt_mod.profile_shapes(o.max_batch, buckets, opt_batch=o.opt_batch, max_position_embeddings=max_pos)

    reports: dict = {}
    with repo.StagedModel(repository, variant.model_name) as staged:
        scratch = staged.root / "scratch"
        scratch.mkdir()
        tokenizer_file = checkpoint.save_tokenizer(staged.root / "tokenizer.json")
        model_file = staged.version_dir / variant.model_file
        log = steps.say

        if o.format == "onnx":
            with steps.step("exporting ONNX and validating it against PyTorch"):
                report = export_onnx(model, tokenizer_file, model_file, opset=o.opset, atol=o.atol,
                                     weight_storage=o.weight_storage, max_seq_len=seq_len, log=log)
            reports["onnx"] = asdict(report)
        else:
            fp32_file = scratch / "fp32.onnx"
            with steps.step("exporting FP32 ONNX and validating it against PyTorch"):
                report = export_onnx(model, tokenizer_file, fp32_file, opset=o.opset, atol=o.atol,
                                     max_seq_len=seq_len, log=log)
            reports["onnx_fp32"] = asdict(report)

        calibration_feeds = None
        if o.calibration is not None:
            from bertqa.export.evaluation import read_examples, serving_windowing
            from bertqa.export.quantize import calibration_batches

            examples = read_examples(o.calibration)
            calibration_feeds = calibration_batches(tokenizer_file, examples, serving_windowing(seq_len))

        if o.format == "onnx-int8":
            from bertqa.export.quantize import compare_int8, quantize_int8

            method = "static" if calibration_feeds else "dynamic"
            target = "tensorrt" if o.gpu_accelerator == "tensorrt" else "cpu"
            with steps.step(f"quantizing to INT8 ({method})"):
                quantize_int8(fp32_file, model_file, method=method, target=target, calibration_feeds=calibration_feeds)
            eval_file = None if o.no_eval else (o.eval_file or (DEFAULT_EVAL_FILE if DEFAULT_EVAL_FILE.is_file() else None))
            if eval_file is None and not o.no_eval:
                steps.say(f"no evaluation file ({DEFAULT_EVAL_FILE} is absent): F1 not measured; pass --eval-file")
            with steps.step("comparing INT8 with FP32 (size, speed" + (", SQuAD F1)" if eval_file else ")")):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # compare_int8 reports the F1 warning itself
                    int8_report = compare_int8(fp32_file, model_file, tokenizer_file, method=method,
                                               eval_file=eval_file, windowing=_windowing(seq_len),
                                               max_eval_questions=o.max_eval, log=None)
            for line in int8_report.summary().splitlines():
                steps.say(f"  {line}")
            for message in int8_report.warnings:
                if console is not None:
                    console.print(f"[bold red]WARNING:[/bold red] {message}", highlight=False)
            reports["int8"] = {**asdict(int8_report), "speedup": int8_report.speedup,
                               "f1_retained": int8_report.f1_retained}
        elif o.format == "onnx" and (o.eval_file is not None):
            from bertqa.export.evaluation import evaluate_session, read_examples

            with steps.step(f"evaluating on {o.eval_file}"):
                examples = read_examples(o.eval_file, require_answers=True)[: o.max_eval or None]
                result = evaluate_session(ort_session(model_file), tokenizer_file, examples, windowing=_windowing(seq_len))
            steps.say(f"  SQuAD EM {result.exact_match:.2f} F1 {result.f1:.2f} on {len(examples)} questions")
            reports["eval"] = {"file": str(o.eval_file), "exact_match": result.exact_match, "f1": result.f1}

        if o.format == "openvino":
            with steps.step(f"converting to OpenVINO IR ({precision}) and validating it"):
                ov_report, config_text = _export_openvino(o, model, fp32_file, staged.version_dir, tokenizer_file,
                                                          seq_len, variant.model_name, precision, log)
            for line in ov_report.summary().splitlines():
                steps.say(f"  {line}")
            reports["openvino"] = {**asdict(ov_report), "f1_retained": ov_report.f1_retained}
        elif o.format == "tensorrt":
            source = fp32_file
            if precision == "int8":
                from bertqa.export.quantize import quantize_int8

                source = scratch / "qdq.onnx"
                with steps.step("calibrating Q/DQ INT8 ONNX for TensorRT"):
                    quantize_int8(fp32_file, source, method="static", target="tensorrt",
                                  calibration_feeds=calibration_feeds)
            workspace = int((o.workspace_gib or 4) * (1 << 30))
            with steps.step(f"building the TensorRT engine ({precision})"):
                trt_report, engine = trt_mod.build_engine(source, model_file, profiles, precision=precision,
                                                          sparsity=o.sparsity, workspace_bytes=workspace, log=log)
            with steps.step("validating the engine against PyTorch"):
                _validate_engine(engine, model, tokenizer_file, profiles, precision, trt_report, seq_len)
            steps.say(f"  engine vs PyTorch: max |diff| start {trt_report.max_abs_diff_start:.3g}, "
                      f"end {trt_report.max_abs_diff_end:.3g}")
            inputs, outputs = trt_mod.engine_io(engine)
            onnx_inputs, onnx_outputs = repo.onnx_io(fp32_file)
            if sorted((t.name, t.data_type) for t in inputs + outputs) != sorted(
                    (t.name, t.data_type) for t in onnx_inputs + onnx_outputs):
                raise repo.RepositoryError(
                    f"the engine's tensors {[(t.name, t.data_type) for t in inputs + outputs]} differ from the ONNX "
                    f"model's {[(t.name, t.data_type) for t in onnx_inputs + onnx_outputs]}; qa_preprocess sends INT64 "
                    f"(TensorRT >= 10 keeps INT64 inputs)"
                )
            config_text = repo.tensorrt_model_config(variant.model_name, inputs, outputs, profiles,
                                                     max_batch_size=o.max_batch)
            reports["tensorrt"] = asdict(trt_report)
        elif o.format != "openvino":
            inputs, outputs = repo.onnx_io(model_file)
            _check_io(inputs, outputs, model_file)
            trt_precision = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}[precision]
            config_kwargs = {}
            if o.gpu_accelerator == "tensorrt" and o.workspace_gib:
                config_kwargs["trt_workspace_bytes"] = int(o.workspace_gib * (1 << 30))
            config_text = repo.onnx_model_config(
                variant.model_name, inputs, outputs, max_batch_size=o.max_batch,
                gpu_accelerator=o.gpu_accelerator, trt_precision=trt_precision, trt_profiles=profiles, **config_kwargs,
            )
            # The staged file loads and runs exactly as the server will load it.
            ort_session(model_file)

        for report in reports.values():  # staging paths mean nothing after the swap
            if isinstance(report, dict) and "path" in report:
                final = Path(report["path"])
                report["path"] = (f"{variant.model_name}/{staged.version}/{final.name}"
                                  if final == model_file else "(intermediate, not kept)")
        staged.write_config(config_text)
        tokenizer_sha = repo.sha256_file(tokenizer_file)
        repo.write_metadata(staged.version_dir, {
            "checkpoint": str(Path(o.checkpoint).resolve()), "checkpoint_format": checkpoint.format,
            "format": o.format, "precision": precision, "tokenizer_sha256": tokenizer_sha,
            "max_batch": o.max_batch, "seq_len": seq_len, "notes": notes, "reports": reports,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        for path in scratch.iterdir():
            path.unlink()
        # ---- swap in: nothing in the repository has changed before this point ----
        model_dir = staged.commit()
        changed = repo.install_tokenizer(repository, tokenizer_file)
    stale = repo.other_models_with_other_tokenizer(repository, tokenizer_sha, exclude=variant.model_name)
    if changed and stale:
        message = (f"qa_preprocess/1/tokenizer.json now holds this checkpoint's vocabulary, but {', '.join(stale)} "
                   f"were exported from another one: re-export them or their answers will be wrong")
        notes.append(message)
        if console is not None:
            console.print(f"[bold red]WARNING:[/bold red] {message}", highlight=False)
    ensemble = repo.install_ensemble(repository, variant)
    result = ExportResult(model_dir, model_dir / "config.pbtxt", model_dir / "1" / variant.model_file,
                          ensemble, changed, reports, notes)
    steps.say(f"installed {variant.model_name} in {repository}"
              + (f" (ensemble {variant.ensemble_name})" if variant.ensemble_name else ""))
    return result


def _windowing(seq_len: int):
    from bertqa.export.evaluation import serving_windowing

    return serving_windowing(seq_len)


def _export_openvino(o: ExportOptions, model, fp32_onnx: Path, version_dir: Path, tokenizer_file: Path, seq_len: int,
                     model_name: str, precision: str, log):
    """OpenVINO IR of the validated FP32 ONNX into ``version_dir``; (report, config text)."""
    from bertqa.export.evaluation import read_examples
    from bertqa.export.onnx import torch_logits, validation_batches, validation_windowing
    from bertqa.export.openvino import export_openvino, openvino_model_config, runtime_parameters
    from bertqa.export.quantize import calibration_batches
    from bertqa.squad import dev_slice_path

    windowing = _windowing(seq_len)
    batches = validation_batches(tokenizer_file, None, validation_windowing(int(model.config.max_position_embeddings), seq_len))
    reference = [({n: getattr(b, n) for n in INPUT_NAMES}, torch_logits(model, b)) for b in batches]
    calibration = []
    if precision == "int8":  # real SQuAD questions: --calibration, else the committed dev slice
        examples = read_examples(o.calibration or dev_slice_path())
        calibration = calibration_batches(tokenizer_file, examples, windowing, max_windows=128, batch_size=1)
    eval_examples = []
    if not o.no_eval:
        eval_examples = read_examples(o.eval_file or dev_slice_path(), require_answers=True)[: o.max_eval or None]
    parameters = runtime_parameters(precision)
    report = export_openvino(fp32_onnx, version_dir, precision=precision, reference_batches=reference,
                             tokenizer_file=tokenizer_file, windowing=windowing, calibration_feeds=calibration,
                             eval_examples=eval_examples, atol=o.atol, parameters=parameters, log=log)
    inputs, outputs = repo.onnx_io(fp32_onnx)
    _check_io(inputs, outputs, fp32_onnx)
    config_text = openvino_model_config(model_name, inputs, outputs, parameters, max_batch_size=o.max_batch)
    repo.check_config_text(config_text, model_name)
    return report, config_text


def _check_io(inputs, outputs, path: Path) -> None:
    names_in = [s.name for s in inputs]
    names_out = [s.name for s in outputs]
    if sorted(names_in) != sorted(INPUT_NAMES) or sorted(names_out) != sorted(OUTPUT_NAMES):
        raise repo.RepositoryError(f"{path}: inputs {names_in} / outputs {names_out} are not the BERT QA tensors")


def _validate_engine(engine, model, tokenizer_file, profiles, precision, report, seq_len) -> None:
    """Runs the validation windows through every profile that covers them; compares with PyTorch."""
    import numpy as np

    from bertqa.export import tensorrt as trt_mod
    from bertqa.export.onnx import ExportValidationError, torch_logits, validation_batches, validation_windowing

    batches = validation_batches(tokenizer_file, None, validation_windowing(int(model.config.max_position_embeddings), seq_len))
    diff_start = diff_end = 0.0
    agree = total = 0
    for batch in batches:
        n, length = batch.input_ids.shape
        index = next((i for i, p in enumerate(profiles) if p.contains(min(n, p.max[0]), length)), None)
        if index is None:
            continue
        cap = profiles[index].max[0]
        ref_start, ref_end = torch_logits(model, batch)
        for lo in range(0, n, cap):
            feeds = {k: getattr(batch, k)[lo:lo + cap] for k in INPUT_NAMES}
            out = trt_mod.run_engine(engine, index, feeds)
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
