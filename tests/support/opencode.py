"""Start the real opencode server for tests, isolated from the developer's machine.

Each server gets its own HOME and XDG dirs in a fresh temp dir (removed on stop), runs in
its own process group (so `stop()` also ends anything it spawned: PTY shells, LSPs, npm),
and never reaches the internet for models: pair it with `tests.support.fake_model`.

    with FakeModelServer() as fm:
        env = {"OPENCODE_CONFIG_CONTENT": json.dumps(opencode_config(fm.base_url))}
        with start_opencode(workdir, env, password="pw") as oc:
            httpx.get(f"{oc.url}/global/health", auth=oc.auth)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from infra.net import free_port
from infra.settings import find_opencode

PROJECT_ROOT = Path(__file__).resolve().parents[2]
USERNAME = "opencode"  # opencode's fixed Basic-auth user unless OPENCODE_SERVER_USERNAME is set


def find_opencode_bin() -> str:
    """The opencode the project pins (node_modules), as the container would find it."""
    return find_opencode()


def isolated_env(root: Path, env_extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an opencode process whose every file lives under `root`.

    Inherited OPENCODE_* variables are dropped so the developer's own settings cannot leak in.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCODE_")}
    dirs = {
        "HOME": root / "home",
        "XDG_DATA_HOME": root / "data",
        "XDG_CONFIG_HOME": root / "config",
        "XDG_CACHE_HOME": root / "cache",
        "XDG_STATE_HOME": root / "state",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env.update({name: str(path) for name, path in dirs.items()})
    env.update(
        {
            # No models.dev catalogue fetch and no self-update: both need the internet.
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            # At startup opencode npm-installs @opencode-ai/plugin (~60 MB) into
            # $XDG_CONFIG_HOME/opencode in the background, with npm config read from the env.
            # Offline mode makes that fail at once (a logged warning) instead of downloading.
            "npm_config_offline": "true",
        }
    )
    env.update(env_extra or {})
    return env


def wait_healthy(
    url: str,
    auth: httpx.BasicAuth | None,
    timeout: float = 60.0,
    process: subprocess.Popen[bytes] | None = None,
) -> float:
    """Poll GET /global/health until it answers 200; returns the seconds waited.

    opencode sometimes never answers the very first request that arrives as its port opens,
    so each try has a short timeout and a fresh connection.
    """
    start = time.monotonic()
    last_error = "no attempt"
    while time.monotonic() - start < timeout:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"opencode exited with {process.returncode} before becoming healthy")
        try:
            response = httpx.get(f"{url}/global/health", auth=auth, timeout=1.0)
            if response.status_code == 200 and response.json().get("healthy") is True:
                return time.monotonic() - start
            last_error = f"HTTP {response.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            last_error = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"opencode at {url} not healthy after {timeout:.0f}s: {last_error}")


class OpencodeHandle:
    """A running `opencode web|serve`; use as a context manager or call `stop()`."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        url: str,
        password: str | None,
        root: Path,
        env: dict[str, str],
        log_path: Path,
        keep_root: bool,
    ) -> None:
        self.process = process
        self.url = url
        self.password = password
        self.root = root
        self.env = env
        self.log_path = log_path
        self.startup_seconds = 0.0
        self._keep_root = keep_root

    @property
    def auth(self) -> httpx.BasicAuth | None:
        return httpx.BasicAuth(USERNAME, self.password) if self.password else None

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=self.auth, timeout=timeout)

    def log(self) -> str:
        """opencode's stdout+stderr so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def run(
        self,
        *message: str,
        cwd: Path | None = None,
        model: str | None = "fake/fake-model",
        extra_args: Sequence[str] = (),
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """`opencode run --attach <this server> ... MESSAGE` with the server's isolated env.

        Its stdout is unreliable: with --attach it can exit before printing the reply (see
        tests/e2e/test_fake_model.py); read the reply back through the HTTP API instead.
        """
        args = [find_opencode_bin(), "run", "--attach", self.url]
        if self.password:
            args += ["--password", self.password]
        if model:
            args += ["--model", model]
        args += [*extra_args, *message]
        return run_cli(args, env=self.env, cwd=cwd, timeout=timeout)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole process group, SIGKILL it after `grace` seconds, remove the temp dir."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=grace)
        # Children (shells of PTYs, npm) may outlive the leader: sweep the group regardless.
        _signal_group(self.process.pid, signal.SIGKILL)
        if not self._keep_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> OpencodeHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run an opencode CLI command to completion in its own process group.

    stdin is /dev/null: `opencode run` reads stdin to EOF when it is not a TTY. On timeout the
    whole group is killed (a bare subprocess.run timeout would leave its children running).
    """
    process = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        _signal_group(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    finally:
        _signal_group(process.pid, signal.SIGKILL)  # stragglers it left behind
    return subprocess.CompletedProcess(list(args), process.returncode, stdout, stderr)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start_opencode(
    workdir: Path,
    env_extra: Mapping[str, str] | None = None,
    password: str | None = None,
    *,
    command: str = "web",
    port: int | None = None,
    root: Path | None = None,
    timeout: float = 60.0,
) -> OpencodeHandle:
    """Start `opencode <command> --port N --hostname 127.0.0.1` in `workdir`; wait until healthy.

    `env_extra` usually carries OPENCODE_CONFIG_CONTENT; `password` sets OPENCODE_SERVER_PASSWORD
    (Basic auth, user "opencode"). `root` holds HOME/XDG dirs and the log: a temp dir removed on
    stop unless given.
    """
    keep_root = root is not None
    root = root or Path(tempfile.mkdtemp(prefix="ocedge-opencode-"))
    env = isolated_env(root, env_extra)
    if password:
        env["OPENCODE_SERVER_PASSWORD"] = password
    port = port or free_port()
    log_path = root / "opencode.log"
    args = [find_opencode_bin(), command, "--port", str(port), "--hostname", "127.0.0.1"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = OpencodeHandle(process, f"http://127.0.0.1:{port}", password, root, env, log_path, keep_root)
    try:
        handle.startup_seconds = wait_healthy(handle.url, handle.auth, timeout, process)
    except Exception as exc:
        output = handle.log()
        handle.stop()
        raise RuntimeError(
            f"opencode did not start: {exc}\n--- opencode output ---\n{output[-4000:]}"
        ) from exc
    except BaseException:  # Ctrl-C while waiting: still leave no process behind.
        handle.stop()
        raise
    return handle
