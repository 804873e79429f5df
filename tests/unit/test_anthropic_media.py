"""The stand-in's image and document blocks: validation in the API's words, tokens, replies."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from emulators.anthropic import samples
from emulators.anthropic.core import (
    ApiError,
    Generation,
    MessagesRequest,
    count_tokens,
    input_tokens,
    parse_messages_request,
)
from emulators.anthropic.media import image_tokens, resized

MODEL = "claude-sonnet-5-5"


def request(*content: dict[str, Any], text: str = "What is in this?") -> MessagesRequest:
    blocks = [*content, {"type": "text", "text": text}] if text else list(content)
    body = {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": blocks}]}
    return parse_messages_request(json.dumps(body).encode())


def refusal(*content: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        request(*content)
    assert caught.value.status == 400
    assert caught.value.error_type == "invalid_request_error"
    return caught.value


def reply_text(parsed: MessagesRequest) -> str:
    return Generation(parsed, message_id="msg_01").message()["content"][0]["text"]


# --- token rules ---------------------------------------------------------------------------------


def test_an_image_costs_its_pixels_over_750_when_it_needs_no_resizing():
    assert image_tokens(200, 200) == 54  # 40,000 / 750 = 53.3, rounded up
    assert image_tokens(1092, 1092) == 1590  # the docs' largest square that is not resized


def test_a_large_image_is_priced_after_the_apis_downscaling():
    width, height = resized(4000, 3000)
    assert max(width, height) <= 1568
    assert width * height <= 1_200_000
    assert abs(width / height - 4 / 3) < 0.01
    assert 1590 <= image_tokens(4000, 3000) <= 1600
    assert image_tokens(1568, 400) == 837  # long edge exactly at the limit: not resized


# --- accepted blocks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_each_image_type_is_measured_priced_and_described(fmt, media_type):
    data = samples.image(320, 200, (30, 70, 220), fmt=fmt)
    parsed = request(samples.image_block(data, media_type))

    (media,) = parsed.media
    assert (media.kind, media.width, media.height, media.colour) == ("image", 320, 200, "blue")
    assert media.tokens == image_tokens(320, 200)
    text_only = request(text="What is in this?")
    assert input_tokens(parsed) == input_tokens(text_only) + media.tokens
    described = reply_text(parsed)
    assert "320x200" in described
    assert "mostly blue" in described
    assert described == reply_text(request(samples.image_block(data, media_type)))


def test_a_pdf_is_read_for_its_page_count_first_line_and_per_page_tokens():
    pages = ["Quarterly report 2026\nRevenue grew.", "Second page", "Third page"]
    parsed = request(samples.pdf_block(samples.pdf(pages)))

    (media,) = parsed.media
    assert (media.kind, media.pages, media.first_line) == ("pdf", 3, "Quarterly report 2026")
    # Each page: its text plus a Letter page (612x792 pt) rendered at 2 px per point.
    page_image = image_tokens(1224, 1584)
    assert 1500 <= page_image + count_tokens("Second page") <= 3000
    text_tokens = sum(count_tokens(text) for text in pages)
    # Extracted text may end each page with a newline: one token more per page at most.
    assert text_tokens + 3 * page_image <= media.tokens <= text_tokens + 3 * page_image + 3
    described = reply_text(parsed)
    assert "3 pages" in described
    assert '"Quarterly report 2026"' in described


def test_a_plain_text_document_is_read_and_counted():
    parsed = request(samples.text_document_block("Shopping list\neggs\nmilk", title="Errands"))
    (media,) = parsed.media
    assert media.kind == "text"
    assert media.tokens == count_tokens("Shopping list\neggs\nmilk") + count_tokens("Errands")
    assert '"Shopping list"' in reply_text(parsed)


def test_several_attachments_are_each_described_in_order():
    parsed = request(
        samples.image_block(samples.png(640, 480, (220, 30, 30))),
        samples.pdf_block(samples.pdf(["Invoice 42"])),
    )
    described = reply_text(parsed)
    assert "2 attachments" in described
    assert described.index("640x480 PNG, mostly red") < described.index("1 page;")
    assert '"Invoice 42"' in described


def test_an_earlier_attachment_is_described_when_the_prompt_asks_about_it():
    body = {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [
            {"role": "user", "content": [samples.image_block(samples.png(50, 40, (0, 0, 0)))]},
            {"role": "assistant", "content": "Got it."},
            {"role": "user", "content": "What colour was the image?"},
        ],
    }
    described = reply_text(parse_messages_request(json.dumps(body).encode()))
    assert "50x40 PNG, mostly black" in described


def test_an_image_inside_a_tool_result_is_checked_with_its_nested_path():
    body = {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [
            {"role": "user", "content": "Take a screenshot"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "shot", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [samples.image_block(samples.png(8, 8), "image/jpeg")],
                    }
                ],
            },
        ],
    }
    with pytest.raises(ApiError) as caught:
        parse_messages_request(json.dumps(body).encode())
    assert caught.value.message.startswith(
        "messages.2.content.0.tool_result.content.0.image.source.base64: The image was specified"
    )


# --- refused blocks, worded as the API words them -----------------------------------------------


def test_an_unknown_image_media_type_is_refused():
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AA"}}
    assert refusal(block).message == (
        "messages.0.content.0.image.source.base64.media_type: Input should be 'image/jpeg', "
        "'image/png', 'image/gif' or 'image/webp'"
    )


def test_invalid_base64_is_refused():
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "*"}}
    assert refusal(block).message == "messages.0.content.0.image.source.base64: invalid base64 data"


def test_an_image_whose_bytes_are_another_type_is_refused():
    error = refusal(samples.image_block(samples.png(8, 8), "image/jpeg"))
    assert error.message == (
        "messages.0.content.0.image.source.base64: The image was specified using the image/jpeg "
        "media type, but the image appears to be a image/png image"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"<html><script>alert(1)</script></html>",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        samples.png(100, 100)[:60],
    ],
    ids=["html-renamed-png", "png-magic-then-garbage", "truncated-png"],
)
def test_bytes_that_are_not_a_decodable_image_are_refused(data):
    error = refusal(samples.image_block(data, "image/png"))
    assert error.message == "messages.0.content.0.image.source.base64.data: Could not process image"


def test_an_image_over_5_mb_of_base64_is_refused_before_decoding():
    data = b"\x89PNG\r\n\x1a\n" + b"\x00" * (4 * 1024 * 1024)
    encoded_length = len(base64.b64encode(data))
    error = refusal(samples.image_block(data))
    assert error.message == (
        f"messages.0.content.0.image.source.base64: image exceeds 5 MB maximum: "
        f"{encoded_length} bytes > 5242880 bytes"
    )


def test_an_image_over_8000_pixels_a_side_is_refused_with_the_typed_details():
    error = refusal(samples.image_block(samples.png(8001, 2)))
    assert error.message == (
        "messages.0.content.0.image.source.base64.data: At least one of the image dimensions "
        "exceed max allowed size: 8000 pixels"
    )
    assert error.details == {
        "error_code": "image_dimensions_too_large",
        "max_side_length_pixels": 8000,
        "paths": ["messages.0.content.0"],
    }


def test_8000_pixels_a_side_is_accepted():
    (media,) = request(samples.image_block(samples.png(8000, 2))).media
    assert media.width == 8000


def test_more_than_20_images_lowers_the_side_limit_to_2000_pixels():
    small = samples.image_block(samples.png(2, 2))
    wide = samples.image_block(samples.png(2001, 2))
    assert len(request(wide, *[small] * 19).media) == 20  # 20 images: 8000 px still applies
    error = refusal(small, wide, *[small] * 19)
    assert error.message == (
        "messages.0.content.1.image.source.base64.data: At least one of the image dimensions "
        "exceed max allowed size for many-image requests: 2000 pixels"
    )
    assert error.details is not None
    assert error.details["max_side_length_pixels"] == 2000


def test_more_than_100_images_and_pdf_pages_together_is_refused():
    small = samples.image_block(samples.png(2, 2))
    assert refusal(*[small] * 101).message == "Too much media: 0 document pages + 101 images > 100"
    sixty_pages = samples.pdf_block(samples.pdf([f"page {n}" for n in range(60)]))
    assert refusal(sixty_pages, *[small] * 41).message == (
        "Too much media: 60 document pages + 41 images > 100"
    )


def test_a_pdf_over_100_pages_is_refused():
    error = refusal(samples.pdf_block(samples.pdf(["page"] * 101)))
    assert error.message == (
        "messages.0.content.0.pdf.source.base64.data: A maximum of 100 PDF pages may be provided."
    )


@pytest.mark.parametrize(
    "data", [b"not a pdf at all", b"%PDF-1.4\n garbage without objects"], ids=["text", "truncated"]
)
def test_bytes_that_are_not_a_valid_pdf_are_refused(data):
    error = refusal(samples.pdf_block(data))
    assert error.message == (
        "messages.0.content.0.pdf.source.base64.data: The PDF specified was not valid."
    )


def test_a_document_with_a_non_pdf_base64_media_type_is_refused():
    block = samples.pdf_block(samples.pdf(["x"]))
    block["source"]["media_type"] = "application/msword"
    assert refusal(block).message == (
        "messages.0.content.0.document.source.base64.media_type: Input should be 'application/pdf'"
    )


def test_a_source_type_the_api_does_not_know_is_refused():
    block = {"type": "image", "source": {"type": "path", "path": "/etc/passwd"}}
    assert refusal(block).message == (
        "messages.0.content.0.image.source: Input tag 'path' found using 'type' does not match "
        "any of the expected tags: 'base64', 'url', 'file'"
    )


def test_url_sources_are_refused_clearly_because_the_stand_in_is_offline():
    block = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    assert "offline" in refusal(block).message


# --- hostile blocks ------------------------------------------------------------------------------

_VALID_DATA = [
    samples.as_base64(samples.png(3, 2)),
    samples.as_base64(samples.image(4, 4, fmt="GIF")),
    samples.as_base64(samples.pdf(["hello"])),
    "",
    "====",
    "not base64!",
    samples.as_base64(b"%PDF-1.4"),
]
_sources = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["base64", "text", "content", "url", "file", "nope", 3]),
        "media_type": st.sampled_from(
            ["image/png", "image/gif", "image/jpeg", "application/pdf", "text/plain", None]
        ),
        "data": st.sampled_from(_VALID_DATA) | st.integers() | st.none(),
        "content": st.sampled_from(["text", [], [{"type": "text", "text": "t"}], [1], {}]),
    },
)
_cache_controls = st.sampled_from(
    [None, {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}, {"type": "x"}, "yes", 5]
)
_media = st.builds(
    lambda kind, source, control: {
        "type": kind,
        "source": source,
        **({"cache_control": control} if control is not None else {}),
    },
    st.sampled_from(["image", "document"]),
    _sources | st.sampled_from([None, "str", []]),
    _cache_controls,
)


@settings(max_examples=150, deadline=None, database=None)
@given(blocks=st.lists(_media, min_size=1, max_size=4), nested=st.booleans())
def test_hostile_media_blocks_are_answered_or_refused_never_crash(blocks, nested):
    content: list[Any] = [*blocks, {"type": "text", "text": "What is this?"}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if nested:
        messages = [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": content}],
            },
        ]
    body = {"model": MODEL, "max_tokens": 200, "messages": messages}
    try:
        parsed = parse_messages_request(json.dumps(body).encode())
    except ApiError as error:
        assert error.status == 400
        return
    generation = Generation(parsed, message_id="msg_01")
    assert generation.message()["usage"]["input_tokens"] == input_tokens(parsed) > 0
