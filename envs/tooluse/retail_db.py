"""The retail world's database: seeded synthetic users, orders and products, plus hashing/diff.

The database is a plain JSON-like ``dict`` with three tables keyed by id::

    {"users":    {user_id:    {"user_id", "first_name", "last_name", "email", "address",
                               "payment_method_id", "orders": [order_id, ...]}},
     "orders":   {order_id:   {"order_id", "user_id", "status", "items": [item, ...], "address",
                               "payment_method_id", "tracking_id", "payment_history": [...]}},
     "products": {product_id: {"product_id", "name", "variants": {item_id: {"item_id",
                               "options", "price", "available"}}}}}

where an order ``item`` is ``{"item_id", "product_id", "name", "options", "price"}``. Everything
is generated from one ``random.Random`` (seeded from the task's generator), so a task id always rebuilds the same database.

:func:`db_hash` hashes canonical JSON (sorted keys), so it does not depend on the order in which
records or fields were inserted; lists keep their order, and the write tools store id lists
sorted, so the order of ids in a tool call does not matter either.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from typing import Any

__all__ = [
    "ORDER_STATUSES",
    "PRODUCT_TYPES",
    "SEEN_PRODUCT_TYPES",
    "UNSEEN_PRODUCT_TYPES",
    "Database",
    "DbBuilder",
    "copy_db",
    "db_diff",
    "db_hash",
    "describe_item",
    "new_address",
    "order_total",
]

Database = dict[str, dict[str, dict[str, Any]]]

ORDER_STATUSES = ("pending", "processed", "shipped", "delivered", "cancelled")

# name -> (option name -> values, price range in dollars)
PRODUCT_TYPES: dict[str, tuple[dict[str, tuple[str, ...]], tuple[int, int]]] = {
    "T-Shirt": (
        {"color": ("red", "blue", "black", "white"), "size": ("S", "M", "L", "XL")},
        (12, 40),
    ),
    "Running Shoes": (
        {"color": ("black", "white", "grey"), "size": ("8", "9", "10", "11")},
        (60, 160),
    ),
    "Backpack": (
        {"color": ("black", "navy", "green"), "capacity": ("20L", "30L", "40L")},
        (35, 120),
    ),
    "Water Bottle": (
        {"capacity": ("500ml", "750ml", "1000ml"), "material": ("steel", "plastic")},
        (8, 35),
    ),
    "Wireless Earbuds": (
        {"color": ("black", "white", "blue"), "battery": ("6h", "8h", "10h")},
        (40, 200),
    ),
    "Coffee Maker": (
        {"capacity": ("4 cups", "8 cups", "12 cups"), "type": ("drip", "espresso")},
        (30, 250),
    ),
    "Hiking Jacket": ({"color": ("red", "green", "black"), "size": ("S", "M", "L")}, (70, 220)),
    # held out: only the valid_unseen split asks about these
    "Desk Lamp": (
        {"color": ("black", "white", "brass"), "brightness": ("400lm", "800lm")},
        (20, 90),
    ),
    "Yoga Mat": (
        {"thickness": ("4mm", "6mm", "8mm"), "color": ("purple", "blue", "black")},
        (18, 70),
    ),
    "Mechanical Keyboard": (
        {"switch": ("linear", "tactile", "clicky"), "layout": ("full", "tenkeyless")},
        (50, 180),
    ),
}
SEEN_PRODUCT_TYPES = tuple(list(PRODUCT_TYPES)[:7])
UNSEEN_PRODUCT_TYPES = tuple(list(PRODUCT_TYPES)[7:])

_FIRST = (
    "Yusuf",
    "Mei",
    "Olivia",
    "Liam",
    "Sofia",
    "Noah",
    "Aisha",
    "Mateo",
    "Emma",
    "Raj",
    "Chloe",
    "Ivan",
    "Fatima",
    "Lucas",
    "Hana",
    "Omar",
    "Grace",
    "Diego",
    "Nora",
    "Ethan",
)
_LAST = (
    "Rossi",
    "Chen",
    "Garcia",
    "Smith",
    "Kim",
    "Patel",
    "Novak",
    "Silva",
    "Muller",
    "Sato",
    "Haddad",
    "Brown",
    "Lopez",
    "Ivanova",
    "Okafor",
    "Dubois",
    "Jensen",
    "Moreau",
)
_STREETS = (
    "Maple Ave",
    "Oak St",
    "Pine Rd",
    "Cedar Ln",
    "Elm St",
    "Birch Way",
    "Lake Dr",
    "Hill Rd",
    "River St",
    "Park Ave",
)
_CITIES = (
    ("Austin", "TX"),
    ("Denver", "CO"),
    ("Seattle", "WA"),
    ("Boston", "MA"),
    ("Chicago", "IL"),
    ("Phoenix", "AZ"),
    ("Portland", "OR"),
    ("Columbus", "OH"),
)
_PAYMENT_KINDS = ("credit_card", "paypal", "gift_card")


def _digits(rng: random.Random, n: int) -> str:
    return f"{rng.randrange(10**n):0{n}d}"


def _unique(rng: random.Random, taken: set[str], make: Any) -> str:
    while True:
        value = make(rng)
        if value not in taken:
            taken.add(value)
            return value


def new_address(rng: random.Random) -> dict[str, str]:
    """A random US-style address ``{"address1", "city", "state", "zip"}``."""
    city, state = rng.choice(_CITIES)
    street = rng.choice(_STREETS)
    return {
        "address1": f"{rng.randrange(10, 999)} {street}",
        "city": city,
        "state": state,
        "zip": _digits(rng, 5),
    }


def _make_product(rng: random.Random, name: str, taken: set[str]) -> dict[str, Any]:
    """A product with 3..6 variants, at least two of them available."""
    options, (low, high) = PRODUCT_TYPES[name]
    combos = list(itertools.product(*options.values()))
    picked = rng.sample(range(len(combos)), min(len(combos), rng.randrange(3, 7)))
    variants = {}
    for k, idx in enumerate(sorted(picked)):
        item_id = _unique(rng, taken, lambda r: _digits(r, 10))
        price = rng.randrange(low * 100, high * 100) / 100
        variants[item_id] = {
            "item_id": item_id,
            "options": dict(zip(options, combos[idx])),
            "price": price,
            "available": bool(k < 2 or rng.random() < 0.7),
        }
    product_id = _unique(rng, taken, lambda r: _digits(r, 10))
    return {"product_id": product_id, "name": name, "variants": variants}


def _order_item(product: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    return {
        "item_id": variant["item_id"],
        "product_id": product["product_id"],
        "name": product["name"],
        "options": dict(variant["options"]),
        "price": variant["price"],
    }


def _make_order(
    rng: random.Random,
    user: dict[str, Any],
    products: list[dict[str, Any]],
    status: str,
    taken: set[str],
) -> dict[str, Any]:
    """An order of 1..4 distinct items of distinct products."""
    chosen = rng.sample(products, rng.randrange(1, min(4, len(products)) + 1))
    items = [_order_item(p, p["variants"][rng.choice(list(p["variants"]))]) for p in chosen]
    order_id = _unique(rng, taken, lambda r: "#W" + _digits(r, 7))
    order = {
        "order_id": order_id,
        "user_id": user["user_id"],
        "status": status,
        "items": items,
        "address": dict(user["address"]),
        "payment_method_id": user["payment_method_id"],
        "tracking_id": _digits(rng, 12) if status in ("shipped", "delivered") else "",
        "payment_history": [
            {
                "transaction_type": "payment",
                "amount": order_total(items),
                "payment_method_id": user["payment_method_id"],
            }
        ],
    }
    user["orders"].append(order_id)
    return order


class DbBuilder:
    """Builds one seeded database; keeps the ids already used so that ids stay unique."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.taken: set[str] = set()

    def build(self, *, n_users: int, product_types: tuple[str, ...]) -> Database:
        """A fresh database with ``n_users`` users over ``product_types``; every user but the
        first gets 1..3 random orders (task builders add the first user's orders)."""
        rng = self.rng
        products = [_make_product(rng, name, self.taken) for name in product_types]
        db: Database = {
            "users": {},
            "orders": {},
            "products": {p["product_id"]: p for p in products},
        }
        firsts = rng.sample(_FIRST, n_users)
        for k in range(n_users):
            user = self._make_user(firsts[k])
            db["users"][user["user_id"]] = user
            for _ in range(rng.randrange(1, 4) if k else 0):
                self.add_order(db, user["user_id"], rng.choice(ORDER_STATUSES))
        return db

    def _make_user(self, first: str) -> dict[str, Any]:
        rng = self.rng
        last = rng.choice(_LAST)
        uid = _unique(rng, self.taken, lambda r: f"{first.lower()}_{last.lower()}_{_digits(r, 4)}")
        kind = rng.choice(_PAYMENT_KINDS)
        return {
            "user_id": uid,
            "first_name": first,
            "last_name": last,
            "email": f"{first.lower()}.{last.lower()}{_digits(rng, 3)}@example.com",
            "address": new_address(rng),
            "payment_method_id": f"{kind}_{_digits(rng, 7)}",
            "orders": [],
        }

    def add_order(self, db: Database, user_id: str, status: str) -> dict[str, Any]:
        """Add an order with ``status`` for ``user_id`` and return it."""
        order = _make_order(
            self.rng, db["users"][user_id], list(db["products"].values()), status, self.taken
        )
        db["orders"][order["order_id"]] = order
        return order


