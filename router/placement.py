"""Key to node: hash tag extraction, key hash, then the distribution's lookup.

This is the hot path of every request, so it is a few attribute reads and calls, nothing more.
"""

from __future__ import annotations

from collections.abc import Callable

from .ring import Distribution


class Placement:
    """Maps a key to a node index; immutable, shared by the proxy and the library client."""

    __slots__ = ("hash", "distribution", "hash_tag", "_open", "_close")

    def __init__(self, hash_fn: Callable[[bytes], int], distribution: Distribution,
                 hash_tag: bytes | None = b"{}") -> None:
        if hash_tag is not None and len(hash_tag) != 2:
            raise ValueError("hash_tag must be exactly two characters, such as '{}'")
        self.hash = hash_fn
        self.distribution = distribution
        self.hash_tag = hash_tag or None
        self._open = hash_tag[0:1] if hash_tag else b""
        self._close = hash_tag[1:2] if hash_tag else b""

    def node_index(self, key: bytes) -> int:
        """Hash only the tag: from the first opening character to the first closing one
        after it. When that tag is empty or never closed, the whole key is hashed and no later
        tag is looked for (exactly as twemproxy does)."""
        if self._open:
            start = key.find(self._open)
            if start >= 0:
                end = key.find(self._close, start + 1)
                if end > start + 1:
                    key = key[start + 1:end]
        return self.distribution.lookup(self.hash(key))
