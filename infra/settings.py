"""Settings, parsed once from ``OCEDGE_*`` environment variables.

Nothing else in the project reads ``os.environ``: the edge, the container and the
CLI each call :meth:`Settings.from_env` once and pass the result down.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The shortest admin password accepted, wherever it is set (init, admin password,
# OCEDGE_ADMIN_PASSWORD).
MIN_PASSWORD_LENGTH = 12
# The host names a local edge always answers to (DNS rebinding: any other is refused).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_CAPTURED = frozenset({"opencode_env", "system_env"})
_EDGE_ONLY = frozenset({"admin_password", "pepper", "session_secret"})
_SYSTEM = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "TERM", "TZ", "USER", "SHELL",
                     # The standard AWS credential chain, for S3, DynamoDB and SSM.
                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                     "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
                     "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CA_BUNDLE",
                     "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                     "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                     "AWS_EC2_METADATA_DISABLED"})


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Every knob of a deployment. Defaults make local mode work with no settings."""

    # Where the local backends keep their SQLite file, secrets and the workspace.
    state_dir: Path = Path(".ocedge")
    # Which implementation of the stores and compute to use: "local" or "aws".
    backend: str = "local"

    # Browser login.
    admin_user: str = "admin"
    admin_password: str | None = field(default=None, repr=False)
    session_ttl: float = 12 * 3600.0
    # "auto": Secure when the request arrived over HTTPS; "true"/"false" force it.
    cookie_secure: str = "auto"

    # Server-side secrets; when unset, local mode keeps them in 0600 files.
    pepper: str | None = field(default=None, repr=False)
    session_secret: str | None = field(default=None, repr=False)

    # The edge's own web address (scheme://host[:port]): the one Origin a write or a
    # WebSocket may come from, besides the address the request itself was sent to.
    public_url: str | None = None
    # More host names the local edge answers to, comma-separated (besides 127.0.0.1,
    # localhost, ::1 and the public URL's host); set on AWS, they are checked there too.
    allowed_hosts: str = ""
    # The edge runs under Lambda Web Adapter (edge/lambda_stream.sh says so): the
    # client address comes from the request context the adapter writes into the
    # x-amzn-request-context header (overwriting any copy a client sent).
    web_adapter: bool = False

    # Failed-login throttle: this many failures from one address within the window
    # → 429; this many admin-password failures from everyone together → 429 for
    # password logins (API keys and sessions still work).
    auth_max_failures: int = 10
    auth_max_failures_global: int = 100
    auth_window: float = 300.0
    # How long the edge trusts its cached admin and API-key records (revocation delay).
    key_cache_ttl: float = 30.0
    # Take the client address from X-Forwarded-For (only behind a trusted proxy).
    trust_forwarded: bool = False

    # Edge listener for `ocedge dev`.
    host: str = "127.0.0.1"
    port: int = 8787

    # Upstream (container) timeouts, seconds.
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 600.0
    # How long a request waits for a sleeping container to wake before 503.
    wake_wait: float = 20.0
    # Idle deadline: the container sleeps this long after the last activity.
    idle_timeout: float = 600.0

    # The container side.
    opencode_bin: str = ""
    workspace_dir: Path | None = None
    opencode_start_timeout: float = 60.0
    # opencode's own data (sessions database, config, cache); local disk.
    opencode_data_dir: Path | None = None
    # The user opencode (the agent) runs as when the container runs as root: a name
    # from /etc/passwd or uid[:gid]. Unset: as the container's own user (local mode).
    # The image sets it: the agent then has no AWS credentials and cannot read the
    # container's files (see container/agent.py).
    agent_user: str | None = None
    # OPENCODE_* variables handed through to the opencode server.
    opencode_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The few process variables child processes need (PATH, HOME, locale, npm's).
    system_env: Mapping[str, str] = field(default_factory=dict, repr=False)

    # The workspace: "local" (a directory) or "s3" (the bucket FUSE-mounted).
    workspace: str = "local"
    s3_bucket: str | None = None
    s3_prefix: str = "workspace"
    # An S3-compatible endpoint (moto, MinIO); unset means AWS itself.
    s3_endpoint: str | None = None
    # Upper bound for the stop path (opencode, Litestream, rclone upload, unmount).
    stop_budget: float = 60.0

    # AWS backends (OCEDGE_BACKEND=aws). Names come from the stack's outputs.
    stack: str | None = None
    aws_region: str | None = None
    # An endpoint for every AWS API (moto server in tests); unset means AWS.
    aws_endpoint: str | None = None
    keys_table: str | None = None
    state_table: str | None = None
    instance_id: str | None = None
    # SSM SecureStrings of the server secrets (infra/aws/secrets.py), written by
    # `ocedge init`: the edge's (API-key peppers, cookie key) and the container's
    # (the provider-key sealing key). Each side's role may read only its own.
    secrets_parameter: str | None = None
    container_secrets_parameter: str | None = None
    # The streaming front door's URL, named in the buffered front door's 501s.
    stream_url: str | None = None
    # CloudFront's secret origin header (infra/cloudfront.py), which it adds to what it
    # sends the edge and the terminal listener. Set: the edge refuses a request without
    # it and takes the viewer's host and address from CloudFront's headers.
    origin_secret: str | None = field(default=None, repr=False)
    # The container's terminal listener (container/terminal.py) for CloudFront's
    # /pty/*/connect behaviour; port 0: none (local mode's edge carries the terminal).
    terminal_host: str = "127.0.0.1"
    terminal_port: int = 0

    # The container's TLS gate: the only listener on a public interface. It serves
    # a per-boot self-signed certificate (which the edge pins) and checks the
    # internal credential before relaying to opencode on loopback.
    gate: bool = False
    gate_host: str = "0.0.0.0"  # the gate is the container's public listener
    gate_port: int = 8443
    # The address the edge should dial; unset: discovered (EC2 metadata) or 127.0.0.1.
    public_host: str | None = None

    # Notices (infra/notify.py): a webhook (its URL may hold a token: never logged) in a
    # format, an SNS topic on AWS; runs under notify_min_run s end without one. An open
    # permission question keeps the workspace awake permission_hold more idle periods.
    notify_url: str | None = field(default=None, repr=False)
    notify_format: str = "json"
    notify_min_run: float = 30.0
    notify_topic: str | None = None
    permission_hold: float = 1.0
    # Git servers besides https://github.com given GITHUB_TOKEN (comma-separated URLs).
    git_token_hosts: str = ""

    log_level: str = "INFO"

    def __post_init__(self) -> None:
        # Every construction validates (from_env, with_overrides, a test's Settings(...)):
        # each rule is checked here and nowhere else.
        self._validate()

    @property
    def extra_hosts(self) -> tuple[str, ...]:
        """``allowed_hosts`` as lower-case names."""
        return tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def workspace_path(self) -> Path:
        """Where opencode's project lives (the mount point when the workspace is S3)."""
        return self.workspace_dir or self.state_dir / "workspace"

    @property
    def start_timeout(self) -> float:
        """How long a start may take to register before it counts as stale: opencode's
        own start-up budget plus the container's (mount, restore, TLS)."""
        return self.opencode_start_timeout + 30

    @property
    def opencode_data(self) -> Path:
        return self.opencode_data_dir or self.state_dir / "opencode"

    def with_overrides(self, **changes: Any) -> Settings:
        """These settings with ``changes`` (field names) applied; validated like any other."""
        return replace(self, **changes)

    def child_env(self) -> dict[str, str]:
        """The environment for a container process started from these settings.

        Secrets the container does not need (admin password, pepper, cookie key)
        are left out, so they never reach opencode or its terminal.
        """
        env = dict(self.system_env)
        env.update(self.opencode_env)
        for f in fields(self):
            if f.name in _CAPTURED or f.name in _EDGE_ONLY:
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, Path):
                value = value.resolve()
            if isinstance(value, bool):
                value = "true" if value else "false"
            env["OCEDGE_" + f.name.upper()] = str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)} - _CAPTURED
        for name in env:
            if name.startswith("OCEDGE_") and name[7:].lower() not in known:
                # Ignore silently would hide typos like OCEDGE_IDLE_TIMOUT.
                raise SettingsError(f"unknown setting {name}")

        def get(name: str) -> str | None:
            value = env.get("OCEDGE_" + name.upper())
            return value if value not in (None, "") else None

        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in _CAPTURED:
                continue
            raw = get(f.name)
            if raw is None:
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        values["opencode_env"] = {k: v for k, v in env.items() if k.startswith("OPENCODE_")}
        values["system_env"] = {k: v for k, v in env.items()
                                if k in _SYSTEM or k.lower().startswith("npm_config_")}
        settings = cls(**values)
        if not settings.opencode_bin:
            settings = replace(settings, opencode_bin=find_opencode())
        return settings

    def _validate(self) -> None:
        if self.backend not in ("local", "aws"):
            raise SettingsError("OCEDGE_BACKEND must be 'local' or 'aws'")
        if self.workspace not in ("local", "s3"):
            raise SettingsError("OCEDGE_WORKSPACE must be 'local' or 's3'")
        if self.workspace == "s3" and not self.s3_bucket:
            raise SettingsError("OCEDGE_WORKSPACE=s3 needs OCEDGE_S3_BUCKET")
        if self.s3_bucket and self.workspace != "s3":
            # Half-configured S3 must not quietly run on a local directory.
            raise SettingsError("OCEDGE_S3_BUCKET is set but OCEDGE_WORKSPACE is not 's3': "
                                "set OCEDGE_WORKSPACE=s3 (or unset the bucket for a local "
                                "workspace that is not saved)")
        if self.cookie_secure not in ("auto", "true", "false"):
            raise SettingsError("OCEDGE_COOKIE_SECURE must be 'auto', 'true' or 'false'")
        for name in ("session_ttl", "auth_window", "upstream_connect_timeout",
                     "upstream_read_timeout", "idle_timeout", "opencode_start_timeout", "stop_budget"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"OCEDGE_{name.upper()} must be greater than 0")
        for name in ("wake_wait", "key_cache_ttl", "notify_min_run", "permission_hold"):
            if getattr(self, name) < 0:
                raise SettingsError(f"OCEDGE_{name.upper()} must not be negative")
        for name in ("auth_max_failures", "auth_max_failures_global"):
            if getattr(self, name) < 1:
                raise SettingsError(f"OCEDGE_{name.upper()} must be at least 1")
        if self.admin_password is not None and len(self.admin_password) < MIN_PASSWORD_LENGTH:
            raise SettingsError(f"OCEDGE_ADMIN_PASSWORD must be at least {MIN_PASSWORD_LENGTH} "
                                "characters")
        if self.public_url is not None:
            _check_public_url(self.public_url)
        for host in self.extra_hosts:
            if not _HOST_NAME.match(host):
                raise SettingsError(f"OCEDGE_ALLOWED_HOSTS: {host!r} is not a host name")
        for name, least in (("port", 1), ("gate_port", 1), ("terminal_port", 0)):  # 0: none
            if not least <= getattr(self, name) < 65536:
                raise SettingsError(f"OCEDGE_{name.upper()} must be a TCP port number")
        if self.origin_secret is not None and not _SECRET.match(self.origin_secret):
            raise SettingsError("OCEDGE_ORIGIN_SECRET must be 32 to 128 letters, digits, - or _")
        if self.terminal_port and not self.origin_secret:
            raise SettingsError("OCEDGE_TERMINAL_PORT needs OCEDGE_ORIGIN_SECRET: the terminal "
                                "listener admits only CloudFront's requests")
        if self.agent_user is not None and not _AGENT_USER.match(self.agent_user):
            raise SettingsError("OCEDGE_AGENT_USER must be a user name or uid[:gid], not root")
        if self.notify_format not in ("json", "ntfy", "slack"):
            raise SettingsError("OCEDGE_NOTIFY_FORMAT must be 'json', 'ntfy' or 'slack'")
        for name, url in [("NOTIFY_URL", self.notify_url or "http://-"), *(
                ("GIT_TOKEN_HOSTS", h) for h in self.git_token_hosts.split(",") if h.strip())]:
            if urlsplit(url.strip()).scheme not in ("http", "https") or not urlsplit(url).hostname:
                raise SettingsError(f"OCEDGE_{name} must be http(s)://host URLs")  # unquoted
        if not self.admin_user or ":" in self.admin_user:
            raise SettingsError("OCEDGE_ADMIN_USER must be non-empty and contain no ':'")


