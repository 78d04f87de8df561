"""The hostile suite: over 10,000 generated requests (hypothesis) against a live edge on
127.0.0.1, written byte for byte: malformed, duplicated, oversized and unicode
credentials and cookies; CRLF inside headers; request-smuggling shapes; path and Host
tricks; writes from other sites and other local ports with every kind of credential;
WebSocket upgrades from foreign origins; huge, chunked, lying and slow bodies.

What must hold for every one of them:

- nothing reaches the container (here the capture upstream, which records every
  request it gets) unless it carries a valid credential, comes from the edge's own
  origin (or from no browser at all) and was sent to the edge's own host name;
- the edge never answers 5xx;
- no response and no log line of the whole suite (every logger captured: the edge's
  and the libraries' at DEBUG, the server's at INFO) contains the internal credential
  or any other secret, and nothing is logged as an error.

Each request carries its number in the query (``hostile=N``), so whatever reaches
the upstream says which generated request it was.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edge.session import Session, SessionSigner, password_fingerprint
from infra.credentials import mint_api_key
from tests.support.capture import INTERNAL_SECRET, CaptureServer, attach_upstream, running_capture
from tests.support.edge import ADMIN_PASSWORD, EdgeServer, make_settings, running_edge
from tests.support.raw_http import send_raw

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(900)]

BATCH = 50
BATCHES = 205  # 10,250 requests
SUITE_BUDGET = 600.0  # seconds: the suite is bounded whatever the machine

WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
METHODS = ("GET", "HEAD", "OPTIONS", *WRITE_METHODS, "WS")
PATHS = ("/session", "/session/ses_1/message", "/file?path=%2Fetc%2Fpasswd", "/",
         "/project", "/api/health", "/%2e%2e/%2e%2e/etc/passwd", "/a/../_edge/status",
         "//evil.example/session", "/caf\u00e9", "/x?y=\u00e9\u00e8",
         "/" + "a" * 6000, "/_edge/status", "/_edge/health", "/_edge/login",
         "/_edge/logout", "/_edge/nope", "/pty/p1/connect", "http://evil.example/session",
         "/session;jsessionid=x", "/session%00", "/session\t",
         "/_edge/login?" + "&".join(f"a{n}=1" for n in range(20)),
         "/_edge/login?next=%2F.%2F%2Fevil.example")
# Repeats weigh the draw: most requests are well-formed but for one or two things.
HOSTS = ("own",) * 10 + ("localhost", "localhost", "ipv6", "foreign", "rebind", "two",
                         "missing", "garbage", "unicode", "empty")
ORIGINS = ("none",) * 3 + ("own",) * 3 + ("foreign", "other-port", "null", "localhost",
                                          "two", "https-own", "garbage", "unicode")
FETCH_SITES = (None, None, "same-origin", "none", "same-site", "cross-site", "garbage")
FETCH_MODES = (None, "navigate", "cors", "no-cors", "websocket")
VALID = ("bearer-key", "x-api-key", "basic-key", "cookie", "cookie-among-others",
         "basic-password")
CREDENTIALS = (*VALID, "bearer-key", "cookie", "none", "none", "wrong-key", "revoked-key",
               "expired-key", "key-lookalike", "wrong-password", "basic-garbage",
               "basic-unicode", "basic-no-colon", "bearer-huge", "two-authorization",
               "key-and-bearer", "tampered-cookie", "host-cookie-over-http", "unicode-cookie",
               "foreign-cookie", "expired-cookie", "far-future-cookie", "unsigned-cookie",
               "empty-cookie", "cookie-huge", "unknown-scheme")
BODIES = ("none",) * 6 + ("small",) * 4 + ("form-login", "form-login", "chunked", "cl-te",
                                           "te-cl", "two-lengths", "lying", "slow", "huge",
                                           "smuggled")
EXTRAS = ("none",) * 10 + ("crlf-origin", "crlf-auth", "obs-fold", "bare-lf", "forwarded-for",
                           "x-request-context", "many-headers", "nul", "long-header")


@dataclass(frozen=True)
class Attack:
    method: str
    path: str
    host: str
    origin: str
    fetch_site: str | None
    fetch_mode: str | None
    credential: str
    body: str
    extra: str


attacks = st.builds(Attack, st.sampled_from(METHODS), st.sampled_from(PATHS),
                    st.sampled_from(HOSTS), st.sampled_from(ORIGINS),
                    st.sampled_from(FETCH_SITES), st.sampled_from(FETCH_MODES),
                    st.sampled_from(CREDENTIALS), st.sampled_from(BODIES),
                    st.sampled_from(EXTRAS))


@dataclass
class Target:
    """The live edge, its upstream, and every secret the suite must never see again."""

    edge: EdgeServer
    upstream: CaptureServer
    credentials: dict[str, bytes]  # credential case → the header line(s) it sends
    secrets: list[bytes]
    logs: list[tuple[int, str]]  # (level, formatted line) of every log record
    answers: list[bytes] = field(default_factory=list)
    sent: dict[int, tuple[Attack, bool]] = field(default_factory=dict)
    definite: list[int] = field(default_factory=list)
    statuses: dict[int, int | None] = field(default_factory=dict)
    counter: int = 0


class _Capture(logging.Handler):
    def __init__(self, lines: list[tuple[int, str]]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # With the traceback of any exception.
        self.lines.append((record.levelno, self.format(record)))


def _basic(user: str, password: str | bytes) -> bytes:
    raw = password if isinstance(password, bytes) else password.encode()
    return b"Basic " + base64.b64encode(user.encode() + b":" + raw)


def _credentials(edge: EdgeServer) -> tuple[dict[str, bytes], list[bytes]]:
    """The header lines of each credential case, and the secrets behind them."""
    backends = edge.edge.backends
    valid = edge.create_key("hostile")
    revoked = edge.create_key("revoked")
    edge.run(backends.keys.revoke_key(revoked.split("_")[1], time.time()))
    expired = mint_api_key("expired", backends.pepper, expires=time.time() - 60)
    edge.run(backends.keys.put_key(expired.record))
    admin = edge.run(backends.keys.get_admin())
    binding = password_fingerprint(admin.password_hash)
    secret = backends.session_secret
    signer = SessionSigner(secret, edge.settings.session_ttl)
    now = time.time()
    cookie = signer.issue(Session("admin", now + 3600, binding, 0)).encode()
    foreign = SessionSigner(b"f" * 32).issue(Session("admin", now + 3600, binding, 0)).encode()
    expired_cookie = signer.issue(Session("admin", now - 10, binding, 0)).encode()
    far = signer.issue(Session("admin", now + 100 * edge.settings.session_ttl, binding, 0))
    payload, _, signature = cookie.partition(b".")
    lines = {
        "none": b"",
        "bearer-key": b"Authorization: Bearer " + valid.encode(),
        "x-api-key": b"X-API-Key: " + valid.encode(),
        "basic-key": b"Authorization: " + _basic("anyone", valid),
        "cookie": b"Cookie: ocedge_session=" + cookie,
        "cookie-among-others": b"Cookie: theme=dark; ocedge_session=" + cookie + b"; x=1",
        "basic-password": b"Authorization: " + _basic("admin", ADMIN_PASSWORD),
        "wrong-key": b"Authorization: Bearer " + mint_api_key("x", b"q" * 32).key.encode(),
        "revoked-key": b"X-API-Key: " + revoked.encode(),
        "expired-key": b"X-API-Key: " + expired.key.encode(),
        "key-lookalike": b"X-API-Key: " + valid.encode()[:-3] + b"zzz",
        "wrong-password": b"Authorization: " + _basic("admin", "not-the-password-1"),
        "basic-garbage": b"Authorization: Basic !!!*&^%",
        "basic-unicode": b"Authorization: " + _basic("adm\u00efn", "p\u00e4ssw\u00f6rd\u2603"),
        "basic-no-colon": b"Authorization: Basic " + base64.b64encode(ADMIN_PASSWORD.encode()),
        "bearer-huge": b"Authorization: Bearer oce_" + b"A" * 7000,
        "two-authorization": b"Authorization: Bearer " + valid.encode()
                             + b"\r\nAuthorization: Bearer oce_x_y",
        "key-and-bearer": b"X-API-Key: " + valid.encode() + b"\r\nX-API-Key: nope",
        "tampered-cookie": b"Cookie: ocedge_session=" + payload + b"." + signature[:-2] + b"AA",
        "host-cookie-over-http": b"Cookie: __Host-ocedge_session=" + cookie,
        "unicode-cookie": b"Cookie: ocedge_session=" + payload + b".\xc3\xa9\xff\xfe",
        "foreign-cookie": b"Cookie: ocedge_session=" + foreign,
        "expired-cookie": b"Cookie: ocedge_session=" + expired_cookie,
        "far-future-cookie": b"Cookie: ocedge_session=" + far.encode(),
        "unsigned-cookie": b"Cookie: ocedge_session=" + payload + b".",
        "empty-cookie": b"Cookie: ocedge_session=; ocedge_session",
        "cookie-huge": b"Cookie: ocedge_session=" + b"a" * 6000 + b"." + b"b" * 100,
        "unknown-scheme": b"Authorization: Digest username=admin",
    }
    pepper = backends.pepper
    pepper_bytes = pepper if isinstance(pepper, bytes) else pepper[pepper.current]
    secrets = [ADMIN_PASSWORD.encode(), valid.rsplit("_", 1)[1].encode(),
               revoked.rsplit("_", 1)[1].encode(), expired.key.rsplit("_", 1)[1].encode(),
               INTERNAL_SECRET.encode(), base64.b64encode(f"opencode:{INTERNAL_SECRET}".encode()),
               secret.hex().encode(), pepper_bytes.hex().encode(), signature,
               _basic("admin", ADMIN_PASSWORD)[len(b"Basic "):]]
    return lines, secrets


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    logs: list[tuple[int, str]] = []
    handler = _Capture(logs)
    # Everything at DEBUG but the server's own loggers, at INFO (with the access log):
    # more than the edge runs them with (warning). At DEBUG the websockets library that
    # uvicorn serves WebSockets with prints every handshake header, credentials and
    # all, which is why the edge's server never runs at debug level.
    levels_wanted = {"": logging.DEBUG, "ocedge": logging.DEBUG, "uvicorn": logging.INFO,
                     "uvicorn.error": logging.INFO, "uvicorn.access": logging.INFO}
    loggers = [logging.getLogger(name) for name in levels_wanted]
    levels = [logger.level for logger in loggers]
    settings = make_settings(tmp_path_factory.mktemp("hostile"), wake_wait=0)
    with running_edge(settings) as edge, running_capture() as upstream:
        attach_upstream(edge, upstream.port)
        for logger, wanted in zip(loggers, levels_wanted.values(), strict=True):
            logger.addHandler(handler)
            logger.setLevel(wanted)
        try:
            lines, secrets = _credentials(edge)
            yield Target(edge, upstream, lines, secrets, logs)
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.removeHandler(handler)
                logger.setLevel(level)


# -- what each attack sends ------------------------------------------------------------


def _host_line(attack: Attack, port: int) -> bytes:
    return {
        "own": f"Host: 127.0.0.1:{port}".encode(), "localhost": f"Host: localhost:{port}".encode(),
        "ipv6": f"Host: [::1]:{port}".encode(), "foreign": b"Host: evil.example",
        "rebind": f"Host: attacker.example:{port}".encode(),
        "two": f"Host: 127.0.0.1:{port}\r\nHost: evil.example".encode(), "missing": b"",
        "garbage": b"Host: a b/c@d", "unicode": "Host: \u00e9vil.example".encode(),
        "empty": b"Host: ",
    }[attack.host]


def _sent_host(attack: Attack, port: int) -> str | None:
    """The host:port the request names when it names exactly one acceptable one."""
    return {"own": f"127.0.0.1:{port}", "localhost": f"localhost:{port}",
            "ipv6": f"[::1]:{port}"}.get(attack.host)


def _origin_value(attack: Attack, port: int) -> bytes | None:
    return {
        "none": None, "own": f"http://127.0.0.1:{port}".encode(),
        "localhost": f"http://localhost:{port}".encode(), "foreign": b"https://evil.example",
        "other-port": f"http://127.0.0.1:{port + 1}".encode(), "null": b"null",
        "two": f"http://127.0.0.1:{port}\r\nOrigin: https://evil.example".encode(),
        "https-own": f"https://127.0.0.1:{port}".encode(), "garbage": b"http://",
        "unicode": "http://\u00e9vil.example".encode(),
    }[attack.origin]


_EXTRAS = {
    "none": b"", "crlf-origin": b"X-Note: a\r\nOrigin: https://evil.example",
    "crlf-auth": b"X-Note: a\r\nAuthorization: Bearer oce_AAAAAAAAAAAA_" + b"B" * 43,
    "obs-fold": b"X-Note: a\r\n Origin: https://evil.example",
    "bare-lf": b"X-Note: a\nOrigin: https://evil.example",
    "forwarded-for": b"X-Forwarded-For: 198.51.100.1, 10.0.0.1\r\nX-Real-IP: 1.2.3.4",
    "x-request-context": b'X-Amzn-Request-Context: {"http":{"sourceIp":"198.51.100.2"}}',
    "many-headers": b"\r\n".join(b"X-H%d: %d" % (n, n) for n in range(150)),
    "nul": b"X-Note: a\x00b", "long-header": b"X-Long: " + b"x" * 20000,
}
# Extras that add a foreign Origin (however a parser reads them) or are not HTTP at all.
_HOSTILE_EXTRAS = {"crlf-origin", "obs-fold", "bare-lf", "nul"}


def _body(attack: Attack, port: int, tag: str) -> tuple[bytes, bytes, dict[str, Any]]:
    """(body header lines, body, how to send it)."""
    kind = attack.body
    if kind == "none":
        return b"", b"", {}
    if kind == "small":
        data = b'{"title":"hostile"}'
        return b"Content-Type: application/json\r\nContent-Length: %d" % len(data), data, {}
    if kind == "form-login":
        data = f"username=admin&password={ADMIN_PASSWORD}&next=%2F".encode()
        return (b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d"
                % len(data)), data, {}
    if kind == "chunked":
        return b"Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n", {}
    smuggled = (f"GET /session?hostile={tag}s HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Length: 0\r\n\r\n").encode()
    if kind == "cl-te":
        data = b"0\r\n\r\n" + smuggled
        return b"Content-Length: 5\r\nTransfer-Encoding: chunked", data, {}
    if kind == "te-cl":
        data = b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"
        return b"Transfer-Encoding: chunked\r\nContent-Length: 4", data, {}
    if kind == "two-lengths":
        return b"Content-Length: 5\r\nContent-Length: 50", b"hello", {}
    if kind == "lying":
        return b"Content-Length: 1000", b"only a little", {"half_close": True, "timeout": 3.0}
    if kind == "slow":
        data = b"x" * 64
        return b"Content-Length: 64", data, {"trickle": 0.05}
    if kind == "huge":
        data = b"\xab" * (2 * 1024 * 1024)
        return b"Content-Type: application/octet-stream\r\nContent-Length: %d" % len(data), data, {}
    # "smuggled": a second request behind a complete one, no credentials of its own.
    return b"Content-Length: 0", smuggled, {}


def _render(attack: Attack, target: Target, tag: str) -> tuple[bytes, bytes, dict[str, Any]]:
    port = target.edge.port
    method = "GET" if attack.method == "WS" else attack.method
    path = "/pty/p1/connect" if attack.method == "WS" else attack.path
    credential = attack.credential
    if path.startswith("/_edge/logout") and credential.startswith("cookie"):
        credential = "tampered-cookie"  # a real logout would end the suite's own session
    separator = "&" if "?" in path else "?"
    lines = [f"{method} {path}{separator}hostile={tag} HTTP/1.1".encode("utf-8", "replace"),
             _host_line(attack, port), target.credentials[credential]]
    origin = _origin_value(attack, port)
    if origin is not None:
        lines.append(b"Origin: " + origin)
    if attack.fetch_site is not None:
        lines.append(b"Sec-Fetch-Site: " + (b"\xff\x00bad" if attack.fetch_site == "garbage"
                                            else attack.fetch_site.encode()))
    if attack.fetch_mode is not None:
        lines.append(b"Sec-Fetch-Mode: " + attack.fetch_mode.encode())
        lines.append(b"Sec-Fetch-Dest: " + (b"document" if attack.fetch_mode == "navigate"
                                            else b"empty"))
    if attack.method == "WS":
        lines += [b"Upgrade: websocket", b"Connection: Upgrade",
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13"]
    else:
        lines.append(b"Connection: close")
    lines.append(_EXTRAS[attack.extra])
    body_lines, body, how = _body(attack, port, tag)
    lines.append(body_lines)
    head = b"\r\n".join(line for line in lines if line) + b"\r\n\r\n"
    return head, body, how


def may_reach(attack: Attack, port: int) -> bool:
    """Whether the rules allow ``attack`` through to the container (the oracle): a valid
    credential, the edge's own host name, the edge's own origin or no browser at all,
    and not one of the edge's own paths."""
    browser = attack.fetch_site is not None or attack.fetch_mode is not None
    credential = attack.credential
    if credential in ("basic-key", "basic-password") and browser:
        return False  # a browser's Basic credentials are ignored
    if credential not in VALID:
        return False
    host = _sent_host(attack, port)
    if host is None or attack.extra in _HOSTILE_EXTRAS or attack.body in ("two-lengths",):
        return False
    path = "/pty/p1/connect" if attack.method == "WS" else attack.path
    route = urlsplit(path).path if path.startswith("http://") else path.split("?")[0]
    if route.startswith("/_edge/"):
        return False  # the edge's own paths (/a/../_edge/ is not one: nothing normalises it)
    writes = attack.method in (*WRITE_METHODS, "WS")
    origin = _origin_value(attack, port)
    if origin is not None and origin != b"http://" + host.encode():
        return False
    site = attack.fetch_site
    if site is None or site in ("same-origin", "none"):
        return True
    if writes:
        return False
    return attack.fetch_mode == "navigate" and attack.method in ("GET", "HEAD")


