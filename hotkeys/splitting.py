"""Counter splitting (sans-I/O): a write-hot INCR-family key spread over sub-keys on other
nodes, each increment going to one of them, a read summing them all.

Sub-key ``i`` of ``key`` is ``{rlsplit-N}key`` where the tag ``rlsplit-N`` is chosen so that
it hashes to node ``i``'s arc: the sub-keys land on distinct nodes without any table. The
key itself is part 0, on its own node, so splitting starts without moving anything and
merging back is folding the sub-keys into it (GETDEL then INCRBY: no increment lost).

Opt-in per key pattern: a read of the sum is not atomic (parts are read on several nodes).
"""

from __future__ import annotations

from collections.abc import Callable

from router import resp

SUB_PREFIX = b"{rlsplit-"

#: String counters only: a hash field counter (HINCRBY) is not split.
INCREMENTS = frozenset({"incr", "incrby", "decr", "decrby", "incrbyfloat"})
SUMMED_READS = frozenset({"get"})


def node_tags(node_of: Callable[[bytes], int], nodes: int, limit: int = 100_000,
              prefix: bytes = b"rlsplit-") -> dict[int, bytes]:
    """For each node, a hash tag that places keys on it."""
    tags: dict[int, bytes] = {}
    for n in range(limit):
        tag = prefix + b"%d" % n
        node = node_of(tag)
        if node >= 0 and node not in tags:
            tags[node] = tag
            if len(tags) == nodes:
                break
    return tags


def sub_key(tag: bytes, key: bytes) -> bytes:
    return b"{" + tag + b"}" + key


def original_of(sub: bytes) -> bytes | None:
    """The counter a sub-key belongs to (None if ``sub`` is not one)."""
    if not sub.startswith(SUB_PREFIX):
        return None
    end = sub.find(b"}")
    return sub[end + 1:] if end > 0 else None


def parse_number(raw: bytes) -> int | float | None:
    """An integer reply, or a bulk holding a number (INCRBYFLOAT, GET); None for nil."""
    if raw[:1] == b":":
        return int(raw[1:-2])
    if raw[:1] in (b"$", b"=", b","):
        if raw in (resp.NULL2,):
            return None
        body = raw[raw.find(b"\r\n") + 2:-2] if raw[:1] != b"," else raw[1:-2]
        try:
            return int(body)
        except ValueError:
            return float(body)
    if raw == resp.NULL3:
        return None
    raise ValueError(f"not a number: {raw[:40]!r}")


def encode_number(value: int | float, like: bytes, proto: int) -> bytes:
    """``value`` in the shape of ``like`` (an integer reply, or a bulk for floats/GET)."""
    if like[:1] == b":" and isinstance(value, int):
        return resp.integer(value)
    text = repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, float) and text.endswith(".0"):
        text = text[:-2]
    return resp.bulk(text)


class SplitCounter:
    """One split key: its parts, the last value seen of each, increments in flight."""

    def __init__(self, key: bytes, parts: list[tuple[int, bytes]]) -> None:
        self.key = key
        self.parts = parts  # (node, key name); parts[0] is the key itself
        self.values: list[int | float] = [0] * len(parts)
        self.outstanding = 0  # increments sent to sub-keys, not yet answered
        self._next = 0

    def pick(self) -> int:
        self._next = (self._next + 1) % len(self.parts)
        return self._next

    def record(self, index: int, raw: bytes) -> None:
        value = parse_number(raw)
        if value is not None:
            self.values[index] = value

    def total(self) -> int | float:
        return sum(self.values)


def sum_parts(parts: list[bytes], proto: int) -> bytes:
    """GET/HGET of a split counter: the parts' values added (nil if none exists)."""
    for part in parts:
        if part[:1] in (b"-", b"!"):
            return part
    values = [parse_number(p) for p in parts]
    present = [v for v in values if v is not None]
    if not present:
        return resp.null(proto)
    return encode_number(sum(present), b"$", proto)


def any_part(parts: list[bytes], proto: int) -> bytes:
    """DEL/UNLINK/EXISTS of a split counter: 1 if any part answered 1."""
    for part in parts:
        if part[:1] in (b"-", b"!"):
            return part
    return resp.integer(1 if any(p != b":0\r\n" for p in parts) else 0)


def first_part(parts: list[bytes], proto: int) -> bytes:
    """Any other command, run on every part: the key's own reply."""
    return parts[0]
