"""Pick the store and compute implementations a deployment's settings ask for.

``backend=local``: SQLite under the state directory, a child process, secrets in
0600 files. ``backend=aws`` (or a ``stack`` setting): DynamoDB, EC2 and the SSM
secrets parameter (:mod:`infra.aws.backends`).

Two entry points, one per kind of process: :func:`backends_for_requests` for the
edge, whose request path stays asynchronous end to end, and
:func:`backends_for_tools` for the CLI, the container and the reaper. The AWS
libraries are imported only when an AWS backend is opened, never by importing
this module.
"""

from __future__ import annotations

from infra.credentials import secret_overrides
from infra.interfaces import Backends
from infra.settings import Settings

__all__ = ["Backends", "backends_for_requests", "backends_for_tools"]


def backends_for_requests(settings: Settings) -> Backends:
    """The edge's backends: every call on the request path is asynchronous."""
    if _on_aws(settings):
        from infra.aws.backends import for_requests

        return for_requests(settings)
    return _local(settings)


def backends_for_tools(settings: Settings) -> Backends:
    """The backends of the CLI, the container and the reaper."""
    if _on_aws(settings):
        from infra.aws.backends import for_tools

        return for_tools(settings)
    return _local(settings)


def _on_aws(settings: Settings) -> bool:
    return settings.backend == "aws" or bool(settings.stack)


def _local(settings: Settings) -> Backends:
    from infra.local.compute import LocalCompute
    from infra.local.db import database
    from infra.local.keys import LocalKeyStore
    from infra.local.secrets import LocalSecrets
    from infra.local.state import LocalStateStore

    state_dir = settings.state_dir.resolve()
    db = database(state_dir)
    return Backends(
        keys=LocalKeyStore(db),
        state=LocalStateStore(db),
        compute=LocalCompute(state_dir, env=settings.child_env(),
                             stop_timeout=settings.stop_budget + 15),
        secrets=LocalSecrets(state_dir),
        overrides=secret_overrides(settings),
    )
