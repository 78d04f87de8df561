"""Every answer the edge writes itself: pages for people, JSON for programs.

One template and one stylesheet serve the login page, the waking page (what a
browser navigation sees while the workspace starts), the logout page and the HTML
error pages. Pages are self-contained (no external assets) and carry a strict
Content-Security-Policy: nothing but their own inline style (and, on the waking
page, its own script) runs, forms post only to the edge.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from starlette.responses import HTMLResponse, JSONResponse, Response

from edge.request import wants_html
from edge.types import Receive, Scope, Send
from infra.interfaces import ContainerState, Status
from infra.progress import CURRENT, FAILED, StepReport, report

REALM_CHALLENGE = 'Basic realm="opencode-edge", charset="UTF-8"'
LOGIN_PATH = "/_edge/login"
LOGOUT_PATH = "/_edge/logout"
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src {script}; "
        "connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'")

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
#steps{text-align:left;margin:1rem auto;padding-left:1.5rem;max-width:26rem}
#steps li{margin:.15rem 0}#steps .current{font-weight:600}#steps .failed{color:#a00}
form{display:grid;gap:.35rem;margin-top:1rem}label{font-weight:600;margin-top:.4rem}
input{font:inherit;padding:.45rem .6rem;border:1px solid #999;border-radius:4px}
button{font:inherit;padding:.5rem 1rem;margin-top:.8rem;cursor:pointer}
.error{color:#a00;font-weight:600}.notice{color:#064}
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
<ol id="steps" aria-label="Steps of the start">__STEPS__</ol>
<p id="step" role="status" aria-live="polite" class="muted">__STEP__</p>
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
  // The steps of the start (infra/progress.py), as text only: never markup.
  var steps = [], received = Date.now(), announced = "";
  function label(st) {
    var s = st.seconds + (st.state === "current" ? (Date.now() - received) / 1000 : 0);
    return st.step + " — " + Math.round(s) + " s" +
      (st.state === "current" ? " (now)" : st.state === "failed" ? " (failed)" : "");
  }
  function showSteps(list, reason) {
    steps = list || []; received = Date.now();
    var ol = $("steps");
    while (ol.firstChild) ol.removeChild(ol.firstChild);
    steps.forEach(function (st) {
      var li = document.createElement("li");
      li.className = st.state;
      li.textContent = label(st) + (st.state === "failed" && reason ? ": " + reason : "");
      ol.appendChild(li);
    });
    var last = steps.length ? steps[steps.length - 1] : null;
    var now = !last ? "" : last.state === "failed" ? "Failed while " + last.step + "." :
      last.state === "current" ? "Now: " + last.step + "." : "";
    if (now !== announced) { announced = now; $("step").textContent = now; }
  }
  function tick() {
    var items = $("steps").children;
    steps.forEach(function (st, i) {
      if (st.state === "current" && items[i]) items[i].textContent = label(st);
    });
  }
  function fail(reason) {
    done = true;
    $("waking").style.display = "none";
    $("failed").style.display = "block";
    $("reason").textContent = reason || "The start failed.";
  }
  setInterval(function () {
    if (!done) { $("elapsed").textContent = Math.round((Date.now() - started) / 1000) + " s"; tick(); }
  }, 250);
  function poll() {
    fetch("/_edge/status", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (s) {
          $("status").textContent = s.status;
          showSteps(s.steps, s.reason);
          if (s.status === "running") { done = true; location.reload(); return; }
          if (s.status === "failed" && s.generation >= generation) { fail(s.reason); return; }
        }
        setTimeout(poll, 1000);
      })
      .catch(function () { setTimeout(poll, 2000); });
  }
  showSteps(__STEPS_JSON__, $("reason").textContent);
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


def html_response(markup: str, status: int, headers: dict[str, str] | None = None,
                  script: bool = False) -> HTMLResponse:
    """An edge page with its Content-Security-Policy (inline script only if ``script``)."""
    csp = _CSP.format(script="'unsafe-inline'" if script else "'none'")
    return HTMLResponse(markup, status_code=status,
                        headers={"Content-Security-Policy": csp, "Cache-Control": "no-store",
                                 **(headers or {})})


def page(title: str, message: str, status: int,
         headers: dict[str, str] | None = None) -> HTMLResponse:
    """A page with a heading and one paragraph (both escaped)."""
    content = f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
    return html_response(_render(title, content), status, headers)


def login_page(status: int, next_path: str, totp: bool, username: str = "",
               error: str = "", notice: str = "",
               headers: dict[str, str] | None = None) -> HTMLResponse:
    """The login form: user, password and (with 2FA on) the one-time code; posts to
    the edge with the page to return to. ``error``/``notice`` say what happened."""
    e = html.escape
    said = (f'<p class="error" role="alert">{e(error)}</p>' if error else "") + (
        f'<p class="notice" role="status">{e(notice)}</p>' if notice else "")
    code = ('<label for="code">One-time code</label>'
            '<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" '
            'required maxlength="9" aria-describedby="code-help">'
            '<span id="code-help" class="muted">The 6 digits your authenticator app '
            'shows for opencode-edge.</span>') if totp else ""
    focus_user = "" if username else " autofocus"
    content = f"""<h1>Log in to opencode-edge</h1>{said}
