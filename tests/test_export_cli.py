"""`bertqa export` / `python -m bertqa.export`: flags are honoured or rejected, never ignored."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bertqa.export.cli import EXIT_NO_GPU, EXIT_USAGE, main
from bertqa.export.tensorrt import cuda_device_count
from export_helpers import copy_repository_configs, tree_snapshot, write_hf_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_hf_checkpoint(tmp_path_factory.mktemp("hf") / "ckpt")[0]


@pytest.fixture
def repository(tmp_path):
    return copy_repository_configs(tmp_path / "model_repository")


@pytest.mark.parametrize("flags, message", [
    (["--sparsity"], "--sparsity only applies to --format tensorrt"),
    (["--format", "onnx-int8", "--sparsity"], "--sparsity only applies to --format tensorrt"),
    (["--precision", "int8"], "--precision int8 does not apply to --format onnx"),
    (["--precision", "fp16"], "add --gpu-accelerator tensorrt"),
    (["--format", "onnx-int8", "--precision", "fp16"], "--precision fp16 does not apply to --format onnx-int8"),
    (["--format", "tensorrt", "--precision", "int8"], "needs --calibration FILE"),
    (["--calibration", "{data}"], "--calibration applies to --format onnx-int8"),
    (["--format", "tensorrt", "--calibration", "{data}"], "only applies to TensorRT --precision int8, not fp16"),
    (["--format", "onnx-int8", "--calibration", "missing.json"], "missing.json: file not found"),
    (["--format", "onnx-int8", "--weight-storage", "fp16"], "--weight-storage fp16 only applies to --format onnx"),
    (["--format", "tensorrt", "--eval-file", "{data}"], "apply to ONNX formats"),
    (["--format", "onnx-int8", "--eval-file", "{data}", "--no-eval"], "contradict each other"),
    (["--format", "tensorrt", "--gpu-accelerator", "cuda"], "--format tensorrt is TensorRT itself"),
    (["--format", "onnx-int8", "--gpu-accelerator", "tensorrt"], "dynamic INT8 \\(MatMulInteger\\) cannot run in TensorRT"),
    (["--seq-buckets", "128,384"], "--seq-buckets/--opt-batch shape TensorRT profiles"),
    (["--opt-batch", "4"], "--seq-buckets/--opt-batch shape TensorRT profiles"),
    (["--workspace-gib", "2"], "--workspace-gib applies to TensorRT builds"),
    (["--opset", "23"], "--opset must be within 14..21"),
    (["--seq-len", "8"], "--seq-len must be within 16..4096"),
    (["--seq-len", "1024"], "--seq-len 1024 exceeds the model's max_position_embeddings 512"),
    (["--model-name", "../evil"], "invalid model name"),
    (["--ensemble-name", "qa_postprocess"], "distinct names, none of them qa_postprocess"),
    (["--format", "onnx-int8", "--model-name", "qa_preprocess"], "must not replace the pipeline's other models"),
])
def test_nonsense_combinations_are_rejected(flags, message, ckpt, repository, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "q", "context": "c"}\n')
    flags = [f.replace("{data}", str(data)) for f in flags]
    before = tree_snapshot(repository)
    code = main(["--checkpoint", str(ckpt), "--repository", str(repository), *flags])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_USAGE, err
    assert re.search(message, err), err
    assert tree_snapshot(repository) == before


def test_lowercase_flag_with_tokenizer_json_is_rejected(ckpt, repository, capsys):
    assert main(["--checkpoint", str(ckpt), "--repository", str(repository), "--lowercase"]) == EXIT_USAGE
    assert "lower-casing" in capsys.readouterr().err


@pytest.mark.skipif(cuda_device_count() > 0, reason="this host has a GPU")
def test_tensorrt_without_gpu_exits_nonzero_and_says_why(ckpt, repository, capsys):
    before = tree_snapshot(repository)
    code = main(["--checkpoint", str(ckpt), "--repository", str(repository), "--format", "tensorrt", "--sparsity"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_NO_GPU
    assert "TensorRT export needs an NVIDIA GPU" in err and "no NVIDIA GPU found" in err
    assert tree_snapshot(repository) == before


def test_export_succeeds_through_the_cli(ckpt, repository, capsys):
    assert main(["--checkpoint", str(ckpt), "--repository", str(repository), "--max-batch", "16"]) == 0
    assert 'max_batch_size: 16' in (repository / "bert_onnx" / "config.pbtxt").read_text()
    assert "installed bert_qa (qa_preprocess -> bert_onnx)" in capsys.readouterr().err


def test_registered_on_the_bertqa_cli():
    from bertqa.cli import build_parser

    args = build_parser().parse_args(["export", "--checkpoint", "x", "--format", "onnx-int8", "--max-batch", "8"])
    assert args.format == "onnx-int8" and args.max_batch == 8 and callable(args.func)


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "bertqa.export", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--checkpoint" in out.stdout and "--sparsity" in out.stdout


def test_bad_argument_values_are_argparse_errors(ckpt):
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", str(ckpt), "--max-batch", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ckpt), "--format", "tflite"])
