"""Attachments: what an upload is (by its bytes), its stored row and file, and how it is shown.

An upload is classified from its content, never from its name or declared type: images are
decoded with Pillow (JPEG, PNG, GIF, WebP only), PDFs opened with pypdf, anything else must be
UTF-8 text with a text-like name or type. A file whose name or type claims to be an image or a
PDF must really be one (a renamed `.png` that is HTML is refused). Each refusal is an
`UploadRefused` whose message names the file and the rule, for the composer to show next to it.

Files go through Django's default storage (local folder or any django-storages backend); the
row's delete removes the stored file once the transaction commits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from typing import IO, Any

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.urls import reverse

from .models import Attachment, Conversation

logger = logging.getLogger(__name__)

IMAGE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".svg", ".svgz"}
TEXT_EXTENSIONS = {
    *".txt .text .md .markdown .rst .adoc .org .csv .tsv .json .jsonl .yaml .yml .toml .ini .cfg"
    " .conf .env .log .xml .html .htm .css .scss .less .js .mjs .cjs .ts .tsx .jsx .vue .svelte"
    " .py .pyi .rb .go .rs .java .kt .kts .scala .c .h .cc .cpp .cxx .hpp .hh .cs .fs .swift"
    " .m .mm .php .pl .pm .lua .r .jl .dart .ex .exs .erl .hs .ml .clj .sql .sh .bash .zsh"
    " .fish .ps1 .bat .tex .bib .gradle .properties .dockerfile .makefile .mk .cmake .proto"
    " .graphql .tf .nix .diff .patch .ipynb".split()
}
TEXT_FILENAMES = {"makefile", "dockerfile", "readme", "license", "procfile", "gemfile"}
# A little over the file itself: multipart boundaries and the other form fields.
MULTIPART_OVERHEAD = 64 * 1024


class UploadRefused(ValueError):
    """An upload we will not keep; the message is for the person who chose the file."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Inspected:
    kind: str
    media_type: str
    width: int | None = None
    height: int | None = None
    pages: int | None = None


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def max_request_file_bytes() -> int:
    """The most file bytes one Messages request can carry (base64 makes them 4/3 larger)."""
    return settings.ATTACHMENT_MAX_REQUEST_BYTES * 3 // 4


def client_limits() -> dict[str, Any]:
    """The limits the composer checks before uploading (the server checks them again)."""
    return {
        "maxImageBytes": settings.ATTACHMENT_MAX_IMAGE_BYTES,
        "maxImageSide": settings.ATTACHMENT_MAX_IMAGE_SIDE,
        "maxPdfBytes": min(settings.ATTACHMENT_MAX_PDF_BYTES, max_request_file_bytes()),
        "maxPdfPages": settings.ATTACHMENT_MAX_PDF_PAGES,
        "maxTextBytes": settings.ATTACHMENT_MAX_TEXT_BYTES,
        "maxFiles": settings.ATTACHMENT_MAX_FILES_PER_PROMPT,
        "maxTotalBytes": max_request_file_bytes(),
    }


def too_large_for_a_request(name: str, size: int) -> str:
    limit = max_request_file_bytes()
    return (
        f"{name} is {human_size(size)}; the files of one message can total at most "
        f"{human_size(limit)} (Claude's {human_size(settings.ATTACHMENT_MAX_REQUEST_BYTES)} "
        "request limit, once encoded)."
    )


def _extension(name: str) -> str:
    return os.path.splitext(name.lower())[1]


def _claims_image(name: str, declared: str) -> bool:
    return _extension(name) in IMAGE_EXTENSIONS or declared.startswith("image/")


def _claims_pdf(name: str, declared: str) -> bool:
    return _extension(name) == ".pdf" or declared == "application/pdf"


def _looks_like_text_file(name: str, declared: str) -> bool:
    base = os.path.basename(name.lower())
    return (
        _extension(name) in TEXT_EXTENSIONS
        or base in TEXT_FILENAMES
        or declared.startswith("text/")
        or declared in ("application/json", "application/xml", "application/x-sh")
    )


def _image(name: str, stream: IO[bytes], size: int) -> Inspected | None:
    from PIL import Image, UnidentifiedImageError

    stream.seek(0)
    try:
        with warnings.catch_warnings():
            # A decompression bomb is a refusal, not a warning in a log.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                image_format = image.format or ""
                width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        return None
    except (OSError, SyntaxError, ValueError):
        return None
    if image_format not in IMAGE_FORMATS:
        return None
    limit_side = settings.ATTACHMENT_MAX_IMAGE_SIDE
    if width > limit_side or height > limit_side:
        raise UploadRefused(
            f"{name} is {width}×{height} pixels; images can be at most {limit_side}×{limit_side}."
        )
    if size > settings.ATTACHMENT_MAX_IMAGE_BYTES:
        raise UploadRefused(
            f"{name} is {human_size(size)}; images can be at most "
            f"{human_size(settings.ATTACHMENT_MAX_IMAGE_BYTES)}."
        )
    # Decode it all: a header that parses on top of broken or foreign data is still refused.
    stream.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                image.verify()
            stream.seek(0)
            with Image.open(stream) as image:
                image.load()
    except Exception:
        raise UploadRefused(f"{name} looks like an image but cannot be decoded.") from None
    return Inspected("image", IMAGE_FORMATS[image_format], width=width, height=height)


