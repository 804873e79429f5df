"""Deterministic, readable replies for the Anthropic stand-in. Not a language model.

`compose_reply(request)` looks at the whole request (system prompt, every turn, tools, thinking)
and returns the same `Composition` for the same request. In order it recognises:

- a tool result in the last user turn -> an answer built from it;
- "reply with a short title ... for this conversation" (in the prompt, or in the system prompt
  with the transcript as the prompt) -> a few relevant words, no quotes;
- a tool offered that the prompt asks for (or `tool_choice` any/tool) -> a `tool_use` call;
- "say exactly: X" / "repeat after me: X" -> X verbatim (handy for tests);
- images and documents in the last user turn (or earlier ones, when the prompt asks about an
  image/PDF/document) -> what the stand-in saw: an image's pixel size, format and dominant
  colour; a PDF's page count and first line of text; a text document's first line;
- questions about the conversation: "what was my first message?", "what did I just say?",
  "what is my name?" (after "my name is ..."), "what is your system prompt?", "summarize our
  conversation", "how many messages ...";
- "count to N"; follow-ups ("tell me more", "an example?") to the previous question;
  greetings and thanks;
- anything else -> haiku/poem/joke/story requests, a few well-known facts, comparisons ("A vs
  B") as a table, or a topical answer from the bank in `bank.py` keyed by words in the prompt
  (how-to questions get numbered steps). Length follows cues ("in one sentence", "briefly",
  "in 300 words", "long answer", "in detail"; a system prompt asking for brevity counts too);
  a fenced code block is added when code is asked for (`snippets.py`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emulators.anthropic.bank import (
    ABOUT_ME,
    CAPABILITIES,
    COMPARE_ROWS,
    ELABORATIONS,
    EXPLAIN_POINTS,
    FACTS,
    FEELING_REPLY,
    GENERIC_CLOSINGS,
    GENERIC_DETAILS,
    GENERIC_INTROS,
    GENERIC_POINTS,
    HAIKUS,
    HOWTO_STEPS,
    JOKES,
    PHRASES,
    POEM,
    STORY,
    WHY_POINTS,
    topic_for,
)
from emulators.anthropic.snippets import code_block, wants_code

if TYPE_CHECKING:
    from emulators.anthropic.core import MessagesRequest, Tool
    from emulators.anthropic.media import Media

_FAULT_MARKER_RE = re.compile(r"\s*\[\[fault:[^\]]*\]\]\s*")


@dataclass(frozen=True)
class ToolCall:
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class Composition:
    """What the stand-in "model" says: optional thinking, the text, optional tool call."""

    text: str
    thinking: str | None = None
    tool_call: ToolCall | None = None


STOPWORDS = frozenset(
    """a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers him his how i if in into is it its itself just me more
    most my myself no nor not now of off on once only or other our out over own please same she
    should so some such than that the their them then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you
    your yours tell explain write give show make let know want need like get got really thing
    things something anything way ways use using one sentence words word answer reply long short
    brief briefly detail detailed quick quickly summary summarize thanks thank hi hello hey okay ok
    yes help lot much many able sure maybe just kind sort pretty bit little good best better new
    first last next us it's i'm what's how's that's don't can't""".split()
)


def clean_prompt(text: str) -> str:
    """The prompt without fault markers (they steer the server, not the reply)."""
    return _FAULT_MARKER_RE.sub(" ", text).strip()


def keywords(text: str) -> list[str]:
    """Meaningful words in order of first appearance, lower-case, without duplicates."""
    seen: dict[str, None] = {}
    for word in re.findall(r"[A-Za-z][A-Za-z0-9+#'-]*", text):
        lowered = word.lower().strip("'-")
        if len(lowered) >= 3 and lowered not in STOPWORDS:
            seen.setdefault(lowered, None)
    return list(seen)


# --- length -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Length:
    kind: str  # sentence | short | normal | long | words
    words: int = 0


def length_from(prompt: str, system: str) -> Length:
    lowered = prompt.lower()
    if re.search(
        r"\b(in|with) (one|a single|1|a) (short )?(sentence|line)\b|\bone[- ]liner\b|\btl;?dr\b",
        lowered,
    ):
        return Length("sentence")
    match = re.search(r"\b(\d{2,5})[- ]?words?\b", lowered)
    if match:
        return Length("words", min(int(match.group(1)), 5000))
    if re.search(
        r"\b(long|longer|detailed|in detail|in depth|in-depth|essay|thorough|comprehensive|elaborate)\b",
        lowered,
    ):
        return Length("long")
    if re.search(r"\b(briefly|brief|short|concise|quick|quickly|in short|summari[sz]e)\b", lowered):
        return Length("short")
    if re.search(r"\b(concise|brief|short|terse)\b", system.lower()):
        return Length("short")
    return Length("normal")


