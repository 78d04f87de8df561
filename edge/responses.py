"""The edge's own answers: clear errors as JSON for programs and HTML for people."""

from __future__ import annotations

import html

from starlette.responses import HTMLResponse, JSONResponse, Response

from edge.types import Scope

REALM_CHALLENGE = 'Basic realm="opencode-edge", charset="UTF-8"'

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · opencode-edge</title>
<style>
body{{font:16px/1.5 system-ui,sans-serif;margin:0;display:grid;place-items:center;
min-height:100vh;background:#fafafa;color:#222}}
main{{max-width:32rem;padding:2rem}}h1{{font-size:1.4rem;margin:0 0 .5rem}}
p{{margin:.5rem 0}}code{{background:#eee;padding:0 .25rem;border-radius:3px}}
</style></head>
<body><main><h1>{title}</h1><p>{message}</p>{extra}</main></body></html>
"""


def wants_html(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept":
            return b"text/html" in value
    return False


def page(title: str, message: str, status: int, extra: str = "",
         headers: dict[str, str] | None = None) -> HTMLResponse:
    body = _PAGE.format(title=html.escape(title), message=html.escape(message), extra=extra)
    return HTMLResponse(body, status_code=status, headers=headers)


def error(scope: Scope, status: int, code: str, message: str,
          headers: dict[str, str] | None = None, title: str | None = None) -> Response:
    """An error the user can act on; never contains a secret."""
    if wants_html(scope):
        return page(title or code.replace("_", " ").capitalize(), message, status,
                    headers=headers)
    return JSONResponse({"error": code, "message": message}, status_code=status,
                        headers=headers)
