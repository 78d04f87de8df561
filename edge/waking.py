"""The waking page: what a browser navigation sees while the workspace starts.

Self-contained (no external assets): it polls /_edge/status, shows the status and
the elapsed time, reloads the requested page once the container runs, and says
clearly when the start failed.
"""

from __future__ import annotations

import html
import json

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Starting your workspace · opencode-edge</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;margin:0;display:grid;place-items:center;
min-height:100vh;background:#fafafa;color:#222}
main{max-width:32rem;padding:2rem;text-align:center}
h1{font-size:1.4rem;margin:0 0 .5rem}
.spin{width:2.5rem;height:2.5rem;margin:1rem auto;border:4px solid #ddd;
border-top-color:#444;border-radius:50%;animation:s 1s linear infinite}
@keyframes s{to{transform:rotate(360deg)}}
#failed{display:none;color:#a00}#failed button{margin-top:1rem;font:inherit;padding:.4rem 1rem}
.muted{color:#666}
</style></head>
<body><main>
<div id="waking">
<div class="spin" aria-hidden="true"></div>
<h1>Starting your workspace…</h1>
<p>Status: <strong id="status">__STATUS__</strong> · <span id="elapsed">0 s</span></p>
<p class="muted">It was asleep to save money. This page continues by itself.</p>
</div>
<div id="failed" role="alert">
<h1>The workspace could not start</h1>
<p id="reason">__REASON__</p>
<button type="button" onclick="location.reload()">Try again</button>
</div>
</main>
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
</script>
</body></html>
"""


def waking_page(status: str, generation: int, reason: str | None, failed: bool) -> str:
    return (_TEMPLATE.replace("__STATUS__", html.escape(status))
            .replace("__REASON__", html.escape(reason or ""))
            .replace("__GENERATION__", json.dumps(generation))
            .replace("__FAILED__", "true" if failed else "false"))