# --- subject ----------------------------------------------------------------------------------

_LEAD_RE = re.compile(
    r"^(?:(?:hi|hello|hey|ok|okay|so|and|now|also|thanks|great)[,!. ]+)*"
    r"(?:(?:can|could|would|will) you(?: please)? |please |i'd like you to |i want you to )?"
    r"(?:tell me(?: about)? |explain(?: to me)? |describe |give me |show me |teach me(?: about)? |"
    r"write(?: me)? |help me(?: with| understand)? |summari[sz]e |list |compare |suggest |"
    r"recommend |what should (?:i|we) |what(?:'s| is| are| was| were) |how (?:do|does|can|should|would|to|did) (?:i |you |we |one )?|"
    r"why (?:is|are|do|does|did) |when (?:is|was|did|should) |where (?:is|are|can) |who (?:is|was) |"
    r"is there |are there |do you know |i need |i want )*",
    re.IGNORECASE,
)
_LENGTH_CUES_RE = re.compile(
    r"\b(?:in|with) (?:one|a single|1|a) (?:short )?(?:sentence|line)\b|\bin \d+ words\b|\b\d+[- ]words?\b|"
    r"\bin (?:great )?detail\b|\bin depth\b|\bbriefly\b|\b(?:a )?long answer\b|\bplease\b",
    re.IGNORECASE,
)


def subject_of(prompt: str) -> str:
    """A short noun phrase for what the prompt is about, e.g. "reverse a linked list in Python"."""
    first = re.split(r"(?<=[.?!])\s|\n", prompt.strip(), maxsplit=1)[0]
    first = _LENGTH_CUES_RE.sub("", first).strip()
    works = re.match(r"how (?:does|do|did) (.+?) (?:work|works|happen)\b", first, re.IGNORECASE)
    if works:
        first = works.group(1)
    stripped = _LEAD_RE.sub("", first)
    stripped = re.sub(r"^(?:some|about)\s+", "", stripped.strip(), flags=re.IGNORECASE)
    # "... to a 5 year old" describes the audience, not the subject.
    stripped = re.sub(
        r"\s+(?:to|for) (?:a|an|my|someone) (?:\d+[- ]year[- ]old|child|kid|beginner|novice|"
        r"layperson|non-\w+ person|newbie)\b.*$|\s+like (?:i'?m|i am) .*$",
        "",
        stripped,
        flags=re.IGNORECASE,
    )
    at_prompt_start = stripped == first
    phrase = " ".join(stripped.strip(" ?.!,:;\"'").split()[:9])
    if not phrase:
        return "that"
    # Capitals after a stripped lead-in ("tell me about Paris") are proper nouns; at the very
    # start of the prompt they are just the start of a sentence.
    if at_prompt_start and not phrase[:2].isupper():
        phrase = phrase[0].lower() + phrase[1:]
    return phrase


# --- composition ------------------------------------------------------------------------------


class _Context:
    def __init__(self, request: MessagesRequest) -> None:
        self.request = request
        self.system = request.system
        self.rng = random.Random(request.seed)
        self.user_texts = [clean_prompt(turn.text) for turn in request.turns if turn.role == "user"]
        self.assistant_texts = [turn.text for turn in request.turns if turn.role == "assistant"]
        self.prompt = self.user_texts[-1] if self.user_texts else ""
        self.lowered = self.prompt.lower()

    def pick(self, options: Sequence[str]) -> str:
        return options[self.rng.randrange(len(options))]


def compose_reply(request: MessagesRequest) -> Composition:
    """The deterministic reply to a validated request."""
    context = _Context(request)
    for intent in (
        _answer_tool_result,
        _title,
        _tool_call,
        _say_exactly,
        _about_attachments,
        _about_conversation,
        _count,
        _follow_up,
        _small_talk,
    ):
        composition = intent(context)
        if composition is not None:
            return _with_thinking(context, composition)
    return _with_thinking(context, Composition(_topical_answer(context)))


