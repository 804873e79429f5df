"""A prompt's attachments on the agent's side: who may use them, and how they reach Claude.

`link_to_prompt` runs when a prompt is taken in: it accepts only attachments of the prompt's own
conversation, uploaded by a user who may write to it, and links them to the prompt (so every
device shows them after a reload; a retried prompt may link the same files again). `add_to_context` turns the linked
files of the conversation's path into content blocks: images as `image` blocks, PDFs as
`document` blocks (base64), text files as `text` blocks. The prompt's own files always go in;
earlier ones are added newest first while the token budget, the request size and the API's
per-request image/page count allow, and each one left out leaves a note in its turn.

Synchronous and short, like `store`: the agent calls these through `db()`.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

from conversations.agent.model import CHARS_PER_TOKEN
from conversations.models import Attachment, Conversation, Message

# The API's own downscaling before it prices an image (docs: "Images and vision").
RESIZE_LONG_EDGE = 1568
RESIZE_MAX_PIXELS = 1600 * 750
PIXELS_PER_TOKEN = 750
# A PDF page costs its text plus an image of the page: 1,500-3,000 tokens (docs: "PDF support").
PDF_TOKENS_PER_PAGE = 2500
# The API refuses more than 100 images and PDF pages together in one request.
MAX_MEDIA_ITEMS = 100
# Room in the request body for everything that is not a file (system prompt, text turns).
REQUEST_TEXT_ALLOWANCE = 2 * 1024 * 1024

REFUSED = (
    "This message refers to {count} that {verb} not part of this conversation (or no longer "
    "exist) or {verb} not yours to send, so it was not sent to Claude. Remove {pronoun} and "
    "send it again."
)


def image_tokens(width: int, height: int) -> int:
    """Pixels / 750 after the API scales the image down (whole pixels), rounded up."""
    width, height = max(1, width), max(1, height)
    scale = min(
        1.0, RESIZE_LONG_EDGE / max(width, height), math.sqrt(RESIZE_MAX_PIXELS / (width * height))
    )
    if scale < 1.0:
        width, height = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    return max(1, math.ceil(width * height / PIXELS_PER_TOKEN))


def estimated_tokens(attachment: Attachment) -> int:
    if attachment.kind == Attachment.Kind.IMAGE:
        return image_tokens(attachment.width or 1, attachment.height or 1)
    if attachment.kind == Attachment.Kind.PDF:
        return PDF_TOKENS_PER_PAGE * (attachment.pages or 1)
    return attachment.size // CHARS_PER_TOKEN + 1


def _media_items(attachment: Attachment) -> int:
    if attachment.kind == Attachment.Kind.IMAGE:
        return 1
    if attachment.kind == Attachment.Kind.PDF:
        return attachment.pages or 1
    return 0


def _request_bytes(attachment: Attachment) -> int:
    if attachment.kind == Attachment.Kind.TEXT:
        return attachment.size
    return (attachment.size + 2) // 3 * 4


def link_to_prompt(prompt: Message, attachment_ids: list[str]) -> str | None:
    """Link the prompt's attachments to it; a user-readable refusal if any may not be used.

    Idempotent: a prompt replayed from history links the same files again harmlessly.
    """
    if not attachment_ids:
        return None
    wanted = list(dict.fromkeys(attachment_ids))
    limit = settings.ATTACHMENT_MAX_FILES_PER_PROMPT
    if len(wanted) > limit:
        return (
            f"This message has {len(wanted)} attachments; at most {limit} can go with one "
            "message, so it was not sent to Claude."
        )
    found = {
        str(attachment.pk): attachment
        for attachment in Attachment.objects.select_related("owner").filter(pk__in=wanted)
    }
    writers: dict[Any, bool] = {}

    def owner_may_write(attachment: Attachment) -> bool:
        if attachment.owner_id not in writers:
            writers[attachment.owner_id] = (
                attachment.owner.is_active
                and Conversation.objects.for_user(attachment.owner)
                .filter(pk=prompt.conversation_id)
                .exists()
            )
        return writers[attachment.owner_id]

    refused = [
        attachment_id
        for attachment_id in wanted
        if (attachment := found.get(attachment_id)) is None
        # As strings: a freshly created prompt holds the id as the agent passed it.
        or str(attachment.conversation_id) != str(prompt.conversation_id)
        or not owner_may_write(attachment)
    ]
    if refused:
        many = len(refused) > 1
        return REFUSED.format(
            count=f"{len(refused)} attachments" if many else "an attachment",
            verb="are" if many else "is",
            pronoun="them" if many else "it",
        )
    total = sum(_request_bytes(found[i]) for i in wanted)
    if total > settings.ATTACHMENT_MAX_REQUEST_BYTES - REQUEST_TEXT_ALLOWANCE:
        megabytes = settings.ATTACHMENT_MAX_REQUEST_BYTES / (1024 * 1024)
        return (
            f"This message's attachments are too large together for Claude's {megabytes:.0f} MB "
            "request limit, so it was not sent. Send fewer or smaller files."
        )
    prompt.attachments.add(*found.values())  # a no-op for links that exist
    return None


class Turn(Protocol):
    """A user turn of the model context: a `Message`, or the agent's leaner row of one."""

    @property
    def pk(self) -> Any: ...


