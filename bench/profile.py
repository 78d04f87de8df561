"""Where the edge's CPU goes under load: a py-spy sample of the running edge,
summed by package and by function (self time). Printed when a target is missed,
so a MISS always comes with the profile that explains it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?):\d+\)$")
_SITE = re.compile(r".*/(?:site|dist)-packages/")
_STDLIB = re.compile(r".*/lib/python3\.\d+/")
_OWN = frozenset({"edge", "infra", "container"})
# What a frame's self time means when the frame calls into C.
_NOTES = {
    "Runner.run": "the event loop itself: uvloop's C code (epoll, socket reads, callbacks)",
    "_HeadWithBody.write": "the response's send(2) to the client, loopback delivery included",
    "RequestResponseCycle.send": "uvicorn writing to the client socket",
    "Connection.begin": "the request's send(2) to the container",
}


@dataclass(frozen=True)
class Profile:
    samples: int
    by_package: list[tuple[str, float]]  # share of samples, self time
    by_function: list[tuple[str, float]]


def _package(path: str) -> str:
    """py-spy names files relative to their sys.path entry: the first part is the
    package (the project's own are shown by module)."""
    path = _STDLIB.sub("", _SITE.sub("", path))
    parts = path.split("/")
    if parts[0] in _OWN and len(parts) > 1:
        return "/".join(parts[:2])
    return parts[0].removesuffix(".py")


def summarise(raw: str, top: int = 12) -> Profile:
    """py-spy's ``--format raw`` (collapsed stacks) to self-time shares."""
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("Thread._bootstrap "):
            # Another thread (the executor's SQLite workers): it measured idle in
            # /proc, but py-spy can take a thread waiting on a lock for a busy one.
            continue
        n = int(count)
        total += n
        leaf = frames[-1]
        match = _FRAME.match(leaf)
        func, path = (match["func"], match["file"]) if match else (leaf, leaf)
        packages[_package(path)] += n
        functions[f"{func} ({_package(path)})"] += n
    share = (lambda n: n / total) if total else (lambda n: 0.0)
    return Profile(total, [(k, share(v)) for k, v in packages.most_common(top)],
                   [(k, share(v)) for k, v in functions.most_common(top)])


def profile_during(pid: int, seconds: float, load: Callable[[], object]) -> Profile | str:
    """Sample ``pid`` while ``load()`` runs; a sentence instead when py-spy cannot."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return "py-spy is not installed (pip install -e '.[dev]'): no profile"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.txt"
        spy_process = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", f"{max(1, round(seconds))}",
             "--rate", "500", "--format", "raw", "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            load()
        finally:
            try:
                _, err = spy_process.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                spy_process.kill()
                _, err = spy_process.communicate()
        if not out.exists():
            return f"py-spy could not sample the edge: {err.decode(errors='replace').strip()[-300:]}"
        return summarise(out.read_text())


def render_profile(title: str, profile: Profile | str) -> str:
    if isinstance(profile, str):
        return f"{title}: {profile}"
    lines = [f"{title} ({profile.samples} samples, self time)"]
    lines.append("  by package:  " + ", ".join(f"{name} {share:.0%}"
                                               for name, share in profile.by_package))
    for name, share in profile.by_function:
        note = _NOTES.get(name.split(" (")[0])
        lines.append(f"  {share:6.1%}  {name}" + (f"  — {note}" if note else ""))
    return "\n".join(lines)