def _with_thinking(context: _Context, composition: Composition) -> Composition:
    if context.request.thinking_budget is None:
        return composition
    subject = subject_of(context.prompt)
    history = len(context.user_texts) - 1
    lines = [f"The user is asking about {subject}."]
    if history:
        lines.append(
            f"This is turn {history + 1} of the conversation, so I should keep the earlier "
            f"{'message' if history == 1 else 'messages'} in mind."
        )
    if context.system:
        lines.append("I'll follow the system prompt's guidance on tone and format.")
    if composition.tool_call is not None:
        lines.append(
            f"I need fresh data for this, so I'll call the {composition.tool_call.name} tool."
        )
    elif "```" in composition.text:
        lines.append("A short explanation followed by a working code example will be most useful.")
    else:
        lines.append("A clear, well-structured answer will be most useful here.")
    return Composition(composition.text, " ".join(lines), composition.tool_call)


def _answer_tool_result(context: _Context) -> Composition | None:
    last = context.request.turns[-1]
    results = last.blocks_of_type("tool_result") if last.role == "user" else []
    if not results:
        return None
    names: dict[str, str] = {}
    for turn in context.request.turns:
        for block in turn.blocks_of_type("tool_use"):
            names[str(block.get("id"))] = str(block.get("name"))
    paragraphs: list[str] = []
    for block in results:
        name = names.get(str(block.get("tool_use_id")), "the tool")
        content = last.text if len(results) == 1 else str(block.get("content", ""))
        content = clean_prompt(_tool_content(block) or content)
        if block.get("is_error"):
            paragraphs.append(f"The `{name}` tool reported an error: {content}")
            continue
        try:
            parsed = json.loads(content)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and parsed:
            lines = "\n".join(f"- **{key}**: {value}" for key, value in parsed.items())
            paragraphs.append(f"Here's what `{name}` returned:\n\n{lines}")
        else:
            paragraphs.append(f"According to `{name}`: {content}")
    paragraphs.append("Let me know if you'd like me to look anything else up.")
    return Composition("\n\n".join(paragraphs))


def _tool_content(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, list):
        return "\n".join(str(item.get("text", "")) for item in content if isinstance(item, dict))
    return content if isinstance(content, str) else json.dumps(content)


_TITLE_RE = re.compile(r"\btitle\b", re.IGNORECASE)


def _asks_for_title(text: str) -> bool:
    return bool(
        _TITLE_RE.search(text)
        and re.search(r"\b(conversation|chat|this|thread|discussion)\b", text, re.IGNORECASE)
    )


def _title(context: _Context) -> Composition | None:
    if _asks_for_title(context.prompt):
        # The conversation is either the earlier turns or quoted after the instruction.
        instruction, _, quoted = context.prompt.partition("\n")
        source = (
            quoted.strip()
            or " ".join(context.user_texts[:-1])
            or " ".join(context.assistant_texts)
            or re.sub(r"(?i).*?\btitle\b[^:]*:?", "", instruction)
        )
    elif _asks_for_title(context.system):
        source = context.prompt  # the system prompt names the task; the turn is the transcript
    else:
        return None
    # In a transcript ("User: ...\n\nAssistant: ..."), what the user asked names it best.
    asked = re.search(
        r"(?:^|\n)\s*(?:user|human)\s*:\s*(.+?)(?=\n\s*(?:assistant|claude)\s*:|\Z)",
        source,
        re.IGNORECASE | re.DOTALL,
    )
    if asked:
        source = asked.group(1)
    source = re.sub(r"(?im)^\s*(user|human|assistant|claude)\s*:\s*", "", source)
    source = re.sub(r"(?i)^\s*say (?:exactly|only|just)\s*:\s*", "", source.strip())
    words = keywords(source)
    topic = topic_for(words)
    subject_words = [word for word in keywords(subject_of(source)) if word not in STOPWORDS]
    chosen = subject_words[:4] or words[:4]
    if not chosen:
        return Composition(topic.title if topic else "New conversation")
    title = " ".join(word if word.isupper() else word.capitalize() for word in chosen)
    if topic and topic.title.lower() not in title.lower() and len(chosen) == 1:
        title = f"{topic.title}: {title}"
    return Composition(" ".join(title.split()[:6]))


