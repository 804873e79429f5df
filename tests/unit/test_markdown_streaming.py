"""Unfinished markdown mid-stream (static/js/streaming-markdown.js), rendered by marked in Node.

Every prefix of each reply is rendered as the conversation page renders a reply still streaming;
what the reader sees must always be the beginning of the finished reply (no `**`, `[`, `](url`
or half-built table flashing), and the whole reply must render exactly as the plain render.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "js" / "markdown_streaming.mjs"
REPO_ROOT = Path(__file__).resolve().parents[2]

REPLIES = [
    "Here is **bold text** and *emphasis* and ~~gone~~ and `inline code` in one line.\n\n"
    'A [link to the docs](https://example.com/docs "Docs") and an image '
    "![a chart](http://127.0.0.1:9/pixel) inline.\n",
    "## Steps\n\n1. First **do this**\n2. Then *that*\n   - a nested bullet with `code`\n"
    "   - another one\n\n* star bullet\n* second star\n\n> A quote with **weight**.\n",
    "Some code:\n\n```python\ndef f(x):\n    return x ** 2  # power, not bold\n```\n\n"
    "After the fence, __underline bold__ and snake_case_names stay.\n",
    "| Name | Value |\n| --- | ---: |\n| alpha | 1 |\n| beta | **2** |\n\nDone.\n",
    "Title\n-----\n\nText with 5 * 3 = 15 and a trailing rule\n\n---\n\nEnd with ***both*** styles.",
    "Nested **bold with *italic* inside** and a [bold **link**](https://example.com) end.",
    "Use ``a ` tick`` and `x_y` then ~~~\nfenced with tildes\n~~~\nand a [ref][docs] link.\n\n"
    "[docs]: https://example.com\n",
]


@functools.cache
def report() -> dict:
    return run_script(REPLIES)


def run_script(replies: list[str]) -> dict:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    completed = subprocess.run(
        ["node", "--no-warnings", str(SCRIPT)],
        input=json.dumps(replies),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_every_prefix_shows_the_beginning_of_the_final_reply() -> None:
    assert report()["prefixes"] == sum(len(reply) for reply in REPLIES)
    assert report()["notPrefix"] == []


def test_a_complete_reply_renders_as_the_plain_render() -> None:
    assert report()["finalsDiffer"] == []


def test_the_check_catches_raw_markers_without_completion() -> None:
    """Rendering the bare prefixes instead fails the same check (a raw `**` shows, then goes)."""
    assert report()["plainLeaks"] > 0
