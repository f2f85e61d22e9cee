"""Text a sender chose, made safe for an operator's terminal.

A peer or a contact point chooses the case content, and a quarantined message can be anything.
Printed as it is, it could carry terminal escape sequences (clear the screen, rewrite the
previous lines, set the window title, paste into the shell) or bidirectional overrides that
show text in another order than it is stored (``U+202E``). :func:`visible` writes every such
character as an escape (``\\x1b``, ``\\u202e``) so the operator sees that it is there and what it
is, and nothing acts on the terminal. Newlines and tabs stay as they are.
"""

from __future__ import annotations

import unicodedata

__all__ = ["visible"]

# Unicode categories that do something to a terminal or to the order of text rather than show
# a glyph: controls (C0, DEL, C1), format characters (bidi embeddings, overrides and isolates,
# zero-width characters, the byte order mark), line and paragraph separators, surrogates,
# private use and unassigned code points.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_KEEP = frozenset("\n\t")


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every control, format (bidi) and invisible character escaped."""
    if text.isascii() and text.isprintable():
        return text  # the usual case, checked at C speed
    return "".join(
        _escape(char) if char not in _KEEP and unicodedata.category(char) in _HIDDEN else char
        for char in text
    )
