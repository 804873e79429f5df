"""Text that every database we run on can store.

Postgres refuses NUL (U+0000) in text ("A string literal cannot contain NUL characters") and
neither Postgres nor SQLite can encode a lone UTF-16 surrogate as UTF-8. Both reach us in JSON
over Ably (`"\\u0000"`, `"\\ud800"`): in a device's prompt or in the model's output. Neither is
something a person can see or mean, so text on its way into the database is *cleaned*, not
refused: NULs are dropped and a lone surrogate becomes U+FFFD (the replacement character).
Refusing would turn an invisible character into a lost prompt or reply.

Forms are different: Django's form fields already refuse NUL with "Null characters are not
allowed.", shown next to the field (rename, sign-up, log-in, admin), and form data is decoded
from UTF-8 bytes, so it never holds a surrogate. `storable()` is the net under the actions,
whatever their caller.
"""

from __future__ import annotations

NUL = "\x00"


def storable(text: str) -> str:
    """`text` without NUL characters, with lone surrogates replaced by U+FFFD.

    A surrogate *pair* (two code points that spell one character, as some JSON encoders emit)
    is joined back into that character rather than replaced.
    """
    if NUL in text:
        text = text.replace(NUL, "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Through UTF-16 with surrogatepass: pairs decode to their character, lone halves to
        # U+FFFD.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text
