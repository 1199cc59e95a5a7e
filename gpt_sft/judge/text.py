"""A judge's reply is untrusted text: how much of it is kept, and how it is shown."""

from __future__ import annotations

REPLY_EXCERPT = 120  # characters of a judge reply shown on the console
STORED_REPLY_CHARS = 4000  # characters of a judge reply kept in the cache and the report


def stored_reply(reply: str) -> str:
    """What the cache and the report keep of a judge reply: all of it, or its first
    :data:`STORED_REPLY_CHARS` characters and how long it was (a judge reply is untrusted text)."""
    if len(reply) <= STORED_REPLY_CHARS:
        return reply
    return reply[:STORED_REPLY_CHARS] + f"... [cut: {len(reply)} characters in all]"


def safe_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with a marker of how much was cut (no escaping)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"


def safe_excerpt(text: str | None, limit: int = REPLY_EXCERPT) -> str:
    """A console-safe, escaped excerpt of untrusted text: ``repr`` of its first ``limit`` characters.

    ``repr`` escapes newlines, terminal escape sequences and other non-printable characters, so a
    judge reply cannot move the cursor, recolour the terminal or fake output lines.
    """
    if text is None:
        return "None"
    shown = repr(text[:limit])
    if len(text) > limit:
        shown += f"…(+{len(text) - limit} chars)"
    return shown
