"""One way to call AWS, on aiobotocore or boto3.

The stores are written once against :class:`AwsApi`, whose ``call(service,
operation, **params)`` takes botocore's snake_case operation names and returns the
response dict. Two implementations:

- :class:`AioApi` (aiobotocore) for the edge's request path: one client per service
  for the process, created on first use in the running event loop;
- :class:`Boto3Api` for the CLI, the container and the reaper: the blocking boto3
  call runs in a worker thread so the event loop keeps going.

Errors come out as :class:`AwsError` (a :class:`~infra.interfaces.BackendError`),
with :class:`ConditionFailed` for a conditional write that lost, so no caller needs
botocore to handle them. Neither library is imported until the first call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from infra.interfaces import BackendError

# Short timeouts: an edge request waits on these, and Lambda bills the wait.
_CONNECT_TIMEOUT = 3
_READ_TIMEOUT = 10
_RETRIES = {"mode": "standard", "max_attempts": 3}
# Concurrent requests on one edge share the pool; botocore's default is 10.
_POOL = 64


class AwsError(BackendError):
    """An AWS call failed; ``code`` is the AWS error code (or the botocore error name)."""

    def __init__(self, service: str, operation: str, code: str, message: str) -> None:
        super().__init__(message)
        self.service = service
        self.operation = operation
        self.code = code


class ConditionFailed(AwsError):
    """A conditional write did not match: someone else changed the item first."""


class AwsApi(Protocol):
    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """Run ``operation`` (snake_case) on ``service``; raises :class:`AwsError`."""

    async def warm(self, services: tuple[str, ...]) -> None:
        """Load the library and create the clients now, so the first request does not."""

    async def aclose(self) -> None:
        """Close the clients this process opened (for the current event loop)."""


def quiet_botocore_logs() -> None:
    # At DEBUG botocore logs request and response bodies, which include the SSM
    # secrets and the API-key hashes. Whatever the process's log level, these
    # loggers stop at INFO so no secret can reach a log.
    for name in ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3"):
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:
            logger.setLevel(logging.INFO)


def _translate(service: str, operation: str, exc: Exception) -> AwsError | None:
    """The :class:`AwsError` for a botocore exception, None for anything else."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = f"AWS {service} {operation} failed: {code}: {error.get('Message', '')}".rstrip(": ")
        kind = ConditionFailed if code == "ConditionalCheckFailedException" else AwsError
        return kind(service, operation, code, message)
    if isinstance(exc, NoRegionError):
        return AwsError(service, operation, "NoRegion",
                        "no AWS region is set: set OCEDGE_AWS_REGION or AWS_REGION, or use "
                        "--stack NAME")
    if isinstance(exc, NoCredentialsError):
        return AwsError(service, operation, "NoCredentials",
                        "no AWS credentials found: configure them as for the AWS CLI "
                        "(AWS_PROFILE, `aws configure`, or an instance/function role)")
    if isinstance(exc, BotoCoreError):
        return AwsError(service, operation, type(exc).__name__,
                        f"AWS {service} {operation} failed: {exc}")
    return None


def _config_args() -> dict[str, Any]:
    return {"connect_timeout": _CONNECT_TIMEOUT, "read_timeout": _READ_TIMEOUT,
            "retries": dict(_RETRIES), "max_pool_connections": _POOL}


class Boto3Api:
    """boto3 clients, one per service, shared by every thread of the process."""

    def __init__(self, region: str | None, endpoint: str | None) -> None:
        self.region = region
        self.endpoint = endpoint
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _new_client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        # A session per API object: boto3's default session is not thread-safe to
        # create clients from.
        session: Any = boto3.session.Session(region_name=self.region)
        return session.client(service, endpoint_url=self.endpoint,
                              config=Config(**_config_args()))

    def _client(self, service: str) -> Any:
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                quiet_botocore_logs()
                client = self._clients[service] = self._new_client(service)
            return client

    def call_sync(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """The blocking call, for code that has no event loop (start-up, the CLI's parser)."""
        try:
            method: Callable[..., dict[str, Any]] = getattr(self._client(service), operation)
            return method(**params)
        except Exception as exc:
            translated = _translate(service, operation, exc)
            if translated is None:
                raise
            raise translated from None

    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.call_sync, service, operation, **params)

    async def warm(self, services: tuple[str, ...]) -> None:
        for service in services:
            await asyncio.to_thread(self._client, service)

    async def aclose(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


class BotocoreApi(Boto3Api):
    """Blocking calls on plain botocore: for the edge's one start-up read of its
    secrets, which then costs no boto3 import (aiobotocore loads botocore anyway)."""

    def _new_client(self, service: str) -> Any:
        from botocore.config import Config
        from botocore.session import get_session

        return get_session().create_client(service, region_name=self.region,
                                           endpoint_url=self.endpoint,
                                           config=Config(**_config_args()))


class AioApi:
    """aiobotocore clients, one per service, on the event loop that serves requests.

    aiobotocore clients belong to the loop that created them. The first loop to
    call is the home loop and keeps its clients for the life of the process; a
    call from any other loop (a test's or a shutdown's ``asyncio.run``) gets a
    client of its own, closed right after, so nothing is left bound to a loop
    that is gone. If the home loop closes, the next caller's loop becomes home.
    """

    def __init__(self, region: str | None, endpoint: str | None) -> None:
        self.region = region
        self.endpoint = endpoint
        self._session: Any = None
        self._home: asyncio.AbstractEventLoop | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._clients: dict[str, asyncio.Future[Any]] = {}

    def _create(self, service: str) -> Any:
        """The (async context manager) for a new client."""
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        if self._session is None:
            quiet_botocore_logs()
            self._session = get_session()
        return self._session.create_client(
            service, region_name=self.region, endpoint_url=self.endpoint,
            config=AioConfig(**_config_args()))

    async def _open(self, service: str) -> Any:
        if self._stack is None:
            self._stack = contextlib.AsyncExitStack()
        return await self._stack.enter_async_context(self._create(service))

    def _at_home(self) -> bool:
        """Whether the running loop is the home loop (adopting it if there is none)."""
        loop = asyncio.get_running_loop()
        if self._home is None or self._home.is_closed():
            # Clients of a closed loop cannot be closed any more: just forget them.
            self._home, self._stack, self._clients = loop, None, {}
        return loop is self._home

    async def _call(self, service: str, operation: str, params: dict[str, Any]) -> Any:
        if not self._at_home():
            async with self._create(service) as client:
                return await getattr(client, operation)(**params)
        client = await self._client(service)
        return await getattr(client, operation)(**params)

    async def _client(self, service: str) -> Any:
        future = self._clients.get(service)
        if future is None or (future.done() and future.exception() is not None):
            # Set before the first await: concurrent first calls share one client.
            future = self._clients[service] = asyncio.ensure_future(self._open(service))
        return await asyncio.shield(future)

    async def warm(self, services: tuple[str, ...]) -> None:
        if self._at_home():
            for service in services:
                await self._client(service)

    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self._call(service, operation, params)
            return result
        except Exception as exc:
            translated = _translate(service, operation, exc)
            if translated is None:
                raise
            raise translated from None

    async def aclose(self) -> None:
        if asyncio.get_running_loop() is not self._home:
            return
        # The home loop stays home: a later call from another loop (a shutdown's
        # asyncio.run) still gets a client of its own, closed after the call.
        stack, self._stack, self._clients = self._stack, None, {}
        if stack is not None:
            await stack.aclose()

