#!/bin/bash
# opencode-edge host set-up, run by cloud-init at every boot (see cloud-config.yaml):
# install Docker once, write the container's unit and settings from the stack's
# values, and start the container. A stack value is written as its name between
# two at-signs; deploy/render.py turns those into Fn::Sub references.
set -euo pipefail

# Tests run this script against a scratch root; on the instance it is empty.
root="${DESTDIR:-}"

if ! command -v docker >/dev/null 2>&1; then
    dnf install --assumeyes --quiet docker
fi

install -d -m 0755 "$root/etc/ocedge" "$root/etc/systemd/system" "$root/usr/local/libexec/ocedge"

# The host side: which image to run, where its logs go.
cat > "$root/etc/ocedge/host.env" <<'SETTINGS'
IMAGE_URI=@Repository.RepositoryUri@:@ImageTag@
AWS_REGION=@AWS::Region@
LOG_GROUP=@ContainerLogGroup@
SETTINGS

# The container's settings (infra/settings.py). Nothing here is secret: the server
# secrets live in the SSM parameter, provider keys sealed in the keys table.
cat > "$root/etc/ocedge/container.env" <<'SETTINGS'
OCEDGE_BACKEND=aws
OCEDGE_WORKSPACE=s3
OCEDGE_S3_BUCKET=@Bucket@
OCEDGE_S3_PREFIX=workspace
OCEDGE_KEYS_TABLE=@KeysTable@
OCEDGE_STATE_TABLE=@StateTable@
OCEDGE_SECRETS_PARAMETER=@SecretsParameter@
OCEDGE_IDLE_TIMEOUT=@IdleTimeout@
OCEDGE_GATE=true
OCEDGE_GATE_PORT=@GatePort@
AWS_REGION=@AWS::Region@
AWS_DEFAULT_REGION=@AWS::Region@
SETTINGS

cat > "$root/usr/local/libexec/ocedge/pull-image" <<'SCRIPT'
@file:pull-image.sh@
SCRIPT
chmod 0755 "$root/usr/local/libexec/ocedge/pull-image"

cat > "$root/etc/systemd/system/ocedge.service" <<'UNIT'
@file:ocedge.service@
UNIT

systemctl daemon-reload
# Docker starts with the OS from now on, ready by the time the container starts.
systemctl enable docker.service
# --no-block: ocedge.service is ordered after cloud-final, which is running this
# script; it starts as soon as the script has ended.
systemctl start --no-block ocedge.service