def order_total(items: list[dict[str, Any]]) -> float:
    """Sum of item prices, rounded to cents."""
    return round(sum(float(i["price"]) for i in items), 2)


def describe_item(item: dict[str, Any]) -> str:
    """``"T-Shirt (color: blue, size: M)"``."""
    opts = ", ".join(f"{k}: {v}" for k, v in item["options"].items())
    return f"{item['name']} ({opts})"


def copy_db(db: Database) -> Database:
    """A deep copy (the database is JSON data, and a JSON round trip is the fastest copy)."""
    return json.loads(json.dumps(db))


def db_hash(db: Database) -> str:
    """SHA-256 of ``db`` as canonical JSON: dict keys sorted, so the hash does not depend on
    insertion order; lists are sequences (the tools store id lists sorted)."""
    text = json.dumps(db, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def db_diff(before: Any, after: Any, path: str = "") -> list[str]:
    """Human-readable changes from ``before`` to ``after``: ``"orders/#W1/status: 'pending' ->
    'cancelled'"``; lists are compared as a whole, shared sub-records are skipped at once."""
    if before is after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            sub = f"{path}/{key}" if path else str(key)
            if key not in before:
                out.append(f"{sub}: added {json.dumps(after[key], sort_keys=True)}")
            elif key not in after:
                out.append(f"{sub}: removed")
            else:
                out.extend(db_diff(before[key], after[key], sub))
        return out
    if isinstance(before, list) and isinstance(after, list):
        if before == after:
            return []
        return [
            f"{path}: {json.dumps(before, sort_keys=True)} -> {json.dumps(after, sort_keys=True)}"
        ]
    if before != after:
        return [f"{path}: {before!r} -> {after!r}"]
    return []
