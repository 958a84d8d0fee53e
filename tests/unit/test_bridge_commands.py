"""Chat command parsing, reply texts, authorization and rendering of the bridge (pure logic)."""

from __future__ import annotations

import pytest

from ferryman.bridge.authz import BridgeAuthz, bare_jid
from ferryman.bridge.commands import (
    Help,
    List,
    Publish,
    Subscribe,
    Unsubscribe,
    parse_command,
    reply_error,
    reply_help,
    reply_list,
    reply_published,
    reply_subscribed,
    reply_unsubscribed,
    usage_text,
)
from ferryman.bridge.rendering import render_message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("subscribe a/b", Subscribe("a/b")),
        ("SUBSCRIBE   a/+/c", Subscribe("a/+/c")),
        ("\t Subscribe\n#  ", Subscribe("#")),
        ("unsubscribe a/#", Unsubscribe("a/#")),
        ("UnSubscribe\u00a0x", Unsubscribe("x")),
        ("publish a/b hello", Publish("a/b", "hello")),
        ("publish a/b  hello   big\nworld ", Publish("a/b", "hello   big\nworld")),
        ('PUBLISH\ta/b\t{"k": 1}', Publish("a/b", '{"k": 1}')),
        ("publish a/b", Publish("a/b", "")),
        ("publish a/b   ", Publish("a/b", "")),
        ("list", List()),
        (" LIST ", List()),
        ("help", Help()),
        ("Help me", Help()),
    ],
)
def test_parse_valid(text: str, expected: object) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "reason_part"),
    [
        ("", "empty message"),
        ("   \n", "empty message"),
        ("hello", "unknown command 'hello'"),
        ("subscribe", "subscribe needs a filter"),
        ("unsubscribe  ", "unsubscribe needs a filter"),
        ("subscribe a b", "one filter"),
        ("subscribe a/#/b", "'#' must be a whole level and the last one"),
        ("subscribe a+/b", "'+' must be a whole level"),
        ("unsubscribe a/b#", "invalid filter 'a/b#'"),
        ("subscribe $share/g/a", "shared subscriptions are not supported"),
        ("subscribe a\x00b", "U+0000"),
        ("publish", "publish needs a topic"),
        ("publish a/+ x", "invalid topic 'a/+': wildcards are not allowed in a topic name"),
        ("publish # x", "wildcards"),
        ("list all", "list takes no arguments"),
    ],
)
def test_parse_invalid_is_help_with_reason(text: str, reason_part: str) -> None:
    cmd = parse_command(text)
    assert isinstance(cmd, Help)
    assert cmd.reason is not None and reason_part in cmd.reason


def test_publish_payload_bytes_utf8() -> None:
    cmd = parse_command("publish t ünï €")
    assert isinstance(cmd, Publish)
    assert cmd.payload_bytes == "ünï €".encode()


def test_replies() -> None:
    assert reply_subscribed("a/#") == "subscribed a/#"
    assert reply_unsubscribed("a/#") == "unsubscribed a/#"
    assert reply_published("a/b") == "published a/b"
    assert reply_list([]) == "no subscriptions"
    assert reply_list(["b/#", "a/+"]) == "a/+\nb/#"
    assert reply_error("nope") == "error: nope"
    assert reply_help() == usage_text()
    assert reply_help(Help()) == usage_text()
    assert reply_help(Help("unknown command 'x'")) == "error: unknown command 'x'\n" + usage_text()
    for verb in ("subscribe <filter>", "unsubscribe <filter>", "publish <topic> <payload>", "list", "help"):
        assert verb in usage_text()


# -- authz ---------------------------------------------------------------------------------------------


def test_bare_jid() -> None:
    assert bare_jid("Alice@LocalHost/Phone") == "alice@localhost"
    assert bare_jid(" bob@x ") == "bob@x"
    assert bare_jid("x.org/res/with/slash") == "x.org"
    assert bare_jid("") == ""


