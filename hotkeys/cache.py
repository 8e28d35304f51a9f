"""The near cache: replies to reads of hot keys, kept in the proxy for a short time.

Correctness rests on two rules:

- a write to a key through this proxy invalidates the key's entries *before* the write is
  sent, so a read after an acknowledged write never sees an older entry;
- every key has a version, bumped by each invalidation; a read records the version when it
  is sent and its reply is stored only if the version is unchanged when the reply arrives
  (a reply that raced a write is never cached).

Writes made elsewhere (another proxy, a client on the node) are reported by the nodes
(CLIENT TRACKING, see router/hotkeys_service.py) and invalidate the same way; the TTL bounds
how long an entry can live if such a report is lost. Memory is bounded by entries and bytes
(least recently used first out).
"""

from __future__ import annotations

from collections import OrderedDict


class NearCache:
    """``(request, protocol) -> raw reply``, with per-key invalidation."""

    def __init__(self, ttl: float = 0.1, max_entries: int = 10_000,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[bytes, float, bytes]] = OrderedDict()
        self._by_key: dict[bytes, set[tuple]] = {}
        self._versions: dict[bytes, int] = {}
        self._floor = 0  # the version of every key not in _versions
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self.stored = 0
        self.joined = 0
        # reads sent to fill an entry: entry -> (version, sent at, sessions' slots waiting)
        self._fills: dict[tuple, tuple[int, float, list]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, entry: tuple, now: float) -> bytes | None:
        found = self._entries.get(entry)
        if found is None:
            self.misses += 1
            return None
        raw, expires, key = found
        if now >= expires:
            self._drop(entry)
            self.misses += 1
            return None
        self._entries.move_to_end(entry)
        self.hits += 1
        return raw

    def version(self, key: bytes) -> int:
        return self._versions.get(key, self._floor)

    def put(self, entry: tuple, key: bytes, raw: bytes, version: int, now: float) -> bool:
        """Store a reply read at ``version``; refused if the key changed since (or the reply
        is an error, or too large to be worth it)."""
        if self._versions.get(key, self._floor) != version or raw[:1] in (b"-", b"!"):
            return False
        if len(raw) > self.max_bytes // 16:
            return False
        if entry in self._entries:
            self._drop(entry)
        self._entries[entry] = (raw, now + self.ttl, key)
        self._by_key.setdefault(key, set()).add(entry)
        self.bytes += len(raw)
        self.stored += 1
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
        return True

    def waiters_of_fill(self, entry: tuple, version: int, now: float) -> list | None:
        """The waiting list of a read already on its way to fill ``entry``, if a read of the
        same key arriving now may share its reply: nothing invalidated the key since that read
        was sent (same version) and it left less than a TTL ago. Sharing is as fresh as the
        cache itself, and spares the node the burst of misses after every write of a hot key.
        """
        fill = self._fills.get(entry)
        if fill is not None and fill[0] == version and now - fill[1] < self.ttl:
            self.joined += 1
            return fill[2]
        return None

    def begin_fill(self, entry: tuple, version: int, now: float) -> list:
        """A read is sent to fill ``entry``: later reads can wait on the list returned."""
        waiters: list = []
        self._fills[entry] = (version, now, waiters)
        return waiters

    def end_fill(self, entry: tuple, waiters: list) -> None:
        fill = self._fills.get(entry)
        if fill is not None and fill[2] is waiters:
            del self._fills[entry]

    def invalidate(self, key: bytes) -> None:
        """The key changed (or is about to): drop its entries, and refuse replies read before."""
        self._versions[key] = self._versions.get(key, self._floor) + 1
        entries = self._by_key.pop(key, None)
        if entries:
            self.invalidations += 1
            for entry in entries:
                found = self._entries.pop(entry, None)
                if found is not None:
                    self.bytes -= len(found[0])
        if len(self._versions) > 4 * self.max_entries:
            self._forget_versions()

    def clear(self) -> None:
        """Everything may be stale (a node's invalidation stream was interrupted): drop it
        all, and refuse every reply read before now."""
        self._entries.clear()
        self._by_key.clear()
        self.bytes = 0
        self._floor = max(self._versions.values(), default=self._floor) + 1
        self._versions.clear()
        self.invalidations += 1

    def _drop(self, entry: tuple) -> None:
        raw, _, key = self._entries.pop(entry)
        self.bytes -= len(raw)
        entries = self._by_key.get(key)
        if entries is not None:
            entries.discard(entry)
            if not entries:
                del self._by_key[key]

    def _forget_versions(self) -> None:
        """Versions only matter for reads in flight: move every key to one new generation,
        newer than any recorded, so memory stays bounded and no old read is stored."""
        self._floor = max(self._versions.values(), default=self._floor) + 1
        self._versions = {}
        for key in list(self._by_key):  # their entries are still valid at the new floor
            self._versions[key] = self._floor

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self.bytes, "hits": self.hits,
                "misses": self.misses, "invalidations": self.invalidations,
                "stored": self.stored, "joined": self.joined}
