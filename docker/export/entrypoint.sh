#!/usr/bin/env bash
# One-shot job of the `export` service: fill the shared model repository, exit 0 on success so
# that `triton` (depends_on: condition: service_completed_successfully) starts after it.
#
#   CHECKPOINT unset   -> `bertqa install-demo` (no-op when the repository already has a model)
#   CHECKPOINT set     -> `bertqa export` of the checkpoint mounted at /checkpoint, one run per
#                         format in EXPORT_FORMATS (auto: onnx + tensorrt with a GPU,
#                         onnx + onnx-int8 without one)
#   no GPU visible     -> then also the CPU default (CPU_DEFAULT_PRECISION, as `make serve`): the
#                         OpenVINO variant converted from the FP32 ONNX model, if not already
#                         converted from that very file
set -euo pipefail

repository="${MODEL_REPOSITORY:-/models}"
checkpoint_dir="${CHECKPOINT_DIR:-/checkpoint}"
formats="${EXPORT_FORMATS:-auto}"
mode="${EXPORT_MODE:-always}"
# The CPU default chosen by measurement (`make bench`, docs/BENCHMARKS.md); auto = bf16 on CPUs with native
# BF16, else int8 (decided by the conversion on this host); set but empty = none.
cpu_default="${CPU_DEFAULT_PRECISION-auto}"
log() { echo "[bertqa-export] $*" >&2; }
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

case "$cpu_default" in ""|auto|fp32|bf16|int8) ;; *) log "CPU_DEFAULT_PRECISION must be auto, fp32, bf16, int8 or empty, not '${cpu_default}'"; exit 2 ;; esac
case "$mode" in always|if-missing) ;; *) log "EXPORT_MODE must be always or if-missing, not '${mode}'"; exit 2 ;; esac

cpu_default_variant() {
    if [ -z "$cpu_default" ] || has_gpu; then
        return 0  # GPU hosts serve TensorRT / ONNX Runtime on the GPU
    fi
    if [ ! -f "$repository/bert_onnx/1/model.onnx" ]; then
        log "no GPU visible, but no FP32 ONNX model (bert_onnx) to convert the CPU default from: skipped"
        return 0
    fi
    log "no GPU visible: the CPU default, OpenVINO ${cpu_default}, from ${repository}/bert_onnx"
    python3 -m bertqa.export.openvino --repository "$repository" --precision "$cpu_default" --if-missing
}

if [ -z "${CHECKPOINT:-}" ]; then
    log "CHECKPOINT not set: installing the bundled demo model into ${repository}"
    bertqa install-demo --repository "$repository"
    cpu_default_variant
    log "done"
    exit 0
fi

# Docker creates a missing bind-mount source as an empty directory: say so instead of a traceback.
# (What the checkpoint must contain -- a Hugging Face folder or a DeepLearningExamples .pt with
# bert_config.json -- is checked by `bertqa export` itself.)
if [ -z "$(ls -A "$checkpoint_dir" 2>/dev/null)" ]; then
    log "CHECKPOINT=${CHECKPOINT} is empty or missing on the host; it must be a checkpoint directory"
    exit 2
fi

if [ "$formats" = "auto" ]; then
    if has_gpu; then
        formats="onnx tensorrt"
    else
        # Dynamic int8 ONNX helps on CPU only; GPUs get the TensorRT engine instead.
        log "no GPU visible: exporting ONNX and int8 ONNX, no TensorRT engine"
        formats="onnx onnx-int8"
    fi
fi

for format in ${formats//,/ }; do
    case "$format" in
        onnx) produced="bert_onnx/1/model.onnx" ;;
        onnx-int8) produced="bert_onnx_int8/1/model.onnx" ;;
        tensorrt)
            produced="bert_trt/1/model.plan"
            if ! has_gpu; then
                log "EXPORT_FORMATS asks for tensorrt but no GPU is visible to the export container"
                exit 2
            fi
            # An engine from another TensorRT would be refused by Triton at load time.
            python3 "$(dirname "$(readlink -f "$0")")/check_tensorrt.py" --strict
            ;;
        openvino|openvino-bf16|openvino-int8)
            precision="${format#openvino}"; precision="${precision#-}"
            produced="bert_openvino${precision:+_$precision}/1/model.xml" ;;
        *) log "unknown export format '${format}' (onnx, onnx-int8, tensorrt, openvino, openvino-bf16, openvino-int8)"; exit 2 ;;
    esac
    if [ "$mode" = "if-missing" ] && [ -f "$repository/$produced" ]; then
        log "${format}: ${produced} exists, skipped (EXPORT_MODE=if-missing)"
        continue
    fi
    # onnx-int8 compares SQuAD F1 with FP32 on the dev slice shipped in the package (bertqa/data).
    log "${format}: exporting ${CHECKPOINT}"
    case "$format" in
        openvino*) bertqa export --checkpoint "$checkpoint_dir" --format openvino --precision "${precision:-fp32}" \
                       --repository "$repository" ;;
        *) bertqa export --checkpoint "$checkpoint_dir" --format "$format" --repository "$repository" ;;
    esac
done
cpu_default_variant
log "done"
