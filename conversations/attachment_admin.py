"""Attachments in the admin: per conversation (an inline) and per user (the list, filtered)."""

from __future__ import annotations

from typing import Any, TypedDict

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django_stubs_ext import WithAnnotations

from .attachments import human_size, url_for
from .models import Attachment


class _SentCount(TypedDict):
    _prompts: int


def attachments_table(conversation: Any) -> str:
    """A conversation's files with their sizes, for its change page (read-only, no formset)."""
    rows = format_html_join(
        "",
        "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                url_for(attachment.pk),
                attachment.name,
                attachment.kind,
                human_size(attachment.size),
                attachment.owner,
                attachment.created_at.strftime("%Y-%m-%d %H:%M"),
            )
            for attachment in conversation.attachments.select_related("owner")
        ),
    )
    if not rows:
        return "None"
    listing = reverse("admin:conversations_attachment_changelist")
    return format_html(
        "<table><tr><th>file</th><th>kind</th><th>size</th><th>uploaded by</th><th>at</th></tr>"
        "{}</table><a href='{}?conversation__id__exact={}'>All in the attachment list</a>",
        rows,
        listing,
        conversation.pk,
    )


@admin.register(Attachment)
class AttachmentAdmin(admin.ModelAdmin[Attachment]):
    list_display = (
        "name",
        "kind",
        "file_size",
        "dimensions",
        "owner",
        "conversation_link",
        "sent",
        "created_at",
    )
    list_filter = ("kind", "owner", "created_at")
    list_select_related = ("owner", "conversation")
    search_fields = (
        "name",
        "sha256",
        "owner__username",
        "conversation__title",
        "=conversation__id",
    )
    readonly_fields = (
        "id",
        "conversation",
        "owner",
        "messages",
        "kind",
        "media_type",
        "name",
        "size",
        "sha256",
        "width",
        "height",
        "pages",
        "file",
        "created_at",
    )
    fields = readonly_fields
    ordering = ("-created_at",)
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="size", ordering="size")
    def file_size(self, attachment: Attachment) -> str:
        return human_size(attachment.size)

    @admin.display(description="pixels / pages")
    def dimensions(self, attachment: Attachment) -> str:
        if attachment.width:
            return f"{attachment.width}×{attachment.height}"
        return f"{attachment.pages} pages" if attachment.pages else ""

    @admin.display(description="conversation", ordering="conversation")
    def conversation_link(self, attachment: Attachment) -> str:
        url = reverse("admin:conversations_conversation_change", args=[attachment.conversation_id])
        return format_html('<a href="{}">{}</a>', url, attachment.conversation)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Attachment]:
        return super().get_queryset(request).annotate(_prompts=Count("messages"))

    @admin.display(description="sent", boolean=True, ordering="_prompts")
    def sent(self, attachment: WithAnnotations[Attachment, _SentCount]) -> bool:
        return attachment._prompts > 0
