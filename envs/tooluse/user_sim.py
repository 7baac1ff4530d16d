"""A deterministic scripted customer for the retail env (no LLM).

The customer holds the hidden task. It answers by keyword rules, in this order:

1. its request is handled -- the write is done, or (``status``) the agent told it the order's
   status, or (``refuse_*``) the agent said, naming the status, that it cannot be done -- so it
   thanks the agent and ends with ``###STOP###``;
2. the agent asks to confirm an action on an order (an action word, an order id and a question):
   it answers "Yes" only when the action, the order and the exact item ids / new address match
   its intent, and "No" with its request otherwise;
3. the agent asks who it is (email, name, zip...): it reveals its email, or name and zip code;
4. the agent asks which order (``order id``, ``order number``, ``which order``): it gives the
   order id and the details of its request;
5. anything else: it restates what it wants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from envs.tooluse.retail_tasks import RetailTask

__all__ = ["STOP_TOKEN", "ScriptedUser", "UserReply", "mentions"]

STOP_TOKEN = "###STOP###"
_ORDER_ID_RE = re.compile(r"#w\d{7}")
_ITEM_ID_RE = re.compile(r"(?<!\d)\d{10}(?!\d)")
_IDENTITY_WORDS = (
    "email",
    "e-mail",
    "zip",
    "name",
    "verify",
    "identity",
    "authenticate",
    "identify",
)
_ORDER_WORDS = (
    "order id",
    "order number",
    "which order",
    "order's id",
    "id of the order",
    "order #",
)
_CONFIRM_WORDS = ("confirm", "proceed", "go ahead", "shall i", "should i", "?")
_REFUSAL_WORDS = (
    "cannot",
    "can't",
    "can not",
    "unable to",
    "not able to",
    "not possible",
    "not allowed",
)
_ACTION_WORDS = {
    "cancel": "cancel",
    "return": "return",
    "exchange": "exchange",
    "change_address": "address",
}


def mentions(text: str, value: str) -> bool:
    """Whether ``value`` occurs in ``text`` as a whole token (case-insensitive):
    ``"12.50"`` is in ``"a refund of $12.50."`` but not in ``"$112.50"``."""
    pattern = r"(?<![\w.])" + re.escape(value.lower()) + r"(?![\w]|\.\d)"
    return re.search(pattern, text.lower()) is not None


@dataclass(frozen=True)
class UserReply:
    """The customer's answer. ``answered_proposal``: the agent asked to confirm an action;
    ``confirmed``: the customer said "Yes" to it (its own intent on its own order)."""

    text: str
    stop: bool = False
    answered_proposal: bool = False
    confirmed: bool = False


class ScriptedUser:
    """The customer of one task; ``order_item_ids`` are the item ids of the task's order."""

    def __init__(self, task: RetailTask, order_item_ids: tuple[str, ...]) -> None:
        self.task = task
        self.order_item_ids = frozenset(order_item_ids)
        self.revealed_identity = False
        self.revealed_order = False

    def opening(self) -> str:
        return self.task.opening

    def reply(self, message: str, *, task_done: bool) -> UserReply:
        """Answer the agent's ``message``; ``task_done`` says the target write has happened."""
        task, low = self.task, message.lower()
        if self._handled(low, task_done):
            thanks = {
                "status": "Great, thanks for letting me know.",
                "refuse": "I see. Thanks anyway.",
            }
            key = "refuse" if task.must_refuse else task.kind
            return UserReply(
                f"{thanks.get(key, 'Thank you, that is everything I needed.')} {STOP_TOKEN}",
                stop=True,
            )
        verdict = self._proposal_verdict(low)
        if verdict is not None:
            if verdict:
                return UserReply("Yes, please go ahead.", answered_proposal=True, confirmed=True)
            return UserReply(f"No, that is not what I want. {task.request}", answered_proposal=True)
        parts = []
        if any(w in low for w in _IDENTITY_WORDS):
            self.revealed_identity = True
            parts.append(
                f"Sure, my email is {task.email}."
                if task.auth_by_email
                else f"I don't remember my email, but my name is {task.first_name} {task.last_name} "
                f"and my zip code is {task.zip}."
            )
        if any(w in low for w in _ORDER_WORDS):
            self.revealed_order = True
            parts.append(task.request)
        if parts:
            return UserReply(" ".join(parts))
        return UserReply(
            f"Sorry, I'm not sure what you mean. {task.request if self.revealed_order else task.opening}"
        )

    def _handled(self, low: str, task_done: bool) -> bool:
        task = self.task
        if task.must_refuse:
            return mentions(low, task.order_status) and any(w in low for w in _REFUSAL_WORDS)
        if task.kind == "status":
            return mentions(low, task.order_status)
        return task_done

    def _proposal_verdict(self, low: str) -> bool | None:
        """``None`` if ``low`` does not ask to confirm an action, else whether it matches."""
        order_ids = set(_ORDER_ID_RE.findall(low))
        words = [w for w in _ACTION_WORDS.values() if w in low]
        if not order_ids or not words or not any(w in low for w in _CONFIRM_WORDS):
            return None
        task = self.task
        if task.intent not in _ACTION_WORDS or _ACTION_WORDS[task.intent] not in words:
            return False
        if order_ids != {task.order_id.lower()}:
            return False
        numbers = set(_ITEM_ID_RE.findall(low))
        if task.intent in ("return", "exchange") and numbers & self.order_item_ids != set(
            task.item_ids
        ):
            return False
        if task.intent == "exchange" and not set(task.new_item_ids) <= numbers:
            return False
        if task.intent == "change_address":
            a = task.new_address
            return mentions(low, a["zip"]) and a["address1"].lower() in low
        return True
