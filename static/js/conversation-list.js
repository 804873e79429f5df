// The conversation list: live changes from the user's other devices on `user:<clientId>`.

import { highlight, placeByActivity } from "./list-items.js";
import { bindConnectionBadge, createRealtime, readConfig, relativeTime } from "./realtime.js";

const config = readConfig();
const ACTIONS = config.contract.listActions;
const PLACEHOLDER_ID = "00000000-0000-0000-0000-000000000000";

const list = document.querySelector("[data-conversation-list]");
const itemTemplate = document.querySelector("template[data-conversation-item-template]");
const showingArchived = Boolean(config.showArchived);
const searching = Boolean(config.query);

function itemFor(id) {
  return list.querySelector(`[data-conversation-id="${CSS.escape(id)}"]`);
}

function refreshEmptyState() {
  const hasItems = Boolean(list.querySelector("[data-conversation-id]"));
  let empty = list.querySelector("[data-conversation-empty]");
  if (hasItems && empty) empty.remove();
  if (!hasItems && !empty) {
    empty = document.createElement("li");
    empty.className = "conversation-empty";
    empty.dataset.conversationEmpty = "";
    empty.textContent = showingArchived
      ? "No archived conversations."
      : "No conversations yet. Start one with “New conversation”.";
    list.append(empty);
  }
}

function setTitle(item, title) {
  const link = item.querySelector("[data-conversation-title]");
  if (link) link.textContent = title || "New conversation";
}

function setUpdatedAt(item, updatedAt) {
  if (!updatedAt) return;
  item.dataset.updatedAt = updatedAt;
  const time = item.querySelector("time");
  if (time) {
    time.dateTime = updatedAt;
    time.textContent = relativeTime(updatedAt);
  }
}

function buildItem(change) {
  if (!itemTemplate) return null;
  const fragment = itemTemplate.content.cloneNode(true);
  const item = fragment.querySelector("[data-conversation-id]");
  // The template is rendered by Django with a placeholder id in every URL and attribute.
  for (const element of [item, ...item.querySelectorAll("*")]) {
    for (const attribute of element.attributes) {
      if (attribute.value.includes(PLACEHOLDER_ID)) {
        element.setAttribute(attribute.name, attribute.value.replaceAll(PLACEHOLDER_ID, change.id));
      }
    }
  }
  setTitle(item, change.title);
  setUpdatedAt(item, change.updatedAt);
  return item;
}

function insert(change) {
  if (searching) return; // a search shows matches only; a new conversation has none yet
  let item = itemFor(change.id);
  if (!item) item = buildItem(change);
  if (!item) return;
  placeByActivity(list, item);
  highlight(item);
}

function applyChange(change) {
  if (!change || typeof change.id !== "string") return;
  const item = itemFor(change.id);
  const belongsHere = (change.archived === true) === showingArchived;
  switch (change.action) {
    case ACTIONS.created:
      if (belongsHere) insert(change);
      break;
    case ACTIONS.renamed:
      if (item) {
        setTitle(item, change.title);
        highlight(item);
      }
      break;
    case ACTIONS.archived:
    case ACTIONS.unarchived:
      if (belongsHere) insert(change);
      else if (item) item.remove();
      break;
    case ACTIONS.deleted:
      if (item) item.remove();
      break;
    case ACTIONS.activity:
      if (item) {
        if (change.title) setTitle(item, change.title);
        setUpdatedAt(item, change.updatedAt);
        placeByActivity(list, item);
      } else if (belongsHere) {
        insert(change);
      }
      break;
    default:
      break;
  }
  refreshEmptyState();
}

function refreshTimes() {
  for (const time of list.querySelectorAll("time[datetime]")) {
    const label = relativeTime(time.dateTime);
    if (label) time.textContent = label;
  }
}

async function start() {
  refreshTimes();
  setInterval(refreshTimes, 60_000);
  const realtime = createRealtime({ ...config, ablyClientOptions: config.ablyOptions });
  bindConnectionBadge(realtime);
  const channel = realtime.channels.get(config.userChannel);
  // Changes may land between this page's render and the attach: re-read the list if the channel
  // ever loses continuity, rather than show a stale one.
  let attachedOnce = false;
  const onAttached = (change) => {
    if (attachedOnce && !change.resumed) window.location.reload();
    attachedOnce = true;
  };
  channel.on("attached", onAttached);
  channel.on("update", onAttached);
  // Subscribe first, then replay what was published between this page's render and the attach
  // (history up to the attach point); live changes that arrive meanwhile wait their turn.
  let catchingUp = true;
  const waiting = [];
  const fromServer = (message) => message.clientId === config.serverClientId;
  await channel.subscribe(config.contract.names.conversation, (message) => {
    // Only Django announces list changes; anything else on the channel is ignored.
    if (!fromServer(message)) return;
    if (catchingUp) waiting.push(message);
    else applyChange(message.data);
  });
  try {
    const missed = [];
    let page = await channel.history({ untilAttach: true, start: config.renderedAt, limit: 100 });
    while (page) {
      missed.push(...page.items);
      page = page.hasNext() ? await page.next() : null;
    }
    for (const message of missed.reverse()) {
      if (fromServer(message) && message.name === config.contract.names.conversation) {
        applyChange(message.data);
      }
    }
  } catch (error) {
    console.warn("Could not catch up on list changes:", error);
  } finally {
    catchingUp = false;
    for (const message of waiting.splice(0)) applyChange(message.data);
  }
  document.documentElement.dataset.chatReady = "true";
}

start().catch((error) => console.warn("Live list updates unavailable:", error));
