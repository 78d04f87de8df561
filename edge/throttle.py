"""Failed-login throttle: too many failures from one client → 429 with Retry-After."""

from __future__ import annotations

import math
from collections import deque


class FailureThrottle:
    def __init__(self, max_failures: int, window: float, max_clients: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str, now: float) -> int | None:
        """Seconds until this client may try again, or None if it may now."""
        times = self._recent(client, now)
        if times is None or len(times) < self.max_failures:
            return None
        # Blocked until enough failures age out of the window.
        unblock = times[len(times) - self.max_failures] + self.window
        return max(1, math.ceil(unblock - now))

    def record_failure(self, client: str, now: float) -> None:
        if client not in self._failures and len(self._failures) >= self.max_clients:
            # Bounded memory: drop the clients whose last failure is oldest.
            for stale in sorted(self._failures, key=lambda c: self._failures[c][-1])[
                    : self.max_clients // 10]:
                del self._failures[stale]
        times = self._failures.setdefault(client, deque())
        times.append(now)
        while len(times) > self.max_failures:
            times.popleft()

    def record_success(self, client: str) -> None:
        self._failures.pop(client, None)
