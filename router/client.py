"""Library mode: client-side sharding with the proxy's own placement and routes.

``ShardedClient`` is redis-py's command API (the ``CoreCommands`` mixin, so every method
takes the arguments redis-py takes and returns what redis-py returns with ``protocol=2``)
on top of ringleader's core: each command is routed by the same ``RouteTable`` the proxy
runs, so a key lands on exactly the node the proxy would pick, multi-key commands are split
and merged by the same merge functions, and cross-node commands get the same ``-CROSSSLOT``.

Everything here except the ``_Connection``/``_NodePool`` classes and ``ShardedClient``'s
``execute_command`` is free of I/O, and ``router.trio_client`` reuses it unchanged:

- ``ClientCore.prepare`` encodes the arguments as redis-py's ``Encoder`` does (plus the
  optional value codec) and runs the route table with a ``Call`` as its sink;
- a ``Call`` records what the route decided: one node and its request, parts for several
  nodes and their merge, or a reply made without any node;
- ``Batch`` groups the requests of one or many calls per node (a pipeline is one batch: one
  write and one read per node) and puts replies back together in call order;
- ``ClientCore.result`` parses the final raw reply with hiredis and applies redis-py's
  response callbacks, as redis-py's own RESP2 parser does.

What a command is routed by is one ``Routing``: a placement, its nodes, the route table built
on them and, for a client following a topology store (``from_state_dir``, see
``router.follow``), the migrations in progress. Placement codes and node indices only mean
something within one routing, so a request keeps the routing it was prepared with, and a
client following the store swaps the whole value when the epoch changes.
"""

from __future__ import annotations

import functools
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import hiredis
from redis._parsers.base import BaseParser
from redis._parsers.encoders import Encoder
from redis.client import EMPTY_RESPONSE, NEVER_DECODE, CaseInsensitiveDict
from redis.commands.core import CoreCommands
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import resp
from .codecs import DECODED_REPLIES, ENCODED_VALUES, ValueCodec, resolve_codec
from .commands import CommandTable
from .config import ProxyConfig, from_node_list, load_toml, load_twemproxy
from .nodes import NodeSpec
from .route_table import RouteTable
from .routes import Merge

if TYPE_CHECKING:
    from rebalancer.topology import Migration, Topology

try:  # redis-py 8
    from redis._parsers.response_callbacks import get_response_callbacks
except ImportError:  # pragma: no cover - redis-py 5 to 7 keep the tables in helpers
    from redis._parsers import helpers as _helpers

    def get_response_callbacks(user_protocol: Any, legacy_responses: bool) -> dict:
        return {**_helpers._RedisCallbacks, **_helpers._RedisCallbacksRESP2}

__all__ = [
    "Batch",
    "Call",
    "ClientCore",
    "Move",
    "NodeConnectionError",
    "NodeTimeoutError",
    "Pipeline",
    "Routing",
    "RoutingError",
    "ShardedClient",
]

RECV_SIZE = 64 * 1024


# ---------------------------------------------------------------- errors


class RoutingError(RedisError):
    """A command library mode cannot serve: it needs state that lives on one connection
    (a transaction, a subscription) or on the proxy (CLIENT LIST). Raised before anything
    is sent, so nothing ran; run it through the proxy, or against one node directly."""


