"""Loading fine-tuned BERT SQuAD checkpoints into ``transformers.BertForQuestionAnswering``.

Two layouts are accepted:

* a Hugging Face folder: ``config.json`` (BERT, ``BertForQuestionAnswering``), weights in
  ``model.safetensors`` / ``pytorch_model.bin`` (or sharded with an ``*.index.json``), and the
  vocabulary as ``tokenizer.json`` or ``vocab.txt`` (+ ``tokenizer_config.json``);
* an NVIDIA DeepLearningExamples (DLE) PyTorch SQuAD checkpoint: a ``.pt`` file whose dict holds
  the state dict under ``"model"`` (or is the state dict), ``bert_config.json`` and ``vocab.txt``
  (beside the ``.pt`` or given explicitly). DLE names follow its ``modeling.py``
  (``intermediate.dense_act``, ``pooler.dense_act``), may carry ``module.`` prefixes, and the word
  embeddings are padded to a multiple of 8 rows; the padding is trimmed to the vocabulary.

Loading is strict: every tensor of the checkpoint is used (the pooler, which extractive QA does
not use, is the one named exception) and every tensor of the model is filled. Anything else raises
``CheckpointError`` naming the file and the problem.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing

from bertqa.text import load_tokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Keys of the QA model that are buffers, not weights: a checkpoint may or may not carry them.
_OPTIONAL_BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")
_POOLER = re.compile(r"^bert\.pooler\.")
_ACTIVATIONS = {"gelu": "gelu", "bias_gelu": "gelu", "relu": "relu", "bias_relu": "relu", "tanh": "tanh",
                "bias_tanh": "tanh", "swish": "silu", "silu": "silu", "gelu_new": "gelu_new"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: an eval-mode FP32 model and its tokenizer (with [CLS]/[SEP] template)."""

    model: Any  # transformers.BertForQuestionAnswering
    tokenizer: Tokenizer
    format: str  # "hf" or "dle"
    source: Path
    lowercase: bool | None = None
    notes: list[str] = field(default_factory=list)

    def save_tokenizer(self, path: str | Path) -> Path:
        """Writes ``tokenizer.json`` as ``qa_preprocess`` reads it (no truncation/padding state)."""
        path = Path(path)
        tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
        tokenizer.no_truncation()
        tokenizer.no_padding()
        tokenizer.save(str(path))
        return path


# --------------------------------------------------------------------------------------------------
# Tokenizers


def read_vocab(vocab_file: Path) -> dict[str, int]:
    if not vocab_file.is_file():
        raise CheckpointError(f"{vocab_file}: vocabulary file not found")
    try:
        lines = vocab_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{vocab_file}: not UTF-8 text ({err})") from None
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        token = token.rstrip("\r")
        if token in vocab:
            raise CheckpointError(f"{vocab_file}: token {token!r} appears twice (lines {vocab[token] + 1} and {index + 1})")
        vocab[token] = index
    if not vocab:
        raise CheckpointError(f"{vocab_file}: empty vocabulary")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise CheckpointError(f"{vocab_file}: not a BERT vocabulary, it lacks {', '.join(missing)}")
    return vocab


def vocab_is_cased(vocab: Mapping[str, int]) -> bool:
    """True when some ordinary token has upper-case letters (a cased vocabulary)."""
    return any(
        any(c.isupper() for c in token) for token in vocab if not (token.startswith("[") and token.endswith("]"))
    )


def build_wordpiece_tokenizer(vocab_file: str | Path, lowercase: bool) -> Tokenizer:
    """A BERT WordPiece tokenizer from ``vocab.txt`` with the ``[CLS] q [SEP] c [SEP]`` template."""
    vocab_file = Path(vocab_file)
    vocab = read_vocab(vocab_file)
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _resolve_lowercase(vocab_file: Path, vocab: Mapping[str, int], lowercase: bool | None,
                       declared: bool | None, declared_in: str) -> tuple[bool, list[str]]:
    """Lower-casing from the flag, else the checkpoint's declaration, else the vocabulary itself."""
    cased = vocab_is_cased(vocab)
    notes = []
    if lowercase is None:
        if declared is not None:
            lowercase = declared
            notes.append(f"lowercase={lowercase} (from {declared_in})")
        else:
            lowercase = not cased
            notes.append(f"lowercase={lowercase} ({vocab_file.name} is {'cased' if cased else 'uncased'})")
    if not lowercase and not cased:
        raise CheckpointError(
            f"{vocab_file}: the vocabulary is uncased (no upper-case tokens) but lower-casing is off; "
            f"capitalised words would become [UNK]. Use lowercase (--lowercase)"
        )
    if lowercase and cased:
        warnings.warn(
            f"{vocab_file}: the vocabulary is cased but inputs will be lower-cased; "
            f"capitalised tokens can never be produced (pass --no-lowercase for a cased model)",
            stacklevel=3,
        )
    return lowercase, notes


