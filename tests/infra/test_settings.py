"""Settings.from_env: defaults that make local mode work, typed parsing, and clear
errors that name the variable at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import Settings, SettingsError

pytestmark = pytest.mark.unit

def test_defaults_need_no_settings() -> None:
    settings = Settings.from_env({})
    assert settings.backend == "local"
    assert settings.state_dir == Path(".ocedge")
    assert settings.admin_user == "admin"
    assert settings.admin_password is None
    assert settings.cookie_secure == "auto"
    assert settings.session_ttl == 12 * 3600
    assert settings.auth_max_failures == 10
    assert settings.auth_window == 300
    assert settings.trust_forwarded is False
    assert settings.host == "127.0.0.1"
    assert settings.port == 8787
    assert settings.idle_timeout == 600
    assert settings.wake_wait == 20
    assert settings.workspace_path == Path(".ocedge") / "workspace"
    assert settings.opencode_data == Path(".ocedge") / "opencode"
    assert settings.opencode_bin  # found, or the bare name to look up on PATH
    assert settings.opencode_env == {}


def test_values_are_parsed_to_their_types(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "OCEDGE_STATE_DIR": str(tmp_path / "state"),
        "OCEDGE_PORT": "9100",
        "OCEDGE_IDLE_TIMEOUT": "90.5",
        "OCEDGE_AUTH_MAX_FAILURES": "3",
        "OCEDGE_TRUST_FORWARDED": "yes",
        "OCEDGE_COOKIE_SECURE": "true",
        "OCEDGE_ADMIN_USER": "me",
        "OCEDGE_WORKSPACE_DIR": str(tmp_path / "ws"),
        "OCEDGE_KEY_CACHE_TTL": "0",
    })
    assert settings.state_dir == tmp_path / "state"
    assert isinstance(settings.state_dir, Path)
    assert settings.port == 9100
    assert isinstance(settings.port, int)
    assert settings.idle_timeout == 90.5
    assert settings.auth_max_failures == 3
    assert settings.trust_forwarded is True
    assert settings.cookie_secure == "true"
    assert settings.admin_user == "me"
    assert settings.workspace_path == tmp_path / "ws"
    assert settings.key_cache_ttl == 0


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", True), ("true", True), ("TRUE", True), ("on", True), ("yes", True),
    ("0", False), ("false", False), ("Off", False), ("no", False),
])
def test_booleans(raw: str, expected: bool) -> None:
    assert Settings.from_env({"OCEDGE_TRUST_FORWARDED": raw}).trust_forwarded is expected


def test_home_is_expanded_in_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = Settings.from_env({"OCEDGE_STATE_DIR": "~/edge-state"})
    assert settings.state_dir == tmp_path / "edge-state"


def test_empty_value_means_the_default() -> None:
    settings = Settings.from_env({"OCEDGE_PORT": "", "OCEDGE_ADMIN_PASSWORD": ""})
    assert settings.port == 8787
    assert settings.admin_password is None


def test_opencode_and_system_variables_are_captured_not_everything() -> None:
    settings = Settings.from_env({
        "OPENCODE_CONFIG_CONTENT": "{}", "PATH": "/usr/bin", "HOME": "/home/u",
        "AWS_SECRET_ACCESS_KEY": "do-not-copy", "RANDOM_THING": "x",
    })
    assert settings.opencode_env == {"OPENCODE_CONFIG_CONTENT": "{}"}
    # The container needs the AWS credential chain (S3, DynamoDB)...
    assert settings.system_env == {"PATH": "/usr/bin", "HOME": "/home/u",
                                   "AWS_SECRET_ACCESS_KEY": "do-not-copy"}


def test_opencode_does_not_inherit_aws_credentials(tmp_path: Path) -> None:
    from container.opencode import opencode_environment

    settings = Settings.from_env({"PATH": "/usr/bin", "AWS_SECRET_ACCESS_KEY": "do-not-copy",
                                  "AWS_ACCESS_KEY_ID": "AKIA", "OPENCODE_X": "1"})
    env = opencode_environment(settings.opencode_env, settings.system_env, tmp_path)
    # ...but the agent and its terminal do not get them.
    assert not any(name.startswith("AWS_") for name in env)
    assert env["OPENCODE_X"] == "1" and env["PATH"] == "/usr/bin"


def test_secrets_are_not_in_the_repr() -> None:
    origin = "origin-secret-origin-secret-origin-secret"
    settings = Settings.from_env({"OCEDGE_ADMIN_PASSWORD": "hunter2-but-longer",
                                  "OCEDGE_PEPPER": "pepper-pepper-pepper",
                                  "OCEDGE_SESSION_SECRET": "session-secret-value",
                                  "OCEDGE_ORIGIN_SECRET": origin})
    text = repr(settings)
    for secret in ("hunter2-but-longer", "pepper-pepper-pepper", "session-secret-value", origin):
        assert secret not in text


@pytest.mark.parametrize("name", ["OCEDGE_IDLE_TIMOUT", "OCEDGE_ADMIN_PASS", "OCEDGE_",
                                  "OCEDGE_OPENCODE_ENV", "OCEDGE_SYSTEM_ENV"])
def test_unknown_setting_is_rejected_by_name(name: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: "1"})
    assert name in str(error.value)


@pytest.mark.parametrize(("name", "raw"), [
    ("OCEDGE_PORT", "abc"),
    ("OCEDGE_PORT", "80.5"),
    ("OCEDGE_AUTH_MAX_FAILURES", "ten"),
    ("OCEDGE_IDLE_TIMEOUT", "10m"),
    ("OCEDGE_SESSION_TTL", "12h"),
    ("OCEDGE_WAKE_WAIT", "soon"),
    ("OCEDGE_TRUST_FORWARDED", "maybe"),
])
def test_unparseable_value_is_rejected_by_name(name: str, raw: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: raw})
    assert name in str(error.value)


@pytest.mark.parametrize(("name", "raw"), [
    ("OCEDGE_IDLE_TIMEOUT", "nan"),
    ("OCEDGE_SESSION_TTL", "inf"),
    ("OCEDGE_UPSTREAM_READ_TIMEOUT", "NaN"),
    ("OCEDGE_WAKE_WAIT", "nan"),
])
def test_non_finite_numbers_are_rejected_by_name(name: str, raw: str) -> None:
    # Regression (fixed): infra/settings.py _parse accepts float("nan")/float("inf") and _validate's
    # `<= 0` / `< 0` checks are False for nan, so OCEDGE_IDLE_TIMEOUT=nan is taken
    # (a deadline of nan: the container never sleeps) instead of being refused.
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: raw})
    assert name in str(error.value)


@pytest.mark.parametrize(("name", "raw"), [
    ("OCEDGE_PORT", "0"),
    ("OCEDGE_PORT", "70000"),
    ("OCEDGE_SESSION_TTL", "0"),
    ("OCEDGE_IDLE_TIMEOUT", "-5"),
    ("OCEDGE_AUTH_MAX_FAILURES", "0"),
    ("OCEDGE_KEY_CACHE_TTL", "-1"),
    ("OCEDGE_BACKEND", "gcp"),
    ("OCEDGE_COOKIE_SECURE", "sometimes"),
    ("OCEDGE_ADMIN_USER", "ad:min"),
    ("OCEDGE_TERMINAL_PORT", "-1"),
    ("OCEDGE_TERMINAL_PORT", "65536"),
    ("OCEDGE_ORIGIN_SECRET", "short"),
    ("OCEDGE_ORIGIN_SECRET", "a" * 31 + "\n"),
    ("OCEDGE_ORIGIN_SECRET", "has spaces in it and is long enough to pass"),
    ("OCEDGE_ORIGIN_SECRET", "x" * 129),
])
def test_out_of_range_value_is_rejected_by_name(name: str, raw: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: raw})
    assert name in str(error.value)


def test_overrides_keep_the_rest() -> None:
    base = Settings.from_env({"OCEDGE_PORT": "9000"})
    changed = base.with_overrides(auth_max_failures=3)
    assert changed.auth_max_failures == 3
    assert changed.port == 9000
    assert base.auth_max_failures == 10


def test_overrides_are_validated_like_the_environment() -> None:
    base = Settings.from_env({})
    with pytest.raises(SettingsError, match="OCEDGE_IDLE_TIMEOUT"):
        base.with_overrides(idle_timeout=0)
    # The half-configured S3 workspace is refused however the settings were made.
    with pytest.raises(SettingsError, match="OCEDGE_WORKSPACE=s3"):
        base.with_overrides(s3_bucket="my-bucket")
    with pytest.raises(SettingsError, match="OCEDGE_WORKSPACE=s3"):
        Settings(s3_bucket="my-bucket")
    both = base.with_overrides(workspace="s3", s3_bucket="my-bucket")
    assert (both.workspace, both.s3_bucket) == ("s3", "my-bucket")


def test_a_terminal_listener_needs_the_origin_secret() -> None:
    # A listener nothing could authenticate to is never started.
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"OCEDGE_TERMINAL_PORT": "8081"})
    assert "OCEDGE_TERMINAL_PORT" in str(error.value) and "OCEDGE_ORIGIN_SECRET" in str(error.value)
    Settings.from_env({"OCEDGE_TERMINAL_PORT": "8081", "OCEDGE_ORIGIN_SECRET": "o" * 43})