class NodeConnectionError(RedisConnectionError):
    """One storage node could not be reached or failed mid-request; ``node`` is its
    ``host:port``. Commands for other nodes are unaffected."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"node {node}: {message}")
        self.node = node


class NodeTimeoutError(NodeConnectionError, RedisTimeoutError):
    """A node did not answer in time: both a ``redis.ConnectionError`` (the node is in
    trouble) and a ``redis.TimeoutError`` (what redis-py raises for the same case)."""


class _Unsupported(AttributeError):
    """Raised by a ``Call`` for sink attributes library mode lacks. An AttributeError, so
    routes that probe the sink with ``getattr(sink, name, None)`` see it as absent."""


_TRANSACTIONS = "transactions (MULTI/EXEC/WATCH) need one node connection per client"
_PROXY_ONLY = "it describes the proxy and its client connections"


def _why_unsupported(attribute: str) -> str:
    """Why library mode lacks a sink attribute a route asked for, for the error message."""
    if "transaction" in attribute or "watch" in attribute:
        return _TRANSACTIONS
    if "subscribe" in attribute or "pubsub" in attribute:
        return "pub/sub needs a connection that stays subscribed"
    if attribute in ("server", "client_id", "peer", "local"):
        return _PROXY_ONLY
    return f"it needs per-connection state that only the proxy keeps ({attribute})"


# ---------------------------------------------------------------- the sink


class ClientState:
    """What proxy-local commands remember per client (CLIENT SETNAME, CLIENT SETINFO)."""

    def __init__(self) -> None:
        self.name: bytes | None = None
        self.lib_name: bytes | None = None
        self.lib_ver: bytes | None = None


_NO_STATE = ClientState()  # for the MIGRATE calls move-then-serve makes
_STATS_LOCK = threading.Lock()


class Call:
    """One command after routing: the sink the route table talks to, then a record of what
    it decided. Exactly one of ``node >= 0`` (forward ``payload``), ``parts`` (fan out, then
    ``merge``) or ``raw`` (answered without a node) holds afterwards."""

    __slots__ = ("command", "args", "node", "payload", "parts", "merge", "raw", "state",
                 "codec_reply", "blocking", "routing")

    proto = 2
    authenticated = True

    def __init__(self, command: Any, args: list[bytes], state: ClientState) -> None:
        self.command = command  # as the caller named it: redis-py's callbacks are keyed so
        self.args = args
        self.node = -1
        self.payload = b""
        self.parts: list[tuple[int, list[bytes]]] | None = None
        self.merge: Merge | None = None
        self.raw: bytes | None = None
        self.state = state
        self.codec_reply = False
        self.blocking = False  # waits on the node (BLPOP...): no read timeout applies
        self.routing: Routing | None = None  # what it was routed by (set by prepare)

    # the sink API routes use
    def forward(self, node: int, args: list[bytes]) -> None:
        if node < 0:  # a key in a moving arc: its MIGRATE goes first, so it takes the batch
            self.parts = [(node, args)]  # path, as one part whose reply is the reply
            self.merge = _only_part
            return
        self.node = node
        self.payload = resp.pack_command(tuple(args))

    def fanout(self, calls: list[tuple[int, list[bytes]]], merge: Merge) -> None:
        self.parts = calls
        self.merge = merge

    def reply(self, raw: bytes) -> None:
        self.raw = raw

    def forward_dedicated(self, node: int, args: list[bytes]) -> None:
        """Blocking commands: every library request has a pooled connection to itself
        already, so this is a forward whose reply may take as long as the command says.
        A key in a moving arc is refused as the proxy refuses it: a client blocked on the
        source would never see the pushes that now go to the target."""
        if node < 0:
            self.raw = MOVING
            return
        self.forward(node, args)
        self.blocking = True

    # harmless stand-ins for the proxy session's connection state
    def set_proto(self, proto: int) -> None:
        if proto != 2:
            raise RoutingError("RESP3 is not supported in library mode: the client speaks "
                               "RESP2 to the nodes and parses replies as redis-py does with "
                               "protocol=2")

    def authenticate(self, username: bytes, password: bytes) -> bytes | None:
        raise RoutingError("authentication is per node in library mode: pass username= and "
                           "password= to the client, or set them in the configuration")

    def close_after_reply(self) -> None:
        """QUIT: connections are pooled per node and stay open until ``close()``."""

    @property
    def name(self) -> bytes | None:
        return self.state.name

    @name.setter
    def name(self, value: bytes | None) -> None:
        self.state.name = value

    @property
    def lib_name(self) -> bytes | None:
        return self.state.lib_name

    @lib_name.setter
    def lib_name(self, value: bytes | None) -> None:
        self.state.lib_name = value

    @property
    def lib_ver(self) -> bytes | None:
        return self.state.lib_ver

    @lib_ver.setter
    def lib_ver(self, value: bytes | None) -> None:
        self.state.lib_ver = value

    def __getattr__(self, attribute: str) -> Any:
        raise _Unsupported(attribute)


def _only_part(parts: list[bytes], proto: int) -> bytes:
    return parts[0]


#: The proxy's reply (router/session.py) to a blocking command on a key whose arc is moving.
MOVING = resp.error("TRYAGAIN ringleader: this key's arc is moving between nodes; commands "
                    "that hold a node connection (WATCH, MULTI, blocking ones) cannot use it "
                    "until the move ends; retry shortly")
_MOVED_REPLIES = (resp.OK, b"+NOKEY\r\n")


def _shown(args: Sequence[bytes]) -> str:
    """A command's name as an error message shows it: ``CLIENT LIST``, ``BLPOP``."""
    words = [a.decode(errors="replace") for a in args[:2]]
    name = words[0].upper()
    if len(words) > 1 and name in ("CLIENT", "CONFIG", "OBJECT", "SCRIPT", "FUNCTION",
                                   "COMMAND", "MEMORY", "XINFO", "ACL", "CLUSTER"):
        return f"{name} {words[1].upper()}"
    return name


# ---------------------------------------------------------------- batches


