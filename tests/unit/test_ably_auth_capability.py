"""Capabilities: Ably's resource wildcard rules, operations, intersection and canonical form."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from emulators.ably.auth import Capability, parse_channel_name, resource_covers, resource_matches
from emulators.ably.errors import AblyError


@pytest.mark.parametrize(
    ("resource", "channel", "expected"),
    [
        ("foo", "foo", True),
        ("foo", "foo:bar", False),
        ("foo", "food", False),
        # `*` alone: every normal channel, any depth, but no metachannel or queue
        ("*", "foo", True),
        ("*", "ai:123:x", True),
        ("*", "[meta]channel.lifecycle", False),
        ("*", "[queue]app-q", False),
        # `ns:*`: everything in the namespace, however deep, but not the bare namespace
        ("ai:*", "ai:123", True),
        ("ai:*", "ai:123:reply", True),
        ("ai:*", "ai", False),
        ("ai:*", "aix:123", False),
        ("ai:*", "user:ai:123", False),
        # a `*` in the middle replaces exactly one segment
        ("foo:*:baz", "foo:bar:baz", True),
        ("foo:*:baz", "foo:bar:bam:baz", False),
        ("foo:*:baz", "foo:bar:bam", False),
        # `foo*` is a literal name, not a prefix glob
        ("foo*", "foo*", True),
        ("foo*", "foobar", False),
        ("foo*", "foo", False),
        # metachannels and the everything-resource
        ("[meta]*", "[meta]channel.lifecycle", True),
        ("[meta]*", "foo", False),
        ("[meta]channel.lifecycle", "[meta]channel.lifecycle", True),
        ("[meta]channel.lifecycle", "[meta]log", False),
        ("[*]*", "[meta]channel.lifecycle", True),
        ("[*]*", "foo:bar", True),
        ("[*]*", "[queue]q", True),
        # parameter qualifiers do not change which channel is being accessed
        ("foo", "[?rewind=1]foo", True),
        ("ai:*", "[?rewind=2m]ai:1", True),
        ("foo", "[?rewind=1]bar", False),
    ],
)
def test_resource_matching_follows_ablys_wildcard_rules(
    resource: str, channel: str, expected: bool
) -> None:
    assert resource_matches(resource, channel) is expected
    assert Capability.parse({resource: ["subscribe"]}).allows(channel, "subscribe") is expected


def test_parse_channel_name_separates_type_and_qualifiers() -> None:
    assert parse_channel_name("[meta]channel.lifecycle") == ("meta", "channel.lifecycle")
    assert parse_channel_name("[?rewind=1]ai:x") == (None, "ai:x")
    assert parse_channel_name("[?rewind=1][meta]log") == ("meta", "log")
    assert parse_channel_name("plain") == (None, "plain")


def test_operations_must_be_granted_individually() -> None:
    capability = Capability.parse({"ai:*": ["subscribe", "presence"], "user:alice": ["subscribe"]})
    assert capability.allows("ai:1", "subscribe")
    assert capability.allows("ai:1", "presence")
    assert not capability.allows("ai:1", "publish")
    assert not capability.allows("ai:1", "history")
    assert capability.allows("user:alice", "subscribe")
    assert not capability.allows("user:bob", "subscribe")


def test_star_operation_grants_every_operation_including_mutations() -> None:
    capability = Capability.parse('{"ai:*":["*"]}')
    for operation in (
        "publish",
        "subscribe",
        "presence",
        "history",
        "channel-metadata",
        "message-update-any",
        "message-delete-any",
        "message-update-own",
        "annotation-publish",
    ):
        assert capability.allows("ai:1", operation), operation
    assert not capability.allows("other", "publish")


def test_any_implies_own_but_own_does_not_imply_any() -> None:
    any_ = Capability.parse({"c": ["message-update-any", "message-delete-any"]})
    own = Capability.parse({"c": ["message-update-own", "message-delete-own"]})
    assert any_.allows("c", "message-update-own")
    assert any_.allows("c", "message-delete-own")
    assert own.allows("c", "message-update-own")
    assert not own.allows("c", "message-update-any")
    assert not own.allows("c", "message-delete-any")


def test_grants_from_several_matching_resources_combine() -> None:
    capability = Capability.parse({"*": ["subscribe"], "canpublish:*": ["publish"]})
    assert capability.allows("canpublish:x", "publish")
    assert capability.allows("canpublish:x", "subscribe")
    assert not capability.allows("other", "publish")
    assert capability.operations_for("canpublish:x") == {"publish", "subscribe"}


def test_app_wide_operations_need_the_star_resource() -> None:
    assert Capability.parse({"*": ["channel-metadata"]}).grants_app_wide("channel-metadata")
    assert Capability.parse({"[*]*": ["*"]}).grants_app_wide("stats")
    assert not Capability.parse({"ai:*": ["channel-metadata"]}).grants_app_wide("channel-metadata")
    assert not Capability.parse({"*": ["subscribe"]}).grants_app_wide("stats")


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[]",
        '"*"',
        {"channel0": ["publish_"]},  # unknown operation (ably-js "Invalid capabilities 1")
        {"channel0": ["*", "publish"]},  # '*' mixed with others ("Invalid capabilities 2")
        {"channel0": []},  # no operations ("Invalid capabilities 3")
        {"channel0": "publish"},
        {"channel0": [1]},
        {"": ["publish"]},
    ],
)
def test_malformed_capabilities_are_rejected_with_400(bad: object) -> None:
    with pytest.raises(AblyError) as caught:
        Capability.parse(bad)  # type: ignore[arg-type]
    assert caught.value.code == 40000
    assert caught.value.status_code == 400
    assert "capability" in caught.value.message.lower()


def test_canonical_json_sorts_and_compacts_whatever_the_input_spacing() -> None:
    python_style = '{"b": ["subscribe", "publish"], "a": ["presence"]}'
    js_style = '{"a":["presence"],"b":["publish","subscribe"]}'
    assert Capability.parse(python_style).to_json() == js_style
    assert Capability.parse(js_style) == Capability.parse(python_style)
    assert json.loads(Capability.all().to_json()) == {"*": ["*"]}


# The cases below are the ones ably-js's own rest/capability tests assert against Ably,
# using the keys of ably-common's test-app-setup.json.
KEY1 = {
    "cansubscribe:*": ["subscribe"],
    "canpublish:*": ["publish"],
    "canpublish:andpresence": ["presence", "publish"],
}
KEY2 = {
    "channel0": ["publish"],
    "channel2": ["publish", "subscribe"],
    "channel5": ["presence"],
    "channel6": ["*"],
}
KEY3 = {"*": ["subscribe"]}


@pytest.mark.parametrize(
    ("key", "requested", "expected"),
    [
        (KEY1, KEY1, KEY1),
        ({"*": ["*"]}, {"onlythischannel": ["subscribe"]}, {"onlythischannel": ["subscribe"]}),
        (KEY2, {"channel2": ["presence", "subscribe"]}, {"channel2": ["subscribe"]}),
        (
            KEY2,
            {"channel2": ["presence", "subscribe"], "channelx": ["presence", "subscribe"]},
            {"channel2": ["subscribe"]},
        ),
        (KEY2, {"channel2": ["*"]}, {"channel2": ["publish", "subscribe"]}),
        (KEY2, {"channel6": ["publish", "subscribe"]}, {"channel6": ["publish", "subscribe"]}),
        (KEY3, {"cansubscribe": ["subscribe"]}, {"cansubscribe": ["subscribe"]}),
        (KEY1, {"canpublish:check": ["publish"]}, {"canpublish:check": ["publish"]}),
        (KEY3, {"cansubscribe:*": ["subscribe"]}, {"cansubscribe:*": ["subscribe"]}),
        # a broad request narrows to the key's own resources
        (KEY2, {"*": ["*"]}, KEY2),
        ({"foo:*:baz": ["*"]}, {"foo:*": ["publish"]}, {"foo:*:baz": ["publish"]}),
        ({"ai:*": ["publish", "subscribe"]}, {"[*]*": ["subscribe"]}, {"ai:*": ["subscribe"]}),
        ({"[*]*": ["*"]}, {"[meta]*": ["subscribe"]}, {"[meta]*": ["subscribe"]}),
    ],
)
def test_intersection_matches_ablys_token_capability_results(
    key: dict, requested: dict, expected: dict
) -> None:
    result = Capability.parse(requested).intersect(Capability.parse(key))
    assert json.loads(result.to_json()) == {
        resource: sorted(operations) for resource, operations in expected.items()
    }


@pytest.mark.parametrize(
    ("key", "requested"),
    [
        (KEY1, {"canpublish:test": ["subscribe"]}),  # ably-js "Empty ops intersection"
        (KEY2, {"channelx": ["publish"]}),  # ably-js "Empty paths intersection"
        ({"*": ["*"]}, {"[meta]channel.lifecycle": ["subscribe"]}),  # `*` excludes [meta]
        ({"foo:*": ["*"]}, {"bar:*": ["publish"]}),  # disjoint namespaces
        ({"foo": ["publish"]}, {"foo:*": ["publish"]}),  # `foo:*` does not include `foo`
    ],
)
def test_empty_intersection_is_a_40160_with_status_401(key: dict, requested: dict) -> None:
    with pytest.raises(AblyError) as caught:
        Capability.parse(requested).intersect(Capability.parse(key))
    assert (caught.value.code, caught.value.status_code) == (40160, 401)


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        ("*", "foo", True),
        ("*", "foo:*", True),
        ("foo:*", "*", False),
        ("foo:*", "foo:bar:*", True),
        ("foo:*:baz", "foo:bar:baz", True),
        ("foo:*:baz", "foo:*", False),
        ("foo:bar", "foo:*", False),
        ("*", "[meta]*", False),
        ("[*]*", "[meta]*", True),
        ("[meta]*", "[*]*", False),
    ],
)
def test_resource_cover_relation(outer: str, inner: str, expected: bool) -> None:
    assert resource_covers(outer, inner) is expected


# ---------------------------------------------------------------------------------------------
# properties: a token never gets more than both its request and its key allow

SEGMENTS = st.sampled_from(["a", "b", "c"])
OPERATIONS = st.sampled_from(["publish", "subscribe", "presence", "history"])
PATTERN_SEGMENTS = st.sampled_from(["a", "b", "*"])


@st.composite
def resources(draw) -> str:
    kind = draw(st.sampled_from(["plain", "plain", "plain", "meta", "everything"]))
    if kind == "everything":
        return "[*]*"
    pattern = ":".join(draw(st.lists(PATTERN_SEGMENTS, min_size=1, max_size=3)))
    return f"[meta]{pattern}" if kind == "meta" else pattern


@st.composite
def capabilities(draw) -> dict[str, list[str]]:
    grants = draw(
        st.dictionaries(
            resources(),
            st.one_of(st.just(["*"]), st.lists(OPERATIONS, min_size=1, max_size=3, unique=True)),
            min_size=1,
            max_size=3,
        )
    )
    return grants


@st.composite
def channels(draw) -> str:
    name = ":".join(draw(st.lists(SEGMENTS, min_size=1, max_size=4)))
    return f"[meta]{name}" if draw(st.booleans()) else name


@settings(max_examples=150, deadline=None)
@given(requested=capabilities(), key=capabilities(), channel=channels(), operation=OPERATIONS)
def test_intersection_never_grants_more_than_request_or_key(
    requested: dict, key: dict, channel: str, operation: str
) -> None:
    request_capability, key_capability = Capability.parse(requested), Capability.parse(key)
    try:
        token = request_capability.intersect(key_capability)
    except AblyError as error:
        assert error.code == 40160
        return
    if token.allows(channel, operation):
        assert request_capability.allows(channel, operation)
        assert key_capability.allows(channel, operation)


@settings(max_examples=150, deadline=None)
@given(key=capabilities(), channel=channels(), operation=OPERATIONS)
def test_asking_for_one_channel_gets_exactly_what_the_key_allows_there(
    key: dict, channel: str, operation: str
) -> None:
    key_capability = Capability.parse(key)
    requested = Capability.parse({channel: [operation]})
    if key_capability.allows(channel, operation):
        assert requested.intersect(key_capability).allows(channel, operation)
    else:
        with pytest.raises(AblyError):
            requested.intersect(key_capability)
