"""``DistillGym/Retail-v0`` and ``DistillGym/Retail-Solo-v0``: tau-bench-like customer service.

One episode: a customer (a :class:`~envs.tooluse.user_sim.ScriptedUser`) wants something done
with one of their orders. The agent talks to them in plain text and calls the retail tools (one
JSON tool call per action) under a written policy: authenticate first, confirm before any
write, one tool call per turn, refuse what the policy forbids. The episode ends when the customer
says ``###STOP###`` (in solo mode, the task is a ticket and the agent's first plain-text message
is the final reply).

Reward (at the end, all or nothing)::

    reward = 1  iff  final DB == initial DB + gold writes   (same as equal db_hash)
                and  every required output (refund amount, status, tracking id...) was said
                and  no write changed the DB without the customer's confirmation

with the three parts in ``info["reward_breakdown"]`` (``db_match``, ``outputs``, ``policy``).
The expert (:meth:`RetailEnv.expert_action`) re-plans from the current state; its steps are the
privileged ``plan``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from envs.base import EnvError, InvalidOptionError, Privileged, StepOutcome, TextEnv, parse_task_id
from envs.tooluse.actions import InvalidAction, ToolAction, format_tool_call, parse_tool_action
from envs.tooluse.retail_db import Database, copy_db, db_diff, describe_item
from envs.tooluse.retail_tasks import RetailTask, build_task
from envs.tooluse.retail_tools import READ_TOOLS, RETAIL_TOOLBOX, WRITE_TOOLS, RetailTools
from envs.tooluse.toolbox import error_text
from envs.tooluse.user_sim import ScriptedUser, mentions

__all__ = ["POLICY", "RetailEnv", "RetailPrivileged", "TaskGenerationError", "replay_gold"]

POLICY = """\
# Retail customer service policy

You are a customer service agent of an online store. You help one customer per conversation
with their orders: cancel a pending order, change the shipping address of a pending order,
return or exchange items of a delivered order, or tell the status of an order.

1. Authenticate first. Before you look at or change any order, find the customer's user id
   with find_user_id_by_email, or with find_user_id_by_name_zip, from what the customer tells
   you. You may only act on the authenticated customer's orders.
2. Confirm before any write. Before calling a tool that changes the database (cancel, change
   address, return, exchange), describe the action -- the order id, the exact item ids and new
   item ids, or the new address -- and ask the customer to confirm. Only act after an explicit
   "yes".
3. One tool call per turn. Each of your turns is either exactly one tool call or one message
   to the customer, never both.
