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
import re
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


def export(checkpoint: Path, repository: Path, fmt: str, *, no_eval: bool, console=None):
    from bertqa.export.pipeline import ExportOptions, export_to_repository

    options = ExportOptions(checkpoint=checkpoint, format=fmt, repository=repository, no_eval=no_eval)
    return export_to_repository(options, console=console)


# --------------------------------------------------------------------------------------------------
# Config text edits


def set_name(text: str, name: str) -> str:
    return re.sub(r'^name:\s*"[^"]*"', f'name: "{name}"', text, count=1, flags=re.M)


def without_dynamic_batching(text: str) -> str:
    return re.sub(r"^dynamic_batching\s*\{[^}]*\}\s*\n", "", text, flags=re.M)


def with_instance_count(text: str, count: int | None) -> str:
    """``instance_group [ { count: N } ]`` (kind left to Triton); None removes it (Triton's default)."""
    text = re.sub(r"^instance_group\s*\[.*?\]\s*\n", "", text, flags=re.M | re.S)
    if count is None:
        return text
    return text.rstrip("\n") + f"\ninstance_group [ {{ count: {count} }} ]\n"


def with_parameter(text: str, key: str, value: str) -> str:
    pattern = re.compile(r'(\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{\s*string_value:\s*")[^"]*(")')
    if not pattern.search(text):
        raise ValueError(f"parameter {key} not in config")
    return pattern.sub(lambda m: m.group(1) + value + m.group(2), text)


def read_parameter(text: str, key: str) -> str | None:
    match = re.search(r'\{\s*key:\s*"' + re.escape(key) + r'"\s*value:\s*\{\s*string_value:\s*"([^"]*)"', text)
    return match.group(1) if match else None


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
    """An ensemble like ``source`` whose steps ``old -> new`` model names are swapped."""
    def edit(text: str) -> str:
        for old, new in steps.items():
            text = re.sub(r'model_name:\s*"' + re.escape(old) + '"', f'model_name: "{new}"', text)
        return text

    return clone_model(repository, source, name, edit)


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
