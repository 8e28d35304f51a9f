"""Routes: small objects that each serve a command one way, chosen per command at startup.

A route never touches a socket. It tells its *sink* (the client session, or a test double)
what to do: ``forward`` a request to one node, ``fanout`` parts of it to several nodes and
merge their replies, or ``reply`` at once. The proxy and the library client share them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from hotkeys.reserved import RESERVED

from . import resp
from .commands import CommandError
from .placement import Placement

Merge = Callable[[list[bytes], int], bytes]


class Sink(Protocol):
    """What a route may ask of whoever runs it."""

    proto: int

    def forward(self, node: int, args: list[bytes]) -> None: ...

    def fanout(self, calls: list[tuple[int, list[bytes]]], merge: Merge) -> None: ...

    def reply(self, raw: bytes) -> None: ...


def arity_ok(arity: int, argc: int) -> bool:
    return argc == arity if arity > 0 else argc >= -arity


class Route:
    """Base: checks arity, then ``run``. Subclasses on the hot path inline both."""

    __slots__ = ("name", "arity", "arity_reply")

    def __init__(self, name: str, arity: int) -> None:
        self.name = name
        self.arity = arity
        self.arity_reply = resp.error(f"ERR wrong number of arguments for '{name}' command")

    def serve(self, args: list[bytes], sink: Sink) -> None:
        n = len(args)
        a = self.arity
        if (n != a) if a > 0 else (n < -a):
            sink.reply(self.arity_reply)
            return
        self.run(args, sink)

    def run(self, args: list[bytes], sink: Sink) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        """How this route serves its command, for docs and ``ringleader commands``."""
        return type(self).__name__


class Refuse(Route):
    """A command ringleader will not run, with the reason in the error."""

    __slots__ = ("error_reply",)

    def __init__(self, name: str, arity: int, message: str) -> None:
        super().__init__(name, arity)
        self.error_reply = resp.error(message)

    def serve(self, args: list[bytes], sink: Sink) -> None:
        sink.reply(self.error_reply)

    def describe(self) -> str:
        return "refused: " + self.error_reply[1:-2].decode()


class Local(Route):
    """Answered by the proxy itself: ``handler(args, sink)`` returns the encoded reply (or
    None when the handler has arranged for the reply itself, e.g. EXEC)."""

    __slots__ = ("handler",)

    def __init__(self, name: str, arity: int,
                 handler: Callable[[list[bytes], Sink], bytes | None]) -> None:
        super().__init__(name, arity)
        self.handler = handler

    def run(self, args: list[bytes], sink: Sink) -> None:
        raw = self.handler(args, sink)
        if raw is not None:
            sink.reply(raw)

    def describe(self) -> str:
        return "proxy-local"


class FirstNode(Route):
    """Keyless and node-independent (COMMAND DOCS, say): the first node answers."""

    __slots__ = ()

    def run(self, args: list[bytes], sink: Sink) -> None:
        sink.forward(0, args)

    def describe(self) -> str:
        return "forwarded to the first node"


class SingleKey(Route):
    """The common case: one key at a fixed position; forwarded to its owner untouched."""

    __slots__ = ("pos", "node_of")

    def __init__(self, name: str, arity: int, pos: int, placement: Placement) -> None:
        super().__init__(name, arity)
        self.pos = pos
        self.node_of = placement.node_index

    def serve(self, args: list[bytes], sink: Sink) -> None:
        n = len(args)
        a = self.arity
        if (n != a) if a > 0 else (n < -a):
            sink.reply(self.arity_reply)
            return
        sink.forward(self.node_of(args[self.pos]), args)

    def describe(self) -> str:
        return "to the key's node"


class Channel(Route):
    """PUBLISH / SPUBLISH: to the node the channel name hashes to, where its subscribers
    are (SUBSCRIBE places them the same way)."""

    __slots__ = ("node_of",)

    def __init__(self, name: str, arity: int, placement: Placement) -> None:
        super().__init__(name, arity)
        self.node_of = placement.node_index

    def run(self, args: list[bytes], sink: Sink) -> None:
        sink.forward(self.node_of(args[1]), args)

    def describe(self) -> str:
        return "to the channel's node"


class PolicyKey(SingleKey):
    """SingleKey when read policies or write acknowledgements are configured: reads and
    writes go through the sink's policy-aware paths (replicas, WAIT after writes)."""

    __slots__ = ("mode",)

    def __init__(self, name: str, arity: int, pos: int, placement: Placement, mode: str) -> None:
        super().__init__(name, arity, pos, placement)
        self.mode = mode  # "read", "write" or "" (neither: plain forward)

    def serve(self, args: list[bytes], sink: Sink) -> None:
        n = len(args)
        a = self.arity
        if (n != a) if a > 0 else (n < -a):
            sink.reply(self.arity_reply)
            return
        key = args[self.pos]
        node = self.node_of(key)
        send_with_policy(sink, self.mode, node, args, key)

    def describe(self) -> str:
        return f"to the key's node ({self.mode or 'primary'} policy)"


