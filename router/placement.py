"""Key to node: hash tag extraction, key hash, then the distribution's lookup.

This is the hot path of every request, so it is a few attribute reads and calls, nothing more.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from .ring import Distribution, Ring


class Placement:
    """Maps a key to a node index; immutable, shared by the proxy and the library client.

    ``node_index(key)`` hashes only the tag when the key has one: from the first opening
    character to the first closing one after it. When that tag is empty or never closed, the
    whole key is hashed and no later tag is looked for (exactly as twemproxy does).
    """

    __slots__ = ("hash", "distribution", "hash_tag", "node_index", "_opening", "_closing")

    def __init__(self, hash_fn: Callable[[bytes], int], distribution: Distribution,
                 hash_tag: bytes | None = b"{}") -> None:
        if hash_tag is not None and len(hash_tag) != 2:
            raise ValueError("hash_tag must be exactly two characters, such as '{}'")
        self.hash = hash_fn
        self.distribution = distribution
        self.hash_tag = hash_tag or None
        self.node_index: Callable[[bytes], int] = _compile(hash_fn, distribution, self.hash_tag)
        self._opening = self.hash_tag[0:1] if self.hash_tag else b""
        self._closing = self.hash_tag[1:2] if self.hash_tag else b""

    def key_hash(self, key: bytes) -> int:
        """The point of the ring ``key`` falls on (off the hot path: planning, moving)."""
        if self._opening:
            key = hashed_part(key, self._opening, self._closing)
        return self.hash(key)


def hashed_part(key: bytes, opening: bytes, closing: bytes) -> bytes:
    start = key.find(opening)
    if start >= 0:
        end = key.find(closing, start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def _compile(hash_fn: Callable[[bytes], int], distribution: Distribution,
             tag: bytes | None) -> Callable[[bytes], int]:
    """One closure per placement, with everything it needs in local variables: this runs
    for every key of every request, so a ring lookup is inlined rather than called."""
    opening, closing = (tag[0:1], tag[1:2]) if tag else (b"", b"")
    if not isinstance(distribution, Ring):
        lookup = distribution.lookup
        if tag is None:
            return lambda key: lookup(hash_fn(key))
        return lambda key: lookup(hash_fn(hashed_part(key, opening, closing)))
    tokens = distribution.tokens
    owners = [*distribution.owners, distribution.owners[0]]  # past the last token: wrap
    table, shift = bucket_table(tokens, owners)

    def ring(key: bytes) -> int:
        h = hash_fn(key)
        try:
            owner = table[h >> shift]
        except IndexError:  # a hash beyond the last token's width: the table does not reach
            owner = None
        return owners[bisect_left(tokens, h)] if owner is None else owner

    if tag is None:
        return ring

    opening_byte = opening[0]

    def ring_tagged(key: bytes) -> int:
        # hashed_part() inlined: this runs for every key of every request. A byte's
        # membership test (no method call) rules out most keys, which have no tag.
        if opening_byte in key:
            start = key.find(opening)
            end = key.find(closing, start + 1)
            if end > start + 1:
                key = key[start + 1:end]
        h = hash_fn(key)
        try:
            owner = table[h >> shift]
        except IndexError:
            owner = None
        return owners[bisect_left(tokens, h)] if owner is None else owner

    return ring_tagged


#: At most 2**16 buckets (512 KB of pointers): about 4 buckets per token for the default ring.
MAX_TABLE_BITS = 16


def bucket_table(tokens: list[int], owners: list[int]) -> tuple[list[int | None], int]:
    """The owner of every bucket of the hash space that no token cuts (None where one does).

    A bisect over thousands of tokens is a dozen comparisons of big ints scattered in memory;
    one list index by the hash's top bits answers most keys, and only keys in the few buckets a
    token cuts fall back to the bisect. ``owners`` has one extra entry for hashes past the last
    token. Bucket ``b`` holds hashes ``[b << shift, (b + 1) << shift)``; the width is the last
    token's, so a larger hash (outside every bucket) also falls back.
    """
    bits = min(MAX_TABLE_BITS, max(4, (4 * len(tokens)).bit_length()))
    width = max(tokens[-1].bit_length(), bits)
    shift = width - bits
    table: list[int | None] = [None] * (1 << bits)
    i, n = 0, len(tokens)
    step = 1 << shift
    for b in range(1 << bits):
        lo = b << shift
        while i < n and tokens[i] < lo:
            i += 1
        # every hash in [lo, lo + step) bisects to i unless a token lies in [lo, lo + step - 1)
        if i >= n or tokens[i] >= lo + step - 1:
            table[b] = owners[i]
    return table, shift
