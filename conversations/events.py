"""Every message shape that crosses Ably, declared once.

Django, the agent, the browser client (through `client_contract()`, rendered into the page) and
the tests all use these names. A conversation is the channel `ai:<conversation-id>`; a user's
devices also share `user:<client-id>` for conversation-list updates.

Conversation channel contract:

- `prompt`   user device -> all. data = the prompt text; headers.promptId = a UUID the device made;
             headers.attachments (optional) = a JSON array of the files sent with it, each
             {id, name, kind, type, size, width?, height?, pages?} (ids and display metadata,
             never the bytes: see `AttachmentRef`).
             Issue 16, where it goes in the tree (both optional): headers.parentId = the
             responseId (or, before that reply started, the promptId) of the message it
             continues, as the sending device showed it; headers.editOf = the promptId of a
             prompt this one edits (it becomes that prompt's sibling: same parent). Neither: it
             continues the conversation's shown path.
- `regenerate` user device -> agent (and all). A new version of a prompt's reply (Regenerate,
             Retry): headers.promptId, headers.requestId = a UUID the device made. The agent
             claims (promptId, requestId) once, however many agents hear it; the new version
             becomes the shown path. While a reply of the same prompt is still streaming the
             request waits for it to end (documented policy: queued, never cancelling it).
- `path`     agent or server -> all. The shown path changed (a new prompt, branch or version,
             or a device picked another version): headers.leafId = the id (responseId, else
             promptId) of its newest message; data = a JSON array of the ids on the path,
             root first (at most PATH_EVENT_MAX_IDS, the newest). Devices show exactly these.
- `start`    agent -> all. headers responseId, promptId, model.
- `response` agent -> all (message-per-response): created empty, then appended to; headers
             responseId, promptId, model, part (`text` or `thinking`) on the create and every append.
- `token`    agent -> all (message-per-token): data = one fragment; same headers plus `seq`, the
             fragment's index within its part, so a client can drop a doubled fragment.
- `snapshot` agent -> all (message-per-token recovery): data = the full text of one part so far.
- `stop`     agent -> all. headers responseId, promptId, model, status, stopReason; data = a
             user-readable message when status is `error` (or `interrupted`), else empty.
             Published only after every `response`/`token` of the reply was acknowledged.
- `refusal`  agent -> all. A prompt the agent will not answer: malformed (not text, no valid
             headers.promptId, headers not an object), to a deleted conversation, or one it
             could not store. data = a user-readable message; headers.promptId when the prompt
             had a valid one, headers.reason (`malformed`, `deleted`, `unsaved`). Not named
             `error`: ably-python does not pass a message named `error` to a listener
             subscribed to every message (ably-js does).
- `cancel`   any participant -> agent. headers.responseId or headers.promptId.
- `title`    agent or server -> all. data = the conversation's new title.

Agents' control channel (`AGENTS_CONTROL_CHANNEL`, issue 15): only presence, no messages. Each
agent process enters with data = {"agentId": <its agent id>} (`control_presence_data`); all
agents share one clientId, so the agent id in the data is what tells members apart. No user
token's capability names the channel, so only the agent's key reaches it.

Clients trust `start`/`response`/`token`/`snapshot`/`stop`/`refusal` only from the agent's
clientId and
`title` and `path` only from the agent's or the server's; the agent trusts `prompt`/`cancel`/
`regenerate` only from a verified clientId that may write to the conversation.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

CONVERSATION_CHANNEL_PREFIX = "ai:"
USER_CHANNEL_PREFIX = "user:"
# Agents' membership (presence only); a namespace no user token's capability covers.
AGENTS_CONTROL_CHANNEL = "agents:control"


class EventError(ValueError):
    """A message on a channel does not match the contract."""


class Name(StrEnum):
    PROMPT = "prompt"
    START = "start"
    RESPONSE = "response"
    TOKEN = "token"
    SNAPSHOT = "snapshot"
    STOP = "stop"
    CANCEL = "cancel"
    TITLE = "title"
    REFUSAL = "refusal"
    REGENERATE = "regenerate"
    PATH = "path"
    # On the user channel.
    CONVERSATION = "conversation"


AGENT_NAMES = frozenset(
    {Name.START, Name.RESPONSE, Name.TOKEN, Name.SNAPSHOT, Name.STOP, Name.REFUSAL}
)


class Status(StrEnum):
    STREAMING = "streaming"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    ERROR = "error"
    INTERRUPTED = "interrupted"


FINAL_STATUSES = frozenset({Status.COMPLETE, Status.CANCELLED, Status.ERROR, Status.INTERRUPTED})


class Part(StrEnum):
    TEXT = "text"
    THINKING = "thinking"


class AgentStatus(StrEnum):
    """The agent's status on a conversation channel, as devices show it.

    The agent's presence data carries `idle` (it is here) or `retrying` (the model is
    overloaded); `thinking` and `streaming` are what a device derives from a reply in progress
    (its `start`, then its first text), so a reply costs no presence update.
    """

    IDLE = "idle"
    THINKING = "thinking"
    STREAMING = "streaming"
    RETRYING = "retrying"


class ListAction(StrEnum):
    CREATED = "created"
    RENAMED = "renamed"
    ARCHIVED = "archived"
    UNARCHIVED = "unarchived"
    DELETED = "deleted"
    ACTIVITY = "activity"


def conversation_channel(conversation_id: uuid.UUID | str) -> str:
    return f"{CONVERSATION_CHANNEL_PREFIX}{conversation_id}"


def conversation_id_from_channel(channel_name: str) -> uuid.UUID | None:
    """The conversation id of an `ai:` channel name, or None for any other channel."""
    if not channel_name.startswith(CONVERSATION_CHANNEL_PREFIX):
        return None
    try:
        return uuid.UUID(channel_name[len(CONVERSATION_CHANNEL_PREFIX) :])
    except ValueError:
        return None


def user_channel(client_id: str) -> str:
    return f"{USER_CHANNEL_PREFIX}{client_id}"


def control_presence_data(agent_id: str, *, draining: bool = False) -> dict[str, Any]:
    """An agent's presence data on `AGENTS_CONTROL_CHANNEL`.

    `draining`: the agent is stopping cleanly. It owns nothing any more (others take its
    conversations over at once) but is still alive, finishing the replies it was writing, so
    nobody may settle those as interrupted until it has left.
    """
    return {"agentId": agent_id, "draining": True} if draining else {"agentId": agent_id}


def control_presence_draining(data: Any) -> bool:
    """Whether a control-channel presence member's data says it is draining."""
    return isinstance(data, dict) and data.get("draining") is True