def _tool_call(context: _Context) -> Composition | None:
    request = context.request
    choice = request.tool_choice or {"type": "auto"}
    if not request.tools or choice["type"] == "none":
        return None
    tool: Tool | None = None
    if choice["type"] == "tool":
        tool = next(t for t in request.tools if t.name == choice["name"])
    else:
        prompt_words = set(keywords(context.prompt))
        for candidate in request.tools:
            name_words = {
                w
                for w in re.split(r"[_\-\s]+", candidate.name.lower())
                if len(w) >= 3 and w not in STOPWORDS
            }
            stems = {w.rstrip("s") for w in prompt_words}
            if name_words & prompt_words or {w.rstrip("s") for w in name_words} & stems:
                tool = candidate
                break
        if tool is None and choice["type"] == "any":
            tool = request.tools[0]
    if tool is None:
        return None
    arguments = _tool_arguments(tool, context.prompt)
    forced = choice["type"] in ("any", "tool")
    preface = "" if forced else f"I'll use the `{tool.name}` tool to look that up."
    return Composition(preface, tool_call=ToolCall(tool.name, arguments))


def _tool_arguments(tool: Tool, prompt: str) -> dict[str, Any]:
    properties = tool.input_schema.get("properties") or {}
    required = tool.input_schema.get("required") or list(properties)
    arguments: dict[str, Any] = {}
    for name in required:
        schema = properties.get(name, {})
        arguments[name] = _argument_value(name, schema if isinstance(schema, dict) else {}, prompt)
    return arguments


def _argument_value(name: str, schema: dict[str, Any], prompt: str) -> Any:
    lowered = prompt.lower()
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        for option in schema["enum"]:
            if str(option).lower() in lowered:
                return option
        return schema["enum"][0]
    kind = schema.get("type", "string")
    if kind in ("integer", "number"):
        match = re.search(r"-?\d+(?:\.\d+)?", prompt)
        number = float(match.group()) if match else 1
        return int(number) if kind == "integer" else number
    if kind == "boolean":
        return False
    if kind == "array":
        return [subject_of(prompt)]
    if kind == "object":
        return {}
    key = name.lower()
    if any(
        part in key for part in ("location", "city", "place", "country", "where", "destination")
    ):
        match = re.search(r"\b(?:in|for|at|near|to)\s+([A-Z][\w'-]*(?:[ ,]+[A-Z][\w'-]*)*)", prompt)
        if match:
            return match.group(1).strip(" ,")
        capitalised = re.findall(r"(?<!^)(?<![.?!] )\b([A-Z][a-z]+)\b", prompt)
        return capitalised[0] if capitalised else subject_of(prompt)
    if "unit" in key:
        return "fahrenheit" if "fahrenheit" in lowered else "celsius"
    if "url" in key:
        match = re.search(r"https?://\S+", prompt)
        return match.group().rstrip(".,)") if match else "https://example.com"
    if "date" in key or "day" in key:
        return "today"
    return subject_of(prompt)


_SAY_RE = re.compile(
    r"(?:^|\b)(?:say|reply with|respond with|answer with|repeat after me|echo|print)"
    r"(?: exactly| only| just| verbatim)*\s*[:,]\s*(.+)",
    re.IGNORECASE | re.DOTALL,
)


def _say_exactly(context: _Context) -> Composition | None:
    match = _SAY_RE.search(context.prompt)
    if match is None:
        return None
    text = match.group(1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1]
    return Composition(text) if text else None


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())


_ATTACHMENT_WORDS_RE = re.compile(
    r"\b(images?|pictures?|photos?|screenshots?|pdfs?|documents?|files?|attachments?|attached|"
    r"pages?|scans?|diagrams?|charts?)\b",
    re.IGNORECASE,
)
_FORMAT_NAMES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WebP",
}


def _about_attachments(context: _Context) -> Composition | None:
    """Describe the attachments the prompt brings (or asks about), deterministically."""
    media = context.request.media
    if not media:
        return None
    turns = context.request.turns
    last_user = max(index for index, turn in enumerate(turns) if turn.role == "user")
    shown = [item for item in media if item.turn == last_user]
    if not shown:
        if not _ATTACHMENT_WORDS_RE.search(context.prompt):
            return None
        latest = max(item.turn for item in media)
        shown = [item for item in media if item.turn == latest]
    if len(shown) == 1:
        lines = [_describe(shown[0])]
    else:
        count = f"{len(shown)} attachments"
        lines = [f"You shared {count}:", ""]
        lines += [f"{index}. {_describe(item)}" for index, item in enumerate(shown, start=1)]
    pronoun = "it" if len(shown) == 1 else "them"
    lines += ["", f"Let me know what you'd like to do with {pronoun} next."]
    return Composition("\n".join(lines))


