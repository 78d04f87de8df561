"""The edge's links to the container: one pool of kept-alive connections per
container address and generation, over TLS pinned to the certificate that
generation's container registered (plain HTTP only where it registered none).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra.interfaces import ContainerState
from infra.settings import Settings

if TYPE_CHECKING:
    from edge.forwarding import HttpForwarder, Upstream


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
    """How to reach one container: where it is, the HTTP forwarder over its pool
    and, for TLS, the pinned context (the WebSocket bridge uses it too)."""

    upstream: Upstream
    forwarder: HttpForwarder
    tls: ssl.SSLContext | None = None

    @property
    def websocket_scheme(self) -> str:
        return "wss" if self.tls else "ws"


class UpstreamLinks:
    """The links of one edge process: the newest container's, and the one before
    it, kept until the state names another container (a new generation, address or
    credential). A request still holding the previous state never closes the
    newest link (and the requests in flight on it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # (key, link), newest first; at most two.
        self._links: list[tuple[tuple[int, str, str, str], Link]] = []

    def _link(self, current: ContainerState) -> Link:
        from edge.forwarding import HttpForwarder, Upstream
        from edge.upstream import UpstreamPool

        assert current.endpoint is not None
        host, _, port = current.endpoint.rpartition(":")
        tls = pinned_context(current.cert_pem) if current.cert_pem else None
        pool = UpstreamPool(host, int(port), tls, self.settings.upstream_connect_timeout)
        forwarder = HttpForwarder(pool, self.settings.upstream_read_timeout,
                                  self.settings.trust_forwarded)
        return Link(Upstream(host, int(port), password=current.credential or ""), forwarder, tls)

    async def to(self, current: ContainerState) -> Link:
        """The link to ``current``'s container: pinned to its certificate when it
        registered one. A different container gets a new link, and the link before
        the previous one has its connections closed."""
        key = (current.generation, current.endpoint or "", current.credential or "",
               current.cert_pem or "")
        for known, link in self._links:
            if known == key:
                return link
        link = self._link(current)
        if self._links and current.generation < self._links[0][0][0]:
            self._links.insert(1, (key, link))  # an older state: not the newest link
        else:
            self._links.insert(0, (key, link))
        while len(self._links) > 2:
            await self._links.pop()[1].forwarder.pool.aclose()
        return link

    async def aclose(self) -> None:
        while self._links:
            await self._links.pop()[1].forwarder.pool.aclose()
