#!/usr/bin/env bash
# Starts tritonserver over the mounted repository with exactly the models that can load, behind
# bertqa's supervisor (bertqa/supervisor.py, the same code as `bertqa serve`): the HTTP front owns
# port 8000 (body cap, content-type normalisation, 400s for malformed requests, honest readiness) and
# tritonserver's own HTTP endpoint moves to 127.0.0.1:8010; tritonserver is restarted if it dies and
# a model whose canary fails is reloaded through the admin API. gRPC (8001) and metrics (8002) are
# tritonserver's own.
# Extra arguments are passed through to tritonserver (compose: `command: ["bertqa-triton", ...]`).
#
# Why explicit model control rather than --exit-on-error=false --strict-readiness=false:
#   * a variant that was never exported is skipped on purpose (and logged), but a model that is
#     expected to load and fails still stops startup -- no silently half-working server;
#   * /v2/health/ready keeps meaning "every loaded model is ready", so the compose health check,
#     load balancers and Kubernetes probes can trust it;
#   * an operator holding the admin key can load a late-built variant (e.g. a TensorRT engine)
#     without a restart. Explicit mode opens the model-control API, hence the key below.
set -euo pipefail

repository="${TRITON_MODEL_REPOSITORY:-/models}"
log() { echo "[bertqa-triton] $*" >&2; }

here="$(dirname "$(readlink -f "$0")")"
mapfile -t models < <(python3 "$here/select_models.py" "$repository")
if [ "${#models[@]}" -eq 0 ]; then
    exit 1  # select_models.py has said why
fi

# Admin APIs (load/unload models, register shared memory, change trace/log settings) need the
# header `admin-key: $TRITON_ADMIN_KEY`. Without a configured key a random one is used and not
# printed: those APIs are then closed for this run. Inference, health, metadata, model config
# and statistics stay open to clients.
restricted="model-repository,shared-memory,trace,logging"
if [ -z "${TRITON_ADMIN_KEY:-}" ]; then
    TRITON_ADMIN_KEY="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
    log "TRITON_ADMIN_KEY not set: ${restricted} APIs are closed"
fi
export TRITON_ADMIN_KEY  # the supervisor reloads unhealthy models with it
if [[ ! "$TRITON_ADMIN_KEY" =~ ^[A-Za-z0-9._~-]{16,}$ ]]; then
    # It travels inside a tritonserver flag whose syntax uses ',', ':' and '='.
    log "TRITON_ADMIN_KEY must be at least 16 characters of A-Z a-z 0-9 . _ ~ - (e.g. openssl rand -hex 32)"
    exit 2
fi

args=(
    --model-repository="$repository"
    --model-control-mode=explicit
    --strict-readiness=true
    --exit-on-error=true
    --http-port=8000
    --grpc-port=8001
    --metrics-port=8002
    --metrics-address=0.0.0.0
    --allow-metrics=true
    --http-restricted-api="${restricted}:admin-key=${TRITON_ADMIN_KEY}"
    --grpc-restricted-protocol="${restricted}:admin-key=${TRITON_ADMIN_KEY}"
    --exit-timeout-secs="${TRITON_EXIT_TIMEOUT_SECS:-30}"
    --log-verbose="${TRITON_LOG_VERBOSE:-0}"
)
case "${BERTQA_GPU:-auto}" in
    0|false|no|off) args+=(--allow-gpu-metrics=false) ;;  # CPU host: no DCGM start-up noise
esac
for model in "${models[@]}"; do
    args+=(--load-model="$model")
done

log "loading: ${models[*]}"
exec bertqa-supervisor --max-body-bytes="${BERTQA_MAX_BODY_BYTES:-8388608}" -- tritonserver "${args[@]}" "$@"