def _describe(item: Media) -> str:
    if item.kind == "image":
        animated = f", animated ({item.frames} frames)" if item.frames > 1 else ""
        name = _FORMAT_NAMES.get(item.media_type, item.media_type)
        return (
            f"The image is a {item.width}x{item.height} {name}{animated}, mostly "
            f"{item.colour} (`{item.colour_hex}`)."
        )
    title = f" \u201c{item.title}\u201d" if item.title else ""
    first = (
        f'its first line reads: "{item.first_line}"'
        if item.first_line
        else "it has no text I can extract"
    )
    if item.kind == "pdf":
        pages = f"{item.pages} page" + ("" if item.pages == 1 else "s")
        return f"The PDF{title} has {pages}; {first}."
    return f"The text document{title} is plain text; {first}."


def _about_conversation(context: _Context) -> Composition | None:
    lowered = context.lowered
    earlier = context.user_texts[:-1]
    if re.search(
        r"\b(first|1st|earliest|opening) (message|question|prompt|thing i (said|asked))\b", lowered
    ):
        if not earlier:
            return Composition(
                "This is your first message in our conversation, so there's nothing earlier to quote."
            )
        return Composition(f"Your first message was:\n\n{_quote(earlier[0])}")
    if re.search(
        r"\b(previous|last|prior) (message|question|prompt)\b|\bwhat did i (just )?(say|ask)\b",
        lowered,
    ):
        if not earlier:
            return Composition("There's no earlier message from you in this conversation yet.")
        return Composition(f"Your previous message was:\n\n{_quote(earlier[-1])}")
    if re.search(r"\b(system prompt|system message|your instructions)\b", lowered):
        if not context.system:
            return Composition("There's no system prompt in this conversation, just your messages.")
        return Composition(f"My system prompt is:\n\n{_quote(context.system)}")
    if re.search(
        r"\bwhat(?:'s| is) my name\b|\bwho am i\b|\bdo you (remember|know) my name\b", lowered
    ):
        for text in reversed(earlier):
            match = re.search(
                r"\b(?i:my name is|i am|i'm|call me)\s+([A-Z][\w'-]*(?: [A-Z][\w'-]*)?)", text
            )
            if match:
                return Composition(f"Your name is {match.group(1)}.")
        return Composition("You haven't told me your name yet.")
    if re.search(r"\bhow many (messages|questions|prompts)\b", lowered):
        count = len(context.user_texts)
        return Composition(
            f"You've sent {count} {'message' if count == 1 else 'messages'} in this conversation, including this one."
        )
    if re.search(r"\bsummari[sz]e (this|our|the) (conversation|chat|discussion)\b", lowered):
        if not earlier:
            return Composition("We've only just started: this is your first message.")
        lines = "\n".join(
            f"{n}. You asked about {subject_of(text)}." for n, text in enumerate(earlier, 1)
        )
        return Composition(f"Here's what we've covered so far:\n\n{lines}")
    if re.search(
        r"\bwhat did you (just )?say\b|\byour (last|previous) (answer|reply|message)\b", lowered
    ):
        if not context.assistant_texts:
            return Composition("I haven't said anything yet in this conversation.")
        first_sentence = re.split(r"(?<=[.!?])\s", context.assistant_texts[-1].strip(), maxsplit=1)[
            0
        ]
        return Composition(f'My last reply began: "{first_sentence}"')
    return None


_FOLLOW_UP_RE = re.compile(
    r"^(?:ok(?:ay)?[,!. ]+|great[,!. ]+|thanks[,!. ]+|and )?"
    r"(?:tell me more|more|more please|go on|continue|keep going|elaborate|why|how so|"
    r"what do you mean|can you (?:elaborate|expand)(?: on that)?|explain (?:that|it)(?: more| further| again)?|"
    r"(?:can you |could you )?(?:give|show) (?:me )?an? (?:example|code example)|an? example|"
    r"example please|for example|such as)\W*$"
)