def _definitely_reaches(attack: Attack, port: int) -> bool:
    """Requests plain enough that they must get through (the suite is not vacuous)."""
    return (may_reach(attack, port) and attack.credential in ("bearer-key", "x-api-key", "cookie")
            and attack.body in ("none", "small") and attack.extra in ("none", "forwarded-for")
            and attack.method in ("GET", "POST", "DELETE", "WS") and attack.host == "own"
            and (attack.path in ("/session", "/project", "/api/health")
                 # An upgrade with a body is not a WebSocket handshake the server takes.
                 or (attack.method == "WS" and attack.body == "none")))


async def _fire(target: Target, attacks: list[Attack], concurrency: int = 96) -> None:
    """Send every attack, ``concurrency`` at a time, recording what each got."""
    gate = asyncio.Semaphore(concurrency)
    port = target.edge.port

    async def one(n: int, attack: Attack) -> None:
        head, body, how = _render(attack, target, str(n))
        if attack.method == "WS":
            how.setdefault("timeout", 3.0)  # a refused handshake may leave it open
        async with gate:
            answer = await send_raw(port, head, body, **how)
        target.statuses[n] = answer.status
        target.answers.append(answer.data)

    jobs = []
    for attack in attacks:
        target.counter += 1
        target.sent[target.counter] = (attack, may_reach(attack, port))
        if _definitely_reaches(attack, port):
            target.definite.append(target.counter)
        jobs.append(one(target.counter, attack))
    await asyncio.gather(*jobs)


