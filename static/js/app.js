// The conversation pages (an open conversation, or a new chat's empty composer): ONE ably-js
// connection for the tab, the sidebar, keyboard shortcuts, and switching conversations in place.
//
// Switching fetches the target page, swaps the main pane, and moves the realtime state with it:
// the old view leaves its `ai:` channel (presence, detach, release), the token is re-scoped to the
// new conversation on the same connection (`auth.authorize()` sends it as an AUTH message), and the
// new view attaches and hydrates exactly as a fresh page load would. The user channel, and with it
// the sidebar's live list, stays attached throughout.

import { authorizeFor, bindConnectionBadge, createRealtime, readConfig } from "./realtime.js";
import { mountConversation } from "./conversation.js";
import { mountSidebar } from "./sidebar.js";

const main = document.getElementById("main");
const initialConfig = readConfig();
const realtime = createRealtime({ ...initialConfig, ablyClientOptions: initialConfig.ablyOptions });
bindConnectionBadge(realtime);

const WIDE_QUERY = "(min-width: 900px)"; // the sidebar sits beside the pane, as in app.css

let view = null;
let sidebar = null;
let navigationSerial = 0;
let navigationChain = Promise.resolve();
let shownPath = window.location.pathname; // the page the main pane shows

function showView(config) {
  view = mountConversation(realtime, main, config, {
    onCreated(created) {
      // The draft's URL had no conversation behind it; from now on this one is the page.
      history.replaceState({ chat: true }, "", created.url);
      shownPath = new URL(created.url, window.location.href).pathname;
      if (sidebar) sidebar.setCurrent(created.conversationId);
    },
    onFirstPrompt(announced) {
      // Made by its first file, it was empty and in no list; its first prompt puts it in this
      // device's sidebar now (other devices list it from its first answer, or on a reload).
      if (!sidebar) return;
      sidebar.applyChange({
        action: announced.contract.listActions.created,
        id: announced.conversationId,
        title: announced.title || "",
        updatedAt: new Date().toISOString(),
        archived: false,
      });
      sidebar.setCurrent(announced.conversationId);
    },
  });
  if (sidebar) sidebar.setCurrent(config.conversationId);
}

function showNavigationError(text) {
  const status = main.querySelector("[data-connection-status]");
  if (status) status.textContent = text;
}

async function switchTo(url, { push, serial }) {
  if (serial !== navigationSerial) return; // a later click won
  const target = new URL(url, window.location.href);
  let fresh;
  try {
    const response = await fetch(target, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (!response.ok || new URL(response.url).pathname !== target.pathname) {
      // Not a conversation we can show here (gone, a login redirect): let the browser show it.
      window.location.assign(target);
      return;
    }
    fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  } catch (error) {
    showNavigationError(`Could not open that conversation: ${error.message || error}. Check your connection.`);
    main.removeAttribute("aria-busy");
    return;
  }
  if (serial !== navigationSerial) return;
  const freshMain = fresh.getElementById("main");
  const freshConfig = fresh.getElementById("chat-config");
  const config = freshConfig ? JSON.parse(freshConfig.textContent) : null;
  if (!freshMain || !config || config.page !== "conversation" || config.readOnly) {
    window.location.assign(target);
    return;
  }
  document.documentElement.dataset.chatReady = "false";
  await view.unmount();
  try {
    await authorizeFor(realtime, config);
  } catch (error) {
    console.warn("Could not re-scope the token; loading the page instead:", error);
    window.location.assign(target);
    return;
  }
  main.replaceChildren(...[...freshMain.childNodes].map((node) => document.importNode(node, true)));
  main.removeAttribute("aria-busy");
  document.title = fresh.title;
  if (push) history.pushState({ chat: true }, "", target);
  shownPath = target.pathname;
  showView(config);
  window.scrollTo(0, document.documentElement.scrollHeight);
  // Typing goes to the composer on a desktop; on a phone that would pop the keyboard up over the
  // conversation just picked, so focus only moves to the pane (where a screen reader reads on).
  if (window.matchMedia(WIDE_QUERY).matches) view.focusComposer();
  else {
    main.tabIndex = -1;
    main.focus({ preventScroll: true });
  }
}

/** Open `url` (a conversation, or the new-chat composer) in the main pane, keeping the connection. */
function navigate(url, { push = true } = {}) {
  const target = new URL(url, window.location.href);
  if (target.pathname === shownPath) {
    view.focusComposer();
    return navigationChain;
  }
  if (view.hasUnsent() && !window.confirm("A message or file has not been sent yet. Leave this conversation anyway?")) {
    return navigationChain;
  }
  navigationSerial += 1;
  const serial = navigationSerial;
  main.setAttribute("aria-busy", "true");
  // One switch at a time: each waits for the previous to finish leaving its channel.
  navigationChain = navigationChain.then(() => switchTo(target.href, { push, serial })).catch((error) => {
    console.warn("Switching conversations failed; loading the page instead:", error);
    window.location.assign(target);
  });
  return navigationChain;
}

// Back and forward move between conversations the same way.
window.addEventListener("popstate", () => navigate(window.location.href, { push: false }));

// --- Keyboard shortcuts (listed in the sidebar's "Keyboard shortcuts") ----------------------------

function onShortcut(event) {
  const mod = event.ctrlKey || event.metaKey;
  const key = event.key.toLowerCase();
  if (mod && event.shiftKey && key === "o") {
    event.preventDefault();
    if (initialConfig.urls.new) navigate(initialConfig.urls.new);
  } else if (mod && !event.shiftKey && key === "k") {
    if (!sidebar) return;
    event.preventDefault();
    sidebar.focusSearch();
  } else if (event.shiftKey && event.key === "Escape") {
    event.preventDefault();
    if (sidebar) sidebar.close();
    view.focusComposer();
  }
}
window.addEventListener("keydown", onShortcut);

// Menus (<details>) close on a click elsewhere or Esc, as menus do.
document.addEventListener("click", (event) => {
  for (const menu of document.querySelectorAll("details[data-conversation-menu][open]")) {
    if (!menu.contains(event.target)) menu.open = false;
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape" || event.shiftKey) return;
  const menu = event.target.closest?.("details[data-conversation-menu][open]");
  if (menu) {
    menu.open = false;
    menu.querySelector("summary").focus();
  }
});

if (!initialConfig.readOnly) {
  sidebar = mountSidebar(realtime, initialConfig, {
    navigate,
    onChange: (change) => view && view.onListChange(change),
  });
}
history.replaceState({ chat: true }, "", window.location.href);
showView(initialConfig);

// Tests and curious users can look at the live state.
window.chatDebug = {
  get replies() {
    return view.replies;
  },
  get prompts() {
    return view.prompts;
  },
  get outbox() {
    return view.outbox;
  },
  get view() {
    return view;
  },
  realtime,
  navigate,
};
