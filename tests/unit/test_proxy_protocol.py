"""The PROXY protocol reader and writer (ferryman/protocols/proxy_protocol.py): v1 and v2 round trips,
LOCAL / UNKNOWN, garbage, truncation, bounds, deadlines, and that reading never takes a byte past the
header (a TLS ClientHello or an MQTT CONNECT follows it on the same socket)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferryman.config import SettingsError
from ferryman.protocols.proxy_protocol import (
    MAX_V1,
    MAX_V2_BODY,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    TrustedProxies,
    encode_v1,
    encode_v2,
    parse_v1,
    parse_v2,
    read_header,
    real_address,
)
from ferryman.wiring import load_settings

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)  # type: ignore[union-attr]
ports = st.integers(0, 65535)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _read(data: bytes, timeout: float = 2.0, close: bool = True) -> tuple[ProxyHeader, bytes]:
    """``data`` sent into a socket pair (then the sender closed), the header read, and what was left."""
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        if close:
            a.shutdown(socket.SHUT_WR)
        header = read_header(b, timeout)
        b.settimeout(1.0)
        rest = b""
        while close:
            chunk = b.recv(65536)
            if not chunk:
                break
            rest += chunk
        return header, rest
    finally:
        a.close()
        b.close()


# -- v1 ---------------------------------------------------------------------------------------------------
def test_v1_tcp4() -> None:
    header, rest = _read(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 1884\r\nCONNECT")
    assert header == ProxyHeader(1, ("192.0.2.1", 56324), ("198.51.100.2", 1884))
    assert rest == b"CONNECT"


def test_v1_tcp6_mapped_is_unmapped() -> None:
    header, _ = _read(b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n")
    assert header.source == ("192.0.2.1", 1)
    assert header.destination == ("::1", 2)


def test_v1_unknown_is_no_address() -> None:
    assert _read(b"PROXY UNKNOWN\r\n")[0] == ProxyHeader(1)
    assert _read(b"PROXY UNKNOWN ffff:: ffff:: 1 2\r\n")[0] == ProxyHeader(1)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF only
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # a field missing
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",  # IPv6 in TCP4
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",  # IPv4 in TCP6
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",  # port out of range
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # leading zero
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # not ASCII
        b"PROXY " + b"x" * MAX_V1 + b"\r\n",  # too long
    ],
)
def test_v1_bad_lines(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v1(line)
    with pytest.raises(ProxyHeaderError):
        _read(line)


def test_v1_longest_allowed_line() -> None:
    host = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {host} {host} 65535 65535\r\n".encode()
    assert _read(line + b"more")[0].source == (host, 65535)
    unknown = b"PROXY UNKNOWN " + b"x" * (MAX_V1 - 16) + b"\r\n"  # UNKNOWN may carry anything up to 107
    assert len(unknown) == MAX_V1
    assert _read(unknown + b"more") == (ProxyHeader(1), b"more")
    with pytest.raises(ProxyHeaderError):
        _read(b"PROXY UNKNOWN " + b"x" * (MAX_V1 - 15) + b"\r\n")


def test_v1_line_without_end_is_refused_after_107_bytes() -> None:
    with pytest.raises(ProxyHeaderError, match="longer than"):
        _read(b"PROXY TCP4 " + b"1" * 200, close=False)


def test_v1_arriving_a_byte_at_a_time_and_crlf_split(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    data = b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000\r\nX"

    def trickle() -> None:
        for i in range(len(data)):
            a.send(data[i : i + 1])
            threading.Event().wait(0.001)

    thread = threading.Thread(target=trickle)
    thread.start()
    header = read_header(b, 5.0)
    thread.join()
    assert header.source == ("10.0.0.1", 1000)
    assert b.recv(10) == b"X"


# -- v2 ---------------------------------------------------------------------------------------------------
def test_v2_inet_with_tlvs_skipped() -> None:
    body = socket.inet_aton("192.0.2.1") + socket.inet_aton("198.51.100.2") + struct.pack("!HH", 4000, 1884)
    tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00"  # ALPN, NOOP
    data = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body + tlvs)) + body + tlvs
    header, rest = _read(data + b"\x16\x03\x01")  # a TLS ClientHello follows
    assert header == ProxyHeader(2, ("192.0.2.1", 4000), ("198.51.100.2", 1884))
    assert rest == b"\x16\x03\x01"


def test_v2_local_is_no_address() -> None:
    header, rest = _read(encode_v2(None, None) + b"\x10")
    assert header == ProxyHeader(2)
    assert rest == b"\x10"


def test_v2_local_with_addresses_still_local() -> None:
    data = bytearray(encode_v2(("1.2.3.4", 1), ("5.6.7.8", 2)))
    data[12] = 0x20
    assert _read(bytes(data))[0] == ProxyHeader(2)


def test_v2_unix_and_unspec_carry_no_address() -> None:
    for family in (0x00, 0x31, 0x12):
        data = V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", 216) + bytes(216)
        assert _read(data)[0] == ProxyHeader(2)


@pytest.mark.parametrize(
    "data",
    [
        V2_SIGNATURE[:-1] + b"X" + b"\x21\x11\x00\x0c" + bytes(12),  # signature off by one byte
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 header
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
        V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12),  # family 4
        V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8),  # address block too short for IPv4
        V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),  # too short for IPv6
        V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_BODY + 1),  # absurd length
        V2_SIGNATURE + b"\x21\x11\xff\xff",
    ],
)
def test_v2_bad_headers(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        _read(data)


def test_v2_absurd_length_refused_before_reading_it(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(V2_SIGNATURE + b"\x21\x11\xff\xff")  # nothing after: a reader waiting for 65535 would time out
    with pytest.raises(ProxyHeaderError, match="at most"):
        read_header(b, 5.0)


# -- no header, truncation, deadline ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "data", [b"", b"\x10\x0c\x00\x04MQTT", b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00"]
)
def test_missing_header(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        _read(data)


def test_silence_until_the_deadline(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(b"PROXY TCP4 1.2.3.4")
    b.settimeout(7.0)
    with pytest.raises(ProxyHeaderError, match="in time"):
        read_header(b, 0.05)
    assert b.gettimeout() == 7.0  # the socket's own timeout is back


# -- round trips and fuzzing ------------------------------------------------------------------------------
@FUZZ
@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports)
def test_round_trip(hosts: tuple[str, str], sport: int, dport: int) -> None:
    src, dst = (hosts[0], sport), (hosts[1], dport)
    assert _read(encode_v1(src, dst) + b"tail") == (ProxyHeader(1, src, dst), b"tail")
    assert _read(encode_v2(src, dst) + b"tail") == (ProxyHeader(2, src, dst), b"tail")


@FUZZ
@given(ipv4, ipv6, ports, ports)
def test_mixed_families_go_out_as_ipv6_and_come_back_unmapped(
    v4: str, v6: str, sport: int, dport: int
) -> None:
    for version, encode in ((1, encode_v1), (2, encode_v2)):
        header = _read(encode((v4, sport), (v6, dport)))[0]
        assert header == ProxyHeader(version, (v4, sport), (v6, dport))


@FUZZ
@given(st.binary(max_size=300))
def test_garbage_is_refused_or_parsed_never_anything_else(data: bytes) -> None:
    try:
        header, rest = _read(data)
    except ProxyHeaderError:
        return
    assert header.version in (1, 2)
    assert data.endswith(rest)


@FUZZ
@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, st.data())
def test_truncated_headers_are_refused(
    hosts: tuple[str, str], sport: int, dport: int, data: st.DataObject
) -> None:
    for encode in (encode_v1, encode_v2):
        whole = encode((hosts[0], sport), (hosts[1], dport))
        cut = data.draw(st.integers(0, len(whole) - 1))
        with pytest.raises(ProxyHeaderError):
            _read(whole[:cut])


@FUZZ
@given(st.binary(min_size=1, max_size=200), st.data())
def test_v2_with_garbage_body(body: bytes, data: st.DataObject) -> None:
    command = data.draw(st.sampled_from([0x20, 0x21, 0x22, 0x11]))
    family = data.draw(st.integers(0, 255))
    head = V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body))
    try:
        header = parse_v2(head, body)
    except ProxyHeaderError:
        return
    assert header.version == 2


# -- trust ------------------------------------------------------------------------------------------------
def test_trusted_proxies() -> None:
    trusted = TrustedProxies(["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"])
    assert "127.0.0.1" in trusted
    assert "::ffff:10.1.2.3" in trusted
    assert "fd12::1" in trusted
    assert "127.0.0.2" not in trusted
    assert "::1" not in trusted
    assert "not an address" not in trusted


def test_real_address(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    trusted = TrustedProxies(["127.0.0.0/8"])
    a.sendall(encode_v1(("203.0.113.9", 5555), ("127.0.0.1", 1884)))
    assert real_address(b, ("127.0.0.1", 40000), trusted, 2.0) == ("203.0.113.9", 5555)
    a.sendall(encode_v2(None, None))  # a health check: the balancer's own address
    assert real_address(b, ("::ffff:127.0.0.1", 40001), trusted, 2.0) == ("127.0.0.1", 40001)
    a.sendall(encode_v2(("203.0.113.9", 5555), ("127.0.0.1", 1884)))
    with pytest.raises(ProxyHeaderError, match="trusted_proxies"):
        real_address(b, ("192.0.2.1", 40002), trusted, 2.0)


# -- settings ---------------------------------------------------------------------------------------------
def _issues(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    path = tmp_path / "ferryman.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings(path, env={})
    return [(issue.path, issue.message) for issue in caught.value.errors]


def test_settings_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ferryman.toml"
    path.write_text(
        '[[listener]]\nname = "lb"\nprotocol = "mqtt"\naddress = "127.0.0.1:1884"\n'
        'target = "tcp://127.0.0.1:1883"\nproxy_protocol = true\n'
        'trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "fd00::/8"]\ntarget_proxy_protocol = 2\n',
        encoding="utf-8",
    )
    listener = load_settings(path, env={}).listeners[0]
    assert listener.proxy_protocol is True
    assert listener.trusted_proxies == ("10.0.0.0/8", "127.0.0.1", "fd00::/8")
    assert listener.target_proxy_protocol == 2


def test_settings_errors_all_at_once(tmp_path: Path) -> None:
    found = _issues(
        tmp_path,
        '[[listener]]\nname = "a"\nprotocol = "mqtt"\naddress = "127.0.0.1:1884"\n'
        'target = "tcp://127.0.0.1:1883"\nproxy_protocol = true\n'
        '[[listener]]\nname = "b"\nprotocol = "mqtt"\naddress = "127.0.0.1:1885"\n'
        'target = "tcp://127.0.0.1:1883"\nproxy_protocol = true\ntrusted_proxies = ["10.0.0.0/33", "x"]\n'
        "target_proxy_protocol = 3\n"
        '[[listener]]\nname = "c"\nprotocol = "coap"\naddress = "127.0.0.1:5683"\n'
        'target = "coap://127.0.0.1:5684"\nproxy_protocol = true\ntrusted_proxies = ["10.0.0.0/8"]\n',
    )
    where = [path for path, _ in found]
    assert "listener[0].trusted_proxies" in where  # required with proxy_protocol = true
    assert "listener[1].trusted_proxies[0]" in where
    assert "listener[1].trusted_proxies[1]" in where
    assert "listener[1].target_proxy_protocol" in where
    assert "listener[2].proxy_protocol" in where  # a coap listener takes no PROXY header
    assert "listener[2].trusted_proxies" in where


def test_target_proxy_protocol_only_where_it_is_sent(tmp_path: Path) -> None:
    found = _issues(
        tmp_path,
        '[[listener]]\nname = "ws"\nprotocol = "mqtt-ws"\naddress = "127.0.0.1:1884"\n'
        'target = "ws://127.0.0.1:9001"\ntarget_proxy_protocol = 1\n'
        '[[listener]]\nname = "web"\nprotocol = "http"\naddress = "127.0.0.1:8080"\n'
        'target = "http://127.0.0.1:8081"\ntarget_proxy_protocol = 2\n',
    )
    where = [path for path, _ in found]
    assert "listener[0].target_proxy_protocol" in where  # a WebSocket target gets none
    assert "listener[1].target_proxy_protocol" in where  # http sends none
