from __future__ import annotations

import json
from typing import Any, ClassVar, TypedDict

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import AbstractUser
from django.db import transaction
from django.db.models import Count, IntegerField, Manager, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django_stubs_ext import WithAnnotations

from . import actions, tree
from .attachment_admin import attachments_table
from .models import Conversation, Message

User = get_user_model()


class _UsageTotals(TypedDict):
    """The usage columns' annotations (see `_subquery_total` and `_cache_totals`)."""

    _message_count: int
    _input_tokens: int
    _output_tokens: int
    _cache_creation_input_tokens: int
    _cache_read_input_tokens: int


class _UserTotals(_UsageTotals):
    _conversation_count: int


def _subquery_total(
    queryset: QuerySet[Any] | Manager[Any], group_field: str, aggregate: Any
) -> Coalesce:
    """A per-row total as a subquery: joining two reverse relations would multiply the counts."""
    totals = (
        queryset.filter(**{group_field: OuterRef("pk")})
        .order_by()
        .values(group_field)
        .annotate(total=aggregate)
        .values("total")
    )
    return Coalesce(Subquery(totals, output_field=IntegerField()), 0)


def _cache_totals(messages: QuerySet[Any] | Manager[Any], group_by: str) -> dict[str, Coalesce]:
    """Prompt-cache token totals (`_cache_*_input_tokens`): with input and output, what the
    prompts cost (cache writes at 1.25x the input price, reads at 0.1x)."""
    return {
        f"_{field}": _subquery_total(messages, group_by, Sum(field))
        for field in ("cache_creation_input_tokens", "cache_read_input_tokens")
    }


# --- Exports ---


def _tree_messages(conversation: Conversation) -> list[Message]:
    """Issue 16: every message in tree order (versions after their prompt), with its place."""
    return tree.for_page(conversation.messages.all(), conversation.current_leaf_id)


def conversation_as_dict(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.pk),
        "title": conversation.title,
        "owner": conversation.owner.get_username(),
        "archived": conversation.archived,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "messages": [
            {
                "role": message.role,
                "client_id": message.client_id,
                "text": message.text,
                "thinking": message.thinking,
                "status": message.status,
                "prompt_id": str(message.prompt_id),
                "response_id": str(message.response_id) if message.response_id else None,
                "model": message.model,
                "stop_reason": message.stop_reason,
                "error": message.error,
                "input_tokens": message.input_tokens,
                "output_tokens": message.output_tokens,
                "usage_estimated": message.usage_estimated,
                "cache_creation_input_tokens": message.cache_creation_input_tokens,
                "cache_read_input_tokens": message.cache_read_input_tokens,
                "created_at": message.created_at.isoformat(),
                "completed_at": message.completed_at.isoformat() if message.completed_at else None,
                # The tree: what it follows, its place among its siblings, and on the shown path?
                "parent_id": message.parent_wire_id or None,
                "version": message.versions.index,
                "versions": message.versions.count,
                "shown": message.on_path,
            }
            for message in _tree_messages(conversation)
        ],
    }


def conversation_as_markdown(conversation: Conversation) -> str:
    lines = [
        f"# {conversation.display_title}",
        "",
        f"- Owner: {conversation.owner.get_username()}",
        f"- Created: {conversation.created_at.isoformat()}",
        f"- Last activity: {conversation.updated_at.isoformat()}",
        f"- Conversation id: {conversation.pk}",
        "",
    ]
    for message in _tree_messages(conversation):
        who = "User" if message.role == Message.Role.USER else "Claude"
        status = "" if message.status == Message.Status.COMPLETE else f" ({message.status})"
        place = tree.place_label(message)
        place = f" [{place}]" if place else ""
        lines += [f"## {who}{status}{place}", "", message.text or "_(no text)_", ""]
        if message.error:
            lines += [f"> Error: {message.error}", ""]
    return "\n".join(lines)


def _download(content: str, content_type: str, extension: str, count: int) -> HttpResponse:
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = (
        f'attachment; filename="conversations-{count}-{stamp}.{extension}"'
    )
    return response


# --- Conversations ---


class ReplyStatusFilter(admin.SimpleListFilter):
    title = "reply status"
    parameter_name = "reply_status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, f"has a {label.lower()} reply") for value, label in Message.Status.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() not in Message.Status.values:
            return queryset
        replies = Message.objects.filter(role=Message.Role.ASSISTANT, status=self.value())
        return queryset.filter(pk__in=replies.values("conversation_id"))


