"""A small application for replicated-database tests: items written and read by signals."""
from __future__ import annotations

from typing import Any

from lexicons import ModelManager, SignalManager
from lexicons.data.model import Model
from lexicons.signal import Signal


class Item(Model):
    """One row written by a test client."""

    name: str
    n: int
    node: str
    tags: set[str]


class Add(Signal):
    """Create an item; answer its pk."""

    def execute(self, name: str, n: int, node: str, db: Any) -> Any:
        return db.create(Item, name=name, n=n, node=node, tags={node, str(n % 3)}).pk


class Claim(Signal):
    """get_or_create the item named *name*; answer its pk and whether this call made it."""

    def execute(self, name: str, node: str, db: Any) -> Any:
        row, created = db.get_or_create(Item, name=name, defaults={"n": 0, "node": node})
        return {"pk": row.pk, "created": created, "node": row.node}


class Bump(Signal):
    """Set the item's n."""

    def execute(self, pk: str, n: int, db: Any) -> Any:
        return db.update(Item, pk, n=n).n


class Dump(Signal):
    """Catch up with the cluster, then answer every item, ordered by pk."""

    def execute(self, db: Any) -> Any:
        db.sync()
        return db.query(Item, _sort="pk").to_dicts()


models = ModelManager(Item)
signals = SignalManager(Add, Claim, Bump, Dump)
