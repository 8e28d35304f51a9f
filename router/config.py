"""The proxy's configuration: from command-line flags, a TOML file, or a twemproxy YAML.

Every source ends up as one ``ProxyConfig``; ``placement()`` turns it into the key → node
mapping that the proxy and the library client share.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hotkeys.rules import HotKeySettings
from rebalancer.mover import MoveSettings

from .nodes import NodeSpec, parse_node_list
from .placement import Placement
from .resp import RequestLimits
from .ring import DEFAULT_POINTS_PER_NODE, VnodeLayout, build_vnode_ring

log = logging.getLogger("ringleader.config")

DEFAULT_LISTEN = "127.0.0.1:7000"

#: ringleader's own placement: virtual nodes on a 64-bit ring.
VNODES = "vnodes"


class ConfigError(ValueError):
    """A configuration that cannot work; the message says which setting and why."""


@dataclass(frozen=True)
class Timeouts:
    connect_ms: int = 1000
    #: A node with requests outstanding that answers nothing for this long is declared hung:
    #: its requests fail with an error naming it and the connection is re-opened.
    request_ms: int = 2000
    retry_initial_ms: int = 50
    retry_max_ms: int = 2000
    #: On shutdown, how long in-flight requests get to finish.
    drain_ms: int = 5000


@dataclass(frozen=True)
class Limits:
    max_clients: int = 10000
    #: Requests a client may have in flight before the proxy stops reading from it.
    max_pending: int = 1024
    #: Reply bytes a client may leave unread before it is disconnected (as Redis's
    #: client-output-buffer-limit does).
    max_output_bytes: int = 256 * 1024 * 1024
    max_bulk_bytes: int = 512 * 1024 * 1024
    max_args: int = 1024 * 1024
    max_inline_bytes: int = 64 * 1024


@dataclass(frozen=True)
class ProxyConfig:
    nodes: tuple[NodeSpec, ...]
    listen: str = DEFAULT_LISTEN
    hash: str = "xxh3"
    distribution: str = VNODES
    hash_tag: str | None = "{}"
    points_per_node: int = DEFAULT_POINTS_PER_NODE
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    #: Password clients must give (AUTH / HELLO AUTH); None: no authentication.
    requirepass: str | None = None
    #: Credentials the proxy sends to every node (a node's own settings take precedence).
    node_username: str | None = None
    node_password: str | None = None
    #: The database the proxy SELECTs on every node connection (twemproxy's ``redis_db``).
    node_db: int = 0
    #: KEYS walks every key of every node; some operators forbid it.
    allow_keys: bool = True
    #: FLUSHDB / FLUSHALL empty every node.
    allow_flush: bool = True
    #: EVAL/FCALL with no keys: "first-node" runs them on the first node, "refuse" refuses.
    scripts_without_keys: str = "first-node"
    #: Where reads go: "primary", "prefer-replica" or "any" (see router/policy.py).
    read_policy: str = "primary"
    #: What a write's OK means: "primary", "replicas:N" or "fsync".
    write_ack: str = "primary"
    #: How long a write waits for its acknowledgement level before the client gets an error.
    ack_timeout_ms: int = 500
    #: After a write, a client's reads go to the primary for this long (read-your-writes).
    read_your_writes_ms: int = 1000
    #: Per key pattern overrides: {"pattern": "session:*", "read_policy": ..., "write_ack": ...}
    policies: tuple[dict, ...] = ()
    #: Redis Sentinel addresses, for shards with ``sentinel_master``.
    sentinels: tuple[str, ...] = ()
    sentinel_password: str | None = None
    #: Hot-key detection and mitigation ([hotkeys] table; off by default).
    hotkeys: HotKeySettings = field(default_factory=HotKeySettings)
    #: Where the topology is kept (rebalancer/store.py); None: in this process only.
    state_dir: str | None = None
    #: The background mover's pace ([migration] table).
    migration: MoveSettings = field(default_factory=MoveSettings)
    #: Password for RINGLEADER admin commands (None: no admin password).
    admin_password: str | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("no nodes configured")
        labels = [n.label for n in self.nodes]
        if len(set(labels)) != len(labels):
            raise ConfigError("a node is listed twice (nodes need distinct addresses or names)")
        if self.hash_tag is not None and len(self.hash_tag.encode()) != 2:
            raise ConfigError(f"hash_tag must be two characters, such as '{{}}', not {self.hash_tag!r}")
        split_address(self.listen)
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if self.distribution == VNODES and self.hash != "xxh3":
            raise ConfigError(f"distribution 'vnodes' needs the 64-bit hash 'xxh3', not "
                              f"{self.hash!r} (twemproxy's hashes go with ketama or modula)")
        if self.distribution == "ketama" and self.hash == "xxh3":
            raise ConfigError("distribution 'ketama' needs one of twemproxy's 32-bit hashes "
                              "(md5, fnv1a_64...), not 'xxh3'")
        if self.scripts_without_keys not in ("first-node", "refuse"):
            raise ConfigError("scripts_without_keys must be 'first-node' or 'refuse'")
        try:
            self.policy_set()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if any(n.sentinel_master for n in self.nodes) and not self.sentinels:
            raise ConfigError("a node has sentinel_master but no sentinels are configured")
        if self.policy_set().acks and self.ack_timeout_ms >= self.timeouts.request_ms:
            raise ConfigError("ack_timeout_ms must be below timeouts.request_ms (a write waiting "
                              "for its replicas would otherwise look like a hung node)")

    @property
    def listen_host(self) -> str:
        return split_address(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_address(self.listen)[1]

    def placement(self) -> Placement:
        """The key → node index mapping this configuration describes."""
        tag = self.hash_tag.encode("utf-8", "surrogateescape") if self.hash_tag else None
        if self.distribution == VNODES:
            from .hashkit import get_hash

            ring = build_vnode_ring([n.label for n in self.nodes], [n.weight for n in self.nodes],
                                    VnodeLayout(self.points_per_node))
            return Placement(get_hash(self.hash), ring, tag)
        from .continuum import build_distribution
        from .hashkit import get_hash

        try:
            distribution = build_distribution(self.distribution, self.nodes)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return Placement(get_hash(self.hash), distribution, tag)

    def policy_set(self):
        """The read and write-acknowledgement policies, with the per-pattern overrides."""
        from .policy import Ack, Policies, Policy

        default = Policy(self.read_policy, Ack.parse(self.write_ack))
        rules = []
        for index, rule in enumerate(self.policies):
            unknown = set(rule) - {"pattern", "read_policy", "write_ack"}
            if unknown or "pattern" not in rule:
                raise ConfigError(f"policies[{index}] needs a pattern and may set read_policy "
                                  "and write_ack")
            rules.append((rule["pattern"], Policy(rule.get("read_policy", default.read),
                                                  Ack.parse(rule.get("write_ack",
                                                                     str(default.ack))))))
        return Policies(default, rules)

    def route_options(self):
        from .route_table import RouteOptions

        return RouteOptions(self.allow_keys, self.allow_flush, self.scripts_without_keys,
                            self.policy_set())

    def request_limits(self) -> RequestLimits:
        return RequestLimits(self.limits.max_bulk_bytes, self.limits.max_args,
                             self.limits.max_inline_bytes)

    def with_overrides(self, **changes: Any) -> ProxyConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"bad address {address!r}: expected host:port")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"bad address {address!r}: the port must be a number") from None
    if not 0 <= number < 65536:
        raise ConfigError(f"bad address {address!r}: port out of range")
    return host, number


def from_node_list(text: str, **settings: Any) -> ProxyConfig:
    try:
        nodes = parse_node_list(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ProxyConfig(nodes=tuple(nodes), **{k: v for k, v in settings.items() if v is not None})


def _section(cls, data: dict[str, Any], where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{where}]: {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


def _node(entry: Any, index: int) -> NodeSpec:
    if isinstance(entry, str):
        return NodeSpec.parse(entry)
    if not isinstance(entry, dict) or "address" not in entry:
        raise ConfigError(f"nodes[{index}] must be 'host:port' or a table with an address")
    allowed = {"address", "weight", "name", "username", "password", "replicas",
               "sentinel_master"}
    unknown = set(entry) - allowed
    if unknown:
        raise ConfigError(f"nodes[{index}]: unknown setting(s) {', '.join(sorted(unknown))}")
    base = NodeSpec.parse(entry["address"])
    username, password = entry.get("username"), entry.get("password")
    replicas = tuple(
        replace(NodeSpec.parse(r), username=username, password=password)
        for r in entry.get("replicas", ()))
    sentinel_master = entry.get("sentinel_master")
    # a Sentinel-managed shard is placed by its master name, so a failover to another
    # address moves no key
    name = entry.get("name", base.name) or sentinel_master
    return NodeSpec(base.host, base.port, int(entry.get("weight", base.weight)),
                    name, username, password, replicas, sentinel_master)


def load_toml(path: str | Path) -> ProxyConfig:
    """Read ``ringleader.toml`` (see docs/configuration.md for every setting)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return from_mapping(data, str(path))


