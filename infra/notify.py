"""Notices: a few words to you, while you are away, when the agent finishes, fails or
waits for your answer — and the channels that carry them.

A :class:`Notice` holds the session's title, what happened and a link to the session in
the UI; never a message's contents, a command the agent wants to run, or a secret. The
container makes them (:mod:`container.notices`); ``ocedge notify test`` sends a sample.

Channels (any number at once, from the settings):

- a webhook, ``OCEDGE_NOTIFY_URL``, in ``OCEDGE_NOTIFY_FORMAT``:
  ``json`` (the payload of :meth:`Notice.payload`, documented in the README),
  ``ntfy`` (https://docs.ntfy.sh/publish/: the text as the body, ``Title``, ``Click``,
  ``Tags`` and ``Priority`` headers) or ``slack`` (an incoming webhook: ``{"text": …}``);
- an SNS topic, ``OCEDGE_NOTIFY_TOPIC`` (on AWS the stack makes one; subscribe an
  email address to it with the stack's ``NotifyEmail`` parameter).

Delivery never holds anything up: :meth:`Notifier.send` queues and returns, a worker
delivers, a failed try is logged and retried a few times with growing pauses, and
:meth:`Notifier.close` drops whatever is still pending (with a log line) at once. A
webhook URL often carries its token (ntfy topics, Slack webhooks): it is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from infra.interfaces import BackendError, Backends
from infra.settings import Settings

log = logging.getLogger("ocedge.notify")

FINISHED, FAILED, WAITING = "finished", "failed", "waiting"
# The key-store item (sealed, with the agent secrets) of a webhook set with `ocedge
# notify set-webhook`: how a deployment whose settings are not yours (AWS) gets one.
WEBHOOK_ITEM = "OCEDGE_NOTIFY_WEBHOOK"
_HEADLINES = {FINISHED: "finished", FAILED: "stopped with an error", WAITING: "needs your answer"}
# Pauses before the 2nd, 3rd and 4th try; after the last, the notice is dropped (logged).
BACKOFF = (1.0, 4.0, 15.0)
_QUEUE = 100  # notices waiting for delivery; beyond that the newest is dropped (logged)


@dataclass(frozen=True)
class Notice:
    """One thing worth telling: ``kind`` is :data:`FINISHED`, :data:`FAILED` or
    :data:`WAITING`; ``detail`` says more in a few words of ours (a duration, an error's
    type, the kind of permission asked) — never text from the conversation."""

    kind: str
    session: str
    title: str
    link: str | None  # None: no address of the UI is known (PublicUrl unset on AWS)
    detail: str = ""
    # A waiting question keeps the workspace awake at least this long (seconds).
    awake_for: float | None = None
    at: float = field(default_factory=time.time)

    @property
    def headline(self) -> str:
        return f"opencode {_HEADLINES.get(self.kind, self.kind)}: {self.title}"

    @property
    def text(self) -> str:
        lines = [self.headline]
        if self.detail:
            lines.append(self.detail)
        if self.awake_for is not None:
            lines.append(f"The workspace stays awake for at least {_minutes(self.awake_for)} "
                         "waiting for your answer; after that it may go to sleep.")
        if self.link:
            lines.append(self.link)
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        """The ``json`` format's body (version 1; documented in the README)."""
        return {"version": 1, "event": f"session.{self.kind}", "summary": self.headline,
                "detail": self.detail or None, "awake_for": self.awake_for,
                "session": {"id": self.session, "title": self.title, "url": self.link},
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))}


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def session_link(base: str, directory: str, session_id: str) -> str:
    """The UI's address of a session: ``/<directory>/session/<id>``, the directory as
    unpadded base64url of its UTF-8 bytes (the opencode app's own route)."""
    encoded = base64.urlsafe_b64encode(directory.encode()).decode().rstrip("=")
    return f"{base.rstrip('/')}/{encoded}/session/{session_id}"


