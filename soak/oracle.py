"""The soak's oracle: every device's final state against the database and a fresh reader.

Devices agreeing with each other proves little (issue 13: devices showed `complete` while the
database, and so every reload, said `interrupted`). For each prompt a scenario sent, `judge`
puts side by side
- the database: the prompt row (stored?) and its one reply row (status, text);
- every device that was attached: the replies it rendered for that prompt (how many distinct
  responseIds: answered exactly once?), each one's final status and text, and whether a later
  `stop` contradicted an earlier one (a device that showed `complete`, then `interrupted`);
- a fresh reader: a new client with a Django-minted token of the conversation's owner that
  reads the channel's history from the start and folds it the way a device and the page do
  (`conversations.transcript`: agent messages only from the agent's clientId, `response`
  operations in version order, `token`s by seq, `snapshot`s, the first `stop` final).
A prompt passes when all of them show the same final status and text, and (where the scenario
knows it) that is the expected text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ably import AblyRest

from conversations import events
from conversations.transcript import FoldedReply, fold


@dataclass
class Sent:
    """One prompt a scenario published: which conversation, from which devices' group."""

    conversation_id: str
    prompt_id: str
    devices: list[Any]
    owner: Any
    expected: str | None = None  # the exact reply text, when the scenario knows it
    # Statuses the scenario accepts as an outcome (e.g. `interrupted` after a kill).
    accept: frozenset[str] = frozenset({"complete"})
    sent_at: float = field(default_factory=time.monotonic)


@dataclass
class Rendered:
    status: str | None = None
    text: str = ""
    statuses: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    prompts: int = 0
    not_stored: int = 0
    unanswered: int = 0  # no reply row in the database
    db_streaming: int = 0
    device_not_final: int = 0  # device x prompt pairs without a final state
    answered_twice: int = 0
    flipped: int = 0  # a device's final state later contradicted
    disagree_db: int = 0  # device x prompt pairs whose (status, text) differ from the database
    disagree_reader: int = 0  # prompts the fresh reader shows differently from the database
    wrong_text: int = 0
    unaccepted_status: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 12:
            self.problems.append(text)

    # Prompts not stored, not answered, or left `streaming` (each counted once).
    lost: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.device_not_final
            or self.answered_twice
            or self.flipped
            or self.disagree_db
            or self.disagree_reader
            or self.wrong_text
            or self.unaccepted_status
        )

    def summary(self) -> str:
        return (
            f"{self.prompts} prompts, {self.lost} lost (not stored {self.not_stored}, no reply "
            f"{self.unanswered}, left streaming {self.db_streaming}), {self.device_not_final} "
            f"device replies not final, {self.answered_twice} answered twice, "
            f"{self.disagree_db} device/DB disagreements, {self.disagree_reader} reader/DB "
            f"disagreements, {self.flipped} flipped, {self.wrong_text} wrong text, "
            f"{self.unaccepted_status} unexpected status"
        )

    def short(self) -> str:
        """Only what went wrong, e.g. `2 flipped, 1 reader != DB` (or `ok`)."""
        counts = {
            "lost": self.lost,
            "device not final": self.device_not_final,
            "answered twice": self.answered_twice,
            "device != DB": self.disagree_db,
            "reader != DB": self.disagree_reader,
            "flipped": self.flipped,
            "wrong text": self.wrong_text,
            "unexpected status": self.unaccepted_status,
        }
        wrong = [f"{count} {name}" for name, count in counts.items() if count]
        return ", ".join(wrong) or "ok"

    def row(self) -> list[Any]:
        return [
            self.prompts,
            self.lost,
            self.device_not_final,
            self.answered_twice,
            self.disagree_db,
            self.disagree_reader,
            self.flipped,
            self.wrong_text,
            " ".join(f"{k}:{v}" for k, v in sorted(self.statuses.items())) or "-",
        ]


READER_ATTEMPTS = 4

