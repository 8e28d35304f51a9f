"""The proxy's hot-key service: detection on the request path, decisions once per window,
and the node connections that report changes to cached keys.

A key becomes cacheable only once its node has agreed to report every change to it:
``CLIENT TRACKING ON BCAST PREFIX <key>`` on a RESP3 connection of the proxy's own, which
then receives an ``invalidate`` push for each write from anyone (another proxy, a client
straight to the node). Until that confirmation, and after that connection fails, the key is
read from the node as usual. The near cache's TTL bounds the damage of a lost report.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import hiredis
import trio

from backends.client import CommandError
from backends.node import UP
from hotkeys.cache import NearCache
from hotkeys.copies import CopySet, copy_key
from hotkeys.detector import HotKeyDetector
from hotkeys.reserved import REGISTRY
from hotkeys.rules import HotKeyRules, HotKeySettings
from hotkeys.splitting import (
    ADD_SCRIPT,
    HASH_COMMANDS,
    INCREMENTS,
    SUB_PREFIX,
    TAKE_SCRIPT,
    SplitCounter,
    failed_amounts,
    is_number,
    node_tags,
    original_of,
    plan_key_counts,
    sub_key,
    taken_amounts,
)

from . import resp

log = logging.getLogger("ringleader.hotkeys")

#: Registered prefixes per tracking connection before it is reset (prefixes for keys that
#: cooled are not removable one by one).
MAX_PREFIXES = 1024


def raise_first_error(replies: list[object]) -> None:
    for reply in replies:
        if isinstance(reply, CommandError):
            raise reply


class HotKeyService:
    def __init__(self, settings: HotKeySettings, server) -> None:
        self.settings = settings
        self.server = server
        self.detector = HotKeyDetector(
            threshold_fraction=settings.threshold, floor_ops=settings.floor_ops,
            window=settings.window_ms / 1000, sample_every=settings.sample_every,
            topk=settings.topk, cool_windows=settings.cool_windows)
        #: command name as sent -> the position of its one key (None: none, or not fixed)
        self._key_specs: dict[bytes, int | None] = {}
        self.cache = NearCache(settings.cache_ttl_ms / 1000, settings.cache_max_entries,
                               settings.cache_max_bytes)
        self.rules = HotKeyRules(settings)
        #: hot keys with the cache mitigation -> "pending" | "ok" | "refused"
        self.watched: dict[bytes, str] = {}
        self._tracking: dict[int, object] = {}  # node -> tracking connection
        self._waiting: dict[int, deque[bytes]] = {}  # node -> keys awaiting TRACKING's reply
        self._prefixes: dict[int, int] = {}
        #: split counters, and counters being folded back into their key
        self.split: dict[bytes, SplitCounter] = {}
        self.merging: dict[bytes, SplitCounter] = {}
        #: counters another proxy split, learnt from the nodes' registries: key -> its parts
        #: (the key itself first). Served like a counter being folded back: reads sum every
        #: part, increments go to the key itself.
        self.foreign: dict[bytes, list[tuple[int, bytes]]] = {}
        self._learning = False
        self._tags: tuple[object, dict[int, bytes]] | None = None
        self._copy_tags: tuple[object, dict[int, bytes]] | None = None
        self.split_increments = 0
        #: replicated hot keys
        self.copies: dict[bytes, CopySet] = {}
        self.copy_reads = 0
        #: hot keys whose mitigation is replication -> copies wanted (their CopySet may be
        #: missing for a while: retired by a topology change, or their arc is moving)
        self._replicated: dict[bytes, int] = {}
        #: True while any key is watched, replicated or split (here or by another proxy):
        #: the hot-key routes are in the route table only then. Set before an entry is added
        #: to any of those tables (``_engage``), cleared once a window when all are empty.
        self.engaged = False

    def _engage(self) -> None:
        if not self.engaged:
            self.engaged = True
            self.server.hot_routes_changed()  # the hot routes serve from the next batch on

    def _settle(self) -> None:
        engaged = bool(self.watched or self.copies or self.split or self.merging
                       or self.foreign)
        if engaged != self.engaged:
            self.engaged = engaged
            self.server.hot_routes_changed()

    # ------------------------------------------------------------------ counting

    def sample(self, requests: list[list[bytes]]) -> None:
        """Count the keys of the requests the detector's sampling picks out of a client's
        batch: one countdown step per batch rather than one per request, and no hot-key
        code at all in the routes while no key is hot (``engaged``)."""
        detector = self.detector
        left = detector.countdown
        if left > len(requests):  # most batches: nothing picked (``picks``, inlined)
            detector.countdown = left - len(requests)
            return
        picked = detector.picks(len(requests))
        known = self._key_specs
        count = detector.count
        for i in picked:
            args = requests[i]
            position = known.get(args[0]) if args and type(args[0]) is bytes else None
            if type(position) is int and position < len(args) and type(args[position]) is bytes:
                count(args[position])  # GET, SET...: one key
            else:
                self._count_keys(args)

    def _count_keys(self, args: list[bytes]) -> None:
        """The general way: the command's spec says where its keys are. A command whose one
        key has a fixed place is remembered by name (as sent), for ``sample``'s short way."""
        if not args or type(args[0]) is not bytes:
            return
        table = self.server.table
        spec = table.lookup(args)
        if spec is None or not spec.has_keys:
            return
        known = self._key_specs
        if args[0] not in known and len(known) < 4096:
            top = table.lookup(args[:1])  # a container's own spec: its subcommands differ
            fixed = None if top is None or top.subcommands else top.fixed_key_positions
            known[args[0]] = fixed[0] if fixed is not None and len(fixed) == 1 else None
        try:
            positions = spec.key_positions(args)
        except Exception:  # malformed: its route answers the error; nothing to count
            return
        count = self.detector.count
        for p in positions:
            key = args[p]
            if type(key) is bytes:
                count(key)

    def cacheable(self, key: bytes) -> bool:
        return self.watched.get(key) == "ok"

    def invalidate_request(self, args: list[bytes]) -> None:
        """Invalidate every watched key a request names (a transaction's writes at EXEC)."""
        spec = self.server.table.lookup(args)
        if spec is None:
            return
        try:
            positions = spec.key_positions(args)
        except Exception:
            return
        for p in positions:
            if args[p] in self.watched:
                self.cache.invalidate(args[p])
                self.key_written(args[p])

    # ------------------------------------------------------------------ decisions

    async def run(self) -> None:
        window = self.settings.window_ms / 1000
        splitting = any(r.kind == "split" for r in self.rules.all())
        if splitting:
            self.server.spawn(self.fold_leftovers)
        while True:
            await trio.sleep(window)
            for event in self.detector.tick(time.monotonic()):
                if event.hot:
                    self._became_hot(event.key)
                else:
                    self._cooled(event.key)
            self._retrack()
            self._refresh_copies()
            self._settle()
            if splitting and not self._learning:
                self._learning = True
                self.server.spawn(self._learn_foreign_splits)

    def _became_hot(self, key: bytes) -> None:
        mitigation = self.rules.for_key(key)
        log.info("hot key %r (%s)", key[:64], mitigation.kind)
        if mitigation.kind == "cache" and key not in self.watched:
            self._engage()
            self.watched[key] = "pending"
            self._track(key)
        elif mitigation.kind == "split" and key not in self.split and key not in self.merging:
            self.server.spawn(lambda: self._start_split(key, mitigation.split))
        elif mitigation.kind == "replicate":
            self._replicated[key] = mitigation.copies
            if key not in self.copies:
                self._start_copies(key, mitigation.copies)

    def _cooled(self, key: bytes) -> None:
        if self.watched.pop(key, None) is not None:
            self.cache.invalidate(key)
        counter = self.split.pop(key, None)
        if counter is not None:
            self.merging[key] = counter
            self.server.spawn(lambda: self._merge_back(counter))
        self._replicated.pop(key, None)
        copies = self.copies.pop(key, None)
        if copies is not None:
            copies.written()
            self.server.spawn(lambda: self._drop_copies(copies))

    # ------------------------------------------------------------------ replicated keys

    def _start_copies(self, key: bytes, count: int) -> None:
        placement = self.server.placement
        owner = placement.node_index(key)
        if owner < 0:
            return
        if self._copy_tags is None or self._copy_tags[0] is not placement:
            self._copy_tags = (placement, node_tags(placement.node_index,
                                                    len(self.server.topology.shards),
                                                    prefix=b"rlcopy-"))
        tags = self._copy_tags[1]
        others = [node for node in sorted(tags) if node != owner][:max(count, 0)]
        if not others:
            return
        self._engage()
        nodes = self.server.effective_nodes()
        self.copies[key] = CopySet(key, owner, [(n, copy_key(tags[n], key)) for n in others],
                                   [nodes[n] for n in others])
        # writes from elsewhere must reach us before copies may serve: track the key
        if key not in self.watched:
            self.watched[key] = "pending"
            self._track(key)

    def _refresh_copies(self) -> None:
        """Copies a write made stale are made again while the key stays hot (and a key that
        lost its copies to a topology change gets new ones)."""
        for key, count in list(self._replicated.items()):
            if key not in self.copies:
                self._start_copies(key, count)
        for copies in self.copies.values():
            if not copies.active and not copies.copying and self.watched.get(copies.key) == "ok":
                copies.copying = True
                self.server.spawn(lambda copies=copies: self._make_copies(copies))

    async def _make_copies(self, copies: CopySet) -> None:
        version = copies.version
        try:
            async with await self._client(copies.owner) as client:
                dumped, expires = await client.pipeline([("DUMP", copies.key),
                                                         ("PEXPIRETIME", copies.key)])
            for node, name in copies.copies:
                # registered before it exists, so DBSIZE never counts it (hotkeys/reserved.py)
                if dumped is None or not isinstance(dumped, bytes):
                    commands = [("DEL", name), ("SREM", REGISTRY, name)]  # no key: no copies
                elif isinstance(expires, int) and expires > 0:
                    commands = [("SADD", REGISTRY, name),
                                ("RESTORE", name, expires, dumped, "REPLACE", "ABSTTL")]
                else:
                    commands = [("SADD", REGISTRY, name),
                                ("RESTORE", name, 0, dumped, "REPLACE")]
                async with await self._client(node) as client:
                    raise_first_error(await client.pipeline(commands))
            # serve from the copies only if nothing was written since the DUMP
            if copies.version == version and self.copies.get(copies.key) is copies:
                copies.active = True
        except Exception as exc:
            log.warning("copies of %r: %s", copies.key[:64], exc)
        finally:
            copies.copying = False
        if self.copies.get(copies.key) is not copies:  # retired while being made
            await self._drop_copies(copies)

    async def _drop_copies(self, copies: CopySet) -> None:
        for (node, name), spec in zip(copies.copies, copies.places, strict=True):
            try:
                connect = self._client(node) if spec is None else self._client_at(spec)
                async with await connect as client:  # unregistered once gone
                    raise_first_error(await client.pipeline([("DEL", name),
                                                             ("SREM", REGISTRY, name)]))
            except Exception as exc:
                log.warning("dropping copy %r: %s", name[:64], exc)

    def key_written(self, key: bytes) -> None:
        """A write to ``key`` is about to be sent (or was reported by its node)."""
        copies = self.copies.get(key)
        if copies is not None:
            copies.written()

    def topology_changed(self) -> None:
        """A new ring (node indexes may have shifted too). Copies are never moved, so they
        are retired: reads go to the key's owner at once, the copies are dropped from the
        nodes they were made on, and keys still hot get new copies at the next window. A
        counter's parts move with their arcs, so each now lives where its name is placed."""
        retired = list(self.copies.values())
        self.copies.clear()
        for copies in retired:
            copies.written()
            if not copies.copying:  # else the copy job drops them when it ends
                self.server.spawn(lambda copies=copies: self._drop_copies(copies))
        self._copy_tags = None
        self._tags = None
        # change reports come from the nodes the keys were on: track them again where they
        # are now (served from the node meanwhile); keys refused on a moving arc retry too
        for node, conn in list(self._tracking.items()):
            conn.on_lost = None
            conn.close()
            self._waiting.pop(node, None)
        self._tracking.clear()
        self._prefixes.clear()
        self.cache.clear()
        for key in self.watched:
            self.watched[key] = "lost"
        for counter in (*self.split.values(), *self.merging.values()):
            before = counter.parts
            counter.parts = self._placed(before)
            moved = [part for part, old in zip(counter.parts[1:], before[1:], strict=True)
                     if part[0] != old[0] and part[0] >= 0]
            if moved:  # a part that has not been created yet was not moved nor registered
                self.server.spawn(lambda moved=moved: self._register_quietly(moved))
        self.foreign = {key: self._placed(parts) for key, parts in self.foreign.items()}

    def _placed(self, parts: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        node_of = self.server.placement.node_index
        return [(node_of(name), name) for _, name in parts]

    def read_copy(self, key: bytes, args: list[bytes], sink) -> bool:
        """A read of a replicated key, spread over the owner and its copies."""
        copies = self.copies.get(key)
        if copies is None or not copies.active:
            return False
        node, name = copies.pick()
        if name is None:
            sink.forward(node, args)
        else:
            self.copy_reads += 1
            sink.forward(node, [args[0], name, *args[2:]])
        return True

    # ------------------------------------------------------------------ counter splitting

    def _node_tags(self) -> dict[int, bytes]:
        placement = self.server.placement
        if self._tags is None or self._tags[0] is not placement:
            self._tags = (placement, node_tags(placement.node_index,
                                               len(self.server.topology.shards)))
        return self._tags[1]

    async def _start_split(self, key: bytes, count: int) -> None:
        placement = self.server.placement
        owner = placement.node_index(key)
        if owner < 0:
            return
        tags = self._node_tags()
        others = [node for node in sorted(tags) if node != owner][:max(count - 1, 0)]
        if not others:
            return
        parts = [(owner, key)] + [(n, sub_key(tags[n], key)) for n in others]
        try:
            async with await self._client(owner) as client:
                kind, value, fields = await client.pipeline([("TYPE", key), ("GET", key),
                                                             ("HGETALL", key)])
        except Exception as exc:  # node down: leave it
            log.info("not splitting %r: %s", key[:64], exc)
            return
        if kind in (b"string", b"none"):  # none: a counter made by its next increment
            if isinstance(value, bytes) and not is_number(value):
                log.info("not splitting %r: it holds a string that is not a number", key[:64])
                return
            counter = SplitCounter(key, parts, "string")
            if isinstance(value, bytes):
                counter.record(0, resp.bulk(value))
        elif kind == b"hash" and isinstance(fields, list):
            counter = SplitCounter(key, parts, "hash")
            for i in range(0, len(fields) - 1, 2):
                counter.record(0, resp.bulk(fields[i + 1]), fields[i])
        else:
            log.info("not splitting %r: it holds a %s, not a counter", key[:64], kind)
            return
        try:  # parts are registered before any increment can create them
            await self._register(counter.parts[1:])
        except Exception as exc:
            log.warning("not splitting %r: registering its parts: %s", key[:64], exc)
            return
        self._engage()
        counter.parts = self._placed(counter.parts)  # the ring may have changed meanwhile
        self.split[key] = counter
        log.info("split counter %r over %d nodes", key[:64], len(counter.parts))

    async def _merge_back(self, counter: SplitCounter) -> None:
        """Fold the sub-keys into the key once no increment to them is in flight."""
        while counter.outstanding:
            await trio.sleep(0.01)
        try:
            for _, name in counter.parts[1:]:
                try:
                    while (node := self.server.placement.node_index(name)) < 0:
                        await trio.sleep(0.1)  # the part's arc is moving: fold it once landed
                    await self._fold(node, name, counter.key)
                except Exception as exc:  # left on its node: the next start folds it
                    log.warning("folding %r back: %s", name[:64], exc)
        finally:
            self.merging.pop(counter.key, None)

    async def _register_quietly(self, names: list[tuple[int, bytes]]) -> None:
        try:
            await self._register(names)
        except Exception as exc:
            log.warning("registering counter parts %r: %s", [n for _, n in names][:3], exc)

    async def _register(self, names: list[tuple[int, bytes]]) -> None:
        """Add reserved keys to their nodes' registries (before the keys exist)."""
        for node, name in names:
            async with await self._client(node) as client:
                await client.call("SADD", REGISTRY, name)

    async def _fold(self, node: int, sub: bytes, original: bytes) -> None:
        """Fold one part into its key: taken from its node in one step (read, deleted,
        unregistered), then added to the key. What the key cannot take (it holds something
        else by now) is put back into the part, logged, rather than lost."""
        while (owner := self.server.placement.node_index(original)) < 0:
            await trio.sleep(0.1)  # the key's arc is moving: add to it once it has landed
        async with await self._client(node) as client:
            kind, amounts = taken_amounts(await client.call("EVAL", TAKE_SCRIPT, 2, sub,
                                                            REGISTRY))
        if not amounts:
            if kind not in ("string", "hash", "none"):
                log.warning("counter part %r holds a %s: not folded", sub[:64], kind)
            return
        async with await self._client(owner) as client:
            reply = await client.pipeline([("EVAL", ADD_SCRIPT, 1, original, kind, *amounts)])
        left = amounts if isinstance(reply[0], CommandError) else failed_amounts(kind, reply[0])
        if left:
            log.error("counter %r cannot take back %r from its part %r (%s); the part keeps "
                      "them", original[:64], left, sub[:64], reply[0])
            await self._register([(node, sub)])
            async with await self._client(node) as client:
                await client.call("EVAL", ADD_SCRIPT, 1, sub, kind, *left)

    async def fold_leftovers(self) -> None:
        """Sub-keys a stopped proxy left behind are folded into their keys (safe while
        another proxy still splits them: GETDEL is atomic, later increments recreate them)."""
        for node in range(len(self.server.topology.shards)):
            try:
                async with await self._client(node) as client:
                    cursor = b"0"
                    while True:
                        cursor, keys = await client.call("SCAN", cursor, "MATCH",
                                                         SUB_PREFIX + b"*", "COUNT", 1000)
                        for sub in keys:
                            original = original_of(sub)
                            if original is not None and original not in self.split:
                                await self._fold(node, sub, original)
                        if cursor in (b"0", 0):
                            break
            except Exception as exc:
                log.warning("folding leftover counter parts on node %d: %s", node, exc)

    async def _client(self, node: int):
        return await self._client_at(self.server.effective_nodes()[node])

    async def _client_at(self, spec):
        from backends.client import NodeClient

        config = self.server.config
        return await NodeClient.connect(spec, username=config.node_username,
                                        password=config.node_password, db=config.node_db)

    def counter_of(self, key: bytes, name: str) -> SplitCounter | None:
        """The split counter ``key`` is, if any: this proxy's, one it is folding back, or one
        another proxy split (seen as one being folded back; its kind follows the command ``name``:
        a hash command reads a hash counter)."""
        counter = self.split.get(key) or self.merging.get(key)
        if counter is not None or not self.foreign:
            return counter
        parts = self.foreign.get(key)
        if parts is None:
            return None
        return SplitCounter(key, parts, "hash" if name in HASH_COMMANDS else "string")

    async def _learn_foreign_splits(self) -> None:
        """Which counters other proxies have split, from every node's registry of reserved
        keys (a proxy registers a counter's parts before any increment reaches them), so
        reads through this proxy sum every part too, within a window of the split."""
        try:
            found: dict[bytes, list[tuple[int, bytes]]] = {}
            for node in range(len(self.server.topology.shards)):
                try:
                    async with await self._client(node) as client:
                        names = await client.call("SMEMBERS", REGISTRY)
                except Exception as exc:  # keep what was known; the next window retries
                    log.debug("reading the registry of node %d: %s", node, exc)
                    return
                for name in names or ():
                    original = original_of(name)
                    if original is not None:
                        found.setdefault(original, []).append((node, name))
            node_of = self.server.placement.node_index
            foreign = {}
            for key, parts in found.items():
                owner = node_of(key)
                if owner >= 0 and key not in self.split and key not in self.merging:
                    foreign[key] = [(owner, key), *sorted(parts)]
            if foreign:
                self._engage()
            self.foreign = foreign
        finally:
            self._learning = False

    def serve_split(self, key: bytes, name: str, args: list[bytes], sink) -> bool:
        """A request for a split (or merging) counter; False to let the plain route serve."""
        counter = self.counter_of(key, name)
        if counter is None:
            return False
        merging = key not in self.split
        planned = counter.plan(name, args, merging)
        if planned is None:
            return False  # while merging, increments go to the key itself
        if isinstance(planned, bytes):
            sink.reply(planned)
            return True
        calls, merge = planned
        if name in INCREMENTS:
            self.split_increments += 1
        sink.fanout(calls, merge)
        return True

    def serve_split_keys(self, args: list[bytes], sink) -> bool:
        """DEL / UNLINK / EXISTS / TOUCH naming a split (or merging) counter: every part of it
        is deleted or looked at, so a deleted counter does not live on in its parts. False
        when no key of the request is split (the plain route serves)."""
        counters = {}
        for key in args[1:]:
            counter = self.counter_of(key, "del")
            if counter is not None:
                counters[key] = counter
        if not counters:
            return False
        if args[0].lower() in (b"del", b"unlink"):
            for counter in counters.values():
                counter.forget()
        calls, merge = plan_key_counts(args, counters, self.server.placement.node_index)
        sink.fanout(calls, merge)
        return True

    def _track(self, key: bytes) -> None:
        node = self.server.placement.node_index(key)
        if node < 0:  # a migrating arc: nothing is cached there
            self.watched[key] = "refused"
            return
        conn = self._tracking.get(node)
        if conn is None or conn.state not in (UP, "connecting") or \
                self._prefixes.get(node, 0) >= MAX_PREFIXES:
            conn = self._open_tracking(node)
        err = conn.send_unmatched(resp.pack_command((b"CLIENT", b"TRACKING", b"ON", b"BCAST",
                                                     b"PREFIX", key)))
        if err is not None:
            self.watched[key] = "refused"
            return
        self._waiting[node].append(key)
        self._prefixes[node] = self._prefixes.get(node, 0) + 1

    def _open_tracking(self, node: int):
        old = self._tracking.pop(node, None)
        if old is not None:
            old.on_lost = None
            old.close()
            self._forget_node(node)
        conn = self.server.backend.open_dedicated(node, 3)
        conn.on_push = lambda raw, node=node: self._on_tracking_reply(node, raw)
        conn.on_lost = lambda reason, node=node: self._tracking_lost(node, reason)
        self._tracking[node] = conn
        self._waiting[node] = deque()
        self._prefixes[node] = 0
        return conn

    def _on_tracking_reply(self, node: int, raw: bytes) -> None:
        if raw[:1] == b">":
            reader = hiredis.Reader()
            reader.feed(raw)
            message = reader.gets()
            if isinstance(message, list) and message and message[0] == b"invalidate":
                keys = message[1] if len(message) > 1 else None
                if keys is None:  # the node was flushed
                    self.cache.clear()
                    for copies in self.copies.values():
                        copies.written()
                else:
                    for key in keys:
                        self.cache.invalidate(key)
                        self.key_written(key)
            return
        waiting = self._waiting.get(node)
        if not waiting:
            return
        key = waiting.popleft()
        if key in self.watched:
            # overlapping prefixes are refused by Redis: such a key is just not cached
            self.watched[key] = "ok" if raw == resp.OK else "refused"

    def _tracking_lost(self, node: int, reason: str) -> None:
        log.warning("hot keys: change reports from node %d stopped (%s); its keys are read "
                    "from the node until they resume", node, reason)
        self._tracking.pop(node, None)
        self._forget_node(node)

    def _forget_node(self, node: int) -> None:
        self.cache.clear()  # anything may have changed unreported
        placement = self.server.placement
        for key, state in list(self.watched.items()):
            if state != "refused" and placement.node_index(key) == node:
                self.watched[key] = "lost"
        self._waiting.pop(node, None)

    def _retrack(self) -> None:
        """Keys whose reports were interrupted are tracked again (on a new connection)."""
        for key, state in list(self.watched.items()):
            if state == "lost":
                self.watched[key] = "pending"
                self._track(key)

    # ------------------------------------------------------------------ visibility

    def describe(self) -> list[dict]:
        placement = self.server.placement
        labels = self.server.routes.labels
        rows = []
        for hot in self.detector.hot_keys():
            node = placement.node_index(hot.key)
            mitigation = self.rules.for_key(hot.key).kind
            state = self.watched.get(hot.key)
            if mitigation == "cache" and state != "ok":
                mitigation = f"cache ({state or 'pending'})"
            if mitigation == "replicate":
                copies = self.copies.get(hot.key)
                mitigation = (f"replicate x{len(copies.copies)} "
                              f"({'active' if copies.active else 'refreshing'})"
                              if copies else "replicate (no other node)")
            if mitigation == "split":
                counter = self.split.get(hot.key)
                mitigation = (f"split over {len(counter.parts)} nodes ({counter.kind})"
                              if counter else "split (not a counter)")
            rows.append({"key": hot.key, "ops_per_sec": round(hot.ops_per_sec, 1),
                         "node": labels[node] if node >= 0 else "migrating",
                         "mitigation": mitigation})
        return rows

    def info(self) -> dict[str, object]:
        fields: dict[str, object] = {f"cache_{k}": v for k, v in self.cache.stats().items()}
        fields["split_counters"] = len(self.split)
        fields["replicated_keys"] = len(self.copies)
        fields["copy_reads"] = self.copy_reads
        fields["split_increments"] = self.split_increments
        fields["hot_keys"] = len(self.detector.hot_keys())
        fields["threshold_ops_per_sec"] = round(self.detector.threshold_rate, 1)
        for index, row in enumerate(self.describe()):
            key = row["key"].decode(errors="replace").replace(",", "_").replace("\r", "")
            fields[f"hot{index}"] = (f"key={key},ops_per_sec={row['ops_per_sec']},"
                                     f"node={row['node']},mitigation={row['mitigation']}")
        return fields
