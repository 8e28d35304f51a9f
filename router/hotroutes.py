"""Routes that take the load of hot keys off their node, wrapped around the plain ones.

``HotRead`` serves a read of a hot key whose node reports its changes (tracked) from the
near cache, or fills the cache from the node's reply. ``HotWrite`` invalidates the key in the
cache *before* the write is sent. They are chained in front of the ordinary routes by the
route table only while some key is watched, replicated or split (``HotKeyService.engaged``):
the rest of the time the plain routes serve. Counting keys is not theirs to do: sessions
hand their batches to ``HotKeyService.sample``.
"""

from __future__ import annotations

import time

from hotkeys.splitting import sum_parts

from . import resp
from .routes import Route, SingleKey, Sink


class _HotKey(SingleKey):
    """SingleKey with hot-key handling: a split counter is served over its parts; ``rest``
    says what else a read or a write does."""

    __slots__ = ("service",)

    def __init__(self, route: SingleKey, service) -> None:
        super().__init__(route.name, route.arity, route.pos, _Placed(route.node_of))
        self.service = service

    def serve(self, args: list[bytes], sink: Sink) -> None:
        n = len(args)
        a = self.arity
        if (n != a) if a > 0 else (n < -a):
            sink.reply(self.arity_reply)
            return
        key = args[self.pos]
        service = self.service
        if (service.split or service.merging or service.foreign) and \
                service.serve_split(key, self.name, args, sink):
            return
        self.rest(key, args, sink)

    def rest(self, key: bytes, args: list[bytes], sink: Sink) -> None:  # pragma: no cover
        raise NotImplementedError


class HotReadKey(_HotKey):
    """Reads: a replicated key from one of its copies, a tracked hot key from the near
    cache."""

    __slots__ = ()

    def rest(self, key: bytes, args: list[bytes], sink: Sink) -> None:
        service = self.service
        if service.copies and service.read_copy(key, args, sink):
            return
        watched = service.watched
        if watched and watched.get(key) == "ok":
            serve_cached(service, key, args, sink, self.node_of)
            return
        sink.forward(self.node_of(key), args)

    def describe(self) -> str:
        return "to the key's node; hot keys from the near cache"


class HotWriteKey(_HotKey):
    """Writes: the key is invalidated (if cached) before sending."""

    __slots__ = ()

    def rest(self, key: bytes, args: list[bytes], sink: Sink) -> None:
        service = self.service
        watched = service.watched
        if watched and key in watched:
            service.cache.invalidate(key)
            service.key_written(key)
        sink.forward(self.node_of(key), args)

    def describe(self) -> str:
        return "to the key's node; invalidates hot keys first"


class _Placed:
    """Adapts a bare ``node_of`` to the Placement shape SingleKey's constructor takes."""

    __slots__ = ("node_index",)

    def __init__(self, node_of) -> None:
        self.node_index = node_of


def serve_cached(service, key: bytes, args: list[bytes], sink: Sink, node_of) -> None:
    """A read of a tracked hot key: from the cache; else sharing the reply of the same read
    already on its way to the node; else from the node, keeping the reply."""
    cache = service.cache
    entry = (tuple(args), sink.proto)
    now = time.monotonic()
    raw = cache.get(entry, now)
    if raw is not None:
        sink.reply(raw)
        return
    version = cache.version(key)
    waiters = cache.waiters_of_fill(entry, version, now)
    if waiters is not None:
        waiters.append((sink, sink.reply_later()))
        return
    waiters = cache.begin_fill(entry, version, now)

    def store(reply: bytes) -> None:
        cache.end_fill(entry, waiters)
        for session, slot in waiters:  # before anything that could fail: none is left hanging
            session.complete(slot, reply)
        cache.put(entry, key, reply, version, time.monotonic())

    sink.forward_observed(node_of(key), args, store)


