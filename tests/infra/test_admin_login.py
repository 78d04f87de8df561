"""``ocedge admin totp enable|disable`` and ``admin logout-all``, run as a user runs
them (the installed console script, a code typed from what it shows); the settings
and secret files the login depends on."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from infra import totp
from infra.backends import backends_for_tools
from infra.credentials import SecretFileError, load_or_create_secret, read_secret_file
from infra.settings import Settings, SettingsError
from tests.support.cli import OCEDGE, ocedge
from tests.support.edge import ADMIN_PASSWORD, make_settings


def _stored(state_dir: Path) -> tuple[bytes | None, int]:
    backends = backends_for_tools(make_settings(state_dir))

    async def read() -> tuple[bytes | None, int]:
        return await backends.keys.get_totp(), await backends.keys.session_epoch()

    return asyncio.run(read())


def _initialised(state_dir: Path) -> None:
    result = ocedge("admin", "password", "--state-dir", str(state_dir),
                    stdin=ADMIN_PASSWORD + "\n")
    assert result.returncode == 0, result.stderr


def _enable(state_dir: Path, wrong: bool = False) -> tuple[subprocess.CompletedProcess[str], str]:
    """``ocedge admin totp enable``: read the secret it shows, type the current code."""
    proc = subprocess.Popen([str(OCEDGE), "admin", "totp", "enable", "--state-dir",
                             str(state_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and proc.stdin is not None
    shown = ""
    secret = None
    while secret is None:
        line = proc.stderr.readline()
        assert line, f"it never showed the secret: {shown}"
        shown += line
        found = re.search(r"secret: ([A-Z2-7]+)", line)
        secret = found.group(1) if found else None
    code = totp.code_at(secret, time.time())
    if wrong:
        code = f"{(int(code) + 1) % 1_000_000:06d}"
    out, err = proc.communicate(code + "\n", timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, shown + err), secret


def test_totp_enable_shows_a_qr_code_and_stores_the_secret_sealed(state_dir: Path) -> None:
    _initialised(state_dir)
    before = _stored(state_dir)[1]
    result, secret = _enable(state_dir)
    assert result.returncode == 0, result.stderr
    uri = re.search(r"otpauth://totp/\S+", result.stderr)
    assert uri is not None and f"secret={secret}" in uri.group(0)
    assert "issuer=opencode-edge" in uri.group(0)
    assert "\u2588" in result.stderr or "\u2580" in result.stderr, "no QR code drawn"
    assert "Two-factor login is on" in result.stdout
    sealed, epoch = _stored(state_dir)
    assert sealed is not None and secret.encode() not in sealed, "the secret is stored in the clear"
    assert epoch == before + 1, "sessions opened without a code were not ended"
    # Enabling twice is refused (it would replace the phone's secret unasked).
    again = ocedge("admin", "totp", "enable", "--state-dir", str(state_dir), stdin="123456\n")
    assert again.returncode == 2 and "on already" in again.stderr


def test_totp_enable_with_a_wrong_code_changes_nothing(state_dir: Path) -> None:
    _initialised(state_dir)
    result, _ = _enable(state_dir, wrong=True)
    assert result.returncode == 2
    assert "not the current one" in result.stderr
    assert _stored(state_dir)[0] is None


def test_totp_disable_takes_a_current_code_or_the_password(state_dir: Path) -> None:
    _initialised(state_dir)
    _, secret = _enable(state_dir)
    wrong = ocedge("admin", "totp", "disable", "--state-dir", str(state_dir),
                   stdin="not-the-password\n")
    assert wrong.returncode == 2 and "neither" in wrong.stderr
    assert _stored(state_dir)[0] is not None
    # A code of the next step (the enable used this one).
    code = totp.code_at(secret, time.time() + 30)
    by_code = ocedge("admin", "totp", "disable", "--state-dir", str(state_dir), stdin=code + "\n")
    assert by_code.returncode == 0, by_code.stderr
    assert _stored(state_dir)[0] is None
    off = ocedge("admin", "totp", "disable", "--state-dir", str(state_dir),
                 stdin=ADMIN_PASSWORD + "\n")
    assert off.returncode == 2 and "not on" in off.stderr
    _enable(state_dir)
    epoch = _stored(state_dir)[1]
    by_password = ocedge("admin", "totp", "disable", "--state-dir", str(state_dir),
                         stdin=ADMIN_PASSWORD + "\n")
    assert by_password.returncode == 0, by_password.stderr
    assert _stored(state_dir) == (None, epoch + 1)


def test_logout_all_moves_the_session_epoch_on(state_dir: Path) -> None:
    _initialised(state_dir)
    epoch = _stored(state_dir)[1]
    result = ocedge("admin", "logout-all", "--state-dir", str(state_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"session_epoch": epoch + 1}
    assert _stored(state_dir)[1] == epoch + 1


# -- settings and secret files --------------------------------------------------------------


@pytest.mark.unit
def test_the_admin_password_setting_obeys_the_same_minimum_as_init() -> None:
    with pytest.raises(SettingsError, match="at least 12 characters"):
        Settings.from_env({"OCEDGE_ADMIN_PASSWORD": "short-pw"})
    assert Settings.from_env({"OCEDGE_ADMIN_PASSWORD": "twelve-chars"}).admin_password


@pytest.mark.unit
@pytest.mark.parametrize("value", ["edge.example.com", "ftp://edge.example.com",
                                   "https://edge.example.com/app", "https://u:p@edge.example.com",
                                   "https://edge.example.com:port", "https://"])
def test_a_public_url_that_is_not_an_origin_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="OCEDGE_PUBLIC_URL"):
        Settings.from_env({"OCEDGE_PUBLIC_URL": value})


@pytest.mark.unit
def test_public_url_and_allowed_hosts_are_read_normalised() -> None:
    settings = Settings.from_env({"OCEDGE_PUBLIC_URL": "HTTPS://Edge.Example.com:443/",
                                  "OCEDGE_ALLOWED_HOSTS": " Laptop.lan ,*.dev.example.com,",
                                  "OCEDGE_WEB_ADAPTER": "true",
                                  "OCEDGE_AUTH_MAX_FAILURES_GLOBAL": "50"})
    assert settings.public_url == "HTTPS://Edge.Example.com:443/"
    assert settings.extra_hosts == ("laptop.lan", "*.dev.example.com")
    assert settings.web_adapter and settings.auth_max_failures_global == 50
    with pytest.raises(SettingsError, match="ALLOWED_HOSTS"):
        Settings.from_env({"OCEDGE_ALLOWED_HOSTS": "evil.example/x"})


@pytest.mark.unit
@pytest.mark.parametrize("content", [b"", b"\x01" * 31], ids=["empty", "truncated"])
def test_a_secret_file_that_is_empty_or_truncated_is_an_error_never_a_short_key(
        tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "session.key"
    path.write_bytes(content)
    for read in (read_secret_file, load_or_create_secret):
        with pytest.raises(SecretFileError, match=r"session\.key") as caught:
            read(path)
        assert "restore it from a backup" in str(caught.value)
    assert path.read_bytes() == content, "the damaged file was replaced"
    # A missing file is made, once; a whole one is read.
    made = load_or_create_secret(tmp_path / "pepper.key")
    assert len(made) == 32 and read_secret_file(tmp_path / "pepper.key") == made
    assert read_secret_file(tmp_path / "nope.key") is None
