"""The AWS path rehearsed on one machine: ``ocedge dev --aws emulated`` (a moto server
with the stack's tables, bucket and EC2 instance; a host stand-in that runs the user
data's decision and the real container with the AWS backends behind its TLS gate),
``ocedge init --stack``, and a browser that logs in, wakes the workspace through the
instance's EC2 states, prompts the fake model, lets it sleep (the container's asleep
exit powers the instance off) and wakes it again with its session and files kept."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from infra.emulated_s3 import CREDENTIALS
from infra.net import free_port
from tests.support import cli
from tests.support.browser import (
    BrowserPages,
    landed_already,
    launch_chromium,
    log_in,
    send_prompt,
    wait_until,
)
from tests.support.fake_model import FakeModelServer, opencode_config, reply_for

pytestmark = [pytest.mark.browser, pytest.mark.opencode]

PASSWORD = "rehearsal password 123"
IDLE_TIMEOUT = 10
STACK = "ocedge-emulated"
START_MS = 90_000


@dataclass
class Rehearsal:
    """A running ``ocedge dev --aws emulated``."""

    url: str
    aws: str  # the emulated AWS's endpoint
    root: Path  # the emulator's directory: the EC2 journal, the host's and container's logs
    process: subprocess.Popen[str]
    key: str = ""

    def ec2_states(self) -> list[str]:
        journal = self.root / "ec2-states.log"
        return [line.split()[1] for line in journal.read_text().splitlines()]

    def host_log(self) -> str:
        return (self.root / "host.log").read_text()

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, trust_env=False, timeout=60,
                            headers={"Authorization": f"Bearer {self.key}"})

    def status(self) -> str:
        with self.api() as client:
            return str(client.get("/_edge/status").json()["status"])


def _env(state: Path, fake_model: FakeModelServer) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(state / "home"), "LANG": "C.UTF-8",
            "npm_config_offline": "true", "OCEDGE_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
            "OCEDGE_KEY_CACHE_TTL": "0",
            "OPENCODE_CONFIG_CONTENT": json.dumps(opencode_config(fake_model.base_url))}


@pytest.fixture
def rehearsal(tmp_path: Path, opencode_bin: str,
              fake_model: FakeModelServer) -> Iterator[Rehearsal]:
    state = tmp_path / "state"
    (state / "home").mkdir(parents=True)
    port = free_port()
    out = open(tmp_path / "dev.out", "w+")  # closed below, after ocedge dev has ended
    process = subprocess.Popen(
        [str(cli.OCEDGE), "dev", "--aws", "emulated", "--state-dir", str(state),
         "--port", str(port)], env=_env(state, fake_model), stdout=out,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        aws = ""
        deadline = time.monotonic() + 60
        while not aws:
            assert process.poll() is None, (tmp_path / "dev.out").read_text()
            assert time.monotonic() < deadline, (tmp_path / "dev.out").read_text()
            found = re.search(r"AWS: +emulated \(moto\) at (http://\S+),",
                              (tmp_path / "dev.out").read_text())
            aws = found.group(1) if found else ""
            time.sleep(0.2)
        yield Rehearsal(f"http://127.0.0.1:{port}", aws, state / "emulated-aws", process)
    finally:
        # ocedge dev stops the instance (the container saves), then the emulator.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        out.close()
        print((tmp_path / "dev.out").read_text()[-3000:])


@pytest.fixture
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


def _init(rehearsal: Rehearsal) -> str:
    """`ocedge init --stack`, as against a deployed stack: the admin password, the
    server secrets, the first API key."""
    done = cli.ocedge("init", "--stack", STACK, stdin=PASSWORD + "\n", timeout=120,
                      env={**CREDENTIALS, "OCEDGE_AWS_ENDPOINT": rehearsal.aws,
                           "OCEDGE_AWS_REGION": CREDENTIALS["AWS_REGION"]})
    assert done.returncode == 0, done.stdout + done.stderr
    key, = re.findall(r"oce_[0-9A-Za-z]+_[0-9A-Za-z]+", done.stdout)
    return key


def _session_url(rehearsal: Rehearsal, session_id: str) -> str:
    """Where the opencode UI shows a session: /server/<origin, base64url>/session/<id>."""
    server = base64.urlsafe_b64encode(rehearsal.url.encode()).decode().rstrip("=")
    return f"/server/{server}/session/{session_id}"


def _shell(rehearsal: Rehearsal, session_id: str, command: str) -> str:
    """``command`` run in the workspace by opencode's shell endpoint; its output."""
    with rehearsal.api() as client:
        response = client.post(f"/session/{session_id}/shell",
                               json={"agent": "build", "command": command}, timeout=120)
    assert response.status_code == 200, response.text
    return "\n".join(str(part["state"].get("output", "")) for part in response.json()["parts"]
                     if part.get("type") == "tool")


