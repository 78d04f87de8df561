#!/bin/sh
# The streaming front door: AWS Lambda Web Adapter (a layer, started through
# AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap) runs this script as the function's
# handler, waits until AWS_LWA_READINESS_CHECK_PATH (/_edge/health, which never
# touches the container) answers, then relays each invocation to it as HTTP and
# streams the response back (AWS_LWA_INVOKE_MODE=response_stream).
set -eu
cd "$(dirname "$0")/.."
export PYTHONPATH="${LAMBDA_TASK_ROOT:-$PWD}${PYTHONPATH:+:$PYTHONPATH}"
# --no-proxy-headers: the edge itself decides whether to trust X-Forwarded-*
# (OCEDGE_TRUST_FORWARDED), never uvicorn.
exec python3 -m uvicorn edge.app:app \
    --host 127.0.0.1 --port "${AWS_LWA_PORT:-8080}" \
    --no-proxy-headers --no-server-header --log-level warning --lifespan on
