"""The `ocedge` admin CLI: keys create/list/revoke, --expires, --state-dir.

Most tests run the installed console script as a subprocess, as a user would."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.support.cli import OCEDGE, ocedge
from tests.support.edge import EdgeServer

KEY_RE = re.compile(r"^oce_([0-9A-Za-z]+)_([0-9A-Za-z]{43,})$")


def create_key(state_dir: Path, cwd: Path, *extra: str) -> dict[str, object]:
    done = ocedge("keys", "create", "--name", "laptop", "--json", "--state-dir", str(state_dir),
                  *extra, cwd=cwd)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert isinstance(data, dict)
    return data


def list_keys(state_dir: Path, cwd: Path) -> list[dict[str, object]]:
    done = ocedge("keys", "list", "--json", "--state-dir", str(state_dir), cwd=cwd)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert isinstance(rows, list)
    return rows


def test_console_script_is_installed() -> None:
    assert OCEDGE.exists(), f"{OCEDGE} missing: is the package installed in the venv?"


def test_create_prints_the_key_once_as_json(state_dir: Path, tmp_path: Path) -> None:
    data = create_key(state_dir, tmp_path)
    key = data["key"]
    assert isinstance(key, str)
    match = KEY_RE.match(key)
    assert match, key
    assert match.group(1) == data["id"]
    assert data["name"] == "laptop"
    assert data["expires"] is None


def test_created_key_works_against_the_edge(edge: EdgeServer, state_dir: Path,
                                            tmp_path: Path) -> None:
    key = create_key(state_dir, tmp_path)["key"]
    response = httpx.get(f"{edge.url}/_edge/status", headers={"Authorization": f"Bearer {key}"},
                         trust_env=False, timeout=10)
    assert response.status_code == 200
    assert "status" in response.json()


def test_list_never_shows_the_secret(state_dir: Path, tmp_path: Path) -> None:
    first = create_key(state_dir, tmp_path)
    second = create_key(state_dir, tmp_path, "--expires", "7d")
    secrets = [str(first["key"]).rsplit("_", 1)[1], str(second["key"]).rsplit("_", 1)[1]]

    table = ocedge("keys", "list", "--state-dir", str(state_dir), cwd=tmp_path)
    as_json = ocedge("keys", "list", "--json", "--state-dir", str(state_dir), cwd=tmp_path)
    for done in (table, as_json):
        assert done.returncode == 0, done.stderr
        for secret in secrets:
            assert secret not in done.stdout + done.stderr
            assert secret[:16] not in done.stdout
    assert str(first["id"]) in table.stdout
    assert "laptop" in table.stdout
    rows = json.loads(as_json.stdout)
    assert {row["id"] for row in rows} == {first["id"], second["id"]}
    assert all(row["status"] == "active" for row in rows)
    assert not any("key" in row or "secret_hash" in row for row in rows)


def test_list_with_no_keys_says_how_to_create_one(state_dir: Path, tmp_path: Path) -> None:
    done = ocedge("keys", "list", "--state-dir", str(state_dir), cwd=tmp_path)
    assert done.returncode == 0
    assert "keys create" in done.stdout
    assert list_keys(state_dir, tmp_path) == []


def test_revoke_marks_the_key_revoked(edge: EdgeServer, state_dir: Path, tmp_path: Path) -> None:
    data = create_key(state_dir, tmp_path)
    bearer = {"Authorization": f"Bearer {data['key']}"}
    url = f"{edge.url}/_edge/status"
    assert httpx.get(url, headers=bearer, trust_env=False).status_code == 200
    done = ocedge("keys", "revoke", str(data["id"]), "--state-dir", str(state_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(data["id"]) in done.stdout
    assert [row["status"] for row in list_keys(state_dir, tmp_path)] == ["revoked"]
    assert httpx.get(url, headers=bearer, trust_env=False).status_code == 401


def test_revoking_an_unknown_id_fails_clearly(state_dir: Path, tmp_path: Path) -> None:
    done = ocedge("keys", "revoke", "NoSuchKey123", "--state-dir", str(state_dir), cwd=tmp_path)
    assert done.returncode != 0
    assert "NoSuchKey123" in done.stderr
    assert "no api key" in done.stderr.lower()
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("expires", [["--expires", "abc"], ["--expires", "0d"],
                                     ["--expires=-3d"], ["--expires", "-3d"],
                                     ["--expires", "30"], ["--expires", "3y"]])
def test_bad_expiry_is_refused_and_creates_nothing(state_dir: Path, tmp_path: Path,
                                                   expires: list[str]) -> None:
    done = ocedge("keys", "create", "--name", "laptop", *expires, "--state-dir", str(state_dir),
                  cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    assert "expires" in done.stderr.lower() or "duration" in done.stderr.lower(), done.stderr
    assert "Traceback" not in done.stderr
    assert "oce_" not in done.stdout
    assert list_keys(state_dir, tmp_path) == []


def test_empty_expiry_is_refused_not_a_key_that_never_expires(state_dir: Path,
                                                               tmp_path: Path) -> None:
    # Regression (fixed): `ocedge keys create` tested `if args.expires`, so `--expires ""` (say, an
    # unset "$TTL" in a script) silently mints a key that never expires.
    done = ocedge("keys", "create", "--name", "laptop", "--expires", "", "--state-dir",
                  str(state_dir), cwd=tmp_path)
    assert done.returncode != 0, done.stdout
    assert "duration" in done.stderr.lower() or "expires" in done.stderr.lower()
    assert list_keys(state_dir, tmp_path) == []


def test_expires_sets_an_expiry_thirty_days_out(state_dir: Path, tmp_path: Path) -> None:
    before = time.time()
    data = create_key(state_dir, tmp_path, "--expires", "30d")
    after = time.time()
    expires = data["expires"]
    assert isinstance(expires, int | float)
    assert before + 30 * 86400 - 1 <= expires <= after + 30 * 86400 + 1
    (row,) = list_keys(state_dir, tmp_path)
    assert row["expires"] == pytest.approx(expires)


@pytest.mark.parametrize(("text", "seconds"), [("12h", 12 * 3600), ("90m", 90 * 60),
                                               ("2w", 14 * 86400), ("45s", 45)])
def test_expires_units(state_dir: Path, tmp_path: Path, text: str, seconds: int) -> None:
    before = time.time()
    expires = create_key(state_dir, tmp_path, "--expires", text)["expires"]
    assert isinstance(expires, int | float)
    assert before + seconds - 1 <= expires <= time.time() + seconds + 1


def test_commands_honour_state_dir(tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    chosen = tmp_path / "chosen"
    elsewhere = tmp_path / "env-dir"
    # --state-dir wins over OCEDGE_STATE_DIR and over the default .ocedge/ in the cwd.
    env = {"OCEDGE_STATE_DIR": str(elsewhere)}

    created = ocedge("keys", "create", "--name", "ci", "--json", "--state-dir", str(chosen),
                     cwd=work, env=env)
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["id"]
    assert (chosen / "ocedge.db").exists()

    listed = ocedge("keys", "list", "--json", "--state-dir", str(chosen), cwd=work, env=env)
    assert [row["id"] for row in json.loads(listed.stdout)] == [key_id]
    wrong_dir = ocedge("keys", "revoke", key_id, "--state-dir", str(tmp_path / "empty"),
                       cwd=work, env=env)
    assert wrong_dir.returncode != 0
    revoked = ocedge("keys", "revoke", key_id, "--state-dir", str(chosen), cwd=work, env=env)
    assert revoked.returncode == 0, revoked.stderr

    status = ocedge("status", "--json", "--state-dir", str(chosen), cwd=work, env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "stopped"

    password = ocedge("admin", "password", "--state-dir", str(chosen), cwd=work, env=env,
                      stdin="a-long-enough-password\n")
    assert password.returncode == 0, password.stderr

    assert not (work / ".ocedge").exists()
    assert not (elsewhere / "ocedge.db").exists()
    # Without --state-dir the environment's directory is used: the key is not there.
    other = ocedge("keys", "list", "--json", cwd=work, env=env)
    assert other.returncode == 0, other.stderr
    assert json.loads(other.stdout) == []


def test_admin_password_too_short_is_refused(state_dir: Path, tmp_path: Path) -> None:
    done = ocedge("admin", "password", "--state-dir", str(state_dir), cwd=tmp_path,
                  stdin="short\n")
    assert done.returncode != 0
    assert "12 characters" in done.stderr
    assert "short" not in done.stdout


def test_bad_setting_in_the_environment_is_reported(state_dir: Path, tmp_path: Path) -> None:
    done = ocedge("keys", "list", "--state-dir", str(state_dir), cwd=tmp_path,
                  env={"OCEDGE_IDLE_TIMOUT": "5"})
    assert done.returncode != 0
    assert "OCEDGE_IDLE_TIMOUT" in done.stderr
    assert "Traceback" not in done.stderr
