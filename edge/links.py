"""The edge's links to the container: one pooled plain-HTTP link, and a TLS link
pinned to the certificate the current generation's container registered.

httpx is imported when the first link is made, not at start-up: the health check
a Lambda front door runs first does not need it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra.interfaces import ContainerState
from infra.settings import Settings

if TYPE_CHECKING:
    from edge.forwarding import HttpForwarder


def pinned_context(cert_pem: str) -> ssl.SSLContext:
    """A client TLS context that trusts exactly one certificate: the one the
    container of the current generation registered. No CA, no system roots."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The certificate itself is the pin; the address it was issued for adds nothing.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=cert_pem)
    return context


@dataclass(frozen=True)
class Link:
    """How to reach one container: the HTTP forwarder and, for TLS, its context."""

    forwarder: HttpForwarder
    tls: ssl.SSLContext | None = None

    @property
    def http_scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def websocket_scheme(self) -> str:
        return "wss" if self.tls else "ws"


class UpstreamLinks:
    """The links of one edge process; each pools its connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._plain: Link | None = None
        self._pinned: tuple[int, Link] | None = None

    def _link(self, tls: ssl.SSLContext | None) -> Link:
        import httpx

        from edge.forwarding import HttpForwarder

        transport = httpx.AsyncHTTPTransport(
            verify=tls if tls is not None else True, trust_env=False,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100,
                                keepalive_expiry=30))
        forwarder = HttpForwarder(transport, self.settings.upstream_read_timeout,
                                  self.settings.upstream_connect_timeout,
                                  self.settings.trust_forwarded)
        return Link(forwarder, tls)

    async def to(self, current: ContainerState) -> Link:
        """The link to ``current``'s container: pinned to its certificate when it
        registered one (a new generation gets a new link and the old one is closed),
        the plain pooled one otherwise."""
        if not current.cert_pem:
            if self._plain is None:
                self._plain = self._link(None)
            return self._plain
        if self._pinned is not None and self._pinned[0] == current.generation:
            return self._pinned[1]
        link = self._link(pinned_context(current.cert_pem))
        old, self._pinned = self._pinned, (current.generation, link)
        if old is not None:
            await old[1].forwarder.transport.aclose()
        return link

    async def aclose(self) -> None:
        if self._plain is not None:
            await self._plain.forwarder.transport.aclose()
            self._plain = None
        if self._pinned is not None:
            await self._pinned[1].forwarder.transport.aclose()
            self._pinned = None
