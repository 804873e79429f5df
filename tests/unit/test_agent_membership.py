"""Ownership of conversations among agent processes (issue 15): rendezvous hashing and the
member set kept from control-channel presence. Pure logic: no Ably, no database."""

from __future__ import annotations

import uuid

from hypothesis import given, settings, strategies as st

from conversations.agent.membership import Membership, PresenceEntry, owner_of

# Deterministic conversation ids (no random values outside hypothesis).
CONVERSATIONS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"conversation-{n}")) for n in range(2000)]

agent_ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=24
)
member_sets = st.sets(agent_ids, min_size=1, max_size=8)


def entry(agent_id: str, connection_id: str | None = None) -> PresenceEntry:
    return PresenceEntry(connection_id or f"conn-{agent_id}", "agent", agent_id)


def membership_of(own_id: str, members: set[str]) -> Membership:
    membership = Membership(own_id)
    membership.replace(entry(member) for member in members)
    return membership


@settings(max_examples=60, deadline=None)
@given(members=member_sets)
def test_every_conversation_has_exactly_one_owner_and_every_member_agrees(
    members: set[str],
) -> None:
    views = {member: membership_of(member, members) for member in members}
    for conversation in CONVERSATIONS[:100]:
        owners = [member for member, view in views.items() if view.owns(conversation)]
        assert len(owners) == 1
        assert owners[0] in members
        assert {view.owner_of(conversation) for view in views.values()} == {owners[0]}
        assert owner_of(conversation, sorted(members, reverse=True)) == owners[0]


@settings(max_examples=25, deadline=None)
@given(members=member_sets, joiner=agent_ids)
def test_a_join_moves_about_one_kth_and_only_to_the_joiner(members: set[str], joiner: str) -> None:
    members.discard(joiner)
    if not members:
        members = {joiner + "-other"}
    after = members | {joiner}
    moved = [c for c in CONVERSATIONS if owner_of(c, members) != owner_of(c, after)]
    assert all(owner_of(c, after) == joiner for c in moved)
    # Binomial(2000, 1/K): 0.05 is more than 4 standard deviations for every K here.
    assert abs(len(moved) / len(CONVERSATIONS) - 1 / len(after)) < 0.05


@settings(max_examples=40, deadline=None)
@given(members=st.sets(agent_ids, min_size=2, max_size=8), data=st.data())
def test_a_leave_moves_only_the_leavers_conversations(
    members: set[str], data: st.DataObject
) -> None:
    leaver = data.draw(st.sampled_from(sorted(members)))
    after = members - {leaver}
    for conversation in CONVERSATIONS[:500]:
        before_owner = owner_of(conversation, members)
        if before_owner == leaver:
            assert owner_of(conversation, after) in after
        else:
            assert owner_of(conversation, after) == before_owner


def test_no_members_no_owner_and_ids_hash_alike_as_uuid_or_string() -> None:
    assert owner_of(CONVERSATIONS[0], []) is None
    as_uuid = uuid.UUID(CONVERSATIONS[0])
    assert owner_of(as_uuid, ["a", "b", "c"]) == owner_of(CONVERSATIONS[0], ["a", "b", "c"])


def test_ownership_is_pinned_so_every_process_and_version_agrees() -> None:
    """Not Python's salted hash(), and not free to change: agents of two releases running side
    by side during a deploy must still agree on every owner."""
    owners = [owner_of(c, ["agent-a", "agent-b", "agent-c"]) for c in CONVERSATIONS[:12]]
    assert owners == [f"agent-{x}" for x in "bbbcccaacbab"]


# --- the member set ------------------------------------------------------------------------------


def test_an_agent_counts_itself_before_its_own_enter_comes_back() -> None:
    membership = Membership("me")
    assert membership.members == {"me"}
    assert all(membership.owns(c) for c in CONVERSATIONS[:20])
    change = membership.replace([entry("other")])
    assert change is not None and change.joined == {"other"} and not change.left
    assert membership.members == {"me", "other"}
    # Our own enter arriving changes nothing.
    assert membership.present(entry("me")) is None


