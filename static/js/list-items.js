// What the conversation list page and the sidebar both do to an item when a `conversation`
// change arrives on the user's channel.

/** Put `item` in `list` by its `data-updated-at`, newest activity first (as the server orders). */
export function placeByActivity(list, item) {
  const updatedAt = item.dataset.updatedAt || "";
  for (const other of list.querySelectorAll("[data-conversation-id]")) {
    if (other !== item && (other.dataset.updatedAt || "") < updatedAt) {
      other.before(item);
      return;
    }
  }
  list.append(item);
}

/** Flash the item that just changed (restarting the animation if it is still running). */
export function highlight(item) {
  item.classList.remove("just-changed");
  void item.offsetWidth;
  item.classList.add("just-changed");
}
