#!/bin/bash
# Was a start of the container asked of this instance? The host's decision at every
# boot (user-data.sh) and the rehearsal's (infra/emulated_aws.py): exit 0 "yes, start
# it", 1 "no: nothing was asked of this instance, power off again", 2 "the state item
# could not be read" (after three tries; the host powers off as well, and the waker
# gives the start up once its budget is spent).
#
# Asked means: the deployment's state item (infra/aws/__init__.py) is "starting" and
# its "host" is this instance, i.e. a wake took the start lease for it. A boot that
# CloudFormation caused (a stack update, the first deploy), or a start asked of an
# instance the stack has since replaced, finds something else and powers off, so no
# second container ever runs against the workspace bucket.
#
# Reads its settings from container.env (the table, the region, this instance's id;
# OCEDGE_AWS_ENDPOINT only in the rehearsal) under $DESTDIR, with the instance role's
# credentials (dynamodb:GetItem on the state table).
set -euo pipefail

root="${DESTDIR:-}"
set -a
# shellcheck source=/dev/null
. "$root/etc/ocedge/container.env"
set +a

endpoint=()
if [ -n "${OCEDGE_AWS_ENDPOINT:-}" ]; then
    endpoint=(--endpoint-url "$OCEDGE_AWS_ENDPOINT")
fi

answer=""
for attempt in 1 2 3; do
    # --query text output: "<status>\t<host>", "None" for a missing attribute or item.
    if answer="$(aws dynamodb get-item "${endpoint[@]}" --region "$AWS_REGION" \
            --table-name "$OCEDGE_STATE_TABLE" --key '{"pk": {"S": "state"}}' \
            --consistent-read --query '[Item.status.S, Item.host.S]' --output text)"; then
        break
    fi
    answer=""
    echo "start-requested: could not read the state item (attempt $attempt)" >&2
    sleep "$attempt"
done
if [ -z "$answer" ]; then
    exit 2
fi

read -r status host <<<"$answer"
if [ "$status" = starting ] && [ "$host" = "$OCEDGE_INSTANCE_ID" ]; then
    echo "start-requested: a start was asked of $OCEDGE_INSTANCE_ID"
    exit 0
fi
echo "start-requested: nothing asked of $OCEDGE_INSTANCE_ID (the deployment is $status on $host)"
exit 1
