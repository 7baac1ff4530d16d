"""Tool-use envs: tau-bench-like customer service and a calculator for tool-integrated reasoning.

=============================  ===========================================================
``DistillGym/Retail-v0``        customer service with a scripted customer, a policy and tools
``DistillGym/Retail-Solo-v0``   the same tasks as support tickets, without a customer
``DistillGym/Calculator-v0``    arithmetic and word problems with a safe calculator tool
=============================  ===========================================================

Actions are JSON tool calls (``{"name": ..., "arguments": {...}}``, optionally inside
``<tool_call>...</tool_call>``) or plain text; see :func:`parse_tool_action`. Importing this
package registers the ids (``envs`` imports it).
"""

from __future__ import annotations

from envs.tooluse.actions import (
    InvalidAction,
    ToolAction,
    UserMessage,
    format_tool_call,
    parse_tool_action,
)
from envs.tooluse.calculator import CalculatorEnv, UnsafeExpressionError, safe_eval
from envs.tooluse.retail_db import db_diff, db_hash
from envs.tooluse.retail_env import POLICY, RetailEnv
from envs.tooluse.toolbox import Toolbox, ToolCallError

__all__ = [
    "POLICY",
    "CalculatorEnv",
    "InvalidAction",
    "RetailEnv",
    "ToolAction",
    "ToolCallError",
    "Toolbox",
    "UnsafeExpressionError",
    "UserMessage",
    "db_diff",
    "db_hash",
    "format_tool_call",
    "parse_tool_action",
    "register",
    "safe_eval",
]

ENV_IDS = ("DistillGym/Retail-v0", "DistillGym/Retail-Solo-v0", "DistillGym/Calculator-v0")


def register() -> None:
    """Register the tool-use env ids (idempotent)."""
    from envs.registry import register_env

    register_env(
        "DistillGym/Retail-v0",
        "envs.tooluse.retail_env:RetailEnv",
        max_episode_steps=RetailEnv.max_episode_steps,
    )
    register_env(
        "DistillGym/Retail-Solo-v0",
        "envs.tooluse.retail_env:RetailEnv",
        max_episode_steps=20,
        kwargs={"solo": True},
    )
    register_env(
        "DistillGym/Calculator-v0",
        "envs.tooluse.calculator:CalculatorEnv",
        max_episode_steps=CalculatorEnv.max_episode_steps,
    )


register()
