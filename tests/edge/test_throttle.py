"""The failed-login throttle through the authenticator, over the in-memory key store:
counted per address (IPv6 by its /64) and globally for the admin password, shared by
every edge instance, checked before argon2 runs, and never in a valid key's way."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from edge import auth as auth_module
from edge.auth import Authenticator, AuthResult, Presented
from edge.session import SessionSigner
from edge.throttle import GLOBAL, FailureThrottle, address_key
from infra import totp
from infra.credentials import hash_password, mint_api_key
from infra.interfaces import AdminUser
from tests.support.memory import MemoryKeyStore

pytestmark = pytest.mark.unit

PEPPER = b"p" * 32
SESSION_SECRET = b"s" * 32
PASSWORD = "the-admin-password-1"
T0 = 1_000_000.0


@pytest.fixture(scope="module")
def admin_hash() -> bytes:
    return hash_password(PASSWORD)


@pytest.fixture
def argon2_runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every argon2 check the authenticator runs (the real one, counted)."""
    runs: list[str] = []
    real = auth_module.verify_password

    def counted(password_hash: bytes, password: str) -> bool:
        runs.append(password)
        return real(password_hash, password)

    monkeypatch.setattr(auth_module, "verify_password", counted)
    yield runs


def edge(keys: MemoryKeyStore, max_failures: int = 3, max_global: int = 10) -> Authenticator:
    """One edge instance over the shared store."""
    return Authenticator(keys, PEPPER, SessionSigner(SESSION_SECRET),
                         FailureThrottle(keys, max_failures, 300.0, max_global), cache_ttl=0)


def store(admin_hash: bytes) -> MemoryKeyStore:
    keys = MemoryKeyStore()
    keys.admin = AdminUser("admin", admin_hash)
    return keys


def password(value: str) -> Presented:
    return Presented(username="admin", password=value)


def try_(authenticator: Authenticator, presented: Presented, client: str,
         now: float = T0) -> AuthResult:
    return asyncio.run(authenticator.authenticate(presented, client, now=now))


def test_past_the_limit_the_password_is_not_even_checked(admin_hash: bytes,
                                                         argon2_runs: list[str]) -> None:
    auth = edge(store(admin_hash))
    for n in range(3):
        assert try_(auth, password(f"guess-{n}"), "203.0.113.5").failure == "invalid"
    assert len(argon2_runs) == 3
    result = try_(auth, password(PASSWORD), "203.0.113.5", now=T0 + 10)
    assert (result.failure, result.retry_after) == ("throttled", 290)
    assert len(argon2_runs) == 3, "argon2 ran for a throttled address"
    # The window passes: the owner gets in, and the count starts over.
    assert try_(auth, password(PASSWORD), "203.0.113.5", now=T0 + 301).identity is not None


def test_every_edge_instance_sees_the_same_counts(admin_hash: bytes) -> None:
    keys = store(admin_hash)
    first, second = edge(keys), edge(keys)
    for auth in (first, second, first):
        assert try_(auth, password("guess"), "198.51.100.1").failure == "invalid"
    assert try_(second, password(PASSWORD), "198.51.100.1").failure == "throttled"


def test_rotating_addresses_meets_the_global_limit(admin_hash: bytes,
                                                   argon2_runs: list[str]) -> None:
    auth = edge(store(admin_hash), max_failures=3, max_global=10)
    for n in range(10):
        assert try_(auth, password("guess"), f"203.0.113.{n}").failure == "invalid"
    result = try_(auth, password("another-guess"), "198.51.100.200")
    assert result.failure == "throttled"
    assert len(argon2_runs) == 10


def test_an_ipv6_block_counts_as_one_address(admin_hash: bytes) -> None:
    auth = edge(store(admin_hash))
    for n in range(3):
        assert try_(auth, password("guess"), f"2001:db8:1:2::{n + 1:x}").failure == "invalid"
    assert try_(auth, password("guess"), "2001:db8:1:2:ffff::9").failure == "throttled"
    assert try_(auth, password(PASSWORD), "2001:db8:1:3::1").identity is not None


@pytest.mark.parametrize(("client", "key"), [
    ("192.0.2.1", "ip:192.0.2.1"), ("::ffff:192.0.2.1", "ip:192.0.2.1"),
    ("2001:db8::1", "ip:2001:db8::/64"), ("testclient", "client:testclient"),
    ("x" * 200, "client:" + "x" * 64),
])
def test_addresses_are_counted_by_their_key(client: str, key: str) -> None:
    assert address_key(client) == key


def test_a_valid_key_is_never_throttled(admin_hash: bytes) -> None:
    keys = store(admin_hash)
    new = mint_api_key("laptop", PEPPER)
    keys.keys[new.record.id] = new.record
    auth = edge(keys, max_failures=2, max_global=3)
    for n in range(3):
        try_(auth, password("guess"), f"203.0.113.{n}")
    for _ in range(3):
        try_(auth, Presented(api_key=f"oce_{'A' * 12}_{'B' * 43}"), "203.0.113.7")
    assert try_(auth, password(PASSWORD), "198.51.100.9").failure == "throttled"
    assert try_(auth, password(PASSWORD), "203.0.113.7").failure == "throttled"
    # Same address as the attacker, and the global counter spent: the key still works.
    result = try_(auth, Presented(api_key=new.key), "203.0.113.7")
    assert result.identity is not None and result.identity.method == "key"


def test_wrong_keys_count_for_the_address_but_not_globally(admin_hash: bytes) -> None:
    keys = store(admin_hash)
    auth = edge(keys)
    for _ in range(3):
        assert try_(auth, Presented(api_key="oce_nope"), "203.0.113.8").failure == "invalid"
    assert try_(auth, password(PASSWORD), "203.0.113.8").failure == "throttled"
    assert GLOBAL not in keys.failures


