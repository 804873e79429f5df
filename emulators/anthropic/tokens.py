"""The stand-in's tokenizer: a word, up to three digits or one symbol, with its leading space.

Not Claude's tokenizer, but stable and cheap, and every character belongs to exactly one token
(`"".join(tokenize(s)) == s`), so streamed deltas and usage always agree.
"""

from __future__ import annotations

import re

_TOKEN_RE = re.compile(r"\s*[A-Za-z]+|\s*\d{1,3}|\s*[^\sA-Za-z\d]|\s+")


def tokenize(text: str) -> list[str]:
    """Split text into tokens: a word, up to three digits or one symbol, with leading space."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return len(tokenize(text))
