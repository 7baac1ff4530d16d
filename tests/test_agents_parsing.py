"""Action parsers: exact results on known replies, and never an exception on arbitrary text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.parsing import ParsedAction, parse_action


@pytest.mark.parametrize(
    "text, action",
    [
        ("go to cabinet 1", "go to cabinet 1"),
        ("> take mug 1 from countertop 2.\nI think this is right.", "take mug 1 from countertop 2"),
        ("I will open it. <action>open fridge 1</action>", "open fridge 1"),
        ("\n\n  Action: heat egg 1 with microwave 1  \n", "heat egg 1 with microwave 1"),
        ("<action>look", "look"),
        ("- `inventory`", "inventory"),
    ],
)
def test_household_free_text(text: str, action: str) -> None:
    assert parse_action("household", text) == ParsedAction(action, True, None)


@pytest.mark.parametrize("text", ["", "   \n\t", "<action></action>", "> \n-\n"])
def test_household_empty_is_invalid(text: str) -> None:
    parsed = parse_action("household", text)
    assert not parsed.valid and parsed.action == "" and parsed.error


@pytest.mark.parametrize("family", ["tool", "clinical"])
@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_order", "arguments": {"order_id": "A1"}}',
        'Sure.\n<tool_call>{"name": "get_order", "arguments": {"order_id": "A1"}}</tool_call>',
        '```json\n{"name": "get_order", "arguments": "{\\"order_id\\": \\"A1\\"}"}\n```',
        '{"type": "function", "function": {"name": "get_order", "arguments": {"order_id": "A1"}}}',
    ],
)
def test_tool_calls_are_canonical_json(family: str, text: str) -> None:
    parsed = parse_action(family, text)
    assert parsed.valid, parsed
    assert json.loads(parsed.action) == {"name": "get_order", "arguments": {"order_id": "A1"}}


def test_tool_plain_text_and_broken_calls() -> None:
    assert parse_action("tool", "Could you give me your user id?") == ParsedAction(
        "Could you give me your user id?", True, None
    )
    for broken in ['<tool_call>{"name": "x", "arguments": [1]}</tool_call>', '{"name": "x", "arg', "<tool_call>"]:
        parsed = parse_action("tool", broken)
        assert not parsed.valid and parsed.action == "" and "tool call" in parsed.error
    assert not parse_action("clinical", "").valid


def test_non_string_and_deep_nesting_do_not_raise() -> None:
    assert not parse_action("household", None).valid  # type: ignore[arg-type]
    deep = "{" * 100_000
    assert isinstance(parse_action("tool", deep), ParsedAction)


@settings(max_examples=200, deadline=None)
@given(
    family=st.sampled_from(["household", "tool", "clinical", "unknown-family"]),
    text=st.one_of(
        st.text(),
        st.text(alphabet=st.sampled_from(list('{}[]":,<>/ \n\\actiontool_callnmeargus0123'))),
        st.builds(lambda a, b: f"<tool_call>{a}</tool_call>{b}", st.text(), st.text()),
    ),
)
def test_parsers_never_raise(family: str, text: str) -> None:
    parsed = parse_action(family, text)
    assert isinstance(parsed.action, str) and isinstance(parsed.valid, bool)
    assert parsed.valid == (parsed.error is None)
    if parsed.valid:
        assert parsed.action.strip() == parsed.action and parsed.action