class TranscriptInline(admin.TabularInline[Message, Conversation]):
    model = Message
    verbose_name = "message"
    verbose_name_plural = "transcript"
    fields = (
        "created_at",
        "place",
        "role",
        "client_id",
        "text",
        "status",
        "model",
        "stop_reason",
        "error",
        "input_tokens",
        "output_tokens",
        "usage_estimated",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    )
    readonly_fields = fields
    ordering = ("created_at", "id")

    @admin.display(description="tree")
    def place(self, message: Message) -> str:
        """Issue 16: where it sits in the tree (versions under their prompt), as the page has it."""
        if message.pk is None:
            return ""
        conversation = message.conversation
        # One tree per conversation per request: every row of the inline shares it.
        cache = getattr(self, "_tree_cache", None)
        if cache is None or cache[0] != (conversation.pk, conversation.current_leaf_id):
            rows = {m.pk: m for m in _tree_messages(conversation)}
            cache = self._tree_cache = ((conversation.pk, conversation.current_leaf_id), rows)
        placed = cache[1].get(message.pk)
        if placed is None:
            return ""
        depth = len(tree.path_to(cache[1].values(), placed.pk)) - 1
        who = "reply" if placed.role == Message.Role.ASSISTANT else "prompt"
        label = tree.place_label(placed)
        return f"{'· ' * depth}{who}{f' ({label})' if label else ''}"

    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin[Conversation]):
    list_display = (
        "display_title",
        "owner",
        "created_at",
        "updated_at",
        "message_count",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "archived",
    )
    list_filter = ("archived", ReplyStatusFilter, "created_at")
    list_select_related = ("owner",)
    search_fields = ("title", "owner__username", "owner__email", "messages__text")
    readonly_fields: ClassVar[tuple[str, ...]] = (
        "id",
        "owner",
        "created_at",
        "updated_at",
        "watch_link",
        "attachments",
    )
    readonly_fields += ("versions_tree",)
    fields: ClassVar[tuple[str, ...]] = (
        "id",
        "owner",
        "title",
        "title_set_by_user",
        "system_prompt",
        "archived",
    )
    fields += ("created_at", "updated_at", "watch_link", "attachments", "versions_tree")
    ordering = ("-updated_at",)
    date_hierarchy = "updated_at"
    inlines = (TranscriptInline,)
    actions = ("archive_selected", "export_json", "export_markdown")

    @admin.display(description="tree")
    def versions_tree(self, conversation: Conversation) -> str:
        """Issue 16: the whole tree, each message indented under what it follows (versions
        under their prompt, edits beside the prompt they edit), the shown path marked."""
        rows = _tree_messages(conversation)
        depth_of: dict[int | None, int] = {}
        for message in rows:
            depth_of[message.pk] = depth_of.get(message.parent_id, -1) + 1
        return format_html(
            '<ol class="versions-tree">{}</ol>',
            format_html_join(
                "",
                '<li data-depth="{}">{}{} {}: {}</li>',
                (
                    (
                        depth_of[m.pk],
                        "\u2003" * depth_of[m.pk],
                        "User" if m.role == Message.Role.USER else "Claude",
                        f"[{tree.place_label(m)}]" if tree.place_label(m) else "",
                        m.text[:200] or "(no text)",
                    )
                    for m in rows
                ),
            ),
        )

    @admin.display(description="attachments")
    def attachments(self, conversation: Conversation) -> str:
        return attachments_table(conversation)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                _message_count=_subquery_total(Message.objects, "conversation", Count("pk")),
                _input_tokens=_subquery_total(Message.objects, "conversation", Sum("input_tokens")),
                _output_tokens=_subquery_total(
                    Message.objects, "conversation", Sum("output_tokens")
                ),
                **_cache_totals(Message.objects, "conversation"),
            )
        )

    @admin.display(description="title", ordering="title")
    def display_title(self, conversation: Conversation) -> str:
        return conversation.display_title

    @admin.display(description="messages", ordering="_message_count")
    def message_count(self, conversation: WithAnnotations[Conversation, _UsageTotals]) -> int:
        return conversation._message_count

    @admin.display(description="input tokens", ordering="_input_tokens")
    def input_tokens(self, conversation: WithAnnotations[Conversation, _UsageTotals]) -> int:
        return conversation._input_tokens

    @admin.display(description="output tokens", ordering="_output_tokens")
    def output_tokens(self, conversation: WithAnnotations[Conversation, _UsageTotals]) -> int:
        return conversation._output_tokens

    @admin.display(description="cache write tokens", ordering="_cache_creation_input_tokens")
    def cache_creation_input_tokens(
        self, conversation: WithAnnotations[Conversation, _UsageTotals]
    ) -> int:
        return conversation._cache_creation_input_tokens

    @admin.display(description="cache read tokens", ordering="_cache_read_input_tokens")
    def cache_read_input_tokens(
        self, conversation: WithAnnotations[Conversation, _UsageTotals]
    ) -> int:
        return conversation._cache_read_input_tokens

    @admin.display(description="live view")
    def watch_link(self, conversation: Conversation) -> str:
        return format_html(
            '<a href="{}">Watch this conversation live (read-only)</a>',
            conversation.get_absolute_url(),
        )

    def save_model(self, request: HttpRequest, obj: Conversation, form: Any, change: bool) -> None:
        if not change:
            super().save_model(request, obj, form, change)
        elif form.changed_data:
            # Only what changed: a full save would bump `updated_at`, the last user activity.
            obj.save(update_fields=form.changed_data)
        # Through the actions too, so the owner's open pages and lists update live.
        if change and "title" in form.changed_data:
            actions.rename_conversation(obj, obj.title)
        if change and "archived" in form.changed_data:
            actions.set_archived(obj, obj.archived)

    # Deletes go through the action so the owner's devices drop the conversation live.
    def delete_model(self, request: HttpRequest, obj: Conversation) -> None:
        actions.delete_conversation(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        actions.delete_conversations(queryset.select_related("owner"))

    @admin.action(description="Archive selected conversations")
    def archive_selected(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        count = 0
        for conversation in queryset.filter(archived=False).select_related("owner"):
            actions.set_archived(conversation, True)
            count += 1
        self.message_user(request, f"Archived {count} conversation(s).", messages.SUCCESS)

    @admin.action(description="Export selected conversations as JSON")
    def export_json(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        conversations = queryset.select_related("owner").prefetch_related("messages")
        payload = [conversation_as_dict(c) for c in conversations.order_by("created_at")]
        content = json.dumps({"conversations": payload}, indent=2, ensure_ascii=False)
        return _download(content, "application/json", "json", len(payload))

    @admin.action(description="Export selected conversations as Markdown")
    def export_markdown(
        self, request: HttpRequest, queryset: QuerySet[Conversation]
    ) -> HttpResponse:
        conversations = list(
            queryset.select_related("owner").prefetch_related("messages").order_by("created_at")
        )
        content = "\n\n---\n\n".join(conversation_as_markdown(c) for c in conversations)
        return _download(content, "text/markdown; charset=utf-8", "md", len(conversations))


# --- Users, with their usage ---


class UsageUserAdmin(UserAdmin[AbstractUser]):
    list_display = (
        "username",
        "email",
        "is_staff",
        "is_active",
        "conversation_count",
        "message_count",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "last_login",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[AbstractUser]:
        sent = Message.objects.all()
        return (
            super()
            .get_queryset(request)
            .annotate(
                _conversation_count=_subquery_total(Conversation.objects, "owner", Count("pk")),
                _message_count=_subquery_total(sent, "conversation__owner", Count("pk")),
                _input_tokens=_subquery_total(sent, "conversation__owner", Sum("input_tokens")),
                _output_tokens=_subquery_total(sent, "conversation__owner", Sum("output_tokens")),
                **_cache_totals(sent, "conversation__owner"),
            )
        )

    # Access ends with the account: revoke the Ably tokens its devices hold (see actions).
    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            if change and "is_active" in form.changed_data and not obj.is_active:
                actions.revoke_ably_tokens([obj])

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            actions.revoke_ably_tokens([obj])  # before the delete clears its pk
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[AbstractUser]) -> None:
        with transaction.atomic():
            actions.revoke_ably_tokens(list(queryset))
            super().delete_queryset(request, queryset)

    @admin.display(description="conversations", ordering="_conversation_count")
    def conversation_count(self, user: WithAnnotations[AbstractUser, _UserTotals]) -> int:
        return user._conversation_count

    @admin.display(description="messages", ordering="_message_count")
    def message_count(self, user: WithAnnotations[AbstractUser, _UserTotals]) -> int:
        return user._message_count

    @admin.display(description="input tokens", ordering="_input_tokens")
    def input_tokens(self, user: WithAnnotations[AbstractUser, _UserTotals]) -> int:
        return user._input_tokens

    @admin.display(description="output tokens", ordering="_output_tokens")
    def output_tokens(self, user: WithAnnotations[AbstractUser, _UserTotals]) -> int:
        return user._output_tokens

    @admin.display(description="cache write tokens", ordering="_cache_creation_input_tokens")
    def cache_creation_input_tokens(self, user: WithAnnotations[AbstractUser, _UserTotals]) -> int:
        return user._cache_creation_input_tokens

    @admin.display(description="cache read tokens", ordering="_cache_read_input_tokens")
    def cache_read_input_tokens(self, user: WithAnnotations[AbstractUser, _UserTotals]) -> int:
        return user._cache_read_input_tokens


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, UsageUserAdmin)
