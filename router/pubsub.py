"""Pub/sub on a sharded keyspace, without sockets.

A channel lives on the node its name hashes to (PUBLISH goes there too), so SUBSCRIBE is
sent to that node only; a pattern can match channels on any node, so PSUBSCRIBE is sent to
every node. Each node sees its own share of a client's subscriptions and counts them its
own way, so the proxy confirms (un)subscriptions itself, with the client's totals, and drops
the nodes' confirmations; messages pass through verbatim.

``Subscriptions`` decides, for each (un)subscribe request, what to send to which node and
what to confirm to the client.
"""

from __future__ import annotations

from collections.abc import Callable

from . import resp

#: Commands a RESP2 client may send once subscribed (Redis's rule).
ALLOWED_WHILE_SUBSCRIBED = frozenset({
    b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE",
    b"SUNSUBSCRIBE", b"PING", b"QUIT", b"RESET"})

#: Node replies the proxy answers itself (their counts are per node).
CONFIRMATIONS = frozenset({b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe",
                           b"punsubscribe", b"sunsubscribe"})

Send = list[tuple[int, list[bytes]]]  # (node, command) pairs


def confirmation(kind: bytes, name: bytes | None, count: int, proto: int) -> bytes:
    """``[kind, name, count]``: an array in RESP2, a push in RESP3."""
    head = b">3\r\n" if proto == 3 else b"*3\r\n"
    return head + resp.bulk(kind) + resp.bulk(name, proto) + resp.integer(count)


def message_kind(raw: bytes) -> bytes:
    """The first element of a pub/sub array or push (``message``, ``subscribe``...)."""
    parts = raw.split(b"\r\n", 3)
    return parts[2] if len(parts) > 2 else b""


class Subscriptions:
    """One client's channels, patterns and shard channels, and the node of each."""

    def __init__(self, node_of: Callable[[bytes], int], node_count: int) -> None:
        self.node_of = node_of
        self.node_count = node_count
        self.channels: dict[bytes, int] = {}
        self.patterns: set[bytes] = set()
        self.shard_channels: dict[bytes, int] = {}

    @property
    def active(self) -> bool:
        return bool(self.channels or self.patterns or self.shard_channels)

    def _count(self, shard: bool) -> int:
        return len(self.shard_channels) if shard else len(self.channels) + len(self.patterns)

    def subscribe(self, names: list[bytes], proto: int, shard: bool = False) -> tuple[Send, bytes]:
        table = self.shard_channels if shard else self.channels
        kind = b"ssubscribe" if shard else b"subscribe"
        command = b"SSUBSCRIBE" if shard else b"SUBSCRIBE"
        per_node: dict[int, list[bytes]] = {}
        replies = []
        for name in names:
            if name not in table:
                node = self.node_of(name)
                table[name] = node
                per_node.setdefault(node, [command]).append(name)
            replies.append(confirmation(kind, name, self._count(shard), proto))
        return list(per_node.items()), b"".join(replies)

    def psubscribe(self, patterns: list[bytes], proto: int) -> tuple[Send, bytes]:
        new = [p for p in dict.fromkeys(patterns) if p not in self.patterns]
        replies = []
        for pattern in patterns:
            self.patterns.add(pattern)
            replies.append(confirmation(b"psubscribe", pattern, self._count(False), proto))
        sends = [(node, [b"PSUBSCRIBE", *new]) for node in range(self.node_count)] if new else []
        return sends, b"".join(replies)

    def unsubscribe(self, names: list[bytes], proto: int, shard: bool = False) -> tuple[Send, bytes]:
        table = self.shard_channels if shard else self.channels
        kind = b"sunsubscribe" if shard else b"unsubscribe"
        command = b"SUNSUBSCRIBE" if shard else b"UNSUBSCRIBE"
        targets = names or list(table)
        if not targets:
            return [], confirmation(kind, None, self._count(shard), proto)
        per_node: dict[int, list[bytes]] = {}
        replies = []
        for name in targets:
            node = table.pop(name, None)
            if node is not None:
                per_node.setdefault(node, [command]).append(name)
            replies.append(confirmation(kind, name, self._count(shard), proto))
        return list(per_node.items()), b"".join(replies)

    def punsubscribe(self, patterns: list[bytes], proto: int) -> tuple[Send, bytes]:
        targets = patterns or sorted(self.patterns)
        if not targets:
            return [], confirmation(b"punsubscribe", None, self._count(False), proto)
        gone = [p for p in dict.fromkeys(targets) if p in self.patterns]
        replies = []
        for pattern in targets:
            self.patterns.discard(pattern)
            replies.append(confirmation(b"punsubscribe", pattern, self._count(False), proto))
        sends = [(node, [b"PUNSUBSCRIBE", *gone]) for node in range(self.node_count)] if gone else []
        return sends, b"".join(replies)