class Batch:
    """The requests of some calls grouped per node, and their replies back in call order.

    ``payloads`` gives each node's requests as one write; ``fill``/``fail`` record each
    node's replies (or the error that stopped it); ``results`` puts every call's raw reply
    together (merging fan-outs) or the node error that prevents it.

    Requests for keys in moving arcs are grouped under their migration's negative code.
    Before ``payloads``, a client runs ``moves()`` (one MIGRATE per migration, to its
    source) and hands its replies to ``settle``: the requests of each migration whose keys
    moved join their target's group; the others are answered with ``-TRYAGAIN``, unsent.
    """

    __slots__ = ("calls", "where", "requests", "replies", "blocking", "moving", "aliases",
                 "_planned")

    def __init__(self, calls: Sequence[Call]) -> None:
        self.calls = calls
        requests: dict[int, list[bytes]] = {}
        moving: dict[int, list[list[bytes]]] = {}
        where: list[Any] = []
        for call in calls:
            node = call.node
            if node >= 0:
                queue = requests.get(node)
                if queue is None:
                    requests[node] = queue = []
                where.append((node, len(queue)))
                queue.append(call.payload)
            elif call.parts is not None:
                spots = []
                for part_node, args in call.parts:
                    queue = requests.get(part_node)
                    if queue is None:
                        requests[part_node] = queue = []
                    if part_node < 0:
                        moving.setdefault(part_node, []).append(args)
                    spots.append((part_node, len(queue)))
                    queue.append(resp.pack_command(tuple(args)))
                where.append(spots)
            else:
                where.append(None)
        self.where = where
        self.requests = requests
        self.blocking = any(call.blocking for call in calls)
        self.replies: dict[int, list[bytes] | Exception] = {}
        #: migration code -> the args of its requests, in queue order
        self.moving = moving
        #: migration code -> (target node, first index in its queue, how many)
        self.aliases: dict[int, tuple[int, int, int]] = {}
        self._planned: list[tuple[int, list[bytes]]] = []

    def payloads(self) -> Iterator[tuple[int, bytes, int]]:
        """(node, all its requests as one write, how many replies to read)."""
        for node, queue in self.requests.items():
            yield node, b"".join(queue), len(queue)

    def fill(self, node: int, replies: list[bytes]) -> None:
        self.replies[node] = replies

    def fail(self, node: int, error: Exception) -> None:
        self.replies[node] = error

    # ------------------------------------------------------------------ move-then-serve

    def moves(self, routing: Routing, find_keys: Callable[[list[bytes]], list[bytes]]
              ) -> Batch | None:
        """The MIGRATEs to run before this batch: one per migration it touches, with every
        key its requests name (deduplicated), to the migration's source. None when there is
        nothing to move. Requests that name no key go straight to the target."""
        if not self.moving:
            return None
        planned = self._planned = []
        calls = []
        for code, requests in self.moving.items():
            move = routing.moves[-code - 1]
            keys = list(dict.fromkeys(key for args in requests for key in find_keys(args)))
            if not keys:
                self._relocate(code, move.target)
                continue
            call = Call("MIGRATE", [], _NO_STATE)
            call.node = move.source
            call.payload = resp.pack_command((*move.head, *keys))
            calls.append(call)
            planned.append((code, keys))
        return Batch(calls) if calls else None

    def settle(self, routing: Routing, raws: Sequence[bytes | Exception]) -> int:
        """The MIGRATEs' replies: OK or NOKEY sends a migration's requests to its target;
        anything else answers them with ``-TRYAGAIN`` and they never run. Returns the keys
        of the MIGRATEs that moved something (counted as the proxy counts them)."""
        moved = 0
        for (code, keys), raw in zip(self._planned, raws, strict=True):
            move = routing.moves[-code - 1]
            if not isinstance(raw, Exception) and raw in _MOVED_REPLIES:
                self._relocate(code, move.target)
                if raw == resp.OK:
                    moved += len(keys)
                continue
            if isinstance(raw, Exception):
                why = str(raw)
            else:
                why = raw[1:-2].decode(errors="replace") if raw[:1] == b"-" else repr(raw[:80])
            shown = ", ".join(k.decode(errors="replace")[:40] for k in keys[:3])
            if len(keys) > 3:
                shown += f" (and {len(keys) - 3} more)"
            error = resp.error(
                f"TRYAGAIN ringleader: could not move '{shown}' from {move.source_address} to "
                f"its new node {move.target_address} ({why[:200]}); the command did not run")
            queue = self.requests.pop(code)
            self.replies[code] = [error] * len(queue)
        self._planned = []
        return moved

    def _relocate(self, code: int, target: int) -> None:
        queue = self.requests.pop(code)
        mine = self.requests.get(target)
        if mine is None:
            self.requests[target] = mine = []
        self.aliases[code] = (target, len(mine), len(queue))
        mine.extend(queue)

    # ------------------------------------------------------------------ replies

    def results(self) -> list[bytes | Exception]:
        replies = self.replies
        for code, (target, start, count) in self.aliases.items():
            got = replies[target]
            replies[code] = got if isinstance(got, Exception) else got[start:start + count]
        out: list[bytes | Exception] = []
        for call, spot in zip(self.calls, self.where, strict=True):
            if spot is None:
                out.append(call.raw)  # type: ignore[arg-type]
            elif type(spot) is tuple:
                got = replies[spot[0]]
                out.append(got if isinstance(got, Exception) else got[spot[1]])
            else:
                parts: list[bytes] = []
                failed: Exception | None = None
                for node, index in spot:
                    got = replies[node]
                    if isinstance(got, Exception):
                        failed = got
                        break
                    parts.append(got[index])
                out.append(failed if failed is not None else _merged(call, parts))
        return out


def _merged(call: Call, parts: list[bytes]) -> bytes:
    try:
        return call.merge(parts, 2)  # type: ignore[misc]
    except Exception as exc:  # as the proxy does: a merge bug is an error reply, not a crash
        return resp.error(f"ERR ringleader: could not merge replies ({exc})")


# ---------------------------------------------------------------- framing replies


class ReplyFramer:
    """Cuts a node's byte stream into raw replies (``resp.reply_end``), without copying
    the buffer per reply; shared by the blocking and the trio connections."""

    __slots__ = ("buf", "pos")

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0

    def feed(self, data: bytes) -> None:
        if self.pos:
            self.buf = self.buf[self.pos:] + data
            self.pos = 0
        elif self.buf:
            self.buf += data
        else:
            self.buf = data

    def next_reply(self) -> bytes | None:
        buf, pos = self.buf, self.pos
        n = len(buf)
        if pos >= n:
            return None
        end = resp.reply_end(buf, pos, n)
        if end < 0:
            return None
        if end == n:
            self.buf, self.pos = b"", 0
        else:
            self.pos = end
        return buf[pos:end]

    def recv_size(self) -> int:
        """Large replies arrive in growing reads, so framing them stays linear."""
        return max(RECV_SIZE, len(self.buf) - self.pos)

    def pending(self) -> bool:
        return self.pos < len(self.buf)


