"""Tiny BERT QA checkpoints made inside the tests (HF folders and DLE-style .pt files)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from conftest import committed_model_dirs, copy_repository_configs  # noqa: F401 (re-exported)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMMITTED_REPOSITORY = PROJECT_ROOT / "model_repository"

_WORDS = (
    "the of a in is was what who where when how many which capital france paris city population "
    "expedition reached after weeks sea crates supplies crew carry did arrive quest terra nova "
    "albert einstein published theory general relativity gravity space time wrote"
).split()


def tiny_vocab(cased: bool = False) -> list[str]:
    """About 130 tokens: specials, common words, single characters and ## continuations.

    The count is deliberately not a multiple of 8, so DLE-style padding is exercised.
    """
    letters = string.ascii_lowercase + (string.ascii_uppercase if cased else "")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    seen = set(vocab)
    for token in list(_WORDS) + (["Paris", "France", "Albert"] if cased else []) + list(letters + string.digits + string.punctuation) \
            + ["##" + c for c in letters + string.digits]:
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    if len(vocab) % 8 == 0:
        vocab.append("##extra")
    return vocab


def tiny_model(vocab_size: int, seed: int = 0, *, hidden: int = 32, layers: int = 2, max_positions: int = 512):
    from transformers import BertConfig, BertForQuestionAnswering

    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=max_positions, architectures=["BertForQuestionAnswering"],
    )
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(config).eval()
    with torch.no_grad():  # larger QA-head weights: logits that actually differ between tokens
        model.qa_outputs.weight.normal_(0, 1.0)
    return model


def write_vocab(path: Path, vocab: list[str]) -> Path:
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def write_hf_checkpoint(folder: Path, *, seed: int = 0, cased: bool = False, tokenizer_json: bool = True,
                        safetensors: bool = True):
    """A HF BertForQuestionAnswering folder; returns (folder, model)."""
    from bertqa.export.checkpoints import build_wordpiece_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab(cased)
    model = tiny_model(len(vocab), seed)
    model.save_pretrained(folder, safe_serialization=safetensors)
    write_vocab(folder / "vocab.txt", vocab)
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": not cased}), encoding="utf-8")
    if tokenizer_json:
        build_wordpiece_tokenizer(folder / "vocab.txt", lowercase=not cased).save(str(folder / "tokenizer.json"))
    return folder, model


def dle_state_dict(model, *, pad_to: int = 8, prefix: str = "module.", seed: int = 1) -> dict:
    """HF weights under DLE modeling.py names, a pooler, and word embeddings padded to ``pad_to`` rows."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids") or key.endswith("embeddings.token_type_ids"):
            continue
        key = key.replace(".intermediate.dense.", ".intermediate.dense_act.")
        if key == "bert.embeddings.word_embeddings.weight" and pad_to:
            rows = value.shape[0]
            padded = -(-rows // pad_to) * pad_to
            value = torch.cat([value, torch.randn(padded - rows, value.shape[1], generator=generator)])
        state[prefix + key] = value.clone()
    hidden = model.config.hidden_size
    state[prefix + "bert.pooler.dense_act.weight"] = torch.randn(hidden, hidden, generator=generator)
    state[prefix + "bert.pooler.dense_act.bias"] = torch.zeros(hidden)
    return state


def dle_bert_config(model, vocab_size: int) -> dict:
    c = model.config
    return {
        "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": c.hidden_size, "initializer_range": 0.02, "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings, "num_attention_heads": c.num_attention_heads,
        "num_hidden_layers": c.num_hidden_layers, "type_vocab_size": c.type_vocab_size, "vocab_size": vocab_size,
    }


def write_dle_checkpoint(folder: Path, *, seed: int = 0, cased: bool = False, wrap: bool = True,
                         prefix: str = "module.", pad_to: int = 8):
    """A DLE-style SQuAD checkpoint: ckpt.pt + bert_config.json + vocab.txt; returns (pt_file, model)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab(cased)
    model = tiny_model(len(vocab), seed)
    state = dle_state_dict(model, pad_to=pad_to, prefix=prefix)
    payload = {"model": state, "epoch": 2, "optimizer": {"lr": 3e-5}} if wrap else state
    pt_file = folder / "ckpt.pt"
    torch.save(payload, pt_file)
    (folder / "bert_config.json").write_text(json.dumps(dle_bert_config(model, len(vocab))), encoding="utf-8")
    write_vocab(folder / "vocab.txt", vocab)
    return pt_file, model


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), to prove a repository did not change."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
