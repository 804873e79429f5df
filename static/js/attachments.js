// Attachments (issue 17): the composer's files (attach button, drag-and-drop, paste; one upload
// per file with its own progress bar; remove before sending) and the file list under a prompt.
//
// Files are uploaded to Django as soon as they are chosen; a prompt then carries only their ids
// and display metadata in `extras.headers.attachments` (a JSON string; see events.py Prompt).
// Every refusal — ours before uploading, or the server's after decoding the file — is shown next
// to that file and nothing else is lost. No inline styles or scripts: the page's CSP forbids them.

const KIND_LABELS = { image: "IMG", pdf: "PDF", text: "TXT" };
const IMAGE_TYPES = new Set(["image/jpeg", "image/png", "image/gif", "image/webp"]);
const IMAGE_EXTENSIONS = /\.(jpe?g|jpe|png|gif|webp|svgz?)$/i;

/** The same wording as conversations/attachments.py `human_size`. */
export function humanSize(size) {
  if (size < 1024) return `${size} bytes`;
  if (size < 1024 * 1024) return `${Math.round(size / 1024)} KB`;
  return `${(size / (1024 * 1024)).toFixed(1)} MB`;
}

function fileUrl(config, id) {
  return config.fileUrl.replace("{id}", encodeURIComponent(id));
}

