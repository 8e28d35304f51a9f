"""What a node connection's FIFO holds for each request: an *entry* whose ``fill(raw_reply)``
records the reply and returns the client session to flush (or None).

A ``Slot`` is one reply to come, in its client's order. A ``FanoutSlot`` is one reply made
from several nodes' replies: each node gets a ``Part``, and the last part to arrive runs the
merge. Node connections special-case ``Slot`` (the common case) to save a call per reply.
"""

from __future__ import annotations

import logging
from typing import Any

from router import resp

log = logging.getLogger("ringleader.slots")


class Slot:
    """A reply to come, in the client's order; ``fill`` is called by the node connection."""

    __slots__ = ("data", "client")

    def __init__(self, client: Any) -> None:
        self.data: bytes | None = None
        self.client = client

    def fill(self, raw: bytes) -> Any:
        self.data = raw
        return self.client


class HookSlot(Slot):
    """A Slot whose reply is also shown to ``hook`` (the near cache keeps hot replies)."""

    __slots__ = ("hook",)

    def __init__(self, client: Any, hook) -> None:
        super().__init__(client)
        self.hook = hook

    def fill(self, raw: bytes) -> Any:
        self.data = raw
        try:
            self.hook(raw)
        except Exception:  # a hook must never take the node reader down
            log.exception("reply hook failed")
        return self.client


class FanoutSlot:
    """A reply assembled from several nodes' replies by ``merge`` once all are in."""

    __slots__ = ("data", "client", "parts", "remaining", "merge")

    def __init__(self, client: Any, count: int, merge) -> None:
        self.data: bytes | None = None
        self.client = client
        self.parts: list[bytes] = [b""] * count
        self.remaining = count
        self.merge = merge


class Part:
    __slots__ = ("parent", "index")

    def __init__(self, parent: FanoutSlot, index: int) -> None:
        self.parent = parent
        self.index = index

    def fill(self, raw: bytes) -> Any | None:
        parent = self.parent
        parent.parts[self.index] = raw
        parent.remaining -= 1
        if parent.remaining:
            return None
        try:
            parent.data = parent.merge(parent.parts, parent.client.proto)
        except Exception as exc:  # a merge must never take the node reader down
            log.exception("merge failed")
            parent.data = resp.error(f"ERR ringleader: could not merge replies ({exc})")
        return parent.client


class ItemsPart(Part):
    """A part whose reply is an array the merge takes apart (MGET's values): the node
    connection frames it with ``frame``, keeping its elements, and the merge gets that list
    instead of the raw reply. A reply of another type (an error) still arrives raw."""

    __slots__ = ("items",)

    def __init__(self, parent: FanoutSlot, index: int) -> None:
        super().__init__(parent, index)
        self.items: list[bytes] | None = None

    def frame(self, buf: bytes, pos: int, n: int) -> int:
        end, self.items = resp.array_elements(buf, pos, n)
        return end

    def fill(self, raw: bytes) -> Any | None:
        items = self.items
        return Part.fill(self, raw if items is None else items)  # type: ignore[arg-type]


class Discard:
    """A reply nobody waits for (MULTI's +OK and the +QUEUED replies of a transaction sent in
    one batch): dropped on arrival."""

    __slots__ = ()

    def fill(self, raw: bytes) -> None:
        return None
