// The controls under a turn: a bar made once per turn and the buttons in it. Shared by the
// reply actions (conversation.js) and the version switcher (versions.js).

/** The turn's bar matching `selector`, created (with `className` and `data-<datasetKey>`) once. */
export function ensureBar(element, selector, className, datasetKey) {
  let bar = element.querySelector(selector);
  if (!bar) {
    bar = document.createElement("div");
    bar.className = className;
    bar.dataset[datasetKey] = "";
    element.append(bar);
  }
  return bar;
}

/** A turn button marked `data-<name>`; `title` also labels it for assistive technology. */
export function turnButton(label, name, onClick, { className = "turn-action", title = null } = {}) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = className;
  button.dataset[name] = "";
  button.textContent = label;
  if (title) {
    button.title = title;
    button.setAttribute("aria-label", title);
  }
  button.addEventListener("click", onClick);
  return button;
}