def send_with_policy(sink: Sink, mode: str, node: int, args: list[bytes], key: bytes) -> None:
    if mode == "read":
        sink.forward_read(node, args, key)
    elif mode == "write":
        sink.forward_write(node, args, key)
    else:
        sink.forward(node, args)


def cross_node_error(name: str, args: list[bytes], positions: Sequence[int], node_of,
                     labels: Sequence[str]) -> bytes:
    """A ``-CROSSSLOT`` reply naming two keys that live on different nodes, and the fix."""
    first = positions[0]
    home = node_of(args[first])
    for p in positions[1:]:
        other = node_of(args[p])
        if other != home:
            a = args[first].decode(errors="replace")[:64]
            b = args[p].decode(errors="replace")[:64]
            return resp.error(
                f"CROSSSLOT Keys in request don't hash to the same node: '{name.upper()}' needs "
                f"all its keys on one node, but '{a}' is on {labels[home]} and '{b}' is on "
                f"{labels[other]}; put the keys under one hash tag, e.g. {{user1}}:a and "
                "{user1}:b")
    raise ValueError("all keys are on one node")


class SameNode(Route):
    """Several keys that must live on one node (SINTERSTORE, RENAME, EVAL...): forwarded
    when they do, refused with ``-CROSSSLOT`` when they do not. Keyless invocations (EVAL
    with numkeys 0) go to the first node, so they are deterministic."""

    __slots__ = ("spec", "node_of", "labels", "keyless_reply", "mode")

    def __init__(self, spec, placement: Placement, labels: Sequence[str],
                 keyless_error: str | None = None, mode: str = "") -> None:
        super().__init__(spec.name, spec.arity)
        self.spec = spec
        self.node_of = placement.node_index
        self.labels = labels
        self.keyless_reply = resp.error(keyless_error) if keyless_error else None
        self.mode = mode  # read/write policy, when policies are configured

    def home(self, args: list[bytes], sink: Sink) -> int | None:
        """The node all the keys are on; None after replying an error."""
        try:
            positions = self.spec.key_positions(args)
        except CommandError as exc:  # malformed numkeys and the like
            sink.reply(resp.error(str(exc)))
            return None
        if not positions:
            if self.keyless_reply is not None:
                sink.reply(self.keyless_reply)
                return None
            return 0
        node_of = self.node_of
        home = node_of(args[positions[0]])
        for p in positions[1:]:
            if node_of(args[p]) != home:
                sink.reply(cross_node_error(self.name, args, positions, node_of, self.labels))
                return None
        return home

    def run(self, args: list[bytes], sink: Sink) -> None:
        node = self.home(args, sink)
        if node is not None:
            if self.mode:
                positions = self.spec.key_positions(args)
                send_with_policy(sink, self.mode, node, args, args[positions[0]] if positions
                                 else b"")
            else:
                sink.forward(node, args)

    def describe(self) -> str:
        return "all keys on one node, else -CROSSSLOT"


class Blocking(SameNode):
    """Blocking commands (BLPOP, BLMOVE, XREAD BLOCK...): all keys on one node, run on the
    client's own connection to that node, so a client blocked for minutes holds up no one."""

    __slots__ = ()

    def run(self, args: list[bytes], sink: Sink) -> None:
        node = self.home(args, sink)
        if node is not None:
            sink.forward_dedicated(node, args)

    def describe(self) -> str:
        return "keys on one node, on the client's own node connection"


