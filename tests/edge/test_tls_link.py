"""The edge → container link over TLS pinned to the container's per-boot certificate."""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from container.child import descendants
from container.gate import Gate
from container.tls import BootCertificate, make_certificate
from edge.links import pinned_context
from infra.lifecycle import Lifecycle
from infra.net import free_port
from tests.support.capture import (
    INTERNAL_SECRET,
    CaptureServer,
    event_arrivals,
    running_capture,
)
from tests.support.edge import ADMIN_PASSWORD, EdgeServer, make_settings, running_edge
from tests.support.fake_model import FakeModelServer

CREDENTIAL_HEADER = b"Basic " + base64.b64encode(f"opencode:{INTERNAL_SECRET}".encode())
# opencode's own password, in opencode's (and so the agent's) environment: the gate
# puts it on every request it relays, and refuses it from outside.
OPENCODE_HEADER = b"Basic " + base64.b64encode(b"opencode:opencode-own-password")


class GateThread:
    """A real gate in front of the capture server, on its own event loop."""

    def __init__(self, upstream_port: int, cert: BootCertificate) -> None:
        self.cert = cert
        self.loop = asyncio.new_event_loop()
        self.gate = Gate(CREDENTIAL_HEADER, upstream_port, cert.server_context(),
                         upstream_authorization=OPENCODE_HEADER)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port: int = asyncio.run_coroutine_threadsafe(
            self.gate.start("127.0.0.1", 0), self.loop).result(10)

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.gate.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    with running_capture() as server:
        yield server


@pytest.fixture
def gate(capture: CaptureServer) -> Iterator[GateThread]:
    thread = GateThread(capture.port, make_certificate("127.0.0.1"))
    yield thread
    thread.stop()


def _register(edge: EdgeServer, port: int, cert_pem: str) -> None:
    edge.run(Lifecycle(edge.edge.backends.state, owner="test").register_running(
        f"127.0.0.1:{port}", INTERNAL_SECRET, cert_pem, 600))


def test_the_edge_reaches_the_container_through_the_pinned_gate(
        edge: EdgeServer, gate: GateThread, capture: CaptureServer) -> None:
    _register(edge, gate.port, gate.cert.cert_pem)
    response = httpx.get(f"{edge.url}/session?x=1", auth=("admin", ADMIN_PASSWORD), timeout=10)
    assert response.status_code == 200
    seen = capture.last("/session")
    assert seen.header_values("authorization") == [OPENCODE_HEADER.decode()]
    assert seen.header("x-forwarded-proto") == "http"


def test_event_stream_passes_the_gate_event_by_event(
        edge: EdgeServer, gate: GateThread) -> None:
    _register(edge, gate.port, gate.cert.cert_pem)
    arrivals = event_arrivals(f"{edge.url}/global/event", auth=("admin", ADMIN_PASSWORD))
    # Events are 100 ms apart upstream; buffering would deliver them together.
    assert arrivals[2] - arrivals[0] > 0.12


def test_websocket_passes_the_gate(edge: EdgeServer, gate: GateThread) -> None:
    from websockets.sync.client import connect

    _register(edge, gate.port, gate.cert.cert_pem)
    key = edge.create_key("ws")
    url = edge.url.replace("http://", "ws://") + "/pty/abc/connect"
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"},
                 open_timeout=10) as ws:
        ws.send("hello through tls")
        assert "hello through tls" in str(ws.recv(timeout=10))


def test_the_edge_refuses_a_container_presenting_another_certificate(
        edge: EdgeServer, gate: GateThread, capture: CaptureServer) -> None:
    # The state names a certificate the gate does not have (an impostor, or a
    # stale registration): the edge must not talk to it at all.
    _register(edge, gate.port, make_certificate("127.0.0.1").cert_pem)
    before = len(capture.requests)
    response = httpx.get(f"{edge.url}/session", auth=("admin", ADMIN_PASSWORD), timeout=10)
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unavailable"
    assert len(capture.requests) == before


def test_the_gate_refuses_a_connection_without_the_internal_credential(
        gate: GateThread, capture: CaptureServer) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # an attacker does not care about the pin
    before = len(capture.requests)
    for authorization in (b"", b"Authorization: Basic " + base64.b64encode(b"opencode:guess")
                          + b"\r\n"):
        with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /session HTTP/1.1\r\nHost: x\r\n" + authorization + b"\r\n")
            answer = tls.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401")
    assert len(capture.requests) == before


