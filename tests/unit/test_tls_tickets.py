"""TLS session tickets (protocols/tls/tickets.py and the TlsTerminator): ticket keys set through OpenSSL,
their derivation and rotation, and resumption over real handshakes in this process (gevent, 127.0.0.1,
the EC development PKI)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

import gevent
import pytest

from ferryman.config import TlsSettings
from ferryman.protocols.tls import tickets
from ferryman.protocols.tls.server import PeerCertificate, TlsRefused, TlsTerminator, peer_certificate
from ferryman_devtools.pki import write_dev_pki

SECRET = b"s" * 32


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ec-pki")
    write_dev_pki(directory, key_type="ec")
    return directory


def settings(pki: Path, **changes: Any) -> TlsSettings:
    return TlsSettings(cert_file=str(pki / "server.crt"), key_file=str(pki / "server.key"), **changes)


def client(pki: Path, cert: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    return ctx


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def connect(
    term: TlsTerminator, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None, on_server: Any = None
) -> tuple[bool, ssl.SSLSession | None]:
    """One connection through ``term.accept``: (resumed?, the client's session, its ticket included)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> PeerCertificate:
        sock, _ = listener.accept()
        tls, peer = term.accept(sock, 5.0)
        try:
            if on_server is not None:
                on_server(tls)
            tls.sendall(b"ok")
            tls.recv(1)
        finally:
            tls.close()
        return peer

    server = gevent.spawn(serve)
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            assert tls.recv(2) == b"ok"  # the ticket is read before the data it precedes
            result = (tls.session_reused, tls.session)
        server.get(timeout=5)
    finally:
        listener.close()
    return result


def test_keys_are_set_and_read_back_through_openssl(pki: Path) -> None:
    assert tickets.ticket_keys_settable()  # CPython with OpenSSL 3: the path every deployment takes
    term = TlsTerminator(settings(pki))
    keys = os.urandom(tickets.TICKET_KEYS_SIZE)
    assert tickets.set_ticket_keys(term.context, keys)
    assert tickets.get_ticket_keys(term.context) == keys
    assert not tickets.set_ticket_keys(term.context, b"short")
    assert tickets.get_ticket_keys(term.context) == keys


def test_keys_follow_the_secret_the_scope_and_the_period() -> None:
    keys = tickets.TicketKeys(b"scope", 3600.0, SECRET)
    first = keys.keys(7)
    assert len(first) == tickets.TICKET_KEYS_SIZE and keys.keys(7) == first
    assert tickets.TicketKeys(b"scope", 60.0, SECRET).keys(7) == first  # the period's number decides
    assert keys.keys(8) != first
    assert tickets.TicketKeys(b"other scope", 3600.0, SECRET).keys(7) != first
    assert tickets.TicketKeys(b"scope", 3600.0, b"t" * 32).keys(7) != first
    assert keys.period(7 * 3600.0) == 7 and keys.period(8 * 3600.0 - 0.001) == 7
    with pytest.raises(ValueError, match="32 bytes"):
        tickets.set_ticket_secret(b"too short")


def test_a_listener_resumes_with_one_ticket_per_handshake(pki: Path) -> None:
    term = TlsTerminator(settings(pki))
    assert term.context.num_tickets == tickets.TICKETS_PER_HANDSHAKE == 1
    ctx = client(pki)
    reused, session = connect(term, ctx)
    assert not reused and session is not None and session.has_ticket
    reused, session = connect(term, ctx, session)
    assert reused
    reused, _ = connect(term, ctx, session)  # the ticket of a resumed connection works too
    assert reused


def test_session_tickets_false_resumes_nothing(pki: Path) -> None:
    term = TlsTerminator(settings(pki, session_tickets=False))
    assert term.tickets is None and term.context.num_tickets == 0
    assert term.context.options & ssl.OP_NO_TICKET
    ctx = client(pki)
    _, session = connect(term, ctx)
    assert session is not None and not session.has_ticket
    assert connect(term, ctx, session)[0] is False
    # TLS 1.2: no ticket, and no session-id cache to resume from either
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    _, session = connect(term, ctx)
    assert connect(term, ctx, session)[0] is False


def test_processes_with_one_secret_accept_each_others_tickets(pki: Path) -> None:
    """The workers of one supervisor share the secret: a device may land on any of them."""
    clock = Clock()
    one = TlsTerminator(settings(pki), ticket_secret=SECRET, clock=clock)
    two = TlsTerminator(settings(pki), ticket_secret=SECRET, clock=clock)
    stranger = TlsTerminator(settings(pki), ticket_secret=b"x" * 32, clock=clock)
    ctx = client(pki)
    _, session = connect(one, ctx)
    assert connect(two, ctx, session)[0] is True
    assert connect(stranger, ctx, session)[0] is False


def test_a_ticket_is_good_only_for_the_same_tls_settings(pki: Path) -> None:
    ctx = client(pki)
    a = TlsTerminator(settings(pki), ticket_secret=SECRET)
    b = TlsTerminator(settings(pki, verify_depth=1), ticket_secret=SECRET)
    assert tickets.scope_of(a.settings) != tickets.scope_of(b.settings)
    _, session = connect(a, ctx)
    assert connect(b, ctx, session)[0] is False


def test_the_scope_follows_the_files_contents(pki: Path, tmp_path: Path) -> None:
    """A replica restarted with the same secret but a CA removed from client_ca_file takes no ticket made
    before."""
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(pki / name, tmp_path / name)
    tls = settings(tmp_path, client_ca_file=str(tmp_path / "ca.crt"))
    before = tickets.scope_of(tls)
    assert tickets.scope_of(tls) == before
    (tmp_path / "ca.crt").write_bytes((pki / "unknown-ca.crt").read_bytes())
    assert tickets.scope_of(tls) != before


def test_rotation_ends_the_previous_periods_tickets(pki: Path) -> None:
    clock = Clock()
    term = TlsTerminator(settings(pki, ticket_rotation=600.0), ticket_secret=SECRET, clock=clock)
    assert term.tickets is not None
    keys = tickets.get_ticket_keys(term.context)
    ctx = client(pki)
    _, session = connect(term, ctx)
    clock.now += 599.0 - clock.now % 600.0  # the last second of the period
    _, session = connect(term, ctx, session)
    assert term.tickets.rotations == 0
    clock.now += 1.0  # the next period: new keys, the same context
    context = term.context
    reused, session = connect(term, ctx, session)
    assert not reused and term.tickets.rotations == 1 and term.context is context
    assert tickets.get_ticket_keys(term.context) != keys
    assert connect(term, ctx, session)[0] is True
    # a process started now (a restarted worker) has the same keys
    assert connect(TlsTerminator(term.settings, ticket_secret=SECRET, clock=clock), ctx, session)[0] is True


def test_rotation_by_fresh_contexts_where_keys_cannot_be_set(pki: Path, tmp_path: Path) -> None:
    for name in ("server.crt", "server.key"):
        shutil.copy(pki / name, tmp_path / name)
    clock = Clock()
    term = TlsTerminator(settings(tmp_path, ticket_rotation=600.0), clock=clock)
    assert term.tickets is not None
    term.tickets.settable = False  # as on an interpreter whose ssl module has no way to set them
    ctx = client(pki)
    _, session = connect(term, ctx)
    first = term.context
    clock.now += 600.0
    reused, session = connect(term, ctx, session)
    assert not reused and term.context is not first and term.tickets.rotations == 1
    assert connect(term, ctx, session)[0] is True
    # files unusable at the next rotation: the current context stays, retried a minute later
    (tmp_path / "server.key").write_text("not a key")
    clock.now += 600.0
    kept = term.current_context()
    assert kept is term.context and term.tickets.rotations == 1
    assert term.tickets.next_change == clock.now + tickets.TicketKeys.RETRY
    shutil.copy(pki / "server.key", tmp_path / "server.key")
    clock.now += tickets.TicketKeys.RETRY
    assert term.current_context() is not kept and term.tickets.rotations == 2


def test_mtls_resumption_keeps_the_identity_and_refuses_a_certificate_expired_since(pki: Path) -> None:
    term = TlsTerminator(settings(pki, client_ca_file=str(pki / "ca.crt")))
    ctx = client(pki, "client")
    seen: list[object] = []

    def expired_later(tls: ssl.SSLSocket) -> None:
        try:
            seen.append(peer_certificate(tls, now=4_000_000_000.0))  # the year 2096
        except TlsRefused as exc:
            seen.append(str(exc))

    _, session = connect(term, ctx, on_server=expired_later)
    assert isinstance(seen[0], PeerCertificate) and seen[0].identity == "client"  # full handshake
    reused, _ = connect(term, ctx, session, on_server=expired_later)
    assert reused
    assert seen[1] == "client certificate expired since the session was made (resumption refused)"
    identities: list[str | None] = []
    reused, _ = connect(term, ctx, session, on_server=lambda tls: identities.append(term._peer(tls).identity))
    assert reused and identities == ["client"]


def test_processes_adopt_a_secret_from_the_environment() -> None:
    environ = {tickets.TICKET_SECRET_ENV: (b"w" * 32).hex(), "OTHER": "x"}
    try:
        assert tickets.adopt_ticket_secret(environ)  # a supervisor or a replica: it stays for its children
        assert tickets.TICKET_SECRET_ENV in environ
        assert tickets.adopt_ticket_secret(environ, remove=True)  # a worker: nothing it starts inherits it
        assert environ == {"OTHER": "x"}
        adopted = tickets.TicketKeys(b"scope", 3600.0).keys(1)
        assert adopted == tickets.TicketKeys(b"scope", 3600.0, b"w" * 32).keys(1)
        assert not tickets.adopt_ticket_secret(environ)  # none given: the process keeps its own
        for bad in ("zz" * 32, "ab" * 31):
            with pytest.raises(ValueError, match="at least 64 hexadecimal digits"):
                tickets.adopt_ticket_secret({tickets.TICKET_SECRET_ENV: bad})
    finally:
        tickets.set_ticket_secret(os.urandom(32))