4. Only pending orders can be cancelled or have their address changed; only delivered orders
   can have items returned or exchanged, for another available variant of the same product.
   Refunds go to the order's original payment method. If a request is not allowed, do not
   call the tool: tell the customer that you cannot do it and why (the order's status).
5. Tell the customer the outcome: the refund amount or price difference, or the order's status
   and tracking number.
"""

_SOLO_NOTE = """\
Solo mode: there is no live customer. You work from a support ticket; the ticket counts as the
customer's confirmation of exactly the action it asks for. Authenticate the customer with the
tools first. Your first plain-text message is your final reply to the customer and closes the
ticket, so make all tool calls before it.
"""

_ACTION_FORMAT = """\
# How to act

To call a tool, answer with one JSON object inside <tool_call></tool_call> tags, for example:
<tool_call>
{"name": "get_order_details", "arguments": {"order_id": "#W0123456"}}
</tool_call>
Anything else you write is sent to the customer as a message. Tool results come back as JSON,
or as a line starting with "Error:".
"""

_WRITE_INTENT = {
    "cancel_pending_order": "cancel",
    "modify_pending_order_address": "change_address",
    "return_delivered_order_items": "return",
    "exchange_delivered_order_items": "exchange",
}
_NEEDED_STATUS = {
    "cancel": ("pending", "cancelled"),
    "change_address": ("pending", "changed"),
    "return": ("delivered", "returned"),
    "exchange": ("delivered", "exchanged"),
}


class TaskGenerationError(EnvError):
    """A generated task is inconsistent (its gold writes fail): a bug in the generator."""


@dataclass
class RetailPrivileged(Privileged):
    """The contract's privileged keys plus the retail-specific ones."""

    gold_calls: list[dict[str, Any]] = field(default_factory=list)
    next_gold_call: dict[str, Any] | None = None
    instruction: str = ""
    required_outputs: list[str] = field(default_factory=list)
    target_db_diff: list[str] = field(default_factory=list)


class RetailEnv(TextEnv):
    """Customer service over a synthetic retail database (see the module docstring)."""

    family: ClassVar[str] = "tool"
    invalid_feedback: ClassVar[str] = "Error: the action is not a string or is too long."
    default_difficulty: ClassVar[int] = 1
    max_episode_steps: ClassVar[int] = 30

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        expose_privileged: bool = False,
        difficulty: int | None = None,
        solo: bool = False,
    ) -> None:
        super().__init__(render_mode, expose_privileged=expose_privileged, difficulty=difficulty)
        RETAIL_TOOLBOX.prepare()  # build schemas now (imports transformers once), not mid-episode
        self.solo = bool(solo)
        self._validate_difficulty(self.difficulty)

    # ------------------------------------------------------------------ TextEnv hooks

    def _validate_difficulty(self, difficulty: Any) -> int:
        if isinstance(difficulty, bool) or difficulty not in (1, 2, 3):
            raise InvalidOptionError(f"difficulty must be 1, 2 or 3, got {difficulty!r}")
        return int(difficulty)

    def _setup(self, task_id: str, rng: np.random.Generator, difficulty: Any) -> str:
        split, _ = parse_task_id(task_id)
        self.task, self.db = build_task(task_id, split, rng, difficulty)
        self._target: Database | None = None  # the goal database, built on first use
        self.tools = RetailTools(self.db)
        order_items = tuple(i["item_id"] for i in self.db["orders"][self.task.order_id]["items"])
        self.user = ScriptedUser(self.task, order_items)
        self._said: list[str] = []
        self._violations: list[str] = []
        self._reads: set[tuple[str, str]] = set()
        self._write_done = False
        self._result: dict[str, float] = {}
        # in solo mode the ticket is the confirmation of exactly its own request
        self._confirmation = (self.task.intent, self.task.order_id) if self.solo else None
        return self._ticket() if self.solo else self.user.opening()

    @property
    def task_type(self) -> str:
        return self.task.kind

    def _act(self, action: str) -> StepOutcome:
        parsed = parse_tool_action(action)
        if isinstance(parsed, InvalidAction):
            return StepOutcome(error_text(parsed.error), valid=False)
        if isinstance(parsed, ToolAction):
            return self._call_tool(parsed)
        return self._message(parsed.text)

    def tool_schemas(self) -> list[dict[str, Any]]:
        return list(RETAIL_TOOLBOX.schemas)

    @property
    def instructions(self) -> str:
        return POLICY + "\n" + (_SOLO_NOTE + "\n" if self.solo else "") + _ACTION_FORMAT

    def expert_action(self) -> str:
        return next(self._expert_steps())[1]

    # ------------------------------------------------------------------ the world

    def initial_db(self) -> Database:
        """The database as it was at reset (unchanged records are shared, not copied)."""
        return {**self.db, "orders": {**self.db["orders"], **self.tools.pre_images}}

    def target_db(self) -> Database:
        """The goal database: the initial one plus the gold writes, replayed on a fresh copy of
        the orders they touch (the rest is shared with :meth:`initial_db`)."""
        if self._target is None:
            self._target = replay_gold(self.task, self.initial_db())
        return self._target

    def _ticket(self) -> str:
        t = self.task
        return (
            f"Support ticket {t.task_id}\nCustomer: {t.first_name} {t.last_name} <{t.email}>\n"
            f"Message: {t.opening} {t.request}"
        )

    def _call_tool(self, call: ToolAction) -> StepOutcome:
        obs, ok = RETAIL_TOOLBOX.call(self.tools, call.name, call.arguments)
        if ok and call.name in WRITE_TOOLS:
            key = (_WRITE_INTENT[call.name], call.arguments["order_id"])
            if self._confirmation != key:
                self._violations.append(
                    f"{call.name} on {key[1]} without the customer's confirmation"
                )
            self._confirmation = None
            if key == (self.task.intent, self.task.order_id):
                self._write_done = True
        elif ok and call.name in READ_TOOLS:
            self._reads.add((call.name, next(iter(call.arguments.values()), "")))
        return StepOutcome(obs, valid=ok)

    def _message(self, text: str) -> StepOutcome:
        self._said.append(text)
        if self.solo:
            return self._finish("Ticket closed.")
        reply = self.user.reply(text, task_done=self._write_done)
        if reply.answered_proposal:
            self._confirmation = (self.task.intent, self.task.order_id) if reply.confirmed else None
        if reply.stop:
            return self._finish(reply.text)
        return StepOutcome(reply.text)

    def _finish(self, observation: str) -> StepOutcome:
        said = "\n".join(self._said)
        outputs = self.task.required_outputs
        told = sum(mentions(said, o) for o in outputs) / len(outputs) if outputs else 1.0
        # dict equality is what db_hash equality means (order-independent), without serialising
        self._result = {
            "db_match": float(self.db == self.target_db()),
            "outputs": told,
            "policy": float(not self._violations),
        }
        won = self._result["db_match"] == self._result["outputs"] == self._result["policy"] == 1.0
        return StepOutcome(
            observation,
            reward=float(won),
            terminated=True,
            won=won,
            reward_breakdown=dict(self._result),
        )

    def _outcome(self) -> str:
        if self._won:
            return "The customer's request was handled correctly and by the policy."
        if not self._result:
            return super()._outcome()
        parts = []
        if not self._result["db_match"]:
            parts.append("the database does not match the requested change")
        if self._result["outputs"] < 1.0:
            parts.append("the customer was not told " + ", ".join(self.task.required_outputs))
        if self._violations:
            parts.append("the policy was broken (" + "; ".join(self._violations) + ")")
        return "The task failed: " + "; ".join(parts) + "."

    # ------------------------------------------------------------------ expert

    def _expert_steps(self) -> Iterator[tuple[str, str]]:
        """``(subgoal, action)`` pairs from the current state; the first is the next action."""
        t, solo = self.task, self.solo
        if not solo and not self.user.revealed_identity:
            yield (
                "ask for identity",
                (
                    "I'd be happy to help. To verify your identity, could you give me "
                    "your email address, or your first name, last name and zip code?"
                ),
            )
        if self.tools.user_id != t.user_id:
            if t.auth_by_email or solo:
                yield "authenticate", format_tool_call("find_user_id_by_email", {"email": t.email})
            else:
                yield (
                    "authenticate",
                    format_tool_call(
                        "find_user_id_by_name_zip",
                        {"first_name": t.first_name, "last_name": t.last_name, "zip": t.zip},
                    ),
                )
        if not solo and not self.user.revealed_order:
            yield (
                "ask for the order",
                (
                    "Thank you. Which order is this about? Please give me the order id "
                    "and tell me what you would like to do."
                ),
            )
        if ("get_order_details", t.order_id) not in self._reads:
            yield "read the order", format_tool_call("get_order_details", {"order_id": t.order_id})
        if t.intent == "exchange" and not t.must_refuse:
            pid = self._order_item(t.item_ids[0])["product_id"]
            if ("get_product_details", pid) not in self._reads:
                yield (
                    "read the product",
                    format_tool_call("get_product_details", {"product_id": pid}),
                )
        if t.gold_calls and not self._write_done:
            if self._confirmation != (t.intent, t.order_id):
                yield "get confirmation", self._proposal()
            gold = t.gold_calls[0]
            yield "make the change", format_tool_call(gold.name, gold.arguments)
        yield "tell the customer the outcome", self._closing()

    def _order_item(self, item_id: str) -> dict[str, Any]:
        return next(
            i for i in self.db["orders"][self.task.order_id]["items"] if i["item_id"] == item_id
        )

    def _new_variant(self) -> dict[str, Any]:
        t = self.task
        return self.db["products"][self._order_item(t.item_ids[0])["product_id"]]["variants"][
            t.new_item_ids[0]
        ]

    def _proposal(self) -> str:
        t = self.task
        amount = t.required_outputs[0] if t.required_outputs else ""
        if t.intent == "cancel":
            what = f"cancel order {t.order_id} (reason: {t.reason}); ${amount} will be refunded"
        elif t.intent == "return":
            items = ", ".join(f"{i} ({describe_item(self._order_item(i))})" for i in t.item_ids)
            what = f"return item(s) {items} of order {t.order_id}; ${amount} will be refunded"
        elif t.intent == "exchange":
            old, new = self._order_item(t.item_ids[0]), self._new_variant()
            opts = ", ".join(f"{k}: {v}" for k, v in new["options"].items())
            what = (
                f"exchange item {old['item_id']} ({describe_item(old)}) of order {t.order_id} for item "
                f"{new['item_id']} ({opts}); the price difference is ${amount}"
            )
        else:
            a = t.new_address
            what = (
                f"change the shipping address of order {t.order_id} to {a['address1']}, {a['city']}, "
                f"{a['state']} {a['zip']}"
            )
        return f"To confirm: I will {what}. Shall I proceed (yes/no)?"

    def _closing(self) -> str:
        t = self.task
        if t.must_refuse:
            needed, verb = _NEEDED_STATUS[t.intent]
            return (
                f"I'm sorry, but order {t.order_id} is {t.order_status}, and by our policy only {needed} "
                f"orders can be {verb}, so I cannot do this."
            )
        if t.kind == "status":
            tracking = f", with tracking number {t.tracking_id}" if t.tracking_id else ""
            return f"Your order {t.order_id} is {t.order_status}{tracking}."
        if t.kind == "change_address":
            return f"Done: the shipping address of order {t.order_id} is updated. Anything else?"
        kind = "price difference" if t.kind == "exchange" else "refund"
        return f"Done: order {t.order_id} is updated; the {kind} is ${t.required_outputs[0]}. Anything else?"

    # ------------------------------------------------------------------ privileged

    def _privileged(self) -> RetailPrivileged:
        t = self.task
        steps = list(self._expert_steps()) if not self._ended else []
        gold: list[dict[str, Any]] = [
            {"name": c.name, "arguments": c.arguments} for c in t.gold_calls
        ]
        next_gold = gold[0] if gold and not self._write_done else None
        answer = "; ".join(
            format_tool_call(g["name"], g["arguments"]).replace("\n", " ") for g in gold
        )
        if t.must_refuse:
            answer = f"Refuse: order {t.order_id} is {t.order_status}; make no change"
        elif not gold:
            answer = "Make no change"
        if t.required_outputs:
            answer += "; tell the customer: " + ", ".join(t.required_outputs)
        return RetailPrivileged(
            answer=answer,
            plan=[a for _, a in steps],
            next_action=steps[0][1] if steps else "",
            subgoals=[s for s, _ in steps],
            state_facts=self._state_facts(),
            rubric=(
                "Reward 1 only if the final database equals the initial one plus the gold writes, "
                f"the customer is told {list(t.required_outputs)}, and every write was confirmed."
            ),
            hint=self._hint(),
            hints={
                "reinforcing": "You followed the policy: authenticate, read, confirm, act, then report.",
                "corrective": f"{self._hint()} Authenticate first and get an explicit yes before any write.",
            },
            gold_calls=gold,
            next_gold_call=next_gold,
            instruction=t.instruction,
            required_outputs=list(t.required_outputs),
            target_db_diff=db_diff(self.initial_db(), self.target_db()),
        )

    def _hint(self) -> str:
        t = self.task
        if t.must_refuse:
            return f"Order {t.order_id} is {t.order_status}, so the customer's {t.intent} request must be refused."
        if t.kind == "status":
            return f"The customer wants the status of order {t.order_id}."
        return f"The customer wants to {t.intent.replace('_', ' ')} order {t.order_id} with {t.gold_calls[0].name}."

    def _state_facts(self) -> list[str]:
        facts = [
            f"authenticated customer: {self.tools.user_id or 'none'}",
            f"order {self.task.order_id} status: {self.db['orders'][self.task.order_id]['status']}",
            f"requested change done: {'yes' if self._write_done else 'no'}",
        ]
        if not self.solo:
            facts += [
                f"customer gave identity: {'yes' if self.user.revealed_identity else 'no'}",
                f"customer gave order: {'yes' if self.user.revealed_order else 'no'}",
            ]
        if self._confirmation:
            facts.append(f"confirmed action: {self._confirmation[0]} on {self._confirmation[1]}")
        facts += [f"policy violation: {v}" for v in self._violations]
        return facts


def replay_gold(task: RetailTask, initial: Database) -> Database:
    """``initial`` plus ``task``'s gold writes, applied to copies of the orders they touch
    (``initial`` is left alone). Raises :class:`TaskGenerationError` if a gold write fails."""
    target = {**initial, "orders": dict(initial["orders"])}
    for call in task.gold_calls:
        oid = call.arguments["order_id"]
        target["orders"][oid] = copy_db(initial["orders"][oid])
    tools = RetailTools(target)
    tools.user_id = task.user_id
    for call in task.gold_calls:
        obs, ok = RETAIL_TOOLBOX.call(tools, call.name, dict(call.arguments))
        if not ok:
            raise TaskGenerationError(f"task {task.task_id}: gold call {call.name} failed: {obs}")
    return target