class Watch(SameNode):
    """WATCH: keys on one node, watched on the client's own connection to that node, which
    then runs the transaction."""

    __slots__ = ()

    def run(self, args: list[bytes], sink: Sink) -> None:
        node = self.home(args, sink)
        if node is not None:
            sink.watch(node, args)

    def describe(self) -> str:
        return "keys on one node, on the client's own node connection"


class WhenOption(Route):
    """Serves a command one way or another depending on an option before ``stop``
    (XREAD ... BLOCK ... STREAMS: blocking only with BLOCK). Options are looked for only
    before ``stop``, so a key that happens to be called "block" is not mistaken."""

    __slots__ = ("word", "stop", "with_option", "without")

    def __init__(self, word: bytes, stop: bytes, with_option: Route, without: Route) -> None:
        super().__init__(without.name, without.arity)
        self.word = word.upper()
        self.stop = stop.upper()
        self.with_option = with_option
        self.without = without

    def serve(self, args: list[bytes], sink: Sink) -> None:
        word, stop = self.word, self.stop
        for arg in args[1:]:
            upper = arg.upper()
            if upper == stop:
                break
            if upper == word:
                self.with_option.serve(args, sink)
                return
        self.without.serve(args, sink)

    def describe(self) -> str:
        return f"{self.without.describe()}; with {self.word.decode()}: {self.with_option.describe()}"


class _Split(Route):
    """Keys spread over nodes: one sub-request per node, replies merged in key order.

    When every key is on one node (the usual case with hash tags), the request is forwarded
    untouched and no merge runs.
    """

    __slots__ = ("node_of", "step", "mode")

    def __init__(self, name: str, arity: int, placement: Placement, step: int = 1,
                 mode: str = "") -> None:
        super().__init__(name, arity)
        self.node_of = placement.node_index
        self.step = step
        self.mode = mode  # read/write policy, when policies are configured

    def run(self, args: list[bytes], sink: Sink) -> None:
        step = self.step
        if (len(args) - 1) % step:
            sink.reply(self.arity_reply)
            return
        node_of = self.node_of
        head = args[0]
        groups: dict[int, list[bytes]] = {}
        order: list[int] = []  # the node of each key, in request order
        if step == 1:
            for key in args[1:]:
                node = node_of(key)
                order.append(node)
                group = groups.get(node)
                if group is None:
                    groups[node] = group = [head]
                group.append(key)
        else:
            for i in range(1, len(args), step):
                node = node_of(args[i])
                order.append(node)
                group = groups.get(node)
                if group is None:
                    groups[node] = group = [head]
                group.extend(args[i:i + step])
        if len(groups) == 1:
            if self.mode:
                send_with_policy(sink, self.mode, order[0], args, args[1])
            else:
                sink.forward(order[0], args)
            return
        nodes = list(groups)
        calls = [(node, groups[node]) for node in nodes]
        if self.mode == "write":  # each node's part waits for its acknowledgement
            sink.fanout_write(calls, self.merger(nodes, order), args[1])
        else:  # reads split over nodes are served by the primaries
            sink.fanout(calls, self.merger(nodes, order))

    def merger(self, nodes: list[int], order: list[int]) -> Merge:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return "split per node, replies merged"


def first_error(parts: list[bytes]) -> bytes | None:
    for part in parts:
        if part[:1] in (b"-", b"!"):
            return part
    return None


class SplitGet(_Split):
    """MGET: each node returns its keys' values; the merge puts them back in request order.

    The node connection hands each node's reply over already cut into its elements
    (``takes_items``), so the values are scanned once and joined as they came, never
    re-encoded; a reply that arrives whole (a node error, a migrating arc's) is cut here.
    """

    __slots__ = ()

    def merger(self, nodes: list[int], order: list[int]) -> Merge:
        def merge(parts: list, proto: int) -> bytes:
            columns = {}
            for node, part in zip(nodes, parts, strict=True):
                if type(part) is not list:
                    if part[:1] in (b"-", b"!"):
                        return part
                    part = resp.split_reply_array(part)
                    if part is None:
                        return resp.error("ERR ringleader: unexpected reply to a split MGET")
                columns[node] = iter(part)
            return b"*%d\r\n" % len(order) + b"".join([next(columns[node]) for node in order])

        merge.takes_items = True  # type: ignore[attr-defined]
        return merge


