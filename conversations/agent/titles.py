"""Conversation titles, written early.

A new conversation is titled from its first prompt as soon as the agent starts answering it, in
parallel with the reply, so the title shows while the reply still streams, and whatever becomes
of the reply (stopped, failed, interrupted). The request is small: the prompt alone, a short
system prompt and a few output tokens.

The first exchange then improves it only when that is needed: when the prompt said too little
to name the conversation ("hi", "help me") or the early title could not be written. A title the
user chose always wins: `actions.apply_generated_title` never overwrites it, and no request is
made once the user has named the conversation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic

from conversations import actions
from conversations.models import Conversation, Message

from . import model as claude
from .config import AgentConfig
from .store import db

logger = logging.getLogger(__name__)

TITLE_SYSTEM_PROMPT = (
    "You name conversations. Reply with a short title of at most six words for the "
    "conversation below: no quotes, no trailing punctuation, nothing else."
)
# Six words fit comfortably; a cap keeps a misbehaving reply cheap.
TITLE_MAX_TOKENS = 24
# Enough of a prompt to name it; a long paste costs input tokens and says no more.
TITLE_SOURCE_CHARS = 1500
# A first prompt of fewer words than this rarely names the conversation ("hello", "help me"):
# its title is written again once the first reply has shown what it is about.
VAGUE_PROMPT_WORDS = 4


def clean_title(text: str, max_chars: int) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.strip("\"'“”‘’`*# ").rstrip(".!?:;,")
    if line.lower().startswith("title:"):
        line = line[len("title:") :].strip()
    if len(line) > max_chars:
        line = line[: max_chars - 1].rstrip() + "…"
    return line


def _named_by_user(conversation_id: Any) -> bool:
    return Conversation.objects.filter(pk=conversation_id, title_set_by_user=True).exists()


class Titles:
    """The agent's title requests: one early per new conversation, one improvement if needed."""

    def __init__(
        self,
        config: AgentConfig,
        anthropic_client: anthropic.AsyncAnthropic,
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        self.config = config
        self.anthropic = anthropic_client
        self.spawn = spawn
        self._early: dict[str, asyncio.Task[bool]] = {}

    def start(self, conversation_id: str, prompt: Message) -> None:
        """Title a new conversation from its first prompt, without waiting for the reply."""
        task = asyncio.ensure_future(
            self._write(conversation_id, f"User: {prompt.text[:TITLE_SOURCE_CHARS]}")
        )
        self._early[conversation_id] = task
        self.spawn(task)

    def after_first_reply(self, conversation_id: str, prompt: Message, reply_text: str) -> None:
        """Once the first reply has ended (however it ended), improve the title if needed."""
        early = self._early.pop(conversation_id, None)
        self.spawn(self._improve(conversation_id, prompt, reply_text, early))

    async def _improve(
        self,
        conversation_id: str,
        prompt: Message,
        reply_text: str,
        early: asyncio.Task[bool] | None,
    ) -> None:
        titled = False
        if early is not None:
            # After the early title, never before: the better title must be the one that stays.
            try:
                titled = await early
            except Exception:  # noqa: BLE001 - logged where it failed
                titled = False
        vague = len(prompt.text.split()) < VAGUE_PROMPT_WORDS
        if (titled and not vague) or (titled and not reply_text):
            return
        if await db(_named_by_user, conversation_id):
            return
        transcript = (
            f"User: {prompt.text[:TITLE_SOURCE_CHARS]}\n\n"
            f"Assistant: {reply_text[:TITLE_SOURCE_CHARS]}"
        )
        await self._write(conversation_id, transcript)

    async def _write(self, conversation_id: str, transcript: str) -> bool:
        """Ask for a title and apply it unless the user named the conversation; True if the
        model gave one."""
        config = self.config
        request = {
            "model": config.model,
            "max_tokens": TITLE_MAX_TOKENS,
            "system": TITLE_SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": transcript}],
        }
        try:
            text = await claude.complete_text(self.anthropic, request)
        except Exception as error:  # noqa: BLE001 - a missing title is cosmetic
            logger.warning("title for %s failed: %r", conversation_id, error)
            return False
        title = clean_title(text, config.title_max_chars)
        if not title:
            return False
        if await db(actions.apply_generated_title, conversation_id, title):
            logger.info("titled %s %r", conversation_id, title)
        return True
