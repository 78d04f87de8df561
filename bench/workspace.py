"""The S3 workspace benchmark, on one moto S3 server:

- small files: N x 4 KiB written, then read back and checked, on local disk, on the
  workspace mount (rclone, the container's own flags) and on s3fs (Debian) mounting
  the same bucket;
- durable: from the last write on the mount until every file is an object in the
  bucket (rclone's write-back delay, then the uploads), checked with boto3;
- wake with restore: a wiped machine (no VFS cache, no opencode database) whose
  container starts from the bucket: mount, restore the database (a few hundred
  sessions), start opencode, until the state says running; and the workspace's
  share of it (mount + config + database restore).

moto stands in for a remote S3, so it is pinned to a CPU of its own: a real S3's
request handling does not compete with the file system under test for our CPUs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.procs import Child
from bench.report import Check
from container.workspace import WorkspaceError
from container.workspace.fuse import fuse_mount_at
from container.workspace.location import S3Location
from container.workspace.rclone import RcloneMount
from container.workspace.tools import go_tool_env
from infra.backends import backends_for_tools
from infra.net import free_port
from infra.settings import PROJECT_ROOT, Settings

MIN_VS_S3FS = 15.0
MAX_DURABLE_S = 10.0
MAX_WAKE_S = 3.5

BUCKET = "bench-workspace"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


class WorkspaceBenchError(RuntimeError):
    """The workspace benchmark could not run; the message says why."""


@dataclass
class WorkspaceResult:
    files: int
    size: int
    local_s: float
    mount_s: float
    s3fs_s: float | None
    durable_s: float
    wake_s: list[float]
    workspace_open_s: list[float]
    sessions: int

    @property
    def vs_s3fs(self) -> float | None:
        return None if self.s3fs_s is None else self.s3fs_s / self.mount_s


def _payloads(files: int, size: int) -> list[bytes]:
    return [i.to_bytes(4, "big") + os.urandom(size - 4) for i in range(files)]


def _write_read(directory: Path, payloads: list[bytes]) -> float:
    """Seconds to write every file, then read each back and compare."""
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i, data in enumerate(payloads):
        with open(directory / f"f{i:04}.bin", "wb") as handle:
            handle.write(data)
    for i, data in enumerate(payloads):
        with open(directory / f"f{i:04}.bin", "rb") as handle:
            if handle.read() != data:
                raise WorkspaceBenchError(f"{directory}/f{i:04}.bin read back different bytes")
    return time.perf_counter() - started


class _Moto:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | CREDENTIALS
        self.child = Child.spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                          "-p", str(self.port)], root / "moto.log", env)
        cpus = sorted(os.sched_getaffinity(0))
        self.cpus = set(cpus[-1:]) if len(cpus) > 1 else set(cpus)
        os.sched_setaffinity(self.child.pid, self.cpus)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or not self.child.running():
                    raise WorkspaceBenchError(f"moto did not start:\n{self.child.tail()}") from None
                time.sleep(0.1)
        import boto3

        self.s3: Any = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        self.s3.create_bucket(Bucket=BUCKET)

    def count(self, prefix: str) -> int:
        total = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            total += sum(1 for item in page.get("Contents", []) if not item["Key"].endswith("/"))
        return total


async def _rclone_files(moto: _Moto, root: Path, payloads: list[bytes]) -> tuple[float, float]:
    """(write + read seconds, seconds from the last write until all are in the bucket)."""
    mountpoint, run_dir = root / "rclone-mount", root / "rclone-run"
    run_dir.mkdir(mode=0o700)
    env = go_tool_env({"PATH": os.environ.get("PATH", os.defpath), **CREDENTIALS})
    mount = RcloneMount(S3Location(BUCKET, "rclone", moto.endpoint, "us-east-1"), mountpoint,
                        root / "rclone-cache", run_dir, env, shutil.which("fusermount3") or "fusermount")
    try:
        await mount.start()
    except WorkspaceError as exc:
        raise WorkspaceBenchError(f"the workspace mount failed: {exc}") from None
    try:
        elapsed = await asyncio.to_thread(_write_read, mountpoint / "files", payloads)
        written = time.monotonic()
        while moto.count("rclone/files/") < len(payloads):
            if time.monotonic() - written > 120:
                raise WorkspaceBenchError("the files were not all in the bucket after 120 s")
            await asyncio.sleep(0.05)
        durable = time.monotonic() - written
    finally:
        await mount.drain(time.monotonic() + 60)
        await mount.unmount(time.monotonic() + 15)
    return elapsed, durable


def _s3fs_files(moto: _Moto, root: Path, payloads: list[bytes]) -> float | None:
    binary = shutil.which("s3fs")
    if binary is None:
        return None
    mountpoint = root / "s3fs-mount"
    mountpoint.mkdir()
    password = root / "s3fs.passwd"
    password.touch(mode=0o600)
    password.write_text(f"{CREDENTIALS['AWS_ACCESS_KEY_ID']}:{CREDENTIALS['AWS_SECRET_ACCESS_KEY']}\n")
    moto.s3.put_object(Bucket=BUCKET, Key="s3fs/", Body=b"")
    child = Child.spawn("s3fs", [binary, f"{BUCKET}:/s3fs", str(mountpoint), "-f",
                                 "-o", f"url={moto.endpoint}", "-o", "use_path_request_style",
                                 "-o", f"passwd_file={password}"], root / "s3fs.log")
    try:
        deadline = time.monotonic() + 20
        while not fuse_mount_at(mountpoint):
            if time.monotonic() > deadline or not child.running():
                raise WorkspaceBenchError(f"s3fs did not mount:\n{child.tail()}")
            time.sleep(0.05)
        return _write_read(mountpoint / "files", payloads)
    finally:
        subprocess.run(["fusermount", "-u", str(mountpoint)], capture_output=True, check=False)
        child.stop()


def _container_settings(root: Path, moto: _Moto) -> Settings:
    return Settings.from_env({
        "OCEDGE_STATE_DIR": str(root / "state"), "OCEDGE_WORKSPACE": "s3",
        "OCEDGE_S3_BUCKET": BUCKET, "OCEDGE_S3_PREFIX": "wake", "OCEDGE_S3_ENDPOINT": moto.endpoint,
        "OCEDGE_LOG_LEVEL": "INFO", "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(root / "home"), "LANG": "C.UTF-8", "npm_config_offline": "true",
        **CREDENTIALS})


class _Container:
    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> tuple[float, str, str]:
        """Seconds until running, and the opencode endpoint and password."""
        backends = backends_for_tools(self.settings)
        before = asyncio.run(backends.state.get()).generation
        started = time.monotonic()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "container"], env=self.settings.child_env(),
                cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        while True:
            state = asyncio.run(backends.state.get())
            if state.status == "running" and state.generation > before:
                assert state.endpoint and state.credential
                return time.monotonic() - started, state.endpoint, state.credential
            if self.process.poll() is not None or time.monotonic() - started > 120:
                raise WorkspaceBenchError("the container did not start:\n"
                                          + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            code = self.process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise WorkspaceBenchError("the container did not stop within 90 s") from None
        if code != 0:
            raise WorkspaceBenchError(f"the container stopped with status {code}:\n"
                                      + self.log.read_text(errors="replace")[-3000:])


def _wipe(settings: Settings) -> None:
    shutil.rmtree(settings.state_dir / "vfs-cache", ignore_errors=True)
    shutil.rmtree(settings.opencode_data, ignore_errors=True)


def _wakes(moto: _Moto, root: Path, sessions: int, runs: int) -> tuple[list[float], list[float]]:
    settings = _container_settings(root, moto)
    settings.state_dir.mkdir(parents=True)
    log = root / "container.log"
    container = _Container(settings, log)
    try:
        _, endpoint, password = container.start()
        with httpx.Client(base_url=f"http://{endpoint}", auth=("opencode", password),
                          trust_env=False, timeout=30) as client:
            for n in range(sessions):
                client.post("/session", json={"title": f"bench session {n}"}).raise_for_status()
        container.stop()
        wakes = []
        for _ in range(runs):
            _wipe(settings)
            seconds, _, _ = container.start()
            wakes.append(seconds)
            container.stop()
    finally:
        container.stop()
        mountpoint = settings.workspace_path.resolve()
        if fuse_mount_at(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    opens = [float(m) for m in re.findall(r"workspace open in (\d+\.\d+) s",
                                          log.read_text(errors="replace"))][1:]
    return wakes, opens


def measure_workspace(files: int = 1000, size: int = 4096, sessions: int = 300, wakes: int = 3,
                      progress: Callable[[str], None] = print) -> WorkspaceResult:
    root = Path(tempfile.mkdtemp(prefix="ocedge-bench-ws-"))
    moto: _Moto | None = None
    try:
        moto = _Moto(root)
        payloads = _payloads(files, size)
        progress(f"workspace: {files} x {size // 1024} KiB files on local disk ...")
        local_s = _write_read(root / "local", payloads)
        progress("workspace: ... on the rclone mount, then until all are in the bucket ...")
        mount_s, durable_s = asyncio.run(_rclone_files(moto, root, payloads))
        progress("workspace: ... on s3fs (slow) ...")
        s3fs_s = _s3fs_files(moto, root, payloads)
        progress(f"workspace: wake with restore ({sessions} sessions, {wakes} wakes) ...")
        wake_s, open_s = _wakes(moto, root, sessions, wakes)
        return WorkspaceResult(files, size, local_s, mount_s, s3fs_s, durable_s, wake_s, open_s,
                               sessions)
    finally:
        if moto is not None:
            moto.child.stop()
        shutil.rmtree(root, ignore_errors=True)


def workspace_checks(result: WorkspaceResult) -> list[Check]:
    out = []
    if result.vs_s3fs is not None:
        out.append(Check("s3fs time / mount time (small files)", f"{result.vs_s3fs:.1f}x",
                         f"≥ {MIN_VS_S3FS:.0f}x", result.vs_s3fs >= MIN_VS_S3FS))
    out.append(Check(f"{result.files} files durable in the bucket", f"{result.durable_s:.1f} s",
                     f"≤ {MAX_DURABLE_S:.0f} s", result.durable_s <= MAX_DURABLE_S))
    wake = statistics.median(result.wake_s)
    out.append(Check("wake with restore (median)", f"{wake:.2f} s", f"≤ {MAX_WAKE_S:.1f} s",
                     wake <= MAX_WAKE_S))
    return out


def render_workspace(result: WorkspaceResult, results: list[Check]) -> str:
    per_file = 1000 / result.files
    lines = [f"S3 workspace (moto on a CPU of its own, load avg {os.getloadavg()[0]:.2f}): "
             f"{result.files} x {result.size // 1024} KiB files, written then read back"]
    rows = [("local disk", result.local_s), ("rclone mount", result.mount_s)]
    if result.s3fs_s is not None:
        rows.append(("s3fs", result.s3fs_s))
    for name, seconds in rows:
        ratio = seconds / result.local_s
        lines.append(f"  {name:<14}{seconds:8.2f} s  {seconds * per_file:8.2f} ms/file"
                     f"  {ratio:8.1f}x local")
    if result.s3fs_s is None:
        lines.append("  s3fs          not installed (apt-get install s3fs): not compared")
    lines.append(f"  durable in the bucket after the last write: {result.durable_s:.2f} s")
    lines.append(f"  wake with restore ({result.sessions} sessions, wiped machine): "
                 + ", ".join(f"{s:.2f}" for s in result.wake_s) + " s; of which the workspace "
                 "(mount + config + database): "
                 + ", ".join(f"{s:.2f}" for s in result.workspace_open_s) + " s")
    lines.append("")
    lines.append(f"{'Target':<48}{'measured':>12}{'target':>14}  result")
    for check in results:
        lines.append(f"  {check.label:<46}{check.measured:>12}{check.target:>14}  "
                     f"{'PASS' if check.ok else 'MISS'}")
    return "\n".join(lines)


if __name__ == "__main__":
    measured = measure_workspace(progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(render_workspace(measured, workspace_checks(measured)))
