"""protocols/addresses.py: one way to show a peer's address, for every protocol."""

from __future__ import annotations

from ferryman.protocols.addresses import plain_address, unmapped, v4_mapped


def test_an_ipv4_mapped_address_is_shown_as_ipv4() -> None:
    assert unmapped("::ffff:10.0.0.7") == "10.0.0.7"
    assert plain_address(("::ffff:127.0.0.1", 5683, 0, 0)) == ("127.0.0.1", 5683)


def test_other_addresses_are_left_as_they_are() -> None:
    assert unmapped("::1") == "::1"
    assert unmapped("::ffff:0:0") == "::ffff:0:0"  # not a dotted IPv4 tail
    assert plain_address(("192.0.2.1", "80")) == ("192.0.2.1", 80)


def test_an_ipv4_host_is_mapped_for_an_ipv6_socket() -> None:
    assert v4_mapped("127.0.0.1") == "::ffff:127.0.0.1"
    assert v4_mapped("::1") == "::1"
