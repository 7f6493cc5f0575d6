# syntax=docker/dockerfile:1
# Exports checkpoints into the model repository (`bertqa export`, `bertqa install-demo`).
# Derived from the Triton image on purpose: a serialized TensorRT engine only loads in the exact
# TensorRT version that built it, so the builder uses the TensorRT of the server that serves it.
# Build context: the repository root.

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

# TensorRT Python bindings matching the image's libnvinfer (NGC 24.10: TensorRT 10.5.0.18; PyPI
# publishes it as tensorrt-cu12 10.5.0). check_tensorrt.py fails the build on a mismatch.
ARG TENSORRT_VERSION=10.5.0
# Exporting runs PyTorch on the CPU only (ONNX tracing); the CPU wheel saves gigabytes.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    # Never reach a model hub at run time: checkpoints come from the mounted directory.
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    # install-demo copies the committed demo model from here.
    BERTQA_DEMO_DIR=/opt/bertqa/src/demo_model \
    PATH=/opt/bertqa/bin:${PATH}

COPY docker/export/check_tensorrt.py /opt/bertqa/bin/check_tensorrt.py
# Pinned explicitly, not via the project's unpinned `tensorrt` extra.
RUN python3 -m pip install "tensorrt-cu12==${TENSORRT_VERSION}" \
    && python3 /opt/bertqa/bin/check_tensorrt.py

COPY . /opt/bertqa/src
# A `+cpu` local version from TORCH_INDEX_URL satisfies the project's torch pin and wins over
# PyPI's CUDA build.
RUN python3 -m pip install --extra-index-url "${TORCH_INDEX_URL}" "/opt/bertqa/src[export]" \
    && bertqa --help >/dev/null

COPY --chmod=755 docker/export/entrypoint.sh /opt/bertqa/bin/bertqa-export

WORKDIR /tmp
# No ENTRYPOINT override: the NGC entrypoint (CUDA compat setup) runs this command.
CMD ["bertqa-export"]
