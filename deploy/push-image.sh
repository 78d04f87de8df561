#!/bin/bash
# Build the container image for a deployed stack and push it to the stack's ECR
# repository (`make image`, or deploy/push-image.sh [STACK]).
#
# The stack's outputs say where (EcrRepository), which tag the host runs
# (ImageTag) and for which platform (ImagePlatform: linux/arm64 for Graviton).
# Needs the AWS CLI v2 and Docker with buildx; building for another architecture
# than this machine's needs QEMU emulation (Docker Desktop has it; on Linux:
# `docker run --privileged --rm tonistiigi/binfmt --install arm64`).
#
# The host pulls the image each time the container starts, so the new image runs
# from the next wake on (`ocedge sleep` then `ocedge wake` to switch now).
set -euo pipefail

stack="${1:-${OCEDGE_STACK:-opencode-edge}}"
cd "$(dirname "$0")/.."

# The CLI's own region setting applies unless ocedge's is given.
if [ -n "${OCEDGE_AWS_REGION:-}" ]; then
    export AWS_REGION="$OCEDGE_AWS_REGION" AWS_DEFAULT_REGION="$OCEDGE_AWS_REGION"
fi

output() {
    aws cloudformation describe-stacks --stack-name "$stack" \
        --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}

repository="$(output EcrRepository)"
tag="$(output ImageTag)"
platform="$(output ImagePlatform)"
stack_region="$(output Region)"
for value in "$repository" "$tag" "$platform" "$stack_region"; do
    if [ -z "$value" ] || [ "$value" = None ]; then
        echo "push-image: stack '$stack' lacks the EcrRepository, ImageTag, ImagePlatform" \
            "or Region output: is it deployed (sam deploy)?" >&2
        exit 1
    fi
done

tags=(--tag "$repository:$tag")
if revision="$(git rev-parse --short=12 HEAD 2>/dev/null)"; then
    # An immutable name for this build as well, to go back to with ImageTag.
    tags+=(--tag "$repository:git-$revision")
fi

echo "push-image: building $platform image for stack '$stack' -> $repository:$tag"
aws ecr get-login-password --region "$stack_region" \
    | docker login --username AWS --password-stdin "${repository%%/*}"
# --provenance=false: a plain image manifest, not an index with attestations,
# which keeps ECR's "newest 5 images" lifecycle rule simple.
docker buildx build --platform "$platform" --provenance=false "${tags[@]}" --push .

echo "push-image: done. The host runs it from the container's next start."
