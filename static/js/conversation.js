// One conversation in the main pane: stored turns from Django, then the live channel
// `ai:<conversation>`. `mountConversation` runs it in a pane on the tab's one ably-js connection and
// `unmount` leaves the channel again, so the sidebar can switch conversations without a reload.
//
// Order of work (ai-transport C3/C4): render the stored turns, SUBSCRIBE (which attaches and fixes
// the attach point), then read history up to that point for the reply still in progress. Live
// messages that arrive meanwhile wait in a queue and are applied after. Every apply is idempotent,
// so history and live overlap harmlessly: prompts by promptId, message-per-response operations by
// their version serial, message-per-token fragments by seq (static/js/transcript.js, the fold
// shared in its rules with conversations/transcript.py and checked against it by test).

import { CONVERSATION_GONE_EVENT, authorizeFor, csrfToken, headersOf, newUuid, userScoped } from "./realtime.js";
import { attachCopyButton, renderMarkdown, renderPlain } from "./markdown.js";
// Attachments (issue 17): the composer's files and the list under a prompt.
import { attachmentsHeader, bindComposerAttachments, parseAttachmentsHeader, renderAttachmentList } from "./attachments.js";
import { createVersions } from "./versions.js";
import { ensureBar, turnButton } from "./turn-controls.js";
import { createTranscript, newReply, partText } from "./transcript.js";

const HISTORY_PAGE_LIMIT = 1000;
const HISTORY_MAX_PAGES = 50;
// Short replies re-render on the next animation frame (the soonest a change can be painted, and
// every append within one frame coalesces). A long answer costs more to re-render: repaint it
// less often so typing stays responsive.
const LONG_REPLY_CHARS = 8000;
const LONG_REPLY_RENDER_DELAY_MS = 120;
const STICKY_SCROLL_SLACK_PX = 80;
// Leaving a conversation must not hang on a network that is gone: the channel is released anyway.
const LEAVE_TIMEOUT_MS = 3000;

/**
 * Show `config`'s conversation in `root` (the page's main pane) on the shared `realtime` client.
 * `hooks.onCreated(config)`: a draft became a conversation (its first prompt, or its first file,
 * created it). `hooks.onFirstPrompt(config)`: the first prompt of a conversation that a file
 * created (and that no list shows yet, being empty until now) reached the channel.
 * Returns the view: `unmount()`, `onListChange(change)`, `hasUnsent()`, `focusComposer()`.
 */
