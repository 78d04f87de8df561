"""The same-origin layer: only the edge's own pages may write, open a WebSocket, or
read across origins; the local edge answers only to its own host names.

A browser sends its cookie with requests that other pages make: cross-site ones
(SameSite=Lax holds back only some), and same-site ones from any other port of
127.0.0.1 or any other host of the same site. What tells them apart is what the
browser says about the request, which no page can forge:

- ``Origin``: a request carrying one (every write, every WebSocket, every
  cross-origin fetch) must carry the edge's own origin.
- ``Sec-Fetch-Site``: a write or WebSocket must be ``same-origin`` or ``none`` (the
  user's own action); a read from another site or port must be a top-level page
  load (a link), never a fetch, an embed or a frame.

Requests with neither header (curl, SDKs, the opencode CLI) are not affected. The
edge's own origin is ``OCEDGE_PUBLIC_URL`` and the address the request was sent to
(scheme and Host), once the Host is known to be the edge's: served directly (uvicorn,
``ocedge dev``) only 127.0.0.1, localhost, ::1 and the configured names are (DNS
rebinding: a page on another name that resolves here gets 421). Behind a Lambda
front door (Mangum's event, Lambda Web Adapter) or CloudFront the Function URL, API
Gateway or distribution has routed by host name already; OCEDGE_ALLOWED_HOSTS there
makes the edge check too.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from edge import pages
from edge.request import front_door_domain, header_values, is_secure, request_host
from edge.types import ASGIApp, Receive, Scope, Send
from infra.settings import LOOPBACK_HOSTS, Settings

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_origin(scheme: str, host: str, port: int | None) -> str:
    """scheme://host[:port], lower-case, without the scheme's default port."""
    scheme = scheme.lower()
    host = host.lower().rstrip(".")
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + (
        f":{port}" if port is not None and port != _DEFAULT_PORTS.get(scheme) else "")


def parse_origin(value: bytes) -> str | None:
    """An Origin header as a normalised origin; None for "null" or anything else."""
    try:
        split = urlsplit(value.decode("ascii").strip())
        port = split.port
    except (UnicodeDecodeError, ValueError):
        return None
    if split.scheme not in ("http", "https") or not split.hostname or split.path \
            or split.query or split.fragment or split.username is not None:
        return None
    return normalise_origin(split.scheme, split.hostname, port)


class SameOrigin:
    """Refuses what the module docstring describes (403, 421); passes the rest on."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        names = {*LOOPBACK_HOSTS, *settings.extra_hosts}
        if settings.host not in ("0.0.0.0", "::", ""):
            names.add(settings.host.lower())
        # OCEDGE_PUBLIC_URL as an origin (the settings checked it is one).
        self.public = parse_origin(settings.public_url.strip().rstrip("/").encode()) \
            if settings.public_url else None
        public = urlsplit(settings.public_url) if settings.public_url else None
        if public is not None and public.hostname:
            names.add(public.hostname.lower())
        self.exact = frozenset(n for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        # Served directly every Host is checked; behind a Lambda front door (which
        # routes by host name itself) only when names were configured.
        self.always_check_hosts = bool(settings.extra_hosts)

    def _checks_hosts(self, scope: Scope) -> bool:
        # Lambda front doors and CloudFront (OCEDGE_ORIGIN_SECRET) route by host name.
        routed = isinstance(scope.get("aws.event"), dict) or self.settings.web_adapter \
            or bool(self.settings.origin_secret)
        return self.always_check_hosts or not routed

    def _known_host(self, name: str) -> bool:
        return name in self.exact or any(
            name.endswith(suffix) and len(name) > len(suffix) for suffix in self.suffixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = request_host(scope)
        if host is None:
            # HTTP/1.1 requires exactly one Host (RFC 9112, section 3.2).
            await pages.refuse(scope, receive, send, 400, "bad_host",
                               "The request needs one Host header naming one host.")
            return
        if self._checks_hosts(scope) and not self._known_host(host[0]):
            await pages.refuse(scope, receive, send, 421, "unknown_host",
                               "This edge does not answer to that host name. Open it at "
                               "the address it printed (or add the name to "
                               "OCEDGE_ALLOWED_HOSTS).")
            return
        problem = self.cross_origin(scope, host)
        if problem:
            await pages.refuse(scope, receive, send, 403, "cross_origin", problem)
            return
        await self.app(scope, receive, send)

    def own_origins(self, scope: Scope, host: tuple[str, str]) -> set[str]:
        """The origins this request counts as the edge's own."""
        found = set()
        if self.public is not None:
            found.add(self.public)
        # The scheme the cookie is set for: HTTPS when configured so (a TLS proxy in
        # front), else as the request or a trusted proxy says.
        secure = is_secure(scope, self.settings.cookie_secure, self.settings.trust_forwarded)
        found.add(normalise_origin("https" if secure else "http", host[0],
                                   urlsplit("//" + host[1]).port))
        # Behind a Lambda front door: the domain it served, from its request context.
        domain = front_door_domain(scope, self.settings.web_adapter)
        if domain is not None:
            found.add(normalise_origin("https", domain, None))
        return found

    def cross_origin(self, scope: Scope, host: tuple[str, str]) -> str | None:
        """Why the request must be refused as coming from another site, or None."""
        writes = scope["type"] == "websocket" or scope["method"] not in _SAFE_METHODS
        origins = header_values(scope, b"origin")
        if len(origins) > 1:
            return "The request carries more than one Origin header."
        if origins:
            origin = parse_origin(origins[0])
            if origin is None or origin not in self.own_origins(scope, host):
                return ("This request came from a page of another site or port. The edge "
                        "takes writes, WebSockets and cross-origin reads only from its own pages.")
        sites = header_values(scope, b"sec-fetch-site")
        if not sites:
            return None
        site = sites[0].strip().lower()
        if site in (b"same-origin", b"none"):
            return None
        if writes:
            return ("This request came from another site or port (Sec-Fetch-Site: "
                    f"{site[:20].decode('latin-1')}). Writes and WebSockets must come from "
                    "the edge's own pages.")
        modes = header_values(scope, b"sec-fetch-mode")
        dests = header_values(scope, b"sec-fetch-dest")
        if modes == [b"navigate"] and (not dests or dests[0] == b"document") \
                and scope["method"] in ("GET", "HEAD"):
            return None  # a link to the edge from elsewhere: a top-level page load
        return ("Another site or port may link to the edge, but not load its content into "
                "its own page.")

