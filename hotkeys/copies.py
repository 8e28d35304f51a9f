"""Replicated hot keys (sans-I/O bookkeeping): copies of a read-hot key on other nodes.

Copy ``i`` of ``key`` is ``{rlcopy-N}key`` on the node the tag ``rlcopy-N`` hashes to. Copies
are made with ``DUMP`` / ``RESTORE ... ABSTTL`` (the owner's absolute expiry, so they expire
together) and serve reads only while no write has happened since they were made:

- a write to the key switches reads back to the owner *before* it is sent, and the copies
  are dropped; they are made again at the next window if the key is still hot;
- a copy job records the key's version when it starts and is used only if no write came in
  between (a copy of an older value is never served).
"""

from __future__ import annotations

COPY_PREFIX = b"{rlcopy-"


def copy_key(tag: bytes, key: bytes) -> bytes:
    return b"{" + tag + b"}" + key


class CopySet:
    """One replicated key: where its copies are and whether they may serve reads."""

    def __init__(self, key: bytes, owner: int, copies: list[tuple[int, bytes]],
                 places: list | None = None) -> None:
        self.key = key
        self.owner = owner
        self.copies = copies  # (node, copy name)
        #: where each copy was made (node addresses): copies never move, and after a
        #: topology change node indexes may mean other nodes, so they are dropped from here
        self.places = places if places is not None else [None] * len(copies)
        self.version = 0  # bumped by every write
        self.active = False  # copies are current: reads may use them
        self.copying = False
        self._next = 0

    def pick(self) -> tuple[int, bytes | None]:
        """Where the next read goes: the owner (None: the key itself) or a copy."""
        self._next = (self._next + 1) % (len(self.copies) + 1)
        if self._next == 0 or not self.active:
            return self.owner, None
        return self.copies[self._next - 1]

    def written(self) -> None:
        """A write is about to be sent: reads go to the owner from now on."""
        self.version += 1
        self.active = False