<form method="post" action="{LOGIN_PATH}">
<input type="hidden" name="next" value="{e(next_path)}">
<label for="username">User</label>
<input id="username" name="username" autocomplete="username" required maxlength="256"
 value="{e(username)}"{focus_user}>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password"
 required maxlength="1024"{"" if focus_user else " autofocus"}>
{code}<button type="submit">Log in</button>
</form>
<p class="muted">Programs log in with an API key instead (<code>ocedge keys create</code>).</p>"""
    return html_response(_render("Log in", content), status, headers)


def logout_page(logged_in: bool) -> HTMLResponse:
    """What GET /_edge/logout shows: a button that logs out (a POST, so no other site
    can log you out with a link)."""
    if not logged_in:
        return page("Logged out", "You are not logged in.", 200)
    content = f"""<h1>Log out of opencode-edge</h1>
<p>Logging out ends every browser session of this deployment.</p>
<form method="post" action="{LOGOUT_PATH}"><button type="submit">Log out</button></form>"""
    return html_response(_render("Log out", content), 200)


def _step_label(step: StepReport, reason: str | None) -> str:
    """A step as the waking page's script writes it too."""
    label = f"{step.name} — {step.seconds:.0f} s"
    if step.state == CURRENT:
        return label + " (now)"
    if step.state == FAILED:
        return label + " (failed)" + (f": {reason}" if reason else "")
    return label


def waking_page(status: str, generation: int, reason: str | None, failed: bool,
                steps: Sequence[StepReport] = ()) -> str:
    """The page a navigation gets while the workspace of ``generation`` starts
    (or, ``failed``, the reason it could not), with the ``steps`` of the start so far."""
    items = "".join(f'<li class="{step.state}">{html.escape(_step_label(step, reason))}</li>'
                    for step in steps)
    # The steps first: the reason is the one value not written by the edge itself.
    content = (_WAKING.replace("__STEPS__", items).replace("__STEP__", "")
               .replace("__STATUS__", html.escape(status))
               .replace("__REASON__", html.escape(reason or "")))
    # Inside a <script>: "<" escaped so no value can close the element.
    steps_json = json.dumps([step.as_dict() for step in steps]).replace("<", "\\u003c")
    script = (_WAKING_SCRIPT.replace("__GENERATION__", json.dumps(generation))
              .replace("__FAILED__", "true" if failed else "false")
              .replace("__STEPS_JSON__", steps_json))
    return _render("Starting your workspace", content, script, centered=True)


def waking_response(current: ContainerState, now: float) -> HTMLResponse:
    """The waking page for ``current`` as a 503 to retry: what a navigation gets while
    the workspace starts (the proxy) or before it can land there (the landing)."""
    failed = current.status == Status.FAILED and current.reason is not None
    return HTMLResponse(
        waking_page(current.status, current.generation, current.reason, failed,
                    report(current, now)),
        status_code=503, headers={"Retry-After": "5", "Cache-Control": "no-store"})


# The landing page (edge/landing.py): asks opencode for its project directory and the
# project's latest session (one is created if it has none), then opens that session by
# the route the UI's own links use, /<base64url(UTF-8 directory), unpadded>/<"session">/<id>.
# Anything unexpected opens opencode's home page instead (the landing cookie is set by then).
_LANDING_SCRIPT = """
<script>
(function () {
  function home() { location.replace("/"); }
  function json(r) { if (!r.ok) throw new Error(r.status); return r.json(); }
  var opts = {credentials: "same-origin", cache: "no-store"};
  fetch("/path", opts).then(json).then(function (p) {
    var dir = p && p.directory;
    if (typeof dir !== "string" || !dir) throw new Error("no directory");
    var q = "?directory=" + encodeURIComponent(dir);
    return fetch("/session" + q + "&roots=true", opts).then(json).then(function (list) {
      var latest = null;
      (list || []).forEach(function (s) {
        if (s && s.directory === dir && (!latest || s.time.updated > latest.time.updated)) latest = s;
      });
      if (latest) return latest;
      return fetch("/session" + q, {method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json"}, body: "{}"}).then(json);
    }).then(function (session) {
      var bytes = new TextEncoder().encode(dir), binary = "";
      bytes.forEach(function (b) { binary += String.fromCharCode(b); });
      var encoded = btoa(binary).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=/g, "");
      location.replace("/" + encoded + "/session/" + encodeURIComponent(session.id));
    });
  }).catch(home);
})();
</script>"""


def landing_page() -> HTMLResponse:
    """What a browser's first navigation of ``/`` gets: on to the workspace project."""
    content = ('<div class="spin" aria-hidden="true"></div>'
               '<p role="status">Opening your workspace…</p>')
    return html_response(_render("Opening your workspace", content, _LANDING_SCRIPT,
                                 centered=True), 200, script=True)


def error(scope: Scope, status: int, code: str, message: str,
          headers: dict[str, str] | None = None, title: str | None = None) -> Response:
    """An error the user can act on, as a page for people and JSON for programs;
    never contains a secret."""
    if wants_html(scope):
        return page(title or code.replace("_", " ").capitalize(), message, status,
                    headers=headers)
    return JSONResponse({"error": code, "message": message}, status_code=status,
                        headers=headers)


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, code: str,
                 message: str) -> None:
    """Refuse a request (``error``, never cached) or a WebSocket before it is accepted
    (a close before accept is an HTTP 403 to the client)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await error(scope, status, code, message,
                headers={"Cache-Control": "no-store"})(scope, receive, send)
