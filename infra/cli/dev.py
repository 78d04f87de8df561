"""``ocedge dev``: the whole deployment on this machine — the edge under uvicorn, the
container as a child process, the workspace in a directory or an emulated bucket.

The one module of ``infra`` that imports the edge (when the command runs)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from infra.cli.console import CliError, progress
from infra.cli.options import settings_from_args
from infra.settings import Settings

if TYPE_CHECKING:
    from infra.emulated_aws import EmulatedAws
    from infra.emulated_s3 import EmulatedS3


def _workspace_line(settings: Settings, emulated: EmulatedS3 | None) -> str:
    if emulated is not None:
        return (f"emulated S3 (moto) at {emulated.endpoint}, bucket {emulated.bucket!r}; "
                f"its data stays in {emulated.root} across restarts of `ocedge dev`")
    if settings.workspace == "s3":
        return (f"s3://{settings.s3_bucket}/{settings.s3_prefix} at "
                f"{settings.s3_endpoint or 'AWS S3'} (FUSE-mounted)")
    return (f"local directory {settings.workspace_path.resolve()}, NOT saved to S3 "
            f"(OCEDGE_WORKSPACE=local; try `ocedge dev --s3 emulated`)")


@contextlib.contextmanager
def _signals_ignored(signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def dev(args: argparse.Namespace) -> None:
    """Run the edge in the foreground until Ctrl-C, SIGTERM or SIGHUP, then stop the
    container."""
    import uvicorn

    from edge.app import create_app, print_credentials
    from edge.server import STOP_SIGNALS, Server
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

        progress("Starting the emulated S3 …")
        try:
            emulated = EmulatedS3(settings.state_dir).start()
        except RuntimeError as exc:
            raise CliError(str(exc)) from None
        settings = settings.with_overrides(**emulated.settings_changes(settings.system_env))
    emulated_aws = None
    if args.aws == "emulated":
        emulated_aws = _start_emulated_aws(settings, args)
        settings = emulated_aws.edge_settings(settings)
    try:
        edge = create_app(settings)
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
            + (f"  AWS:     emulated (moto) at {emulated_aws.endpoint}, stack "
               f"{settings.stack!r}: OCEDGE_AWS_ENDPOINT={emulated_aws.endpoint} ocedge "
               f"init --stack {settings.stack}; the host's log: {emulated_aws.root}\n"
               if emulated_aws is not None else "") +
            "  The workspace starts on the first request. Ctrl-C (or SIGTERM, SIGHUP) "
            "stops everything.",
            flush=True)
        server = Server(uvicorn.Config(
            # proxy_headers off: the edge decides itself whether to trust X-Forwarded-*.
            edge, host=settings.host, port=settings.port, log_level="warning", lifespan="on",
            loop="uvloop", http="edge.server:HttpProtocol", timeout_graceful_shutdown=5,
            proxy_headers=False, server_header=False, date_header=False))
        try:
            server.run()
        finally:
            # The container saves the workspace to S3 on its way out: stop it first,
            # and let no second signal cut that short.
            with _signals_ignored(STOP_SIGNALS):
                if server.stopped_by is not None:
                    progress(f"{signal.Signals(server.stopped_by).name}: stopping the "
                             f"workspace container (up to {settings.stop_budget:.0f} s) …")
                asyncio.run(edge.backends.compute.stop())
    finally:
        if emulated is not None:
            with _signals_ignored(STOP_SIGNALS):
                emulated.stop()
        if emulated_aws is not None:
            with _signals_ignored(STOP_SIGNALS):
                emulated_aws.stop()


def _start_emulated_aws(settings: Settings, args: argparse.Namespace) -> EmulatedAws:
    """``--aws emulated``: the deployment's AWS path on this machine (infra/emulated_aws.py)."""
    import os

    from infra.emulated_aws import EmulatedAws
    from infra.emulated_s3 import CREDENTIALS

    if args.s3 is not None:
        raise CliError("--aws emulated brings its own bucket: leave out --s3")
    progress("Starting the emulated AWS …")
    # The edge's AWS clients sign with the emulator's credentials: a user's real ones
    # never reach it.
    os.environ.update(CREDENTIALS)
    try:
        return EmulatedAws(settings.state_dir).start(settings)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``dev`` to ``ocedge``'s subcommands."""
    p = subparsers.add_parser("dev", parents=[common], help="run the local deployment")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8787)")
    p.add_argument("--s3", choices=["emulated"],
                   help="put the workspace on an emulated S3 (moto, kept in the state directory)")
    p.add_argument("--aws", choices=["emulated"],
                   help="rehearse the AWS path: an emulated AWS (moto) with the stack's tables, "
                        "bucket and an EC2 instance whose host runs the container")
    p.set_defaults(run=dev)
