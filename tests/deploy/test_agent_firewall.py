"""The host's user data loads the agent's firewall rule (deploy/host/agent-firewall.nft)
at every boot, before anything can start the container, and fails the boot if it
cannot. The rule itself is tried for real in tests/container/test_isolation.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.deploy import HOST, boot, run, shell_part, stub, user_data

__all__ = ["user_data"]  # fixture

pytestmark = pytest.mark.unit

RULE = HOST / "agent-firewall.nft"


def test_the_rule_rejects_only_the_agents_uid_and_only_the_metadata_service() -> None:
    rules = [line.strip() for line in RULE.read_text().splitlines()
             if line.strip().startswith("meta skuid")]
    assert rules == ["meta skuid 10002 ip daddr 169.254.169.254 reject",
                     "meta skuid 10002 ip6 daddr fd00:ec2::254 reject"]
    # Reloading replaces the table (at every boot, and on a second run of the script).
    assert re.search(r"^table inet ocedge_agent\ndelete table inet ocedge_agent\n",
                     RULE.read_text(), re.MULTILINE)


def test_the_rendered_user_data_loads_the_rule_before_the_container_can_start(
        user_data: str) -> None:
    script = shell_part(user_data)
    assert RULE.read_text().rstrip("\n") in script  # the same rule text, verbatim
    load = script.index('nft -f "$root/etc/ocedge/agent-firewall.nft"')
    assert load < script.index("systemctl start --no-block ocedge.service")
    assert load < script.index('cat > "$root/etc/systemd/system/ocedge.service"')


def test_a_boot_installs_and_loads_the_rule_first(tmp_path: Path, user_data: str) -> None:
    root, calls = boot(tmp_path, user_data)
    assert (root / "etc/ocedge/agent-firewall.nft").read_text() == RULE.read_text()
    loaded = calls.index(f"nft -f {root}/etc/ocedge/agent-firewall.nft")
    assert loaded < calls.index("systemctl start --no-block ocedge.service")


def test_a_boot_that_cannot_load_the_rule_never_starts_the_container(
        tmp_path: Path, user_data: str) -> None:
    root, bin_dir, log = tmp_path / "root", tmp_path / "bin", tmp_path / "calls.log"
    root.mkdir()
    bin_dir.mkdir()
    log.touch()
    for name in ("dnf", "systemctl", "docker", "aws", "curl"):
        stub(bin_dir, name, log)
    stub(bin_dir, "nft", log, "exit 1\n")  # e.g. a kernel without nf_tables
    script = tmp_path / "user-data.sh"
    script.write_text(shell_part(user_data))
    result = run(["bash", str(script)], env={"PATH": f"{bin_dir}:/usr/bin:/bin",
                                            "DESTDIR": str(root), "HOME": str(tmp_path)})
    assert result.returncode != 0
    assert not [c for c in log.read_text().splitlines() if c.startswith("systemctl start")]
