"""The failed-login throttle: too many failures → 429 with Retry-After, before the
password is even checked (argon2 is what a guesser would make us pay for).

A try at the admin password is counted *before* it is checked, atomically in the
store (:meth:`FailureThrottle.begin`), and refused when that count is past the
limit: tries sent all at once cannot all read "under the limit" first. One that
succeeds is taken back (:meth:`FailureThrottle.succeeded`).

Failures are counted in the key store, so every edge instance (each Lambda
instance is one) sees the same counts:

- per client address (an IPv6 address counts by its /64, the block one customer
  gets, so rotating through it earns no fresh budget), for every kind of failed
  credential;
- globally, for the admin password only: however many addresses guess, together
  they get ``max_global`` tries per window.

The address comes from the front door (:func:`edge.request.client_address`), never
from a header the client writes. A valid API key or session is never throttled.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
from dataclasses import dataclass

from infra.interfaces import Failures, KeyStore

GLOBAL = "global"


def address_key(client: str) -> str:
    """The counter a client address is counted in."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return "client:" + client[:64]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return "ip:" + str(ipaddress.ip_network(f"{address}/64", strict=False))
    return "ip:" + str(address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address)
                       else address)


@dataclass(frozen=True)
class Attempt:
    """A counted try at the admin password: refused (``retry_after``) or to be checked."""

    retry_after: int | None
    since: float = 0.0  # the global window it was counted in


class FailureThrottle:
    def __init__(self, keys: KeyStore, max_failures: int, window: float,
                 max_global: int | None = None) -> None:
        self.keys = keys
        self.max_failures = max_failures
        self.max_global = max_global if max_global is not None else 10 * max_failures
        self.window = window

    def _past(self, failures: Failures, limit: int, now: float) -> int | None:
        if failures.count <= limit:
            return None
        return max(1, math.ceil(failures.since + self.window - now))

    async def begin(self, client: str, now: float) -> Attempt:
        """Count a try at the admin password (or a one-time code) from ``client``
        before it is checked; refused when the count is past either limit. A try
        refused for its address is not counted globally (one address cannot spend
        everyone's budget), nor one refused globally against its address."""
        mine = await self.keys.count_failure(address_key(client), now, self.window)
        wait = self._past(mine, self.max_failures, now)
        if wait is not None:
            return Attempt(wait)
        everyone = await self.keys.count_failure(GLOBAL, now, self.window)
        wait = self._past(everyone, self.max_global, now)
        if wait is not None:
            await self.keys.forgive_failure(address_key(client), mine.since)
            return Attempt(wait)
        return Attempt(None, everyone.since)

    async def succeeded(self, client: str, attempt: Attempt, now: float) -> None:
        """The try of ``attempt`` succeeded: it is taken back from the global count,
        and the address's failures are forgiven."""
        await asyncio.gather(self.keys.forgive_failure(GLOBAL, attempt.since),
                             self.record_success(client, now))

    async def record_failure(self, client: str, now: float) -> None:
        """Count a failed login from ``client`` that was not a try at the admin
        password (a wrong API key, malformed credentials): its address only."""
        await self.keys.count_failure(address_key(client), now, self.window)

    async def record_success(self, client: str, now: float) -> None:
        """A login from ``client`` succeeded: its own failures are forgiven."""
        key = address_key(client)
        failures = await self.keys.get_failures(key)
        if failures is not None and failures.current(now, self.window):
            await self.keys.clear_failures(key)