def _check_upstream(target: Target) -> None:
    for captured in target.upstream.requests:
        tags = [part.split("=", 1)[1] for part in captured.query.split("&")
                if part.startswith("hostile=")]
        assert tags, f"an untagged request reached the container: {captured.method} " \
                     f"{captured.raw_path}?{captured.query}"
        assert not tags[-1].endswith("s"), f"a smuggled request reached it: {captured.query}"
        attack, allowed = target.sent[int(tags[-1])]
        assert allowed, f"request {tags[-1]} reached the container: {attack}"
        # The upstream target is built from parts: always a path, never another host.
        assert captured.raw_path.startswith("/"), captured.raw_path
        # Origin goes on to opencode, so it can check it too.
        origin = _origin_value(attack, target.edge.port)
        assert captured.header_values("origin") == ([origin.decode()] if origin else []), \
            (attack, captured.headers)
        forwarded = " ".join(f"{n}: {v}" for n, v in captured.headers)
        assert "ocedge_session" not in forwarded, "the edge's cookie went upstream"
        assert captured.header("x-api-key") is None
        assert captured.header_values("authorization") == [
            "Basic " + base64.b64encode(f"opencode:{INTERNAL_SECRET}".encode()).decode()]


@settings(max_examples=BATCHES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck), phases=[Phase.generate])
@given(batch=st.lists(attacks, min_size=BATCH, max_size=BATCH))
def _generate(collected: list[Attack], batch: list[Attack]) -> None:
    collected.extend(batch)


