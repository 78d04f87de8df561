"""``python -m bench``: how much the edge costs compared with a plain reverse proxy.

One run measures three things and prints one table.

1. **GET /global/health** against the same opencode server three ways, side by side:

   - *direct* — opencode itself, with its internal Basic password;
   - *edge* — ``python -m uvicorn edge.app:app`` (uvloop + httptools, one worker) with
     the real local backends in a temporary state directory, authenticated with an API
     key as ``Bearer``. The edge wakes the container itself on the first request, and
     that container's opencode is the one every path below talks to;
   - *nginx* — one nginx worker doing Basic auth (``{SHA}`` htpasswd) and
     ``proxy_pass`` to the same opencode, ``proxy_buffering off``, keep-alive upstream.

   The load generator is ``wrk`` (C, epoll; an httpx fallback only if wrk is missing).
   Each round runs every target for a few seconds with 16 connections (throughput,
   loaded latency) and then with 1 connection (unloaded latency: at 16 connections
   latency is mostly queueing, i.e. Little's law restating throughput). The order of
   targets rotates every round, and ratios and differences are taken *within* a round
   and then the median over rounds, so a noisy neighbour slows all three alike.
   Alongside, the proxy's own CPU time per request (user + system from ``/proc``, the
   edge process; nginx master and worker) is reported: on a shared machine it is the
   number that moves least with the neighbours' load.

2. **SSE latency**: three subscribers to ``/global/event`` (direct, edge, nginx) are
   open at once while the benchmark posts ``/tui/show-toast`` to opencode directly
   (each post publishes one ``tui.toast.show`` event carrying a unique marker). Every
   subscriber is a bare asyncio protocol that timestamps bytes the moment they arrive;
   an event's added latency is its arrival on the edge (or nginx) minus its arrival on
   the direct subscriber.

3. **Import time** of ``edge.app``: a fresh ``python -c "import edge.app"`` minus a
   bare ``python -c pass``, alternated, median of several runs (the Lambda cold path).
   The target is held against the children's CPU time, which is what an idle host
   would see as wall time; wall time is printed beside it. ``-X importtime`` names the
   heaviest third-party imports.

Everything binds to 127.0.0.1, lives in one temporary directory, and every process
the benchmark started (nginx, the edge, and the container the edge launched — found
through the state directory's PID file) is stopped by PID before it exits.
"""
