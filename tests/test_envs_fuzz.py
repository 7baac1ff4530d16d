"""Model-controlled text never raises: every registered env's ``step`` fuzzed with numeric extremes.

A property test per env id: actions built from huge and tiny magnitudes, long digit strings,
non-finite floats and nested powers, written the ways a model writes them (a tool call to each of
the env's tools with the number as every argument, ``\\boxed{...}``, ``Answer: ...``, the env's
own admissible actions with their numbers replaced). Each step must return an observation inside
the observation space with ``action_valid`` True or False, never an exception. Plus the retail
rule that text with nothing readable in it is an invalid action, not a message to the customer.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs

ALL_IDS = envs.list_envs()
DIGITS = st.text("0123456789", min_size=1, max_size=700)
EXTREMES = st.sampled_from(
    [
        "1e308", "1.7976931348623157e308", "1e309", "5e-324", "1e-320", "2.2250738585072014e-308",
        "9" * 400, "1" * 4400, "0." + "0" * 400 + "1", "-" + "9" * 320 + ".5", "1e-400",
        "inf", "nan", "-0.0", "0", "((1/10)**200)**2", "(((1/7)**200)**200)**200", "9**9**9",
        "0**-0.5", "sqrt(2)/((1/10)**200)**2", "1e99//1e-300", "10**10**10", "2**-1074",
    ]
)  # fmt: skip
NUMBER = st.one_of(
    EXTREMES,
    DIGITS,
    st.integers(-(10**400), 10**400).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.builds(lambda d, e: f"{d}e{e}", st.text("0123456789", min_size=1, max_size=20),
              st.integers(-400, 400)),
    st.builds(lambda z, d: f"0.{'0' * z}{d}", st.integers(0, 500), DIGITS),
)  # fmt: skip
EXPRESSION = st.recursive(
    NUMBER,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a})**({b})", inner, inner),
        st.builds(lambda a, op, b: f"({a}) {op} ({b})", inner,
                  st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), inner),
        st.builds(lambda f, a: f"{f}({a})",
                  st.sampled_from(["sqrt", "abs", "round", "floor", "ceil", "min", "max", "-"]),
                  inner),
    ),
    max_leaves=6,
)  # fmt: skip
JSON_NUMBER = st.one_of(
    DIGITS, st.sampled_from(["1e400", "-1e400", "1e-400", "Infinity", "NaN", "9" * 500, "-0"])
)


@cache
def _env(env_id: str) -> envs.TextEnv:
    """One unwrapped env per id (no TimeLimit: only the env itself ends an episode)."""
    env = envs.make(env_id).unwrapped
    env.reset(seed=0)
    return env


def _tool_call(name: str, params: dict, text: str, raw_number: str) -> str:
    """A tool call whose string arguments are ``text`` and whose other arguments the raw JSON
    number ``raw_number`` (JSON allows any digit count; Python reads ``1e400`` as inf)."""
    args = ", ".join(
        f"{json.dumps(p)}: {json.dumps(text) if spec.get('type') == 'string' else raw_number}"
        for p, spec in params.items()
    )
    return f'<tool_call>{{"name": {json.dumps(name)}, "arguments": {{{args}}}}}</tool_call>'


@st.composite
def numeric_actions(draw: st.DrawFn, env: envs.TextEnv) -> str:
    text = draw(EXPRESSION)
    form = draw(st.sampled_from(["tool", "boxed", "answer", "bare", "admissible", "reply"]))
    tools = env.tool_schemas() or []
    admissible = env.admissible_actions() or []
    if form == "tool" and tools:
        fn = draw(st.sampled_from(tools))["function"]
        params = fn.get("parameters", {}).get("properties", {})
        return _tool_call(fn["name"], params, text, draw(JSON_NUMBER))
    if form == "admissible" and admissible:
        action = draw(st.sampled_from(admissible))
        return re.sub(r"\d+", lambda _: text, action) if re.search(r"\d", action) else f"{action} {text}"
    if form == "boxed":
        return f"The result is \\boxed{{{text}}}"
    if form == "answer":
        return f"Final answer: {text}"
    if form == "reply":
        return f"Your order total is {text} dollars and the refund is {draw(NUMBER)}."
    return text


@pytest.mark.parametrize("env_id", ALL_IDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_numeric_extremes_never_raise(env_id: str, data: st.DataObject) -> None:
    env = _env(env_id)
    if env.ended:
        env.reset(seed=data.draw(st.integers(0, 3)))
    action = data.draw(numeric_actions(env), label="action")
    obs, reward, terminated, truncated, info = env.step(action)
    assert isinstance(obs, str) and obs in env.observation_space
    assert isinstance(reward, float) and math.isfinite(reward)
    assert info["action_valid"] in (True, False) and truncated is False
    if terminated:
        env.reset(seed=1)


@pytest.mark.parametrize("env_id", ["DistillGym/Retail-v0", "DistillGym/Retail-Solo-v0"])
@pytest.mark.parametrize(
    "text", ["\x00\x07", "\ud800", "\ufffd\ufffd", "\udfff\ud800", "\x1b\x7f\x9b", "\u200b\ufeff\x0c\x01", "\ud83d"]
)
def test_retail_text_with_nothing_readable_is_an_invalid_action(env_id: str, text: str) -> None:
    env = envs.make(env_id).unwrapped
    env.reset(seed=2)
    obs, reward, terminated, truncated, info = env.step(text)
    assert info["action_valid"] is False and not terminated and reward == 0.0
    assert obs.startswith("Error:") and obs in env.observation_space
    obs, *_, info = env.step("Hello, could you give me your email address?")  # still open
    assert info["action_valid"] is True
