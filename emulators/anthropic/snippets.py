"""Fenced code blocks for replies that ask for code: a few classics, else a generic helper."""

from __future__ import annotations

import re
from collections.abc import Sequence

# --- choosing -------------------------------------------------------------------------------------

_CODE_RE = re.compile(
    r"\b(code|function|script|program|implement|implementation|snippet|class|regex|algorithm|"
    r"example in|write (?:a|an|the|some)? ?(?:python|javascript|typescript|sql|bash|go|rust|java)|"
    r"in (?:python|javascript|typescript|sql|bash|go|rust|java)|"
    r"show (?:me )?(?:it in |how in |some |the )?(?:python|javascript|typescript|sql|bash|go|rust|java))\b",
    re.IGNORECASE,
)
_LANGUAGES: tuple[tuple[str, str], ...] = (
    ("typescript", r"\btypescript\b|\bts\b"),
    ("javascript", r"\bjavascript\b|\bjs\b|\bnode(?:\.?js)?\b|\breact\b"),
    ("sql", r"\bsql\b|\bquery\b|\bpostgres|\bsqlite\b|\bmysql\b"),
    ("bash", r"\bbash\b|\bshell\b|\bcommand line\b"),
    ("go", r"\bgolang\b|\bin go\b"),
    ("rust", r"\brust\b"),
    ("python", r"\bpython\b|\bdjango\b|\bpandas\b"),
)


def wants_code(prompt: str) -> bool:
    return bool(_CODE_RE.search(prompt))


def language_for(prompt: str) -> str:
    lowered = prompt.lower()
    for language, pattern in _LANGUAGES:
        if re.search(pattern, lowered):
            return language
    return "python"


def _identifier(words: Sequence[str], fallback: str) -> str:
    chosen = [re.sub(r"[^a-z0-9]", "", word) for word in words[:3]]
    chosen = [word for word in chosen if word and not word[0].isdigit()]
    return "_".join(chosen) or fallback


def code_block(prompt: str, words: Sequence[str]) -> str:
    language = language_for(prompt)
    lowered = prompt.lower()
    skip = {"python", "javascript", "typescript", "sql", "bash", "rust", "code", "function",
            "script", "program", "implement", "snippet", "example"}  # fmt: skip
    name = _identifier([word for word in words if word not in skip], "solve")
    if "fibonacci" in lowered:
        body = _FIBONACCI.get(language)
    elif "revers" in lowered:
        body = _REVERSE.get(language)
    elif "sort" in lowered:
        body = _SORT.get(language)
    elif "file" in lowered:
        body = _FILES.get(language)
    elif re.search(r"\b(http|fetch|api|request|download)\b", lowered):
        body = _HTTP.get(language)
    else:
        body = None
    if body is None:
        body = _generic_code(language, name)
    return f"```{language}\n{body.strip()}\n```"


_FIBONACCI = {
    "python": '''
def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]


print(fibonacci(10))  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
''',
    "javascript": """
function fibonacci(n) {
  const numbers = [0, 1];
  while (numbers.length < n) {
    numbers.push(numbers.at(-1) + numbers.at(-2));
  }
  return numbers.slice(0, n);
}

console.log(fibonacci(10)); // [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
""",
}
_REVERSE = {
    "python": '''
class Node:
    def __init__(self, value, next=None):
        self.value = value
        self.next = next


def reverse(head: Node | None) -> Node | None:
    """Reverse a singly linked list in place and return the new head."""
    previous = None
    while head is not None:
        head.next, previous, head = previous, head, head.next
    return previous
''',
    "javascript": """
function reverse(head) {
  let previous = null;
  while (head) {
    [head.next, previous, head] = [previous, head, head.next];
  }
  return previous;
}
""",
}
_SORT = {
    "python": '''
def merge_sort(items: list[int]) -> list[int]:
    """Sort a list with merge sort: O(n log n) and stable."""
    if len(items) <= 1:
        return items
    middle = len(items) // 2
    left, right = merge_sort(items[:middle]), merge_sort(items[middle:])
    merged = []
    while left and right:
        merged.append(left.pop(0) if left[0] <= right[0] else right.pop(0))
    return merged + left + right


print(merge_sort([5, 2, 9, 1, 5, 6]))  # [1, 2, 5, 5, 6, 9]
''',
    "javascript": """
const people = [{ name: "Ada", age: 36 }, { name: "Linus", age: 28 }];
const byAge = [...people].sort((a, b) => a.age - b.age);
console.log(byAge.map((p) => p.name)); // ["Linus", "Ada"]
""",
}