def looks_closed(fd: int) -> bool:
    """True when an idle pooled connection has anything to read: the node closed it (or
    sent something unasked); either way it must not carry a request."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


# ---------------------------------------------------------------- the shared core


@functools.lru_cache(maxsize=1)
def default_command_table() -> CommandTable:
    return CommandTable.default()


def config_from_nodes(nodes: Sequence[str] | str) -> ProxyConfig:
    """A configuration from ``["host:port", ...]`` (or the proxy's comma-separated form)."""
    text = nodes if isinstance(nodes, str) else ",".join(nodes)
    return from_node_list(text)


class Move:
    """How requests reach the keys of one migration in progress: ``MIGRATE`` on the source
    (``head`` + the keys), then the request on the target."""

    __slots__ = ("id", "source", "target", "head", "source_address", "target_address")

    def __init__(self, id: int, source: int, target: int, head: tuple[bytes, ...],
                 source_address: str, target_address: str) -> None:
        self.id = id
        self.source = source
        self.target = target
        self.head = head
        self.source_address = source_address
        self.target_address = target_address


class Routing:
    """One epoch's routing. Placement codes, node indices, the route table (whose routes
    captured the placement) and the clients' pools (``pools[i]`` serves ``nodes[i]``) only
    agree with each other, so they are replaced together, never piecemeal.

    ``moves[k]`` serves placement code ``-(k + 1)``. ``gate`` counts the requests in flight
    on this routing when the client follows a store (None otherwise).
    """

    __slots__ = ("epoch", "nodes", "addresses", "placement", "routes", "moves", "pools", "gate")

    def __init__(self, epoch: int, nodes: Sequence[NodeSpec], placement: Any,
                 routes: RouteTable, moves: Sequence[Move] = ()) -> None:
        self.epoch = epoch
        self.nodes: tuple[NodeSpec, ...] = tuple(nodes)
        self.addresses = [n.address for n in nodes]
        self.placement = placement
        self.routes = routes
        self.moves: tuple[Move, ...] = tuple(moves)
        self.pools: list[Any] = []
        self.gate: Any = None

    def address_of(self, code: int) -> str:
        """A placement code's node; for a key in a moving arc, the target, where it is
        served (after its MIGRATE) from now on."""
        if code < 0:
            return self.addresses[self.moves[-code - 1].target]
        return self.addresses[code]


class ClientCore:
    """Everything a library client does except I/O: encoding, routing, decoding.

    ``routing`` is read once per request and is replaced whole (``routing_for``) by a client
    that follows a topology store; everything else is fixed at construction.
    """

    def __init__(self, config: ProxyConfig, *, decode_responses: bool = False,
                 encoding: str = "utf-8", encoding_errors: str = "strict",
                 value_codec: str | ValueCodec | None = None,
                 table: CommandTable | None = None, topology: Topology | None = None,
                 username: str | None = None, password: str | None = None,
                 migrate_timeout_ms: int | None = None) -> None:
        self.config = config
        self.table = table or default_command_table()
        self.route_options = config.route_options()
        self.username = username
        self.password = password
        self.migrate_timeout_ms = (migrate_timeout_ms if migrate_timeout_ms is not None
                                   else config.migration.migrate_timeout_ms)
        self.encoder = Encoder(encoding, encoding_errors, decode_responses)
        self.callbacks = CaseInsensitiveDict(get_response_callbacks(2, True))
        self.codec = resolve_codec(value_codec)
        self.state = ClientState()
        self._local = threading.local()  # one hiredis reader per thread
        self.routing = self.routing_for(topology)

    # ------------------------------------------------------------------ routing

    def routing_for(self, topology: Topology | None = None) -> Routing:
        """The routing of a topology (its placement, with migration codes, and its shards),
        or of the configuration when there is none. The same ``RouteTable`` the proxy
        builds, on the same placement and node list."""
        if topology is None:
            nodes: Sequence[NodeSpec] = self.config.nodes
            placement = self.config.placement()
            epoch = 0
            moves: list[Move] = []
        else:
            nodes = topology.nodes()
            placement = topology.placement()
            epoch = topology.epoch
            moves = [self._move(topology, nodes, m) for m in topology.migrations]
        routes = RouteTable(self.table, placement, [n.address for n in nodes],
                            self.route_options)
        return Routing(epoch, nodes, placement, routes, moves)

    def _move(self, topology: Topology, nodes: Sequence[NodeSpec], migration: Migration) -> Move:
        """``MIGRATE host port "" db timeout [AUTH...] REPLACE KEYS``, as the proxy sends it
        (backends/migrating.py): the target's own credentials, else the client's."""
        from backends.migrating import migrate_head

        source = topology.shard_index(migration.source)
        target = topology.shard_index(migration.target)
        node = nodes[target]
        head = migrate_head(node, db=self.config.node_db, timeout_ms=self.migrate_timeout_ms,
                            username=self.username or self.config.node_username,
                            password=self.password or self.config.node_password)
        return Move(migration.id, source, target, tuple(head), nodes[source].address,
                    node.address)

    def find_keys(self, args: list[bytes]) -> list[bytes]:
        """The keys a request names: what move-then-serve MIGRATEs before it runs."""
        return self.table.keys_of(args)

    # the routing's parts, for code written before routings were swappable
    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return self.routing.nodes

    @property
    def addresses(self) -> list[str]:
        return self.routing.addresses

    @property
    def placement(self) -> Any:
        return self.routing.placement

    @property
    def routes(self) -> RouteTable:
        return self.routing.routes

    # ------------------------------------------------------------------ requests

    def encode_args(self, args: Sequence[Any]) -> list[bytes]:
        """redis-py's encoding: a first argument with spaces (``"CONFIG GET"``) is several
        words; str by the client's encoding; int and float by ``repr``; bool refused."""
        first = args[0]
        if isinstance(first, str):
            out = first.encode().split() if " " in first else [first.encode()]
        elif isinstance(first, bytes | bytearray | memoryview):
            first = bytes(first)
            out = first.split() if b" " in first else [first]
        else:
            raise RedisError(f"a command name must be str or bytes, not {type(first).__name__}")
        encode = self.encoder.encode
        for arg in args[1:]:
            if type(arg) is bytes:
                out.append(arg)
            else:
                value = encode(arg)
                out.append(value if type(value) is bytes else bytes(value))
        return out

    def _apply_codec(self, args: Sequence[Any]) -> tuple[list[Any], bool]:
        """Values of the codec's commands encoded; and whether the reply is a value."""
        codec = self.codec
        first = args[0]
        name = first.decode(errors="replace") if isinstance(first, bytes) else str(first)
        name = name.split(" ", 1)[0].lower()
        out = list(args)
        spot = ENCODED_VALUES.get(name)
        if spot is not None:
            start, step = spot
            if step is None:
                if len(out) > start:
                    out[start] = codec.encode(out[start])  # type: ignore[union-attr]
            else:
                for i in range(start, len(out), step):
                    out[i] = codec.encode(out[i])  # type: ignore[union-attr]
        decodes = name in DECODED_REPLIES
        if name == "set":  # SET ... GET replies with the old value
            decodes = any(isinstance(a, str | bytes) and a.upper() in ("GET", b"GET")
                          for a in args[3:])
        return out, decodes

    def prepare(self, args: Sequence[Any], routing: Routing | None = None) -> Call:
        """Encode and route one command; raises RoutingError for what library mode lacks."""
        codec_reply = False
        if self.codec is not None:
            args, codec_reply = self._apply_codec(args)
        words = self.encode_args(args)
        call = Call(args[0], words, self.state)
        call.codec_reply = codec_reply
        self._dispatch(call, routing or self.routing)
        return call

    def _dispatch(self, call: Call, routing: Routing) -> None:
        call.routing = routing
        try:
            routing.routes.dispatch(call.args, call)
        except _Unsupported as exc:
            raise RoutingError(f"'{_shown(call.args)}' is not supported in library mode: "
                               f"{_why_unsupported(exc.args[0])}; run it through the proxy "
                               "or against one node") from None

    def reroute(self, call: Call, routing: Routing) -> Call:
        """``call`` routed again by ``routing``: a pipeline queued before an epoch change
        must not mix node indices of two epochs."""
        if call.routing is routing:
            return call
        again = Call(call.command, call.args, call.state)
        again.codec_reply = call.codec_reply
        self._dispatch(again, routing)
        return again

    def node_for(self, key: Any) -> str:
        """The ``host:port`` that holds ``key``, exactly as the proxy would place it (for a
        key in a moving arc: the target, where it is served from now on)."""
        data = key if type(key) is bytes else bytes(self.encoder.encode(key))
        routing = self.routing
        return routing.address_of(routing.placement.node_index(data))

    def login_requests(self, node: NodeSpec, username: str | None = None,
                       password: str | None = None) -> list[bytes]:
        """What a new connection to ``node`` sends first (AUTH, SELECT), packed."""
        out = []
        user = node.username or username or self.username or self.config.node_username
        secret = node.password or password or self.password or self.config.node_password
        if secret:
            out.append(resp.pack_command(("AUTH", user, secret) if user else ("AUTH", secret)))
        if self.config.node_db:
            out.append(resp.pack_command(("SELECT", str(self.config.node_db))))
        return out

    # ------------------------------------------------------------------ replies

    def _reader(self) -> hiredis.Reader:
        try:
            return self._local.reader
        except AttributeError:
            encoder = self.encoder
            kwargs: dict[str, Any] = {"protocolError": InvalidResponse,
                                      "replyError": BaseParser.parse_error,
                                      "errors": encoder.encoding_errors}
            if encoder.decode_responses:
                kwargs["encoding"] = encoder.encoding
            reader = self._local.reader = hiredis.Reader(**kwargs)
            return reader

    def result(self, call: Call, raw: bytes | Exception, options: dict[str, Any]) -> Any:
        """The Python value of a raw reply, as redis-py's ``parse_response`` makes it
        (callbacks with the command's options); an error reply is raised."""
        if isinstance(raw, Exception):
            raise raw
        reader = self._reader()
        reader.feed(raw)
        try:
            if call.codec_reply or (options and NEVER_DECODE in options):
                value = reader.gets(False)
            else:
                value = reader.gets()
        except BaseException:
            del self._local.reader  # it may hold half a reply
            raise
        if value is False:  # not one complete reply (RESP2 has no false)
            del self._local.reader
            raise InvalidResponse(f"incomplete reply {raw[:40]!r}")
        if options:
            options.pop(NEVER_DECODE, None)
            if isinstance(value, ResponseError):
                if EMPTY_RESPONSE in options:
                    return options[EMPTY_RESPONSE]
                raise value
            options.pop(EMPTY_RESPONSE, None)
            options.pop("keys", None)
        elif isinstance(value, ResponseError):
            raise value
        if call.codec_reply:
            return self._decode_values(value)
        callback = self.callbacks.get(call.command) if isinstance(call.command, str) else None
        if callback is not None:
            return callback(value, **options) if options else callback(value)
        return value

    def _decode_values(self, value: Any) -> Any:
        decode = self.codec.decode  # type: ignore[union-attr]
        if value is None:
            return None
        if type(value) is list:
            return [None if v is None else decode(v) for v in value]
        return decode(value)

    def results(self, calls: Sequence[tuple[Call, dict[str, Any]]],
                raws: Sequence[bytes | Exception], raise_on_error: bool) -> list[Any]:
        """A pipeline's values in call order; errors in place, or the first one raised."""
        out: list[Any] = []
        for number, ((call, options), raw) in enumerate(zip(calls, raws, strict=True), 1):
            try:
                out.append(self.result(call, raw, options))
            except (ResponseError, RedisConnectionError) as exc:
                if raise_on_error:
                    if isinstance(exc, ResponseError):
                        _annotate(exc, number, call.args)
                    raise
                out.append(exc)
        return out


def _annotate(exc: Exception, number: int, args: list[bytes]) -> None:
    """As redis-py's pipeline does: say which command of the pipeline failed."""
    shown = " ".join(a.decode(errors="replace") for a in args)
    if len(shown) > 100:
        shown = shown[:97] + "..."
    exc.args = (f"Command # {number} ({shown}) of pipeline caused error: {exc.args[0]}",
                *exc.args[1:])


# ---------------------------------------------------------------- the shared client surface

C = TypeVar("C", bound="LibraryClientBase")


class LibraryClientBase:
    """Construction and the non-I/O API both library clients share."""

    _core: ClientCore
    #: the store participation of a client built by ``from_state_dir``; None otherwise
    _follow: Any = None
    _moved_on_access = 0

    def __init__(self, nodes: Sequence[str] | str | None = None, *,
                 config: ProxyConfig | None = None, decode_responses: bool = False,
                 encoding: str = "utf-8", encoding_errors: str = "strict",
                 socket_timeout: float | None = None,
                 socket_connect_timeout: float | None = None,
                 value_codec: str | ValueCodec | None = None,
                 username: str | None = None, password: str | None = None,
                 topology: Topology | None = None,
                 migrate_timeout_ms: int | None = None) -> None:
        if (nodes is None) == (config is None):
            raise ValueError("give the nodes (['host:port', ...]) or a config, not both")
        if config is None:
            config = config_from_nodes(nodes)  # type: ignore[arg-type]
        self._core = ClientCore(config, decode_responses=decode_responses, encoding=encoding,
                                encoding_errors=encoding_errors, value_codec=value_codec,
                                topology=topology, username=username, password=password,
                                migrate_timeout_ms=migrate_timeout_ms)
        self.socket_timeout = (socket_timeout if socket_timeout is not None
                               else config.timeouts.request_ms / 1000)
        self.socket_connect_timeout = (socket_connect_timeout if socket_connect_timeout is not None
                                       else config.timeouts.connect_ms / 1000)
        self._username = username
        self._password = password
        self._kwargs = {"decode_responses": decode_responses, "encoding": encoding,
                        "encoding_errors": encoding_errors, "protocol": 2,
                        "socket_timeout": self.socket_timeout}

    @classmethod
    def from_config(cls: type[C], path: str | Path, **kwargs: Any) -> C:
        """The same TOML file the proxy reads (``ringleader serve --config``)."""
        return cls(config=load_toml(path), **kwargs)

    @classmethod
    def from_twemproxy(cls: type[C], path: str | Path, pool: str | None = None,
                       **kwargs: Any) -> C:
        """A nutcracker YAML pool: keys are found where nutcracker put them."""
        return cls(config=load_twemproxy(path, pool), **kwargs)

    @property
    def config(self) -> ProxyConfig:
        return self._core.config

    @property
    def nodes(self) -> list[str]:
        """The nodes' ``host:port``, in configuration (or topology shard) order."""
        return list(self._core.routing.addresses)

    @property
    def epoch(self) -> int:
        """The topology epoch requests are routed by (0 when not following a store)."""
        return self._core.routing.epoch

    @property
    def moved_on_access(self) -> int:
        """Keys this client's own MIGRATEs moved (move-then-serve), as the proxy reports
        ``moved_on_access`` per migration: how much of a move its traffic did."""
        return self._moved_on_access

    @property
    def participant_id(self) -> str | None:
        """This client's id in the topology store's participants (``from_state_dir``)."""
        return self._follow.id if self._follow is not None else None

    def node_for(self, key: Any) -> str:
        """The ``host:port`` of the node that holds ``key`` (the proxy would pick the same)."""
        return self._core.node_for(key)

    def get_encoder(self) -> Encoder:
        """redis-py's hook for commands that encode arguments themselves (scripts, ACL)."""
        return self._core.encoder

    def get_connection_kwargs(self) -> dict[str, Any]:
        """redis-py's hook for commands that ask how replies are decoded (SLOWLOG GET)."""
        return dict(self._kwargs)

    def set_response_callback(self, command: str, callback: Callable[..., Any]) -> None:
        """As in redis-py: how ``command``'s replies are turned into Python values."""
        self._core.callbacks[command] = callback

    def _refuse(self, what: str, why: str) -> RoutingError:
        return RoutingError(f"{what} is not supported in library mode: {why}; use a redis-py "
                            "client against the proxy or a node for it")

    def pubsub(self, **kwargs: Any) -> Any:
        raise self._refuse("pub/sub", "it needs a connection that stays subscribed")

    def monitor(self) -> Any:
        raise self._refuse("MONITOR", "it watches one node's server")

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        raise self._refuse("transactions (MULTI/EXEC/WATCH)",
                           "they need one node connection per client")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._core.routing.addresses!r})"


