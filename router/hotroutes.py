"""Routes that take the load of hot keys off their node, wrapped around the plain ones.

``HotRead`` counts the key, and for a hot key whose node reports its changes (tracked)
serves the read from the near cache or fills the cache from the node's reply. ``HotWrite``
counts the key and invalidates it in the cache *before* the write is sent. Both are chained
in front of the ordinary route by the route table when hot-key mitigation is on.
"""

from __future__ import annotations

import time

from .routes import Route, Sink


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
            if service.observe(key) and service.cacheable(key):
                cache = service.cache
                entry = (tuple(args), sink.proto)
                now = time.monotonic()
                raw = cache.get(entry, now)
                if raw is not None:
                    sink.reply(raw)
                    return
                version = cache.version(key)

                def store(reply: bytes) -> None:
                    cache.put(entry, key, reply, version, time.monotonic())

                forward_observed = getattr(sink, "forward_observed", None)
                if forward_observed is not None:
                    forward_observed(self.node_of(key), args, store)
                    return
        self.inner.serve(args, sink)

    def describe(self) -> str:
        return f"{self.inner.describe()}; hot keys from the near cache"


class HotWrite(Route):
    """Any write: every key it names is counted and, if it may be cached, invalidated."""

    __slots__ = ("inner", "service", "spec")

    def __init__(self, inner: Route, service, spec) -> None:
        super().__init__(inner.name, inner.arity)
        self.inner = inner
        self.service = service
        self.spec = spec

    def serve(self, args: list[bytes], sink: Sink) -> None:
        service = self.service
        try:
            positions = self.spec.key_positions(args)
        except Exception:  # malformed: the inner route replies the error
            positions = ()
        for p in positions:
            key = args[p]
            service.observe(key)
            if key in service.watched:
                service.cache.invalidate(key)
        self.inner.serve(args, sink)

    def describe(self) -> str:
        return f"{self.inner.describe()}; invalidates hot keys first"