@dataclass
class Placed:
    attachments: int = 0
    dropped: int = 0
    tokens: int = 0


def _block(attachment: Attachment) -> dict[str, Any]:
    with attachment.file.open("rb") as stored:
        raw = stored.read()
    if attachment.kind == Attachment.Kind.TEXT:
        text = raw.decode("utf-8-sig", errors="replace")
        return {"type": "text", "text": f"Attached file {attachment.name}:\n\n{text}"}
    source = {
        "type": "base64",
        "media_type": attachment.media_type,
        "data": base64.b64encode(raw).decode("ascii"),
    }
    kind = "image" if attachment.kind == Attachment.Kind.IMAGE else "document"
    block: dict[str, Any] = {"type": kind, "source": source}
    if kind == "document":
        block["title"] = attachment.name
    return block


def _describe(attachment: Attachment) -> str:
    if attachment.kind == Attachment.Kind.IMAGE:
        return f"{attachment.name} (image, {attachment.width}x{attachment.height})"
    if attachment.kind == Attachment.Kind.PDF:
        pages = attachment.pages or 0
        return f"{attachment.name} (PDF, {pages} page{'' if pages == 1 else 's'})"
    return f"{attachment.name} (text file)"


def add_to_context(user_turns: list[tuple[dict[str, Any], Turn]], budget: int) -> Placed:
    """Give each user turn (oldest first, the prompt last) its attachments as content blocks.

    `budget` is the token budget left after the text; the prompt's own files are always sent.
    """
    placed = Placed()
    if not user_turns:
        return placed
    by_turn: dict[int, list[Attachment]] = {}
    links = (
        Attachment.messages.through.objects.filter(
            message_id__in=[turn.pk for _, turn in user_turns]
        )
        .select_related("attachment")
        .order_by("attachment__created_at", "attachment__id")
    )
    for link in links:
        by_turn.setdefault(link.message_id, []).append(link.attachment)
    if not by_turn:
        return placed
    sent: set[Any] = set()
    bytes_left = settings.ATTACHMENT_MAX_REQUEST_BYTES - REQUEST_TEXT_ALLOWANCE
    items_left = MAX_MEDIA_ITEMS
    prompt_pk = user_turns[-1][1].pk
    # Newest first, so when something has to go it is the oldest.
    for message, turn in reversed(user_turns):
        files = by_turn.get(turn.pk, [])
        if not files:
            continue
        blocks: list[dict[str, Any]] = []
        dropped: list[Attachment] = []
        for attachment in files:
            if attachment.pk in sent:
                continue  # sent again later (a retry): once, in its newest turn, is enough
            sent.add(attachment.pk)
            tokens = estimated_tokens(attachment)
            size = _request_bytes(attachment)
            items = _media_items(attachment)
            fits = tokens <= budget and size <= bytes_left and items <= items_left
            if turn.pk != prompt_pk and not fits:
                dropped.append(attachment)
                continue
            budget -= tokens
            bytes_left -= size
            items_left -= items
            placed.tokens += tokens
            placed.attachments += 1
            blocks.append(_block(attachment))
        if dropped:
            placed.dropped += len(dropped)
            names = "; ".join(_describe(attachment) for attachment in dropped)
            blocks.append(
                {
                    "type": "text",
                    "text": "[Attachments left out of this conversation's context to stay "
                    f"within its budget: {names}.]",
                }
            )
        text = message["content"]
        if isinstance(text, str) and text:
            blocks.append({"type": "text", "text": text})
        message["content"] = blocks or text
    return placed
