"""TensorRT: profile shapes and argument checks run anywhere; engine builds need a GPU (marked gpu)."""

from __future__ import annotations

import importlib.util

import pytest

from bertqa.export import tensorrt as trt_mod
from bertqa.export.tensorrt import GPUUnavailableError, OptimizationProfile, check_build_arguments, profile_shapes
from bertqa.text import WindowingConfig

HAS_GPU = trt_mod.cuda_device_count() > 0
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_profiles_one_per_bucket():
    profiles = profile_shapes(64, (128, 256, 384))
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


def test_default_profiles_are_the_serving_buckets():
    assert [p.max[1] for p in profile_shapes(8)] == list(WindowingConfig().seq_len_buckets)


def test_profile_options():
    assert profile_shapes(8, (512,), opt_batch=4) == [OptimizationProfile((1, 1), (4, 512), (8, 512))]


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


# --------------------------------------------------------------------------------------------------
# GPU resources are released: TensorRTSession with fake TensorRT/CUDA objects (no GPU needed)


class FakeDriver:
    """Counts what the session retains, allocates and releases."""

    live: list = []

    def __init__(self):
        self.retained = True
        self.allocations: set[int] = set()
        self.allocated = 0
        FakeDriver.live.append(self)

    def close(self):
        self.retained = False

    def alloc(self, nbytes):
        self.allocated += 1
        pointer = 0x1000 + self.allocated
        self.allocations.add(pointer)
        return pointer

    def free(self, pointer):
        self.allocations.remove(pointer)

    def upload(self, pointer, array):
        assert pointer in self.allocations

    def download(self, array, pointer):
        array[...] = 1.5

    def synchronize(self):
        pass


class FakeContext:
    def __init__(self, engine, fail):
        self.engine, self.fail, self.shapes = engine, fail, {}

    def set_optimization_profile_async(self, index, stream):
        pass

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape

    def set_tensor_address(self, name, pointer):
        pass

    def get_tensor_shape(self, name):
        return self.shapes["input_ids"]

    def execute_async_v3(self, stream):
        return not self.fail


class FakeEngine:
    names = ("input_ids", "start_logits")

    def __init__(self, fail=False):
        self.fail, self.contexts = fail, []
        self.num_io_tensors = len(self.names)

    def create_execution_context(self):
        self.contexts.append(FakeContext(self, self.fail))
        return self.contexts[-1]

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "input" if name == "input_ids" else "output"

    def get_tensor_dtype(self, name):
        return "DataType.INT64" if name == "input_ids" else "DataType.FLOAT"


class FakeTensorRT:
    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class TensorIOMode:
        OUTPUT = "output"


def test_session_releases_the_cuda_context_buffers_and_execution_contexts():
    import gc
    import weakref

    import numpy as np

    engine = FakeEngine()
    with trt_mod.TensorRTSession(trt=FakeTensorRT, driver=FakeDriver) as session:
        driver = session.cuda
        for _ in range(3):
            out = session.run_engine(engine, 0, {"input_ids": np.zeros((2, 8), np.int64)})
            assert out["start_logits"].shape == (2, 8) and not driver.allocations
        assert len(engine.contexts) == 1  # one execution context per engine, reused
        context = weakref.ref(engine.contexts.pop())
    gc.collect()
    assert context() is None, "the execution context outlived the session"
    assert not driver.retained and session.cuda is None, "the CUDA primary context was not released"


def test_session_frees_device_memory_and_releases_the_context_when_a_run_fails():
    import numpy as np

    with pytest.raises(RuntimeError, match="TensorRT execution failed"):
        with trt_mod.TensorRTSession(trt=FakeTensorRT, driver=FakeDriver) as session:
            driver = session.cuda
            session.run_engine(FakeEngine(fail=True), 0, {"input_ids": np.zeros((1, 8), np.int64)})
    assert driver.allocated == 2 and not driver.allocations
    assert not driver.retained


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_GPU and HAS_TENSORRT), reason="needs an NVIDIA GPU and TensorRT")
def test_real_engine_runs_repeatedly_without_leaking_device_memory(tmp_path):
    """On a GPU: build a tiny engine, run it many times in one session; device memory stays flat."""
    import ctypes

    import numpy as np
    from export_helpers import write_hf_checkpoint

    from bertqa.export.checkpoints import load_checkpoint
    from bertqa.export.onnx import export_onnx

    ckpt = load_checkpoint(write_hf_checkpoint(tmp_path / "ckpt")[0])
    onnx_file = export_onnx(ckpt.model, ckpt.save_tokenizer(tmp_path / "t.json"), tmp_path / "m.onnx", log=None).path
    feeds = {n: np.ones((2, 128), np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")}
    libcuda = ctypes.CDLL("libcuda.so.1")

    def free_bytes() -> int:
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        assert libcuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)) == 0
        return free.value

    with trt_mod.TensorRTSession() as session:
        _report, engine = session.build_engine(onnx_file, tmp_path / "model.plan", profile_shapes(4, (128,)), log=None)
        session.run_engine(engine, 0, feeds)
        baseline = free_bytes()
        for _ in range(50):
            assert session.run_engine(engine, 0, feeds)["start_logits"].shape == (2, 128)
        assert baseline - free_bytes() < 4 << 20, "device memory grew with every run"
        assert len(session.contexts) == 1
        driver = session.cuda
    assert not driver.retained and not session.contexts and not session.engines
