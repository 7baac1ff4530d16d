"""Retail tasks: an intent plus hidden parameters, built from a seeded database.

A task is a pure function of ``(task_id, difficulty)``: :func:`build_task` draws a database with
:class:`~envs.tooluse.retail_db.DbBuilder`, adds the customer's orders (one of them in the status
the intent needs) and returns the :class:`RetailTask` with its gold write calls and the pieces of
information the agent must tell the customer.

Kinds (``task_type``): ``cancel``, ``return``, ``exchange``, ``change_address``, ``status`` and
three that the policy forbids -- ``refuse_cancel`` (order no longer pending), ``refuse_return``
(order not delivered) and ``refuse_change_address`` (order no longer pending). The
``valid_unseen`` split uses held-out product types and held-out opening phrasings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from envs.tooluse.retail_db import (
    SEEN_PRODUCT_TYPES,
    UNSEEN_PRODUCT_TYPES,
    Database,
    DbBuilder,
    describe_item,
    new_address,
    order_total,
)

__all__ = [
    "CANCEL_REASONS",
    "KINDS",
    "GoldCall",
    "RetailTask",
    "build_task",
    "exchange_difference",
    "intent_of",
]

KINDS = (
    "cancel",
    "return",
    "exchange",
    "change_address",
    "status",
    "refuse_cancel",
    "refuse_return",
    "refuse_change_address",
)
_KIND_PROBS = (0.16, 0.16, 0.16, 0.16, 0.16, 0.2 / 3, 0.2 / 3, 0.2 / 3)
CANCEL_REASONS = ("no longer needed", "ordered by mistake")

_TARGET_STATUS: dict[str, tuple[str, ...]] = {
    "cancel": ("pending",),
    "change_address": ("pending",),
    "return": ("delivered",),
    "exchange": ("delivered",),
    "status": ("pending", "processed", "shipped", "delivered"),
    "refuse_cancel": ("processed", "shipped", "delivered"),
    "refuse_return": ("pending", "processed", "shipped"),
    "refuse_change_address": ("processed", "shipped", "delivered"),
}
_OPENINGS = {  # seen phrasings (train, valid_seen) then held-out ones (valid_unseen)
    "cancel": (
        ("Hi, I'd like to cancel an order I placed.", "Hello, I need to cancel one of my orders."),
        ("Hey there. Please stop an order of mine, I don't want it anymore.",),
    ),
    "return": (
        (
            "Hi, I want to return some items I received.",
            "Hello, I'd like to send back part of an order.",
        ),
        ("Good day. A delivery of mine has things I want my money back for.",),
    ),
    "exchange": (
        (
            "Hi, I'd like to exchange an item I received.",
            "Hello, can I swap an item from my order for a different version?",
        ),
        ("Hey. Something I got is the wrong variant and I want a different one.",),
    ),
    "change_address": (
        (
            "Hi, I need to change the shipping address of my order.",
            "Hello, my order should go to a different address.",
        ),
        ("Good morning. I moved, and a parcel of mine has to follow me.",),
    ),
    "status": (
        ("Hi, can you tell me the status of my order?", "Hello, where is my order right now?"),
        ("Hey, I'm wondering what's going on with a purchase of mine.",),
    ),
}


@dataclass(frozen=True)
class GoldCall:
    """One write the expert makes: tool ``name`` with ``arguments``."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class RetailTask:
    """The customer's intent and everything hidden from the agent."""

    task_id: str
    kind: str
    user_id: str
    first_name: str
    last_name: str
    email: str
    zip: str
    auth_by_email: bool  # the customer gives the email; otherwise name + zip
    order_id: str
    order_status: str
    opening: str  # first message of the customer
    request: str  # what the customer says about the order once asked (also the ticket request)
    instruction: str  # the hidden user instruction, in full
    reason: str = ""  # cancel reason
    item_ids: tuple[str, ...] = ()
    new_item_ids: tuple[str, ...] = ()
    new_address: dict[str, str] = field(default_factory=dict)
    gold_calls: tuple[GoldCall, ...] = ()
    required_outputs: tuple[str, ...] = ()
    tracking_id: str = ""

    @property
    def intent(self) -> str:
        return intent_of(self.kind)

    @property
    def must_refuse(self) -> bool:
        return self.kind.startswith("refuse_")


def intent_of(kind: str) -> str:
    """``"refuse_cancel" -> "cancel"``; other kinds are their own intent."""
    return kind.removeprefix("refuse_")


def build_task(
    task_id: str, split: str, np_rng: np.random.Generator, difficulty: int
) -> tuple[RetailTask, Database]:
    """The task ``task_id`` and its initial database (``difficulty`` 1..3 scales the number of
    customers and of the customer's other orders)."""
    unseen = split == "valid_unseen"
    rng = random.Random(int(np_rng.integers(2**63)))  # Python's generator: ~10x cheaper per draw
    builder = DbBuilder(rng)
    db = builder.build(
        n_users=(3, 5, 8)[difficulty - 1],
        product_types=UNSEEN_PRODUCT_TYPES if unseen else SEEN_PRODUCT_TYPES,
    )
    kind = rng.choices(KINDS, weights=_KIND_PROBS)[0]
    user = next(iter(db["users"].values()))
    statuses = _TARGET_STATUS[kind]
    n_other = rng.randrange(difficulty + 1)
    orders = [builder.add_order(db, user["user_id"], rng.choice(statuses))]
    orders += [
        builder.add_order(db, user["user_id"], rng.choice(("pending", "delivered", "shipped")))
        for _ in range(n_other)
    ]
    order = orders[0]
    rng.shuffle(user["orders"])
    phrasings = _OPENINGS[intent_of(kind)][1 if unseen else 0]
    params = _hidden_params(kind, order, db, rng)
    task = RetailTask(
        task_id=task_id,
        kind=kind,
        user_id=user["user_id"],
        first_name=user["first_name"],
        last_name=user["last_name"],
        email=user["email"],
        zip=user["address"]["zip"],
        auth_by_email=rng.random() < 0.5,
        order_id=order["order_id"],
        order_status=order["status"],
        opening=rng.choice(phrasings),
        request=_request_text(kind, order, params, db),
        instruction="",
        tracking_id=order["tracking_id"],
        **params,
    )
    return _finish(task, order, db), db


