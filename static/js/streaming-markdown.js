// Markdown that is still arriving: `completeMarkdown(text)` turns the prefix of a reply streamed so
// far into markdown that renders as the finished reply will, without raw markers flashing.
//
// A half-written construct is either closed (`**bold` -> `**bold**`, an open code span or fence)
// or held back until it can render as itself (`[text](http://ex` shows `text`; a line that is
// only markers, such as `-`, `1.`, `#` or a setext underline, waits for its content; a table
// waits for its delimiter row). Text that is already well formed comes back unchanged, so the
// final render is the render of the whole reply. Pure string work: no DOM, testable in Node.

const FENCE_OPEN = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const FENCE_CLOSE = /^ {0,3}(`{3,}|~{3,})\s*$/;
// A line that is nothing but block markers, whose meaning depends on what follows.
const MARKER_ONLY_LINE = /^\s*(?:[-*+=#>`~_|:]+|\d{1,9}[.)]?)?(?:\s+[-*+>#]?)*\s*$/;
const TABLE_DELIMITER = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
const WORD = /[\p{L}\p{N}]/u;

/** Markdown for the streamed prefix `text` that renders without unfinished markers. */
export function completeMarkdown(text) {
  if (!text) return text;
  const endsLine = text.endsWith("\n");
  const lines = text.split("\n");
  if (endsLine) lines.pop();

  // Where the open fence (if any) and the last block (paragraph) start.
  let fence = null;
  let blockStart = 0;
  lines.forEach((line, index) => {
    if (fence) {
      const close = FENCE_CLOSE.exec(line);
      if (close && close[1][0] === fence[0] && close[1].length >= fence.length) {
        fence = null;
        blockStart = index + 1;
      }
      return;
    }
    const open = FENCE_OPEN.exec(line);
    if (open && !(open[1][0] === "`" && open[2].includes("`"))) {
      fence = open[1];
      blockStart = index;
    } else if (!line.trim()) {
      blockStart = index + 1;
    }
  });

  if (fence) {
    // An unclosed fence renders as code to the end already; hold back a half-typed closing fence.
    const last = lines[lines.length - 1];
    if (!endsLine && lines.length - 1 > blockStart && /^ {0,3}[`~]+\s*$/.test(last)) lines.pop();
    return joinLines(lines, endsLine);
  }

  // The line being typed: markers alone wait for their content.
  if (!endsLine && lines.length > 0 && MARKER_ONLY_LINE.test(lines[lines.length - 1])) {
    lines.pop();
    return completeMarkdown(joinLines(lines, lines.length > 0));
  }

  let block = lines.slice(blockStart);
  const head = lines.slice(0, blockStart);
  // A table is shown once its delimiter row is complete; before that it is pipes in a paragraph.
  if (block.length && block[0].trimStart().startsWith("|")) {
    const delimiterDone = block.length > 2 || (block.length === 2 && endsLine);
    if (!(delimiterDone && TABLE_DELIMITER.test(block[1]))) {
      return joinLines(head, head.length > 0);
    }
  }
  if (!block.length) return joinLines(lines, endsLine);

  let inline = block.join("\n");
  inline = holdBackLink(inline);
  inline = closeInline(inline);
  block = inline.split("\n");
  return joinLines([...head, ...block], endsLine);
}

function joinLines(lines, endsLine) {
  return lines.join("\n") + (endsLine && lines.length ? "\n" : "");
}

// The last `[` in the block that does not yet make a complete link or image: show its text only.
function holdBackLink(text) {
  const masked = maskCode(text).masked;
  // A last `!` may be the start of an image.
  if (masked.endsWith("!")) return text.slice(0, -1);
  for (let open = masked.lastIndexOf("["); open >= 0; open = masked.lastIndexOf("[", open - 1)) {
    const rest = masked.slice(open);
    // Complete forms: [text](url) or [text](url "title"), [text][ref], or a [text] followed by
    // more prose (literal brackets, or a reference resolved elsewhere) - all left alone.
    if (/^\[[^\]]*\]\([^)]*\)/.test(rest) || /^\[[^\]]*\]\[[^\]]*\]/.test(rest)) return text;
    if (/^\[[^\]]*\](?!$|\(|\[)/.test(rest)) return text;
    const image = open > 0 && masked[open - 1] === "!";
    const start = image ? open - 1 : open;
    const label = /^\[([^\]]*)/.exec(text.slice(open))[1];
    return text.slice(0, start) + label;
  }
  return text;
}

// Code spans' contents and backslash escapes become inert placeholders, so their markers count
// for nothing; an unclosed code span is reported so it can be closed.
function maskCode(text) {
  let masked = "";
  let openTicks = "";
  let openAt = -1;
  let i = 0;
  while (i < text.length) {
    const char = text[i];
    if (char === "\\" && i + 1 < text.length) {
      masked += "xx";
      i += 2;
      continue;
    }
    if (char === "`") {
      const run = /^`+/.exec(text.slice(i))[0];
      const close = text.indexOf(run, i + run.length);
      // The closing run must be exactly as long: not part of a longer run.
      let end = close;
      while (end >= 0 && (text[end + run.length] === "`" || text[end - 1] === "`")) {
        end = text.indexOf(run, end + run.length + 1);
      }
      if (end < 0) {
        openTicks = run;
        openAt = i;
        masked += "x".repeat(text.length - i);
        break;
      }
      masked += "x".repeat(end + run.length - i);
      i = end + run.length;
      continue;
    }
    masked += char;
    i += 1;
  }
  return { masked, openTicks, openAt };
}

// Close emphasis and strikethrough left open, innermost first; drop an opener with nothing after.
function closeInline(text) {
  const { masked, openTicks, openAt: start } = maskCode(text);
  if (openTicks) {
    // Backticks the text ends on may be the closer arriving: leave them out until it has.
    const content = text.slice(start + openTicks.length).replace(/`+$/, "");
    if (!content.trim()) return text.slice(0, start).trimEnd();
    return text.slice(0, start + openTicks.length) + content + openTicks;
  }
  const stack = [];
  let dropFrom = text.length;
  const runs = /(\*+|_+|~+)/g;
  let match;
  while ((match = runs.exec(masked))) {
    const run = match[0];
    const at = match.index;
    const before = at > 0 ? masked[at - 1] : "\n";
    const after = at + run.length < masked.length ? masked[at + run.length] : "";
    const lineStart = before === "\n" || /^\s*$/.test(masked.slice(masked.lastIndexOf("\n", at - 1) + 1, at));
    if (!after) {
      dropFrom = at; // Still being typed: the start of a closer, or an opener with nothing after.
      break;
    }
    if (run[0] === "~" && run.length !== 2) continue;
    if (run[0] !== "~" && run.length > 3) continue;
    // A list bullet (`* item`) or a lone symbol between spaces is not emphasis.
    if (/\s/.test(after) && (lineStart || /\s/.test(before))) continue;
    // Intraword underscores (snake_case) never emphasise.
    if (run[0] === "_" && WORD.test(before) && WORD.test(after)) continue;
    const top = stack[stack.length - 1];
    if (top && top.run === run && !/\s/.test(before)) {
      stack.pop();
    } else if (after && !/\s/.test(after)) {
      stack.push({ run, at });
    }
  }
  let result = text.slice(0, dropFrom);
  // An opener the text ends on has nothing to emphasise yet: leave it out.
  while (stack.length && !result.slice(stack[stack.length - 1].at + stack[stack.length - 1].run.length).trim()) {
    result = result.slice(0, stack.pop().at);
  }
  if (!stack.length) return result;
  result = result.trimEnd();
  for (let index = stack.length - 1; index >= 0; index -= 1) result += stack[index].run;
  return result;
}