def test_a_success_forgives_the_address_but_not_the_world(admin_hash: bytes) -> None:
    keys = store(admin_hash)
    auth = edge(keys)
    for _ in range(2):
        try_(auth, password("typo"), "192.0.2.50")
    assert try_(auth, password(PASSWORD), "192.0.2.50").identity is not None
    assert address_key("192.0.2.50") not in keys.failures
    assert keys.failures[GLOBAL].count == 2


def test_with_2fa_on_basic_with_the_password_is_refused_before_argon2(
        admin_hash: bytes, argon2_runs: list[str]) -> None:
    keys = store(admin_hash)
    keys.totp = b"sealed"
    result = try_(edge(keys), password(PASSWORD), "192.0.2.60")
    assert result.failure == "totp_required"
    assert argon2_runs == [] and keys.failures == {}


def test_one_time_code_guesses_are_throttled_even_with_a_known_password(
        admin_hash: bytes) -> None:
    """Someone who has the password (phished) still cannot try codes without limit,
    even though the password check itself is remembered."""
    keys = store(admin_hash)
    secret = totp.new_secret()
    keys.totp = totp.seal_secret(SESSION_SECRET, secret)
    auth = Authenticator(keys, PEPPER, SessionSigner(SESSION_SECRET),
                         FailureThrottle(keys, 3, 300.0, 10), session_secret=SESSION_SECRET,
                         cache_ttl=0)

    def login(code: str, now: float) -> AuthResult:
        return asyncio.run(auth.login("admin", PASSWORD, code, "203.0.113.20", now=now))

    assert login(totp.code_at(secret, T0), T0).identity is not None  # password remembered
    wrong = f"{(int(totp.code_at(secret, T0 + 30)) + 1) % 1_000_000:06d}"
    for n in range(3):
        assert login(wrong, T0 + 30 + n).failure == "invalid"
    assert login(totp.code_at(secret, T0 + 60), T0 + 60).failure == "throttled"


def burst(authenticator: Authenticator, tries: list[tuple[Presented, str]]) -> list[AuthResult]:
    """Every try at once, as a guesser with many connections sends them."""
    async def all_at_once() -> list[AuthResult]:
        return list(await asyncio.gather(*(authenticator.authenticate(presented, client, now=T0)
                                           for presented, client in tries)))
    return asyncio.run(all_at_once())


def test_guesses_sent_at_once_get_no_more_tries_than_the_limit(
        admin_hash: bytes, argon2_runs: list[str]) -> None:
    keys = store(admin_hash)
    results = burst(edge(keys, max_failures=3, max_global=100),
                    [(password(f"guess-{n}"), "203.0.113.30") for n in range(20)])
    assert sum(result.failure != "throttled" for result in results) <= 3
    assert len(argon2_runs) <= 3, "argon2 ran for tries past the limit"
    assert all(result.retry_after == 300 for result in results if result.failure == "throttled")
    # The refused tries were not counted against everyone.
    assert keys.failures[GLOBAL].count == 3


def test_guesses_from_many_addresses_at_once_meet_the_global_limit(
        admin_hash: bytes, argon2_runs: list[str]) -> None:
    auth = edge(store(admin_hash), max_failures=3, max_global=5)
    results = burst(auth, [(password("guess"), f"203.0.113.{n}") for n in range(30)])
    assert sum(result.failure != "throttled" for result in results) <= 5
    assert len(argon2_runs) <= 5


def test_one_time_codes_sent_at_once_get_no_more_tries_than_the_limit(
        admin_hash: bytes) -> None:
    keys = store(admin_hash)
    secret = totp.new_secret()
    keys.totp = totp.seal_secret(SESSION_SECRET, secret)
    auth = Authenticator(keys, PEPPER, SessionSigner(SESSION_SECRET),
                         FailureThrottle(keys, 3, 300.0, 10), session_secret=SESSION_SECRET,
                         cache_ttl=0)
    assert asyncio.run(auth.login("admin", PASSWORD, totp.code_at(secret, T0), "203.0.113.40",
                                  now=T0)).identity is not None  # the password is remembered
    codes = [f"{n:06d}" for n in range(30) if f"{n:06d}" != totp.code_at(secret, T0 + 30)]

    async def all_at_once() -> list[AuthResult]:
        return list(await asyncio.gather(*(auth.login("admin", PASSWORD, code, "203.0.113.40",
                                                      now=T0 + 30) for code in codes)))
    results = asyncio.run(all_at_once())
    assert sum(result.failure != "throttled" for result in results) <= 3


def test_a_success_does_not_spend_the_global_budget(admin_hash: bytes) -> None:
    keys = store(admin_hash)
    auth = edge(keys, max_failures=3, max_global=2)
    for n in range(5):
        assert try_(auth, password(PASSWORD), f"192.0.2.{n + 70}").identity is not None
    assert GLOBAL not in keys.failures or keys.failures[GLOBAL].count == 0
    assert try_(auth, password("guess"), "192.0.2.80").failure == "invalid"


def test_only_a_few_argon2_checks_run_at_once(admin_hash: bytes,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst from many addresses (each within its budget) cannot take every core."""
    running = [0]
    most = [0]
    lock = threading.Lock()

    def slow(password_hash: bytes, password: str) -> bool:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return False

    monkeypatch.setattr(auth_module, "verify_password", slow)
    auth = edge(store(admin_hash), max_failures=3, max_global=100)
    results = burst(auth, [(password("guess"), f"203.0.113.{n}") for n in range(12)])
    assert all(result.failure == "invalid" for result in results)
    assert most[0] <= auth_module.ARGON2_AT_ONCE < 12
