"""Attachment upload and download: thin views over `conversations.attachments`."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse, HttpResponseBase, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from . import attachments
from .models import Attachment, Conversation
from .views import _get_conversation_for_user

if TYPE_CHECKING:
    from .views import AuthenticatedHttpRequest

# Opened on its own, a file may run nothing and load nothing (Chrome's own viewer page for a
# standalone image styles itself inline, hence that one allowance).
FILE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


def client_config(conversation: Conversation | None, *, can_upload: bool) -> dict[str, Any]:
    """The composer's part of the page config: where to upload, where files live, the limits.

    A new chat's draft has no conversation to upload into yet (`uploadUrl` is None): the
    composer creates it with the first file, and the create response carries this config.
    """
    upload_url = (
        reverse("conversations:attachment_upload", args=[conversation.pk])
        if conversation is not None and can_upload
        else None
    )
    return {
        "uploadUrl": upload_url,
        # `{id}` is replaced by an attachment id in the browser.
        "fileUrl": attachments.url_for(uuid.UUID(int=0)).replace(str(uuid.UUID(int=0)), "{id}"),
        **attachments.client_limits(),
    }


@login_required
@require_POST
def attachment_upload(
    request: AuthenticatedHttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    """One file per request (the composer sends each with its own progress bar)."""
    try:
        conversation = _get_conversation_for_user(request.user, conversation_id)
    except Http404:
        return JsonResponse({"error": "No such conversation."}, status=404)
    # Refuse an oversized body before Django spools it to disk.
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    limit = attachments.max_request_file_bytes() + attachments.MULTIPART_OVERHEAD
    if length > limit:
        # The composer names the file in a header so the refusal can say which one.
        sent_name = unquote(request.headers.get("X-File-Name", ""))
        name = attachments.display_name(sent_name) if sent_name else "This file"
        message = attachments.too_large_for_a_request(name, length)
        return JsonResponse({"error": message}, status=413)
    uploaded = request.FILES.get("file")
    if uploaded is None:
        return JsonResponse({"error": "Choose a file to upload."}, status=400)
    try:
        attachment = attachments.save_upload(conversation, request.user, uploaded)
    except attachments.UploadRefused as refusal:
        return JsonResponse({"error": str(refusal)}, status=refusal.status)
    return JsonResponse(
        {**attachments.wire_metadata(attachment), "url": attachments.url_for(attachment.pk)},
        status=201,
    )


@login_required
@require_GET
def attachment_file(
    request: AuthenticatedHttpRequest, attachment_id: uuid.UUID
) -> HttpResponseBase:
    """The stored file, to users who may read its conversation; everyone else gets a 404."""
    attachment = Attachment.objects.filter(pk=attachment_id).first()
    if attachment is None:
        raise Http404("No such file")
    _get_conversation_for_user(request.user, attachment.conversation_id, write=False)
    if attachment.kind == Attachment.Kind.IMAGE:
        content_type, as_attachment = attachment.media_type, False
    elif attachment.kind == Attachment.Kind.TEXT:
        # Always plain text: an uploaded .html or .js is shown as its source, never run.
        content_type, as_attachment = "text/plain; charset=utf-8", False
    else:
        # A PDF is downloaded, not opened inside our origin (viewers run embedded scripts).
        content_type, as_attachment = "application/pdf", True
    response = FileResponse(
        attachments.open_for_serving(attachment),
        content_type=content_type,
        as_attachment=as_attachment,
        filename=attachment.name,
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = FILE_CSP
    response["Cache-Control"] = "private, max-age=3600"
    return response
