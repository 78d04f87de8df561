"""Every answer the edge writes itself: pages for people, JSON for programs.

One template and one stylesheet serve the waking page (what a browser navigation
sees while the workspace starts), the logout page and the HTML error pages.
Pages are self-contained: no external assets.
"""

from __future__ import annotations

import html
import json

from starlette.responses import HTMLResponse, JSONResponse, Response

from edge.request import wants_html
from edge.types import Scope

REALM_CHALLENGE = 'Basic realm="opencode-edge", charset="UTF-8"'

_CSS = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;display:grid;place-items:center;
min-height:100vh;background:#fafafa;color:#222}
main{max-width:32rem;padding:2rem}main.center{text-align:center}
h1{font-size:1.4rem;margin:0 0 .5rem}
p{margin:.5rem 0}code{background:#eee;padding:0 .25rem;border-radius:3px}
.spin{width:2.5rem;height:2.5rem;margin:1rem auto;border:4px solid #ddd;
border-top-color:#444;border-radius:50%;animation:s 1s linear infinite}
@keyframes s{to{transform:rotate(360deg)}}
#failed{display:none;color:#a00}#failed button{margin-top:1rem;font:inherit;padding:.4rem 1rem}
.muted{color:#666}
"""

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__ · opencode-edge</title>
<style>__CSS__</style></head>
<body><main__MAIN_CLASS__>
__CONTENT__
</main>__SCRIPT__
</body></html>
"""

# The waking page: shows the status and the elapsed time, polls /_edge/status,
# reloads the requested page once the container runs, says clearly when the
# start failed.
_WAKING = """<div id="waking">
<div class="spin" aria-hidden="true"></div>
<h1>Starting your workspace…</h1>
<p>Status: <strong id="status">__STATUS__</strong> · <span id="elapsed">0 s</span></p>
<p class="muted">It was asleep to save money. This page continues by itself.</p>
</div>
<div id="failed" role="alert">
<h1>The workspace could not start</h1>
<p id="reason">__REASON__</p>
<button type="button" onclick="location.reload()">Try again</button>
</div>"""

_WAKING_SCRIPT = """
<script>
(function () {
  var generation = __GENERATION__;
  var started = Date.now();
  var done = false;
  function $(id) { return document.getElementById(id); }
  function fail(reason) {
    done = true;
    $("waking").style.display = "none";
    $("failed").style.display = "block";
    $("reason").textContent = reason || "The start failed.";
  }
  setInterval(function () {
    if (!done) $("elapsed").textContent = Math.round((Date.now() - started) / 1000) + " s";
  }, 250);
  function poll() {
    fetch("/_edge/status", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (s) {
          $("status").textContent = s.status;
          if (s.status === "running") { done = true; location.reload(); return; }
          if (s.status === "failed" && s.generation >= generation) { fail(s.reason); return; }
        }
        setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 2000); });
  }
  if (__FAILED__) { fail($("reason").textContent); } else { poll(); }
})();
</script>"""


def _render(title: str, content: str, script: str = "", centered: bool = False) -> str:
    """``title`` is escaped here; ``content`` and ``script`` are trusted markup."""
    return (_TEMPLATE.replace("__TITLE__", html.escape(title))
            .replace("__CSS__", _CSS)
            .replace("__MAIN_CLASS__", ' class="center"' if centered else "")
            .replace("__CONTENT__", content)
            .replace("__SCRIPT__", script))


def page(title: str, message: str, status: int,
         headers: dict[str, str] | None = None) -> HTMLResponse:
    """A page with a heading and one paragraph (both escaped)."""
    content = f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
    return HTMLResponse(_render(title, content), status_code=status, headers=headers)


def waking_page(status: str, generation: int, reason: str | None, failed: bool) -> str:
    """The page a navigation gets while the workspace of ``generation`` starts
    (or, ``failed``, the reason it could not)."""
    content = (_WAKING.replace("__STATUS__", html.escape(status))
               .replace("__REASON__", html.escape(reason or "")))
    script = (_WAKING_SCRIPT.replace("__GENERATION__", json.dumps(generation))
              .replace("__FAILED__", "true" if failed else "false"))
    return _render("Starting your workspace", content, script, centered=True)


def error(scope: Scope, status: int, code: str, message: str,
          headers: dict[str, str] | None = None, title: str | None = None) -> Response:
    """An error the user can act on, as a page for people and JSON for programs;
    never contains a secret."""
    if wants_html(scope):
        return page(title or code.replace("_", " ").capitalize(), message, status,
                    headers=headers)
    return JSONResponse({"error": code, "message": message}, status_code=status,
                        headers=headers)