class PipelineBase:
    """Queues calls (already routed, so routing errors surface at the call), then runs them
    as one batch: one write and one read per node, results in call order."""

    def __init__(self, client: LibraryClientBase) -> None:
        self._client = client
        self._core = client._core
        self.command_stack: list[tuple[Call, dict[str, Any]]] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.command_stack.append((self._core.prepare(args), options))
        return self

    def __len__(self) -> int:
        return len(self.command_stack)

    def __bool__(self) -> bool:
        return True

    def reset(self) -> None:
        self.command_stack = []

    def get_encoder(self) -> Encoder:
        return self._core.encoder

    def get_connection_kwargs(self) -> dict[str, Any]:
        return self._client.get_connection_kwargs()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    def _take(self, routing: Routing) -> tuple[list[tuple[Call, dict[str, Any]]], Batch]:
        """The queued calls as one batch, every call routed by ``routing`` (calls queued
        before an epoch change are routed again)."""
        stack, self.command_stack = self.command_stack, []
        reroute = self._core.reroute
        stack = [(reroute(call, routing), options) for call, options in stack]
        return stack, Batch([call for call, _ in stack])


def refuse_transaction(transaction: bool) -> None:
    if transaction:
        raise RoutingError("transactional pipelines (MULTI/EXEC) are not supported in library "
                           "mode; use pipeline(transaction=False), or one hash tag and the "
                           "proxy once it serves transactions")


