from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import Q

from . import events

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from .tree import Versions


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def for_user(self, user: User) -> ConversationQuerySet:
        """Conversations the user may use. The one place to widen when sharing arrives."""
        return self.filter(owner=user)


class Conversation(models.Model):
    TITLE_MAX_LENGTH = 200

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=TITLE_MAX_LENGTH, blank=True)
    # A user's rename always wins over the title the model suggests.
    title_set_by_user = models.BooleanField(default=False)
    system_prompt = models.TextField(
        blank=True, help_text="Overrides the site's system prompt for this conversation."
    )
    archived = models.BooleanField(default=False)
    # Issue 16: the shown path, shared by every device: the newest message on it (walk `parent`
    # up from here). Null for an empty conversation.
    current_leaf = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Last activity: bumped by every prompt and reply, so the list sorts by it.
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConversationQuerySet.as_manager()

    # Not a column: set by the view that fetched it for a user (whether they may write to it).
    user_can_write: bool

    class Meta:
        indexes = [
            # The conversation list: a user's conversations, newest activity first.
            models.Index(fields=["owner", "archived", "-updated_at"], name="conv_owner_activity"),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.id}"

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("conversations:detail", args=[self.id])

    @property
    def channel_name(self) -> str:
        return events.conversation_channel(self.id)

    @property
    def display_title(self) -> str:
        return self.title or "New conversation"


# Where the conversation page's prefetch puts each message's attachments: a list, not the
# per-message queryset a plain `prefetch_related("attachments")` builds (60 ms for 1,000 turns).
SENT_ATTACHMENTS = "sent_attachments"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = events.Status.STREAMING.value
        COMPLETE = events.Status.COMPLETE.value
        CANCELLED = events.Status.CANCELLED.value
        ERROR = events.Status.ERROR.value
        INTERRUPTED = events.Status.INTERRUPTED.value

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    # The verified Ably clientId that sent a prompt, or the agent's for a reply.
    client_id = models.CharField(max_length=255, blank=True)
    text = models.TextField(blank=True)
    thinking = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    # A prompt's id (made by the device); on a reply, the prompt it answers.
    prompt_id = models.UUIDField()
    # A reply's id (made by the agent); null on prompts.
    response_id = models.UUIDField(null=True, blank=True, unique=True)
    # Issue 16, the tree: the message this one follows. A reply's parent is its prompt; a
    # prompt's is the reply it continues (a prompt sent before that reply started is re-parented
    # onto it when it is claimed), or null at the root. Sibling prompts are edits; sibling
    # replies are versions (regenerate, retry).
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    # On a reply: the version request it answers. The first reply's is its prompt's id; each
    # Regenerate or Retry is a new id a device made. Null on prompts.
    request_id = models.UUIDField(null=True, blank=True)
    model = models.CharField(max_length=100, blank=True)
    stop_reason = models.CharField(max_length=50, blank=True)
    error = models.TextField(blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    # True when output_tokens is the agent's estimate from the text streamed (a reply stopped,
    # failed or interrupted before the API reported its count), not the API's own figure.
    usage_estimated = models.BooleanField(default=False)
    # Prompt caching, as the API reports it: input tokens written to the cache (billed at 1.25x
    # the input price) and read from it (0.1x). `input_tokens` is the rest, uncached, so the
    # prompt was input + cache creation + cache read tokens.
    cache_creation_input_tokens = models.PositiveIntegerField(default=0)
    cache_read_input_tokens = models.PositiveIntegerField(default=0)
    # Which agent process claimed the prompt (multi-agent exactly-once) and when.
    agent_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    # Not columns: set on a page's messages by `tree.for_page`.
    on_path: bool
    parent_wire_id: str
    versions: Versions
    # Not a column: the page's prefetch of `attachments` as a plain list (SENT_ATTACHMENTS).
    sent_attachments: list[Attachment]

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            # A prompt is stored once, however often it is replayed from history.
            models.UniqueConstraint(
                fields=["prompt_id"], condition=Q(role="user"), name="unique_prompt"
            ),
            # One reply per version request of a prompt: inserting it is how an agent process
            # claims the request (exactly once, however many agents hear it).
            models.UniqueConstraint(
                fields=["prompt_id", "request_id"],
                condition=Q(role="assistant"),
                name="unique_reply_per_request",
            ),
        ]
        indexes = [
            # The conversation page: a conversation's turns in order.
            models.Index(fields=["conversation", "created_at"], name="msg_conversation_time"),
            # Agent start-up: replies left streaming by a crashed agent.
            models.Index(fields=["status"], name="msg_status", condition=Q(status="streaming")),
            # The per-user prompt rate limit, counted at every prompt's intake: a sender's
            # prompts since the window's start, not a scan of every message.
            models.Index(
                fields=["client_id", "created_at"],
                name="msg_prompts_by_sender",
                condition=Q(role="user"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.text[:60]}"

    @property
    def is_final(self) -> bool:
        return self.status != self.Status.STREAMING


class AgentLease(models.Model):
    """Which live process holds an agent id (see `conversations.agent.identity`).

    One row per agent id: the holder renews `heartbeat_at` every few seconds. A reply's
    `agent_id` names the holder that wrote it, so a reply is abandoned only when its id's
    lease has lapsed or been taken over from a process known to be dead.
    """

    agent_id = models.CharField(max_length=100, primary_key=True)
    # Random per process start: tells a restart under the same id from the process before it.
    instance = models.CharField(max_length=64)
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.agent_id} ({self.host} pid {self.pid})"


# --- Attachments (issue 17) -------------------------------------------------------------------


def attachment_upload_to(attachment: Attachment, filename: str) -> str:
    # Never the uploader's name: it could carry a path or an extension a server would act on.
    return f"attachments/{attachment.conversation_id}/{attachment.id}"


class Attachment(models.Model):
    """One uploaded file: verified by decoding, stored through Django's storage API.

    Uploaded before its prompt is sent; the agent links it to the prompt (`messages`) once it
    has checked the prompt may use it. A retried or regenerated prompt links it again.
    """

    class Kind(models.TextChoices):
        IMAGE = "image"
        PDF = "pdf"
        TEXT = "text"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="attachments"
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="attachments"
    )
    # The prompts it was sent with; none while it waits in a composer.
    messages = models.ManyToManyField(Message, blank=True, related_name="attachments")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    # The verified type (from the bytes), never the one the browser declared.
    media_type = models.CharField(max_length=100)
    name = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    pages = models.PositiveIntegerField(null=True, blank=True)
    file = models.FileField(upload_to=attachment_upload_to, max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.name
