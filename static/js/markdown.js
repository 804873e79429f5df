// Markdown for replies: marked renders, DOMPurify sanitises, highlight.js colours fenced code.
// Shared by the conversation page; globals `marked` and `DOMPurify` come from the vendor scripts.

import { completeMarkdown } from "./streaming-markdown.js";

const HLJS_CORE_SELECTOR = "script[data-hljs-core]";
const LANGUAGE_ALIASES = {
  js: "javascript", jsx: "javascript", mjs: "javascript", ts: "typescript", tsx: "typescript",
  py: "python", sh: "bash", shell: "bash", zsh: "bash", console: "bash", yml: "yaml",
  html: "xml", htm: "xml", svg: "xml", md: "markdown", rb: "ruby", rs: "rust", golang: "go",
  "c++": "cpp", cc: "cpp", hpp: "cpp", h: "c", cs: "csharp", kt: "kotlin", ps1: "powershell",
  dockerfile: "dockerfile", tf: "hcl", jsonc: "json",
};
const SAFE_LANGUAGE = /^[a-z0-9+#-]{1,30}$/;

let hljsPromise = null;
const languagePromises = new Map();
// A streaming reply is re-rendered many times a second; its finished code blocks do not change,
// so their highlighted HTML is kept rather than recomputed on every repaint.
const highlighted = new Map();
const HIGHLIGHT_CACHE_SIZE = 200;

function hljsUrls() {
  const tag = document.querySelector(HLJS_CORE_SELECTOR);
  if (!tag) return null;
  return { core: tag.dataset.hljsCore, languages: tag.dataset.hljsLanguages };
}

// highlight.js's npm package ships its core only as CommonJS (es/core.js re-imports lib/core.js).
// Imported as a module its top-level `class Response` stays module-scoped (as a classic script it
// would shadow the browser's fetch Response for every other script), and its one CommonJS line,
// `module.exports = highlight`, writes to a `module` global set just for the import. A module from
// our own origin is all the page policy (script-src 'self') allows: no blob: or eval.
function loadHighlighter() {
  if (hljsPromise) return hljsPromise;
  const urls = hljsUrls();
  if (!urls || !urls.core) return (hljsPromise = Promise.resolve(null));
  const previous = Object.getOwnPropertyDescriptor(globalThis, "module");
  const shim = { exports: {} };
  globalThis.module = shim;
  hljsPromise = import(urls.core)
    .then(() => {
      const hljs = shim.exports;
      if (!hljs || typeof hljs.highlight !== "function") throw new Error("highlight.js core did not load");
      hljs.configure({ ignoreUnescapedHTML: true });
      return hljs;
    })
    .catch((error) => {
      console.warn("Code highlighting unavailable:", error);
      return null;
    })
    .finally(() => {
      if (previous) Object.defineProperty(globalThis, "module", previous);
      else delete globalThis.module;
    });
  return hljsPromise;
}

function loadLanguage(hljs, name) {
  if (hljs.getLanguage(name)) return Promise.resolve(true);
  if (languagePromises.has(name)) return languagePromises.get(name);
  const urls = hljsUrls();
  const promise = import(`${urls.languages}${name}.js`)
    .then((module) => {
      hljs.registerLanguage(name, module.default);
      return true;
    })
    .catch(() => false);
  languagePromises.set(name, promise);
  return promise;
}

function languageOf(codeElement) {
  const match = /(?:^|\s)language-(\S+)/.exec(codeElement.className);
  if (!match) return null;
  const name = match[1].toLowerCase();
  const resolved = LANGUAGE_ALIASES[name] || name;
  return SAFE_LANGUAGE.test(resolved) ? resolved : null;
}

function applyHighlight(codeElement, html) {
  codeElement.innerHTML = html;
  codeElement.classList.add("hljs");
  codeElement.dataset.highlighted = "yes";
}

async function highlightBlock(codeElement) {
  const language = languageOf(codeElement);
  if (!language) return;
  const cacheKey = `${language}\u0000${codeElement.textContent}`;
  if (highlighted.has(cacheKey)) {
    applyHighlight(codeElement, highlighted.get(cacheKey));
    return;
  }
  const hljs = await loadHighlighter();
  if (!hljs || !(await loadLanguage(hljs, language))) return;
  // The element may have been re-rendered while the grammar loaded; only colour the current one.
  if (!codeElement.isConnected || codeElement.dataset.highlighted) return;
  const text = codeElement.textContent;
  // hljs returns escaped HTML built from the text only, so this stays inert.
  const html = hljs.highlight(text, { language, ignoreIllegals: true }).value;
  if (highlighted.size >= HIGHLIGHT_CACHE_SIZE) highlighted.delete(highlighted.keys().next().value);
  highlighted.set(cacheKey, html);
  applyHighlight(codeElement, html);
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const scratch = document.createElement("textarea");
  scratch.value = text;
  scratch.setAttribute("readonly", "");
  scratch.style.position = "fixed";
  scratch.style.opacity = "0";
  document.body.append(scratch);
  scratch.select();
  document.execCommand("copy");
  scratch.remove();
}

export function attachCopyButton(button, getText) {
  button.addEventListener("click", async () => {
    const label = button.textContent;
    try {
      await copyText(getText());
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => (button.textContent = label), 1500);
  });
}

function decorateCodeBlocks(container) {
  for (const pre of container.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    if (!code) continue;
    const language = languageOf(code);
    const frame = document.createElement("div");
    frame.className = "code-block";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const label = document.createElement("span");
    label.className = "code-language";
    label.textContent = language || "text";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-button";
    button.textContent = "Copy";
    button.setAttribute("aria-label", `Copy ${language || "code"} to clipboard`);
    attachCopyButton(button, () => code.textContent);
    bar.append(label, button);
    pre.replaceWith(frame);
    frame.append(bar, pre);
    highlightBlock(code);
  }
}

let purifierConfigured = false;

function configurePurifier() {
  if (purifierConfigured) return;
  purifierConfigured = true;
  // An image in a model's answer is never fetched by the page (it could be a tracking pixel or a
  // private-network address, and the page policy allows images from our origin only): it becomes
  // a link, showing its alt text, that the user can choose to open. The link is inserted after
  // the image in DOMPurify's inert document, so DOMPurify sanitises it next; the image itself is a
  // forbidden tag and is dropped.
  window.DOMPurify.addHook("uponSanitizeElement", (node, data) => {
    if (data.tagName !== "img" || !node.parentNode) return;
    const source = node.getAttribute("src") || "";
    const label = (node.getAttribute("alt") || node.getAttribute("title") || "").trim();
    const link = node.ownerDocument.createElement("a");
    link.className = "reply-image-link";
    link.textContent = `Image: ${label || source || "unnamed"}`;
    if (source) {
      link.setAttribute("href", source);
      link.setAttribute("title", `Open image ${source}`);
    }
    node.after(link);
  });
  // Links from a model's answer open elsewhere and never get the opener.
  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  });
}

/** Render `text` as sanitised markdown into `container`, replacing what was there.
 *
 * `streaming`: the text is a reply still arriving, so unfinished markdown is completed (or held
 * back) first and no raw markers flash; the final render (`streaming` false) is of the text as is.
 */
export function renderMarkdown(container, text, { streaming = false } = {}) {
  if (!window.marked || !window.DOMPurify) {
    container.textContent = text;
    return;
  }
  configurePurifier();
  const source = streaming ? completeMarkdown(text) : text;
  const html = window.marked.parse(source, { gfm: true, breaks: false, async: false });
  container.innerHTML = window.DOMPurify.sanitize(html, {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select"],
    FORBID_ATTR: ["style"],
  });
  decorateCodeBlocks(container);
  for (const table of container.querySelectorAll("table")) {
    const scroller = document.createElement("div");
    scroller.className = "table-scroll";
    table.replaceWith(scroller);
    scroller.append(table);
  }
}

/** Render a user's prompt: plain text, so whatever they typed (HTML included) stays text. */
export function renderPlain(container, text) {
  container.textContent = text;
}
