// The Ably connection every page shares: page config, token auth, connection-state badge.

/** The page's `chat-config` JSON, rendered by Django with `json_script`. */
export function readConfig() {
  const element = document.getElementById("chat-config");
  if (!element) throw new Error("chat-config is missing from the page");
  return JSON.parse(element.textContent);
}

// Sent on `window` when the token endpoint no longer knows the conversation a token was asked
// for (deleted on another device): `detail.conversationId`. The open view then shows it deleted.
export const CONVERSATION_GONE_EVENT = "chat:conversation-gone";
// views.USER_SCOPE: a token for the user's list channel only.
const USER_SCOPE = "user";

/** `config`'s token endpoint, scoped to the user's list channel only. */
export function userScoped(config) {
  return { tokenPath: config.tokenPath || config.tokenUrl, tokenParams: { scope: USER_SCOPE } };
}

async function requestToken(path, params) {
  const url = new URL(path, window.location.href);
  for (const [name, value] of Object.entries(params || {})) url.searchParams.set(name, value);
  // Session cookie, not token params, identifies the user; the server ignores the params.
  return fetch(url, {
    credentials: "same-origin",
    cache: "no-store",
    headers: { "X-Requested-With": "ably-js" },
  });
}

async function fetchToken(path, params) {
  let response = await requestToken(path, params);
  if (response.status === 404 && params && params.conversation) {
    // The conversation is gone: renewing for it would fail every time and leave the connection
    // reconnecting forever. Carry on with the user's list channel (the sidebar) instead.
    window.dispatchEvent(new CustomEvent(CONVERSATION_GONE_EVENT, { detail: { conversationId: params.conversation } }));
    response = await requestToken(path, { scope: USER_SCOPE });
  }
  const body = await response.text();
  if (!response.ok) {
    let message = body;
    try {
      message = JSON.parse(body).error || body;
    } catch {
      // not JSON: the text itself
    }
    // ably-js retries any failure but a 403, which it treats as final (as for an authUrl).
    throw { code: 40170, statusCode: response.status, message: message || `token request failed (${response.status})` };
  }
  return body;
}

/** How ably-js asks Django for a token scoped as `config` says (`tokenPath` + `tokenParams`). */
export function authOptionsFor(config) {
  const path = config.tokenPath || config.tokenUrl;
  const params = config.tokenParams || {};
  return {
    // Called again by ably-js before the token expires (or when it is revoked): renewal needs
    // no code elsewhere. A callback rather than an authUrl so a conversation deleted meanwhile
    // can fall back to the user's scope (above).
    authCallback: (_tokenParams, callback) => {
      fetchToken(path, params).then(
        (token) => callback(null, token),
        (error) => callback(error, null),
      );
    },
  };
}

/** A Realtime client that fetches its short-lived token from Django and renews it silently. */
export function createRealtime(config) {
  if (!window.Ably) throw new Error("ably-js did not load");
  return new window.Ably.Realtime({
    ...(config.ablyClientOptions || {}),
    ...authOptionsFor(config),
    // This device must hear its own prompts: the echo is how it learns they reached the channel.
    echoMessages: true,
    // The page owns presence: leave explicitly on unload instead of lingering 15 s.
    closeOnUnload: true,
  });
}

/**
 * Re-scope the connection's token to `config`'s conversation, in place: ably-js sends the new
 * token on the open connection (an AUTH message), so the connection, its id and every other
 * attached channel stay as they are. Later renewals use the same scope.
 */
export async function authorizeFor(realtime, config) {
  await realtime.auth.authorize(null, authOptionsFor(config));
}

/** The CSRF token Django rendered into `root` (a form's hidden field). */
export function csrfToken(root = document) {
  const field = root.querySelector("input[name=csrfmiddlewaretoken]") || document.querySelector("input[name=csrfmiddlewaretoken]");
  return field ? field.value : "";
}

const CONNECTION_LABELS = {
  initialized: ["connecting", "Connecting…"],
  connecting: ["connecting", "Connecting…"],
  connected: ["connected", "Live"],
  disconnected: ["reconnecting", "Reconnecting…"],
  suspended: ["offline", "Offline — retrying"],
  closing: ["offline", "Offline"],
  closed: ["offline", "Offline"],
  failed: ["offline", "Connection failed"],
};

/** Keep every `[data-connection-state]` element showing the connection's state in words. */
export function bindConnectionBadge(realtime, onChange) {
  const show = (state, reason) => {
    const [kind, label] = CONNECTION_LABELS[state] || ["offline", state];
    const browserOffline = navigator.onLine === false;
    for (const badge of document.querySelectorAll("[data-connection-state]")) {
      badge.hidden = false;
      badge.dataset.connectionState = kind;
      badge.dataset.ablyState = state;
      const text = badge.querySelector("[data-connection-label]") || badge;
      text.textContent = browserOffline && kind !== "connected" ? "Offline — waiting for network" : label;
      badge.title = reason && reason.message ? reason.message : label;
    }
    if (onChange) onChange(state, kind);
  };
  show(realtime.connection.state);
  realtime.connection.on((change) => show(change.current, change.reason));
  window.addEventListener("offline", () => show(realtime.connection.state));
  window.addEventListener("online", () => show(realtime.connection.state));
}

/** A v4 UUID; crypto.randomUUID only exists in secure contexts, so fall back to getRandomValues. */
export function newUuid() {
  if (window.crypto && typeof window.crypto.randomUUID === "function" && window.isSecureContext) {
    return window.crypto.randomUUID();
  }
  const bytes = window.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function headersOf(message) {
  const extras = message.extras;
  return (extras && typeof extras === "object" && extras.headers) || {};
}

/** Human wording for "how long ago", refreshed by the list page. */
export function relativeTime(isoString) {
  const then = new Date(isoString);
  if (Number.isNaN(then.getTime())) return "";
  const seconds = Math.round((Date.now() - then.getTime()) / 1000);
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  return then.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}
