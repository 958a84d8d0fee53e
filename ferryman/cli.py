from gevent import monkey

monkey.patch_all()  # first: before ssl, asyncio, pykka, loguru or paho are imported (see actors/bootstrap.py)

"""The ``ferryman`` command: run, check, hash-password, certs, responder."""

import argparse
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import gevent
from gevent.event import Event
from loguru import logger

from ferryman.actors.gateway import Gateway, GatewayError
from ferryman.actors.log import configure_logging
from ferryman.config import (
    ListenerKind,
    RunSettings,
    Settings,
    SettingsError,
    parse_workers,
    render_settings,
)
from ferryman.versions import check as check_versions

__all__ = ["main"]


def _listeners() -> tuple[dict[str, Any], dict[str, ListenerKind]]:
    """The listener classes (shipped and plugged in) and their settings kinds, found once per command: a
    SIGHUP reload checks against the same kinds the running gateway was built with."""
    from ferryman.wiring import listener_classes, listener_kinds

    classes = listener_classes()
    return classes, listener_kinds(classes)


def _load(path: str | None, kinds: Mapping[str, ListenerKind]) -> Settings:
    from ferryman.wiring import load_settings

    return load_settings(path or os.environ.get("FERRYMAN_CONFIG") or None, kinds=kinds)


def _handler_problems(settings: Settings, listeners: Mapping[str, Any]) -> list[str]:
    from ferryman.wiring import build_gateway

    gateway = build_gateway(settings, listeners=listeners)
    problems: list[str] = []
    specs: list[tuple[str, str, Mapping[str, Any]]] = [
        ("auth.handler", settings.auth.handler, settings.auth.options)
    ]
    specs += [(f"handler[{i}]", h.name, h.options) for i, h in enumerate(settings.handlers)]
    for where, name, options in specs:
        try:
            cls = gateway.handler_class(name)
        except GatewayError as exc:
            problems.append(f"{where}: {exc}")
            continue
        problems += [f"{where} ({name}): {p}" for p in cls.validate_options(options, settings)]
    for i, ls in enumerate(settings.listeners):
        try:
            listener_cls = gateway.listener_class(ls.protocol)
        except GatewayError:
            problems.append(f"listener[{i}].protocol: {ls.protocol!r} is not available in this version yet")
            continue
        problems += [f"listener[{i}]: {p}" for p in listener_cls.validate_settings(ls)]
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    if not check_versions(lambda problem: print(problem, file=sys.stderr)):
        return 1
    classes, kinds = _listeners()
    try:
        settings = _load(args.config, kinds)
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    problems = _handler_problems(settings, classes)
    if problems:
        for p in problems:
            print(f"{settings.source}: {p}", file=sys.stderr)
        print(f"{len(problems)} error(s)", file=sys.stderr)
        return 1
    if args.print:
        print(render_settings(settings))
    print(
        f"ok: {settings.source}: {len(settings.listeners)} listener(s), "
        f"auth handler {settings.auth.handler!r}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    classes, kinds = _listeners()
    try:
        settings = _load(args.config, kinds)
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    index: int | None = args.worker_index  # set: one worker process of a supervisor (ferryman/workers.py)
    if index is not None and not args.worker_dir:
        print(
            "ferryman run: --worker-index is for the supervisor's workers (use --workers N)", file=sys.stderr
        )
        return 2
    configure_logging(settings.log.level, settings.log.format, "" if index is None else f"worker {index}")
    from ferryman.config.env import TICKET_SECRET_ENV
    from ferryman.protocols.tls.tickets import adopt_ticket_secret

    try:  # TLS session tickets good across the processes given one secret (workers, replicas)
        adopt_ticket_secret(os.environ, remove=index is not None)
    except ValueError as exc:
        logger.error("cannot start: {}", exc)
        return 2
    if not check_versions(lambda problem: logger.error("cannot start: {}", problem)):
        return 1
    problems = _handler_problems(settings, classes)
    if problems:
        for p in problems:
            logger.error("{}: {}", settings.source, p)
        return 2
    from ferryman.wiring import build_gateway
    from ferryman.workers import WorkerRole, supervise

    if index is None:
        count = worker_count(args.workers, settings)
        if count > 1:
            # one TLS session-ticket secret for every worker (they inherit the environment): a ticket
            # resumes on whichever worker the kernel hands the connection to
            if not os.environ.get(TICKET_SECRET_ENV):
                os.environ[TICKET_SECRET_ENV] = os.urandom(32).hex()
            rc = supervise(settings, classes, count, args.config)
            if rc is not None:
                return rc
    role = WorkerRole(index, args.worker_dir, args.worker_fd, classes) if index is not None else None
    if role is not None:
        settings = role.settings_for(settings)
    gateway: Gateway = build_gateway(
        settings, listeners=classes, **(role.gateway_options() if role is not None else {})
    )
    stop = Event()

    def on_signal(signame: str) -> None:
        logger.info("{} received: shutting down", signame)
        stop.set()

    def on_hup() -> None:
        if settings.source == "<defaults>" and not os.environ.get("FERRYMAN_CONFIG"):
            logger.info("SIGHUP: no settings file to reload")
            return
        try:
            new = _load(args.config, kinds)
        except SettingsError as exc:
            logger.error("SIGHUP: settings not reloaded (the running ones stay):\n{}", exc)
            return
        if role is not None:
            new = role.settings_for(new)
        problem = _reload_problem(gateway.settings, new)
        if problem:
            logger.error("SIGHUP: settings not reloaded (the running ones stay): {}: {}", new.source, problem)
            return
        gateway.reload(new)

    _raise_fd_limit(settings)
    handlers = [
        gevent.signal_handler(signal.SIGTERM, on_signal, "SIGTERM"),
        gevent.signal_handler(signal.SIGINT, on_signal, "SIGINT"),
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(on_hup)),
    ]
    try:
        gateway.start()
    except GatewayError as exc:
        logger.error("cannot start: {}", exc)
        return 1
    try:
        if role is not None:
            role.started(gateway, stop)
        stop.wait()
    finally:
        gateway.stop()
        if role is not None:
            role.stopped()
        for h in handlers:
            h.cancel()
    return 0


