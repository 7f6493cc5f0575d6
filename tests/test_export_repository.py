"""Generated configs and ensembles, atomic installation, and checkpoint -> repository exports."""

from __future__ import annotations

import json

import pytest

from bertqa.export import pipeline
from bertqa.export import repository as repo
from bertqa.export.onnx import ExportValidationError
from bertqa.export.pipeline import ExportOptions, export_to_repository
from bertqa.export.tensorrt import profile_shapes
from export_helpers import COMMITTED_REPOSITORY, copy_repository_configs, tree_snapshot, write_dle_checkpoint, write_hf_checkpoint

BERT_INPUTS = [repo.TensorSpec(n, "TYPE_INT64", (-1,)) for n in ("input_ids", "attention_mask", "token_type_ids")]
BERT_OUTPUTS = [repo.TensorSpec(n, "TYPE_FP32", (-1,)) for n in ("start_logits", "end_logits")]


@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory):
    return write_hf_checkpoint(tmp_path_factory.mktemp("hf") / "ckpt")[0]


@pytest.fixture(scope="module")
def dle_ckpt(tmp_path_factory):
    return write_dle_checkpoint(tmp_path_factory.mktemp("dle"), seed=5)[0]


@pytest.fixture
def repository(tmp_path):
    return copy_repository_configs(tmp_path / "model_repository")


# --------------------------------------------------------------------------------------------------
# Configs


def test_generated_onnx_config_is_the_committed_one_byte_for_byte():
    text = repo.onnx_model_config("bert_onnx", BERT_INPUTS, BERT_OUTPUTS, max_batch_size=64)
    assert text == (COMMITTED_REPOSITORY / "bert_onnx" / "config.pbtxt").read_text()


def test_onnx_config_gpu_accelerators_parse():
    profiles = profile_shapes(16, (128, 384))
    text = repo.onnx_model_config("m", BERT_INPUTS, BERT_OUTPUTS, max_batch_size=16, gpu_accelerator="tensorrt",
                                  trt_precision="FP16", trt_profiles=profiles)
    config = repo.parse_config(text, "m")
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_profile_max_shapes"].startswith("input_ids:16x128,attention_mask:16x128,")
    assert "input_ids:16x384" in accelerator.parameters["trt_profile_max_shapes"]
    cuda = repo.parse_config(repo.onnx_model_config("m", BERT_INPUTS, BERT_OUTPUTS, gpu_accelerator="cuda"), "m")
    assert cuda.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "cuda"
    with pytest.raises(ValueError, match="trt_profiles only apply"):
        repo.onnx_model_config("m", BERT_INPUTS, BERT_OUTPUTS, trt_profiles=profiles)


