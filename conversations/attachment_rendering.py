"""The attachments under a stored prompt, as HTML (static/js/attachments.js renders the same)."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

from .attachments import human_size, url_for
from .models import Attachment


def _meta(attachment: Attachment) -> str:
    parts = []
    if attachment.kind == Attachment.Kind.IMAGE and attachment.width:
        parts.append(f"{attachment.width}×{attachment.height}")
    elif attachment.kind == Attachment.Kind.PDF and attachment.pages:
        parts.append(f"{attachment.pages} page{'' if attachment.pages == 1 else 's'}")
    elif attachment.kind == Attachment.Kind.TEXT:
        parts.append("text")
    parts.append(human_size(attachment.size))
    return " · ".join(parts)


def attachment_item(attachment: Attachment) -> str:
    url = escape(url_for(attachment.pk))
    name = escape(attachment.name)
    kind = escape(attachment.kind)
    preview = (
        f'<img class="attachment-thumb" src="{url}" alt="{name}" loading="lazy">'
        if attachment.kind == Attachment.Kind.IMAGE
        else f'<span class="attachment-icon" aria-hidden="true">{kind.upper()}</span>'
    )
    facts = "".join(
        f' data-{key}="{value}"'
        for key in ("size", "width", "height", "pages")
        if (value := getattr(attachment, key)) is not None
    )
    return (
        f'<li class="attachment attachment-{kind}" data-attachment-id="{attachment.pk}"'
        f' data-kind="{kind}" data-name="{name}" data-type="{escape(attachment.media_type)}"'
        f'{facts}><a class="attachment-link" href="{url}" target="_blank"'
        f' rel="noopener">{preview}<span class="attachment-name">{name}</span></a>'
        f'<span class="attachment-meta">{escape(_meta(attachment))}</span></li>'
    )


def attachment_list(attachments: Iterable[Attachment]) -> str:
    items = "".join(attachment_item(attachment) for attachment in attachments)
    if not items:
        return ""
    return f'<ul class="turn-attachments" data-attachments aria-label="Attachments">{items}</ul>'
