# syntax=docker/dockerfile:1
# Triton Inference Server 2.51.0 (NGC 24.10) -- the same release as the embedded CPU server that
# nvidia-pytriton 0.7.0 ships -- plus what bertqa's Python models import.
# Build context: the repository root (see docker-compose.yml and .dockerignore).

ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

# --- wheel of the project, built once; the runtime image gets no source tree -------------------
FROM ${TRITON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
RUN python3 -m pip wheel --no-deps --wheel-dir /wheels /src

# --- runtime ----------------------------------------------------------------------------------
FROM ${TRITON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The Python backend stub embeds the image's system python3 (3.10 in 24.10), so the packages go
# there. numpy < 2: with numpy 2 the 24.10 stub rejects BYTES outputs. tritonclient[grpc] brings
# the ModelConfig protobuf that bertqa.repository uses to decide which models can load; aiohttp and
# psutil run the supervisor (HTTP front, restarts, self-healing) that the entrypoint starts.
# onnxruntime is not installed: the image's native onnxruntime backend runs bert_onnx.
RUN python3 -m pip install \
        "numpy>=1.24,<2" \
        "tokenizers>=0.20,<0.23" \
        "protobuf" \
        "tritonclient[grpc]==2.51.0" \
        "aiohttp>=3.9,<4" \
        "psutil>=5.9"

COPY --from=wheel /wheels /tmp/wheels
# Smoke test: bertqa.text needs numpy/tokenizers, bertqa.repository needs the protobufs.
RUN python3 -m pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels \
    && python3 -c "import numpy, bertqa.text, bertqa.repository, bertqa.supervisor, bertqa.canary; assert int(numpy.__version__.split('.')[0]) < 2" \
    && command -v bertqa-supervisor

# `backend: "openvino"` models (the CPU default) run on the project's Python-based openvino backend,
# the code embedded mode runs and the tests exercise, instead of the image's native one: its r24.10
# src/openvino.cc pads every batch to max_batch_size (a lone 128-token window would run as 64 rows)
# and has no way to force FP32 on CPUs with BF16. Triton loads <backends>/openvino/model.py as a
# Python-based backend once the native library is gone.
RUN python3 -m pip install "openvino>=2025.0" \
    && rm -rf /opt/tritonserver/backends/openvino && mkdir -p /opt/tritonserver/backends/openvino \
    && cp "$(python3 -c 'import bertqa, pathlib; print(pathlib.Path(bertqa.__file__).parent / "backends" / "openvino" / "model.py")')" \
          /opt/tritonserver/backends/openvino/model.py \
    && python3 -c "import openvino, bertqa.openvino_runtime; print('openvino', openvino.__version__)"

COPY docker/triton/select_models.py /opt/bertqa/bin/select_models.py
COPY --chmod=755 docker/triton/entrypoint.sh /opt/bertqa/bin/bertqa-triton
ENV PATH=/opt/bertqa/bin:${PATH}

# The model repository is bind-mounted read-only at /models (docker-compose.yml).
EXPOSE 8000 8001 8002

# Non-root: uid 1000 is the image's triton-server user; numeric so it needs no passwd lookup.
USER 1000:1000

# No ENTRYPOINT override: the NGC entrypoint (CUDA compat setup, banner) runs this command.
CMD ["bertqa-triton"]