# --------------------------------------------------------------------------------------------------
# Reading tensors


def _torch_load(path: Path) -> Any:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as err:  # pickle/zip errors of every kind
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({type(err).__name__}: {err})") from None


def _load_weight_file(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as err:
            raise CheckpointError(f"{path}: cannot be read as safetensors ({err})") from None
    state = _torch_load(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


# --------------------------------------------------------------------------------------------------
# Strict loading into the HF model


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def load_state_strict(model, state: Mapping[str, Any], source: Path, *, vocab_size: int | None = None) -> list[str]:
    """Copies ``state`` (HF names) into ``model``; every tensor used, every weight filled, shapes equal.

    The pooler (``bert.pooler.*``) is dropped: ``BertForQuestionAnswering`` has none.
    Returns notes on what was dropped.
    """
    import torch

    notes = []
    expected = model.state_dict()
    state = dict(state)
    not_tensors = [k for k, v in state.items() if not _is_tensor(v)]
    if not_tensors:
        raise CheckpointError(f"{source}: entries that are not tensors: {', '.join(not_tensors[:5])}")
    pooler = sorted(k for k in state if _POOLER.match(k))
    for key in pooler:
        del state[key]
    if pooler:
        notes.append(f"dropped {len(pooler)} pooler tensors (extractive QA does not use the pooler)")
    for key in _OPTIONAL_BUFFERS:
        if key in state and key in expected:
            state[key] = expected[key]  # keep the model's own buffer (values are a fixed range)
        elif key in state:
            del state[key]
    if not any(k.startswith("qa_outputs.") for k in state):
        heads = sorted({k.split(".")[0] for k in state if not k.startswith("bert.")})
        raise CheckpointError(
            f"{source}: no qa_outputs.* tensors; this is not a BERT question-answering checkpoint"
            + (f" (it has heads: {', '.join(heads)})" if heads else " (no task head at all: a pre-trained encoder?)")
        )
    missing = sorted(k for k in expected if k not in state and k not in _OPTIONAL_BUFFERS)
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model tensors missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} checkpoint tensors unused (e.g. {', '.join(unexpected[:4])})")
        raise CheckpointError(f"{source}: does not match a BertForQuestionAnswering of its config: {'; '.join(parts)}")
    for key, value in sorted(state.items()):
        if tuple(value.shape) != tuple(expected[key].shape):
            hint = ""
            if key == "bert.embeddings.word_embeddings.weight" and vocab_size is not None:
                hint = f" (the vocabulary has {vocab_size} tokens)"
            raise CheckpointError(
                f"{source}: tensor {key} has shape {tuple(value.shape)} but the config needs "
                f"{tuple(expected[key].shape)}{hint}"
            )
        if not (value.is_floating_point() or key in _OPTIONAL_BUFFERS):
            raise CheckpointError(f"{source}: tensor {key} has dtype {value.dtype}, expected floating point")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    for key in _OPTIONAL_BUFFERS:
        if key in expected and key not in state:
            state[key] = expected[key]
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    _check_finite(model, source)
    return notes


def _bert_config(values: Mapping[str, Any], source: Path):
    from transformers import BertConfig

    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    missing = [k for k in required if k not in values]
    if missing:
        raise CheckpointError(f"{source}: not a BERT config, it lacks {', '.join(missing)}")
    values = dict(values)
    act = values.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _ACTIVATIONS:
        raise CheckpointError(f"{source}: unsupported hidden_act {act!r} (supported: {', '.join(sorted(_ACTIVATIONS))})")
    values["hidden_act"] = _ACTIVATIONS[act]
    if values.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{source}: position_embedding_type {values['position_embedding_type']!r} is not supported")
    if values["hidden_size"] % values["num_attention_heads"]:
        raise CheckpointError(
            f"{source}: hidden_size {values['hidden_size']} is not a multiple of num_attention_heads "
            f"{values['num_attention_heads']}"
        )
    try:
        return BertConfig(**values)
    except Exception as err:
        raise CheckpointError(f"{source}: invalid BERT config ({err})") from None


def _new_qa_model(config):
    from transformers import BertForQuestionAnswering

    # "eager" attention: the plain matmul/softmax graph exports to every ONNX/TensorRT target.
    config._attn_implementation = "eager"
    model = BertForQuestionAnswering(config)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# Hugging Face folders


def _hf_weight_file(folder: Path) -> Path:
    for name in HF_WEIGHT_FILES + HF_INDEX_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder}: no weights found (expected one of {', '.join(HF_WEIGHT_FILES + HF_INDEX_FILES)})"
    )