def agent_id_from_control_presence(data: Any) -> str | None:
    """The agent id in a control-channel presence member's data, or None if it names none."""
    if not isinstance(data, dict):
        return None
    agent_id = data.get("agentId")
    return agent_id if isinstance(agent_id, str) and agent_id else None


def _headers(extras: Any) -> dict[str, Any]:
    if extras is None:
        return {}
    if not isinstance(extras, dict):
        raise EventError("extras must be an object")
    headers = extras.get("headers") or {}
    if not isinstance(headers, dict):
        raise EventError("extras.headers must be an object")
    return headers


def _uuid_header(headers: dict[str, Any], key: str) -> str:
    value = headers.get(key)
    if not isinstance(value, str):
        raise EventError(f"headers.{key} is missing")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise EventError(f"headers.{key} is not a UUID") from None


def _extras(headers: dict[str, Any]) -> dict[str, Any]:
    return {"headers": {k: v for k, v in headers.items() if v is not None}}


# More than the composer ever sends (settings cap it lower); keeps a prompt far under 64 KiB.
MAX_PROMPT_ATTACHMENTS = 100
ATTACHMENT_KINDS = ("image", "pdf", "text")


@dataclass(frozen=True)
class AttachmentRef:
    """One file sent with a prompt, as the prompt carries it: an id and what devices show.

    The agent trusts only the id (and checks it against the database); the rest is display.
    """

    id: str
    name: str
    kind: str
    media_type: str
    size: int
    width: int | None = None
    height: int | None = None
    pages: int | None = None

    def to_dict(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "type": self.media_type,
            "size": self.size,
        }
        for key in ("width", "height", "pages"):
            if getattr(self, key) is not None:
                item[key] = getattr(self, key)
        return item

    @classmethod
    def from_dict(cls, item: Any) -> AttachmentRef:
        if not isinstance(item, dict):
            raise EventError("each attachment must be an object")
        try:
            attachment_id = str(uuid.UUID(str(item.get("id"))))
        except ValueError:
            raise EventError("attachment id is not a UUID") from None
        kind = item.get("kind")
        if kind not in ATTACHMENT_KINDS:
            raise EventError("attachment kind is not image, pdf or text")

        def number(key: str) -> int | None:
            value = item.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        return cls(
            id=attachment_id,
            name=str(item.get("name") or "file")[:255],
            kind=kind,
            media_type=str(item.get("type") or "")[:100],
            size=number("size") or 0,
            width=number("width"),
            height=number("height"),
            pages=number("pages"),
        )


def _attachments_header(headers: dict[str, Any]) -> tuple[AttachmentRef, ...]:
    # A JSON string, not a nested array: Ably header values are meant to be primitives.
    raw = headers.get("attachments")
    if raw in (None, ""):
        return ()
    if not isinstance(raw, str):
        raise EventError("headers.attachments must be a JSON string")
    try:
        items = json.loads(raw)
    except ValueError:
        raise EventError("headers.attachments is not JSON") from None
    if not isinstance(items, list) or len(items) > MAX_PROMPT_ATTACHMENTS:
        raise EventError(f"headers.attachments must be a list of at most {MAX_PROMPT_ATTACHMENTS}")
    return tuple(AttachmentRef.from_dict(item) for item in items)


