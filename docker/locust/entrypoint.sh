#!/usr/bin/env bash
# `locust` with the project's locustfile; compose passes --master or --worker as arguments.
# The LOADTEST_* variables become the locustfile's own options only when set, so an empty value
# means "the locustfile's default" instead of an empty string option.
set -euo pipefail

args=(-f "${LOCUSTFILE:-/opt/bertqa/loadtest/locustfile.py}")
[ -n "${LOADTEST_MODEL:-}" ] && args+=(--model "$LOADTEST_MODEL")
[ -n "${LOADTEST_PROTOCOL:-}" ] && args+=(--protocol "$LOADTEST_PROTOCOL")
[ -n "${LOADTEST_DATA:-}" ] && args+=(--data "$LOADTEST_DATA")

# Run options matter on the master only (it drives the workers).
if [[ " $* " == *" --master "* ]]; then
    case "${LOADTEST_HEADLESS:-false}" in
        1|true|yes|on) args+=(--headless) ;;
    esac
    [ -n "${LOADTEST_RUN_TIME:-}" ] && args+=(--run-time "$LOADTEST_RUN_TIME")
fi

exec locust "${args[@]}" "$@"