def test_authz_allowed_jids() -> None:
    az = BridgeAuthz(["Alice@localhost"])
    assert az.is_allowed("alice@LOCALHOST/laptop")
    assert not az.is_allowed("bob@localhost")
    assert az.check_subscribe("alice@localhost/x", "a/#") is None
    assert az.check_publish("alice@localhost", "a/b") is None
    assert az.check_unsubscribe("alice@localhost", "a/#") is None
    err = az.check_subscribe("Bob@localhost/r", "a/#")
    assert err == "bob@localhost is not allowed to use this gateway"
    assert az.check_publish("bob@localhost", "a") == err
    assert az.check_unsubscribe("bob@localhost", "a") == err
    assert not az.may_deliver("bob@localhost", "a")
    assert az.may_deliver("alice@localhost", "a")


def test_authz_empty_is_nobody() -> None:
    az = BridgeAuthz([])
    assert not az.is_allowed("alice@localhost")
    assert az.check_publish("alice@localhost", "a") is not None


def test_authz_validates_filters_and_topics() -> None:
    az = BridgeAuthz(["alice@localhost"])
    assert az.check_subscribe("alice@localhost", "a/#/b") == (
        "invalid filter 'a/#/b': '#' must be a whole level and the last one"
    )
    assert az.check_publish("alice@localhost", "a/+") == (
        "invalid topic 'a/+': wildcards are not allowed in a topic name"
    )
    assert az.check_publish("alice@localhost", "") is not None


def test_authz_rules_per_jid() -> None:
    az = BridgeAuthz(
        ["alice@localhost", "bob@localhost"],
        {"ALICE@localhost": (["cmd/alice/#"], ["dev/+/temp", "alerts/#"])},
    )
    assert az.check_publish("alice@localhost", "cmd/alice/x") is None
    assert az.check_publish("alice@localhost", "cmd/bob/x") == "not allowed to publish to cmd/bob/x"
    assert az.check_subscribe("alice@localhost", "dev/1/temp") is None
    assert az.check_subscribe("alice@localhost", "alerts/fire") is None
    assert az.check_subscribe("alice@localhost", "dev/#") == "not allowed to subscribe to dev/#"
    assert az.may_deliver("alice@localhost", "dev/7/temp")
    assert not az.may_deliver("alice@localhost", "dev/7/hum")
    # bob has no rule: everything (but never $ topics through '#', as in MQTT)
    assert az.check_subscribe("bob@localhost", "#") is None
    assert az.check_publish("bob@localhost", "anything/at/all") is None


def test_authz_rules_for_unlisted_jid_grant_nothing() -> None:
    az = BridgeAuthz(["alice@localhost"], {"eve@localhost": (["#"], ["#"])})
    assert not az.is_allowed("eve@localhost")


def test_authz_bad_settings_fail_early() -> None:
    with pytest.raises(ValueError):
        BridgeAuthz(["alice@localhost"], {"alice@localhost": (["a/#/b"], [])})
    with pytest.raises(ValueError):
        BridgeAuthz(["/res"])


# -- rendering -----------------------------------------------------------------------------------------


def test_render_utf8() -> None:
    assert render_message("a/b", b"hello world") == "a/b: hello world"
    assert render_message("a/b", "ünï\n€".encode()) == "a/b: ünï\n€"
    assert render_message("a/b", b"") == "a/b: "


def test_render_binary_as_base64() -> None:
    assert render_message("a/b", b"\xff\x00\x01") == "a/b: base64:/wAB"
    # valid UTF-8 that XML cannot carry is binary too
    assert render_message("a/b", b"x\x00y") == "a/b: base64:eAB5"
    assert render_message("a/b", b"\x1b[0m") == "a/b: base64:G1swbQ=="
    assert render_message("a/b", b"tab\tok\r\n") == "a/b: tab\tok\r\n"
