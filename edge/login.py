"""The login page and logging out: /_edge/login and /_edge/logout.

    GET  /_edge/login?next=/path   the form (a browser already logged in goes on to /path)
    POST /_edge/login              user + password (+ code with 2FA) → session cookie, 303 to next
    GET  /_edge/logout             a page with a "Log out" button
    POST /_edge/logout             ends every session (if the cookie is valid), clears the cookie

Both POSTs pass the same-origin layer first, so no other site can log a browser in
(login CSRF) or out. ``next`` is only ever a path on this edge: no open redirect.
The form body is read with a size limit and a deadline.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, quote

from starlette.responses import RedirectResponse, Response

from edge import pages
from edge.auth import Authenticator, AuthResult
from edge.request import client_address, header_values, is_secure
from edge.session import clear_cookie_header, session_cookie, set_cookie_header
from edge.types import ASGIApp, Receive, Scope, Send
from infra.settings import Settings

MAX_FORM = 16 * 1024
FORM_DEADLINE = 10.0
_MAX_NEXT = 2048
# Characters a path and query may keep as they are in a Location header.
_SAFE = "/?=&%#:;@!$'()*+,~-._"


# Path segments a browser takes for "." and ".." (the URL standard's list).
_DOT = frozenset({".", "%2e"})
_DOT_DOT = frozenset({"..", ".%2e", "%2e.", "%2e%2e"})


def _without_dots(path: str) -> str:
    """``path`` (starting with "/") with its dot segments resolved as a browser
    resolves them, empty segments kept: "/.//x" is "//x" to a browser too."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for n, segment in enumerate(segments):
        last = n == len(segments) - 1
        if segment.lower() in _DOT_DOT:
            if kept:
                kept.pop()
        elif segment.lower() not in _DOT:
            kept.append(segment)
            continue
        if last:
            kept.append("")
    return "/" + "/".join(kept)


def safe_next(value: str) -> str:
    """``value`` if it is a path on this edge to return to after logging in, else "/"."""
    if not value.startswith("/") or len(value) > _MAX_NEXT \
            or any(c < " " or c in "\\\x7f" for c in value):
        return "/"
    end = min((i for i in (value.find("?"), value.find("#")) if i >= 0), default=len(value))
    value = _without_dots(value[:end]) + value[end:]
    if value.startswith(("//", "/\\", pages.LOGIN_PATH, pages.LOGOUT_PATH)):
        return "/"
    # Percent-encode anything else, so the Location header is plain ASCII.
    return quote(value, safe=_SAFE)


def login_location(scope: Scope) -> str:
    """Where a browser without a session is sent: the login page, to return here."""
    raw = scope.get("raw_path") or quote(scope["path"]).encode()
    query = scope.get("query_string") or b""
    target = raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    return f"{pages.LOGIN_PATH}?next={quote(safe_next(target), safe='')}"


class FormError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


async def read_form(scope: Scope, receive: Receive) -> dict[str, str]:
    """The url-encoded form in the request body: at most ``MAX_FORM`` bytes, within
    ``FORM_DEADLINE`` seconds. The first value of each field."""
    kinds = header_values(scope, b"content-type")
    if len(kinds) != 1 or not kinds[0].split(b";")[0].strip().lower() == \
            b"application/x-www-form-urlencoded":
        raise FormError(415, "unsupported_media_type",
                        "The login form is sent as application/x-www-form-urlencoded.")
    body = b""
    try:
        async with asyncio.timeout(FORM_DEADLINE):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise FormError(400, "disconnected", "The request ended early.")
                body += message.get("body", b"")
                if len(body) > MAX_FORM:
                    raise FormError(413, "too_large", "The login form is too large.")
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise FormError(408, "too_slow", "The login form took too long to arrive.") from None
    try:
        fields = parse_qs(body.decode("latin-1"), keep_blank_values=True, max_num_fields=8,
                          encoding="utf-8", errors="replace")
    except ValueError:
        raise FormError(400, "bad_form", "The login form has too many fields.") from None
    return {name: values[0] for name, values in fields.items()}


