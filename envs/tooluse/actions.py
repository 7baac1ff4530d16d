"""The tool envs' own reading of an agent action: a tool call, a message to the user, or junk.

An action is either a JSON tool call ``{"name": ..., "arguments": {...}}`` (bare, in a
```` ```json ```` fence, or inside ``<tool_call>...</tool_call>``; ``arguments`` may also be a JSON
string as in OpenAI's API, and ``{"function": {...}}`` wrappers are unwrapped) or plain text meant
for the user. :func:`parse_tool_action` is a pure function that never raises: a malformed tool
call becomes an :class:`InvalidAction` carrying the reason, which the env shows as ``Error: ...``.

The policy allows one tool call per turn, so several calls in one action are invalid too, and so is
text with nothing readable in it (only whitespace, control or format characters, unpaired
surrogates, or U+FFFD, which a rollout puts in their place): it is no message to a customer.
(``agents/`` has its own parser for model outputs; this is the env's interpretation.)
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InvalidAction", "ToolAction", "UserMessage", "format_tool_call", "parse_tool_action"]

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
# Unicode categories with nothing to read: controls, format characters, surrogates, separators
_UNREADABLE = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})


@dataclass(frozen=True)
class ToolAction:
    """A call of tool ``name`` with keyword ``arguments`` (not yet validated)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UserMessage:
    """Plain text addressed to the user (or, in solo mode, the final reply to the ticket)."""

    text: str


@dataclass(frozen=True)
class InvalidAction:
    """An action that looks like a tool call but cannot be read; ``error`` says why."""

    error: str


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The canonical action text of a tool call (Hermes/Qwen ``<tool_call>`` format)."""
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def parse_tool_action(text: str) -> ToolAction | UserMessage | InvalidAction:
    """Read one action; never raises.

    >>> parse_tool_action('{"name": "think", "arguments": {"thought": "hi"}}')
    ToolAction(name='think', arguments={'thought': 'hi'})
    >>> parse_tool_action("Could you give me your email?")
    UserMessage(text='Could you give me your email?')
    """
    if not isinstance(text, str):
        return InvalidAction(f"an action must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        return InvalidAction("empty action; send a tool call or a message to the user")
    if not any(c != "\ufffd" and unicodedata.category(c) not in _UNREADABLE for c in stripped):
        return InvalidAction(
            "the action has no readable text (only control characters or unpaired surrogates); "
            "send a tool call or a message to the user"
        )
    if "<tool_call>" in stripped:
        bodies = _TOOL_CALL_RE.findall(stripped)
        if len(bodies) != 1:
            return InvalidAction(f"one tool call per turn is allowed, found {len(bodies)}")
        return _parse_json_call(bodies[0].strip())
    fenced = _FENCE_RE.match(stripped)
    if fenced is not None:
        stripped = fenced.group(1)
    if stripped[:1] in "{[":
        return _parse_json_call(stripped)
    return UserMessage(stripped)


def _parse_json_call(body: str) -> ToolAction | InvalidAction:
    """Decode the JSON of one tool call and check its shape."""
    fenced = _FENCE_RE.match(body)
    if fenced is not None:
        body = fenced.group(1)
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return InvalidAction(f"malformed JSON in tool call ({_short(str(exc))})")
    if isinstance(obj, list):
        if len(obj) != 1:
            return InvalidAction(f"one tool call per turn is allowed, found {len(obj)}")
        obj = obj[0]
    if not isinstance(obj, dict):
        return InvalidAction('a tool call must be a JSON object {"name": ..., "arguments": {...}}')
    if isinstance(obj.get("function"), dict):  # OpenAI {"type": "function", "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return InvalidAction('a tool call needs a string "name"')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError) as exc:
            return InvalidAction(
                f"malformed JSON in the arguments of {_short(name)!r} ({_short(str(exc))})"
            )
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return InvalidAction(f'the "arguments" of {_short(name)!r} must be a JSON object')
    return ToolAction(name=name, arguments=args)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
