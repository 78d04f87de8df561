"""``ocedge``: the admin command line.

    ocedge dev                       run the local deployment
    ocedge keys create|list|revoke   API keys
    ocedge admin password            set the admin password (prompt or stdin)
    ocedge status|wake|sleep         the container's state; start or stop it
    ocedge reap                      stop a container that hung past its deadline
    ocedge init --stack NAME         initialise a deployed stack (admin, secrets, first key)
    ocedge provider set|list|remove  sealed model-provider keys (BYOK)

Every command honours --state-dir (default: OCEDGE_STATE_DIR or .ocedge/).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import re
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from infra.interfaces import BackendError
from infra.settings import Settings, SettingsError


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.lower())
    if not match or int(match.group(1)) == 0:
        raise CliError(f"invalid duration {text!r}: use a number and a unit, e.g. 30d, 12h, 90m")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings with the command line's --state-dir/--stack/... on top."""
    settings = Settings.from_env()
    changes: dict[str, Any] = {}
    if getattr(args, "state_dir", None):
        changes["state_dir"] = Path(args.state_dir)
    if getattr(args, "stack", None):
        # A stack means the AWS backends, their names read from its outputs.
        changes.update(stack=args.stack, backend="aws")
    for name in ("host", "port"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    return settings.with_overrides(**changes) if changes else settings


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    else:
        print(text)


# -- keys --------------------------------------------------------------------------


async def keys_create(args: argparse.Namespace) -> None:
    from infra.backends import open_backends
    from infra.credentials import mint_api_key

    name = args.name.strip()
    if not name or len(name) > 100:
        raise CliError("--name must be 1 to 100 characters")
    settings = settings_from_args(args)
    backends = open_backends(settings)
    now = time.time()
    expires = now + parse_duration(args.expires) if args.expires is not None else None
    new = mint_api_key(name, backends.pepper, expires=expires, now=now)
    await backends.keys.put_key(new.record)
    _emit(args, {"id": new.record.id, "key": new.key, "name": name, "expires": expires},
          f"Created API key {new.record.id} ({name}), expires {_when(expires)}.\n"
          f"Copy it now; it is not shown again:\n\n    {new.key}\n")


def _key_status(record: Any, now: float) -> str:
    if record.revoked is not None:
        return "revoked"
    if record.expires is not None and now >= record.expires:
        return "expired"
    return "active"


async def keys_list(args: argparse.Namespace) -> None:
    from infra.backends import open_backends

    backends = open_backends(settings_from_args(args))
    records = await backends.keys.list_keys()
    now = time.time()
    rows: list[dict[str, Any]] = [{"id": r.id, "name": r.name, "created": r.created, "expires": r.expires,
             "last_used": r.last_used, "revoked": r.revoked, "status": _key_status(r, now)}
            for r in records]
    lines = [f"{'ID':<14}{'NAME':<24}{'STATUS':<9}{'CREATED':<22}{'EXPIRES':<22}LAST USED"]
    for r in rows:
        lines.append(f"{r['id']:<14}{r['name'][:23]:<24}{r['status']:<9}"
                     f"{_when(r['created']):<22}{_when(r['expires']):<22}{_when(r['last_used'])}")
    if not rows:
        lines = ["No API keys yet. Create one with: ocedge keys create --name NAME"]
    _emit(args, rows, "\n".join(lines))


async def keys_revoke(args: argparse.Namespace) -> None:
    from infra.backends import open_backends

    backends = open_backends(settings_from_args(args))
    if not await backends.keys.revoke_key(args.id, time.time()):
        raise CliError(f"no API key with id {args.id!r} (see `ocedge keys list`)")
    _emit(args, {"id": args.id, "revoked": True}, f"Revoked API key {args.id}.")


# -- admin -------------------------------------------------------------------------


async def admin_password(args: argparse.Namespace) -> None:
    from infra.admin import set_admin_password
    from infra.backends import open_backends

    if sys.stdin.isatty():
        password = getpass.getpass("New admin password: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    settings = settings_from_args(args)
    try:
        await set_admin_password(settings, open_backends(settings).keys, password)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    _emit(args, {"user": settings.admin_user, "updated": True},
          f"Admin password for {settings.admin_user!r} updated.")


# -- status ------------------------------------------------------------------------


async def status(args: argparse.Namespace) -> None:
    from infra.backends import open_backends

    backends = open_backends(settings_from_args(args))
    current = await backends.state.get()
    data = {"status": current.status, "generation": current.generation,
            "since": current.since, "deadline": current.deadline, "busy": current.busy,
            "reason": current.reason}
    text = f"{current.status} since {_when(current.since)} (generation {current.generation})"
    if current.deadline and current.status == "running":
        text += f"\nsleeps after {_when(current.deadline)} unless used"
    if current.reason:
        text += f"\nreason: {current.reason}"
    _emit(args, data, text)


async def _watch(backends: Any, until: tuple[str, ...], timeout: float,
                 args: argparse.Namespace, since_generation: int = -1) -> Any:
    """Wait for the state to reach one of ``until``, showing progress on stderr."""
    started = time.monotonic()
    last = None
    while True:
        current = await backends.state.get()
        elapsed = time.monotonic() - started
        if current.status != last:
            print(f"  {elapsed:5.1f} s  {current.status}", file=sys.stderr, flush=True)
            last = current.status
        if current.status in until and current.generation > since_generation:
            return current
        if current.status == "failed" and current.generation > since_generation:
            raise CliError(f"the container failed: {current.reason}")
        if elapsed > timeout:
            raise CliError(f"still {current.status} after {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def wake(args: argparse.Namespace) -> None:
    from infra.backends import open_backends
    from infra.lifecycle import Lifecycle

    settings = settings_from_args(args)
    backends = open_backends(settings)
    current = await backends.state.get()
    if current.status != "running":
        lease = await Lifecycle(backends.state).begin_start("cli")
        if lease is not None:
            print(f"Waking the workspace (generation {lease.generation})…", file=sys.stderr)
            await backends.compute.start()
        current = await _watch(backends, ("running",), args.timeout, args,
                               since_generation=(lease.generation - 1) if lease else -1)
    await status(args)


async def sleep(args: argparse.Namespace) -> None:
    from infra.backends import open_backends

    settings = settings_from_args(args)
    backends = open_backends(settings)
    current = await backends.state.get()
    if current.status in ("stopped", "failed"):
        await status(args)
        return
    print("Putting the workspace to sleep…", file=sys.stderr)
    await backends.compute.stop()
    await _watch(backends, ("stopped", "failed"), args.timeout, args)
    await status(args)


async def reap_command(args: argparse.Namespace) -> None:
    from infra.backends import open_backends
    from infra.reaper import reap

    backends = open_backends(settings_from_args(args))
    result = await reap(backends.state, backends.compute, grace=args.grace)
    _emit(args, {"reaped": result.reaped, "status": result.status, "detail": result.detail},
          result.detail)


# -- dev ---------------------------------------------------------------------------


def _workspace_line(settings: Settings, emulated: Any) -> str:
    if emulated is not None:
        return (f"emulated S3 (moto) at {emulated.endpoint}, bucket {emulated.bucket!r}; "
                f"its data stays in {emulated.root} across restarts of `ocedge dev`")
    if settings.workspace == "s3":
        return (f"s3://{settings.s3_bucket}/{settings.s3_prefix} at "
                f"{settings.s3_endpoint or 'AWS S3'} (FUSE-mounted)")
    return (f"local directory {settings.workspace_path.resolve()}, NOT saved to S3 "
            f"(OCEDGE_WORKSPACE=local; try `ocedge dev --s3 emulated`)")


def dev(args: argparse.Namespace) -> None:
    import uvicorn

    from edge.app import Edge, print_credentials
    from infra.admin import ensure_admin

    settings = settings_from_args(args)
    if settings.s3_bucket and settings.workspace != "s3" and args.s3 is None:
        # The container would refuse too; say it before anything starts.
        raise CliError(f"OCEDGE_S3_BUCKET is set ({settings.s3_bucket}) but OCEDGE_WORKSPACE is "
                       f"'local': set OCEDGE_WORKSPACE=s3 to keep the workspace in the bucket, "
                       f"or unset OCEDGE_S3_BUCKET")
    emulated = None
    if args.s3 == "emulated":
        from infra.emulated_s3 import EmulatedS3

        print("Starting the emulated S3 …", file=sys.stderr, flush=True)
        try:
            emulated = EmulatedS3(settings.state_dir).start()
        except RuntimeError as exc:
            raise CliError(str(exc)) from None
        settings = settings.with_overrides(**emulated.settings_changes(settings.system_env))
    try:
        edge = Edge(settings)
        password = asyncio.run(ensure_admin(settings, edge.backends.keys))
        if password is not None:
            print_credentials(settings.admin_user, password)
        url = f"http://{settings.host}:{settings.port}/"
        shown = "the password printed above" if password else (
            "your admin password (set it with `ocedge admin password`)")
        print(
            f"opencode-edge is running at {url}\n"
            f"  browser: open {url} and log in as {settings.admin_user!r} with {shown}\n"
            f"  API:     ocedge keys create --name laptop   (then)\n"
            f"           curl -H 'Authorization: Bearer <key>' {url}global/health\n"
            f"           opencode run --attach {url.rstrip('/')} -p <key> 'hello'\n"
            f"  workspace: {_workspace_line(settings, emulated)}\n"
            f"  state:   {settings.state_dir.resolve()} (container log: container.log)\n"
            f"  The workspace starts on the first request. Ctrl-C stops everything.",
            flush=True)
        try:
            # proxy_headers off: the edge decides itself whether to trust X-Forwarded-*.
            uvicorn.run(edge, host=settings.host, port=settings.port, log_level="warning",
                        lifespan="on", timeout_graceful_shutdown=5, proxy_headers=False,
                        server_header=False, date_header=False)
        finally:
            # The container saves the workspace to S3 on its way out: stop it first.
            asyncio.run(edge.backends.compute.stop())
    finally:
        if emulated is not None:
            emulated.stop()


# -- parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="state directory (default: OCEDGE_STATE_DIR or .ocedge)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    # SUPPRESS: a --stack given before the subcommand is not reset by its absence after.
    common.add_argument("--stack", default=argparse.SUPPRESS,
                        help="the deployed CloudFormation stack (default: OCEDGE_STACK)")

    parser = argparse.ArgumentParser(prog="ocedge", description="opencode-edge admin CLI")
    parser.add_argument("--stack", help="the deployed CloudFormation stack to work on "
                        "(default: OCEDGE_STACK; without one, the local state directory)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dev", parents=[common], help="run the local deployment")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8787)")
    p.add_argument("--s3", choices=["emulated"],
                   help="put the workspace on an emulated S3 (moto, kept in the state directory)")
    p.set_defaults(run=dev)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True)
    p = keys.add_parser("create", parents=[common], help="create a key (shown once)")
    p.add_argument("--name", required=True, help="what the key is for")
    p.add_argument("--expires", help="lifetime such as 30d, 12h (default: never)")
    p.set_defaults(run=keys_create)
    p = keys.add_parser("list", parents=[common], help="list keys (never shows secrets)")
    p.set_defaults(run=keys_list)
    p = keys.add_parser("revoke", parents=[common], help="revoke a key by id")
    p.add_argument("id")
    p.set_defaults(run=keys_revoke)

    admin = sub.add_parser("admin", help="the admin login").add_subparsers(
        dest="admin_command", required=True)
    p = admin.add_parser("password", parents=[common],
                         help="set the admin password (prompt, or one line on stdin)")
    p.set_defaults(run=admin_password)

    p = sub.add_parser("status", parents=[common], help="the container's state")
    p.set_defaults(run=status)
    p = sub.add_parser("wake", parents=[common], help="start the workspace and wait for it")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")
    p.set_defaults(run=wake)
    p = sub.add_parser("sleep", parents=[common], help="stop the workspace gracefully")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait (default 120)")
    p.set_defaults(run=sleep)
    p = sub.add_parser("reap", parents=[common],
                       help="stop a container that hung past its idle deadline")
    p.add_argument("--grace", type=float, default=300,
                   help="seconds past the deadline before reaping (default 300)")
    p.set_defaults(run=reap_command)

    from infra.cli_aws import add_commands

    add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, None] | None] = args.run
    try:
        result = run(args)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    except (CliError, SettingsError, BackendError) as exc:
        print(f"ocedge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
