"""Routes that take the load of hot keys off their node, wrapped around the plain ones.

``HotRead`` counts the key, and for a hot key whose node reports its changes (tracked)
serves the read from the near cache or fills the cache from the node's reply. ``HotWrite``
counts the key and invalidates it in the cache *before* the write is sent. Both are chained
in front of the ordinary route by the route table when hot-key mitigation is on.
"""

from __future__ import annotations

import time

from .routes import Route, SingleKey, Sink


class HotReadKey(SingleKey):
    """SingleKey for reads with hot-key handling inlined (the common case: no extra call)."""

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
        detector = service.detector
        left = detector.countdown
        if left > 1:  # a request the sampling skips: the detector's own countdown, inlined
            detector.countdown = left - 1
        else:
            detector.observe(key)
        if (service.split or service.merging or service.foreign) and \
                service.serve_split(key, self.name, args, sink):
            return
        if service.copies and service.read_copy(key, args, sink):
            return
        watched = service.watched
        if watched and watched.get(key) == "ok":
            serve_cached(service, key, args, sink, self.node_of)
            return
        sink.forward(self.node_of(key), args)

    def describe(self) -> str:
        return "to the key's node; hot keys from the near cache"


class HotWriteKey(SingleKey):
    """SingleKey for writes: the key is counted and invalidated (if cached) before sending."""

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
        detector = service.detector
        left = detector.countdown
        if left > 1:
            detector.countdown = left - 1
        else:
            detector.observe(key)
        if (service.split or service.merging or service.foreign) and \
                service.serve_split(key, self.name, args, sink):
            return
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
    """A read of a tracked hot key: from the cache, or from the node, keeping the reply."""
    cache = service.cache
    entry = (tuple(args), sink.proto)
    raw = cache.get(entry, time.monotonic())
    if raw is not None:
        sink.reply(raw)
        return
    version = cache.version(key)

    def store(reply: bytes) -> None:
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
            service.observe(key)
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
                service.observe(key)
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
                service.observe(key)
                if watched and key in watched:
                    service.cache.invalidate(key)
                    service.key_written(key)
        self.inner.serve(args, sink)

    def describe(self) -> str:
        return f"{self.inner.describe()}; invalidates hot keys first"
