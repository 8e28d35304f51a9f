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


class Discard:
    """A reply nobody waits for (MULTI's +OK and the +QUEUED replies of a transaction sent in
    one batch): dropped on arrival."""

    __slots__ = ()

    def fill(self, raw: bytes) -> None:
        return None
