"""Which route serves which command: decided once per topology, looked up per request.

The rules read top to bottom: proxy-local commands, commands split over nodes, commands
refused with a reason, then by what the command table says (keys, flags). A request's route
is found with one dict lookup on the command name exactly as the client sent it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hotkeys.reserved import dbsize_call, randomkey_call
from hotkeys.splitting import KEY_COUNTS

from . import local
from .commands import CommandTable, unknown_command_error, unknown_subcommand_error
from .hotroutes import HotKeyCount, HotMultiGet, HotRead, HotReadKey, HotWrite, HotWriteKey
from .placement import Placement
from .routes import (
    AllNodes,
    Blocking,
    Channel,
    FirstNode,
    LeavingOutReserved,
    Local,
    PolicyKey,
    Refuse,
    Route,
    SameNode,
    Scan,
    SingleKey,
    Sink,
    SplitCount,
    SplitGet,
    SplitSet,
    Watch,
    WhenOption,
    merge_all_ok,
    merge_all_true,
    merge_concat,
    merge_min_integer,
    merge_not_busy,
    merge_pair_sums,
    merge_random_present,
    merge_same,
    merge_sum,
    merge_union,
)

#: Keyless commands any node answers the same way (the first node is asked).
FIRST_NODE = frozenset({
    "command", "command|count", "command|docs", "command|info", "command|list",
    "command|getkeys", "command|getkeysandflags", "lolwut", "time",
})

SPLIT = {
    "mget": (SplitGet, 1),
    "mset": (SplitSet, 2),
    "del": (SplitCount, 1),
    "unlink": (SplitCount, 1),
    "exists": (SplitCount, 1),
    "touch": (SplitCount, 1),
}

_NODE_ADMIN = ("it acts on one storage node's server, not on the keyspace; run it against "
               "each node directly")

#: Refused with a reason a user can act on.
REFUSED: dict[str, str] = {
    "move": "ringleader serves database 0 only",
    "swapdb": "ringleader serves database 0 only",
    "migrate": "moving keys between nodes is ringleader's job (see `ringleader admin`)",
    "monitor": _NODE_ADMIN,
    "sync": "replication goes to the nodes directly",
    "psync": "replication goes to the nodes directly",
    "replicaof": _NODE_ADMIN,
    "slaveof": _NODE_ADMIN,
    "failover": _NODE_ADMIN,
    "shutdown": _NODE_ADMIN,
    "debug": _NODE_ADMIN,
    "save": _NODE_ADMIN,
    "bgsave": _NODE_ADMIN,
    "bgrewriteaof": _NODE_ADMIN,
    "config": _NODE_ADMIN,
    "acl": _NODE_ADMIN,
    "module": _NODE_ADMIN,
    "cluster": "ringleader is not a Redis Cluster; it shards keys itself",
    "readonly": "ringleader is not a Redis Cluster",
    "readwrite": "ringleader is not a Redis Cluster",
    "asking": "ringleader is not a Redis Cluster",
    "latency": _NODE_ADMIN,
    "slowlog": _NODE_ADMIN,
    "memory": _NODE_ADMIN,
}

NOT_YET = {
    "WAIT counts the replicas of one connection's writes, and a client's writes travel "
    "on shared connections; set write_ack = replicas:N (per key pattern if needed) and the "
    "proxy waits after each write itself": ("wait", "waitaof"),
}

#: Of those, the ones whose answer must leave out the proxy's own keys: the script each node
#: runs instead.
LEAVING_OUT_RESERVED = {"dbsize": dbsize_call, "randomkey": randomkey_call}

#: Keyless commands every node runs, and how their replies combine.
ALL_NODES: dict[str, tuple] = {
    "dbsize": (merge_sum, "counts summed"),  # both served by LeavingOutReserved
    "keys": (merge_concat, "keys concatenated"),
    "flushdb": (merge_all_ok, "OK when all are"),
    "flushall": (merge_all_ok, "OK when all are"),
    "randomkey": (merge_random_present, "a random node's key"),
    "lastsave": (merge_min_integer, "the oldest save"),
    "script|load": (merge_same, "the same SHA from each"),
    "script|exists": (merge_all_true, "present only if on every node"),
    "script|flush": (merge_all_ok, "OK when all are"),
    "script|kill": (merge_not_busy, "OK if any node was busy"),
    "function|load": (merge_same, "the same library name from each"),
    "function|delete": (merge_all_ok, "OK when all are"),
    "function|flush": (merge_all_ok, "OK when all are"),
    "function|restore": (merge_all_ok, "OK when all are"),
    "function|kill": (merge_not_busy, "OK if any node was busy"),
    "pubsub|channels": (merge_union, "channels of every node"),
    "pubsub|shardchannels": (merge_union, "channels of every node"),
    "pubsub|numsub": (merge_pair_sums, "subscribers summed per channel"),
    "pubsub|shardnumsub": (merge_pair_sums, "subscribers summed per channel"),
}

FIRST_NODE_EXTRA = frozenset({"function|list", "function|dump", "function|stats",
                              "script|help", "function|help", "pubsub|help",
                              # patterns are subscribed on every node: any node's count is all
                              "pubsub|numpat"})

SCRIPTS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})


@dataclass(frozen=True)
class RouteOptions:
    """Operator choices about commands that touch the whole keyspace."""

    #: KEYS walks every key of every node; some operators forbid it.
    allow_keys: bool = True
    #: FLUSHDB / FLUSHALL empty every node.
    allow_flush: bool = True
    #: Scripts called with no keys: "first-node" runs them there, "refuse" refuses them.
    scripts_without_keys: str = "first-node"
    #: Read policies and write acknowledgements, when configured (router/policy.py).
    policies: object = None


def policy_mode(spec) -> str:
    """How a command meets the read and write policies: as a read, a write, or neither."""
    if "write" in spec.flags or "may_replicate" in spec.flags:
        return "write"
    if "readonly" in spec.flags:
        return "read"
    return ""

#: Proxy-local commands newer than the shipped command table (Redis 7.0), with their arity.
LOCAL_ONLY = {"client|setinfo": 4}


def _not_yet_reasons() -> dict[str, str]:
    reasons = {}
    for why, names in NOT_YET.items():
        for name in names:
            reasons[name] = why
    return reasons


def single_key_position(spec) -> int | None:
    """The argument index of the only key, when every call has exactly one key there."""
    if spec.movable_keys or not spec.has_keys:
        return None
    first, last = spec.first_key, spec.last_key
    if first > 0 and first == last and len(spec.key_specs) == 1:
        return first
    return None


class RouteTable:
    """Routes for every command of ``table`` over the nodes of one topology."""

    def __init__(self, table: CommandTable, placement: Placement, labels: Sequence[str],
                 options: RouteOptions | None = None, hot=None) -> None:
        self.table = table
        self.placement = placement
        self.labels = list(labels)
        self.options = options or RouteOptions()
        self.hot = hot  # the hot-key service, when mitigation is on
        self._not_yet = _not_yet_reasons()
        self.routes: dict[str, Route] = {}
        for spec in table.all_specs():
            self.routes[spec.name] = self._route_for(spec)
        for name, arity in LOCAL_ONLY.items():  # answered here even if the nodes are older
            if name not in self.routes:
                self.routes[name] = Local(name, arity, local.HANDLERS[name])
        from rebalancer.admin import AdminRoute

        self.routes["ringleader"] = AdminRoute("ringleader", -2)
        self._fast: dict[bytes, Route] = {}

    # ------------------------------------------------------------------ per request

    def dispatch(self, args: list[bytes], sink: Sink) -> None:
        route = self._fast.get(args[0])
        if route is None:
            route = self.resolve(args)
        route.serve(args, sink)

    def resolve(self, args: list[bytes]) -> Route:
        """The route for a request whose name is not in the fast cache yet."""
        spec = self.table.lookup(args)
        if spec is None and args[0].upper() == b"RINGLEADER":
            return self.routes["ringleader"]
        if spec is None:
            container = self.table.lookup(args[:1])
            if container is not None and container.subcommands:
                extra = self.routes.get(f"{container.name}|{args[1].decode(errors='replace').lower()}")
                if extra is not None:
                    return extra
                return Refuse(container.name, container.arity, unknown_subcommand_error(args))
            return Refuse("", 0, unknown_command_error(args))
        if spec.subcommands:  # a container command called without a known subcommand
            if len(args) < 2:
                return Refuse(spec.name, spec.arity,
                              f"ERR wrong number of arguments for '{spec.name}' command")
            return Refuse(spec.name, spec.arity, unknown_subcommand_error(args))
        route = self.routes[spec.name]
        if "|" not in spec.name and len(self._fast) < 4096:
            self._fast[args[0]] = route
        return route

    # ------------------------------------------------------------------ per command

    def _route_for(self, spec) -> Route:
        route = self._base_route(spec)
        if self.hot is None or not spec.has_keys or isinstance(route, Refuse | Local):
            return route
        mode = policy_mode(spec)
        if spec.name in KEY_COUNTS:  # DEL, EXISTS...: split counters over all their parts
            route = HotKeyCount(route, self.hot)
        if spec.name == "mget":
            return HotMultiGet(route, self.hot, self.placement.node_index)
        plain = type(route) is SingleKey
        if mode == "read" and plain:
            return HotReadKey(route, self.hot)
        if mode == "read" and isinstance(route, SingleKey):
            return HotRead(route, self.hot, route.pos, self.placement.node_index)
        if mode == "write" and plain:
            return HotWriteKey(route, self.hot)
        if mode == "write":
            return HotWrite(route, self.hot, spec, getattr(route, "pos", None))
        return route

    def _base_route(self, spec) -> Route:
        name, arity = spec.name, spec.arity
        shown = name.upper().replace("|", " ")
        if spec.subcommands:  # containers are resolved to a subcommand before routing
            return Refuse(name, arity, f"ERR wrong number of arguments for '{name}' command")
        handler = local.HANDLERS.get(name)
        if handler is not None:
            return Local(name, arity, handler)
        if name == "info":
            return local.Info(name, arity, len(self.labels))
        policies = self.options.policies
        mode = policy_mode(spec) if policies is not None and policies.active else ""
        if name in SPLIT:
            cls, step = SPLIT[name]
            return cls(name, arity, self.placement, step, mode)
        if name in FIRST_NODE or name in FIRST_NODE_EXTRA or name.endswith("|help"):
            return FirstNode(name, arity)
        if name == "scan":
            return Scan(name, arity, len(self.labels))
        if name in ALL_NODES:
            if name == "keys" and not self.options.allow_keys:
                return Refuse(name, arity, "ERR ringleader: 'KEYS' is disabled by the "
                              "operator (allow_keys = false); use SCAN")
            if name in ("flushdb", "flushall") and not self.options.allow_flush:
                return Refuse(name, arity, f"ERR ringleader: '{shown}' is disabled by the "
                              "operator (allow_flush = false)")
            merge, how = ALL_NODES[name]
            if name in LEAVING_OUT_RESERVED:
                return LeavingOutReserved(name, arity, len(self.labels), merge, how,
                                          LEAVING_OUT_RESERVED[name]())
            return AllNodes(name, arity, len(self.labels), merge, how)
        top = name.split("|")[0]
        if top in REFUSED:
            return Refuse(name, arity,
                          f"ERR ringleader: '{shown}' is not supported: {REFUSED[top]}")
        why = self._not_yet.get(name) or self._not_yet.get(top)
        if why:
            return Refuse(name, arity, f"ERR ringleader: '{shown}' is not supported yet: {why}")
        if top == "client":
            return Refuse(name, arity, f"ERR ringleader: '{shown}' is not supported: the "
                          "client's connection ends at the proxy")
        if name in ("publish", "spublish"):
            return Channel(name, arity, self.placement)
        if name == "watch":
            return Watch(spec, self.placement, self.labels)
        if spec.is_blocking and spec.has_keys and name not in ("xread", "xreadgroup"):
            return Blocking(spec, self.placement, self.labels)
        if not spec.has_keys:
            return Refuse(name, arity, f"ERR ringleader: '{shown}' is not supported: it names "
                          "no key, so there is no node to send it to")
        pos = single_key_position(spec)
        route: Route
        if pos is not None and mode:
            route = PolicyKey(name, arity, pos, self.placement, mode)
        elif pos is not None:
            route = SingleKey(name, arity, pos, self.placement)
        else:
            keyless = None
            if name in SCRIPTS and self.options.scripts_without_keys == "refuse":
                keyless = (f"ERR ringleader: '{shown}' with no keys is refused "
                           "(scripts_without_keys = refuse): pass the keys it uses")
            route = SameNode(spec, self.placement, self.labels, keyless, mode)
        if name in ("xread", "xreadgroup"):
            route = WhenOption(b"BLOCK", b"STREAMS", Blocking(spec, self.placement, self.labels),
                               route)
        return route

    def describe(self) -> dict[str, str]:
        """Command name to how it is served (for the docs' command table)."""
        return {name: route.describe() for name, route in sorted(self.routes.items())
                if not self.table.get(name) or not self.table.get(name).subcommands}

