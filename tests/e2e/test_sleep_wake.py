"""Sleep and wake with the real opencode and the fake model: exactly one wake, idle
deadlines, the keep-alive watcher, crashes, the reaper, the CLI and request intent.

A few deployments (each its own state directory and edge) keep the suite short:
``main`` (30 s idle timeout), ``short`` (4 s, for tests that wait for sleep),
``long_job`` (8 s, for the long prompt) and ``patient`` (wake_wait 0.5 s, for the
waking page). Tests assert on changes (launch counts, audit rows since the test
began), so each also runs on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.edge import EdgeServer, make_settings, running_edge
from tests.support.fake_model import FakeModelServer, reply_for
from tests.support.lifecycle import (
    BACKGROUND,
    NAVIGATE,
    alive,
    children,
    cli_env,
    container_log,
    container_pid,
    ensure_asleep,
    generations,
    kill_group,
    kill_tcp_connection,
    launches,
    ocedge,
    opencode_children,
    state,
    status_json,
    tcp_connections,
    wait_for,
    wait_for_status,
    wait_until_asleep,
    writes,
)

pytestmark = pytest.mark.opencode

SHORT_IDLE = 4.0
MAIN_IDLE = 30.0
# opencode can take a few seconds (on a busy machine) between accepting a prompt and
# marking its session busy; the long-job timeout leaves room for that.
LONG_JOB_IDLE = 8.0


def _deployment(tmp_path_factory: pytest.TempPathFactory, fake_model: FakeModelServer,
                name: str, **overrides: Any) -> Iterator[EdgeServer]:
    settings = make_settings(tmp_path_factory.mktemp(name), model_url=fake_model.base_url,
                             **overrides)
    with running_edge(settings) as server:
        yield server


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
         fake_model: FakeModelServer) -> Iterator[EdgeServer]:
    yield from _deployment(tmp_path_factory, fake_model, "main", idle_timeout=MAIN_IDLE)


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
          fake_model: FakeModelServer) -> Iterator[EdgeServer]:
    yield from _deployment(tmp_path_factory, fake_model, "short", idle_timeout=SHORT_IDLE)


@pytest.fixture
def long_job(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
             fake_model: FakeModelServer) -> Iterator[EdgeServer]:
    yield from _deployment(tmp_path_factory, fake_model, "long-job", idle_timeout=LONG_JOB_IDLE)


@pytest.fixture
def fell_asleep(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
                fake_model: FakeModelServer) -> Iterator[EdgeServer]:
    yield from _deployment(tmp_path_factory, fake_model, "fell-asleep", idle_timeout=SHORT_IDLE)


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory, opencode_bin: str,
            fake_model: FakeModelServer) -> Iterator[EdgeServer]:
    yield from _deployment(tmp_path_factory, fake_model, "patient", idle_timeout=MAIN_IDLE,
                           wake_wait=0.5)


def _key_headers(edge: EdgeServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {edge.create_key()}"}


def _client(edge: EdgeServer, headers: dict[str, str], timeout: float = 60) -> httpx.Client:
    return httpx.Client(base_url=edge.url, headers=headers, timeout=timeout, trust_env=False)


def _get_once_awake(client: httpx.Client, path: str, timeout: float = 90) -> httpx.Response:
    """GET ``path`` as an API client does against a waking deployment: a 503 with
    Retry-After (the start took longer than wake_wait) means ask again."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        assert response.headers.get("Retry-After"), response.text
        time.sleep(0.5)


def _wake(edge: EdgeServer, auth: dict[str, str]) -> None:
    """Make sure the container runs, the way a user would: an API request."""
    with _client(edge, auth) as client:
        response = _get_once_awake(client, "/global/health")
    assert response.status_code == 200, response.text
    wait_for_status(edge, "running", timeout=5)


def _create_session(client: httpx.Client, title: str) -> str:
    created = client.post("/session", json={"title": title})
    assert created.status_code == 200, created.text
    session_id = created.json()["id"]
    assert isinstance(session_id, str)
    return session_id


@contextlib.contextmanager
def _kept_active(edge: EdgeServer, auth: dict[str, str]) -> Iterator[None]:
    """A user busy with the workspace meanwhile: API requests, each one activity."""
    stop = threading.Event()

    def use() -> None:
        with _client(edge, auth) as client:
            while not stop.wait(0.2):
                client.get("/session")

    user = threading.Thread(target=use, daemon=True)
    user.start()
    try:
        yield
    finally:
        stop.set()
        user.join(timeout=30)