def _optional_uuid_header(headers: dict[str, Any], key: str) -> str | None:
    return _uuid_header(headers, key) if headers.get(key) else None


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    attachments: tuple[AttachmentRef, ...] = ()
    # Issue 16: the message it continues, and the prompt it edits (see the module docstring).
    parent_id: str | None = None
    edit_of: str | None = None

    name = Name.PROMPT

    def data(self) -> str:
        return self.text

    def extras(self) -> dict[str, Any]:
        attachments = (
            json.dumps([item.to_dict() for item in self.attachments], separators=(",", ":"))
            if self.attachments
            else None
        )
        return _extras(
            {
                "promptId": self.prompt_id,
                "attachments": attachments,
                "parentId": self.parent_id,
                "editOf": self.edit_of,
            }
        )

    @classmethod
    def from_wire(cls, data: Any, extras: Any) -> Prompt:
        if not isinstance(data, str):
            raise EventError("prompt data must be text")
        headers = _headers(extras)
        return cls(
            prompt_id=_uuid_header(headers, "promptId"),
            text=data,
            attachments=_attachments_header(headers),
            parent_id=_optional_uuid_header(headers, "parentId"),
            edit_of=_optional_uuid_header(headers, "editOf"),
        )


@dataclass(frozen=True)
class Regenerate:
    """A new reply version for a prompt (Regenerate, Retry): claimed once per requestId."""

    prompt_id: str
    request_id: str

    name = Name.REGENERATE

    def data(self) -> str:
        return ""

    def extras(self) -> dict[str, Any]:
        return _extras({"promptId": self.prompt_id, "requestId": self.request_id})

    @classmethod
    def from_wire(cls, data: Any, extras: Any) -> Regenerate:
        headers = _headers(extras)
        return cls(
            prompt_id=_uuid_header(headers, "promptId"),
            request_id=_uuid_header(headers, "requestId"),
        )


# A `path` event names at most this many ids (the newest): ~40 bytes each, well inside 64 KiB.
# Above the oldest one named, the path is unchanged (a switch only changes what is below it).
PATH_EVENT_MAX_IDS = 1000


@dataclass(frozen=True)
class Path:
    """The shown path changed: its ids, root first, ending with `leaf_id`."""

    ids: tuple[str, ...]

    name = Name.PATH

    @property
    def leaf_id(self) -> str:
        return self.ids[-1] if self.ids else ""

    def data(self) -> str:
        return json.dumps(list(self.ids[-PATH_EVENT_MAX_IDS:]), separators=(",", ":"))

    def extras(self) -> dict[str, Any]:
        return _extras({"leafId": self.leaf_id})

    @classmethod
    def from_wire(cls, data: Any, extras: Any) -> Path:
        try:
            ids = json.loads(data) if isinstance(data, str) else None
        except ValueError:
            ids = None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise EventError("path data must be a JSON array of ids")
        return cls(ids=tuple(ids))


@dataclass(frozen=True)
class ReplyHeaders:
    """The headers every agent message about one reply carries (B1/B2: on every append too)."""

    response_id: str
    prompt_id: str
    model: str

    def to_dict(self, **more: Any) -> dict[str, Any]:
        return {
            "responseId": self.response_id,
            "promptId": self.prompt_id,
            "model": self.model,
            **more,
        }

    @classmethod
    def from_extras(cls, extras: Any) -> ReplyHeaders:
        headers = _headers(extras)
        model = headers.get("model")
        return cls(
            response_id=_uuid_header(headers, "responseId"),
            prompt_id=_uuid_header(headers, "promptId"),
            model=model if isinstance(model, str) else "",
        )


@dataclass(frozen=True)
class Start:
    reply: ReplyHeaders

    name = Name.START

    def data(self) -> str:
        return ""

    def extras(self) -> dict[str, Any]:
        return _extras(self.reply.to_dict())


@dataclass(frozen=True)
class ResponseChunk:
    """message-per-response: the create (empty text) and each append of one part."""

    reply: ReplyHeaders
    part: Part
    text: str

    name = Name.RESPONSE

    def data(self) -> str:
        return self.text

    def extras(self) -> dict[str, Any]:
        return _extras(self.reply.to_dict(part=str(self.part)))


@dataclass(frozen=True)
class Token:
    """message-per-token: one fragment of one part."""

    reply: ReplyHeaders
    part: Part
    seq: int
    text: str

    name = Name.TOKEN

    def data(self) -> str:
        return self.text

    def extras(self) -> dict[str, Any]:
        return _extras(self.reply.to_dict(part=str(self.part), seq=self.seq))