def test_tensorrt_config_matches_profiles():
    profiles = profile_shapes(32, (128, 256, 384))
    text = repo.tensorrt_model_config("bert_trt", BERT_INPUTS, BERT_OUTPUTS, profiles, max_batch_size=32)
    config = repo.parse_config(text, "bert_trt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 32
    assert [list(i.dims) for i in config.input] == [[-1]] * 3
    assert list(config.instance_group[0].profile) == ["0", "1", "2"]
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert "#   2: min 1x257  opt 32x384  max 32x384" in text
    with pytest.raises(ValueError, match="no profile reaches max_batch_size 64"):
        repo.tensorrt_model_config("bert_trt", BERT_INPUTS, BERT_OUTPUTS, profiles, max_batch_size=64)


@pytest.mark.parametrize("variant", ["onnx-int8", "tensorrt"])
def test_ensembles_are_the_template_with_the_bert_step_swapped(variant):
    v = repo.VARIANTS[variant]
    template = (COMMITTED_REPOSITORY / "bert_qa" / "config.pbtxt").read_text()
    text = repo.ensemble_config(template, v.ensemble_name, v.model_name)
    base = repo.parse_config(template, "bert_qa")
    ours = repo.parse_config(text, v.ensemble_name)
    assert ours.name == v.ensemble_name
    assert [s.model_name for s in ours.ensemble_scheduling.step] == [
        v.model_name if s.model_name == "bert_onnx" else s.model_name for s in base.ensemble_scheduling.step
    ]
    ours.name = base.name
    ours.ensemble_scheduling.step[1].model_name = "bert_onnx"
    assert ours == base  # nothing else differs


def test_onnx_io_reads_the_exported_graph(tmp_path, hf_ckpt):
    from bertqa.export.checkpoints import load_checkpoint
    from bertqa.export.onnx import export_onnx

    ckpt = load_checkpoint(hf_ckpt)
    out = export_onnx(ckpt.model, ckpt.save_tokenizer(tmp_path / "t.json"), tmp_path / "m.onnx", log=None).path
    assert repo.onnx_io(out) == (BERT_INPUTS, BERT_OUTPUTS)


# --------------------------------------------------------------------------------------------------
# Atomic installation


def test_staged_model_swaps_in_and_failure_leaves_old_model(repository):
    before = tree_snapshot(repository)
    with pytest.raises(RuntimeError, match="boom"):
        with repo.StagedModel(repository, "bert_onnx") as staged:
            (staged.version_dir / "model.onnx").write_bytes(b"half-written")
            raise RuntimeError("boom")
    assert tree_snapshot(repository) == before
    assert not list(repository.parent.glob(".bertqa-export-*"))

    with repo.StagedModel(repository, "bert_onnx") as staged:
        (staged.version_dir / "model.onnx").write_bytes(b"new")
        staged.write_config("name: \"bert_onnx\"\n")
        staged.commit()
    assert (repository / "bert_onnx" / "1" / "model.onnx").read_bytes() == b"new"
    assert not list(repository.parent.glob(".bertqa-export-*"))


def test_staged_model_refuses_when_a_newer_version_would_shadow_it(repository):
    (repository / "bert_onnx" / "2").mkdir()
    with repo.StagedModel(repository, "bert_onnx") as staged:
        with pytest.raises(repo.RepositoryError, match=r"bert_onnx/2: a newer version exists"):
            staged.commit()


# --------------------------------------------------------------------------------------------------
# End to end (no server): checkpoint -> repository


def test_export_hf_onnx_into_repository(repository, hf_ckpt):
    result = export_to_repository(ExportOptions(checkpoint=hf_ckpt, repository=repository))
    assert result.model_file == repository / "bert_onnx" / "1" / "model.onnx"
    assert (repository / "bert_onnx" / "config.pbtxt").read_bytes() == (COMMITTED_REPOSITORY / "bert_onnx" / "config.pbtxt").read_bytes()
    assert (repository / "qa_preprocess" / "1" / "tokenizer.json").is_file() and result.tokenizer_changed
    assert result.ensemble_config is None  # bert_qa is the committed template itself
    meta = json.loads((repository / "bert_onnx" / "1" / "export.json").read_text())
    assert meta["checkpoint_format"] == "hf" and meta["reports"]["onnx"]["max_abs_diff_start"] < 1e-3
    assert meta["reports"]["onnx"]["path"] == "bert_onnx/1/model.onnx"
    assert oct((repository / "bert_onnx" / "1" / "model.onnx").stat().st_mode & 0o777) == "0o644"
    from bertqa.repository import plan_loading

    loadable, skipped = plan_loading(repository)
    assert {"bert_onnx", "bert_qa", "qa_preprocess"} <= set(loadable), skipped


def test_export_dle_int8_into_repository(repository, dle_ckpt, tmp_path):
    result = export_to_repository(ExportOptions(checkpoint=dle_ckpt, format="onnx-int8", repository=repository,
                                                max_batch=32, max_eval=4))
    config = repo.parse_config((repository / "bert_onnx_int8" / "config.pbtxt").read_text(), "x")
    assert config.name == "bert_onnx_int8" and config.max_batch_size == 32
    ensemble = repo.parse_config((repository / "bert_qa_int8" / "config.pbtxt").read_text(), "x")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step][1] == "bert_onnx_int8"
    assert (repository / "bert_qa_int8" / "1").is_dir()
    int8 = result.reports["int8"]
    assert int8["size_bytes"] < int8["fp32_size_bytes"] and int8["speedup"] > 0
    if pipeline.DEFAULT_EVAL_FILE.is_file():
        assert int8["eval_questions"] == 4 and int8["fp32_f1"] is not None
    assert any("max_windows is 64 > --max-batch 32" in n for n in result.notes)


def test_failed_export_leaves_the_previous_model_intact(repository, hf_ckpt, dle_ckpt, monkeypatch):
    export_to_repository(ExportOptions(checkpoint=hf_ckpt, repository=repository))
    before = tree_snapshot(repository)

    real = pipeline.export_onnx

    def export_then_fail(*args, **kwargs):
        real(*args, **kwargs)  # a complete, valid model file is written into staging ...
        raise ExportValidationError("simulated failure half-way")  # ... then the export fails

    monkeypatch.setattr(pipeline, "export_onnx", export_then_fail)
    with pytest.raises(ExportValidationError, match="half-way"):
        export_to_repository(ExportOptions(checkpoint=dle_ckpt, repository=repository))
    assert tree_snapshot(repository) == before
    assert not list(repository.parent.glob(".bertqa-export-*"))


def test_interrupted_export_leaves_the_previous_model_intact(repository, hf_ckpt, dle_ckpt, monkeypatch):
    export_to_repository(ExportOptions(checkpoint=hf_ckpt, repository=repository))
    before = tree_snapshot(repository)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(repo, "onnx_io", interrupted)  # after the model file is staged, before the swap
    with pytest.raises(KeyboardInterrupt):
        export_to_repository(ExportOptions(checkpoint=dle_ckpt, repository=repository))
    assert tree_snapshot(repository) == before


def test_invalid_checkpoint_changes_nothing(repository, tmp_path):
    from bertqa.export.checkpoints import CheckpointError

    before = tree_snapshot(repository)
    with pytest.raises(CheckpointError):
        export_to_repository(ExportOptions(checkpoint=tmp_path / "missing", repository=repository))
    assert tree_snapshot(repository) == before


def test_tokenizer_change_flags_models_exported_from_another_checkpoint(repository, hf_ckpt, tmp_path):
    export_to_repository(ExportOptions(checkpoint=hf_ckpt, format="onnx-int8", repository=repository, no_eval=True))
    cased, _ = write_hf_checkpoint(tmp_path / "cased", cased=True, seed=9)
    result = export_to_repository(ExportOptions(checkpoint=cased, repository=repository))
    assert result.tokenizer_changed
    assert any("bert_onnx_int8 were exported from another one" in n for n in result.notes)
