"""Which agent process owns which conversation: rendezvous hashing over the live members.

Pure logic, no sockets: `control.py` feeds it the presence of `events.AGENTS_CONTROL_CHANNEL`.

**Ownership.** A conversation belongs to the member with the highest score
`blake2b(member id, conversation id)` (rendezvous, or highest-random-weight, hashing). Every
agent computes it alone from the member set and agrees with every other agent that sees the
same set; when a member joins it takes about 1/K of the conversations, each from whoever had
it, and when one leaves only its own conversations move. The hash is blake2b, never Python's
`hash()`, which is salted per process.

**Members.** All agents share one Ably clientId, so a member is an agent id: the `agentId` in a
control-channel presence entry's data. Ably keys presence entries by (connectionId, clientId),
so one agent may have two entries (a connection replaced after a failed resume re-enters while
the old one awaits its presence timeout): the agent stays a member while any of its entries
is present. An agent always counts itself a member, also before its own enter comes back.

**Leaving.** Ably removes an entry with a `leave` event (a clean leave, or ~15 s after its
connection died) or, in a presence sync, by marking it `absent`; both remove the entry.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

ConversationId = str | uuid.UUID


def _score(member_id: str, conversation_id: ConversationId) -> int:
    # A separator no agent id or conversation id contains, so ("a", "bc") != ("ab", "c").
    key = f"{member_id}\x00{conversation_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def owner_of(conversation_id: ConversationId, members: Iterable[str]) -> str | None:
    """The member that owns `conversation_id`; None when there are no members.

    A UUID and its canonical string (`str(uuid)`) hash alike. Ties (64-bit scores, so only in
    theory) go to the greater member id, so the answer never depends on iteration order.
    """
    conversation = str(conversation_id)
    return max(members, key=lambda member: (_score(member, conversation), member), default=None)


@dataclass(frozen=True)
class PresenceEntry:
    """One control-channel presence entry as Ably keys it, and the agent it names."""

    connection_id: str
    client_id: str
    agent_id: str
    # Stopping cleanly: alive (finishing its replies) but owning nothing.
    draining: bool = False

    @property
    def member_key(self) -> tuple[str, str]:
        return (self.connection_id, self.client_id)


@dataclass(frozen=True)
class Moves:
    """How a membership change moved a set of conversations, seen from one agent."""

    # Now owned by this agent, owned by another before.
    gained: frozenset[str]
    # Owned by this agent before, now by another.
    lost: frozenset[str]
    # Every conversation whose owner changed, this agent's or not.
    moved: int


@dataclass(frozen=True)
class MembershipChange:
    own_id: str
    # The owning members (live and not draining), before and after.
    before: frozenset[str]
    after: frozenset[str]
    # Agents with no presence entry left at all: gone, not merely draining. Only their
    # `streaming` replies may be settled as interrupted.
    gone: frozenset[str] = frozenset()

    @property
    def joined(self) -> frozenset[str]:
        return self.after - self.before

    @property
    def left(self) -> frozenset[str]:
        return self.before - self.after

    def moves(self, conversation_ids: Iterable[ConversationId]) -> Moves:
        """Which of `conversation_ids` this change moved to this agent, away from it, in all."""
        gained: set[str] = set()
        lost: set[str] = set()
        moved = 0
        for conversation_id in conversation_ids:
            was = owner_of(conversation_id, self.before)
            now = owner_of(conversation_id, self.after)
            if was == now:
                continue
            moved += 1
            if now == self.own_id:
                gained.add(str(conversation_id))
            elif was == self.own_id:
                lost.add(str(conversation_id))
        return Moves(frozenset(gained), frozenset(lost), moved)

    def describe(self) -> str:
        """For the log: `members a, b (+b, -c)`."""
        delta = [f"+{m}" for m in sorted(self.joined)] + [
            f"-{m}" if m in self.gone else f"-{m} (draining)" for m in sorted(self.left)
        ]
        delta += [f"-{m} (drained)" for m in sorted(self.gone - self.left)]
        return f"members {', '.join(sorted(self.after))} ({', '.join(delta)})"


class Membership:
    """This agent's view of the live agents, kept from control-channel presence."""

    def __init__(self, own_id: str) -> None:
        if not own_id:
            raise ValueError("own agent id must not be empty")
        self.own_id = own_id
        self._entries: dict[tuple[str, str], PresenceEntry] = {}
        self._members = frozenset({own_id})
        self._present = frozenset({own_id})

    @property
    def members(self) -> frozenset[str]:
        """The owning agent ids (live, not draining); always includes this agent's own."""
        return self._members

    @property
    def alive(self) -> frozenset[str]:
        """Every agent id still present, draining ones included (their replies are live)."""
        return self._present

    def owner_of(self, conversation_id: ConversationId) -> str:
        owner = owner_of(conversation_id, self._members)
        assert owner is not None  # The own id is always a member.
        return owner

    def owns(self, conversation_id: ConversationId) -> bool:
        return self.owner_of(conversation_id) == self.own_id

    def present(self, entry: PresenceEntry) -> MembershipChange | None:
        """An `enter`, `present` or `update`: the entry is live. The change, if the set changed."""
        self._entries[entry.member_key] = entry
        return self._recompute()

    def absent(self, connection_id: str, client_id: str) -> MembershipChange | None:
        """A `leave` (or `absent` in a sync) of the entry (connection_id, client_id)."""
        self._entries.pop((connection_id, client_id), None)
        return self._recompute()

    def replace(self, entries: Iterable[PresenceEntry]) -> MembershipChange | None:
        """A whole presence snapshot (`presence.get()`): exactly these entries are live."""
        self._entries = {entry.member_key: entry for entry in entries}
        return self._recompute()

    def _recompute(self) -> MembershipChange | None:
        entries = self._entries.values()
        # An agent on two connections owns while either entry is not draining.
        members = frozenset(e.agent_id for e in entries if not e.draining) | {self.own_id}
        present = frozenset(e.agent_id for e in entries) | {self.own_id}
        if members == self._members and present == self._present:
            return None
        change = MembershipChange(self.own_id, self._members, members, self._present - present)
        self._members, self._present = members, present
        return change