_SECRET = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
# A user name or uid[:gid]; never root (0 or "root").
_AGENT_USER = re.compile(r"^(?!root$)[a-z_][a-z0-9_-]{0,31}$|^(?!0(:|$))[0-9]+(:[0-9]+)?$")
_HOST_NAME = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
                        r"|^[0-9a-f:]+$")


def _check_public_url(value: str) -> None:
    problem = "must be the edge's web address, like https://edge.example.com"
    try:
        split = urlsplit(value.strip())
        split.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise SettingsError(f"OCEDGE_PUBLIC_URL {problem}") from None
    if split.scheme.lower() not in ("http", "https") or not split.hostname \
            or split.path not in ("", "/") or split.query or split.fragment \
            or split.username is not None:
        raise SettingsError(f"OCEDGE_PUBLIC_URL {problem} (no path, query or user)")


def _parse(name: str, kind: Any, raw: str) -> Any:
    label = "OCEDGE_" + name.upper()
    kind = str(kind)
    try:
        if kind.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            number = float(raw)
            if not math.isfinite(number):
                raise ValueError(raw)
            return number
        if "Path" in kind:
            return Path(raw).expanduser()
    except ValueError:
        raise SettingsError(f"{label} has an invalid value") from None
    return raw


def find_opencode() -> str:
    """The pinned opencode from the project's node_modules, else one on PATH."""
    pinned = PROJECT_ROOT / "node_modules" / ".bin" / "opencode"
    if pinned.exists():
        return str(pinned)
    return shutil.which("opencode") or "opencode"
