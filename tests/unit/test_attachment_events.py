"""The prompt's attachments on the wire: ids and display metadata, small, and checked."""

from __future__ import annotations

import json
import uuid

import pytest

from conversations import events
from conversations.agent.attachments import image_tokens
from emulators.anthropic.media import image_tokens as api_image_tokens

ONE = {"id": "5fbb5947-b349-4c3d-8ada-2e8c635e783e", "name": "red.png", "kind": "image", "type": "image/png",
       "size": 1234, "width": 64, "height": 48}  # fmt: skip


def test_a_prompt_round_trips_its_attachments_as_a_json_header():
    pdf = {"id": str(uuid.uuid4()), "name": "r.pdf", "kind": "pdf", "type": "application/pdf",
           "size": 9, "pages": 3}  # fmt: skip
    prompt = events.Prompt(
        prompt_id=str(uuid.uuid4()),
        text="look",
        attachments=(events.AttachmentRef.from_dict(ONE), events.AttachmentRef.from_dict(pdf)),
    )
    extras = prompt.extras()
    # A string, as Ably header values are meant to be primitives.
    assert isinstance(extras["headers"]["attachments"], str)
    assert json.loads(extras["headers"]["attachments"]) == [ONE, pdf]
    assert events.Prompt.from_wire("look", extras) == prompt


def test_a_prompt_without_attachments_has_no_header():
    prompt = events.Prompt(prompt_id=str(uuid.uuid4()), text="hi")
    assert "attachments" not in prompt.extras()["headers"]
    assert events.Prompt.from_wire("hi", prompt.extras()).attachments == ()


def test_twenty_files_stay_far_under_ablys_64_kib_message_limit():
    many = [{**ONE, "id": str(uuid.uuid4()), "name": "x" * 200} for _ in range(20)]
    prompt = events.Prompt(
        prompt_id=str(uuid.uuid4()),
        text="y" * 20_000,
        attachments=tuple(events.AttachmentRef.from_dict(item) for item in many),
    )
    size = len(json.dumps({"data": prompt.data(), "extras": prompt.extras()}).encode())
    assert size < 32 * 1024


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ([ONE], "JSON string"),
        ("not json", "not JSON"),
        (json.dumps({"id": ONE["id"]}), "a list"),
        (json.dumps([{**ONE, "id": "../../etc/passwd"}]), "not a UUID"),
        (json.dumps([{**ONE, "kind": "svg"}]), "kind"),
        (json.dumps([ONE] * 101), "at most 100"),
    ],
)
def test_malformed_attachment_headers_are_refused(header, problem):
    extras = {"headers": {"promptId": str(uuid.uuid4()), "attachments": header}}
    with pytest.raises(events.EventError, match=problem):
        events.Prompt.from_wire("hi", extras)


@pytest.mark.parametrize(
    ("width", "height"), [(64, 48), (1000, 1000), (1568, 1568), (8000, 2000), (3000, 100)]
)
def test_the_agents_image_token_estimate_is_the_apis_resize_rule(width, height):
    # The stand-in implements the documented rule (resize, then pixels / 750).
    assert image_tokens(width, height) == api_image_tokens(width, height)
