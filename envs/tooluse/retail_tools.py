"""The retail tools: typed methods over the database, with the policy's hard rules built in.

Each public method below is a tool; its schema comes from its signature and docstring (see
:mod:`envs.tooluse.toolbox`). Read tools return JSON records, write tools change the database and
return the updated order, and ``think`` only logs. Hard rules are enforced here and come back as
``Error: ...``: the customer must be authenticated before any account or order data is touched,
only the authenticated customer's orders are visible, and each write checks the order's status.
(The soft rule "confirm before any write" is checked by the env, which knows the conversation.)
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from envs.tooluse.retail_db import Database, order_total
from envs.tooluse.retail_tasks import exchange_difference
from envs.tooluse.toolbox import Toolbox, ToolCallError

__all__ = ["READ_TOOLS", "RETAIL_TOOLBOX", "WRITE_TOOLS", "RetailTools"]

READ_TOOLS = (
    "find_user_id_by_email",
    "find_user_id_by_name_zip",
    "get_user_details",
    "get_order_details",
    "get_product_details",
)
WRITE_TOOLS = (
    "cancel_pending_order",
    "modify_pending_order_address",
    "return_delivered_order_items",
    "exchange_delivered_order_items",
)
_ZIP_RE = re.compile(r"^\d{5}$")


def _show(value: str, limit: int = 40) -> str:
    """An argument echoed in an error message: quoted and clipped (never replayed verbatim)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


