"""What a request's headers say about it: every question the edge asks of them.

Does it mean someone is using the workspace (activity) or is it an open tab's
background traffic? Is it a browser, a page navigation, an event stream? Does it
want HTML? Where does it come from (its client address, from the front door's own
request context, never from a header the client writes), which host was it sent
to, and did it arrive over HTTPS?

An open tab must neither keep the container awake nor wake it: the opencode UI
polls and re-opens its event stream by itself. Browsers tell their background
requests apart with Sec-Fetch-Mode; other clients (curl, SDKs, the opencode CLI)
send no Sec-Fetch-* headers and mean every request except an event stream.
"""

from __future__ import annotations

import ipaddress
import json
import re
from enum import StrEnum
from urllib.parse import urlsplit

from edge.types import Scope

# What a host name (or an IPv6 address, without its brackets) may be made of.
_HOST = re.compile(r"[a-z0-9_.-]+|[0-9a-f:.]+")
# Paths that only ever answer with an event stream (opencode's).
EVENT_STREAM_PATHS = frozenset({"/global/event", "/event"})


class Intent(StrEnum):
    ACTIVITY = "activity"  # wakes the container and renews its idle deadline
    BACKGROUND = "background"  # forwarded while it runs; never wakes, never renews


ACTIVITY = Intent.ACTIVITY
BACKGROUND = Intent.BACKGROUND


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    """The first value of header ``wanted`` (lower-case, as ASGI servers pass names)."""
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return None


def header_values(scope: Scope, wanted: bytes) -> list[bytes]:
    """Every value of header ``wanted``, in order."""
    return [bytes(value) for name, value in scope["headers"] if name == wanted]


def intent(scope: Scope) -> Intent:
    """Activity or background, as the module docstring explains."""
    if scope["type"] == "websocket":
        # A (re)connecting terminal socket is the page's own doing; what is typed
        # into it is activity and is counted message by message.
        return BACKGROUND
    if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
        return ACTIVITY
    fetch_mode = _header(scope, b"sec-fetch-mode")
    if fetch_mode is not None:
        return ACTIVITY if fetch_mode == b"navigate" else BACKGROUND
    if scope["method"] == "OPTIONS":
        return BACKGROUND
    return BACKGROUND if accepts_event_stream(scope) else ACTIVITY


def is_navigation(scope: Scope) -> bool:
    """A browser loading a page (so it can be shown the waking page)."""
    return _header(scope, b"sec-fetch-mode") == b"navigate"


def is_browser(scope: Scope) -> bool:
    """Sent by a browser (which logs in on the login page), not curl or an SDK."""
    for name, value in scope["headers"]:
        if name.startswith(b"sec-fetch-"):
            return True
        if name == b"user-agent" and value.startswith(b"Mozilla/"):
            return True
    return False


def sends_fetch_metadata(scope: Scope) -> bool:
    """Carries Sec-Fetch-* headers: a browser made it, whatever its user agent says
    (every current browser sends them; scripts cannot set them)."""
    return any(name.startswith(b"sec-fetch-") for name, _ in scope["headers"])


def wants_login_page(scope: Scope) -> bool:
    """A browser loading a page: without a session it is sent to the login page."""
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
        return False
    if is_navigation(scope):
        return True
    return _header(scope, b"sec-fetch-mode") is None and is_browser(scope) and wants_html(scope)


def accepts_event_stream(scope: Scope) -> bool:
    """Any Accept header of the request names text/event-stream."""
    return any(name == b"accept" and b"text/event-stream" in value
               for name, value in scope["headers"])


def wants_event_stream(scope: Scope) -> bool:
    """Asks for an event stream, by its Accept header or by an event-stream-only path."""
    return scope["path"] in EVENT_STREAM_PATHS or accepts_event_stream(scope)


def wants_html(scope: Scope) -> bool:
    """The (first) Accept header names text/html: a person reads the answer."""
    accept = _header(scope, b"accept")
    return accept is not None and b"text/html" in accept


