"""TensorRT: profile shapes and argument checks run anywhere; engine builds need a GPU (marked gpu)."""

from __future__ import annotations

import importlib.util

import pytest

from bertqa.export import tensorrt as trt_mod
from bertqa.export.tensorrt import GPUUnavailableError, OptimizationProfile, check_build_arguments, profile_shapes

HAS_GPU = trt_mod.cuda_device_count() > 0
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_default_profiles_one_per_bucket():
    profiles = profile_shapes(64)
    assert profiles == [
        OptimizationProfile((1, 1), (64, 128), (64, 128)),
        OptimizationProfile((1, 129), (64, 256), (64, 256)),
        OptimizationProfile((1, 257), (64, 384), (64, 384)),
    ]
    # Every shape the pre-processing can send (batch 1..64, a bucket length) has exactly one profile.
    for batch in (1, 17, 64):
        for seq in (128, 256, 384):
            assert sum(p.contains(batch, seq) for p in profiles) == 1
    assert not any(p.contains(65, 128) or p.contains(1, 385) for p in profiles)


def test_profile_options():
    assert profile_shapes(8, (512,), opt_batch=4) == [OptimizationProfile((1, 1), (4, 512), (8, 512))]
    assert trt_mod.buckets_up_to(256) == (128, 256)
    assert trt_mod.buckets_up_to(200) == (128, 200)
    assert trt_mod.buckets_up_to(512) == (128, 256, 384, 512)


@pytest.mark.parametrize("args, kwargs, message", [
    ((0,), {}, "max batch must be a positive integer"),
    ((8, ()), {}, "at least one sequence length bucket"),
    ((8, (256, 128)), {}, "strictly increasing"),
    ((8, (128, 128)), {}, "strictly increasing"),
    ((8, (4,)), {}, "integers >= 8"),
    ((8, (128, 384)), {"max_position_embeddings": 256}, "exceeds the model's max_position_embeddings 256"),
    ((8,), {"opt_batch": 9}, r"opt batch 9 must be within 1..8"),
])
def test_profile_argument_checks(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        profile_shapes(*args, **kwargs)


@pytest.mark.parametrize("precision, sparsity, qdq, message", [
    ("int4", False, False, "precision must be one of"),
    ("int8", False, False, "built from a Q/DQ ONNX"),
    ("fp16", False, True, "cannot build a fp16 engine"),
    ("fp16", "yes", False, "sparsity must be True or False"),
])
def test_build_argument_checks(precision, sparsity, qdq, message):
    with pytest.raises(ValueError, match=message):
        check_build_arguments(precision, sparsity, qdq)
    check_build_arguments("fp16", True, False)
    check_build_arguments("int8", False, True)


@pytest.mark.skipif(HAS_GPU, reason="this host has a GPU")
def test_without_a_gpu_it_says_so():
    with pytest.raises(GPUUnavailableError, match="no NVIDIA GPU found"):
        trt_mod.require_gpu()


@pytest.mark.skipif(HAS_GPU, reason="this host has a GPU")
def test_build_engine_without_gpu_fails_before_building(tmp_path):
    from export_helpers import write_hf_checkpoint

    from bertqa.export.checkpoints import load_checkpoint
    from bertqa.export.onnx import export_onnx

    ckpt = load_checkpoint(write_hf_checkpoint(tmp_path / "ckpt")[0])
    onnx_file = export_onnx(ckpt.model, ckpt.save_tokenizer(tmp_path / "t.json"), tmp_path / "m.onnx", log=None).path
    with pytest.raises(GPUUnavailableError):
        trt_mod.build_engine(onnx_file, tmp_path / "model.plan", profile_shapes(4, (128,)))
    assert not (tmp_path / "model.plan").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_GPU and HAS_TENSORRT), reason="needs an NVIDIA GPU and the tensorrt package")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_build_and_parity(tmp_path, precision):
    from export_helpers import copy_repository_configs, write_hf_checkpoint

    from bertqa.export import repository as repo
    from bertqa.export.pipeline import ExportOptions, export_to_repository

    repository = copy_repository_configs(tmp_path / "model_repository")
    ckpt = write_hf_checkpoint(tmp_path / "ckpt")[0]
    result = export_to_repository(ExportOptions(checkpoint=ckpt, format="tensorrt", precision=precision,
                                                repository=repository, max_batch=8))
    assert result.model_file.name == "model.plan" and result.model_file.stat().st_size > 0
    config = repo.parse_config(result.config_path.read_text(), "bert_trt")
    assert config.platform == "tensorrt_plan" and list(config.instance_group[0].profile) == ["0", "1", "2"]
    report = result.reports["tensorrt"]
    assert report["max_abs_diff_start"] is not None
