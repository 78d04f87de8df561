"""The CloudFront layer: on AWS the browser's edge answers only to its distribution.

With ``OCEDGE_ORIGIN_SECRET`` set (the streaming front door on AWS, template.yaml), a
request that does not carry exactly one copy of the distribution's secret header did
not come through CloudFront — someone found the bare Function URL — and is refused
(403) before any other layer reads it. A request that does is made to look as the
viewer sent it to CloudFront (infra/cloudfront.py has the contract):

- its Host is the viewer's, which the distribution's viewer-request function wrote
  into ``x-ocedge-viewer-host`` (the Host the Function URL received is its own);
- its scheme is https (the distribution redirects plain HTTP);
- its client is the viewer's address from ``x-ocedge-viewer-address`` (the Function
  URL's request context names a CloudFront server);
- the hop's own headers are gone: the secret and the function's two, the Function
  URL's request context and the X-Forwarded-* that describe the CloudFront hop.

So every later layer — the Host and Origin checks, the login throttle, the cookie's
Secure flag, the headers forwarded to opencode (whose terminal tickets compare Origin
with Host) — works on the viewer's request as it does locally, and the secret is never
logged or sent on. Without the setting (local mode, the API front door) this layer is
not in the app.
"""

from __future__ import annotations

import logging

from edge import pages
from edge.request import header_values
from edge.types import ASGIApp, Receive, Scope, Send
from infra.cloudfront import (
    HOP_HEADERS,
    ORIGIN_SECRET_HEADER,
    VIEWER_ADDRESS_HEADER,
    VIEWER_HOST_HEADER,
    secret_matches,
    viewer_address,
    viewer_host,
)

log = logging.getLogger("ocedge.edge")

# What describes the CloudFront → Function URL hop rather than the viewer's request.
_HOP = HOP_HEADERS | {b"host", b"x-amzn-request-context", b"x-forwarded-for",
                      b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
                      b"forwarded", b"x-real-ip"}


class CloudFrontOrigin:
    """Refuses what did not come through the distribution; rewrites what did."""

    def __init__(self, app: ASGIApp, origin_secret: str) -> None:
        self.app = app
        self.origin_secret = origin_secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not secret_matches(header_values(scope, ORIGIN_SECRET_HEADER), self.origin_secret):
            # Debug only: a scanner that found the Function URL must not fill the logs.
            log.debug("refused a request that did not come through CloudFront")
            await pages.refuse(scope, receive, send, 403, "not_through_cloudfront",
                          "This address is not the way in: open your workspace at its web "
                          "address (the WebUrl output of the stack).")
            return
        host = viewer_host(header_values(scope, VIEWER_HOST_HEADER))
        address = viewer_address(header_values(scope, VIEWER_ADDRESS_HEADER))
        if host is None or address is None:
            # Only a distribution without its viewer-request function sends this.
            log.warning("CloudFront sent no viewer host or address: is the distribution's "
                        "viewer-request function attached?")
            await pages.refuse(scope, receive, send, 400, "no_viewer",
                          "The request came through CloudFront without the viewer's host "
                          "and address (the distribution's viewer-request function is "
                          "missing).")
            return
        headers = [(name, value) for name, value in scope["headers"] if name not in _HOP]
        headers.insert(0, (b"host", host.encode("ascii")))
        viewed = dict(scope)
        viewed["headers"] = headers
        viewed["scheme"] = "https" if scope["type"] == "http" else "wss"
        viewed["client"] = (address, 0)
        await self.app(viewed, receive, send)