def _follow_up(context: _Context) -> Composition | None:
    """Short follow-ups ("tell me more", "an example?") continue the previous question."""
    if not _FOLLOW_UP_RE.match(context.lowered.strip()):
        return None
    earlier = [
        text for text in context.user_texts[:-1] if not _FOLLOW_UP_RE.match(text.lower().strip())
    ]
    if not earlier:
        return Composition("Happy to. What would you like me to go into more detail on?")
    base = earlier[-1]
    subject = _phrase(base)
    words = keywords(base)
    topic = topic_for(words)
    if "example" in context.lowered:
        if topic is not None and topic.name in ("python", "javascript", "databases", "git"):
            return Composition(
                f"Sure. Here's an example for {subject}:\n\n{code_block(base, words)}"
            )
        example = context.pick(
            (
                "Say you've just started with {subject}. The first week, keep it deliberately small: one goal, one routine, and a note at the end of each day about what worked. By the second week you'll know which part deserves more of your time.",
                "Picture two people approaching {subject}. One plans everything up front; the other starts small and adjusts each day. The second usually gets further, because every small result teaches them something the plan couldn't.",
            )
        )
        return Composition(f"Sure, here's an example.\n\n{_fill(example, subject)}")
    details = [_fill(d, subject) for d in (topic.details if topic else ()) + GENERIC_DETAILS]
    chosen = details[:2] + [context.pick(details[2:])] if len(details) > 2 else details
    return Composition(f"Sure, there's more to say about {subject}.\n\n" + "\n\n".join(chosen))


def _count(context: _Context) -> Composition | None:
    match = re.search(r"\bcount (?:from (\d+) )?(?:up )?to (\d+)\b", context.lowered)
    if match is None:
        return None
    start, end = int(match.group(1) or 1), min(int(match.group(2)), 1000)
    if end < start:
        return Composition(f"{end} is smaller than {start}, so there's nothing to count.")
    return Composition(", ".join(str(n) for n in range(start, end + 1)))


def _small_talk(context: _Context) -> Composition | None:
    words = re.findall(r"[a-z']+", context.lowered)
    if not words or len(words) > 8:
        return None
    if words[0] in ("hi", "hello", "hey", "howdy", "greetings") or context.lowered.startswith(
        "good morning"
    ):
        again = " again" if len(context.user_texts) > 1 else ""
        return Composition(
            context.pick(
                (
                    f"Hello{again}! How can I help you today?",
                    f"Hi{again}! What would you like to talk about?",
                )
            )
        )
    if words[0] in ("thanks", "thank", "cheers", "thx"):
        return Composition("You're welcome! Let me know if there's anything else I can help with.")
    lowered = context.lowered
    if re.search(r"\bhow are you\b|\bhow's it going\b", lowered):
        return Composition("I'm doing well, thanks for asking! What can I help you with today?")
    if re.search(
        r"\bwho are you\b|\bwhat(?:'s| is) your name\b|\bare you (?:an? )?(?:ai|bot|robot|human|real|claude)\b",
        lowered,
    ):
        return Composition(ABOUT_ME)
    if re.search(r"^\W*help\W*$|\bwhat can you do\b|\bhow can you help\b", lowered):
        return Composition(CAPABILITIES)
    if re.search(
        r"\bwhat(?:'s| is) (?:the )?(?:time|date|day)\b|\bwhat time is it\b|\bwhat day is it\b",
        lowered,
    ):
        return Composition(
            "I don't have access to a clock, so I can't tell you the current time or date; "
            "your device's clock is the best source."
        )
    return _translation(lowered)


def _translation(lowered: str) -> Composition | None:
    match = re.search(r"\btranslate [\"']?(.+?)[\"']? (?:in)?to (\w+)", lowered)
    if match is None:
        return None
    phrase, language = match.group(1).strip(" ?.!"), match.group(2)
    known = PHRASES.get(phrase, {})
    if language in known:
        return Composition(f'In {language.capitalize()}, "{phrase}" is **{known[language]}**.')
    return Composition(
        f'I can\'t translate "{phrase}" into {language.capitalize()} here: offline, I only know '
        f"a few common phrases ({', '.join(sorted(PHRASES))})."
    )


def _fill(template: str, subject: str) -> str:
    return template.replace("{subject}", subject).replace(
        "{Subject}", subject[:1].upper() + subject[1:]
    )


