"""Checkpoints and model repositories for the benchmark.

* The demo checkpoint (``demo_model/``) and random-weight Hugging Face folders of other BERT shapes
  (the demo tokenizer, so every shape reads the same tokens).
* A temporary repository per shape: the committed configs, the FP32 ONNX model and the INT8 variant
  written by the project's exporter (``bertqa export`` = :func:`export_to_repository`), plus config
  variants served side by side by the same server (dynamic batching off, no length buckets,
  Triton's default instance count).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bertqa.server import DEFAULT_REPOSITORY, PROJECT_ROOT

DEMO_DIR = PROJECT_ROOT / "demo_model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
MODEL_FILES = ("*.onnx", "*.onnx.data", "*.plan", "tokenizer.json")


@dataclass(frozen=True)
class ShapeSpec:
    key: str
    title: str
    layers: int | None = None  # None: the demo checkpoint as it is
    hidden: int | None = None
    heads: int | None = None
    intermediate: int | None = None


SHAPES = {
    "demo": ShapeSpec("demo", "demo model (MiniLM-L6-H384, trained)"),
    "bert-base": ShapeSpec("bert-base", "BERT-base shape (random weights)", 12, 768, 12, 3072),
    "4l-288d": ShapeSpec("4l-288d", "4-layer/288-hidden distilled shape (random weights)", 4, 288, 12, 1152),
}


def random_checkpoint(spec: ShapeSpec, target: Path, tokenizer_dir: Path = DEMO_DIR, seed: int = 0) -> Path:
    """A Hugging Face BertForQuestionAnswering folder of the given shape with random weights."""
    import json

    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, intermediate_size=spec.intermediate, max_position_embeddings=512,
    )
    model = BertForQuestionAnswering(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, target / name)
    return target


def committed_configs(target: Path) -> Path:
    """The committed repository (configs and model.py shims) without exported model files."""
    shutil.copytree(DEFAULT_REPOSITORY, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*MODEL_FILES))
    return target


def export(checkpoint: Path, repository: Path, fmt: str, *, no_eval: bool, precision: str | None = None, console=None):
    from bertqa.export.pipeline import ExportOptions, export_to_repository

    options = ExportOptions(checkpoint=checkpoint, format=fmt, precision=precision, repository=repository,
                            no_eval=no_eval)
    return export_to_repository(options, console=console)


# --------------------------------------------------------------------------------------------------
# Config text edits


def _edited(text: str, edit) -> str:
    """Parses a config.pbtxt (Triton's ModelConfig protobuf), applies ``edit`` and prints it again."""
    from bertqa.export.repository import parse_config, render_config

    config = parse_config(text, "config.pbtxt")
    edit(config)
    return render_config(config, ["Edited by benchmarks/models.py for a side-by-side variant."])


def set_name(text: str, name: str) -> str:
    return _edited(text, lambda c: setattr(c, "name", name))


def without_dynamic_batching(text: str) -> str:
    return _edited(text, lambda c: c.ClearField("dynamic_batching"))


def with_instance_count(text: str, count: int | None) -> str:
    """``instance_group [ { count: N } ]`` (kind left to Triton); None removes it (Triton's default)."""
    def edit(config) -> None:
        config.ClearField("instance_group")
        if count is not None:
            config.instance_group.add(count=count)

    return _edited(text, edit)


def with_parameter(text: str, key: str, value: str) -> str:
    def edit(config) -> None:
        if key not in config.parameters:
            raise ValueError(f"parameter {key} not in config")
        config.parameters[key].string_value = value

    return _edited(text, edit)


def read_parameter(text: str, key: str) -> str | None:
    from bertqa.export.repository import parse_config

    config = parse_config(text, "config.pbtxt")
    return config.parameters[key].string_value if key in config.parameters else None


def clone_model(repository: Path, source: str, name: str, edit=lambda text: text) -> Path:
    """``<repository>/<name>``: a copy of model ``source`` (model files hard-linked) with an edited config."""
    src, dst = repository / source, repository / name
    if dst.exists():
        shutil.rmtree(dst)

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns("__pycache__"))
    config = dst / "config.pbtxt"
    text = config.read_text()
    config.unlink()  # a hard link to the source's config: write a new file, not through the link
    config.write_text(edit(set_name(text, name)))
    return dst


