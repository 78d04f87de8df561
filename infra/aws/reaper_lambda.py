"""The scheduled Lambda that runs the reaper against the AWS backends.

Handler: ``infra.aws.reaper_lambda.handler``. Configured like the edge, from
``OCEDGE_*`` variables (state table, instance). An EventBridge schedule invokes
it every few minutes; the event may carry ``{"grace": seconds}``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from infra.backends import backends_for_tools
from infra.lifecycle import Lifecycle, process_owner
from infra.reaper import DEFAULT_GRACE, reap
from infra.settings import Settings

log = logging.getLogger("ocedge.reaper")


def handler(event: Any, context: Any, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings.from_env()
    logging.getLogger().setLevel(settings.log_level.upper())
    grace = DEFAULT_GRACE
    if isinstance(event, dict) and isinstance(event.get("grace"), int | float):
        grace = float(event["grace"])
    backends = backends_for_tools(settings)
    # The same limit the edge gives a start: the container's own start plus the EC2
    # instance's stop, start and boot (infra/aws/compute.py, EC2_BUDGET).
    lifecycle = Lifecycle(backends.state, backends.compute, owner=process_owner("reaper"),
                          start_timeout=settings.start_timeout)
    result = asyncio.run(reap(lifecycle, grace=grace))
    log.info("reaper: %s (%s)", result.detail, result.status)
    return {"reaped": result.reaped, "status": result.status, "detail": result.detail}