def _topical_answer(context: _Context) -> str:
    prompt = context.prompt
    length = length_from(prompt, context.system)
    special = _creative(context) or _feeling(context)
    if special is not None:
        return special
    subject = subject_of(prompt)
    words = keywords(prompt) or keywords(" ".join(context.user_texts))
    topic = topic_for(words)
    task = task_of(prompt)
    fact = next((text for pattern, text in FACTS if re.search(pattern, context.lowered)), None)
    comparison = _comparison(prompt)
    code = code_block(prompt, words) if wants_code(prompt) and "```" not in (fact or "") else None

    if fact is not None:
        intro, points = fact, ()
    elif comparison is not None:
        intro, points = comparison, ()
    elif task is not None:
        intro = _fill(context.pick(HOWTO_INTROS), task)
        points = topic.points if topic else tuple(p.replace("{task}", task) for p in HOWTO_STEPS)
    elif re.match(r"\s*why\b", context.lowered):
        intro = context.pick(WHY_INTROS)
        points = topic.points if topic else WHY_POINTS
    elif re.match(
        r"\s*(what|who|which|explain|describe|tell me|how (does|do|is|are))\b", context.lowered
    ):
        intro = _fill(context.pick(topic.intros if topic else EXPLAIN_INTROS), subject)
        points = topic.points if topic else EXPLAIN_POINTS
    else:
        intro = _fill(context.pick(topic.intros if topic else GENERIC_INTROS), subject)
        points = topic.points if topic else GENERIC_POINTS
    shuffled = [_fill(point, subject) for point in points]
    if topic is not None or points is GENERIC_POINTS:
        context.rng.shuffle(shuffled)  # tips read fine in any order; explanations do not
    closings = topic.closings if topic else GENERIC_CLOSINGS
    details = [_fill(d, subject) for d in (topic.details if topic else ()) + GENERIC_DETAILS]

    code_first = code is not None and re.match(
        r"\s*(?:please |can you |could you )?(?:write|create|generate|implement|give me|show me|make)\b",
        context.lowered,
    )
    if code_first and length.kind in ("short", "normal"):
        notes = "\n".join(f"- {point}" for point in shuffled[: 2 if length.kind == "short" else 3])
        return f"Here's {subject}:\n\n{code}\n\nA few notes:\n\n{notes}"

    if length.kind == "sentence":
        first = re.split(r"(?<=[.!?])\s", intro.strip(), maxsplit=1)[0]
        return first if not code else f"{first}\n\n{code}"

    parts: list[str] = [f"{intro} {_follow_up_note(context)}".strip()]
    numbered = task is not None and topic is None
    if length.kind == "short" or (fact is not None and length.kind == "normal"):
        if shuffled:
            parts.append("\n".join(f"- {point}" for point in shuffled[:3]))
        if code:
            parts.append(code)
        return "\n\n".join(parts)

    if length.kind == "normal":
        if shuffled:
            steps = points if numbered else shuffled  # steps keep their order
            items = [_fill(p.replace("{task}", task or subject), subject) for p in steps[:4]]
            parts.append("\n".join(f"{n}. {item}" for n, item in enumerate(items, 1)))
        if code:
            parts.append("Here's a small example:\n\n" + code)
        parts.append(_fill(context.pick(closings), subject))
        return "\n\n".join(parts)

    # Long answers, or a word target: sections built from the topic, then more detail as needed.
    if shuffled:
        parts.append("## Key points\n\n" + "\n".join(f"- {point}" for point in shuffled))
    if code:
        parts.append("## Example\n\n" + code)
    parts.append("## In more depth\n\n" + "\n\n".join(details[:3]))
    target = length.words if length.kind == "words" else 450
    extra = details[3:] + [_fill(sentence, subject) for sentence in ELABORATIONS]
    round_number = 0
    while _word_count("\n\n".join(parts)) < target:
        round_number += 1
        context.rng.shuffle(extra)
        parts.append(
            f"## {FURTHER_HEADINGS[(round_number - 1) % len(FURTHER_HEADINGS)]}\n\n"
            + " ".join(extra[:4])
        )
        extra = extra[4:] + extra[:4]
    parts.append("## Summary\n\n" + _fill(context.pick(closings), subject))
    text = "\n\n".join(parts)
    if length.kind == "words":
        text = _trim_to_words(text, length.words)
    return text


HOWTO_INTROS: tuple[str, ...] = (
    "Here's a practical way to {subject}.",
    "To {subject}, it helps to work through it in order.",
)
WHY_INTROS: tuple[str, ...] = (
    "Good question. The answer comes down to a few things working together.",
    "There isn't a single cause; a few factors combine.",
)
EXPLAIN_INTROS: tuple[str, ...] = (
    "Here's an overview of {subject}.",
    "{Subject} is easier to grasp once you see it from a few angles.",
)
FURTHER_HEADINGS: tuple[str, ...] = (
    "Practical advice",
    "Common pitfalls",
    "Going further",
    "A broader view",
    "Putting it together",
)
_PRONOUNS = {"my": "your", "i": "you", "me": "you", "myself": "yourself", "mine": "yours",
             "i'm": "you're", "am": "are", "our": "your", "we": "you", "us": "you"}  # fmt: skip


