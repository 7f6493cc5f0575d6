"""Shared fixtures: a model repository with the demo model and one real tritonserver per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bertqa.demo import DEMO_DIR, install_demo
from bertqa.server import DEFAULT_REPOSITORY, EmbeddedServer, free_ports  # noqa: F401 (re-exported)

MODEL_FILES = ("*.onnx", "*.onnx.data", "*.plan", "tokenizer.json", "export.json")




def committed_model_dirs() -> set[str]:
    """The model folders model_repository/ commits (not the variants `make serve` exports next to them)."""
    from bertqa.export.repository import committed_repository_files

    return {Path(p).parts[0] for p in committed_repository_files()}


def copy_repository_configs(target: Path) -> Path:
    """The committed repository (configs and model.py files) without exported model files or variants."""
    target.mkdir(parents=True, exist_ok=True)
    for name in committed_model_dirs():
        shutil.copytree(DEFAULT_REPOSITORY / name, target / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*MODEL_FILES))
    return target


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    if not (DEMO_DIR / "onnx" / "model.onnx").is_file():
        pytest.fail(f"the demo model is missing from {DEMO_DIR}; it is committed with the repository")
    target = copy_repository_configs(tmp_path_factory.mktemp("repo") / "model_repository")
    install_demo(target)
    add_unexported_tensorrt_variant(target)
    limit_windows(target, SESSION_MAX_WINDOWS)
    return target


# The session server allows fewer windows per request than the committed 512, so the tests that
# overflow the limit on purpose (bad input, eval's split-on-overflow) stay quick on 2 cores; the
# committed limit and 40,000-word contexts are tested on their own repository (test_export_serving).
SESSION_MAX_WINDOWS = 64


def limit_windows(repository: Path, max_windows: int) -> None:
    from bertqa.export.repository import parse_config, render_config

    path = repository / "qa_preprocess" / "config.pbtxt"
    config = parse_config(path.read_text(), str(path))
    config.parameters["max_windows"].string_value = str(max_windows)
    path.write_text(render_config(config))


def add_unexported_tensorrt_variant(repository: Path) -> None:
    """A TensorRT variant whose engine was never built (a CPU host): the server must skip it and serve the rest."""
    (repository / "bert_trt_unbuilt" / "1").mkdir(parents=True)
    (repository / "bert_trt_unbuilt" / "config.pbtxt").write_text(
        'name: "bert_trt_unbuilt"\nplatform: "tensorrt_plan"\nmax_batch_size: 8\n'
        'input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
        'output [ { name: "start_logits" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
    )


@pytest.fixture(scope="session")
def triton_server(repository, tmp_path_factory):
    http, grpc, metrics = free_ports(3)
    log = tmp_path_factory.mktemp("logs") / "tritonserver.log"
    server = EmbeddedServer(
        repository=repository, http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1", log_file=log
    )
    try:
        server.start()
    except Exception:
        if log.exists():
            print(log.read_text()[-5000:])
        raise
    yield server
    server.stop()


@pytest.fixture(scope="session")
def reference(repository):
    from bertqa.reference import ReferencePipeline

    return ReferencePipeline.from_repository(repository)
