"""``ocedge dev``: the whole deployment on this machine — the edge under uvicorn, the
container as a child process, the workspace in a directory or an emulated bucket.

The one module of ``infra`` that imports the edge (when the command runs)."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any

from infra.cli.console import CliError, progress
from infra.cli.options import settings_from_args
from infra.settings import Settings

if TYPE_CHECKING:
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


def dev(args: argparse.Namespace) -> None:
    """Run the edge in the foreground until Ctrl-C, then stop the container."""
    import uvicorn

    from edge.app import create_app, print_credentials
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


def add_commands(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``dev`` to ``ocedge``'s subcommands."""
    p = subparsers.add_parser("dev", parents=[common], help="run the local deployment")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8787)")
    p.add_argument("--s3", choices=["emulated"],
                   help="put the workspace on an emulated S3 (moto, kept in the state directory)")
    p.set_defaults(run=dev)