def task_of(prompt: str) -> str | None:
    """For a how-to request, the task in the second person: "make your code faster"."""
    first = re.split(r"(?<=[.?!])\s|\n", prompt.strip(), maxsplit=1)[0]
    match = re.search(
        r"\bhow (?:do|can|should|would|could|might) (?:i|we|you|one) (.+)|\bhow to (.+)|"
        r"\b(?:i (?:want|need|would like|'d like) to|help me(?: to)?|teach me (?:how )?to) (.+)",
        first,
        re.IGNORECASE,
    )
    if match is None:
        return None
    task = next(group for group in match.groups() if group)
    task = _LENGTH_CUES_RE.sub("", task).strip(" ?.!,")
    if not task:
        return None
    swapped = [_PRONOUNS.get(word.lower(), word) for word in task.split()]
    return " ".join(swapped)


def _comparison(prompt: str) -> str | None:
    match = re.search(
        r"(?:difference(?:s)? between|compare|comparing) (.+?) (?:and|with|to|vs\.?|versus) (.+?)[?.!]*$"
        r"|^(?:which is better,? )?(.+?) (?:vs\.?|versus|or) (.+?)\?*$",
        prompt.strip().split("\n")[0],
        re.IGNORECASE,
    )
    if match is None or (
        match.group(3) and " vs" not in prompt.lower() and "versus" not in prompt.lower()
    ):
        return None
    first, second = (group.strip() for group in match.groups() if group)
    rows = "\n".join(f"| {aspect} | {a} | {b} |" for aspect, a, b in COMPARE_ROWS)
    return (
        f"**{first}** and **{second}** overlap, but they make different trade-offs.\n\n"
        f"| | {first} | {second} |\n|---|---|---|\n{rows}\n\n"
        f"In short: start with {first} if you want the conventional choice, and reach for "
        f"{second} when its particular strengths match your problem."
    )


def _creative(context: _Context) -> str | None:
    lowered = context.lowered
    about = re.search(r"\b(?:about|on|of) (?:a |an |the )?([a-z][\w' -]*)", lowered)
    word = (about.group(1).strip() if about else "") or (keywords(context.prompt) or ["stillness"])[
        -1
    ]
    fill = {"{word}": word, "{Word}": word[:1].upper() + word[1:], "{Title}": word.title()}

    def render(template: str) -> str:
        for key, value in fill.items():
            template = template.replace(key, value)
        return template

    if re.search(r"\bhaiku\b", lowered):
        return render(context.pick(HAIKUS))
    if re.search(r"\b(poem|verse|rhyme|limerick|sonnet)\b", lowered):
        return render(POEM)
    if re.search(r"\bjokes?\b|\bmake me laugh\b|\bsomething funny\b", lowered):
        return context.pick(JOKES)
    if re.search(r"\b(short story|a story|bedtime story|tale)\b", lowered):
        return render(STORY)
    return None


def _feeling(context: _Context) -> str | None:
    match = re.search(
        r"\bi(?:'m| am| feel|'ve been feeling| have been feeling)(?: feeling| so| really| very| a bit| kind of)* "
        r"(stressed|sad|anxious|tired|worried|nervous|overwhelmed|lonely|down|burned out|burnt out|depressed|upset)",
        context.lowered,
    )
    return FEELING_REPLY.replace("{feeling}", match.group(1)) if match else None


def _phrase(prompt: str) -> str:
    """What a prompt was about, as a phrase to refer back to it."""
    task = task_of(prompt)
    return f"how to {task}" if task else subject_of(prompt)


def _follow_up_note(context: _Context) -> str:
    """A nod to the previous question when this one continues its topic."""
    if len(context.user_texts) < 2:
        return ""
    previous, current = context.user_texts[-2], context.prompt
    topic = topic_for(keywords(current))
    if topic is None or topic is not topic_for(keywords(previous)):
        return ""
    if subject_of(previous) in (subject_of(current), "that"):
        return ""
    return f"This builds on what we discussed about {_phrase(previous)}."


def _word_count(text: str) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", text))


def _trim_to_words(text: str, target: int) -> str:
    """Cut text at the sentence end closest to `target` words, never inside a code block."""
    if _word_count(text) <= target:
        return text
    best_end = len(text)
    for match in re.finditer(r"[.!?](?=\s|$)", text):
        end = match.end()
        if text[:end].count("```") % 2:
            continue
        best_end = end
        if _word_count(text[:end]) >= target:
            break
    return text[:best_end].rstrip()