class SplitSet(_Split):
    """MSET: every node must say OK. Not atomic across nodes (documented)."""

    __slots__ = ()

    def merger(self, nodes: list[int], order: list[int]) -> Merge:
        return merge_all_ok


def merge_all_ok(parts: list[bytes], proto: int) -> bytes:
    return first_error(parts) or resp.OK


class SplitCount(_Split):
    """DEL, UNLINK, EXISTS, TOUCH: the per-node counts are summed."""

    __slots__ = ()

    def merger(self, nodes: list[int], order: list[int]) -> Merge:
        return merge_sum


def merge_sum(parts: list[bytes], proto: int) -> bytes:
    err = first_error(parts)
    if err is not None:
        return err
    total = 0
    for part in parts:
        value = resp.parse_integer(part)
        if value is None:
            return resp.error("ERR ringleader: unexpected reply to a split command")
        total += value
    return resp.integer(total)


class AllNodes(Route):
    """A keyless command every node must run (DBSIZE, KEYS, FLUSHALL, SCRIPT LOAD...): sent to
    each node, replies combined by ``merge``."""

    __slots__ = ("count", "merge", "how")

    def __init__(self, name: str, arity: int, count: int, merge: Merge, how: str) -> None:
        super().__init__(name, arity)
        self.count = count
        self.merge = merge
        self.how = how

    def run(self, args: list[bytes], sink: Sink) -> None:
        sink.fanout([(node, args) for node in range(self.count)], self.merge)

    def describe(self) -> str:
        return f"every node, {self.how}"


class LeavingOutReserved(AllNodes):
    """DBSIZE and RANDOMKEY: every node runs a read-only script (hotkeys/reserved.py) that
    leaves out the proxy's own keys (copies of replicated hot keys, parts of split counters,
    the registry naming them), so a hot key's mitigation does not change what clients see."""

    __slots__ = ("call",)

    def __init__(self, name: str, arity: int, count: int, merge: Merge, how: str,
                 call: list[bytes]) -> None:
        super().__init__(name, arity, count, merge, f"{how}, the proxy's own keys left out")
        self.call = call

    def run(self, args: list[bytes], sink: Sink) -> None:
        sink.fanout([(node, self.call) for node in range(self.count)], self.merge)


def visible(items: list[bytes]) -> list[bytes]:
    """``items`` without the keys the proxy keeps for itself (parts of split counters,
    copies of replicated hot keys, each node's registry of them: hotkeys/reserved.py), which
    SCAN and KEYS do not show."""
    return [item for item in items if not any(r in item[:32] for r in RESERVED)]


def merge_concat(parts: list[bytes], proto: int) -> bytes:
    """KEYS: every node's keys in one array (the proxy's own keys left out)."""
    err = first_error(parts)
    if err is not None:
        return err
    items: list[bytes] = []
    for part in parts:
        elements = resp.split_reply_array(part)
        if elements is None:
            return resp.error("ERR ringleader: unexpected reply to a fanned-out command")
        items.extend(elements)
    return resp.array_of_raw(visible(items))


def merge_same(parts: list[bytes], proto: int) -> bytes:
    """SCRIPT LOAD, FUNCTION LOAD: every node must give the same answer."""
    err = first_error(parts)
    if err is not None:
        return err
    if any(part != parts[0] for part in parts[1:]):
        return resp.error("ERR ringleader: nodes disagree about this command's result")
    return parts[0]


def merge_all_true(parts: list[bytes], proto: int) -> bytes:
    """SCRIPT EXISTS: a script exists only if every node has it (it may run on any)."""
    err = first_error(parts)
    if err is not None:
        return err
    columns = [resp.split_reply_array(part) for part in parts]
    if any(c is None or len(c) != len(columns[0]) for c in columns):
        return resp.error("ERR ringleader: unexpected reply to SCRIPT EXISTS")
    flags = [all(col[i] == b":1\r\n" for col in columns) for i in range(len(columns[0]))]
    return resp.array_of_raw([b":1\r\n" if f else b":0\r\n" for f in flags])