function metaText(item) {
  const parts = [];
  if (item.kind === "image" && item.width) parts.push(`${item.width}×${item.height}`);
  else if (item.kind === "pdf" && item.pages) parts.push(`${item.pages} page${item.pages === 1 ? "" : "s"}`);
  else if (item.kind === "text") parts.push("text");
  if (Number.isFinite(item.size)) parts.push(humanSize(item.size));
  return parts.join(" · ");
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** One file under a prompt: a thumbnail (images, from our own origin) or a chip, and its facts. */
function attachmentItem(config, item) {
  const li = element("li", `attachment attachment-${item.kind}`);
  li.dataset.attachmentId = item.id;
  li.dataset.kind = item.kind;
  li.dataset.name = item.name;
  li.dataset.type = item.type || "";
  for (const key of ["size", "width", "height", "pages"]) {
    if (Number.isFinite(item[key])) li.dataset[key] = String(item[key]);
  }
  const link = element("a", "attachment-link");
  link.href = fileUrl(config, item.id);
  link.target = "_blank";
  link.rel = "noopener";
  if (item.kind === "image") {
    const img = element("img", "attachment-thumb");
    img.src = link.href;
    img.alt = item.name;
    img.loading = "lazy";
    link.append(img);
  } else {
    const icon = element("span", "attachment-icon", KIND_LABELS[item.kind] || "FILE");
    icon.setAttribute("aria-hidden", "true");
    link.append(icon);
  }
  link.append(element("span", "attachment-name", item.name));
  li.append(link, element("span", "attachment-meta", metaText(item)));
  return li;
}

/** The list shown under a prompt (same markup as conversations/attachment_rendering.py). */
export function renderAttachmentList(config, items) {
  if (!config || !items || !items.length) return null;
  const list = element("ul", "turn-attachments");
  list.dataset.attachments = "";
  list.setAttribute("aria-label", "Attachments");
  for (const item of items) list.append(attachmentItem(config, item));
  return list;
}

/** The files listed under a prompt element (live or rendered by Django), for Retry/Regenerate. */
export function attachmentsOf(promptElement) {
  if (!promptElement) return [];
  return [...promptElement.querySelectorAll("[data-attachments] li[data-attachment-id]")].map((li) => {
    const item = { id: li.dataset.attachmentId, name: li.dataset.name, kind: li.dataset.kind, type: li.dataset.type };
    for (const key of ["size", "width", "height", "pages"]) {
      if (li.dataset[key]) item[key] = Number(li.dataset[key]);
    }
    return item;
  });
}

/** The prompt header value for these files: ids and display metadata only. */
export function attachmentsHeader(items) {
  if (!items || !items.length) return undefined;
  return JSON.stringify(
    items.map(({ id, name, kind, type, size, width, height, pages }) =>
      Object.fromEntries(
        Object.entries({ id, name, kind, type, size, width, height, pages }).filter(([, v]) => v !== undefined && v !== null),
      ),
    ),
  );
}

/** A prompt message's files, from its headers; anything malformed is ignored, not thrown. */
export function parseAttachmentsHeader(headers) {
  const raw = headers && headers.attachments;
  if (typeof raw !== "string" || !raw) return [];
  try {
    const items = JSON.parse(raw);
    if (!Array.isArray(items)) return [];
    return items.filter(
      (item) => item && typeof item.id === "string" && typeof item.name === "string" && KIND_LABELS[item.kind],
    );
  } catch {
    return [];
  }
}

/** Checks we can make before uploading (the server repeats them and decodes the file). */
function refusalBeforeUpload(limits, file, othersBytes, othersCount) {
  if (othersCount >= limits.maxFiles) return `At most ${limits.maxFiles} files can go with one message.`;
  if (file.size === 0) return `${file.name} is empty.`;
  if (file.size > limits.maxTotalBytes) {
    return `${file.name} is ${humanSize(file.size)}; the files of one message can total at most ${humanSize(limits.maxTotalBytes)}.`;
  }
  const looksLikeImage = IMAGE_TYPES.has(file.type) || IMAGE_EXTENSIONS.test(file.name);
  if (looksLikeImage && file.size > limits.maxImageBytes) {
    return `${file.name} is ${humanSize(file.size)}; images can be at most ${humanSize(limits.maxImageBytes)}.`;
  }
  if ((file.type === "application/pdf" || /\.pdf$/i.test(file.name)) && file.size > limits.maxPdfBytes) {
    return `${file.name} is ${humanSize(file.size)}; PDFs can be at most ${humanSize(limits.maxPdfBytes)}.`;
  }
  if (othersBytes + file.size > limits.maxTotalBytes) {
    return `${file.name} would bring this message's files to ${humanSize(othersBytes + file.size)}; they can total at most ${humanSize(limits.maxTotalBytes)}.`;
  }
  return null;
}

function csrfToken(root) {
  const input = root.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

/**
 * The composer's files. `root` is the include's `[data-attachments-composer]`; `dropTarget`
 * takes dropped files; pastes anywhere on the page add the clipboard's files.
 *
 * `signal` (an AbortSignal) ends it: every listener it added to the page goes and uploads still
 * running are aborted (the sidebar swaps conversations in place, so the page outlives the view).
 * `prepareUpload()`, when the config has no `uploadUrl` yet (a new chat's draft, no conversation
 * to upload into), is awaited before the first upload and resolves to the URL to upload to.
 */
export function bindComposerAttachments(config, { root, dropTarget, onChange = () => {}, signal, prepareUpload }) {
  if (!config || !root || (!config.uploadUrl && !prepareUpload)) return null;
  if (signal && signal.aborted) return null;
  const input = root.querySelector("[data-attach-input]");
  const button = root.querySelector("[data-attach-button]");
  const list = root.querySelector("[data-pending-attachments]");
  const pending = []; // {file, state: uploading|ready|refused, item, element, xhr}
  let uploadUrl = config.uploadUrl || null;
  let preparing = null; // prepareUpload() in flight: every file waits for the same one
  const ended = () => Boolean(signal && signal.aborted);

  function whereToUpload() {
    if (uploadUrl) return Promise.resolve(uploadUrl);
    if (!preparing) {
      preparing = new Promise((resolve) => resolve(prepareUpload()))
        .then((url) => {
          if (!url) throw new Error("there is nowhere to upload it");
          uploadUrl = url;
          return url;
        })
        .finally(() => {
          preparing = null;
        });
    }
    return preparing;
  }

  function changed() {
    list.hidden = pending.length === 0;
    onChange();
  }

  function remove(entry) {
    if (entry.xhr && entry.state === "uploading") entry.xhr.abort();
    const index = pending.indexOf(entry);
    if (index >= 0) pending.splice(index, 1);
    entry.element.remove();
    changed();
  }

  function setState(entry, state, message) {
    entry.state = state;
    entry.element.dataset.state = state;
    const error = entry.element.querySelector("[data-attachment-error]");
    error.textContent = message || "";
    error.hidden = !message;
    const progress = entry.element.querySelector("progress");
    progress.hidden = state !== "uploading";
    if (state === "ready") {
      entry.element.dataset.attachmentId = entry.item.id;
      entry.element.querySelector("[data-attachment-meta]").textContent = metaText(entry.item);
      if (entry.item.kind === "image") {
        const img = element("img", "attachment-thumb");
        img.src = fileUrl(config, entry.item.id);
        img.alt = entry.item.name;
        entry.element.prepend(img);
      }
    }
    changed();
  }

  function pendingElement(entry) {
    const li = element("li", "pending-attachment");
    li.dataset.fileName = entry.file.name;
    li.append(element("span", "attachment-name", entry.file.name));
    const meta = element("span", "attachment-meta", humanSize(entry.file.size));
    meta.dataset.attachmentMeta = "";
    li.append(meta);
    const progress = element("progress", "attachment-progress");
    progress.max = 100;
    progress.value = 0;
    progress.setAttribute("aria-label", `Uploading ${entry.file.name}`);
    li.append(progress);
    const remover = element("button", "attachment-remove", "×");
    remover.type = "button";
    remover.dataset.removeAttachment = "";
    remover.setAttribute("aria-label", `Remove ${entry.file.name}`);
    remover.addEventListener("click", () => remove(entry));
    li.append(remover);
    const error = element("p", "attachment-error");
    error.dataset.attachmentError = "";
    error.setAttribute("role", "alert");
    error.hidden = true;
    li.append(error);
    return li;
  }

  function upload(entry) {
    whereToUpload().then(
      (url) => {
        // Removed, or the view gone, while the conversation was being made: nothing to send.
        if (!ended() && pending.includes(entry)) send(entry, url);
      },
      (error) => {
        if (ended() || !pending.includes(entry)) return;
        setState(entry, "refused", `${entry.file.name} could not be uploaded: ${error.message || error}. Remove it and try again.`);
      },
    );
  }

  function send(entry, url) {
    const xhr = new XMLHttpRequest();
    entry.xhr = xhr;
    xhr.open("POST", url);
    xhr.setRequestHeader("X-CSRFToken", csrfToken(root));
    xhr.setRequestHeader("X-File-Name", encodeURIComponent(entry.file.name));
    xhr.responseType = "json";
    const progress = entry.element.querySelector("progress");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) progress.value = Math.round((event.loaded / event.total) * 100);
    });
    xhr.addEventListener("load", () => {
      if (ended()) return;
      const body = xhr.response || {};
      if (xhr.status === 201 && body.id) {
        entry.item = body;
        setState(entry, "ready");
      } else {
        setState(entry, "refused", body.error || `${entry.file.name} could not be uploaded (HTTP ${xhr.status}).`);
      }
    });
    xhr.addEventListener("error", () => {
      if (!ended()) {
        setState(entry, "refused", `${entry.file.name} could not be uploaded: the connection failed. Remove it and try again.`);
      }
    });
    const form = new FormData();
    form.append("file", entry.file, entry.file.name);
    xhr.send(form);
  }

  function add(files) {
    for (const file of files) {
      const live = pending.filter((entry) => entry.state !== "refused");
      const bytes = live.reduce((sum, entry) => sum + entry.file.size, 0);
      const entry = { file, state: "uploading", item: null, xhr: null, element: null };
      entry.element = pendingElement(entry);
      pending.push(entry);
      list.append(entry.element);
      const refusal = refusalBeforeUpload(config, file, bytes, live.length);
      if (refusal) setState(entry, "refused", refusal);
      else {
        setState(entry, "uploading");
        upload(entry);
      }
    }
  }

  // Everything added to the page goes with the view (`signal`); the view's own elements go with it.
  const options = { signal };
  button.addEventListener("click", () => input.click(), options);
  input.addEventListener("change", () => {
    add([...input.files]);
    input.value = "";
  }, options);

  const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  const target = dropTarget || document.body;
  target.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    target.classList.add("is-drop-target");
  }, options);
  target.addEventListener("dragleave", (event) => {
    // Left the page (no related target) or the target itself, not just moved between children.
    if (!event.relatedTarget || !target.contains(event.relatedTarget)) target.classList.remove("is-drop-target");
  }, options);
  target.addEventListener("drop", (event) => {
    target.classList.remove("is-drop-target");
    if (!event.dataTransfer || !event.dataTransfer.files.length) return;
    event.preventDefault();
    add([...event.dataTransfer.files]);
  }, options);
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData ? [...event.clipboardData.files] : [];
    if (!files.length) return; // plain text pastes into the textarea as usual
    event.preventDefault();
    add(files);
  }, options);
  // An upload still running would be lost with the tab: ask first.
  window.addEventListener("beforeunload", (event) => {
    if (pending.some((entry) => entry.state === "uploading")) {
      event.preventDefault();
      event.returnValue = "";
    }
  }, options);
  if (signal) {
    // The view is gone: its uploads stop (a file already stored stays unlinked to any prompt).
    signal.addEventListener("abort", () => {
      target.classList.remove("is-drop-target");
      for (const entry of pending) if (entry.xhr && entry.state === "uploading") entry.xhr.abort();
    }, { once: true });
  }
  changed();

  return {
    /** {items, problem}: the uploaded files to send, or why the message must wait. */
    forSending() {
      if (pending.some((entry) => entry.state === "uploading")) {
        return { items: [], problem: "Wait for the files to finish uploading (or remove them)." };
      }
      return { items: pending.filter((entry) => entry.state === "ready").map((entry) => entry.item), problem: null };
    },
    /** After a send: the sent files leave the composer; refused ones stay, with their reason. */
    clearSent() {
      for (const entry of [...pending]) if (entry.state === "ready") remove(entry);
    },
    get pending() {
      return pending;
    },
  };
}
