"""Generated configs and ensembles, atomic installation, and checkpoint -> repository exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertqa.export import pipeline
from bertqa.export import repository as repo
from bertqa.export.onnx import ExportValidationError
from bertqa.export.pipeline import ExportOptions, export_to_repository
from bertqa.export.tensorrt import profile_shapes
from bertqa.squad import dev_slice_path
from bertqa.repository import PipelineConfigError, check_window_capacity, plan_loading
from bertqa.text import WindowingConfig
from export_helpers import (COMMITTED_REPOSITORY, committed_model_dirs, copy_repository_configs, tree_snapshot,
                            write_dle_checkpoint, write_hf_checkpoint)

BERT_INPUTS = list(repo.BERT_INPUTS)
BERT_OUTPUTS = list(repo.BERT_OUTPUTS)


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


def test_committed_repository_is_exactly_what_the_generators_write():
    """Every config.pbtxt and model.py of model_repository/ is generated (protobuf + text_format)."""
    generated = repo.committed_repository_files()
    files = [p for p in COMMITTED_REPOSITORY.rglob("*") if p.is_file() and p.name in ("config.pbtxt", "model.py")]
    # Variants that `make serve` / `bertqa export` wrote into this checkout are not committed (.gitignore).
    ignored = set(_git_ignored(files))
    committed = {str(p.relative_to(COMMITTED_REPOSITORY)): p.read_text() for p in files if p not in ignored}
    assert committed == generated


def _git_ignored(paths: list[Path]) -> list[Path]:
    import subprocess

    root = COMMITTED_REPOSITORY.parent
    if not (root / ".git").exists() or not paths:
        return []
    result = subprocess.run(["git", "check-ignore", "--no-index", *map(str, paths)], cwd=root, capture_output=True,
                            text=True)
    return [Path(line) for line in result.stdout.splitlines()]


def test_every_model_py_is_the_one_generated_shim():
    """The sys.path shim is written once (python_model_source): the backends' model.py files too."""
    from bertqa.paths import PROJECT_ROOT

    for name, text in repo.BACKEND_SOURCES.items():
        assert (PROJECT_ROOT / "bertqa" / "backends" / name / "model.py").read_text() == text
    committed = [p for p in COMMITTED_REPOSITORY.rglob("model.py") if p.relative_to(COMMITTED_REPOSITORY).parts[0]
                 in committed_model_dirs()]
    shims = sorted((PROJECT_ROOT / "bertqa" / "backends").glob("*/model.py")) + committed
    assert len(shims) == len(repo.BACKEND_SOURCES) + 2


def test_windowing_parameters_of_the_committed_preprocess_are_windowing_config_defaults():
    from google.protobuf import json_format

    from bertqa.triton.params import PreprocessParameters, parse_parameters

    config = repo.parse_config((COMMITTED_REPOSITORY / "qa_preprocess" / "config.pbtxt").read_text(), "qa_preprocess")
    params = parse_parameters(json_format.MessageToDict(config, preserving_proto_field_name=True), PreprocessParameters)
    assert params.windowing() == WindowingConfig() and params.bert_model == "bert_onnx"


def test_only_qa_preprocess_has_a_dynamic_batcher():
    """qa_preprocess batches across requests; behind it a Triton 2.51 dynamic batcher would busy-wait on
    requests of mixed shapes (sequence buckets, window counts) while the instance is busy."""
    profiles = profile_shapes(16, (128, 384))
    configs = {
        "onnx": repo.onnx_model_config("m", BERT_INPUTS, BERT_OUTPUTS),
        "tensorrt": repo.tensorrt_model_config("t", BERT_INPUTS, BERT_OUTPUTS, profiles, max_batch_size=16),
        "postprocess": repo.postprocess_config(),
        "committed bert_onnx": (COMMITTED_REPOSITORY / "bert_onnx" / "config.pbtxt").read_text(),
        "committed qa_postprocess": (COMMITTED_REPOSITORY / "qa_postprocess" / "config.pbtxt").read_text(),
    }
    for label, text in configs.items():
        assert not repo.parse_config(text, label).HasField("dynamic_batching"), label
        assert "busy-waits" in text, label  # the config says why
    preprocess = repo.preprocess_config("qa_preprocess_x", WindowingConfig(), "m")
    assert repo.parse_config(preprocess, "qa_preprocess_x").HasField("dynamic_batching")


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
def test_each_variant_has_its_own_preprocessing_and_ensemble(variant):
    v = repo.VARIANTS[variant]
    ensemble = repo.parse_config(repo.ensemble_config(v), v.ensemble_name)
    assert ensemble.name == v.ensemble_name
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [v.preprocess_name, "qa_postprocess"]
    pre = repo.parse_config(repo.preprocess_config(v.preprocess_name, WindowingConfig(), v.model_name), "x")
    assert pre.name == v.preprocess_name and pre.parameters["bert_model"].string_value == v.model_name
    assert len({v.model_name, v.preprocess_name, v.ensemble_name} & {"bert_onnx", "qa_preprocess", "bert_qa"}) == 0


