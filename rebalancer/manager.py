"""The proxy's topology participant: where its topology comes from, how changes reach it,
and the migrations it runs.

- With a state directory, the topology lives in the store (rebalancer/store.py): the proxy
  starts from it (not from its command-line nodes, once one exists), registers as a
  participant, acknowledges each epoch it has applied, and polls for epochs written by
  others (another worker, the admin of another proxy). Without one, the topology lives in
  this process only.
- Admin operations plan a change (rebalancer/planner.py), write it with compare-and-set, and
  apply it here at once.
- Migrations are run by one participant at a time (an exclusive lock on the state directory
  is the lease; its holder dying releases it and another takes over), each after the epoch
  barrier: every live participant has acknowledged the epoch that made its arcs MIGRATING.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path

import trio

from backends.client import NodeClient
from rebalancer.mover import MoveProgress, MoveSettings, MoveStuck, move_arcs
from rebalancer.planner import plan_add_node, plan_rebalance, plan_remove_node
from rebalancer.store import StateDirStore
from rebalancer.topology import Migration, Shard, Topology, TopologyError
from router.nodes import NodeSpec

log = logging.getLogger("ringleader.topology")

POLL_INTERVAL = 0.2
HEARTBEAT_INTERVAL = 1.0
#: How long requests for a moving arc wait for the epoch barrier before they get TRYAGAIN.
HOLD_LIMIT = 15.0


class AdminError(Exception):
    """An admin request that cannot be done; the message is the client's error."""


def initial_topology(config, state_dir: str | None) -> tuple[Topology, StateDirStore | None]:
    """The topology to start with: the stored one if any, else the configuration's."""
    from_config = Topology.from_config(config)
    if not state_dir:
        return from_config, None
    store = StateDirStore(state_dir)
    stored = store.load()
    if stored is None:
        if not store.compare_and_set(None, from_config):
            stored = store.load()
        else:
            return from_config, store
    if {s.primary.address for s in stored.shards} != {n.address for n in config.nodes}:
        log.warning("serving the stored topology (epoch %d, %d shards) from %s, not the "
                    "configured nodes", stored.epoch, len(stored.shards), state_dir)
    return stored, store


