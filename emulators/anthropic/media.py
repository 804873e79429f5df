"""Image and document content blocks: validated, measured and priced as the Messages API does.

Sans-I/O like the rest of the core: bytes in, facts out. `check_block(block, path)` validates a
block's shape while the request is parsed; `analyze(turns)` then decodes every image and
document in the request (nested `tool_result` content included), applies the API's limits in
the API's wording, and returns one `Media` per attachment with what the reply needs (pixel size,
dominant colour, page count, first line of text) and what it costs in input tokens.

Limits (docs: "Images and vision", "PDF support"):

- images: JPEG, PNG, GIF or WebP; at most 5 MB of base64 each; at most 8000 px a side, or
  2000 px when the request holds more than 20 images; the declared media type must match the
  bytes;
- PDFs: a valid, unencrypted PDF of at most 100 pages;
- at most 100 images and PDF pages together per request;
- the request body itself (32 MB) is checked before parsing (413 `request_too_large`).

Token rules:

- an image costs `width * height / 750` tokens (rounded up) after the API's own downscaling:
  the long edge to at most 1568 px and the area to at most ~1600 tokens (1.2 megapixels),
  keeping the aspect ratio;
- a PDF page costs its extracted text plus one image of the page. The page image is the
  MediaBox at 144 dpi (2 px per point), priced by the image rule, so a Letter or A4 page costs
  ~1600 tokens for the image and 1600-3000 with its text, inside the documented 1,500-3,000
  tokens per page;
- a plain-text document costs its text (and its title and context).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from emulators.anthropic.tokens import count_tokens

if TYPE_CHECKING:
    from emulators.anthropic.core import Turn

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MAX_IMAGE_BASE64_BYTES = 5 * 1024 * 1024
MAX_IMAGE_SIDE = 8000
MANY_IMAGES = 20
MAX_IMAGE_SIDE_MANY = 2000
MAX_MEDIA_ITEMS = 100
MAX_PDF_PAGES = 100
RESIZE_LONG_EDGE = 1568
RESIZE_MAX_TOKENS = 1600
PIXELS_PER_TOKEN = 750
PDF_PIXELS_PER_POINT = 2

_IMAGE_SOURCE_TAGS = "'base64', 'url', 'file'"
_DOCUMENT_SOURCE_TAGS = "'base64', 'text', 'content', 'url', 'file'"

# Nearest of these names the dominant colour in a reply ("mostly red").
COLOUR_NAMES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (0, 0, 0)),
    ("white", (255, 255, 255)),
    ("gray", (128, 128, 128)),
    ("red", (220, 30, 30)),
    ("orange", (255, 140, 0)),
    ("yellow", (250, 220, 40)),
    ("green", (30, 160, 60)),
    ("cyan", (0, 200, 220)),
    ("blue", (30, 70, 220)),
    ("purple", (130, 50, 170)),
    ("pink", (250, 150, 190)),
    ("brown", (130, 80, 40)),
)

log = logging.getLogger(__name__)


class InvalidMedia(Exception):
    """An attachment the API refuses: the message as the API words it, optional error details."""

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        self.message = message
        self.details = dict(details) if details else None
        super().__init__(message)


@dataclass(frozen=True)
class Media:
    """One image or document the request carries, as the stand-in "saw" it."""

    path: str  # e.g. "messages.0.content.1" or "messages.2.content.0.content.1" (in a tool_result)
    turn: int  # index of the message
    block: int  # index of the top-level content block holding it
    kind: str  # image | pdf | text
    media_type: str
    tokens: int
    size_bytes: int = 0
    width: int = 0
    height: int = 0
    colour: str = ""  # a name from COLOUR_NAMES
    colour_hex: str = ""
    frames: int = 1
    pages: int = 0
    first_line: str = ""
    title: str = ""


# --- shape, checked while parsing --------------------------------------------------------------


def check_block(block: Mapping[str, Any], path: str) -> None:
    """Validate an image or document block's shape (not its bytes) like the API's schema."""
    kind = block.get("type")
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidMedia(f"{path}.{kind}.source: Field required")
    source_type = source.get("type")
    if kind == "image":
        if source_type not in ("base64", "url", "file"):
            raise InvalidMedia(_tag_error(f"{path}.image.source", source_type, _IMAGE_SOURCE_TAGS))
        if source_type == "base64":
            if source.get("media_type") not in IMAGE_MEDIA_TYPES:
                raise InvalidMedia(
                    f"{path}.image.source.base64.media_type: Input should be 'image/jpeg', "
                    "'image/png', 'image/gif' or 'image/webp'"
                )
            _require_string(source, "data", f"{path}.image.source.base64.data")
        else:
            _offline(f"{path}.image.source.{source_type}", source_type)
        return
    if source_type not in ("base64", "text", "content", "url", "file"):
        raise InvalidMedia(
            _tag_error(f"{path}.document.source", source_type, _DOCUMENT_SOURCE_TAGS)
        )
    if source_type == "base64":
        if source.get("media_type") != "application/pdf":
            raise InvalidMedia(
                f"{path}.document.source.base64.media_type: Input should be 'application/pdf'"
            )
        _require_string(source, "data", f"{path}.document.source.base64.data")
    elif source_type == "text":
        if source.get("media_type") != "text/plain":
            raise InvalidMedia(
                f"{path}.document.source.text.media_type: Input should be 'text/plain'"
            )
        _require_string(source, "data", f"{path}.document.source.text.data")
    elif source_type == "content":
        content = source.get("content")
        if not isinstance(content, str | list):
            raise InvalidMedia(
                f"{path}.document.source.content.content: Input should be a valid string or a "
                "valid list"
            )
    else:
        _offline(f"{path}.document.source.{source_type}", source_type)


def _tag_error(path: str, tag: Any, expected: str) -> str:
    if tag is None:
        return f"{path}: Unable to extract tag using discriminator 'type'"
    return (
        f"{path}: Input tag '{tag}' found using 'type' does not match any of the expected "
        f"tags: {expected}"
    )


def _require_string(source: Mapping[str, Any], key: str, path: str) -> None:
    if key not in source:
        raise InvalidMedia(f"{path}: Field required")
    if not isinstance(source[key], str):
        raise InvalidMedia(f"{path}: Input should be a valid string")


def _offline(path: str, source_type: str) -> None:
    # The real API fetches URLs and reads the Files API; the stand-in is offline and has neither.
    raise InvalidMedia(
        f"{path}: the Anthropic stand-in is offline and does not support '{source_type}' "
        "sources; send the bytes as a 'base64' source"
    )


# --- token rules -------------------------------------------------------------------------------


def resized(width: int, height: int) -> tuple[int, int]:
    """The size the API scales an image down to before the model sees it (never up)."""
    scale = min(
        1.0,
        RESIZE_LONG_EDGE / max(width, height),
        math.sqrt(RESIZE_MAX_TOKENS * PIXELS_PER_TOKEN / (width * height)),
    )
    if scale >= 1.0:
        return width, height
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def image_tokens(width: int, height: int) -> int:
    """Input tokens for an image: pixels / 750 after the API's resizing, rounded up."""
    resized_width, resized_height = resized(max(1, width), max(1, height))
    return max(1, math.ceil(resized_width * resized_height / PIXELS_PER_TOKEN))