def ui_base(settings: Settings) -> str | None:
    """Where a browser reaches the edge: ``OCEDGE_PUBLIC_URL``, else the local edge; on
    AWS without one, unknown (the stack's ``PublicUrl`` parameter sets it)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if settings.backend == "aws":
        return None
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


class DeliveryError(Exception):
    """One try failed; ``retry`` says whether another could succeed."""

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class Channel(Protocol):
    name: str

    async def deliver(self, notice: Notice) -> None:
        """One try; raises :class:`DeliveryError`."""


@dataclass
class Webhook:
    """``OCEDGE_NOTIFY_URL`` in one of the three formats."""

    url: str = field(repr=False)
    format: str = "json"
    timeout: float = 10.0
    name: str = "webhook"

    def __post_init__(self) -> None:
        # httpx logs every request's full URL at INFO, and the URL is the token here:
        # whatever the process's log level, httpx stops at WARNING.
        quiet = logging.getLogger("httpx")
        if quiet.getEffectiveLevel() < logging.WARNING:
            quiet.setLevel(logging.WARNING)

    def request(self, notice: Notice) -> dict[str, Any]:
        """The keyword arguments of the POST for ``notice``."""
        if self.format == "ntfy":
            headers = {"Title": _header(notice.headline),
                       "Tags": {FINISHED: "white_check_mark", FAILED: "x",
                                WAITING: "question"}.get(notice.kind, "robot"),
                       "Priority": "high" if notice.kind == WAITING else "default"}
            if notice.link:
                headers["Click"] = notice.link
            return {"content": notice.text.encode(), "headers": headers}
        if self.format == "slack":
            title = notice.title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            words = _HEADLINES.get(notice.kind, notice.kind)
            named = f"<{notice.link}|{title}>" if notice.link else title
            lines = [f"opencode {words}: {named}"]
            lines += notice.text.splitlines()[1:-1 if notice.link else None]
            return {"json": {"text": "\n".join(lines)}}
        return {"json": notice.payload()}

    async def deliver(self, notice: Notice) -> None:
        try:
            async with httpx.AsyncClient(timeout=self.timeout, trust_env=True) as client:
                response = await client.post(self.url, **self.request(notice))
        except httpx.HTTPError as exc:
            # The exception's text can quote the URL: only its type is told.
            raise DeliveryError(type(exc).__name__, retry=True) from None
        if response.status_code >= 400:
            raise DeliveryError(f"HTTP {response.status_code}", retry=response.status_code
                                in (408, 425, 429) or response.status_code >= 500)


def _header(value: str) -> str:
    """A header value: plain ASCII as is, anything else RFC 2047-encoded (ntfy reads it)."""
    value = " ".join(value.split())
    if value.isascii():
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode()).decode() + "?="


@dataclass
class SnsTopic:
    """An SNS topic (``OCEDGE_NOTIFY_TOPIC``): an email subscription receives the text."""

    api: Any  # infra.aws.client.AwsApi
    topic: str
    name: str = "sns"

    async def deliver(self, notice: Notice) -> None:
        from infra.aws.client import AwsError

        # Subject: ASCII, no line breaks, under 100 characters
        # (docs.aws.amazon.com/sns/latest/api/API_Publish.html).
        subject = "".join(c if c.isascii() and c.isprintable() else "?"
                          for c in notice.headline)[:99]
        try:
            await self.api.call("sns", "publish", TopicArn=self.topic, Subject=subject,
                                Message=notice.text)
        except AwsError as exc:
            raise DeliveryError(exc.code, retry=exc.code not in (
                "AuthorizationError", "NotFound", "InvalidParameter")) from None


async def configured_channels(settings: Settings, backends: Backends) -> list[Channel]:
    """The channels ``settings`` name, and the webhook stored with ``ocedge notify
    set-webhook`` (sealed, like the agent's secrets) unless ``OCEDGE_NOTIFY_URL`` is set."""
    found = channels(settings)
    if settings.notify_url:
        return found
    try:
        stored = [r for r in await backends.keys.list_secrets() if r.name == WEBHOOK_ITEM]
    except BackendError as exc:  # notices are not worth failing a start for
        log.error("could not read the stored webhook (%s): notices go only to %s", exc,
                  describe(found))
        return found
    if not stored:
        return found
    from infra.agent_secrets import AgentSecretError, open_sealed

    try:
        keys = await asyncio.to_thread(backends.sealing_keys)
        doc = json.loads(open_sealed(keys, WEBHOOK_ITEM, stored[0].sealed))
        webhook = Webhook(str(doc["url"]), str(doc.get("format", "json")))
    except (AgentSecretError, ValueError, KeyError, TypeError):
        log.error("the stored webhook does not open; set it again with "
                  "`ocedge notify set-webhook`")
        return found
    return [webhook, *found]


def channels(settings: Settings) -> list[Channel]:
    """The channels ``settings`` name (none: notices are only logged)."""
    found: list[Channel] = []
    if settings.notify_url:
        found.append(Webhook(settings.notify_url.strip(), settings.notify_format))
    if settings.notify_topic:
        from infra.aws.client import Boto3Api

        found.append(SnsTopic(Boto3Api(settings.aws_region, settings.aws_endpoint),
                              settings.notify_topic))
    return found


async def deliver(channel: Channel, notice: Notice, backoff: Sequence[float] = BACKOFF,
                  sleep: Callable[[float], Any] = asyncio.sleep) -> bool:
    """Try ``channel`` until it takes ``notice`` or the tries run out; whether it did."""
    for attempt in range(len(backoff) + 1):
        try:
            await channel.deliver(notice)
        except DeliveryError as exc:
            last = attempt == len(backoff) or not exc.retry
            log.warning("notice %s for %s not delivered by %s (try %d: %s)%s", notice.kind,
                        notice.session, channel.name, attempt + 1, exc,
                        "; dropped" if last else "; trying again")
            if last:
                return False
            await sleep(backoff[attempt])
            continue
        log.info("notice %s for %s delivered by %s", notice.kind, notice.session, channel.name)
        return True
    return False


class Notifier:
    """Queues notices and delivers them in the background, on every channel."""

    def __init__(self, targets: Sequence[Channel], backoff: Sequence[float] = BACKOFF) -> None:
        self.channels = list(targets)
        self.backoff = backoff
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(_QUEUE)
        self._worker: asyncio.Task[None] | None = None
        self._tries: set[asyncio.Task[bool]] = set()

    def send(self, notice: Notice) -> None:
        """Queue ``notice`` and return at once."""
        log.info("notice: %s for session %s (%s)", notice.kind, notice.session,
                 ", ".join(c.name for c in self.channels) or "no channel configured")
        if not self.channels:
            return
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            log.warning("notice %s for %s dropped: %d notices are waiting already",
                        notice.kind, notice.session, _QUEUE)
            return
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            notice = await self._queue.get()
            # Channels deliver side by side; one that is down does not hold up the next notice.
            for channel in self.channels:
                task = asyncio.ensure_future(deliver(channel, notice, self.backoff))
                self._tries.add(task)
                task.add_done_callback(self._tries.discard)

    async def close(self) -> None:
        """Stop now; anything not delivered yet is dropped, and said so."""
        pending = self._queue.qsize() + len(self._tries)
        for task in [*self._tries, *([self._worker] if self._worker else [])]:
            task.cancel()
        if pending:
            log.warning("%d notice deliveries were still pending at shutdown: dropped", pending)
        self._worker = None


def sample(settings: Settings) -> Notice:
    """What ``ocedge notify test`` sends: a notice like a real one, for no real session."""
    base = ui_base(settings)
    return Notice(FINISHED, "ses_test", "Test notice from ocedge notify test",
                  session_link(base, "/workspace", "ses_test") if base else None,
                  detail="This is a test: no session ran. Real notices link to their session.")


def describe(targets: Sequence[Channel]) -> str:
    """Channels in words (never the webhook's URL)."""
    words = [f"webhook ({t.format})" if isinstance(t, Webhook) else
             f"SNS topic {t.topic}" if isinstance(t, SnsTopic) else t.name for t in targets]
    return ", ".join(words) or "none"
