"""A network namespace of a test's own (``ip netns``), so firewall rules and addresses
can be tried for real without touching the machine's own network.

Processes go in with ``ns.command(argv)`` (``ip netns exec``); the test's own calls go
in through :meth:`NetworkNamespace.call`, which runs a function on a thread that
entered the namespace (a namespace is per thread in Linux). Root, ``ip`` and ``nft``
are needed; a test without them fails naming what is missing (`make setup-test`).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def require_namespaces() -> None:
    """Fail (never skip) unless network namespaces and nftables can be used here."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root: it makes a network namespace and runs the "
                    "container as root (CI runs the suite as root)")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            pytest.fail(f"{tool} is not installed (Debian package {package}): "
                        f"`make setup-test` installs it")


class NetworkNamespace:
    def __init__(self) -> None:
        self.name = f"ocedge-test-{uuid.uuid4().hex[:8]}"

    def _run(self, argv: Sequence[str]) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"

    def create(self) -> NetworkNamespace:
        self._run(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)

    def ip(self, *args: str) -> None:
        self._run(["ip", "-n", self.name, *args])

    def command(self, argv: Sequence[str] = ()) -> list[str]:
        """``argv`` run inside the namespace (with no ``argv``: the wrapper alone)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str]) -> None:
        self._run(self.command(argv))

    def call(self, work: Callable[..., T], *args: Any, timeout: float = 300) -> T:
        """``work(*args)`` on a thread inside the namespace; its result or its error."""
        result: dict[str, Any] = {}

        def inside() -> None:
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
                result["value"] = work(*args)
            except BaseException as exc:  # handed back to the test's thread
                result["error"] = exc
            finally:
                os.close(fd)

        thread = threading.Thread(target=inside, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"{work.__name__} did not finish within {timeout:.0f} s")
        if "error" in result:
            raise result["error"]
        return result["value"]  # type: ignore[no-any-return]


@contextmanager
def network_namespace() -> Iterator[NetworkNamespace]:
    require_namespaces()
    namespace = NetworkNamespace().create()
    try:
        yield namespace
    finally:
        namespace.delete()