def _hf_model(folder: Path, config, config_file: Path, vocab_size: int) -> tuple[Any, list[str]]:
    """``transformers``' own ``from_pretrained`` (weight formats, shards, legacy names), then strict
    checks of what it reports: every weight of the model filled, every checkpoint tensor used
    (except the pooler, which extractive QA has none of), every shape as the config says."""
    import torch
    from transformers import BertForQuestionAnswering
    from transformers.utils import logging as hf_logging

    weight_file = _hf_weight_file(folder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its warnings about unused/missing weights become errors below
    try:
        # "eager" attention: the plain matmul/softmax graph exports to every ONNX/TensorRT target.
        model, info = BertForQuestionAnswering.from_pretrained(
            folder, config=config, output_loading_info=True, ignore_mismatched_sizes=True, local_files_only=True,
            torch_dtype=torch.float32, attn_implementation="eager",
        )
    except Exception as err:  # safetensors/pickle/shard errors of every kind
        raise CheckpointError(f"{weight_file}: cannot be loaded ({type(err).__name__}: {err})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    for key in info["mismatched_keys"]:
        found, wanted = _stored_shape(weight_file, key), tuple(model.state_dict()[key].shape)
        if key == "bert.embeddings.word_embeddings.weight" and found[0] != wanted[0]:
            raise CheckpointError(f"{weight_file}: word embeddings have {found[0]} rows but {config_file.name} says "
                                  f"vocab_size {config.vocab_size}")
        raise CheckpointError(f"{weight_file}: tensor {key} has shape {tuple(found)} but the config needs {tuple(wanted)}")
    missing = sorted(k for k in info["missing_keys"] if k not in _OPTIONAL_BUFFERS)
    if any(k.startswith("qa_outputs.") for k in missing):
        raise CheckpointError(f"{weight_file}: no qa_outputs.* tensors; this is not a BERT question-answering checkpoint")
    unexpected = sorted(k for k in info["unexpected_keys"] if not _POOLER.match(k))
    if missing or unexpected:
        parts = [f"{len(missing)} model tensors missing (e.g. {', '.join(missing[:4])})"] if missing else []
        parts += [f"{len(unexpected)} checkpoint tensors unused (e.g. {', '.join(unexpected[:4])})"] if unexpected else []
        raise CheckpointError(f"{weight_file}: does not match a BertForQuestionAnswering of its config: {'; '.join(parts)}")
    _check_finite(model, weight_file)
    return model.eval(), []


def _stored_shape(weight_file: Path, key: str) -> tuple[int, ...]:
    """A tensor's shape in the checkpoint (for error messages; from_pretrained reports only the name)."""
    if weight_file.name in HF_INDEX_FILES:
        weight_file = weight_file.parent / _read_json(weight_file)["weight_map"][key]
    if weight_file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weight_file), framework="pt") as handle:
            return tuple(handle.get_slice(key).get_shape())
    return tuple(_load_weight_file(weight_file)[key].shape)


def _check_finite(model, source: Path) -> None:
    import torch

    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: tensors with NaN/Inf values: {', '.join(bad[:5])}")


