"""The smartgrid rule set, with the exact strings of smartgrid-rules.md."""

from __future__ import annotations

import pytest

from ferryman.bridge.smartgrid import Query, SmartgridRules, Usage


@pytest.fixture
def sg() -> SmartgridRules:
    return SmartgridRules()


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("GET devices", "smartgrid/listOfDevices"),
        ("GET values bat_01", "smartgrid/bat_01"),
        ("GET power from bat_01", "smartgrid/bat_01/power"),
        ("  GET\tpower   from\nbat_01 ", "smartgrid/bat_01/power"),
        ("get Devices", "smartgrid/listOfDevices"),
        ("GET values from bat_01", "smartgrid/bat_01/values"),  # a variable called "values"
    ],
)
def test_parse(sg: SmartgridRules, text: str, topic: str) -> None:
    assert sg.parse(text) == Query(topic)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "GET",  # the original crashed on these three
        "GET foo",
        "GET values",
        "GET devices now",
        "GET power of bat_01",
        "PUT power from bat_01",
        "GET values a/b",
        "GET values +",
        "GET # from bat_01",
        "GET power from bat_01 extra",
    ],
)
def test_parse_usage(sg: SmartgridRules, text: str) -> None:
    ans = sg.parse(text)
    assert isinstance(ans, Usage)
    assert ans.text.endswith(sg.usage_text())
    assert "GET devices" in ans.text


def test_custom_root() -> None:
    sg = SmartgridRules("home/grid")
    assert sg.root == "home/grid/"
    assert sg.parse("GET devices") == Query("home/grid/listOfDevices")
    assert sg.render("home/grid/listOfDevices", b'["x"]') == "\nDevices: \n\tx\n"
    assert sg.render("smartgrid/listOfDevices", b'["x"]') is None
    for bad in ("", "/", "a/+", "a/#"):
        with pytest.raises(ValueError):
            SmartgridRules(bad)


def test_render_examples_from_rules_file(sg: SmartgridRules) -> None:
    assert sg.render("smartgrid/listOfDevices", b'["bat_01","th_01"]') == "\nDevices: \n\tbat_01\n\tth_01\n"
    assert sg.render("smartgrid/bat_01/power", b'{"power":1111}') == "\nDevice: bat_01\n\tpower: 1111"
    assert sg.render("smartgrid/bat_01", b'[{"power":1}]') == "\nbat_01:\n\tpower : 1\n"


def test_render_keeps_payload_order_and_value_forms(sg: SmartgridRules) -> None:
    body = sg.render("smartgrid/th_01", b'[{"z":1.5,"a":"on"},{"ok":true,"n":null}]')
    assert body == "\nth_01:\n\tz : 1.5\n\ta : on\n\tok : true\n\tn : null\n"
    assert sg.render("smartgrid/th_01/mode", '{"mode":"ünï"}'.encode()) == "\nDevice: th_01\n\tmode: ünï"
    assert sg.render("smartgrid/listOfDevices", b"[]") == "\nDevices: \n"


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("other/listOfDevices", b'["a"]'),  # outside the root
        ("smartgrid/listOfDevices", b"not json"),
        ("smartgrid/listOfDevices", b"\xff"),
        ("smartgrid/listOfDevices", b'{"a":1}'),  # wrong shape
        ("smartgrid/bat_01/power", b'{"voltage":1}'),  # key missing
        ("smartgrid/bat_01/power", b"[1]"),
        ("smartgrid/bat_01", b'{"power":1}'),
        ("smartgrid/bat_01", b"[1, 2]"),
        ("smartgrid/a/b/c", b'{"c":1}'),  # not in the table
        ("smartgrid/", b"[]"),
        ("smartgrid/bat_01/", b"{}"),
    ],
)
def test_render_none(sg: SmartgridRules, topic: str, payload: bytes) -> None:
    assert sg.render(topic, payload) is None


def test_last_value_cache(sg: SmartgridRules) -> None:
    t = "smartgrid/bat_01/power"
    assert sg.answer_now(t) is None  # first GET: nothing until a value exists
    assert sg.on_message(t, b'{"power":1111}') == "\nDevice: bat_01\n\tpower: 1111"
    assert sg.answer_now(t) == "\nDevice: bat_01\n\tpower: 1111"
    assert sg.on_message(t, b"garbage") is None  # not cached: the last good value stays
    assert sg.answer_now(t) == "\nDevice: bat_01\n\tpower: 1111"
    sg.on_message(t, b'{"power":2}')
    assert sg.answer_now(t) == "\nDevice: bat_01\n\tpower: 2"
    assert sg.on_message("elsewhere/x", b"{}") is None
    sg.forget(t)
    assert sg.answer_now(t) is None


def test_cache_bounded() -> None:
    sg = SmartgridRules(max_cached=2)
    for d in ("a", "b", "c"):
        sg.on_message(f"smartgrid/{d}/v", b'{"v":1}')
    assert sg.answer_now("smartgrid/a/v") is None
    assert sg.answer_now("smartgrid/c/v") is not None
