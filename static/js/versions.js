// Issue 16: the conversation is a tree; the page shows one path through it, the same on every
// device. Every version stays in the DOM (stored turns in tree order, depth first, so any path
// reads top to bottom); the ones off the shown path are `hidden`. `< n/m >` on a prompt or reply
// with siblings asks Django to show another version (POST to the conversation's path URL), and
// Django tells every device with a `path` event (the agent does the same after a new prompt or
// reply version). Edit on your own prompt opens an inline editor whose prompt becomes a sibling.
//
// Ids are the ones devices know messages by: a reply's responseId, a prompt's promptId. A prompt's
// `data-parent-id` is the message it continues (empty at the root); a prompt sent before that
// reply started names the prompt, and is moved under the reply when it starts, as the agent does.

import { csrfToken } from "./realtime.js";
import { ensureBar, turnButton } from "./turn-controls.js";

// As events.PATH_EVENT_MAX_IDS: a longer path names only its newest ids.
const PATH_EVENT_MAX_IDS = 1000;

/**
 * `hooks.sendEdit(text, {editOf, parentId})` sends an edited prompt (false if refused);
 * `hooks.onChange()` runs after the shown path changed (controls, Regenerate visibility).
 */
export function createVersions(root, config, hooks) {
  const turnsElement = root.querySelector("[data-turns]");

  function turns() {
    return [...turnsElement.querySelectorAll("article.turn")];
  }

  function idOf(element) {
    return element.dataset.role === "assistant" ? element.dataset.responseId : element.dataset.promptId;
  }

  function elementFor(id) {
    if (!id) return null;
    return turns().find((element) => idOf(element) === id) || null;
  }

  // Sibling groups in one pass (a long conversation has thousands of turns): replies by their
  // prompt, prompts by their parent; each group in page order, which is creation order.
  function groupKey(element) {
    return element.dataset.role === "assistant"
      ? `reply:${element.dataset.promptId}`
      : `prompt:${element.dataset.parentId || ""}`;
  }

  function siblingGroups(all) {
    const groups = new Map();
    for (const element of all) {
      const key = groupKey(element);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(element);
    }
    return groups;
  }

  // Show exactly the path `ids` (root first). A path longer than an event carries names only its
  // newest part: above it nothing changed.
  function applyPath(ids) {
    if (!Array.isArray(ids)) return;
    const shown = new Set(ids);
    const all = turns();
    let from = 0;
    if (ids.length >= PATH_EVENT_MAX_IDS) {
      const first = all.findIndex((element) => idOf(element) === ids[0]);
      from = Math.max(first, 0);
    }
    all.slice(from).forEach((element) => (element.hidden = !shown.has(idOf(element))));
    refresh();
  }

  // A new prompt edits `element`, or a new reply version replaces it: it and what follows it on
  // the shown path make way at once (the agent's `path` event confirms it).
  function hideFrom(element) {
    if (!element || element.hidden) return;
    const all = turns();
    for (const other of all.slice(all.indexOf(element))) other.hidden = true;
  }

  // The agent moves prompts sent before a reply started under that reply (its first): so here.
  function adoptWaitingPrompts(replyElement) {
    const promptId = replyElement.dataset.promptId;
    const versions = turns().filter((other) => other.dataset.role === "assistant" && other.dataset.promptId === promptId);
    if (versions.length !== 1) return;
    for (const other of turns()) {
      if (other.dataset.role === "user" && other.dataset.parentId === promptId) other.dataset.parentId = replyElement.dataset.responseId;
    }
  }

  // The id a new prompt continues: the newest message on the shown path.
  function shownLeafId() {
    const visible = turns().filter((element) => !element.hidden);
    return visible.length ? idOf(visible[visible.length - 1]) : "";
  }

  // What a prompt arriving with these headers continues, as the agent will decide it.
  function parentFor({ parentId, editOf }) {
    if (editOf) {
      const edited = elementFor(editOf);
      if (edited) return edited.dataset.parentId || "";
    }
    let parent = parentId || shownLeafId();
    const element = elementFor(parent);
    if (element && element.dataset.role === "user") {
      const first = turns().find((other) => other.dataset.role === "assistant" && other.dataset.promptId === parent);
      if (first) parent = first.dataset.responseId;
    }
    return parent;
  }

  async function show(id, element) {
    try {
      const body = new FormData();
      body.set("messageId", id);
      const response = await fetch(config.conversationUrls.path, {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRFToken": csrfToken(root) },
      });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
      applyPath(data.ids);
      const target = elementFor(id) || element;
      if (target) target.scrollIntoView({ block: "nearest" });
    } catch (error) {
      const status = root.querySelector("[data-connection-status]");
      if (status) status.textContent = `Could not switch versions: ${error.message || error}`;
    }
  }

  function versionBar(element) {
    return ensureBar(element, ":scope > [data-version-bar]", "version-bar", "versionBar");
  }

  function button(label, name, title, onClick) {
    return turnButton(label, name, onClick, { className: "turn-action version-button", title });
  }

  function decorate(element, siblings) {
    const own = element.dataset.role === "user" && element.getAttribute("aria-label") === "You";
    const editable = own && !config.readOnly && !root.dataset.conversationDeleted;
    const index = siblings.indexOf(element);
    const previous = siblings[index - 1];
    const next = siblings[index + 1];
    // Unchanged since the last refresh: leave the buttons (and any focus on them) alone.
    const signature = [index, siblings.length, previous && idOf(previous), next && idOf(next), editable].join("|");
    const bar = versionBar(element);
    if (bar.dataset.signature === signature) return;
    bar.dataset.signature = signature;
    bar.replaceChildren();
    if (siblings.length > 1) {
      const prev = button("‹", "versionPrev", "Previous version", () => show(idOf(previous), element));
      prev.disabled = !previous;
      const label = document.createElement("span");
      label.className = "version-label";
      label.dataset.versionLabel = "";
      label.textContent = `${index + 1}/${siblings.length}`;
      const after = button("›", "versionNext", "Next version", () => show(idOf(next), element));
      after.disabled = !next;
      // A read-only viewer (staff) sees where it is, but the owner's path is theirs to switch.
      if (config.readOnly) bar.append(label);
      else bar.append(prev, label, after);
    }
    if (editable) bar.append(button("Edit", "edit", "Edit this message", () => openEditor(element)));
  }

  function refresh() {
    const all = turns();
    const groups = siblingGroups(all);
    for (const element of all) if (!element.hidden) decorate(element, groups.get(groupKey(element)));
    if (hooks.onChange) hooks.onChange();
  }

  function openEditor(element) {
    if (element.querySelector("[data-edit-form]")) return;
    const textElement = element.querySelector(".turn-text");
    const form = document.createElement("form");
    form.className = "edit-form";
    form.dataset.editForm = "";
    const input = document.createElement("textarea");
    input.className = "edit-input";
    input.dataset.editInput = "";
    input.setAttribute("aria-label", "Edit your message");
    input.value = textElement.textContent;
    input.rows = Math.min(12, Math.max(2, input.value.split("\n").length));
    const hint = document.createElement("p");
    hint.className = "composer-hint";
    hint.textContent = "Enter to send · Esc to cancel";
    form.append(input, hint);
    textElement.hidden = true;
    textElement.after(form);
    versionBar(element).hidden = true;
    const close = () => {
      form.remove();
      textElement.hidden = false;
      versionBar(element).hidden = false;
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        close();
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        const sent = hooks.sendEdit(input.value, {
          editOf: element.dataset.promptId,
          parentId: element.dataset.parentId || "",
        });
        if (sent) close();
      }
    });
    form.addEventListener("submit", (event) => event.preventDefault());
    input.focus();
  }

  return { applyPath, hideFrom, adoptWaitingPrompts, parentFor, shownLeafId, refresh, elementFor, idOf };
}