def clone_ensemble(repository: Path, source: str, name: str, steps: dict[str, str]) -> Path:
    """An ensemble like ``source`` whose models ``old -> new`` are swapped: its steps, and the BERT
    model its pre-processing step runs by BLS (parameter ``bert_model``; a copy of the step if needed)."""
    from bertqa.export.repository import parse_config

    steps = dict(steps)
    config = parse_config((repository / source / "config.pbtxt").read_text(), source)
    pre = config.ensemble_scheduling.step[0].model_name
    bert = read_parameter((repository / pre / "config.pbtxt").read_text(), "bert_model")
    if bert in steps:
        steps.setdefault(pre, f"{pre}_{name}")
        if not (repository / steps[pre]).is_dir():
            clone_model(repository, pre, steps[pre])
        target = repository / steps[pre] / "config.pbtxt"
        target.write_text(with_parameter(target.read_text(), "bert_model", steps[bert]))

    def edit(config) -> None:
        for step in config.ensemble_scheduling.step:
            step.model_name = steps.get(step.model_name, step.model_name)

    return clone_model(repository, source, name, lambda text: _edited(text, edit))


def tune_bert_config(path: Path, instances: int | None = 1, intra_op_threads: str | None = None) -> None:
    """Applies the tuned serving settings to a generated BERT config (see docs/BENCHMARKS.md)."""
    text = with_instance_count(path.read_text(), instances)
    if intra_op_threads is not None:
        text = with_parameter(text, "intra_op_thread_count", intra_op_threads)
    path.write_text(text)


FINE_BUCKETS = (128, 192, 256, 320, 384)
COARSE_BUCKETS = (128, 256, 384)


def add_variants(repository: Path, *, no_batching: bool = True, pad384: bool = True, untuned: bool = True,
                 fine_buckets: tuple[int, ...] | None = FINE_BUCKETS) -> dict[str, str]:
    """Variant ensembles of ``bert_qa`` in the same repository; returns {label: ensemble name}."""
    variants = {}
    if no_batching:
        for model in ("qa_preprocess", "bert_onnx", "qa_postprocess"):
            clone_model(repository, model, f"{model}_nobatch", without_dynamic_batching)
        clone_ensemble(repository, "bert_qa", "bert_qa_nobatch",
                       {m: f"{m}_nobatch" for m in ("qa_preprocess", "bert_onnx", "qa_postprocess")})
        variants["dynamic batching off"] = "bert_qa_nobatch"
    if pad384:
        max_seq = read_parameter((repository / "qa_preprocess" / "config.pbtxt").read_text(), "max_seq_len") or "384"
        clone_model(repository, "qa_preprocess", "qa_preprocess_pad", lambda t: with_parameter(t, "seq_len_buckets", max_seq))
        clone_ensemble(repository, "bert_qa", "bert_qa_pad", {"qa_preprocess": "qa_preprocess_pad"})
        variants[f"all windows padded to {max_seq}"] = "bert_qa_pad"
    committed = read_parameter((repository / "qa_preprocess" / "config.pbtxt").read_text(), "seq_len_buckets") or ""
    if fine_buckets and tuple(int(b) for b in committed.split(",") if b.strip()) == tuple(fine_buckets):
        fine_buckets = COARSE_BUCKETS  # the committed config already has these: compare with the coarse ones
    if fine_buckets:
        clone_model(repository, "qa_preprocess", "qa_preprocess_fine",
                    lambda t: with_parameter(t, "seq_len_buckets", ",".join(map(str, fine_buckets))))
        clone_ensemble(repository, "bert_qa", "bert_qa_fine", {"qa_preprocess": "qa_preprocess_fine"})
        variants[f"buckets {','.join(map(str, fine_buckets))}"] = "bert_qa_fine"
        (repository / "bert_qa_fine" / "ALT_BUCKETS").write_text(",".join(map(str, fine_buckets)))
    if untuned:
        # Triton's defaults: no instance_group (2 CPU instances),
        # intra_op_thread_count 0 (ONNX Runtime: one thread per physical core, in each instance).
        clone_model(repository, "bert_onnx", "bert_onnx_default",
                    lambda t: with_parameter(with_instance_count(t, None), "intra_op_thread_count", "0"))
        clone_ensemble(repository, "bert_qa", "bert_qa_default", {"bert_onnx": "bert_onnx_default"})
        variants["Triton default instances (untuned)"] = "bert_qa_default"
    return variants


def pad_variant(repository: Path, ensemble: str, name: str) -> str:
    """Ensemble ``name``: ``ensemble`` with every window padded to its pre-processing's max_seq_len (no buckets)."""
    from bertqa.export.repository import parse_config

    pre = parse_config((repository / ensemble / "config.pbtxt").read_text(), ensemble).ensemble_scheduling.step[0].model_name
    max_seq = read_parameter((repository / pre / "config.pbtxt").read_text(), "max_seq_len") or "384"
    clone_model(repository, pre, f"{pre}_pad", lambda t: with_parameter(t, "seq_len_buckets", max_seq))
    clone_ensemble(repository, ensemble, name, {pre: f"{pre}_pad"})
    return name
