"""`bertqa export`: a checkpoint into the Triton model repository (also `python -m bertqa.export`).

    bertqa export --checkpoint PATH --format onnx|onnx-int8|tensorrt|openvino [--precision fp32|fp16|bf16|int8]
                  [--sparsity] [--max-batch N] [--seq-len 384] [--max-windows 512] [--repository DIR] ...

Exit status: 0 exported; 2 invalid options or checkpoint; 3 TensorRT without a GPU/TensorRT;
1 the export failed validation or another error (the repository is left as it was).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_GPU = 0, 1, 2, 3


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _buckets(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of lengths, e.g. 128,256,384") from None


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from bertqa.export.pipeline import FORMATS

    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="Hugging Face BertForQuestionAnswering folder, or a DeepLearningExamples .pt "
                             "(with bert_config.json and vocab.txt beside it)")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="onnx (FP32, bert_onnx), onnx-int8 (bert_onnx_int8), tensorrt (bert_trt, GPU only), "
                             "openvino (OpenVINO IR: bert_openvino, bert_openvino_bf16, bert_openvino_int8)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"), default=None,
                        help="onnx: fp32 (fp16 with --gpu-accelerator tensorrt); onnx-int8: int8; "
                             "tensorrt: fp32, fp16 (default) or int8 (needs --calibration); "
                             "openvino: fp32 (default), bf16 or int8 (NNCF, calibrated on real SQuAD questions)")
    parser.add_argument("--sparsity", action="store_true", help="tensorrt: enable 2:4 sparse-weight kernels")
    parser.add_argument("--max-batch", type=_positive_int, default=64, help="max_batch_size / largest profile batch")
    parser.add_argument("--seq-len", type=_positive_int, default=None,
                        help="window length (default: the variant's current max_seq_len, else 384 or the model's "
                             "positions); also TensorRT's largest profile")
    parser.add_argument("--max-windows", type=_positive_int, default=None,
                        help="most windows one request may need, beyond it HTTP 400 (default: the variant's "
                             "current max_windows, else 512; README \"Long documents\")")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="model repository to install into; created (complete and servable) if missing")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 14..21 (default 17)")
    parser.add_argument("--weight-storage", choices=("fp32", "fp16"), default="fp32",
                        help="onnx: store weights as FP16 + Cast (half the file, FP32 compute; only if lossless)")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="SQuAD JSON or JSONL questions/contexts: static Q/DQ INT8 (onnx-int8, tensorrt int8), "
                             "openvino int8 (default: the committed SQuAD dev slice)")
    parser.add_argument("--eval-file", type=Path, default=None,
                        help="SQuAD file for EM/F1 (onnx-int8 and openvino default: the committed SQuAD v1.1 dev slice)")
    parser.add_argument("--no-eval", action="store_true", help="onnx-int8: skip the F1 comparison")
    parser.add_argument("--max-eval", type=_positive_int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--gpu-accelerator", choices=("cuda", "tensorrt"), default=None,
                        help="ONNX formats: ONNX Runtime execution provider for GPU hosts in config.pbtxt")
    parser.add_argument("--seq-buckets", type=_buckets, default=None,
                        help="TensorRT profiles' sequence buckets (default: qa_preprocess's seq_len_buckets)")
    parser.add_argument("--opt-batch", type=_positive_int, default=None, help="TensorRT profiles' optimal batch")
    parser.add_argument("--workspace-gib", type=float, default=None, help="TensorRT builder workspace (default 4)")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                        help="lower-case inputs (checkpoints with vocab.txt only; default: from the config/vocabulary)")
    parser.add_argument("--bert-config", type=Path, default=None, help="DLE: bert_config.json (default: beside the .pt)")
    parser.add_argument("--vocab", type=Path, default=None, help="DLE: vocab.txt (default: beside the .pt)")
    parser.add_argument("--model-name", default=None, help="override the model name (default per format)")
    parser.add_argument("--ensemble-name", default=None, help="override the ensemble name (default per format)")
    parser.add_argument("--atol", type=float, default=1e-3, help="ONNX vs PyTorch tolerance on logits")
    parser.set_defaults(func=run)
    return parser


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Registers `export` on the `bertqa` CLI's subparsers."""
    parser = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX / INT8 ONNX / TensorRT into the model repository",
        description=__doc__.split("\n\n")[0],
    )
    return configure_parser(parser)


register = add_export_parser  # the name bertqa.cli looks for


def options_from_args(args: argparse.Namespace):
    from bertqa.export.pipeline import ExportOptions

    return ExportOptions(
        checkpoint=args.checkpoint, format=args.format, precision=args.precision, sparsity=args.sparsity,
        max_batch=args.max_batch, seq_len=args.seq_len, max_windows=args.max_windows, repository=args.repository, opset=args.opset,
        weight_storage=args.weight_storage, calibration=args.calibration, eval_file=args.eval_file,
        no_eval=args.no_eval, max_eval=args.max_eval, gpu_accelerator=args.gpu_accelerator,
        seq_buckets=args.seq_buckets, opt_batch=args.opt_batch, workspace_gib=args.workspace_gib,
        lowercase=args.lowercase, bert_config=args.bert_config, vocab=args.vocab,
        model_name=args.model_name, ensemble_name=args.ensemble_name, atol=args.atol,
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bertqa.export.checkpoints import CheckpointError
    from bertqa.export.evaluation import DataFileError
    from bertqa.export.pipeline import ExportOptionsError, check_options, export_to_repository
    from bertqa.export.tensorrt import GPUUnavailableError

    console = Console(stderr=True)
    options = options_from_args(args)
    try:
        check_options(options)
        export_to_repository(options, console=console)
    except (ExportOptionsError, CheckpointError, DataFileError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        return EXIT_USAGE
    except GPUUnavailableError as err:
        console.print(f"[red]error:[/red] TensorRT export needs an NVIDIA GPU: {err}", highlight=False)
        return EXIT_NO_GPU
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]: the repository was left as it was")
        return 130
    except Exception as err:  # validation failures, repository problems
        console.print(f"[red]export failed[/red] ({type(err).__name__}): {err}", highlight=False)
        console.print(f"{args.repository} was left as it was")
        return EXIT_ERROR
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m bertqa.export", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
