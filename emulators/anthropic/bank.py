"""The text the stand-in's replies are assembled from: topics keyed by words in the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# --- topics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    name: str
    keys: frozenset[str]
    title: str
    intros: tuple[str, ...]
    points: tuple[str, ...]
    details: tuple[str, ...]
    closings: tuple[str, ...]


def _topic(name: str, keys: str, title: str, intros: Sequence[str], points: Sequence[str],
           details: Sequence[str], closings: Sequence[str]) -> Topic:  # fmt: skip
    return Topic(
        name,
        frozenset(keys.split()),
        title,
        tuple(intros),
        tuple(points),
        tuple(details),
        tuple(closings),
    )


TOPICS: tuple[Topic, ...] = (
    _topic(
        "python",
        "python pip django flask pandas numpy list dict comprehension pythonic asyncio venv",
        "Python",
        (
            "Python makes {subject} pleasantly direct once you know which built-ins to reach for.",
            "Good question: {subject} is one of those Python topics where a few idioms go a long way.",
        ),
        (
            "**Prefer the built-ins.** `sorted`, `enumerate`, `zip` and comprehensions cover most everyday needs and are faster than hand-written loops.",
            "**Keep functions small.** A function that does one thing is easy to test with `pytest` and easy to reuse.",
            "**Use type hints.** They document intent and let tools like `mypy` catch mistakes before you run anything.",
            "**Isolate dependencies.** A virtual environment (`python -m venv .venv`) keeps each project's packages separate.",
            "**Read the traceback from the bottom.** The last line names the error; the lines above show how you got there.",
            "**Measure before optimising.** `timeit` and `cProfile` tell you where the time actually goes.",
        ),
        (
            "Under the hood, Python objects are references, so assigning a list to a new name does not copy it. When you need an independent copy, use `list(items)` or `copy.deepcopy` for nested structures.",
            "Iteration in Python is built on the iterator protocol: anything with `__iter__` can be used in a `for` loop, which is why generators are such a natural way to process large inputs lazily.",
            "The standard library is broad enough that it is worth checking `itertools`, `collections` and `functools` before writing a helper yourself.",
        ),
        (
            "If you share the code you're working on, I can suggest more specific changes.",
            "Try it in a REPL first; Python rewards quick experiments.",
        ),
    ),
    _topic(
        "javascript",
        "javascript typescript node nodejs npm react vue browser dom promise async await fetch frontend css html",
        "JavaScript",
        (
            "In JavaScript, {subject} mostly comes down to understanding how the event loop and promises fit together.",
            "Here's a practical take on {subject} for modern JavaScript.",
        ),
        (
            "**Use `const` by default.** Reach for `let` only when a value really changes, and avoid `var`.",
            "**Prefer `async`/`await`.** It reads top to bottom and keeps error handling in ordinary `try`/`catch` blocks.",
            "**Never block the event loop.** Long synchronous work freezes the page; split it up or move it to a worker.",
            "**Compare with `===`.** Loose equality has surprising coercion rules.",
            "**Handle rejected promises.** An unhandled rejection is a silent failure in the browser and a crash in Node.",
            "**Let the platform help.** `fetch`, `URL`, `AbortController` and `structuredClone` are built in now.",
        ),
        (
            "Every callback you schedule goes into a queue, and microtasks (promise reactions) always run before the next macrotask such as a timer. That ordering explains most 'why did this run first?' puzzles.",
            "Modules (`import`/`export`) give each file its own scope, which removes a whole class of accidental globals.",
            "TypeScript adds a compile-time layer on top; it cannot change runtime behaviour, but it catches many mistakes while you type.",
        ),
        (
            "Open the browser devtools console and try it live; that's the fastest feedback loop.",
            "Let me know which runtime you're targeting and I can tailor the example.",
        ),
    ),
    _topic(
        "databases",
        "sql database databases postgres postgresql mysql sqlite query queries index indexes join table tables schema orm migration",
        "Databases",
        (
            "For {subject}, the database usually rewards a little upfront thinking about how the data will be queried.",
            "Here's how I'd approach {subject} from a database point of view.",
        ),
        (
            "**Model the data first.** Tables should mirror the things in your domain and the relationships between them.",
            "**Index what you filter on.** A `WHERE` or `JOIN` column without an index means a full scan as the table grows.",
            "**Use transactions.** Group writes that must succeed or fail together.",
            "**Look at the plan.** `EXPLAIN ANALYZE` shows what the database actually does with your query.",
            "**Avoid N+1 queries.** Fetch related rows in one query with a join or a prefetch.",
            "**Keep migrations small.** Reversible, incremental schema changes are much safer to deploy.",
        ),
        (
            "Normalisation removes duplicated data so that each fact lives in one place; denormalising later is a deliberate trade of write complexity for read speed.",
            "Isolation levels decide what concurrent transactions can see of each other. The default in PostgreSQL, read committed, is right for most applications.",
            "Constraints such as `UNIQUE`, `NOT NULL` and foreign keys are documentation the database enforces for you.",
        ),
        ("If you paste the schema and the slow query, I can suggest a concrete index.",),
    ),
    _topic(
        "realtime",
        "realtime real-time websocket websockets ably pubsub pub/sub channel channels presence streaming stream sse events",
        "Realtime messaging",
        (
            "Realtime features like {subject} are mostly about what happens when the network misbehaves.",
            "With {subject}, the happy path is easy; reliability is where the design work is.",
        ),
        (
            "**Think in channels.** Each conversation, document or room gets its own channel, and permissions follow the channel.",
            "**Expect reconnections.** Mobile networks drop constantly; resume from the last message you saw instead of starting over.",
            "**Make messages idempotent.** Give every message an id so a retry can't show up twice.",
            "**Use presence for who's here.** It is cheaper and more accurate than polling a server.",
            "**Keep payloads small.** Send what changed, not the whole document.",
            "**Authenticate with short-lived tokens.** Scope each token to exactly the channels a user may use.",
        ),
        (
            "Ordering matters: within a single channel messages arrive in the order they were published, which is what lets a client rebuild a streamed reply from its parts.",
            "History and rewind let a client that was offline catch up on what it missed, then continue live without a gap.",
            "Backpressure is real: if a client can't keep up, batch updates rather than dropping them silently.",
        ),
        ("Test it with a flaky connection early; the bugs hide there.",),
    ),
    _topic(
        "git",
        "git github commit commits branch branches merge rebase pull push repository repo",
        "Git workflow",
        (
            "For {subject}, Git is flexible enough that the main job is picking a workflow and sticking to it.",
            "Here's a practical way to handle {subject} in Git.",
        ),
        (
            "**Commit small and often.** Each commit should do one thing and explain why in its message.",
            "**Branch per change.** Short-lived feature branches keep merges simple.",
            "**Rebase your own work, merge shared work.** Rewriting history that others have pulled causes pain.",
            "**Use `git status` constantly.** It tells you exactly what Git thinks is going on.",
            "**Recover with the reflog.** `git reflog` remembers where your branches pointed, even after a bad reset.",
        ),
        (
            "A commit is a snapshot of the whole tree plus a pointer to its parent, which is why branches are cheap: a branch is just a movable name for a commit.",
            "Interactive rebase (`git rebase -i`) lets you squash, reorder and reword commits before you share them.",
        ),
        ("If you tell me what state the repository is in now, I can give you the exact commands.",),
    ),
    _topic(
        "cooking",
        "cook cooking recipe recipes bake baking bread pasta dinner lunch breakfast soup cake food meal eat vegetarian",
        "Cooking",
        (
            "{Subject} is very doable at home; the secret is mostly timing and seasoning.",
            "Here's a friendly approach to {subject}.",
        ),
        (
            "**Read the whole recipe first.** Surprises halfway through are how dishes go wrong.",
            "**Prep before you heat.** Chop and measure everything so nothing burns while you hunt for an ingredient.",
            "**Season in layers.** A pinch of salt at each stage tastes better than a lot at the end.",
            "**Control the heat.** Most home cooking burns because the pan is too hot, not too cold.",
            "**Taste as you go.** Adjust acidity with lemon or vinegar and richness with butter or olive oil.",
            "**Let it rest.** Meat, bread and even some sauces improve with a few minutes off the heat.",
        ),
        (
            "Salt, fat, acid and heat are the four levers of flavour; when a dish tastes flat, one of them is usually missing.",
            "Good ingredients forgive a lot. Seasonal vegetables need very little to taste great.",
        ),
        ("Enjoy it, and don't worry if the first attempt isn't perfect.",),
    ),
    _topic(
        "travel",
        "travel trip visit vacation holiday itinerary flight flights hotel city country tourist paris london tokyo rome",
        "Travel plans",
        (
            "Planning {subject} is half the fun; a loose structure leaves room for surprises.",
            "Here's how I'd think about {subject}.",
        ),
        (
            "**Pick a base.** Staying in one well-connected neighbourhood saves hours of transit.",
            "**Plan one anchor per day.** A single must-see, then wander around it.",
            "**Book the bottlenecks early.** Popular museums, trains and restaurants sell out.",
            "**Eat where locals eat.** A few streets away from the big sights, prices drop and food improves.",
            "**Leave slack.** Jet lag and weather will change your plans; let them.",
        ),
        (
            "Shoulder seasons (spring and autumn) usually offer the best balance of weather, crowds and prices.",
            "Public transport passes often pay for themselves within a couple of days in big cities.",
        ),
        ("Have a wonderful trip!",),
    ),
    _topic(
        "health",
        "health fitness exercise workout run running sleep diet stress gym muscle walking habit habits",
        "Health and habits",
        (
            "When it comes to {subject}, consistency beats intensity almost every time.",
            "Here's a sensible, sustainable approach to {subject}.",
        ),
        (
            "**Start small.** A habit you can keep at 80% effort beats a plan you abandon in a week.",
            "**Sleep is the foundation.** Seven to nine hours makes everything else easier.",
            "**Move every day.** Walking counts, and it adds up.",
            "**Track one thing.** Pick a single measure so you can see progress without obsessing.",
            "**Recover deliberately.** Rest days are when the body adapts.",
        ),
        (
            "Progress tends to come in plateaus followed by jumps, so a flat week is normal rather than a sign of failure.",
            "For anything involving pain, medication or a medical condition, a doctor's advice should come first.",
        ),
        ("Be patient with yourself; small steps compound.",),
    ),
    _topic(
        "science",
        "space hole holes planet planets star stars galaxy universe physics chemistry biology moon sun mars gravity quantum atom energy climate",
        "Science",
        (
            "{Subject} is a great example of how a few simple principles explain a lot.",
            "Here's an accessible explanation of {subject}.",
        ),
        (
            "**Start with the scale.** Many surprises in science come from sizes and distances far outside everyday experience.",
            "**Follow the energy.** Asking where energy comes from and where it goes explains most processes.",
            "**Models are approximations.** Each one works within a range, and science advances at the edges of those ranges.",
            "**Evidence accumulates.** Strong conclusions rest on many independent observations agreeing.",
            "**Uncertainty is normal.** Good measurements always come with error bars.",
        ),
        (
            "Gravity shapes the universe at large scales, while electromagnetism dominates chemistry and everyday life, which is why the two feel so different.",
            "Much of what we know about distant objects comes from light: its colour, brightness and the tiny shifts in its spectrum.",
        ),
        ("It's a fascinating area, and there's always another layer to explore.",),
    ),
    _topic(
        "history",
        "history historical ancient empire empires war wars century medieval revolution civilization civilisation rome roman greek greece egypt egyptian dynasty",
        "History",
        (
            "The story of {subject} is a good reminder that history is shaped as much by geography and economics as by famous individuals.",
            "{Subject} is a fascinating period, and it's easiest to follow as a handful of turning points.",
        ),
        (
            "**Start with geography.** Rivers, coastlines and mountains decided where people could farm, trade and defend themselves.",
            "**Follow the trade routes.** Wealth, ideas and diseases all travelled along the same roads and sea lanes.",
            "**Watch the institutions.** Laws, armies and tax systems often outlasted the rulers who created them.",
            "**Mind the sources.** Much of what we know was written by the winners, or by people with something to prove.",
            "**Look for slow changes.** Climate, population and technology shifted over centuries, setting the stage for the dramatic events.",
        ),
        (
            "Historians increasingly combine written sources with archaeology, climate records and DNA evidence, which has revised many older stories.",
            "Turning points that look sudden in hindsight usually had long build-ups that contemporaries could feel but not yet name.",
        ),
        ("There's a lot more to explore; let me know which period or figure interests you most.",),
    ),
    _topic(
        "writing",
        "poem poetry haiku story essay email letter write writing blog article novel",
        "Writing",
        (
            "Here's a take on {subject}.",
            "Happy to help with {subject}.",
        ),
        (
            "**Know the reader.** Decide who it's for before choosing a tone.",
            "**Lead with the point.** The first sentence should tell the reader why to keep going.",
            "**Cut ruthlessly.** Most drafts improve when a third of the words are removed.",
            "**Prefer concrete words.** Specific details are more convincing than adjectives.",
            "**Read it aloud.** Your ear catches clumsy rhythm that your eye skips.",
        ),
        (
            "Structure carries a piece: a clear beginning, a middle that develops one idea and an ending that lands.",
            "Revision is where writing gets good; the first draft only has to exist.",
        ),
        ("Tell me the tone you want and I can adjust it.",),
    ),
)

GENERIC_POINTS: tuple[str, ...] = (
    "**Clarify the goal.** Decide what a good outcome for {subject} looks like before choosing an approach.",
    "**Start simple.** Get the most basic version working first, then add detail once you can see it working.",
    "**Check your assumptions.** Most surprises come from something you believed but never verified.",
    "**Learn from examples.** Looking at how others have handled {subject} saves a lot of trial and error.",
    "**Iterate in small steps.** Small changes make it obvious which one helped and which one hurt.",
    "**Write down what you learn.** Notes turn one-off fixes into knowledge you can reuse.",
)
GENERIC_DETAILS: tuple[str, ...] = (
    "It helps to separate the parts of {subject} that are fixed from the parts you can change; effort spent on the second group pays off far more.",
    "A useful habit is to ask what would have to be true for your plan to fail, then check those conditions first.",
    "Trade-offs are unavoidable: faster usually means less thorough, and simpler usually means less flexible. Being explicit about which one you are choosing makes the decision easier to revisit.",
    "Feedback loops matter more than raw effort. The quicker you can see the result of a change, the faster you will improve.",
    "When you get stuck, explaining the problem out loud, or in writing, often reveals the missing step.",
    "Finally, context changes the right answer. What works well at a small scale may need rethinking as {subject} grows.",
)
GENERIC_INTROS: tuple[str, ...] = (
    "Here's a clear way to think about {subject}.",
    "Good question. {Subject} is easier to reason about once you break it into a few parts.",
    "Let's look at {subject} step by step.",
)
GENERIC_CLOSINGS: tuple[str, ...] = (
    "If you share a bit more about your situation, I can make this more specific.",
    "Happy to go deeper on any of these points.",
    "Let me know which part you'd like to explore next.",
)


def topic_for(words: Sequence[str]) -> Topic | None:
    best, best_hits = None, 0
    for topic in TOPICS:
        hits = sum(1 for word in words if word in topic.keys)
        if hits > best_hits:
            best, best_hits = topic, hits
    return best


ELABORATIONS: tuple[str, ...] = (
    "People new to {subject} often underestimate how much the basics matter.",
    "A checklist, even a short one, prevents the most common mistakes.",
    "Comparing two or three options side by side usually makes the better one obvious.",
    "It's worth revisiting the decision after a week, once you have real experience with it.",
    "Small, reversible experiments are the cheapest way to learn what works.",
    "Asking someone who has done it before can save days of searching.",
    "Good defaults matter: most of the time, the simple conventional choice is the right one.",
    "Keep an eye on the long-term cost, not just the effort needed to get started.",
    "Documenting the reasoning behind a choice helps the next person, who is often your future self.",
    "When two goals conflict, decide explicitly which one wins instead of compromising on both.",
)


# --- answers by kind of question -------------------------------------------------------------

EXPLAIN_POINTS: tuple[str, ...] = (
    "**What it is.** {Subject} is easiest to understand through its purpose: the problem it solves and who it solves it for.",
    "**How it works.** Underneath, a few simple parts interact; once each part is clear, the whole stops feeling mysterious.",
    "**Why it matters.** It shapes everyday decisions more than it first appears, which is why it keeps coming up.",
    "**A common misconception.** People often treat it as all-or-nothing, but in practice it is a matter of degree and context.",
    "**Where to go next.** A concrete example, worked through end to end, is the fastest way to make the idea stick.",
)
HOWTO_STEPS: tuple[str, ...] = (
    "**Decide what done looks like.** Before you {task}, write down the result you want so you can tell when you've got there.",
    "**Gather what you need.** Collect the tools, information and time up front; stopping halfway to hunt for something breaks momentum.",
    "**Start with the smallest version.** Do the simplest thing that works end to end, then improve it.",
    "**Check the result.** Compare what you got with what you wanted, and note what surprised you.",
    "**Refine and repeat.** Each pass should fix one thing; small iterations are easier to reason about than big rewrites.",
)
WHY_POINTS: tuple[str, ...] = (
    "**The underlying mechanism.** Most 'why' questions come down to one process doing most of the work; find that and the rest follows.",
    "**The conditions around it.** The same mechanism gives different results in different settings, which explains the exceptions.",
    "**History and habit.** Some things are the way they are because an early choice stuck and became the convention.",
)
COMPARE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("Best at", "the job it was designed for first", "the cases the first one handles awkwardly"),
    ("Trade-off", "more structure, less flexibility", "more flexibility, more decisions for you"),
    ("Learning curve", "gentle if you follow the conventions", "steeper, but rewards experience"),
    ("Pick it when", "you want the well-trodden path", "your needs are unusual"),
)
FEELING_REPLY = (
    "I'm sorry you're feeling {feeling}; that's a lot to carry, and it makes sense that it's weighing on you.\n\n"
    "A few things that often help:\n\n"
    "- **Name it.** Saying or writing down exactly what's worrying you makes it smaller and more concrete.\n"
    "- **Take one small step.** Pick the next action that takes ten minutes or less, and do just that.\n"
    "- **Look after the basics.** Sleep, food, water and a short walk make a bigger difference than they seem to.\n"
    "- **Talk to someone.** A friend, family member or counsellor can help you carry it.\n\n"
    "If it ever feels like too much, please reach out to someone you trust or a local support line. "
    "Would you like to talk through what's going on?"
)
HAIKUS: tuple[str, ...] = (
    "{Word} in the wind,\nquiet as the morning light,\nthe world holds its breath.",
    "Soft {word} at dusk,\na single leaf lets go now,\nthe river keeps on.",
    "Beneath the {word}\nold stones remember the rain,\nslow clouds wander by.",
)
POEM = (
    "**{Title}**\n\n"
    "I went looking for {word} at the edge of the day,\n"
    "where the light leans long and the shadows stay;\n"
    "it wasn't in the noise, or the hurry, or the crowd,\n"
    "but in the small, still places that don't speak aloud.\n\n"
    "So here's to {word}, to the slow and the true,\n"
    "to the ordinary moments that carry us through;\n"
    "may you find it tomorrow, in the first cup of tea,\n"
    "in the turn of a page, in the sound of the sea."
)
JOKES: tuple[str, ...] = (
    "Why do programmers prefer dark mode?\n\nBecause light attracts bugs.",
    'I told my computer I needed a break, and it said: "No problem, I\'ll go to sleep."',
    "Why did the scarecrow win an award?\n\nBecause he was outstanding in his field.",
    "What do you call a fish with no eyes?\n\nA fsh.",
    "Why don't skeletons fight each other?\n\nThey don't have the guts.",
)
STORY = (
    "The morning the {word} arrived, nobody in the village knew what to make of it.\n\n"
    "Mara, who ran the bakery on the corner, was the first to step closer. She had expected "
    "something grand, but it was quieter than that, patient, almost as if it were waiting for "
    "someone to ask the right question.\n\n"
    "By noon half the village had gathered. By evening they had stopped arguing about what it "
    "was and started talking about what it might mean. And when the {word} was gone the next "
    "day, as suddenly as it had come, they found they were still talking to each other, which, "
    "Mara decided, had probably been the point all along."
)

# Well-known questions get a direct answer first; the pattern is matched against the prompt.
FACTS: tuple[tuple[str, str], ...] = (
    (
        r"capital of france",
        "The capital of France is **Paris**. It has been the country's political and cultural centre for most of the last thousand years, and it's home to about two million people in the city proper.",
    ),
    (
        r"capital of (japan|tokyo)",
        "The capital of Japan is **Tokyo**, the centre of the largest metropolitan area in the world.",
    ),
    (
        r"capital of (germany)",
        "The capital of Germany is **Berlin**; it became the capital of reunified Germany in 1990.",
    ),
    (
        r"capital of (italy)",
        "The capital of Italy is **Rome**, a city with nearly three thousand years of history.",
    ),
    (
        r"sky (is )?blue",
        "The sky looks blue because of **Rayleigh scattering**: molecules in the air scatter short wavelengths of sunlight (blue and violet) much more strongly than long ones (red). Our eyes are more sensitive to blue than violet, so the scattered light we see from every direction reads as blue. At sunrise and sunset the light travels through much more air, most of the blue is scattered away, and the reds and oranges are what's left.",
    ),
    (
        r"\btcp\b.*\budp\b|\budp\b.*\btcp\b",
        "**TCP** gives you a reliable, ordered stream: it sets up a connection, retransmits lost packets and slows down when the network is congested. **UDP** just sends individual datagrams with no delivery or ordering guarantees, which makes it lighter and lower-latency.\n\n| | TCP | UDP |\n|---|---|---|\n| Delivery | Guaranteed, in order | Best effort |\n| Connection | Handshake first | None |\n| Overhead | Higher | Lower |\n| Typical uses | Web, email, file transfer | Video calls, games, DNS |",
    ),
    (
        r"speed of light",
        "The speed of light in a vacuum is exactly **299,792,458 metres per second**, about 300,000 km/s. Light from the Sun takes a little over eight minutes to reach Earth.",
    ),
    (
        r"largest planet",
        "**Jupiter** is the largest planet in the Solar System: more than eleven times Earth's diameter and over twice as massive as all the other planets combined.",
    ),
    (
        r"who wrote hamlet|hamlet.*written",
        "*Hamlet* was written by **William Shakespeare**, most likely between 1599 and 1601.",
    ),
    (
        r"boiling point of water|water boil",
        "At sea level, pure water boils at **100 °C (212 °F)**. At higher altitudes the air pressure is lower, so it boils at a lower temperature, around 90 °C at 3,000 metres.",
    ),
    (
        r"photosynthesis",
        "**Photosynthesis** is how plants, algae and some bacteria turn light into chemical energy: using sunlight, they combine carbon dioxide and water into glucose and release oxygen as a by-product. It happens mainly in the chloroplasts of leaf cells, where chlorophyll absorbs the light.",
    ),
    (
        r"meaning of life",
        "Douglas Adams fans will tell you it's **42**. Everyone else tends to land on some mix of connection, curiosity and doing work that matters to you.",
    ),
    (
        r"center a div|centre a div",
        "The modern way is flexbox (or grid) on the **parent**:\n\n```css\n.parent {\n  display: flex;\n  justify-content: center; /* horizontal */\n  align-items: center;     /* vertical */\n  min-height: 100vh;\n}\n```\n\nWith grid it's even shorter: `display: grid; place-items: center;`.",
    ),
    (
        r"what is ably|what's ably",
        "**Ably** is a realtime messaging platform: clients publish and subscribe to named channels over WebSockets, with presence, message history and delivery guarantees handled by the service, so you don't have to run that infrastructure yourself.",
    ),
    (
        r"what is an api\b|what's an api\b",
        "An **API** (application programming interface) is a contract that lets one piece of software ask another to do something: it defines the requests you can make, the data you send, and what you get back.",
    ),
)


# --- small talk -------------------------------------------------------------------------------

ABOUT_ME = (
    "I'm a local stand-in for Claude: the app talks to me when it runs offline, for development "
    "and tests. I put my answers together from templates, so they read like a conversation but "
    "aren't real answers. Set `ANTHROPIC_API_KEY` to talk to the real Claude."
)
CAPABILITIES = (
    "Here's what I can do as an offline stand-in:\n\n"
    "- **Answer in the shape of a real reply**: paragraphs, lists, and code blocks when you ask "
    "for code, short or long depending on how you ask.\n"
    "- **Remember the conversation**: ask me what your first message was, or what you just said.\n"
    "- **Repeat exactly what you want**: `Say exactly: ...` answers with just that text.\n"
    "- **Misbehave on purpose**: markers like `[[fault:529]]` or `[[fault:drop]]` simulate "
    "errors so you can see how the app copes.\n\n"
    "What would you like to try?"
)
PHRASES: dict[str, dict[str, str]] = {
    "hello": {"french": "bonjour", "spanish": "hola", "german": "hallo", "italian": "ciao"},
    "thank you": {"french": "merci", "spanish": "gracias", "german": "danke", "italian": "grazie"},
    "good morning": {
        "french": "bonjour",
        "spanish": "buenos días",
        "german": "guten Morgen",
        "italian": "buongiorno",
    },
    "goodbye": {
        "french": "au revoir",
        "spanish": "adiós",
        "german": "auf Wiedersehen",
        "italian": "arrivederci",
    },
}