def test_the_gate_refuses_opencodes_own_password(gate: GateThread,
                                                 capture: CaptureServer) -> None:
    """opencode's password is readable by the agent: over the network it is refused."""
    before = len(capture.requests)
    for head in (b"Authorization: " + OPENCODE_HEADER,
                 b"Authorization: " + CREDENTIAL_HEADER + b"\r\nAuthorization: " + OPENCODE_HEADER):
        with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as raw, \
                _attacker_context().wrap_socket(raw) as tls:
            tls.sendall(b"GET /session HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 401")
    assert len(capture.requests) == before


def _attacker_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_every_request_on_a_kept_alive_connection_is_checked_and_rewritten(
        gate: GateThread, capture: CaptureServer) -> None:
    connection = http.client.HTTPSConnection("127.0.0.1", gate.port, timeout=10,
                                             context=pinned_context(gate.cert.cert_pem))
    own = {"Authorization": CREDENTIAL_HEADER.decode()}
    try:
        connection.request("POST", "/one", body=b"x" * 70_000, headers=own)
        assert connection.getresponse().read() and connection.sock is not None
        sock = connection.sock
        connection.request("POST", "/two", body=iter([b"ab", b"", b"cd" * 40_000]),
                           headers=own, encode_chunked=True)
        assert connection.getresponse().status == 200
        assert connection.sock is sock, "the gate did not keep the connection"
        connection.request("GET", "/three", headers={"Authorization": OPENCODE_HEADER.decode()})
        with pytest.raises((http.client.HTTPException, OSError)):
            connection.getresponse()
    finally:
        connection.close()
    one, two = capture.last("/one"), capture.last("/two")
    assert one.body == b"x" * 70_000 and two.body == b"ab" + b"cd" * 40_000
    for seen in (one, two):
        assert seen.header_values("authorization") == [OPENCODE_HEADER.decode()]
    assert all(r.path != "/three" for r in capture.requests)


def test_plain_http_to_the_gate_gets_nothing(gate: GateThread,
                                             capture: CaptureServer) -> None:
    with socket.create_connection(("127.0.0.1", gate.port), timeout=5) as raw:
        raw.sendall(b"GET /session HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.settimeout(2)
        try:
            answer = raw.recv(4096)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 200")
    assert all(r.path != "/session" for r in capture.requests)


def test_the_real_container_serves_through_its_gate_and_the_edge_pins_it(
        state_dir: Path, opencode_bin: str, fake_model: FakeModelServer) -> None:
    """The whole link with the real container: opencode on loopback only, the gate on
    its port with this boot's certificate, the edge trusting exactly that one."""
    gate_port = free_port()
    settings = make_settings(state_dir, model_url=fake_model.base_url, gate=True,
                             gate_host="127.0.0.1", gate_port=gate_port)
    with running_edge(settings) as edge:
        key = edge.create_key("tls")
        auth = {"Authorization": f"Bearer {key}"}
        health = httpx.get(f"{edge.url}/global/health", headers=auth, timeout=90)
        assert health.status_code == 200, health.text
        state = edge.run(edge.edge.backends.state.get())
        assert state.endpoint == f"127.0.0.1:{gate_port}"
        assert state.cert_pem and "BEGIN CERTIFICATE" in state.cert_pem
        # Plain HTTP to the registered endpoint gets nothing from opencode.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{state.endpoint}/global/health", timeout=3)
        created = httpx.post(f"{edge.url}/session", headers=auth, json={"title": "tls"},
                             timeout=30)
        assert created.status_code == 200
        # opencode's password (in its environment, so the agent's) is not the gate's
        # credential, and the gate refuses it; the credential the edge sends works.
        password = opencode_environment_of(os.getpid())["OPENCODE_SERVER_PASSWORD"]
        assert state.credential and password and password != state.credential
        with httpx.Client(base_url=f"https://{state.endpoint}", trust_env=False, timeout=10,
                          verify=pinned_context(state.cert_pem)) as direct:
            assert direct.get("/global/health", auth=("opencode", password)).status_code == 401
            assert direct.get("/global/health",
                              auth=("opencode", state.credential)).status_code == 200


def opencode_environment_of(ancestor: int) -> dict[str, str]:
    """The environment of the opencode server started under ``ancestor``."""
    for pid in descendants(ancestor):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"web" in argv and any(b"opencode" in arg for arg in argv):
                raw = Path(f"/proc/{pid}/environ").read_bytes()
                return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0")
                            if b"=" in item)
        except FileNotFoundError:
            continue
    raise AssertionError("opencode's process was not found")
