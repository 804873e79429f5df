"""Small, valid attachments made in memory: images and PDFs for tests, benches and soaks.

`png()` writes a solid-colour PNG by hand (zlib only), so it can make huge-dimension images in a
few bytes; `image()` makes JPEG/GIF/WebP/PNG through Pillow; `pdf()` writes a minimal PDF whose
pages each show one line of text (Helvetica), which pypdf and every viewer can read back.
`as_base64()` and the `*_block()` helpers give the Messages API content blocks.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Sequence
from typing import Any

RGB = tuple[int, int, int]


def png(width: int, height: int, colour: RGB = (220, 30, 30)) -> bytes:
    """A solid-colour 8-bit RGB PNG of any size (rows compress to almost nothing)."""
    row = b"\x00" + bytes(colour) * width
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def image(width: int, height: int, colour: RGB = (30, 70, 220), fmt: str = "PNG") -> bytes:
    """A solid-colour image in any format Pillow writes (JPEG, PNG, GIF, WEBP)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def _pdf_string(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1", "replace") + b")"


def pdf(pages: Sequence[str], *, width: int = 612, height: int = 792) -> bytes:
    """A PDF with one page per string, each showing that text (US Letter by default)."""
    objects: list[bytes] = []  # object n is objects[n - 1]
    page_ids = [4 + 2 * index for index in range(len(pages))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = b" ".join(b"%d 0 R" % page_id for page_id in page_ids)
    objects.append(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(pages)))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for page_id, text in zip(page_ids, pages, strict=True):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>"
            % (width, height, page_id + 1)
        )
        lines = text.splitlines() or [""]
        stream = b"BT /F1 18 Tf 72 %d Td 22 TL " % (height - 72)
        stream += b" ".join(_pdf_string(line) + b" Tj T*" for line in lines) + b" ET"
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def as_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def image_block(data: bytes, media_type: str = "image/png", **extra: Any) -> dict[str, Any]:
    """An `image` content block with a base64 source."""
    source = {"type": "base64", "media_type": media_type, "data": as_base64(data)}
    return {"type": "image", "source": source, **extra}


def pdf_block(data: bytes, **extra: Any) -> dict[str, Any]:
    """A `document` content block with a base64 PDF source."""
    source = {"type": "base64", "media_type": "application/pdf", "data": as_base64(data)}
    return {"type": "document", "source": source, **extra}


def text_document_block(text: str, **extra: Any) -> dict[str, Any]:
    """A `document` content block with a plain-text source."""
    source = {"type": "text", "media_type": "text/plain", "data": text}
    return {"type": "document", "source": source, **extra}