def merge_min_integer(parts: list[bytes], proto: int) -> bytes:
    """LASTSAVE: the oldest save among the nodes (nothing newer is guaranteed on all)."""
    err = first_error(parts)
    if err is not None:
        return err
    values = [resp.parse_integer(p) for p in parts]
    if None in values:
        return resp.error("ERR ringleader: unexpected reply to a fanned-out command")
    return resp.integer(min(values))


def merge_random_present(parts: list[bytes], proto: int) -> bytes:
    """RANDOMKEY: a key from a random node that has any (nil only if all are empty)."""
    err = first_error(parts)
    if err is not None:
        return err
    present = [p for p in parts if p not in (resp.NULL2, resp.NULL3)]
    return random.choice(present) if present else parts[0]


def merge_not_busy(parts: list[bytes], proto: int) -> bytes:
    """SCRIPT KILL / FUNCTION KILL: OK if some node was running a script, else NOTBUSY."""
    for part in parts:
        if part == resp.OK:
            return part
    return parts[0]


class Scan(Route):
    """SCAN over every node with one cursor: ``node_cursor * nodes + node_index``.

    Nodes are scanned one after another, each with Redis's own guarantee, so every key
    present for the whole iteration is returned. When a node's cursor comes back 0 the next
    node starts; 0 is returned only after the last node.
    """

    __slots__ = ("count", "error_reply")

    def __init__(self, name: str, arity: int, count: int) -> None:
        super().__init__(name, arity)
        self.count = count
        self.error_reply = resp.error("ERR invalid cursor")

    def run(self, args: list[bytes], sink: Sink) -> None:
        try:
            cursor = int(args[1])
        except ValueError:
            sink.reply(self.error_reply)
            return
        if cursor < 0:
            sink.reply(self.error_reply)
            return
        count = self.count
        index, node_cursor = cursor % count, cursor // count
        sub = [args[0], b"%d" % node_cursor, *args[2:]]

        def merge(parts: list[bytes], proto: int) -> bytes:
            part = parts[0]
            if part[:1] != b"*":
                return part
            head_end = part.find(b"\r\n") + 2
            cursor_end = resp.reply_end(part, head_end, len(part))
            next_node_cursor = int(part[head_end:cursor_end].split(b"\r\n")[1])
            if next_node_cursor:
                outer = next_node_cursor * count + index
            else:
                outer = index + 1 if index + 1 < count else 0
            keys = part[cursor_end:]
            if any(r in keys for r in RESERVED):
                keys = resp.array_of_raw(visible(resp.split_reply_array(keys) or []))
            return b"*2\r\n" + resp.bulk(b"%d" % outer) + keys

        sink.fanout([(index, sub)], merge)

    def describe(self) -> str:
        return "every node in turn, one cursor"


def merge_union(parts: list[bytes], proto: int) -> bytes:
    """PUBSUB CHANNELS: the channels active on any node, each once."""
    err = first_error(parts)
    if err is not None:
        return err
    seen: dict[bytes, None] = {}
    for part in parts:
        for item in resp.split_reply_array(part) or ():
            seen.setdefault(item)
    return resp.array_of_raw(list(seen))


def merge_pair_sums(parts: list[bytes], proto: int) -> bytes:
    """PUBSUB NUMSUB: per channel, the subscribers on every node added up."""
    err = first_error(parts)
    if err is not None:
        return err
    names: list[bytes] = []
    totals: list[int] = []
    for index, part in enumerate(parts):
        items = resp.split_reply_array(part)  # an array in RESP2, a map in RESP3
        if items is None:
            return resp.error("ERR ringleader: unexpected reply to PUBSUB NUMSUB")
        for pair in range(0, len(items), 2):
            if index == 0:
                names.append(items[pair])
                totals.append(0)
            totals[pair // 2] += resp.parse_integer(items[pair + 1]) or 0
    body = b"".join(name + resp.integer(total) for name, total in zip(names, totals, strict=True))
    head = b"%%%d\r\n" % len(names) if parts[0][:1] == b"%" else b"*%d\r\n" % (2 * len(names))
    return head + body
