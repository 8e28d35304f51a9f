"""A bounded table of candidate hot keys, each with its own count.

The sketch can estimate any key but cannot list the big ones; this table remembers the keys
whose estimate crossed the hot threshold, so a window rollover only has to look at a hundred
or so keys. A key enters with the sketch's estimate and from then on its owner counts it here,
exactly, in place (``table.counts[key] += 1``: the request path cannot afford a method call),
instead of in the sketch.

When full, a newcomer replaces the entry with the smallest count, and only if its own
estimate is larger: a flood of keys just over the threshold cannot push out a key far above
it. A lower bound of the smallest count is cached, so most newcomers that would not get in
are turned away without a scan of the table (128 entries by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple


class Offer(NamedTuple):
    """What ``TopK.offer`` did: whether the key is in the table now, who left, with what count."""

    admitted: bool
    evicted: bytes | None = None
    evicted_count: int = 0


_REJECTED = Offer(False)
_ADMITTED = Offer(True)


class TopK:
    """At most ``capacity`` keys, keeping the largest counts."""

    __slots__ = ("capacity", "counts", "_bar")

    def __init__(self, capacity: int = 128) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        #: key -> count. The owner may increment counts in place; nothing else may change.
        self.counts: dict[bytes, int] = {}
        # At most the smallest count while the table is full: counts only grow in place,
        # and removing an entry or halving all of them keeps it a lower bound.
        self._bar = -1

    def offer(self, key: bytes, estimate: int) -> Offer:
        """Admit ``key`` with ``estimate``; when full, evict the smallest entry if smaller.

        A key already in the table keeps its own count.
        """
        counts = self.counts
        if key in counts:
            return _ADMITTED
        if len(counts) < self.capacity:
            counts[key] = estimate
            return _ADMITTED
        if estimate <= self._bar:
            return _REJECTED
        victim = min(counts, key=counts.__getitem__)
        smallest = self._bar = counts[victim]
        if estimate <= smallest:
            return _REJECTED
        del counts[victim]
        counts[key] = estimate
        return Offer(True, victim, smallest)

    def discard(self, key: bytes) -> int | None:
        """Forget ``key``; its count, or None if it was not in the table."""
        return self.counts.pop(key, None)

    def halve(self) -> None:
        """Halve every count (rounding down), in step with the sketch's decay."""
        counts = self.counts
        for key, count in counts.items():
            counts[key] = count >> 1
        if self._bar > 0:
            self._bar >>= 1

    def items(self) -> list[tuple[bytes, int]]:
        """``(key, count)`` pairs, largest first."""
        return sorted(self.counts.items(), key=lambda kv: kv[1], reverse=True)

    def __contains__(self, key: object) -> bool:
        return key in self.counts

    def __len__(self) -> int:
        return len(self.counts)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self.counts))

    def __repr__(self) -> str:
        return f"TopK({len(self.counts)}/{self.capacity})"