# Sent whatever hypothesis draws: what must get through (a WebSocket among them, so the
# link to the container is always exercised) and the plainest things that must not.
ANCHORS = [
    Attack("WS", "/pty/p1/connect", "own", "own", "same-origin", "websocket", "cookie", "none",
           "none"),
    Attack("WS", "/pty/p1/connect", "own", "none", None, None, "bearer-key", "none", "none"),
    Attack("POST", "/session", "own", "own", "same-origin", "cors", "cookie", "small", "none"),
    Attack("GET", "/session", "own", "none", None, None, "x-api-key", "none", "none"),
    Attack("WS", "/pty/p1/connect", "own", "other-port", "same-site", "websocket", "cookie",
           "none", "none"),
    Attack("POST", "/session", "own", "foreign", "cross-site", "navigate", "cookie", "small",
           "none"),
    Attack("GET", "/session", "rebind", "none", None, None, "bearer-key", "none", "none"),
]


def test_ten_thousand_hostile_requests(target: Target) -> None:
    attacks_made: list[Attack] = list(ANCHORS)
    _generate(attacks_made)
    assert len(attacks_made) >= 10_000, len(attacks_made)
    asyncio.run(asyncio.wait_for(_fire(target, attacks_made), SUITE_BUDGET))
    # Late arrivals (bodies still trickling in) are judged too.
    time.sleep(1.0)
    _check_upstream(target)

    failed = {n: status for n, status in target.statuses.items()
              if status is not None and status >= 500}
    assert not failed, "\n".join(f"{status} for {target.sent[n][0]}"
                                  for n, status in list(failed.items())[:10])
    reached = {int(c.query.rsplit("hostile=", 1)[1]) for c in target.upstream.requests}
    assert target.definite, "no plainly valid request was generated"
    missed = [n for n in target.definite if n not in reached]
    assert not missed, f"valid requests did not get through: " \
                       f"{[(target.sent[n][0], target.statuses[n]) for n in missed[:5]]}"
    # No secret in any answer or any log line of the suite.
    seen = b"\n".join(target.answers)
    for secret in target.secrets:
        assert secret not in seen, f"a secret came back in an answer: {secret[:4]!r}…"
        logged = [line for _, line in target.logs if secret.decode("latin-1") in line]
        assert not logged, f"a secret was logged ({secret[:4]!r}…): {logged[0][:300]}"
    # The upstream stand-in runs in this process too: its complaints (a client, the
    # edge, that hung up on a request whose own client left) are not the edge's.
    errors = [line for level, line in target.logs if level >= logging.ERROR
              and "tests/support/capture.py" not in line]
    assert not errors, "\n".join(errors)[:8000]