VERDICT_HEADERS = [
    "prompts",
    "lost",
    "device not final",
    "answered twice",
    "device != DB",
    "reader != DB",
    "flipped",
    "wrong text",
    "DB statuses",
]


def database_state(conversation_ids: Iterable[str]) -> dict[str, Any]:
    """prompt ids stored, and the reply row of each answered prompt (status, text)."""
    from django.db import connections

    from conversations.models import Message

    # A scenario may have had the database kill its connections (pg_terminate_backend).
    connections.close_all()
    rows = Message.objects.filter(conversation_id__in=list(conversation_ids)).values_list(
        "prompt_id", "role", "status", "text"
    )
    stored: set[str] = set()
    replies: dict[str, tuple[str, str]] = {}
    for prompt_id, role, status, text in rows:
        if role == Message.Role.USER:
            stored.add(str(prompt_id))
        else:
            replies[str(prompt_id)] = (str(status), text)
    return {"stored": stored, "replies": replies}


async def settled_database(
    conversation_ids: Iterable[str], timeout: float = 15.0
) -> dict[str, Any]:
    """The database once no reply is `streaming` any more (or `timeout` passed)."""
    from asgiref.sync import sync_to_async

    ids = list(conversation_ids)
    deadline = time.monotonic() + timeout
    while True:
        state = await sync_to_async(database_state)(ids)
        streaming = [p for p, (s, _) in state["replies"].items() if s == "streaming"]
        if not streaming or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.25)


def rendered(reply: FoldedReply) -> Rendered:
    """What a reader shows of a folded reply: its final status (None while streaming), its text
    and the status of every `stop` it heard."""
    return Rendered(
        str(reply.status) if reply.final else None,
        reply.text,
        [str(status) for status in reply.stops],
    )


def render(messages: Iterable[Any], agent_client_id: str) -> dict[str, dict[str, Rendered]]:
    """promptId -> responseId -> what a device shows, from messages in channel order."""
    replies: dict[str, dict[str, Rendered]] = {}
    for reply in fold(messages, agent_client_id).replies.values():
        if reply.prompt_id:
            replies.setdefault(reply.prompt_id, {})[reply.response_id] = rendered(reply)
    return replies


async def fresh_reader(conversation_id: str, owner: Any, endpoint: str) -> dict[str, Any]:
    """What a new device of the owner would rebuild from the channel's whole history."""
    from asgiref.sync import sync_to_async
    from django.conf import settings

    from conversations import realtime
    from conversations.agent.ably_adapter import client_options
    from conversations.models import Conversation

    def token() -> str | None:
        conversation = Conversation.objects.filter(pk=conversation_id).first()
        return realtime.create_token(owner, conversation) if conversation else None

    minted = await sync_to_async(token)()
    if minted is None:
        return {}
    client = AblyRest(token=minted, **client_options(endpoint))
    items: list[Any] = []
    try:
        channel = client.channels.get(events.conversation_channel(conversation_id))
        page = await channel.history(direction="forwards", limit=1000)
        while True:
            items.extend(page.items)
            if not page.has_next():
                break
            page = await page.next()
    finally:
        await client.close()
    return render(items, settings.ABLY_AGENT_CLIENT_ID)


def device_view(device: Any, prompt_id: str) -> dict[str, Rendered]:
    """responseId -> what this device rendered for the prompt (its live rendering)."""
    return {reply.response_id: rendered(reply) for reply in device.transcript.replies_to(prompt_id)}