@dataclass(frozen=True)
class Snapshot:
    """message-per-token recovery: the whole text of one part so far (B5)."""

    reply: ReplyHeaders
    part: Part
    text: str

    name = Name.SNAPSHOT

    def data(self) -> str:
        return self.text

    def extras(self) -> dict[str, Any]:
        return _extras(self.reply.to_dict(part=str(self.part)))


@dataclass(frozen=True)
class Stop:
    reply: ReplyHeaders
    status: Status
    stop_reason: str | None = None
    error_message: str = ""

    name = Name.STOP

    def data(self) -> str:
        return self.error_message

    def extras(self) -> dict[str, Any]:
        return _extras(self.reply.to_dict(status=str(self.status), stopReason=self.stop_reason))

    @classmethod
    def from_wire(cls, data: Any, extras: Any) -> Stop:
        headers = _headers(extras)
        try:
            status = Status(headers.get("status", ""))
        except ValueError:
            raise EventError("headers.status is not a reply status") from None
        return cls(
            reply=ReplyHeaders.from_extras(extras),
            status=status,
            stop_reason=headers.get("stopReason"),
            error_message=data if isinstance(data, str) else "",
        )


class RefusalReason(StrEnum):
    MALFORMED = "malformed"
    DELETED = "deleted"
    UNSAVED = "unsaved"


@dataclass(frozen=True)
class Refusal:
    """The agent will not answer a prompt; `message` says why, in the user's words."""

    reason: RefusalReason
    message: str
    prompt_id: str | None = None

    name = Name.REFUSAL

    def data(self) -> str:
        return self.message

    def extras(self) -> dict[str, Any]:
        return _extras({"promptId": self.prompt_id, "reason": str(self.reason)})

    @classmethod
    def from_wire(cls, data: Any, extras: Any) -> Refusal:
        headers = _headers(extras)
        try:
            reason = RefusalReason(headers.get("reason", ""))
        except ValueError:
            raise EventError("headers.reason is not a refusal reason") from None
        prompt_id = _uuid_header(headers, "promptId") if headers.get("promptId") else None
        return cls(
            reason=reason, message=data if isinstance(data, str) else "", prompt_id=prompt_id
        )


def prompt_id_of(extras: Any) -> str | None:
    """The valid promptId of a (possibly malformed) prompt, if it has one."""
    try:
        return _uuid_header(_headers(extras), "promptId")
    except EventError:
        return None


@dataclass(frozen=True)
class Cancel:
    response_id: str | None = None
    prompt_id: str | None = None

    name = Name.CANCEL

    def data(self) -> str:
        return ""

    def extras(self) -> dict[str, Any]:
        return _extras({"responseId": self.response_id, "promptId": self.prompt_id})

    @classmethod
    def from_wire(cls, data: Any, extras: Any) -> Cancel:
        headers = _headers(extras)
        response_id = _uuid_header(headers, "responseId") if headers.get("responseId") else None
        prompt_id = _uuid_header(headers, "promptId") if headers.get("promptId") else None
        if response_id is None and prompt_id is None:
            raise EventError("cancel needs headers.responseId or headers.promptId")
        return cls(response_id=response_id, prompt_id=prompt_id)


@dataclass(frozen=True)
class Title:
    title: str

    name = Name.TITLE

    def data(self) -> str:
        return self.title

    def extras(self) -> dict[str, Any]:
        return _extras({})


@dataclass(frozen=True)
class ConversationChange:
    """On `user:<client-id>`: a change to the conversation list made on one of the user's devices."""

    action: ListAction
    conversation_id: str
    title: str = ""
    updated_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    name = Name.CONVERSATION

    def data(self) -> dict[str, Any]:
        return {
            "action": str(self.action),
            "id": self.conversation_id,
            "title": self.title,
            "updatedAt": self.updated_at,
            **self.extra,
        }

    def extras(self) -> dict[str, Any]:
        return _extras({})


def client_contract() -> dict[str, Any]:
    """The names the browser client switches on, rendered into each page as JSON."""
    return {
        "conversationChannelPrefix": CONVERSATION_CHANNEL_PREFIX,
        "userChannelPrefix": USER_CHANNEL_PREFIX,
        "names": {member.name.lower(): member.value for member in Name},
        "agentNames": sorted(AGENT_NAMES),
        "statuses": {member.name.lower(): member.value for member in Status},
        "finalStatuses": sorted(FINAL_STATUSES),
        "parts": {member.name.lower(): member.value for member in Part},
        "agentStatuses": {member.name.lower(): member.value for member in AgentStatus},
        "listActions": {member.name.lower(): member.value for member in ListAction},
    }
