"""`make bench` cannot silently break again: the benchmark runs end to end in a
small configuration (every part, tiny counts), prints every table, and leaves no
process behind. Its figures are not judged here: targets belong to `make bench`."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import PROJECT_ROOT

pytestmark = pytest.mark.opencode

TABLES = [
    "GET /global/health (median of rounds)",
    "SSE /global/event (20 events)",
    "20 event streams through the edge",
    "edge CPU per proxied request",
    "import edge.app (fresh interpreter",
    "Wake (sleeping → first proxied 200)",
    "Lambda entry modules",
    "Edge → container link",
    "S3 workspace",
]
TARGET_ROWS = [
    "edge ÷ nginx req/s (16 conns)", "edge ÷ nginx req/s (1 conn)",
    "edge added p50 - nginx added p50 (1 conn)", "SSE edge added p99",
    "edge RSS, 20 streams open", "streams dropped of 20", "import edge.app (CPU)",
    "wake with restore (median)",
]


def _carrying(marker: bytes) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:150]!r}")
        except OSError:
            continue
    return found


def test_the_benchmark_runs_every_part_prints_every_table_and_leaves_nothing(
        opencode_bin: str) -> None:
    marker = f"OPENCODE_BENCH_TEST={secrets.token_hex(8)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCEDGE_")}
    env[marker.split("=")[0]] = marker.split("=")[1]
    done = subprocess.run([sys.executable, "-m", "bench", "--small"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + "\n--- stderr ---\n" + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "Traceback" not in done.stderr, output[-6000:]
    for table in TABLES:
        assert table in done.stdout, f"no {table!r} table:\n{output[-6000:]}"
    for row in TARGET_ROWS:
        assert row in done.stdout, f"no {row!r} row:\n{output[-6000:]}"
    left = _carrying(marker.encode())
    assert not left, "the benchmark left processes running:\n" + "\n".join(left)
