"""What the edge's logs may never hold: credentials.

Libraries that log request headers at DEBUG would log credentials with them: the
websockets library prints every handshake header, among them the internal credential
the edge sends the container. Their DEBUG records are dropped, whatever level the
process logs at. (The AWS clients are capped in :mod:`infra.aws.client`.)
"""

from __future__ import annotations

import logging

# Loggers whose DEBUG records carry request headers.
HEADER_LOGGERS = ("websockets.client", "websockets.server")


def _above_debug(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG


def quiet_credential_logs() -> None:
    """Drop the DEBUG records of :data:`HEADER_LOGGERS` (idempotent)."""
    for name in HEADER_LOGGERS:
        logger = logging.getLogger(name)
        if _above_debug not in logger.filters:
            logger.addFilter(_above_debug)
