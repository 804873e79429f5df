"""The real anthropic SDK sends images and documents to the stand-in: seen, priced or refused."""

from __future__ import annotations

import base64
from typing import Any

import anthropic
import pytest
from anthropic.types import ImageDimensionsTooLargeError

from emulators.anthropic import samples
from emulators.anthropic.media import image_tokens

MODEL = "claude-sonnet-5-5"


@pytest.fixture
def client(anthropic_server):
    return anthropic.Anthropic(
        base_url=anthropic_server.base_url, api_key="test-key", max_retries=0
    )


@pytest.fixture
def async_client(anthropic_server):
    return anthropic.AsyncAnthropic(
        base_url=anthropic_server.base_url, api_key="test-key", max_retries=0
    )


def asking(*blocks: dict[str, Any], question: str = "What is in this?") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": question}]}]


def refused(client: anthropic.Anthropic, *blocks: dict[str, Any]) -> anthropic.BadRequestError:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=asking(*blocks))
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    return caught.value


def message_of(error: anthropic.APIStatusError) -> str:
    assert isinstance(error.body, dict)
    return str(error.body["error"]["message"])


# --- seen ----------------------------------------------------------------------------------------


async def test_a_streamed_reply_describes_an_image_and_counts_its_tokens(async_client):
    image = samples.image_block(samples.png(640, 480, (220, 30, 30)))
    messages = asking(image)
    async with async_client.messages.stream(
        model=MODEL, max_tokens=500, messages=messages
    ) as stream:
        streamed = "".join([text async for text in stream.text_stream])
        final = await stream.get_final_message()

    assert "640x480 PNG, mostly red" in streamed
    text_only = await async_client.messages.count_tokens(
        model=MODEL, messages=asking(question="What is in this?")
    )
    counted = await async_client.messages.count_tokens(model=MODEL, messages=messages)
    assert counted.input_tokens == text_only.input_tokens + image_tokens(640, 480)
    assert final.usage.input_tokens == counted.input_tokens


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp"), ("PNG", "image/png")],
)
def test_every_image_type_claude_accepts_is_seen(client, fmt, media_type):
    data = samples.image(300, 120, (30, 160, 60), fmt=fmt)
    message = client.messages.create(
        model=MODEL, max_tokens=200, messages=asking(samples.image_block(data, media_type))
    )
    assert "300x120" in message.content[0].text
    assert "mostly green" in message.content[0].text


def test_a_pdf_reply_gives_its_page_count_and_first_line(client):
    document = samples.pdf_block(samples.pdf(["Annual report 2026\nAll good.", "Appendix"]))
    message = client.messages.create(model=MODEL, max_tokens=200, messages=asking(document))
    assert '2 pages; its first line reads: "Annual report 2026"' in message.content[0].text
    # Two Letter pages: each at least one page image's worth of tokens.
    assert message.usage.input_tokens > 2 * image_tokens(1224, 1584)


def test_a_plain_text_document_is_read(client):
    document = samples.text_document_block("Minutes of the meeting\nAll present.", title="Minutes")
    message = client.messages.create(model=MODEL, max_tokens=200, messages=asking(document))
    assert '"Minutes of the meeting"' in message.content[0].text


def test_the_same_attachments_give_the_same_reply(client):
    messages = asking(
        samples.image_block(samples.png(64, 64, (250, 150, 190))),
        samples.pdf_block(samples.pdf(["Menu"])),
    )
    first = client.messages.create(model=MODEL, max_tokens=200, messages=messages)
    second = client.messages.create(model=MODEL, max_tokens=200, messages=messages)
    assert first.content[0].text == second.content[0].text
    assert "mostly pink" in first.content[0].text


# --- refused -------------------------------------------------------------------------------------


def test_an_unknown_media_type_is_refused(client):
    block = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/svg+xml", "data": ""},
    }
    assert message_of(refused(client, block)) == (
        "messages.0.content.0.image.source.base64.media_type: Input should be 'image/jpeg', "
        "'image/png', 'image/gif' or 'image/webp'"
    )


def test_invalid_base64_is_refused(client):
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "%%"}}
    assert message_of(refused(client, block)) == (
        "messages.0.content.0.image.source.base64: invalid base64 data"
    )


def test_a_renamed_file_whose_bytes_are_html_is_refused(client):
    block = samples.image_block(b"<!doctype html><script>alert(1)</script>", "image/png")
    assert message_of(refused(client, block)) == (
        "messages.0.content.0.image.source.base64.data: Could not process image"
    )


def test_a_media_type_that_does_not_match_the_bytes_is_refused(client):
    block = samples.image_block(samples.image(10, 10, fmt="JPEG"), "image/png")
    assert message_of(refused(client, block)) == (
        "messages.0.content.0.image.source.base64: The image was specified using the image/png "
        "media type, but the image appears to be a image/jpeg image"
    )


def test_an_image_over_5_mb_is_refused(client):
    data = b"\x89PNG\r\n\x1a\n" + bytes(4 * 1024 * 1024)
    length = len(base64.b64encode(data))
    assert message_of(refused(client, samples.image_block(data))) == (
        f"messages.0.content.0.image.source.base64: image exceeds 5 MB maximum: {length} bytes "
        "> 5242880 bytes"
    )


def test_an_image_over_8000_pixels_raises_the_sdks_typed_error(client):
    with pytest.raises(ImageDimensionsTooLargeError) as caught:
        client.messages.create(
            model=MODEL, max_tokens=10, messages=asking(samples.image_block(samples.png(2, 8001)))
        )
    assert caught.value.details.max_side_length_pixels == 8000
    assert caught.value.details.paths == ["messages.0.content.0"]


def test_more_than_20_images_hold_every_image_to_2000_pixels(client):
    small = samples.image_block(samples.png(2, 2))
    with pytest.raises(ImageDimensionsTooLargeError) as caught:
        client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=asking(*[small] * 20, samples.image_block(samples.png(2400, 2))),
        )
    assert caught.value.details.max_side_length_pixels == 2000
    assert caught.value.details.paths == ["messages.0.content.20"]
    assert "for many-image requests: 2000 pixels" in message_of(caught.value)


def test_more_than_100_images_are_refused(client):
    small = samples.image_block(samples.png(1, 1))
    assert message_of(refused(client, *[small] * 101)) == (
        "Too much media: 0 document pages + 101 images > 100"
    )


def test_a_pdf_over_100_pages_is_refused(client):
    block = samples.pdf_block(samples.pdf([f"p{n}" for n in range(101)]))
    assert message_of(refused(client, block)) == (
        "messages.0.content.0.pdf.source.base64.data: A maximum of 100 PDF pages may be provided."
    )


def test_an_invalid_pdf_is_refused(client):
    assert message_of(refused(client, samples.pdf_block(b"%PDF-1.7 not really"))) == (
        "messages.0.content.0.pdf.source.base64.data: The PDF specified was not valid."
    )


def test_a_request_over_the_size_limit_is_413_and_the_stand_in_keeps_answering(
    client, anthropic_server
):
    anthropic_server.max_body_bytes = 200_000  # 32 MB in production; lowered to keep this quick
    big_pdf = samples.pdf_block(samples.pdf(["x" * 2000] * 80))
    assert len(big_pdf["source"]["data"]) > 200_000
    with pytest.raises(anthropic.ContentTooLargeError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=asking(big_pdf))
    assert caught.value.status_code == 413
    assert caught.value.type == "request_too_large"

    after = client.messages.create(
        model=MODEL, max_tokens=50, messages=asking(samples.image_block(samples.png(8, 8)))
    )
    assert "8x8 PNG" in after.content[0].text
