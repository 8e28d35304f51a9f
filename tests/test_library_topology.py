"""Library clients that follow a live topology (``from_state_dir``): they place keys where the
proxy does, take part in the store (register, acknowledge, heartbeat, unregister), serve keys
in moving arcs move-then-serve, and lose nothing while the proxy adds a node under their load.

Two kinds of tests: with a real proxy running the migration (its admin protocol, its mover,
its barrier), and with only nodes and a state directory, where the test itself writes the
epochs, to pin down one rule at a time (acknowledgement after the drain, the lease, a failed
MIGRATE).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
import trio
from helpers import admin, direct, wait_migrations
from helpers import write_state_dir_config as write_config

from backends.local_nodes import RedisProcess
from rebalancer.manager import new_shard
from rebalancer.planner import plan_add_node
from rebalancer.store import StateDirStore, StoreError
from rebalancer.topology import Topology
from router import ShardedClient, TrioShardedClient
from router.config import from_node_list
from router.follow import LeaseError

KEYS = 10_000


# ---------------------------------------------------------------- helpers


def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def stored_topology(nodes: list[RedisProcess], tmp_path) -> tuple[StateDirStore, Topology]:
    """A state directory holding epoch 1 for ``nodes``, as a proxy would create it."""
    store = StateDirStore(tmp_path / "state")
    topology = Topology.from_config(from_node_list(",".join(n.address for n in nodes)))
    assert store.compare_and_set(None, topology)
    return store, topology


def start_adding(store: StateDirStore, topology: Topology, node: RedisProcess) -> Topology:
    """Epoch + 1: ``node`` joins and arcs start moving to it (what ADD-NODE writes)."""
    new, migrations = plan_add_node(topology, new_shard(node.address)).apply(topology)
    assert migrations and store.compare_and_set(topology.epoch, new)
    return new


def participant(store: StateDirStore, pid: str):
    return next((p for p in store.participants() if p.id == pid), None)


def moving_keys(topology: Topology, count: int, prefix: str = "m") -> list[str]:
    """Keys in arcs that are migrating in ``topology``."""
    code_of = topology.placement().node_index
    found = []
    for i in range(100_000):
        key = f"{prefix}:{i}"
        if code_of(key.encode()) < 0:
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError("no keys in moving arcs")


def steady_key(topology: Topology) -> str:
    """A key in an arc that is not moving."""
    code_of = topology.placement().node_index
    return next(k for k in (f"steady:{i}" for i in range(1000)) if code_of(k.encode()) >= 0)


def holder(nodes: list[RedisProcess], key: str) -> list[str]:
    return [n.address for n in nodes if direct(n).exists(key)]


def where_keys_are(nodes: list[RedisProcess], match: str = "*") -> dict[str, list[str]]:
    """Key -> the nodes that hold it, from a SCAN of every node."""
    found: dict[str, list[str]] = {}
    for node in nodes:
        for key in direct(node).scan_iter(match=match, count=1000):
            found.setdefault(key.decode(), []).append(node.address)
    return found


# ---------------------------------------------------------------- the library-driven workload


class LibraryWorkload:
    """Threads sharing one library client, each writing and reading its own keys, so the
    expected state of every key is known exactly: every acknowledged SET/DEL/MSET and INCR is
    recorded, and every read must return the last acknowledged value. A write that raised may
    or may not have run: the key's candidates then include both outcomes until the next
    acknowledged write. ``verify`` reads everything back through any client."""

    def __init__(self, client: ShardedClient, threads: int = 4, keys: int = 1500,
                 counters: int = 150) -> None:
        self.client = client
        self.keys = [[f"lw:{t}:{i}" for i in range(keys)] for t in range(threads)]
        self.counters = [[f"lw:{t}:ctr:{i}" for i in range(counters)] for t in range(threads)]
        #: key -> the values it may hold (None: absent)
        self.expected: dict[str, set[bytes | None]] = {}
        #: counter -> [acknowledged increments, increments that may have run]
        self.totals: dict[str, list[int]] = {}
        self.violations: list[str] = []
        self.errors: Counter[str] = Counter()
        self.ops = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True)
                         for t in range(threads)]

    def prefill(self) -> None:
        with self.client.pipeline() as pipe:
            for key in (k for keys in self.keys for k in keys):
                value = f"{key}=0".encode()
                pipe.set(key, value)
                self.expected[key] = {value}
            written = len(pipe)
            for key in (k for keys in self.counters for k in keys):
                pipe.delete(key)
                self.totals[key] = [0, 0]
            assert all(pipe.execute()[:written])

    def __enter__(self) -> LibraryWorkload:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self._threads), "a workload thread hung"

    # ------------------------------------------------------------------ one client thread

    def _run(self, index: int) -> None:
        rng = random.Random(index)
        keys, counters = self.keys[index], self.counters[index]
        seq = 0
        while not self._stop.is_set():
            seq += 1
            r = rng.random()
            try:
                if r < 0.30:
                    self._set(rng.choice(keys), f"{index}:{seq}".encode())
                elif r < 0.55:
                    key = rng.choice(keys)
                    self._check(key, self.client.get(key), "GET")
                elif r < 0.70:
                    self._incr(rng.choice(counters))
                elif r < 0.75:
                    key = rng.choice(counters)
                    got = int(self.client.get(key) or 0)
                    lo, hi = self.totals[key]
                    if not lo <= got <= hi:
                        self.violations.append(f"counter {key}: read {got}, expected {lo}..{hi}")
                elif r < 0.79:
                    self._delete(rng.choice(keys))
                elif r < 0.87:
                    self._mset({k: f"{index}:{seq}:{n}".encode()
                                for n, k in enumerate(rng.sample(keys, 5))})
                elif r < 0.94:
                    chosen = rng.sample(keys, 8)
                    for key, value in zip(chosen, self.client.mget(chosen), strict=True):
                        self._check(key, value, "MGET")
                else:
                    self._pipeline(rng.sample(keys, 4), rng.choice(counters), index, seq)
                self.ops += 1
            except redis.RedisError as exc:  # a read that failed: nothing to record
                self.errors[type(exc).__name__] += 1

    def _check(self, key: str, value: bytes | None, how: str) -> None:
        if value not in self.expected[key]:
            self.violations.append(f"{how} {key} returned {value!r}, acknowledged "
                                   f"{sorted(self.expected[key], key=repr)!r}")

    def _written(self, key: str, value: bytes | None, ok: bool) -> None:
        if ok:
            self.expected[key] = {value}
        else:
            self.expected[key] = self.expected[key] | {value}

    def _set(self, key: str, value: bytes) -> None:
        try:
            ok = self.client.set(key, value) is True
        except redis.RedisError as exc:
            self.errors[type(exc).__name__] += 1
            ok = False
        self._written(key, value, ok)

    def _delete(self, key: str) -> None:
        try:
            self.client.delete(key)
            ok = True
        except redis.RedisError as exc:
            self.errors[type(exc).__name__] += 1
            ok = False
        self._written(key, None, ok)

    def _mset(self, items: dict[str, bytes]) -> None:
        try:
            ok = self.client.mset(items) is True
        except redis.RedisError as exc:  # MSET is split per node: each part may have run
            self.errors[type(exc).__name__] += 1
            ok = False
        for key, value in items.items():
            self._written(key, value, ok)

    def _incr(self, key: str) -> None:
        total = self.totals[key]
        try:
            got = self.client.incr(key)
        except redis.RedisError as exc:
            self.errors[type(exc).__name__] += 1
            total[1] += 1
            return
        if not total[0] + 1 <= got <= total[1] + 1:
            self.violations.append(f"INCR {key} returned {got}, expected "
                                   f"{total[0] + 1}..{total[1] + 1}")
        total[0] += 1
        total[1] += 1

    def _pipeline(self, keys: list[str], counter: str, index: int, seq: int) -> None:
        """SET a, GET a, GET b, INCR c, DEL d, MGET a b: read-your-writes within one batch."""
        a, b, _, d = keys
        value = f"{index}:{seq}:p".encode()
        pipe = self.client.pipeline()
        pipe.set(a, value).get(a).get(b).incr(counter).delete(d).mget([a, b])
        results = pipe.execute(raise_on_error=False)
        set_ok, got_a, got_b, incr, _deleted, both = results
        failed = [r for r in results if isinstance(r, Exception)]
        for exc in failed:
            self.errors[type(exc).__name__] += 1
        self._written(a, value, set_ok is True)
        if not isinstance(got_a, Exception):
            self._check(a, got_a, "pipelined GET")
        if not isinstance(got_b, Exception):
            self._check(b, got_b, "pipelined GET")
        total = self.totals[counter]
        if isinstance(incr, Exception):
            total[1] += 1
        else:
            if not total[0] + 1 <= incr <= total[1] + 1:
                self.violations.append(f"pipelined INCR {counter} returned {incr}")
            total[0] += 1
            total[1] += 1
        self._written(d, None, not isinstance(_deleted, Exception))
        if not isinstance(both, Exception):
            self._check(a, both[0], "pipelined MGET")
            self._check(b, both[1], "pipelined MGET")

    # ------------------------------------------------------------------ afterwards

    def verify(self, reader: Any, how: str) -> list[str]:
        """Every key read back through ``reader`` (the proxy, or a library client)."""
        problems: list[str] = []
        names = list(self.expected)
        for start in range(0, len(names), 500):
            chunk = names[start:start + 500]
            for key, value in zip(chunk, reader.mget(chunk), strict=True):
                if value not in self.expected[key]:
                    problems.append(f"{how}: {key} is {value!r}, acknowledged "
                                    f"{sorted(self.expected[key], key=repr)!r}")
        counters = list(self.totals)
        for key, value in zip(counters, reader.mget(counters), strict=True):
            lo, hi = self.totals[key]
            if not lo <= int(value or 0) <= hi:
                problems.append(f"{how}: counter {key} is {value!r}, expected {lo}..{hi}")
        return problems


# ---------------------------------------------------------------- with a proxy


def test_state_dir_client_places_keys_exactly_like_the_proxy(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(3)
    proxy = make_proxy("--config", write_config(tmp_path, nodes))
    writer = proxy.client()
    names = [f"place:{i}" for i in range(KEYS)]
    with writer.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.set(name, name)
        pipe.execute()
    on_node = {key: where[0] for key, where in where_keys_are(nodes).items()}
    assert len(on_node) == KEYS
    with ShardedClient.from_state_dir(tmp_path / "state") as client:
        assert {name: client.node_for(name) for name in names} == on_node
        assert client.mget(names[:500]) == [n.encode() for n in names[:500]]
        client.mset({f"back:{i}": i for i in range(1000)})
    assert writer.mget([f"back:{i}" for i in range(1000)]) == [b"%d" % i for i in range(1000)]


def test_state_dir_client_is_a_participant_until_closed(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(3)
    proxy = make_proxy("--config", write_config(tmp_path, nodes))
    client = ShardedClient.from_state_dir(tmp_path / "state")
    try:
        epoch = admin(proxy, "STATUS")["epoch"]
        assert client.epoch == epoch
        mine = [p for p in admin(proxy, "STATUS")["participants"]
                if p["id"] == client.participant_id]
        assert mine == [{"id": client.participant_id, "kind": "library", "acked_epoch": epoch,
                         "alive": True}]
        client.set("k", "v")
    finally:
        client.close()
    ids = [p["id"] for p in admin(proxy, "STATUS")["participants"]]
    assert client.participant_id not in ids
    assert not client._follow._thread.is_alive()
    with pytest.raises(LeaseError, match="closed"):
        client.get("k")


def test_library_loses_nothing_while_the_proxy_adds_a_node(make_nodes, make_proxy, tmp_path):
    nodes = make_nodes(4)
    # slow enough that the workload runs through the whole move
    proxy = make_proxy("--config", write_config(tmp_path, nodes[:3],
                                                "[migration]\nkeys_per_sec = 300\n"))
    filler = {f"fill:{i}": f"f{i}" for i in range(KEYS)}
    with ShardedClient.from_state_dir(tmp_path / "state", poll_interval=0.1) as client:
        client.mset(filler)
        start_epoch = client.epoch
        work = LibraryWorkload(client)
        work.prefill()
        with work:
            eventually(lambda: work.ops > 2000, 30, "the workload under way")
            before = work.ops
            started = admin(proxy, "ADD-NODE", nodes[3].address)
            assert started["migrations"]
            migrations = wait_migrations(proxy)
            during = work.ops - before
            eventually(lambda: work.ops > before + during + 1000, 30, "the workload after")
        assert all(m["state"] == "done" for m in migrations), migrations
        assert during > 1000, "the workload must run through the move"
        assert client.moved_on_access > 0  # its own MIGRATEs, not only the mover's
        status = admin(proxy, "STATUS")
        # the client followed every epoch (start, finish of each migration) and acked it
        eventually(lambda: client.epoch == admin(proxy, "STATUS")["epoch"], 10, "caught up")
        assert client.epoch >= start_epoch + 2
        acked = {p["id"]: p["acked_epoch"] for p in admin(proxy, "STATUS")["participants"]}
        assert acked[client.participant_id] == client.epoch
        print(f"library workload: {work.ops} operations ({during} during the move), errors "
              f"{dict(work.errors)}, keys it moved on access: {client.moved_on_access}, "
              f"by the mover: {sum(m['moved'] for m in migrations)}; "
              f"{len(status['shards'])} shards")
        assert work.violations == [], work.violations[:10]
        assert work.verify(proxy.client(), "through the proxy") == []
        assert work.verify(client, "through the library") == []
        # after the move, every key sits where the library (and the proxy) look for it
        assert len(client.nodes) == 4
        placed = where_keys_are(nodes, "fill:*")
        assert {name: placed.get(name) for name in filler} == {
            name: [client.node_for(name)] for name in filler}
        assert client.mget(list(filler)) == [v.encode() for v in filler.values()]
        assert direct(nodes[3]).dbsize() > 0


# ---------------------------------------------------------------- the rules, one at a time


def test_keys_in_moving_arcs_are_migrated_before_they_are_served(make_nodes, tmp_path):
    nodes = make_nodes(4)
    store, topology = stored_topology(nodes[:3], tmp_path)
    with ShardedClient.from_state_dir(tmp_path / "state", poll_interval=0.05) as client:
        new = start_adding(store, topology, nodes[3])
        moving = moving_keys(new, 40)
        client.mset({key: key for key in moving})  # written at epoch 1: on the sources
        sources = {key: holder(nodes, key) for key in moving}
        assert all(where and where[0] != nodes[3].address for where in sources.values())
        eventually(lambda: participant(store, client.participant_id).acked_epoch == new.epoch,
                   5, "the new epoch acknowledged")
        assert client.epoch == new.epoch
        # one key: GET moves it, then reads it on the target
        assert client.get(moving[0]) == moving[0].encode()
        assert holder(nodes, moving[0]) == [nodes[3].address]
        assert client.node_for(moving[0]) == nodes[3].address
        # a split MGET and a pipeline: every moving key moved first
        assert client.mget(moving[1:10] + ["plain"]) == [k.encode() for k in moving[1:10]] + [None]
        with client.pipeline() as pipe:
            for key in moving[10:20]:
                pipe.append(key, "+")
            pipe.delete(moving[20])
            assert pipe.execute() == [len(k) + 1 for k in moving[10:20]] + [1]
        for key in moving[1:21]:
            assert holder(nodes, key) == ([nodes[3].address] if key != moving[20] else [])
        # a key not there any more (NOKEY) is simply served by the target
        assert client.set(moving[20], "again") is True
        assert holder(nodes, moving[20]) == [nodes[3].address]
        # keys not touched stay on their source until the mover (not running here) moves them
        assert all(holder(nodes, key) == sources[key] for key in moving[21:])


def test_a_failed_migrate_raises_tryagain_and_the_command_does_not_run(make_nodes, tmp_path):
    nodes = make_nodes(4)
    store, topology = stored_topology(nodes[:3], tmp_path)
    with ShardedClient.from_state_dir(tmp_path / "state", poll_interval=0.05) as client:
        new = start_adding(store, topology, nodes[3])
        moving = moving_keys(new, 3)
        client.mset({key: "old" for key in moving})
        eventually(lambda: client.epoch == new.epoch, 5, "the new epoch applied")
        nodes[3].stop()  # the target: MIGRATE fails on the source
        with pytest.raises(redis.exceptions.TryAgainError,
                           match=r"could not move .* the command did not run"):
            client.set(moving[0], "new")
        source = next(n for n in nodes[:3] if direct(n).exists(moving[0]))
        assert direct(source).get(moving[0]) == b"old"
        steady = steady_key(new)
        pipe = client.pipeline()
        pipe.set(steady, "x").get(moving[1])
        ok, error = pipe.execute(raise_on_error=False)
        assert ok is True and isinstance(error, redis.exceptions.TryAgainError)
        with pytest.raises(redis.exceptions.TryAgainError):
            client.mget([steady, moving[2]])


def test_an_epoch_is_acknowledged_only_after_requests_routed_by_the_old_one_finish(
        make_nodes, tmp_path):
    nodes = make_nodes(3)
    store, topology = stored_topology(nodes, tmp_path)
    with ShardedClient.from_state_dir(tmp_path / "state", poll_interval=0.05) as client:
        pid = client.participant_id
        held = client._follow.enter(client)  # a request in flight, routed by epoch 1
        token = topology.tokens[0] - 1
        split = topology.split([token])
        assert split.epoch == 2 and store.compare_and_set(1, split)
        eventually(lambda: client.epoch == 2, 5, "epoch 2 routing requests")
        time.sleep(0.5)  # several polls and heartbeats
        assert participant(store, pid).acked_epoch == 1
        assert client.get("during") is None  # new requests use epoch 2 meanwhile
        held.gate.leave()
        eventually(lambda: participant(store, pid).acked_epoch == 2, 5, "epoch 2 acknowledged")


def test_a_lapsed_lease_reloads_and_registers_before_serving(make_nodes, tmp_path):
    nodes = make_nodes(4)
    store, topology = stored_topology(nodes[:3], tmp_path)
    store.timeout = 1.0  # as the proxies would see it with participant_timeout 1 s
    client = ShardedClient.from_state_dir(tmp_path / "state", poll_interval=0.05,
                                          heartbeat_interval=0.2, participant_timeout=1.0)
    try:
        follow = client._follow
        pid = client.participant_id
        follow._stop.set()  # the follower stalls (a frozen thread, a store it cannot reach)
        follow._thread.join()
        new = start_adding(store, topology, nodes[3])
        time.sleep(1.2)
        assert participant(store, pid).alive is False  # barriers stopped waiting for it
        store.prune()
        assert participant(store, pid) is None
        assert client.epoch == 1
        key = moving_keys(new, 1)[0]
        assert client.set(key, "v") is True  # reloaded and registered before serving
        assert client.epoch == new.epoch
        assert holder(nodes, key) == [nodes[3].address]  # served move-then-serve
        again = participant(store, pid)
        assert again is not None and again.alive and again.acked_epoch == new.epoch
    finally:
        client.close()


def test_an_epoch_written_while_joining_is_applied_before_serving(make_nodes, tmp_path,
                                                                  monkeypatch):
    nodes = make_nodes(4)
    store, topology = stored_topology(nodes[:3], tmp_path)
    register = StateDirStore.register

    def register_then_start_a_move(self, *args, **kwargs):
        register(self, *args, **kwargs)
        if self.epoch() == 1:  # a barrier checked just before this registration counted
            start_adding(self, topology, nodes[3])

    monkeypatch.setattr(StateDirStore, "register", register_then_start_a_move)
    with ShardedClient.from_state_dir(tmp_path / "state") as client:
        assert client.epoch == 2  # before the first command, not a poll later
        assert participant(store, client.participant_id).acked_epoch == 2


def test_a_pruned_participant_registers_again(make_nodes, tmp_path):
    nodes = make_nodes(3)
    store, _ = stored_topology(nodes, tmp_path)
    with ShardedClient.from_state_dir(tmp_path / "state", poll_interval=0.05,
                                      heartbeat_interval=0.1) as client:
        store.unregister(client.participant_id)
        eventually(lambda: participant(store, client.participant_id) is not None, 5,
                   "registered again")
        assert client.set("k", 1) is True


def test_pools_follow_shards_joining_and_leaving(make_nodes, tmp_path):
    nodes = make_nodes(4)
    store, topology = stored_topology(nodes[:3], tmp_path)
    with ShardedClient.from_state_dir(tmp_path / "state", poll_interval=0.05) as client:
        client.mset({f"k{i}": i for i in range(50)})
        added = topology.add_shard(new_shard(nodes[3].address))
        assert store.compare_and_set(1, added)
        eventually(lambda: len(client.nodes) == 4, 5, "the shard joined")
        removed = added.remove_shard(nodes[3].address)
        assert store.compare_and_set(added.epoch, removed)
        eventually(lambda: client.nodes == [n.address for n in nodes[:3]], 5, "the shard left")
        eventually(lambda: len(client._pools) == 3, 5, "its pool closed")
        assert client.mget([f"k{i}" for i in range(50)]) == [b"%d" % i for i in range(50)]


def test_static_clients_are_not_participants_and_an_empty_state_dir_is_refused(make_nodes,
                                                                              tmp_path):
    nodes = make_nodes(2)
    client = ShardedClient([n.address for n in nodes])
    assert client.participant_id is None and client.epoch == 0
    assert client.set("x", 1) is True
    client.close()
    StateDirStore(tmp_path / "empty")  # a state directory no proxy has written yet
    with pytest.raises(StoreError, match="holds no topology"):
        ShardedClient.from_state_dir(tmp_path / "empty")


# ---------------------------------------------------------------- trio


async def test_trio_client_follows_an_add_node_without_losing_writes(make_nodes, make_proxy,
                                                                     tmp_path):
    nodes = make_nodes(4)
    proxy = make_proxy("--config", write_config(tmp_path, nodes[:3],
                                                "[migration]\nkeys_per_sec = 300\n"))
    run = trio.to_thread.run_sync
    expected: dict[str, bytes] = {}
    totals: Counter[str] = Counter()
    violations: list[str] = []
    errors: Counter[str] = Counter()

    async def worker(client: TrioShardedClient, index: int, stop: trio.Event) -> None:
        rng = random.Random(index)
        keys = [f"tw:{index}:{i}" for i in range(800)]
        counters = [f"tw:{index}:ctr:{i}" for i in range(50)]
        await client.mset({k: b"0" for k in keys})
        expected.update({k: b"0" for k in keys})
        await client.delete(*counters)
        seq = 0
        while not stop.is_set():
            seq += 1
            key = rng.choice(keys)
            try:
                r = rng.random()
                if r < 0.35:
                    value = f"{index}:{seq}".encode()
                    assert await client.set(key, value) is True
                    expected[key] = value
                elif r < 0.7:
                    got = await client.get(key)
                    if got != expected[key]:
                        violations.append(f"GET {key}: {got!r} != {expected[key]!r}")
                elif r < 0.85:
                    counter = rng.choice(counters)
                    totals[counter] += 1
                    if await client.incr(counter) != totals[counter]:
                        violations.append(f"INCR {counter}")
                else:
                    chosen = rng.sample(keys, 6)
                    got = await client.mget(chosen)
                    if got != [expected[k] for k in chosen]:
                        violations.append(f"MGET {chosen}")
            except redis.RedisError as exc:  # writes are asserted below never to fail
                errors[type(exc).__name__] += 1
                raise

    async with TrioShardedClient.from_state_dir(tmp_path / "state",
                                                poll_interval=0.1) as client:
        start_epoch = client.epoch
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for index in range(3):
                nursery.start_soon(worker, client, index, stop)
            await trio.sleep(1.0)
            started = await run(admin, proxy, "ADD-NODE", nodes[3].address)
            assert started["migrations"]
            migrations = await run(wait_migrations, proxy)
            await trio.sleep(0.5)
            stop.set()
        assert all(m["state"] == "done" for m in migrations), migrations
        status = await run(admin, proxy, "STATUS")
        assert client.epoch >= start_epoch + 2
        acked = {p["id"]: p["acked_epoch"] for p in status["participants"]}
        assert acked[client.participant_id] == client.epoch == status["epoch"]
        assert violations == [] and not errors
        assert client.moved_on_access > 0  # its own MIGRATEs served part of the move
        names = list(expected)
        assert await client.mget(names) == [expected[k] for k in names]
        pid = client.participant_id
    reader = proxy.client()
    assert await run(reader.mget, names) == [expected[k] for k in names]
    counters = list(totals)
    assert await run(reader.mget, counters) == [b"%d" % totals[k] for k in counters]
    status = await run(admin, proxy, "STATUS")
    assert pid not in [p["id"] for p in status["participants"]]  # unregistered on exit
    assert direct(nodes[3]).dbsize() > 0
