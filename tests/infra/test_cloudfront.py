"""The terminal tickets the edge signs and the terminal listener opens: bound to the
origin secret, the terminal, the location asked for and an expiry."""

from __future__ import annotations

import pytest

from infra.cloudfront import TICKET_LIFE, location_of, open_ticket, sign_ticket

pytestmark = pytest.mark.unit

SECRET = "a-secret-of-forty-three-characters-0123456"
WHERE = [("directory", "/workspace")]
NOW = 1_800_000_000.0


def test_a_signed_ticket_opens_to_opencodes_own_for_its_terminal_and_location() -> None:
    signed = sign_ticket(SECRET, "uuid-1", "pty_a", WHERE, NOW)
    assert signed.startswith("uuid-1.")
    assert open_ticket(SECRET, signed, "pty_a", WHERE, NOW + 1) == "uuid-1"
    assert open_ticket(SECRET, signed, "pty_a", WHERE, NOW + TICKET_LIFE) == "uuid-1"


def test_anything_else_does_not_open_it() -> None:
    signed = sign_ticket(SECRET, "uuid-1", "pty_a", WHERE, NOW)
    other_secret = "another-secret-of-forty-three-characters-01"
    assert open_ticket(other_secret, signed, "pty_a", WHERE, NOW) is None
    assert open_ticket(SECRET, signed, "pty_b", WHERE, NOW) is None
    for location in ([("directory", "/tmp")], [],
                     [("directory", "/workspace"), ("workspace", "wrk_1")]):
        assert open_ticket(SECRET, signed, "pty_a", location, NOW) is None
    assert open_ticket(SECRET, signed, "pty_a", WHERE, NOW + TICKET_LIFE + 1) is None


@pytest.mark.parametrize("tampered", [
    "uuid-2.{e}.{m}", "uuid-1.{later}.{m}", "uuid-1.{e}.{m}x", "uuid-1.{e}", "uuid-1",
    "", "..", "uuid-1.-5.{m}", "uuid-1.{e}.{m}.x", "uuid-1. {e}.{m}",
])
def test_a_tampered_ticket_does_not_open(tampered: str) -> None:
    signed = sign_ticket(SECRET, "uuid-1", "pty_a", WHERE, NOW)
    _, expires, mac = signed.split(".")
    forged = tampered.format(e=expires, m=mac, later=int(expires) + 3600)
    assert open_ticket(SECRET, forged, "pty_a", WHERE, NOW) is None


def test_the_location_is_the_directory_and_workspace_parameters_in_order() -> None:
    query = [("ticket", "t"), ("workspace", "w"), ("cursor", "1"), ("directory", "/d"),
             ("location[directory]", "/x")]
    assert location_of(query) == [("workspace", "w"), ("directory", "/d")]
