#!/bin/bash
# opencode-edge host set-up, run by cloud-init at every boot (see cloud-config.yaml):
# install Docker once, write the container's unit and settings from the stack's
# values, then start the container if a start was asked of this instance, or power
# off again if not (start-requested). A stack value is written as its name between
# two at-signs; deploy/render.py turns those into Fn::Sub references.
set -euo pipefail

# Tests run this script against a scratch root; on the instance it is empty.
root="${DESTDIR:-}"

if ! command -v docker >/dev/null 2>&1; then
    dnf install --assumeyes --quiet docker
fi

install -d -m 0755 "$root/etc/ocedge" "$root/etc/systemd/system" "$root/usr/local/libexec/ocedge"

# The agent (opencode and what it runs, uid 10002 in the container) must not reach the
# instance metadata service, where the instance role's credentials are. The rule is
# loaded now, at every boot, before anything can start the container; if it cannot
# be, this script stops here and the container never starts.
if ! command -v nft >/dev/null 2>&1; then
    dnf install --assumeyes --quiet nftables
fi
cat > "$root/etc/ocedge/agent-firewall.nft" <<'RULES'
@file:agent-firewall.nft@
RULES
nft -f "$root/etc/ocedge/agent-firewall.nft"

# This instance's id, from the instance metadata service (IMDSv2: a session token
# first; docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html).
# The container claims only a start asked of this id (infra/lifecycle.py).
imds=http://169.254.169.254
token="$(curl --silent --show-error --fail --retry 5 --request PUT \
    --header "X-aws-ec2-metadata-token-ttl-seconds: 60" "$imds/latest/api/token")"
instance_id="$(curl --silent --show-error --fail --retry 5 \
    --header "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/instance-id")"

# The host side: which image to run, where its logs go.
cat > "$root/etc/ocedge/host.env" <<'SETTINGS'
IMAGE_URI=@Repository.RepositoryUri@:@ImageTag@
AWS_REGION=@AWS::Region@
LOG_GROUP=@ContainerLogGroup@
SETTINGS

# The container's settings (infra/settings.py). One is a secret: CloudFront's origin
# header, which the terminal listener requires (so the file is root's alone). The
# container's own secret (the sealing key) lives in its SSM parameter, provider keys
# sealed in the keys table; the edge's secrets are in another parameter, which the
# instance role cannot read.
rm -f "$root/etc/ocedge/container.env"
(umask 077; cat > "$root/etc/ocedge/container.env") <<'SETTINGS'
OCEDGE_BACKEND=aws
OCEDGE_WORKSPACE=s3
OCEDGE_S3_BUCKET=@Bucket@
OCEDGE_S3_PREFIX=workspace
OCEDGE_KEYS_TABLE=@KeysTable@
OCEDGE_STATE_TABLE=@StateTable@
OCEDGE_CONTAINER_SECRETS_PARAMETER=@ContainerSecretsParameter@
OCEDGE_IDLE_TIMEOUT=@IdleTimeout@
OCEDGE_GATE=true
OCEDGE_GATE_PORT=@GatePort@
OCEDGE_ORIGIN_SECRET=@OriginSecret.Value@
OCEDGE_TERMINAL_HOST=0.0.0.0
OCEDGE_TERMINAL_PORT=@TerminalPort@
OCEDGE_NOTIFY_TOPIC=@NotifyTopic@
OCEDGE_PUBLIC_URL=@ContainerPublicUrl@
AWS_REGION=@AWS::Region@
AWS_DEFAULT_REGION=@AWS::Region@
SETTINGS
echo "OCEDGE_INSTANCE_ID=$instance_id" >> "$root/etc/ocedge/container.env"

cat > "$root/usr/local/libexec/ocedge/pull-image" <<'SCRIPT'
@file:pull-image.sh@
SCRIPT
chmod 0755 "$root/usr/local/libexec/ocedge/pull-image"

cat > "$root/usr/local/libexec/ocedge/start-requested" <<'SCRIPT'
@file:start-requested.sh@
SCRIPT
cat > "$root/usr/local/libexec/ocedge/after-exit" <<'SCRIPT'
@file:after-exit.sh@
SCRIPT
chmod 0755 "$root/usr/local/libexec/ocedge/start-requested" "$root/usr/local/libexec/ocedge/after-exit"

cat > "$root/etc/systemd/system/ocedge.service" <<'UNIT'
@file:ocedge.service@
UNIT

systemctl daemon-reload
# Docker starts with the OS from now on, ready by the time the container starts.
systemctl enable docker.service
# Only a start that was asked of this instance runs the container; any other boot (the
# stack created or updated it, or a start was asked of the instance it replaced)
# powers off again. --no-block: ocedge.service is ordered after cloud-final, which is
# running this script; it starts as soon as the script has ended.
if DESTDIR="$root" "$root/usr/local/libexec/ocedge/start-requested"; then
    systemctl start --no-block ocedge.service
else
    systemctl poweroff --no-block
fi
