"""The conversation page's stored turns, rendered in Python.

A long conversation renders a thousand of these; the template engine's per-variable lookups (and
`format_html`'s lazy-string machinery) made that the page's whole cost, so the markup lives here
as one f-string per turn in which every interpolated value goes through `html.escape`.
"""

from __future__ import annotations

from html import escape

from django import template
from django.utils.safestring import SafeString, mark_safe

from ..models import Message

register = template.Library()

FINAL_NOTICES: dict[str, str] = {
    Message.Status.CANCELLED: "Stopped.",
    Message.Status.INTERRUPTED: "This answer was interrupted.",
}
DEFAULT_ERROR = "Claude could not answer this time."


def _label(turn: Message, viewer_client_id: str) -> str:
    if turn.role == Message.Role.ASSISTANT:
        return "Claude"
    return "You" if turn.client_id == viewer_client_id else "Prompt"


def _notice(turn: Message) -> str:
    if turn.status == Message.Status.ERROR:
        return (
            '<p class="turn-notice turn-notice-error" data-turn-notice role="note">'
            f"{escape(turn.error or DEFAULT_ERROR)}</p>"
        )
    if turn.status in FINAL_NOTICES:
        return (
            '<p class="turn-notice" data-turn-notice role="note">'
            f"{escape(FINAL_NOTICES[turn.status])}</p>"
        )
    return ""


def _attachments(turn: Message) -> str:
    # Issue 17: the files sent with a prompt (prefetched by the view, `SENT_ATTACHMENTS`); same
    # markup as static/js/attachments.js renders for live prompts.
    if turn.role != Message.Role.USER:
        return ""
    from ..attachment_rendering import attachment_list

    return attachment_list(turn.sent_attachments)


@register.simple_tag
def stored_turn(turn: Message, viewer_client_id: str) -> SafeString:
    """One stored prompt or reply, with the hooks static/js/conversation.js hydrates from."""
    model = (
        f' data-model="{escape(turn.model)}"'
        if turn.role == Message.Role.ASSISTANT and turn.model
        else ""
    )
    thinking = (
        '<details class="turn-thinking" data-thinking><summary>Thinking</summary>'
        f'<div class="turn-thinking-text" data-markdown>{escape(turn.thinking)}</div></details>'
        if turn.thinking
        else ""
    )
    role = escape(turn.role)
    # Issue 16 (conversations.tree.for_page): its parent, and hidden when off the shown path.
    tree = f' data-parent-id="{escape(getattr(turn, "parent_wire_id", ""))}"'
    if not getattr(turn, "on_path", True):
        tree += " hidden"
    # Safe: every interpolated value, here and above, is escaped or a UUID.
    return mark_safe(
        f'<article class="turn turn-{role}" data-role="{role}" data-status="{escape(turn.status)}"'
        f' data-prompt-id="{turn.prompt_id}" data-response-id="{turn.response_id or ""}"{model}{tree}'
        f' aria-label="{_label(turn, viewer_client_id)}">{thinking}'
        f'<div class="turn-text" data-markdown>{escape(turn.text)}</div>{_attachments(turn)}'
        f"{_notice(turn)}</article>"
    )