def pdf_page_tokens(text: str, width_points: float, height_points: float) -> int:
    """A PDF page: its text plus one image of the page rendered at 2 px per point."""
    width = max(1, round(width_points * PDF_PIXELS_PER_POINT))
    height = max(1, round(height_points * PDF_PIXELS_PER_POINT))
    return count_tokens(text) + image_tokens(width, height)


# --- decoding ----------------------------------------------------------------------------------


def sniff_image(raw: bytes) -> str | None:
    """The media type the bytes are, by their magic number (None: not one Claude accepts)."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class _ImageFacts:
    error: str = ""  # "base64" | "unknown" | "undecodable"
    detected: str = ""
    width: int = 0
    height: int = 0
    frames: int = 1
    size_bytes: int = 0


@dataclass(frozen=True)
class _Colour:
    name: str
    hex: str


@dataclass(frozen=True)
class _PdfFacts:
    error: str = ""  # "base64" | "invalid" | "pages"
    pages: int = 0
    tokens: int = 0
    first_line: str = ""
    size_bytes: int = 0


def _decode_base64(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


_T = TypeVar("_T")


class _Memo:
    """A small LRU of facts keyed by a digest of the base64 data: the agent re-sends a
    conversation's attachments every turn, so each distinct one is decoded once, and the memo
    holds only the facts (not megabytes of data as an `lru_cache` key would)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
        self._lock = threading.Lock()  # parsing may run on the adapter's worker threads

    def get(self, kind: str, data: str, compute: Callable[[str], _T]) -> _T:
        key = (kind, hashlib.blake2b(data.encode(), digest_size=16).digest())
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]  # type: ignore[no-any-return]
        value = compute(data)
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


_MEMO = _Memo(256)


def _image_facts(data: str) -> _ImageFacts:
    return _MEMO.get("image", data, _decode_image_facts)


def _dominant_colour(data: str) -> _Colour | None:
    return _MEMO.get("colour", data, _decode_dominant_colour)


