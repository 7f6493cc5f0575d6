"""The bundled demo model (demo_model/) and its recipe (bertqa.export.demo): a tiny training run end to end."""

from __future__ import annotations

import hashlib
import json
import unicodedata

import pytest

from bertqa.demo import DEMO_DIR, install_demo
from bertqa.squad import dev_slice_path

MAX_DEMO_BYTES = 96 * 10**6  # the size budget of the committed demo model (issue 10)


def test_committed_demo_fits_the_budget_and_its_card_matches_the_files():
    files = [p for p in DEMO_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_DEMO_BYTES
    results = json.loads((DEMO_DIR / "eval_results.json").read_text())
    assert hashlib.sha256((DEMO_DIR / "model.safetensors").read_bytes()).hexdigest() == results["weights_sha256"]
    assert (DEMO_DIR / "onnx" / "model.onnx").stat().st_size == results["onnx"]["size_bytes"]
    dev = results["squad_v1.1_dev"]
    assert dev["questions"] == 10570 and dev["data_md5"] == "3e85deb501d4e538b6bc56f786231552"
    assert dev["f1"] >= 80.0  # a SQuAD-trained model, not the old template-trained demo
    card = (DEMO_DIR / "README.md").read_text()
    assert f"EM {dev['exact_match']}, F1 {dev['f1']}" in card and "CC BY-SA 4.0" in card
    config = json.loads((DEMO_DIR / "config.json").read_text())
    tokenizer = json.loads((DEMO_DIR / "tokenizer.json").read_text())
    assert config["vocab_size"] == len(tokenizer["model"]["vocab"]) == 30522  # untrimmed
    assert tokenizer["truncation"] is None and tokenizer["padding"] is None


def test_install_demo_copies_the_onnx_model_and_its_tokenizer(tmp_path):
    written = install_demo(tmp_path, DEMO_DIR)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == {"bert_onnx/1/model.onnx",
                                                                      "qa_preprocess/1/tokenizer.json"}
    assert (tmp_path / "bert_onnx/1/model.onnx").read_bytes() == (DEMO_DIR / "onnx/model.onnx").read_bytes()
    assert install_demo(tmp_path, DEMO_DIR) == []  # already installed, nothing replaced without force


def _fold(text: str) -> str:
    """Lower case, no accents, no white space: how WordPiece pieces compare with the gold text."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c) != "Mn")


def test_training_labels_point_at_the_gold_answer_in_every_window():
    from bertqa.export.demo.train import TrainConfig, load_hf_tokenizer, read_train_questions, training_features

    questions = read_train_questions(dev_slice_path())
    tokenizer = load_hf_tokenizer(DEMO_DIR / "tokenizer.json")
    long_ones = sorted(questions, key=lambda q: len(q.context), reverse=True)[:12]
    features = training_features(tokenizer, long_ones, TrainConfig(max_seq_len=256, doc_stride=64))
    assert len(features) > 2 * len(long_ones)  # several windows each
    labelled = [f for f in features if f.start > 0]
    assert len(labelled) >= len(long_ones) and any(f.start == 0 for f in features)
    encoded = tokenizer([q.question for q in long_ones], [q.context for q in long_ones], truncation="only_second",
                        max_length=256, stride=64, return_overflowing_tokens=True, return_offsets_mapping=True)
    for i, feature in enumerate(features):
        question = long_ones[encoded["overflow_to_sample_mapping"][i]]
        assert feature.input_ids == encoded["input_ids"][i]
        if feature.start > 0:
            offsets = encoded["offset_mapping"][i]
            span = question.context[offsets[feature.start][0]:offsets[feature.end][1]]
            assert _fold(span) == _fold(question.answer_text), (span, question.answer_text)


@pytest.mark.slow
def test_tiny_training_run_writes_a_loadable_exportable_checkpoint(tmp_path):
    """`make demo-model`'s code path on a tiny random model, a few slice questions and a few steps."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    from bertqa.export.checkpoints import load_hf_checkpoint
    from bertqa.export.demo.train import TrainConfig, train_demo
    from bertqa.export.onnx import export_onnx

    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=64))
    before = model.qa_outputs.weight.detach().clone()
    output = tmp_path / "checkpoint"
    report = train_demo(model, DEMO_DIR / "tokenizer.json", dev_slice_path(), output,
                        TrainConfig(batch_size=4, max_steps=3, device="cpu"), limit=8, progress=False)
    assert report.steps == 3 and report.train_questions == 8 and report.device == "cpu"
    assert not torch.equal(before, model.qa_outputs.weight)  # it trained
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["weights_sha256"] == hashlib.sha256((output / "model.safetensors").read_bytes()).hexdigest()

    loaded = load_hf_checkpoint(output)  # the exporter's strict loader: every tensor used and filled
    assert loaded.model.config.hidden_size == 32 and loaded.tokenizer.get_vocab_size() == 30522
    for name, tensor in loaded.model.state_dict().items():
        if name in model.state_dict() and "position_ids" not in name and "pooler" not in name:
            assert torch.equal(tensor, model.state_dict()[name].half().float()), name  # FP16 weights
    loaded.save_tokenizer(tmp_path / "tokenizer.json")
    report = export_onnx(loaded.model, tmp_path / "tokenizer.json", tmp_path / "model.onnx", weight_storage="fp16",
                         log=None)
    assert report.max_abs_diff_start < 1e-3 and (tmp_path / "model.onnx").is_file()