def worker_count(flag: int | str | None, settings: Settings) -> int:
    """The number of worker processes: ``--workers`` when given, else ``[run] workers``; "auto" is the
    CPU count."""
    return RunSettings(workers=flag if flag is not None else settings.run.workers).worker_count


def _workers_arg(text: str) -> int | str:
    """``--workers``: an integer 1..MAX_WORKERS or "auto" (argparse prints the message and exits 2)."""
    try:
        return parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _reload_problem(running: Settings, new: Settings) -> str | None:
    """Why ``new`` must not replace ``running`` on a SIGHUP, or None. A file caught half-written (a
    truncate-then-write deploy) can parse; one that would remove every user of the same auth handler at once
    would revoke every live session: refused (a restart applies such settings deliberately)."""
    if running.auth.users and not new.auth.users and running.auth.handler == new.auth.handler:
        return (
            f"it would remove all {len(running.auth.users)} user(s) of the {new.auth.handler!r} handler "
            "and disconnect every session (a half-written file?); restart the gateway to apply it"
        )
    return None


def _raise_fd_limit(settings: Settings) -> None:
    """Take the hard limit on open files as the soft one (each MQTT connection holds two sockets), and say
    so when even that cannot hold every listener's max_connections."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-files limit from {} to {}: {}", soft, hard, exc)
    wanted = sum(2 * ls.max_connections for ls in settings.listeners if ls.max_connections)
    if wanted > soft:
        logger.info(
            "open-files limit {} holds about {} connections, below max_connections in total ({}): "
            "raise it (ulimit -n) or lower max_connections",
            soft,
            soft // 2,
            wanted // 2,
        )


def cmd_hash_password(args: argparse.Namespace) -> int:
    import getpass

    from ferryman.bridge.passwords import hash_password

    password = args.password if args.password is not None else getpass.getpass("password: ")
    print(hash_password(password, iterations=args.iterations))
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ferryman_devtools import pki_extra
    from ferryman_devtools.pki import write_dev_pki

    if args.revoke or args.unrevoke:
        try:
            for name in args.revoke:
                pki_extra.revoke(Path(args.directory), name)
            for name in args.unrevoke:
                pki_extra.revoke(Path(args.directory), name, revoked=False)
        except (KeyError, OSError) as exc:
            print(f"ferryman certs: {exc}", file=sys.stderr)
            return 1
        print(Path(args.directory) / "issued.json")
        print(Path(args.directory) / "crl.pem")
        return 0
    try:
        written = write_dev_pki(
            Path(args.directory),
            ocsp_url=args.ocsp_url,
            crl_url=args.crl_url,
            overwrite=args.force,
            key_type=args.key_type,
        )
    except FileExistsError as exc:
        print(f"ferryman certs: {exc} (use --force to replace it)", file=sys.stderr)
        return 1
    if args.chain:
        written += pki_extra.write_chain_pki(Path(args.directory))
    for path in written:
        print(path)
    return 0


def cmd_responder(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ferryman.config import parse_address
    from ferryman_devtools.responder import DevResponder

    directory = Path(args.directory)
    for name in ("ca.crt", "ca.key", "issued.json"):
        if not (directory / name).exists():
            print(
                f"ferryman responder: {directory / name} missing (run `ferryman certs DIR`)", file=sys.stderr
            )
            return 1
    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        print(f"ferryman responder: --address: {exc}", file=sys.stderr)
        return 2
    configure_logging("info", "text")
    responder = DevResponder(directory)
    try:
        bound = responder.start((host, port))
    except OSError as exc:
        print(f"ferryman responder: cannot listen on {args.address}: {exc}", file=sys.stderr)
        return 1
    logger.info("OCSP responder and CRL server for {} on http://{}:{}", directory, *bound)
    stop = Event()
    handlers = [gevent.signal_handler(sig, stop.set) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        stop.wait()
    finally:
        responder.stop()
        for h in handlers:
            h.cancel()
    return 0


def cmd_http_echo(args: argparse.Namespace) -> int:
    from ferryman_devtools.echo import main as echo_main

    return echo_main(args.rest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferryman", description="IoT protocol gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway (embedded defaults without --config)")
    run.add_argument(
        "--config", "-c", help="settings file (TOML); default: $FERRYMAN_CONFIG or embedded defaults"
    )
    run.add_argument(
        "--workers",
        type=_workers_arg,
        metavar="N|auto",
        help='worker processes (default: [run] workers, else 1); "auto": one per CPU',
    )
    # A worker of a supervisor (ferryman/workers.py starts them): its index, the supervisor's directory, the
    # pipe whose end closes when the supervisor is gone. Not for operators.
    run.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-dir", help=argparse.SUPPRESS)
    run.add_argument("--worker-fd", type=int, default=-1, help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a settings file and print every error")
    check.add_argument("--config", "-c", help="settings file (TOML)")
    check.add_argument("--print", action="store_true", help="print the effective settings, secrets masked")
    check.set_defaults(func=cmd_check)
    hp = sub.add_parser("hash-password", help="print a password_hash for [[auth.users]]")
    hp.add_argument("password", nargs="?", help="the password (prompted for when left out)")
    hp.add_argument("--iterations", type=int, default=200_000)
    hp.set_defaults(func=cmd_hash_password)
    certs = sub.add_parser("certs", help="write a development PKI (CA, server, clients, CRL) into DIR")
    certs.add_argument("directory", metavar="DIR")
    certs.add_argument("--ocsp-url", default="http://127.0.0.1:8889/ocsp", help="AIA OCSP URL in the leaves")
    certs.add_argument("--crl-url", default="http://127.0.0.1:8889/crl.pem", help="CRL distribution point")
    certs.add_argument("--force", action="store_true", help="replace files that exist")
    certs.add_argument(
        "--key-type",
        choices=("rsa", "ec"),
        default="rsa",
        help="keys of the CA, server and clients: rsa (2048 bits, the default) or ec (P-256, ECDSA)",
    )
    certs.add_argument(
        "--chain", action="store_true", help="also a root -> intermediate -> client chain (chain-*.crt)"
    )
    certs.add_argument(
        "--revoke",
        action="append",
        default=[],
        metavar="FILE",
        help="in an existing PKI: mark FILE (e.g. client.crt) revoked, rewrite crl.pem",
    )
    certs.add_argument("--unrevoke", action="append", default=[], metavar="FILE", help="undo --revoke")
    certs.set_defaults(func=cmd_certs)
    resp = sub.add_parser("responder", help="serve OCSP and the CRL for a development PKI in DIR")
    resp.add_argument("directory", metavar="DIR")
    resp.add_argument("--address", default="127.0.0.1:8889", help="host:port (default 127.0.0.1:8889)")
    resp.set_defaults(func=cmd_responder)
    echo = sub.add_parser(
        "http-echo", help="an HTTP echo target for trying the http listener", add_help=False
    )
    echo.set_defaults(func=cmd_http_echo)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "http-echo":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
