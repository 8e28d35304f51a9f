"""The proxy process: the listening socket, the client sessions, the node connections.

Structure follows ownership: the server's nursery owns the poller task (which drives every
client and node socket) and the node connections' tasks. Shutdown is a cancellation in
stages: stop accepting, let every session finish the requests it has in flight, then cancel
the nursery.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import replace

import trio

from backends.node import NodeSettings
from backends.poller import Poller
from backends.pool import Backend
from backends.wakeup import tune

from . import __version__
from .commands import CommandTable
from .config import ProxyConfig, split_address
from .local import REDIS_COMPAT_VERSION
from .nodes import NodeSpec
from .route_table import RouteTable
from .session import ClientSession

log = logging.getLogger("ringleader.server")


def node_settings(config: ProxyConfig) -> NodeSettings:
    t = config.timeouts
    return NodeSettings(
        connect_timeout=t.connect_ms / 1000,
        request_timeout=t.request_ms / 1000,
        retry_initial=t.retry_initial_ms / 1000,
        retry_max=t.retry_max_ms / 1000,
        username=config.node_username,
        password=config.node_password,
        db=config.node_db,
    )


def migration_indices(topology) -> list[tuple[int, int, int]]:
    return [(m.id, topology.shard_index(m.source), topology.shard_index(m.target))
            for m in topology.migrations]


def open_listener(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class ProxyServer:
    def __init__(self, config: ProxyConfig, table: CommandTable | None = None) -> None:
        from rebalancer.manager import initial_topology

        self.config = config
        self.table = table or CommandTable.default()
        self.topology, self.store = initial_topology(config, config.state_dir)
        self.placement = self.topology.placement()
        self.hot = None
        if config.hotkeys.enabled:
            from .hot import HotKeyService

            self.hot = HotKeyService(config.hotkeys, self)
        self.routes = self._route_table(self.topology)
        self.manager = None
        from rebalancer.admin import Admin

        self.admin = Admin(self)
        self.node_rates: dict[str, float] = {}  # primary address -> requests/s
        #: shard id -> (host, port) of its primary as Sentinel reports it
        self.primaries: dict[str, tuple[str, int]] = {}
        self._nursery: trio.Nursery | None = None
        self.policies = config.policy_set()
        self.ryw_window = config.read_your_writes_ms / 1000
        self.ack_timeout_ms = config.ack_timeout_ms
        self.ack_failures = 0
        self.poller = Poller()
        self.backend: Backend | None = None
        self._sessions: dict[int, ClientSession] = {}
        self._ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._stop = trio.Event()
        self._all_closed = trio.Event()
        self.started = time.monotonic()
        self.connections_total = 0
        self.rejected_total = 0
        self.commands_total = 0
        self.ops_per_sec = 0
        self.address: tuple[str, int] | None = None

    # ------------------------------------------------------------------ running

    async def run(self, listener: socket.socket | None = None, *,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``shutdown()``; then finish in-flight requests (up to the drain
        timeout) and return."""
        if listener is None:
            listener = open_listener(self.config.listen_host, self.config.listen_port,
                                     reuse_port=self.config.workers > 1)
        self._listener = listener
        self.address = listener.getsockname()[:2]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.poller.run, name="poller")
                nursery.start_soon(self._measure_rate)
                if self.hot is not None:
                    nursery.start_soon(self.hot.run, name="hot keys")
                self._watch_sentinels(nursery)
                self.backend = Backend(self.effective_nodes(), node_settings(self.config),
                                       nursery, self.poller, find_keys=self.table.keys_of,
                                       migrate_timeout_ms=self.config.migration.migrate_timeout_ms,
                                       reads_in_place=self.table.reads_in_place)
                self.backend.set_topology(self.effective_nodes(),
                                          migration_indices(self.topology),
                                          self.placement.node_index)
                self.backend.connections(2)  # connect now, not on the first request
                from rebalancer.manager import TopologyManager

                self.manager = TopologyManager(self, self.topology, self.store,
                                               self.config.migration)
                await nursery.start(self.manager.run)
                self.poller.register(listener.fileno(), self)
                task_status.started(self.address)
                await self._stop.wait()
                # stop accepting; every session finishes what it has in flight, then closes
                self.poller.unregister(listener.fileno())
                for session in list(self._sessions.values()):
                    session.stop_reading()
                if self._sessions:
                    self.poller.flush()
                    with trio.move_on_after(self.config.timeouts.drain_ms / 1000):
                        await self._all_closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            for session in list(self._sessions.values()):
                session.close()
            listener.close()

    # ------------------------------------------------------------------ topology

    def _route_table(self, topology) -> RouteTable:
        hot = self.hot if self.hot is not None and self.hot.engaged else None
        return RouteTable(self.table, topology.placement(),
                          [n.address for n in topology.nodes()], self.config.route_options(),
                          hot)

    def hot_routes_changed(self) -> None:
        """Some key became hot with nothing hot before, or the last one cooled: the hot-key
        routes come in or go (sessions take ``routes`` afresh with every batch)."""
        self.routes = self._route_table(self.topology)

    def apply_topology(self, topology) -> None:
        """A new epoch: placement, routes and connection lists change together, in one step
        of the poller's task, so no request sees half of it."""
        self.topology = topology
        self.placement = topology.placement()
        self.routes = self._route_table(topology)
        if self.backend is not None:
            self.backend.set_topology(self.effective_nodes(), migration_indices(topology),
                                      self.placement.node_index)
        for session in list(self._sessions.values()):
            if session.subs is not None and session.subs.active:
                session.rehome_subscriptions()
        if self.hot is not None:
            self.hot.topology_changed()

    def effective_nodes(self) -> list[NodeSpec]:
        """The topology's shards, with the primaries Sentinel reported in place."""
        nodes = []
        for shard, node in zip(self.topology.shards, self.topology.nodes(), strict=True):
            where = self.primaries.get(shard.id)
            if where is not None and (node.host, node.port) != where:
                node = replace(node, host=where[0], port=where[1])
            nodes.append(node)
        return nodes

    def _watch_sentinels(self, nursery: trio.Nursery) -> None:
        """A watcher per Sentinel-managed shard: a failover re-points its connections."""
        shards = [s for s in self.topology.shards if s.sentinel_master or s.primary.sentinel_master]
        if not shards:
            return
        from backends.sentinel import SentinelWatcher

        sentinels = [split_address(a) for a in self.config.sentinels]
        for shard in shards:
            master = shard.sentinel_master or shard.primary.sentinel_master

            def changed(where, shard_id=shard.id, master=master) -> None:
                self._primary_changed(shard_id, master, where)

            watcher = SentinelWatcher(sentinels, master, changed,
                                      password=self.config.sentinel_password)
            nursery.start_soon(watcher.run, name=f"sentinel {master}")

    def _primary_changed(self, shard_id: str, master: str, where) -> None:
        if where is None:
            log.warning("shard %s (%s): no primary known to Sentinel; its writes fail until "
                        "a failover completes", shard_id, master)
            return
        where = (where[0], int(where[1]))
        if self.primaries.get(shard_id) == where:
            return
        log.info("shard %s (%s): primary is now %s:%d", shard_id, master, *where)
        self.primaries[shard_id] = where
        if self.backend is not None:
            self.backend.set_topology(self.effective_nodes(), migration_indices(self.topology))

    def channel_node(self, name: bytes) -> int:
        """The shard a pub/sub channel lives on; during a move, the arc's target."""
        node = self.placement.node_index(name)
        if node < 0:
            node = self.topology.shard_index(self.topology.migration_of(node).target)
        return node

    def spawn(self, fn) -> None:
        """Run ``fn()`` (async) in the server's nursery: admin work, replies that come later."""
        if self._nursery is not None:
            self._nursery.start_soon(fn)

    def shutdown(self) -> None:
        """Stop accepting; sessions finish their in-flight requests, then ``run`` returns."""
        self._stop.set()

    # the listener is a poller handler too
    def on_readable(self) -> None:
        listener = self._listener
        max_clients = self.config.limits.max_clients
        for _ in range(64):
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of file descriptors, say: keep serving the others
                log.warning("accept failed: %s", exc)
                return
            tune(sock)
            if len(self._sessions) >= max_clients:
                self.rejected_total += 1
                try:
                    sock.send(b"-ERR max number of clients reached\r\n")
                except OSError:
                    pass
                sock.close()
                continue
            self.connections_total += 1
            session = ClientSession(self, sock, next(self._ids))
            self._sessions[session.client_id] = session

    def on_writable(self) -> None:
        pass

    # ------------------------------------------------------------------ session registry

    def forget(self, session: ClientSession) -> None:
        self._sessions.pop(session.client_id, None)
        if not self._sessions and self._stop.is_set():
            self._all_closed.set()

    def sessions(self) -> Iterable[ClientSession]:
        return list(self._sessions.values())

    # ------------------------------------------------------------------ INFO

    def info_text(self, sections: list[str], node_texts: list[str | None]) -> str:
        """The proxy's INFO, in Redis's ``# Section`` / ``key:value`` form. ``node_texts``
        are the nodes' own ``INFO memory keyspace`` replies (None for a node that failed)."""
        uptime = int(time.monotonic() - self.started)
        host, port = self.address or ("", 0)
        node_fields = [parse_info(text) if text else None for text in node_texts]
        used_memory = sum(int(f.get("used_memory", 0)) for f in node_fields if f)
        keys = [keyspace_counts(f) if f else (0, 0) for f in node_fields]
        parts: dict[str, dict[str, object]] = {
            "server": {
                "redis_version": REDIS_COMPAT_VERSION,
                "ringleader_version": __version__,
                "redis_mode": "standalone",
                "process_id": os.getpid(),
                "tcp_port": port,
                "uptime_in_seconds": uptime,
                "uptime_in_days": uptime // 86400,
            },
            "clients": {
                "connected_clients": len(self._sessions),
                "blocked_clients": sum(1 for s in self._sessions.values()
                                       if any(c.fifo for c in s.dedicated.values())),
                "maxclients": self.config.limits.max_clients,
            },
            "memory": {
                "used_memory": used_memory,
                "used_memory_human": human_bytes(used_memory),
            },
            "stats": {
                "total_connections_received": self.connections_total,
                "total_commands_processed": self.commands_total,
                "instantaneous_ops_per_sec": self.ops_per_sec,
                "event_loop_rounds": self.poller.rounds,
                "rejected_connections": self.rejected_total,
            },
            "keyspace": {},
            "nodes": {},
            "hotkeys": self.hot.info() if self.hot is not None else {"enabled": 0},
        }
        total_keys = sum(k for k, _ in keys)
        total_expires = sum(e for _, e in keys)
        if total_keys:
            parts["keyspace"]["db0"] = f"keys={total_keys},expires={total_expires},avg_ttl=0"
        conns = self.backend.all_connections() if self.backend is not None else []
        for index, node in enumerate(self.topology.nodes()):
            mine = [c for c in conns if c.node == node]
            state = "up" if mine and all(c.state == "up" for c in mine) else (
                next((c.state for c in mine if c.state != "up"), "unknown"))
            if index < len(node_fields) and node_fields[index] is None and state == "up":
                state = "error"
            latency = max((c.latency_us for c in mine), default=0.0)
            replica_states = [f"{c.address}/{c.state}" for c in conns
                              if c.node in node.replicas]
            parts["nodes"][f"node{index}"] = (
                f"address={node.address},name={node.label},weight={node.weight},state={state},"
                f"keys={keys[index][0] if index < len(keys) else 0},"
                f"requests={sum(c.requests_total for c in mine)},"
                f"errors={sum(c.errors_total for c in mine)},"
                f"latency_us={latency:.0f},"
                f"latency_max_us={max((c.latency_max_us for c in mine), default=0.0):.0f}"
                + (f",replicas={' '.join(sorted(set(replica_states)))}" if node.replicas else ""))
        wanted = set(sections) - {"all", "everything", "default"}
        lines = []
        for section, values in parts.items():
            if wanted and section not in wanted:
                continue
            lines.append(f"# {section.capitalize()}")
            lines.extend(f"{k}:{v}" for k, v in values.items())
            lines.append("")
        return "\r\n".join(lines)

    async def _measure_rate(self) -> None:
        """``instantaneous_ops_per_sec``: commands over the last second."""
        last = self.commands_total
        last_nodes: dict[str, int] = {}
        while True:
            await trio.sleep(1)
            self.ops_per_sec = self.commands_total - last
            last = self.commands_total
            if self.backend is not None:
                totals: dict[str, int] = {}
                for conn in self.backend.all_connections():
                    totals[conn.address] = totals.get(conn.address, 0) + conn.requests_total
                self.node_rates = {a: float(n - last_nodes.get(a, n)) for a, n in totals.items()}
                last_nodes = totals


def parse_info(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key] = value.strip()
    return fields


def keyspace_counts(fields: dict[str, str]) -> tuple[int, int]:
    """keys and expires of db0 from a node's INFO keyspace fields."""
    entry = fields.get("db0", "")
    values = dict(item.split("=", 1) for item in entry.split(",") if "=" in item)
    return int(values.get("keys", 0)), int(values.get("expires", 0))


def human_bytes(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.2f}{unit}" if unit != "B" else f"{n}B"
        n /= 1024
    return f"{n}B"
