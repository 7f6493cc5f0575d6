"""Export a PyTorch ``BertForQuestionAnswering`` to ONNX, validated against PyTorch on real windows.

The exported graph has the tensor names the model repository expects::

    input_ids, attention_mask, token_type_ids  INT64 [batch, sequence]
    start_logits, end_logits                   FP32  [batch, sequence]

Triton 24.10 bundles ONNX Runtime 1.19, so the file is kept at opset <= 21 and IR version <= 10.
Nothing is written to ``output_path`` unless ONNX Runtime reproduces PyTorch's logits within
``atol`` on tokenized question/context windows (batches of several windows and several sequence
lengths); the file is then written atomically (``bertqa.files.replacing``).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from bertqa.files import replacing
from bertqa.text import QAWindower, Windows, WindowingConfig, load_tokenizer

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("start_logits", "end_logits")
DEFAULT_OPSET = 17
# ONNX Runtime 1.19 (Triton 24.10) reads IR version <= 10 and opsets <= 21.
MAX_OPSET = 21
MAX_IR_VERSION = 10
WEIGHT_STORAGES = ("fp32", "fp16")

_LONG_CONTEXT = " ".join(
    f"In {1900 + 7 * i}, the {name} expedition reached the {place} after {3 + i} weeks at sea, "
    f"carrying {120 + 13 * i} crates of supplies and a crew of {40 + i}."
    for i, (name, place) in enumerate(
        [
            ("Northern", "Svalbard coast"), ("Aurora", "Ross Ice Shelf"), ("Endurance", "Weddell Sea"),
            ("Fram", "Bay of Whales"), ("Discovery", "McMurdo Sound"), ("Belgica", "Gerlache Strait"),
            ("Terra Nova", "Cape Evans"), ("Nimrod", "Cape Royds"), ("Gauss", "Kaiser Wilhelm II Land"),
            ("Pourquoi-Pas", "Marguerite Bay"), ("Scotia", "Coats Land"), ("Quest", "South Georgia"),
            ("Southern Cross", "Cape Adare"), ("Antarctic", "Snow Hill Island"), ("Kainan Maru", "Bay of Whales"),
            ("Deutschland", "Vahsel Bay"), ("Morning", "Hut Point"), ("Jason", "Larsen Ice Shelf"),
        ]
    )
)

#: (question, context) pairs used when the caller gives none: short single-window pairs, one
#: non-ASCII pair and one context long enough for several windows at max_seq_len 384.
DEFAULT_SAMPLE_PAIRS: tuple[tuple[str, str], ...] = (
    (
        "What is the capital of France?",
        "Paris is the capital and most populous city of France, with an estimated population of "
        "2,102,650 residents in January 2023.",
    ),
    (
        "Who wrote the theory of general relativity?",
        "Albert Einstein published the theory of general relativity in 1915. It describes gravity "
        "as a geometric property of space and time.",
    ),
    (
        "Wann wurde die Universität gegründet?",
        "Die Universität Zürich wurde 1833 gegründet; heute studieren dort über 28 000 Menschen. "
        "Ihr Hauptgebäude steht über der Altstadt — nahe der ETH.",
    ),
    ("How many crates did the Quest expedition carry?", _LONG_CONTEXT),
)


class ExportValidationError(RuntimeError):
    """The exported model does not reproduce the reference outputs; nothing was written."""


@dataclass
class OnnxExportReport:
    path: Path
    size_bytes: int
    max_abs_diff_start: float
    max_abs_diff_end: float
    opset: int
    ir_version: int


# --------------------------------------------------------------------------------------------------
# Validation inputs


def validation_windowing(max_position_embeddings: int, max_seq_len: int = 384) -> WindowingConfig:
    """The serving windowing fitted to the model's positions (``WindowingConfig.for_max_seq_len``)."""
    return WindowingConfig.for_max_seq_len(min(max_seq_len, int(max_position_embeddings)))


def validation_batches(
    tokenizer_file: str | Path,
    sample_pairs: Sequence[tuple[str, str]] | None,
    windowing: WindowingConfig,
) -> list[Windows]:
    """Windows of the sample pairs, grouped into batches of equal sequence length.

    Each pair is windowed on its own (so short pairs get short buckets); windows of equal length
    are then stacked, giving batches that vary in both batch size and sequence length.
    """
    pairs = list(DEFAULT_SAMPLE_PAIRS if sample_pairs is None else sample_pairs)
    if not pairs:
        raise ValueError("sample_pairs is empty; give at least one (question, context) pair")
    windower = QAWindower(load_tokenizer(tokenizer_file), windowing)
    by_length: dict[int, list[Windows]] = {}
    for question, context in pairs:
        w = windower.windows([question], [context])
        by_length.setdefault(w.input_ids.shape[1], []).append(w)
    batches = []
    for length in sorted(by_length):
        group = by_length[length]
        batches.append(
            Windows(
                *(np.concatenate([getattr(w, f) for w in group]) for f in
                  ("input_ids", "attention_mask", "token_type_ids", "offsets", "pair_index"))
            )
        )
    return batches


