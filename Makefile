# The whole developer workflow. `make run` and `make test` set everything up
# on a fresh machine (venv, package with dev extras, pinned opencode, Chromium).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup setup-test run run-s3 test test-fast check lint typecheck bench image clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

# opencode-ai is pinned to an exact version in package.json, and pins its platform
# binaries exactly itself. No lockfile: npm 11 cannot `npm ci` a lock of this
# package's per-platform optional dependencies made on another platform.
node_modules/.installed: package.json
	npm install --no-package-lock --no-audit --no-fund --loglevel=error
	@node_modules/.bin/opencode --version >/dev/null
	@touch $@

# Debian packages the tests and benchmarks drive: Chromium (the UI tests), nginx
# (the benchmark's reference proxy), fuse3 (the S3 workspace's mount) and s3fs (the
# workspace benchmark's reference), shellcheck and systemd-analyze (the deploy
# scripts and unit), nftables and iproute2 (the agent's firewall rule, tried in a
# network namespace), awscli (the EC2 host's start decision, run by the emulated AWS
# rehearsal). One grouped rule: a single apt-get for all of them.
/usr/bin/chromium /usr/sbin/nginx /usr/bin/shellcheck /usr/bin/systemd-analyze /usr/bin/fusermount3 /usr/bin/s3fs /usr/sbin/nft /usr/sbin/ip /usr/bin/aws &:
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nginx shellcheck systemd fuse3 s3fs nftables iproute2 awscli

setup: $(VENV)/.installed node_modules/.installed

setup-test: setup /usr/bin/chromium /usr/sbin/nginx /usr/bin/shellcheck /usr/bin/systemd-analyze /usr/bin/fusermount3 /usr/bin/s3fs /usr/sbin/nft /usr/sbin/ip /usr/bin/aws

run: setup
	$(VENV)/bin/ocedge dev

# The same, with the workspace on an emulated S3 bucket (moto) FUSE-mounted.
run-s3: setup /usr/bin/fusermount3
	$(VENV)/bin/ocedge dev --s3 emulated

test: setup-test
	$(VENV)/bin/pytest

# The unit tier: in-process tests with in-memory fakes and moto, under a minute.
# Your own loop; `make test` (and CI) runs everything.
test-fast: setup
	$(VENV)/bin/pytest -m unit -q

lint: setup
	$(VENV)/bin/ruff check edge container infra tests bench

typecheck: setup
	$(VENV)/bin/mypy

check: lint typecheck test

# wrk is the benchmark's load generator.
/usr/bin/wrk:
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk

# The edge against nginx and opencode itself, the wake, the Lambda entries, the
# workspace; prints every table (see README, Performance). BENCH_ARGS=--small: a
# quick run of every part; BENCH_ARGS=--strict: exit 1 on a missed target.
bench: setup-test /usr/bin/wrk
	$(PY) -m bench $(BENCH_ARGS)

# Build the container image for a deployed stack and push it to its ECR repository.
STACK ?= $(or $(OCEDGE_STACK),opencode-edge)
image:
	deploy/push-image.sh "$(STACK)"

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .aws-sam
