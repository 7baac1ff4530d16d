"""Tool-call actions of the clinical env: parsing and OpenAI-style schemas.

An action is one JSON tool call ``{"name": ..., "arguments": {...}}``, optionally wrapped in
``<tool_call>...</tool_call>`` (the Hermes/Qwen format) and optionally surrounded by free text.
``arguments`` may also be a JSON-encoded string (OpenAI's wire format). Schemas are generated from
the env's typed tool methods with ``transformers.utils.get_json_schema`` and arguments are checked
against them by :class:`ArgumentValidator`; every problem becomes a :class:`ToolCallError` whose message the
env returns as ``Error: ...`` (bad input is data, never an exception out of ``step``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from envs.base import EnvError

__all__ = ["ToolCallError", "parse_tool_call", "build_schemas", "ArgumentValidator"]

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_DECODER = json.JSONDecoder()
FORMAT_HELP = 'expected one tool call as JSON, e.g. {"name": "measure_vitals", "arguments": {}}'


class ToolCallError(EnvError):
    """The action is not a valid tool call; ``str(err)`` is the message shown after ``Error: ``."""


def _first_json_object(text: str) -> Any:
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = _DECODER.raw_decode(text, start)
            return obj
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
    raise ToolCallError(f"no JSON tool call found; {FORMAT_HELP}")


def parse_tool_call(action: str) -> tuple[str, dict[str, Any]]:
    """``'<tool_call>{"name": "examine", "arguments": {"system": "ent"}}</tool_call>'`` ->
    ``("examine", {"system": "ent"})``; raises :class:`ToolCallError` on anything else."""
    blocks = _TOOL_CALL_BLOCK.findall(action)
    if len(blocks) > 1:
        raise ToolCallError("one tool call per turn; this action holds several <tool_call> blocks")
    obj = _first_json_object(blocks[0] if blocks else action)
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ToolCallError(f"the tool call needs a string 'name'; {FORMAT_HELP}")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolCallError(f"'arguments' is a string but not valid JSON ({exc.msg})") from None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ToolCallError("'arguments' must be a JSON object")
    return obj["name"], args


def build_schemas(functions: Sequence[Callable[..., Any]]) -> list[dict[str, Any]]:
    """OpenAI-style schemas of typed, documented functions (Google-style ``Args:`` docstrings)."""
    from transformers.utils import get_json_schema  # heavy import, done once

    schemas = []
    for fn in functions:
        schema = get_json_schema(fn)
        schema["function"].pop("return", None)
        schemas.append(schema)
    return schemas


class ArgumentValidator:
    """Checks tool arguments against the schemas: required and unknown names, types and enums.

    The schemas only use ``string``, ``object``, ``integer``, ``number`` and ``boolean`` with
    optional ``enum``, so this small checker covers them exactly; it is ~50x faster than a full
    JSON-Schema validator, which matters at thousands of env steps per second.
    """

    _TYPES: dict[str, tuple[type, ...]] = {
        "string": (str,),
        "object": (dict,),
        "integer": (int,),
        "number": (int, float),
        "boolean": (bool,),
        "array": (list,),
    }

    def __init__(self, schemas: Sequence[dict[str, Any]]):
        self._params: dict[str, dict[str, Any]] = {
            s["function"]["name"]: s["function"]["parameters"] for s in schemas
        }
        for name, params in self._params.items():
            for arg, spec in params.get("properties", {}).items():
                if spec.get("type") not in self._TYPES:
                    raise TypeError(f"tool {name}: unsupported schema type for {arg!r}: {spec}")

    @property
    def names(self) -> list[str]:
        return list(self._params)

    def check(self, name: str, args: dict[str, Any]) -> None:
        params = self._params.get(name)
        if params is None:
            raise ToolCallError(
                f"unknown tool {name!r}; available tools: {', '.join(self._params)}"
            )
        props = params.get("properties", {})
        unknown = [a for a in args if a not in props]
        if unknown:
            raise ToolCallError(
                f"invalid arguments for {name}: unknown argument(s) {unknown}; expected {list(props) or 'none'}"
            )
        missing = [a for a in params.get("required", ()) if a not in args]
        if missing:
            raise ToolCallError(
                f"invalid arguments for {name}: missing required argument(s) {missing}"
            )
        for arg, value in args.items():
            spec = props[arg]
            ok = isinstance(value, self._TYPES[spec["type"]]) and not (
                isinstance(value, bool) and spec["type"] in ("integer", "number")
            )
            if not ok:
                raise ToolCallError(
                    f"invalid arguments for {name}: {arg!r} must be a {spec['type']}, got {json.dumps(value)[:60]}"
                )
            if "enum" in spec and value not in spec["enum"]:
                raise ToolCallError(
                    f"invalid arguments for {name}: {arg!r} must be one of {spec['enum']}, got {value!r}"
                )