def torch_logits(model, batch: Windows) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.inference_mode():
        out = model(
            input_ids=torch.from_numpy(batch.input_ids),
            attention_mask=torch.from_numpy(batch.attention_mask),
            token_type_ids=torch.from_numpy(batch.token_type_ids),
        )
    return out.start_logits.float().numpy(), out.end_logits.float().numpy()


def ort_session(path: str | Path, *, threads: int = 1, optimized_model_path: str | None = None,
                level: str = "all"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(session, batch: Windows) -> tuple[np.ndarray, np.ndarray]:
    feeds = {name: getattr(batch, name) for name in INPUT_NAMES}
    start, end = session.run(list(OUTPUT_NAMES), feeds)
    return start, end


def compare_with_reference(
    session, references: Iterable[tuple[Windows, tuple[np.ndarray, np.ndarray]]]
) -> tuple[float, float]:
    """Max abs difference of start/end logits between an ORT session and reference outputs."""
    diff_start = diff_end = 0.0
    for batch, (ref_start, ref_end) in references:
        start, end = ort_logits(session, batch)
        if start.shape != ref_start.shape or end.shape != ref_end.shape:
            raise ExportValidationError(
                f"ONNX outputs {start.shape}/{end.shape} do not match PyTorch {ref_start.shape}/{ref_end.shape}"
            )
        diff_start = max(diff_start, float(np.max(np.abs(start - ref_start))))
        diff_end = max(diff_end, float(np.max(np.abs(end - ref_end))))
    return diff_start, diff_end


# --------------------------------------------------------------------------------------------------
# Graph surgery


def check_opset(opset: int) -> None:
    if not isinstance(opset, int) or not 14 <= opset <= MAX_OPSET:
        raise ValueError(
            f"opset {opset} is not supported: use 14..{MAX_OPSET} (Triton 24.10 bundles ONNX Runtime 1.19, "
            f"which reads opsets up to {MAX_OPSET})"
        )


def cap_ir_version(model_proto) -> None:
    if model_proto.ir_version > MAX_IR_VERSION:
        model_proto.ir_version = MAX_IR_VERSION


def model_opset(model_proto) -> int:
    return next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def store_weights_fp16(model_proto) -> int:
    """Stores every FP32 initializer as FP16 + a Cast-to-FP32 node; the computation stays FP32.

    Only done when lossless: every value must survive FP32 -> FP16 -> FP32 exactly, else ValueError
    (nothing is changed). Returns the number of converted initializers.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model_proto.graph
    graph_inputs = {i.name for i in graph.input}
    candidates = []
    lossy = []
    for index, init in enumerate(graph.initializer):
        if init.data_type != TensorProto.FLOAT or init.name in graph_inputs:
            continue
        array = numpy_helper.to_array(init)
        with np.errstate(over="ignore"):
            half = array.astype(np.float16)
        back = half.astype(np.float32)
        if not np.array_equal(back, array, equal_nan=True):
            finite = np.isfinite(back)
            err = float(np.max(np.abs(back[finite] - array[finite]))) if finite.any() else float("inf")
            lossy.append((init.name, array.shape, err, int(np.sum(back != array))))
        candidates.append((index, init.name, half))
    if lossy:
        shown = "; ".join(f"{n} {tuple(s)}: {c} values differ, max error {e:.3g}" for n, s, e, c in lossy[:5])
        raise ValueError(
            f"weight_storage='fp16' would change {len(lossy)} of {len(candidates)} weight tensors "
            f"(not exactly representable in FP16): {shown}"
            + (" ..." if len(lossy) > 5 else "")
            + ". Use weight_storage='fp32' (or round the weights to FP16 before exporting)."
        )
    used = {n for node in graph.node for n in node.output} | {i.name for i in graph.initializer}
    casts = []
    for index, name, half in candidates:
        new_name = name + "__fp16"
        while new_name in used:
            new_name += "_"
        used.add(new_name)
        graph.initializer[index].CopyFrom(numpy_helper.from_array(half, new_name))
        casts.append(helper.make_node("Cast", [new_name], [name], to=TensorProto.FLOAT,
                                      name=f"{new_name}/CastToFloat"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(casts)


# --------------------------------------------------------------------------------------------------
# Export


def torch_to_onnx_proto(model, opset: int, sample: Windows, scratch: Path):
    """torch.onnx.export (TorchScript exporter, dynamic batch and sequence axes) -> ModelProto."""
    import onnx
    import torch

    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES + OUTPUT_NAMES}
    args = tuple(torch.from_numpy(getattr(sample, name)) for name in INPUT_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                model, args, str(scratch), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
    return onnx.load(str(scratch))


def _check_export_arguments(model, tokenizer, tokenizer_file, opset: int, weight_storage: str) -> None:
    check_opset(opset)
    if weight_storage not in WEIGHT_STORAGES:
        raise ValueError(f"weight_storage must be one of {WEIGHT_STORAGES}, got {weight_storage!r}")
    if getattr(model, "training", False):
        raise ValueError("model is in training mode (dropout on); call model.eval() before exporting")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and tokenizer.get_vocab_size() > vocab:
        raise ValueError(
            f"{tokenizer_file}: tokenizer has {tokenizer.get_vocab_size()} tokens but the model's "
            f"embeddings hold only {vocab}; they do not belong together"
        )


def _check_close(what: str, diff_start: float, diff_end: float, atol: float, consequence: str) -> None:
    if not (diff_start <= atol and diff_end <= atol):
        raise ExportValidationError(
            f"{what} differs from PyTorch: max |diff| start {diff_start:.3g}, end {diff_end:.3g} > atol {atol:g}; "
            f"{consequence}"
        )


def _final_proto(model, opset: int, sample: Windows, scratch: Path, weight_storage: str, say):
    """The exported graph with the IR version capped and (optionally) FP16 weight storage, checked."""
    import onnx

    try:
        proto = torch_to_onnx_proto(model, opset, sample, scratch)
    finally:
        scratch.unlink(missing_ok=True)
    cap_ir_version(proto)
    if weight_storage == "fp16":
        converted = store_weights_fp16(proto)
        say(f"stored {converted} weight tensors as FP16 (lossless) + Cast to FP32")
    onnx.checker.check_model(proto)
    return proto


def export_onnx(
    model,
    tokenizer_file: str | Path,
    output_path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    sample_pairs: Sequence[tuple[str, str]] | None = None,
    atol: float = 1e-3,
    weight_storage: str = "fp32",
    windowing: WindowingConfig | None = None,
    optimized_output_path: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> OnnxExportReport:
    """Exports ``model`` (eval-mode FP32 ``BertForQuestionAnswering``) to ``output_path``.

    - ``sample_pairs``: (question, context) pairs tokenized with ``tokenizer_file`` through
      ``QAWindower`` for validation (default: a built-in handful, including a multi-window context).
    - ``windowing``: how the validation windows are cut (default: the serving windowing fitted to
      the model's positions); the exporter passes the variant's own.
    - ``weight_storage="fp16"``: store weights as FP16 + Cast nodes (half the file), only when that
      is lossless; compute stays FP32.
    - ``optimized_output_path``: also write an ONNX Runtime offline-optimized copy (fused for the
      CPU execution provider of *this* ORT version; not portable, never the default file).

    The final model (after IR capping and FP16 storage) must match PyTorch within ``atol`` on every
    window, else ``ExportValidationError`` and nothing is written.
    """
    import onnx

    say = log or (lambda message: None)
    _check_export_arguments(model, load_tokenizer(tokenizer_file), tokenizer_file, opset, weight_storage)
    output_path = Path(output_path)
    windowing = windowing or validation_windowing(model.config.max_position_embeddings)
    batches = validation_batches(tokenizer_file, sample_pairs, windowing)
    references = [(batch, torch_logits(model, batch)) for batch in batches]

    with contextlib.ExitStack() as files:
        final_tmp = files.enter_context(replacing(output_path))
        proto = _final_proto(model, opset, batches[0], final_tmp.with_suffix(".scratch"), weight_storage, say)
        onnx.save(proto, str(final_tmp))
        del proto
        diff_start, diff_end = compare_with_reference(ort_session(final_tmp), references)
        shapes = ", ".join(f"{b.num_windows}x{b.input_ids.shape[1]}" for b in batches)
        say(f"ONNX Runtime vs PyTorch on {sum(b.num_windows for b in batches)} windows ({shapes}): max |diff| "
            f"start_logits {diff_start:.3g}, end_logits {diff_end:.3g} (atol {atol:g})")
        _check_close("exported ONNX", diff_start, diff_end, atol, f"{output_path} was not written")
        if optimized_output_path is not None:
            optimized_tmp = files.enter_context(replacing(Path(optimized_output_path)))
            ort_session(final_tmp, optimized_model_path=str(optimized_tmp), level="extended")
            o_start, o_end = compare_with_reference(ort_session(optimized_tmp), references)
            say(f"ORT-optimized copy vs PyTorch: max |diff| start {o_start:.3g}, end {o_end:.3g}")
            _check_close("ORT-optimized model", o_start, o_end, atol, "nothing was written")
        final = onnx.load(str(final_tmp), load_external_data=False)
        opset_written, ir_version = model_opset(final), final.ir_version
    # Leaving the block replaced output_path (and the optimized copy) atomically.
    report = OnnxExportReport(output_path, output_path.stat().st_size, diff_start, diff_end, opset_written, ir_version)
    say(f"wrote {output_path} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset}, IR {report.ir_version})")
    return report