def _transition_at(edge: EdgeServer, status: str, after: float) -> float:
    """When the state item was first written with ``status`` after ``after``."""
    times = [at for at, _, kind, s in writes(edge, "put") if s == status and at > after]
    assert times, f"no transition to {status} after {after}"
    return times[0]


def _assistant_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["info"]["role"] == "assistant"]


def _text(message: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in message["parts"] if p.get("type") == "text")


# -- exactly one wake ----------------------------------------------------------------


def test_200_concurrent_requests_to_a_sleeping_deployment_start_exactly_one_container(
        main: EdgeServer) -> None:
    ensure_asleep(main)
    auth = _key_headers(main)
    before, started = launches(main), time.time()

    async def burst() -> list[httpx.Response | BaseException]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=main.url, headers=auth, limits=limits,
                                     timeout=90, trust_env=False) as client:
            return await asyncio.gather(*(client.get("/global/health") for _ in range(200)),
                                        return_exceptions=True)

    results = asyncio.run(burst())

    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} requests failed outright, e.g. {errors[0]!r}"
    responses = [r for r in results if isinstance(r, httpx.Response)]
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers.get("Retry-After"), response.text
        else:
            assert response.json().get("healthy") is True
    assert statuses[200] > 0, f"no request got through once the container ran: {statuses}"
    print(dict(statuses))
    assert launches(main) - before == 1, "concurrent cold requests started more than one container"
    # A lease is a move to starting under a new generation; the start's progress
    # steps are further writes of that same generation.
    leases = {g for at, _, _, status, g in generations(main) if status == "starting"
              and at >= started}
    assert len(leases) == 1, f"the start lease was taken {len(leases)} times"
    assert state(main).status == "running"


# -- the keep-alive watcher --------------------------------------------------------


def test_watcher_reconnects_after_its_event_stream_is_killed_and_still_renews(
        main: EdgeServer) -> None:
    auth = _key_headers(main)
    _wake(main, auth)
    with _client(main, auth) as client:
        session_id = _create_session(client, "reconnect-probe")
    running = state(main)
    assert running.endpoint is not None
    opencode_port = int(running.endpoint.rsplit(":", 1)[1])
    pid = container_pid(main)
    assert pid is not None
    # The watcher connects right after registering; give it a moment if it just woke.
    connections: list[tuple[int, int]] = []
    deadline = time.monotonic() + 10
    while not connections and time.monotonic() < deadline:
        connections = tcp_connections(pid, opencode_port)
        time.sleep(0.1)
    assert connections, "the container holds no connection to opencode's event stream"

    log_offset = len(container_log(main))
    for local, peer in connections:
        assert str(local) in kill_tcp_connection(local, peer), "ss -K destroyed nothing"

    deadline = time.monotonic() + 15
    new_log = ""
    while time.monotonic() < deadline:
        new_log = container_log(main)[log_offset:]
        if "event stream reconnected" in new_log:
            break
        time.sleep(0.1)
    assert "event stream dropped" in new_log or "event stream ended" in new_log, new_log
    assert "event stream reconnected" in new_log, f"no reconnect logged:\n{new_log}"
    assert tcp_connections(pid, opencode_port), "no new connection to opencode"

    # Behaviour: a session.updated after the drop still renews the deadline. It is
    # caused on opencode directly, so only the watcher can have seen it; waiting out
    # 5% of the timeout since the last renewal (by anyone) makes a renewal due.
    container_writer = f":{pid}"
    last_renewal = (state(main).deadline or 0) - MAIN_IDLE
    time.sleep(max(0.0, last_renewal + 0.05 * MAIN_IDLE + 0.3 - time.time()))
    patched_at = time.time()
    renamed = httpx.patch(f"http://{running.endpoint}/session/{session_id}",
                          json={"title": "renamed after reconnect"},
                          auth=("opencode", running.credential or ""), timeout=10,
                          trust_env=False)
    assert renamed.status_code == 200, renamed.text
    renewed = wait_for(main, lambda s: (s.deadline or 0) >= patched_at + MAIN_IDLE - 0.1,
                       timeout=5, what="renewed after the session.updated")
    assert renewed.generation == running.generation
    # The audit row lands just after the state row it describes.
    deadline = time.monotonic() + 2
    while not [w for w in writes(main, "deadline")
               if w[1].endswith(container_writer) and w[0] >= patched_at]:
        assert time.monotonic() < deadline, (
            "the deadline was renewed, but not by the watcher: "
            f"{writes(main, 'deadline')[-3:]}")
        time.sleep(0.05)


