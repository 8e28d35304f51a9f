"""All node connections of one proxy worker: per node, one shared connection per protocol.

RESP3 connections are opened only once a RESP3 client shows up, so a deployment of RESP2
clients (redis-benchmark, redis-cli) holds exactly one connection per node.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from router.nodes import NodeSpec

from .node import NodeConnection, NodeSettings
from .poller import Poller


class Backend:
    """Owns the node connections and the tasks that run them (in the given nursery)."""

    def __init__(self, nodes: Sequence[NodeSpec], settings: NodeSettings,
                 nursery: trio.Nursery, poller: Poller) -> None:
        self.nodes = list(nodes)
        self.settings = settings
        self._nursery = nursery
        self.poller = poller
        self._by_proto: dict[int, list[NodeConnection]] = {}
        self._replicas_by_proto: dict[int, list[list[NodeConnection]]] = {}

    def connections(self, proto: int) -> list[NodeConnection]:
        """The shards' primary connections for ``proto``, indexed like the node list; opened
        on first use (with the replicas' connections)."""
        conns = self._by_proto.get(proto)
        if conns is None:
            conns = [self._start(NodeConnection(node, proto, self.settings, self.poller))
                     for node in self.nodes]
            self._by_proto[proto] = conns
            self._replicas_by_proto[proto] = [
                [self._start(NodeConnection(replica, proto, self.settings, self.poller))
                 for replica in node.replicas]
                for node in self.nodes]
        return conns

    def replicas(self, proto: int) -> list[list[NodeConnection]]:
        """Per shard, the connections to its replicas (empty lists without replicas)."""
        self.connections(proto)
        return self._replicas_by_proto[proto]

    def _start(self, conn: NodeConnection) -> NodeConnection:
        self._nursery.start_soon(conn.run, name=f"node {conn.address} resp{conn.proto}")
        return conn

    def open_dedicated(self, index: int, proto: int) -> NodeConnection:
        """A connection to node ``index`` for one client alone (WATCH, blocking commands);
        the client closes it."""
        conn = NodeConnection(self.nodes[index], proto, self.settings, self.poller,
                              dedicated=True)
        self._nursery.start_soon(conn.run, name=f"dedicated {conn.address}")
        return conn

    def all_connections(self) -> list[NodeConnection]:
        """Every shared connection, primaries and replicas."""
        primaries = [conn for conns in self._by_proto.values() for conn in conns]
        replicas = [conn for shards in self._replicas_by_proto.values() for conns in shards
                    for conn in conns]
        return primaries + replicas

    def outstanding(self) -> int:
        return sum(conn.outstanding for conn in self.all_connections())