def _hidden_params(
    kind: str, order: dict[str, Any], db: Database, rng: random.Random
) -> dict[str, Any]:
    intent = intent_of(kind)
    items = order["items"]
    if intent == "cancel":
        return {"reason": rng.choice(CANCEL_REASONS)}
    if intent == "return":
        picked = sorted(rng.sample(range(len(items)), rng.randrange(1, min(2, len(items)) + 1)))
        return {"item_ids": tuple(items[i]["item_id"] for i in picked)}
    if intent == "exchange":
        item = rng.choice(items)
        variants = db["products"][item["product_id"]]["variants"].values()
        choices = [
            v["item_id"] for v in variants if v["available"] and v["item_id"] != item["item_id"]
        ]
        return {"item_ids": (item["item_id"],), "new_item_ids": (rng.choice(choices),)}
    if intent == "change_address":
        return {"new_address": new_address(rng)}
    return {}


def _items_by_id(order: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["item_id"]: i for i in order["items"]}


def _request_text(kind: str, order: dict[str, Any], params: dict[str, Any], db: Database) -> str:
    """What the customer says about the order when the agent asks for it."""
    oid, intent = order["order_id"], intent_of(kind)
    by_id = _items_by_id(order)
    if intent == "cancel":
        return f"The order id is {oid}. Please cancel it; the reason is: {params['reason']}."
    if intent == "return":
        names = " and the ".join(describe_item(by_id[i]) for i in params["item_ids"])
        return f"The order id is {oid}. I want to return the {names}, refunded to the original payment method."
    if intent == "exchange":
        old = by_id[params["item_ids"][0]]
        new = db["products"][old["product_id"]]["variants"][params["new_item_ids"][0]]
        opts = ", ".join(f"{k}: {v}" for k, v in new["options"].items())
        return f"The order id is {oid}. I want to exchange the {describe_item(old)} for the same product with {opts}."
    if intent == "change_address":
        a = params["new_address"]
        return f"The order id is {oid}. Please ship it to {a['address1']}, {a['city']}, {a['state']} {a['zip']} instead."
    return f"The order id is {oid}. What is its status, and is there a tracking number?"


def _finish(task: RetailTask, order: dict[str, Any], db: Database) -> RetailTask:
    """Fill in the gold writes, the required outputs and the hidden instruction."""
    oid, by_id = task.order_id, _items_by_id(order)
    gold: tuple[GoldCall, ...] = ()
    outputs: tuple[str, ...] = ()
    if task.kind == "cancel":
        gold = (GoldCall("cancel_pending_order", {"order_id": oid, "reason": task.reason}),)
        outputs = (f"{order_total(order['items']):.2f}",)
    elif task.kind == "return":
        gold = (
            GoldCall(
                "return_delivered_order_items", {"order_id": oid, "item_ids": list(task.item_ids)}
            ),
        )
        outputs = (f"{order_total([by_id[i] for i in task.item_ids]):.2f}",)
    elif task.kind == "exchange":
        gold = (
            GoldCall(
                "exchange_delivered_order_items",
                {
                    "order_id": oid,
                    "item_ids": list(task.item_ids),
                    "new_item_ids": list(task.new_item_ids),
                },
            ),
        )
        outputs = (f"{abs(exchange_difference(db, order, task.item_ids, task.new_item_ids)):.2f}",)
    elif task.kind == "change_address":
        gold = (GoldCall("modify_pending_order_address", {"order_id": oid, **task.new_address}),)
    elif task.kind == "status":
        outputs = (task.order_status,) + ((task.tracking_id,) if task.tracking_id else ())
    else:  # refusals: the agent must explain the order's status and write nothing
        outputs = (task.order_status,)
    auth = (
        f"your email is {task.email}"
        if task.auth_by_email
        else f"you do not remember your email; your name is {task.first_name} {task.last_name} "
        f"and your zip code is {task.zip}"
    )
    instruction = (
        f"You are {task.first_name} {task.last_name}; {auth}. {task.request} "
        "Give your identity and the order details only when asked, confirm only a request that "
        "matches yours exactly, and end the conversation once it is handled."
    )
    return replace(task, gold_calls=gold, required_outputs=outputs, instruction=instruction)


def exchange_difference(
    db: Database,
    order: dict[str, Any],
    item_ids: tuple[str, ...] | list[str],
    new_item_ids: tuple[str, ...] | list[str],
) -> float:
    """Price of the new items minus price of the old ones (positive: the customer pays)."""
    by_id = _items_by_id(order)
    product_of = {i: by_id[i]["product_id"] for i in item_ids}
    old = sum(by_id[i]["price"] for i in item_ids)
    new = sum(
        db["products"][product_of[o]]["variants"][n]["price"]
        for o, n in zip(item_ids, new_item_ids)
    )
    return round(new - old, 2)
