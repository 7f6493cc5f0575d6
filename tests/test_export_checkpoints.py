"""Loading HF and DLE checkpoints strictly, and the clear errors for malformed ones."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from bertqa.export.checkpoints import (
    CheckpointError,
    build_wordpiece_tokenizer,
    dle_to_hf_names,
    load_checkpoint,
    vocab_is_cased,
)
from export_helpers import tiny_vocab, write_dle_checkpoint, write_hf_checkpoint, write_vocab

IDS = torch.tensor([[2, 10, 11, 12, 3, 40, 41, 42, 43, 3, 0, 0]])
MASK = (IDS != 0).long()


def _logits(model):
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK, token_type_ids=torch.zeros_like(IDS))
    return out.start_logits, out.end_logits


def _assert_same_model(loaded, original):
    for a, b in zip(_logits(loaded), _logits(original)):
        assert torch.allclose(a, b, atol=1e-5)
    assert not loaded.training


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return write_hf_checkpoint(tmp_path_factory.mktemp("hf") / "ckpt")


@pytest.fixture(scope="module")
def dle_dir(tmp_path_factory):
    pt, model = write_dle_checkpoint(tmp_path_factory.mktemp("dle"))
    return pt, model


def test_hf_folder_loads_strictly_with_its_tokenizer(hf_dir):
    folder, original = hf_dir
    ckpt = load_checkpoint(folder)
    assert ckpt.format == "hf"
    _assert_same_model(ckpt.model, original)
    encoding = ckpt.tokenizer.encode("What is the capital?", "Paris is.")
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens.count("[SEP]") == 2


def test_hf_folder_with_vocab_txt_only_and_bin_weights(tmp_path):
    folder, original = write_hf_checkpoint(tmp_path / "ckpt", tokenizer_json=False, safetensors=False)
    assert (folder / "pytorch_model.bin").is_file()
    ckpt = load_checkpoint(folder)
    _assert_same_model(ckpt.model, original)
    assert ckpt.lowercase is True  # from tokenizer_config.json's do_lower_case
    assert ckpt.tokenizer.encode("PARIS").tokens[1] == "paris"


def test_hf_cased_folder_keeps_case(tmp_path):
    folder, _ = write_hf_checkpoint(tmp_path / "ckpt", cased=True, tokenizer_json=False)
    ckpt = load_checkpoint(folder)
    assert ckpt.lowercase is False
    assert "Paris" in ckpt.tokenizer.encode("Paris").tokens


def test_dle_checkpoint_maps_names_and_trims_padded_vocab(dle_dir):
    pt, original = dle_dir
    ckpt = load_checkpoint(pt)
    assert ckpt.format == "dle"
    _assert_same_model(ckpt.model, original)
    assert ckpt.model.config.vocab_size == len(tiny_vocab())
    assert any("trimmed word embeddings" in n for n in ckpt.notes)
    assert any("pooler" in n for n in ckpt.notes)
    assert ckpt.tokenizer.encode("What", "Paris").tokens == ["[CLS]", "what", "[SEP]", "paris", "[SEP]"]


def test_dle_plain_state_dict_without_prefix_or_padding(tmp_path):
    pt, original = write_dle_checkpoint(tmp_path, wrap=False, prefix="", pad_to=0)
    _assert_same_model(load_checkpoint(pt).model, original)


def test_dle_folder_is_accepted(dle_dir):
    pt, original = dle_dir
    _assert_same_model(load_checkpoint(pt.parent).model, original)


def test_dle_name_mapping():
    mapped = dle_to_hf_names({
        "module.bert.encoder.layer.3.intermediate.dense_act.weight": 1,
        "module.bert.pooler.dense_act.bias": 2,
        "bert.encoder.layer.0.attention.output.LayerNorm.gamma": 3,
        "qa_outputs.weight": 4,
    })
    assert mapped == {
        "bert.encoder.layer.3.intermediate.dense.weight": 1,
        "bert.pooler.dense.bias": 2,
        "bert.encoder.layer.0.attention.output.LayerNorm.weight": 3,
        "qa_outputs.weight": 4,
    }


def test_vocab_case_detection(tmp_path):
    assert not vocab_is_cased({t: i for i, t in enumerate(tiny_vocab())})
    assert vocab_is_cased({t: i for i, t in enumerate(tiny_vocab(cased=True))})
    tokenizer = build_wordpiece_tokenizer(write_vocab(tmp_path / "vocab.txt", tiny_vocab()), lowercase=True)
    assert tokenizer.post_processor is not None


# --------------------------------------------------------------------------------------------------
# Malformed checkpoints: each one fails with an error naming the file and the problem.


def _hf(tmp_path):
    folder, _ = write_hf_checkpoint(tmp_path / "hf")
    return folder


def _dle(tmp_path):
    pt, _ = write_dle_checkpoint(tmp_path / "dle")
    return pt


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_state(path, edit):
    data = torch.load(path, weights_only=True)
    state = data["model"] if "model" in data else data
    edit(state)
    torch.save(data, path)


def _edit_safetensors(folder, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors")


def case_hf_no_config(tmp_path):
    folder = _hf(tmp_path)
    (folder / "config.json").unlink()
    return folder, r"hf: neither a Hugging Face folder \(no config.json\)"


def case_hf_no_weights(tmp_path):
    folder = _hf(tmp_path)
    (folder / "model.safetensors").unlink()
    return folder, r"hf: no weights found"


def case_hf_wrong_architecture(tmp_path):
    folder = _hf(tmp_path)
    _edit_json(folder / "config.json", architectures=["BertForMaskedLM"])
    return folder, r"config.json: architecture BertForMaskedLM is not BertForQuestionAnswering"


def case_hf_not_bert(tmp_path):
    folder = _hf(tmp_path)
    _edit_json(folder / "config.json", model_type="roberta")
    return folder, r"config.json: model_type is 'roberta'"


def case_hf_no_qa_head(tmp_path):
    folder = _hf(tmp_path)
    _edit_safetensors(folder, lambda s: [s.pop(k) for k in list(s) if k.startswith("qa_outputs")])
    return folder, r"model.safetensors: no qa_outputs.\* tensors; this is not a BERT question-answering checkpoint"


def case_hf_missing_tensor(tmp_path):
    folder = _hf(tmp_path)
    _edit_safetensors(folder, lambda s: s.pop("bert.encoder.layer.1.output.dense.weight"))
    return folder, r"model.safetensors: .*1 model tensors missing \(e.g. bert.encoder.layer.1.output.dense.weight\)"


def case_hf_unused_tensor(tmp_path):
    folder = _hf(tmp_path)
    _edit_safetensors(folder, lambda s: s.__setitem__("cls.predictions.bias", torch.zeros(3)))
    return folder, r"model.safetensors: .*1 checkpoint tensors unused \(e.g. cls.predictions.bias\)"


def case_hf_shape_mismatch(tmp_path):
    folder = _hf(tmp_path)
    _edit_json(folder / "config.json", intermediate_size=48)
    return folder, r"model.safetensors: tensor bert.encoder.layer.0.intermediate.dense.bias has shape \(64,\) but the config needs \(48,\)"


def case_hf_vocab_bigger_than_embeddings(tmp_path):
    folder = _hf(tmp_path)
    (folder / "tokenizer.json").unlink()
    write_vocab(folder / "vocab.txt", tiny_vocab() + [f"extra{i}" for i in range(20)])
    return folder, r"vocab.txt: 170 tokens but the model's embeddings hold only 150"


def case_hf_config_vocab_size_mismatch(tmp_path):
    folder = _hf(tmp_path)
    _edit_json(folder / "config.json", vocab_size=200)
    return folder, r"model.safetensors: word embeddings have 150 rows but config.json says vocab_size 200"


def case_hf_no_vocabulary(tmp_path):
    folder = _hf(tmp_path)
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.txt").unlink()
    return folder, r"hf: no tokenizer.json or vocab.txt"


def case_hf_corrupt_config(tmp_path):
    folder = _hf(tmp_path)
    (folder / "config.json").write_text("{not json")
    return folder, r"config.json: not valid JSON"


def case_dle_missing_bert_config(tmp_path):
    pt = _dle(tmp_path)
    (pt.parent / "bert_config.json").unlink()
    return pt, r"bert_config.json: bert_config.json not found \(pass --bert-config\)"


def case_dle_missing_vocab(tmp_path):
    pt = _dle(tmp_path)
    (pt.parent / "vocab.txt").unlink()
    return pt, r"vocab.txt: vocab.txt not found \(pass --vocab\)"


def case_dle_vocab_too_long(tmp_path):
    pt = _dle(tmp_path)
    write_vocab(pt.parent / "vocab.txt", tiny_vocab() + [f"extra{i}" for i in range(10)])
    return pt, r"vocab.txt: 160 tokens but the word embeddings in ckpt.pt have only 152 rows"


def case_dle_vocab_too_short(tmp_path):
    pt = _dle(tmp_path)
    write_vocab(pt.parent / "vocab.txt", tiny_vocab()[:120])
    return pt, r"vocab.txt: 120 tokens but the word embeddings in ckpt.pt have 152 rows \(expected 120, or 120 padded"


def case_dle_vocab_not_bert(tmp_path):
    pt = _dle(tmp_path)
    write_vocab(pt.parent / "vocab.txt", [t for t in tiny_vocab() if t != "[SEP]"])
    return pt, r"vocab.txt: not a BERT vocabulary, it lacks \[SEP\]"


def case_dle_config_vocab_size(tmp_path):
    pt = _dle(tmp_path)
    _edit_json(pt.parent / "bert_config.json", vocab_size=30522)
    return pt, r"bert_config.json: vocab_size 30522 matches neither vocab.txt \(150 tokens\) nor the checkpoint's embeddings \(152 rows\)"


def case_dle_shape_mismatch(tmp_path):
    pt = _dle(tmp_path)
    _edit_json(pt.parent / "bert_config.json", num_hidden_layers=3)
    return pt, r"ckpt.pt: .*model tensors missing \(e.g. bert.encoder.layer.2"


def case_dle_pretraining_checkpoint(tmp_path):
    pt = _dle(tmp_path)

    def edit(state):
        for key in [k for k in state if "qa_outputs" in k]:
            del state[key]
        state["module.cls.seq_relationship.weight"] = torch.zeros(2, 32)

    _edit_state(pt, edit)
    return pt, r"ckpt.pt: no qa_outputs.\* tensors; .*\(it has heads: cls\)"


def case_dle_corrupt_file(tmp_path):
    pt = _dle(tmp_path)
    pt.write_bytes(b"not a checkpoint")
    return pt, r"ckpt.pt: cannot be read as a PyTorch checkpoint"


def case_dle_no_state_dict(tmp_path):
    pt = _dle(tmp_path)
    torch.save({"epoch": 3, "args": "x"}, pt)
    return pt, r"ckpt.pt: no state dict \(no 'model' entry and no tensors"


def case_dle_bad_activation(tmp_path):
    pt = _dle(tmp_path)
    _edit_json(pt.parent / "bert_config.json", hidden_act="mish")
    return pt, r"bert_config.json: unsupported hidden_act 'mish'"


def case_missing_path(tmp_path):
    return tmp_path / "nothing-here", r"nothing-here: checkpoint not found"


CASES = [v for k, v in sorted(globals().items()) if k.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_malformed_checkpoint_is_rejected_clearly(case, tmp_path):
    path, message = case(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_lowercase_flag_contradicting_an_uncased_vocab(tmp_path):
    pt = _dle(tmp_path)
    with pytest.raises(CheckpointError, match=r"vocab.txt: the vocabulary is uncased .* lower-casing is off"):
        load_checkpoint(pt, lowercase=False)


def test_lowercase_flag_on_a_cased_vocab_warns(tmp_path):
    pt, _ = write_dle_checkpoint(tmp_path, cased=True)
    with pytest.warns(UserWarning, match="vocabulary is cased but inputs will be lower-cased"):
        ckpt = load_checkpoint(pt, lowercase=True)
    assert ckpt.lowercase is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_checkpoint(pt).lowercase is False  # inferred from the cased vocabulary


def test_lowercase_flag_rejected_with_a_tokenizer_json(hf_dir):
    with pytest.raises(CheckpointError, match=r"tokenizer.json: the tokenizer defines its own lower-casing"):
        load_checkpoint(hf_dir[0], lowercase=True)


def test_dle_files_given_explicitly(tmp_path):
    pt, original = write_dle_checkpoint(tmp_path / "a")
    other = tmp_path / "b"
    other.mkdir()
    shutil.move(pt.parent / "bert_config.json", other / "cfg.json")
    shutil.move(pt.parent / "vocab.txt", other / "words.txt")
    ckpt = load_checkpoint(pt, bert_config=other / "cfg.json", vocab_file=other / "words.txt")
    _assert_same_model(ckpt.model, original)


def test_dle_options_rejected_for_hf_folder(hf_dir):
    with pytest.raises(CheckpointError, match="only apply to DLE"):
        load_checkpoint(hf_dir[0], vocab_file=hf_dir[0] / "vocab.txt")