# -- a crashed opencode ------------------------------------------------------------


def test_crashed_opencode_gives_clean_502s_then_recovers_on_the_next_request(
        main: EdgeServer, fake_model: FakeModelServer) -> None:
    auth = _key_headers(main)
    _wake(main, auth)
    with _client(main, auth) as client:
        session_id = _create_session(client, "crash-probe")
    pid = container_pid(main)
    assert pid is not None
    opencode = opencode_children(pid)
    assert len(opencode) == 1, f"expected one opencode below the container: {children(pid)}"
    before = launches(main)

    # In flight when opencode dies: a prompt waiting for its (slow) answer, and an
    # event stream.
    prompt = "[slow:30] crash-probe in flight"
    in_flight: dict[str, Any] = {}

    def send_prompt() -> None:
        started = time.monotonic()
        try:
            in_flight["response"] = httpx.post(
                f"{main.url}/session/{session_id}/message", headers=auth, timeout=60,
                json={"parts": [{"type": "text", "text": prompt}]}, trust_env=False)
        except httpx.HTTPError as exc:
            in_flight["error"] = exc
        in_flight["took"] = time.monotonic() - started

    def follow_events() -> None:
        started = time.monotonic()
        try:
            with httpx.stream("GET", f"{main.url}/global/event", trust_env=False,
                              headers=auth | {"Accept": "text/event-stream"},
                              timeout=httpx.Timeout(10, read=30)) as response:
                in_flight["events_status"] = response.status_code
                for _ in response.iter_bytes():
                    pass
            in_flight["events_ended"] = time.monotonic() - started
        except httpx.HTTPError as exc:
            in_flight["events_error"] = exc

    threads = [threading.Thread(target=send_prompt, daemon=True),
               threading.Thread(target=follow_events, daemon=True)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while not any("crash-probe in flight" in json.dumps(r["body"]) for r in fake_model.chat_requests()):
        assert time.monotonic() < deadline, "the prompt never reached the model"
        time.sleep(0.1)
    assert in_flight.get("events_status") == 200
    killed_at = time.monotonic()
    os.kill(opencode[0], signal.SIGKILL)

    # An open tab's poll right after the crash: a clear error at once. (A poll never
    # wakes anything, so this holds both before and after the container has
    # recorded the crash: 502 while the state still says running, else 503.)
    with _client(main, BACKGROUND | auth, timeout=30) as tab:
        right_after = tab.get("/session/status")
    assert time.monotonic() - killed_at < 5, "the request right after the crash hung"
    assert right_after.status_code in (502, 503), (right_after.status_code, right_after.text)
    assert right_after.json()["error"] in ("upstream_unavailable", "start_failed")
    assert right_after.json()["message"]
    assert right_after.headers.get("Retry-After")

    for thread in threads:
        thread.join(timeout=15)
        assert not thread.is_alive(), "a request in flight hung after opencode crashed"
    response = in_flight.get("response")
    assert response is not None, f"the prompt in flight got no response: {in_flight.get('error')!r}"
    assert response.status_code == 502, (response.status_code, response.text)
    assert response.json()["error"] == "upstream_unavailable"
    assert "did not answer" in response.json()["message"]
    assert "events_error" not in in_flight, in_flight.get("events_error")
    assert in_flight["events_ended"] is not None

    failed = wait_for_status(main, "failed", timeout=15)
    assert failed.reason and "crashed" in failed.reason, failed.reason
    # It marks the state, then exits non-zero.
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "the container outlived its opencode"
        time.sleep(0.05)
    assert launches(main) == before, "something restarted the container before the next request"

    with _client(main, auth) as client:
        recovered = _get_once_awake(client, f"/session/{session_id}")
    assert recovered.status_code == 200, recovered.text
    assert recovered.json()["id"] == session_id
    assert launches(main) == before + 1
    assert state(main).status == "running"


# -- the reaper ----------------------------------------------------------------------


def test_reaper_stops_a_hung_container_only_once_its_deadline_is_past_the_grace(
        main: EdgeServer, tmp_path: Path) -> None:
    auth = _key_headers(main)
    _wake(main, auth)
    pid = container_pid(main)
    assert pid is not None
    opencode = children(pid)
    state_dir = str(main.settings.state_dir)
    # Hung: the container process no longer runs (and so never puts itself to
    # sleep), while its deadline lies 20 s in the past.
    os.kill(pid, signal.SIGSTOP)
    try:
        current = state(main)
        overdue = dataclasses.replace(current, deadline=time.time() - 20)
        assert main.run(main.edge.backends.state.put_if(current.generation, overdue, ("running",)))

        early = ocedge("reap", "--grace", "60", "--json", "--state-dir", state_dir, cwd=tmp_path)
        assert early.returncode == 0, early.stderr
        assert json.loads(early.stdout)["reaped"] is False
        assert alive(pid) and state(main).status == "running"

        started = time.monotonic()
        reaped = ocedge("reap", "--grace", "5", "--json", "--state-dir", state_dir, cwd=tmp_path)
        took = time.monotonic() - started
        assert reaped.returncode == 0, reaped.stderr
        assert json.loads(reaped.stdout)["reaped"] is True, reaped.stdout
        assert not alive(pid), "the reaper left the hung container running"
        assert not any(alive(p) for p in opencode), "the reaper left opencode running"
        after = state(main)
        assert after.status in ("stopped", "failed"), after
        if after.status == "failed":
            assert "reaped" in (after.reason or ""), after.reason
        print(f"reaping the frozen container took {took:.1f} s")
    finally:
        if alive(pid):
            kill_group(pid)

    before = launches(main)
    with _client(main, auth) as client:
        assert _get_once_awake(client, "/global/health").status_code == 200
    assert launches(main) == before + 1


# -- the CLI -------------------------------------------------------------------------


def test_cli_status_wake_and_sleep_honour_state_dir(main: EdgeServer, tmp_path: Path) -> None:
    ensure_asleep(main)
    state_dir = str(main.settings.state_dir)
    asleep = status_json(main, tmp_path)
    assert {"status", "generation", "since", "deadline", "busy"} <= set(asleep)
    assert asleep["status"] in ("stopped", "failed")
    before = launches(main)

    woke = ocedge("wake", "--state-dir", state_dir, settings_env=cli_env(main), cwd=tmp_path)
    assert woke.returncode == 0, woke.stderr
    assert "Waking the workspace" in woke.stderr
    progress = [line.split() for line in woke.stderr.splitlines() if line.strip().endswith(
        ("starting", "running"))]
    assert [p[-1] for p in progress][-2:] == ["starting", "running"], woke.stderr
    assert woke.stdout.startswith("running"), woke.stdout
    assert launches(main) == before + 1

    awake = status_json(main, tmp_path)
    assert awake["status"] == "running"
    assert awake["generation"] > asleep["generation"]
    assert awake["since"] > asleep["since"]
    assert awake["deadline"] > time.time()
    assert awake["busy"] is False
    # The edge uses the container the CLI started.
    with _client(main, _key_headers(main)) as client:
        assert client.get("/global/health").status_code == 200
    assert launches(main) == before + 1

    slept = ocedge("sleep", "--state-dir", state_dir, cwd=tmp_path)
    assert slept.returncode == 0, slept.stderr
    assert slept.stdout.startswith("stopped"), slept.stdout
    final = status_json(main, tmp_path)
    assert final["status"] == "stopped" and final["generation"] == awake["generation"]
    assert container_pid(main) is None


# -- idle deadline ---------------------------------------------------------------------


def test_idle_container_sleeps_on_time_and_wakes_with_its_sessions(short: EdgeServer) -> None:
    ensure_asleep(short)
    auth = _key_headers(short)
    before = launches(short)
    sent = time.time()
    with _client(short, auth) as client:
        session_id = _create_session(client, "survives-sleep")
    answered = time.time()
    assert launches(short) == before + 1

    # Waiting for the process to exit too: a request in the ~0.1 s between "stopped"
    # and the exit hits the bug test_a_request_just_after_it_fell_asleep_wakes_it shows.
    wait_until_asleep(short, timeout=SHORT_IDLE + 30)
    went_to_sleep = _transition_at(short, "stopping", sent)
    assert went_to_sleep >= sent + SHORT_IDLE, "it went to sleep before the idle timeout"
    assert went_to_sleep <= answered + SHORT_IDLE + 5, "it overslept its idle timeout"

    with _client(short, auth) as client:
        listed = _get_once_awake(client, "/session")
    assert listed.status_code == 200, listed.text
    assert session_id in [s["id"] for s in listed.json()], "the session did not survive the sleep"
    assert launches(short) == before + 2


# Regression (fixed): infra/local/compute.py LocalCompute._start (lines 57-58) returns without
# launching while the previous container process is still alive. The container
# writes "stopped" and only then exits (~0.1 s later), so a request in that window
# takes the start lease (state: starting), compute.start() is a silent no-op, and
# the wake hangs until the waker's start_timeout (opencode_start_timeout + 30 = 90 s)
# marks it failed. Fix: in _start, wait (bounded) for a still-alive previous process
# to exit before launching — every caller holds the start lease, so it is exiting.
def test_a_request_just_after_it_fell_asleep_wakes_it(fell_asleep: EdgeServer) -> None:
    edge = fell_asleep
    auth = _key_headers(edge)
    _wake(edge, auth)
    pid = container_pid(edge)
    assert pid is not None
    wait_for(edge, lambda s: s.status == "stopped", timeout=SHORT_IDLE + 30,
             what="stopped", poll=0.005)
    exiting = alive(pid)
    asked = time.monotonic()
    with _client(edge, auth) as client:
        response = client.get("/global/health")
    took = time.monotonic() - asked
    assert exiting, "the container had exited already: this run did not catch the window"
    assert response.status_code == 200, (
        f"after {took:.1f} s: {response.status_code} {response.text}; "
        f"launches: {launches(edge)}")
    assert launches(edge) == 2


def test_deadline_writes_follow_the_5_percent_rule_and_stop_while_asleep(
        short: EdgeServer) -> None:
    auth = _key_headers(short)
    _wake(short, auth)
    with _client(short, auth) as client:
        session_id = _create_session(client, "deadline-writes")
    before = launches(short)
    started = time.time()
    drive_for = 6.0  # well past the idle timeout: only renewals keep it up

    async def drive() -> Counter[int]:
        statuses: Counter[int] = Counter()
        async with httpx.AsyncClient(base_url=short.url, headers=auth, timeout=30,
                                     trust_env=False) as client:
            async def reader() -> None:
                while time.time() < started + drive_for:
                    statuses[(await client.get("/session")).status_code] += 1

            async def renamer() -> None:
                n = 0
                while time.time() < started + drive_for:
                    n += 1
                    response = await client.patch(f"/session/{session_id}", json={"title": f"t{n}"})
                    statuses[response.status_code] += 1
                    await asyncio.sleep(0.1)

            await asyncio.gather(*(reader() for _ in range(8)), renamer())
        return statuses

    statuses = asyncio.run(drive())
    stopped_driving = time.time()
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 40, statuses
    assert launches(short) == before, "the container slept while it was being used"

    wait_until_asleep(short, timeout=SHORT_IDLE + 30)
    went_to_sleep = _transition_at(short, "stopping", started)
    assert went_to_sleep >= stopped_driving + SHORT_IDLE - 1, "slept before the timeout passed"

    rows = [w for w in writes(short, "deadline") if started <= w[0]]
    by_writer: dict[str, list[float]] = {}
    for at, writer, _, _ in rows:
        by_writer.setdefault(writer, []).append(at)
    assert any(w.startswith("edge:") for w in by_writer), "the edge never renewed the deadline"
    assert any(w.startswith("container:") for w in by_writer), "the watcher never renewed"
    interval = 0.05 * SHORT_IDLE
    elapsed = went_to_sleep - started
    for writer, times in by_writer.items():
        assert len(times) <= elapsed / interval + 1, (
            f"{writer} wrote the deadline {len(times)} times in {elapsed:.1f} s")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # (0.25: the audit time is taken in the store's worker thread, a little late.)
        assert min(gaps, default=interval) >= 0.25 * interval, (
            f"{writer} wrote twice within {min(gaps):.3f} s")
    print({w: len(t) for w, t in by_writer.items()}, f"over {elapsed:.1f} s,",
          sum(statuses.values()), "requests")

    # No deadline write ever happened while the state was not running.
    status_at = "stopped"
    for at, _, kind, status in writes(short):
        if kind == "put":
            status_at = status
        else:
            assert status_at == "running", f"a deadline write at {at} while {status_at}"

    # Asleep: an open tab's background requests are refused at once, wake nothing
    # and write nothing.
    audit_before, launches_before = len(writes(short)), launches(short)
    browser = BACKGROUND | auth
    with _client(short, browser) as client:
        for path in ["/session", "/global/health", "/api/health", "/session/status"] * 5:
            asked = time.monotonic()
            response = client.get(path)
            # wake_wait is 20 s here: a background request must not wait for a wake.
            assert time.monotonic() - asked < 5, "a background request waited for a wake"
            assert response.status_code == 503, (path, response.status_code)
            assert response.headers.get("Retry-After")
            assert response.json()["error"] == "asleep"
    assert launches(short) == launches_before
    assert len(writes(short)) == audit_before, "background requests wrote to the state"
    assert state(short).status == "stopped"


def test_a_prompt_longer_than_the_idle_timeout_finishes_before_the_container_sleeps(
        long_job: EdgeServer, tmp_path: Path) -> None:
    auth = _key_headers(long_job)
    _wake(long_job, auth)
    with _client(long_job, auth) as client, _kept_active(long_job, auth):
        # opencode's first prompt after a start spends seconds (more than this idle
        # timeout on a busy machine) loading its plugins and model catalogue before it
        # marks the session busy: pay that up front, while a user is active, so the
        # long stream is what the test measures.
        warm_up = client.post(f"/session/{_create_session(client, 'warm-up')}/message",
                              json={"parts": [{"type": "text", "text": "warm up"}]})
        assert warm_up.status_code == 200, warm_up.text
        session_id = _create_session(client, "long-job")
    before = launches(long_job)
    prompt = "[slow:14] long job"
    sent = time.time()
    with _client(long_job, auth) as client:
        queued = client.post(f"/session/{session_id}/prompt_async",
                             json={"parts": [{"type": "text", "text": prompt}]})
    assert queued.status_code == 204, queued.text

    # Watch it the way an open tab would (background GETs: forwarded, never renewing)
    # and the way an operator would (`ocedge status --json`).
    samples: list[tuple[float, str, bool]] = []
    cli_busy: list[dict[str, Any]] = []
    next_cli = time.monotonic() + 2
    done: dict[str, Any] | None = None
    with _client(long_job, BACKGROUND | auth) as tab:
        deadline = time.monotonic() + 60
        while done is None and time.monotonic() < deadline:
            current = state(long_job)
            samples.append((time.time(), current.status, current.busy))
            if time.monotonic() >= next_cli:
                cli_busy.append(status_json(long_job, tmp_path))
                next_cli = time.monotonic() + 3
            response = tab.get(f"/session/{session_id}/message")
            assert response.status_code == 200, (
                f"the tab lost the session mid-prompt, {time.time() - sent:.1f} s in: "
                f"{response.status_code} {response.text} {state(long_job)}")
            for message in _assistant_messages(response.json()):
                if message["info"].get("time", {}).get("completed"):
                    done = message
            time.sleep(0.25)
    assert done is not None, "the long prompt never completed"
    finished = done["info"]["time"]["completed"] / 1000
    assert "error" not in done["info"], done["info"]
    assert _text(done) == reply_for(prompt), "the reply was cut short"
    assert finished - sent >= 14 > LONG_JOB_IDLE

    during = [s for s in samples if sent <= s[0] <= finished]
    assert during and all(status == "running" for _, status, _ in during), during
    assert any(busy for _, _, busy in during), "the state never showed the session busy"
    busy_reports = [c for c in cli_busy if c["busy"]]
    assert busy_reports, f"`ocedge status --json` never showed busy: {cli_busy}"
    assert all(c["status"] == "running" for c in busy_reports)
    assert launches(long_job) == before

    wait_until_asleep(long_job, timeout=LONG_JOB_IDLE + 30)
    went_to_sleep = _transition_at(long_job, "stopping", sent)
    assert went_to_sleep >= finished + LONG_JOB_IDLE - 1, (
        f"slept {went_to_sleep - finished:.1f} s after the prompt finished")
    assert went_to_sleep <= finished + LONG_JOB_IDLE + 5, "overslept after the prompt finished"
    assert launches(long_job) == before


# Regression (fixed): edge/app.py Edge._proxy forwards with a state cached for up to 1 s (_STATE_TTL,
# line 39) and answers any UpstreamUnavailable with 502 (lines 322-326). When an open
# tab polled in the second before the container fell asleep, a user's request right
# after it fell asleep is forwarded to the stopped opencode and gets "502 did not
# answer" instead of a wake. Fix: on UpstreamUnavailable for an activity GET/HEAD,
# re-read the state; if it is no longer the running generation it forwarded to, take
# the wake path once instead of answering 502. (It then needs the LocalCompute fix
# above to get its 200.)
def test_a_request_just_after_it_fell_asleep_under_an_open_tab_is_not_a_502(
        short: EdgeServer) -> None:
    auth = _key_headers(short)
    _wake(short, auth)
    time.sleep(1.5)
    # Nothing renews from here on, so the container falls asleep at this deadline.
    fall_asleep = state(short).deadline or 0
    assert fall_asleep - time.time() > 1.2, "no quiet second before the tab's poll"
    time.sleep(fall_asleep - 0.2 - time.time())
    with _client(short, BACKGROUND | auth) as tab:
        assert tab.get("/api/health").status_code == 200, "the tab's poll was not forwarded"
    wait_for(short, lambda s: s.status == "stopped", timeout=SHORT_IDLE + 30,
             what="stopped", poll=0.005)
    with _client(short, auth) as client:
        response = client.get("/session")
    assert response.status_code != 502, response.text
    assert response.status_code in (200, 503), response.text
    if response.status_code == 503:
        assert response.headers.get("Retry-After")


# -- request intent --------------------------------------------------------------------


def test_background_and_event_stream_requests_never_wake_it_a_plain_get_does(
        patient: EdgeServer) -> None:
    ensure_asleep(patient)
    auth = _key_headers(patient)
    before, audit_before = launches(patient), len(writes(patient))
    asks = [
        ("/api/health", BACKGROUND | auth),  # the UI's poll
        ("/global/event", BACKGROUND | auth | {"Accept": "text/event-stream"}),  # EventSource
        ("/global/event", auth | {"Accept": "text/event-stream"}),  # an SDK's event stream
    ]
    for path, headers in asks:
        asked = time.monotonic()
        with _client(patient, headers) as client:
            response = client.get(path)
        took = time.monotonic() - asked
        assert response.status_code == 503, (path, headers, response.text)
        assert response.headers.get("Retry-After"), path
        assert took < patient.settings.wake_wait, f"{path} waited {took:.2f} s for a wake"
    time.sleep(0.5)
    assert launches(patient) == before, "a background request woke the container"
    assert len(writes(patient)) == audit_before
    assert state(patient).status in ("stopped", "failed")

    # A non-browser GET is activity: it wakes the container (answering 503 + Retry-After
    # while it starts, as wake_wait is only 0.5 s here), and then it gets through.
    with _client(patient, auth) as client:
        first = client.get("/global/health")
        assert first.status_code in (200, 503), first.text
        if first.status_code == 503:
            assert first.headers.get("Retry-After") and first.json()["error"] == "waking"
        assert launches(patient) == before + 1, "a plain GET did not wake the container"
        wait_for_status(patient, "running", timeout=60)
        assert client.get("/global/health").status_code == 200
    assert launches(patient) == before + 1


def test_navigation_gets_the_waking_page_while_it_starts_then_the_ui(
        patient: EdgeServer) -> None:
    ensure_asleep(patient)
    auth = _key_headers(patient)
    before = launches(patient)
    asked = time.monotonic()
    with _client(patient, NAVIGATE | auth) as client:
        page = client.get("/")
    took = time.monotonic() - asked
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers.get("Retry-After")
    assert "Starting your workspace" in page.text
    assert "/_edge/status" in page.text
    assert "src=\"http" not in page.text and "href=\"http" not in page.text, "external assets"
    assert 0.4 <= took < 5, f"the waking page came after {took:.2f} s (wake_wait 0.5 s)"
    assert launches(patient) == before + 1, "a navigation did not start the container"

    # A second request while it is still starting waits on the same start.
    with _client(patient, auth) as client:
        meanwhile = client.get("/global/health")
    assert meanwhile.status_code in (200, 503)
    wait_for_status(patient, "running", timeout=60)
    assert launches(patient) == before + 1

    with _client(patient, NAVIGATE | auth) as client:
        ui = client.get("/")
    assert ui.status_code == 200
    assert ui.headers["content-type"].startswith("text/html")
    assert "Starting your workspace" not in ui.text