def from_mapping(data: dict[str, Any], where: str = "config") -> ProxyConfig:
    data = dict(data)
    try:
        nodes = tuple(_node(e, i) for i, e in enumerate(data.pop("nodes", [])))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    timeouts = _section(Timeouts, data.pop("timeouts", {}), "timeouts")
    limits = _section(Limits, data.pop("limits", {}), "limits")
    migration = _section(MoveSettings, data.pop("migration", {}), "migration")
    hot = dict(data.pop("hotkeys", {"enabled": False}))
    hot.setdefault("enabled", True)  # a [hotkeys] table turns it on unless it says otherwise
    if "rules" in hot:
        hot["rules"] = tuple(hot["rules"])
    try:
        hotkeys = _section(HotKeySettings, hot, "hotkeys")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    known = {f.name for f in fields(ProxyConfig)} - {"nodes", "timeouts", "limits", "hotkeys",
                                                     "migration"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    for listed in ("policies", "sentinels"):
        if listed in data:
            data[listed] = tuple(data[listed])
    return ProxyConfig(nodes=nodes, timeouts=timeouts, limits=limits, hotkeys=hotkeys,
                       migration=migration, **data)


def load_twemproxy(path: str | Path, pool: str | None = None) -> ProxyConfig:
    """A twemproxy (nutcracker) YAML pool as a ringleader configuration: same nodes, same
    hash, same distribution and hash tag, so every key stays where nutcracker put it."""
    from .twemproxy import load_pool

    try:
        spec = load_pool(str(path), pool)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    timeouts = Timeouts()
    if spec.timeout_ms:
        timeouts = replace(timeouts, request_ms=spec.timeout_ms)
    if spec.auto_eject_hosts:
        log.warning("%s: auto_eject_hosts is not supported: ringleader keeps a failed node's "
                    "keys where they are and fails its requests fast instead of moving them",
                    path)
    return ProxyConfig(
        nodes=tuple(spec.nodes),
        listen=spec.listen,
        hash=spec.hash,
        distribution=spec.distribution,
        hash_tag=spec.hash_tag.decode() if spec.hash_tag else None,
        timeouts=timeouts,
        node_password=spec.redis_auth,
        requirepass=spec.redis_auth,  # nutcracker makes its clients log in with it too
        node_db=spec.redis_db,
    )
