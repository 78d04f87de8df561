"""What CloudFront adds to the requests it sends on: the contract between template.yaml
(the distribution, its viewer-request function), the edge (edge/cloudfront.py) and the
container's terminal listener (container/terminal.py).

- ``x-ocedge-origin-secret``: the distribution's secret, an origin custom header on
  both origins, which CloudFront adds to every request it sends them ("Add custom
  headers to origin requests", "Identifying requests from CloudFront",
  docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/add-origin-custom-headers.html).
  A request without it (or with two: a viewer's guess beside CloudFront's) did not come
  through the distribution: the bare Function URL and the terminal port are no way in.
- ``x-ocedge-viewer-host`` and ``x-ocedge-viewer-address``: the viewer's Host header and
  IP address, which the distribution's viewer-request function (CloudFront Functions,
  ``event.viewer.ip``: "Add a true client IP header", docs.aws.amazon.com/
  AmazonCloudFront/latest/DeveloperGuide/example-function-add-true-client-ip-header.html)
  writes over whatever the viewer sent under those names. Both behaviours' origin
  request policies pass them on; the Host the origins see is their own.

Both are believed only on a request whose secret matched.

The terminal's tickets: opencode's single-use ticket is checked only after opencode has
read the request's ``directory`` (loading a project for any directory named), so the
terminal listener must not pass on a ticket just because it is there. The edge signs
every ticket it hands out (``sign_ticket``: an HMAC under the origin secret over the
ticket, the terminal, the location it was asked for and an expiry), and the listener
relays only a ticket it can open (``open_ticket``), with exactly that location.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
import time

ORIGIN_SECRET_HEADER = b"x-ocedge-origin-secret"
VIEWER_HOST_HEADER = b"x-ocedge-viewer-host"
VIEWER_ADDRESS_HEADER = b"x-ocedge-viewer-address"
# Every header of the CloudFront hop: never passed on to opencode.
HOP_HEADERS = frozenset({ORIGIN_SECRET_HEADER, VIEWER_HOST_HEADER, VIEWER_ADDRESS_HEADER})

# The terminal's WebSocket, the one path CloudFront sends to the terminal listener
# (the distribution's /pty/*/connect behaviour); opencode's ticket rides in the query.
TERMINAL_PATH = re.compile(r"/pty/[A-Za-z0-9_-]{1,128}/connect")

# opencode's ticket endpoint (POST), answered with {"ticket": ..., "expires_in": 60}.
TICKET_PATH = re.compile(r"/pty/([A-Za-z0-9_-]{1,128})/connect-token")
# The query parameters that say which project a terminal belongs to (opencode's v1 API).
LOCATION_PARAMETERS = ("directory", "workspace")
# How long a signed ticket may be used: opencode's own ticket lives 60 s; the rest
# allows for the clocks of the Lambda and the instance.
TICKET_LIFE = 90
_EXPIRY = re.compile(r"[0-9]{1,12}")

# A host name or address with an optional port, as a Host header carries it.
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}"
                   r"[a-z0-9])?\.?(?::[0-9]{1,5})?|\[[0-9a-f:.]+\](?::[0-9]{1,5})?")


def secret_matches(presented: list[bytes], expected: str) -> bool:
    """Exactly one secret header, equal to ``expected`` (compared in constant time)."""
    ok = hmac.compare_digest(presented[0] if presented else b"", expected.encode())
    return ok and len(presented) == 1


def viewer_host(values: list[bytes]) -> str | None:
    """The viewer's host[:port], lower-case; None unless exactly one well-formed value."""
    if len(values) != 1:
        return None
    try:
        text = values[0].decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    return text if len(text) <= 261 and _HOST.fullmatch(text) else None


def viewer_address(values: list[bytes]) -> str | None:
    """The viewer's IP address; None unless exactly one value that is an address."""
    if len(values) != 1:
        return None
    try:
        return str(ipaddress.ip_address(values[0].decode("ascii").strip()))
    except (UnicodeDecodeError, ValueError):
        return None


def _mac(secret: str, ticket: str, pty: str, location: list[tuple[str, str]], expires: int) -> str:
    key = hmac.new(secret.encode(), b"ocedge terminal ticket", hashlib.sha256).digest()
    message = json.dumps([ticket, pty, location, expires], separators=(",", ":")).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()[:18]
    return base64.urlsafe_b64encode(digest).decode()


def location_of(query: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The location parameters of a parsed query, in order."""
    return [(name, value) for name, value in query if name in LOCATION_PARAMETERS]


def sign_ticket(secret: str, ticket: str, pty: str, location: list[tuple[str, str]],
                now: float | None = None) -> str:
    """``ticket`` as the edge hands it to the browser: ``<ticket>.<expiry>.<mac>``."""
    expires = int(now if now is not None else time.time()) + TICKET_LIFE
    return f"{ticket}.{expires}.{_mac(secret, ticket, pty, location, expires)}"


def open_ticket(secret: str, signed: str, pty: str, location: list[tuple[str, str]],
                now: float | None = None) -> str | None:
    """opencode's ticket inside ``signed`` if the edge signed it for this terminal and
    location and it has not expired; else None."""
    parts = signed.rsplit(".", 2)
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if len(parts) != 3 or not parts[0] or not _EXPIRY.fullmatch(parts[1]):
        return None
    ticket, expires = parts[0], int(parts[1])
    expected = _mac(secret, ticket, pty, location, expires)
    if not hmac.compare_digest(parts[2].encode(), expected.encode()):
        return None
    current = now if now is not None else time.time()
    return ticket if current <= expires else None
