// Renders every prefix of some replies the way the conversation page does mid-stream
// (completeMarkdown, then marked) and reports what a user would see that they should not:
// raw markdown markers in the text, or a final render that differs from the plain render.
// Prints one JSON object; tests/unit/test_markdown_streaming.py asserts on it.
import { readFileSync } from "node:fs";
import { marked } from "../../../node_modules/marked/lib/marked.esm.js";
import { completeMarkdown } from "../../../static/js/streaming-markdown.js";

const replies = JSON.parse(readFileSync(0, "utf8"));
// As on the page: an image the model wrote is a link showing its alt text (markdown.js does
// this in DOMPurify, for raw HTML images too).
marked.use({ renderer: { image: ({ href, text }) => `<a href="${href}">${text}</a>` } });

function render(text) {
  return marked.parse(text, { gfm: true, breaks: false, async: false });
}

// What the reader sees as prose: code (whose markers are content) and tags removed.
function visibleProse(html) {
  return html
    .replace(/<pre>[\s\S]*?<\/pre>/g, " ")
    .replace(/<code>[\s\S]*?<\/code>/g, " ")
    .replace(/<[^>]+>/g, " ")
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&amp;/g, "&")
    .replace(/\s+/g, " ")
    .trim();
}

// Mid-stream, the reader must see the beginning of the finished reply's prose: nothing that will
// vanish (a raw `**`, a `[` or `](http`), nothing rendered as something it will not be.
const report = { prefixes: 0, notPrefix: [], finalsDiffer: [], plainLeaks: 0 };
for (const reply of replies) {
  const final = render(reply);
  const finalProse = visibleProse(final);
  if (render(completeMarkdown(reply)) !== final) report.finalsDiffer.push(reply);
  for (let end = 1; end <= reply.length; end += 1) {
    const prefix = reply.slice(0, end);
    const shown = visibleProse(render(completeMarkdown(prefix)));
    report.prefixes += 1;
    // The same check on the bare prefix, to show it catches raw markers at all.
    if (!finalProse.startsWith(visibleProse(render(prefix)))) report.plainLeaks += 1;
    if (!finalProse.startsWith(shown) && report.notPrefix.length < 20) {
      report.notPrefix.push({ prefix, shown });
    }
  }
}
console.log(JSON.stringify(report));