class Login:
    """Answers the login and logout paths; passes everything else to ``app``."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, settings: Settings) -> None:
        self.app = app
        self.authenticator = authenticator
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else None
        if path not in (pages.LOGIN_PATH, pages.LOGOUT_PATH):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method not in ("GET", "HEAD", "POST"):
            response: Response = pages.error(scope, 405, "method_not_allowed",
                                             f"{path} takes GET and POST.",
                                             headers={"Allow": "GET, HEAD, POST"})
        elif path == pages.LOGIN_PATH:
            response = await (self._submit(scope, receive) if method == "POST"
                              else self._form(scope))
        else:
            response = await (self._logout(scope) if method == "POST"
                              else self._logout_page(scope))
        await response(scope, receive, send)

    def _secure(self, scope: Scope) -> bool:
        return is_secure(scope, self.settings.cookie_secure, self.settings.trust_forwarded)

    async def _logged_in(self, scope: Scope, now: float) -> bool:
        cookie = session_cookie(header_values(scope, b"cookie"), self._secure(scope))
        return cookie is not None and await self.authenticator.check_cookie(cookie, now) is not None

    async def _form(self, scope: Scope) -> Response:
        try:
            query = parse_qs((scope.get("query_string") or b"").decode("latin-1"),
                             max_num_fields=8)
        except ValueError:
            return pages.error(scope, 400, "bad_query",
                               "The login page takes only a few query fields.",
                               headers={"Cache-Control": "no-store"})
        next_path = safe_next(query.get("next", ["/"])[0])
        now = time.time()
        if await self._logged_in(scope, now):
            return RedirectResponse(next_path, 303, headers={"Cache-Control": "no-store"})
        notice = "You have logged out." if "logged_out" in query else ""
        return pages.login_page(200, next_path, await self.authenticator.totp_on(now),
                                notice=notice)

    async def _submit(self, scope: Scope, receive: Receive) -> Response:
        try:
            form = await read_form(scope, receive)
        except FormError as exc:
            return pages.error(scope, exc.status, exc.code, str(exc),
                               headers={"Cache-Control": "no-store"})
        next_path = safe_next(form.get("next", "/"))
        username = form.get("username", "")[:256]
        now = time.time()
        client = client_address(scope, self.settings.trust_forwarded, self.settings.web_adapter)
        result = await self.authenticator.login(
            username, form.get("password", "")[:1024], form.get("code", "")[:16], client, now)
        if result.identity is None:
            return await self._failed(result, next_path, username, now)
        cookie = await self.authenticator.issue_cookie(result.identity, now)
        response = RedirectResponse(next_path, 303, headers={"Cache-Control": "no-store"})
        response.raw_headers.append((b"set-cookie", set_cookie_header(
            cookie, int(self.settings.session_ttl), self._secure(scope))))
        return response

    async def _failed(self, result: AuthResult, next_path: str, username: str,
                      now: float) -> Response:
        totp_on = await self.authenticator.totp_on(now)
        if result.failure == "throttled":
            return pages.login_page(
                429, next_path, totp_on, username,
                error=f"Too many failed logins. Try again in {result.retry_after} seconds.",
                headers={"Retry-After": str(result.retry_after)})
        if result.failure == "uninitialised":
            return pages.login_page(503, next_path, totp_on, username, error=(
                "This deployment has no admin yet: set the password with `ocedge init`."),
                headers={"Retry-After": "30"})
        what = "user, password or code" if totp_on else "user or password"
        return pages.login_page(401, next_path, totp_on, username,
                                error=f"That {what} is not right. Try again.")

    async def _logout_page(self, scope: Scope) -> Response:
        return pages.logout_page(await self._logged_in(scope, time.time()))

    async def _logout(self, scope: Scope) -> Response:
        now = time.time()
        if await self._logged_in(scope, now):
            # Only a valid session may end the sessions: a stranger cannot log you out.
            await self.authenticator.end_sessions(now)
        response = RedirectResponse(f"{pages.LOGIN_PATH}?logged_out=1", 303,
                                    headers={"Cache-Control": "no-store"})
        response.raw_headers.append((b"set-cookie", clear_cookie_header(self._secure(scope))))
        return response