def test_onnx_io_reads_the_exported_graph(tmp_path, hf_ckpt):
    from bertqa.export.checkpoints import load_checkpoint
    from bertqa.export.onnx import export_onnx

    ckpt = load_checkpoint(hf_ckpt)
    out = export_onnx(ckpt.model, ckpt.save_tokenizer(tmp_path / "t.json"), tmp_path / "m.onnx", log=None).path
    assert repo.onnx_io(out) == (BERT_INPUTS, BERT_OUTPUTS)


# --------------------------------------------------------------------------------------------------
# Atomic installation


def test_staged_export_swaps_in_and_failure_leaves_old_models(repository):
    before = tree_snapshot(repository)
    with pytest.raises(RuntimeError, match="boom"):
        with repo.StagedExport(repository) as staged:
            (staged.version_dir("bert_onnx") / "model.onnx").write_bytes(b"half-written")
            raise RuntimeError("boom")
    assert tree_snapshot(repository) == before
    assert not list(repository.parent.glob(".bertqa-export-*"))

    with repo.StagedExport(repository) as staged:
        (staged.version_dir("bert_onnx") / "model.onnx").write_bytes(b"new")
        (staged.folder("bert_onnx") / "config.pbtxt").write_text('name: "bert_onnx"\n')
        staged.commit()
    assert (repository / "bert_onnx" / "1" / "model.onnx").read_bytes() == b"new"
    assert not list(repository.parent.glob(".bertqa-export-*"))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_failing_swap_puts_back_the_folders_already_swapped(repository, monkeypatch, exchange):
    """The BERT model, the pre-processing (tokenizer) and the ensemble go in together or not at all."""
    if not exchange:
        monkeypatch.setattr(repo, "_renameat2_exchange", lambda a, b: False)
    before = tree_snapshot(repository)
    real_swap = repo.StagedExport._swap

    def swap(self, name):
        if name == "qa_preprocess":
            raise OSError("disk full while swapping qa_preprocess")
        return real_swap(self, name)

    monkeypatch.setattr(repo.StagedExport, "_swap", swap)
    with pytest.raises(OSError, match="disk full"):
        with repo.StagedExport(repository) as staged:
            (staged.version_dir("bert_onnx") / "model.onnx").write_bytes(b"new model")
            (staged.version_dir("qa_preprocess") / "tokenizer.json").write_text("new tokenizer")
            staged.commit()
    assert tree_snapshot(repository) == before


def test_staged_export_refuses_when_a_newer_version_would_shadow_it(repository):
    (repository / "bert_onnx" / "2").mkdir()
    with repo.StagedExport(repository) as staged:
        staged.version_dir("bert_onnx")
        with pytest.raises(repo.RepositoryError, match=r"bert_onnx/2: a newer version exists"):
            staged.commit()


def test_window_capacity_rule_names_both_numbers(repository):
    assert check_window_capacity(repository, "qa_preprocess", "bert_onnx", 512) == 64
    with pytest.raises(PipelineConfigError, match=r"max_windows 513 exceeds qa_postprocess's max_batch_size 512"):
        check_window_capacity(repository, "qa_preprocess", "bert_onnx", 513)
    with pytest.raises(PipelineConfigError, match="bert_model 'nope' is not in the model repository"):
        check_window_capacity(repository, "qa_preprocess", "nope", 8)


# --------------------------------------------------------------------------------------------------
# End to end (no server): checkpoint -> repository