def load_hf_checkpoint(folder: str | Path, *, lowercase: bool | None = None) -> Checkpoint:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    config_file = folder / "config.json"
    values = _read_json(config_file)
    model_type = values.get("model_type")
    if model_type not in (None, "bert"):
        raise CheckpointError(f"{config_file}: model_type is {model_type!r}; only BERT checkpoints are supported")
    architectures = values.get("architectures") or []
    if architectures and "BertForQuestionAnswering" not in architectures:
        raise CheckpointError(
            f"{config_file}: architecture {', '.join(architectures)} is not BertForQuestionAnswering "
            f"(a SQuAD fine-tuned checkpoint is needed)"
        )
    hf_keys = {k: v for k, v in values.items() if not k.startswith("_")}
    config = _bert_config(hf_keys, config_file)

    notes: list[str] = []
    tokenizer_file = folder / "tokenizer.json"
    vocab_file = folder / "vocab.txt"
    if tokenizer_file.is_file():
        if lowercase is not None:
            raise CheckpointError(
                f"{tokenizer_file}: the tokenizer defines its own lower-casing; "
                f"--lowercase/--no-lowercase only apply to checkpoints that come with vocab.txt alone"
            )
        try:
            tokenizer = load_tokenizer(tokenizer_file)
        except Exception as err:
            raise CheckpointError(f"{tokenizer_file}: cannot be loaded ({err})") from None
        for token in SPECIAL_TOKENS:
            if tokenizer.token_to_id(token) is None:
                raise CheckpointError(f"{tokenizer_file}: not a BERT tokenizer, it lacks {token}")
        vocab_size = tokenizer.get_vocab_size()
        vocab_source = tokenizer_file
    elif vocab_file.is_file():
        vocab = read_vocab(vocab_file)
        declared = None
        if (folder / "tokenizer_config.json").is_file():
            declared = _read_json(folder / "tokenizer_config.json").get("do_lower_case")
        lowercase, more = _resolve_lowercase(vocab_file, vocab, lowercase, declared, "tokenizer_config.json")
        notes += more
        tokenizer = build_wordpiece_tokenizer(vocab_file, lowercase)
        vocab_size = len(vocab)
        vocab_source = vocab_file
    else:
        raise CheckpointError(f"{folder}: no tokenizer.json or vocab.txt; the vocabulary is needed to tokenize")

    if vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{vocab_source}: {vocab_size} tokens but the model's embeddings hold only {config.vocab_size}; "
            f"vocabulary and weights do not belong together"
        )
    model, more = _hf_model(folder, config, config_file, vocab_size)
    notes += more
    return Checkpoint(model, tokenizer, "hf", folder, lowercase, notes)


# --------------------------------------------------------------------------------------------------
# NVIDIA DeepLearningExamples checkpoints

_DLE_RENAMES = (
    (re.compile(r"\.intermediate\.dense_act\."), ".intermediate.dense."),
    (re.compile(r"^bert\.pooler\.dense_act\."), "bert.pooler.dense."),
    (re.compile(r"LayerNorm\.gamma$"), "LayerNorm.weight"),
    (re.compile(r"LayerNorm\.beta$"), "LayerNorm.bias"),
)


