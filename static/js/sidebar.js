// The sidebar beside the open conversation: the user's conversations, newest activity first, live
// across devices through `user:<clientId>` (as on the list page), with a title filter and the
// archived ones in their own section. On a phone it is a slide-over behind a toggle.

import { highlight, placeByActivity } from "./list-items.js";
import { relativeTime } from "./realtime.js";

const PHONE_QUERY = "(max-width: 899px)";

/**
 * `hooks.navigate(url)`: open a conversation in place (the links keep their hrefs, so a new tab
 * or a page without the script still works). `hooks.onChange(change)`: every list change, after
 * the sidebar applied it (the open conversation's view wants renames and deletions too).
 */
export function mountSidebar(realtime, config, hooks = {}) {
  const sidebar = document.querySelector("[data-sidebar]");
  if (!sidebar) return null;
  const ACTIONS = config.contract.listActions;
  const lists = {
    active: sidebar.querySelector("[data-sidebar-list='active']"),
    archived: sidebar.querySelector("[data-sidebar-list='archived']"),
  };
  const template = document.querySelector("template[data-sidebar-item-template]");
  const archivedSection = sidebar.querySelector("[data-sidebar-archived]");
  const archivedCount = sidebar.querySelector("[data-sidebar-archived-count]");
  const emptyNote = sidebar.querySelector("[data-sidebar-empty]");
  const noMatchNote = sidebar.querySelector("[data-sidebar-no-match]");
  const search = sidebar.querySelector("[data-sidebar-search]");
  const searchHint = sidebar.querySelector("[data-sidebar-search-hint]");
  const toggle = document.querySelector("[data-sidebar-toggle]");
  const backdrop = document.querySelector("[data-sidebar-backdrop]");
  const phone = window.matchMedia(PHONE_QUERY);
  let currentId = config.conversationId || "";

  // --- Items ------------------------------------------------------------------------------------

  function itemFor(id) {
    return sidebar.querySelector(`[data-conversation-id="${CSS.escape(id)}"]`);
  }

  function setTitle(item, title) {
    const link = item.querySelector("[data-sidebar-title]");
    if (link) {
      link.textContent = title || "New conversation";
      link.title = link.textContent;
    }
  }

  function buildItem(change) {
    if (!template) return null;
    const item = template.content.querySelector("[data-conversation-id]").cloneNode(true);
    // Rendered by Django with a placeholder id in every URL and attribute.
    for (const element of [item, ...item.querySelectorAll("*")]) {
      for (const attribute of [...element.attributes]) {
        if (attribute.value.includes(config.placeholderId)) {
          element.setAttribute(attribute.name, attribute.value.replaceAll(config.placeholderId, change.id));
        }
      }
    }
    setTitle(item, change.title);
    return item;
  }

  function place(item, archived) {
    item.dataset.archived = archived ? "true" : "false";
    placeByActivity(archived ? lists.archived : lists.active, item);
  }

  function refresh() {
    if (emptyNote) emptyNote.hidden = Boolean(lists.active.querySelector("[data-conversation-id]"));
    const archived = lists.archived.querySelectorAll("[data-conversation-id]").length;
    if (archivedCount) archivedCount.textContent = String(archived);
    if (archivedSection) archivedSection.hidden = archived === 0;
    setCurrent(currentId);
    filter();
  }

  function applyChange(change) {
    if (!change || typeof change.id !== "string") return;
    let item = itemFor(change.id);
    const archived = change.archived === true;
    switch (change.action) {
      case ACTIONS.created:
      case ACTIONS.archived:
      case ACTIONS.unarchived:
      case ACTIONS.activity:
        if (!item) item = buildItem(change);
        if (!item) break;
        if (change.title || change.action === ACTIONS.created) setTitle(item, change.title);
        if (change.updatedAt) item.dataset.updatedAt = change.updatedAt;
        place(item, archived);
        if (change.action !== ACTIONS.activity) highlight(item);
        break;
      case ACTIONS.renamed:
        if (item) {
          setTitle(item, change.title);
          highlight(item);
        }
        break;
      case ACTIONS.deleted:
        if (item) item.remove();
        break;
      default:
        break;
    }
    refresh();
  }

  /** Mark the open conversation (none for a new chat's empty composer). */
  function setCurrent(id) {
    currentId = id || "";
    for (const link of sidebar.querySelectorAll("[data-sidebar-title][aria-current]")) link.removeAttribute("aria-current");
    const item = currentId ? itemFor(currentId) : null;
    if (item) item.querySelector("[data-sidebar-title]").setAttribute("aria-current", "page");
    const newChat = sidebar.querySelector("[data-new-chat]");
    if (newChat) newChat.toggleAttribute("data-current", !currentId);
  }

  // --- Search: titles filter as you type; Enter searches messages too (the list page) --------------

  function filter() {
    const query = (search ? search.value : "").trim().toLowerCase();
    let shown = 0;
    for (const item of sidebar.querySelectorAll("[data-sidebar-list] [data-conversation-id]")) {
      const title = item.querySelector("[data-sidebar-title]").textContent.toLowerCase();
      const match = !query || title.includes(query);
      item.hidden = !match;
      if (match) shown += 1;
    }
    if (noMatchNote) noMatchNote.hidden = !query || shown > 0;
    if (searchHint) searchHint.hidden = !query;
    if (query && archivedSection && !archivedSection.hidden) {
      const archivedMatches = lists.archived.querySelector("[data-conversation-id]:not([hidden])");
      if (archivedMatches) archivedSection.open = true;
    }
  }

  if (search) {
    search.addEventListener("input", filter);
    search.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !event.shiftKey && search.value) {
        event.preventDefault();
        event.stopPropagation();
        search.value = "";
        filter();
      }
    });
  }

  // --- Phone slide-over ---------------------------------------------------------------------------

  function isOpen() {
    return document.body.classList.contains("sidebar-open");
  }

  function open() {
    if (!phone.matches) return;
    document.body.classList.add("sidebar-open");
    if (backdrop) backdrop.hidden = false;
    if (toggle) toggle.setAttribute("aria-expanded", "true");
  }

  function close({ restoreFocus = false } = {}) {
    if (!isOpen()) return;
    document.body.classList.remove("sidebar-open");
    if (backdrop) backdrop.hidden = true;
    if (toggle) {
      toggle.setAttribute("aria-expanded", "false");
      if (restoreFocus) toggle.focus();
    }
  }

  if (toggle) {
    toggle.addEventListener("click", () => {
      if (isOpen()) close();
      else {
        open();
        const first = sidebar.querySelector("[data-new-chat]");
        if (first) first.focus();
      }
    });
  }
  if (backdrop) backdrop.addEventListener("click", () => close());
  const closeButton = sidebar.querySelector("[data-sidebar-close]");
  if (closeButton) closeButton.addEventListener("click", () => close({ restoreFocus: true }));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !event.shiftKey && isOpen()) {
      event.preventDefault();
      close({ restoreFocus: true });
    }
  });
  phone.addEventListener("change", () => {
    if (!phone.matches) close();
  });

  // --- Navigation in place ------------------------------------------------------------------------

  sidebar.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-nav]");
    if (!link || !hooks.navigate) return;
    // A new tab or window, or a download: the browser's own business.
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    close();
    hooks.navigate(link.href);
  });

  // --- Live changes -------------------------------------------------------------------------------

  function refreshTimes() {
    for (const item of sidebar.querySelectorAll("[data-conversation-id][data-updated-at]")) {
      const link = item.querySelector("[data-sidebar-title]");
      const when = relativeTime(item.dataset.updatedAt);
      if (link && when) link.title = `${link.textContent} · ${when}`;
    }
  }

  // The channel lost continuity (a re-attach past Ably's resume window): re-read the lists.
  async function reload() {
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const kind of ["active", "archived"]) {
        const list = fresh.querySelector(`[data-sidebar-list='${kind}']`);
        if (list) lists[kind].replaceChildren(...[...list.children].map((child) => document.importNode(child, true)));
      }
      refresh();
    } catch (error) {
      console.warn("Could not refresh the sidebar:", error);
    }
  }

  async function follow() {
    const channel = realtime.channels.get(config.userChannel);
    let attachedOnce = false;
    const onAttached = (change) => {
      if (attachedOnce && !change.resumed) reload();
      attachedOnce = true;
    };
    channel.on("attached", onAttached);
    channel.on("update", onAttached);
    const fromServer = (message) => message.clientId === config.serverClientId;
    let catchingUp = true;
    const waiting = [];
    const deliver = (message) => {
      applyChange(message.data);
      if (hooks.onChange) hooks.onChange(message.data);
    };
    // Subscribe first, then replay what was published between the render and the attach.
    await channel.subscribe(config.contract.names.conversation, (message) => {
      if (!fromServer(message)) return; // only Django announces list changes
      if (catchingUp) waiting.push(message);
      else deliver(message);
    });
    try {
      const missed = [];
      let page = await channel.history({ untilAttach: true, start: config.renderedAt, limit: 100 });
      while (page) {
        missed.push(...page.items);
        page = page.hasNext() ? await page.next() : null;
      }
      for (const message of missed.reverse()) {
        if (fromServer(message) && message.name === config.contract.names.conversation) deliver(message);
      }
    } catch (error) {
      console.warn("Could not catch up on list changes:", error);
    } finally {
      catchingUp = false;
      for (const message of waiting.splice(0)) deliver(message);
    }
  }

  refresh();
  refreshTimes();
  setInterval(refreshTimes, 60_000);
  const ready = follow().catch((error) => console.warn("Live sidebar updates unavailable:", error));

  return {
    ready,
    setCurrent,
    applyChange,
    open,
    close,
    isOpen,
    focusSearch() {
      open();
      if (search) {
        search.focus();
        search.select();
      }
    },
  };
}