def _pdf(name: str, stream: IO[bytes], size: int) -> Inspected:
    from pypdf import PdfReader

    limit = min(settings.ATTACHMENT_MAX_PDF_BYTES, max_request_file_bytes())
    if size > limit:
        raise UploadRefused(
            f"{name} is {human_size(size)}; PDFs can be at most {human_size(limit)}."
        )
    stream.seek(0)
    try:
        reader = PdfReader(stream)
        if reader.is_encrypted:
            raise UploadRefused(f"{name} is password-protected; Claude can only read open PDFs.")
        pages = len(reader.pages)
    except UploadRefused:
        raise
    except Exception:
        raise UploadRefused(f"{name} is not a readable PDF.") from None
    if pages == 0:
        raise UploadRefused(f"{name} has no pages.")
    if pages > settings.ATTACHMENT_MAX_PDF_PAGES:
        raise UploadRefused(
            f"{name} has {pages} pages; PDFs can have at most {settings.ATTACHMENT_MAX_PDF_PAGES}."
        )
    return Inspected("pdf", "application/pdf", pages=pages)


def _text(name: str, stream: IO[bytes], size: int) -> Inspected:
    if size > settings.ATTACHMENT_MAX_TEXT_BYTES:
        raise UploadRefused(
            f"{name} is {human_size(size)}; text files can be at most "
            f"{human_size(settings.ATTACHMENT_MAX_TEXT_BYTES)}."
        )
    stream.seek(0)
    raw = stream.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise UploadRefused(
            f"{name} is not a file Claude can read: send JPEG, PNG, GIF or WebP images, "
            "PDFs, or UTF-8 text files."
        )
    return Inspected("text", "text/plain")


def inspect_upload(name: str, declared_type: str, stream: IO[bytes], size: int) -> Inspected:
    """Classify and validate an upload from its bytes; raise UploadRefused with the reason."""
    declared = (declared_type or "").split(";")[0].strip().lower()
    if size == 0:
        raise UploadRefused(f"{name} is empty.")
    if size > max_request_file_bytes():
        raise UploadRefused(too_large_for_a_request(name, size), status=413)
    stream.seek(0)
    head = stream.read(1024)
    # A PDF starts with its header; readers also accept it later in the first kilobyte, so a
    # file named or declared a PDF is judged by pypdf then too (a code file that merely
    # mentions "%PDF-" is not).
    starts_as_pdf = head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"%PDF-")
    if starts_as_pdf or (b"%PDF-" in head and _claims_pdf(name, declared)):
        return _pdf(name, stream, size)
    image = _image(name, stream, size)
    if image is not None:
        return image
    if _extension(name) in (".svg", ".svgz") or declared == "image/svg+xml":
        raise UploadRefused(f"{name} is an SVG; Claude reads JPEG, PNG, GIF and WebP images.")
    if _claims_image(name, declared):
        raise UploadRefused(
            f"{name} is not a JPEG, PNG, GIF or WebP image (whatever its name says)."
        )
    if _claims_pdf(name, declared):
        raise UploadRefused(f"{name} is not a PDF (whatever its name says).")
    if not _looks_like_text_file(name, declared):
        raise UploadRefused(
            f"{name} is not a file Claude can read: send JPEG, PNG, GIF or WebP images, "
            "PDFs, or text files."
        )
    return _text(name, stream, size)


def display_name(name: str) -> str:
    """The uploader's file name, without any path and within the column."""
    base = os.path.basename((name or "").replace("\\", "/")).strip() or "file"
    return "".join(ch for ch in base if ch.isprintable())[:200] or "file"


def save_upload(conversation: Conversation, owner: Any, uploaded: Any) -> Attachment:
    """Validate an uploaded file and store it with its row. Raises UploadRefused."""
    name = display_name(uploaded.name)
    stream = uploaded.file if hasattr(uploaded, "file") else uploaded
    inspected = inspect_upload(name, getattr(uploaded, "content_type", ""), stream, uploaded.size)
    digest = hashlib.sha256()
    stream.seek(0)
    for chunk in iter(lambda: stream.read(1024 * 1024), b""):
        digest.update(chunk)
    stream.seek(0)
    attachment = Attachment(
        conversation=conversation,
        owner=owner,
        kind=inspected.kind,
        media_type=inspected.media_type,
        name=name,
        size=uploaded.size,
        sha256=digest.hexdigest(),
        width=inspected.width,
        height=inspected.height,
        pages=inspected.pages,
    )
    attachment.file.save(attachment.id.hex, uploaded, save=False)
    try:
        attachment.save(force_insert=True)
    except Exception:
        assert attachment.file.name is not None  # named by the `file.save` above
        default_storage.delete(attachment.file.name)
        raise
    return attachment


def url_for(attachment_id: Any) -> str:
    return reverse("conversations:attachment", args=[attachment_id])


def wire_metadata(attachment: Attachment) -> dict[str, Any]:
    """What devices show for an attachment (and what a prompt carries): never the bytes."""
    return {
        "id": str(attachment.id),
        "name": attachment.name,
        "kind": attachment.kind,
        "type": attachment.media_type,
        "size": attachment.size,
        **({"width": attachment.width, "height": attachment.height} if attachment.width else {}),
        **({"pages": attachment.pages} if attachment.pages else {}),
    }


def open_for_serving(attachment: Attachment) -> Any:
    return attachment.file.open("rb")


@receiver(post_delete, sender=Attachment)
def _delete_stored_file(sender: type, instance: Attachment, **kwargs: Any) -> None:
    """Remove the stored object once the row's deletion commits (cascades included)."""
    name = instance.file.name
    storage = instance.file.storage
    if not name:
        return

    def delete() -> None:
        try:
            storage.delete(name)
        except Exception:
            logger.exception("could not delete stored attachment %s", name)

    transaction.on_commit(delete)
