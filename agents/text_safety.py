"""Text entering a rollout is made storable where it enters, so a run never fails late on it.

A Python ``str`` may hold code points no database can store: an unpaired surrogate
(``"\\ud800"``; UTF-8 cannot encode it, so SQLite's driver refuses the row) or NUL (PostgreSQL
refuses it in text and JSON). Such text reaches a rollout from the model (a backend that decodes
with ``surrogateescape``), from an env (a third-party env echoing undecodable bytes) or from an
exception message quoting either. Left alone it is refused only when the store's background
writer flushes, as a ``WriterError`` long after the turn was played; and a tokenizer refuses it
when the observation is rendered into the next prompt.

:func:`storable_text` replaces each such code point with U+FFFD (the Unicode replacement
character, what a tokenizer's decode already gives for invalid bytes), and :func:`record_text`
does so and records it as data: ``record["unstorable_chars"][field]`` counts the replacements.
The cleaned text is the one the env is sent and the renderer renders, so the record, the prompt
and a replay all agree.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REPLACEMENT", "storable_text", "storable", "record_text"]

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> tuple[str, int]:
    """``(text with every unpaired surrogate and NUL replaced by U+FFFD, replacements made)``."""
    if text.isascii() and "\x00" not in text:  # the common case, at C speed
        return text, 0
    return _UNSTORABLE.subn(REPLACEMENT, text)


def storable(value: Any) -> Any:
    """``value`` with every string in it (dict keys and values, list and tuple items) storable."""
    if isinstance(value, str):
        return storable_text(value)[0]
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(storable(v) for v in value)
    return value


def record_text(text: Any, record: dict[str, Any], field: str) -> Any:
    """``text`` made storable; a replacement is counted in ``record["unstorable_chars"][field]``.
    A value that is not a ``str`` is returned unchanged (the env contract is checked elsewhere)."""
    if not isinstance(text, str):
        return text
    clean, n = storable_text(text)
    if n:
        counts = record.setdefault("unstorable_chars", {})
        counts[field] = counts.get(field, 0) + n
    return clean