async def wait_final(sent: list[Sent], timeout: float) -> None:
    """Until every device shows a final state for every prompt, or `timeout` passed."""
    deadline = time.monotonic() + timeout
    for item in sent:
        for device in item.devices:
            try:
                await device.final_reply(item.prompt_id, max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                pass


async def judge(
    sent: list[Sent], endpoint: str, *, expect_refused: Iterable[str] = ()
) -> tuple[Verdict, dict[str, Any]]:
    """Compare every device, the database and a fresh reader for every prompt in `sent`."""
    refused = set(expect_refused)
    verdict = Verdict()
    conversations = {s.conversation_id: s.owner for s in sent}
    database = await settled_database(conversations)
    readers: dict[str, Any] = {}
    semaphore = asyncio.Semaphore(20)

    async def read(conversation_id: str, owner: Any) -> None:
        # A reader that cannot reach Ably (a timeout on a saturated machine) tries again, as a
        # person reloading would; only then does it count as a disagreement.
        async with semaphore:
            for attempt in range(READER_ATTEMPTS):
                try:
                    readers[conversation_id] = await fresh_reader(conversation_id, owner, endpoint)
                    return
                except Exception as error:  # noqa: BLE001 - reported as a disagreement below
                    readers[conversation_id] = {"error": f"{type(error).__name__}: {error}"}
                    await asyncio.sleep(0.5 * 2**attempt)

    await asyncio.gather(*(read(c, o) for c, o in conversations.items()))
    for item in sent:
        verdict.prompts += 1
        pid = item.prompt_id
        if pid in refused:
            continue
        if pid not in database["stored"]:
            verdict.not_stored += 1
            verdict.problem(f"{pid}: prompt not stored")
        reply = database["replies"].get(pid)
        if pid not in database["stored"] or reply is None or reply[0] == "streaming":
            verdict.lost += 1
        if reply is None:
            verdict.unanswered += 1
            verdict.problem(f"{pid}: no reply in the database")
            db_status, db_text = None, ""
        else:
            db_status, db_text = reply
            verdict.statuses[db_status] = verdict.statuses.get(db_status, 0) + 1
            if db_status == "streaming":
                verdict.db_streaming += 1
                verdict.problem(f"{pid}: left streaming in the database")
            elif db_status not in item.accept:
                verdict.unaccepted_status += 1
                shown = item.devices[0].reply_for(pid) if item.devices else None
                told = f": devices told {shown.error!r}" if shown and shown.error else ""
                verdict.problem(
                    f"{pid}: database status {db_status}, accepted {set(item.accept)}{told}"
                )
            if item.expected is not None and db_status == "complete" and db_text != item.expected:
                verdict.wrong_text += 1
                verdict.problem(
                    f"{pid}: database text {len(db_text)} chars, expected {len(item.expected)}"
                )
        for index, device in enumerate(item.devices):
            views = device_view(device, pid)
            if len(views) > 1:
                verdict.answered_twice += 1
                verdict.problem(f"{pid}: device {index} saw {len(views)} replies")
            view = next(iter(views.values()), None)
            if view is None or view.status is None:
                verdict.device_not_final += 1
                verdict.problem(f"{pid}: device {index} shows no final state")
                continue
            if len(set(view.statuses)) > 1:
                verdict.flipped += 1
                verdict.problem(f"{pid}: device {index} was told {view.statuses}")
            if reply is not None and (view.status, view.text) != (db_status, db_text):
                verdict.disagree_db += 1
                verdict.problem(
                    f"{pid}: device {index} shows {view.status}/{len(view.text)} chars, "
                    f"the database {db_status}/{len(db_text)} chars"
                )
        reader = readers.get(item.conversation_id, {})
        if "error" in reader:
            verdict.disagree_reader += 1
            verdict.problem(f"{pid}: fresh reader failed: {reader['error']}")
            continue
        shown = reader.get(pid, {})
        if len(shown) > 1:
            verdict.answered_twice += 1
            verdict.problem(f"{pid}: channel history holds {len(shown)} replies")
        view = next(iter(shown.values()), None)
        if reply is not None and (view is None or (view.status, view.text) != (db_status, db_text)):
            verdict.disagree_reader += 1
            verdict.problem(
                f"{pid}: fresh reader shows "
                f"{'nothing' if view is None else f'{view.status}/{len(view.text)} chars'}, "
                f"the database {db_status}/{len(db_text)} chars"
            )
    return verdict, database
