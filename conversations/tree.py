"""A conversation's messages as a tree (issue 16), read from one query's rows.

A message's `parent` is the message it follows: a reply's is its prompt, a prompt's the reply it
continues (null at the root). The conversation's `current_leaf` names the shown path: the leaf
and its ancestors. Sibling prompts are edits of one another; sibling replies (same prompt) are
versions. These helpers take already-loaded rows so a page or a model request costs one query.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .models import Message


class Node(Protocol):
    """What the path and the wire id read of a message: a `Message`, or a leaner row of its
    columns (the agent's `actions.TreeRow`, issue 14: no model instance per message per reply)."""

    @property
    def pk(self) -> Any: ...
    @property
    def parent_id(self) -> Any: ...
    @property
    def role(self) -> str: ...
    @property
    def prompt_id(self) -> Any: ...
    @property
    def response_id(self) -> Any: ...


N = TypeVar("N", bound=Node)


def wire_id(message: Node) -> str:
    """The id devices know a message by: a reply's responseId, a prompt's promptId."""
    if message.role == Message.Role.ASSISTANT and message.response_id:
        return str(message.response_id)
    return str(message.prompt_id)


def path_to(messages: Iterable[N], leaf_pk: int | None) -> list[N]:
    """The path from the root down to `leaf_pk` (root first); empty without a leaf."""
    by_pk = {m.pk: m for m in messages}
    path: list[N] = []
    seen: set[int] = set()
    node = by_pk.get(leaf_pk) if leaf_pk is not None else None
    while node is not None and node.pk not in seen:
        seen.add(node.pk)
        path.append(node)
        node = by_pk.get(node.parent_id) if node.parent_id is not None else None
    path.reverse()
    return path


def newest_leaf_below(messages: Iterable[Message], start: Message) -> Message:
    """Follow the newest child from `start` down to a leaf: where a switched-to version leads."""
    children: dict[int, list[Message]] = {}
    for message in messages:
        if message.parent_id is not None:
            children.setdefault(message.parent_id, []).append(message)
    node = start
    seen = {node.pk}
    while kids := children.get(node.pk):
        node = max(kids, key=lambda m: (m.created_at, m.pk))
        if node.pk in seen:
            break
        seen.add(node.pk)
    return node


@dataclass(frozen=True)
class Versions:
    """Where a message stands among its siblings: `index` of `count` (1-based), and their ids."""

    index: int
    count: int
    sibling_ids: tuple[str, ...]


def versions_of(messages: Iterable[Message]) -> dict[int, Versions]:
    """Each message's place among its siblings (prompts: same parent; replies: same prompt)."""
    groups: dict[tuple[str, object], list[Message]] = {}
    for message in messages:
        if message.role == Message.Role.ASSISTANT:
            key: tuple[str, object] = ("reply", message.prompt_id)
        else:
            key = ("prompt", message.parent_id)
        groups.setdefault(key, []).append(message)
    placed: dict[int, Versions] = {}
    for siblings in groups.values():
        siblings.sort(key=lambda m: (m.created_at, m.pk))
        ids = tuple(wire_id(m) for m in siblings)
        for index, message in enumerate(siblings, start=1):
            placed[message.pk] = Versions(index=index, count=len(siblings), sibling_ids=ids)
    return placed


def in_tree_order(messages: Iterable[Message]) -> list[Message]:
    """Depth first, older siblings first: every message comes after all its ancestors, so any
    one path read in this order is in conversation order (the page hides the other branches)."""
    rows = list(messages)
    present = {m.pk for m in rows}
    children: dict[int | None, list[Message]] = {}
    for message in rows:
        parent = message.parent_id if message.parent_id in present else None
        children.setdefault(parent, []).append(message)
    for kids in children.values():
        kids.sort(key=lambda m: (m.created_at, m.pk))
    ordered: list[Message] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        node = stack.pop()
        ordered.append(node)
        stack.extend(reversed(children.get(node.pk, [])))
    return ordered


def for_page(messages: Iterable[Message], leaf_pk: int | None) -> list[Message]:
    """Every message in tree order, each marked with what the page shows: `on_path`,
    `parent_wire_id` and `versions` (its place among its siblings)."""
    rows = list(messages)
    by_pk = {m.pk: m for m in rows}
    on_path = {m.pk for m in path_to(rows, leaf_pk)}
    # No shown path: rows written without the tree (not by the agent), read as one list.
    versions = versions_of(rows) if leaf_pk is not None else {}
    ordered = in_tree_order(rows)
    for message in ordered:
        parent = by_pk.get(message.parent_id) if message.parent_id is not None else None
        message.on_path = message.pk in on_path or leaf_pk is None
        message.parent_wire_id = wire_id(parent) if parent is not None else ""
        message.versions = versions.get(message.pk, Versions(1, 1, (wire_id(message),)))
    return ordered


def place_label(message: Message) -> str:
    """How the admin and the exports name a message's place (after `for_page`)."""
    versions = message.versions
    kind = "version" if message.role == Message.Role.ASSISTANT else "edit"
    label = f"{kind} {versions.index}/{versions.count}" if versions.count > 1 else ""
    if not message.on_path:
        label = f"{label}, not shown" if label else "not shown"
    return label