class TopologyManager:
    def __init__(self, server, topology: Topology, store: StateDirStore | None,
                 settings: MoveSettings) -> None:
        self.server = server
        self.topology = topology
        self.store = store
        self.settings = settings
        port = server.address[1] if server.address else 0
        self.participant_id = f"proxy:{socket.gethostname()}:{os.getpid()}:{port}"
        self.progress: dict[int, MoveProgress] = {}
        self._movers: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._lease_fd: int | None = None
        self._edit_lock = trio.Lock()
        self._holding_since: float | None = None
        #: shard id -> migrations that must finish before the shard is removed
        self._remove_after: dict[str, set[int]] = {}
        if store is not None:
            self._recall_history()

    def _recall_history(self) -> None:
        """Migrations finished before this process started, from the store's journal."""
        try:
            events = self.store.journal()
        except OSError:
            return
        for event in events:
            mid = event.get("migration")
            if mid is None:
                continue
            kind = event.get("kind")
            progress = self.progress.get(mid)
            if progress is None:
                progress = self.progress[mid] = MoveProgress(
                    mid, event.get("source", "?"), event.get("target", "?"),
                    event.get("arcs", 0), started=event.get("at", time.time()))
            if kind in ("done", "failed", "cancelled"):
                progress.state = kind
                progress.finished = event.get("at")
                progress.moved = event.get("moved", progress.moved)
                progress.message = event.get("message", progress.message)
            elif kind in ("started", "moving"):
                progress.state = "waiting-barrier"
        live = {m.id for m in self.topology.migrations}
        for mid, progress in self.progress.items():
            if progress.state not in ("done", "failed", "cancelled") and mid not in live:
                progress.state = "done"  # it left the topology: finished before we started
                progress.message = progress.message or "finished (before this process started)"

    # ------------------------------------------------------------------ lifecycle

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.store is not None:
                await trio.to_thread.run_sync(
                    lambda: self.store.register(self.participant_id, "proxy",
                                                {"pid": os.getpid()}, self.topology.epoch))
            task_status.started()
            try:
                while True:
                    await self._follow_store()
                    await self._check_barriers()
                    self._ensure_movers()
                    await trio.sleep(POLL_INTERVAL)
            finally:
                if self.store is not None:
                    with trio.CancelScope(shield=True):
                        try:
                            self.store.unregister(self.participant_id)
                        except OSError:
                            pass
                self._release_lease()

    async def _follow_store(self) -> None:
        if self.store is None:
            return
        store = self.store
        epoch = await trio.to_thread.run_sync(store.epoch)
        if epoch is not None and epoch != self.topology.epoch:
            new = await trio.to_thread.run_sync(store.load)
            if new is not None and new.epoch != self.topology.epoch:
                self._apply(new)
        now = time.time()
        if now - getattr(self, "_beat", 0.0) >= HEARTBEAT_INTERVAL:
            self._beat = now
            try:
                await trio.to_thread.run_sync(store.heartbeat, self.participant_id,
                                              self.topology.epoch)
            except LookupError:  # pruned while we were away: register again
                await trio.to_thread.run_sync(
                    lambda: store.register(self.participant_id, "proxy", {"pid": os.getpid()},
                                           self.topology.epoch))

    def _apply(self, topology: Topology) -> None:
        log.info("topology epoch %d: %d shards, %d migrations", topology.epoch,
                 len(topology.shards), len(topology.migrations))
        self.topology = topology
        self.server.apply_topology(topology)
        live = {m.id for m in topology.migrations}
        for mid, scope in list(self._movers.items()):
            if mid not in live:
                scope.cancel()

    async def _commit(self, new: Topology) -> None:
        """Write ``new`` (compare-and-set on the epoch) and apply it here."""
        if self.store is None and self.server.config.workers > 1:
            raise AdminError("ERR ringleader: with several workers, topology changes need a "
                             "state directory they all follow (--state-dir)")
        if self.store is not None:
            expected = self.topology.epoch
            ok = await trio.to_thread.run_sync(self.store.compare_and_set, expected, new)
            if not ok:
                await self._follow_store()
                raise AdminError("ERR ringleader: the topology changed meanwhile (another admin "
                                 "or proxy); look at the status and try again")
            await trio.to_thread.run_sync(self.store.heartbeat, self.participant_id, new.epoch)
        self._apply(new)

    # ------------------------------------------------------------------ movers

    def _have_lease(self) -> bool:
        if self.store is None:
            return True
        if self._lease_fd is not None:
            return True
        path = Path(self.store.path) / "mover.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lease_fd = fd
        return True

    def _release_lease(self) -> None:
        if self._lease_fd is not None:
            os.close(self._lease_fd)
            self._lease_fd = None

    def _ensure_movers(self) -> None:
        if not self.topology.migrations or self._nursery is None or not self._have_lease():
            return
        for migration in self.topology.migrations:
            if migration.id not in self._movers:
                scope = trio.CancelScope()
                self._movers[migration.id] = scope
                self._nursery.start_soon(self._run_mover, migration, scope, self.topology.epoch)

    def _progress_for(self, migration: Migration) -> MoveProgress:
        progress = self.progress.get(migration.id)
        if progress is None:
            progress = self.progress[migration.id] = MoveProgress(
                migration.id, migration.source, migration.target, len(migration.arcs))
            self.server.backend.migration_stats[migration.id] = progress
        return progress

    def _share_of_throttle(self) -> MoveSettings:
        """The mover settings for one of the migrations under way: ``keys_per_sec`` and
        ``bytes_per_sec`` are for all of them together (an add-node moves from every shard
        at once, and each move costs the clients alike), so each gets an equal share."""
        count = max(1, len(self.topology.migrations))
        settings = self.settings
        return dataclasses.replace(settings, keys_per_sec=settings.keys_per_sec / count,
                                   bytes_per_sec=settings.bytes_per_sec / count)

    def _belongs(self, migration_id: int):
        def belongs(key: bytes) -> bool:
            topology = self.topology
            code = topology.placement().node_index(key)
            return code < 0 and topology.migration_of(code).id == migration_id
        return belongs

    async def _run_mover(self, migration: Migration, scope: trio.CancelScope,
                         epoch: int) -> None:
        progress = self._progress_for(migration)
        with scope:
            try:
                progress.state = "waiting-barrier"
                await self._barrier(epoch)
                topology = self.topology
                source = topology.shard(migration.source).primary
                target = topology.shard(migration.target).primary
                config = self.server.config
                self._journal({"migration": migration.id, "kind": "moving"})
                backend = self.server.backend
                await move_arcs(progress=progress, source=source, target=target,
                                belongs=self._belongs(migration.id),
                                settings=self._share_of_throttle(),
                                db=config.node_db, username=config.node_username,
                                password=config.node_password,
                                on_moved=lambda keys, mid=migration.id:
                                backend.moved_to_target(mid, keys))
                async with self._edit_lock:
                    if any(m.id == migration.id for m in self.topology.migrations):
                        # finishing ends this migration: it must not cancel its own mover
                        self._movers.pop(migration.id, None)
                        # adjacent arcs with one owner become one: the ring stays small
                        await self._commit(
                            self.topology.finish_migration(migration.id).merge_adjacent())
                progress.state = "done"
                progress.finished = time.time()
                progress.message = f"moved {progress.moved + progress.moved_on_access} keys"
                self._journal({"migration": migration.id, "kind": "done",
                               "moved": progress.moved})
                log.info("migration %d done: %s", migration.id, progress.message)
                if self._remove_after:
                    await self._remove_drained()
            except MoveStuck as exc:
                progress.state = "failed"
                progress.message = str(exc)
                self._journal({"migration": migration.id, "kind": "failed", "message": str(exc)})
            except AdminError as exc:
                progress.state = "failed"
                progress.message = str(exc)
        if scope.cancelled_caught and progress.state not in ("done", "failed"):
            progress.state = "cancelled" if progress.state != "done" else progress.state
        self._movers.pop(migration.id, None)

    async def _check_barriers(self) -> None:
        """Migrations whose barrier has passed may move keys on access (held until then)."""
        backend = self.server.backend
        waiting = [m.id for m in self.topology.migrations if m.id not in backend.ready_migrations]
        if not waiting:
            self._holding_since = None
            return
        if self.store is not None:
            passed = await trio.to_thread.run_sync(self.store.all_acked, self.topology.epoch)
            if not passed:
                now = time.monotonic()
                self._holding_since = self._holding_since or now
                if now - self._holding_since > HOLD_LIMIT:
                    # a participant acknowledges neither the epoch nor its own death: the
                    # held requests get an error rather than wait on it without end
                    for mid in waiting:
                        backend.fail_held(mid)
                return
        self._holding_since = None
        for mid in waiting:
            backend.migration_ready(mid)

    async def _barrier(self, epoch: int) -> None:
        """Wait until every live participant routes the moving arcs with move-then-serve."""
        if self.store is None:
            return
        while not await trio.to_thread.run_sync(self.store.all_acked, epoch):
            await trio.sleep(POLL_INTERVAL)

    def _journal(self, event: dict) -> None:
        if self.store is not None:
            try:
                self.store.journal_append({**event, "at": time.time()})
            except OSError as exc:
                log.warning("journal: %s", exc)

    # ------------------------------------------------------------------ admin operations

    async def sample_arc_keys(self, per_node: int = 500) -> dict[int, int]:
        """Keys per arc, estimated from random keys of every shard scaled by its size."""
        topology = self.topology
        counts: Counter[int] = Counter()
        placement = topology.placement()
        for index, shard in enumerate(topology.shards):
            node = shard.primary
            config = self.server.config
            try:
                async with await NodeClient.connect(node, username=config.node_username,
                                                    password=config.node_password,
                                                    db=config.node_db) as client:
                    size = await client.call("DBSIZE")
                    if not size:
                        continue
                    keys = await client.pipeline([("RANDOMKEY",)] * min(per_node, size))
            except (OSError, ConnectionError, trio.TooSlowError) as exc:
                raise AdminError(f"ERR ringleader: cannot sample keys on {node.address}: "
                                 f"{exc}") from None
            keys = [k for k in keys if isinstance(k, bytes)]
            if not keys:
                continue
            scale = size / len(keys)
            for key in keys:
                if placement.node_index(key) != index:
                    continue  # a key in a moving arc, or a leftover: not this shard's load
                counts[topology.arc_containing(placement.key_hash(key))] += scale
        return {end: int(round(n)) for end, n in counts.items()}

    async def plan(self, kind: str, **params):
        topology = self.topology
        if not topology.is_ring:
            raise AdminError("ERR ringleader: a modula distribution cannot be changed online")
        arc_keys = await self.sample_arc_keys()
        try:
            if kind == "add":
                return plan_add_node(topology, params["shard"], arc_keys=arc_keys)
            if kind == "remove":
                return plan_remove_node(topology, params["shard_id"], arc_keys=arc_keys)
            if kind == "rebalance":
                return plan_rebalance(topology, arc_keys, target=params.get("target", 1.10),
                                      churn=params.get("churn", 0.10))
        except (TopologyError, KeyError, ValueError) as exc:
            raise AdminError(f"ERR ringleader: {exc}") from None
        raise AdminError(f"ERR ringleader: unknown plan {kind}")

    async def execute(self, plan) -> list[Migration]:
        async with self._edit_lock:
            try:
                new, migrations = plan.apply(self.topology)
            except (TopologyError, ValueError) as exc:
                raise AdminError(f"ERR ringleader: {exc}") from None
            await self._commit(new)
        await self._check_barriers()
        for migration in migrations:
            self._progress_for(migration)
            self._journal({"migration": migration.id, "kind": "started",
                           "source": migration.source, "target": migration.target,
                           "arcs": len(migration.arcs)})
        if plan.remove_after:
            draining = {m.id for m in self.topology.migrations if m.source == plan.remove_after}
            self._remove_after[plan.remove_after] = draining
            self._journal({"kind": "remove-after", "shard": plan.remove_after,
                           "migrations": sorted(draining)})
            await self._remove_drained()
        self._ensure_movers()
        return migrations

    async def _remove_drained(self) -> None:
        """Shards whose arcs have all moved away leave the topology."""
        for shard_id, waiting in list(self._remove_after.items()):
            live = {m.id for m in self.topology.migrations}
            if waiting & live:
                continue
            topology = self.topology
            if topology.arcs_of(shard_id) or any(shard_id in (m.source, m.target)
                                                 for m in topology.migrations):
                continue
            async with self._edit_lock:
                await self._commit(self.topology.remove_shard(shard_id))
            del self._remove_after[shard_id]
            self._journal({"kind": "removed", "shard": shard_id})
            log.info("shard %s drained and removed", shard_id)

    async def move(self, arcs: list[int], target: str, dry_run: bool) -> dict:
        async with self._edit_lock:
            try:
                target_id = self._shard_id(target)
                new, migrations = self.topology.start_migration(arcs, target_id)
            except (TopologyError, ValueError, KeyError) as exc:
                raise AdminError(f"ERR ringleader: {exc}") from None
            if dry_run:
                return {"plan": {"kind": "move", "moves": [
                    {"arcs": len(m.arcs), "source": m.source, "target": m.target}
                    for m in migrations]}, "migrations": []}
            await self._commit(new)
        for migration in migrations:
            self._progress_for(migration)
        self._ensure_movers()
        return {"plan": {"kind": "move"}, "migrations": [m.id for m in migrations]}

    async def cancel(self, migration_id: int) -> None:
        """Stop a migration: its arcs move back to the source (keys already moved return)."""
        async with self._edit_lock:
            topology = self.topology
            try:
                migration = topology.migration(migration_id)
            except (KeyError, TopologyError):
                raise AdminError(f"ERR ringleader: no migration {migration_id} in progress") from None
            finished = topology.finish_migration(migration_id)
            back, reverse = finished.start_migration(migration.arcs, migration.source)
            await self._commit(back)
        progress = self._progress_for(migration)
        progress.state = "cancelled"
        progress.finished = time.time()
        progress.message = (f"cancelled; keys already moved go back to {migration.source} "
                            f"(migration {', '.join(str(m.id) for m in reverse)})")
        for m in reverse:
            self._progress_for(m)
        self._journal({"migration": migration_id, "kind": "cancelled"})
        self._ensure_movers()
        return [m.id for m in reverse]

    def _shard_id(self, text: str) -> str:
        for shard in self.topology.shards:
            if text in (shard.id, shard.primary.address):
                return shard.id
        raise AdminError(f"ERR ringleader: no shard {text!r}")

    def shard_id(self, text: str) -> str:
        return self._shard_id(text)

    def migrations_json(self) -> list[dict]:
        return [p.to_json() for _, p in sorted(self.progress.items())]

    def participants_json(self) -> list[dict]:
        if self.store is None:
            return [{"id": self.participant_id, "kind": "proxy",
                     "acked_epoch": self.topology.epoch, "alive": True}]
        return [{"id": p.id, "kind": p.kind, "acked_epoch": p.acked_epoch, "alive": p.alive}
                for p in self.store.participants()]


def new_shard(address: str, weight: int = 1, name: str | None = None) -> Shard:
    node = NodeSpec.parse(address)
    node = NodeSpec(node.host, node.port, weight, name)
    return Shard.from_node(node)