class RetailTools:
    """Tool methods bound to one database and one session (the authenticated customer)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.user_id: str | None = None
        # pre-images of the orders the write tools touched, taken before their first change:
        # with them the env rebuilds the initial database without copying it at every reset
        self.pre_images: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ read tools

    def find_user_id_by_email(self, email: str) -> str:
        """Find a customer by email and authenticate them for this conversation.

        Args:
            email: The customer's email address, such as "mei.chen123@example.com".
        """
        wanted = email.strip().lower()
        for user in self.db["users"].values():
            if user["email"] == wanted:
                self.user_id = user["user_id"]
                return user["user_id"]
        raise ToolCallError(f"no customer with email {_show(email)}")

    def find_user_id_by_name_zip(self, first_name: str, last_name: str, zip: str) -> str:
        """Find a customer by full name and zip code and authenticate them for this conversation.

        Args:
            first_name: The customer's first name, such as "Mei".
            last_name: The customer's last name, such as "Chen".
            zip: The zip code of the customer's default address, such as "19122".
        """
        key = (first_name.strip().lower(), last_name.strip().lower(), zip.strip())
        for user in self.db["users"].values():
            if (
                user["first_name"].lower(),
                user["last_name"].lower(),
                user["address"]["zip"],
            ) == key:
                self.user_id = user["user_id"]
                return user["user_id"]
        raise ToolCallError("no customer with this name and zip code")

    def get_user_details(self, user_id: str) -> str:
        """Get the authenticated customer's profile, address, payment method and order ids.

        Args:
            user_id: The customer's user id, such as "mei_chen_1234".
        """
        self._require_auth()
        if user_id != self.user_id:
            raise ToolCallError(f"user {_show(user_id)} is not the authenticated customer")
        return json.dumps(self.db["users"][user_id])

    def get_order_details(self, order_id: str) -> str:
        """Get the status, items, address, tracking id and payments of one of the customer's orders.

        Args:
            order_id: The order id, starting with "#W", such as "#W0123456".
        """
        return json.dumps(self._own_order(order_id))

    def get_product_details(self, product_id: str) -> str:
        """Get a product's variants (item ids, options, prices and availability).

        Args:
            product_id: The product id, such as "4567890123" (order items carry it).
        """
        product = self.db["products"].get(product_id)
        if product is None:
            raise ToolCallError(f"no product with id {_show(product_id)}")
        return json.dumps(product)

    # ------------------------------------------------------------------ write tools

    def cancel_pending_order(
        self, order_id: str, reason: Literal["no longer needed", "ordered by mistake"]
    ) -> str:
        """Cancel a pending order and refund it in full to its payment method. Needs the customer's explicit confirmation first.

        Args:
            order_id: The order id, such as "#W0123456".
            reason: Why the customer cancels.
        """
        order = self._own_order(order_id, status="pending", action="cancelled")
        order["status"] = "cancelled"
        order["cancel_reason"] = reason
        self._refund(order, order_total(order["items"]), "refund")
        return json.dumps(order)

    def modify_pending_order_address(
        self, order_id: str, address1: str, city: str, state: str, zip: str
    ) -> str:
        """Change the shipping address of a pending order. Needs the customer's explicit confirmation first.

        Args:
            order_id: The order id, such as "#W0123456".
            address1: Street and number, such as "12 Oak St".
            city: The city, such as "Austin".
            state: The two-letter state code, such as "TX".
            zip: The five-digit zip code, such as "73301".
        """
        order = self._own_order(order_id, status="pending", action="modified")
        if not _ZIP_RE.match(zip.strip()):
            raise ToolCallError(f"zip code {_show(zip)} is not five digits")
        order["address"] = {
            "address1": address1.strip(),
            "city": city.strip(),
            "state": state.strip(),
            "zip": zip.strip(),
        }
        return json.dumps(order)

    def return_delivered_order_items(self, order_id: str, item_ids: list[str]) -> str:
        """Return items of a delivered order; the refund goes to the order's payment method. Needs the customer's explicit confirmation first.

        Args:
            order_id: The order id, such as "#W0123456".
            item_ids: The item ids to return, such as ["1008292230"].
        """
        order = self._own_order(order_id, status="delivered", action="returned")
        items = self._order_items(order, item_ids)
        order["status"] = "return requested"
        order["return_items"] = sorted(item_ids)
        self._refund(order, order_total(items), "refund")
        return json.dumps(order)

    def exchange_delivered_order_items(
        self, order_id: str, item_ids: list[str], new_item_ids: list[str]
    ) -> str:
        """Exchange items of a delivered order for other variants of the same products. Needs the customer's explicit confirmation first.

        Args:
            order_id: The order id, such as "#W0123456".
            item_ids: The item ids to exchange, such as ["1008292230"].
            new_item_ids: The new item ids, in the same order, such as ["1008292231"].
        """
        order = self._own_order(order_id, status="delivered", action="exchanged")
        items = self._order_items(order, item_ids)
        if len(new_item_ids) != len(item_ids):
            raise ToolCallError("item_ids and new_item_ids must have the same length")
        for old, new in zip(items, new_item_ids):
            variant = self.db["products"][old["product_id"]]["variants"].get(new)
            if variant is None:
                raise ToolCallError(
                    f"item {_show(new)} is not a variant of product {old['product_id']}"
                )
            if new == old["item_id"]:
                raise ToolCallError(f"item {_show(new)} is the same as the item being exchanged")
            if not variant["available"]:
                raise ToolCallError(f"item {_show(new)} is not available")
        diff = exchange_difference(self.db, order, item_ids, new_item_ids)
        order["status"] = "exchange requested"
        order["exchange_items"] = sorted(item_ids)
        order["exchange_new_items"] = sorted(new_item_ids)
        self._refund(order, diff, "exchange price difference")
        return json.dumps(order)

    # ------------------------------------------------------------------ other

    def think(self, thought: str) -> str:
        """Think out loud; changes nothing and is not shown to the customer.

        Args:
            thought: Your reasoning.
        """
        return "Thought logged."

    # ------------------------------------------------------------------ helpers

    def _require_auth(self) -> None:
        if self.user_id is None:
            raise ToolCallError(
                "the customer is not authenticated; call find_user_id_by_email "
                "or find_user_id_by_name_zip first"
            )

    def _own_order(
        self, order_id: str, status: str | None = None, action: str = ""
    ) -> dict[str, Any]:
        """The authenticated customer's order ``order_id``; for a write tool (``status`` given)
        check its status and keep its pre-image."""
        self._require_auth()
        order = self.db["orders"].get(order_id)
        if order is None or order["user_id"] != self.user_id:
            raise ToolCallError(f"no order {_show(order_id)} for the authenticated customer")
        if status is not None:  # a write tool
            if order["status"] != status:
                raise ToolCallError(
                    f"order {order_id} is {order['status']}; only {status} orders can be {action}"
                )
            self.pre_images.setdefault(order_id, json.loads(json.dumps(order)))
        return order

    @staticmethod
    def _order_items(order: dict[str, Any], item_ids: list[str]) -> list[dict[str, Any]]:
        if not item_ids:
            raise ToolCallError("item_ids must not be empty")
        if len(set(item_ids)) != len(item_ids):
            raise ToolCallError("item_ids must not repeat")
        by_id = {i["item_id"]: i for i in order["items"]}
        missing = [i for i in item_ids if i not in by_id]
        if missing:
            raise ToolCallError(f"item {_show(missing[0])} is not in order {order['order_id']}")
        return [by_id[i] for i in item_ids]

    @staticmethod
    def _refund(order: dict[str, Any], amount: float, kind: str) -> None:
        order["payment_history"].append(
            {
                "transaction_type": kind,
                "amount": round(amount, 2),
                "payment_method_id": order["payment_method_id"],
            }
        )


RETAIL_TOOLBOX = Toolbox(RetailTools, READ_TOOLS + WRITE_TOOLS + ("think",))