# ---------------------------------------------------------------- blocking I/O


class _Connection:
    """One blocking socket to one node; replies framed as they arrive."""

    __slots__ = ("sock", "framer", "address")

    def __init__(self, node: NodeSpec, connect_timeout: float, timeout: float,
                 login: list[bytes]) -> None:
        self.address = node.address
        self.framer = ReplyFramer()
        try:
            self.sock = socket.create_connection((node.host, node.port), timeout=connect_timeout)
        except TimeoutError:
            raise NodeTimeoutError(self.address,
                                   f"no connection within {connect_timeout:g}s") from None
        except OSError as exc:
            raise NodeConnectionError(self.address,
                                      f"cannot connect: {exc.strerror or exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        if login:
            try:
                self.send(b"".join(login))
                replies = self.read(len(login))
            except BaseException:
                self.close()
                raise
            for reply in replies:
                if reply[:1] == b"-":
                    self.close()
                    raise NodeConnectionError(self.address, "login refused: "
                                              + reply[1:-2].decode(errors="replace"))

    def send(self, payload: bytes) -> None:
        try:
            self.sock.sendall(payload)
        except TimeoutError:
            raise NodeTimeoutError(self.address, "send timed out; the command may or may not "
                                   "have run") from None
        except OSError as exc:
            raise NodeConnectionError(self.address, f"connection failed ({exc.strerror or exc}); "
                                      "the command may or may not have run") from None

    def read(self, count: int) -> list[bytes]:
        framer = self.framer
        replies: list[bytes] = []
        recv = self.sock.recv
        try:
            while True:
                reply = framer.next_reply()
                while reply is not None:
                    replies.append(reply)
                    if len(replies) == count:
                        return replies
                    reply = framer.next_reply()
                data = recv(framer.recv_size())
                if not data:
                    raise NodeConnectionError(self.address, "the node closed the connection; "
                                              "the command may or may not have run")
                framer.feed(data)
        except TimeoutError:
            raise NodeTimeoutError(self.address, f"no reply within {self.sock.gettimeout():g}s; "
                                   "the command may or may not have run") from None
        except resp.ProtocolError as exc:
            raise NodeConnectionError(self.address, f"malformed reply: {exc}") from None
        except NodeConnectionError:
            raise
        except OSError as exc:
            raise NodeConnectionError(self.address, f"connection failed ({exc.strerror or exc}); "
                                      "the command may or may not have run") from None

    def usable(self) -> bool:
        return not self.framer.pending() and not looks_closed(self.sock.fileno())

    def close(self) -> None:
        self.sock.close()


class _NodePool:
    """Idle connections to one node. A thread borrows one per request (or per pipeline), so
    threads never share a socket; ``deque`` pop/append are atomic, no lock is needed."""

    def __init__(self, node: NodeSpec, client: ShardedClient) -> None:
        self.node = node
        self.client = client
        self.idle: deque[_Connection] = deque()
        self.login = client._core.login_requests(node)
        self.retired = False  # the node left the topology: returned connections are closed

    def get(self) -> _Connection:
        idle = self.idle
        while idle:
            try:
                conn = idle.pop()
            except IndexError:
                break
            if conn.usable():
                return conn
            conn.close()
        client = self.client
        return _Connection(self.node, client.socket_connect_timeout, client.socket_timeout,
                           self.login)

    def put(self, conn: _Connection) -> None:
        if self.retired:
            conn.close()
        else:
            self.idle.append(conn)

    def request(self, payload: bytes, blocking: bool = False) -> bytes:
        conn = self.get()
        try:
            if blocking:
                conn.sock.settimeout(None)
            conn.send(payload)
            reply = conn.read(1)[0]
            if blocking:
                conn.sock.settimeout(self.client.socket_timeout)
        except BaseException:
            conn.close()
            raise
        self.put(conn)
        return reply

    def close(self) -> None:
        while self.idle:
            try:
                self.idle.pop().close()
            except IndexError:
                break

    def retire(self) -> None:
        self.retired = True
        self.close()


class ShardedClient(LibraryClientBase, CoreCommands):
    """A blocking redis-py-compatible client that shards keys over the nodes itself.

    Thread-safe: each request borrows a connection of its node's pool. Construct it with
    the nodes (``["127.0.0.1:7001", ...]``), ``from_config`` (the proxy's TOML),
    ``from_twemproxy`` (a nutcracker YAML) or ``from_state_dir`` (the live topology of
    online rebalancing); every redis-py command method is available, and commands ringleader
    cannot serve raise ``RoutingError`` or the proxy's error reply.
    """

    def __init__(self, nodes: Sequence[str] | str | None = None, **kwargs: Any) -> None:
        super().__init__(nodes, **kwargs)
        self._pools: dict[NodeSpec, _NodePool] = {}
        self._attach(self._core.routing)

    @classmethod
    def from_state_dir(cls, path: str | os.PathLike[str] | None = None, *,
                       config: ProxyConfig | str | os.PathLike[str] | None = None,
                       db: int | None = None, participant_id: str | None = None,
                       poll_interval: float = 0.2, heartbeat_interval: float = 1.0,
                       participant_timeout: float = 10.0, **kwargs: Any) -> ShardedClient:
        """A client that follows the topology in a proxy's state directory, safe while the
        admin CLI moves arcs between nodes (docs/library.md, "Following a live topology").

        It registers in the store as a participant and a daemon thread follows the epoch;
        ``close()`` (or the ``with`` block) stops it and unregisters. ``config`` (a
        ``ProxyConfig`` or the proxy's TOML) supplies node credentials, ``node_db``,
        timeouts and route options; ``db`` overrides the database; nodes and placement
        always come from the store. ``participant_timeout`` must be the proxies' (10 s).
        """
        from .follow import Follower, FollowSettings, open_state_dir

        settings = FollowSettings(poll_interval, heartbeat_interval, participant_timeout,
                                  participant_id)
        store, topology, base = open_state_dir(path, config, db, participant_timeout)
        client = cls(config=base, topology=topology, **kwargs)
        Follower(client, store, topology, settings).start(client)
        return client

    # ------------------------------------------------------------------ pools per routing

    def _attach(self, routing: Routing) -> None:
        """Give a routing its pools, reusing the open ones of nodes it keeps."""
        pools = self._pools
        attached = []
        for node in routing.nodes:
            pool = pools.get(node)
            if pool is None:
                pool = pools[node] = _NodePool(node, self)
            attached.append(pool)
        routing.pools = attached

    def _retire_pools(self, routing: Routing) -> None:
        """Close the pools of nodes ``routing`` no longer uses (once nothing routed by an
        older routing is in flight)."""
        keep = set(routing.nodes)
        for node in [n for n in self._pools if n not in keep]:
            self._pools.pop(node).retire()

    # ------------------------------------------------------------------ commands

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Route, send and decode one command, as ``redis.Redis.execute_command`` does."""
        core = self._core
        follow = self._follow
        if follow is None:
            call = core.prepare(args)
            raw = self._send(call, call.routing)  # type: ignore[arg-type]
            return core.result(call, raw, options)
        routing = follow.enter(self)
        gate = routing.gate
        try:
            call = core.prepare(args, routing)
            if call.blocking:  # may wait for minutes: must not hold back acknowledgements
                gate.leave()
                gate = None
            raw = self._send(call, routing)
        finally:
            if gate is not None:
                gate.leave()
        return core.result(call, raw, options)

    def _send(self, call: Call, routing: Routing) -> bytes | Exception:
        if call.node >= 0:
            return routing.pools[call.node].request(call.payload, call.blocking)
        if call.raw is not None:
            return call.raw
        return self._run(Batch([call]), routing)[0]

    def _run(self, batch: Batch, routing: Routing) -> list[bytes | Exception]:
        """Move-then-serve first (the MIGRATEs of the batch's moving keys, per source), then
        every node its requests."""
        moves = batch.moves(routing, self._core.find_keys)
        if moves is not None:
            self._await_barrier(routing)
            moved = batch.settle(routing, self._exchange(moves, routing))
            if moved:
                with _STATS_LOCK:
                    self._moved_on_access += moved
        return self._exchange(batch, routing)

    def _await_barrier(self, routing: Routing) -> None:
        """Hold a move until every participant routes the arc with move-then-serve."""
        follow = self._follow
        if follow is None:
            return
        deadline = time.monotonic() + follow.settings.participant_timeout
        while not follow.barrier_passed_sync(routing.epoch):
            if time.monotonic() > deadline:
                raise TryAgainError("ringleader: the move of this key's arc is "
                                    "waiting for other participants; retry")
            time.sleep(0.02)

    def _exchange(self, batch: Batch, routing: Routing) -> list[bytes | Exception]:
        """Send every node its requests in one write, then read each node's replies; a node
        that fails fails only its own calls."""
        pools = routing.pools
        sent: list[tuple[int, _Connection, int]] = []
        try:
            for node, payload, count in batch.payloads():
                try:
                    conn = pools[node].get()
                except NodeConnectionError as exc:
                    batch.fail(node, exc)
                    continue
                try:
                    conn.send(payload)
                except NodeConnectionError as exc:
                    conn.close()
                    batch.fail(node, exc)
                    continue
                sent.append((node, conn, count))
            while sent:
                node, conn, count = sent[0]
                try:
                    if batch.blocking:
                        conn.sock.settimeout(None)
                    batch.fill(node, conn.read(count))
                    if batch.blocking:
                        conn.sock.settimeout(self.socket_timeout)
                except NodeConnectionError as exc:
                    conn.close()
                    batch.fail(node, exc)
                else:
                    pools[node].put(conn)
                sent.pop(0)
        except BaseException:
            for _, conn, _ in sent:  # interrupted mid-exchange: these are out of step
                conn.close()
            raise
        return batch.results()

    def pipeline(self, transaction: bool = False, shard_hint: Any = None) -> Pipeline:
        """Commands queued, then sent per node in one round trip by ``execute()``.

        Unlike redis-py, ``transaction`` defaults to False: a sharded pipeline is not atomic
        across nodes, and transactional ones are refused.
        """
        refuse_transaction(transaction)
        return Pipeline(self)

    def close(self) -> None:
        """Close the idle connections (the client reconnects if used again). A client from
        ``from_state_dir`` also stops following and unregisters: it cannot be used again."""
        follow = self._follow
        if follow is not None:
            follow.stop()
        for pool in list(self._pools.values()):
            pool.close()

    def __enter__(self) -> ShardedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter shutdown, say
            pass


class Pipeline(PipelineBase, CoreCommands):
    """``ShardedClient.pipeline()``: every redis-py command method queues and returns the
    pipeline; ``execute()`` returns the results in call order."""

    _client: ShardedClient

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Run the queued commands: one round trip per node involved (after the MIGRATEs of
        keys in moving arcs). With ``raise_on_error=False`` errors (including a failed
        node's) are returned in place."""
        client = self._client
        follow = client._follow
        routing = client._core.routing if follow is None else follow.enter(client)
        try:
            stack, batch = self._take(routing)
            if not stack:
                return []
            raws = client._run(batch, routing)
        finally:
            if follow is not None:
                routing.gate.leave()
        return self._core.results(stack, raws, raise_on_error)