def test_export_hf_onnx_into_repository(repository, hf_ckpt):
    result = export_to_repository(ExportOptions(checkpoint=hf_ckpt, repository=repository))
    assert result.model_file == repository / "bert_onnx" / "1" / "model.onnx"
    for name in ("bert_onnx", "qa_preprocess", "bert_qa"):  # regenerated exactly as committed
        assert (repository / name / "config.pbtxt").read_bytes() == (COMMITTED_REPOSITORY / name / "config.pbtxt").read_bytes()
    assert (repository / "qa_preprocess" / "1" / "tokenizer.json").is_file()
    meta = json.loads((repository / "bert_onnx" / "1" / "export.json").read_text())
    assert meta["checkpoint_format"] == "hf" and meta["reports"]["onnx"]["max_abs_diff_start"] < 1e-3
    assert meta["reports"]["onnx"]["path"] == "bert_onnx/1/model.onnx"
    assert oct((repository / "bert_onnx" / "1" / "model.onnx").stat().st_mode & 0o777) == "0o644"
    loadable, skipped = plan_loading(repository)
    assert {"bert_onnx", "bert_qa", "qa_preprocess"} <= set(loadable), skipped


def test_export_into_a_new_directory_creates_a_complete_repository(tmp_path, hf_ckpt):
    target = tmp_path / "fresh" / "repo"
    export_to_repository(ExportOptions(checkpoint=hf_ckpt, format="onnx-int8", repository=target, no_eval=True))
    loadable, skipped = plan_loading(target)
    assert sorted(loadable) == ["bert_onnx_int8", "bert_qa_int8", "qa_postprocess", "qa_preprocess_int8"], skipped
    assert (target / "qa_postprocess" / "config.pbtxt").read_text() == repo.postprocess_config()
    assert not list(target.parent.glob(".bertqa-export-*"))


def test_failed_export_into_a_new_directory_leaves_nothing(tmp_path, monkeypatch, hf_ckpt):
    monkeypatch.setattr(repo, "onnx_io", lambda path: (_ for _ in ()).throw(RuntimeError("simulated")))
    with pytest.raises(RuntimeError, match="simulated"):
        export_to_repository(ExportOptions(checkpoint=hf_ckpt, repository=tmp_path / "new"))
    assert list(tmp_path.iterdir()) == []


def test_variants_of_different_checkpoints_keep_their_own_tokenizers(repository, hf_ckpt, tmp_path):
    export_to_repository(ExportOptions(checkpoint=hf_ckpt, repository=repository))
    fp32_tokenizer = (repository / "qa_preprocess" / "1" / "tokenizer.json").read_bytes()
    cased, _ = write_hf_checkpoint(tmp_path / "cased", cased=True, seed=9)
    export_to_repository(ExportOptions(checkpoint=cased, format="onnx-int8", repository=repository, no_eval=True))
    assert (repository / "qa_preprocess" / "1" / "tokenizer.json").read_bytes() == fp32_tokenizer
    int8_tokenizer = (repository / "qa_preprocess_int8" / "1" / "tokenizer.json").read_bytes()
    assert int8_tokenizer != fp32_tokenizer and b'"Paris"' in int8_tokenizer


def test_export_keeps_the_variants_windowing_and_takes_max_windows(repository, hf_ckpt):
    config = repository / "qa_preprocess" / "config.pbtxt"
    config.write_text(config.read_text().replace('"128,192,256,320,384"', '"256,384"'))
    result = export_to_repository(ExportOptions(checkpoint=hf_ckpt, repository=repository, max_windows=100))
    assert result.windowing == WindowingConfig(seq_len_buckets=(256, 384), max_windows=100)
    with pytest.raises(repo.RepositoryError, match=r"max_windows 600 exceeds qa_postprocess's max_batch_size 512"):
        export_to_repository(ExportOptions(checkpoint=hf_ckpt, repository=repository, max_windows=600))


def test_export_dle_int8_into_repository(repository, dle_ckpt, tmp_path):
    result = export_to_repository(ExportOptions(checkpoint=dle_ckpt, format="onnx-int8", repository=repository,
                                                max_batch=32, max_eval=4))
    config = repo.parse_config((repository / "bert_onnx_int8" / "config.pbtxt").read_text(), "x")
    assert config.name == "bert_onnx_int8" and config.max_batch_size == 32
    ensemble = repo.parse_config((repository / "bert_qa_int8" / "config.pbtxt").read_text(), "x")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["qa_preprocess_int8", "qa_postprocess"]
    assert (repository / "bert_qa_int8" / "1").is_dir()
    int8 = result.reports["int8"]
    assert int8["size_bytes"] < int8["fp32_size_bytes"] and int8["speedup"] > 0
    # The default evaluation file is the committed SQuAD dev slice (package data), not a test fixture.
    assert pipeline.default_eval_file() == dev_slice_path() and Path(int8["eval_file"]) == dev_slice_path()
    assert int8["eval_questions"] == 4 and int8["fp32_f1"] is not None


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


