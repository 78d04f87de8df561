#!/bin/sh
# The streaming front door: AWS Lambda Web Adapter (a layer, started through
# AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap) runs this script as the function's
# handler, waits until AWS_LWA_READINESS_CHECK_PATH (/_edge/health, which never
# touches the container) answers, then relays each invocation to it as HTTP and
# streams the response back (AWS_LWA_INVOKE_MODE=response_stream).
set -eu
cd "$(dirname "$0")/.."
export PYTHONPATH="${LAMBDA_TASK_ROOT:-$PWD}${PYTHONPATH:+:$PYTHONPATH}"
# The client address comes from the request context the adapter writes into the
# x-amzn-request-context header, replacing any copy a client sent (edge/request.py).
export OCEDGE_WEB_ADAPTER=true
# --no-proxy-headers: the edge itself decides whether to trust X-Forwarded-*
# (OCEDGE_TRUST_FORWARDED), never uvicorn.
# edge.server's protocol: httptools, the response head written with its body.
exec python3 -m uvicorn edge.app:app --loop uvloop --http edge.server:HttpProtocol \
    --host 127.0.0.1 --port "${AWS_LWA_PORT:-8080}" \
    --no-proxy-headers --no-server-header --log-level warning --lifespan on
