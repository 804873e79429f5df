"""One transcript fold, in Python and in the browser, checked on the same recorded transcripts.

`tests/fixtures/transcripts/*.json` hold what a device received on a conversation channel
(recorded against the stand-ins, then delivered out of order, twice, after a history read, with
a lost fragment repaired) and the replies the database stored for it. Both folds
(`conversations/transcript.py`, and `static/js/transcript.js` run in Node) must show those
replies, and must show the same thing as each other after every message.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ably.types.message import Message as AblyMessage

from conversations import events
from conversations.transcript import Transcript, fold

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "transcripts"
SCRIPT = Path(__file__).parent / "js" / "transcript_fold.mjs"
REPO_ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(path.stem for path in FIXTURES.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return fixture


def state(transcript: Transcript) -> dict[str, Any]:
    """What a page shows, in the shape the Node harness prints."""
    return {
        "replies": [
            [
                reply.response_id,
                reply.prompt_id,
                reply.text,
                reply.thinking,
                str(reply.status),
                reply.final,
                reply.error,
                [str(status) for status in reply.stops],
            ]
            for reply in transcript.replies.values()
        ],
        "refusals": [[refusal.prompt_id, refusal.message] for refusal in transcript.refusals],
    }


def python_steps(fixture: dict[str, Any], messages: list[Any]) -> list[dict[str, Any]]:
    transcript = Transcript(fixture["agentClientId"])
    steps = []
    for message in messages:
        transcript.apply(message)
        steps.append(state(transcript))
    return steps


@functools.cache
def browser_steps() -> dict[str, Any]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    completed = subprocess.run(
        ["node", "--no-warnings", str(SCRIPT)],
        input=json.dumps(
            {"contract": events.client_contract(), "fixtures": {n: load(n) for n in NAMES}}
        ),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    report: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return report


def shown(transcript: Transcript) -> dict[str, Any]:
    """The fixture's `expected` shape: each reply's final text, thinking and status."""
    return {
        "replies": sorted(
            (
                {
                    "responseId": reply.response_id,
                    "promptId": reply.prompt_id,
                    "text": reply.text,
                    "thinking": reply.thinking,
                    "status": str(reply.status),
                    "error": reply.error,
                }
                for reply in transcript.replies.values()
            ),
            key=lambda reply: reply["responseId"],
        ),
        "refusals": [
            {"promptId": refusal.prompt_id, "message": refusal.message}
            for refusal in transcript.refusals
        ],
    }


def expected(fixture: dict[str, Any]) -> dict[str, Any]:
    return {
        "replies": sorted(fixture["expected"]["replies"], key=lambda reply: reply["responseId"]),
        "refusals": fixture["expected"]["refusals"],
    }


def test_the_fixtures_cover_both_patterns_and_every_way_a_reply_ends() -> None:
    assert len(NAMES) >= 7
    patterns = {name.split("-")[1] for name in NAMES}
    assert patterns == {"response", "token"}
    for name in NAMES:
        statuses = {reply["status"] for reply in load(name)["expected"]["replies"]}
        assert statuses == {"complete", "cancelled", "error"}, name
        assert load(name)["expected"]["refusals"], name


@pytest.mark.parametrize("name", NAMES)
def test_the_python_fold_shows_what_the_database_stored(name: str) -> None:
    fixture = load(name)
    transcript = fold(fixture["messages"], fixture["agentClientId"])
    assert shown(transcript) == expected(fixture)
    # The `stop` a user device forged is ignored, not folded in.
    [forged] = transcript.ignored
    assert forged["name"] == events.Name.STOP and forged["clientId"] != fixture["agentClientId"]


@pytest.mark.parametrize("name", NAMES)
def test_sdk_messages_fold_exactly_like_wire_dicts(name: str) -> None:
    fixture = load(name)
    if not all(isinstance(m.get("action"), int) for m in fixture["messages"]):
        pytest.skip("ably-python decodes wire messages (numeric actions) only")
    wire = python_steps(fixture, fixture["messages"])
    sdk = python_steps(fixture, [AblyMessage.from_encoded(dict(m)) for m in fixture["messages"]])
    assert sdk == wire


@pytest.mark.parametrize("name", NAMES)
def test_the_browser_fold_agrees_with_the_python_fold_after_every_message(name: str) -> None:
    fixture = load(name)
    python = python_steps(fixture, fixture["messages"])
    browser = browser_steps()[name]
    assert browser["wire"] == python
    # As ably-js hands messages to the page (actions named, not numbered): the same.
    assert browser["decoded"] == python
