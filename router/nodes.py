"""Storage nodes as the config, the ring and the admin CLI name them.

A ``NodeSpec`` in the node list is a *shard*: its primary's address, its share of the ring,
and optionally its replicas (or a Sentinel master name to find its primary by).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One storage node: where it listens, its share of the ring, and how to log in.

    ``name`` matters for placement: twemproxy hashes a server's name (when given) instead of
    its address, so renaming a node moves keys and moving a named node to a new address does not.
    """

    host: str
    port: int
    weight: int = 1
    name: str | None = None
    username: str | None = None
    password: str | None = None
    #: The shard's read replicas (real Redis replication: ``replicaof`` this node).
    replicas: tuple[NodeSpec, ...] = ()
    #: When set, the primary's address comes from Redis Sentinel under this master name
    #: (``host``/``port`` are the first guess).
    sentinel_master: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        """The identity placement hashes: the name if given, else ``host:port``."""
        return self.name or self.address

    @classmethod
    def parse(cls, text: str) -> NodeSpec:
        """``host:port``, ``host:port:weight`` or ``host:port:weight name`` (twemproxy's form)."""
        text = text.strip()
        address, _, name = text.partition(" ")
        parts = address.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise ValueError(f"bad node address {text!r}: expected host:port[:weight] [name]")
        try:
            port = int(parts[1])
            weight = int(parts[2]) if len(parts) == 3 else 1
        except ValueError:
            raise ValueError(f"bad node address {text!r}: port and weight must be integers") from None
        if not 0 < port < 65536:
            raise ValueError(f"bad node address {text!r}: port out of range")
        if weight < 1:
            raise ValueError(f"bad node address {text!r}: weight must be at least 1")
        return cls(parts[0], port, weight, name.strip() or None)


def parse_node_list(text: str) -> list[NodeSpec]:
    """A comma-separated list, as ``--nodes`` takes it."""
    nodes = [NodeSpec.parse(part) for part in text.split(",") if part.strip()]
    if not nodes:
        raise ValueError("no nodes given")
    seen: set[str] = set()
    for node in nodes:
        if node.address in seen:
            raise ValueError(f"node {node.address} is listed twice")
        seen.add(node.address)
    return nodes
