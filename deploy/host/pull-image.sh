#!/bin/bash
# ExecStartPre of ocedge.service: log in to the stack's ECR repository with the
# instance role and pull the image, so an image pushed by `make image` runs from
# the next wake on. Superseded image layers are removed: the disk is billed.
set -euo pipefail

registry="${IMAGE_URI%%/*}"
aws ecr get-login-password --region "$AWS_REGION" \
    | docker login --username AWS --password-stdin "$registry"
docker pull --quiet "$IMAGE_URI"
docker image prune --force
