"""A prompt's attachments through the real agent: checked, linked, and sent to Claude as blocks.

ably-python devices publish prompts carrying attachment ids (as the page does); the agent talks
to the Anthropic stand-in with the real SDK, and the stand-in's record of each request is the
oracle for the blocks Claude received.
"""

from __future__ import annotations

import asyncio
import base64
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.core.files.uploadedfile import SimpleUploadedFile

from conversations import attachments, events
from conversations.models import Attachment, Conversation, Message
from emulators.anthropic import samples
from emulators.anthropic.media import image_tokens
from tests.agent_fixtures import stored_reply

RED = (220, 30, 30)


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def _upload(conversation, owner, name: str, content: bytes) -> events.AttachmentRef:
    stored = attachments.save_upload(conversation, owner, SimpleUploadedFile(name, content))
    return events.AttachmentRef.from_dict(attachments.wire_metadata(stored))


upload = sync_to_async(_upload)


async def send(device, text: str, files: list[events.AttachmentRef]) -> str:
    prompt = events.Prompt(prompt_id=str(uuid.uuid4()), text=text, attachments=tuple(files))
    await device.publish_raw(str(prompt.name), prompt.data(), prompt.extras())
    return prompt.prompt_id


def user_turns(request) -> list[dict]:
    return [message for message in request.body["messages"] if message["role"] == "user"]


def block_types(turn: dict) -> list[str]:
    content = turn["content"]
    return ["text"] if isinstance(content, str) else [block["type"] for block in content]


async def test_image_pdf_and_text_file_reach_claude_as_blocks_and_are_linked_to_the_prompt(
    running_agent, devices, alice, conversation, anthropic_server
):
    png = samples.png(64, 48, RED)
    pdf = samples.pdf(["Quarterly report", "Second page"])
    files = [
        await upload(conversation, alice, "red.png", png),
        await upload(conversation, alice, "report.pdf", pdf),
        await upload(conversation, alice, "notes.md", b"# Notes\nship it on Friday\n"),
    ]
    phone = await devices(alice, conversation)
    prompt_id = await send(phone, "What is in these files?", files)
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.COMPLETE, reply.error
    # The stand-in describes what it decoded: the agent really sent the bytes.
    assert "64x48 PNG, mostly red" in reply.text
    assert 'has 2 pages; its first line reads: "Quarterly report"' in reply.text

    request = anthropic_server.messages_requests[-1]
    (turn,) = user_turns(request)
    assert block_types(turn) == ["image", "document", "text", "text"]
    image, document, text_file, question = turn["content"]
    assert image["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(png).decode(),
    }
    assert document["source"]["media_type"] == "application/pdf"
    assert base64.b64decode(document["source"]["data"]) == pdf
    assert document["title"] == "report.pdf"
    assert "ship it on Friday" in text_file["text"] and "notes.md" in text_file["text"]
    assert (question["type"], question["text"]) == ("text", "What is in these files?")

    await running_agent.wait_idle()
    stored = await sync_to_async(stored_reply)(prompt_id)
    # Usage counts what the files cost: the image's tokens plus two PDF pages (1,500+ each).
    # (the prompt's tokens: uncached input plus what was written to or read from the cache)
    prompt_tokens = (
        stored.input_tokens + stored.cache_creation_input_tokens + stored.cache_read_input_tokens
    )
    assert prompt_tokens > image_tokens(64, 48) + 2 * 1500
    linked = await sync_to_async(
        lambda: sorted(
            Attachment.objects.filter(messages__prompt_id=prompt_id).values_list("name", flat=True)
        )
    )()
    assert linked == ["notes.md", "red.png", "report.pdf"]


async def test_an_attachment_of_another_conversation_or_user_is_refused_clearly(
    running_agent, devices, alice, bob, conversation, anthropic_server
):
    elsewhere = await sync_to_async(Conversation.objects.create)(owner=bob)
    bobs = await upload(elsewhere, bob, "secret.png", samples.png(8, 8))
    phone = await devices(alice, conversation)
    prompt_id = await send(phone, "What is in this image?", [bobs])
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.ERROR
    assert "not part of this conversation" in reply.error
    assert not anthropic_server.messages_requests
    linked = await sync_to_async(Attachment.messages.through.objects.count)()
    assert linked == 0

    # Bob's file even in Alice's conversation: uploaded by someone who may not write to it.
    planted = await upload(conversation, bob, "planted.png", samples.png(8, 8))
    prompt_id = await send(phone, "And this one?", [planted])
    reply = await phone.final_reply(prompt_id)
    assert reply.status == events.Status.ERROR and "not yours to send" in reply.error

    # The conversation keeps working.
    prompt_id = await send(phone, "Say exactly: still here", [])
    reply = await phone.final_reply(prompt_id)
    assert reply.text == "still here"


async def test_earlier_attachments_stay_in_context_and_the_oldest_go_first_with_a_note(
    start_agent, devices, alice, conversation, anthropic_server
):
    # Room for one PDF page (2,500 estimated tokens) besides the text, not for two.
    agent = await asyncio.to_thread(start_agent, context_token_budget=4000)
    phone = await devices(alice, conversation)
    old_pdf = await upload(conversation, alice, "old.pdf", samples.pdf(["Old minutes"]))
    first = await send(phone, "Say exactly: got the old one", [old_pdf])
    assert (await phone.final_reply(first)).status == events.Status.COMPLETE
    new_png = await upload(conversation, alice, "new.png", samples.png(20, 20, RED))
    second = await send(phone, "Say exactly: got the new one", [new_png])
    assert (await phone.final_reply(second)).status == events.Status.COMPLETE
    # The second request still carried the first turn's PDF: it fit the budget.
    turns = user_turns(anthropic_server.messages_requests[-1])
    assert [block_types(turn) for turn in turns] == [["document", "text"], ["image", "text"]]

    newer_pdf = await upload(conversation, alice, "newer.pdf", samples.pdf(["Newer minutes"]))
    third = await send(phone, "Say exactly: and the newest", [newer_pdf])
    assert (await phone.final_reply(third)).status == events.Status.COMPLETE
    turns = user_turns(anthropic_server.messages_requests[-1])
    # The newest prompt's own PDF always goes; the older PDF no longer fits and leaves a note;
    # the small image in between still fits.
    assert [block_types(turn) for turn in turns] == [
        ["text", "text"],
        ["image", "text"],
        ["document", "text"],
    ]
    note = turns[0]["content"][0]["text"]
    assert "left out" in note and "old.pdf (PDF, 1 page)" in note
    await agent.wait_idle()
    prompts = await sync_to_async(
        lambda: list(
            Message.objects.filter(role="user").values_list("attachments__name", flat=True)
        )
    )()
    assert sorted(prompts) == ["new.png", "newer.pdf", "old.pdf"]


async def test_a_retried_prompt_sends_the_same_files_once_in_its_newest_turn(
    running_agent, devices, alice, conversation, anthropic_server
):
    image = await upload(conversation, alice, "red.png", samples.png(16, 16, RED))
    phone = await devices(alice, conversation)
    first = await send(phone, "What is in this image?", [image])
    assert "16x16 PNG, mostly red" in (await phone.final_reply(first)).text
    again = await send(phone, "What is in this image?", [image])
    assert "16x16 PNG, mostly red" in (await phone.final_reply(again)).text
    turns = user_turns(anthropic_server.messages_requests[-1])
    assert [block_types(turn) for turn in turns] == [["text"], ["image", "text"]]
    links = await sync_to_async(Attachment.messages.through.objects.count)()
    assert links == 2