class HotKeyCount(Route):
    """DEL, UNLINK, EXISTS, TOUCH: a split counter among the keys is served over all its
    parts (router/hot.py ``serve_split_keys``); otherwise the plain split-per-node route."""

    __slots__ = ("inner", "service")

    def __init__(self, inner: Route, service) -> None:
        super().__init__(inner.name, inner.arity)
        self.inner = inner
        self.service = service

    def serve(self, args: list[bytes], sink: Sink) -> None:
        service = self.service
        if (service.split or service.merging or service.foreign) and \
                service.serve_split_keys(args, sink):
            return
        self.inner.serve(args, sink)

    def describe(self) -> str:
        return f"{self.inner.describe()}; split counters over all their parts"


class HotMultiGet(Route):
    """MGET naming a split counter (this proxy's, or another's seen in the registries): each
    key is read with its own GET, a split counter over all its parts (summed), and the values
    are put back in order. Without split counters among the keys, the plain MGET route."""

    __slots__ = ("inner", "service", "node_of")

    def __init__(self, inner: Route, service, node_of) -> None:
        super().__init__(inner.name, inner.arity)
        self.inner = inner
        self.service = service
        self.node_of = node_of

    def serve(self, args: list[bytes], sink: Sink) -> None:
        service = self.service
        if not (service.split or service.merging or service.foreign) or len(args) < 2:
            self.inner.serve(args, sink)
            return
        counters = {key: c for key in args[1:]
                    if (c := service.counter_of(key, "get")) is not None}
        if not counters:
            self.inner.serve(args, sink)
            return
        calls: list[tuple[int, list[bytes]]] = []
        sizes: list[int] = []  # replies per key, in request order
        for key in args[1:]:
            counter = counters.get(key)
            names = counter.parts if counter is not None else [(self.node_of(key), key)]
            calls.extend((node, [b"GET", name]) for node, name in names)
            sizes.append(len(names))

        def merge(parts: list[bytes], proto: int) -> bytes:
            values = []
            start = 0
            for size in sizes:
                replies = parts[start:start + size]
                start += size
                value = replies[0] if size == 1 else sum_parts(replies, proto)
                if value.startswith(b"-WRONGTYPE"):
                    value = resp.null(proto)  # MGET answers nil for a key of another type
                elif value[:1] in (b"-", b"!"):
                    return value  # a node's failure fails the whole MGET, as it would
                values.append(value)
            return resp.array_of_raw(values)

        sink.fanout(calls, merge)

    def describe(self) -> str:
        return f"{self.inner.describe()}; split counters summed over their parts"


class HotRead(Route):
    __slots__ = ("inner", "service", "pos", "node_of")

    def __init__(self, inner: Route, service, pos: int, node_of) -> None:
        super().__init__(inner.name, inner.arity)
        self.inner = inner
        self.service = service
        self.pos = pos
        self.node_of = node_of

    def serve(self, args: list[bytes], sink: Sink) -> None:
        service = self.service
        if len(args) > self.pos:
            key = args[self.pos]
            watched = service.watched
            if watched and watched.get(key) == "ok" and hasattr(sink, "forward_observed"):
                serve_cached(service, key, args, sink, self.node_of)
                return
        self.inner.serve(args, sink)

    def describe(self) -> str:
        return f"{self.inner.describe()}; hot keys from the near cache"


class HotWrite(Route):
    """Any write: every key it names is counted and, if it may be cached, invalidated."""

    __slots__ = ("inner", "service", "spec", "pos")

    def __init__(self, inner: Route, service, spec, pos: int | None = None) -> None:
        super().__init__(inner.name, inner.arity)
        self.inner = inner
        self.service = service
        self.spec = spec
        self.pos = pos  # the key's position when there is exactly one

    def serve(self, args: list[bytes], sink: Sink) -> None:
        service = self.service
        watched = service.watched
        if self.pos is not None:
            if len(args) > self.pos:
                key = args[self.pos]
                if watched and key in watched:
                    service.cache.invalidate(key)
                    service.key_written(key)
        else:
            try:
                positions = self.spec.key_positions(args)
            except Exception:  # malformed: the inner route replies the error
                positions = ()
            for p in positions:
                key = args[p]
                if watched and key in watched:
                    service.cache.invalidate(key)
                    service.key_written(key)
        self.inner.serve(args, sink)

    def describe(self) -> str:
        return f"{self.inner.describe()}; invalidates hot keys first"