export function mountConversation(realtime, root, config, hooks = {}) {
  const contract = config.contract;
  const NAMES = contract.names;
  const PARTS = contract.parts;
  const STATUS = contract.statuses;
  const FINAL_STATUSES = new Set(contract.finalStatuses);
  const AGENT_NAMES = new Set(contract.agentNames);
  const AGENT_STATUS_LABELS = {
    [contract.agentStatuses.idle]: "Claude is ready",
    [contract.agentStatuses.thinking]: "Claude is thinking…",
    [contract.agentStatuses.streaming]: "Claude is writing…",
    [contract.agentStatuses.retrying]: "Claude is busy — retrying…",
  };

  const turnsElement = root.querySelector("[data-turns]");
  const composer = root.querySelector("[data-composer]");
  const composerInput = root.querySelector("[data-composer-input]");
  const composerError = root.querySelector("[data-composer-error]");
  const stopButton = root.querySelector("[data-stop]");
  const agentStatusElement = root.querySelector("[data-agent-status]");
  const presenceElement = root.querySelector("[data-presence]");
  // Every listener on window, the connection or the channel goes when the view is unmounted.
  const listeners = new AbortController();
  const { signal } = listeners;
  // The composer's files stop with the view, or earlier when the conversation is deleted.
  const composerFileListeners = new AbortController();
  signal.addEventListener("abort", () => composerFileListeners.abort(), { once: true });

  const prompts = new Map(); // promptId -> {promptId, text, element, state}
  // Each reply's text and status, folded from the channel; the page adds each reply's element.
  const transcript = createTranscript(contract, { agentClientId: config.agentClientId, onNewReply: showNewReply });
  const replies = transcript.replies; // responseId -> Reply
  const outbox = []; // prompts typed but not yet accepted by Ably, oldest first

  let channel = null;
  let mounted = true;
  let deleted = false;
  let creating = null; // the POST that turns a draft into a conversation, while in flight
  let hydrating = true;
  let liveQueue = [];
  let hydratedOnce = false;
  let agentStatus = null;
  let stickToBottom = true;
  let composerFiles = null; // issue 17: bindComposerAttachments(), null when read-only
  let creatingForOutbox = false; // the outbox waits on the draft's create POST

  // Issue 16 (static/js/versions.js): the shown path, `< n/m >`, Edit.
  const versions = createVersions(root, config, {
    sendEdit: (text, placement) => sendPrompt(text, placement),
    onChange: () => {
      refreshRegenerateVisibility();
      updateControls();
    },
  });

  // ---------------------------------------------------------------------------------------------
  // Scrolling: follow the stream unless the reader scrolled up to read something earlier.

  function scrollingElement() {
    return document.scrollingElement || document.documentElement;
  }

  function nearBottom() {
    const scroller = scrollingElement();
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < STICKY_SCROLL_SLACK_PX;
  }

  // A wheel or key scroll upwards is often animated over several frames, and its first scroll
  // events can still be near the bottom: a token arriving then would snap the page back down
  // and cancel the reader's scroll. So an upward intent stops the following at once, and only a
  // scroll back to the bottom (or a downward intent) restores it.
  let readerScrollingUp = false;
  const UPWARD_KEYS = new Set(["ArrowUp", "PageUp", "Home"]);

  function readerScrolls(upwards) {
    readerScrollingUp = upwards;
    if (upwards) stickToBottom = false;
  }

  window.addEventListener("wheel", (event) => event.deltaY && readerScrolls(event.deltaY < 0), {
    passive: true,
    signal,
  });
  window.addEventListener("keydown", (event) => {
    if (event.target.closest?.("input, textarea, [contenteditable]")) return;
    if (UPWARD_KEYS.has(event.key)) readerScrolls(true);
    else if (["ArrowDown", "PageDown", "End", " "].includes(event.key)) readerScrolls(false);
  }, { signal });
  window.addEventListener(
    "scroll",
    () => {
      if (readerScrollingUp) {
        if (!nearBottom()) readerScrollingUp = false; // left the bottom: plain tracking again
        return;
      }
      stickToBottom = nearBottom();
    },
    { passive: true, signal },
  );

  function followStream() {
    if (stickToBottom) scrollingElement().scrollTop = scrollingElement().scrollHeight;
  }

  // ---------------------------------------------------------------------------------------------
  // Turns in the DOM.

  function removeEmptyNote() {
    const empty = turnsElement.querySelector("[data-turns-empty]");
    if (empty) empty.remove();
  }

  function turnShell(role) {
    const article = document.createElement("article");
    article.className = `turn turn-${role}`;
    article.dataset.role = role;
    const text = document.createElement("div");
    text.className = "turn-text";
    text.dataset.markdown = "";
    article.append(text);
    return article;
  }

  function setNotice(element, text, kind) {
    let notice = element.querySelector("[data-turn-notice]");
    if (!text) {
      if (notice) notice.remove();
      return;
    }
    if (!notice) {
      notice = document.createElement("p");
      notice.dataset.turnNotice = "";
      notice.setAttribute("role", "note");
      element.querySelector(".turn-text").after(notice);
    }
    notice.className = `turn-notice${kind ? ` turn-notice-${kind}` : ""}`;
    notice.textContent = text;
  }

  function actionBar(element) {
    return ensureBar(element, "[data-turn-actions]", "turn-actions", "turnActions");
  }

  function actionButton(bar, label, name, onClick) {
    const button = turnButton(label, name, onClick);
    bar.append(button);
    return button;
  }

  // ---------------------------------------------------------------------------------------------
  // Prompts.

  function promptElementFor(promptId) {
    const entry = prompts.get(promptId);
    return entry ? entry.element : null;
  }

  function setPromptState(entry, state, detail) {
    entry.state = state;
    entry.element.dataset.sendState = state;
    const bar = actionBar(entry.element);
    bar.replaceChildren();
    const label = document.createElement("span");
    label.className = "send-state";
    label.dataset.sendStateLabel = "";
    if (state === "queued") label.textContent = "Waiting for connection — will send when back online";
    else if (state === "sending") label.textContent = "Sending…";
    else if (state === "failed") label.textContent = detail || "Not sent.";
    if (state === "failed") entry.awaitingReply = false;
    if (label.textContent) bar.append(label);
    updateControls();
    if (state === "failed") {
      actionButton(bar, "Send again", "resend", () => {
        outbox.push(entry);
        setPromptState(entry, "queued");
        flushOutbox();
      });
    }
  }

  function addPrompt(
    promptId,
    text,
    { fromHere = false, clientId = null, awaitingReply = true, attachments = [], parentId = "", editOf = "" } = {},
  ) {
    if (prompts.has(promptId)) return prompts.get(promptId);
    removeEmptyNote();
    const element = turnShell("user");
    element.dataset.promptId = promptId;
    // Issue 16: where it goes in the tree; an edit's prompt replaces the edited one on the path.
    element.dataset.parentId = versions.parentFor({ parentId, editOf });
    if (editOf) versions.hideFrom(versions.elementFor(editOf));
    element.setAttribute("aria-label", fromHere || clientId === config.clientId ? "You" : "Prompt");
    renderPlain(element.querySelector(".turn-text"), text);
    // Issue 17: the files sent with it, under the text.
    const fileList = renderAttachmentList(config.attachments, attachments);
    if (fileList) element.querySelector(".turn-text").after(fileList);
    turnsElement.append(element);
    // Until its reply starts, Stop cancels the prompt itself (the agent may still be queueing it).
    const entry = { promptId, text, element, state: "sent", awaitingReply, attachments, parentId, editOf };
    prompts.set(promptId, entry);
    if (fromHere) setPromptState(entry, "sending");
    versions.refresh();
    followStream();
    updateControls();
    return entry;
  }

  // ---------------------------------------------------------------------------------------------
  // Replies. A reply has one growing text per part (`text`, `thinking`), folded by transcript.js.

  // The transcript heard of a new reply (it is in `replies` already): give it its element.
  function showNewReply(reply) {
    const { responseId, promptId } = reply;
    removeEmptyNote();
    const element = turnShell("assistant");
    element.dataset.responseId = responseId;
    element.dataset.promptId = promptId || "";
    element.setAttribute("aria-label", "Claude");
    reply.element = element;
    reply.renderTimer = null;
    const prompt = promptId ? prompts.get(promptId) : null;
    if (prompt) prompt.awaitingReply = false;
    // Issue 16: a new version of a prompt's reply replaces the one shown (and what followed it).
    const shownVersion = [...replies.values()].find(
      (other) => other !== reply && other.promptId === promptId && promptId && !other.element.hidden,
    );
    if (shownVersion) versions.hideFrom(shownVersion.element);
    placeReply(reply);
    versions.adoptWaitingPrompts(element);
    setStreaming(reply, true);
    versions.refresh();
    showAgentStatus();
  }

  function placeReply(reply) {
    // Right after its prompt (and any earlier replies to it), else at the end.
    const promptElement = reply.promptId ? promptElementFor(reply.promptId) : null;
    if (!promptElement) {
      turnsElement.append(reply.element);
      return;
    }
    let anchor = promptElement;
    while (
      anchor.nextElementSibling &&
      anchor.nextElementSibling.dataset.role === "assistant" &&
      anchor.nextElementSibling.dataset.promptId === reply.promptId
    ) {
      anchor = anchor.nextElementSibling;
    }
    anchor.after(reply.element);
  }

  function setStreaming(reply, streaming) {
    reply.element.dataset.status = streaming ? STATUS.streaming : reply.status;
    // Screen readers hear the finished answer once instead of every repaint of it.
    reply.element.setAttribute("aria-busy", streaming ? "true" : "false");
    reply.element.classList.toggle("is-streaming", streaming);
    updateControls();
  }

  function thinkingBox(reply) {
    let box = reply.element.querySelector("[data-thinking]");
    if (!box) {
      box = document.createElement("details");
      box.className = "turn-thinking";
      box.dataset.thinking = "";
      const summary = document.createElement("summary");
      summary.textContent = "Thinking";
      const body = document.createElement("div");
      body.className = "turn-thinking-text";
      body.dataset.markdown = "";
      box.append(summary, body);
      reply.element.prepend(box);
    }
    return box;
  }

  function scheduleRender(reply) {
    if (reply.renderTimer) return;
    const long = (reply.element.querySelector(".turn-text").dataset.rawText || "").length > LONG_REPLY_CHARS;
    const render = () => {
      reply.renderTimer = null;
      renderReply(reply);
    };
    if (long) {
      const id = setTimeout(render, LONG_REPLY_RENDER_DELAY_MS);
      reply.renderTimer = { cancel: () => clearTimeout(id) };
    } else {
      const id = requestAnimationFrame(render);
      reply.renderTimer = { cancel: () => cancelAnimationFrame(id) };
    }
  }

  function renderReply(reply) {
    if (reply.renderTimer) {
      reply.renderTimer.cancel();
      reply.renderTimer = null;
    }
    const thinking = partText(reply.parts[PARTS.thinking]);
    if (thinking) {
      const box = thinkingBox(reply);
      box.querySelector("summary").textContent = reply.final ? "Thinking" : "Thinking…";
      renderMarkdown(box.querySelector(".turn-thinking-text"), thinking, { streaming: !reply.final });
    }
    const text = partText(reply.parts[PARTS.text]);
    const textElement = reply.element.querySelector(".turn-text");
    textElement.dataset.rawText = text;
    renderMarkdown(textElement, text, { streaming: !reply.final });
    reply.element.classList.toggle("is-waiting", !text && !reply.final);
    showAgentStatus();
    followStream();
  }

  // The transcript made the reply final (its status and error are set): show how it ended.
  function finishReply(reply) {
    const status = reply.status;
    renderReply(reply);
    setStreaming(reply, false);
    if (status === STATUS.error) {
      setNotice(reply.element, reply.error || "Claude could not answer this time.", "error");
    } else if (status === STATUS.cancelled) {
      setNotice(reply.element, "Stopped.");
    } else if (status === STATUS.interrupted) {
      setNotice(reply.element, "This answer was interrupted.");
    } else {
      setNotice(reply.element, "");
    }
    decorateFinalReply(reply);
  }

  function promptTextFor(promptId) {
    const entry = prompts.get(promptId);
    return entry ? entry.text : null;
  }

  function decorateFinalReply(reply) {
    const bar = actionBar(reply.element);
    bar.replaceChildren();
    // An error or a stop before the first token leaves nothing to copy.
    if (partText(reply.parts[PARTS.text]).trim()) {
      const copy = actionButton(bar, "Copy", "copyReply", () => {});
      attachCopyButton(copy, () => partText(reply.parts[PARTS.text]));
    }
    if (config.readOnly || deleted) return;
    const promptText = promptTextFor(reply.promptId);
    if (promptText === null) return;
    // Issue 16: both ask for a new version of this prompt's reply, shown in its place (the agent
    // sends the prompt's stored files again, issue 17).
    if (reply.status === STATUS.error || reply.status === STATUS.interrupted) {
      actionButton(bar, "Retry", "retry", (event) => requestVersion(reply, event.currentTarget));
    }
    actionButton(bar, "Regenerate", "regenerate", (event) => requestVersion(reply, event.currentTarget));
    refreshRegenerateVisibility();
  }

  // Only the newest answer shown offers Regenerate: regenerating an old one would answer out of
  // order (flip to an older version's path to regenerate there).
  function refreshRegenerateVisibility() {
    const buttons = [...turnsElement.querySelectorAll("article.turn:not([hidden]) [data-regenerate]")];
    buttons.forEach((button, index) => (button.hidden = index !== buttons.length - 1));
  }

  // Issue 16: Regenerate and Retry publish a `regenerate` request; the agent answers it once.
  function requestVersion(reply, button) {
    if (!channel || !reply.promptId) return;
    if (button) button.disabled = true;
    readerScrolls(false);
    stickToBottom = true;
    channel
      .publish({ name: NAMES.regenerate, data: "", extras: { headers: { promptId: reply.promptId, requestId: newUuid() } } })
      .catch((error) => {
        if (button) button.disabled = false;
        showComposerError(`Could not ask again: ${error.message || error}`);
      });
  }

  // ---------------------------------------------------------------------------------------------
  // Applying channel messages (live, or from history while hydrating).

  // The agent's own names are trusted (from its clientId only) by the transcript.
  function isTrusted(message) {
    if (message.name === NAMES.title || message.name === NAMES.path) {
      return message.clientId === config.agentClientId || message.clientId === config.serverClientId;
    }
    return true;
  }

  // start, response, token, snapshot, stop and refusal: folded by the transcript, then shown.
  function applyAgentMessage(message) {
    const result = transcript.apply(message);
    if (!result) return;
    if (result.ignored) {
      console.warn(`Ignoring ${result.ignored}`);
      return;
    }
    if (result.refusal) {
      applyRefusal(result.refusal);
      return;
    }
    if (result.finished) finishReply(result.reply);
    else if (result.changed) scheduleRender(result.reply);
  }

  function applyMessage(message) {
    if (AGENT_NAMES.has(message.name)) return applyAgentMessage(message);
    if (!isTrusted(message)) {
      console.warn(`Ignoring ${message.name} from untrusted client ${message.clientId}`);
      return;
    }
    switch (message.name) {
      case NAMES.prompt:
        return applyPrompt(message);
      case NAMES.title:
        return applyTitle(typeof message.data === "string" ? message.data : "");
      case NAMES.path:
        return applyPathMessage(message);
      default:
        return undefined; // cancel and anything newer than this client: nothing to show.
    }
  }

  function applyPrompt(message) {
    const promptId = headersOf(message).promptId;
    if (typeof promptId !== "string" || typeof message.data !== "string") return;
    const entry = prompts.get(promptId);
    if (entry) {
      if (entry.state !== "sent") setPromptState(entry, "sent");
      return;
    }
    const headers = headersOf(message);
    addPrompt(promptId, message.data, {
      clientId: message.clientId,
      attachments: parseAttachmentsHeader(headers), // issue 17
      parentId: typeof headers.parentId === "string" ? headers.parentId : "",
      editOf: typeof headers.editOf === "string" ? headers.editOf : "",
    });
  }

  function applyPathMessage(message) {
    let ids = null;
    try {
      ids = JSON.parse(typeof message.data === "string" ? message.data : "null");
    } catch {
      return;
    }
    versions.applyPath(ids);
    followStream();
  }

  // The agent will not answer a prompt (malformed, conversation deleted, not storable): the
  // prompt shows why instead of waiting for a reply that never comes.
  function applyRefusal(refusal) {
    const promptId = refusal.promptId;
    const reason = refusal.message || "Not answered.";
    const entry = typeof promptId === "string" ? prompts.get(promptId) : undefined;
    if (entry) {
      // A prompt that already has a reply was answered (a refusal can only be a late repeat).
      if (!promptIsSettled(promptId)) setPromptState(entry, "failed", reason);
      return;
    }
    showStatusNote(reason);
  }

  function applyTitle(title) {
    if (!title || !mounted) return;
    for (const element of root.querySelectorAll("[data-conversation-title]")) element.textContent = title;
    document.title = `${deleted ? "Deleted · " : ""}${title} · Chat with Claude`;
  }

  function onLiveMessage(message) {
    if (!mounted) return;
    if (hydrating) liveQueue.push(message);
    else applyMessage(message);
  }

  // ---------------------------------------------------------------------------------------------
  // Hydration: the database's turns, then the channel's history up to the attach point.

  function adoptStoredTurns() {
    for (const element of turnsElement.querySelectorAll("article.turn")) {
      const role = element.dataset.role;
      const textElement = element.querySelector(".turn-text");
      const text = textElement ? textElement.textContent : "";
      if (role === "user") {
        const promptId = element.dataset.promptId;
        renderPlain(textElement, text);
        prompts.set(promptId, { promptId, text, element, state: "sent", awaitingReply: false });
        continue;
      }
      const responseId = element.dataset.responseId;
      if (!responseId) continue;
      const status = element.dataset.status;
      const thinkingElement = element.querySelector(".turn-thinking-text");
      const reply = Object.assign(newReply(contract, responseId, element.dataset.promptId), {
        element,
        status,
        final: FINAL_STATUSES.has(status),
        renderTimer: null,
      });
      reply.parts[PARTS.text].value = text;
      if (thinkingElement) reply.parts[PARTS.thinking].value = thinkingElement.textContent;
      replies.set(responseId, reply);
      if (reply.final) {
        renderReply(reply);
        decorateFinalReply(reply);
      } else {
        // Django has the reply as streaming: the channel will bring its text so far, then the rest.
        renderReply(reply);
        setStreaming(reply, true);
      }
    }
    versions.refresh();
  }

  // Page back from the attach point until a prompt whose answer is already final here: everything
  // older is already on screen.
  async function readHistory() {
    const collected = [];
    let page = await channel.history({ untilAttach: true, limit: HISTORY_PAGE_LIMIT });
    for (let pages = 1; page; pages += 1) {
      let reachedKnown = false;
      for (const message of page.items) {
        collected.push(message);
        if (message.name === NAMES.prompt && promptIsSettled(headersOf(message).promptId)) {
          reachedKnown = true;
        }
      }
      if (reachedKnown || !page.hasNext() || pages >= HISTORY_MAX_PAGES) break;
      page = await page.next();
    }
    return collected.reverse();
  }

  function promptIsSettled(promptId) {
    if (!prompts.has(promptId)) return false;
    for (const reply of replies.values()) {
      if (reply.promptId === promptId && reply.final) return true;
    }
    return false;
  }

  async function hydrate() {
    if (!mounted) return;
    hydrating = true;
    try {
      const backlog = await readHistory();
      for (const message of backlog) applyMessage(message);
    } catch (error) {
      console.warn("Could not read the conversation's recent history:", error);
      // Deleted meanwhile (its channel left): the deleted note says all there is to say.
      if (!deleted) showStatusNote("Some recent messages could not be loaded. Refresh to try again.");
    } finally {
      const queued = liveQueue;
      liveQueue = [];
      hydrating = false;
      for (const message of queued) applyMessage(message);
      for (const reply of replies.values()) if (!reply.final) renderReply(reply);
      hydratedOnce = true;
      updateControls();
      // Subscribed and caught up: what is on screen now stays complete (tests wait for this too).
      if (mounted) markReady();
    }
  }

  function showStatusNote(text) {
    const element = root.querySelector("[data-connection-status]");
    if (element) element.textContent = text;
  }

  function markReady() {
    document.documentElement.dataset.chatReady = "true";
  }

  // ---------------------------------------------------------------------------------------------
  // Sending: prompts, Stop, Retry, Regenerate.

  function validatePrompt(text) {
    if (!text.trim()) return "Type a message first.";
    if (text.length > config.maxPromptChars) {
      return `Your message is ${text.length.toLocaleString()} characters; the limit is ${config.maxPromptChars.toLocaleString()}.`;
    }
    return null;
  }

  function showComposerError(message) {
    if (!composerError) return;
    composerError.textContent = message || "";
    composerError.hidden = !message;
  }

  // `placement` (issue 16): {editOf, parentId} for an edit; else it continues the shown path.
  // `attachments` (issue 17): files alone make a message; text is then optional.
  function sendPrompt(text, placement = null, attachments = []) {
    if (deleted) return false;
    const problem = attachments.length && !text.trim() ? null : validatePrompt(text);
    if (problem) {
      showComposerError(problem);
      return false;
    }
    showComposerError("");
    const { editOf = "", parentId = versions.shownLeafId() } = placement || {};
    const entry = addPrompt(newUuid(), text, { fromHere: true, attachments, editOf, parentId });
    readerScrolls(false);
    stickToBottom = true;
    followStream();
    outbox.push(entry);
    flushOutbox();
    return true;
  }

  function hasUnsent() {
    // A file still uploading is lost with the view too (its upload is aborted on unmount).
    const uploading = composerFiles && composerFiles.pending.some((entry) => entry.state === "uploading");
    return outbox.length > 0 || uploading || [...prompts.values()].some((p) => p.state === "queued" || p.state === "sending");
  }

  function flushOutbox() {
    if (!mounted || !outbox.length) return;
    if (realtime.connection.state !== "connected") {
      for (const entry of outbox) setPromptState(entry, "queued");
      return;
    }
    if (config.draft) {
      // No conversation yet: the first prompt creates it (or the first file is creating it
      // already), then everything waiting is published.
      for (const entry of outbox) setPromptState(entry, "sending");
      if (creatingForOutbox) return;
      creatingForOutbox = true;
      ensureConversation({ prompt: outbox[0].text })
        .then(() => {
          creatingForOutbox = false;
          flushOutbox();
        })
        .catch((error) => {
          creatingForOutbox = false;
          for (const entry of outbox.splice(0)) setPromptState(entry, "failed", `Not sent: ${error.message || error}`);
        });
      return;
    }
    // Created, not yet attached (the re-scoped token's CONNECTED lands first): wait for the attach.
    if (!channel) return;
    while (outbox.length) {
      const entry = outbox.shift();
      setPromptState(entry, "sending");
      channel
        .publish({ name: NAMES.prompt, data: entry.text, extras: { headers: promptHeaders(entry) } })
        .then(() => {
          if (entry.state === "sending") setPromptState(entry, "sent");
          announceFirstPrompt();
        })
        .catch((error) => {
          if (realtime.connection.state !== "connected") {
            // Lost the connection before Ably acknowledged it: try again once we are back.
            outbox.push(entry);
            setPromptState(entry, "queued");
          } else {
            setPromptState(entry, "failed", `Not sent: ${error.message || error}`);
          }
        });
    }
    updateControls();
  }

  function promptHeaders(entry) {
    const headers = { promptId: entry.promptId };
    if (entry.parentId) headers.parentId = entry.parentId;
    if (entry.editOf) headers.editOf = entry.editOf;
    const attachments = attachmentsHeader(entry.attachments); // issue 17
    if (attachments) headers.attachments = attachments;
    return headers;
  }

  function streamingReplies() {
    return [...replies.values()].filter((reply) => !reply.final);
  }

  function promptsAwaitingReply() {
    return [...prompts.values()].filter((prompt) => prompt.awaitingReply && prompt.state === "sent");
  }

  function publishCancel(headers) {
    channel.publish({ name: NAMES.cancel, data: "", extras: { headers } }).catch((error) => {
      showComposerError(`Could not stop: ${error.message || error}`);
    });
  }

  function stopStreaming() {
    const replyTargets = streamingReplies();
    for (const reply of replyTargets) {
      const headers = { responseId: reply.responseId };
      if (reply.promptId) headers.promptId = reply.promptId;
      publishCancel(headers);
      reply.element.classList.add("is-stopping");
    }
    const promptTargets = promptsAwaitingReply();
    for (const prompt of promptTargets) publishCancel({ promptId: prompt.promptId });
    if (stopButton && (replyTargets.length || promptTargets.length)) stopButton.textContent = "Stopping…";
  }

  function updateControls() {
    const streaming = streamingReplies().length > 0 || promptsAwaitingReply().length > 0;
    if (stopButton) {
      stopButton.hidden = !streaming || Boolean(config.readOnly);
      if (!streaming) stopButton.textContent = "Stop";
    }
    document.body.classList.toggle("is-streaming", streaming);
  }

  function bindComposer() {
    if (!composer || config.readOnly) return;
    // Issue 17: attach button, drag-and-drop onto the page, paste. Its page-wide listeners and
    // any upload still running end with this view (`signal`). A draft has no conversation to
    // upload into: the first file creates it, as the first prompt would.
    composerFiles = bindComposerAttachments(config.attachments, {
      root: composer.querySelector("[data-attachments-composer]"),
      dropTarget: document.body,
      signal: composerFileListeners.signal,
      prepareUpload: () => ensureConversation({ forFiles: true }).then(() => config.attachments && config.attachments.uploadUrl),
    });
    composer.addEventListener("submit", (event) => {
      event.preventDefault();
      const files = composerFiles ? composerFiles.forSending() : { items: [], problem: null };
      if (files.problem) showComposerError(files.problem);
      else if (sendPrompt(composerInput.value, null, files.items)) {
        composerInput.value = "";
        if (composerFiles) composerFiles.clearSent();
        autoGrow();
      }
      composerInput.focus();
    });
    composerInput.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        composer.requestSubmit();
      } else if (event.key === "Escape" && stopButton && !stopButton.hidden) {
        event.preventDefault();
        stopStreaming();
      }
    });
    composerInput.addEventListener("input", () => {
      if (composerError && !composerError.hidden) showComposerError(validatePrompt(composerInput.value));
      autoGrow();
    });
    if (stopButton) stopButton.addEventListener("click", stopStreaming);
    // A prompt still waiting for the network would be lost with the tab: ask first.
    window.addEventListener(
      "beforeunload",
      (event) => {
        if (hasUnsent()) {
          event.preventDefault();
          event.returnValue = "";
        }
      },
      { signal },
    );
    // The composer allows more than the limit so the refusal can explain itself.
    composerInput.removeAttribute("maxlength");
    composerInput.removeAttribute("required");
  }

  function autoGrow() {
    composerInput.style.height = "auto";
    composerInput.style.height = `${Math.min(composerInput.scrollHeight, 320)}px`;
  }

  // ---------------------------------------------------------------------------------------------
  // Presence: this user's devices here, and the agent's status.

  function deviceDescription() {
    const phone = window.matchMedia("(max-width: 640px)").matches;
    return { device: phone ? "phone" : "desktop", userAgent: navigator.userAgent.slice(0, 120) };
  }

  // The agent's status: presence says whether it is here and whether the model is overloaded
  // (`retrying`); a reply in progress says the rest (thinking until its first text, then
  // writing), so the agent spends no presence update per reply.
  function shownAgentStatus() {
    if (!agentStatus || agentStatus === contract.agentStatuses.retrying) return agentStatus;
    let status = agentStatus;
    for (const reply of replies.values()) {
      if (reply.final) continue;
      const hasText = partText(reply.parts[PARTS.text]) || partText(reply.parts[PARTS.thinking]);
      if (hasText) return contract.agentStatuses.streaming;
      status = contract.agentStatuses.thinking;
    }
    return status;
  }

  function showAgentStatus() {
    if (!agentStatusElement) return;
    const status = shownAgentStatus();
    const label = status
      ? AGENT_STATUS_LABELS[status] || `Claude: ${status}`
      : "Claude is offline — your message will be answered when it is back";
    // Called on every render of a streaming reply: touch the page only when it changes.
    if (agentStatusElement.dataset.agentState === (status || "offline") && agentStatusElement.textContent === label) return;
    agentStatusElement.dataset.agentState = status || "offline";
    agentStatusElement.textContent = label;
  }

  async function refreshPresence() {
    if (!channel || !mounted) return;
    let members;
    try {
      members = await channel.presence.get();
    } catch {
      return;
    }
    const agent = members.find((member) => member.clientId === config.agentClientId);
    agentStatus = agent ? (agent.data && agent.data.status) || contract.agentStatuses.idle : null;
    showAgentStatus();
    if (!presenceElement) return;
    const mine = members.filter((member) => member.clientId === config.clientId);
    const others = new Set(
      members
        .filter((member) => member.clientId !== config.clientId && member.clientId !== config.agentClientId)
        .map((member) => member.clientId),
    );
    const items = [];
    if (!config.readOnly) {
      const count = Math.max(mine.length, 1);
      items.push([`devices`, count === 1 ? "1 device here" : `${count} devices here`, count]);
    }
    const kinds = mine.map((member) => (member.data && member.data.device) || "device");
    if (others.size) items.push(["others", `${others.size} other ${others.size === 1 ? "person" : "people"}`, others.size]);
    presenceElement.replaceChildren(
      ...items.map(([kind, label, count]) => {
        const item = document.createElement("li");
        item.className = `presence-${kind}`;
        item.dataset.presenceKind = kind;
        item.dataset.count = String(count);
        item.textContent = label;
        if (kind === "devices" && kinds.length) item.title = `Open here on: ${kinds.join(", ")}`;
        return item;
      }),
    );
  }

  // ---------------------------------------------------------------------------------------------
  // The user channel (watched by the sidebar): this conversation renamed or deleted elsewhere.

  function onListChange(change) {
    if (!mounted || config.readOnly || !change || change.id !== config.conversationId) return;
    if (change.action === contract.listActions.renamed) applyTitle(change.title);
    if (change.action === contract.listActions.deleted) markDeleted();
  }

  // Deleted on another device: say so, and offer nothing that would act on it any more.
  function markDeleted() {
    if (deleted || !mounted) return;
    deleted = true;
    // Nothing can be sent to it any more: what waited says so (its Send again goes below).
    for (const entry of outbox.splice(0)) setPromptState(entry, "failed", "Not sent: this conversation was deleted.");
    composerFileListeners.abort();
    leaveDeletedConversation();
    root.dataset.conversationDeleted = "true";
    const note = root.querySelector("[data-deleted-note]");
    if (note) note.hidden = false;
    showStatusNote("This conversation was deleted on another device. Start a new chat to carry on.");
    for (const element of root.querySelectorAll("[data-conversation-menu], [data-composer]")) element.hidden = true;
    for (const button of root.querySelectorAll("[data-regenerate], [data-retry], [data-resend], [data-edit]")) button.remove();
    if (stopButton) stopButton.hidden = true;
    applyTitle(root.querySelector("[data-conversation-title]")?.textContent || "");
  }

  // Its channel is gone and no token may name it any more (renewing one for it gets a 404, and
  // the connection would retry that forever): leave the channel and re-scope the token to the
  // user's list channel, which the sidebar keeps using. Switching away re-scopes it again.
  async function leaveDeletedConversation() {
    await leaveChannel();
    if (!mounted) return;
    try {
      await authorizeFor(realtime, userScoped(config));
    } catch (error) {
      console.warn("Could not re-scope the token after the delete:", error);
    }
  }

  // The token endpoint found no such conversation (deleted while this page slept, say).
  function onConversationGone(event) {
    if (event.detail && event.detail.conversationId === config.conversationId && !config.readOnly) markDeleted();
  }

  // ---------------------------------------------------------------------------------------------
  // A draft's first prompt (or first file): Django creates the conversation, then it is used like
  // any other.

  // One create POST however many ask (the first file and the first prompt may both wait on it).
  function ensureConversation(reason) {
    if (!config.draft) return Promise.resolve();
    if (!creating) {
      creating = createConversation(reason).finally(() => {
        creating = null;
      });
    }
    return creating;
  }

  // A prompt to send or files to upload: a conversation made for files alone stays out of every
  // list until its first prompt (the server does not announce it; see `announceFirstPrompt`).
  async function createConversation({ prompt = "", forFiles = false }) {
    const body = new FormData();
    body.set("prompt", prompt);
    if (forFiles) body.set("for", "attachments");
    const response = await fetch(config.urls.create, {
      method: "POST",
      body,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": csrfToken(root) },
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
    if (!mounted) throw new Error("the conversation was left");
    Object.assign(config, data, { draft: false });
    // The token was minted before this conversation existed: get one that covers its channel.
    await authorizeFor(realtime, config);
    if (!mounted) return;
    for (const element of root.querySelectorAll("[action], [href]")) {
      for (const name of ["action", "href"]) {
        const value = element.getAttribute(name);
        if (value && value.includes(config.placeholderId)) {
          element.setAttribute(name, value.replaceAll(config.placeholderId, config.conversationId));
        }
      }
    }
    const menu = root.querySelector("[data-conversation-menu]");
    if (menu) menu.hidden = false;
    if (hooks.onCreated) hooks.onCreated(config);
    await attachChannel();
  }

  // A conversation a file created is announced by its first prompt, on this device's list.
  function announceFirstPrompt() {
    if (config.announced !== false || !mounted) return;
    config.announced = true;
    if (hooks.onFirstPrompt) hooks.onFirstPrompt(config);
  }

  // ---------------------------------------------------------------------------------------------

  function onConnectionChange(change) {
    if (change.current === "connected") flushOutbox();
    else for (const entry of outbox) setPromptState(entry, "queued");
  }

  async function attachChannel() {
    channel = realtime.channels.get(config.channel);
    // Registered before the first attach: a re-attach that lost continuity (more than Ably's
    // two-minute resume window, or a server-side loss) must re-read history to fill the gap.
    const onAttached = (change) => {
      if (mounted && hydratedOnce && !change.resumed) {
        hydratedOnce = false;
        hydrate();
      }
    };
    channel.on("attached", onAttached);
    channel.on("update", onAttached);

    try {
      await channel.subscribe(onLiveMessage);
    } catch (error) {
      showStatusNote(`Live updates unavailable: ${error.message || error}`);
      markReady();
      return;
    }
    if (!mounted) return;
    channel.presence.subscribe(refreshPresence);
    if (!config.readOnly) {
      channel.presence.enter(deviceDescription()).catch((error) => console.warn("presence.enter", error));
    }
    refreshPresence();
    await hydrate();
  }

  async function start() {
    adoptStoredTurns();
    bindComposer();
    updateControls();
    scrollingElement().scrollTop = scrollingElement().scrollHeight;
    realtime.connection.on(onConnectionChange);
    window.addEventListener(CONVERSATION_GONE_EVENT, onConversationGone, { signal });
    if (config.draft) {
      // Nothing to attach until the first prompt creates the conversation.
      markReady();
      return;
    }
    await attachChannel();
  }

  function withTimeout(promise) {
    return Promise.race([promise, new Promise((resolve) => setTimeout(resolve, LEAVE_TIMEOUT_MS))]);
  }

  /** Leave the conversation: presence, subscriptions, then the channel itself (attached no more). */
  async function unmount() {
    if (!mounted) return;
    mounted = false;
    listeners.abort();
    realtime.connection.off(onConnectionChange);
    for (const reply of replies.values()) if (reply.renderTimer) reply.renderTimer.cancel();
    await leaveChannel();
  }

  async function leaveChannel() {
    if (!channel) return;
    const leaving = channel;
    channel = null;
    leaving.off();
    leaving.unsubscribe();
    leaving.presence.unsubscribe();
    try {
      if (!config.readOnly && leaving.state === "attached") await withTimeout(leaving.presence.leave());
      await withTimeout(leaving.detach());
    } catch (error) {
      console.warn("Leaving the conversation's channel:", error);
    }
    if (["detached", "failed", "initialized"].includes(leaving.state)) realtime.channels.release(leaving.name);
  }

  function focusComposer() {
    if (composerInput && !composer.hidden) composerInput.focus();
  }

  const view = {
    config,
    replies,
    prompts,
    outbox,
    unmount,
    onListChange,
    hasUnsent,
    focusComposer,
    get realtime() {
      return realtime;
    },
    get channel() {
      return channel;
    },
  };
  start().catch((error) => console.warn("The conversation could not start:", error));
  return view;
}
