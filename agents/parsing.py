"""Action parsing per env family: pure functions that never raise.

A reply the model wrote is turned into the action string the env receives, plus a validity
flag. A reply that does not parse is a *model failure*: it is returned with ``valid=False`` and an
``error`` text, and the rollout records it; nothing here raises.

* ``household`` (and unknown families): the text inside ``<action>...</action>`` if present, else
  the first non-empty line; leading prompt marks (``>``, ``Action:``, bullets, quotes) and a
  trailing period are stripped.
* ``tool`` / ``clinical``: a JSON tool call ``{"name": str, "arguments": {...}}`` (bare, inside
  ``<tool_call>...</tool_call>`` or inside a code fence) becomes its canonical JSON text
  (``{"name": ..., "arguments": ...}``, sorted keys); ``arguments`` given as a JSON string is
  decoded. A reply with no tool-call attempt is plain text to the user (valid when non-empty);
  a broken tool call is invalid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ParsedAction", "parse_action", "parse_free_text", "parse_tool_call", "MAX_ACTION_CHARS"]

MAX_ACTION_CHARS = 4000
_ACTION_TAG = re.compile(r"<action>(.*?)(?:</action>|$)", re.IGNORECASE | re.DOTALL)
_TOOL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.IGNORECASE | re.DOTALL)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_LEAD = re.compile(r"^(?:\s*(?:>+|[-*•]|\d+[.)]|action\s*:|command\s*:)\s*)+", re.IGNORECASE)
_TOOL_FAMILIES = frozenset({"tool", "clinical"})


@dataclass(frozen=True)
class ParsedAction:
    """The action sent to the env (``""`` when nothing usable), validity and the reason if not."""

    action: str
    valid: bool
    error: str | None = None


def _clean_line(line: str) -> str:
    line = _LEAD.sub("", line.strip()).strip()
    line = line.strip("`'\"").strip()
    if line.endswith(".") and not line.endswith(".."):
        line = line[:-1].rstrip()
    return line


def parse_free_text(text: str) -> ParsedAction:
    """Household-style parse: ``<action>`` tags, else the first non-empty line, cleaned."""
    tagged = _ACTION_TAG.search(text)
    body = tagged.group(1) if tagged else text
    for line in body.splitlines():
        action = _clean_line(line)
        if action:
            if len(action) > MAX_ACTION_CHARS:
                return ParsedAction(action[:MAX_ACTION_CHARS], False, "action too long")
            return ParsedAction(action, True)
    return ParsedAction("", False, "empty reply" if not text.strip() else "no action found")


def _json_objects(text: str) -> list[Any]:
    """Every JSON value that starts at a ``{`` in ``text`` (left to right, non-overlapping)."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    i = text.find("{")
    while i != -1:
        try:
            value, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        found.append(value)
        i = text.find("{", end)
    return found


def _as_call(value: Any) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(value, dict):
        return None
    if "function" in value and isinstance(value["function"], dict):  # OpenAI style
        value = value["function"]
    name = value.get("name")
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(name, str) or not name.strip() or not isinstance(args, dict):
        return None
    return name.strip(), args


def parse_tool_call(text: str) -> ParsedAction:
    """Tool/clinical parse: a JSON tool call (canonical JSON text) or plain text to the user."""
    tagged = _TOOL_TAG.search(text)
    fenced = _FENCE.search(text)
    region = tagged.group(1) if tagged else fenced.group(1) if fenced else text
    for value in _json_objects(region):
        call = _as_call(value)
        if call is not None:
            try:
                action = json.dumps({"name": call[0], "arguments": call[1]}, sort_keys=True)
            except (TypeError, ValueError):  # pragma: no cover - json.loads output always dumps
                continue
            return ParsedAction(action, True)
    attempted = tagged is not None or region.lstrip().startswith("{") or '"name"' in region
    if attempted:
        return ParsedAction("", False, "malformed tool call (expected {\"name\": ..., \"arguments\": {...}})")
    message = text.strip()
    if not message:
        return ParsedAction("", False, "empty reply")
    if len(message) > MAX_ACTION_CHARS:
        return ParsedAction(message[:MAX_ACTION_CHARS], False, "message too long")
    return ParsedAction(message, True)


def parse_action(family: str, text: str) -> ParsedAction:
    """Parse a reply for an env ``family``; never raises (non-strings are invalid)."""
    if not isinstance(text, str):
        return ParsedAction("", False, f"reply is {type(text).__name__}, not str")
    try:
        if family in _TOOL_FAMILIES:
            return parse_tool_call(text)
        return parse_free_text(text)
    except RecursionError:  # deeply nested JSON
        return ParsedAction("", False, "reply nests too deeply to parse")