def client_address(scope: Scope, trust_forwarded: bool, web_adapter: bool = False) -> str:
    """The client's address, as the front door saw it; never from a header the client
    can write. The failed-login throttle counts by it.

    - API Gateway (Mangum): the event's ``requestContext`` source IP.
    - Function URL (Lambda Web Adapter, ``web_adapter``): the request context the
      adapter passes in ``x-amzn-request-context`` (awslabs.github.io/aws-lambda-web-
      adapter, "Request & Lambda Context"); the adapter sets it with ``insert``, which
      replaces any copy the client sent (aws/aws-lambda-web-adapter#286, in every
      release since 0.7.2).
    - Behind a proxy the operator trusts (``trust_forwarded``): the *last*
      X-Forwarded-For entry, the one that proxy appended (the first ones are the
      client's to write).
    - Otherwise the socket's peer.
    """
    found = _source_ip(_request_context(scope, web_adapter))
    if found:
        return found
    if trust_forwarded:
        hops = b",".join(header_values(scope, b"x-forwarded-for")).split(b",")
        last = hops[-1].strip().decode("latin-1")
        if last and _is_address(last):
            return last
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _request_context(scope: Scope, web_adapter: bool) -> dict[str, object] | None:
    """The front door's request context: Mangum's event's, or (under Lambda Web
    Adapter) the one the adapter writes into ``x-amzn-request-context``."""
    event = scope.get("aws.event")
    if isinstance(event, dict) and isinstance(event.get("requestContext"), dict):
        context: dict[str, object] = event["requestContext"]
        return context
    if web_adapter:
        raw = _header(scope, b"x-amzn-request-context")
        if raw is not None:
            try:
                parsed = json.loads(raw)
            except ValueError:
                return None
            return parsed if isinstance(parsed, dict) else None
    return None


def front_door_domain(scope: Scope, web_adapter: bool) -> str | None:
    """The host name the Lambda front door (Function URL, API Gateway) received the
    request for, from its request context: the edge's own, whatever the Host header
    that reached the edge says."""
    context = _request_context(scope, web_adapter)
    domain = context.get("domainName") if context else None
    return domain.lower() if isinstance(domain, str) and _HOST.fullmatch(domain.lower()) else None


def _source_ip(context: object) -> str | None:
    """``sourceIp`` of an API Gateway v2 / Function URL (``http``) or v1 (``identity``)
    request context."""
    if not isinstance(context, dict):
        return None
    for part in ("http", "identity"):
        section = context.get(part)
        if isinstance(section, dict) and isinstance(section.get("sourceIp"), str) \
                and _is_address(section["sourceIp"]):
            return str(section["sourceIp"])
    return None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def request_host(scope: Scope) -> tuple[str, str] | None:
    """(host name, "host[:port]") of the Host header, lower-case, without a trailing
    dot; None when there is none, more than one, or it is not a host."""
    values = header_values(scope, b"host")
    if len(values) != 1:
        return None
    try:
        text = values[0].decode("ascii").strip().lower()
        split = urlsplit("//" + text)
        name = split.hostname
        port = split.port
    except (UnicodeDecodeError, ValueError):
        return None
    if not name or split.path or split.query or split.fragment or "@" in text \
            or not _HOST.fullmatch(name):
        return None
    name = name.rstrip(".")
    shown = f"[{name}]" if ":" in name else name
    return name, shown + (f":{port}" if port is not None else "")


def is_secure(scope: Scope, cookie_secure: str, trust_forwarded: bool) -> bool:
    """Whether the client reached the edge over HTTPS (so cookies get ``Secure``).

    ``cookie_secure`` is the setting: "true", "false" or "auto" (from the scheme,
    or a trusted X-Forwarded-Proto)."""
    if cookie_secure != "auto":
        return cookie_secure == "true"
    if scope.get("scheme") in ("https", "wss"):
        return True
    if trust_forwarded:
        proto = _header(scope, b"x-forwarded-proto")
        if proto is not None:
            return proto.strip().lower() == b"https"
    return False