def _pdf_facts(data: str) -> _PdfFacts:
    return _MEMO.get("pdf", data, _decode_pdf_facts)


def _decode_image_facts(data: str) -> _ImageFacts:
    raw = _decode_base64(data)
    if raw is None:
        return _ImageFacts(error="base64")
    detected = sniff_image(raw)
    if detected is None:
        return _ImageFacts(error="unknown", size_bytes=len(raw))
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            frames = int(getattr(image, "n_frames", 1) or 1)
    except Image.DecompressionBombError:
        # Pillow refuses to even open images past ~179 megapixels: far over 8000 px a side.
        return _ImageFacts(detected=detected, width=MAX_IMAGE_SIDE + 1, height=MAX_IMAGE_SIDE + 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return _ImageFacts(error="undecodable", detected=detected, size_bytes=len(raw))
    return _ImageFacts(
        detected=detected, width=width, height=height, frames=frames, size_bytes=len(raw)
    )


def _decode_dominant_colour(data: str) -> _Colour | None:
    """The most common colour of the (first frame of the) image, or None if it cannot decode."""
    raw = _decode_base64(data) or b""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at a fraction of the size
            frame = image.convert("RGBA")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    # Transparent pixels show the page behind them; call that white.
    background = Image.new("RGBA", frame.size, (255, 255, 255, 255))
    flattened = Image.alpha_composite(background, frame).convert("RGB")
    sample = flattened.resize(
        (min(64, flattened.width), min(64, flattened.height)), Image.Resampling.NEAREST
    )
    counts = sample.getcolors(maxcolors=64 * 64) or []
    # Most frequent first; ties broken by the colour value so the answer is stable.
    _count, rgb = min(counts, key=lambda item: (-item[0], item[1]))
    red, green, blue = rgb[:3]
    name = min(
        COLOUR_NAMES,
        key=lambda named: sum(
            (a - b) ** 2 for a, b in zip(named[1], (red, green, blue), strict=True)
        ),
    )[0]
    return _Colour(name, f"#{red:02x}{green:02x}{blue:02x}")


def _decode_pdf_facts(data: str) -> _PdfFacts:
    raw = _decode_base64(data)
    if raw is None:
        return _PdfFacts(error="base64")
    if b"%PDF-" not in raw[:1024]:
        return _PdfFacts(error="invalid", size_bytes=len(raw))
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(raw), strict=False)
        if reader.is_encrypted:
            return _PdfFacts(error="invalid", size_bytes=len(raw))
        pages = len(reader.pages)
        if pages == 0:
            return _PdfFacts(error="invalid", size_bytes=len(raw))
        if pages > MAX_PDF_PAGES:
            return _PdfFacts(error="pages", pages=pages, size_bytes=len(raw))
        tokens = 0
        first_line = ""
        for page in reader.pages:
            text = page.extract_text() or ""
            box = page.mediabox
            tokens += pdf_page_tokens(text, float(box.width), float(box.height))
            if not first_line:
                first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    except (PyPdfError, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.debug("unreadable PDF: %s", error)
        return _PdfFacts(error="invalid", size_bytes=len(raw))
    return _PdfFacts(pages=pages, tokens=tokens, first_line=first_line, size_bytes=len(raw))


# --- the request's attachments -----------------------------------------------------------------


def _media_blocks(turns: Sequence[Turn]) -> Iterator[tuple[str, int, int, dict[str, Any]]]:
    """Every image/document block with its path, top-level included and inside tool results."""
    for turn_index, turn in enumerate(turns):
        for block_index, block in enumerate(turn.blocks):
            path = f"messages.{turn_index}.content.{block_index}"
            if block.get("type") in ("image", "document"):
                yield path, turn_index, block_index, block
            elif block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                for inner_index, inner in enumerate(block["content"]):
                    if isinstance(inner, dict) and inner.get("type") in ("image", "document"):
                        yield (
                            f"{path}.tool_result.content.{inner_index}",
                            turn_index,
                            block_index,
                            inner,
                        )


def analyze(turns: Sequence[Turn]) -> tuple[Media, ...]:
    """Decode and check every attachment; raise `InvalidMedia` worded as the API's error."""
    found: list[Media] = []
    images: list[Media] = []
    pdf_pages = 0
    for path, turn_index, block_index, block in _media_blocks(turns):
        source = block["source"]
        if block["type"] == "image":
            media = _image(path, turn_index, block_index, source)
            images.append(media)
        elif source["type"] == "base64":
            media = _pdf(path, turn_index, block_index, source, block)
            pdf_pages += media.pages
        else:
            media = _text_document(path, turn_index, block_index, source, block)
        found.append(media)

    if pdf_pages + len(images) > MAX_MEDIA_ITEMS:
        raise InvalidMedia(
            f"Too much media: {pdf_pages} document pages + {len(images)} images > {MAX_MEDIA_ITEMS}"
        )
    many = len(images) > MANY_IMAGES
    limit = MAX_IMAGE_SIDE_MANY if many else MAX_IMAGE_SIDE
    oversized = [image for image in images if max(image.width, image.height) > limit]
    if oversized:
        suffix = " for many-image requests" if many else ""
        raise InvalidMedia(
            f"{oversized[0].path}.image.source.base64.data: At least one of the image "
            f"dimensions exceed max allowed size{suffix}: {limit} pixels",
            details={
                "error_code": "image_dimensions_too_large",
                "max_side_length_pixels": limit,
                "paths": [image.path for image in oversized],
            },
        )
    # Only now, with every limit passed, decode pixels for the reply.
    return tuple(_with_colour(media, turns) for media in found)


def _image(path: str, turn: int, block: int, source: Mapping[str, Any]) -> Media:
    data: str = source["data"]
    declared: str = source["media_type"]
    where = f"{path}.image.source.base64"
    if len(data) > MAX_IMAGE_BASE64_BYTES:
        raise InvalidMedia(
            f"{where}: image exceeds 5 MB maximum: {len(data)} bytes > {MAX_IMAGE_BASE64_BYTES} bytes"
        )
    facts = _image_facts(data)
    if facts.error == "base64":
        raise InvalidMedia(f"{where}: invalid base64 data")
    if facts.error == "unknown":
        raise InvalidMedia(f"{where}.data: Could not process image")
    if facts.detected != declared:
        raise InvalidMedia(
            f"{where}: The image was specified using the {declared} media type, but the image "
            f"appears to be a {facts.detected} image"
        )
    if facts.error == "undecodable":
        raise InvalidMedia(f"{where}.data: Could not process image")
    return Media(
        path=path,
        turn=turn,
        block=block,
        kind="image",
        media_type=declared,
        tokens=image_tokens(facts.width, facts.height),
        size_bytes=facts.size_bytes,
        width=facts.width,
        height=facts.height,
        frames=facts.frames,
    )


def _pdf(
    path: str, turn: int, block: int, source: Mapping[str, Any], document: Mapping[str, Any]
) -> Media:
    facts = _pdf_facts(source["data"])
    where = f"{path}.pdf.source.base64"
    if facts.error == "base64":
        raise InvalidMedia(f"{where}: invalid base64 data")
    if facts.error == "invalid":
        raise InvalidMedia(f"{where}.data: The PDF specified was not valid.")
    if facts.error == "pages":
        raise InvalidMedia(f"{where}.data: A maximum of {MAX_PDF_PAGES} PDF pages may be provided.")
    title = str(document.get("title") or "")
    extra = count_tokens(title) + count_tokens(str(document.get("context") or ""))
    return Media(
        path=path,
        turn=turn,
        block=block,
        kind="pdf",
        media_type="application/pdf",
        tokens=facts.tokens + extra,
        size_bytes=facts.size_bytes,
        pages=facts.pages,
        first_line=facts.first_line,
        title=title,
    )


def _text_document(
    path: str, turn: int, block: int, source: Mapping[str, Any], document: Mapping[str, Any]
) -> Media:
    if source["type"] == "text":
        text = str(source["data"])
    else:  # "content": a string or a list of blocks, of which the text is read
        content = source["content"]
        text = (
            content
            if isinstance(content, str)
            else "\n".join(str(item.get("text", "")) for item in content if isinstance(item, dict))
        )
    title = str(document.get("title") or "")
    tokens = (
        count_tokens(text) + count_tokens(title) + count_tokens(str(document.get("context") or ""))
    )
    return Media(
        path=path,
        turn=turn,
        block=block,
        kind="text",
        media_type="text/plain",
        tokens=max(1, tokens),
        size_bytes=len(text.encode()),
        pages=1,
        first_line=next((line.strip() for line in text.splitlines() if line.strip()), ""),
        title=title,
    )


def _with_colour(media: Media, turns: Sequence[Turn]) -> Media:
    if media.kind != "image":
        return media
    block = turns[media.turn].blocks[media.block]
    if block.get("type") == "tool_result":
        index = int(media.path.rsplit(".", 1)[1])
        block = block["content"][index]
    colour = _dominant_colour(block["source"]["data"])
    if colour is None:  # a valid header over pixels that do not decode (e.g. truncated)
        raise InvalidMedia(f"{media.path}.image.source.base64.data: Could not process image")
    return replace(media, colour=colour.name, colour_hex=colour.hex)