def _wake_in_the_browser(page: Page, rehearsal: Rehearsal) -> None:
    """Open the edge: the waking page while the instance boots, then the opencode UI
    (its home page: this browser has landed in the workspace before)."""
    landed_already(page, rehearsal.url)
    response = page.goto("/")
    assert response is not None
    expect(page.get_by_placeholder("Search sessions")).to_be_visible(timeout=START_MS)
    assert rehearsal.status() == "running"


def test_browser_wakes_prompts_sleeps_and_wakes_through_ec2_states(
        rehearsal: Rehearsal, browser: Browser, tmp_path: Path) -> None:
    rehearsal.key = _init(rehearsal)
    assert rehearsal.ec2_states() == ["stopped"]
    with BrowserPages(browser, tmp_path) as pages:
        page = pages.new_context(rehearsal.url).new_page()
        log_in(page, password=PASSWORD)  # the health page: nothing woken yet
        assert rehearsal.status() == "stopped"

        # 1. The first visit wakes it: the instance starts, the host's decision finds
        #    the start asked of it, the container comes up behind its TLS gate.
        _wake_in_the_browser(page, rehearsal)
        assert rehearsal.ec2_states() == ["stopped", "pending", "running"]
        assert "a start was asked of this instance" in rehearsal.host_log()

        # 2. A prompt to the fake model from the page, and a file in the workspace.
        with rehearsal.api() as client:
            created = client.post("/session", json={"title": "rehearsal"})
        assert created.status_code == 200, created.text
        session_id = str(created.json()["id"])
        page.goto(_session_url(rehearsal, session_id), timeout=START_MS)
        prompt = "rehearse the aws path"
        send_prompt(page, prompt)
        expect(page.get_by_text(reply_for(prompt)).first).to_be_visible(timeout=30_000)
        _shell(rehearsal, session_id, "echo kept-in-s3 > rehearsal-note.txt")

        # 3. Left alone, it sleeps: the container saves, exits "asleep", and the host
        #    powers the instance off (it stops: stopping, then stopped).
        page.goto("/_edge/health")
        wait_until(page, lambda: rehearsal.ec2_states()[-1:] == ["stopped"]
                   and len(rehearsal.ec2_states()) == 5, IDLE_TIMEOUT + 90,
                   "the instance to stop after the container went to sleep")
        assert rehearsal.ec2_states() == ["stopped", "pending", "running", "stopping",
                                          "stopped"]
        assert "the container is asleep: powering off" in rehearsal.host_log()
        assert rehearsal.status() == "stopped"

        # 4. The next visit wakes it through the EC2 states again: the session and the
        #    file come back from S3.
        _wake_in_the_browser(page, rehearsal)
        assert rehearsal.ec2_states()[5:] == ["pending", "running"]
        with rehearsal.api() as client:
            listed = client.get("/session")
        assert session_id in [s["id"] for s in listed.json()], listed.text
        page.goto(_session_url(rehearsal, session_id), timeout=START_MS)
        expect(page.get_by_text(reply_for(prompt)).first).to_be_visible(timeout=30_000)
        assert "kept-in-s3" in _shell(rehearsal, session_id, "cat rehearsal-note.txt")
