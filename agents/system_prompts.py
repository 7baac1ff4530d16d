"""One system prompt per env family: the task framing, the action format and the tools.

The env never formats prompts; it gives plain ``instructions`` (domain rules) and, where it has
them, OpenAI-style tool schemas (``info["tools"]``). This module turns those into the text of the
system message. The action formats named here are exactly what :mod:`agents.parsing` accepts.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["FAMILY_PROMPTS", "GENERIC_PROMPT", "system_text"]

FAMILY_PROMPTS: dict[str, str] = {
    "household": (
        "You are an agent acting in a text-based household world. Each turn you read what you "
        "observe and reply with exactly one command, such as `go to cabinet 1` or `take mug 1 "
        "from countertop 2`. You may wrap it in <action>...</action> tags. Do not explain."
    ),
    "tool": (
        "You are a customer service agent. Each turn, either call exactly one tool by replying "
        'with a JSON object {"name": "<tool>", "arguments": {...}} inside <tool_call>...'
        "</tool_call> tags, or reply with plain text addressed to the user."
    ),
    "clinical": (
        "You are a clinician working up a patient. Each turn, call exactly one tool by replying "
        'with a JSON object {"name": "<tool>", "arguments": {...}} inside <tool_call>...'
        "</tool_call> tags, or reply with plain text. Finish by calling submit_answer."
    ),
}

GENERIC_PROMPT = "You are an agent in a text environment. Reply with exactly one action per turn."


def _tool_lines(tools: list[dict[str, Any]]) -> str:
    """One compact JSON line per tool schema (``{"type": "function", "function": {...}}`` or bare)."""
    lines = []
    for tool in tools:
        spec = tool.get("function", tool)
        lines.append(json.dumps(spec, separators=(",", ":"), sort_keys=True))
    return "\n".join(lines)


def system_text(family: str, instructions: str = "", tools: list[dict[str, Any]] | None = None) -> str:
    """The system message for an env ``family``, its ``instructions`` and its ``tools``.

    Unknown families (third-party envs) get :data:`GENERIC_PROMPT`; their replies are parsed as
    free text.
    """
    parts = [FAMILY_PROMPTS.get(family, GENERIC_PROMPT)]
    if instructions.strip():
        parts.append(instructions.strip())
    if tools:
        parts.append("Available tools (JSON schemas):\n" + _tool_lines(tools))
    return "\n\n".join(parts)