def test_an_agent_on_two_connections_is_one_member_until_both_entries_go() -> None:
    membership = Membership("me")
    membership.present(entry("other", "conn-1"))
    assert membership.present(entry("other", "conn-2")) is None
    assert membership.members == {"me", "other"}
    # The old connection's presence times out: the agent is still there on the new one.
    assert membership.absent("conn-1", "agent") is None
    assert membership.members == {"me", "other"}
    change = membership.absent("conn-2", "agent")
    assert change is not None and change.left == {"other"}
    assert membership.members == {"me"}


def test_a_leave_for_an_unknown_entry_or_a_repeated_enter_changes_nothing() -> None:
    membership = Membership("me")
    assert membership.absent("nobody", "agent") is None
    membership.present(entry("other"))
    assert membership.present(entry("other")) is None
    assert membership.absent("nobody", "agent") is None
    assert membership.members == {"me", "other"}


def test_a_snapshot_replaces_what_the_events_said() -> None:
    membership = Membership("me")
    membership.present(entry("gone"))
    change = membership.replace([entry("new"), entry("me")])
    assert change is not None
    assert change.joined == {"new"} and change.left == {"gone"}
    assert membership.members == {"me", "new"}


def test_a_change_says_what_moved_to_and_away_from_this_agent() -> None:
    membership = Membership("me")
    owned_alone = set(CONVERSATIONS)
    joined = membership.present(entry("other"))
    assert joined is not None
    moves = joined.moves(CONVERSATIONS)
    now_owned = {c for c in CONVERSATIONS if membership.owns(c)}
    assert moves.gained == frozenset()
    assert moves.lost == owned_alone - now_owned
    assert moves.moved == len(moves.lost)
    assert 0 < len(moves.lost) < len(CONVERSATIONS)
    left = membership.absent("conn-other", "agent")
    assert left is not None
    back = left.moves(CONVERSATIONS)
    assert (back.gained, back.lost, back.moved) == (moves.lost, frozenset(), len(moves.lost))
    assert left.describe() == "members me (-other)"


def test_a_change_between_others_moves_nothing_of_ours() -> None:
    membership = membership_of("me", {"a", "b"})
    mine = {c for c in CONVERSATIONS if membership.owns(c)}
    change = membership.absent("conn-a", "agent")
    assert change is not None
    moves = change.moves(CONVERSATIONS)
    assert moves.lost == frozenset()
    assert moves.gained == {c for c in CONVERSATIONS if membership.owns(c)} - mine
    assert moves.moved == len([c for c in CONVERSATIONS if owner_of(c, {"me", "a", "b"}) == "a"])


def test_a_draining_agent_owns_nothing_yet_is_alive_until_it_leaves() -> None:
    view = Membership("a")
    view.present(entry("b"))
    ids = [f"c{i}" for i in range(60)]
    bs = {c for c in ids if owner_of(c, {"a", "b"}) == "b"}
    assert bs

    draining = view.present(PresenceEntry("conn-b", "agent", "b", draining=True))
    assert draining is not None
    assert view.members == {"a"} and view.alive == {"a", "b"}
    assert draining.left == {"b"} and draining.gone == frozenset()
    assert draining.moves(ids).gained == bs  # taken over at once
    assert "-b (draining)" in draining.describe()

    left = view.absent("conn-b", "agent")
    assert left is not None
    assert view.members == {"a"} and view.alive == {"a"}
    assert left.gone == {"b"} and left.moves(ids).moved == 0
    assert "-b (drained)" in left.describe()


def test_an_agent_gone_without_draining_is_gone_at_once() -> None:
    view = Membership("a")
    view.present(entry("b"))
    change = view.absent("conn-b", "agent")
    assert change is not None and change.left == {"b"} and change.gone == {"b"}