_FILES = {
    "python": """
from pathlib import Path

path = Path("notes.txt")
path.write_text("first line\\nsecond line\\n", encoding="utf-8")

with path.open(encoding="utf-8") as lines:
    for number, line in enumerate(lines, start=1):
        print(number, line.rstrip())
""",
    "javascript": """
import { readFile, writeFile } from "node:fs/promises";

await writeFile("notes.txt", "first line\\nsecond line\\n", "utf8");
const text = await readFile("notes.txt", "utf8");
text.split("\\n").filter(Boolean).forEach((line, i) => console.log(i + 1, line));
""",
}
_HTTP = {
    "python": """
import httpx

response = httpx.get("https://api.example.com/items", params={"limit": 10}, timeout=10)
response.raise_for_status()
for item in response.json():
    print(item["id"], item["name"])
""",
    "javascript": """
const response = await fetch("https://api.example.com/items?limit=10");
if (!response.ok) {
  throw new Error(`Request failed: ${response.status}`);
}
for (const item of await response.json()) {
  console.log(item.id, item.name);
}
""",
}


def _generic_code(language: str, name: str) -> str:
    camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), name)
    if language in ("javascript", "typescript"):
        annotation = ": string[]" if language == "typescript" else ""
        return f"""
function {camel}(items{annotation}) {{
  // Normalise, drop blanks, and keep the first occurrence of each item.
  const seen = new Set();
  return items
    .map((item) => item.trim())
    .filter((item) => item && !seen.has(item) && seen.add(item));
}}

console.log({camel}([" apple", "pear", "", "apple "])); // ["apple", "pear"]
"""
    if language == "sql":
        return f"""
-- {name.replace("_", " ")}: the ten most recent rows per user
SELECT user_id, id, created_at
FROM (
  SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY created_at DESC) AS rank
  FROM events
) ranked
WHERE rank <= 10
ORDER BY user_id, created_at DESC;
"""
    if language == "bash":
        return f"""
#!/usr/bin/env bash
# {name.replace("_", " ")}: count lines in every Python file, largest first
set -euo pipefail
find . -name '*.py' -print0 | xargs -0 wc -l | sort -rn | head -n 10
"""
    if language == "go":
        return f"""
package main

import "fmt"

func {camel}(items []string) map[string]int {{
\tcounts := make(map[string]int)
\tfor _, item := range items {{
\t\tcounts[item]++
\t}}
\treturn counts
}}

func main() {{
\tfmt.Println({camel}([]string{{"a", "b", "a"}})) // map[a:2 b:1]
}}
"""
    if language == "rust":
        return f"""
use std::collections::HashMap;

fn {name}(items: &[&str]) -> HashMap<String, usize> {{
    let mut counts = HashMap::new();
    for item in items {{
        *counts.entry(item.to_string()).or_insert(0) += 1;
    }}
    counts
}}

fn main() {{
    println!("{{:?}}", {name}(&["a", "b", "a"]));
}}
"""
    return f'''
def {name}(items: list[str]) -> list[str]:
    """Normalise the items, drop blanks and keep the first occurrence of each."""
    seen: set[str] = set()
    result = []
    for item in (item.strip() for item in items):
        if item and item not in seen:
            seen.add(item)
            result.append(item)
    return result


print({name}([" apple", "pear", "", "apple "]))  # ['apple', 'pear']
'''
