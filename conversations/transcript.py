"""The transcript fold: a conversation channel's messages -> each reply's parts, text and status.

Every reader of a conversation channel that is not the browser folds with this module: the
agent's recovery (what devices saw of a reply a dead agent left), the tests' devices, the relay
bench's devices and the soak's oracle. The browser's fold is `static/js/transcript.js`, written
to the same rules; `tests/unit/test_transcript.py` runs both on the recorded transcripts in
`tests/fixtures/transcripts/` and asserts they agree.

Input: messages in the order a reader received them (live, a history page read forwards, or
both). Each may be a plain dict in Ably's wire/JSON shape (`clientId`, numeric `action`,
`version.serial`, as `bench.rawably` hands them over) or any object with the SDK's attributes
(`client_id`, `action` as a number, an enum or ably-js's `"message.append"` string, `version`
as an object or a dict): ably-python's `Message`, a history page's items.

The rules (the wire shapes are declared in `conversations.events`):

- Trust: agent-only names (`start`, `response`, `token`, `snapshot`, `stop`, `refusal`) count
  only from the agent's clientId; from anyone else they are `ignored` (a forgery). A reader that
  already filtered (or trusts the channel) passes `agent_client_id=None`.
- A reply is keyed by `headers.responseId` (a message without one is ignored); `promptId` and
  `model` come from the first message that names them.
- Final is final: the first `stop` settles the status (`complete` if it names no known final
  status), its `stopReason` and its user-readable error (the data); nothing after it changes
  the reply, as on the page. Every `stop` heard is still recorded in `stops`, so a reader can
  tell when a later one contradicted the first.
- message-per-response (`response`): per message serial, each operation applies once and in
  version order. `create` sets the part's text (once per serial: a repeated create is a
  duplicate delivery), `append` adds its data unless its version serial is not newer than the
  last one applied (a duplicate, or older than an aggregate already folded in), `update` (a
  repair, or the aggregate from history or a resume) replaces the text unless it is older than
  the last version applied. Other actions (delete, meta, summary) change nothing.
- message-per-token (`token`): fragments by `seq` within their part, shown in `seq` order
  whatever order they came in; a doubled `seq` is dropped.
- `snapshot`: the whole text of one part so far. It covers every fragment below its
  `headers.seq` when it names one (an older snapshot than one applied is dropped), else every
  fragment received so far; later fragments continue from it.
- `refusal`: recorded in `refusals` (a malformed one is ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conversations import events

CREATE = "message.create"
UPDATE = "message.update"
APPEND = "message.append"
# Ably's wire numbers for message actions (ably-python's MessageAction has the same values).
_ACTION_NAMES = (
    CREATE,
    UPDATE,
    "message.delete",
    "meta",
    "message.summary",
    APPEND,
)
_INTEGER = re.compile(r"-?\d+")


@dataclass
class PartText:
    """One part (`text` or `thinking`) of a reply as it grows.

    message-per-response keeps `value`; message-per-token keeps `base` (the last snapshot) and
    the fragments from `base_seq` on, by seq.
    """

    value: str = ""
    base: str = ""
    base_seq: int = 0
    fragments: dict[int, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        if not self.fragments:
            return self.value
        return self.base + "".join(
            self.fragments[seq] for seq in sorted(self.fragments) if seq >= self.base_seq
        )


def _new_parts() -> dict[str, PartText]:
    return {str(part): PartText() for part in events.Part}


@dataclass(eq=False)
class FoldedReply:
    """What a reader shows of one reply: its parts, its status and how it ended."""

    response_id: str
    prompt_id: str = ""
    model: str = ""
    parts: dict[str, PartText] = field(default_factory=_new_parts)
    status: events.Status = events.Status.STREAMING
    stop_reason: str | None = None
    error: str = ""
    # The status of every `stop` heard for this reply, in arrival order; the first one counts.
    stops: list[events.Status] = field(default_factory=list)
    # The name of every trusted message of this reply, in arrival order (duplicates included).
    names: list[str] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.status in events.FINAL_STATUSES

    @property
    def text(self) -> str:
        return self.parts[events.Part.TEXT].text

    @property
    def thinking(self) -> str:
        return self.parts[events.Part.THINKING].text

    def part(self, name: Any) -> PartText:
        """The named part; an unknown or missing name is the text, as on the page."""
        found = self.parts.get(name) if isinstance(name, str) else None
        return found if found is not None else self.parts[events.Part.TEXT]


class Transcript:
    """The fold over one conversation channel; feed it messages with `apply` or `extend`."""

    def __init__(self, agent_client_id: str | None = None) -> None:
        self.agent_client_id = agent_client_id
        # responseId -> reply, in the order the replies were first heard of.
        self.replies: dict[str, FoldedReply] = {}
        self.refusals: list[events.Refusal] = []
        # Agent-only messages from anyone but the agent, and malformed agent messages.
        self.ignored: list[Any] = []
        self._newest_by_prompt: dict[str, str] = {}
        # message-per-response: serials created, and the last version serial applied to each.
        self._created: set[str] = set()
        self._versions: dict[str, str] = {}

    def extend(self, messages: Iterable[Any]) -> Transcript:
        for message in messages:
            self.apply(message)
        return self

    def reply_for(self, prompt_id: str) -> FoldedReply | None:
        """The newest reply to a prompt (a regenerated prompt has several)."""
        response_id = self._newest_by_prompt.get(prompt_id)
        return self.replies.get(response_id) if response_id else None

    def replies_to(self, prompt_id: str) -> list[FoldedReply]:
        """Every reply to a prompt, oldest first."""
        return [reply for reply in self.replies.values() if reply.prompt_id == prompt_id]

    def apply(self, message: Any) -> FoldedReply | None:
        """Fold one message in; the reply it concerns, or None (not about a reply, ignored)."""
        name = _field(message, "name")
        if name not in events.AGENT_NAMES:
            return None
        client_id = _field(message, "clientId", "client_id")
        if self.agent_client_id is not None and client_id != self.agent_client_id:
            self.ignored.append(message)
            return None
        data = _field(message, "data")
        extras = _field(message, "extras")
        if name == events.Name.REFUSAL:
            try:
                self.refusals.append(events.Refusal.from_wire(data, extras))
            except events.EventError:
                self.ignored.append(message)
            return None
        headers = _headers(extras)
        response_id = headers.get("responseId")
        if not isinstance(response_id, str) or not response_id:
            self.ignored.append(message)
            return None
        reply = self._reply(response_id, headers)
        reply.names.append(name)
        text = data if isinstance(data, str) else ""
        if name == events.Name.STOP:
            status = _final_status(headers.get("status"))
            reply.stops.append(status)
            if not reply.final:
                stop_reason = headers.get("stopReason")
                reply.status = status
                reply.stop_reason = stop_reason if isinstance(stop_reason, str) else None
                reply.error = text
            return reply
        if reply.final:
            return reply
        part = reply.part(headers.get("part"))
        if name == events.Name.RESPONSE:
            self._apply_response(message, part, text)
        elif name == events.Name.TOKEN:
            seq = _seq(headers.get("seq"))
            if seq is not None and seq >= part.base_seq and seq not in part.fragments:
                part.fragments[seq] = text
        elif name == events.Name.SNAPSHOT:
            _apply_snapshot(part, _seq(headers.get("seq")), text)
        return reply

    def _reply(self, response_id: str, headers: Mapping[str, Any]) -> FoldedReply:
        reply = self.replies.get(response_id)
        if reply is None:
            reply = self.replies[response_id] = FoldedReply(response_id)
        prompt_id = headers.get("promptId")
        if not reply.prompt_id and isinstance(prompt_id, str) and prompt_id:
            reply.prompt_id = prompt_id
            self._newest_by_prompt[prompt_id] = response_id
        model = headers.get("model")
        if not reply.model and isinstance(model, str):
            reply.model = model
        return reply

    def _apply_response(self, message: Any, part: PartText, text: str) -> None:
        action = _action(_field(message, "action"))
        if action not in (CREATE, APPEND, UPDATE):
            return
        serial = _field(message, "serial")
        serial = serial if isinstance(serial, str) and serial else None
        if action == CREATE:
            if serial is not None:
                if serial in self._created or serial in self._versions:
                    return  # delivered twice, or older than what is already folded in
                self._created.add(serial)
            part.value = text
            return
        version = _version_serial(message)
        # ably-js fills a missing version serial with the message serial: order is unknowable.
        if serial is not None and version is not None and version != serial:
            seen = self._versions.get(serial)
            if seen is not None and (version < seen or (action == APPEND and version == seen)):
                return
            self._versions[serial] = version
        if action == APPEND:
            part.value += text
        else:
            part.value = text


def fold(messages: Iterable[Any], agent_client_id: str | None = None) -> Transcript:
    """The transcript of `messages` (in the order received), trusting `agent_client_id`."""
    return Transcript(agent_client_id).extend(messages)


def _apply_snapshot(part: PartText, seq: int | None, text: str) -> None:
    if seq is not None and seq < part.base_seq:
        return  # older than a snapshot already applied
    covered = seq if seq is not None else max((s + 1 for s in part.fragments), default=0)
    covered = max(covered, part.base_seq)
    part.base = part.value = text
    part.base_seq = covered
    part.fragments = {s: piece for s, piece in part.fragments.items() if s >= covered}


def _field(message: Any, key: str, attribute: str | None = None) -> Any:
    """A field of a wire dict (`key`) or of an SDK message (`attribute`, default `key`)."""
    if isinstance(message, Mapping):
        return message.get(key)
    return getattr(message, attribute or key, None)


def _headers(extras: Any) -> Mapping[str, Any]:
    headers = extras.get("headers") if isinstance(extras, Mapping) else None
    return headers if isinstance(headers, Mapping) else {}


def _action(raw: Any) -> str | None:
    """A message action as ably-js names it, from a wire number, an SDK enum or a name.

    No action at all (a hand-built message) reads as a create.
    """
    if raw is None:
        return CREATE
    if isinstance(raw, int) and not isinstance(raw, bool):
        return _ACTION_NAMES[raw] if 0 <= raw < len(_ACTION_NAMES) else None
    return raw if isinstance(raw, str) else None


def _version_serial(message: Any) -> str | None:
    version = _field(message, "version")
    serial = _field(version, "serial") if version is not None else None
    return serial if isinstance(serial, str) and serial else None


def _seq(raw: Any) -> int | None:
    """A fragment index: an integer, or a string or float holding one; else None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and _INTEGER.fullmatch(raw):
        return int(raw)
    return None


def _final_status(raw: Any) -> events.Status:
    """The status a `stop` settles: a known final status, else `complete` (as on the page)."""
    if isinstance(raw, str) and raw in events.FINAL_STATUSES:
        return events.Status(raw)
    return events.Status.COMPLETE