def dle_to_hf_names(state: Mapping[str, Any]) -> dict[str, Any]:
    """DLE ``modeling.py`` names -> Hugging Face names (also strips ``module.`` prefixes)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = key
        while new.startswith("module."):
            new = new[len("module."):]
        for pattern, replacement in _DLE_RENAMES:
            new = pattern.sub(replacement, new)
        if new in out:
            raise CheckpointError(f"two checkpoint tensors map to {new!r} (one is {key!r})")
        out[new] = value
    return out


def _dle_state(pt_file: Path) -> dict[str, Any]:
    data = _torch_load(pt_file)
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{pt_file}: holds a {type(data).__name__}, not a checkpoint dict")
    if "model" in data:
        state = data["model"]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{pt_file}: 'model' entry is a {type(state).__name__}, not a state dict")
    elif any(_is_tensor(v) for v in data.values()):
        state = data
    else:
        raise CheckpointError(
            f"{pt_file}: no state dict (no 'model' entry and no tensors; keys: {', '.join(list(map(str, data))[:8])})"
        )
    return dict(state)


def load_dle_checkpoint(
    pt_file: str | Path,
    *,
    bert_config: str | Path | None = None,
    vocab_file: str | Path | None = None,
    lowercase: bool | None = None,
) -> Checkpoint:
    pt_file = Path(pt_file)
    if not pt_file.is_file():
        raise CheckpointError(f"{pt_file}: checkpoint file not found")
    config_file = Path(bert_config) if bert_config else pt_file.parent / "bert_config.json"
    vocab_file = Path(vocab_file) if vocab_file else pt_file.parent / "vocab.txt"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: bert_config.json not found (pass --bert-config)")
    if not vocab_file.is_file():
        raise CheckpointError(f"{vocab_file}: vocab.txt not found (pass --vocab)")
    values = _read_json(config_file)
    vocab = read_vocab(vocab_file)
    lowercase, notes = _resolve_lowercase(vocab_file, vocab, lowercase, values.get("do_lower_case"), config_file.name)
    n_vocab = len(vocab)

    state = _dle_state(pt_file)
    try:
        state = dle_to_hf_names(state)
    except CheckpointError as err:
        raise CheckpointError(f"{pt_file}: {err}") from None
    key = "bert.embeddings.word_embeddings.weight"
    if key not in state:
        raise CheckpointError(f"{pt_file}: no {key}; not a BERT checkpoint")
    rows = int(state[key].shape[0])
    padded = -(-n_vocab // 8) * 8
    if rows < n_vocab:
        raise CheckpointError(
            f"{vocab_file}: {n_vocab} tokens but the word embeddings in {pt_file.name} have only {rows} rows; "
            f"vocabulary and checkpoint do not belong together"
        )
    if rows not in (n_vocab, padded):
        raise CheckpointError(
            f"{vocab_file}: {n_vocab} tokens but the word embeddings in {pt_file.name} have {rows} rows "
            f"(expected {n_vocab}, or {padded} padded to a multiple of 8); vocabulary and checkpoint do not match"
        )
    declared_vocab = values.get("vocab_size")
    if declared_vocab not in (n_vocab, rows):
        raise CheckpointError(
            f"{config_file}: vocab_size {declared_vocab} matches neither {vocab_file.name} ({n_vocab} tokens) "
            f"nor the checkpoint's embeddings ({rows} rows)"
        )
    if rows != n_vocab:
        state[key] = state[key][:n_vocab]
        notes.append(f"trimmed word embeddings from {rows} to {n_vocab} rows (DLE pads the vocabulary to a multiple of 8)")
    hf_values = {k: v for k, v in values.items() if k != "do_lower_case"}
    hf_values["vocab_size"] = n_vocab
    config = _bert_config(hf_values, config_file)
    config.architectures = ["BertForQuestionAnswering"]
    model = _new_qa_model(config)
    notes += load_state_strict(model, state, pt_file, vocab_size=n_vocab)
    tokenizer = build_wordpiece_tokenizer(vocab_file, lowercase)
    return Checkpoint(model, tokenizer, "dle", pt_file, lowercase, notes)


# --------------------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        pts = sorted(path.glob("*.pt"))
        if len(pts) == 1 and (path / "bert_config.json").is_file():
            return "dle"
        raise CheckpointError(
            f"{path}: neither a Hugging Face folder (no config.json) nor a DLE checkpoint "
            f"(one *.pt with bert_config.json)"
        )
    if path.is_file():
        if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
            return "dle"
        raise CheckpointError(f"{path}: unknown checkpoint file type {path.suffix!r} (expected a DLE .pt or a HF folder)")
    raise CheckpointError(f"{path}: checkpoint not found")


def load_checkpoint(
    path: str | Path,
    *,
    lowercase: bool | None = None,
    bert_config: str | Path | None = None,
    vocab_file: str | Path | None = None,
) -> Checkpoint:
    """Loads a HF folder or a DLE ``.pt`` (file, or folder holding one ``.pt`` + ``bert_config.json``)."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "hf":
        if bert_config or vocab_file:
            raise CheckpointError(f"{path}: --bert-config/--vocab only apply to DLE .pt checkpoints")
        return load_hf_checkpoint(path, lowercase=lowercase)
    if path.is_dir():
        path = next(iter(sorted(path.glob("*.pt"))))
    return load_dle_checkpoint(path, bert_config=bert_config, vocab_file=vocab_file, lowercase=lowercase)
