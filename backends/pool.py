"""All node connections of one proxy worker: per shard, one shared connection to its
primary (and one to each replica) per protocol, plus a move-then-serve link per migration.

The lists handed out by ``connections`` are updated in place when the topology changes, so
every session sees the new shards at once: index ``i`` is shard ``i``, and the negative
index ``-(k + 1)`` is migration ``k`` (the code placement gives keys in its arcs).
RESP3 connections are opened only once a RESP3 client shows up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from router import resp
from router.nodes import NodeSpec

from .migrating import MigratingLink, MoveState
from .node import NodeConnection, NodeSettings
from .poller import Poller


class Backend:
    """Owns the node connections and the tasks that run them (in the given nursery)."""

    def __init__(self, nodes: Sequence[NodeSpec], settings: NodeSettings,
                 nursery: trio.Nursery, poller: Poller,
                 find_keys: Callable[[list[bytes]], list[bytes]] | None = None,
                 migrate_timeout_ms: int = 5000,
                 reads_in_place: Callable[[list[bytes]], bool] | None = None) -> None:
        self.nodes = list(nodes)
        self.settings = settings
        self._nursery = nursery
        self.poller = poller
        self.find_keys = find_keys
        self.reads_in_place = reads_in_place
        self.migrate_timeout_ms = migrate_timeout_ms
        #: (migration id, source index, target index), in the topology's order
        self.migrations: list[tuple[int, int, int]] = []
        self.migration_stats: dict[int, object] = {}
        #: per migration: keys known to be on its target (shared by its links and its mover)
        self.move_states: dict[int, MoveState] = {}
        self._open: dict[tuple[int, NodeSpec], NodeConnection] = {}
        self._lists: dict[int, list] = {}
        self._replica_lists: dict[int, list[list]] = {}
        self._links: dict[tuple[int, int], MigratingLink] = {}  # (proto, migration) -> link
        self.ready_migrations: set[int] = set()
        self.node_of: Callable[[bytes], int] | None = None

    def connections(self, proto: int) -> list:
        """The shards' primary connections for ``proto`` (then the migrations' links at
        negative indices); opened on first use, with the replicas' connections."""
        conns = self._lists.get(proto)
        if conns is None:
            conns = self._lists[proto] = []
            self._replica_lists[proto] = []
            self._rebuild(proto)
        return conns

    def replicas(self, proto: int) -> list[list[NodeConnection]]:
        """Per shard, the connections to its replicas (empty lists without replicas)."""
        self.connections(proto)
        return self._replica_lists[proto]

    def set_topology(self, nodes: Sequence[NodeSpec],
                     migrations: list[tuple[int, int, int]],
                     node_of: Callable[[bytes], int] | None = None) -> None:
        """Shards and migrations changed: rebuild every list in place; connections to nodes
        no longer used are closed once their requests are answered. ``node_of`` is the new
        placement (where requests held for an ended migration now go)."""
        self.nodes = list(nodes)
        self.migrations = list(migrations)
        if node_of is not None:
            self.node_of = node_of
        for proto in list(self._lists):
            self._rebuild(proto)
        used = {(proto, node) for proto in self._lists for node in self._all_nodes()}
        for key in list(self._open):
            if key not in used:
                self._nursery.start_soon(self._retire, self._open.pop(key))

    def _all_nodes(self) -> list[NodeSpec]:
        return [*self.nodes, *(r for node in self.nodes for r in node.replicas)]

    def _conn(self, proto: int, node: NodeSpec) -> NodeConnection:
        # keyed by the whole spec: a node that was a replica and is now a primary (after a
        # failover) gets a connection of each kind, never one taking the other's place
        conn = self._open.get((proto, node))
        if conn is None:
            conn = NodeConnection(node, proto, self.settings, self.poller)
            self._nursery.start_soon(conn.run, name=f"node {conn.address} resp{proto}")
            self._open[(proto, node)] = conn
        return conn

    def moved_to_target(self, migration_id: int, keys: list[bytes]) -> None:
        """The mover moved ``keys``: requests for them may go straight to the target."""
        state = self.move_states.get(migration_id)
        if state is not None:
            state.moved(keys)

    def _rebuild(self, proto: int) -> None:
        primaries = [self._conn(proto, node) for node in self.nodes]
        links = []
        live = set()
        for mid, source, target in self.migrations:
            link = MigratingLink(mid, primaries[source], primaries[target], self.nodes[target],
                                 self.find_keys or (lambda args: []),
                                 timeout_ms=self.migrate_timeout_ms, db=self.settings.db,
                                 username=self.settings.username,
                                 password=self.settings.password,
                                 stats=self.migration_stats.get(mid),
                                 moves=self.move_states.setdefault(mid, MoveState()),
                                 reads_in_place=self.reads_in_place)
            older = self._links.get((proto, mid))
            if older is not None:
                link.adopt(older)  # requests held before the barrier stay held, in order
            if mid in self.ready_migrations:
                link.ready = True
            self._links[(proto, mid)] = link
            live.add((proto, mid))
            links.append(link)
        for key in [k for k in self._links if k[0] == proto and k not in live]:
            # the migration ended while this participant still held requests for it (its
            # barrier passed and another participant finished it meanwhile): they go where
            # the arc lives now
            self._links.pop(key).handoff(
                lambda kind, payload, entry, extra, proto=proto:
                self._resubmit(proto, kind, payload, entry, extra))
        current = {mid for mid, _, _ in self.migrations}
        for mid in [m for m in self.move_states if m not in current]:
            del self.move_states[mid]
        self._lists[proto][:] = primaries + links[::-1]
        self._replica_lists[proto][:] = (
            [[self._conn(proto, r) for r in node.replicas] for node in self.nodes]
            + [[] for _ in links])

    def _resubmit(self, proto: int, kind: str, payload: bytes, entry, extra) -> None:
        import hiredis

        reader = hiredis.Reader()
        reader.feed(payload)
        args = reader.gets()
        keys = self.find_keys(args) if self.find_keys and isinstance(args, list) else []
        node = self.node_of(keys[0]) if keys and self.node_of else 0
        conn = self._lists[proto][node]
        if kind == "acked":
            err = conn.submit_acked(payload, entry, *extra)
            if err is not None:
                extra[1].fill(err)
        else:
            err = conn.submit(payload, entry)
        if err is not None:
            client = entry.fill(err)
            if client is not None and not client.dirty:
                client.dirty = True
                self.poller.client_dirty(client)

    def migration_ready(self, migration_id: int) -> None:
        """The epoch barrier passed for this migration: its keys may move."""
        if migration_id in self.ready_migrations:
            return
        self.ready_migrations.add(migration_id)
        for (_, mid), link in list(self._links.items()):
            if mid == migration_id and not link.ready:
                link.release()

    def fail_held(self, migration_id: int) -> None:
        for (_, mid), link in list(self._links.items()):
            if mid == migration_id:
                link.fail_held(resp.error(
                    "TRYAGAIN ringleader: this key's arc is about to move and another proxy or "
                    "client has not confirmed it yet; retry"))

    async def _retire(self, conn: NodeConnection) -> None:
        with trio.move_on_after(self.settings.request_timeout * 2):
            while conn.outstanding:
                await trio.sleep(0.05)
        conn.close()

    def open_dedicated(self, index: int, proto: int) -> NodeConnection:
        """A connection to shard ``index``'s primary for one client alone (WATCH, blocking
        commands, subscriptions); the client closes it."""
        if index < 0:
            raise ValueError("no dedicated connection to a moving arc")
        conn = NodeConnection(self.nodes[index], proto, self.settings, self.poller,
                              dedicated=True)
        self._nursery.start_soon(conn.run, name=f"dedicated {conn.address}")
        return conn

    def all_connections(self) -> list[NodeConnection]:
        """Every shared connection, primaries and replicas."""
        return list(self._open.values())

    def outstanding(self) -> int:
        return sum(conn.outstanding for conn in self.all_connections())
